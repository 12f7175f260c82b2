//! The AF_XDP backend on a real interface: a veth pair between a "client" and a "server"
//! namespace the test creates, the XDP stage attached (driver mode) to the server end in AF_XDP
//! mode, an XSK bound to queue 0 of that end (copy mode: veth refuses zero-copy) and registered in
//! the stage's XSKMAP. Known media reaches `recv_batch` through the XSK (`redirect_xsk` counted),
//! STUN through the kernel socket of the same port; `send_batch` replies leave as raw frames
//! through the XSK's TX ring (`af_xdp_tx = ring`) or through the leg sockets (`socket`, what
//! `auto` does in copy mode) and reach a UDP socket in the client namespace. Ring frames ask for
//! the UDP checksum through TX metadata; with the server end's checksum offload turned off the
//! kernel sums them from our pseudo-header seed, and the client's kernel drops bad UDP checksums,
//! so arrival proves them. Needs root. Namespaces are removed in `Drop`, also on panic.

mod common;

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use common::{
    netns::{NetNs, Veth},
    packet::{rtp, stun},
};
use sluice_common::XdpVerdict as V;
use sluice_core::ids::{LegId, Ssrc};
use sluice_dataplane::{
    io::{Backend, BackendKind, IoConfig, SendRegistry, Transmit, XskTx},
    xdp::{AttachMode, XdpStage},
};

const PORT: u16 = 20000;
const SSRC: u32 = 0x5eed_0001;
const CLIENT: &str = "10.78.0.1:5000";
const SERVER_IP: &str = "10.78.0.2";

struct Topology {
    // Field order is drop order: backend and stage (sockets, XDP link) before the namespaces.
    backend: Backend,
    stage: XdpStage,
    client: UdpSocket,
    veth: Veth,
    server_ns: NetNs,
    client_ns: NetNs,
}

fn topology(tag: &str, xsk: bool, xsk_tx: XskTx) -> Topology {
    topology_with(tag, xsk, xsk_tx, sluice_dataplane::io::xsk::XSK_RX_FRAMES)
}

fn topology_with(tag: &str, xsk: bool, xsk_tx: XskTx, xsk_rx_frames: usize) -> Topology {
    let client_ns = NetNs::new(&format!("{tag}A"));
    let server_ns = NetNs::new(&format!("{tag}B"));
    let veth = Veth::new(tag, &client_ns, &["10.78.0.1/24"], &server_ns, &["10.78.0.2/24"]);
    // IPv6 too (no DAD, static neighbours both ways), before the backend reads the interface.
    for (ns, dev, addr, peer, peer_mac) in
        [(&client_ns, &veth.a, "fd00:78::1/64", "fd00:78::2", veth.mac_b), (&server_ns, &veth.b, "fd00:78::2/64", "fd00:78::1", veth.mac_a)]
    {
        ns.ip(&["addr", "add", addr, "dev", dev, "nodad"]);
        let mac = common::netns::mac_str(peer_mac);
        ns.ip(&["neigh", "replace", peer, "lladdr", &mac, "dev", dev, "nud", "permanent"]);
    }
    let mut stage = XdpStage::load_unpinned().expect("load XDP stage (needs root)");
    let mode = server_ns.enter(|| stage.attach(&veth.b)).expect("attach");
    assert_eq!(mode, AttachMode::Driver, "veth supports native XDP");
    stage.set_port_range(20000..=20099).unwrap();
    let client_addr: SocketAddr = CLIENT.parse().unwrap();
    stage.add_leg(PORT, client_addr, LegId(1), 0).unwrap();
    stage.allow_ssrc(PORT, Ssrc(SSRC), LegId(1)).unwrap();
    let kind = if xsk { BackendKind::Xsk } else { BackendKind::Mmsg };
    let config = IoConfig {
        local_ip: SERVER_IP.parse().unwrap(),
        rx_batch: 64,
        xsk_interface: Some(veth.b.clone()),
        xsk_queue: 0,
        socket_buffer_bytes: Some(4 << 20), // the daemon's default
        xsk_tx,
        xsk_rx_frames,
        ..IoConfig::default()
    };
    let backend = server_ns.enter(|| {
        let mut b = Backend::new(kind, config, SendRegistry::new()).expect("backend");
        assert_eq!(b.add_port(PORT).expect("add port"), PORT);
        b
    });
    if let Backend::Xsk(x) = &backend {
        assert!(!x.zerocopy(), "veth binds in copy mode only");
        assert!(x.tx_csum_offload(), "this kernel (6.11+) takes TX metadata in copy mode");
        assert_eq!(x.interface().ipv4, Some(SERVER_IP.parse().unwrap()));
        stage.set_xsk(x.queue(), x.xsk_fd()).expect("register XSK");
        stage.set_af_xdp(true).unwrap();
    }
    let client = client_ns.enter(|| UdpSocket::bind(client_addr)).expect("bind client");
    client.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    Topology { backend, stage, client, veth, server_ns, client_ns }
}

