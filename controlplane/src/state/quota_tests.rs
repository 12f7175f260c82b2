//! Per-node quotas (issue 15 item 6): a change set that would take the node over its quota of
//! sessions, legs or subscriptions is refused with RESOURCE_EXHAUSTED naming the quota, and
//! changes nothing; a change that adds nothing of that kind passes even over a quota (a quota
//! lowered at a restart never blocks the sessions already there).

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
