//! The XDP benchmark, on one veth pair between two network namespaces, in one run:
//!
//! ```text
//!  ns sx5bg<pid> "gen" (core 0)                       ns sx5bd<pid> "dut"
//!  10.56.0.2 publisher, subscribers ─────veth─────▶ 10.56.0.1 sluice-dataplane, 1 worker (core 1)
//!  10.56.0.3 strangers (the flood)     ◀──────────  [XDP: the daemon's stage, or pass-through]
//!  [XDP on gen's end: flood generator (live frames)
//!   and sink counter (XDP_DROP, counted per CPU)]
//! ```
//!
//! (a) **Shield vs userspace.** A flood from a stranger to the publisher's leg port, generated at
//! line rate by `BPF_PROG_TEST_RUN` live frames through a relay entry on gen's end (XDP_TX into the
//! veth). Once with the daemon's shield (dropped in XDP: the `unknown_source` verdict rate), once
//! with the daemon's stage off and a pass-through XDP program on dut's end (veth delivers
//! redirected frames only to an end with an XDP program): the flood goes through the kernel's UDP
//! stack to the worker, which drops it (the workers' drop rate). On veth the XDP program and the
//! kernel stack of dut's end run in the NAPI context of the CPU that transmitted, the generator's.
//!
//! (b) **AF_XDP vs sockets.** One publisher sends 1200-byte SRTP (AES-128-GCM) as fast as it can
//! from gen (core 0), the daemon (core 1) forwards to 4 subscribers on gen; per backend (`xsk`
//! with `mode = "af_xdp"`, `uring` and `mmsg` with the stage off) the packets out per second (the
//! daemon's count) and those delivered (counted by an XDP_DROP program on gen's end, never by a
//! userspace receiver).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::bail;
use sluice_core::ids::Generation;
use sluice_core::srtp::Profile;
use sluice_core::table::Delta;
use sluice_core::verdict::DropReason;
use sluice_dataplane::control::{Client, Request, Response};
use sluice_dataplane::io::xsk::Interface;
use sluice_dataplane::xdp::{Egress, PIN_ROOT, RelayRoute, Verdict as XdpVerdict, XdpStage};

use crate::forward::{BASE_PORT, Generator, STREAMS, process_cpu_ns, streams_ops};
use crate::netns::{NetNs, NsDataplane, PinGuard, Veth};

const DUT_IP: Ipv4Addr = Ipv4Addr::new(10, 56, 0, 1);
const GEN_IP: Ipv4Addr = Ipv4Addr::new(10, 56, 0, 2);
const STRANGER_IP: Ipv4Addr = Ipv4Addr::new(10, 56, 0, 3);
/// The generator's relay entry: frames to this port from `SEED` are rewritten into the flood.
const SEED_PORT: u16 = 9;
const SEED: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 9);
const FANOUT: u32 = 4;
/// The subscribers' ports on GEN_IP (nothing listens: gen's XDP counts and drops every copy).
const SUB_PORT: u16 = 41_000;
const GEN_CORE: usize = 0;
const WORKER_CORE: usize = 1;

/// (a): one way of dropping the flood.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DropSample {
    /// `xdp_shield` or `userspace`.
    pub path: String,
    /// Flood frames the generator transmitted per second.
    pub offered_pps: f64,
    /// Flood datagrams dropped per second: by the XDP stage (`unknown_source`), or by the
    /// worker after receiving them (every drop reason).
    pub dropped_pps: f64,
    /// Daemon CPU seconds per wall second.
    pub daemon_cpu: f64,
    /// How busy the daemon's core was (its worker, and the XDP program and kernel receive that
    /// run there in the interface's NAPI thread), per wall second.
    pub dut_core_busy: f64,
    /// Flood datagrams dropped per busy second of the daemon's core.
    pub dropped_per_core_s: f64,
}

/// (b): one backend.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FanoutSample {
    /// `xsk`, `uring` or `mmsg`.
    pub backend: String,
    /// The paced rate asked of the publisher (0: the flood, when no paced rate was sustained).
    pub target_pps: f64,
    /// Publisher packets sent per second.
    pub offered_pps: f64,
    /// Copies missing at the daemon's output: 1 - sent ÷ (offered × fan-out).
    pub loss: f64,
    /// Publisher packets the daemon's worker received per second.
    pub in_pps: f64,
    /// Packets the daemon sent per second (its own count).
    pub out_pps: f64,
    /// What the worker dropped during the measurement, by reason.
    pub worker_drops: Vec<(String, u64)>,
    /// Busy fraction of each CPU during the measurement (generator core 0, worker core 1).
    pub core_busy: Vec<f64>,
    /// Packets delivered to the subscribers' interface per second (XDP_DROP counter at the sink).
    pub delivered_pps: f64,
    /// Daemon CPU seconds per wall second.
    pub daemon_cpu: f64,
    /// Packets out per daemon CPU-second.
    pub out_per_cpu_s: f64,
    /// Packets out per busy second of the daemon's core (worker + its kernel receive).
    pub out_per_core_s: f64,
}

