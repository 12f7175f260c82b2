//! Dominant-speaker identification with hysteresis, one selector per speaker group.
//!
//! A simplification of Volfin & Cohen ("Dominant speaker identification for multipoint
//! videoconferencing", 2013, as Jitsi Videobridge runs it): their three windows of speech
//! activity (immediate, medium, long) become two ([`super::TrackLevel`]'s short ≈ 200 ms and
//! medium ≈ 1 s windows of the share of speech packets), and their likelihood-ratio test becomes
//! a margin. Every [`super::SPEAKER_TICK`]:
//!
//! ```text
//!   challenger C (≠ dominant D) beats D in this tick when
//!     C.short  ≥ CHALLENGE                C speaks now (two ticks of speech: 0.75)
//!     C.medium ≥ MEDIUM_MIN               ... and is not a one-off (≈ 200 ms from silence)
//!     C.short  > D.short + MARGIN         ... and D is clearly quieter now
//!   the same C beats D for SWITCH_AFTER consecutive ticks ─▶ C becomes dominant
//! ```
//!
//! The short window reaches CHALLENGE on the second tick of speech and falls below it on the
//! first tick of silence, so a burst must hold at least SWITCH_AFTER + 1 ticks: a cough, a laugh
//! or a door (under 400 ms of sound) never takes the floor, whatever came before it; sustained
//! speech does 400 ms after it started if the dominant speaker is silent, or as soon as the
//! dominant speaker pauses. Talking over a dominant speaker who keeps talking does not take the
//! floor (it changes when D pauses, as a chair would give it). With no dominant speaker yet, D
//! counts as silent.
//!
//! The ranked list ([`ActiveSpeakers`]) is the dominant speaker first, then the other recent
//! speakers (medium window ≥ [`RECENT`], about the last two seconds) by medium activity, at most
//! [`MAX_LISTED`]. It is reported when its order or membership changes, not when levels move.
//!
//! A source that claims to speak without a pause for [`FLOOR_CAP_TICKS`] (30 s: people pause for
//! breath every few seconds, which empties the short window; a stuck voice-activity flag, a
//! noisy room or a hostile client does not) is *capped*: while capped it holds the floor only
//! until anyone else speaks (the margin over it is waived), and it ranks after every uncapped
//! recent speaker, so it cannot keep one of a subscriber's top-N slots from louder ones. One
//! tick under CHALLENGE lifts the cap.

use crate::ids::TrackId;

/// How much of the short window a challenger needs in a tick it beats the dominant speaker.
pub const CHALLENGE: f32 = 0.7;
/// How much of the medium window a challenger needs (≈ 200 ms of speech from silence).
pub const MEDIUM_MIN: f32 = 0.15;
/// How much more a challenger's short window must say than the dominant speaker's.
pub const MARGIN: f32 = 0.2;
/// Consecutive ticks a challenger must beat the dominant speaker.
pub const SWITCH_AFTER: u8 = 3;
/// A track counts as a recent speaker while its medium window is at least this (it decays from
/// full speech to this in about 2.2 s of silence).
pub const RECENT: f32 = 0.1;
/// Most speakers an [`ActiveSpeakers`] list carries.
pub const MAX_LISTED: usize = 8;
/// Ticks of uninterrupted speech (short window ≥ CHALLENGE) after which a source is capped.
pub const FLOOR_CAP_TICKS: u32 = 300;

/// One ranked speaker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Speaker {
    /// The audio track.
    pub track: TrackId,
    /// Its smoothed level, -dBov (0 loudest, 127 silence).
    pub level: u8,
}

/// A group's ranked speakers: the dominant speaker first, then recent speakers by activity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ActiveSpeakers {
    len: u8,
    /// Whether the first speaker is the dominant one (else nobody took the floor yet).
    has_dominant: bool,
    list: [Speaker; MAX_LISTED],
}

