//! The SSRC rewrite tables: legs, published tracks with their layers, and subscriptions — the
//! specs the control plane sent, plus the per-stream state the packet path keeps (SRTP contexts,
//! rewriters, retransmission caches).
//!
//! Tables change only through [`Tables::apply`] with a versioned [`Delta`], between batches, so a
//! batch of packets always sees one table version. A delta is atomic: each op is validated against
//! the state left by the ops before it (so cascades and uniqueness are checked exactly), every
//! mutation records its inverse in an undo log, and the first invalid op rolls the whole delta
//! back. Upserts keep runtime state (ROC, replay windows, rewriters, caches) wherever the keys or
//! SSRCs did not change, which is what makes pause/resume and layer changes hitless.
//!
//! Ownership: a subscription lives inside its track (`Track::subs`), so the fan-out walks one
//! contiguous vector; a leg keeps an index of the out-SSRCs it receives so its feedback finds the
//! subscription.
//!
//! Files, by the kind of state: `spec` (what the control plane said, and the one validation both
//! processes use), `state` (what the packet path keeps), `apply` (how deltas apply and roll back),
//! `runtime` (the one update path for state learned at run time: learned SSRCs, DTLS keys, ICE
//! consent; the controllers' decisions, such as a subscription's allocated layer cap, are fields
//! of the state they gate).

mod apply;
pub mod checkpoint;
#[cfg(feature = "serde")]
pub mod checkpoint_file;
mod runtime;
pub mod spec;
mod state;

pub use state::{
    Activity, DdStructures, EdgeState, Ingress, LayerRate, LayerState, Leg, LegStats, Limiter, MAX_SPATIAL, SLOW_PATH_BURST, SLOW_PATH_RATE, Subscription,
    Track,
};

use std::collections::HashMap;
use std::net::SocketAddr;

use foldhash::fast::RandomState;

use crate::downlink::Downlink;
use crate::forward::rewrite::SeqTsRewriter;
use crate::forward::rtx_cache::RtxCache;
use crate::ids::{Generation, LegId, Pt, Ssrc, TrackId};
use crate::srtp::{RtcpRecvState, RtcpSendState, RtpRecvState, RtpSendState, SrtpKeys};
use crate::time::Instant;
use crate::uplink::{RecvStats, Uplink};
use crate::wire::rtp::ExtensionIdMap;
pub use spec::{
    AudioSlotsSpec, Codec, Delta, DtlsRole, EdgeSpec, FeedbackSpec, IceCredentials, KeyDigest, KeyMaterial, LayerSpec, LegSpec, MAX_AUDIO_SLOTS, MAX_MID_LEN,
    MediaKind, MidSpec, Op, PayloadSpec, RateLimit, RtcpComponent, SpecError, SubscriptionSpec, TrackSpec, plain_rtp_allowed,
};

/// The hash map the tables use: foldhash, seeded per process (keys come from the network, so the
/// hasher must not be predictable).
pub type Map<K, V> = HashMap<K, V, RandomState>;

/// The legs by id, each boxed (a leg is a few KB: inline, a grown table's empty buckets would
/// cost as much).
pub type Legs = Map<LegId, Box<Leg>>;

/// How many payload-type mappings a subscription holds (media + RTX for a few codecs).
pub const MAX_PT_MAP: usize = 8;
/// How many SRTCP senders a leg keeps replay state for.
const MAX_RTCP_SENDERS: usize = 8;
/// How many removed subscriptions' stream state a subscriber leg keeps (by out-SSRC) to resume
/// them if they come back.
pub const MAX_RETIRED_STREAMS: usize = 16;

