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
//! The socket can carry SRTP master keys (in snapshots) and can install subscribers, so it is
//! guarded three times: the file is created mode 0600 whatever the umask (chmod between bind and
//! listen, so no connection can ever be made under the umask's mode), and every peer's
//! credentials (`SO_PEERCRED`) are checked: only root, the daemon's own uid and the configured
//! owner are served; anyone else is logged and disconnected. And a snapshot's key material is
//! redacted (a digest instead of the bytes) unless the request asks for keys, which only root and
//! the daemon's own uid may do: key bytes never leave through a tool's snapshot by accident.
//!
//! A connection that sends [`Request::Subscribe`] becomes a stream: after
//! [`Response::Subscribed`] the dataplane writes [`Response::Events`] batches as workers produce
//! them and, when asked for, [`Response::Stats`] at a fixed interval, until the peer closes it.
//! A stream's stats name only the legs whose traffic counters moved since its previous report
//! (the first report names every leg with traffic): per-leg figures cost what moves, not what
//! the tables hold.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;

use crate::listener::Listening;
use crate::lock::{InstanceLock, LockError};
pub use sluice_api::{Client, KEEPALIVE, MAX_FRAME, Request, Response, lock_path, read_frame, write_frame};

/// Takes the socket's instance lock: while it is held no other dataplane serves `socket`, nor
/// unlinks it as stale. The error names the holder's PID.
pub fn lock(socket: &Path) -> Result<InstanceLock, LockError> {
    InstanceLock::acquire(&lock_path(socket), &format!("control socket {}", socket.display()))
}

/// Serves the endpoint at `path` (replacing a stale socket file, under the socket's [`lock`]):
/// one thread per connection, requests passed to `handler` one at a time, subscriptions fed
/// from `hub`. The socket is 0600, owned by the daemon's uid; only root and that uid are served.
pub fn serve<H>(path: &Path, hub: Arc<crate::events::EventHub>, handler: H) -> io::Result<Listening>
where
    H: FnMut(Request) -> Response + Send + 'static,
{
    let lock = lock(path).map_err(|e| io::Error::new(io::ErrorKind::AddrInUse, e))?;
    serve_with_owner(path, None, lock, hub, handler)
}

/// [`serve`], with the socket file handed to `owner` (still mode 0600), who is then served too;
/// `lock` is the socket's [`lock`], taken by the caller and held for as long as the endpoint
/// runs. [`Listening::stop`] removes the socket file, then releases the lock.
pub fn serve_with_owner<H>(path: &Path, owner: Option<u32>, lock: InstanceLock, hub: Arc<crate::events::EventHub>, handler: H) -> io::Result<Listening>
where
    H: FnMut(Request) -> Response + Send + 'static,
{
    if lock.path() != lock_path(path) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} is not the lock of {}", lock.path().display(), path.display())));
    }
    // Only a stale socket can be here: its server held the lock we now hold.
    match std::fs::remove_file(path) {
        Ok(()) => tracing::info!(socket = %path.display(), "removed a stale control socket"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = bind_guarded(path, owner)?;
    // SAFETY: geteuid(2) cannot fail.
    let own_uid = unsafe { libc::geteuid() };
    let path: PathBuf = path.into();
    let handler = Arc::new(Mutex::new(handler));
    let waker = OwnedFd::from(listener.try_clone()?);
    Listening::spawn("control", waker, move |stop| {
        for conn in listener.incoming() {
            if stop.is_set() {
                break;
            }
            let Ok(mut conn) = conn else { continue };
            let peer = peer_credentials(&conn);
            let allowed = peer.as_ref().is_ok_and(|p| p.uid == 0 || p.uid == own_uid || Some(p.uid) == owner);
            if !allowed {
                let why = match &peer {
                    Ok(p) => format!(
                        "uid {} may not use this control socket (allowed: root, uid {own_uid}{})",
                        p.uid,
                        owner.map(|o| format!(", uid {o}")).unwrap_or_default()
                    ),
                    Err(e) => format!("the peer's credentials are unreadable: {e}"),
                };
                tracing::warn!(socket = %path.display(), peer_pid = peer.as_ref().map_or(0, |p| p.pid), reason = %why, "control connection refused");
                // A fresh socket's buffer takes this small frame without blocking.
                let _ = conn.set_write_timeout(Some(Duration::from_millis(100)));
                let _ = write_frame(&mut conn, &Response::Error(why));
                continue;
            }
            // Key material goes only to root and the daemon's own uid, not to a configured owner.
            let keys_allowed = peer.as_ref().is_ok_and(|p| p.uid == 0 || p.uid == own_uid);
            let (handler, hub, path) = (handler.clone(), hub.clone(), path.clone());
            let spawned = std::thread::Builder::new().name("control-conn".into()).spawn(move || {
                tracing::info!(socket = %path.display(), "control plane connected");
                serve_connection(conn, keys_allowed, &hub, &handler);
                tracing::info!("control plane disconnected; forwarding continues with the current tables");
            });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot serve a control connection");
            }
        }
        // Removed while the lock is still held: no other instance can have bound the path yet.
        drop(listener);
        let _ = std::fs::remove_file(&path);
        drop(lock);
    })
}

