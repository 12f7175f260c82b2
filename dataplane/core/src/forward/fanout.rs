//! Media fan-out: one decrypted publisher packet → one rewritten, re-protected copy per
//! subscription that wants it. Also the other places a packet is sent to a subscriber
//! (retransmissions from the cache, publisher RTX) and keyframe requests upstream, so every
//! output is built by the same [`send_copy`] (see `egress`), and each subscription decides
//! through the same gate (see `select`).

use std::collections::VecDeque;

use super::egress::{Form, publisher_twcc, send_copy};
use super::layers::{Frame, LayerChoice};
use super::select::{self, Media};
use super::{Event, KEYFRAME_REQUEST_INTERVAL, MAX_DATAGRAM, OutBatch, OutMeta, Shard, push_event};
use crate::audio::ActiveSpeakers;
use crate::audio::slot::SlotPacket;
use crate::ids::{LegId, Pt, SeqNo, Ssrc};
use crate::stats::CoreStats;
use crate::table::{Legs, MAX_SPATIAL, Subscription, Track};
use crate::time::Instant;
use crate::verdict::DropReason;
use crate::wire::{codec, dd, rtcp, rtp};

/// What a handler needs besides the tables.
pub(super) struct Ctx<'a> {
    pub now: Instant,
    pub out: &'a mut OutBatch,
    pub stats: &'a mut CoreStats,
    pub events: &'a mut VecDeque<Event>,
    pub shard: super::Shard,
    /// What goes to other cores: keyframe requests and upstream NACKs for tracks another core
    /// fans out, sender reports for subscriptions another core serves.
    pub handoffs: &'a mut super::Handoffs,
    /// The core's pacing (the pool paced legs' waiting packets live in).
    pub pacing: &'a mut crate::downlink::pacer::Pacing,
}

