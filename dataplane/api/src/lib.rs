//! The control protocol between Sluice's control plane and its dataplane, in a crate of its own
//! so the control plane (and any tool) speaks it without building the daemon, its XDP object or
//! the nightly toolchain.
//!
//! Framing: each message is a 4-byte big-endian length followed by that many bytes of JSON
//! ([`Request`] one way, [`Response`] the other), one response per request, in order. JSON keeps
//! the wire debuggable; deltas are cold-path traffic. The server side is the dataplane's
//! `control` module.
//!
//! Also here: the instance lock both daemons take ([`lock`]), and the WebRTC edge's status
//! ([`EdgeStatus`]) and certificate-fingerprint syntax, which the control plane validates.
#![deny(missing_docs)]

pub mod lock;

pub mod logs;

pub mod service;

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_core::forward::Event;
use sluice_core::ids::Generation;
use sluice_core::stats::CoreStats;
use sluice_core::table::Delta;
use sluice_core::table::checkpoint::Checkpoint;

/// The version of this protocol. A client says it in its first frame ([`Request::Hello`]); a
/// dataplane that speaks another answers [`Response::Error`] and closes, so a control plane and a
/// dataplane of incompatible builds refuse each other at once instead of misreading frames.
/// Version 2: snapshots redact key material unless asked for it ([`Request::Snapshot`]).
/// Version 3: a delta whose leg ports could not all be opened is answered
/// [`Response::AppliedUnbound`], naming them.
/// Version 4: tracks carry the dependency-descriptor extension id and subscriptions spatial and
/// temporal ceilings (an older dataplane would ignore them and forward every layer).
pub const PROTOCOL_VERSION: u32 = 4;

/// Largest frame accepted: the full tables of a node as one replace-all delta or snapshot (a
/// subscription takes about 180 bytes of JSON, so 600,000 of them about 105 MB; this leaves room
/// for several million). A frame's memory grows with the bytes that actually arrive, not with
/// the length its header claims.
pub const MAX_FRAME: usize = 1 << 30;

/// What the control plane asks.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// The first frame of a connection: the client's protocol version.
    Hello {
        /// [`PROTOCOL_VERSION`] of the client.
        version: u32,
    },
    /// Apply a delta on every worker, atomically per worker, between batches.
    Apply(Delta),
    /// The generation every worker has applied.
    Generation,
    /// The full table as a replace-all delta at the current generation. Its SRTP key material
    /// is redacted (empty key and salt, with their digest: `KeyMaterial::redacted`) unless
    /// `keys` is set, and keys are served only to a peer running as root or as the dataplane's
    /// own uid (`SO_PEERCRED`); anyone else asking for them gets [`Response::Error`].
    /// (DTLS-derived keys are runtime state and never in a snapshot.)
    Snapshot {
        /// Include the key and salt bytes.
        #[serde(default)]
        keys: bool,
    },
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
    /// The stream state of these legs now (their receive state, and the positions of the
    /// streams they receive), from every worker: what a session moving to another node takes.
    StreamState {
        /// The legs.
        legs: Vec<sluice_core::ids::LegId>,
    },
    /// Resume the legs and streams of this state exactly where it says (a session moved here
    /// from another node that stopped sending first), into the tables' legs that match it
    /// (same id and keys) and have not started afresh, now and after every delta for a while.
    Restore(Checkpoint),
}

/// A stream without events still sends an empty [`Response::Events`] this often, so either side
/// notices a dead peer.
pub const KEEPALIVE: Duration = Duration::from_secs(5);

/// What the dataplane answers.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// The answer to [`Request::Hello`]: the dataplane speaks this version too.
    Hello {
        /// [`PROTOCOL_VERSION`] of the dataplane.
        version: u32,
    },
    /// The delta is applied everywhere; the tables are at this generation.
    Applied(Generation),
    /// The delta is applied everywhere, but these leg ports could not be opened (another
    /// process holds them, the descriptor limit, ...): their legs receive nothing until they
    /// can. Every port of the node's legs that is not open is listed, not only this delta's.
    AppliedUnbound {
        /// The tables' generation.
        generation: Generation,
        /// The ports, each with why it could not be opened.
        unbound: Vec<UnboundPort>,
    },
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
    Edge(EdgeStatus),
    /// The connection is now a stream of events and stats.
    Subscribed,
    /// Events from the workers, in the order each worker produced them.
    Events(Vec<Event>),
    /// The answer to [`Request::StreamState`].
    StreamState(Checkpoint),
    /// [`Request::Restore`] reached every worker.
    Restoring,
    /// The request could not be decoded or served.
    Error(String),
}

