//! Spatial and temporal layers inside a stream, through the whole core: what each subscriber
//! gets, and that its copy is a valid stream (sequence numbers, picture ids, TL0PICIDX, marker).

use super::*;
use crate::wire::dd;

/// One VP8 packet with the full descriptor (RFC 7741): 15-bit picture id, TL0PICIDX, TID/Y.
#[derive(Clone, Copy)]
struct Vp8 {
    ssrc: u32,
    seq: u16,
    ts: u32,
    pid: u16,
    tl0: u8,
    tid: u8,
    y: bool,
    /// First packet (S=1) and last (marker) of its frame; a keyframe.
    first: bool,
    last: bool,
    key: bool,
}

fn vp8(p: Vp8) -> Vec<u8> {
    let Vp8 { ssrc, seq, ts, pid, tl0, tid, y, first, last, key } = p;
    let d0 = if first { 0x90 } else { 0x80 };
    let mut payload = vec![d0, 0xE0, 0x80 | (pid >> 8) as u8, pid as u8, tl0, tid << 6 | u8::from(y) << 5];
    payload.push(if first && !key { 0x01 } else { 0x00 });
    payload.extend_from_slice(&[0x9d, 0x01, 0x2a]);
    let mut p = rtp_packet(ssrc, seq, ts, 96, &payload);
    if last {
        p[1] |= 0x80;
    }
    p
}

/// Peer 1 is subscriber 2, peer 2 subscriber 3.
/// What a subscriber got: (sequence number, marker, picture id, TL0PICIDX, TID).
fn vp8_fields(p: &[u8]) -> (u16, bool, u16, u8, u8) {
    let pkt = rtp::Packet::new_checked(p).unwrap();
    let d = pkt.payload();
    (pkt.sequence_number(), pkt.marker(), u16::from(d[2] & 0x7f) << 8 | u16::from(d[3]), d[4], d[5] >> 6)
}

/// L1T3: temporal ids 0 2 1 2, layer sync on the first frame of layers 1 and 2 after a
/// keyframe.
const PATTERN: [u8; 4] = [0, 2, 1, 2];

/// Sends frame `i` (two packets) of the L1T3 stream of simulcast layer `ssrc`; returns what
/// each peer got.
fn l1t3_frame(m: &mut Meeting, ssrc: u32, i: u16, base: (u16, u16, u8), key: bool, now: Instant) -> Vec<(usize, Vec<u8>)> {
    let (seq0, pid0, tl00) = base;
    let tid = PATTERN[usize::from(i % 4)];
    let tl0 = tl00.wrapping_add((i / 4) as u8);
    let (seq, pid, ts) = (seq0.wrapping_add(2 * i), pid0.wrapping_add(i) & 0x7fff, 3000 * u32::from(i));
    let y = !i.is_multiple_of(4) && i < 4;
    let mut got = Vec::new();
    for k in 0..2u16 {
        let plain = vp8(Vp8 { ssrc, seq: seq + k, ts, pid, tl0, tid, y, first: k == 0, last: k == 1, key: key && k == 0 });
        let wire = m.peers[0].send_rtp(&plain);
        got.extend(m.deliver(0, &wire, now));
    }
    got
}

