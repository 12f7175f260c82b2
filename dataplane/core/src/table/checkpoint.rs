//! What a dataplane keeps across its own restart: the per-stream state the control plane never
//! had, without which a restarted dataplane cannot carry on an ongoing call.
//!
//! ```text
//!   leg (static keys):  latched remote · per publisher SSRC the highest SRTP index accepted
//!                       (ROC + sequence: the replay window) · per sender the highest SRTCP index
//!                       · the next SRTCP index of Sluice's own feedback
//!   stream (an out-SSRC a subscriber receives): the last SRTP index and timestamp sent, its RTX
//!                       stream's last index, its next SRTCP index, its sender-report counters
//! ```
//!
//! Restored after a restart (once the control plane has sent the tables again, see
//! [`Tables::restore`]):
//! - a publisher's stream accepts only indexes above the checkpointed one: packets captured
//!   before the checkpoint cannot be replayed, and a replay can no longer latch the leg to an
//!   attacker's address (the latched remote comes back too);
//! - its ROC continues, so a stream past a sequence wrap still authenticates (a fresh receive
//!   state assumes ROC 0);
//! - a subscriber's stream continues [`RESUME_MARGIN`] packets after the last checkpointed one,
//!   at the next keyframe, with the timestamp advanced by the time that passed: an SRTP index is
//!   never used twice under one key (the packets sent between the checkpoint and the crash are
//!   covered by the margin), and to the subscriber the restart is a burst of loss.
//!
//! A leg whose keys changed in between (its [`KeyDigest`] differs) starts fresh. WebRTC legs are
//! not checkpointed: their keys come from a DTLS handshake that died with the process, so they
//! need a new one, which a browser starts only with an ICE restart: the ones that were connected
//! are listed, and reported failed with `dataplane_restarted` once the tables name them again
//! (Watch: `webrtc` FAILED), so the signaling restarts ICE at once instead of waiting for the
//! browser's consent to expire. A static-key leg's audio slots are streams like any other (an
//! out-SSRC under the leg's key): they resume the same way, with the next speaker.

use core::time::Duration;

use super::*;
use crate::forward::rewrite::rtp_ticks;
use crate::ids::SeqNo;

/// Packets a restored subscriber stream skips: more than a stream sends between two checkpoints
/// (every 100 ms, so up to ~10,000 packets/s), so no SRTP index is used twice.
pub const RESUME_MARGIN: u16 = 1024;
/// SRTCP indexes a restored sender skips, for the same reason.
pub const RESUME_MARGIN_RTCP: u32 = 256;

/// How far past a checkpointed position a restored stream resumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Margins {
    /// RTP packets (SRTP index and sequence number).
    pub packets: u16,
    /// SRTCP indexes.
    pub rtcp: u32,
}

impl Margins {
    /// After a restart: the checkpoint may be up to a write interval old, so streams resume
    /// [`RESUME_MARGIN`] packets on (a gap a receiver shrugs off, never a reused index).
    pub const RESTART: Self = Self { packets: RESUME_MARGIN, rtcp: RESUME_MARGIN_RTCP };
    /// After a session moved from another node that stopped sending before it was taken: the
    /// position is exact, so streams continue right after it (no gap).
    pub const EXACT: Self = Self { packets: 0, rtcp: 0 };
}

/// A dataplane's checkpoint: every leg's and stream's entry, from all workers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Checkpoint {
    /// Legs (their receive side and latched remote).
    pub legs: Vec<LegCheckpoint>,
    /// Subscriber streams (their send side).
    pub streams: Vec<StreamCheckpoint>,
    /// WebRTC legs that had their DTLS keys: after a restart they are reported as
    /// [`crate::ice::EdgeFailure::DataplaneRestarted`], so the signaling ICE-restarts them.
    #[cfg_attr(feature = "serde", serde(default))]
    pub webrtc: Vec<LegId>,
}

/// One static-key leg's receive side.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct LegCheckpoint {
    /// The leg.
    pub leg: LegId,
    /// Its keys' digest (both directions).
    pub keys: KeyDigest,
    /// The remote latched from its first authenticated packet (none if its spec names one).
    pub remote: Option<SocketAddr>,
    /// Per publisher SSRC: the highest SRTP index accepted.
    pub ingress: Vec<(Ssrc, u64)>,
    /// Per RTCP sender SSRC: the highest SRTCP index accepted.
    pub rtcp_recv: Vec<(Ssrc, u32)>,
    /// The next SRTCP index of the feedback Sluice sends on the leg.
    pub feedback_srtcp: u32,
}

