//! Sluice's XDP first stage: parse, demultiplex (RFC 7983), shield, steer, relay.
//!
//! ```text
//!  Ethernet [802.1Q/802.1ad tag] ─ IPv4 (IHL options; fragments pass) | IPv6 (no ext. headers)
//!    └─ UDP to the TURN listener (SLUICE_TURN): tail call `sluice_turn`, which unwraps
//!       ChannelData on a route in SLUICE_CHANNELS into a datagram from the relayed address to the
//!       leg and tail-calls back here; anything else to the listener passes (pass_turn)
//!    └─ UDP, local (destination) port in SLUICE_CONFIG lo..=hi, else pass untouched
//!        ├─ (local port, remote) in SLUICE_RELAYS → rewrite Eth/IP/UDP → XDP_TX | XDP_REDIRECT
//!        └─ first payload byte (RFC 7983 §7):
//!             0..=3 STUN, 20..=63 DTLS  → XDP_PASS (slow path: ICE, DTLS-SRTP)
//!             128..=191 RTP/RTCP        → source (or the port's any-remote wildcard) in
//!                                         SLUICE_LEGS? else drop unknown_source
//!                                         RTP: (port, SSRC) or the port's any-SSRC wildcard in
//!                                         SLUICE_SSRCS, for that leg? else drop unknown_ssrc
//!                                         (port, SSRC) gated in SLUICE_SILENCE and its RFC 6464
//!                                         level not speech? drop silent_audio (each 32nd passes)
//!                                         → steer_media: AF_XDP mode and an XSK on the RX
//!                                           queue → XDP_REDIRECT, else XDP_PASS
//!             anything else             → drop not_rtc
//! ```
//!
//! Exactly one verdict is counted per packet in the per-CPU array SLUICE_VERDICTS, indexed by
//! `sluice_common::XdpVerdict`. Relay legs relay every datagram from the relayed source (STUN and
//! DTLS included): a relay does not terminate ICE or DTLS, the two ends do.
//!
//! IPv6 extension headers are not walked: a next-header other than UDP passes untouched. IPv4
//! fragments pass untouched too (a non-first fragment has no ports to check).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, DevMapHash, HashMap, PerCpuArray, ProgramArray, XskMap},
    programs::XdpContext,
};
use sluice_common::{
    CONFIG_AF_XDP, ChannelKey, ChannelTarget, FlowKey, LegValue, MAX_CHANNELS, MAX_LEGS, MAX_RELAYS, MAX_SILENCE, MAX_SSRCS, MAX_TX_PORTS, MAX_XSK_QUEUES,
    PROG_MAIN, PROG_TURN, PortRange, RELAY_SAME_INTERFACE, RelayTarget, SILENT_KEEPALIVE, SPEECH_MAX_DBOV, SilenceGate, SsrcKey, SsrcValue, TURN_STAT_BYTES,
    TURN_STAT_PACKETS, TURN_STATS, TurnPorts, XdpVerdict,
};

#[map(name = "SLUICE_VERDICTS")]
static SLUICE_VERDICTS: PerCpuArray<u64> = PerCpuArray::pinned(XdpVerdict::COUNT, 0);

#[map(name = "SLUICE_CONFIG")]
static SLUICE_CONFIG: Array<PortRange> = Array::pinned(1, 0);

#[map(name = "SLUICE_LEGS")]
static SLUICE_LEGS: HashMap<FlowKey, LegValue> = HashMap::pinned(MAX_LEGS, 0);

#[map(name = "SLUICE_SSRCS")]
static SLUICE_SSRCS: HashMap<SsrcKey, SsrcValue> = HashMap::pinned(MAX_SSRCS, 0);

#[map(name = "SLUICE_SILENCE")]
static SLUICE_SILENCE: HashMap<SsrcKey, SilenceGate> = HashMap::pinned(MAX_SILENCE, 0);

#[map(name = "SLUICE_RELAYS")]
static SLUICE_RELAYS: HashMap<FlowKey, RelayTarget> = HashMap::pinned(MAX_RELAYS, 0);

#[map(name = "SLUICE_TX_PORTS")]
static SLUICE_TX_PORTS: DevMapHash = DevMapHash::pinned(MAX_TX_PORTS, 0);

#[map(name = "SLUICE_XSKS")]
static SLUICE_XSKS: XskMap = XskMap::pinned(MAX_XSK_QUEUES, 0);

