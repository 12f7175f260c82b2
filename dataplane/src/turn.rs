//! The embedded TURN server's I/O: one thread of its own (like the WebRTC slow path) that serves
//! `sluice_core::turn::Server` over UDP, TCP and TLS, and owns the relayed addresses.
//!
//! ```text
//!   client ──UDP/TCP/TLS──▶ turn thread: STUN (Allocate, Refresh, CreatePermission, ChannelBind,
//!                           Send) and ChannelData → sluice_core::turn::Server
//!                           Relay to an own leg → the leg's worker, in process (handoff)
//!                           Relay to another peer → the allocation's relayed UDP socket
//!   leg ──(a channel route: the worker itself, or via this thread for TCP/TLS)──▶ client
//!   leg / peer ──▶ relayed socket ──▶ Server::handle_peer → Data indication / ChannelData ──▶ client
//! ```
//!
//! Allocations reach Sluice's own legs only (their ports at `leg_ips`, kept in step with every
//! applied delta), unless `allow_peers` opts further ranges in. The relayed address is a real UDP
//! socket, and the worker sees it as the participant's address, exactly as it would from an
//! external TURN server (coturn); but the media between a client and an own leg skips it: see
//! [`handoff`] (the routes the server announces go to every worker and, for UDP clients, the XDP
//! shield). Stream clients: one deframer per connection (STUN messages and padded
//! ChannelData back to back, RFC 8656 §12.5), bounded; a connection that stalls mid-message or in
//! its TLS handshake is closed after `stall_timeout_ms`; closing a connection deletes its
//! allocation. Everything refused is counted by reason (`/metrics`: `sluice_turn_*`).

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant as WallInstant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};
use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use openssl::ssl::{HandshakeError, MidHandshakeSslStream, SslAcceptor, SslFiletype, SslMethod, SslStream};
use sluice_core::ids::LegId;
use sluice_core::table::{Delta, Op};
use sluice_core::time::Instant;
use sluice_core::turn::{
    AddressFamily, ChannelData, ChannelRoute, ClientAction, FiveTuple, Framing, MAX_RESPONSE, Now, PeerAction, PeerPolicy, Refusal, RelayAllocator, Server,
    ServerConfig, StreamDeframer, Transport,
};

use crate::config::TurnConfig;

pub mod handoff;

use handoff::{HandoffDrop, TurnSide, Wiring, WorkerLink};

const UDP: Token = Token(0);
const TCP: Token = Token(1);
const TLS: Token = Token(2);
const WAKE: Token = Token(3);
/// Connections are tokens from here; relayed sockets from [`RELAY_BASE`] (+ port).
const CONN_BASE: usize = 16;
const RELAY_BASE: usize = 1 << 24;
/// The largest frame a stream client may send (a STUN message or ChannelData: 4 + 65535).
const MAX_FRAME: usize = 4 + 65_535;
/// Bytes queued for a stream client that does not read before it is disconnected.
const MAX_QUEUED: usize = 4 << 20;
/// Frames from the workers written to stream clients per turn of the loop (then the loop turns
/// again without waiting).
const FRAMES_PER_TURN: usize = 1024;
/// Datagrams from UDP clients between two wake-ups of the workers they were handed to (a worker
/// starts on a burst before the TURN thread has read all of it, and its queue does not fill).
const WAKE_EVERY: usize = 32;
/// How often stalls and expiries are looked at.
const TICK: Duration = Duration::from_millis(100);

/// Why the TURN thread closed a connection; names in [`CLOSE_NAMES`].
#[derive(Clone, Copy, Debug)]
enum Close {
    Stalled = 0,
    Handshake = 1,
    Garbage = 2,
    SlowReader = 3,
    Limit = 4,
    Peer = 5,
}
const CLOSE_NAMES: [&str; 6] = ["stalled", "tls_handshake", "garbage", "slow_reader", "connection_limit", "client_closed"];

/// Counters the metrics endpoint reads.
#[derive(Debug, Default)]
pub struct TurnCounts {
    refusals: [AtomicU64; Refusal::COUNT],
    allocations: AtomicU64,
    connections: AtomicU64,
    closed: [AtomicU64; CLOSE_NAMES.len()],
    /// Packets and bytes relayed, by [`Flow`] and the client's transport (what the workers send
    /// to UDP clients themselves is counted by them: [`FromWorkers`]).
    relayed: [[[AtomicU64; 2]; 3]; FLOW_LABELS.len()],
    handoff_dropped: [AtomicU64; handoff::DROP_NAMES.len()],
    route_queue_full: AtomicU64,
    routes: AtomicU64,
    handoff_buffers: AtomicU64,
    send_errors: AtomicU64,
}

/// Which way a relayed packet went, and which path it took: through a relayed socket (peers that
/// are not legs, Data indications, a leg's packet before its channel route is up), or handed to
/// or from a worker in process ([`handoff`]).
#[derive(Clone, Copy, Debug)]
enum Flow {
    SocketToPeer = 0,
    HandoffToPeer = 1,
    SocketToClient = 2,
    HandoffToClient = 3,
}
/// `(direction, path)` label values of each [`Flow`].
const FLOW_LABELS: [(&str, &str); 4] = [("to_peer", "socket"), ("to_peer", "handoff"), ("to_client", "socket"), ("to_client", "handoff")];
/// `transport` label values, by [`transport_index`].
const TRANSPORT_LABELS: [&str; 3] = ["udp", "tcp", "tls"];

fn transport_index(t: Transport) -> usize {
    match t {
        Transport::Udp => 0,
        Transport::Tcp => 1,
        Transport::Tls => 2,
    }
}