/// One subscriber stream's send side.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct StreamCheckpoint {
    /// The subscriber leg.
    pub subscriber: LegId,
    /// The subscriber leg's keys' digest.
    pub keys: KeyDigest,
    /// The stream's SSRC.
    pub out_ssrc: Ssrc,
    /// The SRTP index of the last packet sent (ROC · 2¹⁶ + sequence number).
    pub index: u64,
    /// The RTP timestamp of the last packet sent.
    pub ts: u32,
    /// Its RTX stream: SSRC and the SRTP index of the last packet sent.
    pub rtx: Option<(Ssrc, u64)>,
    /// The next SRTCP index of its sender reports.
    pub srtcp: u32,
    /// Sender-report counters: packets and payload octets sent.
    pub packets_sent: u32,
    /// Payload octets sent.
    pub octets_sent: u32,
    /// The last VP8/VP9 picture id and TL0PICIDX it carried, so they run on after a restart.
    #[cfg_attr(feature = "serde", serde(default))]
    pub pictures: (Option<u16>, Option<u8>),
}

/// What [`Tables::restore`] put back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// Legs with some receive state restored.
    pub legs: usize,
    /// Subscriber streams resumed.
    pub streams: usize,
    /// Remotes restored (leg, address): they count as latched.
    pub latched: Vec<(LegId, SocketAddr)>,
    /// WebRTC legs connected before the restart and not since: they need an ICE restart.
    pub lost_webrtc: Vec<LegId>,
}

/// The digest that names a leg's keys in a checkpoint: SHA-256 over both directions' digests
/// (and, for a plain-RTP leg, a label of its own: its placeholder material is not its keys).
pub(super) fn keys_digest(spec: &LegSpec) -> KeyDigest {
    let (rx, tx) = (spec.rx.redacted().digest, spec.tx.redacted().digest);
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(b"sluice leg keys v1");
    for d in [rx, tx].into_iter().flatten() {
        ctx.update(&d.0);
    }
    if spec.plain_rtp {
        ctx.update(b"plain");
    }
    let mut out = [0u8; 16];
    out.copy_from_slice(&ctx.finish().as_ref()[..16]);
    KeyDigest(out)
}

impl Tables {
    /// Appends the checkpoint entries of what `owns` says this core keeps: the legs on its ports,
    /// and the streams of the subscriptions of those legs (the core that owns a leg builds its copies).
    pub fn checkpoint(&self, owns: impl Fn(u16) -> bool, out: &mut Checkpoint) {
        for leg in self.legs.values() {
            if !owns(leg.spec.local_port) {
                continue;
            }
            if let Some(edge) = &leg.edge {
                if edge.keys.is_some() {
                    out.webrtc.push(leg.spec.id);
                }
                continue;
            }
            out.legs.push(LegCheckpoint {
                leg: leg.spec.id,
                keys: leg.keys_digest,
                remote: leg.remote.filter(|_| leg.spec.remote.is_none()),
                ingress: leg.ingress.iter().filter_map(|i| Some((i.ssrc, i.recv.window().highest()?))).collect(),
                rtcp_recv: leg.rtcp_recv.iter().filter_map(|(s, st)| Some((*s, st.window().highest()? as u32))).collect(),
                feedback_srtcp: leg.feedback_srtcp.next_index(),
            });
            // Its audio slots: this core feeds them (it owns the leg).
            for slot in leg.slots.iter().flat_map(|set| set.slots.iter()) {
                if let Some(c) = stream_checkpoint(leg.spec.id, leg.keys_digest, &slot.sub) {
                    out.streams.push(c);
                }
            }
        }
        // Subscriptions: the core that owns the subscriber's leg builds its copies, so holds its
        // live state.
        for track in self.tracks.values() {
            for sub in &track.subs {
                let Some(leg) = self.legs.get(&sub.subscriber).filter(|l| l.spec.edge.is_none() && owns(l.spec.local_port)) else { continue };
                if let Some(c) = stream_checkpoint(sub.subscriber, leg.keys_digest, sub) {
                    out.streams.push(c);
                }
            }
        }
    }

    /// Puts a checkpoint's state back into the legs and streams that match it (same id, same
    /// keys) and have not started afresh meanwhile (live state always wins). `elapsed` is the
    /// time since the checkpoint was taken (it advances the resumed streams' timestamps);
    /// `now` is this core's clock.
    pub fn restore(&mut self, ck: &Checkpoint, now: Instant, elapsed: Duration) -> Restored {
        self.restore_with(ck, now, elapsed, Margins::RESTART)
    }

