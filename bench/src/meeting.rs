//! Simulated conference participants: each publishes Opus-sized audio and three-layer simulcast
//! VP8-shaped video as real SRTP with its own keys, and verifies what it receives by decrypting
//! it with its own keys and checking sequence continuity per stream.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};

use sluice_core::ids::{LegId, Pt, Ssrc, TrackId};
use sluice_core::srtp::{Profile, RtcpSendState, RtpRecvState, RtpSendState, SrtpKeys};
use sluice_core::table::{Codec, KeyMaterial, LayerSpec, LegSpec, MediaKind, Op, PayloadSpec, SubscriptionSpec, TrackSpec};
use sluice_core::wire::{demux, rtcp, rtp};

/// Packets per video frame for each simulcast layer (about 200 kbit/s, 600 kbit/s and
/// 1.5 Mbit/s at 30 fps in ~1100-byte packets).
pub const LAYER_PACKETS: [u16; 3] = [1, 2, 5];
/// Video frame rate.
pub const FPS: u64 = 30;
/// Audio packet interval (Opus, 20 ms).
pub const AUDIO_MS: u64 = 20;

const AUDIO_PT: u8 = 111;
const VIDEO_PT: u8 = 96;
const RTX_PT: u8 = 97;

/// One participant's side of a meeting.
#[derive(Debug)]
pub struct Participant {
    /// Its leg on the SFU.
    pub leg: LegId,
    /// The SFU port of its leg.
    pub port: u16,
    /// Its (simulated) address.
    pub addr: SocketAddr,
    up: SrtpKeys,
    down: SrtpKeys,
    up_rtp: HashMap<u32, RtpSendState>,
    up_rtcp: RtcpSendState,
    down_rtp: HashMap<u32, (RtpRecvState, Option<u16>)>,
    down_rtcp: sluice_core::srtp::RtcpRecvState,
    audio_ssrc: u32,
    video_ssrcs: [u32; 3],
    seq: HashMap<u32, u16>,
    frame: u64,
    keyframe_due: bool,
    /// Packets received and verified.
    pub received: u64,
    /// Packets that failed to decrypt (must stay 0).
    pub verify_failures: u64,
    /// Sequence gaps seen on received streams.
    pub gaps: u64,
    /// PLIs received (keyframe requests the SFU passed on).
    pub plis_received: u64,
}

