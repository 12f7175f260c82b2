//! One dataplane node, wired: [`Node::start`] turns a configuration into running threads and
//! [`Node::shutdown`] stops them in order. The binary parses its arguments, starts a node and
//! waits for a signal; tests start nodes in-process on loopback.
//!
//! ```text
//!   start:    validate → lock the control socket → edge (slow path) → event pump → XDP stage
//!             → TURN (wired to the workers' inboxes) → workers (one per core, pinned) → shield
//!             → ICE-TCP → control endpoint → metrics
//!   shutdown: ICE-TCP, TURN stop (every TURN route goes down for the workers and the shield)
//!             → workers flush and exit → shield stops (the stage stays pinned and attached)
//!             → edge stops → control endpoint removes its socket, releases the lock → metrics
//!             → event pump (once every worker and the edge have let go of its channel)
//! ```
//!
//! A node installs no signal handlers and never exits the process: both are the binary's.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant as WallInstant};

use crossbeam_channel::Sender;
use sluice_core::forward::CoreConfig;
use sluice_core::ice::IceConfig;
use sluice_core::table::{Delta, Op, TableConfig};

use crate::bus::{SlowMsg, WorkerMsg, Workers};
use crate::checkpoint;
use crate::config::{BackendChoice, Config, ConfigError, XdpMode, allowed_cores, parse_mac};
use crate::control::{self, Request, Response};
use crate::edge::{self, EdgeConfig, EdgeError};
use crate::events::{self, EventHub};
use crate::io::xsk::Interface;
use crate::io::{Backend, BackendKind, IoConfig, IoError, SendRegistry};
use crate::listener::Listening;
use crate::lock::LockError;
use crate::metrics::{self, WorkerSnapshot};
use crate::shield::{Relay, Shield, ShieldHandle};
use crate::worker::Worker;
use crate::xdp::{Egress, RelayRoute, XdpError, XdpStage};

