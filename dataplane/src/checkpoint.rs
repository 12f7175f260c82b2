//! The dataplane's checkpoint file: the runtime state of every static-key leg and subscriber
//! stream (see [`sluice_core::table::checkpoint`]), written every [`EVERY`] so a restarted
//! dataplane carries its calls on.
//!
//! ```text
//!   workers ── their part, every 100 ms (owned legs, streams they fan out) ──▶ writer thread
//!   writer: all parts ─ "sluice-checkpoint 1 fnv64=<16 hex> len=<n>\n" {"taken_ms":…,"checkpoint":…}
//!           ─▶ <file>.tmp, rename over <file>      (a crash mid-write leaves the last good one)
//!   start: read and check the file ─▶ every worker restores it after each delta it applies,
//!          for RESTORE_WINDOW (the control plane resends the tables when it reconnects)
//! ```
//!
//! The file lives beside the control socket (`/run/sluice/dataplane.state` by default): on tmpfs
//! it outlives the process, not the machine. A damaged file is set aside (`.bad`) and the node
//! starts without it, saying so: it then behaves as before checkpoints existed (streams past a
//! sequence wrap need new keys), which is better than not forwarding at all.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use sluice_core::fingerprint::fnv64;
use sluice_core::table::checkpoint::Checkpoint;

/// How often workers report their part and the file is rewritten.
pub const EVERY: Duration = Duration::from_millis(100);
/// How long after a start the loaded checkpoint is restored into newly applied tables.
pub const RESTORE_WINDOW: Duration = Duration::from_secs(120);
const MAGIC: &str = "sluice-checkpoint ";
const VERSION: u32 = 1;

/// A checkpoint read at start, with when it was taken.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// Its content.
    pub checkpoint: Checkpoint,
    /// When it was written.
    pub taken: SystemTime,
}

impl Loaded {
    /// Time since it was taken (zero if the clock went back).
    pub fn age(&self) -> Duration {
        SystemTime::now().duration_since(self.taken).unwrap_or_default()
    }
}

/// Why a checkpoint file was not used.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// It could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Its header, length or checksum is wrong, or its body does not parse.
    #[error("{path} is damaged: {why}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// The file's body.
#[derive(serde::Serialize, serde::Deserialize)]
struct Body {
    /// When it was taken (ms since the Unix epoch).
    taken_ms: u64,
    checkpoint: Checkpoint,
}

/// Encodes `ck`, taken at `taken`, as the file's bytes.
pub fn encode(ck: &Checkpoint, taken: SystemTime) -> Vec<u8> {
    let taken_ms = taken.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
    let body = serde_json::to_vec(&Body { taken_ms, checkpoint: ck.clone() }).expect("a checkpoint serializes");
    let mut out = format!("{MAGIC}{VERSION} fnv64={:016x} len={}\n", fnv64(&body), body.len()).into_bytes();
    out.extend_from_slice(&body);
    out
}

/// Decodes and checks the file's bytes.
pub fn decode(bytes: &[u8]) -> Result<Loaded, String> {
    let nl = bytes.iter().position(|&b| b == b'\n').ok_or("no header line")?;
    let header = std::str::from_utf8(&bytes[..nl]).map_err(|_| "the header is not text")?;
    let rest = header.strip_prefix(MAGIC).ok_or("not a checkpoint (bad magic)")?;
    let mut fields = rest.split(' ');
    let version: u32 = fields.next().and_then(|v| v.parse().ok()).ok_or("no version")?;
    if version != VERSION {
        return Err(format!("version {version}, this build reads {VERSION}"));
    }
    let mut field = |name: &str| -> Result<&str, String> { fields.next().and_then(|f| f.strip_prefix(name)).ok_or_else(|| format!("no {name} field")) };
    let sum = u64::from_str_radix(field("fnv64=")?, 16).map_err(|_| "bad checksum field")?;
    let len: usize = field("len=")?.parse().map_err(|_| "bad length field")?;
    if fields.next().is_some() {
        return Err("trailing header fields".into());
    }
    let body = &bytes[nl + 1..];
    if body.len() != len {
        return Err(format!("body is {} bytes, the header says {len}", body.len()));
    }
    if fnv64(body) != sum {
        return Err("checksum mismatch".into());
    }
    let Body { taken_ms, checkpoint } = serde_json::from_slice(body).map_err(|e| format!("body does not parse: {e}"))?;
    Ok(Loaded { checkpoint, taken: UNIX_EPOCH + Duration::from_millis(taken_ms) })
}