/// The whole run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    /// /proc/loadavg (1, 5, 15 min) when the run started.
    pub load_before: [f64; 3],
    /// ... and when it ended.
    pub load_after: [f64; 3],
    /// Seconds per measurement.
    pub seconds: f64,
    /// (a).
    pub drops: Vec<DropSample>,
    /// XDP shield drop rate ÷ userspace drop rate.
    pub shield_ratio: f64,
    /// The same per busy second of the daemon's core: what one core could drop each way.
    pub shield_ratio_per_core: f64,
    /// (b), fan-out 4.
    pub fanout: Vec<FanoutSample>,
    /// AF_XDP out/s ÷ the best socket backend's out/s.
    pub xsk_ratio: f64,
    /// The same per busy second of the daemon's core.
    pub xsk_ratio_per_core: f64,
}

fn loadavg() -> [f64; 3] {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = s.split_whitespace().filter_map(|x| x.parse().ok());
    [it.next().unwrap_or(0.0), it.next().unwrap_or(0.0), it.next().unwrap_or(0.0)]
}

/// Pins the calling thread to `core` (if the machine has it).
pub(crate) fn pin(core: usize) {
    if let Some(id) = core_affinity::get_core_ids().and_then(|ids| ids.into_iter().find(|i| i.id == core)) {
        core_affinity::set_for_current(id);
    }
}

struct Topo {
    gen_ns: NetNs,
    dut: NetNs,
    veth: Veth,
    dir: PathBuf,
}

/// The daemon under test (stopped by PID on drop) and its control connection.
struct Daemon {
    process: NsDataplane,
    control: Client,
}

impl Daemon {
    /// `backend` is `uring`, `mmsg` or `xsk`, the last optionally as `xsk-ring` or `xsk-socket`
    /// (the AF_XDP transmit path, `af_xdp_tx`; plain `xsk` is `auto`), the others optionally as
    /// `uring-shield` or `mmsg-shield` (`mode` says what the stage does).
    fn start(t: &Topo, backend: &str, mode: &str, instance: &str) -> anyhow::Result<Self> {
        let socket = t.dir.join(format!("{backend}-{mode}.sock"));
        let cfg = t.dir.join(format!("{backend}-{mode}.toml"));
        let (kind, tx) = match backend.split_once('-') {
            Some(("xsk", tx @ ("ring" | "socket"))) => ("xsk", tx),
            Some((kind @ ("uring" | "mmsg"), "shield")) => (kind, "auto"),
            None => (backend, "auto"),
            _ => bail!("unknown backend {backend:?}: uring, mmsg (each optionally -shield), xsk, xsk-ring or xsk-socket"),
        };
        std::fs::write(
            &cfg,
            format!(
                "[dataplane]\nlisten_ip = \"{DUT_IP}\"\nworkers = 1\ncores = [{WORKER_CORE}]\nbackend = \"{kind}\"\ncontrol_socket = \"{}\"\nmetrics = \"127.0.0.1:9311\"\n\
                 [dataplane.xdp]\nmode = \"{mode}\"\ninterface = \"{}\"\ninstance = \"{instance}\"\naf_xdp_tx = \"{tx}\"\n",
                socket.display(),
                t.veth.b
            ),
        )?;
        let process = NsDataplane::start(&t.dut, &cfg, &socket, &t.dir.join(format!("{backend}-{mode}.log")))?;
        let mut control = Client::connect(&socket)?;
        let delta = Delta { generation: Generation(1), replace_all: false, ops: subscriber_ops() };
        match control.call(&Request::Apply(delta))? {
            Response::Applied(_) => {}
            other => bail!("dataplane refused the bench tables: {other:?}"),
        }
        Ok(Self { process, control })
    }

