//! `sluice-bench`: Sluice's capacity benchmark, demo, and forwarding and programming benchmarks.
//!
//! `capacity` (the README's main job runs it briefly) measures how many meetings of a scenario's
//! mix the whole system carries: see `sluice_bench::capacity`.
//!
//! `demo` runs the whole system on loopback: it starts the real `sluice-dataplane` and
//! `sluice-controlplane` (found next to this executable), programs simulated meetings through the
//! control plane's gRPC API, and every participant sends real-time SRTP audio and three-layer
//! simulcast video with its own keys from its own UDP socket; the dataplane decrypts, rewrites and
//! re-encrypts per subscriber, and every participant decrypts what it receives with its own keys.
//! Live numbers once a second; a summary at the end (non-zero exit if anything failed to verify).
//!
//! `demo --in-process` runs the same meetings through the sans-IO forwarding core inside this
//! process, with no sockets and no daemons.

use sluice_bench::meeting;

use std::time::{Duration, Instant as WallInstant};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use sluice_core::forward::{Core, CoreConfig, OutBatch};
use sluice_core::ids::Generation;
use sluice_core::srtp::Profile;
use sluice_core::table::Delta;
use sluice_core::time::Instant;
use sluice_core::verdict::DropReason;

#[derive(Debug, Parser)]
#[command(version, about = "Sluice demo and capacity benchmark")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The whole system on loopback, with live numbers: starts sluice-dataplane and
    /// sluice-controlplane, programs meetings over gRPC, and runs participants sending and
    /// verifying real-time SRTP over UDP (or, with --in-process, the forwarding core alone).
    Demo(DemoArgs),
    /// Packets out per second through the real dataplane daemon, per I/O backend and fan-out,
    /// beside a one-datagram-per-syscall loop, and latency at half load; with --calls, N
    /// one-to-one audio calls instead, with a port per leg and with every leg on one shared port.
    Forward(ForwardArgs),
    /// Programming speed through the real control plane and dataplane: subscription changes
    /// per second (one per Apply, and batched), and the time from Apply returning to the first
    /// packet on the changed route.
    Program(ProgramArgs),
    /// Capacity: how many meetings of a realistic mix the node carries. Starts the real daemons
    /// per backend, programs every meeting over gRPC with per-leg SRTP keys, offers paced SRTP
    /// (fixed load or a ramp), verifies every copy at its subscriber, and reports loss, latency,
    /// dataplane CPU per core and the harness's own ceiling (table, JSON, SVG).
    Capacity(Box<CapacityArgs>),
    /// The XDP stage and AF_XDP on a veth pair between two network namespaces it creates (root):
    /// a flood dropped by the XDP shield vs the same flood dropped by the workers, and packets out
    /// per second at fan-out 4 for AF_XDP vs the socket backends.
    Xdp(XdpArgs),
    /// Top-N audio: the dataplane process's CPU for an audio-heavy meeting per track vs top-3
    /// slots with the worker's and with the XDP stage's drop of silence, on a veth pair between
    /// two network namespaces it creates (root).
    Audio(AudioArgs),
    /// Relayed legs: the dataplane's CPU per forwarded packet for participants reaching it
    /// through its TURN server (UDP, TCP, TLS) against the same calls direct, in one run on
    /// loopback.
    Turn(TurnArgs),
    /// Relayed legs with the node on a core of its own, on a veth pair between two network
    /// namespaces it creates (root): the node core's busy time per forwarded packet for
    /// participants behind TURN against the same calls direct, with the XDP stage unwrapping
    /// UDP ChannelData and without it.
    TurnNetns(TurnNetnsArgs),
}

