//! Recording taps in the desired state: the tap's subscriptions follow the session's tracks,
//! their SSRCs are numbered deterministically and shown, what contradicts a tap is refused with
//! the field named, plain RTP needs its opt-in and a private remote, and a restart (journal
//! replay, snapshot) keeps it all.

use super::fixtures::*;
use super::*;
use crate::pb::change::Change as C;

fn node() -> Desired {
    Desired::new(PortRange { start: 30_000, end: 30_099 })
}

/// A recording tap leg numbering from `base`: SRTP keys, or with `plain` plain RTP to `remote`.
fn tap_leg(id: &str, base: u32, plain: bool, remote: &str) -> pb::Change {
    let mut c = leg(id);
    if let Some(C::Leg(l)) = &mut c.change {
        l.tap = Some(pb::RecordingTap { ssrc_base: base, streams: Vec::new() });
        l.remote = remote.into();
        if plain {
            (l.rx, l.tx, l.plain_rtp) = (None, None, true);
        }
    }
    c
}

fn remove_track(name: &str) -> pb::Change {
    pb::Change { change: Some(C::RemoveTrack(name.into())) }
}

fn remove_leg(name: &str) -> pb::Change {
    pb::Change { change: Some(C::RemoveLeg(name.into())) }
}

/// The tap's streams as (track, out-SSRC), by track id.
fn streams(d: &Desired, session: &str, tap: &str) -> Vec<(String, u32)> {
    d.sessions[session].tap_streams(tap).into_iter().map(|s| (s.track, s.out_ssrc)).collect()
}

fn refuse(d: &mut Desired, r: &pb::ChangeSet) -> StateError {
    let before = d.clone();
    let e = d.apply(r).expect_err("must be refused");
    assert_eq!(*d, before, "a refused change set changes nothing");
    e
}