/// Receives until `want` datagrams arrived or 10 s passed; (port, src, payload) in arrival order.
fn receive(backend: &mut Backend, want: usize) -> Vec<(u16, SocketAddr, Vec<u8>)> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < want && Instant::now() < deadline {
        backend.recv_batch(Some(Duration::from_millis(100)), |port, src, buf| got.push((port, src, buf.to_vec()))).expect("recv_batch");
    }
    got
}

/// Sends `n` RTP packets of the leg, paced under the veth ring (256 frames).
fn send_rtp(client: &UdpSocket, n: u16) -> Vec<Vec<u8>> {
    let dst = SocketAddr::new(SERVER_IP.parse().unwrap(), PORT);
    let mut sent = Vec::new();
    for seq in 0..n {
        let mut p = rtp(SSRC, seq);
        p.extend_from_slice(&[seq as u8; 7]); // odd payload length: exercises checksum padding
        client.send_to(&p, dst).unwrap();
        sent.push(p);
        if seq % 64 == 63 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    sent
}

#[test]
fn media_arrives_through_the_xsk_and_replies_leave_through_it() {
    let mut t = topology("xk", true, XskTx::Ring);
    let client_addr: SocketAddr = CLIENT.parse().unwrap();
    let before = t.stage.verdict_counts().unwrap();

    // Known media → XSK; STUN on the same port → the kernel socket; an unannounced SSRC → dropped.
    const N: u16 = 300;
    let sent = send_rtp(&t.client, N);
    let dst = SocketAddr::new(SERVER_IP.parse().unwrap(), PORT);
    t.client.send_to(&stun(), dst).unwrap();
    t.client.send_to(&rtp(0xbad, 1), dst).unwrap();
    let got = receive(&mut t.backend, usize::from(N) + 1);
    let after = t.stage.verdict_counts().unwrap();
    let delta = |v| after.get(v) - before.get(v);
    assert_eq!(got.len(), usize::from(N) + 1, "datagrams delivered; verdicts {after:?}");
    let (media, other): (Vec<_>, Vec<_>) = got.into_iter().partition(|(_, _, p)| p[0] & 0xc0 == 0x80);
    assert_eq!(other.len(), 1);
    assert_eq!(other[0], (PORT, client_addr, stun()), "STUN through the kernel socket");
    let media: BTreeMap<u16, _> = media
        .into_iter()
        .map(|(port, src, p)| {
            assert_eq!((port, src), (PORT, client_addr));
            (u16::from_be_bytes([p[2], p[3]]), p)
        })
        .collect();
    assert_eq!(media.len(), usize::from(N), "every sequence number once");
    for (seq, p) in &media {
        assert_eq!(p, &sent[usize::from(*seq)], "payload of seq {seq}");
    }
    assert_eq!(delta(V::RedirectXsk), u64::from(N));
    assert_eq!(delta(V::PassMedia), 0);
    assert_eq!(delta(V::PassStun), 1);
    assert_eq!(delta(V::DropUnknownSsrc), 1);
    let Backend::Xsk(x) = &t.backend else { unreachable!() };
    assert_eq!(x.xsk_counters().rx_datagrams, u64::from(N), "media came through the XSK");
    assert_eq!(x.xsk_counters().rx_errors, 0);

    // Replies: raw frames from the XSK, more than one kick's worth (32 in copy mode) per batch.
    const R: usize = 500;
    let replies: Vec<Vec<u8>> = (0..R).map(|i| format!("reply {i:04} {}", "x".repeat(i % 50)).into_bytes()).collect();
    let mut sent_ok = 0;
    let mut buf = [0u8; 2048];
    let mut received = Vec::new();
    for chunk in replies.chunks(100) {
        sent_ok += t.backend.send_batch(chunk.iter().map(|p| Transmit { local_port: PORT, dst: client_addr, payload: p }));
        // Drain the client per batch: its receive buffer (about 256 small datagrams by default in
        // a fresh namespace) is the limit, not the XSK.
        while received.len() < sent_ok {
            match t.client.recv_from(&mut buf) {
                Ok((n, from)) => {
                    assert_eq!(from, SocketAddr::new(SERVER_IP.parse::<IpAddr>().unwrap(), PORT), "source");
                    received.push(buf[..n].to_vec());
                }
                Err(e) => panic!("reply {} of {sent_ok} missing ({e}); backend counters {:?}", received.len(), t.backend.counters()),
            }
        }
    }
    assert_eq!(sent_ok, R);
    received.sort();
    let mut want = replies.clone();
    want.sort();
    assert_eq!(received, want, "every reply once, intact (UDP checksum verified by the kernel)");
    let c = t.backend.counters();
    assert_eq!(c.tx_datagrams, R as u64);
    assert_eq!(c.send_errors, 0);
    let Backend::Xsk(x) = &t.backend else { unreachable!() };
    assert_eq!(x.xsk_counters().tx_datagrams, R as u64, "through the ring, not the leg socket");

    // The XSK withdrawn: known media passes to the kernel socket and still reaches recv_batch.
    let Backend::Xsk(x) = &t.backend else { unreachable!() };
    let queue = x.queue();
    t.stage.unset_xsk(queue).unwrap();
    let before = t.stage.verdict_counts().unwrap();
    send_rtp(&t.client, 10);
    let got = receive(&mut t.backend, 10);
    assert_eq!(got.len(), 10);
    let after = t.stage.verdict_counts().unwrap();
    assert_eq!(after.get(V::PassMedia) - before.get(V::PassMedia), 10);
    assert_eq!(after.get(V::RedirectXsk) - before.get(V::RedirectXsk), 0);

    // Next hops. A destination behind a gateway gets the gateway's MAC (route table); with the
    // kernel's entry gone, the MAC learned from received frames is used for the client itself,
    // and nothing is known for the off-link address. (Tables are re-read once a snapshot is 1 s
    // old, hence the sleeps.)
    let Backend::Xsk(x) = &mut t.backend else { unreachable!() };
    t.server_ns.ip(&["route", "add", "192.0.2.0/24", "via", "10.78.0.1"]);
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(x.next_hop_mac("192.0.2.5".parse().unwrap()), Some(t.veth.mac_a), "via the gateway");
    t.server_ns.ip(&["neigh", "del", "10.78.0.1", "dev", &t.veth.b]);
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(x.next_hop_mac(client_addr.ip()), Some(t.veth.mac_a), "learned from received frames");
    assert_eq!(x.next_hop_mac("192.0.2.5".parse().unwrap()), None, "gateway unresolved");
}

/// IPv6: media from a v6 leg through the XSK, replies built with IPv6 headers (next hop from the
/// netlink neighbour dump) reach the client with valid checksums and the right source.
#[test]
fn ipv6_media_and_replies_through_the_xsk() {
    let mut t = topology("x6", true, XskTx::Ring);
    let client6: SocketAddr = "[fd00:78::1]:5000".parse().unwrap();
    let server6: SocketAddr = SocketAddr::new("fd00:78::2".parse().unwrap(), PORT);
    t.stage.add_leg(PORT, client6, LegId(2), 0).unwrap();
    t.stage.allow_ssrc(PORT, Ssrc(SSRC + 1), LegId(2)).unwrap();
    let Backend::Xsk(x) = &mut t.backend else { unreachable!() };
    assert_eq!(x.interface().ipv6, Some("fd00:78::2".parse().unwrap()));
    // Before any frame was received (nothing learned yet): the kernel's tables answer, the
    // netlink dump for IPv6 and /proc/net/arp for IPv4; an address with no entry has no MAC.
    assert_eq!(x.next_hop_mac(client6.ip()), Some(t.veth.mac_a));
    assert_eq!(x.next_hop_mac("10.78.0.1".parse().unwrap()), Some(t.veth.mac_a));
    assert_eq!(x.next_hop_mac("fd00:78::99".parse().unwrap()), None);
    assert_eq!(x.next_hop_mac("10.78.0.99".parse().unwrap()), None);
    let client = t.client_ns.enter(|| UdpSocket::bind(client6)).expect("bind v6 client");
    client.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let before = t.stage.verdict_counts().unwrap();
    const N: u16 = 100;
    for seq in 0..N {
        client.send_to(&rtp(SSRC + 1, seq), server6).unwrap();
    }
    let got = receive(&mut t.backend, usize::from(N));
    assert_eq!(got.len(), usize::from(N));
    for (i, (port, src, p)) in got.iter().enumerate() {
        assert_eq!((*port, *src), (PORT, client6), "datagram {i}");
        assert_eq!(p, &rtp(SSRC + 1, u16::from_be_bytes([p[2], p[3]])));
    }
    let after = t.stage.verdict_counts().unwrap();
    assert_eq!(after.get(V::RedirectXsk) - before.get(V::RedirectXsk), u64::from(N));

    let replies: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 1 + i * 7]).collect();
    let n = t.backend.send_batch(replies.iter().map(|p| Transmit { local_port: PORT, dst: client6, payload: p }));
    assert_eq!(n, replies.len());
    let mut buf = [0u8; 2048];
    let mut received = Vec::new();
    while received.len() < replies.len() {
        let (len, from) = client.recv_from(&mut buf).unwrap_or_else(|e| panic!("reply {} missing ({e}); {:?}", received.len(), t.backend.counters()));
        assert_eq!(from, server6);
        received.push(buf[..len].to_vec());
    }
    received.sort();
    let mut want = replies;
    want.sort();
    assert_eq!(received, want);
    assert_eq!(t.backend.counters().send_errors, 0);
}

