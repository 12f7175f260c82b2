//! Node-wide parts of the desired state (issue 15 item 6): per-node quotas (a change set that
//! would take the node over its quota of sessions, legs or subscriptions is refused with
//! RESOURCE_EXHAUSTED naming the quota, and changes nothing; one that adds nothing of that kind
//! passes even over a quota, so a quota lowered at a restart never blocks the sessions already
//! there), and the port index that keeps an Apply's cost the size of its own session.

use super::fixtures::*;
use super::*;

#[test]
fn quotas_refuse_what_would_go_over_them_and_only_that() {
    let mut d = Desired::new(PortRange { start: 30_000, end: 30_099 });
    d.quotas = Quotas { sessions: 2, legs: 5, subscriptions: 3 };
    d.apply(&pair("m")).unwrap();
    d.apply(&req("n", vec![leg("x"), leg("y")])).unwrap();
    let refused = |d: &mut Desired, r: &pb::ChangeSet, quota: &str| {
        let before = d.clone();
        let e = d.apply(r).expect_err("over a quota");
        assert_eq!(e.kind, ErrorKind::ResourceExhausted, "{e:?}");
        assert!(e.message.contains(quota), "{quota} not in {e:?}");
        assert_eq!(*d, before, "a refused change set changes nothing");
    };
    refused(&mut d, &req("third", vec![leg("z")]), "max_sessions");
    // 4 legs: one more fits, two more do not.
    refused(&mut d, &req("n", vec![leg("z1"), leg("z2")]), "max_legs");
    d.apply(&req("n", vec![leg("z1")])).unwrap();
    // 2 subscriptions: one more fits, then none.
    d.apply(&req("n", vec![video("vx", "x", 300), sub("y", "vx", 3000, 0, false)])).unwrap();
    refused(&mut d, &req("n", vec![sub("z1", "vx", 3001, 0, false)]), "max_subscriptions");
    // Over a lowered quota, a change that adds no leg still passes.
    d.quotas.legs = 2;
    d.apply(&req("n", vec![sub("y", "vx", 3000, 1, false)])).unwrap();
    refused(&mut d, &req("m", vec![leg("c")]), "max_legs");
}

/// The port index follows every change (apply, upsert with a new RTCP port, move, a new worker
/// count, delete, undo), its legs per worker included, and
/// always equals one rebuilt from the sessions; a state loaded without it (a snapshot) gives
/// new legs the same ports as one with it.
#[test]
fn the_port_index_stays_in_step_with_the_sessions() {
    let mut d = Desired::new(PortRange { start: 30_000, end: 30_099 });
    d.set_placement(Placement { workers: Some(3), session_affinity_legs: 2, shared_port_base: None });
    let check = |d: &Desired| {
        let mut fresh = d.clone();
        fresh.reindex();
        assert_eq!(d.port_index.owner, fresh.port_index.owner);
        assert_eq!(d.port_index.legs, fresh.port_index.legs, "legs per worker");
        assert_eq!(d.port_index.legs.iter().sum::<u32>() as usize, d.sessions.values().map(|s| s.legs.len()).sum::<usize>());
        assert!(d.port_index.built);
    };
    d.apply(&pair("m")).unwrap();
    d.apply(&req("n", vec![leg("x"), leg("y")])).unwrap();
    check(&d);
    let mut sip = leg("x");
    if let Some(pb::change::Change::Leg(l)) = &mut sip.change {
        l.separate_rtcp = true;
    }
    d.apply(&req("n", vec![sip])).unwrap();
    check(&d);
    let before = d.clone();
    let (_, undo) = d.apply_undoable(&req("m", vec![leg("c"), leg("e")]), &BTreeSet::new()).unwrap();
    check(&d);
    d.restore(undo);
    check(&d);
    assert_eq!(d, before, "taken back");
    // A new session taken back leaves no trace either.
    let (_, undo) = d.apply_undoable(&req("fresh", vec![leg("c"), leg("e")]), &BTreeSet::new()).unwrap();
    d.restore(undo);
    check(&d);
    assert_eq!(d, before);
    assert!(!d.port_index.per_session.contains_key("fresh"));
    let (port, rtcp) = d.ports_for_move("n", "x", &BTreeSet::new()).unwrap();
    d.move_leg("n", "x", port, rtcp).unwrap();
    check(&d);
    d.set_placement(Placement { workers: Some(2), session_affinity_legs: 2, shared_port_base: None });
    check(&d);
    d.delete_session(&pb::DeleteSessionRequest { session: "n".into(), expected_revision: None }).unwrap();
    check(&d);
    // Loaded without the index: the same ports as with it.
    let mut loaded: Desired = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
    assert!(!loaded.port_index.built);
    let (a, b) = (d.apply(&req("o", vec![leg("p"), leg("q")])).unwrap(), loaded.apply(&req("o", vec![leg("p"), leg("q")])).unwrap());
    assert_eq!(a.committed.ports, b.committed.ports);
}
