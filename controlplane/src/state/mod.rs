//! The desired state: sessions of caller-named legs, tracks and subscriptions, changed only by
//! validated, atomic, revisioned change sets. Pure code: no I/O, no clock, no randomness, so a
//! journal replay of the same requests rebuilds exactly the same state (ids and ports included).
//!
//! Callers name things with strings unique within a session; the control plane maps them to the
//! stable numeric [`LegId`]s and [`TrackId`]s the dataplane uses, and picks each new leg's local
//! port from its range. Errors name the offending field by its path in the request
//! (`changes[2].subscription.target_layer`), so a gRPC status can say exactly what was wrong.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use sluice_core::ids::{LegId, Pt, SpeakerGroup, Ssrc, TrackId};
use sluice_core::srtp::Profile;
use sluice_core::table::{
    AudioSlotsSpec, Codec, DtlsRole, EdgeSpec, FeedbackSpec, IceCredentials, KeyMaterial, LayerSpec, LegSpec, MAX_AUDIO_SLOTS, MediaKind, MidSpec, PayloadSpec,
    RateLimit, RtcpComponent, SpecError, SubscriptionSpec, TrackSpec,
};

use crate::diff::SpecSet;
use crate::pb;
use crate::text::{describe_char, quote};

/// How many idempotency keys a session remembers.
pub const IDEMPOTENCY_KEYS_KEPT: usize = 1024;
/// Longest id (session, leg, track, idempotency key) accepted.
pub const MAX_ID_LEN: usize = 128;
/// Longest RID accepted (RFC 8851 rid-id; what browsers send).
pub const MAX_RID_LEN: usize = 16;
/// Longest `leg.remote` accepted (an IPv6 address with scope and port fits).
pub const MAX_REMOTE_LEN: usize = 64;
/// Longest `webrtc.remote_fingerprint` accepted (a SHA-512 fingerprint is 199 bytes).
pub const MAX_FINGERPRINT_LEN: usize = 256;

/// What kind of failure a [`StateError`] is (mapped 1:1 to gRPC codes by the API layer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// A named session, leg, track or subscription does not exist.
    NotFound,
    /// The request is malformed or inconsistent.
    InvalidArgument,
    /// `expected_revision` does not match (optimistic concurrency).
    Aborted,
    /// No free local port is left.
    ResourceExhausted,
    /// The node refuses the request in its current state (draining).
    FailedPrecondition,
}

/// A refused request: which field, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct StateError {
    /// The failure class.
    pub kind: ErrorKind,
    /// Path of the offending field in the request (`changes[2].subscription.target_layer`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

fn err(kind: ErrorKind, field: impl Into<String>, message: impl Into<String>) -> StateError {
    StateError { kind, field: field.into(), message: message.into() }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> StateError {
    err(ErrorKind::InvalidArgument, field, message)
}

/// The local ports legs may use (inclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRange {
    /// First port.
    pub start: u16,
    /// Last port.
    pub end: u16,
}

impl PortRange {
    /// How many ports the range holds.
    pub fn len(&self) -> u32 {
        u32::from(self.end) - u32::from(self.start) + 1
    }

    /// Whether the range is empty (never, for a validated range).
    pub fn is_empty(&self) -> bool {
        self.end < self.start
    }
}

/// `controlplane.session_affinity_legs` when the configuration does not say.
pub const DEFAULT_SESSION_AFFINITY_LEGS: u32 = 64;

/// How new legs' ports are spread over the dataplane's workers. A leg belongs to worker
/// `local_port % workers` (`sluice_core::forward::Shard::owner`), and a publisher's packet is
/// handed to every other worker owning one of its subscribers: so a session's legs share one
/// worker while it has fewer than `session_affinity_legs` legs (the worker with the fewest legs
/// node-wide when its first leg comes), and once it has that many each new leg goes to the
/// worker with the fewest of the session's legs, so a webinar's viewers split evenly.
///
/// Part of the state and journaled ([`Desired::set_placement`]), as the port range is: ports
/// are derived from it, so a replay must see the placement each change was accepted under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The dataplane's worker count as it last said (`None`: never said, or an older build).
    /// Unknown or 1: ports are allocated round-robin over the whole range, as without workers.
    pub workers: Option<u16>,
    /// Legs a session has before its new legs are spread over the workers (at least 1).
    pub session_affinity_legs: u32,
}

impl Default for Placement {
    fn default() -> Self {
        Self { workers: None, session_affinity_legs: DEFAULT_SESSION_AFFINITY_LEGS }
    }
}

impl Placement {
    /// The worker count ports are spread over: `None` unless more than one worker.
    pub fn spread(&self) -> Option<u16> {
        self.workers.filter(|&w| w > 1)
    }
}

/// A track with the caller's name of its publisher.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedTrack {
    /// The publishing leg's name.
    pub publisher: String,
    /// What the dataplane gets.
    pub spec: TrackSpec,
}

/// The answer to a committed change set, kept for idempotent retries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    /// The session's revision after the change set.
    pub revision: u64,
    /// Ports of the legs the change set upserted, in change order.
    pub ports: Vec<(String, u16)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct IdempotencyEntry {
    key: String,
    fingerprint: u64,
    committed: Committed,
}

/// A session's settings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Top-N audio: legs with audio slots receive the session's audio in them.
    pub top_n_audio: bool,
    /// N (1..=8); 0: [`DEFAULT_AUDIO_TOP_N`].
    pub audio_top_n: u8,
}

/// N of top-N audio when a session does not say.
pub const DEFAULT_AUDIO_TOP_N: u8 = 3;

impl Settings {
    /// N, the slots each leg uses.
    pub fn top_n(&self) -> u8 {
        if self.audio_top_n == 0 { DEFAULT_AUDIO_TOP_N } else { self.audio_top_n }
    }
}

/// One session (meeting) on this node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Bumped by every committed change set.
    pub revision: u64,
    /// Legs by name.
    pub legs: BTreeMap<String, LegSpec>,
    /// Tracks by name.
    pub tracks: BTreeMap<String, NamedTrack>,
    /// Subscriptions: subscriber leg name → track name → spec.
    pub subs: BTreeMap<String, BTreeMap<String, SubscriptionSpec>>,
    /// Session-wide settings.
    #[serde(default)]
    pub settings: Settings,
    idempotency: VecDeque<IdempotencyEntry>,
}

impl Session {
    fn remove_track(&mut self, name: &str) {
        self.tracks.remove(name);
        for subs in self.subs.values_mut() {
            subs.remove(name);
        }
        self.subs.retain(|_, s| !s.is_empty());
    }

