//! The gRPC services. Handlers only move requests onto the engine's blocking thread and map its
//! typed errors to precise statuses naming the field; all decisions live in `state`/`compile`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Code, Request, Response, Status};

use sluice_core::ids::LegId;

use crate::controller::Shared;
use crate::engine::EngineError;
use crate::pb;
use crate::placement::{PlaceError, Placer};
use crate::state::{ErrorKind, StateError};

/// The gRPC status for an engine error.
pub fn status(e: EngineError) -> Status {
    match e {
        EngineError::State(s) => state_status(&s),
        e @ (EngineError::NotInstalled { .. } | EngineError::PortUnavailable { .. }) => Status::unavailable(e.to_string()),
        e @ EngineError::Journal(_) => Status::internal(e.to_string()),
    }
}

/// The gRPC status for a placement error.
pub fn place_status(e: &PlaceError) -> Status {
    let code = match e {
        PlaceError::InvalidArgument { .. } => Code::InvalidArgument,
        PlaceError::Redis { .. } => Code::Unavailable,
        PlaceError::NoCandidate { .. } => Code::ResourceExhausted,
        PlaceError::Contended { .. } => Code::Aborted,
    };
    Status::new(code, e.to_string())
}

fn state_status(e: &StateError) -> Status {
    let code = match e.kind {
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::Aborted => Code::Aborted,
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::Unavailable => Code::Unavailable,
    };
    Status::new(code, e.to_string())
}

/// Runs `f` on a blocking thread (it may take the engine's lock, or the link's).
async fn run<T, F>(ctl: &Shared, f: F) -> Result<T, Status>
where
    F: FnOnce(&crate::controller::Controller) -> Result<T, Status> + Send + 'static,
    T: Send + 'static,
{
    let ctl = ctl.clone();
    tokio::task::spawn_blocking(move || f(&ctl)).await.map_err(|e| Status::internal(format!("engine task: {e}")))?
}

fn list(engine: &crate::engine::Engine) -> pb::ListSessionsResponse {
    let sessions = engine
        .desired()
        .sessions
        .iter()
        .map(|(id, s)| pb::SessionSummary {
            id: id.clone(),
            revision: s.revision,
            legs: s.legs.len() as u32,
            tracks: s.tracks.len() as u32,
            subscriptions: s.subscription_count() as u32,
        })
        .collect();
    pb::ListSessionsResponse { sessions }
}

/// An Apply waiting for the group committer, and where its answer goes.
type ApplyJob = (pb::ChangeSet, tokio::sync::oneshot::Sender<Result<pb::ApplyResponse, Status>>);

/// Most change sets one group commit takes.
const MAX_GROUP: usize = 128;

/// `sluice.v1.Routes`.
#[derive(Debug, Clone)]
pub struct RoutesService {
    engine: Shared,
    /// Open Watch streams, bounded node-wide and per connection.
    watchers: Arc<WatchLimits>,
    /// Applies go to one committer thread, which takes whatever has queued up meanwhile as one
    /// group ([`crate::controller::Controller::apply_many`]: one fsync and one dataplane delta): the
    /// more signaling clients apply concurrently, the more each fsync carries.
    commits: std::sync::mpsc::SyncSender<ApplyJob>,
    /// What `TurnCredentials` hands out, when configured.
    turn: Option<Arc<crate::config::TurnCredentialsConfig>>,
}

/// The longest `TurnCredentialsRequest.user`.
const MAX_TURN_USER: usize = 128;

impl RoutesService {
    /// Serves `TurnCredentials` from `turn`.
    #[must_use]
    pub fn with_turn(mut self, turn: Option<crate::config::TurnCredentialsConfig>) -> Self {
        self.turn = turn.map(Arc::new);
        self
    }

    /// The service over `engine` (starts its committer thread), with the default Watch limits.
    pub fn new(engine: Shared) -> Self {
        Self::with_watch_limits(engine, 1024, 16)
    }

