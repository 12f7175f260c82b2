//! RFC 7983 demultiplexing of one UDP port shared by STUN, DTLS, ZRTP, TURN channels and SRTP.
//!
//! ```text
//!                  +----------------+
//!                  |        [0..3] -+--> STUN
//!                  |      [16..19] -+--> ZRTP
//!   packet -->     |      [20..63] -+--> DTLS
//!                  |      [64..79] -+--> TURN channel
//!                  |    [128..191] -+--> RTP/RTCP
//!                  +----------------+
//! ```
//!
//! RTP and RTCP are then told apart by the second byte (RFC 5761 §4): RTCP packet types
//! 192..=223 leave 64..=95 in the low 7 bits, which RTP payload types must avoid when muxed. We
//! look at the low 7 bits only, like libwebrtc, so an RTP packet that breaks that rule with M=0
//! is still called RTCP and then fails RTCP checks instead of being forwarded as media.
//!
//! This runs on every datagram before anything else, so it reads at most two bytes and never
//! panics, whatever the length.

/// What a datagram on a shared media port is, by its first two bytes.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketClass {
    /// STUN (first byte 0..=3).
    Stun = 0,
    /// ZRTP (16..=19).
    Zrtp = 1,
    /// DTLS (20..=63).
    Dtls = 2,
    /// TURN ChannelData (64..=79).
    TurnChannel = 3,
    /// RTP or SRTP (128..=191, second byte not an RTCP type).
    Rtp = 4,
    /// RTCP or SRTCP (128..=191, RFC 5761 §4 packet type).
    Rtcp = 5,
    /// Anything else, including empty datagrams and a lone RTP/RTCP first byte.
    Unknown = 6,
}

/// Classifies a datagram per RFC 7983 and RFC 5761 §4. Never panics.
pub fn classify(buf: &[u8]) -> PacketClass {
    let Some(&first) = buf.first() else {
        return PacketClass::Unknown;
    };
    match first {
        0..=3 => PacketClass::Stun,
        16..=19 => PacketClass::Zrtp,
        20..=63 => PacketClass::Dtls,
        64..=79 => PacketClass::TurnChannel,
        128..=191 => match buf.get(1) {
            Some(&b) if (64..=95).contains(&(b & 0x7F)) => PacketClass::Rtcp,
            Some(_) => PacketClass::Rtp,
            None => PacketClass::Unknown,
        },
        _ => PacketClass::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_first_byte() {
        for b in 0..=255u8 {
            let want = match b {
                0..=3 => PacketClass::Stun,
                16..=19 => PacketClass::Zrtp,
                20..=63 => PacketClass::Dtls,
                64..=79 => PacketClass::TurnChannel,
                128..=191 => PacketClass::Rtp,
                _ => PacketClass::Unknown,
            };
            assert_eq!(classify(&[b, 0x60]), want, "first byte {b}");
            if want != PacketClass::Rtp {
                assert_eq!(classify(&[b]), want, "lone first byte {b}");
            }
        }
    }

    #[test]
    fn rtp_vs_rtcp() {
        for pt in 200..=206u8 {
            assert_eq!(classify(&[0x80, pt, 0, 1]), PacketClass::Rtcp);
        }
        assert_eq!(classify(&[0x80, 192]), PacketClass::Rtcp);
        assert_eq!(classify(&[0x80, 223]), PacketClass::Rtcp);
        assert_eq!(classify(&[0x80, 224]), PacketClass::Rtp);
        assert_eq!(classify(&[0x80, 191]), PacketClass::Rtp);
        assert_eq!(classify(&[0x80, 96]), PacketClass::Rtp);
        assert_eq!(classify(&[0x80, 0x80 | 111]), PacketClass::Rtp);
        assert_eq!(classify(&[0x80, 0]), PacketClass::Rtp);
    }

    #[test]
    fn short_input() {
        assert_eq!(classify(&[]), PacketClass::Unknown);
        assert_eq!(classify(&[0x80]), PacketClass::Unknown);
        assert_eq!(classify(&[0x00]), PacketClass::Stun);
    }
}
