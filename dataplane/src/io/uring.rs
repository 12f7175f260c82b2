//! io_uring backend: multishot `recvmsg` into a provided-buffer ring, batched `SendMsg`s.
//!
//! Receive: every leg socket has one multishot `RecvMsgMulti` in flight, all drawing from one
//! provided-buffer ring per worker (buffer group [`BGID`], [`IoConfig::uring_rx_buffers`] buffers
//! of [`RX_BUF_BYTES`]). The kernel posts one completion per datagram naming the buffer it filled;
//! the layout of a filled buffer is
//!
//! ```text
//!  0               16                       44
//!  | recvmsg_out   | name (sockaddr_in6,    | payload ...
//!  | (namelen,     |  28 bytes, padded)     |
//!  |  controllen,  |                        |
//!  |  payloadlen,  |                        |
//!  |  flags)       |                        |
//! ```
//!
//! The payload is handed to the worker in place (it may decrypt there), and the buffer goes back
//! to the ring as soon as the callback returns; the ring's tail is published once per batch.
//!
//! With [`IoConfig::gro`] the sockets ask for `UDP_GRO`, the template asks for the control
//! message too (it lands between the name and the payload), and the buffers are 64 KiB (at
//! most [`GRO_RING_BUFFERS`] of them): a coalesced run is split into its datagrams, and one that
//! does not fit the rest of a batch keeps its buffer until the next call delivers the rest.
//! When a multishot ends (no `IORING_CQE_F_MORE`: the ring ran out of buffers, `ENOBUFS`, or an
//! error) the socket is re-armed at the next `recv_batch`.
//!
//! Wake-up ([`super::wake`]): a one-shot `PollAdd` (`POLLIN`) of the backend's eventfd is kept in
//! the ring (`UD_WAKE`). A write to the eventfd completes it, which ends the `io_uring_enter`
//! wait; the `recv_batch` that reaps the completion reads the counter (one `read`, counted, never
//! delivered as a datagram) and re-arms the poll at its next call, which completes at once if a
//! wake came in between. Not a `Read` in the ring: that would take the counter when the first
//! wake is written, not when the worker looks, so a burst of wakes would end two waits instead of
//! one.
//!
//! Send: one `SendMsg` SQE per GSO group (with the `UDP_SEGMENT` cmsg on runs), all pushed and
//! submitted with one `io_uring_enter` per batch, which also waits for their completions (so the
//! caller's payloads are only borrowed for the call). Completions are reaped; errors are counted.
//! Receive completions that show up meanwhile are kept for the next `recv_batch`.
//! Per-flow order: the SQEs of a batch are issued inline in queue order, and `MSG_DONTWAIT` makes
//! a full socket buffer complete with `-EAGAIN` (counted as a drop) instead of being punted to an
//! io-wq worker, so a flow's sends are not reordered. `IOSQE_IO_LINK` is deliberately not used: one
//! failed send would cancel the rest of its chain.
//!
//! Availability is checked at construction ([`probe`]): the `kernel.io_uring_disabled` sysctl,
//! `io_uring_setup` errors (`ENOSYS`, `EPERM`), the features used here (extended enter arguments,
//! `SENDMSG`/`RECVMSG`, provided-buffer rings, multishot recvmsg: kernel 6.0). Failure is a
//! [`UringUnavailable`] naming the reason, so the daemon can fall back to `mmsg` and log why.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use io_uring::types::{BufRingEntry, CancelBuilder, Fd, SubmitArgs, Timespec};
use io_uring::{IoUring, Probe, cqueue, opcode};

use super::sys::{self, GroCmsg, GsoCmsg, LegSocket, RAW_ADDR_LEN, RawAddr};
use super::wake::{WakeFd, Waker};
use super::{GRO_BUF_BYTES, IoConfig, IoCounters, IoError, RX_BUF_BYTES, SendCache, SendParts, SendRegistry, StagedSend, Staging, Transmit, send_staged};

/// The buffer group id of the worker's provided-buffer ring (one ring per worker and io_uring).
pub const BGID: u16 = 0;

const KIND_MASK: u64 = 0xff << 56;
const UD_RECV: u64 = 1 << 56;
const UD_SEND: u64 = 2 << 56;
/// The user data of the wake-up eventfd's `PollAdd`.
const UD_WAKE: u64 = 3 << 56;
/// `sizeof(struct io_uring_recvmsg_out)`.
const RECVMSG_OUT: usize = 16;
/// Where the payload starts in a filled buffer.
const PAYLOAD_AT: usize = RECVMSG_OUT + RAW_ADDR_LEN;
/// ... and with `UDP_GRO`, whose control message sits between the name and the payload.
const PAYLOAD_AT_GRO: usize = PAYLOAD_AT + GroCmsg::SPACE;
/// Provided buffers with `UDP_GRO`: each holds a whole coalesced run, so there are fewer of
/// them (256 × 64 KiB = 16 MiB per worker at most).
const GRO_RING_BUFFERS: u16 = 256;

