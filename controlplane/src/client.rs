//! The link to the dataplane's control socket: pushes deltas and waits for their ack, and
//! resynchronizes in full whenever the installed state is unknown (first connect, reconnect after
//! either process restarted, a refused delta).
//!
//! A resync reads the dataplane's `Snapshot`; when it already equals the desired tables (a
//! control-plane restart) nothing is sent, else a `replace_all` delta of the desired tables is
//! applied. The dataplane keeps the state of every entry that stays, so media is not interrupted.
//! Blocking I/O with timeouts: the engine calls it from blocking threads.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sluice_api::{Request, Response, read_frame, write_frame};
use sluice_core::ids::Generation;
use sluice_core::stats::CoreStats;
use sluice_core::table::Delta;

use crate::diff::{Shadow, SpecSet, differing};

/// How long one request may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

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
}

impl LinkError {
    /// The same error again (for each request of a group that it failed together).
    pub fn duplicate(&self) -> Self {
        match self {
            Self::Unreachable { path, source } => Self::Unreachable { path: path.clone(), source: io::Error::new(source.kind(), source.to_string()) },
            Self::Rejected { generation, reason } => Self::Rejected { generation: *generation, reason: reason.clone() },
            Self::Protocol(m) => Self::Protocol(m.clone()),
        }
    }
}

/// What a successful sync did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Synced {
    /// The generation the dataplane is at.
    pub generation: Generation,
    /// Ops pushed (0: it was already in sync).
    pub ops: usize,
    /// `Some(entries that differed)` when this was a full resync.
    pub resynced: Option<usize>,
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
}

impl Link {
    /// A link to the socket at `path` (connected lazily).
    pub fn new(path: &Path) -> Self {
        Self { path: path.to_path_buf(), conn: None, shadow: None, in_step: false }
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
        LinkError::Unreachable { path: self.path.clone(), source }
    }

    fn call(&mut self, req: &Request) -> Result<Response, LinkError> {
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

    /// Brings the dataplane from `before` to `after`, one session's part of the tables before
    /// and after a change, when the link is in step with the rest (the last sync succeeded and
    /// nothing else changed since): the delta and the shadow update then cost the session's
    /// size, not the node's. Otherwise, or when the dataplane is not where the shadow says, a
    /// full [`Link::sync`] to `full()`.
    pub fn sync_part(&mut self, before: &SpecSet, after: &SpecSet, full: impl FnOnce() -> SpecSet) -> Result<Synced, LinkError> {
        let Some(generation) = self.shadow.as_ref().map(|s| s.generation).filter(|_| self.in_step && self.conn.is_some()) else {
            return self.sync(&full());
        };
        let ops = crate::diff::ops(before, after);
        if ops.is_empty() {
            return Ok(Synced { generation, ops: 0, resynced: None });
        }
        self.in_step = false;
        let n = ops.len();
        let delta = Delta { generation: Generation(generation.0 + 1), replace_all: false, ops };
        match self.call(&Request::Apply(delta)) {
            Ok(Response::Applied(g)) => {
                if let Some(shadow) = self.shadow.as_mut() {
                    shadow.generation = g;
                    shadow.tables.replace_part(before, after);
                    self.in_step = true;
                }
                Ok(Synced { generation: g, ops: n, resynced: None })
            }
            Ok(Response::Rejected { generation: current, reason }) => {
                self.shadow = None;
                if current.0 != generation.0 {
                    // Someone else moved the dataplane: learn what it has.
                    return self.sync(&full());
                }
                Err(LinkError::Rejected { generation: Generation(generation.0 + 1), reason })
            }
            Ok(other) => Err(LinkError::Protocol(format!("unexpected answer to Apply: {other:?}"))),
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
            return Ok(Synced { generation: shadow.generation, ops: 0, resynced: None });
        };
        let ops = delta.ops.len();
        match self.apply(delta, desired)? {
            Some(g) => Ok(Synced { generation: g, ops, resynced: None }),
            // The dataplane is not where the shadow says (someone else applied, or it restarted
            // between our calls): learn what it has.
            None => self.resync(desired),
        }
    }

    /// `Ok(None)` when refused for its generation.
    fn apply(&mut self, delta: Delta, desired: &SpecSet) -> Result<Option<Generation>, LinkError> {
        let generation = delta.generation;
        match self.call(&Request::Apply(delta))? {
            Response::Applied(g) => {
                self.shadow = Some(Shadow { generation: g, tables: desired.clone() });
                Ok(Some(g))
            }
            Response::Rejected { generation: current, reason } => {
                self.shadow = None;
                if current.0 + 1 != generation.0 {
                    return Ok(None);
                }
                Err(LinkError::Rejected { generation, reason })
            }
            other => Err(LinkError::Protocol(format!("unexpected answer to Apply: {other:?}"))),
        }
    }

    /// Full resync: compare the dataplane's snapshot with `desired`, replace everything if they
    /// differ.
    pub fn resync(&mut self, desired: &SpecSet) -> Result<Synced, LinkError> {
        let snap = match self.call(&Request::Snapshot)? {
            Response::Snapshot(d) => d,
            other => return Err(LinkError::Protocol(format!("unexpected answer to Snapshot: {other:?}"))),
        };
        let installed = SpecSet::from_ops(&snap.ops);
        let differ = differing(&installed, desired);
        if differ == 0 {
            self.shadow = Some(Shadow { generation: snap.generation, tables: installed });
            return Ok(Synced { generation: snap.generation, ops: 0, resynced: Some(0) });
        }
        let delta = Delta { generation: Generation(snap.generation.0 + 1), replace_all: true, ops: desired.to_ops() };
        let ops = delta.ops.len();
        match self.apply(delta, desired)? {
            Some(g) => Ok(Synced { generation: g, ops, resynced: Some(differ) }),
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

    /// Per-worker counters.
    pub fn stats(&mut self) -> Result<Vec<CoreStats>, LinkError> {
        match self.call(&Request::Stats)? {
            Response::Stats(s) => Ok(s),
            other => Err(LinkError::Protocol(format!("unexpected answer to Stats: {other:?}"))),
        }
    }
}
