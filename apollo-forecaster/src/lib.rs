//! Node Resource Forecaster: keeps per-node resource histories from
//! `apollo.insight.cluster.>`, forecasts them at several horizons with
//! prediction intervals, detects anomalies and warns of overload before it
//! happens.
//!
//! - [`history`]: extraction and resampling of the insights;
//! - [`engine`]: models per series, refreshes, anomalies, alerts, and the
//!   mapping onto `ResourcePrediction`;
//! - [`consumer`]: replay of the retained stream window, then the durable
//!   consumer;
//! - [`service`]: `ForecastService` over gRPC;
//! - [`Forecaster`]: everything wired together, with a refresh loop that
//!   publishes `apollo.forecast.<node>` and `apollo.alert.<kind>.<node>`.
#![forbid(unsafe_code)]

pub mod alert;
pub mod anomaly;
pub mod config;
pub mod consumer;
pub mod engine;
pub mod error;
pub mod eval;
pub mod history;
pub mod metrics;
pub mod models;
pub mod service;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use apollo_common::{
    grpc::reflection_service,
    health::{spawn_http, Readiness},
    shutdown::CancellationToken,
    Bus,
};
use apollo_proto::forecast_service_server::ForecastServiceServer;
use futures::{stream::FuturesUnordered, StreamExt};
use prometheus_client::registry::Registry;
use tokio::{net::TcpListener, task::JoinHandle};

pub use config::Config;
pub use error::{Error, Result};

use crate::{consumer::now_ms, engine::Engine, metrics::Metrics};

/// Publishes in flight at once during a refresh.
const MAX_IN_FLIGHT: usize = 256;

/// What one refresh did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RefreshSummary {
    /// Nodes forecast.
    pub nodes: usize,
    /// Predictions published.
    pub published: usize,
    /// Alerts published.
    pub alerts: usize,
    /// Publishes that failed.
    pub failed: usize,
    /// Nodes dropped after their TTL.
    pub expired: usize,
    /// Compute time, seconds.
    pub seconds: f64,
}

/// A running forecaster.
pub struct Forecaster {
    engine: Arc<Engine>,
    bus: Bus,
    readiness: Readiness,
    grpc_addr: SocketAddr,
    metrics_addr: SocketAddr,
    shutdown: CancellationToken,
    grace: Duration,
    grpc: JoinHandle<Result<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Forecaster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forecaster")
            .field("grpc_addr", &self.grpc_addr)
            .field("metrics_addr", &self.metrics_addr)
            .finish()
    }
}

impl Forecaster {
    /// Starts everything: bus, consumer, refresh loop, metrics endpoint and
    /// the gRPC server on `listener`. Returns once serving has started.
    pub async fn start(
        config: Config,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<Self> {
        config.validate()?;
        let tls = apollo_common::grpc_tls::ServerTls::from_args(&config.grpc_tls)
            .map_err(|e| Error::Config(e.to_string()))?;
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let engine = Arc::new(Engine::new(config.forecast.clone(), metrics)?);
        let (readiness, health) = Readiness::new(vec!["apollo.ForecastService"]).await;
        readiness.set(false).await;
        // The bus gets its own token so it outlives the drain of the server.
        let bus_token = CancellationToken::new();
        let bus = Bus::connect(
            "apollo-forecaster",
            &config.nats,
            &config.streams,
            bus_token.clone(),
        )
        .await?;
        bus.register_metrics(&mut registry);
        let (metrics_addr, _http) = spawn_http(
            config.observability.metrics_addr,
            Arc::new(registry),
            readiness.clone(),
            shutdown.clone(),
        )
        .await?;
        let grpc_addr = listener.local_addr()?;

        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(consumer::run(
            engine.clone(),
            bus.clone(),
            readiness.clone(),
            shutdown.clone(),
        )));
        {
            let (engine, bus, shutdown) = (engine.clone(), bus.clone(), shutdown.clone());
            let every = config.forecast.refresh_interval;
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tick.tick() => {}
                    }
                    if !bus.is_ready() {
                        continue;
                    }
                    match refresh_and_publish(&engine, &bus).await {
                        Ok(s) => tracing::debug!(
                            nodes = s.nodes,
                            published = s.published,
                            alerts = s.alerts,
                            seconds = s.seconds,
                            "refreshed"
                        ),
                        Err(err) => tracing::warn!(%err, "refresh failed"),
                    }
                }
            }));
        }

        let reflection = reflection_service().map_err(|e| Error::Internal(e.to_string()))?;
        let api = service::ForecastApi::new(engine.clone());
        let grpc_shutdown = shutdown.clone();
        let grpc = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(health)
                .add_service(reflection)
                .add_service(ForecastServiceServer::new(api))
                .serve_with_incoming_shutdown(
                    apollo_common::grpc_tls::incoming(listener, tls.as_ref()),
                    grpc_shutdown.cancelled(),
                )
                .await
                .map_err(Error::from)
        });
        tracing::info!(%grpc_addr, %metrics_addr, "forecaster serving");
        let _ = bus_token;
        Ok(Self {
            engine,
            bus,
            readiness,
            grpc_addr,
            metrics_addr,
            shutdown,
            grace: config.observability.shutdown_grace,
            grpc,
            tasks,
        })
    }

    /// The engine (for tests and tools).
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The bus in use.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Whether the service reports ready.
    pub fn is_ready(&self) -> bool {
        self.readiness.is_ready()
    }

    /// Bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Bound metrics address.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// Refreshes every forecast now and publishes the results.
    pub async fn refresh_now(&self) -> Result<RefreshSummary> {
        refresh_and_publish(&self.engine, &self.bus).await
    }

    /// Waits for the shutdown token, then drains within the grace period.
    pub async fn wait(self) -> Result<()> {
        self.shutdown.cancelled().await;
        self.readiness.set(false).await;
        let grace = self.grace;
        let drain = async {
            let res = match self.grpc.await {
                Ok(r) => r,
                Err(e) => Err(Error::Internal(e.to_string())),
            };
            for t in self.tasks {
                let _ = t.await;
            }
            self.bus.drain().await;
            res
        };
        match tokio::time::timeout(grace, drain).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!(?grace, "drain did not finish within the grace period");
                Ok(())
            }
        }
    }
}

