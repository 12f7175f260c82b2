//! The in-process hand-off between the TURN thread and the workers for relayed legs: a relayed
//! leg's media enters and leaves the same forwarding path as a direct leg's, without a second
//! trip through the kernel's loopback.
//!
//! ```text
//!   client ──UDP/TCP/TLS──▶ turn thread: Server::handle_client → Relay to an own leg
//!        ──TurnPacket::ToLeg (pooled buffer; the leg port's owner, woken once per batch)──▶
//!        worker: core.handle_rx(now, leg port, relayed address, datagram)
//!
//!   worker: a transmit from a leg's port to a route's relayed address
//!        UDP client:     ChannelData in the worker's scratch ──sendmmsg from (a duplicate of)
//!                        the TURN port's socket──▶ client
//!        TCP/TLS client: padded ChannelData ──TurnPacket::ToClient (pooled buffer; the TURN
//!                        thread woken once per flush)──▶ turn thread ──▶ the client's connection
//! ```
//!
//! Before, a relayed datagram went from the TURN thread's relayed socket to the leg's socket over
//! loopback, and a leg's answer the other way, each a send, a local delivery and a receive more
//! than a direct leg's: 1.9× a direct leg's CPU per packet over UDP, 2.3× over TCP, 2.6× over TLS
//! (`sluice-bench turn --calls 16 --seconds 20`, medians of three runs); with the hand-off
//! 1.07×, 1.05× and 1.75× (TLS keeps its own record crypto and reads). The worker sees the same
//! 5-tuple as before (its leg port, the relayed address), so ICE, DTLS, SRTP, latching and stats
//! are unchanged.
//!
//! What a worker may wrap is decided by the server alone: it announces a [`ChannelRoute`] while
//! the allocation, the channel and the permission are live and the peer is an own leg
//! ([`sluice_core::turn::Server::poll_route`]); the TURN thread passes every change to every
//! worker (in order, never dropped: a change that finds a worker's inbox full waits for the next
//! turn) and, for UDP clients, to the XDP shield. A worker's transmit that matches no route (a
//! route not up yet, or gone) still goes to the relayed socket, where the server decides as
//! before. Traffic to peers that are not legs (`allow_peers`) and Data indications keep the
//! socket path. When the TURN thread stops, every route goes down.
//!
//! Buffers: each side keeps a pool; a buffer handled by the other side comes back
//! ([`TurnPacket::Spent`]); a full queue drops the packet (counted) and the pool refills.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use sluice_core::forward::Shard;
use sluice_core::turn::{ChannelRoute, RouteChange, Transport, encode_channel_data};

use crate::bus::{ShieldMsg, TurnPacket, WorkerMsg};
use crate::io::{SendToBatch, Waker};

/// Bytes of a pooled buffer: the most a worker receives on a leg socket ([`crate::io::RX_BUF_BYTES`];
/// a longer relayed datagram is dropped, as the kernel path truncated and dropped it), which also
/// holds the longest packet a worker sends framed as padded ChannelData.
pub const BUF_BYTES: usize = crate::io::RX_BUF_BYTES;
const _: () = assert!(BUF_BYTES >= sluice_core::forward::MAX_DATAGRAM + sluice_core::turn::CHANNEL_DATA_HEADER + 3);
/// Datagrams waiting for a worker, or frames for the TURN thread, before new ones are dropped: a
/// few receive batches' worth.
pub const QUEUE: usize = 1024;
/// ChannelData datagrams a worker sends to UDP clients with one `sendmmsg`.
const UDP_SLOTS: usize = 128;
/// How long the stopping TURN thread waits for room in a worker's inbox for its last route changes.
const STOP_WAIT: Duration = Duration::from_secs(1);

/// A pooled buffer and the length of what it holds.
#[derive(Debug)]
pub struct PacketBuf {
    bytes: Box<[u8]>,
    len: usize,
}

impl PacketBuf {
    fn new() -> Self {
        Self { bytes: vec![0; BUF_BYTES].into_boxed_slice(), len: 0 }
    }

    /// What it holds.
    pub fn filled(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// What it holds, to rewrite in place.
    pub fn filled_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[..self.len]
    }
}

