//! Simulated conference participants: each publishes Opus-sized audio and three-layer simulcast
//! VP8-shaped video as real SRTP with its own keys, and verifies what it receives by decrypting
//! it with its own keys and checking sequence continuity per stream. The cross-process tests, the
//! demo and the programming benchmark run these against the real daemons, the in-process demo
//! against the core.
//!
//! Meeting `m`'s participant `i` sits at [`Seat::new`]`(m, i)`: every id follows [`crate::ids`],
//! its SFU port is `20000 + 64 m + i` ([`PORT_BASE`]), its keys are [`material`] of its leg id.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use sluice_core::ids::{LegId, Pt, Ssrc};
use sluice_core::srtp::Profile;
use sluice_core::table::{Op, SubscriptionSpec};
use sluice_core::wire::{demux, rtcp, rtp};

use crate::endpoint::Endpoint;
use crate::fixture::{PT_OPUS, PT_VP8, PT_VP8_RTX, audio_track, leg_spec, material, subscription, video_track};
use crate::ids::Seat;
use crate::media::Publisher;
pub use crate::media::{AUDIO_MS, FPS, LAYER_PACKETS};
use crate::seq::Continuity;

/// The SFU port of a meeting's participant 0 in meeting 0.
pub const PORT_BASE: u16 = 20_000;

/// One participant's side of a meeting.
#[derive(Debug)]
pub struct Participant {
    /// Where it sits: its ids.
    pub seat: Seat,
    /// Its leg on the SFU.
    pub leg: LegId,
    /// The SFU port of its leg.
    pub port: u16,
    /// Its (simulated) address.
    pub addr: SocketAddr,
    srtp: Endpoint,
    media: Publisher,
    /// Continuity of each stream it receives, by SSRC.
    streams: BTreeMap<u32, Continuity>,
    /// Packets received and verified.
    pub received: u64,
    /// Packets that failed to decrypt (must stay 0).
    pub verify_failures: u64,
    /// Sequence gaps seen on received streams.
    pub gaps: u64,
    /// Packets that arrived behind their stream's highest (reordered or duplicated).
    pub late: u64,
    /// Packets in order whose timestamp ran backwards or jumped more than ten seconds.
    pub ts_errors: u64,
    /// PLIs received (keyframe requests the SFU passed on).
    pub plis_received: u64,
    /// NACKs received: (media SSRC, sequence number) of every packet asked for.
    pub nacks_received: Vec<(u32, u16)>,
    /// The packets a gap skipped, as (SSRC, sequence number): what a receiver would NACK.
    pub missing: Vec<(u32, u16)>,
}

/// Builds meeting `m` of `size` participants: the table ops and the participants. Everyone
/// receives everyone else's audio and video; each participant watches its first `hd_views`
/// others at the top layer and the rest at the lowest. Subscribers see the publishers' own
/// payload types.
pub fn build(m: u32, size: u32, profile: Profile, hd_views: u32) -> (Vec<Op>, Vec<Participant>) {
    let mut ops = Vec::new();
    let mut people = Vec::new();
    for i in 0..size {
        let seat = Seat::new(m, i);
        let leg = seat.leg();
        let port = seat.port(PORT_BASE);
        let (up, down) = (material(profile, leg.0, 0), material(profile, leg.0, 1));
        ops.push(Op::UpsertLeg(leg_spec(leg.0, port, up.clone(), down.clone())));
        ops.push(Op::UpsertTrack(audio_track(seat.audio_track().0, leg.0, seat.audio_ssrc().0)));
        let layers: Vec<(u32, u32)> = (0..LAYER_PACKETS.len()).map(|l| (seat.layer_ssrc(l).0, seat.layer_rtx_ssrc(l).0)).collect();
        ops.push(Op::UpsertTrack(video_track(seat.video_track().0, leg.0, &layers)));
        people.push(Participant {
            seat,
            leg,
            port,
            addr: seat.addr(),
            srtp: Endpoint::new(&up, &down).expect("valid material"),
            media: Publisher::new(seat),
            streams: BTreeMap::new(),
            received: 0,
            verify_failures: 0,
            gaps: 0,
            late: 0,
            ts_errors: 0,
            plis_received: 0,
            nacks_received: Vec::new(),
            missing: Vec::new(),
        });
    }
    let same_pts = vec![(Pt(PT_OPUS), Pt(PT_OPUS)), (Pt(PT_VP8), Pt(PT_VP8)), (Pt(PT_VP8_RTX), Pt(PT_VP8_RTX))];
    for (s, sub) in people.iter().enumerate() {
        for (k, publ) in people.iter().enumerate().filter(|(k, _)| *k != s) {
            let rank = ((k + size as usize - s) % size as usize) as u32;
            let layer = if rank <= hd_views { 2 } else { 0 };
            let (audio, video) = (publ.seat.audio_track(), publ.seat.video_track());
            for (track, rtx) in [(audio, None), (video, Some(sub.seat.out_rtx_ssrc(video).0))] {
                let spec = subscription(sub.leg.0, track.0, sub.seat.out_ssrc(track).0, rtx, layer);
                ops.push(Op::UpsertSubscription(SubscriptionSpec { pt_map: same_pts.clone(), ..spec }));
            }
        }
    }
    (ops, people)
}

