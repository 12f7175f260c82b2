//! RTP packets (RFC 3550 §5.1) and their RFC 8285 header extensions.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |V=2|P|X|  CC   |M|     PT      |       sequence number         |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                           timestamp                           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |           synchronization source (SSRC) identifier            |
//! +=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+
//! |            contributing source (CSRC) identifiers             |
//! |                             ....  (CC words)                  |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |      defined by profile       |           length              |  (if X, RFC 3550 §5.3.1)
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                  header extension (length words)              |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                 payload ...   | padding ...   | pad count (P) |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! # Why our own view and not `rtp-types`
//!
//! `rtp-types` 0.1 is a fine parser and we use it as a differential oracle in the tests, but it
//! does not fit the SFU's per-packet rewrite:
//!
//! - Its `RtpPacketMut` does edit in place (marker, PT, seq, timestamp, SSRC, the raw extension
//!   profile id, and mutable raw extension/payload slices), but it knows nothing of RFC 8285
//!   elements: `extension()` returns the profile and the raw block, so finding RID or
//!   abs-send-time, and remapping or dropping element ids, would be our code on top of it anyway.
//! - It borrows (`&'a [u8]` / `&'a mut [u8]`) rather than owning a generic `T: AsRef<[u8]>`, so it
//!   cannot wrap a UMEM frame handle or a pooled buffer and give it back with `into_inner`.
//! - Its errors carry `usize` context and are built for reporting; ours are a one-byte counter
//!   index.
//! - It relies on `unsafe` (a transmute between the two views) in a crate we otherwise keep
//!   `forbid(unsafe_code)`.
//!
//! # Header extensions (RFC 8285)
//!
//! One-byte form, profile `0xBEDE` (§4.2): each element is `ID(4) | L(4)` followed by `L+1`
//! bytes; ID 0 is a single padding byte, ID 15 ends processing. Two-byte form, profile
//! `0x100` + 4 app bits (§4.3): `ID(8) | L(8)` followed by `L` bytes; ID 0 is a padding byte.
//!
//! Dropping an element the subscriber did not negotiate overwrites the element (header and data)
//! with zero bytes, which both forms define as padding: the payload does not move, the block
//! length does not change, and no memmove happens per packet.

use super::{WireError, be16, be32, set_be16, set_be32, Ssrc};

/// Length of the fixed RTP header.
pub const HEADER_LEN: usize = 12;

/// RFC 8285 one-byte header form profile.
pub const ONE_BYTE_PROFILE: u16 = 0xBEDE;

/// RFC 8285 two-byte header form profile, with the 4 low "appbits" masked off.
pub const TWO_BYTE_PROFILE: u16 = 0x1000;

/// A checked, zero-copy view of an RTP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<T> {
    buffer: T,
}

/// Which RFC 8285 header-extension form a packet uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtensionForm {
    /// Profile 0xBEDE, RFC 8285 §4.2.
    OneByte,
    /// Profile 0x100X, RFC 8285 §4.3.
    TwoByte,
}

impl ExtensionForm {
    /// The form a header-extension profile value denotes, if it is an RFC 8285 one.
    pub fn from_profile(profile: u16) -> Option<Self> {
        if profile == ONE_BYTE_PROFILE {
            Some(ExtensionForm::OneByte)
        } else if profile & 0xFFF0 == TWO_BYTE_PROFILE {
            Some(ExtensionForm::TwoByte)
        } else {
            None
        }
    }
}