/// A free list of [`PacketBuf`]s: taking from an empty one allocates (only until the buffers in
/// flight have come back once); at most `cap` are kept.
#[derive(Debug)]
struct Pool {
    free: Vec<PacketBuf>,
    cap: usize,
    allocated: u64,
}

impl Pool {
    fn new(cap: usize) -> Self {
        Self { free: Vec::new(), cap, allocated: 0 }
    }

    fn take(&mut self) -> PacketBuf {
        self.free.pop().unwrap_or_else(|| {
            self.allocated += 1;
            PacketBuf::new()
        })
    }

    fn give(&mut self, mut buf: PacketBuf) {
        if self.free.len() < self.cap {
            buf.len = 0;
            self.free.push(buf);
        }
    }
}

/// Why the TURN thread dropped a datagram or frame of the hand-off; names in [`DROP_NAMES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandoffDrop {
    /// To a leg: the worker's queue was full.
    LegQueueFull = 0,
    /// To a leg: longer than a worker receives ([`BUF_BYTES`]).
    TooBig = 1,
    /// To a client: its connection is gone.
    NoConnection = 2,
}

/// `(direction, reason)` label values of each [`HandoffDrop`].
pub const DROP_NAMES: [(&str, &str); 3] = [("to_peer", "queue_full"), ("to_peer", "too_big"), ("to_client", "no_connection")];

/// What the node gives the TURN thread to reach the workers (and the XDP shield, if it runs).
#[derive(Debug)]
pub struct Wiring {
    /// Every worker's inbox, by index.
    pub inboxes: Vec<Sender<WorkerMsg>>,
    /// Every worker's waker, by index.
    pub wakers: Vec<Waker>,
    /// The shield's inbox, when the node runs the XDP stage.
    pub shield: Option<Sender<ShieldMsg>>,
}

/// One worker as the TURN thread sees it.
#[derive(Debug)]
struct WorkerEnd {
    inbox: Sender<WorkerMsg>,
    packets: Sender<TurnPacket>,
    waker: Waker,
    /// Route changes not yet in its inbox (it was full), oldest first.
    backlog: VecDeque<RouteChange>,
}

/// The TURN thread's side of the hand-off.
#[derive(Debug)]
pub struct TurnSide {
    workers: Vec<WorkerEnd>,
    shard: Shard,
    shield: Option<(Sender<ShieldMsg>, VecDeque<RouteChange>)>,
    /// Frames from the workers, and the buffers of datagrams they handled.
    inbox: Receiver<TurnPacket>,
    pool: Pool,
    /// Workers handed a datagram since they were last woken (a bit per index).
    to_wake: u64,
    /// Route changes that found an inbox full (and waited for a later turn).
    pub route_queue_full: u64,
}

/// A worker's side of the hand-off (see [`crate::worker::Worker::with_turn`]).
pub struct WorkerLink {
    index: u16,
    /// Live routes by (relayed address, leg port): what a transmit from the leg to the relayed
    /// address is matched against.
    routes: HashMap<(SocketAddr, u16), ChannelRoute, foldhash::fast::FixedState>,
    /// The relayed addresses' IP (a transmit to any other address is no route's: one compare).
    relay_ip: IpAddr,
    /// A duplicate of the TURN thread's UDP socket: ChannelData to UDP clients leaves from the
    /// port they talk to.
    udp: UdpSocket,
    udp_v6: bool,
    udp_out: SendToBatch,
    inbox: Receiver<TurnPacket>,
    to_turn: Sender<TurnPacket>,
    turn_waker: Arc<mio::Waker>,
    wake_turn: bool,
    pool: Pool,
    counters: LinkCounters,
}

impl std::fmt::Debug for WorkerLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerLink").field("index", &self.index).field("routes", &self.routes.len()).finish_non_exhaustive()
    }
}

/// A worker's hand-off counters (its `sluice_io_total` entries `turn_*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkCounters {
    /// Datagrams from TURN clients handled (as if received on the leg's port).
    pub from_client: u64,
    /// ChannelData the worker sent to UDP clients itself, and their payload bytes.
    pub to_client_udp: u64,
    /// Payload bytes of those.
    pub to_client_udp_bytes: u64,
    /// Frames handed to the TURN thread for TCP/TLS clients.
    pub to_client_stream: u64,
    /// Frames dropped because the TURN thread's queue was full.
    pub queue_full: u64,
    /// ChannelData the kernel did not send (socket buffer full, or an error).
    pub send_errors: u64,
    /// `sendmmsg` calls.
    pub syscalls: u64,
    /// Buffers allocated (stays flat once the pool has filled).
    pub buffers: u64,
}

