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

use std::{net::SocketAddr, sync::Arc};

use apollo_common::{
    health::all_ready,
    shell::{Listeners, RunningService, ServiceShell, ShellConfig},
    shutdown::CancellationToken,
    Bus,
};
use apollo_proto::forecast_service_server::ForecastServiceServer;
use futures::{stream::FuturesUnordered, StreamExt};
use tokio::task::JoinHandle;
use tracing::Instrument as _;

pub use config::Config;
pub use error::{Error, Result};

use crate::{consumer::now_ms, engine::Engine, metrics::Metrics};

/// Fully qualified name of the gRPC service, as reported by gRPC health.
pub const SERVICE_NAME: &str = "apollo.ForecastService";

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
    running: RunningService,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Forecaster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forecaster")
            .field("grpc_addr", &self.running.grpc_addr())
            .field("metrics_addr", &self.running.metrics_addr())
            .finish()
    }
}

impl Forecaster {
    /// Starts everything: bus, consumer, refresh loop, metrics endpoint and
    /// the gRPC server on `listeners`. Returns once serving has started.
    pub async fn start(
        config: Config,
        listeners: impl Into<Listeners>,
        shutdown: CancellationToken,
    ) -> Result<Self> {
        config.validate()?;
        let mut shell = ServiceShell::new(ShellConfig {
            name: "apollo-forecaster",
            grpc_services: &[SERVICE_NAME],
            tls: &config.grpc_tls,
            limits: &config.grpc_limits,
            observability: &config.observability,
        })
        .await?;
        let metrics = Metrics::register(shell.registry());
        let engine = Arc::new(Engine::new(config.forecast.clone(), metrics)?);
        // The bus gets its own token so it outlives the drain of the server.
        let bus = Bus::connect(
            "apollo-forecaster",
            &config.nats,
            &config.streams,
            CancellationToken::new(),
        )
        .await?;
        bus.register_metrics(shell.registry());

        // Serving once the history is replayed, and while NATS is reachable.
        let (replayed_tx, replayed) = tokio::sync::watch::channel(false);
        let ready = all_ready(vec![replayed, bus.readiness()], shutdown.clone());
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(consumer::run(
            engine.clone(),
            bus.clone(),
            replayed_tx,
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

        let api = ForecastServiceServer::new(service::ForecastApi::new(engine.clone()));
        let running = shell.start(listeners, api, ready, shutdown).await?;
        Ok(Self {
            engine,
            bus,
            running,
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
        self.running.readiness().is_ready()
    }

    /// Bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.running.grpc_addr()
    }

    /// Bound metrics address.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.running.metrics_addr()
    }

    /// Refreshes every forecast now and publishes the results.
    pub async fn refresh_now(&self) -> Result<RefreshSummary> {
        refresh_and_publish(&self.engine, &self.bus).await
    }

    /// Waits for the shutdown token, then drains within the grace period:
    /// in-flight calls, the consumer and refresh loop, then the bus.
    pub async fn wait(self) -> Result<()> {
        let Self {
            bus,
            running,
            tasks,
            ..
        } = self;
        running
            .drain(async move {
                for t in tasks {
                    let _ = t.await;
                }
                bus.drain().await;
            })
            .await?;
        Ok(())
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
    engine.forget_insight_traces(&out.expired);
    // Each node's forecast and alerts continue the trace of its newest insight.
    let span_for = |node: &str| {
        let span = tracing::info_span!("forecast.publish", node);
        if let Some(parent) = engine.insight_trace(node) {
            apollo_common::telemetry::set_remote_parent(&span, &parent);
        }
        span
    };
    for p in &out.predictions {
        let subject = subjects.forecast(&p.node_name)?;
        match bus
            .start_publish(subject, p)
            .instrument(span_for(&p.node_name))
            .await
        {
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
        let r = bus
            .publish(subject, &a.alert)
            .instrument(span_for(&a.alert.node_name))
            .await;
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

/// Serves on `listeners` until `shutdown` (tests pass a listener on
/// `127.0.0.1:0`), then drains within `--shutdown-grace`.
pub async fn serve(
    config: Config,
    listeners: impl Into<Listeners>,
    shutdown: CancellationToken,
) -> Result<()> {
    Forecaster::start(config, listeners, shutdown)
        .await?
        .wait()
        .await
}

/// Binds the configured addresses and serves until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<()> {
    let listeners = Listeners::bind(config.grpc_addr, config.observability.metrics_addr).await?;
    serve(config, listeners, shutdown).await
}
