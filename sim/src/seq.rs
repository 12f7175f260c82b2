//! Sequence numbers as a receiver sees them: extending 16-bit RTP sequence numbers
//! ([`unwrap_seq`]) and the continuity of one received stream ([`Continuity`]): whether each
//! packet is the next one, leaves a gap, comes late (reordered or duplicated), and whether its
//! timestamp runs backwards or jumps.
//!
//! The tracker keeps only the highest (sequence number, timestamp) seen; what a harness does with
//! a verdict (count it, fail, ask for a keyframe) is the harness's business.

/// Extends a 16-bit sequence number to the one nearest `reference` (an extended sequence number):
/// the RFC 3550 §A.1 idea, for a receiver that tracks its own highest.
pub fn unwrap_seq(reference: i64, seq: u16) -> i64 {
    let d = seq.wrapping_sub(reference as u16) as i16;
    reference + i64::from(d)
}

/// Where a packet falls in its stream's sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// The stream's first packet.
    First,
    /// The packet after the highest so far.
    Next,
    /// Ahead of the highest, with `missing` packets in between (lost, or still to come).
    Gap {
        /// Sequence numbers skipped.
        missing: u16,
    },
    /// At or behind the highest: reordered, or a duplicate. The highest does not move.
    Late,
}

/// The tracker's verdict on one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// Its place in the sequence.
    pub order: Order,
    /// Ahead in sequence but behind in RTP time.
    pub ts_backwards: bool,
    /// Ahead in sequence and more than the tracker's `max_ts_step` ahead in RTP time.
    pub ts_jump: bool,
}

impl Step {
    /// Whether it left a gap.
    pub fn is_gap(&self) -> bool {
        matches!(self.order, Order::Gap { .. })
    }

    /// Whether it came late (reordered or duplicated).
    pub fn is_late(&self) -> bool {
        self.order == Order::Late
    }

    /// Whether its timestamp ran backwards or jumped.
    pub fn ts_error(&self) -> bool {
        self.ts_backwards || self.ts_jump
    }
}

/// The continuity of one received stream: its highest (sequence number, timestamp).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Continuity {
    highest: Option<(u16, u32)>,
    max_ts_step: u32,
}

impl Continuity {
    /// A stream not seen yet, whose timestamp may move up to `max_ts_step` ticks between two
    /// packets in order (e.g. ten seconds of its clock).
    pub const fn new(max_ts_step: u32) -> Self {
        Self { highest: None, max_ts_step }
    }

    /// Takes the packet (`seq`, `ts`): moves the highest on if it is ahead (within half the
    /// sequence space), and says where it fell.
    pub fn observe(&mut self, seq: u16, ts: u32) -> Step {
        let ok = |order| Step { order, ts_backwards: false, ts_jump: false };
        let Some((hs, hts)) = self.highest else {
            self.highest = Some((seq, ts));
            return ok(Order::First);
        };
        let d = seq.wrapping_sub(hs) as i16;
        if d <= 0 {
            return ok(Order::Late);
        }
        let dt = ts.wrapping_sub(hts) as i32;
        self.highest = Some((seq, ts));
        Step {
            order: if d == 1 { Order::Next } else { Order::Gap { missing: d as u16 - 1 } },
            ts_backwards: dt < 0,
            ts_jump: dt > 0 && dt as u32 > self.max_ts_step,
        }
    }

    /// The highest (sequence number, timestamp) so far.
    pub const fn highest(&self) -> Option<(u16, u32)> {
        self.highest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEXT: Step = Step { order: Order::Next, ts_backwards: false, ts_jump: false };

    #[test]
    fn reports_each_break_of_continuity() {
        let mut c = Continuity::new(90_000);
        assert_eq!(c.observe(65_534, 1000).order, Order::First);
        assert_eq!(c.observe(65_535, 4000), NEXT);
        assert_eq!(c.observe(0, 7000), NEXT, "across the wrap");
        // A gap of two, then the two arriving late (reordered) and a duplicate.
        let s = c.observe(3, 16_000);
        assert_eq!(s.order, Order::Gap { missing: 2 });
        assert!(s.is_gap() && !s.ts_error());
        assert!(c.observe(1, 10_000).is_late());
        assert!(c.observe(2, 13_000).is_late());
        assert!(c.observe(3, 16_000).is_late());
        assert_eq!(c.highest(), Some((3, 16_000)), "late packets do not move the highest");
        // Time running backwards, and jumping.
        let back = c.observe(4, 15_000);
        assert!(back.ts_backwards && !back.ts_jump && back.order == Order::Next);
        let jump = c.observe(5, 15_000 + 90_001);
        assert!(jump.ts_jump && !jump.ts_backwards && jump.ts_error());
        assert_eq!(c.observe(6, 15_000 + 90_001 + 3000), NEXT);
        // Half the sequence space behind is late, not a gap.
        assert!(c.observe(6u16.wrapping_add(0x8000), 0).is_late());
    }

    #[test]
    fn unwraps_to_the_nearest() {
        assert_eq!(unwrap_seq(1 << 20 | 65_535, 0), (1 << 20) + 65_536);
        assert_eq!(unwrap_seq((1 << 20) + 65_536, 65_535), 1 << 20 | 65_535);
        assert_eq!(unwrap_seq(100, 90), 90);
        assert_eq!(unwrap_seq(100, 100 + 0x7fff), 100 + 0x7fff);
        assert_eq!(unwrap_seq(100, 100u16.wrapping_add(0x8000)), 100 - 0x8000);
    }
}