impl TurnCounts {
    fn relayed(&self, flow: Flow, transport: Transport, bytes: usize) {
        let c = &self.relayed[flow as usize][transport_index(transport)];
        c[0].fetch_add(1, Ordering::Relaxed);
        c[1].fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// The workers' share of the TURN counters, summed over them (see [`handoff::LinkCounters`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct FromWorkers {
    /// ChannelData the workers sent to UDP clients themselves.
    pub to_client_udp: u64,
    /// Payload bytes of those.
    pub to_client_udp_bytes: u64,
    /// Frames for stream clients the TURN thread's queue had no room for.
    pub queue_full: u64,
}

impl TurnCounts {
    /// Prometheus text for these counters, with the workers' share of them.
    pub fn render(&self, workers: FromWorkers) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(
            s,
            "# HELP sluice_turn_allocations TURN allocations open.\n# TYPE sluice_turn_allocations gauge\nsluice_turn_allocations {}",
            ld(&self.allocations)
        );
        let _ = writeln!(
            s,
            "# HELP sluice_turn_connections TURN TCP and TLS connections open.\n# TYPE sluice_turn_connections gauge\nsluice_turn_connections {}",
            ld(&self.connections)
        );
        let _ = writeln!(
            s,
            "# HELP sluice_turn_refusals_total TURN requests and datagrams refused or dropped, by reason.\n# TYPE sluice_turn_refusals_total counter"
        );
        for r in Refusal::ALL {
            let _ = writeln!(s, "sluice_turn_refusals_total{{reason=\"{}\"}} {}", r.name(), ld(&self.refusals[r as usize]));
        }
        let _ = writeln!(
            s,
            "# HELP sluice_turn_connections_closed_total TURN stream connections closed, by reason.\n# TYPE sluice_turn_connections_closed_total counter"
        );
        for (i, n) in CLOSE_NAMES.iter().enumerate() {
            let _ = writeln!(s, "sluice_turn_connections_closed_total{{reason=\"{n}\"}} {}", ld(&self.closed[i]));
        }
        for (i, (metric, what)) in [("packets", "Datagrams"), ("bytes", "Payload bytes")].into_iter().enumerate() {
            let _ = writeln!(
                s,
                "# HELP sluice_turn_relayed_{metric}_total {what} relayed, by direction, path (socket: a relayed socket; handoff: in process with a worker) and the client's transport.\n# TYPE sluice_turn_relayed_{metric}_total counter"
            );
            for (f, (direction, path)) in FLOW_LABELS.iter().enumerate() {
                for (t, transport) in TRANSPORT_LABELS.iter().enumerate() {
                    let mut v = ld(&self.relayed[f][t][i]);
                    if f == Flow::HandoffToClient as usize && t == transport_index(Transport::Udp) {
                        v += [workers.to_client_udp, workers.to_client_udp_bytes][i];
                    }
                    let _ = writeln!(s, "sluice_turn_relayed_{metric}_total{{direction=\"{direction}\",path=\"{path}\",transport=\"{transport}\"}} {v}");
                }
            }
        }
        let _ = writeln!(
            s,
            "# HELP sluice_turn_handoff_dropped_total Relayed packets dropped on the way between the TURN thread and a worker, by direction and reason.\n# TYPE sluice_turn_handoff_dropped_total counter"
        );
        for (i, (direction, reason)) in handoff::DROP_NAMES.iter().enumerate() {
            let _ = writeln!(s, "sluice_turn_handoff_dropped_total{{direction=\"{direction}\",reason=\"{reason}\"}} {}", ld(&self.handoff_dropped[i]));
        }
        let _ = writeln!(s, "sluice_turn_handoff_dropped_total{{direction=\"to_client\",reason=\"queue_full\"}} {}", workers.queue_full);
        let _ = writeln!(
            s,
            "# HELP sluice_turn_routes Channel routes to legs live (their media bypasses the relayed sockets).\n# TYPE sluice_turn_routes gauge\nsluice_turn_routes {}",
            ld(&self.routes)
        );
        let _ = writeln!(
            s,
            "# HELP sluice_turn_route_queue_full_total Route changes that found a worker's or the shield's inbox full and waited.\n# TYPE sluice_turn_route_queue_full_total counter\nsluice_turn_route_queue_full_total {}",
            ld(&self.route_queue_full)
        );
        let _ = writeln!(
            s,
            "# HELP sluice_turn_handoff_buffers_total Hand-off buffers the TURN thread allocated (flat once its pool has filled).\n# TYPE sluice_turn_handoff_buffers_total counter\nsluice_turn_handoff_buffers_total {}",
            ld(&self.handoff_buffers)
        );
        let _ = writeln!(
            s,
            "# HELP sluice_turn_send_errors_total Sends the TURN thread could not make.\n# TYPE sluice_turn_send_errors_total counter\nsluice_turn_send_errors_total {}",
            ld(&self.send_errors)
        );
        s
    }
}

/// What the node tells the TURN thread.
#[derive(Debug)]
pub enum TurnMsg {
    /// Legs created or changed (their ports), removed, and with a full snapshot the legs kept.
    Legs {
        /// Legs created or changed, with their ports (RTP, and RTCP when separate).
        upsert: Vec<(LegId, Vec<u16>)>,
        /// Legs removed.
        remove: Vec<LegId>,
        /// With a full snapshot: every leg kept (the others are gone).
        retain: Option<Vec<LegId>>,
    },
    /// Exit.
    Stop,
}

/// The legs a delta changes, for the TURN thread's own-leg set.
pub fn legs_of(delta: &Delta) -> Option<TurnMsg> {
    let mut upsert = Vec::new();
    let mut remove = Vec::new();
    for op in &delta.ops {
        match op {
            Op::UpsertLeg(l) => {
                let mut ports = vec![l.local_port];
                ports.extend(l.rtcp.as_deref().map(|r| r.local_port));
                upsert.push((l.id, ports));
            }
            Op::RemoveLeg(id) => remove.push(*id),
            _ => {}
        }
    }
    let retain = delta.replace_all.then(|| upsert.iter().map(|(id, _)| *id).collect());
    (!upsert.is_empty() || !remove.is_empty() || retain.is_some()).then_some(TurnMsg::Legs { upsert, remove, retain })
}

