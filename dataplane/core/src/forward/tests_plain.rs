//! A plain-RTP leg (`LegSpec::plain_rtp`, the SRTP profile "none" of a recording tap) through
//! the whole core: what it gets is what an SRTP leg with the same subscriptions decrypts, byte
//! for byte; the SRTP leg's own bytes do not change because a plain leg is there; the plain leg
//! takes nothing from its peer; its streams are checkpointed like any other.

use super::*;
use crate::table::checkpoint::{Checkpoint, RESUME_MARGIN};

/// Peer 3 of [`Meeting`] as a plain-RTP leg: placeholder keys, its remote given (a plain leg
/// latches nothing), 10.0.0.3 (private).
fn plain_leg(n: u32) -> LegSpec {
    let (p, spec) = peer(n);
    LegSpec { remote: Some(p.addr), plain_rtp: true, rx: KeyMaterial::placeholder(), tx: KeyMaterial::placeholder(), ..spec }
}

/// Peer 1 publishes an audio track (1, SSRC 0x1111) and a one-layer VP8 track (2, SSRC 0x100);
/// leg 2 (SRTP, remote given) subscribes to both, and with `plain` so does leg 3, a plain-RTP
/// leg, with the same out-SSRCs and maps.
fn tap_meeting(plain: bool) -> Meeting {
    let mut m = Meeting::new(3);
    let (p2, spec2) = peer(2);
    let mut ops = vec![
        Op::UpsertLeg(LegSpec { remote: Some(p2.addr), ..spec2 }),
        Op::UpsertTrack(audio_track(1, 1, 0x1111)),
        Op::UpsertTrack(video_track(2, 1, &[0x100])),
        Op::UpsertSubscription(sub(2, 1, 0x2001, 0)),
        Op::UpsertSubscription(sub(2, 2, 0x2003, 0)),
    ];
    if plain {
        ops.extend([Op::UpsertLeg(plain_leg(3)), Op::UpsertSubscription(sub(3, 1, 0x2001, 0)), Op::UpsertSubscription(sub(3, 2, 0x2003, 0))]);
    }
    m.apply(ops).unwrap();
    m
}

/// What the publisher sends, as (time, plaintext RTP or RTCP): audio every 20 ms, a VP8
/// keyframe then delta frames of three packets, and two sender reports.
fn publisher_traffic() -> Vec<(Instant, Vec<u8>, bool)> {
    let mut out = Vec::new();
    let mut vseq = 500u16;
    for k in 0..30u16 {
        let t = ms(20 * u64::from(k));
        out.push((t, rtp_packet(0x1111, 1000 + k, 960 * u32::from(k), 111, &[k as u8; 60]), false));
        if k % 2 == 0 {
            for p in 0..3u16 {
                let payload: &[u8] = if p > 0 {
                    &VP8_CONT
                } else if k == 0 {
                    &VP8_KEY
                } else {
                    &VP8_DELTA
                };
                let mut pkt = rtp_packet(0x100, vseq, 3000 * u32::from(k), 96, payload);
                if p == 2 {
                    pkt[1] |= 0x80;
                }
                vseq = vseq.wrapping_add(1);
                out.push((t, pkt, false));
            }
        }
        if k == 10 || k == 25 {
            let mut buf = [0u8; 64];
            let info = rtcp::SenderInfo {
                ntp_timestamp: 0x1111_2222_0000_0000 + u64::from(k),
                rtp_timestamp: 960 * u32::from(k),
                packet_count: u32::from(k),
                octet_count: 60 * u32::from(k),
            };
            let n = rtcp::write_sr(&mut buf, Ssrc(0x1111), &info, &[]).unwrap();
            out.push((t, buf[..n].to_vec(), true));
        }
    }
    out
}

/// Runs the publisher's traffic through `m`; the wire bytes each leg got, in order.
fn run(m: &mut Meeting) -> std::collections::BTreeMap<u32, Vec<Vec<u8>>> {
    let mut got: std::collections::BTreeMap<u32, Vec<Vec<u8>>> = Default::default();
    for (t, plain, is_rtcp) in publisher_traffic() {
        let mut wire = if is_rtcp { m.peers[0].send_rtcp(&plain) } else { m.peers[0].send_rtp(&plain) };
        let (port, addr) = (m.peers[0].port, m.peers[0].addr);
        m.out.clear();
        m.core.handle_rx(t, port, addr, &mut wire, &mut m.out);
        for (meta, bytes) in m.out.iter() {
            got.entry(meta.leg.0).or_default().push(bytes.to_vec());
        }
    }
    got
}