const _: () = assert!(RX_BUF_BYTES - PAYLOAD_AT >= super::MAX_DATAGRAM);

/// Why io_uring cannot be used (the daemon falls back to `mmsg` and logs this).
#[derive(Debug, thiserror::Error)]
pub enum UringUnavailable {
    /// `kernel.io_uring_disabled = 2`.
    #[error("disabled by sysctl kernel.io_uring_disabled=2")]
    DisabledBySysctl,
    /// `io_uring_setup` returned `EPERM` (sysctl `1` and not in `kernel.io_uring_group`, or a
    /// seccomp/container policy).
    #[error("io_uring_setup not permitted (kernel.io_uring_disabled={sysctl}): {source}")]
    NotPermitted {
        /// The sysctl's value, or "absent".
        sysctl: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// `io_uring_setup` returned `ENOSYS`: the kernel has no io_uring.
    #[error("kernel has no io_uring (io_uring_setup: ENOSYS)")]
    NotSupported,
    /// The kernel has io_uring but lacks something this backend uses.
    #[error("kernel {release} lacks {feature}")]
    MissingFeature {
        /// What is missing.
        feature: &'static str,
        /// `uname -r`.
        release: String,
    },
    /// Any other setup failure.
    #[error("{op}: {source}")]
    Setup {
        /// What failed.
        op: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// `/proc/sys/kernel/io_uring_disabled` (absent before Linux 6.6).
pub fn io_uring_disabled_sysctl() -> Option<u8> {
    std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").ok()?.trim().parse().ok()
}

/// The kernel release (`uname -r`).
fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()).unwrap_or_default()
}

/// `(major, minor)` of a kernel release string such as `6.18.44-foo`.
pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// What a sysctl value alone says, before trying `io_uring_setup`.
pub fn check_sysctl(value: Option<u8>) -> Result<(), UringUnavailable> {
    if value == Some(2) { Err(UringUnavailable::DisabledBySysctl) } else { Ok(()) }
}

/// Maps an `io_uring_setup` failure to a reason.
pub fn classify_setup_error(sysctl: Option<u8>, err: io::Error) -> UringUnavailable {
    match err.raw_os_error() {
        Some(libc::ENOSYS) => UringUnavailable::NotSupported,
        Some(libc::EPERM) | Some(libc::EACCES) => {
            UringUnavailable::NotPermitted { sysctl: sysctl.map_or_else(|| "absent".to_owned(), |v| v.to_string()), source: err }
        }
        _ => UringUnavailable::Setup { op: "io_uring_setup", source: err },
    }
}

/// What the kernel release alone says about multishot recvmsg (6.0).
pub fn check_release(release: &str) -> Result<(), UringUnavailable> {
    match parse_release(release) {
        Some(v) if v >= (6, 0) => Ok(()),
        _ => Err(UringUnavailable::MissingFeature { feature: "multishot recvmsg (Linux 6.0)", release: release.to_owned() }),
    }
}

/// Builds a ring and checks every feature this backend needs.
fn setup(sq_entries: u32) -> Result<IoUring, UringUnavailable> {
    let sysctl = io_uring_disabled_sysctl();
    check_sysctl(sysctl)?;
    let release = kernel_release();
    check_release(&release)?;
    let ring = IoUring::builder().setup_clamp().setup_cqsize(sq_entries.saturating_mul(4)).build(sq_entries).map_err(|e| classify_setup_error(sysctl, e))?;
    if !ring.params().is_feature_ext_arg() {
        return Err(UringUnavailable::MissingFeature { feature: "IORING_FEAT_EXT_ARG", release });
    }
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe).map_err(|source| UringUnavailable::Setup { op: "IORING_REGISTER_PROBE", source })?;
    for (code, feature) in
        [(opcode::SendMsg::CODE, "IORING_OP_SENDMSG"), (opcode::RecvMsg::CODE, "IORING_OP_RECVMSG"), (opcode::PollAdd::CODE, "IORING_OP_POLL_ADD")]
    {
        if !probe.is_supported(code) {
            return Err(UringUnavailable::MissingFeature { feature, release });
        }
    }
    Ok(ring)
}

