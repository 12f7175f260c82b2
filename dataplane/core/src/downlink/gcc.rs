//! A send-side bandwidth estimator of the Google Congestion Control family
//! (draft-ietf-rmcat-gcc-02, and libwebrtc's goog_cc shape): delay-based with a trendline
//! filter and an adaptive threshold, an AIMD rate controller, and a loss-based bound.
//!
//! ```text
//!   samples (sent, arrived, size) ─ groups of packets sent within 5 ms
//!     d(i) = (arrival(i) − arrival(i−1)) − (send(i) − send(i−1))        one-way delay gradient
//!     acc += d; smoothed = 0.9·smoothed + 0.1·acc; slope over 20 groups  trendline (§5.3)
//!     m = slope · min(n, 60) · 4   vs  γ (adaptive: k_up 0.0087, k_down 0.039, 6..600 ms)
//!       m > γ for > 10 ms and rising → overuse · m < −γ → underuse · else normal
//!   AIMD: overuse → 0.85 × delivered rate (hold after); normal → ×1.08 per second (additive
//!         near the last capacity); never above 1.2 × acked + 10 kbit/s
//!   loss (of media, not of probe padding): > 10 % → min(sent × (1 − p/2), delivered),
//!         not below 0.85 × delivered; < 2 % → ×1.05 per report (§6)
//!   estimate = min(delay-based, loss-based); a probe result raises both
//! ```

use core::time::Duration;
use std::collections::VecDeque;

use super::history::Sample;
use super::{BandwidthEstimator, Usage};
use crate::time::Instant;

const BURST: Duration = Duration::from_millis(5);
const WINDOW: usize = 20;
const SMOOTHING: f64 = 0.9;
const GAIN: f64 = 4.0;
const OVERUSE_MS: f64 = 10.0;
const ACKED_WINDOW: Duration = Duration::from_millis(250);
/// Lowest and highest estimate (bit/s).
pub const MIN_BPS: f64 = 50_000.0;
/// Highest estimate (bit/s).
pub const MAX_BPS: f64 = 50_000_000.0;

#[derive(Clone, Copy, Debug)]
struct Group {
    first_send: Instant,
    last_send: Instant,
    last_arrival: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rate {
    Hold,
    Increase,
    Decrease,
}

/// The estimator's state for one leg.
#[derive(Debug, Clone)]
pub struct Gcc {
    group: Option<Group>,
    prev: Option<Group>,
    first_arrival: Option<Instant>,
    num_deltas: u32,
    acc: f64,
    smoothed: f64,
    window: VecDeque<(f64, f64)>,
    prev_trend: f64,
    threshold: f64,
    last_threshold_update: Option<f64>,
    time_over: f64,
    overuse_count: u32,
    usage: Usage,
    rate: Rate,
    delay_bps: f64,
    last_rate_update: Option<Instant>,
    /// Link capacity estimate from the rates at which overuse was seen (bit/s).
    capacity: Option<f64>,
    /// The loss-based bound (bit/s), gcc-02 §6.
    loss_bps: f64,
    /// Arrivals of the last [`ACKED_WINDOW`] (time, bytes) and their sum.
    acked: VecDeque<(Instant, u64, bool)>,
    acked_bytes: u64,
    /// The same window's bytes with probe padding (what the path delivered in all).
    delivered_bytes: u64,
    lost_recent: u32,
    total_recent: u32,
    /// The last probe result: when, and its rate (bit/s).
    last_probe: Option<(Instant, f64)>,
    /// When the loss-based bound last decreased (at most once per [`LOSS_DECREASE_INTERVAL`]).
    last_loss_decrease: Option<Instant>,
}

/// The loss-based bound decreases at most this often: the loss a decrease reacts to shows up in
/// feedback for a while after it (gcc-02 §6 reacts once per report; libwebrtc once per RTT +
/// 300 ms).
const LOSS_DECREASE_INTERVAL: Duration = Duration::from_millis(300);
/// Packets per loss measurement: fewer make random loss of a few percent look like congestion
/// now and then (6 of 20 happens at 5 % loss).
const LOSS_WINDOW: u32 = 50;
/// How long after a probe an overuse is taken as the probe's own queue.
const PROBE_GRACE: Duration = Duration::from_millis(1000);

impl Gcc {
    /// An estimator starting at `start_bps`.
    pub fn new(start_bps: u64) -> Self {
        Self {
            group: None,
            prev: None,
            first_arrival: None,
            num_deltas: 0,
            acc: 0.0,
            smoothed: 0.0,
            window: VecDeque::with_capacity(WINDOW + 1),
            prev_trend: 0.0,
            threshold: 12.5,
            last_threshold_update: None,
            time_over: -1.0,
            overuse_count: 0,
            usage: Usage::Normal,
            rate: Rate::Hold,
            delay_bps: start_bps as f64,
            last_rate_update: None,
            capacity: None,
            loss_bps: start_bps as f64,
            acked: VecDeque::with_capacity(256),
            acked_bytes: 0,
            delivered_bytes: 0,
            lost_recent: 0,
            total_recent: 0,
            last_loss_decrease: None,
            last_probe: None,
        }
    }

