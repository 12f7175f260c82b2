//! The dataplane's configuration: one TOML file, CLI overrides on top, validated as a whole before
//! anything starts, so a bad setting refuses to start with a message that names it.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Which batched UDP backend the workers use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// The backend that won the forwarding benchmark on this machine kind: `mmsg` (it forwarded
    /// 1.1–1.45× more packets per CPU-second than `uring` at fan-out 1, 4 and 16; see the
    /// README's benchmark section).
    #[default]
    Auto,
    /// io_uring: multishot recvmsg with a provided-buffer ring, batched sendmsg. Falls back to
    /// `mmsg` with a logged reason where io_uring is unavailable (`kernel.io_uring_disabled`).
    Uring,
    /// recvmmsg/sendmmsg on mio readiness: the portable fallback.
    Mmsg,
    /// AF_XDP: one XSK per worker, bound to RX queue `worker index` of `[dataplane.xdp].interface`
    /// (zero-copy where the driver allows, copy mode otherwise); the XDP stage redirects known
    /// media to it. Needs `[dataplane.xdp] mode = "af_xdp"`.
    Xsk,
}

/// What the XDP first stage does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum XdpMode {
    /// No XDP program: every packet reaches the kernel's UDP stack.
    #[default]
    Off,
    /// The flood shield: RTP/RTCP from unknown sources or with unannounced SSRCs is dropped in
    /// the driver; known media passes to the workers' sockets; relay legs are forwarded in the
    /// kernel.
    Shield,
    /// The shield, and known media is redirected to the workers' AF_XDP sockets (`backend =
    /// "xsk"`).
    AfXdp,
}

/// One relay leg forwarded entirely by the XDP stage (`[[dataplane.xdp.relays]]`): datagrams
/// from `remote` to `local_port` are rewritten to `src` → `dst` and sent on.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// The port the relayed party sends to (inside `port_range`).
    pub local_port: u16,
    /// The relayed party's address.
    pub remote: SocketAddr,
    /// The new source (ours, on the egress side); same family as `remote`.
    pub src: SocketAddr,
    /// The new destination (the other party); same family as `remote`.
    pub dst: SocketAddr,
    /// The next hop's MAC address towards `dst`, `aa:bb:cc:dd:ee:ff`.
    pub dst_mac: String,
    /// The interface to send on; default: back out of `[dataplane.xdp].interface` (XDP_TX).
    pub egress: Option<String>,
}

/// The XDP first stage (`[dataplane.xdp]`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct XdpConfig {
    /// Off, the shield, or the shield with AF_XDP.
    pub mode: XdpMode,
    /// The interface to attach to (in the daemon's network namespace).
    pub interface: Option<String>,
    /// The pin directory's name under `/sys/fs/bpf/sluice/`: a restart with the same instance
    /// re-uses the maps and the attachment, so relays and the shield keep working meanwhile.
    pub instance: String,
    /// Relay legs.
    pub relays: Vec<RelayConfig>,
    /// With `mode = "af_xdp"`: which path sends (`auto`: the XSK ring in zero-copy mode, the leg
    /// sockets with GSO in copy mode; `ring`; `socket`).
    pub af_xdp_tx: crate::io::XskTx,
    /// With `mode = "af_xdp"`: UMEM frames (2 KiB each) per worker's XSK for receive, a power
    /// of two in 2048..=65536; the buffering a burst meets while the worker is busy, as the
    /// socket buffer is for the socket backends.
    pub af_xdp_rx_frames: usize,
}

impl Default for XdpConfig {
    fn default() -> Self {
        Self {
            mode: XdpMode::Off,
            interface: None,
            instance: "default".into(),
            relays: Vec::new(),
            af_xdp_tx: crate::io::XskTx::Auto,
            af_xdp_rx_frames: crate::io::xsk::XSK_RX_FRAMES,
        }
    }
}

pub use crate::io::xsk::parse_mac;