#[map(name = "SLUICE_TURN")]
static SLUICE_TURN: Array<TurnPorts> = Array::pinned(1, 0);

#[map(name = "SLUICE_CHANNELS")]
static SLUICE_CHANNELS: HashMap<ChannelKey, ChannelTarget> = HashMap::pinned(MAX_CHANNELS, 0);

/// The stage's programs, for tail calls: [`PROG_TURN`] and [`PROG_MAIN`]. Not pinned: filled by
/// the process that loads the programs, emptied when it exits (a stage left attached without
/// its daemon then hands all TURN traffic to the kernel, where no server listens).
#[map(name = "SLUICE_PROGS")]
static SLUICE_PROGS: ProgramArray = ProgramArray::with_max_entries(2, 0);

#[map(name = "SLUICE_TURN_STATS")]
static SLUICE_TURN_STATS: PerCpuArray<u64> = PerCpuArray::pinned(TURN_STATS, 0);

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const IPPROTO_UDP: u8 = 17;
const IPV4_MIN_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const UDP_HLEN: usize = 8;
const RTP_MIN_LEN: usize = 12;
const RTCP_MIN_LEN: usize = 8;
const MAX_OFFSET: usize = 255;
/// Header-extension elements looked at for the audio level (browsers send 2-5).
const MAX_EXT_ELEMENTS: usize = 8;

#[xdp]
pub fn sluice_xdp(ctx: XdpContext) -> u32 {
    match try_sluice_xdp(&ctx) {
        Ok(action) | Err(action) => action,
    }
}

#[inline(always)]
fn count(verdict: XdpVerdict) {
    if let Some(counter) = SLUICE_VERDICTS.get_ptr_mut(verdict as u32) {
        // SAFETY: the per-CPU slot belongs to this CPU while the program runs (no preemption
        // inside an XDP program), so the increment cannot race.
        unsafe { *counter += 1 };
    }
}

/// Counts `verdict` and returns `action`: every exit of the program goes through here once.
#[inline(always)]
fn verdict(verdict: XdpVerdict, action: u32) -> u32 {
    count(verdict);
    action
}

#[inline(always)]
fn malformed() -> u32 {
    verdict(XdpVerdict::DropMalformed, xdp_action::XDP_DROP)
}

/// A pointer to `T` at `offset` into the frame, if the whole `T` lies inside it.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    // Every header offset here is below 256 (VLAN + IPv4 with options + UDP + RTP); saying so
    // keeps the verifier's bounds on offsets that the compiler spilled to the stack.
    if offset > MAX_OFFSET {
        return None;
    }
    let p = ctx.data() + offset;
    if p + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some(p as *mut T)
}

/// Reads a `T` at `offset`, or `None` if the frame is too short.
#[inline(always)]
fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    let p = ptr_at::<T>(ctx, offset)?;
    // SAFETY: `ptr_at` checked that `size_of::<T>()` bytes at `p` lie inside the frame; packet
    // data has no alignment guarantee, hence `read_unaligned`.
    Some(unsafe { p.read_unaligned() })
}

/// The transport of one parsed datagram.
struct Udp {
    /// Offset of the IP header.
    l3: usize,
    /// Offset of the UDP header.
    l4: usize,
    v6: bool,
    flow: FlowKey,
    /// The UDP length field minus the header: the datagram as sent, without Ethernet padding.
    payload_len: usize,
}

/// The UDP payload length the header claims (RFC 768); a length below the header size is
/// malformed. Short frames carry Ethernet padding, so the frame end alone cannot say where the
/// datagram ends.
#[inline(always)]
fn udp_payload_len(udp: &[u8; UDP_HLEN]) -> Result<usize, u32> {
    let len = u16::from_be_bytes([udp[4], udp[5]]) as usize;
    if len < UDP_HLEN {
        return Err(malformed());
    }
    Ok(len - UDP_HLEN)
}

fn try_sluice_xdp(ctx: &XdpContext) -> Result<u32, u32> {
    let udp = parse(ctx)?;

    let turn = SLUICE_TURN.get(0).copied().unwrap_or_default();
    if turn.udp != 0 && udp.flow.local_port == turn.udp {
        // The TURN stage has a program (and a stack frame) of its own; it comes back here with
        // the unwrapped datagram. Without it (not loaded yet) the TURN server gets everything.
        // SAFETY: a tail call with this program's own context.
        let _ = unsafe { SLUICE_PROGS.tail_call(ctx, PROG_TURN) };
        return Ok(verdict(XdpVerdict::PassTurn, xdp_action::XDP_PASS));
    }
    media(ctx, &udp)
}

