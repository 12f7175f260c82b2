//! `sluice-controlplane`: programs the dataplane for signaling services (gRPC).
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use sluice_controlplane::api::{NodeService, RoutesService};
use sluice_controlplane::client::Link;
use sluice_controlplane::config::{Config, Transport};
use sluice_controlplane::controller::{Controller, Shared};
use sluice_controlplane::engine::Engine;
use sluice_controlplane::journal::Journal;
use sluice_controlplane::lb::Lb;
use sluice_controlplane::pb;
use sluice_controlplane::placement::Placer;

/// Sluice control plane: the Routes and Node gRPC APIs, desired state with a journal, and the
/// compiler that keeps the dataplane's tables equal to it.
///
/// Settings come from the TOML file (`[controlplane]` table) and are overridden by the flags.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    /// TOML configuration file.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// gRPC listen address.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// The dataplane's control socket.
    #[arg(long)]
    dataplane_socket: Option<PathBuf>,
    /// State directory (journal and snapshot).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Redis holding the load balancer's state (`redis://host:port/`).
    #[arg(long)]
    redis_url: Option<String>,
    /// This node's id in Redis.
    #[arg(long)]
    node_id: Option<String>,
    /// Prometheus endpoint address (`/metrics`), e.g. `127.0.0.1:9312`; `off` for none.
    #[arg(long)]
    metrics: Option<String>,
    /// Leg port range, `FIRST-LAST`.
    #[arg(long, value_parser = parse_range)]
    port_range: Option<(u16, u16)>,
    /// Repair a damaged journal in the state directory and exit: keep a copy of it beside it,
    /// then cut it where its valid records end (every change journaled from there on is lost).
    /// Only when the start refused a damaged journal, with no control plane running.
    #[arg(long)]
    repair_journal: bool,
    /// Check the configuration (the file and these flags) and exit: 0 with a summary when the
    /// control plane would start with it, else the reason. Starts nothing, opens no state.
    #[arg(long)]
    check_config: bool,
    /// Logs on stderr as text, or as JSON (one object per line: timestamp, level, target,
    /// fields), for log shippers. `RUST_LOG` filters both.
    #[arg(long, value_enum, default_value = "text")]
    log_format: sluice_api::logs::LogFormat,
}

fn parse_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s.split_once('-').ok_or("expected FIRST-LAST")?;
    Ok((a.trim().parse().map_err(|e| format!("{a}: {e}"))?, b.trim().parse().map_err(|e| format!("{b}: {e}"))?))
}

/// How often the link task checks the dataplane (and retries a resync while it is away).
const LINK_INTERVAL: Duration = Duration::from_millis(250);

