//! The control plane's TOML configuration (`[controlplane]` table), validated at start.
//!
//! ```toml
//! [controlplane]
//! grpc_listen = "127.0.0.1:50051"
//! dataplane_socket = "/run/sluice/dataplane.sock"
//! state_dir = "/var/lib/sluice/controlplane"
//! port_range = [20000, 32767]
//! # A session's legs share one dataplane worker until it has this many; then new legs spread.
//! session_affinity_legs = 64
//! # Optional: shared ports (legs with shared_port), one per dataplane worker from this one on.
//! # shared_port_base = 20000
//! # Plain-text gRPC: only when set explicitly, and only on a loopback address.
//! plaintext = true
//! # Optional: load-balancer state in Redis.
//! # redis_url = "redis://127.0.0.1:6379/"
//! # node_id = "node-a"
//! # heartbeat_ms = 1000
//! # capacity_pps = 400000       # measure it with `sluice-bench capacity`
//! # advertise = "10.0.0.5:50051" # the gRPC address Node.Place answers for this node
//! # placement_threshold = 0.8
//! # state_in_redis = false       # keep sessions' desired state (static keys included) in Redis
//! #                              # so another node can adopt them if this one dies
//!
//! # Or TLS (mTLS with client_ca):
//! # [controlplane.tls]
//! # cert = "server.pem"
//! # key = "server.key"
//! # client_ca = "ca.pem"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::state::PortRange;

/// The whole configuration file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// The control plane's table.
    #[serde(default)]
    pub controlplane: Config,
}

/// Settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where gRPC listens.
    pub grpc_listen: SocketAddr,
    /// Serve plain-text gRPC (no `[controlplane.tls]`): must be set explicitly, and is refused
    /// on a non-loopback `grpc_listen`.
    pub plaintext: bool,
    /// TLS (and mTLS with `client_ca`) for gRPC.
    pub tls: Option<Tls>,
    /// Redis holding the load balancer's state (`redis://host:port/`); none: single node.
    pub redis_url: Option<String>,
    /// This node's id in Redis (required with `redis_url`).
    pub node_id: Option<String>,
    /// How often the node publishes its heartbeat and load to Redis (ms; the key expires after
    /// three of these).
    pub heartbeat_ms: u64,
    /// The packets per second (received plus sent) this node forwards at full load: the packet
    /// part of its load score is the dataplane's rate divided by this. Measure it with
    /// `sluice-bench capacity` on the node's hardware; the default, 400000, is a guess.
    pub capacity_pps: u64,
    /// This node's gRPC address as other hosts reach it (`host:port`), published in Redis for
    /// `Node.Place` to answer; default: the address gRPC listens on.
    pub advertise: Option<String>,
    /// `Node.Place`'s preference threshold (0 < t <= 1, default 0.8): a node a session already
    /// has is answered again while its load score is below this.
    pub placement_threshold: f64,
    /// Keep each session's desired state (an encoded change set, static SRTP keys included) in
    /// Redis, so another node can adopt it should this one die (`Routes.Adopt`). Off by default:
    /// it puts keys in Redis, which must then be as private as the signaling's own store.
    pub state_in_redis: bool,
    /// The dataplane's control socket.
    pub dataplane_socket: PathBuf,
    /// Where the journal and snapshot live.
    pub state_dir: PathBuf,
    /// Local ports legs get, inclusive (must lie inside the dataplane's own `port_range`: a
    /// change that would get a port outside it is refused). The default, 20000-32767, is the
    /// dataplane's and lies below Linux's default ephemeral range (32768-60999, in
    /// `/proc/sys/net/ipv4/ip_local_port_range`); an overlap is warned about at start.
    pub port_range: (u16, u16),
    /// Legs a session has before its new legs are spread over the dataplane's workers (at least
    /// 1; default 16). A leg belongs to worker `local_port % workers`, and each packet a worker
    /// hands to another costs: a smaller session keeps its legs on one worker (the one with the
    /// fewest legs when it starts), a bigger one gives each new leg to the worker with the
    /// fewest of its legs, so a webinar's viewers split evenly. Takes effect once the dataplane
    /// has said its worker count; with one worker nothing changes.
    pub session_affinity_legs: u32,
    /// The first of the node's shared ports: legs asking for `shared_port` share one UDP port
    /// per dataplane worker, `shared_port_base ..= shared_port_base + workers - 1` (so every
    /// worker, `port % workers`, has one). Inside `port_range`, and never given to a leg as a
    /// port of its own. None (the default): no shared ports; a leg asking for one is refused
    /// (FAILED_PRECONDITION).
    pub shared_port_base: Option<u16>,
    /// The address WebRTC legs' host candidates announce (a public or load-balancer address);
    /// default: the dataplane's listen address.
    pub announce_ip: Option<std::net::IpAddr>,
    /// Watch streams open at once, node-wide; one more is refused (RESOURCE_EXHAUSTED).
    pub max_watchers: usize,
    /// Watch streams open at once on one client connection.
    pub max_watchers_per_connection: usize,
    /// Quotas of the node (none by default): sessions, legs and subscriptions over all sessions.
    pub max_sessions: Option<usize>,
    /// See `max_sessions`.
    pub max_legs: Option<usize>,
    /// See `max_sessions`.
    pub max_subscriptions: Option<usize>,
    /// Address of the Prometheus endpoint (`/metrics`); none (the default): no endpoint.
    pub metrics_listen: Option<SocketAddr>,
    /// Per-session series on `/metrics` (legs, subscriptions) for this many of the largest
    /// sessions (default 0: none), so the series count stays bounded.
    pub metrics_sessions: usize,
    /// `[controlplane.turn]`: TURN credentials for the signaling (`Routes.TurnCredentials`).
    pub turn: Option<TurnCredentialsConfig>,
}

