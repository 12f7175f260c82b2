//! The forwarding benchmark: one publisher, N subscribers, 1200-byte SRTP video through one
//! pinned dataplane worker, for each I/O backend, measured in one run.
//!
//! ```text
//!   generator (core 0) ──SRTP 1200 B──▶ sluice-dataplane, 1 worker (core 1) ──N copies──▶ sink (core 0)
//! ```
//!
//! The daemon is the real `sluice-dataplane` process, programmed over its control socket; the
//! `naive` baseline is the same forwarding core driven by a one-datagram-per-syscall loop
//! (recv_from / send_to) on the same core, the floor any batched backend must beat. Throughput is
//! the daemon's own count of packets sent per second of wall time, and per CPU-second of the
//! worker; latency is one-way (generator send → sink receive, a timestamp carried in the payload
//! and read after decryption) at half the measured maximum rate.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant as WallInstant};

use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use sluice_core::forward::{Core, CoreConfig, OutBatch};
use sluice_core::ids::{Generation, LegId, Pt, Ssrc, TrackId};
use sluice_core::srtp::{Profile, RtcpSendState, RtpRecvState, RtpSendState, SrtpKeys};
use sluice_core::table::{Codec, Delta, KeyMaterial, LayerSpec, LegSpec, MediaKind, Op, PayloadSpec, SubscriptionSpec, TrackSpec};
use sluice_core::time::Instant;
use sluice_core::wire::rtcp;
use sluice_dataplane::control::{Client, Request, Response};
use sluice_dataplane::io::{Backend, BackendKind, IoConfig, SendRegistry, Transmit};

/// Payload bytes after the 12-byte RTP header, so the RTP packet is 1200 bytes.
const PAYLOAD: usize = 1188;
const BASE_PORT: u16 = 31_000;
const PUBLISHER_SSRC: u32 = 0x5000;
/// Where the daemon under test serves its metrics (read for batch sizes and I/O counters).
const METRICS_PORT: u16 = 39_311;

