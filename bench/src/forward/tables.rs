//! The forwarding tables the bench programs (one publisher, N subscribers) and the publisher's
//! packet the cross-process tests send against them.

use std::net::SocketAddr;

use sluice_core::ids::{LegId, Pt, Ssrc, TrackId};
use sluice_core::srtp::{Profile, RtpSendState, SrtpKeys};
use sluice_core::table::{Codec, KeyMaterial, LayerSpec, LegSpec, MediaKind, Op, PayloadSpec, SubscriptionSpec, TrackSpec};
use sluice_sim::fixture::subscription;

use super::{BASE_PORT, PUBLISHER_SSRC, SINK_IP, SINK_PORT, STREAMS};

/// The table: leg 1 publishes [`STREAMS`] video tracks, legs 2..=N+1 subscribe to all;
/// subscribers are where the sink listens, the publisher is latched from its packets.
pub(super) fn ops(profile: Profile, fanout: u32) -> Vec<Op> {
    streams_ops(profile, fanout, STREAMS, BASE_PORT, |l| (l > 1).then(|| SocketAddr::from((SINK_IP, SINK_PORT + l as u16))))
}

/// One publisher (leg 1, port `base_port + 1`, SSRC 0x5000, VP8 on PT 96) and `fanout`
/// subscribers (legs 2..=N+1 on the following ports, out-SSRC 0x9000 + leg) at `remote(leg)`.
pub fn fanout_ops(profile: Profile, fanout: u32, base_port: u16, remote: impl Fn(u32) -> Option<SocketAddr>) -> Vec<Op> {
    streams_ops(profile, fanout, 1, base_port, remote)
}

/// Packet `seq` of the [`fanout_ops`] publisher, `rtp_len` bytes before protection with `keys`:
/// a VP8 keyframe start, so every subscription forwards from the first one it gets.
pub fn publisher_keyframe(keys: &SrtpKeys, state: &mut RtpSendState, seq: u16, rtp_len: usize) -> Vec<u8> {
    let mut p = vec![0x80, 96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0x00];
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[8..12].copy_from_slice(&PUBLISHER_SSRC.to_be_bytes());
    p.resize(rtp_len, 0xa5);
    p.resize(rtp_len + 16, 0);
    let n = keys.protect_rtp(state, &mut p, rtp_len).expect("room for the tag");
    p.truncate(n);
    p
}

/// Like [`fanout_ops`] with `streams` tracks (SSRC 0x5000 + i, track i + 1), every subscriber on
/// every track (out-SSRC 0x9000 + leg + (i << 16)).
pub(crate) fn streams_ops(profile: Profile, fanout: u32, streams: u32, base_port: u16, remote: impl Fn(u32) -> Option<SocketAddr>) -> Vec<Op> {
    let mut ops = Vec::new();
    for l in 1..=fanout + 1 {
        // Leg `l` receives with seed `l` and sends with seed `100 + l`.
        let (rx, tx) = (KeyMaterial::seeded(profile, l), KeyMaterial::seeded(profile, 100 + l));
        ops.push(Op::UpsertLeg(LegSpec { remote: remote(l), ..LegSpec::new(LegId(l), base_port + l as u16, rx, tx, Ssrc(0xfeed0000 + l)) }));
    }
    for i in 0..streams {
        ops.push(Op::UpsertTrack(TrackSpec {
            dd_ext: None,
            id: TrackId(i + 1),
            publisher: LegId(1),
            kind: MediaKind::Video,
            clock_rate: 90_000,
            layers: vec![LayerSpec { ssrc: Some(Ssrc(PUBLISHER_SSRC + i)), rtx_ssrc: None, rid: None }],
            payload_types: vec![PayloadSpec { pt: Pt(96), codec: Codec::Vp8, rtx_pt: None }],
            rid_ext: None,
            repaired_rid_ext: None,
            mid: None,
            audio_level_ext: None,
            speaker_group: None,
        }));
        for l in 2..=fanout + 1 {
            let sub = subscription(l, i + 1, 0x9000 + l + (i << 16), None, 0);
            ops.push(Op::UpsertSubscription(SubscriptionSpec { pt_map: vec![(Pt(96), Pt(96))], ..sub }));
        }
    }
    ops
}
