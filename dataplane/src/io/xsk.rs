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

use super::{IoConfig, IoCounters, IoError, MmsgBackend, SendRegistry, Transmit};

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

/// One mmap'd region, unmapped on drop.
#[derive(Debug)]
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    /// `mmap(len, PROT_READ|PROT_WRITE, flags, fd, offset)`.
    fn new(len: usize, flags: libc::c_int, fd: libc::c_int, offset: libc::off_t) -> io::Result<Self> {
        // SAFETY: a fresh mapping (address chosen by the kernel), no existing memory is affected;
        // the result is checked before use.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, flags, fd, offset) };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { ptr: ptr.cast(), len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned, and nothing borrows the mapping once
        // its owner is dropped.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// One of the four single-producer single-consumer rings shared with the kernel.
#[derive(Debug)]
struct Ring {
    /// Held for its lifetime: the pointers below point into it.
    _map: Mapping,
    producer: *const AtomicU32,
    consumer: *const AtomicU32,
    flags: *const AtomicU32,
    desc: *mut u8,
    /// Entries (a power of two), and that minus one.
    size: u32,
    mask: u32,
    /// Our copy of the index we own, and the last seen value of the kernel's.
    cached_prod: u32,
    cached_cons: u32,
}

impl Ring {
    /// Maps ring `pgoff` of `fd` with the kernel-reported offsets, `size` entries of `desc_len`.
    fn map(fd: libc::c_int, off: &libc::xdp_ring_offset, pgoff: u64, desc_len: usize, size: u32) -> io::Result<Self> {
        debug_assert!(size.is_power_of_two());
        let len = off.desc as usize + size as usize * desc_len;
        let map = Mapping::new(len, libc::MAP_SHARED | libc::MAP_POPULATE, fd, pgoff as libc::off_t)?;
        // SAFETY: the kernel guarantees the offsets lie inside the ring mapping of that length;
        // producer, consumer and flags are naturally aligned u32s.
        let (producer, consumer, flags, desc) = unsafe {
            (
                map.ptr.add(off.producer as usize).cast::<AtomicU32>(),
                map.ptr.add(off.consumer as usize).cast::<AtomicU32>(),
                map.ptr.add(off.flags as usize).cast::<AtomicU32>(),
                map.ptr.add(off.desc as usize),
            )
        };
        let mut ring = Self { _map: map, producer, consumer, flags, desc, size, mask: size - 1, cached_prod: 0, cached_cons: 0 };
        ring.cached_prod = ring.producer().load(Ordering::Acquire);
        ring.cached_cons = ring.consumer().load(Ordering::Acquire);
        Ok(ring)
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: points into `self.map`, which lives as long as `self`; the kernel accesses it
        // only atomically.
        unsafe { &*self.producer }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as in `producer`.
        unsafe { &*self.consumer }
    }

    fn needs_wakeup(&self) -> bool {
        // SAFETY: as in `producer`.
        unsafe { &*self.flags }.load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    /// Producer side: how many of `want` entries are free to write.
    fn free(&mut self, want: u32) -> u32 {
        let mut free = self.size - self.cached_prod.wrapping_sub(self.cached_cons);
        if free < want {
            self.cached_cons = self.consumer().load(Ordering::Acquire);
            free = self.size - self.cached_prod.wrapping_sub(self.cached_cons);
        }
        free.min(want)
    }

    /// Producer side: publishes `n` entries written after the last submit.
    fn submit(&mut self, n: u32) {
        self.cached_prod = self.cached_prod.wrapping_add(n);
        self.producer().store(self.cached_prod, Ordering::Release);
    }

    /// Consumer side: how many entries (at most `max`) are ready to read.
    fn ready(&mut self, max: u32) -> u32 {
        let mut avail = self.cached_prod.wrapping_sub(self.cached_cons);
        if avail == 0 {
            self.cached_prod = self.producer().load(Ordering::Acquire);
            avail = self.cached_prod.wrapping_sub(self.cached_cons);
        }
        avail.min(max)
    }

    /// Consumer side: hands `n` read entries back to the kernel.
    fn release(&mut self, n: u32) {
        self.cached_cons = self.cached_cons.wrapping_add(n);
        self.consumer().store(self.cached_cons, Ordering::Release);
    }

    /// Producer side: entries written and not yet consumed by the kernel.
    fn outstanding(&mut self) -> u32 {
        self.cached_cons = self.consumer().load(Ordering::Acquire);
        self.cached_prod.wrapping_sub(self.cached_cons)
    }

    /// The `u64` address slot `i` entries past our index (fill/completion rings).
    fn addr_slot(&self, index: u32) -> *mut u64 {
        // SAFETY: `index & mask` < size, and the mapping holds `size` u64 descriptors
        // from `desc`, which the kernel aligns to 8.
        unsafe { self.desc.cast::<u64>().add((index & self.mask) as usize) }
    }

    /// The `xdp_desc` slot at `index` (RX/TX rings).
    fn desc_slot(&self, index: u32) -> *mut libc::xdp_desc {
        // SAFETY: as in `addr_slot`, with `size` 16-byte descriptors.
        unsafe { self.desc.cast::<libc::xdp_desc>().add((index & self.mask) as usize) }
    }
}

/// The interface an XSK is bound to, as seen from the namespace it was created in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// Name.
    pub name: String,
    /// Index.
    pub index: u32,
    /// MAC address.
    pub mac: [u8; 6],
    /// First IPv4 address, if any.
    pub ipv4: Option<Ipv4Addr>,
    /// First IPv6 address that is not link-local, if any.
    pub ipv6: Option<Ipv6Addr>,
}

impl Interface {
    /// Looks `name` up with `getifaddrs` (in the calling thread's network namespace).
    pub fn lookup(name: &str) -> Result<Self, IoError> {
        let cname = std::ffi::CString::new(name).map_err(|_| IoError::Os { op: "interface name", source: io::ErrorKind::InvalidInput.into() })?;
        // SAFETY: `cname` is a valid NUL-terminated string.
        let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if index == 0 {
            return Err(IoError::Os { op: "if_nametoindex", source: io::Error::last_os_error() });
        }
        let mut iface = Self { name: name.to_owned(), index, mac: [0; 6], ipv4: None, ipv6: None };
        let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
        // SAFETY: `head` is a valid out-pointer; the list is freed below.
        if unsafe { libc::getifaddrs(&mut head) } != 0 {
            return Err(IoError::Os { op: "getifaddrs", source: io::Error::last_os_error() });
        }
        let mut cur = head;
        while !cur.is_null() {
            // SAFETY: `cur` is a node of the list getifaddrs returned, alive until freeifaddrs.
            let ifa = unsafe { &*cur };
            cur = ifa.ifa_next;
            // SAFETY: `ifa_name` is a valid C string for every node.
            let ifname = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
            if ifname.to_bytes() != name.as_bytes() || ifa.ifa_addr.is_null() {
                continue;
            }
            // SAFETY: non-null `ifa_addr` points to a sockaddr at least as long as its family's.
            let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            match family {
                libc::AF_PACKET => {
                    // SAFETY: an AF_PACKET address is a sockaddr_ll.
                    let ll = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_ll>() };
                    if ll.sll_halen == 6 {
                        iface.mac.copy_from_slice(&ll.sll_addr[..6]);
                    }
                }
                libc::AF_INET if iface.ipv4.is_none() => {
                    // SAFETY: an AF_INET address is a sockaddr_in.
                    let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
                    iface.ipv4 = Some(Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()));
                }
                libc::AF_INET6 if iface.ipv6.is_none() => {
                    // SAFETY: an AF_INET6 address is a sockaddr_in6.
                    let sin6 = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in6>() };
                    let a = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                    if !a.is_unicast_link_local() {
                        iface.ipv6 = Some(a);
                    }
                }
                _ => {}
            }
        }
        // SAFETY: `head` came from getifaddrs and is freed once; no reference into it survives.
        unsafe { libc::freeifaddrs(head) };
        Ok(iface)
    }
}

