//! The SSRC rewrite tables: legs, published tracks with their layers, and subscriptions — the
//! specs the control plane sent, plus the per-stream state the packet path keeps (SRTP contexts,
//! rewriters, retransmission caches).
//!
//! Tables change only through [`Tables::apply`] with a versioned [`Delta`], between batches, so a
//! batch of packets always sees one table version. A delta is atomic: each op is validated against
//! the state left by the ops before it (so cascades and uniqueness are checked exactly), every
//! mutation records its inverse in an undo log, and the first invalid op rolls the whole delta
//! back. Upserts keep runtime state (ROC, replay windows, rewriters, caches) wherever the keys or
//! SSRCs did not change, which is what makes pause/resume and layer changes hitless.
//!
//! Ownership: a subscription lives inside its track (`Track::subs`), so the fan-out walks one
//! contiguous vector; a leg keeps an index of the out-SSRCs it receives so its feedback finds the
//! subscription.

pub mod spec;

use std::collections::HashMap;
use std::net::SocketAddr;

use foldhash::fast::RandomState;

use crate::downlink::Downlink;
use crate::forward::rewrite::SeqTsRewriter;
use crate::forward::rtx_cache::RtxCache;
use crate::ids::{Generation, LegId, Pt, Ssrc, TrackId};
use crate::srtp::{RtcpRecvState, RtcpSendState, RtpRecvState, RtpSendState, SrtpKeys};
use crate::time::Instant;
use crate::uplink::{RecvStats, Uplink};
use crate::wire::rtp::ExtensionIdMap;
pub use spec::{
    Codec, Delta, DtlsRole, EdgeSpec, FeedbackSpec, IceCredentials, KeyMaterial, LayerSpec, LegSpec, MediaKind, Op, PayloadSpec, SpecError, SubscriptionSpec,
    TrackSpec,
};

/// The hash map the tables use: foldhash, seeded per process (keys come from the network, so the
/// hasher must not be predictable).
pub type Map<K, V> = HashMap<K, V, RandomState>;

/// How many payload-type mappings a subscription holds (media + RTX for a few codecs).
pub const MAX_PT_MAP: usize = 8;
/// How many SRTCP senders a leg keeps replay state for.
const MAX_RTCP_SENDERS: usize = 8;
/// How many removed subscriptions' stream state a subscriber leg keeps (by out-SSRC) to resume
/// them if they come back.
pub const MAX_RETIRED_STREAMS: usize = 16;

/// Why a delta was refused. The whole delta was rolled back; the tables are as before it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeltaError {
    /// The delta's generation does not follow the tables' (a full snapshot is needed).
    #[error("generation {got} does not follow the current generation {current}; resync needed")]
    Generation {
        /// The tables' generation.
        current: Generation,
        /// The delta's.
        got: Generation,
    },
    /// An op names a leg that does not exist.
    #[error("op {op}: unknown leg {leg}")]
    UnknownLeg {
        /// Index of the op in the delta.
        op: usize,
        /// The leg.
        leg: LegId,
    },
    /// An op names a track that does not exist.
    #[error("op {op}: unknown track {track}")]
    UnknownTrack {
        /// Index of the op in the delta.
        op: usize,
        /// The track.
        track: TrackId,
    },
    /// An op removes a subscription that does not exist.
    #[error("op {op}: leg {subscriber} has no subscription to track {track}")]
    UnknownSubscription {
        /// Index of the op in the delta.
        op: usize,
        /// The subscriber.
        subscriber: LegId,
        /// The track.
        track: TrackId,
    },
    /// Another leg already uses the local port.
    #[error("op {op}: local port {port} already belongs to leg {owner}")]
    PortInUse {
        /// Index of the op in the delta.
        op: usize,
        /// The port.
        port: u16,
        /// The leg that has it.
        owner: LegId,
    },
    /// An SSRC is used twice where it must be unique (publisher SSRCs on one leg, out-SSRCs on one
    /// subscriber leg).
    #[error("op {op}: ssrc {ssrc} is already used on leg {leg}")]
    DuplicateSsrc {
        /// Index of the op in the delta.
        op: usize,
        /// The leg.
        leg: LegId,
        /// The SSRC.
        ssrc: Ssrc,
    },
    /// A leg may not subscribe to its own track.
    #[error("op {op}: leg {leg} cannot subscribe to its own track {track}")]
    SelfSubscription {
        /// Index of the op in the delta.
        op: usize,
        /// The leg.
        leg: LegId,
        /// The track.
        track: TrackId,
    },
    /// A spec field is out of range; `field` names it (the spec's own `validate` said so, or a
    /// check against the tables' state).
    #[error("op {op}: invalid {field}: {why}")]
    Invalid {
        /// Index of the op in the delta.
        op: usize,
        /// The field, as `spec.field`.
        field: &'static str,
        /// What is wrong.
        why: &'static str,
    },
}

impl DeltaError {
    fn invalid(op: usize, e: SpecError) -> Self {
        DeltaError::Invalid { op, field: e.field, why: e.why }
    }
}

/// One publisher stream (a layer or its RTX) as the receiving leg indexes it.
#[derive(Clone, Debug)]
pub struct Ingress {
    /// The publisher's SSRC.
    pub ssrc: Ssrc,
    /// The track it belongs to.
    pub track: TrackId,
    /// The layer index within the track.
    pub layer: u8,
    /// Whether this is the RTX stream of the layer.
    pub rtx: bool,
    /// SRTP receive state (ROC, replay window).
    pub recv: RtpRecvState,
    /// RFC 3550 receive statistics, for the receiver reports Sluice sends the publisher.
    pub stats: RecvStats,
    /// The track's RTP clock rate (for interarrival jitter).
    pub clock_rate: u32,
}

/// A leg and its runtime state.
#[derive(Debug)]
pub struct Leg {
    /// What the control plane said.
    pub spec: LegSpec,
    /// The current remote address (the spec's, or latched from the first authenticated packet).
    pub remote: Option<SocketAddr>,
    /// Derived keys for what the participant sends.
    pub rx: SrtpKeys,
    /// Derived keys for what we send.
    pub tx: SrtpKeys,
    /// Publisher streams arriving on this leg. A handful per leg: a linear scan beats hashing.
    pub ingress: Vec<Ingress>,
    /// Out-SSRCs this leg receives → the track, for its feedback.
    pub egress: Vec<(Ssrc, TrackId)>,
    /// SRTCP replay state per sender SSRC of the participant.
    pub rtcp_recv: Vec<(Ssrc, RtcpRecvState)>,
    /// SRTCP state for the feedback the SFU originates towards this participant.
    pub feedback_srtcp: RtcpSendState,
    /// Tracks this leg publishes.
    pub tracks: Vec<TrackId>,
    /// When the leg last received authenticated media, and whether it counts as active.
    pub activity: Activity,
    /// Receive statistics from the participant's receiver reports.
    pub stats: LegStats,
    /// Runtime state of a WebRTC leg (`spec.edge` is set).
    pub edge: Option<EdgeState>,
    /// What Sluice, as the receiver of the participant's media, reports back to it.
    pub uplink: Uplink,
    /// Sluice as the sender towards the participant: its transport-wide sequence, send history
    /// and bandwidth estimate, when the leg negotiated transport-cc.
    pub downlink: Option<Box<Downlink>>,
    /// The stream state of subscriptions this leg no longer has, oldest first, at most
    /// [`MAX_RETIRED_STREAMS`]: a subscription that comes back with the same out-SSRC resumes it.
    retired: Vec<RetiredStream>,
}

