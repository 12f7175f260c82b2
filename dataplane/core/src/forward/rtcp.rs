//! RTCP through the SFU (RFC 3550 §6, RFC 4585, RFC 5104):
//!
//! - a publisher's SR is rewritten per subscription (SSRC, RTP timestamp through the same
//!   offset as the media, the subscription's own packet and octet counts) and re-protected;
//! - receiver reports are consumed into the receiving leg's statistics (loss, jitter, RTT from
//!   LSR/DLSR against the SRs we sent), never forwarded raw;
//! - a subscriber's NACK is mapped through its rewriter into the publisher's sequence space and
//!   answered from the retransmission cache; what the cache lacks is NACKed upstream;
//! - PLI/FIR become a (throttled) PLI to the publisher of the layer the subscriber receives.
//!
//! SRTCP replay state is per sender SSRC; it is updated only when a packet authenticates, so
//! forged packets with made-up sender SSRCs cannot evict or reset a real sender's window.

use super::egress::{publisher_twcc, send_copy};
use super::fanout::{Ctx, frame_of, request_keyframe, retransmission_ids, rtx_pt_for};
use super::rewrite::Rewritten;
use super::{Event, MAX_DATAGRAM, OutMeta, push_event};
use crate::ids::{LegId, Pt, SeqNo, Ssrc, TrackId};
use crate::table::{Leg, Legs, Tables, Track};
use crate::time::Instant;
use crate::verdict::DropReason;
use crate::wire::rtcp::{self, Kind};
use crate::wire::rtp;

/// Upstream NACK items gathered from one subscriber NACK, per publisher SSRC.
const MAX_UPSTREAM_NACK: usize = 64;

/// A decrypted RTCP compound packet `plain` from `leg_id`.
pub(super) fn compound(ctx: &mut Ctx<'_>, tables: &mut Tables, leg_id: LegId, plain: &[u8]) -> Result<(), DropReason> {
    let before = ctx.out.len();
    let handed_before = ctx.stats.handoffs_out;
    let mut malformed = false;
    // Feedback arrives on the port of the leg it is from, so on the core that owns that leg:
    // the one that serves its subscriptions (their rewriters, caches and send contexts). What
    // must reach a publisher another core owns (keyframe requests, NACKs the cache cannot
    // answer) and sender reports for other cores' subscribers are handed over from here.
    for pkt in rtcp::compound(plain) {
        let Ok(pkt) = pkt else {
            malformed = true;
            break;
        };
        let bytes = pkt.as_bytes();
        match pkt.kind() {
            Kind::SenderReport => {
                if let Ok(sr) = rtcp::SenderReport::new_checked(bytes) {
                    sender_report(ctx, tables, leg_id, &sr, bytes);
                    for b in sr.report_blocks() {
                        report_block(ctx, tables, leg_id, &b);
                    }
                }
            }
            Kind::ReceiverReport => {
                if let Ok(rr) = rtcp::ReceiverReport::new_checked(bytes) {
                    for b in rr.report_blocks() {
                        report_block(ctx, tables, leg_id, &b);
                    }
                }
            }
            Kind::Nack => {
                if let Ok(nack) = rtcp::Nack::new_checked(bytes) {
                    self::nack(ctx, tables, leg_id, &nack);
                }
            }
            Kind::Pli => {
                if let Ok(pli) = rtcp::Pli::new_checked(bytes) {
                    keyframe_request(ctx, tables, leg_id, pli.media_ssrc());
                }
            }
            Kind::Fir => {
                if let Ok(fir) = rtcp::Fir::new_checked(bytes) {
                    for e in fir.entries() {
                        keyframe_request(ctx, tables, leg_id, e.ssrc);
                    }
                }
            }
            Kind::TransportCc => {
                if let Ok(fb) = rtcp::TransportCc::new_checked(bytes)
                    && let Some(leg) = tables.leg_mut(leg_id)
                {
                    super::downlink::transport_cc(ctx, leg, &fb);
                }
            }
            Kind::App => {
                if let Ok(app) = rtcp::App::new_checked(bytes) {
                    super::cascade::heard(tables, leg_id, &app);
                }
            }
            // SDES, BYE, other APPs, REMB and the rest end here: the SFU runs its own congestion
            // control per leg, so feedback is never forwarded.
            _ => {}
        }
    }
    if ctx.out.len() > before || ctx.stats.handoffs_out > handed_before {
        Ok(())
    } else if malformed {
        Err(DropReason::Malformed)
    } else {
        Err(DropReason::RtcpConsumed)
    }
}

