//! Which peers an allocation may reach ("no open relay").
//!
//! A relay that reaches anything is an open proxy into the node's networks. By default an
//! allocation reaches only Sluice's own legs (the addresses the caller keeps in the server's
//! own-leg set, exactly: a permission for a leg's IP opens none of that host's other ports);
//! [`PeerPolicy::allow`] lists further ranges as an explicit opt-in. The deny rules win over the
//! allow-list: the ranges in [`PeerPolicy::deny`] (by default private, loopback, link-local,
//! unspecified, CGNAT, broadcast and multicast space: [`default_denied`]) and the node's own
//! control endpoints ([`PeerPolicy::denied_endpoints`], refused even when a leg shares the
//! address). A leg's exact address is reachable inside a denied range: a node's legs often sit on
//! a private address behind a 1:1 NAT or a load balancer. IPv4-mapped IPv6 peers are judged as
//! the IPv4 address they map, so `::ffff:10.0.0.1` is as denied as `10.0.0.1`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// An IP prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// A prefix that does not parse or whose length exceeds the address.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad CIDR {input:?}: expected ADDRESS/PREFIX with PREFIX at most 32 (IPv4) or 128 (IPv6)")]
pub struct CidrError {
    /// What was given.
    pub input: String,
}

impl Cidr {
    /// `addr/prefix`; host bits are ignored.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Self { addr, prefix })
    }

    /// Whether `ip` is inside (an IPv4 prefix never contains an IPv6 address, nor the reverse:
    /// canonicalize mapped addresses first).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// `10.0.0.0/8`, `fc00::/7`, or a bare address (a host prefix).
    fn from_str(s: &str) -> Result<Self, CidrError> {
        let err = || CidrError { input: s.to_owned() };
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().map_err(|_| err())?, Some(p.parse::<u8>().map_err(|_| err())?)),
            None => (s.parse::<IpAddr>().map_err(|_| err())?, None),
        };
        let prefix = prefix.unwrap_or(if addr.is_ipv4() { 32 } else { 128 });
        Cidr::new(addr, prefix).ok_or_else(err)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The ranges denied by default: RFC 1918 private space, loopback, link-local, "this network",
/// CGNAT shared space (RFC 6598), broadcast, multicast, and their IPv6 counterparts (unique
/// local, link-local, loopback, unspecified, multicast).
pub fn default_denied() -> Vec<Cidr> {
    [
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::/128",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
        "ff00::/8",
    ]
    .iter()
    .filter_map(|s| s.parse().ok())
    .collect()
}

/// The peer rules of a [`super::Server`]; see the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerPolicy {
    /// Ranges reachable besides Sluice's own legs (empty by default: only own legs).
    pub allow: Vec<Cidr>,
    /// Ranges never reachable, whatever else says so.
    pub deny: Vec<Cidr>,
    /// The node's own control endpoints (gRPC, metrics, the TURN listeners themselves), never
    /// reachable; an unspecified address (`0.0.0.0:9090`, `[::]:9090`) denies the port on every
    /// address.
    pub denied_endpoints: Vec<SocketAddr>,
}

impl Default for PeerPolicy {
    fn default() -> Self {
        Self { allow: Vec::new(), deny: default_denied(), denied_endpoints: Vec::new() }
    }
}

impl PeerPolicy {
    pub(crate) fn is_denied_endpoint(&self, peer: SocketAddr) -> bool {
        self.denied_endpoints.iter().any(|d| d.port() == peer.port() && (d.ip().is_unspecified() || d.ip().to_canonical() == peer.ip()))
    }

    pub(crate) fn is_denied_range(&self, ip: IpAddr) -> bool {
        self.deny.iter().any(|c| c.contains(ip))
    }

    pub(crate) fn is_allowed_range(&self, ip: IpAddr) -> bool {
        self.allow.iter().any(|c| c.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_parse_and_contains() {
        let c: Cidr = "172.16.0.0/12".parse().unwrap();
        assert!(c.contains(ip("172.31.255.255")) && c.contains(ip("172.16.0.0")));
        assert!(!c.contains(ip("172.32.0.0")) && !c.contains(ip("::1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")));
        let host: Cidr = "2001:db8::1".parse().unwrap();
        assert_eq!(host.to_string(), "2001:db8::1/128");
        assert!(host.contains(ip("2001:db8::1")) && !host.contains(ip("2001:db8::2")));
        let v6: Cidr = "fc00::/7".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe00::1")));
        for bad in ["10.0.0.0/33", "::/129", "10.0.0/8", "x", "10.0.0.0/", "/8"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn default_deny_list_covers_the_private_ranges() {
        let p = PeerPolicy::default();
        assert_eq!(p.deny.len(), 14);
        for denied in [
            "10.1.2.3",
            "172.20.0.1",
            "192.168.1.1",
            "127.0.0.1",
            "0.1.2.3",
            "169.254.1.1",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "ff02::1",
        ] {
            assert!(p.is_denied_range(ip(denied)), "{denied}");
        }
        for open in ["8.8.8.8", "192.0.2.1", "2001:db8::1", "100.128.0.1", "172.32.0.1"] {
            assert!(!p.is_denied_range(ip(open)), "{open}");
        }
    }

    #[test]
    fn denied_endpoints_match_port_and_address() {
        let p = PeerPolicy { denied_endpoints: vec!["0.0.0.0:9090".parse().unwrap(), "198.51.100.1:50051".parse().unwrap()], ..PeerPolicy::default() };
        assert!(p.is_denied_endpoint("203.0.113.5:9090".parse().unwrap()));
        assert!(p.is_denied_endpoint("198.51.100.1:50051".parse().unwrap()));
        assert!(!p.is_denied_endpoint("198.51.100.2:50051".parse().unwrap()));
        assert!(!p.is_denied_endpoint("198.51.100.1:50052".parse().unwrap()));
    }
}