/// What the subscriber saw of a removed subscription's stream: where its sequence numbers and
/// timestamps stopped and the SRTP send state of its SSRCs. To the subscriber an out-SSRC is one
/// stream, so a subscription that comes back with it continues the sequence (a jump would count
/// as loss) and the rollover counter (a fresh one would reuse SRTP indexes under the same key).
#[derive(Clone, Debug)]
struct RetiredStream {
    out_ssrc: Ssrc,
    out_rtx_ssrc: Option<Ssrc>,
    rewriter: SeqTsRewriter,
    srtp: RtpSendState,
    rtx_srtp: RtpSendState,
    rtx_seq: u16,
    srtcp: RtcpSendState,
    packets_sent: u32,
    octets_sent: u32,
}

/// What a WebRTC leg learned at run time, kept across every upsert (and full resync) that leaves
/// its [`EdgeSpec`] unchanged: the control plane's snapshot does not carry it, so a resync never
/// undoes a handshake, and the keys never leave the dataplane.
#[derive(Clone, Debug, Default)]
pub struct EdgeState {
    /// The SRTP keys the DTLS handshake exported, `(rx, tx)`, once the slow path installed them.
    pub keys: Option<(KeyMaterial, KeyMaterial)>,
    /// ICE consent to send (RFC 7675); set by the slow path.
    pub consent: bool,
    /// Slow-path token bucket: datagrams this leg may still hand to the slow path.
    pub tokens: u32,
    /// When the bucket was last refilled.
    pub refilled: Instant,
}

impl EdgeState {
    fn new() -> Self {
        Self { tokens: SLOW_PATH_BURST, ..Self::default() }
    }

    /// Takes one slow-path token; refills [`SLOW_PATH_RATE`] tokens per second up to
    /// [`SLOW_PATH_BURST`].
    pub fn take_token(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled);
        let earned = (elapsed.as_millis() as u64).saturating_mul(u64::from(SLOW_PATH_RATE)) / 1000;
        if earned > 0 {
            self.tokens = (u64::from(self.tokens) + earned).min(u64::from(SLOW_PATH_BURST)) as u32;
            self.refilled = now;
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// STUN and DTLS datagrams per second one WebRTC leg may hand to the slow path (checks every
/// 50 ms on a few candidate pairs plus handshake flights stay well below it).
pub const SLOW_PATH_RATE: u32 = 100;
/// Burst of the slow-path token bucket.
pub const SLOW_PATH_BURST: u32 = 200;

/// What a participant's receiver reports say about what it receives from us.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct LegStats {
    /// Fraction lost (0..=255 of 256) in the last report.
    pub fraction_lost: u8,
    /// Cumulative packets lost in the last report.
    pub cumulative_lost: u32,
    /// Interarrival jitter in RTP units in the last report.
    pub jitter: u32,
    /// Round-trip time in microseconds, when a report referenced a sender report we sent.
    pub rtt_us: Option<u32>,
    /// Receiver reports consumed.
    pub reports: u64,
}

impl Leg {
    /// Whether media from the participant is accepted: a static-key leg always, a WebRTC leg
    /// once its DTLS keys are installed.
    #[inline]
    pub fn receives_media(&self) -> bool {
        self.edge.as_ref().is_none_or(|e| e.keys.is_some())
    }

    /// Whether media may be sent to the participant: a static-key leg always, a WebRTC leg with
    /// DTLS keys and ICE consent.
    #[inline]
    pub fn sends_media(&self) -> bool {
        self.edge.as_ref().is_none_or(|e| e.keys.is_some() && e.consent)
    }

    /// Where packets for the participant go: its remote address, when known and the leg may send.
    #[inline]
    pub fn destination(&self) -> Option<SocketAddr> {
        if self.sends_media() { self.remote } else { None }
    }

    /// The key material in use, `(rx, tx)`: the DTLS-exported keys of a connected WebRTC leg,
    /// else the spec's.
    pub fn key_material(&self) -> (&KeyMaterial, &KeyMaterial) {
        match self.edge.as_ref().and_then(|e| e.keys.as_ref()) {
            Some((rx, tx)) => (rx, tx),
            None => (&self.spec.rx, &self.spec.tx),
        }
    }

    /// The receive index of `ssrc` on this leg.
    #[inline]
    pub fn ingress_index(&self, ssrc: Ssrc) -> Option<usize> {
        self.ingress.iter().position(|i| i.ssrc == ssrc)
    }

    /// The SRTCP receive state of `sender`, if it sent an authenticated packet before.
    pub fn rtcp_recv(&self, sender: Ssrc) -> Option<&RtcpRecvState> {
        self.rtcp_recv.iter().find(|(s, _)| *s == sender).map(|(_, st)| st)
    }

    /// Keeps the stream state of a removed subscription (replacing an older one of the same
    /// out-SSRC, forgetting the oldest past [`MAX_RETIRED_STREAMS`]).
    fn retire(&mut self, stream: RetiredStream) {
        self.retired.retain(|r| r.out_ssrc != stream.out_ssrc);
        if self.retired.len() >= MAX_RETIRED_STREAMS {
            self.retired.remove(0);
        }
        self.retired.push(stream);
    }

    /// Takes the retired stream state of `out_ssrc`, if the leg kept one.
    fn take_retired(&mut self, out_ssrc: Ssrc) -> Option<RetiredStream> {
        let p = self.retired.iter().position(|r| r.out_ssrc == out_ssrc)?;
        Some(self.retired.remove(p))
    }

    /// How many removed subscriptions' stream state the leg keeps.
    pub fn retired_streams(&self) -> usize {
        self.retired.len()
    }

