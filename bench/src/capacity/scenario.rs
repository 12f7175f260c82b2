//! Capacity scenarios: what load the bench offers, read from TOML and validated as a whole, so a
//! bad scenario is refused with the offending field named.
//!
//! The built-in default ([`Scenario::default`], also `bench/scenarios/default.toml`) is the design
//! mix. Its meeting sizes are a discrete distribution chosen to have the design's statistics
//! (checked by a unit test):
//!
//! ```text
//!   size     2   3   4   5   10  20  40  70  100  200
//!   weight % 20  15  10  10  8   8   9   9   6    5
//!   cumulative 20 35 45  55  63  71  80  89  95   100
//!   median 5 (45% < 5, 55% <= 5) · mean 30.05 · p95 100 (89% < 100, 95% <= 100)
//! ```
//!
//! Meetings are drawn from the mix by smooth weighted round robin (deterministic, and every
//! prefix of the sequence follows the weights as closely as whole meetings allow), so "the first
//! N meetings" is a reproducible load that grows smoothly in a ramp.

use std::path::Path;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use sluice_core::srtp::Profile;

/// One capacity scenario (the whole TOML file).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Scenario {
    /// A name for reports.
    pub name: String,
    /// SRTP profile of every leg: `gcm` (AEAD_AES_128_GCM), `gcm256`, `cm80`
    /// (AES_CM_128_HMAC_SHA1_80) or `cm32`.
    pub profile: String,
    /// How publishers choose what they send: `adaptive` (as browsers do: transport-cc from
    /// Sluice, start at 300 kbit/s, add simulcast layers as the estimate allows) or `fixed`
    /// (every layer at its rate from the first second, the bench's behaviour before the feedback
    /// loop, to reproduce older figures).
    pub publishers: PublisherMode,
    /// Meeting sizes.
    pub meetings: Meetings,
    /// Audio.
    pub audio: Audio,
    /// Camera video (simulcast).
    pub video: Video,
    /// Screen share.
    pub screen: Screen,
    /// Fixed-load mode.
    pub fixed: Fixed,
    /// Ramp mode.
    pub ramp: Ramp,
    /// A webinar instead of meetings: one presenter to many receive-only viewers (see
    /// [`Webinar`]). When set, `[meetings]`, `audio.speakers`, the camera view counts and
    /// `screen.share_fraction` do not apply, and the steps count viewers, not meetings.
    pub webinar: Option<Webinar>,
}

/// A webinar: one presenter sending audio (`[audio]`), a three-layer simulcast camera
/// (`[video]`) and a screen share (`[screen]`: `kbps` and `fps`; the presenter always shares), to
/// receive-only viewers. Each viewer subscribes to the audio, the screen share and one camera
/// layer; the viewers' layers follow `camera_mix`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Webinar {
    /// Viewers in fixed mode.
    pub viewers: u32,
    /// Viewers of the ramp's first step (each next step has `ramp.factor` times as many).
    pub start_viewers: u32,
    /// The ramp's last step (the ramp ends there, or at the first step not sustained).
    pub max_viewers: u32,
    /// Fractions of the viewers on the camera's low, mid and high layer (three, adding up to 1).
    pub camera_mix: Vec<f64>,
    /// Viewers programmed per `Routes.Apply` (their legs and subscriptions in one change set).
    pub apply_batch: u32,
    /// Fixed mode: halfway through the step, promote a viewer to speaker (its leg publishes an
    /// audio track; the presenter and every other viewer subscribe to it), let it speak for
    /// `promote_s`, then demote it (the track and those subscriptions removed).
    pub promote: bool,
    /// Seconds the promoted viewer speaks.
    pub promote_s: f64,
}

impl Default for Webinar {
    fn default() -> Self {
        Self { viewers: 1000, start_viewers: 50, max_viewers: 10_000, camera_mix: vec![0.2, 0.3, 0.5], apply_batch: 100, promote: false, promote_s: 3.0 }
    }
}

