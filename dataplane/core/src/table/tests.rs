//! Table tests beyond the pipeline ones in `forward::tests`: snapshots and state preservation.

use super::*;
use crate::srtp::Profile;

fn leg(n: u32) -> LegSpec {
    LegSpec::new(
        LegId(n),
        30_000 + n as u16,
        KeyMaterial::seeded(Profile::AesCm128HmacSha1_80, 1),
        KeyMaterial::seeded(Profile::AesCm128HmacSha1_80, 2),
        Ssrc(n),
    )
}

fn track(id: u32, publisher: u32, ssrc: u32) -> TrackSpec {
    TrackSpec {
        dd_ext: None,
        id: TrackId(id),
        publisher: LegId(publisher),
        kind: MediaKind::Video,
        clock_rate: 90_000,
        layers: vec![LayerSpec { ssrc: Some(Ssrc(ssrc)), rtx_ssrc: None, rid: None }],
        payload_types: vec![PayloadSpec { pt: Pt(96), codec: Codec::Vp8, rtx_pt: None }],
        rid_ext: None,
        repaired_rid_ext: None,
        mid: None,
        audio_level_ext: None,
        speaker_group: None,
    }
}

fn sub(subscriber: u32, track: u32, out: u32) -> SubscriptionSpec {
    SubscriptionSpec {
        max_temporal: None,
        max_spatial: None,
        subscriber: LegId(subscriber),
        track: TrackId(track),
        out_ssrc: Ssrc(out),
        out_rtx_ssrc: None,
        pt_map: vec![(Pt(96), Pt(96))],
        ext_map: vec![(3, 5)],
        target_layer: 0,
        paused: false,
        priority: 0,
        relay: Vec::new(),
    }
}

fn delta(g: u64, ops: Vec<Op>) -> Delta {
    Delta { generation: Generation(g), replace_all: false, ops }
}

#[test]
fn snapshot_round_trips_and_replace_all_removes_the_rest() {
    let mut t = Tables::new(TableConfig::default());
    t.apply(delta(
        1,
        vec![
            Op::UpsertLeg(leg(1)),
            Op::UpsertLeg(leg(2)),
            Op::UpsertLeg(leg(3)),
            Op::UpsertTrack(track(10, 1, 0xaa)),
            Op::UpsertSubscription(sub(2, 10, 0x22)),
            Op::UpsertSubscription(sub(3, 10, 0x33)),
        ],
    ))
    .unwrap();
    let snap = t.snapshot();
    let mut copy = Tables::new(TableConfig::default());
    copy.apply(snap.clone()).unwrap();
    assert_eq!(copy.snapshot(), snap);
    // A full snapshot without leg 3 removes it and its subscription, keeps the rest.
    let mut smaller = snap.clone();
    smaller.generation = Generation(7);
    smaller.ops.retain(|op| !matches!(op, Op::UpsertLeg(l) if l.id == LegId(3)) && !matches!(op, Op::UpsertSubscription(s) if s.subscriber == LegId(3)));
    t.apply(smaller).unwrap();
    assert_eq!(t.generation(), Generation(7));
    assert_eq!(t.counts(), (2, 1, 1));
}

#[test]
fn upserts_keep_runtime_state() {
    let mut t = Tables::new(TableConfig::default());
    t.apply(delta(1, vec![Op::UpsertLeg(leg(1)), Op::UpsertLeg(leg(2)), Op::UpsertTrack(track(10, 1, 0xaa)), Op::UpsertSubscription(sub(2, 10, 0x22))]))
        .unwrap();
    {
        let s = &mut t.track_mut(TrackId(10)).unwrap().subs[0];
        s.packets_sent = 42;
        s.current_layer = Some(0);
    }
    let mut paused = sub(2, 10, 0x22);
    paused.paused = true;
    t.apply(delta(2, vec![Op::UpsertSubscription(paused)])).unwrap();
    let s = &t.track(TrackId(10)).unwrap().subs[0];
    assert!(s.paused);
    assert_eq!((s.packets_sent, s.current_layer), (42, Some(0)), "state kept across a settings change");
    // A new out-SSRC is a new stream: state restarts.
    t.apply(delta(3, vec![Op::UpsertSubscription(sub(2, 10, 0x23))])).unwrap();
    let s = &t.track(TrackId(10)).unwrap().subs[0];
    assert_eq!((s.packets_sent, s.current_layer), (0, None));
    assert_eq!(t.leg(LegId(2)).unwrap().egress, vec![(Ssrc(0x23), TrackId(10))]);
}

