//! Adaptive publishers: what a browser does with the feedback Sluice sends it, so the load the
//! bench offers is the load real clients offer through Sluice.
//!
//! ```text
//!   every packet on the send leg: transport-wide sequence number (extension TWCC_EXT)
//!                                 ─ Downlink::sent (the core's send history)
//!   transport-cc from Sluice (SRTCP on the send leg; the sink decrypts it and hands it over)
//!     ─ Downlink::on_feedback ─ the core's GCC estimator (the one Sluice runs per subscriber)
//!   every tick: estimate − audio − screen ─ layers_for ─ camera layers sent (a newly enabled
//!               layer starts with a keyframe); held back by the estimate → probe: padding-only
//!               packets on the lowest layer, paced by Downlink's prober
//! ```
//!
//! The model, libwebrtc's: the estimate starts at 300 kbit/s ([`START_BPS`]); only the lowest
//! layer is sent at first; a layer is enabled once what the estimate leaves after the lower
//! layers' target bitrates covers this layer's minimum bitrate ([`LAYER_MIN_FRACTION`] of its
//! target), times [`HYSTERESIS`] to enable one that is off (SimulcastRateAllocator); audio always
//! flows. Without RTX (the bench negotiates none) libwebrtc probes with padding-only packets on a
//! media SSRC, which Sluice forwards like any packet of that layer; the sinks count them apart.
//!
//! Screen share is kept at its fixed rate: browsers send it as one stream whose encoder adapts
//! its quality, not its layers, and the bench models the bytes, not the picture. Its rate and
//! audio's are taken off the estimate before the camera's layers are chosen.

use serde::Serialize;
use sluice_core::downlink::{Downlink, START_BPS, Usage};
use sluice_core::time::Instant;
use sluice_core::wire::rtcp::TransportCc;

/// A layer's minimum bitrate as a fraction of its target (libwebrtc's simulcast table: 720p
/// 600 of 2500 kbit/s, 360p 150 of 700, 180p 30 of 150).
pub const LAYER_MIN_FRACTION: f64 = 0.25;
/// Enabling a layer that is off needs this many times its minimum (libwebrtc's default
/// simulcast hysteresis for video); keeping it needs the minimum.
pub const HYSTERESIS: f64 = 1.2;
/// The least padding rate of a probe (as Sluice's own prober: a measurable cluster).
const MIN_PROBE_BPS: u64 = 600_000;
/// Padding bytes in one probe packet (RFC 3550's padding count is one octet).
pub const PROBE_PADDING: usize = sluice_core::downlink::PROBE_PADDING;
/// How often a publisher looks at its estimate.
const TICK_NS: u64 = 10_000_000;
/// How often the ramp is sampled for the report.
pub const SAMPLE_NS: u64 = 250_000_000;
/// Samples kept per publisher (two minutes at [`SAMPLE_NS`]).
pub const MAX_SAMPLES: usize = 480;

/// How many camera layers (1..=3) `available_bps` carries with `enabled` layers on now, by
/// libwebrtc's rule: each layer in turn needs what is left after the lower layers' targets to
/// cover its minimum (times [`HYSTERESIS`] if it is off); the lowest layer is always sent.
pub fn layers_for(available_bps: u64, targets_bps: [u64; 3], enabled: u8) -> u8 {
    let mut left = available_bps as f64;
    let mut n = 0u8;
    for (l, &target) in targets_bps.iter().enumerate() {
        let min = target as f64 * LAYER_MIN_FRACTION;
        let need = if l as u8 >= enabled { min * HYSTERESIS } else { min };
        if l > 0 && left < need {
            break;
        }
        n += 1;
        left -= (target as f64).min(left);
    }
    n
}

/// One publisher's ramp, for the report.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PublisherRamp {
    /// Participant index in the plan.
    pub participant: usize,
    /// Its meeting.
    pub meeting: usize,
    /// Whether it has a camera (the others send audio or a screen share only).
    pub camera: bool,
    /// When it started sending, seconds since the lanes started.
    pub start_s: f64,
    /// Seconds from its start until it sent 1, 2 and 3 camera layers (`None`: not yet).
    pub layers_at_s: [Option<f64>; 3],
    /// Camera layers it sends now.
    pub layers: u8,
    /// Its estimate now, kbit/s.
    pub estimate_kbps: f64,
    /// The highest estimate it had, kbit/s.
    pub max_estimate_kbps: f64,
    /// Times it turned a layer off (the estimate fell under what the layer needs).
    pub layer_drops: u64,
    /// Transport-cc feedback packets it used and dropped (named nothing it sent, malformed).
    pub feedback_used: u64,
    /// See `feedback_used`.
    pub feedback_dropped: u64,
    /// Probe clusters finished.
    pub probes: u64,
    /// Probe packets sent.
    pub probe_packets: u64,
    /// `(seconds since its start, estimate kbit/s, layers)` every 250 ms.
    pub samples: Vec<(f64, f64, u8)>,
}

