//! The forwarding pipeline, sans-IO:
//!
//! ```text
//!   handle_rx(now, local_port, remote, datagram)
//!     classify (RFC 7983/5761) ─ not media ──────────────────────────────▶ drop NotMedia
//!       STUN/DTLS on a WebRTC leg's port (rate-limited per leg) ─────────▶ poll_slow (slow path)
//!     WebRTC leg without DTLS keys ───────────────────────────────────────▶ drop NotConnected
//!     plain-RTP leg (send-only: a recording tap) ───────────────────────────▶ drop SendOnly
//!     leg by local port, remote checked (latched on first auth) ─ none ──▶ drop UnknownSource
//!   RTP:
//!     ingress by SSRC ─ none ─────────────────────────────────────────────▶ drop UnknownSsrc
//!     SRTP unprotect in place (replay-checked) ─ fail ─────────────────────▶ drop AuthFailed/Replayed
//!     cache plaintext (video) · keyframe detection (codec of the PT)
//!     for each subscription of the track:
//!       paused / other layer / waiting for a keyframe ─▶ skip (PLI upstream when a switch waits)
//!       copy into an output slot · rewrite SSRC/seq/ts/PT/ext ids · SRTP protect with the
//!       subscriber leg's key (the identity for a plain-RTP leg) · emit (subscriber's port,
//!       subscriber's address)
//!   RTCP: SRTCP unprotect, then per packet of the compound: SR rewritten per subscriber,
//!     RR consumed into leg stats, NACK answered from the cache or forwarded upstream, PLI/FIR
//!     forwarded upstream throttled, the rest consumed.
//! ```
//!
//! Files, by stage: `ingress` (receive, unprotect, learn), `fanout` (the loop over a track's
//! subscriptions), `select` (the per-subscription gate), `egress` (the one place a copy is
//! built), `rtcp` (feedback translation), `uplink`/`downlink` (the feedback loop's packets and
//! controllers, on `handle_timeout`); this file holds the `Core` type, its events and timers.
//!
//! The core owns its tables and counters; the caller owns time and buffers. Nothing here
//! allocates per packet: outputs go into the caller's [`OutBatch`], events into a bounded queue
//! allocated at construction.

pub mod batch;
pub mod rewrite;
pub mod rtx_cache;

pub mod cascade;
mod downlink;
mod egress;
mod ingress;
pub mod layers;
mod rtcp;
mod select;
mod uplink;

use std::collections::VecDeque;
use std::net::SocketAddr;

pub use batch::{MAX_DATAGRAM, OutBatch, OutMeta, SLOT_BYTES};

use crate::ids::{LegId, Ssrc, TrackId};
use crate::srtp::{RtcpRecvState, RtpRecvState, SrtpError};
use crate::stats::CoreStats;
use crate::table::{Delta, DeltaError, KeyMaterial, LegStats, TableConfig, Tables};
use crate::time::Instant;
use crate::verdict::DropReason;
use crate::wire::{demux, rtp};

/// Keyframe requests to one layer are throttled to one per this interval, however many
/// subscribers ask (RFC 4585 leaves the policy to the SFU; 200 ms is what SFUs use).
pub const KEYFRAME_REQUEST_INTERVAL: core::time::Duration = core::time::Duration::from_millis(200);

/// How many events the queue keeps before it starts dropping the oldest.
const EVENT_QUEUE: usize = 1024;

/// A leg that received no authenticated packet (RTP or RTCP) for this long is reported idle.
/// Subscriber-only legs send receiver reports every few seconds (RFC 3550 §6.2), so this is
/// longer than the report interval.
pub const LEG_IDLE_AFTER: core::time::Duration = core::time::Duration::from_secs(5);
/// A layer that received no packet for this long is reported stopped. Opus with DTX still sends
/// a packet every 400 ms; a paused simulcast layer sends nothing.
pub const STREAM_STOPPED_AFTER: core::time::Duration = core::time::Duration::from_secs(2);
/// How often [`Core::handle_timeout`] looks for legs gone idle and layers stopped.
pub const SWEEP_INTERVAL: core::time::Duration = core::time::Duration::from_millis(250);

