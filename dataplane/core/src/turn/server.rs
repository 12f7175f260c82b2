//! The TURN server state machine: allocations, permissions, channels, authentication; see the
//! parent module for the contract and the decisions.

use core::time::Duration;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use foldhash::fast::RandomState;
use hmac::Mac as _;

use crate::ice::{self, ATTR_FINGERPRINT, ATTR_MESSAGE_INTEGRITY, ATTR_USERNAME, ATTR_XOR_MAPPED_ADDRESS, FINGERPRINT_XOR, MI_LEN};
use crate::time::Instant;
use crate::wire::stun::{self, Class, HEADER_LEN, METHOD_BINDING, Message};

use super::channel::{CHANNEL_DATA_HEADER, ChannelData, ChannelNumber, encode_channel_data};
use super::credentials::{NONCE_LEN, NonceCheck, NonceMint, long_term_key, parse_rest_username, rest_api_password};
use super::policy::PeerPolicy;
use super::*;

type Map<K, V> = HashMap<K, V, RandomState>;

/// How long a channel number stays reserved for its peer after its binding expired (RFC 8656
/// §12: five minutes, so that late ChannelData is not delivered to a new peer).
const CHANNEL_REUSE_DELAY: Duration = Duration::from_secs(300);
/// XOR-PEER-ADDRESS attributes taken from one request (a CreatePermission may carry several).
const MAX_PEERS: usize = 8;
/// Unknown comprehension-required attributes listed in a 420.
const MAX_UNKNOWN: usize = 8;

/// The transport a client reached the server over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// UDP.
    Udp,
    /// TCP (RFC 8656 §11.4 framing, see [`super::StreamDeframer`]).
    Tcp,
    /// TLS over TCP, same framing.
    Tls,
}

impl Transport {
    /// Whether ChannelData to this client must be padded to 4 bytes.
    pub const fn is_stream(self) -> bool {
        !matches!(self, Self::Udp)
    }
}

/// The client side of an allocation: client address, server (listener) address and transport
/// (RFC 8656 §2). Each 5-tuple has at most one allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    /// The client's address as the server sees it (its server-reflexive address).
    pub client: SocketAddr,
    /// The server's listening address the client reached.
    pub server: SocketAddr,
    /// The transport between them.
    pub transport: Transport,
}

/// Time as the server needs it: monotonic for lifetimes and nonces, and the wall clock for the
/// expiry inside REST API usernames. The caller reads both once per batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// The core's monotonic clock.
    pub mono: Instant,
    /// Seconds since the Unix epoch.
    pub unix_secs: u64,
}

/// The family of a relayed address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddressFamily {
    /// IPv4 (REQUESTED-ADDRESS-FAMILY 0x01, the default).
    V4,
    /// IPv6 (0x02).
    V6,
}

impl AddressFamily {
    /// The family of `ip`.
    pub fn of(ip: IpAddr) -> Self {
        if ip.is_ipv4() { Self::V4 } else { Self::V6 }
    }
}

/// Hands out relayed transport addresses: the caller owns the sockets. `allocate` opens (or takes
/// from a pool) a UDP socket of `family` and returns the address clients are told (its public
/// address), which is also the address the caller passes to [`Server::handle_peer`] for
/// datagrams arriving on it; `release` closes it. The server calls `release` exactly once for
/// every address `allocate` returned and the server kept.
pub trait RelayAllocator {
    /// A relayed address for a new allocation, or `None` when none is left (answered 508).
    fn allocate(&mut self, client: &FiveTuple, family: AddressFamily) -> Option<SocketAddr>;
    /// The allocation using `relayed` is gone.
    fn release(&mut self, relayed: SocketAddr);
}

/// What to do after [`Server::handle_client`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAction<'a> {
    /// Send `out[..len]` back to the client on the 5-tuple it came from (a response, successful
    /// or not).
    Reply(usize),
    /// Send `payload` (borrowed from the client's message: no copy) from the `relayed` address
    /// to `peer`.
    Relay {
        /// The allocation's relayed address: the socket to send from.
        relayed: SocketAddr,
        /// The destination.
        peer: SocketAddr,
        /// The application data.
        payload: &'a [u8],
    },
    /// Nothing is sent; the refusal was counted.
    Dropped(Refusal),
}

/// What to do after [`Server::handle_peer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerAction {
    /// Send `out[..len]` (ChannelData, or a Data indication) to the client on `to`.
    ToClient {
        /// The allocation's 5-tuple.
        to: FiveTuple,
        /// Length of the message in `out`.
        len: usize,
    },
    /// Nothing is sent; the refusal was counted.
    Dropped(Refusal),
}

/// Where a peer's datagram goes ([`Server::peer_route`]), for a caller that frames it in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerRoute {
    /// The allocation's 5-tuple.
    pub to: FiveTuple,
    /// The channel bound to the peer: frame as ChannelData; `None`: as a Data indication.
    pub channel: Option<ChannelNumber>,
}

/// A channel bound from a client to one of Sluice's own legs, live while the allocation, the
/// channel and the permission for the leg's IP all are: the fast paths (the XDP ChannelData
/// unwrap, a worker wrapping what it sends to the relayed address) carry its traffic without
/// the server, so the server tells them when one comes and goes ([`Server::poll_route`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChannelRoute {
    /// The allocation's 5-tuple (the client and the listener it reached).
    pub client: FiveTuple,
    /// The channel number.
    pub channel: ChannelNumber,
    /// The allocation's relayed address (the source the leg sees).
    pub relayed: SocketAddr,
    /// The leg's transport address (canonical).
    pub peer: SocketAddr,
}

/// A change to the set of [`ChannelRoute`]s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteChange {
    /// The route is live: ChannelData on it may bypass the server.
    Up(ChannelRoute),
    /// The route is gone (channel or permission expired, allocation deleted, the peer no longer
    /// a leg): remove it before anything else it carried is relayed.
    Down(ChannelRoute),
}

