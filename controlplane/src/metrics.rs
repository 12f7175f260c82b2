//! The control plane's Prometheus endpoint (`GET /metrics`, `controlplane.metrics_listen`).
//!
//! What it exports: the node's state as the control plane holds it (sessions, legs, tracks,
//! subscriptions, ports, quotas, drain, the dataplane link and the table generation it has
//! installed), every gRPC call by method and status code with a latency histogram (counted by a
//! tower layer around the whole server, so no call is missed), and, opt-in
//! (`metrics_sessions = N`), per-session series for the N largest sessions only, so the series
//! count stays bounded however many sessions the node holds.
//!
//! A scrape costs one pass over the sessions; the endpoint is a small HTTP/1.1 responder on the
//! gRPC runtime with a bounded request size and time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::controller::Shared;

/// Upper bounds (seconds) of the gRPC latency histogram's buckets.
const BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
/// Distinct gRPC method labels kept; calls to further (unknown) paths are counted as `other`.
const MAX_METHODS: usize = 64;
/// The longest request the endpoint reads, and the time it gives a client to send it.
const MAX_REQUEST: usize = 8192;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Method {
    by_code: BTreeMap<&'static str, u64>,
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum_seconds: f64,
}

/// The counters the gRPC layer feeds.
#[derive(Default)]
pub struct Metrics {
    methods: Mutex<BTreeMap<String, Method>>,
    scrapes: AtomicU64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Counts one gRPC call: its path (`/sluice.v1.Routes/Apply`), status code and the time to
    /// its response's headers (a unary call's whole handling; a stream's start).
    pub fn record(&self, path: &str, code: tonic::Code, elapsed: Duration) {
        let mut methods = self.methods.lock().unwrap_or_else(PoisonError::into_inner);
        let key = if methods.contains_key(path) || methods.len() < MAX_METHODS { path } else { "other" };
        let m = methods.entry(key.to_owned()).or_default();
        *m.by_code.entry(code_name(code)).or_default() += 1;
        let s = elapsed.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                m.buckets[i] += 1;
            }
        }
        m.count += 1;
        m.sum_seconds += s;
    }

    /// The exposition: the node's state from `ctl`, the gRPC counters, and per-session series for
    /// the `per_session` largest sessions (by legs; 0: none).
    pub fn render(&self, ctl: &Shared, per_session: usize) -> String {
        let scrapes = self.scrapes.fetch_add(1, Ordering::Relaxed) + 1;
        let st = ctl.status();
        let mut s = String::with_capacity(4096);
        let mut gauge = |name: &str, help: &str, v: f64| {
            let v = if v.is_infinite() { "+Inf".to_owned() } else { v.to_string() };
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge("sluice_cp_sessions", "Sessions the control plane holds.", f64::from(st.sessions));
        gauge("sluice_cp_legs", "Legs over all sessions.", f64::from(st.legs));
        gauge("sluice_cp_tracks", "Tracks over all sessions.", f64::from(st.tracks));
        gauge("sluice_cp_subscriptions", "Subscriptions over all sessions.", f64::from(st.subscriptions));
        gauge("sluice_cp_ports_free", "Leg ports of the range not yet given to a leg.", f64::from(st.ports_free));
        gauge("sluice_cp_unbound_ports", "Leg ports the dataplane reported it could not open.", f64::from(st.unbound_ports));
        gauge("sluice_cp_draining", "1 while the node refuses new sessions.", f64::from(u8::from(st.draining)));
        gauge("sluice_cp_dataplane_connected", "1 while the dataplane answers on its control socket.", f64::from(u8::from(st.dataplane_connected)));
        gauge("sluice_cp_dataplane_generation", "The table generation the dataplane has installed.", st.dataplane_generation as f64);
        let quota = |q: u32| if q == 0 { f64::INFINITY } else { f64::from(q) };
        gauge("sluice_cp_max_sessions", "The node's session quota (+Inf: none).", quota(st.max_sessions));
        gauge("sluice_cp_max_legs", "The node's leg quota (+Inf: none).", quota(st.max_legs));
        gauge("sluice_cp_max_subscriptions", "The node's subscription quota (+Inf: none).", quota(st.max_subscriptions));
        let _ =
            writeln!(s, "# HELP sluice_cp_scrapes_total Scrapes of this endpoint.\n# TYPE sluice_cp_scrapes_total counter\nsluice_cp_scrapes_total {scrapes}");
        {
            let methods = self.methods.lock().unwrap_or_else(PoisonError::into_inner);
            let _ = writeln!(s, "# HELP sluice_cp_grpc_requests_total gRPC calls by method and status code.\n# TYPE sluice_cp_grpc_requests_total counter");
            for (path, m) in methods.iter() {
                for (code, n) in &m.by_code {
                    let _ = writeln!(s, "sluice_cp_grpc_requests_total{{method=\"{}\",code=\"{code}\"}} {n}", escape(path));
                }
            }
            let _ = writeln!(
                s,
                "# HELP sluice_cp_grpc_seconds Time from a gRPC call's arrival to its response's headers (a unary call's whole handling).\n# TYPE sluice_cp_grpc_seconds histogram"
            );
            for (path, m) in methods.iter() {
                let path = escape(path);
                for (b, n) in BUCKETS.iter().zip(m.buckets) {
                    let _ = writeln!(s, "sluice_cp_grpc_seconds_bucket{{method=\"{path}\",le=\"{b}\"}} {n}");
                }
                let _ = writeln!(s, "sluice_cp_grpc_seconds_bucket{{method=\"{path}\",le=\"+Inf\"}} {}", m.count);
                let _ = writeln!(s, "sluice_cp_grpc_seconds_sum{{method=\"{path}\"}} {}", m.sum_seconds);
                let _ = writeln!(s, "sluice_cp_grpc_seconds_count{{method=\"{path}\"}} {}", m.count);
            }
        }
        if per_session > 0 {
            let mut sessions: Vec<(String, usize, usize)> =
                ctl.engine().desired().sessions.iter().map(|(id, sess)| (id.clone(), sess.legs.len(), sess.subscription_count())).collect();
            sessions.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            sessions.truncate(per_session);
            let _ = writeln!(
                s,
                "# HELP sluice_cp_session_legs Legs of the session (the metrics_sessions largest sessions only).\n# TYPE sluice_cp_session_legs gauge"
            );
            for (id, legs, _) in &sessions {
                let _ = writeln!(s, "sluice_cp_session_legs{{session=\"{}\"}} {legs}", escape(id));
            }
            let _ = writeln!(
                s,
                "# HELP sluice_cp_session_subscriptions Subscriptions of the session (the metrics_sessions largest sessions only).\n# TYPE sluice_cp_session_subscriptions gauge"
            );
            for (id, _, subs) in &sessions {
                let _ = writeln!(s, "sluice_cp_session_subscriptions{{session=\"{}\"}} {subs}", escape(id));
            }
        }
        s
    }
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A label value as the text format wants it (backslash, quote and newline escaped).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The tower layer that counts every gRPC call into [`Metrics`].
#[derive(Clone, Debug)]
pub struct GrpcLayer(pub Arc<Metrics>);

impl<S> tower_layer::Layer<S> for GrpcLayer {
    type Service = GrpcCount<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcCount { inner, metrics: self.0.clone() }
    }
}

