//! Ingress: the receive side of the pipeline, from a datagram on a leg's port to a decrypted
//! packet handed to the fan-out (RTP) or the feedback translation (RTCP), or to the slow path
//! (STUN/DTLS of a WebRTC leg).
//!
//! ```text
//!   leg by local port, remote checked (latched on the first authenticated packet)
//!   ─ the leg's receive budget (LegSpec.rate_limit: packets and bytes per second, before
//!     decryption, so a flood costs no crypto)
//!   RTP:  ingress stream by SSRC (or learned from its RID) ─ SRTP unprotect (replay-checked)
//!         ─ uplink::record (receive statistics, transport-cc arrivals)
//!         ─ audio level (RFC 6464, into the track's level) ─ fanout::rtp
//!   RTCP: SRTCP unprotect (per-sender replay state, stored only once it authenticates)
//!         ─ rtcp::compound
//! ```

use super::*;

/// Why a packet was dropped, from an SRTP failure.
fn srtp_verdict(e: SrtpError) -> DropReason {
    match e {
        SrtpError::AuthFailed => DropReason::AuthFailed,
        SrtpError::Replayed | SrtpError::IndexTooOld => DropReason::Replayed,
        _ => DropReason::Malformed,
    }
}

impl Core {
    /// STUN or DTLS on a WebRTC leg's port: queued for the slow path (whatever its source address:
    /// ICE checks from new addresses are how remotes are learned), within the leg's rate.
    ///
    /// On a shared port the leg is the one with the datagram's remote; from an address no leg
    /// there has, only a STUN binding request is taken, for the WebRTC leg whose local ufrag
    /// its USERNAME names (its MESSAGE-INTEGRITY is the slow path's to check).
    pub(super) fn rx_slow(&mut self, now: Instant, local_port: u16, remote: SocketAddr, buf: &[u8]) -> Result<(), DropReason> {
        let id = match self.tables.leg_at(local_port, remote) {
            Some(id) => id,
            None if self.tables.is_shared_port(local_port) => {
                let ufrag = crate::ice::binding_request_ufrag(buf).ok_or(DropReason::UnknownSource)?;
                self.tables.leg_by_ufrag(local_port, ufrag).ok_or(DropReason::UnknownSource)?
            }
            None => return Err(DropReason::UnknownSource),
        };
        let edge = self.tables.leg_mut(id).and_then(|l| l.edge.as_mut()).ok_or(DropReason::NotMedia)?;
        if buf.len() > MAX_DATAGRAM {
            return Err(DropReason::Malformed);
        }
        if self.slow.len() >= SLOW_QUEUE {
            return Err(DropReason::SlowPathFull);
        }
        if !edge.take_token(now) {
            return Err(DropReason::SlowPathLimited);
        }
        let mut p = SlowDatagram { leg: id, local_port, remote, len: buf.len() as u16, bytes: [0; MAX_DATAGRAM] };
        p.bytes[..buf.len()].copy_from_slice(buf);
        self.slow.push_back(p);
        self.stats.slow_path += 1;
        Ok(())
    }

    /// The receiving leg of a datagram, with the remote address checked (or latched).
    pub(super) fn rx_leg(&self, local_port: u16, remote: SocketAddr) -> Result<LegId, DropReason> {
        let id = self.tables.leg_at(local_port, remote).ok_or(DropReason::UnknownSource)?;
        let leg = self.tables.leg(id).ok_or(DropReason::UnknownSource)?;
        if !leg.receives_media() {
            return Err(if leg.spec.plain_rtp { DropReason::SendOnly } else { DropReason::NotConnected });
        }
        match leg.expected_remote(local_port) {
            Some(r) if r != remote => Err(DropReason::UnknownSource),
            _ => Ok(id),
        }
    }