    /// Packets received, sent, and dropped by the worker, and CPU ns, so far.
    fn counters(&mut self) -> anyhow::Result<Counters> {
        let c = match self.control.call(&Request::Stats)? {
            Response::Stats(s) => Counters {
                rx: s.iter().map(|c| c.rx_packets).sum(),
                tx: s.iter().map(|c| c.tx_packets).sum(),
                drops: s.iter().map(|c| DropReason::ALL.iter().map(|r| c.drops_for(*r)).sum::<u64>()).sum(),
                by_reason: DropReason::ALL.iter().map(|r| s.iter().map(|c| c.drops_for(*r)).sum()).collect(),
                cpu_ns: process_cpu_ns(self.process.child.id())?,
            },
            other => bail!("stats: {other:?}"),
        };
        Ok(c)
    }
}

#[derive(Clone, Debug)]
struct Counters {
    by_reason: Vec<u64>,
    rx: u64,
    tx: u64,
    drops: u64,
    cpu_ns: u64,
}

/// The fan-out table: subscribers at GEN_IP:SUB_PORT+leg, where gen's XDP counter drops them.
fn subscriber_ops() -> Vec<sluice_core::table::Op> {
    streams_ops(Profile::AeadAes128Gcm, FANOUT, STREAMS, BASE_PORT, |l| (l > 1).then(|| SocketAddr::new(GEN_IP.into(), SUB_PORT + l as u16)))
}

/// Busy jiffies and all jiffies of each CPU (`/proc/stat`).
fn cpu_times() -> Vec<(u64, u64)> {
    std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let v: Vec<u64> = l.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            let all: u64 = v.iter().take(8).sum();
            (all - idle, all)
        })
        .collect()
}

/// Busy fraction of each CPU between two `cpu_times` samples.
fn busy(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| (y.0 - x.0) as f64 / (y.1 - x.1).max(1) as f64).collect()
}

/// The publisher (in gen's namespace), after a few real packets so the daemon latched its
/// address (and the shield swapped the leg's any-remote entry for the exact one).
fn latched_publisher(t: &Topo, epoch: Instant) -> anyhow::Result<Generator> {
    let mut g = t.gen_ns.enter(|| Generator::new(Profile::AeadAes128Gcm, epoch, GEN_IP.into()))?;
    g.send(SocketAddr::new(DUT_IP.into(), BASE_PORT + 1), 8);
    std::thread::sleep(Duration::from_millis(200));
    Ok(g)
}

/// Stops the daemon and removes its pins (detaching its stage), so the next figure starts clean.
fn finish(d: Daemon, instance: &str) {
    drop(d);
    drop(PinGuard(Path::new(PIN_ROOT).join(instance)));
}

/// Transmits the flood for `seconds` from a thread in gen's namespace pinned to the generator's
/// core; returns frames sent.
fn flood(t: &Topo, gen_stage: &mut XdpStage, ifindex: u32, seconds: f64) -> anyhow::Result<u64> {
    let mut frame = vec![0u8; 14 + 20 + 8 + 200];
    frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut frame[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(20u16 + 8 + 200).to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[192, 0, 2, 1]);
    ip[16..20].copy_from_slice(&GEN_IP.octets());
    let sum = !csum(&frame[14..34]);
    frame[24..26].copy_from_slice(&sum.to_be_bytes());
    frame[34..36].copy_from_slice(&SEED.port().to_be_bytes());
    frame[36..38].copy_from_slice(&SEED_PORT.to_be_bytes());
    frame[38..40].copy_from_slice(&(8u16 + 200).to_be_bytes());
    // RTP with the publisher's SSRC: only the source is wrong.
    frame[42..54].copy_from_slice(&[0x80, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0x50, 0x00]);
    t.gen_ns.enter(|| -> anyhow::Result<u64> {
        pin(GEN_CORE);
        let t0 = Instant::now();
        let mut sent = 0u64;
        while t0.elapsed().as_secs_f64() < seconds {
            gen_stage.transmit_live(&frame, ifindex, 100_000, 64)?;
            sent += 100_000;
        }
        Ok(sent)
    })
}

