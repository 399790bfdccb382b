//! Orchestration Policy Engine.
//!
//! This release runs the service shell: it joins the bus, follows the
//! `ClusterView` and answers gRPC health and reflection, so it can be deployed
//! and probed alongside the other services. The policy RPCs
//! (`OrchestrationPolicyService`) are not served yet; clients get
//! `UNIMPLEMENTED` from tonic's router rather than an invented answer.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use apollo_common::{
    config::{NatsArgs, ObservabilityArgs, StreamArgs},
    grpc, health,
    shutdown::CancellationToken,
    Bus, ClusterView,
};
use clap::Parser;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// Configuration of `apollo-orchestration`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "apollo-orchestration",
    version,
    about = "APOLLO Orchestration Policy Engine"
)]
pub struct Config {
    /// Address of the gRPC server.
    #[arg(long, env = "APOLLO_GRPC_ADDR", default_value = "0.0.0.0:50053")]
    pub grpc_addr: SocketAddr,
    /// NATS connection.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Stream retention.
    #[command(flatten)]
    pub streams: StreamArgs,
    /// Metrics, logs, shutdown.
    #[command(flatten)]
    pub observability: ObservabilityArgs,
}

/// Errors of the service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Binding or serving failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The bus could not be set up.
    #[error(transparent)]
    Bus(#[from] apollo_common::BusError),
    /// The gRPC server failed.
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection could not be built.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// Binds the configured addresses and serves until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let listener = TcpListener::bind(config.grpc_addr).await?;
    serve(config, listener, shutdown).await
}

/// Serves on an already bound gRPC listener (tests bind `127.0.0.1:0`).
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let bus = Bus::connect(
        "apollo-orchestration",
        &config.nats,
        &config.streams,
        shutdown.clone(),
    )
    .await?;
    let view = ClusterView::new();
    let mut registry = Registry::default();
    view.register_metrics(&mut registry);
    let _follow = view.follow(bus.clone(), shutdown.clone());

    let (readiness, health_service) =
        health::Readiness::new(vec!["apollo.OrchestrationPolicyService"]).await;
    let (metrics_addr, _http) = health::spawn_http(
        config.observability.metrics_addr,
        Arc::new(registry),
        readiness.clone(),
        shutdown.clone(),
    )
    .await?;
    tracing::info!(grpc = %listener.local_addr()?, metrics = %metrics_addr, "apollo-orchestration listening");

    let ready_task = readiness.follow(bus.readiness(), shutdown.clone());

    let grace = config.observability.shutdown_grace;
    let drain = shutdown.clone();
    let server = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(grpc::reflection_service()?)
        .serve_with_incoming_shutdown(grpc::incoming(listener), async move {
            drain.cancelled().await;
        });
    grpc::serve_with_grace(server, shutdown.clone(), grace).await?;
    let _ = tokio::time::timeout(grace.min(Duration::from_secs(5)), ready_task).await;
    bus.drain().await;
    Ok(())
}