/// The TURN stage, entered from [`sluice_xdp`] by tail call for UDP to the TURN listener:
/// unwraps ChannelData on a route ([`turn_channel`]) and tail-calls [`sluice_xdp`] again, which
/// then sees a datagram from the relayed address to the leg. A tail call replaces the caller's
/// stack frame: the unwrap's locals and the media path's never share the 512 bytes.
#[xdp]
pub fn sluice_turn(ctx: XdpContext) -> u32 {
    match try_sluice_turn(&ctx) {
        Ok(action) | Err(action) => action,
    }
}

fn try_sluice_turn(ctx: &XdpContext) -> Result<u32, u32> {
    let udp = parse(ctx)?;
    turn_channel(ctx, &udp)?;
    // SAFETY: a tail call with this program's own context.
    let _ = unsafe { SLUICE_PROGS.tail_call(ctx, PROG_MAIN) };
    // Not back in the main program (not registered): the unwrapped datagram goes to the leg's
    // socket through the kernel, unshielded but exactly what the TURN server would have sent.
    Ok(verdict(XdpVerdict::PassMedia, xdp_action::XDP_PASS))
}

/// A datagram to a local UDP port: relay, demultiplex, shield, steer.
#[inline(always)]
fn media(ctx: &XdpContext, udp: &Udp) -> Result<u32, u32> {
    let range = SLUICE_CONFIG.get(0).copied().unwrap_or_default();
    let port = udp.flow.local_port;
    if port < range.lo || port > range.hi {
        return Ok(verdict(XdpVerdict::PassOutsideRange, xdp_action::XDP_PASS));
    }

    if let Some(target) = SLUICE_RELAYS.get_ptr(&udp.flow) {
        // SAFETY: a hash map value pointer stays valid for the program run (RCU); the copy may
        // race a concurrent userspace update, which at worst relays one packet on the old or new
        // target.
        let target = unsafe { target.read() };
        return relay(ctx, udp, &target);
    }

    // RFC 7983 §7: demultiplex on the first byte of the UDP payload. Two bytes are read: no
    // class fits in one (STUN 20, DTLS 13, RTCP 8, RTP 12), and a one-byte read at a variable
    // offset compiles to a bounds check the verifier cannot use.
    let payload = udp.l4 + UDP_HLEN;
    if udp.payload_len < 2 {
        return Err(malformed());
    }
    let head = read::<[u8; 2]>(ctx, payload).ok_or_else(malformed)?;
    match head[0] {
        0..=3 => Ok(verdict(XdpVerdict::PassStun, xdp_action::XDP_PASS)),
        20..=63 => Ok(verdict(XdpVerdict::PassDtls, xdp_action::XDP_PASS)),
        128..=191 => rtp_or_rtcp(ctx, udp, &range, payload, head[1]),
        _ => Err(verdict(XdpVerdict::DropNotRtc, xdp_action::XDP_DROP)),
    }
}