/// Why a delta was refused. The whole delta was rolled back; the tables are as before it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeltaError {
    /// The delta's generation does not follow the tables' (a full snapshot is needed).
    #[error("generation {got} does not follow the current generation {current}; resync needed")]
    Generation {
        /// The tables' generation.
        current: Generation,
        /// The delta's.
        got: Generation,
    },
    /// An op names a leg that does not exist.
    #[error("op {op}: unknown leg {leg}")]
    UnknownLeg {
        /// Index of the op in the delta.
        op: usize,
        /// The leg.
        leg: LegId,
    },
    /// An op names a track that does not exist.
    #[error("op {op}: unknown track {track}")]
    UnknownTrack {
        /// Index of the op in the delta.
        op: usize,
        /// The track.
        track: TrackId,
    },
    /// An op removes a subscription that does not exist.
    #[error("op {op}: leg {subscriber} has no subscription to track {track}")]
    UnknownSubscription {
        /// Index of the op in the delta.
        op: usize,
        /// The subscriber.
        subscriber: LegId,
        /// The track.
        track: TrackId,
    },
    /// Another leg already uses the local port.
    #[error("op {op}: local port {port} already belongs to leg {owner}")]
    PortInUse {
        /// Index of the op in the delta.
        op: usize,
        /// The port.
        port: u16,
        /// The leg that has it.
        owner: LegId,
    },
    /// On a shared port, another leg already has the remote address (`leg.remote`, or the one
    /// ICE selected): a datagram from it could not tell the two legs apart.
    #[error("op {op}: leg.remote {remote} on shared port {port} already belongs to leg {owner}")]
    RemoteInUse {
        /// Index of the op in the delta.
        op: usize,
        /// The shared port.
        port: u16,
        /// The remote address.
        remote: SocketAddr,
        /// The leg that has it.
        owner: LegId,
    },
    /// An SSRC is used twice where it must be unique (publisher SSRCs on one leg, out-SSRCs on one
    /// subscriber leg).
    #[error("op {op}: ssrc {ssrc} is already used on leg {leg}")]
    DuplicateSsrc {
        /// Index of the op in the delta.
        op: usize,
        /// The leg.
        leg: LegId,
        /// The SSRC.
        ssrc: Ssrc,
    },
    /// A leg may not subscribe to its own track.
    #[error("op {op}: leg {leg} cannot subscribe to its own track {track}")]
    SelfSubscription {
        /// Index of the op in the delta.
        op: usize,
        /// The leg.
        leg: LegId,
        /// The track.
        track: TrackId,
    },
    /// A spec field is out of range; `field` names it (the spec's own `validate` said so, or a
    /// check against the tables' state).
    #[error("op {op}: invalid {field}: {why}")]
    Invalid {
        /// Index of the op in the delta.
        op: usize,
        /// The field, as `spec.field`.
        field: &'static str,
        /// What is wrong.
        why: &'static str,
    },
}

impl DeltaError {
    fn invalid(op: usize, e: SpecError) -> Self {
        DeltaError::Invalid { op, field: e.field, why: e.why }
    }
}

/// How the tables are set up.
#[derive(Clone, Copy, Debug)]
pub struct TableConfig {
    /// SRTP replay window per publisher stream, in packets (at least 128).
    pub replay_window: u16,
    /// Packets kept per video layer for NACK answers (0 disables the cache).
    pub rtx_cache_packets: usize,
}

impl Default for TableConfig {
    fn default() -> Self {
        Self { replay_window: 128, rtx_cache_packets: 256 }
    }
}

/// All of one core's tables.
#[derive(Debug)]
pub struct Tables {
    config: TableConfig,
    generation: Generation,
    legs: Legs,
    /// Ports a leg has to itself (its RTP port, and its RTCP port without rtcp-mux).
    by_port: Map<u16, LegId>,
    /// Shared ports ([`LegSpec::shared_port`]) and how many legs use each.
    shared: Map<u16, u32>,
    /// The legs of shared ports by (port, remote): the spec's remote, or the one ICE selected.
    by_remote: Map<(u16, SocketAddr), LegId>,
    /// WebRTC legs on shared ports by their local ufrag (a binding request from an address no
    /// leg has yet names its leg in USERNAME).
    by_ufrag: Map<String, LegId>,
    tracks: Map<TrackId, Track>,
    /// Subscriber legs with audio slots, by their speaker group (derived from the legs' specs
    /// after every delta, for the fan-out).
    slot_legs: Map<crate::ids::SpeakerGroup, Vec<LegId>>,
    /// How many workers share the legs (`local_port % shards` owns a leg): what
    /// [`Subscription::owner`] and [`Track::owners`] are derived with.
    shards: u16,
}

impl Tables {
    /// Empty tables at generation 0.
    pub fn new(config: TableConfig) -> Self {
        Self {
            config,
            generation: Generation(0),
            legs: Map::default(),
            by_port: Map::default(),
            shared: Map::default(),
            by_remote: Map::default(),
            by_ufrag: Map::default(),
            tracks: Map::default(),
            slot_legs: Map::default(),
            shards: 1,
        }
    }

    /// Sets how many workers share the legs (a leg belongs to worker `local_port % count`), from
    /// which every subscription's owner is derived (see [`Subscription::owner`]).
    pub fn set_shards(&mut self, count: u16) {
        self.shards = count.max(1);
        self.reindex_owners();
    }

    /// Derives each subscription's owner (the worker of its subscriber's leg) and each track's
    /// set of them, after every delta (legs and subscriptions change only there).
    fn reindex_owners(&mut self) {
        let shards = self.shards;
        for t in self.tracks.values_mut() {
            let mut owners = 0u64;
            for sub in &mut t.subs {
                sub.owner = self.legs.get(&sub.subscriber).map_or(0, |l| l.spec.local_port % shards);
                owners |= 1u64 << sub.owner.min(63);
            }
            t.owners = owners;
        }
    }

