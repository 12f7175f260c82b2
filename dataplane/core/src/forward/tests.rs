//! Pipeline tests on small, hand-built meetings. The deterministic multi-party simulations live
//! in `tests/sim.rs`; these pin down one behaviour each.

use std::net::{Ipv4Addr, SocketAddr};

use super::*;
use crate::ids::{Generation, Pt};
use crate::srtp::{Profile, RtcpSendState, RtpRecvState, RtpSendState, SrtpKeys};
use crate::table::{Codec, KeyMaterial, LayerSpec, LegSpec, MediaKind, MidSpec, Op, PayloadSpec, SubscriptionSpec, TrackSpec};
use crate::wire::{rtcp, rtp};

const PROFILE: Profile = Profile::AeadAes128Gcm;

/// A participant's side of a leg: its address, and the keys it uses towards and from the SFU.
struct Peer {
    leg: LegId,
    port: u16,
    addr: SocketAddr,
    up: SrtpKeys,
    down: SrtpKeys,
    up_state: std::collections::HashMap<u32, RtpSendState>,
    down_state: std::collections::HashMap<u32, RtpRecvState>,
    rtcp_up: RtcpSendState,
    rtcp_down: crate::srtp::RtcpRecvState,
}

fn peer(n: u32) -> (Peer, LegSpec) {
    let up = KeyMaterial::seeded(PROFILE, n * 2 + 1);
    let down = KeyMaterial::seeded(PROFILE, n * 2 + 2);
    let spec = LegSpec::new(LegId(n), 20_000 + n as u16, up.clone(), down.clone(), Ssrc(0xf000_0000 + n));
    let p = Peer {
        leg: LegId(n),
        port: spec.local_port,
        addr: SocketAddr::from((Ipv4Addr::new(10, 0, 0, n as u8), 5000)),
        up: SrtpKeys::new(PROFILE, &up.key, &up.salt).unwrap(),
        down: SrtpKeys::new(PROFILE, &down.key, &down.salt).unwrap(),
        up_state: Default::default(),
        down_state: Default::default(),
        rtcp_up: RtcpSendState::new(),
        rtcp_down: crate::srtp::RtcpRecvState::new(128),
    };
    (p, spec)
}

fn rtp_packet(ssrc: u32, seq: u16, ts: u32, pt: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0x80, pt, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    v[2..4].copy_from_slice(&seq.to_be_bytes());
    v[4..8].copy_from_slice(&ts.to_be_bytes());
    v[8..12].copy_from_slice(&ssrc.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

impl Peer {
    /// Protects a plaintext RTP packet as this participant would send it.
    fn send_rtp(&mut self, plain: &[u8]) -> Vec<u8> {
        let ssrc = u32::from_be_bytes(plain[8..12].try_into().unwrap());
        let mut buf = plain.to_vec();
        buf.resize(plain.len() + 64, 0);
        let st = self.up_state.entry(ssrc).or_default();
        let n = self.up.protect_rtp(st, &mut buf, plain.len()).unwrap();
        buf.truncate(n);
        buf
    }

    fn send_rtcp(&mut self, plain: &[u8]) -> Vec<u8> {
        let mut buf = plain.to_vec();
        buf.resize(plain.len() + 64, 0);
        let n = self.up.protect_rtcp(&mut self.rtcp_up, &mut buf, plain.len()).unwrap();
        buf.truncate(n);
        buf
    }

    /// Decrypts what the SFU sent this participant: Ok(plaintext) or the SRTP error.
    fn recv(&mut self, wire: &[u8]) -> Vec<u8> {
        let mut buf = wire.to_vec();
        let len = buf.len();
        if demux::classify(&buf) == demux::PacketClass::Rtcp {
            let n = self.down.unprotect_rtcp(&mut self.rtcp_down, &mut buf, len).expect("SRTCP from the SFU authenticates");
            buf.truncate(n);
            return buf;
        }
        let ssrc = u32::from_be_bytes(buf[8..12].try_into().unwrap());
        let st = self.down_state.entry(ssrc).or_insert_with(|| RtpRecvState::new(1024));
        let n = self.down.unprotect_rtp(st, &mut buf, len).expect("SRTP from the SFU authenticates");
        buf.truncate(n);
        buf
    }
}

struct Meeting {
    core: Core,
    peers: Vec<Peer>,
    generation: u64,
    out: OutBatch,
}

impl Meeting {
    fn new(n: u32) -> Self {
        let mut core = Core::new(CoreConfig::default());
        let (peers, specs): (Vec<_>, Vec<_>) = (1..=n).map(peer).unzip();
        let ops = specs.into_iter().map(|mut s| {
            s.remote = None;
            Op::UpsertLeg(s)
        });
        core.apply(Delta { generation: Generation(1), replace_all: false, ops: ops.collect() }).unwrap();
        Self { core, peers, generation: 1, out: OutBatch::new(256) }
    }

    fn apply(&mut self, ops: Vec<Op>) -> Result<Generation, DeltaError> {
        let g = Generation(self.generation + 1);
        let r = self.core.apply(Delta { generation: g, replace_all: false, ops });
        if r.is_ok() {
            self.generation += 1;
        }
        r
    }

    /// Peer `i` (0-based) sends `wire`; returns (receiving peer index, plaintext) per output.
    fn deliver(&mut self, i: usize, wire: &[u8], now: Instant) -> Vec<(usize, Vec<u8>)> {
        let mut buf = wire.to_vec();
        self.out.clear();
        let (port, addr) = (self.peers[i].port, self.peers[i].addr);
        self.core.handle_rx(now, port, addr, &mut buf, &mut self.out);
        let outs: Vec<(OutMeta, Vec<u8>)> = self.out.iter().map(|(m, b)| (*m, b.to_vec())).collect();
        outs.into_iter()
            .map(|(m, b)| {
                let j = self.peers.iter().position(|p| p.leg == m.leg).unwrap();
                assert_eq!(m.dst, self.peers[j].addr);
                assert_eq!(m.local_port, self.peers[j].port);
                (j, self.peers[j].recv(&b))
            })
            .collect()
    }
}

fn audio_track(id: u32, publisher: u32, ssrc: u32) -> TrackSpec {
    TrackSpec {
        dd_ext: None,
        id: TrackId(id),
        publisher: LegId(publisher),
        kind: MediaKind::Audio,
        clock_rate: 48_000,
        layers: vec![LayerSpec { ssrc: Some(Ssrc(ssrc)), rtx_ssrc: None, rid: None }],
        payload_types: vec![PayloadSpec { pt: Pt(111), codec: Codec::Audio, rtx_pt: None }],
        rid_ext: None,
        repaired_rid_ext: None,
        mid: None,
        audio_level_ext: None,
        speaker_group: None,
    }
}

fn video_track(id: u32, publisher: u32, ssrcs: &[u32]) -> TrackSpec {
    TrackSpec {
        dd_ext: None,
        id: TrackId(id),
        publisher: LegId(publisher),
        kind: MediaKind::Video,
        clock_rate: 90_000,
        layers: ssrcs.iter().map(|&s| LayerSpec { ssrc: Some(Ssrc(s)), rtx_ssrc: Some(Ssrc(s + 1)), rid: None }).collect(),
        payload_types: vec![PayloadSpec { pt: Pt(96), codec: Codec::Vp8, rtx_pt: Some(Pt(97)) }],
        rid_ext: None,
        repaired_rid_ext: None,
        mid: None,
        audio_level_ext: None,
        speaker_group: None,
    }
}

fn sub(subscriber: u32, track: u32, out_ssrc: u32, layer: u8) -> SubscriptionSpec {
    SubscriptionSpec {
        max_temporal: None,
        max_spatial: None,
        subscriber: LegId(subscriber),
        track: TrackId(track),
        out_ssrc: Ssrc(out_ssrc),
        out_rtx_ssrc: Some(Ssrc(out_ssrc + 1)),
        pt_map: vec![(Pt(111), Pt(109)), (Pt(96), Pt(100)), (Pt(97), Pt(101))],
        ext_map: vec![],
        target_layer: layer,
        paused: false,
        priority: 0,
        relay: Vec::new(),
    }
}

fn ms(n: u64) -> Instant {
    Instant::from_nanos(n * 1_000_000)
}

const VP8_KEY: [u8; 4] = [0x10, 0x00, 0x9d, 0x01];
const VP8_DELTA: [u8; 4] = [0x10, 0x01, 0x00, 0x00];
const VP8_CONT: [u8; 4] = [0x00, 0x42, 0x42, 0x42];

#[test]
fn audio_reaches_every_subscriber_but_the_publisher_rewritten_and_reprotected() {
    let mut m = Meeting::new(3);
    m.apply(vec![Op::UpsertTrack(audio_track(1, 1, 0x1111)), Op::UpsertSubscription(sub(2, 1, 0x2001, 0)), Op::UpsertSubscription(sub(3, 1, 0x3001, 0))])
        .unwrap();
    // Subscribers' addresses are learned from their first authenticated packet: send an RR.
    for i in [1, 2] {
        let sender = m.peers[i].leg.0;
        let mut rr = [0u8; 8];
        let n = rtcp::write_rr(&mut rr, Ssrc(sender), &[]).unwrap();
        let wire = m.peers[i].send_rtcp(&rr[..n]);
        assert!(m.deliver(i, &wire, ms(0)).is_empty());
    }
    for k in 0..20u16 {
        let plain = rtp_packet(0x1111, 1000 + k, 960 * u32::from(k), 111, &[k as u8; 80]);
        let wire = m.peers[0].send_rtp(&plain);
        let got = m.deliver(0, &wire, ms(20 * u64::from(k)));
        assert_eq!(got.len(), 2, "packet {k}");
        for (j, p) in got {
            let pkt = rtp::Packet::new_checked(&p[..]).unwrap();
            let want_ssrc = if j == 1 { 0x2001 } else { 0x3001 };
            assert_eq!(pkt.ssrc(), Ssrc(want_ssrc));
            assert_eq!(pkt.payload_type(), 109);
            assert_eq!(pkt.sequence_number(), 1000 + k);
            assert_eq!(pkt.timestamp(), 960 * u32::from(k));
            assert_eq!(pkt.payload(), &[k as u8; 80][..]);
        }
    }
    assert_eq!(m.core.stats().tx_packets, 40);
    assert_eq!(m.core.stats().total_drops(), 2, "only the two RRs were consumed");
}

#[test]
fn paused_subscription_receives_nothing_and_resumes_seamlessly() {
    let mut m = audio_call();
    let send = |m: &mut Meeting, seq: u16| {
        let plain = rtp_packet(0x1111, seq, u32::from(seq) * 960, 111, &[1; 40]);
        let wire = m.peers[0].send_rtp(&plain);
        m.deliver(0, &wire, ms(u64::from(seq)))
    };
    assert_eq!(send(&mut m, 1).len(), 1);
    let mut paused = sub(2, 1, 0x2001, 0);
    paused.paused = true;
    m.apply(vec![Op::UpsertSubscription(paused.clone())]).unwrap();
    assert!(send(&mut m, 2).is_empty());
    assert_eq!(m.core.stats().drops_for(DropReason::Paused), 1);
    paused.paused = false;
    m.apply(vec![Op::UpsertSubscription(paused)]).unwrap();
    let got = send(&mut m, 3);
    assert_eq!(got.len(), 1, "resumed; SRTP state kept so the subscriber still authenticates it");
}

#[test]
fn a_delta_is_atomic_and_validated() {
    let mut m = Meeting::new(2);
    let g = m.core.tables().generation();
    // The track is fine, the self-subscription is not: neither may stay.
    let err = m.apply(vec![Op::UpsertTrack(audio_track(1, 1, 0x1111)), Op::UpsertSubscription(sub(1, 1, 0x2001, 0))]).unwrap_err();
    assert!(matches!(err, DeltaError::SelfSubscription { op: 1, .. }), "{err:?}");
    assert!(m.core.tables().track(TrackId(1)).is_none());
    assert_eq!(m.core.tables().generation(), g);
    // Wrong generation.
    let err = m.core.apply(Delta { generation: Generation(g.0 + 5), replace_all: false, ops: vec![] }).unwrap_err();
    assert!(matches!(err, DeltaError::Generation { .. }));
    // Bad key length names the field.
    let (_, mut bad) = peer(9);
    bad.rx.key.pop();
    let err = m.apply(vec![Op::UpsertLeg(bad)]).unwrap_err();
    assert!(matches!(err, DeltaError::Invalid { field: "leg.rx", .. }), "{err:?}");
    // Port clash.
    let (_, mut clash) = peer(9);
    clash.local_port = m.peers[0].port;
    assert!(matches!(m.apply(vec![Op::UpsertLeg(clash)]).unwrap_err(), DeltaError::PortInUse { .. }));
    // Removing a leg takes its tracks and subscriptions with it, and rolls back whole.
    m.apply(vec![Op::UpsertTrack(audio_track(1, 1, 0x1111)), Op::UpsertSubscription(sub(2, 1, 0x2001, 0))]).unwrap();
    let err = m.apply(vec![Op::RemoveLeg(LegId(1)), Op::RemoveTrack(TrackId(77))]).unwrap_err();
    assert!(matches!(err, DeltaError::UnknownTrack { op: 1, .. }));
    assert!(m.core.tables().track(TrackId(1)).is_some_and(|t| t.subs.len() == 1), "rolled back");
    assert_eq!(m.core.tables().leg(LegId(2)).unwrap().egress.len(), 2);
    m.apply(vec![Op::RemoveLeg(LegId(1))]).unwrap();
    assert!(m.core.tables().track(TrackId(1)).is_none());
    assert!(m.core.tables().leg(LegId(2)).unwrap().egress.is_empty());
    assert_eq!(m.core.tables().leg_by_port(20_001), None, "port freed");
}

#[test]
fn bad_packets_are_counted_by_reason() {
    let mut m = Meeting::new(2);
    m.apply(vec![Op::UpsertTrack(audio_track(1, 1, 0x1111)), Op::UpsertSubscription(sub(2, 1, 0x2001, 0))]).unwrap();
    let plain = rtp_packet(0x1111, 1, 0, 111, &[0; 20]);
    let good = m.peers[0].send_rtp(&plain);
    let mut out = OutBatch::new(8);
    let (port, addr) = (m.peers[0].port, m.peers[0].addr);
    let stranger = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), 9));
    let mut run = |m: &mut Meeting, port: u16, from: SocketAddr, bytes: &[u8]| {
        let mut b = bytes.to_vec();
        m.core.handle_rx(ms(0), port, from, &mut b, &mut out);
    };
    run(&mut m, 9, addr, &good);
    assert_eq!(m.core.stats().drops_for(DropReason::UnknownSource), 1);
    let mut tampered = good.clone();
    *tampered.last_mut().unwrap() ^= 1;
    run(&mut m, port, addr, &tampered);
    assert_eq!(m.core.stats().drops_for(DropReason::AuthFailed), 1);
    let other = m.peers[0].send_rtp(&rtp_packet(0x9999, 1, 0, 111, &[0; 20]));
    run(&mut m, port, addr, &other);
    assert_eq!(m.core.stats().drops_for(DropReason::UnknownSsrc), 1);
    run(&mut m, port, addr, &good);
    run(&mut m, port, addr, &good);
    assert_eq!(m.core.stats().drops_for(DropReason::Replayed), 1);
    run(&mut m, port, stranger, &good);
    assert_eq!(m.core.stats().drops_for(DropReason::UnknownSource), 2, "remote latched by the first good packet");
    run(&mut m, port, addr, &[0x00, 0x01, 0x00, 0x00]);
    assert_eq!(m.core.stats().drops_for(DropReason::NotMedia), 1);
    for cut in 0..good.len() {
        run(&mut m, port, addr, &good[..cut]);
    }
    assert_eq!(m.core.stats().rx_packets, 7 + good.len() as u64);
    // The subscriber never sent anything, so even the good packet had nowhere to go: every
    // packet has exactly one drop reason.
    assert_eq!(m.core.stats().drops_for(DropReason::NoDestination), 1);
    assert_eq!(m.core.stats().total_drops(), m.core.stats().rx_packets);
}