/// The next-hop MAC for an IPv4 destination, from the kernel's tables: `/proc/…/net/route` (the
/// interface's routes, longest prefix: on-link → the destination itself, else the gateway) and
/// `/proc/…/net/arp` (complete or permanent entries on the interface). Both files are opened
/// when the backend is built, from `/proc/thread-self`, so they read the namespace the XSK was
/// created in whichever thread sends later. Re-read when the snapshot is older than
/// 1 s, and on a miss at most every 50 ms. If the kernel has no
/// entry (it never resolved the peer: its packets came through the XSK, not the stack), the source
/// MAC of the last frame received from that address is used (symmetric path assumed).
///
/// IPv6 has no `/proc` neighbour table: its entries come from an `RTM_GETNEIGH` netlink dump
/// (valid states only: reachable, stale, delay, probe, permanent, noarp) on a netlink socket
/// opened with the backend (so in its namespace), refreshed on the same schedule. IPv6 next hops
/// are taken to be on-link (no route lookup), with the same learned-MAC fallback.
#[derive(Debug)]
pub struct Neighbours {
    ifname: String,
    ifindex: u32,
    arp: File,
    route: File,
    netlink: OwnedFd,
    nl_seq: u32,
    nl_buf: Vec<u8>,
    v6_table: HashMap<Ipv6Addr, [u8; 6]>,
    /// (destination, mask, gateway), network-order bytes as u32 in memory order.
    routes: Vec<(u32, u32, u32)>,
    arp_table: HashMap<Ipv4Addr, [u8; 6]>,
    learned: HashMap<IpAddr, [u8; 6]>,
    read_at: Option<Instant>,
    text: String,
}

