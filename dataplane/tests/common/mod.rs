//! Helpers shared by the XDP kernel tests.
#![allow(dead_code, reason = "each test binary uses a different subset")]

pub mod netns;
pub mod packet;