/// Builds meeting `m` of `size` participants (legs `m*1000+1..`): the table ops and the
/// participants. Everyone receives everyone else's audio and video; each participant watches its
/// first `hd_views` others at the top layer and the rest at the lowest.
pub fn build(m: u32, size: u32, profile: Profile, hd_views: u32) -> (Vec<Op>, Vec<Participant>) {
    let mut ops = Vec::new();
    let mut people = Vec::new();
    for i in 0..size {
        let id = m * 1000 + i + 1;
        let port = 20_000 + (m * 64 + i) as u16;
        let up = KeyMaterial::seeded(profile, id * 2);
        let down = KeyMaterial::seeded(profile, id * 2 + 1);
        ops.push(Op::UpsertLeg(LegSpec::new(LegId(id), port, up.clone(), down.clone(), Ssrc(0xfeed_0000 + id))));
        let base = id << 8;
        ops.push(Op::UpsertTrack(TrackSpec {
            id: TrackId(id * 2),
            publisher: LegId(id),
            kind: MediaKind::Audio,
            clock_rate: 48_000,
            layers: vec![LayerSpec { ssrc: Some(Ssrc(base)), rtx_ssrc: None, rid: None }],
            payload_types: vec![PayloadSpec { pt: Pt(AUDIO_PT), codec: Codec::Audio, rtx_pt: None }],
            rid_ext: None,
            repaired_rid_ext: None,
            mid: None,
            audio_level_ext: None,
            speaker_group: None,
        }));
        ops.push(Op::UpsertTrack(TrackSpec {
            id: TrackId(id * 2 + 1),
            publisher: LegId(id),
            kind: MediaKind::Video,
            clock_rate: 90_000,
            layers: (0..3).map(|l| LayerSpec { ssrc: Some(Ssrc(base + 0x10 + 2 * l)), rtx_ssrc: Some(Ssrc(base + 0x11 + 2 * l)), rid: None }).collect(),
            payload_types: vec![PayloadSpec { pt: Pt(VIDEO_PT), codec: Codec::Vp8, rtx_pt: Some(Pt(RTX_PT)) }],
            rid_ext: None,
            repaired_rid_ext: None,
            mid: None,
            audio_level_ext: None,
            speaker_group: None,
        }));
        people.push(Participant {
            leg: LegId(id),
            port,
            addr: SocketAddr::from((Ipv4Addr::new(10, (m >> 8) as u8, m as u8, i as u8 + 1), 40_000)),
            up: SrtpKeys::new(profile, &up.key, &up.salt).expect("valid material"),
            down: SrtpKeys::new(profile, &down.key, &down.salt).expect("valid material"),
            up_rtp: HashMap::new(),
            up_rtcp: RtcpSendState::new(),
            down_rtp: HashMap::new(),
            down_rtcp: sluice_core::srtp::RtcpRecvState::new(128),
            audio_ssrc: base,
            video_ssrcs: [base + 0x10, base + 0x12, base + 0x14],
            seq: HashMap::new(),
            frame: 0,
            keyframe_due: true,
            received: 0,
            verify_failures: 0,
            gaps: 0,
            plis_received: 0,
        });
    }
    for (s, sub) in people.iter().enumerate() {
        for (k, publ) in people.iter().enumerate().filter(|(k, _)| *k != s) {
            let rank = ((k + size as usize - s) % size as usize) as u32;
            let layer = if rank <= hd_views { 2 } else { 0 };
            let out = (sub.leg.0 << 12) + (publ.leg.0 % 1000) * 8;
            for (track, o, rtx) in [(publ.leg.0 * 2, out, None), (publ.leg.0 * 2 + 1, out + 2, Some(Ssrc(out + 3)))] {
                ops.push(Op::UpsertSubscription(SubscriptionSpec {
                    subscriber: sub.leg,
                    track: TrackId(track),
                    out_ssrc: Ssrc(o),
                    out_rtx_ssrc: rtx,
                    pt_map: vec![(Pt(AUDIO_PT), Pt(AUDIO_PT)), (Pt(VIDEO_PT), Pt(VIDEO_PT)), (Pt(RTX_PT), Pt(RTX_PT))],
                    ext_map: vec![],
                    target_layer: layer,
                    paused: false,
                    priority: 0,
                }));
            }
        }
    }
    (ops, people)
}

impl Participant {
    fn next_seq(&mut self, ssrc: u32) -> u16 {
        let s = self.seq.entry(ssrc).or_insert((ssrc as u16).wrapping_mul(7));
        *s = s.wrapping_add(1);
        *s
    }

    fn protect_rtp(&mut self, plain: &mut Vec<u8>) -> Vec<u8> {
        let ssrc = u32::from_be_bytes([plain[8], plain[9], plain[10], plain[11]]);
        let len = plain.len();
        plain.resize(len + 32, 0);
        let st = self.up_rtp.entry(ssrc).or_default();
        let n = self.up.protect_rtp(st, plain, len).expect("room for the tag");
        plain.truncate(n);
        std::mem::take(plain)
    }

    /// A receiver report, sent once at the start so the SFU learns this participant's address.
    pub fn hello(&mut self) -> Vec<u8> {
        let mut buf = vec![0u8; 64];
        let n = rtcp::write_rr(&mut buf, Ssrc(self.leg.0), &[]).expect("fits");
        let m = self.up.protect_rtcp(&mut self.up_rtcp, &mut buf, n).expect("fits");
        buf.truncate(m);
        buf
    }

    /// A receiver report with one report block per stream this participant receives (highest
    /// sequence number seen, no loss), as a browser sends every few seconds.
    pub fn receiver_report(&mut self) -> Vec<u8> {
        let blocks: Vec<rtcp::ReportBlockInfo> = self
            .down_rtp
            .iter()
            .take(31)
            .map(|(&ssrc, (_, last))| rtcp::ReportBlockInfo {
                ssrc: Ssrc(ssrc),
                fraction_lost: 0,
                cumulative_lost: 0,
                highest_seq: u32::from(last.unwrap_or(0)),
                jitter: 0,
                last_sr: 0,
                delay_since_last_sr: 0,
            })
            .collect();
        let mut buf = vec![0u8; 8 + 24 * blocks.len() + 32];
        let n = rtcp::write_rr(&mut buf, Ssrc(self.leg.0), &blocks).expect("fits");
        let m = self.up.protect_rtcp(&mut self.up_rtcp, &mut buf, n).expect("fits");
        buf.truncate(m);
        buf
    }

