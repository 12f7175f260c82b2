//! Source description, goodbye and application packets (RFC 3550 §6.5–6.7), and the SDES CNAME writer.

use super::*;

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

/// Writes an APP packet (RFC 3550 §6.7): `subtype` (0..=31), `ssrc`, the four-character `name`
/// and `data` (a multiple of 4 bytes); returns the length.
pub fn write_app(buf: &mut [u8], subtype: u8, ssrc: Ssrc, name: [u8; 4], data: &[u8]) -> Result<usize, WireError> {
    if subtype > 31 || !data.len().is_multiple_of(4) {
        return Err(WireError::OutOfRange);
    }
    let total = HEADER_LEN + 8 + data.len();
    write_header(buf, subtype, PT_APP, total)?;
    set_be32(buf, 4, ssrc.0);
    buf[8..12].copy_from_slice(&name);
    buf[12..total].copy_from_slice(data);
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
