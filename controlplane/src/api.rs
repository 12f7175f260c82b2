//! The gRPC services. Handlers only move requests onto the engine's blocking thread and map its
//! typed errors to precise statuses naming the field; all decisions live in `state`/`compile`.

use std::pin::Pin;

use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Code, Request, Response, Status};

use crate::engine::{EngineError, SharedEngine, lock};
use crate::pb;
use crate::state::{ErrorKind, StateError};

/// The gRPC status for an engine error.
pub fn status(e: EngineError) -> Status {
    match e {
        EngineError::State(s) => state_status(&s),
        e @ EngineError::NotInstalled { .. } => Status::unavailable(e.to_string()),
        e @ EngineError::Journal(_) => Status::internal(e.to_string()),
    }
}

fn state_status(e: &StateError) -> Status {
    let code = match e.kind {
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::Aborted => Code::Aborted,
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
    };
    Status::new(code, e.to_string())
}

async fn run<T, F>(engine: &SharedEngine, f: F) -> Result<T, Status>
where
    F: FnOnce(&mut crate::engine::Engine) -> Result<T, Status> + Send + 'static,
    T: Send + 'static,
{
    let engine = engine.clone();
    tokio::task::spawn_blocking(move || f(&mut lock(&engine))).await.map_err(|e| Status::internal(format!("engine task: {e}")))?
}

fn list(engine: &mut crate::engine::Engine) -> pb::ListSessionsResponse {
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

/// `sluice.v1.Routes`.
#[derive(Debug, Clone)]
pub struct RoutesService {
    engine: SharedEngine,
}

impl RoutesService {
    /// The service over `engine`.
    pub fn new(engine: SharedEngine) -> Self {
        Self { engine }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::routes_server::Routes for RoutesService {
    async fn apply(&self, req: Request<pb::ChangeSet>) -> Result<Response<pb::ApplyResponse>, Status> {
        let req = req.into_inner();
        run(&self.engine, move |e| e.apply(&req).map_err(status)).await.map(Response::new)
    }

    async fn delete_session(&self, req: Request<pb::DeleteSessionRequest>) -> Result<Response<pb::ApplyResponse>, Status> {
        let req = req.into_inner();
        run(&self.engine, move |e| e.delete_session(&req).map_err(status)).await.map(Response::new)
    }

    async fn get_session(&self, req: Request<pb::GetSessionRequest>) -> Result<Response<pb::Session>, Status> {
        let name = req.into_inner().session;
        run(&self.engine, move |e| e.session_view(&name).map_err(|e| state_status(&e))).await.map(Response::new)
    }

    async fn list_sessions(&self, _req: Request<pb::ListSessionsRequest>) -> Result<Response<pb::ListSessionsResponse>, Status> {
        run(&self.engine, |engine| Ok(list(engine))).await.map(Response::new)
    }

    type WatchStream = EventStream;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let filter = req.into_inner().session;
        let rx = lock(&self.engine).subscribe();
        let stream = BroadcastStream::new(rx).filter_map(move |item| match item {
            Ok(ev) if filter.is_empty() || ev.session == filter || ev.session.is_empty() => Some(Ok(ev)),
            Ok(_) => None,
            Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                Some(Err(Status::data_loss(format!("watcher fell {n} events behind; re-read state with GetSession and watch again"))))
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// `sluice.v1.Node`.
#[derive(Debug, Clone)]
pub struct NodeService {
    engine: SharedEngine,
}

impl NodeService {
    /// The service over `engine`.
    pub fn new(engine: SharedEngine) -> Self {
        Self { engine }
    }
}

#[tonic::async_trait]
impl pb::node_server::Node for NodeService {
    async fn get_status(&self, _req: Request<pb::GetStatusRequest>) -> Result<Response<pb::NodeStatus>, Status> {
        run(&self.engine, |e| Ok(e.status())).await.map(Response::new)
    }

    async fn drain(&self, _req: Request<pb::DrainRequest>) -> Result<Response<pb::NodeStatus>, Status> {
        run(&self.engine, |e| {
            e.set_draining(true).map_err(status)?;
            tracing::info!("draining: new sessions are refused");
            Ok(e.status())
        })
        .await
        .map(Response::new)
    }

    async fn rotate_dtls_certificate(
        &self,
        _req: Request<pb::RotateDtlsCertificateRequest>,
    ) -> Result<Response<pb::RotateDtlsCertificateResponse>, Status> {
        run(&self.engine, |e| {
            let fingerprint = e.rotate_certificate().map_err(|err| Status::unavailable(format!("rotating the DTLS certificate: {err}")))?;
            tracing::info!(%fingerprint, "DTLS certificate rotated");
            Ok(pb::RotateDtlsCertificateResponse { fingerprint })
        })
        .await
        .map(Response::new)
    }

    async fn undrain(&self, _req: Request<pb::UndrainRequest>) -> Result<Response<pb::NodeStatus>, Status> {
        run(&self.engine, |e| {
            e.set_draining(false).map_err(status)?;
            tracing::info!("undrained: taking new sessions");
            Ok(e.status())
        })
        .await
        .map(Response::new)
    }
}
