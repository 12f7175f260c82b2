//! The link to the dataplane's control socket: pushes deltas and waits for their ack, and
//! resynchronizes in full whenever the installed state is unknown (first connect, reconnect after
//! either process restarted, a refused delta).
//!
//! A resync reads the dataplane's `Snapshot`; when it already equals the desired tables (a
//! control-plane restart) nothing is sent, else a `replace_all` delta of the desired tables is
//! applied. The dataplane keeps the state of every entry that stays, so media is not interrupted.
//! Blocking I/O with timeouts, called from blocking threads and never under the engine's lock
//! (see `controller`). Every call is timed in a [`Liveness`] the rest of the control plane reads
//! without waiting on the link: health, Node status and Apply know the dataplane does not answer
//! (a stopped process still accepts connections but reads nothing) after [`HUNG_AFTER`], not
//! after a call's full timeout.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_api::{Request, Response, UnboundPort, read_frame, write_frame};
use sluice_core::ids::Generation;
use sluice_core::stats::CoreStats;
use sluice_core::table::Delta;

use crate::diff::{Part, Shadow, SpecSet, differing};

/// How long one request may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A call in flight longer than this means the dataplane is not answering (its deltas and
/// snapshots take milliseconds; only a huge replace-all on a loaded node comes near it, and
/// then "degraded" for a moment is the truth).
pub const HUNG_AFTER: Duration = Duration::from_secs(2);

/// What the last call to the dataplane showed.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    /// No call finished yet.
    Unknown,
    /// The last call was answered.
    Answering,
    /// The last call failed at once (no socket, refused, closed): a new try is cheap.
    Unreachable,
    /// The last call timed out: the dataplane is alive but does not answer.
    Hung,
}

#[derive(Debug)]
struct LiveState {
    seen: Seen,
    /// When the call in flight started.
    in_call: Option<Instant>,
    generation: Option<Generation>,
}

/// Whether the dataplane answers, readable at any time without the link (shared by the link,
/// health, Node status and Apply).
#[derive(Debug)]
pub struct Liveness(Mutex<LiveState>);

impl Default for Liveness {
    fn default() -> Self {
        Self(Mutex::new(LiveState { seen: Seen::Unknown, in_call: None, generation: None }))
    }
}

impl Liveness {
    fn state(&self) -> std::sync::MutexGuard<'_, LiveState> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The dataplane answered its last call and none has been waiting for [`HUNG_AFTER`].
    pub fn answering(&self) -> bool {
        let s = self.state();
        s.seen == Seen::Answering && s.in_call.is_none_or(|t| t.elapsed() < HUNG_AFTER)
    }

    /// Health: serving unless the dataplane is known not to answer (nothing is known before the
    /// first call ends, at start).
    pub fn serving(&self) -> bool {
        let s = self.state();
        matches!(s.seen, Seen::Unknown | Seen::Answering) && s.in_call.is_none_or(|t| t.elapsed() < HUNG_AFTER)
    }

    /// The dataplane is alive but does not answer: its last call timed out, or one has been
    /// waiting for [`HUNG_AFTER`]. A caller that cannot wait should not try it now.
    pub fn hung(&self) -> bool {
        let s = self.state();
        s.seen == Seen::Hung || s.in_call.is_some_and(|t| t.elapsed() >= HUNG_AFTER)
    }

    /// The generation installed, as of the last sync.
    pub fn generation(&self) -> Option<Generation> {
        self.state().generation
    }

    fn set_generation(&self, g: Option<Generation>) {
        self.state().generation = g;
    }

    fn start(&self) {
        self.state().in_call = Some(Instant::now());
    }

    fn end(&self, seen: Seen) {
        let mut s = self.state();
        s.in_call = None;
        s.seen = seen;
    }
}

/// Why a sync did not complete.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The dataplane cannot be reached (or went away mid-call).
    #[error("dataplane control socket {path}: {source}")]
    Unreachable {
        /// The socket.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The dataplane refused a delta.
    #[error("dataplane refused generation {generation}: {reason}")]
    Rejected {
        /// The refused delta's generation.
        generation: Generation,
        /// Its reason.
        reason: String,
    },
    /// The dataplane answered something unexpected.
    #[error("dataplane protocol error: {0}")]
    Protocol(String),
    /// The dataplane is alive but has not answered for [`HUNG_AFTER`]: not tried now (the link
    /// task keeps trying and resyncs when it answers).
    #[error("dataplane not answering (stopped or overloaded); not tried")]
    NotAnswering,
}

