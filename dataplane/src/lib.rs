//! Sluice's dataplane runtime: everything around the sans-IO core that touches the machine.
//!
//! - [`config`]: the TOML configuration and its validation.
//! - [`doctor`]: checks the host against the configuration (`sluice-dataplane doctor`).
//! - [`metrics`]: the Prometheus endpoint.
//! - [`control`]: the Unix-socket endpoint the control plane programs tables through.
//! - [`lock`]: one instance per control socket (and per control-plane state directory).
//! - [`events`]: worker events fanned out to control-endpoint subscribers.
//! - [`io`]: batched UDP backends (io_uring, recvmmsg/sendmmsg), UDP GSO.
//! - [`worker`]: the pinned per-core worker loop.
//! - [`edge`]: the slow path of WebRTC legs (ICE-lite answers, DTLS-SRTP handshakes).
//! - [`xdp`]: the embedded XDP object and its loader.
//! - [`shield`]: keeps the XDP stage's allow-lists in step with the tables.
//! - [`bus`]: the messages between the daemon's threads.
//! - [`listener`]: the endpoints' accept loops, stoppable.
//! - [`node`]: all of the above wired into one running node (what the binary starts).
#![deny(missing_docs)]

pub mod bus;
pub mod checkpoint;
pub mod config;
pub mod control;
pub mod doctor;
pub mod edge;
pub mod events;
pub mod icetcp;
pub mod io;
pub mod listener;
pub use sluice_api::lock;
pub mod metrics;
pub mod node;
pub mod shield;
pub mod turn;
pub mod worker;
pub mod xdp;
