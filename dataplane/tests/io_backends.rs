//! Both I/O backends on real loopback sockets: receive metadata, mixed send batches across
//! workers, GSO runs, port removal; and the two backends must deliver identical traffic.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_dataplane::io::{Backend, BackendKind, IoConfig, IoError, SendRegistry, Transmit};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const KINDS: [BackendKind; 2] = [BackendKind::Mmsg, BackendKind::Uring];

fn config() -> IoConfig {
    IoConfig { local_ip: LOCALHOST, rx_batch: 16, ..IoConfig::default() }
}

fn backend(kind: BackendKind, registry: &Arc<SendRegistry>) -> Backend {
    Backend::new(kind, config(), Arc::clone(registry)).unwrap_or_else(|e| panic!("{kind} backend: {e}"))
}

fn peer() -> UdpSocket {
    let s = UdpSocket::bind((LOCALHOST, 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    s
}

/// Receives until `n` datagrams arrived (or 3 s passed).
fn recv_n(b: &mut Backend, n: usize) -> Vec<(u16, SocketAddr, Vec<u8>)> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    while got.len() < n && Instant::now() < deadline {
        b.recv_batch(Some(Duration::from_millis(50)), |port, src, buf| got.push((port, src, buf.to_vec()))).unwrap();
    }
    got
}

/// Reads everything `s` gets until it stays quiet for 200 ms.
fn drain(s: &UdpSocket) -> Vec<(SocketAddr, Vec<u8>)> {
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok((n, from)) = s.recv_from(&mut buf) {
        out.push((from, buf[..n].to_vec()));
    }
    out
}

#[test]
fn receives_from_several_ports_with_source_and_local_port() {
    for kind in KINDS {
        let registry = SendRegistry::new();
        let mut b = backend(kind, &registry);
        let ports: Vec<u16> = (0..3).map(|_| b.add_port(0).unwrap()).collect();
        assert_eq!(b.ports(), {
            let mut p = ports.clone();
            p.sort();
            p
        });
        let peers = [peer(), peer()];
        let mut expected = Vec::new();
        for (pi, p) in peers.iter().enumerate() {
            for (k, &port) in ports.iter().enumerate() {
                for i in 0..5u8 {
                    let payload = vec![pi as u8, k as u8, i, 0xab];
                    p.send_to(&payload, (LOCALHOST, port)).unwrap();
                    expected.push((port, p.local_addr().unwrap(), payload));
                }
            }
        }
        let mut got = recv_n(&mut b, expected.len());
        // Per (local port, source) the order is the sending order.
        let per_flow = |v: &[(u16, SocketAddr, Vec<u8>)]| {
            let mut m: BTreeMap<(u16, SocketAddr), Vec<Vec<u8>>> = BTreeMap::new();
            for (port, src, p) in v {
                m.entry((*port, *src)).or_default().push(p.clone());
            }
            m
        };
        assert_eq!(per_flow(&got), per_flow(&expected), "{kind}");
        got.sort();
        expected.sort();
        assert_eq!(got, expected, "{kind}");
        let c = b.counters();
        assert_eq!(c.rx_datagrams, expected.len() as u64, "{kind}: {c:?}");
        assert!(c.syscalls < c.rx_datagrams, "{kind}: batched receive: {c:?}");
    }
}

/// The mixed batch: two workers' ports (the sending backend uses the other worker's port too),
/// three peers, varied sizes, including a GSO-able run. Returns what each peer received, as
/// `(index of the local port it came from, payload)`.
/// Per peer: `(index of the leg port it came from, payload)` in arrival order.
type PerPeer = Vec<Vec<(usize, Vec<u8>)>>;

fn run_mixed_batch(kind: BackendKind) -> (PerPeer, sluice_dataplane::io::IoCounters) {
    let registry = SendRegistry::new();
    let mut worker_a = backend(kind, &registry);
    let mut worker_b = backend(kind, &registry);
    let ports = [worker_a.add_port(0).unwrap(), worker_a.add_port(0).unwrap(), worker_b.add_port(0).unwrap()];
    assert!(matches!(worker_a.add_port(ports[2]), Err(IoError::PortInUse { .. })), "{kind}: a port another worker serves is refused");
    let peers = [peer(), peer(), peer()];
    let dsts: Vec<SocketAddr> = peers.iter().map(|p| p.local_addr().unwrap()).collect();

    let mut payloads = Vec::new();
    let mut meta = Vec::new();
    for i in 0..60usize {
        // Fan-out shape: each "input packet" goes to every peer; peer k always from port k.
        for k in 0..3 {
            let len = match (i % 7, k) {
                (6, _) => 200 + k,
                (_, 2) => 1200,
                _ => 100 + (i % 3) * 50 + k,
            };
            let mut p = vec![0u8; len];
            p[..4].copy_from_slice(&(i as u32).to_be_bytes());
            p[4] = k as u8;
            p[5..].iter_mut().enumerate().for_each(|(j, b)| *b = (i * 31 + j * 7 + k) as u8);
            payloads.push(p);
            meta.push((ports[k], dsts[k]));
        }
    }
    // Worker A sends everything, including from worker B's port.
    let batch = payloads.iter().zip(&meta).map(|(p, &(port, dst))| Transmit { local_port: port, dst, payload: p });
    let sent = worker_a.send_batch(batch);
    assert_eq!(sent, payloads.len(), "{kind}: {:?}", worker_a.counters());

    let received: PerPeer = peers
        .iter()
        .map(|p| {
            drain(p)
                .into_iter()
                .map(|(from, data)| {
                    assert_eq!(from.ip(), LOCALHOST);
                    (ports.iter().position(|&q| q == from.port()).expect("source is a leg port"), data)
                })
                .collect()
        })
        .collect();
    for (k, got) in received.iter().enumerate() {
        let want: Vec<(usize, Vec<u8>)> = payloads.iter().zip(&meta).filter(|(_, m)| m.1 == dsts[k]).map(|(p, _)| (k, p.clone())).collect();
        assert_eq!(got.len(), want.len(), "{kind}: peer {k}");
        assert!(got == &want, "{kind}: peer {k}: every datagram exactly once, in order, from the right port");
    }
    (received, worker_a.counters())
}

#[test]
fn mixed_batch_delivers_every_datagram_once_from_the_right_port_identically_on_both_backends() {
    let (mmsg, mc) = run_mixed_batch(BackendKind::Mmsg);
    let (uring, uc) = run_mixed_batch(BackendKind::Uring);
    assert!(mmsg == uring, "both backends deliver byte-identical traffic");
    for c in [mc, uc] {
        assert_eq!(c.tx_datagrams, 180);
        assert_eq!(c.send_errors, 0);
        assert!(c.gso_sends > 0, "peer 2's equal-size run goes out segmented: {c:?}");
    }
}

#[test]
fn gso_run_arrives_as_separate_datagrams_in_order() {
    for kind in KINDS {
        let registry = SendRegistry::new();
        let mut b = backend(kind, &registry);
        let port = b.add_port(0).unwrap();
        let (p1, p2) = (peer(), peer());
        let (d1, d2) = (p1.local_addr().unwrap(), p2.local_addr().unwrap());
        // A 20-packet "frame" to each of two subscribers, interleaved as a worker fans out,
        // 1100-byte packets with a short last one.
        let mut payloads = Vec::new();
        for i in 0..20u8 {
            for s in 0..2u8 {
                let len = if i == 19 { 333 } else { 1100 };
                payloads.push((if s == 0 { d1 } else { d2 }, vec![i ^ (s * 0x80); len]));
            }
        }
        let before = b.counters();
        let sent = b.send_batch(payloads.iter().map(|(dst, p)| Transmit { local_port: port, dst: *dst, payload: p }));
        assert_eq!(sent, 40, "{kind}");
        for (s, peer) in [&p1, &p2].into_iter().enumerate() {
            let got = drain(peer);
            let sizes: Vec<usize> = got.iter().map(|(_, d)| d.len()).collect();
            let mut want = vec![1100; 19];
            want.push(333);
            assert_eq!(sizes, want, "{kind}: peer {s}: separate datagrams of the right sizes");
            for (i, (from, d)) in got.iter().enumerate() {
                assert_eq!(from.port(), port);
                assert!(d.iter().all(|&x| x == (i as u8) ^ (s as u8 * 0x80)), "{kind}: peer {s} datagram {i} in order");
            }
        }
        let c = b.counters();
        let sends = c.syscalls - before.syscalls;
        assert_eq!(c.gso_refused, 0, "{kind}: loopback takes GSO");
        assert_eq!(c.gso_sends - before.gso_sends, 2, "{kind}: one GSO send per subscriber: {c:?}");
        assert!(sends <= 4, "{kind}: {sends} syscalls for 40 datagrams");
    }
}

#[test]
fn long_runs_are_split_at_64_segments() {
    for kind in KINDS {
        let registry = SendRegistry::new();
        let mut b = backend(kind, &registry);
        let port = b.add_port(0).unwrap();
        let p = peer();
        let dst = p.local_addr().unwrap();
        let payloads: Vec<Vec<u8>> = (0..150u32).map(|i| i.to_be_bytes().repeat(25)).collect();
        let sent = b.send_batch(payloads.iter().map(|d| Transmit { local_port: port, dst, payload: d }));
        assert_eq!(sent, 150);
        let got: Vec<Vec<u8>> = drain(&p).into_iter().map(|(_, d)| d).collect();
        assert!(got == payloads, "{kind}: all 150 in order");
        assert_eq!(b.counters().gso_sends, 3, "{kind}: 64 + 64 + 22");
    }
}

#[test]
fn removed_or_unknown_ports_are_counted_not_sent() {
    for kind in KINDS {
        let registry = SendRegistry::new();
        let mut b = backend(kind, &registry);
        let port = b.add_port(0).unwrap();
        let keep = b.add_port(0).unwrap();
        assert!(registry.contains(port));
        b.remove_port(port).unwrap();
        assert!(!registry.contains(port));
        assert!(b.remove_port(port).is_err());
        let p = peer();
        let dst = p.local_addr().unwrap();
        let sent = b.send_batch([
            Transmit { local_port: port, dst, payload: b"gone" },
            Transmit { local_port: keep, dst, payload: b"kept" },
            Transmit { local_port: 1, dst, payload: b"never" },
        ]);
        assert_eq!(sent, 1);
        assert_eq!(b.counters().tx_unknown_port, 2, "{kind}");
        assert_eq!(drain(&p).into_iter().map(|(_, d)| d).collect::<Vec<_>>(), vec![b"kept".to_vec()]);
        // The port is really closed: it can be bound again.
        drop(UdpSocket::bind((LOCALHOST, port)).expect("removed port is free again"));
        // Receiving still works on the port that stayed, and nothing arrives for the removed one.
        p.send_to(b"x", (LOCALHOST, keep)).unwrap();
        let got = recv_n(&mut b, 1);
        assert_eq!(got.len(), 1, "{kind}");
        assert_eq!(got[0].0, keep);
    }
}

#[test]
fn ipv6_loopback_round_trip() {
    for kind in KINDS {
        let registry = SendRegistry::new();
        let cfg = IoConfig { local_ip: IpAddr::from(std::net::Ipv6Addr::LOCALHOST), ..IoConfig::default() };
        let Ok(mut b) = Backend::new(kind, cfg, Arc::clone(&registry)) else { panic!("{kind}") };
        let port = match b.add_port(0) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("skipping IPv6 test: no ::1 here ({e})");
                return;
            }
        };
        let p = UdpSocket::bind("[::1]:0").unwrap();
        p.send_to(b"v6", ("::1", port)).unwrap();
        let got = recv_n(&mut b, 1);
        assert_eq!(got, vec![(port, p.local_addr().unwrap(), b"v6".to_vec())], "{kind}");
        let dst = p.local_addr().unwrap();
        assert_eq!(b.send_batch([Transmit { local_port: port, dst, payload: b"back" }]), 1);
        assert_eq!(drain(&p), vec![(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)), b"back".to_vec())]);
    }
}

