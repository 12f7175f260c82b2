//! A worker: one pinned thread that owns an I/O backend (its legs' sockets), a forwarding core
//! (a full copy of the tables; it owns the legs whose `port % workers` is its index), an output
//! batch and its counters. It talks to the rest of the process only through bounded crossbeam
//! channels, drained between batches, so a batch always sees one table version and the packet
//! path takes no lock.
//!
//! ```text
//!   loop:
//!     messages (deltas, feedback handed over by other workers, learned remotes, TURN routes, stop)
//!     datagrams the TURN thread handed over ──▶ core.handle_rx (as if received on the leg's port)
//!     recv batch ──▶ core.handle_rx per datagram (decrypt in place in the backend's buffer)
//!     send batch (GSO runs per subscriber) ◀── core's output slots
//!       (but what goes to a TURN route's relayed address: ChannelData to its client, see
//!        crate::turn::handoff)
//!     events: learned remotes → other workers; handoffs → owning worker; all → event hub
//!     the core's deadline passed: handle_timeout (uplink reports, idle sweep) ─▶ send
//!     now and then: publish a metrics snapshot
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant as WallInstant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use hdrhistogram::Histogram;
use sluice_core::forward::{Core, CoreConfig, Event, OutBatch, Shard};
use sluice_core::table::Op;
use sluice_core::table::checkpoint::Checkpoint;
use sluice_core::time::Instant;

use crate::bus::{Handover, ShieldMsg, SlowMsg};
pub use crate::bus::{WorkerMsg, Workers};
use crate::io::{Backend, Transmit};
use crate::metrics::{Snapshots, WorkerSnapshot};
use crate::turn::handoff::WorkerLink;
use sluice_api::UnboundPort;

/// How many datagrams' worth of output slots a worker keeps per received datagram (fan-out
/// plus feedback); the batch is sized so a full receive batch cannot overflow it.
const OUT_PER_RX: usize = 24;
/// How often a worker publishes its metrics snapshot.
const SNAPSHOT_EVERY: Duration = Duration::from_millis(250);
/// One batch in this many has its processing time recorded.
const LATENCY_SAMPLE: u64 = 8;
/// Handed-over packets a worker handles per turn (returned buffers are not counted).
const HANDOFFS_PER_TURN: usize = 256;
/// Datagrams from TURN clients a worker handles per turn (the rest the next turn, which then does
/// not wait).
const TURN_PER_TURN: usize = 256;
/// The longest a worker waits for datagrams before it looks at its messages again.
const MAX_WAIT: Duration = Duration::from_millis(5);
/// Leg ports that failed to open, logged one by one per delta; the rest get one line.
const LOGGED_BIND_ERRORS: usize = 10;

