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

// ---------------------------------------------------------------------------------------------
// Reception report blocks (RFC 3550 §6.4.1)
//
// +=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+
// |                 SSRC_1 (SSRC of first source)                 |
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// | fraction lost |       cumulative number of packets lost       |
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// |           extended highest sequence number received           |
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// |                      interarrival jitter                      |
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// |                         last SR (LSR)                         |
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// |                   delay since last SR (DLSR)                  |
// +=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+
// ---------------------------------------------------------------------------------------------

/// A view of one 24-byte reception report block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportBlock<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ReportBlock<T> {
    /// Checks that `buffer` holds at least one 24-byte report block.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        if buffer.as_ref().len() < REPORT_BLOCK_LEN {
            return Err(WireError::Truncated);
        }
        Ok(ReportBlock { buffer })
    }

    fn buf(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// The reportee SSRC.
    pub fn ssrc(&self) -> Ssrc {
        Ssrc(be32(self.buf(), 0))
    }

    /// Fraction lost, in 1/256.
    pub fn fraction_lost(&self) -> u8 {
        self.buf()[4]
    }

    /// Cumulative number of packets lost (24-bit signed).
    pub fn cumulative_lost(&self) -> i32 {
        ((be24(self.buf(), 5) << 8) as i32) >> 8
    }

    /// Extended highest sequence number received.
    pub fn highest_seq(&self) -> u32 {
        be32(self.buf(), 8)
    }

    /// Interarrival jitter.
    pub fn jitter(&self) -> u32 {
        be32(self.buf(), 12)
    }

    /// Last SR timestamp (middle 32 bits of its NTP time).
    pub fn last_sr(&self) -> u32 {
        be32(self.buf(), 16)
    }

    /// Delay since last SR, in 1/65536 s.
    pub fn delay_since_last_sr(&self) -> u32 {
        be32(self.buf(), 20)
    }

    /// All fields, e.g. to feed [`write_rr`].
    pub fn info(&self) -> ReportBlockInfo {
        ReportBlockInfo {
            ssrc: self.ssrc(),
            fraction_lost: self.fraction_lost(),
            cumulative_lost: self.cumulative_lost(),
            highest_seq: self.highest_seq(),
            jitter: self.jitter(),
            last_sr: self.last_sr(),
            delay_since_last_sr: self.delay_since_last_sr(),
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ReportBlock<T> {
    /// Sets the reportee SSRC.
    pub fn set_ssrc(&mut self, ssrc: Ssrc) {
        set_be32(self.buffer.as_mut(), 0, ssrc.0);
    }

    /// Sets the extended highest sequence number (translated into the publisher's space).
    pub fn set_highest_seq(&mut self, seq: u32) {
        set_be32(self.buffer.as_mut(), 8, seq);
    }

    /// Sets the last-SR field (translated to the SR the publisher actually sent).
    pub fn set_last_sr(&mut self, lsr: u32) {
        set_be32(self.buffer.as_mut(), 16, lsr);
    }
}

/// The fields of a reception report block, for the writers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReportBlockInfo {
    /// Reportee SSRC.
    pub ssrc: Ssrc,
    /// Fraction lost, in 1/256.
    pub fraction_lost: u8,
    /// Cumulative lost; clamped to the 24-bit signed range when written.
    pub cumulative_lost: i32,
    /// Extended highest sequence number received.
    pub highest_seq: u32,
    /// Interarrival jitter.
    pub jitter: u32,
    /// Last SR.
    pub last_sr: u32,
    /// Delay since last SR.
    pub delay_since_last_sr: u32,
}

impl ReportBlockInfo {
    fn write(&self, out: &mut [u8]) {
        set_be32(out, 0, self.ssrc.0);
        out[4] = self.fraction_lost;
        let lost = self.cumulative_lost.clamp(-0x80_0000, 0x7F_FFFF) as u32 & 0xFF_FFFF;
        set_be24(out, 5, lost);
        set_be32(out, 8, self.highest_seq);
        set_be32(out, 12, self.jitter);
        set_be32(out, 16, self.last_sr);
        set_be32(out, 20, self.delay_since_last_sr);
    }
}

fn block_at(buf: &[u8], first: usize, count: u8, index: usize) -> Option<ReportBlock<&[u8]>> {
    (index < usize::from(count)).then(|| {
        let off = first + REPORT_BLOCK_LEN * index;
        ReportBlock { buffer: &buf[off..off + REPORT_BLOCK_LEN] }
    })
}

fn block_at_mut(buf: &mut [u8], first: usize, count: u8, index: usize) -> Option<ReportBlock<&mut [u8]>> {
    if index >= usize::from(count) {
        return None;
    }
    let off = first + REPORT_BLOCK_LEN * index;
    Some(ReportBlock { buffer: &mut buf[off..off + REPORT_BLOCK_LEN] })
}

// ---------------------------------------------------------------------------------------------
// SR (RFC 3550 §6.4.1)
//
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// |V=2|P|    RC   |   PT=SR=200   |             length            |  0
// |                         SSRC of sender                        |  4
// +=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+
// |              NTP timestamp, most significant word             |  8
// |             NTP timestamp, least significant word             | 12
// |                         RTP timestamp                         | 16
// |                     sender's packet count                     | 20
// |                      sender's octet count                     | 24
// +=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+
// |                 report blocks (RC x 24 bytes)                 | 28
// ---------------------------------------------------------------------------------------------

const SR_BLOCKS: usize = 28;
const RR_BLOCKS: usize = 8;

view! {
    /// A sender report.
    SenderReport
}

impl<T: AsRef<[u8]>> SenderReport<T> {
    /// Checks PT 200 and that sender info and RC report blocks fit.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let buf = buffer.as_ref();
        let body_end = check_typed(buf, PT_SR, None, SR_BLOCKS)?;
        if body_end < SR_BLOCKS + REPORT_BLOCK_LEN * usize::from(buf[0] & 0x1F) {
            return Err(WireError::BadLength);
        }
        Ok(SenderReport { buffer, body_end })
    }

    /// SSRC of the sender.
    pub fn sender_ssrc(&self) -> Ssrc {
        Ssrc(be32(self.buf(), 4))
    }

    /// Sender info.
    pub fn sender_info(&self) -> SenderInfo {
        let b = self.buf();
        SenderInfo {
            ntp_timestamp: (u64::from(be32(b, 8)) << 32) | u64::from(be32(b, 12)),
            rtp_timestamp: be32(b, 16),
            packet_count: be32(b, 20),
            octet_count: be32(b, 24),
        }
    }

    /// The 64-bit NTP timestamp.
    pub fn ntp_timestamp(&self) -> u64 {
        self.sender_info().ntp_timestamp
    }

    /// The RTP timestamp matching the NTP timestamp.
    pub fn rtp_timestamp(&self) -> u32 {
        be32(self.buf(), 16)
    }

    /// Sender's packet count.
    pub fn packet_count(&self) -> u32 {
        be32(self.buf(), 20)
    }

    /// Sender's octet count.
    pub fn octet_count(&self) -> u32 {
        be32(self.buf(), 24)
    }

    /// Number of report blocks (RC).
    pub fn report_count(&self) -> u8 {
        self.buf()[0] & 0x1F
    }

    /// The `index`th report block.
    pub fn report_block(&self, index: usize) -> Option<ReportBlock<&[u8]>> {
        block_at(self.buf(), SR_BLOCKS, self.report_count(), index)
    }

    /// All report blocks.
    pub fn report_blocks(&self) -> impl Iterator<Item = ReportBlock<&[u8]>> + '_ {
        (0..usize::from(self.report_count())).filter_map(|i| self.report_block(i))
    }

    /// Bytes after the report blocks and before padding (profile-specific extensions).
    pub fn extension(&self) -> &[u8] {
        let start = SR_BLOCKS + REPORT_BLOCK_LEN * usize::from(self.report_count());
        &self.buf()[start..self.body_end]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> SenderReport<T> {
    /// Sets the SSRC of the sender.
    pub fn set_sender_ssrc(&mut self, ssrc: Ssrc) {
        set_be32(self.buf_mut(), 4, ssrc.0);
    }

    /// Sets the NTP timestamp.
    pub fn set_ntp_timestamp(&mut self, ntp: u64) {
        set_be32(self.buf_mut(), 8, (ntp >> 32) as u32);
        set_be32(self.buf_mut(), 12, ntp as u32);
    }

    /// Sets the RTP timestamp (rewritten into the subscriber's timestamp space).
    pub fn set_rtp_timestamp(&mut self, ts: u32) {
        set_be32(self.buf_mut(), 16, ts);
    }

    /// Sets the sender's packet count.
    pub fn set_packet_count(&mut self, count: u32) {
        set_be32(self.buf_mut(), 20, count);
    }

    /// Sets the sender's octet count.
    pub fn set_octet_count(&mut self, count: u32) {
        set_be32(self.buf_mut(), 24, count);
    }

    /// The `index`th report block, for rewriting.
    pub fn report_block_mut(&mut self, index: usize) -> Option<ReportBlock<&mut [u8]>> {
        let count = self.report_count();
        block_at_mut(self.buf_mut(), SR_BLOCKS, count, index)
    }
}

/// SR sender info, for [`SenderReport::sender_info`] and [`write_sr`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SenderInfo {
    /// 64-bit NTP timestamp.
    pub ntp_timestamp: u64,
    /// RTP timestamp corresponding to the NTP timestamp.
    pub rtp_timestamp: u32,
    /// Packets sent.
    pub packet_count: u32,
    /// Payload octets sent.
    pub octet_count: u32,
}

// ---------------------------------------------------------------------------------------------
// RR (RFC 3550 §6.4.2)
//
// |V=2|P|    RC   |   PT=RR=201   |             length            |  0
// |                     SSRC of packet sender                     |  4
// |                 report blocks (RC x 24 bytes)                 |  8
// ---------------------------------------------------------------------------------------------

view! {
    /// A receiver report.
    ReceiverReport
}

impl<T: AsRef<[u8]>> ReceiverReport<T> {
    /// Checks PT 201 and that RC report blocks fit.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let buf = buffer.as_ref();
        let body_end = check_typed(buf, PT_RR, None, RR_BLOCKS)?;
        if body_end < RR_BLOCKS + REPORT_BLOCK_LEN * usize::from(buf[0] & 0x1F) {
            return Err(WireError::BadLength);
        }
        Ok(ReceiverReport { buffer, body_end })
    }

    /// SSRC of the packet sender.
    pub fn sender_ssrc(&self) -> Ssrc {
        Ssrc(be32(self.buf(), 4))
    }

    /// Number of report blocks (RC).
    pub fn report_count(&self) -> u8 {
        self.buf()[0] & 0x1F
    }

    /// The `index`th report block.
    pub fn report_block(&self, index: usize) -> Option<ReportBlock<&[u8]>> {
        block_at(self.buf(), RR_BLOCKS, self.report_count(), index)
    }

    /// All report blocks.
    pub fn report_blocks(&self) -> impl Iterator<Item = ReportBlock<&[u8]>> + '_ {
        (0..usize::from(self.report_count())).filter_map(|i| self.report_block(i))
    }

    /// Bytes after the report blocks and before padding (profile-specific extensions).
    pub fn extension(&self) -> &[u8] {
        let start = RR_BLOCKS + REPORT_BLOCK_LEN * usize::from(self.report_count());
        &self.buf()[start..self.body_end]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ReceiverReport<T> {
    /// Sets the SSRC of the packet sender.
    pub fn set_sender_ssrc(&mut self, ssrc: Ssrc) {
        set_be32(self.buf_mut(), 4, ssrc.0);
    }

    /// The `index`th report block, for rewriting.
    pub fn report_block_mut(&mut self, index: usize) -> Option<ReportBlock<&mut [u8]>> {
        let count = self.report_count();
        block_at_mut(self.buf_mut(), RR_BLOCKS, count, index)
    }
}

// ---------------------------------------------------------------------------------------------
// SDES (RFC 3550 §6.5)
//
// |V=2|P|    SC   |  PT=SDES=202  |             length            |
// +=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+
// |                          SSRC/CSRC_1                          |  chunk 1
// |    type (1)   |    length     | text ...                      |  items ...
// | ... 0 (end) | 0 padding to the next 32-bit boundary           |
// +=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+
// |                          SSRC/CSRC_2  ...                     |  chunk 2
// ---------------------------------------------------------------------------------------------

view! {
    /// A source description packet. `new_checked` walks every chunk and item once, so the
    /// iterators afterwards cannot fail.
    Sdes
}

/// One SDES chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SdesChunk<'a> {
    /// The SSRC or CSRC the items describe.
    pub ssrc: Ssrc,
    items: &'a [u8],
}

