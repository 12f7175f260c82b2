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

use super::{Ssrc, WireError, be16, be32, set_be16, set_be32};

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
        (index < usize::from(self.csrc_count())).then(|| Ssrc(be32(self.buf(), HEADER_LEN + 4 * index)))
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
        self.extensions().map_while(Result::ok).find(|e| e.id == id).map(|e| e.data)
    }

    /// Length of the fixed header, CSRC list and extension block: the payload offset.
    pub fn header_len(&self) -> usize {
        self.extension_range().map_or(self.extension_offset(), |(_, end)| end)
    }

    /// Number of padding bytes at the end, the count byte included (0 if P is clear).
    pub fn padding_len(&self) -> usize {
        if self.has_padding() { usize::from(self.buf()[self.buf().len() - 1]) } else { 0 }
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
        self.remap_extensions_stamping(map, None).map(|_| ())
    }

    /// [`Packet::remap_extensions`], and in the same pass the first two-byte element with id
    /// `stamp.0` (the publisher's transport-wide sequence number) becomes element `stamp.1`
    /// carrying `stamp.2` (the subscriber leg's own): the SFU is a new sender on every leg
    /// (draft-holmer-rmcat-transport-wide-cc-extensions-01 §2). Returns whether it stamped.
    pub fn remap_extensions_stamping(&mut self, map: &ExtensionIdMap, stamp: Option<(u8, u8, u16)>) -> Result<bool, WireError> {
        let (Some(form), Some((start, end))) = (self.extension_form(), self.extension_range()) else {
            return Ok(false);
        };
        let block = &mut self.buf_mut()[start..end];
        let mut check = RawElements::new(form);
        while let Some(e) = check.next(block) {
            e?;
        }
        let mut elems = RawElements::new(form);
        let mut stamped = false;
        while let Some(Ok(e)) = elems.next(block) {
            let out = match stamp {
                Some((from, to, seq)) if !stamped && e.id == from && e.data_end - e.data_start == 2 && to <= 14 => {
                    block[e.data_start..e.data_end].copy_from_slice(&seq.to_be_bytes());
                    stamped = true;
                    to
                }
                _ => map.get(e.id),
            };
            match (out, form) {
                (0, _) | (15.., ExtensionForm::OneByte) => block[e.start..e.data_end].fill(0),
                (new, ExtensionForm::OneByte) => block[e.start] = (new << 4) | (block[e.start] & 0x0F),
                (new, ExtensionForm::TwoByte) => block[e.start] = new,
            }
        }
        Ok(stamped)
    }
}

/// Writes into `out` a copy of the RTP packet `pkt` whose header-extension element `id` carries
/// `value` instead (a longer or shorter one: the block is re-encoded, in the one-byte form when
/// every element fits it, else the two-byte form; padding between elements is dropped). Returns
/// the copy's length. `BadExtension` when the packet has no element `id` or its block does not
/// parse, `BufferTooSmall` when `out` cannot hold the copy.
pub fn with_extension_replaced(pkt: &[u8], id: u8, value: &[u8], out: &mut [u8]) -> Result<usize, WireError> {
    let p = Packet::new_checked(pkt)?;
    let (Some((start, end)), Some(_)) = (p.extension_range(), p.extension_form()) else { return Err(WireError::BadExtension) };
    let header_start = start - 4;
    let mut elems: [(u8, &[u8]); 16] = [(0, &[]); 16];
    let (mut n, mut found) = (0, false);
    for e in p.extensions() {
        let e = e?;
        let data = if e.id == id {
            found = true;
            value
        } else {
            e.data
        };
        *elems.get_mut(n).ok_or(WireError::OutOfRange)? = (e.id, data);
        n += 1;
    }
    if !found || value.is_empty() || value.len() > 255 {
        return Err(WireError::BadExtension);
    }
    let elems = &elems[..n];
    let one_byte = elems.iter().all(|(i, d)| (1..=14).contains(i) && (1..=16).contains(&d.len()));
    let body: usize = elems.iter().map(|(_, d)| d.len() + if one_byte { 1 } else { 2 }).sum();
    let block = body.div_ceil(4) * 4;
    let total = header_start + 4 + block + (pkt.len() - end);
    let out = out.get_mut(..total).ok_or(WireError::BufferTooSmall)?;
    out[..header_start].copy_from_slice(&pkt[..header_start]);
    let profile = if one_byte { ONE_BYTE_PROFILE } else { TWO_BYTE_PROFILE };
    out[header_start..header_start + 2].copy_from_slice(&profile.to_be_bytes());
    out[header_start + 2..header_start + 4].copy_from_slice(&((block / 4) as u16).to_be_bytes());
    let mut at = header_start + 4;
    for (i, d) in elems {
        if one_byte {
            out[at] = i << 4 | (d.len() - 1) as u8;
            at += 1;
        } else {
            out[at] = *i;
            out[at + 1] = d.len() as u8;
            at += 2;
        }
        out[at..at + d.len()].copy_from_slice(d);
        at += d.len();
    }
    out[at..header_start + 4 + block].fill(0);
    out[header_start + 4 + block..].copy_from_slice(&pkt[end..]);
    Ok(total)
}

