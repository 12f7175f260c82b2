//! A relay leg forwarded in the kernel, and surviving a dataplane restart through its pins.
//!
//! ```text
//!  ns "peers"                                   ns "relay"
//!  10.78.0.1:5000 (peer 1) ──veth──▶ 10.78.0.2:20000  [XDP: rewrite → XDP_TX]
//!  10.78.0.3:6000 (peer 2) ◀──veth── src 10.78.0.2:20001
//! ```
//!
//! XDP_TX frames on veth are only received if the peer end has an XDP program too, so a second,
//! unpinned stage (port range off: everything passes) sits on the peers' end. Needs root.

mod common;

use std::{
    net::{SocketAddr, UdpSocket},
    path::PathBuf,
    time::Duration,
};

use common::netns::{NetNs, PinGuard, Veth};
use sluice_common::XdpVerdict as V;
use sluice_dataplane::xdp::{AttachMode, Egress, PIN_ROOT, RelayRoute, XdpStage};

const K: usize = 100;

/// Sends `K` numbered datagrams from peer 1 and returns how many peer 2 received intact from the
/// relay's address.
fn exchange(tx: &UdpSocket, rx: &UdpSocket, round: u8) -> usize {
    let relay: SocketAddr = "10.78.0.2:20000".parse().unwrap();
    let from: SocketAddr = "10.78.0.2:20001".parse().unwrap();
    for i in 0..K {
        let mut p = common::packet::rtp(0x1234_5678, i as u16);
        p.push(round);
        tx.send_to(&p, relay).unwrap();
    }
    let mut got = 0;
    let mut buf = [0u8; 2048];
    while let Ok((n, src)) = rx.recv_from(&mut buf) {
        if src == from && n == 33 && buf[32] == round {
            got += 1;
        }
        if got == K {
            break;
        }
    }
    got
}

#[test]
fn relay_forwards_in_kernel_and_survives_a_restart() {
    let peers = NetNs::new("rlP");
    let relay_ns = NetNs::new("rlR");
    let veth = Veth::new("rl", &peers, &["10.78.0.1/24", "10.78.0.3/24"], &relay_ns, &["10.78.0.2/24"]);
    let instance = format!("test-relay-{}", std::process::id());
    let pin_dir = PathBuf::from(PIN_ROOT).join(&instance);
    let _guard = PinGuard(pin_dir.clone());

    // The peers' end: any XDP program makes veth deliver XDP_TX frames.
    let mut peer_side = XdpStage::load_unpinned().unwrap();
    peers.enter(|| peer_side.attach(&veth.a)).unwrap();
    peer_side.clear_port_range().unwrap();

    let (tx, rx) = peers.enter(|| (UdpSocket::bind("10.78.0.1:5000"), UdpSocket::bind("10.78.0.3:6000")));
    let (tx, rx) = (tx.unwrap(), rx.unwrap());
    rx.set_read_timeout(Some(Duration::from_millis(500))).unwrap();

    let remote: SocketAddr = "10.78.0.1:5000".parse().unwrap();
    let route = RelayRoute {
        src: "10.78.0.2:20001".parse().unwrap(),
        dst: "10.78.0.3:6000".parse().unwrap(),
        src_mac: veth.mac_b,
        dst_mac: veth.mac_a,
        egress: Egress::SameInterface,
    };

    // 1. First run: load pinned, attach, install the relay.
    let mut stage = XdpStage::open(&instance).expect("open pinned stage");
    assert_eq!(relay_ns.enter(|| stage.attach(&veth.b)).unwrap(), AttachMode::Driver);
    stage.set_port_range(20000..=20099).unwrap();
    stage.add_relay(20000, remote, &route).unwrap();
    assert_eq!(exchange(&tx, &rx, 1), K, "relayed in kernel with valid checksums");
    assert_eq!(stage.verdict_counts().unwrap().get(V::RelayTx), K as u64);

    // 2. The dataplane goes away: the pinned link and maps keep relaying.
    drop(stage);
    for name in sluice_common::ALL_MAPS.iter().copied().chain([&*format!("link-{}", veth.b)]) {
        assert!(pin_dir.join(name).exists(), "{name} pinned");
    }
    assert_eq!(exchange(&tx, &rx, 2), K, "still relaying with no loader alive");

    // 3. Restart: the maps are re-used as they are, the new program is swapped into the link.
    let mut stage = XdpStage::open(&instance).expect("re-open pinned stage");
    assert_eq!(stage.relay(20000, remote).unwrap().map(|t| t.dst_port), Some(6000), "entry survived");
    assert_eq!(stage.verdict_counts().unwrap().get(V::RelayTx), 2 * K as u64, "counters survived");
    assert_eq!(relay_ns.enter(|| stage.attach(&veth.b)).unwrap(), AttachMode::ReusedPinnedLink);
    assert_eq!(exchange(&tx, &rx, 3), K, "relaying through the re-attached program");
    assert_eq!(stage.verdict_counts().unwrap().get(V::RelayTx), 3 * K as u64);

    // 4. The relay entry goes: nothing reaches peer 2 any more.
    stage.remove_relay(20000, remote).unwrap();
    assert_eq!(exchange(&tx, &rx, 4), 0);

    // 5. Tear down: pins removed, program detached.
    stage.unpin().unwrap();
    assert!(!pin_dir.exists(), "pin directory removed");
    let shown = relay_ns.exec("ip", &["link", "show", &veth.b]);
    assert!(!shown.contains("xdp"), "detached: {shown}");
}