    /// The receiving leg and the SSRC at byte `at` of the (still encrypted, but cleartext-header)
    /// datagram: the RTP SSRC at 8, the RTCP sender SSRC at 4.
    pub(super) fn rx_leg_and_ssrc(&self, local_port: u16, remote: SocketAddr, buf: &[u8], at: usize) -> Result<(LegId, Ssrc), DropReason> {
        if buf.len() > MAX_DATAGRAM {
            return Err(DropReason::Malformed);
        }
        let leg_id = self.rx_leg(local_port, remote)?;
        match buf.get(at..at + 4) {
            Some(&[a, b, c, d]) => Ok((leg_id, Ssrc(u32::from_be_bytes([a, b, c, d])))),
            _ => Err(DropReason::Malformed),
        }
    }

    /// A datagram the leg's receive budget refused (see [`Leg::within_budget`]): counted by
    /// the caller's error, reported on its first drop of each second.
    fn over_budget(&mut self, leg_id: LegId, report: Option<u64>) -> DropReason {
        if let Some(dropped) = report {
            self.emit(Event::RateLimited { leg: leg_id, dropped });
        }
        DropReason::RateLimited
    }

    /// An authenticated packet arrived on the leg at `local_port`: latch its remote (the RTCP
    /// remote on a separate RTCP port, where RTP's is not touched) and mark the leg active.
    pub(super) fn seen(&mut self, now: Instant, leg_id: LegId, local_port: u16, remote: SocketAddr) {
        let Some(leg) = self.tables.leg_mut(leg_id) else { return };
        let latched = if leg.is_rtcp_port(local_port) {
            // The RTCP component's own remote; not an RTP latch (no event: nobody sends media there).
            if leg.rtcp_remote.is_none() && leg.spec.rtcp.as_deref().is_some_and(|c| c.remote.is_none()) {
                leg.rtcp_remote = Some(remote);
            }
            false
        } else {
            // A shared port's legs are found by their remote: they never latch one.
            let latched = leg.remote.is_none() && !leg.spec.shared_port;
            if latched {
                leg.remote = Some(remote);
            }
            latched
        };
        let activated = leg.activity.touch(now);
        if latched {
            self.emit(Event::RemoteLatched { leg: leg_id, remote });
        }
        if activated {
            self.emit(Event::LegActive { leg: leg_id, remote });
        }
    }

