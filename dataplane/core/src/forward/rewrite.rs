//! Sequence-number and timestamp rewriting for one subscription.
//!
//! A subscriber sees one continuous RTP stream per track, whichever simulcast layer (publisher
//! SSRC) feeds it. Within one layer the mapping is a constant offset, so real loss upstream stays
//! visible as a gap (the subscriber NACKs it and we map the NACK back) and reordering passes
//! through untouched. At a layer switch — which happens only on the first packet of a keyframe of
//! the new layer — both offsets are recomputed:
//!
//! ```text
//!   old layer:  ... 1041 1042 1043 |
//!   new layer:                     | 7310(key) 7311 ...        (publisher sequence space)
//!   subscriber: ...  500  501  502 |  503      504  ...        seq_offset = 503 - 7310
//!   timestamp:  last_out_ts + max(1, elapsed × clock rate)     ts_offset  = that - in_ts
//! ```
//!
//! Packets of the old layer that arrive after the switch, and packets of the new layer from
//! before the keyframe, are dropped: either would repeat or precede sequence numbers the
//! subscriber already has. Packets of layers the subscription is not on never touch the sequence
//! space, so they never show as loss.
//!
//! Inside a segment the subscription may also leave packets out on purpose (frames of spatial
//! or temporal layers above its target, see `select`): [`SeqTsRewriter::skip`] closes the
//! hole, so what is left out never shows as loss either. Each run of skipped packets moves the
//! offset down by its length from the next packet on; the last [`OFFSET_CHANGES`] changes are
//! kept, so a reordered packet and a NACK still map through the offset of their time:
//!
//! ```text
//!   publisher:  10 11 [12 13 skipped] 14 15
//!   subscriber: 10 11                 12 13      offset 0 up to 11, -2 from 14 on
//! ```
//!
//! A skipped packet that arrives late (after a newer one) cannot close its hole: the
//! subscriber sees a gap, which its NACK finds unanswerable, as with any packet of a frame it
//! does not decode.

use core::time::Duration;

use crate::ids::{SeqNo, Ssrc};
use crate::time::Instant;

/// What the rewriter decided for one packet of the current source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rewritten {
    /// The subscriber-side sequence number.
    pub seq: SeqNo,
    /// The subscriber-side RTP timestamp.
    pub ts: u32,
}

/// One segment of the output: the source that feeds it and the offsets that map it.
/// How far behind its newest packet a segment still accepts (late, reordered) packets and maps
/// NACKs back: far more than any reorder or retransmission window, well under half the 16-bit
/// sequence space.
const SEGMENT_REACH: u16 = 0x4000;

/// How many offset changes (runs of skipped packets) a segment remembers for reordered
/// packets and NACKs: a few frames' worth, since each skipped frame is one change.
pub const OFFSET_CHANGES: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segment {
    source: Ssrc,
    /// The offset the segment opened with.
    base_offset: u16,
    ts_offset: u32,
    /// The publisher sequence number that opened the segment; earlier ones are dropped.
    first_in_seq: SeqNo,
    /// The newest publisher sequence number seen in the segment (sent or skipped).
    newest_in: SeqNo,
    /// The offset changes, oldest first: from this publisher sequence number on, this offset.
    changes: [(SeqNo, u16); OFFSET_CHANGES],
    /// Valid entries in `changes`.
    n_changes: u8,
    /// Changes were dropped off the front: packets from before `changes[0]` no longer map.
    forgot: bool,
}

impl Segment {
    fn new(source: Ssrc, seq_offset: u16, ts_offset: u32, first_in_seq: SeqNo) -> Self {
        Self {
            source,
            base_offset: seq_offset,
            ts_offset,
            first_in_seq,
            newest_in: first_in_seq,
            changes: [(SeqNo(0), 0); OFFSET_CHANGES],
            n_changes: 0,
            forgot: false,
        }
    }

    fn changes(&self) -> &[(SeqNo, u16)] {
        &self.changes[..usize::from(self.n_changes)]
    }

    /// The offset in force from the newest packet on.
    fn current_offset(&self) -> u16 {
        self.changes().last().map_or(self.base_offset, |c| c.1)
    }