/// A VP8 simulcast track with L1T3 temporal layers: subscriber 2 takes temporal layer 0 of the
/// low layer, subscriber 3 everything. Subscriber 2 gets a quarter of the frames as a valid
/// stream — continuous sequence numbers and picture ids, markers intact — then follows a
/// simulcast switch with picture ids and TL0PICIDX running on; a publisher retransmission of a
/// frame it does not take is not sent to it; raising its ceiling takes effect at a layer-sync
/// frame.
#[test]
fn vp8_temporal_layers_reach_each_subscriber_as_a_valid_stream() {
    let mut m = Meeting::new(3);
    let mut low = sub(2, 1, 0x2001, 0);
    low.max_temporal = Some(0);
    m.apply(vec![Op::UpsertTrack(video_track(1, 1, &[0x100, 0x200])), Op::UpsertSubscription(low.clone()), Op::UpsertSubscription(sub(3, 1, 0x3001, 0))])
        .unwrap();
    latch_all(&mut m);
    let mut got = Vec::new();
    for i in 0..12u16 {
        got.extend(l1t3_frame(&mut m, 0x100, i, (1000, 500, 40), i == 0, ms(10 + u64::from(i) * 33)));
    }
    let of = |who: usize, got: &[(usize, Vec<u8>)]| got.iter().filter(|(j, p)| *j == who && p[1] & 0x7f == 100).map(|(_, p)| vp8_fields(p)).collect::<Vec<_>>();
    let all = of(1, &got);
    assert_eq!(of(2, &got).len(), 24, "subscriber 3 gets every frame");
    assert_eq!(all.len(), 6, "subscriber 2 gets frames 0, 4, 8: {all:?}");
    for (k, f) in all.iter().enumerate() {
        assert_eq!(f.0, 1000 + k as u16, "continuous sequence numbers: {all:?}");
        assert_eq!(f.1, k % 2 == 1, "the marker stays on each frame's last packet");
        assert_eq!(f.2, 500 + (k / 2) as u16, "continuous picture ids: {all:?}");
        assert_eq!(f.4, 0);
    }
    assert_eq!((all[0].3, all[2].3, all[4].3), (40, 41, 42), "TL0PICIDX as sent");
    assert_eq!(m.core.stats().frames_dropped_by_layer, 9);
    // A publisher retransmission (RTX, OSN + original payload) of frame 1 (TID 2): to
    // subscriber 3 (which asked nothing, so it goes as the original) but not to subscriber 2.
    let orig = vp8(Vp8 { ssrc: 0x100, seq: 1002, ts: 3000, pid: 501, tl0: 40, tid: 2, y: true, first: true, last: false, key: false });
    let mut rtx_payload = 1002u16.to_be_bytes().to_vec();
    rtx_payload.extend_from_slice(&orig[12..]);
    let rtx = rtp_packet(0x101, 7, 3000, 97, &rtx_payload);
    let wire = m.peers[0].send_rtp(&rtx);
    let got = m.deliver(0, &wire, ms(500));
    assert!(got.iter().all(|(j, _)| *j != 1), "the skipped frame's retransmission is not sent to subscriber 2: {got:?}");
    // Switch subscriber 2 to the high layer at its keyframe: ids run on.
    low.target_layer = 1;
    m.apply(vec![Op::UpsertSubscription(low.clone())]).unwrap();
    let mut got = Vec::new();
    for i in 0..5u16 {
        got.extend(l1t3_frame(&mut m, 0x200, i, (9000, 20000, 7), i == 0, ms(600 + u64::from(i) * 33)));
    }
    let high = of(1, &got);
    assert_eq!(high.len(), 4, "frames 0 and 4 of the high layer: {high:?}");
    assert_eq!(high.iter().map(|f| f.0).collect::<Vec<_>>(), [1006, 1007, 1008, 1009], "sequence numbers run on");
    assert_eq!(high.iter().map(|f| f.2).collect::<Vec<_>>(), [503, 503, 504, 504], "picture ids run on across the switch");
    assert_eq!(high.iter().map(|f| f.3).collect::<Vec<_>>(), [43, 43, 44, 44], "TL0PICIDX runs on across the switch");
    // Raise subscriber 2's ceiling to 2: frame 5 (TID 2, no sync) waits, layer sync frames open
    // layers 1 and 2.
    low.max_temporal = Some(2);
    m.apply(vec![Op::UpsertSubscription(low)]).unwrap();
    let mut got = Vec::new();
    for i in 5..8u16 {
        got.extend(l1t3_frame(&mut m, 0x200, i, (9000, 20000, 7), false, ms(800 + u64::from(i) * 33)));
    }
    assert!(of(1, &got).is_empty(), "no switching point yet: {:?}", of(1, &got));
    // Frames 9 (TID 2) and 10 (TID 1) with Y set (the encoder's sync after a keyframe).
    let mut got = Vec::new();
    for (i, tid) in [(8u16, 0u8), (9, 2), (10, 1), (11, 2)] {
        let seq = 9000 + 2 * i;
        for k in 0..2u16 {
            let y = i == 9 || i == 10;
            let plain =
                vp8(Vp8 { ssrc: 0x200, seq: seq + k, ts: 3000 * u32::from(i), pid: 20000 + i, tl0: 9, tid, y, first: k == 0, last: k == 1, key: false });
            let wire = m.peers[0].send_rtp(&plain);
            got.extend(m.deliver(0, &wire, ms(1100 + u64::from(i))));
        }
    }
    let up = of(1, &got);
    assert_eq!(up.iter().map(|f| f.4).collect::<Vec<_>>(), [0, 0, 2, 2, 1, 1, 2, 2], "{up:?}");
    assert_eq!(up.iter().map(|f| f.0).collect::<Vec<_>>(), (1010..1018).collect::<Vec<_>>());
    assert_eq!(up.iter().map(|f| f.2).step_by(2).collect::<Vec<_>>(), [505, 506, 507, 508]);
    let switches = std::iter::from_fn(|| m.core.poll_event())
        .filter_map(|e| match e {
            Event::LayerSwitched { subscriber: LegId(2), temporal, .. } => temporal,
            _ => None,
        })
        .collect::<Vec<_>>();
    assert_eq!(switches.last(), Some(&2), "the switch events report the temporal layer: {switches:?}");
}

