//! Participants with addresses of their own on one lane socket: the socket is bound to the
//! wildcard address, so it receives what the SFU sends to any 127.x.y.z at its port, and a
//! participant's datagrams leave from its own address through `IP_PKTINFO` (ip(7)): one socket
//! per lane however many addresses, and the SFU sees each viewer as a distinct remote.
//!
//! ```text
//!   sendmsg(fd, msg_name = dst, cmsg = { SOL_IP, IP_PKTINFO, in_pktinfo { ifindex 0,
//!                                        spec_dst = the participant's address, addr 0 } })
//! ```
//!
//! Only the viewers' own traffic goes this way (their PLIs, a promoted viewer's audio); their
//! leg remotes are programmed explicitly, so the SFU drops anything of theirs from another
//! address (`unknown_source`), which the bench reports.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd as _;

/// Sends `payload` to `dst` from `src` (a local address: any 127.x.y.z on loopback) through
/// `socket`, which must be an IPv4 socket bound to `0.0.0.0`.
pub fn send_from(socket: &UdpSocket, src: Ipv4Addr, dst: SocketAddr, payload: &[u8]) -> io::Result<usize> {
    let SocketAddr::V4(dst) = dst else { return Err(io::Error::new(io::ErrorKind::InvalidInput, "IPv4 destinations only")) };
    // SAFETY: all-zero bytes are a valid sockaddr_in and in_pktinfo (plain integers).
    let mut name: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    name.sin_family = libc::AF_INET as libc::sa_family_t;
    name.sin_port = dst.port().to_be();
    name.sin_addr = libc::in_addr { s_addr: u32::from_ne_bytes(dst.ip().octets()) };
    // SAFETY: as above.
    let mut info: libc::in_pktinfo = unsafe { std::mem::zeroed() };
    info.ipi_spec_dst = libc::in_addr { s_addr: u32::from_ne_bytes(src.octets()) };
    // Control buffer: one cmsghdr with an in_pktinfo, aligned as cmsghdr needs (u64 words).
    let mut control = [0u64; 8];
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) } as usize;
    debug_assert!(space <= size_of_val(&control));
    let mut iov = libc::iovec { iov_base: payload.as_ptr().cast_mut().cast(), iov_len: payload.len() };
    // SAFETY: all-zero bytes are a valid msghdr (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&raw mut name).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg_control points at `space` writable bytes (checked above), so CMSG_FIRSTHDR
    // returns a header inside it, and CMSG_DATA of that header has room for one in_pktinfo
    // (CMSG_SPACE of its size); the write is unaligned-safe.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&raw const msg);
        (*c).cmsg_level = libc::IPPROTO_IP;
        (*c).cmsg_type = libc::IP_PKTINFO;
        (*c).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::in_pktinfo>(), info);
    }
    // SAFETY: every pointer in `msg` names a live local (name, iov → payload, control) for the
    // duration of the call; the fd is open (borrowed from `socket`).
    let n = unsafe { libc::sendmsg(socket.as_raw_fd(), &raw const msg, 0) };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_leaves_from_the_address_asked_for() {
        let wildcard = UdpSocket::bind("0.0.0.0:0").expect("bind");
        let to = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let src = Ipv4Addr::new(127, 1, 2, 3);
        let n = send_from(&wildcard, src, to.local_addr().expect("addr"), b"hello").expect("sendmsg");
        assert_eq!(n, 5);
        let mut buf = [0u8; 16];
        let (n, from) = to.recv_from(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(from, SocketAddr::from((src, wildcard.local_addr().expect("addr").port())));
    }
}
