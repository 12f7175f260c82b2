//! The load: per lane, one pinned generator thread and one pinned sink thread sharing one UDP
//! socket (the participants of a lane all use it; the SFU tells legs apart by its own local port,
//! so this costs the dataplane nothing and lets the harness batch across participants).
//!
//! ```text
//!   generator ──sendmmsg + GSO (the dataplane's own mmsg backend)──▶ leg ports of the SFU
//!   sink      ◀──recvmmsg──  decrypt with the subscriber's own keys, check, time, count
//!        ▲ keyframe requests (PLI/FIR the SFU sent a publisher) go to the generator
//! ```
//!
//! Generator: every stream is a schedule (audio every `packet_ms`; video and screen frames at
//! their fps, each frame one burst of packets, keyframes at the start and on PLI/FIR). Each
//! payload carries the step it belongs to and its send time (ns on this process's monotonic
//! clock), so the sink attributes every copy to the step it was sent in and measures one-way
//! latency without clock sync.
//!
//! Adaptive publishers ([`super::publisher`]) stamp a transport-wide sequence number on each
//! packet, read the transport-cc Sluice sends back (the sink hands it over on a channel), send
//! only the camera layers their estimate allows and probe with padding.
//!
//! Sink (`capacity::sink`): every copy is verified with its subscriber's keys and checked. Loss is
//! what the generator's schedules say each step should have delivered (packets actually sent ×
//! the subscribers of their layer) minus what arrived.
//!
//! The impairment shim ([`Impair`]) sits in the path on purpose, for the tests that show the
//! bench detects what it claims to.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;
use sluice_core::ids::Ssrc;
use sluice_core::srtp::{RtcpSendState, RtpSendState, SrtpKeys};
use sluice_core::wire::rtcp;
use sluice_dataplane::io::{Backend, BackendKind, IoConfig, LegSocket, SendRegistry, Transmit};

use super::plan::{Plan, StreamKind, TWCC_EXT, VIDEO_PT, packets_for};
use super::publisher::{PROBE_PADDING, Publisher, PublisherRamp};
use super::ramp::SAMPLE_RAMPS;
use super::sink::{Feedback, sink};

/// Most steps a run can have (step 0 is "not measured"; the last index counts a promoted
/// viewer's audio, [`PROMOTION_STEP`]).
pub const MAX_STEPS: usize = 128;
/// The step stamped into a promoted webinar viewer's audio, so its copies are counted apart from
/// the presenter's (whose step must show no fault across the promotion).
pub const PROMOTION_STEP: usize = MAX_STEPS - 1;
/// Payload offset of the step byte.
pub(super) const STEP_AT: usize = 2;
/// Payload offset of the stream tag ([`stream_tag`]).
pub(super) const TAG_AT: usize = 3;
/// Payload offset of the 8-byte send time.
pub(super) const SENT_AT: usize = 4;
/// Length of the one-byte-form header extension block an adaptive publisher adds: `BE DE 00 01`,
/// then `id,len=1 | transport-wide seq (2) | 0`.
const EXT_LEN: usize = 8;
/// Datagrams per send batch.
const SEND_BATCH: usize = 64;

/// Faults injected into the path, each every Nth packet (0: off).
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Impair {
    /// Drop every Nth RTP datagram between the SFU and the sinks.
    pub drop_every: u64,
    /// Hold every Nth RTP datagram back behind the next one (reordering), SFU → sinks.
    pub reorder_every: u64,
    /// Deliver every Nth RTP datagram twice, SFU → sinks.
    pub duplicate_every: u64,
    /// Publishers skip one sequence number every Nth packet of a stream (no packet is lost).
    pub seq_gap_every: u64,
    /// The sinks of the first N participants hold a wrong key (the SFU has the right one).
    pub wrong_key_legs: usize,
}

