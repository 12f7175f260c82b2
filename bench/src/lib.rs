//! Sluice's benchmark and demo library: simulated participants that publish and verify real SRTP
//! with their own keys. Used by the `sluice-bench` binary and by the cross-process tests.
#![deny(missing_docs)]

pub mod capacity;
pub mod forward;
pub mod live;
pub mod meeting;
pub mod netns;
pub mod xdp;
