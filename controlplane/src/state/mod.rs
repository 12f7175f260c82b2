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
    RateLimit, RtcpComponent, SpecError, SubscriptionSpec, TrackSpec, plain_rtp_allowed,
};

use crate::diff::{Part, SpecSet};
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
    /// A service the request needs (Redis) is unreachable.
    Unavailable,
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
    /// The first of the node's shared ports (`controlplane.shared_port_base`; `None`: no shared
    /// ports, and a leg asking for one is refused). See [`Placement::shared_ports`].
    #[serde(default)]
    pub shared_port_base: Option<u16>,
}

impl Default for Placement {
    fn default() -> Self {
        Self { workers: None, session_affinity_legs: DEFAULT_SESSION_AFFINITY_LEGS, shared_port_base: None }
    }
}

impl Placement {
    /// The worker count ports are spread over: `None` unless more than one worker.
    pub fn spread(&self) -> Option<u16> {
        self.workers.filter(|&w| w > 1)
    }

    /// The node's shared ports (`LegSpec::shared_port`): `shared_port_base` and the ports after
    /// it, one per worker (base ..= base + workers - 1: consecutive ports cover every residue
    /// of `port % workers`, so every worker owns one), just the base while the worker count is
    /// unknown. Never given to a leg as a port of its own.
    #[expect(clippy::reversed_empty_ranges, reason = "no shared ports: an empty range that contains nothing")]
    pub fn shared_ports(&self) -> std::ops::RangeInclusive<u16> {
        match self.shared_port_base {
            Some(b) => b..=b.saturating_add(self.workers.unwrap_or(1).max(1) - 1),
            None => 1..=0,
        }
    }

    /// The shared port of `worker` (the one with `port % workers == worker`), if configured.
    pub fn shared_port_of(&self, worker: u16) -> Option<u16> {
        let w = self.spread().unwrap_or(1);
        self.shared_ports().find(|p| p % w == worker % w)
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

/// `RecordingTap.ssrc_base` when the request leaves it 0.
pub const DEFAULT_TAP_SSRC_BASE: u32 = 0x7A90_0000;

/// A recording tap's own state (`pb::RecordingTap`): how it numbers its streams. Its
/// subscriptions are the session's, kept by the stage as tracks come and go (one per track of
/// the session; the tap publishes nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tap {
    /// The first out-SSRC.
    pub ssrc_base: u32,
    /// Streams numbered so far: the next track to join gets number `next` (never reused while
    /// the tap lasts).
    pub next: u32,
}

impl Tap {
    /// A tap numbering from `ssrc_base` (0: [`DEFAULT_TAP_SSRC_BASE`]).
    pub fn new(ssrc_base: u32) -> Self {
        Self { ssrc_base: if ssrc_base == 0 { DEFAULT_TAP_SSRC_BASE } else { ssrc_base }, next: 0 }
    }

    /// The next stream's out-SSRC: `ssrc_base + next` (mod 2³², 0 skipped), numbered.
    fn allocate(&mut self) -> Ssrc {
        loop {
            let s = self.ssrc_base.wrapping_add(self.next);
            self.next = self.next.wrapping_add(1);
            if s != 0 {
                return Ssrc(s);
            }
        }
    }
}

/// A recording tap's subscription to `track` on `out_ssrc`: the track as it arrives (its payload
/// types unmapped, at most [`sluice_core::table::MAX_PT_MAP`]; no header extensions, no RTX),
/// its highest layer as target, so the dataplane falls back to the best lower layer that flows.
fn tap_subscription(subscriber: LegId, track: &TrackSpec, out_ssrc: Ssrc) -> SubscriptionSpec {
    let mut pt_map: Vec<(Pt, Pt)> = Vec::new();
    for p in &track.payload_types {
        if pt_map.len() < sluice_core::table::MAX_PT_MAP && !pt_map.iter().any(|(f, _)| *f == p.pt) {
            pt_map.push((p.pt, p.pt));
        }
    }
    SubscriptionSpec {
        subscriber,
        track: track.id,
        out_ssrc,
        out_rtx_ssrc: None,
        pt_map,
        ext_map: Vec::new(),
        target_layer: track.layers.len().saturating_sub(1) as u8,
        paused: false,
        priority: 0,
        max_spatial: None,
        max_temporal: None,
        relay: Vec::new(),
    }
}

/// Whether a track is ranked audio (top-N audio replaces per-track subscriptions to it).
fn ranked(t: &NamedTrack) -> bool {
    t.spec.kind == MediaKind::Audio && t.spec.speaker_group.is_some()
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
    /// Recording taps by leg name (their subscriptions are in `subs`).
    #[serde(default)]
    pub taps: BTreeMap<String, Tap>,
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
        self.taps.remove(name);
        let tracks: Vec<String> = self.tracks.iter().filter(|(_, t)| t.publisher == name).map(|(n, _)| n.clone()).collect();
        for t in &tracks {
            self.remove_track(t);
        }
        tracks
    }

