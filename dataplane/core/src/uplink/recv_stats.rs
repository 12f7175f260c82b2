//! RFC 3550 receive statistics of one incoming RTP stream (appendix A.1, A.3, A.8), and the
//! reception report block they produce (§6.4.1).
//!
//! ```text
//!   extended highest seq = cycles + max_seq          (A.1: wraps counted, big jumps resync)
//!   expected             = extended max − base + 1   (A.3)
//!   lost (cumulative)    = expected − received       (24-bit signed in the block)
//!   fraction lost        = lost in the interval × 256 / expected in the interval
//!   jitter J            += (|D(i−1,i)| − J) / 16      (A.8, in RTP timestamp units)
//!   LSR / DLSR           = middle 32 bits of the last SR's NTP time / 1/65536 s since it came
//! ```

use crate::ids::{SeqNo, Ssrc};
use crate::time::Instant;
use crate::wire::rtcp::ReportBlockInfo;

/// A jump this far ahead is a gap (packets lost), not a restart (RFC 3550 A.1).
const MAX_DROPOUT: u16 = 3000;
/// A packet this far behind is late (reordered), not a restart.
const MAX_MISORDER: u16 = 100;
const SEQ_MOD: u32 = 1 << 16;

/// Receive statistics of one stream. 56 bytes; updated once per authenticated packet.
#[derive(Clone, Copy, Debug, Default)]
pub struct RecvStats {
    started: bool,
    max_seq: u16,
    /// Shifted count of sequence number cycles.
    cycles: u32,
    base_seq: u32,
    /// The sequence number after a big jump: the next packet proves a restart (A.1 `bad_seq`).
    bad_seq: Option<u16>,
    received: u32,
    expected_prior: u32,
    received_prior: u32,
    /// The last packet's relative transit time, in RTP units (A.8).
    transit: Option<u32>,
    /// Jitter × 16, in RTP units.
    jitter16: u32,
    /// The last SR from the source: (middle 32 bits of its NTP time, when it arrived).
    last_sr: Option<(u32, Instant)>,
}

impl RecvStats {
    /// Counts one authenticated packet with sequence number `seq` and RTP timestamp `ts`, which
    /// arrived at `now` on a stream with `clock_rate` Hz.
    pub fn record(&mut self, now: Instant, seq: SeqNo, ts: u32, clock_rate: u32) {
        let seq = seq.0;
        if !self.started {
            self.restart(seq);
            self.started = true;
        } else {
            let delta = seq.wrapping_sub(self.max_seq);
            if delta == 0 {
                // A duplicate: counted as received, as RFC 3550 does (it can make lost negative).
            } else if delta < MAX_DROPOUT {
                if seq < self.max_seq {
                    self.cycles = self.cycles.wrapping_add(SEQ_MOD);
                }
                self.max_seq = seq;
            } else if delta <= (SEQ_MOD - u32::from(MAX_MISORDER)) as u16 {
                // A big jump: a restart if the next packet follows it, else a stray.
                if self.bad_seq == Some(seq) {
                    self.restart(seq);
                } else {
                    self.bad_seq = Some(seq.wrapping_add(1));
                    return;
                }
            }
            // Else late or duplicate within the misorder window: counted, max unchanged.
        }
        self.bad_seq = None;
        self.received = self.received.wrapping_add(1);
        self.update_jitter(now, ts, clock_rate);
    }

    /// The packets between the highest sequence number and `seq` were dropped on purpose before
    /// they got here (top-N audio's silence in the XDP stage): counted as received, so the
    /// reports do not call them lost. Call it before [`RecvStats::record`] of `seq`.
    pub fn intentional_gap(&mut self, seq: SeqNo) {
        let delta = seq.0.wrapping_sub(self.max_seq);
        if self.started && delta > 1 && delta < MAX_DROPOUT {
            self.received = self.received.wrapping_add(u32::from(delta - 1));
        }
    }

    fn restart(&mut self, seq: u16) {
        *self = Self { started: true, max_seq: seq, base_seq: u32::from(seq), last_sr: self.last_sr, ..Self::default() };
    }

    fn update_jitter(&mut self, now: Instant, ts: u32, clock_rate: u32) {
        // In RTP units, through microseconds: u64 all the way (no 128-bit division per packet),
        // exact to a microsecond, and only the low 32 bits matter (differences are taken).
        let arrival = ((now.as_nanos() / 1000).wrapping_mul(u64::from(clock_rate)) / 1_000_000) as u32;
        let transit = arrival.wrapping_sub(ts);
        if let Some(prev) = self.transit {
            let d = (transit.wrapping_sub(prev) as i32).unsigned_abs();
            // J += (|D| - J) / 16, kept ×16 (RFC 3550 A.8). A huge D (a timestamp jump) is
            // clamped so one packet cannot wrap the estimate.
            let d16 = d.min(u32::MAX >> 5);
            self.jitter16 = self.jitter16 + d16 - ((self.jitter16 + 8) >> 4);
        }
        self.transit = Some(transit);
    }

    /// Remembers the stream's last sender report: its NTP timestamp, arrived at `now`.
    pub fn record_sr(&mut self, now: Instant, ntp: u64) {
        self.last_sr = Some(((ntp >> 16) as u32, now));
    }