    fn remove_leg(&mut self, name: &str) -> Vec<String> {
        self.legs.remove(name);
        self.subs.remove(name);
        let tracks: Vec<String> = self.tracks.iter().filter(|(_, t)| t.publisher == name).map(|(n, _)| n.clone()).collect();
        for t in &tracks {
            self.remove_track(t);
        }
        tracks
    }

    fn compile_into(&self, t: &mut SpecSet) {
        // With top-N audio on, a leg with slots hears the ranked speakers through them: its
        // per-track subscriptions to ranked audio stay in the desired state (they come back when
        // top-N goes off) but are not installed, or it would hear them twice.
        let top_n = self.settings.top_n_audio;
        let slotted: BTreeSet<LegId> = self.legs.values().filter(|l| top_n && l.audio_slots.is_some()).map(|l| l.id).collect();
        let ranked: BTreeSet<TrackId> =
            self.tracks.values().filter(|t| top_n && t.spec.kind == MediaKind::Audio && t.spec.speaker_group.is_some()).map(|t| t.spec.id).collect();
        for l in self.legs.values() {
            let mut l = l.clone();
            // A leg keeps the slots it asked for; the dataplane gets the session's first N,
            // and none while the session has top-N audio off.
            l.audio_slots = l.audio_slots.filter(|_| self.settings.top_n_audio).map(|mut a| {
                a.out_ssrcs.truncate(usize::from(self.settings.top_n()));
                a
            });
            t.legs.insert(l.id, l);
        }
        for tr in self.tracks.values() {
            t.tracks.insert(tr.spec.id, tr.spec.clone());
        }
        for subs in self.subs.values() {
            for sub in subs.values() {
                if slotted.contains(&sub.subscriber) && ranked.contains(&sub.track) {
                    continue;
                }
                t.subs.insert((sub.subscriber, sub.track), sub.clone());
            }
        }
    }

    /// Number of subscriptions.
    pub fn subscription_count(&self) -> usize {
        self.subs.values().map(BTreeMap::len).sum()
    }
}

/// What a state change produced: the answer, and the events to publish once it is installed.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// The session.
    pub session: String,
    /// The committed answer.
    pub committed: Committed,
    /// Events (the caller fills in the generation of `ChangeApplied`).
    pub events: Vec<pb::Event>,
    /// True when this was a retry answered from the idempotency record: nothing changed.
    pub replayed: bool,
}

/// One session, the id/port counters and the per-worker cursors as they were
/// ([`Desired::undo_point`]).
#[derive(Clone, Debug)]
pub struct Undo {
    session: String,
    was: Option<Box<Session>>,
    counters: (u32, u32, u16),
    cursors: Vec<u16>,
}

/// A validated change set, not yet part of the state ([`Desired::prepare`]).
#[derive(Clone, Debug)]
pub struct Prepared {
    /// What committing it answers.
    pub outcome: Outcome,
    /// The session as it will be, and the id/port counters after it (`None`: a replay).
    staged: Option<Staged>,
}

impl Prepared {
    /// Every local port the session's legs hold once this is committed (RTP and separate RTCP
    /// ports; none for a replay).
    pub fn session_ports(&self) -> BTreeSet<u16> {
        self.staged.as_ref().map(|s| s.session.legs.values().flat_map(LegSpec::ports).collect()).unwrap_or_default()
    }
}

#[derive(Clone, Debug)]
struct Staged {
    session: Box<Session>,
    next_leg: u32,
    next_track: u32,
    next_port: u16,
    cursors: Vec<u16>,
}

/// Everything this node should be doing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    /// The port range legs get their local ports from.
    pub ports: PortRange,
    /// A draining node takes no new sessions.
    pub draining: bool,
    next_leg: u32,
    next_track: u32,
    next_port: u16,
    /// How new legs' ports follow the dataplane's workers (absent from older snapshots: none).
    #[serde(default)]
    placement: Placement,
    /// With [`Placement::spread`], the round-robin cursor of each worker's ports (index: the
    /// worker); one not set yet starts at `next_port`. Emptied when the worker count changes.
    #[serde(default)]
    cursors: Vec<u16>,
    /// Sessions by name.
    pub sessions: BTreeMap<String, Session>,
    /// The node's secret WebRTC legs' ICE credentials are derived from (kept in its own file by
    /// the journal, never in a snapshot).
    #[serde(skip)]
    pub ice_secret: Vec<u8>,
    /// What the node may hold (configuration, not state: never in a snapshot).
    #[serde(skip)]
    pub quotas: Quotas,
    /// Which session holds each leg port (derived, never in a snapshot; see [`PortIndex`]).
    #[serde(skip)]
    port_index: PortIndex,
}

/// Which session holds each local port (RTP and separate RTCP): derived from the sessions and
/// kept in step by every change, so an Apply checks a port against the node in O(log n)
/// instead of collecting every other session's ports (which made each Apply cost the node's
/// size and a journal replay quadratic). A state loaded from a snapshot has none until
/// [`Desired::reindex`]; until then the ports are collected as before.
#[derive(Clone, Debug, Default)]
struct PortIndex {
    owner: BTreeMap<u16, String>,
    built: bool,
    /// With [`Placement::spread`], the legs on each worker (by their RTP port; index: the
    /// worker), over every session; empty otherwise.
    legs: Vec<u32>,
}

// Derived data: two states with the same sessions are equal whether or not it is built.
impl PartialEq for PortIndex {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for PortIndex {}

impl PortIndex {
    /// An empty, built index counting legs per worker over `spread` workers.
    fn new(spread: Option<u16>) -> Self {
        Self { owner: BTreeMap::new(), built: true, legs: vec![0; spread.map_or(0, usize::from)] }
    }

    fn add(&mut self, name: &str, s: &Session) {
        if self.built {
            for p in s.legs.values().flat_map(LegSpec::ports) {
                self.owner.insert(p, name.to_owned());
            }
            for l in s.legs.values() {
                self.count(l.local_port, true);
            }
        }
    }

    fn remove(&mut self, name: &str, s: Option<&Session>) {
        if self.built {
            for p in s.into_iter().flat_map(|s| s.legs.values()).flat_map(LegSpec::ports) {
                if self.owner.get(&p).is_some_and(|o| o == name) {
                    self.owner.remove(&p);
                }
            }
            for l in s.into_iter().flat_map(|s| s.legs.values()) {
                self.count(l.local_port, false);
            }
        }
    }

    /// Counts a leg on RTP port `port` in (`up`) or out of its worker's legs.
    fn count(&mut self, port: u16, up: bool) {
        let Some(w) = u16::try_from(self.legs.len()).ok().filter(|&w| w > 1) else { return };
        if let Some(n) = self.legs.get_mut(usize::from(port % w)) {
            *n = if up { n.saturating_add(1) } else { n.saturating_sub(1) };
        }
    }
}

/// Per-node quotas: a change set that would go over one is refused with RESOURCE_EXHAUSTED
/// naming it (a change that adds nothing of that kind passes, so a lowered quota never blocks
/// the sessions already there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quotas {
    /// Sessions.
    pub sessions: usize,
    /// Legs, over every session.
    pub legs: usize,
    /// Subscriptions, over every session.
    pub subscriptions: usize,
}

