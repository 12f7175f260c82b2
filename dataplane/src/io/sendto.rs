//! Datagrams from one socket to many destinations, built in place in a scratch buffer the caller
//! keeps and sent with `sendmmsg`: for a worker that sends on a socket that is not a leg's (the
//! TURN server's UDP port, see `crate::turn`), outside the backends' per-port planning.
//!
//! ```text
//!   slot() ──▶ caller writes one datagram into the slot ──▶ commit(dst, len)
//!   ... up to `slots` datagrams ... ──▶ send(socket): one sendmmsg per run of messages
//! ```
//!
//! A full scratch must be sent before the next `slot()`; nothing here allocates after `new`.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use super::sys::{self, RawAddr};

/// The scratch: `slots` datagrams of at most `slot_len` bytes each.
#[derive(Debug)]
pub struct SendToBatch {
    data: Box<[u8]>,
    slot_len: usize,
    /// Destination and length of each committed datagram.
    pending: Vec<(SocketAddr, usize)>,
    names: Vec<RawAddr>,
    iovs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers in `iovs` and `msgs` point into this struct's own heap buffers only
// during one `send` call on the thread that owns it; nothing dereferences them afterwards.
unsafe impl Send for SendToBatch {}

/// What one [`SendToBatch::send`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendToResult {
    /// Datagrams the kernel accepted.
    pub sent: u64,
    /// Datagrams it refused (socket buffer full, unreachable, a destination of the wrong family).
    pub errors: u64,
    /// `sendmmsg` calls made.
    pub syscalls: u64,
}

impl SendToBatch {
    /// Room for `slots` datagrams of up to `slot_len` bytes.
    pub fn new(slots: usize, slot_len: usize) -> Self {
        let slots = slots.max(1);
        Self {
            data: vec![0; slots * slot_len].into_boxed_slice(),
            slot_len,
            pending: Vec::with_capacity(slots),
            names: vec![RawAddr::default(); slots],
            iovs: vec![sys::empty_iovec(); slots],
            msgs: (0..slots).map(|_| libc::mmsghdr { msg_hdr: sys::empty_msghdr(), msg_len: 0 }).collect(),
        }
    }

    /// The next free slot (`slot_len` bytes), or `None` when the scratch is full ([`Self::send`]
    /// it first).
    pub fn slot(&mut self) -> Option<&mut [u8]> {
        let at = self.pending.len() * self.slot_len;
        self.data.get_mut(at..at + self.slot_len)
    }

    /// The slot [`Self::slot`] returned holds a datagram of `len` bytes for `dst`.
    pub fn commit(&mut self, dst: SocketAddr, len: usize) {
        if self.pending.len() < self.names.len() {
            self.pending.push((dst, len.min(self.slot_len)));
        }
    }

    /// Datagrams committed and not yet sent.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing is waiting to be sent.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Sends every committed datagram from `socket` (its family: `ipv6`) and empties the scratch.
    /// Failures are counted in the result, never returned; a full socket buffer drops the rest,
    /// as a congested link would.
    pub fn send(&mut self, socket: &UdpSocket, ipv6: bool) -> SendToResult {
        let mut r = SendToResult::default();
        let mut m = 0;
        for (i, &(dst, len)) in self.pending.iter().enumerate() {
            let Some(namelen) = self.names[m].encode(dst, ipv6) else {
                r.errors += 1;
                continue;
            };
            let at = i * self.slot_len;
            self.iovs[m] = sys::iovec_for(&self.data[at..at + len]);
            let mut hdr = sys::empty_msghdr();
            hdr.msg_name = (&raw mut self.names[m]).cast();
            hdr.msg_namelen = namelen;
            hdr.msg_iov = (&raw mut self.iovs[m]).cast();
            hdr.msg_iovlen = 1;
            self.msgs[m] = libc::mmsghdr { msg_hdr: hdr, msg_len: 0 };
            m += 1;
        }
        self.pending.clear();
        let mut off = 0;
        while off < m {
            let vlen = libc::c_uint::try_from(m - off).unwrap_or(libc::c_uint::MAX);
            r.syscalls += 1;
            // SAFETY: messages `off..m` point at names, iovecs and scratch bytes of `self`, alive
            // and unmoved across the call; `socket` is an open descriptor borrowed for it.
            let n = unsafe { libc::sendmmsg(socket.as_raw_fd(), self.msgs[off..m].as_mut_ptr(), vlen, libc::MSG_DONTWAIT) };
            if n > 0 {
                r.sent += n as u64;
                off += n as usize;
                continue;
            }
            match io::Error::last_os_error().kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock => {
                    r.errors += (m - off) as u64;
                    break;
                }
                _ => {
                    r.errors += 1;
                    off += 1;
                }
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_each_committed_datagram_to_its_destination_and_empties() {
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let rx: Vec<UdpSocket> = (0..3).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
        for s in &rx {
            s.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
        }
        let mut b = SendToBatch::new(4, 16);
        for (i, s) in rx.iter().enumerate() {
            let slot = b.slot().unwrap();
            slot[..3].copy_from_slice(&[i as u8; 3]);
            b.commit(s.local_addr().unwrap(), 3 + i);
        }
        assert_eq!(b.len(), 3);
        let r = b.send(&tx, false);
        assert_eq!((r.sent, r.errors), (3, 0));
        assert!(b.is_empty());
        for (i, s) in rx.iter().enumerate() {
            let mut buf = [0u8; 32];
            let (n, from) = s.recv_from(&mut buf).unwrap();
            assert_eq!(n, 3 + i);
            assert_eq!(&buf[..3], &[i as u8; 3]);
            assert_eq!(from, tx.local_addr().unwrap());
        }
        // Full: no slot until sent; a destination the socket's family cannot reach is an error.
        for _ in 0..4 {
            assert!(b.slot().is_some());
            b.commit("[2001:db8::1]:9".parse().unwrap(), 1);
        }
        assert!(b.slot().is_none());
        assert_eq!(b.send(&tx, false).errors, 4);
    }
}