/// Sends one VP8 frame of `n` packets on `ssrc` starting at `seq`.
fn vp8_frame(m: &mut Meeting, ssrc: u32, seq: u16, ts: u32, key: bool, n: u16, now: Instant) -> Vec<(usize, Vec<u8>)> {
    let mut got = Vec::new();
    for k in 0..n {
        let payload: &[u8] = if k > 0 {
            &VP8_CONT
        } else if key {
            &VP8_KEY
        } else {
            &VP8_DELTA
        };
        let plain = rtp_packet(ssrc, seq.wrapping_add(k), ts, 96, payload);
        let wire = m.peers[0].send_rtp(&plain);
        got.extend(m.deliver(0, &wire, now));
    }
    got
}

/// Leg 1's audio track (SSRC 0x1111) and leg 2's subscription to it (out-SSRC 0x2001).
fn audio_call_ops() -> Vec<Op> {
    vec![Op::UpsertTrack(audio_track(1, 1, 0x1111)), Op::UpsertSubscription(sub(2, 1, 0x2001, 0))]
}

/// Two legs, [`audio_call_ops`] applied, the subscriber's remote latched by an RR.
fn audio_call() -> Meeting {
    let mut m = Meeting::new(2);
    m.apply(audio_call_ops()).unwrap();
    let mut rr = [0u8; 8];
    let n = rtcp::write_rr(&mut rr, Ssrc(2), &[]).unwrap();
    let wire = m.peers[1].send_rtcp(&rr[..n]);
    m.deliver(1, &wire, ms(0));
    m
}

fn latch_all(m: &mut Meeting) {
    for i in 0..m.peers.len() {
        let mut rr = [0u8; 8];
        let n = rtcp::write_rr(&mut rr, Ssrc(m.peers[i].leg.0), &[]).unwrap();
        let wire = m.peers[i].send_rtcp(&rr[..n]);
        m.deliver(i, &wire, ms(0));
    }
}

#[test]
fn simulcast_switch_waits_for_a_keyframe_asks_for_one_and_keeps_the_stream_continuous() {
    let mut m = Meeting::new(2);
    m.apply(vec![Op::UpsertTrack(video_track(1, 1, &[0x100, 0x200, 0x300])), Op::UpsertSubscription(sub(2, 1, 0x2001, 0))]).unwrap();
    latch_all(&mut m);
    // Layer 0 delta frame first: nothing forwarded, one PLI upstream for layer 0.
    let got = vp8_frame(&mut m, 0x100, 10, 3000, false, 2, ms(1));
    assert_eq!(got.len(), 1, "{got:?}");
    let pli = rtcp::Pli::new_checked(&got[0].1[..]).expect("a PLI to the publisher");
    assert_eq!(got[0].0, 0);
    assert_eq!(pli.media_ssrc(), Ssrc(0x100));
    // Throttled: another delta frame 50 ms later asks nothing.
    assert!(vp8_frame(&mut m, 0x100, 12, 6000, false, 2, ms(50)).is_empty());
    // Keyframe: forwarded from here.
    let got = vp8_frame(&mut m, 0x100, 14, 9000, true, 3, ms(60));
    let seqs: Vec<u16> = got.iter().map(|(_, p)| rtp::Packet::new_checked(&p[..]).unwrap().sequence_number()).collect();
    assert_eq!(seqs, [14, 15, 16]);
    // Other layers are filtered without touching the sequence space.
    assert!(vp8_frame(&mut m, 0x300, 500, 1, true, 2, ms(70)).is_empty());
    // Target layer 2: layer 0 keeps flowing, a PLI goes up for layer 2.
    let mut up = sub(2, 1, 0x2001, 2);
    up.target_layer = 2;
    m.apply(vec![Op::UpsertSubscription(up)]).unwrap();
    let got = vp8_frame(&mut m, 0x100, 17, 12000, false, 1, ms(300));
    assert_eq!(got.len(), 2, "layer-0 packet plus a PLI for layer 2");
    let pli = got.iter().find_map(|(_, p)| rtcp::Pli::new_checked(&p[..]).ok()).unwrap();
    assert_eq!(pli.media_ssrc(), Ssrc(0x300));
    let got = vp8_frame(&mut m, 0x300, 510, 777, true, 2, ms(310));
    let pkts: Vec<(u16, u32)> = got
        .iter()
        .map(|(_, p)| {
            let p = rtp::Packet::new_checked(&p[..]).unwrap();
            (p.sequence_number(), p.timestamp())
        })
        .collect();
    assert_eq!(pkts[0].0, 18, "continues right after 17");
    assert_eq!(pkts[1].0, 19);
    assert!(pkts[0].1.wrapping_sub(12000) >= 900 && pkts[0].1.wrapping_sub(12000) < 0x8000_0000, "timestamp moved forward by ~10 ms");
    // The old layer is now filtered.
    assert!(vp8_frame(&mut m, 0x100, 18, 15000, false, 1, ms(320)).is_empty());
    assert_eq!(m.core.stats().layer_switches, 2);
}

#[test]
fn nack_is_answered_from_the_cache_as_rtx_and_the_rest_is_asked_upstream() {
    let mut m = Meeting::new(2);
    m.apply(vec![Op::UpsertTrack(video_track(1, 1, &[0x100])), Op::UpsertSubscription(sub(2, 1, 0x2001, 0))]).unwrap();
    latch_all(&mut m);
    let got = vp8_frame(&mut m, 0x100, 100, 3000, true, 5, ms(1));
    assert_eq!(got.len(), 5);
    // The subscriber lost 102 and 103 (out seq = in seq here), and asks for 200 which never was.
    let mut buf = [0u8; 64];
    let items = [rtcp::NackItem { pid: 102, blp: 0b1 }];
    let n = rtcp::write_nack(&mut buf, Ssrc(2), Ssrc(0x2001), &items).unwrap();
    let wire = m.peers[1].send_rtcp(&buf[..n]);
    let got = m.deliver(1, &wire, ms(10));
    assert_eq!(got.len(), 2);
    for (k, (j, p)) in got.iter().enumerate() {
        assert_eq!(*j, 1);
        let pkt = rtp::Packet::new_checked(&p[..]).unwrap();
        assert_eq!(pkt.ssrc(), Ssrc(0x2002), "RTX SSRC");
        assert_eq!(pkt.payload_type(), 101);
        assert_eq!(&pkt.payload()[..2], &(102 + k as u16).to_be_bytes(), "OSN");
        assert_eq!(&pkt.payload()[2..], &VP8_CONT);
    }
    assert_eq!(m.core.stats().nack_answered, 2);
    let items = [rtcp::NackItem { pid: 105, blp: 0 }];
    let n = rtcp::write_nack(&mut buf, Ssrc(2), Ssrc(0x2001), &items).unwrap();
    let wire = m.peers[1].send_rtcp(&buf[..n]);
    assert!(m.deliver(1, &wire, ms(11)).is_empty(), "105 was never sent to the subscriber: nothing to map");
    assert_eq!(m.core.stats().nack_forwarded, 0);
    // 106 is lost on the way to the SFU, 107 arrives: the subscriber NACKs 106, the cache cannot
    // answer, so the SFU NACKs the publisher for 106 in the publisher's own sequence space.
    let _lost = m.peers[0].send_rtp(&rtp_packet(0x100, 106, 6000, 96, &VP8_CONT));
    let wire = m.peers[0].send_rtp(&rtp_packet(0x100, 107, 6000, 96, &VP8_CONT));
    assert_eq!(m.deliver(0, &wire, ms(12)).len(), 1);
    let n = rtcp::write_nack(&mut buf, Ssrc(2), Ssrc(0x2001), &[rtcp::NackItem { pid: 106, blp: 0 }]).unwrap();
    let wire = m.peers[1].send_rtcp(&buf[..n]);
    let got = m.deliver(1, &wire, ms(13));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, 0, "to the publisher");
    let nack = rtcp::Nack::new_checked(&got[0].1[..]).expect("a NACK");
    assert_eq!(nack.media_ssrc(), Ssrc(0x100));
    assert_eq!(nack.sequence_numbers().collect::<Vec<_>>(), vec![106]);
    assert_eq!(m.core.stats().nack_forwarded, 1);
}

