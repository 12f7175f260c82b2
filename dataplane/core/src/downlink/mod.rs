//! Sluice as the sender on every subscriber leg (the downlink half of the feedback loop): its
//! own transport-wide sequence number on each packet to the leg, a send history, the
//! participant's transport-cc feedback turned into a bandwidth estimate, probes that look for
//! more when the allocation wants it, and the allocation of the estimate across the leg's
//! subscriptions (see [`alloc`]).
//!
//! ```text
//!   egress (forward::egress): stamp next_seq into the copy ─ history.sent(now, size)
//!                             ─ the leg's pacer: out now, or queued and sent from
//!                               handle_timeout (history.set_sent at departure; see [`pacer`])
//!   transport-cc from the participant ─ history.resolve ─▶ samples ─▶ estimator (trait)
//!                                                        └▶ probe cluster done → on_probe(rate)
//!   housekeeping tick: estimate ─▶ alloc::allocate ─▶ each subscription's layer cap
//!                      allocation wants more than the estimate → start a probe (padding on RTX)
//! ```
//!
//! Everything is per leg, on the worker that owns the leg (its port): copies of the leg made on
//! another worker carry no stamp and are not counted (egress ownership across workers is the
//! webinar-scale step).

pub mod alloc;
mod gcc;
mod history;
pub mod pacer;

use core::time::Duration;

pub use gcc::Gcc;
pub use history::{HISTORY, Sample, SendHistory};

use crate::time::Instant;
use crate::wire::rtcp::{TransportCc, TwccStatus};

/// What the delay-based detector says about the path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Usage {
    /// Queues are stable.
    #[default]
    Normal,
    /// Queues are building: the sender is over the capacity.
    Over,
    /// Queues are draining.
    Under,
}

/// A send-side bandwidth estimator, fed with resolved feedback. Behind a trait so a second
/// estimator can be measured against the first.
pub trait BandwidthEstimator: core::fmt::Debug + Send {
    /// Feedback resolved into samples (in sequence order) at `now`.
    fn on_feedback(&mut self, now: Instant, samples: &[Sample]);
    /// A probe cluster was delivered at `rate_bps` (measured at `now`).
    fn on_probe(&mut self, now: Instant, rate_bps: u64);
    /// The current estimate, bit/s.
    fn estimate(&self) -> u64;
    /// The delay-based detector's state.
    fn usage(&self) -> Usage;
}

/// A flowing layer no subscription wants for this long is reported unwanted.
pub const UNWANTED_AFTER: Duration = Duration::from_secs(2);
/// Where a leg's estimate starts (a browser's own start value).
pub const START_BPS: u64 = 300_000;
/// Padding bytes in one probe packet (RFC 3550's padding count is one octet).
pub const PROBE_PADDING: usize = 255;
/// How long one probe cluster lasts: long enough that a token-bucket shaper's burst cannot hold
/// its second half (that half's rate is what counts, see `finish_probe`), for bursts up to
/// about what the path carries in that time. A probe found fooled (its raise did not hold)
/// makes the leg's next ones twice as long, up to [`PROBE_MAX_SCALE`] times: a shaper's burst
/// takes a fixed part of each, so a longer probe reads closer to the shaped rate.
pub const PROBE_DURATION: Duration = Duration::from_millis(150);
/// The longest probe, in [`PROBE_DURATION`]s.
pub const PROBE_MAX_SCALE: u32 = 4;
/// Probes are at least this far apart; a probe that did not raise the estimate doubles the
/// wait, up to [`PROBE_BACKOFF_MAX`] (probing a saturated path only builds queues).
pub const PROBE_INTERVAL: Duration = Duration::from_millis(1500);
/// How long a probe's raise of the estimate must hold for the probe to count as a success.
const PROBE_HOLD: Duration = Duration::from_secs(3);
/// The longest wait between probes while the allocation wants more.
pub const PROBE_BACKOFF_MAX: Duration = Duration::from_secs(6);
/// Samples room kept per leg: a feedback packet reports at most a few hundred packets (more
/// grows the buffer once, up to [`MAX_SAMPLES`]).
const SAMPLES_RESERVED: usize = 256;
/// Feedback packets more than this many reports behind are ignored (impossible counts).
const MAX_SAMPLES: usize = 2 * HISTORY;