#[test]
fn zero_timeout_returns_immediately_and_backend_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<Backend>();
    for kind in KINDS {
        let registry = SendRegistry::new();
        let mut b = backend(kind, &registry);
        b.add_port(0).unwrap();
        let t = Instant::now();
        assert_eq!(b.recv_batch(Some(Duration::ZERO), |_, _, _| panic!("nothing sent")).unwrap(), 0);
        assert_eq!(b.recv_batch(Some(Duration::from_millis(30)), |_, _, _| panic!("nothing sent")).unwrap(), 0);
        assert!(t.elapsed() < Duration::from_secs(1));
        assert_eq!(b.kind(), kind);
        assert_eq!(kind.name().parse::<BackendKind>().unwrap(), kind);
    }
    assert!("dpdk".parse::<BackendKind>().is_err());
    // AF_XDP is a backend now, but needs an interface (tests/xsk_veth.rs covers it).
    assert_eq!("xsk".parse::<BackendKind>().unwrap(), BackendKind::Xsk);
    assert!(Backend::new(BackendKind::Xsk, IoConfig::default(), SendRegistry::new()).is_err());
}

/// `SO_NO_CHECK` makes the kernel refuse `UDP_SEGMENT` sends with `EINVAL` (udp_send_skb): the
/// backend must notice, resend the run as single datagrams, and keep GSO off afterwards.
#[test]
fn gso_refusal_falls_back_to_single_datagrams_and_is_remembered() {
    use std::os::fd::AsRawFd;
    for kind in KINDS {
        let registry = SendRegistry::new();
        let mut b = backend(kind, &registry);
        let port = b.add_port(0).unwrap();
        let leg = registry.get(port).unwrap();
        let one: libc::c_int = 1;
        // SAFETY: a valid int option value and its size, on an open socket.
        let rc = unsafe {
            libc::setsockopt(leg.as_raw_fd(), libc::SOL_SOCKET, libc::SO_NO_CHECK, (&raw const one).cast(), size_of::<libc::c_int>() as libc::socklen_t)
        };
        assert_eq!(rc, 0);
        let p = peer();
        let dst = p.local_addr().unwrap();
        let payloads: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 500]).collect();
        for round in 0..2 {
            let sent = b.send_batch(payloads.iter().map(|d| Transmit { local_port: port, dst, payload: d }));
            assert_eq!(sent, 10, "{kind} round {round}: {:?}", b.counters());
            let got: Vec<Vec<u8>> = drain(&p).into_iter().map(|(_, d)| d).collect();
            assert!(got == payloads, "{kind} round {round}: all 10, in order");
        }
        let c = b.counters();
        assert_eq!(c.gso_refused, 1, "{kind}: refused once, then remembered: {c:?}");
        assert_eq!(c.gso_sends, 0, "{kind}");
        assert_eq!(c.tx_datagrams, 20, "{kind}");
        assert_eq!(c.send_errors, 0, "{kind}");
    }
}

