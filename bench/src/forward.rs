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
use sluice_core::srtp::{Profile, RtpRecvState, RtpSendState, SrtpKeys};
use sluice_core::table::{Codec, Delta, KeyMaterial, LayerSpec, LegSpec, MediaKind, Op, PayloadSpec, SubscriptionSpec, TrackSpec};
use sluice_core::time::Instant;
use sluice_dataplane::control::{Client, Request, Response};
use sluice_dataplane::io::{Backend, BackendKind, IoConfig, SendRegistry, Transmit};
use sluice_dataplane::xdp::XdpStage;

use crate::netns::{NetNs, Veth};

/// Payload bytes after the 12-byte RTP header, so the RTP packet is 1200 bytes.
const PAYLOAD: usize = 1188;
/// The forwarder's leg ports (publisher at +1, subscribers after it).
pub(crate) const BASE_PORT: u16 = 31_000;

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
        // The latency floor: the same path through the kernel's own IP forwarding in ns fwd.
        forwarder.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
        generator.ip(&["route", "add", "10.77.2.0/24", "via", "10.77.1.1"]);
        sink.ip(&["route", "add", "10.77.1.0/24", "via", "10.77.2.1"]);
        Self { generator, forwarder, sink, sink_if: out.b }
    }
}
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

/// One I/O counter of the daemon under test.
/// The daemon's Prometheus text (its metrics listen on loopback inside the forwarder's namespace).
fn metrics_text(topo: &Topology) -> String {
    use std::io::{Read as _, Write as _};
    topo.forwarder
        .enter(|| {
            let mut c = std::net::TcpStream::connect(("127.0.0.1", METRICS_PORT))?;
            c.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")?;
            let mut body = String::new();
            c.read_to_string(&mut body)?;
            Ok::<_, std::io::Error>(body)
        })
        .unwrap_or_default()
}

/// One I/O counter of the daemon under test, summed over workers.
fn io_counter(body: &str, counter: &str) -> f64 {
    let key = format!("counter=\"{counter}\"}}");
    body.lines().filter(|l| l.starts_with("sluice_io_total") && l.contains(&key)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

/// A Prometheus counter summed over all label sets.
fn counter(body: &str, name: &str) -> f64 {
    body.lines().filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' '])).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

/// One measured configuration.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Sample {
    /// `uring`, `mmsg` or `naive`.
    pub backend: String,
    /// The SRTP profile.
    pub profile: String,
    /// Whether the forwarder used UDP GSO.
    pub gso: bool,
    /// Subscribers per published packet.
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

/// Latency at half the maximum rate.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Latency {
    /// Backend.
    pub backend: String,
    /// The SRTP profile.
    pub profile: String,
    /// Whether the forwarder used UDP GSO.
    pub gso: bool,
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

/// The table: leg 1 publishes [`STREAMS`] video tracks, legs 2..=N+1 subscribe to all;
/// subscribers are where the sink listens, the publisher is latched from its packets.
fn ops(profile: Profile, fanout: u32) -> Vec<Op> {
    streams_ops(profile, fanout, STREAMS, BASE_PORT, |l| (l > 1).then(|| SocketAddr::from((SINK_IP, SINK_PORT + l as u16))))
}

/// One publisher (leg 1, port `base_port + 1`, SSRC 0x5000, VP8 on PT 96) and `fanout`
/// subscribers (legs 2..=N+1 on the following ports, out-SSRC 0x9000 + leg) at `remote(leg)`.
pub fn fanout_ops(profile: Profile, fanout: u32, base_port: u16, remote: impl Fn(u32) -> Option<SocketAddr>) -> Vec<Op> {
    streams_ops(profile, fanout, 1, base_port, remote)
}

/// Packet `seq` of the [`fanout_ops`] publisher, `rtp_len` bytes before protection with `keys`:
/// a VP8 keyframe start, so every subscription forwards from the first one it gets.
pub fn publisher_keyframe(keys: &SrtpKeys, state: &mut RtpSendState, seq: u16, rtp_len: usize) -> Vec<u8> {
    let mut p = vec![0x80, 96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0x00];
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[8..12].copy_from_slice(&PUBLISHER_SSRC.to_be_bytes());
    p.resize(rtp_len, 0xa5);
    p.resize(rtp_len + 16, 0);
    let n = keys.protect_rtp(state, &mut p, rtp_len).expect("room for the tag");
    p.truncate(n);
    p
}

