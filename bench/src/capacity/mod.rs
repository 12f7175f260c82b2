//! The capacity benchmark: how many meetings of a realistic mix one Sluice node carries before
//! what users feel (loss, added latency) degrades.
//!
//! ```text
//!   scenario (TOML) ──▶ plan: meetings, legs with their own SRTP keys, tracks, subscriptions
//!                          │ Routes.Apply per meeting (gRPC)
//!   sluice-controlplane ◀──┘ ──deltas──▶ sluice-dataplane (backend under test, pinned workers)
//!   lanes: generator ──paced SRTP──▶ leg ports ──▶ re-encrypted copies ──▶ sink (own keys)
//! ```
//!
//! For each backend in turn the real daemons are started (the demo's start-up, [`crate::live`]),
//! every meeting is programmed over gRPC exactly as a signaling service would, and the load runs
//! in steps: one step in `fixed` mode, a geometric ramp of meetings in `ramp` mode until a step
//! is not sustained (loss at or over `ramp.max_loss`, or p99 one-way added latency at or over
//! `ramp.p99_target_ms`). Every step records what was offered and forwarded, loss and the
//! other path faults, latency percentiles, the dataplane's CPU per worker thread (from
//! `/proc/<pid>/task/*/stat`) and the harness's own CPU. Before that, the harness's ceiling is
//! measured with no forwarder in the path ([`load::Path::Direct`]); a step where the harness was
//! near it (or its threads were busy over 90%) is marked generator-limited.
//!
//! Publishers are adaptive by default ([`publisher`]): they ramp on the transport-cc Sluice sends
//! them, so a step offers what real clients would, and the report shows each publisher's ramp
//! ([`ramp`]).

pub mod load;
pub mod netns;
pub mod plan;
pub mod publisher;
pub mod ramp;
pub mod report;
pub mod scenario;
mod sink;
pub mod source;
mod webinar;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use sluice_controlplane::pb;

use crate::live;
use load::{Impair, Lane, LaneConfig, Path, Shared, StepTotals};
use plan::Plan;
use ramp::Ramps;
use report::{BackendRun, Ceiling, Latency, Report, StepResult, Sustained, WorkerCpu};
use scenario::Scenario;

/// Fixed load or ramp.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One step: `fixed.meetings` for `fixed.duration_s`.
    Fixed,
    /// Meetings grow step by step until a step is not sustained.
    Ramp,
}

/// What a capacity run does.
#[derive(Clone, Debug)]
pub struct Options {
    /// The load.
    pub scenario: Scenario,
    /// Fixed or ramp.
    pub mode: Mode,
    /// Backends to compare, one after the other (each with fresh daemons).
    pub backends: Vec<String>,
    /// Dataplane workers.
    pub workers: u32,
    /// Cores of the dataplane workers.
    pub dataplane_cores: Vec<usize>,
    /// Lanes (generator + sink thread pairs).
    pub lanes: usize,
    /// Cores of the generators, lane i on `generator_cores[i % len]` (empty: not pinned).
    pub generator_cores: Vec<usize>,
    /// Cores of the sinks, likewise.
    pub sink_cores: Vec<usize>,
    /// Leg ports the control plane allocates.
    pub port_range: (u16, u16),
    /// The control plane's `session_affinity_legs` (`None`: its default).
    pub affinity_legs: Option<u32>,
    /// Run the participants in a network namespace across a veth pair.
    pub netns: bool,
    /// Faults to inject (tests).
    pub impair: Impair,
    /// Seconds of the harness-ceiling measurement (0: skip it).
    pub ceiling_s: f64,
    /// Print the live lines.
    pub live: bool,
}

/// One thread's counters: CPU seconds, seconds waiting on a run queue (runnable but not
/// running: the CPU was taken by something else), the core it last ran on.
#[derive(Clone, Copy, Debug, Default)]
struct ThreadStat {
    cpu_s: f64,
    wait_s: f64,
    core: i64,
}

/// The threads of `pid` whose name starts with one of `prefixes`, from `/proc/<pid>/task/*/stat`
/// and `schedstat`: (name, tid) → counters.
fn thread_stats(pid: u32, prefixes: &[&str]) -> HashMap<(String, u32), ThreadStat> {
    // SAFETY: sysconf(3) has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    for e in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let name = stat[open + 1..close].to_string();
        if !prefixes.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        // Fields after the command: 3 (state) is index 0; utime 14 → 11, stime 15 → 12,
        // processor 39 → 36.
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ticks = f.get(11).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0) + f.get(12).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
        let core = f.get(36).and_then(|x| x.parse::<i64>().ok()).unwrap_or(-1);
        // schedstat: ns on the CPU, ns waiting on a run queue, timeslices.
        let sched = std::fs::read_to_string(e.path().join("schedstat")).unwrap_or_default();
        let wait_ns = sched.split_whitespace().nth(1).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
        let tid = e.file_name().to_string_lossy().parse().unwrap_or(0);
        out.insert((name, tid), ThreadStat { cpu_s: ticks / hz, wait_s: wait_ns / 1e9, core });
    }
    out
}

/// The change of `thread_stats` over `secs`.
fn thread_deltas(before: &HashMap<(String, u32), ThreadStat>, after: &HashMap<(String, u32), ThreadStat>, secs: f64) -> Vec<WorkerCpu> {
    let mut v: Vec<WorkerCpu> = after
        .iter()
        .map(|(key, a)| {
            let b = before.get(key).copied().unwrap_or_default();
            WorkerCpu {
                thread: key.0.clone(),
                tid: key.1,
                core: a.core,
                cpu_s: a.cpu_s - b.cpu_s,
                busy: (a.cpu_s - b.cpu_s) / secs,
                runqueue_wait: (a.wait_s - b.wait_s) / secs,
            }
        })
        .collect();
    v.sort_by(|a, b| a.thread.cmp(&b.thread));
    v
}

