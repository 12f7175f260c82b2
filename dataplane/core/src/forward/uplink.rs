//! The packets Sluice sends a publisher as the receiver of its media (see [`crate::uplink`] for
//! the state): recorded per authenticated packet in [`record`], sent from
//! [`super::Core::handle_timeout`] by [`run`].
//!
//! ```text
//!   RR compound:  | RR (sender = leg's feedback SSRC, a block per media stream) | SDES CNAME |
//!                 | REMB (legs that negotiated only REMB: see uplink::remb) |
//!   transport-cc: | RTPFB FMT 15 (sender = feedback SSRC, media = first stream) |  (one or more)
//! ```
//! Each is SRTCP-protected with the leg's send key, like every feedback Sluice originates.

use super::{OutBatch, OutMeta};
use crate::ids::{SeqNo, Ssrc};
use crate::stats::CoreStats;
use crate::table::Leg;
use crate::time::Instant;
use crate::uplink::{RR_INTERVAL, RR_INTERVAL_WEBRTC, TWCC_INTERVAL};
use crate::wire::rtcp::{self, ReportBlockInfo};
use crate::wire::rtp;

/// The CNAME of Sluice's feedback SSRCs.
const CNAME: &[u8] = b"sluice";
/// Report blocks in one RR (its count field has 5 bits).
const MAX_BLOCKS: usize = 31;

fn rr_interval(leg: &Leg) -> core::time::Duration {
    let feedback = leg.spec.feedback.twcc_ext.is_some() || leg.spec.feedback.remb;
    if leg.spec.edge.is_some() || feedback { RR_INTERVAL_WEBRTC } else { RR_INTERVAL }
}

/// Counts an authenticated packet of the leg's ingress stream `idx` (`plain` is the decrypted
/// packet) and arms the leg's report timers. Returns the leg's earliest deadline when it armed
/// one, for the core's timer.
pub(super) fn record(now: Instant, leg: &mut Leg, idx: usize, plain: &[u8]) -> Option<Instant> {
    let Ok(pkt) = rtp::Packet::new_checked(plain) else { return None };
    let ingress = &mut leg.ingress[idx];
    if ingress.xdp_gated {
        // The XDP stage dropped the silence before this packet on purpose: not loss.
        ingress.stats.intentional_gap(SeqNo(pkt.sequence_number()));
    }
    ingress.stats.record(now, SeqNo(pkt.sequence_number()), pkt.timestamp(), ingress.clock_rate);
    if let Some(remb) = leg.uplink.remb.as_mut() {
        remb.received(plain.len());
    }
    let mut armed = false;
    if let (Some(id), Some(rec)) = (leg.spec.feedback.twcc_ext, leg.uplink.twcc.as_deref_mut())
        && let Some(seq) = pkt.find_extension(id).and_then(rtp::ext::transport_sequence_number)
    {
        rec.record(seq, now);
        if leg.uplink.next_twcc.is_none() {
            // One interval after the last feedback (a steady cadence), or one from now.
            let due = leg.uplink.last_twcc.map_or(now + TWCC_INTERVAL, |t| (t + TWCC_INTERVAL).max(now));
            leg.uplink.next_twcc = Some(due);
            armed = true;
        }
    }
    if leg.uplink.next_rr.is_none() {
        // The first report after half an interval (RFC 3550 §6.2: the initial delay is half).
        leg.uplink.next_rr = Some(now + rr_interval(leg) / 2);
        armed = true;
    }
    if armed { leg.uplink.deadline() } else { None }
}

