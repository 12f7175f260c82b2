//! The engine: commits validated changes to the desired state (journaled before anything is
//! acknowledged), remembers which sessions changed since the dataplane last got them, answers
//! reads and publishes events. It does no dataplane I/O: the `controller` installs what changed
//! over the link with the engine's lock released, so a dataplane that does not answer never
//! holds the lock (reads are answered from the state at once).
//!
//! Apply semantics: a change set is committed (durable) first, then pushed. If the dataplane
//! does not ack, the change stays committed as desired state, the caller gets UNAVAILABLE saying
//! so, and the link task installs it on reconnect; a retry with the same idempotency key returns
//! the committed answer once the dataplane has it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use sluice_api::UnboundPort;
use sluice_core::forward::Event;
use sluice_core::ids::{Generation, LegId};
use sluice_core::stats::{CoreStats, LegTraffic};
use sluice_core::verdict::DropReason;

use tokio::sync::broadcast;

use crate::client::{LinkError, Liveness, Synced};
use crate::diff::{Part, SpecSet};
use crate::journal::{Journal, JournalError, Record};
use crate::lb::Lb;
use crate::names::Names;
use crate::pb;
use crate::state::{Desired, EdgeInfo, Outcome, Placement, StateError, Touched, Undo, webrtc_local};

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The request was refused by validation.
    #[error(transparent)]
    State(#[from] StateError),
    /// Committed, but the dataplane has not acknowledged it.
    #[error("committed as revision {revision} of session {session:?}, but not installed yet: {source}; it is installed when the dataplane is back")]
    NotInstalled {
        /// The session.
        session: String,
        /// The committed revision.
        revision: u64,
        /// Why.
        source: LinkError,
    },
    /// The journal could not be written: nothing was committed.
    #[error("state journal: {0}")]
    Journal(#[from] JournalError),
    /// Committed and installed, but the dataplane could not open a port of a leg it names, and
    /// no other port could be given to it: that leg receives nothing.
    #[error("committed as revision {revision} of session {session:?}, but the dataplane cannot open port {port} of leg {leg:?}: {error}")]
    PortUnavailable {
        /// The session.
        session: String,
        /// The committed revision.
        revision: u64,
        /// The leg.
        leg: String,
        /// Its port.
        port: u16,
        /// Why the dataplane could not open it.
        error: String,
    },
}

/// The engine state, behind the controller's lock.
#[derive(Debug)]
pub struct Engine {
    desired: Desired,
    journal: Journal,
    /// Each session changed since its tables last went to the link: the entries the changes
    /// touched.
    pending: BTreeMap<String, Touched>,
    events: broadcast::Sender<pb::Event>,
    lb: Option<Arc<Lb>>,
    /// Cached: the dataplane's DTLS fingerprint and the address WebRTC candidates announce.
    edge: EdgeInfo,
    /// The dataplane's leg port range, once it said (a leg outside it is refused).
    dataplane_ports: Option<(u16, u16)>,
    /// The dataplane's worker count, once it said: new legs' ports follow it once it is
    /// journaled ([`Engine::follow_workers`]).
    dataplane_workers: Option<u16>,
    announce_ip: Option<std::net::IpAddr>,
    /// Names of the dataplane's ids, updated with every committed session.
    names: Names,
    /// Per-worker (rx, tx) packets per second, from the dataplane's stats stream.
    rates: Vec<(f64, f64)>,
    last_stats: Option<(Instant, Vec<CoreStats>)>,
    /// Each session's last active-speaker ranking from the dataplane (live state: not journaled).
    speakers: HashMap<String, pb::ActiveSpeakers>,
    /// Each session's legs as the dataplane last reported them (live state: not journaled), by
    /// leg; pruned to the session's legs at each of its commits.
    live: HashMap<String, BTreeMap<String, pb::LegLive>>,
    /// Each leg's traffic counters as each worker last reported them (the stats stream names
    /// only the legs whose counters moved); their sums are the legs' `LegLive` counters.
    traffic: HashMap<LegId, Vec<LegTraffic>>,
    /// The next stats report is a stream's first: it names every leg with traffic, so a leg
    /// it does not name has none (a restarted dataplane's counters start again).
    traffic_full: bool,
    /// Leg ports the dataplane could not open, as of its last applied delta, with why.
    unbound: BTreeMap<u16, String>,
}

/// Whether a process holds UDP `port` on any local IPv4 address: a wildcard bind fails then
/// (EADDRINUSE). The control socket is a Unix socket, so the dataplane runs on this host; this
/// looks in the control plane's network namespace, which is the dataplane's in every layout
/// Sluice ships (the test's dataplane in a namespace of its own has no control plane).
/// Ports of the dataplane's own legs are never asked about (they are in use by the state).
pub fn udp_port_held(port: u16) -> bool {
    matches!(std::net::UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, port)), Err(e) if e.kind() == std::io::ErrorKind::AddrInUse)
}

/// Calls `pick(avoid)` until none of the new ports its pick takes (`ports(&pick)`) is held by
/// another process ([`udp_port_held`]), adding the held ones to `avoid` each time.
fn skipping_held<T, E>(avoid: &mut BTreeSet<u16>, mut pick: impl FnMut(&BTreeSet<u16>) -> Result<T, E>, ports: impl Fn(&T) -> Vec<u16>) -> Result<T, E> {
    loop {
        let picked = pick(avoid)?;
        let held: Vec<u16> = ports(&picked).into_iter().filter(|&p| udp_port_held(p)).collect();
        if held.is_empty() {
            return Ok(picked);
        }
        avoid.extend(held);
    }
}

/// Events a watcher may fall behind by before it is told it lost some.
pub const WATCH_BUFFER: usize = 16 * 1024;

/// Committed change sets not installed yet, and where their answers go: `(index in the group,
/// outcome)`.
pub type Committed = Vec<(usize, Outcome)>;

/// A group's answers, one per change set (filled as they are decided).
pub type Answers = Vec<Option<Result<pb::ApplyResponse, EngineError>>>;

impl Engine {
    /// An engine over recovered state.
    pub fn new(desired: Desired, journal: Journal) -> Self {
        let (events, _) = broadcast::channel(WATCH_BUFFER);
        let names = Names::build(&desired);
        Self {
            desired,
            journal,
            pending: BTreeMap::new(),
            events,
            lb: None,
            names,
            rates: Vec::new(),
            last_stats: None,
            edge: EdgeInfo::default(),
            dataplane_ports: None,
            dataplane_workers: None,
            announce_ip: None,
            speakers: HashMap::new(),
            live: HashMap::new(),
            traffic: HashMap::new(),
            traffic_full: true,
            unbound: BTreeMap::new(),
        }
    }

