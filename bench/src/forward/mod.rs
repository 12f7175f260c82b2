//! The forwarding benchmark: one publisher, N subscribers, 1200-byte SRTP video through one
//! pinned dataplane worker, for each I/O backend (with and without UDP GSO and GRO) and SRTP
//! profile, measured in one run on veth pairs in network namespaces the bench creates
//! ([`crate::netns`]):
//!
//! ```text
//!   generator (ns gen, core 0) ──veth──▶ forwarder, 1 worker (ns fwd, core 1) ──veth──▶ sink (ns sink: XDP count + drop)
//! ```
//!
//! Accounting: on veth, a receiving end's kernel work runs in the softirq of the CPU that
//! transmitted, so each receiving end gets its own NAPI thread pinned to its party's core (as an
//! RX queue's interrupt would be): the forwarder pays for its own kernel receive on core 1, the
//! sink's counting costs core 0. The sink's XDP program strips GSO from the veth, so the kernel
//! segments every GSO send in software on the forwarder's core (a NIC without UDP segmentation
//! offload: the pessimistic case).
//!
//! The forwarder is the real `sluice-dataplane` process, programmed over its control socket; the
//! `naive` baseline is the same forwarding core driven by a one-datagram-per-syscall loop
//! (recv_from / send_to) on the same core, the floor any batched backend must beat; `core` is the
//! forwarding core alone fed from memory, the ceiling no I/O can beat. Per configuration: a flood
//! probe (the generator as fast as it goes), then a search over paced input rates for the highest
//! one with at most 0.1% of the copies missing (the *sustained* rate), with the forwarder core's
//! busy time (every task on it, from /proc/stat) beside it. Latency is one-way (the generator's
//! send time carried in the payload against the sink's kernel receive timestamp) at half the
//! sustained rate, next to the same path through the kernel's own IP forwarding (the floor).
//!
//! `--calls` measures another load through the same harness ([`calls`]): N one-to-one audio calls,
//! their legs on a port each or all on one shared port.

mod accounting;
pub mod calls;
mod forwarder;
mod generator;
mod probe;
mod report;
mod search;
mod sink;
mod tables;
mod topology;

pub(crate) use accounting::{counter, process_cpu_ns};
pub(crate) use generator::Generator;
pub use probe::Sample;
pub use report::{Ceiling, Latency, run};
pub use search::Row;
pub(crate) use search::search_rate;
pub(crate) use tables::streams_ops;
pub use tables::{fanout_ops, publisher_keyframe};
pub use topology::{FORWARDER_IP, GENERATOR_IP, SINK_IP, Topology};

/// Payload bytes after the 12-byte RTP header, so the RTP packet is 1200 bytes.
const PAYLOAD: usize = 1188;
/// The forwarder's leg ports (publisher at +1, subscribers after it).
pub(crate) const BASE_PORT: u16 = 31_000;
/// The subscribers' ports in the sink namespace.
const SINK_PORT: u16 = 41_000;
const PUBLISHER_SSRC: u32 = 0x5000;
/// The publisher's packets are spread over this many streams (SSRCs, one track each), as a
/// real node's load is: one stream at the bench's packet rates would lose more than 2^15
/// packets in a row whenever the forwarder's socket overflows for ~50 ms, and SRTP's
/// rollover-counter estimate (RFC 3711 §3.3.1) cannot follow such a gap — the stream would
/// stay undecryptable for the rest of the run.
pub(crate) const STREAMS: u32 = 16;
/// Where the daemon under test serves its metrics (read for batch sizes and I/O counters).
const METRICS_PORT: u16 = 39_311;

/// Cores: the forwarder's worker (and its ingress NAPI thread) on 1; the generator, the sink's
/// NAPI thread and the latency sink on 0.
const FORWARDER_CORE: usize = 1;
const GENERATOR_CORE: usize = 0;
/// Most copies a probe may lose and still count as sustained.
const MAX_LOSS: f64 = 0.001;

/// What one probe offers and what the forwarder is programmed for.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Load {
    /// One publisher ([`STREAMS`] video streams, 1200-byte RTP) to this many subscribers.
    Fanout(u32),
    /// One-to-one audio calls ([`calls`]), every leg on its own port or all on one.
    Calls { calls: u32, mode: calls::PortMode },
}

impl Load {
    /// Copies out per packet in.
    fn copies(self) -> u32 {
        match self {
            Self::Fanout(n) => n,
            Self::Calls { .. } => 1,
        }
    }

    /// The forwarder's tables.
    fn ops(self, profile: sluice_core::srtp::Profile) -> Vec<sluice_core::table::Op> {
        match self {
            Self::Fanout(n) => tables::ops(profile, n),
            Self::Calls { calls, mode } => calls::calls_ops(profile, calls, mode),
        }
    }

    /// How many subscriber ports above `SINK_PORT + 1` the sink counts.
    fn sink_ports(self) -> u32 {
        match self {
            Self::Fanout(n) => n,
            Self::Calls { calls, .. } => calls,
        }
    }
}
