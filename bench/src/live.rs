//! The whole system on loopback: the real `sluice-dataplane` and `sluice-controlplane`
//! processes, meetings programmed through the control plane's gRPC Routes API, and simulated
//! participants sending real-time SRTP over real UDP sockets and verifying what comes back.
//!
//! ```text
//!   participants (UDP, 127.0.0.1) ──SRTP──▶ sluice-dataplane (2 workers) ──SRTP──▶ participants
//!                                                 ▲ Unix socket (table deltas)
//!   this process ──gRPC (Routes.Apply, Node.GetStatus)──▶ sluice-controlplane
//! ```
//!
//! The daemons are children of this process, started from the directory of the current
//! executable, each in its own process group (so a terminal's Ctrl-C reaches only us) and with a
//! parent-death signal; [`Children`] stops exactly those PIDs (SIGTERM, then SIGKILL) on every way
//! out: normal end, error, SIGINT/SIGTERM.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use sluice_controlplane::pb;
use sluice_controlplane::pb::change::Change as C;
use sluice_controlplane::pb::node_client::NodeClient;
use sluice_controlplane::pb::routes_client::RoutesClient;
use sluice_controlplane::state::{codec_to_pb, profile_to_pb};
use sluice_core::srtp::Profile;
use sluice_core::table::{KeyMaterial, MediaKind, Op, SubscriptionSpec};
use tonic::transport::Channel;

use crate::meeting::{self, Participant};

/// What the live demo runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Meetings (one control-plane session each).
    pub meetings: u32,
    /// Participants per meeting.
    pub size: u32,
    /// Seconds of media.
    pub seconds: u64,
    /// SRTP profile of every leg.
    pub profile: Profile,
    /// Others each participant watches at the top simulcast layer.
    pub hd_views: u32,
    /// Dataplane worker threads.
    pub workers: u32,
    /// Leg ports, inclusive (below the ephemeral range, so no participant socket takes one).
    pub port_range: (u16, u16),
    /// More `[dataplane]` settings, TOML lines (e.g. `backend = "uring"`).
    pub dataplane_extra: String,
}

/// The totals at the end of a run.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Packets the participants sent.
    pub sent: u64,
    /// Packets the participants received and verified.
    pub received: u64,
    /// Packets that failed to authenticate at their participant.
    pub verify_failures: u64,
    /// Sequence gaps seen by participants.
    pub gaps: u64,
    /// Whether SIGINT/SIGTERM ended the run early.
    pub interrupted: bool,
}

/// The daemons this process started; each is stopped by its PID when this is dropped.
#[derive(Debug, Default)]
pub struct Children {
    procs: Vec<(&'static str, Child, PathBuf)>,
}

impl Children {
    pub(crate) fn spawn(&mut self, name: &'static str, args: &[&str], log: &Path) -> anyhow::Result<u32> {
        let exe = std::env::current_exe().context("current executable")?.with_file_name(name);
        if !exe.exists() {
            bail!(
                "{} is not built: run `cargo build --release -p sluice-bench -p sluice-dataplane -p sluice-controlplane` (or use `demo --in-process`)",
                exe.display()
            );
        }
        let err = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(&exe);
        cmd.args(args).env("RUST_LOG", "info").env("NO_COLOR", "1").stdin(Stdio::null()).stdout(Stdio::null()).stderr(err).process_group(0);
        // SAFETY: the closure runs in the forked child before exec and only calls prctl(2), which
        // is async-signal-safe; it touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                // Should this process die without cleaning up (SIGKILL), the child gets SIGTERM.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("starting {}", exe.display()))?;
        let pid = child.id();
        self.procs.push((name, child, log.to_path_buf()));
        Ok(pid)
    }

    fn get(&mut self, name: &str) -> &mut (&'static str, Child, PathBuf) {
        self.procs.iter_mut().find(|p| p.0 == name).expect("started")
    }

    /// Fails if `name` has exited, with the end of its log.
    pub(crate) fn check_alive(&mut self, name: &str) -> anyhow::Result<()> {
        let (_, child, _) = self.get(name);
        if let Ok(Some(status)) = child.try_wait() {
            bail!("{name} exited unexpectedly ({status})");
        }
        Ok(())
    }

