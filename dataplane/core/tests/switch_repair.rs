//! Regression tests for a bug the simulation found: a packet of the old layer that was lost, or
//! reordered past the switch point, just before a simulcast layer switch could never be repaired.
//! The subscriber NACKs it, the NACK maps back to the old layer (the rewriter keeps the segment
//! before the switch), but
//! - the cache answer needed the timestamp mapped through the *current* segment, which belongs to
//!   the new layer, so it failed and the NACK went upstream instead; and
//! - the publisher's RTX was only forwarded to subscriptions currently on that layer.
//!
//! Both now map through the segment that produced the sequence number.

use std::net::{Ipv4Addr, SocketAddr};

use sluice_core::forward::{Core, CoreConfig, OutBatch};
use sluice_core::ids::{Generation, Ssrc};
use sluice_core::srtp::{MAX_WINDOW, Profile, RtcpSendState, RtpRecvState, RtpSendState, SrtpKeys};
use sluice_core::table::{Delta, Op};
use sluice_core::time::Instant;
use sluice_core::wire::{demux, rtcp, rtp};
use sluice_sim::fixture::*;

const P: Profile = Profile::AeadAes128Gcm;
const L0: u32 = 0x100;
const L1: u32 = 0x200;
const OUT: u32 = 0x2001;
const OUT_RTX: u32 = 0x2002;

struct Side {
    port: u16,
    addr: SocketAddr,
    up: SrtpKeys,
    down: SrtpKeys,
    rtp: Vec<(u32, RtpSendState)>,
    rtcp: RtcpSendState,
    recv: Vec<(u32, RtpRecvState)>,
}

impl Side {
    fn new(leg: u32) -> Self {
        let (u, d) = (material(P, leg, 0), material(P, leg, 1));
        Self {
            port: 20_000 + leg as u16,
            addr: SocketAddr::from((Ipv4Addr::new(10, 0, 0, leg as u8), 5000)),
            up: SrtpKeys::new(P, &u.key, &u.salt).unwrap(),
            down: SrtpKeys::new(P, &d.key, &d.salt).unwrap(),
            rtp: Vec::new(),
            rtcp: RtcpSendState::new(),
            recv: Vec::new(),
        }
    }

    fn rtp(&mut self, plain: &[u8]) -> Vec<u8> {
        let ssrc = u32::from_be_bytes(plain[8..12].try_into().unwrap());
        if !self.rtp.iter().any(|(s, _)| *s == ssrc) {
            self.rtp.push((ssrc, RtpSendState::new()));
        }
        let st = &mut self.rtp.iter_mut().find(|(s, _)| *s == ssrc).unwrap().1;
        let mut b = plain.to_vec();
        b.resize(plain.len() + 32, 0);
        let n = self.up.protect_rtp(st, &mut b, plain.len()).unwrap();
        b.truncate(n);
        b
    }

    fn rtcp(&mut self, plain: &[u8]) -> Vec<u8> {
        let mut b = plain.to_vec();
        b.resize(plain.len() + 32, 0);
        let n = self.up.protect_rtcp(&mut self.rtcp, &mut b, plain.len()).unwrap();
        b.truncate(n);
        b
    }

    /// Decrypts an RTP output: (ssrc, seq, payload).
    fn open(&mut self, wire: &[u8]) -> (u32, u16, Vec<u8>) {
        let ssrc = u32::from_be_bytes(wire[8..12].try_into().unwrap());
        if !self.recv.iter().any(|(s, _)| *s == ssrc) {
            self.recv.push((ssrc, RtpRecvState::new(MAX_WINDOW)));
        }
        let st = &mut self.recv.iter_mut().find(|(s, _)| *s == ssrc).unwrap().1;
        let mut b = wire.to_vec();
        let n = self.down.unprotect_rtp(st, &mut b, wire.len()).expect("authenticates");
        let p = rtp::Packet::new_checked(&b[..n]).unwrap();
        (ssrc, p.sequence_number(), p.payload().to_vec())
    }
}

struct Rig {
    core: Core,
    out: OutBatch,
    publisher: Side,
    sub: Side,
}