    /// The service over `engine`, allowing `total` Watch streams at once and `per_connection`
    /// on one client connection.
    pub fn with_watch_limits(engine: Shared, total: usize, per_connection: usize) -> Self {
        let (commits, queue) = std::sync::mpsc::sync_channel::<ApplyJob>(4 * MAX_GROUP);
        let e = engine.clone();
        let spawned = std::thread::Builder::new().name("apply-commit".into()).spawn(move || {
            while let Ok(first) = queue.recv() {
                let mut jobs = vec![first];
                while jobs.len() < MAX_GROUP
                    && let Ok(j) = queue.try_recv()
                {
                    jobs.push(j);
                }
                let (reqs, replies): (Vec<_>, Vec<_>) = jobs.into_iter().unzip();
                let results = e.apply_many(&reqs);
                for (reply, r) in replies.into_iter().zip(results) {
                    let _ = reply.send(r.map_err(status));
                }
            }
        });
        if let Err(e) = spawned {
            // Without the thread every Apply answers UNAVAILABLE (its queue is closed).
            tracing::error!(error = %e, "cannot start the Apply committer thread");
        }
        Self { engine, commits, watchers: Arc::new(WatchLimits { total, per_connection, open: Mutex::new((0, HashMap::new())) }), turn: None }
    }
}

/// How many Watch streams are open, node-wide and per client connection (its address), against
/// their limits: every stream holds buffers (its HTTP/2 stream, its place in the event channel),
/// so a client opening thousands and reading none would grow the control plane without bound.
#[derive(Debug)]
struct WatchLimits {
    total: usize,
    per_connection: usize,
    open: Mutex<(usize, HashMap<Option<SocketAddr>, usize>)>,
}

impl WatchLimits {
    /// Takes a place for a stream of `peer`, or says which limit refuses it.
    fn acquire(self: &Arc<Self>, peer: Option<SocketAddr>) -> Result<WatchGuard, Status> {
        let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if open.0 >= self.total {
            return Err(Status::resource_exhausted(format!(
                "{} Watch streams are open, this node's limit (max_watchers); close one or watch from fewer clients",
                open.0
            )));
        }
        let mine = open.1.entry(peer).or_default();
        if *mine >= self.per_connection {
            return Err(Status::resource_exhausted(format!(
                "this connection has {mine} Watch streams open, its limit (max_watchers_per_connection); one stream with an empty session filter watches every session"
            )));
        }
        *mine += 1;
        open.0 += 1;
        Ok(WatchGuard { limits: self.clone(), peer })
    }
}

