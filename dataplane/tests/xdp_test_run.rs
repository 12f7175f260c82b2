//! Table-driven `BPF_PROG_TEST_RUN` tests of the XDP program: crafted frames in, verdict, counter
//! and output frame checked. Needs root (the program is loaded into the running kernel).

mod common;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use common::packet::{Frame, Ip, MAC_A, checksums_ok, dtls, rtcp, rtp, stun};
use sluice_common::XdpVerdict as V;
use sluice_core::ids::{LegId, Ssrc};
use sluice_dataplane::xdp::{Egress, RelayRoute, XdpStage};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

const LOCAL4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const PEER4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const OTHER4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const RELAY_PEER4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
const RELAY_PEER4_B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 8);
const LOCAL6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100);
const PEER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
const RELAY_PEER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7);

const PORT: u16 = 20000; // leg 1 (v4) and leg 3 (v4, no SSRCs)
const PORT6: u16 = 20001; // leg 2 (v6)
const RELAY_PORT: u16 = 20050;
const RELAY_PORT6: u16 = 20051;
const RELAY_PORT_REDIRECT: u16 = 20052;
const WILD_REMOTE_PORT: u16 = 20020; // leg 4, remote not latched (any-remote entry); leg 8 exact
const WILD_SSRC_PORT: u16 = 20021; // leg 5 at PEER4:5000, any SSRC
const WILD_SSRC_OTHER_PORT: u16 = 20022; // leg 6 at PEER4:5000, any-SSRC entry of leg 7
const SSRC4: u32 = 0x4444_4444;
const SSRC1: u32 = 0x1111_1111;
const SSRC2: u32 = 0x2222_2222;

const MAC_NEXT: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];
const MAC_OUT: [u8; 6] = [0x02, 0, 0, 0, 0, 0x88];

fn relay4() -> RelayRoute {
    RelayRoute {
        src: "198.51.100.1:30000".parse().unwrap(),
        dst: "203.0.113.9:40000".parse().unwrap(),
        src_mac: MAC_OUT,
        dst_mac: MAC_NEXT,
        egress: Egress::SameInterface,
    }
}

fn relay6() -> RelayRoute {
    RelayRoute {
        src: "[2001:db8:1::1]:30001".parse().unwrap(),
        dst: "[2001:db8:2::9]:40001".parse().unwrap(),
        src_mac: MAC_OUT,
        dst_mac: MAC_NEXT,
        egress: Egress::SameInterface,
    }
}

fn stage() -> XdpStage {
    let mut s = XdpStage::load_unpinned().expect("load the XDP program (needs root)");
    s.set_port_range(20000..=20099).unwrap();
    s.add_leg(PORT, SocketAddr::new(PEER4.into(), 5000), LegId(1), 0).unwrap();
    s.allow_ssrc(PORT, Ssrc(SSRC1), LegId(1)).unwrap();
    s.add_leg(PORT, SocketAddr::new(OTHER4.into(), 5000), LegId(3), 0).unwrap();
    s.add_leg(PORT6, SocketAddr::new(PEER6.into(), 5000), LegId(2), 1).unwrap();
    s.allow_ssrc(PORT6, Ssrc(SSRC2), LegId(2)).unwrap();
    s.add_relay(RELAY_PORT, SocketAddr::new(RELAY_PEER4.into(), 7000), &relay4()).unwrap();
    s.add_relay(RELAY_PORT6, SocketAddr::new(RELAY_PEER6.into(), 7000), &relay6()).unwrap();
    s.add_leg_any_remote(WILD_REMOTE_PORT, LegId(4), 0).unwrap();
    s.allow_ssrc(WILD_REMOTE_PORT, Ssrc(SSRC4), LegId(4)).unwrap();
    s.add_leg(WILD_REMOTE_PORT, SocketAddr::new(PEER4.into(), 5000), LegId(8), 0).unwrap();
    s.add_leg(WILD_SSRC_PORT, SocketAddr::new(PEER4.into(), 5000), LegId(5), 0).unwrap();
    s.allow_any_ssrc(WILD_SSRC_PORT, LegId(5)).unwrap();
    s.add_leg(WILD_SSRC_OTHER_PORT, SocketAddr::new(PEER4.into(), 5000), LegId(6), 0).unwrap();
    s.allow_any_ssrc(WILD_SSRC_OTHER_PORT, LegId(7)).unwrap();
    // Loopback (ifindex 1) stands in for another interface: BPF_PROG_TEST_RUN only reports the
    // verdict, nothing is transmitted.
    let redirect = RelayRoute { egress: Egress::Interface(1), ..relay4() };
    s.add_relay(RELAY_PORT_REDIRECT, SocketAddr::new(RELAY_PEER4_B.into(), 7000), &redirect).unwrap();
    s
}

/// The frame the relay rewrite must produce, built from scratch with full checksums.
fn relayed(mut f: Frame, route: &RelayRoute) -> Vec<u8> {
    f.dst_mac = route.dst_mac;
    f.src_mac = route.src_mac;
    f.sport = route.src.port();
    f.dport = route.dst.port();
    match (&mut f.ip, route.src.ip(), route.dst.ip()) {
        (Ip::V4 { src, dst, .. }, std::net::IpAddr::V4(s), std::net::IpAddr::V4(d)) => {
            *src = s;
            *dst = d;
        }
        (Ip::V6 { src, dst, .. }, std::net::IpAddr::V6(s), std::net::IpAddr::V6(d)) => {
            *src = s;
            *dst = d;
        }
        _ => unreachable!(),
    }
    f.build()
}

enum Out {
    Unchanged,
    Bytes(Vec<u8>),
}

struct Case {
    name: &'static str,
    input: Vec<u8>,
    action: u32,
    verdict: V,
    output: Out,
}

