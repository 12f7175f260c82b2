//! Audio at meeting scale: levels, active speaker, top-N audio in fixed slots.
//!
//! ```text
//!   ingress (audio track with audio_level_ext) ── RFC 6464 level ──▶ Track::level (level.rs)
//!   Core::handle_timeout, every SPEAKER_TICK:
//!     each ranked track's level closes a tick (short/medium speech windows)
//!     tracks grouped by their spec's speaker_group ──▶ SpeakerSelector per group (speaker.rs)
//!     ranking changed ──▶ Event::ActiveSpeakers { group, speakers }
//!   fanout: a ranked track's packet, after its per-track subscriptions, to every leg with
//!     audio slots for its group ──▶ SlotSet::choose with the group's ranking (slot.rs)
//!     ──▶ egress copy on the slot's out-SSRC, the speaker's SSRC as CSRC
//! ```
//!
//! **Where sessions live.** The core knows tracks and legs, not sessions. The control plane,
//! which does, stamps every audio track of a session with the same [`SpeakerGroup`] in its
//! [`crate::table::TrackSpec`] (a hash of the session name, so it needs no stored counter and is
//! the same after a restart), and the core ranks per group. The ranking is computed here, not in
//! the control plane from per-track level events, because top-N forwarding decides per packet
//! from it (it must be where the packets are, without a round trip) and because per-track levels
//! at 10 ticks/s from 100 participants would be a thousand events a second on the control link;
//! the control plane gets one event per change of the ranking.
//!
//! **Silence is dropped before decryption.** A packet of a ranked audio track that nobody
//! subscribes to per track (only audio slots take it) is read before decryption: if its track is
//! not in its group's ranking and its cleartext level is not speech ([`TrackLevel::is_speech`]),
//! it could neither be forwarded nor make its track a speaker, so it is dropped
//! (`DropReason::SilentAudio`) unless it is the [`SILENT_KEEPALIVE`]-th of a silent run. The
//! hole is intentional: the packet still counts in the stream's receive statistics and its
//! transport-wide sequence number is recorded as arrived, so receiver reports and transport-cc
//! tell the publisher nothing was lost; nothing NACKs it (slots are continuous on their own).
//! Its level is not recorded (unauthenticated, and quiet by definition: a tick without packets
//! is silence). A packet without a readable level is decrypted as before.
//!
//! **Across workers.** A track's levels are read by the worker that owns its publisher. Each
//! core ranks its own tracks and, every tick, hands the other cores its candidates of each group
//! (`HandoffKind::Speakers`, the most active [`MAX_SHARED`]); each ranks its own with the others'
//! fresh ones ([`REMOTE_FRESH`]), so every worker ranks the whole group (within a tick of each
//! other). Only the worker that owns a subscriber leg feeds its slots (one SRTP sender per
//! out-SSRC): a ranked speaker's packet, and its sender reports, are handed over once per packet
//! to each other core that owns a slot leg of the group (`HandoffKind::SlotAudio`/`SlotSr`,
//! through the workers' bounded queues, up to one worker turn of 5 ms later).
//!
//! Nothing here allocates per packet: a track's level state is a few fixed fields; the tick
//! gathers candidates into a scratch vector that keeps its capacity.

pub mod level;
pub mod slot;
pub mod speaker;

use std::collections::VecDeque;

pub use level::TrackLevel;
pub use speaker::{ActiveSpeakers, Candidate, Speaker, SpeakerSelector};

use crate::forward::Event;
use crate::ids::SpeakerGroup;
use crate::table::{Map, Track};
use crate::time::Instant;

/// How often speech activity is closed and speakers ranked.
pub const SPEAKER_TICK: core::time::Duration = core::time::Duration::from_millis(100);

/// Top-N audio drops the silence of unranked tracks before decryption, but decrypts every this
/// many-th packet of a silent run anyway (0.64 s of 20-ms audio): the stream's rollover counter
/// and replay window then never face a hole longer than this (a rollover guess goes wrong only
/// past 32,768), and the cost stays 1/32 of decrypting everything.
pub const SILENT_KEEPALIVE: u16 = 32;

/// How long another core's candidates count after they came (two ticks and a margin: a core
/// that stopped sending them, its tracks gone or silent, drops out of the ranking).
pub const REMOTE_FRESH: core::time::Duration = core::time::Duration::from_millis(250);

/// Candidates per [`encode_candidates`] message, the most active first (a ranking lists
/// [`speaker::MAX_LISTED`], so this is plenty).
pub const MAX_SHARED: usize = crate::forward::MAX_HANDOFF / CANDIDATE_BYTES;
const CANDIDATE_BYTES: usize = 13;

/// Every group's selector on one core, and the tick's scratch.
#[derive(Debug, Default)]
pub struct Speakers {
    groups: Map<SpeakerGroup, SpeakerSelector>,
    scratch: Vec<(SpeakerGroup, Candidate)>,
    group_buf: Vec<Candidate>,
    /// This core's candidates at the last tick, by group (what it tells the other cores).
    local: Vec<(SpeakerGroup, Candidate)>,
    /// Other cores' candidates: (core, group, when they came, candidates).
    remote: Vec<(u16, SpeakerGroup, Instant, Vec<Candidate>)>,
}

impl Speakers {
    /// The selector of `group`, once it ranked a tick.
    pub fn group(&self, group: SpeakerGroup) -> Option<&SpeakerSelector> {
        self.groups.get(&group)
    }