/// One VP9 packet (RFC 9628, non-flexible mode) of the SSRC 0x100 with one packet per layer
/// frame: picture id, layer indices, TL0PICIDX; P=1 unless `key`, the marker on layer 2.
fn vp9(seq: u16, ts: u32, pid: u16, sid: u8, key: bool) -> Vec<u8> {
    let (ssrc, tid, begins, ends, inter, marker) = (0x100, 0u8, true, true, !key, sid == 2);
    let d0 = 0x80 | if inter { 0x40 } else { 0 } | 0x20 | if begins { 0x08 } else { 0 } | if ends { 0x04 } else { 0 };
    let payload = [d0, 0x80 | (pid >> 8) as u8, pid as u8, tid << 5 | sid << 1 | u8::from(sid > 0), 3, 0xAA];
    let mut p = rtp_packet(ssrc, seq, ts, 96, &payload);
    if marker {
        p[1] |= 0x80;
    }
    p
}

/// Sends picture `i` of an L3T1 SVC stream (one packet per spatial layer, the marker on the
/// last); returns what the subscriber (peer 1) got as (sequence number, marker, spatial id).
fn l3_picture(m: &mut Meeting, i: u16, key: bool) -> Vec<(u16, bool, u8)> {
    let mut got = Vec::new();
    for sid in 0..3u8 {
        let seq = 100 + 3 * i + u16::from(sid);
        let plain = vp9(seq, 3000 * u32::from(i), i, sid, key);
        let wire = m.peers[0].send_rtp(&plain);
        got.extend(m.deliver(0, &wire, ms(10 + u64::from(i) * 33)));
    }
    got.iter()
        .filter(|(j, p)| *j == 1 && p[1] & 0x7f == 100)
        .map(|(_, p)| {
            let pkt = rtp::Packet::new_checked(&p[..]).unwrap();
            (pkt.sequence_number(), pkt.marker(), (pkt.payload()[3] >> 1) & 7)
        })
        .collect()
}

