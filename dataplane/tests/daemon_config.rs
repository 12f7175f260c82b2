//! The daemon binary started as an operator starts it, with settings the docs promise: each test
//! checks that the process comes up and answers on its control socket.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice_core::ids::Generation;
use sluice_dataplane::control::{Client, Request, Response};

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("sluice-dp-config-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The daemon this test started; SIGTERM, then SIGKILL, by its PID when dropped.
struct Daemon(Child, PathBuf);

impl Daemon {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.1).unwrap_or_default()
    }

    /// Waits for `sock` to answer a generation request; false if the process exits first.
    fn wait_serving(&mut self, sock: &Path, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Ok(mut c) = Client::connect(sock) {
                c.set_timeout(Some(Duration::from_secs(5))).unwrap();
                return matches!(c.call(&Request::Generation), Ok(Response::Generation(Generation(0))));
            }
            if let Ok(Some(_)) = self.0.try_wait() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        // SAFETY: kill(2) on the PID of a child we spawned and have not reaped.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(s)) = self.0.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.stop();
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) };
    assert_eq!(rc, 0, "sched_getaffinity: {}", std::io::Error::last_os_error());
    // SAFETY: CPU_ISSET reads the set within CPU_SETSIZE.
    (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect()
}

/// Starts the daemon with `config`, its CPU mask set to `cpus` before exec (as `taskset -c`).
fn start(dir: &Path, config: &str, cpus: &[usize]) -> Daemon {
    use std::os::unix::process::CommandExt as _;
    let cfg = dir.join("dataplane.toml");
    std::fs::write(&cfg, config).unwrap();
    let log = dir.join("dataplane.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice-dataplane"));
    cmd.arg("--config").arg(&cfg).env("RUST_LOG", "info").stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap());
    let cpus = cpus.to_vec();
    // SAFETY: the closure runs in the forked child before exec; it allocates nothing and calls
    // only sched_setaffinity(2) (async-signal-safe) on a set on its own stack, filled from a
    // vector made before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for &c in &cpus {
                libc::CPU_SET(c, &mut set);
            }
            if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Daemon(cmd.spawn().expect("starting sluice-dataplane"), log)
}

/// Under a CPU mask that leaves out core 0 (`taskset -c 1`), `cores = [1]` names an allowed core
/// and the daemon starts; `metrics = "off"` in the file disables the endpoint as the docs say.
#[test]
fn starts_under_a_cpu_mask_with_metrics_off_in_the_file() {
    let cpus = allowed_cpus();
    let core = *cpus.last().expect("at least one allowed CPU");
    if core == 0 {
        eprintln!("only CPU 0 is allowed here: the mask cannot leave out core 0, so this checks less");
    }
    let dir = Scratch::new("mask");
    let sock = dir.0.join("dp.sock");
    let config = format!(
        "[dataplane]\nlisten_ip = \"127.0.0.1\"\nworkers = 1\ncores = [{core}]\nbackend = \"mmsg\"\nmetrics = \"off\"\ncontrol_socket = \"{}\"\n",
        sock.display()
    );
    let mut d = start(&dir.0, &config, &[core]);
    assert!(d.wait_serving(&sock, Duration::from_secs(20)), "the daemon did not start with cores = [{core}] under mask {{{core}}}:\n{}", d.log());
    let log = d.log();
    assert!(log.contains(&format!("core={core}")), "the worker is pinned to core {core}:\n{log}");
    assert!(!log.contains("metrics at"), "metrics = \"off\" starts no endpoint:\n{log}");
    let status = d.stop().expect("the daemon stops on SIGTERM");
    assert!(status.success(), "{status:?}\n{}", d.log());
}