/// One SDES item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SdesItem<'a> {
    /// Item type (1 = CNAME, ...).
    pub kind: u8,
    /// Item value (UTF-8 text per RFC 3550, not checked).
    pub value: &'a [u8],
}

/// Walks the chunk starting at `start`; returns the end of its item list (the END octet
/// excluded) and where the next chunk starts.
fn sdes_chunk(buf: &[u8], start: usize, end: usize) -> Result<(usize, usize), WireError> {
    let mut i = start + 4;
    if i > end {
        return Err(WireError::BadLength);
    }
    loop {
        match buf[..end].get(i) {
            None => return Err(WireError::BadLength),
            Some(0) => {
                // RFC 3550 §6.5: END, then null octets to the next 32-bit boundary.
                return Ok((i, (i + 1).next_multiple_of(4)));
            }
            Some(_) => {
                let Some(&len) = buf[..end].get(i + 1) else {
                    return Err(WireError::BadLength);
                };
                i += 2 + usize::from(len);
            }
        }
    }
}

impl<T: AsRef<[u8]>> Sdes<T> {
    /// Checks PT 202 and that exactly SC well-formed chunks fill the body.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let buf = buffer.as_ref();
        let body_end = check_typed(buf, PT_SDES, None, HEADER_LEN)?;
        let mut pos = HEADER_LEN;
        for _ in 0..(buf[0] & 0x1F) {
            let (_, next) = sdes_chunk(buf, pos, body_end)?;
            pos = next;
        }
        if pos > body_end {
            return Err(WireError::BadLength);
        }
        Ok(Sdes { buffer, body_end })
    }

    /// Number of chunks (SC).
    pub fn chunk_count(&self) -> u8 {
        self.buf()[0] & 0x1F
    }

    /// The chunks in order.
    pub fn chunks(&self) -> SdesChunks<'_> {
        SdesChunks { buf: &self.buf()[..self.body_end], pos: HEADER_LEN, left: self.chunk_count() }
    }
}

