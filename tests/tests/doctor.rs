//! `sluice-dataplane doctor` with the real binary: the JSON report has every check with stable
//! keys and this VM passes the checks it is known good for; host faults it checks are reported
//! with their fix and turn the exit status to 1: a memlock limit below the AF_XDP UMEM (with and
//! without CAP_IPC_LOCK), a descriptor limit below the port range, io_uring disabled by sysctl.
//!
//! The limits are lowered in the child only (`setrlimit` and `PR_CAPBSET_DROP` between fork and
//! exec). The io_uring test flips a host-wide sysctl for the length of one doctor run; it runs
//! alone (`.config/nextest.toml`) and a guard restores the old value even on panic.

use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use sluice_tests::{TempDir, bin_dir};

mod cp;

/// Leg ports of the configurations written here: below the ephemeral range, which doctor checks
/// (it opens none of them).
const PORTS: (u16, u16) = (31_990, 31_999);

/// linux/capability.h.
const CAP_IPC_LOCK: libc::c_ulong = 14;

/// Every check, in the report's order.
const CHECKS: [&str; 17] = [
    "kernel",
    "capabilities",
    "io_uring",
    "udp_gso",
    "udp_gro",
    "bpf",
    "interface",
    "xdp_native",
    "af_xdp_zerocopy",
    "rss_queues",
    "worker_cores",
    "rp_filter",
    "socket_buffers",
    "nofile",
    "memlock",
    "ephemeral_ports",
    "clock_source",
];

/// What the child gets changed before it execs.
#[derive(Clone, Copy, Default)]
struct Fault {
    /// RLIMIT_MEMLOCK (soft and hard), bytes.
    memlock: Option<u64>,
    /// RLIMIT_NOFILE (soft and hard).
    nofile: Option<u64>,
    /// Drop CAP_IPC_LOCK from the bounding set, so the exec'd root process lacks it.
    drop_ipc_lock: bool,
}

