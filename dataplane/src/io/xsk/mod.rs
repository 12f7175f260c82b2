//! The AF_XDP backend: one `AF_XDP` socket (XSK) per (interface, RX queue), raw `libc`.
//!
//! ```text
//!  UMEM: (rx_frames + XSK_TX_FRAMES) × 2048-byte frames, one anonymous mapping
//!    frames [0, rx_frames)  receive: owned by the fill ring / kernel / RX ring / `rx_free`
//!    frames [rx_frames, …)  transmit: owned by `tx_free` / TX ring / kernel / completion ring
//!  fill ring → kernel writes frames → RX ring → `recv_batch` callback → back to the fill ring
//!  `send_batch`: TX frame ← Ethernet + IPv4/IPv6 + UDP headers + payload → TX ring → sendto() kick
//!                completion ring → `tx_free`
//! ```
//!
//! The XDP program decides what reaches the socket: known media from a leg (SLUICE_LEGS, SSRCs
//! announced) is redirected through SLUICE_XSKS when the stage is in AF_XDP mode
//! (`XdpStage::set_af_xdp`, `XdpStage::set_xsk` with [`XskBackend::xsk_fd`] and
//! [`XskBackend::queue`]). Everything else (STUN, DTLS, media with no socket on the queue) passes
//! to the kernel, so [`XskBackend`] also owns an [`MmsgBackend`] with an ordinary UDP socket per leg
//! port: `add_port` binds it (reserving the port and serving the slow path) and `recv_batch`
//! delivers from both, through the same callback.
//!
//! Wake-up ([`super::wake`]): the backend's eventfd is the [`MmsgBackend`]'s, in that epoll set,
//! and the epoll descriptor is one of the two `recv_batch` polls on (it turns readable when the
//! eventfd is written); the kernel sockets' `recv_batch` drains and counts it. One registration and
//! one place that consumes the wake, so it is neither seen twice nor missed.
//!
//! Receive parses Ethernet (one VLAN tag), IPv4 (no fragments) or IPv6 (fixed header) and UDP, no
//! more. Send builds Ethernet/IPv4/UDP or Ethernet/IPv6/UDP headers in software with the
//! checksums (there is no offload in copy mode). The source MAC and addresses are the
//! interface's (read with `getifaddrs` when the backend is built; `IoConfig::local_ip` wins when it
//! is a specific address); the next-hop MAC comes from the kernel's neighbour tables, see
//! [`Neighbours`]. A destination whose family the interface has no address for goes out of the
//! kernel socket of the same local port.
//!
//! Binding tries `XDP_ZEROCOPY` first and falls back to `XDP_COPY` (veth and drivers without
//! AF_XDP zero-copy support refuse zero-copy with `EOPNOTSUPP`).
//!
//! Which path sends is [`super::XskTx`]: by default the ring in zero-copy mode, and the leg
//! sockets in copy mode. In copy mode every ring frame is copied into a fresh skb and transmitted
//! on its own (`__xsk_generic_xmit`), while the sockets send each subscriber's run as one GSO
//! send. On veth the two are level since the ring leaves the UDP checksum to the kernel
//! (`sluice-bench xdp`, fan-out 4, copies per busy core-second: ring 415,766, sockets 409,056 in
//! one run; the order flips between runs), so `auto` keeps the sockets there.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read as _, Seek as _, SeekFrom};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::{IoConfig, IoCounters, IoError, MmsgBackend, SendRegistry, Transmit, Waker};

/// Bytes per UMEM frame (one packet per frame, aligned chunk mode).
pub const XSK_FRAME_SIZE: usize = 2048;
/// UMEM frames per socket for receive by default (32 MiB; `af_xdp_rx_frames`): all the
/// buffering a burst meets while the worker is busy or its core runs the interface's NAPI poll, as the socket buffer is for the
/// socket backends. On veth, with the NAPI thread and the worker on one core, `sluice-bench xdp`
/// lost paced bursts to `xsk_fill_ring_empty` with 2048 frames (the worker's core 80% busy) and
/// with 4096; 16384 held them. Also the size of the fill and RX rings.
pub const XSK_RX_FRAMES: usize = 16384;
/// UMEM frames per socket for transmit (8 MiB); also the size of the TX and completion rings.
pub const XSK_TX_FRAMES: usize = 4096;