    fn acked_bps(&self) -> f64 {
        self.acked_bytes as f64 * 8.0 / ACKED_WINDOW.as_secs_f64()
    }

    fn delivered_bps(&self) -> f64 {
        self.delivered_bytes as f64 * 8.0 / ACKED_WINDOW.as_secs_f64()
    }

    fn delta(&mut self, prev: Group, cur: Group) {
        let send = (cur.last_send.as_nanos() as f64 - prev.last_send.as_nanos() as f64) / 1e6;
        let arrival = (cur.last_arrival.as_nanos() as f64 - prev.last_arrival.as_nanos() as f64) / 1e6;
        let d = arrival - send;
        let first = *self.first_arrival.get_or_insert(cur.last_arrival);
        let at_ms = (cur.last_arrival.as_nanos() as f64 - first.as_nanos() as f64) / 1e6;
        self.num_deltas = (self.num_deltas + 1).min(1000);
        self.acc += d;
        self.smoothed = SMOOTHING * self.smoothed + (1.0 - SMOOTHING) * self.acc;
        if self.window.len() == WINDOW {
            self.window.pop_front();
        }
        self.window.push_back((at_ms, self.smoothed));
        let trend = if self.window.len() == WINDOW { slope(&self.window).unwrap_or(self.prev_trend) } else { self.prev_trend };
        self.detect(trend, send, at_ms);
    }

    fn detect(&mut self, trend: f64, send_delta_ms: f64, now_ms: f64) {
        if self.num_deltas < 2 {
            self.usage = Usage::Normal;
            return;
        }
        let m = f64::from(self.num_deltas.min(60)) * trend * GAIN;
        if m > self.threshold {
            self.time_over = if self.time_over < 0.0 { send_delta_ms / 2.0 } else { self.time_over + send_delta_ms };
            self.overuse_count += 1;
            if self.time_over > OVERUSE_MS && self.overuse_count > 1 && trend >= self.prev_trend {
                self.time_over = 0.0;
                self.overuse_count = 0;
                self.usage = Usage::Over;
            }
        } else if m < -self.threshold {
            self.time_over = -1.0;
            self.overuse_count = 0;
            self.usage = Usage::Under;
        } else {
            self.time_over = -1.0;
            self.overuse_count = 0;
            self.usage = Usage::Normal;
        }
        self.prev_trend = trend;
        // Adaptive threshold (gcc-02 §5.4): follows |m| slowly upwards, faster downwards;
        // outliers (a burst) do not move it.
        let last = *self.last_threshold_update.get_or_insert(now_ms);
        if m.abs() <= self.threshold + 15.0 {
            let k = if m.abs() < self.threshold { 0.039 } else { 0.0087 };
            let dt = (now_ms - last).clamp(0.0, 100.0);
            self.threshold = (self.threshold + k * (m.abs() - self.threshold) * dt).clamp(6.0, 600.0);
        }
        self.last_threshold_update = Some(now_ms);
    }