    /// Applies `req` to the state, skipping the ports its new legs would get that another
    /// process holds (checked by binding them, before anything is journaled; a pick that hits
    /// one is taken back and made again): acknowledged legs have ports the dataplane can bind.
    /// Returns the outcome, how to take it back, and the ports skipped, which the journal record
    /// carries.
    fn apply_skipping_held(&mut self, req: &pb::ChangeSet) -> Result<(Outcome, Undo, Vec<u16>), StateError> {
        let mut avoid = BTreeSet::new();
        loop {
            let (outcome, undo) = self.desired.apply_undoable(req, &avoid).map_err(|mut e| {
                if !avoid.is_empty() && e.kind == crate::state::ErrorKind::ResourceExhausted {
                    e.message.push_str(&format!(" (held by other processes: {avoid:?})"));
                }
                e
            })?;
            let held: Vec<u16> = if outcome.replayed { Vec::new() } else { undo.new_ports(&self.desired).into_iter().filter(|&p| udp_port_held(p)).collect() };
            if held.is_empty() {
                if !avoid.is_empty() {
                    tracing::warn!(session = %req.session, skipped = ?avoid, "ports held by another process were skipped");
                }
                return Ok((outcome, undo, avoid.into_iter().collect()));
            }
            self.desired.restore(undo);
            avoid.extend(held);
        }
    }

    /// The event channel (Watch subscribes to it without taking the engine's lock).
    pub fn events(&self) -> broadcast::Sender<pb::Event> {
        self.events.clone()
    }

    /// The entries every change since the last call touched, and what the dataplane should
    /// have of them: what the link installs as one delta the size of the changes when it is in
    /// step.
    pub fn take_changes(&mut self) -> Part {
        let mut part = Part::default();
        for (session, touched) in std::mem::take(&mut self.pending) {
            self.desired.compile_touched(&session, &touched, &mut part);
        }
        part
    }

    /// The whole desired tables, for a full sync (which installs every pending change too).
    pub fn full_tables(&mut self) -> SpecSet {
        self.pending.clear();
        self.desired.tables()
    }

    /// The desired state of session `name` as a change set that recreates it (static keys and
    /// remote ICE passwords included), encoded: what Redis keeps for another node to adopt
    /// should this one die. `None`: no such session.
    pub fn export_session(&self, name: &str) -> Option<Vec<u8>> {
        use prost::Message as _;
        self.export_changes(name).map(|c| c.encode_to_vec())
    }

    /// The legs of session `name`: (name, dataplane id).
    pub fn session_legs(&self, name: &str) -> Vec<(String, sluice_core::ids::LegId)> {
        self.desired.sessions.get(name).map(|s| s.legs.iter().map(|(n, l)| (n.clone(), l.id)).collect()).unwrap_or_default()
    }

    /// [`Engine::export_session`], not encoded.
    pub fn export_changes(&self, name: &str) -> Option<pb::ChangeSet> {
        use pb::change::Change as C;
        let view = self.desired.session_view(name, &self.edge).ok()?;
        let s = self.desired.sessions.get(name)?;
        let key = |k: &sluice_core::table::KeyMaterial| pb::KeyMaterial {
            profile: crate::state::profile_to_pb(k.profile) as i32,
            key: k.key.clone(),
            salt: k.salt.clone(),
        };
        let mut changes = Vec::new();
        for mut leg in view.legs {
            if let Some(spec) = s.legs.get(&leg.id) {
                if spec.edge.is_none() && !spec.plain_rtp {
                    (leg.rx, leg.tx) = (Some(key(&spec.rx)), Some(key(&spec.tx)));
                }
                if let (Some(w), Some(e)) = (&mut leg.webrtc, &spec.edge) {
                    w.remote_ice_pwd.clone_from(&e.remote.pwd);
                }
            }
            // What this node allocated is its own: the adopting node allocates again.
            (leg.local_port, leg.rtcp_port, leg.webrtc_local) = (0, 0, None);
            changes.push(pb::Change { change: Some(C::Leg(leg)) });
        }
        changes.extend(view.tracks.into_iter().map(|t| pb::Change { change: Some(C::Track(t)) }));
        // A recording tap's subscriptions are the control plane's own: the tap makes them again.
        let taps: Vec<String> = changes
            .iter()
            .filter_map(|c| match &c.change {
                Some(C::Leg(l)) if l.tap.is_some() => Some(l.id.clone()),
                _ => None,
            })
            .collect();
        changes.extend(view.subscriptions.into_iter().filter(|x| !taps.contains(&x.subscriber_leg)).map(|x| pb::Change { change: Some(C::Subscription(x)) }));
        changes.extend(view.settings.map(|x| pb::Change { change: Some(C::Settings(x)) }));
        Some(pb::ChangeSet { session: name.to_owned(), idempotency_key: String::new(), expected_revision: None, changes })
    }

    /// Notes what a committed change touched, for the link and the names.
    fn touched(&mut self, session: &str, touched: Touched) {
        if let Some(lb) = &self.lb {
            lb.mark_dirty(session);
        }
        if let Some(live) = self.live.get_mut(session) {
            match self.desired.sessions.get(session) {
                Some(s) => live.retain(|leg, _| s.legs.contains_key(leg)),
                None => {
                    self.live.remove(session);
                }
            }
        }
        if touched.whole {
            self.names.update(&self.desired, session);
        } else {
            self.names.update_touched(&self.desired, session, &touched);
        }
        match self.pending.get_mut(session) {
            Some(t) => t.merge(touched),
            None => {
                self.pending.insert(session.to_owned(), touched);
            }
        }
    }

    /// Consults the load balancer's state in Redis before creating sessions.
    pub fn set_lb(&mut self, lb: Arc<Lb>) {
        self.lb = Some(lb);
    }

    /// The load balancer's link, when Redis is configured.
    pub fn lb(&self) -> Option<&Arc<Lb>> {
        self.lb.as_ref()
    }

    /// The desired state.
    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    /// Journals `record` (durable once this returns) and then runs `apply` on the state; the
    /// state only changes after the record is on disk.
    fn commit<T>(&mut self, record: &Record, apply: impl FnOnce(&mut Desired) -> T) -> Result<T, JournalError> {
        self.journal.append(record)?;
        let out = apply(&mut self.desired);
        self.compact_if_due();
        Ok(out)
    }