    fn compile_into(&self, t: &mut SpecSet) {
        for l in self.legs.values() {
            t.legs.insert(l.id, self.compile_leg(l));
        }
        for tr in self.tracks.values() {
            t.tracks.insert(tr.spec.id, tr.spec.clone());
        }
        for (leg, subs) in &self.subs {
            for (track, sub) in subs {
                if self.installs(leg, track) {
                    t.subs.insert((sub.subscriber, sub.track), sub.clone());
                }
            }
        }
    }

    /// What the dataplane gets of leg `l`: it keeps the slots it asked for; the dataplane gets
    /// the session's first N, and none while the session has top-N audio off.
    fn compile_leg(&self, l: &LegSpec) -> LegSpec {
        let mut l = l.clone();
        l.audio_slots = l.audio_slots.filter(|_| self.settings.top_n_audio).map(|mut a| {
            a.out_ssrcs.truncate(usize::from(self.settings.top_n()));
            a
        });
        l
    }

    /// Whether leg `leg`'s subscription to track `track` is installed. With top-N audio on, a
    /// leg with slots hears the ranked speakers through them: its per-track subscriptions to
    /// ranked audio stay in the desired state (they come back when top-N goes off) but are not
    /// installed, or it would hear them twice.
    fn installs(&self, leg: &str, track: &str) -> bool {
        !(self.settings.top_n_audio && self.legs.get(leg).is_some_and(|l| l.audio_slots.is_some()) && self.tracks.get(track).is_some_and(ranked))
    }

    /// Number of subscriptions.
    pub fn subscription_count(&self) -> usize {
        self.subs.values().map(BTreeMap::len).sum()
    }

    /// The streams recording tap `leg` receives, by track id: the order the tracks were created
    /// (none if it is not a tap).
    pub fn tap_streams(&self, leg: &str) -> Vec<pb::TapStream> {
        let Some(subs) = self.subs.get(leg).filter(|_| self.taps.contains_key(leg)) else { return Vec::new() };
        let mut out: Vec<(TrackId, pb::TapStream)> = subs
            .iter()
            .filter_map(|(name, sub)| {
                let t = self.tracks.get(name)?;
                Some((
                    t.spec.id,
                    pb::TapStream {
                        track: name.clone(),
                        publisher_leg: t.publisher.clone(),
                        kind: kind_to_pb(t.spec.kind) as i32,
                        out_ssrc: sub.out_ssrc.0,
                        clock_rate: t.spec.clock_rate,
                        payload_types: t
                            .spec
                            .payload_types
                            .iter()
                            .filter(|p| sub.pt_map.iter().any(|(f, _)| *f == p.pt))
                            .map(|p| pb::PayloadType { pt: u32::from(p.pt.0), codec: codec_to_pb(p.codec) as i32, rtx_pt: None })
                            .collect(),
                    },
                ))
            })
            .collect();
        out.sort_by_key(|(id, _)| *id);
        out.into_iter().map(|(_, s)| s).collect()
    }
}

