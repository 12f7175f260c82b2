//! `recvmmsg`/`sendmmsg` on mio readiness: the portable backend, and the fallback when io_uring
//! is unavailable.
//!
//! Receive: every leg socket is registered (edge-triggered, as mio does on Linux) in the worker's
//! `Poll`. A readiness event puts the socket on a FIFO `ready` queue; `recv_batch` drains queued
//! sockets with `recvmmsg(MSG_DONTWAIT)` into backend-owned buffers until a call returns fewer
//! datagrams than asked (the queue is empty: a later datagram raises a new edge) or the batch cap is
//! hit, in which case the socket goes back to the end of the queue so one busy leg cannot starve
//! the others. While sockets are queued, `epoll_wait` is called with a zero timeout, so new edges
//! are still picked up.
//!
//! The backend's wake-up eventfd ([`super::wake`]) sits in the same epoll set under its own token;
//! its event is drained (one `read`) by the `recv_batch` that sees it, which then does not wait.
//!
//! With [`IoConfig::gro`], every socket asks for `UDP_GRO`: the kernel may hand over a run of one
//! flow's equal-size datagrams (a video frame's burst) as one message of up to 64 KiB with the
//! segment size in a control message; `recv_batch` splits it and delivers each datagram on its
//! own. A message that does not fit the rest of a batch is resumed by the next call, so the
//! batch bound holds in datagrams, not messages.
//!
//! Send: the staged batch is planned into GSO groups, groups are sorted by local port, and each
//! port's groups go out with `sendmmsg` (one message per group, `UDP_SEGMENT` on runs).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::sys::{self, GroCmsg, GsoCmsg, LegSocket, RAW_ADDR_LEN, RawAddr};
use super::wake::{WakeFd, Waker};
use super::{
    GRO_BUF_BYTES, GRO_SLOTS, IoConfig, IoCounters, IoError, RX_BUF_BYTES, SendCache, SendParts, SendRegistry, StagedSend, Staging, Transmit, send_staged,
};

/// The epoll token of the wake-up eventfd: above every port's token (`Token(port)`).
const WAKE_TOKEN: Token = Token(1 << 16);

/// The `recvmmsg`/`sendmmsg` backend of one worker.
#[derive(Debug)]
pub struct MmsgBackend {
    config: IoConfig,
    registry: Arc<SendRegistry>,
    poll: Poll,
    events: Events,
    wake: WakeFd,
    sockets: HashMap<u16, RxSocket>,
    ready: VecDeque<u16>,
    cache: SendCache,
    staging: Staging,
    gso: bool,
    counters: IoCounters,
    rx: RxScratch,
    tx: TxScratch,
    rx_limit: usize,
}

#[derive(Debug)]
struct RxSocket {
    leg: Arc<LegSocket>,
    queued: bool,
}

/// Receive buffers and the `mmsghdr`s pointing into them.
#[derive(Debug)]
struct RxScratch {
    bufs: Box<[u8]>,
    /// Bytes per message buffer: [`RX_BUF_BYTES`], or [`GRO_BUF_BYTES`] on `UDP_GRO` sockets.
    slot: usize,
    /// Whether messages carry a `UDP_GRO` control buffer.
    gro: bool,
    names: Vec<RawAddr>,
    iovs: Vec<libc::iovec>,
    cmsgs: Vec<GroCmsg>,
    msgs: Vec<libc::mmsghdr>,
    /// Where delivery of the last `recvmmsg` stopped when a batch filled up mid-way.
    pending: Option<Pending>,
}

/// The undelivered rest of the last `recvmmsg`: messages `msg..received` of `port`'s socket,
/// the first of them from datagram `seg` of its coalesced run.
#[derive(Clone, Copy, Debug)]
struct Pending {
    port: u16,
    received: usize,
    msg: usize,
    seg: usize,
}

// SAFETY: the raw pointers point into this struct's own heap buffers (moving the struct does not
// move them), and are only used by the syscall made from the thread that owns the struct.
unsafe impl Send for RxScratch {}

/// Per-message send state for one `sendmmsg` run.
#[derive(Debug, Default)]
struct TxScratch {
    names: Vec<RawAddr>,
    cmsgs: Vec<GsoCmsg>,
    msgs: Vec<libc::mmsghdr>,
    /// Group index (into the plan) of each message.
    groups: Vec<u32>,
    /// Datagrams carried by each message.
    counts: Vec<usize>,
}