/// Decoders for the element values the forwarding path reads. Ids are negotiated per session,
/// so callers look the element up with [`Packet::find_extension`] first.
pub mod ext {
    /// Client-to-mixer audio level (RFC 6464 §3): `|V| level |`, level in -dBov (0 = loudest).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct AudioLevel {
        /// The V flag: the encoder believes the packet contains voice.
        pub voice: bool,
        /// Level in -dBov, 0..=127 (127 = silence).
        pub level: u8,
    }

    /// Decodes an RFC 6464 audio-level element (one byte; a two-byte-form sender may pad it).
    pub fn audio_level(data: &[u8]) -> Option<AudioLevel> {
        let &b = data.first()?;
        Some(AudioLevel { voice: b & 0x80 != 0, level: b & 0x7F })
    }

    /// Decodes abs-send-time (webrtc.org): 24-bit 6.18 fixed-point seconds.
    pub fn abs_send_time(data: &[u8]) -> Option<u32> {
        match *data {
            [a, b, c] => Some(u32::from_be_bytes([0, a, b, c])),
            _ => None,
        }
    }

    /// Decodes transport-wide-cc-01's 16-bit transport sequence number.
    pub fn transport_sequence_number(data: &[u8]) -> Option<u16> {
        match *data {
            [a, b] => Some(u16::from_be_bytes([a, b])),
            _ => None,
        }
    }

    /// RID / repaired-RID (RFC 8852 §3.3). Returns the id if it matches RFC 8851's `rid-id`
    /// grammar (`1*(alpha-numeric / "-" / "_")`), which is what signaling will compare it to.
    pub fn rid(data: &[u8]) -> Option<&[u8]> {
        let ok = |b: &u8| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_';
        (!data.is_empty() && data.iter().all(ok)).then_some(data)
    }
}

/// Maps a publisher's header-extension ids to a subscriber's, per RFC 8285 local identifier.
///
/// Index = incoming id, value = outgoing id, 0 = drop. Ids 1..=14 (the one-byte range every
/// WebRTC endpoint negotiates) go in a 16-byte table; up to [`ExtensionIdMap::WIDE`] mappings
/// may have an id above 14 on either side (the two-byte form, RFC 8285 §4.3, which a browser
/// uses for an extension negotiated beyond the first 14, such as the dependency descriptor). An
/// element whose outgoing id does not fit the packet's form (above 14 in a one-byte-form
/// packet) is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExtensionIdMap {
    map: [u8; 16],
    /// `(from, to)` pairs with an id above 14; `from == 0` is unused.
    wide: [(u8, u8); ExtensionIdMap::WIDE],
}

impl ExtensionIdMap {
    /// How many mappings may have an id above 14.
    pub const WIDE: usize = 2;

    /// A map that drops everything.
    pub const fn new() -> Self {
        ExtensionIdMap { map: [0; 16], wide: [(0, 0); Self::WIDE] }
    }