/// Checks that io_uring is usable here (builds and drops a small ring with a buffer ring).
pub fn probe() -> Result<(), UringUnavailable> {
    let ring = setup(8)?;
    let mut bufs = BufRing::new(8, RX_BUF_BYTES);
    bufs.register(&ring)?;
    bufs.unregister(&ring);
    Ok(())
}

/// A page, so the buffer ring is page-aligned as the kernel requires.
#[derive(Clone, Copy)]
#[repr(C, align(4096))]
struct Page([u8; 4096]);

/// The provided-buffer ring and its buffers.
struct BufRing {
    ring: Box<[Page]>,
    bufs: Box<[u8]>,
    entries: u16,
    tail: u16,
    /// Bytes per buffer.
    size: usize,
}

impl std::fmt::Debug for BufRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufRing").field("entries", &self.entries).field("tail", &self.tail).finish()
    }
}

impl BufRing {
    /// `entries` buffers (rounded up to a power of two, 1..=32768) of `size` bytes, all handed
    /// to the ring.
    fn new(entries: u16, size: usize) -> Self {
        let entries = entries.clamp(1, 1 << 15).next_power_of_two();
        let ring_bytes = usize::from(entries) * size_of::<BufRingEntry>();
        let pages = ring_bytes.div_ceil(size_of::<Page>());
        let mut r = Self {
            ring: vec![Page([0; 4096]); pages].into_boxed_slice(),
            bufs: vec![0; usize::from(entries) * size].into_boxed_slice(),
            entries,
            tail: 0,
            size,
        };
        for bid in 0..entries {
            r.recycle(bid);
        }
        r.publish();
        r
    }

    fn base(&mut self) -> *mut BufRingEntry {
        self.ring.as_mut_ptr().cast()
    }

    fn register(&mut self, ring: &IoUring) -> Result<(), UringUnavailable> {
        let addr = self.base() as u64;
        // SAFETY: `self.ring` holds `entries` page-aligned entries and lives (unmoved: boxed) until
        // `unregister`, which the owner calls before dropping it.
        unsafe { ring.submitter().register_buf_ring_with_flags(addr, self.entries, BGID, 0) }.map_err(|source| {
            if source.raw_os_error() == Some(libc::EINVAL) {
                UringUnavailable::MissingFeature { feature: "provided-buffer rings (Linux 5.19)", release: kernel_release() }
            } else {
                UringUnavailable::Setup { op: "IORING_REGISTER_PBUF_RING", source }
            }
        })
    }

    fn unregister(&mut self, ring: &IoUring) {
        let _ = ring.submitter().unregister_buf_ring(BGID);
    }