/// A refused delta takes back the subscriptions it changed one by one (a track's list is no
/// longer saved whole for every subscription upsert): a subscription pushed is gone, one
/// updated in place or replaced by a new stream has its runtime state back, and the ones the
/// delta did not touch are untouched, in order.
#[test]
fn a_refused_delta_takes_back_each_subscription_it_changed() {
    let mut t = Tables::new(TableConfig::default());
    let legs: Vec<Op> = (1..=5).map(|n| Op::UpsertLeg(leg(n))).collect();
    t.apply(delta(
        1,
        [legs, vec![Op::UpsertTrack(track(10, 1, 0xaa)), Op::UpsertSubscription(sub(2, 10, 0x22)), Op::UpsertSubscription(sub(3, 10, 0x33))]].concat(),
    ))
    .unwrap();
    for (i, s) in t.track_mut(TrackId(10)).unwrap().subs.iter_mut().enumerate() {
        s.packets_sent = 100 + i as u32;
        s.current_layer = Some(0);
    }
    let before = t.snapshot();
    let state = |t: &Tables| {
        t.track(TrackId(10)).unwrap().subs.iter().map(|s| (s.subscriber, s.out_ssrc, s.paused, s.packets_sent, s.current_layer)).collect::<Vec<_>>()
    };
    let was = state(&t);
    let mut paused = sub(2, 10, 0x22);
    paused.paused = true;
    // Each subscription is where the index says.
    let indexed = |t: &Tables| {
        let tr = t.track(TrackId(10)).unwrap();
        tr.sub_pos.len() == tr.subs.len() && tr.subs.iter().enumerate().all(|(i, s)| tr.sub_index(s.subscriber) == Some(i))
    };
    let refused = t.apply(delta(
        2,
        vec![
            // Updated in place, replaced by a new stream, pushed, removed (the first: the last
            // takes its place), a leg removed with its subscription; then a refusal.
            Op::UpsertSubscription(paused),
            Op::UpsertSubscription(sub(3, 10, 0x34)),
            Op::UpsertSubscription(sub(4, 10, 0x44)),
            Op::RemoveSubscription { subscriber: LegId(2), track: TrackId(10) },
            Op::RemoveLeg(LegId(3)),
            Op::UpsertSubscription(sub(5, 99, 0x55)),
        ],
    ));
    assert!(matches!(refused, Err(DeltaError::UnknownTrack { op: 5, .. })), "{refused:?}");
    assert_eq!(t.snapshot(), before);
    assert_eq!(state(&t), was, "every subscription's runtime state back, in order");
    assert!(indexed(&t));
    assert_eq!(t.leg(LegId(3)).unwrap().egress, vec![(Ssrc(0x33), TrackId(10))]);
    assert!(t.leg(LegId(4)).unwrap().egress.is_empty());
    // And applied, the index follows every change.
    t.apply(delta(
        2,
        vec![
            Op::UpsertSubscription(sub(4, 10, 0x44)),
            Op::RemoveSubscription { subscriber: LegId(2), track: TrackId(10) },
            Op::UpsertSubscription(sub(5, 10, 0x55)),
        ],
    ))
    .unwrap();
    assert!(indexed(&t));
    assert_eq!(t.track(TrackId(10)).unwrap().subs.iter().map(|s| s.subscriber.0).collect::<Vec<_>>(), vec![4, 3, 5]);
}

