//! Durability of the desired state: an append-only journal of the committed requests plus a
//! compacted snapshot, in the state directory.
//!
//! Why a journal of requests: [`crate::state::Desired`] is a pure, deterministic state machine
//! (ids, ports and idempotency records are all derived from the request sequence), so replaying
//! the committed requests in order rebuilds exactly the state that was acknowledged. Each record
//! is fsynced before the API answers, so an acknowledged change survives `kill -9` and power loss.
//! Every [`COMPACT_EVERY`] records the whole state is written to `state.json` (write to a
//! temporary file, fsync, rename, fsync the directory) and the journal restarts empty.
//!
//! ```text
//! journal.bin record:  len u32 BE | fnv64(payload) u64 BE | payload
//! payload:             seq u64 BE | kind u8 | protobuf body
//! ```
//!
//! `seq` numbers every record ever written; the snapshot stores the last one it includes, so a
//! crash between the snapshot's rename and the journal's truncation replays nothing twice. A torn
//! or corrupt tail (a crash mid-append) ends the replay there and is cut off.
//!
//! One process per state directory: [`Journal::open`] takes an exclusive lock on `lock` in it
//! (holding the PID) before reading anything, and a second control plane refuses to start.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use prost::Message as _;
use serde::{Deserialize, Serialize};

use sluice_dataplane::lock::InstanceLock;

use crate::pb;
use crate::state::{Desired, PortRange, fingerprint};

/// Records between snapshots.
pub const COMPACT_EVERY: u64 = 1000;

/// A journal failure.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// File I/O failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The snapshot does not parse.
    #[error("snapshot {path}: {source}")]
    Snapshot {
        /// The file.
        path: PathBuf,
        /// The error.
        source: serde_json::Error,
    },
    /// Another process holds the state directory.
    #[error(transparent)]
    Locked(#[from] sluice_dataplane::lock::LockError),
    /// A journaled request no longer applies (the journal belongs to another build or range).
    #[error("journal record {seq} does not replay: {why}")]
    Replay {
        /// The record.
        seq: u64,
        /// Why.
        why: String,
    },
}

/// One committed state change.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    /// A change set.
    Apply(pb::ChangeSet),
    /// A session deletion.
    Delete(pb::DeleteSessionRequest),
    /// Drain (true) or undrain (false).
    Drain(bool),
}

impl Record {
    /// Applies the record to the state (the same code path the API used).
    pub fn replay(&self, d: &mut Desired) -> Result<(), String> {
        match self {
            Record::Apply(r) => d.apply(r).map(drop).map_err(|e| e.to_string()),
            Record::Delete(r) => d.delete_session(r).map(drop).map_err(|e| e.to_string()),
            Record::Drain(on) => {
                d.draining = *on;
                Ok(())
            }
        }
    }

    fn encode(&self) -> (u8, Vec<u8>) {
        match self {
            Record::Apply(r) => (1, r.encode_to_vec()),
            Record::Delete(r) => (2, r.encode_to_vec()),
            Record::Drain(on) => (3, vec![u8::from(*on)]),
        }
    }