    /// The settings.
    pub fn config(&self) -> &TableConfig {
        &self.config
    }

    /// The generation of the last applied delta.
    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// The leg a local port belongs to, when it is not a shared port.
    #[inline]
    pub fn leg_by_port(&self, port: u16) -> Option<LegId> {
        self.by_port.get(&port).copied()
    }

    /// The leg a datagram from `remote` to `local_port` is for: the port's own leg (whatever
    /// the remote: the caller checks or latches it), or on a shared port the leg with that
    /// remote. Two hash lookups at most.
    #[inline]
    pub fn leg_at(&self, local_port: u16, remote: SocketAddr) -> Option<LegId> {
        match self.by_port.get(&local_port) {
            Some(&id) => Some(id),
            None => self.by_remote.get(&(local_port, remote)).copied(),
        }
    }

    /// Whether `port` is a shared port (one leg or more has it with [`LegSpec::shared_port`]).
    #[inline]
    pub fn is_shared_port(&self, port: u16) -> bool {
        self.shared.contains_key(&port)
    }

    /// The WebRTC leg on shared port `port` whose local ufrag is `ufrag` (the first half of a
    /// binding request's USERNAME, RFC 8445 §7.2.2).
    #[inline]
    pub fn leg_by_ufrag(&self, port: u16, ufrag: &str) -> Option<LegId> {
        let id = *self.by_ufrag.get(ufrag)?;
        self.legs.get(&id).filter(|l| l.spec.local_port == port).map(|_| id)
    }