/// Why a node did not start, or stopped on its own. Each variant's message names the step; the
/// cause is its `source`.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The configuration was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Another instance serves the control socket.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The WebRTC slow path did not start.
    #[error("starting the WebRTC slow path")]
    SlowPath(#[source] EdgeError),
    /// A thread or socket of the node could not be set up.
    #[error("{op}")]
    Io {
        /// What was being done.
        op: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A thread could not be started.
    #[error(transparent)]
    Thread(std::io::Error),
    /// A worker's I/O backend could not be opened.
    #[error(transparent)]
    Backend(IoError),
    /// A worker's AF_XDP socket or a relay's egress interface could not be opened.
    #[error("{op}")]
    Interface {
        /// What was being done.
        op: String,
        /// The cause.
        #[source]
        source: IoError,
    },
    /// The XDP stage could not be opened, attached, configured or taken over.
    #[error("{op}")]
    Xdp {
        /// What was being done.
        op: String,
        /// The cause (boxed: it is large, and start-up is the cold path).
        #[source]
        source: Box<XdpError>,
    },
    /// A setting the configuration's validation guarantees is missing.
    #[error("{0}")]
    Missing(&'static str),
    /// A worker (or the shield) exited while the node was running.
    #[error("a worker exited unexpectedly")]
    WorkerExited,
    /// The embedded TURN server could not start.
    #[error("TURN server: {0}")]
    Turn(String),
}

impl NodeError {
    fn io(op: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let op = op.into();
        move |source| Self::Io { op, source }
    }

    fn xdp(op: impl Into<String>) -> impl FnOnce(XdpError) -> Self {
        let op = op.into();
        move |source| Self::Xdp { op, source: Box::new(source) }
    }
}

/// A running dataplane node: its workers, slow path, shield and endpoints.
#[derive(Debug)]
pub struct Node {
    workers: Workers,
    /// The workers' threads, then the shield's.
    threads: Vec<JoinHandle<()>>,
    shield: Option<ShieldHandle>,
    slow: Sender<SlowMsg>,
    slow_thread: JoinHandle<()>,
    pump: JoinHandle<()>,
    control: Listening,
    control_socket: PathBuf,
    metrics: Option<(SocketAddr, Listening)>,
    /// Each worker's last turn of its loop (ms since `epoch`).
    beats: Vec<Arc<AtomicU64>>,
    /// The embedded TURN server, if configured, and its thread.
    turn: Option<(Arc<crate::turn::TurnHandle>, JoinHandle<()>)>,
    /// The ICE-TCP listener, if configured, and its thread.
    ice_tcp: Option<(Arc<crate::icetcp::IceTcpHandle>, JoinHandle<()>)>,
    epoch: WallInstant,
}

/// A worker that has not turned its loop for this long is stalled (a turn waits at most 5 ms for
/// datagrams, and a batch takes well under a millisecond).
pub const WORKER_STALL: Duration = Duration::from_secs(2);

impl Node {
    /// Validates `config` against the CPUs this process may run on, takes the control socket's
    /// instance lock (before anything touches the machine: a second instance on the socket stops
    /// here, naming the first one's PID), then starts every thread and endpoint.
    pub fn start(config: Config) -> Result<Self, NodeError> {
        let allowed = allowed_cores();
        config.validate(&allowed)?;
        let lock = control::lock(&config.control_socket)?;
        raise_descriptor_limit(&config);
        Self::start_locked(config, &allowed, lock)
    }

    fn start_locked(config: Config, allowed_cores: &[usize], lock: crate::lock::InstanceLock) -> Result<Self, NodeError> {
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
        // Hand-overs between workers: a pooled buffer each (the queue holds pointers), a few
        // receive batches' worth.
        let feedback: Vec<_> = (0..n).map(|_| crossbeam_channel::bounded::<crate::bus::Handover>(4096)).collect();
        let feedback_tx: Vec<_> = feedback.iter().map(|(s, _)| s.clone()).collect();
        let mut feedback_rx: Vec<_> = feedback.into_iter().map(|(_, r)| Some(r)).collect();
        let snapshots: metrics::Snapshots = Arc::new(Mutex::new((0..n).map(|worker| WorkerSnapshot { worker, ..Default::default() }).collect()));
        let workers = Workers::new(senders.clone());
        let (events_tx, events_rx) = events::channel();
        // The slow path's events (ICE connected, DTLS connected, failures) join the workers' on
        // the control endpoint's event stream.
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
        .map_err(NodeError::SlowPath)?;
        let cores = config.worker_cores(allowed_cores);
        let core_ids = core_affinity::get_core_ids().unwrap_or_default();
        let hub = EventHub::new();
        let pump = hub.spawn_pump(events_rx).map_err(NodeError::io("starting the event pump"))?;
        let mut stage = open_xdp_stage(&config)?;
        let (shield_handle, shield_inbox) = ShieldHandle::channel();
        let mut threads = Vec::new();
        // The checkpoint: read the last one (a damaged one is set aside, loudly), and start the
        // writer that keeps it current from the workers' parts.
        let (checkpoint_tx, checkpoint_rx) = crossbeam_channel::bounded(2 * n);
        let loaded = match config.checkpoint_path() {
            Some(path) => {
                let loaded = match checkpoint::load(&path) {
                    Ok(Some(l)) => {
                        tracing::info!(path = %path.display(), legs = l.checkpoint.legs.len(), streams = l.checkpoint.streams.len(), age_ms = l.age().as_millis() as u64, "checkpoint loaded; restored as the tables come back");
                        Some(Arc::new(l))
                    }
                    Ok(None) => None,
                    Err(e) => {
                        tracing::error!(error = %e, "checkpoint not used: streams resume from scratch (kept as .state.bad)");
                        None
                    }
                };
                let hold = loaded.as_ref().map(|_| std::time::SystemTime::now() + checkpoint::RESTORE_WINDOW);
                let writer = std::thread::Builder::new()
                    .name("checkpoint".into())
                    .spawn(move || checkpoint::run_writer(path, checkpoint_rx, n, hold))
                    .map_err(NodeError::Thread)?;
                threads.push(writer);
                loaded
            }
            None => None,
        };
        // Every backend first: each worker gets the others' wakers (a hand-over wakes its
        // receiver at once rather than after its receive timeout).
        let mut backends = Vec::with_capacity(n);
        for index in 0..n {
            let backend = match config.backend {
                BackendChoice::Mmsg | BackendChoice::Auto => {
                    Backend::new(BackendKind::Mmsg, io_config.clone(), registry.clone()).map_err(NodeError::Backend)?
                }
                BackendChoice::Uring => {
                    let (b, why) = Backend::with_fallback(BackendKind::Uring, io_config.clone(), registry.clone()).map_err(NodeError::Backend)?;
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
                    let b = Backend::new(BackendKind::Xsk, xsk_config, registry.clone()).map_err(|source| NodeError::Interface {
                        op: format!("worker {index}: AF_XDP socket on queue {index} of {:?}", config.xdp.interface),
                        source,
                    })?;
                    if let (Backend::Xsk(x), Some(stage)) = (&b, stage.as_mut()) {
                        stage.set_xsk(x.queue(), x.xsk_fd()).map_err(NodeError::xdp("registering the AF_XDP socket in the XSKMAP"))?;
                        tracing::info!(worker = index, queue = x.queue(), zerocopy = x.zerocopy(), "AF_XDP socket bound");
                    }
                    b
                }
            };
            backends.push(backend);
        }
        let wakers: Vec<_> = backends.iter().map(Backend::waker).collect();
        // The TURN server before the workers: each worker gets its end of the hand-off (the
        // TURN thread reaches them through their inboxes and wakers, the shield through its own).
        let (turn, mut turn_links) = match &config.turn {
            Some(t) => {
                // Never relayed to: the node's own endpoints at the legs' addresses.
                let mut denied = Vec::new();
                for ip in t.leg_ips(config.listen_ip) {
                    denied.push(SocketAddr::new(ip, t.listen.port()));
                    denied.extend(t.tls_listen.map(|a| SocketAddr::new(ip, a.port())));
                    denied.extend(config.metrics.map(|m| SocketAddr::new(ip, m.port())));
                }
                let wiring =
                    crate::turn::handoff::Wiring { inboxes: senders.clone(), wakers: wakers.clone(), shield: stage.as_ref().map(|_| shield_handle.sender()) };
                let (h, links, thread) = crate::turn::spawn(t, config.listen_ip, denied, epoch, Some(wiring)).map_err(|e| NodeError::Turn(e.to_string()))?;
                (Some((Arc::new(h), thread)), links.into_iter().map(Some).collect())
            }
            None => (None, Vec::new()),
        };
        let beats: Vec<_> = (0..n).map(|_| Arc::new(AtomicU64::new(0))).collect();
        for (index, ((_, inbox), backend)) in channels.into_iter().zip(backends).enumerate() {
            tracing::info!(worker = index, core = cores[index], backend = backend.kind().name(), "starting worker");
            // With the XDP stage, silence that top-N audio need not decrypt dies there.
            let core_config = CoreConfig { xdp_silence_gate: stage.is_some(), ..core_config };
            let mut worker = Worker::new(index, n, core_config, backend, config.batch, inbox, senders.clone(), snapshots.clone(), epoch, Some(slow.clone()))
                .with_events(events_tx.clone())
                .with_heartbeat(beats[index].clone());
            if let Some(rx) = feedback_rx.get_mut(index).and_then(Option::take) {
                worker = worker.with_feedback(rx, feedback_tx.clone(), wakers.clone());
            }
            if stage.is_some() {
                worker = worker.with_shield(shield_handle.sender());
            }
            if let Some(link) = turn_links.get_mut(index).and_then(Option::take) {
                worker = worker.with_turn(link);
            }
            if config.checkpoint_path().is_some() {
                worker = worker.with_checkpoint(checkpoint_tx.clone(), loaded.clone());
            }
            let core_id = core_ids.iter().find(|c| c.id == cores[index]).copied();
            let thread = std::thread::Builder::new()
                .name(format!("worker-{index}"))
                .spawn(move || {
                    if let Some(c) = core_id
                        && !core_affinity::set_for_current(c)
                    {
                        tracing::warn!(core = c.id, "could not pin the worker");
                    }
                    worker.run();
                })
                .map_err(NodeError::Thread)?;
            threads.push(thread);
        }
        let (shield, xdp_counts) = match stage {
            Some(stage) => {
                let relays = resolve_relays(&config)?;
                // ChannelData to the TURN port is unwrapped in the stage (a listener on port 0
                // gets its port later: the stage leaves it to the TURN thread).
                let turn_port = config.turn.as_ref().filter(|_| turn_in_xdp(&config)).map_or(0, |t| t.listen.port());
                let shield = Shield::new(stage, n, &relays, turn_port).map_err(NodeError::xdp("taking over the XDP stage's maps"))?;
                let counts = shield.counts();
                threads.push(shield.spawn(shield_inbox).map_err(NodeError::Thread)?);
                tracing::info!(relays = relays.len(), "XDP shield in step with the tables");
                (Some(shield_handle.clone()), Some(counts))
            }
            None => (None, None),
        };
        drop(events_tx);
        drop(checkpoint_tx);
        let ice_tcp = match &config.ice_tcp {
            Some(c) => {
                let (h, thread) = crate::icetcp::spawn(c, config.listen_ip).map_err(NodeError::io(format!("ICE-TCP listener {}", c.listen)))?;
                Some((Arc::new(h), thread))
            }
            None => None,
        };
        let extras = Extras { turn: turn.as_ref().map(|(h, _)| h.clone()), ice_tcp: ice_tcp.as_ref().map(|(h, _)| h.clone()) };
        let control = serve_control(&config, lock, hub, workers.clone(), snapshots.clone(), slow.clone(), shield.clone(), extras)?;
        tracing::info!(socket = %config.control_socket.display(), "control endpoint ready");
        let metrics = match config.metrics {
            Some(addr) => {
                let (bound, listening) = metrics::serve(
                    addr,
                    snapshots,
                    xdp_counts,
                    Some(edge_status),
                    turn.as_ref().map(|(h, _)| h.counts()),
                    ice_tcp.as_ref().map(|(h, _)| h.counts()),
                )
                .map_err(NodeError::io(format!("metrics endpoint {addr}")))?;
                tracing::info!(%bound, "metrics at http://{bound}/metrics");
                Some((bound, listening))
            }
            None => None,
        };
        Ok(Self { workers, threads, shield, slow, slow_thread, pump, control, control_socket: config.control_socket, metrics, beats, epoch, turn, ice_tcp })
    }

    /// The control endpoint's socket.
    pub fn control_socket(&self) -> &Path {
        &self.control_socket
    }

    /// The metrics endpoint's bound address (the configured one, with its port when that was 0).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(a, _)| *a)
    }

    /// The handle the control endpoint reaches the workers with.
    pub fn workers(&self) -> &Workers {
        &self.workers
    }

    /// Forwards until `stop` is set (checked every 50 ms). If a worker or the shield exits first,
    /// tells the workers to stop and returns [`NodeError::WorkerExited`] without waiting for them.
    pub fn wait(&self, stop: &AtomicBool) -> Result<(), NodeError> {
        self.wait_with(stop, |_| {})
    }

    /// [`Node::wait`], calling `tick` with [`Node::liveness`] every 50 ms (the service
    /// watchdog's keep-alive hangs on it).
    pub fn wait_with(&self, stop: &AtomicBool, mut tick: impl FnMut(Result<(), String>)) -> Result<(), NodeError> {
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
            if self.threads.iter().any(JoinHandle::is_finished) {
                self.workers.stop();
                return Err(NodeError::WorkerExited);
            }
            tick(self.liveness(WORKER_STALL));
        }
        Ok(())
    }

    /// `Ok` while every worker has turned its loop within `max_age`; else which did not, and
    /// for how long.
    pub fn liveness(&self, max_age: Duration) -> Result<(), String> {
        let now = self.epoch.elapsed().as_millis() as u64;
        let stalled: Vec<String> = self
            .beats
            .iter()
            .enumerate()
            .filter_map(|(i, b)| {
                let age = now.saturating_sub(b.load(Ordering::Relaxed));
                (age > max_age.as_millis() as u64).then(|| format!("worker {i} stalled for {age} ms"))
            })
            .collect();
        if stalled.is_empty() { Ok(()) } else { Err(stalled.join(", ")) }
    }

    /// Drains and stops: the workers stop taking datagrams, flush what is queued and exit; then
    /// the shield (its stage stays pinned and attached, so relays and allow-lists keep working
    /// without the node), the slow path, the endpoints and the event pump. Returns once every
    /// thread the node started has exited, except connections to the endpoints, which end when
    /// their peers close them; the control socket is removed and its lock released, and every
    /// leg's port is closed.
    pub fn shutdown(self) {
        let Self { workers, threads, shield, slow, slow_thread, pump, control, control_socket: _, metrics, beats: _, epoch: _, turn, ice_tcp } = self;
        if let Some((h, t)) = ice_tcp {
            h.stop();
            let _ = t.join();
        }
        if let Some((h, t)) = turn {
            h.send(crate::turn::TurnMsg::Stop);
            let _ = t.join();
        }
        workers.stop();
        if let Some(s) = &shield {
            s.stop();
        }
        for t in threads {
            let _ = t.join();
        }
        let _ = slow.send(SlowMsg::Stop);
        let _ = slow_thread.join();
        control.stop();
        if let Some((_, m)) = metrics {
            m.stop();
        }
        let _ = pump.join();
    }
}