/// Something the control plane may want to know, polled with [`Core::poll_event`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(rename_all = "snake_case"))]
pub enum Event {
    /// A leg received its first authenticated packet, or its first after being idle.
    LegActive {
        /// The leg.
        leg: LegId,
        /// Where the packet came from.
        remote: SocketAddr,
    },
    /// A leg received nothing for [`LEG_IDLE_AFTER`].
    LegIdle {
        /// The leg.
        leg: LegId,
    },
    /// A layer of a track started (or resumed) receiving media.
    StreamStarted {
        /// The track.
        track: TrackId,
        /// The layer.
        layer: u8,
    },
    /// A layer of a track received nothing for [`STREAM_STOPPED_AFTER`].
    StreamStopped {
        /// The track.
        track: TrackId,
        /// The layer.
        layer: u8,
    },
    /// A subscription switched to another layer (at a keyframe).
    LayerSwitched {
        /// The track.
        track: TrackId,
        /// The subscriber.
        subscriber: LegId,
        /// The layer it now receives.
        layer: u8,
        /// Inside the layer, the spatial layer in force (SVC and temporally layered streams).
        spatial: Option<u8>,
        /// Inside the layer, the temporal layer in force.
        temporal: Option<u8>,
    },
    /// A keyframe was asked of the publisher (after throttling).
    KeyframeRequested {
        /// The track.
        track: TrackId,
        /// The layer.
        layer: u8,
    },
    /// A leg's remote address was learned from its first authenticated packet.
    RemoteLatched {
        /// The leg.
        leg: LegId,
        /// The address.
        remote: SocketAddr,
    },
    /// A simulcast layer's SSRC was learned from its RID header extension.
    SsrcLearned {
        /// The publisher leg.
        leg: LegId,
        /// The track.
        track: TrackId,
        /// The layer.
        layer: u8,
        /// Whether it is the layer's RTX SSRC (repaired RID).
        rtx: bool,
        /// The SSRC.
        ssrc: Ssrc,
    },
    /// ICE selected a WebRTC leg's remote (or moved it, or consent came back): media goes there.
    IceConnected {
        /// The leg.
        leg: LegId,
        /// The selected remote address.
        remote: SocketAddr,
    },
    /// A WebRTC leg's DTLS handshake completed and the exported SRTP keys are installed.
    DtlsConnected {
        /// The leg.
        leg: LegId,
        /// The negotiated SRTP protection profile.
        profile: crate::srtp::Profile,
    },
    /// A WebRTC leg stopped (or failed to start) carrying media.
    EdgeFailed {
        /// The leg.
        leg: LegId,
        /// Why.
        reason: crate::ice::EdgeFailure,
    },
    /// A leg's bandwidth estimate moved by 10 % or more since it was last reported.
    BandwidthEstimate {
        /// The subscriber leg.
        leg: LegId,
        /// The estimate, bit/s.
        bps: u64,
    },
    /// A leg's bandwidth allocator changed a subscription's layer cap (`None`: nothing flows).
    LayerAllocated {
        /// The track.
        track: TrackId,
        /// The subscriber.
        subscriber: LegId,
        /// The cap.
        layer: Option<u8>,
    },
    /// A flowing layer of a track stopped (`wanted = false`) or started (`true`) being wanted by
    /// any subscription, for [`crate::downlink::UNWANTED_AFTER`]: the signaling can ask the
    /// publisher to pause an unwanted layer.
    LayerDemand {
        /// The track.
        track: TrackId,
        /// The layer.
        layer: u8,
        /// Whether a subscription wants it.
        wanted: bool,
    },
    /// A speaker group's ranking changed (see [`crate::audio`]): the dominant speaker first,
    /// then the other recent speakers, with their smoothed levels.
    ActiveSpeakers {
        /// The group (one per session).
        group: crate::ids::SpeakerGroup,
        /// The ranked speakers (empty when the group's last ranked track went away).
        speakers: crate::audio::ActiveSpeakers,
    },
    /// The first datagram a leg's port dropped for `reason` (once per leg and reason, until the
    /// leg's spec changes): why a peer's media goes nowhere, say a peer that sends RTCP from
    /// another port than its RTP without the leg declaring it; the counters have the rest.
    FirstDrop {
        /// The leg.
        leg: LegId,
        /// Why.
        reason: DropReason,
        /// Where the datagram came from.
        remote: SocketAddr,
    },
    /// A leg went over its receive budget ([`crate::table::RateLimit`]): `dropped` datagrams
    /// since the last such event (at most one a second per leg while it lasts).
    RateLimited {
        /// The leg.
        leg: LegId,
        /// Datagrams dropped before decryption since the last report.
        dropped: u64,
    },
    /// Top-N audio: the XDP stage should drop (`on`) or stop dropping the silence of audio
    /// stream `ssrc` arriving on `port` (see [`crate::audio`]): the worker's shield writes it
    /// into the stage's silence map. Not for the control plane.
    SilenceGate {
        /// The publisher leg's local port.
        port: u16,
        /// The publisher's SSRC.
        ssrc: Ssrc,
        /// The RFC 6464 extension id.
        ext: u8,
        /// Whether the sender runs a VAD (its V bit decides speech).
        vad: bool,
        /// Gate (true) or ungate.
        on: bool,
    },
    /// A receiver report updated a leg's statistics.
    LegStats {
        /// The leg.
        leg: LegId,
        /// The statistics.
        stats: LegStats,
    },
}