impl Webinar {
    /// The camera layer (0 low, 1 mid, 2 high) of each of the first `n` viewers, by smooth
    /// weighted round robin over `camera_mix`: every prefix follows the fractions as closely as
    /// whole viewers allow, so each step of a ramp has the mix.
    pub fn camera_layers(&self, n: usize) -> Vec<u8> {
        let weights: Vec<i64> = self.camera_mix.iter().map(|f| (f * 1e6).round() as i64).collect();
        let total: i64 = weights.iter().sum();
        let mut current = vec![0i64; weights.len()];
        (0..n)
            .map(|_| {
                for (c, w) in current.iter_mut().zip(&weights) {
                    *c += w;
                }
                let best = (0..current.len()).max_by_key(|&i| (current[i], std::cmp::Reverse(i))).unwrap_or(0);
                current[best] -= total;
                best as u8
            })
            .collect()
    }
}

/// Most viewers a webinar may have (the dataplane needs a leg port per viewer).
pub const MAX_VIEWERS: u32 = 30_000;

/// How publishers choose what they send (see [`super::publisher`]).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PublisherMode {
    /// Browser-like: transport-cc feedback drives a send-side estimate that enables layers.
    #[default]
    Adaptive,
    /// Every stream at its scenario rate from the start, no feedback.
    Fixed,
}

/// The meeting-size mix.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Meetings {
    /// `[participants, weight]` pairs; weights are relative.
    pub sizes: Vec<(u32, u32)>,
}

/// Audio: Opus-sized packets from the active speakers.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Audio {
    /// Packet interval, ms (Opus: 20 → 50 packets/s).
    pub packet_ms: u32,
    /// RTP payload bytes per packet (Opus at ~40 kbit/s is ~100).
    pub payload_bytes: u32,
    /// Participants per meeting sending audio at once (the rest are muted and send nothing);
    /// everyone else in the meeting receives each of them.
    pub speakers: u32,
}

/// Camera video: three simulcast layers.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Video {
    /// Frames per second.
    pub fps: u32,
    /// Bitrate of each layer, kbit/s, lowest first (exactly three).
    pub layers_kbps: Vec<u32>,
    /// Largest RTP payload per packet; a frame is split into packets of this size (the last
    /// shorter) and sent as one burst.
    pub packet_bytes: u32,
    /// A keyframe is this many times a normal frame (sent at the start and on each PLI/FIR).
    pub keyframe_factor: u32,
    /// Participants per meeting with their camera on (the first ones).
    pub max_publishers: u32,
    /// Videos each subscriber views at the top layer.
    pub views_high: u32,
    /// Videos each subscriber views at the middle layer.
    pub views_mid: u32,
    /// Videos each subscriber views at the lowest layer (thumbnails).
    pub views_low: u32,
}

/// Screen share: one sharer in some meetings, watched by everyone else.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Screen {
    /// Fraction of meetings (0..=1) with a screen share.
    pub share_fraction: f64,
    /// Bitrate, kbit/s.
    pub kbps: u32,
    /// Frames per second (low: a shared screen sends big, rare frames).
    pub fps: u32,
}

/// Fixed-load mode.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Fixed {
    /// Meetings carried.
    pub meetings: u32,
    /// Seconds measured.
    pub duration_s: f64,
}

/// Ramp mode: meetings grow geometrically, one step at a time, until a step fails.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Ramp {
    /// Meetings in the first step.
    pub start_meetings: u32,
    /// Each step carries this many times the meetings of the previous one (at least one more).
    pub factor: f64,
    /// Seconds per step (the first `settle_s` of each are not counted).
    pub step_s: f64,
    /// Seconds at the start of each step that are not measured (new meetings start, the
    /// previous step's last packets land).
    pub settle_s: f64,
    /// Most steps.
    pub max_steps: u32,
    /// A step is sustained when its loss is below this fraction...
    pub max_loss: f64,
    /// ... and its p99 one-way added latency is below this many milliseconds.
    pub p99_target_ms: f64,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            name: "default (design mix)".into(),
            profile: "gcm".into(),
            publishers: PublisherMode::default(),
            meetings: Meetings::default(),
            audio: Audio::default(),
            video: Video::default(),
            screen: Screen::default(),
            fixed: Fixed::default(),
            ramp: Ramp::default(),
            webinar: None,
        }
    }
}

impl Default for Meetings {
    fn default() -> Self {
        Self { sizes: vec![(2, 20), (3, 15), (4, 10), (5, 10), (10, 8), (20, 8), (40, 9), (70, 9), (100, 6), (200, 5)] }
    }
}