impl Default for Quotas {
    fn default() -> Self {
        Self { sessions: usize::MAX, legs: usize::MAX, subscriptions: usize::MAX }
    }
}

impl Desired {
    /// An empty node with this port range.
    pub fn new(ports: PortRange) -> Self {
        Self {
            ports,
            draining: false,
            next_leg: 1,
            next_track: 1,
            next_port: ports.start,
            placement: Placement::default(),
            cursors: Vec::new(),
            sessions: BTreeMap::new(),
            ice_secret: Vec::new(),
            quotas: Quotas::default(),
            port_index: PortIndex::new(None),
        }
    }

    /// How new legs' ports follow the dataplane's workers.
    pub fn placement(&self) -> Placement {
        self.placement
    }

    /// Sets how new legs' ports follow the dataplane's workers (legs keep their ports). Journal
    /// it first (`Record::Placement`): the ports of every change after it derive from it. A new
    /// worker count starts every worker's cursor at the node's.
    pub fn set_placement(&mut self, placement: Placement) {
        let recount = placement.spread() != self.placement.spread();
        self.placement = placement;
        if recount {
            self.cursors.clear();
            if self.port_index.built {
                self.reindex();
            }
        }
    }

    /// Acknowledged legs holding a port outside `range` (session, leg, port): a range narrowed
    /// at a restart must not move them (their participants were told the port).
    pub fn legs_outside(&self, range: PortRange) -> Vec<(String, String, u16)> {
        let mut out = Vec::new();
        for (s, sess) in &self.sessions {
            for (l, spec) in &sess.legs {
                for p in spec.ports().filter(|p| !(range.start..=range.end).contains(p)) {
                    out.push((s.clone(), l.clone(), p));
                }
            }
        }
        out
    }

    /// Builds the port index from the sessions (after loading them from a snapshot); every
    /// change keeps it in step from then on.
    pub fn reindex(&mut self) {
        let mut index = PortIndex::new(self.placement.spread());
        for (name, s) in &self.sessions {
            index.add(name, s);
        }
        self.port_index = index;
    }

    /// Removes what the dataplane's tables refuse (specs failing their `validate`), which only a
    /// snapshot written by an older build can hold; says what was removed. A leg takes its
    /// tracks and subscriptions with it, a track its subscriptions.
    pub fn drop_unservable(&mut self) -> Vec<String> {
        let mut dropped = Vec::new();
        for (name, session) in &mut self.sessions {
            let legs: Vec<String> = session.legs.iter().filter(|(_, l)| l.validate().is_err()).map(|(n, _)| n.clone()).collect();
            for l in legs {
                if let Some(Err(e)) = session.legs.get(&l).map(LegSpec::validate) {
                    dropped.push(format!("session {}: leg {}: {e}", quote(name), quote(&l)));
                }
                session.remove_leg(&l);
            }
            let tracks: Vec<String> = session.tracks.iter().filter(|(_, t)| t.spec.validate().is_err()).map(|(n, _)| n.clone()).collect();
            for t in tracks {
                if let Some(Err(e)) = session.tracks.get(&t).map(|t| t.spec.validate()) {
                    dropped.push(format!("session {}: track {}: {e}", quote(name), quote(&t)));
                }
                session.remove_track(&t);
            }
            for (leg, subs) in &mut session.subs {
                subs.retain(|track, s| match s.validate() {
                    Ok(()) => true,
                    Err(e) => {
                        dropped.push(format!("session {}: subscription of leg {} to track {}: {e}", quote(name), quote(leg), quote(track)));
                        false
                    }
                });
            }
            session.subs.retain(|_, s| !s.is_empty());
        }
        if self.port_index.built {
            self.reindex();
        }
        dropped
    }

    /// Ports in use by legs.
    pub fn ports_used(&self) -> BTreeSet<u16> {
        self.sessions.values().flat_map(|s| s.legs.values().flat_map(LegSpec::ports)).collect()
    }

    /// Applies a change set atomically: on any error nothing changes.
    pub fn apply(&mut self, req: &pb::ChangeSet) -> Result<Outcome, StateError> {
        self.apply_avoiding(req, &BTreeSet::new())
    }

    /// [`Desired::apply`], never giving a new leg a port of `avoid` (ports another process held
    /// when the change was accepted: journaled with it, so its replay allocates the same ports).
    pub fn apply_avoiding(&mut self, req: &pb::ChangeSet, avoid: &BTreeSet<u16>) -> Result<Outcome, StateError> {
        let prepared = self.prepare_avoiding(req, avoid)?;
        Ok(self.commit(prepared))
    }

