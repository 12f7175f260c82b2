//! Network namespaces and veth pairs the tests create themselves (aya's `NetNsGuard`, Katran's
//! `BpfTester`): unique names with the PID, deleted in `Drop` even when the test panics.

use std::{fs::File, os::fd::AsRawFd as _, process::Command};

/// Runs `ip` with `args`, panicking with its stderr on failure.
pub fn ip(args: &[&str]) {
    run("ip", args);
}

/// Runs a command, panicking with its stderr on failure.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace (`ip netns add`), deleted on drop along with its interfaces.
#[derive(Debug)]
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    /// Creates `slc-<tag>-<pid>` with loopback up.
    pub fn new(tag: &str) -> Self {
        let name = format!("slc-{tag}-{}", std::process::id());
        // A leftover from a killed run with a recycled PID.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <name> args…`
    pub fn ip(&self, args: &[&str]) {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        ip(&full);
    }

    /// Runs any command inside the namespace (`ip netns exec`).
    pub fn exec(&self, cmd: &str, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", &self.name, cmd];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs `f` on a thread that has entered this namespace (the network namespace is per
    /// thread). Sockets created there stay in the namespace wherever they are used afterwards;
    /// interface names and indices inside `f` are the namespace's.
    pub fn enter<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let file = File::open(format!("/run/netns/{}", self.name)).expect("open netns file");
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: `file` is an open netns file descriptor for the whole call; setns only
                // switches this (scoped, short-lived) thread's network namespace.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(
                    rc,
                    0,
                    "setns {}: {}",
                    self.name,
                    std::io::Error::last_os_error()
                );
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A veth pair with one end in each namespace, fixed MACs, addresses, up, tx checksum offload off
/// (rewritten UDP checksums would otherwise be wrong on veth, see scripts/ebpf-toolchain.sh).
pub struct Veth {
    pub a: String,
    pub b: String,
    pub mac_a: [u8; 6],
    pub mac_b: [u8; 6],
}

pub fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Veth {
    /// Creates `<tag>a<pid>` in `ns_a` and `<tag>b<pid>` in `ns_b` (names fit IFNAMSIZ), with
    /// the given addresses (CIDR), static neighbour entries for each other, and up.
    pub fn new(tag: &str, ns_a: &NetNs, addrs_a: &[&str], ns_b: &NetNs, addrs_b: &[&str]) -> Self {
        let pid = std::process::id();
        let a = format!("{tag}a{pid}");
        let b = format!("{tag}b{pid}");
        let mac_a = [0x02, 0x5c, 0, (pid >> 8) as u8, pid as u8, 0x0a];
        let mac_b = [0x02, 0x5c, 0, (pid >> 8) as u8, pid as u8, 0x0b];
        ip(&[
            "link",
            "add",
            &a,
            "netns",
            &ns_a.name,
            "address",
            &mac_str(mac_a),
            "type",
            "veth",
            "peer",
            "name",
            &b,
            "netns",
            &ns_b.name,
            "address",
            &mac_str(mac_b),
        ]);
        for (ns, dev, addrs) in [(ns_a, &a, addrs_a), (ns_b, &b, addrs_b)] {
            for addr in addrs {
                ns.ip(&["addr", "add", addr, "dev", dev]);
            }
            ns.ip(&["link", "set", dev, "up"]);
            ns.exec("ethtool", &["-K", dev, "tx", "off"]);
        }
        let bare = |s: &&str| s.split('/').next().unwrap().to_owned();
        for addr in addrs_b.iter().map(bare) {
            ns_a.ip(&[
                "neigh",
                "replace",
                &addr,
                "lladdr",
                &mac_str(mac_b),
                "dev",
                &a,
                "nud",
                "permanent",
            ]);
        }
        for addr in addrs_a.iter().map(bare) {
            ns_b.ip(&[
                "neigh",
                "replace",
                &addr,
                "lladdr",
                &mac_str(mac_a),
                "dev",
                &b,
                "nud",
                "permanent",
            ]);
        }
        Self { a, b, mac_a, mac_b }
    }
}