/// Configuration of a [`Server`].
#[derive(Clone)]
pub struct ServerConfig {
    /// REALM (at most [`MAX_TEXT`] bytes).
    pub realm: String,
    /// The TURN REST API shared secret passwords are derived with.
    pub secret: Vec<u8>,
    /// The secret before the last rotation, still accepted for credentials issued under it.
    pub previous_secret: Option<Vec<u8>>,
    /// Key of the stateless nonces (random, per process; see [`super::credentials`]).
    pub nonce_key: [u8; 32],
    /// How long a nonce is good for (then 438).
    pub nonce_lifetime: Duration,
    /// Allocations on the whole server (then 508).
    pub max_allocations: usize,
    /// Allocations per REST API user (the part after the expiry; then 486).
    pub max_allocations_per_user: usize,
    /// Lifetime granted when the client asks for none or for less (RFC 8656: 600 s).
    pub default_lifetime: Duration,
    /// The longest lifetime granted (RFC 8656: 3600 s).
    pub max_lifetime: Duration,
    /// Permission lifetime (RFC 8656 §9: 300 s).
    pub permission_lifetime: Duration,
    /// Channel binding lifetime (RFC 8656 §12: 600 s).
    pub channel_lifetime: Duration,
    /// Permissions per allocation (then 508).
    pub max_permissions: usize,
    /// Channels per allocation (then 508).
    pub max_channels: usize,
    /// Which peers allocations may reach.
    pub policy: PeerPolicy,
    /// SOFTWARE in responses (at most [`MAX_TEXT`] bytes), if any.
    pub software: Option<String>,
}

impl core::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("realm", &self.realm)
            .field("secret", &"..")
            .field("previous_secret", &self.previous_secret.as_ref().map(|_| ".."))
            .field("nonce_lifetime", &self.nonce_lifetime)
            .field("max_allocations", &self.max_allocations)
            .field("max_allocations_per_user", &self.max_allocations_per_user)
            .field("default_lifetime", &self.default_lifetime)
            .field("max_lifetime", &self.max_lifetime)
            .field("permission_lifetime", &self.permission_lifetime)
            .field("channel_lifetime", &self.channel_lifetime)
            .field("max_permissions", &self.max_permissions)
            .field("max_channels", &self.max_channels)
            .field("policy", &self.policy)
            .field("software", &self.software)
            .finish()
    }
}

impl ServerConfig {
    /// The RFC defaults for `realm`, with `secret` and a random `nonce_key`: 600 s default and
    /// 3600 s maximum lifetime, 300 s permissions, 600 s channels, 600 s nonces, 10 000
    /// allocations, 10 per user, 32 permissions and 32 channels per allocation, the default
    /// peer policy (own legs only, private ranges denied).
    pub fn new(realm: impl Into<String>, secret: impl Into<Vec<u8>>, nonce_key: [u8; 32]) -> Self {
        Self {
            realm: realm.into(),
            secret: secret.into(),
            previous_secret: None,
            nonce_key,
            nonce_lifetime: Duration::from_secs(600),
            max_allocations: 10_000,
            max_allocations_per_user: 10,
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            permission_lifetime: Duration::from_secs(300),
            channel_lifetime: Duration::from_secs(600),
            max_permissions: 32,
            max_channels: 32,
            policy: PeerPolicy::default(),
            software: None,
        }
    }
}

/// A configuration a [`Server`] refuses.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Realm empty or over [`MAX_TEXT`] bytes.
    #[error("realm must be 1 to {MAX_TEXT} bytes, is {len}")]
    Realm {
        /// Its length.
        len: usize,
    },
    /// SOFTWARE over [`MAX_TEXT`] bytes.
    #[error("software must be at most {MAX_TEXT} bytes, is {len}")]
    Software {
        /// Its length.
        len: usize,
    },
    /// The shared secret is empty.
    #[error("the shared secret is empty")]
    EmptySecret,
    /// A zero lifetime, or a default lifetime above the maximum.
    #[error("lifetimes must be non-zero and default <= max (default {default:?}, max {max:?})")]
    Lifetimes {
        /// The default lifetime.
        default: Duration,
        /// The maximum lifetime.
        max: Duration,
    },
}

#[derive(Debug)]
struct Permission {
    ip: IpAddr,
    expires: Instant,
    /// Allowed by the allow-list (else by being one of our legs' addresses, rechecked per
    /// datagram with the port).
    via_allow: bool,
}

#[derive(Debug)]
struct Channel {
    number: ChannelNumber,
    peer: SocketAddr,
    expires: Instant,
}

#[derive(Debug)]
struct Allocation {
    relayed: SocketAddr,
    username: Box<str>,
    user: Box<str>,
    key: [u8; 16],
    allocate_tid: [u8; 12],
    /// The success response, sent again for a retransmitted Allocate (RFC 8656 §7.2).
    allocate_response: Box<[u8]>,
    expires: Instant,
    permissions: Vec<Permission>,
    channels: Vec<Channel>,
    /// The routes last announced for this allocation ([`Server::poll_route`]).
    routes: Vec<ChannelRoute>,
}

impl Allocation {
    fn permission(&self, ip: IpAddr, now: Instant) -> Option<&Permission> {
        self.permissions.iter().find(|p| p.ip == ip && p.expires > now)
    }
}

/// What a request carries, values borrowed from the datagram.
#[derive(Debug, Default)]
struct Parsed<'a> {
    username: Option<&'a [u8]>,
    realm: Option<&'a [u8]>,
    nonce: Option<&'a [u8]>,
    /// MESSAGE-INTEGRITY: offset of the attribute and its value.
    integrity: Option<(usize, &'a [u8])>,
    lifetime: Option<u32>,
    transport: Option<u8>,
    family: Option<u8>,
    peers: [Option<SocketAddr>; MAX_PEERS],
    channel: Option<u16>,
    data: Option<&'a [u8]>,
    unknown: [u16; MAX_UNKNOWN],
    n_unknown: usize,
    /// A known attribute with a value of the wrong length or family, or too many peers.
    bad_value: bool,
}

impl Parsed<'_> {
    fn peers(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.peers.iter().map_while(|p| *p)
    }
}

fn u32_value(v: &[u8]) -> Option<u32> {
    let &[a, b, c, d] = v else { return None };
    Some(u32::from_be_bytes([a, b, c, d]))
}

/// Whether the server understands `kind` (the rest below 0x8000 are answered 420).
fn understood(kind: u16) -> bool {
    matches!(
        kind,
        ATTR_USERNAME
            | ATTR_MESSAGE_INTEGRITY
            | ATTR_ERROR_CODE
            | ATTR_UNKNOWN_ATTRIBUTES
            | ATTR_CHANNEL_NUMBER
            | ATTR_LIFETIME
            | ATTR_XOR_PEER_ADDRESS
            | ATTR_DATA
            | ATTR_REALM
            | ATTR_NONCE
            | ATTR_XOR_RELAYED_ADDRESS
            | ATTR_REQUESTED_ADDRESS_FAMILY
            | ATTR_REQUESTED_TRANSPORT
            | ATTR_XOR_MAPPED_ADDRESS
            | ice::ATTR_PRIORITY
            | ice::ATTR_USE_CANDIDATE
    )
}