/// Runs a refresh on a blocking thread and publishes predictions, then
/// alerts, with a bounded number of acks in flight.
pub async fn refresh_and_publish(engine: &Arc<Engine>, bus: &Bus) -> Result<RefreshSummary> {
    let e = engine.clone();
    let out = tokio::task::spawn_blocking(move || e.refresh(now_ms()))
        .await
        .map_err(|e| Error::Internal(e.to_string()))?;
    let metrics = engine.metrics().clone();
    let mut summary = RefreshSummary {
        nodes: out.predictions.len(),
        expired: out.expired.len(),
        seconds: out.seconds,
        ..Default::default()
    };
    let subjects = bus.subjects().clone();
    let mut inflight = FuturesUnordered::new();
    let mut results = Vec::new();
    for p in &out.predictions {
        let subject = subjects.forecast(&p.node_name)?;
        match bus.start_publish(subject, p).await {
            Ok(ack) => inflight.push(async move { (true, ack.await) }),
            Err(err) => results.push((true, Err(err))),
        }
        if inflight.len() >= MAX_IN_FLIGHT {
            if let Some(r) = inflight.next().await {
                results.push(r);
            }
        }
    }
    while let Some(r) = inflight.next().await {
        results.push(r);
    }
    // Alerts in order, after the predictions they refer to.
    for a in &out.alerts {
        let subject = subjects.alert(a.kind, &a.alert.node_name)?;
        let r = bus.publish(subject, &a.alert).await;
        if r.is_ok() {
            let state = if a.alert.state == apollo_proto::AlertState::Raised as i32 {
                "raised"
            } else {
                "cleared"
            };
            metrics
                .alerts
                .get_or_create(&vec![("kind", a.kind), ("state", state)])
                .inc();
        }
        results.push((false, r));
    }
    for (prediction, r) in results {
        match r {
            Ok(_) if prediction => {
                summary.published += 1;
                metrics.predictions_published.inc();
            }
            Ok(_) => summary.alerts += 1,
            Err(err) => {
                summary.failed += 1;
                metrics.publish_failures.inc();
                tracing::warn!(%err, "publish failed");
            }
        }
    }
    Ok(summary)
}

/// Serves until `shutdown` (tests pass a listener on `127.0.0.1:0`).
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<()> {
    Forecaster::start(config, listener, shutdown)
        .await?
        .wait()
        .await
}

/// Binds the configured address and serves until SIGTERM/SIGINT.
pub async fn run(config: Config) -> Result<()> {
    let listener = TcpListener::bind(config.grpc_addr).await?;
    serve(config, listener, apollo_common::shutdown::on_signal()).await
}