/// Datagrams the kernel dropped at the UDP sockets bound to `ports` (a full receive queue: the
/// reader did not keep up), from `/proc/net/udp` of this process's network namespace.
fn socket_drops(ports: &dyn Fn(u16) -> bool) -> u64 {
    let text = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            ports(port).then(|| f.last()?.parse::<u64>().ok())?
        })
        .sum()
}

/// The dataplane's drop counters by reason, and its I/O send errors (`send_errors`), from its
/// metrics page.
fn dataplane_drops(metrics: std::net::SocketAddr) -> std::collections::BTreeMap<String, f64> {
    let mut m = std::collections::BTreeMap::new();
    let body = live::metrics_body(metrics).unwrap_or_default();
    for l in body.lines() {
        let key = if l.starts_with("sluice_drops_total{") {
            l.split("reason=\"").nth(1).and_then(|r| r.split('"').next())
        } else if l.starts_with("sluice_io_total{") && l.contains("counter=\"send_errors\"") {
            Some("send_errors")
        } else {
            None
        };
        if let (Some(k), Some(v)) = (key, l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok())) {
            *m.entry(k.to_string()).or_insert(0.0) += v;
        }
    }
    m
}

/// The meeting counts of the steps.
pub fn step_meetings(s: &Scenario, mode: Mode, cap: usize) -> Vec<usize> {
    match mode {
        Mode::Fixed => vec![(s.fixed.meetings as usize).min(cap)],
        Mode::Ramp => {
            let mut v: Vec<usize> = Vec::new();
            let mut x = f64::from(s.ramp.start_meetings);
            for _ in 0..s.ramp.max_steps {
                let n = (x.round() as usize).max(v.last().map_or(1, |l| l + 1)).min(cap);
                if v.last() == Some(&n) {
                    break;
                }
                v.push(n);
                x *= s.ramp.factor;
            }
            v
        }
    }
}

/// The viewer counts of a webinar's steps: `webinar.viewers` (fixed), or from
/// `webinar.start_viewers` growing by `ramp.factor` (at least one more each step) up to
/// `webinar.max_viewers`, which is the last step (ramp); all at most `cap`.
pub fn step_viewers(s: &Scenario, mode: Mode, cap: usize) -> Vec<usize> {
    let Some(w) = &s.webinar else { return Vec::new() };
    match mode {
        Mode::Fixed => vec![(w.viewers as usize).min(cap)],
        Mode::Ramp => {
            let max = (w.max_viewers as usize).min(cap);
            let mut v: Vec<usize> = Vec::new();
            let mut x = f64::from(w.start_viewers);
            while v.len() < s.ramp.max_steps as usize {
                let n = (x.round() as usize).max(v.last().map_or(1, |l| l + 1)).min(max);
                if v.last() == Some(&n) {
                    break;
                }
                v.push(n);
                x *= s.ramp.factor;
            }
            v
        }
    }
}

/// How many of the scenario's meetings fit `ports` legs, up to `want` (adaptive publishers have
/// a send leg each).
fn meetings_fitting(s: &Scenario, want: usize, ports: usize) -> usize {
    let sizes = s.meeting_sizes(want);
    let mut legs = 0usize;
    for (i, n) in sizes.iter().enumerate() {
        legs += *n as usize;
        if s.publishers == scenario::PublisherMode::Adaptive {
            legs += plan::publishers_in(s, *n, s.has_screen_share(i)) as usize;
        }
        if legs > ports {
            return i;
        }
    }
    want
}

