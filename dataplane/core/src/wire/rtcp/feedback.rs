//! Feedback messages (RFC 4585 §6, RFC 5104, REMB): generic NACK, PLI, FIR and REMB views and writers. Transport-cc is in `twcc`.

use super::*;

// ---------------------------------------------------------------------------------------------
// Generic NACK (RFC 4585 §6.2.1), RTPFB FMT 1
//
// |V=2|P| FMT=1   |  PT=RTPFB=205 |             length            |  0
// |                  SSRC of packet sender                        |  4
// |                  SSRC of media source                         |  8
// |            PID                |             BLP               | 12, repeated
//
// BLP bit i (LSB = 0) reports the loss of PID + i + 1.
// ---------------------------------------------------------------------------------------------

view! {
    /// A generic NACK.
    Nack
}
feedback_ssrcs!(Nack);

/// One generic NACK FCI entry: a lost packet id and a bitmask of the 16 following ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NackItem {
    /// Packet id: the first lost sequence number.
    pub pid: u16,
    /// Bitmask of following lost packets: bit i means `pid + i + 1` is lost.
    pub blp: u16,
}

impl NackItem {
    /// The lost sequence numbers this item reports, in order (1 to 17 of them).
    pub fn sequence_numbers(self) -> impl Iterator<Item = u16> {
        core::iter::once(self.pid).chain((0..16u16).filter(move |i| self.blp & (1 << i) != 0).map(move |i| self.pid.wrapping_add(i + 1)))
    }
}

/// Packs lost sequence numbers into NACK items, greedily: each item starts at the first
/// sequence number it cannot cover. `seqs` should be in ascending (wrapping) order, as a loss
/// detector produces them; out-of-order input still yields correct, just more, items.
/// Returns the number of items written, or `Err(BufferTooSmall)` if `out` runs out.
pub fn pack_nack_items(seqs: impl IntoIterator<Item = u16>, out: &mut [NackItem]) -> Result<usize, WireError> {
    let mut n = 0usize;
    for seq in seqs {
        if let Some(last) = n.checked_sub(1).and_then(|i| out.get_mut(i)) {
            let d = seq.wrapping_sub(last.pid);
            if (1..=16).contains(&d) {
                last.blp |= 1 << (d - 1);
                continue;
            }
            if d == 0 {
                continue;
            }
        }
        let slot = out.get_mut(n).ok_or(WireError::BufferTooSmall)?;
        *slot = NackItem { pid: seq, blp: 0 };
        n += 1;
    }
    Ok(n)
}

impl<T: AsRef<[u8]>> Nack<T> {
    /// Checks RTPFB FMT 1 and a whole number of 4-byte FCI entries.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let body_end = check_typed(buffer.as_ref(), PT_RTPFB, Some(FMT_NACK), FEEDBACK_FCI)?;
        if !(body_end - FEEDBACK_FCI).is_multiple_of(4) {
            return Err(WireError::BadLength);
        }
        Ok(Nack { buffer, body_end })
    }

    /// Number of FCI entries.
    pub fn item_count(&self) -> usize {
        (self.body_end - FEEDBACK_FCI) / 4
    }

    /// The `index`th FCI entry.
    pub fn item(&self, index: usize) -> Option<NackItem> {
        (index < self.item_count()).then(|| {
            let off = FEEDBACK_FCI + 4 * index;
            NackItem { pid: be16(self.buf(), off), blp: be16(self.buf(), off + 2) }
        })
    }

    /// All FCI entries.
    pub fn items(&self) -> impl Iterator<Item = NackItem> + '_ {
        (0..self.item_count()).filter_map(|i| self.item(i))
    }

    /// Every lost sequence number reported, expanded from PID+BLP.
    pub fn sequence_numbers(&self) -> impl Iterator<Item = u16> + '_ {
        self.items().flat_map(NackItem::sequence_numbers)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Nack<T> {
    /// Overwrites the `index`th FCI entry (after mapping the sequence numbers into the
    /// publisher's space); `Err(OutOfRange)` past the last entry.
    pub fn set_item(&mut self, index: usize, item: NackItem) -> Result<(), WireError> {
        if index >= self.item_count() {
            return Err(WireError::OutOfRange);
        }
        let off = FEEDBACK_FCI + 4 * index;
        set_be16(self.buf_mut(), off, item.pid);
        set_be16(self.buf_mut(), off + 2, item.blp);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// PLI (RFC 4585 §6.3.1), PSFB FMT 1: the common feedback header, no FCI.
//
// |V=2|P| FMT=1   |  PT=PSFB=206  |          length=2             |
// |                  SSRC of packet sender                        |
// |                  SSRC of media source                         |
// ---------------------------------------------------------------------------------------------

view! {
    /// A picture loss indication.
    Pli
}
feedback_ssrcs!(Pli);

impl<T: AsRef<[u8]>> Pli<T> {
    /// Checks PSFB FMT 1 and that both SSRCs fit.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let body_end = check_typed(buffer.as_ref(), PT_PSFB, Some(FMT_PLI), FEEDBACK_FCI)?;
        Ok(Pli { buffer, body_end })
    }
}

// ---------------------------------------------------------------------------------------------
// FIR (RFC 5104 §4.3.1), PSFB FMT 4. The media source SSRC is unused (0); each FCI entry
// names its target.
//
// |V=2|P| FMT=4   |  PT=PSFB=206  |             length            |  0
// |                  SSRC of packet sender                        |  4
// |             SSRC of media source (unused) = 0                 |  8
// |                              SSRC                             | 12, repeated
// | Seq nr.       |    Reserved = 0                               |
// ---------------------------------------------------------------------------------------------

view! {
    /// A full intra request.
    Fir
}
feedback_ssrcs!(Fir);

/// One FIR FCI entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FirEntry {
    /// SSRC of the media sender asked for a decoder refresh point.
    pub ssrc: Ssrc,
    /// Command sequence number, incremented per new request to that SSRC.
    pub seq: u8,
}

