//! The sink of a lane: every participant's receive side, and the place Sluice's RTCP to the
//! participants arrives (one socket per lane).
//!
//! Per received copy: the subscriber's keys authenticate it (a failure is counted, never
//! trusted); the SRTP replay window finds duplicates; the out-sequence number finds gaps and
//! reordering; the RTP timestamp must not go backwards. A padding-only copy (an adaptive
//! publisher's probe, forwarded by Sluice on its layer) is counted apart and only advances the
//! sequence; a copy of another stream than the one its subscription targets (Sluice's fallback
//! when a layer stops) is counted as such, not as received.
//!
//! RTCP from Sluice: PLI/FIR on a publisher's leg set its keyframe flag for the generator;
//! transport-cc on an adaptive publisher's send leg goes to the generator, whose estimator
//! reads it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::PoisonError;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Sender};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use sluice_core::ids::Ssrc;
use sluice_core::srtp::{RtcpRecvState, RtcpSendState, RtpRecvState, SrtpError, SrtpKeys};
use sluice_core::wire::{demux, rtcp, rtp};
use sluice_dataplane::io::{Backend, LegSocket, Transmit};
use sluice_sim::seq::{Continuity, Order};

use super::load::{LaneConfig, MAX_STEPS, Path, SENT_AT, STEP_AT, Shared, StepCounters, TAG_AT, histogram, pin, stream_tag, thread_cpu_ns};
use super::plan::{Plan, StreamKind};

/// Transport-cc for a publisher: (participant, arrival ns, the RTCP packet).
pub type Feedback = (usize, u64, Vec<u8>);

/// What a sink shares with the rest of its lane.
pub(super) struct Channels {
    /// Transport-cc for the generator's adaptive publishers.
    pub(super) feedback: Sender<Feedback>,
    /// SFU ports of participants programmed after the lane started: (port, participant).
    pub(super) ports: mpsc::Receiver<Vec<(u16, usize)>>,
    /// The lane socket, for participants with addresses of their own ([`super::source`]).
    pub(super) socket: Arc<LegSocket>,
}

/// One subscriber's view of one stream.
struct Receiver {
    subscriber: usize,
    srtp: RtpRecvState,
    /// Its sequence; timestamps may move up to ten seconds of the stream's clock at a time.
    order: Continuity,
    /// Video or screen: a gap asks for a keyframe.
    video: bool,
    /// When this subscriber last sent a PLI for it, ns.
    last_pli: u64,
    /// Whether a copy of it was verified yet.
    got: bool,
}

/// Where the RTCP on a port comes from: a participant's own leg or its send leg.
#[derive(Clone, Copy, PartialEq, Eq)]
enum From {
    Leg(usize),
    SendLeg(usize),
}

/// Moves the subscriber's highest (sequence, timestamp) on with a copy: gaps, reordering and
/// timestamps that run backwards (or jump) are counted in `c`. Returns whether it was a gap.
fn advance(r: &mut Receiver, seq: u16, ts: u32, c: &StepCounters) -> bool {
    let step = r.order.observe(seq, ts);
    if step.order == Order::Late {
        c.reordered.fetch_add(1, Ordering::Relaxed);
    }
    if step.ts_error() {
        c.ts_errors.fetch_add(1, Ordering::Relaxed);
    }
    if step.is_gap() {
        c.seq_gaps.fetch_add(1, Ordering::Relaxed);
    }
    step.is_gap()
}

/// A subscriber's receive state for a stream on a clock of `clock` Hz.
fn receiver(subscriber: usize, clock: u32, video: bool) -> Receiver {
    Receiver { subscriber, srtp: RtpRecvState::new(1024), order: Continuity::new(10 * clock), video, last_pli: 0, got: false }
}