/// Settings of one core.
#[derive(Clone, Copy, Debug, Default)]
pub struct CoreConfig {
    /// Table settings (replay window, retransmission cache).
    pub tables: TableConfig,
    /// Which shard of the dataplane this core is.
    pub shard: Shard,
    /// Decrypt every packet of an unranked top-N audio track, silence too (off: the silence is
    /// dropped before decryption, see [`crate::audio`]). For measuring what that drop saves.
    pub decrypt_silence: bool,
    /// An XDP stage runs in front of this core: the silence of top-N audio streams is gated
    /// there ([`Event::SilenceGate`]) rather than dropped here.
    pub xdp_silence_gate: bool,
}

/// A core's place among the dataplane's workers. Every worker holds the whole table, but a leg
/// (its receive path, and every copy sent to it) belongs to exactly one worker: `local_port %
/// count`. A publisher's packet is decrypted by its leg's worker and handed over once to each
/// other worker that owns a subscriber leg of its track ([`Core::poll_handoff`]), which builds
/// those copies; what a subscriber's worker must tell the publisher's goes back the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// This core's index.
    pub index: u16,
    /// How many cores there are (at least 1).
    pub count: u16,
}

impl Default for Shard {
    fn default() -> Self {
        Self { index: 0, count: 1 }
    }
}

impl Shard {
    /// The worker that owns the leg on `port`.
    pub fn owner(&self, port: u16) -> u16 {
        port % self.count.max(1)
    }

    /// Whether this core owns the leg on `port`.
    #[inline]
    pub fn owns(&self, port: u16) -> bool {
        // One worker owns everything (and skips a division per call on the packet path).
        self.count <= 1 || self.owner(port) == self.index
    }
}

/// The most bytes one handoff carries: a whole datagram (a decrypted media packet).
pub const MAX_HANDOFF: usize = MAX_DATAGRAM;
/// How many handoffs wait in a core before new ones are dropped (counted): the worker takes
/// them out after every batch, so this is a few receive batches' worth for every other core.
const HANDOFF_QUEUE: usize = 1024;
/// The most spare handoff buffers a core keeps (buffers come back from the cores they went to;
/// past this they are freed).
const HANDOFF_POOL: usize = 2048;

/// A pooled handoff buffer.
type HandoffBuf = Box<[u8; MAX_HANDOFF]>;

/// Something one core decrypted or decided that another core needs: give it to core `to` with
/// [`Core::handle_handoff`], then give it back to core `from` with [`Core::recycle`] (its buffer
/// goes back to that core's pool: no allocation per handed-over packet).
#[derive(Debug)]
pub struct Handoff {
    /// The core it is for.
    pub to: u16,
    /// The core it comes from.
    pub from: u16,
    /// The leg it came from (the publisher's, for media and sender reports), or is for
    /// ([`HandoffKind::Upstream`]).
    pub leg: LegId,
    /// What it is.
    pub kind: HandoffKind,
    len: u16,
    bytes: HandoffBuf,
}

/// What a [`Handoff`] carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandoffKind {
    /// A decrypted RTP packet of `track` (publisher SSRC `ssrc`, layer `layer`), for the
    /// subscriptions whose legs the receiving core owns (it builds and sends their copies: egress
    /// ownership) and, for ranked audio, the audio slots of its legs; `speaking` is the track's
    /// voice activity where its levels are read.
    Media {
        /// The track.
        track: TrackId,
        /// The publisher's SSRC.
        ssrc: Ssrc,
        /// The simulcast layer.
        layer: u8,
        /// Whether it is the layer's RTX stream (the packet is the RTX packet as received).
        rtx: bool,
        /// Whether the track is speaking now (the slots switch sources at talk-spurt boundaries).
        speaking: bool,
    },
    /// A publisher's decrypted sender report (one SR packet) about `track`, for the receiving
    /// core's subscriptions and audio slots of it.
    Sr {
        /// The track.
        track: TrackId,
    },
    /// A keyframe request for layer `layer` of `track`, for the core that owns its publisher's
    /// leg (which throttles and sends it).
    Keyframe {
        /// The track.
        track: TrackId,
        /// The layer.
        layer: u8,
    },
    /// A plain RTCP packet (a NACK the retransmission cache could not answer) to protect and send
    /// to the publisher of leg [`Handoff::leg`], which the receiving core owns.
    Upstream,
    /// The layers of `track` the sending core's subscriptions want (a bit per layer), for the
    /// core that fans the track out (layer demand is reported there).
    Demand {
        /// The track.
        track: TrackId,
        /// The wanted layers.
        layers: u8,
    },
    /// The sending core's speaker candidates of `group` at its last tick (encoded, see
    /// [`crate::audio::encode_candidates`]), so every core ranks the whole group.
    Speakers {
        /// The speaker group.
        group: crate::ids::SpeakerGroup,
    },
}