/// Serves the control endpoint: deltas go to every worker (and then to the slow path's and the
/// shield's views of the legs), status requests to whoever answers them.
/// The optional edge services the control endpoint feeds.
struct Extras {
    turn: Option<Arc<crate::turn::TurnHandle>>,
    ice_tcp: Option<Arc<crate::icetcp::IceTcpHandle>>,
}

#[expect(clippy::too_many_arguments, reason = "plain wiring of the node's parts, called once")]
fn serve_control(
    config: &Config,
    lock: crate::lock::InstanceLock,
    hub: Arc<EventHub>,
    workers: Workers,
    snapshots: metrics::Snapshots,
    slow: Sender<SlowMsg>,
    shield: Option<ShieldHandle>,
    extras: Extras,
) -> Result<Listening, NodeError> {
    let Extras { turn, ice_tcp } = extras;
    let range = config.port_range;
    let ice_tcp_port = ice_tcp.as_ref().map(|i| i.port);
    // The count the workers' shards were made with (`Shard::owner` is `port % count`).
    let worker_count = u16::try_from(config.workers).ok();
    control::serve_with_owner(&config.control_socket, config.control_socket_owner, lock, hub, move |req| match req {
        Request::Apply(delta) => {
            if let Some(reason) = outside_range(&delta, range) {
                return Response::Rejected { generation: workers.generation(), reason };
            }
            let changes = edge::changes_of(&delta);
            let for_turn = turn.as_ref().and_then(|_| crate::turn::legs_of(&delta));
            let for_shield = shield.as_ref().map(|_| Arc::new(delta.clone()));
            match workers.apply(delta) {
                Ok((g, unbound)) => {
                    if !changes.is_empty() {
                        if let Some(i) = &ice_tcp {
                            i.legs(changes.clone());
                        }
                        let _ = slow.send(SlowMsg::Legs(changes));
                    }
                    if let (Some(t), Some(m)) = (&turn, for_turn) {
                        t.send(m);
                    }
                    if let (Some(s), Some(d)) = (&shield, for_shield)
                        && let Err(e) = s.apply(d)
                    {
                        tracing::error!(generation = g.0, error = %e, "the XDP shield could not follow this delta");
                    }
                    if unbound.is_empty() { Response::Applied(g) } else { Response::AppliedUnbound { generation: g, unbound } }
                }
                Err(e) => Response::Rejected { generation: workers.generation(), reason: e.to_string() },
            }
        }
        Request::Edge { rotate } => {
            let (tx, rx) = crossbeam_channel::bounded(1);
            let _ = slow.send(if rotate { SlowMsg::Rotate(tx) } else { SlowMsg::Status(tx) });
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(s) => Response::Edge(sluice_api::EdgeStatus { port_range: Some(range), workers: worker_count, ice_tcp_port, ..s }),
                Err(_) => Response::Error("the slow path did not answer".into()),
            }
        }
        Request::Generation => Response::Generation(workers.generation()),
        Request::Snapshot { .. } => match workers.snapshot() {
            Some(d) => Response::Snapshot(d),
            None => Response::Error("no worker answered".into()),
        },
        Request::Stats => Response::Stats(snapshots.lock().map(|s| s.iter().map(|w| w.core.clone()).collect()).unwrap_or_default()),
        Request::StreamState { legs } => match workers.checkpoint() {
            Some(mut ck) => {
                ck.legs.retain(|l| legs.contains(&l.leg));
                ck.streams.retain(|s| legs.contains(&s.subscriber));
                ck.webrtc.retain(|l| legs.contains(l));
                Response::StreamState(ck)
            }
            None => Response::Error("a worker did not answer".into()),
        },
        Request::Restore(ck) => {
            let ck = Arc::new(ck);
            workers.broadcast(|| WorkerMsg::Restore(ck.clone()));
            Response::Restoring
        }
        Request::Subscribe { .. } | Request::Hello { .. } => Response::Error("answered by the endpoint itself".into()),
    })
    .map_err(NodeError::io(format!("control socket {}", config.control_socket.display())))
}