    fn update_rate(&mut self, now: Instant) {
        let acked = self.acked_bps();
        let dt = self.last_rate_update.map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64().min(1.0));
        self.last_rate_update = Some(now);
        match self.usage {
            Usage::Over => {
                if self.rate != Rate::Decrease || dt > 0.3 {
                    // 0.85 of what arrives (probe padding included: a probe in flight is part
                    // of the load that built the queue, and the media alone is only what the
                    // encoder made), but not below what a probe just measured (it is already
                    // 95 % of the delivered rate): a probe that reached the capacity builds a
                    // queue by design, and the media it measured for has not ramped into it yet.
                    let acked = self.delivered_bps();
                    let target = if acked > 0.0 { 0.85 * acked } else { 0.85 * self.delay_bps };
                    let floor = match self.last_probe {
                        Some((t, r)) if now.saturating_duration_since(t) < PROBE_GRACE => r,
                        _ => 0.0,
                    };
                    if target < self.delay_bps {
                        self.delay_bps = target.max(floor).min(self.delay_bps);
                    }
                    if acked > 0.0 {
                        self.capacity = Some(self.capacity.map_or(acked, |c| if acked > 1.5 * c { acked } else { 0.9 * c + 0.1 * acked }));
                    }
                    self.rate = Rate::Decrease;
                }
                return;
            }
            Usage::Under => {
                self.rate = Rate::Hold;
                return;
            }
            Usage::Normal => {
                if self.rate != Rate::Increase {
                    self.rate = Rate::Increase;
                    return;
                }
            }
        }
        // Application-limited (the leg sends less than the estimate): the estimate says nothing
        // about the path beyond what was delivered, so it grows no further than 1.2 times it
        // (libwebrtc uses 1.5; probes, not guesses, find more here).
        let cap = 1.2 * acked + 10_000.0;
        if self.delay_bps >= cap && acked > 0.0 {
            return;
        }
        let near = self.capacity.is_some_and(|c| self.delay_bps >= 0.9 * c && self.delay_bps <= 1.5 * c);
        let grown = if near {
            // One 1200-byte packet per response time (RTT + 100 ms; 200 ms assumed).
            self.delay_bps + 9600.0 / 0.2 * dt
        } else {
            self.delay_bps * 1.08f64.powf(dt)
        };
        self.delay_bps = if acked > 0.0 { grown.min(cap) } else { grown };
    }
}

/// Least-squares slope of (x, y) points.
fn slope(points: &VecDeque<(f64, f64)>) -> Option<f64> {
    let n = points.len() as f64;
    let (sx, sy) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + (x - mx) * (y - my), b + (x - mx) * (x - mx)));
    (den > 0.0).then(|| num / den)
}

