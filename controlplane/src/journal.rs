//! Durability of the desired state: an append-only journal of the committed requests plus a
//! compacted snapshot, in the state directory.
//!
//! Why a journal of requests: [`crate::state::Desired`] is a pure, deterministic state machine
//! (ids, ports and idempotency records are all derived from the request sequence), so replaying
//! the committed requests in order rebuilds exactly the state that was acknowledged. Ports also
//! follow the placement (the dataplane's worker count and `session_affinity_legs`, see
//! [`Placement`]), so a change of it is a record too, replayed where it happened. Each record
//! is fsynced before the API answers, so an acknowledged change survives `kill -9` and power loss.
//! Every [`COMPACT_EVERY`] records the whole state is written to `state.json` (write to a
//! temporary file, fsync, rename, fsync the directory; a failed attempt removes its temporary
//! file) and the journal restarts empty.
//!
//! ```text
//! journal.bin record:  len u32 BE | fnv64(payload) u64 BE | payload
//! payload:             seq u64 BE | kind u8 | protobuf body
//! state.json:          "sluice-snapshot 1 fnv64=<16 hex> len=<decimal>\n" | JSON body
//! ```
//!
//! `seq` numbers every record ever written; the snapshot stores the last one it includes, so a
//! crash between the snapshot's rename and the journal's truncation replays nothing twice.
//!
//! Damage is told apart from a crash, as etcd's WAL does: only a torn final append (a record
//! whose bytes run past the end of the file, or a zero-filled tail) is cut off, with a warning.
//! A record that fails its checksum or does not decode anywhere else (a valid record follows it,
//! or it is complete) refuses the start, as does a snapshot whose checksum does not match: the
//! error says where the damage is and how to recover, and nothing is changed on disk. FNV-1a
//! detects every single-byte change (each step is a bijection of the hash). `--repair-journal`
//! ([`Journal::repair`]) keeps a copy and cuts the journal at the damage, on the operator's word.
//!
//! A change set journaled by an older build whose validation let through what the dataplane
//! refuses (an empty `pt_map`, say) is left out at recovery, with an error logged, as Apply
//! refuses it today: the dataplane never installed it, and keeping it would make every resync
//! fail. Snapshot entries of that kind are dropped the same way.
//!
//! One process per state directory: [`Journal::open`] takes an exclusive lock on `lock` in it
//! (holding the PID) before reading anything, and a second control plane refuses to start.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use prost::Message as _;
use serde::{Deserialize, Serialize};

use sluice_api::lock::InstanceLock;

use crate::pb;
use crate::state::{Desired, ErrorKind, Placement, PortRange, StateError, fingerprint};

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
    /// The snapshot's checksum matched but its body does not parse (another build's format).
    #[error("snapshot {path}: {source}")]
    Snapshot {
        /// The file.
        path: PathBuf,
        /// The error.
        source: serde_json::Error,
    },
    /// The journal is damaged somewhere other than a torn final append.
    #[error(
        "journal {path} is damaged at byte {offset} of {size}: {why}. The control plane refuses to start rather than drop the \
         acknowledged records from there on; nothing was changed. To recover: stop every control plane on {dir}, then restore \
         the directory from a backup, or run `sluice-controlplane --state-dir {dir} --repair-journal`, which keeps a copy of \
         the journal and cuts it at byte {offset} (every change journaled from there on is lost)"
    )]
    JournalDamaged {
        /// The journal file.
        path: PathBuf,
        /// The state directory.
        dir: PathBuf,
        /// Where the first bad record starts (the valid records end there).
        offset: usize,
        /// The journal's size.
        size: usize,
        /// What is wrong there.
        why: String,
    },
    /// The snapshot is damaged (checksum, header or length).
    #[error(
        "snapshot {path} is damaged: {why}. The control plane refuses to start rather than install altered state (keys, \
         ports); nothing was changed. Restore the state directory from a backup: the journal holds only the changes made \
         after this snapshot"
    )]
    SnapshotDamaged {
        /// The snapshot file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Another process holds the state directory.
    #[error(transparent)]
    Locked(#[from] sluice_api::lock::LockError),
    /// The configured port range leaves out ports acknowledged legs hold: starting would move them
    /// (their participants were told the port).
    #[error(
        "controlplane.port_range [{}, {}] leaves out {} port(s) that acknowledged legs hold ({}): widen the range to cover them, \
         or delete those sessions first; nothing was changed",
        .range.0, .range.1, .legs.len(), .legs.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
    )]
    RangeLeavesLegs {
        /// The configured range.
        range: (u16, u16),
        /// "session S leg L port P" for each port left out.
        legs: Vec<String>,
    },
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
    /// A change set accepted while other processes held these ports of the range: its new legs
    /// got other ports, and its replay must skip the same ones (whoever holds them then).
    ApplyAvoiding(pb::ChangeSet, Vec<u16>),
    /// A session deletion.
    Delete(pb::DeleteSessionRequest),
    /// Drain (true) or undrain (false).
    Drain(bool),
    /// A leg given new local ports because the dataplane could not open its own
    /// ([`Desired::move_leg`]); the ports are explicit, so the replay needs no allocation.
    Move {
        /// The session.
        session: String,
        /// The leg's name.
        leg: String,
        /// Its new RTP port.
        port: u16,
        /// Its new RTCP port (a leg with a separate RTCP component).
        rtcp_port: Option<u16>,
    },
    /// How new legs' ports follow the dataplane's workers from here on (the worker count the
    /// dataplane said, `controlplane.session_affinity_legs`): the records after it allocate
    /// under it, so it is journaled where it changed ([`Desired::set_placement`]).
    Placement(Placement),
}