/// A publisher RTP packet, decrypted in `plain`, arriving on `ssrc` (layer `layer` of `track`).
pub(super) fn rtp(ctx: &mut Ctx<'_>, track: &mut Track, legs: &mut Legs, ssrc: Ssrc, layer: u8, is_rtx: bool, plain: &mut [u8]) -> Result<(), DropReason> {
    let pkt = rtp::Packet::new_checked(&*plain).map_err(|_| DropReason::Malformed)?;
    let pt = Pt(pkt.payload_type());
    let (codec, _) = track.codec_of(pt).ok_or(DropReason::UnknownPayloadType)?;
    if is_rtx {
        return publisher_rtx(ctx, track, legs, layer, plain);
    }
    let (seq, ts) = (SeqNo(pkt.sequence_number()), pkt.timestamp());
    let (header_len, marker) = (pkt.header_len(), pkt.marker());
    let state = &mut track.layers[usize::from(layer)];
    // Audio has no keyframes: every packet is a switch point. Video: the payload descriptor's
    // keyframe and layers (an unreadable one is not a keyframe, and bad for the layer choice).
    let (mut keyframe, mut frame) = match codec.video() {
        None => (true, Frame::default()),
        Some(v) => match codec::inspect(v, pkt.payload()) {
            Ok(info) => {
                if info.spatial_layers.is_some() {
                    state.spatial_layers = info.spatial_layers;
                }
                state.ksvc |= info.independent_layer;
                (info.is_keyframe, Frame { ksvc: state.ksvc, ..Frame::of(v, &info, pkt.payload(), state.spatial_layers) })
            }
            Err(_) => (false, Frame::bad()),
        },
    };
    // A dependency descriptor, where the track has one, says the layers instead (the payload's
    // picture ids and TL0PICIDX are still rewritten). One that refers to a structure never
    // received (or lost with its keyframe) is bad, and asks for a keyframe.
    let mut descriptor = None;
    let mut structure_missing = false;
    if let (Some(id), Some(dd)) = (track.spec.dd_ext, state.dd.as_deref_mut())
        && let Some(ext) = pkt.find_extension(id)
    {
        match dd::read(ext, dd.known.as_ref(), &mut dd.fresh) {
            Ok(d) => {
                if d.carries_structure {
                    match &mut dd.known {
                        Some(k) => core::mem::swap(k, &mut dd.fresh),
                        None => dd.known = Some(dd.fresh.clone()),
                    }
                }
                let f = Frame::of_dd(&d, keyframe);
                (keyframe, frame) = (f.keyframe, Frame { picture_id: frame.picture_id, tl0: frame.tl0, whole_picture: frame.whole_picture, ..f });
                if let Some(k) = &dd.known {
                    state.top = (k.max_spatial_id(), k.max_temporal_id());
                }
                descriptor = Some((id, d));
            }
            Err(e) => {
                structure_missing = e.needs_keyframe();
                (keyframe, frame) = (false, Frame::bad());
            }
        }
    }
    if frame.layered && !frame.bad && descriptor.is_none() {
        let spatial = state.spatial_layers.map_or(state.top.0.max(frame.spatial), |n| n - 1);
        state.top = (spatial, state.top.1.max(frame.temporal));
    }
    if frame.layered && !frame.bad && state.top.0 > 0 {
        state.spatial_rates[usize::from(frame.spatial).min(MAX_SPATIAL - 1)].count(plain.len(), ts, keyframe);
    }
    state.rate.count(plain.len(), ts, keyframe && codec.video().is_some());
    if keyframe {
        state.seen_keyframe = true;
    }
    if let Some(cache) = &mut state.cache {
        cache.insert(seq, plain);
    }
    if track.subs.is_empty() {
        return Err(DropReason::NoSubscribers);
    }
    let top = state.top;
    let svc = track.layers.len() == 1 && top.0 > 0;
    let structure = track.layers[usize::from(layer)].dd.as_deref().and_then(|d| d.known.as_ref());
    let media = Media { track: track.spec.id, ssrc, layer, seq, ts, keyframe, clock_rate: track.spec.clock_rate, frame, top, svc, structure };
    let twcc_from = publisher_twcc(legs, track.spec.publisher);
    // Copies of a layered stream carry their own marker bit and picture ids: written into the
    // packet before each copy (the cache took the publisher's before; nothing reads the packet
    // after the fan-out: the audio slots and hand-overs after it take audio only).
    let patched = frame.layered || frame.picture_id.is_some();
    let mut sent = 0usize;
    let mut reason = DropReason::LayerFiltered;
    let mut want_keyframe = if structure_missing { 1 << layer } else { 0 };
    for sub in &mut track.subs {
        // Another core owns the subscriber's leg: it builds this copy (from the packet handed
        // over to it), so the leg's packets leave from one core.
        if sub.owner != ctx.shard.index {
            continue;
        }
        let v = select::gate(ctx, sub, &media);
        want_keyframe |= v.want_keyframe;
        let Some(rewritten) = v.send else {
            if v.reason != DropReason::LayerFiltered {
                reason = v.reason;
            }
            continue;
        };
        let Some(out_pt) = sub.map_pt(pt) else {
            reason = DropReason::UnknownPayloadType;
            continue;
        };
        if patched {
            patch(plain, header_len, &frame, marker || v.marker, v.ids);
        }
        // The active decode targets the subscriber can decode: rewritten in the descriptor where
        // it has the bitmask, else announced in a re-encoded copy when they changed.
        let mut announce = None;
        if let (Some((id, d)), Some(s)) = (descriptor, structure)
            && (frame.dd_mask || d.start_of_frame || d.carries_structure)
        {
            let mask = sub.layers.active_mask(s);
            if frame.dd_mask {
                patch_active_targets(plain, id, &d, mask);
                sub.layers.announced = Some(mask);
            } else {
                announce = to_announce(&d, s, &mut sub.layers, mask).map(|m| (id, d, s, m));
            }
        }
        let result = match announce {
            Some((id, d, s, mask)) => {
                let mut buf = [0u8; MAX_DATAGRAM];
                match with_active_targets(plain, id, &d, s, mask, &mut buf) {
                    Some(len) => {
                        sub.layers.announced = Some(mask);
                        send_copy(ctx, sub, legs, &buf[..len], rewritten, out_pt, None, twcc_from)
                    }
                    None => send_copy(ctx, sub, legs, plain, rewritten, out_pt, None, twcc_from),
                }
            }
            None => send_copy(ctx, sub, legs, plain, rewritten, out_pt, None, twcc_from),
        };
        match result {
            Ok(()) => sent += 1,
            Err(r) => reason = r,
        }
    }
    for l in 0..8u8 {
        if want_keyframe & (1 << l) != 0 {
            request_keyframe(ctx, track, legs, l);
        }
    }
    if sent > 0 { Ok(()) } else { Err(reason) }
}

