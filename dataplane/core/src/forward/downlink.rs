//! The downlink controllers' glue (see [`crate::downlink`] for the state): transport-cc from a
//! subscriber into its leg's estimator, the housekeeping tick that measures layer rates and
//! runs each leg's allocator, and the probe packets that look for more bandwidth.
//!
//! ```text
//!   probe packet: | RTP V=2 P=1 X=1, RTX PT, RTX SSRC, RTX seq | BE DE 00 01 | id,len=1 | seq | 0 |
//!                 | 254 zero octets | 255 |          (RFC 3550 padding, RFC 4588 RTX stream)
//! ```

use std::collections::VecDeque;

use super::fanout::Ctx;
use super::{Event, OutMeta, push_event};
use crate::downlink::alloc::{self, Demand, MAX_LAYERS};
use crate::downlink::pacer::Pacing;
use crate::downlink::{PROBE_PADDING, UNWANTED_AFTER, Usage};
use crate::ids::TrackId;
use crate::stats::CoreStats;
use crate::table::{LayerState, Leg, Legs, MAX_SPATIAL, Map, MediaKind, Track};
use crate::time::Instant;
use crate::wire::rtcp::TransportCc;
use crate::wire::set_be32;

/// Subscriptions one leg's allocator handles (a meeting view; more are left at their ceiling).
pub(super) const MAX_ALLOC: usize = 64;
/// How long an estimate somewhat below a subscription's layer is tolerated before it switches
/// down (the estimator dips briefly after every up-switch).
const DOWN_HOLD: core::time::Duration = core::time::Duration::from_millis(1000);
/// An estimate under this fraction of the current layer's rate switches down sooner: after
/// DEEP_HOLD, one decrease interval and a feedback round beyond a single outlier report.
const DEEP_DIP: f64 = 0.6;
const DEEP_HOLD: core::time::Duration = core::time::Duration::from_millis(400);
/// The least padding rate of a probe: about a dozen packets per cluster.
const MIN_PROBE_BPS: u64 = 600_000;
/// Length of a probe packet before SRTP.
const PROBE_LEN: usize = 12 + 8 + PROBE_PADDING;

/// A subscriber's transport-cc feedback: into its leg's estimator.
pub(super) fn transport_cc(ctx: &mut Ctx<'_>, leg: &mut Leg, fb: &TransportCc<&[u8]>) {
    match leg.downlink.as_deref_mut() {
        Some(dl) => {
            if dl.on_feedback(ctx.now, fb) {
                ctx.stats.twcc_feedback_used += 1;
            } else {
                ctx.stats.twcc_feedback_bad += 1;
            }
        }
        None => ctx.stats.twcc_feedback_bad += 1,
    }
}

/// The one layer of a track that is an SVC stream (spatial layers inside one SSRC), if it is.
pub(super) fn svc_layers(track: &Track) -> Option<&LayerState> {
    match &track.layers[..] {
        [l] if l.top.0 > 0 => Some(l),
        _ => None,
    }
}

/// Turns the bytes each layer received since the last tick into its rate (`elapsed` since).
pub(super) fn measure_layers<'a>(tracks: impl Iterator<Item = &'a mut Track>, elapsed: core::time::Duration) {
    let secs = elapsed.as_secs_f64();
    for t in tracks {
        for l in &mut t.layers {
            l.rate.tick(secs);
            if l.top.0 > 0 {
                for r in &mut l.spatial_rates {
                    r.tick(secs);
                }
            }
        }
    }
}

