//! The control plane's TOML configuration (`[controlplane]` table), validated at start.
//!
//! ```toml
//! [controlplane]
//! grpc_listen = "127.0.0.1:50051"
//! dataplane_socket = "/run/sluice/dataplane.sock"
//! state_dir = "/var/lib/sluice/controlplane"
//! port_range = [30000, 39999]
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
    /// Where gRPC listens (plain text; TLS/mTLS is part 2 and will add a `[controlplane.tls]`
    /// table here).
    pub grpc_listen: SocketAddr,
    /// The dataplane's control socket.
    pub dataplane_socket: PathBuf,
    /// Where the journal and snapshot live.
    pub state_dir: PathBuf,
    /// Local ports legs get, inclusive (must lie inside the dataplane's own `port_range`).
    pub port_range: (u16, u16),
}

impl Default for Config {
    fn default() -> Self {
        Self {
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            dataplane_socket: PathBuf::from("/run/sluice/dataplane.sock"),
            state_dir: PathBuf::from("/var/lib/sluice/controlplane"),
            port_range: (30_000, 39_999),
        }
    }
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
    }
}