impl Record {
    /// Applies the record to the state (the same code path the API used).
    pub fn replay(&self, d: &mut Desired) -> Result<(), StateError> {
        match self {
            Record::Apply(r) => d.apply(r).map(drop),
            Record::ApplyAvoiding(r, avoid) => d.apply_avoiding(r, &avoid.iter().copied().collect()).map(drop),
            Record::Delete(r) => d.delete_session(r).map(drop),
            Record::Drain(on) => {
                d.draining = *on;
                Ok(())
            }
            Record::Move { session, leg, port, rtcp_port } => d.move_leg(session, leg, *port, *rtcp_port),
            Record::Placement(p) => {
                d.set_placement(*p);
                Ok(())
            }
        }
    }

    fn encode(&self) -> (u8, Vec<u8>) {
        match self {
            Record::Apply(r) => (1, r.encode_to_vec()),
            Record::Delete(r) => (2, r.encode_to_vec()),
            Record::Drain(on) => (3, vec![u8::from(*on)]),
            // The ports' count and the ports (big-endian u16s), then the change set.
            Record::ApplyAvoiding(r, avoid) => {
                let mut body = Vec::with_capacity(2 + 2 * avoid.len() + r.encoded_len());
                body.extend_from_slice(&(avoid.len() as u16).to_be_bytes());
                body.extend(avoid.iter().flat_map(|p| p.to_be_bytes()));
                r.encode(&mut body).expect("a Vec grows");
                (4, body)
            }
            // The RTP port, the RTCP port (0: none), the session's name's length (u16), then the
            // session's and the leg's names (ids are bounded well under 64 KiB).
            Record::Move { session, leg, port, rtcp_port } => {
                let mut body = Vec::with_capacity(6 + session.len() + leg.len());
                body.extend_from_slice(&port.to_be_bytes());
                body.extend_from_slice(&rtcp_port.unwrap_or(0).to_be_bytes());
                body.extend_from_slice(&(session.len() as u16).to_be_bytes());
                body.extend_from_slice(session.as_bytes());
                body.extend_from_slice(leg.as_bytes());
                (5, body)
            }
            // The worker count (u16 BE, 0: unknown), the affinity threshold (u32 BE), then the
            // first shared port (u16 BE, 0: none; absent from records of older builds).
            Record::Placement(p) => {
                let mut body = p.workers.unwrap_or(0).to_be_bytes().to_vec();
                body.extend_from_slice(&p.session_affinity_legs.to_be_bytes());
                body.extend_from_slice(&p.shared_port_base.unwrap_or(0).to_be_bytes());
                (6, body)
            }
        }
    }

