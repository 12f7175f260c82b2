//! `sluice-dataplane`: the forwarding daemon.
//!
//! Starts one pinned worker per configured core, the control endpoint (Unix socket) and the
//! Prometheus endpoint, then forwards until SIGTERM/SIGINT, when it stops taking new datagrams,
//! flushes what is queued and exits.
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant as WallInstant};

use anyhow::{Context as _, bail};
use clap::Parser;
use sluice_core::forward::CoreConfig;
use sluice_core::ice::IceConfig;
use sluice_core::table::TableConfig;
use sluice_dataplane::config::{BackendChoice, Config, XdpMode, allowed_cores, parse_mac, parse_metrics};
use sluice_dataplane::control::{self, Request, Response};
use sluice_dataplane::edge::{self, EdgeConfig, SlowMsg};
use sluice_dataplane::events::{self, EventHub};
use sluice_dataplane::io::xsk::Interface;
use sluice_dataplane::io::{Backend, BackendKind, IoConfig, SendRegistry};
use sluice_dataplane::metrics::{self, WorkerSnapshot};
use sluice_dataplane::shield::{Relay, Shield, ShieldHandle};
use sluice_dataplane::worker::{Worker, WorkerMsg, Workers};
use sluice_dataplane::xdp::{Egress, RelayRoute, XdpStage};

/// Sluice dataplane: forwards SRTP between conference legs by SSRC rewrite tables, one pinned
/// worker per core. Tables are programmed by the control plane over the control socket.
///
/// Settings come from the TOML file (`[dataplane]` table) and are overridden by the flags below.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    /// TOML configuration file.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Number of workers (one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// I/O backend.
    #[arg(long, value_enum)]
    backend: Option<BackendChoice>,
    /// Address the media sockets bind to.
    #[arg(long)]
    listen_ip: Option<std::net::IpAddr>,
    /// Unix socket of the control endpoint.
    #[arg(long)]
    control_socket: Option<PathBuf>,
    /// Prometheus endpoint address (`off` to disable).
    #[arg(long)]
    metrics: Option<String>,
    /// Turn UDP GSO off.
    #[arg(long)]
    no_gso: bool,
    /// Turn UDP GRO (coalesced receives) off.
    #[arg(long)]
    no_gro: bool,
    /// XDP first stage mode.
    #[arg(long, value_enum)]
    xdp_mode: Option<XdpMode>,
    /// Interface the XDP stage attaches to.
    #[arg(long)]
    xdp_interface: Option<String>,
    /// Pin directory name of the XDP stage under /sys/fs/bpf/sluice/.
    #[arg(long)]
    xdp_instance: Option<String>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let args = Args::parse();
    let mut config = match &args.config {
        Some(p) => Config::from_file(p)?,
        None => Config::default(),
    };
    if let Some(w) = args.workers {
        config.workers = w;
    }
    if let Some(b) = args.backend {
        config.backend = b;
    }
    if let Some(ip) = args.listen_ip {
        config.listen_ip = ip;
    }
    if let Some(s) = args.control_socket {
        config.control_socket = s;
    }
    if let Some(m) = &args.metrics {
        config.metrics = parse_metrics(m).map_err(|why| anyhow::anyhow!("--metrics: {why}"))?;
    }
    if args.no_gso {
        config.gso = false;
    }
    if args.no_gro {
        config.gro = false;
    }
    if let Some(m) = args.xdp_mode {
        config.xdp.mode = m;
    }
    if let Some(i) = args.xdp_interface {
        config.xdp.interface = Some(i);
    }
    if let Some(i) = args.xdp_instance {
        config.xdp.instance = i;
    }
    let allowed = allowed_cores();
    config.validate(&allowed)?;
    // Before anything touches the machine: a second instance on this socket stops here, naming
    // the first one's PID.
    let lock = control::lock(&config.control_socket)?;
    run(config, &allowed, lock)
}