#[test]
fn validation_names_the_problem() {
    let mut t = Tables::new(TableConfig::default());
    t.apply(delta(1, vec![Op::UpsertLeg(leg(1)), Op::UpsertLeg(leg(2)), Op::UpsertTrack(track(10, 1, 0xaa))])).unwrap();
    let cases: Vec<(Op, &str)> = vec![
        (Op::UpsertTrack(track(11, 1, 0xaa)), "DuplicateSsrc"),
        (Op::UpsertTrack(track(11, 9, 0xbb)), "UnknownLeg"),
        (Op::UpsertSubscription(sub(2, 99, 1)), "UnknownTrack"),
        (Op::UpsertSubscription(sub(1, 10, 1)), "SelfSubscription"),
        (Op::RemoveSubscription { subscriber: LegId(2), track: TrackId(10) }, "UnknownSubscription"),
        (Op::UpsertSubscription(SubscriptionSpec { ext_map: vec![(0, 1)], ..sub(2, 10, 1) }), "subscription.ext_map"),
        (Op::UpsertSubscription(SubscriptionSpec { pt_map: vec![], ..sub(2, 10, 1) }), "subscription.pt_map"),
        (Op::UpsertTrack(TrackSpec { clock_rate: 0, ..track(12, 1, 0xcc) }), "track.clock_rate"),
        (Op::UpsertTrack(TrackSpec { layers: vec![], ..track(12, 1, 0xcc) }), "track.layers"),
    ];
    for (op, want) in cases {
        let err = t.apply(delta(2, vec![op.clone()])).unwrap_err();
        let text = format!("{err:?} {err}");
        assert!(text.contains(want), "{op:?}: {text}");
    }
    assert_eq!(t.generation(), Generation(1));
    assert_eq!(t.counts(), (2, 1, 0));
}

#[test]
fn subscription_state_is_small() {
    // Everything a subscription costs on the packet path: the compiled spec, the rewriter and
    // its SRTP/SRTCP send state (the keys belong to the subscriber's leg, shared by all its
    // subscriptions). Printed so the number in the docs can be checked: `--nocapture`.
    let size = size_of::<Subscription>();
    println!("Subscription: {size} bytes");
    assert!(size <= 512, "Subscription is {size} bytes");
}

#[test]
fn leg_state_is_small() {
    // A leg is held by every worker's tables, so a webinar pays it per viewer per worker: its
    // SRTP state inline is a few pointers (the AES-CM cipher state boxed, the AEAD contexts on
    // aws-lc's heap), not the ~600-byte CM state four times over (3,584 bytes before).
    // `--nocapture` prints it for the docs.
    let size = size_of::<Leg>();
    println!("Leg: {size} bytes");
    assert!(size <= 1280, "Leg is {size} bytes");
}

/// The checks the control plane runs before it accepts a change are exactly the ones `apply`
/// makes: every spec `validate` refuses, `apply` refuses with the same field and reason (and
/// rolls back), and what `validate` accepts gets past them.
#[test]
fn apply_refuses_what_validate_refuses_with_the_same_field() {
    let base = || {
        let mut t = Tables::new(TableConfig::default());
        t.apply(delta(1, vec![Op::UpsertLeg(leg(1)), Op::UpsertLeg(leg(2)), Op::UpsertTrack(track(10, 1, 0xaa))])).unwrap();
        t
    };
    let mut bad_subs: Vec<SubscriptionSpec> = Vec::new();
    for edit in [
        (|s: &mut SubscriptionSpec| s.pt_map.clear()) as fn(&mut SubscriptionSpec),
        |s| s.pt_map = (96..105).map(|p| (Pt(p), Pt(p))).collect(),
        |s| s.pt_map = vec![(Pt(96), Pt(128))],
        |s| s.ext_map = vec![(15, 1), (16, 2), (17, 3)],
        |s| s.ext_map = vec![(1, 0)],
    ] {
        let mut s = sub(2, 10, 0x22);
        edit(&mut s);
        bad_subs.push(s);
    }
    for s in bad_subs {
        let e = s.validate().expect_err("validate refuses");
        let mut t = base();
        let before = t.snapshot();
        assert_eq!(t.apply(delta(2, vec![Op::UpsertSubscription(s)])), Err(DeltaError::Invalid { op: 0, field: e.field, why: e.why }));
        assert_eq!(t.snapshot(), before);
    }
    let mut audio_two_layers = track(11, 1, 0xbb);
    audio_two_layers.kind = MediaKind::Audio;
    audio_two_layers.layers.push(LayerSpec { ssrc: Some(Ssrc(0xbc)), rtx_ssrc: None, rid: None });
    let mut no_pt = track(11, 1, 0xbb);
    no_pt.payload_types.clear();
    let audio = || TrackSpec { kind: MediaKind::Audio, ..track(11, 1, 0xbb) };
    let level_ext_15 = TrackSpec { audio_level_ext: Some(15), ..audio() };
    let level_ext_0 = TrackSpec { audio_level_ext: Some(0), ..audio() };
    let level_on_video = TrackSpec { audio_level_ext: Some(1), ..track(11, 1, 0xbb) };
    let group_without_level = TrackSpec { speaker_group: Some(crate::ids::SpeakerGroup(1)), ..audio() };
    TrackSpec { audio_level_ext: Some(14), speaker_group: Some(crate::ids::SpeakerGroup(1)), ..audio() }.validate().unwrap();
    for tr in [audio_two_layers, no_pt, level_ext_15, level_ext_0, level_on_video, group_without_level] {
        let e = tr.validate().expect_err("validate refuses");
        assert_eq!(base().apply(delta(2, vec![Op::UpsertTrack(tr)])), Err(DeltaError::Invalid { op: 0, field: e.field, why: e.why }));
    }
    let mut short_key = leg(4);
    short_key.tx.key.pop();
    let e = short_key.validate().expect_err("validate refuses");
    assert_eq!(e.field, "leg.tx");
    assert_eq!(base().apply(delta(2, vec![Op::UpsertLeg(short_key)])), Err(DeltaError::Invalid { op: 0, field: e.field, why: e.why }));
    sub(2, 10, 0x22).validate().unwrap();
    track(11, 1, 0xbb).validate().unwrap();
    leg(4).validate().unwrap();
}

