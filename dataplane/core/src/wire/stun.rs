//! STUN message header and attribute walk (RFC 5389 §6, §15), for the ICE-lite slow path.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |0 0|     STUN Message Type     |         Message Length        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                  Magic Cookie = 0x2112A442                    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                     Transaction ID (96 bits)                  |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |         Type                  |            Length             |  attributes (§15),
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+  each value padded
//! |                         Value (variable)                ....  |  to 4 bytes
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! The message type interleaves the class bits C1 (bit 8) and C0 (bit 4) into the method
//! (§6, figure 3). Parsing, plus the XOR address encoding every user shares: MESSAGE-INTEGRITY
//! and FINGERPRINT checks need the offset of their attribute, which [`Attribute::offset`] gives,
//! and belong to the ICE-lite code (which the TURN server reuses).

use std::net::{IpAddr, SocketAddr};

use super::{WireError, be16, be32};

/// Length of the STUN header.
pub const HEADER_LEN: usize = 20;

/// The RFC 5389 magic cookie.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;

/// The Binding method (RFC 5389 §18.1).
pub const METHOD_BINDING: u16 = 0x001;

/// STUN message class (RFC 5389 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// 0b00.
    Request,
    /// 0b01.
    Indication,
    /// 0b10.
    SuccessResponse,
    /// 0b11.
    ErrorResponse,
}

/// A checked, zero-copy view of a STUN message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Message<T> {
    /// Validates `buffer` as a STUN message: 20-byte header, leading bits 0, the magic cookie,
    /// a message length that is a multiple of 4 and fits the buffer. Bytes after the declared
    /// length are ignored by every accessor.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let buf = buffer.as_ref();
        if buf.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if buf[0] & 0xC0 != 0 {
            return Err(WireError::WrongType);
        }
        if be32(buf, 4) != MAGIC_COOKIE {
            return Err(WireError::BadMagic);
        }
        let len = usize::from(be16(buf, 2));
        if !len.is_multiple_of(4) {
            return Err(WireError::BadLength);
        }
        if buf.len() < HEADER_LEN + len {
            return Err(WireError::Truncated);
        }
        Ok(Message { buffer })
    }

    /// Gives the buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn buf(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// The 14-bit message type (method and class interleaved).
    pub fn message_type(&self) -> u16 {
        be16(self.buf(), 0) & 0x3FFF
    }

    /// The class bits C1 C0.
    pub fn class(&self) -> Class {
        let t = self.message_type();
        match ((t >> 7) & 0b10) | ((t >> 4) & 0b01) {
            0 => Class::Request,
            1 => Class::Indication,
            2 => Class::SuccessResponse,
            _ => Class::ErrorResponse,
        }
    }

    /// The 12-bit method, with the class bits squeezed out.
    pub fn method(&self) -> u16 {
        let t = self.message_type();
        (t & 0x000F) | ((t >> 1) & 0x0070) | ((t >> 2) & 0x0F80)
    }

    /// The message length field: bytes of attributes after the header.
    pub fn message_len(&self) -> usize {
        usize::from(be16(self.buf(), 2))
    }

    /// Header plus attributes.
    pub fn total_len(&self) -> usize {
        HEADER_LEN + self.message_len()
    }

    /// The magic cookie (always [`MAGIC_COOKIE`] once checked).
    pub fn magic_cookie(&self) -> u32 {
        be32(self.buf(), 4)
    }

    /// The 96-bit transaction id.
    pub fn transaction_id(&self) -> [u8; 12] {
        let mut id = [0u8; 12];
        id.copy_from_slice(&self.buf()[8..20]);
        id
    }

    /// The attributes in order; yields one `Err(Truncated)` and stops if one overruns the message.
    pub fn attributes(&self) -> Attributes<'_> {
        Attributes { msg: &self.buf()[..self.total_len()], pos: HEADER_LEN, done: false }
    }

    /// The value of the first attribute of type `kind`.
    pub fn find_attribute(&self, kind: u16) -> Option<&[u8]> {
        self.attributes().map_while(Result::ok).find(|a| a.kind == kind).map(|a| a.value)
    }
}

/// One STUN attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attribute<'a> {
    /// The attribute type.
    pub kind: u16,
    /// The value, without padding.
    pub value: &'a [u8],
    /// Offset of the attribute's type field from the start of the message, which
    /// MESSAGE-INTEGRITY and FINGERPRINT are computed up to (RFC 5389 §15.4, §15.5).
    pub offset: usize,
}

/// Iterator over STUN attributes; see [`Message::attributes`].
#[derive(Debug, Clone)]
pub struct Attributes<'a> {
    msg: &'a [u8],
    pos: usize,
    done: bool,
}