/// The whole configuration (the `[dataplane]` table of the TOML file).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the media sockets bind to.
    pub listen_ip: IpAddr,
    /// Number of workers; each is pinned to one core.
    pub workers: usize,
    /// The cores to pin the workers to, by id (default: the first `workers` of the cores this
    /// process may run on).
    pub cores: Option<Vec<usize>>,
    /// The I/O backend.
    pub backend: BackendChoice,
    /// Datagrams a worker takes per receive batch.
    pub batch: usize,
    /// Unix socket of the control endpoint (created mode 0600 whatever the umask).
    pub control_socket: PathBuf,
    /// The uid the control socket's file is handed to, who may then use it besides root and the
    /// daemon's own uid (every other peer is refused by its `SO_PEERCRED`); default: nobody else.
    pub control_socket_owner: Option<u32>,
    /// Address of the Prometheus endpoint (`/metrics`); `""` or `"off"` disables it.
    #[serde(deserialize_with = "metrics_address")]
    pub metrics: Option<SocketAddr>,
    /// The checkpoint file (see [`crate::checkpoint`]): ROCs, replay windows, latched remotes
    /// and subscriber stream positions, so a restarted dataplane carries its calls on. Default:
    /// beside the control socket, with the extension `.state`; `"off"` disables it.
    pub checkpoint: Option<PathBuf>,
    /// SRTP replay window per stream, in packets (128..=1024, a multiple of 64).
    pub replay_window: u16,
    /// Packets kept per video layer to answer NACKs.
    pub rtx_cache_packets: usize,
    /// Local ports legs may use, inclusive; a delta with a leg outside it is refused. The
    /// default, 20000-32767, lies below Linux's default ephemeral range (32768-60999, in
    /// `/proc/sys/net/ipv4/ip_local_port_range`), so no client socket takes a leg's port; an
    /// overlap is warned about at start.
    pub port_range: (u16, u16),
    /// Use UDP GSO for runs of packets to one destination.
    pub gso: bool,
    /// Ask the kernel for coalesced receives (UDP GRO): a burst from one publisher comes out of
    /// one receive.
    pub gro: bool,
    /// SO_RCVBUF/SO_SNDBUF of each leg socket, bytes (the kernel caps it at net.core.rmem_max /
    /// wmem_max). Bursts of video frames overflow the 208 KiB default.
    pub socket_buffer_bytes: usize,
    /// WebRTC legs: ICE consent expires after this many ms without an authenticated check on the
    /// selected pair (RFC 7675: 30000), and media to the leg stops.
    pub consent_timeout_ms: u64,
    /// WebRTC legs: a DTLS handshake not complete after this many ms fails.
    pub handshake_timeout_ms: u64,
    /// The XDP first stage.
    pub xdp: XdpConfig,
    /// The embedded TURN server (`[dataplane.turn]`); absent: none.
    pub turn: Option<TurnConfig>,
    /// ICE-TCP, a passive TCP candidate for WebRTC legs (`[dataplane.ice_tcp]`); absent: none.
    pub ice_tcp: Option<crate::icetcp::IceTcpConfig>,
}