    fn decode(kind: u8, body: &[u8]) -> Option<Self> {
        match kind {
            1 => pb::ChangeSet::decode(body).ok().map(Record::Apply),
            2 => pb::DeleteSessionRequest::decode(body).ok().map(Record::Delete),
            3 => Some(Record::Drain(body.first() == Some(&1))),
            4 => {
                let n = usize::from(u16::from_be_bytes(body.get(..2)?.try_into().ok()?));
                let ports = body.get(2..2 + 2 * n)?.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
                pb::ChangeSet::decode(&body[2 + 2 * n..]).ok().map(|r| Record::ApplyAvoiding(r, ports))
            }
            5 => {
                let u16_at = |i: usize| body.get(i..i + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
                let (port, rtcp, n) = (u16_at(0)?, u16_at(2)?, usize::from(u16_at(4)?));
                let session = std::str::from_utf8(body.get(6..6 + n)?).ok()?.to_owned();
                let leg = std::str::from_utf8(&body[6 + n..]).ok()?.to_owned();
                Some(Record::Move { session, leg, port, rtcp_port: (rtcp != 0).then_some(rtcp) })
            }
            6 => {
                let (b, shared): ([u8; 6], u16) = match body.len() {
                    6 => (body.try_into().ok()?, 0),
                    8 => (body[..6].try_into().ok()?, u16::from_be_bytes([body[6], body[7]])),
                    _ => return None,
                };
                let workers = u16::from_be_bytes([b[0], b[1]]);
                let session_affinity_legs = u32::from_be_bytes([b[2], b[3], b[4], b[5]]);
                Some(Record::Placement(Placement {
                    workers: (workers != 0).then_some(workers),
                    session_affinity_legs,
                    shared_port_base: (shared != 0).then_some(shared),
                }))
            }
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
    /// every journal record after it, replayed under the port range they were acknowledged
    /// under (the snapshot's: the records after it were journaled under that range, since a
    /// start that changes the range, or finds no snapshot, writes one). Then the configured
    /// `ports` take over for new legs, unless they leave out a port an acknowledged leg holds:
    /// then nothing changes and the start is refused, naming the legs.
    pub fn open(dir: &Path, ports: PortRange) -> Result<(Self, Desired, RecoveryInfo), JournalError> {
        std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        // The journal holds SRTP master keys: owner only.
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).map_err(io_err("chmod", dir))?;
        // Before anything is read or written: two control planes on one directory would each
        // replay, allocate the same ports to different sessions and truncate each other's records.
        let lock = InstanceLock::acquire(&dir.join("lock"), &format!("state directory {}", dir.display()))?;
        let snap_path = dir.join("state.json");
        let mut left_out = 0u64;
        // Left by a compaction that crashed before its rename: never part of the state.
        let _ = std::fs::remove_file(dir.join("state.json.tmp"));
        let (mut desired, snap_seq) = match std::fs::read(&snap_path) {
            Ok(bytes) => {
                let mut s = read_snapshot(&snap_path, &bytes)?;
                for why in s.desired.drop_unservable() {
                    tracing::error!(snapshot = %snap_path.display(), what = %why, "left out of the recovered state: the dataplane refuses it (written by an older build that did not check it)");
                    left_out += 1;
                }
                (s.desired, s.last_seq)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => (Desired::new(ports), 0),
            Err(e) => return Err(io_err("read", &snap_path)(e)),
        };
        let had_snapshot = snap_seq > 0 || snap_path.exists();
        // Replayed under the range the records were acknowledged under (see above).
        let acknowledged_range = if had_snapshot { desired.ports } else { ports };
        desired.ports = acknowledged_range;
        desired.reindex();
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
        let (records, pos) = valid_records(&bytes);
        if let Err(why) = check_tail(&bytes, pos, records.last().map_or(0, |r| r.0)) {
            return Err(JournalError::JournalDamaged { path: jpath, dir: dir.to_path_buf(), offset: pos, size: bytes.len(), why });
        }
        let mut seq = snap_seq;
        let mut replayed = 0u64;
        let n_records = records.len() as u64;
        for (rec_seq, record) in records {
            if rec_seq <= snap_seq {
                continue;
            }
            match record.replay(&mut desired) {
                Ok(()) => replayed += 1,
                // Journaled by an older build that accepted what today's validation (the
                // dataplane's own) refuses: the dataplane never installed it, and replaying it
                // would wedge every resync. Left out, as Apply refuses it today.
                Err(e) if e.kind == ErrorKind::InvalidArgument && matches!(record, Record::Apply(_)) => {
                    let session = if let Record::Apply(r) = &record { r.session.as_str() } else { "" };
                    tracing::error!(seq = rec_seq, session, error = %e, "journal record left out of the recovered state: the dataplane refuses it (journaled by an older build that did not check it)");
                    left_out += 1;
                }
                Err(e) => return Err(JournalError::Replay { seq: rec_seq, why: e.to_string() }),
            }
            seq = rec_seq;
        }
        let records = n_records;
        let torn = bytes.len() - pos;
        let file = OpenOptions::new().create(true).append(true).open(&jpath).map_err(io_err("open", &jpath))?;
        if torn > 0 {
            file.set_len(pos as u64).map_err(io_err("truncate", &jpath))?;
            file.sync_all().map_err(io_err("fsync", &jpath))?;
        }
        let outside = desired.legs_outside(ports);
        if !outside.is_empty() {
            return Err(JournalError::RangeLeavesLegs {
                range: (ports.start, ports.end),
                legs: outside.into_iter().map(|(s, l, p)| format!("session {s} leg {l} port {p}")).collect(),
            });
        }
        desired.ports = ports;
        let info = RecoveryInfo { snapshot_seq: snap_seq, replayed, left_out, torn_bytes: torn };
        let mut journal = Self { _lock: lock, dir: dir.to_path_buf(), file, seq, since_snapshot: records };
        if !had_snapshot || acknowledged_range != ports {
            // From here on the records are journaled under `ports`: a snapshot says so.
            journal.compact(&desired)?;
        }
        Ok((journal, desired, info))
    }

    /// Cuts a damaged journal in `dir` where its valid records end, after keeping a copy of the
    /// whole file beside it (`journal.bin.damaged-<unix seconds>`): the operator's explicit
    /// choice to lose the records from the damage on. Takes the directory's lock, so it never
    /// runs beside a control plane. An undamaged journal is left alone.
    pub fn repair(dir: &Path) -> Result<Repaired, JournalError> {
        let _lock = InstanceLock::acquire(&dir.join("lock"), &format!("state directory {}", dir.display()))?;
        let jpath = dir.join("journal.bin");
        let bytes = match std::fs::read(&jpath) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err("read", &jpath)(e)),
        };
        let (records, pos) = valid_records(&bytes);
        if pos == bytes.len() {
            return Ok(Repaired { kept: records.len(), cut_bytes: 0, copy: None });
        }
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let copy = dir.join(format!("journal.bin.damaged-{secs}"));
        let mut out = OpenOptions::new().write(true).create_new(true).open(&copy).map_err(io_err("create", &copy))?;
        out.write_all(&bytes).and_then(|()| out.sync_all()).map_err(io_err("write", &copy))?;
        let file = OpenOptions::new().write(true).open(&jpath).map_err(io_err("open", &jpath))?;
        file.set_len(pos as u64).and_then(|()| file.sync_all()).map_err(io_err("truncate", &jpath))?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("fsync", dir))?;
        Ok(Repaired { kept: records.len(), cut_bytes: bytes.len() - pos, copy: Some(copy) })
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
        let frame = frame_records(self.seq, records);
        let seq = self.seq + records.len() as u64;
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
        let bytes = snapshot_bytes(self.seq, desired).map_err(|source| JournalError::Snapshot { path: snap.clone(), source })?;
        let written = (|| {
            let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
            f.write_all(&bytes).map_err(io_err("write", &tmp))?;
            f.sync_all().map_err(io_err("fsync", &tmp))?;
            std::fs::rename(&tmp, &snap).map_err(io_err("rename", &snap))
        })();
        if let Err(e) = written {
            // A failed attempt must not leave a state-sized file behind at every retry's expense.
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io_err("fsync", &self.dir))?;
        let jpath = self.dir.join("journal.bin");
        self.file.set_len(0).map_err(io_err("truncate", &jpath))?;
        self.file.sync_all().map_err(io_err("fsync", &jpath))?;
        self.since_snapshot = 0;
        Ok(())
    }
}