/// Binds a listening Unix socket at `path` whose file is mode 0600 (and owned by `owner`) before
/// anyone can connect: the mode is set between bind(2) and listen(2), and a socket that does not
/// listen refuses every connect, so the umask's mode is never usable.
fn bind_guarded(path: &Path, owner: Option<u32>) -> io::Result<UnixListener> {
    use std::os::unix::ffi::OsStrExt as _;
    use std::os::unix::fs::PermissionsExt as _;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: an all-zero sockaddr_un is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a Unix socket path (1..{} bytes, no NUL)", path.display(), addr.sun_path.len()),
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = (std::mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1) as libc::socklen_t;
    // SAFETY: `addr` is an initialised sockaddr_un and `len` is within its size.
    if unsafe { libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let guard = || -> io::Result<()> {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        if let Some(uid) = owner {
            std::os::unix::fs::chown(path, Some(uid), None)?;
        }
        // SAFETY: listen(2) on the socket bound above.
        if unsafe { libc::listen(fd.as_raw_fd(), 128) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    if let Err(e) = guard() {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(UnixListener::from(fd))
}

/// A connected peer's process credentials.
#[derive(Clone, Copy, Debug)]
struct Peer {
    pid: i32,
    uid: u32,
}

/// `SO_PEERCRED`: who connected (as of its connect(2)).
fn peer_credentials(conn: &UnixStream) -> io::Result<Peer> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt(2) writes at most `len` bytes into `cred`, a live ucred of that size.
    let rc = unsafe { libc::getsockopt(conn.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEERCRED, (&raw mut cred).cast(), &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != size_of::<libc::ucred>() {
        return Err(io::Error::other(format!("SO_PEERCRED returned {len} bytes")));
    }
    Ok(Peer { pid: cred.pid, uid: cred.uid })
}

fn call<H: FnMut(Request) -> Response>(handler: &Mutex<H>, req: Request) -> Response {
    let mut h = handler.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    h(req)
}

/// Serves one connection's requests in order. `keys_allowed`: the peer runs as root or as the
/// daemon's uid, and may have the key material a snapshot redacts unless asked for.
fn serve_connection<H: FnMut(Request) -> Response>(mut conn: UnixStream, keys_allowed: bool, hub: &crate::events::EventHub, handler: &Mutex<H>) {
    loop {
        let req: Request = match read_frame(&mut conn) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                // Said here too: a client that cannot read the answer (or loops on it) would
                // otherwise leave no trace of why its requests fail.
                tracing::warn!(error = %e, "control request refused; closing the connection");
                let _ = write_frame(&mut conn, &Response::Error(e.to_string()));
                return;
            }
        };
        if let Request::Subscribe { stats_interval_ms } = req {
            stream(conn, hub, handler, stats_interval_ms);
            return;
        }
        if let Request::Hello { version } = req {
            // Per connection, answered here: the handler never sees it.
            if version == sluice_api::PROTOCOL_VERSION {
                if write_frame(&mut conn, &Response::Hello { version }).is_err() {
                    return;
                }
                continue;
            }
            let why = format!("control protocol {version} is not spoken here (this dataplane speaks {})", sluice_api::PROTOCOL_VERSION);
            tracing::warn!(%why, "control connection refused");
            let _ = write_frame(&mut conn, &Response::Error(why));
            return;
        }
        let answer = match req {
            Request::Snapshot { keys: true } if !keys_allowed => {
                // SAFETY: geteuid(2) cannot fail.
                let uid = unsafe { libc::geteuid() };
                tracing::warn!("a snapshot with keys was refused: the peer is neither root nor uid {uid}");
                Response::Error(format!("key material is served only to root and uid {uid}; ask for a snapshot without keys"))
            }
            Request::Snapshot { keys } => match call(handler, req) {
                Response::Snapshot(mut d) if !keys => {
                    d.redact_keys();
                    Response::Snapshot(d)
                }
                other => other,
            },
            req => call(handler, req),
        };
        if write_frame(&mut conn, &answer).is_err() {
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
    let mut legs_told = HashMap::new();
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
            let mut frame = call(handler, Request::Stats);
            if let Response::Stats(workers) = &mut frame {
                only_moved(workers, &mut legs_told);
            }
            frame
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

/// What each worker last told a stream of each leg's traffic.
type LegsTold = HashMap<(usize, sluice_core::ids::LegId), sluice_core::stats::LegTraffic>;

/// Leaves in each worker's report only the legs whose counters differ from what `told` says the
/// stream last got of them (all of them, the first time), and makes `told` the report's (legs
/// gone from the tables are forgotten).
fn only_moved(workers: &mut [sluice_core::stats::CoreStats], told: &mut LegsTold) {
    let mut now = HashMap::with_capacity(told.len());
    for (w, s) in workers.iter_mut().enumerate() {
        for c in &s.legs {
            now.insert((w, c.leg), c.traffic);
        }
        s.legs.retain(|c| told.get(&(w, c.leg)) != Some(&c.traffic));
    }
    *told = now;
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use sluice_core::forward::Event;
    use sluice_core::ids::Generation;
    use sluice_core::stats::CoreStats;
    use sluice_core::table::Delta;

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
        // A client of another protocol version is refused in its first frame, and closed on.
        let mut other = UnixStream::connect(&path).unwrap();
        write_frame(&mut other, &Request::Hello { version: sluice_api::PROTOCOL_VERSION + 1 }).unwrap();
        let resp: Response = read_frame(&mut other).unwrap().unwrap();
        assert!(matches!(&resp, Response::Error(why) if why.contains("is not spoken here")), "{resp:?}");
        assert!(read_frame::<_, Response>(&mut other).unwrap().is_none(), "the connection is closed");
        // The handler never saw a hello (Client::connect said one too).
        let mut c = Client::connect(&path).unwrap();
        assert!(matches!(c.call(&Request::Generation).unwrap(), Response::Generation(Generation(1))));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A handler that answers the generation and counts the requests it served.
    fn counting(served: &Arc<std::sync::atomic::AtomicUsize>) -> impl FnMut(Request) -> Response + Send + 'static {
        let served = served.clone();
        move |req| {
            served.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            match req {
                Request::Generation => Response::Generation(Generation(7)),
                _ => Response::Error("unsupported".into()),
            }
        }
    }

    #[test]
    fn the_socket_is_0600_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("sluice-control-umask-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dp.sock");
        let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        // SAFETY: umask(2) cannot fail; the old mask is put back right after the bind.
        let old = unsafe { libc::umask(0) };
        let started = serve(&path, crate::events::EventHub::new(), counting(&served));
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let _t = started.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600, "socket mode {mode:o} under umask 000");
        let mut c = Client::connect(&path).unwrap();
        assert!(matches!(c.call(&Request::Generation).unwrap(), Response::Generation(Generation(7))), "the owner (root here) is served");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// What a process running as `uid` gets when it connects to `path` and asks for the
    /// generation: 10 connect failed, 11 served, 12 refused (closed or an error frame).
    fn exchange_as(uid: libc::uid_t, path: &Path) -> i32 {
        match ask_as(uid, path, &Request::Generation) {
            (0, body) if body.starts_with("{\"generation\"") => 11,
            (10, _) => 10,
            _ => 12,
        }
    }

    /// What a process running as `uid` gets to `req` on `path` (after a hello): the child's
    /// exit status (0 answered, 9 could not take the uid, 10 could not connect, 12 the hello
    /// went unanswered) and the answer's body, empty if none.
    fn ask_as(uid: libc::uid_t, path: &Path, req: &Request) -> (i32, String) {
        // Everything the child needs is made before the fork: after it, only async-signal-safe
        // calls (setuid, socket, connect, write, read, _exit).
        use std::os::unix::ffi::OsStrExt as _;
        let mut frames = Vec::new();
        write_frame(&mut frames, &Request::Hello { version: sluice_api::PROTOCOL_VERSION }).unwrap();
        let hello_len = frames.len();
        write_frame(&mut frames, req).unwrap();
        // SAFETY: an all-zero sockaddr_un is valid.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (d, s) in addr.sun_path.iter_mut().zip(path.as_os_str().as_bytes()) {
            *d = *s as libc::c_char;
        }
        let mut buf = vec![0u8; 1 << 16];
        let mut pipe = [0; 2];
        // SAFETY: pipe(2) writes two descriptors into the array.
        assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
        // SAFETY: the child only makes async-signal-safe calls on memory made before the fork
        // and ends with _exit; the parent waits for it.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: in the child; see above.
            unsafe {
                if libc::setgid(uid) != 0 || libc::setuid(uid) != 0 {
                    libc::_exit(9);
                }
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                let len = size_of::<libc::sockaddr_un>() as libc::socklen_t;
                if fd < 0 || libc::connect(fd, (&raw const addr).cast(), len) != 0 {
                    libc::_exit(10);
                }
                let tv = libc::timeval { tv_sec: 5, tv_usec: 0 };
                libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, (&raw const tv).cast(), size_of::<libc::timeval>() as libc::socklen_t);
                // Reads one frame into `buf`; its length, 0 on failure.
                let read_one = |buf: &mut [u8]| -> usize {
                    let mut got = 0usize;
                    while got < buf.len() {
                        let n = libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got);
                        if n <= 0 {
                            return 0;
                        }
                        got += n as usize;
                        if got >= 4 && got >= 4 + u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize {
                            return got;
                        }
                    }
                    0
                };
                let _ = libc::write(fd, frames.as_ptr().cast(), hello_len);
                if read_one(&mut buf) == 0 {
                    libc::_exit(12);
                }
                let _ = libc::write(fd, frames[hello_len..].as_ptr().cast(), frames.len() - hello_len);
                let got = read_one(&mut buf);
                if got > 4 {
                    let _ = libc::write(pipe[1], buf[4..got].as_ptr().cast(), got - 4);
                }
                libc::_exit(0);
            }
        }
        // SAFETY: closes the parent's copy of the write end, so the read below ends.
        unsafe { libc::close(pipe[1]) };
        // SAFETY: the read end is ours alone from here.
        let mut out = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(pipe[0]) });
        let mut body = String::new();
        std::io::Read::read_to_string(&mut out, &mut body).unwrap();
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "child status {status}");
        (libc::WEXITSTATUS(status), body)
    }

    /// Item 7 of issue 15: a snapshot's key bytes go only to a peer that asks for them and runs
    /// as root or the daemon's uid; the configured owner (served otherwise) is refused them, and
    /// without the flag everyone gets digests. (Before: every snapshot carried every key.)
    /// A fresh directory others may traverse (mode 0755) for a test that drops to uid 65534;
    /// refuses to run without root, saying `why` it needs it.
    fn root_test_dir(name: &str, why: &str) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        // SAFETY: geteuid(2) cannot fail.
        assert!(unsafe { libc::geteuid() } == 0, "this test needs root ({why})");
        let dir = std::env::temp_dir().join(format!("sluice-control-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    #[test]
    fn snapshot_keys_go_only_to_root_or_the_daemons_uid_when_asked() {
        use sluice_core::srtp::Profile;
        use sluice_core::table::{KeyMaterial, LegSpec, Op};
        let dir = root_test_dir("keys", "it hands the socket to uid 65534");
        let path = dir.join("dp.sock");
        let (key, salt) = (vec![0xA7; 16], vec![0x5C; 12]);
        let material = KeyMaterial::new(Profile::AeadAes128Gcm, key.clone(), salt.clone());
        let leg = LegSpec::new(sluice_core::ids::LegId(1), 30_000, material.clone(), material.clone(), sluice_core::ids::Ssrc(1));
        let snap = Delta { generation: Generation(4), replace_all: true, ops: vec![Op::UpsertLeg(leg)] };
        let _t = serve_with_owner(&path, Some(65534), lock(&path).unwrap(), crate::events::EventHub::new(), move |req| match req {
            Request::Snapshot { .. } => Response::Snapshot(snap.clone()),
            _ => Response::Error("unsupported".into()),
        })
        .unwrap();
        let key_json = serde_json::to_string(&key).unwrap();
        let salt_json = serde_json::to_string(&salt).unwrap();
        let has_keys = |body: &str| body.contains(&key_json) || body.contains(&salt_json);
        let legs = |body: &str| match serde_json::from_str::<Response>(body).unwrap() {
            Response::Snapshot(d) => d.ops.into_iter().filter_map(|o| if let Op::UpsertLeg(l) = o { Some(l) } else { None }).collect::<Vec<_>>(),
            other => panic!("no snapshot: {other:?}"),
        };

        for uid in [0, 65534] {
            let (_, body) = ask_as(uid, &path, &Request::Snapshot { keys: false });
            assert!(!has_keys(&body), "uid {uid} got key bytes without asking: {body}");
            let l = &legs(&body)[0];
            assert_eq!((&l.rx, &l.tx), (&material.redacted(), &material.redacted()), "uid {uid}: digests stand in for the keys");
        }
        let (_, body) = ask_as(0, &path, &Request::Snapshot { keys: true });
        assert!(has_keys(&body), "root asked for keys: {body}");
        assert_eq!(legs(&body)[0].rx, material);
        let (_, body) = ask_as(65534, &path, &Request::Snapshot { keys: true });
        assert!(!has_keys(&body), "the configured owner is not the daemon's uid: {body}");
        match serde_json::from_str::<Response>(&body).unwrap() {
            Response::Error(why) => assert!(why.contains("served only to root and uid 0"), "{why}"),
            other => panic!("keys asked for by uid 65534 were not refused: {other:?}"),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_peer_with_another_uid_is_refused_even_if_the_mode_lets_it_connect() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = root_test_dir("peer", "it runs a peer as uid 65534");
        let path = dir.join("dp.sock");
        let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let _t = serve(&path, crate::events::EventHub::new(), counting(&served)).unwrap();
        // A socket opened up by hand (or through a group) still serves only root and the daemon.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert_eq!(exchange_as(65534, &path), 12, "uid 65534 must be refused");
        assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 0, "nothing was handled for it");
        assert_eq!(exchange_as(0, &path), 11, "root is served");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_configured_owner_gets_the_socket_and_is_served() {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        let dir = root_test_dir("owner", "it hands the socket to uid 65534");
        let path = dir.join("dp.sock");
        let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let _t = serve_with_owner(&path, Some(65534), lock(&path).unwrap(), crate::events::EventHub::new(), counting(&served)).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!((meta.uid(), meta.permissions().mode() & 0o7777), (65534, 0o600));
        assert_eq!(exchange_as(65534, &path), 11, "the owner is served");
        assert_eq!(exchange_as(65533, &path), 10, "another uid cannot even connect");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_second_endpoint_on_a_live_socket_is_refused_and_leaves_it_alone() {
        let dir = std::env::temp_dir().join(format!("sluice-control-twice-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dp.sock");
        let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let _t = serve(&path, crate::events::EventHub::new(), counting(&served)).unwrap();
        let e = serve(&path, crate::events::EventHub::new(), counting(&served)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        assert!(e.to_string().contains(&format!("in use by another instance, PID {}", std::process::id())), "{e}");
        let mut c = Client::connect(&path).unwrap();
        assert!(matches!(c.call(&Request::Generation).unwrap(), Response::Generation(Generation(7))));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A stream gets a leg's counters when they moved since it last got them, and every leg
    /// with traffic in its first report.
    #[test]
    fn a_stream_is_told_only_the_legs_whose_counters_moved() {
        use sluice_core::ids::LegId;
        use sluice_core::stats::{LegCount, LegTraffic};
        let count = |leg, rx| LegCount { leg: LegId(leg), traffic: LegTraffic { rx_packets: rx, rx_bytes: rx * 100, ..Default::default() } };
        let report = |w0: Vec<LegCount>, w1: Vec<LegCount>| vec![CoreStats { legs: w0, ..Default::default() }, CoreStats { legs: w1, ..Default::default() }];
        let legs = |r: &[CoreStats]| r.iter().map(|c| c.legs.iter().map(|l| l.leg.0).collect::<Vec<_>>()).collect::<Vec<_>>();
        let mut told = LegsTold::new();
        let mut r = report(vec![count(1, 5), count(2, 3)], vec![count(1, 2)]);
        only_moved(&mut r, &mut told);
        assert_eq!(legs(&r), [vec![1, 2], vec![1]], "the first report names every leg with traffic");
        // Leg 1 moved on worker 0 only; leg 2 did not move; leg 1 on worker 1 neither.
        let mut r = report(vec![count(1, 9), count(2, 3)], vec![count(1, 2)]);
        only_moved(&mut r, &mut told);
        assert_eq!(legs(&r), [vec![1], vec![]]);
        assert_eq!(r[0].legs[0].traffic.rx_packets, 9, "cumulative, not a difference");
        let mut r = report(vec![count(1, 9), count(2, 3)], vec![count(1, 2)]);
        only_moved(&mut r, &mut told);
        assert_eq!(legs(&r), [Vec::<u32>::new(), vec![]], "nothing moved: nothing told");
        // A leg gone from the tables is forgotten: back with traffic, it is told again.
        let mut r = report(vec![count(1, 9)], vec![count(1, 2)]);
        only_moved(&mut r, &mut told);
        let mut r = report(vec![count(1, 9), count(2, 3)], vec![count(1, 2)]);
        only_moved(&mut r, &mut told);
        assert_eq!(legs(&r), [vec![2], vec![]]);
        // The frame is compatible both ways: without legs, no `legs` key; a report without one
        // (an older dataplane) reads as no legs.
        let json = serde_json::to_value(CoreStats::default()).unwrap();
        assert!(json.get("legs").is_none(), "{json}");
        let back: CoreStats = serde_json::from_value(json).unwrap();
        assert!(back.legs.is_empty());
        let with = serde_json::to_string(&r[0]).unwrap();
        assert!(with.contains(r#""legs":[{"leg":2,"rx_packets":3,"rx_bytes":300,"tx_packets":0,"tx_bytes":0}]"#), "{with}");
        assert_eq!(serde_json::from_str::<CoreStats>(&with).unwrap(), r[0]);
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