    /// Snapshots the state when the journal asks for it. The records are durable already, so a
    /// failure only makes the snapshot late (tried again at the next commit).
    fn compact_if_due(&mut self) {
        if self.journal.compaction_due()
            && let Err(e) = self.journal.compact(&self.desired)
        {
            tracing::warn!(error = %e, "state snapshot failed; the journal keeps growing until one succeeds");
        }
    }

    /// Where WebRTC peers reach the dataplane and its DTLS fingerprint: asked of the dataplane
    /// by the controller once it answers (and after a rotation), the address overridden by
    /// `announce_ip` when configured.
    pub fn edge_info(&self) -> EdgeInfo {
        self.edge.clone()
    }

    /// Whether the dataplane's DTLS fingerprint is known.
    pub fn edge_known(&self) -> bool {
        !self.edge.fingerprint.is_empty()
    }

    /// Takes what the dataplane says of its WebRTC edge, its port range and its worker count.
    pub fn set_edge(&mut self, s: &sluice_api::EdgeStatus) {
        self.edge = EdgeInfo { ip: self.announce_ip.or(s.listen_ip), fingerprint: s.fingerprint.clone(), ice_tcp_port: s.ice_tcp_port };
        if let Some((lo, hi)) = s.port_range {
            let ours = self.desired.ports;
            if ours.start < lo || ours.end > hi {
                tracing::error!(port_range = ?(ours.start, ours.end), dataplane_port_range = ?(lo, hi), "controlplane.port_range is not inside the dataplane's port_range: changes that allocate a port outside it are refused");
            }
            let shared = self.desired.placement().shared_ports();
            if !shared.is_empty() && (*shared.start() < lo || *shared.end() > hi) {
                tracing::error!(shared_ports = ?shared, dataplane_port_range = ?(lo, hi), "controlplane.shared_port_base: the shared ports are not inside the dataplane's port_range: legs asking for one outside it are refused");
            }
            self.dataplane_ports = Some((lo, hi));
        }
        if let Some(w) = s.workers.filter(|&w| w > 0) {
            self.dataplane_workers = Some(w);
            self.follow_workers();
        }
    }

    /// Makes new legs' ports follow the dataplane's last known worker count, when the state's
    /// placement has another: journaled first, as every change the ports derive from. A failed
    /// write leaves the old placement (the allocation stays what the journal replays) and is
    /// tried again at the next change set.
    fn follow_workers(&mut self) {
        let Some(w) = self.dataplane_workers else { return };
        let placement = Placement { workers: Some(w), ..self.desired.placement() };
        if placement == self.desired.placement() {
            return;
        }
        match self.commit(&Record::Placement(placement), |d| d.set_placement(placement)) {
            Ok(()) => {
                tracing::info!(workers = w, session_affinity_legs = placement.session_affinity_legs, shared_ports = ?self.desired.placement().shared_ports(), "new legs' ports follow the dataplane's workers");
                self.warn_shared_port_conflicts();
            }
            Err(e) => {
                tracing::warn!(error = %e, workers = w, "could not journal the dataplane's worker count; new legs' ports follow the last one until it is")
            }
        }
    }

    /// Sets `controlplane.shared_port_base` (at start, before any change is served): journaled
    /// when it differs from the recovered state's, as the affinity threshold is. Refused when
    /// the shared ports (one per worker the dataplane last said it has) do not all lie inside
    /// `controlplane.port_range`.
    pub fn set_shared_port_base(&mut self, base: Option<u16>) -> Result<(), EngineError> {
        let placement = Placement { shared_port_base: base, ..self.desired.placement() };
        let range = self.desired.ports;
        if let Some(b) = base {
            let last = u32::from(b) + u32::from(placement.workers.unwrap_or(1).max(1)) - 1;
            if b < range.start || last > u32::from(range.end) {
                return Err(EngineError::State(StateError {
                    kind: crate::state::ErrorKind::InvalidArgument,
                    field: "controlplane.shared_port_base".into(),
                    message: format!(
                        "the shared ports {b}-{last} (one per dataplane worker) must lie inside controlplane.port_range {}-{}",
                        range.start, range.end
                    ),
                }));
            }
        }
        if placement != self.desired.placement() {
            self.commit(&Record::Placement(placement), |d| d.set_placement(placement))?;
        }
        self.warn_shared_port_conflicts();
        Ok(())
    }

    /// Logs legs holding a shared port as their own (see [`Desired::shared_port_conflicts`]).
    fn warn_shared_port_conflicts(&self) {
        for (session, leg, port) in self.desired.shared_port_conflicts() {
            tracing::warn!(session = %session, leg = %leg, port, "a leg holds a shared port as its own (given out before it was shared): that worker's shared legs are refused until the leg is removed");
        }
    }

    /// Sets `controlplane.session_affinity_legs` (at start, before any change is served):
    /// journaled when it differs from the recovered state's, so a replay allocates the ports of
    /// each change under the threshold it was accepted under.
    pub fn set_session_affinity_legs(&mut self, legs: u32) -> Result<(), EngineError> {
        let placement = Placement { session_affinity_legs: legs, ..self.desired.placement() };
        if placement != self.desired.placement() {
            self.commit(&Record::Placement(placement), |d| d.set_placement(placement))?;
        }
        Ok(())
    }

    /// Refuses a change whose legs got a port outside the dataplane's range (the dataplane
    /// would refuse the delta): the control plane's range is configured wider than the
    /// dataplane's. Checked before anything is journaled.
    fn check_dataplane_range(&self, req: &pb::ChangeSet, outcome: &Outcome) -> Result<(), EngineError> {
        let Some((lo, hi)) = self.dataplane_ports else { return Ok(()) };
        let Some((leg, port)) = outcome.committed.ports.iter().find(|(_, p)| !(lo..=hi).contains(p)) else { return Ok(()) };
        let at = req.changes.iter().position(|c| matches!(&c.change, Some(pb::change::Change::Leg(l)) if &l.id == leg));
        Err(EngineError::State(StateError {
            kind: crate::state::ErrorKind::FailedPrecondition,
            field: at.map_or_else(|| "changes".to_string(), |i| format!("changes[{i}].leg")),
            message: format!(
                "leg {}: local port {port} is outside the dataplane's port_range [{lo}, {hi}]; controlplane.port_range [{}, {}] must lie inside it",
                crate::text::quote(leg),
                self.desired.ports.start,
                self.desired.ports.end
            ),
        }))
    }

