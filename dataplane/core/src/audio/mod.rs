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
//! **Across workers.** A track's levels are read by the worker that owns its publisher, and
//! each core ranks the tracks it owns. A session whose publishers are all on one worker (one
//! worker, or session affinity) is ranked exactly; a session spread over workers is ranked per
//! worker until the per-tick windows are shared over the daemon's bus (issue 16, left). The same
//! holds for slots: only the worker that owns a subscriber leg feeds its slots (one SRTP sender
//! per out-SSRC), so a slot hears the speakers fanned out on that worker.
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

/// How often speech activity is closed and speakers ranked.
pub const SPEAKER_TICK: core::time::Duration = core::time::Duration::from_millis(100);

/// Top-N audio drops the silence of unranked tracks before decryption, but decrypts every this
/// many-th packet of a silent run anyway (0.64 s of 20-ms audio): the stream's rollover counter
/// and replay window then never face a hole longer than this (a rollover guess goes wrong only
/// past 32,768), and the cost stays 1/32 of decrypting everything.
pub const SILENT_KEEPALIVE: u16 = 32;

/// Every group's selector on one core, and the tick's scratch.
#[derive(Debug, Default)]
pub struct Speakers {
    groups: Map<SpeakerGroup, SpeakerSelector>,
    scratch: Vec<(SpeakerGroup, Candidate)>,
    group_buf: Vec<Candidate>,
}

impl Speakers {
    /// The selector of `group`, once it ranked a tick.
    pub fn group(&self, group: SpeakerGroup) -> Option<&SpeakerSelector> {
        self.groups.get(&group)
    }

    /// One speaker tick over the ranked tracks among `tracks` (those this core fans out): closes
    /// their speech windows, ranks each group, reports changed rankings. Returns whether any
    /// track is ranked (the timer keeps running only then).
    pub fn tick<'a>(&mut self, tracks: impl Iterator<Item = &'a mut Track>, events: &mut VecDeque<Event>) -> bool {
        self.scratch.clear();
        for t in tracks {
            let Some(group) = t.spec.speaker_group.filter(|_| ranked(t) && t.level.heard()) else { continue };
            t.level.tick();
            self.scratch.push((group, Candidate { track: t.spec.id, short: t.level.short(), medium: t.level.medium(), level: t.level.level() }));
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

/// Whether `track` is ranked by a speaker group (the spec names one and the level extension).
pub fn ranked(track: &Track) -> bool {
    track.spec.speaker_group.is_some() && track.spec.audio_level_ext.is_some()
}
