//! Sluice's sans-IO core.
//!
//! Everything the packet path computes lives here, and nothing that touches the outside world:
//! no sockets, syscalls, threads, async or clock. Time is always an argument; buffers belong to
//! the caller. That is what lets every I/O backend, the simulation tests, the fuzzers and
//! `cargo bench` drive exactly the same code.
//!
//! - [`wire`]: checked zero-copy views of RTP, RTCP and STUN, and the RFC 7983 demultiplexer.
//! - [`srtp`]: SRTP/SRTCP contexts (RFC 3711, 6188, 7714), key derivation, replay windows and
//!   the crypto provider behind them.
//! - [`ice`]: ICE-lite for WebRTC legs: STUN Binding checks with short-term credentials,
//!   nomination, NAT rebinding, consent freshness (run by the dataplane's slow path).
//! - [`turn`]: a TURN server (RFC 8656) for clients on restrictive networks: allocations,
//!   permissions, channels, REST API credentials, the no-open-relay peer policy, stream framing.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod audio;
pub mod downlink;
pub mod fingerprint;
pub mod forward;
pub mod ice;
pub mod ids;
pub mod srtp;
pub mod stats;
pub mod table;
pub mod time;
pub mod turn;
pub mod uplink;
pub mod verdict;
pub mod wire;
