//! Seeded random input over the whole `Core::handle_rx` path, against a populated table (a
//! cargo-fuzz target for the same path lives in the fuzz crate; this one runs in `cargo test`).
//!
//! Inputs mix: random bytes; valid SRTP/SRTCP with bits flipped after protection (must fail
//! authentication) and — more interesting — plaintext mutated *before* protection, so authentic
//! packets with hostile contents reach the parsers (CSRC counts, extension lengths, padding,
//! payload types, VP8 descriptors, RTX OSNs); truncations; random RTCP compounds with random
//! types, counts and lengths (authentic too); sources on unknown ports and addresses; and,
//! between them, ordinary media and feedback so caches, rewriters and layer switches are live.
//! Control-plane deltas (pause, layer targets) land in between now and then.
//!
//! Asserts: no panic (overflow checks are on in test builds); every call ends with exactly one
//! verdict — one drop reason, or at least one output; `rx_packets` = calls and `tx_packets` =
//! outputs; every output goes to a known leg's latched address from its port, and authenticates
//! with that leg's keys (RTP and RTCP alike).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_core::forward::{Core, CoreConfig, OutBatch};
use sluice_core::ids::{Generation, Ssrc};
use sluice_core::srtp::{MAX_WINDOW, Profile, RtcpRecvState, RtcpSendState, RtpRecvState, RtpSendState, SrtpError, SrtpKeys};
use sluice_core::table::{Delta, Op, SubscriptionSpec};
use sluice_core::time::Instant;
use sluice_core::wire::{demux, rtcp};
use sluice_sim::fixture::*;

const LEGS: u32 = 4;

struct Peer {
    port: u16,
    addr: SocketAddr,
    up: SrtpKeys,
    down: SrtpKeys,
    up_rtp: HashMap<u32, RtpSendState>,
    up_rtcp: HashMap<u32, RtcpSendState>,
    down_rtp: HashMap<u32, RtpRecvState>,
    down_rtcp: HashMap<u32, RtcpRecvState>,
}

impl Peer {
    fn protect_rtp(&mut self, plain: &[u8]) -> Option<Vec<u8>> {
        let ssrc = u32::from_be_bytes(plain.get(8..12)?.try_into().ok()?);
        let mut b = plain.to_vec();
        b.resize(plain.len() + 32, 0);
        let st = self.up_rtp.entry(ssrc).or_default();
        let n = self.up.protect_rtp(st, &mut b, plain.len()).ok()?;
        b.truncate(n);
        Some(b)
    }

    fn protect_rtcp(&mut self, plain: &[u8]) -> Option<Vec<u8>> {
        let ssrc = u32::from_be_bytes(plain.get(4..8)?.try_into().ok()?);
        let mut b = plain.to_vec();
        b.resize(plain.len() + 32, 0);
        let st = self.up_rtcp.entry(ssrc).or_default();
        let n = self.up.protect_rtcp(st, &mut b, plain.len()).ok()?;
        b.truncate(n);
        Some(b)
    }

    /// Checks that an output authenticates with this peer's keys.
    fn verify(&mut self, wire: &[u8]) {
        let mut b = wire.to_vec();
        let len = b.len();
        let r = match demux::classify(wire) {
            demux::PacketClass::Rtp => {
                let ssrc = u32::from_be_bytes(wire[8..12].try_into().unwrap());
                let st = self.down_rtp.entry(ssrc).or_insert_with(|| RtpRecvState::new(MAX_WINDOW));
                self.down.unprotect_rtp(st, &mut b, len).map(drop)
            }
            demux::PacketClass::Rtcp => {
                let ssrc = u32::from_be_bytes(wire[4..8].try_into().unwrap());
                let st = self.down_rtcp.entry(ssrc).or_insert_with(|| RtcpRecvState::new(MAX_WINDOW));
                self.down.unprotect_rtcp(st, &mut b, len).map(drop)
            }
            c => panic!("the core emitted {c:?}"),
        };
        // Retransmissions without an RTX SSRC repeat an index: a replay, not a forgery.
        assert!(matches!(r, Ok(()) | Err(SrtpError::Replayed | SrtpError::IndexTooOld)), "output fails authentication: {r:?}");
    }
}