/// A publisher's sender-side state (on its lane's generator thread).
#[derive(Debug)]
pub struct Publisher {
    dl: Downlink,
    /// Target bit/s of its camera's layers; `None`: no camera.
    camera: Option<[u64; 3]>,
    /// Audio and screen share: always sent.
    fixed_bps: u64,
    /// Camera layers sent now.
    pub layers: u8,
    started: Option<u64>,
    next_tick: u64,
    next_sample: u64,
    /// Whether its samples are kept (a sample ramp of the report; the others only keep the
    /// summary figures, so hundreds of publishers cost the generator nothing to sample).
    pub keep_samples: bool,
    /// The report's view, updated by [`Publisher::sample`].
    pub ramp: PublisherRamp,
}

impl Publisher {
    /// A publisher of `camera` layer rates (bit/s) and `fixed_bps` of audio and screen share.
    pub fn new(participant: usize, meeting: usize, camera: Option<[u64; 3]>, fixed_bps: u64) -> Self {
        Self {
            dl: Downlink::default(),
            camera,
            fixed_bps,
            layers: 0,
            started: None,
            next_tick: 0,
            next_sample: 0,
            keep_samples: true,
            ramp: PublisherRamp { participant, meeting, camera: camera.is_some(), estimate_kbps: START_BPS as f64 / 1e3, ..PublisherRamp::default() },
        }
    }

    /// Its meeting became active at `now_ns`: it starts with the lowest layer (once; a
    /// publisher paused by a ramp stepping back resumes where it was).
    pub fn start(&mut self, now_ns: u64) {
        if self.started.is_some() {
            return;
        }
        self.started = Some(now_ns);
        self.ramp.start_s = now_ns as f64 / 1e9;
        self.next_tick = now_ns;
        self.next_sample = now_ns;
        if self.camera.is_some() {
            self.set_layers(now_ns, 1);
        }
    }

    /// The transport-wide sequence number of the next packet.
    pub fn next_seq(&self) -> u16 {
        self.dl.history.next_seq()
    }

    /// The packet that carried [`Publisher::next_seq`] left at `now_ns`, `len` bytes on the wire.
    pub fn sent(&mut self, now_ns: u64, len: usize, probe: bool) {
        self.dl.sent(Instant::from_nanos(now_ns), len, probe);
        self.ramp.probe_packets += u64::from(probe);
    }

    /// One RTCP packet from Sluice that says it is transport-cc; anything that does not decode or
    /// names nothing sent is dropped and counted.
    pub fn on_feedback(&mut self, now_ns: u64, rtcp: &[u8]) {
        match TransportCc::new_checked(rtcp) {
            Ok(fb) => {
                self.dl.on_feedback(Instant::from_nanos(now_ns), &fb);
            }
            Err(_) => self.dl.feedback_dropped += 1,
        }
    }

    fn set_layers(&mut self, now_ns: u64, n: u8) {
        if n < self.layers {
            self.ramp.layer_drops += 1;
        }
        self.layers = n;
        let since = (now_ns - self.started.unwrap_or(now_ns)) as f64 / 1e9;
        for at in &mut self.ramp.layers_at_s[..usize::from(n)] {
            at.get_or_insert(since);
        }
    }

