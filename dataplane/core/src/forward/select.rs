//! The per-subscription gate: whether this packet of this layer goes to this subscription, and
//! how it is rewritten. Every per-subscriber decision ends here as a small value on the
//! [`Subscription`]: pause (the signaling), the target layer (the signaling's ceiling, capped
//! by the leg's bandwidth allocator: [`Subscription::target`]), keyframe-aware switching, and
//! inside the layer the spatial and temporal layers of an SVC or temporally layered stream
//! ([`super::layers`]: the frames above the subscription's ceilings are skipped without a gap).
//! The next decisions (per-leg rate limits) plug in here too. Top-N audio is the gate of
//! a leg's audio slots, [`crate::audio::slot::SlotSet::choose`]: a slot is a subscription
//! whose source track changes.
//!
//! ```text
//!   paused ──────────────────────────────────────────────▶ skip (Paused)
//!   target == layer, not on it: keyframe ? switch : skip, ask for a keyframe of the layer
//!                               (a switch down stops repairs of the old layer's losses)
//!   on the layer: frame above the spatial/temporal layers in force ▶ skip (LayerFiltered),
//!                 its sequence number (and picture id) closed up
//!                 else rewrite (and ask for the target's keyframe when it differs)
//!   any other layer ─────────────────────────────────────▶ skip (LayerFiltered)
//! ```

use super::fanout::Ctx;
use super::layers::{ALL, Frame};
use super::rewrite::Rewritten;
use super::{Event, push_event};
use crate::ids::{SeqNo, Ssrc, TrackId};
use crate::table::Subscription;
use crate::verdict::DropReason;

/// One packet of a layer, as the gate needs it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Media<'a> {
    pub track: TrackId,
    pub ssrc: Ssrc,
    pub layer: u8,
    pub seq: SeqNo,
    pub ts: u32,
    pub keyframe: bool,
    pub clock_rate: u32,
    /// Its layers inside the stream, and the highest the stream has.
    pub frame: Frame,
    pub top: (u8, u8),
    /// The track is one SVC stream: the allocator's cap (`alloc_layer`) is a spatial layer.
    pub svc: bool,
    /// The dependency-descriptor structure in force, if the stream has one.
    pub structure: Option<&'a crate::wire::dd::Structure>,
}

/// The gate's answer.
#[derive(Clone, Copy, Debug)]
pub(super) struct Verdict {
    /// Send with this rewrite; `None`: skip.
    pub send: Option<Rewritten>,
    /// Layers (bit mask) whose keyframe the subscription waits for.
    pub want_keyframe: u8,
    /// Why it was skipped.
    pub reason: DropReason,
    /// Set the marker bit on the copy (the layers above it are cut).
    pub marker: bool,
    /// The picture id and TL0PICIDX the copy carries.
    pub ids: (Option<u16>, Option<u8>),
}

/// Decides for `sub` and switches its layer at a keyframe.
pub(super) fn gate(ctx: &mut Ctx<'_>, sub: &mut Subscription, m: &Media<'_>) -> Verdict {
    let skip = |reason, want_keyframe| Verdict { send: None, want_keyframe, reason, marker: false, ids: (None, None) };
    if sub.paused || sub.unwanted {
        return skip(DropReason::Paused, 0);
    }
    let target = sub.target();
    let on_layer = sub.current_layer == Some(m.layer);
    let mut ceilings = (sub.max_spatial.unwrap_or(ALL), sub.max_temporal.unwrap_or(ALL));
    if m.svc
        && let Some(a) = sub.alloc_layer
    {
        ceilings.0 = ceilings.0.min(a);
    }
    if target == m.layer && !on_layer {
        if !m.keyframe {
            return skip(DropReason::LayerFiltered, 1 << m.layer);
        }
        let r = sub.rewriter.switch_to(ctx.now, m.ssrc, m.seq, m.ts, m.clock_rate);
        if sub.current_layer.is_some_and(|c| m.layer < c) {
            // Down: the old layer's losses are not repaired (see `forget_previous`).
            sub.rewriter.forget_previous();
        }
        sub.current_layer = Some(m.layer);
        sub.layers.start(ceilings, &m.frame);
        ctx.stats.layer_switches += 1;
        push_event(ctx.events, layer_event(m, sub));
        // A keyframe's first packet is in every layer combination.
        let d = sub.layers.decide(ceilings, m.top, &m.frame, m.structure);
        let ids = sub.layers.rewrite_ids(&m.frame);
        return Verdict { send: Some(r), want_keyframe: 0, reason: DropReason::LayerFiltered, marker: d.marker, ids };
    }
    if !on_layer {
        return skip(DropReason::LayerFiltered, 0);
    }
    let mut want_keyframe = if target != m.layer { 1 << target } else { 0 };
    let d = sub.layers.decide(ceilings, m.top, &m.frame, m.structure);
    if d.want_keyframe {
        want_keyframe |= 1 << m.layer;
    }
    if d.changed {
        push_event(ctx.events, layer_event(m, sub));
    }
    if !d.forward {
        sub.rewriter.skip(m.ssrc, m.seq);
        sub.layers.skipped(&m.frame);
        if m.frame.bad {
            ctx.stats.bad_descriptors += 1;
        } else if m.frame.begins {
            ctx.stats.frames_dropped_by_layer += 1;
        }
        return skip(DropReason::LayerFiltered, want_keyframe);
    }
    match sub.rewriter.rewrite(ctx.now, m.ssrc, m.seq, m.ts) {
        Some(r) => {
            let ids = sub.layers.rewrite_ids(&m.frame);
            Verdict { send: Some(r), want_keyframe, reason: DropReason::LayerFiltered, marker: d.marker, ids }
        }
        None => skip(DropReason::LayerFiltered, want_keyframe),
    }
}

/// The event of a subscription's switch: the simulcast layer, and inside it the spatial and
/// temporal layers in force (for a stream that has them).
fn layer_event(m: &Media<'_>, sub: &Subscription) -> Event {
    let layered = m.frame.layered;
    Event::LayerSwitched {
        track: m.track,
        subscriber: sub.subscriber,
        layer: m.layer,
        spatial: layered.then(|| sub.layers.spatial.min(m.top.0)),
        temporal: layered.then(|| sub.layers.temporal.min(m.top.1)),
    }
}
