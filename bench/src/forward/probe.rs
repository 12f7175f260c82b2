//! One measurement: a probe of one configuration at one input rate, the kernel's own latency
//! floor, and the forwarding core's ceiling without I/O.

use std::net::SocketAddr;
use std::time::{Duration, Instant as WallInstant};

use hdrhistogram::Histogram;
use sluice_core::forward::{Core, CoreConfig, OutBatch};
use sluice_core::ids::Generation;
use sluice_core::srtp::{Profile, RtpSendState, SrtpKeys};
use sluice_core::table::{Delta, KeyMaterial};
use sluice_core::time::Instant;

use super::accounting::{core_busy_ticks, counter, io_counter, metrics_text, thread_cpu_ns};
use super::forwarder::Forwarder;
use super::generator::Generator;
use super::sink::Sink;
use super::tables::ops;
use super::{BASE_PORT, FORWARDER_CORE, FORWARDER_IP, GENERATOR_CORE, GENERATOR_IP, Load, PAYLOAD, PUBLISHER_SSRC, SINK_IP, SINK_PORT, STREAMS, Topology};

/// One measured configuration.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Sample {
    /// `uring`, `mmsg` or `naive`.
    pub backend: String,
    /// The SRTP profile.
    pub profile: String,
    /// Whether the forwarder used UDP GSO.
    pub gso: bool,
    /// Subscribers per published packet (1 for calls).
    pub fanout: u32,
    /// Packets the generator offered per second.
    pub offered_pps: f64,
    /// Packets the forwarder sent per second.
    pub out_pps: f64,
    /// Packets the sink received per second (its XDP program's count).
    pub sink_pps: f64,
    /// Forwarder CPU seconds per wall second (1.0 = one core busy).
    pub cpu: f64,
    /// Packets out per CPU-second of the forwarder.
    pub out_per_cpu_s: f64,
    /// Mean datagrams per receive batch (daemon backends).
    pub mean_rx_batch: f64,
    /// The share of received datagrams that came in UDP GRO runs (daemon backends).
    pub rx_gro: f64,
    /// Datagrams per send syscall (daemon backends): GSO and sendmmsg batching.
    pub tx_per_syscall: f64,
    /// The generator's CPU seconds per wall second (near 1.0: the generator, not the forwarder,
    /// may be the limit).
    pub generator_cpu: f64,
    /// The rate the generator was asked for (packets/s in; 0 = as fast as it can).
    pub target_pps: f64,
    /// Copies missing at the forwarder's output: 1 - sent ÷ (offered × fan-out), over the whole
    /// probe including the drain after the generator stopped.
    pub loss: f64,
    /// How busy the forwarder's core was (every task on it: the worker, and the kernel's receive
    /// for the forwarder, which runs there in its NAPI thread), per wall second.
    pub core_busy: f64,
    /// Packets out per busy second of the forwarder's core.
    pub out_per_core_s: f64,
}