/// `[dataplane.turn]`: the embedded TURN server (RFC 8656) for participants that reach Sluice only
/// through a relay (UDP blocked, or only TCP/TLS to a well-known port). Its allocations reach
/// Sluice's own legs only, unless `allow_peers` opts further ranges in.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TurnConfig {
    /// UDP and TCP address of the TURN server (`turn:` URLs), e.g. `0.0.0.0:3478`.
    pub listen: SocketAddr,
    /// TLS address (`turns:` URLs), e.g. `0.0.0.0:5349` or `:443`; needs `tls_cert` and `tls_key`.
    #[serde(default)]
    pub tls_listen: Option<SocketAddr>,
    /// PEM certificate chain for TLS.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// REALM (default "sluice").
    #[serde(default = "default_realm")]
    pub realm: String,
    /// The TURN REST API shared secret: the control plane hands out `expiry:user` usernames with
    /// passwords HMAC-SHA1'd under it (the same secret on both).
    pub secret: String,
    /// The secret before a rotation, still accepted until the credentials issued under it expire.
    #[serde(default)]
    pub previous_secret: Option<String>,
    /// The address relayed addresses are on (default: `listen_ip` when it is a specific address).
    #[serde(default)]
    pub relay_ip: Option<IpAddr>,
    /// Ports relayed addresses are taken from, inclusive (outside the legs' `port_range`).
    #[serde(default = "default_relay_ports")]
    pub relay_ports: (u16, u16),
    /// The addresses legs are reached at, which allocations may relay to (default: `listen_ip`
    /// when specific, else `relay_ip`). A leg is reachable at each of them, on its port only.
    #[serde(default)]
    pub leg_ips: Vec<IpAddr>,
    /// Ranges allocations may reach besides Sluice's legs (an explicit opt-in; CIDRs). The
    /// denied ranges still win.
    #[serde(default)]
    pub allow_peers: Vec<String>,
    /// Ranges allocations never reach (CIDRs); default: private, loopback, link-local, CGNAT,
    /// multicast and their IPv6 counterparts. A leg's exact address is reachable inside them.
    #[serde(default)]
    pub deny_peers: Option<Vec<String>>,
    /// Allocations on the node (then 508 Insufficient Capacity).
    #[serde(default = "default_max_allocations")]
    pub max_allocations: usize,
    /// Allocations per user (then 486 Allocation Quota Reached).
    #[serde(default = "default_max_allocations_per_user")]
    pub max_allocations_per_user: usize,
    /// A TCP or TLS client that has sent part of a message, or not finished its TLS handshake,
    /// and then nothing more for this long is disconnected (ms).
    #[serde(default = "default_stall_ms")]
    pub stall_timeout_ms: u64,
    /// TCP and TLS connections open at once (more are refused at accept).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

fn default_realm() -> String {
    "sluice".into()
}
fn default_relay_ports() -> (u16, u16) {
    (40_000, 40_999)
}
fn default_max_allocations() -> usize {
    10_000
}
fn default_max_allocations_per_user() -> usize {
    10
}
fn default_stall_ms() -> u64 {
    10_000
}
fn default_max_connections() -> usize {
    4096
}

impl TurnConfig {
    /// The address relayed addresses are on.
    pub fn relay_ip(&self, listen_ip: IpAddr) -> Option<IpAddr> {
        self.relay_ip
            .or_else(|| (!listen_ip.is_unspecified()).then_some(listen_ip))
            .or_else(|| (!self.listen.ip().is_unspecified()).then_some(self.listen.ip()))
    }

    /// The addresses legs are reached at.
    pub fn leg_ips(&self, listen_ip: IpAddr) -> Vec<IpAddr> {
        if !self.leg_ips.is_empty() {
            return self.leg_ips.clone();
        }
        if !listen_ip.is_unspecified() {
            return vec![listen_ip];
        }
        self.relay_ip(listen_ip).into_iter().collect()
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen_ip: IpAddr::from([0, 0, 0, 0]),
            workers: 1,
            cores: None,
            backend: BackendChoice::Auto,
            batch: 64,
            control_socket: PathBuf::from("/run/sluice/dataplane.sock"),
            control_socket_owner: None,
            metrics: Some(SocketAddr::from(([127, 0, 0, 1], 9311))),
            checkpoint: None,
            replay_window: 128,
            rtx_cache_packets: 256,
            port_range: (20_000, 32_767),
            gso: true,
            gro: true,
            socket_buffer_bytes: 4 << 20,
            consent_timeout_ms: 30_000,
            handshake_timeout_ms: 20_000,
            xdp: XdpConfig::default(),
            turn: None,
            ice_tcp: None,
        }
    }
}

impl Config {
    /// Where the checkpoint lives, if it is on.
    pub fn checkpoint_path(&self) -> Option<PathBuf> {
        match &self.checkpoint {
            None => Some(self.control_socket.with_extension("state")),
            Some(p) if p.as_os_str() == "off" || p.as_os_str().is_empty() => None,
            Some(p) => Some(p.clone()),
        }
    }
}

/// Parses the `metrics` setting: an address, or `""` / `"off"` for no endpoint (as the CLI's
/// `--metrics off`).
pub fn parse_metrics(value: &str) -> Result<Option<SocketAddr>, String> {
    match value.trim() {
        "" | "off" => Ok(None),
        v => v.parse().map(Some).map_err(|_| format!("{value:?} is not an ip:port address, \"\" or \"off\"")),
    }
}

