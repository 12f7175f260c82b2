//! The adaptive publishers' ramps in the report: a summary over every camera publisher (how
//! many reached two and three layers, how long it took, the estimates), a few sample ramps in
//! full (the estimate every 250 ms and the layers sent), a text block for the table and a panel
//! for the SVG plot.

use std::fmt::Write as _;

use serde::Serialize;

use super::publisher::PublisherRamp;

/// Publishers whose samples are kept in full (the rest: the summary figures only).
pub const SAMPLE_RAMPS: usize = 6;

/// Median, 90th percentile and extremes of a set of values.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct Spread {
    /// Smallest.
    pub min: f64,
    /// Median.
    pub median: f64,
    /// 90th percentile (nearest rank).
    pub p90: f64,
    /// Largest.
    pub max: f64,
}

impl Spread {
    /// Of `v`; `None` when empty.
    pub fn of(mut v: Vec<f64>) -> Option<Self> {
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Some(Self { min: v[0], median: rank(0.5), p90: rank(0.9), max: v[v.len() - 1] })
    }
}

/// Every adaptive publisher's ramp in one backend's run.
#[derive(Clone, Debug, Serialize)]
pub struct Ramps {
    /// Publishers with a camera (simulcast layers to ramp).
    pub cameras: usize,
    /// Of them, how many sent at least 1, 2 and 3 layers.
    pub reached: [usize; 3],
    /// Seconds from a publisher's start to its second layer, over those that got there.
    pub to_two_layers_s: Option<Spread>,
    /// Seconds from a publisher's start to its third layer, over those that got there.
    pub to_three_layers_s: Option<Spread>,
    /// The estimates at the end, kbit/s.
    pub final_estimate_kbps: Option<Spread>,
    /// The highest estimates, kbit/s.
    pub max_estimate_kbps: Option<Spread>,
    /// Layers turned off because the estimate fell, all publishers.
    pub layer_drops: u64,
    /// Transport-cc packets used and dropped, all publishers.
    pub feedback_used: u64,
    /// See `feedback_used`.
    pub feedback_dropped: u64,
    /// Probe clusters finished, all publishers.
    pub probes: u64,
    /// Every publisher (camera or not); samples only for the first [`SAMPLE_RAMPS`] cameras.
    pub publishers: Vec<PublisherRamp>,
}

impl Ramps {
    /// From the publishers' ramps (`None`: no adaptive publisher ran).
    pub fn of(mut all: Vec<PublisherRamp>) -> Option<Self> {
        if all.is_empty() {
            return None;
        }
        all.sort_by_key(|r| r.participant);
        let cams: Vec<&PublisherRamp> = all.iter().filter(|r| r.camera).collect();
        let reached = [0, 1, 2].map(|l| cams.iter().filter(|r| r.layers_at_s[l].is_some()).count());
        let to = |l: usize| Spread::of(cams.iter().filter_map(|r| r.layers_at_s[l]).collect());
        let sum = |f: fn(&PublisherRamp) -> u64| all.iter().map(f).sum::<u64>();
        let mut r = Self {
            cameras: cams.len(),
            reached,
            to_two_layers_s: to(1),
            to_three_layers_s: to(2),
            final_estimate_kbps: Spread::of(cams.iter().map(|r| r.estimate_kbps).collect()),
            max_estimate_kbps: Spread::of(cams.iter().map(|r| r.max_estimate_kbps).collect()),
            layer_drops: sum(|r| r.layer_drops),
            feedback_used: sum(|r| r.feedback_used),
            feedback_dropped: sum(|r| r.feedback_dropped),
            probes: sum(|r| r.probes),
            publishers: Vec::new(),
        };
        let mut kept = 0;
        for mut p in all {
            if p.camera && kept < SAMPLE_RAMPS {
                kept += 1;
            } else {
                p.samples = Vec::new();
            }
            r.publishers.push(p);
        }
        Some(r)
    }

    /// The sample ramps (those with samples).
    pub fn samples(&self) -> impl Iterator<Item = &PublisherRamp> {
        self.publishers.iter().filter(|p| !p.samples.is_empty())
    }

    /// The table's lines for one backend.
    pub fn table(&self, backend: &str) -> String {
        let mut s = String::new();
        let spread = |x: Option<Spread>, unit: &str| {
            x.map_or("-".to_string(), |x| format!("median {:.1}{unit}, p90 {:.1}{unit}, max {:.1}{unit}", x.median, x.p90, x.max))
        };
        let _ = writeln!(
            s,
            "  {backend:<6} {} camera publishers: {} reached 2 layers ({}), {} reached 3 ({}); estimate at the end {}; layers turned off {}; transport-cc used {} (dropped {}), probes {}",
            self.cameras,
            self.reached[1],
            spread(self.to_two_layers_s, " s"),
            self.reached[2],
            spread(self.to_three_layers_s, " s"),
            spread(self.final_estimate_kbps, " kbit/s"),
            self.layer_drops,
            self.feedback_used,
            self.feedback_dropped,
            self.probes,
        );
        for p in self.samples() {
            let at = |l: usize| p.layers_at_s[l].map_or("never".to_string(), |t| format!("{t:.1} s"));
            let trace: Vec<String> = p.samples.iter().step_by(4).take(12).map(|(t, k, l)| format!("{t:.0}s:{k:.0}k/{l}L")).collect();
            let _ = writeln!(
                s,
                "         publisher {:>4} (meeting {}): 2 layers at {}, 3 at {}, estimate {:.0} kbit/s (max {:.0}); every second: {}",
                p.participant,
                p.meeting,
                at(1),
                at(2),
                p.estimate_kbps,
                p.max_estimate_kbps,
                trace.join(" ")
            );
        }
        s
    }
}