impl Default for Audio {
    fn default() -> Self {
        Self { packet_ms: 20, payload_bytes: 100, speakers: 3 }
    }
}

impl Default for Video {
    fn default() -> Self {
        Self {
            fps: 30,
            layers_kbps: vec![200, 600, 1500],
            packet_bytes: 1200,
            keyframe_factor: 4,
            max_publishers: 12,
            views_high: 1,
            views_mid: 2,
            views_low: 3,
        }
    }
}

impl Default for Screen {
    fn default() -> Self {
        Self { share_fraction: 0.25, kbps: 1000, fps: 5 }
    }
}

impl Default for Fixed {
    fn default() -> Self {
        Self { meetings: 8, duration_s: 10.0 }
    }
}

impl Default for Ramp {
    fn default() -> Self {
        Self { start_meetings: 2, factor: 1.5, step_s: 3.0, settle_s: 0.5, max_steps: 10, max_loss: 0.001, p99_target_ms: 20.0 }
    }
}

/// Statistics of a meeting-size mix.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct MixStats {
    /// Median participants.
    pub median: u32,
    /// Mean participants.
    pub mean: f64,
    /// 95th percentile.
    pub p95: u32,
}

fn check(ok: bool, field: &str, why: impl FnOnce() -> String) -> anyhow::Result<()> {
    if !ok {
        bail!("scenario field `{field}`: {}", why());
    }
    Ok(())
}

