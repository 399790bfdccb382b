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
    grpc::reflection_service,
    health::{serve_http, Readiness},
    shutdown::CancellationToken,
    Bus,
};
use apollo_proto::insight_service_server::InsightServiceServer;
use prometheus_client::registry::Registry;
use tokio::{net::TcpListener, sync::watch};

pub use config::Config;
pub use error::{Error, Result};
pub use service::{IngestService, IngestSettings, Publisher};

/// Fully qualified name of the gRPC service, as reported by gRPC health.
pub const SERVICE_NAME: &str = "apollo.InsightService";

/// Readiness that holds while both `a` and `b` are ready.
fn both_ready(
    mut a: watch::Receiver<bool>,
    mut b: watch::Receiver<bool>,
    shutdown: CancellationToken,
) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(*a.borrow() && *b.borrow());
    tokio::spawn(async move {
        loop {
            let both = *a.borrow_and_update() && *b.borrow_and_update();
            tx.send_if_modified(|v| std::mem::replace(v, both) != both);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                r = a.changed() => if r.is_err() { break },
                r = b.changed() => if r.is_err() { break },
            }
        }
    });
    rx
}

/// Binds the configured addresses and serves until SIGTERM/SIGINT, then
/// drains within `--shutdown-grace`.
pub async fn run(config: Config) -> Result<()> {
    let grpc = TcpListener::bind(config.grpc_addr)
        .await
        .map_err(|source| Error::Io {
            what: format!("failed to bind gRPC address {}", config.grpc_addr),
            source,
        })?;
    let metrics_addr = config.observability.metrics_addr;
    let http = TcpListener::bind(metrics_addr)
        .await
        .map_err(|source| Error::Io {
            what: format!("failed to bind metrics address {metrics_addr}"),
            source,
        })?;
    tracing::info!(grpc = %config.grpc_addr, metrics = %metrics_addr, "apollo-ingest listening");
    serve(config, grpc, http, apollo_common::shutdown::on_signal()).await
}

/// Serves gRPC on `grpc` and `/metrics`, `/healthz`, `/readyz` on `http`
/// until `shutdown` is cancelled. Then health turns NOT_SERVING, the server
/// stops accepting and in-flight calls get `--shutdown-grace` to finish
/// before the NATS connection is drained.
pub async fn serve(
    config: Config,
    grpc: TcpListener,
    http: TcpListener,
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
    serve_with_kubernetes(config, grpc, http, kube, shutdown).await
}

/// [`serve`] with an explicit Kubernetes client for the collector (used
/// when `--collect-kubernetes` is set; `None` disables collection).
pub async fn serve_with_kubernetes(
    config: Config,
    grpc: TcpListener,
    http: TcpListener,
    kube: Option<kube::Client>,
    shutdown: CancellationToken,
) -> Result<()> {
    config.validate()?;
    let tls = apollo_common::grpc_tls::ServerTls::from_args(&config.grpc_tls)
        .map_err(|e| Error::Config(e.to_string()))?;
    // The bus outlives the gRPC server so in-flight publishes can finish.
    let bus_token = CancellationToken::new();
    let bus = Bus::connect("apollo-ingest", &config.nats, &config.streams, bus_token).await?;

    let mut registry = Registry::default();
    bus.register_metrics(&mut registry);
    let metrics = metrics::Metrics::register(&mut registry);
    let (readiness, health) = Readiness::new(vec![SERVICE_NAME]).await;
    // tonic-health reports the overall service SERVING until told otherwise.
    readiness.set(false).await;

    let settings = IngestSettings {
        max_future_skew: config.max_future_skew,
        publish_deadline: config.publish_deadline,
        max_inflight_acks: config.max_inflight_acks,
    };
    let publisher = Arc::new(Publisher::new(bus.clone(), metrics.clone(), settings));
    let collector_token = CancellationToken::new();
    let collector = kube.map(|client| {
        let collector_metrics = collector::CollectorMetrics::register(&mut registry);
        tracing::info!(interval = ?config.collector.interval, "collecting cluster state from kubernetes");
        collector::Collector::spawn(
            client,
            publisher.clone(),
            config.collector.clone(),
            collector_metrics,
            collector_token.clone(),
        )
    });
    let source = match &collector {
        Some(c) => both_ready(bus.readiness(), c.readiness(), shutdown.clone()),
        None => bus.readiness(),
    };
    let http_token = CancellationToken::new();
    let http_task = tokio::spawn(serve_http(
        http,
        Arc::new(registry),
        readiness.clone(),
        http_token.clone(),
    ));
    let follower = readiness.follow(source, shutdown.clone());
    let insight = InsightServiceServer::new(IngestService::with_publisher(publisher))
        .max_decoding_message_size(config.max_message_bytes);
    let reflection = reflection_service().map_err(|e| Error::Config(format!("reflection: {e}")))?;

    let server = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection)
        .add_service(oversized::CountOversized::new(insight, metrics))
        .serve_with_incoming_shutdown(
            apollo_common::grpc_tls::incoming(grpc, tls.as_ref()),
            shutdown.clone().cancelled_owned(),
        );
    let mut server = std::pin::pin!(server);

    let served = tokio::select! {
        res = &mut server => res,
        _ = shutdown.cancelled() => {
            readiness.set(false).await;
            let grace = config.observability.shutdown_grace;
            match tokio::time::timeout(grace, &mut server).await {
                Ok(res) => res,
                Err(_) => {
                    tracing::warn!(?grace, "grace period over, abandoning in-flight calls");
                    Ok(())
                }
            }
        }
    };
    follower.abort();
    readiness.set(false).await;
    collector_token.cancel();
    if let Some(c) = collector {
        c.join().await;
    }
    bus.drain().await;
    http_token.cancel();
    let _ = http_task.await;
    tracing::info!("apollo-ingest stopped");
    served.map_err(Error::from)
}