    /// Maps incoming `from` (1..=255) to outgoing `to` (0 = drop). `OutOfRange` for id 0, or
    /// for a mapping above 14 when [`ExtensionIdMap::WIDE`] of them are taken.
    pub fn set(&mut self, from: u8, to: u8) -> Result<(), WireError> {
        if from == 0 {
            return Err(WireError::OutOfRange);
        }
        if let Some(w) = self.wide.iter_mut().find(|w| w.0 == from) {
            *w = (0, 0);
        }
        if to == 0 && from > 14 {
            return Ok(());
        }
        if from <= 14 && to <= 14 {
            self.map[usize::from(from)] = to;
            return Ok(());
        }
        if from <= 14 {
            self.map[usize::from(from)] = 0;
        }
        let slot = self.wide.iter_mut().find(|w| w.0 == 0).ok_or(WireError::OutOfRange)?;
        *slot = (from, to);
        Ok(())
    }

    /// The outgoing id for incoming `id` (0 = drop).
    pub fn get(&self, id: u8) -> u8 {
        match self.wide.iter().find(|w| w.0 == id && id != 0) {
            Some(w) => w.1,
            None => self.map.get(usize::from(id)).copied().unwrap_or(0),
        }
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
        self.elems.next(data).map(|r| r.map(|e| Extension { id: e.id, data: &data[e.data_start..e.data_end] }))
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// V=2 P=1 X=1 CC=1 M=1 PT=96, one-byte extensions {1: [AA], 3: [01 02 03]} with a padding
    /// byte between them, payload FF FF FF FF, 4 bytes of RTP padding. 0xFF payload bytes make
    /// every truncation invalid (a padding count of 255 or 0).
    const PKT: [u8; 36] = [
        0xB1, 0xE0, 0x12, 0x34, 0xDE, 0xAD, 0xBE, 0xEF, 0x01, 0x02, 0x03, 0x04, // fixed
        0x0A, 0x0B, 0x0C, 0x0D, // CSRC
        0xBE, 0xDE, 0x00, 0x02, // one-byte form, 2 words
        0x10, 0xAA, 0x00, 0x32, 0x01, 0x02, 0x03, 0x00, // elements
        0xFF, 0xFF, 0xFF, 0xFF, // payload
        0x00, 0x00, 0x00, 0x04, // padding
    ];

    #[test]
    fn fields() {
        let p = Packet::new_checked(&PKT[..]).unwrap();
        assert_eq!(p.version(), 2);
        assert!(p.has_padding() && p.has_extension() && p.marker());
        assert_eq!(p.csrc_count(), 1);
        assert_eq!(p.payload_type(), 96);
        assert_eq!(p.sequence_number(), 0x1234);
        assert_eq!(p.timestamp(), 0xDEAD_BEEF);
        assert_eq!(p.ssrc(), Ssrc(0x0102_0304));
        assert_eq!(p.csrc(0), Some(Ssrc(0x0A0B_0C0D)));
        assert_eq!(p.csrc(1), None);
        assert_eq!(p.csrcs().count(), 1);
        assert_eq!(p.extension_profile(), Some(ONE_BYTE_PROFILE));
        assert_eq!(p.extension_form(), Some(ExtensionForm::OneByte));
        assert_eq!(p.header_len(), 28);
        assert_eq!(p.padding_len(), 4);
        assert_eq!(p.payload(), &[0xFF; 4]);
        let exts: Vec<_> = p.extensions().collect();
        assert_eq!(exts, [Ok(Extension { id: 1, data: &[0xAA] }), Ok(Extension { id: 3, data: &[1, 2, 3] })]);
        assert_eq!(p.find_extension(3), Some(&[1u8, 2, 3][..]));
        assert_eq!(p.find_extension(2), None);
        assert_eq!(p.into_inner(), &PKT[..]);
    }

    #[test]
    fn extension_values() {
        assert_eq!(ext::audio_level(&[0x85]), Some(ext::AudioLevel { voice: true, level: 5 }));
        assert_eq!(ext::audio_level(&[0x7F, 0]), Some(ext::AudioLevel { voice: false, level: 127 }));
        assert_eq!(ext::audio_level(&[]), None);
        assert_eq!(ext::abs_send_time(&[1, 2, 3]), Some(0x010203));
        assert_eq!(ext::abs_send_time(&[1, 2]), None);
        assert_eq!(ext::transport_sequence_number(&[0xFF, 0xFE]), Some(0xFFFE));
        assert_eq!(ext::transport_sequence_number(&[1, 2, 3]), None);
        assert_eq!(ext::rid(b"hi"), Some(&b"hi"[..]));
        assert_eq!(ext::rid(b"h-_i"), Some(&b"h-_i"[..]));
        assert_eq!(ext::rid(b"h i"), None);
        assert_eq!(ext::rid(b""), None);
    }

    #[test]
    fn every_truncation_is_refused() {
        for n in 0..PKT.len() {
            assert!(Packet::new_checked(&PKT[..n]).is_err(), "len {n}");
        }
    }

    #[test]
    fn header_errors() {
        let mut b = PKT;
        b[0] = (b[0] & 0x3F) | 0x40;
        assert_eq!(Packet::new_checked(&b[..]), Err(WireError::BadVersion));
        let mut b = PKT;
        b[35] = 0;
        assert_eq!(Packet::new_checked(&b[..]), Err(WireError::BadPadding));
        let mut b = PKT;
        b[35] = 9; // would eat into the extension block
        assert_eq!(Packet::new_checked(&b[..]), Err(WireError::BadPadding));
        let mut b = PKT;
        b[35] = 8; // exactly the payload and padding: empty payload is fine
        assert_eq!(Packet::new_checked(&b[..]).unwrap().payload(), &[] as &[u8]);
        let mut b = PKT;
        b[19] = 5; // extension block longer than the packet
        assert_eq!(Packet::new_checked(&b[..]), Err(WireError::Truncated));
        // Minimal packet: header only, no payload.
        let p = Packet::new_checked(&PKT[..12].iter().map(|_| 0x80).collect::<Vec<_>>()[..]).map(|p| p.payload().len());
        assert_eq!(p, Ok(0));
    }

    #[test]
    fn two_byte_form() {
        let b = [
            0x90, 0x60, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9, // X=1
            0x10, 0x00, 0x00, 0x03, // two-byte form, 3 words
            0x05, 0x00, // id 5, empty
            0x00, // padding
            0x20, 0x03, 7, 8, 9, // id 32, 3 bytes
            0x0E, 0x02, 1, 2,    // id 14, 2 bytes
            0x42, // payload
        ];
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.extension_form(), Some(ExtensionForm::TwoByte));
        let exts: Vec<_> = p.extensions().map(Result::unwrap).map(|e| (e.id, e.data)).collect();
        assert_eq!(exts, [(5, &[][..]), (32, &[7, 8, 9][..]), (14, &[1, 2][..])]);
        assert_eq!(p.payload(), &[0x42]);

        let mut m = b;
        let mut map = ExtensionIdMap::new();
        map.set(5, 7).unwrap();
        map.set(14, 1).unwrap();
        let mut p = Packet::new_checked(&mut m[..]).unwrap();
        p.remap_extensions(&map).unwrap();
        let exts: Vec<_> = p.extensions().map(Result::unwrap).map(|e| (e.id, e.data)).collect();
        assert_eq!(exts, [(7, &[][..]), (1, &[1, 2][..])]);
        assert_eq!(&m[16..28], &[7, 0, 0, 0, 0, 0, 0, 0, 1, 2, 1, 2]);
        assert_eq!(m[28], 0x42);

        // Ids above 14 (at most two mappings): 32 → 200 and 14 → 20 in the two-byte form.
        let mut m = b;
        let mut map = ExtensionIdMap::new();
        map.set(32, 200).unwrap();
        map.set(14, 20).unwrap();
        assert_eq!(map.set(40, 41), Err(WireError::OutOfRange), "a third wide mapping");
        map.set(14, 3).unwrap();
        map.set(40, 41).unwrap();
        map.set(14, 20).unwrap_err();
        map.set(40, 0).unwrap();
        map.set(14, 20).unwrap();
        assert_eq!((map.get(32), map.get(14), map.get(40), map.get(5)), (200, 20, 0, 0));
        let mut p = Packet::new_checked(&mut m[..]).unwrap();
        p.remap_extensions(&map).unwrap();
        let exts: Vec<_> = p.extensions().map(Result::unwrap).map(|e| (e.id, e.data)).collect();
        assert_eq!(exts, [(200, &[7, 8, 9][..]), (20, &[1, 2][..])]);
        // A one-byte-form packet cannot carry id 20: the element is dropped.
        let mut one = vec![0x90, 0x60, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9, 0xBE, 0xDE, 0, 1, 0xE1, 5, 6, 0, 0x42];
        let mut p = Packet::new_checked(&mut one[..]).unwrap();
        p.remap_extensions(&map).unwrap();
        assert_eq!(p.extensions().count(), 0);
        assert_eq!(p.payload(), &[0x42]);
    }