/// Runs one backend under one load: open loop at `rate` packets/s in (0 = as fast as possible);
/// `measure` (fan-out loads only) receives in userspace and records latency instead of counting
/// in XDP.
#[expect(clippy::too_many_arguments, reason = "one measurement's whole description")]
pub(super) fn run_one(
    topo: &Topology,
    backend: &str,
    gso: bool,
    profile: Profile,
    load: Load,
    seconds: f64,
    rate: f64,
    measure: bool,
) -> anyhow::Result<(Sample, Histogram<u64>)> {
    let epoch = WallInstant::now();
    let dir = std::env::temp_dir();
    let fanout = load.copies();
    let mut fwd = Forwarder::start(topo, backend, profile, load, FORWARDER_CORE, &dir)?;
    let sink = match load {
        Load::Fanout(n) if measure => {
            let subscribers = (2..=n + 1).map(|l| (SINK_PORT + l as u16, 100 + l as u8)).collect();
            Sink::userspace(topo, profile, subscribers, epoch, GENERATOR_CORE)?
        }
        _ => Sink::xdp(topo, load.sink_ports())?,
    };
    let (total0, _) = fwd.counters()?;
    let generator = match load {
        Load::Fanout(_) => Generator::spawn_in(
            topo.generator.name.clone(),
            GENERATOR_IP.into(),
            profile,
            epoch,
            GENERATOR_CORE,
            seconds + 0.1,
            rate,
            SocketAddr::from((FORWARDER_IP, BASE_PORT + 1)),
        ),
        Load::Calls { calls, mode } => super::calls::spawn_generator(topo.generator.name.clone(), profile, calls, mode, GENERATOR_CORE, seconds + 0.1, rate),
    };
    // The generator's warm-up (a keyframe burst, 100 ms) passes before the window opens.
    std::thread::sleep(Duration::from_millis(150));
    let (out0, cpu0) = fwd.counters()?;
    let busy0 = core_busy_ticks(FORWARDER_CORE);
    let m0 = metrics_text(topo);
    let recv0 = sink.received();
    let t0 = WallInstant::now();
    std::thread::sleep(Duration::from_secs_f64(seconds - 0.1));
    let wall = t0.elapsed().as_secs_f64();
    let (out1, cpu1) = fwd.counters()?;
    let busy1 = core_busy_ticks(FORWARDER_CORE);
    let recv1 = sink.received();
    let m1 = metrics_text(topo);
    let (sent, total_sent, gen_cpu) = generator.join().map_err(|_| anyhow::anyhow!("generator panicked"))??;
    // What is still queued drains before the totals are read; the daemon publishes its counters
    // every 250 ms, so wait until they stop moving.
    let mut total1 = fwd.counters()?.0;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(300));
        let now = fwd.counters()?.0;
        if now == total1 {
            break;
        }
        total1 = now;
    }
    let hist = sink.finish();
    if measure {
        // How much of the one-way latency is the worker's own processing (its sampled
        // receipt-to-outputs-queued summary, this daemon's whole run).
        let q = |want: &str| {
            m1.lines()
                .find(|l| l.starts_with("sluice_processing_seconds{") && l.contains(&format!("quantile=\"{want}\"")))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .map_or_else(|| "-".to_string(), |secs| format!("{:.1}", secs * 1e6))
        };
        println!("    (the worker's own processing, receipt → outputs queued, µs: p50 {} p99 {} p99.9 {} max {})", q("0.5"), q("0.99"), q("0.999"), q("1"));
    }
    drop(fwd);
    let d = |f: &dyn Fn(&str) -> f64| f(&m1) - f(&m0);
    let (batches, batched) = (d(&|m| counter(m, "sluice_rx_batches_total")), d(&|m| counter(m, "sluice_rx_batched_datagrams_total")));
    let (syscalls, tx) = (d(&|m| io_counter(m, "syscalls")), d(&|m| io_counter(m, "tx_datagrams")));
    let gro = d(&|m| io_counter(m, "rx_gro_datagrams"));
    let cpu = (cpu1 - cpu0) as f64 / 1e9;
    let out = (out1 - out0) as f64;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let busy = (busy1 - busy0) as f64 / hz;
    let expected = (total_sent * u64::from(fanout)) as f64;
    let loss = if expected > 0.0 { (1.0 - (total1 - total0) as f64 / expected).max(0.0) } else { 0.0 };
    let offered_pps = sent as f64 / (seconds + 0.1);
    // Paced, the output rate follows from what was offered and what was lost (the daemon's
    // counters are published every 250 ms, too coarse for a window of a second or two); a flood
    // has no such rate, so its window's counters are used.
    let out_pps = if rate > 0.0 { offered_pps * f64::from(fanout) * (1.0 - loss) } else { out / wall };
    let busy_s = busy;
    Ok((
        Sample {
            backend: backend.into(),
            profile: format!("{profile:?}"),
            gso,
            fanout,
            offered_pps,
            out_pps,
            sink_pps: (recv1 - recv0) as f64 / wall,
            cpu: cpu / wall,
            out_per_cpu_s: if cpu > 0.0 { out_pps * wall / cpu } else { 0.0 },
            mean_rx_batch: if batches > 0.0 { batched / batches } else { 0.0 },
            rx_gro: if batched > 0.0 { (gro / batched).min(1.0) } else { 0.0 },
            tx_per_syscall: if syscalls > 0.0 { tx / syscalls } else { 0.0 },
            generator_cpu: gen_cpu / (seconds + 0.1),
            target_pps: rate,
            loss,
            core_busy: busy_s / wall,
            out_per_core_s: if busy_s > 0.0 { out_pps * wall / busy_s } else { 0.0 },
        },
        hist,
    ))
}

