//! `sluice-dataplane doctor`: checks this host against what the configured node would run and
//! says what to fix, each with its consequence.
//!
//! Every check probes the real host where it can (an io_uring ring with a buffer ring is built,
//! a GSO send goes over loopback, a BPF map is created, the NIC's XDP features are asked of the
//! kernel over the `netdev` generic-netlink family, a burst is queued into a socket of the size
//! the legs get, the clock is read a million times) rather than reading version strings. Nothing
//! is changed on the host: no program is attached, no sysctl or limit is written.
//!
//! A check is `ok`, `warn` (works, but costs something or will break under another user or
//! load), `fail` (the node would refuse to start, or lose part of what it is configured for) or
//! `skipped` (not relevant to this configuration; `found` says why and what was seen). Where the
//! project has measured a consequence (README), the figure is quoted; otherwise the consequence is
//! said without a number.

use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, UdpSocket};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::{BackendChoice, Config, ConfigError, XdpMode, allowed_cores};
use crate::io::xsk::{XSK_FRAME_SIZE, XSK_TX_FRAMES};

/// A check's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Nothing to fix for this configuration.
    Ok,
    /// Works, at a cost (or breaks for another user of the same unit).
    Warn,
    /// The node would refuse to start or lose part of what it is configured for.
    Fail,
    /// Not relevant to this configuration (`found` says why).
    Skipped,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Fail => "FAIL",
            Self::Skipped => "skip",
        }
    }
}

/// One check's result.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// Stable id (`memlock`, `io_uring`, ...).
    pub name: &'static str,
    /// The verdict.
    pub status: Status,
    /// What was read or measured.
    pub found: String,
    /// The exact setting or command that fixes a `warn`/`fail`.
    pub fix: Option<String>,
    /// What breaks, or what it costs, while it is not fixed.
    pub consequence: Option<String>,
}

impl Check {
    fn ok(name: &'static str, found: impl Into<String>) -> Self {
        Self { name, status: Status::Ok, found: found.into(), fix: None, consequence: None }
    }

    fn skipped(name: &'static str, found: impl Into<String>) -> Self {
        Self { name, status: Status::Skipped, found: found.into(), fix: None, consequence: None }
    }

    fn bad(name: &'static str, status: Status, found: impl Into<String>, fix: impl Into<String>, consequence: impl Into<String>) -> Self {
        Self { name, status, found: found.into(), fix: Some(fix.into()), consequence: Some(consequence.into()) }
    }
}

/// What the checks were run against.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    /// `uname -r`.
    pub kernel: String,
    /// Workers.
    pub workers: usize,
    /// The cores the workers would be pinned to.
    pub cores: Vec<usize>,
    /// The configured backend (`auto` runs `mmsg`).
    pub backend: String,
    /// The XDP stage's mode.
    pub xdp_mode: String,
    /// The NIC the checks looked at, and how it was chosen.
    pub interface: Option<String>,
    /// How `interface` was chosen (`xdp.interface`, `holds listen_ip`, `default route`).
    pub interface_from: Option<String>,
    /// `listen_ip`.
    pub listen_ip: IpAddr,
    /// `port_range`, inclusive.
    pub port_range: (u16, u16),
}

/// Counts per status.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Summary {
    /// Checks that passed.
    pub ok: usize,
    /// Warnings.
    pub warn: usize,
    /// Failures.
    pub fail: usize,
    /// Not relevant here.
    pub skipped: usize,
}

/// The whole report (`--json` prints it as is).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// What was checked against.
    pub target: Target,
    /// Every check, in a fixed order.
    pub checks: Vec<Check>,
    /// Counts per status.
    pub summary: Summary,
}

impl Report {
    /// Whether any check failed (the binary then exits 1).
    pub fn failed(&self) -> bool {
        self.summary.fail > 0
    }

    /// The human form: a header, one aligned line per check, then what to fix.
    pub fn text(&self) -> String {
        let t = &self.target;
        let mut out = String::new();
        let nic = match (&t.interface, &t.interface_from) {
            (Some(i), Some(from)) => format!("{i} ({from})"),
            _ => "none found".to_owned(),
        };
        let _ = writeln!(
            out,
            "sluice-dataplane doctor: kernel {}, {} worker(s) on cores {}, backend {}, XDP {}, NIC {nic}, legs on {} ports {}-{}",
            t.kernel,
            t.workers,
            cpu_list(&t.cores),
            t.backend,
            t.xdp_mode,
            t.listen_ip,
            t.port_range.0,
            t.port_range.1
        );
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        for c in &self.checks {
            let _ = writeln!(out, "{:<5} {:<width$}  {}", c.status.label(), c.name, c.found);
        }
        let todo: Vec<&Check> = self.checks.iter().filter(|c| matches!(c.status, Status::Warn | Status::Fail)).collect();
        if !todo.is_empty() {
            let _ = writeln!(out, "\nto fix:");
            for c in todo {
                let _ = writeln!(out, "  {} {}:", c.status.label(), c.name);
                if let Some(fix) = &c.fix {
                    let _ = writeln!(out, "      fix:         {fix}");
                }
                if let Some(why) = &c.consequence {
                    let _ = writeln!(out, "      consequence: {why}");
                }
            }
        }
        let s = &self.summary;
        let _ = writeln!(out, "\n{} ok, {} warn, {} fail, {} skipped", s.ok, s.warn, s.fail, s.skipped);
        out
    }
}

/// Runs every check against `config` (already parsed, with the CLI overrides applied).
///
/// Errors only when the configuration is invalid in a way the daemon refuses (as
/// `--check-config`); a missing control-socket directory is reported as a check instead, since
/// the package's tmpfiles entry creates it at boot.
pub fn run(config: &Config) -> Result<Report, ConfigError> {
    let allowed = allowed_cores();
    let mut checks = Vec::new();
    match config.validate(&allowed) {
        Ok(()) => {}
        Err(ConfigError::Invalid { key: "control_socket", why }) => checks.push(Check::bad(
            "control_socket",
            Status::Warn,
            why,
            format!(
                "mkdir -m 0755 -p {} (installed from the package: systemd-tmpfiles --create sluice.conf makes /run/sluice, owned by the sluice user)",
                config.control_socket.parent().map(|p| p.display().to_string()).unwrap_or_default()
            ),
            "the daemon refuses to start until the control socket's directory exists",
        )),
        Err(e) => return Err(e),
    }
    let kernel = read_trim("/proc/sys/kernel/osrelease").unwrap_or_default();
    let caps = Caps::read();
    let nic = pick_nic(config);
    let cores = config.worker_cores(&allowed);

    checks.push(kernel_check(&kernel));
    checks.push(caps_check(config, caps));
    checks.push(io_uring_check(config));
    let (gso, gro) = udp_offload_checks(config);
    checks.push(gso);
    checks.push(gro);
    checks.push(bpf_check(config));
    checks.extend(nic_checks(config, nic.as_ref().map(|(n, _)| n.as_str())));
    checks.push(worker_cores_check(&cores, nic.as_ref().map(|(n, _)| n.as_str())));
    checks.push(rp_filter_check(nic.as_ref().map(|(n, _)| n.as_str())));
    checks.push(socket_buffers_check(config));
    checks.push(nofile_check(config));
    checks.push(memlock_check(config, &kernel, caps));
    checks.push(ephemeral_check(config));
    checks.push(clock_check());

    let mut summary = Summary::default();
    for c in &checks {
        match c.status {
            Status::Ok => summary.ok += 1,
            Status::Warn => summary.warn += 1,
            Status::Fail => summary.fail += 1,
            Status::Skipped => summary.skipped += 1,
        }
    }
    let target = Target {
        kernel,
        workers: config.workers,
        cores,
        backend: backend_name(config.backend).to_owned(),
        xdp_mode: xdp_mode_name(config.xdp.mode).to_owned(),
        interface: nic.as_ref().map(|(n, _)| n.clone()),
        interface_from: nic.map(|(_, from)| from.to_owned()),
        listen_ip: config.listen_ip,
        port_range: config.port_range,
    };
    Ok(Report { target, checks, summary })
}

