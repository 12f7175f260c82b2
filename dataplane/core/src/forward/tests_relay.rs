//! Relay subscriptions (cascade legs): every layer of a track on a stream of its own, with the
//! subscriber's feedback reaching the layer it names.

use super::*;

/// Publisher leg 1 (a three-layer VP8 simulcast track 1), cascade leg 2 relaying every layer
/// (lanes 0x5000, 0x5010, 0x5020, RTX one above each), ordinary subscriber leg 3 on layer 1.
fn relay_meeting() -> Meeting {
    let mut m = Meeting::new(3);
    m.apply(vec![
        Op::UpsertTrack(video_track(1, 1, &[0x100, 0x200, 0x300])),
        Op::UpsertSubscription(relay(&[0x5010, 0x5020])),
        Op::UpsertSubscription(sub(3, 1, 0x3001, 1)),
    ])
    .unwrap();
    latch_all(&mut m);
    m
}

fn relay(lanes: &[u32]) -> SubscriptionSpec {
    SubscriptionSpec { relay: lanes.iter().map(|&s| (Ssrc(s), Some(Ssrc(s + 1)))).collect(), ..sub(2, 1, 0x5000, 0) }
}

/// (receiving peer, SSRC, sequence number) of each RTP output.
fn rtp_outs(got: &[(usize, Vec<u8>)]) -> Vec<(usize, u32, u16)> {
    got.iter()
        .filter_map(|(j, p)| {
            let p = rtp::Packet::new_checked(&p[..]).ok()?;
            (p.payload_type() < 72 || p.payload_type() > 79).then(|| (*j, p.ssrc().0, p.sequence_number()))
        })
        .collect()
}

#[test]
fn a_relay_carries_every_layer_on_its_own_stream_while_others_choose_one() {
    let mut m = relay_meeting();
    let mut per_ssrc: std::collections::HashMap<(usize, u32), Vec<u16>> = Default::default();
    let mut t = 1;
    for (frame, key) in [(0u16, true), (1, false), (2, false)] {
        for (l, ssrc) in [0x100u32, 0x200, 0x300].into_iter().enumerate() {
            let seq = 1000 * (l as u16 + 1) + frame * 3;
            let got = vp8_frame(&mut m, ssrc, seq, 3000 * u32::from(frame), key, 3, ms(t));
            t += 1;
            for (j, s, q) in rtp_outs(&got) {
                per_ssrc.entry((j, s)).or_default().push(q);
            }
        }
    }
    // The cascade gets each layer, all 9 packets of it, on its lane; the ordinary subscriber
    // layer 1 only.
    let mut keys: Vec<_> = per_ssrc.keys().copied().collect();
    keys.sort();
    assert_eq!(keys, [(1, 0x5000), (1, 0x5010), (1, 0x5020), (2, 0x3001)], "{per_ssrc:?}");
    for (k, seqs) in &per_ssrc {
        assert_eq!(seqs.len(), 9, "{k:x?}: {seqs:?}");
        assert!(seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)), "{k:x?} continuous: {seqs:?}");
    }
    // Each lane carries its own layer.
    let track = m.core.tables().track(TrackId(1)).unwrap();
    for (lane, layer_ssrc) in [0x100u32, 0x200, 0x300].into_iter().enumerate() {
        let sub = &track.subs[track.lane_index(LegId(2), lane as u8).unwrap()];
        assert_eq!((sub.rewriter.source(), sub.current_layer), (Some(Ssrc(layer_ssrc)), Some(lane as u8)), "lane {lane}");
    }
    // The tables say it back as one subscription with its lanes.
    let snap = m.core.tables().snapshot();
    let relays: Vec<_> =
        snap.ops.iter().filter_map(|op| if let Op::UpsertSubscription(s) = op { (s.subscriber == LegId(2)).then_some(s) } else { None }).collect();
    assert_eq!(relays.len(), 1);
    assert_eq!(relays[0].relay, relay(&[0x5010, 0x5020]).relay);
    assert_eq!(m.core.tables().counts().2, 4, "three lanes and one subscription");
}

