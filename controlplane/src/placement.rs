//! Placement: which node a session's next participant goes to (not the placement of a
//! session's legs on dataplane workers, which `state` decides inside one node).
//!
//! A session id names a meeting, and a meeting may span nodes. Every node with Redis publishes
//! its load score ([`Load`]) in its heartbeat (see `lb`); [`place`] reads every registered
//! node's heartbeat and the session's nodes, decides in pure code ([`choose`]) and records the
//! answer. The decision and the record are one atomic step: the record is a compare-and-set
//! (a Lua script that adds the node only if the session's set is still what the decision saw,
//! and the node still alive and not draining), retried on a fresh read when it lost a race. So
//! concurrent calls for a new session all end on the node the first one recorded, and a retry
//! of an answered call finds its node already there and adds nothing.
//!
//! Redis keys (all written by nodes except the session's set, which placement and admission
//! both add to):
//!
//! ```text
//! sluice:nodes               ZSET  node id -> Redis time (ms) of its last heartbeat: the
//!                                  registry, so a dead node (its hash expired) is still known
//! sluice:node:<id>           HASH  the heartbeat: score, draining, grpc, heartbeat_redis_ms,
//!                                  interval_ms, ... (expires after 3 heartbeat intervals)
//! sluice:node:<id>:drain     "1":  drain (set by an operator or a load balancer)
//! sluice:session:<s>:nodes   SET   the nodes the session is placed on
//! sluice:placement:<s>       STR   legacy single-node placement, still honoured
//! ```
//!
//! Times are Redis' own clock (`TIME`), on both sides: a node's clock that is off does not
//! make it look dead or fresh.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::time::Duration;

use crate::pb;

/// A node the session already has is answered again while its score is below this.
pub const DEFAULT_THRESHOLD: f64 = 0.8;

/// The registry of nodes: a sorted set, node id -> Redis time (ms) of its last heartbeat.
pub const NODES_KEY: &str = "sluice:nodes";

/// A heartbeat older than this many intervals makes a node stale (its hash expires then too).
pub const STALE_AFTER_INTERVALS: u64 = 3;

/// How many times [`place`] reads and decides again after losing a race for the session's set.
const MAX_ATTEMPTS: usize = 8;

/// How long connecting to Redis, or one command, may take in [`Placer::place`].
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(1);

/// The set of nodes a session is placed on.
pub fn session_nodes_key(session: &str) -> String {
    format!("sluice:session:{session}:nodes")
}

/// A node's load score and what dominates it.
///
/// The score is the largest of these shares, each 1.0 when that resource is used up:
/// - packets per second received plus sent (the dataplane's rates over its last stats
///   interval) ÷ `capacity_pps` (the node's configured capacity);
/// - legs ÷ `max_legs`, sessions ÷ `max_sessions`, subscriptions ÷ `max_subscriptions`, for
///   each quota that is set (a node at a quota refuses the next change, so it counts as full);
/// - leg ports in use ÷ the port range's size (1 − ports_free / size).
///
/// CPU is not part of it: the node status carries no per-worker busy share (only packet and
/// byte counters and rates), so the packet rate against the measured capacity stands in for it.
#[derive(Clone, Debug, PartialEq)]
pub struct Load {
    /// 0 idle, 1.0 full; may exceed 1.0 (more packets than the configured capacity).
    pub score: f64,
    /// The dominating share, in words (`legs 3/4`).
    pub reason: String,
}

impl Load {
    /// The load of a node with this status and capacity (packets per second).
    pub fn of(status: &pb::NodeStatus, capacity_pps: u64) -> Self {
        let pps = packet_rate(status);
        let mut shares = vec![(pps / capacity_pps.max(1) as f64, format!("packets {pps:.0}/s of {capacity_pps}/s"))];
        for (what, used, max) in [
            ("legs", status.legs, status.max_legs),
            ("sessions", status.sessions, status.max_sessions),
            ("subscriptions", status.subscriptions, status.max_subscriptions),
        ] {
            if max > 0 {
                shares.push((f64::from(used) / f64::from(max), format!("{what} {used}/{max}")));
            }
        }
        if status.port_range_start > 0 && status.port_range_end >= status.port_range_start {
            let size = status.port_range_end - status.port_range_start + 1;
            let used = size - status.ports_free.min(size);
            shares.push((f64::from(used) / f64::from(size), format!("ports {used}/{size} in use")));
        }
        let (score, reason) = shares.into_iter().fold((0.0, String::new()), |best, s| if s.0 > best.0 || best.1.is_empty() { s } else { best });
        Self { score: if score.is_finite() { score.max(0.0) } else { f64::MAX }, reason }
    }
}

