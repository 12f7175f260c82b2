//! `sluice-dataplane`: the forwarding daemon.
//!
//! Parses the configuration and its CLI overrides and starts a [`Node`] (one pinned worker per
//! configured core, the control endpoint on a Unix socket, the Prometheus endpoint), then
//! forwards until SIGTERM/SIGINT, when it stops taking new datagrams, flushes what is queued and
//! exits.
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context as _;
use clap::Parser;
use sluice_dataplane::config::{BackendChoice, Config, XdpMode, parse_metrics};
use sluice_dataplane::node::Node;

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
    /// Check the configuration (the file and these flags) against this machine and exit: 0 with
    /// a summary when the dataplane would start with it, else the reason. Starts nothing.
    #[arg(long)]
    check_config: bool,
    /// Logs on stderr as text, or as JSON (one object per line: timestamp, level, target,
    /// fields), for log shippers. `RUST_LOG` filters both.
    #[arg(long, value_enum, default_value = "text")]
    log_format: sluice_api::logs::LogFormat,
}

fn main() -> anyhow::Result<()> {
    if sluice_api::logs::man_page_requested(<Args as clap::CommandFactory>::command(), "8")? {
        return Ok(());
    }
    let args = Args::parse();
    sluice_api::logs::init(args.log_format);
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
    if args.check_config {
        config.validate(&sluice_dataplane::config::allowed_cores()).context("the configuration")?;
        println!(
            "configuration OK: {} worker(s) on cores {:?}, backend {:?}, legs on {} ports {}-{}, control socket {}, metrics {}, XDP {:?}",
            config.workers,
            config.worker_cores(&sluice_dataplane::config::allowed_cores()),
            config.backend,
            config.listen_ip,
            config.port_range.0,
            config.port_range.1,
            config.control_socket.display(),
            config.metrics.map_or_else(|| "off".to_owned(), |m| m.to_string()),
            config.xdp.mode,
        );
        return Ok(());
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [libc::SIGTERM, libc::SIGINT] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    let workers = config.workers;
    let node = Node::start(config)?;
    // Ready for systemd (`Type=notify`) only now: every worker runs and the control endpoint
    // listens. The watchdog's keep-alive follows the workers' liveness.
    sluice_api::service::ready(&format!("forwarding: {workers} worker(s), control socket {}", node.control_socket().display()));
    let mut watchdog = sluice_api::service::Watchdog::from_env();
    node.wait_with(&stop, |health| {
        if let Some(w) = watchdog.as_mut() {
            w.tick(health);
        }
    })?;
    tracing::info!("signal received: draining");
    sluice_api::service::stopping();
    node.shutdown();
    tracing::info!("stopped cleanly");
    Ok(())
}