fn backend_name(b: BackendChoice) -> &'static str {
    match b {
        BackendChoice::Auto => "auto (mmsg)",
        BackendChoice::Uring => "uring",
        BackendChoice::Mmsg => "mmsg",
        BackendChoice::Xsk => "xsk",
    }
}

fn xdp_mode_name(m: XdpMode) -> &'static str {
    match m {
        XdpMode::Off => "off",
        XdpMode::Shield => "shield",
        XdpMode::AfXdp => "af_xdp",
    }
}

// ---------------------------------------------------------------------------------------------
// Small readers

fn read_trim(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

fn read_num(path: impl AsRef<Path>) -> Option<u64> {
    read_trim(path)?.parse().ok()
}

/// Parses a kernel CPU list (`0-3,6,8-9`; empty for none).
pub fn parse_cpu_list(text: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for part in text.trim().split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let part = part.split(':').next().unwrap_or(part);
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                    out.extend(a..=b.min(a + 4096));
                }
            }
            None => out.extend(part.parse::<usize>().ok()),
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// `0-3,6`, as the kernel writes a CPU list; `none` when empty.
fn cpu_list(cores: &[usize]) -> String {
    let mut sorted = cores.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        while i + 1 < sorted.len() && sorted[i + 1] == sorted[i] + 1 {
            i += 1;
        }
        out.push(if sorted[i] == start { start.to_string() } else { format!("{start}-{}", sorted[i]) });
        i += 1;
    }
    if out.is_empty() { "none".into() } else { out.join(",") }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
}

/// `SOL_UDP`, `UDP_SEGMENT` (4.18) and `UDP_GRO` (5.0), from linux/udp.h.
const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;

fn setsockopt_int(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    let len = libc::socklen_t::try_from(size_of::<libc::c_int>()).unwrap_or(4);
    // SAFETY: `value` lives across the call and `len` is its size; `fd` is an open socket the
    // caller owns.
    let rc = unsafe { libc::setsockopt(fd, level, name, (&raw const value).cast(), len) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

fn getsockopt_int(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = libc::socklen_t::try_from(size_of::<libc::c_int>()).unwrap_or(4);
    // SAFETY: `value`/`len` describe a writable int; `fd` is an open socket the caller owns.
    let rc = unsafe { libc::getsockopt(fd, level, name, (&raw mut value).cast(), &raw mut len) };
    if rc == 0 { Ok(value) } else { Err(io::Error::last_os_error()) }
}

fn rlimit(resource: libc::__rlimit_resource_t) -> Option<(u64, u64)> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit(2) writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(resource, &raw mut lim) } != 0 {
        return None;
    }
    Some((lim.rlim_cur, lim.rlim_max))
}

fn limit_text(v: u64) -> String {
    if v == libc::RLIM_INFINITY { "unlimited".into() } else { v.to_string() }
}

// ---------------------------------------------------------------------------------------------
// Capabilities

/// The effective capability set (`CapEff` of /proc/self/status).
#[derive(Clone, Copy, Debug)]
struct Caps(u64);

const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;
const CAP_IPC_LOCK: u32 = 14;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_NICE: u32 = 23;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

impl Caps {
    fn read() -> Self {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let eff = status.lines().find_map(|l| l.strip_prefix("CapEff:")).and_then(|v| u64::from_str_radix(v.trim(), 16).ok()).unwrap_or(0);
        Self(eff)
    }

    fn has(self, cap: u32) -> bool {
        self.0 & (1u64 << cap) != 0
    }

    /// CAP_BPF, or CAP_SYS_ADMIN, which stands in for it.
    fn bpf(self) -> bool {
        self.has(CAP_BPF) || self.has(CAP_SYS_ADMIN)
    }
}

/// What each capability gates in Sluice.
const CAP_GATES: [(u32, &str, &str); 6] = [
    (CAP_NET_ADMIN, "CAP_NET_ADMIN", "attaching the XDP stage, loading it (with CAP_BPF), SO_RCVBUFFORCE"),
    (CAP_BPF, "CAP_BPF", "creating BPF maps and loading the XDP program (CAP_SYS_ADMIN stands in)"),
    (CAP_PERFMON, "CAP_PERFMON", "optional: without it the verifier adds Spectre v1 mitigations to the XDP program"),
    (CAP_NET_RAW, "CAP_NET_RAW", "creating AF_XDP sockets (backend xsk)"),
    (CAP_SYS_NICE, "CAP_SYS_NICE", "optional: real-time priority for workers or NAPI threads (chrt), cross-process affinity"),
    (CAP_IPC_LOCK, "CAP_IPC_LOCK", "exempts the AF_XDP UMEM from RLIMIT_MEMLOCK"),
];

fn caps_check(config: &Config, caps: Caps) -> Check {
    let found = CAP_GATES
        .iter()
        .map(|(bit, name, _)| format!("{} {}", name.trim_start_matches("CAP_"), if caps.has(*bit) { "yes" } else { "no" }))
        .collect::<Vec<_>>()
        .join(", ");
    let mut needed: Vec<(&str, &str)> = Vec::new();
    if config.xdp.mode != XdpMode::Off {
        if !caps.has(CAP_NET_ADMIN) {
            needed.push(("CAP_NET_ADMIN", CAP_GATES[0].2));
        }
        if !caps.bpf() {
            needed.push(("CAP_BPF", CAP_GATES[1].2));
        }
    }
    if config.backend == BackendChoice::Xsk && !caps.has(CAP_NET_RAW) {
        needed.push(("CAP_NET_RAW", CAP_GATES[3].2));
    }
    let found = format!("effective: {found} (CapEff {:#x})", caps.0);
    if needed.is_empty() {
        return Check::ok("capabilities", found);
    }
    let names: Vec<&str> = needed.iter().map(|(n, _)| *n).collect();
    Check::bad(
        "capabilities",
        Status::Fail,
        found,
        format!("run as root, or in the unit: AmbientCapabilities={0} and CapabilityBoundingSet={0}", names.join(" ")),
        format!(
            "the daemon cannot start with xdp.mode {} / backend {}: {}",
            xdp_mode_name(config.xdp.mode),
            backend_name(config.backend),
            needed.iter().map(|(n, why)| format!("{n} gates {why}")).collect::<Vec<_>>().join("; ")
        ),
    )
}

// ---------------------------------------------------------------------------------------------
// Kernel, io_uring, UDP offloads

