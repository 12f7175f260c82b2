//! Relayed-leg cost with the node on a core of its own, on a veth pair between two network
//! namespaces (root): what a participant behind TURN costs the node per forwarded packet against
//! the same calls direct, in one run, with the XDP stage unwrapping UDP ChannelData and without.
//!
//! ```text
//!  ns st5g<pid> "gen" (core 0)                        ns st5d<pid> "dut" (core 1, all of it)
//!  10.57.0.2 participants: direct, or TURN clients ──veth──▶ 10.57.0.1 sluice-dataplane
//!  over UDP, TCP, TLS (this process, pinned to 0)           TURN 3478 (UDP, TCP), 5349 (TLS)
//!                                                           [XDP stage on dut's end, or off]
//! ```
//!
//! The daemon runs under `taskset -c 1` (every thread: worker, TURN, slow path) and dut's NAPI
//! thread (threaded NAPI: the XDP program and the kernel receive of everything arriving at the
//! node run in it) is pinned to core 1 too; the generator and gen's NAPI thread are on core 0.
//! The cost of a row is the CPU time of the daemon's threads plus dut's NAPI thread over the
//! timed part (`/proc/<pid>/task/*/schedstat`: nanoseconds run, not sampled ticks), divided by
//! the copies the participants received: everything the node did for them, kernel included
//! (the daemon's sends run in its own syscalls), and nothing else. Each call is a meeting of two
//! sending audio-sized SRTP every `tick`; every packet makes one copy.
//!
//! Rows: with the stage (`mode = "shield"`) `direct` and `turn-udp` (ChannelData unwrapped in
//! XDP, wrapped by the worker); without it (`off`) `direct`, `turn-udp`, `turn-tcp`, `turn-tls`
//! (userspace: the TURN thread hands the payload to the worker). Ratios are to the `direct` row
//! of the same daemon.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use sluice_core::ids::Generation;
use sluice_core::table::Delta;
use sluice_dataplane::control::{Client, Request, Response};
use sluice_sim::meeting::Participant;

use crate::forward::counter;
use crate::netns::{NetNs, NsDataplane, PinGuard, Veth};
use crate::turn::{Calls, Relayed, scratch_with_certs, two_party_calls};
use crate::xdp::pin;

const DUT_IP: Ipv4Addr = Ipv4Addr::new(10, 57, 0, 1);
const GEN_IP: Ipv4Addr = Ipv4Addr::new(10, 57, 0, 2);
const SECRET: &str = "the-turn-netns-benchmark-secret";
const GEN_CORE: usize = 0;
const NODE_CORE: usize = 1;
/// Legs: meeting m's seat i is on 20000 + 64 m + i; each row's calls are meetings from here on.
const FIRST_MEETING: u32 = 100;
/// The most calls a row runs.
pub const MAX_CALLS: u32 = 32;

/// One row.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    /// The daemon's XDP mode: `shield` or `off`.
    pub xdp: String,
    /// `direct`, `turn-udp`, `turn-tcp` or `turn-tls`.
    pub transport: String,
    /// Calls (two participants each).
    pub calls: u32,
    /// Packets the participants sent in the timed part.
    pub sent: u64,
    /// Copies they received.
    pub received: u64,
    /// ChannelData datagrams the XDP stage unwrapped in the timed part.
    pub unwrapped_in_xdp: u64,
    /// The node's CPU time (daemon and dut's NAPI thread) per wall second over the timed part.
    pub node_core_busy: f64,
    /// The node's CPU ns per received copy.
    pub ns_per_packet: f64,
    /// `ns_per_packet` over the mean of the same daemon's `direct` rows.
    pub ratio: f64,
}

/// The rows, in one run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    /// Packets per second each participant sent.
    pub pps_per_participant: f64,
    /// Rows, each daemon's `direct` first.
    pub rows: Vec<Row>,
}

