//! The flood shield on a real interface: a veth pair between two network namespaces the test
//! creates, the XDP stage attached (driver mode) to the receiving end. A flood of RTP-looking
//! datagrams from unknown sources and with unannounced SSRCs is dropped in XDP; the real leg's
//! packets reach a UDP socket bound in the receiving namespace. Needs root.

mod common;

use std::{
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use common::{
    netns::{NetNs, Veth},
    packet::rtp,
};
use sluice_common::XdpVerdict as V;
use sluice_core::ids::{LegId, Ssrc};
use sluice_dataplane::xdp::{AttachMode, XdpStage};

const MEDIA_PORT: u16 = 20000;
const LEG_SSRC: u32 = 0xaaaa_0001;

#[test]
fn flood_is_dropped_in_xdp_and_the_leg_gets_through() {
    let sender_ns = NetNs::new("shA");
    let sfu_ns = NetNs::new("shB");
    let veth = Veth::new("sh", &sender_ns, &["10.77.0.1/24", "10.77.0.3/24"], &sfu_ns, &["10.77.0.2/24"]);

    let mut stage = XdpStage::load_unpinned().expect("load XDP stage");
    let mode = sfu_ns.enter(|| stage.attach(&veth.b)).expect("attach");
    assert_eq!(mode, AttachMode::Driver, "veth supports native XDP");
    stage.set_port_range(20000..=20099).unwrap();
    let leg_addr: SocketAddr = "10.77.0.1:5000".parse().unwrap();
    stage.add_leg(MEDIA_PORT, leg_addr, LegId(7), 0).unwrap();
    stage.allow_ssrc(MEDIA_PORT, Ssrc(LEG_SSRC), LegId(7)).unwrap();

    let receiver = sfu_ns.enter(|| UdpSocket::bind("10.77.0.2:20000")).expect("bind receiver");
    receiver.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let (legit, flood_sockets) = sender_ns.enter(|| {
        let legit = UdpSocket::bind(leg_addr).unwrap();
        let mut flood: Vec<UdpSocket> = (0..16).map(|i| UdpSocket::bind(("10.77.0.1", 40000 + i)).unwrap()).collect();
        // Right port, wrong address.
        flood.push(UdpSocket::bind("10.77.0.3:5000").unwrap());
        (legit, flood)
    });
    let dst: SocketAddr = "10.77.0.2:20000".parse().unwrap();

    const FLOOD: u64 = 40_000;
    const LEGIT: u64 = 400;
    const BAD_SSRC: u64 = 1_000;
    let before = stage.verdict_counts().unwrap();
    let recv = std::thread::spawn(move || {
        let mut from_leg = 0u64;
        let mut others = Vec::new();
        let mut buf = [0u8; 2048];
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match receiver.recv_from(&mut buf) {
                Ok((n, from)) if from == leg_addr && n >= 12 && buf[8..12] == LEG_SSRC.to_be_bytes() => {
                    from_leg += 1;
                }
                Ok((_, from)) => others.push(from),
                Err(_) if from_leg >= LEGIT => break,
                Err(_) => {}
            }
        }
        (from_leg, others)
    });

    let t0 = Instant::now();
    let mut flood_sent = 0u64;
    let mut seq = 0u16;
    for i in 0..FLOOD {
        let s = &flood_sockets[i as usize % flood_sockets.len()];
        s.send_to(&rtp(LEG_SSRC, i as u16), dst).unwrap();
        flood_sent += 1;
        if i % (FLOOD / LEGIT) == 0 {
            seq = seq.wrapping_add(1);
            legit.send_to(&rtp(LEG_SSRC, seq), dst).unwrap();
        }
        if i % (FLOOD / BAD_SSRC) == 0 {
            legit.send_to(&rtp(0xbad0_0000 | i as u32, 1), dst).unwrap();
        }
        if i % 256 == 0 {
            // Keep within the veth NAPI ring (256 frames) so every datagram reaches XDP: this
            // test checks exact counts, not capacity.
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    let flood_secs = t0.elapsed().as_secs_f64();
    let (from_leg, others) = recv.join().unwrap();
    let after = stage.verdict_counts().unwrap();
    let delta = |v| after.get(v) - before.get(v);
    let drops = common::netns::run("ip", &["netns", "exec", &sfu_ns.name, "ip", "-s", "link", "show", &veth.b]);
    println!(
        "flood: {flood_sent} datagrams in {flood_secs:.3}s ({:.0}/s offered, paced); counters: {:?}",
        flood_sent as f64 / flood_secs,
        after.iter().filter(|(_, n)| *n > 0).map(|(v, n)| (v.name(), n)).collect::<Vec<_>>()
    );
    assert!(others.is_empty(), "flood reached the socket from {:?}", &others[..others.len().min(5)]);
    assert_eq!(from_leg, LEGIT, "leg packets received (link stats:\n{drops})");
    assert_eq!(delta(V::PassMedia), LEGIT);
    assert_eq!(delta(V::DropUnknownSource), FLOOD, "link stats:\n{drops}");
    assert_eq!(delta(V::DropUnknownSsrc), BAD_SSRC);
    assert_eq!(delta(V::DropMalformed) + delta(V::DropNotRtc), 0);
}

/// Interfaces without native XDP (a bridge here) get the program in generic (SKB) mode, with a
/// warning.
#[test]
fn attach_falls_back_to_generic_mode() {
    let ns = NetNs::new("gen");
    let dev = format!("shbr{}", std::process::id());
    ns.ip(&["link", "add", &dev, "type", "bridge"]);
    ns.ip(&["link", "set", &dev, "up"]);
    let mut stage = XdpStage::load_unpinned().unwrap();
    let mode = ns.enter(|| stage.attach(&dev)).expect("attach");
    assert_eq!(mode, AttachMode::Generic);
    let shown = ns.exec("ip", &["link", "show", &dev]);
    assert!(shown.contains("xdpgeneric"), "{shown}");
    drop(stage);
    let shown = ns.exec("ip", &["link", "show", &dev]);
    assert!(!shown.contains("xdp"), "unpinned stage detaches on drop: {shown}");
}

/// The same shield over IPv6 (keys hold the 16-byte address as is).
#[test]
fn ipv6_flood_is_dropped_and_the_leg_gets_through() {
    let sender_ns = NetNs::new("s6A");
    let sfu_ns = NetNs::new("s6B");
    let veth = Veth::new("s6", &sender_ns, &[], &sfu_ns, &[]);
    for (ns, dev, addrs) in [(&sender_ns, &veth.a, ["fd00:77::1/64", "fd00:77::3/64"].as_slice()), (&sfu_ns, &veth.b, ["fd00:77::2/64"].as_slice())] {
        for a in addrs {
            ns.ip(&["addr", "add", a, "dev", dev, "nodad"]);
        }
    }
    sender_ns.ip(&["neigh", "replace", "fd00:77::2", "lladdr", &common::netns::mac_str(veth.mac_b), "dev", &veth.a, "nud", "permanent"]);
    for a in ["fd00:77::1", "fd00:77::3"] {
        sfu_ns.ip(&["neigh", "replace", a, "lladdr", &common::netns::mac_str(veth.mac_a), "dev", &veth.b, "nud", "permanent"]);
    }

    let mut stage = XdpStage::load_unpinned().unwrap();
    sfu_ns.enter(|| stage.attach(&veth.b)).unwrap();
    stage.set_port_range(20000..=20099).unwrap();
    let leg_addr: SocketAddr = "[fd00:77::1]:5000".parse().unwrap();
    stage.add_leg(MEDIA_PORT, leg_addr, LegId(1), 0).unwrap();
    stage.allow_ssrc(MEDIA_PORT, Ssrc(LEG_SSRC), LegId(1)).unwrap();
    let receiver = sfu_ns.enter(|| UdpSocket::bind("[fd00:77::2]:20000")).unwrap();
    receiver.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let (legit, flood) = sender_ns.enter(|| (UdpSocket::bind(leg_addr).unwrap(), UdpSocket::bind("[fd00:77::3]:5000").unwrap()));
    let dst: SocketAddr = "[fd00:77::2]:20000".parse().unwrap();
    let before = stage.verdict_counts().unwrap();
    for i in 0..2000u16 {
        flood.send_to(&rtp(LEG_SSRC, i), dst).unwrap();
        if i % 20 == 0 {
            legit.send_to(&rtp(LEG_SSRC, i), dst).unwrap();
        }
        if i % 256 == 0 {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    let mut got = 0;
    let mut buf = [0u8; 2048];
    while let Ok((_, from)) = receiver.recv_from(&mut buf) {
        assert_eq!(from, leg_addr, "only the leg gets through");
        got += 1;
    }
    let after = stage.verdict_counts().unwrap();
    assert_eq!(got, 100);
    assert_eq!(after.get(V::PassMedia) - before.get(V::PassMedia), 100);
    assert_eq!(after.get(V::DropUnknownSource) - before.get(V::DropUnknownSource), 2000);
}