    /// An element replaced by a longer value: the block is re-encoded (two-byte form once the
    /// value no longer fits the one-byte form), the other elements and the payload unchanged.
    #[test]
    fn an_element_is_replaced_by_a_longer_one() {
        let one = [0x90, 0x60, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9, 0xBE, 0xDE, 0, 2, 0x32, 1, 2, 3, 0x70, 9, 0, 0, 0x42, 0x43];
        let mut out = [0u8; 64];
        let n = with_extension_replaced(&one, 3, &[7, 7, 7, 7, 7], &mut out).unwrap();
        let p = Packet::new_checked(&out[..n]).unwrap();
        assert_eq!(p.extension_form(), Some(ExtensionForm::OneByte));
        let exts: Vec<_> = p.extensions().map(Result::unwrap).map(|e| (e.id, e.data.to_vec())).collect();
        assert_eq!(exts, [(3, vec![7; 5]), (7, vec![9])]);
        assert_eq!((p.payload(), p.sequence_number()), (&[0x42, 0x43][..], 1));
        let n = with_extension_replaced(&one, 3, &[8; 20], &mut out).unwrap();
        let p = Packet::new_checked(&out[..n]).unwrap();
        assert_eq!(p.extension_form(), Some(ExtensionForm::TwoByte));
        let exts: Vec<_> = p.extensions().map(Result::unwrap).map(|e| (e.id, e.data.to_vec())).collect();
        assert_eq!(exts, [(3, vec![8; 20]), (7, vec![9])]);
        assert_eq!(p.payload(), &[0x42, 0x43]);
        assert_eq!(with_extension_replaced(&one, 5, &[1], &mut out), Err(WireError::BadExtension), "no such element");
        assert_eq!(with_extension_replaced(&one, 3, &[8; 20], &mut out[..30]), Err(WireError::BufferTooSmall));
    }

