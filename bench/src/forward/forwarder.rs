//! The forwarder under test: the real `sluice-dataplane` daemon in the forwarder's namespace,
//! programmed over its control socket, or the `naive` one-syscall-per-datagram loop around the
//! same forwarding core.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant as WallInstant};

use anyhow::{Context as _, bail};
use sluice_core::forward::{Core, CoreConfig, OutBatch};
use sluice_core::ids::Generation;
use sluice_core::srtp::Profile;
use sluice_core::table::Delta;
use sluice_core::time::Instant;
use sluice_dataplane::control::{Client, Request, Response};

use super::accounting::{process_cpu_ns, thread_cpu_ns};
use super::{BASE_PORT, FORWARDER_IP, Load, METRICS_PORT, Topology};

/// Where the forwarder under test runs.
pub(super) enum Forwarder {
    Daemon { child: Child, control: Client, socket: PathBuf },
    Naive { stop: Arc<AtomicBool>, out: Arc<AtomicU64>, cpu_ns: Arc<AtomicU64>, thread: Option<std::thread::JoinHandle<()>> },
}

/// A backend as the bench takes it: `naive`, `mmsg` or `uring`, optionally with `-nogso` (one
/// datagram per send) and/or `-nogro` (one datagram per receive): (kind, gso, gro).
pub(super) fn parse_backend(name: &str) -> anyhow::Result<(&str, bool, bool)> {
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
    pub(super) fn start(topo: &Topology, name: &str, profile: Profile, load: Load, core: usize, dir: &Path) -> anyhow::Result<Self> {
        let (backend, gso, gro) = parse_backend(name)?;
        let delta = Delta { generation: Generation(1), replace_all: false, ops: load.ops(profile) };
        if backend == "naive" {
            let Load::Fanout(fanout) = load else { bail!("the naive loop runs the fan-out load only") };
            return Self::naive(topo, delta, fanout, core);
        }
        let socket = dir.join(format!("bench-{}.sock", std::process::id()));
        let cfg = dir.join(format!("bench-{}.toml", std::process::id()));
        let [a, b, c, d] = FORWARDER_IP;
        std::fs::write(
            &cfg,
            format!(
                "[dataplane]\nlisten_ip = \"{a}.{b}.{c}.{d}\"\nworkers = 1\ncores = [{core}]\nbackend = \"{backend}\"\nbatch = 64\ngso = {gso}\ngro = {gro}\ncontrol_socket = \"{}\"\ncheckpoint = \"off\"\nmetrics = \"127.0.0.1:{METRICS_PORT}\"\n",
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
    pub(super) fn counters(&mut self) -> anyhow::Result<(u64, u64)> {
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
                for f in [sluice_dataplane::control::lock_path(socket), socket.with_extension("toml"), socket.clone()] {
                    let _ = std::fs::remove_file(f);
                }
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