fn kernel_check(release: &str) -> Check {
    let Some(v) = crate::io::uring::parse_release(release) else {
        return Check::bad(
            "kernel",
            Status::Warn,
            format!("cannot parse release {release:?}"),
            "check /proc/sys/kernel/osrelease",
            "the feature checks below still probe the kernel directly",
        );
    };
    let missing: Vec<&str> = [
        ((4, 18), "UDP GSO (4.18)"),
        ((5, 0), "UDP GRO (5.0)"),
        ((5, 11), "BPF maps charged to the memory cgroup instead of RLIMIT_MEMLOCK (5.11)"),
        ((6, 0), "io_uring multishot recvmsg (6.0; backend uring falls back to mmsg)"),
        ((6, 11), "AF_XDP TX metadata (6.11; copy-mode ring sends sum UDP checksums in software)"),
        ((6, 17), "XDP_MAX_TX_SKB_BUDGET (6.17; copy-mode AF_XDP sends 32 frames per kick)"),
    ]
    .into_iter()
    .filter(|(min, _)| v < *min)
    .map(|(_, what)| what)
    .collect();
    if missing.is_empty() {
        return Check::ok(
            "kernel",
            format!("{release}: has everything Sluice uses (UDP GSO/GRO, io_uring multishot, AF_XDP TX metadata, copy-mode TX budget)"),
        );
    }
    let status = if v < (4, 18) { Status::Fail } else { Status::Warn };
    Check::bad(
        "kernel",
        status,
        format!("{release}: lacks {}", missing.join(", ")),
        "run a kernel of 6.17 or later (Debian: the backports kernel)",
        "each missing feature above costs what its own check below says",
    )
}

fn io_uring_check(config: &Config) -> Check {
    let sysctl = crate::io::uring::io_uring_disabled_sysctl();
    let sysctl_text = sysctl.map_or_else(|| "absent (before 6.6)".to_owned(), |v| v.to_string());
    let used = config.backend == BackendChoice::Uring;
    let note = if used { String::new() } else { format!(" (not used: backend {})", backend_name(config.backend)) };
    match crate::io::uring::probe() {
        Ok(()) => Check::ok("io_uring", format!("usable: ring and provided-buffer ring set up; kernel.io_uring_disabled={sysctl_text}{note}")),
        Err(e) => {
            let found = format!("disabled/unusable: {e} (kernel.io_uring_disabled={sysctl_text}){note}");
            if !used {
                return Check::ok("io_uring", found);
            }
            let fix = match sysctl {
                Some(2) => "sysctl -w kernel.io_uring_disabled=0, and persist it in /etc/sysctl.d/90-sluice.conf".to_owned(),
                Some(1) => "sysctl -w kernel.io_uring_group=<the daemon's gid> (or kernel.io_uring_disabled=0), persisted in /etc/sysctl.d/".to_owned(),
                _ => "allow io_uring_setup(2) in the seccomp/container policy, or use backend = \"mmsg\"".to_owned(),
            };
            Check::bad(
                "io_uring",
                Status::Warn,
                found,
                fix,
                "backend uring falls back to mmsg at start (logged as \"io_uring unavailable\"); measured (README, sluice-bench forward, GCM fan-out 4): mmsg GSO + GRO 387k copies per core-second, uring GSO 368k, so on this machine kind the fallback costs nothing",
            )
        }
    }
}

/// GSO: one `UDP_SEGMENT` send of two 1200-byte segments over loopback must arrive as two
/// datagrams. GRO: `UDP_GRO` accepted, and the same send arriving as one coalesced receive.
fn udp_offload_checks(config: &Config) -> (Check, Check) {
    let probe = || -> io::Result<(bool, usize, io::Result<usize>)> {
        let rx = UdpSocket::bind("127.0.0.1:0")?;
        rx.set_read_timeout(Some(Duration::from_millis(200)))?;
        let tx = UdpSocket::bind("127.0.0.1:0")?;
        tx.connect(rx.local_addr()?)?;
        let gso_ok = setsockopt_int(tx.as_raw_fd(), SOL_UDP, UDP_SEGMENT, 1200).is_ok();
        if !gso_ok {
            return Ok((false, 0, Err(io::ErrorKind::Unsupported.into())));
        }
        let payload = [0x5au8; 2400];
        tx.send(&payload)?;
        let mut buf = [0u8; 4096];
        let mut segments = 0;
        while let Ok(n) = rx.recv(&mut buf) {
            segments += usize::from(n == 1200);
            if segments == 2 {
                break;
            }
        }
        let gro = setsockopt_int(rx.as_raw_fd(), SOL_UDP, UDP_GRO, 1).and_then(|()| {
            tx.send(&payload)?;
            rx.recv(&mut buf)
        });
        Ok((gso_ok, segments, gro))
    };
    const GSO_COST: &str = "measured (README, sluice-bench forward, GCM fan-out 4, mmsg): 243k copies per core-second without GSO against 379k with GSO (387k with GSO + GRO); CM-SHA1 198k against 286k";
    const GRO_COST: &str = "measured (README, sluice-bench forward, mmsg with GSO): GCM fan-out 4 379k copies per core-second without GRO, 387k with it; CM-SHA1 fan-out 4 286k against 325k";
    match probe() {
        Err(e) => (
            Check::bad("udp_gso", Status::Warn, format!("probe failed: {e}"), "check that loopback (lo) is up", GSO_COST),
            Check::bad("udp_gro", Status::Warn, format!("probe failed: {e}"), "check that loopback (lo) is up", GRO_COST),
        ),
        Ok((gso_ok, segments, gro)) => {
            let gso = if !gso_ok || segments != 2 {
                Check::bad(
                    "udp_gso",
                    Status::Warn,
                    format!("UDP_SEGMENT {}; a 2×1200-byte GSO send arrived as {segments} datagram(s) of 1200", if gso_ok { "accepted" } else { "refused" }),
                    "a kernel of 4.18 or later with UDP GSO (no sysctl turns it off)",
                    format!("the backends send one datagram per message; {GSO_COST}"),
                )
            } else if !config.gso {
                Check::bad(
                    "udp_gso",
                    Status::Warn,
                    "supported (a 2×1200-byte UDP_SEGMENT send arrived as 2 datagrams), but gso = false",
                    "gso = true in [dataplane] (drop --no-gso)",
                    GSO_COST,
                )
            } else {
                Check::ok("udp_gso", "UDP_SEGMENT works: a 2×1200-byte GSO send over loopback arrived as 2 datagrams")
            };
            let gro = match (gro, config.gro) {
                (Ok(n), true) => Check::ok("udp_gro", format!("UDP_GRO accepted; the same send arrived as one {n}-byte coalesced receive")),
                (Ok(n), false) => Check::bad(
                    "udp_gro",
                    Status::Warn,
                    format!("supported (one {n}-byte coalesced receive), but gro = false"),
                    "gro = true in [dataplane] (drop --no-gro)",
                    GRO_COST,
                ),
                (Err(e), _) => Check::bad(
                    "udp_gro",
                    Status::Warn,
                    format!("UDP_GRO refused or not coalesced: {e}"),
                    "a kernel of 5.0 or later",
                    format!("each datagram is received on its own (the daemon logs \"UDP_GRO refused\"); {GRO_COST}"),
                ),
            };
            (gso, gro)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// BPF and the NIC

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Creates (and closes) a one-entry BPF array map with the raw `bpf(2)` syscall.
fn bpf_map_create() -> io::Result<()> {
    // union bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size, max_entries, map_flags,
    // then fields left zero (the kernel requires every byte past what it reads to be zero).
    let mut attr = [0u32; 32];
    attr[0] = 2; // BPF_MAP_TYPE_ARRAY
    attr[1] = 4;
    attr[2] = 4;
    attr[3] = 1;
    const BPF_MAP_CREATE: libc::c_long = 0;
    // SAFETY: `attr` is a zeroed bpf_attr of the size passed; the syscall only reads it.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_CREATE, attr.as_ptr(), size_of_val(&attr)) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a fresh fd that nothing else owns.
    drop(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
    Ok(())
}

fn bpffs_mounted(path: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(path) else { return false };
    // SAFETY: all-zero is a valid statfs (plain integers).
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path, `st` a writable statfs.
    let rc = unsafe { libc::statfs(c.as_ptr(), &raw mut st) };
    let ftype = st.f_type as i64;
    rc == 0 && ftype == BPF_FS_MAGIC
}

fn bpf_check(config: &Config) -> Check {
    let map = bpf_map_create();
    let fs = bpffs_mounted("/sys/fs/bpf");
    let on = config.xdp.mode != XdpMode::Off;
    // With the stage on, the embedded program itself goes through the verifier (private maps,
    // nothing attached or left pinned).
    let prog = if on && map.is_ok() && fs { Some(crate::xdp::XdpStage::load_unpinned().map(drop).map_err(|e| e.to_string())) } else { None };
    let found = format!(
        "BPF map create: {}; bpffs at /sys/fs/bpf: {}{}",
        match &map {
            Ok(()) => "ok".to_owned(),
            Err(e) => format!("refused ({e})"),
        },
        if fs { "mounted" } else { "not mounted" },
        match &prog {
            Some(Ok(())) => "; the XDP program loads and verifies".to_owned(),
            Some(Err(e)) => format!("; the XDP program does not load: {e}"),
            None => String::new(),
        }
    );
    let broken = map.is_err() || !fs || matches!(prog, Some(Err(_)));
    if !broken {
        return Check::ok("bpf", if on { found } else { format!("{found} (not used: xdp.mode = off)") });
    }
    let mut fixes = Vec::new();
    if map.is_err() {
        fixes.push("run as root or grant CAP_BPF and CAP_NET_ADMIN (AmbientCapabilities=CAP_BPF CAP_NET_ADMIN); check kernel.unprivileged_bpf_disabled and any LSM/seccomp policy".to_owned());
    }
    if !fs {
        fixes.push("mount -t bpf bpf /sys/fs/bpf (fstab: `bpf /sys/fs/bpf bpf defaults 0 0`)".to_owned());
    }
    if matches!(prog, Some(Err(_))) {
        fixes.push("see the load error; the verifier log is in the daemon's log at start".to_owned());
    }
    if on {
        Check::bad(
            "bpf",
            Status::Fail,
            found,
            fixes.join("; "),
            format!(
                "xdp.mode {}: the XDP stage cannot be opened (its maps pin under /sys/fs/bpf/sluice/<instance>/): the daemon refuses to start",
                xdp_mode_name(config.xdp.mode)
            ),
        )
    } else {
        Check::bad("bpf", Status::Warn, found, fixes.join("; "), "not needed with xdp.mode = off; mode shield or af_xdp would refuse to start here")
    }
}

/// The interface the NIC checks look at: `xdp.interface`, else the one holding `listen_ip`,
/// else the default route's.
fn pick_nic(config: &Config) -> Option<(String, &'static str)> {
    if let Some(i) = &config.xdp.interface {
        return Some((i.clone(), "xdp.interface"));
    }
    if !config.listen_ip.is_unspecified()
        && let Some(i) = interface_holding(config.listen_ip)
    {
        return Some((i, "holds listen_ip"));
    }
    default_route_interface().map(|i| (i, "default route"))
}

fn interface_holding(ip: IpAddr) -> Option<String> {
    let out = std::process::Command::new("ip").args(["-j", "addr", "show"]).output().ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v.as_array()?.iter().find_map(|link| {
        let holds = link["addr_info"].as_array()?.iter().any(|a| a["local"].as_str().and_then(|s| s.parse::<IpAddr>().ok()) == Some(ip));
        holds.then(|| link["ifname"].as_str().map(str::to_owned)).flatten()
    })
}

fn default_route_interface() -> Option<String> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    routes.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 7 && f[1] == "00000000" && f[7] == "00000000").then(|| f[0].to_owned())
    })
}

