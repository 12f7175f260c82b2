//! Transport-wide congestion control feedback (draft-holmer-rmcat-transport-wide-cc-extensions-01
//! §3.1): the view that decodes it ([`TransportCc`]) and the writer Sluice uses as the receiver of
//! a publisher's media ([`write_transport_cc`]).

use super::{FEEDBACK_FCI, FMT_TRANSPORT_CC, PT_RTPFB, check_typed, write_header};
use crate::wire::{Ssrc, WireError, be16, be24, be32, set_be16, set_be24, set_be32};

// ---------------------------------------------------------------------------------------------
// Transport-wide CC feedback (draft-holmer-rmcat-transport-wide-cc-extensions-01 §3.1),
// RTPFB FMT 15
//
// |V=2|P|  FMT=15 |    PT=205     |           length              |  0
// |                     SSRC of packet sender                     |  4
// |                      SSRC of media source                     |  8
// |      base sequence number     |      packet status count      | 12
// |                 reference time                | fb pkt. count | 16
// |          packet chunk         |         packet chunk          | 20 ...
// |         recv delta            |  recv delta   | ...
// ---------------------------------------------------------------------------------------------

view! {
    /// A transport-wide congestion control feedback packet: header fields, the raw chunks and
    /// deltas ([`TransportCc::chunks_and_deltas`]) and their decoding ([`TransportCc::packets`]).
    TransportCc
}
feedback_ssrcs!(TransportCc);

impl<T: AsRef<[u8]>> TransportCc<T> {
    /// Checks RTPFB FMT 15 and that the fixed fields fit.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let body_end = check_typed(buffer.as_ref(), PT_RTPFB, Some(FMT_TRANSPORT_CC), FEEDBACK_FCI + 8)?;
        Ok(TransportCc { buffer, body_end })
    }

    /// Transport-wide sequence number of the first packet reported.
    pub fn base_sequence_number(&self) -> u16 {
        be16(self.buf(), 12)
    }

    /// Number of packets whose status is reported.
    pub fn packet_status_count(&self) -> u16 {
        be16(self.buf(), 14)
    }

    /// Reference time, 24-bit signed, in multiples of 64 ms.
    pub fn reference_time(&self) -> i32 {
        ((be24(self.buf(), 16) << 8) as i32) >> 8
    }

    /// Feedback packet count, for detecting lost feedback.
    pub fn feedback_packet_count(&self) -> u8 {
        self.buf()[19]
    }

    /// The packet chunks and receive deltas, undecoded.
    pub fn chunks_and_deltas(&self) -> &[u8] {
        &self.buf()[FEEDBACK_FCI + 8..self.body_end]
    }

    /// Decodes the packet status chunks and receive deltas: one item per reported packet, in
    /// sequence order. Yields one `Err(BadLength)` and stops if chunks or deltas run out.
    pub fn packets(&self) -> TwccPackets<'_> {
        let data = self.chunks_and_deltas();
        let count = self.packet_status_count();
        // Deltas start after the last chunk, so find it first (RFC-draft §3.1.1: chunks come
        // first, then all deltas). Each chunk covers at least one status except a zero-length
        // run, and each step consumes two bytes, so this is bounded by the data length.
        let mut covered = 0u32;
        let mut pos = 0usize;
        while covered < u32::from(count) && pos + 2 <= data.len() {
            covered += u32::from(twcc_chunk_len(be16(data, pos)));
            pos += 2;
        }
        TwccPackets { data, chunk_pos: 0, delta_pos: pos, seq: self.base_sequence_number(), left: count, chunk: 0, chunk_left: 0, chunk_idx: 0, done: false }
    }
}

// Packet status chunks (draft-holmer-rmcat-transport-wide-cc-extensions-01 §3.1.3, §3.1.4):
//
//  run length:     |T=0| S (2) |        run length (13)          |
//  status vector:  |T=1|S=0| fourteen 1-bit symbols (0 = not received, 1 = small delta) |
//                  |T=1|S=1| seven 2-bit symbols                                       |
//
// Symbols: 0 not received, 1 received with a 1-byte unsigned delta, 2 received with a 2-byte
// signed delta, 3 reserved. Deltas are in 250 us ticks.

fn twcc_chunk_len(chunk: u16) -> u16 {
    match chunk >> 14 {
        0 | 1 => chunk & 0x1FFF,
        2 => 14,
        _ => 7,
    }
}

/// Reception status of one packet in a transport-cc feedback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TwccStatus {
    /// Not received.
    NotReceived,
    /// Received, 1-byte unsigned delta.
    SmallDelta,
    /// Received, 2-byte signed delta.
    LargeDelta,
    /// The reserved symbol 3; no delta follows.
    Reserved,
}