fn run(config: Config, allowed_cores: &[usize], lock: sluice_dataplane::lock::InstanceLock) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [libc::SIGTERM, libc::SIGINT] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    let epoch = WallInstant::now();
    let registry = SendRegistry::new();
    let io_config = IoConfig {
        local_ip: config.listen_ip,
        rx_batch: config.batch,
        gso: config.gso,
        gro: config.gro,
        socket_buffer_bytes: Some(config.socket_buffer_bytes),
        ..IoConfig::default()
    };
    let core_config =
        CoreConfig { tables: TableConfig { replay_window: config.replay_window, rtx_cache_packets: config.rtx_cache_packets }, ..CoreConfig::default() };
    let n = config.workers;
    let channels: Vec<_> = (0..n).map(|_| crossbeam_channel::bounded::<WorkerMsg>(4096)).collect();
    let senders: Vec<_> = channels.iter().map(|(s, _)| s.clone()).collect();
    // Feedback between workers travels by value in preallocated slots (1.2 KB each).
    let feedback: Vec<_> = (0..n).map(|_| crossbeam_channel::bounded::<sluice_core::forward::Handoff>(256)).collect();
    let feedback_tx: Vec<_> = feedback.iter().map(|(s, _)| s.clone()).collect();
    let mut feedback_rx: Vec<_> = feedback.into_iter().map(|(_, r)| Some(r)).collect();
    let snapshots: metrics::Snapshots = Arc::new(Mutex::new((0..n).map(|worker| WorkerSnapshot { worker, ..Default::default() }).collect()));
    let workers = Workers::new(senders.clone());
    let (events_tx, events_rx) = events::channel();
    // The slow path's events (ICE connected, DTLS connected, failures) join the workers' on the
    // control endpoint's event stream.
    let slow_events = events_tx.clone();
    let edge_config = EdgeConfig {
        ice: IceConfig { consent_timeout: Duration::from_millis(config.consent_timeout_ms), ..IceConfig::default() },
        handshake_timeout: Duration::from_millis(config.handshake_timeout_ms),
        listen_ip: Some(config.listen_ip),
        ..EdgeConfig::default()
    };
    let edge::SlowPathHandle { sender: slow, status: edge_status, thread: slow_thread } = edge::spawn(
        edge_config,
        workers.clone(),
        registry.clone(),
        Box::new(move |e| {
            let _ = slow_events.try_send(e);
        }),
        epoch,
    )
    .context("starting the WebRTC slow path")?;
    let cores = config.worker_cores(allowed_cores);
    let core_ids = core_affinity::get_core_ids().unwrap_or_default();
    let hub = EventHub::new();
    hub.spawn_pump(events_rx).context("starting the event pump")?;
    let mut stage = open_xdp_stage(&config)?;
    let (shield_handle, shield_inbox) = ShieldHandle::channel();
    let mut threads = Vec::new();
    for (index, (_, inbox)) in channels.into_iter().enumerate() {
        let backend = match config.backend {
            BackendChoice::Mmsg | BackendChoice::Auto => Backend::new(BackendKind::Mmsg, io_config.clone(), registry.clone())?,
            BackendChoice::Uring => {
                let (b, why) = Backend::with_fallback(BackendKind::Uring, io_config.clone(), registry.clone())?;
                if let Some(why) = why {
                    tracing::warn!(worker = index, reason = %why, "io_uring unavailable; using recvmmsg/sendmmsg");
                }
                b
            }
            BackendChoice::Xsk => {
                let xsk_config = IoConfig {
                    xsk_interface: config.xdp.interface.clone(),
                    xsk_queue: index as u32,
                    xsk_tx: config.xdp.af_xdp_tx,
                    xsk_rx_frames: config.xdp.af_xdp_rx_frames,
                    ..io_config.clone()
                };
                let b = Backend::new(BackendKind::Xsk, xsk_config, registry.clone())
                    .with_context(|| format!("worker {index}: AF_XDP socket on queue {index} of {:?}", config.xdp.interface))?;
                if let (Backend::Xsk(x), Some(stage)) = (&b, stage.as_mut()) {
                    stage.set_xsk(x.queue(), x.xsk_fd()).context("registering the AF_XDP socket in the XSKMAP")?;
                    tracing::info!(worker = index, queue = x.queue(), zerocopy = x.zerocopy(), "AF_XDP socket bound");
                }
                b
            }
        };
        tracing::info!(worker = index, core = cores[index], backend = backend.kind().name(), "starting worker");
        let mut worker = Worker::new(index, n, core_config, backend, config.batch, inbox, senders.clone(), snapshots.clone(), epoch, Some(slow.clone()))
            .with_events(events_tx.clone());
        if let Some(rx) = feedback_rx.get_mut(index).and_then(Option::take) {
            worker = worker.with_feedback(rx, feedback_tx.clone());
        }
        if stage.is_some() {
            worker = worker.with_shield(shield_handle.sender());
        }
        let core_id = core_ids.iter().find(|c| c.id == cores[index]).copied();
        threads.push(std::thread::Builder::new().name(format!("worker-{index}")).spawn(move || {
            if let Some(c) = core_id
                && !core_affinity::set_for_current(c)
            {
                tracing::warn!(core = c.id, "could not pin the worker");
            }
            worker.run();
        })?);
    }
    let (shield, xdp_counts) = match stage {
        Some(stage) => {
            let relays = resolve_relays(&config)?;
            let shield = Shield::new(stage, n, &relays).context("taking over the XDP stage's maps")?;
            let counts = shield.counts();
            threads.push(shield.spawn(shield_inbox)?);
            tracing::info!(relays = relays.len(), "XDP shield in step with the tables");
            (Some(shield_handle.clone()), Some(counts))
        }
        None => (None, None),
    };
    let handle = workers.clone();
    let snaps = snapshots.clone();
    let slow_ctl = slow.clone();
    drop(events_tx);
    let control_shield = shield.clone();
    control::serve_with_owner(&config.control_socket, config.control_socket_owner, lock, hub, move |req| match req {
        Request::Apply(delta) => {
            let changes = edge::changes_of(&delta);
            let for_shield = control_shield.as_ref().map(|_| Arc::new(delta.clone()));
            match handle.apply(delta) {
                Ok(g) => {
                    if !changes.is_empty() {
                        let _ = slow_ctl.send(SlowMsg::Legs(changes));
                    }
                    if let (Some(s), Some(d)) = (&control_shield, for_shield)
                        && let Err(e) = s.apply(d)
                    {
                        tracing::error!(generation = g.0, error = %e, "the XDP shield could not follow this delta");
                    }
                    Response::Applied(g)
                }
                Err(e) => Response::Rejected { generation: handle.generation(), reason: e.to_string() },
            }
        }
        Request::Edge { rotate } => {
            let (tx, rx) = crossbeam_channel::bounded(1);
            let _ = slow_ctl.send(if rotate { SlowMsg::Rotate(tx) } else { SlowMsg::Status(tx) });
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(s) => Response::Edge(s),
                Err(_) => Response::Error("the slow path did not answer".into()),
            }
        }
        Request::Generation => Response::Generation(handle.generation()),
        Request::Snapshot => match handle.snapshot() {
            Some(d) => Response::Snapshot(d),
            None => Response::Error("no worker answered".into()),
        },
        Request::Stats => Response::Stats(snaps.lock().map(|s| s.iter().map(|w| w.core.clone()).collect()).unwrap_or_default()),
        Request::Subscribe { .. } | Request::Hello { .. } => Response::Error("answered by the endpoint itself".into()),
    })
    .with_context(|| format!("control socket {}", config.control_socket.display()))?;
    tracing::info!(socket = %config.control_socket.display(), "control endpoint ready");
    if let Some(addr) = config.metrics {
        let (bound, _) = metrics::serve(addr, snapshots.clone(), xdp_counts, Some(edge_status.clone())).with_context(|| format!("metrics endpoint {addr}"))?;
        tracing::info!(%bound, "metrics at http://{bound}/metrics");
    }
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        if threads.iter().any(|t| t.is_finished()) {
            workers.stop();
            bail!("a worker exited unexpectedly");
        }
    }
    tracing::info!("signal received: draining");
    workers.stop();
    if let Some(s) = &shield {
        // The stage stays pinned and attached: relays and the shield keep working without us.
        s.stop();
    }
    for t in threads {
        let _ = t.join();
    }
    let _ = slow.send(SlowMsg::Stop);
    let _ = slow_thread.join();
    let _ = std::fs::remove_file(&config.control_socket);
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Opens (or re-uses, from its pins) the XDP stage, attaches it (driver mode, generic with a
/// logged warning) and sets the media port range and the AF_XDP flag; `None` when the stage is off.
fn open_xdp_stage(config: &Config) -> anyhow::Result<Option<XdpStage>> {
    if config.xdp.mode == XdpMode::Off {
        return Ok(None);
    }
    let iface = config.xdp.interface.as_deref().context("xdp.interface")?;
    let mut stage = XdpStage::open(&config.xdp.instance).with_context(|| format!("opening XDP stage {:?}", config.xdp.instance))?;
    let mode = stage.attach(iface).with_context(|| format!("attaching the XDP stage to {iface}"))?;
    let (lo, hi) = config.port_range;
    stage.set_port_range(lo..=hi).context("setting the media port range")?;
    stage.set_af_xdp(config.xdp.mode == XdpMode::AfXdp).context("setting the AF_XDP flag")?;
    tracing::info!(interface = iface, instance = %config.xdp.instance, ?mode, xdp_mode = ?config.xdp.mode, "XDP stage ready");
    Ok(Some(stage))
}

/// The configured relay legs with their egress interface resolved (index and MAC).
fn resolve_relays(config: &Config) -> anyhow::Result<Vec<Relay>> {
    let attached = config.xdp.interface.as_deref().unwrap_or_default();
    config
        .xdp
        .relays
        .iter()
        .map(|r| {
            let name = r.egress.as_deref().unwrap_or(attached);
            let iface = Interface::lookup(name).with_context(|| format!("relay egress interface {name}"))?;
            let egress = if name == attached { Egress::SameInterface } else { Egress::Interface(iface.index) };
            let dst_mac = parse_mac(&r.dst_mac).context("relay dst_mac (validated at start)")?;
            Ok(Relay { local_port: r.local_port, remote: r.remote, route: RelayRoute { src: r.src, dst: r.dst, src_mac: iface.mac, dst_mac, egress } })
        })
        .collect()
}