/// 80 packets lost before the SFU, NACKed twice within 100 ms: the first NACK asks the publisher
/// for as many as one upstream request holds (64); the repeat is not asked again for those, but
/// the 16 that did not fit go upstream now (they were never asked).
#[test]
fn a_repeated_nack_asks_upstream_only_what_was_not_asked_yet() {
    let mut m = Meeting::new(2);
    m.apply(vec![Op::UpsertTrack(video_track(1, 1, &[0x100])), Op::UpsertSubscription(sub(2, 1, 0x2001, 0))]).unwrap();
    latch_all(&mut m);
    let mut key = rtp_packet(0x100, 100, 3000, 96, &VP8_KEY);
    key[1] |= 0x80;
    let wire = m.peers[0].send_rtp(&key);
    assert_eq!(m.deliver(0, &wire, ms(1)).len(), 1);
    let wire = m.peers[0].send_rtp(&rtp_packet(0x100, 181, 6000, 96, &VP8_CONT));
    assert_eq!(m.deliver(0, &wire, ms(2)).len(), 1, "101..=180 lost on the way to the SFU");
    // 101..=180 in five items of 16.
    let items: Vec<rtcp::NackItem> = (0..5).map(|i| rtcp::NackItem { pid: 101 + 16 * i, blp: 0x7fff }).collect();
    let mut buf = [0u8; 128];
    let n = rtcp::write_nack(&mut buf, Ssrc(2), Ssrc(0x2001), &items).unwrap();
    let upstream = |m: &mut Meeting, at| {
        let wire = m.peers[1].send_rtcp(&buf[..n]);
        m.deliver(1, &wire, at)
            .iter()
            .filter(|(to, _)| *to == 0)
            .flat_map(|(_, p)| rtcp::Nack::new_checked(&p[..]).expect("a NACK").sequence_numbers().collect::<Vec<_>>())
            .collect::<Vec<u16>>()
    };
    assert_eq!(upstream(&mut m, ms(10)), (101..=164).collect::<Vec<_>>());
    assert_eq!(upstream(&mut m, ms(40)), (165..=180).collect::<Vec<_>>(), "the overflow is asked now, the rest not again");
    let s = m.core.stats();
    assert_eq!((s.nack_forwarded, s.nack_suppressed), (80, 64));
}

#[test]
fn unsignalled_layer_is_learned_from_its_rid_only_when_it_authenticates() {
    let mut m = Meeting::new(2);
    let mut track = video_track(1, 1, &[0x100]);
    track.layers = ["q", "f"].iter().map(|r| LayerSpec { ssrc: None, rtx_ssrc: None, rid: Some(r.to_string()) }).collect();
    track.rid_ext = Some(4);
    m.apply(vec![Op::UpsertTrack(track), Op::UpsertSubscription(sub(2, 1, 0x2001, 1))]).unwrap();
    latch_all(&mut m);
    // RTP with a one-byte header extension (RFC 8285 §4.2) carrying RID "f" under id 4.
    let with_rid = |ssrc: u32, seq: u16, rid: u8, payload: &[u8]| {
        let mut p = rtp_packet(ssrc, seq, 9000, 96, &[]);
        p[0] |= 0x10;
        p.extend_from_slice(&[0xBE, 0xDE, 0x00, 0x01, 0x40, rid, 0x00, 0x00]);
        p.extend_from_slice(payload);
        p
    };
    // Forged: right RID, wrong key. Dropped as an auth failure, nothing learned.
    let mut forger = peer(1).0;
    forger.up = SrtpKeys::new(PROFILE, &[0xEE; 16], &[0xEE; 12]).unwrap();
    let forged = forger.send_rtp(&with_rid(0x7777, 1, b'f', &VP8_KEY));
    assert!(m.deliver(0, &forged, ms(1)).is_empty());
    assert_eq!(m.core.stats().drops_for(DropReason::AuthFailed), 1);
    assert_eq!(m.core.tables().track(TrackId(1)).unwrap().layers[1].ssrc, None);
    // The real publisher: learned, and forwarded as layer 1.
    let wire = m.peers[0].send_rtp(&with_rid(0x5555, 1, b'f', &VP8_KEY));
    let got = m.deliver(0, &wire, ms(2));
    assert_eq!(got.len(), 1);
    let pkt = rtp::Packet::new_checked(&got[0].1[..]).unwrap();
    assert_eq!(pkt.ssrc(), Ssrc(0x2001));
    assert_eq!(pkt.find_extension(4), None, "the subscriber did not negotiate the RID extension");
    assert_eq!(m.core.tables().track(TrackId(1)).unwrap().layers[1].ssrc, Some(Ssrc(0x5555)));
    assert!(std::iter::from_fn(|| m.core.poll_event()).any(|e| matches!(e, Event::SsrcLearned { layer: 1, ssrc: Ssrc(0x5555), .. })));
    // Later packets of that SSRC need no RID.
    let wire = m.peers[0].send_rtp(&rtp_packet(0x5555, 2, 9000, 96, &VP8_CONT));
    assert_eq!(m.deliver(0, &wire, ms(3)).len(), 1);
}

/// A camera and a screen share bundled on one leg both send RIDs "l" and "h" (RIDs are scoped to
/// their m-line): each layer is learned by the track whose MID the packet carries, never by the
/// other track's free layer of the same RID.
#[test]
fn rids_are_learned_within_their_mid() {
    let mut m = Meeting::new(2);
    let rid_track = |id: u32, mid: &str| {
        let mut t = video_track(id, 1, &[0x100 + id]);
        t.layers = ["l", "h"].iter().map(|r| LayerSpec { ssrc: None, rtx_ssrc: None, rid: Some(r.to_string()) }).collect();
        t.rid_ext = Some(4);
        t.mid = Some(MidSpec { ext: 3, value: mid.into() });
        t
    };
    m.apply(vec![
        Op::UpsertTrack(rid_track(1, "1")),
        Op::UpsertTrack(rid_track(3, "2")),
        Op::UpsertSubscription(sub(2, 1, 0x2001, 1)),
        Op::UpsertSubscription(sub(2, 3, 0x2003, 1)),
    ])
    .unwrap();
    latch_all(&mut m);
    // One-byte extensions: MID under id 3, RID under id 4.
    let with = |ssrc: u32, mid: u8, rid: u8| {
        let mut p = rtp_packet(ssrc, 1, 9000, 96, &[]);
        p[0] |= 0x10;
        p.extend_from_slice(&[0xBE, 0xDE, 0x00, 0x01, 0x30, mid, 0x40, rid]);
        p.extend_from_slice(&VP8_KEY);
        p
    };
    // The camera sends only "l"; the screen share "l" and "h". The screen's "h" must not land on
    // the camera's free "h".
    for (ssrc, mid, rid) in [(0xc1, b'1', b'l'), (0x51, b'2', b'l'), (0x52, b'2', b'h')] {
        let wire = m.peers[0].send_rtp(&with(ssrc, mid, rid));
        m.deliver(0, &wire, ms(1));
    }
    let layer = |m: &Meeting, t: u32, l: usize| m.core.tables().track(TrackId(t)).unwrap().layers[l].ssrc;
    assert_eq!((layer(&m, 1, 0), layer(&m, 1, 1)), (Some(Ssrc(0xc1)), None), "the camera");
    assert_eq!((layer(&m, 3, 0), layer(&m, 3, 1)), (Some(Ssrc(0x51)), Some(Ssrc(0x52))), "the screen share");
    // A RID whose MID names no track of the leg is not learned.
    let wire = m.peers[0].send_rtp(&with(0x99, b'7', b'h'));
    assert!(m.deliver(0, &wire, ms(2)).is_empty());
    assert_eq!(layer(&m, 1, 1), None);
}

/// Two cores holding one meeting's tables (ports of even legs on core 0, odd on core 1), every
/// remote known to both, and hand-overs carried between them as the worker glue does.
struct TwoCores {
    cores: Vec<Core>,
    out: Vec<OutBatch>,
    /// Hand-overs carried, by kind name.
    handed: Vec<&'static str>,
}

impl TwoCores {
    fn new(m: &Meeting) -> Self {
        let cores = (0..2u16)
            .map(|index| {
                let mut c = Core::new(CoreConfig { shard: Shard { index, count: 2 }, ..CoreConfig::default() });
                c.apply(m.core.tables().snapshot()).unwrap();
                for p in &m.peers {
                    c.set_remote(p.leg, p.addr).unwrap();
                }
                c
            })
            .collect();
        Self { cores, out: vec![OutBatch::new(256), OutBatch::new(256)], handed: Vec::new() }
    }

    /// Peer `p` sends `wire` (to the core that owns its port); returns every output of both cores
    /// (until no hand-over is left) as (core, meta, bytes).
    fn deliver(&mut self, p: &Peer, wire: &[u8], now: Instant) -> Vec<(usize, OutMeta, Vec<u8>)> {
        let c = usize::from(p.port % 2);
        let mut buf = wire.to_vec();
        self.out[c].clear();
        self.cores[c].handle_rx(now, p.port, p.addr, &mut buf, &mut self.out[c]);
        let mut all: Vec<_> = self.out[c].iter().map(|(m, b)| (c, *m, b.to_vec())).collect();
        all.extend(self.deliver_handoffs(now));
        all
    }

    /// Carries hand-overs between the cores until none is left; returns the outputs they made.
    fn deliver_handoffs(&mut self, now: Instant) -> Vec<(usize, OutMeta, Vec<u8>)> {
        let mut all = Vec::new();
        loop {
            let mut any = false;
            for k in 0..2 {
                while let Some(mut h) = self.cores[k].poll_handoff() {
                    any = true;
                    let to = usize::from(h.to);
                    assert_ne!(to, k, "a core hands nothing to itself");
                    self.handed.push(match h.kind {
                        HandoffKind::Media { .. } => "media",
                        HandoffKind::Sr { .. } => "sr",
                        HandoffKind::Keyframe { .. } => "keyframe",
                        HandoffKind::Upstream => "upstream",
                        HandoffKind::Demand { .. } => "demand",
                        HandoffKind::Speakers { .. } => "speakers",
                    });
                    self.out[to].clear();
                    self.cores[to].handle_handoff(now, &mut h, &mut self.out[to]);
                    all.extend(self.out[to].iter().map(|(m, b)| (to, *m, b.to_vec())));
                    self.cores[k].recycle(h);
                }
            }
            if !any {
                return all;
            }
        }
    }
}

/// Egress ownership: a publisher's packet is decrypted once, on the core that owns its leg;
/// the copies for subscriber legs another core owns are built there from the packet handed over
/// once per packet (not per copy), so each leg's packets leave from its own core, and every
/// subscriber gets exactly the bytes one core alone would send it. The hand-over buffers go back
/// to their pool: one buffer serves the whole run.
#[test]
fn copies_for_another_cores_legs_are_built_there_byte_for_byte_as_one_core_builds_them() {
    let mut m = Meeting::new(7);
    let subs: Vec<Op> = (2..=7).map(|s| Op::UpsertSubscription(sub(s, 1, 0x1000 * s, 0))).collect();
    m.apply([vec![Op::UpsertTrack(video_track(1, 1, &[0x100]))], subs].concat()).unwrap();
    for p in &m.peers {
        m.core.set_remote(p.leg, p.addr).unwrap();
    }
    let mut two = TwoCores::new(&m);
    let mut one: std::collections::BTreeMap<u32, Vec<Vec<u8>>> = Default::default();
    let mut split: std::collections::BTreeMap<u32, Vec<Vec<u8>>> = Default::default();
    for k in 0..40u16 {
        let payload: &[u8] = if k == 0 {
            &VP8_KEY
        } else if k % 4 == 0 {
            &VP8_DELTA
        } else {
            &VP8_CONT
        };
        let wire = m.peers[0].send_rtp(&rtp_packet(0x100, 500 + k, 3000 * u32::from(k / 4), 96, payload));
        let mut buf = wire.clone();
        m.out.clear();
        m.core.handle_rx(ms(u64::from(k)), m.peers[0].port, m.peers[0].addr, &mut buf, &mut m.out);
        for (meta, b) in m.out.iter() {
            one.entry(meta.leg.0).or_default().push(b.to_vec());
        }
        for (core, meta, b) in two.deliver(&m.peers[0], &wire, ms(u64::from(k))) {
            assert_eq!(usize::from(meta.local_port % 2), core, "leg {} served by core {core}, not its own", meta.leg.0);
            split.entry(meta.leg.0).or_default().push(b);
        }
    }
    assert_eq!(one.keys().copied().collect::<Vec<_>>(), vec![2, 3, 4, 5, 6, 7]);
    assert!(one.values().all(|v| v.len() == 40), "every subscriber got every packet");
    assert_eq!(split, one, "the same bytes to every leg with two cores as with one");
    // Core 1 (the publisher's) handed each packet once to core 0, whatever its three legs.
    assert_eq!(two.handed, vec!["media"; 40]);
    let (s0, s1) = (two.cores[0].stats(), two.cores[1].stats());
    assert_eq!((s1.handoffs_out, s0.handoffs_in, s1.handoffs_dropped), (40, 40, 0));
    assert_eq!(s1.handoff_buffers, 1, "the buffer came back to the pool every time");
    assert_eq!((s0.tx_packets, s1.tx_packets), (120, 120), "each core counts its own copies");
}