    fn decode(kind: u8, body: &[u8]) -> Option<Self> {
        match kind {
            1 => pb::ChangeSet::decode(body).ok().map(Record::Apply),
            2 => pb::DeleteSessionRequest::decode(body).ok().map(Record::Delete),
            3 => Some(Record::Drain(body.first() == Some(&1))),
            _ => None,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    last_seq: u64,
    desired: Desired,
}

/// The open journal.
#[derive(Debug)]
pub struct Journal {
    /// One process per state directory: held for as long as the journal is open.
    _lock: InstanceLock,
    dir: PathBuf,
    file: File,
    seq: u64,
    since_snapshot: u64,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> JournalError {
    let path = path.to_path_buf();
    move |source| JournalError::Io { op, path, source }
}

/// The node's secret for WebRTC legs' ICE credentials (`ice.secret`, owner only): made once, so
/// a restarted control plane (and a journal replay) derives the same credentials.
fn ice_secret(dir: &Path) -> Result<Vec<u8>, JournalError> {
    let path = dir.join("ice.secret");
    match std::fs::read(&path) {
        Ok(b) if b.len() == 32 => return Ok(b),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("read", &path)(e)),
    }
    let mut secret = vec![0u8; 32];
    aws_lc_rs::rand::fill(&mut secret).map_err(|_| io_err("random bytes for", &path)(io::Error::other("no randomness")))?;
    let tmp = dir.join("ice.secret.tmp");
    std::fs::write(&tmp, &secret).map_err(io_err("write", &tmp))?;
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600)).map_err(io_err("chmod", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_err("rename", &path))?;
    Ok(secret)
}

impl Journal {
    /// Opens (creating) the state in `dir` and recovers the desired state: the snapshot, then
    /// every journal record after it. A new state starts with `ports`; a recovered one keeps its
    /// own range unless `ports` differs, in which case the configured range wins for new legs.
    pub fn open(dir: &Path, ports: PortRange) -> Result<(Self, Desired, RecoveryInfo), JournalError> {
        std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        // The journal holds SRTP master keys: owner only.
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).map_err(io_err("chmod", dir))?;
        // Before anything is read or written: two control planes on one directory would each
        // replay, allocate the same ports to different sessions and truncate each other's records.
        let lock = InstanceLock::acquire(&dir.join("lock"), &format!("state directory {}", dir.display()))?;
        let snap_path = dir.join("state.json");
        let (mut desired, snap_seq) = match std::fs::read(&snap_path) {
            Ok(bytes) => {
                let s: Snapshot = serde_json::from_slice(&bytes).map_err(|source| JournalError::Snapshot { path: snap_path.clone(), source })?;
                (s.desired, s.last_seq)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => (Desired::new(ports), 0),
            Err(e) => return Err(io_err("read", &snap_path)(e)),
        };
        desired.ports = ports;
        desired.ice_secret = ice_secret(dir)?;
        let jpath = dir.join("journal.bin");
        let mut bytes = Vec::new();
        match File::open(&jpath) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes).map_err(io_err("read", &jpath))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("open", &jpath)(e)),
        }
        let mut pos = 0usize;
        let mut seq = snap_seq;
        let mut replayed = 0u64;
        let mut records = 0u64;
        while let Some((rec_seq, record, next)) = read_record(&bytes, pos) {
            pos = next;
            records += 1;
            if rec_seq <= snap_seq {
                continue;
            }
            record.replay(&mut desired).map_err(|why| JournalError::Replay { seq: rec_seq, why })?;
            seq = rec_seq;
            replayed += 1;
        }
        let torn = bytes.len() - pos;
        let file = OpenOptions::new().create(true).append(true).open(&jpath).map_err(io_err("open", &jpath))?;
        if torn > 0 {
            file.set_len(pos as u64).map_err(io_err("truncate", &jpath))?;
            file.sync_all().map_err(io_err("fsync", &jpath))?;
        }
        let info = RecoveryInfo { snapshot_seq: snap_seq, replayed, torn_bytes: torn };
        Ok((Self { _lock: lock, dir: dir.to_path_buf(), file, seq, since_snapshot: records }, desired, info))
    }

    /// Appends a record and fsyncs it: once this returns, the record survives a crash. The
    /// caller applies it to its state and then, when [`Journal::compaction_due`], calls
    /// [`Journal::compact`] with the state that includes it.
    pub fn append(&mut self, record: &Record) -> Result<(), JournalError> {
        self.append_all(std::slice::from_ref(record))
    }

    /// Appends several records with one write and one fsync (group commit): all of them survive
    /// a crash once this returns, or none was committed.
    pub fn append_all(&mut self, records: &[Record]) -> Result<(), JournalError> {
        let jpath = self.dir.join("journal.bin");
        let mut frame = Vec::new();
        let mut seq = self.seq;
        for record in records {
            seq += 1;
            let (kind, body) = record.encode();
            let mut payload = Vec::with_capacity(9 + body.len());
            payload.extend_from_slice(&seq.to_be_bytes());
            payload.push(kind);
            payload.extend_from_slice(&body);
            frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            frame.extend_from_slice(&fingerprint(&payload).to_be_bytes());
            frame.extend_from_slice(&payload);
        }
        let before = self.file.metadata().map_err(io_err("stat", &jpath))?.len();
        let written = self.file.write_all(&frame).map_err(io_err("append", &jpath)).and_then(|()| self.file.sync_data().map_err(io_err("fsync", &jpath)));
        if let Err(e) = written {
            // Nothing was committed: cut what may have reached the file, so a later record is
            // not stranded behind a torn one.
            let _ = self.file.set_len(before);
            return Err(e);
        }
        self.seq = seq;
        self.since_snapshot += records.len() as u64;
        Ok(())
    }

    /// Whether [`COMPACT_EVERY`] records were appended since the last snapshot.
    pub fn compaction_due(&self) -> bool {
        self.since_snapshot >= COMPACT_EVERY
    }

    /// Writes the snapshot of `desired` (which includes every journaled record) and empties the
    /// journal.
    pub fn compact(&mut self, desired: &Desired) -> Result<(), JournalError> {
        let snap = self.dir.join("state.json");
        let tmp = self.dir.join("state.json.tmp");
        let body = serde_json::to_vec(&Snapshot { last_seq: self.seq, desired: desired.clone() })
            .map_err(|source| JournalError::Snapshot { path: snap.clone(), source })?;
        let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
        f.write_all(&body).map_err(io_err("write", &tmp))?;
        f.sync_all().map_err(io_err("fsync", &tmp))?;
        std::fs::rename(&tmp, &snap).map_err(io_err("rename", &snap))?;
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io_err("fsync", &self.dir))?;
        let jpath = self.dir.join("journal.bin");
        self.file.set_len(0).map_err(io_err("truncate", &jpath))?;
        self.file.sync_all().map_err(io_err("fsync", &jpath))?;
        self.since_snapshot = 0;
        Ok(())
    }
}

