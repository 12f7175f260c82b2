//! Reception reports (RFC 3550 §6.4): report blocks, SR and RR, their views and writers.

use super::*;

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