/// The driver's name: the device's driver in sysfs, else `ETHTOOL_GDRVINFO` (veth, bridges...).
fn driver_of(iface: &str) -> Option<String> {
    if let Ok(link) = std::fs::read_link(format!("/sys/class/net/{iface}/device/driver"))
        && let Some(name) = link.file_name()
    {
        return Some(name.to_string_lossy().into_owned());
    }
    ethtool_driver(iface)
}

fn ethtool_driver(iface: &str) -> Option<String> {
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 32 * 4 + 12 + 20],
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut libc::c_void,
        pad: [u8; 16],
    }
    const ETHTOOL_GDRVINFO: u32 = 3;
    if iface.len() >= libc::IFNAMSIZ {
        return None;
    }
    let mut info = DrvInfo { cmd: ETHTOOL_GDRVINFO, driver: [0; 32], rest: [0; 32 * 4 + 12 + 20] };
    let mut req = IfReq { name: [0; libc::IFNAMSIZ], data: (&raw mut info).cast(), pad: [0; 16] };
    req.name[..iface.len()].copy_from_slice(iface.as_bytes());
    // SAFETY: plain socket creation; the result is checked.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return None;
    }
    // SAFETY: `raw` is a fresh fd nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: SIOCETHTOOL reads `req` (a NUL-terminated name and a pointer to `info`) and writes
    // at most size_of::<DrvInfo>() bytes into `info`; both live across the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &raw mut req) };
    if rc != 0 {
        return None;
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(info.driver.len());
    let name = String::from_utf8_lossy(&info.driver[..end]).into_owned();
    (!name.is_empty()).then_some(name)
}

/// `NETDEV_XDP_ACT_*` (include/uapi/linux/netdev.h).
const XDP_ACT_BASIC: u64 = 1;
const XDP_ACT_REDIRECT: u64 = 2;
const XDP_ACT_NDO_XMIT: u64 = 4;
const XDP_ACT_XSK_ZEROCOPY: u64 = 8;

/// The interface's XDP features as the kernel reports them over the `netdev` generic-netlink
/// family (Linux 6.3+): `Ok(None)` when the family does not exist.
fn xdp_features(ifindex: u32) -> io::Result<Option<u64>> {
    const NETLINK_GENERIC: libc::c_int = 16;
    const GENL_ID_CTRL: u16 = 0x10;
    const CTRL_CMD_GETFAMILY: u8 = 3;
    const CTRL_ATTR_FAMILY_ID: u16 = 1;
    const CTRL_ATTR_FAMILY_NAME: u16 = 2;
    const NETDEV_CMD_DEV_GET: u8 = 1;
    const NETDEV_A_DEV_IFINDEX: u16 = 1;
    const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
    // SAFETY: plain socket creation; the result is checked.
    let raw = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_GENERIC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh fd nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let tv = libc::timeval { tv_sec: 1, tv_usec: 0 };
    // SAFETY: `tv` is a timeval of the size passed; the socket is open.
    unsafe { libc::setsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVTIMEO, (&raw const tv).cast(), size_of::<libc::timeval>() as libc::socklen_t) };
    let family = genl_call(&sock, GENL_ID_CTRL, CTRL_CMD_GETFAMILY, 1, CTRL_ATTR_FAMILY_NAME, b"netdev\0");
    let family = match family {
        Ok(attrs) => match attrs.iter().find(|(t, _)| *t == CTRL_ATTR_FAMILY_ID).and_then(|(_, v)| v.get(..2)) {
            Some(b) => u16::from_ne_bytes([b[0], b[1]]),
            None => return Ok(None),
        },
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    let attrs = genl_call(&sock, family, NETDEV_CMD_DEV_GET, 1, NETDEV_A_DEV_IFINDEX, &ifindex.to_ne_bytes())?;
    Ok(attrs.iter().find(|(t, _)| *t == NETDEV_A_DEV_XDP_FEATURES).and_then(|(_, v)| v.get(..8)).map(|b| {
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        u64::from_ne_bytes(a)
    }))
}

