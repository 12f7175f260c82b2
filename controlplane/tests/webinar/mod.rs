//! The webinar the control plane's apply-cost test and `webinar_phases` bench program: a
//! presenter with three tracks, and viewers (a leg and a subscription to each track) added 100
//! or 10 at a time. Shared by both (the bench includes this file by path).

use sluice_controlplane::pb;
use sluice_controlplane::pb::change::Change as C;

fn keys() -> pb::KeyMaterial {
    pb::KeyMaterial { profile: pb::SrtpProfile::AeadAes128Gcm as i32, key: vec![1; 16], salt: vec![2; 12] }
}

fn leg(id: String) -> pb::Change {
    pb::Change { change: Some(C::Leg(pb::Leg { id, rx: Some(keys()), tx: Some(keys()), feedback_ssrc: 7, ..Default::default() })) }
}

fn track(id: &str, kind: pb::MediaKind, base: u32, layers: u32) -> pb::Change {
    pb::Change {
        change: Some(C::Track(pb::Track {
            id: id.into(),
            publisher_leg: "presenter".into(),
            kind: kind as i32,
            clock_rate: 90_000,
            layers: (0..layers).map(|l| pb::Layer { ssrc: Some(base + 2 * l), rtx_ssrc: None, rid: String::new() }).collect(),
            payload_types: vec![pb::PayloadType { pt: 96, codec: pb::Codec::Vp8 as i32, rtx_pt: None }],
            ..Default::default()
        })),
    }
}

/// The session "webinar" with its presenter: audio, a 3-layer camera, a screen share.
pub fn presenter() -> pb::ChangeSet {
    pb::ChangeSet {
        session: "webinar".into(),
        idempotency_key: String::new(),
        expected_revision: None,
        changes: vec![
            leg("presenter".into()),
            track("audio", pb::MediaKind::Audio, 10, 1),
            track("camera", pb::MediaKind::Video, 20, 3),
            track("screen", pb::MediaKind::Video, 40, 1),
        ],
    }
}

/// Viewers `from..from + n`: a leg and a subscription to each of the presenter's three tracks.
pub fn viewers(from: usize, n: usize) -> pb::ChangeSet {
    let mut changes = Vec::new();
    for v in from..from + n {
        let name = format!("viewer-{v}");
        changes.push(leg(name.clone()));
        for (i, t) in ["audio", "camera", "screen"].iter().enumerate() {
            changes.push(pb::Change {
                change: Some(C::Subscription(pb::Subscription {
                    subscriber_leg: name.clone(),
                    track: (*t).into(),
                    out_ssrc: 1000 + i as u32,
                    pt_map: vec![pb::IdMapping { from: 96, to: 96 }],
                    ..Default::default()
                })),
            });
        }
    }
    pb::ChangeSet { session: "webinar".into(), idempotency_key: String::new(), expected_revision: None, changes }
}