    /// [`Tables::restore`] with the streams resuming `margins` past their positions.
    pub fn restore_with(&mut self, ck: &Checkpoint, now: Instant, elapsed: Duration, margins: Margins) -> Restored {
        let window = self.config.replay_window;
        let mut done = Restored::default();
        for c in &ck.legs {
            let Some(leg) = self.legs.get_mut(&c.leg).filter(|l| l.spec.edge.is_none() && l.keys_digest == c.keys) else { continue };
            let mut any = false;
            if leg.remote.is_none()
                && let Some(remote) = c.remote
            {
                leg.remote = Some(remote);
                done.latched.push((c.leg, remote));
                any = true;
            }
            for &(ssrc, highest) in &c.ingress {
                if let Some(i) = leg.ingress.iter_mut().find(|i| i.ssrc == ssrc && i.recv.window().highest().is_none()) {
                    i.recv = RtpRecvState::resumed(highest, window);
                    any = true;
                }
            }
            for &(ssrc, highest) in &c.rtcp_recv {
                if leg.rtcp_recv(ssrc).is_none() {
                    leg.store_rtcp_recv(ssrc, RtcpRecvState::resumed(highest, window));
                    any = true;
                }
            }
            let next = c.feedback_srtcp.saturating_add(margins.rtcp);
            if leg.feedback_srtcp.next_index() < next {
                leg.feedback_srtcp = RtcpSendState::with_next_index(next);
            }
            done.legs += usize::from(any);
        }
        for id in &ck.webrtc {
            let Some(edge) = self.legs.get_mut(id).and_then(|l| l.edge.as_mut()) else { continue };
            if edge.keys.is_none() && !edge.restart_reported {
                edge.restart_reported = true;
                done.lost_webrtc.push(*id);
            }
        }
        for c in &ck.streams {
            let Some(leg) = self.legs.get_mut(&c.subscriber).filter(|l| l.spec.edge.is_none() && l.keys_digest == c.keys) else { continue };
            // An audio slot (Opus: 48 kHz), else a subscription.
            if let Some(slot) = leg.slots.as_mut().and_then(|set| set.slots.iter_mut().find(|s| s.sub.out_ssrc == c.out_ssrc)) {
                done.streams += usize::from(resume_stream(&mut slot.sub, c, now, elapsed, 48_000, margins));
                continue;
            }
            let Some(&(_, track_id)) = leg.egress.iter().find(|(s, _)| *s == c.out_ssrc) else { continue };
            let Some(track) = self.tracks.get_mut(&track_id) else { continue };
            let clock_rate = track.spec.clock_rate;
            let Some(sub) = track.subs.iter_mut().find(|s| s.subscriber == c.subscriber && s.out_ssrc == c.out_ssrc) else { continue };
            done.streams += usize::from(resume_stream(sub, c, now, elapsed, clock_rate, margins));
        }
        done
    }
}

/// The checkpoint entry of one stream a subscriber leg receives, once it sent something.
fn stream_checkpoint(subscriber: LegId, keys: KeyDigest, sub: &Subscription) -> Option<StreamCheckpoint> {
    let (Some(index), Some((_, ts))) = (sub.srtp.last_index(), sub.rewriter.last_sent()) else { return None };
    Some(StreamCheckpoint {
        subscriber,
        keys,
        out_ssrc: sub.out_ssrc,
        index,
        ts,
        rtx: sub.out_rtx_ssrc.and_then(|r| Some((r, sub.rtx_srtp.last_index()?))),
        srtcp: sub.srtcp.next_index(),
        packets_sent: sub.packets_sent,
        octets_sent: sub.octets_sent,
        pictures: sub.layers.last_ids(),
    })
}

/// Resumes `sub` from its checkpoint entry `margins` on, unless it started afresh meanwhile
/// (live state wins). Returns whether it did.
fn resume_stream(sub: &mut Subscription, c: &StreamCheckpoint, now: Instant, elapsed: Duration, clock_rate: u32, margins: Margins) -> bool {
    if sub.srtp.last_index().is_some() {
        return false;
    }
    let index = c.index + u64::from(margins.packets);
    sub.srtp = RtpSendState::resumed(index);
    sub.rewriter = SeqTsRewriter::resumed(SeqNo(index as u16), c.ts.wrapping_add(rtp_ticks(elapsed, clock_rate)), now);
    sub.layers = crate::forward::layers::LayerChoice::resumed(c.pictures);
    sub.current_layer = None;
    if let Some((rtx_ssrc, rtx_index)) = c.rtx
        && sub.out_rtx_ssrc == Some(rtx_ssrc)
    {
        let i = rtx_index + u64::from(margins.packets);
        sub.rtx_srtp = RtpSendState::resumed(i);
        sub.rtx_seq = (i as u16).wrapping_add(1);
    }
    sub.srtcp = RtcpSendState::with_next_index(c.srtcp.saturating_add(margins.rtcp));
    sub.packets_sent = c.packets_sent;
    sub.octets_sent = c.octets_sent;
    true
}