/// Writes a copy's marker bit, picture id and TL0PICIDX into the packet (`header_len` bytes of
/// RTP header, then the payload `frame` was read from).
fn patch(plain: &mut [u8], header_len: usize, frame: &Frame, marker: bool, ids: (Option<u16>, Option<u8>)) {
    plain[1] = (plain[1] & 0x7f) | if marker { 0x80 } else { 0 };
    let payload = &mut plain[header_len..];
    if let (Some(p), Some(v)) = (frame.picture_id, ids.0) {
        p.write(payload, v);
    }
    if let (Some((at, _)), Some(v)) = (frame.tl0, ids.1) {
        codec::write_tl0picidx(payload, at, v);
    }
}

/// Writes into a retransmission (from the cache or the publisher's RTX) of a packet `frame` was
/// read from the picture id, TL0PICIDX and marker its first copy carried for `sub`. Returns
/// false, touching nothing, when the packet has no ids to rewrite.
pub(super) fn retransmission_ids(frame: &Frame, sub: &Subscription, plain: &mut [u8], marker: bool) -> bool {
    if frame.picture_id.is_none() && frame.tl0.is_none() {
        return false;
    }
    let Ok(header_len) = rtp::Packet::new_checked(&*plain).map(|p| p.header_len()) else { return false };
    let marker = marker || (frame.layered && frame.ends_layer && frame.spatial == sub.layers.spatial);
    patch(plain, header_len, frame, marker, sub.layers.map_ids(frame));
    true
}

/// The layer view of a packet's payload (for a retransmission), not counted anywhere.
pub(super) fn frame_of(codec: Option<codec::VideoCodec>, plain: &[u8]) -> Frame {
    let Some(v) = codec else { return Frame::default() };
    let Ok(pkt) = rtp::Packet::new_checked(plain) else { return Frame::bad() };
    codec::inspect(v, pkt.payload()).map_or_else(|_| Frame::bad(), |i| Frame::of(v, &i, pkt.payload(), None))
}

/// The active decode targets to announce in a copy whose dependency descriptor has no bitmask:
/// `mask` when it differs from what the subscriber was last told (or from "all", which a
/// structure implies), at the start of a frame.
fn to_announce(d: &dd::Descriptor, s: &dd::Structure, layers: &mut LayerChoice, mask: u32) -> Option<u32> {
    let all = s.all_decode_targets();
    let told = if d.carries_structure { all } else { layers.announced.unwrap_or(all) };
    if d.carries_structure {
        layers.announced = Some(all);
    }
    (mask != told && d.start_of_frame).then_some(mask)
}

/// A copy of `plain` whose dependency descriptor (extension `id`) says `mask` is active:
/// re-encoded into `buf`, its length returned (`None` if it does not fit).
fn with_active_targets(plain: &[u8], id: u8, d: &dd::Descriptor, s: &dd::Structure, mask: u32, buf: &mut [u8; MAX_DATAGRAM]) -> Option<usize> {
    let mut with_mask = *d;
    with_mask.active_decode_targets = Some(mask);
    let mut ext = [0u8; 255];
    let n = dd::write(&mut ext, &with_mask, s).ok()?;
    rtp::with_extension_replaced(plain, id, &ext[..n], &mut buf[..]).ok()
}

/// Writes the active decode targets a copy announces into the packet's dependency descriptor
/// (extension `id`, which carries the bitmask).
fn patch_active_targets(plain: &mut [u8], id: u8, d: &dd::Descriptor, mask: u32) {
    if let Ok(mut pkt) = rtp::Packet::new_checked(&mut *plain)
        && let Some(ext) = pkt.find_extension_mut(id)
    {
        dd::set_active_decode_targets(ext, d, mask);
    }
}

