//! ICE-TCP (RFC 6544): a passive TCP candidate for WebRTC legs, for browsers that cannot send
//! UDP at all. One listening port for the node (`[dataplane.ice_tcp]`); each connection carries
//! RFC 4571 frames (a 2-byte length, then a STUN message, DTLS record or SRTP packet).
//!
//! ```text
//!   browser ──TCP (RFC 4571)──▶ ice-tcp thread: the first frame must be an ICE check whose
//!                               USERNAME names a WebRTC leg (its local ufrag) → that leg's port
//!                               frames ◀──▶ a UDP socket of the connection's own ◀──▶ the leg
//! ```
//!
//! The connection is bridged to its leg through a UDP socket of its own on the leg's address, so
//! the worker, the ICE-lite agent and the DTLS handshake see an ordinary UDP remote; the ICE
//! agent validates it as it does any candidate. A connection whose first frame is not a check for
//! a known leg, that sends garbage or an oversized frame, or that stalls mid-frame is closed and
//! counted.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant as WallInstant};

use crossbeam_channel::{Receiver, Sender};
use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::{Events, Interest, Poll, Token, Waker};
use sluice_core::ids::LegId;
use sluice_core::turn::{Framing, StreamDeframer, rfc4571_prefix};

use crate::bus::LegChange;

const LISTEN: Token = Token(0);
const WAKE: Token = Token(1);
/// TCP connections are even tokens from here, their UDP sockets the odd one after.
const CONN_BASE: usize = 16;
/// Frames are at most 65535 bytes (the length prefix).
const MAX_FRAME: usize = 2 + 65_535;
/// Bytes queued for a browser that does not read before it is disconnected.
const MAX_QUEUED: usize = 4 << 20;
const TICK: Duration = Duration::from_millis(100);

/// `[dataplane.ice_tcp]`.
#[derive(Clone, Debug, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IceTcpConfig {
    /// The passive TCP candidate's address (its port is announced; the address is the legs').
    pub listen: SocketAddr,
    /// A connection that has not finished a frame this long after its last bytes is closed (ms).
    #[serde(default = "default_stall_ms")]
    pub stall_timeout_ms: u64,
    /// Connections open at once (more are refused at accept).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

fn default_stall_ms() -> u64 {
    10_000
}

fn default_max_connections() -> usize {
    4096
}

/// Why a connection was closed; names in [`CLOSE_NAMES`].
#[derive(Clone, Copy, Debug)]
enum Close {
    Stalled = 0,
    Garbage = 1,
    UnknownLeg = 2,
    SlowReader = 3,
    Limit = 4,
    Peer = 5,
}
const CLOSE_NAMES: [&str; 6] = ["stalled", "garbage", "unknown_leg", "slow_reader", "connection_limit", "client_closed"];

/// Counters the metrics endpoint reads.
#[derive(Debug, Default)]
pub struct IceTcpCounts {
    connections: AtomicU64,
    closed: [AtomicU64; CLOSE_NAMES.len()],
    frames_in: AtomicU64,
    frames_out: AtomicU64,
}

impl IceTcpCounts {
    /// Prometheus text for these counters.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# HELP sluice_ice_tcp_connections ICE-TCP connections open.\n# TYPE sluice_ice_tcp_connections gauge\nsluice_ice_tcp_connections {}",
            ld(&self.connections)
        );
        let _ = writeln!(s, "# HELP sluice_ice_tcp_closed_total ICE-TCP connections closed, by reason.\n# TYPE sluice_ice_tcp_closed_total counter");
        for (i, n) in CLOSE_NAMES.iter().enumerate() {
            let _ = writeln!(s, "sluice_ice_tcp_closed_total{{reason=\"{n}\"}} {}", ld(&self.closed[i]));
        }
        let _ = writeln!(s, "# HELP sluice_ice_tcp_frames_total RFC 4571 frames, by direction.\n# TYPE sluice_ice_tcp_frames_total counter");
        let _ = writeln!(s, "sluice_ice_tcp_frames_total{{direction=\"in\"}} {}", ld(&self.frames_in));
        let _ = writeln!(s, "sluice_ice_tcp_frames_total{{direction=\"out\"}} {}", ld(&self.frames_out));
        s
    }
}

/// The running ICE-TCP thread.
#[derive(Debug)]
pub struct IceTcpHandle {
    tx: Sender<Option<Vec<LegChange>>>,
    waker: Arc<Waker>,
    counts: Arc<IceTcpCounts>,
    /// The port it listens on (the passive candidate's).
    pub port: u16,
}

impl IceTcpHandle {
    /// The WebRTC legs changed (the slow path's view of a delta).
    pub fn legs(&self, changes: Vec<LegChange>) {
        if self.tx.send(Some(changes)).is_ok() {
            let _ = self.waker.wake();
        }
    }

