//! Socket plumbing shared by the backends: binding, socket addresses as bytes, the `UDP_SEGMENT`
//! control message. Addresses are encoded and decoded byte by byte, so none of this needs `unsafe`
//! except the one `setsockopt`.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;

use super::IoError;

/// `SOL_UDP` (linux/udp.h); not exported by `libc` for every target.
pub(crate) const SOL_UDP: libc::c_int = 17;
/// `UDP_SEGMENT` (linux/udp.h, since 4.18): the GSO segment size of one send.
pub(crate) const UDP_SEGMENT: libc::c_int = 103;
/// `UDP_GRO` (linux/udp.h, since 5.0): as a socket option, let the kernel hand this socket
/// coalesced runs of one flow's datagrams (GRO); as a control message, the segment size of one.
pub(crate) const UDP_GRO: libc::c_int = 104;

/// A socket of one leg port, as published to every worker.
#[derive(Debug)]
pub struct LegSocket {
    pub(crate) socket: UdpSocket,
    pub(crate) ipv6: bool,
    pub(crate) port: u16,
}

impl LegSocket {
    /// The local port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The socket.
    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }
}

impl AsRawFd for LegSocket {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.socket.as_raw_fd()
    }
}

/// Binds a nonblocking UDP socket on `ip:port` (0: any free port).
pub(crate) fn bind_udp(ip: IpAddr, port: u16, buffer_bytes: Option<usize>) -> Result<LegSocket, IoError> {
    let addr = SocketAddr::new(ip, port);
    let socket = UdpSocket::bind(addr).map_err(|source| IoError::Bind { addr, source })?;
    socket.set_nonblocking(true).map_err(|source| IoError::Os { op: "O_NONBLOCK on a leg socket", source })?;
    if let Some(bytes) = buffer_bytes {
        let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        for (opt, op) in [(libc::SO_RCVBUF, "SO_RCVBUF"), (libc::SO_SNDBUF, "SO_SNDBUF")] {
            setsockopt_int(&socket, libc::SOL_SOCKET, opt, bytes).map_err(|source| IoError::Os { op, source })?;
        }
    }
    let port = socket.local_addr().map_err(|source| IoError::Os { op: "getsockname", source })?.port();
    Ok(LegSocket { socket, ipv6: ip.is_ipv6(), port })
}

/// Asks the kernel for coalesced receives (`UDP_GRO`) on `socket`.
pub(crate) fn enable_gro(socket: &UdpSocket) -> io::Result<()> {
    setsockopt_int(socket, SOL_UDP, UDP_GRO, 1)
}