/// One worker's state.
pub struct Worker {
    index: usize,
    shard: Shard,
    core: Core,
    io: Backend,
    out: OutBatch,
    inbox: Receiver<WorkerMsg>,
    peers: Vec<Sender<WorkerMsg>>,
    snapshots: Snapshots,
    latency: Histogram<u64>,
    batches: u64,
    batched: u64,
    epoch: WallInstant,
    bind_errors: u64,
    /// Leg ports that failed to open, with the error (each logged once while it keeps failing;
    /// reported with every applied delta).
    unbound: BTreeMap<u16, String>,
    peer_queue_full: u64,
    slow: Option<Sender<SlowMsg>>,
    slow_queue_full: u64,
    edge_key_errors: u64,
    events: Option<Sender<Event>>,
    /// Where this worker's part of the checkpoint goes, and when it last went.
    checkpoint_out: Option<Sender<(usize, Checkpoint)>>,
    last_checkpoint: WallInstant,
    /// The checkpoint loaded at start, restored after every delta until the deadline.
    restore: Option<(Arc<crate::checkpoint::Loaded>, WallInstant)>,
    /// The state of a session moved here, restored exactly after every delta until the
    /// deadline (see [`sluice_api::Request::Restore`]).
    moved: Option<(Arc<Checkpoint>, WallInstant)>,
    events_dropped: u64,
    shield: Option<Sender<ShieldMsg>>,
    /// Where each turn of the loop is stamped (ms since the node's epoch), for the liveness
    /// check behind the service watchdog.
    beat: Option<Arc<AtomicU64>>,
    /// Test fault injection (`SLUICE_FAULT_STALL_WORKER=<index>:<after ms>`): this worker stops
    /// turning its loop that long after it starts, as a worker stuck in a syscall or a bug would.
    stall_after: Option<Duration>,
    shield_queue_full: u64,
    /// What other workers hand over (packets for the legs this one owns, in pooled buffers),
    /// and the buffers of this worker's handoffs coming back.
    feedback_in: Option<Receiver<Handover>>,
    /// Every worker's hand-over queue, by worker index.
    feedback_out: Vec<Sender<Handover>>,
    /// The workers this one handed something to since it last woke them (a bit per index).
    to_wake: u64,
    /// Every worker's waker, by index.
    wakers: Vec<crate::io::Waker>,
    /// The most outputs one received or handed-over packet can make (set with the batch size).
    per_packet: usize,
    /// A receive batch's datagrams on shared ports, handled grouped by remote after the batch.
    shared: SharedBatch,
    /// The hand-off with the embedded TURN server, when the node runs one.
    turn: Option<WorkerLink>,
}

/// A receive batch's datagrams on shared ports (several legs on one port), copied out of the
/// backend and handled after the batch, grouped by remote address. Per-leg sockets give each
/// leg's datagrams to the worker in runs (one socket's queue after another), so its keys and
/// streams stay in the CPU's cache; on a shared port consecutive datagrams belong to different
/// legs, and handling them in arrival order cost 1.48x a per-leg port's CPU per packet with
/// 1,000 calls (`sluice-bench forward --calls`). Per remote the order is kept.
struct SharedBatch {
    data: Vec<u8>,
    /// (local port, remote, length) of each datagram, by slot.
    meta: Vec<(u16, std::net::SocketAddr, u16)>,
    order: Vec<u32>,
}

impl SharedBatch {
    fn new(slots: usize) -> Self {
        Self { data: vec![0; slots * sluice_core::forward::MAX_DATAGRAM], meta: Vec::with_capacity(slots), order: Vec::with_capacity(slots) }
    }

    /// Keeps a datagram for after the batch; false when it does not fit (then handle it now).
    fn keep(&mut self, port: u16, src: std::net::SocketAddr, buf: &[u8]) -> bool {
        let slot = self.meta.len();
        let Some(dst) = self.data.get_mut(slot * sluice_core::forward::MAX_DATAGRAM..).and_then(|d| d.get_mut(..buf.len())) else { return false };
        if buf.len() > sluice_core::forward::MAX_DATAGRAM {
            return false;
        }
        dst.copy_from_slice(buf);
        self.meta.push((port, src, buf.len() as u16));
        true
    }
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("index", &self.index).field("backend", &self.io.kind()).finish_non_exhaustive()
    }
}

/// The stall `SLUICE_FAULT_STALL_WORKER=<index>:<after ms>` asks of worker `index`, if any.
fn stall_fault(index: usize) -> Option<Duration> {
    let v = std::env::var("SLUICE_FAULT_STALL_WORKER").ok()?;
    let (i, ms) = v.split_once(':')?;
    (i.parse::<usize>().ok()? == index).then_some(Duration::from_millis(ms.parse().ok()?))
}