fn metrics_address<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let value = String::deserialize(d)?;
    parse_metrics(&value).map_err(serde::de::Error::custom)
}

/// The CPUs this process may run on (its affinity mask, as `taskset` or a cgroup's cpuset set
/// it), in ascending order; empty if the mask cannot be read.
pub fn allowed_cores() -> Vec<usize> {
    let mut ids: Vec<usize> = core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect();
    ids.sort_unstable();
    ids
}

/// The file's shape: everything under `[dataplane]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    dataplane: Config,
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (names the key and line).
        message: String,
    },
    /// A setting is out of range.
    #[error("invalid setting `{key}`: {why}")]
    Invalid {
        /// The setting, as written in the file.
        key: &'static str,
        /// What is wrong and what is allowed.
        why: String,
    },
}

impl Config {
    /// Reads `path` (a missing `[dataplane]` table means all defaults).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse { path: path.into(), message },
            other => other,
        })
    }

    /// Parses a TOML document.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let f: File = toml::from_str(text).map_err(|e| ConfigError::Parse { path: PathBuf::new(), message: e.to_string() })?;
        Ok(f.dataplane)
    }

    /// The cores the workers are pinned to, in worker order: the configured ones, else the
    /// first `workers` of `allowed` (the ids of the cores this process may run on, ascending).
    pub fn worker_cores(&self, allowed: &[usize]) -> Vec<usize> {
        self.cores.clone().unwrap_or_else(|| allowed.iter().copied().take(self.workers).collect())
    }

    /// Checks every setting against the machine: `allowed` lists the ids of the cores this
    /// process may run on ([`allowed_cores`]), which under a CPU mask need not start at 0.
    pub fn validate(&self, allowed: &[usize]) -> Result<(), ConfigError> {
        let invalid = |key, why: String| Err(ConfigError::Invalid { key, why });
        // The workers a track's subscribers are on are a 64-bit set (hand-overs, see
        // `sluice_core::forward::Shard`).
        if self.workers == 0 || self.workers > 64 {
            return invalid("workers", format!("{} is not in 1..=64 (a track's hand-over set holds 64 workers)", self.workers));
        }
        if let Some(cores) = &self.cores {
            if cores.len() != self.workers {
                return invalid("cores", format!("lists {} cores for {} workers", cores.len(), self.workers));
            }
            if let Some(c) = cores.iter().find(|c| !allowed.contains(c)) {
                return invalid("cores", format!("core {c} is not one this process may run on (allowed: {})", core_list(allowed)));
            }
            let mut sorted = cores.clone();
            sorted.sort_unstable();
            if sorted.windows(2).any(|w| w[0] == w[1]) {
                return invalid("cores", "a core is listed twice".into());
            }
        } else if self.workers > allowed.len() {
            return invalid("workers", format!("{} workers but this process may run on {} cores ({})", self.workers, allowed.len(), core_list(allowed)));
        }
        if self.batch == 0 || self.batch > 1024 {
            return invalid("batch", format!("{} is not in 1..=1024", self.batch));
        }
        if !(128..=1024).contains(&self.replay_window) || !self.replay_window.is_multiple_of(64) {
            return invalid("replay_window", format!("{} is not a multiple of 64 in 128..=1024", self.replay_window));
        }
        if !(64 << 10..=256 << 20).contains(&self.socket_buffer_bytes) {
            return invalid("socket_buffer_bytes", format!("{} is not in 64 KiB..=256 MiB", self.socket_buffer_bytes));
        }
        if !(1_000..=300_000).contains(&self.consent_timeout_ms) {
            return invalid("consent_timeout_ms", format!("{} is not in 1000..=300000", self.consent_timeout_ms));
        }
        if !(1_000..=120_000).contains(&self.handshake_timeout_ms) {
            return invalid("handshake_timeout_ms", format!("{} is not in 1000..=120000", self.handshake_timeout_ms));
        }
        if self.rtx_cache_packets > 8192 {
            return invalid("rtx_cache_packets", format!("{} is over 8192", self.rtx_cache_packets));
        }
        let (lo, hi) = self.port_range;
        if lo == 0 || lo > hi {
            return invalid("port_range", format!("[{lo}, {hi}] is not a non-empty range of non-zero ports"));
        }
        self.validate_xdp()?;
        self.validate_turn()?;
        if let Some(t) = &self.ice_tcp {
            if !(100..=600_000).contains(&t.stall_timeout_ms) {
                return invalid("ice_tcp.stall_timeout_ms", format!("{} is not in 100..=600000", t.stall_timeout_ms));
            }
            if t.max_connections == 0 {
                return invalid("ice_tcp.max_connections", "must be at least 1".into());
            }
        }
        if let Some(dir) = self.control_socket.parent()
            && !dir.as_os_str().is_empty()
            && !dir.is_dir()
        {
            return invalid("control_socket", format!("directory {} does not exist", dir.display()));
        }
        Ok(())
    }

    fn validate_turn(&self) -> Result<(), ConfigError> {
        let invalid = |key, why: String| Err(ConfigError::Invalid { key, why });
        let Some(t) = &self.turn else { return Ok(()) };
        if t.secret.len() < 16 {
            return invalid("turn.secret", "must be at least 16 characters (it derives every TURN password)".into());
        }
        if t.realm.is_empty() || t.realm.len() > 256 {
            return invalid("turn.realm", format!("{:?} is not 1..=256 bytes", t.realm));
        }
        let (lo, hi) = t.relay_ports;
        if lo == 0 || lo > hi {
            return invalid("turn.relay_ports", format!("[{lo}, {hi}] is not a non-empty range of non-zero ports"));
        }
        let (plo, phi) = self.port_range;
        if lo <= phi && plo <= hi {
            return invalid("turn.relay_ports", format!("[{lo}, {hi}] overlaps the legs' port_range [{plo}, {phi}]"));
        }
        if t.relay_ip(self.listen_ip).is_none() {
            return invalid(
                "turn.relay_ip",
                "needed when listen_ip and turn.listen are both unspecified (0.0.0.0 / ::): the address relayed addresses are on".into(),
            );
        }
        if t.tls_listen.is_some() != (t.tls_cert.is_some() && t.tls_key.is_some()) {
            return invalid("turn.tls_listen", "TLS needs tls_listen, tls_cert and tls_key together".into());
        }
        for c in t.allow_peers.iter().chain(t.deny_peers.iter().flatten()) {
            if let Err(e) = c.parse::<sluice_core::turn::Cidr>() {
                return invalid("turn.allow_peers", e.to_string());
            }
        }
        if t.max_allocations == 0 || t.max_allocations_per_user == 0 || t.max_connections == 0 {
            return invalid("turn.max_allocations", "max_allocations, max_allocations_per_user and max_connections must be at least 1".into());
        }
        if !(100..=600_000).contains(&t.stall_timeout_ms) {
            return invalid("turn.stall_timeout_ms", format!("{} is not in 100..=600000", t.stall_timeout_ms));
        }
        Ok(())
    }

    fn validate_xdp(&self) -> Result<(), ConfigError> {
        let invalid = |key, why: String| Err(ConfigError::Invalid { key, why });
        let x = &self.xdp;
        if self.backend == BackendChoice::Xsk && x.mode != XdpMode::AfXdp {
            return invalid("backend", "\"xsk\" needs [dataplane.xdp] mode = \"af_xdp\" (the XDP stage feeds the AF_XDP sockets)".into());
        }
        if x.mode == XdpMode::AfXdp && self.backend != BackendChoice::Xsk {
            return invalid("xdp.mode", "\"af_xdp\" needs backend = \"xsk\" (the workers must own AF_XDP sockets)".into());
        }
        if !x.af_xdp_rx_frames.is_power_of_two() || !(2048..=65536).contains(&x.af_xdp_rx_frames) {
            return invalid("xdp.af_xdp_rx_frames", format!("{} is not a power of two in 2048..=65536", x.af_xdp_rx_frames));
        }
        if x.instance.is_empty() || x.instance.len() > 64 || !x.instance.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return invalid("xdp.instance", format!("{:?} is not 1..=64 characters of [A-Za-z0-9_-]", x.instance));
        }
        if x.mode == XdpMode::Off {
            if !x.relays.is_empty() {
                return invalid("xdp.relays", "relay legs need the XDP stage (mode \"shield\" or \"af_xdp\")".into());
            }
            return Ok(());
        }
        match &x.interface {
            None => return invalid("xdp.interface", format!("mode {:?} needs the interface to attach to", x.mode)),
            Some(i) if i.is_empty() || i.len() > 15 => return invalid("xdp.interface", format!("{i:?} is not an interface name (1..=15 bytes)")),
            Some(_) => {}
        }
        let (lo, hi) = self.port_range;
        for (n, r) in x.relays.iter().enumerate() {
            let why = if !(lo..=hi).contains(&r.local_port) {
                Some(format!("local_port {} is outside port_range [{lo}, {hi}]", r.local_port))
            } else if r.src.is_ipv4() != r.remote.is_ipv4() || r.dst.is_ipv4() != r.remote.is_ipv4() {
                Some("remote, src and dst must all be IPv4 or all IPv6".into())
            } else if parse_mac(&r.dst_mac).is_none() {
                Some(format!("dst_mac {:?} is not a MAC address (aa:bb:cc:dd:ee:ff)", r.dst_mac))
            } else if x.relays[..n].iter().any(|o| (o.local_port, o.remote) == (r.local_port, r.remote)) {
                Some(format!("port {} from {} is relayed twice", r.local_port, r.remote))
            } else {
                None
            };
            if let Some(why) = why {
                return invalid("xdp.relays", format!("relay #{n}: {why}"));
            }
        }
        Ok(())
    }
}