/// Wires the hand-off: the TURN thread's side, and what each worker's link is made from once
/// the TURN socket exists ([`LinkParts::link`]).
pub fn wire(wiring: Wiring) -> (TurnSide, Vec<LinkParts>) {
    let n = wiring.inboxes.len();
    let (to_turn, inbox) = crossbeam_channel::bounded(QUEUE * n.max(1));
    let mut workers = Vec::with_capacity(n);
    let mut parts = Vec::with_capacity(n);
    for (index, (msgs, waker)) in wiring.inboxes.into_iter().zip(wiring.wakers).enumerate() {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        workers.push(WorkerEnd { inbox: msgs, packets: tx, waker, backlog: VecDeque::new() });
        parts.push(LinkParts { index: index as u16, inbox: rx, to_turn: to_turn.clone() });
    }
    let side = TurnSide {
        shard: Shard { index: 0, count: u16::try_from(workers.len()).unwrap_or(u16::MAX).max(1) },
        workers,
        shield: wiring.shield.map(|s| (s, VecDeque::new())),
        inbox,
        pool: Pool::new(QUEUE * (n + 1)),
        to_wake: 0,
        route_queue_full: 0,
    };
    (side, parts)
}

/// A worker's queues, waiting for the TURN socket.
#[derive(Debug)]
pub struct LinkParts {
    index: u16,
    inbox: Receiver<TurnPacket>,
    to_turn: Sender<TurnPacket>,
}

impl LinkParts {
    /// The worker's link: `udp` is its own duplicate of the TURN thread's UDP socket, `relay_ip`
    /// the relayed addresses' IP, `turn_waker` ends the TURN thread's wait.
    pub fn link(self, udp: UdpSocket, relay_ip: IpAddr, turn_waker: Arc<mio::Waker>) -> WorkerLink {
        let udp_v6 = udp.local_addr().is_ok_and(|a| a.is_ipv6());
        WorkerLink {
            index: self.index,
            routes: HashMap::default(),
            relay_ip,
            udp,
            udp_v6,
            udp_out: SendToBatch::new(UDP_SLOTS, sluice_core::forward::MAX_DATAGRAM + sluice_core::turn::CHANNEL_DATA_HEADER),
            inbox: self.inbox,
            to_turn: self.to_turn,
            turn_waker,
            wake_turn: false,
            pool: Pool::new(QUEUE),
            counters: LinkCounters::default(),
        }
    }
}

impl TurnSide {
    /// Hands a client's datagram for the own leg `peer` to the worker that owns its port, as if
    /// it came from `relayed`; the worker is woken by [`TurnSide::wake`].
    pub fn send_to_leg(&mut self, relayed: SocketAddr, peer: SocketAddr, payload: &[u8]) -> Result<(), HandoffDrop> {
        if payload.len() > BUF_BYTES {
            return Err(HandoffDrop::TooBig);
        }
        let w = usize::from(self.shard.owner(peer.port()));
        let Some(end) = self.workers.get(w) else { return Err(HandoffDrop::LegQueueFull) };
        let mut buf = self.pool.take();
        buf.bytes[..payload.len()].copy_from_slice(payload);
        buf.len = payload.len();
        match end.packets.try_send(TurnPacket::ToLeg { port: peer.port(), src: relayed, buf }) {
            Ok(()) => {
                self.to_wake |= 1u64 << w.min(63);
                Ok(())
            }
            Err(e) => {
                let (TurnPacket::ToLeg { buf, .. } | TurnPacket::ToClient { buf, .. } | TurnPacket::Spent(buf)) = e.into_inner();
                self.pool.give(buf);
                Err(HandoffDrop::LegQueueFull)
            }
        }
    }

