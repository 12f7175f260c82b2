//! `--netns`: the participants live in a network namespace of their own, joined to the SFU's
//! namespace by a veth pair. The bench creates both with `ip` and deletes them when dropped
//! (deleting the namespace deletes the veth pair with it), on every way out.

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{Context as _, bail};

/// A namespace and veth pair this process created.
#[derive(Debug)]
pub struct NetNs {
    /// Namespace name (`/run/netns/<name>`).
    pub name: String,
    /// The SFU's side of the veth pair (in this namespace).
    pub sfu_ip: Ipv4Addr,
    /// The participants' side (in `name`).
    pub peer_ip: Ipv4Addr,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output().with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!("ip {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl NetNs {
    /// Creates namespace `sluice-cap-<pid>` and veth `scap<pid>`/`scap<pid>p` with a /30 of
    /// 10.250.0.0/16 chosen from the PID.
    pub fn create() -> anyhow::Result<Self> {
        let pid = std::process::id();
        let name = format!("sluice-cap-{pid}");
        let (host, peer) = (format!("scap{pid}"), format!("scap{pid}p"));
        let block = (pid % 16_000) * 4;
        let base = Ipv4Addr::new(10, 250, (block >> 8) as u8, (block & 0xff) as u8);
        let sfu_ip = Ipv4Addr::from(u32::from(base) + 1);
        let peer_ip = Ipv4Addr::from(u32::from(base) + 2);
        ip(&["netns", "add", &name])?;
        let ns = Self { name, sfu_ip, peer_ip };
        ip(&["link", "add", &host, "type", "veth", "peer", "name", &peer, "netns", &ns.name])?;
        ip(&["addr", "add", &format!("{sfu_ip}/30"), "dev", &host])?;
        ip(&["link", "set", &host, "up"])?;
        ip(&["-n", &ns.name, "addr", "add", &format!("{peer_ip}/30"), "dev", &peer])?;
        ip(&["-n", &ns.name, "link", "set", &peer, "up"])?;
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}
