//! The control endpoint: a Unix stream socket through which the control plane applies versioned
//! table deltas, reads the applied generation, takes a full snapshot and reads stats.
//!
//! Framing: each message is a 4-byte big-endian length followed by that many bytes of JSON
//! ([`Request`] one way, [`Response`] the other), one response per request, in order. JSON keeps
//! the wire debuggable; deltas are cold-path traffic. Each connection has its own thread; requests
//! go one at a time (across connections too) to a handler that talks to the workers, so deltas
//! reach every worker in one order, no control-plane I/O ever runs on a worker, and a control
//! plane that disappears leaves the workers forwarding with their tables.
//!
//! A connection that sends [`Request::Subscribe`] becomes a stream: after
//! [`Response::Subscribed`] the dataplane writes [`Response::Events`] batches as workers produce
//! them and, when asked for, [`Response::Stats`] at a fixed interval, until the peer closes it.

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;
use serde::{Deserialize, Serialize};
use sluice_core::forward::Event;
use sluice_core::ids::Generation;
use sluice_core::stats::CoreStats;
use sluice_core::table::Delta;

/// Largest frame accepted (a full snapshot of a big node fits comfortably).
pub const MAX_FRAME: usize = 64 << 20;

/// What the control plane asks.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// Apply a delta on every worker, atomically per worker, between batches.
    Apply(Delta),
    /// The generation every worker has applied.
    Generation,
    /// The full table as a replace-all delta at the current generation.
    Snapshot,
    /// Per-worker counters.
    Stats,
    /// The WebRTC slow path's status (DTLS certificate fingerprint, counters); with `rotate`, a
    /// new certificate is made first (new handshakes use it).
    Edge {
        /// Rotate the certificate first.
        #[serde(default)]
        rotate: bool,
    },
    /// Turn this connection into a stream of events (and of stats every `stats_interval_ms`,
    /// when not 0).
    Subscribe {
        /// How often to send [`Response::Stats`]; 0: never.
        stats_interval_ms: u32,
    },
}

/// A stream without events still sends an empty [`Response::Events`] this often, so either side
/// notices a dead peer.
pub const KEEPALIVE: Duration = Duration::from_secs(5);

/// What the dataplane answers.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// The delta is applied everywhere; the tables are at this generation.
    Applied(Generation),
    /// The delta was refused (nothing changed); the reason names the op and field.
    Rejected {
        /// The tables' generation, unchanged.
        generation: Generation,
        /// Why.
        reason: String,
    },
    /// The applied generation.
    Generation(Generation),
    /// The full table.
    Snapshot(Delta),
    /// Counters per worker, in worker order.
    Stats(Vec<CoreStats>),
    /// The slow path's status.
    Edge(crate::edge::EdgeStatus),
    /// The connection is now a stream of events and stats.
    Subscribed,
    /// Events from the workers, in the order each worker produced them.
    Events(Vec<Event>),
    /// The request could not be decoded or served.
    Error(String),
}

/// Writes one frame.
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> io::Result<()> {
    let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
    let len = u32::try_from(body.len()).map_err(|_| io::Error::other("frame too large"))?;
    w.write_all(&len.to_be_bytes())?;
    w.write_all(&body)?;
    w.flush()
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub fn read_frame<R: Read, T: for<'de> Deserialize<'de>>(r: &mut R) -> io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("frame of {len} bytes is over {MAX_FRAME}")));
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    serde_json::from_slice(&body).map(Some).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Serves the endpoint at `path` (replacing a stale socket file): one thread per connection,
/// requests passed to `handler` one at a time, subscriptions fed from `hub`.
pub fn serve<H>(path: &Path, hub: Arc<crate::events::EventHub>, handler: H) -> io::Result<JoinHandle<()>>
where
    H: FnMut(Request) -> Response + Send + 'static,
{
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    let path: PathBuf = path.into();
    let handler = Arc::new(Mutex::new(handler));
    std::thread::Builder::new().name("control".into()).spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let (handler, hub, path) = (handler.clone(), hub.clone(), path.clone());
            let spawned = std::thread::Builder::new().name("control-conn".into()).spawn(move || {
                tracing::info!(socket = %path.display(), "control plane connected");
                serve_connection(conn, &hub, &handler);
                tracing::info!("control plane disconnected; forwarding continues with the current tables");
            });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot serve a control connection");
            }
        }
    })
}

fn call<H: FnMut(Request) -> Response>(handler: &Mutex<H>, req: Request) -> Response {
    let mut h = handler.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    h(req)
}

fn serve_connection<H: FnMut(Request) -> Response>(mut conn: UnixStream, hub: &crate::events::EventHub, handler: &Mutex<H>) {
    loop {
        let req: Request = match read_frame(&mut conn) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                let _ = write_frame(&mut conn, &Response::Error(e.to_string()));
                return;
            }
        };
        if let Request::Subscribe { stats_interval_ms } = req {
            stream(conn, hub, handler, stats_interval_ms);
            return;
        }
        if write_frame(&mut conn, &call(handler, req)).is_err() {
            return;
        }
    }
}