impl<'a> Iterator for Attributes<'a> {
    type Item = Result<Attribute<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.pos >= self.msg.len() {
            return None;
        }
        let offset = self.pos;
        // `pos` and the message end are multiples of 4, so a 4-byte header always fits here.
        let (kind, len) = (be16(self.msg, offset), usize::from(be16(self.msg, offset + 2)));
        let start = offset + 4;
        let Some(value) = self.msg.get(start..start + len) else {
            self.done = true;
            return Some(Err(WireError::Truncated));
        };
        // §15: values are padded to a 4-byte boundary; the padding is not counted in `len`.
        self.pos = start + len.next_multiple_of(4);
        Some(Ok(Attribute { kind, value, offset }))
    }
}

/// The 14-bit message type of `method` (12 bits) in `class`: the inverse of [`Message::method`]
/// and [`Message::class`] (RFC 5389 §6, figure 3).
pub const fn message_type(method: u16, class: Class) -> u16 {
    let c = match class {
        Class::Request => 0x000,
        Class::Indication => 0x010,
        Class::SuccessResponse => 0x100,
        Class::ErrorResponse => 0x110,
    };
    (method & 0x000F) | ((method & 0x0070) << 1) | ((method & 0x0F80) << 2) | c
}

/// Writes the value of an XOR-MAPPED-ADDRESS-style attribute (RFC 5389 §15.2; TURN's
/// XOR-PEER-ADDRESS and XOR-RELAYED-ADDRESS share it) into `value`; returns its length (8 for
/// IPv4, 20 for IPv6). The port is XORed with the cookie's top 16 bits, the address with the
/// cookie (IPv4) or the cookie followed by the transaction id (IPv6).
pub fn encode_xor_address(addr: SocketAddr, transaction_id: &[u8; 12], value: &mut [u8; 20]) -> usize {
    let mask = xor_mask(transaction_id);
    let xport = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
    let (family, octets, n): (u8, &[u8], usize) = match addr.ip() {
        IpAddr::V4(ip) => (0x01, &ip.octets(), 8),
        IpAddr::V6(ip) => (0x02, &ip.octets(), 20),
    };
    value[..4].copy_from_slice(&[0, family, (xport >> 8) as u8, xport as u8]);
    for ((v, b), m) in value[4..n].iter_mut().zip(octets).zip(mask) {
        *v = b ^ m;
    }
    n
}

