//! Desired state → dataplane table deltas (Katran's shadow state): the control plane keeps a
//! [`Shadow`] of what the dataplane has installed, and [`ops`] turns desired-vs-installed into
//! the minimal ordered ops. Pure code. After a change, [`part_ops`] diffs only the entries it
//! touched (a [`Part`]) against the shadow, which [`SpecSet::patch`] then updates: the cost is
//! the change's, not its session's.
//!
//! Op order matters to the dataplane, which validates each op against the tables as they are at
//! that point of the delta: removals first (so a freed port or SSRC can be reused in the same
//! delta), subscriptions before tracks before legs, skipping what a cascading removal already
//! takes (removing a leg removes its tracks and every subscription from or to it; removing a
//! track removes its subscriptions); then upserts legs → tracks → subscriptions.

use std::collections::{BTreeMap, BTreeSet};

use sluice_core::ids::{Generation, LegId, TrackId};
use sluice_core::table::{Delta, LegSpec, Op, SubscriptionSpec, TrackSpec};

/// A complete set of table specs (what the dataplane has, or should have), keyed by the
/// dataplane's ids. (The dataplane's `sluice_core::table::Tables` holds these specs and the
/// runtime state beside them.)
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpecSet {
    /// Legs.
    pub legs: BTreeMap<LegId, LegSpec>,
    /// Tracks.
    pub tracks: BTreeMap<TrackId, TrackSpec>,
    /// Subscriptions by (subscriber, track).
    pub subs: BTreeMap<(LegId, TrackId), SubscriptionSpec>,
}

impl SpecSet {
    /// The tables a full snapshot (a replace-all delta's upserts) describes.
    pub fn from_ops(ops: &[Op]) -> Self {
        let mut t = Self::default();
        for op in ops {
            match op {
                Op::UpsertLeg(l) => {
                    t.legs.insert(l.id, l.clone());
                }
                Op::UpsertTrack(tr) => {
                    t.tracks.insert(tr.id, tr.clone());
                }
                Op::UpsertSubscription(s) => {
                    t.subs.insert((s.subscriber, s.track), s.clone());
                }
                Op::RemoveLeg(_) | Op::RemoveTrack(_) | Op::RemoveSubscription { .. } => {}
            }
        }
        t
    }

    /// Replaces the entries of `before` (one session's part, as it was) with those of `after`
    /// (as it is now): the cost is the part's size, not the whole set's.
    pub fn replace_part(&mut self, before: &SpecSet, after: &SpecSet) {
        for k in before.legs.keys() {
            self.legs.remove(k);
        }
        for k in before.tracks.keys() {
            self.tracks.remove(k);
        }
        for k in before.subs.keys() {
            self.subs.remove(k);
        }
        self.legs.extend(after.legs.iter().map(|(k, v)| (*k, v.clone())));
        self.tracks.extend(after.tracks.iter().map(|(k, v)| (*k, v.clone())));
        self.subs.extend(after.subs.iter().map(|(k, v)| (*k, v.clone())));
    }

    /// This set with every leg's key material redacted, as a snapshot taken without keys shows
    /// it: compare a snapshot with this, never with the set itself.
    pub fn redacted_keys(&self) -> Self {
        let mut t = self.clone();
        for l in t.legs.values_mut() {
            l.rx = l.rx.redacted();
            l.tx = l.tx.redacted();
        }
        t
    }

    /// Every entry as upserts, in dependency order (for a replace-all delta).
    pub fn to_ops(&self) -> Vec<Op> {
        let mut ops = Vec::with_capacity(self.legs.len() + self.tracks.len() + self.subs.len());
        ops.extend(self.legs.values().cloned().map(Op::UpsertLeg));
        ops.extend(self.tracks.values().cloned().map(Op::UpsertTrack));
        ops.extend(self.subs.values().cloned().map(Op::UpsertSubscription));
        ops
    }
}

