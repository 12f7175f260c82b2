//! UDP GRO through a real NAPI path: a veth pair between two network namespaces the test
//! creates, GRO on at the receiving end (its NAPI thread coalesces one flow's datagrams, as a
//! NIC's would). Every datagram a sender sends — singly and as GSO bursts, of equal and of mixed
//! sizes — comes out of the `mmsg` and `uring` backends exactly once, in order, byte for byte. Needs root.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::netns::{NetNs, Veth};
use sluice_dataplane::io::{Backend, BackendKind, IoConfig, SendRegistry, Transmit};

#[test]
fn gro_over_veth_delivers_every_datagram_once_in_order() {
    for kind in [BackendKind::Mmsg, BackendKind::Uring] {
        over_veth(kind);
    }
}

fn over_veth(kind: BackendKind) {
    let tx_ns = NetNs::new("grA");
    let rx_ns = NetNs::new("grB");
    let veth = Veth::new("gr", &tx_ns, &["10.79.0.1/24"], &rx_ns, &["10.79.0.2/24"]);
    rx_ns.napi_thread_on(&veth.b, 0).expect("NAPI thread");
    let rx_ip = IpAddr::V4(Ipv4Addr::new(10, 79, 0, 2));
    let cfg = IoConfig { local_ip: rx_ip, rx_batch: 64, gro: true, socket_buffer_bytes: Some(16 << 20), ..IoConfig::default() };
    let (mut rx, port) = rx_ns.enter(|| {
        let mut b = Backend::new(kind, cfg, SendRegistry::new()).expect("backend");
        let port = b.add_port(0).expect("port");
        (b, port)
    });
    let dst = SocketAddr::new(rx_ip, port);
    // What the sender sends: datagram i carries i (u32) and a size pattern (equal runs, odd
    // ones, a short tail), sent singly and in GSO bursts from one socket.
    let size = |i: u32| match i % 97 {
        0 => 333,
        1..=10 => 1216,
        11 => 64,
        _ => 1216,
    };
    let payload = |i: u32| {
        let mut p = vec![(i % 251) as u8; size(i)];
        p[..4].copy_from_slice(&i.to_be_bytes());
        p
    };
    const N: u32 = 20_000;
    let receiver = std::thread::spawn(move || {
        let mut got: Vec<(u16, Vec<u8>)> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.len() < N as usize && Instant::now() < deadline {
            rx.recv_batch(Some(Duration::from_millis(50)), |_, src, buf| got.push((src.port(), buf.to_vec()))).unwrap();
        }
        (got, rx.counters())
    });
    let sent = tx_ns.enter(|| {
        let plain = UdpSocket::bind("10.79.0.1:0").unwrap();
        let mut gso =
            Backend::new(BackendKind::Mmsg, IoConfig { local_ip: IpAddr::V4(Ipv4Addr::new(10, 79, 0, 1)), ..IoConfig::default() }, SendRegistry::new())
                .unwrap();
        let gso_port = gso.add_port(0).unwrap();
        let mut sent = Vec::new();
        let mut i = 0;
        while i < N {
            if (i / 1000) % 2 == 0 {
                let p = payload(i);
                plain.send_to(&p, dst).unwrap();
                sent.push((plain.local_addr().unwrap().port(), p));
                i += 1;
            } else {
                let burst: Vec<Vec<u8>> = (i..(i + 32).min(N)).map(payload).collect();
                // One flow's messages go out in order, so the first `n` were taken; a full socket
                // buffer is waited out.
                let mut k = 0;
                for _ in 0..200 {
                    k += gso.send_batch(burst[k..].iter().map(|p| Transmit { local_port: gso_port, dst, payload: p }));
                    if k == burst.len() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                assert_eq!(k, burst.len());
                sent.extend(burst.into_iter().map(|p| (gso_port, p)));
                i += 32;
            }
            // Paced well below what the receiver takes: loss here would be the socket's, not GRO's.
            if i % 128 == 0 {
                std::thread::sleep(Duration::from_micros(500));
            }
        }
        sent
    });
    let (got, c) = receiver.join().expect("receiver");
    let per_source = |v: &[(u16, Vec<u8>)], port: u16| v.iter().filter(|(p, _)| *p == port).map(|(_, d)| d.clone()).collect::<Vec<_>>();
    let ports: std::collections::BTreeSet<u16> = sent.iter().map(|(p, _)| *p).collect();
    for port in ports {
        let (want, have) = (per_source(&sent, port), per_source(&got, port));
        assert_eq!(have.len(), want.len(), "{kind}: from port {port}: every datagram once ({c:?})");
        if let Some(k) = (0..want.len()).find(|&k| have[k] != want[k]) {
            panic!(
                "{kind}: from port {port}: datagram {k} differs: got {} bytes starting {:?}, want {} bytes starting {:?}",
                have[k].len(),
                &have[k][..8.min(have[k].len())],
                want[k].len(),
                &want[k][..8]
            );
        }
    }
    assert!(c.rx_gro_datagrams > 0, "{kind}: the NAPI path coalesced some runs: {c:?}");
    assert_eq!((c.rx_truncated, c.rx_errors), (0, 0), "{kind}: {c:?}");
}