    /// Hands buffer `bid` back to the kernel (visible after [`BufRing::publish`]).
    fn recycle(&mut self, bid: u16) {
        let idx = usize::from(self.tail & (self.entries - 1));
        let addr = self.bufs.as_mut_ptr().wrapping_add(usize::from(bid) * self.size) as u64;
        let base = self.base();
        // SAFETY: `idx < entries` and the ring allocation holds `entries` entries; entries past
        // the tail are not read by the kernel until the tail is published, so no one else
        // accesses this one now.
        let e = unsafe { &mut *base.add(idx) };
        e.set_addr(addr);
        e.set_len(u32::try_from(self.size).unwrap_or(u32::MAX));
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Publishes the tail so the kernel sees the recycled buffers.
    fn publish(&mut self) {
        let base = self.base();
        // SAFETY: `base` is the first entry of a live, page-aligned ring; its `resv` field is the
        // ring's tail (u16, 2-byte aligned), which the kernel reads concurrently, hence atomic with
        // Release so the entries written before are visible to it.
        let tail = unsafe { AtomicU16::from_ptr(BufRingEntry::tail(base).cast_mut()) };
        tail.store(self.tail, Ordering::Release);
    }

    fn buf_mut(&mut self, bid: u16) -> Option<&mut [u8]> {
        let at = usize::from(bid) * self.size;
        self.bufs.get_mut(at..at + self.size)
    }
}

#[derive(Debug)]
struct RxSocket {
    leg: Arc<LegSocket>,
    serial: u32,
    armed: bool,
}

/// Datagrams `next..` of the coalesced run in buffer `bid` (payload at `at`, `len` bytes, in
/// segments of `seg`), from `src` to `port`.
#[derive(Clone, Copy, Debug)]
struct Partial {
    port: u16,
    bid: u16,
    src: SocketAddr,
    at: usize,
    len: usize,
    seg: usize,
    next: usize,
}

#[derive(Clone, Copy, Debug)]
struct Cqe {
    user_data: u64,
    result: i32,
    flags: u32,
}

impl From<cqueue::Entry> for Cqe {
    fn from(e: cqueue::Entry) -> Self {
        Self { user_data: e.user_data(), result: e.result(), flags: e.flags() }
    }
}

/// One `SendMsg` of a batch.
#[derive(Clone, Copy, Debug)]
struct SendOp {
    fd: RawFd,
    /// Index into `TxScratch::hdrs`.
    hdr: usize,
    count: usize,
}

/// Send-side scratch: per-group names, cmsgs and `msghdr`s the SQEs point at.
#[derive(Debug, Default)]
struct TxScratch {
    names: Vec<RawAddr>,
    cmsgs: Vec<GsoCmsg>,
    hdrs: Vec<libc::msghdr>,
    ops: Vec<SendOp>,
    refused: Vec<usize>,
}

/// Memory the kernel reads through pointers: the multishot `msghdr` template and the send scratch.
#[derive(Debug)]
struct KernelShared {
    recv_hdr: Box<libc::msghdr>,
    tx: TxScratch,
}

// SAFETY: the raw pointers inside point into this struct's own boxes/vectors or, during one
// `send_batch` call only, into the caller's payloads; they are used only by syscalls made by the
// thread that owns the backend.
unsafe impl Send for KernelShared {}

/// The io_uring backend of one worker.
pub struct UringBackend {
    // Dropped first (after `Drop::drop` cancelled everything and unregistered the buffer ring).
    ring: IoUring,
    bufs: BufRing,
    shared: KernelShared,
    config: IoConfig,
    registry: Arc<SendRegistry>,
    sockets: HashMap<u16, RxSocket>,
    rearm: Vec<u16>,
    wake: WakeFd,
    /// The wake-up state: whether its `PollAdd` is in the ring, or it failed for good.
    wake_state: WakeState,
    pending: VecDeque<Cqe>,
    /// The rest of a coalesced run that did not fit the last batch (its buffer not yet recycled).
    partial: Option<Partial>,
    /// Whether sockets ask for `UDP_GRO` (the buffers and the receive layout depend on it).
    gro: bool,
    next_serial: u32,
    cache: SendCache,
    staging: Staging,
    gso: bool,
    counters: IoCounters,
    rx_limit: usize,
}

impl std::fmt::Debug for UringBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringBackend")
            .field("bufs", &self.bufs)
            .field("ports", &self.ports())
            .field("gso", &self.gso)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

/// Where the wake-up eventfd's `PollAdd` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WakeState {
    /// Not in the ring: pushed at the next `recv_batch`.
    Idle,
    /// In the ring.
    Armed,
    /// It completed with an error other than an interruption: not re-armed, or every wait would end
    /// at once. Wake-ups are lost from then on (the worker's wait bounds the delay); counted in
    /// `rx_errors`.
    Failed,
}

fn recv_user_data(serial: u32, port: u16) -> u64 {
    UD_RECV | (u64::from(serial & 0xff_ffff) << 16) | u64::from(port)
}

impl UringBackend {
    /// Builds the ring and the buffer ring, or says why io_uring can't be used here.
    pub fn new(config: IoConfig, registry: Arc<SendRegistry>) -> Result<Self, IoError> {
        let ring = setup(config.uring_sq_entries.clamp(64, 32768))?;
        let gro = config.gro;
        let mut bufs = if gro {
            BufRing::new(config.uring_rx_buffers.min(GRO_RING_BUFFERS), PAYLOAD_AT_GRO + GRO_BUF_BYTES)
        } else {
            BufRing::new(config.uring_rx_buffers, RX_BUF_BYTES)
        };
        bufs.register(&ring)?;
        let mut recv_hdr = Box::new(sys::empty_msghdr());
        recv_hdr.msg_namelen = RAW_ADDR_LEN as libc::socklen_t;
        if gro {
            // Multishot recvmsg copies this much control data into each buffer, after the name.
            recv_hdr.msg_controllen = GroCmsg::SPACE;
        }
        Ok(Self {
            partial: None,
            gro,
            pending: VecDeque::with_capacity(usize::from(bufs.entries) + 64),
            ring,
            bufs,
            shared: KernelShared { recv_hdr, tx: TxScratch::default() },
            sockets: HashMap::new(),
            rearm: Vec::new(),
            wake: WakeFd::new()?,
            wake_state: WakeState::Idle,
            next_serial: 0,
            cache: SendCache::new(Arc::clone(&registry)),
            staging: Staging::default(),
            gso: config.gso,
            counters: IoCounters::default(),
            rx_limit: config.rx_batch.max(1),
            registry,
            config,
        })
    }

