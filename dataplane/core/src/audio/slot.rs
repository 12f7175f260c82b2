//! Top-N audio in fixed slots: a subscriber leg with [`AudioSlotsSpec`] receives its speaker
//! group's audio in N slots, each one out-SSRC with one continuous sequence and timestamp space
//! whichever speaker feeds it (so its client never renegotiates and runs N decoders, not one per
//! participant). The speaker's own SSRC goes in the copy's CSRC list (RFC 3550 §5.1), so the
//! client still knows who speaks.
//!
//! ```text
//!   packet of track T (group G) for leg S with slots:
//!     wanted(T) = T among the first N of G's ranking that S does not publish
//!     a slot fed by T ──────────── wanted, or T still mid-spurt ─▶ rewrite through the slot
//!                      └────────── otherwise: the slot is released ─▶ skip
//!     wanted, no slot fed by T: a free slot, or one whose source is unwanted and at a talk-spurt
//!       boundary ─▶ switch the slot to T (seq = last + 1, ts advanced by the time elapsed)
//!     anything else ─▶ skip
//! ```
//!
//! A talk spurt ends when the source's short speech window says it stopped speaking, or when
//! it sent nothing for [`SPURT_GAP`] (DTX): a speaker who drops out of the top N is never cut
//! mid-word, and a newcomer waits for a slot at most that long. There are N slots, so at any
//! moment at most N streams flow to the subscriber.
//!
//! Each slot is a [`Subscription`] of its own (compiled from the slot spec), so the one egress
//! builds its copies like every other; only the CSRC insertion is particular to slots.

use core::time::Duration;

use crate::ids::{LegId, SeqNo, Ssrc, TrackId};
use crate::table::{AudioSlotsSpec, Subscription, SubscriptionSpec};
use crate::time::Instant;

use super::ActiveSpeakers;

/// A source that sent nothing for this long is between talk spurts (Opus DTX sends a packet
/// every 400 ms in silence; speech one every 20 ms).
pub const SPURT_GAP: Duration = Duration::from_millis(100);

/// One slot: its stream state and who feeds it.
#[derive(Clone, Debug)]
pub struct AudioSlot {
    /// The stream the subscriber sees (out-SSRC, rewriter, SRTP state, counters).
    pub sub: Subscription,
    /// The track feeding it, with the publisher SSRC it arrives on.
    pub source: Option<(TrackId, Ssrc)>,
    /// Whether the source was speaking at its last packet through the slot.
    source_speaking: bool,
    /// When the source's last packet went through the slot.
    last_fed: Option<Instant>,
}

impl AudioSlot {
    fn at_boundary(&self, now: Instant) -> bool {
        !self.source_speaking || self.last_fed.is_none_or(|t| now.saturating_duration_since(t) >= SPURT_GAP)
    }
}

/// A subscriber leg's slots (runtime state on [`crate::table::Leg`]).
#[derive(Clone, Debug)]
pub struct SlotSet {
    /// What the control plane said.
    pub spec: AudioSlotsSpec,
    /// The slots, one per out-SSRC of the spec.
    pub slots: Vec<AudioSlot>,
}

/// What a slot set decided for one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotChoice {
    /// The slot.
    pub slot: usize,
    /// Its subscriber-side sequence number and timestamp.
    pub rewritten: crate::forward::rewrite::Rewritten,
    /// Whether the slot switched to this source with this packet.
    pub switched: bool,
}

/// One packet of a ranked audio track, as the slots need it.
#[derive(Clone, Copy, Debug)]
pub struct SlotPacket {
    /// The track.
    pub track: TrackId,
    /// The publisher SSRC.
    pub ssrc: Ssrc,
    /// Its sequence number and timestamp.
    pub seq: SeqNo,
    /// RTP timestamp.
    pub ts: u32,
    /// The track's RTP clock rate.
    pub clock_rate: u32,
    /// Whether the track is speaking now (its short speech window).
    pub speaking: bool,
}

impl SlotSet {
    /// The slots of `spec` for leg `subscriber`; the state of slots whose out-SSRC `old` had
    /// is kept (their subscriber sees one stream per SSRC).
    pub fn new(subscriber: LegId, spec: &AudioSlotsSpec, old: Option<SlotSet>) -> Self {
        let mut old = old.map(|o| o.slots).unwrap_or_default();
        let slots = spec
            .out_ssrcs
            .iter()
            .map(|&out_ssrc| match old.iter().position(|s| s.sub.out_ssrc == out_ssrc) {
                Some(p) => old.swap_remove(p),
                None => {
                    let sub = SubscriptionSpec {
                        subscriber,
                        track: TrackId(0),
                        out_ssrc,
                        out_rtx_ssrc: None,
                        pt_map: spec.pt_map.clone(),
                        ext_map: spec.ext_map.clone(),
                        target_layer: 0,
                        paused: false,
                        priority: 0,
                        max_spatial: None,
                        max_temporal: None,
                        relay: Vec::new(),
                    };
                    AudioSlot { sub: Subscription::compile(&sub, 1), source: None, source_speaking: false, last_fed: None }
                }
            })
            .collect();
        Self { spec: spec.clone(), slots }
    }

