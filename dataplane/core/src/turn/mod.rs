//! A sans-IO TURN server (RFC 8656 over RFC 8489 STUN) for clients on restrictive networks.
//!
//! [`Server`] takes datagrams or deframed stream frames from clients
//! ([`Server::handle_client`]) and datagrams that peers sent to relayed addresses
//! ([`Server::handle_peer`]), and answers with a [`ClientAction`] or [`PeerAction`] the caller
//! carries out: reply to the client, send a payload from a relayed address to a peer, send
//! ChannelData or a Data indication to a client. It opens no sockets and reads no clock: the
//! relayed transport addresses come from the caller's [`RelayAllocator`], and time comes in as
//! [`Now`] (a monotonic [`crate::time::Instant`] for lifetimes and nonces, Unix seconds for the
//! expiry inside REST API usernames). Expiry is driven by [`Server::handle_timeout`].
//!
//! ```text
//!   client ──Allocate──▶ 401 + REALM + NONCE ──Allocate + USERNAME/REALM/NONCE/MI──▶ relayed addr
//!          ──CreatePermission / ChannelBind(peer)──▶ policy: deny wins; own legs or allow-list
//!          ──Send indication / ChannelData──▶ ClientAction::Relay  (payload borrowed, no copy)
//!   peer   ──datagram on relayed addr──▶ PeerAction::ToClient (ChannelData if bound, else Data ind.)
//! ```
//!
//! Decisions a reader may look for:
//! - Authentication is long-term credentials with REST API usernames ([`credentials`]); a
//!   request on an existing allocation must use the allocation's username (else 441). The
//!   current and the previous shared secret are both accepted, for rotation.
//! - Requests are checked in RFC 8489 §9.2.4 order (no MESSAGE-INTEGRITY → 401, missing
//!   USERNAME/REALM/NONCE → 400, bad username or integrity → 401, stale nonce → 438), then
//!   unknown comprehension-required attributes (→ 420), then the method. Every response to a
//!   request that authenticated carries MESSAGE-INTEGRITY; every response carries FINGERPRINT.
//! - EVEN-PORT, RESERVATION-TOKEN and DONT-FRAGMENT are not implemented: an Allocate carrying
//!   them is answered 420 listing them, which is what RFC 8656 §7.2 prescribes for a server
//!   without DONT-FRAGMENT support and what a server that does not understand EVEN-PORT and
//!   RESERVATION-TOKEN answers (they are comprehension-required). Browsers send none of them.
//!   MESSAGE-INTEGRITY-SHA256, PASSWORD-ALGORITHM(S) and USERHASH are likewise unknown.
//! - One relayed address per allocation (no ADDITIONAL-ADDRESS-FAMILY dual allocation: ignored,
//!   it is comprehension-optional); REQUESTED-ADDRESS-FAMILY picks IPv4 (default) or IPv6.
//! - Only UDP relaying (REQUESTED-TRANSPORT 17); no RFC 6062 TCP allocations.
//! - Data indications carry no FINGERPRINT (they only go to TURN clients, which demultiplex by
//!   the 5-tuple); responses always do.
//!
//! The peer policy ("no open relay") is in [`policy`]; refusals of every kind are counted by
//! [`Refusal`], whose [`Refusal::name`] is the metrics label.

pub mod channel;
pub mod client;
pub mod credentials;
pub mod framing;
pub mod policy;
mod server;

#[cfg(test)]
mod tests;

pub use channel::{CHANNEL_DATA_HEADER, ChannelData, ChannelNumber, encode_channel_data, write_channel_data_header};
pub use credentials::{long_term_key, rest_api_credentials, rest_api_password};
pub use framing::{Framing, FramingError, StreamDeframer, rfc4571_prefix};
pub use policy::{Cidr, PeerPolicy};
pub use server::{
    AddressFamily, ChannelRoute, ClientAction, ConfigError, FiveTuple, Now, PeerAction, PeerRoute, RelayAllocator, RouteChange, Server, ServerConfig, Transport,
};

/// Allocate (RFC 8656 §18).
pub const METHOD_ALLOCATE: u16 = 0x003;
/// Refresh.
pub const METHOD_REFRESH: u16 = 0x004;
/// Send (indication only).
pub const METHOD_SEND: u16 = 0x006;
/// Data (indication only).
pub const METHOD_DATA: u16 = 0x007;
/// CreatePermission.
pub const METHOD_CREATE_PERMISSION: u16 = 0x008;
/// ChannelBind.
pub const METHOD_CHANNEL_BIND: u16 = 0x009;

