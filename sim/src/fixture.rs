//! Fixtures of a small meeting: payload types, deterministic key material, plaintext RTP packets
//! and the table specs (leg, audio and VP8 tracks, subscription) the core's integration tests and
//! the simulated meetings are programmed with. Ids are bare `u32`s here because the tests write
//! them as literals; [`crate::ids`] says which values a simulated participant uses.

use std::net::SocketAddr;

use sluice_core::ids::{LegId, Pt, SpeakerGroup, Ssrc, TrackId};
use sluice_core::srtp::Profile;
use sluice_core::table::{AudioSlotsSpec, Codec, KeyMaterial, LayerSpec, LegSpec, MediaKind, Op, PayloadSpec, SubscriptionSpec, TrackSpec};

use crate::ids;

/// Publisher payload type: Opus.
pub const PT_OPUS: u8 = 111;
/// Publisher payload type: VP8.
pub const PT_VP8: u8 = 96;
/// Publisher payload type: VP8 retransmissions (RFC 4588).
pub const PT_VP8_RTX: u8 = 97;
/// What subscribers see for [`PT_OPUS`] (through [`subscription`]'s payload-type map).
pub const SUB_PT_OPUS: u8 = 109;
/// What subscribers see for [`PT_VP8`].
pub const SUB_PT_VP8: u8 = 100;
/// What subscribers see for [`PT_VP8_RTX`].
pub const SUB_PT_VP8_RTX: u8 = 101;

/// Deterministic key material for one direction (`dir` 0: participant → SFU, 1: SFU →
/// participant) of a leg: distinct `seed`s give distinct keys ([`crate::meeting`] uses the leg id).
pub fn material(profile: Profile, seed: u32, dir: u8) -> KeyMaterial {
    KeyMaterial::seeded(profile, seed.wrapping_mul(2) | u32::from(dir & 1))
}

/// A leg spec: `up` is what the participant sends (the SFU's rx), `down` what it receives. The
/// SFU's own RTCP on it goes out as [`ids::feedback_ssrc`].
pub fn leg_spec(id: u32, port: u16, up: KeyMaterial, down: KeyMaterial) -> LegSpec {
    LegSpec::new(LegId(id), port, up, down, ids::feedback_ssrc(LegId(id)))
}

