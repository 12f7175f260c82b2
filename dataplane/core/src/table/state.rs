//! What the packet path keeps: the runtime state of legs, tracks, layers and subscriptions
//! beside their specs (SRTP contexts, rewriters, caches, activity, feedback state).

use super::*;

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
    /// Top-N audio: packets dropped before decryption as silence since the last one decrypted
    /// (every [`crate::audio::SILENT_KEEPALIVE`]-th is decrypted, so the rollover counter and
    /// replay window never face a long hole).
    pub silent_run: u16,
    /// The XDP stage drops this stream's silence (see `Event::SilenceGate`): the holes in its
    /// sequence numbers are intentional and count as received.
    pub xdp_gated: bool,
    /// The RFC 6464 extension id when this is a ranked audio track's media stream (its track
    /// names the extension and a speaker group): only such packets are looked at for top-N's
    /// drop of silence, so the packet path pays one field check for the others.
    pub level_gate: Option<u8>,
}

impl Ingress {
    /// A stream of `track` on layer 0 with fresh statistics and no top-N state.
    pub fn new(ssrc: Ssrc, track: TrackId, recv: RtpRecvState) -> Self {
        Self { ssrc, track, layer: 0, rtx: false, recv, stats: RecvStats::default(), clock_rate: 0, silent_run: 0, xdp_gated: false, level_gate: None }
    }

    /// [`Ingress::level_gate`] for a stream of a track with `spec`.
    pub fn level_gate_of(spec: &TrackSpec, rtx: bool) -> Option<u8> {
        spec.audio_level_ext.filter(|_| !rtx && spec.speaker_group.is_some())
    }
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
    /// Its traffic on this core (see [`crate::stats::LegTraffic`]): runtime, kept across
    /// upserts of its spec.
    pub traffic: crate::stats::LegTraffic,
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
    pub(super) retired: Vec<RetiredStream>,
    /// Its audio slots (`spec.audio_slots`): top-N audio of a speaker group.
    pub slots: Option<Box<crate::audio::slot::SlotSet>>,
    /// Its receive budget's buckets (`spec.rate_limit`).
    pub limiter: Limiter,
    /// The digest of its static keys (both directions), naming them in a checkpoint.
    pub(super) keys_digest: KeyDigest,
    /// Without rtcp-mux: the RTCP remote latched from the first authenticated RTCP packet on the
    /// RTCP port (the spec's `rtcp.remote` takes precedence).
    pub rtcp_remote: Option<SocketAddr>,
    /// Drop reasons already reported for this leg (bit per [`DropReason`]), see
    /// [`crate::forward::Event::FirstDrop`].
    pub(super) drops_reported: u32,
}

/// The token buckets of a leg's [`crate::table::RateLimit`], and what it dropped since it last
/// reported.
#[derive(Clone, Copy, Debug, Default)]
pub struct Limiter {
    packets: Bucket,
    bytes: Bucket,
    /// Drops not reported yet.
    pub unreported: u64,
    /// When the last report went out.
    pub last_report: Option<Instant>,
}

impl Limiter {
    /// Takes a datagram of `len` bytes arriving at `now` from the buckets of `limit`; false when
    /// either is empty (the datagram is over the budget).
    pub fn take(&mut self, now: Instant, limit: &crate::table::RateLimit, len: usize) -> bool {
        let burst = f64::from(limit.burst_ms) / 1000.0;
        let (pps, bps) = (f64::from(limit.packets_per_s), limit.bytes_per_s as f64);
        // Both or neither: a packet refused by the byte bucket must not spend a packet token.
        let mut packets = self.packets;
        if !packets.take(now, pps, pps * burst, 1.0) || !self.bytes.take(now, bps, bps * burst, len as f64) {
            self.packets.take(now, pps, pps * burst, 0.0);
            return false;
        }
        self.packets = packets;
        true
    }
}

