//! The whole `handle_rx` path against a populated table. Each input is a list of datagrams; most
//! are plaintext the harness protects with the sending participant's real key (so the fuzzer
//! reaches everything after decryption: RTP rewrite, codec parsing, RTCP translation, NACK
//! answers), the rest go in raw. The first byte's low bit picks one core or two (legs 1 and 3
//! on core 1, leg 2 on core 0, hand-overs carried between them as the workers do). No panic;
//! every datagram is counted once; every hand-over is handled once.
#![no_main]
use std::net::{Ipv4Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use sluice_core::forward::{Core, CoreConfig, OutBatch, Shard};
use sluice_core::ids::{Generation, LegId, Pt, Ssrc, TrackId};
use sluice_core::srtp::{Profile, RtcpSendState, RtpSendState, SrtpKeys};
use sluice_core::table::{Codec, Delta, FeedbackSpec, KeyMaterial, LayerSpec, LegSpec, MediaKind, Op, PayloadSpec, SubscriptionSpec, TrackSpec};
use sluice_core::time::Instant;
use sluice_core::wire::demux;

const PROFILE: Profile = Profile::AesCm128HmacSha1_80;

fn material(seed: u8) -> KeyMaterial {
    KeyMaterial::new(PROFILE, vec![seed; 16], vec![seed; 14])
}

fn addr(n: u8) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(10, 0, 0, n), 5000))
}

