//! The receiver side of transport-wide congestion control
//! (draft-holmer-rmcat-transport-wide-cc-extensions-01): Sluice records when each packet of a
//! publisher leg arrived, by the publisher's transport-wide sequence number, and reports the
//! arrivals back every [`super::TWCC_INTERVAL`] so the browser's send-side estimator (GCC) can
//! see queues build and ramp its bitrate.
//!
//! ```text
//!   record(seq16, now) ─ unwrap to 64 bits against the highest ─ ring[seq % RING] = arrival
//!   feedback: [next_report ..= highest] → deltas in 250 µs ticks → write_transport_cc
//!             (at most MAX_PER_FEEDBACK packets per feedback packet; a delta that does not fit
//!              16 bits ends the packet, the next one starts with a new reference time)
//! ```
//!
//! A packet that arrives after its sequence number was reported as lost is not reported again
//! (the sender already counted it lost). Fixed memory per leg: [`RING`] arrival slots.

use crate::ids::Ssrc;
use crate::time::Instant;
use crate::wire::WireError;
use crate::wire::rtcp::write_transport_cc;

/// Arrival slots per leg: about 2 s of a 5 Mbit/s publisher, far more than one feedback
/// interval holds.
pub const RING: usize = 1024;
/// Packets reported in one feedback packet (its deltas fit one output slot).
pub const MAX_PER_FEEDBACK: usize = 256;
/// One receive delta tick.
const TICK_NS: u64 = 250_000;
/// One reference-time unit.
const REF_NS: u64 = 64_000_000;

/// The arrival record of one leg.
#[derive(Clone, Debug)]
pub struct TwccRecorder {
    /// By extended sequence number modulo [`RING`]: (that number, arrival ns + 1; 0 = not
    /// received). One cache line per record.
    ring: Box<[(u64, u64); RING]>,
    /// The highest extended sequence number recorded.
    highest: Option<u64>,
    /// The first sequence number not yet reported.
    next_report: u64,
    /// Feedback packets written, modulo 256.
    fb_count: u8,
    /// Packets that arrived after their sequence number was reported (or fell out of the ring).
    pub late: u64,
}

impl Default for TwccRecorder {
    fn default() -> Self {
        Self { ring: Box::new([(u64::MAX, 0); RING]), highest: None, next_report: 0, fb_count: 0, late: 0 }
    }
}

impl TwccRecorder {
    /// Records that the packet with transport-wide sequence number `seq` arrived at `now`.
    pub fn record(&mut self, seq: u16, now: Instant) {
        let ext = match self.highest {
            None => {
                self.next_report = u64::from(seq) + (1 << 16);
                self.highest = Some(self.next_report);
                self.next_report
            }
            Some(h) => {
                // The 64-bit number closest to the highest.
                let delta = seq.wrapping_sub(h as u16) as i16;
                let ext = h.wrapping_add_signed(i64::from(delta));
                if ext > h {
                    self.highest = Some(ext);
                }
                ext
            }
        };
        if ext < self.next_report || self.highest.is_some_and(|h| h - ext >= RING as u64) {
            self.late += 1;
            return;
        }
        self.ring[(ext % RING as u64) as usize] = (ext, now.as_nanos().saturating_add(1));
        // Everything older than the ring holds can no longer be reported.
        if let Some(h) = self.highest
            && h - self.next_report >= RING as u64
        {
            self.next_report = h + 1 - RING as u64;
        }
    }

    /// Whether packets wait to be reported.
    pub fn pending(&self) -> bool {
        self.highest.is_some_and(|h| h >= self.next_report)
    }

    fn arrival(&self, ext: u64) -> Option<u64> {
        let (seen, at) = self.ring[(ext % RING as u64) as usize];
        (seen == ext && at != 0).then(|| at - 1)
    }