/// The subscription of `leg_id` that receives `out_ssrc`, as (track, index in `track.subs`).
pub(super) fn subscription_of(tables: &Tables, leg_id: LegId, out_ssrc: Ssrc) -> Option<(TrackId, usize)> {
    let leg = tables.leg(leg_id)?;
    let &(_, track_id) = leg.egress.iter().find(|(s, _)| *s == out_ssrc)?;
    let idx = tables.track(track_id)?.sub_of_ssrc(leg_id, out_ssrc)?;
    Some((track_id, idx))
}

fn sender_report(ctx: &mut Ctx<'_>, tables: &mut Tables, leg_id: LegId, sr: &rtcp::SenderReport<&[u8]>, bytes: &[u8]) {
    let ssrc: Ssrc = sr.sender_ssrc();
    let info = sr.sender_info();
    let Some(leg) = tables.leg_mut(leg_id) else { return };
    let Some(ingress) = leg.ingress.iter_mut().find(|i| i.ssrc == ssrc && !i.rtx) else { return };
    // For the DLSR of the receiver reports Sluice sends this publisher.
    ingress.stats.record_sr(ctx.now, info.ntp_timestamp);
    let track_id = ingress.track;
    // Subscriptions and slot legs of other cores get the report handed over (they send there).
    if ctx.shard.count > 1
        && let Some((track, legs, slot_legs)) = tables.track_legs_and_slots_mut(track_id)
    {
        let mut cores = track.owners & !(1u64 << ctx.shard.index.min(63));
        if !slot_legs.is_empty() {
            cores |= super::fanout::slot_cores(ctx.shard, legs, slot_legs, track.spec.publisher);
        }
        for to in (0..64u16).filter(|w| cores & (1 << w) != 0) {
            ctx.handoffs.push(ctx.stats, to, leg_id, super::HandoffKind::Sr { track: track_id }, bytes);
        }
    }
    track_sender_report(ctx, tables, track_id, ssrc, &info);
}

/// A publisher's sender report (`ssrc`, `info`) about `track_id`, rewritten for each of the
/// track's subscriptions and audio slots this core serves (received here, or handed over).
pub(super) fn track_sender_report(ctx: &mut Ctx<'_>, tables: &mut Tables, track_id: TrackId, ssrc: Ssrc, info: &rtcp::SenderInfo) {
    let Some((track, legs, slot_legs)) = tables.track_legs_and_slots_mut(track_id) else { return };
    slot_sender_reports(ctx, legs, slot_legs, track_id, ssrc, info);
    for sub in &mut track.subs {
        if sub.paused || sub.owner != ctx.shard.index {
            continue;
        }
        let Some(ts) = sub.rewriter.map_ts(ssrc, info.rtp_timestamp) else { continue };
        let Some(sub_leg) = legs.get_mut(&sub.subscriber) else { continue };
        let Some((local_port, remote)) = sub_leg.rtcp_path() else { continue };
        let Some(slot) = ctx.out.next_slot() else { return };
        let out_info = rtcp::SenderInfo { ntp_timestamp: info.ntp_timestamp, rtp_timestamp: ts, packet_count: sub.packets_sent, octet_count: sub.octets_sent };
        let Ok(len) = rtcp::write_sr(&mut slot[..], sub.out_ssrc, &out_info, &[]) else { continue };
        let Ok(out_len) = sub_leg.tx.protect_rtcp(&mut sub.srtcp, &mut slot[..], len) else { continue };
        ctx.out.commit(OutMeta { local_port, dst: remote, leg: sub.subscriber, len: out_len as u16 }, &mut sub_leg.traffic);
        // LSR is the middle 32 bits of the NTP timestamp (RFC 3550 §6.4.1).
        sub.last_sr = Some(((info.ntp_timestamp >> 16) as u32, ctx.now));
    }
}

/// A speaker's sender report on each audio slot it feeds now, among the slot legs this core
/// owns: the report through the slot's own timeline (the mapping holds for the current speaker,
/// which is what a receiver syncs), with the slot's counters. Only the core that owns a slot leg
/// sends on it (see `crate::audio::slot`); another core's slots get the report handed over.
pub(super) fn slot_sender_reports(ctx: &mut Ctx<'_>, legs: &mut Legs, slot_legs: &[LegId], track_id: TrackId, ssrc: Ssrc, info: &rtcp::SenderInfo) {
    for &l in slot_legs {
        let Some(leg) = legs.get_mut(&l).filter(|leg| ctx.shard.owns(leg.spec.local_port)) else { continue };
        let Some((local_port, remote)) = leg.rtcp_path() else { continue };
        let Leg { slots, tx, traffic, .. } = &mut **leg;
        for slot in slots.iter_mut().flat_map(|set| set.slots.iter_mut()).filter(|s| s.source == Some((track_id, ssrc))) {
            let sub = &mut slot.sub;
            let Some(ts) = sub.rewriter.map_ts(ssrc, info.rtp_timestamp) else { continue };
            let Some(out) = ctx.out.next_slot() else { return };
            let out_info =
                rtcp::SenderInfo { ntp_timestamp: info.ntp_timestamp, rtp_timestamp: ts, packet_count: sub.packets_sent, octet_count: sub.octets_sent };
            let Ok(len) = rtcp::write_sr(&mut out[..], sub.out_ssrc, &out_info, &[]) else { continue };
            let Ok(out_len) = tx.protect_rtcp(&mut sub.srtcp, &mut out[..], len) else { continue };
            ctx.out.commit(OutMeta { local_port, dst: remote, leg: l, len: out_len as u16 }, traffic);
            sub.last_sr = Some(((info.ntp_timestamp >> 16) as u32, ctx.now));
        }
    }
}

