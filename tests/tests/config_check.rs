//! Both daemons' `--check-config` (exit 0 with a summary, or the reason; nothing started),
//! `--log-format json` (every log line one JSON object), and the man pages of the three
//! binaries (`--man`), with the real binaries.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use sluice_tests::{Daemon, TempDir, bin_dir};

mod cp;

/// Leg ports of the daemons started here: no other test uses these.
const PORTS: (u16, u16) = (34_400, 34_409);

fn run(bin: &str, args: &[&str]) -> Output {
    let path = bin_dir().join(bin);
    assert!(path.exists(), "{} is not built", path.display());
    Command::new(&path).args(args).env("RUST_LOG", "info").output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The test dataplane's file (see [`cp::dataplane_config`]) with `extra` keys after it.
fn dataplane_toml(dir: &Path, extra: &str) -> std::path::PathBuf {
    let (cfg, _) = cp::dataplane_config(dir, PORTS, "127.0.0.1");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(extra);
    std::fs::write(&cfg, text).unwrap();
    cfg
}

fn controlplane_toml(dir: &Path, extra: &str) -> std::path::PathBuf {
    let cfg = dir.join("controlplane.toml");
    std::fs::write(
        &cfg,
        format!(
            "[controlplane]\ngrpc_listen = \"127.0.0.1:0\"\nplaintext = true\ndataplane_socket = \"{}\"\nstate_dir = \"{}\"\n{extra}",
            dir.join("dp.sock").display(),
            dir.join("state").display()
        ),
    )
    .unwrap();
    cfg
}

#[test]
fn check_config_says_ok_or_the_reason_and_starts_nothing() {
    let dir = TempDir::new("check-config");
    // The dataplane: a good file is OK, with a summary, and no socket appears.
    let good = dataplane_toml(dir.path(), "");
    let out = run("sluice-dataplane", &["--config", good.to_str().unwrap(), "--check-config", "--metrics", "off"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("configuration OK: 2 worker(s)"), "{}", text(&out.stdout));
    assert!(!dir.path().join("dp.sock").exists(), "a check starts nothing");
    // Refused with the reason: a value out of range (also through a flag), an unknown key.
    for (extra, flags, named) in [("", vec!["--workers", "0"], "workers"), ("gso_segments = 3\n", vec![], "gso_segments")] {
        let bad = dataplane_toml(dir.path(), extra);
        let mut args = vec!["--config", bad.to_str().unwrap(), "--check-config"];
        args.extend(flags);
        let out = run("sluice-dataplane", &args);
        assert!(!out.status.success(), "{extra}{args:?} passed the check");
        assert!(text(&out.stderr).contains(named), "the reason names {named}: {}", text(&out.stderr));
    }
    // The control plane: OK, and no state directory made; a reversed port range is refused.
    let good = controlplane_toml(dir.path(), "port_range = [34400, 34409]\n");
    let out = run("sluice-controlplane", &["--config", good.to_str().unwrap(), "--check-config"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("configuration OK: gRPC on 127.0.0.1:0 (plaintext)"), "{}", text(&out.stdout));
    assert!(!dir.path().join("state").exists(), "a check opens no state");
    for (extra, named) in [("port_range = [34409, 34400]\n", "port_range"), ("redis_url = \"redis://127.0.0.1:1/\"\n", "node_id")] {
        let bad = controlplane_toml(dir.path(), extra);
        let out = run("sluice-controlplane", &["--config", bad.to_str().unwrap(), "--check-config"]);
        assert!(!out.status.success(), "{extra} passed the check");
        assert!(text(&out.stderr).contains(named), "the reason names {named}: {}", text(&out.stderr));
    }
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = TempDir::new("json-logs");
    let cfg = dataplane_toml(dir.path(), "");
    let log = dir.path().join("dataplane.log");
    let path = bin_dir().join("sluice-dataplane");
    let mut dp = Daemon::start_path(&path, &["--config", cfg.to_str().unwrap(), "--metrics", "off", "--log-format", "json"], &log);
    assert!(dp.wait_for_path(&dir.path().join("dp.sock"), Duration::from_secs(10)), "{}", dp.log_text());
    dp.signal(libc::SIGTERM);
    assert!(dp.wait_exit(Duration::from_secs(10)).is_some_and(|s| s.success()), "{}", dp.log_text());
    let lines: Vec<String> = dp.log_text().lines().map(str::to_owned).collect();
    assert!(lines.len() >= 3, "{lines:?}");
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["timestamp"].is_string() && v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
    assert!(lines.iter().any(|l| l.contains("stopped cleanly")), "{lines:?}");
}

/// `--man` writes each binary's man page (section 8 for the daemons, 1 for `sluicectl`),
/// generated from the same definitions as `--help`: every long option `--help` lists is in it.
#[test]
fn man_pages_come_from_the_cli_definitions() {
    for (bin, section) in [("sluice-dataplane", "8"), ("sluice-controlplane", "8"), ("sluicectl", "1")] {
        let man = run(bin, &["--man"]);
        assert!(man.status.success(), "{bin}: {}", text(&man.stderr));
        let page = text(&man.stdout);
        assert!(page.contains(&format!(".TH {bin} {section}")), "{bin}: {}", &page[..page.len().min(300)]);
        let help = text(&run(bin, &["--help"]).stdout);
        let flags: Vec<&str> = help.split_whitespace().filter(|w| w.starts_with("--")).map(|w| w.trim_end_matches([',', '.'])).collect();
        assert!(flags.len() >= 5, "{bin}: {help}");
        for f in flags {
            let name = f.split(['=', '<', '[']).next().unwrap_or(f);
            assert!(page.contains(&name.replace('-', "\\-")), "{bin}: {name} is in --help but not in the man page");
        }
    }
}