    /// Stops the thread.
    pub fn stop(&self) {
        if self.tx.send(None).is_ok() {
            let _ = self.waker.wake();
        }
    }

    /// Its counters.
    pub fn counts(&self) -> Arc<IceTcpCounts> {
        self.counts.clone()
    }
}

struct Conn {
    tcp: TcpStream,
    deframer: StreamDeframer,
    udp: Option<UdpSocket>,
    queued: Vec<u8>,
    last_rx: WallInstant,
    writable_armed: bool,
}

/// Starts the ICE-TCP thread; legs are reached at `leg_ip` (the dataplane's listen address, or
/// the listener's when that is unspecified).
pub fn spawn(config: &IceTcpConfig, leg_ip: IpAddr) -> io::Result<(IceTcpHandle, JoinHandle<()>)> {
    let leg_ip = if leg_ip.is_unspecified() { config.listen.ip() } else { leg_ip };
    let poll = Poll::new()?;
    let mut listener = TcpListener::bind(config.listen)?;
    let port = listener.local_addr()?.port();
    poll.registry().register(&mut listener, LISTEN, Interest::READABLE)?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
    let (tx, rx) = crossbeam_channel::unbounded();
    let counts = Arc::new(IceTcpCounts::default());
    let mut svc = Service {
        poll,
        listener,
        conns: HashMap::new(),
        next: CONN_BASE,
        ufrags: HashMap::new(),
        legs: HashMap::new(),
        leg_ip,
        rx,
        counts: counts.clone(),
        stall: Duration::from_millis(config.stall_timeout_ms),
        max_connections: config.max_connections,
    };
    let thread = std::thread::Builder::new().name("ice-tcp".into()).spawn(move || svc.run())?;
    tracing::info!(port, %leg_ip, "ICE-TCP passive candidate listening");
    Ok((IceTcpHandle { tx, waker, counts, port }, thread))
}

struct Service {
    poll: Poll,
    listener: TcpListener,
    conns: HashMap<usize, Conn>,
    next: usize,
    /// A WebRTC leg's local ufrag → its port.
    ufrags: HashMap<String, u16>,
    legs: HashMap<LegId, String>,
    leg_ip: IpAddr,
    rx: Receiver<Option<Vec<LegChange>>>,
    counts: Arc<IceTcpCounts>,
    stall: Duration,
    max_connections: usize,
}