/// Runs the allocator of every leg this core owns that has congestion control; starts probes
/// where the allocation wants more than the estimate. Returns the earliest probe deadline.
pub(super) fn allocate(
    now: Instant,
    legs: &mut Legs,
    tracks: &mut Map<TrackId, Track>,
    owns: impl Fn(u16) -> bool,
    scratch: &mut Vec<(TrackId, usize, Demand)>,
    stats: &mut CoreStats,
    events: &mut VecDeque<Event>,
) -> Option<Instant> {
    let mut next = None;
    let mut out = [None; MAX_ALLOC];
    // The core that owns a leg builds every copy to it (egress ownership): all its
    // subscriptions are this core's to allocate.
    for leg in legs.values_mut() {
        let Some(dl) = leg.downlink.as_deref_mut() else { continue };
        if !owns(leg.spec.local_port) {
            continue;
        }
        scratch.clear();
        for &(_, track_id) in &leg.egress {
            if scratch.len() == MAX_ALLOC || scratch.iter().any(|(t, _, _)| *t == track_id) {
                continue;
            }
            let Some(track) = tracks.get(&track_id) else { continue };
            let Some(i) = track.sub_index(leg.spec.id) else { continue };
            let sub = &track.subs[i];
            // A relay takes every layer (the next node chooses): nothing to allocate.
            if sub.paused || sub.relay {
                continue;
            }
            let audio = track.spec.kind == MediaKind::Audio;
            let demand = match svc_layers(track) {
                // An SVC stream: its spatial layers are what the allocator chooses between, each
                // costing the layers up to it (`alloc_layer` is then the spatial layer).
                Some(l) => {
                    let mut rates = [0; MAX_LAYERS];
                    let mut sum = 0;
                    for (s, r) in rates.iter_mut().enumerate().take(usize::from(l.top.0.min(MAX_SPATIAL as u8 - 1)) + 1) {
                        sum += l.spatial_rates[s].bps();
                        *r = if l.activity.active { sum.max(1) } else { 0 };
                    }
                    let current = sub.current_layer.map(|_| sub.layers.spatial.min(l.top.0));
                    Demand { priority: sub.priority, audio, current, ceiling: sub.max_spatial.unwrap_or(u8::MAX).min(l.top.0), rates }
                }
                None => {
                    let mut rates = [0; MAX_LAYERS];
                    for (r, l) in rates.iter_mut().zip(&track.layers) {
                        *r = if l.activity.active { l.rate.bps().max(1) } else { 0 };
                    }
                    Demand { priority: sub.priority, audio, current: sub.current_layer, ceiling: sub.target_layer, rates }
                }
            };
            scratch.push((track_id, i, demand));
        }
        let demands: [Demand; MAX_ALLOC] = core::array::from_fn(|i| scratch.get(i).map_or(Demand::default(), |d| d.2));
        let n = scratch.len();
        let estimate = dl.estimate();
        if estimate.abs_diff(dl.reported_bps) * 10 >= dl.reported_bps {
            dl.reported_bps = estimate;
            push_event(events, Event::BandwidthEstimate { leg: leg.spec.id, bps: estimate });
        }
        // Media gets 85 % of the estimate: the rest is room for retransmissions, RTCP and the
        // variance of a layer's rate (keyframes), so a layer that fits is not one that congests.
        let budget = estimate * 85 / 100;
        let used = alloc::allocate(budget, &demands[..n], &mut out[..n]);
        // The highest priority whose down-switch is being held: the allocator has already
        // spent its bandwidth elsewhere, so nobody ranked below it goes up meanwhile (lower
        // ranks give way first, and a held dip must not turn into an overcommitment).
        let mut held: Option<u8> = None;
        let mut order: [usize; MAX_ALLOC] = core::array::from_fn(|k| k);
        order[..n].sort_by_key(|&k| core::cmp::Reverse(scratch[k].2.priority));
        for &k in &order[..n] {
            let (track_id, i, d) = scratch[k];
            if d.audio {
                continue;
            }
            let Some(sub) = tracks.get_mut(&track_id).and_then(|t| t.subs.get_mut(i)) else { continue };
            let want = out[k];
            if held.is_some_and(|p| d.priority < p) && matches!((want, sub.alloc_layer), (Some(w), Some(c)) if w > c) {
                continue;
            }
            // Down-switch hysteresis: a dip of the estimate (a transient overuse right after an
            // up-switch) is held for DOWN_HOLD; a deep one (the estimate under DEEP_DIP of what
            // the current layer takes) for DEEP_HOLD, so one outlier does not cost a
            // subscriber its layer and the keyframe the way back needs.
            let current_rate = sub.alloc_layer.map_or(0, |l| d.rates[usize::from(l).min(MAX_LAYERS - 1)]);
            let down = matches!((want, sub.alloc_layer), (Some(w), Some(c)) if w < c);
            // (A current layer that stopped flowing has no rate: no reason to wait.)
            if down && current_rate > 0 {
                let hold = if (budget as f64) >= DEEP_DIP * current_rate as f64 { DOWN_HOLD } else { DEEP_HOLD };
                let since = *sub.alloc_down_since.get_or_insert(now);
                if now.saturating_duration_since(since) < hold {
                    held = held.max(Some(d.priority));
                    continue;
                }
            }
            if !down {
                sub.alloc_down_since = None;
            }
            if sub.alloc_layer != want {
                sub.alloc_layer = want;
                sub.alloc_down_since = None;
                stats.allocation_changes += 1;
                push_event(events, Event::LayerAllocated { track: track_id, subscriber: leg.spec.id, layer: want });
            }
        }
        // The allocation is held back by the estimate when a subscription is below the best
        // layer it could have: look for more, doubling towards what all of them want (with the
        // allocator's headroom and a margin).
        let wanted = (demands[..n].iter().map(Demand::wanted).sum::<u64>() as f64 * alloc::UP_HEADROOM) as u64;
        let limited = demands[..n].iter().zip(&out[..n]).any(|(d, o)| !d.audio && *o < d.best());
        if limited && dl.usage() != Usage::Over {
            // Doubling (at least +500 kbit/s) towards what the allocation wants, with room.
            let target = (estimate * 2).max(estimate + 500_000).min((wanted + wanted / 5) * 100 / 85);
            // Enough padding for a measurable cluster (a dozen packets in 40 ms).
            let padding = target.saturating_sub(used).max(MIN_PROBE_BPS);
            if dl.start_probe(now, padding) {
                stats.probes_started += 1;
            }
        }
        if let Some(d) = dl.probe_deadline() {
            next = Some(next.map_or(d, |n: Instant| n.min(d)));
        }
    }
    next
}

