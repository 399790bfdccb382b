//! APOLLO ingest: receives `WorkloadSignature`s (per pod, from the
//! Insight-Trace sidecar) and `ClusterInsight`s (per node) over gRPC,
//! validates them and stores each on NATS JetStream as protobuf-JSON
//! (`apollo.insight.workload.<ns>.<pod>`, `apollo.insight.cluster.<node>`),
//! answering only after JetStream acknowledged the write.
//!
//! [`serve`] runs the whole service on already bound listeners so tests can
//! use `127.0.0.1:0`; [`run`] binds the configured addresses and stops on
//! SIGTERM/SIGINT.

#![forbid(unsafe_code)]

pub mod collector;
pub mod config;
pub mod error;
pub mod metrics;
mod oversized;
pub mod service;
pub mod validate;

use std::sync::Arc;

use apollo_common::{
    health::all_ready,
    shell::{Listeners, ServiceShell, ShellConfig},
    shutdown::CancellationToken,
    Bus,
};
use apollo_proto::insight_service_server::InsightServiceServer;

pub use config::Config;
pub use error::{Error, Result};
pub use service::{IngestService, IngestSettings, Publisher};

/// Fully qualified name of the gRPC service, as reported by gRPC health.
pub const SERVICE_NAME: &str = "apollo.InsightService";

/// Binds the configured addresses and serves until `shutdown`, then drains
/// within `--shutdown-grace`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<()> {
    let listeners = Listeners::bind(config.grpc_addr, config.observability.metrics_addr).await?;
    serve(config, listeners, shutdown).await
}

/// Serves gRPC and `/metrics`, `/healthz`, `/readyz` on `listeners` (a
/// gRPC listener alone binds `--metrics-addr`) until `shutdown` is
/// cancelled. Then health turns NOT_SERVING, the server stops accepting and
/// in-flight calls get `--shutdown-grace` to finish before the NATS
/// connection is drained.
pub async fn serve(
    config: Config,
    listeners: impl Into<Listeners>,
    shutdown: CancellationToken,
) -> Result<()> {
    let kube = if config.collector.collect_kubernetes {
        Some(
            kube::Client::try_default()
                .await
                .map_err(|e| Error::Kubernetes(e.to_string()))?,
        )
    } else {
        None
    };
    serve_with_kubernetes(config, listeners, kube, shutdown).await
}

/// [`serve`] with an explicit Kubernetes client for the collector (used
/// when `--collect-kubernetes` is set; `None` disables collection).
pub async fn serve_with_kubernetes(
    config: Config,
    listeners: impl Into<Listeners>,
    kube: Option<kube::Client>,
    shutdown: CancellationToken,
) -> Result<()> {
    config.validate()?;
    let mut shell = ServiceShell::new(ShellConfig {
        name: "apollo-ingest",
        grpc_services: &[SERVICE_NAME],
        tls: &config.grpc_tls,
        limits: &config.grpc_limits,
        observability: &config.observability,
    })
    .await?;
    // The bus outlives the gRPC server so in-flight publishes can finish.
    let bus = Bus::connect(
        "apollo-ingest",
        &config.nats,
        &config.streams,
        CancellationToken::new(),
    )
    .await?;
    bus.register_metrics(shell.registry());
    let metrics = metrics::Metrics::register(shell.registry());
    let settings = IngestSettings {
        max_future_skew: config.max_future_skew,
        publish_deadline: config.publish_deadline,
        max_inflight_acks: config.max_inflight_acks,
    };
    let publisher = Arc::new(Publisher::new(bus.clone(), metrics.clone(), settings));
    let collector_token = CancellationToken::new();
    let collector = kube.map(|client| {
        let collector_metrics = collector::CollectorMetrics::register(shell.registry());
        tracing::info!(interval = ?config.collector.interval, "collecting cluster state from kubernetes");
        collector::Collector::spawn(
            client,
            publisher.clone(),
            config.collector.clone(),
            collector_metrics,
            collector_token.clone(),
        )
    });
    let ready = match &collector {
        Some(c) => all_ready(
            vec![bus.readiness(), c.synced_once(shutdown.clone())],
            shutdown.clone(),
        ),
        None => bus.readiness(),
    };
    let insight = InsightServiceServer::new(IngestService::with_publisher(publisher));
    let api = oversized::CountOversized::new(insight, metrics);
    shell
        .start(listeners, api, ready, shutdown)
        .await?
        .drain(async {
            collector_token.cancel();
            if let Some(c) = collector {
                c.join().await;
            }
            bus.drain().await;
        })
        .await?;
    Ok(())
}
