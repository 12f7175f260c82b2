//! Types shared by the XDP program (`sluice-ebpf`) and the dataplane's loader.
//!
//! One definition, used on both sides of the kernel boundary: `#[repr(C)]`, no implicit padding
//! (checked by const asserts), `aya::Pod` behind the `user` feature. Never keep a hand-synced copy.
#![no_std]
#![deny(missing_docs)]

/// Why the XDP stage let a packet through or dropped it: the index into the per-CPU verdict
/// counter array `SLUICE_VERDICTS`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpVerdict {
    /// Not on the media port range, or not IP/UDP: handed to the kernel untouched.
    PassNotMedia = 0,
    /// Media-port traffic passed to the kernel's UDP stack.
    PassMedia = 1,
    /// A header was shorter than it claimed; dropped.
    DropMalformed = 2,
}

impl XdpVerdict {
    /// How many verdicts there are: the size of the counter array.
    pub const COUNT: u32 = 3;
}

/// The name of the per-CPU verdict counter array in the XDP object.
pub const VERDICTS_MAP: &str = "SLUICE_VERDICTS";
/// The name of the XDP program in the object.
pub const XDP_PROGRAM: &str = "sluice_xdp";
