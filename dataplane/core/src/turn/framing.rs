//! Deframers for stream transports: TURN over TCP/TLS (RFC 8656 §11.4: STUN messages and
//! ChannelData back to back, each delimited by its own header's length, ChannelData padded to 4
//! bytes) and ICE-TCP (RFC 4571 §2: a 2-byte length before every packet).
//!
//! ```text
//!   TURN stream:  | STUN (20 + length) | ChannelData (4 + length, padded to 4) | STUN | ...
//!   RFC 4571:     | len (16) | packet (len bytes) | len (16) | packet | ...
//! ```
//!
//! Both are bounded: a frame longer than the configured maximum, or bytes that cannot start a
//! frame (TURN: neither a STUN header with the magic cookie nor a valid channel number), are a
//! [`FramingError`] after which the deframer stays failed and the caller closes the connection.
//! A partial frame just waits; the caller applies its own stall timeout (see
//! [`StreamDeframer::buffered`]).

use crate::wire::stun::{HEADER_LEN, MAGIC_COOKIE};

use super::channel::{CHANNEL_DATA_HEADER, ChannelNumber};

/// Which framing a stream uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// TURN over TCP or TLS: STUN messages and ChannelData (RFC 8656 §11.4).
    Turn,
    /// RFC 4571: a 16-bit big-endian length before each packet (ICE-TCP, RFC 6544).
    Rfc4571,
}

/// Why a stream cannot be deframed any further: close the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// The next bytes cannot start a frame of this framing.
    #[error("bytes that cannot start a frame")]
    Garbage,
    /// The next frame is longer than the configured maximum.
    #[error("frame over the maximum size")]
    Oversize,
}

/// Splits a byte stream into frames; see the module docs. The caller pushes what it read and
/// then takes frames with [`StreamDeframer::next_frame`] until it returns `Ok(None)`: the buffer
/// then holds less than one frame, so its size stays bounded by the maximum frame size plus one
/// read.
#[derive(Debug)]
pub struct StreamDeframer {
    framing: Framing,
    max_frame: usize,
    buf: Vec<u8>,
    /// Start of the first byte not yet returned in a frame.
    start: usize,
    failed: Option<FramingError>,
}

impl StreamDeframer {
    /// A deframer refusing frames longer than `max_frame` bytes on the wire (length prefix,
    /// header and padding included).
    pub fn new(framing: Framing, max_frame: usize) -> Self {
        Self { framing, max_frame, buf: Vec::new(), start: 0, failed: None }
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.start > 0 {
            // Moves only the partial frame left over (none when every frame was taken).
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes of an incomplete frame waiting for more (for the caller's stall timeout).
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next whole frame: a STUN message, a ChannelData message without its padding (TURN),
    /// or a packet without its length prefix (RFC 4571). `Ok(None)` when the next frame is not
    /// complete yet; once an error is returned, every later call returns it too.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FramingError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let avail = &self.buf[self.start..];
        let (skip, frame_len, total) = match self.framing {
            Framing::Turn => {
                let &[b0, b1, l0, l1, ..] = avail else { return Ok(None) };
                let len = usize::from(u16::from_be_bytes([l0, l1]));
                match b0 >> 6 {
                    0b00 => {
                        if !len.is_multiple_of(4) || avail.get(4..8).is_some_and(|c| c != MAGIC_COOKIE.to_be_bytes()) {
                            return self.fail(FramingError::Garbage);
                        }
                        (0, HEADER_LEN + len, HEADER_LEN + len)
                    }
                    0b01 if ChannelNumber::new(u16::from_be_bytes([b0, b1])).is_some() => {
                        (0, CHANNEL_DATA_HEADER + len, (CHANNEL_DATA_HEADER + len).next_multiple_of(4))
                    }
                    _ => return self.fail(FramingError::Garbage),
                }
            }
            Framing::Rfc4571 => {
                let &[l0, l1, ..] = avail else { return Ok(None) };
                let len = usize::from(u16::from_be_bytes([l0, l1]));
                (2, len, 2 + len)
            }
        };
        if total > self.max_frame {
            return self.fail(FramingError::Oversize);
        }
        if avail.len() < total {
            return Ok(None);
        }
        let at = self.start + skip;
        self.start += total;
        Ok(Some(&self.buf[at..at + frame_len]))
    }

    fn fail<T>(&mut self, e: FramingError) -> Result<T, FramingError> {
        self.failed = Some(e);
        self.buf = Vec::new();
        self.start = 0;
        Err(e)
    }
}

/// The RFC 4571 prefix for a packet of `len` bytes; `None` if it does not fit 16 bits.
pub fn rfc4571_prefix(len: usize) -> Option<[u8; 2]> {
    u16::try_from(len).ok().map(u16::to_be_bytes)
}
