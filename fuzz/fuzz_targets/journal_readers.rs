//! The control plane's journal and snapshot readers (issue 15 item 2): any bytes are refused or
//! read, never a panic; and random corruption of a good journal or snapshot never loads
//! silently altered state: the journal reader recovers a prefix of the records written (a torn
//! tail is cut, damage refused), the snapshot reader refuses or returns exactly what was written.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "corrupt.rs"]
mod corrupt;
use corrupt::corrupt;
use sluice_controlplane::journal::{Record, readers};
use sluice_controlplane::pb;
use sluice_controlplane::state::{Desired, PortRange};

fn change_set() -> pb::ChangeSet {
    let keys = pb::KeyMaterial { profile: pb::SrtpProfile::AeadAes128Gcm as i32, key: vec![1; 16], salt: vec![2; 12] };
    let leg = |id: &str| pb::Change {
        change: Some(pb::change::Change::Leg(pb::Leg {
            id: id.into(),
            rx: Some(keys.clone()),
            tx: Some(keys.clone()),
            feedback_ssrc: 7,
            ..Default::default()
        })),
    };
    pb::ChangeSet { session: "m".into(), idempotency_key: String::new(), expected_revision: None, changes: vec![leg("a"), leg("b")] }
}

fuzz_target!(|data: &[u8]| {
    // Any bytes.
    let _ = readers::snapshot(data);
    let _ = readers::journal(data);

    // A good journal, corrupted: a prefix of what was written, or refused.
    let written = vec![Record::Drain(true), Record::Apply(change_set()), Record::Drain(false)];
    let bad = corrupt(&readers::encode_journal(&written), data);
    let (records, _tail) = readers::journal(&bad);
    assert!(records.len() <= written.len() && records[..] == written[..records.len()], "altered records loaded: {records:?}");

    // A good snapshot, corrupted: exactly what was written, or refused.
    let mut desired = Desired::new(PortRange { start: 30_000, end: 30_009 });
    desired.apply(&change_set()).expect("a valid change set");
    let good = readers::encode_snapshot(&desired);
    let bad = corrupt(&good, data);
    if let Ok(loaded) = readers::snapshot(&bad) {
        assert!(loaded == desired, "an altered snapshot loaded");
    }
});