/// Counters of one step (or of the unmeasured step 0), shared between threads.
#[derive(Debug, Default)]
pub struct StepCounters {
    /// RTP packets the generators sent.
    pub sent: AtomicU64,
    /// Their payload bytes.
    pub sent_bytes: AtomicU64,
    /// Copies the SFU should deliver for them (packets × subscribers of the stream).
    pub expected: AtomicU64,
    /// Copies received and authenticated by their subscriber (each once).
    pub received: AtomicU64,
    /// Their payload bytes.
    pub received_bytes: AtomicU64,
    /// Copies received again (the replay window caught them).
    pub duplicates: AtomicU64,
    /// Copies that arrived after a later sequence number.
    pub reordered: AtomicU64,
    /// Forward jumps of more than one in a subscriber's sequence numbers.
    pub seq_gaps: AtomicU64,
    /// Timestamps that went backwards (or jumped over 10 s) in sequence order.
    pub ts_errors: AtomicU64,
    /// Copies that did not authenticate with the subscriber's key.
    pub auth_failures: AtomicU64,
    /// Copies on an SSRC their leg does not subscribe to, or from an unknown source.
    pub misrouted: AtomicU64,
    /// Camera packets sent, per simulcast layer.
    pub layer_sent: [AtomicU64; 3],
    /// Probe packets (padding only) the publishers sent.
    pub padding_sent: AtomicU64,
    /// Padding-only copies the subscribers received (probes Sluice forwarded on their layer).
    pub padding_received: AtomicU64,
    /// Copies of another layer than the one the subscription targets (Sluice's fallback when a
    /// layer stops): counted here, not as received.
    pub fallback: AtomicU64,
}

impl StepCounters {
    /// A plain copy of the counters.
    pub fn snapshot(&self) -> StepTotals {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StepTotals {
            sent: l(&self.sent),
            sent_bytes: l(&self.sent_bytes),
            expected: l(&self.expected),
            received: l(&self.received),
            received_bytes: l(&self.received_bytes),
            duplicates: l(&self.duplicates),
            reordered: l(&self.reordered),
            seq_gaps: l(&self.seq_gaps),
            ts_errors: l(&self.ts_errors),
            auth_failures: l(&self.auth_failures),
            misrouted: l(&self.misrouted),
            layer_sent: [l(&self.layer_sent[0]), l(&self.layer_sent[1]), l(&self.layer_sent[2])],
            padding_sent: l(&self.padding_sent),
            padding_received: l(&self.padding_received),
            fallback: l(&self.fallback),
        }
    }
}

/// [`StepCounters`], read.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, PartialEq, Eq)]
#[expect(missing_docs, reason = "the fields are those of StepCounters")]
pub struct StepTotals {
    pub sent: u64,
    pub sent_bytes: u64,
    pub expected: u64,
    pub received: u64,
    pub received_bytes: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub seq_gaps: u64,
    pub ts_errors: u64,
    pub auth_failures: u64,
    pub misrouted: u64,
    pub layer_sent: [u64; 3],
    pub padding_sent: u64,
    pub padding_received: u64,
    pub fallback: u64,
}

impl StepTotals {
    /// Copies that should have arrived and did not.
    pub fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.received)
    }

    /// `lost` as a fraction of `expected`.
    pub fn loss(&self) -> f64 {
        if self.expected == 0 { 0.0 } else { self.lost() as f64 / self.expected as f64 }
    }
}

/// State shared by the controller and the lanes.
#[derive(Debug)]
pub struct Shared {
    /// The step stamped into packets now (0: not measured).
    pub step: AtomicU8,
    /// Meetings whose publishers send.
    pub active: AtomicUsize,
    /// Ends the lanes.
    pub stop: AtomicBool,
    /// Per participant: the SFU asked for a keyframe.
    pub keyframe_due: Vec<AtomicBool>,
    /// Per step.
    pub steps: Vec<StepCounters>,
    /// One-way latency per step, ns (merged from the sinks every 100 ms).
    pub latency: Mutex<Vec<Histogram<u64>>>,
    /// One-way latency since the controller last took it (live progress).
    pub recent: Mutex<Histogram<u64>>,
    /// PLI/FIR received by publishers.
    pub keyframe_requests: AtomicU64,
    /// PLIs the subscribers sent (on a gap in a video stream, as a decoder would).
    pub plis_sent: AtomicU64,
    /// Keyframes sent.
    pub keyframes: AtomicU64,
    /// RTCP packets received and authenticated by participants.
    pub rtcp_received: AtomicU64,
    /// Transport-cc packets Sluice sent the adaptive publishers.
    pub transport_cc_received: AtomicU64,
    /// Per participant: its ramp as an adaptive publisher (updated every 250 ms).
    pub ramps: Mutex<Vec<Option<PublisherRamp>>>,
    /// Per lane: CPU ns of the generator and of the sink threads.
    pub cpu_ns: Vec<(AtomicU64, AtomicU64)>,
    /// Per stream: the subscribers each packet is owed to now (meetings: the plan's; a webinar
    /// adds each viewer's once the Apply that subscribed it returned).
    pub copies: Vec<AtomicU32>,
    /// Per participant: when its first verified copy arrived, ns on [`Shared::now_ns`]'s clock
    /// (0: none yet).
    pub first_rx_ns: Vec<AtomicU64>,
    /// Subscribers that verified at least one copy of a promoted viewer's audio.
    pub promotion_listeners: AtomicU64,
    /// Clock of send times.
    pub epoch: std::time::Instant,
}