/// `[controlplane.turn]`: what `Routes.TurnCredentials` hands out.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TurnCredentialsConfig {
    /// The TURN REST API shared secret (the dataplane's `[dataplane.turn] secret`, at least 16
    /// characters).
    pub secret: String,
    /// The TURN URLs participants use (`turn:` / `turns:`, with `?transport=udp|tcp`).
    pub urls: Vec<String>,
    /// Lifetime of credentials asked for without one (seconds; default 86400: longer than any
    /// call, since an allocation ends when its credentials expire).
    #[serde(default = "default_turn_ttl")]
    pub default_ttl_seconds: u32,
    /// The longest lifetime granted (seconds; default 7 days).
    #[serde(default = "default_turn_max_ttl")]
    pub max_ttl_seconds: u32,
}

fn default_turn_ttl() -> u32 {
    86_400
}

fn default_turn_max_ttl() -> u32 {
    7 * 86_400
}

impl Default for Config {
    fn default() -> Self {
        Self {
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            dataplane_socket: PathBuf::from("/run/sluice/dataplane.sock"),
            state_dir: PathBuf::from("/var/lib/sluice/controlplane"),
            port_range: (20_000, 32_767),
            session_affinity_legs: crate::state::DEFAULT_SESSION_AFFINITY_LEGS,
            shared_port_base: None,
            plaintext: false,
            tls: None,
            redis_url: None,
            node_id: None,
            heartbeat_ms: 1000,
            capacity_pps: 400_000,
            advertise: None,
            placement_threshold: crate::placement::DEFAULT_THRESHOLD,
            state_in_redis: false,
            announce_ip: None,
            max_watchers: 1024,
            max_watchers_per_connection: 16,
            max_sessions: None,
            max_legs: None,
            max_subscriptions: None,
            metrics_listen: None,
            metrics_sessions: 0,
            turn: None,
        }
    }
}

/// `[controlplane.tls]`: PEM files.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// The server certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// CA whose client certificates are required (mTLS); none: any client may connect.
    pub client_ca: Option<PathBuf>,
}

/// How gRPC is served, validated.
#[derive(Clone, Debug)]
pub enum Transport {
    /// Plain text (loopback only).
    Plaintext,
    /// TLS.
    Tls(Tls),
}

/// The Redis settings, validated.
#[derive(Clone, Debug)]
pub struct Redis {
    /// The URL.
    pub url: String,
    /// This node's id.
    pub node_id: String,
    /// Heartbeat interval.
    pub interval: std::time::Duration,
    /// Packets per second at full load (> 0).
    pub capacity_pps: u64,
    /// The advertised gRPC address, when configured (else the listen address).
    pub advertise: Option<String>,
    /// `Node.Place`'s preference threshold, in (0, 1].
    pub placement_threshold: f64,
    /// Keep sessions' desired state in Redis (for adoption).
    pub state_in_redis: bool,
}