/// A tap made in a session with tracks subscribes to each (in the order of their ids, SSRCs from
/// its base), tracks added later join with the next SSRC, removed tracks (and a removed
/// publisher's) leave, an SSRC is never given twice, and the dataplane gets exactly these
/// subscriptions: audio and video, video at its top layer, payload types unmapped, no RTX, no
/// header extensions.
#[test]
fn a_taps_subscriptions_follow_the_sessions_tracks() {
    let mut d = node();
    d.apply(&pair("m")).unwrap();
    let out = d.apply(&req("m", vec![tap_leg("rec", 5000, false, "")])).unwrap();
    assert_eq!(out.committed.ports.len(), 1);
    assert_eq!(streams(&d, "m", "rec"), vec![("va".into(), 5000), ("vb".into(), 5001)]);
    let s = &d.sessions["m"];
    let (rec, va) = (s.legs["rec"].id, s.tracks["va"].spec.id);
    let spec = d.tables().subs[&(rec, va)].clone();
    assert_eq!(
        spec,
        SubscriptionSpec {
            subscriber: rec,
            track: va,
            out_ssrc: Ssrc(5000),
            out_rtx_ssrc: None,
            pt_map: vec![(Pt(96), Pt(96))],
            ext_map: vec![],
            target_layer: 2,
            paused: false,
            priority: 0,
            max_spatial: None,
            max_temporal: None,
            relay: Vec::new(),
        }
    );

    // Later tracks, audio and video, join; the tap's own subscriptions are in the session's.
    d.apply(&req("m", vec![audio("xa", "a", 700, Some(1)), leg("c"), video("vc", "c", 300)])).unwrap();
    assert_eq!(streams(&d, "m", "rec"), vec![("va".into(), 5000), ("vb".into(), 5001), ("xa".into(), 5002), ("vc".into(), 5003)]);
    let xa = d.sessions["m"].tracks["xa"].spec.id;
    assert_eq!(d.tables().subs[&(rec, xa)].pt_map, vec![(Pt(111), Pt(111))]);
    assert_eq!(d.tables().subs[&(rec, xa)].target_layer, 0);
    let view = d.session_view("m", &EdgeInfo::default()).unwrap();
    let shown = view.legs.iter().find(|l| l.id == "rec").and_then(|l| l.tap.clone()).unwrap();
    assert_eq!(shown.ssrc_base, 5000);
    let by_track: Vec<(&str, i32, u32, u32)> = shown.streams.iter().map(|s| (s.track.as_str(), s.kind, s.out_ssrc, s.clock_rate)).collect();
    assert_eq!(
        by_track,
        vec![
            ("va", pb::MediaKind::Video as i32, 5000, 90_000),
            ("vb", pb::MediaKind::Video as i32, 5001, 90_000),
            ("xa", pb::MediaKind::Audio as i32, 5002, 48_000),
            ("vc", pb::MediaKind::Video as i32, 5003, 90_000),
        ]
    );
    assert_eq!(shown.streams[0].publisher_leg, "a");
    assert_eq!(view.subscriptions.iter().filter(|s| s.subscriber_leg == "rec").count(), 4, "GetSession lists them as subscriptions too");
    assert_eq!(d.tap_streams("m"), vec![pb::TapStreams { leg: "rec".into(), streams: shown.streams.clone() }]);

    // A track removed leaves; published again it comes back on a new SSRC.
    d.apply(&req("m", vec![remove_track("xa")])).unwrap();
    assert!(!d.tables().subs.contains_key(&(rec, xa)));
    d.apply(&req("m", vec![audio("xa", "a", 700, Some(1))])).unwrap();
    assert_eq!(streams(&d, "m", "rec").iter().find(|(t, _)| t == "xa").map(|(_, s)| *s), Some(5004));
    // A publisher removed takes its tracks out of the tap.
    d.apply(&req("m", vec![remove_leg("c")])).unwrap();
    assert_eq!(streams(&d, "m", "rec"), vec![("va".into(), 5000), ("vb".into(), 5001), ("xa".into(), 5004)]);
    // A track's layers change: the tap's target follows its top layer, its SSRC stays.
    let mut one = video("va", "a", 100);
    if let Some(C::Track(t)) = &mut one.change {
        t.layers.truncate(2);
    }
    d.apply(&req("m", vec![one])).unwrap();
    assert_eq!(d.tables().subs[&(rec, va)].target_layer, 1);
    assert_eq!(d.tables().subs[&(rec, va)].out_ssrc, Ssrc(5000));
    // Upserting the tap again changes nothing; a new base renumbers; no tap, no subscriptions.
    let before = d.tables();
    d.apply(&req("m", vec![tap_leg("rec", 5000, false, "")])).unwrap();
    assert_eq!(d.tables(), before);
    d.apply(&req("m", vec![tap_leg("rec", 0, false, "")])).unwrap();
    assert_eq!(
        streams(&d, "m", "rec"),
        vec![("va".into(), DEFAULT_TAP_SSRC_BASE), ("vb".into(), DEFAULT_TAP_SSRC_BASE + 1), ("xa".into(), DEFAULT_TAP_SSRC_BASE + 2)]
    );
    d.apply(&req("m", vec![leg("rec")])).unwrap();
    assert!(d.tables().subs.keys().all(|(l, _)| *l != rec), "an ended tap has no subscriptions");
    assert!(d.sessions["m"].taps.is_empty());
    assert!(d.tap_streams("m").is_empty());
    // The other legs' subscriptions were never touched.
    assert_eq!(d.sessions["m"].subs["a"].len() + d.sessions["m"].subs["b"].len(), 2);
}

/// Two taps in a session each get every track; a change set that makes a tap and adds a track
/// in either order gives the same result; base + k wraps past 0 without using it.
#[test]
fn taps_are_deterministic_whatever_the_order_and_skip_ssrc_0() {
    let mut one = node();
    one.apply(&req("m", vec![leg("a"), tap_leg("rec", u32::MAX, false, ""), video("v", "a", 100), audio("x", "a", 7, None)])).unwrap();
    let mut two = node();
    two.apply(&req("m", vec![leg("a"), video("v", "a", 100), audio("x", "a", 7, None), tap_leg("rec", u32::MAX, false, "")])).unwrap();
    assert_eq!(streams(&one, "m", "rec"), vec![("v".into(), u32::MAX), ("x".into(), 1)]);
    assert_eq!(streams(&one, "m", "rec"), streams(&two, "m", "rec"));
    one.apply(&req("m", vec![tap_leg("rec2", 9, false, "")])).unwrap();
    assert_eq!(streams(&one, "m", "rec2"), vec![("v".into(), 9), ("x".into(), 10)]);
    assert_eq!(one.tap_streams("m").len(), 2);
    // A tap does not get another tap (it publishes nothing), nor do its subscriptions clash.
    assert_eq!(one.sessions["m"].subs["rec"].len(), 2);
}