    /// A stage for a change of `name` (its session as it is now, or a new one), whose new legs
    /// get no port of `avoid`.
    fn stage<'a>(&'a self, name: &'a str, avoid: &'a BTreeSet<u16>) -> Stage<'a> {
        Stage {
            session: self.sessions.get(name).cloned().unwrap_or_default(),
            name,
            next_leg: self.next_leg,
            next_track: self.next_track,
            next_port: self.next_port,
            range: self.ports,
            spread: self.placement.spread().map(|workers| Spread { workers, session_affinity_legs: self.placement.session_affinity_legs }),
            cursors: self.cursors.clone(),
            legs_elsewhere: self.placement.spread().map(|w| self.legs_per_worker_besides(name, w)).unwrap_or_default(),
            used_elsewhere: if self.port_index.built {
                Elsewhere::Index { owner: &self.port_index.owner, session: name, avoid }
            } else {
                Elsewhere::Collected(
                    self.sessions
                        .iter()
                        .filter(|(n, _)| *n != name)
                        .flat_map(|(_, s)| s.legs.values().flat_map(LegSpec::ports))
                        .chain(avoid.iter().copied())
                        .collect(),
                )
            },
            ports: Vec::new(),
            events: Vec::new(),
            ice_secret: &self.ice_secret,
        }
    }

    /// The legs on each of `workers` workers (by their RTP port) of every session but `name`.
    fn legs_per_worker_besides(&self, name: &str, workers: u16) -> Vec<u32> {
        let tally = |counts: &mut Vec<u32>, s: &Session, up: bool| {
            for l in s.legs.values() {
                if let Some(n) = counts.get_mut(usize::from(l.local_port % workers)) {
                    *n = if up { n.saturating_add(1) } else { n.saturating_sub(1) };
                }
            }
        };
        if self.port_index.built && self.port_index.legs.len() == usize::from(workers) {
            // The node's counts from the index, less this session's: its size, not the node's.
            let mut counts = self.port_index.legs.clone();
            if let Some(s) = self.sessions.get(name) {
                tally(&mut counts, s, false);
            }
            counts
        } else {
            let mut counts = vec![0u32; usize::from(workers)];
            for (_, s) in self.sessions.iter().filter(|(n, _)| *n != name) {
                tally(&mut counts, s, true);
            }
            counts
        }
    }

    /// New local ports for `leg` of `session`, whose own the dataplane could not open: the RTP
    /// port as a new leg's would be chosen, avoiding `avoid` and every port a leg holds, and
    /// for a leg with a separate RTCP component its RTCP port (the RTP port + 1 when free).
    /// Changes nothing; [`Desired::move_leg`] does.
    pub fn ports_for_move(&self, session: &str, leg: &str, avoid: &BTreeSet<u16>) -> Result<(u16, Option<u16>), StateError> {
        let Some(spec) = self.sessions.get(session).and_then(|s| s.legs.get(leg)) else {
            return Err(err(ErrorKind::NotFound, "leg", format!("no leg {} in session {}", quote(leg), quote(session))));
        };
        // The stage's session still holds the leg, so its current ports count as taken.
        let mut stage = self.stage(session, avoid);
        let port = stage.allocate_port("leg")?;
        let rtcp = match spec.rtcp.as_deref() {
            Some(_) => Some(stage.allocate_port_besides("leg.separate_rtcp", Some((port, port.checked_add(1))))?),
            None => None,
        };
        Ok((port, rtcp))
    }

    /// Gives `leg` of `session` new local ports (see [`Desired::ports_for_move`]): the same leg,
    /// its RTP port and its RTCP component's port replaced; the answers kept for idempotent
    /// retries name the new port. The allocation cursor moves past the new port, as it does
    /// for a new leg, so a replay allocates what the original did.
    pub fn move_leg(&mut self, session: &str, leg: &str, port: u16, rtcp_port: Option<u16>) -> Result<(), StateError> {
        let Some(s) = self.sessions.get_mut(session) else {
            return Err(err(ErrorKind::NotFound, "session", format!("no session {}", quote(session))));
        };
        let Some(spec) = s.legs.get_mut(leg) else {
            return Err(err(ErrorKind::NotFound, "leg", format!("no leg {} in session {}", quote(leg), quote(session))));
        };
        let old: Vec<u16> = spec.ports().collect();
        let old_rtp = spec.local_port;
        spec.local_port = port;
        if let (Some(c), Some(p)) = (spec.rtcp.as_deref_mut(), rtcp_port) {
            c.local_port = p;
        }
        let new: Vec<u16> = spec.ports().collect();
        for e in &mut s.idempotency {
            for (name, p) in &mut e.committed.ports {
                if name == leg {
                    *p = port;
                }
            }
        }
        if self.port_index.built {
            for p in old {
                if self.port_index.owner.get(&p).is_some_and(|o| o == session) {
                    self.port_index.owner.remove(&p);
                }
            }
            for p in new {
                self.port_index.owner.insert(p, session.to_owned());
            }
            self.port_index.count(old_rtp, false);
            self.port_index.count(port, true);
        }
        let spread = self.placement.spread();
        advance_cursors(self.ports, spread, &mut self.next_port, &mut self.cursors, port);
        Ok(())
    }

    /// Ports of the legs `session` has now (none for a new session).
    pub fn session_ports(&self, session: &str) -> BTreeSet<u16> {
        self.sessions.get(session).map(|s| s.legs.values().flat_map(LegSpec::ports).collect()).unwrap_or_default()
    }

    /// Validates a change set and computes its result without changing anything (the cost is
    /// the session's size, not the node's); [`Desired::commit`] then makes it the state.
    pub fn prepare(&self, req: &pb::ChangeSet) -> Result<Prepared, StateError> {
        self.prepare_avoiding(req, &BTreeSet::new())
    }

    /// [`Desired::prepare`], never giving a new leg a port of `avoid`.
    pub fn prepare_avoiding(&self, req: &pb::ChangeSet, avoid: &BTreeSet<u16>) -> Result<Prepared, StateError> {
        check_id("session", &req.session)?;
        if !req.idempotency_key.is_empty() {
            check_id("idempotency_key", &req.idempotency_key)?;
        }
        let fingerprint = fingerprint(&prost::Message::encode_to_vec(req));
        let existing = self.sessions.get(&req.session);
        if !req.idempotency_key.is_empty()
            && let Some(e) = existing.and_then(|s| s.idempotency.iter().find(|e| e.key == req.idempotency_key))
        {
            if e.fingerprint != fingerprint {
                return Err(invalid("idempotency_key", format!("key {} was already used for a different change set", quote(&req.idempotency_key))));
            }
            return Ok(Prepared {
                outcome: Outcome { session: req.session.clone(), committed: e.committed.clone(), events: Vec::new(), replayed: true },
                staged: None,
            });
        }
        if existing.is_none() && self.draining {
            return Err(err(
                ErrorKind::FailedPrecondition,
                "session",
                format!("node is draining and takes no new sessions (session {} does not exist here)", quote(&req.session)),
            ));
        }
        let current = existing.map_or(0, |s| s.revision);
        if let Some(expected) = req.expected_revision
            && expected != current
        {
            return Err(err(ErrorKind::Aborted, "expected_revision", format!("session {} is at revision {current}, not {expected}", quote(&req.session))));
        }
        if req.changes.is_empty() {
            return Err(invalid("changes", "a change set needs at least one change"));
        }
        let mut stage = self.stage(&req.session, avoid);
        for (i, change) in req.changes.iter().enumerate() {
            stage.change(i, change)?;
        }
        let Stage { mut session, next_leg, next_track, next_port, cursors, ports, mut events, .. } = stage;
        self.check_quotas(&req.session, existing, &session)?;
        session.revision = current + 1;
        let committed = Committed { revision: session.revision, ports };
        if !req.idempotency_key.is_empty() {
            if session.idempotency.len() >= IDEMPOTENCY_KEYS_KEPT {
                session.idempotency.pop_front();
            }
            session.idempotency.push_back(IdempotencyEntry { key: req.idempotency_key.clone(), fingerprint, committed: committed.clone() });
        }
        for e in &mut events {
            e.session.clone_from(&req.session);
            e.revision = session.revision;
        }
        events.insert(
            0,
            pb::Event {
                session: req.session.clone(),
                revision: session.revision,
                event: Some(pb::event::Event::ChangeApplied(pb::ChangeApplied { generation: 0, changes: req.changes.len() as u32 })),
            },
        );
        Ok(Prepared {
            outcome: Outcome { session: req.session.clone(), committed, events, replayed: false },
            staged: Some(Staged { session: Box::new(session), next_leg, next_track, next_port, cursors }),
        })
    }

    /// Refuses a change set that would take the node over a quota with what it adds: a new
    /// session, more legs, more subscriptions. (The other sessions are counted only when this one
    /// grows against a quota that is set.)
    fn check_quotas(&self, name: &str, existing: Option<&Session>, staged: &Session) -> Result<(), StateError> {
        let q = self.quotas;
        if existing.is_none() && self.sessions.len() >= q.sessions {
            return Err(err(ErrorKind::ResourceExhausted, "session", format!("the node holds {} sessions, its quota (max_sessions)", self.sessions.len())));
        }
        let (old_legs, old_subs) = existing.map_or((0, 0), |s| (s.legs.len(), s.subscription_count()));
        let (new_legs, new_subs) = (staged.legs.len(), staged.subscription_count());
        if new_legs <= old_legs && new_subs <= old_subs {
            return Ok(());
        }
        let others = self.sessions.iter().filter(|(n, _)| n.as_str() != name);
        if new_legs > old_legs && q.legs != usize::MAX {
            let legs = others.clone().map(|(_, s)| s.legs.len()).sum::<usize>() + new_legs;
            if legs > q.legs {
                return Err(err(ErrorKind::ResourceExhausted, "changes", format!("the node would hold {legs} legs, over its quota of {} (max_legs)", q.legs)));
            }
        }
        if new_subs > old_subs && q.subscriptions != usize::MAX {
            let subs = others.map(|(_, s)| s.subscription_count()).sum::<usize>() + new_subs;
            if subs > q.subscriptions {
                return Err(err(
                    ErrorKind::ResourceExhausted,
                    "changes",
                    format!("the node would hold {subs} subscriptions, over its quota of {} (max_subscriptions)", q.subscriptions),
                ));
            }
        }
        Ok(())
    }

    /// What [`Desired::restore`] needs to take back changes to `session` committed after this.
    pub fn undo_point(&self, session: &str) -> Undo {
        Undo {
            session: session.to_owned(),
            was: self.sessions.get(session).cloned().map(Box::new),
            counters: (self.next_leg, self.next_track, self.next_port),
            cursors: self.cursors.clone(),
        }
    }

    /// Takes the state of one session (and the id/port counters and cursors) back to an
    /// [`Undo`] point; restore several in the reverse order they were taken.
    pub fn restore(&mut self, undo: Undo) {
        self.port_index.remove(&undo.session, self.sessions.get(&undo.session));
        match undo.was {
            Some(s) => {
                self.port_index.add(&undo.session, &s);
                self.sessions.insert(undo.session, *s);
            }
            None => {
                self.sessions.remove(&undo.session);
            }
        }
        (self.next_leg, self.next_track, self.next_port) = undo.counters;
        self.cursors = undo.cursors;
    }

    /// Makes a prepared change set the state (nothing for a replayed one). Only valid for a
    /// [`Prepared`] made from this state with nothing committed in between.
    pub fn commit(&mut self, prepared: Prepared) -> Outcome {
        if let Some(st) = prepared.staged {
            self.next_leg = st.next_leg;
            self.next_track = st.next_track;
            self.next_port = st.next_port;
            self.cursors = st.cursors;
            let name = &prepared.outcome.session;
            self.port_index.remove(name, self.sessions.get(name));
            self.port_index.add(name, &st.session);
            self.sessions.insert(name.clone(), *st.session);
        }
        prepared.outcome
    }

    /// Whether [`Desired::delete_session`] would succeed (nothing changes); the session's
    /// current revision.
    pub fn check_delete(&self, req: &pb::DeleteSessionRequest) -> Result<u64, StateError> {
        // A session an older build accepted under a name today's check refuses can still be
        // read and deleted; any other such name is refused as invalid.
        let Some(s) = self.sessions.get(&req.session) else {
            check_id("session", &req.session)?;
            return Err(err(ErrorKind::NotFound, "session", format!("no session {}", quote(&req.session))));
        };
        if let Some(expected) = req.expected_revision
            && expected != s.revision
        {
            return Err(err(ErrorKind::Aborted, "expected_revision", format!("session {} is at revision {}, not {expected}", quote(&req.session), s.revision)));
        }
        Ok(s.revision)
    }

    /// Deletes a session and everything in it, freeing its ports.
    pub fn delete_session(&mut self, req: &pb::DeleteSessionRequest) -> Result<Outcome, StateError> {
        let revision = self.check_delete(req)? + 1;
        self.port_index.remove(&req.session, self.sessions.get(&req.session));
        self.sessions.remove(&req.session);
        let event = |e| pb::Event { session: req.session.clone(), revision, event: Some(e) };
        Ok(Outcome {
            session: req.session.clone(),
            committed: Committed { revision, ports: Vec::new() },
            events: vec![
                event(pb::event::Event::ChangeApplied(pb::ChangeApplied { generation: 0, changes: 1 })),
                event(pb::event::Event::SessionDeleted(true)),
            ],
            replayed: false,
        })
    }

    /// What the dataplane should have installed.
    pub fn tables(&self) -> SpecSet {
        let mut t = SpecSet::default();
        for s in self.sessions.values() {
            s.compile_into(&mut t);
        }
        t
    }

    /// The part of [`Desired::tables`] one session makes (empty when it does not exist): a
    /// session's legs, tracks and subscriptions refer only to each other.
    pub fn session_tables(&self, name: &str) -> SpecSet {
        let mut t = SpecSet::default();
        if let Some(s) = self.sessions.get(name) {
            s.compile_into(&mut t);
        }
        t
    }

    /// The session as the API shows it (keys left out).
    pub fn session_view(&self, name: &str, edge: &EdgeInfo) -> Result<pb::Session, StateError> {
        let Some(s) = self.sessions.get(name) else {
            check_id("session", name)?;
            return Err(err(ErrorKind::NotFound, "session", format!("no session {}", quote(name))));
        };
        let leg_name: BTreeMap<LegId, &str> = s.legs.iter().map(|(n, l)| (l.id, n.as_str())).collect();
        let track_name: BTreeMap<TrackId, &str> = s.tracks.iter().map(|(n, t)| (t.spec.id, n.as_str())).collect();
        let key = |k: &KeyMaterial| pb::KeyMaterial { profile: profile_to_pb(k.profile) as i32, key: Vec::new(), salt: Vec::new() };
        Ok(pb::Session {
            id: name.to_owned(),
            revision: s.revision,
            legs: s
                .legs
                .iter()
                .map(|(n, l)| pb::Leg {
                    id: n.clone(),
                    local_port: u32::from(l.local_port),
                    remote: l.remote.map(|r| r.to_string()).unwrap_or_default(),
                    separate_rtcp: l.rtcp.is_some(),
                    rtcp_port: l.rtcp.as_deref().map_or(0, |c| u32::from(c.local_port)),
                    rtcp_remote: l.rtcp.as_deref().and_then(|c| c.remote).map(|r| r.to_string()).unwrap_or_default(),
                    rx: l.edge.is_none().then(|| key(&l.rx)),
                    tx: l.edge.is_none().then(|| key(&l.tx)),
                    feedback_ssrc: l.feedback_ssrc.0,
                    feedback: Some(pb::UplinkFeedback { transport_cc_ext: l.feedback.twcc_ext.map(u32::from), remb: l.feedback.remb }),
                    webrtc: l.edge.as_ref().map(|e| pb::WebRtc {
                        remote_ice_ufrag: e.remote.ufrag.clone(),
                        remote_ice_pwd: String::new(),
                        remote_fingerprint: e.remote_fingerprint.clone(),
                        setup: match e.role {
                            DtlsRole::Server => pb::DtlsSetup::Passive,
                            DtlsRole::Client => pb::DtlsSetup::Active,
                        } as i32,
                    }),
                    webrtc_local: webrtc_local(l, edge),
                    audio_slots: l.audio_slots.as_ref().map(|a| pb::AudioSlots {
                        out_ssrcs: a.out_ssrcs.iter().map(|s| s.0).collect(),
                        pt_map: a.pt_map.iter().map(|(f, t)| pb::IdMapping { from: u32::from(f.0), to: u32::from(t.0) }).collect(),
                        ext_map: a.ext_map.iter().map(|(f, t)| pb::IdMapping { from: u32::from(*f), to: u32::from(*t) }).collect(),
                    }),
                    rate_limit: l.rate_limit.map(|r| pb::RateLimit { packets_per_s: r.packets_per_s, bytes_per_s: r.bytes_per_s, burst_ms: r.burst_ms }),
                })
                .collect(),
            tracks: s
                .tracks
                .iter()
                .map(|(n, t)| pb::Track {
                    id: n.clone(),
                    publisher_leg: t.publisher.clone(),
                    kind: match t.spec.kind {
                        MediaKind::Audio => pb::MediaKind::Audio,
                        MediaKind::Video => pb::MediaKind::Video,
                    } as i32,
                    clock_rate: t.spec.clock_rate,
                    layers: t
                        .spec
                        .layers
                        .iter()
                        .map(|l| pb::Layer { ssrc: l.ssrc.map(|s| s.0), rtx_ssrc: l.rtx_ssrc.map(|s| s.0), rid: l.rid.clone().unwrap_or_default() })
                        .collect(),
                    payload_types: t
                        .spec
                        .payload_types
                        .iter()
                        .map(|p| pb::PayloadType { pt: u32::from(p.pt.0), codec: codec_to_pb(p.codec) as i32, rtx_pt: p.rtx_pt.map(|r| u32::from(r.0)) })
                        .collect(),
                    rid_ext: t.spec.rid_ext.map(u32::from),
                    repaired_rid_ext: t.spec.repaired_rid_ext.map(u32::from),
                    mid_ext: t.spec.mid.as_ref().map(|m| u32::from(m.ext)),
                    mid: t.spec.mid.as_ref().map(|m| m.value.clone()).unwrap_or_default(),
                    audio_level_ext: t.spec.audio_level_ext.map(u32::from),
                    dependency_descriptor_ext: t.spec.dd_ext.map(u32::from),
                })
                .collect(),
            subscriptions: s
                .subs
                .values()
                .flat_map(BTreeMap::values)
                .map(|sub| pb::Subscription {
                    subscriber_leg: leg_name.get(&sub.subscriber).copied().unwrap_or_default().to_owned(),
                    track: track_name.get(&sub.track).copied().unwrap_or_default().to_owned(),
                    out_ssrc: sub.out_ssrc.0,
                    out_rtx_ssrc: sub.out_rtx_ssrc.map(|s| s.0),
                    pt_map: sub.pt_map.iter().map(|(f, t)| pb::IdMapping { from: u32::from(f.0), to: u32::from(t.0) }).collect(),
                    ext_map: sub.ext_map.iter().map(|(f, t)| pb::IdMapping { from: u32::from(*f), to: u32::from(*t) }).collect(),
                    target_layer: u32::from(sub.target_layer),
                    paused: sub.paused,
                    priority: u32::from(sub.priority),
                    max_spatial_layer: sub.max_spatial.map(u32::from),
                    max_temporal_layer: sub.max_temporal.map(u32::from),
                })
                .collect(),
            active_speakers: None,
            settings: Some(pb::SessionSettings { top_n_audio: s.settings.top_n_audio, audio_top_n: u32::from(s.settings.audio_top_n) }),
        })
    }
}