/// ChannelData (RFC 8656 §12.4) from a TURN client over UDP, on a channel bound to one of the
/// node's legs (a route in `SLUICE_CHANNELS`): the 4-byte header is stripped and the datagram
/// rewritten to come from the allocation's relayed address and go to the leg, what the TURN
/// server would have sent from its relayed socket; the caller then handles it like any datagram
/// to the leg ([`media`]). Anything else to the listener (STUN, an unknown channel, ChannelData
/// with padding or trailing bytes, IPv4 options) passes to the TURN server (`pass_turn`).
///
/// ```text
///  | Eth | IP | UDP | ch | len | SRTP |  →  | Eth | IP' | UDP' | SRTP |
///   headers moved 4 bytes forward over ch/len, then the head advanced by 4 (bpf_xdp_adjust_head)
/// ```
///
/// Written to keep the stack small (it shares the program's 512-byte frame with the media path):
/// the route is read word by word from the map value where it is needed, never copied out.
#[inline(always)]
fn turn_channel(ctx: &XdpContext, udp: &Udp) -> Result<Udp, u32> {
    let pass = || verdict(XdpVerdict::PassTurn, xdp_action::XDP_PASS);
    let payload = udp.l4 + UDP_HLEN;
    if udp.payload_len < 4 {
        return Err(pass());
    }
    let hdr = read::<[u16; 2]>(ctx, payload).ok_or_else(malformed)?;
    let channel = u16::from_be(hdr[0]);
    let len = u16::from_be(hdr[1]) as usize;
    // Over UDP the padding is optional (§12.5): a datagram with any is the server's to judge.
    if !(0x4000..=0x4fff).contains(&channel) || len == 0 || len + 4 != udp.payload_len {
        return Err(pass());
    }
    let key = ChannelKey { client_addr: udp.flow.remote_addr, client_port: udp.flow.remote_port, server_port: udp.flow.local_port, channel, pad: 0 };
    let Some(t) = SLUICE_CHANNELS.get_ptr(&key) else { return Err(pass()) };
    // The value as 18 native-order words: relayed address (0..8), leg address (8..16), relayed
    // port (16), leg port (17), both ports host order.
    let w = t as *const u16;
    // SAFETY (every `word` call): the map value is 36 bytes and stays valid for the program run
    // (RCU); a racing update yields a mix of old and new words for one packet at worst.
    let word = |i: usize| unsafe { w.add(i).read_volatile() };
    // v4-mapped is ::ffff:0:0/96: words 0..5 zero, word 5 0xffff.
    let v4 = |base: usize| (word(base) | word(base + 1) | word(base + 2) | word(base + 3) | word(base + 4)) == 0 && word(base + 5) == 0xffff;
    if v4(0) == udp.v6 || v4(8) == udp.v6 {
        return Err(pass());
    }
    let (relayed_port, peer_port) = (word(16), word(17));
    let moved = match (udp.v6, payload) {
        (false, 42) => shift_headers::<42>(ctx),
        (false, 46) => shift_headers::<46>(ctx),
        (true, 62) => shift_headers::<62>(ctx),
        (true, 66) => shift_headers::<66>(ctx),
        _ => return Err(pass()),
    };
    if moved.is_none() {
        return Err(pass());
    }
    // SAFETY: the helper only moves `data` within the frame; every pointer is derived afresh
    // from the context afterwards.
    if unsafe { aya_ebpf::helpers::bpf_xdp_adjust_head(ctx.ctx, 4) } != 0 {
        // The headers already moved: the frame is no longer what arrived.
        return Err(malformed());
    }
    // The header words leave the UDP checksum's sum (they sat at an even offset, so the payload's
    // words keep their alignment); the addresses change in the pseudo-header.
    let mut delta = csum_replace(csum_replace(0, hdr[0], 0), hdr[1], 0);
    let new_len = ((len + UDP_HLEN) as u16).to_be();
    let old_len = ((udp.payload_len + UDP_HLEN) as u16).to_be();
    if udp.v6 {
        // Source then destination, 16 words, as the value holds them.
        for i in 0..16 {
            let p = ptr_at::<u16>(ctx, udp.l3 + 8 + 2 * i).ok_or_else(malformed)?;
            // SAFETY: bounds-checked above. Volatile 16-bit accesses (frame offsets are even):
            // as byte loads kept for a checksum computed later they would fill the stack.
            unsafe {
                let new = word(i);
                delta = csum_replace(delta, p.read_volatile(), new);
                p.write_volatile(new);
            }
        }
        let plen = ptr_at::<u16>(ctx, udp.l3 + 4).ok_or_else(malformed)?;
        // SAFETY: bounds-checked above.
        unsafe { plen.write_volatile(new_len) };
    } else {
        let ip = ptr_at::<[u16; 10]>(ctx, udp.l3).ok_or_else(malformed)?;
        let ip = ip as *mut u16;
        // Source at word 6..8 (the relayed address's last two words), destination at 8..10.
        let mut ip_delta = 0;
        for (at, from) in [(6, 6), (7, 7), (8, 14), (9, 15)] {
            // SAFETY: inside the 20 bytes bounds-checked above.
            unsafe {
                let new = word(from);
                let old = ip.add(at).read_volatile();
                ip_delta = csum_replace(ip_delta, old, new);
                ip.add(at).write_volatile(new);
            }
        }
        delta += ip_delta;
        // SAFETY: as above (total length at word 1, header checksum at word 5).
        unsafe {
            let total = ip.add(1).read_volatile();
            let new_total = (u16::from_be(total).wrapping_sub(4)).to_be();
            ip.add(1).write_volatile(new_total);
            let check = ip.add(5).read_volatile();
            ip.add(5).write_volatile(csum_apply(check, csum_replace(ip_delta, total, new_total)));
        }
    }
    let uh = ptr_at::<[u16; 4]>(ctx, udp.l4).ok_or_else(malformed)?;
    // SAFETY: bounds-checked above.
    let mut h = unsafe { uh.read_unaligned() };
    let ports = [relayed_port.to_be(), peer_port.to_be()];
    delta = csum_replace(delta, h[0], ports[0]);
    delta = csum_replace(delta, h[1], ports[1]);
    // The length counts twice: in the header and in the pseudo-header.
    delta = csum_replace(delta, old_len, new_len);
    delta = csum_replace(delta, old_len, new_len);
    h[0] = ports[0];
    h[1] = ports[1];
    h[2] = new_len;
    if udp.v6 || h[3] != 0 {
        let c = csum_apply(h[3], delta);
        h[3] = if c == 0 { 0xffff } else { c };
    }
    // SAFETY: bounds-checked above.
    unsafe { uh.write_unaligned(h) };
    for (i, n) in [(TURN_STAT_PACKETS, 1), (TURN_STAT_BYTES, len as u64)] {
        if let Some(c) = SLUICE_TURN_STATS.get_ptr_mut(i) {
            // SAFETY: this CPU's slot, no preemption inside the program (as in `count`).
            unsafe { *c += n };
        }
    }
    let mut flow = FlowKey { remote_addr: [0; 16], remote_port: relayed_port, local_port: peer_port };
    for i in 0..8 {
        let b = word(i).to_ne_bytes();
        flow.remote_addr[2 * i] = b[0];
        flow.remote_addr[2 * i + 1] = b[1];
    }
    Ok(Udp { l3: udp.l3, l4: udp.l4, v6: udp.v6, payload_len: len, flow })
}