/// A tiny receive batch and (for io_uring) a tiny provided-buffer ring: each call stays within its
/// cap, the uring multishot runs out of buffers (ENOBUFS ends it) and is re-armed, nothing is lost.
#[test]
fn bounded_batches_and_multishot_rearm_lose_nothing() {
    for kind in KINDS {
        let registry = SendRegistry::new();
        let cfg = IoConfig { local_ip: LOCALHOST, rx_batch: 5, uring_rx_buffers: 4, ..IoConfig::default() };
        let mut b = Backend::new(kind, cfg, Arc::clone(&registry)).unwrap();
        let ports = [b.add_port(0).unwrap(), b.add_port(0).unwrap()];
        b.recv_batch(Some(Duration::ZERO), |_, _, _| {}).unwrap();
        let p = peer();
        for i in 0..60u8 {
            p.send_to(&[i; 64], (LOCALHOST, ports[usize::from(i % 2)])).unwrap();
        }
        let mut got: Vec<(u16, u8)> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(3);
        while got.len() < 60 && Instant::now() < deadline {
            let n = b
                .recv_batch(Some(Duration::from_millis(50)), |port, _, buf| {
                    buf[0] ^= 0xff; // the buffer is the worker's to rewrite in place
                    got.push((port, buf[0] ^ 0xff));
                })
                .unwrap();
            assert!(n <= 5, "{kind}: batch cap");
        }
        for (k, &port) in ports.iter().enumerate() {
            let seq: Vec<u8> = got.iter().filter(|g| g.0 == port).map(|g| g.1).collect();
            let want: Vec<u8> = (0..60u8).filter(|i| usize::from(i % 2) == k).collect();
            assert_eq!(seq, want, "{kind}: port {k}: all, in order");
        }
        assert_eq!(b.counters().rx_errors, 0, "{kind}");
    }
}

