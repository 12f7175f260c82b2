//! Exists so the dataplane can name this crate as a build-dependency (cache invalidation); the
//! program itself is the `sluice-xdp` binary.
#![no_std]