fn audio_ssrc(leg: u32) -> u32 {
    0x100 * leg
}
fn layer_ssrc(leg: u32, l: u32) -> u32 {
    0x100 * leg + 0x10 + 2 * l
}

struct Fuzz {
    rng: ChaCha8Rng,
    core: Core,
    out: OutBatch,
    peers: Vec<Peer>,
    subs: Vec<SubscriptionSpec>,
    generation: u64,
    now: u64,
    calls: u64,
    outputs: u64,
    /// Media sequence numbers per publisher SSRC, so valid traffic keeps flowing.
    seqs: HashMap<u32, u16>,
    verdicts: HashMap<&'static str, u64>,
}

impl Fuzz {
    fn new(seed: u64) -> Self {
        let mut core = Core::new(CoreConfig::default());
        let mut peers = Vec::new();
        let mut ops = Vec::new();
        for leg in 1..=LEGS {
            let profile = if leg % 2 == 0 { Profile::AesCm128HmacSha1_80 } else { Profile::AeadAes128Gcm };
            let (up, down) = (material(profile, leg, 0), material(profile, leg, 1));
            ops.push(Op::UpsertLeg(leg_spec(leg, 20_000 + leg as u16, up.clone(), down.clone())));
            peers.push(Peer {
                port: 20_000 + leg as u16,
                addr: SocketAddr::from((Ipv4Addr::new(10, 0, 0, leg as u8), 5000)),
                up: SrtpKeys::new(profile, &up.key, &up.salt).unwrap(),
                down: SrtpKeys::new(profile, &down.key, &down.salt).unwrap(),
                up_rtp: HashMap::new(),
                up_rtcp: HashMap::new(),
                down_rtp: HashMap::new(),
                down_rtcp: HashMap::new(),
            });
        }
        let mut subs = Vec::new();
        for leg in 1..=LEGS {
            ops.push(Op::UpsertTrack(audio_track(leg * 2, leg, audio_ssrc(leg))));
            let layers: Vec<(u32, u32)> = (0..3).map(|l| (layer_ssrc(leg, l), layer_ssrc(leg, l) + 1)).collect();
            ops.push(Op::UpsertTrack(video_track(leg * 2 + 1, leg, &layers)));
            for s in (1..=LEGS).filter(|&s| s != leg) {
                for (t, video) in [(leg * 2, false), (leg * 2 + 1, true)] {
                    let out = 0x1000_0000 + s * 0x10000 + t * 4;
                    let rtx = (video && s % 2 == 1).then_some(out + 1);
                    subs.push(subscription(s, t, out, rtx, if video { (s % 3) as u8 } else { 0 }));
                }
            }
        }
        ops.extend(subs.iter().cloned().map(Op::UpsertSubscription));
        core.apply(Delta { generation: Generation(1), replace_all: false, ops }).unwrap();
        let mut f = Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            core,
            out: OutBatch::new(512),
            peers,
            subs,
            generation: 1,
            now: 0,
            calls: 0,
            outputs: 0,
            seqs: HashMap::new(),
            verdicts: HashMap::new(),
        };
        for leg in 1..=LEGS {
            let mut b = [0u8; 8];
            let n = rtcp::write_rr(&mut b, Ssrc(leg), &[]).unwrap();
            let w = f.peers[leg as usize - 1].protect_rtcp(&b[..n]).unwrap();
            f.deliver(leg as usize - 1, None, w);
        }
        f
    }

    /// Hands one datagram to the core as if from peer `i` (or from `from` when given).
    fn deliver(&mut self, i: usize, from: Option<(u16, SocketAddr)>, mut bytes: Vec<u8>) {
        let (port, addr) = from.unwrap_or((self.peers[i].port, self.peers[i].addr));
        let drops = self.core.stats().total_drops();
        self.out.clear();
        self.core.handle_rx(Instant::from_nanos(self.now), port, addr, &mut bytes, &mut self.out);
        self.calls += 1;
        let dropped = self.core.stats().total_drops() - drops;
        let n = self.out.len();
        assert!(dropped <= 1, "one datagram, {dropped} drop reasons");
        assert!(dropped == 1 || n > 0, "a datagram neither dropped nor forwarded");
        *self.verdicts.entry(if dropped == 1 { "dropped" } else { "forwarded" }).or_default() += 1;
        self.outputs += n as u64;
        let outs: Vec<(u32, SocketAddr, u16, Vec<u8>)> = self.out.iter().map(|(m, b)| (m.leg.0, m.dst, m.local_port, b.to_vec())).collect();
        for (leg, dst, port, b) in outs {
            let p = &mut self.peers[leg as usize - 1];
            assert_eq!((dst, port), (p.addr, p.port), "output to leg {leg}'s address and port");
            p.verify(&b);
        }
        while self.core.poll_event().is_some() {}
    }

    /// A plausible plaintext media packet from `leg`: audio, or a VP8 packet of some layer,
    /// or an RTX packet.
    fn media(&mut self, leg: u32) -> Vec<u8> {
        let kind = self.rng.random_range(0..10);
        let (ssrc, pt) = match kind {
            0..=2 => (audio_ssrc(leg), PT_OPUS),
            3 => (layer_ssrc(leg, self.rng.random_range(0..3)) + 1, PT_VP8_RTX),
            _ => (layer_ssrc(leg, self.rng.random_range(0..3)), PT_VP8),
        };
        let seq = self.seqs.entry(ssrc).or_insert(1000);
        *seq = seq.wrapping_add(1);
        let seq = *seq;
        let mut payload = vec![0u8; self.rng.random_range(0..300)];
        self.rng.fill_bytes(&mut payload);
        if pt == PT_VP8 && payload.len() >= 2 {
            payload[..2].copy_from_slice(match self.rng.random_range(0..3) {
                0 => &[0x10, 0x00],
                1 => &[0x10, 0x01],
                _ => &[0x00, 0x00],
            });
        }
        rtp_packet(ssrc, seq, u32::from(seq) * 3000, pt, false, &payload)
    }

    /// Random RTCP: a compound of well-formed feedback with random SSRCs and numbers, and
    /// packets of random type, count and length.
    fn rtcp(&mut self, leg: u32) -> Vec<u8> {
        let mut v = Vec::new();
        let targets: Vec<u32> = self.subs.iter().filter(|s| s.subscriber.0 == leg).map(|s| s.out_ssrc.0).collect();
        for _ in 0..self.rng.random_range(1..5) {
            let media = if self.rng.random_bool(0.7) { targets[self.rng.random_range(0..targets.len())] } else { self.rng.random() };
            let mut b = vec![0u8; 512];
            let n = match self.rng.random_range(0..8) {
                0 => {
                    let items: Vec<rtcp::NackItem> =
                        (0..self.rng.random_range(0..20)).map(|_| rtcp::NackItem { pid: self.rng.random(), blp: self.rng.random() }).collect();
                    rtcp::write_nack(&mut b, Ssrc(leg), Ssrc(media), &items).unwrap()
                }
                1 => rtcp::write_pli(&mut b, Ssrc(leg), Ssrc(media)).unwrap(),
                2 => {
                    let e: Vec<rtcp::FirEntry> =
                        (0..self.rng.random_range(0..4)).map(|_| rtcp::FirEntry { ssrc: Ssrc(media), seq: self.rng.random() }).collect();
                    rtcp::write_fir(&mut b, Ssrc(leg), &e).unwrap()
                }
                3 => {
                    let blocks: Vec<rtcp::ReportBlockInfo> = (0..self.rng.random_range(0..4))
                        .map(|_| rtcp::ReportBlockInfo {
                            ssrc: Ssrc(media),
                            fraction_lost: self.rng.random(),
                            cumulative_lost: self.rng.random_range(-0x80_0000..0x80_0000),
                            highest_seq: self.rng.random(),
                            jitter: self.rng.random(),
                            last_sr: self.rng.random(),
                            delay_since_last_sr: self.rng.random(),
                        })
                        .collect();
                    rtcp::write_rr(&mut b, Ssrc(leg), &blocks).unwrap()
                }
                4 => {
                    // An SR as if from one of the leg's own streams (rewritten per subscriber).
                    let sender = [audio_ssrc(leg), layer_ssrc(leg, self.rng.random_range(0..3)), self.rng.random()][self.rng.random_range(0..3)];
                    let info = rtcp::SenderInfo {
                        ntp_timestamp: self.rng.random(),
                        rtp_timestamp: self.rng.random(),
                        packet_count: self.rng.random(),
                        octet_count: self.rng.random(),
                    };
                    rtcp::write_sr(&mut b, Ssrc(sender), &info, &[]).unwrap()
                }
                _ => {
                    // Any type, count and length (4-byte multiple, so the compound walks on).
                    let words = self.rng.random_range(1..20usize);
                    let n = 4 * words;
                    self.rng.fill_bytes(&mut b[..n]);
                    b[0] = 0x80 | (b[0] & 0x3f);
                    b[1] = self.rng.random_range(192..224);
                    b[2..4].copy_from_slice(&((words - 1) as u16).to_be_bytes());
                    n
                }
            };
            v.extend_from_slice(&b[..n]);
        }
        // The sender SSRC of the compound is the first packet's: make it the leg's own mostly.
        if self.rng.random_bool(0.8) && v.len() >= 8 && v[1] != rtcp::PT_SR {
            v[4..8].copy_from_slice(&leg.to_be_bytes());
        }
        v
    }

    /// Mutates a plaintext packet in a way that keeps it recognizable as RTP/RTCP often.
    fn mutate(&mut self, p: &mut Vec<u8>) {
        for _ in 0..self.rng.random_range(1..4) {
            if p.is_empty() {
                return;
            }
            match self.rng.random_range(0..6) {
                0 => {
                    let i = self.rng.random_range(0..p.len());
                    p[i] ^= 1 << self.rng.random_range(0..8);
                }
                1 => {
                    // Header flags: padding, extension, CSRC count, marker/PT.
                    let i = self.rng.random_range(0..p.len().min(2));
                    p[i] = self.rng.random();
                    p[0] = 0x80 | (p[0] & 0x3f);
                }
                2 => {
                    let n = self.rng.random_range(0..p.len());
                    p.truncate(n);
                }
                3 => {
                    let extra = self.rng.random_range(0..64);
                    for _ in 0..extra {
                        p.push(self.rng.random());
                    }
                }
                4 => {
                    // An extension header with an arbitrary length after the fixed header.
                    if p.len() >= 16 {
                        p[0] |= 0x10;
                        p[12..14].copy_from_slice(&[0xbe, 0xde]);
                        let l: u16 = self.rng.random_range(0..40);
                        p[14..16].copy_from_slice(&l.to_be_bytes());
                    }
                }
                _ => {
                    // Padding bit with an arbitrary count in the last byte.
                    p[0] |= 0x20;
                    let last = p.len() - 1;
                    p[last] = self.rng.random();
                }
            }
        }
    }

    fn step(&mut self) {
        self.now += self.rng.random_range(0..5_000_000);
        let i = self.rng.random_range(0..LEGS as usize);
        let leg = i as u32 + 1;
        match self.rng.random_range(0..100) {
            // Ordinary media and feedback keep the state live.
            0..=29 => {
                let m = self.media(leg);
                if let Some(w) = self.peers[i].protect_rtp(&m) {
                    self.deliver(i, None, w);
                }
            }
            30..=39 => {
                let r = self.rtcp(leg);
                if let Some(w) = self.peers[i].protect_rtcp(&r) {
                    self.deliver(i, None, w);
                }
            }
            // Authentic packets with hostile contents.
            40..=54 => {
                let mut m = self.media(leg);
                self.mutate(&mut m);
                if let Some(w) = self.peers[i].protect_rtp(&m) {
                    self.deliver(i, None, w);
                }
            }
            55..=64 => {
                let mut r = self.rtcp(leg);
                self.mutate(&mut r);
                if let Some(w) = self.peers[i].protect_rtcp(&r) {
                    self.deliver(i, None, w);
                }
            }
            // Forgeries: valid packets mutated after protection, and truncations.
            65..=74 => {
                let m = self.media(leg);
                if let Some(mut w) = self.peers[i].protect_rtp(&m) {
                    let k = self.rng.random_range(0..w.len());
                    w[k] ^= 1 << self.rng.random_range(0..8);
                    self.deliver(i, None, w);
                }
            }
            75..=79 => {
                let r = self.rtcp(leg);
                if let Some(w) = self.peers[i].protect_rtcp(&r) {
                    let n = self.rng.random_range(0..w.len());
                    self.deliver(i, None, w[..n].to_vec());
                }
            }
            80..=84 => {
                let m = self.media(leg);
                if let Some(w) = self.peers[i].protect_rtp(&m) {
                    let n = self.rng.random_range(0..w.len());
                    self.deliver(i, None, w[..n].to_vec());
                }
            }
            // Random bytes, sometimes with an RTP/RTCP-looking first byte, from the right
            // source or a stranger.
            85..=94 => {
                let mut b = vec![0u8; self.rng.random_range(0..1600)];
                self.rng.fill_bytes(&mut b);
                if !b.is_empty() && self.rng.random_bool(0.7) {
                    b[0] = 0x80 | (b[0] & 0x3f);
                }
                let from = self
                    .rng
                    .random_bool(0.2)
                    .then(|| (self.rng.random_range(19_999..20_006), SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), self.rng.random()))));
                self.deliver(i, from, b);
            }
            // Control-plane changes between packets.
            _ => {
                let k = self.rng.random_range(0..self.subs.len());
                let s = &mut self.subs[k];
                if self.rng.random_bool(0.5) {
                    s.target_layer = self.rng.random_range(0..4);
                } else {
                    s.paused = !s.paused;
                }
                let op = Op::UpsertSubscription(s.clone());
                self.generation += 1;
                self.core.apply(Delta { generation: Generation(self.generation), replace_all: false, ops: vec![op] }).unwrap();
            }
        }
    }
}