/// The running TURN thread.
#[derive(Debug)]
pub struct TurnHandle {
    tx: Sender<TurnMsg>,
    waker: Arc<Waker>,
    counts: Arc<TurnCounts>,
    /// The UDP/TCP address it listens on (the configured one, with its port when that was 0).
    pub listen: SocketAddr,
    /// The TLS address, if any.
    pub tls_listen: Option<SocketAddr>,
}

impl TurnHandle {
    /// Sends `msg` to the thread.
    pub fn send(&self, msg: TurnMsg) {
        if self.tx.send(msg).is_ok() {
            let _ = self.waker.wake();
        }
    }

    /// Its counters.
    pub fn counts(&self) -> Arc<TurnCounts> {
        self.counts.clone()
    }
}

/// Why the TURN server could not start.
#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    /// A socket could not be opened.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: String,
        /// Why it failed.
        source: io::Error,
    },
    /// TLS settings.
    #[error("TLS: {0}")]
    Tls(#[from] openssl::error::ErrorStack),
    /// The server's settings.
    #[error("{0}")]
    Config(String),
}

fn io_err(op: impl Into<String>) -> impl FnOnce(io::Error) -> TurnError {
    let op = op.into();
    move |source| TurnError::Io { op, source }
}

/// Relayed addresses: a UDP socket each, bound on `ip` in `ports`, registered with the poll.
struct Relays {
    ip: IpAddr,
    ports: (u16, u16),
    next: u16,
    sockets: HashMap<u16, UdpSocket>,
    registry: Registry,
}

impl RelayAllocator for Relays {
    fn allocate(&mut self, _client: &FiveTuple, family: AddressFamily) -> Option<SocketAddr> {
        if AddressFamily::of(self.ip) != family {
            return None;
        }
        let (lo, hi) = self.ports;
        let span = u32::from(hi - lo) + 1;
        for _ in 0..span.min(4096) {
            let port = self.next;
            self.next = if self.next >= hi { lo } else { self.next + 1 };
            if self.sockets.contains_key(&port) {
                continue;
            }
            let Ok(mut sock) = UdpSocket::bind(SocketAddr::new(self.ip, port)) else { continue };
            if self.registry.register(&mut sock, Token(RELAY_BASE + usize::from(port)), Interest::READABLE).is_err() {
                continue;
            }
            self.sockets.insert(port, sock);
            return Some(SocketAddr::new(self.ip, port));
        }
        None
    }

    fn release(&mut self, relayed: SocketAddr) {
        if let Some(mut s) = self.sockets.remove(&relayed.port()) {
            let _ = self.registry.deregister(&mut s);
        }
    }
}

enum Io {
    Plain(TcpStream),
    Handshaking(MidHandshakeSslStream<TcpStream>),
    Tls(Box<SslStream<TcpStream>>),
    Closed,
}

impl Io {
    fn stream(&mut self) -> Option<&mut TcpStream> {
        match self {
            Io::Plain(s) => Some(s),
            Io::Handshaking(m) => Some(m.get_mut()),
            Io::Tls(s) => Some(s.get_mut()),
            Io::Closed => None,
        }
    }
}

struct Conn {
    io: Io,
    tuple: FiveTuple,
    deframer: StreamDeframer,
    queued: Vec<u8>,
    /// The last time bytes arrived (or the accept).
    last_rx: WallInstant,
    writable_armed: bool,
}