    /// Decides for one packet (see the module's diagram). `own` tells the tracks the subscriber
    /// publishes; `ranking` is the group's.
    pub fn choose(&mut self, now: Instant, p: &SlotPacket, ranking: &ActiveSpeakers, own: impl Fn(TrackId) -> bool) -> Option<SlotChoice> {
        let n = self.slots.len();
        let wanted = |t: TrackId| ranking.as_slice().iter().filter(|s| !own(s.track)).take(n).any(|s| s.track == t);
        let wanted_now = wanted(p.track);
        if let Some(i) = self.slots.iter().position(|s| s.source.is_some_and(|(t, _)| t == p.track)) {
            let slot = &mut self.slots[i];
            if !wanted_now && slot.at_boundary(now) {
                slot.source = None;
                return None;
            }
            let switched = slot.source.is_some_and(|(_, ssrc)| ssrc != p.ssrc);
            let rewritten = if switched {
                // The track's SSRC changed (a new publisher stream): continue the slot's stream.
                Some(slot.sub.rewriter.switch_to(now, p.ssrc, p.seq, p.ts, p.clock_rate))
            } else {
                slot.sub.rewriter.rewrite(now, p.ssrc, p.seq, p.ts)
            }?;
            slot.source = Some((p.track, p.ssrc));
            (slot.source_speaking, slot.last_fed) = (p.speaking, Some(now));
            return Some(SlotChoice { slot: i, rewritten, switched });
        }
        if !wanted_now {
            return None;
        }
        let free = self
            .slots
            .iter()
            .position(|s| s.source.is_none())
            .or_else(|| self.slots.iter().position(|s| s.source.is_some_and(|(t, _)| !wanted(t)) && s.at_boundary(now)))?;
        let slot = &mut self.slots[free];
        let rewritten = slot.sub.rewriter.switch_to(now, p.ssrc, p.seq, p.ts, p.clock_rate);
        slot.source = Some((p.track, p.ssrc));
        (slot.source_speaking, slot.last_fed) = (p.speaking, Some(now));
        Some(SlotChoice { slot: free, rewritten, switched: true })
    }
}