/// Nanoseconds the tasks of `pids` have run (`/proc/<pid>/task/*/schedstat`, first field).
fn run_ns(pids: &[i32]) -> u64 {
    let mut total = 0;
    for pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { continue };
        for t in tasks.flatten() {
            let stat = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
            total += stat.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    total
}

/// The daemon in dut's namespace, every thread on the node core (stopped by PID on drop).
struct Node {
    process: NsDataplane,
    control: Client,
}

impl Node {
    fn start(dut: &NetNs, veth: &str, dir: &Path, xdp: &str, instance: &str) -> anyhow::Result<Self> {
        let socket = dir.join(format!("{xdp}.sock"));
        let cfg = dir.join(format!("{xdp}.toml"));
        let lo = 20_000 + 64 * FIRST_MEETING as u16;
        let hi = lo + (64 * 2 * MAX_CALLS) as u16 - 1;
        std::fs::write(
            &cfg,
            format!(
                "[dataplane]\nlisten_ip = \"{DUT_IP}\"\nworkers = 1\ncores = [{NODE_CORE}]\nbackend = \"mmsg\"\ncontrol_socket = \"{}\"\nmetrics = \"127.0.0.1:9312\"\nport_range = [{lo}, {hi}]\n\
                 [dataplane.xdp]\nmode = \"{xdp}\"\ninterface = \"{veth}\"\ninstance = \"{instance}\"\n\
                 [dataplane.turn]\nlisten = \"{DUT_IP}:3478\"\ntls_listen = \"{DUT_IP}:5349\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\nsecret = \"{SECRET}\"\nrelay_ports = [45000, 45999]\nmax_allocations_per_user = 16\n",
                socket.display(),
                dir.join("server.pem").display(),
                dir.join("server.key").display()
            ),
        )?;
        let process = NsDataplane::start_on(dut, Some(&NODE_CORE.to_string()), &cfg, &socket, &dir.join(format!("{xdp}.log")))?;
        let control = Client::connect(&socket)?;
        Ok(Self { process, control })
    }

    /// `sluice_xdp_turn_unwrapped_packets_total` from the daemon's metrics (0 without a stage).
    fn unwrapped(dut: &NetNs) -> u64 {
        counter(&dut.http_get("127.0.0.1:9312", "/metrics"), "sluice_xdp_turn_unwrapped_packets_total") as u64
    }
}

/// Runs `calls` calls per row (at most [`MAX_CALLS`]) for `seconds` (after 1 s of warm-up), each
/// participant sending every `tick`.
pub fn run(calls: u32, seconds: f64, tick: Duration) -> anyhow::Result<Report> {
    let calls = calls.clamp(1, MAX_CALLS);
    let pid = std::process::id();
    let dir = scratch_with_certs("turn-netns")?;
    let gen_ns = NetNs::new("tng");
    let dut = NetNs::new("tnd");
    let veth = Veth::new("tn", &gen_ns, &[&format!("{GEN_IP}/24")], &dut, &[&format!("{DUT_IP}/24")]);
    gen_ns.napi_thread_on(&veth.a, GEN_CORE)?;
    dut.napi_thread_on(&veth.b, NODE_CORE)?;
    let napi = dut.napi_threads(&veth.b)?;
    pin(GEN_CORE);
    let mut rows: Vec<Row> = Vec::new();
    println!("{:<7} {:<9} {:>6} {:>9} {:>9} {:>9} {:>6} {:>10} {:>7}", "xdp", "transport", "calls", "sent", "received", "in XDP", "busy", "ns/packet", "ratio");
    // Each daemon's first seconds cost more (its threads and the kernel warming up): a warm-up
    // row goes first and is not reported. Direct rows come before and after the relayed ones; a
    // relayed row's ratio is to their mean.
    let plan: [(&str, &[&str]); 2] = [
        ("shield", &["warm-up", "direct", "turn-udp", "direct", "turn-udp", "direct"]),
        ("off", &["warm-up", "direct", "turn-udp", "turn-tcp", "turn-tls", "direct"]),
    ];
    for (xdp, transports) in plan {
        let instance = format!("st5{xdp}{pid}");
        let _pins = PinGuard(Path::new(sluice_dataplane::xdp::PIN_ROOT).join(&instance));
        let mut node = Node::start(&dut, &veth.b, &dir, xdp, &instance)?;
        let mut measured = Vec::new();
        for (generation, transport) in transports.iter().enumerate() {
            // Consecutive rows use two sets of meetings in turn (each delta replaces the tables,
            // so a set's legs are new each time it comes back).
            let first = FIRST_MEETING + (generation as u32 % 2) * MAX_CALLS;
            let kind = if *transport == "warm-up" { "direct" } else { transport };
            let row = run_row(&mut node, (&gen_ns, &dut, &napi), &dir, xdp, kind, (first, calls), seconds, tick, generation as u64 + 1)?;
            if *transport != "warm-up" {
                measured.push(row);
            }
        }
        let direct: Vec<f64> = measured.iter().filter(|r| r.transport == "direct").map(|r| r.ns_per_packet).collect();
        let direct = direct.iter().sum::<f64>() / direct.len().max(1) as f64;
        for row in measured {
            let row = Row { ratio: row.ns_per_packet / direct, ..row };
            println!(
                "{:<7} {:<9} {:>6} {:>9} {:>9} {:>9} {:>6.3} {:>10.0} {:>7.3}",
                row.xdp, row.transport, row.calls, row.sent, row.received, row.unwrapped_in_xdp, row.node_core_busy, row.ns_per_packet, row.ratio
            );
            rows.push(row);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Report { pps_per_participant: 1.0 / tick.as_secs_f64(), rows })
}

#[expect(clippy::too_many_arguments, reason = "one row's settings")]
fn run_row(
    node: &mut Node,
    (gen_ns, dut, napi): (&NetNs, &NetNs, &[i32]),
    dir: &Path,
    xdp: &str,
    transport: &str,
    (first_meeting, calls): (u32, u32),
    seconds: f64,
    tick: Duration,
    generation: u64,
) -> anyhow::Result<Row> {
    let (ops, mut people) = two_party_calls(first_meeting, calls);
    match node.control.call(&Request::Apply(Delta { generation: Generation(generation), replace_all: true, ops }))? {
        Response::Applied(_) => {}
        other => bail!("apply: {other:?}"),
    }
    let leg = |p: &Participant| SocketAddr::new(DUT_IP.into(), p.port);
    let turn = SocketAddr::new(DUT_IP.into(), 3478);
    let turn_tls = SocketAddr::new(DUT_IP.into(), 5349);
    let mut row_calls = Calls::connect(
        &mut people,
        transport == "direct",
        leg,
        || gen_ns.enter(|| UdpSocket::bind(SocketAddr::new(GEN_IP.into(), 0))),
        |seed| {
            gen_ns.enter(|| match transport {
                "turn-udp" => Relayed::udp_from(SocketAddr::new(GEN_IP.into(), 0), turn, SECRET, seed),
                "turn-tcp" => Relayed::tcp(turn, SECRET, seed),
                _ => Relayed::tls(turn_tls, &dir.join("ca.pem"), SECRET, seed),
            })
        },
    )?;
    let warm = Duration::from_secs(1);
    let timed = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let (mut received, mut sent, mut counted_from, mut n) = (0u64, 0u64, 0u64, 0u32);
    let mut at_start = None;
    let node_tasks: Vec<i32> = napi.iter().copied().chain([node.process.child.id() as i32]).collect();
    while start.elapsed() < warm + timed {
        if at_start.is_none() && start.elapsed() >= warm {
            at_start = Some((run_ns(&node_tasks), Instant::now(), Node::unwrapped(dut)));
            counted_from = received;
            sent = 0;
        }
        for (i, p) in people.iter_mut().enumerate() {
            let pkt = p.audio(u64::from(n));
            row_calls.send(i, &pkt, leg(p))?;
            sent += 1;
        }
        received += row_calls.drain();
        n += 1;
        if let Some(d) = (start + tick * n).checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
    let (busy1, t1, unwrapped1) = (run_ns(&node_tasks), Instant::now(), Node::unwrapped(dut));
    std::thread::sleep(Duration::from_millis(200));
    received += row_calls.drain();
    row_calls.release();
    let (busy0, t0, unwrapped0) = at_start.context("no timed part")?;
    let got = received - counted_from;
    let busy = busy1 - busy0;
    Ok(Row {
        xdp: xdp.into(),
        transport: transport.into(),
        calls,
        sent,
        received: got,
        unwrapped_in_xdp: unwrapped1 - unwrapped0,
        node_core_busy: busy as f64 / (t1 - t0).as_nanos().max(1) as f64,
        ns_per_packet: busy as f64 / got.max(1) as f64,
        ratio: 1.0,
    })
}
