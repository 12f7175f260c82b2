//! The packaged systemd units (packaging/systemd/) under a real systemd: the host's
//! `/lib/systemd/systemd` booted as PID 1 of its own PID and mount namespace
//! (`scripts/systemd-ns.sh`; this machine's PID 1 is not systemd). The units are the packaged
//! files with one drop-in each: `DefaultDependencies=no` (the namespace boots no sysinit.target),
//! `ExecStart=` pointing at this build's binaries and this test's configs, the resource limits
//! lowered to this machine's hard limits (raising them needs CAP_SYS_RESOURCE, which this
//! machine's root lacks) and, for the watchdog phase, a shorter `WatchdogSec`. User, group,
//! capabilities, `Type=notify`, the watchdog and the sandboxing are the packaged ones.
//!
//! Needs root (it creates the `sluice` system user with the package's sysusers entry, as the
//! package does, and boots systemd in new namespaces).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sluice_tests::{TempDir, bin_dir};

const METRICS: &str = "127.0.0.1:34641";
const GRPC: &str = "127.0.0.1:34642";
const CP_METRICS: &str = "127.0.0.1:34643";
const PORTS: (u16, u16) = (34650, 34699);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_path_buf()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(out.status.success(), "{cmd:?}: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// systemd in its namespace, stopped on drop.
struct Systemd {
    pid: String,
}

impl Systemd {
    fn boot(units: &Path) -> Self {
        let pid = run(Command::new(repo().join("scripts/systemd-ns.sh")).arg("boot").arg(units)).trim().to_owned();
        let s = Self { pid };
        s.ctl(&["start", "systemd-journald.service"]);
        s
    }

    fn cmd(&self, verb: &str, args: &[&str]) -> Command {
        let mut c = Command::new(repo().join("scripts/systemd-ns.sh"));
        c.arg(verb).arg(&self.pid).args(args);
        c
    }

    fn ctl(&self, args: &[&str]) -> String {
        run(&mut self.cmd("ctl", args))
    }

    fn inside(&self, args: &[&str]) -> String {
        run(&mut self.cmd("run", args))
    }

    fn prop(&self, unit: &str, p: &str) -> String {
        self.ctl(&["show", "-p", p, "--value", unit]).trim().to_owned()
    }

    fn journal(&self, unit: &str) -> String {
        self.inside(&["journalctl", "-u", unit, "--no-pager", "-o", "cat"])
    }

    /// A line of the unit's main process's /proc status, read inside the namespace (MainPID is
    /// the namespace's).
    fn status_line(&self, unit: &str, key: &str) -> String {
        let pid = self.prop(unit, "MainPID");
        let status = self.inside(&["cat", &format!("/proc/{pid}/status")]);
        status.lines().find(|l| l.starts_with(key)).unwrap_or_default().split_whitespace().nth(1).unwrap_or_default().to_owned()
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        let _ = self.cmd("stop", &[]).output();
    }
}

fn hard_limit(resource: libc::__rlimit_resource_t) -> u64 {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct it is given.
    assert_eq!(unsafe { libc::getrlimit(resource, &raw mut r) }, 0);
    r.rlim_max
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_units_start_ready_unprivileged_and_the_watchdog_restarts_a_stalled_worker() {
    // The package's user (sysusers: idempotent).
    let sysusers = std::fs::File::open(repo().join("packaging/systemd/sluice.sysusers")).expect("sysusers entry");
    run(Command::new("systemd-sysusers").arg("-").stdin(sysusers));
    // Binaries and configs where the units' sandbox lets them read (not under /tmp: PrivateTmp;
    // not under /root or /home: ProtectHome; a checkout may be in either), state under
    // /var/lib/sluice (ReadWritePaths).
    let conf = PathBuf::from(format!("/var/lib/sluice-systemd-test-{}", std::process::id()));
    std::fs::create_dir_all(&conf).expect("config dir");
    for bin in ["sluice-dataplane", "sluice-controlplane"] {
        std::fs::copy(bin_dir().join(bin), conf.join(bin)).expect("copy the binary");
    }
    let state = PathBuf::from(format!("/var/lib/sluice/systemd-test-{}", std::process::id()));
    std::fs::create_dir_all(&state).expect("state dir");
    run(Command::new("chown").arg("-R").arg("sluice:sluice").arg("/var/lib/sluice"));
    struct Cleanup(Vec<PathBuf>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for p in &self.0 {
                let _ = std::fs::remove_dir_all(p);
            }
        }
    }
    let _cleanup = Cleanup(vec![conf.clone(), state.clone()]);
    let dp_conf = conf.join("dataplane.toml");
    std::fs::write(
        &dp_conf,
        format!(
            "[dataplane]\nlisten_ip = \"127.0.0.1\"\nworkers = 1\ncontrol_socket = \"/run/sluice/dataplane.sock\"\nmetrics = \"{METRICS}\"\nport_range = [{}, {}]\n",
            PORTS.0, PORTS.1
        ),
    )
    .expect("write");
    let cp_conf = conf.join("controlplane.toml");
    std::fs::write(
        &cp_conf,
        format!(
            "[controlplane]\ngrpc_listen = \"{GRPC}\"\nplaintext = true\ndataplane_socket = \"/run/sluice/dataplane.sock\"\nstate_dir = \"{}\"\nport_range = [{}, {}]\nmetrics_listen = \"{CP_METRICS}\"\n",
            state.display(),
            PORTS.0,
            PORTS.1
        ),
    )
    .expect("write");

    let units = TempDir::new("systemd-units");
    let nofile = hard_limit(libc::RLIMIT_NOFILE).min(1_048_576);
    let memlock = hard_limit(libc::RLIMIT_MEMLOCK);
    let limits = format!("LimitNOFILE={nofile}\nLimitMEMLOCK={}\n", if memlock == libc::RLIM_INFINITY { "infinity".to_owned() } else { memlock.to_string() });
    for (unit, bin, cfg) in [("sluice-dataplane", "sluice-dataplane", &dp_conf), ("sluice-controlplane", "sluice-controlplane", &cp_conf)] {
        let d = units.path().join(format!("{unit}.service.d"));
        std::fs::create_dir_all(&d).expect("drop-in dir");
        std::fs::write(
            d.join("10-test.conf"),
            format!("[Unit]\nDefaultDependencies=no\n[Service]\nExecStart=\nExecStart={} --config {}\n{limits}", conf.join(bin).display(), cfg.display()),
        )
        .expect("write");
        std::fs::copy(repo().join(format!("packaging/systemd/{unit}.service")), units.path().join(format!("{unit}.service"))).expect("copy unit");
    }

    let sd = Systemd::boot(units.path());
    sd.inside(&["systemd-tmpfiles", "--create", repo().join("packaging/systemd/sluice.tmpfiles").to_str().expect("utf-8")]);
    // `start` returns once the unit is ready (Type=notify): the dataplane's workers run and its
    // control endpoint listens; the control plane's gRPC listens.
    sd.ctl(&["start", "sluice-dataplane.service", "sluice-controlplane.service"]);
    let sluice_uid = run(Command::new("id").args(["-u", "sluice"])).trim().to_owned();
    for unit in ["sluice-dataplane.service", "sluice-controlplane.service"] {
        assert_eq!(sd.prop(unit, "ActiveState"), "active", "{unit}\n{}", sd.journal(unit));
        assert_eq!(sd.status_line(unit, "Uid:"), sluice_uid, "{unit} runs as the sluice user");
    }
    assert!(sd.prop("sluice-dataplane.service", "StatusText").starts_with("forwarding: 1 worker(s)"));
    assert!(sd.prop("sluice-controlplane.service", "StatusText").starts_with(&format!("gRPC on {GRPC}")));
    // The dataplane keeps exactly NET_ADMIN (12), NET_RAW (13), IPC_LOCK (14), PERFMON (38) and
    // BPF (39); the control plane none.
    assert_eq!(sd.status_line("sluice-dataplane.service", "CapEff:"), "000000c000007000");
    assert_eq!(sd.status_line("sluice-dataplane.service", "CapBnd:"), "000000c000007000");
    assert_eq!(sd.status_line("sluice-controlplane.service", "CapEff:"), "0000000000000000");
    // Both are connected: the control plane answers for the dataplane.
    wait_for("the control plane connected to the dataplane", Duration::from_secs(10), || {
        let out = Command::new(bin_dir().join("sluicectl")).args(["--addr", GRPC, "--json", "status"]).output().expect("sluicectl");
        String::from_utf8_lossy(&out.stdout).contains("\"dataplane_connected\": true")
    });
    // The watchdog's keep-alives arrive (WatchdogSec=10s: one every 5 s).
    let first = sd.prop("sluice-dataplane.service", "WatchdogTimestampMonotonic");
    wait_for("a second watchdog keep-alive", Duration::from_secs(8), || sd.prop("sluice-dataplane.service", "WatchdogTimestampMonotonic") != first);

    // A worker stalls 2 s after the start: its liveness check fails 2 s later, the keep-alives
    // stop, and systemd kills and restarts the unit WatchdogSec (3 s) after the last one.
    let d = units.path().join("sluice-dataplane.service.d");
    std::fs::write(d.join("20-stall.conf"), "[Service]\nEnvironment=SLUICE_FAULT_STALL_WORKER=0:2000\nWatchdogSec=3s\n").expect("write");
    sd.inside(&["cp", "-r", &format!("{}/.", units.path().display()), "/run/systemd/system/"]);
    sd.ctl(&["daemon-reload"]);
    sd.ctl(&["restart", "sluice-dataplane.service"]);
    let restarted_at = Instant::now();
    wait_for("the watchdog restart", Duration::from_secs(20), || sd.prop("sluice-dataplane.service", "NRestarts") != "0");
    let took = restarted_at.elapsed();
    let journal = sd.journal("sluice-dataplane.service");
    assert!(journal.contains("liveness check failed"), "{journal}");
    assert!(journal.contains("worker 0 stalled for"), "{journal}");
    let log = sd.inside(&["journalctl", "--no-pager", "-o", "cat"]);
    assert!(log.contains("Watchdog timeout"), "systemd's own account of the kill:\n{log}");
    // 2 s to the stall, 2 s to the failed check, at most 3 s after the last keep-alive.
    assert!(took >= Duration::from_secs(4), "restarted after {took:?}: before the stall could be noticed");
    println!("stalled worker: restarted by the watchdog {took:?} after the start");

    // Without the fault the unit comes back ready and stops cleanly.
    std::fs::remove_file(d.join("20-stall.conf")).expect("remove");
    sd.inside(&["rm", "/run/systemd/system/sluice-dataplane.service.d/20-stall.conf"]);
    sd.ctl(&["daemon-reload"]);
    sd.ctl(&["restart", "sluice-dataplane.service"]);
    assert_eq!(sd.prop("sluice-dataplane.service", "ActiveState"), "active");
    sd.ctl(&["stop", "sluice-controlplane.service", "sluice-dataplane.service"]);
    for unit in ["sluice-dataplane.service", "sluice-controlplane.service"] {
        assert_eq!(sd.prop(unit, "Result"), "success", "{unit}\n{}", sd.journal(unit));
    }
    assert!(sd.journal("sluice-dataplane.service").contains("stopped cleanly"));
}