/// Walks the attributes once: FINGERPRINT must be last and match; attributes after
/// MESSAGE-INTEGRITY other than FINGERPRINT are ignored (RFC 8489 §14.5).
fn parse<'a>(msg: &Message<&'a [u8]>, bytes: &'a [u8], tid: &[u8; 12]) -> Result<Parsed<'a>, Refusal> {
    let mut p = Parsed::default();
    let mut n_peers = 0;
    let mut fingerprint = None;
    for attr in msg.attributes() {
        let attr = attr.map_err(|_| Refusal::Malformed)?;
        if fingerprint.is_some() {
            return Err(Refusal::Malformed);
        }
        let value: &'a [u8] = bytes.get(attr.offset + 4..attr.offset + 4 + attr.value.len()).ok_or(Refusal::Malformed)?;
        if attr.kind == ATTR_FINGERPRINT {
            fingerprint = Some((attr.offset, value));
            continue;
        }
        if p.integrity.is_some() {
            continue;
        }
        match attr.kind {
            ATTR_USERNAME => p.username = p.username.or(Some(value)),
            ATTR_REALM => p.realm = p.realm.or(Some(value)),
            ATTR_NONCE => p.nonce = p.nonce.or(Some(value)),
            ATTR_MESSAGE_INTEGRITY => p.integrity = Some((attr.offset, value)),
            ATTR_LIFETIME => match u32_value(value) {
                Some(v) => p.lifetime = p.lifetime.or(Some(v)),
                None => p.bad_value = true,
            },
            ATTR_REQUESTED_TRANSPORT => match u32_value(value) {
                Some(v) => p.transport = p.transport.or(Some((v >> 24) as u8)),
                None => p.bad_value = true,
            },
            ATTR_REQUESTED_ADDRESS_FAMILY => match u32_value(value) {
                Some(v) => p.family = p.family.or(Some((v >> 24) as u8)),
                None => p.bad_value = true,
            },
            ATTR_CHANNEL_NUMBER => match u32_value(value) {
                Some(v) => p.channel = p.channel.or(Some((v >> 16) as u16)),
                None => p.bad_value = true,
            },
            ATTR_XOR_PEER_ADDRESS => match stun::decode_xor_address(value, tid) {
                Some(a) if n_peers < MAX_PEERS => {
                    p.peers[n_peers] = Some(a);
                    n_peers += 1;
                }
                _ => p.bad_value = true,
            },
            ATTR_DATA => p.data = p.data.or(Some(value)),
            // Listed once each, up to MAX_UNKNOWN (one is enough for the 420).
            kind if kind < 0x8000 && !understood(kind) && p.n_unknown < MAX_UNKNOWN && !p.unknown[..p.n_unknown].contains(&kind) => {
                p.unknown[p.n_unknown] = kind;
                p.n_unknown += 1;
            }
            _ => {}
        }
    }
    if let Some((offset, value)) = fingerprint {
        let want = ice::crc_with_len(bytes, offset, (offset + 8 - HEADER_LEN) as u16) ^ FINGERPRINT_XOR;
        if u32_value(value) != Some(want) {
            return Err(Refusal::BadFingerprint);
        }
    }
    Ok(p)
}

/// Whether MESSAGE-INTEGRITY at `offset` with `value` verifies under `key` (RFC 8489 §14.5).
pub(crate) fn integrity_ok(bytes: &[u8], offset: usize, value: &[u8], key: &[u8]) -> bool {
    value.len() == MI_LEN
        && offset + 4 + MI_LEN <= bytes.len()
        && ice::hmac_with_len(key, bytes, offset, (offset + 4 + MI_LEN - HEADER_LEN) as u16).verify_slice(value).is_ok()
}

/// Writes a STUN message into the caller's buffer; a failure (buffer too small) sticks and
/// surfaces in [`Writer::finish`].
struct Writer<'o> {
    out: &'o mut [u8],
    len: usize,
    ok: bool,
}

impl<'o> Writer<'o> {
    fn new(out: &'o mut [u8], kind: u16, tid: &[u8; 12]) -> Self {
        let ok = ice::header(out, kind, tid).is_ok();
        Self { out, len: HEADER_LEN, ok }
    }

    fn attr(&mut self, kind: u16, value: &[u8]) {
        if self.ok {
            match ice::put_attr(self.out, self.len, kind, value) {
                Ok(end) => self.len = end,
                Err(_) => self.ok = false,
            }
        }
    }

    fn xor_addr(&mut self, kind: u16, addr: SocketAddr, tid: &[u8; 12]) {
        let mut v = [0u8; 20];
        let n = stun::encode_xor_address(addr, tid, &mut v);
        self.attr(kind, &v[..n]);
    }

    /// ERROR-CODE (RFC 8489 §14.8): class (hundreds) and number, then the reason phrase.
    fn error(&mut self, code: u16) {
        let reason = reason_phrase(code).as_bytes();
        let mut v = [0u8; 64];
        v[2] = (code / 100) as u8;
        v[3] = (code % 100) as u8;
        let n = 4 + reason.len().min(60);
        v[4..n].copy_from_slice(&reason[..n - 4]);
        self.attr(ATTR_ERROR_CODE, &v[..n]);
    }

    /// Appends SOFTWARE, MESSAGE-INTEGRITY under `key` and FINGERPRINT; the message length.
    fn finish(mut self, software: Option<&str>, key: Option<&[u8]>) -> Option<usize> {
        if let Some(s) = software {
            self.attr(ATTR_SOFTWARE, s.as_bytes());
        }
        if !self.ok {
            return None;
        }
        let mut len = self.len;
        if let Some(key) = key {
            len = ice::append_integrity(self.out, len, key).ok()?;
        }
        ice::append_fingerprint(self.out, len).ok()
    }
}

/// The request being answered.
#[derive(Clone, Copy, Debug)]
struct Ctx {
    now: Now,
    from: FiveTuple,
    method: u16,
    tid: [u8; 12],
}