fn case(name: &'static str, input: Vec<u8>, action: u32, verdict: V) -> Case {
    Case { name, input, action, verdict, output: Out::Unchanged }
}

fn v4(from: (Ipv4Addr, u16), to_port: u16, payload: Vec<u8>) -> Frame {
    Frame::v4(from, (LOCAL4, to_port), payload)
}

fn v6(from: (Ipv6Addr, u16), to_port: u16, payload: Vec<u8>) -> Frame {
    Frame::v6(from, (LOCAL6, to_port), payload)
}

fn cases() -> Vec<Case> {
    let leg1 = (PEER4, 5000);
    let leg2 = (PEER6, 5000);
    let known_rtp = v4(leg1, PORT, rtp(SSRC1, 1));
    let mut c = vec![
        // Not for us.
        case(
            "arp",
            {
                let mut f = vec![0xff; 6];
                f.extend_from_slice(&MAC_A);
                f.extend_from_slice(&[0x08, 0x06]);
                f.extend_from_slice(&[0; 28]);
                f
            },
            XDP_PASS,
            V::PassNotUdp,
        ),
        case(
            "ipv4 tcp",
            {
                let mut f = known_rtp.clone();
                if let Ip::V4 { proto, .. } = &mut f.ip {
                    *proto = 6
                }
                f.build()
            },
            XDP_PASS,
            V::PassNotUdp,
        ),
        case(
            "ipv4 first fragment (MF)",
            {
                let mut f = known_rtp.clone();
                if let Ip::V4 { frag, .. } = &mut f.ip {
                    *frag = 0x2000
                }
                f.build()
            },
            XDP_PASS,
            V::PassNotUdp,
        ),
        case(
            "ipv4 later fragment",
            {
                let mut f = known_rtp.clone();
                if let Ip::V4 { frag, .. } = &mut f.ip {
                    *frag = 0x0010
                }
                f.build()
            },
            XDP_PASS,
            V::PassNotUdp,
        ),
        case(
            "ipv6 hop-by-hop extension header",
            {
                let mut f = v6(leg2, PORT6, rtp(SSRC2, 1));
                if let Ip::V6 { next, .. } = &mut f.ip {
                    *next = 0
                }
                f.build()
            },
            XDP_PASS,
            V::PassNotUdp,
        ),
        case("ipv4 udp below range", v4(leg1, 19999, rtp(SSRC1, 1)).build(), XDP_PASS, V::PassOutsideRange),
        case("ipv4 udp above range", v4(leg1, 20100, rtp(SSRC1, 1)).build(), XDP_PASS, V::PassOutsideRange),
        case("ipv6 udp dns", v6(leg2, 53, vec![0; 12]).build(), XDP_PASS, V::PassOutsideRange),
        // RFC 7983 classes.
        case("stun 0 from unknown source", v4((OTHER4, 9), PORT, stun()).build(), XDP_PASS, V::PassStun),
        case("stun 3", v4(leg1, PORT, vec![3; 20]).build(), XDP_PASS, V::PassStun),
        case("stun over ipv6", v6((PEER6, 1), PORT6, stun()).build(), XDP_PASS, V::PassStun),
        case("dtls 20", v4((OTHER4, 9), PORT, vec![20; 13]).build(), XDP_PASS, V::PassDtls),
        case("dtls 22 handshake", v4(leg1, PORT, dtls()).build(), XDP_PASS, V::PassDtls),
        case("dtls 63", v6(leg2, PORT6, vec![63; 13]).build(), XDP_PASS, V::PassDtls),
        case("byte 4", v4(leg1, PORT, vec![4; 20]).build(), XDP_DROP, V::DropNotRtc),
        case("byte 19", v4(leg1, PORT, vec![19; 20]).build(), XDP_DROP, V::DropNotRtc),
        case("byte 64 (TURN channel)", v4(leg1, PORT, vec![64; 20]).build(), XDP_DROP, V::DropNotRtc),
        case("byte 127", v4(leg1, PORT, vec![127; 20]).build(), XDP_DROP, V::DropNotRtc),
        case("byte 192", v4(leg1, PORT, vec![192; 20]).build(), XDP_DROP, V::DropNotRtc),
        case("byte 255", v6(leg2, PORT6, vec![255; 20]).build(), XDP_DROP, V::DropNotRtc),
        // The shield.
        case("rtp known leg and ssrc", known_rtp.build(), XDP_PASS, V::PassMedia),
        case(
            "rtp first byte 191 known",
            {
                let mut p = rtp(SSRC1, 2);
                p[0] = 191;
                v4(leg1, PORT, p).build()
            },
            XDP_PASS,
            V::PassMedia,
        ),
        case("rtcp known leg", v4(leg1, PORT, rtcp(SSRC1)).build(), XDP_PASS, V::PassMedia),
        case("rtcp known leg, any ssrc", v4(leg1, PORT, rtcp(0xdead_beef)).build(), XDP_PASS, V::PassMedia),
        case("rtp unknown source port", v4((PEER4, 5001), PORT, rtp(SSRC1, 1)).build(), XDP_DROP, V::DropUnknownSource),
        case("rtp unknown source address", v4((Ipv4Addr::new(198, 18, 0, 1), 5000), PORT, rtp(SSRC1, 1)).build(), XDP_DROP, V::DropUnknownSource),
        case("rtp known source, other local port", v4(leg1, 20002, rtp(SSRC1, 1)).build(), XDP_DROP, V::DropUnknownSource),
        case("rtcp unknown source", v4((PEER4, 5001), PORT, rtcp(SSRC1)).build(), XDP_DROP, V::DropUnknownSource),
        case("rtp unknown ssrc", v4(leg1, PORT, rtp(0x3333_3333, 1)).build(), XDP_DROP, V::DropUnknownSsrc),
        case("rtp ssrc announced by another leg", v4((OTHER4, 5000), PORT, rtp(SSRC1, 1)).build(), XDP_DROP, V::DropUnknownSsrc),
        case("ipv6 rtp known", v6(leg2, PORT6, rtp(SSRC2, 1)).build(), XDP_PASS, V::PassMedia),
        case("ipv6 rtcp known", v6(leg2, PORT6, rtcp(SSRC2)).build(), XDP_PASS, V::PassMedia),
        case("ipv6 rtp unknown ssrc", v6(leg2, PORT6, rtp(SSRC1, 1)).build(), XDP_DROP, V::DropUnknownSsrc),
        case("ipv6 rtp unknown source", v6((PEER6, 5002), PORT6, rtp(SSRC2, 1)).build(), XDP_DROP, V::DropUnknownSource),
        case("v4-mapped key does not match ipv6 peer", v4(leg1, PORT6, rtp(SSRC2, 1)).build(), XDP_DROP, V::DropUnknownSource),
        case("vlan ipv4 rtp known", known_rtp.clone().vlan(42).build(), XDP_PASS, V::PassMedia),
        case("vlan ipv4 unknown source", v4((PEER4, 1), PORT, rtp(SSRC1, 1)).vlan(42).build(), XDP_DROP, V::DropUnknownSource),
        case("vlan ipv6 stun", v6(leg2, PORT6, stun()).vlan(7).build(), XDP_PASS, V::PassStun),
        case("vlan ipv6 rtp known", v6(leg2, PORT6, rtp(SSRC2, 9)).vlan(7).build(), XDP_PASS, V::PassMedia),
        case(
            "ipv4 options rtp known",
            {
                let mut f = known_rtp.clone();
                if let Ip::V4 { options, .. } = &mut f.ip {
                    *options = vec![1, 1, 1, 0, 0x94, 4, 0, 0]
                }
                f.build()
            },
            XDP_PASS,
            V::PassMedia,
        ),
        case(
            "ipv4 options unknown ssrc",
            {
                let mut f = v4(leg1, PORT, rtp(7, 1));
                if let Ip::V4 { options, .. } = &mut f.ip {
                    *options = vec![1; 40]
                }
                f.build()
            },
            XDP_DROP,
            V::DropUnknownSsrc,
        ),
    ];

    // Truncated headers at every layer (BPF_PROG_TEST_RUN rejects frames shorter than an
    // Ethernet header, so the shortest case is a VLAN tag cut short).
    let full4 = known_rtp.build();
    let full4_vlan = known_rtp.clone().vlan(42).build();
    let full6 = v6(leg2, PORT6, rtp(SSRC2, 1)).build();
    c.extend([
        case("truncated vlan tag", full4_vlan[..16].to_vec(), XDP_DROP, V::DropMalformed),
        case("truncated ipv4 header", full4[..14 + 19].to_vec(), XDP_DROP, V::DropMalformed),
        case(
            "truncated ipv4 options",
            {
                let mut f = full4[..14 + 24].to_vec();
                f[14] = 0x4f; // IHL 15: 60 bytes claimed
                f
            },
            XDP_DROP,
            V::DropMalformed,
        ),
        case(
            "ipv4 ihl below 5",
            {
                let mut f = full4.clone();
                f[14] = 0x44;
                f
            },
            XDP_DROP,
            V::DropMalformed,
        ),
        case(
            "ipv4 version mismatch",
            {
                let mut f = full4.clone();
                f[14] = 0x65;
                f
            },
            XDP_DROP,
            V::DropMalformed,
        ),
        case("truncated udp header (v4)", full4[..14 + 20 + 7].to_vec(), XDP_DROP, V::DropMalformed),
        case("truncated ipv6 header", full6[..14 + 39].to_vec(), XDP_DROP, V::DropMalformed),
        case("truncated udp header (v6)", full6[..14 + 40 + 5].to_vec(), XDP_DROP, V::DropMalformed),
        case("truncated udp header (vlan v4)", full4_vlan[..18 + 20 + 4].to_vec(), XDP_DROP, V::DropMalformed),
        case("empty udp payload on a media port", v4(leg1, PORT, vec![]).build(), XDP_DROP, V::DropMalformed),
        case("rtp one byte", v4(leg1, PORT, vec![0x80]).build(), XDP_DROP, V::DropMalformed),
        case("rtp 11 bytes", v4(leg1, PORT, rtp(SSRC1, 1)[..11].to_vec()).build(), XDP_DROP, V::DropMalformed),
        case("rtp 11 bytes from unknown source", v4((PEER4, 1), PORT, rtp(SSRC1, 1)[..11].to_vec()).build(), XDP_DROP, V::DropMalformed),
        case(
            "rtp 11 bytes padded to the ethernet minimum",
            {
                let mut f = v4(leg1, PORT, rtp(SSRC1, 1)[..11].to_vec()).build();
                f.resize(60, 0);
                f
            },
            XDP_DROP,
            V::DropMalformed,
        ),
        case(
            "stun padded to the ethernet minimum",
            {
                let mut f = v4((OTHER4, 9), PORT, stun()).build();
                f.resize(80, 0);
                f
            },
            XDP_PASS,
            V::PassStun,
        ),
        case(
            "udp length below 8",
            {
                let mut f = full4.clone();
                f[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&7u16.to_be_bytes());
                f
            },
            XDP_DROP,
            V::DropMalformed,
        ),
        case("rtcp 7 bytes", v4(leg1, PORT, rtcp(SSRC1)[..7].to_vec()).build(), XDP_DROP, V::DropMalformed),
        case("ipv6 rtp 11 bytes", v6(leg2, PORT6, rtp(SSRC2, 1)[..11].to_vec()).build(), XDP_DROP, V::DropMalformed),
    ]);

    // Relay legs: rewritten and sent on, checksums fixed incrementally.
    let r4 = v4((RELAY_PEER4, 7000), RELAY_PORT, rtp(0x5555_5555, 77));
    let r4_nocsum = Frame { no_udp_checksum: true, ..r4.clone() };
    let r4_opts = {
        let mut f = r4.clone();
        if let Ip::V4 { options, .. } = &mut f.ip {
            *options = vec![1, 1, 1, 0]
        }
        f
    };
    let r4_stun = v4((RELAY_PEER4, 7000), RELAY_PORT, stun());
    let r4_vlan = r4.clone().vlan(42);
    let r6 = v6((RELAY_PEER6, 7000), RELAY_PORT6, rtp(0x6666_6666, 5));
    let r4_redirect = v4((RELAY_PEER4_B, 7000), RELAY_PORT_REDIRECT, rtp(0x7777_7777, 1));
    for (name, f, route, action, verdict) in [
        ("relay ipv4 rtp", r4, relay4(), XDP_TX, V::RelayTx),
        ("relay ipv4 no udp checksum", r4_nocsum, relay4(), XDP_TX, V::RelayTx),
        ("relay ipv4 with options", r4_opts, relay4(), XDP_TX, V::RelayTx),
        ("relay ipv4 stun (relays do not terminate ICE)", r4_stun, relay4(), XDP_TX, V::RelayTx),
        ("relay vlan ipv4", r4_vlan, relay4(), XDP_TX, V::RelayTx),
        ("relay ipv6 rtp", r6, relay6(), XDP_TX, V::RelayTx),
        ("relay ipv4 redirect to another interface", r4_redirect, RelayRoute { egress: Egress::Interface(1), ..relay4() }, XDP_REDIRECT, V::RelayRedirect),
    ] {
        let input = f.build();
        let expected = relayed(f, &route);
        c.push(Case { name, input, action, verdict, output: Out::Bytes(expected) });
    }
    // Wildcard entries: a leg awaiting its remote, a port taking any SSRC of its leg.
    let from_anyone = (Ipv4Addr::new(198, 51, 100, 77), 61_000);
    c.extend([
        case("rtp from any remote to a leg awaiting its remote", v4(from_anyone, WILD_REMOTE_PORT, rtp(SSRC4, 1)).build(), XDP_PASS, V::PassMedia),
        case("rtcp from any remote to a leg awaiting its remote", v4(from_anyone, WILD_REMOTE_PORT, rtcp(SSRC4)).build(), XDP_PASS, V::PassMedia),
        case("unannounced ssrc to a leg awaiting its remote", v4(from_anyone, WILD_REMOTE_PORT, rtp(SSRC1, 1)).build(), XDP_DROP, V::DropUnknownSsrc),
        case(
            "exact entry wins over the any-remote entry (ssrc is the other leg's)",
            v4((PEER4, 5000), WILD_REMOTE_PORT, rtp(SSRC4, 1)).build(),
            XDP_DROP,
            V::DropUnknownSsrc,
        ),
        case("any ssrc from the leg of an any-ssrc port", v4((PEER4, 5000), WILD_SSRC_PORT, rtp(0x5eed_0001, 1)).build(), XDP_PASS, V::PassMedia),
        case("ipv6 ssrc-0 lookalike does not match an any-ssrc port it is not on", v6((PEER6, 5000), PORT6, rtp(0, 1)).build(), XDP_DROP, V::DropUnknownSsrc),
        case("any-ssrc port still needs a known source", v4((OTHER4, 5000), WILD_SSRC_PORT, rtp(0x5eed_0001, 1)).build(), XDP_DROP, V::DropUnknownSource),
        case("any-ssrc entry belongs to another leg", v4((PEER4, 5000), WILD_SSRC_OTHER_PORT, rtp(0x5eed_0001, 1)).build(), XDP_DROP, V::DropUnknownSsrc),
    ]);
    // Many checksum shapes: vary the payload so carries and the 0xffff corner get exercised.
    for i in 0..64u16 {
        let mut p = rtp(u32::from(i) * 0x0101_0101, i.wrapping_mul(0x1f3d));
        p.truncate(12 + usize::from(i % 20));
        let f = v4((RELAY_PEER4, 7000), RELAY_PORT, p);
        let input = f.build();
        let expected = relayed(f, &relay4());
        c.push(Case { name: "relay ipv4 checksum sweep", input, action: XDP_TX, verdict: V::RelayTx, output: Out::Bytes(expected) });
    }
    c
}