/// The sink thread of a lane.
pub(super) fn sink(
    io: &mut Backend,
    cfg: &LaneConfig,
    members: Vec<usize>,
    mut up_keys: HashMap<usize, (SrtpKeys, RtcpSendState)>,
    plan: &Plan,
    shared: &Shared,
    channels: &Channels,
) {
    let feedback = &channels.feedback;
    let promoted = plan.webinar.as_ref().and_then(|w| w.promotion.as_ref()).map(|p| p.stream);
    let mut first_rx = vec![false; plan.participants.len()];
    pin(cfg.sink_core);
    let cpu0 = thread_cpu_ns();
    let member_set: std::collections::HashSet<usize> = members.iter().copied().collect();
    // Keys each participant decrypts with: its own down keys (the wrong-key impairment corrupts
    // some); in the direct path, the publisher's up keys.
    let keys: HashMap<usize, SrtpKeys> = members
        .iter()
        .filter_map(|&p| {
            let m = &plan.participants[p];
            let mut k = if cfg.path.direct() { m.up.clone() } else { m.down.clone() };
            if p < cfg.impair.wrong_key_legs {
                k.key[0] ^= 0xff;
            }
            Some((p, SrtpKeys::new(k.profile, &k.key, &k.salt).ok()?))
        })
        .collect();
    // Keys of Sluice's RTCP on the send legs.
    let send_keys: HashMap<usize, SrtpKeys> = members
        .iter()
        .filter_map(|&p| {
            let k = &plan.participants[p].send.as_ref()?.down;
            Some((p, SrtpKeys::new(k.profile, &k.key, &k.salt).ok()?))
        })
        .collect();
    let mut rtcp_state: HashMap<u16, RtcpRecvState> = HashMap::new();
    let mut plis: Vec<(usize, u32)> = Vec::new();
    let mut pli_bufs: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
    let lane_port = io.ports().first().copied().unwrap_or(0);
    let mut by_port: HashMap<u16, From> =
        members.iter().filter(|&&p| plan.participants[p].port != 0).map(|&p| (plan.participants[p].port, From::Leg(p))).collect();
    let mut sfu_port: Vec<u16> = plan.participants.iter().map(|m| m.port).collect();
    by_port.extend(members.iter().filter_map(|&p| Some((plan.participants[p].send.as_ref()?.port, From::SendLeg(p)))));
    let mut receivers: HashMap<u32, (Receiver, usize)> = HashMap::new();
    if cfg.path == Path::Sfu {
        for o in plan.out_streams.iter().filter(|o| member_set.contains(&o.subscriber)) {
            let clock = if plan.streams[o.stream].kind == StreamKind::Audio { 48_000 } else { 90_000 };
            let video = plan.streams[o.stream].kind != StreamKind::Audio;
            receivers.insert(o.out_ssrc, (receiver(o.subscriber, clock, video), o.stream));
        }
    } else {
        for (s, st) in plan.streams.iter().enumerate().filter(|(_, st)| member_set.contains(&st.publisher)) {
            let clock = if st.kind == StreamKind::Audio { 48_000 } else { 90_000 };
            receivers.insert(st.ssrc, (receiver(st.publisher, clock, false), s));
        }
    }
    let mut local: Vec<Histogram<u64>> = (0..MAX_STEPS).map(|_| histogram()).collect();
    let mut touched = [false; MAX_STEPS];
    let mut recent = histogram();
    let mut last_merge = Instant::now();
    let mut rtp_seen = 0u64;
    let mut held: Option<Vec<u8>> = None;
    let mut held_port = 0u16;
    let mut scratch = vec![0u8; 2048];
    let imp = cfg.impair;
    while !shared.stop.load(Ordering::Relaxed) {
        let step_now = usize::from(shared.step.load(Ordering::Relaxed));
        let mut process = |src_port: u16, buf: &mut [u8]| {
            let now = shared.now_ns();
            let len = buf.len();
            let from = if cfg.path.direct() { None } else { by_port.get(&src_port).copied() };
            if demux::classify(buf) == demux::PacketClass::Rtcp {
                let (p, k) = match from {
                    Some(From::Leg(p)) => (p, keys.get(&p)),
                    Some(From::SendLeg(p)) => (p, send_keys.get(&p)),
                    None => return,
                };
                let st = rtcp_state.entry(src_port).or_insert_with(|| RtcpRecvState::new(1024));
                if let Some(k) = k
                    && let Ok(n) = k.unprotect_rtcp(st, buf, len)
                {
                    shared.rtcp_received.fetch_add(1, Ordering::Relaxed);
                    for q in rtcp::compound(&buf[..n]).flatten() {
                        match q.kind() {
                            rtcp::Kind::Pli | rtcp::Kind::Fir => {
                                shared.keyframe_requests.fetch_add(1, Ordering::Relaxed);
                                shared.keyframe_due[p].store(true, Ordering::Relaxed);
                            }
                            rtcp::Kind::TransportCc if matches!(from, Some(From::SendLeg(_))) => {
                                shared.transport_cc_received.fetch_add(1, Ordering::Relaxed);
                                let _ = feedback.send((p, now, q.as_bytes().to_vec()));
                            }
                            _ => {}
                        }
                    }
                }
                return;
            }
            let owner = match from {
                Some(From::Leg(p)) => Some(p),
                // Sluice sends no media on a send leg.
                Some(From::SendLeg(_)) => {
                    shared.steps[step_now].misrouted.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                None => None,
            };
            if len < 12 {
                shared.steps[step_now].misrouted.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let ssrc = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
            let Some((r, stream)) = receivers.get_mut(&ssrc) else {
                shared.steps[step_now].misrouted.fetch_add(1, Ordering::Relaxed);
                return;
            };
            if owner.is_some_and(|o| o != r.subscriber) {
                shared.steps[step_now].misrouted.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let Some(key) = keys.get(&r.subscriber) else { return };
            let n = match key.unprotect_rtp(&mut r.srtp, buf, len) {
                Ok(n) => n,
                Err(SrtpError::Replayed | SrtpError::IndexTooOld) => {
                    shared.steps[step_now].duplicates.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(_) => {
                    shared.steps[step_now].auth_failures.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            let Ok(pkt) = rtp::Packet::new_checked(&buf[..n]) else {
                shared.steps[step_now].misrouted.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let payload = pkt.payload();
            let (seq, ts) = (pkt.sequence_number(), pkt.timestamp());
            if pkt.has_padding() && payload.is_empty() {
                let c = &shared.steps[step_now];
                c.padding_received.fetch_add(1, Ordering::Relaxed);
                advance(r, seq, ts, c);
                return;
            }
            if payload.len() < SENT_AT + 8 {
                shared.steps[step_now].misrouted.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let step = usize::from(payload[STEP_AT]);
            let sent = u64::from_be_bytes(payload[SENT_AT..SENT_AT + 8].try_into().unwrap_or_default());
            let c = &shared.steps[step];
            let planned = cfg.path.direct() || payload[TAG_AT] == stream_tag(plan.streams[*stream].kind);
            if planned {
                c.received.fetch_add(1, Ordering::Relaxed);
                c.received_bytes.fetch_add(payload.len() as u64, Ordering::Relaxed);
                if !std::mem::replace(&mut first_rx[r.subscriber], true) {
                    shared.first_rx_ns[r.subscriber].store(now, Ordering::Relaxed);
                }
                if !std::mem::replace(&mut r.got, true) && promoted == Some(*stream) {
                    shared.promotion_listeners.fetch_add(1, Ordering::Relaxed);
                }
            } else {
                c.fallback.fetch_add(1, Ordering::Relaxed);
            }
            let lat = now.saturating_sub(sent).max(100);
            let _ = local[step].record(lat);
            touched[step] = true;
            let _ = recent.record(lat);
            // A decoder that lost part of a frame asks for a keyframe (at most every 300 ms per
            // stream).
            if advance(r, seq, ts, c) && r.video && cfg.path == Path::Sfu && now.saturating_sub(r.last_pli) > 300_000_000 {
                r.last_pli = now;
                plis.push((r.subscriber, ssrc));
            }
        };
        let _ = io.recv_batch(Some(Duration::from_millis(10)), |_, src, buf| {
            let is_rtp = demux::classify(buf) == demux::PacketClass::Rtp;
            if !is_rtp {
                process(src.port(), buf);
                return;
            }
            rtp_seen += 1;
            if imp.drop_every > 0 && rtp_seen.is_multiple_of(imp.drop_every) {
                return;
            }
            if imp.reorder_every > 0 && rtp_seen.is_multiple_of(imp.reorder_every) && held.is_none() {
                held = Some(buf.to_vec());
                held_port = src.port();
                return;
            }
            if imp.duplicate_every > 0 && rtp_seen.is_multiple_of(imp.duplicate_every) {
                let n = buf.len();
                scratch[..n].copy_from_slice(buf);
                process(src.port(), buf);
                process(src.port(), &mut scratch[..n]);
            } else {
                process(src.port(), buf);
            }
            if let Some(mut h) = held.take() {
                process(held_port, &mut h);
            }
        });
        while let Ok(ports) = channels.ports.try_recv() {
            for (port, p) in ports {
                by_port.insert(port, From::Leg(p));
                sfu_port[p] = port;
            }
        }
        for (p, media) in plis.drain(..) {
            // (A viewer whose port its sink does not know yet has none to ask on.)
            let Some((k, st)) = up_keys.get_mut(&p).filter(|_| sfu_port[p] != 0) else { continue };
            let mut b = vec![0u8; 64];
            let Ok(n) = rtcp::write_pli(&mut b, Ssrc(plan.participants[p].leg.0), Ssrc(media)) else { continue };
            let Ok(n) = k.protect_rtcp(st, &mut b, n) else { continue };
            b.truncate(n);
            let dst = SocketAddr::new(cfg.sfu_ip, sfu_port[p]);
            match plan.participants[p].ip {
                // From the participant's own address, the only one its leg accepts.
                Some(ip) => {
                    if super::source::send_from(channels.socket.socket(), ip, dst, &b).is_ok() {
                        shared.plis_sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
                None => pli_bufs.push((dst, b)),
            }
        }
        if !pli_bufs.is_empty() {
            let sent = io.send_batch(pli_bufs.iter().map(|(dst, b)| Transmit { local_port: lane_port, dst: *dst, payload: b }));
            shared.plis_sent.fetch_add(sent as u64, Ordering::Relaxed);
            pli_bufs.clear();
        }
        if last_merge.elapsed() >= Duration::from_millis(100) {
            let mut all = shared.latency.lock().unwrap_or_else(PoisonError::into_inner);
            for (k, h) in local.iter_mut().enumerate() {
                if std::mem::take(&mut touched[k]) {
                    let _ = all[k].add(&*h);
                    h.reset();
                }
            }
            drop(all);
            let _ = shared.recent.lock().unwrap_or_else(PoisonError::into_inner).add(&recent);
            recent.reset();
            shared.cpu_ns[cfg.index].1.store(thread_cpu_ns() - cpu0, Ordering::Relaxed);
            last_merge = Instant::now();
        }
    }
    let mut all = shared.latency.lock().unwrap_or_else(PoisonError::into_inner);
    for (k, h) in local.iter().enumerate().filter(|(k, _)| touched[*k]) {
        let _ = all[k].add(h);
    }
    shared.cpu_ns[cfg.index].1.store(thread_cpu_ns() - cpu0, Ordering::Relaxed);
}
