//! Sluice's benchmark and demo library: the capacity harness, the forwarding and programming
//! benchmarks and the demo, driving simulated participants that publish and verify real SRTP with
//! their own keys (`sluice-sim`). Used by the `sluice-bench` binary and by the cross-process tests.
#![deny(missing_docs)]

pub mod audio;
pub mod capacity;
pub mod forward;
pub mod live;
pub mod netns;
pub mod turn;
pub mod turn_netns;
pub mod xdp;

/// The simulated meetings the demo and the cross-process tests run (`sluice_sim::meeting`, here
/// under the path they have always used).
pub use sluice_sim::meeting;
