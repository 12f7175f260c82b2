//! Helpers shared by the XDP kernel tests.
#![allow(dead_code, reason = "each test binary uses a different subset")]

// One copy of the namespace helpers, shared with the benchmark and the cross-process tests
// (sluice-bench depends on this crate, so this crate's tests cannot depend on sluice-bench).
#[path = "../../../bench/src/netns.rs"]
pub mod netns;
pub mod packet;