impl Participant {
    fn rtcp(&mut self, buf: &[u8]) -> Vec<u8> {
        self.srtp.protect_rtcp(buf)
    }

    /// A receiver report, sent once at the start so the SFU learns this participant's address.
    pub fn hello(&mut self) -> Vec<u8> {
        let mut buf = [0u8; 8];
        let n = rtcp::write_rr(&mut buf, Ssrc(self.leg.0), &[]).expect("fits");
        self.rtcp(&buf[..n])
    }

    /// A receiver report with one report block per stream this participant receives (highest
    /// sequence number seen, no loss), as a browser sends every few seconds.
    pub fn receiver_report(&mut self) -> Vec<u8> {
        let blocks: Vec<rtcp::ReportBlockInfo> = self
            .srtp
            .rtp_ssrcs()
            .take(31)
            .map(|ssrc| rtcp::ReportBlockInfo {
                ssrc: Ssrc(ssrc),
                fraction_lost: 0,
                cumulative_lost: 0,
                highest_seq: u32::from(self.streams.get(&ssrc).and_then(Continuity::highest).map_or(0, |(seq, _)| seq)),
                jitter: 0,
                last_sr: 0,
                delay_since_last_sr: 0,
            })
            .collect();
        let mut buf = vec![0u8; 8 + 24 * blocks.len()];
        let n = rtcp::write_rr(&mut buf, Ssrc(self.leg.0), &blocks).expect("fits");
        self.rtcp(&buf[..n])
    }

    /// A PLI for `media`, an SSRC this participant receives (as its decoder would send on a gap).
    pub fn pli(&mut self, media: u32) -> Vec<u8> {
        let mut buf = [0u8; 12];
        let n = rtcp::write_pli(&mut buf, Ssrc(self.leg.0), Ssrc(media)).expect("fits");
        self.rtcp(&buf[..n])
    }

    /// Joins again (its SFU failed and another took over): what it receives starts afresh,
    /// what it sends goes on.
    pub fn rejoin(&mut self) {
        self.srtp.reset_receive();
        self.streams.clear();
    }

    /// A NACK for `seqs` of `media`, an SSRC this participant receives.
    pub fn nack(&mut self, media: u32, seqs: &[u16]) -> Vec<u8> {
        let mut items = [rtcp::NackItem::default(); 16];
        let n = rtcp::pack_nack_items(seqs.iter().copied(), &mut items).expect("at most 16 items");
        let mut buf = [0u8; 12 + 4 * 16];
        let len = rtcp::write_nack(&mut buf, Ssrc(self.leg.0), Ssrc(media), &items[..n]).expect("fits");
        self.rtcp(&buf[..len])
    }

    /// The SSRCs this participant has received RTP on, ascending.
    pub fn received_ssrcs(&self) -> Vec<u32> {
        self.srtp.rtp_ssrcs().collect()
    }

    /// The audio packet for audio tick `tick`, as SRTP.
    pub fn audio(&mut self, tick: u64) -> Vec<u8> {
        let plain = self.media.audio(tick);
        self.srtp.protect_rtp(&plain)
    }

    /// The packets of the next video frame, all three layers, as SRTP.
    pub fn video_frame(&mut self) -> Vec<Vec<u8>> {
        self.media.video_frame().iter().map(|p| self.srtp.protect_rtp(p)).collect()
    }

