//! The interface the socket is bound to and the neighbour (ARP/NDP) entries frames are addressed
//! with, read from the kernel and refreshed on a miss.

use super::*;

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
    pub(super) ifname: String,
    pub(super) ifindex: u32,
    pub(super) arp: File,
    pub(super) route: File,
    pub(super) netlink: OwnedFd,
    pub(super) nl_seq: u32,
    pub(super) nl_buf: Vec<u8>,
    pub(super) v6_table: HashMap<Ipv6Addr, [u8; 6]>,
    /// (destination, mask, gateway), network-order bytes as u32 in memory order.
    pub(super) routes: Vec<(u32, u32, u32)>,
    pub(super) arp_table: HashMap<Ipv4Addr, [u8; 6]>,
    pub(super) learned: HashMap<IpAddr, [u8; 6]>,
    pub(super) read_at: Option<Instant>,
    pub(super) text: String,
}

impl Neighbours {
    pub(super) fn open(ifname: &str, ifindex: u32) -> Result<Self, IoError> {
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

    pub(super) fn read(file: &mut File, text: &mut String) -> io::Result<()> {
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
    pub(super) fn dump_v6(&mut self) -> io::Result<()> {
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
    pub(super) fn next_hop(&self, dst: Ipv4Addr) -> Ipv4Addr {
        let d = u32::from_ne_bytes(dst.octets());
        let best = self.routes.iter().filter(|(net, mask, _)| d & mask == *net).max_by_key(|(_, mask, _)| u32::from_be(*mask).count_ones());
        match best {
            Some(&(_, _, gw)) if gw != 0 => Ipv4Addr::from(gw.to_ne_bytes()),
            _ => dst,
        }
    }

    pub(super) fn table_lookup(&self, dst: IpAddr) -> Option<[u8; 6]> {
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
    pub(super) fn learn(&mut self, src: IpAddr, mac: [u8; 6]) {
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