/// Reads the value of an XOR-MAPPED-ADDRESS-style attribute; `None` if its family or length is
/// wrong.
pub fn decode_xor_address(value: &[u8], transaction_id: &[u8; 12]) -> Option<SocketAddr> {
    let mask = xor_mask(transaction_id);
    let port = u16::from_be_bytes([*value.get(2)?, *value.get(3)?]) ^ (MAGIC_COOKIE >> 16) as u16;
    fn unmask<const N: usize>(a: &[u8], mask: &[u8; 16]) -> Option<[u8; N]> {
        let mut o: [u8; N] = a.try_into().ok()?;
        o.iter_mut().zip(mask).for_each(|(b, m)| *b ^= m);
        Some(o)
    }
    let ip: IpAddr = match (value.get(1)?, value.get(4..)?) {
        (0x01, a) => unmask::<4>(a, &mask)?.into(),
        (0x02, a) => unmask::<16>(a, &mask)?.into(),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

fn xor_mask(transaction_id: &[u8; 12]) -> [u8; 16] {
    let mut mask = [0u8; 16];
    mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    mask[4..].copy_from_slice(transaction_id);
    mask
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// RFC 5769 §2.1 sample request (software, priority, ice-controlled, username,
    /// message-integrity, fingerprint); username "evtj:h6vY", password "VOkJxbRl1RmTxUk/WvJxBt".
    pub(crate) const RFC5769_REQUEST: [u8; 108] = [
        0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x10, 0x53,
        0x54, 0x55, 0x4e, 0x20, 0x74, 0x65, 0x73, 0x74, 0x20, 0x63, 0x6c, 0x69, 0x65, 0x6e, 0x74, 0x00, 0x24, 0x00, 0x04, 0x6e, 0x00, 0x01, 0xff, 0x80, 0x29,
        0x00, 0x08, 0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36, 0x00, 0x06, 0x00, 0x09, 0x65, 0x76, 0x74, 0x6a, 0x3a, 0x68, 0x36, 0x76, 0x59, 0x20, 0x20,
        0x20, 0x00, 0x08, 0x00, 0x14, 0x9a, 0xea, 0xa7, 0x0c, 0xbf, 0xd8, 0xcb, 0x56, 0x78, 0x1e, 0xf2, 0xb5, 0xb2, 0xd3, 0xf2, 0x49, 0xc1, 0xb5, 0x71, 0xa2,
        0x80, 0x28, 0x00, 0x04, 0xe5, 0x7a, 0x3b, 0xcf,
    ];

    #[test]
    fn rfc5769_request() {
        let m = Message::new_checked(&RFC5769_REQUEST[..]).unwrap();
        assert_eq!(m.class(), Class::Request);
        assert_eq!(m.method(), METHOD_BINDING);
        assert_eq!(m.message_len(), 0x58);
        assert_eq!(m.magic_cookie(), MAGIC_COOKIE);
        assert_eq!(m.transaction_id()[0], 0xb7);
        let kinds: Vec<(u16, usize, usize)> = m.attributes().map(|a| a.unwrap()).map(|a| (a.kind, a.value.len(), a.offset)).collect();
        assert_eq!(kinds, [(0x8022, 16, 20), (0x0024, 4, 40), (0x8029, 8, 48), (0x0006, 9, 60), (0x0008, 20, 76), (0x8028, 4, 100)]);
        assert_eq!(m.find_attribute(0x0006), Some(&b"evtj:h6vY"[..]));
        assert_eq!(m.find_attribute(0x0020), None);
    }

    #[test]
    fn classes_and_methods() {
        let mut b = RFC5769_REQUEST;
        for (t, class) in [(0x0001u16, Class::Request), (0x0011, Class::Indication), (0x0101, Class::SuccessResponse), (0x0111, Class::ErrorResponse)] {
            b[..2].copy_from_slice(&t.to_be_bytes());
            let m = Message::new_checked(&b[..]).unwrap();
            assert_eq!((m.class(), m.method()), (class, METHOD_BINDING));
        }
        // Method 0xFFF with all class bits set.
        b[..2].copy_from_slice(&0x3FFFu16.to_be_bytes());
        let m = Message::new_checked(&b[..]).unwrap();
        assert_eq!((m.class(), m.method()), (Class::ErrorResponse, 0xFFF));
    }

    #[test]
    fn every_truncation_is_refused() {
        for n in 0..RFC5769_REQUEST.len() {
            assert!(Message::new_checked(&RFC5769_REQUEST[..n]).is_err(), "len {n}");
        }
    }

    #[test]
    fn bad_header_and_overrunning_attribute() {
        let mut b = RFC5769_REQUEST;
        b[4] = 0;
        assert_eq!(Message::new_checked(&b[..]), Err(WireError::BadMagic));
        let mut b = RFC5769_REQUEST;
        b[0] = 0x40;
        assert_eq!(Message::new_checked(&b[..]), Err(WireError::WrongType));
        let mut b = RFC5769_REQUEST;
        b[3] = 0x57;
        assert_eq!(Message::new_checked(&b[..]), Err(WireError::BadLength));
        // Last attribute (FINGERPRINT) claims 8 bytes but only 4 remain.
        let mut b = RFC5769_REQUEST;
        b[103] = 8;
        let m = Message::new_checked(&b[..]).unwrap();
        let items: Vec<_> = m.attributes().collect();
        assert_eq!(items.len(), 6);
        assert_eq!(items[5], Err(WireError::Truncated));
    }

    #[test]
    fn message_type_round_trips() {
        for method in [METHOD_BINDING, 0x003, 0x009, 0xFFF] {
            for class in [Class::Request, Class::Indication, Class::SuccessResponse, Class::ErrorResponse] {
                let mut b = RFC5769_REQUEST;
                b[..2].copy_from_slice(&message_type(method, class).to_be_bytes());
                let m = Message::new_checked(&b[..]).unwrap();
                assert_eq!((m.method(), m.class()), (method, class));
            }
        }
    }

    #[test]
    fn xor_addresses_round_trip() {
        let id = [7u8; 12];
        for a in ["192.0.2.1:32853", "[2001:db8::1]:9", "0.0.0.0:0"] {
            let a: SocketAddr = a.parse().unwrap();
            let mut v = [0u8; 20];
            let n = encode_xor_address(a, &id, &mut v);
            assert_eq!(decode_xor_address(&v[..n], &id), Some(a));
            assert_eq!(decode_xor_address(&v[..n - 1], &id), None);
        }
        assert_eq!(decode_xor_address(&[0, 3, 0, 0, 1, 2, 3, 4], &id), None);
    }

    #[test]
    fn random_bytes_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5389);
        for _ in 0..20_000 {
            let mut b = RFC5769_REQUEST;
            for _ in 0..rng.random_range(1..6) {
                let i = rng.random_range(0..b.len());
                b[i] = rng.random();
            }
            let n = rng.random_range(0..=b.len());
            if let Ok(m) = Message::new_checked(&b[..n]) {
                let _ = (m.class(), m.method(), m.transaction_id());
                for a in m.attributes() {
                    let _ = a;
                }
            }
        }
    }
}
