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
pub mod mailbox;
pub mod metrics;
pub mod outbox;
pub mod placement;
pub mod planner;
pub mod policy;
pub mod rails;
pub mod service;
pub mod spool;
pub mod view;

use apollo_common::{
    shell::{Listeners, ServiceShell, ShellConfig},
    shutdown::CancellationToken,
    Bus, ClusterView,
};
use apollo_proto::orchestration_policy_service_server::OrchestrationPolicyServiceServer;

pub use config::Config;

/// Errors of the service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The bus could not be set up.
    #[error(transparent)]
    Bus(#[from] apollo_common::BusError),
    /// No Kubernetes client configuration (in-cluster or KUBECONFIG).
    #[error("kubernetes client: {0}")]
    Kube(String),
    /// The gRPC server could not start or failed.
    #[error(transparent)]
    Server(#[from] apollo_common::shell::ShellError),
}

/// Binds the configured addresses and serves until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let listeners = Listeners::bind(config.grpc_addr, config.observability.metrics_addr).await?;
    serve(config, listeners, shutdown).await
}

/// Serves on already bound listeners (tests bind `127.0.0.1:0`; a gRPC
/// listener alone binds `--metrics-addr`), then drains within
/// `--shutdown-grace`.
/// With `--kubernetes` the client comes from the in-cluster config, else
/// KUBECONFIG.
pub async fn serve(
    config: Config,
    listeners: impl Into<Listeners>,
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
    serve_with_kubernetes(config, listeners, kube, shutdown).await
}

/// [`serve`] with a given Kubernetes client (tests pass one for a local API
/// server); `None` runs without Kubernetes whatever `--kubernetes` says.
pub async fn serve_with_kubernetes(
    config: Config,
    listeners: impl Into<Listeners>,
    kube: Option<kube::Client>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    config.validate().map_err(Error::Config)?;
    let mut shell = ServiceShell::new(ShellConfig {
        name: "apollo-orchestration",
        grpc_services: &[service::SERVICE_NAME],
        tls: &config.grpc_tls,
        limits: &config.grpc_limits,
        observability: &config.observability,
    })
    .await?;
    let bus = Bus::connect(
        "apollo-orchestration",
        &config.nats,
        &config.streams,
        CancellationToken::new(),
    )
    .await?;
    let view = ClusterView::with_limits(config.view.clone());
    bus.register_metrics(shell.registry());
    view.register_metrics(shell.registry());
    let metrics = metrics::Metrics::default();
    metrics.register(shell.registry());
    view.follow(bus.clone(), shutdown.clone());

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
        executor.clone(),
        // Subscription streams end with a status as soon as shutdown
        // starts, so the server's drain does not wait for them.
        shutdown.child_token(),
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
    // What a previous run could not store goes first, ahead of anything
    // this run issues; the spool is removed once all of it is stored.
    let spool_cleared = config
        .outbox_spool
        .clone()
        .map(|path| restore_spool(path, &service, &bus, &metrics, work.clone()));
    let outbox_task = tokio::spawn(service.outbox().clone().run(work.clone()));
    tokio::spawn(service::follow_forecasts(
        bus.clone(),
        engine.clone(),
        work.clone(),
    ));
    // Planning starts once the engine has taken back what it published
    // before a restart (cooldowns, moves under way, its policy book); the
    // service reports SERVING only then.
    let (restored_tx, restored) = tokio::sync::watch::channel(false);
    {
        // Planning stops as soon as shutdown starts: nothing new is issued
        // or executed while the rest drains.
        let (service, view, bus, engine, work) = (
            service.clone(),
            view.clone(),
            bus.clone(),
            engine.clone(),
            shutdown.clone(),
        );
        let (interval, min_gap) = (config.plan_interval, config.plan_min_gap);
        tokio::spawn(async move {
            if service::restore_until_done(&bus, &engine, &work).await {
                restored_tx.send_replace(true);
                service::planning_loop(service, view, interval, min_gap, work).await;
            }
        });
    }
    tracing::info!(
        dry_run = config.rails.dry_run,
        executor = ?config.executor,
        unavailable,
        "planning"
    );

    let outbox = service.outbox().clone();
    let finishing = service.clone();
    let grace = config.observability.shutdown_grace;
    let spool_path = config.outbox_spool.clone();
    let spool_metrics = metrics.clone();
    // When shutdown started: the outbox keeps trying until three quarters
    // of the grace period from then, leaving the rest for the spool and
    // the bus drain.
    let stopping = {
        let s = shutdown.clone();
        tokio::spawn(async move {
            s.cancelled().await;
            tokio::time::Instant::now()
        })
    };
    let api = OrchestrationPolicyServiceServer::new(service);
    shell
        .start(
            listeners,
            api,
            all_of(
                view.serving_readiness(&bus, shutdown.clone()),
                restored,
                shutdown.clone(),
            ),
            shutdown,
        )
        .await?
        .drain(async move {
            // Deadlines count from the start of shutdown, which the pre-stop
            // window already used part of: the whole stop fits the grace.
            let started = stopping
                .await
                .unwrap_or_else(|_| tokio::time::Instant::now());
            // Executions under way get until half the grace period to
            // finish; the rest are recorded as not done (a failed result
            // saying so), published with everything else in the outbox.
            if let Some(executor) = &executor {
                let until = started + grace / 2;
                if tokio::time::timeout_at(until, executor.idle()).await.is_err() {
                    for r in executor.abandon() {
                        tracing::warn!(request_id = %r.request_id, "execution abandoned at shutdown");
                        if let Err(status) = finishing.apply_result(&r).await {
                            tracing::warn!(request_id = %r.request_id, %status, "abandoned execution not recorded");
                        }
                    }
                }
            }
            let deadline = started + grace.mul_f64(0.75);
            if !outbox.drained_by(deadline).await {
                tracing::warn!(
                    waiting = outbox.depth(),
                    "outbox not stored within the drain deadline"
                );
            }
            work.cancel();
            // The outbox task and the spool remover end before the spool is
            // written (a publish in flight finishes or fails first).
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), outbox_task).await;
            if let Some(cleared) = spool_cleared {
                let _ = cleared.await;
            }
            let left = outbox.take_all();
            match (&spool_path, left.is_empty()) {
                (None, true) => {}
                // Everything loaded from the spool left the outbox.
                (Some(path), true) => {
                    if let Err(err) = spool::remove(path) {
                        tracing::warn!(%err, "outbox spool not removed");
                    }
                }
                (Some(path), false) => match spool::write(path, &left) {
                    Ok(n) => {
                        spool_metrics.outbox_spool("written", n as u64);
                        tracing::warn!(
                            spooled = n,
                            path = %path.display(),
                            "policies and results not stored, spooled for the next start"
                        );
                    }
                    Err(err) => tracing::error!(
                        lost = left.len(),
                        %err,
                        "policies and results not stored and not spooled: lost"
                    ),
                },
                (None, false) => tracing::error!(
                    lost = left.len(),
                    "policies and results not stored (no --outbox-spool): lost"
                ),
            }
            bus.drain().await;
        })
        .await?;
    Ok(())
}