/// One packet reported in a transport-cc feedback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TwccPacket {
    /// Transport-wide sequence number.
    pub seq: u16,
    /// Its status.
    pub status: TwccStatus,
    /// Receive delta in 250 us ticks, for received packets.
    pub delta: Option<i16>,
}

/// Iterator over the packets of a transport-cc feedback; see [`TransportCc::packets`].
#[derive(Debug, Clone)]
pub struct TwccPackets<'a> {
    data: &'a [u8],
    chunk_pos: usize,
    delta_pos: usize,
    seq: u16,
    left: u16,
    chunk: u16,
    chunk_left: u16,
    chunk_idx: u16,
    done: bool,
}

impl TwccPackets<'_> {
    fn fail(&mut self) -> Option<Result<TwccPacket, WireError>> {
        self.done = true;
        Some(Err(WireError::BadLength))
    }
}

impl Iterator for TwccPackets<'_> {
    type Item = Result<TwccPacket, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.left == 0 {
            return None;
        }
        while self.chunk_left == 0 {
            if self.chunk_pos + 2 > self.data.len() {
                return self.fail();
            }
            self.chunk = be16(self.data, self.chunk_pos);
            self.chunk_pos += 2;
            self.chunk_left = twcc_chunk_len(self.chunk);
            self.chunk_idx = 0;
        }
        let symbol = match self.chunk >> 14 {
            0 | 1 => (self.chunk >> 13) & 0b11,
            2 => (self.chunk >> (13 - self.chunk_idx)) & 0b1,
            _ => (self.chunk >> (12 - 2 * self.chunk_idx)) & 0b11,
        };
        self.chunk_idx += 1;
        self.chunk_left -= 1;
        let (status, delta) = match symbol {
            0 => (TwccStatus::NotReceived, None),
            1 => {
                let Some(&d) = self.data.get(self.delta_pos) else {
                    return self.fail();
                };
                self.delta_pos += 1;
                (TwccStatus::SmallDelta, Some(i16::from(d)))
            }
            2 => {
                if self.delta_pos + 2 > self.data.len() {
                    return self.fail();
                }
                let d = be16(self.data, self.delta_pos) as i16;
                self.delta_pos += 2;
                (TwccStatus::LargeDelta, Some(d))
            }
            _ => (TwccStatus::Reserved, None),
        };
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        self.left -= 1;
        Some(Ok(TwccPacket { seq, status, delta }))
    }
}

/// A receive delta that fits the 1-byte symbol (0..=255 ticks of 250 µs).
fn is_small(delta: i16) -> bool {
    (0..=255).contains(&delta)
}

/// The status symbol of one packet: 0 not received, 1 small delta, 2 large delta.
fn symbol(d: Option<i16>) -> u16 {
    match d {
        None => 0,
        Some(d) if is_small(d) => 1,
        Some(_) => 2,
    }
}

/// The chunks that encode `deltas`' symbols, each yielded as (chunk, statuses it covers). Runs
/// of 14 or more equal symbols become run-length chunks; the rest go into status vectors, the
/// 1-bit one when the next 14 symbols have no large delta, else the 2-bit one (7 symbols).
fn chunks(deltas: &[Option<i16>]) -> impl Iterator<Item = u16> + '_ {
    let mut i = 0usize;
    core::iter::from_fn(move || {
        if i >= deltas.len() {
            return None;
        }
        let first = symbol(deltas[i]);
        let run = deltas[i..].iter().take(0x1FFF).take_while(|d| symbol(**d) == first).count();
        if run >= 14 || run == deltas.len() - i {
            i += run;
            return Some((first << 13) | run as u16);
        }
        let next14 = &deltas[i..deltas.len().min(i + 14)];
        if next14.iter().all(|d| symbol(*d) < 2) {
            let mut c = 0x8000u16;
            for (k, d) in next14.iter().enumerate() {
                c |= symbol(*d) << (13 - k);
            }
            i += next14.len();
            return Some(c);
        }
        let next7 = &deltas[i..deltas.len().min(i + 7)];
        let mut c = 0xC000u16;
        for (k, d) in next7.iter().enumerate() {
            c |= symbol(*d) << (12 - 2 * k);
        }
        i += next7.len();
        Some(c)
    })
}

