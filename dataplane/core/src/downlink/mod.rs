//! Sluice as the sender on every subscriber leg (the downlink half of the feedback loop): its
//! own transport-wide sequence number on each packet to the leg, a send history, the
//! participant's transport-cc feedback turned into a bandwidth estimate, probes that look for
//! more when the allocation wants it, and the allocation of the estimate across the leg's
//! subscriptions (see [`alloc`]).
//!
//! ```text
//!   egress (forward::egress): stamp next_seq into the copy ─ history.sent(now, size)
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
/// How long one probe cluster lasts.
pub const PROBE_DURATION: Duration = Duration::from_millis(40);
/// Probes are at least this far apart; a probe that did not raise the estimate doubles the
/// wait, up to [`PROBE_BACKOFF_MAX`] (probing a saturated path only builds queues).
pub const PROBE_INTERVAL: Duration = Duration::from_millis(1500);
/// The longest wait between probes while the allocation wants more.
pub const PROBE_BACKOFF_MAX: Duration = Duration::from_secs(4);
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
}

impl Clone for Downlink {
    fn clone(&self) -> Self {
        // Only the undo log clones legs; a restored leg restarts its estimate from the history.
        Self { estimator: Box::new(Gcc::new(self.estimate())), samples: Vec::with_capacity(MAX_SAMPLES), ..Self::new_with(self.history.clone()) }
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
            samples: Vec::with_capacity(MAX_SAMPLES),
            probe: None,
            next_cluster: 1,
            last_probe: None,
            probe_wait: PROBE_INTERVAL,
            feedback_dropped: 0,
            feedback_used: 0,
            probes: 0,
            last_probe_bps: 0,
            reported_bps: 0,
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
        true
    }

    /// Adds this feedback's samples of packets sent during the probe; once its last packet is
    /// reported, its rate is the bytes of every stamped packet sent during it over the span
    /// they arrived in (and were sent in, whichever is longer).
    fn finish_probe(&mut self, now: Instant) {
        let Some(mut p) = self.probe else { return };
        for s in self.samples.iter().filter(|s| s.sent >= p.start && (!p.done_sending || s.sent <= p.last_sent)) {
            let Some(a) = s.arrived else { continue };
            let seen = p.seen.get_or_insert(ProbeSeen {
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
            seen.last_reported |= p.done_sending && s.cluster == p.cluster && s.sent == p.last_sent;
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
        if seen.packets < 5 {
            return;
        }
        let recv_span = seen.last_arrival.saturating_duration_since(seen.first_arrival).as_secs_f64().max(0.001);
        let send_span = seen.last_sent.saturating_duration_since(seen.first_sent).as_secs_f64().max(0.001);
        // The first packet's bytes arrived before the span starts.
        let bits = (seen.bytes as f64 - seen.bytes as f64 / f64::from(seen.packets)) * 8.0;
        let (recv, send) = (bits / recv_span, bits / send_span);
        // A probe that arrived slower than it left saturated the path: its receive rate is the
        // capacity, of which the estimate takes 95 % (libwebrtc's target utilisation).
        let rate = if recv < 0.9 * send { recv * 0.95 } else { recv.min(send) } as u64;
        self.last_probe_bps = rate;
        self.estimator.on_probe(now, rate);
        if self.estimator.estimate() >= p.estimate_before + p.estimate_before / 10 {
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
        self.probe = Some(Probe { cluster, rate_bps, start: now, end: now + PROBE_DURATION, next_send: now, sent: 0, last_sent: now, done_sending: false, estimate_before, seen: None });
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