/// Sends the probe packets due on every leg this core owns; returns the next probe deadline.
pub(super) fn probe(
    now: Instant,
    legs: &mut Legs,
    tracks: &mut Map<TrackId, Track>,
    owns: impl Fn(u16) -> bool,
    out: &mut super::OutBatch,
    stats: &mut CoreStats,
) -> Option<Instant> {
    let mut next = None;
    for leg in legs.values_mut() {
        let destination = leg.destination();
        let Some(dl) = leg.downlink.as_deref_mut() else { continue };
        if dl.probe_deadline().is_none_or(|d| d > now) || !owns(leg.spec.local_port) {
            continue;
        }
        let (Some(remote), Some(twcc)) = (destination, leg.spec.feedback.twcc_ext) else {
            dl.cancel_probe();
            continue;
        };
        // An RTX stream of the leg carries the padding: its SSRC and payload type.
        let rtx = leg.egress.iter().find_map(|&(_, t)| {
            let track = tracks.get(&t)?;
            let i = track.sub_index(leg.spec.id)?;
            let sub = &track.subs[i];
            let rtx_ssrc = sub.out_rtx_ssrc?;
            let pt = track.spec.payload_types.iter().find_map(|p| sub.map_pt(p.rtx_pt?))?;
            Some((t, i, rtx_ssrc, pt))
        });
        let Some((track_id, i, rtx_ssrc, pt)) = rtx else {
            dl.cancel_probe();
            continue;
        };
        let Some(sub) = tracks.get_mut(&track_id).and_then(|t| t.subs.get_mut(i)) else { continue };
        // Paced packets waiting carry earlier transport-wide sequence numbers: padding waits
        // until they left, so the numbers leave in order.
        if !dl.pacer.is_empty() {
            let d = dl.pacer.next_due().unwrap_or(now);
            next = Some(next.map_or(d, |n: Instant| n.min(d)));
            continue;
        }
        while dl.take_probe_packet(now, PROBE_LEN + leg.tx.rtp_overhead()) {
            let Some(slot) = out.next_slot() else { break };
            let p = &mut slot[..PROBE_LEN];
            p[0] = 0x80 | 0x20 | 0x10;
            p[1] = pt.0 & 0x7F;
            p[2..4].copy_from_slice(&sub.rtx_seq.to_be_bytes());
            set_be32(p, 4, 0);
            set_be32(p, 8, rtx_ssrc.0);
            let seq = dl.history.next_seq().to_be_bytes();
            p[12..20].copy_from_slice(&[0xBE, 0xDE, 0, 1, (twcc << 4) | 1, seq[0], seq[1], 0]);
            p[20..].fill(0);
            p[PROBE_LEN - 1] = PROBE_PADDING as u8;
            let Ok(len) = leg.tx.protect_rtp(&mut sub.rtx_srtp, &mut slot[..], PROBE_LEN) else { break };
            sub.rtx_seq = sub.rtx_seq.wrapping_add(1);
            out.commit(OutMeta { local_port: leg.spec.local_port, dst: remote, leg: leg.spec.id, len: len as u16 }, &mut leg.traffic);
            dl.sent(now, len, true);
            stats.probe_packets += 1;
        }
        if let Some(d) = dl.probe_deadline() {
            next = Some(next.map_or(d, |n: Instant| n.min(d)));
        }
    }
    next
}