/// Moves the frame's first `N` bytes (Ethernet, IP and UDP headers; `N` even) 4 bytes forward,
/// from the end down so nothing is overwritten before it is read; `None` if the frame is shorter
/// than `N + 4`. Volatile 16-bit copies through a register: the compiler may neither turn them
/// into a `memmove` call (BPF has none) nor stage them on the 512-byte stack. Frame data starts
/// 2-byte aligned (XDP headroom is 256 bytes) and every offset here is even.
#[inline(always)]
fn shift_headers<const N: usize>(ctx: &XdpContext) -> Option<()> {
    let base = ctx.data();
    if base + N + 4 > ctx.data_end() {
        return None;
    }
    let mut off = N;
    while off >= 2 {
        off -= 2;
        // SAFETY: `off + 4 + 2 <= N + 4`, inside the frame (checked above); 2-byte aligned.
        unsafe { ((base + off + 4) as *mut u16).write_volatile(((base + off) as *const u16).read_volatile()) };
    }
    Some(())
}

/// Ethernet, at most one VLAN tag (802.1Q or 802.1ad), IPv4 or IPv6, UDP; anything else is
/// counted `pass_not_udp` and passes (the `Err` carries the action).
#[inline(always)]
fn parse(ctx: &XdpContext) -> Result<Udp, u32> {
    let mut ethertype = u16::from_be(read::<u16>(ctx, 12).ok_or_else(malformed)?);
    let mut l3 = ETH_HLEN;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        ethertype = u16::from_be(read::<u16>(ctx, ETH_HLEN + 2).ok_or_else(malformed)?);
        l3 += VLAN_HLEN;
    }
    match ethertype {
        ETH_P_IP => parse_ipv4(ctx, l3),
        ETH_P_IPV6 => parse_ipv6(ctx, l3),
        _ => Err(verdict(XdpVerdict::PassNotUdp, xdp_action::XDP_PASS)),
    }
}

