//! Load-balancer state in Redis (optional: only with `redis_url` and `node_id` configured).
//!
//! Every `heartbeat_ms` a dedicated thread publishes this node's heartbeat and load as the hash
//! `sluice:node:<id>` (PEXPIRE 3 × interval, so a dead node's key disappears on its own),
//! registers the node in `sluice:nodes` (so placement knows it even once its key has expired)
//! and reads its drain flag `sluice:node:<id>:drain` ("1": drain). The hash carries what
//! placement (`placement`) needs: the load `score` ([`crate::placement::Load`]), `draining`
//! (Node.Drain or the Redis flag), `grpc` (the advertised address), `interval_ms` and
//! `heartbeat_redis_ms` (Redis' clock when the heartbeat landed, so freshness never depends on
//! this host's clock). Node.Drain and Undrain publish at once ([`Lb::publish_now`]).
//!
//! Before a new session is created the engine asks [`Lb::admit`]: a drain flag set in Redis
//! refuses it like `Node.Drain` does. The session is admitted when this node is in
//! `sluice:session:<s>:nodes`, when the legacy `sluice:placement:<s>` names it, or when neither
//! key exists; it is refused, naming the nodes, when it is placed only on others. Admission
//! records this node in the session's set in the same atomic step (so a session created here
//! without `Node.Place` is known to placement, and a concurrent placement sees it). When the last
//! session leaves a draining node it says so in its log and in the hash (`drained` = 1).
//!
//! Redis being down never stops the node: the thread logs once, keeps retrying every interval,
//! and admission falls back to the local state (a placement cannot be read, so it is not
//! enforced) until Redis answers again. On every (re)connection the node first adds itself to the
//! sets of the sessions it holds, so a Redis that restarted empty learns where meetings are
//! before this node's heartbeat makes it a candidate again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::Redis;
use crate::pb;
use crate::placement::{Load, NODES_KEY, session_nodes_key};
use crate::state::{ErrorKind, StateError};

/// How long one Redis connect or command may take before Redis counts as down.
const IO_TIMEOUT: Duration = Duration::from_millis(300);

/// A registered node that has not published for this long is dropped from `sluice:nodes`
/// (placement stops listing it as dead).
const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

/// KEYS[1] the node's hash, KEYS[2] the registry; ARGV[1] the node id, ARGV[2] the hash's TTL
/// (ms), ARGV[3] FORGET_AFTER (ms), ARGV[4..] field/value pairs. Stamps the heartbeat with
/// Redis' clock.
const HEARTBEAT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'heartbeat_redis_ms', string.format('%d', now), unpack(ARGV, 4))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. string.format('%d', now - tonumber(ARGV[3])))
return 1
";

/// KEYS[1] the session's node set, KEYS[2] its legacy placement key; ARGV[1] this node.
/// `{"admit"}` (and this node recorded in the set), or `{"refuse", nodes...}`.
const ADMIT: &str = r"
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return {'admit'} end
local legacy = redis.call('GET', KEYS[2])
if legacy == ARGV[1] or (not legacy and redis.call('SCARD', KEYS[1]) == 0) then
  redis.call('SADD', KEYS[1], ARGV[1])
  return {'admit'}
end
local nodes = redis.call('SMEMBERS', KEYS[1])
table.sort(nodes)
if legacy and redis.call('SISMEMBER', KEYS[1], legacy) == 0 then table.insert(nodes, legacy) end
return {'refuse', unpack(nodes)}
";

/// The node's hash key.
pub fn node_key(node_id: &str) -> String {
    format!("sluice:node:{node_id}")
}

/// The node's drain flag key.
pub fn drain_key(node_id: &str) -> String {
    format!("sluice:node:{node_id}:drain")
}

/// A session's placement key.
pub fn placement_key(session: &str) -> String {
    format!("sluice:placement:{session}")
}

/// Where node `node` keeps the desired state of its part of `session` (its legs, tracks and
/// subscriptions, static keys included, as an encoded `ChangeSet`): what another node adopts
/// when `node` dies ([`Lb::adoptable`]).
pub fn state_key(session: &str, node: &str) -> String {
    format!("sluice:session:{session}:state:{node}")
}

