//! The engine: commits validated changes to the desired state (journaled before anything is
//! acknowledged), compiles them, pushes them to the dataplane and publishes events. Synchronous:
//! the API runs it on blocking threads, one request at a time, which is also the order deltas
//! must reach the dataplane in.
//!
//! Apply semantics: a change set is committed (durable) first, then pushed. If the dataplane
//! does not ack, the change stays committed as desired state, the caller gets UNAVAILABLE saying
//! so, and the link task installs it on reconnect; a retry with the same idempotency key returns
//! the committed answer once the dataplane has it.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use sluice_core::forward::Event;
use sluice_core::stats::CoreStats;

use tokio::sync::broadcast;

use crate::client::{Link, LinkError, Synced};
use crate::diff::SpecSet;
use crate::journal::{Journal, JournalError, Record};
use crate::lb::Lb;
use crate::names::Names;
use crate::pb;
use crate::state::{Desired, EdgeInfo, Outcome, StateError, webrtc_local};

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
}

/// The engine state; share it as [`SharedEngine`].
#[derive(Debug)]
pub struct Engine {
    desired: Desired,
    journal: Journal,
    link: Link,
    events: broadcast::Sender<pb::Event>,
    lb: Option<Arc<Lb>>,
    /// Cached: the dataplane's DTLS fingerprint and the address WebRTC candidates announce.
    edge: EdgeInfo,
    announce_ip: Option<std::net::IpAddr>,
    /// Names of the dataplane's ids, updated with every committed session.
    names: Names,
    /// Per-worker (rx, tx) packets per second, from the dataplane's stats stream.
    rates: Vec<(f64, f64)>,
    last_stats: Option<(Instant, Vec<CoreStats>)>,
}

/// Events a watcher may fall behind by before it is told it lost some.
pub const WATCH_BUFFER: usize = 16 * 1024;

/// The engine behind its lock.
pub type SharedEngine = Arc<Mutex<Engine>>;

