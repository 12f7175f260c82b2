//! `sluice-dataplane`: the forwarding daemon.
//!
//! Parses the configuration and its CLI overrides and starts a [`Node`] (one pinned worker per
//! configured core, the control endpoint on a Unix socket, the Prometheus endpoint), then
//! forwards until SIGTERM/SIGINT, when it stops taking new datagrams, flushes what is queued and
//! exits. `sluice-dataplane doctor` checks the host against the same configuration instead.
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
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
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Number of workers (one per core).
    #[arg(long, global = true)]
    workers: Option<usize>,
    /// I/O backend.
    #[arg(long, value_enum, global = true)]
    backend: Option<BackendChoice>,
    /// Address the media sockets bind to.
    #[arg(long, global = true)]
    listen_ip: Option<std::net::IpAddr>,
    /// Unix socket of the control endpoint.
    #[arg(long, global = true)]
    control_socket: Option<PathBuf>,
    /// Prometheus endpoint address (`off` to disable).
    #[arg(long, global = true)]
    metrics: Option<String>,
    /// Turn UDP GSO off.
    #[arg(long, global = true)]
    no_gso: bool,
    /// Turn UDP GRO (coalesced receives) off.
    #[arg(long, global = true)]
    no_gro: bool,
    /// XDP first stage mode.
    #[arg(long, value_enum, global = true)]
    xdp_mode: Option<XdpMode>,
    /// Interface the XDP stage attaches to.
    #[arg(long, global = true)]
    xdp_interface: Option<String>,
    /// Pin directory name of the XDP stage under /sys/fs/bpf/sluice/.
    #[arg(long, global = true)]
    xdp_instance: Option<String>,
    /// Check the configuration (the file and these flags) against this machine and exit: 0 with
    /// a summary when the dataplane would start with it, else the reason. Starts nothing.
    #[arg(long)]
    check_config: bool,
    /// Logs on stderr as text, or as JSON (one object per line: timestamp, level, target,
    /// fields), for log shippers. `RUST_LOG` filters both.
    #[arg(long, value_enum, default_value = "text")]
    log_format: sluice_api::logs::LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check this host against the configuration (the file and the flags) and say what to fix:
    /// kernel features (io_uring, UDP GSO/GRO, BPF, the NIC's XDP and AF_XDP zero-copy), worker
    /// cores against isolation and interrupts, RSS queues, rp_filter, socket buffer, descriptor
    /// and memlock limits, capabilities, the clock source. Exits 0 when nothing fails (warnings
    /// do not), 1 when a check fails, 2 when the configuration is invalid. Changes nothing.
    Doctor {
        /// One JSON object (target, checks with name/status/found/fix/consequence, summary).
        #[arg(long)]
        json: bool,
    },
}

/// Exit status of `doctor` on an invalid configuration (1 is a failed check).
const EXIT_BAD_CONFIG: u8 = 2;

fn main() -> anyhow::Result<ExitCode> {
    if sluice_api::logs::man_page_requested(<Args as clap::CommandFactory>::command(), "8")? {
        return Ok(ExitCode::SUCCESS);
    }
    let args = Args::parse();
    sluice_api::logs::init(args.log_format);
    let doctor = matches!(args.command, Some(Command::Doctor { .. }));
    let config = match configure(&args) {
        Ok(c) => c,
        Err(e) if doctor => {
            eprintln!("sluice-dataplane doctor: bad configuration: {e:#}");
            return Ok(ExitCode::from(EXIT_BAD_CONFIG));
        }
        Err(e) => return Err(e),
    };
    if let Some(Command::Doctor { json }) = args.command {
        let report = match sluice_dataplane::doctor::run(&config) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("sluice-dataplane doctor: bad configuration: {e}");
                return Ok(ExitCode::from(EXIT_BAD_CONFIG));
            }
        };
        if json {
            println!("{}", serde_json::to_string_pretty(&report).context("serialising the report")?);
        } else {
            print!("{}", report.text());
        }
        return Ok(if report.failed() { ExitCode::FAILURE } else { ExitCode::SUCCESS });
    }
    run(args, config)
}

/// The file's settings with the flags applied.
fn configure(args: &Args) -> anyhow::Result<Config> {
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
    if let Some(s) = &args.control_socket {
        config.control_socket = s.clone();
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
    if let Some(i) = &args.xdp_interface {
        config.xdp.interface = Some(i.clone());
    }
    if let Some(i) = &args.xdp_instance {
        config.xdp.instance = i.clone();
    }
    Ok(config)
}

fn run(args: Args, config: Config) -> anyhow::Result<ExitCode> {
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
        return Ok(ExitCode::SUCCESS);
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
    Ok(ExitCode::SUCCESS)
}