/// The topology's own latency floor: the generator's packets routed through the kernel's IP
/// forwarding in the forwarder's namespace straight to one subscriber port (no SRTP work, no
/// copies), at `rate` packets/s.
pub(super) fn kernel_floor(topo: &Topology, profile: Profile, seconds: f64, rate: f64) -> anyhow::Result<Histogram<u64>> {
    let epoch = WallInstant::now();
    let port = SINK_PORT + 2;
    // The publisher's own keys: the kernel forwards its packets unchanged.
    let sink = Sink::userspace(topo, profile, vec![(port, 1)], epoch, GENERATOR_CORE)?;
    let generator =
        Generator::spawn_in(topo.generator.name.clone(), GENERATOR_IP.into(), profile, epoch, GENERATOR_CORE, seconds, rate, SocketAddr::from((SINK_IP, port)));
    generator.join().map_err(|_| anyhow::anyhow!("generator panicked"))??;
    std::thread::sleep(Duration::from_millis(50));
    Ok(sink.finish())
}

/// The forwarding core alone on the forwarder's core, fed pre-protected packets from memory: the
/// crypto and rewrite ceiling no I/O backend can exceed (packets out per CPU-second).
pub(super) fn core_ceiling(profile: Profile, fanout: u32) -> f64 {
    let mut core = Core::new(CoreConfig::default());
    if core.apply(Delta { generation: Generation(1), replace_all: false, ops: ops(profile, fanout) }).is_err() {
        return 0.0;
    }
    let m = KeyMaterial::seeded(profile, 1);
    let Ok(keys) = SrtpKeys::new(profile, &m.key, &m.salt) else { return 0.0 };
    const N: usize = 32_768;
    let mut states = vec![RtpSendState::new(); STREAMS as usize];
    let packets: Vec<Vec<u8>> = (0..N)
        .map(|i| {
            let k = i % STREAMS as usize;
            let mut b = vec![0u8; 1300];
            b[..12].copy_from_slice(&[0x80, 96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            b[2..4].copy_from_slice(&((i / STREAMS as usize) as u16).to_be_bytes());
            b[8..12].copy_from_slice(&(PUBLISHER_SSRC + k as u32).to_be_bytes());
            b[12] = 0x10;
            let n = keys.protect_rtp(&mut states[k], &mut b, 12 + PAYLOAD).unwrap_or(0);
            b.truncate(n);
            b
        })
        .collect();
    std::thread::scope(|s| {
        s.spawn(|| {
            if let Some(id) = core_affinity::get_core_ids().and_then(|ids| ids.into_iter().find(|i| i.id == FORWARDER_CORE)) {
                core_affinity::set_for_current(id);
            }
            let src = SocketAddr::from((GENERATOR_IP, 40_000));
            let mut out = OutBatch::new(64);
            let mut buf = [0u8; 2048];
            let (mut copies, cpu0) = (0u64, thread_cpu_ns());
            for p in &packets {
                buf[..p.len()].copy_from_slice(p);
                let now = Instant::from_nanos(copies * 1_000);
                core.handle_rx(now, BASE_PORT + 1, src, &mut buf[..p.len()], &mut out);
                copies += out.len() as u64;
                out.clear();
            }
            let cpu = (thread_cpu_ns() - cpu0) as f64 / 1e9;
            if cpu > 0.0 { copies as f64 / cpu } else { 0.0 }
        })
        .join()
        .unwrap_or(0.0)
    })
}
