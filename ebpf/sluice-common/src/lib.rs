//! Types shared by the XDP program (`sluice-ebpf`) and the dataplane's loader.
//!
//! One definition, used on both sides of the kernel boundary: `#[repr(C)]`, no implicit padding
//! (checked by const asserts), `aya::Pod` behind the `user` feature. Never keep a hand-synced copy.
//!
//! Byte order: every port and SSRC in a key or value is in host order (the program converts from
//! the wire once, so userspace never has to think about it); addresses are the 16 network-order
//! bytes of an IPv6 address, IPv4 being stored v4-mapped (`::ffff:a.b.c.d`, RFC 4291 §2.5.5.2).
#![no_std]
#![deny(missing_docs)]

/// Why the XDP stage let a packet through or dropped it: the index into the per-CPU verdict
/// counter array [`VERDICTS_MAP`]. Exactly one verdict is counted per packet.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum XdpVerdict {
    /// Not IPv4/IPv6, not UDP, or an IPv4 fragment: handed to the kernel untouched.
    PassNotUdp = 0,
    /// UDP outside the media port range: handed to the kernel untouched.
    PassOutsideRange = 1,
    /// STUN on a media port (RFC 7983 first byte 0..=3): the slow path (ICE) gets it.
    PassStun = 2,
    /// DTLS on a media port (first byte 20..=63): the slow path (DTLS-SRTP handshake) gets it.
    PassDtls = 3,
    /// RTP/RTCP from a known leg (and, for RTP, an announced SSRC): passed to the worker's socket.
    PassMedia = 4,
    /// AF_XDP mode ([`CONFIG_AF_XDP`]): known media redirected to the XSK bound on the receiving
    /// queue ([`XSKS_MAP`]). With no socket on that queue the packet passes (`PassMedia`).
    RedirectXsk = 5,
    /// A header was shorter than it claimed (Ethernet, VLAN, IP, UDP, RTP or RTCP); dropped.
    DropMalformed = 6,
    /// A media-port first byte that is none of STUN, DTLS, RTP/RTCP (ZRTP, TURN channels, noise).
    DropNotRtc = 7,
    /// RTP/RTCP from a (local port, remote address) that no leg owns: the flood shield.
    DropUnknownSource = 8,
    /// RTP from a known leg with an SSRC that leg never announced.
    DropUnknownSsrc = 9,
    /// Relay leg, rewritten and sent back out of the receiving interface (XDP_TX).
    RelayTx = 10,
    /// Relay leg, rewritten and redirected to another interface through the devmap.
    RelayRedirect = 11,
    /// Relay entry unusable: address family differs from the packet's, or the target interface is
    /// not in the devmap.
    DropRelayInvalid = 12,
    /// Top-N audio: RTP of an SSRC gated in [`SILENCE_MAP`] whose RFC 6464 level is not speech:
    /// dropped before it reaches userspace (every [`SILENT_KEEPALIVE`]-th of a run passes).
    DropSilentAudio = 13,
    /// UDP to the TURN listener ([`TURN_MAP`]) that the stage does not unwrap (STUN requests,
    /// a channel with no route in [`CHANNELS_MAP`], padded ChannelData, IPv4 options): handed to
    /// the TURN server. ChannelData the stage unwraps is counted by what the unwrapped datagram
    /// then is (`pass_media`, `redirect_xsk`, ...), and in [`TURN_STATS_MAP`].
    PassTurn = 14,
}

impl XdpVerdict {
    /// How many verdicts there are: the size of the counter array.
    pub const COUNT: u32 = 15;

    /// Every verdict, in counter-index order.
    pub const ALL: [Self; Self::COUNT as usize] = [
        Self::PassNotUdp,
        Self::PassOutsideRange,
        Self::PassStun,
        Self::PassDtls,
        Self::PassMedia,
        Self::RedirectXsk,
        Self::DropMalformed,
        Self::DropNotRtc,
        Self::DropUnknownSource,
        Self::DropUnknownSsrc,
        Self::RelayTx,
        Self::RelayRedirect,
        Self::DropRelayInvalid,
        Self::DropSilentAudio,
        Self::PassTurn,
    ];

