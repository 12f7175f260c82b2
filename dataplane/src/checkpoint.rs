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
use std::time::{Duration, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use sluice_core::table::checkpoint::Checkpoint;
pub use sluice_core::table::checkpoint_file::{Loaded, decode, digest, encode};

/// How often workers report their part and the file is rewritten.
pub const EVERY: Duration = Duration::from_millis(100);
/// How long after a start the loaded checkpoint is restored into newly applied tables.
pub const RESTORE_WINDOW: Duration = Duration::from_secs(120);

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
    // A digest of what the file holds (not a copy: that is as large as the tables' runtime
    // state): an unchanged state (no media moved) is not written again.
    let mut written: Option<u64> = None;
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
        let sum = digest(&all);
        if written == Some(sum) {
            return;
        }
        match write_atomic(&path, &encode(&all, SystemTime::now())) {
            Ok(()) => written = Some(sum),
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
    use super::*;

    #[test]
    fn a_damaged_file_is_set_aside_and_a_missing_one_is_no_checkpoint() {
        let dir = std::env::temp_dir().join(format!("sluice-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dataplane.state");
        assert!(load(&path).unwrap().is_none());
        let mut bytes = encode(&Checkpoint::default(), SystemTime::now());
        let last = bytes.len() - 2;
        bytes[last] ^= 0x20;
        std::fs::write(&path, &bytes).unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("damaged") && err.contains("checksum"), "{err}");
        assert!(!path.exists() && dir.join("dataplane.state.bad").exists(), "set aside for inspection");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