impl LinkError {
    /// The same error again (for each request of a group that it failed together).
    pub fn duplicate(&self) -> Self {
        match self {
            Self::Unreachable { path, source } => Self::Unreachable { path: path.clone(), source: io::Error::new(source.kind(), source.to_string()) },
            Self::Rejected { generation, reason } => Self::Rejected { generation: *generation, reason: reason.clone() },
            Self::Protocol(m) => Self::Protocol(m.clone()),
            Self::NotAnswering => Self::NotAnswering,
        }
    }
}

/// What a successful sync did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Synced {
    /// The generation the dataplane is at.
    pub generation: Generation,
    /// Ops pushed (0: it was already in sync).
    pub ops: usize,
    /// `Some(entries that differed)` when this was a full resync.
    pub resynced: Option<usize>,
    /// Leg ports the dataplane could not open (all of them, as of this sync; empty when it
    /// did not apply anything).
    pub unbound: Vec<UnboundPort>,
}

/// The connection and the shadow of what is installed.
#[derive(Debug)]
pub struct Link {
    path: PathBuf,
    conn: Option<UnixStream>,
    /// `None`: unknown, a full resync is due.
    shadow: Option<Shadow>,
    /// The shadow equals the tables of the last successful [`Link::sync`] or
    /// [`Link::sync_part`]: a change to one session can then be diffed on that session alone.
    in_step: bool,
    liveness: Arc<Liveness>,
}

impl Link {
    /// A link to the socket at `path` (connected lazily).
    pub fn new(path: &Path) -> Self {
        Self { path: path.to_path_buf(), conn: None, shadow: None, in_step: false, liveness: Arc::default() }
    }

    /// Whether the dataplane answers, shared.
    pub fn liveness(&self) -> Arc<Liveness> {
        self.liveness.clone()
    }

    /// Publishes the installed generation to [`Liveness::generation`].
    pub fn publish_generation(&self) {
        self.liveness.set_generation(self.generation());
    }

    /// Whether a change to one session can be installed by diffing that session alone.
    pub fn in_step(&self) -> bool {
        self.in_step && self.conn.is_some() && self.shadow.is_some()
    }

    /// Whether the connection is up and the shadow known.
    pub fn in_sync_known(&self) -> bool {
        self.conn.is_some() && self.shadow.is_some()
    }

    /// The installed generation, when known.
    pub fn generation(&self) -> Option<Generation> {
        self.shadow.as_ref().map(|s| s.generation)
    }

    fn unreachable(&mut self, source: io::Error) -> LinkError {
        self.conn = None;
        self.shadow = None;
        let timed_out = matches!(source.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut);
        self.liveness.end(if timed_out { Seen::Hung } else { Seen::Unreachable });
        LinkError::Unreachable { path: self.path.clone(), source }
    }

    fn call(&mut self, req: &Request) -> Result<Response, LinkError> {
        self.liveness.start();
        let r = self.call_timed(req);
        if r.is_ok() || matches!(r, Err(LinkError::Protocol(_))) {
            self.liveness.end(Seen::Answering);
        }
        r
    }