/// ERROR-CODE (RFC 8489 §14.8).
pub const ATTR_ERROR_CODE: u16 = 0x0009;
/// UNKNOWN-ATTRIBUTES (RFC 8489 §14.9).
pub const ATTR_UNKNOWN_ATTRIBUTES: u16 = 0x000A;
/// CHANNEL-NUMBER (RFC 8656 §18.1).
pub const ATTR_CHANNEL_NUMBER: u16 = 0x000C;
/// LIFETIME (RFC 8656 §18.2).
pub const ATTR_LIFETIME: u16 = 0x000D;
/// XOR-PEER-ADDRESS (RFC 8656 §18.3).
pub const ATTR_XOR_PEER_ADDRESS: u16 = 0x0012;
/// DATA (RFC 8656 §18.4).
pub const ATTR_DATA: u16 = 0x0013;
/// REALM (RFC 8489 §14.9).
pub const ATTR_REALM: u16 = 0x0014;
/// NONCE (RFC 8489 §14.10).
pub const ATTR_NONCE: u16 = 0x0015;
/// XOR-RELAYED-ADDRESS (RFC 8656 §18.5).
pub const ATTR_XOR_RELAYED_ADDRESS: u16 = 0x0016;
/// REQUESTED-ADDRESS-FAMILY (RFC 8656 §18.6).
pub const ATTR_REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
/// EVEN-PORT (RFC 8656 §18.7; not implemented, answered 420).
pub const ATTR_EVEN_PORT: u16 = 0x0018;
/// REQUESTED-TRANSPORT (RFC 8656 §18.8).
pub const ATTR_REQUESTED_TRANSPORT: u16 = 0x0019;
/// DONT-FRAGMENT (RFC 8656 §18.9; not implemented, answered 420).
pub const ATTR_DONT_FRAGMENT: u16 = 0x001A;
/// RESERVATION-TOKEN (RFC 8656 §18.10; not implemented, answered 420).
pub const ATTR_RESERVATION_TOKEN: u16 = 0x0022;
/// ADDITIONAL-ADDRESS-FAMILY (RFC 8656 §18.11; comprehension-optional, ignored).
pub const ATTR_ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
/// SOFTWARE (RFC 8489 §14.14).
pub const ATTR_SOFTWARE: u16 = 0x8022;

/// The IANA protocol number of UDP, the only REQUESTED-TRANSPORT supported.
pub const TRANSPORT_UDP: u8 = 17;

/// The largest response [`Server::handle_client`] writes (a realm and SOFTWARE at their
/// configured maximum of [`MAX_TEXT`] bytes each, error reason, nonce, UNKNOWN-ATTRIBUTES,
/// addresses, MESSAGE-INTEGRITY, FINGERPRINT): an output buffer this long never fails.
pub const MAX_RESPONSE: usize = 1024;

/// The longest realm and SOFTWARE value accepted in the configuration, in bytes (RFC 8489
/// allows fewer than 128 characters, up to 763 bytes).
pub const MAX_TEXT: usize = 256;

/// Why the server refused or dropped something. `#[repr(u8)]` so it indexes counters;
/// [`Refusal::name`] is the stable metrics label. Variants with an error code are answered with
/// that code; the others are dropped silently.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Neither a STUN message nor ChannelData, or a STUN attribute that overruns the message or
    /// a FINGERPRINT that is not last.
    Malformed = 0,
    /// FINGERPRINT present and wrong.
    BadFingerprint = 1,
    /// A response or an indication other than Send, sent to the server.
    UnexpectedMessage = 2,
    /// 400: an unknown method, a missing or malformed attribute, a channel rebinding conflict.
    BadRequest = 3,
    /// 401 without MESSAGE-INTEGRITY: the challenge every client gets first (not an attack).
    Unauthenticated = 4,
    /// 401: a username not of the REST API form, a foreign realm, or wrong MESSAGE-INTEGRITY.
    BadCredentials = 5,
    /// 401: a REST API username whose expiry has passed.
    ExpiredCredentials = 6,
    /// 438: a nonce that expired or is not ours.
    StaleNonce = 7,
    /// 441: a request on an allocation with another username than the allocation's.
    WrongCredentials = 8,
    /// 420: unknown comprehension-required attributes.
    UnknownAttribute = 9,
    /// 437: Allocate on a 5-tuple that has an allocation (another transaction), or another
    /// request on one that has none.
    AllocationMismatch = 10,
    /// 442: REQUESTED-TRANSPORT other than UDP.
    UnsupportedTransport = 11,
    /// 440: REQUESTED-ADDRESS-FAMILY unknown, or the allocator has no address of that family.
    AddressFamilyNotSupported = 12,
    /// 443 (or a dropped Send indication): a peer of the other family than the relayed address.
    PeerFamilyMismatch = 13,
    /// 486: the user's allocations are at the per-user quota.
    UserQuota = 14,
    /// 508: the server is at its allocation maximum, the allocator has no address, or an
    /// allocation is at its permission or channel maximum.
    InsufficientCapacity = 15,
    /// 403 (or a dropped relay): the peer is in a denied range.
    PeerDeniedRange = 16,
    /// 403 (or a dropped relay): the peer is one of the node's own control endpoints.
    PeerControlPort = 17,
    /// 403 (or a dropped relay): the peer is neither one of Sluice's legs nor in the allow-list.
    PeerNotAllowed = 18,
    /// A Send indication, ChannelData or peer datagram for which there is no allocation.
    NoAllocation = 19,
    /// A relay to or from a peer without a permission (RFC 8656 §9).
    NoPermission = 20,
    /// ChannelData on a channel that is not bound.
    NoChannel = 21,
    /// The caller's output buffer is too small for the message (give it [`MAX_RESPONSE`], or
    /// room for the payload plus 48 bytes on the peer path).
    OutputTooSmall = 22,
}