/// A subscriber leg keeps the stream state of at most [`MAX_RETIRED_STREAMS`] removed
/// subscriptions, also when their track goes away, and a refused delta leaves it as it was.
#[test]
fn retired_streams_are_bounded_kept_across_track_removal_and_rolled_back() {
    let mut t = Tables::new(TableConfig::default());
    let mut ops = vec![Op::UpsertLeg(leg(1)), Op::UpsertLeg(leg(2))];
    ops.extend((0..20).map(|i| Op::UpsertTrack(track(100 + i, 1, 0x1000 + i))));
    ops.extend((0..20).map(|i| Op::UpsertSubscription(sub(2, 100 + i, 0x2000 + i))));
    t.apply(delta(1, ops)).unwrap();
    let mut remove: Vec<Op> = (0..10).map(|i| Op::RemoveSubscription { subscriber: LegId(2), track: TrackId(100 + i) }).collect();
    remove.extend((10..20).map(|i| Op::RemoveTrack(TrackId(100 + i))));
    t.apply(delta(2, remove)).unwrap();
    assert_eq!(t.leg(LegId(2)).unwrap().retired_streams(), MAX_RETIRED_STREAMS);
    // A refused delta (the second op names no track) does not take a retired stream away.
    let refused = t.apply(delta(3, vec![Op::UpsertSubscription(sub(2, 105, 0x2005)), Op::UpsertSubscription(sub(2, 999, 0x3000))]));
    assert!(matches!(refused, Err(DeltaError::UnknownTrack { op: 1, .. })), "{refused:?}");
    assert_eq!(t.leg(LegId(2)).unwrap().retired_streams(), MAX_RETIRED_STREAMS);
    t.apply(delta(3, vec![Op::UpsertSubscription(sub(2, 105, 0x2005))])).unwrap();
    assert_eq!(t.leg(LegId(2)).unwrap().retired_streams(), MAX_RETIRED_STREAMS - 1, "resumed");
    // Moving a subscription to another out-SSRC retires the old one.
    t.apply(delta(4, vec![Op::UpsertSubscription(sub(2, 105, 0x2105))])).unwrap();
    assert_eq!(t.leg(LegId(2)).unwrap().retired_streams(), MAX_RETIRED_STREAMS);
}

fn slots(ssrcs: &[u32]) -> AudioSlotsSpec {
    AudioSlotsSpec {
        group: crate::ids::SpeakerGroup(5),
        out_ssrcs: ssrcs.iter().map(|&s| Ssrc(s)).collect(),
        pt_map: vec![(Pt(111), Pt(109))],
        ext_map: vec![],
    }
}