const ETH_HLEN: usize = 14;
const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const UDP_HLEN: usize = 8;
/// Frame headers `send_batch` writes: Ethernet + IPv4 + UDP.
const TX_HEADERS_V4: usize = ETH_HLEN + IPV4_HLEN + UDP_HLEN;
/// Frame headers `send_batch` writes: Ethernet + IPv6 + UDP.
const TX_HEADERS_V6: usize = ETH_HLEN + IPV6_HLEN + UDP_HLEN;
/// How often the neighbour table is re-read at most, on a miss.
const NEIGH_MISS_REFRESH: Duration = Duration::from_millis(50);
/// How old a neighbour snapshot may get before a send re-reads it.
const NEIGH_MAX_AGE: Duration = Duration::from_secs(1);
/// Most source MACs remembered from received frames (the fallback when the kernel has no entry).
const LEARNED_MAX: usize = 4096;
/// Most `sendto` kicks per `send_batch` (copy mode transmits at most 32 frames per kick unless
/// the kernel takes [`XDP_MAX_TX_SKB_BUDGET`]).
const MAX_KICKS: usize = 256;
/// `SOL_XDP` option (Linux 6.17+, not in libc yet): frames copy mode transmits per kick.
const XDP_MAX_TX_SKB_BUDGET: libc::c_int = 9;
/// Bytes of `struct xsk_tx_metadata` room in front of each TX packet when the UMEM carries TX
/// metadata (flags u64, then csum_start u16, csum_offset u16, launch_time u64: 24 with padding).
const TX_META_LEN: usize = 24;
/// While the XSK delivers, the kernel sockets (STUN, DTLS: the slow path) are looked at on every
/// this many `recv_batch` calls only, saving an `epoll_wait` per batch; always when the XSK is idle.
const SLOW_PATH_EVERY: u32 = 8;

fn os_err(op: &'static str) -> impl FnOnce(io::Error) -> IoError {
    move |source| IoError::Os { op, source }
}

mod frame;
mod neigh;
mod ring;

use frame::*;
pub use neigh::{Interface, Neighbours, parse_mac};
pub use ring::XskSocket;

/// The AF_XDP backend of one worker: an [`XskSocket`] for the media the XDP program redirects,
/// plus kernel UDP sockets ([`MmsgBackend`]) for the leg ports (port reservation and the slow
/// path: STUN, DTLS, media the program passes).
#[derive(Debug)]
pub struct XskBackend {
    config: IoConfig,
    xsk: XskSocket,
    slow: MmsgBackend,
    iface: Interface,
    queue: u32,
    ports: HashSet<u16>,
    neighbours: Neighbours,
    ip_id: u16,
    slow_turn: u32,
    counters: IoCounters,
    rx_limit: usize,
}

impl XskBackend {
    /// Binds an XSK to `config.xsk_queue` of `config.xsk_interface` (in the calling thread's
    /// network namespace; everything after that works from any thread).
    pub fn new(config: IoConfig, registry: Arc<SendRegistry>) -> Result<Self, IoError> {
        let name =
            config.xsk_interface.clone().ok_or(IoError::Os { op: "AF_XDP backend: no interface configured", source: io::ErrorKind::InvalidInput.into() })?;
        let iface = Interface::lookup(&name)?;
        let queue = config.xsk_queue;
        let xsk = XskSocket::open(iface.index, queue, config.xsk_rx_frames)?;
        let neighbours = Neighbours::open(&name, iface.index)?;
        let slow = MmsgBackend::new(config.clone(), registry)?;
        let b = Self {
            rx_limit: config.rx_batch.max(1),
            config,
            xsk,
            slow,
            iface,
            queue,
            ports: HashSet::new(),
            neighbours,
            ip_id: 0,
            slow_turn: 0,
            counters: IoCounters::default(),
        };
        tracing::info!(
            interface = %b.iface.name,
            queue,
            zerocopy = b.zerocopy(),
            tx = if b.tx_ring() { "ring" } else { "socket" },
            tx_csum_offload = b.tx_csum_offload(),
            rx_frames = b.config.xsk_rx_frames,
            "AF_XDP transmit path"
        );
        Ok(b)
    }