impl Scenario {
    /// Reads and validates a scenario file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading scenario {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("scenario {}", path.display()))
    }

    /// Parses and validates scenario TOML (missing fields take the default's values).
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let s: Self = toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))?;
        s.validate()?;
        Ok(s)
    }

    /// The SRTP profile named by `profile`.
    pub fn srtp_profile(&self) -> anyhow::Result<Profile> {
        Ok(match self.profile.to_ascii_lowercase().as_str() {
            "gcm" | "aead_aes_128_gcm" => Profile::AeadAes128Gcm,
            "gcm256" | "aead_aes_256_gcm" => Profile::AeadAes256Gcm,
            "cm80" | "cm-sha1-80" | "aes_cm_128_hmac_sha1_80" => Profile::AesCm128HmacSha1_80,
            "cm32" | "cm-sha1-32" | "aes_cm_128_hmac_sha1_32" => Profile::AesCm128HmacSha1_32,
            other => bail!("scenario field `profile`: {other:?} is not one of gcm, gcm256, cm80, cm32"),
        })
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.srtp_profile()?;
        let m = &self.meetings;
        check(!m.sizes.is_empty(), "meetings.sizes", || "is empty".into())?;
        for (i, &(size, w)) in m.sizes.iter().enumerate() {
            check((2..=500).contains(&size), &format!("meetings.sizes[{i}]"), || format!("size {size} is not 2..=500"))?;
            check(w > 0, &format!("meetings.sizes[{i}]"), || "weight must be at least 1".into())?;
        }
        let a = &self.audio;
        check((5..=120).contains(&a.packet_ms), "audio.packet_ms", || format!("{} is not 5..=120", a.packet_ms))?;
        check((16..=1000).contains(&a.payload_bytes), "audio.payload_bytes", || format!("{} is not 16..=1000", a.payload_bytes))?;
        let v = &self.video;
        check((1..=120).contains(&v.fps), "video.fps", || format!("{} is not 1..=120", v.fps))?;
        check(v.layers_kbps.len() == 3, "video.layers_kbps", || format!("needs exactly 3 layers (low, mid, high), got {}", v.layers_kbps.len()))?;
        for (i, &k) in v.layers_kbps.iter().enumerate() {
            check((10..=20_000).contains(&k), &format!("video.layers_kbps[{i}]"), || format!("{k} is not 10..=20000"))?;
        }
        check((200..=1400).contains(&v.packet_bytes), "video.packet_bytes", || format!("{} is not 200..=1400", v.packet_bytes))?;
        check((1..=20).contains(&v.keyframe_factor), "video.keyframe_factor", || format!("{} is not 1..=20", v.keyframe_factor))?;
        check(v.max_publishers <= 500, "video.max_publishers", || format!("{} is over 500", v.max_publishers))?;
        check(v.views_high + v.views_mid + v.views_low <= 100, "video.views_low", || "views_high + views_mid + views_low is over 100".into())?;
        let s = &self.screen;
        check((0.0..=1.0).contains(&s.share_fraction), "screen.share_fraction", || format!("{} is not 0..=1", s.share_fraction))?;
        check((10..=20_000).contains(&s.kbps), "screen.kbps", || format!("{} is not 10..=20000", s.kbps))?;
        check((1..=60).contains(&s.fps), "screen.fps", || format!("{} is not 1..=60", s.fps))?;
        let f = &self.fixed;
        check((1..=10_000).contains(&f.meetings), "fixed.meetings", || format!("{} is not 1..=10000", f.meetings))?;
        check(f.duration_s > 0.0 && f.duration_s <= 3600.0, "fixed.duration_s", || format!("{} is not in (0, 3600]", f.duration_s))?;
        let r = &self.ramp;
        check((1..=10_000).contains(&r.start_meetings), "ramp.start_meetings", || format!("{} is not 1..=10000", r.start_meetings))?;
        check(r.factor > 1.0 && r.factor <= 10.0, "ramp.factor", || format!("{} is not in (1, 10]", r.factor))?;
        check(r.step_s > 0.0 && r.step_s <= 600.0, "ramp.step_s", || format!("{} is not in (0, 600]", r.step_s))?;
        check(r.settle_s >= 0.0 && r.settle_s < r.step_s, "ramp.settle_s", || format!("{} is not in [0, step_s)", r.settle_s))?;
        check((1..=100).contains(&r.max_steps), "ramp.max_steps", || format!("{} is not 1..=100", r.max_steps))?;
        check(r.max_loss > 0.0 && r.max_loss < 1.0, "ramp.max_loss", || format!("{} is not in (0, 1)", r.max_loss))?;
        check(r.p99_target_ms > 0.0, "ramp.p99_target_ms", || format!("{} is not positive", r.p99_target_ms))?;
        if let Some(w) = &self.webinar {
            self.validate_webinar(w)?;
        }
        Ok(())
    }

    fn validate_webinar(&self, w: &Webinar) -> anyhow::Result<()> {
        let range = 1..=MAX_VIEWERS;
        check(range.contains(&w.viewers), "webinar.viewers", || format!("{} is not 1..={MAX_VIEWERS}", w.viewers))?;
        check(range.contains(&w.max_viewers), "webinar.max_viewers", || format!("{} is not 1..={MAX_VIEWERS}", w.max_viewers))?;
        check((1..=w.max_viewers).contains(&w.start_viewers), "webinar.start_viewers", || {
            format!("{} is not 1..=max_viewers ({})", w.start_viewers, w.max_viewers)
        })?;
        check(w.camera_mix.len() == 3, "webinar.camera_mix", || format!("needs exactly 3 fractions (low, mid, high), got {}", w.camera_mix.len()))?;
        for (i, &f) in w.camera_mix.iter().enumerate() {
            check((0.0..=1.0).contains(&f), &format!("webinar.camera_mix[{i}]"), || format!("{f} is not 0..=1"))?;
        }
        let sum: f64 = w.camera_mix.iter().sum();
        check((sum - 1.0).abs() < 1e-6, "webinar.camera_mix", || format!("the fractions add up to {sum}, not 1"))?;
        check((1..=1000).contains(&w.apply_batch), "webinar.apply_batch", || format!("{} is not 1..=1000", w.apply_batch))?;
        check(w.promote_s > 0.0 && w.promote_s <= 600.0, "webinar.promote_s", || format!("{} is not in (0, 600]", w.promote_s))?;
        if w.promote {
            check(w.viewers >= 2, "webinar.promote", || format!("needs at least 2 viewers (one to promote, one to hear it), got {}", w.viewers))?;
            // Promoted halfway through the step, demoted after promote_s, with a second for the
            // demotion and the last copies before the step ends.
            let room = self.fixed.duration_s / 2.0 - 1.0;
            check(w.promote_s <= room, "webinar.promote_s", || {
                format!("{} does not fit the second half of the {} s step (at most fixed.duration_s / 2 - 1 = {room})", w.promote_s, self.fixed.duration_s)
            })?;
        }
        Ok(())
    }

    /// Median, mean and p95 of the meeting-size mix.
    pub fn mix_stats(&self) -> MixStats {
        let mut sizes = self.meetings.sizes.clone();
        sizes.sort_unstable();
        let total: f64 = sizes.iter().map(|&(_, w)| f64::from(w)).sum();
        let quantile = |q: f64| {
            let mut cum = 0.0;
            for &(s, w) in &sizes {
                cum += f64::from(w);
                if cum >= q * total - 1e-9 {
                    return s;
                }
            }
            sizes.last().map_or(0, |&(s, _)| s)
        };
        let mean = sizes.iter().map(|&(s, w)| f64::from(s) * f64::from(w)).sum::<f64>() / total;
        MixStats { median: quantile(0.5), mean, p95: quantile(0.95) }
    }

    /// The sizes of the first `n` meetings, by smooth weighted round robin over the mix.
    pub fn meeting_sizes(&self, n: usize) -> Vec<u32> {
        let weights: Vec<i64> = self.meetings.sizes.iter().map(|&(_, w)| i64::from(w)).collect();
        let total: i64 = weights.iter().sum();
        let mut current = vec![0i64; weights.len()];
        (0..n)
            .map(|_| {
                for (c, w) in current.iter_mut().zip(&weights) {
                    *c += w;
                }
                let best = (0..current.len()).max_by_key(|&i| (current[i], std::cmp::Reverse(i))).unwrap_or(0);
                current[best] -= total;
                self.meetings.sizes[best].0
            })
            .collect()
    }

    /// Whether meeting `m` (0-based) has a screen share: spread evenly at `share_fraction`.
    pub fn has_screen_share(&self, m: usize) -> bool {
        let f = self.screen.share_fraction;
        ((m + 1) as f64 * f).floor() > (m as f64 * f).floor()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_mix_has_the_design_statistics() {
        let s = Scenario::default();
        let st = s.mix_stats();
        assert_eq!(st.median, 5);
        assert_eq!(st.p95, 100);
        assert!((st.mean - 30.0).abs() < 1.0, "mean {}", st.mean);
        // Drawing 1000 meetings reproduces the mix: mean within 1 of the weights' mean.
        let sizes = s.meeting_sizes(1000);
        let mean = sizes.iter().map(|&x| f64::from(x)).sum::<f64>() / 1000.0;
        assert!((mean - st.mean).abs() < 1.0, "drawn mean {mean}");
        let mut sorted = sizes.clone();
        sorted.sort_unstable();
        // Nearest rank: the p-quantile of n values is the ceil(p*n)-th smallest.
        assert_eq!(sorted[499], 5);
        assert_eq!(sorted[949], 100);
    }

    #[test]
    fn the_shipped_default_file_is_the_built_in_default() {
        let text = include_str!("../../scenarios/default.toml");
        assert_eq!(Scenario::parse(text).expect("parses"), Scenario::default());
    }

    #[test]
    fn every_shipped_scenario_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).expect("scenarios dir") {
            let p = e.expect("entry").path();
            if p.extension().is_some_and(|x| x == "toml") {
                Scenario::load(&p).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
                n += 1;
            }
        }
        assert!(n >= 2, "only {n} scenarios in {}", dir.display());
    }

    #[test]
    fn bad_scenarios_are_refused_with_the_field_named() {
        let cases = [
            ("profile = \"rot13\"", "`profile`"),
            ("[video]\nfps = 0", "`video.fps`"),
            ("[video]\nlayers_kbps = [100, 200]", "`video.layers_kbps`"),
            ("[meetings]\nsizes = [[1, 5]]", "`meetings.sizes[0]`"),
            ("[meetings]\nsizes = [[5, 1], [10, 0]]", "`meetings.sizes[1]`"),
            ("[ramp]\nfactor = 1.0", "`ramp.factor`"),
            ("[ramp]\nmax_loss = 0", "`ramp.max_loss`"),
            ("[screen]\nshare_fraction = 2", "`screen.share_fraction`"),
            ("[audio]\npacket_ms = 0", "`audio.packet_ms`"),
            ("[fixed]\nmeetings = 0", "`fixed.meetings`"),
            ("publishers = \"sometimes\"", "publishers"),
        ];
        for (text, field) in cases {
            let e = format!("{:#}", Scenario::parse(text).expect_err(text));
            assert!(e.contains(field), "{text:?}: {e}");
        }
        // Unknown and mistyped fields: the TOML layer names them.
        let e = format!("{:#}", Scenario::parse("[video]\nfsp = 30").expect_err("unknown"));
        assert!(e.contains("fsp"), "{e}");
        let e = format!("{:#}", Scenario::parse("[audio]\nspeakers = \"three\"").expect_err("type"));
        assert!(e.contains("speakers"), "{e}");
    }

    #[test]
    fn meetings_follow_the_weights_and_screen_shares_spread_evenly() {
        let s = Scenario::default();
        let sizes = s.meeting_sizes(100);
        for &(size, w) in &s.meetings.sizes {
            assert_eq!(sizes.iter().filter(|&&x| x == size).count(), w as usize, "size {size}");
        }
        let shares = (0..100).filter(|&m| s.has_screen_share(m)).count();
        assert_eq!(shares, 25);
    }

    #[test]
    fn a_webinar_is_refused_with_its_field_named() {
        let cases = [
            ("[webinar]\nviewers = 0", "`webinar.viewers`"),
            ("[webinar]\nmax_viewers = 40000", "`webinar.max_viewers`"),
            ("[webinar]\nstart_viewers = 20\nmax_viewers = 10", "`webinar.start_viewers`"),
            ("[webinar]\ncamera_mix = [0.5, 0.5]", "`webinar.camera_mix`"),
            ("[webinar]\ncamera_mix = [0.2, 0.3, 0.4]", "`webinar.camera_mix`"),
            ("[webinar]\ncamera_mix = [1.5, -0.25, -0.25]", "`webinar.camera_mix[0]`"),
            ("[webinar]\napply_batch = 0", "`webinar.apply_batch`"),
            ("[webinar]\npromote = true\nviewers = 1", "`webinar.promote`"),
            // Halfway through a 10 s step leaves 4 s to speak and be demoted in.
            ("[webinar]\npromote = true\npromote_s = 4.5", "`webinar.promote_s`"),
            ("[webinar]\npromote_s = 0", "`webinar.promote_s`"),
        ];
        for (text, field) in cases {
            let e = format!("{:#}", Scenario::parse(text).expect_err(text));
            assert!(e.contains(field), "{text:?}: {e}");
        }
        let e = format!("{:#}", Scenario::parse("[webinar]\nviewrs = 5").expect_err("unknown"));
        assert!(e.contains("viewrs"), "{e}");
        // The same promotion fits a longer step; an empty table is the default webinar.
        assert!(Scenario::parse("[webinar]\npromote = true\npromote_s = 4.5\n[fixed]\nduration_s = 12").is_ok());
        assert_eq!(Scenario::parse("[webinar]").expect("parses").webinar, Some(Webinar::default()));
        assert_eq!(Scenario::default().webinar, None);
    }

    #[test]
    fn every_prefix_of_the_viewers_follows_the_camera_mix() {
        let w = Webinar::default();
        let layers = w.camera_layers(1000);
        let count = |n: usize, l: u8| layers[..n].iter().filter(|&&x| x == l).count();
        assert_eq!([count(1000, 0), count(1000, 1), count(1000, 2)], [200, 300, 500]);
        assert_eq!([count(10, 0), count(10, 1), count(10, 2)], [2, 3, 5]);
        for n in 1..=1000 {
            for (l, f) in [0.2, 0.3, 0.5].into_iter().enumerate() {
                let off = count(n, l as u8) as f64 - f * n as f64;
                assert!(off.abs() < 1.0, "{n} viewers, layer {l}: {off}");
            }
        }
        let all_high = Webinar { camera_mix: vec![0.0, 0.0, 1.0], ..w };
        assert!(all_high.camera_layers(50).iter().all(|&l| l == 2));
    }

    #[test]
    fn publishers_are_adaptive_unless_the_scenario_says_fixed() {
        assert_eq!(Scenario::default().publishers, PublisherMode::Adaptive);
        assert_eq!(Scenario::parse("publishers = \"fixed\"").expect("parses").publishers, PublisherMode::Fixed);
        assert_eq!(Scenario::parse("publishers = \"adaptive\"").expect("parses").publishers, PublisherMode::Adaptive);
    }
}