    /// A stable snake_case name, for metrics labels and logs.
    pub const fn name(self) -> &'static str {
        match self {
            Self::PassNotUdp => "pass_not_udp",
            Self::PassOutsideRange => "pass_outside_range",
            Self::PassStun => "pass_stun",
            Self::PassDtls => "pass_dtls",
            Self::PassMedia => "pass_media",
            Self::RedirectXsk => "redirect_xsk",
            Self::DropMalformed => "malformed",
            Self::DropNotRtc => "not_rtc",
            Self::DropUnknownSource => "unknown_source",
            Self::DropUnknownSsrc => "unknown_ssrc",
            Self::RelayTx => "relay_tx",
            Self::RelayRedirect => "relay_redirect",
            Self::DropRelayInvalid => "relay_invalid",
            Self::DropSilentAudio => "silent_audio",
            Self::PassTurn => "pass_turn",
        }
    }
}

/// The stage configuration, entry 0 of [`CONFIG_MAP`]: the media port range and mode flags. UDP
/// to a local port outside `lo..=hi` is never looked at; `lo > hi` disables the stage (the
/// all-zero initial value covers port 0 only, which no socket binds).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRange {
    /// Lowest media port, inclusive.
    pub lo: u16,
    /// Highest media port, inclusive.
    pub hi: u16,
    /// Mode bits: [`CONFIG_AF_XDP`].
    pub flags: u32,
}

/// [`PortRange::flags`] bit: redirect known media to the AF_XDP socket of the receiving queue
/// (through [`XSKS_MAP`]) instead of passing it to the kernel's UDP stack.
pub const CONFIG_AF_XDP: u32 = 1;

/// A transport as the XDP stage sees it: our local UDP port and the remote address. The key of
/// [`LEGS_MAP`] and [`RELAYS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Remote IP address, IPv6 or v4-mapped IPv4, network byte order.
    pub remote_addr: [u8; 16],
    /// Remote UDP port, host order.
    pub remote_port: u16,
    /// Local UDP port (the packet's destination port), host order.
    pub local_port: u16,
}

/// What [`LEGS_MAP`] knows about a leg.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LegValue {
    /// The dataplane's leg id; [`SsrcValue::leg`] must match it.
    pub leg: u32,
    /// The worker (queue) that owns the leg: the AF_XDP steering hook will use it.
    pub worker: u32,
}

/// The key of [`SSRCS_MAP`]: an SSRC announced on a local port, or ([`SsrcKey::any`]) every SSRC
/// on that port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SsrcKey {
    /// RTP SSRC, host order (0 in a wildcard entry).
    pub ssrc: u32,
    /// Local UDP port, host order.
    pub local_port: u16,
    /// 0 for one SSRC; [`SSRC_ANY`] for the wildcard entry of the port (explicit, so the key has
    /// no implicit padding).
    pub scope: u16,
}

/// [`SsrcKey::scope`] of a wildcard entry: any SSRC from the leg that owns the port passes. The
/// dataplane installs it while a track of the leg has a simulcast layer whose SSRC is not
/// signalled (learned from its RID, RFC 8852), and withdraws it once every such SSRC is known.
pub const SSRC_ANY: u16 = 1;

impl SsrcKey {
    /// The key of one announced SSRC.
    pub const fn one(local_port: u16, ssrc: u32) -> Self {
        Self { ssrc, local_port, scope: 0 }
    }

    /// The wildcard key of a port.
    pub const fn any(local_port: u16) -> Self {
        Self { ssrc: 0, local_port, scope: SSRC_ANY }
    }
}

impl FlowKey {
    /// The key of one transport.
    pub const fn new(local_port: u16, remote_addr: [u8; 16], remote_port: u16) -> Self {
        Self { remote_addr, remote_port, local_port }
    }

    /// The wildcard key of a port: remote `[::]:0`, which no datagram carries (source port 0 is
    /// not a valid UDP sender). A leg whose remote is not known yet is installed under it, so its
    /// first packet (the one the worker latches the remote from) reaches the worker; the exact
    /// entry replaces it once the remote is latched.
    pub const fn any_remote(local_port: u16) -> Self {
        Self { remote_addr: [0; 16], remote_port: 0, local_port }
    }
}

/// The value of [`SSRCS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SsrcValue {
    /// The leg that announced the SSRC; RTP from another leg on the same port is dropped.
    pub leg: u32,
}

/// Where a relay leg's packets go (the value of [`RELAYS_MAP`]): the IP/UDP/Ethernet header
/// fields to write. A relay does not terminate SRTP; it is a TURN-like 5-tuple rewrite.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayTarget {
    /// New source address (ours on the egress side), same family as the packet.
    pub src_addr: [u8; 16],
    /// New destination address (the other party), same family as the packet.
    pub dst_addr: [u8; 16],
    /// New UDP source port, host order.
    pub src_port: u16,
    /// New UDP destination port, host order.
    pub dst_port: u16,
    /// Next-hop MAC address.
    pub dst_mac: [u8; 6],
    /// Egress interface MAC address.
    pub src_mac: [u8; 6],
    /// Egress interface index; [`RELAY_SAME_INTERFACE`] transmits back out of the ingress
    /// interface (XDP_TX), anything else redirects through [`TX_PORTS_MAP`].
    pub ifindex: u32,
}