    /// Opens a leg port (0: the kernel picks one) and publishes it for sending; its multishot
    /// receive is armed at the next `recv_batch`. Returns the port.
    pub fn add_port(&mut self, port: u16) -> Result<u16, IoError> {
        if port != 0 && (self.sockets.contains_key(&port) || self.registry.contains(port)) {
            return Err(IoError::PortInUse { port });
        }
        let leg = Arc::new(sys::bind_udp(self.config.local_ip, port, self.config.socket_buffer_bytes)?);
        let port = leg.port;
        if self.gro
            && let Err(e) = sys::enable_gro(leg.socket())
        {
            tracing::warn!(port, error = %e, "UDP_GRO refused; receiving one datagram per buffer");
        }
        self.registry.insert(port, Arc::clone(&leg))?;
        self.next_serial = self.next_serial.wrapping_add(1);
        self.sockets.insert(port, RxSocket { leg, serial: self.next_serial, armed: false });
        self.rearm.push(port);
        Ok(port)
    }

    /// Cancels the port's receive (synchronously, so the socket is really closed once every
    /// worker's send snapshot dropped it) and withdraws it from the registry.
    pub fn remove_port(&mut self, port: u16) -> Result<(), IoError> {
        let sock = self.sockets.remove(&port).ok_or(IoError::UnknownPort { port })?;
        self.rearm.retain(|&p| p != port);
        if let Some(p) = self.partial.take_if(|p| p.port == port) {
            self.bufs.recycle(p.bid);
            self.bufs.publish();
        }
        if sock.armed {
            let timeout = Timespec::new().sec(1);
            match self.ring.submitter().register_sync_cancel(Some(timeout), CancelBuilder::user_data(recv_user_data(sock.serial, port))) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(source) => return Err(IoError::Os { op: "IORING_REGISTER_SYNC_CANCEL", source }),
            }
        }
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

    /// Whether GSO is still on (it goes off for good once the kernel refused it).
    pub fn gso_enabled(&self) -> bool {
        self.gso
    }

    /// A handle that ends this backend's current or next wait; see [`super::Backend::waker`].
    pub fn waker(&self) -> Waker {
        self.wake.waker()
    }

