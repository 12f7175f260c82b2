//! The two daemons as children of this process: started in a scratch directory, waited for
//! through their logs, and stopped by PID.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::Options;
use super::grpc::Grpc;

/// The daemons this process started; each is stopped by its PID when this is dropped.
#[derive(Debug, Default)]
pub struct Children {
    procs: Vec<(&'static str, Child, PathBuf)>,
}

impl Children {
    pub(crate) fn spawn(&mut self, name: &'static str, args: &[&str], log: &Path) -> anyhow::Result<u32> {
        let exe = std::env::current_exe().context("current executable")?.with_file_name(name);
        if !exe.exists() {
            bail!(
                "{} is not built: run `cargo build --release -p sluice-bench -p sluice-dataplane -p sluice-controlplane` (or use `demo --in-process`)",
                exe.display()
            );
        }
        let err = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(&exe);
        cmd.args(args).env("RUST_LOG", "info").env("NO_COLOR", "1").stdin(Stdio::null()).stdout(Stdio::null()).stderr(err).process_group(0);
        // SAFETY: the closure runs in the forked child before exec and only calls prctl(2), which
        // is async-signal-safe; it touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                // Should this process die without cleaning up (SIGKILL), the child gets SIGTERM.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("starting {}", exe.display()))?;
        let pid = child.id();
        self.procs.push((name, child, log.to_path_buf()));
        Ok(pid)
    }

    /// The PID of child `name`, if this started one.
    pub(crate) fn pid(&self, name: &str) -> Option<u32> {
        self.procs.iter().find(|p| p.0 == name).map(|p| p.1.id())
    }

    fn get(&mut self, name: &str) -> &mut (&'static str, Child, PathBuf) {
        self.procs.iter_mut().find(|p| p.0 == name).expect("started")
    }

    /// Fails if `name` has exited, with the end of its log.
    pub(crate) fn check_alive(&mut self, name: &str) -> anyhow::Result<()> {
        let (_, child, _) = self.get(name);
        if let Ok(Some(status)) = child.try_wait() {
            bail!("{name} exited unexpectedly ({status})");
        }
        Ok(())
    }

    /// Stops every child by PID: SIGTERM, up to 3 s to exit, then SIGKILL; reaps them all.
    pub fn stop(&mut self) -> Vec<(&'static str, u32, String)> {
        for (_, child, _) in &mut self.procs {
            if let Ok(None) = child.try_wait() {
                // SAFETY: kill(2) on the PID of a child we spawned and have not reaped yet, so
                // the PID still names that child.
                unsafe {
                    libc::kill(child.id() as i32, libc::SIGTERM);
                }
            }
        }
        let end = Instant::now() + Duration::from_secs(3);
        let mut done = Vec::new();
        for (name, mut child, _) in self.procs.drain(..) {
            let pid = child.id();
            let status = loop {
                match child.try_wait() {
                    Ok(Some(s)) => break s.to_string(),
                    Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(10)),
                    _ => {
                        let _ = child.kill();
                        break child.wait().map(|s| format!("{s}, after SIGKILL")).unwrap_or_else(|e| e.to_string());
                    }
                }
            };
            done.push((name, pid, status));
        }
        done
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A scratch directory, removed when dropped.
#[derive(Debug)]
pub(crate) struct Scratch(pub(crate) PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits until `find` extracts something from `name`'s log; fails if the child exits, the user
/// interrupts, or 20 s pass.
fn wait_log<T>(kids: &mut Children, name: &str, stop: &AtomicBool, what: &str, find: impl Fn(&str) -> Option<T>) -> anyhow::Result<T> {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let log = kids.get(name).2.clone();
        if let Some(v) = std::fs::read_to_string(&log).ok().as_deref().and_then(&find) {
            return Ok(v);
        }
        kids.check_alive(name)?;
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        if Instant::now() > end {
            bail!("{name} never logged {what} in 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The address after `marker` in a log line.
fn addr_after(log: &str, marker: &str) -> Option<SocketAddr> {
    let line = log.lines().find(|l| l.contains(marker))?;
    let at = line.find(marker)? + marker.len();
    line[at..].chars().take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':').collect::<String>().parse().ok()
}

/// Starts both daemons in `dir` and waits until the control plane has the dataplane; returns the
/// gRPC client, the dataplane's metrics address and its PID.
pub(crate) fn start_system(o: &Options, stop: &Arc<AtomicBool>, dir: &Path, kids: &mut Children) -> anyhow::Result<(Grpc, SocketAddr, u32)> {
    // --- The dataplane.
    let dp_sock = dir.join("dataplane.sock");
    let dp_cfg = dir.join("dataplane.toml");
    std::fs::write(
        &dp_cfg,
        format!(
            "[dataplane]\nworkers = {}\ncontrol_socket = \"{}\"\nmetrics = \"127.0.0.1:0\"\nport_range = [{}, {}]\n{}\n",
            o.workers,
            dp_sock.display(),
            o.port_range.0,
            o.port_range.1,
            if o.dataplane_extra.contains("listen_ip") { o.dataplane_extra.clone() } else { format!("listen_ip = \"127.0.0.1\"\n{}", o.dataplane_extra) }
        ),
    )?;
    let dp_pid = kids.spawn("sluice-dataplane", &["--config", path_str(&dp_cfg)?], &dir.join("dataplane.log"))?;
    let metrics = wait_log(kids, "sluice-dataplane", stop, "its metrics address", |log| addr_after(log, "metrics at http://"))?;
    wait_log(kids, "sluice-dataplane", stop, "its control socket", |_| dp_sock.exists().then_some(()))?;

    // --- The control plane.
    let cp_cfg = dir.join("controlplane.toml");
    std::fs::write(
        &cp_cfg,
        format!(
            "[controlplane]\ngrpc_listen = \"127.0.0.1:0\"\nplaintext = true\ndataplane_socket = \"{}\"\nstate_dir = \"{}\"\nport_range = [{}, {}]\n{}",
            dp_sock.display(),
            dir.join("state").display(),
            o.port_range.0,
            o.port_range.1,
            o.controlplane_extra
        ),
    )?;
    let cp_pid = kids.spawn("sluice-controlplane", &["--config", path_str(&cp_cfg)?], &dir.join("controlplane.log"))?;
    let grpc_addr = wait_log(kids, "sluice-controlplane", stop, "its gRPC address", |log| addr_after(log, "listen="))?;
    println!("sluice-dataplane pid {dp_pid} ({} workers, metrics http://{metrics}/metrics)", o.workers);
    println!("sluice-controlplane pid {cp_pid} (gRPC {grpc_addr}, state in {})", dir.join("state").display());
    let mut grpc = Grpc::connect(grpc_addr, stop)?;
    let end = Instant::now() + Duration::from_secs(20);
    while !grpc.status().map(|s| s.dataplane_connected).unwrap_or(false) {
        kids.check_alive("sluice-dataplane")?;
        kids.check_alive("sluice-controlplane")?;
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        if Instant::now() > end {
            bail!("the control plane never connected to the dataplane");
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    Ok((grpc, metrics, dp_pid))
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str().with_context(|| format!("{} is not UTF-8", p.display()))
}