/// A Watch stream's place, given back when the stream ends (or its client goes away).
#[derive(Debug)]
struct WatchGuard {
    limits: Arc<WatchLimits>,
    peer: Option<SocketAddr>,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        open.0 = open.0.saturating_sub(1);
        if let Some(n) = open.1.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.1.remove(&self.peer);
            }
        }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::routes_server::Routes for RoutesService {
    async fn apply(&self, req: Request<pb::ChangeSet>) -> Result<Response<pb::ApplyResponse>, Status> {
        use std::sync::mpsc::TrySendError;
        let (reply, answer) = tokio::sync::oneshot::channel();
        match self.commits.try_send((req.into_inner(), reply)) {
            Ok(()) => {}
            // A full queue waits (backpressure) on a blocking thread, not on the async runtime.
            Err(TrySendError::Full(job)) => {
                let commits = self.commits.clone();
                tokio::task::spawn_blocking(move || commits.send(job))
                    .await
                    .map_err(|e| Status::internal(format!("apply queue task: {e}")))?
                    .map_err(|_| Status::unavailable("the Apply committer is not running"))?;
            }
            Err(TrySendError::Disconnected(_)) => return Err(Status::unavailable("the Apply committer is not running")),
        }
        answer.await.map_err(|_| Status::internal("the Apply committer dropped this request"))?.map(Response::new)
    }

    async fn delete_session(&self, req: Request<pb::DeleteSessionRequest>) -> Result<Response<pb::ApplyResponse>, Status> {
        let req = req.into_inner();
        run(&self.engine, move |e| e.delete_session(&req).map_err(status)).await.map(Response::new)
    }

    async fn turn_credentials(&self, req: Request<pb::TurnCredentialsRequest>) -> Result<Response<pb::TurnCredentialsResponse>, Status> {
        let Some(t) = &self.turn else {
            return Err(Status::failed_precondition("this node hands out no TURN credentials: [controlplane.turn] is not configured"));
        };
        let req = req.into_inner();
        if req.user.is_empty() || req.user.len() > MAX_TURN_USER || req.user.chars().any(|c| c.is_control()) {
            return Err(Status::invalid_argument(format!("user: 1 to {MAX_TURN_USER} printable characters")));
        }
        let ttl = if req.ttl_seconds == 0 { t.default_ttl_seconds } else { req.ttl_seconds };
        if ttl > t.max_ttl_seconds {
            return Err(Status::invalid_argument(format!("ttl_seconds: {ttl} is over this node's max_ttl_seconds ({})", t.max_ttl_seconds)));
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let (username, password) = sluice_core::turn::rest_api_credentials(t.secret.as_bytes(), &req.user, now + u64::from(ttl));
        Ok(Response::new(pb::TurnCredentialsResponse { username, password, ttl_seconds: ttl, urls: t.urls.clone() }))
    }

    async fn get_session(&self, req: Request<pb::GetSessionRequest>) -> Result<Response<pb::Session>, Status> {
        let name = req.into_inner().session;
        run(&self.engine, move |c| c.engine().session_view(&name).map_err(|e| state_status(&e))).await.map(Response::new)
    }

    async fn list_sessions(&self, _req: Request<pb::ListSessionsRequest>) -> Result<Response<pb::ListSessionsResponse>, Status> {
        run(&self.engine, |c| Ok(list(&c.engine()))).await.map(Response::new)
    }

    async fn adopt(&self, req: Request<pb::AdoptRequest>) -> Result<Response<pb::ApplyResponse>, Status> {
        use prost::Message as _;
        let req = req.into_inner();
        crate::state::check_id("session", &req.session).map_err(|e| state_status(&e))?;
        crate::state::check_id("from_node", &req.from_node).map_err(|e| state_status(&e))?;
        let lb = run(&self.engine, |c| Ok(c.engine().lb().cloned()))
            .await?
            .ok_or_else(|| Status::failed_precondition("this node has no redis_url: there is no state to adopt"))?;
        let (session, from) = (req.session.clone(), req.from_node.clone());
        let reader = lb.clone();
        let state = tokio::task::spawn_blocking(move || reader.adoptable(&session, &from))
            .await
            .map_err(|e| Status::internal(format!("redis task: {e}")))?
            .map_err(|e| state_status(&e))?;
        let mut changes = pb::ChangeSet::decode(state.as_slice())
            .map_err(|e| Status::data_loss(format!("the state of session {:?} from node {:?} in redis does not decode: {e}", req.session, req.from_node)))?;
        changes.session.clone_from(&req.session);
        changes.idempotency_key = format!("adopt-{}", req.from_node);
        changes.expected_revision = None;
        let answer = self.apply(Request::new(changes)).await?;
        let (session, from) = (req.session, req.from_node);
        tokio::task::spawn_blocking(move || lb.adopted(&session, &from)).await.map_err(|e| Status::internal(format!("redis task: {e}")))?;
        Ok(answer)
    }

    async fn export(&self, req: Request<pb::ExportRequest>) -> Result<Response<pb::ExportedSession>, Status> {
        let req = req.into_inner();
        crate::state::check_id("session", &req.session).map_err(|e| state_status(&e))?;
        let name = req.session.clone();
        let changes =
            run(&self.engine, move |c| c.engine().export_changes(&name).ok_or_else(|| Status::not_found(format!("session: no session {name:?}")))).await?;
        if !req.freeze {
            return Ok(Response::new(pb::ExportedSession { changes: Some(changes), stream_state: Vec::new() }));
        }
        // Nothing more leaves this node for the session: every subscription paused (durably, so
        // a restart here does not resume it behind the new node's back).
        let paused: Vec<pb::Change> = changes
            .changes
            .iter()
            .filter_map(|c| match &c.change {
                Some(pb::change::Change::Subscription(s)) => {
                    Some(pb::Change { change: Some(pb::change::Change::Subscription(pb::Subscription { paused: true, ..s.clone() })) })
                }
                _ => None,
            })
            .collect();
        let freeze = pb::ChangeSet { session: req.session.clone(), idempotency_key: String::new(), expected_revision: None, changes: paused };
        self.apply(Request::new(freeze)).await?;
        let name = req.session.clone();
        let state = run(&self.engine, move |c| {
            let legs = c.engine().session_legs(&name);
            let ck = c.stream_state(legs.iter().map(|(_, id)| *id).collect()).map_err(|e| Status::unavailable(format!("the dataplane's stream state: {e}")))?;
            let name_of: BTreeMap<LegId, String> = legs.into_iter().map(|(n, id)| (id, n)).collect();
            let moved = MovedStreams {
                legs: ck.legs.into_iter().filter_map(|l| Some((name_of.get(&l.leg)?.clone(), l))).collect(),
                streams: ck.streams.into_iter().filter_map(|s| Some((name_of.get(&s.subscriber)?.clone(), s))).collect(),
            };
            serde_json::to_vec(&moved).map_err(|e| Status::internal(format!("stream state: {e}")))
        })
        .await?;
        Ok(Response::new(pb::ExportedSession { changes: Some(changes), stream_state: state }))
    }

    async fn import(&self, req: Request<pb::ExportedSession>) -> Result<Response<pb::ApplyResponse>, Status> {
        let req = req.into_inner();
        let mut changes = req.changes.ok_or_else(|| Status::invalid_argument("changes: missing"))?;
        let moved: MovedStreams = if req.stream_state.is_empty() {
            MovedStreams::default()
        } else {
            serde_json::from_slice(&req.stream_state).map_err(|e| Status::invalid_argument(format!("stream_state: does not decode: {e}")))?
        };
        changes.idempotency_key = "import".into();
        changes.expected_revision = None;
        let session = changes.session.clone();
        let answer = self.apply(Request::new(changes)).await?;
        if moved.legs.is_empty() && moved.streams.is_empty() {
            return Ok(answer);
        }
        run(&self.engine, move |c| {
            let id_of: BTreeMap<String, LegId> = c.engine().session_legs(&session).into_iter().collect();
            let mut state = sluice_core::table::checkpoint::Checkpoint::default();
            for (name, mut l) in moved.legs {
                let Some(&id) = id_of.get(&name) else { continue };
                // The participants re-point from wherever they are: learned here afresh.
                (l.leg, l.remote) = (id, None);
                state.legs.push(l);
            }
            for (name, mut s) in moved.streams {
                let Some(&id) = id_of.get(&name) else { continue };
                s.subscriber = id;
                state.streams.push(s);
            }
            c.restore(state).map_err(|e| Status::unavailable(format!("the session is applied, but its streams could not be resumed in the dataplane: {e}")))
        })
        .await?;
        Ok(answer)
    }

    type WatchStream = EventStream;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let guard = self.watchers.acquire(req.remote_addr())?;
        let filter = req.into_inner().session;
        if !filter.is_empty() {
            crate::state::check_id("session", &filter).map_err(|e| state_status(&e))?;
        }
        let rx = self.engine.subscribe();
        let stream = BroadcastStream::new(rx).filter_map(move |item| match item {
            Ok(ev) if filter.is_empty() || ev.session == filter || ev.session.is_empty() => Some(Ok(ev)),
            Ok(_) => None,
            Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                Some(Err(Status::data_loss(format!("watcher fell {n} events behind; re-read state with GetSession and watch again"))))
            }
        });
        // The stream owns its place: dropping it (the client went away) gives it back.
        let stream = stream.map(move |item| {
            let _place = &guard;
            item
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// A moving session's stream positions by leg name (leg ids are each node's own).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct MovedStreams {
    legs: Vec<(String, sluice_core::table::checkpoint::LegCheckpoint)>,
    streams: Vec<(String, sluice_core::table::checkpoint::StreamCheckpoint)>,
}

/// `sluice.v1.Node`.
#[derive(Debug, Clone)]
pub struct NodeService {
    engine: Shared,
    /// Placement over the node's Redis; none without `redis_url`.
    placer: Option<Placer>,
}

impl NodeService {
    /// The service over `engine` (Node.Place answers FAILED_PRECONDITION).
    pub fn new(engine: Shared) -> Self {
        Self { engine, placer: None }
    }

    /// The service over `engine`, placing sessions with `placer`.
    pub fn with_placer(engine: Shared, placer: Option<Placer>) -> Self {
        Self { engine, placer }
    }
}

/// Publishes the heartbeat at once, so placement sees a drain (or its end) now.
fn publish_drain_state(c: &crate::controller::Controller) {
    if let Some(lb) = c.engine().lb() {
        lb.publish_now();
    }
}

#[tonic::async_trait]
impl pb::node_server::Node for NodeService {
    async fn get_status(&self, _req: Request<pb::GetStatusRequest>) -> Result<Response<pb::NodeStatus>, Status> {
        run(&self.engine, |e| Ok(e.status())).await.map(Response::new)
    }

    async fn drain(&self, _req: Request<pb::DrainRequest>) -> Result<Response<pb::NodeStatus>, Status> {
        run(&self.engine, |e| {
            e.engine().set_draining(true).map_err(status)?;
            publish_drain_state(e);
            tracing::info!("draining: new sessions are refused");
            Ok(e.status())
        })
        .await
        .map(Response::new)
    }

    async fn rotate_dtls_certificate(&self, _req: Request<pb::RotateDtlsCertificateRequest>) -> Result<Response<pb::RotateDtlsCertificateResponse>, Status> {
        run(&self.engine, |e| {
            let fingerprint = e.rotate_certificate().map_err(|err| Status::unavailable(format!("rotating the DTLS certificate: {err}")))?;
            tracing::info!(%fingerprint, "DTLS certificate rotated");
            Ok(pb::RotateDtlsCertificateResponse { fingerprint })
        })
        .await
        .map(Response::new)
    }

    async fn place(&self, req: Request<pb::PlaceRequest>) -> Result<Response<pb::PlaceResponse>, Status> {
        let Some(placer) = self.placer.clone() else {
            return Err(Status::failed_precondition(
                "this node has no redis_url: placement reads every node's load from the shared Redis (set controlplane.redis_url and node_id)",
            ));
        };
        let req = crate::placement::Request::from_pb(req.into_inner(), placer.threshold());
        let placed = tokio::task::spawn_blocking(move || placer.place(&req)).await.map_err(|e| Status::internal(format!("placement task: {e}")))?;
        placed.map(|p| Response::new(p.into())).map_err(|e| place_status(&e))
    }

    async fn undrain(&self, _req: Request<pb::UndrainRequest>) -> Result<Response<pb::NodeStatus>, Status> {
        run(&self.engine, |e| {
            e.engine().set_draining(false).map_err(status)?;
            publish_drain_state(e);
            tracing::info!("undrained: taking new sessions");
            Ok(e.status())
        })
        .await
        .map(Response::new)
    }
}