    /// Sets the address WebRTC candidates announce (instead of the dataplane's listen address).
    pub fn set_announce_ip(&mut self, ip: Option<std::net::IpAddr>) {
        self.announce_ip = ip;
        self.edge.ip = ip.or(self.edge.ip);
    }

    /// The session as the API shows it, with Sluice's side of its WebRTC legs.
    pub fn session_view(&self, name: &str) -> Result<pb::Session, StateError> {
        let mut view = self.desired.session_view(name, &self.edge)?;
        view.active_speakers = self.speakers.get(name).cloned();
        view.live = self.live.get(name).map(|legs| legs.values().cloned().collect()).unwrap_or_default();
        Ok(view)
    }

    /// Answers a committed group once installed (`synced`), or with why it is not.
    pub fn answer(&mut self, mut results: Answers, committed: Committed, synced: &Result<Synced, LinkError>) -> Vec<Result<pb::ApplyResponse, EngineError>> {
        for (i, outcome) in committed {
            results[i] = Some(match synced {
                Ok(s) => match self.unopened_port(&outcome, &s.unbound) {
                    Some((leg, port, error)) => {
                        Err(EngineError::PortUnavailable { session: outcome.session.clone(), revision: outcome.committed.revision, leg, port, error })
                    }
                    None => Ok(self.respond(outcome, s.generation)),
                },
                Err(e) => Err(EngineError::NotInstalled { session: outcome.session.clone(), revision: outcome.committed.revision, source: e.duplicate() }),
            });
        }
        results.into_iter().map(Self::answered).collect()
    }

    /// A leg `outcome` upserted whose port (RTP or RTCP) is in `unbound`: (leg, port, why).
    fn unopened_port(&self, outcome: &Outcome, unbound: &[UnboundPort]) -> Option<(String, u16, String)> {
        let legs = &self.desired.sessions.get(&outcome.session)?.legs;
        outcome.committed.ports.iter().find_map(|(leg, _)| {
            let spec = legs.get(leg)?;
            spec.ports().find_map(|p| unbound.iter().find(|u| u.port == p).map(|u| (leg.clone(), p, u.error.clone())))
        })
    }

    /// Gives the legs that the change sets in `committed` added, and whose ports the dataplane
    /// could not open (`unbound`: another process took them since [`udp_port_held`] looked, or
    /// holds them where it cannot look, such as another network namespace), other ports:
    /// journaled as [`Record::Move`], each reported on Watch (`LegPortUnavailable` with
    /// `moved_to`), the outcome's answer updated. The caller installs again; a port that fails
    /// then is moved again. Returns whether it moved any. Legs acknowledged earlier keep their
    /// ports (see [`Engine::note_unbound`]).
    pub fn move_unbound(&mut self, committed: &mut Committed, unbound: &[UnboundPort]) -> bool {
        if unbound.is_empty() {
            return false;
        }
        let mut moved = false;
        let mut avoid: BTreeSet<u16> = unbound.iter().map(|u| u.port).collect();
        for (_, outcome) in committed.iter_mut() {
            let session = outcome.session.clone();
            let added: Vec<String> = outcome
                .events
                .iter()
                .filter_map(|e| match &e.event {
                    Some(pb::event::Event::LegAdded(a)) => Some(a.leg.clone()),
                    _ => None,
                })
                .collect();
            for leg in added {
                let Some(spec) = self.desired.sessions.get(&session).and_then(|s| s.legs.get(&leg)) else { continue };
                let Some(failed) = unbound.iter().find(|u| spec.ports().any(|p| p == u.port)).cloned() else { continue };
                if spec.shared_port {
                    // The worker's shared port is the only one the leg can have.
                    tracing::error!(session = %session, leg = %leg, port = failed.port, error = %failed.error, "the dataplane cannot open a shared port; its legs receive nothing");
                    continue;
                }
                // Ports another process holds now are skipped too, as for a new leg.
                let picked =
                    skipping_held(&mut avoid, |avoid| self.desired.ports_for_move(&session, &leg, avoid), |&(p, r)| std::iter::once(p).chain(r).collect());
                let (port, rtcp_port) = match picked {
                    Ok(ports) => ports,
                    Err(e) => {
                        tracing::error!(session = %session, leg = %leg, port = failed.port, error = %e, "the dataplane cannot open a new leg's port and no other is free");
                        continue;
                    }
                };
                let record = Record::Move { session: session.clone(), leg: leg.clone(), port, rtcp_port };
                match self.commit(&record, |d| d.move_leg(&session, &leg, port, rtcp_port)) {
                    Ok(Ok(())) => {
                        let id = self.desired.sessions.get(&session).and_then(|s| s.legs.get(&leg)).map(|l| l.id);
                        let mut touched = Touched::default();
                        touched.legs.insert(leg.clone(), id.into_iter().collect());
                        self.touched(&session, touched);
                    }
                    Ok(Err(e)) => {
                        tracing::error!(session = %session, leg = %leg, error = %e, "moving a leg off a port the dataplane cannot open");
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(session = %session, leg = %leg, error = %e, "cannot journal a leg's move off a port the dataplane cannot open");
                        continue;
                    }
                }
                tracing::warn!(session = %session, leg = %leg, port = failed.port, moved_to = port, error = %failed.error, "the dataplane cannot open a new leg's port; the leg gets another");
                moved = true;
                for (name, p) in &mut outcome.committed.ports {
                    if *name == leg {
                        *p = port;
                    }
                }
                for e in &mut outcome.events {
                    if let Some(pb::event::Event::LegAdded(a)) = &mut e.event
                        && a.leg == leg
                    {
                        a.local_port = u32::from(port);
                    }
                }
                outcome.events.push(pb::Event {
                    session: session.clone(),
                    revision: outcome.committed.revision,
                    event: Some(pb::event::Event::LegPortUnavailable(pb::LegPortUnavailable {
                        leg: leg.clone(),
                        port: u32::from(failed.port),
                        error: failed.error.clone(),
                        moved_to: u32::from(port),
                    })),
                });
            }
        }
        moved
    }