/// Layer demand across cores: the track's core reports which layers nobody wants, with the
/// wishes of the subscriptions another core serves (told with `HandoffKind::Demand`): a layer a
/// subscriber on the other core receives is never reported unwanted; the one nobody takes is,
/// after 2 s; only the track's core reports (and reports the stream started).
#[test]
fn layer_demand_counts_the_subscribers_of_every_core() {
    let mut m = Meeting::new(2);
    m.apply(vec![Op::UpsertTrack(video_track(1, 1, &[0x100, 0x200])), Op::UpsertSubscription(sub(2, 1, 0x2000, 0))]).unwrap();
    let mut two = TwoCores::new(&m);
    let (mut events0, mut events1) = (Vec::new(), Vec::new());
    for k in 0..100u16 {
        let now = ms(u64::from(k) * 33);
        for ssrc in [0x100, 0x200] {
            let payload: &[u8] = if k == 0 { &VP8_KEY } else { &VP8_DELTA };
            let wire = m.peers[0].send_rtp(&rtp_packet(ssrc, k, u32::from(k) * 3000, 96, payload));
            two.deliver(&m.peers[0], &wire, now);
        }
        for c in 0..2 {
            two.out[c].clear();
            two.cores[c].handle_timeout(now, &mut two.out[c]);
        }
        two.deliver_handoffs(now);
        events0.extend(std::iter::from_fn(|| two.cores[0].poll_event()));
        events1.extend(std::iter::from_fn(|| two.cores[1].poll_event()));
    }
    let demand = |ev: &[Event]| -> Vec<(u8, bool)> {
        ev.iter()
            .filter_map(|e| match e {
                Event::LayerDemand { layer, wanted, .. } => Some((*layer, *wanted)),
                _ => None,
            })
            .collect()
    };
    assert_eq!(demand(&events1), vec![(1, false)], "layer 1 unwanted; layer 0 wanted by core 0's subscriber");
    assert!(demand(&events0).is_empty(), "only the track's core reports demand");
    let started = |ev: &[Event]| ev.iter().filter(|e| matches!(e, Event::StreamStarted { .. })).count();
    assert_eq!((started(&events0), started(&events1)), (0, 2));
    assert!(two.handed.contains(&"demand"), "core 0 told core 1 what its subscribers want");
}

/// Feedback is handled on the core that owns the subscriber's leg (its rewriter, cache and send
/// contexts): a NACK is answered from that core's cache; what the cache lacks goes upstream
/// through the publisher's core (one SRTCP index per leg); a PLI becomes a keyframe request there;
/// the publisher's sender report reaches the subscribers of both cores, each from its own.
#[test]
fn feedback_is_answered_where_the_subscriber_is_and_what_concerns_the_publisher_goes_to_its_core() {
    let mut m = Meeting::new(3);
    m.apply(vec![Op::UpsertTrack(video_track(1, 1, &[0x100])), Op::UpsertSubscription(sub(2, 1, 0x2000, 0)), Op::UpsertSubscription(sub(3, 1, 0x3000, 0))])
        .unwrap();
    let mut two = TwoCores::new(&m);
    let (publ, subr) = (0usize, 1usize);
    // Publisher (port 20001) on core 1; subscriber 2 (port 20002) on core 0. Seq 52 is lost on
    // the way in.
    for k in [50u16, 51, 53] {
        let payload: &[u8] = if k == 50 { &VP8_KEY } else { &VP8_CONT };
        let wire = m.peers[publ].send_rtp(&rtp_packet(0x100, k, 0, 96, payload));
        let outs = two.deliver(&m.peers[publ], &wire, ms(1));
        assert_eq!(outs.iter().filter(|(c, meta, _)| *c == 0 && meta.leg == LegId(2)).count(), 1);
    }
    two.handed.clear();
    // A NACK for 51 (cached on core 0) and 52 (never received).
    let mut buf = [0u8; 32];
    let n = rtcp::write_nack(&mut buf, Ssrc(2), Ssrc(0x2000), &[rtcp::NackItem { pid: 51, blp: 0b1 }]).unwrap();
    let wire = m.peers[subr].send_rtcp(&buf[..n]);
    let outs = two.deliver(&m.peers[subr], &wire, ms(5));
    assert_eq!(two.handed, vec!["upstream"], "only the miss crosses to the publisher's core");
    let to_sub: Vec<_> = outs.iter().filter(|(c, meta, _)| *c == 0 && meta.leg == LegId(2)).collect();
    assert_eq!(to_sub.len(), 1, "51 answered from core 0's cache");
    let plain = m.peers[subr].recv(&to_sub[0].2);
    let pkt = rtp::Packet::new_checked(&plain[..]).unwrap();
    assert_eq!((pkt.ssrc(), &pkt.payload()[..2]), (Ssrc(0x2001), &51u16.to_be_bytes()[..]), "as RTX of 51");
    let upstream: Vec<_> = outs.iter().filter(|(_, meta, _)| meta.leg == LegId(1)).collect();
    assert_eq!(upstream.len(), 1);
    assert_eq!(upstream[0].0, 1, "sent by the publisher's core");
    let plain = m.peers[publ].recv(&upstream[0].2);
    let nack = rtcp::Nack::new_checked(&plain[..]).expect("a NACK");
    assert_eq!((nack.media_ssrc(), nack.sequence_numbers().collect::<Vec<_>>()), (Ssrc(0x100), vec![52]));
    // A PLI from subscriber 2: a keyframe request on the publisher's core.
    two.handed.clear();
    let n = rtcp::write_pli(&mut buf, Ssrc(2), Ssrc(0x2000)).unwrap();
    let wire = m.peers[subr].send_rtcp(&buf[..n]);
    let outs = two.deliver(&m.peers[subr], &wire, ms(500));
    assert_eq!(two.handed, vec!["keyframe"]);
    let pli: Vec<_> = outs.iter().filter(|(_, meta, _)| meta.leg == LegId(1)).collect();
    assert_eq!((pli.len(), pli[0].0), (1, 1), "one PLI, from the publisher's core");
    let plain = m.peers[publ].recv(&pli[0].2);
    assert_eq!(rtcp::Pli::new_checked(&plain[..]).expect("a PLI").media_ssrc(), Ssrc(0x100));
    // The publisher's sender report: rewritten for 2 on core 0 and for 3 on core 1.
    two.handed.clear();
    let info = rtcp::SenderInfo { ntp_timestamp: 0x1111_2222_3333_4444, rtp_timestamp: 0, packet_count: 3, octet_count: 12 };
    let n = rtcp::write_sr(&mut buf, Ssrc(0x100), &info, &[]).unwrap();
    let wire = m.peers[publ].send_rtcp(&buf[..n]);
    let outs = two.deliver(&m.peers[publ], &wire, ms(600));
    assert_eq!(two.handed, vec!["sr"]);
    let mut got: Vec<(usize, u32)> = outs.iter().map(|(c, meta, _)| (*c, meta.leg.0)).collect();
    got.sort_unstable();
    assert_eq!(got, vec![(0, 2), (1, 3)]);
    for (_, meta, bytes) in &outs {
        let i = usize::try_from(meta.leg.0 - 1).unwrap();
        let plain = m.peers[i].recv(bytes);
        let sr = rtcp::SenderReport::new_checked(&plain[..]).expect("an SR");
        assert_eq!((sr.sender_ssrc(), sr.sender_info().ntp_timestamp), (Ssrc(0x1000 * meta.leg.0), info.ntp_timestamp));
    }
}

/// A WebRTC leg: STUN/DTLS go to the slow path (rate-limited), media is refused both ways until
/// DTLS keys are installed, sending stops without ICE consent, and an unchanged upsert (a
/// control-plane resync) keeps the installed keys.
#[test]
fn webrtc_leg_gates_media_until_keys_and_consent() {
    use crate::table::{DtlsRole, EdgeSpec, IceCredentials};
    let mut m = Meeting::new(2);
    let (_, mut spec) = peer(2);
    let (real_rx, real_tx) = (spec.rx.clone(), spec.tx.clone());
    spec.rx = KeyMaterial::seeded(PROFILE, 0x77);
    spec.tx = KeyMaterial::seeded(PROFILE, 0x78);
    spec.edge = Some(Box::new(EdgeSpec {
        local: IceCredentials { ufrag: "sl".into(), pwd: "p".repeat(22) },
        remote: IceCredentials { ufrag: "br".into(), pwd: "q".repeat(22) },
        role: DtlsRole::Server,
        remote_fingerprint: "sha-256 00".into(),
    }));
    m.apply(vec![
        Op::UpsertLeg(spec.clone()),
        Op::UpsertTrack(audio_track(1, 1, 0x1111)),
        Op::UpsertSubscription(SubscriptionSpec {
            max_temporal: None,
            max_spatial: None,
            subscriber: LegId(2),
            track: TrackId(1),
            out_ssrc: Ssrc(0x2222),
            out_rtx_ssrc: None,
            pt_map: vec![(Pt(111), Pt(111))],
            ext_map: vec![],
            target_layer: 0,
            paused: false,
            priority: 0,
            relay: Vec::new(),
        }),
    ])
    .unwrap();
    let t = Instant::from_nanos(1_000_000_000);
    // STUN and DTLS on the WebRTC leg's port go to the slow path, from any source.
    let stun = [0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
    let stranger = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 9), 9));
    m.out.clear();
    m.core.handle_rx(t, m.peers[1].port, stranger, &mut stun.clone(), &mut m.out);
    m.core.handle_rx(t, m.peers[1].port, m.peers[1].addr, &mut [22u8, 0xfe, 0xfd, 0, 0][..], &mut m.out);
    let q: Vec<_> = std::iter::from_fn(|| m.core.poll_slow()).collect();
    assert_eq!(q.len(), 2);
    assert_eq!((q[0].leg, q[0].remote, q[0].bytes()), (LegId(2), stranger, &stun[..]));
    assert_eq!(q[1].bytes()[0], 22);
    // ...but not on a static-key leg's.
    m.core.handle_rx(t, m.peers[0].port, m.peers[0].addr, &mut stun.clone(), &mut m.out);
    assert_eq!(m.core.stats().drops_for(DropReason::NotMedia), 1);
    assert!(m.core.poll_slow().is_none());
    // No keys yet: the leg's media is refused, and nothing is sent to it.
    let mut p2 = SrtpKeys::new(PROFILE, &real_rx.key, &real_rx.salt).unwrap();
    let _ = &mut p2;
    let rr = m.peers[1].send_rtcp(&[0x80, 201, 0, 1, 0, 0, 0, 2]);
    assert!(m.deliver(1, &rr, t).is_empty());
    assert_eq!(m.core.stats().drops_for(DropReason::NotConnected), 1);
    let audio = m.peers[0].send_rtp(&rtp_packet(0x1111, 1, 960, 111, b"opus"));
    assert!(m.deliver(0, &audio, t).is_empty());
    assert_eq!(m.core.stats().drops_for(DropReason::NotConnected), 2);
    // Keys installed, remote set by nomination: still nothing without consent.
    m.core.install_edge_keys(LegId(2), real_rx.clone(), real_tx.clone()).unwrap();
    m.core.set_remote(LegId(2), m.peers[1].addr).unwrap();
    let audio = m.peers[0].send_rtp(&rtp_packet(0x1111, 2, 1920, 111, b"opus"));
    assert!(m.deliver(0, &audio, t).is_empty());
    assert_eq!(m.core.stats().drops_for(DropReason::NotConnected), 3);
    m.core.set_edge_consent(LegId(2), true);
    let audio = m.peers[0].send_rtp(&rtp_packet(0x1111, 3, 2880, 111, b"opus"));
    let got = m.deliver(0, &audio, t);
    assert_eq!(got.len(), 1, "the DTLS keys protect what the leg receives");
    assert_eq!(&got[0].1[12..], b"opus");
    // The participant's own packets now authenticate under the installed rx key.
    let rr = m.peers[1].send_rtcp(&[0x80, 201, 0, 1, 0, 0, 0, 2]);
    m.deliver(1, &rr, t);
    assert_eq!(m.core.stats().drops_for(DropReason::AuthFailed), 0);
    // A resync re-sending the same spec keeps keys and consent.
    m.apply(vec![Op::UpsertLeg(spec.clone())]).unwrap();
    let audio = m.peers[0].send_rtp(&rtp_packet(0x1111, 4, 3840, 111, b"opus"));
    assert_eq!(m.deliver(0, &audio, t).len(), 1);
    // Consent lost: sending stops.
    m.core.set_edge_consent(LegId(2), false);
    let audio = m.peers[0].send_rtp(&rtp_packet(0x1111, 5, 4800, 111, b"opus"));
    assert!(m.deliver(0, &audio, t).is_empty());
    assert_eq!(m.core.stats().drops_for(DropReason::NotConnected), 4);
    // A changed DTLS fingerprint (an ICE restart) drops the old keys.
    spec.edge.as_mut().unwrap().remote_fingerprint = "sha-256 01".into();
    m.apply(vec![Op::UpsertLeg(spec)]).unwrap();
    assert!(m.core.tables().leg(LegId(2)).unwrap().edge.as_ref().unwrap().keys.is_none());
    // A flood from one address costs bounded work: past the bucket, datagrams are dropped.
    let (mut queued, mut limited) = (0, 0);
    let before = m.core.stats().drops_for(DropReason::SlowPathLimited);
    for _ in 0..1000 {
        m.core.handle_rx(t, m.peers[1].port, stranger, &mut stun.clone(), &mut m.out);
        while m.core.poll_slow().is_some() {
            queued += 1;
        }
        limited = m.core.stats().drops_for(DropReason::SlowPathLimited) - before;
    }
    assert_eq!(queued + limited, 1000);
    assert!(queued <= crate::table::SLOW_PATH_BURST as u64, "{queued} queued");
}