/// What [`Journal::repair`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repaired {
    /// Records kept (those before the damage).
    pub kept: usize,
    /// Bytes cut off.
    pub cut_bytes: usize,
    /// The copy of the whole journal as it was; `None` when nothing needed cutting.
    pub copy: Option<PathBuf>,
}

/// What recovery found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecoveryInfo {
    /// The last record the snapshot included (0: no snapshot).
    pub snapshot_seq: u64,
    /// Records replayed on top of it.
    pub replayed: u64,
    /// Journaled change sets (and snapshot entries) left out because today's validation refuses
    /// them: written by an older build, never installed by the dataplane.
    pub left_out: u64,
    /// Bytes of a torn tail that were cut off.
    pub torn_bytes: usize,
}

/// The journal frames of `records`, numbered from `after + 1`: per record its payload's length
/// (u32 BE), the payload's FNV-1a (u64 BE), and the payload (sequence number u64 BE, kind, body).
fn frame_records(after: u64, records: &[Record]) -> Vec<u8> {
    let mut frame = Vec::new();
    for (seq, record) in (after + 1..).zip(records) {
        let (kind, body) = record.encode();
        let mut payload = Vec::with_capacity(9 + body.len());
        payload.extend_from_slice(&seq.to_be_bytes());
        payload.push(kind);
        payload.extend_from_slice(&body);
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(&fingerprint(&payload).to_be_bytes());
        frame.extend_from_slice(&payload);
    }
    frame
}

/// The bytes of `state.json` for `desired`, which holds every record up to `last_seq`.
fn snapshot_bytes(last_seq: u64, desired: &Desired) -> Result<Vec<u8>, serde_json::Error> {
    let body = serde_json::to_vec(&Snapshot { last_seq, desired: desired.clone() })?;
    let mut out = format!("{SNAPSHOT_MAGIC}{SNAPSHOT_VERSION} fnv64={:016x} len={}\n", fingerprint(&body), body.len()).into_bytes();
    out.extend_from_slice(&body);
    Ok(out)
}

/// The readers of the journal and the snapshot on bytes instead of files, and the writers'
/// encodings: the entry points of the fuzz targets (`fuzz/fuzz_targets/journal_readers.rs`).
pub mod readers {
    use super::*;

    /// What the snapshot reader makes of `bytes`: the state it holds, or why they are refused.
    pub fn snapshot(bytes: &[u8]) -> Result<Desired, String> {
        read_snapshot(Path::new("state.json"), bytes).map(|s| s.desired).map_err(|e| e.to_string())
    }

    /// What the journal reader makes of `bytes`: the valid records from the start, and whether
    /// what follows them is a torn final append (`Ok`: cut) or damage (`Err`: the start is
    /// refused).
    pub fn journal(bytes: &[u8]) -> (Vec<Record>, Result<(), String>) {
        let (records, pos) = valid_records(bytes);
        let tail = check_tail(bytes, pos, records.last().map_or(0, |r| r.0));
        (records.into_iter().map(|(_, r)| r).collect(), tail)
    }

    /// A journal holding `records` (sequence numbers from 1), as appends write it.
    pub fn encode_journal(records: &[Record]) -> Vec<u8> {
        frame_records(0, records)
    }

    /// A snapshot of `desired`, as a compaction writes it.
    pub fn encode_snapshot(desired: &Desired) -> Vec<u8> {
        snapshot_bytes(0, desired).expect("the desired state serializes")
    }
}

/// The snapshot header's first word.
const SNAPSHOT_MAGIC: &str = "sluice-snapshot ";
/// The snapshot format written.
const SNAPSHOT_VERSION: u32 = 1;

/// Checks and parses `state.json`. A snapshot from before checksums (a bare JSON object) still
/// loads, with a warning; the next compaction writes it with one.
fn read_snapshot(path: &Path, bytes: &[u8]) -> Result<Snapshot, JournalError> {
    let damaged = |why: String| JournalError::SnapshotDamaged { path: path.to_path_buf(), why };
    let body = if let Some(rest) = bytes.strip_prefix(SNAPSHOT_MAGIC.as_bytes()) {
        let nl = rest.iter().position(|&b| b == b'\n').ok_or_else(|| damaged("its header line has no end".into()))?;
        let header = std::str::from_utf8(&rest[..nl]).map_err(|_| damaged("its header is not text".into()))?;
        let body = &rest[nl + 1..];
        let mut words = header.split(' ');
        let version = words.next().and_then(|v| v.parse::<u32>().ok());
        if version != Some(SNAPSHOT_VERSION) {
            return Err(damaged(format!("header {header:?} is not version {SNAPSHOT_VERSION}")));
        }
        let sum = words.next().and_then(|w| w.strip_prefix("fnv64=")).and_then(|h| u64::from_str_radix(h, 16).ok());
        let len = words.next().and_then(|w| w.strip_prefix("len=")).and_then(|l| l.parse::<usize>().ok());
        let (Some(sum), Some(len), None) = (sum, len, words.next()) else {
            return Err(damaged(format!("header {header:?} is not \"{SNAPSHOT_VERSION} fnv64=<hex> len=<bytes>\"")));
        };
        if body.len() != len {
            return Err(damaged(format!("its body is {} bytes, the header says {len}", body.len())));
        }
        let actual = fingerprint(body);
        if actual != sum {
            return Err(damaged(format!("its checksum is {actual:016x}, the header says {sum:016x}")));
        }
        body
    } else if bytes.first() == Some(&b'{') {
        tracing::warn!(path = %path.display(), "snapshot written without a checksum (an older build); it gets one at the next compaction");
        bytes
    } else {
        return Err(damaged(format!("it does not start with {SNAPSHOT_MAGIC:?}")));
    };
    serde_json::from_slice(body).map_err(|source| JournalError::Snapshot { path: path.to_path_buf(), source })
}

