//! Simulated participants for Sluice: the one place the tests, simulations and benchmarks of every
//! crate get a participant from, instead of one hand-synced copy each.
//!
//! A participant is a leg with its own SRTP keys per direction. It publishes (audio and
//! three-layer simulcast VP8, as real SRTP) and receives (decrypts with its own keys, checks
//! sequence continuity). The pieces, bottom up:
//!
//! - [`fixture`]: payload types, deterministic key material, packet builders and the table specs
//!   (leg, tracks, subscription) of a small meeting;
//! - [`ids`]: the numbering of a simulated participant (leg, port, address, SSRCs, tracks, a
//!   subscriber's out-SSRCs) from its seat in a meeting;
//! - [`endpoint`]: a participant's SRTP endpoint (send and receive contexts per SSRC);
//! - [`seq`]: sequence-number unwrapping and the per-stream continuity tracker;
//! - [`media`]: a publisher's plaintext packets with per-SSRC sequence counters;
//! - [`meeting`]: whole meetings built from the above (table ops and participants), as the
//!   cross-process tests, the demo and the forwarding benchmarks run them.
//!
//! The sans-IO core's own deterministic simulation (`dataplane/core/tests/sim.rs`) keeps its world,
//! network and truth checks; it takes its fixtures, numbering, endpoint and unwrapping from here.
//! Keys come from `KeyMaterial::seeded` (the core's `test-support` feature): anyone can compute
//! them, which is the point here and why no daemon depends on this crate.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod endpoint;
pub mod fixture;
pub mod ids;
pub mod media;
pub mod meeting;
pub mod seq;