    #[test]
    fn malformed_extensions_are_reported_not_trusted() {
        // One-byte element claiming 5 bytes when 4 remain in the block.
        let mut b = PKT;
        b[23] = 0x34;
        let p = Packet::new_checked(&b[..]).unwrap();
        let exts: Vec<_> = p.extensions().collect();
        assert_eq!(exts, [Ok(Extension { id: 1, data: &[0xAA] }), Err(WireError::BadExtension)]);
        assert_eq!(p.find_extension(1), Some(&[0xAA][..]));
        assert_eq!(p.find_extension(3), None);
        // Remap refuses and leaves the packet as it was.
        let mut m = b;
        let mut q = Packet::new_checked(&mut m[..]).unwrap();
        assert_eq!(q.remap_extensions(&ExtensionIdMap::new()), Err(WireError::BadExtension));
        assert_eq!(m, b);
        // ID 15 ends processing without an error.
        let mut b = PKT;
        b[23] = 0xF2;
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.extensions().count(), 1);
        // Two-byte form: an element header cut in half at the end of the block.
        let b = [0x90, 0x60, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9, 0x10, 0x00, 0, 1, 0, 0, 0, 0x05];
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.extensions().collect::<Vec<_>>(), [Err(WireError::BadExtension)]);
        // Unknown profile: opaque block, no elements.
        let mut b = PKT;
        b[16] = 0x12;
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.extension_form(), None);
        assert_eq!(p.extensions().count(), 0);
        assert_eq!(p.extension_data().map(<[u8]>::len), Some(8));
    }

    #[test]
    fn remap_drops_in_place_without_moving_payload() {
        let mut b = PKT;
        let mut map = ExtensionIdMap::new();
        map.set(1, 9).unwrap();
        let mut p = Packet::new_checked(&mut b[..]).unwrap();
        p.remap_extensions(&map).unwrap();
        assert_eq!(p.header_len(), 28);
        assert_eq!(p.payload(), &[0xFF; 4]);
        let exts: Vec<_> = p.extensions().collect();
        assert_eq!(exts, [Ok(Extension { id: 9, data: &[0xAA] })]);
        assert_eq!(&b[20..28], &[0x90, 0xAA, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[..20], &PKT[..20]);
        assert_eq!(&b[28..], &PKT[28..]);
        // A no-extension packet is untouched.
        let mut plain = [0x80u8, 0x60, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9, 0x42];
        let mut p = Packet::new_checked(&mut plain[..]).unwrap();
        assert_eq!(p.remap_extensions(&map), Ok(()));
        // Map validation.
        assert_eq!(map.set(0, 1), Err(WireError::OutOfRange));
        assert_eq!(map.get(200), 0);
    }

    #[test]
    fn setters() {
        let mut b = PKT;
        let mut p = Packet::new_checked(&mut b[..]).unwrap();
        p.set_ssrc(Ssrc(0xCAFE_F00D));
        p.set_sequence_number(0xFFFF);
        p.set_timestamp(7);
        p.set_payload_type(0xFF);
        assert!(p.marker());
        assert_eq!(p.payload_type(), 0x7F);
        p.set_payload_type(111);
        p.set_marker(false);
        p.find_extension_mut(3).unwrap().copy_from_slice(&[4, 5, 6]);
        p.payload_mut()[0] = 0x11;
        assert_eq!(p.find_extension_mut(4), None);
        let b = p.into_inner();
        let o = rtp_types::RtpPacket::parse(&b[..]).unwrap();
        assert_eq!(o.ssrc(), 0xCAFE_F00D);
        assert_eq!(o.sequence_number(), 0xFFFF);
        assert_eq!(o.timestamp(), 7);
        assert_eq!(o.payload_type(), 111);
        assert!(!o.marker_bit());
        assert_eq!(o.payload(), &[0x11, 0xFF, 0xFF, 0xFF]);
        assert_eq!(&o.extension().unwrap().1[4..7], &[4, 5, 6]);
        assert_eq!(o.padding(), Some(4));
    }

    fn random_packet(rng: &mut impl Rng, out: &mut Vec<u8>) {
        out.clear();
        let version = if rng.random_ratio(9, 10) { 2 } else { rng.random_range(0..4) };
        let padding = rng.random_bool(0.3);
        let ext = rng.random_bool(0.5);
        let cc = if rng.random_bool(0.7) { rng.random_range(0..3) } else { rng.random_range(0..16) };
        out.push((version << 6) | (u8::from(padding) << 5) | (u8::from(ext) << 4) | cc);
        out.push(rng.random());
        for _ in 0..10 {
            out.push(rng.random());
        }
        for _ in 0..(4 * usize::from(cc)) {
            out.push(rng.random());
        }
        if ext {
            let profile: u16 = match rng.random_range(0..3) {
                0 => ONE_BYTE_PROFILE,
                1 => TWO_BYTE_PROFILE | rng.random_range(0..16),
                _ => rng.random(),
            };
            let words: u16 = rng.random_range(0..5);
            out.extend_from_slice(&profile.to_be_bytes());
            out.extend_from_slice(&words.to_be_bytes());
            for _ in 0..(4 * words) {
                // Bias towards small values so element lengths are often plausible.
                let b = if rng.random_bool(0.5) { rng.random_range(0..0x40) } else { rng.random() };
                out.push(b);
            }
        }
        for _ in 0..rng.random_range(0..24) {
            out.push(rng.random());
        }
        if padding {
            let n = rng.random_range(0..8u8);
            for _ in 1..n {
                out.push(0);
            }
            out.push(if rng.random_bool(0.9) { n } else { rng.random() });
        }
        if rng.random_bool(0.2) {
            let i = rng.random_range(0..out.len());
            out[i] = rng.random();
        }
        if rng.random_bool(0.2) {
            let n = rng.random_range(0..=out.len());
            out.truncate(n);
        }
    }

    /// Differential test against `rtp-types`: the acceptance rules coincide (length, version,
    /// CSRC list, extension block, padding count), so both must accept and reject the same
    /// buffers and agree on every field.
    #[test]
    fn differential_vs_rtp_types() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3550);
        let mut buf = Vec::with_capacity(256);
        let (mut accepted, mut rejected) = (0, 0);
        for _ in 0..100_000 {
            random_packet(&mut rng, &mut buf);
            let ours = Packet::new_checked(&buf[..]);
            let theirs = rtp_types::RtpPacket::parse(&buf[..]);
            let (p, o) = match (ours, theirs) {
                (Ok(p), Ok(o)) => (p, o),
                (Err(_), Err(_)) => {
                    rejected += 1;
                    continue;
                }
                (ours, theirs) => panic!("disagree on {buf:02x?}: {ours:?} vs {theirs:?}"),
            };
            accepted += 1;
            assert_eq!(p.version(), o.version());
            assert_eq!(p.has_padding(), o.padding_bit());
            assert_eq!(p.has_extension(), o.extension_bit());
            assert_eq!(p.csrc_count(), o.n_csrcs());
            assert_eq!(p.marker(), o.marker_bit());
            assert_eq!(p.payload_type(), o.payload_type());
            assert_eq!(p.sequence_number(), o.sequence_number());
            assert_eq!(p.timestamp(), o.timestamp());
            assert_eq!(p.ssrc().0, o.ssrc());
            assert!(p.csrcs().map(|s| s.0).eq(o.csrc()));
            assert_eq!(p.extension_profile().zip(p.extension_data()), o.extension(), "{buf:02x?}");
            assert_eq!(p.header_len(), o.payload_offset());
            assert_eq!(p.padding_len(), usize::from(o.padding().unwrap_or(0)));
            assert_eq!(p.payload(), o.payload());
            // The element walk and the rewrite must not panic on anything that parses.
            for e in p.extensions().flatten() {
                assert!(e.id != 0);
            }
            let mut copy = buf.clone();
            let mut m = Packet::new_checked(&mut copy[..]).unwrap();
            let mut map = ExtensionIdMap::new();
            map.set(1, 2).unwrap();
            let remapped = m.remap_extensions(&map);
            assert_eq!(m.payload(), o.payload());
            let (ssrc, seq, ts, pt, marker) = (rng.random(), rng.random(), rng.random(), rng.random_range(0..128), rng.random());
            m.set_ssrc(Ssrc(ssrc));
            m.set_sequence_number(seq);
            m.set_timestamp(ts);
            m.set_payload_type(pt);
            m.set_marker(marker);
            let o2 = rtp_types::RtpPacket::parse(&copy[..]).unwrap();
            assert_eq!((o2.ssrc(), o2.sequence_number(), o2.timestamp()), (ssrc, seq, ts));
            assert_eq!((o2.payload_type(), o2.marker_bit()), (pt, marker));
            assert_eq!(o2.payload(), o.payload());
            assert_eq!(o2.padding(), o.padding());
            let m = Packet::new_checked(&copy[..]).unwrap();
            if remapped.is_ok() {
                assert!(m.extensions().all(|e| e.is_ok_and(|e| e.id == 2)));
            }
        }
        assert!(accepted > 20_000 && rejected > 10_000, "{accepted} accepted, {rejected} rejected");
    }
}