impl Handoff {
    /// The payload: the decrypted RTCP or RTP packet, or the encoded candidates.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// A core's outgoing handoffs and its pool of spare buffers.
#[derive(Debug)]
pub(crate) struct Handoffs {
    queue: VecDeque<Handoff>,
    pool: Vec<HandoffBuf>,
    from: u16,
}

impl Handoffs {
    fn new(from: u16) -> Self {
        Self { queue: VecDeque::with_capacity(HANDOFF_QUEUE), pool: Vec::new(), from }
    }

    /// Queues `bytes` for core `to`, in a buffer from the pool (or a new one, counted); a full
    /// queue drops it (counted). Returns whether it was queued.
    pub(crate) fn push(&mut self, stats: &mut CoreStats, to: u16, leg: LegId, kind: HandoffKind, bytes: &[u8]) -> bool {
        if bytes.len() > MAX_HANDOFF || self.queue.len() >= HANDOFF_QUEUE {
            stats.handoffs_dropped += 1;
            return false;
        }
        let mut buf = self.pool.pop().unwrap_or_else(|| {
            stats.handoff_buffers += 1;
            Box::new([0; MAX_HANDOFF])
        });
        buf[..bytes.len()].copy_from_slice(bytes);
        self.queue.push_back(Handoff { to, from: self.from, leg, kind, len: bytes.len() as u16, bytes: buf });
        stats.handoffs_out += 1;
        true
    }

    /// Takes back a handoff's buffer.
    fn recycle(&mut self, h: Handoff) {
        if self.pool.len() < HANDOFF_POOL {
            self.pool.push(h.bytes);
        }
    }
}

/// How many STUN/DTLS datagrams wait for the slow path before new ones are dropped.
const SLOW_QUEUE: usize = 64;

/// A STUN or DTLS datagram of a WebRTC leg, for the slow path ([`Core::poll_slow`]).
#[derive(Clone, Debug)]
pub struct SlowDatagram {
    /// The leg whose port it arrived on.
    pub leg: LegId,
    /// That port.
    pub local_port: u16,
    /// Its source.
    pub remote: SocketAddr,
    len: u16,
    bytes: [u8; MAX_DATAGRAM],
}

impl SlowDatagram {
    /// The datagram.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// One worker's forwarding core.
#[derive(Debug)]
pub struct Core {
    slow: VecDeque<SlowDatagram>,
    tables: Tables,
    stats: CoreStats,
    events: VecDeque<Event>,
    shard: Shard,
    handoffs: Handoffs,
    /// When the idle/stopped sweep runs next.
    next_sweep: Instant,
    /// The earliest uplink report deadline of the legs this core owns, if any.
    next_uplink: Option<Instant>,
    /// The earliest probe packet due on a leg this core owns, if any.
    next_probe: Option<Instant>,
    /// When the housekeeping tick last ran (layer rates are bytes over the time since).
    last_sweep: Option<Instant>,
    /// The allocator's per-leg scratch (allocated once).
    alloc_scratch: Vec<(TrackId, usize, crate::downlink::alloc::Demand)>,
    /// Paced legs' waiting packets.
    pacing: crate::downlink::pacer::Pacing,
    /// The speaker selectors of the groups this core ranks.
    speakers: crate::audio::Speakers,
    /// When speakers are ranked next; `None` while no ranked track was heard.
    next_speakers: Option<Instant>,
    /// [`CoreConfig::decrypt_silence`].
    decrypt_silence: bool,
    /// [`CoreConfig::xdp_silence_gate`].
    xdp_silence_gate: bool,
    /// The audio streams whose silence the XDP stage drops, as last told ([`Event::SilenceGate`]):
    /// (port, SSRC, extension id, VAD), sorted.
    xdp_gates: Vec<(u16, Ssrc, u8, bool)>,
    /// Scratch for the next set.
    gates_scratch: Vec<(u16, Ssrc, u8, bool)>,
}

/// The fan-out's context from a core's parts (`stats`, `events`, `shard`, `handoffs`,
/// `pacing`), leaving its tables free to borrow beside it.
macro_rules! fan_ctx {
    ($core:ident, $now:expr, $out:expr) => {
        fanout::Ctx {
            now: $now,
            out: $out,
            stats: &mut $core.stats,
            events: &mut $core.events,
            shard: $core.shard,
            handoffs: &mut $core.handoffs,
            pacing: &mut $core.pacing,
        }
    };
}
use fan_ctx;

pub(crate) fn push_event(events: &mut VecDeque<Event>, e: Event) {
    if events.len() >= EVENT_QUEUE {
        events.pop_front();
    }
    events.push_back(e);
}

impl Core {
    /// A core with empty tables.
    pub fn new(config: CoreConfig) -> Self {
        let mut tables = Tables::new(config.tables);
        tables.set_shards(config.shard.count);
        Self {
            tables,
            stats: CoreStats::default(),
            events: VecDeque::with_capacity(EVENT_QUEUE),
            shard: config.shard,
            handoffs: Handoffs::new(config.shard.index),
            slow: VecDeque::with_capacity(SLOW_QUEUE),
            next_sweep: Instant::default(),
            next_uplink: None,
            next_probe: None,
            last_sweep: None,
            alloc_scratch: Vec::with_capacity(downlink::MAX_ALLOC),
            pacing: crate::downlink::pacer::Pacing::default(),
            speakers: crate::audio::Speakers::default(),
            next_speakers: None,
            decrypt_silence: config.decrypt_silence,
            xdp_silence_gate: config.xdp_silence_gate,
            xdp_gates: Vec::new(),
            gates_scratch: Vec::new(),
        }
    }