/// The value of [`SILENCE_MAP`] (keyed by [`SsrcKey::one`]): an audio stream whose silence the
/// XDP stage drops. The worker installs it while the stream's track is taken only by audio slots,
/// is not ranked as a speaker, and its leg's remote is latched and has no transport-cc (whose
/// arrivals the worker must see); it removes it when any of that changes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SilenceGate {
    /// The RFC 6464 header extension's one-byte id (1..=14).
    pub ext: u8,
    /// 1 when the sender runs a VAD (then its V bit decides speech), else 0 (level alone).
    pub vad: u8,
    /// Explicit padding (0).
    pub pad: u16,
    /// Packets dropped in the current silent run (written by the program; racy across CPUs,
    /// which only moves the keepalive a little).
    pub run: u32,
}

/// Every this many-th packet of a silent run passes to the worker: its SRTP state (rollover
/// counter, replay window) never faces a longer hole (the worker's own drop uses the same).
pub const SILENT_KEEPALIVE: u32 = 32;
/// The quietest level (-dBov) that counts as speech (the worker's `audio::level`'s too).
pub const SPEECH_MAX_DBOV: u8 = 55;

/// Entry 0 of [`TURN_MAP`]: the embedded TURN server's UDP listening port (0: none). ChannelData
/// to it is unwrapped in the stage when its channel has a route in [`CHANNELS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TurnPorts {
    /// The UDP listener's port, host order; 0 turns the ChannelData path off.
    pub udp: u16,
    /// Explicit padding (0).
    pub pad: u16,
}

/// The key of [`CHANNELS_MAP`]: a TURN client's transport on the UDP listener and one of its
/// channels (RFC 8656 §12).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ChannelKey {
    /// The client's address (as the node sees it), IPv6 or v4-mapped, network byte order.
    pub client_addr: [u8; 16],
    /// The client's UDP port, host order.
    pub client_port: u16,
    /// The listener's UDP port the client sends to, host order.
    pub server_port: u16,
    /// The channel number (0x4000..=0x4FFF), host order.
    pub channel: u16,
    /// Explicit padding (0).
    pub pad: u16,
}

/// The value of [`CHANNELS_MAP`]: the route of a channel bound to one of the node's own legs.
/// The stage strips the 4-byte ChannelData header and rewrites the datagram to come from the
/// allocation's relayed address and go to the leg, exactly what the TURN server would have sent
/// from its relayed socket, then handles it as any datagram to that leg.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelTarget {
    /// The allocation's relayed address (the new source), same family as the packet.
    pub relayed_addr: [u8; 16],
    /// The leg's address (the new destination, one of the node's), same family as the packet.
    pub peer_addr: [u8; 16],
    /// The relayed port, host order.
    pub relayed_port: u16,
    /// The leg's port, host order.
    pub peer_port: u16,
}

/// Indexes of [`TURN_STATS_MAP`] (per-CPU `u64`s).
pub const TURN_STAT_PACKETS: u32 = 0;
/// ChannelData payload bytes unwrapped (without the 4-byte header).
pub const TURN_STAT_BYTES: u32 = 1;
/// How many counters [`TURN_STATS_MAP`] has.
pub const TURN_STATS: u32 = 2;

/// [`RelayTarget::ifindex`] meaning "the interface the packet came in on".
pub const RELAY_SAME_INTERFACE: u32 = 0;

const _: () = {
    assert!(core::mem::size_of::<PortRange>() == 8);
    assert!(core::mem::size_of::<FlowKey>() == 20);
    assert!(core::mem::align_of::<FlowKey>() == 2);
    assert!(core::mem::size_of::<LegValue>() == 8);
    assert!(core::mem::size_of::<SsrcKey>() == 8);
    assert!(core::mem::size_of::<SsrcValue>() == 4);
    assert!(core::mem::size_of::<RelayTarget>() == 52);
    assert!(core::mem::offset_of!(RelayTarget, ifindex) == 48);
    assert!(core::mem::size_of::<XdpVerdict>() == 4);
    assert!(core::mem::size_of::<SilenceGate>() == 8);
    assert!(core::mem::size_of::<TurnPorts>() == 4);
    assert!(core::mem::size_of::<ChannelKey>() == 24);
    assert!(core::mem::size_of::<ChannelTarget>() == 36);
};

