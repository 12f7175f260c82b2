//! The Grafana dashboard (packaging/grafana/sluice.json) against real scrapes: every query names
//! a metric one of the daemons exports, and both daemons' /metrics pass `promtool check metrics`
//! (Prometheus's own parser and linter). The dataplane runs with the XDP shield on a veth in a
//! network namespace this test creates (its `sluice_xdp_*` series exist only then) and its TURN
//! server on (`sluice_turn_*`); the control
//! plane programs it a meeting with `sluicectl apply` (the packaged example), per-session series
//! on.

mod cp;

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use sluice_bench::netns::{NetNs, PinGuard, Veth};
use sluice_dataplane::xdp::PIN_ROOT;
use sluice_tests::{Daemon, TempDir};

const DP_METRICS: &str = "127.0.0.1:9311";

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Every `expr` (and templating query) in the dashboard, wherever it sits.
fn queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => queries(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

/// The metric names a query refers to (`sluice_…` identifiers).
fn metric_names(q: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = q.as_bytes();
    let mut i = 0;
    while let Some(at) = q[i..].find("sluice_") {
        let start = i + at;
        let before = start.checked_sub(1).map(|b| bytes[b]);
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if !before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_') {
            names.push(q[start..end].to_owned());
        }
        i = end;
    }
    names
}

/// The series names a scrape exports: every family (`# TYPE`), with the suffixes a histogram or a
/// summary adds.
fn exported(scrape: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for l in scrape.lines() {
        let mut parts = l.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) = (parts.next(), parts.next(), parts.next(), parts.next()) {
            names.insert(name.to_owned());
            match kind {
                "histogram" => names.extend(["_bucket", "_sum", "_count"].map(|s| format!("{name}{s}"))),
                "summary" => names.extend(["_sum", "_count"].map(|s| format!("{name}{s}"))),
                _ => {}
            }
        }
    }
    names
}