#[test]
fn legs_and_streams_report_active_idle_started_and_stopped_once_per_transition() {
    let mut m = Meeting::new(2);
    m.apply(vec![Op::UpsertTrack(audio_track(1, 1, 0x1111)), Op::UpsertSubscription(sub(2, 1, 0x2001, 0))]).unwrap();
    // The activity events (and the latch), without the fan-out's own (layer switches).
    let events = |m: &mut Meeting| std::iter::from_fn(|| m.core.poll_event()).filter(|e| !matches!(e, Event::LayerSwitched { .. })).collect::<Vec<_>>();
    let (leg1, addr1) = (LegId(m.peers[0].leg.0), m.peers[0].addr);
    // A forged packet (wrong key) activates nothing.
    let mut forged = m.peers[0].send_rtp(&rtp_packet(0x1111, 1, 0, 111, &[1; 40]));
    let last = forged.len() - 1;
    forged[last] ^= 0xff;
    m.deliver(0, &forged, ms(0));
    assert_eq!(events(&mut m), [Event::FirstDrop { leg: leg1, reason: DropReason::AuthFailed, remote: addr1 }], "only the operator's note of it");
    for k in 0..10u16 {
        let wire = m.peers[0].send_rtp(&rtp_packet(0x1111, 10 + k, 960 * u32::from(k), 111, &[1; 40]));
        m.deliver(0, &wire, ms(20 * u64::from(k)));
    }
    let got = events(&mut m);
    assert_eq!(
        got,
        vec![
            Event::RemoteLatched { leg: leg1, remote: addr1 },
            Event::LegActive { leg: leg1, remote: addr1 },
            Event::StreamStarted { track: TrackId(1), layer: 0 },
        ]
    );
    // Quiet for less than the thresholds: nothing; past the stream's: stopped; past the leg's: idle.
    m.core.handle_timeout(ms(180) + STREAM_STOPPED_AFTER / 2, &mut m.out);
    m.out.clear();
    assert!(events(&mut m).is_empty());
    m.core.handle_timeout(ms(180) + STREAM_STOPPED_AFTER, &mut m.out);
    m.out.clear();
    assert_eq!(events(&mut m), vec![Event::StreamStopped { track: TrackId(1), layer: 0 }]);
    m.core.handle_timeout(ms(180) + LEG_IDLE_AFTER, &mut m.out);
    m.out.clear();
    assert_eq!(events(&mut m), vec![Event::LegIdle { leg: leg1 }]);
    m.core.handle_timeout(ms(180) + LEG_IDLE_AFTER * 2, &mut m.out);
    m.out.clear();
    assert!(events(&mut m).is_empty(), "each transition is reported once");
    // Media resumes: active and started again (the remote was already latched).
    let wire = m.peers[0].send_rtp(&rtp_packet(0x1111, 20, 9600, 111, &[1; 40]));
    m.deliver(0, &wire, ms(20_000));
    assert_eq!(events(&mut m), vec![Event::LegActive { leg: leg1, remote: addr1 }, Event::StreamStarted { track: TrackId(1), layer: 0 }]);
}

/// An RTP packet carrying transport-wide sequence number `tseq` in one-byte extension `ext`.
fn rtp_packet_twcc(ssrc: u32, seq: u16, ts: u32, ext: u8, tseq: u16) -> Vec<u8> {
    let mut v = rtp_packet(ssrc, seq, ts, 111, &[]);
    v[0] |= 0x10;
    let [a, b] = tseq.to_be_bytes();
    v.extend_from_slice(&[0xBE, 0xDE, 0, 1, (ext << 4) | 1, a, b, 0]);
    v.extend_from_slice(&[7; 60]);
    v
}

/// The uplink half of the feedback loop: a publisher that negotiated transport-cc gets
/// transport-cc feedback with every arrival within one tick, and receiver reports (RR + SDES)
/// with its loss and highest sequence number, protected with its leg's key; nothing is sent
/// before media arrives.
#[test]
fn publishers_get_receiver_reports_and_transport_cc_feedback() {
    let mut m = Meeting::new(2);
    let (_, mut spec) = peer(1);
    spec.feedback.twcc_ext = Some(5);
    m.apply(vec![Op::UpsertLeg(spec), Op::UpsertTrack(audio_track(1, 1, 0x1111))]).unwrap();
    let mut out = OutBatch::new(64);
    m.core.handle_timeout(ms(0), &mut out);
    assert!(out.is_empty(), "nothing to report before media");
    assert_eq!(m.core.poll_timeout(), ms(0) + SWEEP_INTERVAL);

    let mut arrivals = Vec::new();
    let mut rr = Vec::new();
    let mut fb = Vec::new();
    let mut collect = |m: &mut Meeting, out: &mut OutBatch| {
        for (meta, bytes) in out.iter() {
            assert_eq!(meta.leg, LegId(1), "feedback goes to the publisher only");
            let plain = m.peers[0].recv(bytes);
            for p in rtcp::compound(&plain) {
                let p = p.unwrap();
                match p.kind() {
                    rtcp::Kind::ReceiverReport => rr.push(rtcp::ReceiverReport::new_checked(p.as_bytes()).unwrap().report_block(0).unwrap().info()),
                    rtcp::Kind::TransportCc => fb.push(p.as_bytes().to_vec()),
                    rtcp::Kind::Sdes => {}
                    k => panic!("unexpected {k:?}"),
                }
            }
        }
        out.clear();
    };
    for k in 0..100u16 {
        let at = ms(1_000 + u64::from(k) * 20) + core::time::Duration::from_micros(u64::from(k % 7) * 300);
        if k != 10 {
            let wire = m.peers[0].send_rtp(&rtp_packet_twcc(0x1111, 500 + k, 960 * u32::from(k), 5, 9000 + k));
            m.deliver(0, &wire, at);
            arrivals.push((9000 + k, at));
            assert!(m.core.poll_timeout() <= at + crate::uplink::TWCC_INTERVAL, "feedback due within its interval");
        }
        // The worker's loop: run the core's timer whenever it is due.
        if m.core.poll_timeout() <= at {
            m.core.handle_timeout(at, &mut out);
            collect(&mut m, &mut out);
        }
    }
    m.core.handle_timeout(ms(4_000), &mut out);
    collect(&mut m, &mut out);

    // Transport-cc: every packet, the lost one as lost, arrivals within a 250 µs tick.
    assert!(fb.len() >= 30, "feedback every 50 ms over 2 s: {}", fb.len());
    let mut reported = std::collections::BTreeMap::new();
    for p in &fb {
        let t = rtcp::TransportCc::new_checked(&p[..]).unwrap();
        assert_eq!(t.sender_ssrc(), Ssrc(0xf000_0001));
        let mut at = i64::from(t.reference_time()) * 64_000;
        for r in t.packets() {
            let r = r.unwrap();
            let a = r.delta.map(|d| {
                at += i64::from(d) * 250;
                at
            });
            assert!(reported.insert(r.seq, a).is_none(), "{} reported twice", r.seq);
        }
    }
    assert_eq!(reported.len(), 100);
    assert_eq!(reported[&9010], None);
    for (seq, at) in &arrivals {
        let got = reported[seq].unwrap_or_else(|| panic!("{seq} reported lost"));
        assert!((at.as_nanos() as i64 / 1000 - got).abs() < 250, "{seq}");
    }
    // Receiver reports: the first after half a second (WebRTC-like interval), then every second.
    assert!((2..=4).contains(&rr.len()), "{} receiver reports in 3 s", rr.len());
    let last = rr.last().unwrap();
    assert_eq!((last.ssrc, last.highest_seq, last.cumulative_lost), (Ssrc(0x1111), 599, 1));
    assert_eq!(m.core.stats().twcc_feedback_sent as usize, fb.len());
    assert_eq!(m.core.stats().rtcp_reports_sent as usize, rr.len());
}

/// A leg that negotiated nothing (a static-key SDES peer) gets receiver reports only, at RFC
/// 3550's 5 s interval.
#[test]
fn static_key_publishers_get_receiver_reports_only() {
    let mut m = Meeting::new(2);
    m.apply(vec![Op::UpsertTrack(audio_track(1, 1, 0x1111))]).unwrap();
    let mut out = OutBatch::new(64);
    let mut kinds = Vec::new();
    for k in 0..600u16 {
        let at = ms(u64::from(k) * 20);
        let wire = m.peers[0].send_rtp(&rtp_packet_twcc(0x1111, k, 960 * u32::from(k), 5, k));
        m.deliver(0, &wire, at);
        if m.core.poll_timeout() <= at {
            m.core.handle_timeout(at, &mut out);
            for (_, bytes) in out.iter() {
                let plain = m.peers[0].recv(bytes);
                kinds.extend(rtcp::compound(&plain).map(|p| p.unwrap().kind()));
            }
            out.clear();
        }
    }
    // 12 s of media: at 2.5 s and 7.5 s.
    assert_eq!(kinds, vec![rtcp::Kind::ReceiverReport, rtcp::Kind::Sdes, rtcp::Kind::ReceiverReport, rtcp::Kind::Sdes]);
}

/// A publisher that negotiated only REMB (no transport-cc) gets REMB in its report compounds,
/// every second, naming its streams, with room above what it sends while nothing is lost.
#[test]
fn remb_only_publishers_get_remb_in_their_reports() {
    let mut m = Meeting::new(2);
    let (_, mut spec) = peer(1);
    spec.feedback.remb = true;
    m.apply(vec![Op::UpsertLeg(spec), Op::UpsertTrack(audio_track(1, 1, 0x1111))]).unwrap();
    let mut out = OutBatch::new(64);
    let mut rembs = Vec::new();
    for k in 0..300u16 {
        let at = ms(u64::from(k) * 10);
        let wire = m.peers[0].send_rtp(&rtp_packet(0x1111, k, 480 * u32::from(k), 111, &[1; 100]));
        m.deliver(0, &wire, at);
        if m.core.poll_timeout() <= at {
            m.core.handle_timeout(at, &mut out);
            for (_, bytes) in out.iter() {
                let plain = m.peers[0].recv(bytes);
                for p in rtcp::compound(&plain) {
                    if let Ok(r) = rtcp::Remb::new_checked(p.unwrap().as_bytes()) {
                        assert_eq!(r.ssrc(0), Some(Ssrc(0x1111)));
                        rembs.push(r.bitrate());
                    }
                }
            }
            out.clear();
        }
    }
    // 100 packets/s of 112 bytes ≈ 90 kbit/s flowing: REMB at 0.5 s, 1.5 s, 2.5 s, above it.
    assert_eq!(rembs.len(), 3, "{rembs:?}");
    assert!(rembs[1..].iter().all(|&b| b > 90_000 && b <= 1_000_000), "{rembs:?}");
}