/// One generic-netlink request with one attribute; the reply's attributes.
///
/// ```text
///  nlmsghdr: len(4) type(2) flags(2) seq(4) pid(4) | genlmsghdr: cmd(1) version(1) 0(2)
///  nlattr:   len(2) type(2) value, padded to 4
/// ```
fn genl_call(sock: &OwnedFd, msg_type: u16, cmd: u8, version: u8, attr: u16, value: &[u8]) -> io::Result<Vec<(u16, Vec<u8>)>> {
    const NLM_F_REQUEST: u16 = 1;
    const NLMSG_ERROR: u16 = 2;
    let attr_len = 4 + value.len();
    let total = 16 + 4 + attr_len.next_multiple_of(4);
    let mut msg = Vec::with_capacity(total);
    msg.extend_from_slice(&(total as u32).to_ne_bytes());
    msg.extend_from_slice(&msg_type.to_ne_bytes());
    msg.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&[cmd, version, 0, 0]);
    msg.extend_from_slice(&(attr_len as u16).to_ne_bytes());
    msg.extend_from_slice(&attr.to_ne_bytes());
    msg.extend_from_slice(value);
    msg.resize(total, 0);
    // SAFETY: all-zero is a valid sockaddr_nl (pid 0: the kernel).
    let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    to.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: `msg` and `to` are valid for the lengths passed; the socket is open.
    let sent =
        unsafe { libc::sendto(sock.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0, (&raw const to).cast(), size_of::<libc::sockaddr_nl>() as libc::socklen_t) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 16384];
    // SAFETY: `buf` is writable for its length; the socket is open.
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let reply = buf.get(..n as usize).unwrap_or_default();
    let u16_at = |b: &[u8], at: usize| b.get(at..at + 2).map_or(0, |s| u16::from_ne_bytes([s[0], s[1]]));
    let u32_at = |b: &[u8], at: usize| b.get(at..at + 4).map_or(0, |s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]));
    let len = (u32_at(reply, 0) as usize).min(reply.len());
    if len < 16 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "short netlink reply"));
    }
    if u16_at(reply, 4) == NLMSG_ERROR {
        let code = u32_at(reply, 16) as i32;
        return Err(if code < 0 { io::Error::from_raw_os_error(-code) } else { io::Error::new(io::ErrorKind::InvalidData, "unexpected netlink ack") });
    }
    let mut attrs = Vec::new();
    let mut at = 20;
    while at + 4 <= len {
        let alen = usize::from(u16_at(reply, at));
        let atype = u16_at(reply, at + 2) & 0x3fff;
        if alen < 4 || at + alen > len {
            break;
        }
        attrs.push((atype, reply[at + 4..at + alen].to_vec()));
        at += alen.next_multiple_of(4);
    }
    Ok(attrs)
}

/// Drivers with native (driver-mode) XDP in mainline Linux, for kernels without the `netdev`
/// family's report.
const NATIVE_XDP_DRIVERS: &[&str] = &[
    "mlx4_en",
    "mlx4_core",
    "mlx5_core",
    "i40e",
    "ice",
    "ixgbe",
    "ixgbevf",
    "igb",
    "igc",
    "bnxt_en",
    "nfp",
    "qede",
    "virtio_net",
    "veth",
    "tun",
    "ena",
    "sfc",
    "gve",
    "idpf",
    "hv_netvsc",
    "stmmac",
    "mvneta",
    "mvpp2",
    "thunder-nicvf",
    "dpaa2-eth",
    "enetc",
    "fec",
    "atlantic",
    "mana",
];
/// Drivers with AF_XDP zero-copy in mainline Linux (same use).
const ZEROCOPY_DRIVERS: &[&str] = &["i40e", "ice", "ixgbe", "igc", "mlx5_core", "stmmac", "gve", "idpf"];

fn attached_xdp(iface: &str) -> Option<String> {
    let out = std::process::Command::new("ip").args(["-j", "-d", "link", "show", "dev", iface]).output().ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let xdp = v.get(0)?.get("xdp")?;
    let mode = match xdp.get("mode").and_then(serde_json::Value::as_u64) {
        Some(1) => "driver mode".to_owned(),
        Some(2) => "generic mode".to_owned(),
        Some(3) => "offloaded".to_owned(),
        Some(4) => "several modes".to_owned(),
        m => format!("mode {m:?}"),
    };
    let prog = xdp.get("prog").map(|p| format!(" (prog {} id {})", p["name"].as_str().unwrap_or("?"), p["id"]));
    Some(format!("{mode}{}", prog.unwrap_or_default()))
}