fn report_block(ctx: &mut Ctx<'_>, tables: &mut Tables, leg_id: LegId, block: &rtcp::ReportBlock<&[u8]>) {
    let out_ssrc: Ssrc = block.ssrc();
    let Some((track_id, idx)) = subscription_of(tables, leg_id, out_ssrc) else { return };
    let last_sr = tables.track(track_id).map(|t| t.subs[idx].last_sr).unwrap_or(None);
    let rtt_us = last_sr.and_then(|(lsr, sent_at)| rtt_us(ctx.now, sent_at, lsr, block.last_sr(), block.delay_since_last_sr()));
    let Some(leg) = tables.leg_mut(leg_id) else { return };
    leg.stats.fraction_lost = block.fraction_lost();
    leg.stats.cumulative_lost = block.cumulative_lost().max(0) as u32;
    leg.stats.jitter = block.jitter();
    if rtt_us.is_some() {
        leg.stats.rtt_us = rtt_us;
    }
    leg.stats.reports += 1;
    let stats = leg.stats;
    push_event(ctx.events, Event::LegStats { leg: leg_id, stats });
}

/// RTT from a report block (RFC 3550 §6.4.1): now − (when we sent the SR it names) − DLSR.
fn rtt_us(now: Instant, sent_at: Instant, our_lsr: u32, lsr: u32, dlsr: u32) -> Option<u32> {
    if lsr == 0 || lsr != our_lsr {
        return None;
    }
    let since = now.saturating_duration_since(sent_at).as_micros() as u64;
    let dlsr_us = u64::from(dlsr) * 1_000_000 / 65_536;
    Some(since.saturating_sub(dlsr_us).min(u64::from(u32::MAX)) as u32)
}