/// A subscriber without congestion control that targets a layer the publisher stops sending is
/// moved to the best lower layer that flows (at its keyframe), and back when the layer returns.
#[test]
fn a_layer_that_stops_falls_back_to_the_best_that_flows_and_returns() {
    let mut m = Meeting::new(2);
    m.apply(vec![Op::UpsertTrack(video_track(1, 1, &[0x100, 0x200, 0x300])), Op::UpsertSubscription(sub(2, 1, 0x2001, 2))]).unwrap();
    latch_all(&mut m);
    let mut out = OutBatch::new(64);
    let mut tick = |m: &mut Meeting, now: Instant| {
        m.core.handle_timeout(now, &mut out);
        out.clear();
    };
    let to_sub = |got: &[(usize, Vec<u8>)]| got.iter().filter(|(i, _)| *i == 1).count();
    // All three layers flow; the subscriber is on layer 2.
    let (mut seq, mut t) = ([10u16, 100, 1000], 0u64);
    let frame = |m: &mut Meeting, layers: &[usize], key: bool, t: u64, seq: &mut [u16; 3]| {
        let mut got = Vec::new();
        for &l in layers {
            got.extend(vp8_frame(m, [0x100, 0x200, 0x300][l], seq[l], (t * 90) as u32, key, 1, ms(t)));
            seq[l] = seq[l].wrapping_add(1);
        }
        got
    };
    let got = frame(&mut m, &[0, 1, 2], true, t, &mut seq);
    assert_eq!(to_sub(&got), 1, "layer 2's keyframe");
    // Layer 2 stops; 0 and 1 go on. Past STREAM_STOPPED_AFTER the housekeeping moves the cap.
    for _ in 0..100 {
        t += 33;
        let got = frame(&mut m, &[0, 1], false, t, &mut seq);
        assert_eq!(to_sub(&got), 0, "nothing of layers 0 and 1 before the fallback's keyframe");
        tick(&mut m, ms(t));
    }
    assert_eq!(m.core.tables().track(TrackId(1)).unwrap().subs[0].alloc_layer, Some(1));
    // Layer 1's next keyframe switches the subscriber to it; layer 0 stays filtered.
    t += 33;
    let got = frame(&mut m, &[0, 1], true, t, &mut seq);
    assert_eq!(to_sub(&got), 1);
    assert_eq!(m.core.tables().track(TrackId(1)).unwrap().subs[0].current_layer, Some(1));
    // Layer 2 returns: the cap lifts, and its keyframe switches back.
    t += 33;
    frame(&mut m, &[0, 1, 2], false, t, &mut seq);
    tick(&mut m, ms(t + 300));
    assert_eq!(m.core.tables().track(TrackId(1)).unwrap().subs[0].alloc_layer, None);
    t += 400;
    frame(&mut m, &[0, 1, 2], true, t, &mut seq);
    assert_eq!(m.core.tables().track(TrackId(1)).unwrap().subs[0].current_layer, Some(2));
}

/// Unsubscribing and subscribing again with the same out-SSRC is one stream to the subscriber:
/// its sequence numbers continue where they stopped (the packets the publisher sent meanwhile are
/// not loss to the subscriber), its timestamps move forward, and the SRTP send state carries on
/// (a fresh one would start the rollover counter over under the same key and SSRC).
#[test]
fn resubscribing_with_the_same_out_ssrc_continues_the_stream() {
    let mut m = Meeting::new(2);
    m.apply(vec![Op::UpsertTrack(audio_track(1, 1, 0x1111)), Op::UpsertSubscription(sub(2, 1, 0x2001, 0))]).unwrap();
    latch_all(&mut m);
    let send = |m: &mut Meeting, k: u16| {
        let plain = rtp_packet(0x1111, 1000 + k, 960 * u32::from(k), 111, &[1; 40]);
        let wire = m.peers[0].send_rtp(&plain);
        m.deliver(0, &wire, ms(20 * u64::from(k)))
            .into_iter()
            .map(|(_, p)| {
                let pkt = rtp::Packet::new_checked(&p[..]).unwrap();
                (pkt.ssrc(), pkt.sequence_number(), pkt.timestamp())
            })
            .collect::<Vec<_>>()
    };
    let mut last = None;
    for k in 0..10 {
        last = send(&mut m, k).pop();
    }
    let (_, last_seq, last_ts) = last.expect("subscribed");
    m.apply(vec![Op::RemoveSubscription { subscriber: LegId(2), track: TrackId(1) }]).unwrap();
    // Six seconds without the subscription: 300 packets the subscriber never sees.
    for k in 10..310 {
        assert!(send(&mut m, k).is_empty());
    }
    m.apply(vec![Op::UpsertSubscription(sub(2, 1, 0x2001, 0))]).unwrap();
    let got = send(&mut m, 310);
    assert_eq!(got.len(), 1, "resubscribed; the subscriber authenticates it");
    let (ssrc, seq, ts) = got[0];
    assert_eq!(ssrc, Ssrc(0x2001));
    assert_eq!(seq, last_seq.wrapping_add(1), "sequence continues after the unsubscribe (was {last_seq})");
    assert!(ts.wrapping_sub(last_ts) > 0 && ts.wrapping_sub(last_ts) < 0x8000_0000, "timestamp moves forward: {last_ts} -> {ts}");
    assert_eq!(ts.wrapping_sub(last_ts), 48 * 20 * 301, "by the time that passed (301 packet times at 48 kHz)");
    let (_, next_seq, _) = send(&mut m, 311)[0];
    assert_eq!(next_seq, seq.wrapping_add(1));

    // A different out-SSRC is a different stream: it starts fresh.
    m.apply(vec![Op::RemoveSubscription { subscriber: LegId(2), track: TrackId(1) }, Op::UpsertSubscription(sub(2, 1, 0x2101, 0))]).unwrap();
    assert_eq!(send(&mut m, 312), vec![(Ssrc(0x2101), 1312, 960 * 312)]);
    // And back to the first: it continues from where it stopped, again.
    m.apply(vec![Op::UpsertSubscription(sub(2, 1, 0x2001, 0))]).unwrap();
    let (ssrc, seq2, _) = send(&mut m, 313)[0];
    assert_eq!((ssrc, seq2), (Ssrc(0x2001), next_seq.wrapping_add(1)));
}

/// Pacing: a burst of copies to a subscriber leg with congestion control does not leave in one
/// go. A few fit the pace bucket; the rest wait in the core's pool and leave from
/// `handle_timeout`, at the pace rate, in order, each with the next transport-wide sequence
/// number, and nothing is lost.
#[test]
fn a_burst_to_a_congestion_controlled_leg_leaves_paced_and_in_order() {
    let mut m = Meeting::new(2);
    let (_, mut publisher) = peer(1);
    publisher.feedback.twcc_ext = Some(3);
    let (_, mut subscriber) = peer(2);
    subscriber.feedback.twcc_ext = Some(5);
    subscriber.remote = None;
    m.apply(vec![
        Op::UpsertLeg(publisher),
        Op::UpsertLeg(subscriber),
        Op::UpsertTrack(audio_track(1, 1, 0x1111)),
        Op::UpsertSubscription(sub(2, 1, 0x2001, 0)),
    ])
    .unwrap();
    latch_all(&mut m);
    // 40 packets of ~1.1 kB arrive at once (a keyframe's worth).
    let t0 = ms(1_000);
    let mut sent = Vec::new();
    for k in 0..40u16 {
        let mut p = rtp_packet_twcc(0x1111, 100 + k, 960, 3, 7000 + k);
        p.extend_from_slice(&[9; 1040]);
        let wire = m.peers[0].send_rtp(&p);
        sent.extend(m.deliver(0, &wire, t0).into_iter().map(|(j, b)| (t0, j, b)));
    }
    let at_once = sent.len();
    assert!((1..10).contains(&at_once), "{at_once} of 40 left at once");
    // The worker's loop: run the core's timer when it is due.
    let mut out = OutBatch::new(64);
    let mut now = t0;
    while sent.len() < 40 && now < t0 + core::time::Duration::from_secs(1) {
        now = m.core.poll_timeout().max(now + core::time::Duration::from_micros(100));
        m.core.handle_timeout(now, &mut out);
        // (The publisher gets its transport-cc feedback meanwhile.)
        for (_, b) in out.iter().filter(|(meta, _)| meta.leg == LegId(2)) {
            sent.push((now, 1, m.peers[1].recv(b)));
        }
        out.clear();
    }
    assert_eq!(sent.len(), 40, "every packet left");
    let took = sent.last().unwrap().0.saturating_duration_since(t0);
    // 44 kB at 2.5 x the 300 kbit/s start estimate would take 470 ms; the oldest waits at most
    // 300 ms, so the rate rises to drain it by then.
    assert!(took >= core::time::Duration::from_millis(250) && took <= core::time::Duration::from_millis(320), "{took:?}");
    let seqs: Vec<u16> = sent.iter().map(|(_, _, b)| rtp::Packet::new_checked(&b[..]).unwrap().sequence_number()).collect();
    assert_eq!(seqs, (100..140).collect::<Vec<u16>>(), "in order");
    let tseqs: Vec<u16> = sent
        .iter()
        .map(|(_, _, b)| crate::wire::rtp::ext::transport_sequence_number(rtp::Packet::new_checked(&b[..]).unwrap().find_extension(5).unwrap()).unwrap())
        .collect();
    assert!(tseqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)), "transport-wide sequence numbers in departure order: {tseqs:?}");
}

/// A new subscription on a leg with congestion control starts capped at the lowest layer (its
/// allocator raises it within a tick); on a leg without, at the signaling's target.
#[test]
fn a_congestion_controlled_subscriber_starts_on_the_lowest_layer() {
    let mut m = Meeting::new(3);
    let (_, mut cc) = peer(2);
    cc.feedback.twcc_ext = Some(5);
    cc.remote = None;
    m.apply(vec![
        Op::UpsertLeg(cc),
        Op::UpsertTrack(video_track(1, 1, &[0x100, 0x200, 0x300])),
        Op::UpsertSubscription(sub(2, 1, 0x2001, 2)),
        Op::UpsertSubscription(sub(3, 1, 0x3001, 2)),
    ])
    .unwrap();
    let subs = &m.core.tables().track(TrackId(1)).unwrap().subs;
    assert_eq!(subs.iter().map(|s| (s.subscriber.0, s.target())).collect::<Vec<_>>(), vec![(2, 0), (3, 2)]);
}

/// A publisher's bandwidth probe on its RTX stream (padding only) is consumed and counted as
/// padding, not as a malformed packet.
#[test]
fn a_publishers_rtx_padding_probe_is_counted_as_padding() {
    let mut m = Meeting::new(2);
    m.apply(vec![Op::UpsertTrack(video_track(1, 1, &[0x100])), Op::UpsertSubscription(sub(2, 1, 0x2001, 0))]).unwrap();
    latch_all(&mut m);
    let mut p = rtp_packet(0x101, 7, 9000, 97, &[]);
    p[0] |= 0x20;
    p.extend_from_slice(&[0; 254]);
    p.push(255);
    let wire = m.peers[0].send_rtp(&p);
    assert!(m.deliver(0, &wire, ms(5)).is_empty());
    let s = m.core.stats();
    assert_eq!((s.drops_for(DropReason::Padding), s.drops_for(DropReason::Malformed)), (1, 0));
}

/// A participant's receive budget (issue 15 item 10): a publisher at 20 times its rate makes
/// copies only for what the budget lets in; the rest is dropped before decryption (a flood
/// with a wrong key costs no authentication attempt: it is rate-limited, not an auth failure),
/// counted, and reported at most once a second.
#[test]
fn a_leg_over_its_rate_limit_is_cut_before_decryption() {
    let mut m = Meeting::new(4);
    let (_, mut publisher) = peer(1);
    publisher.remote = None;
    publisher.rate_limit = Some(crate::table::RateLimit { packets_per_s: 50, bytes_per_s: 1_000_000, burst_ms: 100 });
    m.apply(vec![
        Op::UpsertLeg(publisher),
        Op::UpsertTrack(audio_track(1, 1, 0x1111)),
        Op::UpsertSubscription(sub(2, 1, 0x2001, 0)),
        Op::UpsertSubscription(sub(3, 1, 0x3001, 0)),
        Op::UpsertSubscription(sub(4, 1, 0x4001, 0)),
    ])
    .unwrap();
    latch_all(&mut m);
    let _ = std::iter::from_fn(|| m.core.poll_event()).count();
    // 1,000 packets/s for 2 s: 20 times the budget of 50/s.
    let mut copies = 0;
    for k in 0..2000u16 {
        let wire = m.peers[0].send_rtp(&rtp_packet(0x1111, 100 + k, 960 * u32::from(k), 111, &[5; 100]));
        copies += m.deliver(0, &wire, ms(10_000 + u64::from(k))).len();
    }
    let let_in = copies / 3;
    // The burst (5 packets) and 50/s over 2 s.
    assert!((100..=110).contains(&let_in), "{let_in} packets let in");
    assert_eq!(copies, let_in * 3, "each let in packet reaches the three subscribers");
    let dropped = m.core.stats().drops_for(DropReason::RateLimited);
    assert_eq!(dropped as usize + let_in, 2000);
    let reports: Vec<u64> = std::iter::from_fn(|| m.core.poll_event())
        .filter_map(|e| match e {
            Event::RateLimited { leg: LegId(1), dropped } => Some(dropped),
            _ => None,
        })
        .collect();
    assert!((2..=3).contains(&reports.len()), "at most one report a second: {reports:?}");
    assert!(reports.iter().sum::<u64>() <= dropped, "{reports:?}");
    // A flood with a wrong key is cut before the authentication is even tried.
    let auth_before = m.core.stats().drops_for(DropReason::AuthFailed);
    let mut forger = peer(1).0;
    forger.up = SrtpKeys::new(PROFILE, &[0xEE; 16], &[0xEE; 12]).unwrap();
    for k in 0..100u16 {
        let wire = forger.send_rtp(&rtp_packet(0x1111, 5000 + k, 0, 111, &[5; 100]));
        m.deliver(0, &wire, ms(12_000));
    }
    let auth = m.core.stats().drops_for(DropReason::AuthFailed) - auth_before;
    assert!(auth <= 5, "{auth} of 100 reached authentication");
}

