//! The control endpoint: a Unix stream socket through which the control plane applies versioned
//! table deltas, reads the applied generation, takes a full snapshot and reads stats.
//!
//! Framing: each message is a 4-byte big-endian length followed by that many bytes of JSON
//! ([`Request`] one way, [`Response`] the other), one response per request, in order. JSON keeps
//! the wire debuggable; deltas are cold-path traffic. The server runs on its own thread and hands
//! each request to a handler that talks to the workers, so no control-plane I/O ever runs on a
//! worker, and a control plane that disappears leaves the workers forwarding with their tables.

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};
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
}

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

/// Serves the endpoint at `path` (replacing a stale socket file) with `handler`, one connection
/// at a time, until the process exits.
pub fn serve<H>(path: &Path, mut handler: H) -> io::Result<JoinHandle<()>>
where
    H: FnMut(Request) -> Response + Send + 'static,
{
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    let path: PathBuf = path.into();
    std::thread::Builder::new().name("control".into()).spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            tracing::info!(socket = %path.display(), "control plane connected");
            loop {
                let req: Request = match read_frame(&mut conn) {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(e) => {
                        let _ = write_frame(&mut conn, &Response::Error(e.to_string()));
                        break;
                    }
                };
                let resp = handler(req);
                if write_frame(&mut conn, &resp).is_err() {
                    break;
                }
            }
            tracing::info!("control plane disconnected; forwarding continues with the current tables");
        }
    })
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
        read_frame(&mut self.stream)?.ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "dataplane closed the control socket"))
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
        let _t = serve(&path, move |req| match req {
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
}