/// Sends `replies` to `dst` in batches of 25 and collects them at `client` (drained per batch:
/// its receive buffer, about 200 KB in a fresh namespace, is the limit). Panics naming the first
/// missing one.
fn round_trip(t: &mut Topology, client: &UdpSocket, dst: SocketAddr, from: SocketAddr, replies: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut sent_ok = 0;
    let mut buf = [0u8; 2048];
    let mut received = Vec::new();
    for chunk in replies.chunks(25) {
        sent_ok += t.backend.send_batch(chunk.iter().map(|p| Transmit { local_port: PORT, dst, payload: p }));
        while received.len() < sent_ok {
            match client.recv_from(&mut buf) {
                Ok((n, src)) => {
                    assert_eq!(src, from, "source");
                    received.push(buf[..n].to_vec());
                }
                Err(e) => panic!(
                    "reply {} of {sent_ok} to {dst} missing ({e}); backend counters {:?}; client UDP counters {}",
                    received.len(),
                    t.backend.counters(),
                    t.client_ns.exec("cat", &["/proc/net/snmp"]).lines().filter(|l| l.starts_with("Udp:")).collect::<Vec<_>>().join(" / ")
                ),
            }
        }
    }
    assert_eq!(sent_ok, replies.len());
    received.sort();
    received
}