/// VP9 SVC in one SSRC: a subscriber with spatial ceiling 1 gets layers 0 and 1 with the marker
/// on layer 1's last packet and no sequence gap; raising the ceiling asks for a keyframe and
/// takes effect there; lowering it applies from the next picture.
#[test]
fn vp9_spatial_layers_follow_the_ceiling() {
    let mut m = Meeting::new(2);
    let mut track = video_track(1, 1, &[0x100]);
    track.payload_types[0].codec = Codec::Vp9;
    let mut s = sub(2, 1, 0x2001, 0);
    s.max_spatial = Some(1);
    m.apply(vec![Op::UpsertTrack(track), Op::UpsertSubscription(s.clone())]).unwrap();
    latch_all(&mut m);
    let mut got = l3_picture(&mut m, 0, true);
    got.extend(l3_picture(&mut m, 1, false));
    assert_eq!(got, [(100, false, 0), (101, true, 1), (102, false, 0), (103, true, 1)]);
    // Up to 2: a PLI goes to the publisher, layer 2 waits for the keyframe.
    s.max_spatial = None;
    m.apply(vec![Op::UpsertSubscription(s.clone())]).unwrap();
    let plis_before = m.core.stats().keyframe_requests;
    assert_eq!(l3_picture(&mut m, 2, false), [(104, false, 0), (105, true, 1)]);
    assert_eq!(m.core.stats().keyframe_requests, plis_before + 1, "a keyframe is asked for");
    assert_eq!(l3_picture(&mut m, 3, true), [(106, false, 0), (107, false, 1), (108, true, 2)]);
    // Down to 0 from the next picture.
    s.max_spatial = Some(0);
    m.apply(vec![Op::UpsertSubscription(s)]).unwrap();
    assert_eq!(l3_picture(&mut m, 4, false), [(109, true, 0)]);
    assert_eq!(l3_picture(&mut m, 5, false), [(110, true, 0)]);
}

/// An SVC stream to a subscriber leg with congestion control: its allocator chooses the spatial
/// layer (the layers' measured rates, each costing the layers below it too) within the
/// estimate, while a subscriber without congestion control takes every layer.
#[test]
fn the_allocator_chooses_the_spatial_layer_of_an_svc_stream() {
    let mut m = Meeting::new(3);
    let (_, mut cc) = peer(2);
    cc.feedback.twcc_ext = Some(5);
    cc.remote = None;
    let mut track = video_track(1, 1, &[0x100]);
    track.payload_types[0].codec = Codec::Vp9;
    m.apply(vec![Op::UpsertLeg(cc), Op::UpsertTrack(track), Op::UpsertSubscription(sub(2, 1, 0x2001, 0)), Op::UpsertSubscription(sub(3, 1, 0x3001, 0))])
        .unwrap();
    latch_all(&mut m);
    // 30 pictures a second: layer 0 one 1 kB packet (240 kbit/s), layer 1 two, layer 2 four.
    // The leg's start estimate (300 kbit/s) affords layer 0 alone.
    let mut out = OutBatch::new(256);
    let mut now = ms(100);
    let (mut seq, mut late) = (100u16, [[0usize; 3]; 2]);
    for i in 0..90u16 {
        let mut got = Vec::new();
        for sid in 0..3u8 {
            for k in 0..(1u16 << sid) {
                let last = k + 1 == 1 << sid;
                let mut plain = vp9(seq, 3000 * u32::from(i), i, sid, i == 0);
                plain[12] = (plain[12] & !0x0C) | if k == 0 { 0x08 } else { 0 } | if last { 0x04 } else { 0 };
                plain.resize(1000, 0x55);
                seq += 1;
                let wire = m.peers[0].send_rtp(&plain);
                got.extend(m.deliver(0, &wire, now));
            }
        }
        let end = now + core::time::Duration::from_millis(33);
        while now < end {
            now = m.core.poll_timeout().max(now + core::time::Duration::from_micros(100)).min(end);
            out.clear();
            m.core.handle_timeout(now, &mut out);
            let sent: Vec<(OutMeta, Vec<u8>)> = out.iter().map(|(meta, b)| (*meta, b.to_vec())).collect();
            for (_, b) in sent.into_iter().filter(|(meta, _)| meta.leg == LegId(2)) {
                got.push((1, m.peers[1].recv(&b)));
            }
        }
        if i >= 60 {
            for (j, p) in got.iter().filter(|(j, p)| *j >= 1 && p[1] & 0x7f == 100) {
                let sid = rtp::Packet::new_checked(&p[..]).unwrap().payload()[3] >> 1 & 7;
                late[*j - 1][usize::from(sid)] += 1;
            }
        }
    }
    assert_eq!(late[1], [30, 60, 120], "the leg without congestion control takes every layer");
    assert_eq!(late[0], [30, 0, 0], "the allocator keeps the congestion-controlled leg on spatial layer 0");
    let sub2 = &m.core.tables().track(TrackId(1)).unwrap().subs[0];
    assert_eq!((sub2.subscriber, sub2.alloc_layer), (LegId(2), Some(0)));
}

