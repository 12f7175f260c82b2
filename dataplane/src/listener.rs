//! A thread that accepts connections on a listening socket until it is stopped: the control
//! endpoint's and the metrics endpoint's accept loops.
//!
//! A thread blocked in accept(2) does not look at a flag, so [`Listening::stop`] sets the flag and
//! then shuts the listening socket down through a duplicate of its descriptor: on Linux a
//! shut-down listening socket (TCP or Unix) wakes every accept(2) with `EINVAL`, and the loop sees
//! the flag. This needs neither a connectable address (a socket file may have been removed) nor a
//! polling timeout.

use std::io;
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

/// An accept loop running on its own thread. Dropping it leaves the thread running (as dropping
/// a [`JoinHandle`] does); [`Listening::stop`] ends it.
#[derive(Debug)]
pub struct Listening {
    thread: JoinHandle<()>,
    stopping: Arc<AtomicBool>,
    /// A duplicate of the listening socket's descriptor, to shut it down with.
    socket: OwnedFd,
}

/// What the accept loop checks after each accept(2), failed or not.
#[derive(Debug, Clone)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    /// Whether [`Listening::stop`] was called: the loop must return.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl Listening {
    /// Runs `accept_loop` on a thread named `name`; `socket` is a duplicate of the descriptor of
    /// the listener the loop accepts on (`try_clone` of it).
    pub fn spawn(name: &str, socket: OwnedFd, accept_loop: impl FnOnce(StopFlag) + Send + 'static) -> io::Result<Self> {
        let stopping = Arc::new(AtomicBool::new(false));
        let flag = StopFlag(stopping.clone());
        let thread = std::thread::Builder::new().name(name.into()).spawn(move || accept_loop(flag))?;
        Ok(Self { thread, stopping, socket })
    }

    /// Whether the loop has returned.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Stops accepting and waits for the loop to return. Connections already accepted are served
    /// on their own threads until their peers close them.
    pub fn stop(self) {
        self.stopping.store(true, Ordering::Release);
        // SAFETY: shutdown(2) on a descriptor this value owns; it changes the socket's state, no
        // memory is involved.
        unsafe {
            libc::shutdown(self.socket.as_raw_fd(), libc::SHUT_RDWR);
        }
        let _ = self.thread.join();
    }
}