#[test]
fn random_input_over_handle_rx() {
    let seeds: Vec<u64> = match std::env::var("ROBUST_SEED") {
        Ok(s) => vec![s.parse().unwrap()],
        Err(_) => vec![1, 2, 3],
    };
    for seed in seeds {
        let r = std::panic::catch_unwind(|| {
            let mut f = Fuzz::new(seed);
            for _ in 0..10_000 {
                f.step();
            }
            let st = f.core.stats().clone();
            assert_eq!(st.rx_packets, f.calls, "rx_packets");
            assert_eq!(st.tx_packets, f.outputs, "tx_packets");
            assert_eq!(st.rx_packets, st.total_drops() + f.verdicts.get("forwarded").copied().unwrap_or(0), "one verdict per datagram");
            let named: Vec<String> =
                sluice_core::verdict::DropReason::ALL.iter().filter(|r| st.drops_for(**r) > 0).map(|r| format!("{}={}", r.name(), st.drops_for(*r))).collect();
            eprintln!("seed {seed}: {} datagrams, {} outputs, {:?}, drops {named:?}", f.calls, f.outputs, f.verdicts);
            // The mix reached the deep paths, not just the front door.
            assert!(st.nack_answered > 0 && st.keyframe_requests > 0 && st.layer_switches > 0, "{st:?}");
        });
        if let Err(e) = r {
            let msg = e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
            panic!("robustness failed with seed {seed} (rerun with ROBUST_SEED={seed}): {msg}");
        }
    }
}