/// ```text
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// |Version|  IHL  |Type of Service|          Total Length         |
/// |         Identification        |Flags|      Fragment Offset    |
/// |  Time to Live |    Protocol   |         Header Checksum       |
/// |                       Source Address                          |
/// |                    Destination Address                        |
/// |                    Options (IHL > 5)                          |
/// ```
#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, l3: usize) -> Result<Udp, u32> {
    let hdr = read::<[u8; IPV4_MIN_HLEN]>(ctx, l3).ok_or_else(malformed)?;
    let ihl = ((hdr[0] & 0x0f) as usize) * 4;
    if hdr[0] >> 4 != 4 || ihl < IPV4_MIN_HLEN {
        return Err(malformed());
    }
    if hdr[9] != IPPROTO_UDP {
        return Err(verdict(XdpVerdict::PassNotUdp, xdp_action::XDP_PASS));
    }
    // MF set or a non-zero offset: a fragment; only the reassembled datagram has a UDP view.
    if u16::from_be_bytes([hdr[6], hdr[7]]) & 0x3fff != 0 {
        return Err(verdict(XdpVerdict::PassNotUdp, xdp_action::XDP_PASS));
    }
    let l4 = l3 + ihl;
    let udp = read::<[u8; UDP_HLEN]>(ctx, l4).ok_or_else(malformed)?;
    let payload_len = udp_payload_len(&udp)?;
    let mut remote_addr = [0u8; 16];
    remote_addr[10] = 0xff;
    remote_addr[11] = 0xff;
    remote_addr[12..].copy_from_slice(&hdr[12..16]);
    Ok(Udp {
        l3,
        l4,
        v6: false,
        payload_len,
        flow: FlowKey { remote_addr, remote_port: u16::from_be_bytes([udp[0], udp[1]]), local_port: u16::from_be_bytes([udp[2], udp[3]]) },
    })
}

/// IPv6 fixed header (RFC 8200 §3): next header at 6, source at 8, destination at 24.
#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, l3: usize) -> Result<Udp, u32> {
    let hdr = read::<[u8; IPV6_HLEN]>(ctx, l3).ok_or_else(malformed)?;
    if hdr[0] >> 4 != 6 {
        return Err(malformed());
    }
    if hdr[6] != IPPROTO_UDP {
        return Err(verdict(XdpVerdict::PassNotUdp, xdp_action::XDP_PASS));
    }
    let mut remote_addr = [0u8; 16];
    remote_addr.copy_from_slice(&hdr[8..24]);
    let l4 = l3 + IPV6_HLEN;
    let udp = read::<[u8; UDP_HLEN]>(ctx, l4).ok_or_else(malformed)?;
    let payload_len = udp_payload_len(&udp)?;
    Ok(Udp {
        l3,
        l4,
        v6: true,
        payload_len,
        flow: FlowKey { remote_addr, remote_port: u16::from_be_bytes([udp[0], udp[1]]), local_port: u16::from_be_bytes([udp[2], udp[3]]) },
    })
}

/// The flood shield. RTP and RTCP share the port (RFC 5761); RTCP packet types 192..=223 sit in
/// the second byte where RTP has marker + payload type. RTP's SSRC is at 8 (RFC 3550 §5.1),
/// RTCP's sender SSRC at 4 (checked by source only).
#[inline(always)]
fn rtp_or_rtcp(ctx: &XdpContext, udp: &Udp, range: &PortRange, payload: usize, second: u8) -> Result<u32, u32> {
    let is_rtcp = (192..=223).contains(&second);
    if udp.payload_len < if is_rtcp { RTCP_MIN_LEN } else { RTP_MIN_LEN } {
        return Err(malformed());
    }
    if is_rtcp {
        ptr_at::<[u8; RTCP_MIN_LEN]>(ctx, payload).ok_or_else(malformed)?;
    } else {
        ptr_at::<[u8; RTP_MIN_LEN]>(ctx, payload).ok_or_else(malformed)?;
    }
    // The exact transport, else the port's wildcard entry (a leg whose remote is not latched yet).
    let leg = match SLUICE_LEGS.get_ptr(&udp.flow) {
        Some(leg) => leg,
        None => match SLUICE_LEGS.get_ptr(&FlowKey::any_remote(udp.flow.local_port)) {
            Some(leg) => leg,
            None => return Err(verdict(XdpVerdict::DropUnknownSource, xdp_action::XDP_DROP)),
        },
    };
    // SAFETY: valid for the program run (RCU); a racing update yields the old or new value.
    let leg = unsafe { leg.read() };
    if !is_rtcp {
        let ssrc = u32::from_be(read::<u32>(ctx, payload + 8).ok_or_else(malformed)?);
        // The SSRC itself, else the port's wildcard (a layer whose SSRC is learned from its RID).
        let entry = match SLUICE_SSRCS.get_ptr(&SsrcKey::one(udp.flow.local_port, ssrc)) {
            Some(v) => Some(v),
            None => SLUICE_SSRCS.get_ptr(&SsrcKey::any(udp.flow.local_port)),
        };
        let announced = match entry {
            // SAFETY: as above.
            Some(v) => unsafe { v.read() }.leg == leg.leg,
            None => false,
        };
        if !announced {
            return Err(verdict(XdpVerdict::DropUnknownSsrc, xdp_action::XDP_DROP));
        }
        if let Some(gate) = SLUICE_SILENCE.get_ptr_mut(&SsrcKey::one(udp.flow.local_port, ssrc)) {
            // SAFETY: as above; the run counter is racy across CPUs (see SilenceGate::run).
            let g = unsafe { gate.read() };
            if let Some((voice, level)) = audio_level(ctx, payload, g.ext) {
                if (voice || g.vad == 0) && level <= SPEECH_MAX_DBOV {
                    // SAFETY: as above.
                    unsafe { (*gate).run = 0 };
                } else if g.run + 1 < SILENT_KEEPALIVE {
                    // SAFETY: as above.
                    unsafe { (*gate).run = g.run + 1 };
                    return Err(verdict(XdpVerdict::DropSilentAudio, xdp_action::XDP_DROP));
                } else {
                    // SAFETY: as above.
                    unsafe { (*gate).run = 0 };
                }
            }
        }
    }
    Ok(steer_media(ctx, range, &leg))
}

