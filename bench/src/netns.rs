//! The benchmark topology on veth pairs in network namespaces the bench creates (and deletes in
//! `Drop`, even on error):
//!
//! ```text
//!   ns gen  10.77.1.2 ──veth── 10.77.1.1  ns fwd (the forwarder)  10.77.2.1 ──veth── 10.77.2.2  ns sink
//! ```
//!
//! Every packet crosses a real device, as on an edge node, and none of the three parties pays for
//! another's receive path: a veth transmit is received in the softirq of the sending CPU, so the
//! generator's core takes the forwarder's socket receive, and the forwarder's core takes only
//! the sink's XDP program (a counting drop) — a userspace sink on loopback would instead cost the
//! forwarder's core a full UDP receive per copy.

use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::process::Command;

use anyhow::{Context as _, bail};

/// Runs `ip` with `args`.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output().context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Moves the calling thread into the namespace `name` (network namespaces are per thread:
/// sockets it creates afterwards live there).
pub fn enter_thread(name: &str) -> anyhow::Result<()> {
    let file = File::open(format!("/run/netns/{name}")).with_context(|| format!("netns {name}"))?;
    // SAFETY: `file` is an open netns descriptor for the duration of the call; setns only
    // switches the calling thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!("setns {name}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// A named network namespace, deleted (with its interfaces) on drop.
#[derive(Debug)]
pub struct NetNs {
    /// Its name under /run/netns.
    pub name: String,
}

impl NetNs {
    /// Creates `slb-<tag>-<pid>` with loopback up.
    pub fn new(tag: &str) -> anyhow::Result<Self> {
        let name = format!("slb-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n <name> args…`
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Moves the calling thread into this namespace (see [`enter_thread`]).
    pub fn enter_current_thread(&self) -> anyhow::Result<()> {
        enter_thread(&self.name)
    }

    /// Runs `f` on a fresh thread inside this namespace and returns its result.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> anyhow::Result<R> + Send) -> anyhow::Result<R> {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter_current_thread()?;
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// The three namespaces and two veth pairs of the bench.
#[derive(Debug)]
pub struct Topology {
    /// The generator's namespace (10.77.1.2).
    pub generator: NetNs,
    /// The forwarder's namespace (10.77.1.1 towards the generator, 10.77.2.1 towards the sink).
    pub forwarder: NetNs,
    /// The sink's namespace (10.77.2.2).
    pub sink: NetNs,
    /// The sink's interface (inside `sink`).
    pub sink_if: String,
}

/// Where the generator sends from.
pub const GENERATOR_IP: [u8; 4] = [10, 77, 1, 2];
/// The forwarder's media address.
pub const FORWARDER_IP: [u8; 4] = [10, 77, 1, 1];
/// Where the subscribers are.
pub const SINK_IP: [u8; 4] = [10, 77, 2, 2];

impl Topology {
    /// Creates it.
    pub fn new() -> anyhow::Result<Self> {
        let pid = std::process::id();
        let (generator, forwarder, sink) = (NetNs::new("gen")?, NetNs::new("fwd")?, NetNs::new("sink")?);
        let pair = |a: &NetNs, a_if: &str, a_ip: &str, b: &NetNs, b_if: &str, b_ip: &str| -> anyhow::Result<()> {
            ip(&["link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns", &b.name])?;
            for (ns, dev, addr) in [(a, a_if, a_ip), (b, b_if, b_ip)] {
                ns.ip(&["addr", "add", addr, "dev", dev])?;
                ns.ip(&["link", "set", dev, "up"])?;
            }
            Ok(())
        };
        let (g, fg, fs, s) = (format!("slbg{pid}"), format!("slbf{pid}"), format!("slbo{pid}"), format!("slbs{pid}"));
        pair(&generator, &g, "10.77.1.2/24", &forwarder, &fg, "10.77.1.1/24")?;
        pair(&forwarder, &fs, "10.77.2.1/24", &sink, &s, "10.77.2.2/24")?;
        Ok(Self { generator, forwarder, sink, sink_if: s })
    }
}