/// An RTP packet of SSRC 0x100 carrying `dd` as a two-byte-header extension (id 7) and an AV1
/// payload (aggregation header N bit on a keyframe).
fn av1_dd(seq: u16, ts: u32, dd_bytes: &[u8], key: bool) -> Vec<u8> {
    let mut ext = vec![7u8, dd_bytes.len() as u8];
    ext.extend_from_slice(dd_bytes);
    ext.resize(ext.len().div_ceil(4) * 4, 0);
    let mut p = rtp_packet(0x100, seq, ts, 96, &[]);
    p[0] |= 0x10;
    p[1] |= 0x80;
    p.extend_from_slice(&[0x10, 0x00]);
    p.extend_from_slice(&((ext.len() / 4) as u16).to_be_bytes());
    p.extend_from_slice(&ext);
    p.extend_from_slice(&[if key { 0x18 } else { 0x10 }, 0x0a, 0x0b, 0x0c]);
    p
}

/// libwebrtc's L1T3 structure: decode targets (0,0), (0,1), (0,2); templates: keyframe, T0, T1,
/// T2, T2.
fn l1t3_structure() -> dd::Structure {
    let mut s = dd::Structure::new(0, 3, 1, &[0, 0, 0]).unwrap();
    for (t, dtis, fdiffs, chains) in
        [(0, "SSS", &[][..], &[0u8][..]), (0, "SSS", &[4], &[4]), (1, "-DS", &[2], &[2]), (2, "--D", &[1], &[1]), (2, "--D", &[1], &[3])]
    {
        s.push_template(0, t, dd::Dtis::from_symbols(dtis).unwrap(), fdiffs, chains).unwrap();
    }
    s
}

