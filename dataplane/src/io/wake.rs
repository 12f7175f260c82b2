//! Waking a worker that is waiting in `recv_batch`, from another thread: one `eventfd` per
//! backend, waited on next to the sockets.
//!
//! Workers hand each other work through crossbeam queues; a worker asleep in
//! [`super::Backend::recv_batch`] (up to its loop's wait) would notice a handed-over packet only
//! when that wait ends. The sender calls [`Waker::wake`] after queueing, which adds 1 to the
//! eventfd's counter; the backend's wait ends on it, and the `recv_batch` that observes the counter
//! reads it (which resets it to 0) and returns, with whatever datagrams were ready, possibly none.
//!
//! The counter only goes back to 0 when a `recv_batch` consumes it, so a wake that lands while the
//! worker is busy ends its *next* wait at once: nothing is lost between the worker looking at its
//! queues and going to sleep. The caller's side of the contract: after every `recv_batch` return,
//! look at the queues (a wake is consumed by the call that saw it; nothing else remembers it).
//! Several wakes before the worker looks coalesce into one.
//!
//! How each backend waits on it: [`super::mmsg`] registers it in its epoll set (edge-triggered:
//! every write is a new edge, and one `read` of a non-semaphore eventfd returns and zeroes the
//! whole counter, so one read per event drains it); [`super::uring`] keeps a `Read` of it in the
//! ring, re-armed after each completion (the completion is the drain, no extra syscall);
//! [`super::xsk`] shares its kernel sockets' epoll set, which is one of the descriptors its
//! `poll` waits on.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd as _, OwnedFd, RawFd};
use std::sync::Arc;

use super::IoError;

/// A cheap handle that ends another thread's (the backend owner's) wait in `recv_batch`; see the
/// [module docs](self). Clone it into every thread that hands the worker something.
///
/// It keeps the eventfd open by itself, so waking a worker whose backend is gone writes to a
/// descriptor nobody reads, never to a reused one.
#[derive(Clone, Debug)]
pub struct Waker {
    fd: Arc<OwnedFd>,
}

impl Waker {
    /// Makes the backend's current or next wait in `recv_batch` return promptly. Never blocks;
    /// does not touch the backend's counters (it runs on another thread). Failures are ignored:
    /// `EAGAIN` means the counter is saturated, i.e. a wake is pending anyway.
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes the 8 bytes of `one`, alive across the call, to the eventfd this handle
        // keeps open (`Arc<OwnedFd>`); eventfd writes are exactly 8 bytes.
        let _ = unsafe { libc::write(self.fd.as_raw_fd(), (&raw const one).cast(), size_of::<u64>()) };
    }
}

/// The backend's end of the eventfd: what it waits on and drains.
#[derive(Debug)]
pub(crate) struct WakeFd {
    fd: Arc<OwnedFd>,
}

impl WakeFd {
    /// A fresh nonblocking eventfd with a zero counter.
    pub(crate) fn new() -> Result<Self, IoError> {
        // SAFETY: plain eventfd creation; the result is checked.
        let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(IoError::Os { op: "eventfd", source: io::Error::last_os_error() });
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Self { fd: Arc::new(fd) })
    }

    /// A handle for other threads.
    pub(crate) fn waker(&self) -> Waker {
        Waker { fd: Arc::clone(&self.fd) }
    }

    /// Reads (and so resets) the counter; whether a wake was pending. One read is enough: a
    /// non-semaphore eventfd hands out its whole counter at once.
    pub(crate) fn consume(&self) -> bool {
        let mut count: u64 = 0;
        // SAFETY: reads at most 8 bytes into `count`, alive across the call, from the eventfd
        // `self` keeps open; nonblocking, so it returns `EAGAIN` at once when nothing is pending.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), (&raw mut count).cast(), size_of::<u64>()) };
        n == size_of::<u64>() as isize && count > 0
    }
}

