//! Prometheus text exposition on a plain HTTP endpoint (`GET /metrics`).
//!
//! Workers publish a [`WorkerSnapshot`] between batches (a few times a second, never per
//! packet); the endpoint renders the latest snapshots. The server is a small blocking accept
//! thread and a bounded thread per connection (see [`serve`] for the limits a scraper gets): it
//! serves a scrape every few seconds, so it needs no async runtime.

use std::fmt::Write as _;
use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sluice_core::stats::CoreStats;
use sluice_core::verdict::DropReason;

use crate::listener::Listening;
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
    counter(&mut s, "sluice_packets_paced_total", "Packets to congestion-controlled legs that waited in the pacer (bursts over the pace rate).", &|w| {
        w.core.packets_paced
    });
    counter(&mut s, "sluice_pace_overflow_total", "Packets sent unpaced: the leg's pace queue or the worker's pool was full.", &|w| w.core.pace_overflow);
    counter(&mut s, "sluice_nack_stale_total", "NACKed packets not answered: of a layer the subscription switched down from, or older than it maps.", &|w| {
        w.core.nack_stale
    });
    counter(&mut s, "sluice_nack_suppressed_total", "NACKed packets already asked of the publisher in the last 100 ms, not asked again.", &|w| {
        w.core.nack_suppressed
    });
    counter(&mut s, "sluice_keyframe_requests_total", "Keyframe requests sent to publishers.", &|w| w.core.keyframe_requests);
    counter(&mut s, "sluice_layer_switches_total", "Simulcast layer switches.", &|w| w.core.layer_switches);
    counter(
        &mut s,
        "sluice_frames_dropped_by_layer_total",
        "Frames not forwarded to a subscription because they are above its spatial or temporal layer (per subscription).",
        &|w| w.core.frames_dropped_by_layer,
    );
    counter(
        &mut s,
        "sluice_bad_descriptors_total",
        "Video packets whose payload or dependency descriptor could not be read or contradicted the stream, skipped for subscriptions that do not take every layer.",
        &|w| w.core.bad_descriptors,
    );
    counter(&mut s, "sluice_audio_slot_switches_total", "Audio slots that changed speaker (top-N audio).", &|w| w.core.audio_slot_switches);
    counter(&mut s, "sluice_handoffs_out_total", "Packets handed to another worker (once per packet per worker that serves subscribers of its track).", &|w| {
        w.core.handoffs_out
    });
    counter(&mut s, "sluice_handoffs_in_total", "Packets another worker handed over.", &|w| w.core.handoffs_in);
    counter(&mut s, "sluice_handoffs_dropped_total", "Hand-overs dropped: the worker's queue for them was full.", &|w| w.core.handoffs_dropped);
    counter(
        &mut s,
        "sluice_handoff_buffers_total",
        "Hand-over buffers allocated (stays flat once the queues have filled: buffers return to their pool).",
        &|w| w.core.handoff_buffers,
    );
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
        "# HELP sluice_processing_seconds Time from a datagram's receipt to its outputs being queued (sampled).\n# TYPE sluice_processing_seconds summary"
    );
    for w in workers {
        for (q, v) in &w.latency_ns {
            let _ = writeln!(s, "sluice_processing_seconds{{worker=\"{}\",quantile=\"{q}\"}} {}", w.worker, *v as f64 / 1e9);
        }
        let _ = writeln!(s, "sluice_processing_seconds_count{{worker=\"{}\"}} {}", w.worker, w.latency_samples);
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
    let (packets, bytes) = counts.1;
    let _ = writeln!(
        s,
        "# HELP sluice_xdp_turn_unwrapped_packets_total TURN ChannelData datagrams the XDP stage unwrapped for a leg (the TURN server never saw them).\n# TYPE sluice_xdp_turn_unwrapped_packets_total counter\nsluice_xdp_turn_unwrapped_packets_total {packets}"
    );
    let _ = writeln!(
        s,
        "# HELP sluice_xdp_turn_unwrapped_bytes_total Payload bytes of the ChannelData the XDP stage unwrapped.\n# TYPE sluice_xdp_turn_unwrapped_bytes_total counter\nsluice_xdp_turn_unwrapped_bytes_total {bytes}"
    );
    s
}