    /// The tables (read-only; change them with [`Core::apply`]).
    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    /// The counters.
    pub fn stats(&self) -> &CoreStats {
        &self.stats
    }

    /// The traffic this core counted on each leg (see [`crate::stats::LegTraffic`]), of the
    /// legs it counted any for, into `out` (cleared first). Walks every leg: for reports between
    /// batches, not per packet.
    pub fn leg_traffic(&self, out: &mut Vec<crate::stats::LegCount>) {
        out.clear();
        out.extend(self.tables.legs().filter(|l| !l.traffic.is_zero()).map(|l| crate::stats::LegCount { leg: l.spec.id, traffic: l.traffic }));
    }

    /// Applies a table delta atomically (between batches).
    pub fn apply(&mut self, delta: Delta) -> Result<crate::ids::Generation, DeltaError> {
        let g = self.tables.apply(delta)?;
        self.stats.deltas_applied += 1;
        Ok(g)
    }

    /// The next handoff for another core, if any (take them all after every batch).
    pub fn poll_handoff(&mut self) -> Option<Handoff> {
        self.handoffs.queue.pop_front()
    }

    /// Takes back a handoff this core made, once the core it went to is done with it (its
    /// buffer goes back to the pool).
    pub fn recycle(&mut self, handoff: Handoff) {
        self.handoffs.recycle(handoff);
    }

    /// What another core handed over ([`Core::poll_handoff`] there): a publisher's packet or
    /// sender report for the subscriptions and audio slots of the legs this core owns, a keyframe
    /// request, an upstream NACK or layer demand for a track this core fans out, or that core's
    /// speaker candidates. The packet is rewritten in place (hand it back with
    /// [`Core::recycle`] on the core it came from).
    pub fn handle_handoff(&mut self, now: Instant, handoff: &mut Handoff, out: &mut OutBatch) {
        self.stats.handoffs_in += 1;
        let before = out.len();
        let len = usize::from(handoff.len);
        let plain = &mut handoff.bytes[..len];
        let mut ctx = fan_ctx!(self, now, out);
        match handoff.kind {
            HandoffKind::Media { track, ssrc, layer, rtx, speaking } => {
                let Some((t, legs, slot_legs)) = self.tables.track_legs_and_slots_mut(track) else { return };
                // The layer flows (what the allocator and the fallback read here); its start and
                // stop are reported by the track's own core.
                if !rtx && let Some(state) = t.layers.get_mut(usize::from(layer)) {
                    state.activity.touch(now);
                }
                if t.owners & (1u64 << self.shard.index.min(63)) != 0 {
                    let _ = fanout::rtp(&mut ctx, t, legs, ssrc, layer, rtx, plain);
                }
                let ranking = t.spec.speaker_group.and_then(|g| self.speakers.group(g)).map(|s| *s.ranking());
                if let Some(ranking) = ranking.filter(|_| !rtx && !slot_legs.is_empty()) {
                    fanout::to_slots(&mut ctx, t, legs, slot_legs, &ranking, ssrc, plain, speaking);
                }
            }
            HandoffKind::Sr { track } => {
                if let Ok(sr) = crate::wire::rtcp::SenderReport::new_checked(&*plain) {
                    rtcp::track_sender_report(&mut ctx, &mut self.tables, track, sr.sender_ssrc(), &sr.sender_info());
                }
            }
            HandoffKind::Keyframe { track, layer } => {
                if let Some((t, legs)) = self.tables.track_and_legs_mut(track) {
                    fanout::request_keyframe(&mut ctx, t, legs, layer);
                }
            }
            HandoffKind::Upstream => rtcp::send_upstream(&mut ctx, &mut self.tables, handoff.leg, plain),
            HandoffKind::Demand { track, layers } => {
                if let Some(t) = self.tables.track_mut(track) {
                    let bit = 1u64 << handoff.from.min(63);
                    for (l, state) in t.layers.iter_mut().enumerate() {
                        if layers & (1 << l) != 0 {
                            state.wanted_by |= bit;
                        } else {
                            state.wanted_by &= !bit;
                        }
                    }
                }
            }
            HandoffKind::Speakers { group } => {
                self.speakers.take_remote(now, handoff.from, group, plain);
                if self.next_speakers.is_none() {
                    self.next_speakers = Some(now + crate::audio::SPEAKER_TICK);
                }
            }
        }
        for (_, p) in out.iter().skip(before) {
            self.stats.tx_packets += 1;
            self.stats.tx_bytes += p.len() as u64;
        }
    }