/// The Redis side of the node.
#[derive(Debug)]
pub struct Lb {
    client: redis::Client,
    node_id: String,
    interval: Duration,
    conn: Mutex<Conn>,
    /// The drain flag as last read from Redis.
    drain: AtomicBool,
    /// Shut down: no more heartbeats.
    stopped: AtomicBool,
    /// Connected since this node last told Redis which sessions it holds: the next heartbeat
    /// says so first.
    fresh: AtomicBool,
    /// Packets per second at full load.
    capacity_pps: u64,
    /// The advertised gRPC address.
    grpc: String,
    /// A heartbeat is due now ([`Lb::publish_now`]), and the condition the thread sleeps on.
    wake: (Mutex<bool>, Condvar),
    /// Sessions whose desired state changed since it was last written to Redis.
    dirty: Mutex<std::collections::BTreeSet<String>>,
}

#[derive(Default)]
struct Conn {
    conn: Option<redis::Connection>,
    /// When the last attempt failed (no new attempt before an interval has passed).
    failed_at: Option<Instant>,
    /// Redis is known to be down (logged once per outage).
    down: bool,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("connected", &self.conn.is_some()).field("down", &self.down).finish()
    }
}

impl Lb {
    /// The load-balancer link with the settings `r`, advertising `grpc` as this node's gRPC
    /// address; the URL is only parsed here, Redis need not be up.
    pub fn new(r: &Redis, grpc: &str) -> Result<Arc<Self>, redis::RedisError> {
        let client = redis::Client::open(r.url.as_str())?;
        Ok(Arc::new(Self {
            client,
            node_id: r.node_id.clone(),
            interval: r.interval,
            conn: Mutex::new(Conn::default()),
            drain: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            fresh: AtomicBool::new(false),
            capacity_pps: r.capacity_pps,
            grpc: grpc.to_owned(),
            wake: (Mutex::new(false), Condvar::new()),
            dirty: Mutex::new(std::collections::BTreeSet::new()),
        }))
    }

    /// Session `session`'s desired state changed (committed): it is written to Redis with the
    /// next heartbeat (coalesced: one write per session per interval, whatever the changes).
    pub fn mark_dirty(&self, session: &str) {
        self.dirty.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(session.to_owned());
    }