    /// Takes the dataplane's list of leg ports it could not open after an applied delta:
    /// each port that was not on the last list is logged and reported on Watch
    /// (`LegPortUnavailable`, `moved_to` 0) for the leg that holds it; the count is in the
    /// node's status. A sync that applied nothing says nothing about ports and is ignored.
    pub fn note_unbound(&mut self, synced: &Synced) {
        if synced.ops == 0 {
            return;
        }
        let unbound = &synced.unbound;
        let now: BTreeMap<u16, String> = unbound.iter().map(|u| (u.port, u.error.clone())).collect();
        for (&port, error) in &now {
            if self.unbound.contains_key(&port) {
                continue;
            }
            let owner =
                self.desired.sessions.iter().find_map(|(name, s)| s.legs.iter().find(|(_, l)| l.ports().any(|p| p == port)).map(|(leg, _)| (name, leg)));
            tracing::error!(port, error = %error, session = owner.map(|o| o.0.as_str()), leg = owner.map(|o| o.1.as_str()), "the dataplane cannot open a leg port; the leg receives nothing");
            if let Some((session, leg)) = owner {
                let revision = self.desired.sessions.get(session).map_or(0, |s| s.revision);
                let _ = self.events.send(pb::Event {
                    session: session.clone(),
                    revision,
                    event: Some(pb::event::Event::LegPortUnavailable(pb::LegPortUnavailable {
                        leg: leg.clone(),
                        port: u32::from(port),
                        error: error.clone(),
                        moved_to: 0,
                    })),
                });
            }
        }
        self.unbound = now;
    }

    /// Publishes an installed outcome's events and makes its answer.
    fn respond(&mut self, outcome: Outcome, generation: Generation) -> pb::ApplyResponse {
        for mut e in outcome.events {
            if let Some(pb::event::Event::ChangeApplied(c)) = &mut e.event {
                c.generation = generation.0;
            }
            let _ = self.events.send(e);
        }
        pb::ApplyResponse {
            session: outcome.session.clone(),
            revision: outcome.committed.revision,
            ports: {
                let info = self.edge_info();
                let legs = self.desired.sessions.get(&outcome.session).map(|s| &s.legs);
                outcome
                    .committed
                    .ports
                    .into_iter()
                    .map(|(leg, p)| {
                        let spec = legs.and_then(|l| l.get(&leg));
                        let webrtc = spec.and_then(|spec| webrtc_local(spec, &info));
                        let rtcp_port = spec.and_then(|s| s.rtcp.as_deref()).map_or(0, |c| u32::from(c.local_port));
                        pb::PortAllocation { leg, local_port: u32::from(p), webrtc, rtcp_port }
                    })
                    .collect()
            },
            generation: generation.0,
            taps: self.desired.tap_streams(&outcome.session),
        }
    }

    fn admit(&self, req: &pb::ChangeSet) -> Result<(), EngineError> {
        if let Some(lb) = &self.lb
            && !self.desired.draining
            && !self.desired.sessions.contains_key(&req.session)
        {
            lb.admit(&req.session)?;
        }
        Ok(())
    }

    /// Commits several change sets as one group, in order: each is validated against the state
    /// the ones before it left (a refused one changes nothing and is answered on its own), the
    /// accepted ones are journaled with one fsync. Returns the answers decided so far and the
    /// committed ones, which the controller installs with one delta and answers with
    /// [`Engine::answer`]: what one change set sees and gets is what a group of one would give it
    /// called in the same order; the gain is one fsync and one dataplane round trip per group.
    pub fn commit_many(&mut self, reqs: &[pb::ChangeSet]) -> (Answers, Committed) {
        let mut results: Answers = reqs.iter().map(|_| None).collect();
        let mut undo = Vec::new();
        let mut records = Vec::new();
        let mut done: Committed = Vec::new();
        self.follow_workers();
        for (i, req) in reqs.iter().enumerate() {
            let applied = self.admit(req).and_then(|()| self.apply_skipping_held(req).map_err(EngineError::State)).and_then(|(outcome, u, skipped)| match self
                .check_dataplane_range(req, &outcome)
            {
                Ok(()) => Ok((outcome, u, skipped)),
                Err(e) => {
                    self.desired.restore(u);
                    Err(e)
                }
            });
            let (outcome, u, skipped) = match applied {
                Ok(a) => a,
                Err(e) => {
                    results[i] = Some(Err(e));
                    continue;
                }
            };
            if !outcome.replayed {
                undo.push(u);
                records.push(if skipped.is_empty() { Record::Apply(req.clone()) } else { Record::ApplyAvoiding(req.clone(), skipped) });
            }
            done.push((i, outcome));
        }
        if !records.is_empty() {
            if let Err(e) = self.journal.append_all(&records) {
                // Nothing of the group is durable: take the state back and refuse them all.
                for u in undo.into_iter().rev() {
                    self.desired.restore(u);
                }
                let why = e.to_string();
                for (i, _) in done {
                    let source = std::io::Error::other(why.clone());
                    results[i] = Some(Err(EngineError::Journal(JournalError::Io { op: "group commit", path: "journal.bin".into(), source })));
                }
                return (results, Vec::new());
            }
            for u in &undo {
                self.touched(u.session(), u.touched());
            }
            self.compact_if_due();
        }
        (results, done)
    }

    /// Every request of a group is answered on every path above; a gap would be a bug here,
    /// reported to its caller rather than a panic.
    pub(crate) fn answered(r: Option<Result<pb::ApplyResponse, EngineError>>) -> Result<pb::ApplyResponse, EngineError> {
        r.unwrap_or_else(|| Err(EngineError::Journal(JournalError::Replay { seq: 0, why: "the group commit left this request unanswered".into() })))
    }

    /// Commits a session's deletion (installed and answered by the controller, as a group of
    /// one).
    pub fn delete_session(&mut self, req: &pb::DeleteSessionRequest) -> Result<Outcome, EngineError> {
        self.desired.check_delete(req)?;
        let all = self.desired.sessions.get(&req.session).map(Touched::all_of).unwrap_or_default();
        let outcome = self.commit(&Record::Delete(req.clone()), |d| d.delete_session(req))?.map_err(EngineError::State)?;
        self.touched(&req.session, all);
        self.speakers.remove(&req.session);
        self.live.remove(&req.session);
        Ok(outcome)
    }

    /// Sets the drain flag.
    pub fn set_draining(&mut self, on: bool) -> Result<(), EngineError> {
        if self.desired.draining != on {
            self.commit(&Record::Drain(on), |d| d.draining = on)?;
        }
        Ok(())
    }