/// Locks the engine (a panic while holding it must not wedge the node: the state is only
/// replaced after a complete, validated change).
pub fn lock(e: &SharedEngine) -> MutexGuard<'_, Engine> {
    e.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Engine {
    /// An engine over recovered state.
    pub fn new(desired: Desired, journal: Journal, link: Link) -> Self {
        let (events, _) = broadcast::channel(WATCH_BUFFER);
        let names = Names::build(&desired);
        Self { desired, journal, link, events, lb: None, names, rates: Vec::new(), last_stats: None, edge: EdgeInfo::default(), announce_ip: None }
    }

    /// Consults the load balancer's state in Redis before creating sessions.
    pub fn set_lb(&mut self, lb: Arc<Lb>) {
        self.lb = Some(lb);
    }

    /// The desired state.
    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    /// The dataplane link.
    pub fn link(&mut self) -> &mut Link {
        &mut self.link
    }

    /// A new event subscription.
    pub fn subscribe(&self) -> broadcast::Receiver<pb::Event> {
        self.events.subscribe()
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
    /// once (and after a rotation), the address overridden by `announce_ip` when configured.
    pub fn edge_info(&mut self) -> EdgeInfo {
        if self.edge.fingerprint.is_empty()
            && let Ok(s) = self.link.edge(false)
        {
            self.edge = EdgeInfo { ip: self.announce_ip.or(s.listen_ip), fingerprint: s.fingerprint };
        }
        self.edge.clone()
    }

    /// Sets the address WebRTC candidates announce (instead of the dataplane's listen address).
    pub fn set_announce_ip(&mut self, ip: Option<std::net::IpAddr>) {
        self.announce_ip = ip;
        self.edge.ip = ip.or(self.edge.ip);
    }

    /// Makes the dataplane rotate its DTLS certificate; the new fingerprint goes into answers
    /// from now on (connected legs keep their association).
    pub fn rotate_certificate(&mut self) -> Result<String, LinkError> {
        let s = self.link.edge(true)?;
        self.edge = EdgeInfo { ip: self.announce_ip.or(s.listen_ip), fingerprint: s.fingerprint.clone() };
        Ok(s.fingerprint)
    }

    /// The session as the API shows it, with Sluice's side of its WebRTC legs.
    pub fn session_view(&mut self, name: &str) -> Result<pb::Session, StateError> {
        let info = self.edge_info();
        self.desired.session_view(name, &info)
    }

    /// Installs a committed outcome: `part` is its session's tables (before, after), so only
    /// that session is diffed when the link is in step.
    fn install(&mut self, outcome: Outcome, part: (SpecSet, SpecSet)) -> Result<pb::ApplyResponse, EngineError> {
        let synced = self.sync_part(&part.0, &part.1).map_err(|source| EngineError::NotInstalled {
            session: outcome.session.clone(),
            revision: outcome.committed.revision,
            source,
        })?;
        Ok(self.respond(outcome, synced))
    }

    /// Publishes an installed outcome's events and makes its answer.
    fn respond(&mut self, outcome: Outcome, synced: Synced) -> pb::ApplyResponse {
        for mut e in outcome.events {
            if let Some(pb::event::Event::ChangeApplied(c)) = &mut e.event {
                c.generation = synced.generation.0;
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
                        let webrtc = legs.and_then(|l| l.get(&leg)).and_then(|spec| webrtc_local(spec, &info));
                        pb::PortAllocation { leg, local_port: u32::from(p), webrtc }
                    })
                    .collect()
            },
            generation: synced.generation.0,
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

    /// Applies several change sets as one group commit, in order: each is validated against the
    /// state the ones before it left (a refused one changes nothing and is answered on its own),
    /// the accepted ones are journaled with one fsync and installed with one delta, and each gets
    /// its own answer. What one change set sees and gets is what [`Engine::apply`] would give it
    /// called in the same order; the gain is one fsync and one dataplane round trip per group.
    pub fn apply_many(&mut self, reqs: &[pb::ChangeSet]) -> Vec<Result<pb::ApplyResponse, EngineError>> {
        let mut results: Vec<Option<Result<pb::ApplyResponse, EngineError>>> = reqs.iter().map(|_| None).collect();
        // Each touched session's tables before the group, the undo points, the records.
        let mut before: std::collections::BTreeMap<String, SpecSet> = std::collections::BTreeMap::new();
        let mut undo = Vec::new();
        let mut records = Vec::new();
        let mut done: Vec<(usize, Outcome)> = Vec::new();
        for (i, req) in reqs.iter().enumerate() {
            let prepared = match self.admit(req).and_then(|()| self.desired.prepare(req).map_err(EngineError::State)) {
                Ok(p) => p,
                Err(e) => {
                    results[i] = Some(Err(e));
                    continue;
                }
            };
            if !prepared.outcome.replayed {
                before.entry(req.session.clone()).or_insert_with(|| self.desired.session_tables(&req.session));
                undo.push(self.desired.undo_point(&req.session));
                records.push(Record::Apply(req.clone()));
            }
            done.push((i, self.desired.commit(prepared)));
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
                return results.into_iter().map(Self::answered).collect();
            }
            self.compact_if_due();
        }
        let mut part = (SpecSet::default(), SpecSet::default());
        for (session, tables) in &before {
            self.names.update(&self.desired, session);
            let after = self.desired.session_tables(session);
            part.0.replace_part(&SpecSet::default(), tables);
            part.1.replace_part(&SpecSet::default(), &after);
        }
        let synced = self.sync_part(&part.0, &part.1);
        for (i, outcome) in done {
            results[i] = Some(match &synced {
                Ok(s) => Ok(self.respond(outcome, *s)),
                Err(e) => Err(EngineError::NotInstalled { session: outcome.session.clone(), revision: outcome.committed.revision, source: e.duplicate() }),
            });
        }
        results.into_iter().map(Self::answered).collect()
    }

    /// Every request of a group is answered on every path above; a gap would be a bug here,
    /// reported to its caller rather than a panic.
    fn answered(r: Option<Result<pb::ApplyResponse, EngineError>>) -> Result<pb::ApplyResponse, EngineError> {
        r.unwrap_or_else(|| Err(EngineError::Journal(JournalError::Replay { seq: 0, why: "the group commit left this request unanswered".into() })))
    }

    /// Applies a change set (a group of one).
    pub fn apply(&mut self, req: &pb::ChangeSet) -> Result<pb::ApplyResponse, EngineError> {
        Self::answered(self.apply_many(std::slice::from_ref(req)).pop())
    }

    /// Deletes a session.
    pub fn delete_session(&mut self, req: &pb::DeleteSessionRequest) -> Result<pb::ApplyResponse, EngineError> {
        self.desired.check_delete(req)?;
        let before = self.desired.session_tables(&req.session);
        let outcome = self.commit(&Record::Delete(req.clone()), |d| d.delete_session(req))?.map_err(EngineError::State)?;
        self.names.update(&self.desired, &req.session);
        self.install(outcome, (before, SpecSet::default()))
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
                let _ = self.events.send(ev);
            }
        }
    }

    /// Takes the dataplane's streamed counters: the node's packet rates come from two in a row.
    pub fn dataplane_stats(&mut self, stats: &[CoreStats]) {
        let now = Instant::now();
        if let Some((then, prev)) = &self.last_stats
            && prev.len() == stats.len()
        {
            let secs = now.duration_since(*then).as_secs_f64().max(1e-3);
            let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
            self.rates = stats.iter().zip(prev).map(|(c, p)| (rate(c.rx_packets, p.rx_packets), rate(c.tx_packets, p.tx_packets))).collect();
        }
        self.last_stats = Some((now, stats.to_vec()));
    }

    /// Brings the dataplane to the desired state (a full resync when its state is unknown),
    /// publishing a `DataplaneResynced` event after a resync.
    pub fn sync(&mut self) -> Result<Synced, LinkError> {
        let synced = self.link.sync(&self.desired.tables())?;
        self.report_resync(synced);
        Ok(synced)
    }

    /// [`Engine::sync`] after a change to one session, diffing only its part of the tables
    /// (`before`, `after`) when the link is in step.
    fn sync_part(&mut self, before: &SpecSet, after: &SpecSet) -> Result<Synced, LinkError> {
        let desired = &self.desired;
        let synced = self.link.sync_part(before, after, || desired.tables())?;
        self.report_resync(synced);
        Ok(synced)
    }

    fn report_resync(&mut self, synced: Synced) {
        if let Some(differing) = synced.resynced {
            tracing::info!(generation = synced.generation.0, differing, ops = synced.ops, "dataplane resynced");
            let _ = self.events.send(pb::Event {
                session: String::new(),
                revision: 0,
                event: Some(pb::event::Event::DataplaneResynced(pb::DataplaneResynced { generation: synced.generation.0, differing: differing as u32 })),
            });
        }
    }

    /// One turn of the link task: verify the dataplane is still what we think, resync if not.
    pub fn tick(&mut self) -> Result<Synced, LinkError> {
        if self.link.in_sync_known() {
            self.link.check()?;
        }
        self.sync()
    }

    /// The node's status.
    pub fn status(&mut self) -> pb::NodeStatus {
        let d = &self.desired;
        let ports_used = d.ports_used().len() as u32;
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
        };
        if let Ok(stats) = self.link.stats() {
            s.dataplane_connected = true;
            s.dataplane_generation = self.link.generation().map_or(0, |g| g.0);
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
                    rx_packets_per_second: self.rates.get(i).map_or(0.0, |r| r.0),
                    tx_packets_per_second: self.rates.get(i).map_or(0.0, |r| r.1),
                })
                .collect();
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::PortRange;
    use crate::state::fixtures::*;

    const PORTS: PortRange = PortRange { start: 30_000, end: 30_099 };

    /// A group commit answers each change set as sequential Applies would, journals exactly the
    /// accepted ones (recovery rebuilds the same state), and a refused one in the middle changes
    /// nothing. (No dataplane here: accepted changes are committed and answered UNAVAILABLE.)
    #[test]
    fn a_group_commit_is_the_sequence_of_its_change_sets() {
        let dir = std::env::temp_dir().join(format!("sluice-engine-group-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (journal, desired, _) = Journal::open(&dir, PORTS).unwrap();
        let mut engine = Engine::new(desired, journal, Link::new(&dir.join("no-dataplane.sock")));
        let group = vec![
            pair("m"),
            // Refused: an unknown track.
            req("m", vec![sub("a", "nope", 1000, 0, false)]),
            // Sees the first one's legs and tracks.
            req("m", vec![sub("a", "vb", 1000, 1, true)]),
            pair("n"),
        ];
        let results = engine.apply_many(&group);
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
}