/// Queues what the spool at `path` holds ahead of everything else and
/// returns the task that removes the file once all of it left the outbox
/// (it ends early, leaving the file, when `work` is cancelled).
fn restore_spool(
    path: std::path::PathBuf,
    service: &service::PolicyService,
    bus: &Bus,
    metrics: &metrics::Metrics,
    work: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let loaded = match spool::load(&path, bus.subjects()) {
        Ok(l) => l,
        Err(err) => {
            // Moved aside for someone to look at; the service runs on.
            let aside = path.with_extension("unreadable");
            let _ = std::fs::rename(&path, &aside);
            tracing::error!(%err, kept = %aside.display(), "outbox spool not read");
            return tokio::spawn(async {});
        }
    };
    for (line, why) in &loaded.rejected {
        tracing::error!(path = %path.display(), line, why, "outbox spool line skipped");
    }
    if !loaded.rejected.is_empty() {
        let copy = path.with_extension("rejected");
        if std::fs::copy(&path, &copy).is_ok() {
            tracing::warn!(kept = %copy.display(), "outbox spool with skipped lines copied");
        }
    }
    metrics.outbox_spool("rejected", loaded.rejected.len() as u64);
    let n = loaded.messages.len();
    if n == 0 && loaded.rejected.is_empty() {
        return tokio::spawn(async {});
    }
    metrics.outbox_spool("loaded", n as u64);
    tracing::info!(messages = n, path = %path.display(), "publishing the outbox spool first");
    let outbox = service.outbox().clone();
    let last = outbox.restore(loaded.messages);
    tokio::spawn(async move {
        tokio::select! {
            _ = work.cancelled() => {}
            _ = outbox.sent_past(last) => {
                match spool::remove(&path) {
                    Ok(()) => tracing::info!(messages = n, "outbox spool stored"),
                    Err(err) => tracing::warn!(%err, "outbox spool stored but not removed"),
                }
            }
        }
    })
}

/// True while both `a` and `b` are.
fn all_of(
    mut a: tokio::sync::watch::Receiver<bool>,
    mut b: tokio::sync::watch::Receiver<bool>,
    shutdown: CancellationToken,
) -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        loop {
            let both = *a.borrow_and_update() && *b.borrow_and_update();
            tx.send_replace(both);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = a.changed() => if r.is_err() { return },
                r = b.changed() => if r.is_err() { return },
            }
        }
    });
    rx
}