impl<T: AsRef<[u8]>> Fir<T> {
    /// Checks PSFB FMT 4 and a whole number of 8-byte FCI entries.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let body_end = check_typed(buffer.as_ref(), PT_PSFB, Some(FMT_FIR), FEEDBACK_FCI)?;
        if !(body_end - FEEDBACK_FCI).is_multiple_of(8) {
            return Err(WireError::BadLength);
        }
        Ok(Fir { buffer, body_end })
    }

    /// Number of FCI entries.
    pub fn entry_count(&self) -> usize {
        (self.body_end - FEEDBACK_FCI) / 8
    }

    /// The `index`th FCI entry.
    pub fn entry(&self, index: usize) -> Option<FirEntry> {
        (index < self.entry_count()).then(|| {
            let off = FEEDBACK_FCI + 8 * index;
            FirEntry { ssrc: Ssrc(be32(self.buf(), off)), seq: self.buf()[off + 4] }
        })
    }

    /// All FCI entries.
    pub fn entries(&self) -> impl Iterator<Item = FirEntry> + '_ {
        (0..self.entry_count()).filter_map(|i| self.entry(i))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Fir<T> {
    /// Sets the target SSRC of the `index`th entry; `Err(OutOfRange)` past the last entry.
    pub fn set_entry_ssrc(&mut self, index: usize, ssrc: Ssrc) -> Result<(), WireError> {
        if index >= self.entry_count() {
            return Err(WireError::OutOfRange);
        }
        set_be32(self.buf_mut(), FEEDBACK_FCI + 8 * index, ssrc.0);
        Ok(())
    }

    /// Sets the command sequence number of the `index`th entry.
    pub fn set_entry_seq(&mut self, index: usize, seq: u8) -> Result<(), WireError> {
        if index >= self.entry_count() {
            return Err(WireError::OutOfRange);
        }
        self.buf_mut()[FEEDBACK_FCI + 8 * index + 4] = seq;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// REMB (draft-alvestrand-rmcat-remb-03 §2.2), PSFB FMT 15 with the "REMB" identifier.
//
// |V=2|P| FMT=15  |   PT=206      |             length            |  0
// |                  SSRC of packet sender                        |  4
// |                  SSRC of media source = 0                     |  8
// |  Unique identifier 'R' 'E' 'M' 'B'                            | 12
// |  Num SSRC     | BR Exp    |  BR Mantissa                      | 16
// |   SSRC feedback (Num SSRC times)                              | 20
//
// Bitrate in bits per second = mantissa * 2^exp.
// ---------------------------------------------------------------------------------------------

view! {
    /// A receiver estimated maximum bitrate message.
    Remb
}
feedback_ssrcs!(Remb);

impl<T: AsRef<[u8]>> Remb<T> {
    /// Checks PSFB FMT 15, the "REMB" identifier, and that Num SSRC SSRCs fit.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let buf = buffer.as_ref();
        let body_end = check_typed(buf, PT_PSFB, Some(FMT_AFB), 20)?;
        if &buf[12..16] != b"REMB" {
            return Err(WireError::WrongType);
        }
        if body_end < 20 + 4 * usize::from(buf[16]) {
            return Err(WireError::BadLength);
        }
        Ok(Remb { buffer, body_end })
    }

    /// Number of SSRCs the estimate applies to.
    pub fn ssrc_count(&self) -> u8 {
        self.buf()[16]
    }

    /// The 6-bit exponent.
    pub fn bitrate_exp(&self) -> u8 {
        self.buf()[17] >> 2
    }

    /// The 18-bit mantissa.
    pub fn bitrate_mantissa(&self) -> u32 {
        be24(self.buf(), 17) & 0x3_FFFF
    }

    /// The estimate in bits per second, saturating at `u64::MAX`.
    pub fn bitrate(&self) -> u64 {
        let m = u64::from(self.bitrate_mantissa());
        let e = u32::from(self.bitrate_exp());
        if m == 0 {
            0
        } else if m.leading_zeros() < e {
            u64::MAX
        } else {
            m << e
        }
    }

    /// The `index`th SSRC.
    pub fn ssrc(&self, index: usize) -> Option<Ssrc> {
        (index < usize::from(self.ssrc_count())).then(|| Ssrc(be32(self.buf(), 20 + 4 * index)))
    }

    /// All SSRCs.
    pub fn ssrcs(&self) -> impl Iterator<Item = Ssrc> + '_ {
        (0..usize::from(self.ssrc_count())).filter_map(|i| self.ssrc(i))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Remb<T> {
    /// Sets the `index`th SSRC; `Err(OutOfRange)` past Num SSRC.
    pub fn set_ssrc(&mut self, index: usize, ssrc: Ssrc) -> Result<(), WireError> {
        if index >= usize::from(self.ssrc_count()) {
            return Err(WireError::OutOfRange);
        }
        set_be32(self.buf_mut(), 20 + 4 * index, ssrc.0);
        Ok(())
    }

    /// Sets the estimate, rounding down to what an 18-bit mantissa can express.
    pub fn set_bitrate(&mut self, bps: u64) {
        let (exp, mantissa) = remb_encode(bps);
        let b = self.buf_mut();
        set_be24(b, 17, (u32::from(exp) << 18) | mantissa);
    }
}

fn remb_encode(bps: u64) -> (u8, u32) {
    let exp = (64 - bps.leading_zeros()).saturating_sub(18);
    (exp as u8, (bps >> exp) as u32)
}

/// Writes a PLI (RFC 4585 §6.3.1) asking `media` for a keyframe; returns the length (12).
pub fn write_pli(buf: &mut [u8], sender: Ssrc, media: Ssrc) -> Result<usize, WireError> {
    write_header(buf, FMT_PLI, PT_PSFB, FEEDBACK_FCI)?;
    set_be32(buf, 4, sender.0);
    set_be32(buf, 8, media.0);
    Ok(FEEDBACK_FCI)
}

/// Writes a FIR (RFC 5104 §4.3.1) with one FCI entry per target; returns the length.
pub fn write_fir(buf: &mut [u8], sender: Ssrc, entries: &[FirEntry]) -> Result<usize, WireError> {
    let total = FEEDBACK_FCI + 8 * entries.len();
    write_header(buf, FMT_FIR, PT_PSFB, total)?;
    set_be32(buf, 4, sender.0);
    set_be32(buf, 8, 0);
    for (i, e) in entries.iter().enumerate() {
        let off = FEEDBACK_FCI + 8 * i;
        set_be32(buf, off, e.ssrc.0);
        set_be32(buf, off + 4, u32::from(e.seq) << 24);
    }
    Ok(total)
}

/// Writes a generic NACK (RFC 4585 §6.2.1); returns the length. See [`pack_nack_items`].
pub fn write_nack(buf: &mut [u8], sender: Ssrc, media: Ssrc, items: &[NackItem]) -> Result<usize, WireError> {
    let total = FEEDBACK_FCI + 4 * items.len();
    write_header(buf, FMT_NACK, PT_RTPFB, total)?;
    set_be32(buf, 4, sender.0);
    set_be32(buf, 8, media.0);
    for (i, item) in items.iter().enumerate() {
        let off = FEEDBACK_FCI + 4 * i;
        set_be16(buf, off, item.pid);
        set_be16(buf, off + 2, item.blp);
    }
    Ok(total)
}

/// Writes a REMB (draft-alvestrand-rmcat-remb-03) for up to 255 SSRCs; returns the length.
pub fn write_remb(buf: &mut [u8], sender: Ssrc, bitrate_bps: u64, ssrcs: &[Ssrc]) -> Result<usize, WireError> {
    let count = u8::try_from(ssrcs.len()).map_err(|_| WireError::OutOfRange)?;
    let total = 20 + 4 * ssrcs.len();
    write_header(buf, FMT_AFB, PT_PSFB, total)?;
    set_be32(buf, 4, sender.0);
    set_be32(buf, 8, 0);
    buf[12..16].copy_from_slice(b"REMB");
    buf[16] = count;
    let (exp, mantissa) = remb_encode(bitrate_bps);
    set_be24(buf, 17, (u32::from(exp) << 18) | mantissa);
    for (i, s) in ssrcs.iter().enumerate() {
        set_be32(buf, 20 + 4 * i, s.0);
    }
    Ok(total)
}