/// Who a request authenticated as, borrowed from the request.
#[derive(Clone, Copy, Debug)]
struct Auth<'a> {
    key: [u8; 16],
    username: &'a str,
    user: &'a str,
}

/// The TURN server; see the module docs. `A` hands out relayed addresses.
#[derive(Debug)]
pub struct Server<A> {
    config: ServerConfig,
    nonces: NonceMint,
    allocator: A,
    allocations: Map<FiveTuple, Allocation>,
    by_relayed: Map<SocketAddr, FiveTuple>,
    per_user: Map<Box<str>, usize>,
    own_legs: HashSet<SocketAddr, RandomState>,
    own_ips: Map<IpAddr, usize>,
    refusals: [u64; Refusal::COUNT],
    indications: u64,
    route_changes: std::collections::VecDeque<RouteChange>,
    /// The latest time the server was given (for route changes the own-leg set causes).
    last_now: Instant,
}

fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

impl<A: RelayAllocator> Server<A> {
    /// A server with `config`, taking relayed addresses from `allocator`.
    pub fn new(config: ServerConfig, allocator: A) -> Result<Self, ConfigError> {
        if config.realm.is_empty() || config.realm.len() > MAX_TEXT {
            return Err(ConfigError::Realm { len: config.realm.len() });
        }
        if let Some(s) = config.software.as_ref().filter(|s| s.len() > MAX_TEXT) {
            return Err(ConfigError::Software { len: s.len() });
        }
        if config.secret.is_empty() {
            return Err(ConfigError::EmptySecret);
        }
        let lifetimes = [config.default_lifetime, config.max_lifetime, config.permission_lifetime, config.channel_lifetime, config.nonce_lifetime];
        if lifetimes.contains(&Duration::ZERO) || config.default_lifetime > config.max_lifetime {
            return Err(ConfigError::Lifetimes { default: config.default_lifetime, max: config.max_lifetime });
        }
        Ok(Self {
            nonces: NonceMint::new(config.nonce_key),
            config,
            allocator,
            allocations: Map::default(),
            by_relayed: Map::default(),
            per_user: Map::default(),
            own_legs: HashSet::default(),
            own_ips: Map::default(),
            refusals: [0; Refusal::COUNT],
            indications: 0,
            route_changes: Default::default(),
            last_now: Instant::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The relayed-address allocator.
    pub fn allocator(&self) -> &A {
        &self.allocator
    }

    /// The relayed-address allocator, mutably.
    pub fn allocator_mut(&mut self) -> &mut A {
        &mut self.allocator
    }

    /// Allocations held (including any expired ones the next [`Server::handle_timeout`] removes).
    pub fn allocation_count(&self) -> usize {
        self.allocations.len()
    }

    /// The relayed address of the allocation on `five_tuple`, if it has a live one.
    pub fn relayed_address(&self, five_tuple: &FiveTuple, now: Instant) -> Option<SocketAddr> {
        self.live(five_tuple, now).map(|a| a.relayed)
    }

    /// How often each [`Refusal`] happened, indexed by `Refusal as usize`.
    pub fn refusals(&self) -> &[u64; Refusal::COUNT] {
        &self.refusals
    }

    /// How often `reason` happened.
    pub fn refused(&self, reason: Refusal) -> u64 {
        self.refusals[reason as usize]
    }

    /// Marks `addr` as one of Sluice's own legs: allocations may reach it.
    pub fn add_own_leg(&mut self, addr: SocketAddr) {
        let addr = canonical(addr);
        if self.own_legs.insert(addr) {
            *self.own_ips.entry(addr.ip()).or_default() += 1;
            self.sync_routes_to(addr);
        }
    }

    /// `addr` is no longer a leg: relaying to it stops at once (permissions stay, but each
    /// datagram is checked against the leg set).
    pub fn remove_own_leg(&mut self, addr: SocketAddr) {
        let addr = canonical(addr);
        if self.own_legs.remove(&addr)
            && let Some(n) = self.own_ips.get_mut(&addr.ip())
        {
            *n -= 1;
            if *n == 0 {
                self.own_ips.remove(&addr.ip());
            }
            self.sync_routes_to(addr);
        }
    }

    /// Whether `addr` is one of the own legs.
    pub fn is_own_leg(&self, addr: SocketAddr) -> bool {
        self.own_legs.contains(&canonical(addr))
    }

    /// The client's TCP or TLS connection on `five_tuple` closed: its allocation goes with it
    /// (RFC 8656 §3.1).
    pub fn close_connection(&mut self, five_tuple: &FiveTuple) {
        self.remove_allocation(five_tuple);
    }

    fn count(&mut self, r: Refusal) {
        self.refusals[r as usize] += 1;
    }

    fn live(&self, ft: &FiveTuple, now: Instant) -> Option<&Allocation> {
        self.allocations.get(ft).filter(|a| a.expires > now)
    }

    fn remove_allocation(&mut self, ft: &FiveTuple) {
        let Some(a) = self.allocations.remove(ft) else { return };
        self.route_changes.extend(a.routes.iter().map(|r| RouteChange::Down(*r)));
        self.by_relayed.remove(&a.relayed);
        if let Some(n) = self.per_user.get_mut(&a.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_user.remove(&a.user);
            }
        }
        self.allocator.release(a.relayed);
    }

    /// Removes expired allocations (releasing their relayed addresses), permissions and
    /// channel bindings (a channel number stays reserved five minutes past its expiry).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = self.last_now.max(now);
        let expired: Vec<FiveTuple> = self.allocations.iter().filter(|(_, a)| a.expires <= now).map(|(ft, _)| *ft).collect();
        for ft in &expired {
            self.remove_allocation(ft);
        }
        for a in self.allocations.values_mut() {
            a.permissions.retain(|p| p.expires > now);
            a.channels.retain(|c| c.expires + CHANNEL_REUSE_DELAY > now);
        }
        let live: Vec<FiveTuple> = self.allocations.iter().filter(|(_, a)| !a.routes.is_empty() || !a.channels.is_empty()).map(|(ft, _)| *ft).collect();
        for ft in &live {
            self.sync_routes(ft, now);
        }
    }

    /// The next change to the channel routes (see [`ChannelRoute`]), in the order they happened.
    /// Changes come from requests, [`Server::handle_timeout`], closed connections and the own-leg
    /// set; the caller drains them after each of those.
    pub fn poll_route(&mut self) -> Option<RouteChange> {
        self.route_changes.pop_front()
    }

    /// Every live route (for a fast path that starts, or restarts, after the server).
    pub fn routes(&self) -> impl Iterator<Item = &ChannelRoute> + '_ {
        self.allocations.values().flat_map(|a| a.routes.iter())
    }

