//! Port allocation by dataplane worker ([`Placement`]): a leg belongs to worker
//! `local_port % workers`, so a small session keeps its legs on one worker (the one with the
//! fewest legs node-wide when it starts), a big one spreads its new legs evenly, a full worker's
//! session gets any free port, and without a known worker count (or with one worker) the ports
//! are exactly the round-robin sequence of before.

use super::fixtures::*;
use super::*;
use crate::pb::change::Change as C;

fn node(workers: Option<u16>, session_affinity_legs: u32, end: u16) -> Desired {
    let mut d = Desired::new(PortRange { start: 30_000, end });
    d.set_placement(Placement { workers, session_affinity_legs, shared_port_base: None });
    d
}

fn legs(prefix: &str, n: usize) -> Vec<pb::Change> {
    (0..n).map(|i| leg(&format!("{prefix}{i}"))).collect()
}

/// The RTP ports a change set gave its legs, in change order.
fn ports(d: &mut Desired, r: &pb::ChangeSet) -> Vec<u16> {
    d.apply(r).unwrap_or_else(|e| panic!("{e}")).committed.ports.into_iter().map(|(_, p)| p).collect()
}

/// How many of `ports` each of `workers` workers owns.
fn per_worker(ports: &[u16], workers: u16) -> Vec<usize> {
    (0..workers).map(|w| ports.iter().filter(|&&p| p % workers == w).count()).collect()
}

fn session_ports(d: &Desired, session: &str) -> Vec<u16> {
    d.sessions[session].legs.values().map(|l| l.local_port).collect()
}

#[test]
fn five_legs_of_a_session_share_one_worker() {
    let mut d = node(Some(2), 16, 30_099);
    // One leg per change set, then five in one: each session's legs on one worker, round-robin
    // within it; the second session starts on the other worker.
    let m: Vec<u16> = (0..5).flat_map(|i| ports(&mut d, &req("m", vec![leg(&format!("l{i}"))]))).collect();
    assert_eq!(m, vec![30_000, 30_002, 30_004, 30_006, 30_008]);
    let n = ports(&mut d, &req("n", legs("l", 5)));
    assert_eq!(n, vec![30_001, 30_003, 30_005, 30_007, 30_009]);
    // Four workers: a session's legs still share one.
    let mut d = node(Some(4), 16, 30_099);
    d.apply(&req("a", legs("l", 3))).unwrap();
    let b = ports(&mut d, &req("b", legs("l", 5)));
    assert_eq!(per_worker(&b, 4), vec![0, 5, 0, 0], "{b:?}");
}

/// Each session's first leg goes to the worker with the fewest legs node-wide (ties: the lowest
/// index), so sessions alternate, and a deleted session's worker is the next one's.
#[test]
fn sessions_spread_over_the_workers_by_their_legs() {
    let mut d = node(Some(2), 16, 30_099);
    let workers: Vec<u16> = ["a", "b", "c", "d", "e", "f"].iter().map(|s| ports(&mut d, &req(s, legs("l", 2)))[0] % 2).collect();
    assert_eq!(workers, vec![0, 1, 0, 1, 0, 1]);
    for s in ["a", "c"] {
        d.delete_session(&pb::DeleteSessionRequest { session: s.into(), expected_revision: None }).unwrap();
    }
    // Worker 0 holds 2 legs, worker 1 holds 6.
    assert_eq!(ports(&mut d, &req("g", legs("l", 2)))[0] % 2, 0);
    assert_eq!(ports(&mut d, &req("h", legs("l", 1)))[0] % 2, 0);
    // Three workers, sessions of different sizes: legs are counted, not sessions.
    let mut d = node(Some(3), 16, 30_099);
    let first: Vec<u16> =
        [("s0", 2), ("s1", 1), ("s2", 1), ("s3", 1), ("s4", 1), ("s5", 1)].iter().map(|(s, n)| ports(&mut d, &req(s, legs("l", *n)))[0] % 3).collect();
    assert_eq!(first, vec![0, 1, 2, 1, 2, 0]);
}

/// A webinar: the first `session_affinity_legs` legs share a worker, then each new leg goes to
/// the worker with the fewest of the session's legs, so 1,000 legs split within one of even.
#[test]
fn a_thousand_leg_session_splits_evenly_over_the_workers() {
    for (workers, split) in [(2u16, vec![500, 500]), (3, vec![334, 333, 333])] {
        let mut d = node(Some(workers), 16, 31_999);
        let mut all = Vec::new();
        for chunk in 0..10 {
            all.extend(ports(&mut d, &req("webinar", legs(&format!("v{chunk}-"), 100))));
        }
        assert_eq!(all.len(), 1000);
        assert_eq!(per_worker(&all[..16], workers)[0], 16, "W={workers}: the first 16 share worker 0: {:?}", &all[..16]);
        assert_eq!(per_worker(&all, workers), split, "W={workers}");
        assert_eq!(session_ports(&d, "webinar").into_iter().collect::<BTreeSet<_>>().len(), 1000, "every port is the leg's own");
    }
    // A threshold of 1 spreads from the second leg on.
    let mut d = node(Some(2), 1, 30_099);
    assert_eq!(per_worker(&ports(&mut d, &req("m", legs("l", 6))), 2), vec![3, 3]);
}