mod decode;
mod webrtc;

use decode::*;
pub use decode::{check_id, codec_to_pb, profile_from_pb, profile_to_pb, speaker_group};
use webrtc::webrtc_remote;
pub use webrtc::{EdgeInfo, local_ice_credentials, webrtc_local};

/// FNV-1a over a request's encoding: tells a retry from a different change set under one key.
/// Stable across builds (unlike `std`'s hasher), since it is journaled.
pub fn fingerprint(bytes: &[u8]) -> u64 {
    sluice_core::fingerprint::fnv64(bytes)
}

/// Request builders shared by the unit tests.
#[cfg(test)]
pub(crate) mod fixtures;

#[cfg(test)]
mod node_tests;

#[cfg(test)]
mod placement_tests;

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;
    use crate::pb::change::Change as C;

    fn node() -> Desired {
        Desired::new(PortRange { start: 30_000, end: 30_009 })
    }

    fn refuse(d: &mut Desired, r: &pb::ChangeSet) -> StateError {
        let before = d.clone();
        let e = d.apply(r).expect_err("must be refused");
        assert_eq!(*d, before, "a refused change set changes nothing");
        e
    }

    #[test]
    fn a_change_set_allocates_ids_and_ports_and_bumps_the_revision() {
        let mut d = node();
        let out = d.apply(&pair("m")).unwrap();
        assert_eq!(out.committed.revision, 1);
        assert_eq!(out.committed.ports, vec![("a".into(), 30_000), ("b".into(), 30_001)]);
        let t = d.tables();
        assert_eq!(t.legs.len(), 2);
        assert_eq!(t.tracks.len(), 2);
        assert_eq!(t.subs.len(), 2);
        assert_ne!(t.legs.values().next().unwrap().id, t.legs.values().nth(1).unwrap().id);
        // Upserting a leg again keeps its id and port.
        let out = d.apply(&req("m", vec![leg("a")])).unwrap();
        assert_eq!(out.committed.revision, 2);
        assert_eq!(out.committed.ports, vec![("a".into(), 30_000)]);
        assert_eq!(d.tables().legs, t.legs);
    }

    /// Ids are 1..=128 bytes of letters, digits and `-_.:@/`, RIDs RFC 8851's 1..=16, and no
    /// message echoes more than a short, escaped piece of an input.
    #[test]
    fn ids_rids_and_keys_are_printable_and_bounded_and_echoes_are_short() {
        let mut d = node();
        d.apply(&pair("m")).unwrap();
        let huge = "k".repeat(1 << 20);
        let with_rid = |rid: &str| {
            let mut c = video("v9", "a", 900);
            if let Some(C::Track(t)) = &mut c.change {
                t.layers[0].rid = rid.into();
            }
            req("m", vec![c])
        };
        let with_mid = |ext: Option<u32>, mid: &str| {
            let mut c = video("v9", "a", 900);
            if let Some(C::Track(t)) = &mut c.change {
                (t.mid_ext, t.mid) = (ext, mid.into());
            }
            req("m", vec![c])
        };
        let mut keyed = pair("m2");
        keyed.idempotency_key = huge.clone();
        let cases: Vec<(pb::ChangeSet, &str)> = vec![
            (req("a\0b", vec![leg("x")]), "session"),
            (req(&huge, vec![leg("x")]), "session"),
            (req("m", vec![leg("x\ny")]), "changes[0].leg.id"),
            (req("m", vec![video("v\u{1b}[31m", "a", 900)]), "changes[0].track.id"),
            (req("m", vec![video("v9", "a\u{202e}", 900)]), "changes[0].track.publisher_leg"),
            (req("m", vec![sub("b\u{2066}", "va", 5, 0, false)]), "changes[0].subscription.subscriber_leg"),
            (req("m", vec![sub("b", "va b", 5, 0, false)]), "changes[0].subscription.track"),
            (req("m", vec![pb::Change { change: Some(C::RemoveLeg(huge.clone())) }]), "changes[0].remove_leg"),
            (req("m", vec![pb::Change { change: Some(C::RemoveTrack("é".into())) }]), "changes[0].remove_track"),
            (with_rid(&huge), "changes[0].track.layers[0].rid"),
            (with_rid("h i"), "changes[0].track.layers[0].rid"),
            (with_rid("abcdefghijklmnopq"), "changes[0].track.layers[0].rid"),
            (with_mid(Some(3), "a\nb"), "changes[0].track.mid"),
            (with_mid(Some(3), "abcdefghijklmnopq"), "changes[0].track.mid"),
            (with_mid(Some(3), ""), "changes[0].track.mid"),
            (with_mid(None, "1"), "changes[0].track.mid_ext"),
            (with_mid(Some(15), "1"), "changes[0].track.mid_ext"),
            (keyed, "idempotency_key"),
        ];
        for (r, field) in cases {
            let e = refuse(&mut d, &r);
            assert_eq!((e.kind, e.field.as_str()), (ErrorKind::InvalidArgument, field), "{e}");
            let msg = e.to_string();
            assert!(msg.len() < 200 && !msg.chars().any(crate::text::is_unsafe_char), "{msg:?}");
        }
        for ok in ["meeting-1", "a.b:c@d/e_F", &"x".repeat(MAX_ID_LEN)] {
            d.apply(&req(ok, vec![leg("p")])).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        d.apply(&with_rid("hi-Q_1")).unwrap();
        d.apply(&with_mid(Some(3), "screen_1")).unwrap();
        // A reused key is echoed cut short.
        let mut a = pair("k");
        a.idempotency_key = "z".repeat(MAX_ID_LEN);
        d.apply(&a).unwrap();
        a.changes.pop();
        let e = refuse(&mut d, &a);
        assert!(e.message.len() < 150 && e.message.contains("…"), "{e}");
        // Reading or deleting a name that cannot exist is invalid, not just not found.
        let e = d.session_view("x\ny", &EdgeInfo::default()).unwrap_err();
        assert_eq!((e.kind, e.field.as_str()), (ErrorKind::InvalidArgument, "session"));
    }

    #[test]
    fn errors_name_the_field_and_have_the_right_kind() {
        let mut d = node();
        d.apply(&pair("m")).unwrap();
        let cases: Vec<(pb::ChangeSet, ErrorKind, &str)> = vec![
            (req("m", vec![leg("c"), sub("c", "nope", 5, 0, false)]), ErrorKind::NotFound, "changes[1].subscription.track"),
            (req("m", vec![sub("zz", "va", 5, 0, false)]), ErrorKind::NotFound, "changes[0].subscription.subscriber_leg"),
            (req("m", vec![video("v2", "ghost", 900)]), ErrorKind::NotFound, "changes[0].track.publisher_leg"),
            (req("m", vec![pb::Change { change: Some(C::RemoveLeg("ghost".into())) }]), ErrorKind::NotFound, "changes[0].remove_leg"),
            (req("m", vec![leg("c"), leg("d"), sub("a", "va", 5, 0, false)]), ErrorKind::InvalidArgument, "changes[2].subscription.subscriber_leg"),
            (req("m", vec![leg("c"), leg("d"), sub("c", "va", 5, 3, false)]), ErrorKind::InvalidArgument, "changes[2].subscription.target_layer"),
            (req("m", vec![video("v2", "a", 202)]), ErrorKind::InvalidArgument, "changes[0].track.layers[0].ssrc"),
            (req("m", vec![leg("c"), video("vc", "c", 300), sub("a", "vc", 1000, 0, false)]), ErrorKind::InvalidArgument, "changes[2].subscription.out_ssrc"),
            (req("", vec![leg("x")]), ErrorKind::InvalidArgument, "session"),
            (req("m", vec![]), ErrorKind::InvalidArgument, "changes"),
            (req("m", vec![pb::Change { change: None }]), ErrorKind::InvalidArgument, "changes[0]"),
        ];
        for (r, kind, field) in cases {
            let e = refuse(&mut d, &r);
            assert_eq!((e.kind, e.field.as_str()), (kind, field), "{e}");
        }
        // Bad key lengths for the profile.
        let mut bad = leg("k");
        if let Some(C::Leg(l)) = &mut bad.change {
            l.tx.as_mut().unwrap().key = vec![0; 32];
            l.rx.as_mut().unwrap().salt = vec![0; 12];
            l.rx.as_mut().unwrap().profile = pb::SrtpProfile::Aes128CmHmacSha180 as i32;
        }
        let e = refuse(&mut d, &req("m", vec![leg("c"), bad]));
        assert_eq!(e.field, "changes[1].leg.rx.salt", "{e}");
        assert!(e.message.contains("14-byte"), "{e}");
        // What the dataplane's tables refuse (SubscriptionSpec::validate) is refused here.
        let with = |edit: fn(&mut pb::Subscription)| {
            let mut c = sub("a", "vb", 1000, 0, false);
            if let Some(C::Subscription(s)) = &mut c.change {
                edit(s);
            }
            req("m", vec![c])
        };
        let nine = |s: &mut pb::Subscription| s.pt_map = (96..105).map(|pt| pb::IdMapping { from: pt, to: pt }).collect();
        for (r, field, why) in [
            (with(|s| s.pt_map.clear()), "changes[0].subscription.pt_map", "need 1 to 8 payload-type mappings"),
            (with(nine), "changes[0].subscription.pt_map", "need 1 to 8 payload-type mappings"),
            (
                with(|s| s.ext_map = (15..18).map(|id| pb::IdMapping { from: id, to: 1 }).collect()),
                "changes[0].subscription.ext_map",
                "extension maps hold at most 2 ids above 14 (two-byte form)",
            ),
        ] {
            let e = refuse(&mut d, &r);
            assert_eq!((e.kind, e.field.as_str(), e.message.as_str()), (ErrorKind::InvalidArgument, field, why), "{e}");
        }
        // Wrong expected revision.
        let mut r = req("m", vec![leg("c")]);
        r.expected_revision = Some(7);
        let e = refuse(&mut d, &r);
        assert_eq!((e.kind, e.field.as_str()), (ErrorKind::Aborted, "expected_revision"));
        r.expected_revision = Some(1);
        d.apply(&r).unwrap();
    }

    #[test]
    fn ports_run_out_and_come_back_when_a_session_is_deleted() {
        let mut d = node();
        let legs: Vec<_> = (0..10).map(|i| leg(&format!("l{i}"))).collect();
        d.apply(&req("big", legs)).unwrap();
        let e = refuse(&mut d, &req("other", vec![leg("x")]));
        assert_eq!((e.kind, e.field.as_str()), (ErrorKind::ResourceExhausted, "changes[0].leg"));
        d.delete_session(&pb::DeleteSessionRequest { session: "big".into(), expected_revision: Some(1) }).unwrap();
        assert!(d.ports_used().is_empty());
        let out = d.apply(&req("other", vec![leg("x")])).unwrap();
        assert_eq!(out.committed.ports.len(), 1);
        let e = d.delete_session(&pb::DeleteSessionRequest { session: "big".into(), expected_revision: None }).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound);
    }

    #[test]
    fn idempotency_keys_return_the_original_answer() {
        let mut d = node();
        let mut r = pair("m");
        r.idempotency_key = "k1".into();
        let first = d.apply(&r).unwrap();
        let again = d.apply(&r).unwrap();
        assert!(again.replayed);
        assert_eq!(again.committed, first.committed);
        assert_eq!(d.sessions["m"].revision, 1);
        let mut other = req("m", vec![leg("z")]);
        other.idempotency_key = "k1".into();
        let e = refuse(&mut d, &other);
        assert_eq!(e.field, "idempotency_key");
    }

    #[test]
    fn draining_refuses_new_sessions_only() {
        let mut d = node();
        d.apply(&pair("m")).unwrap();
        d.draining = true;
        let e = refuse(&mut d, &pair("n"));
        assert_eq!(e.kind, ErrorKind::FailedPrecondition);
        assert!(e.message.contains("draining"), "{e}");
        d.apply(&req("m", vec![leg("c")])).unwrap();
    }

    #[test]
    fn removing_a_leg_removes_its_tracks_and_subscriptions() {
        let mut d = node();
        d.apply(&pair("m")).unwrap();
        d.apply(&req("m", vec![pb::Change { change: Some(C::RemoveLeg("a".into())) }])).unwrap();
        let s = &d.sessions["m"];
        assert_eq!(s.legs.len(), 1);
        assert_eq!(s.tracks.len(), 1);
        assert_eq!(s.subscription_count(), 0);
        let view = d.session_view("m", &EdgeInfo::default()).unwrap();
        assert!(view.legs[0].rx.as_ref().unwrap().key.is_empty(), "keys never leave the node");
    }

    #[test]
    fn webrtc_legs_get_stable_unique_credentials_and_an_answer() {
        let web = |ufrag: &str| pb::Change {
            change: Some(C::Leg(pb::Leg {
                id: format!("w-{ufrag}"),
                webrtc: Some(pb::WebRtc {
                    remote_ice_ufrag: ufrag.into(),
                    remote_ice_pwd: "p".repeat(22),
                    remote_fingerprint: format!("sha-256 {}", vec!["AB"; 32].join(":")),
                    setup: pb::DtlsSetup::Passive as i32,
                }),
                ..Default::default()
            })),
        };
        let mut d = node();
        d.ice_secret = vec![7; 32];
        let mut again = d.clone();
        d.apply(&req("m", vec![web("peer1"), web("peer2")])).unwrap();
        again.apply(&req("m", vec![web("peer1"), web("peer2")])).unwrap();
        let legs = d.sessions["m"].legs.clone();
        let (e1, e2) = (legs["w-peer1"].edge.as_ref().unwrap(), legs["w-peer2"].edge.as_ref().unwrap());
        assert_ne!(e1.local, e2.local, "each leg has its own credentials");
        assert_eq!(e1.local, again.sessions["m"].legs["w-peer1"].edge.as_ref().unwrap().local, "a replay derives the same ones");
        assert!(e1.local.ufrag.len() >= 4 && e1.local.pwd.len() >= 22);
        assert_eq!(e1.role, DtlsRole::Server);
        // An ICE restart (new peer ufrag) gives the leg new credentials.
        let mut restart = web("peer3");
        if let Some(C::Leg(l)) = &mut restart.change {
            l.id = "w-peer1".into();
        }
        d.apply(&req("m", vec![restart])).unwrap();
        assert_ne!(d.sessions["m"].legs["w-peer1"].edge.as_ref().unwrap().local, e1.local);
        let info = EdgeInfo { ip: Some([192, 0, 2, 1].into()), fingerprint: "sha-256 00".into() };
        let w = webrtc_local(&d.sessions["m"].legs["w-peer2"], &info).unwrap();
        let port = d.sessions["m"].legs["w-peer2"].local_port;
        assert_eq!(w.candidates[0].candidate, format!("candidate:1 1 udp 2130706431 192.0.2.1 {port} typ host"));
        assert_eq!((w.fingerprint.as_str(), w.setup), ("sha-256 00", pb::DtlsSetup::Passive as i32));
    }
}