/// Ring sends with the checksum left to the kernel: with the server end's TX checksum offload
/// off, `validate_xmit_skb` sums every frame from the seed `send_batch` wrote, and the client's
/// kernel verifies the result (a wrong seed would be dropped as `UdpInCsumErrors`). IPv4 and
/// IPv6, payload lengths odd and even up to 1200 bytes; then the same through the leg sockets.
#[test]
fn ring_frames_get_correct_udp_checksums_from_the_kernel() {
    let mut t = topology("xc", true, XskTx::Ring);
    t.server_ns.exec("ethtool", &["-K", &t.veth.b, "tx", "off"]);
    let features = t.server_ns.exec("ethtool", &["-k", &t.veth.b]);
    assert!(features.contains("tx-checksumming: off"), "offload off on the server end: {features}");
    let client6: SocketAddr = "[fd00:78::1]:5000".parse().unwrap();
    let server6 = SocketAddr::new("fd00:78::2".parse().unwrap(), PORT);
    let client4: SocketAddr = CLIENT.parse().unwrap();
    let server4 = SocketAddr::new(SERVER_IP.parse().unwrap(), PORT);
    let client_v6 = t.client_ns.enter(|| UdpSocket::bind(client6)).expect("bind v6 client");
    client_v6.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let client_v4 = t.client.try_clone().unwrap();
    let replies: Vec<Vec<u8>> = (0..300).map(|i: usize| (0..(1 + i * 4) % 1201).map(|j| (i * 31 + j * 7) as u8).collect()).collect();
    let mut want = replies.clone();
    want.sort();
    for (client, dst, from) in [(&client_v4, client4, server4), (&client_v6, client6, server6)] {
        let got = round_trip(&mut t, client, dst, from, &replies);
        assert_eq!(got, want, "every ring reply to {dst} once, intact");
    }
    let Backend::Xsk(x) = &t.backend else { unreachable!() };
    assert_eq!(x.xsk_counters().tx_datagrams, 2 * replies.len() as u64, "all through the ring");
    assert_eq!(t.backend.counters().send_errors, 0);
}

