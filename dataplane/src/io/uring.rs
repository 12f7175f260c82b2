//! io_uring backend (in progress).
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::{IoConfig, IoCounters, IoError, SendRegistry, Transmit};

/// Why io_uring cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UringUnavailable {
    /// Not built yet.
    #[error("not built yet")]
    NotBuilt,
}

/// The io_uring backend of one worker.
#[derive(Debug)]
pub struct UringBackend {
    counters: IoCounters,
}

impl UringBackend {
    /// Builds it.
    pub fn new(_config: IoConfig, _registry: Arc<SendRegistry>) -> Result<Self, IoError> {
        Err(UringUnavailable::NotBuilt.into())
    }
    /// Opens a port.
    pub fn add_port(&mut self, _port: u16) -> Result<u16, IoError> { unreachable!() }
    /// Closes a port.
    pub fn remove_port(&mut self, _port: u16) -> Result<(), IoError> { unreachable!() }
    /// Ports.
    pub fn ports(&self) -> Vec<u16> { Vec::new() }
    /// Counters.
    pub fn counters(&self) -> &IoCounters { &self.counters }
    /// Receive.
    pub fn recv_batch<F: FnMut(u16, SocketAddr, &mut [u8])>(&mut self, _t: Option<Duration>, _f: F) -> Result<usize, IoError> { Ok(0) }
    /// Send.
    pub fn send_batch<'a, I: IntoIterator<Item = Transmit<'a>>>(&mut self, _p: I) -> usize { 0 }
}