/// A probe cluster in progress or waiting for its feedback.
#[derive(Clone, Copy, Debug)]
struct Probe {
    cluster: u16,
    rate_bps: u64,
    start: Instant,
    end: Instant,
    next_send: Instant,
    /// Probe packets sent so far, and when the last left.
    sent: u32,
    last_sent: Instant,
    done_sending: bool,
    /// The estimate when it started (a probe that does not raise it by 10 % failed).
    estimate_before: u64,
    /// What feedback reported of the packets sent during it (media and padding), across
    /// feedback packets: first/last send and arrival, bytes, packets.
    seen: Option<ProbeSeen>,
    /// The same for the packets sent in its second half.
    second: Option<ProbeSeen>,
    /// Packets sent during it that feedback reported lost.
    lost: u32,
}

impl ProbeSeen {
    fn add(seen: &mut Option<ProbeSeen>, s: &Sample, a: Instant) {
        let seen = seen.get_or_insert(ProbeSeen {
            first_sent: s.sent,
            last_sent: s.sent,
            first_arrival: a,
            last_arrival: a,
            bytes: 0,
            packets: 0,
            last_reported: false,
        });
        seen.first_sent = seen.first_sent.min(s.sent);
        seen.last_sent = seen.last_sent.max(s.sent);
        seen.first_arrival = seen.first_arrival.min(a);
        seen.last_arrival = seen.last_arrival.max(a);
        seen.bytes += u64::from(s.size);
        seen.packets += 1;
    }

    /// (receive rate, send rate) in bit/s; the first packet's bytes arrived before the span.
    fn rates(&self) -> (f64, f64) {
        let recv_span = self.last_arrival.saturating_duration_since(self.first_arrival).as_secs_f64().max(0.001);
        let send_span = self.last_sent.saturating_duration_since(self.first_sent).as_secs_f64().max(0.001);
        let bits = (self.bytes as f64 - self.bytes as f64 / f64::from(self.packets.max(1))) * 8.0;
        (bits / recv_span, bits / send_span)
    }
}

#[derive(Clone, Copy, Debug)]
struct ProbeSeen {
    first_sent: Instant,
    last_sent: Instant,
    first_arrival: Instant,
    last_arrival: Instant,
    bytes: u64,
    packets: u32,
    /// The probe's last packet was reported.
    last_reported: bool,
}

/// One leg's downlink state.
#[derive(Debug)]
pub struct Downlink {
    /// What was sent, by the leg's transport-wide sequence number.
    pub history: SendHistory,
    estimator: Box<dyn BandwidthEstimator>,
    samples: Vec<Sample>,
    probe: Option<Probe>,
    next_cluster: u16,
    last_probe: Option<Instant>,
    /// The wait before the next probe.
    probe_wait: Duration,
    /// After a probe raised the estimate: until when it must hold, from what level (an estimate
    /// that falls back within that time means the probe was fooled, e.g. by a shaper's burst,
    /// and the wait doubles as for a failed probe).
    probe_check: Option<(Instant, u64, Duration)>,
    /// This leg's probe length, in [`PROBE_DURATION`]s.
    probe_scale: u32,
    /// Feedback packets that referenced nothing sent (or were malformed), dropped.
    pub feedback_dropped: u64,
    /// Feedback packets used.
    pub feedback_used: u64,
    /// Probe clusters finished, and their last result (bit/s).
    pub probes: u64,
    /// The last probe's measured rate.
    pub last_probe_bps: u64,
    /// The estimate last reported in an event.
    pub reported_bps: u64,
    /// Its pacer.
    pub pacer: pacer::Pacer,
}