    /// Every local port a leg uses (a shared port once).
    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.by_port.keys().chain(self.shared.keys()).copied()
    }

    /// Sets a leg's remote address (learned by ICE, or by another core), keeping the shared
    /// port's index in line. Refused (`Err` with the leg that has it) when another leg of the
    /// same shared port has that remote.
    pub fn set_remote(&mut self, id: LegId, remote: SocketAddr) -> Result<(), LegId> {
        let Some(leg) = self.legs.get_mut(&id) else { return Ok(()) };
        if !leg.spec.shared_port {
            leg.remote = Some(remote);
            return Ok(());
        }
        let port = leg.spec.local_port;
        match self.by_remote.get(&(port, remote)) {
            Some(&owner) if owner != id => return Err(owner),
            _ => {}
        }
        if let Some(old) = leg.remote.replace(remote)
            && self.by_remote.get(&(port, old)) == Some(&id)
        {
            self.by_remote.remove(&(port, old));
        }
        self.by_remote.insert((port, remote), id);
        Ok(())
    }

    /// Puts leg `id`'s ports (and on a shared port its remote and ufrag) into the indexes.
    fn index_leg(&mut self, id: LegId) {
        let Some(l) = self.legs.get(&id) else { return };
        if l.spec.shared_port {
            let port = l.spec.local_port;
            *self.shared.entry(port).or_default() += 1;
            if let Some(r) = l.remote {
                self.by_remote.insert((port, r), id);
            }
            if let Some(e) = &l.spec.edge {
                self.by_ufrag.insert(e.local.ufrag.clone(), id);
            }
        } else {
            for p in l.spec.ports() {
                self.by_port.insert(p, id);
            }
        }
    }

    /// Takes leg `id`'s entries out of the indexes (those that are its: a rolled-back op may
    /// have left another leg's there).
    fn unindex_leg(&mut self, id: LegId) {
        let Some(l) = self.legs.get(&id) else { return };
        if l.spec.shared_port {
            let port = l.spec.local_port;
            if let Some(n) = self.shared.get_mut(&port) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.shared.remove(&port);
                }
            }
            if let Some(r) = l.remote
                && self.by_remote.get(&(port, r)) == Some(&id)
            {
                self.by_remote.remove(&(port, r));
            }
            if let Some(e) = &l.spec.edge
                && self.by_ufrag.get(&e.local.ufrag) == Some(&id)
            {
                self.by_ufrag.remove(&e.local.ufrag);
            }
        } else {
            for p in l.spec.ports() {
                if self.by_port.get(&p) == Some(&id) {
                    self.by_port.remove(&p);
                }
            }
        }
    }

    /// The local ports of the legs whose RTP port `owns` says is this core's: their RTP ports
    /// and their separate RTCP ports (which go with the leg, wherever their number falls).
    pub fn ports_of_legs<'a>(&'a self, owns: impl Fn(u16) -> bool + 'a) -> impl Iterator<Item = u16> + 'a {
        self.legs.values().filter(move |l| owns(l.spec.local_port)).flat_map(|l| l.spec.ports())
    }

    /// A leg.
    #[inline]
    pub fn leg(&self, id: LegId) -> Option<&Leg> {
        self.legs.get(&id).map(|l| &**l)
    }

    /// A leg, mutably.
    #[inline]
    pub fn leg_mut(&mut self, id: LegId) -> Option<&mut Leg> {
        self.legs.get_mut(&id).map(|l| &mut **l)
    }

    /// A track.
    #[inline]
    pub fn track(&self, id: TrackId) -> Option<&Track> {
        self.tracks.get(&id)
    }

    /// A track, mutably.
    #[inline]
    pub fn track_mut(&mut self, id: TrackId) -> Option<&mut Track> {
        self.tracks.get_mut(&id)
    }

    /// A track and the legs, mutably and at once (the fan-out reads subscriber legs' keys while it
    /// The most copies one received (or handed-over) packet can make: the most subscriptions any
    /// one track has, plus the most legs with audio slots in one speaker group (a ranked
    /// speaker's packet also goes to those). Walks every track (call it after a delta, not per
    /// packet).
    pub fn max_fanout(&self) -> usize {
        let subs = self.tracks.values().map(|t| t.subs.len()).max().unwrap_or(0);
        subs + self.slot_legs.values().map(Vec::len).max().unwrap_or(0)
    }

    /// Every leg.
    pub fn legs(&self) -> impl Iterator<Item = &Leg> + '_ {
        self.legs.values().map(|l| &**l)
    }

    /// Every leg, mutably (for runtime state; specs change only through [`Tables::apply`]).
    pub fn legs_mut(&mut self) -> impl Iterator<Item = &mut Leg> + '_ {
        self.legs.values_mut().map(|l| &mut **l)
    }

    /// Every track, mutably (for runtime state; specs change only through [`Tables::apply`]).
    pub fn tracks_mut(&mut self) -> impl Iterator<Item = &mut Track> + '_ {
        self.tracks.values_mut()
    }

    /// updates the track's subscriptions).
    #[inline]
    pub fn track_and_legs_mut(&mut self, id: TrackId) -> Option<(&mut Track, &mut Legs)> {
        let track = self.tracks.get_mut(&id)?;
        Some((track, &mut self.legs))
    }

    /// A track, the legs, and the legs with audio slots for the track's speaker group (empty when
    /// it has none), for the fan-out.
    pub fn track_legs_and_slots_mut(&mut self, id: TrackId) -> Option<(&mut Track, &mut Legs, &[LegId])> {
        let track = self.tracks.get_mut(&id)?;
        let slots = track.spec.speaker_group.and_then(|g| self.slot_legs.get(&g)).map_or(&[][..], Vec::as_slice);
        Some((track, &mut self.legs, slots))
    }

    /// Rebuilds the index of legs with audio slots by group.
    fn reindex_slots(&mut self) {
        self.slot_legs.clear();
        for leg in self.legs.values() {
            if let Some(a) = &leg.spec.audio_slots {
                self.slot_legs.entry(a.group).or_default().push(leg.spec.id);
            }
        }
    }

    /// Legs and tracks at once, for controllers that read a leg and change its subscriptions
    /// (the bandwidth allocator).
    pub fn legs_and_tracks_mut(&mut self) -> (&mut Legs, &mut Map<TrackId, Track>) {
        (&mut self.legs, &mut self.tracks)
    }

    /// Numbers of legs, tracks and subscriptions.
    pub fn counts(&self) -> (usize, usize, usize) {
        (self.legs.len(), self.tracks.len(), self.tracks.values().map(|t| t.subs.len()).sum())
    }

    /// Every spec in the tables, as a full-snapshot delta at the current generation.
    pub fn snapshot(&self) -> Delta {
        let mut ops = Vec::new();
        let mut legs: Vec<_> = self.legs.values().collect();
        legs.sort_by_key(|l| l.spec.id);
        ops.extend(legs.iter().map(|l| Op::UpsertLeg(l.spec.clone())));
        let mut tracks: Vec<_> = self.tracks.values().collect();
        tracks.sort_by_key(|t| t.spec.id);
        ops.extend(tracks.iter().map(|t| Op::UpsertTrack(t.spec.clone())));
        for t in &tracks {
            ops.extend(t.subs.iter().enumerate().filter(|(_, s)| s.lane == 0).map(|(p, _)| Op::UpsertSubscription(t.spec_of(p))));
        }
        Delta { generation: self.generation, replace_all: true, ops }
    }
}

#[cfg(test)]
mod tests;
