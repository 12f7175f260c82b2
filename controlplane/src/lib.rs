//! Sluice's control plane: signaling services program routes over gRPC (`api`); the desired
//! state (`state`) is validated and journaled (`journal`), compiled into minimal table deltas
//! against a shadow of what the dataplane has installed (`compile`), and pushed over the
//! dataplane's control socket (`client`) by the `engine`; the dataplane's events come back on
//! their own subscription (`events`) and go out on Watch.
//!
//! The binary serves gRPC over TLS/mTLS (`config::Tls`) or, only when asked and on loopback,
//! plain text; with Redis configured, `lb` publishes the node's load and applies the load
//! balancer's drain flag and session placement, and `placement` chooses the node for a session
//! (`Node.Place`). `sluicectl` (`src/bin/sluicectl.rs`) is a client
//! of the same `pb` services, writes dev certificates (`certs`), and draws its live view (`top`).
#![deny(missing_docs)]

pub mod api;
pub mod certs;
pub mod client;
pub mod config;
pub mod controller;
pub mod diff;
pub mod engine;
pub mod events;
pub mod journal;
pub mod lb;
pub mod metrics;
pub mod names;
pub mod placement;
pub mod state;
pub mod text;
pub mod top;

/// Generated protobuf/gRPC types (`proto/sluice/v1`).
#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::allow_attributes_without_reason, reason = "generated code")]
pub mod pb {
    tonic::include_proto!("sluice.v1");
    /// The encoded file descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("sluice_descriptor");
}