/// A leg port the dataplane could not open.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnboundPort {
    /// The local UDP port.
    pub port: u16,
    /// Why (the bind error).
    pub error: String,
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
    // Grown as the bytes arrive (a header alone cannot make us allocate its length).
    let mut body = Vec::with_capacity(len.min(1 << 20));
    r.take(len as u64).read_to_end(&mut body)?;
    if body.len() != len {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("frame cut short: {} of {len} bytes", body.len())));
    }
    serde_json::from_slice(&body).map(Some).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The lock file that guards the socket at `socket`: `<socket>.lock`, beside it.
pub fn lock_path(socket: &Path) -> PathBuf {
    let mut name = socket.as_os_str().to_os_string();
    name.push(".lock");
    PathBuf::from(name)
}

/// A client of the endpoint (the control plane's side, and tests).
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
}

impl Client {
    /// Connects to the endpoint at `path` and says hello: the dataplane must speak
    /// [`PROTOCOL_VERSION`].
    pub fn connect(path: &Path) -> io::Result<Self> {
        let mut c = Self { stream: UnixStream::connect(path)? };
        c.hello()?;
        Ok(c)
    }

    /// Sends [`Request::Hello`] and checks the answer (done by [`Client::connect`]).
    pub fn hello(&mut self) -> io::Result<()> {
        match self.call(&Request::Hello { version: PROTOCOL_VERSION })? {
            Response::Hello { version } if version == PROTOCOL_VERSION => Ok(()),
            other => Err(io::Error::new(io::ErrorKind::InvalidData, format!("the dataplane does not speak control protocol {PROTOCOL_VERSION}: {other:?}"))),
        }
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

/// The WebRTC slow path's state, for the control endpoint and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeStatus {
    /// The current certificate's fingerprint, `sha-256 AB:CD:...` (for `a=fingerprint`).
    pub fingerprint: String,
    /// WebRTC legs known.
    pub legs: u64,
    /// The address the leg sockets are bound to.
    #[serde(default)]
    pub listen_ip: Option<std::net::IpAddr>,
    /// Counters by name.
    pub counters: Vec<(String, u64)>,
    /// The dataplane's leg port range, inclusive (a leg outside it is refused): the control
    /// plane refuses a change that would allocate a port outside it. `None` from older builds.
    #[serde(default)]
    pub port_range: Option<(u16, u16)>,
    /// How many workers the dataplane runs: a leg belongs to worker `local_port % workers`, so
    /// the control plane picks ports to keep a small session on one worker and to spread a big
    /// one. `None` from older builds.
    #[serde(default)]
    pub workers: Option<u16>,
    /// The ICE-TCP passive candidate's port (RFC 6544), when the dataplane has one.
    #[serde(default)]
    pub ice_tcp_port: Option<u16>,
}

/// Where the kernel reads the ephemeral port range its clients' sockets get ports from.
pub const EPHEMERAL_RANGE_FILE: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// The part of `range` (inclusive) inside the kernel's ephemeral port range, when they overlap:
/// any local client socket may take such a port first, and a leg given it is dead. `None` also
/// when the kernel's range cannot be read.
pub fn ephemeral_overlap(range: (u16, u16)) -> Option<(u16, u16)> {
    let text = std::fs::read_to_string(EPHEMERAL_RANGE_FILE).ok()?;
    let mut it = text.split_whitespace().map(str::parse::<u16>);
    let (lo, hi) = (it.next()?.ok()?, it.next()?.ok()?);
    let (a, b) = (range.0.max(lo), range.1.min(hi));
    (a <= b).then_some((a, b))
}

/// The digest length of a certificate-fingerprint hash function (RFC 8122 §5), by its SDP name.
pub fn fingerprint_digest_len(alg: &str) -> Option<usize> {
    match alg.to_ascii_lowercase().as_str() {
        "sha-1" => Some(20),
        "sha-256" => Some(32),
        "sha-384" => Some(48),
        "sha-512" => Some(64),
        _ => None,
    }
}

/// Parses an `a=fingerprint` value (`sha-256 AB:CD:...`): the hash function's name and the
/// digest, `None` unless the function is known and the digest has its length.
pub fn parse_fingerprint(s: &str) -> Option<(String, Vec<u8>)> {
    let (alg, hex) = s.trim().split_once(' ')?;
    let len = fingerprint_digest_len(alg)?;
    let bytes = hex.trim().split(':').map(|h| u8::from_str_radix(h, 16).ok().filter(|_| h.len() == 2)).collect::<Option<Vec<u8>>>()?;
    (bytes.len() == len).then(|| (alg.to_ascii_lowercase(), bytes))
}

#[cfg(test)]
mod tests {
    use sluice_core::verdict::DropReason;