/// Starts the TURN thread for `config` (legs on `listen_ip`'s side, see [`TurnConfig::leg_ips`]);
/// `denied` are the node's own endpoints no allocation may reach (metrics, the TURN ports). With
/// `wiring`, media between clients and own legs is handed to and from the workers in process:
/// the links returned go to the workers, by index ([`crate::worker::Worker::with_turn`]);
/// without it, it all goes through the relayed sockets.
pub fn spawn(
    config: &TurnConfig,
    listen_ip: IpAddr,
    denied: Vec<SocketAddr>,
    epoch: WallInstant,
    wiring: Option<Wiring>,
) -> Result<(TurnHandle, Vec<WorkerLink>, JoinHandle<()>), TurnError> {
    let relay_ip = config.relay_ip(listen_ip).ok_or_else(|| TurnError::Config("turn.relay_ip is needed".into()))?;
    let leg_ips = config.leg_ips(listen_ip);
    let poll = Poll::new().map_err(io_err("TURN poll"))?;
    let registry = poll.registry().try_clone().map_err(io_err("TURN poll"))?;
    let std_udp = std::net::UdpSocket::bind(config.listen).map_err(io_err(format!("TURN UDP {}", config.listen)))?;
    std_udp.set_nonblocking(true).map_err(io_err("TURN UDP"))?;
    // The workers' duplicates: ChannelData to UDP clients leaves from the port they talk to.
    let worker_udp = match &wiring {
        Some(w) => (0..w.inboxes.len()).map(|_| std_udp.try_clone()).collect::<Result<Vec<_>, _>>().map_err(io_err("TURN UDP (a worker's duplicate)"))?,
        None => Vec::new(),
    };
    let mut udp = UdpSocket::from_std(std_udp);
    let listen = udp.local_addr().map_err(io_err("TURN UDP"))?;
    let mut tcp = TcpListener::bind(listen).map_err(io_err(format!("TURN TCP {listen}")))?;
    poll.registry().register(&mut udp, UDP, Interest::READABLE).map_err(io_err("TURN UDP"))?;
    poll.registry().register(&mut tcp, TCP, Interest::READABLE).map_err(io_err("TURN TCP"))?;
    let tls = match (&config.tls_listen, &config.tls_cert, &config.tls_key) {
        (Some(addr), Some(cert), Some(key)) => {
            let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
            b.set_certificate_chain_file(cert)?;
            b.set_private_key_file(key, SslFiletype::PEM)?;
            b.check_private_key()?;
            let mut l = TcpListener::bind(*addr).map_err(io_err(format!("TURN TLS {addr}")))?;
            poll.registry().register(&mut l, TLS, Interest::READABLE).map_err(io_err("TURN TLS"))?;
            Some((l, b.build()))
        }
        _ => None,
    };
    let tls_listen = tls.as_ref().and_then(|(l, _)| l.local_addr().ok());
    let waker = Arc::new(Waker::new(poll.registry(), WAKE).map_err(io_err("TURN waker"))?);

    let mut nonce_key = [0u8; 32];
    openssl::rand::rand_bytes(&mut nonce_key)?;
    let mut sc = ServerConfig::new(config.realm.clone(), config.secret.as_bytes().to_vec(), nonce_key);
    sc.previous_secret = config.previous_secret.as_ref().map(|s| s.as_bytes().to_vec());
    sc.max_allocations = config.max_allocations;
    sc.max_allocations_per_user = config.max_allocations_per_user;
    sc.software = Some(format!("Sluice {}", env!("CARGO_PKG_VERSION")));
    let parse = |v: &[String]| {
        v.iter().map(|c| c.parse()).collect::<Result<Vec<_>, _>>().map_err(|e: sluice_core::turn::policy::CidrError| TurnError::Config(e.to_string()))
    };
    let defaults = PeerPolicy::default();
    sc.policy = PeerPolicy {
        allow: parse(&config.allow_peers)?,
        deny: match &config.deny_peers {
            Some(d) => parse(d)?,
            None => defaults.deny,
        },
        denied_endpoints: denied,
    };
    let relays = Relays { ip: relay_ip, ports: config.relay_ports, next: config.relay_ports.0, sockets: HashMap::new(), registry };
    let server = Server::new(sc, relays).map_err(|e| TurnError::Config(e.to_string()))?;

    let (tx, rx) = crossbeam_channel::unbounded();
    let counts = Arc::new(TurnCounts::default());
    let (link, links) = match wiring {
        Some(w) => {
            let (side, parts) = handoff::wire(w);
            let links = parts.into_iter().zip(worker_udp).map(|(p, u)| p.link(u, relay_ip, waker.clone())).collect();
            (Some(side), links)
        }
        None => (None, Vec::new()),
    };
    let mut svc = Service {
        poll,
        server,
        udp,
        udp_addr: listen,
        tcp,
        tls,
        conns: HashMap::new(),
        by_client: HashMap::new(),
        next_conn: CONN_BASE,
        legs: HashMap::new(),
        leg_ips,
        rx,
        counts: counts.clone(),
        epoch,
        stall: Duration::from_millis(config.stall_timeout_ms),
        max_connections: config.max_connections,
        peer_out: vec![0u8; MAX_FRAME + 4],
        frames: Frames::default(),
        link,
        more_frames: false,
        dirty: Vec::new(),
    };
    let thread = std::thread::Builder::new()
        .name("turn".into())
        .spawn(move || {
            svc.run();
            svc.stopped();
        })
        .map_err(io_err("TURN thread"))?;
    tracing::info!(%listen, tls = ?tls_listen, %relay_ip, relay_ports = ?config.relay_ports, handoff = !links.is_empty(), "TURN server listening");
    Ok((TurnHandle { tx, waker, counts, listen, tls_listen }, links, thread))
}

/// The frames of one stream read, copied out of the connection's deframer into one buffer the
/// thread keeps (handling a frame writes to the connection, which the deframer borrows).
#[derive(Debug, Default)]
struct Frames {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

struct Service {
    poll: Poll,
    server: Server<Relays>,
    udp: UdpSocket,
    udp_addr: SocketAddr,
    tcp: TcpListener,
    tls: Option<(TcpListener, SslAcceptor)>,
    conns: HashMap<Token, Conn>,
    by_client: HashMap<(SocketAddr, Transport), Token>,
    next_conn: usize,
    legs: HashMap<LegId, Vec<u16>>,
    leg_ips: Vec<IpAddr>,
    rx: Receiver<TurnMsg>,
    counts: Arc<TurnCounts>,
    epoch: WallInstant,
    stall: Duration,
    max_connections: usize,
    /// Where a peer's datagram is framed for its client (a Data indication or ChannelData).
    peer_out: Vec<u8>,
    frames: Frames,
    /// The hand-off to and from the workers, when the node wired it.
    link: Option<TurnSide>,
    /// Frames from the workers were left for the next turn ([`FRAMES_PER_TURN`]).
    more_frames: bool,
    /// Connections frames from the workers were queued for in this turn (flushed after it).
    dirty: Vec<Token>,
}

impl Service {
    fn now(&self) -> Now {
        let mono = Instant::from_nanos(self.epoch.elapsed().as_nanos() as u64);
        Now { mono, unix_secs: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) }
    }

