//! Helpers shared by the cross-process integration tests: starting the real daemons with a
//! config of the test's own, and stopping exactly the processes a test started.
#![deny(missing_docs)]

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The directory holding the workspace's built binaries (next to the test executable's `deps/`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("deps dir");
    deps.parent().expect("profile dir").to_path_buf()
}

/// A scratch directory for one test, removed when dropped.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `/tmp/sluice-test-<name>-<pid>`.
    pub fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("sluice-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        Self(p)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A daemon this test started; killed by PID (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `bin` (a workspace binary) with `args`, logging to `log`.
    pub fn start(bin: &str, args: &[&str], log: &Path) -> Self {
        let path = bin_dir().join(bin);
        assert!(path.exists(), "{} is not built (run the README's test command, which builds every binary first)", path.display());
        Self::start_path(&path, args, log)
    }

    /// Starts the workspace binary `bin` inside the network namespace `netns` (`nsenter --net`,
    /// which execs it: the PID is the binary's), logging to `log`.
    pub fn start_in_netns(netns: &str, bin: &str, args: &[&str], log: &Path) -> Self {
        let path = bin_dir().join(bin);
        assert!(path.exists(), "{} is not built (run the README's test command, which builds every binary first)", path.display());
        let net = format!("--net=/run/netns/{netns}");
        let mut full = vec![net.as_str(), path.to_str().expect("utf-8 path")];
        full.extend_from_slice(args);
        Self::start_path(Path::new("/usr/bin/nsenter"), &full, log)
    }

    /// Starts the program at `path` with `args`, logging its stderr to `log`.
    pub fn start_path(path: &Path, args: &[&str], log: &Path) -> Self {
        let err = std::fs::File::create(log).expect("log file");
        let child = Command::new(path)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", path.display()));
        Self { child, log: log.to_path_buf() }
    }

    /// Its PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal to exactly this process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the PID of a child we spawned and have not reaped, so the PID is
        // still ours.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Waits up to `timeout` for it to exit; its exit status, if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Waits until `path` (its socket) exists, up to `timeout`; false if it does not appear or
    /// the process exits first.
    pub fn wait_for_path(&mut self, path: &Path, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if path.exists() {
                return true;
            }
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Its log so far (for assertion messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(libc::SIGTERM);
            if self.wait_exit(Duration::from_secs(3)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// A UDP socket on 127.0.0.1 for a simulated participant, with a short read timeout.
pub fn participant_socket() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind participant socket");
    s.set_read_timeout(Some(Duration::from_millis(20))).expect("timeout");
    s
}

/// A loopback TCP port that was free a moment ago.
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// Where Debian's `redis-server` is (`scripts/setup.sh` installs it).
pub const REDIS_SERVER: &str = "/usr/bin/redis-server";

/// Starts a throwaway `redis-server` on loopback `port` (no persistence), logging to `log`, and
/// waits until it answers PING. Killed by PID when dropped.
pub fn start_redis(port: u16, log: &Path) -> Daemon {
    assert!(Path::new(REDIS_SERVER).exists(), "{REDIS_SERVER} is missing (scripts/setup.sh installs redis-server)");
    let port_s = port.to_string();
    let mut d =
        Daemon::start_path(Path::new(REDIS_SERVER), &["--port", &port_s, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--logfile", ""], log);
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read as _, Write as _};
            let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
            let mut buf = [0u8; 16];
            if s.write_all(b"PING\r\n").is_ok() && s.read(&mut buf).is_ok_and(|n| buf[..n].starts_with(b"+PONG")) {
                return d;
            }
        }
        assert!(Instant::now() < end && d.wait_exit(Duration::from_millis(20)).is_none(), "redis-server did not start:\n{}", d.log_text());
    }
}