/// Sends the paced packets due at `now` on every leg with packets waiting, in order, each
/// leg at its pace rate; returns when packets are next due. A leg that went away (or whose
/// downlink state was replaced) gets its pool slots back.
pub(super) fn pace(now: Instant, legs: &mut Legs, pacing: &mut Pacing, out: &mut super::OutBatch, stats: &mut CoreStats) -> Option<Instant> {
    let mut next = None;
    let mut k = 0;
    while k < pacing.legs.len() {
        let (leg_id, pacer_id) = pacing.legs[k];
        let Some((dl, traffic)) = legs
            .get_mut(&leg_id)
            .and_then(|l| {
                let Leg { downlink, traffic, .. } = &mut **l;
                Some((downlink.as_deref_mut()?, traffic))
            })
            .filter(|(dl, _)| dl.pacer.id() == pacer_id)
        else {
            pacing.pool.reclaim(pacer_id);
            pacing.legs.swap_remove(k);
            continue;
        };
        while out.remaining() > 0 {
            let Some(q) = dl.pacer.pop_due(now) else { break };
            let len = usize::from(q.meta.len);
            if let Some(slot) = out.next_slot() {
                slot[..len].copy_from_slice(pacing.pool.get(q.slot, len));
                out.commit(q.meta, traffic);
                stats.tx_packets += 1;
                stats.tx_bytes += len as u64;
            }
            pacing.pool.release(q.slot);
            if let Some(seq) = q.twcc_seq {
                dl.history.set_sent(seq, now);
            }
        }
        match dl.pacer.next_due() {
            Some(d) => {
                // (A full batch: the rest is due now.)
                let d = if out.remaining() == 0 { now } else { d };
                next = Some(next.map_or(d, |n: Instant| n.min(d)));
                k += 1;
            }
            None => {
                pacing.legs.swap_remove(k);
            }
        }
    }
    next
}

/// The layers of a track its subscriptions on core `here` want (a bit per layer): the one they
/// receive and the one they move to. With `ceilings` (a track another node relays: a cascade leg
/// publishes it), a subscription whose bandwidth allocator chooses its layer wants every layer
/// up to its ceiling, since the allocator only ever chooses a layer that flows, and a layer this
/// node does not want stops flowing ([`super::cascade`]).
pub(super) fn wanted_here(subs: &[crate::table::Subscription], here: u16, ceilings: bool) -> u8 {
    subs.iter().filter(|s| s.owner == here && !s.paused && !s.unwanted).fold(0u8, |m, s| {
        let target = if ceilings && s.alloc_layer.is_some() { (2u16 << s.target_layer.min(7)) - 1 } else { 1u16 << s.target().min(7) };
        m | s.current_layer.map_or(0, |l| 1u8 << l.min(7)) | target as u8
    })
}