    /// The offset for `in_seq` (at or after the segment's start), or `None` if it predates
    /// the changes remembered.
    fn offset_for(&self, in_seq: SeqNo) -> Option<u16> {
        for &(from, offset) in self.changes().iter().rev() {
            if in_seq == from || in_seq.is_after(from) {
                return Some(offset);
            }
        }
        (!self.forgot).then_some(self.base_offset)
    }

    /// Whether `in_seq` was skipped (its number went to the packet after it).
    fn was_skipped(&self, in_seq: SeqNo) -> bool {
        let mut before = self.base_offset;
        self.changes().iter().any(|&(from, offset)| {
            let run = before.wrapping_sub(offset);
            before = offset;
            let back = from.0.wrapping_sub(in_seq.0);
            back != 0 && back <= run
        })
    }

    /// Leaves `in_seq` out of the subscriber's stream (when it is the newest packet: see the
    /// module docs). Returns whether the hole was closed.
    fn skip(&mut self, in_seq: SeqNo) -> bool {
        if !in_seq.is_after(self.newest_in) {
            return false;
        }
        self.newest_in = in_seq;
        let from = SeqNo(in_seq.0.wrapping_add(1));
        let offset = self.current_offset().wrapping_sub(1);
        let n = usize::from(self.n_changes);
        if n > 0 && self.changes[n - 1].0 == in_seq {
            // The run of skipped packets goes on.
            self.changes[n - 1] = (from, offset);
        } else if n < OFFSET_CHANGES {
            self.changes[n] = (from, offset);
            self.n_changes += 1;
        } else {
            self.changes.copy_within(1.., 0);
            self.changes[OFFSET_CHANGES - 1] = (from, offset);
            self.forgot = true;
        }
        true
    }

    /// The publisher sequence number behind `out_seq`, if this segment produced it (`end` is the
    /// last subscriber sequence number the segment could have produced).
    fn map_back(&self, out_seq: SeqNo, end: SeqNo) -> Option<(Ssrc, SeqNo)> {
        let not_later = end == out_seq || end.is_after(out_seq);
        if !not_later {
            return None;
        }
        // Newest offset first: a change applies from its `from` up to the next change.
        let mut until: Option<SeqNo> = None;
        let regimes = self.changes().iter().rev().copied().chain((!self.forgot).then_some((self.first_in_seq, self.base_offset)));
        for (from, offset) in regimes {
            let in_seq = SeqNo(out_seq.0.wrapping_sub(offset));
            let after_from = in_seq == from || in_seq.is_after(from);
            let in_segment = in_seq == self.first_in_seq || in_seq.is_after(self.first_in_seq);
            if after_from && in_segment && until.is_none_or(|u| u.is_after(in_seq)) {
                return Some((self.source, in_seq));
            }
            until = Some(from);
        }
        None
    }
}

/// Sequence/timestamp rewriter for one subscription. No heap; see the size test.
#[derive(Clone, Debug, Default)]
pub struct SeqTsRewriter {
    segment: Option<Segment>,
    /// The segment before the last switch and the last subscriber sequence number it produced,
    /// so NACKs for packets lost just before a switch still map back.
    previous: Option<(Segment, SeqNo)>,
    /// Highest subscriber-side sequence number sent so far, with the timestamp it carried and
    /// when it was sent (for the timestamp jump at the next switch).
    highest: Option<(SeqNo, u32, Instant)>,
}

impl SeqTsRewriter {
    /// A rewriter that has sent nothing yet.
    pub const fn new() -> Self {
        Self { segment: None, previous: None, highest: None }
    }

    /// The publisher SSRC that currently feeds the subscription, if any.
    pub fn source(&self) -> Option<Ssrc> {
        self.segment.map(|s| s.source)
    }

    /// The highest subscriber-side sequence number sent so far.
    pub fn highest_seq(&self) -> Option<SeqNo> {
        self.highest.map(|h| h.0)
    }

    /// The last packet sent: its subscriber-side sequence number and timestamp.
    pub fn last_sent(&self) -> Option<(SeqNo, u32)> {
        self.highest.map(|(s, t, _)| (s, t))
    }

    /// A rewriter whose stream last sent `(seq, ts)` at `at` and has no source yet (resumed from
    /// a checkpoint): its next segment continues right after, like a layer switch.
    pub const fn resumed(seq: SeqNo, ts: u32, at: Instant) -> Self {
        Self { segment: None, previous: None, highest: Some((seq, ts, at)) }
    }

