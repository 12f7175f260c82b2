//! One instance per resource: an exclusive `flock(2)` on a lock file that holds the holder's PID.
//!
//! Used for the dataplane's control socket (a lock file beside it, taken before a stale socket
//! is unlinked) and for the control plane's state directory. The kernel drops the lock when the
//! holder exits, however it exits (`kill -9` included), so a stale lock file never blocks a
//! restart; the file itself is never removed (removing it would let two processes lock two
//! different files of the same name).

use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Seek as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Why a lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error("{what} is in use by another instance, PID {} (lock file {path}); stop that process first", pid.map_or_else(|| "unknown".to_string(), |p| p.to_string()))]
    Held {
        /// The resource, as the operator knows it (`state directory /var/lib/sluice`).
        what: String,
        /// The lock file.
        path: PathBuf,
        /// The holder's PID, as it wrote it into the lock file.
        pid: Option<u32>,
    },
    /// The lock file could not be opened, locked or written.
    #[error("{op} lock file {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The lock file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// A held lock; released when dropped (or when the process exits).
#[derive(Debug)]
pub struct InstanceLock {
    file: File,
    path: PathBuf,
}

impl InstanceLock {
    /// Takes the exclusive lock on `path` (created mode 0600 if missing) without waiting, and
    /// writes this process's PID into it. `what` names the guarded resource in the error.
    pub fn acquire(path: &Path, what: &str) -> Result<Self, LockError> {
        let io_err = |op| {
            let path = path.to_path_buf();
            move |source| LockError::Io { op, path, source }
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(io_err("open"))?;
        // SAFETY: flock(2) on a descriptor `file` owns; the result is checked.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io_err("lock")(e));
            }
            return Err(LockError::Held { what: what.to_string(), path: path.to_path_buf(), pid: holder_pid(&mut file) });
        }
        file.set_len(0).map_err(io_err("truncate"))?;
        file.rewind().map_err(io_err("rewind"))?;
        file.write_all(format!("{}\n", std::process::id()).as_bytes()).map_err(io_err("write"))?;
        Ok(Self { file, path: path.to_path_buf() })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The descriptor holding the lock (kept open for as long as the lock is held).
    pub fn file(&self) -> &File {
        &self.file
    }
}

/// The PID the holder wrote; it writes right after locking, so an empty file is read again for a
/// moment before giving up.
fn holder_pid(file: &mut File) -> Option<u32> {
    let end = Instant::now() + Duration::from_millis(500);
    loop {
        let mut text = String::new();
        let read = file.rewind().and_then(|()| file.read_to_string(&mut text));
        if let Ok(pid) = text.trim().parse() {
            return Some(pid);
        }
        if read.is_err() || Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_and_taken_once_released() {
        let dir = std::env::temp_dir().join(format!("sluice-lock-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.lock");
        let held = InstanceLock::acquire(&path, "thing X").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{}\n", std::process::id()));
        // flock(2) locks belong to the open file description: a second open in this process
        // conflicts as another process would.
        let e = InstanceLock::acquire(&path, "thing X").unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, LockError::Held { pid: Some(p), .. } if p == std::process::id()), "{e:?}");
        assert!(msg.contains(&format!("thing X is in use by another instance, PID {}", std::process::id())), "{msg}");
        assert!(msg.contains("x.lock"), "{msg}");
        drop(held);
        let again = InstanceLock::acquire(&path, "thing X").unwrap();
        assert_eq!(again.path(), path);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