/// Two workers on their own threads, each sending from the *other's* port through the shared
/// registry; a port opened after a worker's first send batch is picked up by its next one.
#[test]
fn workers_send_from_each_others_ports_across_threads() {
    for kind in KINDS {
        let registry = SendRegistry::new();
        let mut a = backend(kind, &registry);
        let mut b = backend(kind, &registry);
        let port_a = a.add_port(0).unwrap();
        let p = peer();
        let dst = p.local_addr().unwrap();
        // A's cache is loaded by this send; B's port opens afterwards.
        assert_eq!(a.send_batch([Transmit { local_port: port_a, dst, payload: b"first" }]), 1);
        let port_b = b.add_port(0).unwrap();
        let send = |mut w: Backend, from: u16, tag: u8| {
            std::thread::spawn(move || {
                let payloads: Vec<[u8; 3]> = (0..100u8).map(|i| [tag, i, 0]).collect();
                let mut sent = 0;
                for chunk in payloads.chunks(10) {
                    sent += w.send_batch(chunk.iter().map(|d| Transmit { local_port: from, dst, payload: d }));
                }
                (sent, w)
            })
        };
        let ta = send(a, port_b, b'a');
        let tb = send(b, port_a, b'b');
        let (sa, _a) = ta.join().unwrap();
        let (sb, _b) = tb.join().unwrap();
        assert_eq!((sa, sb), (100, 100), "{kind}");
        let got = drain(&p);
        assert_eq!(got.len(), 201, "{kind}");
        for (tag, from) in [(b'a', port_b), (b'b', port_a)] {
            let seq: Vec<u8> = got
                .iter()
                .filter(|(_, d)| d[0] == tag)
                .map(|(f, d)| {
                    assert_eq!(f.port(), from, "{kind}: sent from the other worker's port");
                    d[1]
                })
                .collect();
            assert_eq!(seq, (0..100).collect::<Vec<u8>>(), "{kind}");
        }
    }
}