/// One RFC 8285 header-extension element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extension<'a> {
    /// The local identifier (1..=14 in the one-byte form, 1..=255 in the two-byte form).
    pub id: u8,
    /// The element data.
    pub data: &'a [u8],
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Validates `buffer` as an RTP packet; afterwards no accessor can panic.
    ///
    /// Checks: at least 12 bytes, version 2, the CSRC list and the extension block (header and
    /// its declared length) fit, and with P set the padding count is non-zero and does not reach
    /// back into the header. RFC 8285 elements are checked lazily by [`Packet::extensions`] so
    /// that a malformed block can be counted without refusing the media.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let buf = buffer.as_ref();
        if buf.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if buf[0] >> 6 != 2 {
            return Err(WireError::BadVersion);
        }
        let ext_off = HEADER_LEN + 4 * usize::from(buf[0] & 0x0F);
        if buf.len() < ext_off {
            return Err(WireError::Truncated);
        }
        let mut header_len = ext_off;
        if buf[0] & 0x10 != 0 {
            if buf.len() < ext_off + 4 {
                return Err(WireError::Truncated);
            }
            header_len = ext_off + 4 + 4 * usize::from(be16(buf, ext_off + 2));
            if buf.len() < header_len {
                return Err(WireError::Truncated);
            }
        }
        if buf[0] & 0x20 != 0 {
            // RFC 3550 §5.1: the last octet counts the padding, itself included.
            let Some(&pad) = buf.get(header_len..).and_then(<[u8]>::last) else {
                return Err(WireError::Truncated);
            };
            if pad == 0 || header_len + usize::from(pad) > buf.len() {
                return Err(WireError::BadPadding);
            }
        }
        Ok(Packet { buffer })
    }

    /// Gives the buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn buf(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// RTP version (always 2 once checked).
    pub fn version(&self) -> u8 {
        self.buf()[0] >> 6
    }

    /// The P bit.
    pub fn has_padding(&self) -> bool {
        self.buf()[0] & 0x20 != 0
    }

    /// The X bit.
    pub fn has_extension(&self) -> bool {
        self.buf()[0] & 0x10 != 0
    }

    /// The CC field: number of CSRC identifiers.
    pub fn csrc_count(&self) -> u8 {
        self.buf()[0] & 0x0F
    }

    /// The M bit.
    pub fn marker(&self) -> bool {
        self.buf()[1] & 0x80 != 0
    }

    /// The payload type (7 bits).
    pub fn payload_type(&self) -> u8 {
        self.buf()[1] & 0x7F
    }

    /// The sequence number.
    pub fn sequence_number(&self) -> u16 {
        be16(self.buf(), 2)
    }

    /// The RTP timestamp.
    pub fn timestamp(&self) -> u32 {
        be32(self.buf(), 4)
    }

    /// The SSRC.
    pub fn ssrc(&self) -> Ssrc {
        Ssrc(be32(self.buf(), 8))
    }

    /// The `index`th CSRC, if present.
    pub fn csrc(&self, index: usize) -> Option<Ssrc> {
        (index < usize::from(self.csrc_count()))
            .then(|| Ssrc(be32(self.buf(), HEADER_LEN + 4 * index)))
    }

    /// All CSRCs in order.
    pub fn csrcs(&self) -> impl Iterator<Item = Ssrc> + '_ {
        (0..usize::from(self.csrc_count())).map(|i| Ssrc(be32(self.buf(), HEADER_LEN + 4 * i)))
    }

    fn extension_offset(&self) -> usize {
        HEADER_LEN + 4 * usize::from(self.csrc_count())
    }

    /// The extension block's "defined by profile" field, if X is set.
    pub fn extension_profile(&self) -> Option<u16> {
        self.has_extension().then(|| be16(self.buf(), self.extension_offset()))
    }

    /// The RFC 8285 form of the extension block, if X is set and the profile is an RFC 8285 one.
    pub fn extension_form(&self) -> Option<ExtensionForm> {
        self.extension_profile().and_then(ExtensionForm::from_profile)
    }

    fn extension_range(&self) -> Option<(usize, usize)> {
        if !self.has_extension() {
            return None;
        }
        let off = self.extension_offset();
        let len = 4 * usize::from(be16(self.buf(), off + 2));
        Some((off + 4, off + 4 + len))
    }

    /// The raw extension block (after its 4-byte header), if X is set.
    pub fn extension_data(&self) -> Option<&[u8]> {
        self.extension_range().map(|(s, e)| &self.buf()[s..e])
    }

    /// The RFC 8285 elements, skipping padding. Empty if there is no extension block or its
    /// profile is not an RFC 8285 one; yields one `Err(BadExtension)` and stops if an element
    /// overruns the block.
    pub fn extensions(&self) -> Extensions<'_> {
        match (self.extension_form(), self.extension_data()) {
            (Some(form), Some(data)) => Extensions { data, elems: RawElements::new(form) },
            _ => Extensions { data: &[], elems: RawElements::done() },
        }
    }

    /// The data of the first element with local identifier `id`, if any well-formed one
    /// precedes any malformation.
    pub fn find_extension(&self, id: u8) -> Option<&[u8]> {
        self.extensions()
            .map_while(Result::ok)
            .find(|e| e.id == id)
            .map(|e| e.data)
    }

    /// Length of the fixed header, CSRC list and extension block: the payload offset.
    pub fn header_len(&self) -> usize {
        self.extension_range().map_or(self.extension_offset(), |(_, end)| end)
    }

    /// Number of padding bytes at the end, the count byte included (0 if P is clear).
    pub fn padding_len(&self) -> usize {
        if self.has_padding() {
            usize::from(self.buf()[self.buf().len() - 1])
        } else {
            0
        }
    }

    /// The payload, padding excluded.
    pub fn payload(&self) -> &[u8] {
        let buf = self.buf();
        &buf[self.header_len()..buf.len() - self.padding_len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn buf_mut(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    /// Sets or clears the M bit.
    pub fn set_marker(&mut self, marker: bool) {
        let b = &mut self.buf_mut()[1];
        *b = (*b & 0x7F) | if marker { 0x80 } else { 0 };
    }

    /// Sets the payload type; only the low 7 bits of `pt` are used, the marker is kept.
    pub fn set_payload_type(&mut self, pt: u8) {
        let b = &mut self.buf_mut()[1];
        *b = (*b & 0x80) | (pt & 0x7F);
    }

    /// Sets the sequence number.
    pub fn set_sequence_number(&mut self, seq: u16) {
        set_be16(self.buf_mut(), 2, seq);
    }

    /// Sets the RTP timestamp.
    pub fn set_timestamp(&mut self, ts: u32) {
        set_be32(self.buf_mut(), 4, ts);
    }

    /// Sets the SSRC.
    pub fn set_ssrc(&mut self, ssrc: Ssrc) {
        set_be32(self.buf_mut(), 8, ssrc.0);
    }

    /// The payload, padding excluded, for in-place rewriting (e.g. a VP8 picture id).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (start, pad) = (self.header_len(), self.padding_len());
        let buf = self.buf_mut();
        let end = buf.len() - pad;
        &mut buf[start..end]
    }

    /// The data of the first element with local identifier `id`, for in-place rewriting
    /// (abs-send-time, transport-wide sequence number).
    pub fn find_extension_mut(&mut self, id: u8) -> Option<&mut [u8]> {
        let (form, (start, end)) = (self.extension_form()?, self.extension_range()?);
        let block = &mut self.buf_mut()[start..end];
        let mut elems = RawElements::new(form);
        while let Some(Ok(e)) = elems.next(block) {
            if e.id == id {
                return Some(&mut block[e.data_start..e.data_end]);
            }
        }
        None
    }

    /// Rewrites every RFC 8285 element id through `map`, in place.
    ///
    /// Elements whose id maps to 0 are overwritten with padding bytes, so the subscriber never
    /// sees an extension it did not negotiate and the payload does not move. The block is
    /// validated first: on `Err(BadExtension)` nothing has been modified. A packet without an
    /// RFC 8285 block is left untouched.
    pub fn remap_extensions(&mut self, map: &ExtensionIdMap) -> Result<(), WireError> {
        let (Some(form), Some((start, end))) = (self.extension_form(), self.extension_range())
        else {
            return Ok(());
        };
        let block = &mut self.buf_mut()[start..end];
        let mut check = RawElements::new(form);
        while let Some(e) = check.next(block) {
            e?;
        }
        let mut elems = RawElements::new(form);
        while let Some(Ok(e)) = elems.next(block) {
            match map.get(e.id) {
                0 => block[e.start..e.data_end].fill(0),
                new => match form {
                    ExtensionForm::OneByte => block[e.start] = (new << 4) | (block[e.start] & 0x0F),
                    ExtensionForm::TwoByte => block[e.start] = new,
                },
            }
        }
        Ok(())
    }
}

/// Maps a publisher's header-extension ids to a subscriber's, per RFC 8285 local identifier.
///
/// Index = incoming id, value = outgoing id, 0 = drop. Ids are limited to 1..=14 on both sides:
/// that is the one-byte range every WebRTC endpoint negotiates, and it keeps the table at 16
/// bytes per subscription. Two-byte-form elements with ids above 14 are always dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExtensionIdMap {
    map: [u8; 16],
}