fn nic_checks(config: &Config, nic: Option<&str>) -> Vec<Check> {
    let on = config.xdp.mode != XdpMode::Off;
    let xsk = config.backend == BackendChoice::Xsk;
    let Some(nic) = nic else {
        let why = "no interface: no xdp.interface, listen_ip unspecified and no default route";
        return ["interface", "xdp_native", "af_xdp_zerocopy", "rss_queues"].into_iter().map(|n| Check::skipped(n, why)).collect();
    };
    let Some(ifindex) = read_num(format!("/sys/class/net/{nic}/ifindex")).and_then(|i| u32::try_from(i).ok()) else {
        let found = format!("{nic} does not exist in this network namespace");
        let first = if on {
            Check::bad(
                "interface",
                Status::Fail,
                found,
                "set [dataplane.xdp] interface (or --xdp-interface) to one of `ip -br link`",
                "the XDP stage cannot attach: the daemon refuses to start",
            )
        } else {
            Check::skipped("interface", found)
        };
        let mut out = vec![first];
        out.extend(["xdp_native", "af_xdp_zerocopy", "rss_queues"].into_iter().map(|n| Check::skipped(n, format!("{nic} does not exist"))));
        return out;
    };
    let driver = driver_of(nic);
    let driver_text = driver.clone().unwrap_or_else(|| "none reported".into());
    let attached = attached_xdp(nic);
    let mut out =
        vec![Check::ok("interface", format!("{nic}: ifindex {ifindex}, driver {driver_text}, XDP attached: {}", attached.as_deref().unwrap_or("none")))];

    // Native XDP and zero-copy: the kernel's own report, else the driver list.
    let features = xdp_features(ifindex);
    let by_driver = |list: &[&str]| driver.as_deref().is_some_and(|d| list.contains(&d));
    let (native, zerocopy, how) = match &features {
        Ok(Some(f)) => (
            f & XDP_ACT_BASIC != 0,
            f & XDP_ACT_XSK_ZEROCOPY != 0,
            format!(
                "netdev xdp-features {f:#x} ({})",
                [(XDP_ACT_BASIC, "basic"), (XDP_ACT_REDIRECT, "redirect"), (XDP_ACT_NDO_XMIT, "ndo-xmit"), (XDP_ACT_XSK_ZEROCOPY, "xsk-zerocopy")]
                    .iter()
                    .filter(|(bit, _)| f & bit != 0)
                    .map(|(_, n)| *n)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ),
        Ok(None) => (
            by_driver(NATIVE_XDP_DRIVERS),
            by_driver(ZEROCOPY_DRIVERS),
            format!("driver {driver_text} against the list of mainline drivers (no netdev family before 6.3)"),
        ),
        Err(e) => (
            by_driver(NATIVE_XDP_DRIVERS),
            by_driver(ZEROCOPY_DRIVERS),
            format!("driver {driver_text} against the list of mainline drivers (netdev family: {e})"),
        ),
    };
    let native_found = format!("{}: {} (from {how})", nic, if native { "native (driver-mode) XDP" } else { "generic (SKB) XDP only" });
    out.push(if !on {
        Check::skipped("xdp_native", format!("xdp.mode = off; {native_found}"))
    } else if native {
        Check::ok("xdp_native", native_found)
    } else {
        Check::bad(
            "xdp_native",
            Status::Warn,
            native_found,
            "use a NIC whose driver has native XDP (mlx5_core, ice, i40e, ixgbe, bnxt_en, virtio_net, veth, ...); the daemon falls back to generic mode by itself",
            "the stage attaches in generic (SKB) mode (logged \"falling back to generic\"): every packet gets an skb before the program runs, which is what driver mode saves; Sluice measured its shield only in driver mode (on veth: it drops 9.8× the rate userspace reaches), generic mode is not measured",
        )
    });
    let zc_found = format!("{}: {} (from {how})", nic, if zerocopy { "AF_XDP zero-copy" } else { "AF_XDP copy mode only" });
    out.push(if !xsk {
        Check::skipped("af_xdp_zerocopy", format!("backend is not xsk; {zc_found}"))
    } else if zerocopy {
        Check::ok("af_xdp_zerocopy", zc_found)
    } else {
        Check::bad(
            "af_xdp_zerocopy",
            Status::Warn,
            zc_found,
            "a NIC whose driver has AF_XDP zero-copy (xdp-features xsk-zerocopy: ice, i40e, ixgbe, igc, mlx5_core, ...), or backend = \"mmsg\" with xdp.mode = \"shield\"",
            "the XSKs run in copy mode: measured (README, sluice-bench xdp on veth, copy mode only) level with the best socket backend (0.98× in the final run, 0.79-1.13× over runs); beating the sockets needs zero-copy",
        )
    });

    // RSS: receive queues against workers.
    let queues = std::fs::read_dir(format!("/sys/class/net/{nic}/queues"))
        .map(|d| d.filter_map(Result::ok).filter(|e| e.file_name().to_string_lossy().starts_with("rx-")).count())
        .unwrap_or(0);
    let found = format!("{nic}: {queues} RX queue(s) for {} worker(s)", config.workers);
    out.push(if queues >= config.workers {
        Check::ok("rss_queues", found)
    } else if xsk {
        Check::bad(
            "rss_queues",
            Status::Fail,
            found,
            format!("ethtool -L {nic} combined {} (or rx {}), or workers = {queues}", config.workers, config.workers),
            format!(
                "worker k binds its AF_XDP socket to RX queue k: worker(s) {} have no queue and the daemon refuses to start",
                cpu_list(&(queues..config.workers).collect::<Vec<_>>())
            ),
        )
    } else {
        Check::bad(
            "rss_queues",
            Status::Warn,
            found,
            format!("ethtool -L {nic} combined {} where the NIC has the channels; else RPS: echo <cpu mask> > /sys/class/net/{nic}/queues/rx-0/rps_cpus", config.workers),
            format!("the kernel receive (interrupt + NAPI softirq) of every leg runs on the core(s) of {queues} queue(s) however many workers there are; not measured by Sluice"),
        )
    });
    out
}

// ---------------------------------------------------------------------------------------------
// Cores and interrupts

/// `(irq, name)` of the interrupts in /proc/interrupts whose effective affinity includes a core
/// in `cores`.
fn irqs_on(cores: &[usize]) -> Vec<(u32, String)> {
    let text = std::fs::read_to_string("/proc/interrupts").unwrap_or_default();
    let ncpu = text.lines().next().map_or(0, |h| h.split_whitespace().count());
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let Some((irq, rest)) = line.trim_start().split_once(':') else { continue };
        let Ok(irq) = irq.parse::<u32>() else { continue };
        let name = rest.split_whitespace().skip(ncpu).collect::<Vec<_>>().join(" ");
        let dir = format!("/proc/irq/{irq}");
        let aff = read_trim(format!("{dir}/effective_affinity_list")).filter(|s| !s.is_empty()).or_else(|| read_trim(format!("{dir}/smp_affinity_list")));
        if let Some(aff) = aff
            && parse_cpu_list(&aff).iter().any(|c| cores.contains(c))
        {
            out.push((irq, name));
        }
    }
    out
}

/// The interrupt numbers of `nic`'s device (MSI vectors of it or of its parent, as virtio's).
fn nic_irqs(nic: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for dir in [format!("/sys/class/net/{nic}/device/msi_irqs"), format!("/sys/class/net/{nic}/device/../msi_irqs")] {
        if let Ok(d) = std::fs::read_dir(dir) {
            out.extend(d.filter_map(Result::ok).filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok()));
        }
    }
    out
}

/// NET_RX softirqs so far per core in `cores`.
fn net_rx_softirqs(cores: &[usize]) -> Vec<(usize, u64)> {
    let text = std::fs::read_to_string("/proc/softirqs").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.trim_start().starts_with("NET_RX:")) else { return Vec::new() };
    let counts: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    cores.iter().filter_map(|&c| counts.get(c).map(|&n| (c, n))).collect()
}

