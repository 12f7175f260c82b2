//! Batched UDP I/O backends: they move datagrams, never parse them.
//!
//! Contract (the worker glue converts to and from core types; nothing here knows RTP):
//!
//! - A backend belongs to one worker and owns that worker's UDP sockets, one per leg port
//!   ([`Backend::add_port`] / [`Backend::remove_port`], cold path).
//! - Receive: [`Backend::recv_batch`] hands each datagram to a callback as
//!   `(local_port, src, &mut [u8])`. The buffer belongs to the backend and is reused after the
//!   callback returns; the worker may rewrite/decrypt in place but must copy out whatever it keeps.
//!   At most [`IoConfig::rx_batch`] datagrams per call (bounded work per loop turn).
//! - Send: [`Backend::send_batch`] takes [`Transmit`]s in the order the worker produced them and
//!   sends them in batches. A worker must be able to send from a port owned by *another* worker (a
//!   publisher's worker sends to a subscriber from the subscriber leg's port), so every socket is
//!   also published in a shared [`SendRegistry`]; each backend keeps a private snapshot of it and
//!   refreshes the snapshot only when the registry's generation changes (one atomic load per
//!   batch on the hot path). Concurrent `sendmsg` on one UDP socket from several threads is safe.
//! - UDP GSO: packets of one flow `(local_port, dst)` with the same size (the last of a run may be
//!   shorter) are sent as one `UDP_SEGMENT` send, up to [`MAX_GSO_SEGMENTS`]; see [`plan`]. If the
//!   kernel refuses GSO (`EIO`/`EINVAL`), the backend remembers it and sends one datagram per
//!   message from then on.
//! - Hot-path failures are counted in [`IoCounters`], never returned as errors or logged.
//! - Wake-up: [`Backend::waker`] hands out a [`Waker`] another thread calls after queueing
//!   something for this worker; the worker's current (or next) wait in `recv_batch` then ends at
//!   once. See [`wake`].
//!
//! Two implementations: [`mmsg`] (recvmmsg/sendmmsg on mio readiness, the portable fallback) and
//! [`uring`] (io_uring multishot recvmsg into a provided-buffer ring, batched `SendMsg`s).
//! Besides them, [`sendto`]: datagrams built in a scratch and sent with `sendmmsg` from a socket
//! that is no leg's (a worker's ChannelData to TURN clients, from the TURN port).

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

pub mod mmsg;
pub mod plan;
pub mod sendto;
mod sys;
pub mod uring;
pub mod wake;
pub mod xsk;

pub use mmsg::MmsgBackend;
pub use sendto::SendToBatch;
pub use sys::LegSocket;
pub use uring::{UringBackend, UringUnavailable};
pub use wake::Waker;
pub use xsk::XskBackend;

/// The largest datagram a backend delivers: the core's, one constant for both layers.
pub use sluice_core::forward::MAX_DATAGRAM;
/// Receive buffer bytes per datagram: [`MAX_DATAGRAM`] plus slack. A longer datagram is
/// truncated by the kernel; the backend then counts it in [`IoCounters::rx_truncated`] and drops it.
pub const RX_BUF_BYTES: usize = 2048;
/// Receive buffer bytes per message on a `UDP_GRO` socket: the largest coalesced run the kernel
/// may hand over (one IP datagram's worth).
pub const GRO_BUF_BYTES: usize = 65_536;
/// Most messages per `recvmmsg` on `UDP_GRO` sockets (each may carry many datagrams; this bounds
/// a worker's receive buffers to 2 MiB).
pub const GRO_SLOTS: usize = 32;
/// Most segments in one GSO send (the kernel's `UDP_MAX_SEGMENTS` is 64 on older kernels).
pub const MAX_GSO_SEGMENTS: usize = 64;
/// Most payload bytes in one GSO send: one IPv4 datagram (65535 - 20 - 8).
pub const MAX_GSO_BYTES: usize = 65_507;