/// Packets per second received plus sent over the dataplane's last stats interval, all workers.
pub fn packet_rate(status: &pb::NodeStatus) -> f64 {
    // A fold from +0.0: `Sum` of no floats is -0.0, which would publish as "-0".
    status.workers.iter().fold(0.0, |sum, w| sum + w.rx_packets_per_second + w.tx_packets_per_second)
}

/// A node as its heartbeat describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Its id.
    pub id: String,
    /// Its advertised gRPC address.
    pub grpc: String,
    /// Its load score.
    pub score: f64,
    /// What dominates the score.
    pub load: String,
    /// Draining (Node.Drain or its Redis drain flag).
    pub draining: bool,
    /// Redis time (ms) of its last heartbeat.
    pub heartbeat_ms: u64,
    /// Its heartbeat interval (ms).
    pub interval_ms: u64,
}

/// What Redis holds for one registered node.
#[derive(Clone, Debug, PartialEq)]
pub enum Seen {
    /// Its heartbeat hash.
    Published(Node),
    /// Registered, but its hash has expired: it stopped publishing.
    Expired {
        /// Its id.
        id: String,
        /// Redis time (ms) of its last heartbeat.
        last_heartbeat_ms: u64,
    },
    /// Its hash lacks what placement needs (a node older than placement).
    Unreadable {
        /// Its id.
        id: String,
        /// What is missing or malformed.
        why: String,
    },
}

/// Everything a decision reads, at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct View {
    /// Redis' clock (ms).
    pub now_ms: u64,
    /// Every registered node.
    pub nodes: Vec<Seen>,
    /// The session's set (`sluice:session:<s>:nodes`).
    pub session_nodes: BTreeSet<String>,
    /// The legacy `sluice:placement:<s>`, if set.
    pub legacy: Option<String>,
}

impl View {
    /// Whether the session has `node` (in its set or its legacy key).
    fn holds(&self, node: &str) -> bool {
        self.session_nodes.contains(node) || self.legacy.as_deref() == Some(node)
    }
}

/// A placement request.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// The session (meeting).
    pub session: String,
    /// Add a node rather than answer one the session has.
    pub new_node: bool,
    /// With `new_node`: the session's nodes the caller knows (not answered); empty: every node
    /// the session has.
    pub known_nodes: Vec<String>,
    /// The preference threshold, in (0, 1].
    pub threshold: f64,
}

impl Request {
    /// A request for `session` with the default threshold.
    pub fn new(session: impl Into<String>) -> Self {
        Self { session: session.into(), new_node: false, known_nodes: Vec::new(), threshold: DEFAULT_THRESHOLD }
    }

    /// The gRPC request, `threshold` standing in for an unset one.
    pub fn from_pb(r: pb::PlaceRequest, threshold: f64) -> Self {
        Self { session: r.session, new_node: r.new_node, known_nodes: r.known_nodes, threshold: r.threshold.unwrap_or(threshold) }
    }

    /// Refuses an empty or malformed session id and a threshold outside (0, 1].
    pub fn validate(&self) -> Result<(), PlaceError> {
        crate::state::check_id("session", &self.session).map_err(|e| PlaceError::InvalidArgument { field: "session", why: e.message })?;
        for (i, n) in self.known_nodes.iter().enumerate() {
            if n.is_empty() {
                return Err(PlaceError::InvalidArgument { field: "known_nodes", why: format!("entry {i} is empty") });
            }
        }
        if !(self.threshold > 0.0 && self.threshold <= 1.0) {
            return Err(PlaceError::InvalidArgument { field: "threshold", why: format!("{} is not in (0, 1]", self.threshold) });
        }
        Ok(())
    }
}

