//! Frame builder for the XDP tests, written independently of the program: full RFC 1071
//! checksums computed from scratch (never incrementally), so a relay rewrite is checked against
//! an independent computation.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::net::{Ipv4Addr, Ipv6Addr};

/// RFC 1071 one's-complement sum, folded and complemented.
pub fn checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    for chunk in chunks {
        for pair in chunk.chunks(2) {
            let word = if pair.len() == 2 { u16::from_be_bytes([pair[0], pair[1]]) } else { u16::from(pair[0]) << 8 };
            sum += u32::from(word);
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The IP layer of a [`Frame`].
#[derive(Clone, Debug)]
pub enum Ip {
    /// IPv4 with optional options (a multiple of 4 bytes) and fragment field.
    V4 { src: Ipv4Addr, dst: Ipv4Addr, options: Vec<u8>, frag: u16, proto: u8 },
    /// IPv6 with the given next header.
    V6 { src: Ipv6Addr, dst: Ipv6Addr, next: u8 },
}

/// An Ethernet/[VLAN]/IP/UDP frame.
#[derive(Clone, Debug)]
pub struct Frame {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub vlan: Option<u16>,
    pub ip: Ip,
    pub sport: u16,
    pub dport: u16,
    pub payload: Vec<u8>,
    /// IPv4 only: send UDP checksum 0 ("none").
    pub no_udp_checksum: bool,
}

pub const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
pub const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

impl Frame {
    pub fn v4(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload: Vec<u8>) -> Self {
        Self {
            dst_mac: MAC_B,
            src_mac: MAC_A,
            vlan: None,
            ip: Ip::V4 { src: src.0, dst: dst.0, options: Vec::new(), frag: 0, proto: 17 },
            sport: src.1,
            dport: dst.1,
            payload,
            no_udp_checksum: false,
        }
    }

    pub fn v6(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16), payload: Vec<u8>) -> Self {
        Self {
            dst_mac: MAC_B,
            src_mac: MAC_A,
            vlan: None,
            ip: Ip::V6 { src: src.0, dst: dst.0, next: 17 },
            sport: src.1,
            dport: dst.1,
            payload,
            no_udp_checksum: false,
        }
    }

    pub fn vlan(mut self, id: u16) -> Self {
        self.vlan = Some(id);
        self
    }

    pub fn udp(&self) -> Vec<u8> {
        let len = (8 + self.payload.len()) as u16;
        let mut udp = Vec::with_capacity(len as usize);
        udp.extend_from_slice(&self.sport.to_be_bytes());
        udp.extend_from_slice(&self.dport.to_be_bytes());
        udp.extend_from_slice(&len.to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.extend_from_slice(&self.payload);
        let csum = match &self.ip {
            Ip::V4 { .. } if self.no_udp_checksum => 0,
            Ip::V4 { src, dst, .. } => {
                let pseudo = [&src.octets()[..], &dst.octets()[..], &[0, 17], &len.to_be_bytes()[..]].concat();
                checksum(&[&pseudo, &udp])
            }
            Ip::V6 { src, dst, .. } => {
                let pseudo = [&src.octets()[..], &dst.octets()[..], &u32::from(len).to_be_bytes()[..], &[0, 0, 0, 17]].concat();
                checksum(&[&pseudo, &udp])
            }
        };
        let csum = if csum == 0 && !self.no_udp_checksum { 0xffff } else { csum };
        udp[6..8].copy_from_slice(&csum.to_be_bytes());
        udp
    }

    pub fn build(&self) -> Vec<u8> {
        let udp = self.udp();
        let mut f = Vec::new();
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        let ethertype: u16 = match self.ip {
            Ip::V4 { .. } => 0x0800,
            Ip::V6 { .. } => 0x86dd,
        };
        if let Some(id) = self.vlan {
            f.extend_from_slice(&0x8100u16.to_be_bytes());
            f.extend_from_slice(&id.to_be_bytes());
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        match &self.ip {
            Ip::V4 { src, dst, options, frag, proto } => {
                assert_eq!(options.len() % 4, 0);
                let hlen = 20 + options.len();
                let mut h = vec![0u8; hlen];
                h[0] = 0x40 | (hlen / 4) as u8;
                h[2..4].copy_from_slice(&((hlen + udp.len()) as u16).to_be_bytes());
                h[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
                h[6..8].copy_from_slice(&frag.to_be_bytes());
                h[8] = 64;
                h[9] = *proto;
                h[12..16].copy_from_slice(&src.octets());
                h[16..20].copy_from_slice(&dst.octets());
                h[20..].copy_from_slice(options);
                let c = checksum(&[&h]);
                h[10..12].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&h);
            }
            Ip::V6 { src, dst, next } => {
                let mut h = vec![0u8; 40];
                h[0] = 0x60;
                h[4..6].copy_from_slice(&(udp.len() as u16).to_be_bytes());
                h[6] = *next;
                h[7] = 64;
                h[8..24].copy_from_slice(&src.octets());
                h[24..40].copy_from_slice(&dst.octets());
                f.extend_from_slice(&h);
            }
        }
        f.extend_from_slice(&udp);
        f
    }
}

/// Independently verifies the IPv4 header checksum and the UDP checksum of an untagged or tagged
/// IPv4/IPv6 UDP frame: true when both sum to zero (or UDP checksum is 0 over IPv4).
pub fn checksums_ok(frame: &[u8]) -> bool {
    let mut l3 = 14;
    let mut ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    if ethertype == 0x8100 {
        ethertype = u16::from_be_bytes([frame[16], frame[17]]);
        l3 = 18;
    }
    match ethertype {
        0x0800 => {
            let ihl = usize::from(frame[l3] & 0x0f) * 4;
            let ip = &frame[l3..l3 + ihl];
            if checksum(&[ip]) != 0 {
                return false;
            }
            let udp = &frame[l3 + ihl..];
            if udp[6..8] == [0, 0] {
                return true;
            }
            let pseudo = [&ip[12..20], &[0, 17], &(udp.len() as u16).to_be_bytes()[..]].concat();
            checksum(&[&pseudo, udp]) == 0
        }
        0x86dd => {
            let ip = &frame[l3..l3 + 40];
            let udp = &frame[l3 + 40..];
            let pseudo = [&ip[8..40], &(udp.len() as u32).to_be_bytes()[..], &[0, 0, 0, 17]].concat();
            checksum(&[&pseudo, udp]) == 0
        }
        _ => false,
    }
}

/// A minimal RTP packet (RFC 3550 §5.1): V=2, PT 96, the given SSRC, 20 bytes of payload.
pub fn rtp(ssrc: u32, seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 96];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&0x0102_0304u32.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&[0xab; 20]);
    p
}

/// A minimal RTCP receiver report header (PT 201) from `ssrc`.
pub fn rtcp(ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x80, 201, 0, 1];
    p.extend_from_slice(&ssrc.to_be_bytes());
    p
}

/// A STUN binding request header (RFC 8489): type 0x0001, length 0, magic cookie, txid.
pub fn stun() -> Vec<u8> {
    let mut p = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    p.extend_from_slice(&[7; 12]);
    p
}

/// A DTLS 1.2 record header start (content type 22, handshake).
pub fn dtls() -> Vec<u8> {
    let mut p = vec![22, 0xfe, 0xfd, 0, 0];
    p.extend_from_slice(&[0; 16]);
    p
}