    /// Wakes the workers handed something since the last call (once each per batch, not per
    /// datagram). A worker past index 63 shares bit 63 with the others there: they are all woken.
    pub fn wake(&mut self) {
        let mut to_wake = std::mem::take(&mut self.to_wake);
        while to_wake != 0 {
            let w = to_wake.trailing_zeros() as usize;
            to_wake &= to_wake - 1;
            let ends = if w == 63 { &self.workers[63.min(self.workers.len())..] } else { self.workers.get(w..=w).unwrap_or_default() };
            for end in ends {
                end.waker.wake();
            }
        }
    }

    /// Queues a route change for every worker and, for a UDP client's route, the shield; then
    /// delivers what their inboxes take.
    pub fn route(&mut self, change: RouteChange) {
        let (RouteChange::Up(r) | RouteChange::Down(r)) = change;
        for end in &mut self.workers {
            end.backlog.push_back(change);
        }
        if r.client.transport == Transport::Udp
            && let Some((_, backlog)) = &mut self.shield
        {
            backlog.push_back(change);
        }
        self.push_routes();
    }

    /// Delivers queued route changes in order, as far as each inbox has room (the rest waits for
    /// the next call, counted in `route_queue_full`). Returns whether some still wait.
    pub fn push_routes(&mut self) -> bool {
        let mut waiting = false;
        for end in &mut self.workers {
            let mut sent = false;
            while let Some(&c) = end.backlog.front() {
                match end.inbox.try_send(WorkerMsg::TurnRoute(c)) {
                    Ok(()) => {
                        end.backlog.pop_front();
                        sent = true;
                    }
                    Err(TrySendError::Full(_)) => {
                        self.route_queue_full += 1;
                        waiting = true;
                        break;
                    }
                    Err(TrySendError::Disconnected(_)) => end.backlog.clear(),
                }
            }
            // Not left for the end of its wait: a route that went down stops being used at once.
            if sent {
                end.waker.wake();
            }
        }
        if let Some((tx, backlog)) = &mut self.shield {
            while let Some(&c) = backlog.front() {
                match tx.try_send(ShieldMsg::TurnRoute(c)) {
                    Ok(()) => {
                        backlog.pop_front();
                    }
                    Err(TrySendError::Full(_)) => {
                        self.route_queue_full += 1;
                        waiting = true;
                        break;
                    }
                    Err(TrySendError::Disconnected(_)) => backlog.clear(),
                }
            }
        }
        waiting
    }

    /// The TURN thread stops: every route in `live` goes down, after whatever changes still wait
    /// (each inbox given up to a second for room: the workers outlive the TURN thread).
    pub fn withdraw(&mut self, live: impl Iterator<Item = ChannelRoute>) {
        for r in live {
            self.route(RouteChange::Down(r));
        }
        let deadline = Instant::now() + STOP_WAIT;
        for end in &mut self.workers {
            for c in end.backlog.drain(..) {
                if end.inbox.send_deadline(WorkerMsg::TurnRoute(c), deadline).is_err() {
                    break;
                }
            }
        }
        if let Some((tx, backlog)) = &mut self.shield {
            for c in backlog.drain(..) {
                if tx.send_deadline(ShieldMsg::TurnRoute(c), deadline).is_err() {
                    break;
                }
            }
        }
    }

    /// The next frame a worker handed over for a TCP/TLS client: `(worker, 5-tuple, frame)`;
    /// give the buffer back with [`TurnSide::give_back`]. Buffers of datagrams the workers
    /// handled go back to the pool on the way.
    pub fn next_frame(&mut self) -> Option<(u16, sluice_core::turn::FiveTuple, PacketBuf)> {
        loop {
            match self.inbox.try_recv().ok()? {
                TurnPacket::ToClient { from, to, buf } => return Some((from, to, buf)),
                TurnPacket::Spent(buf) | TurnPacket::ToLeg { buf, .. } => self.pool.give(buf),
            }
        }
    }

    /// Whether frames (or returned buffers) wait.
    pub fn pending(&self) -> bool {
        !self.inbox.is_empty()
    }

    /// A frame's buffer goes back to worker `from`'s pool (a full queue frees it instead).
    pub fn give_back(&mut self, from: u16, buf: PacketBuf) {
        if let Some(end) = self.workers.get(usize::from(from)) {
            let _ = end.packets.try_send(TurnPacket::Spent(buf));
        }
    }