/// Why a node cannot take the session.
#[derive(Clone, Debug, PartialEq)]
pub enum Excluded {
    /// Its heartbeat hash expired (killed, crashed, or cut off from Redis).
    Dead {
        /// How long since its last heartbeat (ms).
        silent_ms: u64,
    },
    /// Its hash is there but its heartbeat is older than three intervals.
    Stale {
        /// Age of its last heartbeat (ms).
        age_ms: u64,
        /// The limit (ms).
        limit_ms: u64,
    },
    /// It is draining.
    Draining,
    /// Its score is 1.0 or more.
    Full {
        /// Its score.
        score: f64,
        /// What dominates it.
        load: String,
    },
    /// Its hash lacks what placement needs.
    Unreadable(String),
    /// `new_node`: the session already has it (or the caller listed it in `known_nodes`).
    NotNew,
}

impl fmt::Display for Excluded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dead { silent_ms } => write!(f, "dead (no heartbeat for {silent_ms} ms; its key expired)"),
            Self::Stale { age_ms, limit_ms } => write!(f, "stale (last heartbeat {age_ms} ms ago, limit {limit_ms} ms)"),
            Self::Draining => write!(f, "draining"),
            Self::Full { score, load } => write!(f, "full (score {score:.3}: {load})"),
            Self::Unreadable(why) => write!(f, "unreadable heartbeat ({why})"),
            Self::NotNew => write!(f, "left out by new_node (the session has it, or known_nodes lists it)"),
        }
    }
}

/// A decision: the node, and whether the session's set must get it.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The node.
    pub node: Node,
    /// It is new to the session: add it to the set.
    pub add: bool,
    /// Why, in words.
    pub reason: String,
}

/// The pure decision (see the module's doc and `Node.Place` in `node.proto`). `Err` lists every
/// node with the reason it was left out, sorted by node id.
pub fn choose(view: &View, req: &Request) -> Result<Decision, Vec<(String, Excluded)>> {
    let mut excluded = Vec::new();
    let mut candidates = Vec::new();
    for seen in &view.nodes {
        match seen {
            Seen::Expired { id, last_heartbeat_ms } => {
                excluded.push((id.clone(), Excluded::Dead { silent_ms: view.now_ms.saturating_sub(*last_heartbeat_ms) }))
            }
            Seen::Unreadable { id, why } => excluded.push((id.clone(), Excluded::Unreadable(why.clone()))),
            Seen::Published(n) => {
                let limit_ms = STALE_AFTER_INTERVALS.saturating_mul(n.interval_ms);
                let age_ms = view.now_ms.saturating_sub(n.heartbeat_ms);
                if age_ms > limit_ms {
                    excluded.push((n.id.clone(), Excluded::Stale { age_ms, limit_ms }));
                } else if n.draining {
                    excluded.push((n.id.clone(), Excluded::Draining));
                } else if n.score >= 1.0 || !n.score.is_finite() {
                    excluded.push((n.id.clone(), Excluded::Full { score: n.score, load: n.load.clone() }));
                } else {
                    candidates.push(n);
                }
            }
        }
    }
    let not_new = |n: &Node| req.new_node && if req.known_nodes.is_empty() { view.holds(&n.id) } else { req.known_nodes.contains(&n.id) };
    let (barred, candidates): (Vec<&Node>, Vec<&Node>) = candidates.into_iter().partition(|n| not_new(n));
    let (mine, others): (Vec<&Node>, Vec<&Node>) = candidates.into_iter().partition(|n| view.holds(&n.id));
    let least = |v: &mut dyn Iterator<Item = &&Node>| v.min_by(|a, b| a.score.total_cmp(&b.score).then_with(|| a.id.cmp(&b.id))).map(|n| (*n).clone());
    let t = req.threshold;
    if let Some(node) = least(&mut mine.iter().filter(|n| n.score < t)) {
        let reason = format!(
            "session {:?} already has node {} (score {:.3}, below the threshold {t}); the least loaded of its available nodes [{}]",
            req.session,
            node.id,
            node.score,
            mine.iter().map(|n| n.id.as_str()).collect::<Vec<_>>().join(", ")
        );
        return Ok(Decision { node, add: false, reason });
    }
    if let Some(node) = least(&mut others.iter()) {
        let why = if req.new_node {
            "new_node: the least-loaded node the session does not have yet".to_owned()
        } else if view.session_nodes.is_empty() && view.legacy.is_none() {
            "new session: the least-loaded node".to_owned()
        } else if mine.is_empty() {
            format!(
                "none of the session's nodes [{}] can take it (dead, stale, draining or full): the least-loaded other node",
                view.session_nodes.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        } else {
            format!("the session's nodes are at or over the threshold {t}: the least-loaded other node")
        };
        let reason = format!("{why} (score {:.3}: {}; {} candidate node(s)); added to the session", node.score, node.load, others.len() + mine.len());
        return Ok(Decision { node, add: true, reason });
    }
    if let Some(node) = least(&mut mine.iter()) {
        let reason =
            format!("node {} is at or over the threshold (score {:.3} >= {t}) but no other node can take session {:?}", node.id, node.score, req.session);
        return Ok(Decision { node, add: false, reason });
    }
    excluded.extend(barred.into_iter().map(|n| (n.id.clone(), Excluded::NotNew)));
    excluded.sort_by(|a, b| a.0.cmp(&b.0));
    Err(excluded)
}

/// A placement's answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Placement {
    /// The node.
    pub node_id: String,
    /// Its advertised gRPC address.
    pub grpc: String,
    /// Its score when placed.
    pub score: f64,
    /// The session already had it.
    pub already_placed: bool,
    /// Why this node.
    pub reason: String,
    /// The session's nodes after the call, sorted.
    pub nodes: Vec<String>,
}