impl Neighbours {
    fn open(ifname: &str, ifindex: u32) -> Result<Self, IoError> {
        let arp = File::open("/proc/thread-self/net/arp").map_err(os_err("open /proc/thread-self/net/arp"))?;
        let route = File::open("/proc/thread-self/net/route").map_err(os_err("open /proc/thread-self/net/route"))?;
        // SAFETY: plain socket creation; the result is checked.
        let raw = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
        if raw < 0 {
            return Err(IoError::Os { op: "netlink socket", source: io::Error::last_os_error() });
        }
        // SAFETY: `raw` is a fresh fd nobody else owns.
        let netlink = unsafe { OwnedFd::from_raw_fd(raw) };
        let tv = libc::timeval { tv_sec: 0, tv_usec: 200_000 };
        // SAFETY: a valid timeval of the size passed, on an open socket.
        let rc = unsafe {
            libc::setsockopt(raw, libc::SOL_SOCKET, libc::SO_RCVTIMEO, (&raw const tv).cast(), std::mem::size_of::<libc::timeval>() as libc::socklen_t)
        };
        if rc != 0 {
            return Err(IoError::Os { op: "netlink SO_RCVTIMEO", source: io::Error::last_os_error() });
        }
        Ok(Self {
            ifname: ifname.to_owned(),
            ifindex,
            arp,
            route,
            netlink,
            nl_seq: 0,
            nl_buf: vec![0; 32 * 1024],
            v6_table: HashMap::new(),
            routes: Vec::new(),
            arp_table: HashMap::new(),
            learned: HashMap::new(),
            read_at: None,
            text: String::new(),
        })
    }

    fn read(file: &mut File, text: &mut String) -> io::Result<()> {
        text.clear();
        file.seek(SeekFrom::Start(0))?;
        file.read_to_string(text)?;
        Ok(())
    }