fn promtool_check(what: &str, scrape: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (scripts/setup.sh installs it)");
    child.stdin.take().expect("stdin").write_all(scrape.as_bytes()).expect("write");
    let out = child.wait_with_output().expect("promtool");
    assert!(out.status.success(), "promtool check metrics on {what}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn every_dashboard_query_names_an_exported_metric_and_both_scrapes_pass_promtool() {
    let text = std::fs::read_to_string(repo().join("packaging/grafana/sluice.json")).expect("dashboard");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert_eq!(dash["uid"], "sluice-overview");
    let panels = dash["panels"].as_array().expect("panels");
    let graphs: Vec<_> = panels.iter().filter(|p| p["type"] != "row").collect();
    assert!(graphs.len() >= 16, "{} panels", graphs.len());
    for p in &graphs {
        assert!(p["targets"].as_array().is_some_and(|t| !t.is_empty()), "panel {} has no query", p["title"]);
        assert_eq!(p["datasource"]["uid"], "${datasource}", "panel {} is bound to one data source", p["title"]);
    }
    let mut qs = Vec::new();
    queries(&dash, &mut qs);

    // The daemons: the dataplane with the XDP shield in its own namespace, the control plane
    // beside it with /metrics and per-session series.
    let tag = format!("db{}", std::process::id() % 10_000);
    let peers = NetNs::new(&format!("{tag}p"));
    let dpns = NetNs::new(&format!("{tag}d"));
    let veth = Veth::new(&tag, &peers, &["10.56.0.2/24"], &dpns, &["10.56.0.1/24"]);
    let dir = TempDir::new("dashboard");
    let instance = format!("sx5db{}", std::process::id());
    let _pins = PinGuard(Path::new(PIN_ROOT).join(&instance));
    let sock = dir.path().join("dp.sock");
    let cfg = dir.path().join("dp.toml");
    std::fs::write(
        &cfg,
        format!(
            "[dataplane]\nlisten_ip = \"10.56.0.1\"\nworkers = 1\ncontrol_socket = \"{}\"\nmetrics = \"{DP_METRICS}\"\nport_range = [34700, 34799]\n[dataplane.xdp]\nmode = \"shield\"\ninterface = \"{}\"\ninstance = \"{instance}\"\n[dataplane.turn]\nlisten = \"10.56.0.1:3478\"\nsecret = \"the-dashboard-turn-secret\"\nrelay_ports = [45100, 45199]\n",
            sock.display(),
            veth.b
        ),
    )
    .expect("write");
    let mut dp = Daemon::start_in_netns(&dpns.name, "sluice-dataplane", &["--config", cfg.to_str().expect("utf-8")], &dir.path().join("dp.log"));
    assert!(dp.wait_for_path(&sock, Duration::from_secs(15)), "{}", dp.log_text());
    let cp_metrics = format!("127.0.0.1:{}", sluice_tests::free_tcp_port());
    let (_cp, grpc) = cp::start_controlplane_cfg(
        dir.path(),
        &sock,
        1,
        (34700, 34799),
        &format!("plaintext = true\nmetrics_listen = \"{cp_metrics}\"\nmetrics_sessions = 4\n"),
    );
    let grpc = grpc.to_string();
    cp::wait_until("the control plane connected", Duration::from_secs(10), || {
        cp::sluicectl(&["--addr", &grpc, "--json", "status"]).1.contains("\"dataplane_connected\": true")
    });
    let example = repo().join("packaging/examples/meeting.json");
    let (ok, out, err) = cp::sluicectl(&["--addr", &grpc, "apply", example.to_str().expect("utf-8")]);
    assert!(ok, "sluicectl apply of the packaged example: {out}{err}");
    assert!(out.contains("\"session\":\"demo-meeting\""), "{out}");
    // A refused one too, so an error code is counted.
    let (ok, _, err) = cp::sluicectl(&["--addr", &grpc, "apply", "/dev/null"]);
    assert!(!ok && err.contains("sluice.v1.ChangeSet"), "{err}");

    std::thread::sleep(Duration::from_millis(600));
    let dp_scrape = dpns.http_get(DP_METRICS, "/metrics");
    let dp_scrape = dp_scrape.split_once("\r\n\r\n").map_or(dp_scrape.as_str(), |(_, body)| body).to_owned();
    let cp_scrape = {
        let mut s = std::net::TcpStream::connect(&cp_metrics).expect("control plane /metrics");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
        let mut body = String::new();
        std::io::Read::read_to_string(&mut s, &mut body).expect("read");
        let (head, body) = body.split_once("\r\n\r\n").expect("an HTTP answer");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        body.to_owned()
    };
    promtool_check("the dataplane's /metrics", &dp_scrape);
    promtool_check("the control plane's /metrics", &cp_scrape);
    assert!(cp_scrape.contains("sluice_cp_sessions 1\n"), "{cp_scrape}");
    assert!(cp_scrape.contains("sluice_cp_session_legs{session=\"demo-meeting\"} 2\n"), "{cp_scrape}");
    assert!(cp_scrape.contains("sluice_cp_grpc_requests_total{method=\"/sluice.v1.Routes/Apply\",code=\"OK\"} 1\n"), "{cp_scrape}");

    let mut have = exported(&dp_scrape);
    have.extend(exported(&cp_scrape));
    assert!(have.contains("sluice_xdp_packets_total"), "the shield's series are in the scrape");
    let mut used = BTreeSet::new();
    for q in &qs {
        for name in metric_names(q) {
            assert!(have.contains(&name), "the dashboard queries {name}, which neither daemon exports (query: {q})");
            used.insert(name);
        }
    }
    assert!(used.len() >= 25, "{used:?}");
    println!("{} queries over {} metrics, all exported; promtool passes both scrapes", qs.len(), used.len());
    dp.signal(libc::SIGTERM);
    let _ = dp.wait_exit(Duration::from_secs(10));
}