    fn call_timed(&mut self, req: &Request) -> Result<Response, LinkError> {
        if self.conn.is_none() {
            let c = UnixStream::connect(&self.path).map_err(|e| self.unreachable(e))?;
            c.set_read_timeout(Some(CALL_TIMEOUT)).map_err(|e| self.unreachable(e))?;
            c.set_write_timeout(Some(CALL_TIMEOUT)).map_err(|e| self.unreachable(e))?;
            let mut c = c;
            // The first frame: the protocol version (a dataplane of another build refuses it).
            let hello = write_frame(&mut c, &Request::Hello { version: sluice_api::PROTOCOL_VERSION }).and_then(|()| {
                read_frame::<_, Response>(&mut c)?.ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "dataplane closed the control socket"))
            });
            match hello {
                Ok(Response::Hello { version }) if version == sluice_api::PROTOCOL_VERSION => {}
                Ok(other) => return Err(self.unreachable(io::Error::new(io::ErrorKind::InvalidData, format!("protocol mismatch: {other:?}")))),
                Err(e) => return Err(self.unreachable(e)),
            }
            self.conn = Some(c);
            self.shadow = None;
        }
        let conn = self.conn.as_mut().expect("connected above");
        let result = write_frame(conn, req)
            .and_then(|()| read_frame::<_, Response>(conn)?.ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "dataplane closed the control socket")));
        match result {
            Ok(Response::Error(e)) => Err(LinkError::Protocol(e)),
            Ok(r) => Ok(r),
            Err(e) => Err(self.unreachable(e)),
        }
    }

    /// Brings the dataplane to `desired`: a minimal delta against the shadow, or a full resync
    /// when the shadow is unknown.
    pub fn sync(&mut self, desired: &SpecSet) -> Result<Synced, LinkError> {
        self.in_step = false;
        let had_connection = self.conn.is_some();
        let r = match self.sync_once(desired) {
            // The connection was stale (the dataplane restarted since the last call): one fresh
            // connection and a full resync before reporting it unreachable.
            Err(LinkError::Unreachable { .. }) if had_connection => self.resync(desired),
            r => r,
        };
        self.in_step = r.is_ok();
        r
    }

    /// Installs `part`, the entries the changes since the last sync touched and what they are
    /// now, when the link is in step with the rest (the last sync succeeded and nothing else
    /// changed since): the delta is diffed against the shadow on those entries alone, and the
    /// delta and the shadow's update cost the change's size, not its session's or the node's.
    /// Otherwise, or when the dataplane is not where the shadow says, a full [`Link::sync`] to
    /// `full()`.
    pub fn sync_part(&mut self, part: &Part, full: impl FnOnce() -> SpecSet) -> Result<Synced, LinkError> {
        let Some(shadow) = self.shadow.as_ref().filter(|_| self.in_step && self.conn.is_some()) else {
            return self.sync(&full());
        };
        let generation = shadow.generation;
        let ops = crate::diff::part_ops(&shadow.tables, part);
        if ops.is_empty() {
            return Ok(Synced { generation, ops: 0, resynced: None, unbound: Vec::new() });
        }
        self.in_step = false;
        let n = ops.len();
        let delta = Delta { generation: Generation(generation.0 + 1), replace_all: false, ops };
        match self.call(&Request::Apply(delta)).map(applied) {
            Ok(Ok((g, unbound))) => {
                if let Some(shadow) = self.shadow.as_mut() {
                    shadow.generation = g;
                    shadow.tables.patch(part);
                    self.in_step = true;
                }
                Ok(Synced { generation: g, ops: n, resynced: None, unbound })
            }
            Ok(Err(Response::Rejected { generation: current, reason })) => {
                self.shadow = None;
                if current.0 != generation.0 {
                    // Someone else moved the dataplane: learn what it has.
                    return self.sync(&full());
                }
                Err(LinkError::Rejected { generation: Generation(generation.0 + 1), reason })
            }
            Ok(Err(other)) => Err(LinkError::Protocol(format!("unexpected answer to Apply: {other:?}"))),
            // A stale connection (the dataplane restarted): reconnect and resync in full.
            Err(LinkError::Unreachable { .. }) => self.sync(&full()),
            Err(e) => Err(e),
        }
    }

    fn sync_once(&mut self, desired: &SpecSet) -> Result<Synced, LinkError> {
        if self.conn.is_none() || self.shadow.is_none() {
            return self.resync(desired);
        }
        let shadow = self.shadow.as_ref().expect("checked");
        let Some(delta) = shadow.delta_to(desired) else {
            return Ok(Synced { generation: shadow.generation, ops: 0, resynced: None, unbound: Vec::new() });
        };
        let ops = delta.ops.len();
        match self.apply(delta, desired)? {
            Some((g, unbound)) => Ok(Synced { generation: g, ops, resynced: None, unbound }),
            // The dataplane is not where the shadow says (someone else applied, or it restarted
            // between our calls): learn what it has.
            None => self.resync(desired),
        }
    }

    /// `Ok(None)` when refused for its generation.
    fn apply(&mut self, delta: Delta, desired: &SpecSet) -> Result<Option<(Generation, Vec<UnboundPort>)>, LinkError> {
        let generation = delta.generation;
        match applied(self.call(&Request::Apply(delta))?) {
            Ok((g, unbound)) => {
                self.shadow = Some(Shadow { generation: g, tables: desired.clone() });
                Ok(Some((g, unbound)))
            }
            Err(Response::Rejected { generation: current, reason }) => {
                self.shadow = None;
                if current.0 + 1 != generation.0 {
                    return Ok(None);
                }
                Err(LinkError::Rejected { generation, reason })
            }
            Err(other) => Err(LinkError::Protocol(format!("unexpected answer to Apply: {other:?}"))),
        }
    }

    /// Full resync: compare the dataplane's snapshot with `desired`, replace everything if they
    /// differ. The snapshot is taken without keys (the dataplane shows their digests, compared
    /// with those of `desired`): the control plane never reads key material back.
    pub fn resync(&mut self, desired: &SpecSet) -> Result<Synced, LinkError> {
        let snap = match self.call(&Request::Snapshot { keys: false })? {
            Response::Snapshot(d) => d,
            other => return Err(LinkError::Protocol(format!("unexpected answer to Snapshot: {other:?}"))),
        };
        let installed = SpecSet::from_ops(&snap.ops);
        let differ = differing(&installed, &desired.redacted_keys());
        if differ == 0 {
            // Equal but for the redaction: the shadow holds the keys the dataplane has.
            self.shadow = Some(Shadow { generation: snap.generation, tables: desired.clone() });
            return Ok(Synced { generation: snap.generation, ops: 0, resynced: Some(0), unbound: Vec::new() });
        }
        let delta = Delta { generation: Generation(snap.generation.0 + 1), replace_all: true, ops: desired.to_ops() };
        let ops = delta.ops.len();
        match self.apply(delta, desired)? {
            Some((g, unbound)) => Ok(Synced { generation: g, ops, resynced: Some(differ), unbound }),
            None => Err(LinkError::Protocol("replace-all delta refused for its generation".into())),
        }
    }

    /// Checks the dataplane is still the one the shadow describes (a restarted dataplane drops
    /// the connection; another writer changes the generation). Marks the shadow unknown if not.
    pub fn check(&mut self) -> Result<Generation, LinkError> {
        match self.call(&Request::Generation)? {
            Response::Generation(g) => {
                if self.shadow.as_ref().is_some_and(|s| s.generation != g) {
                    self.shadow = None;
                }
                Ok(g)
            }
            other => Err(LinkError::Protocol(format!("unexpected answer to Generation: {other:?}"))),
        }
    }

    /// The dataplane's WebRTC slow path: DTLS fingerprint, listen address, counters; with
    /// `rotate`, after making a new DTLS certificate.
    pub fn edge(&mut self, rotate: bool) -> Result<sluice_api::EdgeStatus, LinkError> {
        match self.call(&Request::Edge { rotate })? {
            Response::Edge(s) => Ok(s),
            other => Err(LinkError::Protocol(format!("unexpected answer to Edge: {other:?}"))),
        }
    }

    /// The stream state of `legs` now (see [`Request::StreamState`]).
    pub fn stream_state(&mut self, legs: Vec<sluice_core::ids::LegId>) -> Result<sluice_core::table::checkpoint::Checkpoint, LinkError> {
        match self.call(&Request::StreamState { legs })? {
            Response::StreamState(c) => Ok(c),
            other => Err(LinkError::Protocol(format!("unexpected answer to StreamState: {other:?}"))),
        }
    }

    /// Resumes a moved session's streams exactly (see [`Request::Restore`]).
    pub fn restore(&mut self, state: sluice_core::table::checkpoint::Checkpoint) -> Result<(), LinkError> {
        match self.call(&Request::Restore(state))? {
            Response::Restoring => Ok(()),
            other => Err(LinkError::Protocol(format!("unexpected answer to Restore: {other:?}"))),
        }
    }

    /// Per-worker counters.
    pub fn stats(&mut self) -> Result<Vec<CoreStats>, LinkError> {
        match self.call(&Request::Stats)? {
            Response::Stats(s) => Ok(s),
            other => Err(LinkError::Protocol(format!("unexpected answer to Stats: {other:?}"))),
        }
    }
}

/// An answer to Apply as (generation, ports the dataplane could not open), or the answer itself
/// when it is not one of the two applied forms.
fn applied(r: Response) -> Result<(Generation, Vec<UnboundPort>), Response> {
    match r {
        Response::Applied(g) => Ok((g, Vec::new())),
        Response::AppliedUnbound { generation, unbound } => Ok((generation, unbound)),
        other => Err(other),
    }
}