/// One datagram to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transmit<'a> {
    /// The local port it leaves from (the destination leg's port; may belong to another worker).
    pub local_port: u16,
    /// Where it goes.
    pub dst: SocketAddr,
    /// The UDP payload.
    pub payload: &'a [u8],
}

impl<'a> From<(u16, SocketAddr, &'a [u8])> for Transmit<'a> {
    fn from((local_port, dst, payload): (u16, SocketAddr, &'a [u8])) -> Self {
        Self { local_port, dst, payload }
    }
}

/// What a backend is built with.
#[derive(Clone, Debug)]
pub struct IoConfig {
    /// The local address every leg port is bound on (IPv4 or IPv6; `::` is dual-stack).
    pub local_ip: IpAddr,
    /// Most datagrams delivered by one [`Backend::recv_batch`].
    pub rx_batch: usize,
    /// Most datagrams planned and sent per round of [`Backend::send_batch`] (larger inputs are
    /// sent in several rounds).
    pub tx_batch: usize,
    /// Whether to try UDP GSO at all.
    pub gso: bool,
    /// Whether to ask for coalesced receives (`UDP_GRO`): a burst of one flow's datagrams comes
    /// out of one receive and one kernel buffer, split into its datagrams by the backend.
    pub gro: bool,
    /// Longest packet put into a GSO run. The kernel refuses (`EINVAL`) a segment that does not
    /// fit the route's MTU, which would switch GSO off for good, so bigger packets go out singly
    /// (and may be IP-fragmented as any oversized datagram). 1452 = 1500 - IPv6 - UDP headers.
    pub gso_max_segment: usize,
    /// `SO_RCVBUF`/`SO_SNDBUF` for new sockets, if set.
    pub socket_buffer_bytes: Option<usize>,
    /// io_uring: provided receive buffers per worker (rounded up to a power of two, at most 32768).
    pub uring_rx_buffers: u16,
    /// io_uring: submission queue entries.
    pub uring_sq_entries: u32,
    /// AF_XDP: the interface the worker's XSK binds to (required by [`BackendKind::Xsk`]).
    pub xsk_interface: Option<String>,
    /// AF_XDP: the RX queue of that interface the XSK binds to.
    pub xsk_queue: u32,
    /// AF_XDP: which path sends.
    pub xsk_tx: XskTx,
    /// AF_XDP: receive frames per XSK (a power of two; see [`xsk::XSK_RX_FRAMES`]).
    pub xsk_rx_frames: usize,
}

/// How the AF_XDP backend sends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum XskTx {
    /// The XSK's TX ring in zero-copy mode; the leg sockets (with GSO) in copy mode, where every
    /// ring frame is copied into a fresh skb and transmitted on its own, without segmentation
    /// batching (level with the socket path on veth, not faster: see `ebpf/README.md`).
    #[default]
    Auto,
    /// Always the XSK's TX ring (headers built here, next hop from the neighbour table).
    Ring,
    /// Always the leg sockets: AF_XDP receives, the kernel's UDP stack sends.
    Socket,
}

impl Default for IoConfig {
    fn default() -> Self {
        Self {
            local_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            rx_batch: 64,
            tx_batch: 1024,
            gso: true,
            gro: true,
            gso_max_segment: 1452,
            socket_buffer_bytes: None,
            uring_rx_buffers: 1024,
            uring_sq_entries: 1024,
            xsk_interface: None,
            xsk_queue: 0,
            xsk_tx: XskTx::Auto,
            xsk_rx_frames: xsk::XSK_RX_FRAMES,
        }
    }
}