/// A latency histogram: 100 ns .. 10 s, 2 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(100, 10_000_000_000, 2).expect("valid bounds")
}

impl Shared {
    /// State for `plan`'s participants and streams and `lanes` lanes (a webinar's streams start
    /// with no subscriber).
    pub fn new(plan: &Plan, lanes: usize) -> Arc<Self> {
        let participants = plan.participants.len();
        Arc::new(Self {
            step: AtomicU8::new(0),
            active: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            keyframe_due: (0..participants).map(|_| AtomicBool::new(false)).collect(),
            steps: (0..MAX_STEPS).map(|_| StepCounters::default()).collect(),
            latency: Mutex::new((0..MAX_STEPS).map(|_| histogram()).collect()),
            recent: Mutex::new(histogram()),
            keyframe_requests: AtomicU64::new(0),
            plis_sent: AtomicU64::new(0),
            keyframes: AtomicU64::new(0),
            rtcp_received: AtomicU64::new(0),
            transport_cc_received: AtomicU64::new(0),
            ramps: Mutex::new(vec![None; participants]),
            cpu_ns: (0..lanes).map(|_| (AtomicU64::new(0), AtomicU64::new(0))).collect(),
            copies: plan.streams.iter().map(|st| AtomicU32::new(if plan.webinar.is_some() { 0 } else { st.copies })).collect(),
            first_rx_ns: (0..participants).map(|_| AtomicU64::new(0)).collect(),
            promotion_listeners: AtomicU64::new(0),
            epoch: std::time::Instant::now(),
        })
    }

    pub(super) fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

/// CPU time of the calling thread, ns.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into the valid local we pass.
    unsafe {
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub(super) fn pin(core: Option<usize>) {
    if let Some(c) = core
        && let Some(id) = core_affinity::get_core_ids().and_then(|ids| ids.into_iter().find(|i| i.id == c))
    {
        core_affinity::set_for_current(id);
    }
}

/// How a lane's traffic flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Through the SFU at `sfu` (the leg ports).
    Sfu,
    /// Straight from the generator to its own sink, one copy per packet, the sink decrypting with
    /// the publisher's keys, as fast as the generator can go: the harness's own ceiling.
    Direct,
    /// As `Direct`, but paced by the schedules: the harness's own latency floor.
    DirectPaced,
}

impl Path {
    /// Whether the traffic bypasses the SFU.
    pub fn direct(self) -> bool {
        self != Self::Sfu
    }
}

/// One lane: its participants (whole meetings), socket, generator and sink.
#[derive(Debug)]
pub struct Lane {
    gen_thread: Option<std::thread::JoinHandle<()>>,
    sink_thread: Option<std::thread::JoinHandle<()>>,
    /// The lane socket's address (every participant of the lane sends from and receives on it;
    /// bound to 0.0.0.0 when its participants have addresses of their own, see [`super::source`]).
    pub addr: SocketAddr,
    /// The lane socket.
    pub socket: Arc<LegSocket>,
    /// Tells the sink the SFU ports of participants programmed after the lane started.
    pub ports: mpsc::Sender<Vec<(u16, usize)>>,
}

/// What a lane is started with.
#[derive(Clone, Debug)]
pub struct LaneConfig {
    /// Lane index.
    pub index: usize,
    /// Meetings of this lane (indices into the plan).
    pub meetings: Vec<usize>,
    /// Where the lane's socket binds.
    pub bind_ip: std::net::IpAddr,
    /// The SFU's address (leg ports are on it).
    pub sfu_ip: std::net::IpAddr,
    /// Core of the generator thread.
    pub gen_core: Option<usize>,
    /// Core of the sink thread.
    pub sink_core: Option<usize>,
    /// Traffic path.
    pub path: Path,
    /// Faults to inject.
    pub impair: Impair,
    /// Network namespace to open the socket in (`/run/netns/<name>`).
    pub netns: Option<String>,
}

/// Runs `f` with the calling thread in network namespace `name`, then returns to the original.
fn in_netns<T>(name: Option<&str>, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    use std::os::fd::AsRawFd as _;
    let Some(name) = name else { return f() };
    let home = std::fs::File::open("/proc/thread-self/ns/net").map_err(|e| anyhow::anyhow!("opening this thread's netns: {e}"))?;
    let target = std::fs::File::open(format!("/run/netns/{name}")).map_err(|e| anyhow::anyhow!("opening netns {name}: {e}"))?;
    // SAFETY: setns(2) on an open namespace fd; it only changes this thread's network namespace.
    if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        anyhow::bail!("setns into {name}: {}", std::io::Error::last_os_error());
    }
    let r = f();
    // SAFETY: as above, back to the namespace this thread started in.
    if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        anyhow::bail!("setns back from {name}: {}", std::io::Error::last_os_error());
    }
    r
}

