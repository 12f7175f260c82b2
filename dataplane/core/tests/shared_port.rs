//! Shared ports (`LegSpec::shared_port`): many legs on one local port, each datagram's leg found
//! by (port, remote). The must-show: a thousand static-key legs on one port forward exactly what
//! the same legs on a port each forward (every output's bytes and destination), because SRTP is
//! deterministic given the same keys and indexes. Plus: strangers dropped and counted, and a
//! WebRTC leg reached through a binding request's USERNAME before its remote is known.

use std::net::SocketAddr;

use sluice_core::forward::{Core, CoreConfig, OutBatch};
use sluice_core::ice::{self, RequestOptions};
use sluice_core::ids::{Generation, LegId};
use sluice_core::srtp::Profile;
use sluice_core::table::{Delta, DtlsRole, EdgeSpec, IceCredentials, KeyMaterial, LegSpec, Op};
use sluice_core::time::Instant;
use sluice_core::verdict::DropReason;
use sluice_sim::endpoint::Endpoint;
use sluice_sim::fixture::{PT_OPUS, audio_track, material, rtp_packet, subscription};
use sluice_sim::meeting::{self, Participant};

const SHARED: u16 = 19_999;
const MEETINGS: u32 = 40;
const SIZE: u32 = 25;

/// One output: the port it leaves from, where it goes, its bytes.
type Sent = (u16, SocketAddr, Vec<u8>);

/// `MEETINGS` meetings of `SIZE` (1,000 legs), every leg at its participant's fixed address, on
/// its own port or (`shared`) all on [`SHARED`].
fn meetings(shared: bool) -> (Core, Vec<Participant>) {
    let mut core = Core::new(CoreConfig::default());
    let mut ops = Vec::new();
    let mut people = Vec::new();
    for m in 0..MEETINGS {
        let (mut o, p) = meeting::build(m, SIZE, Profile::AesCm128HmacSha1_80, 2);
        for op in &mut o {
            if let Op::UpsertLeg(l) = op {
                let addr = p.iter().find(|x| x.leg == l.id).expect("its participant").addr;
                l.remote = Some(addr);
                if shared {
                    (l.local_port, l.shared_port) = (SHARED, true);
                }
            }
        }
        ops.extend(o);
        people.extend(p);
    }
    assert_eq!(people.len(), 1000);
    core.apply(Delta { generation: Generation(1), replace_all: false, ops }).expect("valid meetings");
    (core, people)
}

/// Feeds every participant's audio for `ticks` ticks and one video frame (all layers) to the
/// core, on its leg's port (`shared`: the shared one); returns every output in order.
fn run(shared: bool, ticks: u64) -> (Vec<Sent>, Core) {
    let (mut core, mut people) = meetings(shared);
    let mut out = OutBatch::new(4096);
    let mut sent = Vec::new();
    let mut now = Instant::from_nanos(1_000_000_000);
    for tick in 0..ticks {
        for p in &mut people {
            let port = if shared { SHARED } else { p.port };
            let mut datagrams = vec![p.audio(tick)];
            if tick == 0 {
                datagrams.extend(p.video_frame());
            }
            for mut d in datagrams {
                core.handle_rx(now, port, p.addr, &mut d, &mut out);
                sent.extend(out.iter().map(|(m, b)| (m.local_port, m.dst, b.to_vec())));
                out.clear();
            }
        }
        now = now + core::time::Duration::from_millis(20);
    }
    (sent, core)
}

#[test]
fn a_thousand_legs_on_one_port_forward_what_they_forward_on_a_port_each() {
    let (per_leg, per_leg_core) = run(false, 2);
    let (shared, shared_core) = run(true, 2);
    // 1,000 publishers' audio to 24 others each, twice, plus their video to the layer each
    // subscriber watches.
    assert!(per_leg.len() > 2 * 1000 * 24, "{} outputs", per_leg.len());
    assert_eq!(shared.len(), per_leg.len(), "as many outputs");
    // The port each subscriber's leg has in the per-leg run, by its address.
    let (_, people) = meetings(false);
    let port_of: std::collections::HashMap<SocketAddr, u16> = people.iter().map(|p| (p.addr, p.port)).collect();
    for (i, (a, b)) in per_leg.iter().zip(&shared).enumerate() {
        assert_eq!(a.1, b.1, "output {i}: destination");
        assert!(a.2 == b.2, "output {i} to {}: bytes differ", a.1);
        assert_eq!(a.0, port_of[&a.1], "output {i}: the per-leg run sends from the subscriber's own port");
        assert_eq!(b.0, SHARED, "output {i}: the shared run sends from the shared port");
    }
    let (a, b) = (per_leg_core.stats(), shared_core.stats());
    assert_eq!(a.drops, b.drops);
    // Only the middle layer nobody watches is filtered; every datagram found its leg.
    let filtered = b.drops[DropReason::LayerFiltered as usize];
    assert_eq!(b.drops.iter().sum::<u64>(), filtered, "{:?}", b.drops);
    assert_eq!(b.drops_for(DropReason::UnknownSource), 0);
    assert_eq!((a.tx_packets, a.tx_bytes), (b.tx_packets, b.tx_bytes));
}