    /// Starts a new segment fed by `source`, opening at the packet `(in_seq, in_ts)` which must be
    /// the first packet of a keyframe (or any packet, for a stream without keyframes such as
    /// audio). `clock_rate` is the RTP clock in Hz. Returns the mapping of that first packet.
    ///
    /// A new stream starts in the lower half of the sequence space (the publisher's number with
    /// its top bit cleared), as libwebrtc's senders do: SRTP receivers take the first packet
    /// they see to be in rollover period 0, so a stream that starts just below the wrap and
    /// loses its first packets on the way would be in period 1 at the sender and 0 at the
    /// receiver, and never authenticate again.
    pub fn switch_to(&mut self, now: Instant, source: Ssrc, in_seq: SeqNo, in_ts: u32, clock_rate: u32) -> Rewritten {
        let (out_seq, out_ts) = match self.highest {
            None => (in_seq.0 & 0x7fff, in_ts),
            Some((last_seq, last_ts, last_at)) => {
                let elapsed = now.saturating_duration_since(last_at);
                (last_seq.0.wrapping_add(1), last_ts.wrapping_add(rtp_ticks(elapsed, clock_rate)))
            }
        };
        if let (Some(seg), Some((h, _, _))) = (self.segment, self.highest) {
            self.previous = Some((seg, h));
        }
        self.segment = Some(Segment::new(source, out_seq.wrapping_sub(in_seq.0), out_ts.wrapping_sub(in_ts), in_seq));
        let out = Rewritten { seq: SeqNo(out_seq), ts: out_ts };
        self.note_sent(now, out);
        out
    }

    /// Forgets the segment before the last switch: its sequence numbers no longer map back, so
    /// NACKs for them are not answered. After a switch *down* (congestion) the old layer's
    /// packets are useless to the decoder, which starts over at the new layer's keyframe, and
    /// retransmitting them would only load the link the switch was meant to relieve.
    pub fn forget_previous(&mut self) {
        self.previous = None;
    }

    /// Maps a packet of `source`. `None` means drop: it is not from the current source, or it
    /// precedes the packet that opened the segment.
    pub fn rewrite(&mut self, now: Instant, source: Ssrc, in_seq: SeqNo, in_ts: u32) -> Option<Rewritten> {
        let seg = self.segment.as_mut()?;
        if seg.source != source || (in_seq != seg.first_in_seq && !in_seq.is_after(seg.first_in_seq)) {
            return None;
        }
        let offset = seg.offset_for(in_seq)?;
        if seg.was_skipped(in_seq) {
            return None;
        }
        let out = Rewritten { seq: SeqNo(in_seq.0.wrapping_add(offset)), ts: in_ts.wrapping_add(seg.ts_offset) };
        if in_seq.is_after(seg.newest_in) {
            seg.newest_in = in_seq;
        }
        // "After the segment's first packet" is a 16-bit serial comparison (RFC 1982): half the
        // sequence space. Keep the start at most SEGMENT_REACH behind the newest packet, or a
        // stream longer than 32768 packets would be refused for the next 32768. Offsets older
        // than the start are folded into the base.
        if in_seq.0.wrapping_sub(seg.first_in_seq.0) > SEGMENT_REACH {
            seg.first_in_seq = SeqNo(in_seq.0.wrapping_sub(SEGMENT_REACH));
            while seg.n_changes > 0 && (seg.first_in_seq == seg.changes[0].0 || seg.first_in_seq.is_after(seg.changes[0].0)) {
                seg.base_offset = seg.changes[0].1;
                seg.changes.copy_within(1.., 0);
                seg.n_changes -= 1;
                seg.forgot = false;
            }
        }
        self.note_sent(now, out);
        Some(out)
    }

    /// Leaves the publisher packet `in_seq` of the current source out of the subscriber's
    /// stream without a gap (a frame of a layer the subscription does not take). Returns
    /// whether the hole was closed: false for a packet older than the newest one seen (its
    /// number stays a gap) or one outside the segment.
    pub fn skip(&mut self, source: Ssrc, in_seq: SeqNo) -> bool {
        match self.segment.as_mut() {
            Some(seg) if seg.source == source => seg.skip(in_seq),
            _ => false,
        }
    }