/// The journal's valid records from its start, and where they end.
fn valid_records(bytes: &[u8]) -> (Vec<(u64, Record)>, usize) {
    let mut records = Vec::new();
    let mut pos = 0;
    while let Some((seq, record, next)) = read_record(bytes, pos) {
        records.push((seq, record));
        pos = next;
    }
    (records, pos)
}

/// Whether the bytes from `pos` (where the valid records end) are a torn final append, to be
/// cut (`Ok`), or damage (`Err`, saying what): a torn append runs past the end of the file (the
/// write did not finish) or left zeros, and nothing valid can follow it.
fn check_tail(bytes: &[u8], pos: usize, last_seq: u64) -> Result<(), String> {
    let tail = &bytes[pos..];
    if tail.is_empty() {
        return Ok(());
    }
    if let Some(next) = (pos + 1..bytes.len()).find(|&q| plausible_record_at(bytes, q, last_seq)) {
        return Err(format!("the record there fails its checksum or does not decode, and a valid record follows at byte {next}"));
    }
    if tail.len() < 12 || tail.iter().all(|&b| b == 0) {
        return Ok(());
    }
    let len = u32::from_be_bytes([tail[0], tail[1], tail[2], tail[3]]) as usize;
    if 12 + len > tail.len() {
        return Ok(());
    }
    Err(format!("the last record ({len} bytes of payload, complete) fails its checksum or does not decode"))
}

