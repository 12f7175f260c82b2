//! Where one webinar Apply's time goes in the control plane as the session grows: 100 viewers
//! per change set (a leg and three subscriptions to the presenter's tracks each) into one
//! session, up to 10,000 viewers. Columns: protobuf decode, validation and the in-place commit
//! (`apply_undoable`), the journal's append (one fsync), the names, compiling the touched
//! entries, diffing them against the shadow, patching the shadow; and, for scale, the
//! dataplane's own table apply (not the control plane's). Every column should stay flat.
//!
//! `cargo bench -p sluice-controlplane --bench webinar_phases`
use std::time::Instant;

use prost::Message as _;
use sluice_controlplane::diff::{Part, SpecSet, part_ops};
use sluice_controlplane::journal::{Journal, Record};
use sluice_controlplane::names::Names;
use sluice_controlplane::pb;
use sluice_controlplane::state::PortRange;

#[path = "../tests/webinar/mod.rs"]
mod webinar;
use webinar::{presenter, viewers};

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("sluice-webinar-phases-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (mut journal, mut d, _) = Journal::open(&dir, PortRange { start: 1024, end: 65_000 }).unwrap();
    let setup = presenter();
    d.apply(&setup).unwrap();
    let mut names = Names::build(&d);
    let mut shadow: SpecSet = d.tables();
    let mut dp = sluice_core::table::Tables::new(sluice_core::table::TableConfig::default());
    dp.apply(sluice_core::table::Delta { generation: sluice_core::ids::Generation(1), replace_all: true, ops: shadow.to_ops() }).unwrap();
    let mut generation = 1;
    println!(
        "{:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}  (ms)",
        "viewers", "decode", "apply", "journal", "names", "compile", "diff", "shadow", "dp.apply"
    );
    let mut total = 0.0;
    let mut at = 0;
    let t0 = Instant::now();
    while at < 10_000 {
        let req = viewers(at, 100);
        let bytes = req.encode_to_vec();
        let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let req = pb::ChangeSet::decode(&bytes[..]).unwrap();
        let decode = ms(t);
        let t = Instant::now();
        let (_, undo) = d.apply_undoable(&req, &std::collections::BTreeSet::new()).unwrap();
        let apply = ms(t);
        let t = Instant::now();
        journal.append_all(&[Record::Apply(req.clone())]).unwrap();
        let journal_ms = ms(t);
        let t = Instant::now();
        let touched = undo.touched();
        names.update_touched(&d, "webinar", &touched);
        let names_ms = ms(t);
        let t = Instant::now();
        let mut part = Part::default();
        d.compile_touched("webinar", &touched, &mut part);
        let compile = ms(t);
        let t = Instant::now();
        let o = part_ops(&shadow, &part);
        let diff = ms(t);
        let t = Instant::now();
        shadow.patch(&part);
        let shadow_ms = ms(t);
        generation += 1;
        let t = Instant::now();
        dp.apply(sluice_core::table::Delta { generation: sluice_core::ids::Generation(generation), replace_all: false, ops: o }).unwrap();
        let dp_ms = ms(t);
        at += 100;
        let cp = decode + apply + journal_ms + names_ms + compile + diff + shadow_ms;
        total += cp;
        if [1_000, 5_000, 10_000].contains(&at) {
            println!(
                "{at:>7} {decode:>8.3} {apply:>8.3} {journal_ms:>8.3} {names_ms:>8.3} {compile:>8.3} {diff:>8.3} {shadow_ms:>8.3} {dp_ms:>8.3}   control plane {cp:.2} ms"
            );
        }
    }
    println!("10,000 viewers: control plane {total:.0} ms in all; wall {:.0} ms incl. dataplane tables", t0.elapsed().as_secs_f64() * 1e3);
    let _ = std::fs::remove_dir_all(&dir);
}