#[test]
fn a_stranger_on_a_shared_port_is_dropped_and_counted() {
    let (mut core, mut people) = meetings(true);
    let mut out = OutBatch::new(64);
    let now = Instant::from_nanos(1_000_000_000);
    // A participant's own, valid packet, from an address no leg has.
    let stranger: SocketAddr = "192.0.2.1:4000".parse().unwrap();
    let mut d = people[0].audio(0);
    core.handle_rx(now, SHARED, stranger, &mut d, &mut out);
    assert_eq!(out.len(), 0);
    assert_eq!(core.stats().drops_for(DropReason::UnknownSource), 1);
    // Another participant's address does not make it theirs either: its leg's key refuses it.
    let mut d = people[0].audio(1);
    core.handle_rx(now, SHARED, people[1].addr, &mut d, &mut out);
    assert_eq!(out.len(), 0);
    assert_eq!(core.stats().drops_for(DropReason::UnknownSsrc) + core.stats().drops_for(DropReason::AuthFailed), 1);
    // A STUN binding request from a stranger finds no WebRTC leg (these are static-key legs).
    let mut req = [0u8; 256];
    let n = ice::binding_request(&[1; 12], "nobody:x", "p", RequestOptions { priority: 1, use_candidate: true, tie_breaker: 1 }, &mut req).unwrap();
    core.handle_rx(now, SHARED, stranger, &mut req[..n], &mut out);
    assert_eq!(core.stats().drops_for(DropReason::UnknownSource), 2);
    assert!(core.poll_slow().is_none());
    // From its own address the packet goes through.
    let mut d = people[0].audio(2);
    let addr = people[0].addr;
    core.handle_rx(now, SHARED, addr, &mut d, &mut out);
    assert_eq!(out.len(), (SIZE - 1) as usize);
}

#[test]
fn a_webrtc_leg_on_a_shared_port_is_reached_by_its_ufrag_then_by_the_remote_ice_selected() {
    const PORT: u16 = 41_000;
    let mut core = Core::new(CoreConfig::default());
    let profile = Profile::AesCm128HmacSha1_80;
    let creds = |n: u32| IceCredentials { ufrag: format!("leg{n}"), pwd: format!("password-of-leg-{n}-xxxx") };
    let webrtc = |n: u32| LegSpec {
        edge: Some(Box::new(EdgeSpec {
            local: creds(n),
            remote: IceCredentials { ufrag: format!("peer{n}"), pwd: String::new() },
            role: DtlsRole::Server,
            remote_fingerprint: String::new(),
        })),
        shared_port: true,
        ..LegSpec::new(LegId(n), PORT, KeyMaterial::placeholder(), KeyMaterial::placeholder(), sluice_core::ids::Ssrc(0xfeed_0000 + n))
    };
    let ops = vec![
        Op::UpsertLeg(webrtc(1)),
        Op::UpsertLeg(webrtc(2)),
        Op::UpsertTrack(audio_track(1, 1, 0xA1)),
        Op::UpsertSubscription(subscription(2, 1, 0xB1, None, 0)),
    ];
    core.apply(Delta { generation: Generation(1), replace_all: false, ops }).unwrap();
    let (a, b): (SocketAddr, SocketAddr) = ("192.0.2.10:5000".parse().unwrap(), "192.0.2.20:6000".parse().unwrap());
    let mut out = OutBatch::new(64);
    let now = Instant::from_nanos(1_000_000_000);
    // Binding requests from addresses no leg has yet: each goes to the slow path for the leg
    // its USERNAME names.
    for (n, from) in [(1u32, a), (2, b)] {
        let mut req = [0u8; 256];
        let user = format!("leg{n}:peer{n}");
        let len =
            ice::binding_request(&[n as u8; 12], &user, &creds(n).pwd, RequestOptions { priority: 1, use_candidate: true, tie_breaker: 1 }, &mut req).unwrap();
        core.handle_rx(now, PORT, from, &mut req[..len], &mut out);
        let d = core.poll_slow().expect("to the slow path");
        assert_eq!((d.leg, d.local_port, d.remote), (LegId(n), PORT, from));
    }
    // DTLS from an address no leg has is a stranger's.
    let mut hello = [22u8, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    core.handle_rx(now, PORT, a, &mut hello, &mut out);
    assert!(core.poll_slow().is_none());
    assert_eq!(core.stats().drops_for(DropReason::UnknownSource), 1);
    // ICE selected both pairs; DTLS gave the keys (static ones here).
    let keys = |n: u32| (material(profile, n, 0), material(profile, n, 1));
    for (n, from) in [(1u32, a), (2, b)] {
        core.set_remote(LegId(n), from).unwrap();
        let (rx, tx) = keys(n);
        core.install_edge_keys(LegId(n), rx, tx).unwrap();
        core.set_edge_consent(LegId(n), true);
    }
    assert_eq!(core.set_remote(LegId(2), a), Err(LegId(1)), "a remote another leg of the port has");
    // Now DTLS from the selected remote is the leg's.
    core.handle_rx(now, PORT, a, &mut hello, &mut out);
    assert_eq!(core.poll_slow().map(|d| d.leg), Some(LegId(1)));
    // Media from leg 1's remote reaches leg 2 at its remote, from the shared port.
    let mut publisher = Endpoint::new(&keys(1).0, &keys(1).1).unwrap();
    let mut d = publisher.protect_rtp(&rtp_packet(0xA1, 1, 960, PT_OPUS, false, &[7; 40]));
    core.handle_rx(now, PORT, a, &mut d, &mut out);
    let sent: Vec<_> = out.iter().map(|(m, _)| (m.local_port, m.dst)).collect();
    assert_eq!(sent, vec![(PORT, b)]);
}
