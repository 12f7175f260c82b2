//! RTCP compound packets (RFC 3550 §6) with RFC 5506 reduced-size awareness, typed views of the
//! packets an SFU reads or rewrites, and writers for the ones it originates.
//!
//! Every RTCP packet starts with the same header (RFC 3550 §6.4.1):
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |V=2|P| RC/FMT  |      PT       |     length (words - 1)        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! A compound datagram is packets back to back; [`compound`] walks it with checked lengths.
//! RFC 3550 §6.1 wants a compound to start with SR or RR, but RFC 5506 allows reduced-size
//! RTCP (a lone PLI or NACK), which browsers send, so the walk does not insist on it.
//!
//! Views: [`SenderReport`], [`ReceiverReport`] (with [`ReportBlock`]), [`Sdes`], [`Bye`],
//! [`App`], and the feedback messages (RFC 4585 §6.1 common format) [`Nack`],
//! [`TransportCc`], [`Pli`], [`Fir`], [`Remb`]. Each `new_checked` takes the bytes of one
//! packet (as yielded by [`compound`]) and checks type and every length its accessors use.
//! Setters cover the fields an SFU rewrites when it translates feedback between a publisher's
//! and a subscriber's SSRC and sequence spaces.
//!
//! Writers (`write_*`) fill a caller-provided buffer and return the length written, never
//! allocating: the buffer comes from the same pool as forwarded packets.
//!
//! One file per packet family: `report` (report blocks, SR, RR), `sdes` (SDES, BYE, APP),
//! `feedback` (NACK, PLI, FIR, REMB), `twcc` (transport-cc); each holds its views and writers.

use super::{Ssrc, WireError, be16, be24, be32, set_be16, set_be24, set_be32};

/// Length of the common RTCP header.
pub const HEADER_LEN: usize = 4;

/// Sender report (RFC 3550 §6.4.1).
pub const PT_SR: u8 = 200;
/// Receiver report (RFC 3550 §6.4.2).
pub const PT_RR: u8 = 201;
/// Source description (RFC 3550 §6.5).
pub const PT_SDES: u8 = 202;
/// Goodbye (RFC 3550 §6.6).
pub const PT_BYE: u8 = 203;
/// Application-defined (RFC 3550 §6.7).
pub const PT_APP: u8 = 204;
/// Transport-layer feedback (RFC 4585 §6.2).
pub const PT_RTPFB: u8 = 205;
/// Payload-specific feedback (RFC 4585 §6.3).
pub const PT_PSFB: u8 = 206;

/// RTPFB FMT: generic NACK (RFC 4585 §6.2.1).
pub const FMT_NACK: u8 = 1;
/// RTPFB FMT: transport-wide congestion control (draft-holmer-rmcat-transport-wide-cc-extensions-01).
pub const FMT_TRANSPORT_CC: u8 = 15;
/// PSFB FMT: picture loss indication (RFC 4585 §6.3.1).
pub const FMT_PLI: u8 = 1;
/// PSFB FMT: full intra request (RFC 5104 §4.3.1).
pub const FMT_FIR: u8 = 4;
/// PSFB FMT: application layer feedback, which REMB uses (draft-alvestrand-rmcat-remb).
pub const FMT_AFB: u8 = 15;

/// SDES item type CNAME (RFC 3550 §6.5.1).
pub const SDES_CNAME: u8 = 1;

const REPORT_BLOCK_LEN: usize = 24;
/// Sender SSRC, media SSRC: RFC 4585 §6.1.
const FEEDBACK_FCI: usize = 12;

/// Checks the common header of the packet at the start of `buf`; returns its total length
/// and the end of its body (total minus padding).
fn check_header(buf: &[u8]) -> Result<(usize, usize), WireError> {
    if buf.len() < HEADER_LEN {
        return Err(WireError::Truncated);
    }
    if buf[0] >> 6 != 2 {
        return Err(WireError::BadVersion);
    }
    let total = 4 * (usize::from(be16(buf, 2)) + 1);
    if buf.len() < total {
        return Err(WireError::Truncated);
    }
    let mut body_end = total;
    if buf[0] & 0x20 != 0 {
        // RFC 3550 §6.4.1: the last octet counts the padding, itself included.
        let pad = usize::from(buf[total - 1]);
        if pad == 0 || pad > total - HEADER_LEN {
            return Err(WireError::BadPadding);
        }
        body_end = total - pad;
    }
    Ok((total, body_end))
}