/// One I/O counter of the daemon under test.
fn scrape_io(counter: &str) -> f64 {
    use std::io::{Read as _, Write as _};
    let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", METRICS_PORT)) else { return 0.0 };
    let _ = c.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n");
    let mut body = String::new();
    let _ = c.read_to_string(&mut body);
    let key = format!("counter=\"{counter}\"}}");
    body.lines().filter(|l| l.starts_with("sluice_io_total") && l.contains(&key)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

/// Sums a Prometheus counter over all label sets from the daemon under test.
fn scrape(name: &str) -> Option<f64> {
    use std::io::{Read as _, Write as _};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", METRICS_PORT)).ok()?;
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n").ok()?;
    let mut body = String::new();
    c.read_to_string(&mut body).ok()?;
    Some(
        body.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

/// One measured configuration.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Sample {
    /// `uring`, `mmsg` or `naive`.
    pub backend: String,
    /// Subscribers per published packet.
    pub fanout: u32,
    /// Packets the generator offered per second.
    pub offered_pps: f64,
    /// Packets the forwarder sent per second.
    pub out_pps: f64,
    /// Packets the sink received per second.
    pub sink_pps: f64,
    /// Forwarder CPU seconds per wall second (1.0 = one core busy).
    pub cpu: f64,
    /// Packets out per CPU-second of the forwarder.
    pub out_per_cpu_s: f64,
    /// Mean datagrams per receive batch (daemon backends).
    pub mean_rx_batch: f64,
    /// Datagrams per send syscall (daemon backends): GSO and sendmmsg batching.
    pub tx_per_syscall: f64,
}

/// Latency at half the maximum rate.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Latency {
    /// Backend.
    pub backend: String,
    /// Fan-out.
    pub fanout: u32,
    /// Offered packets/s.
    pub offered_pps: f64,
    /// One-way latency percentiles, microseconds.
    pub p50_us: f64,
    /// p99.
    pub p99_us: f64,
    /// p99.9.
    pub p999_us: f64,
    /// Samples.
    pub samples: u64,
}

fn material(profile: Profile, seed: u8) -> KeyMaterial {
    KeyMaterial { profile, key: vec![seed; profile.key_len()], salt: vec![seed.wrapping_mul(3); profile.salt_len()] }
}

/// The table: leg 1 publishes one video layer, legs 2..=N+1 subscribe.
fn ops(profile: Profile, fanout: u32) -> Vec<Op> {
    let mut ops = Vec::new();
    for l in 1..=fanout + 1 {
        ops.push(Op::UpsertLeg(LegSpec {
            id: LegId(l),
            local_port: BASE_PORT + l as u16,
            remote: None,
            rx: material(profile, l as u8),
            tx: material(profile, 100 + l as u8),
            feedback_ssrc: Ssrc(0xfeed0000 + l),
            edge: None,
        }));
    }
    ops.push(Op::UpsertTrack(TrackSpec {
        id: TrackId(1),
        publisher: LegId(1),
        kind: MediaKind::Video,
        clock_rate: 90_000,
        layers: vec![LayerSpec { ssrc: Some(Ssrc(PUBLISHER_SSRC)), rtx_ssrc: None, rid: None }],
        payload_types: vec![PayloadSpec { pt: Pt(96), codec: Codec::Vp8, rtx_pt: None }],
        rid_ext: None,
        repaired_rid_ext: None,
    }));
    for l in 2..=fanout + 1 {
        ops.push(Op::UpsertSubscription(SubscriptionSpec {
            subscriber: LegId(l),
            track: TrackId(1),
            out_ssrc: Ssrc(0x9000 + l),
            out_rtx_ssrc: None,
            pt_map: vec![(Pt(96), Pt(96))],
            ext_map: vec![],
            target_layer: 0,
            paused: false,
        }));
    }
    ops
}

/// Where the forwarder under test runs.
enum Forwarder {
    Daemon { child: Child, control: Client, socket: PathBuf },
    Naive { stop: Arc<AtomicBool>, out: Arc<AtomicU64>, cpu_ns: Arc<AtomicU64>, thread: Option<std::thread::JoinHandle<()>> },
}

impl Forwarder {
    fn start(backend: &str, profile: Profile, fanout: u32, core: usize, dir: &Path) -> anyhow::Result<Self> {
        let delta = Delta { generation: Generation(1), replace_all: false, ops: ops(profile, fanout) };
        if backend == "naive" {
            return Ok(Self::naive(delta, fanout, core));
        }
        let socket = dir.join(format!("bench-{}.sock", std::process::id()));
        let cfg = dir.join(format!("bench-{}.toml", std::process::id()));
        std::fs::write(
            &cfg,
            format!(
                "[dataplane]\nlisten_ip = \"127.0.0.1\"\nworkers = 1\ncores = [{core}]\nbackend = \"{backend}\"\nbatch = 64\ncontrol_socket = \"{}\"\nmetrics = \"127.0.0.1:{METRICS_PORT}\"\n",
                socket.display()
            ),
        )?;
        let exe = std::env::current_exe()?.with_file_name("sluice-dataplane");
        let child = Command::new(&exe)
            .args(["--config", cfg.to_str().unwrap_or_default()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let end = WallInstant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if WallInstant::now() > end {
                bail!("{} did not open its control socket", exe.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut control = Client::connect(&socket)?;
        match control.call(&Request::Apply(delta))? {
            Response::Applied(_) => {}
            other => bail!("dataplane refused the bench tables: {other:?}"),
        }
        Ok(Self::Daemon { child, control, socket })
    }

    /// The same core, one syscall per datagram: recv_from the publisher port, send_to per copy.
    fn naive(delta: Delta, fanout: u32, core: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let out_count = Arc::new(AtomicU64::new(0));
        let cpu_ns = Arc::new(AtomicU64::new(0));
        let (s, o, c) = (stop.clone(), out_count.clone(), cpu_ns.clone());
        // Bound before returning, so the subscribers' hellos find their ports.
        let sockets: Vec<UdpSocket> = (1..=fanout + 1)
            .map(|l| UdpSocket::bind(("127.0.0.1", BASE_PORT + l as u16)).expect("bench port free"))
            .collect();
        let thread = std::thread::spawn(move || {
            if let Some(id) = core_affinity::get_core_ids().and_then(|ids| ids.into_iter().find(|i| i.id == core)) {
                core_affinity::set_for_current(id);
            }
            let mut fwd = Core::new(CoreConfig::default());
            fwd.apply(delta).expect("bench tables are valid");
            for s in &sockets {
                s.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
            }
            let cpu0 = thread_cpu_ns();
            let mut out = OutBatch::new(64);
            let mut buf = [0u8; 2048];
            let epoch = WallInstant::now();
            let handle = |fwd: &mut Core, out: &mut OutBatch, i: usize, buf: &mut [u8], n: usize, src: SocketAddr| {
                out.clear();
                let now = Instant::from_nanos(epoch.elapsed().as_nanos() as u64);
                fwd.handle_rx(now, BASE_PORT + 1 + i as u16, src, &mut buf[..n], out);
                for (m, bytes) in out.iter() {
                    let from = &sockets[usize::from(m.local_port - BASE_PORT - 1)];
                    if from.send_to(bytes, m.dst).is_ok() {
                        o.fetch_add(1, Ordering::Relaxed);
                    }
                }
            };
            // The subscribers' hellos first (each teaches the core a subscriber's address)...
            for (i, sock) in sockets.iter().enumerate().skip(1) {
                sock.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
                if let Ok((n, src)) = sock.recv_from(&mut buf) {
                    handle(&mut fwd, &mut out, i, &mut buf, n, src);
                }
            }
            // ... then one datagram per recv_from, one per send_to, from the publisher's port.
            while !s.load(Ordering::Relaxed) {
                if let Ok((n, src)) = sockets[0].recv_from(&mut buf) {
                    handle(&mut fwd, &mut out, 0, &mut buf, n, src);
                }
                c.store(thread_cpu_ns() - cpu0, Ordering::Relaxed);
            }
        });
        Self::Naive { stop, out: out_count, cpu_ns, thread: Some(thread) }
    }

    /// (packets sent so far, CPU ns used so far).
    fn counters(&mut self) -> anyhow::Result<(u64, u64)> {
        match self {
            Self::Daemon { child, control, .. } => {
                let out = match control.call(&Request::Stats)? {
                    Response::Stats(s) => s.iter().map(|c| c.tx_packets).sum(),
                    other => bail!("stats: {other:?}"),
                };
                Ok((out, process_cpu_ns(child.id())?))
            }
            Self::Naive { out, cpu_ns, .. } => Ok((out.load(Ordering::Relaxed), cpu_ns.load(Ordering::Relaxed))),
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        match self {
            Self::Daemon { child, socket, .. } => {
                // SAFETY: kill(2) on the PID of the child this bench spawned and has not reaped.
                unsafe {
                    libc::kill(child.id() as i32, libc::SIGTERM);
                }
                let _ = child.wait();
                let _ = std::fs::remove_file(socket);
            }
            Self::Naive { stop, thread, .. } => {
                stop.store(true, Ordering::Relaxed);
                if let Some(t) = thread.take() {
                    let _ = t.join();
                }
            }
        }
    }
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into the valid local we pass.
    unsafe {
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// utime + stime of a process, from /proc (clock ticks → ns).
fn process_cpu_ns(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').map(|(_, r)| r).context("stat format")?;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11).context("utime")?.parse::<u64>()? + f.get(12).context("stime")?.parse::<u64>()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(ticks * 1_000_000_000 / hz)
}

/// The publisher: protects packets on the fly (so sequence numbers never repeat) and sends them
/// in sendmmsg batches through the same batched I/O the dataplane uses.
struct Generator {
    io: Backend,
    port: u16,
    keys: SrtpKeys,
    state: RtpSendState,
    seq: u16,
    bufs: Vec<Vec<u8>>,
    epoch: WallInstant,
}

impl Generator {
    fn new(profile: Profile, epoch: WallInstant) -> anyhow::Result<Self> {
        let mut io = Backend::new(BackendKind::Mmsg, IoConfig { local_ip: [127, 0, 0, 1].into(), gso: false, ..IoConfig::default() }, SendRegistry::new())?;
        let port = io.add_port(0)?;
        let m = material(profile, 1);
        Ok(Self {
            io,
            port,
            keys: SrtpKeys::new(profile, &m.key, &m.salt)?,
            state: RtpSendState::new(),
            seq: 0,
            bufs: (0..64).map(|_| vec![0u8; 1300]).collect(),
            epoch,
        })
    }

    /// Sends `n` (≤ 64) packets to `dst`; the first 8 payload bytes carry the send time.
    fn send(&mut self, dst: SocketAddr, n: usize) -> usize {
        let now = self.epoch.elapsed().as_nanos() as u64;
        let mut lens = [0usize; 64];
        for (i, b) in self.bufs.iter_mut().take(n).enumerate() {
            self.seq = self.seq.wrapping_add(1);
            b[..12].copy_from_slice(&[0x80, 96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            b[2..4].copy_from_slice(&self.seq.to_be_bytes());
            b[4..8].copy_from_slice(&((now / 11_111) as u32).to_be_bytes());
            b[8..12].copy_from_slice(&PUBLISHER_SSRC.to_be_bytes());
            b[12] = 0x10; // VP8 descriptor: start of partition 0 ...
            b[13] = 0x00; // ... keyframe, so the subscription starts at once
            b[14..22].copy_from_slice(&now.to_be_bytes());
            lens[i] = self.keys.protect_rtp(&mut self.state, b, 12 + PAYLOAD).unwrap_or(0);
        }
        let port = self.port;
        self.io.send_batch(self.bufs.iter().zip(&lens).take(n).map(|(b, &l)| Transmit { local_port: port, dst, payload: &b[..l] }))
    }
}

/// The subscribers' side: counts what arrives, and (when asked) decrypts to read send times.
struct Sink {
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<Histogram<u64>>>,
}

impl Sink {
    fn start(profile: Profile, fanout: u32, epoch: WallInstant, measure: bool, core: usize) -> anyhow::Result<(Self, Vec<u16>)> {
        let mut io = Backend::new(BackendKind::Mmsg, IoConfig { local_ip: [127, 0, 0, 1].into(), ..IoConfig::default() }, SendRegistry::new())?;
        let ports: Vec<u16> = (0..fanout).map(|_| io.add_port(0)).collect::<Result<_, _>>()?;
        // Hello from each subscriber so the forwarder learns its address.
        let mut hellos = Vec::new();
        for (k, _) in ports.iter().enumerate() {
            let m = material(profile, 100 + (k + 2) as u8);
            let up = material(profile, (k + 2) as u8);
            let up_keys = SrtpKeys::new(profile, &up.key, &up.salt)?;
            let mut b = vec![0u8; 64];
            let n = rtcp::write_rr(&mut b, Ssrc(k as u32 + 2), &[]).map_err(|e| anyhow::anyhow!("{e}"))?;
            let n = up_keys.protect_rtcp(&mut RtcpSendState::new(), &mut b, n).map_err(|e| anyhow::anyhow!("{e:?}"))?;
            b.truncate(n);
            hellos.push((ports[k], SocketAddr::from(([127, 0, 0, 1], BASE_PORT + 2 + k as u16)), b, m));
        }
        io.send_batch(hellos.iter().map(|(p, dst, b, _)| Transmit { local_port: *p, dst: *dst, payload: b }));
        let keys: Vec<(u16, SrtpKeys)> =
            hellos.iter().map(|(p, _, _, m)| (*p, SrtpKeys::new(profile, &m.key, &m.salt).expect("valid"))).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let (s, r) = (stop.clone(), received.clone());
        let thread = std::thread::spawn(move || {
            if let Some(id) = core_affinity::get_core_ids().and_then(|ids| ids.into_iter().find(|i| i.id == core)) {
                core_affinity::set_for_current(id);
            }
            let mut hist = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).expect("bounds");
            let mut states: Vec<RtpRecvState> = keys.iter().map(|_| RtpRecvState::new(1024)).collect();
            while !s.load(Ordering::Relaxed) {
                let _ = io.recv_batch(Some(Duration::from_millis(20)), |port, _src, buf| {
                    r.fetch_add(1, Ordering::Relaxed);
                    if !measure {
                        return;
                    }
                    let Some(k) = keys.iter().position(|(p, _)| *p == port) else { return };
                    let len = buf.len();
                    if let Ok(n) = keys[k].1.unprotect_rtp(&mut states[k], buf, len)
                        && n >= 22
                    {
                        let sent = u64::from_be_bytes(buf[14..22].try_into().unwrap_or_default());
                        let now = epoch.elapsed().as_nanos() as u64;
                        let _ = hist.record(now.saturating_sub(sent).max(1));
                    }
                });
            }
            hist
        });
        Ok((Self { stop, received, thread: Some(thread) }, ports))
    }

    fn finish(mut self) -> Histogram<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or_else(|| Histogram::new(3).expect("histogram"))
    }
}

/// Runs one backend at one fan-out: open loop at `rate` packets/s in (0 = as fast as possible).
fn run_one(backend: &str, profile: Profile, fanout: u32, seconds: f64, rate: f64, measure: bool) -> anyhow::Result<(Sample, Histogram<u64>)> {
    let epoch = WallInstant::now();
    let dir = std::env::temp_dir();
    let mut fwd = Forwarder::start(backend, profile, fanout, 1, &dir)?;
    let (sink, _ports) = Sink::start(profile, fanout, epoch, measure, 0)?;
    let mut generator = Generator::new(profile, epoch)?;
    let dst = SocketAddr::from(([127, 0, 0, 1], BASE_PORT + 1));
    // Warm up: the subscriptions start on the first keyframe; give the hellos time to land.
    std::thread::sleep(Duration::from_millis(200));
    generator.send(dst, 8);
    std::thread::sleep(Duration::from_millis(100));
    let (out0, cpu0) = fwd.counters()?;
    let recv0 = sink.received.load(Ordering::Relaxed);
    let t0 = WallInstant::now();
    let mut sent = 0u64;
    let burst = if rate > 0.0 { 8 } else { 32 };
    while t0.elapsed().as_secs_f64() < seconds {
        if rate > 0.0 {
            let due = (t0.elapsed().as_secs_f64() * rate) as u64;
            if sent >= due {
                // Ahead of schedule: sleep rather than spin, the sink shares this core.
                std::thread::sleep(Duration::from_micros(100));
                continue;
            }
        }
        sent += generator.send(dst, burst) as u64;
    }
    let wall = t0.elapsed().as_secs_f64();
    let (out1, cpu1) = fwd.counters()?;
    let (batches, batched) = (scrape("sluice_rx_batches_total").unwrap_or(0.0), scrape("sluice_rx_batched_datagrams_total").unwrap_or(0.0));
    let syscalls = scrape_io("syscalls");
    let tx = scrape_io("tx_datagrams");
    std::thread::sleep(Duration::from_millis(100));
    let recv1 = sink.received.load(Ordering::Relaxed);
    let hist = sink.finish();
    drop(fwd);
    let cpu = (cpu1 - cpu0) as f64 / 1e9;
    let out = (out1 - out0) as f64;
    Ok((
        Sample {
            backend: backend.into(),
            fanout,
            offered_pps: sent as f64 / wall,
            out_pps: out / wall,
            sink_pps: (recv1 - recv0) as f64 / wall,
            cpu: cpu / wall,
            out_per_cpu_s: if cpu > 0.0 { out / cpu } else { 0.0 },
            mean_rx_batch: if batches > 0.0 { batched / batches } else { 0.0 },
            tx_per_syscall: if syscalls > 0.0 { (batched + tx) / syscalls } else { 0.0 },
        },
        hist,
    ))
}

/// Runs the whole comparison and prints it; returns the samples and latencies.
pub fn run(backends: &[String], fanouts: &[u32], profile: Profile, seconds: f64) -> anyhow::Result<(Vec<Sample>, Vec<Latency>)> {
    let mut samples = Vec::new();
    println!("forwarding benchmark: {profile:?}, 1200-byte RTP, 1 publisher → N subscribers, one pinned worker (core 1), generator and sink on core 0");
    println!(
        "{:<7} {:>6} {:>12} {:>12} {:>12} {:>8} {:>14} {:>9} {:>12}",
        "backend", "fanout", "offered/s", "out pkt/s", "sink pkt/s", "cpu", "out/cpu-s", "rx batch", "pkts/syscall"
    );
    for &fanout in fanouts {
        for b in backends {
            let (s, _) = run_one(b, profile, fanout, seconds, 0.0, false)?;
            println!(
                "{:<7} {:>6} {:>12.0} {:>12.0} {:>12.0} {:>7.0}% {:>14.0} {:>9.1} {:>12.1}",
                s.backend, s.fanout, s.offered_pps, s.out_pps, s.sink_pps, s.cpu * 100.0, s.out_per_cpu_s, s.mean_rx_batch, s.tx_per_syscall
            );
            samples.push(s);
        }
    }
    let mut latencies = Vec::new();
    println!("\none-way latency (generator → forwarder → sink, loopback) at 50% of each backend's maximum, fan-out 4");
    println!("{:<7} {:>12} {:>10} {:>10} {:>10} {:>9}", "backend", "offered/s", "p50 µs", "p99 µs", "p99.9 µs", "samples");
    for b in backends {
        let Some(max) = samples.iter().find(|s| &s.backend == b && s.fanout == 4) else { continue };
        let rate = max.out_pps / 4.0 / 2.0;
        let (_, h) = run_one(b, profile, 4, seconds, rate, true)?;
        let l = Latency {
            backend: b.clone(),
            fanout: 4,
            offered_pps: rate,
            p50_us: h.value_at_quantile(0.5) as f64 / 1e3,
            p99_us: h.value_at_quantile(0.99) as f64 / 1e3,
            p999_us: h.value_at_quantile(0.999) as f64 / 1e3,
            samples: h.len(),
        };
        println!("{:<7} {:>12.0} {:>10.1} {:>10.1} {:>10.1} {:>9}", l.backend, l.offered_pps, l.p50_us, l.p99_us, l.p999_us, l.samples);
        latencies.push(l);
    }
    Ok((samples, latencies))
}