/// Per-backend counters (owned by the worker; read with [`Backend::counters`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoCounters {
    /// System calls made on the hot path (poll/epoll_wait, recvmmsg, sendmmsg, io_uring_enter).
    pub syscalls: u64,
    /// Datagrams delivered to the worker.
    pub rx_datagrams: u64,
    /// Datagrams dropped on receive because they did not fit [`RX_BUF_BYTES`].
    pub rx_truncated: u64,
    /// Receive errors (other than "nothing to read"), and datagrams whose source was unreadable.
    pub rx_errors: u64,
    /// Datagrams the kernel accepted for sending.
    pub tx_datagrams: u64,
    /// Sends (messages) that carried a `UDP_SEGMENT` run of two or more datagrams.
    pub gso_sends: u64,
    /// Datagrams not sent: socket buffer full, unreachable, or any other send error.
    pub send_errors: u64,
    /// Datagrams not sent because no socket is registered for their local port.
    pub tx_unknown_port: u64,
    /// Times the kernel refused GSO (after which GSO stays off for this backend).
    pub gso_refused: u64,
    /// Datagrams that arrived coalesced with others in one `UDP_GRO` receive.
    pub rx_gro_datagrams: u64,
    /// AF_XDP, from the kernel (`XDP_STATISTICS`): frames the XSK dropped on receive (its RX
    /// ring full, no fill-ring frame, or any other reason), all included here.
    pub xsk_rx_dropped: u64,
    /// AF_XDP: of those, frames dropped because the RX ring was full (the worker fell behind).
    pub xsk_rx_ring_full: u64,
    /// AF_XDP: times a frame arrived with no free frame in the fill ring.
    pub xsk_fill_ring_empty: u64,
    /// AF_XDP: TX descriptors the kernel refused as invalid.
    pub xsk_tx_invalid: u64,
    /// Wake-ups ([`Waker::wake`], several coalesced into one when they came before the worker
    /// looked) that a `recv_batch` consumed: each ended a wait, or kept the next one from starting.
    pub wakeups: u64,
}

