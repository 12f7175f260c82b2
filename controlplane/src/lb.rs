//! Load-balancer state in Redis (optional: only with `redis_url` and `node_id` configured).
//!
//! Every `heartbeat_ms` a dedicated thread publishes this node's heartbeat and load as the hash
//! `sluice:node:<id>` (PEXPIRE 3 × interval, so a dead node's key disappears on its own) and
//! reads its drain flag `sluice:node:<id>:drain` ("1": drain). Before a new session is created
//! the engine asks [`Lb::admit`]: a drain flag set in Redis refuses it like `Node.Drain` does,
//! and `sluice:placement:<session>` naming another node refuses it naming that node. When the
//! last session leaves a draining node it says so in its log and in the hash (`drained` = 1).
//!
//! Redis being down never stops the node: the thread logs once, keeps retrying every interval,
//! and admission falls back to the local state (a placement cannot be read, so it is not
//! enforced) until Redis answers again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::pb;
use crate::state::{ErrorKind, StateError};

/// How long one Redis connect or command may take before Redis counts as down.
const IO_TIMEOUT: Duration = Duration::from_millis(300);

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
    /// The load-balancer link; `url` is only parsed here, Redis need not be up.
    pub fn new(url: &str, node_id: &str, interval: Duration) -> Result<Arc<Self>, redis::RedisError> {
        let client = redis::Client::open(url)?;
        Ok(Arc::new(Self {
            client,
            node_id: node_id.to_owned(),
            interval,
            conn: Mutex::new(Conn::default()),
            drain: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
        }))
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
    /// drain, and not when Redis places the session on another node.
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
        let placed = self.with("placement", |c| redis::cmd("GET").arg(placement_key(session)).query::<Option<String>>(c)).flatten();
        match placed {
            Some(node) if node != self.node_id => Err(StateError {
                kind: ErrorKind::FailedPrecondition,
                field: "session".into(),
                message: format!("session {session:?} is placed on node {node:?}, not on this node ({:?})", self.node_id),
            }),
            _ => Ok(()),
        }
    }

    /// A clean stop: no more heartbeats, and the node's key is deleted at once (the load
    /// balancer need not wait for it to expire).
    pub fn shutdown(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        if self.with("shutdown", |c| redis::cmd("DEL").arg(node_key(&self.node_id)).query::<()>(c)).is_some() {
            tracing::info!(node = %self.node_id, key = %node_key(&self.node_id), "removed this node from redis");
        }
    }

    /// Starts the heartbeat thread; `status` reads the node's status (the engine's), so this
    /// module needs nothing of the engine's.
    pub fn spawn(self: &Arc<Self>, status: impl Fn() -> pb::NodeStatus + Send + 'static) -> std::io::Result<std::thread::JoinHandle<()>> {
        let lb = self.clone();
        std::thread::Builder::new().name("lb-heartbeat".into()).spawn(move || lb.run(&status))
    }

    fn run(&self, status_of: &dyn Fn() -> pb::NodeStatus) {
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
            let status = status_of();
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
            ];
            let ttl_ms = (self.interval * 3).as_millis().max(1) as u64;
            let key = node_key(&self.node_id);
            self.with("heartbeat", |c| {
                if self.stopped.load(Ordering::Relaxed) {
                    return Ok(());
                }
                let mut hset = redis::cmd("HSET");
                hset.arg(&key);
                for (k, v) in &fields {
                    hset.arg(*k).arg(v);
                }
                redis::pipe().atomic().add_command(hset).ignore().cmd("PEXPIRE").arg(&key).arg(ttl_ms).ignore().query::<()>(c)
            });
            std::thread::sleep(self.interval.saturating_sub(started.elapsed()));
        }
    }
}