impl From<Placement> for pb::PlaceResponse {
    fn from(p: Placement) -> Self {
        Self { node_id: p.node_id, grpc: p.grpc, score: p.score, already_placed: p.already_placed, reason: p.reason, nodes: p.nodes }
    }
}

/// Why a placement failed.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    /// A request field is wrong (INVALID_ARGUMENT).
    #[error("{field}: {why}")]
    InvalidArgument {
        /// The field.
        field: &'static str,
        /// Why.
        why: String,
    },
    /// Redis is down, timed out or failed a command (UNAVAILABLE).
    #[error("redis{} unavailable ({op}): {source}", at_text(.at))]
    Redis {
        /// Redis' address, when known.
        at: Option<String>,
        /// What was being done.
        op: &'static str,
        /// The error.
        source: redis::RedisError,
    },
    /// No node can take the session (RESOURCE_EXHAUSTED).
    #[error("no node can take session {session:?}: {}", excluded_text(.excluded))]
    NoCandidate {
        /// The session.
        session: String,
        /// Every registered node with the reason it was left out.
        excluded: Vec<(String, Excluded)>,
    },
    /// The session's set changed under every attempt (ABORTED; retry).
    #[error("the nodes of session {session:?} changed during each of {attempts} attempts; retry")]
    Contended {
        /// The session.
        session: String,
        /// Attempts made.
        attempts: usize,
    },
}

fn at_text(at: &Option<String>) -> String {
    at.as_ref().map(|a| format!(" at {a}")).unwrap_or_default()
}

fn excluded_text(excluded: &[(String, Excluded)]) -> String {
    if excluded.is_empty() {
        return format!("no node has registered a heartbeat ({NODES_KEY} is empty)");
    }
    excluded.iter().map(|(id, why)| format!("{id}: {why}")).collect::<Vec<_>>().join("; ")
}

impl PlaceError {
    fn redis(op: &'static str) -> impl FnOnce(redis::RedisError) -> Self {
        move |source| Self::Redis { at: None, op, source }
    }