/// The protobuf media kind for a core one.
fn kind_to_pb(k: MediaKind) -> pb::MediaKind {
    match k {
        MediaKind::Audio => pb::MediaKind::Audio,
        MediaKind::Video => pb::MediaKind::Video,
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

/// One reversible step of a change set applied in place: what the entry it changed was before.
#[derive(Clone, Debug)]
enum Step {
    Leg(String, Option<LegSpec>),
    Track(String, Option<NamedTrack>),
    Sub(String, String, Option<SubscriptionSpec>),
    /// A leg's recording-tap state (its subscriptions are `Sub` steps of their own).
    Tap(String, Option<Tap>),
    Settings(Settings),
    Revision(u64),
    /// An idempotency record was pushed at the back.
    Remembered,
    /// The oldest idempotency record was dropped from the front.
    Forgot(IdempotencyEntry),
}

/// How to take one committed change set back ([`Desired::restore`]): the steps it made to its
/// session, in order (the size of the change, not of the session), and the id/port counters
/// and per-worker cursors as they were.
#[derive(Clone, Debug)]
pub struct Undo {
    session: String,
    /// The session did not exist before.
    created: bool,
    steps: Vec<Step>,
    counters: (u32, u32, u16),
    cursors: Vec<u16>,
}

impl Undo {
    /// What the change touched ([`Touched`]), for the link and the names.
    pub fn touched(&self) -> Touched {
        let mut t = Touched::default();
        for step in &self.steps {
            match step {
                Step::Leg(name, was) => t.legs.entry(name.clone()).or_default().extend(was.as_ref().map(|l| l.id)),
                Step::Track(name, was) => t.tracks.entry(name.clone()).or_default().extend(was.as_ref().map(|tr| tr.spec.id)),
                Step::Sub(leg, track, was) => {
                    t.subs.entry((leg.clone(), track.clone())).or_default().extend(was.as_ref().map(|s| (s.subscriber, s.track)));
                }
                Step::Settings(_) => t.whole = true,
                // Not in the dataplane's tables: what a tap changes there are its subscriptions.
                Step::Tap(..) | Step::Revision(_) | Step::Remembered | Step::Forgot(_) => {}
            }
        }
        t
    }

    /// The session the change set was applied to.
    pub fn session(&self) -> &str {
        &self.session
    }

    /// The local ports (RTP and RTCP) legs the change touched hold in `d` and did not hold
    /// before it: the ports the change gave out (shared ports are not given out).
    pub fn new_ports(&self, d: &Desired) -> BTreeSet<u16> {
        let Some(s) = d.sessions.get(&self.session) else { return BTreeSet::new() };
        let mut had = BTreeSet::new();
        let mut names = BTreeSet::new();
        for step in &self.steps {
            if let Step::Leg(name, was) = step {
                had.extend(was.iter().flat_map(LegSpec::ports));
                names.insert(name.as_str());
            }
        }
        // A shared port is the dataplane's own once a leg uses it (binding it would fail for
        // that reason), and it is not picked among others: it is not a port the change gave out.
        names.into_iter().filter_map(|n| s.legs.get(n)).filter(|l| !l.shared_port).flat_map(LegSpec::ports).filter(|p| !had.contains(p)).collect()
    }
}

/// The entries of one session that committed changes touched, by name, with the ids they had
/// before (an entry removed, or removed and made again, had an id the session no longer
/// shows): the only entries whose tables can differ from what the dataplane was last given, so
/// the link diffs these and nothing else of the node ([`Desired::compile_touched`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Touched {
    /// Every entry of the session (its settings changed, or it was deleted).
    pub whole: bool,
    /// Legs.
    pub legs: BTreeMap<String, BTreeSet<LegId>>,
    /// Tracks.
    pub tracks: BTreeMap<String, BTreeSet<TrackId>>,
    /// Subscriptions by (subscriber leg, track).
    pub subs: BTreeMap<(String, String), BTreeSet<(LegId, TrackId)>>,
}

impl Touched {
    /// Adds what `other` touched.
    pub fn merge(&mut self, other: Touched) {
        self.whole |= other.whole;
        for (k, v) in other.legs {
            self.legs.entry(k).or_default().extend(v);
        }
        for (k, v) in other.tracks {
            self.tracks.entry(k).or_default().extend(v);
        }
        for (k, v) in other.subs {
            self.subs.entry(k).or_default().extend(v);
        }
    }

    /// Every entry `session` has, as a change removing them all touches them.
    pub fn all_of(session: &Session) -> Self {
        let mut t = Touched { whole: true, ..Default::default() };
        for (n, l) in &session.legs {
            t.legs.insert(n.clone(), BTreeSet::from([l.id]));
        }
        for (n, tr) in &session.tracks {
            t.tracks.insert(n.clone(), BTreeSet::from([tr.spec.id]));
        }
        for (leg, subs) in &session.subs {
            for (track, s) in subs {
                t.subs.insert((leg.clone(), track.clone()), BTreeSet::from([(s.subscriber, s.track)]));
            }
        }
        t
    }
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
    /// Which session holds each leg port, and which leg each remote of a shared port (derived,
    /// never in a snapshot; see [`PortIndex`]).
    #[serde(skip)]
    port_index: PortIndex,
}

/// Which session holds each local port (RTP and separate RTCP): derived from the sessions and
/// kept in step by every change (each leg a change set puts or takes, as it is staged), so an
/// Apply checks a port against the node, its own session included, in O(log n) instead of
/// collecting ports (which made each Apply cost its session's size or the node's, and
/// programming a big webinar quadratic); it also counts each session's legs per worker. A
/// shared port is many sessions' at once: the index counts its legs, and names the leg of
/// each (shared port, remote), which must be one (the dataplane tells a shared port's legs
/// apart by remote). A state loaded from a snapshot has none until [`Desired::reindex`] (the
/// first change builds it).
#[derive(Clone, Debug, Default)]
struct PortIndex {
    /// Ports of one leg each: the session holding it.
    owner: BTreeMap<u16, String>,
    /// Shared ports: how many legs use each.
    shared: BTreeMap<u16, u32>,
    /// The (shared port, remote)s legs have: (session, leg).
    remotes: BTreeMap<(u16, SocketAddr), (String, String)>,
    built: bool,
    /// With [`Placement::spread`], the legs on each worker (by their RTP port; index: the
    /// worker), over every session; empty otherwise.
    legs: Vec<u32>,
    /// With [`Placement::spread`], the same per session.
    per_session: BTreeMap<String, Vec<u32>>,
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
        Self {
            owner: BTreeMap::new(),
            shared: BTreeMap::new(),
            remotes: BTreeMap::new(),
            built: true,
            legs: vec![0; spread.map_or(0, usize::from)],
            per_session: BTreeMap::new(),
        }
    }

    fn add(&mut self, name: &str, s: &Session) {
        for (leg, l) in &s.legs {
            self.add_leg(name, leg, l);
        }
    }

    fn remove(&mut self, name: &str, s: Option<&Session>) {
        for (leg, l) in s.into_iter().flat_map(|s| &s.legs) {
            self.remove_leg(name, leg, l);
        }
        self.per_session.remove(name);
    }

    /// Counts leg `l` (named `leg`) of session `name` in.
    fn add_leg(&mut self, name: &str, leg: &str, l: &LegSpec) {
        if !self.built {
            return;
        }
        if l.shared_port {
            *self.shared.entry(l.local_port).or_default() += 1;
            if let Some(r) = l.remote {
                self.remotes.insert((l.local_port, r), (name.to_owned(), leg.to_owned()));
            }
        } else {
            for p in l.ports() {
                self.owner.insert(p, name.to_owned());
            }
        }
        self.count(name, l.local_port, true);
    }

    /// Counts leg `l` (named `leg`) of session `name` out.
    fn remove_leg(&mut self, name: &str, leg: &str, l: &LegSpec) {
        if !self.built {
            return;
        }
        if l.shared_port {
            if let Some(n) = self.shared.get_mut(&l.local_port) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.shared.remove(&l.local_port);
                }
            }
            if let Some(r) = l.remote
                && self.remotes.get(&(l.local_port, r)).is_some_and(|(s, o)| s == name && o == leg)
            {
                self.remotes.remove(&(l.local_port, r));
            }
        } else {
            for p in l.ports() {
                if self.owner.get(&p).is_some_and(|o| o == name) {
                    self.owner.remove(&p);
                }
            }
        }
        self.count(name, l.local_port, false);
    }

    /// Whether a leg holds `port` (its own, or shared).
    fn holds(&self, port: u16) -> bool {
        self.owner.contains_key(&port) || self.shared.contains_key(&port)
    }

    /// The session whose leg has `port` as a port of its own.
    fn owner_alone(&self, port: u16) -> Option<&str> {
        self.owner.get(&port).map(String::as_str)
    }

    /// The (session, leg) whose leg on shared port `port` has remote `remote`.
    fn remote_owner(&self, port: u16, remote: SocketAddr) -> Option<(&str, &str)> {
        self.remotes.get(&(port, remote)).map(|(s, l)| (s.as_str(), l.as_str()))
    }

    /// Session `name`'s legs per worker (none counted: empty).
    fn session_legs(&self, name: &str) -> &[u32] {
        self.per_session.get(name).map_or(&[], Vec::as_slice)
    }

    /// Counts a leg of session `name` on RTP port `port` in (`up`) or out of its worker's legs.
    fn count(&mut self, name: &str, port: u16, up: bool) {
        let Some(w) = u16::try_from(self.legs.len()).ok().filter(|&w| w > 1) else { return };
        let bump = |n: &mut u32| *n = if up { n.saturating_add(1) } else { n.saturating_sub(1) };
        let i = usize::from(port % w);
        if let Some(n) = self.legs.get_mut(i) {
            bump(n);
        }
        let mine = match self.per_session.get_mut(name) {
            Some(m) => m,
            None => self.per_session.entry(name.to_owned()).or_insert_with(|| vec![0; usize::from(w)]),
        };
        if let Some(n) = mine.get_mut(i) {
            bump(n);
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
        self.port_index = self.built_index();
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

    /// Legs holding one of the node's shared ports ([`Placement::shared_ports`]) as a port of
    /// their own (session, leg, port): given out before the shared ports were configured or the
    /// worker count grew. While one holds it, legs asking for that worker's shared port are
    /// refused (FAILED_PRECONDITION).
    pub fn shared_port_conflicts(&self) -> Vec<(String, String, u16)> {
        let shared = self.placement.shared_ports();
        let mut out = Vec::new();
        for (s, sess) in &self.sessions {
            for (l, spec) in sess.legs.iter().filter(|(_, l)| !l.shared_port) {
                out.extend(spec.ports().filter(|p| shared.contains(p)).map(|p| (s.clone(), l.clone(), p)));
            }
        }
        out
    }

    /// Applies a change set atomically: on any error nothing changes.
    pub fn apply(&mut self, req: &pb::ChangeSet) -> Result<Outcome, StateError> {
        self.apply_avoiding(req, &BTreeSet::new())
    }

    /// [`Desired::apply`], never giving a new leg a port of `avoid` (ports another process held
    /// when the change was accepted: journaled with it, so its replay allocates the same ports).
    pub fn apply_avoiding(&mut self, req: &pb::ChangeSet, avoid: &BTreeSet<u16>) -> Result<Outcome, StateError> {
        self.apply_undoable(req, avoid).map(|(outcome, _)| outcome)
    }

    /// A stage for a change of `name`, whose new legs get no port of `avoid`: `session` (taken
    /// out of the state, or a new one) is changed in place, every step logged, and `index` kept
    /// in step with its legs.
    fn stage<'a>(&'a self, name: &'a str, session: Session, index: &'a mut PortIndex, avoid: &'a BTreeSet<u16>) -> Stage<'a> {
        Stage {
            session,
            name,
            next_leg: self.next_leg,
            next_track: self.next_track,
            next_port: self.next_port,
            range: self.ports,
            spread: self.placement.spread().map(|workers| Spread { workers, session_affinity_legs: self.placement.session_affinity_legs }),
            placement: self.placement,
            cursors: self.cursors.clone(),
            index,
            avoid,
            steps: Vec::new(),
            subs_added: 0,
            named_subs: BTreeMap::new(),
            ports: Vec::new(),
            events: Vec::new(),
            ice_secret: &self.ice_secret,
        }
    }

    /// The port index as every session makes it.
    fn built_index(&self) -> PortIndex {
        let mut index = PortIndex::new(self.placement.spread());
        for (name, s) in &self.sessions {
            index.add(name, s);
        }
        index
    }

    /// New local ports for `leg` of `session`, whose own the dataplane could not open: the RTP
    /// port as a new leg's would be chosen, avoiding `avoid` and every port a leg holds, and
    /// for a leg with a separate RTCP component its RTCP port (the RTP port + 1 when free).
    /// Changes nothing; [`Desired::move_leg`] does. (A rare path: it copies the session and the
    /// port index.)
    pub fn ports_for_move(&self, session: &str, leg: &str, avoid: &BTreeSet<u16>) -> Result<(u16, Option<u16>), StateError> {
        let Some(spec) = self.sessions.get(session).and_then(|s| s.legs.get(leg)) else {
            return Err(err(ErrorKind::NotFound, "leg", format!("no leg {} in session {}", quote(leg), quote(session))));
        };
        if spec.shared_port {
            return Err(shared_cannot_move(leg));
        }
        // The stage's session still holds the leg, so its current ports count as taken.
        let mut index = if self.port_index.built { self.port_index.clone() } else { self.built_index() };
        let mut stage = self.stage(session, self.sessions.get(session).cloned().unwrap_or_default(), &mut index, avoid);
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
        if spec.shared_port {
            return Err(shared_cannot_move(leg));
        }
        let old = spec.clone();
        spec.local_port = port;
        if let (Some(c), Some(p)) = (spec.rtcp.as_deref_mut(), rtcp_port) {
            c.local_port = p;
        }
        self.port_index.remove_leg(session, leg, &old);
        self.port_index.add_leg(session, leg, spec);
        for e in &mut s.idempotency {
            for (name, p) in &mut e.committed.ports {
                if name == leg {
                    *p = port;
                }
            }
        }
        let spread = self.placement.spread();
        advance_cursors(self.ports, spread, &mut self.next_port, &mut self.cursors, port);
        Ok(())
    }

    /// Ports of the legs `session` has now (none for a new session).
    pub fn session_ports(&self, session: &str) -> BTreeSet<u16> {
        self.sessions.get(session).map(|s| s.legs.values().flat_map(LegSpec::ports).collect()).unwrap_or_default()
    }

    /// [`Desired::apply_avoiding`], also returning how to take the change back
    /// ([`Desired::restore`]) and, through it, what it touched. The change set is applied to its
    /// session in place, each step logged: the cost is the change's size (and what cascades
    /// from it), not the session's or the node's.
    pub fn apply_undoable(&mut self, req: &pb::ChangeSet, avoid: &BTreeSet<u16>) -> Result<(Outcome, Undo), StateError> {
        check_id("session", &req.session)?;
        if !req.idempotency_key.is_empty() {
            check_id("idempotency_key", &req.idempotency_key)?;
        }
        let fingerprint = fingerprint(&prost::Message::encode_to_vec(req));
        let existing = self.sessions.get(&req.session);
        let undo = |d: &Self, created| Undo {
            session: req.session.clone(),
            created,
            steps: Vec::new(),
            counters: (d.next_leg, d.next_track, d.next_port),
            cursors: d.cursors.clone(),
        };
        if !req.idempotency_key.is_empty()
            && let Some(e) = existing.and_then(|s| s.idempotency.iter().find(|e| e.key == req.idempotency_key))
        {
            if e.fingerprint != fingerprint {
                return Err(invalid("idempotency_key", format!("key {} was already used for a different change set", quote(&req.idempotency_key))));
            }
            let outcome = Outcome { session: req.session.clone(), committed: e.committed.clone(), events: Vec::new(), replayed: true };
            return Ok((outcome, undo(self, false)));
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
        let created = existing.is_none();
        if !self.port_index.built {
            self.reindex();
        }
        let mut out = undo(self, created);
        let (old_legs, session) = match self.sessions.remove(&req.session) {
            Some(s) => (s.legs.len(), s),
            None => (0, Session::default()),
        };
        let mut index = std::mem::take(&mut self.port_index);
        let mut stage = self.stage(&req.session, session, &mut index, avoid);
        let decoded = req.changes.iter().enumerate().try_for_each(|(i, change)| stage.change(i, change));
        let checked = decoded.and_then(|()| self.check_quotas(&req.session, out.created, old_legs, &stage));
        if let Err(e) = checked {
            let Stage { mut session, steps, .. } = stage;
            undo_steps(&mut session, &mut index, &req.session, steps);
            if out.created {
                index.per_session.remove(&req.session);
            } else {
                self.sessions.insert(req.session.clone(), session);
            }
            self.port_index = index;
            return Err(e);
        }
        let Stage { mut session, next_leg, next_track, next_port, cursors, ports, mut events, mut steps, .. } = stage;
        self.port_index = index;
        steps.push(Step::Revision(session.revision));
        session.revision = current + 1;
        let committed = Committed { revision: session.revision, ports };
        if !req.idempotency_key.is_empty() {
            if session.idempotency.len() >= IDEMPOTENCY_KEYS_KEPT
                && let Some(e) = session.idempotency.pop_front()
            {
                steps.push(Step::Forgot(e));
            }
            session.idempotency.push_back(IdempotencyEntry { key: req.idempotency_key.clone(), fingerprint, committed: committed.clone() });
            steps.push(Step::Remembered);
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
        (self.next_leg, self.next_track, self.next_port, self.cursors) = (next_leg, next_track, next_port, cursors);
        self.sessions.insert(req.session.clone(), session);
        out.steps = steps;
        Ok((Outcome { session: req.session.clone(), committed, events, replayed: false }, out))
    }

    /// Refuses a change set that would take the node over a quota with what it adds: a new
    /// session, more legs, more subscriptions. (The other sessions are counted only when this one
    /// grows against a quota that is set.)
    fn check_quotas(&self, name: &str, created: bool, old_legs: usize, staged: &Stage<'_>) -> Result<(), StateError> {
        let q = self.quotas;
        if created && self.sessions.len() >= q.sessions {
            return Err(err(ErrorKind::ResourceExhausted, "session", format!("the node holds {} sessions, its quota (max_sessions)", self.sessions.len())));
        }
        let new_legs = staged.session.legs.len();
        if new_legs <= old_legs && staged.subs_added <= 0 {
            return Ok(());
        }
        // The session being changed is out of `sessions` while it is staged.
        let others = self.sessions.iter().filter(|(n, _)| n.as_str() != name);
        if new_legs > old_legs && q.legs != usize::MAX {
            let legs = others.clone().map(|(_, s)| s.legs.len()).sum::<usize>() + new_legs;
            if legs > q.legs {
                return Err(err(ErrorKind::ResourceExhausted, "changes", format!("the node would hold {legs} legs, over its quota of {} (max_legs)", q.legs)));
            }
        }
        if staged.subs_added > 0 && q.subscriptions != usize::MAX {
            let subs = others.map(|(_, s)| s.subscription_count()).sum::<usize>() + staged.session.subscription_count();
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

    /// Takes a change set back ([`Desired::apply_undoable`]): its session's steps undone in
    /// reverse, the id/port counters and cursors as they were. Restore several in the reverse
    /// order they were applied.
    pub fn restore(&mut self, undo: Undo) {
        if let Some(mut s) = self.sessions.remove(&undo.session) {
            undo_steps(&mut s, &mut self.port_index, &undo.session, undo.steps);
            if undo.created {
                self.port_index.remove(&undo.session, Some(&s));
            } else {
                self.sessions.insert(undo.session, s);
            }
        }
        (self.next_leg, self.next_track, self.next_port) = undo.counters;
        self.cursors = undo.cursors;
    }

    /// What the dataplane should have of the entries of `session` that `touched` names (by
    /// their ids, old and current), added to `part`: the keys it diffs and their specs now
    /// (a key without a spec is to be removed). A touched leg brings its subscriptions (its
    /// audio slots decide whether those to ranked audio are installed), a touched track with
    /// top-N audio on the subscriptions to it; a session whose settings changed, or that is
    /// gone, brings everything.
    pub fn compile_touched(&self, session: &str, touched: &Touched, part: &mut Part) {
        part.legs.extend(touched.legs.values().flatten());
        part.tracks.extend(touched.tracks.values().flatten());
        part.subs.extend(touched.subs.values().flatten());
        let Some(s) = self.sessions.get(session) else { return };
        let add_sub = |part: &mut Part, leg: &str, track: &str| {
            if let Some(sub) = s.subs.get(leg).and_then(|m| m.get(track)) {
                part.subs.insert((sub.subscriber, sub.track));
                if s.installs(leg, track) {
                    part.desired.subs.insert((sub.subscriber, sub.track), sub.clone());
                }
            }
        };
        let add_leg = |part: &mut Part, l: &LegSpec| {
            part.legs.insert(l.id);
            part.desired.legs.insert(l.id, s.compile_leg(l));
        };
        let add_track = |part: &mut Part, t: &NamedTrack| {
            part.tracks.insert(t.spec.id);
            part.desired.tracks.insert(t.spec.id, t.spec.clone());
        };
        if touched.whole {
            for l in s.legs.values() {
                add_leg(part, l);
            }
            for t in s.tracks.values() {
                add_track(part, t);
            }
            for (leg, subs) in &s.subs {
                for track in subs.keys() {
                    add_sub(part, leg, track);
                }
            }
            return;
        }
        for name in touched.legs.keys() {
            if let Some(l) = s.legs.get(name) {
                add_leg(part, l);
            }
            for track in s.subs.get(name).into_iter().flat_map(BTreeMap::keys) {
                add_sub(part, name, track);
            }
        }
        for name in touched.tracks.keys() {
            if let Some(t) = s.tracks.get(name) {
                add_track(part, t);
            }
            if s.settings.top_n_audio {
                for (leg, subs) in &s.subs {
                    if subs.contains_key(name) {
                        add_sub(part, leg, name);
                    }
                }
            }
        }
        for (leg, track) in touched.subs.keys() {
            add_sub(part, leg, track);
        }
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

    /// Every recording tap of `session` with its streams (none when the session does not exist).
    pub fn tap_streams(&self, session: &str) -> Vec<pb::TapStreams> {
        let Some(s) = self.sessions.get(session) else { return Vec::new() };
        s.taps.keys().map(|leg| pb::TapStreams { leg: leg.clone(), streams: s.tap_streams(leg) }).collect()
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
                    shared_port: l.shared_port,
                    cascade: l.cascade,
                    rx: (l.edge.is_none() && !l.plain_rtp).then(|| key(&l.rx)),
                    tx: (l.edge.is_none() && !l.plain_rtp).then(|| key(&l.tx)),
                    tap: s.taps.get(n).map(|t| pb::RecordingTap { ssrc_base: t.ssrc_base, streams: s.tap_streams(n) }),
                    plain_rtp: l.plain_rtp,
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
                    kind: kind_to_pb(t.spec.kind) as i32,
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
                    relay_layers: sub.relay.iter().map(|&(s, r)| pb::RelayLayer { out_ssrc: s.0, out_rtx_ssrc: r.map(|r| r.0) }).collect(),
                })
                .collect(),
            active_speakers: None,
            live: Vec::new(),
            settings: Some(pb::SessionSettings { top_n_audio: s.settings.top_n_audio, audio_top_n: u32::from(s.settings.audio_top_n) }),
        })
    }
}

/// A leg on a shared port keeps it: the port is the worker's, other legs use it, and
/// nothing else would be shared.
fn shared_cannot_move(leg: &str) -> StateError {
    err(ErrorKind::FailedPrecondition, "leg", format!("leg {} is on a shared port: it cannot move to another port", quote(leg)))
}

/// Takes `steps` back on `session` (named `name`), last first, keeping `index` in step with its
/// legs.
fn undo_steps(session: &mut Session, index: &mut PortIndex, name: &str, steps: Vec<Step>) {
    for step in steps.into_iter().rev() {
        match step {
            Step::Leg(n, was) => {
                if let Some(now) = session.legs.remove(&n) {
                    index.remove_leg(name, &n, &now);
                }
                if let Some(was) = was {
                    index.add_leg(name, &n, &was);
                    session.legs.insert(n, was);
                }
            }
            Step::Track(n, was) => match was {
                Some(was) => {
                    session.tracks.insert(n, was);
                }
                None => {
                    session.tracks.remove(&n);
                }
            },
            Step::Sub(leg, track, was) => match was {
                Some(was) => {
                    session.subs.entry(leg).or_default().insert(track, was);
                }
                None => {
                    if let Some(m) = session.subs.get_mut(&leg) {
                        m.remove(&track);
                        if m.is_empty() {
                            session.subs.remove(&leg);
                        }
                    }
                }
            },
            Step::Tap(n, was) => match was {
                Some(was) => {
                    session.taps.insert(n, was);
                }
                None => {
                    session.taps.remove(&n);
                }
            },
            Step::Settings(was) => session.settings = was,
            Step::Revision(was) => session.revision = was,
            Step::Remembered => {
                session.idempotency.pop_back();
            }
            Step::Forgot(e) => session.idempotency.push_front(e),
        }
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
mod shared_port_tests;

#[cfg(test)]
mod tap_tests;

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
        let info = EdgeInfo { ip: Some([192, 0, 2, 1].into()), fingerprint: "sha-256 00".into(), ice_tcp_port: None };
        let w = webrtc_local(&d.sessions["m"].legs["w-peer2"], &info).unwrap();
        let port = d.sessions["m"].legs["w-peer2"].local_port;
        assert_eq!(w.candidates[0].candidate, format!("candidate:1 1 udp 2130706431 192.0.2.1 {port} typ host"));
        assert_eq!(w.candidates.len(), 1);
        assert_eq!((w.fingerprint.as_str(), w.setup), ("sha-256 00", pb::DtlsSetup::Passive as i32));
        // With ICE-TCP, the node's passive TCP candidate follows the UDP one.
        let w = webrtc_local(&d.sessions["m"].legs["w-peer2"], &EdgeInfo { ice_tcp_port: Some(4443), ..info }).unwrap();
        assert_eq!(w.candidates[1].candidate, "candidate:2 1 tcp 1518280447 192.0.2.1 4443 typ host tcptype passive");
    }
}