impl Rig {
    fn new() -> Self {
        let mut core = Core::new(CoreConfig::default());
        let ops = vec![
            Op::UpsertLeg(leg_spec(1, 20_001, material(P, 1, 0), material(P, 1, 1))),
            Op::UpsertLeg(leg_spec(2, 20_002, material(P, 2, 0), material(P, 2, 1))),
            Op::UpsertTrack(video_track(1, 1, &[(L0, L0 + 1), (L1, L1 + 1)])),
            Op::UpsertSubscription(subscription(2, 1, OUT, Some(OUT_RTX), 0)),
        ];
        core.apply(Delta { generation: Generation(1), replace_all: false, ops }).unwrap();
        let mut r = Self { core, out: OutBatch::new(64), publisher: Side::new(1), sub: Side::new(2) };
        for i in 0..2 {
            let mut b = [0u8; 8];
            let n = rtcp::write_rr(&mut b, Ssrc(i + 1), &[]).unwrap();
            let side = if i == 0 { &mut r.publisher } else { &mut r.sub };
            let w = side.rtcp(&b[..n]);
            r.rx(i == 0, w, 0);
        }
        r
    }

    /// Delivers a datagram from the publisher (or the subscriber); returns the outputs as
    /// (to the publisher?, bytes).
    fn rx(&mut self, from_publisher: bool, mut bytes: Vec<u8>, ms: u64) -> Vec<(bool, Vec<u8>)> {
        let side = if from_publisher { &self.publisher } else { &self.sub };
        self.out.clear();
        self.core.handle_rx(Instant::from_nanos(ms * 1_000_000), side.port, side.addr, &mut bytes, &mut self.out);
        self.out.iter().map(|(m, b)| (m.leg.0 == 1, b.to_vec())).collect()
    }

    fn media(&mut self, ssrc: u32, seq: u16, key: bool, ms: u64) -> Vec<(bool, Vec<u8>)> {
        let mut payload = vec![0x42u8; 100];
        payload[..2].copy_from_slice(if key { &[0x10, 0x00] } else { &[0x00, 0x00] });
        payload[2..4].copy_from_slice(&seq.to_be_bytes());
        let w = self.publisher.rtp(&rtp_packet(ssrc, seq, u32::from(seq) * 3000, PT_VP8, false, &payload));
        self.rx(true, w, ms)
    }

    /// L0: 10 (key), 12; then the target moves to L1 and L1's keyframe switches the
    /// subscription (out seq 13). Out seq 11 is the hole.
    fn switch_with_a_hole(&mut self) {
        assert_eq!(self.media(L0, 10, true, 0).len(), 1);
        assert_eq!(self.media(L0, 12, false, 1).len(), 1);
        let mut s = subscription(2, 1, OUT, Some(OUT_RTX), 1);
        s.target_layer = 1;
        self.core.apply(Delta { generation: Generation(2), replace_all: false, ops: vec![Op::UpsertSubscription(s)] }).unwrap();
        let got = self.media(L1, 500, true, 40);
        let (_, seq, _) = self.sub.open(&got.iter().find(|(p, _)| !p).unwrap().1);
        assert_eq!(seq, 13, "the switch continues after 12");
    }

    fn nack_11(&mut self, ms: u64) -> Vec<(bool, Vec<u8>)> {
        let mut b = [0u8; 16];
        let n = rtcp::write_nack(&mut b, Ssrc(2), Ssrc(OUT), &[rtcp::NackItem { pid: 11, blp: 0 }]).unwrap();
        let w = self.sub.rtcp(&b[..n]);
        self.rx(false, w, ms)
    }
}

fn assert_repairs_11(r: &mut Rig, got: &[(bool, Vec<u8>)]) {
    let to_sub: Vec<&Vec<u8>> = got.iter().filter(|(p, _)| !p).map(|(_, b)| b).collect();
    assert_eq!(to_sub.len(), 1, "one retransmission to the subscriber");
    let (ssrc, _, payload) = r.sub.open(to_sub[0]);
    assert_eq!(ssrc, OUT_RTX);
    assert_eq!(&payload[..2], &11u16.to_be_bytes(), "OSN is the subscriber's sequence number");
    assert_eq!(&payload[4..6], &11u16.to_be_bytes(), "and it carries publisher packet 11 of layer 0");
}

#[test]
fn packet_reordered_past_a_switch_is_repaired_from_the_cache() {
    let mut r = Rig::new();
    r.switch_with_a_hole();
    // L0 11 arrives late, after the switch: not forwarded (it would go out after 13) but cached.
    assert!(r.media(L0, 11, false, 41).iter().all(|(p, _)| *p), "not forwarded after the switch");
    let got = r.nack_11(100);
    assert!(got.iter().all(|(p, _)| !p), "answered from the cache, nothing asked upstream: {got:?}");
    assert_repairs_11(&mut r, &got);
    assert_eq!(r.core.stats().nack_answered, 1);
    assert_eq!(r.core.stats().nack_forwarded, 0);
}

