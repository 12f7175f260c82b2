//! What happened to a packet. Every packet the core does not forward gets exactly one
//! [`DropReason`], which indexes the per-core counters in [`crate::stats`]; nothing on the fast
//! path allocates an error or logs.

/// Why a packet was not forwarded. `#[repr(u8)]` so it indexes counter arrays directly; the
/// numbering is part of the metrics contract (names come from [`DropReason::name`]).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(rename_all = "snake_case"))]
pub enum DropReason {
    /// The datagram is too short or its headers are inconsistent.
    Malformed = 0,
    /// Not RTP/RTCP (RFC 7983): TURN channel data, ZRTP, an unknown first byte, or STUN/DTLS on a
    /// leg that is not a WebRTC leg (those of WebRTC legs go to the slow path).
    NotMedia = 1,
    /// No leg is bound to (local port, remote address).
    UnknownSource = 2,
    /// The leg is known but the SSRC was never announced on it.
    UnknownSsrc = 3,
    /// SRTP/SRTCP authentication failed.
    AuthFailed = 4,
    /// SRTP/SRTCP replay protection rejected the packet (duplicate or too old).
    Replayed = 5,
    /// The subscription is paused.
    Paused = 6,
    /// The packet belongs to a simulcast layer (or the part of a layer before a switch point)
    /// that no subscription currently forwards.
    LayerFiltered = 7,
    /// The output batch had no room left; the caller should flush more often.
    OutputFull = 8,
    /// RTCP consumed by the core (receiver reports, throttled keyframe requests): not an error,
    /// but no packet leaves for it.
    RtcpConsumed = 9,
    /// The stream has no subscribers.
    NoSubscribers = 10,
    /// The payload type is not one the stream announced.
    UnknownPayloadType = 11,
    /// The subscriber's address is not known yet (no packet from it authenticated so far).
    NoDestination = 12,
    /// A WebRTC leg that cannot carry media yet or any more: no DTLS-SRTP keys yet (receiving
    /// or sending), or ICE consent expired (sending).
    NotConnected = 13,
    /// STUN or DTLS for a WebRTC leg found the slow-path queue full.
    SlowPathFull = 14,
    /// STUN or DTLS for a WebRTC leg over the leg's slow-path rate (a flood).
    SlowPathLimited = 15,
    /// A padding-only packet on a publisher's RTX stream (its bandwidth probe): consumed, its
    /// arrival already recorded for transport-cc.
    Padding = 16,
    /// Over the leg's receive budget (`LegSpec.rate_limit`): dropped before decryption.
    RateLimited = 17,
    /// Top-N audio: a packet of a track only audio slots consume, neither ranked as a speaker
    /// nor speech itself (its cleartext RFC 6464 level says so): dropped before decryption.
    SilentAudio = 18,
    /// A datagram on a send-only leg: a plain-RTP leg (`LegSpec::plain_rtp`, a recording tap)
    /// takes nothing from its peer, since nothing it sends can be authenticated.
    SendOnly = 19,
}

impl DropReason {
    /// How many reasons there are: the length of a counter array.
    pub const COUNT: usize = 20;

    /// Every reason, in index order.
    pub const ALL: [DropReason; Self::COUNT] = [
        Self::Malformed,
        Self::NotMedia,
        Self::UnknownSource,
        Self::UnknownSsrc,
        Self::AuthFailed,
        Self::Replayed,
        Self::Paused,
        Self::LayerFiltered,
        Self::OutputFull,
        Self::RtcpConsumed,
        Self::NoSubscribers,
        Self::UnknownPayloadType,
        Self::NoDestination,
        Self::NotConnected,
        Self::SlowPathFull,
        Self::SlowPathLimited,
        Self::Padding,
        Self::RateLimited,
        Self::SilentAudio,
        Self::SendOnly,
    ];

    /// The label used in metrics (`reason="..."`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::NotMedia => "not_media",
            Self::UnknownSource => "unknown_source",
            Self::UnknownSsrc => "unknown_ssrc",
            Self::AuthFailed => "auth_failed",
            Self::Replayed => "replayed",
            Self::Paused => "paused",
            Self::LayerFiltered => "layer_filtered",
            Self::OutputFull => "output_full",
            Self::RtcpConsumed => "rtcp_consumed",
            Self::NoSubscribers => "no_subscribers",
            Self::UnknownPayloadType => "unknown_payload_type",
            Self::NoDestination => "no_destination",
            Self::NotConnected => "not_connected",
            Self::SlowPathFull => "slow_path_full",
            Self::SlowPathLimited => "slow_path_limited",
            Self::Padding => "padding",
            Self::RateLimited => "rate_limited",
            Self::SilentAudio => "silent_audio",
            Self::SendOnly => "send_only",
        }
    }
}

impl DropReason {
    /// Whether a drop of this kind says something about the peer sending to a leg (its source,
    /// keys, packets), worth a line in the log the first time: not the SFU's own choices
    /// (layers, pauses, pacing) nor feedback it consumed.
    pub const fn about_the_peer(self) -> bool {
        matches!(
            self,
            Self::Malformed
                | Self::NotMedia
                | Self::UnknownSource
                | Self::UnknownSsrc
                | Self::AuthFailed
                | Self::Replayed
                | Self::UnknownPayloadType
                | Self::NotConnected
                | Self::SendOnly
        )
    }
}

#[cfg(test)]
mod tests {
    use super::DropReason;

    #[test]
    fn all_is_in_index_order() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?}");
        }
    }
}