/// A subscriber that joins a publisher just below its sequence wrap, and loses the first
/// packets Sluice sends it, still decrypts the rest: SRTP receivers take their first packet to
/// be in rollover period 0, so Sluice starts every new out-stream in the lower half of the
/// sequence space (it used the publisher's number, 65530 here: the sender wrapped into period 1
/// after six packets while the receiver, having lost them, started in period 0, and nothing
/// authenticated again).
#[test]
fn a_stream_that_starts_below_the_wrap_survives_losing_its_first_packets() {
    let mut m = audio_call();
    let mut seqs = Vec::new();
    for k in 0..20u16 {
        let plain = rtp_packet(0x1111, 65530u16.wrapping_add(k), 960 * u32::from(k), 111, &[k as u8; 80]);
        let mut wire = m.peers[0].send_rtp(&plain);
        m.out.clear();
        let (port, addr) = (m.peers[0].port, m.peers[0].addr);
        m.core.handle_rx(ms(20 * u64::from(k)), port, addr, &mut wire, &mut m.out);
        let outs: Vec<Vec<u8>> = m.out.iter().map(|(_, b)| b.to_vec()).collect();
        assert_eq!(outs.len(), 1);
        // The first eight copies are lost on the way to the subscriber.
        if k >= 8 {
            let got = m.peers[1].recv(&outs[0]);
            let pkt = rtp::Packet::new_checked(&got[..]).unwrap();
            assert_eq!(pkt.payload(), &[k as u8; 80][..]);
            seqs.push(pkt.sequence_number());
        }
    }
    assert_eq!(seqs.first(), Some(&(32762 + 8)), "the publisher's number (65530) with its top bit cleared, eight packets on");
    assert!(seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)), "continuous: {seqs:?}");
}

/// A dataplane restart mid-call, at the core's level: a checkpoint taken after the publisher's
/// sequence numbers wrapped (ROC 1), restored into a fresh core with the same tables. The
/// publisher's next packets authenticate (a fresh receive state would assume ROC 0 and fail
/// them all), the subscriber's stream continues RESUME_MARGIN packets on under the same SRTP
/// context (no index used twice), a packet captured before the checkpoint is refused as a
/// replay, and the latched remotes are back: the same packet from another address is refused
/// as an unknown source (it would have latched the leg to an attacker).
#[test]
fn a_checkpoint_carries_a_call_across_a_restart_past_the_sequence_wrap() {
    use crate::table::checkpoint::{Checkpoint, RESUME_MARGIN};
    let ops = audio_call_ops;
    let mut m = audio_call();
    let mut captured = Vec::new();
    let mut last_out = 0;
    for k in 0..100u16 {
        let plain = rtp_packet(0x1111, 65500u16.wrapping_add(k), 960 * u32::from(k), 111, &[k as u8; 40]);
        let wire = m.peers[0].send_rtp(&plain);
        captured.push(wire.clone());
        let got = m.deliver(0, &wire, ms(20 * u64::from(k)));
        assert_eq!(got.len(), 1);
        last_out = rtp::Packet::new_checked(&got[0].1[..]).unwrap().sequence_number();
    }
    let mut ck = Checkpoint::default();
    m.core.checkpoint(&mut ck);
    assert_eq!((ck.legs.len(), ck.streams.len()), (2, 1), "{ck:?}");
    assert_eq!(ck.legs.iter().find(|l| l.leg == LegId(1)).unwrap().ingress, vec![(Ssrc(0x1111), (1 << 16) + 99 - 36)], "ROC 1, seq 63");

    // The restart: a fresh core gets the same tables, then the checkpoint.
    let fresh = || {
        let mut m2 = Meeting::new(2);
        m2.apply(ops()).unwrap();
        m2
    };
    let mut m2 = fresh();
    m2.peers = std::mem::take(&mut m.peers);
    let done = m2.core.restore(&ck, ms(0), core::time::Duration::from_secs(2));
    assert_eq!((done.legs, done.streams, done.latched.len()), (2, 1, 2));
    // A replay of a packet from before the checkpoint, from the publisher's address: refused.
    let (port, addr) = (m2.peers[0].port, m2.peers[0].addr);
    let mut old = captured[90].clone();
    m2.out.clear();
    m2.core.handle_rx(ms(5), port, addr, &mut old, &mut m2.out);
    assert_eq!((m2.out.len(), m2.core.stats().drops_for(DropReason::Replayed)), (0, 1));
    // The same from an attacker's address: refused, the leg stays latched to the publisher.
    let mut old = captured[99].clone();
    let attacker = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 66), 4444));
    m2.core.handle_rx(ms(6), port, attacker, &mut old, &mut m2.out);
    assert_eq!((m2.out.len(), m2.core.stats().drops_for(DropReason::UnknownSource)), (0, 1));
    // The call goes on: past the wrap, and the subscriber (its receive state kept) decrypts.
    for k in 100..110u16 {
        let plain = rtp_packet(0x1111, 65500u16.wrapping_add(k), 960 * u32::from(k), 111, &[k as u8; 40]);
        let wire = m2.peers[0].send_rtp(&plain);
        let got = m2.deliver(0, &wire, ms(2_000 + 20 * u64::from(k)));
        assert_eq!(got.len(), 1, "packet {k} is forwarded");
        let pkt = rtp::Packet::new_checked(&got[0].1[..]).unwrap();
        assert_eq!(pkt.payload(), &[k as u8; 40][..]);
        if k == 100 {
            assert_eq!(pkt.sequence_number(), last_out.wrapping_add(RESUME_MARGIN + 1), "continues past the margin");
        }
    }

    // Without the checkpoint the same restart loses the call: ROC 0 assumed, nothing authenticates.
    let mut m3 = fresh();
    m3.peers = std::mem::take(&mut m2.peers);
    let plain = rtp_packet(0x1111, 65500u16.wrapping_add(110), 960 * 110, 111, &[0; 40]);
    let mut wire = m3.peers[0].send_rtp(&plain);
    let (port, addr) = (m3.peers[0].port, m3.peers[0].addr);
    m3.out.clear();
    m3.core.handle_rx(ms(0), port, addr, &mut wire, &mut m3.out);
    assert_eq!((m3.out.len(), m3.core.stats().drops_for(DropReason::AuthFailed)), (0, 1));
}

/// A WebRTC leg that had its DTLS keys at the checkpoint lost them with the process: once the
/// tables name it again, the restored core reports it failed with `dataplane_restarted` (the
/// signaling's cue for an ICE restart), once, however many deltas follow; a leg that never
/// connected, or that handshook again meanwhile, is not reported.
#[test]
fn a_restart_reports_each_webrtc_leg_that_lost_its_dtls_association_once() {
    use crate::ice::EdgeFailure;
    use crate::table::checkpoint::Checkpoint;
    use crate::table::{DtlsRole, EdgeSpec, IceCredentials};
    let edge_leg = |n: u32| {
        let (_, mut spec) = peer(n);
        spec.edge = Some(Box::new(EdgeSpec {
            local: IceCredentials { ufrag: format!("s{n}"), pwd: "p".repeat(22) },
            remote: IceCredentials { ufrag: format!("b{n}"), pwd: "q".repeat(22) },
            role: DtlsRole::Server,
            remote_fingerprint: "sha-256 00".into(),
        }));
        spec
    };
    let ops = || vec![Op::UpsertLeg(edge_leg(2)), Op::UpsertLeg(edge_leg(3))];
    let mut m = Meeting::new(1);
    m.apply(ops()).unwrap();
    m.core.install_edge_keys(LegId(2), KeyMaterial::seeded(PROFILE, 5), KeyMaterial::seeded(PROFILE, 6)).unwrap();
    let mut ck = Checkpoint::default();
    m.core.checkpoint(&mut ck);
    assert_eq!(ck.webrtc, vec![LegId(2)], "only the connected one");
    assert!(ck.legs.iter().all(|l| l.leg == LegId(1)), "WebRTC legs carry no SRTP state over: {ck:?}");

    let mut fresh = Meeting::new(1);
    fresh.apply(ops()).unwrap();
    while fresh.core.poll_event().is_some() {}
    let failed = |m: &mut Meeting| {
        std::iter::from_fn(|| m.core.poll_event()).filter(|e| matches!(e, Event::EdgeFailed { reason: EdgeFailure::DataplaneRestarted, .. })).count()
    };
    fresh.core.restore(&ck, ms(0), core::time::Duration::ZERO);
    assert_eq!(failed(&mut fresh), 1);
    fresh.apply(ops()).unwrap();
    fresh.core.restore(&ck, ms(10), core::time::Duration::ZERO);
    assert_eq!(failed(&mut fresh), 0, "reported once");
    // A leg that handshook again before the tables came back is not reported.
    let mut again = Meeting::new(1);
    again.apply(ops()).unwrap();
    again.core.install_edge_keys(LegId(2), KeyMaterial::seeded(PROFILE, 7), KeyMaterial::seeded(PROFILE, 8)).unwrap();
    again.core.restore(&ck, ms(0), core::time::Duration::ZERO);
    assert_eq!(failed(&mut again), 0);
}