/// Audio slots: 1 to 8 distinct out-SSRCs that no subscription of the leg uses (either way
/// round); a leg upsert with the same slots keeps their streams, another SSRC starts a new one,
/// and a refused delta leaves the slots as they were.
#[test]
fn audio_slots_are_validated_unique_and_keep_their_streams() {
    let with = |n, s: &[u32]| LegSpec { audio_slots: Some(slots(s)), ..leg(n) };
    for (bad, field) in [
        (with(2, &[]), "leg.audio_slots.out_ssrcs"),
        (with(2, &[1, 2, 3, 4, 5, 6, 7, 8, 9]), "leg.audio_slots.out_ssrcs"),
        (with(2, &[7, 7]), "leg.audio_slots.out_ssrcs"),
        (LegSpec { audio_slots: Some(AudioSlotsSpec { pt_map: vec![], ..slots(&[7]) }), ..leg(2) }, "leg.audio_slots"),
        (LegSpec { audio_slots: Some(AudioSlotsSpec { ext_map: vec![(0, 1)], ..slots(&[7]) }), ..leg(2) }, "leg.audio_slots"),
    ] {
        assert_eq!(bad.validate().map_err(|e| e.field), Err(field), "{bad:?}");
    }
    let mut t = Tables::new(TableConfig::default());
    t.apply(delta(1, vec![Op::UpsertLeg(leg(1)), Op::UpsertLeg(with(2, &[0x70, 0x71])), Op::UpsertTrack(track(10, 1, 0xaa))])).unwrap();
    // A subscription may not take a slot's SSRC, nor a slot a subscription's.
    let clash = t.apply(delta(2, vec![Op::UpsertSubscription(sub(2, 10, 0x71))]));
    assert_eq!(clash, Err(DeltaError::DuplicateSsrc { op: 0, leg: LegId(2), ssrc: Ssrc(0x71) }));
    t.apply(delta(2, vec![Op::UpsertSubscription(sub(2, 10, 0x22))])).unwrap();
    let clash = t.apply(delta(3, vec![Op::UpsertLeg(with(2, &[0x70, 0x22]))]));
    assert_eq!(clash, Err(DeltaError::DuplicateSsrc { op: 0, leg: LegId(2), ssrc: Ssrc(0x22) }));
    // The slot streams are runtime state: an unchanged upsert keeps them, a new SSRC is new.
    let sent = |t: &Tables, k: usize| t.leg(LegId(2)).unwrap().slots.as_ref().unwrap().slots[k].sub.packets_sent;
    t.legs.get_mut(&LegId(2)).unwrap().slots.as_mut().unwrap().slots[0].sub.packets_sent = 40;
    t.apply(delta(3, vec![Op::UpsertLeg(with(2, &[0x70, 0x71]))])).unwrap();
    assert_eq!(sent(&t, 0), 40);
    // A refused delta that changed the slots first leaves them as they were.
    let refused = t.apply(delta(4, vec![Op::UpsertLeg(with(2, &[0x72, 0x70])), Op::RemoveTrack(TrackId(99))]));
    assert!(refused.is_err());
    assert_eq!(sent(&t, 0), 40);
    assert_eq!(t.slot_legs.get(&crate::ids::SpeakerGroup(5)), Some(&vec![LegId(2)]));
    t.apply(delta(4, vec![Op::UpsertLeg(with(2, &[0x72, 0x70]))])).unwrap();
    assert_eq!((sent(&t, 0), sent(&t, 1)), (0, 40), "0x70 moved to the second slot with its stream");
    t.apply(delta(5, vec![Op::UpsertLeg(leg(2))])).unwrap();
    assert!(t.leg(LegId(2)).unwrap().slots.is_none());
    assert!(t.slot_legs.is_empty());
}

/// A redacted copy has no key bytes, a digest that tells keys apart (and is stable), and can
/// never be installed: applying a snapshot taken without keys is refused, naming the field.
#[test]
fn redacted_key_material_has_no_bytes_compares_by_digest_and_is_refused() {
    let (a, b) = (KeyMaterial::seeded(Profile::AesCm128HmacSha1_80, 1), KeyMaterial::seeded(Profile::AesCm128HmacSha1_80, 2));
    let ra = a.redacted();
    assert!(ra.key.is_empty() && ra.salt.is_empty() && ra.is_redacted() && !a.is_redacted());
    assert_eq!(ra, a.clone().redacted(), "stable");
    assert_eq!(ra.redacted(), ra, "redacting twice keeps the digest");
    assert_ne!(ra, b.redacted(), "other keys, another digest");
    let mut salt_differs = a.clone();
    salt_differs.salt[0] ^= 1;
    assert_ne!(ra, salt_differs.redacted(), "the salt is covered too");

    let mut snap = Delta { generation: Generation(1), replace_all: true, ops: vec![Op::UpsertLeg(leg(1))] };
    snap.redact_keys();
    let Op::UpsertLeg(l) = &snap.ops[0] else { unreachable!() };
    assert_eq!((l.rx.is_redacted(), l.tx.is_redacted()), (true, true));
    let e = l.validate().unwrap_err();
    assert_eq!(e.field, "leg.rx");
    assert!(e.why.contains("redacted"), "{e}");
}