    /// Maps a subscriber-side sequence number back to the publisher's (for NACK translation), if
    /// it belongs to the current segment.
    pub fn to_source_seq(&self, out_seq: SeqNo) -> Option<(Ssrc, SeqNo)> {
        let (highest, _, _) = self.highest?;
        if let Some(seg) = self.segment
            && let Some(found) = seg.map_back(out_seq, highest)
        {
            return Some(found);
        }
        let (prev, prev_end) = self.previous?;
        prev.map_back(out_seq, prev_end)
    }

    /// Maps a retransmission of the publisher packet `(source, in_seq, in_ts)` through the
    /// segment that produced its subscriber sequence number — the current one or the one before
    /// the last switch — without moving the stream forward. A packet lost (or reordered past the
    /// switch point) just before a switch is still repaired after it.
    pub fn map_retransmission(&self, source: Ssrc, in_seq: SeqNo, in_ts: u32) -> Option<Rewritten> {
        let (highest, _, _) = self.highest?;
        [self.segment.map(|s| (s, highest)), self.previous].into_iter().flatten().find_map(|(seg, end)| {
            if seg.source != source {
                return None;
            }
            if seg.was_skipped(in_seq) {
                return None;
            }
            let out = SeqNo(in_seq.0.wrapping_add(seg.offset_for(in_seq)?));
            (seg.map_back(out, end)? == (source, in_seq)).then_some(())?;
            Some(Rewritten { seq: out, ts: in_ts.wrapping_add(seg.ts_offset) })
        })
    }

    /// Maps a publisher RTP timestamp of the current source into the subscriber's timeline (for
    /// sender reports).
    pub fn map_ts(&self, source: Ssrc, in_ts: u32) -> Option<u32> {
        let seg = self.segment?;
        (seg.source == source).then(|| in_ts.wrapping_add(seg.ts_offset))
    }

    fn note_sent(&mut self, now: Instant, out: Rewritten) {
        match self.highest {
            Some((h, _, _)) if !out.seq.is_after(h) => {}
            _ => self.highest = Some((out.seq, out.ts, now)),
        }
    }
}