/// A static-key leg without rtcp-mux (RFC 3550 §11, as SIP equipment and ffmpeg send): RTP
/// from the participant's port P to the leg's port, RTCP from P + 1 to the leg's RTCP port.
/// Each component latches its own remote, so the RTCP no longer steals the RTP's latch (which
/// dropped every later RTP packet as unknown source); Sluice's RTCP to the participant leaves
/// from the RTCP port, to P + 1 until an RTCP packet latched its address; RTP on the RTCP port
/// is not media.
#[test]
fn a_leg_without_rtcp_mux_latches_each_component_apart() {
    use crate::table::RtcpComponent;
    let mut m = Meeting::new(2);
    let (_, mut spec) = peer(1);
    spec.rtcp = Some(Box::new(RtcpComponent { local_port: 21_001, remote: None }));
    m.apply(vec![Op::UpsertLeg(spec), Op::UpsertTrack(video_track(1, 1, &[0x1111])), Op::UpsertSubscription(sub(2, 1, 0x2001, 0))]).unwrap();
    let (rtp_port, addr) = (m.peers[0].port, m.peers[0].addr);
    let rtcp_addr = SocketAddr::new(addr.ip(), addr.port() + 1);
    let rx = |m: &mut Meeting, port: u16, from: SocketAddr, mut wire: Vec<u8>, at: u64| {
        m.out.clear();
        m.core.handle_rx(ms(at), port, from, &mut wire, &mut m.out);
        m.out.iter().map(|(meta, _)| (meta.local_port, meta.dst, meta.leg)).collect::<Vec<_>>()
    };
    latch_all(&mut m);
    // RTP from P latches the RTP remote.
    let key = {
        let mut p = rtp_packet(0x1111, 100, 0, 96, &VP8_KEY);
        p.extend_from_slice(&[0; 40]);
        p
    };
    let wire = m.peers[0].send_rtp(&key);
    rx(&mut m, rtp_port, addr, wire, 0);
    assert_eq!(m.core.tables().leg(LegId(1)).unwrap().remote, Some(addr));
    // The subscriber's PLI becomes a keyframe request to the publisher: RTCP port → P + 1.
    let mut pli = [0u8; 12];
    let n = rtcp::write_pli(&mut pli, Ssrc(2), Ssrc(0x2001)).unwrap();
    let wire = m.peers[1].send_rtcp(&pli[..n]);
    let (sub_port, sub_addr) = (m.peers[1].port, m.peers[1].addr);
    let sent = rx(&mut m, sub_port, sub_addr, wire, 300);
    assert!(sent.contains(&(21_001, rtcp_addr, LegId(1))), "PLI from the RTCP port to P + 1: {sent:?}");
    // RTCP from P + 1 to the RTCP port authenticates and latches that component only.
    let mut rr = [0u8; 8];
    let n = rtcp::write_rr(&mut rr, Ssrc(0x1111), &[]).unwrap();
    let wire = m.peers[0].send_rtcp(&rr[..n]);
    rx(&mut m, 21_001, rtcp_addr, wire, 310);
    let leg = m.core.tables().leg(LegId(1)).unwrap();
    assert_eq!((leg.remote, leg.rtcp_remote), (Some(addr), Some(rtcp_addr)));
    // RTP keeps flowing from P.
    let before = m.core.stats().tx_packets;
    let mut p = rtp_packet(0x1111, 101, 3000, 96, &VP8_DELTA);
    p.extend_from_slice(&[0; 40]);
    let wire = m.peers[0].send_rtp(&p);
    assert_eq!(rx(&mut m, rtp_port, addr, wire, 320).len(), 1, "forwarded to the subscriber");
    assert_eq!(m.core.stats().tx_packets, before + 1);
    // RTCP from P (not P + 1) to the RTCP port: an unknown source now; RTP to the RTCP port:
    // not media.
    let wire = m.peers[0].send_rtcp(&rr[..n]);
    rx(&mut m, 21_001, addr, wire, 330);
    assert_eq!(m.core.stats().drops_for(DropReason::UnknownSource), 1);
    let mut p = rtp_packet(0x1111, 102, 6000, 96, &VP8_DELTA);
    p.extend_from_slice(&[0; 40]);
    let wire = m.peers[0].send_rtp(&p);
    rx(&mut m, 21_001, rtcp_addr, wire, 340);
    assert_eq!(m.core.stats().drops_for(DropReason::NotMedia), 1);
    // Each kind of drop on the leg is reported once (the operator's log line), with its source.
    let firsts: Vec<Event> = std::iter::from_fn(|| m.core.poll_event()).filter(|e| matches!(e, Event::FirstDrop { .. })).collect();
    assert_eq!(
        firsts,
        [
            Event::FirstDrop { leg: LegId(1), reason: DropReason::UnknownSource, remote: addr },
            Event::FirstDrop { leg: LegId(1), reason: DropReason::NotMedia, remote: rtcp_addr }
        ]
    );
    let wire = m.peers[0].send_rtcp(&rr[..n]);
    rx(&mut m, 21_001, addr, wire, 350);
    assert_eq!(m.core.stats().drops_for(DropReason::UnknownSource), 2);
    assert!(std::iter::from_fn(|| m.core.poll_event()).all(|e| !matches!(e, Event::FirstDrop { .. })), "once per leg and reason");
    // The RTCP port is the leg's as much as its RTP port: another leg cannot take it.
    let (_, mut other) = peer(3);
    other.local_port = 21_001;
    assert!(matches!(m.apply(vec![Op::UpsertLeg(other)]), Err(DeltaError::PortInUse { port: 21_001, owner: LegId(1), .. })));
}

/// A leg without rtcp-mux whose first authenticated packet is RTCP on its RTCP port is active
/// (LegActive, once), and that latches the RTCP remote only: no RemoteLatched for the RTP side.
#[test]
fn rtcp_first_on_the_rtcp_port_activates_the_leg_without_latching_rtp() {
    use crate::table::RtcpComponent;
    let mut m = Meeting::new(1);
    let (_, mut spec) = peer(1);
    spec.rtcp = Some(Box::new(RtcpComponent { local_port: 21_001, remote: None }));
    m.apply(vec![Op::UpsertLeg(spec)]).unwrap();
    while m.core.poll_event().is_some() {}
    let rtcp_addr = SocketAddr::new(m.peers[0].addr.ip(), m.peers[0].addr.port() + 1);
    let mut rr = [0u8; 8];
    let n = rtcp::write_rr(&mut rr, Ssrc(0x1111), &[]).unwrap();
    for k in 0..2 {
        let mut wire = m.peers[0].send_rtcp(&rr[..n]);
        m.out.clear();
        m.core.handle_rx(ms(k), 21_001, rtcp_addr, &mut wire, &mut m.out);
    }
    let events: Vec<Event> = std::iter::from_fn(|| m.core.poll_event()).collect();
    assert_eq!(events, [Event::LegActive { leg: LegId(1), remote: rtcp_addr }]);
    let leg = m.core.tables().leg(LegId(1)).unwrap();
    assert_eq!((leg.remote, leg.rtcp_remote), (None, Some(rtcp_addr)));
}

/// Per-leg traffic: what each leg's counters say is exactly what the core received from its
/// participant (authenticated only) and sent to it, media copies, RTX answers, a keyframe
/// request and receiver reports included; the legs' sums are the core's own counters less the
/// datagram that failed authentication; an upsert of the leg's spec keeps them.
#[test]
fn each_leg_counts_what_it_received_and_what_was_sent_to_it() {
    use crate::stats::LegTraffic;
    use std::collections::BTreeMap;
    let mut m = Meeting::new(3);
    m.apply(vec![Op::UpsertTrack(video_track(1, 1, &[0x100])), Op::UpsertSubscription(sub(2, 1, 0x2001, 0)), Op::UpsertSubscription(sub(3, 1, 0x3001, 0))])
        .unwrap();
    let mut want: BTreeMap<u32, LegTraffic> = BTreeMap::new();
    // Peer `i` sends `wire` at `now`; counts it for its leg when `authentic`, and every output.
    let mut send = |m: &mut Meeting, i: usize, mut wire: Vec<u8>, now: Instant, authentic: bool| {
        if authentic {
            want.entry(m.peers[i].leg.0).or_default().received(wire.len());
        }
        m.out.clear();
        let (port, addr) = (m.peers[i].port, m.peers[i].addr);
        m.core.handle_rx(now, port, addr, &mut wire, &mut m.out);
        for (meta, b) in m.out.iter() {
            want.entry(meta.leg.0).or_default().sent(b.len());
        }
    };
    for i in 0..3 {
        let mut rr = [0u8; 8];
        let n = rtcp::write_rr(&mut rr, Ssrc(m.peers[i].leg.0), &[]).unwrap();
        let wire = m.peers[i].send_rtcp(&rr[..n]);
        send(&mut m, i, wire, ms(0), true);
    }
    for k in 0..5u16 {
        let wire = m.peers[0].send_rtp(&rtp_packet(0x100, 100 + k, 3000, 96, if k == 0 { &VP8_KEY } else { &VP8_CONT }));
        send(&mut m, 0, wire, ms(1), true);
    }
    let mut forged = m.peers[0].send_rtp(&rtp_packet(0x100, 105, 3000, 96, &VP8_CONT));
    *forged.last_mut().unwrap() ^= 1;
    send(&mut m, 0, forged, ms(2), false);
    // Leg 2 NACKs 102 and 103 (answered as RTX); leg 3 asks for a keyframe (a PLI to leg 1).
    let mut buf = [0u8; 64];
    let n = rtcp::write_nack(&mut buf, Ssrc(2), Ssrc(0x2001), &[rtcp::NackItem { pid: 102, blp: 0b1 }]).unwrap();
    let wire = m.peers[1].send_rtcp(&buf[..n]);
    send(&mut m, 1, wire, ms(10), true);
    let n = rtcp::write_pli(&mut buf, Ssrc(3), Ssrc(0x3001)).unwrap();
    let wire = m.peers[2].send_rtcp(&buf[..n]);
    send(&mut m, 2, wire, ms(500), true);
    // Receiver reports to the publisher, on the timer.
    let mut out = OutBatch::new(64);
    m.core.handle_timeout(ms(3_000), &mut out);
    assert!(out.iter().all(|(meta, _)| meta.leg == LegId(1)) && !out.is_empty(), "a receiver report to the publisher");
    for (meta, b) in out.iter() {
        want.entry(meta.leg.0).or_default().sent(b.len());
    }
    let reports = out.len() as u64;

    let mut got = Vec::new();
    m.core.leg_traffic(&mut got);
    let got: BTreeMap<u32, LegTraffic> = got.iter().map(|c| (c.leg.0, c.traffic)).collect();
    assert_eq!(got, want);
    let packets = |l: u32| (got[&l].rx_packets, got[&l].tx_packets);
    assert_eq!(packets(1), (1 + 5, 1 + reports), "publisher: an RR and 5 packets in; the PLI and the reports out");
    assert_eq!(packets(2), (1 + 1, 5 + 2), "leg 2: an RR and a NACK in; 5 copies and 2 RTX out");
    assert_eq!(packets(3), (1 + 1, 5), "leg 3: an RR and a PLI in; 5 copies out");
    let s = m.core.stats();
    let sum = got.values().fold(LegTraffic::default(), |mut a, t| {
        a.add(t);
        a
    });
    assert_eq!((sum.tx_packets, sum.tx_bytes), (s.tx_packets, s.tx_bytes), "every packet the core sent is some leg's");
    assert_eq!(sum.rx_packets, s.rx_packets - 1, "every datagram but the forged one is some leg's");
    assert!(got.values().all(|t| t.rx_bytes > 0 && t.tx_bytes > t.tx_packets * 12), "{got:?}");
    // An upsert of the leg's spec (a resync) keeps its counters.
    let spec = m.core.tables().leg(LegId(2)).unwrap().spec.clone();
    m.apply(vec![Op::UpsertLeg(spec)]).unwrap();
    assert_eq!(m.core.tables().leg(LegId(2)).unwrap().traffic, want[&2]);
}

/// With two cores, a publisher's packets are counted on the core that receives them, and each
/// subscriber's copies (and its feedback) on the core that owns its leg: each core reports only
/// the legs it counted anything for, and the sum over cores is what one core alone counts.
#[test]
fn each_core_counts_the_legs_traffic_it_handles_and_the_sum_is_one_cores() {
    use crate::stats::LegTraffic;
    use std::collections::BTreeMap;
    let mut m = Meeting::new(3);
    m.apply(vec![Op::UpsertTrack(video_track(1, 1, &[0x100])), Op::UpsertSubscription(sub(2, 1, 0x2001, 0)), Op::UpsertSubscription(sub(3, 1, 0x3001, 0))])
        .unwrap();
    for p in &m.peers {
        m.core.set_remote(p.leg, p.addr).unwrap();
    }
    // Publisher 1 (port 20001) and subscriber 3 (20003) on core 1; subscriber 2 (20002) on core 0.
    let mut two = TwoCores::new(&m);
    for k in 0..10u16 {
        let wire = m.peers[0].send_rtp(&rtp_packet(0x100, 100 + k, 3000, 96, if k == 0 { &VP8_KEY } else { &VP8_CONT }));
        let mut buf = wire.clone();
        m.out.clear();
        m.core.handle_rx(ms(1), m.peers[0].port, m.peers[0].addr, &mut buf, &mut m.out);
        two.deliver(&m.peers[0], &wire, ms(1));
    }
    let mut buf = [0u8; 64];
    let n = rtcp::write_nack(&mut buf, Ssrc(2), Ssrc(0x2001), &[rtcp::NackItem { pid: 104, blp: 0 }]).unwrap();
    let wire = m.peers[1].send_rtcp(&buf[..n]);
    let mut one_buf = wire.clone();
    m.out.clear();
    m.core.handle_rx(ms(5), m.peers[1].port, m.peers[1].addr, &mut one_buf, &mut m.out);
    two.deliver(&m.peers[1], &wire, ms(5));
    let counts = |c: &Core| {
        let mut v = Vec::new();
        c.leg_traffic(&mut v);
        v.into_iter().map(|c| (c.leg.0, c.traffic)).collect::<BTreeMap<u32, LegTraffic>>()
    };
    let (c0, c1) = (counts(&two.cores[0]), counts(&two.cores[1]));
    let packets = |m: &BTreeMap<u32, LegTraffic>| m.iter().map(|(l, t)| (*l, t.rx_packets, t.tx_packets)).collect::<Vec<_>>();
    assert_eq!(packets(&c0), [(2, 1, 10 + 1)], "core 0: leg 2's copies, its NACK and the RTX answer");
    assert_eq!(packets(&c1), [(1, 10, 0), (3, 0, 10)], "core 1: the publisher's packets, leg 3's copies");
    let mut sum = c0;
    for (l, t) in c1 {
        sum.entry(l).or_default().add(&t);
    }
    assert_eq!(sum, counts(&m.core), "the sum over cores is what one core counts");
}

#[path = "tests_layers.rs"]
mod layers;

#[path = "tests_relay.rs"]
mod relay;

#[path = "tests_plain.rs"]
mod plain;