    /// Records an SSRC another core learned from a layer's RID (see [`Tables::learn_ssrc`]), so
    /// every core's tables agree on which SSRCs a leg has.
    pub fn install_learned_ssrc(&mut self, leg: LegId, track: TrackId, layer: u8, rtx: bool, ssrc: Ssrc) {
        let window = self.tables.config().replay_window;
        let _ = self.tables.learn_ssrc(leg, track, layer, rtx, ssrc, RtpRecvState::new(window));
    }

    /// This core's part of the dataplane's checkpoint (see [`crate::table::checkpoint`]): the
    /// legs on its ports and the streams of their subscriptions (it builds every copy to them).
    pub fn checkpoint(&self, out: &mut crate::table::checkpoint::Checkpoint) {
        let shard = self.shard;
        self.tables.checkpoint(|p| shard.owns(p), out);
    }

    /// Restores a checkpoint into the tables (see [`Tables::restore`]); a remote it restores on
    /// a leg of this core is reported as latched, so the XDP shield allows it again, and a
    /// WebRTC leg that lost its DTLS association with the old process as failed.
    pub fn restore(&mut self, ck: &crate::table::checkpoint::Checkpoint, now: Instant, elapsed: core::time::Duration) -> crate::table::checkpoint::Restored {
        self.restore_with(ck, now, elapsed, crate::table::checkpoint::Margins::RESTART)
    }

    /// [`Core::restore`] with the streams resuming `margins` past their positions (exactly at
    /// them for a session moved from another node).
    pub fn restore_with(
        &mut self,
        ck: &crate::table::checkpoint::Checkpoint,
        now: Instant,
        elapsed: core::time::Duration,
        margins: crate::table::checkpoint::Margins,
    ) -> crate::table::checkpoint::Restored {
        let done = self.tables.restore_with(ck, now, elapsed, margins);
        let shard = self.shard;
        let owned = |t: &Tables, leg: LegId| t.leg(leg).is_some_and(|l| shard.owns(l.spec.local_port));
        for &(leg, remote) in &done.latched {
            if owned(&self.tables, leg) {
                self.emit(Event::RemoteLatched { leg, remote });
            }
        }
        for &leg in &done.lost_webrtc {
            if owned(&self.tables, leg) {
                self.emit(Event::EdgeFailed { leg, reason: crate::ice::EdgeFailure::DataplaneRestarted });
            }
        }
        done
    }