    /// Whether any packet was counted.
    pub fn started(&self) -> bool {
        self.started
    }

    /// The extended highest sequence number received.
    pub fn extended_max(&self) -> u32 {
        self.cycles.wrapping_add(u32::from(self.max_seq))
    }

    /// Packets received (duplicates included).
    pub fn received(&self) -> u32 {
        self.received
    }

    /// Packets expected from the first to the highest sequence number.
    pub fn expected(&self) -> u32 {
        self.extended_max().wrapping_sub(self.base_seq).wrapping_add(1)
    }

    /// The interarrival jitter, in RTP timestamp units.
    pub fn jitter(&self) -> u32 {
        self.jitter16 >> 4
    }

    /// The report block for `ssrc` at `now`, and the start of a new reporting interval.
    pub fn report(&mut self, ssrc: Ssrc, now: Instant) -> ReportBlockInfo {
        let expected = self.expected();
        let lost = i64::from(expected) - i64::from(self.received);
        let expected_interval = expected.wrapping_sub(self.expected_prior);
        let received_interval = self.received.wrapping_sub(self.received_prior);
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = i64::from(expected_interval) - i64::from(received_interval);
        let fraction_lost = if expected_interval == 0 || lost_interval <= 0 { 0 } else { ((lost_interval << 8) / i64::from(expected_interval)).min(255) as u8 };
        let (last_sr, delay_since_last_sr) = match self.last_sr {
            Some((lsr, at)) => {
                let since = now.saturating_duration_since(at);
                (lsr, (since.as_nanos() * 65_536 / 1_000_000_000).min(u128::from(u32::MAX)) as u32)
            }
            None => (0, 0),
        };
        ReportBlockInfo {
            ssrc,
            fraction_lost,
            cumulative_lost: lost.clamp(-0x80_0000, 0x7F_FFFF) as i32,
            highest_seq: self.extended_max(),
            jitter: self.jitter(),
            last_sr,
            delay_since_last_sr,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Instant {
        Instant::from_nanos(n * 1_000_000)
    }

    #[test]
    fn loss_counts_and_fraction_follow_rfc3550() {
        let mut s = RecvStats::default();
        // 100 packets 20 ms apart, every tenth lost, across the sequence wrap.
        for i in 0..100u16 {
            if i % 10 != 5 {
                s.record(ms(u64::from(i) * 20), SeqNo(65500u16.wrapping_add(i)), u32::from(i) * 960, 48_000);
            }
        }
        let b = s.report(Ssrc(9), ms(2000));
        assert_eq!(b.highest_seq, 65536 + u32::from(65500u16.wrapping_add(99)));
        assert_eq!(b.cumulative_lost, 10);
        assert_eq!(b.fraction_lost, (10 * 256 / 100) as u8);
        // Perfectly paced: no jitter.
        assert_eq!(b.jitter, 0);
        // The next interval has no loss.
        for i in 100..150u16 {
            s.record(ms(u64::from(i) * 20), SeqNo(65500u16.wrapping_add(i)), u32::from(i) * 960, 48_000);
        }
        let b = s.report(Ssrc(9), ms(3000));
        assert_eq!((b.fraction_lost, b.cumulative_lost), (0, 10));
    }

    #[test]
    fn jitter_converges_to_the_mean_deviation() {
        let mut s = RecvStats::default();
        // Arrivals alternate 0 and 4 ms late: |D| = 4 ms = 192 units at 48 kHz.
        for i in 0..2000u64 {
            let late = if i % 2 == 0 { 0 } else { 4 };
            s.record(ms(i * 20 + late), SeqNo(i as u16), (i * 960) as u32, 48_000);
        }
        let j = s.report(Ssrc(1), ms(50_000)).jitter;
        assert!((185..=192).contains(&j), "{j}");
    }

    #[test]
    fn a_restart_resyncs_and_a_stray_does_not() {
        let mut s = RecvStats::default();
        for i in 0..10u16 {
            s.record(ms(u64::from(i)), SeqNo(i), 0, 90_000);
        }
        // One stray far away: ignored.
        s.record(ms(11), SeqNo(30_000), 0, 90_000);
        assert_eq!(s.extended_max(), 9);
        // Two in a row far away: the source restarted.
        s.record(ms(12), SeqNo(40_000), 0, 90_000);
        s.record(ms(13), SeqNo(40_001), 0, 90_000);
        assert_eq!((s.extended_max(), s.expected(), s.received()), (40_001, 1, 1));
        // Late packets inside the misorder window count, and do not move the maximum.
        s.record(ms(14), SeqNo(39_990), 0, 90_000);
        assert_eq!((s.extended_max(), s.received()), (40_001, 2));
    }

    #[test]
    fn dlsr_counts_from_the_sr_arrival() {
        let mut s = RecvStats::default();
        s.record(ms(0), SeqNo(1), 0, 90_000);
        s.record_sr(ms(100), 0x0123_4567_89AB_CDEF);
        let b = s.report(Ssrc(1), ms(600));
        assert_eq!(b.last_sr, 0x4567_89AB);
        assert_eq!(b.delay_since_last_sr, 32_768);
    }
}