    /// A PLI for `media`, an SSRC this participant receives (as its decoder would send on a gap).
    pub fn pli(&mut self, media: u32) -> Vec<u8> {
        let mut buf = vec![0u8; 64];
        let n = rtcp::write_pli(&mut buf, Ssrc(self.leg.0), Ssrc(media)).expect("fits");
        let m = self.up.protect_rtcp(&mut self.up_rtcp, &mut buf, n).expect("fits");
        buf.truncate(m);
        buf
    }

    /// The SSRCs this participant has received RTP on.
    pub fn received_ssrcs(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.down_rtp.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// The audio packet for audio tick `tick`.
    pub fn audio(&mut self, tick: u64) -> Vec<u8> {
        let ssrc = self.audio_ssrc;
        let seq = self.next_seq(ssrc);
        let mut p = header(ssrc, seq, (tick * 960) as u32, AUDIO_PT);
        p.extend(std::iter::repeat_n(0x5a, 120));
        self.protect_rtp(&mut p)
    }

    /// The packets of the next video frame, all three layers.
    pub fn video_frame(&mut self) -> Vec<Vec<u8>> {
        let ts = (self.frame * 90_000 / FPS) as u32;
        let key = self.keyframe_due || self.frame.is_multiple_of(FPS * 4);
        self.keyframe_due = false;
        self.frame += 1;
        let mut out = Vec::new();
        for (layer, &n) in LAYER_PACKETS.iter().enumerate() {
            let ssrc = self.video_ssrcs[layer];
            for k in 0..n {
                let seq = self.next_seq(ssrc);
                let mut p = header(ssrc, seq, ts, VIDEO_PT);
                if k == n - 1 {
                    p[1] |= 0x80;
                }
                let descriptor: [u8; 2] = match (k, key) {
                    (0, true) => [0x10, 0x00],
                    (0, false) => [0x10, 0x01],
                    _ => [0x00, 0x55],
                };
                p.extend_from_slice(&descriptor);
                p.extend(std::iter::repeat_n(0xa5, 1098));
                out.push(self.protect_rtp(&mut p));
            }
        }
        out
    }

    /// Takes a packet the SFU sent to this participant: decrypts it with its own keys (counting
    /// a failure if it does not authenticate), notes sequence gaps, reacts to keyframe requests.
    pub fn receive(&mut self, wire: &[u8]) {
        let mut buf = wire.to_vec();
        let len = buf.len();
        match demux::classify(&buf) {
            demux::PacketClass::Rtcp => match self.down.unprotect_rtcp(&mut self.down_rtcp, &mut buf, len) {
                Ok(n) => {
                    self.received += 1;
                    if rtcp::compound(&buf[..n]).flatten().any(|p| p.kind() == rtcp::Kind::Pli) {
                        self.keyframe_due = true;
                        self.plis_received += 1;
                    }
                }
                Err(_) => self.verify_failures += 1,
            },
            _ => {
                let ssrc = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
                let (st, last) = self.down_rtp.entry(ssrc).or_insert_with(|| (RtpRecvState::new(1024), None));
                match self.down.unprotect_rtp(st, &mut buf, len) {
                    Ok(n) => {
                        self.received += 1;
                        if let Ok(p) = rtp::Packet::new_checked(&buf[..n]) {
                            let seq = p.sequence_number();
                            if let Some(prev) = *last
                                && seq.wrapping_sub(prev) > 1
                                && seq.wrapping_sub(prev) < 0x8000
                            {
                                self.gaps += 1;
                            }
                            *last = Some(seq);
                        }
                    }
                    Err(_) => self.verify_failures += 1,
                }
            }
        }
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

fn header(ssrc: u32, seq: u16, ts: u32, pt: u8) -> Vec<u8> {
    let mut v = Vec::with_capacity(1200);
    v.extend_from_slice(&[0x80, pt]);
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(&ts.to_be_bytes());
    v.extend_from_slice(&ssrc.to_be_bytes());
    v
}