/// RFC 1071 sum of `data`, folded, not complemented.
fn csum(data: &[u8]) -> u16 {
    let mut s: u32 = data.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn drop_sample(t: &Topo, gen_stage: &mut XdpStage, gen_if: u32, shield: bool, instance: &str, seconds: f64) -> anyhow::Result<DropSample> {
    let mut d = Daemon::start(t, "uring", if shield { "shield" } else { "off" }, instance)?;
    // Without the daemon's stage, a pass-through program (port range off) on dut's end makes veth
    // accept the generator's redirected frames and hand them to the kernel stack.
    let mut pass = if shield {
        None
    } else {
        let mut p = XdpStage::load_unpinned()?;
        t.dut.enter(|| p.attach(&t.veth.b))?;
        p.clear_port_range()?;
        Some(p)
    };
    latched_publisher(t, Instant::now())?;
    let dut_counter = |pass: &Option<XdpStage>| -> anyhow::Result<u64> {
        Ok(match pass {
            // The daemon's pinned maps, read through a second handle on the same pins.
            None => XdpStage::open(instance)?.verdict_counts()?.get(XdpVerdict::DropUnknownSource),
            Some(_) => 0,
        })
    };
    let c0 = d.counters()?;
    let x0 = dut_counter(&pass)?;
    let stat0 = cpu_times();
    let t0 = Instant::now();
    let sent = flood(t, gen_stage, gen_if, seconds)?;
    let wall = t0.elapsed().as_secs_f64();
    let core = busy(&stat0, &cpu_times()).get(WORKER_CORE).copied().unwrap_or(0.0);
    std::thread::sleep(Duration::from_millis(300));
    let c1 = d.counters()?;
    let x1 = dut_counter(&pass)?;
    let dropped = if shield { x1 - x0 } else { c1.drops - c0.drops };
    pass.take();
    finish(d, instance);
    Ok(DropSample {
        path: if shield { "xdp_shield" } else { "userspace" }.into(),
        offered_pps: sent as f64 / wall,
        dropped_pps: dropped as f64 / wall,
        daemon_cpu: (c1.cpu_ns - c0.cpu_ns) as f64 / 1e9 / wall,
        dut_core_busy: core,
        dropped_per_core_s: if core > 0.0 { dropped as f64 / wall / core } else { 0.0 },
    })
}

/// One probe of (b): the publisher paced at `rate` packets/s (0: as fast as it can) for
/// `seconds`, through a fresh daemon on `backend`.
fn fanout_probe(t: &Topo, gen_stage: &XdpStage, backend: &str, instance: &str, seconds: f64, rate: f64) -> anyhow::Result<FanoutSample> {
    let mode = if backend.starts_with("xsk") {
        "af_xdp"
    } else if backend.ends_with("-shield") {
        "shield"
    } else {
        "off"
    };
    let mut d = Daemon::start(t, backend, mode, instance)?;
    let delivered = || gen_stage.verdict_counts().map(|c| c.get(XdpVerdict::DropUnknownSource));
    let total0 = d.counters()?;
    let del0 = delivered()?;
    let dst = SocketAddr::new(DUT_IP.into(), BASE_PORT + 1);
    let generator = Generator::spawn_in(t.gen_ns.name.clone(), GEN_IP.into(), Profile::AeadAes128Gcm, Instant::now(), GEN_CORE, seconds + 0.1, rate, dst);
    // The generator's warm-up (keyframes that latch the publisher, 100 ms) passes first.
    std::thread::sleep(Duration::from_millis(150));
    let c0 = d.counters()?;
    let stat0 = cpu_times();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(seconds - 0.1));
    let wall = t0.elapsed().as_secs_f64();
    let cores = busy(&stat0, &cpu_times());
    let c_window = d.counters()?;
    let (sent, total_sent, _) = generator.join().map_err(|_| anyhow::anyhow!("generator panicked"))??;
    // The daemon publishes its counters every 250 ms: read them once they stopped moving.
    let mut c1 = d.counters()?;
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(300));
        let c = d.counters()?;
        if c.tx == c1.tx {
            break;
        }
        c1 = c;
    }
    let del1 = delivered()?;
    finish(d, instance);
    let expected = (total_sent * u64::from(FANOUT)) as f64;
    let loss = if expected > 0.0 { (1.0 - (c1.tx - total0.tx) as f64 / expected).max(0.0) } else { 0.0 };
    let offered_pps = sent as f64 / (seconds + 0.1);
    let out_pps = if rate > 0.0 { offered_pps * f64::from(FANOUT) * (1.0 - loss) } else { (c_window.tx - c0.tx) as f64 / wall };
    let cpu = (c_window.cpu_ns - c0.cpu_ns) as f64 / 1e9;
    let core1 = cores.get(WORKER_CORE).copied().unwrap_or(0.0);
    Ok(FanoutSample {
        backend: backend.into(),
        target_pps: rate,
        offered_pps,
        in_pps: (c1.rx - total0.rx) as f64 / (seconds + 0.2),
        loss,
        worker_drops: DropReason::ALL
            .iter()
            .zip(total0.by_reason.iter().zip(&c1.by_reason))
            .filter(|(_, (a, b))| b > a)
            .map(|(r, (a, b))| (r.name().to_owned(), b - a))
            .collect(),
        core_busy: cores,
        out_pps,
        delivered_pps: (del1 - del0) as f64 / (seconds + 0.2),
        daemon_cpu: cpu / wall,
        out_per_cpu_s: if cpu > 0.0 { out_pps * wall / cpu } else { 0.0 },
        out_per_core_s: if core1 > 0.0 { out_pps / core1 } else { 0.0 },
    })
}