    /// Writes the desired state of the dirty sessions (`export` says it; `None`: the session is
    /// gone, its key is deleted); a session whose write failed stays dirty.
    fn flush_states(&self, export: &dyn Fn(&str) -> Option<Vec<u8>>) {
        let dirty = std::mem::take(&mut *self.dirty.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        if dirty.is_empty() {
            return;
        }
        let states: Vec<(String, Option<Vec<u8>>)> = dirty.iter().map(|s| (s.clone(), export(s))).collect();
        let written = self.with("desired state", |c| {
            let mut pipe = redis::pipe();
            for (s, state) in &states {
                match state {
                    Some(bytes) => pipe.cmd("SET").arg(state_key(s, &self.node_id)).arg(bytes.as_slice()).ignore(),
                    None => pipe.cmd("DEL").arg(state_key(s, &self.node_id)).ignore(),
                };
            }
            pipe.query::<()>(c)
        });
        if written.is_none() {
            self.dirty.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend(dirty);
        }
    }

    /// The desired state node `from` left of `session`, for this node to adopt (which it joins
    /// the session's nodes for, so admission lets it in): refused while `from` is alive (its
    /// heartbeat key is there: move its sessions with a drain instead), when Redis holds no
    /// state of it, or when Redis cannot be read.
    pub fn adoptable(&self, session: &str, from: &str) -> Result<Vec<u8>, StateError> {
        let refuse = |kind, message: String| StateError { kind, field: "from_node".into(), message };
        if from == self.node_id {
            return Err(refuse(ErrorKind::InvalidArgument, format!("{from:?} is this node")));
        }
        let read = self.with("adopt", |c| {
            let alive: bool = redis::cmd("EXISTS").arg(node_key(from)).query(c)?;
            let state: Option<Vec<u8>> = redis::cmd("GET").arg(state_key(session, from)).query(c)?;
            if !alive && state.is_some() {
                redis::cmd("SADD").arg(crate::placement::session_nodes_key(session)).arg(&self.node_id).query::<()>(c)?;
            }
            Ok((alive, state))
        });
        match read {
            None => Err(StateError {
                kind: ErrorKind::Unavailable,
                field: "session".into(),
                message: format!("redis is unreachable: the state of session {session:?} on node {from:?} cannot be read"),
            }),
            Some((true, _)) => Err(refuse(
                ErrorKind::FailedPrecondition,
                format!("node {from:?} is alive (its heartbeat {} has not expired): move its sessions with a drain, not by adoption", node_key(from)),
            )),
            Some((false, None)) => {
                Err(refuse(ErrorKind::NotFound, format!("redis holds no state of session {session:?} from node {from:?} ({})", state_key(session, from))))
            }
            Some((false, Some(state))) => Ok(state),
        }
    }

    /// Session `session` now runs here instead of on the dead node `from`: the session's nodes
    /// no longer name `from`, and `from`'s state is removed (it is adopted once).
    pub fn adopted(&self, session: &str, from: &str) {
        let key = crate::placement::session_nodes_key(session);
        let done =
            self.with("adopted", |c| redis::pipe().cmd("SREM").arg(&key).arg(from).ignore().cmd("DEL").arg(state_key(session, from)).ignore().query::<()>(c));
        if done.is_none() {
            tracing::warn!(session, from, "adopted, but redis could not be told (the session's nodes still name the dead node)");
        }
    }

    /// Publishes the heartbeat now rather than at the next interval (the drain state changed).
    pub fn publish_now(&self) {
        *self.wake.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = true;
        self.wake.1.notify_all();
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Whether Redis asks this node to drain (as last read).
    pub fn draining(&self) -> bool {
        self.drain.load(Ordering::Relaxed)
    }

    /// Runs `f` on the connection, (re)connecting as needed; `None` when Redis is down.
    fn with<T>(&self, what: &str, f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>) -> Option<T> {
        let mut c = self.conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if c.conn.is_none() {
            if c.failed_at.is_some_and(|t| t.elapsed() < self.interval) {
                return None;
            }
            match self.client.get_connection_with_timeout(IO_TIMEOUT).and_then(|conn| {
                conn.set_read_timeout(Some(IO_TIMEOUT))?;
                conn.set_write_timeout(Some(IO_TIMEOUT))?;
                Ok(conn)
            }) {
                Ok(conn) => {
                    if c.down {
                        tracing::info!(node = %self.node_id, "redis reachable again");
                    }
                    c.conn = Some(conn);
                    c.down = false;
                    self.fresh.store(true, Ordering::Relaxed);
                    c.failed_at = None;
                }
                Err(err) => {
                    if !c.down {
                        tracing::warn!(%err, node = %self.node_id, "redis unreachable; running on local state and retrying");
                    }
                    c.down = true;
                    c.failed_at = Some(Instant::now());
                    return None;
                }
            }
        }
        let conn = c.conn.as_mut()?;
        match f(conn) {
            Ok(v) => Some(v),
            Err(err) => {
                tracing::warn!(%err, what, node = %self.node_id, "redis command failed; reconnecting");
                c.conn = None;
                c.down = true;
                c.failed_at = Some(Instant::now());
                None
            }
        }
    }

    /// Whether a new session `session` may be created here: not while Redis asks the node to
    /// drain, and not when Redis places the session only on other nodes (its set
    /// `sluice:session:<s>:nodes` lacks this node and the legacy `sluice:placement:<s>` does not
    /// name it). Admitted, this node is added to the session's set in the same script, before
    /// the change is validated: a change refused afterwards leaves it there (placement then
    /// answers this node for the session, which is where its creator sent it). With Redis
    /// down only the local drain state decides.
    pub fn admit(&self, session: &str) -> Result<(), StateError> {
        let flag = self.with("drain flag", |c| redis::cmd("GET").arg(drain_key(&self.node_id)).query::<Option<String>>(c));
        if let Some(f) = &flag {
            self.drain.store(f.as_deref() == Some("1"), Ordering::Relaxed);
        }
        if self.draining() {
            return Err(StateError {
                kind: ErrorKind::FailedPrecondition,
                field: "session".into(),
                message: format!(
                    "node is draining and takes no new sessions (session {session:?} does not exist here; drain flag {} is set)",
                    drain_key(&self.node_id)
                ),
            });
        }
        let answer = self.with("admission", |c| {
            redis::cmd("EVAL").arg(ADMIT).arg(2).arg(session_nodes_key(session)).arg(placement_key(session)).arg(&self.node_id).query::<Vec<String>>(c)
        });
        match answer {
            Some(v) if v.first().map(String::as_str) == Some("refuse") => {
                let nodes: Vec<String> = v[1..].iter().map(|n| format!("{n:?}")).collect();
                let noun = if nodes.len() == 1 { "node" } else { "nodes" };
                Err(StateError {
                    kind: ErrorKind::FailedPrecondition,
                    field: "session".into(),
                    message: format!(
                        "session {session:?} is placed on {noun} {}, not on this node ({:?}) ({} / {}); ask Node.Place which node takes it",
                        nodes.join(", "),
                        self.node_id,
                        session_nodes_key(session),
                        placement_key(session)
                    ),
                })
            }
            _ => Ok(()),
        }
    }

    /// A clean stop: no more heartbeats, and the node's key is deleted at once (the load
    /// balancer need not wait for it to expire).
    pub fn shutdown(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        self.publish_now();
        let left = self.with("shutdown", |c| {
            redis::pipe().atomic().cmd("DEL").arg(node_key(&self.node_id)).ignore().cmd("ZREM").arg(NODES_KEY).arg(&self.node_id).ignore().query::<()>(c)
        });
        if left.is_some() {
            tracing::info!(node = %self.node_id, key = %node_key(&self.node_id), "removed this node from redis");
        }
    }

    /// Starts the heartbeat thread; `status` reads the node's status and `sessions` the ids of
    /// the sessions it holds (the engine's), so this module needs nothing of the engine's.
    pub fn spawn(
        self: &Arc<Self>,
        status: impl Fn() -> pb::NodeStatus + Send + 'static,
        sessions: impl Fn() -> Vec<String> + Send + 'static,
        export: impl Fn(&str) -> Option<Vec<u8>> + Send + 'static,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let lb = self.clone();
        std::thread::Builder::new().name("lb-heartbeat".into()).spawn(move || lb.run(&status, &sessions, &export))
    }

    /// Whether there is a connection to Redis now.
    fn connected(&self) -> bool {
        self.conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner).conn.is_some()
    }

    /// Adds this node to the set of every session it holds (in one round trip).
    fn announce(&self, c: &mut redis::Connection, sessions: &[String]) -> redis::RedisResult<()> {
        if sessions.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for s in sessions {
            pipe.cmd("SADD").arg(session_nodes_key(s)).arg(&self.node_id).ignore();
        }
        pipe.query::<()>(c)
    }

    fn run(&self, status_of: &dyn Fn() -> pb::NodeStatus, sessions_of: &dyn Fn() -> Vec<String>, export: &dyn Fn(&str) -> Option<Vec<u8>>) {
        let mut last: Option<(Instant, u64)> = None;
        let mut drained_reported = false;
        tracing::info!(node = %self.node_id, key = %node_key(&self.node_id), interval_ms = self.interval.as_millis() as u64, "publishing load to redis");
        while !self.stopped.load(Ordering::Relaxed) {
            let started = Instant::now();
            if let Some(f) = self.with("drain flag", |c| redis::cmd("GET").arg(drain_key(&self.node_id)).query::<Option<String>>(c)) {
                let on = f.as_deref() == Some("1");
                if on != self.drain.swap(on, Ordering::Relaxed) {
                    tracing::info!(node = %self.node_id, draining = on, "drain flag in redis changed");
                }
            }
            // Read before `with` takes the connection's lock (the engine's lock is taken before
            // it elsewhere), and only when a connection may be new this turn.
            let sessions = (self.fresh.load(Ordering::Relaxed) || !self.connected()).then(sessions_of);
            let status = status_of();
            let load = Load::of(&status, self.capacity_pps);
            let dataplane_pps = crate::placement::packet_rate(&status);
            let packets: u64 = status.workers.iter().map(|w| w.rx_packets).sum();
            let now = Instant::now();
            let pps = match last {
                Some((t, p)) if now > t => (packets.saturating_sub(p) as f64 / (now - t).as_secs_f64()).round() as u64,
                _ => 0,
            };
            last = Some((now, packets));
            let draining = status.draining;
            let drained = draining && status.sessions == 0;
            if drained && !drained_reported {
                tracing::info!(node = %self.node_id, "drained: the last session has left this draining node");
            }
            drained_reported = drained;
            let unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
            let fields: Vec<(&str, String)> = vec![
                ("node_id", self.node_id.clone()),
                ("heartbeat_unix_ms", unix_ms.to_string()),
                ("sessions", status.sessions.to_string()),
                ("legs", status.legs.to_string()),
                ("tracks", status.tracks.to_string()),
                ("subscriptions", status.subscriptions.to_string()),
                ("ports_free", status.ports_free.to_string()),
                ("packets_per_second", pps.to_string()),
                ("rx_packets", packets.to_string()),
                ("dataplane_connected", u8::from(status.dataplane_connected).to_string()),
                ("draining", u8::from(draining).to_string()),
                ("drained", u8::from(drained).to_string()),
                ("score", format!("{:.6}", load.score)),
                ("score_reason", load.reason),
                ("dataplane_pps", format!("{dataplane_pps:.0}")),
                ("capacity_pps", self.capacity_pps.to_string()),
                ("grpc", self.grpc.clone()),
                ("interval_ms", (self.interval.as_millis() as u64).to_string()),
            ];
            let ttl_ms = (self.interval * 3).as_millis().max(1) as u64;
            let key = node_key(&self.node_id);
            let mut announced = None;
            self.with("heartbeat", |c| {
                if self.stopped.load(Ordering::Relaxed) {
                    return Ok(());
                }
                // After a (re)connection the node's sessions go first: a Redis that restarted
                // empty must know them before this heartbeat makes the node a candidate again.
                if self.fresh.load(Ordering::Relaxed) {
                    let Some(sessions) = &sessions else {
                        // Connected during this turn (not by it): the next turn announces.
                        return Ok(());
                    };
                    self.announce(c, sessions)?;
                    self.fresh.store(false, Ordering::Relaxed);
                    announced = Some(sessions.len());
                }
                let mut eval = redis::cmd("EVAL");
                eval.arg(HEARTBEAT).arg(2).arg(&key).arg(NODES_KEY).arg(&self.node_id).arg(ttl_ms).arg(FORGET_AFTER.as_millis() as u64);
                for (k, v) in &fields {
                    eval.arg(*k).arg(v);
                }
                eval.query::<()>(c)
            });
            if let Some(n) = announced.filter(|n| *n > 0) {
                tracing::info!(node = %self.node_id, sessions = n, "told redis which sessions this node holds");
            }
            // After a (re)connection every session's state is written again (Redis may have
            // restarted empty), else those that changed.
            if announced.is_some()
                && let Some(all) = &sessions
            {
                self.dirty.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend(all.iter().cloned());
            }
            self.flush_states(export);
            let (due, wake) = &self.wake;
            let due = due.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let wait = self.interval.saturating_sub(started.elapsed());
            let (mut due, _) = wake.wait_timeout_while(due, wait, |due| !*due).unwrap_or_else(std::sync::PoisonError::into_inner);
            *due = false;
        }
    }
}