/// A plaintext RTP packet (no extensions).
pub fn rtp_packet(ssrc: u32, seq: u16, ts: u32, pt: u8, marker: bool, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(12 + payload.len() + 16);
    v.extend_from_slice(&[0x80, pt | if marker { 0x80 } else { 0 }]);
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(&ts.to_be_bytes());
    v.extend_from_slice(&ssrc.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// A plaintext RTP packet carrying an RFC 6464 audio level (`|V| level|`) in one-byte
/// extension `ext`.
pub fn rtp_packet_with_level(ssrc: u32, seq: u16, ts: u32, pt: u8, ext: u8, (voice, level): (bool, u8), payload: &[u8]) -> Vec<u8> {
    let mut v = rtp_packet(ssrc, seq, ts, pt, false, &[]);
    v[0] |= 0x10;
    v.extend_from_slice(&[0xBE, 0xDE, 0, 1, ext << 4, u8::from(voice) << 7 | (level & 0x7f), 0, 0]);
    v.extend_from_slice(payload);
    v
}

/// An Opus track of leg `publisher` with one layer, `ssrc`.
pub fn audio_track(id: u32, publisher: u32, ssrc: u32) -> TrackSpec {
    TrackSpec {
        dd_ext: None,
        id: TrackId(id),
        publisher: LegId(publisher),
        kind: MediaKind::Audio,
        clock_rate: 48_000,
        layers: vec![LayerSpec { ssrc: Some(Ssrc(ssrc)), rtx_ssrc: None, rid: None }],
        payload_types: vec![PayloadSpec { pt: Pt(PT_OPUS), codec: Codec::Audio, rtx_pt: None }],
        rid_ext: None,
        repaired_rid_ext: None,
        mid: None,
        audio_level_ext: None,
        speaker_group: None,
    }
}

/// A VP8 track with one layer per `(ssrc, rtx_ssrc)`.
pub fn video_track(id: u32, publisher: u32, layers: &[(u32, u32)]) -> TrackSpec {
    TrackSpec {
        dd_ext: None,
        id: TrackId(id),
        publisher: LegId(publisher),
        kind: MediaKind::Video,
        clock_rate: 90_000,
        layers: layers.iter().map(|&(s, r)| LayerSpec { ssrc: Some(Ssrc(s)), rtx_ssrc: Some(Ssrc(r)), rid: None }).collect(),
        payload_types: vec![PayloadSpec { pt: Pt(PT_VP8), codec: Codec::Vp8, rtx_pt: Some(Pt(PT_VP8_RTX)) }],
        rid_ext: None,
        repaired_rid_ext: None,
        mid: None,
        audio_level_ext: None,
        speaker_group: None,
    }
}

/// Leg `subscriber` receives `track` as `out_ssrc` (retransmissions on `out_rtx`, or on
/// `out_ssrc` without one) at `layer`, with the publisher payload types mapped to the `SUB_PT_*`.
pub fn subscription(subscriber: u32, track: u32, out_ssrc: u32, out_rtx: Option<u32>, layer: u8) -> SubscriptionSpec {
    SubscriptionSpec {
        max_temporal: None,
        max_spatial: None,
        subscriber: LegId(subscriber),
        track: TrackId(track),
        out_ssrc: Ssrc(out_ssrc),
        out_rtx_ssrc: out_rtx.map(Ssrc),
        pt_map: vec![(Pt(PT_OPUS), Pt(SUB_PT_OPUS)), (Pt(PT_VP8), Pt(SUB_PT_VP8)), (Pt(PT_VP8_RTX), Pt(SUB_PT_VP8_RTX))],
        ext_map: vec![],
        target_layer: layer,
        paused: false,
        priority: 0,
        relay: Vec::new(),
    }
}
/// The tables of an audio meeting (the audio benchmarks'): participant `i` (1-based) is leg `i`
/// on `base_port + i` at `remotes[i - 1]`, publishing Opus track `i` (SSRC `0x100 + i`) with its
/// RFC 6464 level in extension `ext`, in speaker group `group`. With `slots`, every leg gets that
/// many top-N audio slots (out-SSRCs `0x7000_0000 + 4i + k`) and no per-track subscription;
/// without, everyone subscribes to everyone (out-SSRC `0x10_0000 · i + j`).
pub fn audio_meeting_ops(profile: Profile, base_port: u16, remotes: &[SocketAddr], ext: u8, group: SpeakerGroup, slots: Option<u32>) -> Vec<Op> {
    let people = remotes.len() as u32;
    let mut ops = Vec::new();
    for (i, remote) in (1..=people).zip(remotes) {
        let leg = LegSpec {
            remote: Some(*remote),
            audio_slots: slots.map(|n| AudioSlotsSpec {
                group,
                out_ssrcs: (0..n).map(|k| Ssrc(0x7000_0000 + i * 4 + k)).collect(),
                pt_map: vec![(Pt(PT_OPUS), Pt(SUB_PT_OPUS))],
                ext_map: vec![(ext, 1)],
            }),
            ..leg_spec(i, base_port + i as u16, material(profile, i, 0), material(profile, i, 1))
        };
        ops.push(Op::UpsertLeg(leg));
        ops.push(Op::UpsertTrack(TrackSpec { audio_level_ext: Some(ext), speaker_group: Some(group), ..audio_track(i, i, 0x100 + i) }));
    }
    if slots.is_none() {
        for i in 1..=people {
            for j in (1..=people).filter(|&j| j != i) {
                ops.push(Op::UpsertSubscription(subscription(i, j, 0x10_0000 * i + j, None, 0)));
            }
        }
    }
    ops
}