/// (b) for one backend: a flood probe, then the highest paced rate with at most 0.1% of the
/// copies lost.
fn fanout_sample(t: &Topo, gen_stage: &XdpStage, backend: &str, instance: &str, seconds: f64) -> anyhow::Result<FanoutSample> {
    let flood = fanout_probe(t, gen_stage, backend, instance, seconds, 0.0)?;
    let (best, _) = crate::forward::search_rate(flood.out_pps / f64::from(FANOUT), 5, |rate| {
        let s = fanout_probe(t, gen_stage, backend, instance, seconds, rate)?;
        Ok((s.loss <= 0.001, s.offered_pps >= 0.97 * rate, s))
    })?;
    Ok(best.unwrap_or(flood))
}

/// Builds the topology, runs (a) and (b), prints the tables; the caller writes the JSON.
pub fn run(seconds: f64, backends: &[String]) -> anyhow::Result<Report> {
    let load_before = loadavg();
    let pid = std::process::id();
    let gen_ns = NetNs::new("bg");
    let dut = NetNs::new("bd");
    let veth = Veth::new("b", &gen_ns, &["10.56.0.2/24", "10.56.0.3/24"], &dut, &["10.56.0.1/24"]);
    // Each end's receive (its XDP program and kernel stack) in a NAPI thread on its own party's
    // core, as an RX queue's interrupt would be: without this, veth runs the daemon's XDP stage
    // and kernel receive in the softirq of the generator's core, and the daemon's core is
    // charged for none of it.
    gen_ns.napi_thread_on(&veth.a, GEN_CORE)?;
    dut.napi_thread_on(&veth.b, WORKER_CORE)?;
    // The daemon's end keeps TX checksum offload, as on a real NIC (`Veth` turns it off for XDP
    // rewrites; the gen end's programs only count the daemon's copies): without it every copy's
    // UDP checksum is computed in software on the daemon's core.
    dut.exec("ethtool", &["-K", &veth.b, "tx", "on"]);
    let dir = std::env::temp_dir().join(format!("sx5-xdp-bench-{pid}"));
    std::fs::create_dir_all(&dir)?;
    let t = Topo { gen_ns, dut, veth, dir };
    let instance = format!("sx5bench{pid}");
    let _pins = PinGuard(Path::new(PIN_ROOT).join(&instance));

    // Gen's end: the flood generator (a relay entry rewriting the seed frame into a stranger's
    // datagram to the publisher's leg, sent back out of gen's end) and the sink counter (every
    // other RTP/RTCP datagram arriving at gen is an unknown source: dropped and counted).
    let iface = t.gen_ns.enter(|| Interface::lookup(&t.veth.a))?;
    let mut gen_stage = XdpStage::load_unpinned()?;
    t.gen_ns.enter(|| gen_stage.attach(&t.veth.a))?;
    gen_stage.set_port_range(1..=65535)?;
    let route = RelayRoute {
        src: SocketAddr::new(STRANGER_IP.into(), 40_000),
        dst: SocketAddr::new(DUT_IP.into(), BASE_PORT + 1),
        src_mac: t.veth.mac_a,
        dst_mac: t.veth.mac_b,
        egress: Egress::SameInterface,
    };
    gen_stage.add_relay(SEED_PORT, SEED, &route)?;
    // Live frames recycle their pages without restoring the data: a recycled frame is the already
    // rewritten one, which this second (idempotent) entry sends again.
    gen_stage.add_relay(BASE_PORT + 1, route.src, &route)?;

    println!(
        "XDP benchmark: veth between netns {} (generator, core {GEN_CORE}) and {} (sluice-dataplane, 1 worker on core {WORKER_CORE}), {seconds} s per figure",
        t.gen_ns.name, t.dut.name
    );
    println!("load average before: {load_before:?}\n");
    let mut drops = Vec::new();
    for shield in [true, false] {
        drops.push(drop_sample(&t, &mut gen_stage, iface.index, shield, &instance, seconds)?);
    }
    println!("(a) a flood from a stranger to a leg port (RTP, 242-byte frames, live-frames generator)");
    println!("{:<12} {:>14} {:>14} {:>11} {:>10} {:>16}", "path", "offered pkt/s", "dropped pkt/s", "daemon cpu", "core 1", "dropped/core-s");
    for s in &drops {
        println!(
            "{:<12} {:>14.0} {:>14.0} {:>10.0}% {:>9.0}% {:>16.0}",
            s.path,
            s.offered_pps,
            s.dropped_pps,
            s.daemon_cpu * 100.0,
            s.dut_core_busy * 100.0,
            s.dropped_per_core_s
        );
    }
    let shield_ratio = drops[0].dropped_pps / drops[1].dropped_pps.max(1.0);
    let shield_ratio_per_core = drops[0].dropped_per_core_s / drops[1].dropped_per_core_s.max(1.0);
    println!("shield ÷ userspace: {shield_ratio:.1}× the drop rate, {shield_ratio_per_core:.1}× per busy second of the daemon's core\n");

    let mut fanout = Vec::new();
    for b in backends {
        fanout.push(fanout_sample(&t, &gen_stage, b, &instance, seconds)?);
    }
    println!(
        "(b) 1 publisher ({STREAMS} streams) → {FANOUT} subscribers, 1200-byte SRTP (AES-128-GCM): the highest paced rate with at most 0.1% of the copies lost"
    );
    println!(
        "{:<7} {:>10} {:>8} {:>10} {:>12} {:>11} {:>10} {:>13} {:>13}",
        "backend", "offered/s", "loss %", "out pkt/s", "delivered/s", "daemon cpu", "cpu0/cpu1", "out/cpu-s", "out/core1-s"
    );
    for s in &fanout {
        let cores: Vec<String> = s.core_busy.iter().map(|b| format!("{:.0}", b * 100.0)).collect();
        println!(
            "{:<7} {:>10.0} {:>8.3} {:>10.0} {:>12.0} {:>10.0}% {:>10} {:>13.0} {:>13.0}",
            s.backend,
            s.offered_pps,
            s.loss * 100.0,
            s.out_pps,
            s.delivered_pps,
            s.daemon_cpu * 100.0,
            cores.join("/"),
            s.out_per_cpu_s,
            s.out_per_core_s
        );
        if !s.worker_drops.is_empty() {
            println!("        worker drops: {:?}", s.worker_drops);
        }
    }
    let is_xsk = |s: &FanoutSample| s.backend.starts_with("xsk");
    let xsk = fanout.iter().filter(|s| is_xsk(s)).map(|s| s.out_pps).fold(0.0, f64::max);
    let best_socket = fanout.iter().filter(|s| !is_xsk(s)).map(|s| s.out_pps).fold(0.0, f64::max);
    let xsk_ratio = xsk / best_socket.max(1.0);
    let per_core = |f: &dyn Fn(&FanoutSample) -> bool| fanout.iter().filter(|s| f(s)).map(|s| s.out_per_core_s).fold(0.0, f64::max);
    let xsk_ratio_per_core = per_core(&is_xsk) / per_core(&|s| !is_xsk(s)).max(1.0);
    if xsk > 0.0 && best_socket > 0.0 {
        println!("AF_XDP ÷ best socket backend: {xsk_ratio:.2}× packets out, {xsk_ratio_per_core:.2}× per busy second of the daemon's core");
        // Against the socket backends with the XDP stage in front too (as when the shield is on):
        // on veth every frame an XDP program sees is first copied out of the sender's skb.
        let shielded = fanout.iter().filter(|s| s.backend.ends_with("-shield")).map(|s| s.out_pps).fold(0.0, f64::max);
        if shielded > 0.0 {
            let per_core_shielded = per_core(&|s| s.backend.ends_with("-shield"));
            println!(
                "AF_XDP ÷ best socket backend behind the XDP shield: {:.2}× packets out, {:.2}× per busy second",
                xsk / shielded,
                per_core(&is_xsk) / per_core_shielded.max(1.0)
            );
        }
    }
    let load_after = loadavg();
    println!("load average after: {load_after:?}");
    drop(gen_stage);
    let _ = std::fs::remove_dir_all(&t.dir);
    Ok(Report { load_before, load_after, seconds, drops, shield_ratio, shield_ratio_per_core, fanout, xsk_ratio, xsk_ratio_per_core })
}