    /// Pushes an SQE, submitting first if the queue is full.
    fn push(&mut self, sqe: &io_uring::squeue::Entry) -> Result<(), IoError> {
        loop {
            // SAFETY: every SQE built here points only at memory that outlives its completion:
            // the multishot msghdr template and buffer ring (owned by `self`, cancelled in Drop),
            // or send scratch and payloads that `send_batch` keeps alive until it has reaped the
            // completion of every send it pushed.
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                return Ok(());
            }
            self.counters.syscalls += 1;
            self.ring.submit().map_err(|source| IoError::Os { op: "io_uring_enter(submit)", source })?;
        }
    }

    fn arm_pending(&mut self) -> Result<(), IoError> {
        if self.wake_state == WakeState::Idle {
            let sqe = opcode::PollAdd::new(Fd(self.wake.as_raw_fd()), libc::POLLIN as u32).build().user_data(UD_WAKE);
            self.push(&sqe)?;
            self.wake_state = WakeState::Armed;
        }
        while let Some(port) = self.rearm.pop() {
            let Some(s) = self.sockets.get_mut(&port) else { continue };
            if s.armed {
                continue;
            }
            s.armed = true;
            let sqe =
                opcode::RecvMsgMulti::new(Fd(s.leg.as_raw_fd()), &raw const *self.shared.recv_hdr, BGID).build().user_data(recv_user_data(s.serial, port));
            self.push(&sqe)?;
        }
        Ok(())
    }

    /// One `io_uring_enter`: submits what is queued and waits up to `wait` for a completion.
    fn enter(&mut self, wait: Option<Duration>) -> Result<(), IoError> {
        self.counters.syscalls += 1;
        let r = match wait {
            Some(d) if d.is_zero() => self.ring.submit(),
            None => self.ring.submit_and_wait(1),
            Some(d) => {
                let ts = Timespec::new().sec(d.as_secs()).nsec(d.subsec_nanos());
                let args = SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
        match r {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)) => Ok(()),
            Err(source) => Err(IoError::Os { op: "io_uring_enter", source }),
        }
    }

    /// Delivers up to `rx_batch` datagrams to `f(local_port, src, payload)`, waiting up to
    /// `timeout` (`None`: forever) if none is ready.
    pub fn recv_batch<F>(&mut self, timeout: Option<Duration>, mut f: F) -> Result<usize, IoError>
    where
        F: FnMut(u16, SocketAddr, &mut [u8]),
    {
        self.arm_pending()?;
        let ready = !self.pending.is_empty() || !self.ring.completion().is_empty();
        if !ready {
            self.enter(timeout)?;
        } else if !self.ring.submission().is_empty() {
            self.enter(Some(Duration::ZERO))?;
        }
        let cap = self.rx_limit.max(1);
        let mut delivered = 0;
        if let Some(p) = self.partial.take() {
            delivered += self.deliver_run(p, cap, &mut f);
            if self.partial.is_some() {
                self.bufs.publish();
                return Ok(delivered);
            }
        }
        let mut handled = 0;
        while delivered < cap && handled < 2 * cap && self.partial.is_none() {
            let cqe = match self.pending.pop_front() {
                Some(c) => c,
                None => match self.ring.completion().next() {
                    Some(e) => Cqe::from(e),
                    None => break,
                },
            };
            handled += 1;
            match cqe.user_data & KIND_MASK {
                UD_RECV => delivered += self.on_recv(cqe, cap - delivered, &mut f),
                UD_WAKE => self.on_wake(cqe),
                _ => {}
            }
        }
        self.bufs.publish();
        Ok(delivered)
    }

    /// Handles the wake-up poll's completion: drains the eventfd (counting a consumed wake) and
    /// re-arms the poll at the next `recv_batch`, unless it failed for good.
    fn on_wake(&mut self, cqe: Cqe) {
        self.wake_state = WakeState::Idle;
        if cqe.result > 0 {
            self.counters.syscalls += 1;
            if self.wake.consume() {
                self.counters.wakeups += 1;
            }
        } else if cqe.result < 0 && !matches!(-cqe.result, libc::EINTR | libc::EAGAIN | libc::ECANCELED) {
            self.counters.rx_errors += 1;
            self.wake_state = WakeState::Failed;
        }
    }

    /// Handles one receive completion, delivering at most `room` datagrams (the rest of a
    /// coalesced run waits in [`UringBackend::partial`]); returns how many it delivered.
    fn on_recv<F>(&mut self, cqe: Cqe, room: usize, f: &mut F) -> usize
    where
        F: FnMut(u16, SocketAddr, &mut [u8]),
    {
        let port = (cqe.user_data & 0xffff) as u16;
        let serial = ((cqe.user_data >> 16) & 0xff_ffff) as u32;
        let live = self.sockets.get(&port).is_some_and(|s| s.serial & 0xff_ffff == serial);
        let mut delivered = 0;
        if let Some(bid) = cqueue::buffer_select(cqe.flags) {
            let run = if live && cqe.result > 0 { self.parse(port, bid, cqe.result as usize) } else { None };
            match run {
                Some(run) => delivered = self.deliver_run(run, room, f),
                None => self.bufs.recycle(bid),
            }
        }
        if cqe.result < 0 && !matches!(-cqe.result, libc::ENOBUFS | libc::ECANCELED) {
            self.counters.rx_errors += 1;
        }
        if !cqueue::more(cqe.flags)
            && live
            && let Some(s) = self.sockets.get_mut(&port)
        {
            s.armed = false;
            self.rearm.push(port);
        }
        delivered
    }

    /// Reads a filled buffer's header: the run of datagrams it holds, or `None` (counted) when
    /// it is unusable.
    fn parse(&mut self, port: u16, bid: u16, len: usize) -> Option<Partial> {
        let payload_at = if self.gro { PAYLOAD_AT_GRO } else { PAYLOAD_AT };
        let Some(buf) = self.bufs.buf_mut(bid) else {
            self.counters.rx_errors += 1;
            return None;
        };
        let len = len.min(buf.len());
        if len < payload_at {
            self.counters.rx_errors += 1;
            return None;
        }
        let word = |at: usize| u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
        let (namelen, controllen, payloadlen, flags) = (word(0), word(4), word(8), word(12));
        if flags & (libc::MSG_TRUNC as usize) != 0 || payloadlen > len - payload_at {
            self.counters.rx_truncated += 1;
            return None;
        }
        let Some(src) = sys::decode_addr(&buf[RECVMSG_OUT..PAYLOAD_AT], namelen.min(RAW_ADDR_LEN)) else {
            self.counters.rx_errors += 1;
            return None;
        };
        let seg = if self.gro { GroCmsg::from_bytes(&buf[PAYLOAD_AT..PAYLOAD_AT + controllen.min(GroCmsg::SPACE)]) } else { None };
        let seg = seg.unwrap_or(payloadlen).max(1);
        if payloadlen.div_ceil(seg) > 1 {
            self.counters.rx_gro_datagrams += payloadlen.div_ceil(seg) as u64;
        }
        Some(Partial { port, bid, src, at: payload_at, len: payloadlen, seg, next: 0 })
    }

    /// Delivers the datagrams of a run, at most `room`: the buffer goes back to the ring once
    /// the run is done, else the rest waits in `partial`.
    fn deliver_run<F>(&mut self, run: Partial, room: usize, f: &mut F) -> usize
    where
        F: FnMut(u16, SocketAddr, &mut [u8]),
    {
        let segments = run.len.div_ceil(run.seg).max(1);
        let (delivered, k) = match self.bufs.buf_mut(run.bid).and_then(|b| b.get_mut(run.at..run.at + run.len)) {
            Some(buf) => super::deliver_segments(buf, run.seg, run.next, room, run.port, run.src, &mut self.counters, f),
            None => (0, segments),
        };
        if k < segments {
            self.partial = Some(Partial { next: k, ..run });
        } else {
            self.bufs.recycle(run.bid);
        }
        delivered
    }

    /// See [`super::Backend::set_rx_limit`].
    pub fn set_rx_limit(&mut self, n: usize) {
        self.rx_limit = n.clamp(1, self.config.rx_batch.max(1));
    }

    /// Sends `pkts`: one `SendMsg` per GSO group, one submit per batch. Returns how many datagrams
    /// the kernel accepted; failures are counted.
    pub fn send_batch<'a, I>(&mut self, pkts: I) -> usize
    where
        I: IntoIterator<Item = Transmit<'a>>,
    {
        send_staged(self, pkts)
    }

    fn flush(&mut self) -> usize {
        let plan = &self.staging.plan;
        let n = plan.groups().len();
        let tx = &mut self.shared.tx;
        tx.names.clear();
        tx.names.resize(n, RawAddr::default());
        tx.cmsgs.clear();
        tx.cmsgs.resize(n, GsoCmsg::default());
        tx.hdrs.clear();
        tx.hdrs.resize(n, sys::empty_msghdr());
        tx.ops.clear();
        tx.refused.clear();
        for (g, group) in plan.groups().iter().enumerate() {
            let Some(leg) = self.cache.get(group.local_port) else { continue };
            let Some(namelen) = tx.names[g].encode(group.dst, leg.ipv6) else {
                self.counters.send_errors += group.count as u64;
                continue;
            };
            let hdr = &mut tx.hdrs[g];
            hdr.msg_name = (&raw mut tx.names[g]).cast();
            hdr.msg_namelen = namelen;
            hdr.msg_iov = (&raw mut self.staging.iovs[group.start]).cast();
            hdr.msg_iovlen = group.count;
            if group.is_gso() {
                tx.cmsgs[g].set_segment(u16::try_from(group.segment).unwrap_or(u16::MAX));
                hdr.msg_control = (&raw mut tx.cmsgs[g]).cast();
                hdr.msg_controllen = GsoCmsg::SPACE;
            }
            tx.ops.push(SendOp { fd: leg.as_raw_fd(), hdr: g, count: group.count });
        }
        let mut sent = self.run_sends(0);
        if !self.shared.tx.refused.is_empty() {
            // The kernel refused GSO: remember, and resend those groups one datagram per message.
            self.gso = false;
            self.counters.gso_refused += 1;
            let tx = &mut self.shared.tx;
            let first = tx.ops.len();
            let refused = std::mem::take(&mut tx.refused);
            for &k in &refused {
                let op = tx.ops[k];
                let hdr = tx.hdrs[op.hdr];
                for s in 0..op.count {
                    let mut one = hdr;
                    one.msg_iov = hdr.msg_iov.wrapping_add(s);
                    one.msg_iovlen = 1;
                    one.msg_control = std::ptr::null_mut();
                    one.msg_controllen = 0;
                    tx.hdrs.push(one);
                    tx.ops.push(SendOp { fd: op.fd, hdr: tx.hdrs.len() - 1, count: 1 });
                }
            }
            tx.refused = refused;
            sent += self.run_sends(first);
        }
        sent
    }

    /// Pushes `SendMsg`s for `ops[first..]`, submits them with one enter that waits for them,
    /// and reaps every one of their completions before returning.
    fn run_sends(&mut self, first: usize) -> usize {
        let total = self.shared.tx.ops.len() - first;
        if total == 0 {
            return 0;
        }
        for k in first..self.shared.tx.ops.len() {
            let op = self.shared.tx.ops[k];
            let sqe =
                opcode::SendMsg::new(Fd(op.fd), &raw const self.shared.tx.hdrs[op.hdr]).flags(libc::MSG_DONTWAIT as u32).build().user_data(UD_SEND | k as u64);
            if self.push(&sqe).is_err() {
                // Could not even submit: nothing of the rest goes out.
                let lost: usize = self.shared.tx.ops[k..].iter().map(|o| o.count).sum();
                self.counters.send_errors += lost as u64;
                return self.reap_sends(k - first);
            }
        }
        self.reap_sends(total)
    }

    /// Waits for `outstanding` send completions (submitting what is queued).
    fn reap_sends(&mut self, mut outstanding: usize) -> usize {
        let mut sent = 0;
        let mut first_enter = true;
        while outstanding > 0 {
            if first_enter || self.ring.completion().is_empty() {
                first_enter = false;
                self.counters.syscalls += 1;
                match self.ring.submit_and_wait(1) {
                    Ok(_) => {}
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)) => {}
                    Err(_) => {
                        // The ring is broken; the sends' memory must still outlive them, so keep
                        // waiting would be the only sound option. Count and bail out loudly.
                        self.counters.send_errors += outstanding as u64;
                        panic!("io_uring_enter failed with sends in flight");
                    }
                }
            }
            while let Some(e) = self.ring.completion().next() {
                let cqe = Cqe::from(e);
                if cqe.user_data & KIND_MASK != UD_SEND {
                    self.pending.push_back(cqe);
                    continue;
                }
                outstanding = outstanding.saturating_sub(1);
                let k = (cqe.user_data & 0xffff_ffff) as usize;
                let Some(op) = self.shared.tx.ops.get(k).copied() else { continue };
                if cqe.result >= 0 {
                    sent += op.count;
                    self.counters.tx_datagrams += op.count as u64;
                    if op.count > 1 {
                        self.counters.gso_sends += 1;
                    }
                } else if op.count > 1 && sys::is_gso_refusal(-cqe.result) {
                    self.shared.tx.refused.push(k);
                } else {
                    self.counters.send_errors += op.count as u64;
                }
            }
        }
        sent
    }
}

