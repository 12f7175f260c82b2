//! ChannelData (RFC 8656 §12.4): the 4-byte framing a client and the server use instead of Send
//! and Data indications once a channel is bound. It sits on the media path, so the view is
//! zero-copy and nothing here allocates.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |         Channel Number        |            Length             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                                                               |
//! /                       Application Data                        /
//! |                               +-------------------------------+
//! |                               |  padding to 4 bytes: stream
//! +-------------------------------+  transports only (§12.5)
//! ```

use crate::wire::WireError;

/// Length of the ChannelData header.
pub const CHANNEL_DATA_HEADER: usize = 4;

/// A TURN channel number: 0x4000 through 0x4FFF (RFC 8656 §12; 0x5000–0xFFFF are reserved and
/// a ChannelData message carrying one is discarded).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelNumber(u16);

impl ChannelNumber {
    /// The lowest valid number.
    pub const MIN: u16 = 0x4000;
    /// The highest valid number.
    pub const MAX: u16 = 0x4FFF;

    /// `n` if it is in the valid range.
    pub const fn new(n: u16) -> Option<Self> {
        if n >= Self::MIN && n <= Self::MAX { Some(Self(n)) } else { None }
    }

    /// The number on the wire.
    pub const fn get(self) -> u16 {
        self.0
    }
}

/// A checked, zero-copy view of a ChannelData message. Bytes after the declared length (the
/// padding a stream transport requires, or that a UDP sender may add) are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelData<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ChannelData<T> {
    /// Validates the header: a valid channel number and a length that fits the buffer.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        let &[c0, c1, l0, l1, ..] = b else { return Err(WireError::Truncated) };
        if ChannelNumber::new(u16::from_be_bytes([c0, c1])).is_none() {
            return Err(WireError::WrongType);
        }
        if b.len() < CHANNEL_DATA_HEADER + usize::from(u16::from_be_bytes([l0, l1])) {
            return Err(WireError::Truncated);
        }
        Ok(Self { buffer })
    }

    fn buf(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// The channel number.
    pub fn channel(&self) -> ChannelNumber {
        let b = self.buf();
        ChannelNumber(u16::from_be_bytes([b[0], b[1]]))
    }

    /// The application data.
    pub fn data(&self) -> &[u8] {
        let b = self.buf();
        let len = usize::from(u16::from_be_bytes([b[2], b[3]]));
        &b[CHANNEL_DATA_HEADER..CHANNEL_DATA_HEADER + len]
    }

    /// Gives the buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

/// Writes a ChannelData header for `payload_len` bytes of data into `out[..4]`, for a caller
/// that keeps 4 bytes of headroom in front of the payload it received from a peer (no copy).
pub fn write_channel_data_header(out: &mut [u8], channel: ChannelNumber, payload_len: usize) -> Result<(), WireError> {
    let len = u16::try_from(payload_len).map_err(|_| WireError::OutOfRange)?;
    let h = out.get_mut(..CHANNEL_DATA_HEADER).ok_or(WireError::BufferTooSmall)?;
    h[..2].copy_from_slice(&channel.get().to_be_bytes());
    h[2..].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Writes a whole ChannelData message carrying `payload` into `out`, padded to 4 bytes when it
/// goes over a stream transport (`stream`); returns its length.
pub fn encode_channel_data(out: &mut [u8], channel: ChannelNumber, payload: &[u8], stream: bool) -> Result<usize, WireError> {
    let body = CHANNEL_DATA_HEADER + payload.len();
    let total = if stream { body.next_multiple_of(4) } else { body };
    if out.len() < total {
        return Err(WireError::BufferTooSmall);
    }
    write_channel_data_header(out, channel, payload.len())?;
    out[CHANNEL_DATA_HEADER..body].copy_from_slice(payload);
    out[body..total].fill(0);
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_number_range() {
        assert_eq!(ChannelNumber::new(0x3FFF), None);
        assert_eq!(ChannelNumber::new(0x4000).map(ChannelNumber::get), Some(0x4000));
        assert_eq!(ChannelNumber::new(0x4FFF).map(ChannelNumber::get), Some(0x4FFF));
        assert_eq!(ChannelNumber::new(0x5000), None);
        assert_eq!(ChannelNumber::new(0xFFFF), None);
    }

    #[test]
    fn encode_parse_round_trip_with_and_without_padding() {
        let ch = ChannelNumber::new(0x4001).unwrap();
        let mut out = [0xEEu8; 16];
        assert_eq!(encode_channel_data(&mut out, ch, b"hello", false), Ok(9));
        assert_eq!(&out[..9], b"\x40\x01\x00\x05hello");
        assert_eq!(encode_channel_data(&mut out, ch, b"hello", true), Ok(12));
        assert_eq!(&out[..12], b"\x40\x01\x00\x05hello\0\0\0");
        let v = ChannelData::new_checked(&out[..12]).unwrap();
        assert_eq!((v.channel(), v.data()), (ch, &b"hello"[..]));
        assert_eq!(encode_channel_data(&mut out[..11], ch, b"hello", true), Err(WireError::BufferTooSmall));
        assert_eq!(encode_channel_data(&mut [0u8; 70_000], ch, &[0u8; 65_536], false), Err(WireError::OutOfRange));
        let empty = ChannelData::new_checked(&b"\x4f\xff\x00\x00"[..]).unwrap();
        assert_eq!(empty.data(), b"");
    }

    #[test]
    fn bad_headers_are_refused() {
        assert_eq!(ChannelData::new_checked(&b"\x40\x01\x00"[..]), Err(WireError::Truncated));
        assert_eq!(ChannelData::new_checked(&b"\x40\x01\x00\x05hell"[..]), Err(WireError::Truncated));
        assert_eq!(ChannelData::new_checked(&b"\x50\x00\x00\x00"[..]), Err(WireError::WrongType));
        assert_eq!(ChannelData::new_checked(&b"\x3f\xff\x00\x00"[..]), Err(WireError::WrongType));
    }
}