impl Clone for Downlink {
    fn clone(&self) -> Self {
        // Only the undo log clones legs; a restored leg restarts its estimate from the history.
        let mut d =
            Self { estimator: Box::new(Gcc::new(self.estimate())), samples: Vec::with_capacity(SAMPLES_RESERVED), ..Self::new_with(self.history.clone()) };
        d.pacer.set_estimate(d.estimate());
        d
    }
}

impl Default for Downlink {
    fn default() -> Self {
        Self::new_with(SendHistory::default())
    }
}

impl Downlink {
    fn new_with(history: SendHistory) -> Self {
        Self {
            history,
            estimator: Box::new(Gcc::new(START_BPS)),
            samples: Vec::with_capacity(SAMPLES_RESERVED),
            probe: None,
            next_cluster: 1,
            last_probe: None,
            probe_wait: PROBE_INTERVAL,
            probe_check: None,
            probe_scale: 1,
            feedback_dropped: 0,
            feedback_used: 0,
            probes: 0,
            last_probe_bps: 0,
            reported_bps: 0,
            pacer: pacer::Pacer::default(),
        }
    }

    /// The current estimate, bit/s.
    pub fn estimate(&self) -> u64 {
        self.estimator.estimate()
    }

    /// What the delay-based detector says.
    pub fn usage(&self) -> Usage {
        self.estimator.usage()
    }

    /// Records a packet stamped with [`SendHistory::next_seq`] and sent at `now`.
    pub fn sent(&mut self, now: Instant, size: usize, probe: bool) {
        let cluster = if probe { self.probe.map_or(0, |p| p.cluster) } else { 0 };
        self.history.sent(now, size, cluster);
    }

    /// The participant's transport-cc feedback. Returns false (and counts it) when it named
    /// nothing Sluice sent or could not be decoded.
    pub fn on_feedback(&mut self, now: Instant, fb: &TransportCc<&[u8]>) -> bool {
        self.samples.clear();
        let base = self.history.unwrap(fb.base_sequence_number());
        let mut at = i64::from(fb.reference_time()) * 64_000_000;
        for (i, p) in fb.packets().enumerate() {
            let Ok(p) = p else {
                self.feedback_dropped += 1;
                return false;
            };
            if i >= MAX_SAMPLES {
                break;
            }
            let arrived = match (p.status, p.delta) {
                (TwccStatus::SmallDelta | TwccStatus::LargeDelta, Some(d)) => {
                    at = at.saturating_add(i64::from(d) * 250_000);
                    // The participant's clock: only differences mean anything, so any offset
                    // works as long as it is the same for every sample.
                    Some(Instant::from_nanos((at + (1i64 << 62)) as u64))
                }
                _ => None,
            };
            if let Some(s) = self.history.resolve(base + i as u64, arrived) {
                self.samples.push(s);
            }
        }
        if self.samples.is_empty() {
            self.feedback_dropped += 1;
            return false;
        }
        self.feedback_used += 1;
        self.estimator.on_feedback(now, &self.samples);
        self.finish_probe(now);
        self.pacer.set_estimate(self.estimator.estimate());
        if let Some((until, before, wait)) = self.probe_check {
            if now >= until {
                self.probe_check = None;
            } else if self.estimator.estimate() < before + before / 10 {
                self.probe_check = None;
                self.probe_wait = (wait * 2).min(PROBE_BACKOFF_MAX);
                self.probe_scale = (self.probe_scale * 2).min(PROBE_MAX_SCALE);
            }
        }
        true
    }