/// A configuration problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file does not parse.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The error.
        source: Box<toml::de::Error>,
    },
    /// A value is out of range.
    #[error("controlplane.{field}: {why}")]
    Invalid {
        /// The key.
        field: &'static str,
        /// Why.
        why: String,
    },
}

impl Config {
    /// Reads `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::parse(&text).map_err(|source| ConfigError::Parse { path: path.into(), source: Box::new(source) })
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str::<File>(text).map(|f| f.controlplane)
    }

    /// The port range, validated.
    pub fn ports(&self) -> Result<PortRange, ConfigError> {
        let (start, end) = self.port_range;
        if start == 0 || end < start {
            return Err(ConfigError::Invalid { field: "port_range", why: format!("[{start}, {end}] is not a non-empty range of non-zero ports") });
        }
        Ok(PortRange { start, end })
    }

    /// `session_affinity_legs`, validated (at least 1).
    pub fn session_affinity_legs(&self) -> Result<u32, ConfigError> {
        if self.session_affinity_legs == 0 {
            return Err(ConfigError::Invalid { field: "session_affinity_legs", why: "must be at least 1 (1: every leg is spread over the workers)".into() });
        }
        Ok(self.session_affinity_legs)
    }

    /// `shared_port_base`, validated: inside `port_range` (the worker count, and so the last
    /// shared port, is checked once it is known: [`crate::engine::Engine::set_shared_port_base`]).
    pub fn shared_port_base(&self) -> Result<Option<u16>, ConfigError> {
        let Some(base) = self.shared_port_base else { return Ok(None) };
        let range = self.ports()?;
        if !(range.start..=range.end).contains(&base) {
            return Err(ConfigError::Invalid {
                field: "shared_port_base",
                why: format!("{base} is outside port_range [{}, {}]: the shared ports (one per dataplane worker) must lie inside it", range.start, range.end),
            });
        }
        Ok(Some(base))
    }

    /// `[controlplane.turn]`, validated: a secret of at least 16 characters, TURN URLs, lifetimes
    /// with 0 < default <= max.
    pub fn turn(&self) -> Result<Option<TurnCredentialsConfig>, ConfigError> {
        let Some(t) = &self.turn else { return Ok(None) };
        let bad = |field, why: String| Err(ConfigError::Invalid { field, why });
        if t.secret.len() < 16 {
            return bad("turn.secret", "must be at least 16 characters (it derives every TURN password)".into());
        }
        if t.urls.is_empty() {
            return bad("turn.urls", "list at least one TURN URL (turn:HOST:PORT?transport=udp)".into());
        }
        if let Some(u) = t.urls.iter().find(|u| !(u.starts_with("turn:") || u.starts_with("turns:"))) {
            return bad("turn.urls", format!("{u:?} is not a turn: or turns: URL"));
        }
        if t.default_ttl_seconds == 0 || t.default_ttl_seconds > t.max_ttl_seconds {
            return bad("turn.default_ttl_seconds", format!("{} is not in 1..=max_ttl_seconds ({})", t.default_ttl_seconds, t.max_ttl_seconds));
        }
        Ok(Some(t.clone()))
    }

    /// How gRPC is served: TLS when `[controlplane.tls]` is there; plain text only when
    /// `plaintext = true` and `grpc_listen` is a loopback address.
    pub fn transport(&self) -> Result<Transport, ConfigError> {
        match (&self.tls, self.plaintext) {
            (Some(_), true) => Err(ConfigError::Invalid { field: "plaintext", why: "plaintext = true conflicts with [controlplane.tls]; choose one".into() }),
            (Some(t), false) => Ok(Transport::Tls(t.clone())),
            (None, false) => Err(ConfigError::Invalid {
                field: "plaintext",
                why: "no [controlplane.tls] configured; set plaintext = true to serve plain-text gRPC on a loopback address".into(),
            }),
            (None, true) if !self.grpc_listen.ip().is_loopback() => Err(ConfigError::Invalid {
                field: "plaintext",
                why: format!("plain-text gRPC is only allowed on a loopback address, not grpc_listen = {}; configure [controlplane.tls]", self.grpc_listen),
            }),
            (None, true) => Ok(Transport::Plaintext),
        }
    }

    /// A warning for a transport that lets anyone who can reach the address program the node:
    /// TLS without client certificates (`client_ca`) on an address other than loopback. Still
    /// allowed (a proxy in front may authenticate), but said at start.
    pub fn transport_warning(&self) -> Option<String> {
        let t = self.tls.as_ref()?;
        if t.client_ca.is_some() || self.grpc_listen.ip().is_loopback() {
            return None;
        }
        Some(format!(
            "gRPC on {} uses TLS without client certificates: any client that reaches it can program media routes and read session state; set [controlplane.tls] client_ca for mTLS, or listen on loopback behind an authenticating proxy",
            self.grpc_listen
        ))
    }

    /// The Redis settings, if `redis_url` is set.
    pub fn redis(&self) -> Result<Option<Redis>, ConfigError> {
        let Some(url) = &self.redis_url else {
            return Ok(None);
        };
        let node_id = match &self.node_id {
            Some(n) if !n.is_empty() && !n.contains(char::is_whitespace) => n.clone(),
            _ => return Err(ConfigError::Invalid { field: "node_id", why: "a non-empty node id without spaces is required with redis_url".into() }),
        };
        for (field, v) in [("max_sessions", self.max_sessions), ("max_legs", self.max_legs), ("max_subscriptions", self.max_subscriptions)] {
            if v == Some(0) {
                return Err(ConfigError::Invalid { field, why: "must be > 0 (leave it out for no quota)".into() });
            }
        }
        if self.max_watchers == 0 {
            return Err(ConfigError::Invalid { field: "max_watchers", why: "must be > 0".into() });
        }
        if self.max_watchers_per_connection == 0 {
            return Err(ConfigError::Invalid { field: "max_watchers_per_connection", why: "must be > 0".into() });
        }
        if self.heartbeat_ms == 0 {
            return Err(ConfigError::Invalid { field: "heartbeat_ms", why: "must be > 0".into() });
        }
        if self.capacity_pps == 0 {
            return Err(ConfigError::Invalid { field: "capacity_pps", why: "must be > 0 (measure it with sluice-bench capacity)".into() });
        }
        if let Some(a) = &self.advertise
            && (a.is_empty() || a.contains(char::is_whitespace))
        {
            return Err(ConfigError::Invalid { field: "advertise", why: format!("{a:?} is not a host:port address") });
        }
        if !(self.placement_threshold > 0.0 && self.placement_threshold <= 1.0) {
            return Err(ConfigError::Invalid { field: "placement_threshold", why: format!("{} is not in (0, 1]", self.placement_threshold) });
        }
        Ok(Some(Redis {
            url: url.clone(),
            node_id,
            interval: std::time::Duration::from_millis(self.heartbeat_ms),
            capacity_pps: self.capacity_pps,
            advertise: self.advertise.clone(),
            placement_threshold: self.placement_threshold,
            state_in_redis: self.state_in_redis,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates() {
        let c = Config::parse("[controlplane]\ngrpc_listen = \"127.0.0.1:1\"\nport_range = [100, 101]\n").unwrap();
        assert_eq!(c.ports().unwrap().len(), 2);
        let bad = Config::parse("[controlplane]\nport_range = [5, 4]\n").unwrap();
        assert!(bad.ports().unwrap_err().to_string().contains("controlplane.port_range"));
        assert!(Config::parse("[controlplane]\nnope = 1\n").is_err());
        let example = Config::parse(include_str!("../controlplane.example.toml")).unwrap();
        assert_eq!(example.grpc_listen, Config::default().grpc_listen);
        assert_eq!(example.ports().unwrap(), Config::default().ports().unwrap());
        assert!(matches!(example.transport().unwrap(), Transport::Plaintext));
        assert!(example.redis().unwrap().is_none());
        assert_eq!(example.session_affinity_legs().unwrap(), 64);
        assert_eq!(example.shared_port_base().unwrap(), None);
    }

    #[test]
    fn shared_port_base_is_optional_and_inside_the_port_range() {
        assert_eq!(Config::parse("[controlplane]\n").unwrap().shared_port_base().unwrap(), None);
        let ok = Config::parse("[controlplane]\nport_range = [100, 199]\nshared_port_base = 100\n").unwrap();
        assert_eq!(ok.shared_port_base().unwrap(), Some(100));
        for base in [99, 200, 0] {
            let bad = Config::parse(&format!("[controlplane]\nport_range = [100, 199]\nshared_port_base = {base}\n")).unwrap();
            assert!(bad.shared_port_base().unwrap_err().to_string().contains("controlplane.shared_port_base"), "{base}");
        }
    }

    #[test]
    fn session_affinity_legs_defaults_to_64_and_is_at_least_1() {
        assert_eq!(Config::parse("[controlplane]\n").unwrap().session_affinity_legs().unwrap(), 64);
        assert_eq!(Config::parse("[controlplane]\nsession_affinity_legs = 1\n").unwrap().session_affinity_legs().unwrap(), 1);
        let zero = Config::parse("[controlplane]\nsession_affinity_legs = 0\n").unwrap();
        assert!(zero.session_affinity_legs().unwrap_err().to_string().contains("controlplane.session_affinity_legs"));
        assert!(Config::parse("[controlplane]\nsession_affinity_legs = -1\n").is_err());
    }

    #[test]
    fn plaintext_only_explicitly_and_on_loopback() {
        let none = Config::parse("[controlplane]\n").unwrap();
        assert!(none.transport().unwrap_err().to_string().contains("controlplane.plaintext"));
        let open = Config::parse("[controlplane]\ngrpc_listen = \"0.0.0.0:1\"\nplaintext = true\n").unwrap();
        assert!(open.transport().unwrap_err().to_string().contains("controlplane.plaintext"));
        let tls = Config::parse("[controlplane]\ngrpc_listen = \"0.0.0.0:1\"\n[controlplane.tls]\ncert = \"c\"\nkey = \"k\"\n").unwrap();
        assert!(matches!(tls.transport().unwrap(), Transport::Tls(_)));
    }

    #[test]
    fn tls_without_client_certificates_off_loopback_warns() {
        let cfg = |listen: &str, mtls: bool| {
            let ca = if mtls { "client_ca = \"ca.pem\"\n" } else { "" };
            Config::parse(&format!("[controlplane]\ngrpc_listen = \"{listen}\"\n[controlplane.tls]\ncert = \"c\"\nkey = \"k\"\n{ca}")).unwrap()
        };
        for listen in ["0.0.0.0:50051", "10.1.2.3:50051", "[::]:50051"] {
            let w = cfg(listen, false).transport_warning().unwrap_or_else(|| panic!("{listen}: no warning"));
            assert!(w.contains("client_ca") && w.contains(listen), "{w}");
            assert_eq!(cfg(listen, true).transport_warning(), None, "{listen} with mTLS");
        }
        assert_eq!(cfg("127.0.0.1:50051", false).transport_warning(), None);
        assert_eq!(cfg("[::1]:50051", false).transport_warning(), None);
        let plain = Config::parse("[controlplane]\ngrpc_listen = \"127.0.0.1:1\"\nplaintext = true\n").unwrap();
        assert_eq!(plain.transport_warning(), None);
        let redis = Config::parse("[controlplane]\nredis_url = \"redis://127.0.0.1:1/\"\n").unwrap();
        assert!(redis.redis().unwrap_err().to_string().contains("controlplane.node_id"));
    }

    #[test]
    fn placement_settings_default_and_are_validated() {
        let base = "[controlplane]\nredis_url = \"redis://127.0.0.1:1/\"\nnode_id = \"a\"\n";
        let r = Config::parse(base).unwrap().redis().unwrap().unwrap();
        assert_eq!((r.capacity_pps, r.advertise, r.placement_threshold, r.state_in_redis), (400_000, None, 0.8, false));
        let r = Config::parse(&format!("{base}capacity_pps = 5\nadvertise = \"10.0.0.5:1\"\nplacement_threshold = 1.0\nstate_in_redis = true\n"))
            .unwrap()
            .redis()
            .unwrap()
            .unwrap();
        assert!(r.state_in_redis);
        assert_eq!((r.capacity_pps, r.advertise.as_deref(), r.placement_threshold), (5, Some("10.0.0.5:1"), 1.0));
        for (extra, field) in [
            ("capacity_pps = 0", "controlplane.capacity_pps"),
            ("advertise = \"\"", "controlplane.advertise"),
            ("advertise = \"a b:1\"", "controlplane.advertise"),
            ("placement_threshold = 0.0", "controlplane.placement_threshold"),
            ("placement_threshold = 1.5", "controlplane.placement_threshold"),
            ("placement_threshold = nan", "controlplane.placement_threshold"),
        ] {
            let err = Config::parse(&format!("{base}{extra}\n")).unwrap().redis().unwrap_err().to_string();
            assert!(err.contains(field), "{extra}: {err}");
        }
    }
}