#[cfg(feature = "user")]
mod pod {
    // All impls below: `#[repr(C)]` structs of integers and byte arrays with no implicit padding
    // (see the const asserts above), so every bit pattern is a valid value.

    // SAFETY: see above.
    unsafe impl aya::Pod for super::PortRange {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::LegValue {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::SsrcKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::SsrcValue {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::RelayTarget {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::SilenceGate {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::TurnPorts {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::ChannelKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::ChannelTarget {}
}

/// The name of the per-CPU verdict counter array (`u32` index → `u64` count).
pub const VERDICTS_MAP: &str = "SLUICE_VERDICTS";
/// The name of the one-entry configuration array (index 0 → [`PortRange`]).
pub const CONFIG_MAP: &str = "SLUICE_CONFIG";
/// The name of the leg hash map ([`FlowKey`] → [`LegValue`]).
pub const LEGS_MAP: &str = "SLUICE_LEGS";
/// The name of the SSRC allow map ([`SsrcKey`] → [`SsrcValue`]).
pub const SSRCS_MAP: &str = "SLUICE_SSRCS";
/// The name of the relay map ([`FlowKey`] → [`RelayTarget`]).
pub const RELAYS_MAP: &str = "SLUICE_RELAYS";
/// The name of the devmap-hash relays redirect through (ifindex → ifindex).
pub const TX_PORTS_MAP: &str = "SLUICE_TX_PORTS";
/// The name of the XSKMAP (RX queue index → AF_XDP socket) known media is redirected through in
/// AF_XDP mode.
pub const XSKS_MAP: &str = "SLUICE_XSKS";
/// The name of the silence gate map ([`SsrcKey`] → [`SilenceGate`]).
pub const SILENCE_MAP: &str = "SLUICE_SILENCE";
/// The name of the one-entry TURN configuration array (index 0 → [`TurnPorts`]).
pub const TURN_MAP: &str = "SLUICE_TURN";
/// The name of the TURN channel route map ([`ChannelKey`] → [`ChannelTarget`]).
pub const CHANNELS_MAP: &str = "SLUICE_CHANNELS";
/// The name of the per-CPU TURN counter array ([`TURN_STAT_PACKETS`], [`TURN_STAT_BYTES`]).
pub const TURN_STATS_MAP: &str = "SLUICE_TURN_STATS";
/// The name of the program array the stage tail-calls through (not pinned).
pub const PROGS_MAP: &str = "SLUICE_PROGS";
/// [`PROGS_MAP`] index of the TURN stage ([`TURN_PROGRAM`]).
pub const PROG_TURN: u32 = 0;
/// [`PROGS_MAP`] index of the main program ([`XDP_PROGRAM`]), which the TURN stage returns to.
pub const PROG_MAIN: u32 = 1;
/// The name of the TURN stage's program in the object.
pub const TURN_PROGRAM: &str = "sluice_turn";
/// The name of the XDP program in the object.
pub const XDP_PROGRAM: &str = "sluice_xdp";
/// Every map, for pin bookkeeping.
pub const ALL_MAPS: [&str; 11] =
    [VERDICTS_MAP, CONFIG_MAP, LEGS_MAP, SSRCS_MAP, RELAYS_MAP, TX_PORTS_MAP, XSKS_MAP, SILENCE_MAP, TURN_MAP, CHANNELS_MAP, TURN_STATS_MAP];

/// Capacity of [`LEGS_MAP`].
pub const MAX_LEGS: u32 = 65_536;
/// Capacity of [`SSRCS_MAP`].
pub const MAX_SSRCS: u32 = 262_144;
/// Capacity of [`SILENCE_MAP`].
pub const MAX_SILENCE: u32 = 65_536;
/// Capacity of [`RELAYS_MAP`].
pub const MAX_RELAYS: u32 = 65_536;
/// Capacity of [`CHANNELS_MAP`] (a relayed participant binds one or two channels).
pub const MAX_CHANNELS: u32 = 65_536;
/// Capacity of [`TX_PORTS_MAP`].
pub const MAX_TX_PORTS: u32 = 64;
/// Capacity of [`XSKS_MAP`]: the highest RX queue index an AF_XDP socket can serve, plus one.
pub const MAX_XSK_QUEUES: u32 = 64;