    /// The socket to register in the XDP stage's XSKMAP (`XdpStage::set_xsk`).
    pub fn xsk_fd(&self) -> BorrowedFd<'_> {
        self.xsk.as_fd()
    }

    /// The RX queue the socket is bound to (the XSKMAP key).
    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// Whether the XSK runs zero-copy.
    pub fn zerocopy(&self) -> bool {
        self.xsk.zerocopy()
    }

    /// Whether sends go through the XSK's TX ring (else through the leg sockets), by
    /// `IoConfig::xsk_tx` and the bind mode.
    pub fn tx_ring(&self) -> bool {
        match self.config.xsk_tx {
            super::XskTx::Ring => true,
            super::XskTx::Socket => false,
            super::XskTx::Auto => self.xsk.zerocopy,
        }
    }

    /// Whether ring sends leave the UDP checksum to the kernel/device (see
    /// [`XskSocket::tx_csum_offload`]).
    pub fn tx_csum_offload(&self) -> bool {
        self.xsk.tx_csum_offload()
    }

    /// The next-hop MAC `send_batch` would use for `dst` (diagnostics and tests).
    pub fn next_hop_mac(&mut self, dst: IpAddr) -> Option<[u8; 6]> {
        self.neighbours.lookup(dst)
    }

    /// The interface the XSK is bound to.
    pub fn interface(&self) -> &Interface {
        &self.iface
    }

    /// Opens a leg port: binds the kernel socket (slow path) and accepts XSK traffic for it.
    pub fn add_port(&mut self, port: u16) -> Result<u16, IoError> {
        let port = self.slow.add_port(port)?;
        self.ports.insert(port);
        Ok(port)
    }

    /// Closes a leg port.
    pub fn remove_port(&mut self, port: u16) -> Result<(), IoError> {
        self.ports.remove(&port);
        self.slow.remove_port(port)
    }

    /// The ports this backend receives on.
    pub fn ports(&self) -> Vec<u16> {
        self.slow.ports()
    }

    /// The counters so far: the XSK's plus the kernel sockets'.
    pub fn counters(&self) -> IoCounters {
        let (a, b) = (&self.counters, self.slow.counters());
        IoCounters {
            syscalls: a.syscalls + b.syscalls,
            rx_datagrams: a.rx_datagrams + b.rx_datagrams,
            rx_truncated: a.rx_truncated + b.rx_truncated,
            rx_errors: a.rx_errors + b.rx_errors,
            tx_datagrams: a.tx_datagrams + b.tx_datagrams,
            gso_sends: a.gso_sends + b.gso_sends,
            send_errors: a.send_errors + b.send_errors,
            tx_unknown_port: a.tx_unknown_port + b.tx_unknown_port,
            gso_refused: a.gso_refused + b.gso_refused,
            rx_gro_datagrams: a.rx_gro_datagrams + b.rx_gro_datagrams,
            wakeups: a.wakeups + b.wakeups,
            ..self.xsk_counters()
        }
    }

    /// The counters of the XSK alone (the kernel sockets' excluded), with the kernel's
    /// `XDP_STATISTICS` for the socket (one `getsockopt`).
    pub fn xsk_counters(&self) -> IoCounters {
        let mut c = self.counters;
        if let Ok(st) = self.xsk.statistics() {
            c.xsk_rx_dropped = st.rx_dropped + st.rx_ring_full + st.rx_invalid_descs;
            c.xsk_rx_ring_full = st.rx_ring_full;
            c.xsk_fill_ring_empty = st.rx_fill_ring_empty_descs;
            c.xsk_tx_invalid = st.tx_invalid_descs;
        }
        c
    }

    /// A handle that ends this backend's current or next wait; see [`super::Backend::waker`].
    pub fn waker(&self) -> Waker {
        self.slow.waker()
    }

    /// Receives at most `n` datagrams per call from now on (see [`MmsgBackend::set_rx_limit`]).
    ///
    /// [`MmsgBackend::set_rx_limit`]: super::mmsg::MmsgBackend::set_rx_limit
    pub fn set_rx_limit(&mut self, n: usize) {
        self.rx_limit = n.clamp(1, self.config.rx_batch.max(1));
        self.slow.set_rx_limit(n);
    }

    /// Delivers up to `rx_batch` datagrams from the XSK, then from the kernel sockets (every
    /// `SLOW_PATH_EVERY`-th call while the XSK delivers, every call when it is idle), to
    /// `f(local_port, src, payload)`; waits up to `timeout` for either if none is ready. A
    /// wake-up ends the wait (or, consumed by the kernel sockets' look before it, prevents it).
    pub fn recv_batch<F>(&mut self, timeout: Option<Duration>, mut f: F) -> Result<usize, IoError>
    where
        F: FnMut(u16, SocketAddr, &mut [u8]),
    {
        let max = self.rx_limit.max(1);
        let wakeups = self.slow.counters().wakeups;
        let mut n = self.recv_xsk(max, &mut f);
        self.slow_turn = self.slow_turn.wrapping_add(1);
        if n == 0 || (n < max && self.slow_turn.is_multiple_of(SLOW_PATH_EVERY)) {
            n += self.slow.recv_batch(Some(Duration::ZERO), &mut f)?;
        }
        if n > 0 || timeout == Some(Duration::ZERO) || self.slow.counters().wakeups != wakeups {
            return Ok(n);
        }
        let mut fds = [
            libc::pollfd { fd: self.xsk.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: self.slow.epoll_fd(), events: libc::POLLIN, revents: 0 },
        ];
        let ms = timeout.map_or(-1, |t| t.as_millis().clamp(1, i32::MAX as u128) as libc::c_int);
        self.counters.syscalls += 1;
        // SAFETY: `fds` is a live array of two pollfds.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(IoError::Os { op: "poll", source: e });
            }
        }
        let mut n = self.recv_xsk(max, &mut f);
        if n < max {
            n += self.slow.recv_batch(Some(Duration::ZERO), &mut f)?;
        }
        Ok(n)
    }

    fn recv_xsk<F>(&mut self, max: usize, f: &mut F) -> usize
    where
        F: FnMut(u16, SocketAddr, &mut [u8]),
    {
        self.xsk.refill();
        let n = self.xsk.rx.ready(max as u32);
        let mut delivered = 0;
        for i in 0..n {
            // SAFETY: entries between the RX consumer and producer indices were written by the
            // kernel and are ours to read until `release`.
            let desc = unsafe { self.xsk.rx.desc_slot(self.xsk.rx.cached_cons.wrapping_add(i)).read() };
            let chunk = desc.addr & !(XSK_FRAME_SIZE as u64 - 1);
            if let Some(frame) = self.xsk.frame_mut(desc.addr, desc.len as usize) {
                match parse_frame(frame) {
                    Some(p) if self.ports.contains(&p.port) => {
                        self.neighbours.learn(p.src.ip(), p.src_mac);
                        f(p.port, p.src, &mut frame[p.payload]);
                        delivered += 1;
                    }
                    _ => self.counters.rx_errors += 1,
                }
            } else {
                self.counters.rx_errors += 1;
            }
            self.xsk.rx_free.push(chunk);
        }
        if n > 0 {
            self.xsk.rx.release(n);
            self.xsk.refill();
        }
        self.counters.rx_datagrams += delivered as u64;
        delivered
    }

    /// Sends `pkts` by the configured path ([`super::XskTx`]): as raw frames through the XSK
    /// (IPv4, IPv6, v4-mapped IPv6 as IPv4; a family the interface has no address for goes
    /// through the kernel socket of the local port), or through the leg sockets with GSO (a
    /// destination their family cannot reach goes through the XSK). Returns how many were handed
    /// to the kernel.
    pub fn send_batch<'a, I>(&mut self, pkts: I) -> usize
    where
        I: IntoIterator<Item = Transmit<'a>>,
    {
        if self.tx_ring() {
            return self.send_ring(pkts);
        }
        // The leg sockets send what their family reaches (an IPv4 socket no IPv6 peer); the
        // ring takes the rest.
        let v6_sockets = self.config.local_ip.is_ipv6();
        let mut rest: Vec<Transmit<'a>> = Vec::new();
        let reachable = |t: &Transmit<'_>| match t.dst {
            SocketAddr::V4(_) => true,
            SocketAddr::V6(d) => v6_sockets || d.ip().to_ipv4_mapped().is_some(),
        };
        let mut sent = self.slow.send_batch(pkts.into_iter().filter(|t| {
            let ok = reachable(t);
            if !ok {
                rest.push(*t);
            }
            ok
        }));
        if !rest.is_empty() {
            sent += self.send_ring(rest);
        }
        sent
    }

    /// Sends through the XSK's TX ring: Ethernet, IP and UDP headers written here.
    fn send_ring<'a, I>(&mut self, pkts: I) -> usize
    where
        I: IntoIterator<Item = Transmit<'a>>,
    {
        let src_v4 = match self.config.local_ip {
            IpAddr::V4(a) if !a.is_unspecified() => Some(a),
            _ => self.iface.ipv4,
        };
        let src_v6 = match self.config.local_ip {
            IpAddr::V6(a) if !a.is_unspecified() && a.to_ipv4_mapped().is_none() => Some(a),
            _ => self.iface.ipv6,
        };
        // With TX metadata each frame is [xsk_tx_metadata | packet], the descriptor pointing at
        // the packet; the request asks for the UDP checksum from `csum_start` (the UDP header).
        let meta = if self.xsk.tx_meta { TX_META_LEN } else { 0 };
        let csum = if self.xsk.tx_meta { UdpCsum::Partial } else { UdpCsum::Full };
        let mut kernel: Vec<Transmit<'a>> = Vec::new();
        let mut last_hop: Option<(IpAddr, [u8; 6])> = None;
        let mut queued = 0u32;
        let mut sent = 0;
        self.xsk.reclaim();
        for t in pkts {
            let dst = match t.dst {
                SocketAddr::V6(d) => match d.ip().to_ipv4_mapped() {
                    Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, d.port())),
                    None => t.dst,
                },
                v4 => v4,
            };
            let (src, headers): (SocketAddr, usize) = match (dst, src_v4, src_v6) {
                // The node's own address (a TURN allocation's relayed address, before its channel
                // route exists): local delivery is the kernel's; a frame on the wire never
                // comes back.
                (SocketAddr::V4(d), Some(ip), _) if *d.ip() == ip => {
                    kernel.push(t);
                    continue;
                }
                (SocketAddr::V6(d), _, Some(ip)) if *d.ip() == ip => {
                    kernel.push(t);
                    continue;
                }
                (SocketAddr::V4(_), Some(ip), _) => (SocketAddr::new(ip.into(), t.local_port), TX_HEADERS_V4),
                (SocketAddr::V6(_), _, Some(ip)) => (SocketAddr::new(ip.into(), t.local_port), TX_HEADERS_V6),
                _ => {
                    kernel.push(t);
                    continue;
                }
            };
            // The fan-out orders a batch by subscriber: one lookup per run of a destination.
            let dst_mac = match last_hop {
                Some((ip, mac)) if ip == dst.ip() => mac,
                _ => {
                    let Some(mac) = self.neighbours.lookup(dst.ip()) else {
                        self.counters.send_errors += 1;
                        continue;
                    };
                    last_hop = Some((dst.ip(), mac));
                    mac
                }
            };
            if meta + headers + t.payload.len() > XSK_FRAME_SIZE {
                self.counters.send_errors += 1;
                continue;
            }
            // `queued` descriptors are written but not yet submitted: room for one more?
            if self.xsk.tx.free(queued + 1) <= queued || self.xsk.tx_free.is_empty() {
                // Ring or frames exhausted: push out what is queued and take completions back.
                self.flush(&mut queued);
                self.xsk.reclaim();
                if self.xsk.tx.free(1) == 0 || self.xsk.tx_free.is_empty() {
                    self.counters.send_errors += 1;
                    continue;
                }
            }
            let Some(addr) = self.xsk.tx_free.pop() else { continue };
            let (src_mac, id) = (self.iface.mac, self.ip_id);
            self.ip_id = self.ip_id.wrapping_add(1);
            let Some(chunk) = self.xsk.frame_mut(addr, XSK_FRAME_SIZE) else { continue };
            let (md, frame) = chunk.split_at_mut(meta);
            frame[headers..headers + t.payload.len()].copy_from_slice(t.payload);
            let len = match (src, dst) {
                (SocketAddr::V4(s), SocketAddr::V4(d)) => write_v4_headers(frame, src_mac, dst_mac, s, d, id, t.payload.len(), csum),
                (SocketAddr::V6(s), SocketAddr::V6(d)) => write_v6_headers(frame, src_mac, dst_mac, s, d, t.payload.len(), csum),
                _ => unreachable!("source chosen by the destination's family"),
            };
            let options = if meta > 0 {
                write_tx_csum_request(md, headers - UDP_HLEN);
                libc::XDP_TX_METADATA
            } else {
                0
            };
            let slot = self.xsk.tx.desc_slot(self.xsk.tx.cached_prod.wrapping_add(queued));
            // SAFETY: `free` said this slot past our producer index is ours to write until submit.
            unsafe { slot.write(libc::xdp_desc { addr: addr + meta as u64, len: len as u32, options }) };
            queued += 1;
            sent += 1;
        }
        self.flush(&mut queued);
        self.counters.tx_datagrams += sent as u64;
        if !kernel.is_empty() {
            sent += self.slow.send_batch(kernel);
        }
        sent
    }

    /// Publishes `queued` TX descriptors and kicks until the kernel took them (bounded).
    fn flush(&mut self, queued: &mut u32) {
        if *queued > 0 {
            self.xsk.tx.submit(*queued);
            *queued = 0;
        }
        for _ in 0..MAX_KICKS {
            if self.xsk.tx.outstanding() == 0 {
                break;
            }
            if self.xsk.zerocopy && !self.xsk.tx.needs_wakeup() {
                break;
            }
            self.counters.syscalls += 1;
            match self.xsk.kick() {
                Ok(()) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EBUSY | libc::ENOBUFS | libc::EINTR)) => {
                    // Completion ring full or the device busy: free completions, try again.
                    self.xsk.reclaim();
                }
                Err(_) => break,
            }
            self.xsk.reclaim();
        }
    }
}

#[cfg(test)]
mod tests;