fn worker_cores_check(cores: &[usize], nic: Option<&str>) -> Check {
    let isolated = parse_cpu_list(&read_trim("/sys/devices/system/cpu/isolated").unwrap_or_default());
    let nohz = parse_cpu_list(&read_trim("/sys/devices/system/cpu/nohz_full").unwrap_or_default());
    let not_isolated: Vec<usize> = cores.iter().copied().filter(|c| !isolated.contains(c)).collect();
    let irqs = irqs_on(cores);
    let nic_vectors = nic.map(nic_irqs).unwrap_or_default();
    let nic_on: Vec<String> = irqs
        .iter()
        .filter(|(n, name)| nic_vectors.contains(n) || nic.is_some_and(|i| name.split_whitespace().any(|w| w.starts_with(i))))
        .map(|(n, name)| format!("{n} {}", name.split_whitespace().last().unwrap_or("")))
        .collect();
    let softirqs = net_rx_softirqs(cores).iter().map(|(c, n)| format!("cpu{c} {n}")).collect::<Vec<_>>().join(", ");
    let found = format!(
        "worker cores {}: isolated {} (isolated: {}, nohz_full: {}); {} IRQ(s) routed to them, {} of {}{}; NET_RX softirqs so far: {}",
        cpu_list(cores),
        if not_isolated.is_empty() { "yes" } else { "no" },
        cpu_list(&isolated),
        cpu_list(&nohz),
        irqs.len(),
        nic_on.len(),
        nic.unwrap_or("the NIC"),
        if nic_on.is_empty() { String::new() } else { format!(" ({})", nic_on.join(", ")) },
        if softirqs.is_empty() { "unknown".into() } else { softirqs }
    );
    if not_isolated.is_empty() && nic_on.is_empty() {
        return Check::ok("worker_cores", found);
    }
    let all = std::thread::available_parallelism().map_or(0, usize::from);
    let others: Vec<usize> = (0..all).filter(|c| !cores.contains(c)).collect();
    let mut fix = Vec::new();
    if others.is_empty() {
        fix.push(format!(
            "every core runs a worker, so none is left for interrupts, the kernel's receive and housekeeping: run at most {} worker(s) on this {all}-core host, then isolate their cores (isolcpus=managed_irq,domain,<cores> nohz_full=<cores>) and send interrupts to the rest (irqaffinity=<rest>)",
            all.saturating_sub(1)
        ));
    } else {
        if !not_isolated.is_empty() {
            fix.push(format!(
                "kernel command line: isolcpus=managed_irq,domain,{0} nohz_full={0} irqaffinity={1} (or systemd: AllowedCPUs={1} on system.slice and user.slice, CPUAffinity= for the daemon)",
                cpu_list(cores),
                cpu_list(&others)
            ));
        }
        if !nic_on.is_empty() {
            fix.push(format!(
                "move the NIC's queue interrupts off the workers: echo {} > /proc/irq/<n>/smp_affinity_list for each listed (irqbalance: IRQBALANCE_BANNED_CPULIST={})",
                cpu_list(&others),
                cpu_list(cores)
            ));
        }
    }
    Check::bad(
        "worker_cores",
        Status::Warn,
        found,
        fix.join("; "),
        "the workers share their cores with other tasks, interrupts and the kernel's receive softirq: measured (README, \"Where the tail latency goes\", GCM fan-out 4, mmsg, half the sustained rate, the worker sharing its core with its NAPI thread) Sluice p99 850-3789 µs while the worker's own processing p99 was 90-291 µs",
    )
}

// ---------------------------------------------------------------------------------------------
// Sysctls and limits

fn rp_filter_check(nic: Option<&str>) -> Check {
    let read = |scope: &str| read_num(format!("/proc/sys/net/ipv4/conf/{scope}/rp_filter"));
    let all = read("all");
    let default = read("default");
    let iface = nic.and_then(read);
    let show = |v: Option<u64>| v.map_or_else(|| "?".to_owned(), |v| v.to_string());
    // The kernel uses the larger of `all` and the interface's value.
    let effective = all.max(iface).unwrap_or(0);
    let found = format!("all={} default={} {}={} → effective {effective}", show(all), show(default), nic.unwrap_or("<no NIC>"), show(iface));
    if effective != 1 {
        return Check::ok("rp_filter", found);
    }
    let n = nic.unwrap_or("<if>");
    Check::bad(
        "rp_filter",
        Status::Warn,
        found,
        format!(
            "sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.default.rp_filter=2 net.ipv4.conf.{n}.rp_filter=2 (loose), persisted in /etc/sysctl.d/90-sluice.conf"
        ),
        "strict reverse-path filtering drops every datagram whose source is not routed back out of the interface it came in on (asymmetric routing: multi-homed nodes, anycast, relays answered over another NIC) before any socket sees it, so the socket backends and whatever the XDP stage passes lose it; counted only by the kernel (nstat -az TcpExtIPReversePathFilter), not in Sluice's counters. AF_XDP redirects happen before it",
    )
}

/// How many 1200-byte datagrams a UDP socket with `SO_RCVBUF = bytes` holds before the kernel
/// drops (queued over loopback, nothing read meanwhile): what a leg socket absorbs while its
/// worker is busy. `force` uses SO_RCVBUFFORCE (past rmem_max; needs CAP_NET_ADMIN).
fn burst_capacity(bytes: usize, force: bool) -> io::Result<(usize, usize)> {
    let rx = UdpSocket::bind("127.0.0.1:0")?;
    let opt = if force { libc::SO_RCVBUFFORCE } else { libc::SO_RCVBUF };
    setsockopt_int(rx.as_raw_fd(), libc::SOL_SOCKET, opt, libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX))?;
    let effective = usize::try_from(getsockopt_int(rx.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF)?).unwrap_or(0);
    rx.set_nonblocking(true)?;
    let tx = UdpSocket::bind("127.0.0.1:0")?;
    tx.connect(rx.local_addr()?)?;
    let payload = [0u8; 1200];
    let limit = (effective / 1200 + 256).min(200_000);
    for _ in 0..limit {
        if tx.send(&payload).is_err() {
            break;
        }
    }
    let mut buf = [0u8; 2048];
    let mut held = 0;
    while rx.recv(&mut buf).is_ok() {
        held += 1;
    }
    Ok((effective, held))
}

fn socket_buffers_check(config: &Config) -> Check {
    let want = config.socket_buffer_bytes as u64;
    let rmem = read_num("/proc/sys/net/core/rmem_max").unwrap_or(0);
    let wmem = read_num("/proc/sys/net/core/wmem_max").unwrap_or(0);
    let measured = burst_capacity(config.socket_buffer_bytes, false);
    let measured_text = match &measured {
        Ok((eff, held)) => format!("a leg socket gets SO_RCVBUF {eff} and holds {held} datagrams of 1200 bytes (measured)"),
        Err(e) => format!("measurement failed: {e}"),
    };
    let found = format!("net.core.rmem_max={rmem} wmem_max={wmem}, socket_buffer_bytes={want}: {measured_text}");
    if rmem >= want && wmem >= want {
        return Check::ok("socket_buffers", found);
    }
    let full = burst_capacity(config.socket_buffer_bytes, true).ok();
    let held = measured.as_ref().map_or(0, |(_, h)| *h);
    let compare = full.map_or_else(String::new, |(_, h)| format!(" against {h} at the configured {want} bytes"));
    Check::bad(
        "socket_buffers",
        Status::Warn,
        found,
        format!("sysctl -w net.core.rmem_max={want} net.core.wmem_max={want}, persisted in /etc/sysctl.d/90-sluice.conf"),
        format!(
            "the kernel caps each leg socket's buffers at rmem_max/wmem_max: measured here, a socket holds {held} 1200-byte datagrams{compare}; a burst (a keyframe, many publishers at once) beyond that arriving while the worker is busy is dropped by the kernel (Udp RcvbufErrors in /proc/net/snmp, the drops column of /proc/net/udp), before Sluice counts it"
        ),
    )
}

