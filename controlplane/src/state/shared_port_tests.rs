//! Shared ports ([`Placement::shared_ports`]): one per worker, never a leg's own; a shared leg
//! goes to the shared port of the worker the placement rule picks and counts there; one leg per
//! (shared port, remote) over every session, refused at Apply with nothing committed, freed
//! with its leg, kept by undo and by a journal replay.

use super::fixtures::*;
use super::*;
use crate::pb::change::Change as C;

const BASE: u16 = 30_000;

fn node(workers: Option<u16>, session_affinity_legs: u32, shared_port_base: Option<u16>) -> Desired {
    let mut d = Desired::new(PortRange { start: 30_000, end: 30_099 });
    d.set_placement(Placement { workers, session_affinity_legs, shared_port_base });
    d
}

/// A static-key leg on a shared port, from `remote`.
fn shared(id: &str, remote: &str) -> pb::Change {
    let mut c = leg(id);
    if let Some(C::Leg(l)) = &mut c.change {
        l.shared_port = true;
        l.remote = remote.into();
    }
    c
}

fn webrtc_shared(id: &str) -> pb::Change {
    pb::Change {
        change: Some(C::Leg(pb::Leg {
            id: id.into(),
            shared_port: true,
            webrtc: Some(pb::WebRtc {
                remote_ice_ufrag: format!("ufrag{id}"),
                remote_ice_pwd: "p".repeat(22),
                remote_fingerprint: format!("sha-256 {}", vec!["AB"; 32].join(":")),
                setup: pb::DtlsSetup::Passive as i32,
            }),
            ..Default::default()
        })),
    }
}

fn remove_leg(id: &str) -> pb::Change {
    pb::Change { change: Some(C::RemoveLeg(id.into())) }
}

fn ports(d: &mut Desired, r: &pb::ChangeSet) -> Vec<u16> {
    d.apply(r).unwrap_or_else(|e| panic!("{e}")).committed.ports.into_iter().map(|(_, p)| p).collect()
}

/// A refusal naming `field` with `kind`, changing nothing.
fn refused(d: &mut Desired, r: &pb::ChangeSet, kind: ErrorKind, field: &str) -> StateError {
    let before = d.clone();
    let e = d.apply(r).expect_err("must be refused");
    assert_eq!((e.kind, e.field.as_str()), (kind, field), "{e}");
    assert_eq!(*d, before, "a refused change set changes nothing");
    e
}

#[test]
fn shared_legs_get_their_workers_shared_port_and_count_towards_it() {
    let mut d = node(Some(2), 3, Some(BASE));
    assert_eq!(d.placement().shared_ports(), 30_000..=30_001);
    // Session m starts on worker 0: its shared legs get 30_000, its own-port legs skip both
    // shared ports.
    let m = ports(&mut d, &req("m", vec![shared("a", "10.0.0.1:5000"), leg("b"), shared("c", "10.0.0.2:5000")]));
    assert_eq!(m, vec![30_000, 30_002, 30_000]);
    // Worker 0 holds three legs (two on the shared port): the next session goes to worker 1.
    let n = ports(&mut d, &req("n", vec![shared("a", "10.0.0.1:5000"), leg("b")]));
    assert_eq!(n, vec![30_001, 30_003], "the same remote on another worker's shared port is another (port, remote)");
    // m has reached session_affinity_legs (3): new legs go to the worker with the fewest of its
    // legs (1), shared or not.
    let m = ports(&mut d, &req("m", vec![shared("d", "10.0.0.3:5000"), leg("e")]));
    assert_eq!(m, vec![30_001, 30_005]);
    assert!(d.sessions["m"].legs["d"].shared_port);
    // One worker (or none known): one shared port, the base, never a leg's own.
    let mut d = node(None, 3, Some(30_004));
    let p = ports(&mut d, &req("m", (0..6).map(|i| leg(&format!("l{i}"))).chain([shared("s", "10.0.0.1:1")]).collect()));
    assert_eq!(p, vec![30_000, 30_001, 30_002, 30_003, 30_005, 30_006, 30_004]);
    // The view shows the flag; keys stay out.
    let view = d.session_view("m", &EdgeInfo::default()).unwrap();
    let s = view.legs.iter().find(|l| l.id == "s").unwrap();
    assert!(s.shared_port && s.local_port == 30_004 && s.remote == "10.0.0.1:1");
    assert!(!view.legs.iter().find(|l| l.id == "l0").unwrap().shared_port);
    // The compiled spec says it to the dataplane.
    assert!(d.tables().legs.values().any(|l| l.shared_port && l.local_port == 30_004));
}

#[test]
fn a_shared_leg_needs_shared_ports_and_a_remote_unless_webrtc() {
    let mut d = node(Some(2), 64, None);
    let e = refused(&mut d, &req("m", vec![shared("a", "10.0.0.1:5000")]), ErrorKind::FailedPrecondition, "changes[0].leg.shared_port");
    assert!(e.message.contains("shared_port_base"), "{e}");
    let mut d = node(Some(2), 64, Some(BASE));
    refused(&mut d, &req("m", vec![leg("x"), shared("a", "")]), ErrorKind::InvalidArgument, "changes[1].leg.remote");
    let mut rtcp = shared("a", "10.0.0.1:5000");
    if let Some(C::Leg(l)) = &mut rtcp.change {
        l.separate_rtcp = true;
    }
    refused(&mut d, &req("m", vec![rtcp]), ErrorKind::InvalidArgument, "changes[0].leg.separate_rtcp");
    // A WebRTC leg is found by its ICE username: no remote needed.
    assert_eq!(ports(&mut d, &req("m", vec![webrtc_shared("w1"), webrtc_shared("w2"), leg("own")])), vec![30_000, 30_000, 30_002]);
    // A leg keeps the kind of port it was created with.
    refused(&mut d, &req("m", vec![shared("own", "10.0.0.1:5000")]), ErrorKind::InvalidArgument, "changes[0].leg.shared_port");
    let mut own = webrtc_shared("w1");
    if let Some(C::Leg(l)) = &mut own.change {
        l.shared_port = false;
    }
    refused(&mut d, &req("m", vec![own]), ErrorKind::InvalidArgument, "changes[0].leg.shared_port");
    // A shared leg cannot be moved off its port.
    assert_eq!(d.ports_for_move("m", "w1", &BTreeSet::new()).unwrap_err().kind, ErrorKind::FailedPrecondition);
    assert_eq!(d.move_leg("m", "w1", 30_050, None).unwrap_err().kind, ErrorKind::FailedPrecondition);
}

