//! The one way every APOLLO service starts, reports readiness and drains.
//!
//! A service builds its own parts (bus, engine, background tasks), then hands
//! its gRPC API to a [`ServiceShell`], which adds what every server has:
//! gRPC health and reflection, TLS (when configured), the HTTP server for
//! `/metrics`, `/healthz` and `/readyz`, and one readiness source mirrored
//! into both health endpoints. On shutdown the shell reports NOT_SERVING,
//! stops accepting, lets in-flight calls finish and then runs the service's
//! own clean-up, all within one grace period (`--shutdown-grace`).
//!
//! ```text
//! let mut shell = ServiceShell::new(ShellConfig { .. }).await?;
//! /* register metrics in shell.registry(), start background tasks */
//! shell.start(listeners, Api::new(..), ready, shutdown).await?
//!      .drain(async { bus.drain().await }).await
//! ```

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use prometheus_client::registry::Registry;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::{
    body::Body,
    codegen::{http, Service},
    server::NamedService,
    service::Routes,
};

use crate::{
    config::ObservabilityArgs,
    grpc_limits::{GrpcLimitArgs, GrpcLimitsLayer, LimitMetrics},
    grpc_tls::{GrpcTlsArgs, ServerTls, TlsError},
    health::{serve_http, Readiness},
};

/// Why a service shell could not start or ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    /// The gRPC TLS settings are unusable.
    #[error("gRPC TLS: {0}")]
    Tls(#[from] TlsError),
    /// Server reflection could not be built from the descriptor sets.
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// Binding or inspecting a listener failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The gRPC server stopped with an error.
    #[error("gRPC server failed: {0}")]
    Server(#[from] tonic::transport::Error),
    /// A server limit is out of range.
    #[error("invalid gRPC limits: {0}")]
    Limits(String),
    /// The gRPC server task panicked.
    #[error("gRPC server task failed: {0}")]
    Task(String),
}

/// What a service tells the shell about itself; the rest comes from the
/// settings every service flattens into its `Config`.
#[derive(Debug, Clone, Copy)]
pub struct ShellConfig<'a> {
    /// Service (binary) name, for logs.
    pub name: &'static str,
    /// Fully qualified gRPC service names reported by gRPC health.
    pub grpc_services: &'a [&'static str],
    /// TLS of the gRPC server.
    pub tls: &'a GrpcTlsArgs,
    /// Message sizes, calls in progress, per-client rate.
    pub limits: &'a GrpcLimitArgs,
    /// Metrics address and shutdown grace.
    pub observability: &'a ObservabilityArgs,
}

/// The sockets a service serves on: gRPC, and the HTTP endpoint for metrics
/// and probes (bound from `--metrics-addr` when not given).
#[derive(Debug)]
pub struct Listeners {
    /// The gRPC listener.
    pub grpc: TcpListener,
    /// The HTTP listener; `None` binds `--metrics-addr`.
    pub metrics: Option<TcpListener>,
}

impl Listeners {
    /// Binds both configured addresses.
    pub async fn bind(grpc: SocketAddr, metrics: SocketAddr) -> Result<Self, ShellError> {
        let grpc = TcpListener::bind(grpc)
            .await
            .map_err(|source| ShellError::Io {
                what: "failed to bind the gRPC address",
                source,
            })?;
        let metrics = TcpListener::bind(metrics)
            .await
            .map_err(|source| ShellError::Io {
                what: "failed to bind the metrics address",
                source,
            })?;
        Ok(Self {
            grpc,
            metrics: Some(metrics),
        })
    }
}

impl From<TcpListener> for Listeners {
    fn from(grpc: TcpListener) -> Self {
        Self {
            grpc,
            metrics: None,
        }
    }
}

impl From<(TcpListener, TcpListener)> for Listeners {
    fn from((grpc, metrics): (TcpListener, TcpListener)) -> Self {
        Self {
            grpc,
            metrics: Some(metrics),
        }
    }
}