/// Like [`fanout_ops`] with `streams` tracks (SSRC 0x5000 + i, track i + 1), every subscriber on
/// every track (out-SSRC 0x9000 + leg + (i << 16)).
pub(crate) fn streams_ops(profile: Profile, fanout: u32, streams: u32, base_port: u16, remote: impl Fn(u32) -> Option<SocketAddr>) -> Vec<Op> {
    let mut ops = Vec::new();
    for l in 1..=fanout + 1 {
        // Leg `l` receives with seed `l` and sends with seed `100 + l`.
        let (rx, tx) = (KeyMaterial::seeded(profile, l), KeyMaterial::seeded(profile, 100 + l));
        ops.push(Op::UpsertLeg(LegSpec { remote: remote(l), ..LegSpec::new(LegId(l), base_port + l as u16, rx, tx, Ssrc(0xfeed0000 + l)) }));
    }
    for i in 0..streams {
        ops.push(Op::UpsertTrack(TrackSpec {
            id: TrackId(i + 1),
            publisher: LegId(1),
            kind: MediaKind::Video,
            clock_rate: 90_000,
            layers: vec![LayerSpec { ssrc: Some(Ssrc(PUBLISHER_SSRC + i)), rtx_ssrc: None, rid: None }],
            payload_types: vec![PayloadSpec { pt: Pt(96), codec: Codec::Vp8, rtx_pt: None }],
            rid_ext: None,
            repaired_rid_ext: None,
            mid: None,
            audio_level_ext: None,
            speaker_group: None,
        }));
        for l in 2..=fanout + 1 {
            ops.push(Op::UpsertSubscription(SubscriptionSpec {
                subscriber: LegId(l),
                track: TrackId(i + 1),
                out_ssrc: Ssrc(0x9000 + l + (i << 16)),
                out_rtx_ssrc: None,
                pt_map: vec![(Pt(96), Pt(96))],
                ext_map: vec![],
                target_layer: 0,
                paused: false,
                priority: 0,
            }));
        }
    }
    ops
}

/// Where the forwarder under test runs.
enum Forwarder {
    Daemon { child: Child, control: Client, socket: PathBuf },
    Naive { stop: Arc<AtomicBool>, out: Arc<AtomicU64>, cpu_ns: Arc<AtomicU64>, thread: Option<std::thread::JoinHandle<()>> },
}

/// A backend as the bench takes it: `naive`, `mmsg` or `uring`, optionally with `-nogso` (one
/// datagram per send) and/or `-nogro` (one datagram per receive): (kind, gso, gro).
fn parse_backend(name: &str) -> anyhow::Result<(&str, bool, bool)> {
    let mut kind = name;
    let (mut gso, mut gro) = (true, true);
    loop {
        if let Some(k) = kind.strip_suffix("-nogso") {
            (kind, gso) = (k, false);
        } else if let Some(k) = kind.strip_suffix("-nogro") {
            (kind, gro) = (k, false);
        } else {
            break;
        }
    }
    match kind {
        "naive" => Ok((kind, false, false)),
        "mmsg" | "uring" => Ok((kind, gso, gro)),
        _ => bail!("unknown backend {name:?}: naive, mmsg or uring, with -nogso and/or -nogro"),
    }
}