/// Runs the whole benchmark; `stop` (SIGINT/SIGTERM) ends it early with what was measured.
pub fn run(o: &Options, stop: &Arc<AtomicBool>) -> anyhow::Result<Report> {
    let s = &o.scenario;
    s.validate()?;
    if o.lanes == 0 || o.lanes > 16 {
        bail!("--lanes must be 1..=16 (got {})", o.lanes);
    }
    let ports = usize::from(o.port_range.1 - o.port_range.0) + 1;
    // `n`: the meetings of the plan (a webinar's are the presenter and one per viewer); `steps`
    // count meetings too.
    let (n, mut plan, steps) = if let Some(w) = &s.webinar {
        let presenter_legs = if s.publishers == scenario::PublisherMode::Adaptive { 2 } else { 1 };
        let want = match o.mode {
            Mode::Fixed => w.viewers as usize,
            Mode::Ramp => *step_viewers(s, o.mode, usize::MAX).last().unwrap_or(&1),
        };
        let viewers = want.min(ports.saturating_sub(presenter_legs));
        if viewers == 0 {
            bail!("--ports {}-{} ({ports} legs) cannot hold the presenter and a viewer", o.port_range.0, o.port_range.1);
        }
        // Viewers at addresses of their own on loopback; in a namespace they share the peer's.
        let plan = Plan::build_webinar(s, viewers, !o.netns)?;
        let steps: Vec<usize> = step_viewers(s, o.mode, viewers).into_iter().map(|v| v + 1).collect();
        let (pin, pout, bout) = plan.nominal_rates(viewers + 1);
        println!(
            "sluice capacity: webinar {:?}, {:?}, mode {:?}: one presenter (audio, camera {:?} kbit/s simulcast, screen {} kbit/s at {} fps) to up to {viewers} receive-only viewers, camera layers {:?} low/mid/high (leg ports {}-{}){}",
            s.name,
            s.srtp_profile()?,
            o.mode,
            s.video.layers_kbps,
            s.screen.kbps,
            s.screen.fps,
            w.camera_mix,
            o.port_range.0,
            o.port_range.1,
            if viewers < want { format!(" — the port range holds {viewers} of the {want} viewers asked for") } else { String::new() }
        );
        println!(
            "  at {viewers} viewers the presenter sends {pin:.0} pkt/s and the schedules ask for {pout:.0} copies/s ({:.1} Mbit/s) out; viewers at {}; {} viewers per Apply{}",
            bout / 1e6,
            if o.netns {
                "the namespace's one address (distinct ports per lane only)".to_string()
            } else {
                format!("addresses of their own ({} … {})", plan::viewer_ip(1), plan::viewer_ip(viewers))
            },
            w.apply_batch,
            if w.promote && o.mode == Mode::Fixed {
                format!("; viewer {} is promoted to speaker halfway through the step for {} s", viewers / 2 + 1, w.promote_s)
            } else {
                String::new()
            }
        );
        println!("  steps (viewers): {:?}", steps.iter().map(|g| g - 1).collect::<Vec<_>>());
        (viewers + 1, plan, steps)
    } else {
        let want = match o.mode {
            Mode::Fixed => s.fixed.meetings as usize,
            Mode::Ramp => *step_meetings(s, o.mode, usize::MAX).last().unwrap_or(&1),
        };
        let n = meetings_fitting(s, want, ports);
        if n == 0 {
            bail!("--ports {}-{} ({ports} legs) cannot hold even the first meeting of the mix", o.port_range.0, o.port_range.1);
        }
        let plan = Plan::build(s, n)?;
        let steps = step_meetings(s, o.mode, n);
        let (pin, pout, bout) = plan.nominal_rates(n);
        println!(
            "sluice capacity: scenario {:?}, {:?}, mode {:?}, up to {n} meetings / {} participants (leg ports {}-{}){}",
            s.name,
            s.srtp_profile()?,
            o.mode,
            plan.participants.len(),
            o.port_range.0,
            o.port_range.1,
            if n < want { format!(" — the port range holds {n} of the {want} meetings asked for") } else { String::new() }
        );
        println!(
            "  at {n} meetings, with every layer flowing, the schedules offer {pin:.0} pkt/s in and ask for {pout:.0} pkt/s ({:.1} Mbit/s) out; publishers: {}",
            bout / 1e6,
            if plan.adaptive { "adaptive (start at 300 kbit/s, add layers as Sluice's transport-cc allows)" } else { "fixed (every layer from the start)" }
        );
        println!("  steps (meetings): {steps:?}");
        (n, plan, steps)
    };
    let ns = if o.netns { Some(netns::NetNs::create()?) } else { None };
    let (bind_ip, sfu_ip) = match &ns {
        Some(ns) => (IpAddr::V4(ns.peer_ip), IpAddr::V4(ns.sfu_ip)),
        None => (IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V4(Ipv4Addr::LOCALHOST)),
    };
    if let Some(ns) = &ns {
        println!("  participants in network namespace {} ({}) across a veth pair to the SFU at {}", ns.name, ns.peer_ip, ns.sfu_ip);
    }
    let lane_cfg = |index: usize, path: Path| LaneConfig {
        index,
        meetings: (0..n).filter(|m| m % o.lanes == index).collect(),
        bind_ip,
        sfu_ip,
        gen_core: o.generator_cores.get(index % o.generator_cores.len().max(1)).copied(),
        sink_core: o.sink_cores.get(index % o.sink_cores.len().max(1)).copied(),
        path,
        impair: o.impair,
        netns: ns.as_ref().map(|n| n.name.clone()),
    };

    // --- The harness's own ceiling (generator → sink, no forwarder, as fast as it goes) and its
    // latency floor (the same, paced, at the first step's load).
    let direct = |path: Path, meetings: usize, secs: f64| -> anyhow::Result<(StepTotals, Latency, f64, f64, f64)> {
        let plan = Arc::new(plan.clone());
        let shared = Shared::new(&plan, o.lanes);
        let lanes: Vec<Lane> = (0..o.lanes).map(|i| Lane::start(lane_cfg(i, path), &plan, &shared)).collect::<anyhow::Result<_>>()?;
        shared.active.store(meetings, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(200));
        shared.step.store(1, Ordering::Relaxed);
        let cpu0: Vec<(u64, u64)> = shared.cpu_ns.iter().map(|(g, s)| (g.load(Ordering::Relaxed), s.load(Ordering::Relaxed))).collect();
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(secs));
        shared.step.store(0, Ordering::Relaxed);
        let secs = t0.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(100));
        let cpu1: Vec<(u64, u64)> = shared.cpu_ns.iter().map(|(g, s)| (g.load(Ordering::Relaxed), s.load(Ordering::Relaxed))).collect();
        shared.stop.store(true, Ordering::Relaxed);
        lanes.into_iter().for_each(Lane::join);
        let busy = |f: fn(&(u64, u64)) -> u64| cpu1.iter().zip(&cpu0).map(|(a, b)| (f(a) - f(b)) as f64 / 1e9).sum::<f64>() / secs / o.lanes as f64;
        let latency = Latency::of(&shared.latency.lock().unwrap_or_else(PoisonError::into_inner)[1]);
        Ok((shared.steps[1].snapshot(), latency, secs, busy(|x| x.0), busy(|x| x.1)))
    };
    let ceiling = if o.ceiling_s > 0.0 {
        let (t, _, secs, generator_busy, sink_busy) = direct(Path::Direct, n, o.ceiling_s)?;
        let first = steps.first().copied().unwrap_or(1);
        let (_, baseline, _, _, _) = direct(Path::DirectPaced, first, o.ceiling_s.min(1.5))?;
        let c = Ceiling {
            seconds: secs,
            lanes: o.lanes,
            generator_pps: t.sent as f64 / secs,
            sink_pps: t.received as f64 / secs,
            sink_auth_failures: t.auth_failures,
            generator_busy,
            sink_busy,
            baseline_meetings: first,
            baseline_latency: baseline,
        };
        println!(
            "  harness ceiling (generator → sink, no forwarder, {:.1} s): generator {:.0} pkt/s protected and sent ({:.0}% busy), sink {:.0} pkt/s received and verified ({:.0}% busy)",
            c.seconds,
            c.generator_pps,
            c.generator_busy * 100.0,
            c.sink_pps,
            c.sink_busy * 100.0
        );
        println!(
            "  harness latency floor (no forwarder, paced, {first} meetings): p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us, max {:.0} us",
            baseline.p50_us, baseline.p99_us, baseline.p999_us, baseline.max_us
        );
        Some(c)
    } else {
        None
    };

    let mut runs = Vec::new();
    for backend in &o.backends {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let r = run_backend(o, backend, &mut plan, &steps, ceiling.as_ref(), sfu_ip, &lane_cfg, stop)?;
        runs.push(r);
    }
    drop(ns);
    Ok(Report::new(o, plan_summary(&plan), ceiling, runs))
}