    /// Writes the next feedback packet into `buf` (sender `sender`, media source `media`), if
    /// packets wait to be reported; returns its length. Call until it returns `Ok(None)`.
    pub fn write_feedback(&mut self, buf: &mut [u8], sender: Ssrc, media: Ssrc) -> Result<Option<usize>, WireError> {
        let Some(highest) = self.highest else { return Ok(None) };
        // Skip leading not-received packets beyond what one packet can say: a feedback starts
        // at the first received packet (its reference time), or reports a run of losses.
        let mut start = self.next_report;
        while start <= highest && self.arrival(start).is_none() && highest - start >= MAX_PER_FEEDBACK as u64 {
            start += 1;
        }
        if start > highest {
            return Ok(None);
        }
        let Some(first_arrival) = (start..=highest.min(start + MAX_PER_FEEDBACK as u64 - 1)).find_map(|s| self.arrival(s)) else {
            // Only losses so far: wait for an arrival to anchor the reference time.
            return Ok(None);
        };
        let reference = first_arrival / REF_NS;
        let mut deltas = [None; MAX_PER_FEEDBACK];
        let mut prev = reference * REF_NS;
        let mut n = 0;
        let mut seq = start;
        while seq <= highest && n < MAX_PER_FEEDBACK {
            let d = match self.arrival(seq) {
                Some(at) => {
                    let ticks = (at as i128 - prev as i128).div_euclid(i128::from(TICK_NS));
                    let Ok(ticks) = i16::try_from(ticks) else { break };
                    prev = prev.wrapping_add_signed((i64::from(ticks)) * TICK_NS as i64);
                    Some(ticks)
                }
                None => None,
            };
            deltas[n] = d;
            n += 1;
            seq += 1;
        }
        // Trailing losses wait for the next feedback: a later arrival may still fill them.
        while n > 0 && deltas[n - 1].is_none() {
            n -= 1;
        }
        if n == 0 {
            return Ok(None);
        }
        let len = write_transport_cc(buf, sender, media, start as u16, (reference & 0xFF_FFFF) as u32, self.fb_count, &deltas[..n])?;
        self.fb_count = self.fb_count.wrapping_add(1);
        self.next_report = start + n as u64;
        Ok(Some(len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::rtcp::{TransportCc, TwccStatus};

    fn us(n: u64) -> Instant {
        Instant::from_nanos(n * 1000)
    }

    /// (seq, arrival µs relative to the reference) from feedback packets.
    fn decode(pkts: &[Vec<u8>]) -> Vec<(u16, Option<i64>)> {
        let mut out = Vec::new();
        for p in pkts {
            let t = TransportCc::new_checked(&p[..]).unwrap();
            let mut at = i64::from(t.reference_time()) * 64_000;
            for r in t.packets() {
                let r = r.unwrap();
                match r.status {
                    TwccStatus::NotReceived => out.push((r.seq, None)),
                    _ => {
                        at += i64::from(r.delta.unwrap()) * 250;
                        out.push((r.seq, Some(at)));
                    }
                }
            }
        }
        out
    }

    fn drain(r: &mut TwccRecorder) -> Vec<Vec<u8>> {
        let mut pkts = Vec::new();
        let mut buf = [0u8; 1500];
        while let Some(n) = r.write_feedback(&mut buf, Ssrc(1), Ssrc(2)).unwrap() {
            pkts.push(buf[..n].to_vec());
        }
        pkts
    }

    #[test]
    fn arrivals_come_back_in_the_feedback_with_losses_and_wrap() {
        let mut r = TwccRecorder::default();
        let mut sent = Vec::new();
        for i in 0..600u32 {
            let seq = (65_000 + i) as u16;
            if i % 17 == 3 {
                continue;
            }
            let at = 1_000_000 + u64::from(i) * 1_300 + u64::from(i % 5) * 90;
            r.record(seq, us(at));
            sent.push((seq, at));
        }
        let got = decode(&drain(&mut r));
        assert_eq!(got.len(), 600, "every sequence number up to the last arrival");
        for (seq, at) in &sent {
            let (_, g) = got.iter().find(|(s, _)| s == seq).unwrap();
            let g = g.unwrap_or_else(|| panic!("{seq} reported lost"));
            // Within one 250 µs tick (deltas are truncated, errors do not accumulate).
            assert!((*at as i64 - g).abs() < 250, "{seq}: {at} vs {g}");
        }
        assert_eq!(got.iter().filter(|(_, a)| a.is_none()).count(), 600 - sent.len());
        assert!(!r.pending());
        assert!(drain(&mut r).is_empty());
    }

    #[test]
    fn late_and_ancient_packets_are_not_reported_twice() {
        let mut r = TwccRecorder::default();
        r.record(10, us(1000));
        r.record(12, us(3000));
        assert_eq!(decode(&drain(&mut r)).len(), 3);
        r.record(11, us(4000));
        assert_eq!(r.late, 1);
        assert!(drain(&mut r).is_empty());
        // A far jump forward: the gap is reported as a run of losses, never more than the ring.
        r.record(5000, us(5000));
        let got = decode(&drain(&mut r));
        assert!(got.len() <= RING, "{}", got.len());
        assert_eq!(got.last().unwrap().0, 5000);
    }

    #[test]
    fn a_long_silence_starts_a_new_reference() {
        let mut r = TwccRecorder::default();
        r.record(1, us(1_000));
        r.record(2, us(20_000_000));
        let got = decode(&drain(&mut r));
        assert_eq!(got.len(), 2);
        assert!((got[1].1.unwrap() - 20_000_000).abs() < 250);
    }
}