fn setsockopt_int(socket: &UdpSocket, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    let len = libc::socklen_t::try_from(size_of::<libc::c_int>()).unwrap_or(4);
    // SAFETY: `value` lives across the call and `len` is its size; the fd is open (borrowed).
    let rc = unsafe { libc::setsockopt(socket.as_raw_fd(), level, name, (&raw const value).cast(), len) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Room for a `sockaddr_in` or `sockaddr_in6`, the `msg_name` of one message.
///
/// ```text
///  sockaddr_in:  family(2, native) port(2, BE) addr(4) zero(8)
///  sockaddr_in6: family(2, native) port(2, BE) flowinfo(4, BE) addr(16) scope_id(4, native)
/// ```
#[derive(Clone, Copy, Debug)]
#[repr(C, align(4))]
pub(crate) struct RawAddr(pub(crate) [u8; RAW_ADDR_LEN]);

/// `sizeof(struct sockaddr_in6)`.
pub(crate) const RAW_ADDR_LEN: usize = 28;
const _: () = assert!(size_of::<libc::sockaddr_in6>() == RAW_ADDR_LEN);
const _: () = assert!(size_of::<libc::sockaddr_in>() == 16);

impl Default for RawAddr {
    fn default() -> Self {
        Self([0; RAW_ADDR_LEN])
    }
}

impl RawAddr {
    /// Encodes `addr` for a socket of the given family (an IPv4 destination on an IPv6 socket
    /// becomes v4-mapped); returns the `msg_namelen`, or `None` if the family can't reach it.
    pub(crate) fn encode(&mut self, addr: SocketAddr, ipv6_socket: bool) -> Option<libc::socklen_t> {
        let b = &mut self.0;
        match (addr, ipv6_socket) {
            (SocketAddr::V4(a), false) => {
                b[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
                b[2..4].copy_from_slice(&a.port().to_be_bytes());
                b[4..8].copy_from_slice(&a.ip().octets());
                b[8..16].fill(0);
                Some(16)
            }
            (SocketAddr::V4(a), true) => {
                Self::encode_v6(b, a.ip().to_ipv6_mapped(), a.port(), 0, 0);
                Some(RAW_ADDR_LEN as libc::socklen_t)
            }
            (SocketAddr::V6(a), true) => {
                Self::encode_v6(b, *a.ip(), a.port(), a.flowinfo(), a.scope_id());
                Some(RAW_ADDR_LEN as libc::socklen_t)
            }
            (SocketAddr::V6(a), false) => {
                let v4 = a.ip().to_ipv4_mapped()?;
                Self::encode(self, SocketAddr::V4(SocketAddrV4::new(v4, a.port())), false)
            }
        }
    }

    fn encode_v6(b: &mut [u8; RAW_ADDR_LEN], ip: Ipv6Addr, port: u16, flowinfo: u32, scope_id: u32) {
        b[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        b[2..4].copy_from_slice(&port.to_be_bytes());
        b[4..8].copy_from_slice(&flowinfo.to_be_bytes());
        b[8..24].copy_from_slice(&ip.octets());
        b[24..28].copy_from_slice(&scope_id.to_ne_bytes());
    }
}

/// Decodes a socket address written by the kernel (`len` bytes valid); v4-mapped IPv6 sources
/// come back as IPv4 so a leg learned over IPv4 matches whichever socket family received it.
pub(crate) fn decode_addr(b: &[u8], len: usize) -> Option<SocketAddr> {
    let b = b.get(..len)?;
    let family = u16::from_ne_bytes(b.get(..2)?.try_into().ok()?);
    let port = u16::from_be_bytes(b.get(2..4)?.try_into().ok()?);
    if i32::from(family) == libc::AF_INET {
        let ip: [u8; 4] = b.get(4..8)?.try_into().ok()?;
        Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
    } else if i32::from(family) == libc::AF_INET6 {
        let flowinfo = u32::from_be_bytes(b.get(4..8)?.try_into().ok()?);
        let ip: [u8; 16] = b.get(8..24)?.try_into().ok()?;
        let scope_id = u32::from_ne_bytes(b.get(24..28)?.try_into().ok()?);
        let ip = Ipv6Addr::from(ip);
        Some(match ip.to_ipv4_mapped() {
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, port)),
            None => SocketAddr::V6(SocketAddrV6::new(ip, port, flowinfo, scope_id)),
        })
    } else {
        None
    }
}

/// One `cmsghdr` carrying `UDP_SEGMENT` (a `u16`), laid out as `CMSG_SPACE(sizeof(u16))`.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub(crate) struct GsoCmsg {
    len: usize,
    level: libc::c_int,
    kind: libc::c_int,
    data: [u8; size_of::<usize>()],
}

// The header above must be glibc's `struct cmsghdr` (size_t, int, int; data right after it).
const _: () = assert!(size_of::<libc::cmsghdr>() == size_of::<usize>() + 2 * size_of::<libc::c_int>());
const _: () = assert!(size_of::<GsoCmsg>() == size_of::<libc::cmsghdr>() + size_of::<usize>());

impl Default for GsoCmsg {
    fn default() -> Self {
        Self { len: size_of::<libc::cmsghdr>() + 2, level: SOL_UDP, kind: UDP_SEGMENT, data: [0; size_of::<usize>()] }
    }
}

impl GsoCmsg {
    /// Sets the segment size.
    pub(crate) fn set_segment(&mut self, segment: u16) {
        *self = Self::default();
        self.data[..2].copy_from_slice(&segment.to_ne_bytes());
    }

    /// `msg_controllen` for this buffer.
    pub(crate) const SPACE: usize = size_of::<GsoCmsg>();
}

/// Whether a send error means "this kernel/device refuses GSO" (rather than a per-packet failure).
pub(crate) fn is_gso_refusal(errno: i32) -> bool {
    errno == libc::EIO || errno == libc::EINVAL
}

/// An all-zero `msghdr`.
pub(crate) fn empty_msghdr() -> libc::msghdr {
    libc::msghdr {
        msg_name: std::ptr::null_mut(),
        msg_namelen: 0,
        msg_iov: std::ptr::null_mut(),
        msg_iovlen: 0,
        msg_control: std::ptr::null_mut(),
        msg_controllen: 0,
        msg_flags: 0,
    }
}

/// An empty `iovec`.
pub(crate) fn empty_iovec() -> libc::iovec {
    libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }
}