/// Cold-path errors.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// A system call failed while setting something up.
    #[error("{op}: {source}")]
    Os {
        /// What was being done.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Binding a leg port failed.
    #[error("binding UDP {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The port is already served (by this or another worker).
    #[error("local port {port} is already registered")]
    PortInUse {
        /// The port.
        port: u16,
    },
    /// The port is not served by this backend.
    #[error("local port {port} is not open on this backend")]
    UnknownPort {
        /// The port.
        port: u16,
    },
    /// io_uring cannot be used here; use `mmsg`.
    #[error("io_uring unavailable: {0}")]
    UringUnavailable(#[from] UringUnavailable),
    /// The configuration string names no backend.
    #[error("unknown I/O backend {0:?} (expected \"uring\", \"mmsg\" or \"xsk\")")]
    UnknownBackend(String),
}

/// The send sockets of every worker, keyed by local port, shared by all workers.
///
/// Written on the cold path (a leg port opens or closes); read by each backend into a private
/// snapshot whenever [`SendRegistry::generation`] moved. A removed socket stays open until the
/// last snapshot holding it is refreshed, so an in-flight send never hits a closed or reused fd.
#[derive(Debug, Default)]
pub struct SendRegistry {
    generation: AtomicU64,
    sockets: RwLock<HashMap<u16, Arc<LegSocket>>>,
}

impl SendRegistry {
    /// An empty registry, to be shared by every worker's backend.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Bumped on every change.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Publishes `socket` as the sender for `port`.
    pub fn insert(&self, port: u16, socket: Arc<LegSocket>) -> Result<(), IoError> {
        let mut map = self.sockets.write().unwrap_or_else(PoisonError::into_inner);
        if map.contains_key(&port) {
            return Err(IoError::PortInUse { port });
        }
        map.insert(port, socket);
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Withdraws the sender for `port`, returning it.
    pub fn remove(&self, port: u16) -> Option<Arc<LegSocket>> {
        let mut map = self.sockets.write().unwrap_or_else(PoisonError::into_inner);
        let old = map.remove(&port);
        if old.is_some() {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        old
    }

    /// The sender for `port`.
    pub fn get(&self, port: u16) -> Option<Arc<LegSocket>> {
        self.sockets.read().unwrap_or_else(PoisonError::into_inner).get(&port).cloned()
    }

    /// Whether `port` has a sender.
    pub fn contains(&self, port: u16) -> bool {
        self.sockets.read().unwrap_or_else(PoisonError::into_inner).contains_key(&port)
    }

    /// Copies the registry into `into` if it changed since `*seen`; returns whether it did.
    fn refresh<S: std::hash::BuildHasher>(&self, seen: &mut u64, into: &mut HashMap<u16, Arc<LegSocket>, S>) -> bool {
        let now = self.generation();
        if now == *seen {
            return false;
        }
        let map = self.sockets.read().unwrap_or_else(PoisonError::into_inner);
        into.clear();
        into.extend(map.iter().map(|(p, s)| (*p, Arc::clone(s))));
        // Read under the lock: a writer bumps the generation while holding it.
        *seen = self.generation();
        true
    }
}

/// A backend's private, lock-free view of the [`SendRegistry`].
#[derive(Debug)]
struct SendCache {
    registry: Arc<SendRegistry>,
    seen: u64,
    sockets: HashMap<u16, Arc<LegSocket>, foldhash::fast::FixedState>,
}

impl SendCache {
    fn new(registry: Arc<SendRegistry>) -> Self {
        Self { registry, seen: u64::MAX, sockets: HashMap::default() }
    }

    /// Called once per send batch: one atomic load unless the registry changed.
    fn refresh(&mut self) {
        self.registry.refresh(&mut self.seen, &mut self.sockets);
    }

    fn get(&self, port: u16) -> Option<&Arc<LegSocket>> {
        self.sockets.get(&port)
    }
}

/// Which backend to run, as named in the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// io_uring: multishot recvmsg with a provided-buffer ring, batched `SendMsg`.
    Uring,
    /// recvmmsg/sendmmsg on mio readiness.
    Mmsg,
    /// AF_XDP socket for the media the XDP stage redirects, kernel sockets for the rest.
    Xsk,
}

impl BackendKind {
    /// The configuration name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Uring => "uring",
            Self::Mmsg => "mmsg",
            Self::Xsk => "xsk",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackendKind {
    type Err = IoError;
    fn from_str(s: &str) -> Result<Self, IoError> {
        match s {
            "uring" | "io_uring" => Ok(Self::Uring),
            "mmsg" => Ok(Self::Mmsg),
            "xsk" | "af_xdp" => Ok(Self::Xsk),
            other => Err(IoError::UnknownBackend(other.to_owned())),
        }
    }
}

/// One worker's I/O backend.
#[derive(Debug)]
#[expect(clippy::large_enum_variant, reason = "one per worker, never moved on the hot path")]
pub enum Backend {
    /// See [`UringBackend`].
    Uring(UringBackend),
    /// See [`MmsgBackend`].
    Mmsg(MmsgBackend),
    /// See [`XskBackend`].
    Xsk(XskBackend),
}

impl Backend {
    /// Builds the backend `kind`. For `Uring` this fails with [`IoError::UringUnavailable`] where
    /// io_uring cannot be used; see [`Backend::with_fallback`].
    pub fn new(kind: BackendKind, config: IoConfig, registry: Arc<SendRegistry>) -> Result<Self, IoError> {
        Ok(match kind {
            BackendKind::Uring => Self::Uring(UringBackend::new(config, registry)?),
            BackendKind::Mmsg => Self::Mmsg(MmsgBackend::new(config, registry)?),
            BackendKind::Xsk => Self::Xsk(XskBackend::new(config, registry)?),
        })
    }

    /// Builds `kind`, or `mmsg` if `kind` is `Uring` and io_uring is unavailable; the second value
    /// is the reason for the fallback (the daemon logs it).
    pub fn with_fallback(kind: BackendKind, config: IoConfig, registry: Arc<SendRegistry>) -> Result<(Self, Option<IoError>), IoError> {
        match Self::new(kind, config.clone(), Arc::clone(&registry)) {
            Err(e @ IoError::UringUnavailable(_)) => {
                tracing::warn!(reason = %e, "io_uring backend unavailable, falling back to mmsg");
                Ok((Self::Mmsg(MmsgBackend::new(config, registry)?), Some(e)))
            }
            other => other.map(|b| (b, None)),
        }
    }

    /// Which backend this is.
    pub fn kind(&self) -> BackendKind {
        match self {
            Self::Uring(_) => BackendKind::Uring,
            Self::Mmsg(_) => BackendKind::Mmsg,
            Self::Xsk(_) => BackendKind::Xsk,
        }
    }

    /// Opens a leg port (0: the kernel picks one) and publishes it for sending; returns the port.
    pub fn add_port(&mut self, port: u16) -> Result<u16, IoError> {
        match self {
            Self::Uring(b) => b.add_port(port),
            Self::Mmsg(b) => b.add_port(port),
            Self::Xsk(b) => b.add_port(port),
        }
    }

    /// Closes a leg port and withdraws it from the registry.
    pub fn remove_port(&mut self, port: u16) -> Result<(), IoError> {
        match self {
            Self::Uring(b) => b.remove_port(port),
            Self::Mmsg(b) => b.remove_port(port),
            Self::Xsk(b) => b.remove_port(port),
        }
    }

    /// Delivers up to [`IoConfig::rx_batch`] datagrams to `f(local_port, src, payload)`, waiting
    /// up to `timeout` (`None`: forever; `Some(ZERO)`: don't wait) if none is ready. Returns how
    /// many were delivered. A [`Waker::wake`] before or during the wait ends it (and is consumed).
    pub fn recv_batch<F>(&mut self, timeout: Option<Duration>, f: F) -> Result<usize, IoError>
    where
        F: FnMut(u16, SocketAddr, &mut [u8]),
    {
        match self {
            Self::Uring(b) => b.recv_batch(timeout, f),
            Self::Mmsg(b) => b.recv_batch(timeout, f),
            Self::Xsk(b) => b.recv_batch(timeout, f),
        }
    }

    /// A handle another thread uses to end this backend's current or next wait in
    /// [`Backend::recv_batch`] (which then returns promptly, with whatever datagrams are ready,
    /// possibly none). Cheap to clone; every call returns a handle to the same wake-up.
    pub fn waker(&self) -> Waker {
        match self {
            Self::Uring(b) => b.waker(),
            Self::Mmsg(b) => b.waker(),
            Self::Xsk(b) => b.waker(),
        }
    }

    /// Receives at most `n` datagrams per [`Backend::recv_batch`] from now on (1 ..= the
    /// configured `rx_batch`).
    pub fn set_rx_limit(&mut self, n: usize) {
        match self {
            Self::Uring(b) => b.set_rx_limit(n),
            Self::Mmsg(b) => b.set_rx_limit(n),
            Self::Xsk(b) => b.set_rx_limit(n),
        }
    }

    /// Sends `pkts` (GSO runs grouped per flow, per-flow order kept); returns how many datagrams
    /// the kernel accepted. Failures are counted, not returned.
    pub fn send_batch<'a, I>(&mut self, pkts: I) -> usize
    where
        I: IntoIterator<Item = Transmit<'a>>,
    {
        match self {
            Self::Uring(b) => b.send_batch(pkts),
            Self::Mmsg(b) => b.send_batch(pkts),
            Self::Xsk(b) => b.send_batch(pkts),
        }
    }

    /// The counters so far.
    pub fn counters(&self) -> IoCounters {
        match self {
            Self::Uring(b) => *b.counters(),
            Self::Mmsg(b) => *b.counters(),
            Self::Xsk(b) => b.counters(),
        }
    }

    /// The ports this backend receives on.
    pub fn ports(&self) -> Vec<u16> {
        match self {
            Self::Uring(b) => b.ports(),
            Self::Mmsg(b) => b.ports(),
            Self::Xsk(b) => b.ports(),
        }
    }
}

/// What the socket backends' send loop ([`send_staged`]) needs of a backend.
trait StagedSend {
    /// The borrowed pieces a plan is staged with.
    fn send_parts(&mut self) -> SendParts<'_>;
    /// Sends the staged plan; how many datagrams the kernel accepted.
    fn flush_staged(&mut self) -> usize;
}

/// The pieces of a backend [`Staging::stage`] works with.
struct SendParts<'b> {
    staging: &'b mut Staging,
    cache: &'b mut SendCache,
    config: &'b IoConfig,
    gso: bool,
    counters: &'b mut IoCounters,
}

/// The socket backends' `send_batch`: stages plans of at most `tx_batch` packets (GSO groups per
/// flow) from `pkts` and flushes each; how many datagrams the kernel accepted.
/// Delivers datagrams `from..` of one coalesced (`UDP_GRO`) receive `run`, `seg` bytes each but
/// the last, to `f(port, src, datagram)`, at most `room` of them. The contract of every backend:
/// no datagram over [`RX_BUF_BYTES`] reaches the worker (a GRO buffer would hold a jumbo datagram
/// whole), so such a one is counted `rx_truncated` instead. Returns how many it delivered and the
/// index of the first datagram it did not look at (the run's datagram count when it is done).
#[expect(clippy::too_many_arguments, reason = "a run, where to resume, and its delivery")]
fn deliver_segments<F>(run: &mut [u8], seg: usize, from: usize, room: usize, port: u16, src: SocketAddr, counters: &mut IoCounters, f: &mut F) -> (usize, usize)
where
    F: FnMut(u16, SocketAddr, &mut [u8]),
{
    let seg = seg.max(1);
    let segments = run.len().div_ceil(seg).max(1);
    let mut delivered = 0;
    let mut k = from;
    while k < segments && delivered < room {
        let start = k * seg;
        let end = (start + seg).min(run.len());
        k += 1;
        if end - start > RX_BUF_BYTES {
            counters.rx_truncated += 1;
            continue;
        }
        counters.rx_datagrams += 1;
        delivered += 1;
        f(port, src, &mut run[start..end]);
    }
    (delivered, k)
}

fn send_staged<'a, B: StagedSend>(backend: &mut B, pkts: impl IntoIterator<Item = Transmit<'a>>) -> usize {
    backend.send_parts().cache.refresh();
    let mut it = pkts.into_iter();
    let mut sent = 0;
    loop {
        let p = backend.send_parts();
        if p.staging.stage(&mut it, p.config.tx_batch, p.cache, p.gso, p.config.gso_max_segment, p.counters) == 0 {
            return sent;
        }
        sent += backend.flush_staged();
    }
}

/// The send side shared by both backends: pulls packets from the caller's iterator, plans GSO
/// groups and lays the payload `iovec`s out group after group.
#[derive(Debug, Default)]
struct Staging {
    plan: plan::TxPlan,
    /// One per staged packet, in batch order.
    pkt_iov: Vec<libc::iovec>,
    /// The same, laid out by [`plan::TxPlan::slots`].
    iovs: Vec<libc::iovec>,
}

// SAFETY: the `iovec`s point into the caller's payloads only between `stage` and the end of the
// `send_batch` call that staged them; they are never dereferenced by Rust, and the kernel reads
// them only during that call, on the thread making it.
unsafe impl Send for Staging {}

impl Staging {
    /// Stages up to `max` packets from `it` (packets for unknown ports are counted and skipped);
    /// returns how many it consumed.
    fn stage<'a>(
        &mut self,
        it: &mut impl Iterator<Item = Transmit<'a>>,
        max: usize,
        cache: &SendCache,
        gso: bool,
        gso_max_segment: usize,
        counters: &mut IoCounters,
    ) -> usize {
        self.plan.clear();
        self.pkt_iov.clear();
        let mut consumed = 0;
        for t in it.by_ref().take(max.max(1)) {
            consumed += 1;
            if cache.get(t.local_port).is_none() {
                counters.tx_unknown_port += 1;
                continue;
            }
            let len = t.payload.len();
            self.plan.push(t.local_port, t.dst, len, gso && len <= gso_max_segment);
            self.pkt_iov.push(sys::iovec_for(t.payload));
        }
        self.plan.finish();
        self.iovs.clear();
        self.iovs.extend(self.plan.slots().iter().map(|&i| self.pkt_iov[i as usize]));
        consumed
    }
}
