//! Per-core counters. Plain integers owned by one worker (no atomics on the fast path); the
//! worker publishes snapshots between batches.

use crate::ids::LegId;
use crate::verdict::DropReason;

/// Packet and byte counters of one core.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct CoreStats {
    /// Datagrams handed to the core.
    pub rx_packets: u64,
    /// Bytes of those datagrams.
    pub rx_bytes: u64,
    /// Packets the core emitted (forwarded copies, retransmissions, RTCP it originated).
    pub tx_packets: u64,
    /// Bytes of those packets.
    pub tx_bytes: u64,
    /// NACKed packets answered from the retransmission cache.
    pub nack_answered: u64,
    /// NACKed packets not in the cache, asked of the publisher instead.
    pub nack_forwarded: u64,
    /// NACKed packets not in the cache and asked of the publisher within the last
    /// `NACK_REPEAT_AFTER` already (another subscriber lost the same packet): not asked again.
    #[cfg_attr(feature = "serde", serde(default))]
    pub nack_suppressed: u64,
    /// NACKed packets not answered: sent before the subscription left their layer (a switch
    /// down), or older than anything the rewriter maps.
    #[cfg_attr(feature = "serde", serde(default))]
    pub nack_stale: u64,
    /// Keyframe requests sent upstream (after throttling).
    pub keyframe_requests: u64,
    /// Layer switches completed.
    pub layer_switches: u64,
    /// Frames not forwarded to a subscription because they are above its spatial or temporal
    /// layer (counted per subscription).
    #[cfg_attr(feature = "serde", serde(default))]
    pub frames_dropped_by_layer: u64,
    /// Packets whose payload or dependency descriptor could not be read or contradicted the
    /// stream, skipped for a subscription that does not take every layer.
    #[cfg_attr(feature = "serde", serde(default))]
    pub bad_descriptors: u64,
    /// Audio slots that changed speaker (top-N audio).
    #[cfg_attr(feature = "serde", serde(default))]
    pub audio_slot_switches: u64,
    /// Table deltas applied.
    pub deltas_applied: u64,
    /// STUN/DTLS datagrams of WebRTC legs queued for the slow path.
    #[cfg_attr(feature = "serde", serde(default))]
    pub slow_path: u64,
    /// Receiver reports (RR + SDES compounds) sent to publishers.
    #[cfg_attr(feature = "serde", serde(default))]
    pub rtcp_reports_sent: u64,
    /// Transport-cc feedback packets sent to publishers.
    #[cfg_attr(feature = "serde", serde(default))]
    pub twcc_feedback_sent: u64,
    /// Transport-cc feedback from subscribers used by their leg's estimator.
    #[cfg_attr(feature = "serde", serde(default))]
    pub twcc_feedback_used: u64,
    /// Transport-cc feedback from subscribers that named nothing Sluice sent, could not be
    /// decoded, or came on a leg without congestion control: dropped.
    #[cfg_attr(feature = "serde", serde(default))]
    pub twcc_feedback_bad: u64,
    /// Subscription layer caps changed by a bandwidth allocator.
    #[cfg_attr(feature = "serde", serde(default))]
    pub allocation_changes: u64,
    /// Bandwidth probes started.
    #[cfg_attr(feature = "serde", serde(default))]
    pub probes_started: u64,
    /// Probe (padding) packets sent.
    #[cfg_attr(feature = "serde", serde(default))]
    pub probe_packets: u64,
    /// Packets to congestion-controlled legs that waited in the pacer.
    #[cfg_attr(feature = "serde", serde(default))]
    pub packets_paced: u64,
    /// Packets sent unpaced because the leg's pace queue or the core's pool was full.
    #[cfg_attr(feature = "serde", serde(default))]
    pub pace_overflow: u64,
    /// Packets (media, sender reports, feedback) this core handed to another core: once per
    /// packet per core that serves subscribers of its track (egress ownership).
    #[cfg_attr(feature = "serde", serde(default))]
    pub handoffs_out: u64,
    /// Packets other cores handed to this one.
    #[cfg_attr(feature = "serde", serde(default))]
    pub handoffs_in: u64,
    /// Hand-overs dropped because this core's queue for them was full.
    #[cfg_attr(feature = "serde", serde(default))]
    pub handoffs_dropped: u64,
    /// Hand-over buffers allocated (the pool was empty): grows while the queues fill up, then
    /// stays, as buffers come back from the cores they went to.
    #[cfg_attr(feature = "serde", serde(default))]
    pub handoff_buffers: u64,
    /// Drops by reason, indexed by `DropReason as usize`. (Read leniently: a peer with fewer
    /// reasons leaves the new ones at 0, one with more has its extra ones ignored, so adding a
    /// reason does not break a control plane and a dataplane of different builds.)
    #[cfg_attr(feature = "serde", serde(deserialize_with = "lenient_drops"))]
    pub drops: [u64; DropReason::COUNT],
    /// Per-leg traffic of this core ([`LegTraffic`], cumulative), of the legs whose counters
    /// moved since the previous report. Not kept by the core (its legs hold their own
    /// counters, see [`crate::forward::Core::leg_traffic`]): the worker fills it in for a
    /// report, and the control endpoint leaves out what a subscriber already has. (Absent from
    /// older builds' reports: read as none.)
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Vec::is_empty"))]
    pub legs: Vec<LegCount>,
}