impl Worker {
    /// A worker `index` of `count`.
    #[expect(clippy::too_many_arguments, reason = "plain wiring, called once per worker")]
    pub fn new(
        index: usize,
        count: usize,
        core_config: CoreConfig,
        io: Backend,
        rx_batch: usize,
        inbox: Receiver<WorkerMsg>,
        peers: Vec<Sender<WorkerMsg>>,
        snapshots: Snapshots,
        epoch: WallInstant,
        slow: Option<Sender<SlowMsg>>,
    ) -> Self {
        let shard = Shard { index: index as u16, count: count as u16 };
        Self {
            index,
            shard,
            core: Core::new(CoreConfig { shard, ..core_config }),
            io,
            out: OutBatch::new(rx_batch.max(1) * OUT_PER_RX),
            inbox,
            peers,
            snapshots,
            latency: Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("static bounds"),
            batches: 0,
            batched: 0,
            epoch,
            bind_errors: 0,
            unbound: BTreeMap::new(),
            peer_queue_full: 0,
            slow,
            slow_queue_full: 0,
            edge_key_errors: 0,
            events: None,
            checkpoint_out: None,
            last_checkpoint: WallInstant::now(),
            restore: None,
            moved: None,
            events_dropped: 0,
            shield: None,
            beat: None,
            stall_after: stall_fault(index),
            shield_queue_full: 0,
            feedback_in: None,
            feedback_out: Vec::new(),
            to_wake: 0,
            wakers: Vec::new(),
            per_packet: OUT_PER_RX,
            shared: SharedBatch::new(rx_batch.max(1)),
            turn: None,
        }
    }

    /// Media of relayed legs to and from the embedded TURN server's clients in process (see
    /// [`crate::turn::handoff`]): datagrams it hands over are handled as if received on the leg's
    /// port, and what a leg sends to a live route's relayed address goes to the client as
    /// ChannelData.
    #[must_use]
    pub fn with_turn(mut self, link: WorkerLink) -> Self {
        self.turn = Some(link);
        self
    }

    /// Hand-overs between workers: this worker's queue and every worker's (by index). Without
    /// it, what is for another worker is dropped and counted (`peer_queue_full`).
    #[must_use]
    /// `wakers` (by index) end a worker's wait for datagrams when something is handed to it.
    pub fn with_feedback(mut self, inbox: Receiver<Handover>, peers: Vec<Sender<Handover>>, wakers: Vec<crate::io::Waker>) -> Self {
        self.feedback_in = Some(inbox);
        self.feedback_out = peers;
        self.wakers = wakers;
        self
    }

    /// Stamps `beat` with the time (ms since the node's epoch) at every turn of the loop.
    #[must_use]
    pub fn with_heartbeat(mut self, beat: Arc<AtomicU64>) -> Self {
        self.beat = Some(beat);
        self
    }

    /// Sends the core's events (leg active/idle, stream started/stopped, layer switches, ...)
    /// to `to`, dropping and counting them when it is full.
    #[must_use]
    pub fn with_events(mut self, to: Sender<Event>) -> Self {
        self.events = Some(to);
        self
    }

    /// Sends this worker's part of the checkpoint to `to` every [`crate::checkpoint::EVERY`],
    /// and restores `loaded` (a checkpoint read at start) after every delta it applies during
    /// [`crate::checkpoint::RESTORE_WINDOW`].
    pub fn with_checkpoint(mut self, to: Sender<(usize, Checkpoint)>, loaded: Option<Arc<crate::checkpoint::Loaded>>) -> Self {
        self.checkpoint_out = Some(to);
        self.restore = loaded.map(|l| (l, WallInstant::now() + crate::checkpoint::RESTORE_WINDOW));
        self
    }

    /// Reports remotes latched and SSRCs learned to the XDP shield (see [`crate::shield`]), so it
    /// can swap a leg's any-remote entry for the exact one and allow learned SSRCs. Never blocks:
    /// a full queue is counted (`shield_queue_full`) and the wildcard stays until the next event.
    pub fn with_shield(mut self, shield: Sender<ShieldMsg>) -> Self {
        self.shield = Some(shield);
        self
    }

    fn now(&self) -> Instant {
        Instant::from_nanos(self.epoch.elapsed().as_nanos() as u64)
    }