/// A generated gRPC server whose message size limits can be set; the shell
/// sets `--grpc-max-recv-bytes` and `--grpc-max-send-bytes` on every API.
pub trait MessageLimits {
    /// The server with these largest request and response messages.
    fn limit_message_sizes(self, max_recv: usize, max_send: usize) -> Self;
}

macro_rules! generated_servers {
    ($($module:ident :: $server:ident : $api:ident),* $(,)?) => {$(
        impl<T: apollo_proto::$module::$api> MessageLimits for apollo_proto::$module::$server<T> {
            fn limit_message_sizes(self, max_recv: usize, max_send: usize) -> Self {
                self.max_decoding_message_size(max_recv)
                    .max_encoding_message_size(max_send)
            }
        }
    )*};
}

generated_servers!(
    insight_service_server::InsightServiceServer: InsightService,
    forecast_service_server::ForecastServiceServer: ForecastService,
    scheduling_policy_service_server::SchedulingPolicyServiceServer: SchedulingPolicyService,
    orchestration_policy_service_server::OrchestrationPolicyServiceServer: OrchestrationPolicyService,
);

/// A service's gRPC server before it starts: readiness (NOT_SERVING), the
/// metrics registry and the routes every service serves.
pub struct ServiceShell {
    name: &'static str,
    readiness: Readiness,
    routes: Routes,
    registry: Registry,
    tls: Option<ServerTls>,
    limits: GrpcLimitArgs,
    metrics_addr: SocketAddr,
    grace: Duration,
    pre_stop: Duration,
}

impl std::fmt::Debug for ServiceShell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceShell")
            .field("name", &self.name)
            .field("tls", &self.tls.is_some())
            .field("grace", &self.grace)
            .finish()
    }
}

impl ServiceShell {
    /// Loads TLS (a bad file stops the service here), builds health (all
    /// NOT_SERVING) and reflection.
    pub async fn new(config: ShellConfig<'_>) -> Result<Self, ShellError> {
        config.limits.validate().map_err(ShellError::Limits)?;
        let tls = ServerTls::from_args(config.tls)?;
        let (readiness, health) = Readiness::new(config.grpc_services.to_vec()).await;
        let routes = Routes::new(health).add_service(crate::grpc::reflection_service()?);
        Ok(Self {
            name: config.name,
            readiness,
            routes,
            registry: Registry::default(),
            tls,
            limits: config.limits.clone(),
            metrics_addr: config.observability.metrics_addr,
            grace: config.observability.shutdown_grace,
            pre_stop: crate::grpc::pre_stop_window(
                config.observability.shutdown_pre_stop,
                config.observability.shutdown_grace,
            ),
        })
    }