    /// Takes a packet the SFU sent to this participant: decrypts it with its own keys (counting
    /// a failure if it does not authenticate), notes sequence gaps, reacts to keyframe requests.
    pub fn receive(&mut self, wire: &[u8]) {
        let mut buf = wire.to_vec();
        if demux::classify(&buf) == demux::PacketClass::Rtcp {
            match self.srtp.unprotect_rtcp(&mut buf) {
                Ok(n) => {
                    self.received += 1;
                    if rtcp::compound(&buf[..n]).flatten().any(|p| p.kind() == rtcp::Kind::Pli) {
                        self.media.request_keyframe();
                        self.plis_received += 1;
                    }
                    for p in rtcp::compound(&buf[..n]).flatten() {
                        if let Ok(nack) = rtcp::Nack::new_checked(p.as_bytes()) {
                            let media = nack.media_ssrc().0;
                            self.nacks_received.extend(nack.sequence_numbers().map(|q| (media, q)));
                        }
                    }
                }
                Err(_) => self.verify_failures += 1,
            }
            return;
        }
        let Ok(n) = self.srtp.unprotect_rtp(&mut buf) else {
            self.verify_failures += 1;
            return;
        };
        self.received += 1;
        let Ok(p) = rtp::Packet::new_checked(&buf[..n]) else { return };
        let clock = if p.payload_type() == PT_OPUS { 48_000 } else { 90_000 };
        let step = self.streams.entry(p.ssrc().0).or_insert_with(|| Continuity::new(10 * clock)).observe(p.sequence_number(), p.timestamp());
        self.gaps += u64::from(step.is_gap());
        if let crate::seq::Order::Gap { missing } = step.order {
            self.missing.extend((0..missing).map(|k| (p.ssrc().0, p.sequence_number().wrapping_sub(missing - k))));
        }
        self.late += u64::from(step.is_late());
        self.ts_errors += u64::from(step.ts_error());
    }
}

/// Feeds each participant what it received (`received[i]` belongs to `people[i]`), then sorts
/// every list (so two runs compare as sets). Fails naming the first participant with a datagram
/// that did not authenticate or a sequence gap.
pub fn verify_all(people: &mut [Participant], received: &mut [Vec<Vec<u8>>]) -> Result<(), String> {
    for (p, got) in people.iter_mut().zip(received.iter_mut()) {
        for d in got.iter() {
            p.receive(d);
        }
        if p.verify_failures > 0 || p.gaps > 0 {
            return Err(format!("participant {:?}: {} datagrams did not authenticate, {} sequence gaps", p.leg, p.verify_failures, p.gaps));
        }
        got.sort();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use sluice_core::forward::{Core, CoreConfig, OutBatch};
    use sluice_core::ids::Generation;
    use sluice_core::table::Delta;
    use sluice_core::time::Instant;

    use super::*;

    /// Two meetings through the core: everyone gets everyone else's media, authenticated and
    /// without gaps; a stranger's keys do not authenticate.
    #[test]
    fn meetings_through_the_core_verify() {
        let mut core = Core::new(CoreConfig::default());
        let (mut ops, mut people) = build(0, 3, Profile::AeadAes128Gcm, 1);
        let (more, others) = build(1, 2, Profile::AesCm128HmacSha1_80, 0);
        ops.extend(more);
        people.extend(others);
        core.apply(Delta { generation: Generation(1), replace_all: false, ops }).expect("the meetings install");
        let mut received: Vec<Vec<Vec<u8>>> = vec![Vec::new(); people.len()];
        let mut out = OutBatch::new(256);
        let mut now = 0;
        let mut feed = |core: &mut Core, people: &[Participant], i: usize, mut pkt: Vec<u8>, received: &mut Vec<Vec<Vec<u8>>>| {
            now += 1_000_000;
            out.clear();
            core.handle_rx(Instant::from_nanos(now), people[i].port, people[i].addr, &mut pkt, &mut out);
            for (meta, bytes) in out.iter() {
                let to = people.iter().position(|p| p.leg == meta.leg).expect("a participant's leg");
                assert_eq!(meta.dst, people[to].addr);
                received[to].push(bytes.to_vec());
            }
        };
        for i in 0..people.len() {
            let hello = people[i].hello();
            feed(&mut core, &people, i, hello, &mut received);
        }
        for tick in 0..12 {
            for i in 0..people.len() {
                let mut pkts = vec![people[i].audio(tick)];
                if tick % 2 == 0 {
                    pkts.extend(people[i].video_frame());
                }
                for p in pkts {
                    feed(&mut core, &people, i, p, &mut received);
                }
            }
        }
        let stranger = received[1].clone();
        verify_all(&mut people, &mut received).expect("every datagram authenticates, no gaps");
        // Meeting 0, participant 0: two others' audio, one at the top layer (5 packets per frame),
        // one at the lowest (1 packet per frame).
        assert_eq!(people[0].received_ssrcs().len(), 4);
        assert_eq!(people[0].received, 2 * 12 + 6 * (5 + 1));
        assert_eq!((people[0].late, people[0].ts_errors), (0, 0));
        // The second meeting is on its own.
        assert_eq!(people[3].received, 12 + 6);
        // Participant 1's datagrams do not authenticate at participant 2.
        let mut wrong = build(0, 3, Profile::AeadAes128Gcm, 1).1.remove(2);
        for d in &stranger {
            wrong.receive(d);
        }
        assert_eq!(wrong.verify_failures, stranger.len() as u64);
        assert!(verify_all(std::slice::from_mut(&mut wrong), &mut [stranger]).is_err());
    }
}