/// A publisher's burst sent as one GSO run reaches a `UDP_GRO` socket as one coalesced message:
/// the `mmsg` backend splits it into the original datagrams, in order and with their sizes, and
/// keeps its batch bound in datagrams (a run longer than the batch is resumed by the next call,
/// without another receive). Without GRO the same datagrams arrive one per message.
#[test]
fn gro_splits_a_coalesced_burst_into_its_datagrams_within_the_batch_bound() {
    for (kind, gro) in KINDS.into_iter().flat_map(|k| [(k, true), (k, false)]) {
        let registry = SendRegistry::new();
        let mut tx = backend(BackendKind::Mmsg, &registry);
        let from = tx.add_port(0).unwrap();
        let cfg = IoConfig { local_ip: LOCALHOST, rx_batch: 7, gro, ..IoConfig::default() };
        let mut rx = Backend::new(kind, cfg, SendRegistry::new()).unwrap();
        let port = rx.add_port(0).unwrap();
        rx.recv_batch(Some(Duration::ZERO), |_, _, _| {}).unwrap();
        let dst = SocketAddr::new(LOCALHOST, port);
        let burst: Vec<Vec<u8>> = (0..21u8).map(|i| vec![i; if i == 20 { 333 } else { 1100 }]).collect();
        assert_eq!(tx.send_batch(burst.iter().map(|p| Transmit { local_port: from, dst, payload: p })), 21);
        assert_eq!(tx.counters().gso_sends, 1, "one GSO send");
        let mut got: Vec<Vec<u8>> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(3);
        while got.len() < 21 && Instant::now() < deadline {
            let n = rx
                .recv_batch(Some(Duration::from_millis(50)), |p, src, buf| {
                    assert_eq!((p, src.port()), (port, from));
                    got.push(buf.to_vec());
                })
                .unwrap();
            assert!(n <= 7, "{kind} gro={gro}: batch bound in datagrams, got {n}");
        }
        assert_eq!(got, burst, "{kind} gro={gro}: every datagram, in order, with its size");
        let c = rx.counters();
        assert_eq!((c.rx_datagrams, c.rx_truncated, c.rx_errors), (21, 0, 0), "{kind} gro={gro}: {c:?}");
        if gro {
            assert_eq!(c.rx_gro_datagrams, 21, "{kind}: the burst came coalesced: {c:?}");
        } else {
            assert_eq!(c.rx_gro_datagrams, 0, "{kind}: {c:?}");
        }
    }
}