    use super::*;

    #[test]
    fn frames_round_trip_and_oversized_frames_are_refused() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &Request::Generation).unwrap();
        let back: Option<Request> = read_frame(&mut &buf[..]).unwrap();
        assert!(matches!(back, Some(Request::Generation)));
        let empty: Option<Request> = read_frame(&mut &[][..]).unwrap();
        assert!(empty.is_none());
        let huge = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert!(read_frame::<_, Request>(&mut &huge[..]).is_err());
        // A header claiming a big frame allocates nothing it does not receive: cut short, an
        // error.
        let mut short = ((MAX_FRAME - 1) as u32).to_be_bytes().to_vec();
        short.extend_from_slice(b"{}");
        let e = read_frame::<_, Request>(&mut &short[..]).unwrap_err();
        assert!(e.to_string().contains("cut short"), "{e}");
    }

    /// The full tables of a node with 600,000 subscriptions go in one frame (they did not fit the
    /// 64 MiB limit there was: a restarted dataplane could never be resynced).
    #[test]
    fn a_replace_all_delta_of_600k_subscriptions_fits_a_frame() {
        use sluice_core::ids::{LegId, Pt, Ssrc, TrackId};
        use sluice_core::table::{Op, SubscriptionSpec};
        let sub = |i: u32| {
            Op::UpsertSubscription(SubscriptionSpec {
                max_temporal: None,
                max_spatial: None,
                subscriber: LegId(1 + i / 1096),
                track: TrackId(1 + i % 1096),
                out_ssrc: Ssrc(0x4000_0000 + i * 4),
                out_rtx_ssrc: Some(Ssrc(0x4000_0001 + i * 4)),
                pt_map: vec![(Pt(111), Pt(111)), (Pt(96), Pt(96)), (Pt(97), Pt(97))],
                ext_map: vec![],
                target_layer: 2,
                paused: false,
                priority: 0,
                relay: Vec::new(),
            })
        };
        let delta = Delta { generation: Generation(7), replace_all: true, ops: (0..600_000).map(sub).collect() };
        let mut buf = Vec::new();
        write_frame(&mut buf, &Request::Apply(delta)).unwrap();
        assert!(buf.len() > 64 << 20, "{} bytes: the old limit held it", buf.len());
        let back: Option<Request> = read_frame(&mut &buf[..]).unwrap();
        let Some(Request::Apply(d)) = back else { panic!("not the delta") };
        assert_eq!(d.ops.len(), 600_000);
    }

    /// Stats from a dataplane with fewer drop reasons (an older build) or more (a newer one)
    /// still decode: missing reasons read 0, unknown ones are ignored.
    #[test]
    fn stats_with_another_number_of_drop_reasons_decode() {
        let mut v = serde_json::to_value(CoreStats::default()).unwrap();
        for n in [3usize, DropReason::COUNT + 4] {
            v["drops"] = serde_json::json!((1..=n as u64).collect::<Vec<_>>());
            let s: CoreStats = serde_json::from_value(v.clone()).unwrap();
            assert_eq!(s.drops_for(DropReason::UnknownSource), 3);
            assert_eq!(s.drops_for(DropReason::AuthFailed), if n == 3 { 0 } else { 5 });
        }
    }

    #[test]
    fn fingerprints_need_a_known_hash_and_its_length() {
        let ok = format!("sha-256 {}", vec!["AB"; 32].join(":"));
        assert_eq!(parse_fingerprint(&ok).map(|(a, b)| (a, b.len())), Some(("sha-256".into(), 32)));
        assert!(parse_fingerprint(&format!("sha-256 {}", vec!["AB"; 31].join(":"))).is_none());
        assert!(parse_fingerprint(&format!("md5 {}", vec!["AB"; 16].join(":"))).is_none());
        assert!(parse_fingerprint("sha-1 zz").is_none());
    }
}
