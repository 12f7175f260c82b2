//! Relay subscriptions (cascade legs): every layer of a track on a stream of its own, with the
//! subscriber's feedback reaching the layer it names.

use super::*;
use crate::forward::cascade;

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

/// Runs the core's timers at `now`; returns (receiving peer, plaintext) per output.
fn tick(m: &mut Meeting, now: Instant) -> Vec<(usize, Vec<u8>)> {
    m.out.clear();
    m.core.handle_timeout(now, &mut m.out);
    let outs: Vec<(OutMeta, Vec<u8>)> = m.out.iter().map(|(meta, b)| (*meta, b.to_vec())).collect();
    outs.into_iter()
        .map(|(meta, b)| {
            let j = m.peers.iter().position(|p| p.leg == meta.leg).unwrap();
            (j, m.peers[j].recv(&b))
        })
        .collect()
}

/// The layer-demand APP packets among `got`, as (receiving peer, [(SSRC, wanted)]).
fn demands(got: &[(usize, Vec<u8>)]) -> Vec<(usize, Vec<(u32, bool)>)> {
    got.iter()
        .flat_map(|(j, p)| {
            rtcp::compound(&p[..]).flatten().filter_map(move |pkt| {
                let app = rtcp::App::new_checked(pkt.as_bytes()).ok()?;
                (app.name() == cascade::NAME).then(|| (*j, cascade::decode(app.data()).map(|(s, w)| (s.0, w)).collect()))
            })
        })
        .collect()
}

/// The node receiving relays: its cascade leg 1 publishes track 1 (three layers), leg 2
/// subscribes at layer 0. It tells the other node, on the cascade leg, that it wants layer 0;
/// when the subscriber moves to layer 2, layer 2 at once; layer 0 once nobody has wanted it for
/// `UNWANTED_AFTER`; and it repeats an unchanged wish every second, no more often.
#[test]
fn the_far_node_is_told_which_layers_of_its_relays_are_wanted() {
    let mut m = Meeting::new(2);
    let cascade_leg = LegSpec { cascade: true, ..m.core.tables().leg(LegId(1)).unwrap().spec.clone() };
    m.apply(vec![Op::UpsertLeg(cascade_leg), Op::UpsertTrack(video_track(1, 1, &[0x100, 0x200, 0x300])), Op::UpsertSubscription(sub(2, 1, 0x2001, 0))])
        .unwrap();
    latch_all(&mut m);
    let told = |m: &mut Meeting, at: u64| demands(&tick(m, ms(at)));
    assert_eq!(told(&mut m, 1000), [(0, vec![(0x100, true), (0x200, false), (0x300, false)])]);
    assert!(told(&mut m, 1300).is_empty(), "unchanged: not again before a second");
    assert_eq!(told(&mut m, 2000), [(0, vec![(0x100, true), (0x200, false), (0x300, false)])], "repeated after a second");
    m.apply(vec![Op::UpsertSubscription(sub(2, 1, 0x2001, 2))]).unwrap();
    assert_eq!(told(&mut m, 2300), [(0, vec![(0x100, true), (0x200, false), (0x300, true)])], "layer 2 at once");
    // The subscriber moves to layer 2 at its keyframe; layer 0 stays wanted for a while.
    vp8_frame(&mut m, 0x300, 10, 3000, true, 1, ms(2400));
    assert!(told(&mut m, 3000).iter().all(|(_, e)| e[0].1), "layer 0 still wanted within UNWANTED_AFTER");
    assert_eq!(told(&mut m, 5000), [(0, vec![(0x100, false), (0x200, false), (0x300, true)])]);
    // A leg that is no cascade is told nothing.
    let mut plain = Meeting::new(2);
    plain.apply(vec![Op::UpsertTrack(video_track(1, 1, &[0x100, 0x200])), Op::UpsertSubscription(sub(2, 1, 0x2001, 0))]).unwrap();
    latch_all(&mut plain);
    assert!(demands(&tick(&mut plain, ms(1000))).is_empty());
}

/// The node sending relays: a lane the far node does not want is skipped (its layer no longer
/// counts as wanted there, so the publisher's demand shows it); wanted again, it re-enters at a
/// keyframe with its stream continuous.
#[test]
fn a_relay_lane_the_far_node_does_not_want_is_skipped_until_wanted_again() {
    let mut m = relay_meeting();
    let mut seq = [1000u16, 2000, 3000];
    let mut frame = |m: &mut Meeting, key: bool, at: u64| {
        let mut got = Vec::new();
        for (l, ssrc) in [0x100u32, 0x200, 0x300].into_iter().enumerate() {
            got.extend(rtp_outs(&vp8_frame(m, ssrc, seq[l], 3000 * at as u32, key, 2, ms(at))));
            seq[l] = seq[l].wrapping_add(2);
        }
        got
    };
    let lane2_last = frame(&mut m, true, 10).iter().filter(|o| o.1 == 0x5020).map(|o| o.2).next_back().expect("lane 2 flows");
    let app = |m: &mut Meeting, entries: &[(u32, bool)]| {
        let mut data = [0u8; 64];
        let n = cascade::encode(entries.iter().map(|&(s, w)| (Ssrc(s), w)), &mut data);
        let mut buf = [0u8; 128];
        let len = rtcp::write_app(&mut buf, 0, Ssrc(2), cascade::NAME, &data[..n]).unwrap();
        let wire = m.peers[1].send_rtcp(&buf[..len]);
        assert!(m.deliver(1, &wire, ms(20)).is_empty());
    };
    app(&mut m, &[(0x5000, true), (0x5010, true), (0x5020, false)]);
    let got = frame(&mut m, false, 30);
    let lanes: Vec<u32> = got.iter().filter(|o| o.0 == 1).map(|o| o.1).collect();
    assert_eq!(lanes, [0x5000, 0x5000, 0x5010, 0x5010], "lane 2 skipped");
    // Layer 2 is now wanted by no one on this node: after UNWANTED_AFTER the publisher's demand
    // says so.
    let mut events: Vec<Event> = Vec::new();
    for at in (100..2400).step_by(100) {
        frame(&mut m, false, at);
        m.out.clear();
        m.core.handle_timeout(ms(at), &mut m.out);
        events.extend(std::iter::from_fn(|| m.core.poll_event()));
    }
    assert!(events.iter().any(|e| matches!(e, Event::LayerDemand { layer: 2, wanted: false, .. })), "{events:?}");
    assert!(!events.iter().any(|e| matches!(e, Event::LayerDemand { layer: 0 | 1, wanted: false, .. })), "{events:?}");
    // Wanted again: from the next keyframe on, continuous.
    app(&mut m, &[(0x5020, true)]);
    let before: Vec<u16> = frame(&mut m, false, 2450).iter().filter(|o| o.1 == 0x5020).map(|o| o.2).collect();
    assert!(before.is_empty(), "waits for a keyframe: {before:?}");
    let after: Vec<u16> = frame(&mut m, true, 2500).iter().filter(|o| o.1 == 0x5020).map(|o| o.2).collect();
    assert_eq!(after, [lane2_last.wrapping_add(1), lane2_last.wrapping_add(2)], "lane 2 continues where it stopped");
}