    /// Runs until told to stop.
    pub fn run(mut self) {
        let mut last_snapshot = WallInstant::now();
        let started = WallInstant::now();
        loop {
            if !self.drain_inbox() {
                break;
            }
            if self.drain_turn() {
                self.flush();
                self.route_events();
            }
            let now = self.now();
            if let Some(beat) = &self.beat {
                beat.store(now.as_nanos() / 1_000_000, Ordering::Relaxed);
            }
            if self.stall_after.is_some_and(|after| started.elapsed() >= after) {
                tracing::error!(worker = self.index, "SLUICE_FAULT_STALL_WORKER: this worker stalls now (test fault injection)");
                std::thread::sleep(Duration::from_secs(3600));
            }
            // Sleep until the core's next deadline (uplink reports, the sweep), at most 5 ms so
            // messages between batches are not kept waiting.
            let mut wait = Duration::from_nanos(self.core.poll_timeout().as_nanos().saturating_sub(now.as_nanos())).min(MAX_WAIT);
            if self.turn.as_ref().is_some_and(WorkerLink::pending) {
                wait = Duration::ZERO;
            }
            let (core, out, epoch, shared) = (&mut self.core, &mut self.out, self.epoch, &mut self.shared);
            // The batch's time is read when its first datagram is handed over, after the wait:
            // it is each datagram's arrival time (transport-cc feedback, jitter, the pacer), so
            // it must not be the time the worker went to sleep (up to MAX_WAIT earlier).
            let mut woke: Option<(WallInstant, Instant)> = None;
            let n = match self.io.recv_batch(Some(wait), |port, src, buf| {
                let (_, at) = *woke.get_or_insert_with(|| {
                    let t = WallInstant::now();
                    (t, Instant::from_nanos(t.saturating_duration_since(epoch).as_nanos() as u64))
                });
                if core.tables().is_shared_port(port) && shared.keep(port, src, buf) {
                    return;
                }
                core.handle_rx(at, port, src, buf, out);
            }) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(worker = self.index, error = %e, "receive failed");
                    0
                }
            };
            if let Some((_, at)) = woke {
                self.handle_shared(at);
            }
            self.flush();
            self.route_events();
            if n > 0 {
                self.batches += 1;
                self.batched += n as u64;
                if let Some((t0, _)) = woke
                    && self.batches.is_multiple_of(LATENCY_SAMPLE)
                {
                    // Processing only, from the first datagram handed over to the last copy sent.
                    let _ = self.latency.record(t0.elapsed().as_nanos().max(1) as u64);
                }
            }
            let now = self.now();
            if self.core.poll_timeout() <= now {
                self.core.handle_timeout(now, &mut self.out);
                self.flush();
                self.route_events();
            }
            if last_snapshot.elapsed() >= SNAPSHOT_EVERY {
                self.publish();
                last_snapshot = WallInstant::now();
            }
            if self.last_checkpoint.elapsed() >= crate::checkpoint::EVERY {
                self.send_checkpoint();
            }
        }
        self.flush();
        self.publish();
        self.send_checkpoint();
        tracing::info!(worker = self.index, "worker stopped");
    }

    /// Handles the receive batch's datagrams on shared ports, grouped by remote (stable: a remote's
    /// datagrams in their order).
    fn handle_shared(&mut self, at: Instant) {
        let SharedBatch { data, meta, order } = &mut self.shared;
        if meta.is_empty() {
            return;
        }
        order.clear();
        order.extend(0..meta.len() as u32);
        order.sort_by_key(|&i| (meta[i as usize].0, meta[i as usize].1));
        for &i in order.iter() {
            let (port, src, len) = meta[i as usize];
            let start = i as usize * sluice_core::forward::MAX_DATAGRAM;
            self.core.handle_rx(at, port, src, &mut data[start..start + usize::from(len)], &mut self.out);
        }
        meta.clear();
    }

    /// Handles up to [`TURN_PER_TURN`] datagrams the TURN thread handed over, each as if it had
    /// arrived on the leg's port from the relayed address; whether it handled any.
    fn drain_turn(&mut self) -> bool {
        if !self.turn.as_ref().is_some_and(WorkerLink::pending) {
            return false;
        }
        let now = self.now();
        let mut handled = 0;
        while handled < TURN_PER_TURN {
            let Some((port, src, mut buf)) = self.turn.as_mut().and_then(WorkerLink::next_datagram) else { break };
            // One datagram makes up to a packet's worth of copies: the batch is sent first when
            // that might not fit.
            if self.out.capacity().saturating_sub(self.out.len()) < self.per_packet {
                self.flush();
            }
            self.core.handle_rx(now, port, src, buf.filled_mut(), &mut self.out);
            handled += 1;
            if let Some(t) = &mut self.turn {
                t.spent(buf);
            }
        }
        handled > 0
    }

    /// Handles every pending message; false when told to stop.
    fn drain_inbox(&mut self) -> bool {
        // What other workers handed over: publishers' packets and sender reports for the
        // subscriptions of legs this one owns (it builds every copy to them), keyframe requests
        // and NACKs for the publishers it owns, layer demand, speaker candidates; and the
        // buffers of its own handoffs coming back. At most HANDOFFS_PER_TURN handled a turn (the
        // rest waits in its queue for the next). (Taken out of `self` for the turn: flushing
        // needs `self` whole.)
        if let Some(rx) = self.feedback_in.take() {
            if !rx.is_empty() {
                let now = self.now();
                let mut handled = 0;
                while handled < HANDOFFS_PER_TURN {
                    let Ok(msg) = rx.try_recv() else { break };
                    let mut h = match msg {
                        Handover::Spent(h) => {
                            self.core.recycle(h);
                            continue;
                        }
                        Handover::Take(h) => h,
                    };
                    // A handed-over packet makes up to a packet's worth of copies: the batch is
                    // sent first when that might not fit.
                    if self.out.capacity().saturating_sub(self.out.len()) < self.per_packet {
                        self.flush();
                    }
                    self.core.handle_handoff(now, &mut h, &mut self.out);
                    handled += 1;
                    // The buffer goes home (a full queue frees it instead; the pool refills).
                    if let Some(home) = self.feedback_out.get(usize::from(h.from)) {
                        let _ = home.try_send(Handover::Spent(h));
                    }
                }
            }
            self.feedback_in = Some(rx);
        }
        while let Ok(msg) = self.inbox.try_recv() {
            match msg {
                WorkerMsg::Apply(delta, reply) => {
                    // Ports change only with legs, fan-outs only with subscriptions: a delta
                    // without them (a pause, a layer change) costs its own size, not the tables'.
                    let legs = delta.replace_all || delta.ops.iter().any(|op| matches!(op, Op::UpsertLeg(_) | Op::RemoveLeg(_)));
                    let fanout =
                        legs || delta.ops.iter().any(|op| matches!(op, Op::UpsertSubscription(_) | Op::RemoveSubscription { .. } | Op::RemoveTrack(_)));
                    let result = self.core.apply((*delta).clone());
                    if result.is_ok() {
                        // Only a delta that installs legs or subscriptions can bring back what
                        // the checkpoint holds (a restore walks all of it).
                        if legs || delta.ops.iter().any(|op| matches!(op, Op::UpsertSubscription(_))) {
                            self.restore_checkpoint();
                            self.restore_moved();
                        }
                        if legs {
                            self.sync_ports();
                        }
                        if fanout {
                            self.size_batches();
                        }
                    }
                    let _ = reply.send(result.map(|g| (g, self.unbound.iter().map(|(&port, error)| UnboundPort { port, error: error.clone() }).collect())));
                }
                WorkerMsg::SetRemote(leg, addr) => match self.core.set_remote(leg, addr) {
                    Err(owner) => {
                        tracing::warn!(worker = self.index, leg = %leg, remote = %addr, owner = %owner, "remote not set: another leg of the shared port has it");
                    }
                    // A shared port has no any-remote entry in the XDP shield: the owner of a
                    // WebRTC leg there tells it the remote ICE selected.
                    Ok(()) => {
                        let shard = self.shard;
                        let owned_shared = self.core.tables().leg(leg).is_some_and(|l| l.spec.shared_port && shard.owns(l.spec.local_port));
                        if owned_shared && let Some(shield) = &self.shield {
                            let e = Event::IceConnected { leg, remote: addr };
                            self.shield_queue_full += u64::from(matches!(shield.try_send(ShieldMsg::Event(e)), Err(TrySendError::Full(_))));
                        }
                    }
                },
                WorkerMsg::LearnSsrc { leg, track, layer, rtx, ssrc } => self.core.install_learned_ssrc(leg, track, layer, rtx, ssrc),
                WorkerMsg::EdgeKeys(leg, keys) => {
                    let (rx, tx) = (*keys).clone();
                    if let Err(e) = self.core.install_edge_keys(leg, rx, tx) {
                        self.edge_key_errors += 1;
                        tracing::warn!(worker = self.index, leg = %leg, error = %e, "DTLS keys not installed");
                    }
                }
                WorkerMsg::EdgeConsent(leg, consent) => self.core.set_edge_consent(leg, consent),
                WorkerMsg::Snapshot(reply) => {
                    let _ = reply.send(self.core.tables().snapshot());
                }
                WorkerMsg::Checkpoint(reply) => {
                    let mut part = Checkpoint::default();
                    self.core.checkpoint(&mut part);
                    let _ = reply.send(part);
                }
                WorkerMsg::Restore(ck) => {
                    self.moved = Some((ck, WallInstant::now() + crate::checkpoint::RESTORE_WINDOW));
                    self.restore_moved();
                }
                WorkerMsg::TurnRoute(change) => {
                    if let Some(t) = &mut self.turn {
                        t.route(change);
                    }
                }
                WorkerMsg::Stop => return false,
            }
        }
        true
    }

    /// Sends this worker's part of the checkpoint to the writer (a full queue skips this turn).
    fn send_checkpoint(&mut self) {
        self.last_checkpoint = WallInstant::now();
        if let Some(to) = &self.checkpoint_out {
            let mut part = Checkpoint::default();
            self.core.checkpoint(&mut part);
            let _ = to.try_send((self.index, part));
        }
    }

    /// Restores the checkpoint loaded at start into what the last delta installed (legs and
    /// streams that match it and have not started afresh), until its window closes.
    fn restore_checkpoint(&mut self) {
        let Some((loaded, until)) = &self.restore else { return };
        if WallInstant::now() >= *until {
            self.restore = None;
            return;
        }
        let done = self.core.restore(&loaded.checkpoint, self.now(), loaded.age());
        if done.legs + done.streams > 0 {
            tracing::info!(
                worker = self.index,
                legs = done.legs,
                streams = done.streams,
                remotes = done.latched.len(),
                age_ms = loaded.age().as_millis() as u64,
                "restored from the checkpoint"
            );
        }
    }

    /// Restores the state of a session moved here (exactly: no margin) into what the last delta
    /// installed, until its window closes.
    fn restore_moved(&mut self) {
        let Some((ck, until)) = &self.moved else { return };
        if WallInstant::now() >= *until {
            self.moved = None;
            return;
        }
        let done = self.core.restore_with(ck, self.now(), std::time::Duration::ZERO, sluice_core::table::checkpoint::Margins::EXACT);
        if done.legs + done.streams > 0 {
            tracing::info!(worker = self.index, legs = done.legs, streams = done.streams, "resumed the streams of a session moved here");
        }
    }

    /// Keeps one receive batch's worst-case output within the output buffer: a datagram of the
    /// widest track makes `max_fanout` copies (plus feedback), so with wide fan-outs the worker
    /// receives fewer datagrams per batch (and the buffer grows if one datagram would not fit).
    fn size_batches(&mut self) {
        let per_rx = (self.core.tables().max_fanout() + 2).max(OUT_PER_RX);
        self.per_packet = per_rx;
        if per_rx > self.out.capacity() && self.out.is_empty() {
            self.out = OutBatch::new(per_rx);
        }
        self.io.set_rx_limit(self.out.capacity() / per_rx);
    }

    /// Opens the ports of the legs this worker owns and closes those no leg uses any more.
    fn sync_ports(&mut self) {
        let shard = self.shard;
        let want: BTreeSet<u16> = self.core.tables().ports_of_legs(|p| shard.owns(p)).collect();
        let have: BTreeSet<u16> = self.io.ports().into_iter().collect();
        for &p in have.difference(&want) {
            if let Err(e) = self.io.remove_port(p) {
                tracing::warn!(worker = self.index, port = p, error = %e, "closing leg port");
            }
        }
        // Ports that cannot be opened are retried with every delta that changes legs, but each
        // is logged once (while it keeps failing), and at most LOGGED_BIND_ERRORS of them per
        // delta, then one line with the count: 50,000 unbindable legs must not flood the log.
        let mut logged = 0;
        let mut more = 0u64;
        let mut first_error = None;
        for &p in want.difference(&have) {
            match self.io.add_port(p) {
                Ok(_) => {
                    self.unbound.remove(&p);
                }
                Err(e) => {
                    self.bind_errors += 1;
                    if self.unbound.insert(p, e.to_string()).is_some() {
                        continue;
                    }
                    if logged < LOGGED_BIND_ERRORS {
                        logged += 1;
                        tracing::error!(worker = self.index, port = p, error = %e, "cannot open leg port; the leg receives nothing");
                    } else {
                        more += 1;
                        first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
        }
        if more > 0 {
            tracing::error!(
                worker = self.index,
                ports = more,
                error = first_error.as_deref().unwrap_or(""),
                "cannot open more leg ports (not listed one by one)"
            );
        }
        self.unbound.retain(|p, _| want.contains(p));
    }

    fn flush(&mut self) {
        if self.out.is_empty() {
            return;
        }
        match self.turn.as_mut().filter(|t| t.has_routes()) {
            // What a leg sends to a TURN route's relayed address goes to the client here, not
            // to the relayed socket (a node without live routes pays one check a batch).
            Some(turn) => {
                let pkts = self.out.iter().filter(|(m, bytes)| !turn.take(m.local_port, m.dst, bytes));
                self.io.send_batch(pkts.map(|(m, bytes)| Transmit { local_port: m.local_port, dst: m.dst, payload: bytes }));
                turn.finish();
            }
            None => {
                self.io.send_batch(self.out.iter().map(|(m, bytes)| Transmit { local_port: m.local_port, dst: m.dst, payload: bytes }));
            }
        }
        self.out.clear();
    }

    /// Tells other workers what they need: remotes learned here, feedback for their tracks; and
    /// hands STUN/DTLS of WebRTC legs to the slow path (a full queue drops them, counted).
    fn route_events(&mut self) {
        while let Some(d) = self.core.poll_slow() {
            if let Some(slow) = &self.slow {
                self.slow_queue_full += u64::from(slow.try_send(SlowMsg::Datagram(Box::new(d))).is_err());
            }
        }
        while let Some(e) = self.core.poll_event() {
            if let Event::FirstDrop { leg, reason, remote } = e {
                tracing::warn!(
                    worker = self.index,
                    leg = %leg,
                    %remote,
                    reason = reason.name(),
                    "a datagram to the leg was dropped (logged once per leg and reason; sluice_drops_total counts them all)"
                );
            }
            // Runtime state learned here, for every other worker's tables.
            let update = match e {
                Event::RemoteLatched { leg, remote } => Some(WorkerMsg::SetRemote(leg, remote)),
                Event::SsrcLearned { leg, track, layer, rtx, ssrc } => Some(WorkerMsg::LearnSsrc { leg, track, layer, rtx, ssrc }),
                _ => None,
            };
            if let Some(update) = update {
                for (i, p) in self.peers.iter().enumerate() {
                    if i != self.index {
                        self.peer_queue_full += u64::from(matches!(p.try_send(update.clone()), Err(TrySendError::Full(_))));
                    }
                }
            }
            // Silence gates are for the shield alone.
            if let Some(to) = self.events.as_ref().filter(|_| !matches!(e, Event::SilenceGate { .. })) {
                self.events_dropped += u64::from(matches!(to.try_send(e), Err(TrySendError::Full(_))));
            }
            if let Some(shield) = &self.shield
                && matches!(e, Event::RemoteLatched { .. } | Event::SsrcLearned { .. } | Event::SilenceGate { .. })
            {
                self.shield_queue_full += u64::from(matches!(shield.try_send(ShieldMsg::Event(e)), Err(TrySendError::Full(_))));
            }
        }
        while let Some(h) = self.core.poll_handoff() {
            let to = usize::from(h.to);
            // No queue to that worker (`with_feedback` not called) counts as a full one.
            let Some(peer) = self.feedback_out.get(to) else {
                self.peer_queue_full += 1;
                self.core.recycle(h);
                continue;
            };
            match peer.try_send(Handover::Take(h)) {
                Ok(()) => self.to_wake |= 1u64 << to.min(63),
                Err(e) => {
                    self.peer_queue_full += 1;
                    let (Handover::Take(h) | Handover::Spent(h)) = e.into_inner();
                    self.core.recycle(h);
                }
            }
        }
        self.wake_peers();
    }

    /// Wakes the workers handed something since the last call (one wake-up per worker per
    /// batch, not per packet), so a sleeping worker does not wait out its receive timeout.
    fn wake_peers(&mut self) {
        let mut to_wake = std::mem::take(&mut self.to_wake);
        while to_wake != 0 {
            let w = to_wake.trailing_zeros() as usize;
            to_wake &= to_wake - 1;
            if let Some(waker) = self.wakers.get(w) {
                waker.wake();
            }
        }
    }

    fn publish(&mut self) {
        let io = self.io.counters();
        let turn = self.turn.as_ref().map(WorkerLink::counters).unwrap_or_default();
        let mut core = self.core.stats().clone();
        // Each leg's traffic on this worker (the control endpoint sends a stream only what moved).
        self.core.leg_traffic(&mut core.legs);
        let snap = WorkerSnapshot {
            worker: self.index,
            core,
            generation: self.core.tables().generation().0,
            io: vec![
                ("syscalls", io.syscalls + turn.syscalls),
                ("rx_datagrams", io.rx_datagrams),
                ("rx_truncated", io.rx_truncated),
                ("rx_errors", io.rx_errors),
                ("tx_datagrams", io.tx_datagrams),
                ("gso_sends", io.gso_sends),
                ("send_errors", io.send_errors),
                ("tx_unknown_port", io.tx_unknown_port),
                ("gso_refused", io.gso_refused),
                ("rx_gro_datagrams", io.rx_gro_datagrams),
                ("xsk_rx_dropped", io.xsk_rx_dropped),
                ("xsk_rx_ring_full", io.xsk_rx_ring_full),
                ("xsk_fill_ring_empty", io.xsk_fill_ring_empty),
                ("xsk_tx_invalid", io.xsk_tx_invalid),
                ("wakeups", io.wakeups),
                ("bind_errors", self.bind_errors),
                ("peer_queue_full", self.peer_queue_full),
                ("slow_queue_full", self.slow_queue_full),
                ("edge_key_errors", self.edge_key_errors),
                ("events_dropped", self.events_dropped),
                ("shield_queue_full", self.shield_queue_full),
                ("turn_from_client", turn.from_client),
                ("turn_to_client_udp", turn.to_client_udp),
                ("turn_to_client_udp_bytes", turn.to_client_udp_bytes),
                ("turn_to_client_stream", turn.to_client_stream),
                ("turn_queue_full", turn.queue_full),
                ("turn_send_errors", turn.send_errors),
                ("turn_buffers", turn.buffers),
            ],
            batches: self.batches,
            batched_datagrams: self.batched,
            latency_ns: [0.5, 0.99, 0.999, 1.0].iter().map(|&q| (q, self.latency.value_at_quantile(q))).collect(),
            latency_samples: self.latency.len(),
        };
        if let Ok(mut all) = self.snapshots.lock()
            && let Some(slot) = all.get_mut(self.index)
        {
            *slot = snap;
        }
    }
}