#[test]
fn a_relays_feedback_reaches_the_layer_it_names() {
    let mut m = relay_meeting();
    for (l, ssrc) in [0x100u32, 0x200, 0x300].into_iter().enumerate() {
        vp8_frame(&mut m, ssrc, 1000 * (l as u16 + 1), 3000, true, 4, ms(1 + l as u64));
    }
    // A NACK for lane 2's second packet: answered from layer 2's cache on lane 2's RTX stream.
    let first = {
        let got = vp8_frame(&mut m, 0x300, 3004, 6000, false, 1, ms(10));
        rtp_outs(&got).iter().find(|o| o.1 == 0x5020).unwrap().2
    };
    let mut buf = [0u8; 64];
    let asked = first.wrapping_sub(3);
    let n = rtcp::write_nack(&mut buf, Ssrc(2), Ssrc(0x5020), &[rtcp::NackItem { pid: asked, blp: 0 }]).unwrap();
    let wire = m.peers[1].send_rtcp(&buf[..n]);
    let got = m.deliver(1, &wire, ms(20));
    assert_eq!(got.len(), 1, "{got:?}");
    let pkt = rtp::Packet::new_checked(&got[0].1[..]).unwrap();
    assert_eq!((got[0].0, pkt.ssrc()), (1, Ssrc(0x5021)), "lane 2's RTX stream");
    assert_eq!(&pkt.payload()[..2], &asked.to_be_bytes(), "OSN in the lane's sequence space");
    // A PLI for lane 1: a keyframe request to the publisher for layer 1's SSRC.
    let n = rtcp::write_pli(&mut buf, Ssrc(2), Ssrc(0x5010)).unwrap();
    let wire = m.peers[1].send_rtcp(&buf[..n]);
    let got = m.deliver(1, &wire, ms(30));
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, 0, "to the publisher");
    assert_eq!(rtcp::Pli::new_checked(&got[0].1[..]).unwrap().media_ssrc(), Ssrc(0x200));
}

#[test]
fn a_relay_changes_lane_by_lane_and_rolls_back_whole() {
    let mut m = relay_meeting();
    let egress = |m: &Meeting| {
        let mut e: Vec<u32> = m.core.tables().leg(LegId(2)).unwrap().egress.iter().map(|(s, _)| s.0).collect();
        e.sort();
        e
    };
    assert_eq!(egress(&m), [0x5000, 0x5001, 0x5010, 0x5011, 0x5020, 0x5021]);
    // A failing delta leaves everything as it was.
    let before = (m.core.tables().counts(), egress(&m));
    let err = m.apply(vec![Op::UpsertSubscription(relay(&[0x5030])), Op::RemoveTrack(TrackId(99))]).unwrap_err();
    assert!(matches!(err, DeltaError::UnknownTrack { .. }), "{err:?}");
    assert_eq!((m.core.tables().counts(), egress(&m)), before);
    // One lane fewer: its SSRCs go, the others keep their streams.
    m.apply(vec![Op::UpsertSubscription(relay(&[0x5010]))]).unwrap();
    assert_eq!(egress(&m), [0x5000, 0x5001, 0x5010, 0x5011]);
    assert_eq!(m.core.tables().counts().2, 3);
    // Refused precisely: a lane on an SSRC the leg receives for another track, lanes that repeat.
    m.apply(vec![Op::UpsertTrack(audio_track(2, 1, 0x1111)), Op::UpsertSubscription(sub(2, 2, 0x6000, 0))]).unwrap();
    let err = m.apply(vec![Op::UpsertSubscription(relay(&[0x6000]))]).unwrap_err();
    assert!(matches!(err, DeltaError::DuplicateSsrc { ssrc: Ssrc(0x6000), .. }), "{err:?}");
    let err = m.apply(vec![Op::UpsertSubscription(relay(&[0x5010, 0x5010]))]).unwrap_err();
    assert!(format!("{err}").contains("subscription.relay"), "{err}");
    // Removing the subscription removes every lane.
    m.apply(vec![Op::RemoveSubscription { subscriber: LegId(2), track: TrackId(1) }]).unwrap();
    assert_eq!(egress(&m), [0x6000, 0x6001]);
    assert_eq!(m.core.tables().counts().2, 2);
}