/// The plain leg's copies (RTP and the rewritten sender reports) are exactly what the SRTP leg
/// decrypts from its own, for every packet, and only the tag (and SRTCP index) shorter; the
/// SRTP leg's wire bytes are the same whether or not a plain leg subscribes beside it.
#[test]
fn a_plain_legs_copies_are_the_srtp_legs_decrypted_copies_and_the_srtp_leg_is_unaffected() {
    let mut with = tap_meeting(true);
    let got = run(&mut with);
    let (srtp, plain) = (&got[&2], &got[&3]);
    assert_eq!(srtp.len(), plain.len(), "one copy each per packet");
    // 30 audio packets, 15 frames of 3 video packets, 2 sender reports.
    assert_eq!(plain.len(), 30 + 45 + 2);
    let mut rtcp_seen = 0;
    for (k, (s, p)) in srtp.iter().zip(plain).enumerate() {
        let is_rtcp = demux::classify(p) == demux::PacketClass::Rtcp;
        let overhead = if is_rtcp { PROFILE.rtcp_overhead() } else { PROFILE.rtp_overhead() };
        assert_eq!(s.len(), p.len() + overhead, "copy {k}: the plain copy has no tag");
        let decrypted = with.peers[1].recv(s);
        assert_eq!(&decrypted, p, "copy {k}: byte-identical to the SRTP leg's decrypted copy");
        if is_rtcp {
            rtcp_seen += 1;
            let sr = rtcp::SenderReport::new_checked(&p[..]).expect("a plain SR");
            assert_eq!(sr.sender_ssrc(), Ssrc(0x2001), "rewritten for the subscriber");
        } else {
            let pkt = rtp::Packet::new_checked(&p[..]).expect("plain RTP");
            assert!([0x2001, 0x2003].contains(&pkt.ssrc().0));
        }
    }
    assert_eq!(rtcp_seen, 2);
    assert_eq!(with.core.stats().drops_for(DropReason::SendOnly), 0);

    let mut without = tap_meeting(false);
    let alone = run(&mut without);
    assert_eq!(alone.keys().copied().collect::<Vec<_>>(), vec![2]);
    assert_eq!(&alone[&2], srtp, "the SRTP leg's wire bytes do not depend on a plain leg beside it");
}

/// A plain leg takes nothing from its peer: RTP, RTCP (plain or not) and anything else from its
/// remote are dropped and counted as `send_only`, before any other work; the leg is never
/// active. The spec is checked by the tables: a remote is needed, and a private one.
#[test]
fn a_plain_leg_accepts_nothing_and_needs_a_private_remote() {
    let mut m = tap_meeting(true);
    let (port, addr) = (m.peers[2].port, m.peers[2].addr);
    let mut rr = [0u8; 8];
    let n = rtcp::write_rr(&mut rr, Ssrc(3), &[]).unwrap();
    let srtcp = m.peers[2].send_rtcp(&rr[..n]);
    for (k, bytes) in [rr[..n].to_vec(), srtcp, rtp_packet(0x3333, 1, 0, 111, &[0; 20])].into_iter().enumerate() {
        let mut b = bytes;
        m.out.clear();
        m.core.handle_rx(ms(k as u64), port, addr, &mut b, &mut m.out);
        assert_eq!(m.out.len(), 0);
    }
    assert_eq!(m.core.stats().drops_for(DropReason::SendOnly), 3);
    assert!(!m.core.tables().leg(LegId(3)).unwrap().activity.active);

    let refused = |m: &mut Meeting, spec: LegSpec| match m.apply(vec![Op::UpsertLeg(spec)]) {
        Err(DeltaError::Invalid { field, .. }) => field,
        other => panic!("{other:?}"),
    };
    assert_eq!(refused(&mut m, LegSpec { remote: None, ..plain_leg(4) }), "leg.remote");
    let public = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 7), 5000));
    assert_eq!(refused(&mut m, LegSpec { remote: Some(public), ..plain_leg(4) }), "leg.remote");
    for ok in [
        "127.0.0.1:5000",
        "172.20.1.1:5000",
        "192.168.0.9:5000",
        "169.254.1.1:5000",
        "[::1]:5000",
        "[fd00::7]:5000",
        "[fe80::1]:5000",
        "[::ffff:10.1.2.3]:5000",
    ] {
        m.apply(vec![Op::UpsertLeg(LegSpec { remote: Some(ok.parse().unwrap()), ..plain_leg(4) })]).unwrap_or_else(|e| panic!("{ok}: {e:?}"));
    }
    for bad in ["8.8.8.8:5000", "100.64.0.1:5000", "0.0.0.0:5000", "[2001:db8::1]:5000", "[::ffff:8.8.8.8]:5000"] {
        assert_eq!(refused(&mut m, LegSpec { remote: Some(bad.parse().unwrap()), ..plain_leg(5) }), "leg.remote", "{bad}");
    }
}

