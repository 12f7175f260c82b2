//! Sluice's dataplane runtime: everything around the sans-IO core that touches the machine.
//!
//! - [`xdp`]: the embedded XDP object and its loader.
#![deny(missing_docs)]

pub mod io;
pub mod xdp;