#[derive(Debug, clap::Args)]
struct TurnNetnsArgs {
    /// Two-party calls per row (at most 32).
    #[arg(long, default_value_t = 32)]
    calls: u32,
    /// Timed seconds per row (after 1 s of warm-up).
    #[arg(long, default_value_t = 8.0)]
    seconds: f64,
    /// Milliseconds between two packets of a participant.
    #[arg(long, default_value_t = 1)]
    tick_ms: u64,
    /// Also write the rows to this JSON file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Debug, clap::Args)]
struct TurnArgs {
    /// Two-party calls per row (at most 16; 50 audio packets/s per participant).
    #[arg(long, default_value_t = 8)]
    calls: u32,
    /// Timed seconds per row (after 1 s of warm-up).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Also write the rows to this JSON file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Debug, clap::Args)]
struct AudioArgs {
    /// Participants in the meeting.
    #[arg(long, default_value_t = 100)]
    participants: u32,
    /// Timed seconds per row (after 3 s of warm-up).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Also write the rows to this JSON file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Debug, clap::Args)]
struct XdpArgs {
    /// Seconds per figure.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Backends for the fan-out comparison.
    #[arg(long, value_delimiter = ',', default_value = "uring,mmsg,mmsg-shield,xsk,xsk-ring")]
    backends: Vec<String>,
    /// Also write every figure to this JSON file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Needs sluice-dataplane and sluice-controlplane next to this executable. \
Scenarios: bench/scenarios/*.toml (the built-in default is bench/scenarios/default.toml, the design \
mix). A run is sustained while loss < ramp.max_loss and p99 < ramp.p99_target_ms; a step where the \
harness itself was near its measured ceiling is marked generator-limited. A scenario with a [webinar] table (bench/scenarios/webinar.toml) runs one presenter to N receive-only viewers: fixed mode holds webinar.viewers (--viewers), ramp mode grows the viewers up to webinar.max_viewers (--max-viewers).")]
struct CapacityArgs {
    /// Scenario TOML (default: the built-in design mix).
    #[arg(long)]
    scenario: Option<std::path::PathBuf>,
    /// fixed: one step of fixed.meetings for fixed.duration_s; ramp: meetings grow until a step
    /// is not sustained.
    #[arg(long, value_enum, default_value_t = ModeArg::Ramp)]
    mode: ModeArg,
    /// Override fixed.meetings.
    #[arg(long)]
    meetings: Option<u32>,
    /// Override fixed.duration_s (fixed) or ramp.step_s (ramp), seconds.
    #[arg(long)]
    seconds: Option<f64>,
    /// Override ramp.max_steps.
    #[arg(long)]
    max_steps: Option<u32>,
    /// Override the scenario's SRTP profile (gcm, gcm256, cm80, cm32).
    #[arg(long)]
    profile: Option<String>,
    /// Dataplane backends to compare, one after the other with fresh daemons (uring, mmsg).
    #[arg(long, value_delimiter = ',', default_value = "mmsg,uring")]
    backends: Vec<String>,
    /// Dataplane worker threads.
    #[arg(long, default_value_t = 1)]
    workers: u32,
    /// Cores of the dataplane workers (default: the last WORKERS cores).
    #[arg(long, value_delimiter = ',')]
    dataplane_cores: Vec<usize>,
    /// Generator + sink thread pairs.
    #[arg(long, default_value_t = 1)]
    lanes: usize,
    /// Core of the generator threads (default: core 0); a list spreads the lanes' generators
    /// over its cores in turn.
    #[arg(long, value_delimiter = ',')]
    generator_core: Vec<usize>,
    /// Core of the sink threads (default: core 0); a list spreads the lanes' sinks over its
    /// cores in turn (a webinar's sinks verify every copy: give them cores).
    #[arg(long, value_delimiter = ',')]
    sink_core: Vec<usize>,
    /// Local UDP ports the control plane allocates to legs, FIRST-LAST (default: 30000-31799;
    /// a webinar, a leg per viewer: 20000-31799).
    #[arg(long, value_parser = parse_range)]
    ports: Option<(u16, u16)>,
    /// Webinar: override webinar.viewers (fixed mode).
    #[arg(long)]
    viewers: Option<u32>,
    /// The control plane's `session_affinity_legs`: a session keeps its legs on one worker until
    /// it has this many (default: the control plane's, 64; 1 spreads every leg).
    #[arg(long)]
    affinity_legs: Option<u32>,
    /// Webinar: override webinar.max_viewers (the ramp's last step).
    #[arg(long)]
    max_viewers: Option<u32>,
    /// Webinar, fixed mode: promote a viewer to speaker halfway through the step, then demote
    /// it (webinar.promote).
    #[arg(long)]
    promote: bool,
    /// Run the participants in a network namespace joined by a veth pair (created and deleted by
    /// the bench; needs root and `ip`).
    #[arg(long)]
    netns: bool,
    /// Seconds of the harness-ceiling measurement before the runs (0: skip).
    #[arg(long, default_value_t = 2.0)]
    ceiling_seconds: f64,
    /// Write every figure to this JSON file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Write the plot (forwarded rate and p99 against offered load) to this SVG file.
    #[arg(long)]
    svg: Option<std::path::PathBuf>,
    /// Fault injection (for tests): drop every Nth datagram SFU → sinks.
    #[arg(long, default_value_t = 0, hide_short_help = true)]
    impair_drop_every: u64,
    /// Fault injection: hold every Nth datagram SFU → sinks behind the next one.
    #[arg(long, default_value_t = 0, hide_short_help = true)]
    impair_reorder_every: u64,
    /// Fault injection: deliver every Nth datagram SFU → sinks twice.
    #[arg(long, default_value_t = 0, hide_short_help = true)]
    impair_duplicate_every: u64,
    /// Fault injection: publishers skip a sequence number every Nth packet of a stream.
    #[arg(long, default_value_t = 0, hide_short_help = true)]
    impair_seq_gap_every: u64,
    /// Fault injection: the sinks of the first N participants hold a wrong key.
    #[arg(long, default_value_t = 0, hide_short_help = true)]
    impair_wrong_key_legs: usize,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ModeArg {
    /// One step at fixed load.
    Fixed,
    /// Step the load up until it is not sustained.
    Ramp,
}

#[derive(Debug, clap::Args)]
struct ProgramArgs {
    /// Participants in the meeting (participant 0 publishes audio every 0.5 ms).
    #[arg(long, default_value_t = 4)]
    size: u32,
    /// Resume samples for the Apply → first-packet latency.
    #[arg(long, default_value_t = 300)]
    samples: usize,
    /// Subscription changes for the changes/s figures.
    #[arg(long, default_value_t = 2000)]
    changes: usize,
    /// Changes per Apply in the batched figure.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Concurrent callers in the concurrent one-change-per-Apply figure.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Other meetings programmed on the node before measuring (a loaded node's state).
    #[arg(long, default_value_t = 0)]
    background: u32,
    /// Participants per background meeting.
    #[arg(long, default_value_t = 20)]
    background_size: u32,
    /// Local UDP ports the control plane allocates to legs, FIRST-LAST.
    #[arg(long, value_parser = parse_range, default_value = "28000-29999")]
    ports: (u16, u16),
    /// Also write the figures to this JSON file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Debug, clap::Args)]
struct ForwardArgs {
    /// Backends to compare (`naive` is the recv_from/send_to loop around the same core;
    /// `-nogso` sends one datagram per packet) [default: naive,mmsg-nogso,uring-nogso,mmsg,uring;
    /// with --calls: mmsg,uring]
    #[arg(long, value_delimiter = ',')]
    backends: Vec<String>,
    /// Fan-outs to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    fanouts: Vec<u32>,
    /// Instead of the fan-out comparison: these counts of one-to-one audio calls (172-byte SRTP),
    /// each with a port per leg and with every leg on one shared port; the CPU per packet of each
    /// is compared with the first count's (e.g. 1,100,1000).
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=i64::from(sluice_bench::forward::calls::MAX_CALLS)))]
    calls: Vec<u32>,
    /// SRTP profiles [default: gcm,cm80; with --calls: gcm]
    #[arg(long, value_enum, value_delimiter = ',')]
    profiles: Vec<ProfileArg>,
    /// Seconds per measurement (the flood probe, each paced probe of the search, the latency run).
    #[arg(long, default_value_t = 1.5, value_parser = seconds_at_least_half)]
    seconds: f64,
    /// Paced probes per configuration in the search for the highest sustained rate.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=20))]
    probes: u32,
    /// Also write every figure to this JSON file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

fn seconds_at_least_half(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.5..=600.0).contains(&v) { Ok(v) } else { Err(format!("must be 0.5..=600 seconds, not {v}")) }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ProfileArg {
    /// AEAD_AES_128_GCM
    Gcm,
    /// AEAD_AES_256_GCM
    Gcm256,
    /// AES_CM_128_HMAC_SHA1_80
    Cm80,
    /// AES_CM_128_HMAC_SHA1_32
    Cm32,
}

impl From<ProfileArg> for Profile {
    fn from(p: ProfileArg) -> Self {
        match p {
            ProfileArg::Gcm => Profile::AeadAes128Gcm,
            ProfileArg::Gcm256 => Profile::AeadAes256Gcm,
            ProfileArg::Cm80 => Profile::AesCm128HmacSha1_80,
            ProfileArg::Cm32 => Profile::AesCm128HmacSha1_32,
        }
    }
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Needs sluice-dataplane and sluice-controlplane next to this executable \
(cargo build --release -p sluice-bench -p sluice-dataplane -p sluice-controlplane); both are \
started as children in a scratch directory and stopped on exit, error or Ctrl-C. Exits non-zero if \
any packet failed to verify at its participant.")]
struct DemoArgs {
    /// Number of meetings (one control-plane session each).
    #[arg(long, default_value_t = 4)]
    meetings: u32,
    /// Participants per meeting; each one receives every other's audio and video.
    #[arg(long, default_value_t = 4)]
    size: u32,
    /// How long to send media, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// SRTP profile of every leg.
    #[arg(long, value_enum, default_value_t = ProfileArg::Gcm)]
    profile: ProfileArg,
    /// How many other participants each one watches in HD (the rest at the lowest layer).
    #[arg(long, default_value_t = 1)]
    hd_views: u32,
    /// Dataplane worker threads (each pinned to a core).
    #[arg(long, default_value_t = 2)]
    workers: u32,
    /// Local UDP ports the control plane allocates to legs, FIRST-LAST (keep it below the
    /// ephemeral range, where the participants' sockets get theirs).
    #[arg(long, default_value = "26000-26999", value_parser = parse_range)]
    ports: (u16, u16),
    /// Run the meetings through the forwarding core inside this process instead (no daemons,
    /// no sockets, no gRPC).
    #[arg(long)]
    in_process: bool,
}

fn parse_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s.split_once('-').ok_or("expected FIRST-LAST")?;
    let r: (u16, u16) = (a.trim().parse().map_err(|e| format!("{a}: {e}"))?, b.trim().parse().map_err(|e| format!("{b}: {e}"))?);
    if r.0 == 0 || r.0 > r.1 {
        return Err(format!("{s}: not a range of non-zero ports"));
    }
    Ok(r)
}

fn capacity(a: CapacityArgs) -> anyhow::Result<()> {
    use sluice_bench::capacity::{self, Mode, scenario::Scenario};
    let mut sc = match &a.scenario {
        Some(p) => Scenario::load(p)?,
        None => Scenario::default(),
    };
    if let Some(m) = a.meetings {
        sc.fixed.meetings = m;
    }
    if let Some(s) = a.seconds {
        sc.fixed.duration_s = s;
        sc.ramp.step_s = s;
        sc.ramp.settle_s = sc.ramp.settle_s.min(s / 4.0);
    }
    if let Some(n) = a.max_steps {
        sc.ramp.max_steps = n;
    }
    if let Some(p) = &a.profile {
        sc.profile = p.clone();
    }
    if a.viewers.is_some() || a.max_viewers.is_some() || a.promote {
        let Some(w) = sc.webinar.as_mut() else { bail!("--viewers, --max-viewers and --promote need a webinar scenario (a [webinar] table)") };
        if let Some(v) = a.viewers {
            w.viewers = v;
        }
        if let Some(v) = a.max_viewers {
            w.max_viewers = v;
            w.start_viewers = w.start_viewers.min(v);
        }
        w.promote |= a.promote;
    }
    let port_range = a.ports.unwrap_or(if sc.webinar.is_some() { (20_000, 31_799) } else { (30_000, 31_799) });
    sc.validate().context("the scenario after the command-line overrides")?;
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    if a.workers == 0 || a.workers as usize > cpus.max(1) * 4 {
        bail!("--workers must be 1..={} (got {})", cpus * 4, a.workers);
    }
    let dataplane_cores =
        if a.dataplane_cores.is_empty() { (0..a.workers as usize).map(|i| (cpus - 1 - i % cpus) % cpus).collect() } else { a.dataplane_cores.clone() };
    if dataplane_cores.len() != a.workers as usize {
        bail!("--dataplane-cores names {} cores for {} workers", dataplane_cores.len(), a.workers);
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 130, stop.clone()).context("installing signal handlers")?;
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    let o = capacity::Options {
        scenario: sc,
        mode: match a.mode {
            ModeArg::Fixed => Mode::Fixed,
            ModeArg::Ramp => Mode::Ramp,
        },
        backends: a.backends.clone(),
        workers: a.workers,
        dataplane_cores,
        lanes: a.lanes,
        generator_cores: if a.generator_core.is_empty() { vec![0] } else { a.generator_core.clone() },
        sink_cores: if a.sink_core.is_empty() { vec![0] } else { a.sink_core.clone() },
        port_range,
        affinity_legs: a.affinity_legs,
        netns: a.netns,
        impair: capacity::load::Impair {
            drop_every: a.impair_drop_every,
            reorder_every: a.impair_reorder_every,
            duplicate_every: a.impair_duplicate_every,
            seq_gap_every: a.impair_seq_gap_every,
            wrong_key_legs: a.impair_wrong_key_legs,
        },
        ceiling_s: a.ceiling_seconds,
        live: true,
    };
    for b in &o.backends {
        if !["uring", "mmsg"].contains(&b.as_str()) {
            bail!("--backends: {b:?} is not uring or mmsg");
        }
    }
    let report = capacity::run(&o, &stop)?;
    print!("{}", report.table());
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?).with_context(|| format!("writing {}", path.display()))?;
        println!("every figure: {}", path.display());
    }
    if let Some(path) = &a.svg {
        std::fs::write(path, report.svg()).with_context(|| format!("writing {}", path.display()))?;
        println!("plot: {}", path.display());
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::Capacity(a) => capacity(*a),
        Command::Demo(a) if a.in_process => demo(&a),
        Command::Demo(a) => demo_live(&a),
        Command::Program(a) => {
            if !(2..=20).contains(&a.size) || a.batch == 0 || a.samples == 0 {
                bail!("--size must be 2..=20, --batch and --samples at least 1");
            }
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
            }
            let opts = sluice_bench::live::Options {
                meetings: 1,
                size: a.size,
                seconds: 0,
                profile: Profile::AeadAes128Gcm,
                hd_views: 0,
                workers: 1,
                port_range: a.ports,
                dataplane_extra: String::new(),
                controlplane_extra: String::new(),
            };
            if u64::from(a.ports.1 - a.ports.0) + 1 < u64::from(a.size) + u64::from(a.background) * u64::from(a.background_size) {
                bail!("--ports {}-{} has no room for {} + {} x {} legs", a.ports.0, a.ports.1, a.size, a.background, a.background_size);
            }
            let r = sluice_bench::live::program_speed(&opts, &stop, a.samples, a.changes, a.batch, (a.background, a.background_size), a.clients)?;
            println!("programming speed through sluice-controlplane (gRPC) and sluice-dataplane (1 worker):");
            println!("  subscription changes/s, one per Apply (each acked by the dataplane): {:.0}", r.single_changes_per_s);
            println!("  subscription changes/s, {} per Apply:                            {:.0}", r.batch, r.batched_changes_per_s);
            println!("  subscription changes/s, one per Apply from {:>3} concurrent callers:  {:.0}", r.clients, r.concurrent_changes_per_s);
            println!(
                "  Apply returned -> first packet on the resumed route: p50 {:.0} us  p99 {:.0} us  max {:.0} us  ({} samples, publisher every {} us)",
                r.first_packet_us.0, r.first_packet_us.1, r.first_packet_us.2, r.samples, r.publish_interval_us
            );
            if let Some(path) = a.json {
                std::fs::write(&path, serde_json::to_string_pretty(&r)?).with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
        Command::Audio(a) => {
            let r = sluice_bench::audio::run(a.participants, a.seconds)?;
            if let Some(path) = a.json {
                std::fs::write(&path, serde_json::to_string_pretty(&r)?).with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
        Command::TurnNetns(a) => {
            let r = sluice_bench::turn_netns::run(a.calls, a.seconds, Duration::from_millis(a.tick_ms.max(1)))?;
            if let Some(path) = a.json {
                std::fs::write(&path, serde_json::to_string_pretty(&r)?).with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
        Command::Turn(a) => {
            let r = sluice_bench::turn::run(a.calls, a.seconds)?;
            if let Some(path) = a.json {
                std::fs::write(&path, serde_json::to_string_pretty(&r)?).with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
        Command::Xdp(a) => {
            let r = sluice_bench::xdp::run(a.seconds, &a.backends)?;
            if let Some(path) = a.json {
                std::fs::write(&path, serde_json::to_string_pretty(&r)?).with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
        Command::Forward(a) if !a.calls.is_empty() => {
            let backends = if a.backends.is_empty() { vec!["mmsg".into(), "uring".into()] } else { a.backends };
            let profiles: Vec<Profile> = if a.profiles.is_empty() { vec![Profile::AeadAes128Gcm] } else { a.profiles.iter().map(|p| (*p).into()).collect() };
            let rows = sluice_bench::forward::calls::run(&backends, &a.calls, &profiles, a.seconds, a.probes)?;
            if let Some(path) = a.json {
                let doc = serde_json::json!({ "calls": rows });
                std::fs::write(&path, serde_json::to_string_pretty(&doc)?).with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
        Command::Forward(a) => {
            let backends: Vec<String> =
                if a.backends.is_empty() { ["naive", "mmsg-nogso", "uring-nogso", "mmsg", "uring"].map(String::from).to_vec() } else { a.backends };
            let profiles: Vec<Profile> = if a.profiles.is_empty() {
                vec![Profile::AeadAes128Gcm, Profile::AesCm128HmacSha1_80]
            } else {
                a.profiles.iter().map(|p| (*p).into()).collect()
            };
            let (rows, ceilings, latency) = sluice_bench::forward::run(&backends, &a.fanouts, &profiles, a.seconds, a.probes)?;
            if let Some(path) = a.json {
                let ceilings: Vec<_> = ceilings.iter().map(|(p, f, c)| serde_json::json!({ "profile": p, "fanout": f, "out_per_cpu_s": c })).collect();
                let doc = serde_json::json!({ "rows": rows, "core_ceilings": ceilings, "latency": latency });
                std::fs::write(&path, serde_json::to_string_pretty(&doc)?).with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
    }
}

fn check_size(a: &DemoArgs) -> anyhow::Result<()> {
    if a.size < 2 || a.size > 60 {
        bail!("--size must be 2..=60 (got {})", a.size);
    }
    if a.meetings == 0 || a.meetings > 200 {
        bail!("--meetings must be 1..=200 (got {})", a.meetings);
    }
    Ok(())
}

/// The whole system: daemons, gRPC, UDP participants (`sluice_bench::live`).
fn demo_live(a: &DemoArgs) -> anyhow::Result<()> {
    check_size(a)?;
    if a.workers == 0 || a.workers > 64 {
        bail!("--workers must be 1..=64 (got {})", a.workers);
    }
    let legs = u64::from(a.meetings) * u64::from(a.size);
    if legs > u64::from(a.ports.1 - a.ports.0) + 1 {
        bail!("--ports {}-{} has room for {} legs, not {legs}", a.ports.0, a.ports.1, a.ports.1 - a.ports.0 + 1);
    }
    // Ctrl-C and SIGTERM end the run (the children are stopped on the way out); a second one
    // exits at once (the children then get SIGTERM from their parent-death signal).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 130, stop.clone()).context("installing signal handlers")?;
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    let opts = sluice_bench::live::Options {
        meetings: a.meetings,
        size: a.size,
        seconds: a.seconds,
        profile: a.profile.into(),
        hd_views: a.hd_views,
        workers: a.workers,
        port_range: a.ports,
        dataplane_extra: String::new(),
        controlplane_extra: String::new(),
    };
    let s = sluice_bench::live::run(&opts, &stop)?;
    if s.verify_failures > 0 {
        bail!("{} packets did not authenticate at their subscriber", s.verify_failures);
    }
    if s.interrupted {
        // The conventional status of a run ended by a signal (128 + SIGINT).
        std::process::exit(130);
    }
    if s.received == 0 {
        bail!("no participant received anything");
    }
    Ok(())
}

/// The forwarding core alone, in this process.
fn demo(a: &DemoArgs) -> anyhow::Result<()> {
    check_size(a)?;
    let profile: Profile = a.profile.into();
    let mut core = Core::new(CoreConfig::default());
    let mut people = Vec::new();
    let mut ops = Vec::new();
    for m in 0..a.meetings {
        let (o, p) = meeting::build(m, a.size, profile, a.hd_views);
        ops.extend(o);
        people.extend(p);
    }
    core.apply(Delta { generation: Generation(1), replace_all: false, ops }).context("programming the meetings")?;
    let (legs, tracks, subs) = core.tables().counts();
    println!(
        "sluice demo (in process, no sockets): {} meetings x {} participants, {:?}: {legs} legs, {tracks} tracks, {subs} subscriptions",
        a.meetings, a.size, profile
    );
    println!("every participant publishes Opus-sized audio + 3-layer simulcast video (SRTP, own keys) and verifies what it receives\n");

    let by_leg: std::collections::HashMap<_, _> = people.iter().enumerate().map(|(i, p)| (p.leg, i)).collect();
    let mut out = OutBatch::new(4096);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 10_000_000, 3).context("histogram")?;
    let start = WallInstant::now();
    let mut busy = Duration::ZERO;
    let mut last = (0u64, 0u64, 0u64, Duration::ZERO);
    let mut feed = |core: &mut Core, people: &mut Vec<meeting::Participant>, i: usize, mut pkt: Vec<u8>, hist: &mut Histogram<u64>, busy: &mut Duration| {
        let now = Instant::from_nanos(start.elapsed().as_nanos() as u64);
        out.clear();
        let (port, addr) = (people[i].port, people[i].addr);
        let t0 = WallInstant::now();
        core.handle_rx(now, port, addr, &mut pkt, &mut out);
        let spent = t0.elapsed();
        *busy += spent;
        let _ = hist.record(spent.as_nanos().max(1) as u64);
        for (meta, bytes) in out.iter() {
            if let Some(&j) = by_leg.get(&meta.leg) {
                people[j].receive(bytes);
            }
        }
    };
    for i in 0..people.len() {
        let hello = people[i].hello();
        feed(&mut core, &mut people, i, hello, &mut hist, &mut busy);
    }
    let audio_every = Duration::from_millis(meeting::AUDIO_MS);
    let video_every = Duration::from_nanos(1_000_000_000 / meeting::FPS);
    let (mut next_audio, mut next_video, mut next_report) = (Duration::ZERO, Duration::ZERO, Duration::from_secs(1));
    let (mut audio_tick, end) = (0u64, Duration::from_secs(a.seconds));
    println!(
        "{:>4}  {:>10}  {:>10}  {:>10}  {:>7}  {:>9}  {:>9}  {:>7}  {:>8}",
        "t", "in pkt/s", "out pkt/s", "out Mbit/s", "core %", "p50 ns", "p99 ns", "drops", "verify!"
    );
    loop {
        let t = start.elapsed();
        if t >= end {
            break;
        }
        if t >= next_audio {
            for i in 0..people.len() {
                let p = people[i].audio(audio_tick);
                feed(&mut core, &mut people, i, p, &mut hist, &mut busy);
            }
            audio_tick += 1;
            next_audio += audio_every;
        }
        if t >= next_video {
            for i in 0..people.len() {
                for p in people[i].video_frame() {
                    feed(&mut core, &mut people, i, p, &mut hist, &mut busy);
                }
            }
            next_video += video_every;
        }
        if t >= next_report {
            let s = core.stats();
            let window = (t - last.3).as_secs_f64();
            let failures: u64 = people.iter().map(|p| p.verify_failures).sum();
            let drops = s.total_drops() - s.drops_for(DropReason::RtcpConsumed) - s.drops_for(DropReason::LayerFiltered);
            println!(
                "{:>3}s  {:>10.0}  {:>10.0}  {:>10.1}  {:>6.1}%  {:>9}  {:>9}  {:>7}  {:>8}",
                t.as_secs(),
                (s.rx_packets - last.0) as f64 / window,
                (s.tx_packets - last.1) as f64 / window,
                (s.tx_bytes - last.2) as f64 * 8.0 / window / 1e6,
                100.0 * busy.as_secs_f64() / t.as_secs_f64(),
                hist.value_at_quantile(0.5),
                hist.value_at_quantile(0.99),
                drops,
                failures,
            );
            last = (s.rx_packets, s.tx_packets, s.tx_bytes, t);
            next_report += Duration::from_secs(1);
        }
        let next = next_audio.min(next_video).min(next_report);
        if let Some(wait) = next.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    let s = core.stats();
    let received: u64 = people.iter().map(|p| p.received).sum();
    let failures: u64 = people.iter().map(|p| p.verify_failures).sum();
    let gaps: u64 = people.iter().map(|p| p.gaps).sum();
    println!("\nsummary after {:.1} s", start.elapsed().as_secs_f64());
    println!("  packets in {}   out {}   received and verified by participants {}   failed to verify {}", s.rx_packets, s.tx_packets, received, failures);
    println!(
        "  core busy {:.2} s ({:.1}% of one core)   per input packet p50 {} ns  p99 {} ns  max {} ns",
        busy.as_secs_f64(),
        100.0 * busy.as_secs_f64() / start.elapsed().as_secs_f64(),
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.max()
    );
    println!("  layer switches {}   keyframe requests {}   sequence gaps seen by subscribers {}", s.layer_switches, s.keyframe_requests, gaps);
    println!("  not forwarded, by reason:");
    for r in DropReason::ALL {
        let n = s.drops_for(r);
        if n > 0 {
            println!("    {:<22} {n}", r.name());
        }
    }
    if failures > 0 {
        bail!("{failures} packets did not authenticate at their subscriber");
    }
    Ok(())
}