/// Turning a leg from SRTP to plain (same placeholder-like material) and back re-keys it: the
/// material alone does not say which keys a leg has.
#[test]
fn switching_a_leg_between_srtp_and_plain_rekeys_it() {
    let mut m = tap_meeting(false);
    let (_, srtp3) = peer(3);
    let srtp_placeholder = LegSpec { remote: plain_leg(3).remote, rx: KeyMaterial::placeholder(), tx: KeyMaterial::placeholder(), ..srtp3 };
    m.apply(vec![Op::UpsertLeg(srtp_placeholder.clone()), Op::UpsertSubscription(sub(3, 1, 0x2001, 0))]).unwrap();
    assert!(!m.core.tables().leg(LegId(3)).unwrap().tx.is_plain());
    m.apply(vec![Op::UpsertLeg(plain_leg(3))]).unwrap();
    assert!(m.core.tables().leg(LegId(3)).unwrap().tx.is_plain());
    m.apply(vec![Op::UpsertLeg(srtp_placeholder)]).unwrap();
    assert!(!m.core.tables().leg(LegId(3)).unwrap().tx.is_plain());
}

/// The dataplane's checkpoint carries a plain leg's subscriptions like any other's: their
/// streams are in it, and a restarted core resumes them RESUME_MARGIN packets on.
#[test]
fn a_plain_legs_streams_are_checkpointed_and_resume() {
    let mut m = tap_meeting(true);
    let got = run(&mut m);
    let last_audio =
        got[&3].iter().rev().find_map(|p| rtp::Packet::new_checked(&p[..]).ok().filter(|p| p.ssrc() == Ssrc(0x2001)).map(|p| p.sequence_number())).unwrap();
    let mut ck = Checkpoint::default();
    m.core.checkpoint(&mut ck);
    let mine: Vec<Ssrc> = ck.streams.iter().filter(|s| s.subscriber == LegId(3)).map(|s| s.out_ssrc).collect();
    assert_eq!(mine.len(), 2, "both of the plain leg's streams: {ck:?}");
    assert!(mine.contains(&Ssrc(0x2001)) && mine.contains(&Ssrc(0x2003)));

    let mut fresh = tap_meeting(true);
    fresh.peers = std::mem::take(&mut m.peers);
    let done = fresh.core.restore(&ck, ms(0), core::time::Duration::from_secs(1));
    assert!(done.streams >= 4, "{done:?}");
    let plain = rtp_packet(0x1111, 1030, 960 * 30, 111, &[9; 60]);
    let mut wire = fresh.peers[0].send_rtp(&plain);
    let (port, addr) = (fresh.peers[0].port, fresh.peers[0].addr);
    fresh.out.clear();
    fresh.core.handle_rx(ms(2_000), port, addr, &mut wire, &mut fresh.out);
    let to_plain: Vec<Vec<u8>> = fresh.out.iter().filter(|(meta, _)| meta.leg == LegId(3)).map(|(_, b)| b.to_vec()).collect();
    assert_eq!(to_plain.len(), 1);
    let pkt = rtp::Packet::new_checked(&to_plain[0][..]).unwrap();
    assert_eq!(pkt.sequence_number(), last_audio.wrapping_add(RESUME_MARGIN + 1), "resumed past the margin, as SRTP streams do");
    assert_eq!(pkt.payload(), &[9; 60][..]);
}