/// Reads the checkpoint at `path`: `Ok(None)` if there is none. A damaged one is renamed to
/// `<path>.bad` (kept for inspection) and reported.
pub fn load(path: &Path) -> Result<Option<Loaded>, CheckpointError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(CheckpointError::Read { path: path.to_path_buf(), source }),
    };
    decode(&bytes).map(Some).map_err(|why| {
        let _ = std::fs::rename(path, path.with_extension("state.bad"));
        CheckpointError::Damaged { path: path.to_path_buf(), why }
    })
}

/// Writes `bytes` to `path` atomically (a temporary file renamed over it), mode 0600: it names
/// the legs' remotes.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("state.tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(bytes)?;
    drop(f);
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// The writer: merges the workers' parts and rewrites the file every [`EVERY`] when they
/// changed, until every
/// worker's sender is gone (then once more). While `hold_empty` lasts, an all-empty state does
/// not overwrite the file (a restarted node has no tables until the control plane resends
/// them, and a second crash meanwhile must not lose the checkpoint).
pub fn run_writer(path: PathBuf, parts: Receiver<(usize, Checkpoint)>, workers: usize, hold_empty: Option<SystemTime>) {
    let mut latest: Vec<Checkpoint> = vec![Checkpoint::default(); workers];
    let mut dirty = false;
    let mut failures = 0u64;
    // What the file holds: an unchanged state (no media moved) is not written again.
    let mut written: Option<Checkpoint> = None;
    let mut write = |latest: &[Checkpoint]| {
        let mut all = Checkpoint::default();
        for p in latest {
            all.legs.extend_from_slice(&p.legs);
            all.streams.extend_from_slice(&p.streams);
            all.webrtc.extend_from_slice(&p.webrtc);
        }
        if all == Checkpoint::default() && hold_empty.is_some_and(|until| SystemTime::now() < until) {
            return;
        }
        if written.as_ref() == Some(&all) {
            return;
        }
        match write_atomic(&path, &encode(&all, SystemTime::now())) {
            Ok(()) => written = Some(all),
            Err(e) => {
                failures += 1;
                // Once, then every thousandth time: a full disk must not flood the log.
                if failures == 1 || failures.is_multiple_of(1000) {
                    tracing::warn!(path = %path.display(), error = %e, failures, "cannot write the checkpoint");
                }
            }
        }
    };
    let mut next = std::time::Instant::now() + EVERY;
    loop {
        match parts.recv_timeout(next.saturating_duration_since(std::time::Instant::now())) {
            Ok((worker, part)) => {
                if let Some(slot) = latest.get_mut(worker) {
                    *slot = part;
                    dirty = true;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                if dirty {
                    write(&latest);
                }
                return;
            }
        }
        if std::time::Instant::now() >= next {
            if dirty {
                write(&latest);
                dirty = false;
            }
            next = std::time::Instant::now() + EVERY;
        }
    }
}

#[cfg(test)]
mod tests {
    use sluice_core::ids::{LegId, Ssrc};
    use sluice_core::table::KeyDigest;
    use sluice_core::table::checkpoint::LegCheckpoint;

    use super::*;

    fn sample() -> Checkpoint {
        Checkpoint {
            legs: vec![LegCheckpoint {
                leg: LegId(7),
                keys: KeyDigest([3; 16]),
                remote: Some("10.0.0.7:5000".parse().unwrap()),
                ingress: vec![(Ssrc(0x1111), (1 << 16) + 12)],
                rtcp_recv: vec![(Ssrc(0x1111), 40)],
                feedback_srtcp: 9,
            }],
            streams: Vec::new(),
            webrtc: vec![LegId(9)],
        }
    }

    #[test]
    fn a_checkpoint_round_trips_and_any_damage_is_caught() {
        let taken = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let bytes = encode(&sample(), taken);
        let back = decode(&bytes).unwrap();
        assert_eq!((back.checkpoint, back.taken), (sample(), taken));
        // Every single flipped byte is refused, never loaded as something else.
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            assert!(decode(&b).is_err(), "byte {i} flipped and still loaded");
        }
        // A torn write (any prefix) too.
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_err(), "a {n}-byte prefix loaded");
        }
    }

    #[test]
    fn a_damaged_file_is_set_aside_and_a_missing_one_is_no_checkpoint() {
        let dir = std::env::temp_dir().join(format!("sluice-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dataplane.state");
        assert!(load(&path).unwrap().is_none());
        let mut bytes = encode(&sample(), SystemTime::now());
        let last = bytes.len() - 2;
        bytes[last] ^= 0x20;
        std::fs::write(&path, &bytes).unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("damaged") && err.contains("checksum"), "{err}");
        assert!(!path.exists() && dir.join("dataplane.state.bad").exists(), "set aside for inspection");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