fn setup(shard: Shard) -> Core {
    let mut core = Core::new(CoreConfig { shard, ..CoreConfig::default() });
    let mut ops = Vec::new();
    for n in 1..=3u32 {
        ops.push(Op::UpsertLeg(LegSpec {
            remote: Some(addr(n as u8)),
            // Legs 1 and 2 negotiated transport-cc (extension 3), leg 3 REMB only: the uplink
            // and downlink feedback paths run on what the fuzzer sends.
            feedback: FeedbackSpec { twcc_ext: (n < 3).then_some(3), remb: n == 3 },
            // Leg 1 is a cascade leg: this node tells it the layers its subscribers want.
            cascade: n == 1,
            ..LegSpec::new(LegId(n), 20_000 + n as u16, material(n as u8), material(n as u8 + 100), Ssrc(0xf0 + n))
        }));
    }
    ops.push(Op::UpsertTrack(TrackSpec {
        dd_ext: None,
        id: TrackId(1),
        publisher: LegId(1),
        kind: MediaKind::Audio,
        clock_rate: 48_000,
        layers: vec![LayerSpec { ssrc: Some(Ssrc(0x10)), rtx_ssrc: None, rid: None }],
        payload_types: vec![PayloadSpec { pt: Pt(111), codec: Codec::Audio, rtx_pt: None }],
        rid_ext: None,
        repaired_rid_ext: None,
        mid: None,
        audio_level_ext: None,
        speaker_group: None,
    }));
    ops.push(Op::UpsertTrack(TrackSpec {
        dd_ext: None,
        id: TrackId(2),
        publisher: LegId(1),
        kind: MediaKind::Video,
        clock_rate: 90_000,
        layers: vec![
            LayerSpec { ssrc: Some(Ssrc(0x20)), rtx_ssrc: Some(Ssrc(0x21)), rid: None },
            LayerSpec { ssrc: Some(Ssrc(0x30)), rtx_ssrc: Some(Ssrc(0x31)), rid: None },
            LayerSpec { ssrc: None, rtx_ssrc: None, rid: Some("f".into()) },
        ],
        payload_types: vec![
            PayloadSpec { pt: Pt(96), codec: Codec::Vp8, rtx_pt: Some(Pt(97)) },
            PayloadSpec { pt: Pt(98), codec: Codec::H264, rtx_pt: None },
            PayloadSpec { pt: Pt(99), codec: Codec::Vp9, rtx_pt: None },
            PayloadSpec { pt: Pt(45), codec: Codec::Av1, rtx_pt: None },
        ],
        rid_ext: Some(4),
        repaired_rid_ext: Some(5),
        mid: None,
        audio_level_ext: None,
        speaker_group: None,
    }));
    for (n, layer) in [(2u32, 0u8), (3, 1)] {
        for t in [1u32, 2] {
            ops.push(Op::UpsertSubscription(SubscriptionSpec {
                max_temporal: None,
                max_spatial: None,
                subscriber: LegId(n),
                track: TrackId(t),
                out_ssrc: Ssrc(n * 0x100 + t),
                out_rtx_ssrc: Some(Ssrc(n * 0x100 + t + 0x10)),
                pt_map: vec![(Pt(111), Pt(111)), (Pt(96), Pt(96)), (Pt(97), Pt(97)), (Pt(98), Pt(98)), (Pt(99), Pt(99)), (Pt(45), Pt(45))],
                ext_map: vec![(1, 1), (3, 2)],
                target_layer: layer,
                paused: false,
                priority: 0,
                // Leg 3 takes the video as a relay (a cascade's every-layer lanes).
                relay: if n == 3 && t == 2 { vec![(Ssrc(0x3a0), Some(Ssrc(0x3b0))), (Ssrc(0x3c0), None)] } else { Vec::new() },
            }));
        }
    }
    core.apply(Delta { generation: Generation(1), replace_all: false, ops }).unwrap();
    core
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, data)) = data.split_first() else { return };
    let count = 1 + u16::from(first & 1);
    let mut cores: Vec<Core> = (0..count).map(|index| setup(Shard { index, count })).collect();
    let keys: Vec<SrtpKeys> = (1..=3u8).map(|n| SrtpKeys::new(PROFILE, &[n; 16], &[n; 14]).unwrap()).collect();
    let mut rtp_state: Vec<RtpSendState> = vec![RtpSendState::new(); 3];
    let mut rtcp_state: Vec<RtcpSendState> = vec![RtcpSendState::new(); 3];
    let mut out = OutBatch::new(64);
    let mut rest = data;
    let mut fed = 0u64;
    let mut now = 0u64;
    while let [flags, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (chunk, next) = tail.split_at(n);
        rest = next;
        let peer = usize::from(flags & 3) % 3;
        let mut buf = chunk.to_vec();
        if flags & 4 == 0 {
            buf.resize(n + 64, 0);
            let protected = match demux::classify(chunk) {
                demux::PacketClass::Rtp => keys[peer].protect_rtp(&mut rtp_state[peer], &mut buf, n),
                demux::PacketClass::Rtcp => keys[peer].protect_rtcp(&mut rtcp_state[peer], &mut buf, n),
                _ => Ok(n),
            };
            match protected {
                Ok(m) => buf.truncate(m),
                Err(_) => buf.truncate(n),
            }
        }
        now += u64::from(flags >> 3) * 1_000_000;
        let at = Instant::from_nanos(now);
        let port = 20_001 + peer as u16;
        out.clear();
        cores[usize::from(port % count)].handle_rx(at, port, addr(peer as u8 + 1), &mut buf, &mut out);
        fed += 1;
        for k in 0..cores.len() {
            // The core's timers as the worker runs them: reports, transport-cc, probes, allocation.
            if cores[k].poll_timeout() <= at {
                out.clear();
                cores[k].handle_timeout(at, &mut out);
            }
            while cores[k].poll_event().is_some() {}
        }
        // Hand-overs until none is left, each buffer back to its pool.
        let mut any = true;
        while any {
            any = false;
            for k in 0..cores.len() {
                while let Some(mut h) = cores[k].poll_handoff() {
                    any = true;
                    assert_ne!(usize::from(h.to), k, "a core hands nothing to itself");
                    out.clear();
                    cores[usize::from(h.to)].handle_handoff(at, &mut h, &mut out);
                    cores[k].recycle(h);
                }
            }
        }
    }
    let rx: u64 = cores.iter().map(|c| c.stats().rx_packets).sum();
    let drops: u64 = cores.iter().map(|c| c.stats().total_drops()).sum();
    assert_eq!(rx, fed);
    assert!(drops <= fed);
    let (out_, in_) = cores.iter().fold((0, 0), |(o, i), c| (o + c.stats().handoffs_out, i + c.stats().handoffs_in));
    assert_eq!(out_, in_, "every hand-over handled once");
});