/// `af_xdp_tx = socket`: AF_XDP receives, the leg sockets send (with GSO where a destination
/// gets a run): nothing goes through the ring.
#[test]
fn socket_tx_sends_through_the_leg_sockets() {
    let mut t = topology("xs", true, XskTx::Socket);
    let client4: SocketAddr = CLIENT.parse().unwrap();
    let server4 = SocketAddr::new(SERVER_IP.parse().unwrap(), PORT);
    let replies: Vec<Vec<u8>> = (0..300).map(|i: usize| vec![(i % 251) as u8; 1200]).collect();
    let client = t.client.try_clone().unwrap();
    let got = round_trip(&mut t, &client, client4, server4, &replies);
    let mut want = replies.clone();
    want.sort();
    assert_eq!(got, want);
    let Backend::Xsk(x) = &t.backend else { unreachable!() };
    assert_eq!(x.xsk_counters().tx_datagrams, 0, "nothing through the ring");
    assert_eq!(t.backend.counters().tx_datagrams, replies.len() as u64);
    assert!(t.backend.counters().gso_sends > 0, "one destination's run leaves as GSO sends");
}

/// A worker that stops reading: the XSK's receive frames (4096 here, `af_xdp_rx_frames`) run
/// out, the kernel drops what does not fit and counts it, and the counters say so
/// (`xsk_rx_dropped`, `xsk_fill_ring_empty`); what was received before is delivered intact once
/// the worker reads again.
#[test]
fn frames_the_xsk_cannot_hold_are_counted() {
    const HELD: usize = 4096;
    let mut t = topology_with("xd", true, XskTx::Socket, HELD);
    const N: u16 = 6000; // more than the XSK's receive frames
    let sent = send_rtp(&t.client, N);
    std::thread::sleep(Duration::from_millis(50));
    let held = HELD;
    let mut got = receive(&mut t.backend, held);
    t.backend.recv_batch(Some(Duration::from_millis(100)), |port, src, buf| got.push((port, src, buf.to_vec()))).unwrap();
    let Backend::Xsk(x) = &t.backend else { unreachable!() };
    let c = x.xsk_counters();
    assert_eq!(got.len(), held, "the receive frames' worth arrived, no more; counters {c:?}");
    assert_eq!(c.xsk_rx_dropped, u64::from(N) - held as u64, "every other frame counted as dropped");
    assert_eq!(c.xsk_fill_ring_empty, c.xsk_rx_dropped, "for want of fill-ring frames");
    assert_eq!(c.xsk_rx_ring_full, 0);
    for (_, _, p) in &got {
        assert_eq!(p, &sent[usize::from(u16::from_be_bytes([p[2], p[3]]))]);
    }
    // The frames are back in the fill ring: the next packets arrive again.
    let more = send_rtp(&t.client, 10);
    let got = receive(&mut t.backend, 10);
    assert_eq!(got.iter().map(|g| g.2.clone()).collect::<Vec<_>>(), more, "the next packets, in order");
}