/// The most bytes of request line and headers read from a scraper; more is refused with 431.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// How long a scraper has to send its whole request, and each write of the answer may take.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections served at once; more are answered 503 at once and closed.
pub const MAX_CONNECTIONS: usize = 16;

/// Where the endpoint reads what it renders.
struct Sources {
    snapshots: Snapshots,
    xdp: Option<SharedCounts>,
    edge: Option<Arc<Mutex<crate::edge::EdgeStatus>>>,
    turn: Option<Arc<crate::turn::TurnCounts>>,
    ice_tcp: Option<Arc<crate::icetcp::IceTcpCounts>>,
}

impl Sources {
    fn render(&self) -> String {
        let workers = self.snapshots.lock().map(|g| g.clone()).unwrap_or_default();
        let mut text = render(&workers);
        if let Some(counts) = self.xdp.as_ref().and_then(|x| *x.lock().unwrap_or_else(PoisonError::into_inner)) {
            text.push_str(&render_xdp(&counts));
        }
        if let Some(e) = self.edge.as_ref().and_then(|e| e.lock().ok().map(|g| g.clone())) {
            text.push_str(&render_edge(&e));
        }
        if let Some(t) = &self.turn {
            // What the workers send to TURN clients themselves is counted by them.
            let io = |name: &str| workers.iter().flat_map(|w| w.io.iter()).filter(|(n, _)| *n == name).map(|(_, v)| *v).sum::<u64>();
            let from_workers = crate::turn::FromWorkers {
                to_client_udp: io("turn_to_client_udp"),
                to_client_udp_bytes: io("turn_to_client_udp_bytes"),
                queue_full: io("turn_queue_full"),
            };
            text.push_str(&t.render(from_workers));
        }
        if let Some(i) = &self.ice_tcp {
            text.push_str(&i.render());
        }
        text
    }
}

/// Counts a connection as served until dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves `GET /metrics` on `addr` from `snapshots` (and the XDP stage's counters, when it runs,
/// and the WebRTC slow path's, when given) until the process exits or the endpoint is stopped.
/// Returns the bound address (useful with port 0) and the accepting thread.
///
/// Scrapers are untrusted: each connection gets its own thread (at most [`MAX_CONNECTIONS`]),
/// a fixed [`MAX_REQUEST_BYTES`] buffer (a longer request is answered 431) and [`IO_TIMEOUT`]
/// for its whole request (408 after it, however slowly the bytes trickle in) and for each write,
/// so a slow or hostile client costs one bounded thread and never delays another scrape. None of
/// these threads is a worker: the packet path only publishes snapshots.
pub fn serve(
    addr: SocketAddr,
    snapshots: Snapshots,
    xdp: Option<SharedCounts>,
    edge: Option<Arc<Mutex<crate::edge::EdgeStatus>>>,
    turn: Option<Arc<crate::turn::TurnCounts>>,
    ice_tcp: Option<Arc<crate::icetcp::IceTcpCounts>>,
) -> std::io::Result<(SocketAddr, Listening)> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    let sources = Arc::new(Sources { snapshots, xdp, edge, turn, ice_tcp });
    let active = Arc::new(AtomicUsize::new(0));
    let waker = OwnedFd::from(listener.try_clone()?);
    let handle = Listening::spawn("metrics", waker, move |stop| {
        for stream in listener.incoming() {
            if stop.is_set() {
                return;
            }
            let stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    // Out of descriptors or memory: back off instead of spinning on accept.
                    tracing::debug!(error = %e, "metrics accept failed");
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
            if active.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTIONS {
                active.fetch_sub(1, Ordering::Relaxed);
                respond(&stream, "503 Service Unavailable", "too many metrics connections; retry\n");
                continue;
            }
            let slot = Slot(active.clone());
            let sources = sources.clone();
            // The closure owns the slot: if the thread cannot start, dropping it frees the slot.
            let spawned = std::thread::Builder::new().name("metrics-conn".into()).stack_size(256 * 1024).spawn(move || {
                let _slot = slot;
                serve_connection(stream, &sources);
            });
            if let Err(e) = spawned {
                tracing::debug!(error = %e, "metrics connection thread");
            }
        }
    })?;
    Ok((bound, handle))
}

