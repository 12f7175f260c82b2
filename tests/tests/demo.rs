//! The README's main command, small: `sluice-bench demo` starts the real dataplane and control
//! plane, programs meetings over gRPC and runs participants over UDP. It must exit 0, show
//! packets received and verified by participants with no verification failure, and leave no
//! child process behind.

use std::process::Command;
use std::time::{Duration, Instant};

use sluice_tests::bin_dir;

/// The number after `label` on the first line holding it.
fn number_after(out: &str, label: &str) -> Option<u64> {
    let line = out.lines().find(|l| l.contains(label))?;
    let rest = &line[line.find(label)? + label.len()..];
    rest.split_whitespace().next()?.trim_end_matches(|c: char| !c.is_ascii_digit()).parse().ok()
}

/// The PIDs the demo printed for its children (`sluice-dataplane pid N`).
fn child_pids(out: &str) -> Vec<(String, u32)> {
    ["sluice-dataplane pid ", "sluice-controlplane pid "]
        .iter()
        .filter_map(|label| Some((label.trim_end_matches(" pid ").to_string(), number_after(out, label)? as u32)))
        .collect()
}

/// Whether `pid` is a live process running `name` (a reused PID running something else is not).
fn running(pid: u32, name: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).map(|c| String::from_utf8_lossy(&c).contains(name)).unwrap_or(false)
}

#[test]
fn the_demo_runs_the_whole_system_and_leaves_nothing_behind() {
    let exe = bin_dir().join("sluice-bench");
    assert!(exe.exists(), "{} is not built (run the README's test command, which builds every binary first)", exe.display());
    let started = Instant::now();
    let out = Command::new(&exe)
        .args(["demo", "--seconds", "3", "--meetings", "2", "--size", "3", "--ports", "27000-27099"])
        .output()
        .expect("running sluice-bench demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let all = format!("--- stdout\n{stdout}\n--- stderr\n{stderr}");
    assert!(out.status.success(), "demo exited with {}:\n{all}", out.status);
    assert!(started.elapsed() < Duration::from_secs(60), "the demo took {:?}", started.elapsed());

    let received = number_after(&stdout, "received and verified by participants ").unwrap_or_else(|| panic!("no summary:\n{all}"));
    let failures = number_after(&stdout, "failed to verify ").unwrap_or_else(|| panic!("no summary:\n{all}"));
    let sent = number_after(&stdout, "participants sent ").unwrap_or_else(|| panic!("no summary:\n{all}"));
    assert!(sent > 0, "{all}");
    assert!(received > 0, "nothing received and verified:\n{all}");
    assert_eq!(failures, 0, "{all}");
    // 2 meetings of 3: the per-second lines show the sessions and legs the control plane reports.
    let live_line = |l: &&str| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[0].strip_suffix('s').is_some_and(|t| t.parse::<u32>().is_ok()) && f[f.len() - 2..] == ["2", "6"]
    };
    assert!(stdout.lines().any(|l| live_line(&l)), "no live line with 2 sessions, 6 legs:\n{all}");

    let pids = child_pids(&stdout);
    assert_eq!(pids.len(), 2, "the demo did not print its children's PIDs:\n{all}");
    for (name, pid) in &pids {
        assert!(stdout.contains(&format!("stopped {name} (pid {pid})")), "{name} (pid {pid}) was not reported stopped:\n{all}");
        assert!(!running(*pid, name), "{name} (pid {pid}) is still running after the demo exited");
    }
}