/// Copies the RTP header `header` (the publisher's, `CC` CSRCs included) into `out` with `csrc`
/// first in its CSRC list (RFC 3550 §5.1: the contributing source), ahead of any the packet
/// had. Returns the new header length; `None` if the list would pass 15 or `out` is short.
///
/// ```text
///   V P X CC M PT seq ts SSRC | CSRC × CC | extension      (publisher)
///   V P X CC+1 ...   SSRC     | csrc, CSRC × CC | extension (slot copy)
/// ```
pub fn header_with_csrc(header: &[u8], csrc: Ssrc, out: &mut [u8]) -> Option<usize> {
    let cc = usize::from(*header.first()? & 0x0f);
    if cc >= 15 || header.len() < 12 + 4 * cc || out.len() < header.len() + 4 {
        return None;
    }
    out[..12].copy_from_slice(&header[..12]);
    out[0] = (out[0] & 0xf0) | (cc as u8 + 1);
    out[12..16].copy_from_slice(&csrc.0.to_be_bytes());
    out[16..header.len() + 4].copy_from_slice(&header[12..]);
    Some(header.len() + 4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::Speaker;
    use crate::ids::Pt;
    use crate::wire::rtp;

    const ME: TrackId = TrackId(9);

    fn ms(n: u64) -> Instant {
        Instant::from_nanos(n * 1_000_000)
    }

    fn set(n: usize) -> SlotSet {
        let spec = AudioSlotsSpec {
            group: crate::ids::SpeakerGroup(1),
            out_ssrcs: (0..n as u32).map(|i| Ssrc(0x5000 + i)).collect(),
            pt_map: vec![(Pt(111), Pt(109))],
            ext_map: vec![],
        };
        SlotSet::new(LegId(9), &spec, None)
    }

    fn ranking(tracks: &[u32]) -> ActiveSpeakers {
        let v: Vec<Speaker> = tracks.iter().map(|&t| Speaker { track: TrackId(t), level: 30 }).collect();
        ActiveSpeakers::new(&v, true)
    }

    fn pkt(track: u32, seq: u16, speaking: bool) -> SlotPacket {
        SlotPacket { track: TrackId(track), ssrc: Ssrc(0x100 + track), seq: SeqNo(seq), ts: u32::from(seq) * 960, clock_rate: 48_000, speaking }
    }

    /// Two slots, four talkers: only the top two (never the subscriber's own) get a slot; a
    /// newcomer waits for the spurt of the one it replaces to end, then continues the slot's
    /// sequence and timestamps.
    #[test]
    fn at_most_n_streams_never_its_own_switching_at_a_spurt_boundary_with_continuous_numbers() {
        let mut s = set(2);
        let own = |t| t == ME;
        let r = ranking(&[9, 1, 2, 3]);
        let mut t = 0;
        let mut sent = Vec::new();
        for seq in 0..10u16 {
            t += 20;
            for tr in [9, 1, 2, 3] {
                if let Some(c) = s.choose(ms(t), &pkt(tr, seq, true), &r, own) {
                    sent.push((tr, c.slot, c.rewritten.seq.0));
                }
            }
        }
        assert!(sent.iter().all(|&(tr, _, _)| tr == 1 || tr == 2), "only the top two others: {sent:?}");
        assert_eq!(sent.len(), 20);
        let slot_of = |tr| sent.iter().find(|x| x.0 == tr).unwrap().1;
        assert_ne!(slot_of(1), slot_of(2));
        // Speaker 3 overtakes 2, who is still talking: 3 waits.
        let r = ranking(&[1, 3, 2]);
        let last2 = s.slots[slot_of(2)].sub.rewriter.highest_seq().unwrap();
        t += 20;
        assert!(s.choose(ms(t), &pkt(2, 10, true), &r, own).is_some(), "2 is mid-spurt: it keeps its slot");
        assert!(s.choose(ms(t), &pkt(3, 10, true), &r, own).is_none(), "3 waits");
        // 2 falls silent (its short window drops): the slot goes to 3 at 3's next packet.
        t += 20;
        assert!(s.choose(ms(t), &pkt(2, 11, false), &r, own).is_some());
        t += 20;
        assert_eq!(s.choose(ms(t), &pkt(2, 12, false), &r, own), None, "2 released its slot");
        let c = s.choose(ms(t), &pkt(3, 12, true), &r, own).expect("3 gets the slot");
        assert!(c.switched);
        assert_eq!(c.slot, slot_of(2), "the slot 2 had");
        assert_eq!(c.rewritten.seq.0, last2.0.wrapping_add(3), "one continuous sequence: 2's packets 10 and 11, then 3's");
        let before = s.slots[c.slot].sub.rewriter.map_ts(Ssrc(0x103), 12 * 960).unwrap();
        assert_eq!(before, c.rewritten.ts);
        let next = s.choose(ms(t + 20), &pkt(3, 13, true), &r, own).unwrap();
        assert_eq!((next.rewritten.seq.0, next.rewritten.ts), (c.rewritten.seq.0 + 1, c.rewritten.ts + 960));
    }

    /// A source that stops sending (DTX) is at a boundary after SPURT_GAP even if its last
    /// packet was speech.
    #[test]
    fn a_source_gone_quiet_frees_its_slot_after_the_gap() {
        let mut s = set(1);
        let r = ranking(&[1]);
        assert!(s.choose(ms(0), &pkt(1, 0, true), &r, |_| false).is_some());
        let r = ranking(&[2, 1]);
        assert!(s.choose(ms(50), &pkt(2, 0, true), &r, |_| false).is_none(), "1 spoke 50 ms ago");
        let c = s.choose(ms(100), &pkt(2, 1, true), &r, |_| false).expect("gap passed");
        assert_eq!(c.rewritten.seq, SeqNo(1));
        assert_eq!(c.rewritten.ts, 4800, "100 ms at 48 kHz after the last timestamp");
    }

    #[test]
    fn the_csrc_goes_first_in_the_list() {
        let mut plain = vec![0x90, 111, 0, 7, 0, 0, 0, 9, 0, 0, 0, 0x42, 0xBE, 0xDE, 0, 1, 0x10, 0x85, 0, 0];
        plain.extend_from_slice(&[1, 2, 3]);
        let mut out = [0u8; 64];
        let n = header_with_csrc(&plain[..20], Ssrc(0xabcd), &mut out).unwrap();
        assert_eq!(n, 24);
        out[n..n + 3].copy_from_slice(&plain[20..]);
        let p = rtp::Packet::new_checked(&out[..n + 3]).unwrap();
        assert_eq!(p.csrc_count(), 1);
        assert_eq!(&out[12..16], &0xabcdu32.to_be_bytes());
        assert_eq!(p.find_extension(1), Some(&[0x85][..]), "the extension follows the CSRC list");
        assert_eq!(p.payload(), &[1, 2, 3]);
        let mut full = [0x8f; 72];
        full[0] = 0x8f;
        assert_eq!(header_with_csrc(&full[..72], Ssrc(1), &mut [0; 128]), None, "15 CSRCs: no room");
    }
}