    /// Stores the SRTCP receive state of `sender` after an authenticated packet (bounded: past
    /// [`MAX_RTCP_SENDERS`] senders the oldest is forgotten).
    pub fn store_rtcp_recv(&mut self, sender: Ssrc, state: RtcpRecvState) {
        match self.rtcp_recv.iter_mut().find(|(s, _)| *s == sender) {
            Some((_, st)) => *st = state,
            None => {
                if self.rtcp_recv.len() >= MAX_RTCP_SENDERS {
                    self.rtcp_recv.remove(0);
                }
                self.rtcp_recv.push((sender, state));
            }
        }
    }
}

/// Runtime state of one layer of a track.
#[derive(Debug)]
pub struct LayerState {
    /// The layer's SSRC (signalled, or learned from RID).
    pub ssrc: Option<Ssrc>,
    /// Its RTX SSRC.
    pub rtx_ssrc: Option<Ssrc>,
    /// Recent packets for NACK answers (video only).
    pub cache: Option<RtxCache>,
    /// When a keyframe was last asked of the publisher for this layer (PLI/FIR throttling).
    pub last_keyframe_request: Option<Instant>,
    /// FIR command sequence number (RFC 5104 §4.3.1.1).
    pub fir_seq: u8,
    /// Whether a keyframe start was seen since the layer (re)started.
    pub seen_keyframe: bool,
    /// When the layer last received an authenticated packet, and whether it counts as flowing.
    pub activity: Activity,
    /// Bytes received since the last rate tick.
    pub bytes: u64,
    /// Its measured rate, bit/s (smoothed over the housekeeping ticks).
    pub rate_bps: u64,
    /// Whether it was last reported wanted by a subscription (`true` until reported otherwise),
    /// and since when nobody wants it.
    pub demand: (bool, Option<Instant>),
}

/// Whether something receives media: set on every authenticated packet, cleared by
/// [`crate::forward::Core::sweep`] after a quiet interval. The transitions are the control plane's
/// leg active/idle and stream started/stopped events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Activity {
    /// When the last authenticated packet arrived.
    pub last_rx: Option<Instant>,
    /// Whether the owner is active (a transition to true is reported when it happens).
    pub active: bool,
}

impl Activity {
    /// Records a packet at `now`; true when this makes it active.
    #[inline]
    pub fn touch(&mut self, now: Instant) -> bool {
        self.last_rx = Some(now);
        !core::mem::replace(&mut self.active, true)
    }

    /// True when it was active and has been quiet for at least `quiet` at `now` (it is then inactive).
    pub fn expire(&mut self, now: Instant, quiet: core::time::Duration) -> bool {
        let quiet_since = self.last_rx.is_none_or(|t| now.saturating_duration_since(t) >= quiet);
        if self.active && quiet_since {
            self.active = false;
            return true;
        }
        false
    }
}

/// A track and its subscriptions.
#[derive(Debug)]
pub struct Track {
    /// What the control plane said.
    pub spec: TrackSpec,
    /// Per-layer state, same order as `spec.layers`.
    pub layers: Vec<LayerState>,
    /// The subscriptions, contiguous for the fan-out.
    pub subs: Vec<Subscription>,
}

impl Track {
    /// The codec behind a publisher payload type, and whether that payload type is RTX.
    pub fn codec_of(&self, pt: Pt) -> Option<(Codec, bool)> {
        self.spec.payload_types.iter().find_map(|p| {
            if p.pt == pt {
                Some((p.codec, false))
            } else if p.rtx_pt == Some(pt) {
                Some((p.codec, true))
            } else {
                None
            }
        })
    }

    /// The subscription of `subscriber`, if any.
    pub fn sub_index(&self, subscriber: LegId) -> Option<usize> {
        self.subs.iter().position(|s| s.subscriber == subscriber)
    }
}

/// A subscription's compiled spec and its runtime state. Kept small: see the size test.
#[derive(Clone, Debug)]
pub struct Subscription {
    /// The receiving leg.
    pub subscriber: LegId,
    /// The SSRC the subscriber sees.
    pub out_ssrc: Ssrc,
    /// The RTX SSRC the subscriber sees.
    pub out_rtx_ssrc: Option<Ssrc>,
    /// Payload-type map (publisher, subscriber); `pt_len` entries are valid.
    pub pt_map: [(Pt, Pt); MAX_PT_MAP],
    /// Valid entries in `pt_map`.
    pub pt_len: u8,
    /// Header-extension id map (publisher id → subscriber id; unmapped ids are removed).
    pub ext_map: ExtensionIdMap,
    /// The wanted layer.
    pub target_layer: u8,
    /// The layer currently forwarded (`None` until the first keyframe).
    pub current_layer: Option<u8>,
    /// Paused: receives nothing.
    pub paused: bool,
    /// The allocator's rank (higher first).
    pub priority: u8,
    /// Sequence/timestamp rewriter.
    pub rewriter: SeqTsRewriter,
    /// SRTP send state of `out_ssrc`.
    pub srtp: RtpSendState,
    /// SRTP send state of `out_rtx_ssrc`.
    pub rtx_srtp: RtpSendState,
    /// Next sequence number of the RTX stream.
    pub rtx_seq: u16,
    /// SRTCP send state for the sender reports sent as `out_ssrc`.
    pub srtcp: RtcpSendState,
    /// RTP packets sent (for sender reports).
    pub packets_sent: u32,
    /// Payload octets sent (for sender reports).
    pub octets_sent: u32,
    /// The last SR sent to the subscriber: its LSR value (middle 32 bits of the NTP timestamp)
    /// and when it left, for RTT from the subscriber's receiver reports.
    pub last_sr: Option<(u32, Instant)>,
    /// The layer cap the leg's bandwidth allocator set (runtime: `None` until it runs, and on
    /// legs without congestion control).
    pub alloc_layer: Option<u8>,
    /// Since when the allocator has wanted this subscription below `alloc_layer` (a small dip
    /// of the estimate is held for a while before a down-switch).
    pub alloc_down_since: Option<Instant>,
}

impl Subscription {
    /// The layer the subscription should receive: the signaling's target, capped by the
    /// allocator. The select gate switches towards it.
    #[inline]
    pub fn target(&self) -> u8 {
        match self.alloc_layer {
            Some(a) => a.min(self.target_layer),
            None => self.target_layer,
        }
    }

    /// The subscriber's payload type for the publisher's `pt`.
    #[inline]
    pub fn map_pt(&self, pt: Pt) -> Option<Pt> {
        self.pt_map[..usize::from(self.pt_len)].iter().find(|(from, _)| *from == pt).map(|(_, to)| *to)
    }

    fn compile(spec: &SubscriptionSpec, layers: usize) -> Self {
        let mut pt_map = [(Pt(0), Pt(0)); MAX_PT_MAP];
        for (slot, m) in pt_map.iter_mut().zip(&spec.pt_map) {
            *slot = *m;
        }
        let mut ext_map = ExtensionIdMap::new();
        for &(from, to) in &spec.ext_map {
            // Validated to 1..=14 by SubscriptionSpec::validate.
            let _ = ext_map.set(from, to);
        }
        Self {
            subscriber: spec.subscriber,
            out_ssrc: spec.out_ssrc,
            out_rtx_ssrc: spec.out_rtx_ssrc,
            pt_map,
            pt_len: spec.pt_map.len() as u8,
            ext_map,
            target_layer: spec.target_layer.min(layers.saturating_sub(1) as u8),
            current_layer: None,
            paused: spec.paused,
            priority: spec.priority,
            rewriter: SeqTsRewriter::new(),
            srtp: RtpSendState::default(),
            rtx_srtp: RtpSendState::default(),
            rtx_seq: 0,
            srtcp: RtcpSendState::default(),
            packets_sent: 0,
            octets_sent: 0,
            last_sr: None,
            alloc_layer: None,
            alloc_down_since: None,
        }
    }