#[test]
fn a_remote_is_one_legs_per_shared_port_across_sessions() {
    let mut d = node(None, 64, Some(BASE));
    let r = "192.0.2.7:4000";
    // Two in one change set.
    let e = refused(&mut d, &req("m", vec![shared("a", r), shared("b", r)]), ErrorKind::InvalidArgument, "changes[1].leg.remote");
    assert!(e.message.contains(r) && e.message.contains("\"a\""), "{e}");
    // Nothing of the refused change set stayed in the index: another session may take it.
    d.apply(&req("n", vec![shared("x", r)])).unwrap();
    // Against another session, and against the session's own other leg.
    let e = refused(&mut d, &req("m", vec![shared("a", r)]), ErrorKind::InvalidArgument, "changes[0].leg.remote");
    assert!(e.message.contains("\"x\"") && e.message.contains("\"n\""), "{e}");
    d.apply(&req("n", vec![shared("y", "192.0.2.7:4001")])).unwrap();
    refused(&mut d, &req("n", vec![shared("y", r)]), ErrorKind::InvalidArgument, "changes[0].leg.remote");
    // Upserting the leg with its own remote is fine; so is moving it to a free one.
    d.apply(&req("n", vec![shared("x", r)])).unwrap();
    d.apply(&req("n", vec![shared("x", "192.0.2.7:4002")])).unwrap();
    d.apply(&req("m", vec![shared("a", r)])).unwrap();
    // Removing a leg frees its remote, in the same change set too.
    d.apply(&req("m", vec![remove_leg("a"), shared("b", r)])).unwrap();
    d.delete_session(&pb::DeleteSessionRequest { session: "m".into(), expected_revision: None }).unwrap();
    d.apply(&req("n", vec![shared("z", r)])).unwrap();
    // A refused change set that freed a remote and took it again gives it back to its leg:
    // the undo log restores the index.
    let bad = req("n", vec![remove_leg("z"), shared("w", r), sub("w", "nope", 5, 0, false)]);
    refused(&mut d, &bad, ErrorKind::NotFound, "changes[2].subscription.track");
    refused(&mut d, &req("m", vec![shared("q", r)]), ErrorKind::InvalidArgument, "changes[0].leg.remote");
    // And so does restoring a committed change set (a journal write that failed).
    let (_, undo) = d.apply_undoable(&req("m", vec![shared("q", "192.0.2.9:1")]), &BTreeSet::new()).unwrap();
    d.restore(undo);
    d.apply(&req("k", vec![shared("q", "192.0.2.9:1")])).unwrap();
    assert!(!d.sessions.contains_key("m"));
}

/// A state rebuilt from its change sets (a journal replay), or loaded from a snapshot, has the
/// same ports and refuses the same duplicates.
#[test]
fn a_replay_gives_the_same_shared_ports_and_index() {
    let changes = [
        req("m", vec![shared("a", "10.0.0.1:1"), leg("b"), shared("c", "10.0.0.2:1")]),
        req("n", vec![shared("a", "10.0.0.1:1"), webrtc_shared("w")]),
        req("m", vec![remove_leg("c"), shared("d", "10.0.0.3:1"), shared("e", "10.0.0.4:1")]),
    ];
    let mut d = node(Some(2), 2, Some(BASE));
    for r in &changes {
        d.apply(r).unwrap();
    }
    let mut again = node(Some(2), 2, Some(BASE));
    for r in &changes {
        again.apply(r).unwrap();
    }
    assert_eq!(again, d);
    assert_eq!(again.tables(), d.tables());
    let port = d.sessions["m"].legs["d"].local_port;
    assert!(d.placement().shared_ports().contains(&port));
    // A snapshot (no index) rebuilds it at its first change.
    let mut loaded: Desired = serde_json::from_slice(&serde_json::to_vec(&d).unwrap()).unwrap();
    assert_eq!(loaded, d);
    assert_eq!(loaded.placement(), d.placement());
    // k's first leg goes to worker 0 (the fewest legs), whose shared port m's leg a has with
    // this remote.
    assert_eq!(d.sessions["m"].legs["a"].local_port, 30_000);
    let e = refused(&mut loaded, &req("k", vec![shared("x", "10.0.0.1:1")]), ErrorKind::InvalidArgument, "changes[0].leg.remote");
    assert!(e.message.contains("session \"m\""), "{e}");
    assert_eq!(ports(&mut loaded, &req("k", vec![shared("x", "10.0.0.3:1")])), vec![30_000], "d has that remote on worker 1's");
    // Without shared ports configured, the same change sets are refused.
    let mut none = node(Some(2), 2, None);
    assert_eq!(none.apply(&changes[0]).unwrap_err().field, "changes[0].leg.shared_port");
}