/// The SVG panel of the sample ramps: estimate (kbit/s) against seconds since each publisher
/// started, one line per publisher, a dot where it turned a layer on; one panel for all backends
/// (dashed lines for the second). `top` is where the panel starts; returns its markup.
pub fn svg_panel(runs: &[(&str, &Ramps)], top: f64, width: f64, height: f64, layer_kbps: &[u32]) -> String {
    let (l, r, t, b) = (80.0, 80.0, 30.0, 50.0);
    let ramps: Vec<(usize, &PublisherRamp)> = runs.iter().enumerate().flat_map(|(k, (_, r))| r.samples().map(move |p| (k, p))).collect();
    let tmax = ramps.iter().flat_map(|(_, p)| p.samples.last()).map(|s| s.0).fold(1.0, f64::max).ceil();
    let ymax = ramps.iter().flat_map(|(_, p)| &p.samples).map(|s| s.1).fold(layer_kbps.iter().map(|&k| f64::from(k)).sum::<f64>(), f64::max) * 1.1;
    let px = |x: f64| l + x / tmax * (width - l - r);
    let py = |y: f64| top + height - b - y / ymax * (height - t - b);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle" font-size="14">Adaptive publishers: estimate and layers (sample ramps)</text>"#,
        width / 2.0,
        top + 18.0
    );
    for i in 0..=5 {
        let f = f64::from(i) / 5.0;
        let (x, y) = (px(f * tmax), py(f * ymax));
        let _ = writeln!(
            s,
            r##"<line x1="{x}" y1="{}" x2="{x}" y2="{}" stroke="#eee"/><text x="{x}" y="{}" text-anchor="middle">{:.0}</text>"##,
            top + t,
            top + height - b,
            top + height - b + 16.0,
            f * tmax
        );
        let _ = writeln!(
            s,
            r##"<line x1="{l}" y1="{y}" x2="{}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end">{:.0}</text>"##,
            width - r,
            l - 6.0,
            y + 4.0,
            f * ymax
        );
    }
    // What each layer needs: the sums of the targets (dotted).
    let mut sum = 0.0;
    for (i, &k) in layer_kbps.iter().enumerate() {
        sum += f64::from(k);
        let y = py(sum);
        let _ = writeln!(
            s,
            r##"<line x1="{l}" y1="{y}" x2="{}" y2="{y}" stroke="#999" stroke-dasharray="2 4"/><text x="{}" y="{}" fill="#777">{} layer{}</text>"##,
            width - r,
            width - r + 4.0,
            y + 4.0,
            i + 1,
            if i == 0 { "" } else { "s" }
        );
    }
    let _ = writeln!(s, r#"<text x="{}" y="{}" text-anchor="middle">seconds since the publisher started</text>"#, (l + width - r) / 2.0, top + height - 12.0);
    let _ = writeln!(s, r#"<text transform="translate(18 {}) rotate(-90)" text-anchor="middle">estimate, kbit/s</text>"#, top + (t + height - b) / 2.0);
    let colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];
    for (i, (k, p)) in ramps.iter().enumerate() {
        let c = colours[i % colours.len()];
        let dash = if *k == 0 { "" } else { r#" stroke-dasharray="6 3""# };
        let pts: Vec<String> = p.samples.iter().map(|(t, e, _)| format!("{:.1},{:.1}", px(*t), py(*e))).collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{c}" stroke-width="1.5"{dash} points="{}"><title>{} publisher {}</title></polyline>"#,
            pts.join(" "),
            runs[*k].0,
            p.participant
        );
        for w in p.samples.windows(2).filter(|w| w[1].2 != w[0].2) {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{c}"><title>{} layer(s) at {:.2} s</title></circle>"#,
                px(w[1].0),
                py(w[1].1),
                w[1].2,
                w[1].0
            );
        }
    }
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" fill="#555">lines: estimate of each sample publisher (dashed: second backend); dots: layers changed; dotted: the layers' summed targets</text>"##,
        l + 10.0,
        top + t + 12.0
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_and_summaries() {
        let s = Spread::of(vec![3.0, 1.0, 2.0, 10.0]).expect("values");
        assert_eq!((s.min, s.median, s.p90, s.max), (1.0, 2.0, 10.0, 10.0));
        assert!(Spread::of(vec![]).is_none());
        let ramp = |p: usize, three: Option<f64>| PublisherRamp {
            participant: p,
            camera: true,
            layers_at_s: [Some(0.0), Some(1.0), three],
            samples: vec![(0.0, 300.0, 1), (1.0, 900.0, 2)],
            ..PublisherRamp::default()
        };
        let r = Ramps::of((0..10).map(|p| ramp(p, (p % 2 == 0).then_some(3.0))).collect()).expect("ramps");
        assert_eq!((r.cameras, r.reached), (10, [10, 10, 5]));
        assert_eq!(r.to_three_layers_s.map(|s| s.max), Some(3.0));
        assert_eq!(r.samples().count(), SAMPLE_RAMPS);
        let svg = svg_panel(&[("mmsg", &r)], 0.0, 820.0, 300.0, &[200, 600, 1500]);
        assert_eq!(svg.matches("<polyline").count(), SAMPLE_RAMPS);
        assert!(r.table("mmsg").contains("5 reached 3"));
        assert!(Ramps::of(Vec::new()).is_none());
    }
}