impl Service {
    fn run(&mut self) {
        let mut events = Events::with_capacity(256);
        // One buffer for the thread: a frame's length prefix and its largest payload.
        let mut buf = vec![0u8; MAX_FRAME];
        let mut last_tick = WallInstant::now();
        loop {
            if let Err(e) = self.poll.poll(&mut events, Some(TICK))
                && e.kind() != ErrorKind::Interrupted
            {
                tracing::error!(error = %e, "ICE-TCP poll failed; the listener stops");
                return;
            }
            for ev in &events {
                match ev.token() {
                    LISTEN => self.accept(),
                    WAKE => {}
                    Token(t) if t % 2 == 0 => {
                        if ev.is_writable() {
                            self.flush(t);
                        }
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            self.tcp_readable(t, &mut buf);
                        }
                    }
                    Token(t) => self.udp_readable(t - 1, &mut buf),
                }
            }
            while let Ok(msg) = self.rx.try_recv() {
                match msg {
                    None => return,
                    Some(changes) => self.legs_changed(changes),
                }
            }
            if last_tick.elapsed() >= TICK {
                last_tick = WallInstant::now();
                let stalled: Vec<usize> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| c.last_rx.elapsed() >= self.stall && (c.deframer.buffered() > 0 || c.udp.is_none()))
                    .map(|(t, _)| *t)
                    .collect();
                for t in stalled {
                    self.close(t, Close::Stalled);
                }
                self.counts.connections.store(self.conns.len() as u64, Ordering::Relaxed);
            }
        }
    }

    fn legs_changed(&mut self, changes: Vec<LegChange>) {
        for c in changes {
            match c {
                LegChange::Upsert { leg, port, spec } => {
                    if let Some(old) = self.legs.insert(leg, spec.local.ufrag.clone()) {
                        self.ufrags.remove(&old);
                    }
                    self.ufrags.insert(spec.local.ufrag, port);
                }
                LegChange::Remove(leg) => {
                    if let Some(old) = self.legs.remove(&leg) {
                        self.ufrags.remove(&old);
                    }
                }
                LegChange::Retain(keep) => {
                    let gone: Vec<LegId> = self.legs.keys().filter(|l| !keep.contains(l)).copied().collect();
                    for leg in gone {
                        if let Some(old) = self.legs.remove(&leg) {
                            self.ufrags.remove(&old);
                        }
                    }
                }
            }
        }
    }

    fn accept(&mut self) {
        while let Ok((mut tcp, _)) = self.listener.accept() {
            if self.conns.len() >= self.max_connections {
                self.counts.closed[Close::Limit as usize].fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let _ = tcp.set_nodelay(true);
            let t = self.next;
            self.next += 2;
            if self.poll.registry().register(&mut tcp, Token(t), Interest::READABLE).is_err() {
                continue;
            }
            self.conns.insert(
                t,
                Conn {
                    tcp,
                    deframer: StreamDeframer::new(Framing::Rfc4571, MAX_FRAME),
                    udp: None,
                    queued: Vec::new(),
                    last_rx: WallInstant::now(),
                    writable_armed: false,
                },
            );
        }
    }

    fn tcp_readable(&mut self, t: usize, buf: &mut [u8]) {
        let Some(c) = self.conns.get_mut(&t) else { return };
        let mut closed = false;
        loop {
            match c.tcp.read(buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => {
                    c.last_rx = WallInstant::now();
                    c.deframer.push(&buf[..n]);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        let mut why = closed.then_some(Close::Peer);
        loop {
            let frame = match c.deframer.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => {
                    why = Some(Close::Garbage);
                    break;
                }
            };
            self.counts.frames_in.fetch_add(1, Ordering::Relaxed);
            if c.udp.is_none() {
                // The first frame names the leg: an ICE check whose USERNAME starts with the
                // leg's local ufrag.
                let port = sluice_core::ice::binding_request_ufrag(frame).and_then(|u| u.split(':').next()).and_then(|local| self.ufrags.get(local).copied());
                let Some(port) = port else {
                    why = Some(Close::UnknownLeg);
                    break;
                };
                match UdpSocket::bind(SocketAddr::new(self.leg_ip, 0)).and_then(|s| s.connect(SocketAddr::new(self.leg_ip, port)).map(|()| s)) {
                    Ok(mut s) => {
                        if self.poll.registry().register(&mut s, Token(t + 1), Interest::READABLE).is_err() {
                            why = Some(Close::Peer);
                            break;
                        }
                        c.udp = Some(s);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "ICE-TCP: no UDP socket for a connection");
                        why = Some(Close::Peer);
                        break;
                    }
                }
            }
            if let Some(u) = &c.udp {
                let _ = u.send(frame);
            }
        }
        if let Some(w) = why {
            self.close(t, w);
        }
    }

    fn udp_readable(&mut self, t: usize, buf: &mut [u8]) {
        loop {
            let Some(c) = self.conns.get_mut(&t) else { return };
            let Some(u) = &c.udp else { return };
            // Received after the 2 bytes its length prefix takes: framed in place, no copy.
            let Some(room) = buf.get_mut(2..) else { return };
            let n = match u.recv(room) {
                Ok(n) => n,
                Err(_) => return,
            };
            let Some(prefix) = rfc4571_prefix(n) else { continue };
            self.counts.frames_out.fetch_add(1, Ordering::Relaxed);
            buf[..2].copy_from_slice(&prefix);
            self.write(t, &buf[..n + 2]);
        }
    }

    fn write(&mut self, t: usize, bytes: &[u8]) {
        let Some(c) = self.conns.get_mut(&t) else { return };
        if c.queued.is_empty() {
            match c.tcp.write(bytes) {
                Ok(n) if n == bytes.len() => return,
                Ok(n) => c.queued.extend_from_slice(&bytes[n..]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => c.queued.extend_from_slice(bytes),
                Err(_) => return self.close(t, Close::Peer),
            }
        } else {
            c.queued.extend_from_slice(bytes);
        }
        if c.queued.len() > MAX_QUEUED {
            return self.close(t, Close::SlowReader);
        }
        if !c.writable_armed {
            c.writable_armed = self.poll.registry().reregister(&mut c.tcp, Token(t), Interest::READABLE | Interest::WRITABLE).is_ok();
        }
    }

    fn flush(&mut self, t: usize) {
        let Some(c) = self.conns.get_mut(&t) else { return };
        while !c.queued.is_empty() {
            match c.tcp.write(&c.queued) {
                Ok(0) => return self.close(t, Close::Peer),
                Ok(n) => {
                    c.queued.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => return self.close(t, Close::Peer),
            }
        }
        if c.writable_armed {
            c.writable_armed = self.poll.registry().reregister(&mut c.tcp, Token(t), Interest::READABLE).is_err();
        }
    }

    fn close(&mut self, t: usize, why: Close) {
        let Some(mut c) = self.conns.remove(&t) else { return };
        self.counts.closed[why as usize].fetch_add(1, Ordering::Relaxed);
        let _ = self.poll.registry().deregister(&mut c.tcp);
        if let Some(mut u) = c.udp.take() {
            let _ = self.poll.registry().deregister(&mut u);
        }
        let _ = c.tcp.shutdown(std::net::Shutdown::Both);
    }
}
