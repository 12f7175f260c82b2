//! Checked zero-copy views of what arrives on a media port.
//!
//! Contract (the smoltcp `wire/` pattern): every view wraps a caller-owned buffer `T:
//! AsRef<[u8]>`, and `new_checked` validates every length the view will later rely on. After it
//! returns `Ok`, no accessor can panic and none allocates; setters exist where `T: AsMut<[u8]>`
//! and rewrite the bytes in place, because the buffer belongs to the I/O layer (a UMEM frame or a
//! pooled datagram) and copying it per packet is what the fast path cannot afford.
//! `into_inner` hands the buffer back.
//!
//! Failures are [`WireError`], a one-byte `Copy` enum: the forwarding core turns it into a drop
//! verdict that indexes a per-core counter, so it carries no strings and no context.
//!
//! - [`rtp`]: RTP (RFC 3550 §5.1) with RFC 8285 header extensions and the in-place rewrites an
//!   SFU needs (SSRC/seq/timestamp/PT/marker, extension-id remapping).
//! - [`rtcp`]: RTCP compound packets (RFC 3550 §6, RFC 5506), typed views of SR, RR, SDES, BYE,
//!   APP, generic NACK, transport-cc, PLI, FIR and REMB, and writers for what an SFU originates.
//! - [`stun`]: the STUN (RFC 5389) header and attribute walk, for the ICE-lite slow path.
//! - [`demux`]: RFC 7983 / RFC 5761 classification of a datagram by its first two bytes.
//! - [`codec`]: keyframe and layer detection on decrypted VP8, VP9, H.264 and AV1 payloads.
//! - [`dd`]: the AV1 Dependency Descriptor header extension (layers, decode targets, chains),
//!   with the in-place rewrite of its active-decode-targets bitmask.

pub mod codec;
pub mod dd;
pub mod demux;
pub mod rtcp;
pub mod rtp;
pub mod stun;

pub use demux::{PacketClass, classify};

/// Why a buffer was refused by a wire view or a writer.
///
/// `#[repr(u8)]` so that the forwarding core can use it directly as a counter index; the
/// discriminants are stable.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum WireError {
    /// The buffer is shorter than a fixed header or than a length field says.
    #[error("truncated")]
    Truncated = 0,
    /// The version field is not the one this view understands (RTP/RTCP version 2).
    #[error("unsupported version")]
    BadVersion = 1,
    /// The padding count is zero or reaches back into the header.
    #[error("bad padding")]
    BadPadding = 2,
    /// A length or count field is inconsistent with the structure it describes.
    #[error("bad length")]
    BadLength = 3,
    /// An RFC 8285 header-extension block is malformed, or the value of one that the core
    /// parses (an AV1 dependency descriptor) contradicts itself.
    #[error("malformed header extension")]
    BadExtension = 4,
    /// The packet is not of the type this view expects (RTCP PT/FMT, STUN leading bits).
    #[error("wrong packet type")]
    WrongType = 5,
    /// The STUN magic cookie is not 0x2112A442.
    #[error("bad magic cookie")]
    BadMagic = 6,
    /// A writer was given a buffer too small for the packet.
    #[error("buffer too small")]
    BufferTooSmall = 7,
    /// A value does not fit its field (too many items, an id out of range).
    #[error("value out of range")]
    OutOfRange = 8,
    /// A codec payload descriptor or NAL structure is malformed.
    #[error("malformed codec payload")]
    BadPayload = 9,
    /// An AV1 dependency descriptor names a template dependency structure this receiver does
    /// not have (never received, or replaced by one whose packet was lost): the remedy is a
    /// keyframe request, not a corrupt-packet count.
    #[error("dependency structure not received")]
    NoStructure = 10,
}

impl WireError {
    /// Number of variants, for sizing counter arrays indexed by `self as usize`.
    pub const COUNT: usize = 11;
}

/// SSRCs are the core's [`crate::ids::Ssrc`] newtype, so wire views and tables share one type.
pub use crate::ids::Ssrc;

// Big-endian field access. Callers have already proven `off + N <= buf.len()`; the slices below
// are fixed-size so the compiler folds the bounds checks it cannot prove away.
#[inline]
pub(crate) fn be16(buf: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([buf[off], buf[off + 1]])
}

#[inline]
pub(crate) fn be24(buf: &[u8], off: usize) -> u32 {
    u32::from_be_bytes([0, buf[off], buf[off + 1], buf[off + 2]])
}

#[inline]
pub(crate) fn be32(buf: &[u8], off: usize) -> u32 {
    u32::from_be_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]])
}

#[inline]
pub(crate) fn set_be16(buf: &mut [u8], off: usize, v: u16) {
    buf[off..off + 2].copy_from_slice(&v.to_be_bytes());
}

#[inline]
pub(crate) fn set_be24(buf: &mut [u8], off: usize, v: u32) {
    buf[off..off + 3].copy_from_slice(&v.to_be_bytes()[1..]);
}

#[inline]
pub(crate) fn set_be32(buf: &mut [u8], off: usize, v: u32) {
    buf[off..off + 4].copy_from_slice(&v.to_be_bytes());
}