    /// The same error, naming Redis' address.
    pub fn at(self, addr: &str) -> Self {
        match self {
            Self::Redis { op, source, .. } => Self::Redis { at: Some(addr.to_owned()), op, source },
            e => e,
        }
    }
}

/// Parses a node's heartbeat hash.
fn parse_node(id: &str, h: &HashMap<String, String>) -> Result<Node, String> {
    let field = |k: &str| h.get(k).map(String::as_str).ok_or_else(|| format!("no {k} field"));
    let number = |k: &str| field(k).and_then(|v| v.parse::<u64>().map_err(|_| format!("{k} {v:?} is not a number")));
    let score = field("score")?;
    let score = match score.parse::<f64>() {
        Ok(s) if s.is_finite() && s >= 0.0 => s,
        _ => return Err(format!("score {score:?} is not a number >= 0")),
    };
    let grpc = field("grpc")?;
    if grpc.is_empty() {
        return Err("empty grpc address".into());
    }
    Ok(Node {
        id: id.to_owned(),
        grpc: grpc.to_owned(),
        score,
        load: h.get("score_reason").cloned().unwrap_or_default(),
        draining: field("draining")? != "0",
        heartbeat_ms: number("heartbeat_redis_ms")?,
        interval_ms: number("interval_ms")?,
    })
}

/// Reads what a decision for `session` needs: Redis' clock, the registry, the session's set
/// and legacy key (one MULTI), then every registered node's hash.
pub fn read_view<C: redis::ConnectionLike>(conn: &mut C, session: &str) -> Result<View, PlaceError> {
    let (time, registry, set, legacy): (Vec<u64>, Vec<String>, BTreeSet<String>, Option<String>) = redis::pipe()
        .atomic()
        .cmd("TIME")
        .cmd("ZRANGE")
        .arg(NODES_KEY)
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .cmd("SMEMBERS")
        .arg(session_nodes_key(session))
        .cmd("GET")
        .arg(crate::lb::placement_key(session))
        .query(conn)
        .map_err(PlaceError::redis("reading the registry and the session's nodes"))?;
    let now_ms = time.first().copied().unwrap_or(0) * 1000 + time.get(1).copied().unwrap_or(0) / 1000;
    let registered: Vec<(String, u64)> = registry.chunks_exact(2).map(|p| (p[0].clone(), p[1].parse::<f64>().map_or(0, |s| s as u64))).collect();
    let mut nodes = Vec::with_capacity(registered.len());
    if !registered.is_empty() {
        let mut pipe = redis::pipe();
        for (id, _) in &registered {
            pipe.cmd("HGETALL").arg(crate::lb::node_key(id));
        }
        let hashes: Vec<HashMap<String, String>> = pipe.query(conn).map_err(PlaceError::redis("reading the nodes' heartbeats"))?;
        for ((id, last), h) in registered.into_iter().zip(hashes) {
            nodes.push(if h.is_empty() {
                Seen::Expired { id, last_heartbeat_ms: last }
            } else {
                match parse_node(&id, &h) {
                    Ok(n) => Seen::Published(n),
                    Err(why) => Seen::Unreadable { id, why },
                }
            });
        }
    }
    Ok(View { now_ms, nodes, session_nodes: set, legacy })
}

/// Adds ARGV[1] to the set KEYS[1] only if the set still has exactly the ARGV[3..] members
/// (ARGV[2] of them) and the node's hash KEYS[2] still exists and is not draining: 1 when
/// added, 0 when the set changed, -1 when the node went away or drains.
const ADD_IF_UNCHANGED: &str = r"
if redis.call('SCARD', KEYS[1]) ~= tonumber(ARGV[2]) then return 0 end
for i = 3, #ARGV do
  if redis.call('SISMEMBER', KEYS[1], ARGV[i]) == 0 then return 0 end
end
if redis.call('HGET', KEYS[2], 'draining') ~= '0' then return -1 end
redis.call('SADD', KEYS[1], ARGV[1])
return 1
";