impl Drop for UringBackend {
    fn drop(&mut self) {
        // Stop every multishot before the buffer ring and msghdr template are freed.
        let _ = self.ring.submitter().register_sync_cancel(Some(Timespec::new().sec(1)), CancelBuilder::any());
        self.bufs.unregister(&self.ring);
    }
}

impl StagedSend for UringBackend {
    fn send_parts(&mut self) -> SendParts<'_> {
        SendParts { staging: &mut self.staging, cache: &mut self.cache, config: &self.config, gso: self.gso, counters: &mut self.counters }
    }

    fn flush_staged(&mut self) -> usize {
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_parsing() {
        assert_eq!(parse_release("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(parse_release("5.15.0"), Some((5, 15)));
        assert_eq!(parse_release("garbage"), None);
        assert!(check_release("6.0.0").is_ok());
        assert!(matches!(check_release("5.19.17"), Err(UringUnavailable::MissingFeature { .. })));
        assert!(matches!(check_release(""), Err(UringUnavailable::MissingFeature { .. })));
    }

    #[test]
    fn sysctl_and_setup_errors_are_classified() {
        assert!(check_sysctl(None).is_ok());
        assert!(check_sysctl(Some(0)).is_ok());
        assert!(check_sysctl(Some(1)).is_ok(), "1 still allows privileged/group members: try setup");
        let e = check_sysctl(Some(2)).unwrap_err();
        assert!(matches!(e, UringUnavailable::DisabledBySysctl));
        assert!(e.to_string().contains("io_uring_disabled=2"));

        let e = classify_setup_error(Some(1), io::Error::from_raw_os_error(libc::EPERM));
        assert!(matches!(e, UringUnavailable::NotPermitted { .. }));
        assert!(e.to_string().contains("io_uring_disabled=1"), "{e}");
        let e = classify_setup_error(None, io::Error::from_raw_os_error(libc::ENOSYS));
        assert!(matches!(e, UringUnavailable::NotSupported));
        let e = classify_setup_error(None, io::Error::from_raw_os_error(libc::ENOMEM));
        assert!(matches!(e, UringUnavailable::Setup { .. }));
        let io_err: IoError = e.into();
        assert!(io_err.to_string().starts_with("io_uring unavailable:"), "{io_err}");
    }

    #[test]
    fn probe_agrees_with_the_sysctl() {
        match (io_uring_disabled_sysctl(), probe()) {
            (Some(2), r) => assert!(matches!(r, Err(UringUnavailable::DisabledBySysctl))),
            (Some(0) | None, r) => r.expect("io_uring enabled by sysctl on a >= 6.0 kernel must probe ok"),
            (_, r) => eprintln!("kernel.io_uring_disabled=1: probe says {r:?}"),
        }
    }
}
