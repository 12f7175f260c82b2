//! The bench's network: three namespaces joined by two veth pairs, and their addresses.

use crate::netns::{NetNs, Veth};

use super::{FORWARDER_CORE, GENERATOR_CORE};

/// The bench topology on veth pairs in network namespaces it creates (and deletes on drop):
///
/// ```text
///   ns gen  10.77.1.2 ──veth── 10.77.1.1  ns fwd (the forwarder)  10.77.2.1 ──veth── 10.77.2.2  ns sink
/// ```
///
/// Every packet crosses a real device, and no party pays for another's receive path: a veth
/// transmit is received in the softirq of the sending CPU, so the generator's core takes the
/// forwarder's socket receive, and the forwarder's core only the sink's XDP counting drop (a
/// userspace sink on loopback would cost the forwarder's core a full UDP receive per copy).
#[derive(Debug)]
pub struct Topology {
    /// The generator's namespace.
    pub generator: NetNs,
    /// The forwarder's namespace.
    pub forwarder: NetNs,
    /// The sink's namespace.
    pub sink: NetNs,
    /// The sink's interface (inside `sink`).
    pub sink_if: String,
    /// The generator's interface (inside `generator`).
    pub generator_if: String,
}

/// Where the generator sends from.
pub const GENERATOR_IP: [u8; 4] = [10, 77, 1, 2];
/// The forwarder's media address.
pub const FORWARDER_IP: [u8; 4] = [10, 77, 1, 1];
/// Where the subscribers are.
pub const SINK_IP: [u8; 4] = [10, 77, 2, 2];

impl Topology {
    /// Creates it (root; panics with the failing command's error otherwise). Not `Default`:
    /// it changes the machine.
    #[expect(clippy::new_without_default, reason = "creating namespaces is not a default value")]
    pub fn new() -> Self {
        let (generator, forwarder, sink) = (NetNs::new("g"), NetNs::new("f"), NetNs::new("s"));
        let input = Veth::new("gf", &generator, &["10.77.1.2/24"], &forwarder, &["10.77.1.1/24"]);
        let out = Veth::new("fs", &forwarder, &["10.77.2.1/24"], &sink, &["10.77.2.2/24"]);
        // Senders get TX checksum offload back, as on a real NIC (`Veth` turns it off for XDP
        // rewrites, which these links do not do): the kernel then computes no UDP checksum.
        generator.exec("ethtool", &["-K", &input.a, "tx", "on"]);
        forwarder.exec("ethtool", &["-K", &out.a, "tx", "on"]);
        // Each end's receive runs on its own party's core, as an RX queue's IRQ would: the
        // forwarder's kernel receive on the forwarder's core, the sink's on the generator's.
        forwarder.napi_thread_on(&input.b, FORWARDER_CORE).expect("forwarder NAPI thread");
        sink.napi_thread_on(&out.b, GENERATOR_CORE).expect("sink NAPI thread");
        // `SLUICE_BENCH_NAPI_FIFO=<priority>`: the forwarder's kernel receive as a real-time
        // thread (what an operator sets for a NIC queue's thread; see the README's tail latency).
        if let Some(prio) = std::env::var("SLUICE_BENCH_NAPI_FIFO").ok().and_then(|v| v.parse().ok()) {
            forwarder.napi_threads_fifo(&input.b, prio).expect("forwarder NAPI thread SCHED_FIFO");
            println!("forwarder NAPI thread: SCHED_FIFO priority {prio}");
        }
        // The latency floor: the same path through the kernel's own IP forwarding in ns fwd.
        forwarder.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
        generator.ip(&["route", "add", "10.77.2.0/24", "via", "10.77.1.1"]);
        sink.ip(&["route", "add", "10.77.1.0/24", "via", "10.77.2.1"]);
        Self { generator, forwarder, sink, sink_if: out.b, generator_if: input.a }
    }
}