/// What the subscriber saw of a removed subscription's stream: where its sequence numbers and
/// timestamps stopped and the SRTP send state of its SSRCs. To the subscriber an out-SSRC is one
/// stream, so a subscription that comes back with it continues the sequence (a jump would count
/// as loss) and the rollover counter (a fresh one would reuse SRTP indexes under the same key).
#[derive(Clone, Debug)]
pub(super) struct RetiredStream {
    pub(super) out_ssrc: Ssrc,
    pub(super) out_rtx_ssrc: Option<Ssrc>,
    pub(super) rewriter: SeqTsRewriter,
    /// Its picture ids and TL0PICIDX run on too.
    pub(super) layers: crate::forward::layers::LayerChoice,
    pub(super) srtp: RtpSendState,
    pub(super) rtx_srtp: RtpSendState,
    pub(super) rtx_seq: u16,
    pub(super) srtcp: RtcpSendState,
    pub(super) packets_sent: u32,
    pub(super) octets_sent: u32,
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
    pub slow_path: Bucket,
    /// A restart's loss of the leg's DTLS association was reported (see
    /// [`crate::table::checkpoint`]).
    pub restart_reported: bool,
}

impl EdgeState {
    pub(super) fn new() -> Self {
        Self::default()
    }

    /// Takes one slow-path token; refills [`SLOW_PATH_RATE`] tokens per second up to
    /// [`SLOW_PATH_BURST`].
    pub fn take_token(&mut self, now: Instant) -> bool {
        self.slow_path.take(now, f64::from(SLOW_PATH_RATE), f64::from(SLOW_PATH_BURST), 1.0)
    }
}

/// A token bucket: `rate` tokens a second up to `cap`, full when first used. The leg's
/// slow-path limit and its receive budget ([`Limiter`]) are two uses of it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Bucket {
    tokens: f64,
    last: Option<Instant>,
}