/// The RFC 6464 level (voice flag, -dBov) in one-byte header extension `id` (RFC 8285) of the
/// RTP packet at `payload`; `None` without one (no extension, another profile, not found among
/// the first elements, or cut short: such a packet goes to the worker, which decides).
#[inline(always)]
fn audio_level(ctx: &XdpContext, payload: usize, id: u8) -> Option<(bool, u8)> {
    // Bytes are read in pairs: a one-byte bounds check compiles to `p >= end`, which the
    // verifier does not take as proof that `p` is inside the packet. An element always has a
    // data byte after its header, and SRTP a payload and tag after the extension.
    let [b0, _] = read::<[u8; 2]>(ctx, payload)?;
    if b0 & 0x10 == 0 {
        return None;
    }
    let ext = payload + 12 + 4 * usize::from(b0 & 0x0f);
    if u16::from_be(read::<u16>(ctx, ext)?) != 0xBEDE {
        return None;
    }
    let end = ext + 4 + 4 * usize::from(u16::from_be(read::<u16>(ctx, ext + 2)?));
    let mut at = ext + 4;
    for _ in 0..MAX_EXT_ELEMENTS {
        if at >= end {
            return None;
        }
        let [b, v] = read::<[u8; 2]>(ctx, at)?;
        if b == 0 {
            // Padding between elements.
            at += 1;
            continue;
        }
        let eid = b >> 4;
        if eid == 15 {
            return None;
        }
        if eid == id {
            return Some((v & 0x80 != 0, v & 0x7f));
        }
        at += 2 + usize::from(b & 0x0f);
    }
    None
}

/// Known media goes to its worker. Socket mode: XDP_PASS to the worker's UDP socket. AF_XDP mode
/// ([`CONFIG_AF_XDP`]): XDP_REDIRECT to the XSK bound on the queue the packet arrived on (the
/// kernel only accepts a redirect to the socket of the receiving queue, so the XSKMAP is keyed by
/// RX queue and `leg.worker` is not the key: queue-to-worker affinity is set up outside, by RSS
/// or one queue per worker), counted `redirect_xsk`; no socket on that queue → XDP_PASS,
/// counted `pass_media`.
#[inline(always)]
fn steer_media(ctx: &XdpContext, config: &PortRange, _leg: &LegValue) -> u32 {
    if config.flags & CONFIG_AF_XDP != 0 {
        let queue = ctx.rx_queue_index();
        if let Ok(action) = SLUICE_XSKS.redirect(queue, xdp_action::XDP_PASS as u64) {
            return verdict(XdpVerdict::RedirectXsk, action);
        }
    }
    verdict(XdpVerdict::PassMedia, xdp_action::XDP_PASS)
}

/// One's-complement accumulation of a 16-bit word change (RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m')).
#[inline(always)]
fn csum_replace(acc: u32, old: u16, new: u16) -> u32 {
    acc + (!old) as u32 + new as u32
}