fn plan_summary(plan: &Plan) -> (usize, usize, usize) {
    (plan.meetings.len(), plan.participants.len(), plan.out_streams.len())
}

#[expect(clippy::too_many_arguments, reason = "one call site; the pieces of one run")]
fn run_backend(
    o: &Options,
    backend: &str,
    plan: &mut Plan,
    steps: &[usize],
    ceiling: Option<&Ceiling>,
    sfu_ip: IpAddr,
    lane_cfg: &dyn Fn(usize, Path) -> LaneConfig,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<BackendRun> {
    let dir = std::env::temp_dir().join(format!("sluice-capacity-{}-{backend}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let scratch = live::Scratch(dir.clone());
    let mut kids = live::Children::default();
    let result = run_backend_with(o, backend, plan, steps, ceiling, sfu_ip, lane_cfg, stop, &scratch.0, &mut kids);
    for (name, pid, status) in kids.stop() {
        println!("  stopped {name} (pid {pid}): {status}");
    }
    if result.is_err() {
        for name in ["dataplane", "controlplane"] {
            let log = dir.join(format!("{name}.log"));
            if log.exists() {
                eprintln!("--- end of {name}.log ---\n{}", live::tail(&log, 10));
            }
        }
    }
    result
}

#[expect(clippy::too_many_arguments, reason = "one call site; the pieces of one run")]
fn run_backend_with(
    o: &Options,
    backend: &str,
    plan: &mut Plan,
    steps: &[usize],
    ceiling: Option<&Ceiling>,
    sfu_ip: IpAddr,
    lane_cfg: &dyn Fn(usize, Path) -> LaneConfig,
    stop: &Arc<AtomicBool>,
    dir: &std::path::Path,
    kids: &mut live::Children,
) -> anyhow::Result<BackendRun> {
    let s = &o.scenario;
    let cores = o.dataplane_cores.iter().map(usize::to_string).collect::<Vec<_>>().join(", ");
    let opts = live::Options {
        meetings: 0,
        size: 0,
        seconds: 0,
        profile: s.srtp_profile()?,
        hd_views: 0,
        workers: o.workers,
        port_range: o.port_range,
        dataplane_extra: format!("backend = \"{backend}\"\ncores = [{cores}]\nlisten_ip = \"{sfu_ip}\"\n"),
        controlplane_extra: o.affinity_legs.map(|n| format!("session_affinity_legs = {n}\n")).unwrap_or_default(),
    };
    println!("\n== backend {backend}: {} dataplane worker(s) on core(s) [{cores}]", o.workers);
    let (mut grpc, metrics, dp_pid) = live::start_system(&opts, stop, dir, kids)?;
    let log = std::fs::read_to_string(dir.join("dataplane.log")).unwrap_or_default();
    if backend == "uring" && log.contains("falling back to mmsg") {
        println!("  note: io_uring is unavailable here; the dataplane fell back to mmsg");
    }

    let cp_pid = kids.pid("sluice-controlplane").unwrap_or(0);

    // --- Program every meeting through gRPC, as production does (a webinar: the presenter now,
    // the viewers step by step while the presenter sends).
    let t0 = Instant::now();
    let mut subscriptions = 0usize;
    let mut programmer = None;
    if plan.webinar.is_some() {
        programmer = Some(webinar::Programmer::presenter(&mut grpc, plan)?);
    } else {
        for (m, meeting) in plan.meetings.iter().enumerate() {
            let changes = live::changes(&meeting.ops)?;
            subscriptions += changes.iter().filter(|c| matches!(c.change, Some(pb::change::Change::Subscription(_)))).count();
            let req = pb::ChangeSet { session: format!("capacity-{m}"), idempotency_key: format!("capacity-{m}"), expected_revision: Some(0), changes };
            let r = grpc
                .apply(req)
                .map_err(|e| anyhow::anyhow!("Routes.Apply for meeting {m} ({} participants): {:?}: {}", meeting.size, e.code(), e.message()))?;
            let ports: HashMap<&str, u16> = r.ports.iter().map(|a| (a.leg.as_str(), a.local_port as u16)).collect();
            let port = |leg: u32| ports.get(live::leg_name(leg).as_str()).copied().with_context(|| format!("no port allocated for {}", live::leg_name(leg)));
            for p in &mut plan.participants[meeting.first..meeting.first + meeting.size as usize] {
                p.port = port(p.leg.0)?;
                if let Some(send) = &mut p.send {
                    send.port = port(send.leg.0)?;
                }
            }
        }
    }
    let mut programming_s = t0.elapsed().as_secs_f64();
    let st = grpc.status().map_err(|e| anyhow::anyhow!("Node.GetStatus: {e}"))?;
    println!(
        "  programmed {} over gRPC in {programming_s:.2} s: {} sessions, {} legs, {} tracks, {} subscriptions (generation {})",
        if plan.webinar.is_some() { "the presenter".to_string() } else { format!("{} meetings", plan.meetings.len()) },
        st.sessions,
        st.legs,
        st.tracks,
        st.subscriptions,
        st.dataplane_generation
    );
    let journal = webinar::journal(&dir.join("state"));
    println!("  control plane journal: {journal}");

    // --- Lanes: sockets, hellos, threads.
    let plan_arc = Arc::new(plan.clone());
    let shared = Shared::new(plan, o.lanes);
    let lanes: Vec<Lane> = (0..o.lanes).map(|i| Lane::start(lane_cfg(i, Path::Sfu), &plan_arc, &shared)).collect::<anyhow::Result<_>>()?;
    std::thread::sleep(Duration::from_millis(300));

    // --- A webinar's presenter sends alone first: an adaptive one ramps to its three layers (up
    // to 20 s), then the daemons' memory is the baseline each viewer's is measured from.
    let mut webinar_run = None;
    if plan.webinar.is_some() {
        let t = Instant::now();
        shared.active.store(1, Ordering::Relaxed);
        let layers = || shared.ramps.lock().unwrap_or_else(PoisonError::into_inner)[0].as_ref().map_or(3, |r| r.layers);
        std::thread::sleep(Duration::from_millis(500));
        while layers() < 3 && t.elapsed() < Duration::from_secs(20) && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let presenter_layers = layers();
        let baseline_rss = report::Rss::of(dp_pid, cp_pid);
        println!(
            "  the presenter sent alone for {:.1} s ({presenter_layers} camera layer(s)); memory before any viewer: dataplane {:.1} MB, control plane {:.1} MB",
            t.elapsed().as_secs_f64(),
            baseline_rss.dataplane_kb as f64 / 1024.0,
            baseline_rss.controlplane_kb as f64 / 1024.0
        );
        webinar_run = Some(report::WebinarRun {
            addresses: match plan.participants.get(1).and_then(|p| p.ip) {
                Some(_) => format!(
                    "each viewer its own loopback address ({} …), the leg's programmed remote; one wildcard-bound socket per lane, the viewers' own datagrams sent from their address with IP_PKTINFO",
                    plan::viewer_ip(1)
                ),
                None => "the lane socket's address (distinct ports per lane only)".to_string(),
            },
            baseline_rss,
            presenter_layers,
            warmup_s: t.elapsed().as_secs_f64(),
            programming: report::Programming::default(),
        });
    }

    let lane_ports: Vec<u16> = lanes.iter().map(|l| l.addr.port()).collect();
    let is_lane = |p: u16| lane_ports.contains(&p);
    let range = o.port_range;
    let in_range = |p: u16| (range.0..=range.1).contains(&p);
    let mut results = Vec::new();
    let mut live_state = LiveState::new(&shared, metrics, dp_pid);
    if o.live {
        println!(
            "  {:>5} {:>4} {:>5} {:>6} {:>10} {:>10} {:>8} {:>8} {:>8} {:>7} {:>6} {:>6}",
            "t", "step", "meet", "parts", "in pkt/s", "fwd pkt/s", "fwd Mb/s", "loss %", "p99 ms", "dp cpu", "gen", "sink"
        );
    }
    let start = Instant::now();
    let mut outcome = Ok(());
    // The planned steps; a step that is not sustained is run once more to confirm it, then (ramp)
    // up to two more steps between the last sustained count and the first confirmed failure,
    // bisecting towards the largest sustained meeting count.
    let mut queue: std::collections::VecDeque<usize> = steps.iter().copied().collect();
    let (mut best_ok, mut refinements, mut retried) = (0usize, 0u32, None::<usize>);
    let mut step = 0usize;
    while let Some(meetings) = queue.pop_front() {
        step += 1;
        if stop.load(Ordering::Relaxed) || step >= load::PROMOTION_STEP {
            break;
        }
        let (window, mut settle) = match o.mode {
            Mode::Fixed => (s.fixed.duration_s, s.ramp.settle_s.min(1.0)),
            Mode::Ramp => (s.ramp.step_s - s.ramp.settle_s, s.ramp.settle_s),
        };
        shared.step.store(0, Ordering::Relaxed);
        shared.active.store(meetings, Ordering::Relaxed);
        // A webinar step first subscribes its new viewers; their video starts at a keyframe the
        // SFU asks the presenter for (at most every 200 ms per layer): at least a second to settle.
        let mut step_programming = None;
        if let Some(prog) = programmer.as_mut() {
            let before = prog.viewers;
            let batch = s.webinar.as_ref().map_or(100, |w| w.apply_batch as usize);
            let pr = match prog.program_to(&mut grpc, plan, meetings - 1, batch, &lanes, &shared) {
                Ok(pr) => pr,
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            };
            if pr.viewers > 0 && o.live {
                println!(
                    "  programmed {} viewers ({} to {}) in {} Applies in {:.2} s ({:.0} viewers/s, slowest Apply {:.0} ms)",
                    pr.viewers,
                    before + 1,
                    prog.viewers,
                    pr.applies,
                    pr.seconds,
                    pr.viewers as f64 / pr.seconds.max(1e-9),
                    pr.max_apply_ms
                );
            }
            programming_s += pr.seconds;
            step_programming = Some((before, pr));
            settle = settle.max(1.0);
        }
        sleep_live(o, &shared, &mut live_state, &start, step, meetings, plan.participants_in(meetings), settle, stop, kids);
        let me = std::process::id();
        let (cpu0, own0) = (thread_stats(dp_pid, &["worker-"]), thread_stats(me, &["gen-", "sink-"]));
        let (drops_sfu0, drops_sink0) = (socket_drops(&in_range), socket_drops(&is_lane));
        let dp0 = live::scrape(metrics).unwrap_or_default();
        let tx0 = live::per_worker(&live::metrics_body(metrics).unwrap_or_default(), "sluice_tx_packets_total");
        let drops0 = dataplane_drops(metrics);
        let (kf0, pli0) = (shared.keyframe_requests.load(Ordering::Relaxed), shared.plis_sent.load(Ordering::Relaxed));
        shared.step.store(step as u8, Ordering::Relaxed);
        let t = Instant::now();
        let parts = plan.participants_in(meetings);
        let promotion = match (o.mode, programmer.as_mut(), plan.webinar.as_ref().and_then(|w| w.promotion.as_ref())) {
            (Mode::Fixed, Some(prog), Some(p)) => {
                // Halfway through: the viewer is promoted, speaks, and is demoted.
                let speaker = p.participant;
                let promote_s = s.webinar.as_ref().map_or(3.0, |w| w.promote_s);
                sleep_live(o, &shared, &mut live_state, &start, step, meetings, parts, window / 2.0, stop, kids);
                let promoted = (|| -> anyhow::Result<report::PromotionResult> {
                    let (subscribers, promote_apply_ms) = prog.promote(&mut grpc, plan)?;
                    let at_s = t.elapsed().as_secs_f64();
                    let quiet = Arc::new(AtomicBool::new(false));
                    let lane = &lanes[speaker % lanes.len()];
                    let speaking = webinar::speak(plan, shared.clone(), lane.socket.clone(), sfu_ip, subscribers, quiet.clone())?;
                    if o.live {
                        println!("  promoted viewer {speaker} to speaker ({subscribers} subscribers, Apply {promote_apply_ms:.0} ms)");
                    }
                    sleep_live(o, &shared, &mut live_state, &start, step, meetings, parts, promote_s, stop, kids);
                    quiet.store(true, Ordering::Relaxed);
                    let _ = speaking.join();
                    let spoke_s = t.elapsed().as_secs_f64() - at_s;
                    // Its last copies land before its subscriptions go.
                    std::thread::sleep(Duration::from_millis(300));
                    let demote_apply_ms = prog.demote(&mut grpc, plan)?;
                    if o.live {
                        println!("  demoted viewer {speaker} after {spoke_s:.1} s (Apply {demote_apply_ms:.0} ms)");
                    }
                    Ok(report::PromotionResult {
                        speaker,
                        subscribers,
                        at_s,
                        spoke_s,
                        promote_apply_ms,
                        demote_apply_ms,
                        totals: StepTotals::default(),
                        listeners: 0,
                        latency: Latency::default(),
                        clean: false,
                    })
                })();
                match promoted {
                    Ok(p) => {
                        let left = (window - t.elapsed().as_secs_f64()).max(0.0);
                        sleep_live(o, &shared, &mut live_state, &start, step, meetings, parts, left, stop, kids);
                        Some(p)
                    }
                    Err(e) => {
                        outcome = Err(e);
                        break;
                    }
                }
            }
            _ => {
                sleep_live(o, &shared, &mut live_state, &start, step, meetings, parts, window, stop, kids);
                None
            }
        };
        shared.step.store(0, Ordering::Relaxed);
        let secs = t.elapsed().as_secs_f64();
        let (cpu1, own1) = (thread_stats(dp_pid, &["worker-"]), thread_stats(me, &["gen-", "sink-"]));
        let (drops_sfu1, drops_sink1) = (socket_drops(&in_range), socket_drops(&is_lane));
        let dp1 = live::scrape(metrics).unwrap_or_default();
        let tx1 = live::per_worker(&live::metrics_body(metrics).unwrap_or_default(), "sluice_tx_packets_total");
        let drops1 = dataplane_drops(metrics);
        let dataplane_drops: std::collections::BTreeMap<String, f64> = drops1
            .iter()
            .map(|(k, v)| (k.clone(), v - drops0.get(k).copied().unwrap_or(0.0)))
            .filter(|(k, v)| *v > 0.0 && k != "rtcp_consumed" && k != "layer_filtered")
            .collect();
        // The step's last copies are still in flight: give them a moment (stamped 0 meanwhile).
        std::thread::sleep(Duration::from_millis(250));
        if let Err(e) = kids.check_alive("sluice-dataplane") {
            outcome = Err(e);
            break;
        }
        let totals = shared.steps[step].snapshot();
        let hist = shared.latency.lock().unwrap_or_else(PoisonError::into_inner)[step].clone();
        let workers = thread_deltas(&cpu0, &cpu1, secs);
        let harness = thread_deltas(&own0, &own1, secs);
        let dp_cpu_s: f64 = workers.iter().map(|w| w.cpu_s).sum();
        let busiest = |prefix: &str| harness.iter().filter(|h| h.thread.starts_with(prefix)).map(|h| h.busy).fold(0.0, f64::max);
        let (gen_busy, sink_busy) = (busiest("gen-"), busiest("sink-"));
        let (_, nominal_out, _) = plan.nominal_rates(meetings);
        let publisher_layers = layers_now(&shared, meetings);
        let tx_total: f64 = tx1.iter().map(|(w, v)| v - tx0.get(w).copied().unwrap_or(0.0)).sum();
        let worker_tx = tx1
            .iter()
            .map(|(w, v)| {
                let d = v - tx0.get(w).copied().unwrap_or(0.0);
                report::WorkerTx { worker: w.clone(), packets_per_s: d / secs, share: if tx_total > 0.0 { d / tx_total } else { 0.0 } }
            })
            .collect();
        let rss = report::Rss::of(dp_pid, cp_pid);
        let webinar = match (step_programming, programmer.as_ref(), webinar_run.as_ref()) {
            (Some((before, programming)), Some(prog), Some(run)) => {
                let viewers = meetings - 1;
                let per_viewer = |now: u64, base: u64| (now as f64 - base as f64) * 1024.0 / viewers.max(1) as f64;
                Some(report::WebinarStep {
                    viewers,
                    programming,
                    first_packet: if programming.viewers > 0 { prog.first_packets(&shared, before + 1, prog.viewers) } else { report::FirstPacket::default() },
                    dataplane_bytes_per_viewer: per_viewer(rss.dataplane_kb, run.baseline_rss.dataplane_kb),
                    controlplane_bytes_per_viewer: per_viewer(rss.controlplane_kb, run.baseline_rss.controlplane_kb),
                    promotion,
                })
            }
            _ => None,
        };
        let r = StepResult::new(StepInputs {
            backend,
            step,
            meetings,
            participants: plan.participants_in(meetings),
            seconds: secs,
            totals,
            nominal_out_pps: nominal_out,
            publisher_layers,
            dataplane_tx_pps: (dp1.tx - dp0.tx) / secs,
            dataplane_rx_pps: (dp1.rx - dp0.rx) / secs,
            latency: Latency::of(&hist),
            workers,
            harness,
            socket_drops_sfu: drops_sfu1.saturating_sub(drops_sfu0),
            dataplane_drops,
            socket_drops_harness: if o.netns { None } else { Some(drops_sink1.saturating_sub(drops_sink0)) },
            dp_cpu_s,
            gen_busy,
            sink_busy,
            shared_core: o.generator_cores.len() == 1 && o.generator_cores == o.sink_cores,
            ceiling,
            keyframe_requests: shared.keyframe_requests.load(Ordering::Relaxed) - kf0,
            plis_sent: shared.plis_sent.load(Ordering::Relaxed) - pli0,
            scenario: s,
            worker_tx,
            rss,
            webinar,
        });
        if o.live {
            println!("  {}", r.one_line());
        }
        let sustained = r.sustained;
        results.push(r);
        if o.mode == Mode::Ramp {
            if sustained {
                best_ok = best_ok.max(meetings);
            } else if retried != Some(meetings) {
                // One failed step can be a hiccup of a shared machine: confirm it once.
                retried = Some(meetings);
                queue.push_front(meetings);
            } else {
                queue.clear();
                let mid = best_ok + (meetings - best_ok) / 2;
                // (A webinar does not step back: that would unsubscribe viewers.)
                if refinements < 2 && mid > best_ok && mid < meetings && plan.webinar.is_none() {
                    refinements += 1;
                    queue.push_back(mid);
                }
            }
        }
    }
    // Publishers stop; what is still queued anywhere lands, then every step is judged again on
    // its final counts (a copy that arrived after the step's grace is late, not lost).
    shared.active.store(0, Ordering::Relaxed);
    let quiet_until = Instant::now() + Duration::from_secs(3);
    let mut last = u64::MAX;
    while Instant::now() < quiet_until {
        std::thread::sleep(Duration::from_millis(200));
        let now = sums(&shared).1;
        if now == last {
            break; // nothing arrived for 200 ms
        }
        last = now;
    }
    shared.stop.store(true, Ordering::Relaxed);
    lanes.into_iter().for_each(Lane::join);
    outcome?;
    let publishers = Ramps::of(std::mem::take(&mut *shared.ramps.lock().unwrap_or_else(PoisonError::into_inner)).into_iter().flatten().collect());
    {
        let hists = shared.latency.lock().unwrap_or_else(PoisonError::into_inner);
        for r in &mut results {
            r.finalize(shared.steps[r.step].snapshot(), Latency::of(&hists[r.step]), s);
            let others = r.totals;
            if let Some(p) = r.webinar.as_mut().and_then(|w| w.promotion.as_mut()) {
                p.totals = shared.steps[load::PROMOTION_STEP].snapshot();
                p.latency = Latency::of(&hists[load::PROMOTION_STEP]);
                p.listeners = shared.promotion_listeners.load(Ordering::Relaxed);
                let faultless = |t: &StepTotals| {
                    t.lost() == 0 && t.duplicates == 0 && t.reordered == 0 && t.seq_gaps == 0 && t.ts_errors == 0 && t.auth_failures == 0 && t.misrouted == 0
                };
                p.clean = faultless(&others) && faultless(&p.totals) && p.totals.received > 0 && p.listeners == p.subscribers as u64;
            }
        }
    }
    let best = results.iter().filter(|r| r.sustained).max_by(|a, b| a.forwarded_pps.total_cmp(&b.forwarded_pps));
    let max_sustained = best.map(|r| Sustained {
        step: r.step,
        meetings: r.meetings,
        participants: r.participants,
        forwarded_pps: r.forwarded_pps,
        forwarded_bps: r.forwarded_bps,
        dataplane_cpu: r.dataplane_cpu_s / r.seconds,
        generator_limited: r.generator_limited,
        viewers: r.webinar.as_ref().map(|w| w.viewers),
    });
    // The journal as the run left it (its size has grown with every Apply).
    let journal = webinar::journal(&dir.join("state"));
    let mut legs = st.legs as usize;
    if let (Some(prog), Some(run)) = (programmer.as_ref(), webinar_run.as_mut()) {
        subscriptions = prog.viewers * 3;
        legs = grpc.status().map_or(legs, |st| st.legs as usize);
        run.programming = report::Programming {
            viewers: prog.viewers,
            applies: results.iter().filter_map(|r| Some(r.webinar.as_ref()?.programming.applies)).sum(),
            seconds: results.iter().filter_map(|r| Some(r.webinar.as_ref()?.programming.seconds)).sum(),
            max_apply_ms: results.iter().filter_map(|r| Some(r.webinar.as_ref()?.programming.max_apply_ms)).fold(0.0, f64::max),
        };
    }
    Ok(BackendRun {
        backend: backend.to_string(),
        workers: o.workers,
        programming_s,
        meetings_programmed: programmer.as_ref().map_or(plan.meetings.len(), |p| p.viewers + 1),
        legs,
        subscriptions,
        steps: results,
        max_sustained,
        publishers,
        journal,
        webinar: webinar_run,
    })
}

/// Camera publishers of the first `meetings` meetings sending 1, 2 and 3 layers now.
fn layers_now(shared: &Shared, meetings: usize) -> [usize; 3] {
    let mut n = [0; 3];
    let ramps = shared.ramps.lock().unwrap_or_else(PoisonError::into_inner);
    for r in ramps.iter().flatten().filter(|r| r.camera && r.meeting < meetings && r.layers > 0) {
        n[usize::from(r.layers.min(3)) - 1] += 1;
    }
    n
}

/// What [`StepResult::new`] needs.
pub(crate) struct StepInputs<'a> {
    pub(crate) backend: &'a str,
    pub(crate) step: usize,
    pub(crate) meetings: usize,
    pub(crate) participants: usize,
    pub(crate) seconds: f64,
    pub(crate) totals: StepTotals,
    pub(crate) nominal_out_pps: f64,
    pub(crate) publisher_layers: [usize; 3],
    pub(crate) dataplane_tx_pps: f64,
    pub(crate) dataplane_rx_pps: f64,
    pub(crate) latency: Latency,
    pub(crate) workers: Vec<WorkerCpu>,
    pub(crate) harness: Vec<WorkerCpu>,
    pub(crate) socket_drops_sfu: u64,
    pub(crate) dataplane_drops: std::collections::BTreeMap<String, f64>,
    pub(crate) socket_drops_harness: Option<u64>,
    pub(crate) dp_cpu_s: f64,
    pub(crate) gen_busy: f64,
    pub(crate) sink_busy: f64,
    pub(crate) shared_core: bool,
    pub(crate) ceiling: Option<&'a Ceiling>,
    pub(crate) keyframe_requests: u64,
    pub(crate) plis_sent: u64,
    pub(crate) scenario: &'a Scenario,
    pub(crate) worker_tx: Vec<report::WorkerTx>,
    pub(crate) rss: report::Rss,
    pub(crate) webinar: Option<report::WebinarStep>,
}

/// Cumulative numbers for the live line.
struct LiveState {
    metrics: std::net::SocketAddr,
    pid: u32,
    at: Instant,
    sent: u64,
    received: u64,
    received_bytes: u64,
    expected: u64,
    dp_cpu: f64,
    harness: Vec<(u64, u64)>,
}

fn sums(shared: &Shared) -> (u64, u64, u64, u64) {
    shared.steps.iter().map(load::StepCounters::snapshot).fold((0, 0, 0, 0), |a, t| (a.0 + t.sent, a.1 + t.received, a.2 + t.received_bytes, a.3 + t.expected))
}

impl LiveState {
    fn new(shared: &Shared, metrics: std::net::SocketAddr, pid: u32) -> Self {
        let (sent, received, received_bytes, expected) = sums(shared);
        Self {
            metrics,
            pid,
            at: Instant::now(),
            sent,
            received,
            received_bytes,
            expected,
            dp_cpu: thread_stats(pid, &["worker-"]).values().map(|v| v.cpu_s).sum(),
            harness: shared.cpu_ns.iter().map(|(g, s)| (g.load(Ordering::Relaxed), s.load(Ordering::Relaxed))).collect(),
        }
    }
}

/// Sleeps `secs`, printing a live line every second.
#[expect(clippy::too_many_arguments, reason = "the live line's inputs")]
fn sleep_live(
    o: &Options,
    shared: &Shared,
    st: &mut LiveState,
    start: &Instant,
    step: usize,
    meetings: usize,
    parts: usize,
    secs: f64,
    stop: &AtomicBool,
    kids: &mut live::Children,
) {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < end && !stop.load(Ordering::Relaxed) {
        let next = (st.at + Duration::from_secs(1)).min(end);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        if st.at.elapsed() < Duration::from_millis(950) {
            continue;
        }
        if kids.check_alive("sluice-dataplane").is_err() {
            return;
        }
        let now = LiveState::new(shared, st.metrics, st.pid);
        let dt = now.at.duration_since(st.at).as_secs_f64();
        let p99 = {
            let mut h = shared.recent.lock().unwrap_or_else(PoisonError::into_inner);
            let v = if h.is_empty() { 0.0 } else { h.value_at_quantile(0.99) as f64 / 1e6 };
            h.reset();
            v
        };
        let exp = now.expected - st.expected;
        let got = now.received - st.received;
        let busy = |i: usize, f: fn(&(u64, u64)) -> u64| (f(&now.harness[i]) - f(&st.harness[i])) as f64 / 1e9 / dt * 100.0;
        if o.live {
            println!(
                "  {:>4.0}s {:>4} {:>5} {:>6} {:>10.0} {:>10.0} {:>8.1} {:>8.3} {:>8.2} {:>6.0}% {:>5.0}% {:>5.0}%",
                start.elapsed().as_secs_f64(),
                if shared.step.load(Ordering::Relaxed) == 0 { "-".to_string() } else { step.to_string() },
                meetings,
                parts,
                (now.sent - st.sent) as f64 / dt,
                got as f64 / dt,
                (now.received_bytes - st.received_bytes) as f64 * 8.0 / dt / 1e6,
                if exp > 0 { 100.0 * exp.saturating_sub(got) as f64 / exp as f64 } else { 0.0 },
                p99,
                (now.dp_cpu - st.dp_cpu) / dt * 100.0,
                busy(0, |x| x.0),
                busy(0, |x| x.1),
            );
        }
        *st = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_webinar_ramp_doubles_the_viewers_up_to_the_maximum() {
        let s = Scenario::parse(include_str!("../../scenarios/webinar.toml")).expect("webinar.toml");
        assert_eq!(step_viewers(&s, Mode::Ramp, usize::MAX), vec![50, 100, 200, 400, 800, 1600, 3200, 6400, 10_000]);
        assert_eq!(step_viewers(&s, Mode::Ramp, 500), vec![50, 100, 200, 400, 500]);
        assert_eq!(step_viewers(&s, Mode::Fixed, usize::MAX), vec![1000]);
        assert!(step_viewers(&Scenario::default(), Mode::Fixed, 10).is_empty());
    }
}