    /// Runs what is due at `now_ns`: the layer choice and probes. Returns the layers that were
    /// just turned on (a bit per layer), which start with a keyframe.
    pub fn tick(&mut self, now_ns: u64) -> u8 {
        let (Some(_), Some(targets)) = (self.started, self.camera) else { return 0 };
        if now_ns < self.next_tick {
            return 0;
        }
        self.next_tick = now_ns + TICK_NS;
        let estimate = self.dl.estimate();
        let n = layers_for(estimate.saturating_sub(self.fixed_bps), targets, self.layers);
        let before = self.layers;
        if n != before {
            self.set_layers(now_ns, n);
        }
        // Held back: look for more, doubling towards what every layer wants (with room), once
        // Sluice's feedback is flowing (before that there is nothing to measure a probe with).
        let wanted = self.fixed_bps + targets.iter().sum::<u64>();
        if n < 3 && self.dl.feedback_used > 0 && self.dl.usage() != Usage::Over {
            let target = (estimate * 2).max(estimate + 500_000).min(wanted + wanted / 5);
            let media = self.fixed_bps + targets[..usize::from(n)].iter().sum::<u64>();
            self.dl.start_probe(Instant::from_nanos(now_ns), target.saturating_sub(media).max(MIN_PROBE_BPS));
        }
        ((1u8 << n) - 1) & !((1u8 << before) - 1)
    }

    /// Whether a probe packet of `len` wire bytes should leave now.
    pub fn probe_due(&mut self, now_ns: u64, len: usize) -> bool {
        self.dl.take_probe_packet(Instant::from_nanos(now_ns), len)
    }

    /// Updates the report's view; pushes a sample every [`SAMPLE_NS`]. Returns whether it did.
    pub fn sample(&mut self, now_ns: u64) -> bool {
        let Some(start) = self.started else { return false };
        if now_ns < self.next_sample {
            return false;
        }
        self.next_sample = now_ns + SAMPLE_NS;
        let kbps = self.dl.estimate() as f64 / 1e3;
        let r = &mut self.ramp;
        r.layers = self.layers;
        r.estimate_kbps = kbps;
        r.max_estimate_kbps = r.max_estimate_kbps.max(kbps);
        r.feedback_used = self.dl.feedback_used;
        r.feedback_dropped = self.dl.feedback_dropped;
        r.probes = self.dl.probes;
        if self.keep_samples && r.samples.len() < MAX_SAMPLES {
            r.samples.push(((now_ns - start) as f64 / 1e9, kbps.round(), self.layers));
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGETS: [u64; 3] = [200_000, 600_000, 1_500_000];

    #[test]
    fn a_layer_needs_the_lower_targets_plus_its_minimum_and_hysteresis_to_come_on() {
        // Mid: 200 k for low + 150 k (its minimum) x 1.2 = 380 k to come on.
        assert_eq!(layers_for(0, TARGETS, 1), 1, "the lowest layer is always sent");
        assert_eq!(layers_for(379_000, TARGETS, 1), 1);
        assert_eq!(layers_for(381_000, TARGETS, 1), 2);
        // Top: 200 k + 600 k + 375 k x 1.2 = 1250 k.
        assert_eq!(layers_for(1_249_000, TARGETS, 2), 2);
        assert_eq!(layers_for(1_251_000, TARGETS, 2), 3);
        // Straight from one layer to three when the estimate allows it.
        assert_eq!(layers_for(3_000_000, TARGETS, 1), 3);
    }

    #[test]
    fn a_layer_that_is_on_stays_on_down_to_its_minimum() {
        // On: top stays until what is left falls under 375 k (1175 k in all), not 450 k.
        assert_eq!(layers_for(1_200_000, TARGETS, 3), 3);
        assert_eq!(layers_for(1_174_000, TARGETS, 3), 2);
        // Mid stays on down to 350 k, then only the lowest layer is left.
        assert_eq!(layers_for(351_000, TARGETS, 3), 2);
        assert_eq!(layers_for(349_000, TARGETS, 2), 1);
    }

    #[test]
    fn a_publisher_starts_on_the_lowest_layer_at_the_start_estimate() {
        let mut p = Publisher::new(0, 0, Some(TARGETS), 40_000);
        assert_eq!(p.tick(0), 0, "not started");
        p.start(1_000);
        assert_eq!(p.layers, 1);
        // 300 k − 40 k of audio: not enough for the middle layer.
        assert_eq!(p.tick(2_000), 0);
        assert_eq!(p.layers, 1);
        assert_eq!(p.ramp.layers_at_s[0], Some(0.0));
        assert!(p.sample(2_000));
        assert_eq!(p.ramp.samples, vec![(0.000001, 300.0, 1)]);
        // Garbage feedback is dropped and counted.
        p.on_feedback(3_000, &[0x8f, 205, 0, 1]);
        p.on_feedback(3_000, &[]);
        assert_eq!(p.dl.feedback_dropped, 2);
        // No feedback used yet: no probe.
        assert!(!p.probe_due(20_000_000, 300));
    }
}
