//! Sluice's dataplane runtime: everything around the sans-IO core that touches the machine.
//!
//! - [`config`]: the TOML configuration and its validation.
//! - [`metrics`]: the Prometheus endpoint.
//! - [`xdp`]: the embedded XDP object and its loader.
#![deny(missing_docs)]

pub mod config;
pub mod metrics;
pub mod xdp;