/// Whether a record that follows one with `last_seq` starts at `q` (its sequence number in range
/// and its checksum right). The sequence check comes first, so a scan over damage stays cheap.
fn plausible_record_at(bytes: &[u8], q: usize, last_seq: u64) -> bool {
    let Some(head) = bytes.get(q..q + 12) else {
        return false;
    };
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let Some(payload) = bytes.get(q + 12..q + 12 + len) else {
        return false;
    };
    if len < 9 {
        return false;
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&payload[..8]);
    let seq = u64::from_be_bytes(seq);
    let mut sum = [0u8; 8];
    sum.copy_from_slice(&head[4..12]);
    seq > last_seq && seq <= last_seq.saturating_add(bytes.len() as u64) && fingerprint(payload) == u64::from_be_bytes(sum)
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

    /// A change set accepted while ports were held elsewhere replays onto the same ports, held
    /// or not: the skipped ports are part of its record.
    #[test]
    fn a_change_that_skipped_held_ports_replays_onto_the_same_ports() {
        let d = dir("avoid");
        let (mut j, mut desired, _) = Journal::open(&d, PORTS).unwrap();
        let r = Record::ApplyAvoiding(pair("m"), vec![30_000, 30_002]);
        r.replay(&mut desired).unwrap();
        j.append(&r).unwrap();
        drop(j);
        let ports = desired.ports_used();
        assert!(!ports.contains(&30_000) && !ports.contains(&30_002) && ports.len() == 2, "{ports:?}");
        let (_, recovered, info) = Journal::open(&d, PORTS).unwrap();
        assert_eq!(info.replayed, 1);
        assert_eq!(recovered.ports_used(), ports);
        assert_eq!(recovered, desired);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_moved_leg_replays_onto_its_new_port_and_a_retry_answers_with_it() {
        let d = dir("move");
        let (mut j, mut desired, _) = Journal::open(&d, PORTS).unwrap();
        let mut change = pair("m");
        change.idempotency_key = "k1".into();
        let r = Record::Apply(change.clone());
        r.replay(&mut desired).unwrap();
        j.append(&r).unwrap();
        let leg = desired.sessions["m"].legs.keys().next().unwrap().clone();
        let old = desired.sessions["m"].legs[&leg].local_port;
        // The port a move would take, and another when that one is to be avoided.
        let (first_choice, _) = desired.ports_for_move("m", &leg, &std::collections::BTreeSet::new()).unwrap();
        let (port, rtcp_port) = desired.ports_for_move("m", &leg, &std::collections::BTreeSet::from([first_choice])).unwrap();
        assert!(port != old && port != first_choice && !desired.ports_used().contains(&port), "{old} {first_choice} {port}");
        let mv = Record::Move { session: "m".into(), leg: leg.clone(), port, rtcp_port };
        let (kind, body) = mv.encode();
        assert_eq!(Record::decode(kind, &body), Some(mv.clone()), "the record decodes to itself");
        mv.replay(&mut desired).unwrap();
        j.append(&mv).unwrap();
        drop(j);
        assert!(!desired.ports_used().contains(&old), "the old port is free");
        let (_, recovered, info) = Journal::open(&d, PORTS).unwrap();
        assert_eq!(info.replayed, 2);
        assert_eq!(recovered.sessions["m"].legs[&leg].local_port, port);
        assert_eq!(recovered, desired);
        // An idempotent retry of the change set answers with the port the leg has now.
        let retry = recovered.clone().apply(&change).unwrap();
        assert!(retry.replayed);
        assert!(retry.committed.ports.contains(&(leg.clone(), port)), "{:?}", retry.committed.ports);
        // A move of what does not exist is refused, changing nothing.
        let mut again = recovered.clone();
        assert!(Record::Move { session: "m".into(), leg: "nobody".into(), port, rtcp_port: None }.replay(&mut again).is_err());
        assert_eq!(again, recovered);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Ports follow the placement (worker count, affinity threshold), so a change of it is a
    /// record: replayed where it was journaled (the records before it keep the old placement's
    /// ports), and kept by a snapshot.
    #[test]
    fn the_placement_is_journaled_and_replays_onto_the_same_ports() {
        for p in [
            Placement { workers: Some(4), session_affinity_legs: 16, shared_port_base: None },
            Placement { workers: None, session_affinity_legs: 1, shared_port_base: Some(30_007) },
        ] {
            let (kind, body) = Record::Placement(p).encode();
            assert_eq!(Record::decode(kind, &body), Some(Record::Placement(p)), "the record decodes to itself");
            assert_eq!(Record::decode(kind, &body[..5]), None, "a short body is refused");
            // An older build's record has no shared port.
            assert_eq!(Record::decode(kind, &body[..6]), Some(Record::Placement(Placement { shared_port_base: None, ..p })));
        }
        let d = dir("placement");
        let (mut j, mut desired, _) = Journal::open(&d, PORTS).unwrap();
        let records = [
            Record::Apply(req("before", vec![leg("a"), leg("b")])),
            Record::Placement(Placement { workers: Some(2), session_affinity_legs: 3, shared_port_base: None }),
            Record::Apply(req("m", vec![leg("a"), leg("b"), leg("c"), leg("d")])),
            Record::Apply(req("n", vec![leg("a")])),
        ];
        for r in &records[..3] {
            r.replay(&mut desired).unwrap();
            j.append(r).unwrap();
        }
        // A snapshot keeps the placement and the cursors; the record after it replays under them.
        j.compact(&desired).unwrap();
        records[3].replay(&mut desired).unwrap();
        j.append(&records[3]).unwrap();
        drop(j);
        let mut m: Vec<u16> = desired.sessions["m"].legs.values().map(|l| l.local_port).collect();
        m.sort_unstable();
        assert_eq!(m, vec![30_002, 30_003, 30_004, 30_006], "three legs on worker 0, then one on worker 1");
        assert_eq!(desired.sessions["n"].legs["a"].local_port, 30_005, "worker 1 holds fewer legs");
        let (_, recovered, info) = Journal::open(&d, PORTS).unwrap();
        assert_eq!(info.replayed, 1);
        assert_eq!(recovered.placement(), Placement { workers: Some(2), session_affinity_legs: 3, shared_port_base: None });
        assert_eq!(recovered, desired);
        // Without the placement record the same change sets get other ports.
        let mut without = Desired::new(PORTS);
        for r in [&records[0], &records[2], &records[3]] {
            r.replay(&mut without).unwrap();
        }
        let n_port = |d: &Desired| d.sessions["n"].legs["a"].local_port;
        assert_eq!(n_port(&without), 30_006);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Shared ports follow the journaled placement: a recovery (records, then a snapshot and
    /// records) gives every shared leg the port it had, and its index refuses the same remotes.
    #[test]
    fn shared_legs_replay_onto_the_same_shared_ports() {
        use crate::pb::change::Change as C;
        let shared = |id: &str, remote: &str| {
            let mut c = leg(id);
            if let Some(C::Leg(l)) = &mut c.change {
                (l.shared_port, l.remote) = (true, remote.into());
            }
            c
        };
        let d = dir("shared");
        let (mut j, mut desired, _) = Journal::open(&d, PORTS).unwrap();
        let records = [
            Record::Placement(Placement { workers: Some(2), session_affinity_legs: 2, shared_port_base: Some(30_004) }),
            Record::Apply(req("m", vec![shared("a", "10.0.0.1:1"), leg("b"), shared("c", "10.0.0.2:1")])),
            Record::Apply(req("n", vec![shared("a", "10.0.0.3:1"), leg("b")])),
            Record::Apply(req("m", vec![pb::Change { change: Some(C::RemoveLeg("a".into())) }, shared("d", "10.0.0.1:1")])),
        ];
        for (i, r) in records.iter().enumerate() {
            r.replay(&mut desired).unwrap();
            j.append(r).unwrap();
            if i == 1 {
                j.compact(&desired).unwrap();
            }
        }
        drop(j);
        let port = |d: &Desired, s: &str, l: &str| d.sessions[s].legs[l].local_port;
        assert_eq!((port(&desired, "m", "c"), port(&desired, "n", "a"), port(&desired, "m", "d")), (30_005, 30_005, 30_004));
        let (_, mut recovered, info) = Journal::open(&d, PORTS).unwrap();
        assert_eq!(info.replayed, 2);
        assert_eq!(recovered, desired);
        assert_eq!(recovered.tables(), desired.tables());
        let e = recovered.apply(&req("k", vec![shared("x", "10.0.0.1:1")])).unwrap_err();
        assert_eq!(e.field, "changes[0].leg.remote", "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Three records; the journal's bytes and where each record starts.
    fn three_records(d: &Path) -> (Desired, Vec<u8>, Vec<usize>) {
        let (mut j, mut desired, _) = Journal::open(d, PORTS).unwrap();
        let mut starts = Vec::new();
        for r in [Record::Apply(pair("m")), Record::Apply(req("m", vec![sub("a", "vb", 1000, 1, true)])), Record::Drain(true)] {
            starts.push(std::fs::metadata(d.join("journal.bin")).map_or(0, |m| m.len() as usize));
            r.replay(&mut desired).unwrap();
            j.append(&r).unwrap();
        }
        drop(j);
        (desired, std::fs::read(d.join("journal.bin")).unwrap(), starts)
    }

    #[test]
    fn a_flipped_byte_mid_journal_refuses_to_start_and_keeps_the_evidence() {
        let d = dir("flip");
        let (_, mut bytes, starts) = three_records(&d);
        // One byte inside the second record's payload.
        let at = starts[1] + 12 + 20;
        bytes[at] ^= 0x01;
        std::fs::write(d.join("journal.bin"), &bytes).unwrap();
        let e = Journal::open(&d, PORTS).expect_err("a damaged journal must not load").to_string();
        assert!(e.contains("damaged") && e.contains(&format!("byte {}", starts[1])), "{e}");
        assert!(e.contains("--repair-journal"), "the message says how to recover: {e}");
        assert_eq!(std::fs::read(d.join("journal.bin")).unwrap(), bytes, "nothing was cut");
        // The operator's repair keeps a copy and cuts at the damage; then the start succeeds with
        // the records before it.
        let r = Journal::repair(&d).unwrap();
        assert_eq!((r.kept, r.cut_bytes), (1, bytes.len() - starts[1]));
        assert_eq!(std::fs::read(r.copy.as_ref().unwrap()).unwrap(), bytes, "the copy is the damaged journal");
        let mut first = Desired::new(PORTS);
        Record::Apply(pair("m")).replay(&mut first).unwrap();
        let (_, recovered, info) = Journal::open(&d, PORTS).unwrap();
        assert_eq!((recovered.tables(), info.replayed, info.torn_bytes), (first.tables(), 1, 0));
        // A flipped length field in the middle is damage too, not a torn tail.
        let d2 = dir("fliplen");
        let (_, mut bytes, starts) = three_records(&d2);
        bytes[starts[1] + 1] ^= 0x40;
        std::fs::write(d2.join("journal.bin"), &bytes).unwrap();
        let e = Journal::open(&d2, PORTS).expect_err("a damaged length must not load").to_string();
        assert!(e.contains("damaged"), "{e}");
        // The last record, complete but altered, is damage (only an unfinished one is torn).
        let d3 = dir("fliplast");
        let (_, mut bytes, _) = three_records(&d3);
        let n = bytes.len();
        bytes[n - 1] ^= 0x01;
        std::fs::write(d3.join("journal.bin"), &bytes).unwrap();
        let e = Journal::open(&d3, PORTS).expect_err("an altered final record must not load").to_string();
        assert!(e.contains("damaged"), "{e}");
        for d in [d, d2, d3] {
            let _ = std::fs::remove_dir_all(&d);
        }
    }

    #[test]
    fn only_an_unfinished_final_append_is_cut() {
        let d = dir("unfinished");
        let (desired, bytes, _) = three_records(&d);
        // A header and part of a payload (the length runs past the end), or zeros.
        for tail in [[0, 0, 0, 40, 9, 9, 9, 9, 9, 9, 9, 9, 1, 2, 3].as_slice(), &[0; 4096]] {
            let mut torn = bytes.clone();
            torn.extend_from_slice(tail);
            std::fs::write(d.join("journal.bin"), &torn).unwrap();
            let (j, recovered, info) = Journal::open(&d, PORTS).unwrap();
            drop(j);
            assert_eq!((recovered, info.torn_bytes), (desired.clone(), tail.len()));
            assert_eq!(std::fs::read(d.join("journal.bin")).unwrap(), bytes, "the torn append is cut");
        }
        assert_eq!(Journal::repair(&d).unwrap(), Repaired { kept: 3, cut_bytes: 0, copy: None });
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A change set an older build accepted although the dataplane refuses it (an empty pt_map):
    /// journaled by that build, it must not keep this node from starting nor from serving its
    /// healthy sessions. Recovery leaves it out, as Apply refuses it today, and says so.
    #[test]
    fn a_journaled_change_the_dataplane_refuses_is_left_out_at_recovery() {
        let d = dir("poisoned");
        let (mut j, mut expected, _) = Journal::open(&d, PORTS).unwrap();
        let mut bad = sub("a", "vb", 1000, 1, true);
        if let Some(pb::change::Change::Subscription(s)) = &mut bad.change {
            s.pt_map.clear();
        }
        let good = [Record::Apply(pair("m")), Record::Apply(pair("n"))];
        good[0].replay(&mut expected).unwrap();
        j.append(&good[0]).unwrap();
        // Journaled as the older build did, without today's validation.
        j.append(&Record::Apply(req("m", vec![bad]))).unwrap();
        good[1].replay(&mut expected).unwrap();
        j.append(&good[1]).unwrap();
        drop(j);
        let (j, recovered, info) = Journal::open(&d, PORTS).expect("the node starts");
        assert_eq!(recovered, expected, "the refused change is left out, the rest is replayed");
        assert_eq!((info.replayed, info.left_out), (2, 1));
        for s in recovered.tables().subs.values() {
            s.validate().unwrap();
        }
        drop(j);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_snapshot_entry_the_dataplane_refuses_is_left_out_at_recovery() {
        let d = dir("poisonedsnap");
        let (mut j, mut desired, _) = Journal::open(&d, PORTS).unwrap();
        let r = Record::Apply(pair("m"));
        r.replay(&mut desired).unwrap();
        j.append(&r).unwrap();
        let expected = desired.clone();
        // An older build's state: a subscription with 9 payload-type mappings.
        let sub = desired.sessions.get_mut("m").unwrap().subs.get_mut("a").unwrap().get_mut("vb").unwrap();
        sub.pt_map = (96..105).map(|p| (sluice_core::ids::Pt(p), sluice_core::ids::Pt(p))).collect();
        j.compact(&desired).unwrap();
        drop(j);
        let (_, recovered, info) = Journal::open(&d, PORTS).expect("the node starts");
        let mut without = expected.clone();
        without.sessions.get_mut("m").unwrap().subs.remove("a");
        assert_eq!((recovered.tables(), info.left_out), (without.tables(), 1));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_flipped_digit_in_the_snapshot_refuses_to_start() {
        let d = dir("snapflip");
        let (mut j, mut desired, _) = Journal::open(&d, PORTS).unwrap();
        let r = Record::Apply(pair("m"));
        r.replay(&mut desired).unwrap();
        j.append(&r).unwrap();
        j.compact(&desired).unwrap();
        drop(j);
        let path = d.join("state.json");
        let mut snap = std::fs::read(&path).unwrap();
        // A leg's port 30000 becomes 40000: still a valid snapshot to a parser.
        let at = snap.windows(15).position(|w| w == b"\"local_port\":30").expect("a local_port") + 13;
        snap[at] = b'4';
        std::fs::write(&path, &snap).unwrap();
        let e = Journal::open(&d, PORTS).expect_err("an altered snapshot must not load").to_string();
        assert!(e.contains("snapshot") && e.contains("damaged") && e.contains("backup"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), snap, "nothing was changed");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_failed_snapshot_leaves_no_temporary_file() {
        let d = dir("snapfail");
        let (mut j, mut desired, _) = Journal::open(&d, PORTS).unwrap();
        let r = Record::Apply(pair("m"));
        r.replay(&mut desired).unwrap();
        j.append(&r).unwrap();
        // The rename onto state.json fails: it is a directory that is not empty (in place of the
        // snapshot the first open wrote).
        std::fs::remove_file(d.join("state.json")).unwrap();
        std::fs::create_dir_all(d.join("state.json").join("x")).unwrap();
        assert!(j.compact(&desired).is_err());
        assert!(!d.join("state.json.tmp").exists(), "the temporary snapshot is removed");
        // The journal still holds the record.
        drop(j);
        std::fs::remove_dir_all(d.join("state.json")).unwrap();
        assert_eq!(Journal::open(&d, PORTS).unwrap().1, desired);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_second_open_of_a_locked_state_directory_is_refused_naming_the_holder() {
        let d = dir("locked");
        let (j, _, _) = Journal::open(&d, PORTS).unwrap();
        let e = Journal::open(&d, PORTS).unwrap_err().to_string();
        assert!(e.contains(&format!("state directory {} is in use by another instance, PID {}", d.display(), std::process::id())), "{e}");
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

#[cfg(test)]
mod corruption {
    //! The fuzz target `journal_readers`'s property, over a fixed stream of random corruptions so
    //! it runs in the suite: a corrupted journal yields a prefix of what was written, a corrupted
    //! snapshot exactly what was written or a refusal; never a panic.
    use super::*;
    use crate::state::fixtures::{pair, req};

    #[test]
    fn random_corruption_never_loads_altered_state() {
        let written = vec![Record::Drain(true), Record::Apply(pair("m")), Record::Drain(false), Record::Apply(req("m", vec![]))];
        let journal = readers::encode_journal(&written);
        let mut desired = Desired::new(PortRange { start: 30_000, end: 30_009 });
        desired.apply(&pair("m")).unwrap();
        let snapshot = readers::encode_snapshot(&desired);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let (mut refused, mut prefixes) = (0, 0);
        for round in 0..4000 {
            let good = if round % 2 == 0 { &journal } else { &snapshot };
            let mut bad = good.clone();
            for _ in 0..=(next() % 3) {
                let at = (next() % bad.len() as u64) as usize;
                bad[at] ^= (next() % 255 + 1) as u8;
            }
            if next() % 4 == 0 {
                bad.truncate(bad.len() - (next() % 64) as usize);
            }
            if round % 2 == 0 {
                let (records, _) = readers::journal(&bad);
                assert!(records[..] == written[..records.len()], "round {round}: altered records loaded");
                prefixes += usize::from(records.len() < written.len());
            } else {
                match readers::snapshot(&bad) {
                    Ok(loaded) => assert!(loaded == desired, "round {round}: an altered snapshot loaded"),
                    Err(_) => refused += 1,
                }
            }
        }
        assert!(refused > 1900 && prefixes > 1900, "the corruption reached the readers: {refused} snapshots refused, {prefixes} journals cut");
    }
}
