//! Egress: the one place an output packet to a subscriber is built. Every copy (fan-out,
//! retransmission from the cache, publisher RTX, probe padding) goes through here:
//!
//! ```text
//!   header copied into the slot ─ SSRC/seq/ts/PT rewritten, extension ids remapped, and the
//!   publisher's transport-wide sequence number replaced by the subscriber leg's own (on the
//!   worker that owns the leg) ─ SRTP protect with the subscriber leg's key ─ commit
//!   ─ the leg's send history records (seq, now, size) for its congestion control
//! ```

use super::OutMeta;
use super::fanout::Ctx;
use super::rewrite::Rewritten;
use crate::ids::{LegId, Pt, SeqNo, Ssrc};
use crate::table::{Leg, Legs, Subscription};
use crate::verdict::DropReason;
use crate::wire::rtp;

/// The publisher leg's transport-wide-cc extension id, if it negotiated one (the element the
/// egress re-stamps).
pub(super) fn publisher_twcc(legs: &Legs, publisher: LegId) -> Option<u8> {
    legs.get(&publisher).and_then(|l| l.spec.feedback.twcc_ext)
}

/// What kind of copy [`send_copy`] builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Form {
    /// The packet as it is (rewritten).
    Media,
    /// An RTX packet (RFC 4588) with this payload type, on the subscriber's RTX SSRC, carrying
    /// the rewritten sequence number as OSN.
    Rtx(Pt),
    /// An audio slot's copy: this publisher SSRC goes first in the CSRC list.
    Slot(Ssrc),
}

impl From<Option<Pt>> for Form {
    fn from(as_rtx: Option<Pt>) -> Self {
        as_rtx.map_or(Form::Media, Form::Rtx)
    }
}

/// Writes one copy of the plaintext packet `plain` for `sub` into the next output slot:
/// rewritten header, remapped extensions, protected with the subscriber leg's key, in the
/// [`Form`] asked for.
#[expect(clippy::too_many_arguments, reason = "one copy's every input; a struct would be built per copy on the packet path")]
pub(super) fn send_copy(
    ctx: &mut Ctx<'_>,
    sub: &mut Subscription,
    legs: &mut Legs,
    plain: &[u8],
    rewritten: Rewritten,
    out_pt: Pt,
    form: impl Into<Form>,
    twcc_from: Option<u8>,
) -> Result<(), DropReason> {
    let form = form.into();
    let as_rtx = match form {
        Form::Rtx(pt) => Some(pt),
        _ => None,
    };
    let csrc = match form {
        Form::Slot(c) => Some(c),
        _ => None,
    };
    let leg = legs.get_mut(&sub.subscriber).ok_or(DropReason::NoDestination)?;
    if !leg.sends_media() {
        return Err(DropReason::NotConnected);
    }
    let remote = leg.remote.ok_or(DropReason::NoDestination)?;
    let overhead = leg.tx.rtp_overhead();
    let slot = ctx.out.next_slot().ok_or(DropReason::OutputFull)?;
    let extra = match form {
        Form::Media => 0,
        Form::Rtx(_) => 2,
        Form::Slot(_) => 4,
    };
    let len = plain.len() + extra;
    if len + overhead > slot.len() {
        return Err(DropReason::Malformed);
    }
    let header_len = rtp::Packet::new_checked(plain).map_err(|_| DropReason::Malformed)?.header_len();
    // The leg's own transport-wide sequence number, where it has congestion control and this
    // worker owns it (copies made elsewhere are not in its send history).
    let stamp = match (twcc_from, leg.spec.feedback.twcc_ext, leg.downlink.as_deref()) {
        (Some(from), Some(to), Some(dl)) if ctx.shard.owns(leg.spec.local_port) => Some((from, to, dl.history.next_seq())),
        _ => None,
    };
    // The common case (not RTX, no padding: the rewrite needs only the header) encrypts straight
    // from `plain` into the slot, without copying the payload in first.
    if as_rtx.is_none() && plain[0] & 0x20 == 0 {
        let out_header = copy_header(&plain[..header_len], csrc, slot)?;
        let stamped = rewrite_header(&mut slot[..out_header], sub.out_ssrc, rewritten.seq, rewritten.ts, out_pt, &sub.ext_map, stamp)?;
        let out_len = leg.tx.protect_rtp_from(&mut sub.srtp, &mut slot[..], out_header, &plain[header_len..]).map_err(|_| DropReason::Malformed)?;
        emit(ctx, leg, OutMeta { local_port: leg.spec.local_port, dst: remote, leg: sub.subscriber, len: out_len as u16 }, stamped);
        sub.packets_sent = sub.packets_sent.wrapping_add(1);
        sub.octets_sent = sub.octets_sent.wrapping_add((plain.len() - header_len) as u32);
        return Ok(());
    }
    let out_header = copy_header(&plain[..header_len], csrc, slot)?;
    if as_rtx.is_some() {
        slot[header_len..header_len + 2].copy_from_slice(&rewritten.seq.0.to_be_bytes());
    }
    let body = if as_rtx.is_some() { header_len + 2 } else { out_header };
    slot[body..len].copy_from_slice(&plain[header_len..]);
    let (ssrc, seq, pt, srtp_state) = match (as_rtx, sub.out_rtx_ssrc) {
        (Some(rtx_pt), Some(rtx_ssrc)) => {
            let seq = SeqNo(sub.rtx_seq);
            sub.rtx_seq = sub.rtx_seq.wrapping_add(1);
            (rtx_ssrc, seq, rtx_pt, &mut sub.rtx_srtp)
        }
        _ => (sub.out_ssrc, rewritten.seq, out_pt, &mut sub.srtp),
    };
    let stamped = rewrite_header(&mut slot[..len], ssrc, seq, rewritten.ts, pt, &sub.ext_map, stamp)?;
    let out_len = leg.tx.protect_rtp(srtp_state, &mut slot[..], len).map_err(|_| DropReason::Malformed)?;
    emit(ctx, leg, OutMeta { local_port: leg.spec.local_port, dst: remote, leg: sub.subscriber, len: out_len as u16 }, stamped);
    if as_rtx.is_none() {
        sub.packets_sent = sub.packets_sent.wrapping_add(1);
        sub.octets_sent = sub.octets_sent.wrapping_add((plain.len() - header_len) as u32);
    }
    Ok(())
}