/// Without a known worker count, or with one worker, the ports are the round-robin sequence of
/// before (the cursor runs on past freed ports, then wraps).
#[test]
fn unknown_or_one_worker_allocates_the_old_sequence() {
    let script = |d: &mut Desired| {
        let mut got = vec![ports(d, &req("a", legs("l", 3))), ports(d, &req("b", legs("l", 2)))];
        d.delete_session(&pb::DeleteSessionRequest { session: "a".into(), expected_revision: None }).unwrap();
        got.push(ports(d, &req("c", legs("l", 3))));
        got.push(ports(d, &req("d", legs("l", 3))));
        got.push(ports(d, &req("b", vec![leg("x")])));
        got
    };
    let old = vec![vec![30_000, 30_001, 30_002], vec![30_003, 30_004], vec![30_005, 30_006, 30_007], vec![30_008, 30_009, 30_000], vec![30_001]];
    for workers in [None, Some(0), Some(1)] {
        assert_eq!(script(&mut node(workers, 16, 30_009)), old, "workers {workers:?}");
    }
    assert_eq!(script(&mut Desired::new(PortRange { start: 30_000, end: 30_009 })), old);
    assert_ne!(script(&mut node(Some(2), 16, 30_009)), old, "two workers change the sequence");
}

/// A session whose worker has no free port left gets any free port rather than a refusal; with
/// none left at all, RESOURCE_EXHAUSTED names the field and nothing changes.
#[test]
fn a_full_worker_falls_back_to_any_free_port() {
    let mut d = node(Some(2), 16, 30_009);
    assert_eq!(ports(&mut d, &req("m", legs("l", 5))), vec![30_000, 30_002, 30_004, 30_006, 30_008]);
    assert_eq!(ports(&mut d, &req("m", vec![leg("x")])), vec![30_009], "worker 0 is full: the next free port");
    assert_eq!(ports(&mut d, &req("m", legs("y", 4))), vec![30_001, 30_003, 30_005, 30_007]);
    let before = d.clone();
    let e = d.apply(&req("m", vec![leg("z")])).expect_err("no port left");
    assert_eq!((e.kind, e.field.as_str()), (ErrorKind::ResourceExhausted, "changes[0].leg"), "{e}");
    assert!(e.message.contains("all 10 ports"), "{e}");
    assert_eq!(d, before);
}

/// A leg without rtcp-mux keeps RTP port + 1 for RTCP, on the other worker's number: the
/// dataplane opens a leg's RTCP port on the worker owning its RTP port, whatever its number.
/// The RTCP port is taken, but not counted as a leg of its number's worker.
#[test]
fn a_separate_rtcp_port_is_the_rtp_port_plus_one_whatever_its_worker() {
    let mut d = node(Some(2), 16, 30_099);
    let mut sip = leg("sip");
    if let Some(C::Leg(l)) = &mut sip.change {
        l.separate_rtcp = true;
    }
    d.apply(&req("m", vec![sip, leg("b")])).unwrap();
    let spec = &d.sessions["m"].legs["sip"];
    assert_eq!((spec.local_port, spec.rtcp.as_deref().map(|c| c.local_port)), (30_000, Some(30_001)));
    assert_eq!(d.sessions["m"].legs["b"].local_port, 30_002, "the session's worker");
    assert_eq!(ports(&mut d, &req("m", vec![leg("c")])), vec![30_004], "still the session's worker");
    // Worker 1 holds no leg: the next session goes there, past the RTCP port.
    assert_eq!(ports(&mut d, &req("n", vec![leg("c")])), vec![30_003]);
}

/// Undo takes the per-worker cursors back with the session, so the group commit that failed
/// leaves the state as it was and a retry gets the same ports.
#[test]
fn undo_restores_the_worker_cursors() {
    let mut d = node(Some(2), 16, 30_099);
    d.apply(&req("a", legs("l", 3))).unwrap();
    let before = d.clone();
    // A group of two change sets, taken back in reverse order.
    let (out, undo_b) = d.apply_undoable(&req("b", legs("l", 2)), &BTreeSet::new()).unwrap();
    let first: Vec<u16> = out.committed.ports.iter().map(|p| p.1).collect();
    let (_, undo_a) = d.apply_undoable(&req("a", legs("m", 2)), &BTreeSet::new()).unwrap();
    assert_ne!(d.cursors, before.cursors);
    d.restore(undo_a);
    d.restore(undo_b);
    assert_eq!(d.cursors, before.cursors, "the cursors are back");
    assert_eq!(d, before);
    assert_eq!(ports(&mut d, &req("b", legs("l", 2))), first, "the same ports again");
}