/// `0-3,6,8-9`, as `taskset -c` writes a CPU list; `none` when empty.
fn core_list(cores: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cores.len() {
        let start = cores[i];
        while i + 1 < cores.len() && cores[i + 1] == cores[i] + 1 {
            i += 1;
        }
        out.push(if cores[i] == start { start.to_string() } else { format!("{start}-{}", cores[i]) });
        i += 1;
    }
    if out.is_empty() { "none".into() } else { out.join(",") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_validate() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c, Config::default());
        let c = Config::from_toml("[dataplane]\nworkers = 2\nbackend = \"mmsg\"\ncontrol_socket = \"/tmp/x.sock\"\n").unwrap();
        assert_eq!((c.workers, c.backend), (2, BackendChoice::Mmsg));
        c.validate(&[0, 1]).unwrap();
        assert_eq!(c.worker_cores(&[0, 1]), vec![0, 1]);
    }

    #[test]
    fn the_example_config_is_the_defaults_plus_two_workers() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("sluice-dataplane.example.toml");
        let c = Config::from_file(&path).unwrap();
        assert_eq!(c, Config { workers: 2, ..Config::default() });
    }

    #[test]
    fn bad_settings_are_refused_with_their_name() {
        let parse = |s: &str| Config::from_toml(s).unwrap_err().to_string();
        assert!(parse("[dataplane]\nworkerz = 2\n").contains("workerz"), "unknown key named");
        assert!(parse("[dataplane]\nbackend = \"dpdk\"\n").contains("dpdk"));
        let check = |s: &str, cores: usize| {
            let mut c = Config::from_toml(s).unwrap();
            c.control_socket = "/tmp/x.sock".into();
            let allowed: Vec<usize> = (0..cores).collect();
            c.validate(&allowed).err().map(|e| e.to_string()).unwrap_or_default()
        };
        assert!(check("[dataplane]\nworkers = 3\n", 2).contains("`workers`"));
        assert!(check("[dataplane]\nworkers = 65\n", 128).contains("1..=64"), "a hand-over set holds 64 workers");
        assert!(check("[dataplane]\nworkers = 1\ncores = [5]\n", 2).contains("core 5 is not one this process may run on (allowed: 0-1)"));
        assert!(check("[dataplane]\nworkers = 2\ncores = [1, 1]\n", 2).contains("twice"));
        assert!(check("[dataplane]\nreplay_window = 100\n", 2).contains("`replay_window`"));
        assert!(check("[dataplane]\nport_range = [5000, 4000]\n", 2).contains("`port_range`"));
        for frames in ["1000", "1024", "131072"] {
            let e = check(&format!("[dataplane.xdp]\naf_xdp_rx_frames = {frames}\n"), 2);
            assert!(e.contains("`xdp.af_xdp_rx_frames`") && e.contains(frames), "{frames}: {e}");
        }
        assert!(check("[dataplane]\nbackend = \"xsk\"\n", 2).contains("`backend`: \"xsk\" needs"));
        assert!(check("[dataplane.xdp]\nmode = \"af_xdp\"\ninterface = \"eth0\"\n", 2).contains("`xdp.mode`"));
        assert!(check("[dataplane.xdp]\nmode = \"shield\"\n", 2).contains("`xdp.interface`"));
        assert!(check("[dataplane.xdp]\nmode = \"shield\"\ninterface = \"eth0\"\ninstance = \"a/b\"\n", 2).contains("`xdp.instance`"));
        let relay = |extra: &str| {
            format!(
                "[dataplane.xdp]\nmode = \"shield\"\ninterface = \"eth0\"\n[[dataplane.xdp.relays]]\nlocal_port = 30000\nremote = \"10.0.0.1:5000\"\nsrc = \"10.0.0.2:30001\"\n{extra}"
            )
        };
        assert!(check(&relay("dst = \"10.0.0.3:6000\"\ndst_mac = \"02:00:00:00:00:01\"\n"), 2).is_empty());
        assert!(check(&relay("dst = \"[::1]:6000\"\ndst_mac = \"02:00:00:00:00:01\"\n"), 2).contains("all be IPv4"));
        assert!(check(&relay("dst = \"10.0.0.3:6000\"\ndst_mac = \"02:00:00:00:00\"\n"), 2).contains("dst_mac"));
        assert!(parse("[dataplane.xdp]\nmode = \"bypass\"\n").contains("bypass"));
        let c = Config { control_socket: "/nonexistent-dir/x.sock".into(), ..Config::default() };
        assert!(c.validate(&[0, 1]).unwrap_err().to_string().contains("/nonexistent-dir"));
    }

    #[test]
    fn cores_are_checked_against_the_allowed_ids_not_their_count() {
        let config = |s: &str| {
            let mut c = Config::from_toml(s).unwrap();
            c.control_socket = "/tmp/x.sock".into();
            c
        };
        // `taskset -c 1`: one allowed core, whose id is 1.
        let c = config("[dataplane]\nworkers = 1\ncores = [1]\n");
        c.validate(&[1]).unwrap();
        assert_eq!(c.worker_cores(&[1]), vec![1]);
        let e = config("[dataplane]\nworkers = 1\ncores = [0]\n").validate(&[1]).unwrap_err().to_string();
        assert!(e.contains("`cores`: core 0 is not one this process may run on (allowed: 1)"), "{e}");
        // Without `cores`, the workers take the first allowed cores, not 0..workers.
        let c = config("[dataplane]\nworkers = 2\n");
        c.validate(&[2, 3, 5]).unwrap();
        assert_eq!(c.worker_cores(&[2, 3, 5]), vec![2, 3]);
        let e = config("[dataplane]\nworkers = 3\n").validate(&[4, 6]).unwrap_err().to_string();
        assert!(e.contains("`workers`: 3 workers but this process may run on 2 cores (4,6)"), "{e}");
        assert_eq!(core_list(&[0, 1, 2, 3, 6, 8, 9]), "0-3,6,8-9");
    }

    #[test]
    fn metrics_off_or_empty_in_the_file_disables_the_endpoint() {
        for off in ["\"\"", "\"off\""] {
            let c = Config::from_toml(&format!("[dataplane]\nmetrics = {off}\n")).unwrap();
            assert_eq!(c.metrics, None, "metrics = {off}");
        }
        let c = Config::from_toml("[dataplane]\nmetrics = \"127.0.0.1:9400\"\n").unwrap();
        assert_eq!(c.metrics, Some(SocketAddr::from(([127, 0, 0, 1], 9400))));
        assert_eq!(Config::from_toml("").unwrap().metrics, Config::default().metrics, "absent: the default endpoint");
        let e = Config::from_toml("[dataplane]\nmetrics = \"localhost\"\n").unwrap_err().to_string();
        assert!(e.contains("metrics") && e.contains("\"localhost\" is not an ip:port address"), "{e}");
    }
}