/// The entries some committed changes touched, by the dataplane's ids, and what the dataplane
/// should have of them now (`desired`; a key without an entry there is to be removed): what the
/// link diffs against its shadow, so a change costs the entries it touched (and what cascades
/// from them), not its session's size or the node's ([`crate::state::Desired::compile_touched`]).
/// Every entry not named is as the dataplane has it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Part {
    /// Legs.
    pub legs: BTreeSet<LegId>,
    /// Tracks.
    pub tracks: BTreeSet<TrackId>,
    /// Subscriptions by (subscriber, track).
    pub subs: BTreeSet<(LegId, TrackId)>,
    /// What the dataplane should have of them.
    pub desired: SpecSet,
}

impl Part {
    /// How many entries it names.
    pub fn len(&self) -> usize {
        self.legs.len() + self.tracks.len() + self.subs.len()
    }

    /// Whether it names none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl SpecSet {
    /// Makes the entries `part` names what it says they are now.
    pub fn patch(&mut self, part: &Part) {
        for k in &part.legs {
            match part.desired.legs.get(k) {
                Some(l) => self.legs.insert(*k, l.clone()),
                None => self.legs.remove(k),
            };
        }
        for k in &part.tracks {
            match part.desired.tracks.get(k) {
                Some(t) => self.tracks.insert(*k, t.clone()),
                None => self.tracks.remove(k),
            };
        }
        for k in &part.subs {
            match part.desired.subs.get(k) {
                Some(s) => self.subs.insert(*k, s.clone()),
                None => self.subs.remove(k),
            };
        }
    }
}

/// The minimal ops turning `installed` into what `part` says of the entries it names: the ops
/// [`ops`] gives for the whole tables, in the same order, when every entry `part` does not name
/// is as installed. The cost is the part's size.
pub fn part_ops(installed: &SpecSet, part: &Part) -> Vec<Op> {
    let desired = &part.desired;
    let mut ops = Vec::new();
    let leg_goes = |l: &LegId| part.legs.contains(l) && !desired.legs.contains_key(l);
    let track_goes = |t: &TrackId| part.tracks.contains(t) && !desired.tracks.contains_key(t);
    for &(subscriber, track) in part.subs.iter().filter(|k| installed.subs.contains_key(k) && !desired.subs.contains_key(k)) {
        let cascaded = leg_goes(&subscriber) || track_goes(&track) || installed.tracks.get(&track).is_some_and(|t| leg_goes(&t.publisher));
        if !cascaded {
            ops.push(Op::RemoveSubscription { subscriber, track });
        }
    }
    for id in part.tracks.iter().filter(|t| track_goes(t)) {
        if let Some(t) = installed.tracks.get(id)
            && !leg_goes(&t.publisher)
        {
            ops.push(Op::RemoveTrack(*id));
        }
    }
    ops.extend(part.legs.iter().filter(|l| leg_goes(l) && installed.legs.contains_key(l)).map(|l| Op::RemoveLeg(*l)));
    push_upserts(&mut ops, desired, installed);
    ops
}

/// What the dataplane has installed, as far as the control plane knows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shadow {
    /// The dataplane's table generation.
    pub generation: Generation,
    /// Its tables.
    pub tables: SpecSet,
}

impl Shadow {
    /// The delta taking the dataplane from this shadow to `desired`, or `None` when nothing
    /// differs. Its generation is the installed one + 1.
    pub fn delta_to(&self, desired: &SpecSet) -> Option<Delta> {
        let ops = ops(&self.tables, desired);
        (!ops.is_empty()).then(|| Delta { generation: Generation(self.generation.0 + 1), replace_all: false, ops })
    }
}

/// The minimal ops turning `installed` into `desired`.
pub fn ops(installed: &SpecSet, desired: &SpecSet) -> Vec<Op> {
    let mut ops = Vec::new();
    let leg_goes = |l: &LegId| !desired.legs.contains_key(l);
    // A track whose publisher leg goes is removed with it.
    let track_goes = |t: &TrackId| !desired.tracks.contains_key(t);
    for (&(subscriber, track), _) in installed.subs.iter().filter(|(k, _)| !desired.subs.contains_key(k)) {
        let cascaded = leg_goes(&subscriber) || track_goes(&track) || installed.tracks.get(&track).is_some_and(|t| leg_goes(&t.publisher));
        if !cascaded {
            ops.push(Op::RemoveSubscription { subscriber, track });
        }
    }
    for (id, t) in installed.tracks.iter().filter(|(id, _)| track_goes(id)) {
        if !leg_goes(&t.publisher) {
            ops.push(Op::RemoveTrack(*id));
        }
    }
    ops.extend(installed.legs.keys().filter(|l| leg_goes(l)).map(|l| Op::RemoveLeg(*l)));
    push_upserts(&mut ops, desired, installed);
    ops
}

