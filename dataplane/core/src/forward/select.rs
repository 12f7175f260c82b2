//! The per-subscription gate: whether this packet of this layer goes to this subscription, and
//! how it is rewritten. Every per-subscriber decision ends here as a small value on the
//! [`Subscription`]: pause (the signaling), the target layer (the signaling's ceiling, capped
//! by the leg's bandwidth allocator: [`Subscription::target`]), keyframe-aware switching. The
//! next decisions (SVC layers, per-leg rate limits) plug in here too. Top-N audio is the gate of
//! a leg's audio slots, [`crate::audio::slot::SlotSet::choose`]: a slot is a subscription
//! whose source track changes.
//!
//! ```text
//!   paused ──────────────────────────────────────────────▶ skip (Paused)
//!   target == layer, not on it: keyframe ? switch : skip, ask for a keyframe of the layer
//!                               (a switch down stops repairs of the old layer's losses)
//!   on the layer: rewrite (and ask for the target's keyframe when it differs)
//!   any other layer ─────────────────────────────────────▶ skip (LayerFiltered)
//! ```

use super::fanout::Ctx;
use super::rewrite::Rewritten;
use super::{Event, push_event};
use crate::ids::{SeqNo, Ssrc, TrackId};
use crate::table::Subscription;
use crate::verdict::DropReason;

/// One packet of a layer, as the gate needs it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Media {
    pub track: TrackId,
    pub ssrc: Ssrc,
    pub layer: u8,
    pub seq: SeqNo,
    pub ts: u32,
    pub keyframe: bool,
    pub clock_rate: u32,
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
}

/// Decides for `sub` and switches its layer at a keyframe.
pub(super) fn gate(ctx: &mut Ctx<'_>, sub: &mut Subscription, m: &Media) -> Verdict {
    let skip = |reason, want_keyframe| Verdict { send: None, want_keyframe, reason };
    if sub.paused {
        return skip(DropReason::Paused, 0);
    }
    let target = sub.target();
    let on_layer = sub.current_layer == Some(m.layer);
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
        ctx.stats.layer_switches += 1;
        push_event(ctx.events, Event::LayerSwitched { track: m.track, subscriber: sub.subscriber, layer: m.layer });
        return Verdict { send: Some(r), want_keyframe: 0, reason: DropReason::LayerFiltered };
    }
    if !on_layer {
        return skip(DropReason::LayerFiltered, 0);
    }
    let want_keyframe = if target != m.layer { 1 << target } else { 0 };
    match sub.rewriter.rewrite(ctx.now, m.ssrc, m.seq, m.ts) {
        Some(r) => Verdict { send: Some(r), want_keyframe, reason: DropReason::LayerFiltered },
        None => skip(DropReason::LayerFiltered, want_keyframe),
    }
}