impl ExtensionIdMap {
    /// A map that drops everything.
    pub const fn new() -> Self {
        ExtensionIdMap { map: [0; 16] }
    }

    /// Maps incoming `from` to outgoing `to` (0 = drop). Both must be in 1..=14 (`to` may be 0).
    pub fn set(&mut self, from: u8, to: u8) -> Result<(), WireError> {
        if !(1..=14).contains(&from) || to > 14 {
            return Err(WireError::OutOfRange);
        }
        self.map[usize::from(from)] = to;
        Ok(())
    }

    /// The outgoing id for incoming `id` (0 = drop).
    pub fn get(&self, id: u8) -> u8 {
        self.map.get(usize::from(id)).copied().unwrap_or(0)
    }
}

/// Iterator over RFC 8285 elements; see [`Packet::extensions`].
#[derive(Debug, Clone)]
pub struct Extensions<'a> {
    data: &'a [u8],
    elems: RawElements,
}

impl<'a> Iterator for Extensions<'a> {
    type Item = Result<Extension<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        let data = self.data;
        self.elems.next(data).map(|r| {
            r.map(|e| Extension { id: e.id, data: &data[e.data_start..e.data_end] })
        })
    }
}

#[derive(Debug, Clone, Copy)]
struct RawElement {
    start: usize,
    id: u8,
    data_start: usize,
    data_end: usize,
}

