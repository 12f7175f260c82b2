//! Newtypes for the identifiers that travel through the core, so an SSRC is never confused with
//! a sequence number, a leg id or a timestamp (str0m's `Ssrc`, `SeqNo`, `Pt`).

use core::fmt;

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(transparent))]
        pub struct $name(pub $inner);

        impl From<$inner> for $name {
            fn from(v: $inner) -> Self {
                Self(v)
            }
        }

        impl From<$name> for $inner {
            fn from(v: $name) -> Self {
                v.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

id_newtype!(
    /// An RTP synchronization source identifier (RFC 3550 §3).
    Ssrc(u32)
);
id_newtype!(
    /// A 16-bit RTP sequence number as it appears on the wire.
    SeqNo(u16)
);
id_newtype!(
    /// An RTP payload type (7 bits).
    Pt(u8)
);
id_newtype!(
    /// A leg: one transport to one participant (local port, remote address, SRTP keys).
    LegId(u32)
);
id_newtype!(
    /// A track: one published media source (audio, camera with its simulcast layers, screen).
    TrackId(u32)
);
id_newtype!(
    /// A group of audio tracks that compete for the floor: the control plane gives every audio
    /// track of one session the same group (see [`crate::audio`]).
    SpeakerGroup(u64)
);
id_newtype!(
    /// A table version. Every delta carries the generation it produces.
    Generation(u64)
);

impl SeqNo {
    /// Whether `self` comes after `other` in the circular sequence space (RFC 1982 style: the
    /// shorter way round decides).
    pub fn is_after(self, other: SeqNo) -> bool {
        let d = self.0.wrapping_sub(other.0);
        d != 0 && d < 0x8000
    }
}