    fn run(&mut self) {
        let mut events = Events::with_capacity(256);
        let mut buf = vec![0u8; 65_536];
        let mut last_tick = WallInstant::now();
        loop {
            let wait = if self.more_frames { Duration::ZERO } else { TICK };
            if let Err(e) = self.poll.poll(&mut events, Some(wait))
                && e.kind() != ErrorKind::Interrupted
            {
                tracing::error!(error = %e, "TURN poll failed; the TURN server stops");
                return;
            }
            for ev in &events {
                match ev.token() {
                    UDP => self.udp_readable(&mut buf),
                    TCP => self.accept(false),
                    TLS => self.accept(true),
                    WAKE => {}
                    Token(t) if t >= RELAY_BASE => self.relay_readable(u16::try_from(t - RELAY_BASE).unwrap_or(0), &mut buf),
                    t => {
                        if ev.is_writable() {
                            self.flush(t);
                        }
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            self.conn_readable(t, &mut buf, ev.is_read_closed() || ev.is_error());
                        }
                    }
                }
            }
            self.frames_from_workers();
            while let Ok(msg) = self.rx.try_recv() {
                match msg {
                    TurnMsg::Stop => return,
                    TurnMsg::Legs { upsert, remove, retain } => {
                        self.legs_changed(upsert, remove, retain);
                        self.drain_routes();
                    }
                }
            }
            if last_tick.elapsed() >= TICK {
                last_tick = WallInstant::now();
                let now = self.now();
                if self.server.poll_timeout().is_some_and(|t| t <= now.mono) {
                    self.server.handle_timeout(now.mono);
                    self.drain_routes();
                }
                if let Some(l) = &mut self.link {
                    l.push_routes();
                }
                self.sweep_stalled();
                self.publish();
            }
        }
    }

    /// The thread stops: every route goes down for the workers and the shield (they outlive it).
    fn stopped(&mut self) {
        self.drain_routes();
        let live: Vec<ChannelRoute> = self.server.routes().copied().collect();
        if let Some(l) = &mut self.link {
            l.withdraw(live.into_iter());
        }
        self.publish();
    }

    /// Passes the server's route changes on (and drains them without a hand-off: they would pile up).
    fn drain_routes(&mut self) {
        while let Some(change) = self.server.poll_route() {
            if let Some(l) = &mut self.link {
                l.route(change);
            }
        }
    }

    fn publish(&self) {
        for r in Refusal::ALL {
            self.counts.refusals[r as usize].store(self.server.refused(r), Ordering::Relaxed);
        }
        self.counts.allocations.store(self.server.allocation_count() as u64, Ordering::Relaxed);
        self.counts.connections.store(self.conns.len() as u64, Ordering::Relaxed);
        if let Some(l) = &self.link {
            self.counts.routes.store(self.server.routes().count() as u64, Ordering::Relaxed);
            self.counts.route_queue_full.store(l.route_queue_full, Ordering::Relaxed);
            self.counts.handoff_buffers.store(l.buffers(), Ordering::Relaxed);
        }
    }

    /// Relays a client's payload: to an own leg's worker in process, to any other peer through
    /// the allocation's relayed socket.
    fn relay(&mut self, transport: Transport, relayed: SocketAddr, peer: SocketAddr, payload: &[u8]) {
        if let Some(link) = &mut self.link
            && self.server.is_own_leg(peer)
        {
            match link.send_to_leg(relayed, peer, payload) {
                Ok(()) => self.counts.relayed(Flow::HandoffToPeer, transport, payload.len()),
                Err(why) => {
                    self.counts.handoff_dropped[why as usize].fetch_add(1, Ordering::Relaxed);
                }
            }
            return;
        }
        relay_socket(&self.server, &self.counts, transport, relayed, peer, payload);
    }

    /// Writes what the workers framed for stream clients (at most [`FRAMES_PER_TURN`] a turn),
    /// each connection's share with one write after the batch.
    fn frames_from_workers(&mut self) {
        self.more_frames = false;
        if !self.link.as_ref().is_some_and(TurnSide::pending) {
            return;
        }
        let mut dirty = std::mem::take(&mut self.dirty);
        let mut n = 0;
        while n < FRAMES_PER_TURN {
            let Some((from, to, buf)) = self.link.as_mut().and_then(TurnSide::next_frame) else { break };
            n += 1;
            match self.by_client.get(&(to.client, to.transport)).copied() {
                Some(tok) => {
                    let payload = ChannelData::new_checked(buf.filled()).map_or(0, |c| c.data().len());
                    if self.queue(tok, buf.filled()) {
                        self.counts.relayed(Flow::HandoffToClient, to.transport, payload);
                        dirty.push(tok);
                    }
                }
                None => {
                    self.counts.handoff_dropped[HandoffDrop::NoConnection as usize].fetch_add(1, Ordering::Relaxed);
                }
            }
            if let Some(l) = &mut self.link {
                l.give_back(from, buf);
            }
        }
        self.more_frames = n == FRAMES_PER_TURN;
        dirty.sort_unstable();
        dirty.dedup();
        for tok in dirty.drain(..) {
            self.flush(tok);
            if let Some(c) = self.conns.get_mut(&tok)
                && !c.queued.is_empty()
                && !c.writable_armed
                && let Some(s) = c.io.stream()
            {
                c.writable_armed = self.poll.registry().reregister(s, tok, Interest::READABLE | Interest::WRITABLE).is_ok();
            }
        }
        self.dirty = dirty;
    }

    /// Appends `bytes` to a stream client's queue, for a later [`Service::flush`]; false when the
    /// connection is gone or was closed for reading too slowly.
    fn queue(&mut self, tok: Token, bytes: &[u8]) -> bool {
        let Some(c) = self.conns.get_mut(&tok) else { return false };
        if matches!(c.io, Io::Closed | Io::Handshaking(_)) {
            return false;
        }
        c.queued.extend_from_slice(bytes);
        if c.queued.len() > MAX_QUEUED {
            self.close(tok, Close::SlowReader);
            return false;
        }
        true
    }

    fn legs_changed(&mut self, upsert: Vec<(LegId, Vec<u16>)>, remove: Vec<LegId>, retain: Option<Vec<LegId>>) {
        let mut gone: Vec<LegId> = remove;
        if let Some(keep) = retain {
            gone.extend(self.legs.keys().filter(|id| !keep.contains(id)).copied());
        }
        for id in gone {
            if let Some(ports) = self.legs.remove(&id) {
                for p in ports {
                    for ip in &self.leg_ips {
                        self.server.remove_own_leg(SocketAddr::new(*ip, p));
                    }
                }
            }
        }
        for (id, ports) in upsert {
            if let Some(old) = self.legs.insert(id, ports.clone()) {
                for p in old.iter().filter(|p| !ports.contains(p)) {
                    for ip in &self.leg_ips {
                        self.server.remove_own_leg(SocketAddr::new(*ip, *p));
                    }
                }
            }
            for p in ports {
                for ip in &self.leg_ips {
                    self.server.add_own_leg(SocketAddr::new(*ip, p));
                }
            }
        }
    }

    fn udp_readable(&mut self, buf: &mut [u8]) {
        let mut out = [0u8; MAX_RESPONSE];
        for i in 1usize.. {
            let (n, src) = match self.udp.recv_from(buf) {
                Ok(r) => r,
                Err(_) => break,
            };
            let tuple = FiveTuple { client: src, server: self.udp_addr, transport: Transport::Udp };
            let now = self.now();
            let action = self.server.handle_client(now, tuple, &buf[..n], &mut out);
            // A route is on its way to the workers before the client hears its ChannelBind
            // succeed (and so before its media).
            self.drain_routes();
            match action {
                ClientAction::Reply(len) => {
                    if self.udp.send_to(&out[..len], src).is_err() {
                        self.counts.send_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                ClientAction::Relay { relayed, peer, payload } => self.relay(tuple.transport, relayed, peer, payload),
                ClientAction::Dropped(_) => {}
            }
            // The workers handed datagrams are woken once per this many (and after the last).
            if i.is_multiple_of(WAKE_EVERY)
                && let Some(l) = &mut self.link
            {
                l.wake();
            }
        }
        if let Some(l) = &mut self.link {
            l.wake();
        }
    }

    fn relay_readable(&mut self, port: u16, buf: &mut [u8]) {
        // The thread's framing buffer, taken for the loop (writes below borrow the service).
        let mut out = std::mem::take(&mut self.peer_out);
        self.relay_datagrams(port, buf, &mut out);
        self.peer_out = out;
    }

    fn relay_datagrams(&mut self, port: u16, buf: &mut [u8], out: &mut [u8]) {
        loop {
            let Some(sock) = self.server.allocator().sockets.get(&port) else { return };
            let relayed = SocketAddr::new(self.server.allocator().ip, port);
            let (n, peer) = match sock.recv_from(buf) {
                Ok(r) => r,
                Err(_) => return,
            };
            let now = self.now();
            match self.server.handle_peer(now.mono, relayed, peer, &buf[..n], out) {
                PeerAction::ToClient { to, len } => {
                    self.counts.relayed(Flow::SocketToClient, to.transport, n);
                    match to.transport {
                        Transport::Udp => {
                            if self.udp.send_to(&out[..len], to.client).is_err() {
                                self.counts.send_errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        t => {
                            if let Some(tok) = self.by_client.get(&(to.client, t)).copied() {
                                self.write(tok, &out[..len]);
                            }
                        }
                    }
                }
                PeerAction::Dropped(_) => {}
            }
        }
    }

    fn accept(&mut self, tls: bool) {
        loop {
            let r = if tls { self.tls.as_ref().map(|(l, _)| l.accept()) } else { Some(self.tcp.accept()) };
            let Some(Ok((mut stream, client))) = r else { return };
            if self.conns.len() >= self.max_connections {
                self.counts.closed[Close::Limit as usize].fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let local = stream.local_addr().unwrap_or(self.udp_addr);
            let _ = stream.set_nodelay(true);
            let tok = Token(self.next_conn);
            self.next_conn += 1;
            if self.poll.registry().register(&mut stream, tok, Interest::READABLE).is_err() {
                continue;
            }
            let transport = if tls { Transport::Tls } else { Transport::Tcp };
            let io = if tls {
                let Some((_, acceptor)) = &self.tls else { return };
                match acceptor.accept(stream) {
                    Ok(s) => Io::Tls(Box::new(s)),
                    Err(HandshakeError::WouldBlock(m)) => Io::Handshaking(m),
                    Err(_) => {
                        self.counts.closed[Close::Handshake as usize].fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                }
            } else {
                Io::Plain(stream)
            };
            let tuple = FiveTuple { client, server: local, transport };
            self.by_client.insert((client, transport), tok);
            self.conns.insert(
                tok,
                Conn {
                    io,
                    tuple,
                    deframer: StreamDeframer::new(Framing::Turn, MAX_FRAME),
                    queued: Vec::new(),
                    last_rx: WallInstant::now(),
                    writable_armed: false,
                },
            );
        }
    }

    /// Reads what a stream client sent and handles its frames; `to_end`: the peer closed or the
    /// connection failed, read until the socket says so.
    fn conn_readable(&mut self, tok: Token, buf: &mut [u8], to_end: bool) {
        let Some(c) = self.conns.get_mut(&tok) else { return };
        if let Io::Handshaking(_) = c.io {
            let Io::Handshaking(m) = std::mem::replace(&mut c.io, Io::Closed) else { return };
            match m.handshake() {
                Ok(s) => c.io = Io::Tls(Box::new(s)),
                Err(HandshakeError::WouldBlock(m)) => {
                    c.io = Io::Handshaking(m);
                    return;
                }
                Err(_) => return self.close(tok, Close::Handshake),
            }
        }
        let mut closed = None;
        loop {
            let r = match &mut c.io {
                Io::Plain(s) => s.read(buf),
                Io::Tls(s) => s.read(buf),
                _ => return,
            };
            match r {
                Ok(0) => {
                    closed = Some(Close::Peer);
                    break;
                }
                Ok(n) => {
                    c.last_rx = WallInstant::now();
                    c.deframer.push(&buf[..n]);
                    // A short read of a plain socket emptied it, and what arrives later raises a
                    // new edge: the read that would say "nothing more" is a syscall per packet
                    // saved (TLS reads a record at a time, and goes on).
                    if n < buf.len() && !to_end && matches!(c.io, Io::Plain(_)) {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    closed = Some(Close::Peer);
                    break;
                }
            }
        }
        // The frames, each handled in turn (copied out: handling writes to this connection).
        let mut frames = std::mem::take(&mut self.frames);
        frames.bytes.clear();
        frames.ends.clear();
        let mut garbage = false;
        loop {
            match c.deframer.next_frame() {
                Ok(Some(f)) => {
                    frames.bytes.extend_from_slice(f);
                    frames.ends.push(frames.bytes.len());
                }
                Ok(None) => break,
                Err(_) => {
                    garbage = true;
                    break;
                }
            }
        }
        let tuple = c.tuple;
        let mut out = [0u8; MAX_RESPONSE];
        let mut start = 0;
        for &end in &frames.ends {
            let f = &frames.bytes[start..end];
            start = end;
            let now = self.now();
            let action = self.server.handle_client(now, tuple, f, &mut out);
            self.drain_routes();
            match action {
                ClientAction::Reply(len) => self.write(tok, &out[..len]),
                ClientAction::Relay { relayed, peer, payload } => self.relay(tuple.transport, relayed, peer, payload),
                ClientAction::Dropped(_) => {}
            }
        }
        self.frames = frames;
        if let Some(l) = &mut self.link {
            l.wake();
        }
        if garbage {
            self.close(tok, Close::Garbage);
        } else if let Some(why) = closed {
            self.close(tok, why);
        }
    }

    /// Writes `bytes` to a stream client, queueing what the socket does not take.
    fn write(&mut self, tok: Token, bytes: &[u8]) {
        let Some(c) = self.conns.get_mut(&tok) else { return };
        if c.queued.is_empty() {
            let r = match &mut c.io {
                Io::Plain(s) => s.write(bytes),
                Io::Tls(s) => s.write(bytes),
                _ => return,
            };
            match r {
                Ok(n) if n == bytes.len() => return,
                Ok(n) => c.queued.extend_from_slice(&bytes[n..]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => c.queued.extend_from_slice(bytes),
                Err(_) => return self.close(tok, Close::Peer),
            }
        } else {
            c.queued.extend_from_slice(bytes);
        }
        if c.queued.len() > MAX_QUEUED {
            return self.close(tok, Close::SlowReader);
        }
        if !c.writable_armed
            && let Some(s) = c.io.stream()
        {
            c.writable_armed = self.poll.registry().reregister(s, tok, Interest::READABLE | Interest::WRITABLE).is_ok();
        }
    }

    fn flush(&mut self, tok: Token) {
        let Some(c) = self.conns.get_mut(&tok) else { return };
        while !c.queued.is_empty() {
            let r = match &mut c.io {
                Io::Plain(s) => s.write(&c.queued),
                Io::Tls(s) => s.write(&c.queued),
                _ => return,
            };
            match r {
                Ok(0) => return self.close(tok, Close::Peer),
                Ok(n) => {
                    c.queued.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => return self.close(tok, Close::Peer),
            }
        }
        if c.writable_armed
            && let Some(s) = c.io.stream()
        {
            c.writable_armed = self.poll.registry().reregister(s, tok, Interest::READABLE).is_err();
        }
    }

    /// Closes connections that stalled: mid-message, in their TLS handshake, or before they
    /// made an allocation.
    fn sweep_stalled(&mut self) {
        let now = self.now().mono;
        let stalled: Vec<(Token, Close)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.last_rx.elapsed() >= self.stall)
            .filter_map(|(t, c)| match c.io {
                Io::Handshaking(_) => Some((*t, Close::Handshake)),
                _ if c.deframer.buffered() > 0 || self.server.relayed_address(&c.tuple, now).is_none() => Some((*t, Close::Stalled)),
                _ => None,
            })
            .collect();
        for (t, why) in stalled {
            self.close(t, why);
        }
    }

    fn close(&mut self, tok: Token, why: Close) {
        let Some(mut c) = self.conns.remove(&tok) else { return };
        self.counts.closed[why as usize].fetch_add(1, Ordering::Relaxed);
        self.by_client.remove(&(c.tuple.client, c.tuple.transport));
        if let Some(s) = c.io.stream() {
            let _ = self.poll.registry().deregister(s);
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        self.server.close_connection(&c.tuple);
        self.drain_routes();
    }
}

fn relay_socket(server: &Server<Relays>, counts: &TurnCounts, transport: Transport, relayed: SocketAddr, peer: SocketAddr, payload: &[u8]) {
    match server.allocator().sockets.get(&relayed.port()).map(|s| s.send_to(payload, peer)) {
        Some(Ok(_)) => {
            counts.relayed(Flow::SocketToPeer, transport, payload.len());
        }
        _ => {
            counts.send_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket as StdUdp;

    use sluice_core::turn::client::{Answer, TurnClient};
    use sluice_core::turn::{ChannelNumber, RouteChange, encode_channel_data, rest_api_credentials};

    use super::*;
    use crate::bus::{ShieldMsg, WorkerMsg};
    use crate::io::wake::WakeFd;

    /// Sends what `make` builds until a non-challenge answer comes (the first is a 401).
    fn transact(s: &StdUdp, server: SocketAddr, c: &mut TurnClient, mut make: impl FnMut(&mut TurnClient, &mut [u8]) -> usize) -> Answer {
        for _ in 0..2 {
            let mut out = [0u8; 512];
            let n = make(c, &mut out);
            s.send_to(&out[..n], server).unwrap();
            let mut buf = [0u8; 1024];
            let answer = loop {
                let n = s.recv(&mut buf).expect("an answer");
                let a = c.on_answer(&buf[..n]);
                if a != Answer::NotAnAnswer {
                    break a;
                }
            };
            if !matches!(answer, Answer::Retry(_)) {
                return answer;
            }
        }
        Answer::Error(0)
    }

    fn next_route(rx: &crossbeam_channel::Receiver<WorkerMsg>) -> RouteChange {
        loop {
            match rx.recv_timeout(Duration::from_secs(3)).expect("a route change") {
                WorkerMsg::TurnRoute(c) => return c,
                _ => continue,
            }
        }
    }

    /// The TURN thread wired to two (stand-in) workers and a shield: a channel to an own leg
    /// raises a route for every one of them, the client's ChannelData reaches the leg port's
    /// worker in process (not the leg's socket), the worker's answer reaches the client from
    /// the TURN port, and when the thread stops the route goes down everywhere.
    #[test]
    fn a_channel_to_an_own_leg_is_handed_off_both_ways_and_its_route_ends_with_the_thread() {
        let cfg: TurnConfig = toml::from_str("listen = \"127.0.0.1:0\"\nsecret = \"s3cret\"\nrelay_ports = [47100, 47199]\n").unwrap();
        let (inboxes, rxs): (Vec<_>, Vec<_>) = (0..2).map(|_| crossbeam_channel::bounded::<WorkerMsg>(64)).unzip();
        let wakes: Vec<WakeFd> = (0..2).map(|_| WakeFd::new().unwrap()).collect();
        let (shield_tx, shield_rx) = crossbeam_channel::bounded(64);
        let wiring = Wiring { inboxes, wakers: wakes.iter().map(WakeFd::waker).collect(), shield: Some(shield_tx) };
        let (h, mut links, thread) = spawn(&cfg, "127.0.0.1".parse().unwrap(), Vec::new(), WallInstant::now(), Some(wiring)).unwrap();
        assert_eq!(links.len(), 2);
        // An own leg on an odd port (worker 1's), with no socket bound on it: what reaches the
        // worker can only have been handed over.
        let leg = SocketAddr::from(([127, 0, 0, 1], 47_201));
        h.send(TurnMsg::Legs { upsert: vec![(LegId(7), vec![leg.port()])], remove: Vec::new(), retain: None });

        let client = StdUdp::bind("127.0.0.1:0").unwrap();
        client.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let expiry = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 600;
        let (user, pass) = rest_api_credentials(b"s3cret", "alice", expiry);
        let mut c = TurnClient::new(user, pass, [1, 2, 3, 4]);
        let Answer::Success { relayed: Some(relayed), .. } = transact(&client, h.listen, &mut c, |c, o| c.allocate(o).unwrap()) else { panic!("allocate") };
        let ch = ChannelNumber::new(0x4000).unwrap();
        assert!(matches!(transact(&client, h.listen, &mut c, |c, o| c.channel_bind(ch, leg, o).unwrap()), Answer::Success { .. }));

        let up = next_route(&rxs[0]);
        assert_eq!(next_route(&rxs[1]), up);
        let RouteChange::Up(r) = up else { panic!("{up:?}") };
        assert_eq!((r.relayed, r.peer, r.channel, r.client.client), (relayed, leg, ch, client.local_addr().unwrap()));
        assert!(matches!(shield_rx.recv_timeout(Duration::from_secs(1)), Ok(ShieldMsg::TurnRoute(RouteChange::Up(s))) if s == r));

        // Client → leg: in process, to the worker that owns the port, from the relayed address.
        let mut out = [0u8; 64];
        let n = encode_channel_data(&mut out, ch, b"from the client", false).unwrap();
        client.send_to(&out[..n], h.listen).unwrap();
        let t0 = WallInstant::now();
        let (port, src, mut buf) = loop {
            if let Some(d) = links[1].next_datagram() {
                break d;
            }
            assert!(t0.elapsed() < Duration::from_secs(3), "nothing handed over");
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!((port, src, buf.filled_mut().to_vec()), (leg.port(), relayed, b"from the client".to_vec()));
        links[1].spent(buf);
        assert!(links[0].next_datagram().is_none());

        // Leg → client: the worker wraps it and sends it from the TURN port.
        links[1].route(up);
        assert!(links[1].take(leg.port(), relayed, b"from the leg"));
        links[1].finish();
        let mut got = [0u8; 64];
        let (n, from) = client.recv_from(&mut got).unwrap();
        assert_eq!((&got[..n], from), (&b"\x40\x00\x00\x0cfrom the leg"[..], h.listen));

        h.send(TurnMsg::Stop);
        thread.join().unwrap();
        for rx in &rxs {
            assert_eq!(next_route(rx), RouteChange::Down(r));
        }
        assert!(matches!(shield_rx.recv_timeout(Duration::from_secs(1)), Ok(ShieldMsg::TurnRoute(RouteChange::Down(s))) if s == r));
        let text = h.counts().render(FromWorkers { to_client_udp: 1, to_client_udp_bytes: 12, queue_full: 0 });
        for line in [
            "sluice_turn_relayed_packets_total{direction=\"to_peer\",path=\"handoff\",transport=\"udp\"} 1",
            "sluice_turn_relayed_packets_total{direction=\"to_peer\",path=\"socket\",transport=\"udp\"} 0",
            "sluice_turn_relayed_packets_total{direction=\"to_client\",path=\"handoff\",transport=\"udp\"} 1",
            "sluice_turn_relayed_bytes_total{direction=\"to_peer\",path=\"handoff\",transport=\"udp\"} 15",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