    /// Re-reads both tables.
    pub fn refresh(&mut self) -> io::Result<()> {
        self.read_at = Some(Instant::now());
        Self::read(&mut self.route, &mut self.text)?;
        self.routes.clear();
        for line in self.text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 || f[0] != self.ifname {
                continue;
            }
            let hex = |s: &str| u32::from_str_radix(s, 16).ok();
            if let (Some(dst), Some(gw), Some(mask)) = (hex(f[1]), hex(f[2]), hex(f[7])) {
                self.routes.push((dst, mask, gw));
            }
        }
        Self::read(&mut self.arp, &mut self.text)?;
        self.arp_table.clear();
        for line in self.text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 6 || f[5] != self.ifname {
                continue;
            }
            let flags = f[2].trim_start_matches("0x");
            // ATF_COM (0x2): resolved; ATF_PERM (0x4) entries are complete too.
            if u32::from_str_radix(flags, 16).map_or(true, |fl| fl & 0x2 == 0) {
                continue;
            }
            let (Ok(ip), Some(mac)) = (f[0].parse::<Ipv4Addr>(), parse_mac(f[3])) else { continue };
            self.arp_table.insert(ip, mac);
        }
        self.dump_v6()
    }

    /// `RTM_GETNEIGH` dump (AF_INET6) into `v6_table`: this interface's usable entries.
    fn dump_v6(&mut self) -> io::Result<()> {
        const RTM_NEWNEIGH: u16 = 28;
        const RTM_GETNEIGH: u16 = 30;
        const NLMSG_ERROR: u16 = 2;
        const NLMSG_DONE: u16 = 3;
        const NDA_DST: u16 = 1;
        const NDA_LLADDR: u16 = 2;
        // NUD_REACHABLE | STALE | DELAY | PROBE | NOARP | PERMANENT
        const NUD_VALID: u16 = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80;
        self.nl_seq = self.nl_seq.wrapping_add(1);
        // nlmsghdr (16 bytes) + ndmsg (12 bytes: family, pad, pad16, ifindex, state, flags, type).
        let mut req = [0u8; 28];
        req[0..4].copy_from_slice(&28u32.to_ne_bytes());
        req[4..6].copy_from_slice(&RTM_GETNEIGH.to_ne_bytes());
        req[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
        req[8..12].copy_from_slice(&self.nl_seq.to_ne_bytes());
        req[16] = libc::AF_INET6 as u8;
        // SAFETY: `req` is a live buffer of the length passed; the socket is open.
        let rc = unsafe { libc::send(self.netlink.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        self.v6_table.clear();
        loop {
            // SAFETY: `nl_buf` is a live, writable buffer of the length passed.
            let n = unsafe { libc::recv(self.netlink.as_raw_fd(), self.nl_buf.as_mut_ptr().cast(), self.nl_buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let buf = &self.nl_buf[..n as usize];
            let mut off = 0;
            while off + 16 <= buf.len() {
                let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
                let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
                let seq = u32::from_ne_bytes([buf[off + 8], buf[off + 9], buf[off + 10], buf[off + 11]]);
                if len < 16 || off + len > buf.len() {
                    return Ok(());
                }
                let msg = &buf[off..off + len];
                off += (len + 3) & !3;
                if seq != self.nl_seq {
                    continue;
                }
                match ty {
                    NLMSG_DONE | NLMSG_ERROR => return Ok(()),
                    RTM_NEWNEIGH if msg.len() >= 28 => {
                        let family = msg[16];
                        let ifindex = u32::from_ne_bytes([msg[20], msg[21], msg[22], msg[23]]);
                        let state = u16::from_ne_bytes([msg[24], msg[25]]);
                        if i32::from(family) != libc::AF_INET6 || ifindex != self.ifindex || state & NUD_VALID == 0 {
                            continue;
                        }
                        let (mut dst, mut mac) = (None, None);
                        let mut a = 28;
                        while a + 4 <= msg.len() {
                            let alen = usize::from(u16::from_ne_bytes([msg[a], msg[a + 1]]));
                            let aty = u16::from_ne_bytes([msg[a + 2], msg[a + 3]]);
                            if alen < 4 || a + alen > msg.len() {
                                break;
                            }
                            let data = &msg[a + 4..a + alen];
                            match (aty, data.len()) {
                                (NDA_DST, 16) => dst = <[u8; 16]>::try_from(data).ok().map(Ipv6Addr::from),
                                (NDA_LLADDR, 6) => mac = <[u8; 6]>::try_from(data).ok(),
                                _ => {}
                            }
                            a += (alen + 3) & !3;
                        }
                        if let (Some(dst), Some(mac)) = (dst, mac) {
                            self.v6_table.insert(dst, mac);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// The address whose MAC a packet to `dst` must carry.
    fn next_hop(&self, dst: Ipv4Addr) -> Ipv4Addr {
        let d = u32::from_ne_bytes(dst.octets());
        let best = self.routes.iter().filter(|(net, mask, _)| d & mask == *net).max_by_key(|(_, mask, _)| u32::from_be(*mask).count_ones());
        match best {
            Some(&(_, _, gw)) if gw != 0 => Ipv4Addr::from(gw.to_ne_bytes()),
            _ => dst,
        }
    }

    fn table_lookup(&self, dst: IpAddr) -> Option<[u8; 6]> {
        match dst {
            IpAddr::V4(d) => self.arp_table.get(&self.next_hop(d)).copied(),
            IpAddr::V6(d) => self.v6_table.get(&d).copied(),
        }
    }

    /// The next-hop MAC for `dst`, if known.
    pub fn lookup(&mut self, dst: IpAddr) -> Option<[u8; 6]> {
        let stale = self.read_at.is_none_or(|t| t.elapsed() >= NEIGH_MAX_AGE);
        if stale {
            let _ = self.refresh();
        }
        if let Some(mac) = self.table_lookup(dst) {
            return Some(mac);
        }
        if !stale && self.read_at.is_none_or(|t| t.elapsed() >= NEIGH_MISS_REFRESH) {
            let _ = self.refresh();
            if let Some(mac) = self.table_lookup(dst) {
                return Some(mac);
            }
        }
        self.learned.get(&dst).copied()
    }

    /// Remembers the source MAC of a frame from `src`.
    fn learn(&mut self, src: IpAddr, mac: [u8; 6]) {
        if self.learned.get(&src) == Some(&mac) {
            return;
        }
        if self.learned.len() >= LEARNED_MAX {
            self.learned.clear();
        }
        self.learned.insert(src, mac);
    }
}

/// Parses a MAC address written `aa:bb:cc:dd:ee:ff` (as `/proc/net/arp` and configs write it).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// One's-complement sum of `data` (RFC 1071), added to `acc`, not folded.
fn csum_add(mut acc: u32, data: &[u8]) -> u32 {
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
fn write_tx_csum_request(md: &mut [u8], csum_start: usize) {
    md.fill(0);
    md[0..8].copy_from_slice(&u64::from(libc::XDP_TXMD_FLAGS_CHECKSUM).to_ne_bytes());
    md[8..10].copy_from_slice(&(csum_start as u16).to_ne_bytes());
    md[10..12].copy_from_slice(&6u16.to_ne_bytes());
}

fn csum_fold(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// How `write_v4_headers`/`write_v6_headers` fill the UDP checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum UdpCsum {
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
fn write_v4_headers(
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
fn write_udp(frame: &mut [u8], l4: usize, (src_ip, sport): (&[u8], u16), (dst_ip, dport): (&[u8], u16), udp_len: u16, csum: UdpCsum) -> usize {
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
fn write_v6_headers(frame: &mut [u8], src_mac: [u8; 6], dst_mac: [u8; 6], src: SocketAddrV6, dst: SocketAddrV6, payload_len: usize, csum: UdpCsum) -> usize {
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
struct Parsed {
    port: u16,
    src: SocketAddr,
    src_mac: [u8; 6],
    payload: std::ops::Range<usize>,
}

/// Ethernet [VLAN] → IPv4 (not a fragment) | IPv6 (UDP next header) → UDP. `None`: not one.
fn parse_frame(f: &[u8]) -> Option<Parsed> {
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

/// An AF_XDP socket bound to one queue of one interface, with its UMEM and rings.
#[derive(Debug)]
pub struct XskSocket {
    // Drop order: rings and the socket before the UMEM they reference.
    fill: Ring,
    comp: Ring,
    rx: Ring,
    tx: Ring,
    fd: OwnedFd,
    umem: Mapping,
    zerocopy: bool,
    /// Whether TX frames carry `struct xsk_tx_metadata` asking for the UDP checksum
    /// (`TX_META_LEN` bytes before each packet, see [`Self::tx_csum_offload`]).
    tx_meta: bool,
    /// Receive frames not in the fill ring.
    rx_free: Vec<u64>,
    /// Transmit frames we own.
    tx_free: Vec<u64>,
}

// SAFETY: the raw pointers point into mappings this struct owns; the kernel side of the rings is
// synchronised through the producer/consumer atomics, and `&mut self` serialises the user side.
// Moving the socket to another thread changes nothing about either.
unsafe impl Send for XskSocket {}

impl XskSocket {
    /// Binds to `queue` of interface `ifindex` (in the calling thread's network namespace):
    /// zero-copy if the driver supports it, else copy mode.
    ///
    /// In copy mode the UMEM is registered with TX metadata when the kernel takes it (Linux 6.11+,
    /// `XDP_UMEM_TX_METADATA_LEN`), so that sends leave the UDP checksum to the device or to the
    /// kernel's transmit path instead of summing every payload here. Zero-copy mode sums in
    /// software: whether a driver honours the request is a per-driver feature.
    ///
    /// `rx_frames` (a power of two) receive frames, also the fill and RX rings' size.
    pub fn open(ifindex: u32, queue: u32, rx_frames: usize) -> Result<Self, IoError> {
        if !rx_frames.is_power_of_two() || rx_frames > 1 << 20 {
            return Err(IoError::Os { op: "AF_XDP receive frames (a power of two)", source: io::ErrorKind::InvalidInput.into() });
        }
        let open_with = |mode, tx_meta| Self::open_with(ifindex, queue, rx_frames, mode, tx_meta);
        match open_with(libc::XDP_ZEROCOPY, false) {
            Ok(s) => Ok(s),
            Err(zc) => {
                let s = match open_with(libc::XDP_COPY, true) {
                    Ok(s) => s,
                    Err(meta) => {
                        tracing::debug!(error = %meta, "AF_XDP TX metadata refused: UDP checksums summed in software");
                        open_with(libc::XDP_COPY, false).map_err(os_err("AF_XDP bind (copy mode)"))?
                    }
                };
                tracing::info!(ifindex, queue, zerocopy_error = %zc, tx_csum_offload = s.tx_meta, "AF_XDP socket bound in copy mode");
                Ok(s)
            }
        }
    }

    fn open_with(ifindex: u32, queue: u32, rx_frames: usize, mode: u16, tx_meta: bool) -> io::Result<Self> {
        // SAFETY: plain socket creation; the result is checked.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let umem = Mapping::new((rx_frames + XSK_TX_FRAMES) * XSK_FRAME_SIZE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE, -1, 0)?;
        let reg = libc::xdp_umem_reg {
            addr: umem.ptr as u64,
            len: umem.len as u64,
            chunk_size: XSK_FRAME_SIZE as u32,
            headroom: 0,
            flags: if tx_meta { libc::XDP_UMEM_TX_METADATA_LEN } else { 0 },
            tx_metadata_len: if tx_meta { TX_META_LEN as u32 } else { 0 },
        };
        setsockopt(raw, libc::XDP_UMEM_REG, &reg)?;
        let (rx_ring, tx_ring) = (rx_frames as u32, XSK_TX_FRAMES as u32);
        for (opt, size) in
            [(libc::XDP_UMEM_FILL_RING, rx_ring), (libc::XDP_UMEM_COMPLETION_RING, tx_ring), (libc::XDP_RX_RING, rx_ring), (libc::XDP_TX_RING, tx_ring)]
        {
            setsockopt(raw, opt, &(size as libc::c_int))?;
        }
        // SAFETY: all-zero is a valid xdp_mmap_offsets (plain integers).
        let mut off: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::xdp_mmap_offsets>() as libc::socklen_t;
        // SAFETY: `off`/`len` describe a writable buffer of the right size.
        let rc = unsafe { libc::getsockopt(raw, libc::SOL_XDP, libc::XDP_MMAP_OFFSETS, (&raw mut off).cast(), &mut len) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let fill = Ring::map(raw, &off.fr, libc::XDP_UMEM_PGOFF_FILL_RING, 8, rx_ring)?;
        let comp = Ring::map(raw, &off.cr, libc::XDP_UMEM_PGOFF_COMPLETION_RING, 8, tx_ring)?;
        let rx = Ring::map(raw, &off.rx, libc::XDP_PGOFF_RX_RING as u64, 16, rx_ring)?;
        let tx = Ring::map(raw, &off.tx, libc::XDP_PGOFF_TX_RING as u64, 16, tx_ring)?;
        let sxdp = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: mode | libc::XDP_USE_NEED_WAKEUP,
            sxdp_ifindex: ifindex,
            sxdp_queue_id: queue,
            sxdp_shared_umem_fd: 0,
        };
        // SAFETY: `sxdp` is a valid sockaddr_xdp of the length passed.
        let rc = unsafe { libc::bind(raw, (&raw const sxdp).cast(), std::mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        if mode == libc::XDP_COPY {
            // Copy mode transmits at most `max_tx_budget` frames per kick, 32 unless raised
            // (Linux 6.17+: XDP_MAX_TX_SKB_BUDGET, at most the TX ring's size). Older kernels
            // refuse the option and keep 32; `flush` kicks again while frames are left.
            let budget = tx_ring;
            match setsockopt(raw, XDP_MAX_TX_SKB_BUDGET, &budget) {
                Ok(()) => tracing::debug!(budget, "AF_XDP copy-mode TX budget raised"),
                Err(e) => tracing::debug!(error = %e, "AF_XDP copy-mode TX budget stays 32"),
            }
        }
        let mut s = Self {
            fill,
            comp,
            rx,
            tx,
            fd,
            umem,
            zerocopy: mode == libc::XDP_ZEROCOPY,
            tx_meta,
            rx_free: (0..rx_frames as u64).map(|i| i * XSK_FRAME_SIZE as u64).collect(),
            tx_free: (rx_frames as u64..(rx_frames + XSK_TX_FRAMES) as u64).map(|i| i * XSK_FRAME_SIZE as u64).collect(),
        };
        s.refill();
        Ok(s)
    }

    /// Whether the socket runs in zero-copy mode (else copy mode).
    pub fn zerocopy(&self) -> bool {
        self.zerocopy
    }

    /// Whether sends ask for the UDP checksum through TX metadata (`XDP_TXMD_FLAGS_CHECKSUM`):
    /// the frame carries the pseudo-header sum and the kernel's transmit path marks the skb
    /// `CHECKSUM_PARTIAL`, for the device to finish or `validate_xmit_skb` to sum in software
    /// when the device has no checksum offload.
    pub fn tx_csum_offload(&self) -> bool {
        self.tx_meta
    }

    /// Gives free receive frames to the kernel.
    fn refill(&mut self) {
        let n = self.fill.free(self.rx_free.len() as u32);
        for i in 0..n {
            let addr = self.rx_free.pop().unwrap_or_default();
            // SAFETY: slot `i` past our producer index is ours to write until `submit`.
            unsafe { self.fill.addr_slot(self.fill.cached_prod.wrapping_add(i)).write(addr) };
        }
        if n > 0 {
            self.fill.submit(n);
        }
    }

    /// Takes finished transmit frames back.
    fn reclaim(&mut self) {
        let n = self.comp.ready(self.comp.size);
        for i in 0..n {
            // SAFETY: entries between the consumer and producer indices were written by the kernel
            // and are ours to read until `release`.
            let addr = unsafe { self.comp.addr_slot(self.comp.cached_cons.wrapping_add(i)).read() };
            self.tx_free.push(addr & !(XSK_FRAME_SIZE as u64 - 1));
        }
        if n > 0 {
            self.comp.release(n);
        }
    }

    /// The UMEM bytes of frame `addr` (chunk-relative offsets allowed), `len` long.
    fn frame_mut(&mut self, addr: u64, len: usize) -> Option<&mut [u8]> {
        let start = usize::try_from(addr).ok()?;
        let end = start.checked_add(len)?;
        if end > self.umem.len {
            return None;
        }
        // SAFETY: `start..end` lies inside the UMEM mapping; the frame belongs to user space (it
        // came off the RX ring or the TX free list) so the kernel does not write it meanwhile, and
        // the borrow of `self` keeps the slice unique.
        Some(unsafe { std::slice::from_raw_parts_mut(self.umem.ptr.add(start), len) })
    }

    /// The kernel's counters for this socket (`XDP_STATISTICS`).
    fn statistics(&self) -> io::Result<libc::xdp_statistics> {
        // SAFETY: all-zero is a valid xdp_statistics (plain integers).
        let mut st: libc::xdp_statistics = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::xdp_statistics>() as libc::socklen_t;
        // SAFETY: `st`/`len` describe a writable buffer of the right size.
        let rc = unsafe { libc::getsockopt(self.fd.as_raw_fd(), libc::SOL_XDP, libc::XDP_STATISTICS, (&raw mut st).cast(), &mut len) };
        if rc == 0 { Ok(st) } else { Err(io::Error::last_os_error()) }
    }

    /// Tells the kernel to transmit what the TX ring holds (copy mode: does the transmitting, at
    /// most 32 frames per call, `EAGAIN` when more are left).
    fn kick(&self) -> Result<(), io::Error> {
        // SAFETY: a zero-length sendto with no buffer or address: only wakes the socket's TX path.
        let rc = unsafe { libc::sendto(self.fd.as_raw_fd(), std::ptr::null(), 0, libc::MSG_DONTWAIT, std::ptr::null(), 0) };
        if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }
}

impl AsFd for XskSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn setsockopt<T>(fd: libc::c_int, opt: libc::c_int, val: &T) -> io::Result<()> {
    // SAFETY: `val` is a live `T` of the size passed.
    let rc = unsafe { libc::setsockopt(fd, libc::SOL_XDP, opt, (val as *const T).cast(), std::mem::size_of::<T>() as libc::socklen_t) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

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

    /// Receives at most `n` datagrams per call from now on (see [`MmsgBackend::set_rx_limit`]).
    ///
    /// [`MmsgBackend::set_rx_limit`]: super::mmsg::MmsgBackend::set_rx_limit
    pub fn set_rx_limit(&mut self, n: usize) {
        self.rx_limit = n.clamp(1, self.config.rx_batch.max(1));
        self.slow.set_rx_limit(n);
    }

    /// Delivers up to `rx_batch` datagrams from the XSK, then from the kernel sockets (every
    /// `SLOW_PATH_EVERY`-th call while the XSK delivers, every call when it is idle), to
    /// `f(local_port, src, payload)`; waits up to `timeout` for either if none is ready.
    pub fn recv_batch<F>(&mut self, timeout: Option<Duration>, mut f: F) -> Result<usize, IoError>
    where
        F: FnMut(u16, SocketAddr, &mut [u8]),
    {
        let max = self.rx_limit.max(1);
        let mut n = self.recv_xsk(max, &mut f);
        self.slow_turn = self.slow_turn.wrapping_add(1);
        if n == 0 || (n < max && self.slow_turn.is_multiple_of(SLOW_PATH_EVERY)) {
            n += self.slow.recv_batch(Some(Duration::ZERO), &mut f)?;
        }
        if n > 0 || timeout == Some(Duration::ZERO) {
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
mod tests {
    use super::*;

    #[test]
    fn v4_headers_and_parse_round_trip() {
        let mut frame = vec![0u8; XSK_FRAME_SIZE];
        let payload = [0x80u8, 0x60, 0, 1, 0, 0, 0, 0, 0x11, 0x11, 0x11, 0x11, 9];
        frame[TX_HEADERS_V4..TX_HEADERS_V4 + payload.len()].copy_from_slice(&payload);
        let src = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 20000);
        let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 5000);
        let len = write_v4_headers(&mut frame, [2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], src, dst, 7, payload.len(), UdpCsum::Full);
        assert_eq!(len, TX_HEADERS_V4 + payload.len());
        let f = &frame[..len];
        // A correct header/UDP checksum sums to 0xffff (folds to 0).
        assert_eq!(csum_fold(csum_add(0, &f[14..34])), 0);
        let mut acc = csum_add(0, &f[26..34]);
        acc += 17 + (len - 34) as u32;
        assert_eq!(csum_fold(csum_add(acc, &f[34..])), 0);
        let p = parse_frame(f).unwrap();
        assert_eq!(p.port, 5000);
        assert_eq!(p.src, SocketAddr::V4(src));
        assert_eq!(p.src_mac, [2, 0, 0, 0, 0, 1]);
        assert_eq!(&f[p.payload], &payload);
    }

    #[test]
    fn v6_headers_and_parse_round_trip() {
        let mut frame = vec![0u8; XSK_FRAME_SIZE];
        let payload = [0x80u8, 0x60, 0, 2, 0, 0, 0, 0, 0x22, 0x22, 0x22, 0x22, 1, 2, 3];
        frame[TX_HEADERS_V6..TX_HEADERS_V6 + payload.len()].copy_from_slice(&payload);
        let src = SocketAddrV6::new("fd00::2".parse().unwrap(), 20000, 0, 0);
        let dst = SocketAddrV6::new("fd00::1".parse().unwrap(), 5000, 0, 0);
        let len = write_v6_headers(&mut frame, [2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], src, dst, payload.len(), UdpCsum::Full);
        assert_eq!(len, TX_HEADERS_V6 + payload.len());
        let f = &frame[..len];
        let mut acc = csum_add(0, &f[22..54]);
        acc += 17 + (len - 54) as u32;
        assert_eq!(csum_fold(csum_add(acc, &f[54..])), 0);
        let p = parse_frame(f).unwrap();
        assert_eq!((p.port, p.src), (5000, SocketAddr::V6(src)));
        assert_eq!(&f[p.payload], &payload);
    }

    /// What a device (or `skb_checksum_help`) does with a `CHECKSUM_PARTIAL` frame: sums from
    /// `start` to the end, seed included, and stores the complement at `start + offset`.
    fn finish_partial(frame: &mut [u8], start: usize, offset: usize) {
        let mut check = csum_fold(csum_add(0, &frame[start..]));
        if check == 0 {
            check = 0xffff;
        }
        frame[start + offset..start + offset + 2].copy_from_slice(&check.to_be_bytes());
    }

    #[test]
    fn partial_udp_checksum_finishes_to_the_full_one() {
        for payload_len in [0usize, 1, 13, 1200, 1201] {
            let payload: Vec<u8> = (0..payload_len).map(|i| (i * 37 + 11) as u8).collect();
            let (src4, dst4) = (SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 20000), SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 5000));
            let (src6, dst6) = (SocketAddrV6::new("fd00::2".parse().unwrap(), 20000, 0, 0), SocketAddrV6::new("fd00::1".parse().unwrap(), 5000, 0, 0));
            for v6 in [false, true] {
                let (headers, l4) = if v6 { (TX_HEADERS_V6, ETH_HLEN + IPV6_HLEN) } else { (TX_HEADERS_V4, ETH_HLEN + IPV4_HLEN) };
                let build = |csum| {
                    let mut frame = vec![0u8; XSK_FRAME_SIZE];
                    frame[headers..headers + payload_len].copy_from_slice(&payload);
                    let len = if v6 {
                        write_v6_headers(&mut frame, [2; 6], [4; 6], src6, dst6, payload_len, csum)
                    } else {
                        write_v4_headers(&mut frame, [2; 6], [4; 6], src4, dst4, 9, payload_len, csum)
                    };
                    frame.truncate(len);
                    frame
                };
                let full = build(UdpCsum::Full);
                let mut partial = build(UdpCsum::Partial);
                assert_ne!(partial, full, "v6 {v6}, {payload_len} bytes: the seed is not the checksum");
                finish_partial(&mut partial, l4, 6);
                assert_eq!(partial, full, "v6 {v6}, {payload_len} bytes");
            }
        }
        let mut md = [0xffu8; TX_META_LEN];
        write_tx_csum_request(&mut md, 34);
        assert_eq!(u64::from_ne_bytes(md[0..8].try_into().unwrap()), u64::from(libc::XDP_TXMD_FLAGS_CHECKSUM));
        assert_eq!(u16::from_ne_bytes([md[8], md[9]]), 34);
        assert_eq!(u16::from_ne_bytes([md[10], md[11]]), 6);
        assert!(md[12..].iter().all(|b| *b == 0));
    }

    /// Every truncation of valid IPv4, IPv6 and VLAN frames, and 50,000 corruptions of them:
    /// `parse_frame` never panics, and a payload it returns lies inside the frame.
    #[test]
    fn parse_frame_takes_any_bytes() {
        let payload = [0x80u8, 0x60, 0, 1, 0, 0, 0, 0, 0x11, 0x11, 0x11, 0x11, 9, 8, 7];
        let mut frames = Vec::new();
        for v6 in [false, true] {
            let mut f = vec![0u8; XSK_FRAME_SIZE];
            let headers = if v6 { TX_HEADERS_V6 } else { TX_HEADERS_V4 };
            f[headers..headers + payload.len()].copy_from_slice(&payload);
            let len = if v6 {
                let (s, d) = (SocketAddrV6::new("fd00::2".parse().unwrap(), 1, 0, 0), SocketAddrV6::new("fd00::1".parse().unwrap(), 2, 0, 0));
                write_v6_headers(&mut f, [2; 6], [4; 6], s, d, payload.len(), UdpCsum::Full)
            } else {
                let (s, d) = (SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 1), SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 2));
                write_v4_headers(&mut f, [2; 6], [4; 6], s, d, 1, payload.len(), UdpCsum::Full)
            };
            f.truncate(len);
            assert_eq!(&f[parse_frame(&f).unwrap().payload], &payload);
            let mut tagged = f[..12].to_vec();
            tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
            tagged.extend_from_slice(&f[12..]);
            assert_eq!(&tagged[parse_frame(&tagged).unwrap().payload], &payload, "one VLAN tag");
            frames.push(f);
            frames.push(tagged);
        }
        let check = |f: &[u8]| {
            if let Some(p) = parse_frame(f) {
                assert!(p.payload.start <= p.payload.end && p.payload.end <= f.len(), "{:?} of {}", p.payload, f.len());
            }
        };
        for f in &frames {
            for n in 0..f.len() {
                check(&f[..n]);
            }
        }
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..50_000 {
            let mut f = frames[(next() % frames.len() as u64) as usize].clone();
            for _ in 0..1 + next() % 4 {
                let i = (next() % f.len() as u64) as usize;
                f[i] = next() as u8;
            }
            let keep = f.len() - (next() % 8) as usize;
            check(&f[..keep]);
        }
    }

    #[test]
    fn parse_mac_and_reject_short() {
        assert_eq!(parse_mac("02:5c:00:01:02:0a"), Some([2, 0x5c, 0, 1, 2, 0x0a]));
        assert_eq!(parse_mac("02:5c:00"), None);
        assert!(parse_frame(&[0u8; 20]).is_none());
    }
}