/// Why a delta is refused for a leg outside the configured port range (the XDP stage passes
/// only that range, and the operator chose it to keep clear of other services' ports).
fn outside_range(delta: &Delta, (lo, hi): (u16, u16)) -> Option<String> {
    delta.ops.iter().find_map(|op| match op {
        Op::UpsertLeg(l) if !(lo..=hi).contains(&l.local_port) => {
            Some(format!("leg {}: local_port {} is outside the dataplane's port_range [{lo}, {hi}]", l.id, l.local_port))
        }
        Op::UpsertLeg(l) if l.rtcp.as_deref().is_some_and(|c| !(lo..=hi).contains(&c.local_port)) => {
            Some(format!("leg {}: rtcp.local_port {} is outside the dataplane's port_range [{lo}, {hi}]", l.id, l.rtcp.as_deref().map_or(0, |c| c.local_port)))
        }
        _ => None,
    })
}

/// Raises the soft descriptor limit to the hard one (each leg holds a socket) and says how many
/// legs that leaves room for; warns when the port range overlaps the kernel's ephemeral range.
fn raise_descriptor_limit(config: &Config) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit(2) writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot read RLIMIT_NOFILE");
        return;
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit(2) reads one rlimit from the struct we own; raising the soft limit up
        // to the hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim) } != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), soft = before, hard = lim.rlim_max, "cannot raise RLIMIT_NOFILE");
            lim.rlim_cur = before;
        }
    }
    // Descriptors that are not leg sockets: control and metrics connections, epoll, io_uring,
    // AF_XDP, logs, the slow path.
    let reserve = 256 + 16 * config.workers as u64;
    let (lo, hi) = config.port_range;
    let legs = (lim.rlim_cur.saturating_sub(reserve)).min(u64::from(hi - lo) + 1);
    tracing::info!(soft_was = before, soft = lim.rlim_cur, hard = lim.rlim_max, leg_capacity = legs, "descriptor limit: one socket per leg");
    if let Some((a, b)) = sluice_api::ephemeral_overlap(config.port_range) {
        tracing::warn!(port_range = ?config.port_range, overlap = ?(a, b), file = sluice_api::EPHEMERAL_RANGE_FILE, "port_range overlaps the kernel's ephemeral ports: a client socket may take a leg's port first");
    }
}

