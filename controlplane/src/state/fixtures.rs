//! Request builders shared by the unit tests.

use crate::pb;
use crate::pb::change::Change as C;

pub fn keys() -> pb::KeyMaterial {
    pb::KeyMaterial { profile: pb::SrtpProfile::AeadAes128Gcm as i32, key: vec![1; 16], salt: vec![2; 12] }
}

pub fn leg(id: &str) -> pb::Change {
    pb::Change { change: Some(C::Leg(pb::Leg { id: id.into(), rx: Some(keys()), tx: Some(keys()), feedback_ssrc: 7, ..Default::default() })) }
}

pub fn video(id: &str, publisher: &str, base: u32) -> pb::Change {
    pb::Change {
        change: Some(C::Track(pb::Track {
            id: id.into(),
            publisher_leg: publisher.into(),
            kind: pb::MediaKind::Video as i32,
            clock_rate: 90_000,
            layers: (0..3).map(|l| pb::Layer { ssrc: Some(base + 2 * l), rtx_ssrc: Some(base + 2 * l + 1), rid: String::new() }).collect(),
            payload_types: vec![pb::PayloadType { pt: 96, codec: pb::Codec::Vp8 as i32, rtx_pt: Some(97) }],
            rid_ext: None,
            repaired_rid_ext: None,
            ..Default::default()
        })),
    }
}

/// An Opus track on SSRC `ssrc`, with the audio-level extension id `level_ext`.
pub fn audio(id: &str, publisher: &str, ssrc: u32, level_ext: Option<u32>) -> pb::Change {
    pb::Change {
        change: Some(C::Track(pb::Track {
            id: id.into(),
            publisher_leg: publisher.into(),
            kind: pb::MediaKind::Audio as i32,
            clock_rate: 48_000,
            layers: vec![pb::Layer { ssrc: Some(ssrc), ..Default::default() }],
            payload_types: vec![pb::PayloadType { pt: 111, codec: pb::Codec::Audio as i32, rtx_pt: None }],
            audio_level_ext: level_ext,
            ..Default::default()
        })),
    }
}

pub fn sub(leg: &str, track: &str, out: u32, layer: u32, paused: bool) -> pb::Change {
    pb::Change {
        change: Some(C::Subscription(pb::Subscription {
            max_temporal_layer: None,
            max_spatial_layer: None,
            subscriber_leg: leg.into(),
            track: track.into(),
            out_ssrc: out,
            out_rtx_ssrc: Some(out + 1),
            pt_map: vec![pb::IdMapping { from: 96, to: 96 }, pb::IdMapping { from: 97, to: 97 }],
            ext_map: vec![],
            target_layer: layer,
            paused,
            priority: 0,
            relay_layers: Vec::new(),
        })),
    }
}

pub fn req(session: &str, changes: Vec<pb::Change>) -> pb::ChangeSet {
    pb::ChangeSet { session: session.into(), idempotency_key: String::new(), expected_revision: None, changes }
}

/// Two legs, a video track each, each subscribed to the other's.
pub fn pair(session: &str) -> pb::ChangeSet {
    req(session, vec![leg("a"), leg("b"), video("va", "a", 100), video("vb", "b", 200), sub("a", "vb", 1000, 2, false), sub("b", "va", 2000, 0, false)])
}