/// What recovery found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecoveryInfo {
    /// The last record the snapshot included (0: no snapshot).
    pub snapshot_seq: u64,
    /// Records replayed on top of it.
    pub replayed: u64,
    /// Bytes of a torn tail that were cut off.
    pub torn_bytes: usize,
}

fn read_record(bytes: &[u8], pos: usize) -> Option<(u64, Record, usize)> {
    let head = bytes.get(pos..pos + 12)?;
    let len = u32::from_be_bytes(head[..4].try_into().ok()?) as usize;
    let sum = u64::from_be_bytes(head[4..12].try_into().ok()?);
    let payload = bytes.get(pos + 12..pos + 12 + len)?;
    if len < 9 || fingerprint(payload) != sum {
        return None;
    }
    let seq = u64::from_be_bytes(payload[..8].try_into().ok()?);
    let record = Record::decode(payload[8], &payload[9..])?;
    Some((seq, record, pos + 12 + len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::fixtures::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sluice-journal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    const PORTS: PortRange = PortRange { start: 30_000, end: 30_099 };

    #[test]
    fn recovers_exactly_what_was_committed_and_cuts_a_torn_tail() {
        let d = dir("torn");
        let (mut j, mut desired, _) = Journal::open(&d, PORTS).unwrap();
        for r in [Record::Apply(pair("m")), Record::Apply(req("m", vec![sub("a", "vb", 1000, 1, true)])), Record::Drain(true)] {
            r.replay(&mut desired).unwrap();
            j.append(&r).unwrap();
        }
        drop(j);
        // A crash mid-append leaves half a record.
        let jpath = d.join("journal.bin");
        let mut f = OpenOptions::new().append(true).open(&jpath).unwrap();
        f.write_all(&[0, 0, 0, 40, 1, 2, 3]).unwrap();
        drop(f);
        let (mut j, recovered, info) = Journal::open(&d, PORTS).unwrap();
        assert_eq!(recovered, desired);
        assert_eq!((info.replayed, info.torn_bytes), (3, 7));
        // Appending after recovery continues cleanly.
        let r = Record::Apply(req("m", vec![leg("x")]));
        r.replay(&mut desired).unwrap();
        j.append(&r).unwrap();
        drop(j);
        assert_eq!(Journal::open(&d, PORTS).unwrap().1, desired);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_second_open_of_a_locked_state_directory_is_refused_naming_the_holder() {
        let d = dir("locked");
        let (j, _, _) = Journal::open(&d, PORTS).unwrap();
        let e = Journal::open(&d, PORTS).unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "state directory {} is in use by another instance, PID {}",
                d.display(),
                std::process::id()
            )),
            "{e}"
        );
        drop(j);
        Journal::open(&d, PORTS).unwrap();
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn compaction_snapshots_and_never_replays_twice() {
        let d = dir("compact");
        let (mut j, mut desired, _) = Journal::open(&d, PORTS).unwrap();
        let r = Record::Apply(pair("m"));
        r.replay(&mut desired).unwrap();
        j.append(&r).unwrap();
        j.compact(&desired).unwrap();
        let r2 = Record::Apply(req("m", vec![leg("c")]));
        r2.replay(&mut desired).unwrap();
        j.append(&r2).unwrap();
        drop(j);
        let (j, recovered, info) = Journal::open(&d, PORTS).unwrap();
        drop(j);
        assert_eq!(recovered, desired);
        assert_eq!((info.snapshot_seq, info.replayed), (1, 1));
        // A crash after the snapshot's rename but before the journal's truncation: the old
        // records are still there, and skipped by sequence number.
        let (mut j, mut desired, _) = Journal::open(&d, PORTS).unwrap();
        let snap = std::fs::read(d.join("state.json")).unwrap();
        let r3 = Record::Apply(req("m", vec![leg("e")]));
        r3.replay(&mut desired).unwrap();
        j.append(&r3).unwrap();
        let journal = std::fs::read(d.join("journal.bin")).unwrap();
        j.compact(&desired).unwrap();
        std::fs::write(d.join("journal.bin"), journal).unwrap();
        assert_ne!(std::fs::read(d.join("state.json")).unwrap(), snap);
        drop(j);
        assert_eq!(Journal::open(&d, PORTS).unwrap().1, desired);
        let _ = std::fs::remove_dir_all(&d);
    }
}