    /// Stops every child by PID: SIGTERM, up to 3 s to exit, then SIGKILL; reaps them all.
    pub fn stop(&mut self) -> Vec<(&'static str, u32, String)> {
        for (_, child, _) in &mut self.procs {
            if let Ok(None) = child.try_wait() {
                // SAFETY: kill(2) on the PID of a child we spawned and have not reaped yet, so
                // the PID still names that child.
                unsafe {
                    libc::kill(child.id() as i32, libc::SIGTERM);
                }
            }
        }
        let end = Instant::now() + Duration::from_secs(3);
        let mut done = Vec::new();
        for (name, mut child, _) in self.procs.drain(..) {
            let pid = child.id();
            let status = loop {
                match child.try_wait() {
                    Ok(Some(s)) => break s.to_string(),
                    Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(10)),
                    _ => {
                        let _ = child.kill();
                        break child.wait().map(|s| format!("{s}, after SIGKILL")).unwrap_or_else(|e| e.to_string());
                    }
                }
            };
            done.push((name, pid, status));
        }
        done
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A scratch directory, removed when dropped.
#[derive(Debug)]
pub(crate) struct Scratch(pub(crate) PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits until `find` extracts something from `name`'s log; fails if the child exits, the user
/// interrupts, or 20 s pass.
fn wait_log<T>(kids: &mut Children, name: &str, stop: &AtomicBool, what: &str, find: impl Fn(&str) -> Option<T>) -> anyhow::Result<T> {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let log = kids.get(name).2.clone();
        if let Some(v) = std::fs::read_to_string(&log).ok().as_deref().and_then(&find) {
            return Ok(v);
        }
        kids.check_alive(name)?;
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        if Instant::now() > end {
            bail!("{name} never logged {what} in 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The address after `marker` in a log line.
fn addr_after(log: &str, marker: &str) -> Option<SocketAddr> {
    let line = log.lines().find(|l| l.contains(marker))?;
    let at = line.find(marker)? + marker.len();
    line[at..].chars().take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':').collect::<String>().parse().ok()
}

/// The gRPC clients, on a small runtime of their own.
pub(crate) struct Grpc {
    rt: tokio::runtime::Runtime,
    routes: RoutesClient<Channel>,
    node: NodeClient<Channel>,
}

impl Grpc {
    fn connect(addr: SocketAddr, stop: &AtomicBool) -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        let end = Instant::now() + Duration::from_secs(20);
        let channel = loop {
            match rt.block_on(Channel::from_shared(format!("http://{addr}"))?.connect()) {
                Ok(c) => break c,
                Err(e) if Instant::now() > end || stop.load(Ordering::Relaxed) => return Err(e).context("connecting to the control plane"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        Ok(Self { rt, routes: RoutesClient::new(channel.clone()), node: NodeClient::new(channel) })
    }

    pub(crate) fn apply(&mut self, req: pb::ChangeSet) -> Result<pb::ApplyResponse, tonic::Status> {
        self.rt.block_on(self.routes.apply(req)).map(tonic::Response::into_inner)
    }

    pub(crate) fn status(&mut self) -> Result<pb::NodeStatus, tonic::Status> {
        let mut node = self.node.clone();
        self.rt
            .block_on(async move { tokio::time::timeout(Duration::from_millis(500), node.get_status(pb::GetStatusRequest {})).await })
            .map_err(|_| tonic::Status::deadline_exceeded("GetStatus took over 500 ms"))?
            .map(tonic::Response::into_inner)
    }
}

fn keys(k: &KeyMaterial) -> pb::KeyMaterial {
    pb::KeyMaterial { profile: profile_to_pb(k.profile) as i32, key: k.key.clone(), salt: k.salt.clone() }
}

/// The name a leg of `meeting::build` gets on the control plane.
pub fn leg_name(id: u32) -> String {
    format!("leg-{id}")
}

/// The name a track of `meeting::build` gets on the control plane.
pub fn track_name(id: u32) -> String {
    format!("track-{id}")
}

/// A subscription of `meeting::build`, as gRPC.
pub fn subscription(s: &SubscriptionSpec) -> pb::Subscription {
    pb::Subscription {
        subscriber_leg: leg_name(s.subscriber.0),
        track: track_name(s.track.0),
        out_ssrc: s.out_ssrc.0,
        out_rtx_ssrc: s.out_rtx_ssrc.map(|x| x.0),
        pt_map: s.pt_map.iter().map(|(f, t)| pb::IdMapping { from: u32::from(f.0), to: u32::from(t.0) }).collect(),
        ext_map: s.ext_map.iter().map(|(f, t)| pb::IdMapping { from: u32::from(*f), to: u32::from(*t) }).collect(),
        target_layer: u32::from(s.target_layer),
        paused: s.paused,
        priority: u32::from(s.priority),
    }
}

/// The table ops `meeting::build` makes, as gRPC changes: names instead of dataplane ids, and no
/// local ports (the control plane allocates them).
pub fn changes(ops: &[Op]) -> anyhow::Result<Vec<pb::Change>> {
    let layers: HashMap<u32, usize> = ops.iter().filter_map(|o| if let Op::UpsertTrack(t) = o { Some((t.id.0, t.layers.len())) } else { None }).collect();
    ops.iter()
        .map(|op| {
            let c = match op {
                Op::UpsertLeg(l) => C::Leg(pb::Leg {
                    id: leg_name(l.id.0),
                    local_port: 0,
                    remote: String::new(),
                    rx: Some(keys(&l.rx)),
                    tx: Some(keys(&l.tx)),
                    feedback_ssrc: l.feedback_ssrc.0,
                    feedback: (l.feedback != Default::default())
                        .then(|| pb::UplinkFeedback { transport_cc_ext: l.feedback.twcc_ext.map(u32::from), remb: l.feedback.remb }),
                    ..Default::default()
                }),
                Op::UpsertTrack(t) => C::Track(pb::Track {
                    id: track_name(t.id.0),
                    publisher_leg: leg_name(t.publisher.0),
                    kind: match t.kind {
                        MediaKind::Audio => pb::MediaKind::Audio,
                        MediaKind::Video => pb::MediaKind::Video,
                    } as i32,
                    clock_rate: t.clock_rate,
                    layers: t
                        .layers
                        .iter()
                        .map(|l| pb::Layer { ssrc: l.ssrc.map(|s| s.0), rtx_ssrc: l.rtx_ssrc.map(|s| s.0), rid: l.rid.clone().unwrap_or_default() })
                        .collect(),
                    payload_types: t
                        .payload_types
                        .iter()
                        .map(|p| pb::PayloadType { pt: u32::from(p.pt.0), codec: codec_to_pb(p.codec) as i32, rtx_pt: p.rtx_pt.map(|r| u32::from(r.0)) })
                        .collect(),
                    rid_ext: t.rid_ext.map(u32::from),
                    repaired_rid_ext: t.repaired_rid_ext.map(u32::from),
                    audio_level_ext: t.audio_level_ext.map(u32::from),
                    mid_ext: t.mid.as_ref().map(|m| u32::from(m.ext)),
                    mid: t.mid.as_ref().map(|m| m.value.clone()).unwrap_or_default(),
                }),
                Op::UpsertSubscription(s) => {
                    // meeting::build asks for layer 2 of audio too (the dataplane clamps it); the
                    // control plane wants a layer the track has.
                    let mut s = s.clone();
                    let n = layers.get(&s.track.0).copied().unwrap_or(1).max(1);
                    s.target_layer = s.target_layer.min(n as u8 - 1);
                    C::Subscription(subscription(&s))
                }
                other => bail!("meeting::build made an op the demo cannot send: {other:?}"),
            };
            Ok(pb::Change { change: Some(c) })
        })
        .collect()
}

/// Sums a Prometheus counter over all its label sets.
fn metric(body: &str, name: &str) -> f64 {
    body.lines().filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' '])).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

/// The dataplane's counters: packets in, packets out, bytes out, SRTP failures at the SFU.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counters {
    pub(crate) rx: f64,
    pub(crate) tx: f64,
    pub(crate) tx_bytes: f64,
    pub(crate) srtp_failures: f64,
}

/// The dataplane's `/metrics` page.
pub(crate) fn metrics_body(addr: SocketAddr) -> Option<String> {
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    c.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n").ok()?;
    let mut body = String::new();
    c.read_to_string(&mut body).ok()?;
    Some(body)
}

pub(crate) fn scrape(addr: SocketAddr) -> Option<Counters> {
    let body = metrics_body(addr)?;
    Some(Counters {
        rx: metric(&body, "sluice_rx_packets_total"),
        tx: metric(&body, "sluice_tx_packets_total"),
        tx_bytes: metric(&body, "sluice_tx_bytes_total"),
        srtp_failures: metric(&body, "sluice_srtp_failures_total"),
    })
}

/// CPU seconds (user + system) `pid` has used, from /proc/<pid>/stat.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after its closing parenthesis start
    // at field 3 (state), so utime and stime (fields 14 and 15) are the 12th and 13th of them.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf(3) has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks / if hz > 0 { hz as f64 } else { 100.0 })
}

/// Runs the demo; `stop` is set by the SIGINT/SIGTERM handler. Prints live numbers and a summary.
pub fn run(o: &Options, stop: &Arc<AtomicBool>) -> anyhow::Result<Summary> {
    let dir = std::env::temp_dir().join(format!("sluice-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let scratch = Scratch(dir.clone());
    let mut kids = Children::default();
    let result = run_with(o, stop, &scratch.0, &mut kids);
    let stopped = kids.stop();
    for (name, pid, status) in stopped {
        println!("  stopped {name} (pid {pid}): {status}");
    }
    if result.is_err() {
        // Show the end of the daemons' logs: the scratch directory goes away.
        for name in ["dataplane", "controlplane"] {
            let log = dir.join(format!("{name}.log"));
            if log.exists() {
                eprintln!("--- end of {name}.log ---\n{}", tail(&log, 10));
            }
        }
    }
    drop(scratch);
    result
}

/// Starts both daemons in `dir` and waits until the control plane has the dataplane; returns the
/// gRPC client, the dataplane's metrics address and its PID.
pub(crate) fn start_system(o: &Options, stop: &Arc<AtomicBool>, dir: &Path, kids: &mut Children) -> anyhow::Result<(Grpc, SocketAddr, u32)> {
    // --- The dataplane.
    let dp_sock = dir.join("dataplane.sock");
    let dp_cfg = dir.join("dataplane.toml");
    std::fs::write(
        &dp_cfg,
        format!(
            "[dataplane]\nworkers = {}\ncontrol_socket = \"{}\"\nmetrics = \"127.0.0.1:0\"\nport_range = [{}, {}]\n{}\n",
            o.workers,
            dp_sock.display(),
            o.port_range.0,
            o.port_range.1,
            if o.dataplane_extra.contains("listen_ip") { o.dataplane_extra.clone() } else { format!("listen_ip = \"127.0.0.1\"\n{}", o.dataplane_extra) }
        ),
    )?;
    let dp_pid = kids.spawn("sluice-dataplane", &["--config", path_str(&dp_cfg)?], &dir.join("dataplane.log"))?;
    let metrics = wait_log(kids, "sluice-dataplane", stop, "its metrics address", |log| addr_after(log, "metrics at http://"))?;
    wait_log(kids, "sluice-dataplane", stop, "its control socket", |_| dp_sock.exists().then_some(()))?;

    // --- The control plane.
    let cp_cfg = dir.join("controlplane.toml");
    std::fs::write(
        &cp_cfg,
        format!(
            "[controlplane]\ngrpc_listen = \"127.0.0.1:0\"\nplaintext = true\ndataplane_socket = \"{}\"\nstate_dir = \"{}\"\nport_range = [{}, {}]\n",
            dp_sock.display(),
            dir.join("state").display(),
            o.port_range.0,
            o.port_range.1
        ),
    )?;
    let cp_pid = kids.spawn("sluice-controlplane", &["--config", path_str(&cp_cfg)?], &dir.join("controlplane.log"))?;
    let grpc_addr = wait_log(kids, "sluice-controlplane", stop, "its gRPC address", |log| addr_after(log, "listen="))?;
    println!("sluice-dataplane pid {dp_pid} ({} workers, metrics http://{metrics}/metrics)", o.workers);
    println!("sluice-controlplane pid {cp_pid} (gRPC {grpc_addr}, state in {})", dir.join("state").display());
    let mut grpc = Grpc::connect(grpc_addr, stop)?;
    let end = Instant::now() + Duration::from_secs(20);
    while !grpc.status().map(|s| s.dataplane_connected).unwrap_or(false) {
        kids.check_alive("sluice-dataplane")?;
        kids.check_alive("sluice-controlplane")?;
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        if Instant::now() > end {
            bail!("the control plane never connected to the dataplane");
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    Ok((grpc, metrics, dp_pid))
}

fn run_with(o: &Options, stop: &Arc<AtomicBool>, dir: &Path, kids: &mut Children) -> anyhow::Result<Summary> {
    let (mut grpc, metrics, dp_pid) = start_system(o, stop, dir, kids)?;

    // --- Program the meetings, one session each; the legs' ports are the ones allocated.
    let mut people: Vec<Participant> = Vec::new();
    for m in 0..o.meetings {
        let (ops, mut p) = meeting::build(m, o.size, o.profile, o.hd_views);
        let req = pb::ChangeSet {
            session: format!("demo-meeting-{m}"),
            idempotency_key: format!("demo-create-{m}"),
            expected_revision: Some(0),
            changes: changes(&ops)?,
        };
        let r = grpc.apply(req).map_err(|e| anyhow::anyhow!("Routes.Apply for meeting {m}: {:?}: {}", e.code(), e.message()))?;
        let ports: HashMap<&str, u16> = r.ports.iter().map(|a| (a.leg.as_str(), a.local_port as u16)).collect();
        for q in &mut p {
            q.port = *ports.get(leg_name(q.leg.0).as_str()).with_context(|| format!("no port allocated for {}", leg_name(q.leg.0)))?;
        }
        people.extend(p);
    }
    let st = grpc.status().map_err(|e| anyhow::anyhow!("Node.GetStatus: {e}"))?;
    println!(
        "sluice demo: {} meetings x {} participants, {:?}, over gRPC: {} sessions, {} legs, {} tracks, {} subscriptions (table generation {})",
        o.meetings, o.size, o.profile, st.sessions, st.legs, st.tracks, st.subscriptions, st.dataplane_generation
    );
    println!("every participant sends Opus-sized audio (20 ms) + 3-layer simulcast video (30 fps) as SRTP with its own keys");
    println!("from its own UDP socket on 127.0.0.1 to its leg's port, and verifies what it receives with its own keys\n");

    // --- Media.
    let sockets: Vec<UdpSocket> = people
        .iter()
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0")?;
            s.set_nonblocking(true)?;
            Ok(s)
        })
        .collect::<std::io::Result<_>>()
        .context("participant sockets")?;
    for (p, s) in people.iter_mut().zip(&sockets) {
        p.addr = s.local_addr()?;
    }
    let sfu = |p: &Participant| SocketAddr::from(([127, 0, 0, 1], p.port));
    let mut sent = 0u64;
    let mut send_errors = 0u64;
    let mut send = |s: &UdpSocket, pkt: &[u8], to: SocketAddr| match s.send_to(pkt, to) {
        Ok(_) => sent += 1,
        Err(_) => send_errors += 1,
    };
    for (p, s) in people.iter_mut().zip(&sockets) {
        let hello = p.hello();
        send(s, &hello, sfu(p));
    }
    std::thread::sleep(Duration::from_millis(100));
    let mut buf = vec![0u8; 2048];
    let drain = |people: &mut [Participant], buf: &mut [u8]| {
        for (p, s) in people.iter_mut().zip(&sockets) {
            while let Ok(n) = s.recv(buf) {
                p.receive(&buf[..n]);
            }
        }
    };
    drain(&mut people, &mut buf);

    let first = scrape(metrics).unwrap_or_default();
    let cpu0 = cpu_seconds(dp_pid).unwrap_or(0.0);
    let start = Instant::now();
    let audio_every = Duration::from_millis(meeting::AUDIO_MS);
    let video_every = Duration::from_nanos(1_000_000_000 / meeting::FPS);
    let (mut next_audio, mut next_video, mut next_report) = (Duration::ZERO, Duration::ZERO, Duration::from_secs(1));
    let (mut audio_tick, end) = (0u64, Duration::from_secs(o.seconds));
    let mut last = (first, 0u64, cpu0, Duration::ZERO);
    println!(
        "{:>4}  {:>9}  {:>9}  {:>8}  {:>10}  {:>10}  {:>7}  {:>5}  {:>6}  {:>8}  {:>4}",
        "t", "in pkt/s", "out pkt/s", "out Mb/s", "verified/s", "verified", "verify!", "gaps", "dp cpu", "sessions", "legs"
    );
    let mut interrupted = false;
    loop {
        let t = start.elapsed();
        if stop.load(Ordering::Relaxed) {
            interrupted = true;
            break;
        }
        if t >= end {
            break;
        }
        if t >= next_audio {
            for (p, s) in people.iter_mut().zip(&sockets) {
                let pkt = p.audio(audio_tick);
                send(s, &pkt, sfu(p));
            }
            audio_tick += 1;
            next_audio += audio_every;
        }
        if t >= next_video {
            for (p, s) in people.iter_mut().zip(&sockets) {
                for pkt in p.video_frame() {
                    send(s, &pkt, sfu(p));
                }
            }
            next_video += video_every;
        }
        drain(&mut people, &mut buf);
        if t >= next_report {
            kids.check_alive("sluice-dataplane")?;
            kids.check_alive("sluice-controlplane")?;
            let now = scrape(metrics).unwrap_or(last.0);
            let cpu = cpu_seconds(dp_pid).unwrap_or(last.2);
            let window = (t - last.3).as_secs_f64().max(1e-3);
            let received: u64 = people.iter().map(|p| p.received).sum();
            let failures: u64 = people.iter().map(|p| p.verify_failures).sum();
            let gaps: u64 = people.iter().map(|p| p.gaps).sum();
            let (sessions, legs) = match grpc.status() {
                Ok(s) => (s.sessions.to_string(), s.legs.to_string()),
                Err(_) => ("?".into(), "?".into()),
            };
            println!(
                "{:>3}s  {:>9.0}  {:>9.0}  {:>8.1}  {:>10.0}  {:>10}  {:>7}  {:>5}  {:>5.1}%  {:>8}  {:>4}",
                t.as_secs(),
                (now.rx - last.0.rx) / window,
                (now.tx - last.0.tx) / window,
                (now.tx_bytes - last.0.tx_bytes) * 8.0 / window / 1e6,
                (received - last.1) as f64 / window,
                received,
                failures,
                gaps,
                100.0 * (cpu - last.2) / window,
                sessions,
                legs,
            );
            last = (now, received, cpu, t);
            next_report += Duration::from_secs(1);
        }
        let next = next_audio.min(next_video).min(next_report);
        let wait = next.saturating_sub(start.elapsed()).min(Duration::from_millis(5));
        std::thread::sleep(wait);
    }
    // What is still in flight.
    let quiet_end = Instant::now() + Duration::from_millis(300);
    while Instant::now() < quiet_end {
        drain(&mut people, &mut buf);
        std::thread::sleep(Duration::from_millis(10));
    }
    let elapsed = start.elapsed().as_secs_f64();
    let total = scrape(metrics).unwrap_or(last.0);
    let cpu = cpu_seconds(dp_pid).unwrap_or(last.2);
    let st = grpc.status().ok();
    let summary = Summary {
        sent,
        received: people.iter().map(|p| p.received).sum(),
        verify_failures: people.iter().map(|p| p.verify_failures).sum(),
        gaps: people.iter().map(|p| p.gaps).sum(),
        interrupted,
    };
    println!("\nsummary after {elapsed:.1} s{}", if interrupted { " (interrupted)" } else { "" });
    println!("  participants sent {}   send errors {}", summary.sent, send_errors);
    println!(
        "  dataplane packets in {:.0}   out {:.0}   out {:.1} Mbit/s   SRTP failures at the SFU {:.0}",
        total.rx - first.rx,
        total.tx - first.tx,
        (total.tx_bytes - first.tx_bytes) * 8.0 / elapsed / 1e6,
        total.srtp_failures
    );
    println!("  received and verified by participants {}   failed to verify {}   sequence gaps {}", summary.received, summary.verify_failures, summary.gaps);
    println!("  dataplane CPU {:.2} s ({:.1}% of one core, {} workers)", cpu - cpu0, 100.0 * (cpu - cpu0) / elapsed, o.workers);
    if let Some(s) = st {
        println!(
            "  node: {} sessions, {} legs, {} tracks, {} subscriptions, {} of {} ports free",
            s.sessions,
            s.legs,
            s.tracks,
            s.subscriptions,
            s.ports_free,
            s.port_range_end - s.port_range_start + 1
        );
    }
    Ok(summary)
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str().with_context(|| format!("{} is not UTF-8", p.display()))
}

/// What the programming-speed benchmark measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProgramSpeed {
    /// Subscription changes per second, one change per `Routes.Apply` (each returns after the
    /// dataplane acked it).
    pub single_changes_per_s: f64,
    /// Subscription changes per second, `batch` changes per `Routes.Apply`.
    pub batched_changes_per_s: f64,
    /// Changes per batched Apply.
    pub batch: usize,
    /// Subscription changes per second, one change per `Routes.Apply`, from `clients`
    /// concurrent callers (the control plane commits what queues up meanwhile as one group).
    pub concurrent_changes_per_s: f64,
    /// Concurrent callers behind `concurrent_changes_per_s`.
    pub clients: usize,
    /// Time from `Routes.Apply` returning (a paused audio subscription resumed) to the first
    /// packet of it reaching the subscriber, µs: p50, p99, max.
    pub first_packet_us: (f64, f64, f64),
    /// Samples behind `first_packet_us`.
    pub samples: usize,
    /// Interval between the publisher's packets, µs (the resolution of `first_packet_us`).
    pub publish_interval_us: u64,
}

/// The programming-speed benchmark: one meeting of `o.size` participants over gRPC; participant 0
/// publishes audio every `interval`; subscription (1 ← 0's audio) is paused and resumed
/// `samples` times, timing Apply-return → first packet; then changes/s, single and batched.
/// `background`: (meetings, participants each) programmed before measuring.
pub fn program_speed(
    o: &Options,
    stop: &Arc<AtomicBool>,
    samples: usize,
    changes_n: usize,
    batch: usize,
    background: (u32, u32),
    clients: usize,
) -> anyhow::Result<ProgramSpeed> {
    let dir = std::env::temp_dir().join(format!("sluice-program-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let scratch = Scratch(dir.clone());
    let mut kids = Children::default();
    let result = program_speed_with(o, stop, &scratch.0, &mut kids, samples, changes_n, batch, background, clients);
    kids.stop();
    drop(scratch);
    result
}

#[expect(clippy::too_many_arguments, reason = "the whole measurement, called once")]
fn program_speed_with(
    o: &Options,
    stop: &Arc<AtomicBool>,
    dir: &Path,
    kids: &mut Children,
    samples: usize,
    changes_n: usize,
    batch: usize,
    background: (u32, u32),
    clients: usize,
) -> anyhow::Result<ProgramSpeed> {
    let (mut grpc, _metrics, _pid) = start_system(o, stop, dir, kids)?;
    for m in 1..=background.0 {
        let (ops, _) = meeting::build(m, background.1.max(2), o.profile, 0);
        grpc.apply(pb::ChangeSet { session: format!("background-{m}"), idempotency_key: String::new(), expected_revision: None, changes: changes(&ops)? })
            .map_err(|e| anyhow::anyhow!("background Routes.Apply: {:?}: {}", e.code(), e.message()))?;
    }
    let session = "program-speed".to_string();
    let (ops, mut people) = meeting::build(0, o.size.max(2), o.profile, 0);
    let r = grpc
        .apply(pb::ChangeSet { session: session.clone(), idempotency_key: String::new(), expected_revision: None, changes: changes(&ops)? })
        .map_err(|e| anyhow::anyhow!("Routes.Apply: {:?}: {}", e.code(), e.message()))?;
    let ports: HashMap<&str, u16> = r.ports.iter().map(|a| (a.leg.as_str(), a.local_port as u16)).collect();
    for q in &mut people {
        q.port = *ports.get(leg_name(q.leg.0).as_str()).context("no port allocated")?;
    }
    // The subscription under test: participant 1 receiving participant 0's audio.
    let spec = ops
        .iter()
        .find_map(|op| match op {
            Op::UpsertSubscription(s) if s.subscriber == people[1].leg && s.track == people[0].seat.audio_track() => Some(s.clone()),
            _ => None,
        })
        .context("the meeting has no subscription 1 <- 0 audio")?;
    let sockets: Vec<UdpSocket> = people.iter().map(|_| UdpSocket::bind("127.0.0.1:0")).collect::<std::io::Result<_>>()?;
    for (p, s) in people.iter_mut().zip(&sockets) {
        p.addr = s.local_addr()?;
        s.send_to(&p.hello(), SocketAddr::from(([127, 0, 0, 1], p.port)))?;
    }
    sockets[1].set_read_timeout(Some(Duration::from_millis(200)))?;
    // Publisher thread: audio every `interval` from participant 0.
    let interval = Duration::from_micros(500);
    let publisher_stop = Arc::new(AtomicBool::new(false));
    let mut publisher = people.remove(0);
    let pub_sock = sockets[0].try_clone()?;
    let pub_dst = SocketAddr::from(([127, 0, 0, 1], publisher.port));
    let ps = publisher_stop.clone();
    let pub_thread = std::thread::spawn(move || {
        let mut tick = 0u64;
        let start = Instant::now();
        while !ps.load(Ordering::Relaxed) {
            let _ = pub_sock.send_to(&publisher.audio(tick), pub_dst);
            tick += 1;
            let next = start + interval * tick as u32;
            if let Some(d) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
        }
    });
    let out_ssrc = spec.out_ssrc.0.to_be_bytes();
    let set_paused = |grpc: &mut Grpc, paused: bool| -> anyhow::Result<()> {
        let mut s = spec.clone();
        s.paused = paused;
        grpc.apply(pb::ChangeSet {
            session: session.clone(),
            idempotency_key: String::new(),
            expected_revision: None,
            changes: vec![pb::Change { change: Some(C::Subscription(subscription(&s))) }],
        })
        .map_err(|e| anyhow::anyhow!("Routes.Apply: {:?}: {}", e.code(), e.message()))?;
        Ok(())
    };
    let is_ours = |b: &[u8]| b.len() >= 12 && b[8..12] == out_ssrc;
    let mut buf = [0u8; 2048];
    let mut lat = Vec::with_capacity(samples);
    for _ in 0..samples {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        set_paused(&mut grpc, true)?;
        // Drain what was already in flight.
        sockets[1].set_nonblocking(true)?;
        std::thread::sleep(Duration::from_millis(3));
        while sockets[1].recv(&mut buf).is_ok() {}
        sockets[1].set_nonblocking(false)?;
        set_paused(&mut grpc, false)?;
        let t0 = Instant::now();
        loop {
            match sockets[1].recv(&mut buf) {
                Ok(n) if is_ours(&buf[..n]) => break,
                Ok(_) => {}
                Err(e) => bail!("no packet after resuming: {e}"),
            }
        }
        lat.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    // Changes/s: toggle the same subscription's pause flag, one change per Apply...
    let t = Instant::now();
    for i in 0..changes_n {
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        set_paused(&mut grpc, i % 2 == 0)?;
    }
    let single = changes_n as f64 / t.elapsed().as_secs_f64();
    // ... and `batch` subscription changes per Apply (every subscription's target layer flips).
    let subs: Vec<SubscriptionSpec> = ops.iter().filter_map(|op| if let Op::UpsertSubscription(s) = op { Some(s.clone()) } else { None }).collect();
    let t = Instant::now();
    let mut done = 0usize;
    let mut round = 0u32;
    while done < changes_n {
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        let chunk: Vec<pb::Change> = (0..batch)
            .map(|k| {
                let mut s = subs[k % subs.len()].clone();
                s.paused = (round + k as u32 / subs.len() as u32) % 2 == 1;
                pb::Change { change: Some(C::Subscription(subscription(&s))) }
            })
            .collect();
        grpc.apply(pb::ChangeSet { session: session.clone(), idempotency_key: String::new(), expected_revision: None, changes: chunk })
            .map_err(|e| anyhow::anyhow!("batched Routes.Apply: {:?}: {}", e.code(), e.message()))?;
        done += batch;
        round += 1;
    }
    let batched = done as f64 / t.elapsed().as_secs_f64();
    // ... and one change per Apply from `clients` concurrent callers, each on a subscription of
    // its own (over one HTTP/2 connection, as one signaling service would).
    let clients = clients.max(1);
    let per_client = changes_n.div_ceil(clients);
    let t = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|k| {
            let mut routes = grpc.routes.clone();
            let (session, s) = (session.clone(), subs[k % subs.len()].clone());
            let stop = stop.clone();
            grpc.rt.spawn(async move {
                for i in 0..per_client {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let mut s = s.clone();
                    s.paused = i % 2 == 0;
                    let change = pb::Change { change: Some(C::Subscription(subscription(&s))) };
                    routes
                        .apply(pb::ChangeSet { session: session.clone(), idempotency_key: String::new(), expected_revision: None, changes: vec![change] })
                        .await?;
                }
                Ok::<_, tonic::Status>(())
            })
        })
        .collect();
    for task in tasks {
        grpc.rt.block_on(task)?.map_err(|e| anyhow::anyhow!("concurrent Routes.Apply: {:?}: {}", e.code(), e.message()))?;
    }
    let concurrent = (per_client * clients) as f64 / t.elapsed().as_secs_f64();
    publisher_stop.store(true, Ordering::Relaxed);
    let _ = pub_thread.join();
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| lat.get(((lat.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0.0);
    Ok(ProgramSpeed {
        single_changes_per_s: single,
        batched_changes_per_s: batched,
        batch,
        concurrent_changes_per_s: concurrent,
        clients,
        first_packet_us: (q(0.5), q(0.99), q(1.0)),
        samples: lat.len(),
        publish_interval_us: interval.as_micros() as u64,
    })
}
