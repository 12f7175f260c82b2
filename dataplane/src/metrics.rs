//! Prometheus text exposition on a plain HTTP endpoint (`GET /metrics`).
//!
//! Workers publish a [`WorkerSnapshot`] between batches (a few times a second, never per
//! packet); the endpoint renders the latest snapshots. The server is a small blocking thread: it
//! serves a scrape every few seconds, so it needs no async runtime.

use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use sluice_core::stats::CoreStats;
use sluice_core::verdict::DropReason;

use crate::shield::SharedCounts;
use crate::xdp::VerdictCounts;

/// What one worker reports.
#[derive(Clone, Debug, Default)]
pub struct WorkerSnapshot {
    /// The worker's index.
    pub worker: usize,
    /// The core's counters.
    pub core: CoreStats,
    /// The table generation the worker has applied.
    pub generation: u64,
    /// I/O counters, by name (`syscalls`, `gso_sends`, ...).
    pub io: Vec<(&'static str, u64)>,
    /// Receive batches and the datagrams in them (mean batch size = datagrams / batches).
    pub batches: u64,
    /// Datagrams received in those batches.
    pub batched_datagrams: u64,
    /// Processing time per datagram, sampled (ns): (quantile, value) pairs.
    pub latency_ns: Vec<(f64, u64)>,
    /// Samples behind `latency_ns`.
    pub latency_samples: u64,
}

/// The latest snapshot of every worker.
pub type Snapshots = Arc<Mutex<Vec<WorkerSnapshot>>>;

/// Renders the snapshots as Prometheus text.
pub fn render(workers: &[WorkerSnapshot]) -> String {
    let mut s = String::with_capacity(4096);
    let counter = |s: &mut String, name: &str, help: &str, value: &dyn Fn(&WorkerSnapshot) -> u64| {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter");
        for w in workers {
            let _ = writeln!(s, "{name}{{worker=\"{}\"}} {}", w.worker, value(w));
        }
    };
    counter(&mut s, "sluice_rx_packets_total", "Datagrams received by the forwarding core.", &|w| w.core.rx_packets);
    counter(&mut s, "sluice_rx_bytes_total", "Bytes received by the forwarding core.", &|w| w.core.rx_bytes);
    counter(&mut s, "sluice_tx_packets_total", "Packets emitted by the forwarding core.", &|w| w.core.tx_packets);
    counter(&mut s, "sluice_tx_bytes_total", "Bytes emitted by the forwarding core.", &|w| w.core.tx_bytes);
    counter(&mut s, "sluice_nack_answered_total", "NACKed packets answered from the retransmission cache.", &|w| w.core.nack_answered);
    counter(&mut s, "sluice_nack_forwarded_total", "NACKed packets asked of the publisher.", &|w| w.core.nack_forwarded);
    counter(&mut s, "sluice_rtcp_reports_sent_total", "Receiver reports (RR + SDES) sent to publishers.", &|w| w.core.rtcp_reports_sent);
    counter(&mut s, "sluice_twcc_feedback_sent_total", "Transport-cc feedback packets sent to publishers.", &|w| w.core.twcc_feedback_sent);
    counter(&mut s, "sluice_twcc_feedback_used_total", "Transport-cc feedback from subscribers used by their leg's bandwidth estimator.", &|w| {
        w.core.twcc_feedback_used
    });
    counter(
        &mut s,
        "sluice_twcc_feedback_bad_total",
        "Transport-cc feedback from subscribers dropped: it named nothing sent, did not decode, or came on a leg without congestion control.",
        &|w| w.core.twcc_feedback_bad,
    );
    counter(&mut s, "sluice_allocation_changes_total", "Subscription layer caps changed by a leg's bandwidth allocator.", &|w| w.core.allocation_changes);
    counter(&mut s, "sluice_probes_total", "Bandwidth probes started towards subscribers.", &|w| w.core.probes_started);
    counter(&mut s, "sluice_probe_packets_total", "Padding packets sent in bandwidth probes.", &|w| w.core.probe_packets);
    counter(&mut s, "sluice_nack_suppressed_total", "NACKed packets already asked of the publisher in the last 100 ms, not asked again.", &|w| {
        w.core.nack_suppressed
    });
    counter(&mut s, "sluice_keyframe_requests_total", "Keyframe requests sent to publishers.", &|w| w.core.keyframe_requests);
    counter(&mut s, "sluice_layer_switches_total", "Simulcast layer switches.", &|w| w.core.layer_switches);
    counter(&mut s, "sluice_rx_batches_total", "Receive batches.", &|w| w.batches);
    counter(&mut s, "sluice_rx_batched_datagrams_total", "Datagrams in receive batches.", &|w| w.batched_datagrams);
    let _ = writeln!(s, "# HELP sluice_drops_total Packets not forwarded, by reason.\n# TYPE sluice_drops_total counter");
    for w in workers {
        for r in DropReason::ALL {
            let _ = writeln!(s, "sluice_drops_total{{worker=\"{}\",reason=\"{}\"}} {}", w.worker, r.name(), w.core.drops_for(r));
        }
    }
    let _ = writeln!(s, "# HELP sluice_srtp_failures_total SRTP/SRTCP authentication and replay failures.\n# TYPE sluice_srtp_failures_total counter");
    for w in workers {
        let n = w.core.drops_for(DropReason::AuthFailed) + w.core.drops_for(DropReason::Replayed);
        let _ = writeln!(s, "sluice_srtp_failures_total{{worker=\"{}\"}} {n}", w.worker);
    }
    let _ = writeln!(s, "# HELP sluice_table_generation Table generation applied.\n# TYPE sluice_table_generation gauge");
    for w in workers {
        let _ = writeln!(s, "sluice_table_generation{{worker=\"{}\"}} {}", w.worker, w.generation);
    }
    let _ = writeln!(s, "# HELP sluice_io_total I/O backend counters.\n# TYPE sluice_io_total counter");
    for w in workers {
        for (name, v) in &w.io {
            let _ = writeln!(s, "sluice_io_total{{worker=\"{}\",counter=\"{name}\"}} {v}", w.worker);
        }
    }
    let _ = writeln!(
        s,
        "# HELP sluice_processing_latency_ns Time from a datagram's receipt to its outputs being queued (sampled).\n# TYPE sluice_processing_latency_ns summary"
    );
    for w in workers {
        for (q, v) in &w.latency_ns {
            let _ = writeln!(s, "sluice_processing_latency_ns{{worker=\"{}\",quantile=\"{q}\"}} {v}", w.worker);
        }
        let _ = writeln!(s, "sluice_processing_latency_ns_count{{worker=\"{}\"}} {}", w.worker, w.latency_samples);
    }
    s
}

/// Renders the WebRTC slow path's counters as Prometheus text.
pub fn render_edge(edge: &crate::edge::EdgeStatus) -> String {
    let mut s = String::from("# HELP sluice_edge_total WebRTC slow path (ICE-lite, DTLS-SRTP) counters.\n# TYPE sluice_edge_total counter\n");
    for (name, v) in &edge.counters {
        let _ = writeln!(s, "sluice_edge_total{{counter=\"{name}\"}} {v}");
    }
    let _ = writeln!(s, "# HELP sluice_edge_legs WebRTC legs known to the slow path.\n# TYPE sluice_edge_legs gauge\nsluice_edge_legs {}", edge.legs);
    s
}

/// Renders the XDP stage's verdict counters (summed over CPUs) as Prometheus text.
pub fn render_xdp(counts: &VerdictCounts) -> String {
    let mut s = String::with_capacity(1024);
    let _ = writeln!(
        s,
        "# HELP sluice_xdp_packets_total Packets the XDP stage handled, by verdict (drops: malformed, not_rtc, unknown_source, unknown_ssrc, relay_invalid).\n# TYPE sluice_xdp_packets_total counter"
    );
    for (v, n) in counts.iter() {
        let _ = writeln!(s, "sluice_xdp_packets_total{{verdict=\"{}\"}} {n}", v.name());
    }
    s
}

/// Serves `GET /metrics` on `addr` from `snapshots` (and the XDP stage's counters, when it runs,
/// and the WebRTC slow path's, when given) until the process exits. Returns the bound address
/// (useful with port 0) and the thread.
pub fn serve(
    addr: SocketAddr,
    snapshots: Snapshots,
    xdp: Option<SharedCounts>,
    edge: Option<Arc<Mutex<crate::edge::EdgeStatus>>>,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    let handle = std::thread::Builder::new().name("metrics".into()).spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(2)));
            let mut reader = BufReader::new(&stream);
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            // Drain the headers.
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let (status, body) = if request_line.starts_with("GET /metrics") {
                let mut text = render(&snapshots.lock().map(|g| g.clone()).unwrap_or_default());
                if let Some(counts) = xdp.as_ref().and_then(|x| *x.lock().unwrap_or_else(PoisonError::into_inner)) {
                    text.push_str(&render_xdp(&counts));
                }
                if let Some(e) = edge.as_ref().and_then(|e| e.lock().ok().map(|g| g.clone())) {
                    text.push_str(&render_edge(&e));
                }
                ("200 OK", text)
            } else {
                ("404 Not Found", "try /metrics\n".to_string())
            };
            let mut w = &stream;
            let _ =
                write!(w, "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        }
    })?;
    Ok((bound, handle))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    #[test]
    fn scrape_over_http() {
        let mut w = WorkerSnapshot { worker: 1, generation: 7, ..Default::default() };
        w.core.rx_packets = 42;
        w.core.drop(DropReason::AuthFailed);
        w.io = vec![("gso_sends", 3)];
        w.latency_ns = vec![(0.99, 1234)];
        let snaps: Snapshots = Arc::new(Mutex::new(vec![w]));
        let mut counts = VerdictCounts::default();
        counts.0[sluice_common::XdpVerdict::DropUnknownSource as usize] = 5;
        let xdp: SharedCounts = Arc::new(Mutex::new(Some(counts)));
        let edge = crate::edge::EdgeStatus { legs: 2, counters: vec![("stun_answered".into(), 3)], ..Default::default() };
        let (addr, _t) = serve(SocketAddr::from(([127, 0, 0, 1], 0)), snaps, Some(xdp), Some(Arc::new(Mutex::new(edge)))).unwrap();
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut body = String::new();
        c.read_to_string(&mut body).unwrap();
        assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
        for want in [
            "sluice_rx_packets_total{worker=\"1\"} 42",
            "sluice_edge_total{counter=\"stun_answered\"} 3",
            "sluice_edge_legs 2",
            "sluice_drops_total{worker=\"1\",reason=\"auth_failed\"} 1",
            "sluice_srtp_failures_total{worker=\"1\"} 1",
            "sluice_table_generation{worker=\"1\"} 7",
            "sluice_io_total{worker=\"1\",counter=\"gso_sends\"} 3",
            "sluice_processing_latency_ns{worker=\"1\",quantile=\"0.99\"} 1234",
            "sluice_xdp_packets_total{verdict=\"unknown_source\"} 5",
            "sluice_xdp_packets_total{verdict=\"pass_media\"} 0",
        ] {
            assert!(body.contains(want), "missing {want} in\n{body}");
        }
    }
}