/// Reports flowing layers of the tracks this core fans out (`fanned`) that no subscription
/// receives or targets (after [`UNWANTED_AFTER`]), and when they are wanted again. Each core
/// decides for its own subscriptions; the others' wishes arrive as [`HandoffKind::Demand`]
/// (`LayerState::wanted_by`).
///
/// [`HandoffKind::Demand`]: super::HandoffKind::Demand
pub(super) fn layer_demand<'a>(now: Instant, here: u16, tracks: impl Iterator<Item = &'a mut Track>, events: &mut VecDeque<Event>) {
    let others = !(1u64 << here.min(63));
    for t in tracks {
        let id = t.spec.id;
        let mine = wanted_here(&t.subs, here, false);
        for (l, state) in t.layers.iter_mut().enumerate() {
            if !state.activity.active {
                continue;
            }
            let wanted = mine & (1 << l.min(7)) != 0 || state.wanted_by & others != 0;
            let l = l as u8;
            let (reported, since) = &mut state.demand;
            if wanted {
                *since = None;
                if !*reported {
                    *reported = true;
                    push_event(events, Event::LayerDemand { track: id, layer: l, wanted: true });
                }
            } else if *reported && now.saturating_duration_since(*since.get_or_insert(now)) >= UNWANTED_AFTER {
                *reported = false;
                push_event(events, Event::LayerDemand { track: id, layer: l, wanted: false });
            }
        }
    }
}

/// How often a core repeats the layer demand of its subscriptions to a track's core when it has
/// not changed (a hand-over lost to a full queue is made good).
const DEMAND_REPEAT: core::time::Duration = core::time::Duration::from_secs(1);

/// Tells the cores that fan tracks out which of their layers this core's subscriptions want,
/// for each track with subscriptions here and its publisher on another core: when it changed,
/// and every [`DEMAND_REPEAT`].
pub(super) fn tell_demand(
    now: Instant,
    shard: super::Shard,
    legs: &Legs,
    tracks: &mut Map<TrackId, Track>,
    handoffs: &mut super::Handoffs,
    stats: &mut CoreStats,
) {
    let here = 1u64 << shard.index.min(63);
    for t in tracks.values_mut().filter(|t| t.owners & here != 0) {
        let Some((port, cascade)) = legs.get(&t.spec.publisher).map(|p| (p.spec.local_port, p.spec.cascade)) else { continue };
        if shard.owns(port) {
            continue;
        }
        let mask = wanted_here(&t.subs, shard.index, cascade);
        if t.demand_told.is_some_and(|(m, at)| m == mask && now.saturating_duration_since(at) < DEMAND_REPEAT) {
            continue;
        }
        if handoffs.push(stats, shard.owner(port), t.spec.publisher, super::HandoffKind::Demand { track: t.spec.id, layers: mask }, &[]) {
            t.demand_told = Some((mask, now));
        }
    }
}

/// Subscriptions of legs without congestion control (no allocator): when the layer they target
/// stopped flowing (the publisher's encoder dropped it), they get the best lower layer that
/// flows, and their target back once it flows again. (A leg with an allocator gets the same from
/// it: a layer that does not flow has no rate and is never chosen.)
pub(super) fn fallback<'a>(legs: &Legs, here: u16, tracks: impl Iterator<Item = &'a mut Track>, events: &mut VecDeque<Event>) {
    for t in tracks {
        let id = t.spec.id;
        let Track { layers, subs, .. } = t;
        // Only this core's subscriptions: it sees their layers flow (handed over or received).
        for sub in subs.iter_mut().filter(|s| s.owner == here && !s.relay) {
            if legs.get(&sub.subscriber).is_none_or(|l| l.downlink.is_some()) {
                continue;
            }
            let target = usize::from(sub.target_layer).min(layers.len().saturating_sub(1));
            let stopped = |l: &crate::table::LayerState| l.activity.last_rx.is_some() && !l.activity.active;
            let want = if layers.get(target).is_some_and(stopped) {
                // The best lower layer that flows; none flows: stay (nothing better to offer).
                layers[..target].iter().rposition(|l| l.activity.active).map(|l| l as u8).or(sub.alloc_layer)
            } else {
                None
            };
            if sub.alloc_layer != want {
                sub.alloc_layer = want;
                push_event(events, Event::LayerAllocated { track: id, subscriber: sub.subscriber, layer: want.or(Some(target as u8)) });
            }
        }
    }
}