    pub(super) fn rx_rtp(&mut self, now: Instant, local_port: u16, remote: SocketAddr, buf: &mut [u8], out: &mut OutBatch) -> Result<(), DropReason> {
        let (leg_id, ssrc) = self.rx_leg_and_ssrc(local_port, remote, buf, 8)?;
        let leg = self.tables.leg_mut(leg_id).ok_or(DropReason::UnknownSource)?;
        if leg.is_rtcp_port(local_port) {
            // RTP on the RTCP component's port.
            return Err(DropReason::NotMedia);
        }
        if let Err(report) = leg.within_budget(now, buf.len()) {
            return Err(self.over_budget(leg_id, report));
        }
        let len = buf.len();
        let index = leg.ingress_index(ssrc);
        if let Some(idx) = index
            && let Some(ext) = leg.ingress[idx].level_gate
            && !self.decrypt_silence
            && self.silent_unranked(now, leg_id, idx, ext, buf)
        {
            return Err(DropReason::SilentAudio);
        }
        let leg = self.tables.leg_mut(leg_id).ok_or(DropReason::UnknownSource)?;
        let (idx, plain_len) = match index {
            Some(idx) => {
                let plain_len = leg.rx.unprotect_rtp(&mut leg.ingress[idx].recv, buf, len).map_err(srtp_verdict)?;
                (idx, plain_len)
            }
            None => self.learn_ssrc(leg_id, ssrc, buf)?,
        };
        let leg = self.tables.leg_mut(leg_id).ok_or(DropReason::UnknownSource)?;
        leg.traffic.received(len);
        if let Some(d) = uplink::record(now, leg, idx, &buf[..plain_len]) {
            self.next_uplink = Some(self.next_uplink.map_or(d, |t| t.min(d)));
        }
        let ingress = &leg.ingress[idx];
        let (track_id, layer, is_rtx) = (ingress.track, ingress.layer, ingress.rtx);
        self.seen(now, leg_id, local_port, remote);
        let Some((track, legs, slot_legs)) = self.tables.track_legs_and_slots_mut(track_id) else {
            return Err(DropReason::UnknownSsrc);
        };
        if !is_rtx
            && let Some(state) = track.layers.get_mut(usize::from(layer))
            && state.activity.touch(now)
        {
            push_event(&mut self.events, Event::StreamStarted { track: track_id, layer });
        }
        // The RFC 6464 level of an audio track that negotiated it (a packet without one, or with
        // an empty element, leaves the level as it was).
        if !is_rtx
            && let Some(id) = track.spec.audio_level_ext
            && let Some(level) = rtp::Packet::new_checked(&buf[..plain_len]).ok().and_then(|p| p.find_extension(id).and_then(rtp::ext::audio_level))
        {
            track.level.record(level);
            if track.spec.speaker_group.is_some() && self.next_speakers.is_none() {
                self.next_speakers = Some(now + crate::audio::SPEAKER_TICK);
            }
        }
        // Top-N audio: the group's subscribers with audio slots take a ranked speaker's packets.
        let ranking = track.spec.speaker_group.and_then(|g| self.speakers.group(g)).map(|s| s.ranking());
        let ranking = ranking.filter(|_| !is_rtx && !slot_legs.is_empty());
        let speaking = track.level.speaking();
        // Egress ownership: the copies for subscriptions (and audio slots) of legs another core
        // owns are built there, so one leg's packets always leave from one core. The packet goes
        // to each such core once, as decrypted: before the fan-out rewrites it in place.
        let mut cores = 0u64;
        if self.shard.count > 1 {
            cores = track.owners & !(1u64 << self.shard.index.min(63));
            // Only a ranked speaker's packet can feed a slot on another core.
            if ranking.is_some_and(|r| r.as_slice().iter().any(|s| s.track == track_id)) {
                cores |= fanout::slot_cores(self.shard, legs, slot_legs, track.spec.publisher);
            }
            let kind = HandoffKind::Media { track: track_id, ssrc, layer, rtx: is_rtx, speaking };
            for to in (0..64u16).filter(|w| cores & (1 << w) != 0) {
                self.handoffs.push(&mut self.stats, to, track.spec.publisher, kind, &buf[..plain_len]);
            }
        }
        let mut ctx = fan_ctx!(self, now, out);
        let plain = &mut buf[..plain_len];
        let verdict = fanout::rtp(&mut ctx, track, legs, ssrc, layer, is_rtx, plain);
        let Some(ranking) = ranking else { return if cores != 0 { Ok(()) } else { verdict } };
        let sent = fanout::to_slots(&mut ctx, track, legs, slot_legs, ranking, ssrc, plain, speaking);
        if sent > 0 || cores != 0 { Ok(()) } else { verdict }
    }

    /// Top-N audio's drop before decryption (see [`crate::audio`]): whether this still
    /// encrypted packet of ingress stream `idx` is silence of a track only audio slots take and
    /// that is not ranked. A dropped packet is still recorded as received (receive statistics,
    /// transport-cc), so the hole is never reported as loss; every [`SILENT_KEEPALIVE`]-th of a
    /// run is let through to keep the stream's SRTP state current.
    ///
    /// [`SILENT_KEEPALIVE`]: crate::audio::SILENT_KEEPALIVE
    fn silent_unranked(&mut self, now: Instant, leg_id: LegId, idx: usize, ext: u8, buf: &[u8]) -> bool {
        let Some(leg) = self.tables.leg(leg_id) else { return false };
        // A leg whose remote is not known yet learns it from its first authenticated packet: a
        // participant that joins muted must still be reachable at once. And the XDP stage gates
        // this stream already: what reaches us is speech or its keepalive.
        if leg.remote.is_none() || leg.ingress[idx].xdp_gated {
            return false;
        }
        let silent = self.tables.track(leg.ingress[idx].track).is_some_and(|t| {
            t.subs.is_empty()
                && !t.spec.speaker_group.and_then(|g| self.speakers.group(g)).is_some_and(|s| s.ranking().as_slice().iter().any(|sp| sp.track == t.spec.id))
                && rtp::Packet::new_checked(buf).ok().and_then(|p| p.find_extension(ext).and_then(rtp::ext::audio_level)).is_some_and(|l| !t.level.is_speech(l))
        });
        let Some(leg) = self.tables.leg_mut(leg_id) else { return false };
        let run = &mut leg.ingress[idx].silent_run;
        if !silent || *run + 1 >= crate::audio::SILENT_KEEPALIVE {
            *run = 0;
            return false;
        }
        *run += 1;
        if let Some(d) = uplink::record(now, leg, idx, buf) {
            self.next_uplink = Some(self.next_uplink.map_or(d, |t| t.min(d)));
        }
        true
    }