/// Copies the publisher's RTP header into `slot`, with `csrc` first in its CSRC list when
/// given; returns the copy's header length.
fn copy_header(header: &[u8], csrc: Option<Ssrc>, slot: &mut [u8]) -> Result<usize, DropReason> {
    match csrc {
        Some(c) => crate::audio::slot::header_with_csrc(header, c, slot).ok_or(DropReason::Malformed),
        None => {
            slot[..header.len()].copy_from_slice(header);
            Ok(header.len())
        }
    }
}

/// Commits the copy built in the batch's next slot, or queues it on its leg's pacer: on the
/// worker that owns a leg with congestion control, while packets wait or the pace bucket is
/// empty (see [`crate::downlink::pacer`]). A stamped copy is recorded in the send history now
/// and gets its real departure time when it leaves.
fn emit(ctx: &mut Ctx<'_>, leg: &mut Leg, meta: OutMeta, stamped: bool) {
    let Some(dl) = leg.downlink.as_deref_mut().filter(|_| ctx.shard.owns(leg.spec.local_port)) else {
        ctx.out.commit(meta, &mut leg.traffic);
        return;
    };
    if stamped {
        dl.sent(ctx.now, usize::from(meta.len), false);
    }
    if dl.pacer.admit(ctx.now, usize::from(meta.len)) {
        ctx.out.commit(meta, &mut leg.traffic);
        return;
    }
    let twcc_seq = stamped.then(|| dl.history.last_seq());
    if ctx.pacing.queue(ctx.now, &mut dl.pacer, ctx.out.next_bytes(usize::from(meta.len)), meta, twcc_seq) {
        ctx.stats.packets_paced += 1;
    } else {
        ctx.stats.pace_overflow += 1;
        ctx.out.commit(meta, &mut leg.traffic);
    }
}

/// Rewrites the RTP header at the start of `pkt` (the whole packet, or the header alone when the
/// packet has no padding) for a subscriber: SSRC, sequence number, timestamp, payload type and
/// header-extension ids, and the transport-wide sequence number `stamp` (publisher id,
/// subscriber id, value) when given. Returns whether it stamped.
fn rewrite_header(
    pkt: &mut [u8],
    ssrc: Ssrc,
    seq: SeqNo,
    ts: u32,
    pt: Pt,
    ext_map: &rtp::ExtensionIdMap,
    stamp: Option<(u8, u8, u16)>,
) -> Result<bool, DropReason> {
    let mut pkt = rtp::Packet::new_checked(pkt).map_err(|_| DropReason::Malformed)?;
    pkt.set_ssrc(ssrc);
    pkt.set_sequence_number(seq.0);
    pkt.set_timestamp(ts);
    pkt.set_payload_type(pt.0);
    pkt.remap_extensions_stamping(ext_map, stamp).map_err(|_| DropReason::Malformed)
}