/// Places `req.session` (validated first) through `conn`: decides on a fresh read and records
/// the decision atomically, reading and deciding again when another placement or admission
/// changed the session's set (or the node went away) in between.
pub fn place<C: redis::ConnectionLike>(conn: &mut C, req: &Request) -> Result<Placement, PlaceError> {
    req.validate()?;
    let key = session_nodes_key(&req.session);
    for _ in 0..MAX_ATTEMPTS {
        let view = read_view(conn, &req.session)?;
        let d = choose(&view, req).map_err(|excluded| PlaceError::NoCandidate { session: req.session.clone(), excluded })?;
        let mut nodes = view.session_nodes.clone();
        if d.add {
            let mut eval = redis::cmd("EVAL");
            eval.arg(ADD_IF_UNCHANGED).arg(2).arg(&key).arg(crate::lb::node_key(&d.node.id)).arg(&d.node.id).arg(view.session_nodes.len());
            for m in &view.session_nodes {
                eval.arg(m);
            }
            let added: i64 = eval.query(conn).map_err(PlaceError::redis("recording the placement"))?;
            if added != 1 {
                continue;
            }
            nodes.insert(d.node.id.clone());
        }
        return Ok(Placement {
            node_id: d.node.id,
            grpc: d.node.grpc,
            score: d.node.score,
            already_placed: !d.add,
            reason: d.reason,
            nodes: nodes.into_iter().collect(),
        });
    }
    Err(PlaceError::Contended { session: req.session.clone(), attempts: MAX_ATTEMPTS })
}

/// Placement over its own connections to Redis (one per call, with [`REDIS_TIMEOUT`]): what
/// `Node.Place` and `sluicectl place --redis` use.
#[derive(Clone, Debug)]
pub struct Placer {
    client: redis::Client,
    threshold: f64,
}

impl Placer {
    /// A placer for Redis at `url` (only parsed here), with `threshold` for requests without one.
    pub fn new(url: &str, threshold: f64) -> Result<Self, redis::RedisError> {
        Ok(Self { client: redis::Client::open(url)?, threshold })
    }

    /// The threshold for requests without one.
    pub fn threshold(&self) -> f64 {
        self.threshold
    }