/// Why a request was not read.
enum Refused {
    /// Status line and body of the answer.
    Answer(&'static str, &'static str),
    /// The client went away or broke the connection: nothing to answer.
    Gone,
}

fn serve_connection(stream: TcpStream, sources: &Sources) {
    match read_request(&stream) {
        Ok(head) => {
            let (status, body) = route(&head, sources);
            respond(&stream, status, &body);
        }
        Err(Refused::Answer(status, body)) => {
            respond(&stream, status, body);
            linger(&stream);
        }
        Err(Refused::Gone) => {}
    }
}

/// Reads the request line and headers (up to the blank line) into a fixed buffer, within
/// [`IO_TIMEOUT`] in all. Returns the request line.
fn read_request(mut stream: &TcpStream) -> Result<String, Refused> {
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut buf = [0u8; MAX_REQUEST_BYTES];
    let mut len = 0;
    loop {
        if let Some(end) = header_end(&buf[..len]) {
            let head = std::str::from_utf8(&buf[..end]).map_err(|_| Refused::Answer("400 Bad Request", "the request is not text\n"))?;
            return Ok(head.lines().next().unwrap_or_default().to_owned());
        }
        if len == buf.len() {
            return Err(Refused::Answer("431 Request Header Fields Too Large", "request line and headers are limited to 8 KiB\n"));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Refused::Answer("408 Request Timeout", "the request must arrive within 2 s\n"));
        }
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(&mut buf[len..]) {
            Ok(0) => return Err(Refused::Gone),
            Ok(n) => len += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(Refused::Answer("408 Request Timeout", "the request must arrive within 2 s\n"));
            }
            Err(_) => return Err(Refused::Gone),
        }
    }
}

/// Where the head of a request ends (at its blank line), if it has arrived.
fn header_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").or_else(|| buf.windows(2).position(|w| w == b"\n\n"))
}

fn route(request_line: &str, sources: &Sources) -> (&'static str, String) {
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return ("400 Bad Request", "expected \"GET /metrics HTTP/1.1\"\n".into());
    };
    if !version.starts_with("HTTP/1.") {
        return ("400 Bad Request", "expected \"GET /metrics HTTP/1.1\"\n".into());
    }
    if method != "GET" {
        return ("405 Method Not Allowed", "only GET\n".into());
    }
    if target.split('?').next() != Some("/metrics") {
        return ("404 Not Found", "try /metrics\n".into());
    }
    ("200 OK", sources.render())
}

fn respond(mut stream: &TcpStream, status: &str, body: &str) {
    let _ = write!(stream, "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
}

/// After refusing a request that is still arriving: stop sending and read (and discard) for a
/// moment, so the kernel does not answer the unread bytes with a reset that destroys the answer
/// before the client reads it. Bounded in time and bytes, in a small fixed buffer.
fn linger(mut stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let until = Instant::now() + Duration::from_millis(500);
    let mut sink = [0u8; 4096];
    let mut total = 0usize;
    while total < (4 << 20) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(n) => total += n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let (addr, _t) = serve(SocketAddr::from(([127, 0, 0, 1], 0)), snaps, Some(xdp), Some(Arc::new(Mutex::new(edge))), None, None).unwrap();
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
            "sluice_processing_seconds{worker=\"1\",quantile=\"0.99\"} 0.000001234",
            "sluice_xdp_packets_total{verdict=\"unknown_source\"} 5",
            "sluice_xdp_packets_total{verdict=\"pass_media\"} 0",
        ] {
            assert!(body.contains(want), "missing {want} in\n{body}");
        }
    }
}