/// An `iovec` over a payload the kernel will only read (send path).
pub(crate) fn iovec_for(payload: &[u8]) -> libc::iovec {
    libc::iovec { iov_base: payload.as_ptr().cast_mut().cast(), iov_len: payload.len() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip() {
        let mut raw = RawAddr::default();
        let v4: SocketAddr = "127.0.0.1:5004".parse().unwrap();
        let n = raw.encode(v4, false).unwrap();
        assert_eq!(decode_addr(&raw.0, n as usize), Some(v4));
        let n = raw.encode(v4, true).unwrap();
        assert_eq!(n as usize, RAW_ADDR_LEN);
        assert_eq!(decode_addr(&raw.0, n as usize), Some(v4), "v4-mapped comes back as v4");
        let v6: SocketAddr = "[2001:db8::1]:6000".parse().unwrap();
        let n = raw.encode(v6, true).unwrap();
        assert_eq!(decode_addr(&raw.0, n as usize), Some(v6));
        assert_eq!(raw.encode(v6, false), None, "a v4 socket cannot reach a v6 destination");
        assert_eq!(decode_addr(&[0; 4], 4), None);
    }

    #[test]
    fn gso_cmsg_layout() {
        let mut c = GsoCmsg::default();
        c.set_segment(1200);
        // SAFETY: CMSG_LEN/CMSG_SPACE are pure arithmetic.
        let (len, space) = unsafe { (libc::CMSG_LEN(2) as usize, libc::CMSG_SPACE(2) as usize) };
        assert_eq!(c.len, len);
        assert_eq!(GsoCmsg::SPACE, space);
        assert_eq!(&c.data[..2], &1200u16.to_ne_bytes());
    }
}

/// Room for the one control message a receive on a `UDP_GRO` socket carries: `UDP_GRO` with the
/// segment size (an `int`) of a coalesced run, laid out as `CMSG_SPACE(sizeof(int))`.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub(crate) struct GroCmsg {
    len: usize,
    level: libc::c_int,
    kind: libc::c_int,
    data: [u8; 8],
}

const _: () = assert!(size_of::<GroCmsg>() == size_of::<libc::cmsghdr>() + 8);

impl GroCmsg {
    /// `msg_controllen` for this buffer.
    pub(crate) const SPACE: usize = size_of::<GroCmsg>();

    /// The same, read from the bytes of a control buffer the kernel wrote (`control`: exactly its
    /// `controllen` bytes; io_uring's recvmsg puts them in the provided buffer).
    pub(crate) fn from_bytes(control: &[u8]) -> Option<usize> {
        const W: usize = size_of::<usize>();
        const I: usize = size_of::<libc::c_int>();
        let b = control.get(..W + 3 * I)?;
        let int = |at: usize| libc::c_int::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let len = usize::from_ne_bytes(b[..W].try_into().ok()?);
        let c = Self {
            len,
            level: int(W),
            kind: int(W + I),
            data: {
                let mut d = [0; 8];
                d[..I].copy_from_slice(&b[W + 2 * I..W + 3 * I]);
                d
            },
        };
        c.segment(control.len())
    }

    /// The segment size of the datagrams the kernel coalesced into one message, if it did
    /// (`controllen`: the `msg_controllen` the kernel returned). A message without it, or with a
    /// zero size, is one datagram.
    pub(crate) fn segment(&self, controllen: usize) -> Option<usize> {
        let need = size_of::<libc::cmsghdr>() + size_of::<libc::c_int>();
        if controllen < need || self.len < need || self.level != SOL_UDP || self.kind != UDP_GRO {
            return None;
        }
        let seg = libc::c_int::from_ne_bytes([self.data[0], self.data[1], self.data[2], self.data[3]]);
        usize::try_from(seg).ok().filter(|&s| s > 0)
    }
}