    /// Places `req` (see [`place`]).
    pub fn place(&self, req: &Request) -> Result<Placement, PlaceError> {
        req.validate()?;
        let at = self.client.get_connection_info().addr().to_string();
        let mut conn = self
            .client
            .get_connection_with_timeout(REDIS_TIMEOUT)
            .and_then(|c| {
                c.set_read_timeout(Some(REDIS_TIMEOUT))?;
                c.set_write_timeout(Some(REDIS_TIMEOUT))?;
                Ok(c)
            })
            .map_err(|source| PlaceError::Redis { at: Some(at.clone()), op: "connecting", source })?;
        place(&mut conn, req).map_err(|e| e.at(&at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_000_000;

    fn node(id: &str, score: f64) -> Node {
        Node { id: id.into(), grpc: format!("{id}:50051"), score, load: "legs".into(), draining: false, heartbeat_ms: NOW - 100, interval_ms: 1000 }
    }

    fn view(nodes: Vec<Seen>, session: &[&str]) -> View {
        View { now_ms: NOW, nodes, session_nodes: session.iter().map(|s| (*s).to_owned()).collect(), legacy: None }
    }

    fn published(v: &[(&str, f64)]) -> Vec<Seen> {
        v.iter().map(|(id, s)| Seen::Published(node(id, *s))).collect()
    }

    fn pick(v: &View, req: &Request) -> (String, bool) {
        let d = choose(v, req).unwrap_or_else(|e| panic!("{e:?}"));
        (d.node.id, d.add)
    }

    #[test]
    fn a_new_session_goes_to_the_least_loaded_candidate() {
        let v = view(published(&[("a", 0.5), ("b", 0.2), ("c", 0.7)]), &[]);
        let d = choose(&v, &Request::new("s")).unwrap();
        assert_eq!((d.node.id.as_str(), d.add), ("b", true));
        assert!(d.reason.contains("new session"), "{}", d.reason);
    }

    #[test]
    fn dead_stale_draining_and_full_nodes_are_never_chosen_even_when_least_loaded() {
        let mut stale = node("stale", 0.0);
        stale.heartbeat_ms = NOW - 3001;
        let mut draining = node("draining", 0.0);
        draining.draining = true;
        let mut nodes = vec![
            Seen::Expired { id: "dead".into(), last_heartbeat_ms: NOW - 5000 },
            Seen::Published(stale),
            Seen::Published(draining),
            Seen::Published(node("full", 1.0)),
            Seen::Unreadable { id: "old".into(), why: "no score field".into() },
        ];
        nodes.extend(published(&[("busy", 0.95)]));
        assert_eq!(pick(&view(nodes.clone(), &[]), &Request::new("s")), ("busy".into(), true));
        // Every one of them is also skipped when the session is on it.
        for on in ["dead", "stale", "draining", "full", "old"] {
            assert_eq!(pick(&view(nodes.clone(), &[on]), &Request::new("s")), ("busy".into(), true), "session on {on}");
        }
        nodes.pop();
        let e = choose(&view(nodes, &[]), &Request::new("s")).unwrap_err();
        let text: Vec<String> = e.iter().map(|(id, why)| format!("{id}: {why}")).collect();
        assert_eq!(
            text,
            [
                "dead: dead (no heartbeat for 5000 ms; its key expired)",
                "draining: draining",
                "full: full (score 1.000: legs)",
                "old: unreadable heartbeat (no score field)",
                "stale: stale (last heartbeat 3001 ms ago, limit 3000 ms)",
            ]
        );
    }

    #[test]
    fn a_heartbeat_exactly_three_intervals_old_is_still_fresh() {
        let mut n = node("a", 0.1);
        n.heartbeat_ms = NOW - 3000;
        assert_eq!(pick(&view(vec![Seen::Published(n)], &[]), &Request::new("s")), ("a".into(), true));
    }

    #[test]
    fn the_sessions_node_is_preferred_while_below_the_threshold() {
        let nodes = published(&[("a", 0.1), ("b", 0.79), ("c", 0.5)]);
        let d = choose(&view(nodes.clone(), &["b"]), &Request::new("s")).unwrap();
        assert_eq!((d.node.id.as_str(), d.add), ("b", false));
        assert!(d.reason.contains("already has node b"), "{}", d.reason);
        // The least loaded of the session's nodes.
        assert_eq!(pick(&view(nodes.clone(), &["b", "c"]), &Request::new("s")), ("c".into(), false));
        // At the threshold: another node, added.
        let at = published(&[("a", 0.1), ("b", 0.8)]);
        let d = choose(&view(at, &["b"]), &Request::new("s")).unwrap();
        assert_eq!((d.node.id.as_str(), d.add), ("a", true));
        assert!(d.reason.contains("over the threshold"), "{}", d.reason);
        // A lower threshold from the request.
        let req = Request { threshold: 0.5, ..Request::new("s") };
        assert_eq!(pick(&view(nodes, &["b"]), &req), ("a".into(), true));
    }

    #[test]
    fn over_the_threshold_the_sessions_node_is_kept_when_no_other_can_take_it() {
        let mut d = node("d", 0.0);
        d.draining = true;
        let nodes = vec![Seen::Published(node("b", 0.9)), Seen::Published(d), Seen::Published(node("f", 1.2))];
        let got = choose(&view(nodes, &["b"]), &Request::new("s")).unwrap();
        assert_eq!((got.node.id.as_str(), got.add), ("b", false));
        assert!(got.reason.contains("no other node"), "{}", got.reason);
    }

    #[test]
    fn new_node_adds_another_and_a_retry_with_known_nodes_adds_nothing() {
        let nodes = published(&[("a", 0.1), ("b", 0.2), ("c", 0.3)]);
        let req = Request { new_node: true, ..Request::new("s") };
        assert_eq!(pick(&view(nodes.clone(), &["a"]), &req), ("b".into(), true));
        // The caller knew [a]; b was added by its first attempt: the retry answers b.
        let retry = Request { new_node: true, known_nodes: vec!["a".into()], ..Request::new("s") };
        assert_eq!(pick(&view(nodes.clone(), &["a", "b"]), &retry), ("b".into(), false));
        // Without known_nodes every node the session has is left out.
        assert_eq!(pick(&view(nodes.clone(), &["a", "b"]), &req), ("c".into(), true));
        // Nothing new left.
        let e = choose(&view(nodes, &["a", "b", "c"]), &req).unwrap_err();
        assert!(e.iter().all(|(_, why)| *why == Excluded::NotNew) && e.len() == 3, "{e:?}");
    }

    #[test]
    fn ties_go_to_the_smaller_node_id() {
        let nodes = published(&[("c", 0.25), ("a", 0.25), ("b", 0.25)]);
        assert_eq!(pick(&view(nodes.clone(), &[]), &Request::new("s")), ("a".into(), true));
        assert_eq!(pick(&view(nodes, &["c", "b"]), &Request::new("s")), ("b".into(), false));
    }

    #[test]
    fn the_legacy_placement_counts_as_the_sessions_node() {
        let mut v = view(published(&[("a", 0.1), ("b", 0.3)]), &[]);
        v.legacy = Some("b".into());
        assert_eq!(pick(&v, &Request::new("s")), ("b".into(), false));
    }

    #[test]
    fn no_registered_node_says_so() {
        let e = choose(&view(Vec::new(), &[]), &Request::new("s")).unwrap_err();
        let err = PlaceError::NoCandidate { session: "s".into(), excluded: e };
        assert!(err.to_string().contains("sluice:nodes is empty"), "{err}");
    }

    #[test]
    fn requests_are_validated() {
        let field = |r: Request| match r.validate() {
            Err(PlaceError::InvalidArgument { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(Request::new("")), "session");
        assert_eq!(field(Request::new("a b")), "session");
        for t in [0.0, -0.1, 1.01, f64::NAN] {
            assert_eq!(field(Request { threshold: t, ..Request::new("s") }), "threshold", "{t}");
        }
        assert_eq!(field(Request { known_nodes: vec![String::new()], ..Request::new("s") }), "known_nodes");
        assert!(Request { threshold: 1.0, ..Request::new("s") }.validate().is_ok());
        let from = Request::from_pb(pb::PlaceRequest { session: "s".into(), new_node: true, known_nodes: vec!["a".into()], threshold: None }, 0.6);
        assert_eq!(from, Request { new_node: true, known_nodes: vec!["a".into()], threshold: 0.6, ..Request::new("s") });
    }

    #[test]
    fn the_load_score_is_the_largest_share() {
        let mut s = pb::NodeStatus { port_range_start: 100, port_range_end: 199, ports_free: 100, ..Default::default() };
        let idle = Load::of(&s, 1000);
        assert_eq!((format!("{:.6}", idle.score), idle.reason.as_str()), ("0.000000".to_owned(), "packets 0/s of 1000/s"));
        s.workers = vec![
            pb::WorkerLoad { rx_packets_per_second: 100.0, tx_packets_per_second: 200.0, ..Default::default() },
            pb::WorkerLoad { rx_packets_per_second: 50.0, tx_packets_per_second: 50.0, ..Default::default() },
        ];
        let l = Load::of(&s, 1000);
        assert_eq!((l.score, l.reason.as_str()), (0.4, "packets 400/s of 1000/s"));
        s.ports_free = 45;
        assert_eq!(Load::of(&s, 1000), Load { score: 0.55, reason: "ports 55/100 in use".into() });
        // Legs count only with a quota.
        s.legs = 3;
        assert_eq!(Load::of(&s, 1000).score, 0.55);
        s.max_legs = 4;
        assert_eq!(Load::of(&s, 1000), Load { score: 0.75, reason: "legs 3/4".into() });
        s.sessions = 2;
        s.max_sessions = 2;
        assert_eq!(Load::of(&s, 1000).score, 1.0);
        // Over capacity: above 1.
        assert_eq!(Load::of(&s, 100).score, 4.0);
    }
}