fn check_typed(buf: &[u8], pt: u8, fmt: Option<u8>, min_body: usize) -> Result<usize, WireError> {
    let (_, body_end) = check_header(buf)?;
    if buf[1] != pt || fmt.is_some_and(|f| buf[0] & 0x1F != f) {
        return Err(WireError::WrongType);
    }
    if body_end < min_body {
        return Err(WireError::BadLength);
    }
    Ok(body_end)
}

/// What an RTCP packet is, by PT and FMT (and the "REMB" identifier for PSFB FMT 15).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// SR.
    SenderReport,
    /// RR.
    ReceiverReport,
    /// SDES.
    Sdes,
    /// BYE.
    Bye,
    /// APP.
    App,
    /// RTPFB FMT 1.
    Nack,
    /// RTPFB FMT 15.
    TransportCc,
    /// Any other RTPFB.
    OtherRtpfb,
    /// PSFB FMT 1.
    Pli,
    /// PSFB FMT 4.
    Fir,
    /// PSFB FMT 15 with the "REMB" identifier.
    Remb,
    /// Any other PSFB.
    OtherPsfb,
    /// Any other packet type (XR, ...).
    Other,
}

/// A checked, zero-copy view of one RTCP packet's common header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Validates the packet at the start of `buffer`: version 2, the length field fits, and
    /// the padding count (if P) is non-zero and within the packet. Bytes after the length are
    /// ignored by every accessor.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        check_header(buffer.as_ref())?;
        Ok(Packet { buffer })
    }

    /// Gives the buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn buf(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// Version (always 2 once checked).
    pub fn version(&self) -> u8 {
        self.buf()[0] >> 6
    }

    /// The P bit.
    pub fn has_padding(&self) -> bool {
        self.buf()[0] & 0x20 != 0
    }

    /// The 5-bit RC / SC / FMT / subtype field.
    pub fn count(&self) -> u8 {
        self.buf()[0] & 0x1F
    }

    /// The packet type.
    pub fn packet_type(&self) -> u8 {
        self.buf()[1]
    }

    /// The length field: 32-bit words minus one.
    pub fn length_words(&self) -> u16 {
        be16(self.buf(), 2)
    }

    /// The packet's length in bytes, header and padding included.
    pub fn total_len(&self) -> usize {
        4 * (usize::from(self.length_words()) + 1)
    }

    /// Padding bytes at the end, the count byte included (0 if P is clear).
    pub fn padding_len(&self) -> usize {
        if self.has_padding() { usize::from(self.buf()[self.total_len() - 1]) } else { 0 }
    }

    /// The packet's bytes, exactly `total_len()` of them: what the typed views take.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf()[..self.total_len()]
    }

    /// The bytes after the common header, padding excluded.
    pub fn body(&self) -> &[u8] {
        &self.buf()[HEADER_LEN..self.total_len() - self.padding_len()]
    }

    /// What the packet is.
    pub fn kind(&self) -> Kind {
        match (self.packet_type(), self.count()) {
            (PT_SR, _) => Kind::SenderReport,
            (PT_RR, _) => Kind::ReceiverReport,
            (PT_SDES, _) => Kind::Sdes,
            (PT_BYE, _) => Kind::Bye,
            (PT_APP, _) => Kind::App,
            (PT_RTPFB, FMT_NACK) => Kind::Nack,
            (PT_RTPFB, FMT_TRANSPORT_CC) => Kind::TransportCc,
            (PT_RTPFB, _) => Kind::OtherRtpfb,
            (PT_PSFB, FMT_PLI) => Kind::Pli,
            (PT_PSFB, FMT_FIR) => Kind::Fir,
            (PT_PSFB, FMT_AFB) if self.body().get(8..12) == Some(b"REMB") => Kind::Remb,
            (PT_PSFB, _) => Kind::OtherPsfb,
            _ => Kind::Other,
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// The packet's bytes for in-place rewriting through a typed view.
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        let total = self.total_len();
        &mut self.buffer.as_mut()[..total]
    }
}

/// Walks the packets of a compound datagram (decrypted SRTCP, trailer removed).
pub fn compound(datagram: &[u8]) -> Compound<'_> {
    Compound { rest: datagram, done: false }
}

/// Walks the packets of a compound datagram for in-place rewriting.
pub fn compound_mut(datagram: &mut [u8]) -> CompoundMut<'_> {
    CompoundMut { rest: datagram, done: false }
}