impl Bucket {
    /// Takes `cost` tokens at `now` if the bucket holds them.
    pub fn take(&mut self, now: Instant, rate: f64, cap: f64, cost: f64) -> bool {
        self.tokens = match self.last {
            None => cap,
            Some(t) => (self.tokens + rate * now.saturating_duration_since(t).as_secs_f64()).min(cap),
        };
        self.last = Some(now);
        if self.tokens < cost {
            return false;
        }
        self.tokens -= cost;
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
    /// A datagram of `len` bytes at `now`, before decryption: within the leg's receive budget
    /// (`spec.rate_limit`; always, without one), or `Err` with the drops to report now (at most
    /// one report a second; `None` in between).
    #[inline]
    pub fn within_budget(&mut self, now: Instant, len: usize) -> Result<(), Option<u64>> {
        let Some(limit) = self.spec.rate_limit else { return Ok(()) };
        if self.limiter.take(now, &limit, len) {
            return Ok(());
        }
        let l = &mut self.limiter;
        l.unreported += 1;
        if l.last_report.is_some_and(|t| now.saturating_duration_since(t) < core::time::Duration::from_secs(1)) {
            return Err(None);
        }
        l.last_report = Some(now);
        Err(Some(core::mem::take(&mut l.unreported)))
    }

    /// Whether media from the participant is accepted: a static-key leg always (but a plain-RTP
    /// one never: nothing it sends authenticates), a WebRTC leg once its DTLS keys are installed.
    #[inline]
    pub fn receives_media(&self) -> bool {
        self.edge.as_ref().is_none_or(|e| e.keys.is_some()) && !self.spec.plain_rtp
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

    /// Records a drop of `reason` on this leg; true the first time for that reason.
    pub fn first_drop(&mut self, reason: crate::verdict::DropReason) -> bool {
        let bit = 1u32 << (reason as u8 % 32);
        let first = self.drops_reported & bit == 0;
        self.drops_reported |= bit;
        first
    }

    /// Whether `local_port` is this leg's separate RTCP port.
    #[inline]
    pub fn is_rtcp_port(&self, local_port: u16) -> bool {
        self.spec.rtcp.as_deref().is_some_and(|c| c.local_port == local_port)
    }

    /// The remote RTCP must come from on `local_port`: the RTP remote, or on a separate RTCP
    /// port the RTCP one (`None`: not latched yet, anyone may try to authenticate).
    #[inline]
    pub fn expected_remote(&self, local_port: u16) -> Option<SocketAddr> {
        match self.spec.rtcp.as_deref() {
            Some(c) if c.local_port == local_port => c.remote.or(self.rtcp_remote),
            _ => self.remote,
        }
    }

    /// Where RTCP to the participant goes, and from which local port: the RTP path with
    /// rtcp-mux; else the RTCP port to the RTCP remote (the spec's, the latched one, or the RTP
    /// remote's port + 1 as RFC 3550 §11 has it).
    pub fn rtcp_path(&self) -> Option<(u16, SocketAddr)> {
        let rtp = self.destination();
        match self.spec.rtcp.as_deref() {
            None => rtp.map(|r| (self.spec.local_port, r)),
            Some(c) => {
                let to = c.remote.or(self.rtcp_remote).or_else(|| rtp.map(|r| SocketAddr::new(r.ip(), r.port().wrapping_add(1))));
                to.filter(|_| self.sends_media()).map(|r| (c.local_port, r))
            }
        }
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
    pub(super) fn retire(&mut self, stream: RetiredStream) {
        self.retired.retain(|r| r.out_ssrc != stream.out_ssrc);
        if self.retired.len() >= MAX_RETIRED_STREAMS {
            self.retired.remove(0);
        }
        self.retired.push(stream);
    }

    /// Takes the retired stream state of `out_ssrc`, if the leg kept one.
    pub(super) fn take_retired(&mut self, out_ssrc: Ssrc) -> Option<RetiredStream> {
        let p = self.retired.iter().position(|r| r.out_ssrc == out_ssrc)?;
        Some(self.retired.remove(p))
    }

    /// How many removed subscriptions' stream state the leg keeps.
    pub fn retired_streams(&self) -> usize {
        self.retired.len()
    }

    /// Stores the SRTCP receive state of `sender` after an authenticated packet (bounded: past
    /// `MAX_RTCP_SENDERS` senders the oldest is forgotten).
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

/// A layer's measured rate, with its keyframes apart: in WebRTC a keyframe is sent on demand
/// (often because a subscriber just switched to the layer), and a keyframe of a 720p screen
/// share can be 100 kB, four times what the layer sends in a second. Counted into the rate over
/// one second it makes the layer look too expensive right after the switch that asked for it,
/// and the allocator switches away again. So frames go into a steady rate smoothed over about a
/// second, keyframes into a rate smoothed over about eight, and the allocator sees their sum.
#[derive(Clone, Copy, Debug, Default)]
pub struct LayerRate {
    /// Bytes of other frames since the last tick.
    bytes: u64,
    /// Bytes of keyframes since the last tick.
    key_bytes: u64,
    /// The RTP timestamp of the last keyframe (its later packets carry the same one).
    keyframe_ts: Option<u32>,
    steady_bps: u64,
    key_bps: u64,
}

impl LayerRate {
    /// Counts a packet of `len` bytes with RTP timestamp `ts`; `keyframe` when it starts one
    /// (video only).
    pub fn count(&mut self, len: usize, ts: u32, keyframe: bool) {
        if keyframe {
            self.keyframe_ts = Some(ts);
        }
        if self.keyframe_ts == Some(ts) {
            self.key_bytes += len as u64;
        } else {
            self.bytes += len as u64;
        }
    }

    /// Turns the bytes since the last tick, `secs` ago, into rates.
    pub fn tick(&mut self, secs: f64) {
        let bps = |b: u64| (b as f64 * 8.0 / secs.max(0.001)) as u64;
        let (now, key) = (bps(self.bytes), bps(self.key_bytes));
        self.steady_bps = if self.steady_bps == 0 { now } else { (self.steady_bps * 3 + now) / 4 };
        self.key_bps = (self.key_bps * 31 + key) / 32;
        (self.bytes, self.key_bytes) = (0, 0);
    }

    /// The rate, bit/s.
    pub fn bps(&self) -> u64 {
        self.steady_bps + self.key_bps
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
    /// Its measured rate (what the bandwidth allocator spends on it).
    pub rate: LayerRate,
    /// Whether it was last reported wanted by a subscription (`true` until reported otherwise),
    /// and since when nobody wants it.
    pub demand: (bool, Option<Instant>),
    /// The other workers whose subscriptions want the layer, as they last told the worker that
    /// fans the track out (a bit per worker index, the first 64; see `Handoff`'s `Demand`).
    pub wanted_by: u64,
    /// When a subscription (on any core) last wanted the layer, for a track a cascade leg
    /// publishes.
    pub last_wanted: Option<Instant>,
    /// The highest spatial and temporal layer ids inside the stream (SVC, temporal layers):
    /// what it announced (a VP9 scalability structure), else the highest seen.
    pub top: (u8, u8),
    /// How many spatial layers the stream last announced, if it did.
    pub spatial_layers: Option<u8>,
    /// The stream showed itself k-SVC (an upper spatial layer of a delta picture not predicted
    /// from the layer below).
    pub ksvc: bool,
    /// The rate of each spatial layer inside an SVC stream (the allocator spends on them like on
    /// simulcast layers; spatial ids above the last share its entry).
    pub spatial_rates: [LayerRate; MAX_SPATIAL],
    /// The dependency-descriptor structure in force (a track with `dd_ext`; allocated when the
    /// track is, never on the packet path).
    pub dd: Option<Box<DdStructures>>,
}

/// The template structures of a stream with the dependency descriptor: the one in force, and
/// the one a keyframe's descriptor is read into.
#[derive(Clone, Debug, Default)]
pub struct DdStructures {
    /// The structure in force, once one was received.
    pub known: Option<crate::wire::dd::Structure>,
    /// Where the next descriptor that carries a structure is read.
    pub fresh: crate::wire::dd::Structure,
}

/// How many spatial layers inside one stream the allocator tells apart.
pub const MAX_SPATIAL: usize = 4;

/// Whether something receives media: set on every authenticated packet, cleared by
/// the idle sweep of [`crate::forward::Core::handle_timeout`] after a quiet interval. The transitions are the control plane's
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
    /// The subscriptions, contiguous for the fan-out (change them only through the methods below,
    /// which keep `sub_pos` in step).
    pub subs: Vec<Subscription>,
    /// Where each subscriber's subscription is in `subs`, by (subscriber, lane: 0, or a
    /// relay's layer) (a webinar's track has thousands: a subscriber's feedback, its allocator
    /// and a delta find theirs without a scan).
    pub(crate) sub_pos: super::Map<(LegId, u8), usize>,
    /// Its audio level and speech activity (an audio track with `spec.audio_level_ext`).
    pub level: crate::audio::TrackLevel,
    /// The workers that own a subscriber leg of the track (a bit per worker index, the first 64;
    /// derived after every delta): where the publisher's worker hands its packets over.
    pub owners: u64,
    /// On a worker that serves subscriptions of the track but does not fan it out: the layers
    /// its subscriptions want, as last told the track's worker, and when.
    pub demand_told: Option<(u8, Instant)>,
    /// A track a cascade leg publishes, on the worker that fans it out: the layers last told
    /// the other node this node wants, and when.
    pub cascade_told: Option<(u8, Instant)>,
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

    /// The subscription of `subscriber`, if any (a relay's lane 0).
    pub fn sub_index(&self, subscriber: LegId) -> Option<usize> {
        self.lane_index(subscriber, 0)
    }

    /// Lane `lane` of `subscriber`'s subscription (0: the subscription itself; a relay's layer).
    pub fn lane_index(&self, subscriber: LegId, lane: u8) -> Option<usize> {
        self.sub_pos.get(&(subscriber, lane)).copied()
    }

    /// Where `subscriber`'s subscription has the stream `out_ssrc` (its own, its RTX, or a
    /// relay lane's).
    pub fn sub_of_ssrc(&self, subscriber: LegId, out_ssrc: Ssrc) -> Option<usize> {
        let first = self.sub_index(subscriber)?;
        let lanes = if self.subs[first].relay { super::spec::MAX_LAYERS as u8 } else { 1 };
        (0..lanes).filter_map(|l| self.lane_index(subscriber, l)).find(|&p| {
            let s = &self.subs[p];
            s.out_ssrc == out_ssrc || s.out_rtx_ssrc == Some(out_ssrc)
        })
    }

    /// Appends a subscription lane (of a subscriber that has none on the track at that lane).
    pub(crate) fn push_sub(&mut self, sub: Subscription) {
        self.sub_pos.insert((sub.subscriber, sub.lane), self.subs.len());
        self.subs.push(sub);
    }

    /// Removes the subscription at `pos`, the last one taking its place.
    pub(crate) fn swap_remove_sub(&mut self, pos: usize) -> Subscription {
        let removed = self.subs.swap_remove(pos);
        self.sub_pos.remove(&(removed.subscriber, removed.lane));
        if let Some(moved) = self.subs.get(pos) {
            self.sub_pos.insert((moved.subscriber, moved.lane), pos);
        }
        removed
    }

    /// Undoes [`Track::swap_remove_sub`]: `sub` back at `pos`, the one there back at the end.
    pub(crate) fn unswap_remove_sub(&mut self, pos: usize, sub: Subscription) {
        self.push_sub(sub);
        let last = self.subs.len() - 1;
        if pos < last {
            self.subs.swap(pos, last);
            self.sub_pos.insert((self.subs[pos].subscriber, self.subs[pos].lane), pos);
            self.sub_pos.insert((self.subs[last].subscriber, self.subs[last].lane), last);
        }
    }

    /// Undoes [`Track::push_sub`].
    pub(crate) fn pop_sub(&mut self) {
        if let Some(s) = self.subs.pop() {
            self.sub_pos.remove(&(s.subscriber, s.lane));
        }
    }

    /// The spec of the subscription whose lane 0 is at `pos` (a relay's lanes gathered).
    pub fn spec_of(&self, pos: usize) -> SubscriptionSpec {
        let s = &self.subs[pos];
        let mut spec = s.to_spec(self.spec.id);
        if s.relay {
            spec.relay = (1..super::spec::MAX_LAYERS as u8)
                .map_while(|l| self.lane_index(s.subscriber, l))
                .map(|p| (self.subs[p].out_ssrc, self.subs[p].out_rtx_ssrc))
                .collect();
        }
        spec
    }
}

/// A subscription's compiled spec and its runtime state. Kept small: see the size test.
#[derive(Clone, Debug)]
pub struct Subscription {
    /// The receiving leg.
    pub subscriber: LegId,
    /// Its lane: 0, or the layer a relay's lane carries.
    pub lane: u8,
    /// Part of a relay ([`SubscriptionSpec::relay`]): pinned to layer `lane`, no allocator, no
    /// fallback.
    pub relay: bool,
    /// A relay lane the subscriber (another node) said it does not want now (runtime; see
    /// [`crate::forward::cascade`]): skipped like a paused one.
    pub unwanted: bool,
    /// The worker that owns the subscriber's leg, so builds and sends every copy of this
    /// subscription (derived after every delta; see [`Tables::set_shards`](super::Tables::set_shards)).
    pub owner: u16,
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
    /// The signaling's spatial ceiling inside an SVC stream (`None`: all).
    pub max_spatial: Option<u8>,
    /// The signaling's temporal ceiling (`None`: all).
    pub max_temporal: Option<u8>,
    /// The layer currently forwarded (`None` until the first keyframe).
    pub current_layer: Option<u8>,
    /// Paused: receives nothing.
    pub paused: bool,
    /// The allocator's rank (higher first).
    pub priority: u8,
    /// Sequence/timestamp rewriter.
    pub rewriter: SeqTsRewriter,
    /// Spatial and temporal layers in force inside the current source, picture ids.
    pub layers: crate::forward::layers::LayerChoice,
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

    /// Lane `lane` of `spec` (0 for an ordinary subscription; a relay's lane `k` carries layer
    /// `k` as `spec.relay[k - 1]`).
    pub(crate) fn compile_lane(spec: &SubscriptionSpec, layers: usize, lane: u8) -> Self {
        let mut sub = Self::compile(spec, layers);
        if !spec.relay.is_empty() {
            sub.relay = true;
            sub.lane = lane;
            // Pinned to its layer, whatever the track has (a lane above it carries nothing).
            sub.target_layer = lane;
            (sub.max_spatial, sub.max_temporal) = (None, None);
            if let Some(&(out, rtx)) = usize::from(lane).checked_sub(1).and_then(|k| spec.relay.get(k)) {
                (sub.out_ssrc, sub.out_rtx_ssrc) = (out, rtx);
            }
        }
        sub
    }

    pub(crate) fn compile(spec: &SubscriptionSpec, layers: usize) -> Self {
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
            lane: 0,
            relay: false,
            unwanted: false,
            owner: 0,
            out_ssrc: spec.out_ssrc,
            out_rtx_ssrc: spec.out_rtx_ssrc,
            pt_map,
            pt_len: spec.pt_map.len() as u8,
            ext_map,
            target_layer: spec.target_layer.min(layers.saturating_sub(1) as u8),
            max_spatial: spec.max_spatial,
            max_temporal: spec.max_temporal,
            current_layer: None,
            paused: spec.paused,
            priority: spec.priority,
            rewriter: SeqTsRewriter::new(),
            layers: Default::default(),
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
    pub(super) fn retired(&self) -> RetiredStream {
        RetiredStream {
            out_ssrc: self.out_ssrc,
            out_rtx_ssrc: self.out_rtx_ssrc,
            rewriter: self.rewriter.clone(),
            layers: self.layers,
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
    pub(super) fn resume(&mut self, r: RetiredStream) {
        debug_assert_eq!(r.out_ssrc, self.out_ssrc);
        self.rewriter = r.rewriter;
        self.layers = r.layers;
        self.srtp = r.srtp;
        self.srtcp = r.srtcp;
        self.packets_sent = r.packets_sent;
        self.octets_sent = r.octets_sent;
        if r.out_rtx_ssrc == self.out_rtx_ssrc {
            self.rtx_srtp = r.rtx_srtp;
            self.rtx_seq = r.rtx_seq;
        }
    }

    /// Takes the settings of `fresh` (the lane compiled from the new spec) while keeping the
    /// runtime state (rewriter, SRTP, counters) when the out-SSRCs are unchanged.
    pub(super) fn update(&mut self, fresh: Self) {
        if fresh.out_ssrc == self.out_ssrc && fresh.out_rtx_ssrc == self.out_rtx_ssrc {
            let keep = core::mem::replace(self, fresh);
            // A resumed subscription re-enters like a layer switch: at a keyframe, right after
            // the last packet it sent, so the paused stretch is neither a sequence gap (which the
            // subscriber would NACK) nor a resume in the middle of a GOP.
            self.current_layer = if keep.paused && !self.paused { None } else { keep.current_layer };
            self.rewriter = keep.rewriter;
            self.layers = keep.layers;
            self.srtp = keep.srtp;
            self.rtx_srtp = keep.rtx_srtp;
            self.rtx_seq = keep.rtx_seq;
            self.srtcp = keep.srtcp;
            self.packets_sent = keep.packets_sent;
            self.octets_sent = keep.octets_sent;
            self.last_sr = keep.last_sr;
            self.alloc_layer = keep.alloc_layer;
            self.alloc_down_since = keep.alloc_down_since;
            self.unwanted = keep.unwanted;
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
            max_spatial: self.max_spatial,
            max_temporal: self.max_temporal,
            relay: Vec::new(),
        }
    }
}