// SAFETY: the pointers in `msgs` point into `names`, `cmsgs` and the staging `iovec`s only during
// one `send_batch` call; nothing dereferences them afterwards.
unsafe impl Send for TxScratch {}

fn empty_mmsghdr() -> libc::mmsghdr {
    libc::mmsghdr { msg_hdr: sys::empty_msghdr(), msg_len: 0 }
}

impl RxScratch {
    fn new(batch: usize, gro: bool) -> Self {
        let (slots, slot) = if gro { (batch.min(GRO_SLOTS), GRO_BUF_BYTES) } else { (batch, RX_BUF_BYTES) };
        Self {
            bufs: vec![0; slots * slot].into_boxed_slice(),
            slot,
            gro,
            names: vec![RawAddr::default(); slots],
            iovs: vec![sys::empty_iovec(); slots],
            cmsgs: vec![GroCmsg::default(); if gro { slots } else { 0 }],
            msgs: vec![empty_mmsghdr(); slots],
            pending: None,
        }
    }

    /// One `recvmmsg` of at most `want` messages.
    fn recv(&mut self, fd: RawFd, want: usize) -> io::Result<usize> {
        let want = want.min(self.msgs.len());
        let base = self.bufs.as_mut_ptr();
        for i in 0..want {
            self.iovs[i] = libc::iovec { iov_base: base.wrapping_add(i * self.slot).cast(), iov_len: self.slot };
            let mut hdr = sys::empty_msghdr();
            hdr.msg_name = (&raw mut self.names[i]).cast();
            hdr.msg_namelen = RAW_ADDR_LEN as libc::socklen_t;
            hdr.msg_iov = &raw mut self.iovs[i];
            hdr.msg_iovlen = 1;
            if self.gro {
                self.cmsgs[i] = GroCmsg::default();
                hdr.msg_control = (&raw mut self.cmsgs[i]).cast();
                hdr.msg_controllen = GroCmsg::SPACE;
            }
            self.msgs[i] = libc::mmsghdr { msg_hdr: hdr, msg_len: 0 };
        }
        let vlen = libc::c_uint::try_from(want).unwrap_or(libc::c_uint::MAX);
        // SAFETY: `msgs[..want]` are initialised above; each points at its own name buffer
        // (`msg_namelen` bytes), one iovec over a distinct `slot`-byte slice of `bufs` and, with
        // GRO, its own control buffer (`msg_controllen` bytes), all owned by `self` and alive
        // across the call. `fd` is an open socket borrowed by the caller.
        let n = unsafe { libc::recvmmsg(fd, self.msgs.as_mut_ptr(), vlen, libc::MSG_DONTWAIT, std::ptr::null_mut()) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }

    /// Delivers the datagrams of messages `from.msg..from.received` (from datagram `from.seg` of
    /// the first) to `f`, at most `room`; returns how many, and where it stopped if `room` ran out.
    fn deliver<F>(&mut self, from: Pending, room: usize, counters: &mut IoCounters, f: &mut F) -> (usize, Option<Pending>)
    where
        F: FnMut(u16, SocketAddr, &mut [u8]),
    {
        let mut delivered = 0;
        let mut seg0 = from.seg;
        for i in from.msg..from.received {
            if delivered == room {
                return (delivered, Some(Pending { msg: i, seg: seg0, ..from }));
            }
            let hdr = &self.msgs[i].msg_hdr;
            let len = self.msgs[i].msg_len as usize;
            if hdr.msg_flags & libc::MSG_TRUNC != 0 || len > self.slot {
                counters.rx_truncated += 1;
                seg0 = 0;
                continue;
            }
            let Some(src) = sys::decode_addr(&self.names[i].0, hdr.msg_namelen as usize) else {
                counters.rx_errors += 1;
                seg0 = 0;
                continue;
            };
            let seg = if self.gro { self.cmsgs[i].segment(hdr.msg_controllen).unwrap_or(len).max(1) } else { len.max(1) };
            let segments = len.div_ceil(seg).max(1);
            if segments > 1 && seg0 == 0 {
                counters.rx_gro_datagrams += segments as u64;
            }
            let at = i * self.slot;
            let (n, next) = super::deliver_segments(&mut self.bufs[at..at + len], seg, seg0, room - delivered, from.port, src, counters, f);
            delivered += n;
            if next < segments {
                return (delivered, Some(Pending { msg: i, seg: next, ..from }));
            }
            seg0 = 0;
        }
        (delivered, None)
    }
}

impl MmsgBackend {
    /// A backend with no ports yet.
    pub fn new(config: IoConfig, registry: Arc<SendRegistry>) -> Result<Self, IoError> {
        let poll = Poll::new().map_err(|source| IoError::Os { op: "epoll_create", source })?;
        let wake = WakeFd::new()?;
        poll.registry()
            .register(&mut SourceFd(&wake.as_raw_fd()), WAKE_TOKEN, Interest::READABLE)
            .map_err(|source| IoError::Os { op: "epoll_ctl(ADD) the wake-up eventfd", source })?;
        let batch = config.rx_batch.max(1);
        Ok(Self {
            wake,
            rx_limit: batch,
            gso: config.gso,
            events: Events::with_capacity(256),
            rx: RxScratch::new(batch, config.gro),
            tx: TxScratch::default(),
            sockets: HashMap::new(),
            ready: VecDeque::new(),
            cache: SendCache::new(Arc::clone(&registry)),
            staging: Staging::default(),
            counters: IoCounters::default(),
            registry,
            poll,
            config,
        })
    }

