//! Scale measurements of the control path (issue 15 item 6), run by hand, not in CI:
//!
//! ```text
//! SCALE_MEETING=548 cargo nextest run -p sluice-tests --run-ignored only -E 'binary(scale)' --no-capture
//! ```
//!
//! A small session's Apply (a subscription paused and resumed, installed on the real dataplane)
//! is timed with the node empty, then beside one big session of `SCALE_MEETING` participants
//! that all receive each other's audio and video (548: 599,512 subscriptions), and after the
//! dataplane is restarted (the control plane resyncs the whole node). Prints the figures.

use std::time::{Duration, Instant};

use sluice_bench::meeting;
use sluice_controlplane::pb;
use sluice_core::srtp::Profile;
use sluice_tests::TempDir;

mod cp;
use cp::{Grpc, changes, session_req_with, start_controlplane_with, start_dataplane_in, wait_until};

const PORTS: (u16, u16) = (41_000, 41_999);

/// The first subscription among `changes`.
fn first_subscription(changes: &[pb::Change]) -> pb::Subscription {
    changes
        .iter()
        .find_map(|c| match &c.change {
            Some(pb::change::Change::Subscription(s)) => Some(s.clone()),
            _ => None,
        })
        .expect("a subscription")
}

/// One change set of `small` that sets `sub` (paused or not).
fn set_sub(sub: &pb::Subscription) -> pb::ChangeSet {
    session_req_with("small", vec![pb::Change { change: Some(pb::change::Change::Subscription(sub.clone())) }])
}

/// Median and worst of `n` timed Applies that pause and resume one subscription of `small`.
fn small_applies(grpc: &mut Grpc, small: &[pb::Change], n: usize, logs: &dyn Fn() -> String) -> (Duration, Duration) {
    let mut sub = first_subscription(small);
    let mut took = Vec::with_capacity(n);
    for i in 0..n {
        sub.paused = i % 2 == 0;
        let t = Instant::now();
        grpc.apply(set_sub(&sub)).unwrap_or_else(|e| panic!("the small session's Apply: {e:?}\n{}", logs()));
        took.push(t.elapsed());
    }
    took.sort_unstable();
    (took[n / 2], took[n - 1])
}

#[test]
#[ignore = "a measurement (minutes, gigabytes): run by hand, see the module docs"]
fn a_small_sessions_apply_beside_a_big_one() {
    let size: u32 = std::env::var("SCALE_MEETING").ok().and_then(|v| v.parse().ok()).unwrap_or(548);
    let dir = TempDir::new("scale");
    let (dataplane, dp_sock) = start_dataplane_in(dir.path(), PORTS);
    let (cp, addr) = start_controlplane_with(dir.path(), &dp_sock, 1, PORTS);
    let mut grpc = Grpc::connect(addr);
    let tail = |t: String| t.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
    let logs = || {
        format!("control plane:\n{}\ndataplane:\n{}", tail(cp.log_text()), tail(std::fs::read_to_string(dir.path().join("dataplane.log")).unwrap_or_default()))
    };

    let (small_ops, _) = meeting::build(1, 3, Profile::AeadAes128Gcm, 1);
    let small = changes(&small_ops);
    grpc.apply(session_req_with("small", small.clone())).unwrap_or_else(|e| panic!("{e:?}\n{}", cp.log_text()));
    let (empty_median, empty_worst) = small_applies(&mut grpc, &small, 40, &logs);

    // The big session: its legs and tracks, then its subscriptions 10,000 per change set.
    let (big_ops, _) = meeting::build(2, size, Profile::AeadAes128Gcm, 1);
    let big = changes(&big_ops);
    let (subs, rest): (Vec<pb::Change>, Vec<pb::Change>) = big.into_iter().partition(|c| matches!(c.change, Some(pb::change::Change::Subscription(_))));
    let t = Instant::now();
    grpc.apply(session_req_with("big", rest)).unwrap_or_else(|e| panic!("{e:?}\n{}", cp.log_text()));
    let mut chunk_times = Vec::new();
    for chunk in subs.chunks(10_000) {
        let c = Instant::now();
        grpc.apply(session_req_with("big", chunk.to_vec())).unwrap_or_else(|e| panic!("{e:?}\n{}", cp.log_text()));
        chunk_times.push(c.elapsed());
    }
    let built = t.elapsed();
    let status = grpc.status();
    assert_eq!(status.subscriptions as usize, subs.len() + small.iter().filter(|c| matches!(c.change, Some(pb::change::Change::Subscription(_)))).count());
    let (big_median, big_worst) = small_applies(&mut grpc, &small, 40, &logs);

    // A dataplane restart: the control plane resyncs the whole node.
    dataplane.signal(libc::SIGKILL);
    drop(dataplane);
    let _ = std::fs::remove_file(&dp_sock);
    let t = Instant::now();
    let (dataplane, _) = start_dataplane_in(dir.path(), PORTS);
    wait_until("the resync of the whole node", Duration::from_secs(600), || {
        let s = grpc.status();
        s.dataplane_connected && s.dataplane_generation > 0
    });
    let generation_back = t.elapsed();
    // Changes are answered again once the resync's replace-all delta is in (while it is in
    // flight the link is busy and an Apply answers UNAVAILABLE at once).
    let mut sub = first_subscription(&small);
    sub.paused = false;
    let mut refused = 0;
    wait_until("an Apply after the resync", Duration::from_secs(600), || {
        let ok = grpc.apply(set_sub(&sub)).is_ok();
        refused += usize::from(!ok);
        ok
    });
    let resync = t.elapsed();
    let dp_log = std::fs::read_to_string(dir.path().join("dataplane.log")).unwrap_or_default();
    assert!(!dp_log.contains("control request refused"), "{}", logs());
    let (after_median, after_worst) = small_applies(&mut grpc, &small, 40, &logs);
    let rss =
        |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/status")).ok().and_then(|s| s.lines().find(|l| l.starts_with("VmRSS")).map(str::to_owned));

    println!(
        "scale: big session {size} participants, {} subscriptions, built in {built:?} ({} change sets of 10,000: median {:?}, worst {:?})",
        subs.len(),
        chunk_times.len(),
        {
            chunk_times.sort_unstable();
            chunk_times[chunk_times.len() / 2]
        },
        chunk_times.last()
    );
    println!("scale: small Apply, node empty:         median {empty_median:?}, worst {empty_worst:?}");
    println!("scale: small Apply, beside the big one: median {big_median:?}, worst {big_worst:?}");
    println!(
        "scale: dataplane restart -> generation back after {generation_back:?}, Applies answered again after {resync:?} ({refused} refused meanwhile); small Apply after: median {after_median:?}, worst {after_worst:?}"
    );
    println!("scale: RSS control plane {:?}, dataplane {:?}", rss(cp.pid()), rss(dataplane.pid()));
}
