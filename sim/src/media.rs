//! A publisher's plaintext media: Opus-sized audio and three-layer simulcast VP8-shaped video,
//! on the SSRCs of its [`Seat`], with a sequence counter per SSRC. The packets carry no meaning
//! beyond what an SFU looks at: the RTP header, and the VP8 payload descriptor's start bit and the
//! payload header's keyframe bit ([`vp8_prefix`]).

use std::collections::BTreeMap;

use crate::fixture::{PT_OPUS, PT_VP8, rtp_packet};
use crate::ids::Seat;

/// Packets per video frame for each simulcast layer (about 200 kbit/s, 600 kbit/s and
/// 1.5 Mbit/s at 30 fps in ~1100-byte packets).
pub const LAYER_PACKETS: [u16; 3] = [1, 2, 5];
/// Video frame rate.
pub const FPS: u64 = 30;
/// Audio packet interval (Opus, 20 ms).
pub const AUDIO_MS: u64 = 20;
/// Audio payload bytes.
const AUDIO_BYTES: usize = 120;
/// Video payload bytes after the two of [`vp8_prefix`].
const VIDEO_BYTES: usize = 1098;
/// A keyframe every this many frames, besides the requested ones.
const KEYFRAME_EVERY: u64 = FPS * 4;

/// The first two payload bytes of a VP8 packet:
///
/// ```text
///   descriptor (RFC 7741 §4.2)   payload header, first octet (§4.3; first packet only)
///   |X|R|N|S|R|PID|               |Size0|H| VER |P|
/// ```
///
/// S (0x10) marks the first packet of a frame; there, P (bit 0) is clear on a keyframe, which is
/// what an SFU's keyframe detection reads. Other packets get S clear and a zero second byte.
pub const fn vp8_prefix(first: bool, keyframe: bool) -> [u8; 2] {
    match (first, keyframe) {
        (true, true) => [0x10, 0x00],
        (true, false) => [0x10, 0x01],
        (false, _) => [0x00, 0x00],
    }
}

/// What one participant publishes: its audio and its camera's three layers.
#[derive(Debug)]
pub struct Publisher {
    seat: Seat,
    /// Last sequence number sent, per SSRC.
    seq: BTreeMap<u32, u16>,
    frame: u64,
    keyframe_due: bool,
}

impl Publisher {
    /// The publisher at `seat`; its first frame is a keyframe.
    pub fn new(seat: Seat) -> Self {
        Self { seat, seq: BTreeMap::new(), frame: 0, keyframe_due: true }
    }

    /// Makes the next frame a keyframe (a PLI arrived).
    pub fn request_keyframe(&mut self) {
        self.keyframe_due = true;
    }

    /// The next sequence number of `ssrc`; each SSRC starts somewhere of its own.
    fn next_seq(&mut self, ssrc: u32) -> u16 {
        let s = self.seq.entry(ssrc).or_insert((ssrc as u16).wrapping_mul(7));
        *s = s.wrapping_add(1);
        *s
    }

    /// The audio packet for audio tick `tick` (every [`AUDIO_MS`]).
    pub fn audio(&mut self, tick: u64) -> Vec<u8> {
        let ssrc = self.seat.audio_ssrc().0;
        let seq = self.next_seq(ssrc);
        rtp_packet(ssrc, seq, (tick * 960) as u32, PT_OPUS, false, &[0x5a; AUDIO_BYTES])
    }

    /// The packets of the next video frame, all three layers, lowest first ([`LAYER_PACKETS`]
    /// each, the marker on a layer's last). Keyframes come when requested and every four seconds.
    pub fn video_frame(&mut self) -> Vec<Vec<u8>> {
        let ts = (self.frame * 90_000 / FPS) as u32;
        let key = self.keyframe_due || self.frame.is_multiple_of(KEYFRAME_EVERY);
        self.keyframe_due = false;
        self.frame += 1;
        let mut out = Vec::new();
        for (layer, &n) in LAYER_PACKETS.iter().enumerate() {
            let ssrc = self.seat.layer_ssrc(layer).0;
            for k in 0..n {
                let seq = self.next_seq(ssrc);
                let mut payload = Vec::with_capacity(2 + VIDEO_BYTES);
                payload.extend_from_slice(&vp8_prefix(k == 0, key));
                payload.resize(2 + VIDEO_BYTES, 0xa5);
                out.push(rtp_packet(ssrc, seq, ts, PT_VP8, k + 1 == n, &payload));
            }
        }
        out
    }
}

/// The RFC 6464 level (voice flag, -dBov) participant `i` (1-based) of a meeting of `people`
/// sends in 20-ms frame `frame` in the audio benchmarks' meeting: three talkers at a time (-28
/// dBov, voiced), the next three every 5 s (250 frames); the others quiet (-100 dBov), every
/// fourth noisy (-62 dBov: still not speech).
pub fn talk_pattern_level(i: u32, frame: u64, people: u32) -> (bool, u8) {
    let first = ((frame / 250) * 3 % u64::from(people.max(1))) as u32 + 1;
    if (first..first + 3).contains(&i) {
        (true, 28)
    } else if i.is_multiple_of(4) {
        (false, 62)
    } else {
        (false, 100)
    }
}

#[cfg(test)]
mod tests {
    use sluice_core::wire::rtp;

    use super::*;

    /// (ssrc, seq, ts, marker, first two payload bytes) of each packet.
    fn parse(packets: &[Vec<u8>]) -> Vec<(u32, u16, u32, bool, [u8; 2])> {
        packets
            .iter()
            .map(|b| {
                let r = rtp::Packet::new_checked(&b[..]).expect("RTP");
                (r.ssrc().0, r.sequence_number(), r.timestamp(), r.marker(), [r.payload()[0], r.payload()[1]])
            })
            .collect()
    }

    #[test]
    fn frames_are_layered_numbered_and_keyframed() {
        let seat = Seat::new(2, 5);
        let mut p = Publisher::new(seat);
        let first = parse(&p.video_frame());
        assert_eq!(first.len(), 8);
        let top: Vec<_> = first.iter().filter(|f| f.0 == seat.layer_ssrc(2).0).collect();
        assert_eq!(top.len(), 5);
        assert!(top.windows(2).all(|w| w[1].1 == w[0].1.wrapping_add(1)), "consecutive sequence numbers");
        assert_eq!(top.iter().map(|f| f.3).collect::<Vec<_>>(), [false, false, false, false, true], "marker on the last");
        assert_eq!(top.iter().map(|f| f.4).collect::<Vec<_>>(), [[0x10, 0], [0, 0], [0, 0], [0, 0], [0, 0]], "a keyframe first");
        assert_eq!(first[0].0, seat.layer_ssrc(0).0, "lowest layer first");
        let second = parse(&p.video_frame());
        assert_eq!((second[0].2, second[0].4), (3000, [0x10, 0x01]), "30 fps at 90 kHz; not a keyframe");
        assert_eq!(second[3].1, top[0].1.wrapping_add(5), "each layer counts on");
        p.request_keyframe();
        assert_eq!(parse(&p.video_frame())[0].4, [0x10, 0x00], "a requested keyframe");
        let a = parse(&[p.audio(3), p.audio(4)]);
        assert_eq!((a[0].0, a[0].2, a[1].2), (seat.audio_ssrc().0, 3 * 960, 4 * 960));
        assert_eq!(a[1].1, a[0].1.wrapping_add(1));
    }
}