    /// Opens a leg port (0: the kernel picks one), registers it for reading and publishes it for
    /// sending; returns the port.
    pub fn add_port(&mut self, port: u16) -> Result<u16, IoError> {
        if port != 0 && (self.sockets.contains_key(&port) || self.registry.contains(port)) {
            return Err(IoError::PortInUse { port });
        }
        let leg = Arc::new(sys::bind_udp(self.config.local_ip, port, self.config.socket_buffer_bytes)?);
        let port = leg.port;
        if self.rx.gro
            && let Err(e) = sys::enable_gro(leg.socket())
        {
            // Datagrams then simply arrive one per message; nothing else changes.
            tracing::warn!(port, error = %e, "UDP_GRO refused; receiving one datagram per message");
        }
        self.poll
            .registry()
            .register(&mut SourceFd(&leg.as_raw_fd()), Token(usize::from(port)), Interest::READABLE)
            .map_err(|source| IoError::Os { op: "epoll_ctl(ADD) a leg socket", source })?;
        if let Err(e) = self.registry.insert(port, Arc::clone(&leg)) {
            let _ = self.poll.registry().deregister(&mut SourceFd(&leg.as_raw_fd()));
            return Err(e);
        }
        // Registered edge-triggered after bind: anything that arrived in between would raise no
        // edge, so look once.
        self.sockets.insert(port, RxSocket { leg, queued: true });
        self.ready.push_back(port);
        Ok(port)
    }

    /// Stops reading a leg port and withdraws it from the registry. The socket closes once every
    /// worker's send snapshot has dropped it (at their next send batch).
    pub fn remove_port(&mut self, port: u16) -> Result<(), IoError> {
        let sock = self.sockets.remove(&port).ok_or(IoError::UnknownPort { port })?;
        self.ready.retain(|&p| p != port);
        if self.rx.pending.is_some_and(|p| p.port == port) {
            self.rx.pending = None;
        }
        let _ = self.poll.registry().deregister(&mut SourceFd(&sock.leg.as_raw_fd()));
        self.registry.remove(port);
        self.cache.refresh();
        Ok(())
    }

    /// The ports this backend receives on.
    pub fn ports(&self) -> Vec<u16> {
        let mut p: Vec<u16> = self.sockets.keys().copied().collect();
        p.sort_unstable();
        p
    }

    /// The counters so far.
    pub fn counters(&self) -> &IoCounters {
        &self.counters
    }

    /// The epoll descriptor: readable when a registered socket has a new readiness edge (the
    /// AF_XDP backend waits on it next to its XSK). Datagrams still queued from an earlier edge
    /// are not signalled: drain with a zero-timeout [`MmsgBackend::recv_batch`] first.
    pub(crate) fn epoll_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd as _;
        self.poll.as_raw_fd()
    }

    /// Whether GSO is still on (it goes off for good once the kernel refused it).
    pub fn gso_enabled(&self) -> bool {
        self.gso
    }

    /// A handle that ends this backend's current or next wait; see [`super::Backend::waker`].
    pub fn waker(&self) -> Waker {
        self.wake.waker()
    }