impl AsRawFd for WakeFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
    use std::time::{Duration, Instant};

    use super::*;
    use crate::io::{Backend, BackendKind, IoConfig, SendRegistry};

    const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[test]
    fn waker_is_a_cheap_shareable_handle() {
        fn shareable<T: Clone + Send + Sync + 'static>() {}
        shareable::<Waker>();
        let w = WakeFd::new().unwrap();
        assert!(!w.consume(), "a fresh eventfd has nothing pending");
        let waker = w.waker();
        waker.clone().wake();
        waker.wake();
        assert!(w.consume(), "two wakes are pending");
        assert!(!w.consume(), "one read took both");
        drop(w);
        waker.wake(); // the backend's end is gone: harmless
    }

    /// How long `b.recv_batch(Some(wait))` took, and what it delivered.
    fn timed_recv(b: &mut Backend, wait: Duration) -> (Duration, Vec<(u16, SocketAddr, Vec<u8>)>) {
        let mut got = Vec::new();
        let t0 = Instant::now();
        b.recv_batch(Some(wait), |port, src, buf| got.push((port, src, buf.to_vec()))).expect("recv_batch");
        (t0.elapsed(), got)
    }

    /// The waker contract on one backend with one open leg port `port`, no traffic but what
    /// `peer` sends to `dst` (the port's address as the peer reaches it): a wake during a long
    /// wait ends it within 500 ms with nothing delivered; a wake (or several) before a wait makes
    /// it return at once; once consumed, a 50 ms wait sleeps its full time again (the eventfd was
    /// drained); datagrams arrive as before; every consumed wake is counted.
    pub(crate) fn check_waker(b: &mut Backend, port: u16, peer: &UdpSocket, dst: SocketAddr) {
        let kind = b.kind();
        // Settle: the first calls arm receives and look at freshly added ports.
        for _ in 0..3 {
            let (_, got) = timed_recv(b, Duration::from_millis(5));
            assert!(got.is_empty(), "{kind}: no traffic yet, got {got:?}");
        }
        let waker = b.waker();
        let wakeups = b.counters().wakeups;

        // A wake during the wait.
        let t0 = Instant::now();
        let other = waker.clone();
        let thread = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            other.wake();
        });
        let (_, got) = timed_recv(b, Duration::from_secs(2));
        let took = t0.elapsed();
        thread.join().unwrap();
        assert!(got.is_empty(), "{kind}: a wake is not a datagram: {got:?}");
        assert!(took >= Duration::from_millis(20), "{kind}: returned after {took:?}, before the wake");
        assert!(took < Duration::from_millis(500), "{kind}: a wake 20 ms into a 2 s wait returned only after {took:?}");
        assert_eq!(b.counters().wakeups, wakeups + 1, "{kind}: counted");

        // Drained: the next wait sleeps its full time.
        let (took, got) = timed_recv(b, Duration::from_millis(50));
        assert!(got.is_empty(), "{kind}: {got:?}");
        assert!(took >= Duration::from_millis(45), "{kind}: a consumed wake ended the next 50 ms wait after {took:?}");

        // Wakes while busy (several coalesce) end the next wait at once, and only that one.
        for _ in 0..3 {
            waker.wake();
        }
        let (took, got) = timed_recv(b, Duration::from_secs(2));
        assert!(got.is_empty(), "{kind}: {got:?}");
        assert!(took < Duration::from_millis(500), "{kind}: a pending wake did not end the wait at once ({took:?})");
        assert_eq!(b.counters().wakeups, wakeups + 2, "{kind}: three wakes, consumed together");
        let (took, _) = timed_recv(b, Duration::from_millis(50));
        assert!(took >= Duration::from_millis(45), "{kind}: the wakes were not drained: a 50 ms wait took {took:?}");

        // Datagrams still arrive, during and after wakes.
        let payload = [0x5a_u8, 1, 2, 3];
        peer.send_to(&payload, dst).unwrap();
        waker.wake();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(3);
        while got.is_empty() && Instant::now() < deadline {
            got.extend(timed_recv(b, Duration::from_millis(200)).1);
        }
        assert_eq!(got, vec![(port, peer.local_addr().unwrap(), payload.to_vec())], "{kind}");
        assert!(b.counters().rx_datagrams >= 1, "{kind}");
    }

    fn loopback_case(kind: BackendKind, gro: bool) {
        let config = IoConfig { local_ip: LOCALHOST, rx_batch: 16, gro, ..IoConfig::default() };
        let mut b = match Backend::new(kind, config, SendRegistry::new()) {
            Ok(b) => b,
            Err(crate::io::IoError::UringUnavailable(why)) => {
                eprintln!("skipping the {kind} waker test: io_uring unavailable here: {why}");
                return;
            }
            Err(e) => panic!("{kind} backend: {e}"),
        };
        let port = b.add_port(0).unwrap();
        let peer = UdpSocket::bind((LOCALHOST, 0)).unwrap();
        check_waker(&mut b, port, &peer, SocketAddr::new(LOCALHOST, port));
    }

    #[test]
    fn mmsg_waker_ends_the_wait() {
        loopback_case(BackendKind::Mmsg, true);
        loopback_case(BackendKind::Mmsg, false);
    }

    #[test]
    fn uring_waker_ends_the_wait() {
        loopback_case(BackendKind::Uring, true);
        loopback_case(BackendKind::Uring, false);
    }
}