/// How many entries differ between two table sets (0: identical).
pub fn differing(a: &SpecSet, b: &SpecSet) -> usize {
    ops(a, b).len()
}

/// The upserts, legs → tracks → subscriptions: what `desired` has that `installed` lacks or
/// has otherwise.
fn push_upserts(ops: &mut Vec<Op>, desired: &SpecSet, installed: &SpecSet) {
    for (id, l) in &desired.legs {
        if installed.legs.get(id) != Some(l) {
            ops.push(Op::UpsertLeg(l.clone()));
        }
    }
    for (id, t) in &desired.tracks {
        if installed.tracks.get(id) != Some(t) {
            ops.push(Op::UpsertTrack(t.clone()));
        }
    }
    for (k, s) in &desired.subs {
        if installed.subs.get(k) != Some(s) {
            ops.push(Op::UpsertSubscription(s.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;
    use crate::pb::change::Change as C;
    use crate::state::fixtures::*;
    use crate::state::{Desired, PortRange};

    fn installed(d: &Desired) -> Shadow {
        Shadow { generation: Generation(5), tables: d.tables() }
    }

    #[test]
    fn pausing_one_subscription_is_exactly_one_upsert() {
        let mut d = Desired::new(PortRange { start: 30_000, end: 30_099 });
        d.apply(&pair("m")).unwrap();
        let shadow = installed(&d);
        assert!(shadow.delta_to(&d.tables()).is_none(), "nothing changed, nothing sent");
        d.apply(&req("m", vec![sub("a", "vb", 1000, 2, true)])).unwrap();
        let delta = shadow.delta_to(&d.tables()).unwrap();
        assert_eq!(delta.generation, Generation(6), "installed generation + 1");
        assert!(!delta.replace_all);
        assert_eq!(delta.ops.len(), 1, "{:?}", delta.ops);
        assert!(matches!(&delta.ops[0], Op::UpsertSubscription(s) if s.paused && s.out_ssrc.0 == 1000));
    }

    #[test]
    fn a_layer_change_and_an_unsubscribe_are_one_op_each() {
        let mut d = Desired::new(PortRange { start: 30_000, end: 30_099 });
        d.apply(&pair("m")).unwrap();
        let shadow = installed(&d);
        d.apply(&req(
            "m",
            vec![
                sub("b", "va", 2000, 1, false),
                pb::Change { change: Some(C::RemoveSubscription(pb::SubscriptionKey { subscriber_leg: "a".into(), track: "vb".into() })) },
            ],
        ))
        .unwrap();
        let ops = shadow.delta_to(&d.tables()).unwrap().ops;
        assert_eq!(ops.len(), 2, "{ops:?}");
        assert!(matches!(ops[0], Op::RemoveSubscription { .. }), "removals first");
        assert!(matches!(&ops[1], Op::UpsertSubscription(s) if s.target_layer == 1));
    }

    #[test]
    fn removing_a_leg_is_one_op_because_the_dataplane_cascades() {
        let mut d = Desired::new(PortRange { start: 30_000, end: 30_099 });
        d.apply(&pair("m")).unwrap();
        let shadow = installed(&d);
        d.apply(&req("m", vec![pb::Change { change: Some(C::RemoveLeg("a".into())) }])).unwrap();
        let ops = shadow.delta_to(&d.tables()).unwrap().ops;
        assert_eq!(ops, vec![Op::RemoveLeg(shadow.tables.legs.keys().copied().next().unwrap())]);
        // Deleting the session: one RemoveLeg per leg, nothing else.
        let shadow = installed(&d);
        d.delete_session(&pb::DeleteSessionRequest { session: "m".into(), expected_revision: None }).unwrap();
        let ops = shadow.delta_to(&d.tables()).unwrap().ops;
        assert_eq!(ops.len(), 1);
        assert!(matches!(ops[0], Op::RemoveLeg(_)));
    }

    #[test]
    fn from_scratch_everything_is_upserted_in_dependency_order() {
        let mut d = Desired::new(PortRange { start: 30_000, end: 30_099 });
        d.apply(&pair("m")).unwrap();
        let ops = ops(&SpecSet::default(), &d.tables());
        let kinds: Vec<u8> = ops
            .iter()
            .map(|o| match o {
                Op::UpsertLeg(_) => 0,
                Op::UpsertTrack(_) => 1,
                Op::UpsertSubscription(_) => 2,
                _ => 9,
            })
            .collect();
        assert_eq!(kinds, vec![0, 0, 1, 1, 2, 2]);
        assert_eq!(SpecSet::from_ops(&d.tables().to_ops()), d.tables(), "a snapshot round-trips");
    }

    /// A change to one session, diffed on that session's part alone and patched into the
    /// shadow, gives the same ops and the same shadow as the whole-node diff.
    #[test]
    fn one_session_part_diffs_and_patches_like_the_whole_node() {
        let mut d = Desired::new(PortRange { start: 30_000, end: 30_099 });
        d.apply(&pair("m")).unwrap();
        d.apply(&pair("n")).unwrap();
        let mut shadow = installed(&d);
        let steps = vec![
            req("m", vec![sub("a", "vb", 1000, 1, true)]),
            req("m", vec![leg("c"), video("vc", "c", 300), sub("c", "va", 3000, 0, false)]),
            req("m", vec![pb::Change { change: Some(C::RemoveLeg("a".into())) }]),
        ];
        for r in steps {
            let before = d.session_tables("m");
            d.apply(&r).unwrap();
            let after = d.session_tables("m");
            assert_eq!(ops(&before, &after), ops(&shadow.tables, &d.tables()), "the session's ops are the node's");
            shadow.tables.replace_part(&before, &after);
            assert_eq!(shadow.tables, d.tables(), "the patched shadow is the whole compile");
        }
        let before = d.session_tables("n");
        d.delete_session(&pb::DeleteSessionRequest { session: "n".into(), expected_revision: None }).unwrap();
        shadow.tables.replace_part(&before, &d.session_tables("n"));
        assert_eq!(shadow.tables, d.tables());
        assert!(!d.tables().legs.is_empty(), "session m is still there");
    }

    /// What a change touched, compiled and diffed against the shadow on those entries alone,
    /// gives the same ops as the whole-node diff and patches the shadow to the whole compile:
    /// through upserts, cascading removals, slots and top-N audio, a track turned ranked, a
    /// removal and a re-add under one name, and a deleted session.
    #[test]
    fn the_touched_part_diffs_and_patches_like_the_whole_node() {
        use crate::state::Touched;
        use std::collections::BTreeSet;
        let slotted = |id: &str, ssrcs: &[u32]| {
            let mut c = leg(id);
            if let Some(C::Leg(l)) = &mut c.change {
                l.audio_slots = Some(pb::AudioSlots { out_ssrcs: ssrcs.to_vec(), pt_map: vec![pb::IdMapping { from: 111, to: 111 }], ext_map: vec![] });
            }
            c
        };
        let settings = |on| pb::Change { change: Some(C::Settings(pb::SessionSettings { top_n_audio: on, audio_top_n: 2 })) };
        let mut d = Desired::new(PortRange { start: 30_000, end: 30_099 });
        d.apply(&pair("m")).unwrap();
        d.apply(&pair("n")).unwrap();
        let mut shadow = installed(&d).tables;
        let steps = vec![
            req("m", vec![sub("a", "vb", 1000, 1, true)]),
            req("m", vec![leg("c"), video("vc", "c", 300), sub("c", "va", 3000, 0, false), audio("ab", "b", 400, Some(1)), sub("a", "ab", 4000, 0, false)]),
            req("m", vec![slotted("a", &[11, 12])]),
            req("m", vec![settings(true)]),
            req("m", vec![audio("ac", "c", 500, None), sub("a", "ac", 5000, 0, false)]),
            // The track turns ranked: a's subscription to it is no longer installed.
            req("m", vec![audio("ac", "c", 500, Some(1))]),
            req("m", vec![settings(false)]),
            // Fewer layers: every subscription above the top one is clamped.
            req(
                "m",
                vec![pb::Change {
                    change: Some(C::Track(pb::Track {
                        layers: vec![pb::Layer { ssrc: Some(300), ..Default::default() }],
                        ..match video("vc", "c", 300).change {
                            Some(C::Track(t)) => t,
                            _ => unreachable!(),
                        }
                    })),
                }],
            ),
            req("m", vec![pb::Change { change: Some(C::RemoveTrack("vb".into())) }]),
            req("m", vec![pb::Change { change: Some(C::RemoveLeg("c".into())) }, leg("c"), video("vc", "c", 600), sub("b", "vc", 6000, 2, false)]),
            req("m", vec![pb::Change { change: Some(C::RemoveLeg("a".into())) }]),
        ];
        for r in steps {
            let (_, undo) = d.apply_undoable(&r, &BTreeSet::new()).unwrap_or_else(|e| panic!("{e}"));
            let mut part = Part::default();
            d.compile_touched("m", &undo.touched(), &mut part);
            assert_eq!(part_ops(&shadow, &part), ops(&shadow, &d.tables()), "the touched entries' ops are the node's ({r:?})");
            shadow.patch(&part);
            assert_eq!(shadow, d.tables(), "the patched shadow is the whole compile");
            assert!(part.len() < 20, "{part:?}");
        }
        // A refused change set touches nothing; a deletion touches the whole session.
        assert!(d.apply_undoable(&req("n", vec![sub("a", "nope", 1, 0, false)]), &BTreeSet::new()).is_err());
        let all = Touched::all_of(&d.sessions["n"]);
        d.delete_session(&pb::DeleteSessionRequest { session: "n".into(), expected_revision: None }).unwrap();
        let mut part = Part::default();
        d.compile_touched("n", &all, &mut part);
        assert_eq!(part_ops(&shadow, &part), ops(&shadow, &d.tables()));
        shadow.patch(&part);
        assert_eq!(shadow, d.tables());
        assert!(!d.tables().legs.is_empty(), "session m is still there");
    }

    /// The compiled deltas are accepted by the real dataplane table code, and leave it exactly
    /// at the desired state, through a sequence of changes.
    #[test]
    fn compiled_deltas_apply_cleanly_to_the_dataplane_tables() {
        use sluice_core::table::{TableConfig, Tables as DpTables};
        let mut dp = DpTables::new(TableConfig::default());
        let mut d = Desired::new(PortRange { start: 30_000, end: 30_099 });
        let mut shadow = Shadow::default();
        let steps = vec![
            pair("m"),
            req("m", vec![sub("a", "vb", 1000, 1, true)]),
            req("m", vec![leg("c"), video("vc", "c", 300), sub("c", "va", 3000, 0, false), sub("a", "vc", 1010, 2, false)]),
            req("m", vec![pb::Change { change: Some(C::RemoveTrack("vb".into())) }]),
            req("m", vec![pb::Change { change: Some(C::RemoveLeg("a".into())) }, leg("a2"), video("va2", "a2", 100)]),
        ];
        for r in steps {
            d.apply(&r).unwrap();
            let delta = shadow.delta_to(&d.tables()).unwrap();
            let g = dp.apply(delta).unwrap_or_else(|e| panic!("dataplane refused: {e}"));
            shadow = Shadow { generation: g, tables: d.tables() };
            assert_eq!(SpecSet::from_ops(&dp.snapshot().ops), d.tables());
        }
        d.delete_session(&pb::DeleteSessionRequest { session: "m".into(), expected_revision: None }).unwrap();
        dp.apply(shadow.delta_to(&d.tables()).unwrap()).unwrap();
        assert!(dp.snapshot().ops.is_empty());
    }
}
