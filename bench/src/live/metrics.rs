//! The dataplane's numbers as the demo reads them: counters from its `/metrics` page, CPU time
//! from /proc.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Sums a Prometheus counter over all its label sets (`name` may name one: `name{labels}`).
pub(crate) fn metric(body: &str, name: &str) -> f64 {
    body.lines().filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' '])).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

/// A Prometheus counter per worker: `name{worker="N"...}` → value, summed over its other labels.
pub(crate) fn per_worker(body: &str, name: &str) -> std::collections::BTreeMap<String, f64> {
    let mut m = std::collections::BTreeMap::new();
    for l in body.lines().filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{')) {
        let worker = l.split("worker=\"").nth(1).and_then(|w| w.split('"').next());
        if let (Some(w), Some(v)) = (worker, l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok())) {
            *m.entry(w.to_string()).or_insert(0.0) += v;
        }
    }
    m
}

/// The dataplane's counters: packets in, packets out, bytes out, SRTP failures at the SFU.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counters {
    pub(crate) rx: f64,
    pub(crate) tx: f64,
    pub(crate) tx_bytes: f64,
    pub(crate) srtp_failures: f64,
}

/// The dataplane's `/metrics` page.
pub(crate) fn metrics_body(addr: SocketAddr) -> Option<String> {
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    c.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n").ok()?;
    let mut body = String::new();
    c.read_to_string(&mut body).ok()?;
    Some(body)
}

pub(crate) fn scrape(addr: SocketAddr) -> Option<Counters> {
    let body = metrics_body(addr)?;
    Some(Counters {
        rx: metric(&body, "sluice_rx_packets_total"),
        tx: metric(&body, "sluice_tx_packets_total"),
        tx_bytes: metric(&body, "sluice_tx_bytes_total"),
        srtp_failures: metric(&body, "sluice_srtp_failures_total"),
    })
}

/// CPU seconds (user + system) `pid` has used, from /proc/<pid>/stat.
pub(super) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after its closing parenthesis start
    // at field 3 (state), so utime and stime (fields 14 and 15) are the 12th and 13th of them.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf(3) has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks / if hz > 0 { hz as f64 } else { 100.0 })
}
