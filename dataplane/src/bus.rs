//! The daemon's one message bus: every message that crosses between its threads, and the handle
//! the control thread reaches the workers with. Threads talk only through bounded crossbeam
//! channels of these types; defining them here (not in the modules of the threads that read
//! them) keeps the modules free of import cycles.
//!
//! ```text
//!   control ──WorkerMsg (deltas, snapshots)──▶ workers ◀──WorkerMsg (remotes, learned SSRCs,
//!      │                                          │        DTLS keys, consent)── edge, workers
//!      ├──SlowMsg (leg changes, status)──▶ edge ◀─┘ SlowMsg::Datagram (STUN/DTLS)
//!      └──ShieldMsg (deltas)──▶ shield ◀──────────── ShieldMsg::Event (latched, learned)
//!   workers ──Handover::Take (a publisher's packet for the subscribers a worker serves, its
//!             sender reports, keyframe requests and NACKs for a publisher it owns; in a pooled
//!             buffer)──▶ workers ──Handover::Spent (the buffer, back to its pool)──▶ workers
//!   turn ──WorkerMsg::TurnRoute──▶ workers     turn ──ShieldMsg::TurnRoute (UDP)──▶ shield
//!   turn ──TurnPacket::ToLeg (a client's datagram for a leg)──▶ the leg's worker
//!   workers ──TurnPacket::ToClient (ChannelData for a TCP/TLS client)──▶ turn
//!        (each way TurnPacket::Spent takes the buffer back to its pool)
//! ```

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::Sender;
use sluice_api::EdgeStatus;
use sluice_api::UnboundPort;
use sluice_core::forward::{Event, SlowDatagram};
use sluice_core::ids::{Generation, LegId};
use sluice_core::table::{Delta, DeltaError, EdgeSpec, KeyMaterial};

/// What travels between workers' cores: a handoff to handle, or one handled, whose buffer goes
/// back to the pool of the core that made it (so handing over allocates nothing per packet).
#[derive(Debug)]
pub enum Handover {
    /// For the receiving worker's core ([`sluice_core::forward::Core::handle_handoff`]).
    Take(sluice_core::forward::Handoff),
    /// Handled: back to the core that made it ([`sluice_core::forward::Core::recycle`]).
    Spent(sluice_core::forward::Handoff),
}

/// What crosses between the TURN thread and a worker for a relayed leg (see
/// [`crate::turn::handoff`]): a datagram in a pooled buffer, or a buffer going back to the pool of
/// the thread that filled it (so the hand-off allocates nothing per packet).
#[derive(Debug)]
pub enum TurnPacket {
    /// A TURN client's datagram for the leg on `port`, from the allocation's relayed address
    /// `src` (TURN thread → the worker that owns the port).
    ToLeg {
        /// The leg's local port.
        port: u16,
        /// The relayed address: the source the leg sees.
        src: std::net::SocketAddr,
        /// The datagram.
        buf: crate::turn::handoff::PacketBuf,
    },
    /// A leg's packet framed as padded ChannelData for a TCP or TLS client (worker `from` → TURN
    /// thread, which writes it to the client's connection).
    ToClient {
        /// The worker whose pool the buffer goes back to.
        from: u16,
        /// The allocation's 5-tuple (which connection).
        to: sluice_core::turn::FiveTuple,
        /// The frame.
        buf: crate::turn::handoff::PacketBuf,
    },
    /// Handled: back to the pool it came from.
    Spent(crate::turn::handoff::PacketBuf),
}

/// What a worker is told between batches.
#[derive(Clone, Debug)]
pub enum WorkerMsg {
    /// Apply a delta and answer with the result: the generation and the leg ports of this
    /// worker that are not open.
    Apply(Arc<Delta>, Sender<Result<(Generation, Vec<UnboundPort>), DeltaError>>),
    /// A leg's remote address, learned by the worker that owns the leg or selected by ICE.
    SetRemote(LegId, std::net::SocketAddr),
    /// A simulcast layer's SSRC, learned from its RID by the worker that owns the leg: every
    /// worker's tables hold it, so a later delta that clashes with it is refused by all of them
    /// alike (never applied on some and refused on others, which would split the generations).
    LearnSsrc {
        /// The publisher leg.
        leg: LegId,
        /// The track.
        track: sluice_core::ids::TrackId,
        /// The layer.
        layer: u8,
        /// Whether it is the layer's RTX SSRC.
        rtx: bool,
        /// The SSRC.
        ssrc: sluice_core::ids::Ssrc,
    },
    /// The SRTP keys `(rx, tx)` a WebRTC leg's DTLS handshake exported (from the slow path).
    EdgeKeys(LegId, Arc<(KeyMaterial, KeyMaterial)>),
    /// A WebRTC leg's ICE consent (from the slow path).
    EdgeConsent(LegId, bool),
    /// Answer with the full table.
    Snapshot(Sender<Delta>),
    /// Answer with this worker's part of the checkpoint, now.
    Checkpoint(Sender<sluice_core::table::checkpoint::Checkpoint>),
    /// Resume these legs and streams exactly (a session moved here); see
    /// [`sluice_api::Request::Restore`].
    Restore(Arc<sluice_core::table::checkpoint::Checkpoint>),
    /// A TURN channel route to a leg came or went (from the TURN thread): while it is up, what
    /// the worker sends to the route's relayed address from the leg's port goes to the client as
    /// ChannelData without a trip through the relayed socket (see [`crate::turn::handoff`]).
    TurnRoute(sluice_core::turn::RouteChange),
    /// Stop taking new datagrams, flush what is pending and exit.
    Stop,
}