    /// The registry served on `/metrics`; services register theirs here.
    pub fn registry(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The readiness reported by gRPC health and `/readyz`.
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// Starts serving `api` (plus health and reflection) on `listeners`.
    /// Readiness follows `ready` until `shutdown`, then turns NOT_SERVING.
    /// Returns once both servers run; [`RunningService::drain`] waits for
    /// the end.
    pub async fn start<S>(
        self,
        listeners: impl Into<Listeners>,
        api: S,
        ready: watch::Receiver<bool>,
        shutdown: CancellationToken,
    ) -> Result<RunningService, ShellError>
    where
        S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + MessageLimits
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let mut registry = self.registry;
        let limit_metrics = LimitMetrics::register(&mut registry);
        let listeners = listeners.into();
        let io = |what| move |source| ShellError::Io { what, source };
        let metrics_listener = match listeners.metrics {
            Some(l) => l,
            None => TcpListener::bind(self.metrics_addr)
                .await
                .map_err(io("failed to bind the metrics address"))?,
        };
        let grpc_addr = listeners
            .grpc
            .local_addr()
            .map_err(io("gRPC listener address"))?;
        let metrics_addr = metrics_listener
            .local_addr()
            .map_err(io("metrics listener address"))?;

        // The HTTP server outlives the gRPC drain, so probes see NOT_SERVING
        // while in-flight calls finish.
        let http_token = CancellationToken::new();
        let http = tokio::spawn(serve_http(
            metrics_listener,
            Arc::new(registry),
            self.readiness.clone(),
            http_token.clone(),
        ));
        let follower = self.readiness.follow(ready, shutdown.clone());

        let api = api.limit_message_sizes(self.limits.max_recv_bytes, self.limits.max_send_bytes);
        let routes = self.routes.add_service(api);
        let limits = GrpcLimitsLayer::new(&self.limits, limit_metrics);
        let incoming = crate::grpc_tls::incoming(listeners.grpc, self.tls.as_ref());
        // On shutdown, new calls get UNAVAILABLE for the pre-stop window
        // (clients retry elsewhere), then the server refuses new streams and
        // lets the calls in progress finish.
        let pre_stop = self.pre_stop;
        let stopped = {
            let shutdown = shutdown.clone();
            async move {
                shutdown.cancelled().await;
                tokio::time::sleep(pre_stop).await;
            }
        };
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                // Outermost, so calls the limits refuse are traced and counted too.
                .layer(crate::grpc_telemetry::GrpcTelemetryLayer)
                .layer(crate::grpc::StopGateLayer::new(shutdown.clone()))
                .layer(limits)
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, stopped),
        );
        tracing::info!(service = self.name, grpc = %grpc_addr, metrics = %metrics_addr, tls = self.tls.is_some(), "serving");
        Ok(RunningService {
            name: self.name,
            grpc_addr,
            metrics_addr,
            readiness: self.readiness,
            grace: self.grace,
            shutdown,
            server,
            follower,
            http,
            http_token,
        })
    }
}

/// A serving service; [`drain`](Self::drain) waits for shutdown and drains.
#[derive(Debug)]
pub struct RunningService {
    name: &'static str,
    grpc_addr: SocketAddr,
    metrics_addr: SocketAddr,
    readiness: Readiness,
    grace: Duration,
    shutdown: CancellationToken,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    follower: JoinHandle<()>,
    http: JoinHandle<std::io::Result<()>>,
    http_token: CancellationToken,
}

impl RunningService {
    /// Bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Bound address of `/metrics`, `/healthz` and `/readyz`.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// The readiness reported by gRPC health and `/readyz`.
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// Serves until shutdown (or until the gRPC server fails), then drains:
    /// NOT_SERVING, no new connections, in-flight calls finish, then
    /// `cleanup` (flushing queues, draining the bus) runs in what is left
    /// of the grace period. Past the grace period, remaining calls and the
    /// clean-up are abandoned with a warning.
    pub async fn drain<F>(self, cleanup: F) -> Result<(), ShellError>
    where
        F: Future<Output = ()>,
    {
        let Self {
            name,
            readiness,
            grace,
            shutdown,
            mut server,
            follower,
            http,
            http_token,
            ..
        } = self;
        let served = tokio::select! {
            r = &mut server => Some(r),
            _ = shutdown.cancelled() => None,
        };
        let deadline = tokio::time::Instant::from_std(Instant::now() + grace);
        readiness.set(false).await;
        let served = match served {
            Some(r) => r,
            None => match tokio::time::timeout_at(deadline, &mut server).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!(
                        service = name,
                        ?grace,
                        "grace period over, abandoning in-flight calls"
                    );
                    server.abort();
                    Ok(Ok(()))
                }
            },
        };
        if tokio::time::timeout_at(deadline, cleanup).await.is_err() {
            tracing::warn!(
                service = name,
                ?grace,
                "grace period over before the clean-up finished"
            );
        }
        follower.abort();
        http_token.cancel();
        let _ = http.await;
        tracing::info!(service = name, "stopped");
        match served {
            Ok(r) => r.map_err(ShellError::from),
            Err(join) if join.is_cancelled() => Ok(()),
            Err(join) => Err(ShellError::Task(join.to_string())),
        }
    }

    /// [`drain`](Self::drain) without a service clean-up.
    pub async fn wait(self) -> Result<(), ShellError> {
        self.drain(async {}).await
    }
}