    /// Buffers allocated by the TURN thread's pool.
    pub fn buffers(&self) -> u64 {
        self.pool.allocated
    }
}

impl WorkerLink {
    /// Applies a route change.
    pub fn route(&mut self, change: RouteChange) {
        match change {
            RouteChange::Up(r) => {
                self.routes.insert((r.relayed, r.peer.port()), r);
            }
            RouteChange::Down(r) => {
                if self.routes.get(&(r.relayed, r.peer.port())) == Some(&r) {
                    self.routes.remove(&(r.relayed, r.peer.port()));
                }
            }
        }
    }

    /// Whether any route is live (else no transmit needs looking at).
    #[inline]
    pub fn has_routes(&self) -> bool {
        !self.routes.is_empty()
    }

    /// Takes a transmit from `local_port` to `dst` if it is a live route's (the leg sending to
    /// the relayed address): sent to a UDP client from this worker's scratch (by
    /// [`WorkerLink::finish`] at the latest), or queued for the TURN thread for a TCP/TLS client.
    /// False: the transmit is no route's and goes to the backend.
    #[inline]
    pub fn take(&mut self, local_port: u16, dst: SocketAddr, payload: &[u8]) -> bool {
        if dst.ip() != self.relay_ip {
            return false;
        }
        let Some(&r) = self.routes.get(&(dst, local_port)) else { return false };
        match r.client.transport {
            Transport::Udp => self.wrap_for_udp(&r, payload),
            Transport::Tcp | Transport::Tls => self.wrap_for_stream(&r, payload),
        }
        true
    }

    fn wrap_for_udp(&mut self, r: &ChannelRoute, payload: &[u8]) {
        if self.udp_out.slot().is_none() {
            self.send_udp();
        }
        let Some(slot) = self.udp_out.slot() else { return };
        match encode_channel_data(slot, r.channel, payload, false) {
            Ok(len) => {
                self.udp_out.commit(r.client.client, len);
                self.counters.to_client_udp_bytes += payload.len() as u64;
            }
            Err(_) => self.counters.send_errors += 1,
        }
    }

    fn wrap_for_stream(&mut self, r: &ChannelRoute, payload: &[u8]) {
        let mut buf = self.pool.take();
        match encode_channel_data(&mut buf.bytes, r.channel, payload, true) {
            Ok(len) => buf.len = len,
            Err(_) => {
                self.counters.send_errors += 1;
                self.pool.give(buf);
                return;
            }
        }
        match self.to_turn.try_send(TurnPacket::ToClient { from: self.index, to: r.client, buf }) {
            Ok(()) => {
                self.counters.to_client_stream += 1;
                self.wake_turn = true;
            }
            Err(e) => {
                self.counters.queue_full += 1;
                let (TurnPacket::ToClient { buf, .. } | TurnPacket::ToLeg { buf, .. } | TurnPacket::Spent(buf)) = e.into_inner();
                self.pool.give(buf);
            }
        }
    }

    fn send_udp(&mut self) {
        let n = self.udp_out.len() as u64;
        let r = self.udp_out.send(&self.udp, self.udp_v6);
        self.counters.to_client_udp += r.sent;
        self.counters.send_errors += r.errors.min(n);
        self.counters.syscalls += r.syscalls;
    }

    /// Ends a flush: sends what waits for UDP clients, and wakes the TURN thread once if frames
    /// were queued for it.
    pub fn finish(&mut self) {
        if !self.udp_out.is_empty() {
            self.send_udp();
        }
        if std::mem::take(&mut self.wake_turn) {
            let _ = self.turn_waker.wake();
        }
    }

    /// Whether the TURN thread handed over something (datagrams or returned buffers).
    #[inline]
    pub fn pending(&self) -> bool {
        !self.inbox.is_empty()
    }

    /// The next datagram from a TURN client: `(leg port, relayed address, datagram)`; hand the
    /// buffer back with [`WorkerLink::spent`]. Returned buffers go to the pool on the way.
    pub fn next_datagram(&mut self) -> Option<(u16, SocketAddr, PacketBuf)> {
        loop {
            match self.inbox.try_recv().ok()? {
                TurnPacket::ToLeg { port, src, buf } => {
                    self.counters.from_client += 1;
                    return Some((port, src, buf));
                }
                TurnPacket::Spent(buf) | TurnPacket::ToClient { buf, .. } => self.pool.give(buf),
            }
        }
    }