impl ActiveSpeakers {
    /// A ranking of `speakers` (the first [`MAX_LISTED`]); `dominant`: the first holds the floor.
    pub fn new(speakers: &[Speaker], dominant: bool) -> Self {
        let mut r = Self { has_dominant: dominant && !speakers.is_empty(), ..Self::default() };
        for s in speakers {
            r.push(*s);
        }
        r
    }

    /// The speakers, in order.
    pub fn as_slice(&self) -> &[Speaker] {
        &self.list[..usize::from(self.len).min(MAX_LISTED)]
    }

    /// The dominant speaker (the first listed, once somebody took the floor).
    pub fn dominant(&self) -> Option<TrackId> {
        self.as_slice().first().filter(|_| self.has_dominant).map(|s| s.track)
    }

    /// Whether `track` is among the first `n`.
    pub fn in_top(&self, track: TrackId, n: usize) -> bool {
        self.as_slice().iter().take(n).any(|s| s.track == track)
    }

    fn push(&mut self, s: Speaker) {
        if usize::from(self.len) < MAX_LISTED {
            self.list[usize::from(self.len)] = s;
            self.len += 1;
        }
    }

    fn same_order(&self, other: &Self) -> bool {
        self.len == other.len && self.has_dominant == other.has_dominant && self.as_slice().iter().zip(other.as_slice()).all(|(a, b)| a.track == b.track)
    }
}

/// One track's state at a tick, as the selector compares it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    /// The track.
    pub track: TrackId,
    /// Its short window.
    pub short: f32,
    /// Its medium window.
    pub medium: f32,
    /// Its smoothed level.
    pub level: u8,
}

/// The speaker selector of one group (sans-IO: fed a tick's candidates, answers the ranking).
#[derive(Clone, Debug, Default)]
pub struct SpeakerSelector {
    dominant: Option<TrackId>,
    /// The challenger that beat the dominant speaker in the last ticks, and how many in a row.
    challenger: Option<(TrackId, u8)>,
    reported: ActiveSpeakers,
    /// Per track of the group: ticks of uninterrupted speech (grows only when a track first
    /// shows up, which a table change brings, never in steady state).
    streaks: Vec<(TrackId, u32)>,
}

impl SpeakerSelector {
    /// The dominant speaker.
    pub fn dominant(&self) -> Option<TrackId> {
        self.dominant
    }

    /// The ranking last returned by [`SpeakerSelector::tick`].
    pub fn ranking(&self) -> &ActiveSpeakers {
        &self.reported
    }