fn main() -> anyhow::Result<()> {
    if sluice_api::logs::man_page_requested(<Args as clap::CommandFactory>::command(), "8")? {
        return Ok(());
    }
    let args = Args::parse();
    sluice_api::logs::init(args.log_format);
    let mut config = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(m) = &args.metrics {
        config.metrics_listen = match m.as_str() {
            "" | "off" => None,
            a => Some(a.parse().with_context(|| format!("--metrics {a}: expected host:port or off"))?),
        };
    }
    if let Some(l) = args.listen {
        config.grpc_listen = l;
    }
    if let Some(s) = args.dataplane_socket {
        config.dataplane_socket = s;
    }
    if let Some(s) = args.state_dir {
        config.state_dir = s;
    }
    if let Some(u) = args.redis_url {
        config.redis_url = Some(u);
    }
    if let Some(n) = args.node_id {
        config.node_id = Some(n);
    }
    if let Some(r) = args.port_range {
        config.port_range = r;
    }
    if args.repair_journal {
        let r = Journal::repair(&config.state_dir).with_context(|| format!("repairing the journal in {}", config.state_dir.display()))?;
        match r.copy {
            Some(copy) => println!("kept {} record(s), cut {} byte(s); the journal as it was is in {}", r.kept, r.cut_bytes, copy.display()),
            None => println!("the journal's {} record(s) are intact: nothing to repair", r.kept),
        }
        return Ok(());
    }
    let ports = config.ports()?;
    let session_affinity_legs = config.session_affinity_legs()?;
    let shared_port_base = config.shared_port_base()?;
    if let Some(overlap) = sluice_api::ephemeral_overlap(config.port_range) {
        tracing::warn!(port_range = ?config.port_range, ?overlap, file = sluice_api::EPHEMERAL_RANGE_FILE, "controlplane.port_range overlaps the kernel's ephemeral ports: a client socket may take a leg's port first");
    }
    let transport = config.transport()?;
    if let Some(warning) = config.transport_warning() {
        tracing::warn!("{warning}");
    }
    let redis = config.redis()?;
    config.turn()?;
    if args.check_config {
        println!(
            "configuration OK: gRPC on {} ({}), dataplane socket {}, state in {}, leg ports {}-{}, {}",
            config.grpc_listen,
            if config.plaintext { "plaintext" } else { "TLS" },
            config.dataplane_socket.display(),
            config.state_dir.display(),
            config.port_range.0,
            config.port_range.1,
            redis.as_ref().map_or_else(|| "no Redis (one node)".to_owned(), |r| format!("Redis as node {:?}", r.node_id)),
        );
        return Ok(());
    }
    let (journal, desired, info) = Journal::open(&config.state_dir, ports).with_context(|| format!("state in {}", config.state_dir.display()))?;
    if info.torn_bytes > 0 {
        tracing::warn!(state_dir = %config.state_dir.display(), torn_bytes = info.torn_bytes, "cut an unfinished final journal append (a crash while it was written; it was never acknowledged)");
    }
    tracing::info!(
        state_dir = %config.state_dir.display(),
        sessions = desired.sessions.len(),
        snapshot_seq = info.snapshot_seq,
        replayed = info.replayed,
        left_out = info.left_out,
        torn_bytes = info.torn_bytes,
        "desired state recovered"
    );
    let mut desired = desired;
    desired.quotas = sluice_controlplane::state::Quotas {
        sessions: config.max_sessions.unwrap_or(usize::MAX),
        legs: config.max_legs.unwrap_or(usize::MAX),
        subscriptions: config.max_subscriptions.unwrap_or(usize::MAX),
    };
    let mut engine = Engine::new(desired, journal);
    engine.set_session_affinity_legs(session_affinity_legs).context("journaling controlplane.session_affinity_legs")?;
    engine.set_shared_port_base(shared_port_base).context("controlplane.shared_port_base")?;
    engine.set_announce_ip(config.announce_ip);
    let engine = Controller::new(engine, Link::new(&config.dataplane_socket));
    sluice_controlplane::events::spawn(engine.clone(), config.dataplane_socket.clone()).context("dataplane event thread")?;
    // Bound before the heartbeat starts: the address it advertises by default is the one bound
    // (grpc_listen may ask for port 0).
    let listener = std::net::TcpListener::bind(config.grpc_listen).with_context(|| format!("gRPC listen {}", config.grpc_listen))?;
    listener.set_nonblocking(true).context("gRPC listener")?;
    let (lb, placer) = match redis {
        Some(r) => {
            let bound = listener.local_addr()?;
            if r.advertise.is_none() && bound.ip().is_unspecified() {
                tracing::warn!(%bound, "controlplane.advertise is not set: Node.Place answers this node with its listen address, which other hosts cannot dial; set advertise");
            }
            let grpc = r.advertise.clone().unwrap_or_else(|| bound.to_string());
            let lb = Lb::new(&r, &grpc).context("controlplane.redis_url")?;
            engine.engine().set_lb(lb.clone());
            let (e, e2, e3) = (engine.clone(), engine.clone(), engine.clone());
            let keep_state = r.state_in_redis;
            lb.spawn(
                move || e.status(),
                move || e2.engine().desired().sessions.keys().cloned().collect(),
                move |s| if keep_state { e3.engine().export_session(s) } else { None },
            )
            .context("heartbeat thread")?;
            let placer = Placer::new(&r.url, r.placement_threshold).context("controlplane.redis_url")?;
            (Some(lb), Some(placer))
        }
        None => {
            tracing::info!("no redis_url: single node");
            (None, None)
        }
    };

    let metrics_listener = match config.metrics_listen {
        Some(a) => Some(sluice_controlplane::metrics::bind(a).with_context(|| format!("controlplane.metrics_listen {a}"))?),
        None => None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let served = rt.block_on(serve(config, transport, engine, listener, metrics_listener, placer));
    if let Some(lb) = lb {
        lb.shutdown();
    }
    served
}

async fn serve(
    config: Config,
    transport: Transport,
    engine: Shared,
    listener: std::net::TcpListener,
    metrics_listener: Option<std::net::TcpListener>,
    placer: Option<Placer>,
) -> anyhow::Result<()> {
    let metrics = std::sync::Arc::new(sluice_controlplane::metrics::Metrics::default());
    if let Some(l) = metrics_listener {
        let l = tokio::net::TcpListener::from_std(l).context("metrics endpoint")?;
        tracing::info!(listen = %l.local_addr()?, "metrics at /metrics");
        tokio::spawn(sluice_controlplane::metrics::serve(l, engine.clone(), metrics.clone(), config.metrics_sessions));
    }
    // The link task: first sync at start (a resync after a restart of either process), then a
    // check every interval.
    let link_engine = engine.clone();
    tokio::spawn(async move {
        let mut connected = false;
        loop {
            let e = link_engine.clone();
            let r = tokio::task::spawn_blocking(move || e.tick()).await;
            match r {
                Ok(Ok(_)) if !connected => {
                    connected = true;
                }
                Ok(Err(err)) if connected => {
                    connected = false;
                    tracing::warn!(%err, "dataplane link lost; retrying");
                }
                Ok(Err(err)) => tracing::debug!(%err, "dataplane not reachable yet"),
                _ => {}
            }
            tokio::time::sleep(LINK_INTERVAL).await;
        }
    });

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<pb::routes_server::RoutesServer<RoutesService>>().await;
    health_reporter.set_serving::<pb::node_server::NodeServer<NodeService>>().await;
    tokio::spawn(follow_health(engine.clone(), health_reporter));
    // Both reflection versions: grpcurl and other tools still differ in which one they ask.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().context("reflection service")?;
    let reflection_v1alpha = reflection().build_v1alpha().context("reflection service")?;
    let listener = tokio::net::TcpListener::from_std(listener).with_context(|| format!("gRPC listen {}", config.grpc_listen))?;
    let mut builder = tonic::transport::Server::builder();
    let mode = match &transport {
        Transport::Plaintext => "plaintext",
        Transport::Tls(t) => {
            let read = |p: &std::path::Path| std::fs::read(p).with_context(|| format!("controlplane.tls: {}", p.display()));
            let mut tls = tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(read(&t.cert)?, read(&t.key)?));
            if let Some(ca) = &t.client_ca {
                tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?));
            }
            builder = builder.tls_config(tls).context("controlplane.tls")?;
            if t.client_ca.is_some() { "mtls" } else { "tls" }
        }
    };
    let bound = listener.local_addr()?;
    tracing::info!(listen = %bound, transport = mode, dataplane = %config.dataplane_socket.display(), "gRPC ready");
    // Ready for systemd (`Type=notify`): gRPC listens (the listener is bound and the server
    // takes connections from here). The watchdog's keep-alive comes from this runtime, so a
    // runtime that stops turning stops it, and from the engine's lock being takeable.
    sluice_api::service::ready(&format!("gRPC on {bound} ({mode})"));
    if let Some(mut w) = sluice_api::service::Watchdog::from_env() {
        let e = engine.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(w.every() / 2).await;
                let e = e.clone();
                let health = tokio::time::timeout(w.every(), tokio::task::spawn_blocking(move || drop(e.engine())))
                    .await
                    .map_err(|_| "the engine's lock was not free within the watchdog interval".to_owned())
                    .and_then(|r| r.map_err(|e| format!("liveness probe failed: {e}")));
                w.tick(health);
            }
        });
    }
    builder
        .layer(sluice_controlplane::metrics::GrpcLayer(metrics))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(pb::routes_server::RoutesServer::new(
            RoutesService::with_watch_limits(engine.clone(), config.max_watchers, config.max_watchers_per_connection).with_turn(config.turn()?),
        ))
        .add_service(pb::node_server::NodeServer::new(NodeService::with_placer(engine, placer)))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), shutdown())
        .await
        .context("gRPC server")?;
    tracing::info!("stopped");
    Ok(())
}

/// Health follows the dataplane: NOT_SERVING (the node, Routes and Node) while it does not
/// answer (dead, or alive and silent for `client::HUNG_AFTER`), logged once each way.
async fn follow_health(engine: Shared, reporter: tonic_health::server::HealthReporter) {
    use tonic_health::ServingStatus;
    let mut serving = true;
    loop {
        tokio::time::sleep(LINK_INTERVAL).await;
        let now = engine.liveness().serving();
        if now == serving {
            continue;
        }
        serving = now;
        let status = if now { ServingStatus::Serving } else { ServingStatus::NotServing };
        if now {
            tracing::info!("dataplane answering again: health SERVING");
        } else {
            tracing::warn!(
                "dataplane not answering: health NOT_SERVING; reads are served from the control plane's state, changes are committed and installed when it answers"
            );
        }
        for service in ["", "sluice.v1.Routes", "sluice.v1.Node"] {
            reporter.set_service_status(service, status).await;
        }
    }
}

async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
    sluice_api::service::stopping();
}