    /// Sets a leg's remote address (learned by another core, or by the slow path); see
    /// [`Tables::set_remote`] (refused, with the leg that has it, when another leg of the same
    /// shared port has that remote).
    pub fn set_remote(&mut self, leg: LegId, remote: SocketAddr) -> Result<(), LegId> {
        self.tables.set_remote(leg, remote)
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn emit(&mut self, e: Event) {
        push_event(&mut self.events, e);
    }

    /// Handles one received datagram: `buf` is exactly its bytes, and is decrypted in place.
    /// Outputs go to `out`; a packet that produces none is counted under its drop reason.
    pub fn handle_rx(&mut self, now: Instant, local_port: u16, remote: SocketAddr, buf: &mut [u8], out: &mut OutBatch) {
        self.stats.rx_packets += 1;
        self.stats.rx_bytes += buf.len() as u64;
        let before = out.len();
        let verdict = match demux::classify(buf) {
            demux::PacketClass::Rtp => self.rx_rtp(now, local_port, remote, buf, out),
            demux::PacketClass::Rtcp => self.rx_rtcp(now, local_port, remote, buf, out),
            demux::PacketClass::Stun | demux::PacketClass::Dtls => self.rx_slow(now, local_port, remote, buf),
            _ => Err(DropReason::NotMedia),
        };
        for (_, p) in out.iter().skip(before) {
            self.stats.tx_packets += 1;
            self.stats.tx_bytes += p.len() as u64;
        }
        if let Err(reason) = verdict {
            self.stats.drop(reason);
            if reason.about_the_peer()
                && let Some(id) = self.tables.leg_at(local_port, remote)
                && self.tables.leg_mut(id).is_some_and(|l| l.first_drop(reason))
            {
                self.emit(Event::FirstDrop { leg: id, reason, remote });
            }
        }
    }

    /// The next STUN/DTLS datagram for the slow path, if any (drain after every batch).
    pub fn poll_slow(&mut self) -> Option<SlowDatagram> {
        self.slow.pop_front()
    }

    /// Installs the SRTP keys a WebRTC leg's DTLS handshake exported; see
    /// [`Tables::install_edge_keys`].
    pub fn install_edge_keys(&mut self, leg: LegId, rx: KeyMaterial, tx: KeyMaterial) -> Result<(), DeltaError> {
        self.tables.install_edge_keys(leg, rx, tx)
    }

    /// Sets a WebRTC leg's ICE consent; see [`Tables::set_edge_consent`].
    pub fn set_edge_consent(&mut self, leg: LegId, consent: bool) {
        self.tables.set_edge_consent(leg, consent);
    }

    /// Runs what is due at `now`: uplink reports to publishers (RR, transport-cc) and the sweep
    /// for legs and layers gone quiet ([`Event::LegIdle`], [`Event::StreamStopped`]). Packets go
    /// to `out`; when it fills up, the rest stays due ([`Core::poll_timeout`] says `now`). Call
    /// it whenever `poll_timeout` has passed (and calling it early is harmless).
    pub fn handle_timeout(&mut self, now: Instant, out: &mut OutBatch) {
        if self.next_uplink.is_some_and(|t| t <= now) {
            let before = out.len();
            let shard = self.shard;
            self.next_uplink = uplink::run(now, self.tables.legs_mut(), |port| shard.owns(port), out, &mut self.stats);
            for (_, p) in out.iter().skip(before) {
                self.stats.tx_packets += 1;
                self.stats.tx_bytes += p.len() as u64;
            }
            if out.remaining() == 0 {
                self.next_uplink = Some(now);
            }
        }
        if self.next_speakers.is_some_and(|t| t <= now) {
            self.rank_speakers(now);
        }
        if now >= self.next_sweep {
            self.sweep(now);
            self.housekeeping(now, out);
            self.next_sweep = now + SWEEP_INTERVAL;
        }
        if self.pacing.next.is_some_and(|t| t <= now) {
            let (legs, _) = self.tables.legs_and_tracks_mut();
            self.pacing.next = downlink::pace(now, legs, &mut self.pacing, out, &mut self.stats);
        }
        if self.next_probe.is_some_and(|t| t <= now) {
            let before = out.len();
            let shard = self.shard;
            let (legs, tracks) = self.tables.legs_and_tracks_mut();
            self.next_probe = downlink::probe(now, legs, tracks, |p| shard.owns(p), out, &mut self.stats);
            for (_, p) in out.iter().skip(before) {
                self.stats.tx_packets += 1;
                self.stats.tx_bytes += p.len() as u64;
            }
            if out.remaining() == 0 && self.next_probe.is_some() {
                self.next_probe = Some(now);
            }
        }
    }

    /// When [`Core::handle_timeout`] next has work: the caller sleeps no longer than this.
    pub fn poll_timeout(&self) -> Instant {
        [self.next_uplink, self.next_probe, self.pacing.next, self.next_speakers].into_iter().flatten().fold(self.next_sweep, Instant::min)
    }

    /// Layer rates, then each owned leg's bandwidth allocation (and the probes it asks for).
    fn housekeeping(&mut self, now: Instant, out: &mut OutBatch) {
        let elapsed = self.last_sweep.map_or(SWEEP_INTERVAL, |t| now.saturating_duration_since(t));
        self.last_sweep = Some(now);
        downlink::measure_layers(self.tables.tracks_mut(), elapsed);
        let shard = self.shard;
        let (legs, tracks) = self.tables.legs_and_tracks_mut();
        let probe = downlink::allocate(now, legs, tracks, |p| shard.owns(p), &mut self.alloc_scratch, &mut self.stats, &mut self.events);
        // Layer demand is reported by the core that fans a track out (its publisher's port is
        // ours), with what the other cores' subscriptions want (told below, on those cores).
        let fanned_here = |t: &crate::table::Track| legs.get(&t.spec.publisher).is_some_and(|p| shard.owns(p.spec.local_port));
        downlink::layer_demand(now, shard.index, tracks.values_mut().filter(|t| fanned_here(t)), &mut self.events);
        if shard.count > 1 {
            downlink::tell_demand(now, shard, legs, tracks, &mut self.handoffs, &mut self.stats);
        }
        downlink::fallback(legs, shard.index, tracks.values_mut(), &mut self.events);
        let before = out.len();
        cascade::tell(now, shard, legs, tracks, out);
        for (_, p) in out.iter().skip(before) {
            self.stats.tx_packets += 1;
            self.stats.tx_bytes += p.len() as u64;
        }
        self.next_probe = match (self.next_probe, probe) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    /// The speaker tick: ranks the groups of the tracks this core fans out (see [`crate::audio`]).
    fn rank_speakers(&mut self, now: Instant) {
        let shard = self.shard;
        let (legs, tracks) = self.tables.legs_and_tracks_mut();
        let owned = tracks.values_mut().filter(|t| legs.get(&t.spec.publisher).is_some_and(|p| shard.owns(p.spec.local_port)));
        let any = self.speakers.tick(now, owned, &mut self.events);
        // Every other core ranks the same groups: it gets this core's candidates.
        if shard.count > 1 {
            let mut buf = [0u8; MAX_HANDOFF];
            for chunk in self.speakers.local().chunk_by(|a, b| a.0 == b.0) {
                let group = chunk[0].0;
                let n = crate::audio::encode_candidates(chunk.iter().map(|(_, c)| *c), &mut buf);
                for to in (0..shard.count).filter(|&w| w != shard.index) {
                    self.handoffs.push(&mut self.stats, to, LegId(0), HandoffKind::Speakers { group }, &buf[..n]);
                }
            }
        }
        self.update_xdp_gates();
        // Ticks stay on the grid the first heard level started (no drift from late wake-ups).
        let next = self.next_speakers.unwrap_or(now) + crate::audio::SPEAKER_TICK;
        self.next_speakers = any.then(|| if next > now { next } else { now + crate::audio::SPEAKER_TICK });
    }

    /// Which audio streams' silence the XDP stage may drop, after a speaker tick: those of the
    /// tracks this core owns that the worker itself would gate (only audio slots take them, not
    /// ranked), whose leg has a latched remote and no transport-cc (the worker must record the
    /// arrival of a leg's every packet for its transport-cc feedback; XDP drops would show as
    /// loss). Changes go out as [`Event::SilenceGate`]; the streams are marked so the worker
    /// counts their holes as received.
    fn update_xdp_gates(&mut self) {
        let shard = self.shard;
        self.gates_scratch.clear();
        if self.xdp_silence_gate && !self.decrypt_silence {
            let (legs, tracks) = self.tables.legs_and_tracks_mut();
            for t in tracks.values() {
                let (Some(ext), Some(group)) = (t.spec.audio_level_ext, t.spec.speaker_group) else { continue };
                let Some(leg) = legs.get(&t.spec.publisher).filter(|l| shard.owns(l.spec.local_port)) else { continue };
                let ranked = self.speakers.group(group).is_some_and(|s| s.ranking().as_slice().iter().any(|sp| sp.track == t.spec.id));
                if !t.subs.is_empty() || ranked || leg.remote.is_none() || leg.spec.feedback.twcc_ext.is_some() {
                    continue;
                }
                for ssrc in t.layers.iter().filter_map(|l| l.ssrc) {
                    self.gates_scratch.push((leg.spec.local_port, ssrc, ext, t.level.uses_vad()));
                }
            }
        }
        self.gates_scratch.sort_unstable();
        if self.gates_scratch == self.xdp_gates {
            return;
        }
        self.tell_xdp_gates();
        // The streams' marks (a delta that rebuilds a leg's streams keeps them).
        let gates = &self.xdp_gates;
        for leg in self.tables.legs_mut().filter(|l| shard.owns(l.spec.local_port)) {
            let port = leg.spec.local_port;
            for i in leg.ingress.iter_mut().filter(|i| i.level_gate.is_some() || i.xdp_gated) {
                i.xdp_gated = gates.binary_search_by(|g| (g.0, g.1).cmp(&(port, i.ssrc))).is_ok();
            }
        }
    }

    /// Reports the difference between the gates told and the new set ([`Event::SilenceGate`]),
    /// and makes the new set the told one.
    fn tell_xdp_gates(&mut self) {
        for &(port, ssrc, ext, vad) in &self.xdp_gates {
            if !self.gates_scratch.iter().any(|g| g.0 == port && g.1 == ssrc) {
                push_event(&mut self.events, Event::SilenceGate { port, ssrc, ext, vad, on: false });
            }
        }
        for &g in &self.gates_scratch {
            if !self.xdp_gates.contains(&g) {
                push_event(&mut self.events, Event::SilenceGate { port: g.0, ssrc: g.1, ext: g.2, vad: g.3, on: true });
            }
        }
        std::mem::swap(&mut self.xdp_gates, &mut self.gates_scratch);
    }

    /// The speaker selectors (for the dataplane's status and tests).
    pub fn speakers(&self) -> &crate::audio::Speakers {
        &self.speakers
    }

    /// Walks the whole table for legs and layers that went quiet.
    fn sweep(&mut self, now: Instant) {
        for leg in self.tables.legs_mut() {
            if leg.activity.expire(now, LEG_IDLE_AFTER) {
                push_event(&mut self.events, Event::LegIdle { leg: leg.spec.id });
            }
        }
        // Every core that sees a layer flow (received, or handed over) marks it stopped; the
        // track's own core reports it.
        let shard = self.shard;
        let (legs, tracks) = self.tables.legs_and_tracks_mut();
        for track in tracks.values_mut() {
            let fanned_here = legs.get(&track.spec.publisher).is_some_and(|p| shard.owns(p.spec.local_port));
            for (i, layer) in track.layers.iter_mut().enumerate() {
                if layer.activity.expire(now, STREAM_STOPPED_AFTER) && fanned_here {
                    push_event(&mut self.events, Event::StreamStopped { track: track.spec.id, layer: i as u8 });
                }
            }
        }
    }
}

mod fanout;

#[cfg(test)]
mod tests;