/// The length a transport-cc feedback for `deltas` takes (padded to 32 bits).
pub fn transport_cc_len(deltas: &[Option<i16>]) -> usize {
    let chunk_bytes = 2 * chunks(deltas).count();
    let delta_bytes: usize = deltas.iter().map(|d| usize::from(symbol(*d))).sum();
    (FEEDBACK_FCI + 8 + chunk_bytes + delta_bytes).next_multiple_of(4)
}

/// Writes a transport-cc feedback: packet `base_seq + i` has receive delta `deltas[i]` in
/// 250 µs ticks (relative to the previous received packet, the first to `reference_time`, in
/// 64 ms units, 24 bits), `None` when it was not received. At most `u16::MAX` packets; padded
/// to 32 bits with the P bit (RFC 3550 §6.4.1). Returns the length.
pub fn write_transport_cc(
    buf: &mut [u8],
    sender: Ssrc,
    media: Ssrc,
    base_seq: u16,
    reference_time: u32,
    fb_count: u8,
    deltas: &[Option<i16>],
) -> Result<usize, WireError> {
    let count = u16::try_from(deltas.len()).map_err(|_| WireError::OutOfRange)?;
    if count == 0 || reference_time > 0xFF_FFFF {
        return Err(WireError::OutOfRange);
    }
    let total = transport_cc_len(deltas);
    write_header(buf, FMT_TRANSPORT_CC, PT_RTPFB, total)?;
    set_be32(buf, 4, sender.0);
    set_be32(buf, 8, media.0);
    set_be16(buf, 12, base_seq);
    set_be16(buf, 14, count);
    set_be24(buf, 16, reference_time);
    buf[19] = fb_count;
    let mut pos = FEEDBACK_FCI + 8;
    for c in chunks(deltas) {
        set_be16(buf, pos, c);
        pos += 2;
    }
    for d in deltas.iter().flatten() {
        if is_small(*d) {
            buf[pos] = *d as u8;
            pos += 1;
        } else {
            set_be16(buf, pos, *d as u16);
            pos += 2;
        }
    }
    let pad = total - pos;
    if pad > 0 {
        buf[pos..total].fill(0);
        buf[0] |= 0x20;
        buf[total - 1] = pad as u8;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn roundtrip(deltas: &[Option<i16>]) {
        let mut buf = [0u8; 4096];
        let n = write_transport_cc(&mut buf, Ssrc(1), Ssrc(2), 65530, 0x12_3456, 7, deltas).unwrap();
        assert_eq!(n % 4, 0);
        assert_eq!(n, transport_cc_len(deltas));
        let t = TransportCc::new_checked(&buf[..n]).unwrap();
        assert_eq!((t.base_sequence_number(), t.packet_status_count(), t.feedback_packet_count()), (65530, deltas.len() as u16, 7));
        assert_eq!(t.reference_time(), 0x12_3456);
        let got: Vec<_> = t.packets().map(|p| p.unwrap()).collect();
        assert_eq!(got.len(), deltas.len());
        for (i, (p, d)) in got.iter().zip(deltas).enumerate() {
            assert_eq!(p.seq, 65530u16.wrapping_add(i as u16));
            assert_eq!(p.delta, *d, "packet {i} of {deltas:?}");
        }
        // The compound walk accepts it with its padding.
        assert!(super::super::compound(&buf[..n]).all(|p| p.is_ok()));
    }

    #[test]
    fn written_feedback_decodes_to_what_was_written() {
        roundtrip(&[Some(4)]);
        roundtrip(&[None, None, Some(0)]);
        roundtrip(&[Some(1000), Some(-3), Some(255), Some(256), None]);
        roundtrip(&[Some(10); 40]);
        roundtrip(&vec![None; 9000]);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for _ in 0..500 {
            let n = rng.random_range(1..400);
            let v: Vec<Option<i16>> = (0..n)
                .map(|_| match rng.random_range(0..10) {
                    0..=1 => None,
                    2 => Some(rng.random()),
                    _ => Some(rng.random_range(0..=255)),
                })
                .collect();
            roundtrip(&v);
        }
    }

    #[test]
    fn impossible_feedback_is_refused() {
        let mut buf = [0u8; 64];
        assert_eq!(write_transport_cc(&mut buf, Ssrc(1), Ssrc(2), 0, 0, 0, &[]), Err(WireError::OutOfRange));
        assert_eq!(write_transport_cc(&mut buf, Ssrc(1), Ssrc(2), 0, 1 << 24, 0, &[Some(1)]), Err(WireError::OutOfRange));
        assert_eq!(write_transport_cc(&mut buf, Ssrc(1), Ssrc(2), 0, 0, 0, &[Some(1000); 40]), Err(WireError::BufferTooSmall));
    }
}
