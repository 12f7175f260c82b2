//! The `/metrics` endpoint against hostile HTTP clients, over real sockets: a huge request is
//! refused without being buffered, and stalled or trickling clients neither block other scrapes
//! nor hold a connection past the deadline. Its own test binary, so the process's peak memory
//! measures only what these tests make the server hold.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_dataplane::metrics::{self, Snapshots, WorkerSnapshot};

fn server() -> SocketAddr {
    let snaps: Snapshots = Arc::new(Mutex::new(vec![WorkerSnapshot { worker: 0, ..Default::default() }]));
    let (addr, _thread) = metrics::serve(SocketAddr::from(([127, 0, 0, 1], 0)), snaps, None, None, None, None).unwrap();
    addr
}

/// One scrape; (status line, how long it took).
fn scrape(addr: SocketAddr) -> (String, Duration) {
    let t = Instant::now();
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    (out.lines().next().unwrap_or_default().to_owned(), t.elapsed())
}

/// The process's peak resident set (VmHWM), in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM in /proc/self/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A 64 MiB request line (before: read into one growing string until a newline that never
/// comes, then dropped without an answer after the read timeout).
#[test]
fn an_oversized_request_is_refused_fast_without_being_buffered() {
    let addr = server();
    let before = peak_rss_kib();
    let t = Instant::now();
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = c.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'a'; 64 * 1024];
        let mut sent = w.write(b"GET /").unwrap_or(0);
        for _ in 0..1024 {
            match w.write_all(&chunk) {
                Ok(()) => sent += chunk.len(),
                Err(_) => break,
            }
        }
        sent
    });
    let mut answer = Vec::new();
    let _ = c.read_to_end(&mut answer);
    let took = t.elapsed();
    let sent = writer.join().unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431 "), "after {took:?} and {sent} bytes sent: {answer:?}");
    assert!(took < Duration::from_millis(1500), "refused only after {took:?}");
    let grew = peak_rss_kib().saturating_sub(before);
    assert!(grew < 16 * 1024, "peak memory grew by {grew} KiB ({sent} bytes sent)");
    assert_eq!(scrape(addr).0, "HTTP/1.1 200 OK");
}

/// Clients that connect and send nothing (or half a request) do not delay another scrape (before:
/// one connection at a time, each stalled one holding the server for its read timeout).
#[test]
fn stalled_clients_do_not_block_a_scrape() {
    let addr = server();
    let mut stalled: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(addr).unwrap()).collect();
    stalled[1].write_all(b"GET /metr").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let (status, took) = scrape(addr);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(took < Duration::from_millis(500), "a scrape behind stalled clients took {took:?}");
    // The stalled ones are told and closed at the deadline.
    let t = Instant::now();
    let mut answer = String::new();
    stalled[0].set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = stalled[0].read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer:?}");
    assert!(t.elapsed() < Duration::from_secs(3), "closed after {:?}", t.elapsed());
}

/// A client that trickles its request a byte at a time is cut off at the deadline (before: each
/// byte restarted the read timeout, so it held the only server thread for as long as it liked).
#[test]
fn a_trickling_client_is_cut_off_at_the_deadline() {
    let addr = server();
    let c = TcpStream::connect(addr).unwrap();
    let mut w = c.try_clone().unwrap();
    let t = Instant::now();
    let trickle = std::thread::spawn(move || {
        for b in b"GET /metrics HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            if w.write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let mut r = c;
    r.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut answer = String::new();
    let _ = r.read_to_string(&mut answer);
    let took = t.elapsed();
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer:?}");
    assert!(took < Duration::from_secs(3), "cut off only after {took:?}");
    drop(r);
    trickle.join().unwrap();
}

/// Past [`metrics::MAX_CONNECTIONS`] open connections a new one is answered 503 at once (no
/// thread, no wait), and once the stalled ones hit the deadline scrapes are served again.
#[test]
fn connections_past_the_cap_are_answered_503_at_once() {
    let addr = server();
    let stalled: Vec<TcpStream> = (0..metrics::MAX_CONNECTIONS).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let (status, took) = scrape(addr);
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
    assert!(took < Duration::from_millis(500), "{took:?}");
    // The deadline, and the half second a refused connection lingers for the rest of its request.
    std::thread::sleep(metrics::IO_TIMEOUT + Duration::from_millis(1000));
    assert_eq!(scrape(addr).0, "HTTP/1.1 200 OK");
    drop(stalled);
}