/// A decrypted packet of a ranked audio track to the audio slots of the legs in `slot_legs`
/// that this core owns (top-N audio, see [`crate::audio::slot`]); each leg's slots decide with
/// the group's `ranking`; `speaking`: the track's voice activity where its levels are read
/// (its own core; another core gets it with the handed-over packet). Returns how many copies
/// left.
#[allow(clippy::too_many_arguments, reason = "the fan-out's context, the packet and what the slots decide with")]
pub(super) fn to_slots(
    ctx: &mut Ctx<'_>,
    track: &Track,
    legs: &mut Legs,
    slot_legs: &[LegId],
    ranking: &ActiveSpeakers,
    ssrc: Ssrc,
    plain: &[u8],
    speaking: bool,
) -> usize {
    let Ok(pkt) = rtp::Packet::new_checked(plain) else { return 0 };
    let pt = Pt(pkt.payload_type());
    let p = SlotPacket { track: track.spec.id, ssrc, seq: SeqNo(pkt.sequence_number()), ts: pkt.timestamp(), clock_rate: track.spec.clock_rate, speaking };
    let twcc_from = publisher_twcc(legs, track.spec.publisher);
    let mut sent = 0;
    for &leg_id in slot_legs.iter().filter(|&&l| l != track.spec.publisher) {
        // The slots leave the leg while its copy is built (the egress needs the legs).
        let Some(leg) = legs.get_mut(&leg_id) else { continue };
        // Only the worker that owns the subscriber leg feeds its slots: every worker holds the
        // slot state, and two encrypting on one out-SSRC would reuse SRTP packet indexes (and
        // break the slot's sequence). Speakers fanned out by other workers reach it handed over
        // (`HandoffKind::Media`).
        if !ctx.shard.owns(leg.spec.local_port) {
            continue;
        }
        let Some(mut set) = leg.slots.take() else { continue };
        let choice = set.choose(ctx.now, &p, ranking, |t| leg.tracks.contains(&t));
        if let Some(c) = choice {
            let slot = &mut set.slots[c.slot].sub;
            ctx.stats.audio_slot_switches += u64::from(c.switched);
            if let Some(out_pt) = slot.map_pt(pt)
                && send_copy(ctx, slot, legs, plain, c.rewritten, out_pt, Form::Slot(ssrc), twcc_from).is_ok()
            {
                sent += 1;
            }
        }
        if let Some(leg) = legs.get_mut(&leg_id) {
            leg.slots = Some(set);
        }
    }
    sent
}

/// A publisher's RTX packet (RFC 4588 §4): payload = OSN (2 bytes) + original payload. It is
/// turned back into the original packet in place (the header slides over the OSN), kept in the
/// cache, and sent to every subscription on that layer — as RTX where the subscriber has an RTX
/// SSRC, as the original otherwise.
fn publisher_rtx(ctx: &mut Ctx<'_>, track: &mut Track, legs: &mut Legs, layer: u8, plain: &mut [u8]) -> Result<(), DropReason> {
    let state = &track.layers[usize::from(layer)];
    let primary = state.ssrc.ok_or(DropReason::UnknownSsrc)?;
    let (header_len, rtx_pt) = {
        let pkt = rtp::Packet::new_checked(&*plain).map_err(|_| DropReason::Malformed)?;
        // Padding alone (RFC 3550 P bit, no payload): the publisher's probe (libwebrtc probes
        // on RTX when it negotiated RTX).
        if pkt.payload().is_empty() && pkt.padding_len() > 0 {
            return Err(DropReason::Padding);
        }
        if pkt.payload().len() < 2 {
            return Err(DropReason::Malformed);
        }
        (pkt.header_len(), Pt(pkt.payload_type()))
    };
    let media_pt = track.spec.payload_types.iter().find(|p| p.rtx_pt == Some(rtx_pt)).map(|p| p.pt).ok_or(DropReason::UnknownPayloadType)?;
    let osn = SeqNo(u16::from_be_bytes([plain[header_len], plain[header_len + 1]]));
    plain.copy_within(0..header_len, 2);
    let orig = &mut plain[2..];
    {
        let mut pkt = rtp::Packet::new_checked(&mut *orig).map_err(|_| DropReason::Malformed)?;
        pkt.set_ssrc(primary);
        pkt.set_sequence_number(osn.0);
        pkt.set_payload_type(media_pt.0);
    }
    let (ts, orig_marker) = rtp::Packet::new_checked(&*orig).map(|p| (p.timestamp(), p.marker())).map_err(|_| DropReason::Malformed)?;
    let frame = frame_of(track.spec.payload_types.iter().find(|p| p.pt == media_pt).and_then(|p| p.codec.video()), orig);
    if let Some(cache) = &mut track.layers[usize::from(layer)].cache {
        cache.insert(osn, orig);
    }
    let twcc_from = publisher_twcc(legs, track.spec.publisher);
    let mut sent = 0;
    for sub in &mut track.subs {
        // Not a frame the subscription's spatial and temporal layers take, or another core's.
        if sub.owner != ctx.shard.index || sub.paused || !sub.layers.admits(&frame) {
            continue;
        }
        // On the layer: like any packet of it. Switched away since: through the old segment,
        // so a packet lost just before the switch is still repaired.
        let r =
            if sub.current_layer == Some(layer) { sub.rewriter.rewrite(ctx.now, primary, osn, ts) } else { sub.rewriter.map_retransmission(primary, osn, ts) };
        let Some(r) = r else { continue };
        let Some(out_pt) = sub.map_pt(media_pt) else { continue };
        let as_rtx = rtx_pt_for(track_rtx_pt(&track.spec.payload_types, media_pt), sub);
        // Its ids as the subscription's first copy had them, in place (the cache has its copy).
        retransmission_ids(&frame, sub, orig, orig_marker);
        if send_copy(ctx, sub, legs, orig, r, out_pt, as_rtx, twcc_from).is_ok() {
            sent += 1;
        }
    }
    if sent > 0 { Ok(()) } else { Err(DropReason::LayerFiltered) }
}