fn nofile_check(config: &Config) -> Check {
    let (lo, hi) = config.port_range;
    let ports = u64::from(hi - lo) + 1;
    // As `node::raise_descriptor_limit`: one socket per leg port, plus control and metrics
    // connections, epoll, io_uring, AF_XDP, logs, the slow path.
    let reserve = 256 + 16 * config.workers as u64;
    let need = ports + reserve;
    let Some((soft, hard)) = rlimit(libc::RLIMIT_NOFILE) else {
        return Check::bad("nofile", Status::Warn, "getrlimit(RLIMIT_NOFILE) failed", "check the process's limits (prlimit --pid <pid>)", "unknown");
    };
    let nr_open = read_num("/proc/sys/fs/nr_open");
    let found = format!(
        "RLIMIT_NOFILE soft {} hard {}; needs {need}: {ports} ports in port_range {lo}-{hi} (a socket each) + {reserve} reserved",
        limit_text(soft),
        limit_text(hard)
    );
    if hard >= need {
        let raise = if soft < need { " (the daemon raises its soft limit to the hard one at start)" } else { "" };
        return Check::ok("nofile", format!("{found}{raise}"));
    }
    let legs = hard.saturating_sub(reserve).min(ports);
    let mut fix = format!("systemd: LimitNOFILE={need}; shell: ulimit -Hn {need} && ulimit -n {need}; /etc/security/limits.conf: <user> - nofile {need}");
    if nr_open.is_some_and(|n| n < need) {
        let _ = write!(fix, "; first sysctl -w fs.nr_open={need}");
    }
    Check::bad(
        "nofile",
        Status::Fail,
        found,
        fix,
        format!(
            "the daemon raises its soft limit to the hard one ({hard}) and then has sockets for {legs} of the {ports} leg ports (logged as leg_capacity={legs}): a leg given a port past that cannot open it and is never acknowledged (the control plane moves it before answering, or answers UNAVAILABLE)"
        ),
    )
}

fn memlock_check(config: &Config, kernel: &str, caps: Caps) -> Check {
    let Some((soft, hard)) = rlimit(libc::RLIMIT_MEMLOCK) else {
        return Check::bad("memlock", Status::Warn, "getrlimit(RLIMIT_MEMLOCK) failed", "check the process's limits (prlimit --pid <pid>)", "unknown");
    };
    let exempt = caps.has(CAP_IPC_LOCK);
    let limits = format!("RLIMIT_MEMLOCK soft {} hard {}, CAP_IPC_LOCK {}", limit_text(soft), limit_text(hard), if exempt { "yes" } else { "no" });
    let memcg = crate::io::uring::parse_release(kernel).is_some_and(|v| v >= (5, 11));
    if config.backend != BackendChoice::Xsk {
        if config.xdp.mode != XdpMode::Off && !memcg && soft != libc::RLIM_INFINITY {
            return Check::bad(
                "memlock",
                Status::Warn,
                format!("{limits}; kernel {kernel} charges BPF maps to RLIMIT_MEMLOCK (before 5.11)"),
                "systemd: LimitMEMLOCK=infinity; shell: ulimit -l unlimited",
                "the XDP stage's maps may not be created (EPERM at load): the daemon refuses to start",
            );
        }
        return Check::ok(
            "memlock",
            format!("{limits}; nothing of this configuration is charged to it (no AF_XDP UMEM; BPF maps go to the memory cgroup since 5.11)"),
        );
    }
    let per_worker = ((config.xdp.af_xdp_rx_frames + XSK_TX_FRAMES) * XSK_FRAME_SIZE) as u64;
    let need = per_worker * config.workers as u64;
    let found = format!(
        "{limits}; AF_XDP UMEM needs {} ({} worker(s) × ({} RX + {XSK_TX_FRAMES} TX frames) × {XSK_FRAME_SIZE} bytes)",
        mib(need),
        config.workers,
        config.xdp.af_xdp_rx_frames
    );
    if soft == libc::RLIM_INFINITY || soft >= need {
        return Check::ok("memlock", found);
    }
    let fix = format!(
        "systemd: LimitMEMLOCK=infinity (or at least {need}); shell: ulimit -l unlimited (or {} KiB); or give the daemon CAP_IPC_LOCK (AmbientCapabilities=CAP_IPC_LOCK)",
        need.div_ceil(1024)
    );
    let why = "XDP_UMEM_REG pins the UMEM and charges it to RLIMIT_MEMLOCK of the daemon's user (summed over that user's processes) unless the process has CAP_IPC_LOCK (BPF maps are not charged since 5.11)";
    if exempt {
        Check::bad(
            "memlock",
            Status::Warn,
            found,
            fix,
            format!(
                "{why}: this process is exempt through CAP_IPC_LOCK, but the daemon run without it (a service user) cannot register its UMEM (ENOBUFS) and refuses to start"
            ),
        )
    } else {
        Check::bad(
            "memlock",
            Status::Fail,
            found,
            fix,
            format!("{why}: the kernel refuses the UMEM (ENOBUFS), the worker's AF_XDP socket cannot be created and the daemon refuses to start"),
        )
    }
}

fn ephemeral_check(config: &Config) -> Check {
    let (lo, hi) = config.port_range;
    let kernel = read_trim(sluice_api::EPHEMERAL_RANGE_FILE).unwrap_or_default().split_whitespace().collect::<Vec<_>>().join("-");
    match sluice_api::ephemeral_overlap(config.port_range) {
        None => Check::ok("ephemeral_ports", format!("port_range {lo}-{hi} is clear of the kernel's ephemeral range {kernel}")),
        Some((a, b)) => Check::bad(
            "ephemeral_ports",
            Status::Warn,
            format!("port_range {lo}-{hi} overlaps the kernel's ephemeral range {kernel} at {a}-{b}"),
            format!("a port_range below it (the default is 20000-32767), or sysctl -w net.ipv4.ip_local_port_range=\"{} 60999\"", hi.saturating_add(1)),
            "any local client socket (DNS, Redis, gRPC) may take a leg's port first: the dataplane cannot open it for that leg",
        ),
    }
}

fn clock_check() -> Check {
    let dir = "/sys/devices/system/clocksource/clocksource0";
    let current = read_trim(format!("{dir}/current_clocksource")).unwrap_or_else(|| "unknown".into());
    let available = read_trim(format!("{dir}/available_clocksource")).unwrap_or_default();
    const READS: u32 = 1_000_000;
    let start = Instant::now();
    let mut last = start;
    for _ in 0..READS {
        last = std::hint::black_box(Instant::now());
    }
    let ns = last.duration_since(start).as_nanos() as f64 / f64::from(READS);
    let found = format!("{current} (available: {available}); Instant::now() costs {ns:.1} ns (measured, {READS} reads)");
    if current == "tsc" {
        return Check::ok("clock_source", found);
    }
    let fix = if available.split_whitespace().any(|c| c == "tsc") {
        format!("echo tsc > {dir}/current_clocksource (kernel command line: clocksource=tsc)")
    } else {
        "a host with an invariant TSC; kernel command line tsc=reliable if the TSC is known good".to_owned()
    };
    Check::bad(
        "clock_source",
        Status::Warn,
        found,
        fix,
        format!(
            "every clock read costs {ns:.1} ns here (measured above); each worker reads the clock at least once per receive batch, and pacing and the latency histograms read it more"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_and_print() {
        assert_eq!(parse_cpu_list("0-3,6,8-9\n"), vec![0, 1, 2, 3, 6, 8, 9]);
        assert_eq!(parse_cpu_list(""), Vec::<usize>::new());
        assert_eq!(cpu_list(&[0, 1, 2, 3, 6, 8, 9]), "0-3,6,8-9");
        assert_eq!(cpu_list(&[]), "none");
    }

    #[test]
    fn statuses_count_and_fail_exits() {
        let config = Config { control_socket: std::env::temp_dir().join("doctor-unit.sock"), ..Config::default() };
        let report = run(&config).expect("default config is valid here");
        let s = report.summary;
        assert_eq!(s.ok + s.warn + s.fail + s.skipped, report.checks.len());
        assert_eq!(report.failed(), s.fail > 0);
        assert!(report.text().contains("kernel"), "{}", report.text());
    }
}