    /// Publishes the dataplane's events on Watch, named by the sessions they belong to.
    pub fn dataplane_events(&mut self, events: &[Event]) {
        for e in events {
            if let Some(ev) = self.names.translate(&self.desired, e) {
                if let Some(pb::event::Event::ActiveSpeakers(a)) = &ev.event {
                    self.speakers.insert(ev.session.clone(), a.clone());
                }
                self.note_live(&ev);
                let _ = self.events.send(ev);
            }
        }
    }

    /// Keeps the latest of each leg event in the leg's [`pb::LegLive`] (GetSession's `live`).
    fn note_live(&mut self, ev: &pb::Event) {
        use pb::event::Event as Ev;
        let leg = match &ev.event {
            Some(Ev::LegActive(a)) => &a.leg,
            Some(Ev::LegIdle(l)) => l,
            Some(Ev::LegStats(s)) => &s.leg,
            Some(Ev::BandwidthEstimate(b)) => &b.leg,
            Some(Ev::RateLimited(r)) => &r.leg,
            Some(Ev::Webrtc(w)) => &w.leg,
            _ => return,
        };
        let legs = self.live.entry(ev.session.clone()).or_default();
        let live = legs.entry(leg.clone()).or_insert_with(|| pb::LegLive { leg: leg.clone(), ..Default::default() });
        match &ev.event {
            Some(Ev::LegActive(a)) => {
                live.set_activity(pb::leg_live::Activity::Active);
                live.remote.clone_from(&a.remote);
            }
            Some(Ev::LegIdle(_)) => live.set_activity(pb::leg_live::Activity::Idle),
            Some(Ev::LegStats(s)) => live.stats = Some(s.clone()),
            Some(Ev::BandwidthEstimate(b)) => live.bandwidth_estimate_bps = b.bps,
            Some(Ev::RateLimited(r)) => live.rate_limited = live.rate_limited.saturating_add(r.dropped),
            Some(Ev::Webrtc(w)) => live.webrtc = Some(w.clone()),
            _ => {}
        }
    }

    /// Whether the dataplane's counters have come yet.
    pub fn has_stats(&self) -> bool {
        self.last_stats.is_some()
    }

    /// Takes the dataplane's streamed counters: the node's packet rates come from two in a row;
    /// the legs' counters are folded into their `LegLive`, summed over workers.
    pub fn dataplane_stats(&mut self, stats: &[CoreStats]) {
        let now = Instant::now();
        if let Some((then, prev)) = &self.last_stats
            && prev.len() == stats.len()
        {
            let secs = now.duration_since(*then).as_secs_f64().max(1e-3);
            let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
            self.rates = stats.iter().zip(prev).map(|(c, p)| (rate(c.rx_packets, p.rx_packets), rate(c.tx_packets, p.tx_packets))).collect();
        }
        self.fold_traffic(stats);
        // The per-leg part is folded: not kept twice.
        self.last_stats = Some((now, stats.iter().map(|c| CoreStats { legs: Vec::new(), ..c.clone() }).collect()));
    }

    /// The dataplane's stats stream (re)started: its first report names every leg with traffic.
    pub fn dataplane_stats_restarted(&mut self) {
        self.traffic_full = true;
    }

    /// Folds the legs' counters of a stats report into their `LegLive` (the sum over workers of
    /// what each last reported).
    fn fold_traffic(&mut self, stats: &[CoreStats]) {
        let full = std::mem::take(&mut self.traffic_full);
        if full {
            self.traffic.clear();
        }
        let mut moved: BTreeSet<LegId> = BTreeSet::new();
        for (w, c) in stats.iter().enumerate() {
            for l in &c.legs {
                let per_worker = self.traffic.entry(l.leg).or_default();
                if per_worker.len() <= w {
                    per_worker.resize(w + 1, LegTraffic::default());
                }
                per_worker[w] = l.traffic;
                moved.insert(l.leg);
            }
        }
        // Legs gone from the desired state take their counters with them.
        let names = &self.names;
        self.traffic.retain(|id, _| names.leg(*id).is_some());
        if full {
            for l in self.live.values_mut().flat_map(|legs| legs.values_mut()) {
                (l.rx_packets, l.rx_bytes, l.tx_packets, l.tx_bytes) = (0, 0, 0, 0);
            }
        }
        for id in moved {
            let (Some(per_worker), Some((session, leg))) = (self.traffic.get(&id), self.names.leg(id)) else { continue };
            let mut sum = LegTraffic::default();
            for t in per_worker {
                sum.add(t);
            }
            let live = self
                .live
                .entry(session.to_owned())
                .or_default()
                .entry(leg.to_owned())
                .or_insert_with(|| pb::LegLive { leg: leg.to_owned(), ..Default::default() });
            (live.rx_packets, live.rx_bytes, live.tx_packets, live.tx_bytes) = (sum.rx_packets, sum.rx_bytes, sum.tx_packets, sum.tx_bytes);
        }
    }

    /// Publishes a `DataplaneResynced` event after a full resync.
    pub fn report_resync(&mut self, synced: &Synced) {
        if let Some(differing) = synced.resynced {
            tracing::info!(generation = synced.generation.0, differing, ops = synced.ops, "dataplane resynced");
            let _ = self.events.send(pb::Event {
                session: String::new(),
                revision: 0,
                event: Some(pb::event::Event::DataplaneResynced(pb::DataplaneResynced { generation: synced.generation.0, differing: differing as u32 })),
            });
        }
    }