/// A leg's traffic as one core handled it: the authenticated datagrams (RTP and RTCP) it
/// received from the participant, and every packet it sent to the participant (media copies,
/// retransmissions, probes, sender reports, feedback), with their bytes as on the wire (SRTP
/// tag included). A publisher's packets are counted on the core that receives them, the copies
/// for a subscriber on the core that owns the subscriber's leg: a leg's figures are the sum
/// over cores. Plain adds on the packet path, on the leg's state the path already touches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct LegTraffic {
    /// Authenticated datagrams received from the participant.
    pub rx_packets: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Packets sent to the participant.
    pub tx_packets: u64,
    /// Their bytes.
    pub tx_bytes: u64,
}

impl LegTraffic {
    /// Counts an authenticated datagram of `bytes` received.
    #[inline]
    pub fn received(&mut self, bytes: usize) {
        self.rx_packets += 1;
        self.rx_bytes += bytes as u64;
    }

    /// Counts a packet of `bytes` sent.
    #[inline]
    pub fn sent(&mut self, bytes: usize) {
        self.tx_packets += 1;
        self.tx_bytes += bytes as u64;
    }

    /// Whether nothing was counted.
    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }

    /// Adds `o`'s counts (the same leg on another core).
    pub fn add(&mut self, o: &Self) {
        self.rx_packets += o.rx_packets;
        self.rx_bytes += o.rx_bytes;
        self.tx_packets += o.tx_packets;
        self.tx_bytes += o.tx_bytes;
    }
}

/// One leg's [`LegTraffic`] in a report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct LegCount {
    /// The leg.
    pub leg: LegId,
    /// Its counters on the reporting core.
    #[cfg_attr(feature = "serde", serde(flatten))]
    pub traffic: LegTraffic,
}

#[cfg(feature = "serde")]
fn lenient_drops<'de, D: serde::Deserializer<'de>>(d: D) -> Result<[u64; DropReason::COUNT], D::Error> {
    let v: Vec<u64> = serde::Deserialize::deserialize(d)?;
    let mut out = [0; DropReason::COUNT];
    for (o, x) in out.iter_mut().zip(v) {
        *o = x;
    }
    Ok(out)
}

impl CoreStats {
    /// Counts one dropped packet.
    #[inline]
    pub fn drop(&mut self, reason: DropReason) {
        self.drops[reason as usize] += 1;
    }

    /// The count for one reason.
    pub fn drops_for(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }

    /// All drops together.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }
}