    fn poll_events(&mut self, timeout: Option<Duration>) -> Result<(), IoError> {
        self.counters.syscalls += 1;
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(source) => return Err(IoError::Os { op: "epoll_wait", source }),
        }
        let mut woken = false;
        for ev in self.events.iter() {
            if ev.token() == WAKE_TOKEN {
                woken = true;
                continue;
            }
            let Ok(port) = u16::try_from(ev.token().0) else { continue };
            if let Some(s) = self.sockets.get_mut(&port)
                && !s.queued
            {
                s.queued = true;
                self.ready.push_back(port);
            }
        }
        // Edge-triggered: each wake is an edge of its own, and one read takes the whole counter.
        // A wake between the epoll_wait and this read leaves a stale edge: the next wait returns
        // at once, reads nothing and counts nothing.
        if woken {
            self.counters.syscalls += 1;
            if self.wake.consume() {
                self.counters.wakeups += 1;
            }
        }
        Ok(())
    }

    /// Delivers up to `rx_batch` datagrams to `f(local_port, src, payload)`; waits up to `timeout`
    /// (`None`: forever) only if no socket is known to be readable. A wake-up ends the wait.
    pub fn recv_batch<F>(&mut self, timeout: Option<Duration>, mut f: F) -> Result<usize, IoError>
    where
        F: FnMut(u16, SocketAddr, &mut [u8]),
    {
        let cap = self.rx_limit.max(1);
        let mut delivered = 0;
        // The rest of a coalesced run (or of the last recvmmsg) that did not fit the last batch.
        if let Some(p) = self.rx.pending.take() {
            let (n, rest) = self.rx.deliver(p, cap, &mut self.counters, &mut f);
            delivered += n;
            self.rx.pending = rest;
            if rest.is_some() {
                return Ok(delivered);
            }
        }
        let wait = if self.ready.is_empty() && delivered == 0 { timeout } else { Some(Duration::ZERO) };
        self.poll_events(wait)?;
        let mut calls = 0;
        while delivered < cap && calls < cap {
            let Some(port) = self.ready.pop_front() else { break };
            let Some(sock) = self.sockets.get_mut(&port) else { continue };
            let want = cap - delivered;
            calls += 1;
            self.counters.syscalls += 1;
            match self.rx.recv(sock.leg.as_raw_fd(), want) {
                Ok(n) => {
                    let from = Pending { port, received: n, msg: 0, seg: 0 };
                    let (got, rest) = self.rx.deliver(from, cap - delivered, &mut self.counters, &mut f);
                    delivered += got;
                    self.rx.pending = rest;
                    // A full read (or one cut short by the batch) may have left more queued.
                    if n == want.min(self.rx.msgs.len()) || rest.is_some() {
                        self.ready.push_back(port);
                    } else {
                        sock.queued = false;
                    }
                    if rest.is_some() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => sock.queued = false,
                Err(e) => {
                    if e.kind() != io::ErrorKind::Interrupted {
                        self.counters.rx_errors += 1;
                    }
                    // Keep it queued (an error may hide data behind it); the call cap bounds the work.
                    self.ready.push_back(port);
                }
            }
        }
        Ok(delivered)
    }

    /// See [`super::Backend::set_rx_limit`].
    pub fn set_rx_limit(&mut self, n: usize) {
        self.rx_limit = n.clamp(1, self.config.rx_batch.max(1));
    }

    /// Sends `pkts` in batches: GSO groups per flow, one `sendmmsg` per local port and round.
    /// Returns how many datagrams the kernel accepted; failures are counted.
    pub fn send_batch<'a, I>(&mut self, pkts: I) -> usize
    where
        I: IntoIterator<Item = Transmit<'a>>,
    {
        send_staged(self, pkts)
    }

    /// Sends the staged plan, one `sendmmsg` run per local port.
    fn flush(&mut self) -> usize {
        let mut sent = 0;
        let order_len = self.staging.plan.order().len();
        let mut a = 0;
        while a < order_len {
            let order = self.staging.plan.order();
            let port = self.staging.plan.groups()[order[a] as usize].local_port;
            let mut b = a + 1;
            while b < order_len && self.staging.plan.groups()[order[b] as usize].local_port == port {
                b += 1;
            }
            sent += self.send_run(port, a, b);
            a = b;
        }
        sent
    }

    /// Sends the groups `order[a..b]` (all from `port`).
    fn send_run(&mut self, port: u16, a: usize, b: usize) -> usize {
        let Some(leg) = self.cache.get(port).cloned() else {
            return 0;
        };
        let plan = &self.staging.plan;
        let m = b - a;
        let tx = &mut self.tx;
        tx.names.clear();
        tx.names.resize(m, RawAddr::default());
        tx.cmsgs.clear();
        tx.cmsgs.resize(m, GsoCmsg::default());
        tx.msgs.clear();
        tx.groups.clear();
        tx.counts.clear();
        for (j, &g) in plan.order()[a..b].iter().enumerate() {
            let group = &plan.groups()[g as usize];
            let Some(namelen) = tx.names[j].encode(group.dst, leg.ipv6) else {
                self.counters.send_errors += group.count as u64;
                continue;
            };
            let mut hdr = sys::empty_msghdr();
            hdr.msg_name = (&raw mut tx.names[j]).cast();
            hdr.msg_namelen = namelen;
            hdr.msg_iov = (&raw mut self.staging.iovs[group.start]).cast();
            hdr.msg_iovlen = group.count;
            if group.is_gso() {
                tx.cmsgs[j].set_segment(u16::try_from(group.segment).unwrap_or(u16::MAX));
                hdr.msg_control = (&raw mut tx.cmsgs[j]).cast();
                hdr.msg_controllen = GsoCmsg::SPACE;
            }
            tx.msgs.push(libc::mmsghdr { msg_hdr: hdr, msg_len: 0 });
            tx.groups.push(g);
            tx.counts.push(group.count);
        }
        let fd = leg.as_raw_fd();
        let (mut sent, refused) = sendmmsg_all(fd, &mut tx.msgs, &tx.counts, &mut self.counters);
        if let Some(at) = refused {
            // The kernel refused GSO: remember, and send the rest one datagram per message.
            self.gso = false;
            self.counters.gso_refused += 1;
            let mut split = Vec::with_capacity(tx.counts[at..].iter().sum());
            for k in at..tx.msgs.len() {
                let hdr = tx.msgs[k].msg_hdr;
                for s in 0..tx.counts[k] {
                    let mut one = hdr;
                    one.msg_iov = hdr.msg_iov.wrapping_add(s);
                    one.msg_iovlen = 1;
                    one.msg_control = std::ptr::null_mut();
                    one.msg_controllen = 0;
                    split.push(libc::mmsghdr { msg_hdr: one, msg_len: 0 });
                }
            }
            let ones = vec![1; split.len()];
            sent += sendmmsg_all(fd, &mut split, &ones, &mut self.counters).0;
        }
        sent
    }
}