    /// The node's status: the desired state's counts, and the dataplane's generation and
    /// per-worker counters (from its stats stream) while it answers.
    pub fn status(&self, live: &Liveness) -> pb::NodeStatus {
        let d = &self.desired;
        // Shared ports inside the range are not free for a leg of its own, used or not.
        let shared = d.placement().shared_ports();
        let ports_used = d.ports_used().into_iter().filter(|p| !shared.contains(p)).count() as u32
            + shared.filter(|p| (d.ports.start..=d.ports.end).contains(p)).count() as u32;
        let mut s = pb::NodeStatus {
            draining: d.draining || self.lb.as_ref().is_some_and(|lb| lb.draining()),
            sessions: d.sessions.len() as u32,
            legs: d.sessions.values().map(|s| s.legs.len() as u32).sum(),
            tracks: d.sessions.values().map(|s| s.tracks.len() as u32).sum(),
            subscriptions: d.sessions.values().map(|s| s.subscription_count() as u32).sum(),
            port_range_start: u32::from(d.ports.start),
            port_range_end: u32::from(d.ports.end),
            ports_free: d.ports.len().saturating_sub(ports_used),
            dataplane_connected: false,
            dataplane_generation: 0,
            workers: Vec::new(),
            max_sessions: quota(d.quotas.sessions),
            max_legs: quota(d.quotas.legs),
            max_subscriptions: quota(d.quotas.subscriptions),
            unbound_ports: self.unbound.len() as u32,
        };
        if live.answering() {
            s.dataplane_connected = true;
            s.dataplane_generation = live.generation().map_or(0, |g| g.0);
            let stats = self.last_stats.as_ref().map_or(&[][..], |(_, s)| &s[..]);
            s.workers = stats
                .iter()
                .enumerate()
                .map(|(i, c)| pb::WorkerLoad {
                    worker: i as u32,
                    rx_packets: c.rx_packets,
                    tx_packets: c.tx_packets,
                    rx_bytes: c.rx_bytes,
                    tx_bytes: c.tx_bytes,
                    drops: c.drops.iter().sum(),
                    drops_by_reason: DropReason::ALL
                        .iter()
                        .filter(|&&r| c.drops_for(r) > 0)
                        .map(|&r| pb::DropCount { reason: r.name().into(), count: c.drops_for(r) })
                        .collect(),
                    rx_packets_per_second: self.rates.get(i).map_or(0.0, |r| r.0),
                    tx_packets_per_second: self.rates.get(i).map_or(0.0, |r| r.1),
                })
                .collect();
        }
        s
    }
}