    /// An SSRC the leg never announced: a simulcast layer whose SSRC was not signalled announces
    /// itself with the RID (or repaired-RID, for its RTX) header extension (RFC 8852). The header
    /// is cleartext, so the RID is read before decryption; the SSRC is learned only if the packet
    /// then authenticates with the leg's key, so nobody without the key can claim a layer.
    pub(super) fn learn_ssrc(&mut self, leg_id: LegId, ssrc: Ssrc, buf: &mut [u8]) -> Result<(usize, usize), DropReason> {
        let (track, layer, rtx) = {
            let pkt = rtp::Packet::new_checked(&*buf).map_err(|_| DropReason::Malformed)?;
            let leg = self.tables.leg(leg_id).ok_or(DropReason::UnknownSource)?;
            leg.tracks
                .iter()
                .filter_map(|t| self.tables.track(*t))
                .filter(|t| t.spec.mid.as_ref().is_none_or(|m| m.matches(&pkt)))
                .find_map(|t| {
                    [(t.spec.rid_ext, false), (t.spec.repaired_rid_ext, true)].into_iter().find_map(|(ext, rtx)| {
                        let rid = pkt.find_extension(ext?)?;
                        let layer = t.spec.layers.iter().position(|l| l.rid.as_deref().map(str::as_bytes) == Some(rid))?;
                        let state = &t.layers[layer];
                        let free = if rtx { state.rtx_ssrc.is_none() } else { state.ssrc.is_none() };
                        free.then_some((t.spec.id, layer as u8, rtx))
                    })
                })
                .ok_or(DropReason::UnknownSsrc)?
        };
        let window = self.tables.config().replay_window;
        let leg = self.tables.leg_mut(leg_id).ok_or(DropReason::UnknownSource)?;
        let mut recv = RtpRecvState::new(window);
        let len = buf.len();
        let plain_len = leg.rx.unprotect_rtp(&mut recv, buf, len).map_err(srtp_verdict)?;
        let idx = self.tables.learn_ssrc(leg_id, track, layer, rtx, ssrc, recv).ok_or(DropReason::UnknownSsrc)?;
        self.emit(Event::SsrcLearned { leg: leg_id, track, layer, rtx, ssrc });
        Ok((idx, plain_len))
    }

    pub(super) fn rx_rtcp(&mut self, now: Instant, local_port: u16, remote: SocketAddr, buf: &mut [u8], out: &mut OutBatch) -> Result<(), DropReason> {
        let (leg_id, sender) = self.rx_leg_and_ssrc(local_port, remote, buf, 4)?;
        let window = self.tables.config().replay_window;
        let leg = self.tables.leg_mut(leg_id).ok_or(DropReason::UnknownSource)?;
        if let Err(report) = leg.within_budget(now, buf.len()) {
            return Err(self.over_budget(leg_id, report));
        }
        // Work on a copy: the stored state changes only once the packet authenticated.
        let mut state = leg.rtcp_recv(sender).cloned().unwrap_or_else(|| RtcpRecvState::new(window));
        let len = buf.len();
        let plain_len = leg.rx.unprotect_rtcp(&mut state, buf, len).map_err(srtp_verdict)?;
        leg.store_rtcp_recv(sender, state);
        leg.traffic.received(len);
        self.seen(now, leg_id, local_port, remote);
        let mut ctx = fan_ctx!(self, now, out);
        rtcp::compound(&mut ctx, &mut self.tables, leg_id, &buf[..plain_len])
    }
}