#[inline(always)]
fn csum_fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Applies an accumulated change to a checksum field (words read in memory order; the
/// one's-complement sum is byte-order independent, RFC 1071 §2(B)).
#[inline(always)]
fn csum_apply(check: u16, delta: u32) -> u16 {
    !csum_fold((!check) as u32 + csum_fold(delta) as u32)
}

#[inline(always)]
fn is_v4_mapped(addr: &[u8; 16]) -> bool {
    let mut zero = 0u8;
    for b in &addr[..10] {
        zero |= *b;
    }
    zero == 0 && addr[10] == 0xff && addr[11] == 0xff
}

/// Rewrites one relayed datagram in place: Ethernet addresses, IP source and destination, UDP
/// ports, IPv4 header checksum and UDP checksum (both incrementally, RFC 1624), then sends it out.
#[inline(always)]
fn relay(ctx: &XdpContext, udp: &Udp, t: &RelayTarget) -> Result<u32, u32> {
    let invalid = || verdict(XdpVerdict::DropRelayInvalid, xdp_action::XDP_DROP);
    if is_v4_mapped(&t.src_addr) == udp.v6 || is_v4_mapped(&t.dst_addr) == udp.v6 {
        return Err(invalid());
    }

    let eth = ptr_at::<[u8; 12]>(ctx, 0).ok_or_else(malformed)?;
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&t.dst_mac);
    macs[6..].copy_from_slice(&t.src_mac);
    // SAFETY: `ptr_at` bounds-checked the 12 bytes; XDP frames are writable.
    unsafe { eth.write_unaligned(macs) };

    let mut pseudo = 0u32; // change to the UDP pseudo-header (addresses)
    if udp.v6 {
        let addrs = ptr_at::<[u16; 16]>(ctx, udp.l3 + 8).ok_or_else(malformed)?;
        // SAFETY: bounds-checked above.
        let old = unsafe { addrs.read_unaligned() };
        let mut new = [0u16; 16];
        for i in 0..8 {
            new[i] = u16::from_ne_bytes([t.src_addr[2 * i], t.src_addr[2 * i + 1]]);
            new[8 + i] = u16::from_ne_bytes([t.dst_addr[2 * i], t.dst_addr[2 * i + 1]]);
        }
        for i in 0..16 {
            pseudo = csum_replace(pseudo, old[i], new[i]);
        }
        // SAFETY: bounds-checked above.
        unsafe { addrs.write_unaligned(new) };
    } else {
        let addrs = ptr_at::<[u16; 4]>(ctx, udp.l3 + 12).ok_or_else(malformed)?;
        // SAFETY: bounds-checked above.
        let old = unsafe { addrs.read_unaligned() };
        let new = [
            u16::from_ne_bytes([t.src_addr[12], t.src_addr[13]]),
            u16::from_ne_bytes([t.src_addr[14], t.src_addr[15]]),
            u16::from_ne_bytes([t.dst_addr[12], t.dst_addr[13]]),
            u16::from_ne_bytes([t.dst_addr[14], t.dst_addr[15]]),
        ];
        for i in 0..4 {
            pseudo = csum_replace(pseudo, old[i], new[i]);
        }
        let check = ptr_at::<u16>(ctx, udp.l3 + 10).ok_or_else(malformed)?;
        // SAFETY: bounds-checked above (both the addresses and the checksum field).
        unsafe {
            addrs.write_unaligned(new);
            check.write_unaligned(csum_apply(check.read_unaligned(), pseudo));
        }
    }

    // UDP header: ports then checksum. IPv4 checksum 0 means "none" (RFC 768) and stays 0;
    // a computed 0 is sent as 0xffff.
    let hdr = ptr_at::<[u16; 4]>(ctx, udp.l4).ok_or_else(malformed)?;
    // SAFETY: bounds-checked above.
    let mut h = unsafe { hdr.read_unaligned() };
    let ports = [t.src_port.to_be(), t.dst_port.to_be()];
    let mut delta = pseudo;
    delta = csum_replace(delta, h[0], ports[0]);
    delta = csum_replace(delta, h[1], ports[1]);
    h[0] = ports[0];
    h[1] = ports[1];
    if udp.v6 || h[3] != 0 {
        let c = csum_apply(h[3], delta);
        h[3] = if c == 0 { 0xffff } else { c };
    }
    // SAFETY: bounds-checked above.
    unsafe { hdr.write_unaligned(h) };

    if t.ifindex == RELAY_SAME_INTERFACE {
        return Ok(verdict(XdpVerdict::RelayTx, xdp_action::XDP_TX));
    }
    match SLUICE_TX_PORTS.redirect(t.ifindex, 0) {
        Ok(action) => Ok(verdict(XdpVerdict::RelayRedirect, action)),
        Err(_) => Err(invalid()),
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