    /// The stream state the subscriber saw, to keep on its leg when the subscription goes.
    fn retired(&self) -> RetiredStream {
        RetiredStream {
            out_ssrc: self.out_ssrc,
            out_rtx_ssrc: self.out_rtx_ssrc,
            rewriter: self.rewriter.clone(),
            srtp: self.srtp,
            rtx_srtp: self.rtx_srtp,
            rtx_seq: self.rtx_seq,
            srtcp: self.srtcp,
            packets_sent: self.packets_sent,
            octets_sent: self.octets_sent,
        }
    }

    /// Continues a retired stream of the same out-SSRC. The layer is left unset, so the stream
    /// re-enters like a layer switch: at a keyframe, right after the last packet it sent, with
    /// the timestamp advanced by the time that passed.
    fn resume(&mut self, r: RetiredStream) {
        debug_assert_eq!(r.out_ssrc, self.out_ssrc);
        self.rewriter = r.rewriter;
        self.srtp = r.srtp;
        self.srtcp = r.srtcp;
        self.packets_sent = r.packets_sent;
        self.octets_sent = r.octets_sent;
        if r.out_rtx_ssrc == self.out_rtx_ssrc {
            self.rtx_srtp = r.rtx_srtp;
            self.rtx_seq = r.rtx_seq;
        }
    }

    /// Takes the spec's settings while keeping the runtime state (rewriter, SRTP, counters) when
    /// the out-SSRCs are unchanged.
    fn update(&mut self, spec: &SubscriptionSpec, layers: usize) {
        let fresh = Self::compile(spec, layers);
        if fresh.out_ssrc == self.out_ssrc && fresh.out_rtx_ssrc == self.out_rtx_ssrc {
            let keep = core::mem::replace(self, fresh);
            // A resumed subscription re-enters like a layer switch: at a keyframe, right after
            // the last packet it sent, so the paused stretch is neither a sequence gap (which the
            // subscriber would NACK) nor a resume in the middle of a GOP.
            self.current_layer = if keep.paused && !self.paused { None } else { keep.current_layer };
            self.rewriter = keep.rewriter;
            self.srtp = keep.srtp;
            self.rtx_srtp = keep.rtx_srtp;
            self.rtx_seq = keep.rtx_seq;
            self.srtcp = keep.srtcp;
            self.packets_sent = keep.packets_sent;
            self.octets_sent = keep.octets_sent;
            self.last_sr = keep.last_sr;
            self.alloc_layer = keep.alloc_layer;
            self.alloc_down_since = keep.alloc_down_since;
        } else {
            *self = fresh;
        }
    }

    /// The spec this subscription was compiled from (for snapshots).
    pub fn to_spec(&self, track: TrackId) -> SubscriptionSpec {
        SubscriptionSpec {
            subscriber: self.subscriber,
            track,
            out_ssrc: self.out_ssrc,
            out_rtx_ssrc: self.out_rtx_ssrc,
            pt_map: self.pt_map[..usize::from(self.pt_len)].to_vec(),
            ext_map: (1u8..15).filter(|&i| self.ext_map.get(i) != 0).map(|i| (i, self.ext_map.get(i))).collect(),
            target_layer: self.target_layer,
            paused: self.paused,
            priority: self.priority,
        }
    }
}

/// How the tables are set up.
#[derive(Clone, Copy, Debug)]
pub struct TableConfig {
    /// SRTP replay window per publisher stream, in packets (at least 128).
    pub replay_window: u16,
    /// Packets kept per video layer for NACK answers (0 disables the cache).
    pub rtx_cache_packets: usize,
}

impl Default for TableConfig {
    fn default() -> Self {
        Self { replay_window: 128, rtx_cache_packets: 256 }
    }
}

/// The mutations of the delta being applied, inverted, and which entities already have a saved
/// copy (each is saved once, before its first change).
#[derive(Default)]
struct UndoLog {
    entries: Vec<Undo>,
    saved_legs: std::collections::HashSet<LegId, RandomState>,
    saved_tracks: std::collections::HashSet<TrackId, RandomState>,
}

impl UndoLog {
    fn push(&mut self, u: Undo) {
        match &u {
            Undo::LegInserted(id) => {
                self.saved_legs.insert(*id);
            }
            Undo::LegReplaced(l) | Undo::LegRemoved(l) => {
                self.saved_legs.insert(l.spec.id);
            }
            Undo::TrackInserted(id) => {
                self.saved_tracks.insert(*id);
            }
            Undo::TrackReplaced(t) | Undo::TrackRemoved(t) => {
                self.saved_tracks.insert(t.spec.id);
            }
        }
        self.entries.push(u);
    }
}

/// The inverse of one mutation, for rollback.
enum Undo {
    LegInserted(LegId),
    LegReplaced(Box<Leg>),
    LegRemoved(Box<Leg>),
    TrackInserted(TrackId),
    TrackReplaced(Box<Track>),
    TrackRemoved(Box<Track>),
}

/// All of one core's tables.
#[derive(Debug)]
pub struct Tables {
    config: TableConfig,
    generation: Generation,
    legs: Map<LegId, Leg>,
    by_port: Map<u16, LegId>,
    tracks: Map<TrackId, Track>,
}

impl Tables {
    /// Empty tables at generation 0.
    pub fn new(config: TableConfig) -> Self {
        Self { config, generation: Generation(0), legs: Map::default(), by_port: Map::default(), tracks: Map::default() }
    }

    /// The settings.
    pub fn config(&self) -> &TableConfig {
        &self.config
    }

    /// The generation of the last applied delta.
    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// The leg bound to a local port.
    #[inline]
    pub fn leg_by_port(&self, port: u16) -> Option<LegId> {
        self.by_port.get(&port).copied()
    }