impl Forwarder {
    fn start(topo: &Topology, name: &str, profile: Profile, fanout: u32, core: usize, dir: &Path) -> anyhow::Result<Self> {
        let (backend, gso, gro) = parse_backend(name)?;
        let delta = Delta { generation: Generation(1), replace_all: false, ops: ops(profile, fanout) };
        if backend == "naive" {
            return Self::naive(topo, delta, fanout, core);
        }
        let socket = dir.join(format!("bench-{}.sock", std::process::id()));
        let cfg = dir.join(format!("bench-{}.toml", std::process::id()));
        let [a, b, c, d] = FORWARDER_IP;
        std::fs::write(
            &cfg,
            format!(
                "[dataplane]\nlisten_ip = \"{a}.{b}.{c}.{d}\"\nworkers = 1\ncores = [{core}]\nbackend = \"{backend}\"\nbatch = 64\ngso = {gso}\ngro = {gro}\ncontrol_socket = \"{}\"\nmetrics = \"127.0.0.1:{METRICS_PORT}\"\n",
                socket.display()
            ),
        )?;
        let exe = std::env::current_exe()?.with_file_name("sluice-dataplane");
        // `ip netns exec` enters the namespace and execs the daemon: the child's PID is the daemon's.
        let child = Command::new("ip")
            .args(["netns", "exec", &topo.forwarder.name])
            .arg(&exe)
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
    fn naive(topo: &Topology, delta: Delta, fanout: u32, core: usize) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let out_count = Arc::new(AtomicU64::new(0));
        let cpu_ns = Arc::new(AtomicU64::new(0));
        let (s, o, c) = (stop.clone(), out_count.clone(), cpu_ns.clone());
        // Bound in the forwarder's namespace before returning, so nothing sent early is lost.
        let sockets: Vec<UdpSocket> = topo.forwarder.enter(|| {
            (1..=fanout + 1)
                .map(|l| UdpSocket::bind(SocketAddr::from((FORWARDER_IP, BASE_PORT + l as u16))).context("bench port"))
                .collect::<anyhow::Result<Vec<_>>>()
        })?;
        let thread = std::thread::spawn(move || {
            if let Some(id) = core_affinity::get_core_ids().and_then(|ids| ids.into_iter().find(|i| i.id == core)) {
                core_affinity::set_for_current(id);
            }
            let mut fwd = Core::new(CoreConfig::default());
            fwd.apply(delta).expect("bench tables are valid");
            sockets[0].set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
            // The daemon's socket buffers (its `socket_buffer_bytes` default), so bursts fit alike.
            let size: libc::c_int = 4 << 20;
            // SAFETY: setsockopt reads one c_int from the valid reference passed; the fd is open.
            unsafe {
                use std::os::fd::AsRawFd as _;
                libc::setsockopt(
                    sockets[0].as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUF,
                    (&raw const size).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            let cpu0 = thread_cpu_ns();
            let mut out = OutBatch::new(64);
            let mut buf = [0u8; 2048];
            let epoch = WallInstant::now();
            while !s.load(Ordering::Relaxed) {
                if let Ok((n, src)) = sockets[0].recv_from(&mut buf) {
                    out.clear();
                    let now = Instant::from_nanos(epoch.elapsed().as_nanos() as u64);
                    fwd.handle_rx(now, BASE_PORT + 1, src, &mut buf[..n], &mut out);
                    for (m, bytes) in out.iter() {
                        let from = &sockets[usize::from(m.local_port - BASE_PORT - 1)];
                        if from.send_to(bytes, m.dst).is_ok() {
                            o.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                c.store(thread_cpu_ns() - cpu0, Ordering::Relaxed);
            }
        });
        Ok(Self::Naive { stop, out: out_count, cpu_ns, thread: Some(thread) })
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

/// CLOCK_REALTIME in nanoseconds (the clock of the kernel's receive timestamps).
fn realtime_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into the valid local we pass.
    unsafe {
        libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts);
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The `SCM_TIMESTAMPNS` of a received message, in CLOCK_REALTIME nanoseconds.
fn kernel_stamp(hdr: &libc::msghdr) -> Option<u64> {
    // SAFETY: the CMSG macros walk the control buffer the kernel filled, within
    // `msg_controllen`; the timestamp is read unaligned from inside that buffer.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(hdr);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                return Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
            }
            c = libc::CMSG_NXTHDR(hdr, c);
        }
    }
    None
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
pub(crate) fn process_cpu_ns(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').map(|(_, r)| r).context("stat format")?;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11).context("utime")?.parse::<u64>()? + f.get(12).context("stime")?.parse::<u64>()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(ticks * 1_000_000_000 / hz)
}

/// The publisher: protects packets on the fly (so sequence numbers never repeat) and sends them
/// in bursts through the same batched I/O the dataplane uses (one GSO send per burst).
pub(crate) struct Generator {
    io: Backend,
    port: u16,
    keys: SrtpKeys,
    /// Per stream: send state and last sequence number; packets go round-robin.
    streams: Vec<(RtpSendState, u16)>,
    next: usize,
    bufs: Vec<Vec<u8>>,
    epoch: WallInstant,
}

impl Generator {
    /// A publisher on `ip`, in the calling thread's network namespace.
    pub(crate) fn new(profile: Profile, epoch: WallInstant, ip: std::net::IpAddr) -> anyhow::Result<Self> {
        let mut io = Backend::new(BackendKind::Mmsg, IoConfig { local_ip: ip, gso: true, ..IoConfig::default() }, SendRegistry::new())?;
        let port = io.add_port(0)?;
        let m = KeyMaterial::seeded(profile, 1);
        Ok(Self {
            io,
            port,
            keys: SrtpKeys::new(profile, &m.key, &m.salt)?,
            streams: vec![(RtpSendState::new(), 0)],
            next: 0,
            bufs: (0..64).map(|_| vec![0u8; 1300]).collect(),
            epoch,
        })
    }

    /// Spreads the packets over `n` streams (SSRC 0x5000..), as [`STREAMS`] explains.
    pub(crate) fn with_streams(mut self, n: u32) -> Self {
        self.streams = (0..n.max(1)).map(|_| (RtpSendState::new(), 0)).collect();
        self
    }

    /// Sends `n` (≤ 64) packets to `dst`; the first 8 payload bytes carry the send time.
    pub(crate) fn send(&mut self, dst: SocketAddr, n: usize) -> usize {
        let now = self.epoch.elapsed().as_nanos() as u64;
        let mut lens = [0usize; 64];
        for (i, b) in self.bufs.iter_mut().take(n).enumerate() {
            let k = self.next;
            self.next = (self.next + 1) % self.streams.len();
            let (state, seq) = &mut self.streams[k];
            *seq = seq.wrapping_add(1);
            b[..12].copy_from_slice(&[0x80, 96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            b[2..4].copy_from_slice(&seq.to_be_bytes());
            b[4..8].copy_from_slice(&((now / 11_111) as u32).to_be_bytes());
            b[8..12].copy_from_slice(&(PUBLISHER_SSRC + k as u32).to_be_bytes());
            b[12] = 0x10; // VP8 descriptor: start of partition 0 ...
            b[13] = 0x00; // ... keyframe, so the subscription starts at once
            b[14..22].copy_from_slice(&now.to_be_bytes());
            lens[i] = self.keys.protect_rtp(state, b, 12 + PAYLOAD).unwrap_or(0);
        }
        let port = self.port;
        self.io.send_batch(self.bufs.iter().zip(&lens).take(n).map(|(b, &l)| Transmit { local_port: port, dst, payload: &b[..l] }))
    }

    /// Sends for `seconds` at `rate` packets/s (0: as fast as it can) from a thread pinned to
    /// `core` in the namespace `ns`, from `ip` to `dst`.
    /// Returns (packets sent in the timed part, packets sent in all, CPU seconds of the timed part).
    #[expect(clippy::too_many_arguments, reason = "one load's whole description")]
    pub(crate) fn spawn_in(
        ns: String,
        ip: std::net::IpAddr,
        profile: Profile,
        epoch: WallInstant,
        core: usize,
        seconds: f64,
        rate: f64,
        dst: SocketAddr,
    ) -> std::thread::JoinHandle<anyhow::Result<(u64, u64, f64)>> {
        std::thread::spawn(move || {
            crate::netns::join_thread(&ns).with_context(|| format!("entering {ns}"))?;
            if let Some(id) = core_affinity::get_core_ids().and_then(|ids| ids.into_iter().find(|i| i.id == core)) {
                core_affinity::set_for_current(id);
            }
            let mut g = Generator::new(profile, epoch, ip)?.with_streams(STREAMS);
            // The subscriptions start at the first keyframe; every packet is one.
            let warmup = g.send(dst, 8) as u64;
            std::thread::sleep(Duration::from_millis(100));
            let (t0, cpu0) = (WallInstant::now(), thread_cpu_ns());
            let burst = if rate > 0.0 { 8 } else { 32 };
            let mut sent = 0u64;
            while t0.elapsed().as_secs_f64() < seconds {
                if rate > 0.0 && sent as f64 >= t0.elapsed().as_secs_f64() * rate {
                    std::thread::sleep(Duration::from_micros(50));
                    continue;
                }
                sent += g.send(dst, burst) as u64;
            }
            Ok((sent, sent + warmup, (thread_cpu_ns() - cpu0) as f64 / 1e9))
        })
    }
}

/// What the subscribers receive: counted by an XDP program on the sink's interface (it drops
/// every copy after counting it, so the sink is never the bottleneck), or, for latency, received
/// and decrypted by a userspace thread that reads each packet's send time.
enum Sink {
    Xdp(XdpStage),
    Userspace { stop: Arc<AtomicBool>, received: Arc<AtomicU64>, thread: Option<std::thread::JoinHandle<Histogram<u64>>> },
}

impl Sink {
    fn xdp(topo: &Topology, fanout: u32) -> anyhow::Result<Self> {
        let iface = topo.sink_if.clone();
        let stage = topo.sink.enter(move || {
            let mut stage = XdpStage::load_unpinned()?;
            stage.attach(&iface)?;
            // No leg is known: every datagram to the subscribers' ports is counted and dropped.
            stage.set_port_range(SINK_PORT..=SINK_PORT + fanout as u16 + 1)?;
            Ok::<_, anyhow::Error>(stage)
        })?;
        Ok(Self::Xdp(stage))
    }

    /// Receives in userspace and records one-way latency: the send time the generator wrote
    /// into the payload against the kernel's receive timestamp of the datagram (`SO_TIMESTAMPNS`,
    /// taken in the sink's NAPI thread), so the sink thread's own wake-ups are not measured.
    /// `subscribers`: (port, key seed) of each receiving subscriber.
    fn userspace(topo: &Topology, profile: Profile, subscribers: Vec<(u16, u8)>, epoch: WallInstant, core: usize) -> anyhow::Result<Self> {
        use std::os::fd::AsRawFd as _;
        let sockets: Vec<(u16, UdpSocket)> = topo.sink.enter(|| {
            subscribers
                .iter()
                .map(|&(port, _)| {
                    let sock = UdpSocket::bind(SocketAddr::from((SINK_IP, port)))?;
                    sock.set_nonblocking(true)?;
                    let one: libc::c_int = 1;
                    let size: libc::c_int = 4 << 20;
                    for (opt, v) in [(libc::SO_TIMESTAMPNS, &one), (libc::SO_RCVBUF, &size)] {
                        // SAFETY: setsockopt reads one c_int from the valid reference passed.
                        let rc = unsafe {
                            libc::setsockopt(
                                sock.as_raw_fd(),
                                libc::SOL_SOCKET,
                                opt,
                                (v as *const libc::c_int).cast(),
                                size_of::<libc::c_int>() as libc::socklen_t,
                            )
                        };
                        if rc != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok((port, sock))
                })
                .collect::<std::io::Result<Vec<_>>>()
        })?;
        let keys: Vec<SrtpKeys> = subscribers
            .iter()
            .map(|&(_, seed)| {
                let m = KeyMaterial::seeded(profile, u32::from(seed));
                SrtpKeys::new(profile, &m.key, &m.salt).expect("valid")
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let (s, r) = (stop.clone(), received.clone());
        let thread = std::thread::spawn(move || {
            if let Some(id) = core_affinity::get_core_ids().and_then(|ids| ids.into_iter().find(|i| i.id == core)) {
                core_affinity::set_for_current(id);
            }
            let mut hist = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).expect("bounds");
            let mut states: std::collections::HashMap<(usize, [u8; 4]), RtpRecvState> = std::collections::HashMap::new();
            // The generator's clock is `epoch`; the kernel stamps CLOCK_REALTIME.
            let realtime_at_epoch = realtime_ns() as i128 - epoch.elapsed().as_nanos() as i128;
            const BATCH: usize = 64;
            let mut bufs = vec![[0u8; 2048]; BATCH];
            let mut cmsgs = vec![[0u64; 8]; BATCH];
            let mut pfds: Vec<libc::pollfd> = sockets.iter().map(|(_, s)| libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
            while !s.load(Ordering::Relaxed) {
                // SAFETY: `pfds` is a valid array of pollfd of the length passed.
                let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 20) };
                if n <= 0 {
                    continue;
                }
                for (k, pfd) in pfds.iter().enumerate() {
                    if pfd.revents & libc::POLLIN == 0 {
                        continue;
                    }
                    loop {
                        let mut iovs: Vec<libc::iovec> = bufs.iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() }).collect();
                        let mut msgs: Vec<libc::mmsghdr> = iovs
                            .iter_mut()
                            .zip(cmsgs.iter_mut())
                            .map(|(iov, c)| {
                                // SAFETY: msghdr is plain data; all-zero is a valid empty header.
                                let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
                                h.msg_iov = iov;
                                h.msg_iovlen = 1;
                                h.msg_control = c.as_mut_ptr().cast();
                                h.msg_controllen = size_of::<[u64; 8]>();
                                libc::mmsghdr { msg_hdr: h, msg_len: 0 }
                            })
                            .collect();
                        // SAFETY: every header points at its own live buffer, iovec and control
                        // buffer of the sizes given, all outliving the call.
                        let got = unsafe { libc::recvmmsg(pfd.fd, msgs.as_mut_ptr(), BATCH as libc::c_uint, libc::MSG_DONTWAIT, std::ptr::null_mut()) };
                        if got <= 0 {
                            break;
                        }
                        for (i, m) in msgs.iter().take(got as usize).enumerate() {
                            r.fetch_add(1, Ordering::Relaxed);
                            let stamp = kernel_stamp(&m.msg_hdr);
                            let (len, buf) = (m.msg_len as usize, &mut bufs[i]);
                            let Some(&[s0, s1, s2, s3]) = buf.get(8..12) else { continue };
                            let state = states.entry((k, [s0, s1, s2, s3])).or_insert_with(|| RtpRecvState::new(1024));
                            if let (Ok(n), Some(at)) = (keys[k].unprotect_rtp(state, &mut buf[..], len), stamp)
                                && n >= 22
                            {
                                let sent = u64::from_be_bytes(buf[14..22].try_into().unwrap_or_default());
                                let at = (at as i128 - realtime_at_epoch).max(0) as u64;
                                let _ = hist.record(at.saturating_sub(sent).max(1));
                            }
                        }
                        if (got as usize) < BATCH {
                            break;
                        }
                    }
                }
            }
            hist
        });
        Ok(Self::Userspace { stop, received, thread: Some(thread) })
    }

    fn received(&self) -> u64 {
        match self {
            Self::Xdp(stage) => stage.verdict_counts().map(|c| c.total()).unwrap_or(0),
            Self::Userspace { received, .. } => received.load(Ordering::Relaxed),
        }
    }

    fn finish(self) -> Histogram<u64> {
        match self {
            Self::Xdp(_) => Histogram::new(3).expect("histogram"),
            Self::Userspace { stop, mut thread, .. } => {
                stop.store(true, Ordering::Relaxed);
                thread.take().and_then(|t| t.join().ok()).unwrap_or_else(|| Histogram::new(3).expect("histogram"))
            }
        }
    }
}

/// Cores: the forwarder's worker (and its ingress NAPI thread) on 1; the generator, the sink's
/// NAPI thread and the latency sink on 0.
const FORWARDER_CORE: usize = 1;
const GENERATOR_CORE: usize = 0;
/// Most copies a probe may lose and still count as sustained.
const MAX_LOSS: f64 = 0.001;

/// Busy jiffies of one CPU (everything but idle and iowait), from /proc/stat.
fn core_busy_ticks(core: usize) -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let tag = format!("cpu{core} ");
    stat.lines()
        .find(|l| l.starts_with(&tag))
        .map(|l| {
            let f: Vec<u64> = l.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
            f.iter().take(8).sum::<u64>() - f.get(3).copied().unwrap_or(0) - f.get(4).copied().unwrap_or(0)
        })
        .unwrap_or(0)
}

/// Runs one backend at one fan-out: open loop at `rate` packets/s in (0 = as fast as possible);
/// `measure` receives in userspace and records latency instead of counting in XDP.
#[expect(clippy::too_many_arguments, reason = "one measurement's whole description")]
fn run_one(
    topo: &Topology,
    backend: &str,
    gso: bool,
    profile: Profile,
    fanout: u32,
    seconds: f64,
    rate: f64,
    measure: bool,
) -> anyhow::Result<(Sample, Histogram<u64>)> {
    let epoch = WallInstant::now();
    let dir = std::env::temp_dir();
    let mut fwd = Forwarder::start(topo, backend, profile, fanout, FORWARDER_CORE, &dir)?;
    let subscribers = (2..=fanout + 1).map(|l| (SINK_PORT + l as u16, 100 + l as u8)).collect();
    let sink = if measure { Sink::userspace(topo, profile, subscribers, epoch, GENERATOR_CORE)? } else { Sink::xdp(topo, fanout)? };
    let (total0, _) = fwd.counters()?;
    let generator = Generator::spawn_in(
        topo.generator.name.clone(),
        GENERATOR_IP.into(),
        profile,
        epoch,
        GENERATOR_CORE,
        seconds + 0.1,
        rate,
        SocketAddr::from((FORWARDER_IP, BASE_PORT + 1)),
    );
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
    drop(fwd);
    let d = |f: &dyn Fn(&str) -> f64| f(&m1) - f(&m0);
    let (batches, batched) = (d(&|m| counter(m, "sluice_rx_batches_total")), d(&|m| counter(m, "sluice_rx_batched_datagrams_total")));
    let (syscalls, tx) = (d(&|m| io_counter(m, "syscalls")), d(&|m| io_counter(m, "tx_datagrams")));
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
fn kernel_floor(topo: &Topology, profile: Profile, seconds: f64, rate: f64) -> anyhow::Result<Histogram<u64>> {
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

/// One configuration: the flood probe (as fast as the generator goes; the forwarder drops what it
/// cannot take) and the highest paced rate it carried with at most [`MAX_LOSS`] of the copies
/// missing (a search of up to `probes` paced runs starting from the flood's forwarded rate).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    /// The flood probe.
    pub flood: Sample,
    /// The highest sustained paced probe, if any passed.
    pub sustained: Option<Sample>,
    /// Whether the generator could not offer the rate the search asked for (then the figure is
    /// the generator's limit, not the forwarder's).
    pub generator_limited: bool,
}

fn search(topo: &Topology, backend: &str, gso: bool, profile: Profile, fanout: u32, seconds: f64, probes: u32) -> anyhow::Result<Row> {
    let (flood, _) = run_one(topo, backend, gso, profile, fanout, seconds, 0.0, false)?;
    let start = flood.out_pps / f64::from(fanout);
    let (sustained, generator_limited) = search_rate(start, probes, |rate| {
        let (s, _) = run_one(topo, backend, gso, profile, fanout, seconds, rate, false)?;
        Ok((s.loss <= MAX_LOSS, s.offered_pps >= 0.97 * rate, s))
    })?;
    Ok(Row { flood, sustained, generator_limited })
}

/// Searches for the highest paced rate that `probe(rate)` passes, from `start` (grown by 25%
/// until a probe fails, then bisected) in at most `probes` probes; `probe` says whether the
/// rate was carried and whether the generator reached it. Returns the highest passing probe's
/// result, and whether the search stopped because the generator could not offer the rate.
pub(crate) fn search_rate<T>(start: f64, probes: u32, mut probe: impl FnMut(f64) -> anyhow::Result<(bool, bool, T)>) -> anyhow::Result<(Option<T>, bool)> {
    let (mut lo, mut hi): (Option<(f64, T)>, Option<f64>) = (None, None);
    let mut rate = start.max(1000.0);
    let mut generator_limited = false;
    for _ in 0..probes {
        let (carried, reached, result) = probe(rate)?;
        if carried && reached {
            lo = Some((rate, result));
        } else {
            generator_limited = !reached && carried;
            hi = Some(rate);
            if generator_limited {
                break;
            }
        }
        let low = lo.as_ref().map_or(0.0, |(r, _)| *r);
        rate = match hi {
            Some(h) if low > 0.0 => (low + h) / 2.0,
            Some(h) => h * 0.75,
            None => rate * 1.25,
        };
        if hi.is_some_and(|h| (h - low) / h < 0.04) {
            break;
        }
    }
    Ok((lo.map(|(_, t)| t), generator_limited))
}

/// The forwarding core alone on the forwarder's core, fed pre-protected packets from memory: the
/// crypto and rewrite ceiling no I/O backend can exceed (packets out per CPU-second).
fn core_ceiling(profile: Profile, fanout: u32) -> f64 {
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

/// The core-alone ceiling of one (profile, fan-out): packets out per CPU-second.
pub type Ceiling = (String, u32, f64);

/// Runs the whole comparison and prints it; returns the rows, the core ceilings and latencies.
pub fn run(backends: &[String], fanouts: &[u32], profiles: &[Profile], seconds: f64, probes: u32) -> anyhow::Result<(Vec<Row>, Vec<Ceiling>, Vec<Latency>)> {
    let parsed: Vec<(&str, bool)> = backends.iter().map(|b| parse_backend(b).map(|(_, gso, _)| (b.as_str(), gso))).collect::<Result<_, _>>()?;
    let topo = Topology::new();
    let mut rows = Vec::new();
    let mut ceilings = Vec::new();
    println!(
        "forwarding benchmark: 1200-byte RTP, 1 publisher ({STREAMS} streams) → N subscribers, one pinned forwarder worker and its kernel receive on core {FORWARDER_CORE}; generator and the sink (XDP count+drop) on core {GENERATOR_CORE}; veth"
    );
    println!("flood: the generator as fast as it goes; sustained: the highest paced input rate with at most {:.1}% of the copies lost", MAX_LOSS * 100.0);
    println!(
        "{:<7} {:<16} {:>3} {:>4} | {:>10} | {:>9} {:>10} {:>7} {:>5} {:>10} {:>7} {:>7} {:>6} {:>6}",
        "profile", "backend", "gso", "fan", "flood out", "sust. in", "sust. out", "loss%", "core", "out/core-s", "worker", "rxbatch", "tx/sys", "gen"
    );
    for &profile in profiles {
        for &fanout in fanouts {
            let ceiling = core_ceiling(profile, fanout);
            println!("{:<7} {:<16} {:>3} {:>4} | {:>10} | core alone (no I/O), out per CPU-second: {ceiling:.0}", short(profile), "core", "-", fanout, "-");
            ceilings.push((format!("{profile:?}"), fanout, ceiling));
            for &(b, gso) in &parsed {
                let row = search(&topo, b, gso, profile, fanout, seconds, probes)?;
                let f = &row.flood;
                match &row.sustained {
                    Some(s) => println!(
                        "{:<7} {:<16} {:>3} {:>4} | {:>10.0} | {:>9.0} {:>10.0} {:>7.3} {:>4.0}% {:>10.0} {:>6.0}% {:>7.1} {:>6.1} {:>5.0}%{}",
                        short(profile),
                        b,
                        if gso { "on" } else { "off" },
                        fanout,
                        f.out_pps,
                        s.offered_pps,
                        s.out_pps,
                        s.loss * 100.0,
                        s.core_busy * 100.0,
                        s.out_per_core_s,
                        s.cpu * 100.0,
                        s.mean_rx_batch,
                        s.tx_per_syscall,
                        s.generator_cpu * 100.0,
                        if row.generator_limited { "  (generator-limited)" } else { "" }
                    ),
                    None => println!(
                        "{:<7} {:<16} {:>3} {:>4} | {:>10.0} | no paced rate sustained",
                        short(profile),
                        b,
                        if gso { "on" } else { "off" },
                        fanout,
                        f.out_pps
                    ),
                }
                rows.push(row);
            }
        }
    }
    let mut latencies = Vec::new();
    println!("\none-way latency (generator send → forwarder → the sink's kernel receive timestamp, veth) at 50% of each backend's sustained rate, fan-out 4");
    println!("{:<8} {:<16} {:>4} {:>12} {:>10} {:>10} {:>10} {:>9}", "profile", "backend", "gso", "offered/s", "p50 µs", "p99 µs", "p99.9 µs", "samples");
    for &profile in profiles {
        // The floor at the input rate of the first latency run (or 20k packets/s).
        let rate = rows
            .iter()
            .filter(|r| r.flood.fanout == 4 && r.flood.profile == format!("{profile:?}"))
            .find_map(|r| r.sustained.as_ref())
            .map_or(20_000.0, |s| s.offered_pps / 2.0);
        let h = kernel_floor(&topo, profile, seconds, rate)?;
        let l = Latency {
            backend: "kernel".into(),
            profile: format!("{profile:?}"),
            gso: false,
            fanout: 1,
            offered_pps: rate,
            p50_us: h.value_at_quantile(0.5) as f64 / 1e3,
            p99_us: h.value_at_quantile(0.99) as f64 / 1e3,
            p999_us: h.value_at_quantile(0.999) as f64 / 1e3,
            samples: h.len(),
        };
        println!(
            "{:<8} {:<16} {:>4} {:>12.0} {:>10.1} {:>10.1} {:>10.1} {:>9}   (the kernel's IP forwarding, fan-out 1: the topology's floor)",
            short(profile),
            l.backend,
            "-",
            l.offered_pps,
            l.p50_us,
            l.p99_us,
            l.p999_us,
            l.samples
        );
        latencies.push(l);
        for &(b, gso) in &parsed {
            let Some(max) =
                rows.iter().find(|r| r.flood.backend == b && r.flood.gso == gso && r.flood.fanout == 4 && r.flood.profile == format!("{profile:?}"))
            else {
                continue;
            };
            let Some(sust) = &max.sustained else { continue };
            let rate = sust.offered_pps / 2.0;
            let (_, h) = run_one(&topo, b, gso, profile, 4, seconds, rate, true)?;
            let l = Latency {
                backend: b.into(),
                profile: format!("{profile:?}"),
                gso,
                fanout: 4,
                offered_pps: rate,
                p50_us: h.value_at_quantile(0.5) as f64 / 1e3,
                p99_us: h.value_at_quantile(0.99) as f64 / 1e3,
                p999_us: h.value_at_quantile(0.999) as f64 / 1e3,
                samples: h.len(),
            };
            println!(
                "{:<8} {:<16} {:>4} {:>12.0} {:>10.1} {:>10.1} {:>10.1} {:>9}",
                short(profile),
                l.backend,
                if gso { "on" } else { "off" },
                l.offered_pps,
                l.p50_us,
                l.p99_us,
                l.p999_us,
                l.samples
            );
            latencies.push(l);
        }
    }
    Ok((rows, ceilings, latencies))
}

fn short(p: Profile) -> &'static str {
    match p {
        Profile::AeadAes128Gcm => "gcm128",
        Profile::AeadAes256Gcm => "gcm256",
        Profile::AesCm128HmacSha1_80 => "cm80",
        Profile::AesCm128HmacSha1_32 => "cm32",
    }
}