/// What contradicts a tap, and plain RTP without its conditions, is refused naming the field,
/// and nothing changes.
#[test]
fn what_contradicts_a_tap_or_plain_rtp_is_refused_with_the_field_named() {
    let mut d = node();
    d.apply(&pair("m")).unwrap();
    d.apply(&req("m", vec![tap_leg("rec", 5000, false, "")])).unwrap();
    let with = |mut c: pb::Change, edit: fn(&mut pb::Leg)| {
        if let Some(C::Leg(l)) = &mut c.change {
            edit(l);
        }
        c
    };
    let slotted =
        |c| with(c, |l| l.audio_slots = Some(pb::AudioSlots { out_ssrcs: vec![9], pt_map: vec![pb::IdMapping { from: 111, to: 111 }], ext_map: vec![] }));
    let cases: Vec<(pb::ChangeSet, &str, &str)> = vec![
        // Plain RTP: to a public address, without the opt-in, without a tap, with keys, without
        // a remote, on a WebRTC leg, RTCP to a public address.
        (req("m", vec![tap_leg("p", 0, true, "8.8.8.8:5000")]), "changes[0].leg.remote", "8.8.8.8 is none of those"),
        (req("m", vec![tap_leg("p", 0, true, "[2001:db8::1]:5000")]), "changes[0].leg.remote", "loopback, private"),
        (req("m", vec![with(tap_leg("p", 0, false, "127.0.0.1:5000"), |l| (l.rx, l.tx) = (None, None))]), "changes[0].leg.tx", "explicit opt-in plain_rtp"),
        (
            req("m", vec![with(leg("p"), |l| (l.rx, l.tx, l.plain_rtp, l.remote) = (None, None, true, "127.0.0.1:5000".into()))]),
            "changes[0].leg.plain_rtp",
            "only a recording tap",
        ),
        (req("m", vec![with(tap_leg("p", 0, false, "127.0.0.1:5000"), |l| l.plain_rtp = true)]), "changes[0].leg.rx", "takes no keys"),
        (req("m", vec![tap_leg("p", 0, true, "")]), "changes[0].leg.remote", "needs its remote"),
        (
            req("m", vec![with(tap_leg("p", 0, true, "127.0.0.1:5000"), |l| (l.separate_rtcp, l.rtcp_remote) = (true, "1.1.1.1:5001".into()))]),
            "changes[0].leg.rtcp_remote",
            "1.1.1.1 is none of those",
        ),
        // Subscriptions of a tap, named in any order, in the same change set or later.
        (req("m", vec![tap_leg("t2", 0, false, ""), sub("t2", "va", 77, 0, false)]), "changes[1].subscription.subscriber_leg", "recording tap"),
        (
            req("m", vec![leg("t2"), sub("t2", "va", 77, 0, false), tap_leg("t2", 0, false, "")]),
            "changes[1].subscription.subscriber_leg",
            "changes[2].leg makes",
        ),
        (req("m", vec![sub("rec", "va", 77, 0, false)]), "changes[0].subscription.subscriber_leg", "recording tap"),
        (
            req("m", vec![pb::Change { change: Some(C::RemoveSubscription(pb::SubscriptionKey { subscriber_leg: "rec".into(), track: "va".into() })) }]),
            "changes[0].remove_subscription.subscriber_leg",
            "recording tap",
        ),
        // A tap publishes nothing, has no slots; a leg with subscriptions of its own is not one.
        (req("m", vec![audio("xr", "rec", 900, None)]), "changes[0].track.publisher_leg", "publishes nothing"),
        (req("m", vec![tap_leg("a", 0, false, "")]), "changes[0].leg.tap", "publishes track"),
        (req("m", vec![leg("c"), sub("c", "va", 77, 0, false)]), "", ""),
        (req("m", vec![slotted(tap_leg("t3", 0, false, ""))]), "changes[0].leg.audio_slots", "no audio slots"),
    ];
    for (r, field, why) in cases {
        if field.is_empty() {
            d.apply(&r).unwrap();
            continue;
        }
        let e = refuse(&mut d, &r);
        assert_eq!((e.kind, e.field.as_str()), (ErrorKind::InvalidArgument, field), "{e}");
        assert!(e.message.contains(why), "{e}");
    }
    let e = refuse(&mut d, &req("m", vec![tap_leg("c", 0, false, "")]));
    assert_eq!(e.field, "changes[0].leg.tap", "{e}");
    assert!(e.message.contains("1 subscription(s) of its own"), "{e}");
    // Removing them first, in the same change set, is fine.
    let drop_sub = pb::Change { change: Some(C::RemoveSubscription(pb::SubscriptionKey { subscriber_leg: "c".into(), track: "va".into() })) };
    d.apply(&req("m", vec![drop_sub, tap_leg("c", 100, false, "")])).unwrap();
    assert_eq!(streams(&d, "m", "c").len(), 2);

    // Plain RTP with everything it needs: loopback, RFC 1918, RFC 4193, link-local.
    for (i, remote) in ["127.0.0.1:5000", "10.1.2.3:5000", "[fd00::5]:5000", "169.254.9.9:5000"].into_iter().enumerate() {
        d.apply(&req("m", vec![tap_leg(&format!("plain{i}"), 0, true, remote)])).unwrap_or_else(|e| panic!("{remote}: {e}"));
    }
    let spec = d.sessions["m"].legs["plain0"].clone();
    assert!(spec.plain_rtp);
    assert!(d.tables().legs[&spec.id].plain_rtp, "the dataplane gets the flag");
    let view = d.session_view("m", &EdgeInfo::default()).unwrap();
    let l = view.legs.iter().find(|l| l.id == "plain0").unwrap();
    assert!(l.plain_rtp && l.rx.is_none() && l.tx.is_none() && l.tap.as_ref().is_some_and(|t| t.streams.len() == 2));
}