/// The element walk, by offsets, so the read-only iterator and the in-place rewrites share it.
#[derive(Debug, Clone)]
struct RawElements {
    form: ExtensionForm,
    pos: usize,
    done: bool,
}

impl RawElements {
    fn new(form: ExtensionForm) -> Self {
        RawElements { form, pos: 0, done: false }
    }

    fn done() -> Self {
        RawElements { form: ExtensionForm::OneByte, pos: 0, done: true }
    }

    fn next(&mut self, block: &[u8]) -> Option<Result<RawElement, WireError>> {
        while !self.done {
            let start = self.pos;
            let &b = block.get(start)?;
            let padding = match self.form {
                ExtensionForm::OneByte => b >> 4 == 0,
                ExtensionForm::TwoByte => b == 0,
            };
            if padding {
                // A padding byte (RFC 8285 §4.1): alignment filler or an element we dropped.
                // In the one-byte form ID 0 is padding whatever its L nibble, as in libwebrtc.
                self.pos += 1;
                continue;
            }
            let (id, data_start, len) = match self.form {
                ExtensionForm::OneByte => {
                    if b >> 4 == 15 {
                        // RFC 8285 §4.2: ID 15 ends processing; its length is meaningless.
                        self.done = true;
                        return None;
                    }
                    (b >> 4, start + 1, usize::from(b & 0x0F) + 1)
                }
                ExtensionForm::TwoByte => {
                    let Some(&l) = block.get(start + 1) else {
                        self.done = true;
                        return Some(Err(WireError::BadExtension));
                    };
                    (b, start + 2, usize::from(l))
                }
            };
            let data_end = data_start + len;
            if data_end > block.len() {
                self.done = true;
                return Some(Err(WireError::BadExtension));
            }
            self.pos = data_end;
            return Some(Ok(RawElement { start, id, data_start, data_end }));
        }
        None
    }
}