impl Lane {
    /// Opens the lane's socket, sends every participant's hello (an SRTCP receiver report, so
    /// the SFU latches the leg's address) and starts both threads.
    pub fn start(cfg: LaneConfig, plan: &Arc<Plan>, shared: &Arc<Shared>) -> anyhow::Result<Self> {
        let registry = SendRegistry::new();
        let members: Vec<usize> = cfg.meetings.iter().flat_map(|&m| plan.meetings[m].first..plan.meetings[m].first + plan.meetings[m].size as usize).collect();
        // Participants with addresses of their own (webinar viewers): the socket takes every
        // 127.x.y.z at its port.
        let own_ips = members.iter().any(|&p| plan.participants[p].ip.is_some());
        let local_ip = if own_ips { std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED) } else { cfg.bind_ip };
        let io_cfg = IoConfig { local_ip, rx_batch: 64, socket_buffer_bytes: Some(4 << 20), ..IoConfig::default() };
        let (mut sink_io, port) = in_netns(cfg.netns.as_deref(), || {
            let mut io = Backend::new(BackendKind::Mmsg, io_cfg.clone(), registry.clone())?;
            let port = io.add_port(0)?;
            Ok((io, port))
        })?;
        let addr = SocketAddr::new(cfg.bind_ip, port);
        let socket = registry.get(port).ok_or_else(|| anyhow::anyhow!("the lane socket of port {port} is not registered"))?;
        let mut gen_io = Backend::new(BackendKind::Mmsg, IoConfig { gso: true, ..io_cfg }, registry)?;
        // Each participant's upstream SRTCP: the hello now, the sink's PLIs later, one index
        // sequence (a reused index is a replay the SFU rightly drops).
        let mut up_rtcp: HashMap<usize, (SrtpKeys, RtcpSendState)> = HashMap::new();
        for &p in &members {
            let k = &plan.participants[p].up;
            up_rtcp.insert(p, (SrtpKeys::new(k.profile, &k.key, &k.salt)?, RtcpSendState::new()));
        }
        if cfg.path == Path::Sfu {
            let mut bufs = Vec::new();
            // Participants not programmed yet (webinar viewers) and those whose remote is
            // programmed (their own address) need no hello.
            for &p in members.iter().filter(|&&p| plan.participants[p].port != 0 && plan.participants[p].ip.is_none()) {
                let m = &plan.participants[p];
                let (keys, state) = up_rtcp.get_mut(&p).expect("every member has keys");
                let mut b = vec![0u8; 96];
                let n = rtcp::write_rr(&mut b, Ssrc(m.leg.0), &[]).map_err(|e| anyhow::anyhow!("RR: {e}"))?;
                let n = keys.protect_rtcp(state, &mut b, n).map_err(|e| anyhow::anyhow!("SRTCP: {e:?}"))?;
                b.truncate(n);
                bufs.push((SocketAddr::new(cfg.sfu_ip, m.port), b));
            }
            for chunk in bufs.chunks(SEND_BATCH) {
                gen_io.send_batch(chunk.iter().map(|(dst, b)| Transmit { local_port: port, dst: *dst, payload: b }));
            }
        }
        let (g_plan, g_shared, g_cfg) = (plan.clone(), shared.clone(), cfg.clone());
        let (fb_tx, fb_rx) = channel();
        let gen_thread =
            std::thread::Builder::new().name(format!("gen-{}", cfg.index)).spawn(move || generator(gen_io, port, &g_cfg, &g_plan, &g_shared, &fb_rx))?;
        let (s_plan, s_shared, s_socket) = (plan.clone(), shared.clone(), socket.clone());
        let (ports_tx, ports_rx) = channel();
        let sink_thread = std::thread::Builder::new().name(format!("sink-{}", cfg.index)).spawn(move || {
            let channels = super::sink::Channels { feedback: fb_tx, ports: ports_rx, socket: s_socket };
            sink(&mut sink_io, &cfg, members, up_rtcp, &s_plan, &s_shared, &channels);
        })?;
        Ok(Self { gen_thread: Some(gen_thread), sink_thread: Some(sink_thread), addr, socket, ports: ports_tx })
    }

    /// Waits for both threads (after [`Shared::stop`] is set).
    pub fn join(mut self) {
        for t in [self.gen_thread.take(), self.sink_thread.take()].into_iter().flatten() {
            let _ = t.join();
        }
    }
}