/// Temporal layers told by the AV1 dependency descriptor: a subscriber on temporal layer 0
/// gets the frames its decode target needs with continuous sequence numbers, and the copy's
/// active-decode-targets bitmask says what it can decode; a descriptor that refers to a
/// structure never received is forwarded only where every layer is taken, and asks for a
/// keyframe.
#[test]
fn dependency_descriptor_layers() {
    let mut m = Meeting::new(3);
    let mut track = video_track(1, 1, &[0x100]);
    track.payload_types[0].codec = Codec::Av1;
    track.dd_ext = Some(7);
    let dd_sub = |subscriber, out| SubscriptionSpec { ext_map: vec![(7, 7)], ..sub(subscriber, 1, out, 0) };
    let low = SubscriptionSpec { max_temporal: Some(0), ..dd_sub(2, 0x2001) };
    m.apply(vec![Op::UpsertTrack(track), Op::UpsertSubscription(low), Op::UpsertSubscription(dd_sub(3, 0x3001))]).unwrap();
    latch_all(&mut m);
    let s = l1t3_structure();
    let mut got = Vec::new();
    // Templates by frame: keyframe, then T0 T2 T1 T2 (indexes 1 3 2 4).
    for i in 0..12u16 {
        let template = if i == 0 { 0 } else { [1, 3, 2, 4][usize::from(i % 4)] };
        let mut d = s.descriptor(template, i).unwrap();
        d.carries_structure = i == 0;
        if i == 4 {
            d.active_decode_targets = Some(0b111);
        }
        let mut buf = [0u8; 64];
        let n = dd::write(&mut buf, &d, &s).unwrap();
        let wire = m.peers[0].send_rtp(&av1_dd(500 + i, 3000 * u32::from(i), &buf[..n], i == 0));
        got.extend(m.deliver(0, &wire, ms(10 + u64::from(i) * 33)));
    }
    let of = |j: usize| got.iter().filter(|(k, p)| *k == j && p[1] & 0x7f == 100).map(|(_, p)| p.clone()).collect::<Vec<_>>();
    assert_eq!(of(2).len(), 12, "subscriber 3 takes every layer");
    let low = of(1);
    let seqs: Vec<u16> = low.iter().map(|p| rtp::Packet::new_checked(&p[..]).unwrap().sequence_number()).collect();
    assert_eq!(seqs, [500, 501, 502], "frames 0, 4 and 8, no gap");
    // Frame 4 carried the bitmask: all three to subscriber 3, decode target 0 alone to 2.
    let mask = |p: &[u8]| {
        let pkt = rtp::Packet::new_checked(p).unwrap();
        let mut scratch = dd::Structure::default();
        dd::read(pkt.find_extension(7).unwrap(), Some(&s), &mut scratch).unwrap().active_decode_targets
    };
    assert_eq!(mask(&low[1]), Some(0b001));
    assert_eq!(mask(&of(2)[4]), Some(0b111));
    // The keyframe's structure implies every target active: subscriber 2's copy says otherwise
    // (its descriptor re-encoded with the bitmask); once told, later copies say nothing.
    assert_eq!(mask(&low[0]), Some(0b001), "announced in the keyframe's copy");
    assert_eq!(mask(&of(2)[0]), Some(0b111), "the structure alone: all");
    assert_eq!(mask(&low[2]), None, "already told");
    let payload = |p: &[u8]| rtp::Packet::new_checked(p).unwrap().payload().to_vec();
    assert_eq!(payload(&low[0]), payload(&of(2)[0]), "the payload is the same");
    assert!(m.core.stats().frames_dropped_by_layer >= 8);
    // A structure change whose keyframe was lost: the descriptor names a template the structure
    // in force does not have. Forwarded whole where every layer is taken, not on temporal layer
    // 0; a keyframe is asked for.
    let before = (m.core.stats().bad_descriptors, m.core.stats().keyframe_requests);
    let mut moved = dd::Structure::new(10, 3, 1, &[0, 0, 0]).unwrap();
    moved.push_template(0, 0, dd::Dtis::from_symbols("SSS").unwrap(), &[], &[0]).unwrap();
    let mut buf = [0u8; 64];
    let n = dd::write(&mut buf, &moved.descriptor(0, 40).unwrap(), &moved).unwrap();
    let wire = m.peers[0].send_rtp(&av1_dd(512, 3000 * 12, &buf[..n], false));
    let got = m.deliver(0, &wire, ms(1000));
    let pli =
        |got: &[(usize, Vec<u8>)], ssrc| got.iter().any(|(j, p)| *j == 0 && rtcp::Pli::new_checked(&p[..]).is_ok_and(|pli| pli.media_ssrc() == Ssrc(ssrc)));
    assert!(pli(&got, 0x100), "a keyframe is asked for: {got:?}");
    assert!(got.iter().any(|(j, _)| *j == 2), "forwarded whole to the subscriber taking every layer");
    assert!(!got.iter().any(|(j, _)| *j == 1), "not to the one on temporal layer 0");
    assert_eq!((m.core.stats().bad_descriptors, m.core.stats().keyframe_requests), (before.0 + 1, before.1 + 1));
    // A track whose structure never arrived: nobody can start on it; a keyframe is asked for.
    let mut track = video_track(2, 1, &[0x900]);
    track.payload_types[0].codec = Codec::Av1;
    track.dd_ext = Some(7);
    m.apply(vec![Op::UpsertTrack(track), Op::UpsertSubscription(SubscriptionSpec { track: TrackId(2), ..dd_sub(3, 0x3101) })]).unwrap();
    let n = dd::write(&mut buf, &s.descriptor(1, 20).unwrap(), &s).unwrap();
    let mut p = av1_dd(900, 1, &buf[..n], false);
    p[8..12].copy_from_slice(&0x900u32.to_be_bytes());
    let wire = m.peers[0].send_rtp(&p);
    let got = m.deliver(0, &wire, ms(1100));
    assert!(pli(&got, 0x900), "{got:?}");
    assert!(got.iter().all(|(j, _)| *j == 0), "nothing forwarded: {got:?}");
}