/// The relay's other egress: XDP_REDIRECT through the devmap to a second interface.
///
/// ```text
///  ns P 10.80.1.1:5000 ──veth──▶ ns R 10.80.1.2:20000 [XDP: rewrite → REDIRECT to the 2nd veth]
///                                 ns R 10.80.2.2:20001 ──veth──▶ ns C 10.80.2.3:6000
/// ```
#[test]
fn relay_redirects_to_another_interface() {
    let p = NetNs::new("rdP");
    let r = NetNs::new("rdR");
    let c = NetNs::new("rdC");
    let ingress = Veth::new("rdi", &p, &["10.80.1.1/24"], &r, &["10.80.1.2/24"]);
    let egress = Veth::new("rde", &c, &["10.80.2.3/24"], &r, &["10.80.2.2/24"]);

    // veth delivers redirected frames only when its peer has XDP (or GRO) on.
    let mut c_side = XdpStage::load_unpinned().unwrap();
    c.enter(|| c_side.attach(&egress.a)).unwrap();
    c_side.clear_port_range().unwrap();

    let shown = r.exec("ip", &["-o", "link", "show", "dev", &egress.b]);
    let egress_ifindex: u32 = shown.split(':').next().unwrap().trim().parse().unwrap();
    let mut stage = XdpStage::load_unpinned().unwrap();
    assert_eq!(r.enter(|| stage.attach(&ingress.b)).unwrap(), AttachMode::Driver);
    stage.set_port_range(20000..=20099).unwrap();
    let remote: SocketAddr = "10.80.1.1:5000".parse().unwrap();
    let route = RelayRoute {
        src: "10.80.2.2:20001".parse().unwrap(),
        dst: "10.80.2.3:6000".parse().unwrap(),
        src_mac: egress.mac_b,
        dst_mac: egress.mac_a,
        egress: Egress::Interface(egress_ifindex),
    };
    // The kernel resolves a devmap's ifindex in the caller's network namespace.
    r.enter(|| stage.add_relay(20000, remote, &route)).unwrap();

    let tx = p.enter(|| UdpSocket::bind(remote)).unwrap();
    let rx = c.enter(|| UdpSocket::bind("10.80.2.3:6000")).unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let from: SocketAddr = "10.80.2.2:20001".parse().unwrap();
    for i in 0..K {
        tx.send_to(&common::packet::rtp(9, i as u16), "10.80.1.2:20000").unwrap();
    }
    let mut got = 0;
    let mut buf = [0u8; 2048];
    while let Ok((n, src)) = rx.recv_from(&mut buf) {
        assert_eq!((src, n), (from, 32));
        got += 1;
        if got == K {
            break;
        }
    }
    let stats = || {
        format!(
            "counters {:?}\nR:\n{}\nC:\n{}",
            stage.verdict_counts().unwrap().iter().filter(|(_, n)| *n > 0).map(|(v, n)| (v.name(), n)).collect::<Vec<_>>(),
            r.exec("ethtool", &["-S", &egress.b]),
            c.exec("ip", &["-s", "link", "show", &egress.a]),
        )
    };
    assert_eq!(got, K, "redirected with valid checksums; {}", stats());
    assert_eq!(stage.verdict_counts().unwrap().get(V::RelayRedirect), K as u64);
}
