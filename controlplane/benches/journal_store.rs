//! The hand-written journal against the embedded stores issue 15 asks about (SQLite in WAL mode,
//! redb), on the same durable-append workload: a change set of a few hundred bytes, committed
//! alone or as a group of 16 or 64 (what concurrent Apply callers share), each commit on stable
//! storage before it returns (the journal: one write and fdatasync; SQLite: WAL,
//! `synchronous=FULL`; redb: a write transaction with its default, immediate durability), in a
//! directory on the state directory's file system (`$TMPDIR` by default, or `JOURNAL_BENCH_DIR`).
//! The reference row is the journal; the ratio is the store's records per second over the
//! journal's in the same run. Rounds alternate the stores (same disk, same moment).
//!
//! `cargo bench -p sluice-controlplane --features store-bench --bench journal_store`

use std::path::{Path, PathBuf};
use std::time::Instant;

use prost::Message;
use sluice_controlplane::journal::{Journal, Record};
use sluice_controlplane::pb;
use sluice_controlplane::state::PortRange;

const ROUNDS: usize = 3;

fn change_set(i: usize) -> pb::ChangeSet {
    let keys = pb::KeyMaterial { profile: pb::SrtpProfile::AeadAes128Gcm as i32, key: vec![1; 16], salt: vec![2; 12] };
    let leg = |id: String| pb::Change {
        change: Some(pb::change::Change::Leg(pb::Leg { id, rx: Some(keys.clone()), tx: Some(keys.clone()), feedback_ssrc: 7, ..Default::default() })),
    };
    pb::ChangeSet {
        session: format!("meeting-{i}"),
        idempotency_key: format!("k{i}"),
        expected_revision: None,
        changes: vec![leg(format!("alice-{i}")), leg(format!("bob-{i}"))],
    }
}

trait Store {
    fn name(&self) -> &'static str;
    /// Appends `group` durably, as one commit.
    fn commit(&mut self, group: &[pb::ChangeSet]);
}

struct JournalStore(Journal);
impl Store for JournalStore {
    fn name(&self) -> &'static str {
        "journal (hand-written)"
    }
    fn commit(&mut self, group: &[pb::ChangeSet]) {
        let records: Vec<Record> = group.iter().cloned().map(Record::Apply).collect();
        self.0.append_all(&records).expect("append");
    }
}

struct Sqlite(rusqlite::Connection, u64);
impl Store for Sqlite {
    fn name(&self) -> &'static str {
        "SQLite (WAL, synchronous=FULL)"
    }
    fn commit(&mut self, group: &[pb::ChangeSet]) {
        let tx = self.0.transaction().expect("begin");
        {
            let mut st = tx.prepare_cached("INSERT INTO journal (seq, body) VALUES (?1, ?2)").expect("prepare");
            for r in group {
                self.1 += 1;
                st.execute(rusqlite::params![self.1 as i64, r.encode_to_vec()]).expect("insert");
            }
        }
        tx.commit().expect("commit");
    }
}

const TABLE: redb::TableDefinition<'_, u64, &[u8]> = redb::TableDefinition::new("journal");
struct Redb(redb::Database, u64);
impl Store for Redb {
    fn name(&self) -> &'static str {
        "redb (immediate durability)"
    }
    fn commit(&mut self, group: &[pb::ChangeSet]) {
        let tx = self.0.begin_write().expect("begin");
        {
            let mut t = tx.open_table(TABLE).expect("table");
            for r in group {
                self.1 += 1;
                t.insert(self.1, r.encode_to_vec().as_slice()).expect("insert");
            }
        }
        tx.commit().expect("commit");
    }
}

fn open(kind: usize, dir: &Path) -> Box<dyn Store> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("bench dir");
    match kind {
        0 => Box::new(JournalStore(Journal::open(dir, PortRange { start: 20_000, end: 32_767 }).expect("journal").0)),
        1 => {
            let c = rusqlite::Connection::open(dir.join("journal.sqlite")).expect("sqlite");
            c.pragma_update(None, "journal_mode", "WAL").expect("wal");
            c.pragma_update(None, "synchronous", "FULL").expect("full");
            c.execute("CREATE TABLE journal (seq INTEGER PRIMARY KEY, body BLOB NOT NULL)", []).expect("table");
            Box::new(Sqlite(c, 0))
        }
        _ => Box::new(Redb(redb::Database::create(dir.join("journal.redb")).expect("redb"), 0)),
    }
}

/// Records per second appending `commits` groups of `group`, and the median commit in µs.
fn run(store: &mut dyn Store, group: usize, commits: usize) -> (f64, f64) {
    let mut took = Vec::with_capacity(commits);
    let t = Instant::now();
    for c in 0..commits {
        let g: Vec<pb::ChangeSet> = (0..group).map(|i| change_set(c * group + i)).collect();
        let s = Instant::now();
        store.commit(&g);
        took.push(s.elapsed().as_secs_f64() * 1e6);
    }
    let secs = t.elapsed().as_secs_f64();
    took.sort_by(f64::total_cmp);
    ((commits * group) as f64 / secs, took[took.len() / 2])
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let base: PathBuf =
        std::env::var_os("JOURNAL_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from).join(format!("sluice-journal-bench-{}", std::process::id()));
    println!("durable appends of ~{} B change sets in {}, best of {ROUNDS} alternating rounds", change_set(0).encoded_len(), base.display());
    println!("{:>32} {:>6} {:>14} {:>16} {:>8}", "store", "group", "records/s", "commit µs (med)", "× ref");
    for (group, commits) in [(1usize, 400usize), (16, 150), (64, 60)] {
        let mut best = [(0.0f64, f64::MAX); 3];
        for _ in 0..ROUNDS {
            for (kind, b) in best.iter_mut().enumerate() {
                let dir = base.join(kind.to_string());
                let mut store = open(kind, &dir);
                let (rate, med) = run(store.as_mut(), group, commits);
                *b = (b.0.max(rate), b.1.min(med));
            }
        }
        for (kind, &(rate, med)) in best.iter().enumerate() {
            let name = open(kind, &base.join("names")).name();
            println!("{name:>32} {group:>6} {rate:>14.0} {med:>16.0} {:>8.2}", rate / best[0].0);
        }
    }
    let _ = std::fs::remove_dir_all(&base);
}