    /// Every local port a leg uses.
    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.by_port.keys().copied()
    }

    /// A leg.
    #[inline]
    pub fn leg(&self, id: LegId) -> Option<&Leg> {
        self.legs.get(&id)
    }

    /// A leg, mutably.
    #[inline]
    pub fn leg_mut(&mut self, id: LegId) -> Option<&mut Leg> {
        self.legs.get_mut(&id)
    }

    /// A track.
    #[inline]
    pub fn track(&self, id: TrackId) -> Option<&Track> {
        self.tracks.get(&id)
    }

    /// A track, mutably.
    #[inline]
    pub fn track_mut(&mut self, id: TrackId) -> Option<&mut Track> {
        self.tracks.get_mut(&id)
    }

    /// A track and the legs, mutably and at once (the fan-out reads subscriber legs' keys while it
    /// The most subscriptions any one track has: how many copies one received packet can make.
    /// Walks every track (call it after a delta, not per packet).
    pub fn max_fanout(&self) -> usize {
        self.tracks.values().map(|t| t.subs.len()).max().unwrap_or(0)
    }

    /// Every leg, mutably (for runtime state; specs change only through [`Tables::apply`]).
    pub fn legs_mut(&mut self) -> impl Iterator<Item = &mut Leg> + '_ {
        self.legs.values_mut()
    }

    /// Every track, mutably (for runtime state; specs change only through [`Tables::apply`]).
    pub fn tracks_mut(&mut self) -> impl Iterator<Item = &mut Track> + '_ {
        self.tracks.values_mut()
    }

    /// updates the track's subscriptions).
    #[inline]
    pub fn track_and_legs_mut(&mut self, id: TrackId) -> Option<(&mut Track, &mut Map<LegId, Leg>)> {
        let track = self.tracks.get_mut(&id)?;
        Some((track, &mut self.legs))
    }

    /// Legs and tracks at once, for controllers that read a leg and change its subscriptions
    /// (the bandwidth allocator).
    pub fn legs_and_tracks_mut(&mut self) -> (&mut Map<LegId, Leg>, &mut Map<TrackId, Track>) {
        (&mut self.legs, &mut self.tracks)
    }

    /// Numbers of legs, tracks and subscriptions.
    pub fn counts(&self) -> (usize, usize, usize) {
        (self.legs.len(), self.tracks.len(), self.tracks.values().map(|t| t.subs.len()).sum())
    }

    /// Records an SSRC learned from the packet path (a layer announced by its RID), with the
    /// receive state of the packet that proved it. Returns its ingress index on the leg. Learned
    /// SSRCs last until the track's spec changes the layer.
    pub fn learn_ssrc(&mut self, leg_id: LegId, track_id: TrackId, layer: u8, rtx: bool, ssrc: Ssrc, recv: RtpRecvState) -> Option<usize> {
        let leg = self.legs.get_mut(&leg_id)?;
        if leg.ingress_index(ssrc).is_some() {
            return None;
        }
        let track = self.tracks.get_mut(&track_id)?;
        let clock_rate = track.spec.clock_rate;
        let state = track.layers.get_mut(usize::from(layer))?;
        if rtx {
            state.rtx_ssrc = Some(ssrc);
        } else {
            state.ssrc = Some(ssrc);
        }
        leg.ingress.push(Ingress { ssrc, track: track_id, layer, rtx, recv, stats: RecvStats::default(), clock_rate });
        Some(leg.ingress.len() - 1)
    }

    /// Every spec in the tables, as a full-snapshot delta at the current generation.
    pub fn snapshot(&self) -> Delta {
        let mut ops = Vec::new();
        let mut legs: Vec<_> = self.legs.values().collect();
        legs.sort_by_key(|l| l.spec.id);
        ops.extend(legs.iter().map(|l| Op::UpsertLeg(l.spec.clone())));
        let mut tracks: Vec<_> = self.tracks.values().collect();
        tracks.sort_by_key(|t| t.spec.id);
        ops.extend(tracks.iter().map(|t| Op::UpsertTrack(t.spec.clone())));
        for t in &tracks {
            ops.extend(t.subs.iter().map(|s| Op::UpsertSubscription(s.to_spec(t.spec.id))));
        }
        Delta { generation: self.generation, replace_all: true, ops }
    }

    /// Applies a delta atomically: all ops, or none (the error says which op failed and why).
    pub fn apply(&mut self, delta: Delta) -> Result<Generation, DeltaError> {
        if !delta.replace_all && delta.generation.0 != self.generation.0 + 1 {
            return Err(DeltaError::Generation { current: self.generation, got: delta.generation });
        }
        let mut undo = UndoLog::default();
        let result = self.apply_ops(&delta, &mut undo);
        match result {
            Ok(()) => {
                self.generation = delta.generation;
                Ok(self.generation)
            }
            Err(e) => {
                while let Some(u) = undo.entries.pop() {
                    self.revert(u);
                }
                Err(e)
            }
        }
    }

    fn apply_ops(&mut self, delta: &Delta, undo: &mut UndoLog) -> Result<(), DeltaError> {
        for (i, op) in delta.ops.iter().enumerate() {
            match op {
                Op::UpsertLeg(spec) => self.upsert_leg(i, spec, undo)?,
                Op::RemoveLeg(id) => {
                    if !self.legs.contains_key(id) {
                        return Err(DeltaError::UnknownLeg { op: i, leg: *id });
                    }
                    self.remove_leg(*id, undo);
                }
                Op::UpsertTrack(spec) => self.upsert_track(i, spec, undo)?,
                Op::RemoveTrack(id) => {
                    if !self.tracks.contains_key(id) {
                        return Err(DeltaError::UnknownTrack { op: i, track: *id });
                    }
                    self.remove_track(*id, undo);
                }
                Op::UpsertSubscription(spec) => self.upsert_sub(i, spec, undo)?,
                Op::RemoveSubscription { subscriber, track } => {
                    let ok = self.tracks.get(track).and_then(|t| t.sub_index(*subscriber)).is_some();
                    if !ok {
                        return Err(DeltaError::UnknownSubscription { op: i, subscriber: *subscriber, track: *track });
                    }
                    self.save_track(*track, undo);
                    let t = self.tracks.get_mut(track).expect("checked above");
                    let pos = t.sub_index(*subscriber).expect("checked above");
                    let removed = t.subs.swap_remove(pos);
                    self.retire_sub(&removed, undo);
                    self.reindex_egress(*subscriber, *track, undo);
                }
            }
        }
        if delta.replace_all {
            self.remove_unlisted(delta, undo);
        }
        Ok(())
    }

    /// In a full snapshot, removes whatever the snapshot does not list.
    fn remove_unlisted(&mut self, delta: &Delta, undo: &mut UndoLog) {
        let mut legs = std::collections::HashSet::new();
        let mut tracks = std::collections::HashSet::new();
        let mut subs = std::collections::HashSet::new();
        for op in &delta.ops {
            match op {
                Op::UpsertLeg(s) => {
                    legs.insert(s.id);
                }
                Op::UpsertTrack(s) => {
                    tracks.insert(s.id);
                }
                Op::UpsertSubscription(s) => {
                    subs.insert((s.subscriber, s.track));
                }
                _ => {}
            }
        }
        let stale_legs: Vec<_> = self.legs.keys().filter(|l| !legs.contains(*l)).copied().collect();
        for l in stale_legs {
            self.remove_leg(l, undo);
        }
        let stale_tracks: Vec<_> = self.tracks.keys().filter(|t| !tracks.contains(*t)).copied().collect();
        for t in stale_tracks {
            self.remove_track(t, undo);
        }
        let stale_subs: Vec<_> =
            self.tracks.values().flat_map(|t| t.subs.iter().map(move |s| (s.subscriber, t.spec.id))).filter(|k| !subs.contains(k)).collect();
        for (subscriber, track) in stale_subs {
            self.save_track(track, undo);
            if let Some(t) = self.tracks.get_mut(&track)
                && let Some(pos) = t.sub_index(subscriber)
            {
                let removed = t.subs.swap_remove(pos);
                self.retire_sub(&removed, undo);
            }
            self.reindex_egress(subscriber, track, undo);
        }
    }

    fn upsert_leg(&mut self, op: usize, spec: &LegSpec, undo: &mut UndoLog) -> Result<(), DeltaError> {
        if let Some(&owner) = self.by_port.get(&spec.local_port)
            && owner != spec.id
        {
            return Err(DeltaError::PortInUse { op, port: spec.local_port, owner });
        }
        spec.validate().map_err(|e| DeltaError::invalid(op, e))?;
        let rx = SrtpKeys::new(spec.rx.profile, &spec.rx.key, &spec.rx.salt).map_err(|_| DeltaError::Invalid {
            op,
            field: "leg.rx",
            why: "key or salt length does not match the profile",
        })?;
        let tx = SrtpKeys::new(spec.tx.profile, &spec.tx.key, &spec.tx.salt).map_err(|_| DeltaError::Invalid {
            op,
            field: "leg.tx",
            why: "key or salt length does not match the profile",
        })?;
        match self.legs.get(&spec.id) {
            Some(old) => {
                // A WebRTC leg whose ICE/DTLS parameters did not change keeps its handshake's
                // keys and consent whatever the placeholder keys say.
                let keep_edge = spec.edge.is_some() && old.spec.edge == spec.edge;
                let same_rx = keep_edge || (old.spec.rx == spec.rx && old.edge.as_ref().is_none_or(|e| e.keys.is_none()));
                let same_tx = keep_edge || (old.spec.tx == spec.tx && old.edge.as_ref().is_none_or(|e| e.keys.is_none()));
                let old_port = old.spec.local_port;
                self.save_leg(spec.id, undo);
                let leg = self.legs.get_mut(&spec.id).expect("present");
                if !keep_edge {
                    leg.edge = spec.edge.as_ref().map(|_| EdgeState::new());
                }
                leg.uplink.respec(&spec.feedback);
                if spec.feedback.twcc_ext.is_some() != leg.downlink.is_some() {
                    leg.downlink = spec.feedback.twcc_ext.map(|_| Box::default());
                }
                if spec.remote.is_some() {
                    leg.remote = spec.remote;
                }
                leg.spec = spec.clone();
                if old_port != spec.local_port {
                    self.by_port.remove(&old_port);
                    self.by_port.insert(spec.local_port, spec.id);
                }
                self.rekey(spec.id, (!same_rx).then_some(rx), (!same_tx).then_some(tx));
            }
            None => {
                self.legs.insert(
                    spec.id,
                    Leg {
                        spec: spec.clone(),
                        remote: spec.remote,
                        rx,
                        tx,
                        ingress: Vec::new(),
                        egress: Vec::new(),
                        rtcp_recv: Vec::new(),
                        feedback_srtcp: RtcpSendState::default(),
                        tracks: Vec::new(),
                        activity: Activity::default(),
                        stats: LegStats::default(),
                        edge: spec.edge.as_ref().map(|_| EdgeState::new()),
                        uplink: Uplink::new(&spec.feedback),
                        downlink: spec.feedback.twcc_ext.map(|_| Box::default()),
                        retired: Vec::new(),
                    },
                );
                self.by_port.insert(spec.local_port, spec.id);
                undo.push(Undo::LegInserted(spec.id));
            }
        }
        Ok(())
    }

    /// Puts new keys in place on a leg, restarting the SRTP state under them: receive state
    /// (ROC, replay windows) for new `rx`, send state of the leg's feedback and of every
    /// subscription to it for new `tx`.
    fn rekey(&mut self, id: LegId, rx: Option<SrtpKeys>, tx: Option<SrtpKeys>) {
        let Some(leg) = self.legs.get_mut(&id) else { return };
        if let Some(rx) = rx {
            leg.rx = rx;
            for i in &mut leg.ingress {
                i.recv = RtpRecvState::new(self.config.replay_window);
            }
            leg.rtcp_recv.clear();
        }
        if let Some(tx) = tx {
            leg.tx = tx;
            leg.feedback_srtcp = RtcpSendState::default();
            for r in &mut leg.retired {
                r.srtp = RtpSendState::default();
                r.rtx_srtp = RtpSendState::default();
                r.srtcp = RtcpSendState::default();
            }
            for track in self.tracks.values_mut() {
                for s in track.subs.iter_mut().filter(|s| s.subscriber == id) {
                    s.srtp = RtpSendState::default();
                    s.rtx_srtp = RtpSendState::default();
                    s.srtcp = RtcpSendState::default();
                }
            }
        }
    }

    /// Installs the SRTP keys a WebRTC leg's DTLS handshake exported (`rx`: what the participant
    /// sends, `tx`: what we send). Not a delta: the keys are runtime state of the leg (see
    /// [`EdgeState`]), installed by the dataplane's slow path between batches without touching
    /// the control plane's generation.
    pub fn install_edge_keys(&mut self, id: LegId, rx: KeyMaterial, tx: KeyMaterial) -> Result<(), DeltaError> {
        let rx_keys = SrtpKeys::new(rx.profile, &rx.key, &rx.salt).map_err(|_| DeltaError::Invalid {
            op: 0,
            field: "edge.rx",
            why: "key or salt length does not match the profile",
        })?;
        let tx_keys = SrtpKeys::new(tx.profile, &tx.key, &tx.salt).map_err(|_| DeltaError::Invalid {
            op: 0,
            field: "edge.tx",
            why: "key or salt length does not match the profile",
        })?;
        let edge = self.legs.get_mut(&id).ok_or(DeltaError::UnknownLeg { op: 0, leg: id })?.edge.as_mut();
        let edge = edge.ok_or(DeltaError::Invalid { op: 0, field: "leg.edge", why: "not a WebRTC leg" })?;
        edge.keys = Some((rx, tx));
        self.rekey(id, Some(rx_keys), Some(tx_keys));
        Ok(())
    }

    /// Sets a WebRTC leg's ICE consent (RFC 7675): without it nothing is sent to the leg.
    pub fn set_edge_consent(&mut self, id: LegId, consent: bool) {
        if let Some(e) = self.legs.get_mut(&id).and_then(|l| l.edge.as_mut()) {
            e.consent = consent;
        }
    }

    fn upsert_track(&mut self, op: usize, spec: &TrackSpec, undo: &mut UndoLog) -> Result<(), DeltaError> {
        let Some(publisher) = self.legs.get(&spec.publisher) else {
            return Err(DeltaError::UnknownLeg { op, leg: spec.publisher });
        };
        spec.validate().map_err(|e| DeltaError::invalid(op, e))?;
        // Publisher SSRCs are unique on the leg, across its tracks and within this one.
        let mut ssrcs: Vec<Ssrc> = spec.layers.iter().flat_map(|l| [l.ssrc, l.rtx_ssrc]).flatten().collect();
        ssrcs.sort_unstable();
        if let Some(w) = ssrcs.windows(2).find(|w| w[0] == w[1]) {
            return Err(DeltaError::DuplicateSsrc { op, leg: spec.publisher, ssrc: w[0] });
        }
        if let Some(clash) = publisher.ingress.iter().find(|i| i.track != spec.id && ssrcs.contains(&i.ssrc)) {
            return Err(DeltaError::DuplicateSsrc { op, leg: spec.publisher, ssrc: clash.ssrc });
        }
        if let Some(old) = self.tracks.get(&spec.id)
            && old.spec.publisher != spec.publisher
        {
            return Err(DeltaError::Invalid { op, field: "track.publisher", why: "a track cannot move to another leg" });
        }
        let cache_packets = self.config.rtx_cache_packets;
        let new_layer = |l: &LayerSpec| LayerState {
            ssrc: l.ssrc,
            rtx_ssrc: l.rtx_ssrc,
            cache: (spec.kind == MediaKind::Video && cache_packets > 0).then(|| RtxCache::new(cache_packets)),
            last_keyframe_request: None,
            fir_seq: 0,
            seen_keyframe: false,
            activity: Activity::default(),
            bytes: 0,
            rate_bps: 0,
            demand: (true, None),
        };
        match self.tracks.get(&spec.id) {
            Some(_) => {
                self.save_track(spec.id, undo);
                let t = self.tracks.get_mut(&spec.id).expect("present");
                let mut old_layers = core::mem::take(&mut t.layers);
                t.layers = spec
                    .layers
                    .iter()
                    .map(|l| match old_layers.iter().position(|o| o.ssrc.is_some() && o.ssrc == l.ssrc) {
                        Some(p) => {
                            let mut kept = old_layers.swap_remove(p);
                            kept.rtx_ssrc = l.rtx_ssrc;
                            kept
                        }
                        None => new_layer(l),
                    })
                    .collect();
                t.spec = spec.clone();
                let n = t.layers.len();
                for s in &mut t.subs {
                    s.target_layer = s.target_layer.min(n as u8 - 1);
                    if s.current_layer.is_some_and(|c| usize::from(c) >= n) {
                        s.current_layer = None;
                    }
                }
            }
            None => {
                self.tracks.insert(spec.id, Track { spec: spec.clone(), layers: spec.layers.iter().map(new_layer).collect(), subs: Vec::new() });
                undo.push(Undo::TrackInserted(spec.id));
                self.save_leg(spec.publisher, undo);
                self.legs.get_mut(&spec.publisher).expect("checked").tracks.push(spec.id);
            }
        }
        self.reindex_ingress(spec.publisher, undo);
        Ok(())
    }

    fn upsert_sub(&mut self, op: usize, spec: &SubscriptionSpec, undo: &mut UndoLog) -> Result<(), DeltaError> {
        let Some(track) = self.tracks.get(&spec.track) else {
            return Err(DeltaError::UnknownTrack { op, track: spec.track });
        };
        let Some(subscriber) = self.legs.get(&spec.subscriber) else {
            return Err(DeltaError::UnknownLeg { op, leg: spec.subscriber });
        };
        if track.spec.publisher == spec.subscriber {
            return Err(DeltaError::SelfSubscription { op, leg: spec.subscriber, track: spec.track });
        }
        spec.validate().map_err(|e| DeltaError::invalid(op, e))?;
        if spec.out_rtx_ssrc == Some(spec.out_ssrc) {
            return Err(DeltaError::DuplicateSsrc { op, leg: spec.subscriber, ssrc: spec.out_ssrc });
        }
        for out in [Some(spec.out_ssrc), spec.out_rtx_ssrc].into_iter().flatten() {
            if subscriber.egress.iter().any(|&(s, t)| s == out && t != spec.track) {
                return Err(DeltaError::DuplicateSsrc { op, leg: spec.subscriber, ssrc: out });
            }
        }
        let layers = track.layers.len();
        self.save_track(spec.track, undo);
        self.save_leg(spec.subscriber, undo);
        let t = self.tracks.get_mut(&spec.track).expect("present");
        let leg = self.legs.get_mut(&spec.subscriber).expect("checked above");
        match t.sub_index(spec.subscriber) {
            Some(p) if t.subs[p].out_ssrc == spec.out_ssrc && t.subs[p].out_rtx_ssrc == spec.out_rtx_ssrc => t.subs[p].update(spec, layers),
            found => {
                // A new stream for the subscriber, or the continuation of one it had before.
                let mut fresh = Subscription::compile(spec, layers);
                if let Some(p) = found {
                    leg.retire(t.subs[p].retired());
                }
                if let Some(r) = leg.take_retired(spec.out_ssrc) {
                    fresh.resume(r);
                }
                match found {
                    Some(p) => t.subs[p] = fresh,
                    None => t.subs.push(fresh),
                }
            }
        }
        self.reindex_egress(spec.subscriber, spec.track, undo);
        Ok(())
    }

    fn remove_leg(&mut self, id: LegId, undo: &mut UndoLog) {
        let Some(leg) = self.legs.get(&id) else { return };
        let published = leg.tracks.clone();
        for t in published {
            self.remove_track(t, undo);
        }
        let subscribed: Vec<TrackId> = self.legs[&id].egress.iter().map(|&(_, t)| t).collect();
        for t in subscribed {
            if self.tracks.get(&t).and_then(|tr| tr.sub_index(id)).is_some() {
                self.save_track(t, undo);
                let tr = self.tracks.get_mut(&t).expect("present");
                if let Some(p) = tr.sub_index(id) {
                    tr.subs.swap_remove(p);
                }
            }
        }
        let leg = self.legs.remove(&id).expect("present");
        self.by_port.remove(&leg.spec.local_port);
        undo.push(Undo::LegRemoved(Box::new(leg)));
    }

    fn remove_track(&mut self, id: TrackId, undo: &mut UndoLog) {
        let Some(track) = self.tracks.remove(&id) else { return };
        let publisher = track.spec.publisher;
        let subscribers: Vec<LegId> = track.subs.iter().map(|s| s.subscriber).collect();
        for s in &track.subs {
            self.retire_sub(s, undo);
        }
        undo.push(Undo::TrackRemoved(Box::new(track)));
        self.reindex_ingress(publisher, undo);
        for s in subscribers {
            self.reindex_egress(s, id, undo);
        }
    }

    /// Rebuilds a publisher leg's ingress index from its tracks, keeping the SRTP receive state
    /// of SSRCs that stay.
    fn reindex_ingress(&mut self, leg_id: LegId, undo: &mut UndoLog) {
        if !self.legs.contains_key(&leg_id) {
            return;
        }
        self.save_leg(leg_id, undo);
        let window = self.config.replay_window;
        let leg = self.legs.get_mut(&leg_id).expect("present");
        let tracks = &self.tracks;
        leg.tracks.retain(|t| tracks.contains_key(t));
        let mut old = core::mem::take(&mut leg.ingress);
        for &tid in &leg.tracks {
            let t = &self.tracks[&tid];
            for (layer, l) in t.layers.iter().enumerate() {
                for (ssrc, rtx) in [(l.ssrc, false), (l.rtx_ssrc, true)] {
                    let Some(ssrc) = ssrc else { continue };
                    let (recv, stats) = match old.iter().position(|i| i.ssrc == ssrc) {
                        Some(p) => {
                            let i = old.swap_remove(p);
                            (i.recv, i.stats)
                        }
                        None => (RtpRecvState::new(window), RecvStats::default()),
                    };
                    let clock_rate = t.spec.clock_rate;
                    leg.ingress.push(Ingress { ssrc, track: tid, layer: layer as u8, rtx, recv, stats, clock_rate });
                }
            }
        }
    }

    /// Brings a subscriber leg's out-SSRC index in line with its subscription to `track` (or
    /// its absence).
    fn reindex_egress(&mut self, leg_id: LegId, track: TrackId, undo: &mut UndoLog) {
        if !self.legs.contains_key(&leg_id) {
            return;
        }
        self.save_leg(leg_id, undo);
        let sub = self.tracks.get(&track).and_then(|t| t.subs.iter().find(|s| s.subscriber == leg_id));
        let outs = sub.map(|s| (s.out_ssrc, s.out_rtx_ssrc));
        let leg = self.legs.get_mut(&leg_id).expect("present");
        leg.egress.retain(|&(_, t)| t != track);
        if let Some((out, rtx)) = outs {
            leg.egress.push((out, track));
            if let Some(r) = rtx {
                leg.egress.push((r, track));
            }
        }
    }

    /// Keeps a removed subscription's stream state on its subscriber leg (if the leg stays).
    fn retire_sub(&mut self, sub: &Subscription, undo: &mut UndoLog) {
        if !self.legs.contains_key(&sub.subscriber) {
            return;
        }
        self.save_leg(sub.subscriber, undo);
        self.legs.get_mut(&sub.subscriber).expect("present").retire(sub.retired());
    }

    /// Records a leg's state before its first change in this delta. Legs are not `Clone` (their
    /// keys are not), so the copy re-derives keys from the spec: cold path only.
    fn save_leg(&mut self, id: LegId, undo: &mut UndoLog) {
        if undo.saved_legs.contains(&id) {
            return;
        }
        let Some(leg) = self.legs.get(&id) else { return };
        // Derived keys are re-derived from their material (it validated when installed).
        let (rxm, txm) = leg.key_material();
        let (Ok(rx), Ok(tx)) = (SrtpKeys::new(rxm.profile, &rxm.key, &rxm.salt), SrtpKeys::new(txm.profile, &txm.key, &txm.salt)) else {
            unreachable!("keys of an installed leg were validated when it was installed")
        };
        let copy = Leg {
            spec: leg.spec.clone(),
            remote: leg.remote,
            rx,
            tx,
            ingress: leg.ingress.clone(),
            egress: leg.egress.clone(),
            rtcp_recv: leg.rtcp_recv.clone(),
            feedback_srtcp: leg.feedback_srtcp,
            tracks: leg.tracks.clone(),
            activity: leg.activity,
            stats: leg.stats,
            edge: leg.edge.clone(),
            uplink: leg.uplink.clone(),
            downlink: leg.downlink.clone(),
            retired: leg.retired.clone(),
        };
        undo.push(Undo::LegReplaced(Box::new(copy)));
    }

    fn save_track(&mut self, id: TrackId, undo: &mut UndoLog) {
        if undo.saved_tracks.contains(&id) {
            return;
        }
        let Some(t) = self.tracks.get_mut(&id) else { return };
        // The caches are large and the packet path never runs during apply: move them into the
        // saved copy and back on commit would cost a copy; instead the saved copy has none and a
        // rollback restores the live track's caches from the current one.
        let copy = Track {
            spec: t.spec.clone(),
            layers: t
                .layers
                .iter()
                .map(|l| LayerState {
                    ssrc: l.ssrc,
                    rtx_ssrc: l.rtx_ssrc,
                    cache: None,
                    last_keyframe_request: l.last_keyframe_request,
                    fir_seq: l.fir_seq,
                    seen_keyframe: l.seen_keyframe,
                    activity: l.activity,
                    bytes: l.bytes,
                    rate_bps: l.rate_bps,
                    demand: l.demand,
                })
                .collect(),
            subs: t.subs.clone(),
        };
        undo.push(Undo::TrackReplaced(Box::new(copy)));
    }

    fn revert(&mut self, u: Undo) {
        match u {
            Undo::LegInserted(id) => {
                if let Some(l) = self.legs.remove(&id) {
                    self.by_port.remove(&l.spec.local_port);
                }
            }
            Undo::LegReplaced(old) | Undo::LegRemoved(old) => {
                if let Some(cur) = self.legs.get(&old.spec.id) {
                    self.by_port.remove(&cur.spec.local_port);
                }
                self.by_port.insert(old.spec.local_port, old.spec.id);
                self.legs.insert(old.spec.id, *old);
            }
            Undo::TrackInserted(id) => {
                self.tracks.remove(&id);
            }
            Undo::TrackReplaced(mut old) => {
                // Give back the caches of layers that still exist in the live track.
                if let Some(mut cur) = self.tracks.remove(&old.spec.id) {
                    for l in &mut old.layers {
                        if let Some(c) = cur.layers.iter_mut().find(|c| c.ssrc == l.ssrc && c.cache.is_some()) {
                            l.cache = c.cache.take();
                        }
                    }
                }
                let cache_packets = self.config.rtx_cache_packets;
                for l in &mut old.layers {
                    if l.cache.is_none() && old.spec.kind == MediaKind::Video && cache_packets > 0 {
                        l.cache = Some(RtxCache::new(cache_packets));
                    }
                }
                self.tracks.insert(old.spec.id, *old);
            }
            Undo::TrackRemoved(old) => {
                self.tracks.insert(old.spec.id, *old);
            }
        }
    }
}

#[cfg(test)]
mod tests;
