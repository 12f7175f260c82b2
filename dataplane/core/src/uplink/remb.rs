//! A receive-side estimate for publishers that negotiated only REMB
//! (draft-alvestrand-rmcat-remb-03): with no transport-cc, the browser's send-side controller
//! works from receiver-report loss and caps itself at the REMB value, so REMB must leave it room
//! to grow while nothing is lost and follow the delivered rate down when much is.
//!
//! ```text
//!   every report interval: incoming = bytes received × 8 / interval, p = the worst fraction lost
//!     p > 10 %  → incoming × (1 − p/2)
//!     p < 2 %   → max(estimate × 1.08, incoming × 1.5)       (room to ramp)
//!     else      → min(estimate, incoming × 1.5)              (hold)
//!   bounded to [100 kbit/s, 1.5 × incoming + 300 kbit/s]: never far above what flows
//! ```

use crate::time::Instant;

/// The lowest REMB sent (bit/s).
pub const MIN_REMB_BPS: u64 = 100_000;

/// One leg's REMB state.
#[derive(Clone, Copy, Debug, Default)]
pub struct RembEstimate {
    /// Bytes received since the last report.
    pub bytes: u64,
    /// When the last report was computed.
    pub since: Option<Instant>,
    /// The estimate, bit/s (0 until the first report).
    pub bps: u64,
}

impl RembEstimate {
    /// Counts a received packet of `len` bytes.
    #[inline]
    pub fn received(&mut self, len: usize) {
        self.bytes += len as u64;
    }

    /// The estimate at `now` given the worst fraction lost (of 256) in this interval's reports.
    pub fn update(&mut self, now: Instant, fraction_lost: u8) -> u64 {
        let elapsed = self.since.map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
        self.since = Some(now);
        let bytes = core::mem::take(&mut self.bytes);
        if elapsed < 0.05 {
            return self.bps.max(MIN_REMB_BPS);
        }
        let incoming = bytes as f64 * 8.0 / elapsed;
        let p = f64::from(fraction_lost) / 256.0;
        let est = self.bps as f64;
        let next = if p > 0.1 {
            incoming * (1.0 - 0.5 * p)
        } else if p < 0.02 {
            (est * 1.08).max(incoming * 1.5)
        } else {
            est.min(incoming * 1.5)
        };
        self.bps = next.clamp(MIN_REMB_BPS as f64, (incoming * 1.5 + 300_000.0).max(MIN_REMB_BPS as f64)) as u64;
        self.bps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Instant {
        Instant::from_nanos(n * 1_000_000_000)
    }

    #[test]
    fn remb_leaves_room_to_ramp_and_follows_heavy_loss_down() {
        let mut r = RembEstimate::default();
        r.update(s(0), 0);
        // 300 kbit/s flowing, nothing lost: room to grow by half.
        r.received(300_000 / 8);
        assert_eq!(r.update(s(1), 0), 450_000);
        // The sender ramps into it: the room follows.
        r.received(450_000 / 8);
        assert_eq!(r.update(s(2), 0), 675_000);
        // 5 % lost: hold (at most 1.5x what flows).
        r.received(600_000 / 8);
        assert_eq!(r.update(s(3), 13), 675_000);
        // 30 % lost: below what flows.
        r.received(600_000 / 8);
        let e = r.update(s(4), 77);
        assert!(e < 600_000 && e > 400_000, "{e}");
        // Nothing flows: bounded to 300 kbit/s above nothing, whatever it was.
        assert_eq!(r.update(s(5), 0), 300_000);
    }
}
