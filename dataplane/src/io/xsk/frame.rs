//! Ethernet/IPv4/IPv6/UDP frames: parsing what the XDP program redirects, writing headers and
//! checksums (or the TX-metadata checksum request) for what the worker sends.

use super::*;

/// One's-complement sum of `data` (RFC 1071), added to `acc`, not folded.
pub(super) fn csum_add(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

/// Fills `md` (`TX_META_LEN` bytes in front of the packet, native endian like the kernel's
/// `struct xsk_tx_metadata`) with a checksum request: `XDP_TXMD_FLAGS_CHECKSUM`, summing from
/// `csum_start` (the UDP header's offset in the frame) and storing at `csum_start + 6`.
pub(super) fn write_tx_csum_request(md: &mut [u8], csum_start: usize) {
    md.fill(0);
    md[0..8].copy_from_slice(&u64::from(libc::XDP_TXMD_FLAGS_CHECKSUM).to_ne_bytes());
    md[8..10].copy_from_slice(&(csum_start as u16).to_ne_bytes());
    md[10..12].copy_from_slice(&6u16.to_ne_bytes());
}

pub(super) fn csum_fold(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// How `write_v4_headers`/`write_v6_headers` fill the UDP checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum UdpCsum {
    /// Computed here over pseudo-header, header and payload.
    Full,
    /// Only the pseudo-header sum (folded, not complemented), for the device or the kernel to
    /// finish (`CHECKSUM_PARTIAL`: sum from the UDP header on, complement, store; the TX metadata
    /// request of [`XskSocket::tx_csum_offload`]).
    Partial,
}

/// Writes Ethernet + IPv4 + UDP headers for `payload` (already copied to `frame[TX_HEADERS_V4..]`)
/// into `frame[..TX_HEADERS_V4]`, the IPv4 header checksum computed and the UDP one as `csum`
/// says. Returns the frame length.
#[expect(clippy::too_many_arguments, reason = "a frame's whole header description")]
pub(super) fn write_v4_headers(
    frame: &mut [u8],
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: SocketAddrV4,
    dst: SocketAddrV4,
    ip_id: u16,
    payload_len: usize,
    csum: UdpCsum,
) -> usize {
    let udp_len = (UDP_HLEN + payload_len) as u16;
    let total = IPV4_HLEN as u16 + udp_len;
    frame[0..6].copy_from_slice(&dst_mac);
    frame[6..12].copy_from_slice(&src_mac);
    frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut frame[ETH_HLEN..ETH_HLEN + IPV4_HLEN];
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[4..6].copy_from_slice(&ip_id.to_be_bytes());
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF
    ip[8] = 64;
    ip[9] = 17;
    ip[10..12].fill(0);
    ip[12..16].copy_from_slice(&src.ip().octets());
    ip[16..20].copy_from_slice(&dst.ip().octets());
    let check = csum_fold(csum_add(0, ip));
    ip[10..12].copy_from_slice(&check.to_be_bytes());
    write_udp(frame, ETH_HLEN + IPV4_HLEN, (&src.ip().octets(), src.port()), (&dst.ip().octets(), dst.port()), udp_len, csum);
    ETH_HLEN + usize::from(total)
}

/// Writes the UDP header at `frame[l4..]` (payload already after it) with its checksum over the
/// pseudo-header (RFC 768 for IPv4, RFC 8200 §8.1 for IPv6: both sum the addresses, the protocol
/// and the UDP length). With [`UdpCsum::Partial`] the field holds the pseudo-header sum only.
/// Returns the end of the datagram.
pub(super) fn write_udp(frame: &mut [u8], l4: usize, (src_ip, sport): (&[u8], u16), (dst_ip, dport): (&[u8], u16), udp_len: u16, csum: UdpCsum) -> usize {
    let udp = &mut frame[l4..l4 + UDP_HLEN];
    udp[0..2].copy_from_slice(&sport.to_be_bytes());
    udp[2..4].copy_from_slice(&dport.to_be_bytes());
    udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
    udp[6..8].fill(0);
    let mut acc = csum_add(0, src_ip);
    acc = csum_add(acc, dst_ip);
    acc += 17 + u32::from(udp_len);
    let check = match csum {
        UdpCsum::Partial => !csum_fold(acc),
        UdpCsum::Full => match csum_fold(csum_add(acc, &frame[l4..l4 + usize::from(udp_len)])) {
            0 => 0xffff,
            c => c,
        },
    };
    frame[l4 + 6..l4 + 8].copy_from_slice(&check.to_be_bytes());
    l4 + usize::from(udp_len)
}

/// Writes Ethernet + IPv6 + UDP headers for `payload` (already copied to `frame[TX_HEADERS_V6..]`)
/// into `frame[..TX_HEADERS_V6]`, the UDP checksum (mandatory in IPv6) as `csum` says. Returns the frame
/// length.
pub(super) fn write_v6_headers(
    frame: &mut [u8],
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: SocketAddrV6,
    dst: SocketAddrV6,
    payload_len: usize,
    csum: UdpCsum,
) -> usize {
    let udp_len = (UDP_HLEN + payload_len) as u16;
    frame[0..6].copy_from_slice(&dst_mac);
    frame[6..12].copy_from_slice(&src_mac);
    frame[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    let ip = &mut frame[ETH_HLEN..ETH_HLEN + IPV6_HLEN];
    ip[0..4].copy_from_slice(&[0x60, 0, 0, 0]);
    ip[4..6].copy_from_slice(&udp_len.to_be_bytes());
    ip[6] = 17;
    ip[7] = 64;
    ip[8..24].copy_from_slice(&src.ip().octets());
    ip[24..40].copy_from_slice(&dst.ip().octets());
    write_udp(frame, ETH_HLEN + IPV6_HLEN, (&src.ip().octets(), src.port()), (&dst.ip().octets(), dst.port()), udp_len, csum)
}

/// What receive parsing found in a frame.
pub(super) struct Parsed {
    pub(super) port: u16,
    pub(super) src: SocketAddr,
    pub(super) src_mac: [u8; 6],
    pub(super) payload: std::ops::Range<usize>,
}

/// Ethernet [VLAN] → IPv4 (not a fragment) | IPv6 (UDP next header) → UDP. `None`: not one.
pub(super) fn parse_frame(f: &[u8]) -> Option<Parsed> {
    let mut ethertype = u16::from_be_bytes([*f.get(12)?, *f.get(13)?]);
    let mut l3 = ETH_HLEN;
    if ethertype == 0x8100 || ethertype == 0x88a8 {
        ethertype = u16::from_be_bytes([*f.get(16)?, *f.get(17)?]);
        l3 += 4;
    }
    let mut src_mac = [0u8; 6];
    src_mac.copy_from_slice(&f[6..12]);
    let (src_ip, l4) = match ethertype {
        0x0800 => {
            let ip = f.get(l3..l3 + IPV4_HLEN)?;
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            if ip[0] >> 4 != 4 || ihl < IPV4_HLEN || ip[9] != 17 || u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
                return None;
            }
            (IpAddr::V4(Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15])), l3 + ihl)
        }
        0x86dd => {
            let ip = f.get(l3..l3 + IPV6_HLEN)?;
            if ip[0] >> 4 != 6 || ip[6] != 17 {
                return None;
            }
            let mut a = [0u8; 16];
            a.copy_from_slice(&ip[8..24]);
            (IpAddr::V6(Ipv6Addr::from(a)), l3 + IPV6_HLEN)
        }
        _ => return None,
    };
    let udp = f.get(l4..l4 + UDP_HLEN)?;
    let sport = u16::from_be_bytes([udp[0], udp[1]]);
    let dport = u16::from_be_bytes([udp[2], udp[3]]);
    let len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if len < UDP_HLEN || l4 + len > f.len() {
        return None;
    }
    let src = match src_ip {
        IpAddr::V4(a) => SocketAddr::V4(SocketAddrV4::new(a, sport)),
        IpAddr::V6(a) => SocketAddr::V6(SocketAddrV6::new(a, sport, 0, 0)),
    };
    Some(Parsed { port: dport, src, src_mac, payload: l4 + UDP_HLEN..l4 + len })
}