/// One stream's sender state.
struct Sender {
    seq: u16,
    sent: u64,
    frame: u64,
    srtp: RtpSendState,
    keyframe: bool,
}

/// What the sink tells a copy's stream by (payload byte [`TAG_AT`]): the camera layer, or
/// audio / screen.
pub(super) fn stream_tag(kind: StreamKind) -> u8 {
    match kind {
        StreamKind::Video(l) => l,
        StreamKind::Audio => 0x10,
        StreamKind::Screen => 0x20,
    }
}

/// Writes an RTP header into `b`: with `twcc`, the one-byte-form extension carrying that
/// transport-wide sequence number (RFC 8285 §4.2). Returns the header length.
pub(super) fn write_header(b: &mut [u8], pt_m: u8, seq: u16, ts: u32, ssrc: u32, twcc: Option<u16>) -> usize {
    b[0] = 0x80;
    b[1] = pt_m;
    b[2..4].copy_from_slice(&seq.to_be_bytes());
    b[4..8].copy_from_slice(&ts.to_be_bytes());
    b[8..12].copy_from_slice(&ssrc.to_be_bytes());
    let Some(t) = twcc else { return 12 };
    b[0] |= 0x10;
    let t = t.to_be_bytes();
    b[12..12 + EXT_LEN].copy_from_slice(&[0xBE, 0xDE, 0, 1, (TWCC_EXT << 4) | 1, t[0], t[1], 0]);
    12 + EXT_LEN
}

/// The adaptive publishers of a lane: their state and the streams their camera layers are.
struct Adaptive {
    publishers: HashMap<usize, Publisher>,
    /// Per publisher: the stream of each camera layer.
    layers: HashMap<usize, [usize; 3]>,
}

fn adaptive_publishers(cfg: &LaneConfig, plan: &Plan, lane_streams: &[usize]) -> Adaptive {
    let mut a = Adaptive { publishers: HashMap::new(), layers: HashMap::new() };
    if !plan.adaptive || cfg.path != Path::Sfu {
        return a;
    }
    let mut fixed: HashMap<usize, u64> = HashMap::new();
    let mut camera: HashMap<usize, [u64; 3]> = HashMap::new();
    for &s in lane_streams {
        let st = &plan.streams[s];
        let bps = u64::from(st.frame_bytes) * 8 * 1_000_000_000 / st.interval_ns;
        match st.kind {
            StreamKind::Video(l) => {
                camera.entry(st.publisher).or_default()[usize::from(l)] = bps;
                a.layers.entry(st.publisher).or_default()[usize::from(l)] = s;
            }
            _ => *fixed.entry(st.publisher).or_default() += bps,
        }
    }
    // The report's sample ramps: the plan's first camera publishers.
    let sampled: Vec<usize> = plan.streams.iter().filter(|st| st.kind == StreamKind::Video(0)).map(|st| st.publisher).take(SAMPLE_RAMPS).collect();
    for &s in lane_streams {
        let p = plan.streams[s].publisher;
        a.publishers.entry(p).or_insert_with(|| {
            let mut pb = Publisher::new(p, plan.streams[s].meeting, camera.get(&p).copied(), fixed.get(&p).copied().unwrap_or(0));
            pb.keep_samples = sampled.contains(&p);
            pb
        });
    }
    a
}