/// Whether a datagram is reduced-size RTCP (RFC 5506 §3): its first packet is neither SR nor
/// RR, which RFC 3550 §6.1 compound rules would forbid. `None` if the first packet is invalid.
/// The SFU must only send reduced-size RTCP to a leg that negotiated `a=rtcp-rsize`.
pub fn is_reduced_size(datagram: &[u8]) -> Option<bool> {
    let first = compound(datagram).next()?.ok()?;
    Some(!matches!(first.packet_type(), PT_SR | PT_RR))
}

/// Iterator over the packets of a compound datagram; yields one `Err` and stops on the first
/// packet that fails [`Packet::new_checked`]. Each yielded packet wraps exactly its own bytes.
#[derive(Debug, Clone)]
pub struct Compound<'a> {
    rest: &'a [u8],
    done: bool,
}

impl<'a> Iterator for Compound<'a> {
    type Item = Result<Packet<&'a [u8]>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.rest.is_empty() {
            return None;
        }
        match check_header(self.rest) {
            Ok((total, _)) => {
                let (this, rest) = self.rest.split_at(total);
                self.rest = rest;
                Some(Ok(Packet { buffer: this }))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Mutable counterpart of [`Compound`].
#[derive(Debug)]
pub struct CompoundMut<'a> {
    rest: &'a mut [u8],
    done: bool,
}

impl<'a> Iterator for CompoundMut<'a> {
    type Item = Result<Packet<&'a mut [u8]>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.rest.is_empty() {
            return None;
        }
        match check_header(self.rest) {
            Ok((total, _)) => {
                let (this, rest) = core::mem::take(&mut self.rest).split_at_mut(total);
                self.rest = rest;
                Some(Ok(Packet { buffer: this }))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

macro_rules! view {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name<T> {
            buffer: T,
            body_end: usize,
        }

        impl<T: AsRef<[u8]>> $name<T> {
            /// Gives the buffer back.
            pub fn into_inner(self) -> T {
                self.buffer
            }

            #[inline]
            fn buf(&self) -> &[u8] {
                self.buffer.as_ref()
            }
        }

        impl<T: AsRef<[u8]> + AsMut<[u8]>> $name<T> {
            #[allow(dead_code, reason = "views without setters (SDES) share the macro")]
            #[inline]
            fn buf_mut(&mut self) -> &mut [u8] {
                self.buffer.as_mut()
            }
        }
    };
}

macro_rules! feedback_ssrcs {
    ($name:ident) => {
        impl<T: AsRef<[u8]>> $name<T> {
            /// SSRC of the packet sender (RFC 4585 §6.1).
            pub fn sender_ssrc(&self) -> Ssrc {
                Ssrc(be32(self.buf(), 4))
            }

            /// SSRC of the media source (RFC 4585 §6.1).
            pub fn media_ssrc(&self) -> Ssrc {
                Ssrc(be32(self.buf(), 8))
            }
        }

        impl<T: AsRef<[u8]> + AsMut<[u8]>> $name<T> {
            /// Sets the SSRC of the packet sender.
            pub fn set_sender_ssrc(&mut self, ssrc: Ssrc) {
                set_be32(self.buf_mut(), 4, ssrc.0);
            }

            /// Sets the SSRC of the media source.
            pub fn set_media_ssrc(&mut self, ssrc: Ssrc) {
                set_be32(self.buf_mut(), 8, ssrc.0);
            }
        }
    };
}

mod feedback;
mod report;
mod sdes;
mod twcc;

pub use feedback::*;
pub use report::*;
pub use sdes::*;
pub use twcc::{TransportCc, TwccPacket, TwccPackets, TwccStatus, write_transport_cc};

/// Writes a common header for a packet of `total` bytes (a multiple of 4) into `buf`.
fn write_header(buf: &mut [u8], count: u8, pt: u8, total: usize) -> Result<(), WireError> {
    if total > 4 * (usize::from(u16::MAX) + 1) || count > 0x1F {
        return Err(WireError::OutOfRange);
    }
    if buf.len() < total {
        return Err(WireError::BufferTooSmall);
    }
    buf[0] = 0x80 | count;
    buf[1] = pt;
    set_be16(buf, 2, (total / 4 - 1) as u16);
    Ok(())
}

#[cfg(test)]
mod tests;
