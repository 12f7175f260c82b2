//! The controller: the engine (desired state, journal, events) and the dataplane link, each
//! behind its own lock. The engine's lock is held only for state work (validation, the journal's
//! append, answers); dataplane I/O holds only the link's lock, taking the engine's for a moment
//! to read what changed. So a dataplane that does not answer (stopped, overloaded) delays no
//! read: GetSession, ListSessions, Node status and Watch answer from the control plane's state.
//!
//! Deltas reach the dataplane in commit order: whoever holds the link takes every change
//! committed so far ([`Engine::take_changes`]) and installs it as one delta (or a full resync
//! when the link is not in step), so a later install never overtakes an earlier one.
//!
//! Apply semantics are the engine's: committed (durable) first, then installed; not installed
//! means UNAVAILABLE naming the committed revision, and the link task installs it when the
//! dataplane is back. While the dataplane is known not to answer ([`Liveness::hung`]), an Apply
//! does not wait for it at all.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::Duration;

use tokio::sync::broadcast;

use crate::client::{Link, LinkError, Liveness, Synced};
use crate::engine::{Engine, EngineError};

/// How many times an Apply moves a new leg off a port the dataplane could not open before it
/// answers with the failure.
const MOVE_ROUNDS: usize = 3;
use crate::pb;

/// The engine and the link; share it as [`Shared`].
#[derive(Debug)]
pub struct Controller {
    engine: Mutex<Engine>,
    link: Mutex<Link>,
    liveness: Arc<Liveness>,
    events: broadcast::Sender<pb::Event>,
}

/// The controller, shared by the API, the link task, the event thread and the heartbeat.
pub type Shared = Arc<Controller>;

impl Controller {
    /// A controller over `engine`, installing through `link`.
    pub fn new(engine: Engine, link: Link) -> Shared {
        let liveness = link.liveness();
        let events = engine.events();
        Arc::new(Self { engine: Mutex::new(engine), link: Mutex::new(link), liveness, events })
    }

    /// Locks the engine (a panic while holding it must not wedge the node: the state is only
    /// replaced after a complete, validated change).
    pub fn engine(&self) -> MutexGuard<'_, Engine> {
        self.engine.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the dataplane answers.
    pub fn liveness(&self) -> &Liveness {
        &self.liveness
    }

    /// A new event subscription (no lock taken).
    pub fn subscribe(&self) -> broadcast::Receiver<pb::Event> {
        self.events.subscribe()
    }

    /// The link, waiting for it only while the dataplane answers: a caller never waits behind a
    /// call to a dataplane that does not answer.
    fn link_unless_hung(&self) -> Result<MutexGuard<'_, Link>, LinkError> {
        loop {
            if self.liveness.hung() {
                return Err(LinkError::NotAnswering);
            }
            match self.link.try_lock() {
                Ok(l) => return Ok(l),
                Err(TryLockError::Poisoned(p)) => return Ok(p.into_inner()),
                Err(TryLockError::WouldBlock) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }

    /// Installs every change committed so far (one session-sized delta when the link is in
    /// step, else a full resync), then learns the dataplane's WebRTC edge if not known yet.
    fn install(&self, link: &mut Link) -> Result<Synced, LinkError> {
        let part = self.engine().take_changes();
        let synced = link.sync_part(&part, || self.engine().full_tables());
        link.publish_generation();
        let synced = synced?;
        self.engine().report_resync(&synced);
        let known = self.engine().edge_known();
        if !known && let Ok(s) = link.edge(false) {
            self.engine().set_edge(&s);
        }
        Ok(synced)
    }

    /// Applies several change sets as one group commit (see [`Engine::commit_many`]): journaled
    /// under the engine's lock, installed under the link's.
    pub fn apply_many(&self, reqs: &[pb::ChangeSet]) -> Vec<Result<pb::ApplyResponse, EngineError>> {
        let (answers, mut committed) = self.engine().commit_many(reqs);
        let synced = if committed.is_empty() {
            Err(LinkError::NotAnswering)
        } else {
            self.link_unless_hung().and_then(|mut l| {
                let mut synced = self.install(&mut l)?;
                // A new leg's port the dataplane could not open gets another before the answer,
                // so what is acknowledged is what the dataplane opened.
                for _ in 0..MOVE_ROUNDS {
                    if !self.engine().move_unbound(&mut committed, &synced.unbound) {
                        break;
                    }
                    synced = self.install(&mut l)?;
                }
                self.engine().note_unbound(&synced);
                Ok(synced)
            })
        };
        self.engine().answer(answers, committed, &synced)
    }

    /// Deletes a session.
    pub fn delete_session(&self, req: &pb::DeleteSessionRequest) -> Result<pb::ApplyResponse, EngineError> {
        let outcome = self.engine().delete_session(req)?;
        let synced = self.link_unless_hung().and_then(|mut l| self.install(&mut l));
        if let Ok(s) = &synced {
            self.engine().note_unbound(s);
        }
        Engine::answered(self.engine().answer(vec![None], vec![(0, outcome)], &synced).pop())
    }

    /// One turn of the link task: verify the dataplane is still what we think, install what is
    /// pending or resync. Waits for the link (the task is the one that finds out the dataplane
    /// answers again).
    pub fn tick(&self) -> Result<Synced, LinkError> {
        let mut link = self.link.lock().unwrap_or_else(PoisonError::into_inner);
        if link.in_sync_known() {
            link.check()?;
        }
        // Counters until the stats stream's first report (a second after it connects).
        let streamed = self.engine().has_stats();
        if !streamed && let Ok(stats) = link.stats() {
            self.engine().dataplane_stats(&stats);
        }
        let synced = self.install(&mut link)?;
        self.engine().note_unbound(&synced);
        Ok(synced)
    }

    /// Makes the dataplane rotate its DTLS certificate; the new fingerprint goes into answers
    /// from now on (connected legs keep their association).
    pub fn rotate_certificate(&self) -> Result<String, LinkError> {
        let s = self.link_unless_hung()?.edge(true)?;
        self.engine().set_edge(&s);
        Ok(s.fingerprint)
    }

    /// The stream state of `legs` in the dataplane now.
    pub fn stream_state(&self, legs: Vec<sluice_core::ids::LegId>) -> Result<sluice_core::table::checkpoint::Checkpoint, LinkError> {
        self.link_unless_hung()?.stream_state(legs)
    }

    /// Resumes a moved session's streams in the dataplane exactly.
    pub fn restore(&self, state: sluice_core::table::checkpoint::Checkpoint) -> Result<(), LinkError> {
        self.link_unless_hung()?.restore(state)
    }

    /// The node's status (no dataplane call: its counters come from the stats stream).
    pub fn status(&self) -> pb::NodeStatus {
        self.engine().status(&self.liveness)
    }
}