    /// Recomputes the routes of the allocation on `ft` and queues what changed.
    fn sync_routes(&mut self, ft: &FiveTuple, now: Instant) {
        let Some(a) = self.allocations.get_mut(ft) else { return };
        let own = &self.own_legs;
        let live = |a: &Allocation, c: &Channel| c.expires > now && a.expires > now && own.contains(&c.peer) && a.permission(c.peer.ip(), now).is_some();
        let want: Vec<ChannelRoute> =
            a.channels.iter().filter(|c| live(a, c)).map(|c| ChannelRoute { client: *ft, channel: c.number, relayed: a.relayed, peer: c.peer }).collect();
        for r in a.routes.iter().filter(|r| !want.contains(r)) {
            self.route_changes.push_back(RouteChange::Down(*r));
        }
        for r in want.iter().filter(|r| !a.routes.contains(r)) {
            self.route_changes.push_back(RouteChange::Up(*r));
        }
        a.routes = want;
    }

    /// Recomputes the routes of every allocation with a channel to `peer` (the own-leg set
    /// changed). The time is the latest the server saw: a leg change carries none.
    fn sync_routes_to(&mut self, peer: SocketAddr) {
        let fts: Vec<(FiveTuple, Instant)> = self
            .allocations
            .iter()
            .filter(|(_, a)| a.channels.iter().any(|c| c.peer == peer) || a.routes.iter().any(|r| r.peer == peer))
            .map(|(ft, _)| (*ft, self.last_now))
            .collect();
        for (ft, now) in fts {
            self.sync_routes(&ft, now);
        }
    }