fn generator(mut io: Backend, port: u16, cfg: &LaneConfig, plan: &Plan, shared: &Shared, feedback: &Receiver<Feedback>) {
    pin(cfg.gen_core);
    let cpu0 = thread_cpu_ns();
    let adaptive = plan.adaptive && cfg.path == Path::Sfu;
    // Each publisher's media keys: its send leg's with adaptive publishers through the SFU.
    let keys: HashMap<usize, SrtpKeys> = cfg
        .meetings
        .iter()
        .flat_map(|&m| plan.meetings[m].first..plan.meetings[m].first + plan.meetings[m].size as usize)
        .filter_map(|p| {
            let m = &plan.participants[p];
            let k = if adaptive { m.publishing().1 } else { &m.up };
            Some((p, SrtpKeys::new(k.profile, &k.key, &k.salt).ok()?))
        })
        .collect();
    // This lane's streams, by meeting, and each publisher's camera/screen streams.
    let mut lane_streams: Vec<usize> =
        (0..plan.streams.len()).filter(|&s| plan.streams[s].scheduled && cfg.meetings.contains(&plan.streams[s].meeting)).collect();
    lane_streams.sort_by_key(|&s| (plan.streams[s].meeting, s));
    let mut video_of: HashMap<usize, Vec<usize>> = HashMap::new();
    for &s in &lane_streams {
        if plan.streams[s].kind != StreamKind::Audio {
            video_of.entry(plan.streams[s].publisher).or_default().push(s);
        }
    }
    let Adaptive { mut publishers, layers: camera_of } = adaptive_publishers(cfg, plan, &lane_streams);
    let mut active_publishers: Vec<usize> = Vec::new();
    let mut senders: HashMap<usize, Sender> = lane_streams
        .iter()
        .map(|&s| (s, Sender { seq: (s as u16).wrapping_mul(7919), sent: 0, frame: 0, srtp: RtpSendState::new(), keyframe: true }))
        .collect();
    let mut heap: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
    let mut activated = 0usize; // meetings of the plan whose streams are scheduled
    let mut bufs: Vec<Vec<u8>> = (0..SEND_BATCH).map(|_| vec![0xa5u8; 1500]).collect();
    let mut batch: Vec<(usize, SocketAddr)> = Vec::with_capacity(SEND_BATCH);
    let mut blast_next = 0usize;
    let mut blast_list: Vec<usize> = Vec::new();
    let flush = |io: &mut Backend, bufs: &[Vec<u8>], batch: &mut Vec<(usize, SocketAddr)>| {
        io.send_batch(batch.iter().enumerate().map(|(i, &(len, dst))| Transmit { local_port: port, dst, payload: &bufs[i][..len] }));
        batch.clear();
    };
    let mut iter = 0u64;
    let mut due_streams: Vec<usize> = Vec::new();
    let mut next_sample = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        let now = shared.now_ns();
        let active = shared.active.load(Ordering::Relaxed);
        if active > activated {
            for &s in lane_streams.iter().filter(|&&s| (activated..active).contains(&plan.streams[s].meeting)) {
                // Spread the phases so frames of different publishers do not all coincide.
                let phase = (s as u64).wrapping_mul(0x9e37_79b9) % plan.streams[s].interval_ns;
                heap.push(Reverse((now + phase, s)));
                blast_list.push(s);
                // A (re)started publisher begins with a keyframe, as a real one does.
                if let Some(snd) = senders.get_mut(&s) {
                    snd.keyframe = true;
                }
                let p = plan.streams[s].publisher;
                if let Some(pb) = publishers.get_mut(&p) {
                    pb.start(now);
                    if !active_publishers.contains(&p) {
                        active_publishers.push(p);
                    }
                }
            }
            activated = active;
        } else if active < activated {
            // The ramp stepped back (bisecting): those meetings' publishers go quiet.
            heap.retain(|r| plan.streams[r.0.1].meeting < active);
            blast_list.retain(|&s| plan.streams[s].meeting < active);
            active_publishers.retain(|&p| plan.participants[p].meeting < active);
            activated = active;
        }
        let step = shared.step.load(Ordering::Relaxed);
        let counters = &shared.steps[usize::from(step)];
        // Sluice's transport-cc into the publishers' estimators, then their layer choice: a layer
        // turned on starts with a keyframe.
        while let Ok((p, at, fb)) = feedback.try_recv() {
            if let Some(pb) = publishers.get_mut(&p) {
                pb.on_feedback(at, &fb);
            }
        }
        for &p in &active_publishers {
            let Some(pb) = publishers.get_mut(&p) else { continue };
            let on = pb.tick(now);
            for (l, &s) in camera_of.get(&p).into_iter().flatten().enumerate() {
                if on & (1 << l) != 0
                    && let Some(snd) = senders.get_mut(&s)
                {
                    snd.keyframe = true;
                }
            }
        }
        due_streams.clear();
        if cfg.path == Path::Direct {
            // Back to back, round robin over the active streams.
            if !blast_list.is_empty() {
                for _ in 0..4 {
                    due_streams.push(blast_list[blast_next % blast_list.len()]);
                    blast_next += 1;
                }
            }
        } else {
            while let Some(&Reverse((due, s))) = heap.peek() {
                if due > now {
                    break;
                }
                heap.pop();
                heap.push(Reverse((due + plan.streams[s].interval_ns, s)));
                due_streams.push(s);
            }
        }
        for &s in &due_streams {
            let st = &plan.streams[s];
            let Some(key) = keys.get(&st.publisher) else { continue };
            let mut publisher = publishers.get_mut(&st.publisher);
            if let (StreamKind::Video(l), Some(pb)) = (st.kind, publisher.as_deref())
                && l >= pb.layers
            {
                // A layer the estimate does not allow: the encoder skips it.
                if let Some(snd) = senders.get_mut(&s) {
                    snd.frame += 1;
                }
                continue;
            }
            if st.kind != StreamKind::Audio && shared.keyframe_due[st.publisher].swap(false, Ordering::Relaxed) {
                for &v in video_of.get(&st.publisher).into_iter().flatten() {
                    if let Some(o) = senders.get_mut(&v) {
                        o.keyframe = true;
                    }
                }
            }
            let snd = senders.get_mut(&s).expect("lane stream");
            let key_frame = st.kind != StreamKind::Audio && std::mem::take(&mut snd.keyframe);
            if key_frame {
                shared.keyframes.fetch_add(1, Ordering::Relaxed);
            }
            let bytes = if key_frame { st.keyframe_bytes } else { st.frame_bytes };
            let n = packets_for(bytes, st.packet_bytes);
            let ts = (snd.frame as u32).wrapping_mul(st.ts_step).wrapping_add(st.ssrc);
            snd.frame += 1;
            let dst = match cfg.path {
                Path::Sfu => SocketAddr::new(cfg.sfu_ip, plan.participants[st.publisher].publishing().2),
                Path::Direct | Path::DirectPaced => SocketAddr::new(cfg.bind_ip, port),
            };
            for k in 0..n {
                let payload = if k + 1 < n { st.packet_bytes } else { bytes - st.packet_bytes * (n - 1) }.max(16) as usize;
                snd.seq = snd.seq.wrapping_add(1);
                snd.sent += 1;
                if cfg.impair.seq_gap_every > 0 && snd.sent.is_multiple_of(cfg.impair.seq_gap_every) {
                    snd.seq = snd.seq.wrapping_add(1);
                }
                let b = &mut bufs[batch.len()];
                let pt = if st.kind == StreamKind::Audio { super::plan::AUDIO_PT } else { VIDEO_PT };
                let h = write_header(b, pt | if k + 1 == n { 0x80 } else { 0 }, snd.seq, ts, st.ssrc, publisher.as_deref().map(Publisher::next_seq));
                let p = &mut b[h..];
                (p[0], p[1]) = match (st.kind, k, key_frame) {
                    (StreamKind::Audio, _, _) => (0, 0),
                    (_, 0, true) => (0x10, 0x00),
                    (_, 0, false) => (0x10, 0x01),
                    _ => (0x00, 0x55),
                };
                p[STEP_AT] = step;
                p[TAG_AT] = stream_tag(st.kind);
                p[SENT_AT..SENT_AT + 8].copy_from_slice(&shared.now_ns().to_be_bytes());
                let Ok(len) = key.protect_rtp(&mut snd.srtp, b, h + payload) else { continue };
                if let Some(pb) = publisher.as_deref_mut() {
                    pb.sent(now, len, false);
                }
                batch.push((len, dst));
                counters.sent.fetch_add(1, Ordering::Relaxed);
                counters.sent_bytes.fetch_add(payload as u64, Ordering::Relaxed);
                if let StreamKind::Video(l) = st.kind {
                    counters.layer_sent[usize::from(l)].fetch_add(1, Ordering::Relaxed);
                }
                let copies = if cfg.path.direct() { 1 } else { u64::from(shared.copies[s].load(Ordering::Relaxed)) };
                counters.expected.fetch_add(copies, Ordering::Relaxed);
                if batch.len() == SEND_BATCH {
                    flush(&mut io, &bufs, &mut batch);
                }
            }
        }
        // Probes: padding-only packets on the publisher's lowest camera layer, as libwebrtc sends
        // them without RTX (the layer's next sequence number, its last frame's timestamp).
        for &p in &active_publishers {
            let (Some(pb), Some(&[s, ..]), Some(key)) = (publishers.get_mut(&p), camera_of.get(&p), keys.get(&p)) else { continue };
            let st = &plan.streams[s];
            let wire = 12 + EXT_LEN + PROBE_PADDING + key.rtp_overhead();
            while pb.probe_due(now, wire) {
                let snd = senders.get_mut(&s).expect("lane stream");
                snd.seq = snd.seq.wrapping_add(1);
                let ts = (snd.frame.saturating_sub(1) as u32).wrapping_mul(st.ts_step).wrapping_add(st.ssrc);
                let b = &mut bufs[batch.len()];
                let h = write_header(b, VIDEO_PT, snd.seq, ts, st.ssrc, Some(pb.next_seq()));
                b[0] |= 0x20;
                b[h..h + PROBE_PADDING].fill(0);
                b[h + PROBE_PADDING - 1] = PROBE_PADDING as u8;
                let Ok(len) = key.protect_rtp(&mut snd.srtp, b, h + PROBE_PADDING) else { break };
                pb.sent(now, len, true);
                batch.push((len, SocketAddr::new(cfg.sfu_ip, plan.participants[p].publishing().2)));
                counters.padding_sent.fetch_add(1, Ordering::Relaxed);
                if batch.len() == SEND_BATCH {
                    flush(&mut io, &bufs, &mut batch);
                }
            }
        }
        if !batch.is_empty() {
            flush(&mut io, &bufs, &mut batch);
        }
        if now >= next_sample && !publishers.is_empty() {
            next_sample = now + super::publisher::SAMPLE_NS;
            let mut ramps = shared.ramps.lock().unwrap_or_else(PoisonError::into_inner);
            for (&p, pb) in &mut publishers {
                if pb.sample(now) {
                    ramps[p] = Some(pb.ramp.clone());
                }
            }
        }
        iter += 1;
        if iter.is_multiple_of(64) {
            shared.cpu_ns[cfg.index].0.store(thread_cpu_ns() - cpu0, Ordering::Relaxed);
        }
        if cfg.path != Path::Direct {
            let next = heap.peek().map_or(now + 1_000_000, |r| r.0.0).min(now + 1_000_000);
            let wait = next.saturating_sub(shared.now_ns());
            if wait > 50_000 {
                std::thread::sleep(Duration::from_nanos(wait));
            }
        } else if heap.is_empty() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    shared.cpu_ns[cfg.index].0.store(thread_cpu_ns() - cpu0, Ordering::Relaxed);
}