/// Two coalesced runs in one receive, the first exactly as long as the batch: the second is
/// delivered by the next call, and counted once in `rx_gro_datagrams` (resuming at a run's
/// start must not count it again).
#[test]
fn a_run_resumed_at_its_start_is_counted_once() {
    for kind in KINDS {
        let registry = SendRegistry::new();
        let mut tx = backend(BackendKind::Mmsg, &registry);
        let from = tx.add_port(0).unwrap();
        let cfg = IoConfig { local_ip: LOCALHOST, rx_batch: 7, gro: true, ..IoConfig::default() };
        let mut rx = Backend::new(kind, cfg, SendRegistry::new()).unwrap();
        let port = rx.add_port(0).unwrap();
        rx.recv_batch(Some(Duration::ZERO), |_, _, _| {}).unwrap();
        let dst = SocketAddr::new(LOCALHOST, port);
        // 7 × 1100 then 5 × 1200: two GSO sends (a bigger datagram cannot join the first run).
        let burst: Vec<Vec<u8>> = (0..12u8).map(|i| vec![i; if i < 7 { 1100 } else { 1200 }]).collect();
        assert_eq!(tx.send_batch(burst.iter().map(|p| Transmit { local_port: from, dst, payload: p })), 12);
        assert_eq!(tx.counters().gso_sends, 2, "two GSO sends");
        std::thread::sleep(Duration::from_millis(20));
        let mut got: Vec<Vec<u8>> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(3);
        while got.len() < 12 && Instant::now() < deadline {
            rx.recv_batch(Some(Duration::from_millis(50)), |_, _, buf| got.push(buf.to_vec())).unwrap();
        }
        assert_eq!(got, burst, "{kind}");
        let c = rx.counters();
        assert_eq!((c.rx_datagrams, c.rx_gro_datagrams), (12, 12), "{kind}: {c:?}");
    }
}

/// A datagram over the receive buffer size is dropped and counted, never delivered, with GRO's
/// big buffers as without them.
#[test]
fn an_oversized_datagram_is_counted_not_delivered_with_or_without_gro() {
    for (kind, gro) in KINDS.into_iter().flat_map(|k| [(k, true), (k, false)]) {
        let cfg = IoConfig { local_ip: LOCALHOST, gro, ..IoConfig::default() };
        let mut rx = Backend::new(kind, cfg, SendRegistry::new()).unwrap();
        let port = rx.add_port(0).unwrap();
        let p = peer();
        p.send_to(&[7u8; 3000], (LOCALHOST, port)).unwrap();
        p.send_to(&[8u8; 100], (LOCALHOST, port)).unwrap();
        let got = recv_n(&mut rx, 1);
        assert_eq!(got.iter().map(|g| g.2.len()).collect::<Vec<_>>(), vec![100], "{kind} gro={gro}");
        assert_eq!(rx.counters().rx_truncated, 1, "{kind} gro={gro}: {:?}", rx.counters());
    }
}