    /// One tick over the group's tracks (every track of the group this core ranks, in any
    /// order). Returns the new ranking when its order or membership changed.
    pub fn tick(&mut self, candidates: &[Candidate]) -> Option<ActiveSpeakers> {
        self.streaks.retain(|(t, _)| candidates.iter().any(|c| c.track == *t));
        for c in candidates {
            let i = match self.streaks.iter().position(|(t, _)| *t == c.track) {
                Some(i) => i,
                None => {
                    self.streaks.push((c.track, 0));
                    self.streaks.len() - 1
                }
            };
            let s = &mut self.streaks[i].1;
            *s = if c.short >= CHALLENGE { s.saturating_add(1) } else { 0 };
        }
        let streaks = &self.streaks;
        let capped = |t: TrackId| streaks.iter().any(|&(s, n)| s == t && n >= FLOOR_CAP_TICKS);
        let find = |t: TrackId| candidates.iter().find(|c| c.track == t);
        if self.dominant.is_some_and(|d| find(d).is_none()) {
            // The dominant speaker's track went away.
            self.dominant = None;
        }
        let (d_short, d_id) = match self.dominant.and_then(find) {
            Some(d) => (d.short, Some(d.track)),
            None => (0.0, None),
        };
        let d_capped = d_id.is_some_and(capped);
        let best = candidates
            .iter()
            .filter(|c| {
                Some(c.track) != d_id && c.short >= CHALLENGE && c.medium >= MEDIUM_MIN && (c.short > d_short + MARGIN || (d_capped && !capped(c.track)))
            })
            .max_by(|a, b| a.short.total_cmp(&b.short).then(a.medium.total_cmp(&b.medium)).then(b.track.cmp(&a.track)));
        self.challenger = match (best, self.challenger) {
            (None, _) => None,
            (Some(c), Some((t, n))) if t == c.track => Some((t, n.saturating_add(1))),
            (Some(c), _) => Some((c.track, 1)),
        };
        if let Some((t, n)) = self.challenger
            && n >= SWITCH_AFTER
        {
            self.dominant = Some(t);
            self.challenger = None;
        }
        let mut ranked = ActiveSpeakers::default();
        if let Some(d) = self.dominant.and_then(find) {
            ranked.push(Speaker { track: d.track, level: d.level });
            ranked.has_dominant = true;
        }
        // The rest by medium activity, capped sources last, ties by track id (deterministic).
        // Selection by repeated maximum: no scratch, and the list is at most MAX_LISTED long.
        while usize::from(ranked.len) < MAX_LISTED {
            let next = candidates
                .iter()
                .filter(|c| c.medium >= RECENT && !ranked.as_slice().iter().any(|s| s.track == c.track))
                .max_by(|a, b| capped(b.track).cmp(&capped(a.track)).then(a.medium.total_cmp(&b.medium)).then(b.track.cmp(&a.track)));
            let Some(c) = next else { break };
            ranked.push(Speaker { track: c.track, level: c.level });
        }
        let changed = !ranked.same_order(&self.reported);
        self.reported = ranked;
        changed.then_some(ranked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: TrackId = TrackId(1);
    const B: TrackId = TrackId(2);

    /// A track's windows as [`super::super::TrackLevel`] computes them from a speech pattern.
    #[derive(Default)]
    struct Sim {
        short: f32,
        medium: f32,
    }

    impl Sim {
        fn tick(&mut self, x: f32, track: TrackId) -> Candidate {
            self.short += super::super::level::SHORT_ALPHA * (x - self.short);
            self.medium += super::super::level::MEDIUM_ALPHA * (x - self.medium);
            Candidate { track, short: self.short, medium: self.medium, level: if x > 0.0 { 30 } else { 127 } }
        }
    }

    /// Runs `ticks` of A and B speaking as `a(t)`, `b(t)` say; returns the dominant after each.
    fn run(
        sel: &mut SpeakerSelector,
        sims: &mut [Sim; 2],
        ticks: std::ops::Range<u32>,
        a: impl Fn(u32) -> f32,
        b: impl Fn(u32) -> f32,
    ) -> Vec<Option<TrackId>> {
        ticks
            .map(|t| {
                let cs = [sims[0].tick(a(t), A), sims[1].tick(b(t), B)];
                sel.tick(&cs);
                sel.dominant()
            })
            .collect()
    }

    #[test]
    fn a_cough_never_takes_the_floor_sustained_speech_does() {
        let mut sel = SpeakerSelector::default();
        let mut sims = [Sim::default(), Sim::default()];
        // A speaks for 3 s and takes the floor after 4 ticks.
        let d = run(&mut sel, &mut sims, 0..30, |_| 1.0, |_| 0.0);
        assert_eq!(d[2], None);
        assert_eq!(d[3], Some(A), "{d:?}");
        // A pauses; B coughs for 300 ms: A keeps the floor.
        let d = run(&mut sel, &mut sims, 30..50, |_| 0.0, |t| if t < 33 { 1.0 } else { 0.0 });
        assert!(d.iter().all(|&x| x == Some(A)), "{d:?}");
        // B talks over A while A keeps talking: A keeps the floor.
        let d = run(&mut sel, &mut sims, 50..80, |_| 1.0, |_| 1.0);
        assert!(d.iter().all(|&x| x == Some(A)), "{d:?}");
        // A stops, B goes on: B within 500 ms.
        let d = run(&mut sel, &mut sims, 80..100, |_| 0.0, |_| 1.0);
        let at = d.iter().position(|&x| x == Some(B)).expect("B takes the floor");
        assert!(at < 5, "after {} ticks: {d:?}", at + 1);
        assert!(d[at..].iter().all(|&x| x == Some(B)));
    }

    #[test]
    fn ranking_is_dominant_first_then_recent_speakers_and_reported_on_change_only() {
        let mut sel = SpeakerSelector::default();
        let mut sims = [Sim::default(), Sim::default()];
        let mut reports = Vec::new();
        for t in 0..50 {
            let cs = [sims[0].tick(if t < 20 { 1.0 } else { 0.0 }, A), sims[1].tick(if t >= 10 { 1.0 } else { 0.0 }, B)];
            if let Some(r) = sel.tick(&cs) {
                assert_eq!(r.dominant().is_some(), t >= 3, "{r:?}");
                reports.push((t, r.as_slice().iter().map(|s| s.track).collect::<Vec<_>>()));
            }
        }
        // A recent (t0), A dominant (t3), B recent behind A (t10), B dominant ahead of A once A
        // stopped (t22), then A no longer recent (t40).
        let at: Vec<_> = reports.iter().map(|(t, _)| *t).collect();
        let orders: Vec<_> = reports.iter().map(|(_, o)| o.clone()).collect();
        assert_eq!(orders, vec![vec![A], vec![A], vec![A, B], vec![B, A], vec![B]], "{reports:?}");
        assert_eq!(at, vec![0, 3, 10, 22, 40]);
        assert_eq!(sel.ranking().as_slice()[0].level, 30);
    }

    /// A source that never pauses (a stuck voice-activity flag, a hostile client) is capped
    /// after 30 s: then B takes the floor although A keeps "talking", and A ranks after B; one
    /// tick of silence lifts A's cap.
    #[test]
    fn a_source_that_never_pauses_is_capped_after_30_s() {
        let mut sel = SpeakerSelector::default();
        let mut sims = [Sim::default(), Sim::default()];
        // A "speaks" without a pause from t0; B speaks at 20 s for 2 s: A was not capped yet.
        let d = run(&mut sel, &mut sims, 0..220, |_| 1.0, |t| if t >= 200 { 1.0 } else { 0.0 });
        assert!(d[3..].iter().all(|&x| x == Some(A)), "before the cap the floor stays A's");
        run(&mut sel, &mut sims, 220..320, |_| 1.0, |_| 0.0);
        // At 32 s (capped) B speaks again: it takes the floor within 500 ms, and A ranks after it.
        let d = run(&mut sel, &mut sims, 320..340, |_| 1.0, |_| 1.0);
        let at = d.iter().position(|&x| x == Some(B)).expect("B takes the floor from the capped source");
        assert!(at < 5, "{d:?}");
        let order: Vec<TrackId> = sel.ranking().as_slice().iter().map(|s| s.track).collect();
        assert_eq!(order, [B, A]);
        // One tick of silence lifts A's cap: talking over B no longer takes the floor back...
        run(&mut sel, &mut sims, 340..341, |_| 0.0, |_| 1.0);
        let d = run(&mut sel, &mut sims, 341..360, |_| 1.0, |_| 1.0);
        assert!(d.iter().all(|&x| x == Some(B)), "{d:?}");
    }

    #[test]
    fn the_dominant_track_going_away_clears_the_floor() {
        let mut sel = SpeakerSelector::default();
        let mut s = Sim::default();
        for _ in 0..10 {
            sel.tick(&[s.tick(1.0, A)]);
        }
        assert_eq!(sel.dominant(), Some(A));
        assert_eq!(sel.tick(&[]), Some(ActiveSpeakers::default()));
        assert_eq!(sel.dominant(), None);
    }
}