/// A static-key leg on shared port 40_000, at remote `10.0.0.<n>:5000`.
fn shared(n: u32) -> LegSpec {
    LegSpec { local_port: 40_000, shared_port: true, remote: Some(remote(n)), ..leg(n) }
}

fn remote(n: u32) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, n as u8], 5000))
}

#[test]
fn shared_port_legs_are_found_by_their_remote() {
    let mut t = Tables::new(TableConfig::default());
    t.apply(delta(1, vec![Op::UpsertLeg(shared(1)), Op::UpsertLeg(shared(2)), Op::UpsertLeg(shared(3)), Op::UpsertLeg(leg(4))])).unwrap();
    for n in 1..=3 {
        assert_eq!(t.leg_at(40_000, remote(n)), Some(LegId(n)));
    }
    assert_eq!(t.leg_at(40_000, remote(9)), None, "a stranger has no leg");
    assert_eq!(t.leg_by_port(40_000), None, "a shared port is no one leg's");
    assert!(t.is_shared_port(40_000));
    // A per-leg port is still the leg's, whatever the source (the remote is checked after).
    assert_eq!(t.leg_at(30_004, remote(9)), Some(LegId(4)));
    let mut ports: Vec<u16> = t.ports().collect();
    ports.sort_unstable();
    assert_eq!(ports, vec![30_004, 40_000]);
    assert_eq!(t.ports_of_legs(|_| true).collect::<std::collections::BTreeSet<_>>().len(), 2);
}

#[test]
fn shared_port_refusals_name_the_field() {
    let mut t = Tables::new(TableConfig::default());
    t.apply(delta(1, vec![Op::UpsertLeg(shared(1)), Op::UpsertLeg(leg(4))])).unwrap();
    // A second leg with the same (port, remote).
    let dup = LegSpec { remote: Some(remote(1)), ..shared(2) };
    let e = t.apply(delta(2, vec![Op::UpsertLeg(dup)])).unwrap_err();
    assert_eq!(e, DeltaError::RemoteInUse { op: 0, port: 40_000, remote: remote(1), owner: LegId(1) });
    assert!(e.to_string().contains("leg.remote"), "{e}");
    // Within one delta too, and the whole delta is rolled back.
    let e = t.apply(delta(2, vec![Op::UpsertLeg(shared(5)), Op::UpsertLeg(LegSpec { remote: Some(remote(5)), ..shared(6) })])).unwrap_err();
    assert_eq!(e, DeltaError::RemoteInUse { op: 1, port: 40_000, remote: remote(5), owner: LegId(5) });
    assert_eq!(t.leg_at(40_000, remote(5)), None, "rolled back");
    assert!(t.leg(LegId(5)).is_none());
    // A static-key leg on a shared port without its remote.
    let e = t.apply(delta(2, vec![Op::UpsertLeg(LegSpec { remote: None, ..shared(7) })])).unwrap_err();
    assert!(matches!(e, DeltaError::Invalid { field: "leg.remote", .. }), "{e}");
    // A port is one leg's or shared, never both.
    let e = t.apply(delta(2, vec![Op::UpsertLeg(LegSpec { local_port: 40_000, ..leg(8) })])).unwrap_err();
    assert_eq!(e, DeltaError::PortInUse { op: 0, port: 40_000, owner: LegId(1) });
    let e = t.apply(delta(2, vec![Op::UpsertLeg(LegSpec { local_port: 30_004, ..shared(8) })])).unwrap_err();
    assert_eq!(e, DeltaError::PortInUse { op: 0, port: 30_004, owner: LegId(4) });
    // No separate RTCP port on a shared one.
    let rtcp = Some(Box::new(RtcpComponent { local_port: 40_001, remote: None }));
    let e = t.apply(delta(2, vec![Op::UpsertLeg(LegSpec { rtcp, ..shared(9) })])).unwrap_err();
    assert!(matches!(e, DeltaError::Invalid { field: "leg.rtcp", .. }), "{e}");
    assert_eq!(t.generation(), Generation(1));
    assert_eq!(t.leg_at(40_000, remote(1)), Some(LegId(1)), "unchanged by the refusals");
}