/// `sendmmsg` until every message is sent or failed; returns the datagrams sent and, if the
/// kernel refused a GSO message, its index (nothing from there on was sent).
fn sendmmsg_all(fd: RawFd, msgs: &mut [libc::mmsghdr], counts: &[usize], counters: &mut IoCounters) -> (usize, Option<usize>) {
    let mut sent = 0;
    let mut off = 0;
    while off < msgs.len() {
        let vlen = libc::c_uint::try_from(msgs.len() - off).unwrap_or(libc::c_uint::MAX);
        counters.syscalls += 1;
        // SAFETY: every message in `msgs[off..]` points at a name, control buffer and iovecs the
        // caller keeps alive and unmoved across the call (its scratch vectors and the payloads
        // borrowed for the current `send_batch`); `fd` is an open socket the caller holds an `Arc` to.
        let n = unsafe { libc::sendmmsg(fd, msgs[off..].as_mut_ptr(), vlen, libc::MSG_DONTWAIT) };
        if n > 0 {
            for &c in &counts[off..off + n as usize] {
                sent += c;
                counters.tx_datagrams += c as u64;
                if c > 1 {
                    counters.gso_sends += 1;
                }
            }
            off += n as usize;
            continue;
        }
        let err = io::Error::last_os_error();
        let errno = err.raw_os_error().unwrap_or(0);
        match err.kind() {
            io::ErrorKind::Interrupted => {}
            io::ErrorKind::WouldBlock => {
                // Socket buffer full: drop the rest of this run, as a congested link would.
                counters.send_errors += counts[off..].iter().sum::<usize>() as u64;
                break;
            }
            _ if counts[off] > 1 && sys::is_gso_refusal(errno) => return (sent, Some(off)),
            _ => {
                counters.send_errors += counts[off] as u64;
                off += 1;
            }
        }
    }
    (sent, None)
}

impl StagedSend for MmsgBackend {
    fn send_parts(&mut self) -> SendParts<'_> {
        SendParts { staging: &mut self.staging, cache: &mut self.cache, config: &self.config, gso: self.gso, counters: &mut self.counters }
    }

    fn flush_staged(&mut self) -> usize {
        self.flush()
    }
}
