//! Health and metrics endpoints.
//!
//! gRPC health (`grpc.health.v1`) answers NOT_SERVING until the service's
//! dependencies (NATS) are reachable, SERVING after, and NOT_SERVING again while
//! draining. The same state drives `/readyz` on the HTTP server that also serves
//! Prometheus `/metrics`, so Kubernetes probes can use either. `GET` and
//! `PUT /loglevel` read and change the log filter of the running process.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use axum::{
    extract::State,
    http::StatusCode,
    response::IntoResponse,
    routing::{get, put},
    Router,
};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic_health::server::HealthReporter;

/// Readiness shared by gRPC health and `/readyz`.
#[derive(Clone)]
pub struct Readiness {
    ready: Arc<AtomicBool>,
    reporter: HealthReporter,
    services: Arc<Vec<&'static str>>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("ready", &self.is_ready())
            .finish()
    }
}

impl Readiness {
    /// Creates the health service for the given fully qualified gRPC service
    /// names plus the overall "" service, all NOT_SERVING until [`set`](Self::set)
    /// says otherwise (tonic-health alone starts "" as SERVING).
    pub async fn new(
        services: Vec<&'static str>,
    ) -> (
        Self,
        tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    ) {
        let (reporter, server) = tonic_health::server::health_reporter();
        let me = Self {
            ready: Arc::new(AtomicBool::new(false)),
            reporter,
            services: Arc::new(services),
        };
        me.publish(false).await;
        (me, server)
    }

    async fn publish(&self, ready: bool) {
        let status = if ready {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        self.reporter.set_service_status("", status).await;
        for name in self.services.iter() {
            self.reporter.set_service_status(*name, status).await;
        }
    }

    /// Marks the service serving or not.
    pub async fn set(&self, ready: bool) {
        let was = self.ready.swap(ready, Ordering::SeqCst);
        self.publish(ready).await;
        if was != ready {
            tracing::info!(ready, "readiness changed");
        }
    }

    /// Mirrors a dependency's readiness (e.g. [`crate::Bus::readiness`]) into
    /// gRPC health and `/readyz` until `shutdown`, then reports NOT_SERVING so
    /// load balancers stop sending work while the service drains.
    pub fn follow(
        &self,
        mut source: tokio::sync::watch::Receiver<bool>,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let ready = *source.borrow_and_update();
                if !shutdown.is_cancelled() {
                    me.set(ready).await;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    changed = source.changed() => if changed.is_err() {
                        // The source is gone: its last value holds.
                        shutdown.cancelled().await;
                        break;
                    },
                }
            }
            me.set(false).await;
        })
    }

    /// Whether the service is ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

/// A readiness source that holds while every one of `sources` is ready
/// (e.g. the bus and the Kubernetes collector), until `shutdown`.
pub fn all_ready(
    mut sources: Vec<tokio::sync::watch::Receiver<bool>>,
    shutdown: CancellationToken,
) -> tokio::sync::watch::Receiver<bool> {
    let now = sources.iter().all(|s| *s.borrow());
    let (tx, rx) = tokio::sync::watch::channel(now);
    tokio::spawn(async move {
        loop {
            let all = sources.iter_mut().all(|s| *s.borrow_and_update());
            tx.send_if_modified(|v| std::mem::replace(v, all) != all);
            let changed =
                futures::future::select_all(sources.iter_mut().map(|s| Box::pin(s.changed())));
            tokio::select! {
                _ = shutdown.cancelled() => break,
                (r, _, _) = changed => if r.is_err() { break },
            }
        }
    });
    rx
}

/// A readiness source that never changes (a service without dependencies).
pub fn always(ready: bool) -> tokio::sync::watch::Receiver<bool> {
    tokio::sync::watch::channel(ready).1
}

#[derive(Clone)]
struct HttpState {
    registry: Arc<Registry>,
    readiness: Readiness,
}

/// Serves `/metrics`, `/healthz` (liveness) and `/readyz` until `shutdown`.
pub async fn serve_http(
    listener: TcpListener,
    registry: Arc<Registry>,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/loglevel", put(set_log_filter).get(get_log_filter))
        .with_state(HttpState {
            registry,
            readiness,
        });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Binds `addr` and serves the HTTP endpoints in a background task.
pub async fn spawn_http(
    addr: SocketAddr,
    registry: Arc<Registry>,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let handle = tokio::spawn(serve_http(listener, registry, readiness, shutdown));
    Ok((local, handle))
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    let mut body = String::new();
    let encoded = prometheus_client::encoding::text::encode_registry(&mut body, &state.registry)
        .and_then(|()| {
            prometheus_client::encoding::text::encode_registry(
                &mut body,
                crate::shared_metrics::shared().registry(),
            )
        })
        .and_then(|()| prometheus_client::encoding::text::encode_eof(&mut body));
    match encoded {
        Ok(()) => (
            StatusCode::OK,
            [(
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        ),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("content-type", "text/plain; charset=utf-8")],
            format!("failed to encode metrics: {err}"),
        ),
    }
}

async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    if state.readiness.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// Longest log filter `PUT /loglevel` accepts.
const MAX_LOG_FILTER_BYTES: usize = 4096;

async fn get_log_filter() -> impl IntoResponse {
    match crate::telemetry::log_filter() {
        Some(handle) => (StatusCode::OK, handle.current()),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "log filter not changeable: logging was not set up by telemetry::init".to_string(),
        ),
    }
}

/// `PUT /loglevel` with a tracing `EnvFilter` string as the body, e.g.
/// `info,apollo_scheduling=debug`.
async fn set_log_filter(body: axum::body::Bytes) -> impl IntoResponse {
    let Some(handle) = crate::telemetry::log_filter() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "log filter not changeable: logging was not set up by telemetry::init".to_string(),
        );
    };
    let rejected = |status, message: String| {
        crate::shared_metrics::shared()
            .log_filter_changes
            .get_or_create(&crate::shared_metrics::OutcomeLabels {
                outcome: "rejected",
            })
            .inc();
        (status, message)
    };
    if body.len() > MAX_LOG_FILTER_BYTES {
        return rejected(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("log filter longer than {MAX_LOG_FILTER_BYTES} bytes"),
        );
    }
    let Ok(filter) = std::str::from_utf8(&body) else {
        return rejected(
            StatusCode::BAD_REQUEST,
            "log filter is not UTF-8".to_string(),
        );
    };
    let filter = filter.trim();
    if filter.is_empty() {
        return rejected(
            StatusCode::BAD_REQUEST,
            "empty log filter: send e.g. `info` or `info,apollo_ingest=debug`".to_string(),
        );
    }
    match handle.set(filter) {
        Ok(()) => (StatusCode::OK, filter.to_string()),
        Err(err) => (StatusCode::BAD_REQUEST, err.to_string()),
    }
}