/// Opens (or re-uses, from its pins) the XDP stage, attaches it (driver mode, generic with a
/// logged warning) and sets the media port range and the AF_XDP flag; `None` when the stage is off.
fn open_xdp_stage(config: &Config) -> Result<Option<XdpStage>, NodeError> {
    if config.xdp.mode == XdpMode::Off {
        return Ok(None);
    }
    let iface = config.xdp.interface.as_deref().ok_or(NodeError::Missing("xdp.interface"))?;
    let mut stage = XdpStage::open(&config.xdp.instance).map_err(NodeError::xdp(format!("opening XDP stage {:?}", config.xdp.instance)))?;
    let mode = stage.attach(iface).map_err(NodeError::xdp(format!("attaching the XDP stage to {iface}")))?;
    let (lo, hi) = config.port_range;
    stage.set_port_range(lo..=hi).map_err(NodeError::xdp("setting the media port range"))?;
    stage.set_af_xdp(config.xdp.mode == XdpMode::AfXdp).map_err(NodeError::xdp("setting the AF_XDP flag"))?;
    tracing::info!(interface = iface, instance = %config.xdp.instance, ?mode, xdp_mode = ?config.xdp.mode, "XDP stage ready");
    Ok(Some(stage))
}

/// Whether the XDP stage may unwrap TURN ChannelData on the attached interface. The unwrapped
/// datagram comes from the relayed address, one of the node's own, arriving on that interface:
/// the kernel drops such packets as martians unless the interface's `accept_local` is on (and
/// reverse-path filtering does not refuse a local source), so the daemon turns it on for IPv4
/// (it holds CAP_NET_ADMIN for XDP anyway). If it cannot, ChannelData stays with the TURN
/// thread, which still relays it, and the log says why.
fn turn_in_xdp(config: &Config) -> bool {
    let Some(iface) = config.xdp.interface.as_deref() else { return false };
    let path = format!("/proc/sys/net/ipv4/conf/{iface}/accept_local");
    match std::fs::read_to_string(&path).map(|v| v.trim() == "1") {
        Ok(true) => true,
        _ => match std::fs::write(&path, "1") {
            Ok(()) => {
                tracing::info!(interface = iface, "accept_local turned on: TURN ChannelData is unwrapped in XDP and comes from the node's relayed addresses");
                true
            }
            Err(e) => {
                tracing::warn!(interface = iface, error = %e, path, "cannot turn accept_local on: TURN ChannelData stays with the TURN thread (not unwrapped in XDP)");
                false
            }
        },
    }
}

/// The configured relay legs with their egress interface resolved (index and MAC).
fn resolve_relays(config: &Config) -> Result<Vec<Relay>, NodeError> {
    let attached = config.xdp.interface.as_deref().unwrap_or_default();
    config
        .xdp
        .relays
        .iter()
        .map(|r| {
            let name = r.egress.as_deref().unwrap_or(attached);
            let iface = Interface::lookup(name).map_err(|source| NodeError::Interface { op: format!("relay egress interface {name}"), source })?;
            let egress = if name == attached { Egress::SameInterface } else { Egress::Interface(iface.index) };
            let dst_mac = parse_mac(&r.dst_mac).ok_or(NodeError::Missing("relay dst_mac (validated at start)"))?;
            Ok(Relay { local_port: r.local_port, remote: r.remote, route: RelayRoute { src: r.src, dst: r.dst, src_mac: iface.mac, dst_mac, egress } })
        })
        .collect()
}