/// A dataplane restart keeps a subscriber's VP8 picture ids and TL0PICIDX running on: the
/// checkpoint carries the last ones sent, and the resumed stream's first keyframe continues
/// after them (a receiver's reference finder would otherwise see its picture ids jump back).
#[test]
fn picture_ids_run_on_across_a_restart() {
    use crate::table::checkpoint::Checkpoint;
    let ops = || vec![Op::UpsertTrack(video_track(1, 1, &[0x100])), Op::UpsertSubscription(sub(2, 1, 0x2001, 0))];
    let mut m = Meeting::new(2);
    m.apply(ops()).unwrap();
    latch_all(&mut m);
    let mut last = None;
    for i in 0..6u16 {
        for (j, p) in l1t3_frame(&mut m, 0x100, i, (100, 700, 30), i == 0, ms(10 + u64::from(i) * 33)) {
            if j == 1 && p[1] & 0x7f == 100 {
                last = Some(vp8_fields(&p));
            }
        }
    }
    let last = last.unwrap();
    assert_eq!((last.2, last.3), (705, 31));
    let mut ck = Checkpoint::default();
    m.core.checkpoint(&mut ck);
    assert_eq!(ck.streams[0].pictures, (Some(705), Some(31)));
    let mut m2 = Meeting::new(2);
    m2.apply(ops()).unwrap();
    m2.peers = std::mem::take(&mut m.peers);
    m2.core.restore(&ck, ms(0), core::time::Duration::from_secs(1));
    // The publisher goes on with its own numbering; its next keyframe opens the resumed stream.
    let got: Vec<_> = l1t3_frame(&mut m2, 0x100, 0, (400, 9000, 3), true, ms(1000)).into_iter().filter(|(j, p)| *j == 1 && p[1] & 0x7f == 100).collect();
    let first = vp8_fields(&got[0].1);
    assert_eq!((first.2, first.3), (706, 32), "picture id and TL0PICIDX continue");
}

/// A retransmission carries the picture id and TL0PICIDX its first copy carried: after a
/// simulcast switch the subscriber's ids differ from the publisher's, and a NACKed packet
/// answered from the cache (as RTX: OSN, then the payload) must not bring the publisher's back.
#[test]
fn retransmissions_carry_the_rewritten_picture_ids() {
    let mut m = Meeting::new(2);
    let mut s = sub(2, 1, 0x2001, 0);
    m.apply(vec![Op::UpsertTrack(video_track(1, 1, &[0x100, 0x200])), Op::UpsertSubscription(s.clone())]).unwrap();
    latch_all(&mut m);
    for i in 0..4u16 {
        l1t3_frame(&mut m, 0x100, i, (100, 50, 10), i == 0, ms(10 + u64::from(i) * 33));
    }
    s.target_layer = 1;
    m.apply(vec![Op::UpsertSubscription(s)]).unwrap();
    let mut sent = Vec::new();
    for i in 0..2u16 {
        for (j, p) in l1t3_frame(&mut m, 0x200, i, (5000, 9000, 200), i == 0, ms(200 + u64::from(i) * 33)) {
            if j == 1 && p[1] & 0x7f == 100 {
                sent.push(vp8_fields(&p));
            }
        }
    }
    assert_eq!((sent[0].2, sent[0].3), (54, 11), "the switch continues the ids");
    let lost = sent[2];
    let mut buf = [0u8; 64];
    let n = rtcp::write_nack(&mut buf, Ssrc(2), Ssrc(0x2001), &[rtcp::NackItem { pid: lost.0, blp: 0 }]).unwrap();
    let wire = m.peers[1].send_rtcp(&buf[..n]);
    let got = m.deliver(1, &wire, ms(300));
    assert_eq!(got.len(), 1, "{got:?}");
    let rtx = rtp::Packet::new_checked(&got[0].1[..]).unwrap();
    assert_eq!(rtx.ssrc(), Ssrc(0x2002));
    let d = &rtx.payload()[2..];
    assert_eq!((u16::from(d[2] & 0x7f) << 8 | u16::from(d[3]), d[4]), (lost.2, lost.3), "the first copy's ids, not the publisher's");
}