/// Iterator over SDES chunks; see [`Sdes::chunks`].
#[derive(Debug, Clone)]
pub struct SdesChunks<'a> {
    buf: &'a [u8],
    pos: usize,
    left: u8,
}

impl<'a> Iterator for SdesChunks<'a> {
    type Item = SdesChunk<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // Validated by `Sdes::new_checked`; `ok()?` only guards the invariant.
        let (items_end, next) = sdes_chunk(self.buf, self.pos, self.buf.len()).ok()?;
        let ssrc = Ssrc(be32(self.buf, self.pos));
        let items = &self.buf[self.pos + 4..items_end];
        self.pos = next;
        Some(SdesChunk { ssrc, items })
    }
}

impl<'a> SdesChunk<'a> {
    /// The items of this chunk, END excluded.
    pub fn items(&self) -> SdesItems<'a> {
        SdesItems { rest: self.items }
    }

    /// The CNAME item's value, if present.
    pub fn cname(&self) -> Option<&'a [u8]> {
        self.items().find(|i| i.kind == SDES_CNAME).map(|i| i.value)
    }
}

/// Iterator over the items of one SDES chunk.
#[derive(Debug, Clone)]
pub struct SdesItems<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for SdesItems<'a> {
    type Item = SdesItem<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        let (&kind, rest) = self.rest.split_first()?;
        let (&len, rest) = rest.split_first()?;
        let value = rest.get(..usize::from(len))?;
        self.rest = &rest[usize::from(len)..];
        Some(SdesItem { kind, value })
    }
}

// ---------------------------------------------------------------------------------------------
// BYE (RFC 3550 §6.6)
//
// |V=2|P|    SC   |   PT=BYE=203  |             length            |
// |                           SSRC/CSRC (SC times)                |
// |     length    |               reason for leaving ...   (opt)  |
// ---------------------------------------------------------------------------------------------

view! {
    /// A goodbye packet.
    Bye
}