#[test]
fn packet_lost_before_a_switch_is_repaired_by_publisher_rtx() {
    let mut r = Rig::new();
    r.switch_with_a_hole();
    // L0 11 never reached the SFU: the NACK goes upstream for publisher seq 11 of L0.
    let got = r.nack_11(100);
    assert_eq!(got.len(), 1);
    assert!(got[0].0, "to the publisher");
    assert_eq!(demux::classify(&got[0].1), demux::PacketClass::Rtcp);
    assert_eq!(r.core.stats().nack_forwarded, 1);
    // The publisher answers with RTX (RFC 4588: OSN first) on L0's RTX SSRC.
    let mut payload = vec![0x42u8; 102];
    payload[..2].copy_from_slice(&11u16.to_be_bytes());
    payload[2..4].copy_from_slice(&[0x00, 0x00]);
    payload[4..6].copy_from_slice(&11u16.to_be_bytes());
    let w = r.publisher.rtp(&rtp_packet(L0 + 1, 7, 11 * 3000, PT_VP8_RTX, false, &payload));
    let got = r.rx(true, w, 130);
    assert_repairs_11(&mut r, &got);
}

/// Pausing a video subscription and resuming it must not leave the paused stretch as a hole in
/// the subscriber's sequence numbers (which it would NACK, all of it, and get from the cache) or
/// resume mid-GOP: the stream continues right after the last packet sent, at a keyframe.
#[test]
fn resume_after_pause_continues_at_a_keyframe_without_a_gap() {
    let mut r = Rig::new();
    assert_eq!(r.media(L0, 10, true, 0).len(), 1);
    assert_eq!(r.media(L0, 11, false, 1).len(), 1);
    let mut s = subscription(2, 1, OUT, Some(OUT_RTX), 0);
    s.paused = true;
    r.core.apply(Delta { generation: Generation(2), replace_all: false, ops: vec![Op::UpsertSubscription(s.clone())] }).unwrap();
    for (k, seq) in (12..40).enumerate() {
        assert!(r.media(L0, seq, false, 2 + k as u64).iter().all(|(p, _)| *p), "paused");
    }
    s.paused = false;
    r.core.apply(Delta { generation: Generation(3), replace_all: false, ops: vec![Op::UpsertSubscription(s)] }).unwrap();
    let mut first = None;
    for (k, seq) in (40..50).enumerate() {
        let key = seq == 45;
        for (to_pub, b) in r.media(L0, seq, key, 100 + k as u64) {
            if !to_pub && first.is_none() {
                let (_, out_seq, payload) = r.sub.open(&b);
                first = Some((out_seq, u16::from_be_bytes([payload[2], payload[3]])));
            }
        }
    }
    let (out_seq, in_seq) = first.expect("resumed");
    assert_eq!(out_seq, 12, "continues right after the last packet before the pause");
    assert_eq!(in_seq, 45, "at the first keyframe after the resume");
}

/// The other way: a switch *down* (the allocator's answer to congestion) starts the decoder over
/// at the lower layer's keyframe, so the old layer's losses are not repaired, neither from the
/// cache nor by asking the publisher: those retransmissions would load the congested link with
/// packets nobody can use. NACKs for them are counted as stale.
#[test]
fn packet_lost_before_a_switch_down_is_not_repaired() {
    let mut r = Rig::new();
    r.switch_with_a_hole();
    // On L1 now (501 is out seq 14), with 502 (out 15) lost; then down to L0 again, at its
    // keyframe (out 17).
    assert_eq!(r.media(L1, 501, false, 41).len(), 1);
    r.media(L1, 503, false, 42);
    let mut s = subscription(2, 1, OUT, Some(OUT_RTX), 1);
    s.target_layer = 0;
    r.core.apply(Delta { generation: Generation(3), replace_all: false, ops: vec![Op::UpsertSubscription(s)] }).unwrap();
    let got = r.media(L0, 20, true, 60);
    let (_, seq, _) = r.sub.open(&got.iter().find(|(p, _)| !p).unwrap().1);
    assert_eq!(seq, 17, "the switch continues after 16");
    // L1 502 (out 15) arrives late and is cached, as 503 (out 16) is: before the switch a NACK
    // for them would be answered.
    assert!(r.media(L1, 502, false, 61).iter().all(|(p, _)| *p), "not forwarded after the switch");
    let mut b = [0u8; 16];
    let n = rtcp::write_nack(&mut b, Ssrc(2), Ssrc(OUT), &[rtcp::NackItem { pid: 15, blp: 0b1 }]).unwrap();
    let w = r.sub.rtcp(&b[..n]);
    let got = r.rx(false, w, 100);
    assert!(got.is_empty(), "nothing retransmitted, nothing asked upstream: {got:?}");
    assert_eq!((r.core.stats().nack_answered, r.core.stats().nack_forwarded, r.core.stats().nack_stale), (0, 0, 2));
}