    /// A datagram from [`WorkerLink::next_datagram`] was handled: its buffer goes back to the TURN thread.
    pub fn spent(&mut self, buf: PacketBuf) {
        let _ = self.to_turn.try_send(TurnPacket::Spent(buf));
    }

    /// The counters so far.
    pub fn counters(&self) -> LinkCounters {
        LinkCounters { buffers: self.pool.allocated, ..self.counters }
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;

    use sluice_core::turn::{ChannelNumber, FiveTuple};

    use super::*;
    use crate::io::wake::WakeFd;

    struct Rig {
        side: TurnSide,
        links: Vec<WorkerLink>,
        inboxes: Vec<Receiver<WorkerMsg>>,
        /// The TURN thread's UDP socket (the workers send from duplicates of it).
        turn_udp: UdpSocket,
        _poll: mio::Poll,
        _wakes: Vec<WakeFd>,
    }

    fn rig(workers: usize, inbox: usize) -> Rig {
        let (tx, inboxes): (Vec<_>, Vec<_>) = (0..workers).map(|_| crossbeam_channel::bounded(inbox)).unzip();
        let wakes: Vec<WakeFd> = (0..workers).map(|_| WakeFd::new().unwrap()).collect();
        let (side, parts) = wire(Wiring { inboxes: tx, wakers: wakes.iter().map(WakeFd::waker).collect(), shield: None });
        let turn_udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).unwrap());
        let links = parts.into_iter().map(|p| p.link(turn_udp.try_clone().unwrap(), "127.0.0.2".parse().unwrap(), waker.clone())).collect();
        Rig { side, links, inboxes, turn_udp, _poll: poll, _wakes: wakes }
    }

    fn route(client: SocketAddr, transport: Transport, relayed: &str, leg_port: u16) -> ChannelRoute {
        ChannelRoute {
            client: FiveTuple { client, server: "127.0.0.1:3478".parse().unwrap(), transport },
            channel: ChannelNumber::new(0x4001).unwrap(),
            relayed: relayed.parse().unwrap(),
            peer: SocketAddr::from(([127, 0, 0, 1], leg_port)),
        }
    }

    #[test]
    fn a_leg_sending_to_a_live_routes_relayed_address_reaches_the_client_as_channel_data() {
        let mut r = rig(1, 16);
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let udp = route(client.local_addr().unwrap(), Transport::Udp, "127.0.0.2:40000", 20_000);
        let link = &mut r.links[0];
        assert!(!link.has_routes());
        link.route(RouteChange::Up(udp));
        // Only the leg's own port to the route's relayed address is the route's.
        assert!(!link.take(20_001, udp.relayed, b"other leg"));
        assert!(!link.take(20_000, "127.0.0.2:40001".parse().unwrap(), b"other allocation"));
        assert!(!link.take(20_000, "127.0.0.3:40000".parse().unwrap(), b"another address"));
        assert!(link.take(20_000, udp.relayed, b"hello"));
        assert!(link.take(20_000, udp.relayed, b"again!"));
        link.finish();
        let mut buf = [0u8; 64];
        let (n, from) = client.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"\x40\x01\x00\x05hello", "ChannelData, not padded over UDP");
        assert_eq!(from, r.turn_udp.local_addr().unwrap(), "from the TURN port the client talks to");
        let (n, _) = client.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"\x40\x01\x00\x06again!");
        let c = link.counters();
        assert_eq!((c.to_client_udp, c.to_client_udp_bytes, c.send_errors), (2, 11, 0));
        // Down: the transmit goes to the relayed socket again (the backend's).
        link.route(RouteChange::Down(udp));
        assert!(!link.take(20_000, udp.relayed, b"hello"));
        assert!(!link.has_routes());
    }

    #[test]
    fn a_down_for_another_route_on_the_same_key_keeps_the_live_one() {
        let mut r = rig(1, 16);
        let old = route("127.0.0.1:5000".parse().unwrap(), Transport::Udp, "127.0.0.2:40000", 20_000);
        let new = ChannelRoute { channel: ChannelNumber::new(0x4002).unwrap(), ..old };
        let link = &mut r.links[0];
        link.route(RouteChange::Up(old));
        link.route(RouteChange::Up(new));
        link.route(RouteChange::Down(old));
        assert!(link.has_routes());
        link.route(RouteChange::Down(new));
        assert!(!link.has_routes());
    }

    #[test]
    fn stream_clients_get_padded_frames_through_the_turn_thread_in_reused_buffers() {
        let mut r = rig(2, 16);
        let tcp = route("127.0.0.1:6000".parse().unwrap(), Transport::Tcp, "127.0.0.2:40002", 20_001);
        let link = &mut r.links[1];
        link.route(RouteChange::Up(tcp));
        for round in 0..3 {
            assert!(link.take(20_001, tcp.relayed, b"hello"));
            link.finish();
            let (from, to, buf) = r.side.next_frame().expect("a frame");
            assert_eq!((from, to), (1, tcp.client));
            assert_eq!(buf.filled(), b"\x40\x01\x00\x05hello\0\0\0", "padded to 4 bytes over a stream");
            r.side.give_back(from, buf);
            assert!(r.side.next_frame().is_none());
            // The buffer is back in the worker's pool by its next look at its queue.
            assert!(link.next_datagram().is_none());
            assert_eq!(link.counters().buffers, 1, "round {round}: one buffer, reused");
        }
        assert_eq!(link.counters().to_client_stream, 3);
    }

    #[test]
    fn client_datagrams_go_to_the_worker_that_owns_the_leg_port_and_their_buffers_come_back() {
        let mut r = rig(2, 4);
        let relayed: SocketAddr = "127.0.0.2:40000".parse().unwrap();
        for round in 0..3 {
            r.side.send_to_leg(relayed, SocketAddr::from(([127, 0, 0, 1], 20_001)), b"media").unwrap();
            r.side.wake();
            assert!(!r.links[0].pending(), "port 20001 is worker 1's");
            let (port, src, mut buf) = r.links[1].next_datagram().expect("handed over");
            assert_eq!((port, src, buf.filled_mut().to_vec()), (20_001, relayed, b"media".to_vec()));
            r.links[1].spent(buf);
            assert!(r.side.next_frame().is_none(), "returned buffers are not frames");
            assert_eq!(r.side.buffers(), 1, "round {round}: one buffer, reused");
        }
        assert_eq!(r.side.send_to_leg(relayed, SocketAddr::from(([127, 0, 0, 1], 20_000)), &[0; BUF_BYTES + 1]), Err(HandoffDrop::TooBig));
        for _ in 0..QUEUE {
            r.side.send_to_leg(relayed, SocketAddr::from(([127, 0, 0, 1], 20_000)), b"x").unwrap();
        }
        assert_eq!(r.side.send_to_leg(relayed, SocketAddr::from(([127, 0, 0, 1], 20_000)), b"x"), Err(HandoffDrop::LegQueueFull));
        assert_eq!(r.links[0].counters().from_client, 0);
    }

    #[test]
    fn route_changes_wait_for_a_full_inbox_in_order_and_all_go_down_at_the_end() {
        let mut r = rig(1, 2);
        let a = route("127.0.0.1:5000".parse().unwrap(), Transport::Udp, "127.0.0.2:40000", 20_000);
        let b = route("127.0.0.1:5001".parse().unwrap(), Transport::Tls, "127.0.0.2:40001", 20_001);
        r.side.route(RouteChange::Up(a));
        r.side.route(RouteChange::Up(b));
        r.side.route(RouteChange::Down(a));
        assert!(r.side.route_queue_full > 0);
        let got = |rx: &Receiver<WorkerMsg>| -> Vec<RouteChange> {
            rx.try_iter()
                .filter_map(|m| match m {
                    WorkerMsg::TurnRoute(c) => Some(c),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(got(&r.inboxes[0]), [RouteChange::Up(a), RouteChange::Up(b)]);
        assert!(!r.side.push_routes(), "room again: the rest is delivered");
        assert_eq!(got(&r.inboxes[0]), [RouteChange::Down(a)]);
        r.side.withdraw([b].into_iter());
        assert_eq!(got(&r.inboxes[0]), [RouteChange::Down(b)]);
    }
}