    /// This core's candidates at its last tick, sorted by group.
    pub fn local(&self) -> &[(SpeakerGroup, Candidate)] {
        &self.local
    }

    /// Another core's candidates of `group` ([`encode_candidates`]), replacing what it said
    /// before; ranked with this core's own at the next tick while fresh ([`REMOTE_FRESH`]).
    pub fn take_remote(&mut self, now: Instant, from: u16, group: SpeakerGroup, bytes: &[u8]) {
        let i = match self.remote.iter().position(|(f, g, ..)| *f == from && *g == group) {
            Some(i) => i,
            None => {
                self.remote.push((from, group, now, Vec::new()));
                self.remote.len() - 1
            }
        };
        let entry = &mut self.remote[i];
        entry.2 = now;
        entry.3.clear();
        entry.3.extend(decode_candidates(bytes));
    }

    /// One speaker tick over the ranked tracks among `tracks` (those this core fans out) and
    /// the other cores' fresh candidates: closes the local tracks' speech windows, ranks each
    /// group, reports changed rankings. Returns whether any track is ranked (the timer keeps
    /// running only then).
    pub fn tick<'a>(&mut self, now: Instant, tracks: impl Iterator<Item = &'a mut Track>, events: &mut VecDeque<Event>) -> bool {
        self.scratch.clear();
        for t in tracks {
            let Some(group) = t.spec.speaker_group.filter(|_| ranked(t) && t.level.heard()) else { continue };
            t.level.tick();
            self.scratch.push((group, Candidate { track: t.spec.id, short: t.level.short(), medium: t.level.medium(), level: t.level.level() }));
        }
        self.scratch.sort_unstable_by_key(|(g, c)| (*g, c.track));
        self.local.clear();
        self.local.extend_from_slice(&self.scratch);
        self.remote.retain(|(_, _, at, _)| now.saturating_duration_since(*at) <= REMOTE_FRESH);
        for (_, g, _, cands) in &self.remote {
            self.scratch.extend(cands.iter().map(|c| (*g, *c)));
        }
        self.scratch.sort_unstable_by_key(|(g, c)| (*g, c.track));
        // A group whose every track went away ranks one empty tick (clearing the floor), then goes.
        let scratch = &self.scratch;
        for (g, sel) in self.groups.iter_mut().filter(|(g, _)| !scratch.iter().any(|(sg, _)| sg == *g)) {
            if let Some(r) = sel.tick(&[]) {
                crate::forward::push_event(events, Event::ActiveSpeakers { group: *g, speakers: r });
            }
        }
        self.groups.retain(|g, _| scratch.iter().any(|(sg, _)| sg == g));
        for chunk in self.scratch.chunk_by(|a, b| a.0 == b.0) {
            let g = chunk[0].0;
            self.group_buf.clear();
            self.group_buf.extend(chunk.iter().map(|(_, c)| *c));
            if let Some(r) = self.groups.entry(g).or_default().tick(&self.group_buf) {
                crate::forward::push_event(events, Event::ActiveSpeakers { group: g, speakers: r });
            }
        }
        !self.scratch.is_empty()
    }
}

/// Encodes candidates for another core (13 bytes each: track, short and medium windows as
/// IEEE 754 bits, level; big-endian), at most [`MAX_SHARED`], the most active (medium window)
/// first. Returns the length written into `out`.
pub fn encode_candidates(cands: impl Iterator<Item = Candidate>, out: &mut [u8; crate::forward::MAX_HANDOFF]) -> usize {
    let mut top = [Candidate { track: crate::ids::TrackId(0), short: 0.0, medium: 0.0, level: 127 }; MAX_SHARED];
    let mut n = 0;
    for c in cands {
        if n < MAX_SHARED {
            top[n] = c;
            n += 1;
        } else if let Some(weakest) = top.iter_mut().min_by(|a, b| a.medium.total_cmp(&b.medium))
            && weakest.medium < c.medium
        {
            *weakest = c;
        }
    }
    for (i, c) in top[..n].iter().enumerate() {
        let b = &mut out[i * CANDIDATE_BYTES..(i + 1) * CANDIDATE_BYTES];
        b[..4].copy_from_slice(&c.track.0.to_be_bytes());
        b[4..8].copy_from_slice(&c.short.to_bits().to_be_bytes());
        b[8..12].copy_from_slice(&c.medium.to_bits().to_be_bytes());
        b[12] = c.level;
    }
    n * CANDIDATE_BYTES
}

/// The candidates [`encode_candidates`] wrote (a short or damaged tail is ignored; windows are
/// clamped to 0..=1 and levels to 0..=127, whatever the bytes say).
pub fn decode_candidates(bytes: &[u8]) -> impl Iterator<Item = Candidate> + '_ {
    bytes.chunks_exact(CANDIDATE_BYTES).map(|b| {
        let f = |x: &[u8]| {
            let v = f32::from_bits(u32::from_be_bytes([x[0], x[1], x[2], x[3]]));
            if v.is_finite() { v.clamp(0.0, 1.0) } else { 0.0 }
        };
        Candidate { track: crate::ids::TrackId(u32::from_be_bytes([b[0], b[1], b[2], b[3]])), short: f(&b[4..8]), medium: f(&b[8..12]), level: b[12].min(127) }
    })
}

/// Whether `track` is ranked by a speaker group (the spec names one and the level extension).
pub fn ranked(track: &Track) -> bool {
    track.spec.speaker_group.is_some() && track.spec.audio_level_ext.is_some()
}