fn nack(ctx: &mut Ctx<'_>, tables: &mut Tables, leg_id: LegId, nack: &rtcp::Nack<&[u8]>) {
    let media: Ssrc = nack.media_ssrc();
    let Some((track_id, idx)) = subscription_of(tables, leg_id, media) else { return };
    let Some((track, legs)) = tables.track_and_legs_mut(track_id) else { return };
    if track.subs[idx].out_ssrc != media {
        // A NACK for the RTX stream itself: RFC 4588 does not retransmit retransmissions.
        return;
    }
    let Track { spec, layers, subs, .. } = track;
    let twcc_from = publisher_twcc(legs, spec.publisher);
    let sub = &mut subs[idx];
    // (publisher SSRC, seq) the cache could not answer, grouped per publisher SSRC below.
    let mut missing: [(Ssrc, u16); MAX_UPSTREAM_NACK] = [(Ssrc(0), 0); MAX_UPSTREAM_NACK];
    let mut n_missing = 0;
    let mut buf = [0u8; MAX_DATAGRAM];
    for out_seq in nack.sequence_numbers() {
        let Some((src, in_seq)) = sub.rewriter.to_source_seq(SeqNo(out_seq)) else {
            // Before the segment the rewriter remembers (the layer left by a switch down).
            ctx.stats.nack_stale += 1;
            continue;
        };
        let Some(layer) = layers.iter_mut().find(|l| l.ssrc == Some(src)) else { continue };
        let cached = layer.cache.as_ref().and_then(|c| c.get(in_seq));
        let sent = cached.is_some_and(|plain| {
            let Ok(pkt) = rtp::Packet::new_checked(plain) else { return false };
            let media_pt = Pt(pkt.payload_type());
            // Through the segment that sent it, which after a switch is not the current one.
            let Some(ts) = sub.rewriter.map_retransmission(src, in_seq, pkt.timestamp()).map(|r| r.ts) else {
                return false;
            };
            let Some(out_pt) = sub.map_pt(media_pt) else { return false };
            let payload_type = spec.payload_types.iter().find(|p| p.pt == media_pt);
            let as_rtx = rtx_pt_for(payload_type.and_then(|p| p.rtx_pt), sub);
            // With the picture id and TL0PICIDX the first copy carried: written into a copy
            // (the cache's stays the publisher's), for a packet that has them.
            let frame = frame_of(payload_type.and_then(|p| p.codec.video()), plain);
            let copy = match buf.get_mut(..plain.len()) {
                Some(b) if frame.picture_id.is_some() || frame.tl0.is_some() => {
                    b.copy_from_slice(plain);
                    retransmission_ids(&frame, sub, b, pkt.marker());
                    &*b
                }
                _ => plain,
            };
            send_copy(ctx, sub, legs, copy, Rewritten { seq: SeqNo(out_seq), ts }, out_pt, as_rtx, twcc_from).is_ok()
        });
        if sent {
            ctx.stats.nack_answered += 1;
        } else if n_missing == MAX_UPSTREAM_NACK {
            // No room in this NACK's upstream request: not asked, so not remembered as asked
            // (the subscriber's next NACK for it must still go upstream).
        } else if layer.cache.as_mut().is_some_and(|c| !c.should_ask(in_seq, ctx.now)) {
            ctx.stats.nack_suppressed += 1;
        } else {
            missing[n_missing] = (src, in_seq.0);
            n_missing += 1;
        }
    }
    if n_missing == 0 {
        return;
    }
    // Ask the publisher for the rest, one NACK per publisher SSRC: sent from here when this
    // core owns the publisher's leg, else handed to the core that does (one SRTCP index per leg).
    let missing = &mut missing[..n_missing];
    missing.sort_unstable_by_key(|&(s, q)| (s, q));
    let Some(publisher) = legs.get_mut(&spec.publisher) else { return };
    let here = ctx.shard.owns(publisher.spec.local_port);
    for group in missing.chunk_by(|a, b| a.0 == b.0) {
        let src = group[0].0;
        let mut items = [rtcp::NackItem::default(); MAX_UPSTREAM_NACK];
        let Ok(n) = rtcp::pack_nack_items(group.iter().map(|&(_, q)| q), &mut items) else { continue };
        let mut plain = [0u8; MAX_NACK_BYTES];
        let Ok(len) = rtcp::write_nack(&mut plain[..], publisher.spec.feedback_ssrc, src, &items[..n]) else {
            continue;
        };
        let asked = if here {
            upstream(ctx, publisher, &plain[..len])
        } else {
            let to = ctx.shard.owner(publisher.spec.local_port);
            ctx.handoffs.push(ctx.stats, to, spec.publisher, super::HandoffKind::Upstream, &plain[..len])
        };
        if asked {
            ctx.stats.nack_forwarded += group.len() as u64;
        }
    }
}

/// The bytes of the longest NACK one subscriber NACK can make upstream (header, sender and media
/// SSRC, one item per missing packet).
const MAX_NACK_BYTES: usize = 12 + 4 * MAX_UPSTREAM_NACK;

/// Protects the plain RTCP packet `plain` with the publisher leg's feedback context and sends it
/// to the publisher; returns whether it left.
fn upstream(ctx: &mut Ctx<'_>, publisher: &mut Leg, plain: &[u8]) -> bool {
    upstream_to(ctx.out, publisher, plain)
}

/// [`upstream`] into `out`.
pub(super) fn upstream_to(out: &mut super::OutBatch, publisher: &mut Leg, plain: &[u8]) -> bool {
    let Some((local_port, remote)) = publisher.rtcp_path() else { return false };
    let Some(slot) = out.next_slot() else { return false };
    let Some(dst) = slot.get_mut(..plain.len()) else { return false };
    dst.copy_from_slice(plain);
    let Ok(out_len) = publisher.tx.protect_rtcp(&mut publisher.feedback_srtcp, &mut slot[..], plain.len()) else { return false };
    out.commit(OutMeta { local_port, dst: remote, leg: publisher.spec.id, len: out_len as u16 }, &mut publisher.traffic);
    true
}

/// An upstream RTCP packet another core built for publisher leg `leg`, which this core owns.
pub(super) fn send_upstream(ctx: &mut Ctx<'_>, tables: &mut Tables, leg: LegId, plain: &[u8]) {
    if let Some(publisher) = tables.leg_mut(leg).filter(|l| ctx.shard.owns(l.spec.local_port)) {
        upstream(ctx, publisher, plain);
    }
}

fn keyframe_request(ctx: &mut Ctx<'_>, tables: &mut Tables, leg_id: LegId, media: Ssrc) {
    let Some((track_id, idx)) = subscription_of(tables, leg_id, media) else { return };
    let Some((track, legs)) = tables.track_and_legs_mut(track_id) else { return };
    let sub = &track.subs[idx];
    let layer = sub.current_layer.unwrap_or(sub.target());
    request_keyframe(ctx, track, legs, layer);
}