impl BandwidthEstimator for Gcc {
    fn on_feedback(&mut self, now: Instant, samples: &[Sample]) {
        for s in samples {
            // Loss of media only: a probe's padding lost to the queue the probe itself built says
            // the probe overshot (it then measures nothing, see `Downlink::finish_probe`), not
            // that the media's rate should come down.
            let media = s.cluster == 0;
            self.total_recent += u32::from(media);
            let Some(arrived) = s.arrived else {
                self.lost_recent += u32::from(media);
                continue;
            };
            // The acked rate is media only: probe padding says what the path took during the
            // probe (the probe's own result), not what the leg carries.
            self.acked.push_back((arrived, u64::from(s.size), media));
            self.delivered_bytes += u64::from(s.size);
            if media {
                self.acked_bytes += u64::from(s.size);
            }
            match self.group {
                Some(mut g) if s.sent.saturating_duration_since(g.first_send) <= BURST && s.sent >= g.first_send => {
                    g.last_send = g.last_send.max(s.sent);
                    g.last_arrival = g.last_arrival.max(arrived);
                    self.group = Some(g);
                }
                Some(g) if arrived < g.last_arrival => {
                    // Reordered across groups: it says nothing about the delay gradient.
                }
                cur => {
                    if let Some(g) = cur {
                        if let Some(p) = self.prev {
                            self.delta(p, g);
                        }
                        self.prev = Some(g);
                    }
                    self.group = Some(Group { first_send: s.sent, last_send: s.sent, last_arrival: arrived });
                }
            }
        }
        // The acked-rate window ends at the newest arrival.
        if let Some(&(newest, _, _)) = self.acked.back() {
            while let Some(&(t, b, media)) = self.acked.front() {
                if newest.saturating_duration_since(t) <= ACKED_WINDOW {
                    break;
                }
                self.acked.pop_front();
                self.delivered_bytes -= b;
                if media {
                    self.acked_bytes -= b;
                }
            }
        }
        self.update_rate(now);
        self.delay_bps = self.delay_bps.clamp(MIN_BPS, MAX_BPS);
        // The loss-based bound, once feedback covered LOSS_WINDOW packets (gcc-02 §6): over 10 %
        // lost cuts what is sent now by half the loss; under 2 % it grows 5 % per report (it only
        // binds while below the delay-based estimate, and stays within 1.5 times it).
        if self.total_recent >= LOSS_WINDOW {
            let p = f64::from(self.lost_recent) / f64::from(self.total_recent);
            let current = self.delay_bps.min(self.loss_bps);
            if p > 0.1 {
                if self.last_loss_decrease.is_none_or(|t| now.saturating_duration_since(t) >= LOSS_DECREASE_INTERVAL) {
                    // Under heavy loss (a full drop-tail queue, a policer: over 25 %) never above
                    // what was delivered meanwhile, which is then the path's rate, reached in
                    // one step. (Random loss rarely reaches it; an application-limited sender's
                    // delivered rate says nothing about the path.)
                    // (Padding included: a probe's overshoot loses media too, and the media's
                    // own delivered rate is then only what the encoder made.)
                    let acked = self.delivered_bps();
                    let cut = current * (1.0 - 0.5 * p);
                    let cut = if p > 0.25 && acked > 0.0 { cut.min(acked) } else { cut };
                    // ...and never below 85 % of it by repeated cuts: the loss in feedback lags
                    // the decrease (a queue's worth of packets sent before it, and their
                    // retransmissions), so cutting per report while the path keeps delivering
                    // its capacity collapsed the estimate far below it.
                    self.loss_bps = cut.max((0.85 * acked).min(current));
                    self.last_loss_decrease = Some(now);
                }
            } else if p < 0.02 {
                self.loss_bps = (self.loss_bps * 1.05).min(1.5 * self.delay_bps);
            }
            self.loss_bps = self.loss_bps.clamp(MIN_BPS, MAX_BPS);
            self.lost_recent = 0;
            self.total_recent = 0;
        }
    }

    fn on_probe(&mut self, now: Instant, rate_bps: u64) {
        let r = rate_bps as f64;
        self.last_probe = Some((now, r));
        // Even while the detector says overuse: the probe's own queue is the usual cause, and
        // the decrease that follows is floored at this rate for PROBE_GRACE.
        if r > self.delay_bps {
            self.delay_bps = r.min(MAX_BPS);
            self.loss_bps = self.loss_bps.max(r.min(MAX_BPS));
        }
    }

    fn estimate(&self) -> u64 {
        self.delay_bps.min(self.loss_bps).clamp(MIN_BPS, MAX_BPS) as u64
    }

    fn usage(&self) -> Usage {
        self.usage
    }
}