fn track_rtx_pt(pts: &[crate::table::PayloadSpec], media_pt: Pt) -> Option<Pt> {
    pts.iter().find(|p| p.pt == media_pt).and_then(|p| p.rtx_pt)
}

/// The subscriber's RTX payload type, when it has an RTX SSRC and a mapping for the publisher's.
pub(super) fn rtx_pt_for(publisher_rtx_pt: Option<Pt>, sub: &Subscription) -> Option<Pt> {
    sub.out_rtx_ssrc?;
    sub.map_pt(publisher_rtx_pt?)
}

/// Asks the publisher for a keyframe of `layer` (PLI, RFC 4585 §6.3.1), at most once per
/// [`KEYFRAME_REQUEST_INTERVAL`] per layer (on this core; the publisher's core throttles what
/// every core asks it). Returns whether a request left (or went to the publisher's core).
pub(super) fn request_keyframe(ctx: &mut Ctx<'_>, track: &mut Track, legs: &mut Legs, layer: u8) -> bool {
    let Some(state) = track.layers.get_mut(usize::from(layer)) else { return false };
    let Some(media) = state.ssrc else { return false };
    if state.last_keyframe_request.is_some_and(|t| ctx.now.saturating_duration_since(t) < KEYFRAME_REQUEST_INTERVAL) {
        return false;
    }
    let Some(leg) = legs.get_mut(&track.spec.publisher) else { return false };
    // The publisher's leg is another core's: only that core sends on it (one SRTCP index).
    if !ctx.shard.owns(leg.spec.local_port) {
        let to = ctx.shard.owner(leg.spec.local_port);
        let handed = ctx.handoffs.push(ctx.stats, to, track.spec.publisher, super::HandoffKind::Keyframe { track: track.spec.id, layer }, &[]);
        if handed {
            state.last_keyframe_request = Some(ctx.now);
        }
        return handed;
    }
    let Some((local_port, remote)) = leg.rtcp_path() else { return false };
    let Some(slot) = ctx.out.next_slot() else { return false };
    let Ok(len) = rtcp::write_pli(&mut slot[..], leg.spec.feedback_ssrc, media) else { return false };
    let Ok(out_len) = leg.tx.protect_rtcp(&mut leg.feedback_srtcp, &mut slot[..], len) else { return false };
    ctx.out.commit(OutMeta { local_port, dst: remote, leg: leg.spec.id, len: out_len as u16 }, &mut leg.traffic);
    state.last_keyframe_request = Some(ctx.now);
    ctx.stats.keyframe_requests += 1;
    push_event(ctx.events, Event::KeyframeRequested { track: track.spec.id, layer });
    true
}

/// The cores other than this one that own a leg in `slot_legs` (a bit per core index, the
/// first 64): where a ranked speaker's packet is handed over for their slots.
pub(super) fn slot_cores(shard: Shard, legs: &Legs, slot_legs: &[LegId], publisher: LegId) -> u64 {
    let mut mask = 0u64;
    for leg in slot_legs.iter().filter(|&&l| l != publisher).filter_map(|l| legs.get(l)) {
        let owner = shard.owner(leg.spec.local_port);
        if owner != shard.index && owner < 64 {
            mask |= 1 << owner;
        }
    }
    mask
}
