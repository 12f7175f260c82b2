//! Helpers shared by the integration tests (simulation, allocation count, robustness): key
//! material, packet builders and the specs of a small meeting. Each test binary uses a subset.
#![allow(dead_code, reason = "each test binary uses a subset of these helpers")]

use sluice_core::ids::{LegId, Pt, Ssrc, TrackId};
use sluice_core::srtp::Profile;
use sluice_core::table::{Codec, KeyMaterial, LayerSpec, LegSpec, MediaKind, PayloadSpec, SubscriptionSpec, TrackSpec};

/// Publisher payload types.
pub const PT_OPUS: u8 = 111;
pub const PT_VP8: u8 = 96;
pub const PT_VP8_RTX: u8 = 97;
/// What subscribers see.
pub const SUB_PT_OPUS: u8 = 109;
pub const SUB_PT_VP8: u8 = 100;
pub const SUB_PT_VP8_RTX: u8 = 101;

/// Deterministic key material for one direction (`dir` 0 or 1) of one leg.
pub fn material(profile: Profile, seed: u32, dir: u8) -> KeyMaterial {
    KeyMaterial::seeded(profile, seed.wrapping_mul(2) | u32::from(dir & 1))
}

/// A leg spec: `up` is what the participant sends (the SFU's rx), `down` what it receives.
pub fn leg_spec(id: u32, port: u16, up: KeyMaterial, down: KeyMaterial) -> LegSpec {
    LegSpec::new(LegId(id), port, up, down, Ssrc(0xf000_0000 + id))
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

pub fn audio_track(id: u32, publisher: u32, ssrc: u32) -> TrackSpec {
    TrackSpec {
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

pub fn subscription(subscriber: u32, track: u32, out_ssrc: u32, out_rtx: Option<u32>, layer: u8) -> SubscriptionSpec {
    SubscriptionSpec {
        subscriber: LegId(subscriber),
        track: TrackId(track),
        out_ssrc: Ssrc(out_ssrc),
        out_rtx_ssrc: out_rtx.map(Ssrc),
        pt_map: vec![(Pt(PT_OPUS), Pt(SUB_PT_OPUS)), (Pt(PT_VP8), Pt(SUB_PT_VP8)), (Pt(PT_VP8_RTX), Pt(SUB_PT_VP8_RTX))],
        ext_map: vec![],
        target_layer: layer,
        paused: false,
        priority: 0,
    }
}