/// Writes events (and stats) to a subscriber until it goes away.
fn stream<H: FnMut(Request) -> Response>(mut conn: UnixStream, hub: &crate::events::EventHub, handler: &Mutex<H>, stats_ms: u32) {
    let events = hub.subscribe();
    if write_frame(&mut conn, &Response::Subscribed).is_err() {
        return;
    }
    let stats_every = (stats_ms > 0).then(|| Duration::from_millis(u64::from(stats_ms)));
    let mut next_stats = stats_every.map(|d| Instant::now() + d);
    let mut last_write = Instant::now();
    loop {
        let deadline = next_stats.map_or(last_write + KEEPALIVE, |t| t.min(last_write + KEEPALIVE));
        match events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(batch) => {
                let mut all = batch.to_vec();
                all.extend(events.try_iter().take(16).flat_map(|b| b.to_vec()));
                if write_frame(&mut conn, &Response::Events(all)).is_err() {
                    return;
                }
                last_write = Instant::now();
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        let frame = if next_stats.is_some_and(|t| now >= t) {
            next_stats = stats_every.map(|d| now + d);
            call(handler, Request::Stats)
        } else if now >= last_write + KEEPALIVE {
            Response::Events(Vec::new())
        } else {
            continue;
        };
        if write_frame(&mut conn, &frame).is_err() {
            return;
        }
        last_write = now;
    }
}

/// A client of the endpoint (the control plane's side, and tests).
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
}

impl Client {
    /// Connects to the endpoint at `path`.
    pub fn connect(path: &Path) -> io::Result<Self> {
        Ok(Self { stream: UnixStream::connect(path)? })
    }

    /// Sends a request and waits for its response.
    pub fn call(&mut self, req: &Request) -> io::Result<Response> {
        write_frame(&mut self.stream, req)?;
        self.receive()
    }

    /// Turns the connection into a subscription (see [`Request::Subscribe`]); read it with
    /// [`Client::receive`].
    pub fn subscribe(&mut self, stats_interval_ms: u32) -> io::Result<()> {
        match self.call(&Request::Subscribe { stats_interval_ms })? {
            Response::Subscribed => Ok(()),
            other => Err(io::Error::other(format!("subscribe refused: {other:?}"))),
        }
    }

    /// The next frame the dataplane sends.
    pub fn receive(&mut self) -> io::Result<Response> {
        read_frame(&mut self.stream)?.ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "dataplane closed the control socket"))
    }

    /// Bounds how long [`Client::call`] and [`Client::receive`] wait.
    pub fn set_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.stream.set_read_timeout(timeout)?;
        self.stream.set_write_timeout(timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_over_the_socket() {
        let dir = std::env::temp_dir().join(format!("sluice-control-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dp.sock");
        let mut applied = 0u64;
        let _t = serve(&path, crate::events::EventHub::new(), move |req| match req {
            Request::Apply(d) if d.generation.0 == applied + 1 => {
                applied += 1;
                Response::Applied(d.generation)
            }
            Request::Apply(_) => Response::Rejected { generation: Generation(applied), reason: "generation".into() },
            Request::Generation => Response::Generation(Generation(applied)),
            _ => Response::Error("unsupported".into()),
        })
        .unwrap();
        let mut c = Client::connect(&path).unwrap();
        let d = Delta { generation: Generation(1), replace_all: false, ops: vec![] };
        assert!(matches!(c.call(&Request::Apply(d.clone())).unwrap(), Response::Applied(Generation(1))));
        assert!(matches!(c.call(&Request::Apply(d)).unwrap(), Response::Rejected { generation: Generation(1), .. }));
        assert!(matches!(c.call(&Request::Generation).unwrap(), Response::Generation(Generation(1))));
        // A garbage frame gets an error, not a hang or a crash.
        let mut raw = UnixStream::connect(&path);
        drop(c);
        let raw = raw.as_mut().unwrap();
        raw.write_all(&5u32.to_be_bytes()).unwrap();
        raw.write_all(b"nope!").unwrap();
        let resp: Response = read_frame(raw).unwrap().unwrap();
        assert!(matches!(resp, Response::Error(_)));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_subscriber_streams_events_and_stats_while_another_connection_programs() {
        let dir = std::env::temp_dir().join(format!("sluice-control-sub-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dp.sock");
        let hub = crate::events::EventHub::new();
        let (tx, rx) = crate::events::channel();
        let _pump = hub.spawn_pump(rx).unwrap();
        let _t = serve(&path, hub.clone(), |req| match req {
            Request::Stats => Response::Stats(vec![CoreStats { rx_packets: 7, ..CoreStats::default() }]),
            Request::Generation => Response::Generation(Generation(3)),
            _ => Response::Error("unsupported".into()),
        })
        .unwrap();
        let mut sub = Client::connect(&path).unwrap();
        sub.set_timeout(Some(Duration::from_secs(5))).unwrap();
        sub.subscribe(50).unwrap();
        // The subscription does not block request/response on another connection.
        let mut c = Client::connect(&path).unwrap();
        assert!(matches!(c.call(&Request::Generation).unwrap(), Response::Generation(Generation(3))));
        let sent: Vec<Event> = (0..100).map(|i| Event::LegIdle { leg: sluice_core::ids::LegId(i) }).collect();
        for e in &sent {
            tx.send(*e).unwrap();
        }
        let (mut got, mut stats) = (Vec::new(), 0);
        let until = Instant::now() + Duration::from_secs(5);
        while (got.len() < sent.len() || stats < 2) && Instant::now() < until {
            match sub.receive().unwrap() {
                Response::Events(e) => got.extend(e),
                Response::Stats(s) => {
                    assert_eq!(s[0].rx_packets, 7);
                    stats += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(got, sent);
        assert!(stats >= 2, "stats arrive every 50 ms");
        drop(sub);
        // The hub forgets the subscriber once a write fails.
        let until = Instant::now() + Duration::from_secs(10);
        while hub.subscribers() > 0 && Instant::now() < until {
            tx.send(Event::LegIdle { leg: sluice_core::ids::LegId(0) }).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(hub.subscribers(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