impl Refusal {
    /// How many reasons there are.
    pub const COUNT: usize = 23;
    /// Every reason, in index order.
    pub const ALL: [Refusal; Self::COUNT] = [
        Self::Malformed,
        Self::BadFingerprint,
        Self::UnexpectedMessage,
        Self::BadRequest,
        Self::Unauthenticated,
        Self::BadCredentials,
        Self::ExpiredCredentials,
        Self::StaleNonce,
        Self::WrongCredentials,
        Self::UnknownAttribute,
        Self::AllocationMismatch,
        Self::UnsupportedTransport,
        Self::AddressFamilyNotSupported,
        Self::PeerFamilyMismatch,
        Self::UserQuota,
        Self::InsufficientCapacity,
        Self::PeerDeniedRange,
        Self::PeerControlPort,
        Self::PeerNotAllowed,
        Self::NoAllocation,
        Self::NoPermission,
        Self::NoChannel,
        Self::OutputTooSmall,
    ];

    /// The metrics label.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::BadFingerprint => "bad_fingerprint",
            Self::UnexpectedMessage => "unexpected_message",
            Self::BadRequest => "bad_request",
            Self::Unauthenticated => "unauthenticated",
            Self::BadCredentials => "bad_credentials",
            Self::ExpiredCredentials => "expired_credentials",
            Self::StaleNonce => "stale_nonce",
            Self::WrongCredentials => "wrong_credentials",
            Self::UnknownAttribute => "unknown_attribute",
            Self::AllocationMismatch => "allocation_mismatch",
            Self::UnsupportedTransport => "unsupported_transport",
            Self::AddressFamilyNotSupported => "address_family_not_supported",
            Self::PeerFamilyMismatch => "peer_family_mismatch",
            Self::UserQuota => "user_quota",
            Self::InsufficientCapacity => "insufficient_capacity",
            Self::PeerDeniedRange => "peer_denied_range",
            Self::PeerControlPort => "peer_control_port",
            Self::PeerNotAllowed => "peer_not_allowed",
            Self::NoAllocation => "no_allocation",
            Self::NoPermission => "no_permission",
            Self::NoChannel => "no_channel",
            Self::OutputTooSmall => "output_too_small",
        }
    }

    /// The STUN error code this refusal is answered with, if it is answered.
    pub const fn error_code(self) -> Option<u16> {
        Some(match self {
            Self::BadRequest => 400,
            Self::Unauthenticated | Self::BadCredentials | Self::ExpiredCredentials => 401,
            Self::PeerDeniedRange | Self::PeerControlPort | Self::PeerNotAllowed => 403,
            Self::UnknownAttribute => 420,
            Self::AllocationMismatch => 437,
            Self::StaleNonce => 438,
            Self::AddressFamilyNotSupported => 440,
            Self::WrongCredentials => 441,
            Self::UnsupportedTransport => 442,
            Self::PeerFamilyMismatch => 443,
            Self::UserQuota => 486,
            Self::InsufficientCapacity => 508,
            _ => return None,
        })
    }
}

/// The reason phrase sent with `code`.
pub(crate) const fn reason_phrase(code: u16) -> &'static str {
    match code {
        400 => "Bad Request",
        401 => "Unauthenticated",
        403 => "Forbidden",
        420 => "Unknown Attribute",
        437 => "Allocation Mismatch",
        438 => "Stale Nonce",
        440 => "Address Family not Supported",
        441 => "Wrong Credentials",
        442 => "Unsupported Transport Protocol",
        443 => "Peer Address Family Mismatch",
        486 => "Allocation Quota Reached",
        508 => "Insufficient Capacity",
        _ => "Error",
    }
}
