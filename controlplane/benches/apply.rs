//! What one Apply costs the control plane's desired state as the node fills up: a one-leg
//! change set into a new session when the node already holds `legs` legs (in sessions of ten),
//! and rebuilding that many legs change set by change set (a journal replay at restart).
//! The reference row is the smallest node; an Apply whose cost grows with the node (not with
//! its own session) shows as a ratio that grows with it.
//!
//! `cargo bench -p sluice-controlplane --bench apply`

use std::hint::black_box;
use std::time::Instant;

use sluice_controlplane::pb;
use sluice_controlplane::pb::change::Change as C;
use sluice_controlplane::state::{Desired, PortRange};

fn leg(id: String) -> pb::Change {
    let keys = pb::KeyMaterial { profile: pb::SrtpProfile::AeadAes128Gcm as i32, key: vec![1; 16], salt: vec![2; 12] };
    pb::Change { change: Some(C::Leg(pb::Leg { id, rx: Some(keys.clone()), tx: Some(keys), feedback_ssrc: 7, ..Default::default() })) }
}

fn req(session: String, changes: Vec<pb::Change>) -> pb::ChangeSet {
    pb::ChangeSet { session, idempotency_key: String::new(), expected_revision: None, changes }
}

/// A node with `legs` legs in sessions of ten, built one change set per session; returns it
/// and the time the build took.
fn node(legs: usize) -> (Desired, f64) {
    let mut d = Desired::new(PortRange { start: 1024, end: 65_000 });
    let t = Instant::now();
    for s in 0..legs / 10 {
        d.apply(&req(format!("s{s}"), (0..10).map(|l| leg(format!("l{l}"))).collect())).expect("room");
    }
    (d, t.elapsed().as_secs_f64())
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    println!("{:>8} {:>22} {:>10} {:>24} {:>10}", "legs", "one-leg Apply µs (med)", "× ref", "rebuild µs per leg", "× ref");
    let mut reference: Option<(f64, f64)> = None;
    for legs in [1_000usize, 10_000, 50_000] {
        let (mut d, built) = node(legs);
        let mut times = Vec::new();
        for i in 0..51 {
            let t = Instant::now();
            black_box(d.apply(&req(format!("new{i}"), vec![leg("x".into())])).expect("room"));
            times.push(t.elapsed().as_secs_f64() * 1e6);
        }
        times.sort_by(f64::total_cmp);
        let (apply, rebuild) = (times[25], built * 1e6 / legs as f64);
        let (ra, rr) = *reference.get_or_insert((apply, rebuild));
        println!("{legs:>8} {apply:>22.1} {:>10.1} {rebuild:>24.2} {:>10.1}", apply / ra, rebuild / rr);
    }
}
