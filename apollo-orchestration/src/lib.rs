//! Orchestration Policy Engine: forecast-driven migration, replica scaling,
//! storage provisioning, rebalancing and accelerator optimisation, behind
//! safety rails, streamed to subscribers and optionally executed by the
//! AI-Storage Orchestrator.
//!
//! - [`view`], [`forecast`]: the cluster as the planners see it.
//! - [`planner`]: one module per action, each with its thresholds.
//! - [`placement`]: migration targets judged by the shared placement core.
//! - [`rails`]: what may never happen, and how much may happen at once.
//! - [`engine`]: the planning cycle and the policy book.
//! - [`service`]: gRPC, the planning loop, JetStream delivery.
//! - [`executor`]: the orchestrator's REST API.
//! - [`kubernetes`]: metadata, Events and leader election (`--kubernetes`).

#![forbid(unsafe_code)]

pub mod config;
pub mod engine;
pub mod executor;
pub mod forecast;
pub mod kubernetes;
pub mod metrics;
pub mod placement;
pub mod planner;
pub mod policy;
pub mod rails;
pub mod service;
pub mod view;

use std::{sync::Arc, time::Duration};

use apollo_common::{grpc, grpc_tls, health, shutdown::CancellationToken, Bus, ClusterView};
use apollo_proto::orchestration_policy_service_server::OrchestrationPolicyServiceServer;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

pub use config::Config;

/// Errors of the service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Binding or serving failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The bus could not be set up.
    #[error(transparent)]
    Bus(#[from] apollo_common::BusError),
    /// The gRPC server failed.
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// No Kubernetes client configuration (in-cluster or KUBECONFIG).
    #[error("kubernetes client: {0}")]
    Kube(String),
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
/// With `--kubernetes` the client comes from the in-cluster config, else
/// KUBECONFIG.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    config.validate().map_err(Error::Config)?;
    let kube = if config.kube.kubernetes {
        Some(
            kube::Client::try_default()
                .await
                .map_err(|e| Error::Kube(e.to_string()))?,
        )
    } else {
        None
    };
    serve_with_kubernetes(config, listener, kube, shutdown).await
}

/// [`serve`] with a given Kubernetes client (tests pass one for a local API
/// server); `None` runs without Kubernetes whatever `--kubernetes` says.
pub async fn serve_with_kubernetes(
    config: Config,
    listener: TcpListener,
    kube: Option<kube::Client>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    config.validate().map_err(Error::Config)?;
    let tls = apollo_common::grpc_tls::ServerTls::from_args(&config.grpc_tls)
        .map_err(|e| Error::Config(e.to_string()))?;
    let bus_token = CancellationToken::new();
    let bus = Bus::connect(
        "apollo-orchestration",
        &config.nats,
        &config.streams,
        bus_token.clone(),
    )
    .await?;
    let view = ClusterView::new();
    let mut registry = Registry::default();
    view.register_metrics(&mut registry);
    let metrics = metrics::Metrics::default();
    metrics.register(&mut registry);
    let _follow = view.follow(bus.clone(), shutdown.clone());

    let engine = engine::Engine::new(config.engine(), view.clone(), metrics.clone());
    let work = shutdown.child_token();
    let (results_tx, mut results_rx) = tokio::sync::mpsc::channel(256);
    let executor = config
        .executor()
        .map(|cfg| executor::spawn(cfg, metrics.clone(), results_tx, work.clone()));
    let mut service = service::PolicyService::new(
        engine.clone(),
        bus.clone(),
        config.delivery(),
        executor,
        work.clone(),
    );
    let unavailable = if let Some(client) = kube {
        tokio::spawn(kubernetes::follow_metadata(
            client.clone(),
            engine.clone(),
            config.plan_interval,
            work.clone(),
        ));
        let (leader_tx, leader_rx) = tokio::sync::watch::channel(false);
        let lease = config.lease();
        tracing::info!(identity = %lease.identity, lease = %lease.name, namespace = %lease.namespace, "leader election");
        tokio::spawn(kubernetes::Elector::new(client.clone(), lease).run(
            leader_tx,
            metrics.clone(),
            work.clone(),
        ));
        service = service
            .with_events(kubernetes::EventRecorder::new(client, metrics.clone()))
            .with_leadership(leader_rx);
        "none until the first metadata read"
    } else {
        metrics.leader.set(1);
        "kubernetes metadata (owners inferred from pod names, PDBs and annotations not read), events, leader election"
    };
    {
        let service = service.clone();
        let work = work.clone();
        tokio::spawn(async move {
            loop {
                let r = tokio::select! {
                    _ = work.cancelled() => return,
                    r = results_rx.recv() => match r { Some(r) => r, None => return },
                };
                if let Err(status) = service.apply_result(&r).await {
                    tracing::warn!(request_id = %r.request_id, %status, "execution result not applied");
                }
            }
        });
    }
    tokio::spawn(service::follow_forecasts(
        bus.clone(),
        engine.clone(),
        work.clone(),
    ));
    tokio::spawn(service::planning_loop(
        service.clone(),
        view.clone(),
        config.plan_interval,
        config.plan_min_gap,
        work.clone(),
    ));
    tracing::info!(
        dry_run = config.rails.dry_run,
        executor = ?config.executor,
        unavailable,
        "planning"
    );

    let (readiness, health_service) = health::Readiness::new(vec![service::SERVICE_NAME]).await;
    let (metrics_addr, _http) = health::spawn_http(
        config.observability.metrics_addr,
        Arc::new(registry),
        readiness.clone(),
        shutdown.clone(),
    )
    .await?;
    tracing::info!(grpc = %listener.local_addr()?, metrics = %metrics_addr, "apollo-orchestration listening");

    let ready_task = readiness.follow(
        view.serving_readiness(&bus, shutdown.clone()),
        shutdown.clone(),
    );

    let grace = config.observability.shutdown_grace;
    let drain = shutdown.clone();
    let server = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(grpc::reflection_service()?)
        .add_service(OrchestrationPolicyServiceServer::new(service))
        .serve_with_incoming_shutdown(grpc_tls::incoming(listener, tls.as_ref()), async move {
            drain.cancelled().await;
        });
    grpc::serve_with_grace(server, shutdown.clone(), grace).await?;
    work.cancel();
    let _ = tokio::time::timeout(grace.min(Duration::from_secs(5)), ready_task).await;
    bus.drain().await;
    bus_token.cancel();
    Ok(())
}