/// A quota as the status reports it: 0 for none.
fn quota(q: usize) -> u32 {
    if q == usize::MAX { 0 } else { u32::try_from(q).unwrap_or(u32::MAX) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An engine on an empty journal in a scratch directory of its own (removed by the caller).
    fn fresh_engine(name: &str, ports: PortRange) -> (Engine, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("sluice-engine-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (journal, desired, _) = Journal::open(&dir, ports).unwrap();
        (Engine::new(desired, journal), dir)
    }
    use crate::state::PortRange;
    use crate::state::fixtures::*;

    const PORTS: PortRange = PortRange { start: 30_000, end: 30_099 };

    /// A group commit answers each change set as sequential Applies would, journals exactly the
    /// accepted ones (recovery rebuilds the same state), and a refused one in the middle changes
    /// nothing. (No dataplane here: accepted changes are committed and answered UNAVAILABLE.)
    #[test]
    fn a_group_commit_is_the_sequence_of_its_change_sets() {
        let (mut engine, dir) = fresh_engine("group", PORTS);
        let group = vec![
            pair("m"),
            // Refused: an unknown track.
            req("m", vec![sub("a", "nope", 1000, 0, false)]),
            // Sees the first one's legs and tracks.
            req("m", vec![sub("a", "vb", 1000, 1, true)]),
            pair("n"),
        ];
        let (answers, committed) = engine.commit_many(&group);
        let results = engine.answer(answers, committed, &Err(LinkError::NotAnswering));
        assert!(matches!(results[0], Err(EngineError::NotInstalled { revision: 1, .. })), "{:?}", results[0]);
        assert!(matches!(&results[1], Err(EngineError::State(e)) if e.to_string().contains("nope")), "{:?}", results[1]);
        assert!(matches!(results[2], Err(EngineError::NotInstalled { revision: 2, .. })), "{:?}", results[2]);
        assert!(matches!(results[3], Err(EngineError::NotInstalled { revision: 1, .. })), "{:?}", results[3]);
        let mut sequential = Desired::new(PORTS);
        for r in [&group[0], &group[2], &group[3]] {
            sequential.apply(r).unwrap();
        }
        assert_eq!(engine.desired().tables(), sequential.tables());
        assert_eq!(engine.desired().sessions["m"].revision, 2);
        drop(engine);
        let (_, recovered, info) = Journal::open(&dir, PORTS).unwrap();
        assert_eq!(info.replayed, 3, "the three accepted change sets, journaled in one append");
        assert_eq!(recovered.tables(), sequential.tables());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `shared_port_base` is refused outside the port range; a shared port is committed though
    /// a process (the dataplane, for the legs already there) holds it, where a port of a leg's
    /// own would be skipped.
    #[test]
    fn shared_ports_are_validated_and_never_skipped_as_held() {
        let held = std::net::UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        let p = held.local_addr().unwrap().port();
        let (mut engine, dir) = fresh_engine("shared", PortRange { start: p, end: p });
        for bad in [p - 1, p + 1] {
            let e = engine.set_shared_port_base(Some(bad)).unwrap_err();
            assert!(e.to_string().contains("controlplane.shared_port_base"), "{e}");
        }
        engine.set_shared_port_base(Some(p)).unwrap();
        let mut shared = leg("s");
        if let Some(pb::change::Change::Leg(l)) = &mut shared.change {
            (l.shared_port, l.remote) = (true, "192.0.2.1:9".into());
        }
        let (answers, committed) = engine.commit_many(&[req("m", vec![shared])]);
        assert!(answers[0].is_none(), "{:?}", answers[0]);
        assert_eq!(committed[0].1.committed.ports, vec![("s".to_string(), p)]);
        // A leg of its own gets no port: the only one is shared.
        let (answers, _) = engine.commit_many(&[req("m", vec![leg("own")])]);
        assert!(matches!(&answers[0], Some(Err(EngineError::State(e))) if e.kind == crate::state::ErrorKind::ResourceExhausted), "{:?}", answers[0]);
        drop((engine, held));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The dataplane's worker count and the configured affinity threshold reach the state's
    /// port allocation through the journal: a restart recovers them and the same ports.
    #[test]
    fn the_dataplanes_worker_count_is_journaled_and_followed() {
        let (mut engine, dir) = fresh_engine("workers", PORTS);
        engine.set_session_affinity_legs(3).unwrap();
        // An older dataplane says nothing of its workers: ports as before.
        engine.set_edge(&sluice_api::EdgeStatus { port_range: Some((1024, 65_000)), ..Default::default() });
        assert_eq!(engine.desired().placement(), Placement { workers: None, session_affinity_legs: 3, shared_port_base: None });
        engine.set_edge(&sluice_api::EdgeStatus { workers: Some(2), ..Default::default() });
        assert_eq!(engine.desired().placement(), Placement { workers: Some(2), session_affinity_legs: 3, shared_port_base: None });
        let (_, committed) = engine.commit_many(&[req("m", vec![leg("a"), leg("b"), leg("c"), leg("d")]), req("n", vec![leg("a")])]);
        assert_eq!(committed.len(), 2);
        let ports = |d: &Desired, s: &str| d.sessions[s].legs.values().map(|l| l.local_port).collect::<Vec<_>>();
        assert_eq!(ports(engine.desired(), "m"), vec![30_000, 30_002, 30_004, 30_001], "three on worker 0, then the fewest");
        assert_eq!(ports(engine.desired(), "n"), vec![30_003]);
        let desired = engine.desired().clone();
        drop(engine);
        let (_, recovered, _) = Journal::open(&dir, PORTS).unwrap();
        assert_eq!(recovered, desired);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// GetSession's `live` holds the latest of each leg event the dataplane reported, for the
    /// session's legs only: a removed leg's entry goes with it, a deleted session's with it.
    #[test]
    fn leg_events_are_kept_as_the_legs_live_state_until_the_leg_goes() {
        use sluice_core::table::LegStats;
        let (mut engine, dir) = fresh_engine("live", PORTS);
        let (answers, _) = engine.commit_many(&[req("m", vec![leg("a"), leg("b")])]);
        assert!(answers[0].is_none(), "{:?}", answers[0]);
        let id = |e: &Engine, l: &str| e.desired().sessions["m"].legs[l].id;
        let (a, b) = (id(&engine, "a"), id(&engine, "b"));
        let remote: std::net::SocketAddr = "192.0.2.7:5004".parse().unwrap();
        let stats = LegStats { fraction_lost: 26, cumulative_lost: 9, jitter: 40, rtt_us: Some(31_000), reports: 4 };
        engine.dataplane_events(&[
            Event::LegActive { leg: a, remote },
            Event::LegStats { leg: a, stats },
            Event::BandwidthEstimate { leg: a, bps: 1_500_000 },
            Event::RateLimited { leg: b, dropped: 3 },
            Event::RateLimited { leg: b, dropped: 4 },
            Event::LegActive { leg: b, remote },
            Event::LegIdle { leg: b },
        ]);
        let live = engine.session_view("m").unwrap().live;
        assert_eq!(live.len(), 2, "{live:?}");
        assert_eq!((live[0].leg.as_str(), live[0].activity(), live[0].remote.as_str()), ("a", pb::leg_live::Activity::Active, "192.0.2.7:5004"));
        let st = live[0].stats.as_ref().unwrap();
        assert_eq!((st.fraction_lost, st.cumulative_lost, st.jitter, st.rtt_us, st.reports), (26, 9, 40, Some(31_000), 4));
        assert_eq!(live[0].bandwidth_estimate_bps, 1_500_000);
        assert_eq!((live[1].leg.as_str(), live[1].activity(), live[1].rate_limited), ("b", pb::leg_live::Activity::Idle, 7));
        // Removing a leg removes its entry; a leg of the same name made again starts unreported.
        let (answers, _) = engine.commit_many(&[req("m", vec![pb::Change { change: Some(pb::change::Change::RemoveLeg("a".into())) }])]);
        assert!(answers[0].is_none(), "{:?}", answers[0]);
        assert_eq!(engine.session_view("m").unwrap().live.iter().map(|l| l.leg.as_str()).collect::<Vec<_>>(), ["b"]);
        engine.commit_many(&[req("m", vec![leg("a")])]);
        assert_eq!(engine.session_view("m").unwrap().live.len(), 1);
        engine.delete_session(&pb::DeleteSessionRequest { session: "m".into(), expected_revision: None }).unwrap();
        engine.commit_many(&[req("m", vec![leg("b")])]);
        assert!(engine.session_view("m").unwrap().live.is_empty(), "a deleted session's legs start afresh");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The legs' traffic counters of the dataplane's stats reports land in their `LegLive`,
    /// summed over workers; a report names only the legs that moved, so the others keep their
    /// counters, but a stream's first report names them all (a leg it does not name has none).
    #[test]
    fn leg_traffic_is_summed_over_workers_into_the_legs_live_state() {
        use sluice_core::stats::LegCount;
        let (mut engine, dir) = fresh_engine("traffic", PORTS);
        let (answers, _) = engine.commit_many(&[req("m", vec![leg("a"), leg("b")])]);
        assert!(answers[0].is_none(), "{:?}", answers[0]);
        let id = |e: &Engine, l: &str| e.desired().sessions["m"].legs[l].id;
        let (a, b) = (id(&engine, "a"), id(&engine, "b"));
        let count = |leg, rx_packets, tx_packets| LegCount {
            leg,
            traffic: LegTraffic { rx_packets, rx_bytes: rx_packets * 100, tx_packets, tx_bytes: tx_packets * 50 },
        };
        let report = |w0: Vec<LegCount>, w1: Vec<LegCount>| [CoreStats { legs: w0, ..Default::default() }, CoreStats { legs: w1, ..Default::default() }];
        let traffic = |e: &Engine| -> Vec<(String, u64, u64, u64, u64)> {
            e.session_view("m").unwrap().live.iter().map(|l| (l.leg.clone(), l.rx_packets, l.rx_bytes, l.tx_packets, l.tx_bytes)).collect()
        };
        // Leg a receives on worker 0 and is sent to from worker 1.
        engine.dataplane_stats(&report(vec![count(a, 10, 0)], vec![count(a, 0, 5), count(b, 3, 0)]));
        assert_eq!(traffic(&engine), [("a".into(), 10, 1000, 5, 250), ("b".into(), 3, 300, 0, 0)]);
        // Only b moved (on worker 1): a keeps what it had.
        engine.dataplane_stats(&report(vec![], vec![count(b, 4, 0)]));
        assert_eq!(traffic(&engine), [("a".into(), 10, 1000, 5, 250), ("b".into(), 4, 400, 0, 0)]);
        // The stream again (a restarted dataplane): its first report is everything there is.
        engine.dataplane_stats_restarted();
        engine.dataplane_stats(&report(vec![count(a, 2, 0)], vec![]));
        assert_eq!(traffic(&engine), [("a".into(), 2, 200, 0, 0), ("b".into(), 0, 0, 0, 0)]);
        // The per-leg part is folded, not kept with the workers' counters.
        assert!(engine.last_stats.as_ref().unwrap().1.iter().all(|c| c.legs.is_empty()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