/// What the slow path is told.
#[derive(Debug)]
pub enum SlowMsg {
    /// A STUN or DTLS datagram a worker received on a WebRTC leg's port.
    Datagram(Box<SlowDatagram>),
    /// WebRTC legs changed (from an applied delta).
    Legs(Vec<LegChange>),
    /// Make a new certificate for new handshakes; answers with the new status.
    Rotate(Sender<EdgeStatus>),
    /// Answer with the status.
    Status(Sender<EdgeStatus>),
    /// Exit.
    Stop,
}

/// A change to the set of WebRTC legs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LegChange {
    /// Created or changed; an unchanged spec keeps the leg's ICE and DTLS state.
    Upsert {
        /// The leg.
        leg: LegId,
        /// Its port.
        port: u16,
        /// Its ICE/DTLS parameters.
        spec: EdgeSpec,
    },
    /// Gone, or no longer a WebRTC leg.
    Remove(LegId),
    /// A full snapshot: every leg not listed is gone.
    Retain(Vec<LegId>),
}

/// A message to the shield thread.
#[derive(Debug)]
pub enum ShieldMsg {
    /// A delta every worker applied; the reply carries the number of map writes, or why a write
    /// failed.
    Apply(Arc<Delta>, Sender<Result<usize, String>>),
    /// Something a worker learned: `Event::RemoteLatched` and `Event::SsrcLearned` matter, the
    /// rest is ignored.
    Event(Event),
    /// A TURN channel route over UDP came or went (from the TURN thread): the stage unwraps the
    /// route's ChannelData itself (see `crate::shield`).
    TurnRoute(sluice_core::turn::RouteChange),
    /// Exit the thread (the stage stays pinned and attached).
    Stop,
}

/// Shared handle the control thread uses to reach every worker.
#[derive(Debug, Clone)]
pub struct Workers {
    senders: Vec<Sender<WorkerMsg>>,
    applied: Arc<Mutex<Generation>>,
}

impl Workers {
    /// Wraps the workers' inboxes.
    pub fn new(senders: Vec<Sender<WorkerMsg>>) -> Self {
        Self { senders, applied: Arc::new(Mutex::new(Generation(0))) }
    }

    /// Applies a delta on every worker (each between two of its batches) and waits for all.
    /// Validation is deterministic, so the workers agree; the first refusal is returned.
    /// Applied, it returns the generation and every leg port a worker could not open.
    pub fn apply(&self, delta: Delta) -> Result<(Generation, Vec<UnboundPort>), DeltaError> {
        let delta = Arc::new(delta);
        let replies: Vec<_> = self
            .senders
            .iter()
            .map(|s| {
                let (tx, rx) = crossbeam_channel::bounded(1);
                let _ = s.send(WorkerMsg::Apply(delta.clone(), tx));
                rx
            })
            .collect();
        let mut result: Option<Result<(Generation, Vec<UnboundPort>), DeltaError>> = None;
        for r in replies {
            match r.recv_timeout(Duration::from_secs(10)) {
                Ok(res) => match (&mut result, res) {
                    (Some(Ok((_, all))), Ok((_, unbound))) => all.extend(unbound),
                    (Some(Err(_)), _) => {}
                    (slot, res) => *slot = Some(res),
                },
                Err(_) => tracing::error!("a worker did not answer a delta within 10 s"),
            }
        }
        let result = result.unwrap_or(Err(DeltaError::Generation { current: self.generation(), got: delta.generation }));
        if let Ok((g, _)) = &result
            && let Ok(mut a) = self.applied.lock()
        {
            *a = *g;
        }
        result
    }

    /// Sends a message made by `msg` to every worker (cold path: waits for room in a full inbox).
    pub fn broadcast(&self, msg: impl Fn() -> WorkerMsg) {
        for s in &self.senders {
            let _ = s.send(msg());
        }
    }

    /// The generation of the last applied delta.
    pub fn generation(&self) -> Generation {
        self.applied.lock().map(|g| *g).unwrap_or(Generation(0))
    }

    /// The full table, from worker 0.
    pub fn snapshot(&self) -> Option<Delta> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.senders.first()?.send(WorkerMsg::Snapshot(tx)).ok()?;
        rx.recv_timeout(Duration::from_secs(10)).ok()
    }

    /// Every worker's part of the checkpoint, merged (`None` if a worker did not answer).
    pub fn checkpoint(&self) -> Option<sluice_core::table::checkpoint::Checkpoint> {
        let (tx, rx) = crossbeam_channel::bounded(self.senders.len());
        for s in &self.senders {
            s.send(WorkerMsg::Checkpoint(tx.clone())).ok()?;
        }
        let mut all = sluice_core::table::checkpoint::Checkpoint::default();
        for _ in &self.senders {
            let part = rx.recv_timeout(Duration::from_secs(10)).ok()?;
            all.legs.extend(part.legs);
            all.streams.extend(part.streams);
            all.webrtc.extend(part.webrtc);
        }
        Some(all)
    }

    /// Tells every worker to stop.
    pub fn stop(&self) {
        for s in &self.senders {
            let _ = s.send(WorkerMsg::Stop);
        }
    }
}