impl<T: AsRef<[u8]>> Bye<T> {
    /// Checks PT 203, that SC SSRCs fit, and that the optional reason fits.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let buf = buffer.as_ref();
        let ssrcs_end = HEADER_LEN + 4 * usize::from(buf.first().map_or(0, |b| b & 0x1F));
        let body_end = check_typed(buf, PT_BYE, None, ssrcs_end)?;
        if body_end > ssrcs_end && ssrcs_end + 1 + usize::from(buf[ssrcs_end]) > body_end {
            return Err(WireError::BadLength);
        }
        Ok(Bye { buffer, body_end })
    }

    /// Number of SSRCs (SC).
    pub fn ssrc_count(&self) -> u8 {
        self.buf()[0] & 0x1F
    }

    /// The `index`th SSRC.
    pub fn ssrc(&self, index: usize) -> Option<Ssrc> {
        (index < usize::from(self.ssrc_count())).then(|| Ssrc(be32(self.buf(), HEADER_LEN + 4 * index)))
    }

    /// All SSRCs.
    pub fn ssrcs(&self) -> impl Iterator<Item = Ssrc> + '_ {
        (0..usize::from(self.ssrc_count())).filter_map(|i| self.ssrc(i))
    }

    /// The reason for leaving, if present.
    pub fn reason(&self) -> Option<&[u8]> {
        let start = HEADER_LEN + 4 * usize::from(self.ssrc_count());
        if self.body_end <= start {
            return None;
        }
        let len = usize::from(self.buf()[start]);
        Some(&self.buf()[start + 1..start + 1 + len])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Bye<T> {
    /// Sets the `index`th SSRC; `Err(OutOfRange)` past SC.
    pub fn set_ssrc(&mut self, index: usize, ssrc: Ssrc) -> Result<(), WireError> {
        if index >= usize::from(self.ssrc_count()) {
            return Err(WireError::OutOfRange);
        }
        set_be32(self.buf_mut(), HEADER_LEN + 4 * index, ssrc.0);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// APP (RFC 3550 §6.7)
//
// |V=2|P| subtype |   PT=APP=204  |             length            |
// |                           SSRC/CSRC                           |
// |                          name (ASCII)                         |
// |                   application-dependent data ...              |
// ---------------------------------------------------------------------------------------------

view! {
    /// An application-defined packet.
    App
}

impl<T: AsRef<[u8]>> App<T> {
    /// Checks PT 204 and that SSRC and name fit.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let body_end = check_typed(buffer.as_ref(), PT_APP, None, 12)?;
        Ok(App { buffer, body_end })
    }

    /// The subtype (the 5-bit count field).
    pub fn subtype(&self) -> u8 {
        self.buf()[0] & 0x1F
    }

    /// The SSRC/CSRC.
    pub fn ssrc(&self) -> Ssrc {
        Ssrc(be32(self.buf(), 4))
    }

    /// The four-character name.
    pub fn name(&self) -> [u8; 4] {
        [self.buf()[8], self.buf()[9], self.buf()[10], self.buf()[11]]
    }

    /// Application-dependent data, padding excluded.
    pub fn data(&self) -> &[u8] {
        &self.buf()[12..self.body_end]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> App<T> {
    /// Sets the SSRC/CSRC.
    pub fn set_ssrc(&mut self, ssrc: Ssrc) {
        set_be32(self.buf_mut(), 4, ssrc.0);
    }
}

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

mod twcc;
pub use twcc::{TransportCc, TwccPacket, TwccPackets, TwccStatus, write_transport_cc};

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

// ---------------------------------------------------------------------------------------------
// Writers
// ---------------------------------------------------------------------------------------------

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

/// Writes a receiver report with up to 31 report blocks; returns the length.
pub fn write_rr(buf: &mut [u8], sender: Ssrc, blocks: &[ReportBlockInfo]) -> Result<usize, WireError> {
    let count = u8::try_from(blocks.len()).map_err(|_| WireError::OutOfRange)?;
    let total = RR_BLOCKS + REPORT_BLOCK_LEN * blocks.len();
    write_header(buf, count, PT_RR, total)?;
    set_be32(buf, 4, sender.0);
    for (i, b) in blocks.iter().enumerate() {
        let off = RR_BLOCKS + REPORT_BLOCK_LEN * i;
        b.write(&mut buf[off..off + REPORT_BLOCK_LEN]);
    }
    Ok(total)
}

/// Writes a sender report with up to 31 report blocks; returns the length.
pub fn write_sr(buf: &mut [u8], sender: Ssrc, info: &SenderInfo, blocks: &[ReportBlockInfo]) -> Result<usize, WireError> {
    let count = u8::try_from(blocks.len()).map_err(|_| WireError::OutOfRange)?;
    let total = SR_BLOCKS + REPORT_BLOCK_LEN * blocks.len();
    write_header(buf, count, PT_SR, total)?;
    set_be32(buf, 4, sender.0);
    set_be32(buf, 8, (info.ntp_timestamp >> 32) as u32);
    set_be32(buf, 12, info.ntp_timestamp as u32);
    set_be32(buf, 16, info.rtp_timestamp);
    set_be32(buf, 20, info.packet_count);
    set_be32(buf, 24, info.octet_count);
    for (i, b) in blocks.iter().enumerate() {
        let off = SR_BLOCKS + REPORT_BLOCK_LEN * i;
        b.write(&mut buf[off..off + REPORT_BLOCK_LEN]);
    }
    Ok(total)
}

/// Writes an SDES packet with one chunk: `ssrc`'s CNAME (RFC 3550 §6.5.1), the item list ended
/// by a null octet and padded to 32 bits; returns the length. A receiver report's compound
/// carries it (RFC 3550 §6.1). `cname` is at most 255 bytes.
pub fn write_sdes_cname(buf: &mut [u8], ssrc: Ssrc, cname: &[u8]) -> Result<usize, WireError> {
    let len = u8::try_from(cname.len()).map_err(|_| WireError::OutOfRange)?;
    // Header, SSRC, type + length + text, at least one null octet, padded to a word.
    let total = (HEADER_LEN + 4 + 2 + cname.len() + 1).next_multiple_of(4);
    write_header(buf, 1, PT_SDES, total)?;
    set_be32(buf, 4, ssrc.0);
    buf[8] = SDES_CNAME;
    buf[9] = len;
    buf[10..10 + cname.len()].copy_from_slice(cname);
    buf[10 + cname.len()..total].fill(0);
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn block(n: u32) -> ReportBlockInfo {
        ReportBlockInfo {
            ssrc: Ssrc(0x1000 + n),
            fraction_lost: 25,
            cumulative_lost: -3,
            highest_seq: 0x0001_FFFF,
            jitter: 42,
            last_sr: 0xAABB_CCDD,
            delay_since_last_sr: 65536,
        }
    }

    #[test]
    fn written_sdes_cname_reads_back() {
        for cname in [&b""[..], b"s", b"sluice", b"sluice!", &[b'x'; 255]] {
            let mut buf = [0u8; 300];
            let n = write_sdes_cname(&mut buf, Ssrc(0xABCD), cname).unwrap();
            assert_eq!(n % 4, 0);
            let sdes = Sdes::new_checked(&buf[..n]).unwrap();
            let chunk = sdes.chunks().next().unwrap();
            assert_eq!(chunk.ssrc, Ssrc(0xABCD));
            assert_eq!(chunk.cname(), Some(cname));
        }
        assert_eq!(write_sdes_cname(&mut [0u8; 300], Ssrc(1), &[b'x'; 256]), Err(WireError::OutOfRange));
    }

    /// Every strict prefix of a written packet must be refused by the generic and typed views.
    fn assert_truncations_refused(pkt: &[u8], typed_ok: impl Fn(&[u8]) -> bool) {
        for n in 0..pkt.len() {
            assert!(Packet::new_checked(&pkt[..n]).is_err(), "len {n}");
            assert!(!typed_ok(&pkt[..n]), "typed len {n}");
            assert_eq!(compound(&pkt[..n]).filter(Result::is_ok).count(), 0, "compound len {n}");
        }
    }

    /// Every too-small buffer must be refused by a writer, without writing past it.
    fn assert_small_buffers_refused(len: usize, write: impl Fn(&mut [u8]) -> Result<usize, WireError>) {
        let mut buf = [0u8; 1024];
        for n in 0..len {
            assert_eq!(write(&mut buf[..n]), Err(WireError::BufferTooSmall), "buffer {n}");
        }
        assert_eq!(write(&mut buf[..len]), Ok(len));
    }

    #[test]
    fn sr_round_trip() {
        let info = SenderInfo { ntp_timestamp: 0xE2F0_1234_8000_0000, rtp_timestamp: 90_000, packet_count: 12, octet_count: 3456 };
        let blocks = [block(1), block(2)];
        let mut buf = [0u8; 128];
        let n = write_sr(&mut buf, Ssrc(7), &info, &blocks).unwrap();
        assert_eq!(n, 28 + 48);
        let pkt = Packet::new_checked(&buf[..n]).unwrap();
        assert_eq!((pkt.kind(), pkt.count(), pkt.total_len()), (Kind::SenderReport, 2, n));
        let sr = SenderReport::new_checked(&buf[..n]).unwrap();
        assert_eq!(sr.sender_ssrc(), Ssrc(7));
        assert_eq!(sr.sender_info(), info);
        assert_eq!(sr.ntp_timestamp(), info.ntp_timestamp);
        assert_eq!((sr.rtp_timestamp(), sr.packet_count(), sr.octet_count()), (90_000, 12, 3456));
        assert_eq!(sr.report_count(), 2);
        assert!(sr.report_blocks().map(|b| b.info()).eq(blocks));
        assert!(sr.report_block(2).is_none());
        assert!(sr.extension().is_empty());
        assert_truncations_refused(&buf[..n], |b| SenderReport::new_checked(b).is_ok());
        assert_small_buffers_refused(n, |b| write_sr(b, Ssrc(7), &info, &blocks));

        let mut sr = SenderReport::new_checked(&mut buf[..n]).unwrap();
        sr.set_sender_ssrc(Ssrc(8));
        sr.set_rtp_timestamp(1);
        sr.set_packet_count(2);
        sr.set_octet_count(3);
        sr.set_ntp_timestamp(4);
        let mut rb = sr.report_block_mut(1).unwrap();
        rb.set_ssrc(Ssrc(99));
        rb.set_highest_seq(5);
        rb.set_last_sr(6);
        assert!(sr.report_block_mut(2).is_none());
        let sr = SenderReport::new_checked(&buf[..n]).unwrap();
        assert_eq!(sr.sender_ssrc(), Ssrc(8));
        assert_eq!(sr.sender_info(), SenderInfo { ntp_timestamp: 4, rtp_timestamp: 1, packet_count: 2, octet_count: 3 });
        let b = sr.report_block(1).unwrap().info();
        assert_eq!((b.ssrc, b.highest_seq, b.last_sr, b.jitter), (Ssrc(99), 5, 6, 42));
        assert_eq!(sr.report_block(0).unwrap().info(), block(1));
    }

    #[test]
    fn rr_round_trip_and_lost_clamping() {
        let mut blocks = [block(1); 31];
        blocks[0].cumulative_lost = i32::MAX;
        blocks[1].cumulative_lost = i32::MIN;
        blocks[2].cumulative_lost = -0x80_0000;
        let mut buf = [0u8; 1024];
        let n = write_rr(&mut buf, Ssrc(1), &blocks).unwrap();
        assert_eq!(n, 8 + 31 * 24);
        let rr = ReceiverReport::new_checked(&buf[..n]).unwrap();
        assert_eq!((rr.sender_ssrc(), rr.report_count()), (Ssrc(1), 31));
        let lost: Vec<i32> = rr.report_blocks().take(4).map(|b| b.cumulative_lost()).collect();
        assert_eq!(lost, [0x7F_FFFF, -0x80_0000, -0x80_0000, -3]);
        assert_eq!(write_rr(&mut buf, Ssrc(1), &[block(1); 32]), Err(WireError::OutOfRange));
        let n = write_rr(&mut buf, Ssrc(1), &[]).unwrap();
        assert_eq!(n, 8);
        assert_eq!(ReceiverReport::new_checked(&buf[..n]).unwrap().report_blocks().count(), 0);
        let n = write_rr(&mut buf, Ssrc(1), &blocks[..1]).unwrap();
        assert_truncations_refused(&buf[..n], |b| ReceiverReport::new_checked(b).is_ok());
        assert_small_buffers_refused(n, |b| write_rr(b, Ssrc(1), &blocks[..1]));
        let mut rr = ReceiverReport::new_checked(&mut buf[..n]).unwrap();
        rr.set_sender_ssrc(Ssrc(2));
        rr.report_block_mut(0).unwrap().set_ssrc(Ssrc(3));
        let rr = ReceiverReport::new_checked(&buf[..n]).unwrap();
        assert_eq!((rr.sender_ssrc(), rr.report_block(0).unwrap().ssrc()), (Ssrc(2), Ssrc(3)));
        // RC larger than the length allows.
        buf[0] |= 2;
        assert_eq!(ReceiverReport::new_checked(&buf[..n]), Err(WireError::BadLength));
        // A PLI is not an RR.
        let n = write_pli(&mut buf, Ssrc(1), Ssrc(2)).unwrap();
        assert_eq!(ReceiverReport::new_checked(&buf[..n]), Err(WireError::WrongType));
    }

    #[test]
    fn pli_fir_round_trip() {
        let mut buf = [0u8; 64];
        let n = write_pli(&mut buf, Ssrc(1), Ssrc(2)).unwrap();
        assert_eq!(&buf[..n], &[0x81, 206, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2]);
        let pli = Pli::new_checked(&buf[..n]).unwrap();
        assert_eq!((pli.sender_ssrc(), pli.media_ssrc()), (Ssrc(1), Ssrc(2)));
        assert_eq!(Packet::new_checked(&buf[..n]).unwrap().kind(), Kind::Pli);
        assert_truncations_refused(&buf[..n], |b| Pli::new_checked(b).is_ok());
        assert_small_buffers_refused(n, |b| write_pli(b, Ssrc(1), Ssrc(2)));
        let mut pli = Pli::new_checked(&mut buf[..n]).unwrap();
        pli.set_sender_ssrc(Ssrc(3));
        pli.set_media_ssrc(Ssrc(4));
        let pli = Pli::new_checked(&buf[..n]).unwrap();
        assert_eq!((pli.sender_ssrc(), pli.media_ssrc()), (Ssrc(3), Ssrc(4)));
        assert_eq!(Fir::new_checked(&buf[..n]), Err(WireError::WrongType));

        let entries = [FirEntry { ssrc: Ssrc(10), seq: 1 }, FirEntry { ssrc: Ssrc(11), seq: 255 }];
        let n = write_fir(&mut buf, Ssrc(1), &entries).unwrap();
        assert_eq!(n, 28);
        assert_eq!(&buf[12..20], &[0, 0, 0, 10, 1, 0, 0, 0]);
        let fir = Fir::new_checked(&buf[..n]).unwrap();
        assert_eq!((fir.sender_ssrc(), fir.media_ssrc()), (Ssrc(1), Ssrc(0)));
        assert!(fir.entries().eq(entries));
        assert_eq!(Packet::new_checked(&buf[..n]).unwrap().kind(), Kind::Fir);
        assert_truncations_refused(&buf[..n], |b| Fir::new_checked(b).is_ok());
        assert_small_buffers_refused(n, |b| write_fir(b, Ssrc(1), &entries));
        let mut fir = Fir::new_checked(&mut buf[..n]).unwrap();
        fir.set_entry_ssrc(1, Ssrc(12)).unwrap();
        fir.set_entry_seq(1, 7).unwrap();
        assert_eq!(fir.set_entry_ssrc(2, Ssrc(0)), Err(WireError::OutOfRange));
        assert_eq!(fir.entry(1), Some(FirEntry { ssrc: Ssrc(12), seq: 7 }));
    }

    #[test]
    fn nack_round_trip_and_expansion() {
        let item = NackItem { pid: 100, blp: 0b101 };
        assert!(item.sequence_numbers().eq([100, 101, 103]));
        let wrap = NackItem { pid: 65535, blp: 0x8001 };
        assert!(wrap.sequence_numbers().eq([65535, 0, 15]));

        let mut items = [NackItem::default(); 8];
        let lost = [65530u16, 65535, 0, 9, 10, 11, 500, 500, 516, 517];
        let k = pack_nack_items(lost, &mut items).unwrap();
        // 65530 covers through 10 (wrapping); 516 is 500 + 16; 517 is one too far.
        assert_eq!(k, 4);
        let mut buf = [0u8; 64];
        let n = write_nack(&mut buf, Ssrc(1), Ssrc(2), &items[..k]).unwrap();
        assert_eq!(n, 12 + 4 * k);
        let nack = Nack::new_checked(&buf[..n]).unwrap();
        assert_eq!((nack.sender_ssrc(), nack.media_ssrc(), nack.item_count()), (Ssrc(1), Ssrc(2), 4));
        let mut expect: Vec<u16> = lost.to_vec();
        expect.dedup();
        assert!(nack.sequence_numbers().eq(expect));
        assert_eq!(Packet::new_checked(&buf[..n]).unwrap().kind(), Kind::Nack);
        assert_truncations_refused(&buf[..n], |b| Nack::new_checked(b).is_ok());
        assert_small_buffers_refused(n, |b| write_nack(b, Ssrc(1), Ssrc(2), &items[..k]));
        assert_eq!(pack_nack_items(lost, &mut items[..2]), Err(WireError::BufferTooSmall));

        let mut nack = Nack::new_checked(&mut buf[..n]).unwrap();
        nack.set_item(0, NackItem { pid: 1, blp: 2 }).unwrap();
        nack.set_sender_ssrc(Ssrc(5));
        nack.set_media_ssrc(Ssrc(6));
        assert_eq!(nack.set_item(4, item), Err(WireError::OutOfRange));
        assert_eq!(nack.item(0), Some(NackItem { pid: 1, blp: 2 }));
        assert_eq!((nack.sender_ssrc(), nack.media_ssrc()), (Ssrc(5), Ssrc(6)));
    }

    #[test]
    fn remb_round_trip() {
        let mut buf = [0u8; 64];
        let ssrcs = [Ssrc(0x1111), Ssrc(0x2222)];
        let n = write_remb(&mut buf, Ssrc(1), 2_500_000, &ssrcs).unwrap();
        assert_eq!(n, 28);
        let remb = Remb::new_checked(&buf[..n]).unwrap();
        assert_eq!(Packet::new_checked(&buf[..n]).unwrap().kind(), Kind::Remb);
        // 2.5 Mbps needs 22 bits: exp 4, mantissa 156250.
        assert_eq!((remb.bitrate_exp(), remb.bitrate_mantissa()), (4, 156_250));
        assert_eq!(remb.bitrate(), 2_500_000);
        assert!(remb.ssrcs().eq(ssrcs));
        assert_eq!(remb.ssrc_count(), 2);
        assert_truncations_refused(&buf[..n], |b| Remb::new_checked(b).is_ok());
        assert_small_buffers_refused(n, |b| write_remb(b, Ssrc(1), 2_500_000, &ssrcs));
        let mut remb = Remb::new_checked(&mut buf[..n]).unwrap();
        remb.set_ssrc(1, Ssrc(0x3333)).unwrap();
        assert_eq!(remb.set_ssrc(2, Ssrc(0)), Err(WireError::OutOfRange));
        remb.set_bitrate(u64::MAX);
        assert_eq!(remb.bitrate(), u64::MAX >> 46 << 46);
        remb.set_bitrate(100);
        assert_eq!((remb.bitrate_exp(), remb.bitrate()), (0, 100));
        remb.set_sender_ssrc(Ssrc(9));
        assert_eq!(remb.ssrc(1), Some(Ssrc(0x3333)));
        assert_eq!(remb.sender_ssrc(), Ssrc(9));
        // Maximal exponent with a large mantissa saturates instead of overflowing.
        buf[17] = 0xFF;
        assert_eq!(Remb::new_checked(&buf[..n]).unwrap().bitrate(), u64::MAX);
        // Not "REMB": another application-layer feedback.
        buf[12] = b'X';
        assert_eq!(Packet::new_checked(&buf[..n]).unwrap().kind(), Kind::OtherPsfb);
        assert_eq!(Remb::new_checked(&buf[..n]), Err(WireError::WrongType));
    }

    #[test]
    fn transport_cc_header() {
        // Base seq 1, 3 statuses, reference time -1 (24-bit), fb count 5, one run-length
        // chunk (3 x "received, small delta") and three 1-byte deltas plus a padding byte.
        let pkt = [0x8F, 205, 0, 6, 0, 0, 0, 1, 0, 0, 0, 2, 0x00, 0x01, 0x00, 0x03, 0xFF, 0xFF, 0xFF, 0x05, 0x20, 0x03, 0x04, 0x04, 0x04, 0x00, 0x00, 0x00];
        let t = TransportCc::new_checked(&pkt[..]).unwrap();
        assert_eq!(Packet::new_checked(&pkt[..]).unwrap().kind(), Kind::TransportCc);
        assert_eq!((t.sender_ssrc(), t.media_ssrc()), (Ssrc(1), Ssrc(2)));
        assert_eq!((t.base_sequence_number(), t.packet_status_count()), (1, 3));
        assert_eq!((t.reference_time(), t.feedback_packet_count()), (-1, 5));
        assert_eq!(t.chunks_and_deltas(), &pkt[20..]);
        let pkts: Vec<_> = t.packets().collect();
        assert_eq!(pkts, (1..=3).map(|seq| Ok(TwccPacket { seq, status: TwccStatus::SmallDelta, delta: Some(4) })).collect::<Vec<_>>());
        assert_truncations_refused(&pkt, |b| TransportCc::new_checked(b).is_ok());
        assert_eq!(Nack::new_checked(&pkt[..]), Err(WireError::WrongType));
    }

    #[test]
    fn transport_cc_status_vectors() {
        // Base seq 65534, 10 statuses: a 2-bit vector [large, not received, small, 0 x4], then
        // a 1-bit vector [1, 0, 1, 0 x11] of which only 3 symbols count. Deltas: -2 (large),
        // 8, 1, 2 (small). 20 + 4 + 5 = 29 bytes, padded with zeros to 32.
        let pkt = [
            0x8F, 205, 0, 7, 0, 0, 0, 1, 0, 0, 0, 2, 0xFF, 0xFE, 0x00, 10, 0, 0, 0, 0, //
            0xE1, 0x00, 0xA8, 0x00, 0xFF, 0xFE, 8, 1, 2, 0, 0, 0,
        ];
        let t = TransportCc::new_checked(&pkt[..]).unwrap();
        let got: Vec<_> = t.packets().map(Result::unwrap).collect();
        use TwccStatus::*;
        let want = [
            (65534, LargeDelta, Some(-2)),
            (65535, NotReceived, None),
            (0, SmallDelta, Some(8)),
            (1, NotReceived, None),
            (2, NotReceived, None),
            (3, NotReceived, None),
            (4, NotReceived, None),
            (5, SmallDelta, Some(1)),
            (6, NotReceived, None),
            (7, SmallDelta, Some(2)),
        ]
        .map(|(seq, status, delta)| TwccPacket { seq, status, delta });
        assert_eq!(got, want);
        // Claiming more statuses than the chunks and deltas hold ends in one error.
        let mut b = pkt;
        b[15] = 30;
        let t = TransportCc::new_checked(&b[..]).unwrap();
        let got: Vec<_> = t.packets().collect();
        assert_eq!(got.last(), Some(&Err(WireError::BadLength)));
        assert!(got.len() <= 30);
    }

    /// SDES with two chunks: CNAME "user@example.com" + NAME "Al"; a chunk with only a CNAME.
    const SDES: [u8; 40] = [
        0x82, 202, 0, 9, //
        0, 0, 0, 1, 1, 16, b'u', b's', b'e', b'r', b'@', b'e', b'x', b'a', b'm', b'p', b'l', b'e', b'.', b'c', b'o', b'm', 2, 2, b'A', b'l', 0,
        0, // chunk 1 (28 bytes)
        0, 0, 0, 2, 1, 1, b'x', 0, // chunk 2 (8 bytes)
    ];

    #[test]
    fn sdes_chunks_and_items() {
        let sdes = Sdes::new_checked(&SDES[..]).unwrap();
        assert_eq!(sdes.chunk_count(), 2);
        let chunks: Vec<_> = sdes.chunks().collect();
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].ssrc, Ssrc(1));
        assert_eq!(chunks[0].cname(), Some(&b"user@example.com"[..]));
        let items: Vec<_> = chunks[0].items().map(|i| (i.kind, i.value)).collect();
        assert_eq!(items, [(1, &b"user@example.com"[..]), (2, &b"Al"[..])]);
        assert_eq!((chunks[1].ssrc, chunks[1].cname()), (Ssrc(2), Some(&b"x"[..])));
        assert_truncations_refused(&SDES, |b| Sdes::new_checked(b).is_ok());
        // SC says three chunks.
        let mut b = SDES;
        b[0] = 0x83;
        assert_eq!(Sdes::new_checked(&b[..]), Err(WireError::BadLength));
        // An item running past the packet.
        let mut b = SDES;
        b[37] = 9;
        assert_eq!(Sdes::new_checked(&b[..]), Err(WireError::BadLength));
        // Missing END octet in the last chunk.
        let mut b = SDES;
        b[39] = b'y';
        assert_eq!(Sdes::new_checked(&b[..]), Err(WireError::BadLength));
    }

    #[test]
    fn bye_and_app() {
        let bye = [0x82, 203, 0, 4, 0, 0, 0, 1, 0, 0, 0, 2, 5, b'c', b'i', b'a', b'o', 0, 0, 0];
        let b = Bye::new_checked(&bye[..]).unwrap();
        assert!(b.ssrcs().eq([Ssrc(1), Ssrc(2)]));
        assert_eq!(b.reason(), Some(&b"ciao"[..]).map(|_| &bye[13..18]));
        assert_truncations_refused(&bye, |b| Bye::new_checked(b).is_ok());
        let mut m = bye;
        Bye::new_checked(&mut m[..]).unwrap().set_ssrc(1, Ssrc(3)).unwrap();
        assert_eq!(Bye::new_checked(&m[..]).unwrap().ssrc(1), Some(Ssrc(3)));
        // Reason longer than the packet.
        m[12] = 8;
        assert_eq!(Bye::new_checked(&m[..]), Err(WireError::BadLength));
        // No reason.
        let short = [0x81, 203, 0, 1, 0, 0, 0, 9];
        assert_eq!(Bye::new_checked(&short[..]).unwrap().reason(), None);

        let app = [0x85, 204, 0, 3, 0, 0, 0, 7, b'T', b'E', b'S', b'T', 1, 2, 3, 4];
        let a = App::new_checked(&app[..]).unwrap();
        assert_eq!((a.subtype(), a.ssrc(), a.name()), (5, Ssrc(7), *b"TEST"));
        assert_eq!(a.data(), &[1, 2, 3, 4]);
        assert_truncations_refused(&app, |b| App::new_checked(b).is_ok());
    }

    #[test]
    fn padding() {
        // RR with no blocks, then 4 bytes of padding (P set, count 4).
        let pkt = [0xA0, 201, 0, 2, 0, 0, 0, 1, 0, 0, 0, 4];
        let p = Packet::new_checked(&pkt[..]).unwrap();
        assert_eq!((p.padding_len(), p.body()), (4, &pkt[4..8]));
        assert!(ReceiverReport::new_checked(&pkt[..]).unwrap().extension().is_empty());
        let mut b = pkt;
        b[11] = 0;
        assert_eq!(Packet::new_checked(&b[..]), Err(WireError::BadPadding));
        b[11] = 9;
        assert_eq!(Packet::new_checked(&b[..]), Err(WireError::BadPadding));
        // Padding eating the sender SSRC makes the RR too short.
        b[11] = 8;
        assert_eq!(ReceiverReport::new_checked(&b[..]), Err(WireError::BadLength));
        // Padding that leaves a partial NACK item.
        let mut n = [0u8; 20];
        let len = write_nack(&mut n, Ssrc(1), Ssrc(2), &[NackItem { pid: 1, blp: 0 }; 2]).unwrap();
        n[0] |= 0x20;
        n[len - 1] = 2;
        assert_eq!(Nack::new_checked(&n[..len]), Err(WireError::BadLength));
        n[len - 1] = 4;
        assert_eq!(Nack::new_checked(&n[..len]).unwrap().item_count(), 1);
    }

    #[test]
    fn compound_walk_and_rewrite() {
        let mut dgram = [0u8; 256];
        let mut len = write_sr(&mut dgram, Ssrc(1), &SenderInfo::default(), &[block(1)]).unwrap();
        dgram[len..len + SDES.len()].copy_from_slice(&SDES);
        len += SDES.len();
        len += write_pli(&mut dgram[len..], Ssrc(1), Ssrc(2)).unwrap();
        len += write_nack(&mut dgram[len..], Ssrc(1), Ssrc(2), &[NackItem { pid: 7, blp: 1 }]).unwrap();
        let kinds: Vec<_> = compound(&dgram[..len]).map(|p| p.unwrap().kind()).collect();
        assert_eq!(kinds, [Kind::SenderReport, Kind::Sdes, Kind::Pli, Kind::Nack]);

        // Rewrite every sender SSRC in place, as feedback translation does.
        for pkt in compound_mut(&mut dgram[..len]) {
            let mut pkt = pkt.unwrap();
            match pkt.kind() {
                Kind::SenderReport => SenderReport::new_checked(pkt.as_bytes_mut()).unwrap().set_sender_ssrc(Ssrc(9)),
                Kind::Pli => Pli::new_checked(pkt.as_bytes_mut()).unwrap().set_media_ssrc(Ssrc(8)),
                Kind::Nack => Nack::new_checked(pkt.as_bytes_mut()).unwrap().set_media_ssrc(Ssrc(8)),
                _ => {}
            }
        }
        let mut it = compound(&dgram[..len]);
        let sr = it.next().unwrap().unwrap();
        assert_eq!(SenderReport::new_checked(sr.as_bytes()).unwrap().sender_ssrc(), Ssrc(9));
        it.next();
        let pli = it.next().unwrap().unwrap();
        assert_eq!(Pli::new_checked(pli.as_bytes()).unwrap().media_ssrc(), Ssrc(8));
        let nack = it.next().unwrap().unwrap();
        assert!(Nack::new_checked(nack.as_bytes()).unwrap().sequence_numbers().eq([7, 8]));
        assert!(it.next().is_none());

        // A truncated last packet: the good ones come out, then one error, then nothing.
        let items: Vec<_> = compound(&dgram[..len - 1]).map(|p| p.map(|p| p.kind())).collect();
        assert_eq!(items, [Ok(Kind::SenderReport), Ok(Kind::Sdes), Ok(Kind::Pli), Err(WireError::Truncated)]);
        assert_eq!(compound(&[]).count(), 0);
        assert_eq!(is_reduced_size(&dgram[..len]), Some(false));
        let pli_at = len - 16 - 12;
        assert_eq!(is_reduced_size(&dgram[pli_at..len]), Some(true));
        assert_eq!(is_reduced_size(&dgram[pli_at..pli_at + 3]), None);
        assert_eq!(compound(&[0x40, 200, 0, 0]).next(), Some(Err(WireError::BadVersion)));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5506);
        let mut buf = [0u8; 96];
        for _ in 0..100_000 {
            let n = rng.random_range(0..buf.len());
            rng.fill(&mut buf[..n]);
            buf[0] = 0x80 | (buf[0] & 0x3F);
            if n > 3 {
                buf[1] = rng.random_range(200..=206);
                buf[2] = 0;
                buf[3] = rng.random_range(0..(n as u8 / 4).max(1) + 1);
            }
            if rng.random_bool(0.3) && n > 16 {
                buf[12..16].copy_from_slice(b"REMB");
            }
            for pkt in compound_mut(&mut buf[..n]) {
                let Ok(mut pkt) = pkt else { break };
                let _ = (pkt.kind(), pkt.body().len());
                let b = pkt.as_bytes_mut();
                if let Ok(mut v) = SenderReport::new_checked(&mut *b) {
                    let _ = (v.sender_info(), v.report_blocks().count(), v.extension().len());
                    if let Some(mut rb) = v.report_block_mut(0) {
                        rb.set_ssrc(Ssrc(1));
                    }
                }
                if let Ok(v) = ReceiverReport::new_checked(&*b) {
                    for b in v.report_blocks() {
                        let _ = b.info();
                    }
                    let _ = v.extension().len();
                }
                if let Ok(v) = Sdes::new_checked(&*b) {
                    for c in v.chunks() {
                        let _ = (c.cname(), c.items().count());
                    }
                }
                if let Ok(v) = Bye::new_checked(&*b) {
                    let _ = (v.ssrcs().count(), v.reason());
                }
                if let Ok(v) = App::new_checked(&*b) {
                    let _ = v.data();
                }
                if let Ok(mut v) = Nack::new_checked(&mut *b) {
                    let _ = v.sequence_numbers().count();
                    let _ = v.set_item(0, NackItem::default());
                }
                if let Ok(v) = TransportCc::new_checked(&*b) {
                    let _ = (v.reference_time(), v.chunks_and_deltas().len());
                    assert!(v.packets().count() <= usize::from(v.packet_status_count()));
                }
                if let Ok(mut v) = Fir::new_checked(&mut *b) {
                    let _ = v.entries().count();
                    let _ = v.set_entry_ssrc(0, Ssrc(1));
                }
                if let Ok(mut v) = Remb::new_checked(&mut *b) {
                    let _ = (v.bitrate(), v.ssrcs().count());
                    let _ = v.set_ssrc(0, Ssrc(1));
                    v.set_bitrate(12345);
                }
                let _ = Pli::new_checked(&*b).map(|v| v.media_ssrc());
            }
        }
    }
}