fn doctor(config: &Path, flags: &[&str], fault: Fault) -> Output {
    let path = bin_dir().join("sluice-dataplane");
    assert!(path.exists(), "{} is not built", path.display());
    let mut cmd = Command::new(&path);
    cmd.arg("doctor").arg("--config").arg(config).args(flags).env("RUST_LOG", "warn");
    // SAFETY: the closure runs between fork and exec and makes only async-signal-safe syscalls
    // (setrlimit, prctl) on stack values.
    unsafe {
        cmd.pre_exec(move || {
            for (resource, value) in [(libc::RLIMIT_MEMLOCK, fault.memlock), (libc::RLIMIT_NOFILE, fault.nofile)] {
                if let Some(v) = value {
                    let lim = libc::rlimit { rlim_cur: v, rlim_max: v };
                    if libc::setrlimit(resource, &raw const lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
            }
            if fault.drop_ipc_lock && libc::prctl(libc::PR_CAPBSET_DROP, CAP_IPC_LOCK, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.output().expect("running sluice-dataplane doctor")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The parsed `--json` report.
fn report(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\n{}", text(&out.stdout), text(&out.stderr)))
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"].as_array().and_then(|cs| cs.iter().find(|c| c["name"] == name)).unwrap_or_else(|| panic!("no check {name} in {report:#}"))
}

fn status(report: &Value, name: &str) -> String {
    check(report, name)["status"].as_str().unwrap_or_default().to_owned()
}

/// The test configuration: two mmsg workers, legs on `range`, the control socket in `dir`.
fn config(dir: &Path, range: (u16, u16)) -> std::path::PathBuf {
    cp::dataplane_config(dir, range, "127.0.0.1").0
}

#[test]
fn the_json_report_has_every_check_and_this_host_passes_what_it_is_known_good_for() {
    let dir = TempDir::new("doctor-json");
    let cfg = config(dir.path(), PORTS);
    let out = doctor(&cfg, &["--json"], Fault::default());
    let r = report(&out);
    let names: Vec<&str> = r["checks"].as_array().expect("checks").iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, CHECKS, "{r:#}");
    for c in r["checks"].as_array().expect("checks") {
        let keys: Vec<&String> = c.as_object().expect("a check is an object").keys().collect();
        assert_eq!(keys.len(), 5, "{c}");
        for key in ["name", "status", "found", "fix", "consequence"] {
            assert!(c.get(key).is_some(), "{key} missing in {c}");
        }
        let st = c["status"].as_str().expect("status");
        assert!(["ok", "warn", "fail", "skipped"].contains(&st), "{c}");
        assert!(!c["found"].as_str().unwrap_or_default().is_empty(), "{c}");
        if matches!(st, "warn" | "fail") {
            assert!(c["fix"].is_string() && c["consequence"].is_string(), "a {st} says what to fix and why: {c}");
        }
    }
    let s = &r["summary"];
    let counted: u64 = ["ok", "warn", "fail", "skipped"].iter().map(|k| s[k].as_u64().unwrap_or(0)).sum();
    assert_eq!(counted, CHECKS.len() as u64);
    assert_eq!(r["target"]["workers"], 2);
    assert_eq!(r["target"]["port_range"], serde_json::json!([PORTS.0, PORTS.1]));
    // What this VM is known good for: kernel 6.18, GSO and GRO on loopback, BPF, limits that fit
    // ten ports, rp_filter off, io_uring enabled.
    for name in ["kernel", "capabilities", "io_uring", "udp_gso", "udp_gro", "bpf", "nofile", "memlock", "rp_filter", "ephemeral_ports"] {
        assert_eq!(status(&r, name), "ok", "{:#}", check(&r, name));
    }
    assert!(check(&r, "udp_gro")["found"].as_str().unwrap_or_default().contains("2400-byte coalesced"), "{r:#}");
    assert_eq!(out.status.code(), Some(if s["fail"] == 0 { 0 } else { 1 }), "{r:#}");

    // The text form: one aligned line per check, status first, then the summary.
    let out = doctor(&cfg, &[], Fault::default());
    let t = text(&out.stdout);
    for name in CHECKS {
        let line = t.lines().find(|l| l.split_whitespace().nth(1) == Some(name)).unwrap_or_else(|| panic!("no line for {name}:\n{t}"));
        assert!(["ok ", "warn ", "FAIL ", "skip "].iter().any(|p| line.starts_with(p)), "{line}");
    }
    assert!(t.lines().any(|l| l.ends_with("skipped") && l.contains(" ok, ")), "{t}");

    // A bad configuration exits 2 with the reason.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[dataplane]\nworkers = 0\n").expect("write");
    let out = doctor(&bad, &["--json"], Fault::default());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("workers"), "{}", text(&out.stderr));
}

/// AF_XDP's UMEM is charged to RLIMIT_MEMLOCK: below it, doctor names the fix; a warning while
/// CAP_IPC_LOCK exempts the process, a failure (exit 1) without it.
#[test]
fn a_memlock_limit_below_the_af_xdp_umem_is_reported_with_its_fix() {
    let dir = TempDir::new("doctor-memlock");
    let cfg = config(dir.path(), PORTS);
    let xsk = ["--json", "--backend", "xsk", "--xdp-mode", "af-xdp", "--xdp-interface", "lo", "--workers", "1"];
    let low = Fault { memlock: Some(64 << 10), ..Fault::default() };

    let out = doctor(&cfg, &xsk, low);
    let r = report(&out);
    let m = check(&r, "memlock");
    assert_eq!(m["status"], "warn", "CAP_IPC_LOCK exempts this process: {m:#}");
    assert!(m["found"].as_str().unwrap_or_default().contains("RLIMIT_MEMLOCK soft 65536"), "{m:#}");
    assert!(m["fix"].as_str().unwrap_or_default().contains("LimitMEMLOCK=infinity"), "{m:#}");
    assert!(m["consequence"].as_str().unwrap_or_default().contains("UMEM"), "{m:#}");

    let out = doctor(&cfg, &xsk, Fault { drop_ipc_lock: true, ..low });
    let r = report(&out);
    let m = check(&r, "memlock");
    assert_eq!(m["status"], "fail", "{m:#}");
    assert!(m["fix"].as_str().unwrap_or_default().contains("ulimit -l unlimited"), "{m:#}");
    assert!(check(&r, "capabilities")["found"].as_str().unwrap_or_default().contains("IPC_LOCK no"), "{r:#}");
    assert_eq!(out.status.code(), Some(1), "a failed check exits 1");

    // And the socket backends need none.
    let out = doctor(&cfg, &["--json"], low);
    assert_eq!(status(&report(&out), "memlock"), "ok");
}

/// One socket per leg port: a descriptor limit below the port range fails with the fix.
#[test]
fn a_descriptor_limit_below_the_port_range_fails() {
    let dir = TempDir::new("doctor-nofile");
    let wide = config(dir.path(), (20_000, 32_767));
    let out = doctor(&wide, &["--json"], Fault { nofile: Some(1024), ..Fault::default() });
    let r = report(&out);
    let n = check(&r, "nofile");
    assert_eq!(n["status"], "fail", "{n:#}");
    assert!(n["found"].as_str().unwrap_or_default().contains("hard 1024"), "{n:#}");
    assert!(n["fix"].as_str().unwrap_or_default().contains("LimitNOFILE=13056"), "{n:#}");
    assert!(n["consequence"].as_str().unwrap_or_default().contains("leg_capacity=736"), "{n:#}");
    assert_eq!(out.status.code(), Some(1));
    // The same limit is enough for ten ports.
    let narrow = config(dir.path(), PORTS);
    let out = doctor(&narrow, &["--json"], Fault { nofile: Some(1024), ..Fault::default() });
    assert_eq!(status(&report(&out), "nofile"), "ok");
}

/// Sets `kernel.io_uring_disabled` and puts the old value back when dropped (also on panic).
struct SysctlGuard {
    path: &'static str,
    old: String,
}

impl SysctlGuard {
    fn set(path: &'static str, value: &str) -> Option<Self> {
        let old = std::fs::read_to_string(path).ok()?;
        std::fs::write(path, value).unwrap_or_else(|e| panic!("writing {path}: {e}"));
        Some(Self { path, old })
    }
}

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(self.path, self.old.trim()) {
            eprintln!("could not restore {} to {}: {e}", self.path, self.old.trim());
        }
    }
}

/// io_uring disabled by sysctl: reported as such, a warning for backend uring (it falls back to
/// mmsg) and found but harmless for mmsg. Flips a host-wide sysctl: runs alone.
#[test]
fn io_uring_disabled_by_sysctl_is_reported() {
    const SYSCTL: &str = "/proc/sys/kernel/io_uring_disabled";
    let dir = TempDir::new("doctor-uring");
    let cfg = config(dir.path(), PORTS);
    let (uring, mmsg) = {
        let Some(_guard) = SysctlGuard::set(SYSCTL, "2") else {
            eprintln!("skipped: {SYSCTL} is absent (kernel before 6.6)");
            return;
        };
        (doctor(&cfg, &["--json", "--backend", "uring"], Fault::default()), doctor(&cfg, &["--json"], Fault::default()))
    };
    let r = report(&uring);
    let u = check(&r, "io_uring");
    assert_eq!(u["status"], "warn", "{u:#}");
    let found = u["found"].as_str().unwrap_or_default();
    assert!(found.contains("disabled") && found.contains("io_uring_disabled=2"), "{u:#}");
    assert!(u["fix"].as_str().unwrap_or_default().contains("sysctl -w kernel.io_uring_disabled=0"), "{u:#}");
    assert!(u["consequence"].as_str().unwrap_or_default().contains("falls back to mmsg"), "{u:#}");
    let r = report(&mmsg);
    let u = check(&r, "io_uring");
    assert_eq!(u["status"], "ok", "not used by mmsg: {u:#}");
    assert!(u["found"].as_str().unwrap_or_default().contains("io_uring_disabled=2"), "{u:#}");
    // Restored: usable again.
    let out = doctor(&cfg, &["--json", "--backend", "uring"], Fault::default());
    assert_eq!(status(&report(&out), "io_uring"), "ok");
}