/// Sends what is due on every leg this core owns (`owns(local_port)`); returns the next
/// deadline. A full output batch leaves the rest due (the caller flushes and calls again).
pub(super) fn run<'a>(
    now: Instant,
    legs: impl Iterator<Item = &'a mut Leg>,
    owns: impl Fn(u16) -> bool,
    out: &mut OutBatch,
    stats: &mut CoreStats,
) -> Option<Instant> {
    let mut next: Option<Instant> = None;
    for leg in legs {
        if !owns(leg.spec.local_port) {
            continue;
        }
        if leg.uplink.next_rr.is_some_and(|t| t <= now) && receiver_report(now, leg, out) {
            leg.uplink.next_rr = Some(now + rr_interval(leg));
            leg.uplink.rr_sent += 1;
            stats.rtcp_reports_sent += 1;
        }
        if leg.uplink.next_twcc.is_some_and(|t| t <= now) {
            transport_cc(now, leg, out, stats);
        }
        if let Some(d) = leg.uplink.deadline() {
            next = Some(next.map_or(d, |n| n.min(d)));
        }
    }
    next
}

/// Writes the leg's RR compound; false only when the output batch is full (retry). A leg with
/// nowhere to send or nothing to report counts as done.
fn receiver_report(now: Instant, leg: &mut Leg, out: &mut OutBatch) -> bool {
    let Some((local_port, remote)) = leg.rtcp_path() else { return true };
    let mut blocks = [ReportBlockInfo::default(); MAX_BLOCKS];
    let mut media = [Ssrc(0); MAX_BLOCKS];
    let mut n = 0;
    for i in leg.ingress.iter_mut().filter(|i| !i.rtx && i.stats.started()).take(MAX_BLOCKS) {
        blocks[n] = i.stats.report(i.ssrc, now);
        media[n] = i.ssrc;
        n += 1;
    }
    if n == 0 {
        return true;
    }
    let Some(slot) = out.next_slot() else { return false };
    let sender = leg.spec.feedback_ssrc;
    let Ok(rr) = rtcp::write_rr(&mut slot[..], sender, &blocks[..n]) else { return true };
    let Ok(sdes) = rtcp::write_sdes_cname(&mut slot[rr..], sender, CNAME) else { return true };
    let mut len = rr + sdes;
    // REMB in the same compound, for the streams reported (draft-alvestrand-rmcat-remb-03).
    if let Some(remb) = leg.uplink.remb.as_mut() {
        let worst = blocks[..n].iter().map(|b| b.fraction_lost).max().unwrap_or(0);
        let bps = remb.update(now, worst);
        if let Ok(r) = rtcp::write_remb(&mut slot[len..], sender, bps, &media[..n]) {
            len += r;
        }
    }
    let Ok(len) = leg.tx.protect_rtcp(&mut leg.feedback_srtcp, &mut slot[..], len) else { return true };
    out.commit(OutMeta { local_port, dst: remote, leg: leg.spec.id, len: len as u16 }, &mut leg.traffic);
    true
}

fn transport_cc(now: Instant, leg: &mut Leg, out: &mut OutBatch, stats: &mut CoreStats) {
    let Some((local_port, remote)) = leg.rtcp_path() else {
        leg.uplink.next_twcc = None;
        return;
    };
    let media = leg.ingress.iter().find(|i| !i.rtx).map_or(Ssrc(0), |i| i.ssrc);
    let sender = leg.spec.feedback_ssrc;
    let Some(rec) = leg.uplink.twcc.as_deref_mut() else {
        leg.uplink.next_twcc = None;
        return;
    };
    loop {
        let Some(slot) = out.next_slot() else {
            // Full: the rest is still due.
            return;
        };
        let len = match rec.write_feedback(&mut slot[..], sender, media) {
            Ok(Some(len)) => len,
            Ok(None) | Err(_) => break,
        };
        let Ok(len) = leg.tx.protect_rtcp(&mut leg.feedback_srtcp, &mut slot[..], len) else { break };
        out.commit(OutMeta { local_port, dst: remote, leg: leg.spec.id, len: len as u16 }, &mut leg.traffic);
        leg.uplink.twcc_sent += 1;
        stats.twcc_feedback_sent += 1;
    }
    leg.uplink.last_twcc = Some(now);
    leg.uplink.next_twcc = rec.pending().then_some(now + TWCC_INTERVAL);
}
