//! One audio track's level and voice activity, from the RFC 6464 client-to-mixer audio level
//! every packet carries (cleartext in SRTP unless cryptex is negotiated):
//!
//! ```text
//!    0 1 2 3 4 5 6 7
//!   +-+-+-+-+-+-+-+-+
//!   |V|    level    |   level: 0..=127 -dBov (0 loudest, 127 silence); V: the sender's VAD
//!   +-+-+-+-+-+-+-+-+
//! ```
//!
//! Per packet the track keeps a smoothed level (an exponential average over about
//! [`LEVEL_SMOOTHING`] packets) and counts whether the packet is speech. Per speaker tick
//! ([`super::SPEAKER_TICK`]) the share of speech packets feeds two windows of speech activity —
//! short (about 200 ms) and medium (about 1 s) — which the speaker selector compares. All of it is
//! a few fixed-size fields on the track: nothing is allocated per packet.

use crate::wire::rtp::ext::AudioLevel;

/// The smoothed level follows a new packet's level by 1/this (8 packets: 160 ms of 20-ms Opus).
pub const LEVEL_SMOOTHING: i32 = 8;
/// The quietest level (-dBov) that still counts as speech. Speech measured by browsers sits at
/// about 20-50 -dBov; a quiet room, fans and DTX comfort noise at 60 and below.
pub const SPEECH_MAX_DBOV: u8 = 55;
/// Weight of the newest tick in the short window (about two ticks: 200 ms).
pub const SHORT_ALPHA: f32 = 0.5;
/// Weight of the newest tick in the medium window (about ten ticks: 1 s).
pub const MEDIUM_ALPHA: f32 = 0.1;
/// A track whose short window is at least this is speaking now.
pub const SPEAKING: f32 = 0.5;

/// The level state of one audio track (runtime state on [`crate::table::Track`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrackLevel {
    /// The smoothed level in -dBov, ×16 (fixed point).
    smoothed_x16: i32,
    /// Whether the sender ever set the V bit: then it runs a VAD and V decides speech; a sender
    /// that never sets it is judged by level alone (RFC 6464 §3 lets it leave V at 0).
    uses_vad: bool,
    /// Packets with a level, and speech packets among them, since the last tick.
    packets: u16,
    speech: u16,
    /// Speech activity in the short and medium windows, 0..=1.
    short: f32,
    medium: f32,
    /// Whether any level was ever read (a track without one is not ranked).
    heard: bool,
}

impl Default for TrackLevel {
    fn default() -> Self {
        Self { smoothed_x16: 127 * 16, uses_vad: false, packets: 0, speech: 0, short: 0.0, medium: 0.0, heard: false }
    }
}

impl TrackLevel {
    /// Records one packet's level.
    #[inline]
    pub fn record(&mut self, l: AudioLevel) {
        let level = i32::from(l.level.min(127));
        self.smoothed_x16 += (level * 16 - self.smoothed_x16) / LEVEL_SMOOTHING;
        self.uses_vad |= l.voice;
        self.packets = self.packets.saturating_add(1);
        if self.is_speech(l) {
            self.speech = self.speech.saturating_add(1);
        }
        self.heard = true;
    }

    /// Whether a packet of this level counts as speech for this track: voiced (by the sender's
    /// VAD when it runs one) and at least as loud as [`SPEECH_MAX_DBOV`]. Top-N audio drops the
    /// packets of an unranked track for which this is false before decrypting them: they could
    /// not make it a speaker.
    #[inline]
    pub fn is_speech(&self, l: AudioLevel) -> bool {
        (l.voice || !self.uses_vad) && l.level <= SPEECH_MAX_DBOV
    }

    /// Closes one speaker tick: the share of speech packets since the last one enters both
    /// windows (a tick without packets, as under DTX, is silence).
    pub fn tick(&mut self) {
        let x = if self.packets == 0 { 0.0 } else { f32::from(self.speech) / f32::from(self.packets) };
        self.short += SHORT_ALPHA * (x - self.short);
        self.medium += MEDIUM_ALPHA * (x - self.medium);
        (self.packets, self.speech) = (0, 0);
    }

    /// The smoothed level, -dBov (0 loudest, 127 silence).
    pub fn level(&self) -> u8 {
        ((self.smoothed_x16 + 8) / 16).clamp(0, 127) as u8
    }

    /// Voice activity now: the short window says the track is speaking.
    pub fn speaking(&self) -> bool {
        self.short >= SPEAKING
    }

    /// Speech activity over about 200 ms, 0..=1.
    pub fn short(&self) -> f32 {
        self.short
    }

    /// Speech activity over about 1 s, 0..=1.
    pub fn medium(&self) -> f32 {
        self.medium
    }

    /// Whether the sender was ever seen setting the V bit (it runs a VAD).
    pub fn uses_vad(&self) -> bool {
        self.uses_vad
    }

    /// Whether a level was ever read.
    pub fn heard(&self) -> bool {
        self.heard
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lv(voice: bool, level: u8) -> AudioLevel {
        AudioLevel { voice, level }
    }

    #[test]
    fn level_is_smoothed_towards_what_packets_say() {
        let mut t = TrackLevel::default();
        assert_eq!(t.level(), 127, "silence before anything is heard");
        t.record(lv(true, 20));
        // One packet moves it by 1/8 of the way: 127 - 107/8 ≈ 113.6.
        assert_eq!(t.level(), 114);
        for _ in 0..60 {
            t.record(lv(true, 20));
        }
        assert_eq!(t.level(), 20, "converges on a steady level");
        t.record(lv(false, 127));
        assert!(t.level() > 20 && t.level() < 40, "one quiet packet does not make it silent: {}", t.level());
    }

    #[test]
    fn speech_activity_follows_the_share_of_speech_packets() {
        let mut t = TrackLevel::default();
        for _ in 0..5 {
            t.record(lv(true, 30));
        }
        t.tick();
        assert_eq!((t.short(), t.medium()), (0.5, 0.1));
        assert!(t.speaking());
        // V=0 from a sender that runs a VAD is not speech, however loud.
        for _ in 0..5 {
            t.record(lv(false, 10));
        }
        t.tick();
        assert_eq!(t.short(), 0.25);
        assert!(!t.speaking());
        // Quiet packets are not speech even with V set.
        for _ in 0..5 {
            t.record(lv(true, 90));
        }
        t.tick();
        assert_eq!(t.short(), 0.125);
    }

    #[test]
    fn a_sender_without_vad_is_judged_by_level() {
        let mut t = TrackLevel::default();
        for _ in 0..5 {
            t.record(lv(false, 30));
        }
        t.tick();
        assert_eq!(t.short(), 0.5);
        for _ in 0..5 {
            t.record(lv(false, 100));
        }
        t.tick();
        assert_eq!(t.short(), 0.25);
    }

    #[test]
    fn a_tick_without_packets_is_silence() {
        let mut t = TrackLevel::default();
        t.record(lv(true, 30));
        t.tick();
        t.tick();
        assert_eq!(t.short(), 0.5 * 0.5);
    }
}