    /// Adds this feedback's samples of packets sent during the probe; once its last packet is
    /// reported, its rate is the bytes of every stamped packet sent during it over the span
    /// they arrived in (and were sent in, whichever is longer).
    fn finish_probe(&mut self, now: Instant) {
        let Some(mut p) = self.probe else { return };
        let half = p.start + p.end.saturating_duration_since(p.start) / 2;
        for s in self.samples.iter().filter(|s| s.sent >= p.start && (!p.done_sending || s.sent <= p.last_sent)) {
            let Some(a) = s.arrived else {
                p.lost += 1;
                continue;
            };
            ProbeSeen::add(&mut p.seen, s, a);
            if s.sent >= half {
                ProbeSeen::add(&mut p.second, s, a);
            }
            if p.done_sending
                && s.cluster == p.cluster
                && s.sent == p.last_sent
                && let Some(seen) = p.seen.as_mut()
            {
                seen.last_reported = true;
            }
        }
        let expired = self.samples.iter().any(|s| p.done_sending && s.sent > p.last_sent + Duration::from_millis(500));
        self.probe = Some(p);
        let Some(seen) = p.seen.filter(|s| s.last_reported) else {
            if expired {
                // Its end never came back: failed.
                self.probe = None;
                self.probe_wait = (self.probe_wait * 2).min(PROBE_BACKOFF_MAX);
            }
            return;
        };
        self.probe = None;
        self.probes += 1;
        // Judged once the result is in: doubled wait unless the estimate rose by 10 %.
        self.probe_wait = (self.probe_wait * 2).min(PROBE_BACKOFF_MAX);
        // Too few arrivals to measure, or too many lost (libwebrtc wants 80 % back): a probe
        // that overflowed a short queue measured the shaper's burst, not the path.
        if seen.packets < 5 || p.lost * 5 > seen.packets + p.lost {
            return;
        }
        let (mut recv, send) = seen.rates();
        // A shaper's burst lets the first part of a probe through at line rate: the second half
        // arrives at the rate the path sustains.
        if let Some(second) = p.second.filter(|s| s.packets >= 3) {
            recv = recv.min(second.rates().0);
        }
        // A probe that arrived slower than it left saturated the path: its receive rate is the
        // capacity, of which the estimate takes 95 % (libwebrtc's target utilisation).
        let rate = if recv < 0.9 * send { recv * 0.95 } else { recv.min(send) } as u64;
        self.last_probe_bps = rate;
        self.estimator.on_probe(now, rate);
        if self.estimator.estimate() >= p.estimate_before + p.estimate_before / 10 {
            // Raised: probe again soon, unless the raise does not hold for 3 s.
            self.probe_check = Some((now + PROBE_HOLD, p.estimate_before, self.probe_wait / 2));
            self.probe_wait = PROBE_INTERVAL;
        }
    }

    /// Starts a probe at `rate_bps` unless one runs or ran within [`PROBE_INTERVAL`], or the
    /// path is overused. Returns whether it started.
    pub fn start_probe(&mut self, now: Instant, rate_bps: u64) -> bool {
        if self.probe.is_some() || self.last_probe.is_some_and(|t| now.saturating_duration_since(t) < self.probe_wait) || self.usage() == Usage::Over {
            return false;
        }
        let cluster = self.next_cluster;
        self.next_cluster = self.next_cluster.wrapping_add(1).max(1);
        let estimate_before = self.estimate();
        self.probe = Some(Probe {
            cluster,
            rate_bps,
            start: now,
            end: now + PROBE_DURATION * self.probe_scale,
            next_send: now,
            sent: 0,
            last_sent: now,
            done_sending: false,
            estimate_before,
            seen: None,
            second: None,
            lost: 0,
        });
        self.last_probe = Some(now);
        true
    }

    /// When the next probe packet is due, if a probe is sending.
    pub fn probe_deadline(&self) -> Option<Instant> {
        self.probe.filter(|p| !p.done_sending).map(|p| p.next_send)
    }