/// [`GrpcLayer`]'s service.
#[derive(Clone, Debug)]
pub struct GrpcCount<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, RB> tower_service::Service<http::Request<B>> for GrpcCount<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_owned();
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            // An error status comes in the headers (a trailers-only response); a call that
            // succeeded, or a stream that started, has none there.
            let code = match &r {
                Ok(resp) => resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or(tonic::Code::Ok, tonic::Code::from),
                Err(_) => tonic::Code::Internal,
            };
            metrics.record(&path, code, started.elapsed());
            r
        })
    }
}

/// Serves `GET /metrics` on `listener` until the runtime ends.
pub async fn serve(listener: tokio::net::TcpListener, ctl: Shared, metrics: Arc<Metrics>, per_session: usize) {
    loop {
        let (mut conn, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (ctl, metrics) = (ctl.clone(), metrics.clone());
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(1024);
            let head = tokio::time::timeout(REQUEST_TIMEOUT, async {
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST {
                    let n = conn.read(&mut chunk).await?;
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            if !matches!(head, Ok(Ok(()))) {
                return;
            }
            let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
            let line = String::from_utf8_lossy(line);
            let mut parts = line.split_whitespace();
            let (status, body, ctype) = match (parts.next(), parts.next()) {
                (Some("GET"), Some("/metrics")) => {
                    let c = ctl.clone();
                    let m = metrics.clone();
                    match tokio::task::spawn_blocking(move || m.render(&c, per_session)).await {
                        Ok(body) => ("200 OK", body, "text/plain; version=0.0.4"),
                        Err(_) => ("500 Internal Server Error", "render failed\n".to_owned(), "text/plain"),
                    }
                }
                (Some("GET"), Some(_)) => ("404 Not Found", "only /metrics here\n".to_owned(), "text/plain"),
                _ => ("405 Method Not Allowed", "GET /metrics\n".to_owned(), "text/plain"),
            };
            let reply = format!("HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            let _ = conn.write_all(reply.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}

/// Binds the endpoint (before the runtime, so a bad address refuses the start).
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}