#[test]
fn xdp_verdicts_table() {
    let mut stage = stage();
    let mut failures = Vec::new();
    for case in cases() {
        let before = stage.verdict_counts().unwrap();
        let mut out = vec![0u8; case.input.len() + 256];
        let r = stage.test_run(&case.input, &mut out, 1).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let after = stage.verdict_counts().unwrap();
        let out = &out[..r.len];
        if r.action != case.action {
            failures.push(format!("{}: action {} want {}", case.name, r.action, case.action));
        }
        for v in sluice_common::XdpVerdict::ALL {
            let want = u64::from(v == case.verdict);
            let got = after.get(v) - before.get(v);
            if got != want {
                failures.push(format!("{}: counter {} moved by {got}, want {want}", case.name, v.name()));
            }
        }
        match &case.output {
            Out::Unchanged if out != case.input.as_slice() => {
                failures.push(format!("{}: frame modified", case.name));
            }
            Out::Bytes(want) => {
                if out != want.as_slice() {
                    failures.push(format!("{}: output\n  got  {}\n  want {}", case.name, hex::encode(out), hex::encode(want)));
                }
                if !checksums_ok(out) {
                    failures.push(format!("{}: checksums wrong in output", case.name));
                }
            }
            Out::Unchanged => {}
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn relay_entries_reject_mixed_families() {
    let mut stage = XdpStage::load_unpinned().unwrap();
    let route = RelayRoute { dst: "[2001:db8::9]:1".parse().unwrap(), ..relay4() };
    let err = stage.add_relay(RELAY_PORT, SocketAddr::new(RELAY_PEER4.into(), 7000), &route).unwrap_err();
    assert!(err.to_string().contains("address family"), "{err}");
    let route = RelayRoute { egress: Egress::Interface(0), ..relay4() };
    assert!(stage.add_relay(RELAY_PORT, SocketAddr::new(RELAY_PEER4.into(), 7000), &route).is_err());
}

#[test]
fn removing_entries_closes_the_shield_again() {
    let mut stage = stage();
    let frame = v4((PEER4, 5000), PORT, rtp(SSRC1, 1)).build();
    let mut out = vec![0u8; frame.len() + 256];
    assert_eq!(stage.test_run(&frame, &mut out, 1).unwrap().action, XDP_PASS);
    stage.revoke_ssrc(PORT, Ssrc(SSRC1)).unwrap();
    assert_eq!(stage.test_run(&frame, &mut out, 1).unwrap().action, XDP_DROP);
    stage.remove_leg(PORT, SocketAddr::new(PEER4.into(), 5000)).unwrap();
    let before = stage.verdict_counts().unwrap().get(V::DropUnknownSource);
    assert_eq!(stage.test_run(&frame, &mut out, 1).unwrap().action, XDP_DROP);
    assert_eq!(stage.verdict_counts().unwrap().get(V::DropUnknownSource), before + 1);
    let relay = v4((RELAY_PEER4, 7000), RELAY_PORT, rtp(1, 1)).build();
    assert_eq!(stage.test_run(&relay, &mut out, 1).unwrap().action, XDP_TX);
    stage.remove_relay(RELAY_PORT, SocketAddr::new(RELAY_PEER4.into(), 7000)).unwrap();
    assert_eq!(stage.test_run(&relay, &mut out, 1).unwrap().action, XDP_DROP, "now an unknown source");
    // Port range off: everything passes untouched.
    stage.clear_port_range().unwrap();
    assert_eq!(stage.test_run(&frame, &mut out, 1).unwrap().action, XDP_PASS);
}

/// The daemon's life cycle of a leg whose remote is unknown: the any-remote entry lets its first
/// packets through from wherever they come; once the worker latched the remote, the exact entry
/// replaces the wildcard and everyone else is dropped again.
#[test]
fn latched_remote_replaces_the_any_remote_entry() {
    let mut stage = stage();
    let mut out = vec![0u8; 2048];
    let mut run = |stage: &mut XdpStage, from: (Ipv4Addr, u16)| {
        let f = v4(from, WILD_REMOTE_PORT, rtp(SSRC4, 1)).build();
        stage.test_run(&f, &mut out, 1).unwrap().action
    };
    let (a, b) = ((Ipv4Addr::new(198, 51, 100, 1), 4000), (Ipv4Addr::new(198, 51, 100, 2), 4000));
    assert_eq!(run(&mut stage, a), XDP_PASS);
    assert_eq!(run(&mut stage, b), XDP_PASS);
    stage.add_leg(WILD_REMOTE_PORT, SocketAddr::new(a.0.into(), a.1), LegId(4), 0).unwrap();
    stage.remove_leg_any_remote(WILD_REMOTE_PORT).unwrap();
    assert_eq!(run(&mut stage, a), XDP_PASS, "the latched remote");
    let before = stage.verdict_counts().unwrap().get(V::DropUnknownSource);
    assert_eq!(run(&mut stage, b), XDP_DROP, "anyone else");
    assert_eq!(stage.verdict_counts().unwrap().get(V::DropUnknownSource), before + 1);
    // Removing an absent wildcard is not an error (the daemon's diff may race a restart).
    stage.remove_leg_any_remote(WILD_REMOTE_PORT).unwrap();
    stage.revoke_any_ssrc(WILD_REMOTE_PORT).unwrap();
}

/// AF_XDP mode with no socket in the XSKMAP (test-run frames arrive on queue 0, which has none):
/// known media falls back to XDP_PASS and counts `pass_media`, never `redirect_xsk`; everything
/// else is unaffected by the mode; switching the mode off and changing the port range keep each
/// other.
#[test]
fn af_xdp_mode_without_a_socket_passes_known_media() {
    let mut stage = stage();
    stage.set_af_xdp(true).unwrap();
    let run = |frame: &[u8], stage: &mut XdpStage| {
        let before = stage.verdict_counts().unwrap();
        let mut out = vec![0u8; frame.len() + 256];
        let r = stage.test_run(frame, &mut out, 1).unwrap();
        assert_eq!(&out[..r.len], frame, "frame untouched");
        let after = stage.verdict_counts().unwrap();
        let moved: Vec<_> = V::ALL.iter().filter(|v| after.get(**v) != before.get(**v)).copied().collect();
        (r.action, moved)
    };
    let rtp4 = v4((PEER4, 5000), PORT, rtp(SSRC1, 1)).build();
    let rtcp4 = v4((PEER4, 5000), PORT, rtcp(SSRC1)).build();
    let rtp6 = v6((PEER6, 5000), PORT6, rtp(SSRC2, 1)).build();
    for frame in [&rtp4, &rtcp4, &rtp6] {
        assert_eq!(run(frame, &mut stage), (XDP_PASS, vec![V::PassMedia]));
    }
    let unknown = v4((PEER4, 5000), PORT, rtp(0xdead, 1)).build();
    assert_eq!(run(&unknown, &mut stage), (XDP_DROP, vec![V::DropUnknownSsrc]));
    let stun4 = v4((PEER4, 5000), PORT, stun()).build();
    assert_eq!(run(&stun4, &mut stage), (XDP_PASS, vec![V::PassStun]));

    // The port range and the mode are independent fields of one config entry.
    stage.set_port_range(20000..=20000).unwrap();
    assert_eq!(run(&rtp6, &mut stage), (XDP_PASS, vec![V::PassOutsideRange]));
    assert_eq!(run(&rtp4, &mut stage), (XDP_PASS, vec![V::PassMedia]));
    stage.set_af_xdp(false).unwrap();
    stage.set_port_range(20000..=20099).unwrap();
    assert_eq!(run(&rtp6, &mut stage), (XDP_PASS, vec![V::PassMedia]));
    assert_eq!(stage.verdict_counts().unwrap().get(V::RedirectXsk), 0);
}

/// RTP from `ssrc` with one-byte header extensions (RFC 8285): `elements` as (id, data), with
/// `csrcs` CSRCs before them.
fn rtp_with_ext(ssrc: u32, seq: u16, csrcs: u8, elements: &[(u8, &[u8])]) -> Vec<u8> {
    let mut p = vec![0x90 | csrcs, 111];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&960u32.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    for c in 0..csrcs {
        p.extend_from_slice(&u32::from(c).to_be_bytes());
    }
    let mut body = Vec::new();
    for (id, data) in elements {
        body.push(id << 4 | (data.len() as u8 - 1));
        body.extend_from_slice(data);
    }
    while body.len() % 4 != 0 {
        body.push(0);
    }
    p.extend_from_slice(&[0xbe, 0xde]);
    p.extend_from_slice(&((body.len() / 4) as u16).to_be_bytes());
    p.extend_from_slice(&body);
    p.extend_from_slice(&[0x55; 40]);
    p
}

/// Issue 16 item 4, the XDP half: a gated audio SSRC's quiet packets (RFC 6464 level in the
/// gated extension id, not speech) die in XDP, counted `silent_audio`, except every 32nd; speech,
/// a packet without the level, a level behind other elements and CSRCs, the V bit of a sender
/// with a VAD, and ungated SSRCs all pass; ungating stops the drop.
#[test]
fn silence_of_a_gated_audio_stream_dies_in_xdp() {
    let mut stage = stage();
    stage.gate_silence(PORT, Ssrc(SSRC1), 3, true).unwrap();
    let run = |stage: &mut XdpStage, payload: Vec<u8>| -> (u32, V) {
        let input = v4((PEER4, 5000), PORT, payload).build();
        let before = stage.verdict_counts().unwrap();
        let mut out = vec![0u8; input.len() + 256];
        let r = stage.test_run(&input, &mut out, 1).unwrap();
        let after = stage.verdict_counts().unwrap();
        let moved: Vec<V> = V::ALL.into_iter().filter(|v| after.get(*v) != before.get(*v)).collect();
        assert_eq!(moved.len(), 1, "one verdict per packet: {moved:?}");
        (r.action, moved[0])
    };
    let quiet = |seq| rtp_with_ext(SSRC1, seq, 0, &[(1, &[0x42]), (3, &[100])]);
    // 31 quiet packets dropped, the 32nd passes (the worker's keepalive), then again.
    let verdicts: Vec<(u32, V)> = (0..64).map(|i| run(&mut stage, quiet(i))).collect();
    for (i, v) in verdicts.iter().enumerate() {
        let want = if i % 32 == 31 { (XDP_PASS, V::PassMedia) } else { (XDP_DROP, V::DropSilentAudio) };
        assert_eq!(*v, want, "packet {i}");
    }
    // Speech (V set, loud) passes and restarts the run; so does a level behind CSRCs and
    // padding with another element first.
    assert_eq!(run(&mut stage, rtp_with_ext(SSRC1, 100, 0, &[(3, &[0x80 | 30])])), (XDP_PASS, V::PassMedia));
    assert_eq!(run(&mut stage, rtp_with_ext(SSRC1, 101, 2, &[(5, &[1, 2, 3]), (3, &[0x80 | 20])])), (XDP_PASS, V::PassMedia));
    assert_eq!(run(&mut stage, rtp_with_ext(SSRC1, 102, 2, &[(5, &[1, 2, 3]), (3, &[90])])), (XDP_DROP, V::DropSilentAudio));
    // A loud level without V from a sender with a VAD is not speech.
    assert_eq!(run(&mut stage, rtp_with_ext(SSRC1, 103, 0, &[(3, &[20])])), (XDP_DROP, V::DropSilentAudio));
    // Without the level (no extension, another id, two-byte profile): the worker decides.
    assert_eq!(run(&mut stage, rtp(SSRC1, 104)), (XDP_PASS, V::PassMedia));
    assert_eq!(run(&mut stage, rtp_with_ext(SSRC1, 105, 0, &[(4, &[100])])), (XDP_PASS, V::PassMedia));
    let mut two_byte = rtp_with_ext(SSRC1, 106, 0, &[(3, &[100])]);
    two_byte[12..14].copy_from_slice(&[0x10, 0x00]);
    assert_eq!(run(&mut stage, two_byte), (XDP_PASS, V::PassMedia));
    // A sender without a VAD: its level alone decides.
    stage.gate_silence(PORT, Ssrc(SSRC1), 3, false).unwrap();
    assert_eq!(run(&mut stage, rtp_with_ext(SSRC1, 107, 0, &[(3, &[20])])), (XDP_PASS, V::PassMedia));
    assert_eq!(run(&mut stage, rtp_with_ext(SSRC1, 108, 0, &[(3, &[70])])), (XDP_DROP, V::DropSilentAudio));
    // Ungated: everything passes.
    stage.ungate_silence(PORT, Ssrc(SSRC1)).unwrap();
    assert_eq!(run(&mut stage, quiet(109)), (XDP_PASS, V::PassMedia));
    assert!(stage.silence_gates().unwrap().is_empty());
}

/// A shared port as the shield installs it (`sluice_dataplane::shield::shared_leg`): every
/// leg's exact (port, remote) entry and every SSRC announced on the port carry one value, so
/// each known remote's media passes (to the port's one worker), strangers are dropped, and
/// STUN from anyone passes to the slow path (which finds the leg by USERNAME).
#[test]
fn shared_port_media_from_known_remotes_passes_and_strangers_drop() {
    const SHARED: u16 = 20_090;
    let v = LegId(sluice_dataplane::shield::shared_leg(SHARED));
    let mut stage = XdpStage::load_unpinned().expect("load the XDP program (needs root)");
    stage.set_port_range(20000..=20099).unwrap();
    stage.add_leg(SHARED, SocketAddr::new(PEER4.into(), 5000), v, 0).unwrap();
    stage.add_leg(SHARED, SocketAddr::new(OTHER4.into(), 5000), v, 0).unwrap();
    stage.allow_ssrc(SHARED, Ssrc(SSRC1), v).unwrap();
    stage.allow_ssrc(SHARED, Ssrc(SSRC2), v).unwrap();
    let mut out = vec![0u8; 2048];
    let mut run = |from: Ipv4Addr, payload: Vec<u8>| stage.test_run(&v4((from, 5000), SHARED, payload).build(), &mut out, 1).unwrap().action;
    assert_eq!(run(PEER4, rtp(SSRC1, 1)), XDP_PASS, "leg A's media");
    assert_eq!(run(OTHER4, rtp(SSRC2, 1)), XDP_PASS, "leg B's media");
    assert_eq!(run(OTHER4, rtcp(SSRC2)), XDP_PASS, "leg B's RTCP");
    assert_eq!(run(RELAY_PEER4, rtp(SSRC1, 1)), XDP_DROP, "a stranger");
    assert_eq!(run(PEER4, rtp(SSRC4, 1)), XDP_DROP, "an SSRC nobody on the port announced");
    assert_eq!(run(RELAY_PEER4, stun()), XDP_PASS, "STUN from anyone goes to the slow path");
}

/// ChannelData on a routed channel, from the TURN client's transport to the TURN port: the
/// stage's TURN program strips the header, rewrites the datagram to come from the relayed
/// address and go to the leg (byte for byte what a frame built from scratch that way is, with
/// correct checksums), and the main program then shields and steers it like any datagram to the
/// leg (an unannounced SSRC is dropped). Everything else to the TURN port passes to the server
/// untouched: STUN, an unrouted channel, another client's channel, padded ChannelData; with the
/// TURN port unset the port is outside the range again.
#[test]
fn turn_channel_data_on_a_route_is_unwrapped_in_xdp_and_the_rest_goes_to_the_server() {
    const TURN: u16 = 3478;
    const LEG: u16 = 20030;
    const LEG6: u16 = 20031;
    const SSRC: u32 = 0x7777_0001;
    const CLIENT4: (Ipv4Addr, u16) = (Ipv4Addr::new(198, 51, 100, 7), 50_000);
    const CLIENT6: (Ipv6Addr, u16) = (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x77), 50_000);
    let relayed4 = SocketAddr::new(LOCAL4.into(), 45_000);
    let relayed6 = SocketAddr::new(LOCAL6.into(), 45_001);
    let mut stage = stage();
    stage.set_turn_port(TURN).unwrap();
    stage.add_leg(LEG, relayed4, LegId(20), 0).unwrap();
    stage.allow_ssrc(LEG, Ssrc(SSRC), LegId(20)).unwrap();
    stage.add_leg(LEG6, relayed6, LegId(21), 0).unwrap();
    stage.allow_ssrc(LEG6, Ssrc(SSRC), LegId(21)).unwrap();
    let client4 = SocketAddr::new(CLIENT4.0.into(), CLIENT4.1);
    let client6 = SocketAddr::new(CLIENT6.0.into(), CLIENT6.1);
    stage.add_channel(client4, TURN, 0x4001, relayed4, SocketAddr::new(LOCAL4.into(), LEG)).unwrap();
    stage.add_channel(client6, TURN, 0x4001, relayed6, SocketAddr::new(LOCAL6.into(), LEG6)).unwrap();

    let chdata = |channel: u16, inner: &[u8], pad: usize| {
        let mut v = channel.to_be_bytes().to_vec();
        v.extend_from_slice(&(inner.len() as u16).to_be_bytes());
        v.extend_from_slice(inner);
        v.resize(v.len() + pad, 0);
        v
    };
    let run = |stage: &mut XdpStage, frame: &[u8]| {
        let before = stage.verdict_counts().unwrap();
        let mut out = vec![0u8; frame.len() + 256];
        let r = stage.test_run(frame, &mut out, 1).unwrap();
        let after = stage.verdict_counts().unwrap();
        let moved: Vec<_> = V::ALL.iter().filter(|v| after.get(**v) != before.get(**v)).copied().collect();
        (r.action, moved, out[..r.len].to_vec())
    };
    let media = rtp(SSRC, 9);
    let mut failures = Vec::new();
    let mut unwrapped = 0;
    // (name, frame in, frame out)
    let rewritten = [
        ("v4", Frame::v4(CLIENT4, (LOCAL4, TURN), chdata(0x4001, &media, 0)), Frame::v4((LOCAL4, 45_000), (LOCAL4, LEG), media.clone())),
        ("v4 vlan", Frame::v4(CLIENT4, (LOCAL4, TURN), chdata(0x4001, &media, 0)).vlan(7), Frame::v4((LOCAL4, 45_000), (LOCAL4, LEG), media.clone()).vlan(7)),
        (
            "v4 no udp checksum",
            Frame { no_udp_checksum: true, ..Frame::v4(CLIENT4, (LOCAL4, TURN), chdata(0x4001, &media, 0)) },
            Frame { no_udp_checksum: true, ..Frame::v4((LOCAL4, 45_000), (LOCAL4, LEG), media.clone()) },
        ),
        ("v6", Frame::v6(CLIENT6, (LOCAL6, TURN), chdata(0x4001, &media, 0)), Frame::v6((LOCAL6, 45_001), (LOCAL6, LEG6), media.clone())),
        ("v6 vlan", Frame::v6(CLIENT6, (LOCAL6, TURN), chdata(0x4001, &media, 0)).vlan(7), Frame::v6((LOCAL6, 45_001), (LOCAL6, LEG6), media.clone()).vlan(7)),
        // An odd-length payload (the checksum's last word is half padding).
        (
            "v4 odd length",
            Frame::v4(CLIENT4, (LOCAL4, TURN), chdata(0x4001, &[media.as_slice(), &[0xab]].concat(), 0)),
            Frame::v4((LOCAL4, 45_000), (LOCAL4, LEG), [media.as_slice(), &[0xab]].concat()),
        ),
    ];
    for (name, input, want) in &rewritten {
        let (action, moved, out) = run(&mut stage, &input.build());
        unwrapped += 1;
        if (action, moved.as_slice()) != (XDP_PASS, &[V::PassMedia][..]) {
            failures.push(format!("{name}: action {action} verdicts {moved:?}"));
        }
        if out != want.build() {
            failures.push(format!("{name}: output\n  got  {}\n  want {}", hex::encode(&out), hex::encode(want.build())));
        }
        if !checksums_ok(&out) {
            failures.push(format!("{name}: checksums wrong"));
        }
    }
    // A consent check through the channel: unwrapped, then the slow path's (STUN on the leg).
    let (action, moved, out) = run(&mut stage, &Frame::v4(CLIENT4, (LOCAL4, TURN), chdata(0x4001, &stun(), 0)).build());
    unwrapped += 1;
    if (action, moved.as_slice(), out) != (XDP_PASS, &[V::PassStun][..], Frame::v4((LOCAL4, 45_000), (LOCAL4, LEG), stun()).build()) {
        failures.push(format!("stun in a channel: action {action} verdicts {moved:?}"));
    }
    // Unwrapped, then shielded: an SSRC the leg never announced is dropped.
    let (action, moved, _) = run(&mut stage, &Frame::v4(CLIENT4, (LOCAL4, TURN), chdata(0x4001, &rtp(0xdead, 1), 0)).build());
    unwrapped += 1;
    if (action, moved.as_slice()) != (XDP_DROP, &[V::DropUnknownSsrc][..]) {
        failures.push(format!("unknown ssrc in a channel: action {action} verdicts {moved:?}"));
    }
    // To the TURN server, untouched.
    let other_client = (Ipv4Addr::new(198, 51, 100, 8), 50_000);
    let untouched = [
        ("stun to the listener", Frame::v4(CLIENT4, (LOCAL4, TURN), stun())),
        ("unrouted channel", Frame::v4(CLIENT4, (LOCAL4, TURN), chdata(0x4002, &media, 0))),
        ("another client's channel", Frame::v4(other_client, (LOCAL4, TURN), chdata(0x4001, &media, 0))),
        ("padded channel data", Frame::v4(CLIENT4, (LOCAL4, TURN), chdata(0x4001, &media[..media.len() - 1], 1))),
        ("reserved channel number", Frame::v4(CLIENT4, (LOCAL4, TURN), chdata(0x5001, &media, 0))),
        ("three bytes", Frame::v4(CLIENT4, (LOCAL4, TURN), vec![0x40, 0x01, 0])),
    ];
    for (name, input) in &untouched {
        let frame = input.build();
        let (action, moved, out) = run(&mut stage, &frame);
        if (action, moved.as_slice()) != (XDP_PASS, &[V::PassTurn][..]) || out != frame {
            failures.push(format!("{name}: action {action} verdicts {moved:?}, modified {}", out != frame));
        }
    }
    let (packets, bytes) = stage.turn_stats().unwrap();
    if packets != unwrapped {
        failures.push(format!("turn stats: {packets} unwrapped, want {unwrapped}"));
    }
    if bytes < packets * 12 {
        failures.push(format!("turn stats: {bytes} bytes for {packets} packets"));
    }
    // The route removed: the server's again.
    stage.remove_channel_key(XdpStage::channel_key(client4, TURN, 0x4001)).unwrap();
    let frame = Frame::v4(CLIENT4, (LOCAL4, TURN), chdata(0x4001, &media, 0)).build();
    let (action, moved, out) = run(&mut stage, &frame);
    if (action, moved.as_slice()) != (XDP_PASS, &[V::PassTurn][..]) || out != frame {
        failures.push(format!("removed route: action {action} verdicts {moved:?}"));
    }
    // No TURN port: the port is just outside the media range.
    stage.set_turn_port(0).unwrap();
    let frame = Frame::v6(CLIENT6, (LOCAL6, TURN), chdata(0x4001, &media, 0)).build();
    let (action, moved, out) = run(&mut stage, &frame);
    if (action, moved.as_slice()) != (XDP_PASS, &[V::PassOutsideRange][..]) || out != frame {
        failures.push(format!("no turn port: action {action} verdicts {moved:?}"));
    }
    assert_eq!(stage.channel_keys().unwrap().len(), 1);
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}