/// A restart keeps the taps: the journal's replay and a snapshot rebuild the same state, and the
/// tap's numbering goes on from where it was (the next track gets the next SSRC, not a reused
/// one).
#[test]
fn a_restart_keeps_the_tap_and_its_numbering() {
    use crate::journal::{Journal, Record};
    let dir = std::env::temp_dir().join(format!("sluice-tap-journal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ports = PortRange { start: 30_000, end: 30_099 };
    let (mut j, mut desired, _) = Journal::open(&dir, ports).unwrap();
    for r in
        [pair("m"), req("m", vec![tap_leg("rec", 40, true, "127.0.0.1:6000")]), req("m", vec![audio("xa", "a", 700, None)]), req("m", vec![remove_track("xa")])]
    {
        let r = Record::Apply(r);
        r.replay(&mut desired).unwrap();
        j.append(&r).unwrap();
    }
    drop(j);
    let (mut j, replayed, info) = Journal::open(&dir, ports).unwrap();
    assert_eq!(info.replayed, 4);
    assert_eq!(replayed, desired);
    assert_eq!(replayed.tables(), desired.tables());
    // Through a snapshot too.
    j.compact(&replayed).unwrap();
    drop(j);
    let (_, mut restored, info) = Journal::open(&dir, ports).unwrap();
    assert_eq!(info.replayed, 0);
    assert_eq!(restored, desired);
    restored.apply(&req("m", vec![audio("xb", "b", 800, None)])).unwrap();
    assert_eq!(streams(&restored, "m", "rec"), vec![("va".into(), 40), ("vb".into(), 41), ("xb".into(), 43)], "42 went to xa, which left");
    let _ = std::fs::remove_dir_all(&dir);
}