/// The RTP timestamp advance for `elapsed` at `clock_rate`, at least one tick so timestamps stay
/// strictly monotonic across a switch.
pub(crate) fn rtp_ticks(elapsed: Duration, clock_rate: u32) -> u32 {
    let ticks = elapsed.as_nanos().saturating_mul(u128::from(clock_rate)) / 1_000_000_000;
    u32::try_from(ticks).unwrap_or(u32::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ssrc = Ssrc(0xaaaa);
    const B: Ssrc = Ssrc(0xbbbb);

    fn ms(n: u64) -> Instant {
        Instant::from_nanos(n * 1_000_000)
    }

    /// A segment lasts as long as its stream: past 32768 packets (11 minutes of 20 ms audio, under
    /// a second of fast video) packets must keep flowing, and late ones within reach still map.
    #[test]
    fn a_long_segment_never_stops() {
        let mut r = SeqTsRewriter::new();
        r.switch_to(ms(0), A, SeqNo(100), 0, 90_000);
        for i in 1..200_000u32 {
            let seq = SeqNo((100 + i) as u16);
            assert_eq!(r.rewrite(ms(u64::from(i)), A, seq, i).map(|o| o.seq), Some(seq), "packet {i}");
        }
        let newest = SeqNo((100 + 199_999u32) as u16);
        let late = SeqNo(newest.0.wrapping_sub(1000));
        assert_eq!(r.rewrite(ms(200_000), A, late, 0).map(|o| o.seq), Some(late), "reordered, within reach");
        assert_eq!(r.to_source_seq(late), Some((A, late)), "NACK maps back");
    }

    #[test]
    fn first_segment_passes_numbers_through() {
        let mut r = SeqTsRewriter::new();
        assert_eq!(r.rewrite(ms(0), A, SeqNo(5), 100), None, "no segment yet");
        let first = r.switch_to(ms(0), A, SeqNo(10), 1000, 90_000);
        assert_eq!(first, Rewritten { seq: SeqNo(10), ts: 1000 });
        assert_eq!(r.rewrite(ms(1), A, SeqNo(11), 1000), Some(Rewritten { seq: SeqNo(11), ts: 1000 }));
        assert_eq!(r.rewrite(ms(1), A, SeqNo(9), 900), None, "before the keyframe");
        assert_eq!(r.rewrite(ms(1), B, SeqNo(12), 1000), None, "other layer");
    }

    #[test]
    fn switch_continues_sequence_and_advances_timestamp_by_elapsed_time() {
        let mut r = SeqTsRewriter::new();
        // (A publisher just below its wrap: the subscriber's stream starts 32768 lower.)
        let first = r.switch_to(ms(0), A, SeqNo(65534), 4_000_000_000, 90_000);
        assert_eq!(first.seq, SeqNo(32766), "a new stream starts in the lower half");
        r.rewrite(ms(10), A, SeqNo(65535), 4_000_000_900).unwrap();
        let last = r.rewrite(ms(20), A, SeqNo(0), 4_000_001_800).unwrap();
        assert_eq!(last.seq, SeqNo(32768), "the publisher wraps, the subscriber's stream follows");
        // 100 ms later, switch to layer B at its keyframe.
        let first_b = r.switch_to(ms(120), B, SeqNo(7310), 12345, 90_000);
        assert_eq!(first_b.seq, SeqNo(32769));
        assert_eq!(first_b.ts, 4_000_001_800u32.wrapping_add(9000));
        let next = r.rewrite(ms(121), B, SeqNo(7311), 12345 + 3000).unwrap();
        assert_eq!(next, Rewritten { seq: SeqNo(32770), ts: first_b.ts + 3000 });
        // A late packet of the old layer and a pre-keyframe packet of the new one are dropped.
        assert_eq!(r.rewrite(ms(122), A, SeqNo(1), 4_000_002_700), None);
        assert_eq!(r.rewrite(ms(122), B, SeqNo(7309), 12000), None);
    }

    #[test]
    fn immediate_switch_still_moves_timestamp_forward() {
        let mut r = SeqTsRewriter::new();
        r.switch_to(ms(0), A, SeqNo(1), 500, 90_000);
        let b = r.switch_to(ms(0), B, SeqNo(900), 7, 90_000);
        assert_eq!(b, Rewritten { seq: SeqNo(2), ts: 501 });
    }

    #[test]
    fn reordering_and_loss_within_a_segment_are_preserved() {
        let mut r = SeqTsRewriter::new();
        r.switch_to(ms(0), A, SeqNo(100), 0, 90_000);
        let s = |r: &mut SeqTsRewriter, n| r.rewrite(ms(1), A, SeqNo(n), 0).map(|o| o.seq.0);
        assert_eq!(s(&mut r, 102), Some(102));
        assert_eq!(s(&mut r, 101), Some(101), "late but after the keyframe");
        assert_eq!(s(&mut r, 105), Some(105), "gap stays a gap");
        assert_eq!(r.highest_seq(), Some(SeqNo(105)));
        assert_eq!(r.to_source_seq(SeqNo(103)), Some((A, SeqNo(103))));
        assert_eq!(r.to_source_seq(SeqNo(106)), None, "not sent yet");
        assert_eq!(r.to_source_seq(SeqNo(99)), None, "before the segment");
    }

    #[test]
    fn nack_maps_back_through_a_switch() {
        let mut r = SeqTsRewriter::new();
        r.switch_to(ms(0), A, SeqNo(10), 0, 90_000);
        r.rewrite(ms(1), A, SeqNo(11), 0);
        r.switch_to(ms(40), B, SeqNo(3000), 0, 90_000); // out 12
        r.rewrite(ms(41), B, SeqNo(3001), 0); // out 13
        assert_eq!(r.to_source_seq(SeqNo(13)), Some((B, SeqNo(3001))));
        assert_eq!(r.to_source_seq(SeqNo(11)), Some((A, SeqNo(11))), "the segment before the switch");
        assert_eq!(r.to_source_seq(SeqNo(9)), None, "before anything was sent");
        assert_eq!(r.map_ts(B, 100), Some(r.map_ts(B, 0).unwrap() + 100));
        assert_eq!(r.map_ts(A, 100), None);
        // Retransmissions map through the segment that sent them, current or previous.
        assert_eq!(r.map_retransmission(A, SeqNo(11), 50), Some(Rewritten { seq: SeqNo(11), ts: 50 }));
        assert_eq!(r.map_retransmission(B, SeqNo(3001), 7), Some(Rewritten { seq: SeqNo(13), ts: r.map_ts(B, 7).unwrap() }));
        assert_eq!(r.map_retransmission(A, SeqNo(12), 0), None, "after the old segment ended");
        assert_eq!(r.map_retransmission(B, SeqNo(3002), 0), None, "not sent yet");
        assert_eq!(r.map_retransmission(A, SeqNo(9), 0), None, "before the old segment");
    }

    /// Skipped packets close their hole; reordered packets and NACKs map through the offset of
    /// their time; a late skipped packet leaves a gap; a long stream of skips keeps working.
    #[test]
    fn skipped_packets_leave_no_gap() {
        let mut r = SeqTsRewriter::new();
        let out = |r: &mut SeqTsRewriter, n: u16| r.rewrite(ms(1), A, SeqNo(n), u32::from(n)).map(|o| o.seq.0);
        r.switch_to(ms(0), A, SeqNo(10), 10, 90_000);
        assert_eq!(out(&mut r, 11), Some(11));
        assert!(r.skip(A, SeqNo(12)) && r.skip(A, SeqNo(13)), "a run of two");
        assert_eq!(out(&mut r, 14), Some(12), "the hole is closed");
        assert_eq!(out(&mut r, 15), Some(13));
        assert!(r.skip(A, SeqNo(16)));
        assert_eq!(out(&mut r, 17), Some(14));
        assert!(!r.skip(A, SeqNo(9)), "before the segment");
        assert!(!r.skip(B, SeqNo(18)), "another source");
        assert!(!r.skip(A, SeqNo(15)), "late: not the newest");
        assert_eq!(r.rewrite(ms(2), A, SeqNo(13), 13), None, "a skipped packet (its retransmission) is not sent again");
        // A reordered packet from before the first run maps with the offset of its time.
        assert_eq!(r.rewrite(ms(2), A, SeqNo(11), 11).map(|o| o.seq.0), Some(11));
        // NACKs map back through every regime, never to a skipped packet.
        for (o, i) in [(11, 11), (12, 14), (13, 15), (14, 17)] {
            assert_eq!(r.to_source_seq(SeqNo(o)), Some((A, SeqNo(i))), "out {o}");
            assert_eq!(r.map_retransmission(A, SeqNo(i), 0).map(|x| x.seq.0), Some(o), "in {i}");
        }
        assert_eq!(r.map_retransmission(A, SeqNo(13), 0), None, "a skipped packet is not retransmitted");
        assert_eq!(r.to_source_seq(SeqNo(15)), None, "not sent yet");
        // Skip every other packet for a long while: the stream stays continuous, the oldest
        // changes are forgotten (their packets no longer map), the newest still do.
        let mut last = 14u16;
        for n in (18u32..100_000).step_by(2) {
            assert!(r.skip(A, SeqNo(n as u16)));
            let o = out(&mut r, (n + 1) as u16).unwrap();
            assert_eq!(o, last.wrapping_add(1), "packet {}", n + 1);
            last = o;
        }
        assert_eq!(r.to_source_seq(SeqNo(last)), Some((A, SeqNo(99_999u32 as u16))));
        assert_eq!(r.to_source_seq(SeqNo(last - 1)), Some((A, SeqNo(99_997u32 as u16))));
        assert_eq!(r.to_source_seq(SeqNo(last - 10)), None, "beyond the changes remembered");
        assert_eq!(r.rewrite(ms(3), A, SeqNo(99_980u32 as u16), 0), None, "too late to map");
    }

    /// A skip run that outlives the segment's reach folds into its base offset, so a long run
    /// of skips and sends never refuses packets.
    #[test]
    fn offsets_fold_into_the_base_as_the_segment_moves() {
        let mut r = SeqTsRewriter::new();
        r.switch_to(ms(0), A, SeqNo(0), 0, 90_000);
        assert!(r.skip(A, SeqNo(1)));
        for n in 2..60_000u32 {
            assert_eq!(r.rewrite(ms(1), A, SeqNo(n as u16), 0).map(|o| o.seq.0), Some((n - 1) as u16), "packet {n}");
        }
    }

    #[test]
    fn rewriter_is_small() {
        assert!(size_of::<SeqTsRewriter>() <= 96, "{}", size_of::<SeqTsRewriter>());
    }
}