#[test]
fn a_removed_or_moved_leg_frees_its_remote() {
    let mut t = Tables::new(TableConfig::default());
    t.apply(delta(1, vec![Op::UpsertLeg(shared(1)), Op::UpsertLeg(shared(2))])).unwrap();
    t.apply(delta(2, vec![Op::RemoveLeg(LegId(1))])).unwrap();
    assert_eq!(t.leg_at(40_000, remote(1)), None);
    t.apply(delta(3, vec![Op::UpsertLeg(LegSpec { remote: Some(remote(1)), ..shared(3) })])).unwrap();
    assert_eq!(t.leg_at(40_000, remote(1)), Some(LegId(3)), "the freed remote is taken by another leg");
    // A leg given a new remote frees its old one.
    t.apply(delta(4, vec![Op::UpsertLeg(LegSpec { remote: Some(remote(20)), ..shared(2) })])).unwrap();
    assert_eq!(t.leg_at(40_000, remote(2)), None);
    assert_eq!(t.leg_at(40_000, remote(20)), Some(LegId(2)));
    // The last leg gone, the port is no longer shared (a per-leg leg may take it).
    t.apply(delta(5, vec![Op::RemoveLeg(LegId(2)), Op::RemoveLeg(LegId(3))])).unwrap();
    assert!(!t.is_shared_port(40_000));
    t.apply(delta(6, vec![Op::UpsertLeg(LegSpec { local_port: 40_000, ..leg(4) })])).unwrap();
    assert_eq!(t.leg_at(40_000, remote(9)), Some(LegId(4)));
    // A full snapshot that drops a shared leg frees its remote too.
    let mut t = Tables::new(TableConfig::default());
    t.apply(delta(1, vec![Op::UpsertLeg(shared(1)), Op::UpsertLeg(shared(2))])).unwrap();
    t.apply(Delta { generation: Generation(9), replace_all: true, ops: vec![Op::UpsertLeg(shared(2))] }).unwrap();
    assert_eq!(t.leg_at(40_000, remote(1)), None);
    assert_eq!(t.leg_at(40_000, remote(2)), Some(LegId(2)));
}

#[test]
fn set_remote_moves_a_shared_legs_entry_and_refuses_a_taken_one() {
    let mut t = Tables::new(TableConfig::default());
    let webrtc = |n: u32| LegSpec {
        remote: None,
        edge: Some(Box::new(EdgeSpec {
            local: IceCredentials { ufrag: format!("u{n}"), pwd: "p".repeat(22) },
            remote: IceCredentials { ufrag: "r".into(), pwd: String::new() },
            role: DtlsRole::Server,
            remote_fingerprint: String::new(),
        })),
        ..shared(n)
    };
    t.apply(delta(1, vec![Op::UpsertLeg(shared(1)), Op::UpsertLeg(webrtc(2))])).unwrap();
    assert_eq!(t.leg_by_ufrag(40_000, "u2"), Some(LegId(2)));
    assert_eq!(t.leg_by_ufrag(40_001, "u2"), None, "another port");
    assert_eq!(t.set_remote(LegId(2), remote(1)), Err(LegId(1)), "leg 1 has it");
    t.set_remote(LegId(2), remote(2)).unwrap();
    assert_eq!(t.leg_at(40_000, remote(2)), Some(LegId(2)));
    t.set_remote(LegId(2), remote(3)).unwrap();
    assert_eq!(t.leg_at(40_000, remote(2)), None, "ICE moved: the old remote is free");
    assert_eq!(t.leg_at(40_000, remote(3)), Some(LegId(2)));
    // The same ufrag on a second WebRTC leg of a shared port is refused.
    let e = t.apply(delta(2, vec![Op::UpsertLeg(LegSpec { edge: webrtc(2).edge, ..webrtc(4) })])).unwrap_err();
    assert!(matches!(e, DeltaError::Invalid { field: "leg.edge.local.ufrag", .. }), "{e}");
    t.apply(delta(2, vec![Op::RemoveLeg(LegId(2))])).unwrap();
    assert_eq!(t.leg_at(40_000, remote(3)), None);
    assert_eq!(t.leg_by_ufrag(40_000, "u2"), None);
}
