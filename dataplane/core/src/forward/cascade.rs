//! Layer demand across a cascade leg. A node that receives another node's relays (every layer of
//! a track on a stream of its own, on a cascade leg: [`LegSpec::cascade`]) tells that node, in
//! an RTCP APP packet on the cascade leg, which layers of each such track its subscriptions
//! want. A layer is wanted as soon as a subscription (on any core) wants it, and unwanted once
//! none has for [`UNWANTED_AFTER`]; the mask is told when it changes and every [`REPEAT`] (a
//! lost packet is made good). The other node skips the lanes told unwanted (no copy is built),
//! so the link carries only what is watched behind it, and its own publishers' layer demand
//! ([`crate::forward::Event::LayerDemand`]) includes the far node's wishes.
//!
//! ```text
//!   APP (RFC 3550 §6.7), subtype 0, SSRC: the leg's feedback SSRC, name "SLDM", then per layer:
//!   |                          the layer's SSRC                          |
//!   | flags (bit 0: wanted) |               zero (24 bits)               |
//! ```
//!
//! [`LegSpec::cascade`]: crate::table::LegSpec::cascade

use core::time::Duration;

use super::OutBatch;
use super::downlink::wanted_here;
use crate::downlink::UNWANTED_AFTER;
use crate::ids::{LegId, Ssrc, TrackId};
use crate::table::{Legs, Map, Tables, Track};
use crate::time::Instant;
use crate::wire::rtcp;

/// The APP packet's name.
pub const NAME: [u8; 4] = *b"SLDM";
/// How often an unchanged mask is told again.
pub const REPEAT: Duration = Duration::from_secs(1);
/// The most layers one packet names (a track has at most [`crate::table::spec::MAX_LAYERS`]).
const MAX_ENTRIES: usize = crate::table::spec::MAX_LAYERS;

/// The packet's data for `layers` (SSRC, wanted); returns its length.
pub fn encode(layers: impl Iterator<Item = (Ssrc, bool)>, buf: &mut [u8; 8 * MAX_ENTRIES]) -> usize {
    let mut n = 0;
    for (ssrc, wanted) in layers.take(MAX_ENTRIES) {
        buf[n..n + 4].copy_from_slice(&ssrc.0.to_be_bytes());
        buf[n + 4..n + 8].copy_from_slice(&[u8::from(wanted), 0, 0, 0]);
        n += 8;
    }
    n
}

/// The (SSRC, wanted) entries of a packet's data (a trailing partial entry is ignored).
pub fn decode(data: &[u8]) -> impl Iterator<Item = (Ssrc, bool)> + '_ {
    data.chunks_exact(8).map(|e| (Ssrc(u32::from_be_bytes([e[0], e[1], e[2], e[3]])), e[4] & 1 != 0))
}

/// On the core that fans the tracks out: tells each cascade leg that publishes tracks here which
/// of their layers this node wants (see the module docs), into `out`.
pub(super) fn tell(now: Instant, shard: super::Shard, legs: &mut Legs, tracks: &mut Map<TrackId, Track>, out: &mut OutBatch) {
    let others = !(1u64 << shard.index.min(63));
    for t in tracks.values_mut() {
        let Some(publisher) = legs.get_mut(&t.spec.publisher).filter(|p| p.spec.cascade && shard.owns(p.spec.local_port)) else { continue };
        let mine = wanted_here(&t.subs, shard.index, true);
        let mut mask = 0u8;
        for (l, state) in t.layers.iter_mut().enumerate().take(8) {
            if mine & (1 << l) != 0 || state.wanted_by & others != 0 {
                state.last_wanted = Some(now);
            }
            if state.last_wanted.is_some_and(|at| now.saturating_duration_since(at) < UNWANTED_AFTER) {
                mask |= 1 << l;
            }
        }
        if t.cascade_told.is_some_and(|(m, at)| m == mask && now.saturating_duration_since(at) < REPEAT) {
            continue;
        }
        let mut data = [0u8; 8 * MAX_ENTRIES];
        let entries = t.layers.iter().enumerate().filter_map(|(l, s)| Some((s.ssrc?, mask & (1 << l.min(7)) != 0)));
        let len = encode(entries, &mut data);
        let mut plain = [0u8; 12 + 8 * MAX_ENTRIES];
        let Ok(n) = rtcp::write_app(&mut plain, 0, publisher.spec.feedback_ssrc, NAME, &data[..len]) else { continue };
        if super::rtcp::upstream_to(out, publisher, &plain[..n]) {
            t.cascade_told = Some((mask, now));
        }
    }
}

/// An APP packet from leg `leg_id`: a "SLDM" one sets the relay lanes it names wanted or not (a
/// lane wanted again re-enters at a keyframe, its stream continuous). Other APPs are ignored.
pub(super) fn heard(tables: &mut Tables, leg_id: LegId, app: &rtcp::App<&[u8]>) {
    if app.name() != NAME {
        return;
    }
    for (ssrc, wanted) in decode(app.data()) {
        let Some((track, idx)) = super::rtcp::subscription_of(tables, leg_id, ssrc) else { continue };
        let Some(sub) = tables.track_mut(track).and_then(|t| t.subs.get_mut(idx)) else { continue };
        if !sub.relay || sub.out_ssrc != ssrc {
            continue;
        }
        if sub.unwanted && wanted {
            sub.current_layer = None;
        }
        sub.unwanted = !wanted;
    }
}