    /// When [`Server::handle_timeout`] next has something to remove.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.allocations
            .values()
            .flat_map(|a| {
                let perms = a.permissions.iter().map(|p| p.expires);
                // A channel's expiry ends its route; its number stays reserved a while after.
                let chans = a.channels.iter().flat_map(|c| [c.expires, c.expires + CHANNEL_REUSE_DELAY]);
                core::iter::once(a.expires).chain(perms).chain(chans)
            })
            .min()
    }

    /// Whether an allocation may be given a permission for `peer` (canonical); `exact` also
    /// requires the port to be a leg's (ChannelBind names a whole transport address,
    /// CreatePermission only an IP). `Ok(true)` when the allow-list admits it.
    fn permit(&self, peer: SocketAddr, exact: bool) -> Result<bool, Refusal> {
        let policy = &self.config.policy;
        if policy.is_denied_endpoint(peer) {
            return Err(Refusal::PeerControlPort);
        }
        // Sluice's own legs first: a node's legs often sit on a private address (behind a 1:1
        // NAT or a load balancer), and reaching exactly them is what the relay is for. The
        // per-datagram check still requires the exact leg address.
        let own = if exact { self.own_legs.contains(&peer) } else { self.own_ips.contains_key(&peer.ip()) };
        if own {
            return Ok(false);
        }
        if policy.is_denied_range(peer.ip()) {
            return Err(Refusal::PeerDeniedRange);
        }
        if policy.is_allowed_range(peer.ip()) {
            return Ok(true);
        }
        Err(Refusal::PeerNotAllowed)
    }

    /// The per-datagram check from an allocation to `peer` (canonical): family, permission,
    /// control endpoints, and for a permission admitted as a leg's address, that the exact
    /// transport address is (still) a leg.
    fn relay_check(&self, a: &Allocation, peer: SocketAddr, now: Instant) -> Result<(), Refusal> {
        if AddressFamily::of(peer.ip()) != AddressFamily::of(a.relayed.ip()) {
            return Err(Refusal::PeerFamilyMismatch);
        }
        let perm = a.permission(peer.ip(), now).ok_or(Refusal::NoPermission)?;
        if self.config.policy.is_denied_endpoint(peer) {
            return Err(Refusal::PeerControlPort);
        }
        if !perm.via_allow && !self.own_legs.contains(&peer) {
            return Err(Refusal::PeerNotAllowed);
        }
        Ok(())
    }

    /// Handles one message from a client: a UDP datagram, or one frame from the client's
    /// [`super::StreamDeframer`]. Responses are written into `out` (give it [`MAX_RESPONSE`]
    /// bytes).
    pub fn handle_client<'a>(&mut self, now: Now, from: FiveTuple, datagram: &'a [u8], out: &mut [u8]) -> ClientAction<'a> {
        self.last_now = self.last_now.max(now.mono);
        let action = self.client_message(now, from, datagram, out);
        if let ClientAction::Dropped(r) = action {
            self.count(r);
        }
        action
    }

    fn client_message<'a>(&mut self, now: Now, from: FiveTuple, datagram: &'a [u8], out: &mut [u8]) -> ClientAction<'a> {
        if datagram.first().is_some_and(|b| b >> 6 == 0b01) {
            return self.client_channel_data(now.mono, &from, datagram);
        }
        let Ok(msg) = Message::new_checked(datagram) else { return ClientAction::Dropped(Refusal::Malformed) };
        let bytes = &datagram[..msg.total_len()];
        let ctx = Ctx { now, from, method: msg.method(), tid: msg.transaction_id() };
        let p = match parse(&msg, bytes, &ctx.tid) {
            Ok(p) => p,
            Err(r) => return ClientAction::Dropped(r),
        };
        match msg.class() {
            Class::Indication if ctx.method == METHOD_SEND => self.send_indication(now.mono, &from, &p),
            Class::Request => self.request(&ctx, &p, bytes, out),
            _ => ClientAction::Dropped(Refusal::UnexpectedMessage),
        }
    }

    fn client_channel_data<'a>(&self, now: Instant, from: &FiveTuple, datagram: &'a [u8]) -> ClientAction<'a> {
        let Ok(cd) = ChannelData::new_checked(datagram) else { return ClientAction::Dropped(Refusal::Malformed) };
        let Some(a) = self.live(from, now) else { return ClientAction::Dropped(Refusal::NoAllocation) };
        let Some(ch) = a.channels.iter().find(|c| c.number == cd.channel() && c.expires > now) else {
            return ClientAction::Dropped(Refusal::NoChannel);
        };
        if let Err(r) = self.relay_check(a, ch.peer, now) {
            return ClientAction::Dropped(r);
        }
        let payload = &datagram[CHANNEL_DATA_HEADER..CHANNEL_DATA_HEADER + cd.data().len()];
        ClientAction::Relay { relayed: a.relayed, peer: ch.peer, payload }
    }

    fn send_indication<'a>(&self, now: Instant, from: &FiveTuple, p: &Parsed<'a>) -> ClientAction<'a> {
        let Some(a) = self.live(from, now) else { return ClientAction::Dropped(Refusal::NoAllocation) };
        // RFC 8489 §6.3.1: an indication with unknown comprehension-required attributes is
        // discarded.
        if p.n_unknown > 0 {
            return ClientAction::Dropped(Refusal::UnknownAttribute);
        }
        let (Some(peer), Some(payload), false) = (p.peers[0], p.data, p.bad_value) else { return ClientAction::Dropped(Refusal::Malformed) };
        let peer = canonical(peer);
        match self.relay_check(a, peer, now) {
            Ok(()) => ClientAction::Relay { relayed: a.relayed, peer, payload },
            Err(r) => ClientAction::Dropped(r),
        }
    }

    /// Writes an error response for `r` (counted), signed with `key` when the request
    /// authenticated; 401 and 438 carry REALM and a fresh NONCE, 420 the unknown attributes.
    fn refuse(&mut self, ctx: &Ctx, r: Refusal, key: Option<&[u8; 16]>, unknown: &[u16], out: &mut [u8]) -> ClientAction<'static> {
        self.count(r);
        let code = r.error_code().unwrap_or(400);
        let mut w = Writer::new(out, stun::message_type(ctx.method, Class::ErrorResponse), &ctx.tid);
        w.error(code);
        if matches!(code, 401 | 438) {
            w.attr(ATTR_REALM, self.config.realm.as_bytes());
            let nonce = self.nonces.issue(ctx.now.mono + self.config.nonce_lifetime, ctx.from.client);
            w.attr(ATTR_NONCE, &nonce);
        }
        if code == 420 {
            let mut v = [0u8; 2 * MAX_UNKNOWN];
            for (chunk, kind) in v.chunks_exact_mut(2).zip(unknown) {
                chunk.copy_from_slice(&kind.to_be_bytes());
            }
            w.attr(ATTR_UNKNOWN_ATTRIBUTES, &v[..2 * unknown.len().min(MAX_UNKNOWN)]);
        }
        self.reply(w, key)
    }

    fn reply(&mut self, w: Writer<'_>, key: Option<&[u8; 16]>) -> ClientAction<'static> {
        match w.finish(self.config.software.as_deref(), key.map(|k| &k[..])) {
            Some(len) => ClientAction::Reply(len),
            None => ClientAction::Dropped(Refusal::OutputTooSmall),
        }
    }

    fn request(&mut self, ctx: &Ctx, p: &Parsed<'_>, bytes: &[u8], out: &mut [u8]) -> ClientAction<'static> {
        if ctx.method == METHOD_BINDING {
            if p.n_unknown > 0 {
                return self.refuse(ctx, Refusal::UnknownAttribute, None, &p.unknown[..p.n_unknown], out);
            }
            let mut w = Writer::new(out, stun::message_type(METHOD_BINDING, Class::SuccessResponse), &ctx.tid);
            w.xor_addr(ATTR_XOR_MAPPED_ADDRESS, ctx.from.client, &ctx.tid);
            return self.reply(w, None);
        }
        if !matches!(ctx.method, METHOD_ALLOCATE | METHOD_REFRESH | METHOD_CREATE_PERMISSION | METHOD_CHANNEL_BIND) {
            return self.refuse(ctx, Refusal::BadRequest, None, &[], out);
        }
        // A retransmitted Allocate gets the answer the first one got (RFC 8656 §7.2), even if its
        // nonce went stale meanwhile.
        if ctx.method == METHOD_ALLOCATE
            && let Some(a) = self.live(&ctx.from, ctx.now.mono)
            && a.allocate_tid == ctx.tid
        {
            let Some(dst) = out.get_mut(..a.allocate_response.len()) else { return ClientAction::Dropped(Refusal::OutputTooSmall) };
            dst.copy_from_slice(&a.allocate_response);
            return ClientAction::Reply(dst.len());
        }
        let auth = match self.authenticate(ctx, p, bytes) {
            Ok(auth) => auth,
            Err((r, key)) => return self.refuse(ctx, r, key.as_ref(), &[], out),
        };
        let key = &auth.key;
        if p.n_unknown > 0 {
            return self.refuse(ctx, Refusal::UnknownAttribute, Some(key), &p.unknown[..p.n_unknown], out);
        }
        if p.bad_value {
            return self.refuse(ctx, Refusal::BadRequest, Some(key), &[], out);
        }
        if let Some(a) = self.live(&ctx.from, ctx.now.mono)
            && *a.username != *auth.username
        {
            return self.refuse(ctx, Refusal::WrongCredentials, Some(key), &[], out);
        }
        let done = match ctx.method {
            METHOD_ALLOCATE => self.allocate(ctx, p, &auth, out),
            METHOD_REFRESH => self.refresh(ctx, p, out),
            METHOD_CREATE_PERMISSION => self.create_permission(ctx, p),
            _ => self.channel_bind(ctx, p),
        };
        if done.is_ok() && matches!(ctx.method, METHOD_REFRESH | METHOD_CREATE_PERMISSION | METHOD_CHANNEL_BIND) {
            self.sync_routes(&ctx.from, ctx.now.mono);
        }
        match done {
            Ok(Some(action)) => action,
            Ok(None) => {
                let w = Writer::new(out, stun::message_type(ctx.method, Class::SuccessResponse), &ctx.tid);
                self.reply(w, Some(key))
            }
            Err(r) => self.refuse(ctx, r, Some(key), &[], out),
        }
    }

    /// RFC 8489 §9.2.4, in its order; the error carries the key when the request did verify.
    fn authenticate<'a>(&self, ctx: &Ctx, p: &Parsed<'a>, bytes: &[u8]) -> Result<Auth<'a>, (Refusal, Option<[u8; 16]>)> {
        let Some((mi_offset, mi)) = p.integrity else { return Err((Refusal::Unauthenticated, None)) };
        let (Some(username), Some(realm), Some(nonce)) = (p.username, p.realm, p.nonce) else { return Err((Refusal::BadRequest, None)) };
        let bad = (Refusal::BadCredentials, None);
        if realm != self.config.realm.as_bytes() {
            return Err(bad);
        }
        let username = core::str::from_utf8(username).map_err(|_| bad)?;
        let (expiry, user) = parse_rest_username(username).ok_or(bad)?;
        if expiry < ctx.now.unix_secs {
            return Err((Refusal::ExpiredCredentials, None));
        }
        let verifies = |key: &[u8; 16]| integrity_ok(bytes, mi_offset, mi, key);
        let cached = self.allocations.get(&ctx.from).filter(|a| *a.username == *username).map(|a| a.key).filter(verifies);
        let key = cached
            .or_else(|| {
                core::iter::once(&self.config.secret)
                    .chain(self.config.previous_secret.as_ref())
                    .map(|secret| long_term_key(username.as_bytes(), realm, rest_api_password(secret, username).as_bytes()))
                    .find(verifies)
            })
            .ok_or(bad)?;
        if self.nonces.check(nonce, ctx.from.client, ctx.now.mono) != NonceCheck::Fresh {
            return Err((Refusal::StaleNonce, Some(key)));
        }
        Ok(Auth { key, username, user })
    }

    fn lifetime(&self, requested: Option<u32>) -> Duration {
        let requested = requested.map_or(self.config.default_lifetime, |s| Duration::from_secs(u64::from(s)));
        requested.clamp(self.config.default_lifetime, self.config.max_lifetime)
    }

    fn allocate(&mut self, ctx: &Ctx, p: &Parsed<'_>, auth: &Auth<'_>, out: &mut [u8]) -> Result<Option<ClientAction<'static>>, Refusal> {
        let now = ctx.now.mono;
        if self.live(&ctx.from, now).is_some() {
            return Err(Refusal::AllocationMismatch);
        }
        // An expired allocation on this 5-tuple not swept yet.
        self.remove_allocation(&ctx.from);
        match p.transport {
            None => return Err(Refusal::BadRequest),
            Some(TRANSPORT_UDP) => {}
            Some(_) => return Err(Refusal::UnsupportedTransport),
        }
        let family = match p.family {
            None | Some(0x01) => AddressFamily::V4,
            Some(0x02) => AddressFamily::V6,
            Some(_) => return Err(Refusal::AddressFamilyNotSupported),
        };
        let user_count = |s: &Self| s.per_user.get(auth.user).copied().unwrap_or(0);
        if self.allocations.len() >= self.config.max_allocations || user_count(self) >= self.config.max_allocations_per_user {
            self.handle_timeout(now);
        }
        if self.allocations.len() >= self.config.max_allocations {
            return Err(Refusal::InsufficientCapacity);
        }
        if user_count(self) >= self.config.max_allocations_per_user {
            return Err(Refusal::UserQuota);
        }
        let relayed = self.allocator.allocate(&ctx.from, family).ok_or(Refusal::InsufficientCapacity)?;
        if self.by_relayed.contains_key(&relayed) {
            // The allocator handed out an address in use: not ours to release.
            return Err(Refusal::InsufficientCapacity);
        }
        if AddressFamily::of(relayed.ip()) != family {
            self.allocator.release(relayed);
            return Err(Refusal::AddressFamilyNotSupported);
        }
        let lifetime = self.lifetime(p.lifetime);
        let mut w = Writer::new(out, stun::message_type(METHOD_ALLOCATE, Class::SuccessResponse), &ctx.tid);
        w.xor_addr(ATTR_XOR_RELAYED_ADDRESS, relayed, &ctx.tid);
        w.attr(ATTR_LIFETIME, &(lifetime.as_secs() as u32).to_be_bytes());
        w.xor_addr(ATTR_XOR_MAPPED_ADDRESS, ctx.from.client, &ctx.tid);
        let reply = self.reply(w, Some(&auth.key));
        let ClientAction::Reply(len) = reply else {
            self.allocator.release(relayed);
            return Ok(Some(reply));
        };
        let allocation = Allocation {
            relayed,
            username: auth.username.into(),
            user: auth.user.into(),
            key: auth.key,
            allocate_tid: ctx.tid,
            allocate_response: out[..len].into(),
            expires: now + lifetime,
            permissions: Vec::new(),
            channels: Vec::new(),
            routes: Vec::new(),
        };
        *self.per_user.entry(auth.user.into()).or_default() += 1;
        self.by_relayed.insert(relayed, ctx.from);
        self.allocations.insert(ctx.from, allocation);
        Ok(Some(reply))
    }

    fn refresh(&mut self, ctx: &Ctx, p: &Parsed<'_>, out: &mut [u8]) -> Result<Option<ClientAction<'static>>, Refusal> {
        let now = ctx.now.mono;
        if self.live(&ctx.from, now).is_none() {
            return Err(Refusal::AllocationMismatch);
        }
        let key = self.allocations.get(&ctx.from).map(|a| a.key).unwrap_or_default();
        let lifetime = if p.lifetime == Some(0) {
            self.remove_allocation(&ctx.from);
            Duration::ZERO
        } else {
            let lifetime = self.lifetime(p.lifetime);
            if let Some(a) = self.allocations.get_mut(&ctx.from) {
                a.expires = now + lifetime;
            }
            lifetime
        };
        let mut w = Writer::new(out, stun::message_type(METHOD_REFRESH, Class::SuccessResponse), &ctx.tid);
        w.attr(ATTR_LIFETIME, &(lifetime.as_secs() as u32).to_be_bytes());
        Ok(Some(self.reply(w, Some(&key))))
    }

    fn create_permission(&mut self, ctx: &Ctx, p: &Parsed<'_>) -> Result<Option<ClientAction<'static>>, Refusal> {
        let now = ctx.now.mono;
        let a = self.live(&ctx.from, now).ok_or(Refusal::AllocationMismatch)?;
        if p.peers[0].is_none() {
            return Err(Refusal::BadRequest);
        }
        let mut verdicts = [(IpAddr::from([0u8; 4]), false); MAX_PEERS];
        let mut new = 0;
        for (i, peer) in p.peers().map(canonical).enumerate() {
            if AddressFamily::of(peer.ip()) != AddressFamily::of(a.relayed.ip()) {
                return Err(Refusal::PeerFamilyMismatch);
            }
            verdicts[i] = (peer.ip(), self.permit(peer, false)?);
            if a.permissions.iter().all(|q| q.ip != peer.ip()) && verdicts[..i].iter().all(|(ip, _)| *ip != peer.ip()) {
                new += 1;
            }
        }
        if a.permissions.len() + new > self.config.max_permissions {
            return Err(Refusal::InsufficientCapacity);
        }
        let n = p.peers().count();
        let expires = now + self.config.permission_lifetime;
        let a = self.allocations.get_mut(&ctx.from).ok_or(Refusal::AllocationMismatch)?;
        for &(ip, via_allow) in &verdicts[..n] {
            install_permission(a, ip, expires, via_allow);
        }
        Ok(None)
    }

    fn channel_bind(&mut self, ctx: &Ctx, p: &Parsed<'_>) -> Result<Option<ClientAction<'static>>, Refusal> {
        let now = ctx.now.mono;
        let a = self.live(&ctx.from, now).ok_or(Refusal::AllocationMismatch)?;
        let (Some(number), Some(peer)) = (p.channel, p.peers[0]) else { return Err(Refusal::BadRequest) };
        let number = ChannelNumber::new(number).ok_or(Refusal::BadRequest)?;
        let peer = canonical(peer);
        if AddressFamily::of(peer.ip()) != AddressFamily::of(a.relayed.ip()) {
            return Err(Refusal::PeerFamilyMismatch);
        }
        let via_allow = self.permit(peer, true)?;
        // RFC 8656 §12.2: a number bound (or cooling down) to another peer, or a peer bound to
        // another number, is a 400; the same pair refreshes.
        let reserved = |c: &&Channel| c.expires + CHANNEL_REUSE_DELAY > now;
        if a.channels.iter().filter(reserved).any(|c| (c.number == number) != (c.peer == peer)) {
            return Err(Refusal::BadRequest);
        }
        let existing = a.channels.iter().position(|c| c.number == number && c.peer == peer);
        if existing.is_none() && a.channels.iter().filter(reserved).count() >= self.config.max_channels {
            return Err(Refusal::InsufficientCapacity);
        }
        if a.permissions.iter().all(|q| q.ip != peer.ip()) && a.permissions.len() >= self.config.max_permissions {
            return Err(Refusal::InsufficientCapacity);
        }
        let (channel_expires, permission_expires) = (now + self.config.channel_lifetime, now + self.config.permission_lifetime);
        let a = self.allocations.get_mut(&ctx.from).ok_or(Refusal::AllocationMismatch)?;
        a.channels.retain(|c| c.expires + CHANNEL_REUSE_DELAY > now);
        match a.channels.iter_mut().find(|c| c.number == number) {
            Some(c) => c.expires = channel_expires,
            None => a.channels.push(Channel { number, peer, expires: channel_expires }),
        }
        install_permission(a, peer.ip(), permission_expires, via_allow);
        Ok(None)
    }

    /// Where a datagram from `peer` arriving on `relayed` goes, without counting or writing:
    /// for a caller that frames the payload in place (4 bytes of headroom for ChannelData,
    /// see [`super::write_channel_data_header`]).
    pub fn peer_route(&self, now: Instant, relayed: SocketAddr, peer: SocketAddr) -> Result<PeerRoute, Refusal> {
        let ft = self.by_relayed.get(&relayed).ok_or(Refusal::NoAllocation)?;
        let a = self.live(ft, now).ok_or(Refusal::NoAllocation)?;
        let peer = canonical(peer);
        a.permission(peer.ip(), now).ok_or(Refusal::NoPermission)?;
        let channel = a.channels.iter().find(|c| c.peer == peer && c.expires > now).map(|c| c.number);
        Ok(PeerRoute { to: *ft, channel })
    }

    /// Handles a datagram `payload` that `peer` sent to the relayed address `relayed`: writes
    /// ChannelData (a channel is bound to the peer) or a Data indication into `out` (room for
    /// the payload plus 48 bytes).
    pub fn handle_peer(&mut self, now: Instant, relayed: SocketAddr, peer: SocketAddr, payload: &[u8], out: &mut [u8]) -> PeerAction {
        let action = match self.peer_route(now, relayed, peer) {
            Err(r) => PeerAction::Dropped(r),
            Ok(PeerRoute { to, channel: Some(ch) }) => match encode_channel_data(out, ch, payload, to.transport.is_stream()) {
                Ok(len) => PeerAction::ToClient { to, len },
                Err(_) => PeerAction::Dropped(Refusal::OutputTooSmall),
            },
            Ok(PeerRoute { to, channel: None }) => match self.data_indication(canonical(peer), payload, out) {
                Some(len) => PeerAction::ToClient { to, len },
                None => PeerAction::Dropped(Refusal::OutputTooSmall),
            },
        };
        if let PeerAction::Dropped(r) = action {
            self.count(r);
        }
        action
    }

    /// A Data indication (RFC 8656 §10.3): XOR-PEER-ADDRESS and DATA, no FINGERPRINT.
    fn data_indication(&mut self, peer: SocketAddr, payload: &[u8], out: &mut [u8]) -> Option<usize> {
        self.indications += 1;
        let mut tid = [0u8; 12];
        tid[..4].copy_from_slice(b"SLDI");
        tid[4..].copy_from_slice(&self.indications.to_be_bytes());
        let mut w = Writer::new(out, stun::message_type(METHOD_DATA, Class::Indication), &tid);
        w.xor_addr(ATTR_XOR_PEER_ADDRESS, peer, &tid);
        w.attr(ATTR_DATA, payload);
        let len = w.len;
        if !w.ok || len - HEADER_LEN > usize::from(u16::MAX) {
            return None;
        }
        w.out[2..4].copy_from_slice(&((len - HEADER_LEN) as u16).to_be_bytes());
        Some(len)
    }
}

fn install_permission(a: &mut Allocation, ip: IpAddr, expires: Instant, via_allow: bool) {
    match a.permissions.iter_mut().find(|q| q.ip == ip) {
        Some(q) => {
            q.expires = expires;
            q.via_allow = via_allow;
        }
        None => a.permissions.push(Permission { ip, expires, via_allow }),
    }
}

/// The nonce length must fit the NONCE attribute limit (RFC 8489 §14.10: < 128 characters).
const _: () = assert!(NONCE_LEN < 128);