    /// Whether a probe packet of `size` bytes should leave now; advances the probe's clock.
    pub fn take_probe_packet(&mut self, now: Instant, size: usize) -> bool {
        let Some(p) = self.probe.as_mut() else { return false };
        if p.done_sending || now < p.next_send {
            return false;
        }
        if now >= p.end && p.sent > 0 {
            p.done_sending = true;
            return false;
        }
        p.sent += 1;
        p.last_sent = now;
        let gap = Duration::from_nanos(size as u64 * 8 * 1_000_000_000 / p.rate_bps.max(1));
        p.next_send = p.next_send + gap;
        if p.next_send >= p.end {
            p.done_sending = true;
        }
        true
    }

    /// Abandons a probe that cannot send (no RTX stream on the leg).
    pub fn cancel_probe(&mut self) {
        self.probe = None;
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::ids::Ssrc;
    use crate::wire::rtcp::write_transport_cc;

    fn ms(n: u64) -> Instant {
        Instant::from_nanos(n * 1_000_000)
    }

    fn feedback(base: u16, deltas: &[Option<i16>]) -> Vec<u8> {
        let mut buf = vec![0u8; 4096];
        let n = write_transport_cc(&mut buf, Ssrc(1), Ssrc(2), base, 1, 0, deltas).unwrap();
        buf.truncate(n);
        buf
    }

    /// Feedback that names nothing Sluice sent, repeats what was already reported, claims more
    /// packets than it carries, or has deltas that run backwards or overflow: dropped and
    /// counted or harmlessly used, never a panic; the estimate stays within its bounds.
    #[test]
    fn impossible_feedback_is_dropped_and_counted() {
        let mut dl = Downlink::default();
        for i in 0..100 {
            dl.sent(ms(i), 1200, false);
        }
        let first = dl.history.next_seq().wrapping_sub(100);
        // Never sent: far ahead of the history.
        let fb = feedback(first.wrapping_add(5000), &[Some(1); 10]);
        assert!(!dl.on_feedback(ms(200), &TransportCc::new_checked(&fb[..]).unwrap()));
        assert_eq!(dl.feedback_dropped, 1);
        // Valid once, then the same again: the repeat resolves nothing.
        let fb = feedback(first, &[Some(4); 50]);
        assert!(dl.on_feedback(ms(200), &TransportCc::new_checked(&fb[..]).unwrap()));
        assert!(!dl.on_feedback(ms(210), &TransportCc::new_checked(&fb[..]).unwrap()));
        assert_eq!((dl.feedback_used, dl.feedback_dropped), (1, 2));
        // A count larger than the chunks carry: the decode fails, dropped.
        let mut fb = feedback(first.wrapping_add(50), &[Some(4); 10]);
        fb[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert!(!dl.on_feedback(ms(220), &TransportCc::new_checked(&fb[..]).unwrap()));
        // Deltas that run backwards and overflow any sane clock.
        let fb = feedback(first.wrapping_add(50), &[Some(i16::MIN), Some(i16::MAX), Some(-30_000), None, Some(i16::MIN)]);
        dl.on_feedback(ms(230), &TransportCc::new_checked(&fb[..]).unwrap());
        assert!((gcc::MIN_BPS as u64..=gcc::MAX_BPS as u64).contains(&dl.estimate()));
        // Random feedback-shaped bytes.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        for k in 0..20_000u64 {
            dl.sent(ms(300 + k), rng.random_range(0..1500), k % 5 == 0);
            let n = rng.random_range(0..64);
            let deltas: Vec<Option<i16>> = (0..n).map(|_| rng.random::<bool>().then(|| rng.random())).collect();
            let mut fb = feedback(rng.random(), &if deltas.is_empty() { vec![None] } else { deltas });
            let at = rng.random_range(12..fb.len());
            fb[at] = rng.random();
            if let Ok(v) = TransportCc::new_checked(&fb[..]) {
                dl.on_feedback(ms(300 + k), &v);
            }
            assert!((gcc::MIN_BPS as u64..=gcc::MAX_BPS as u64).contains(&dl.estimate()));
        }
    }
}
