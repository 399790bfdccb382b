//! gRPC `SchedulingPolicyService`, the policy/feedback publisher, metrics and
//! the server's lifecycle.
//!
//! # Answers
//!
//! `GetSchedulingPolicy` always answers OK with a fresh uuid v4 `request_id`,
//! except for a request without pod name or namespace, which the scheduler
//! never sends and which gets INVALID_ARGUMENT (there is nothing to key the
//! policy by). Unknown namespaces, missing signatures, garbage annotations and
//! missing or stale cluster data all give a safe ALLOW with the reason.
//!
//! `ReportSchedulingResult` is idempotent per `request_id`: the first report
//! updates the assume cache and penalties and is published on
//! `apollo.feedback.scheduling.<ns>.<pod>`; a repeat answers success with
//! message "duplicate". A report without `request_id` is INVALID_ARGUMENT.
//!
//! # Publishing
//!
//! Every issued policy is published on `apollo.policy.scheduling.<ns>.<pod>`
//! off the hot path: handlers put it on a bounded queue that a publisher task
//! drains (a bounded number of JetStream acks in flight). A full queue drops
//! the message, counts it and logs; NATS being down counts a failure.

use std::sync::Arc;
use std::time::{Duration, Instant};

use apollo_common::bus::Subjects;
use apollo_common::health::{all_ready, always};
use apollo_common::shell::{Listeners, ServiceShell, ShellConfig};
use apollo_common::shutdown::CancellationToken;
use apollo_common::{Bus, ClusterView};
use apollo_proto::scheduling_policy_service_server::{
    SchedulingPolicyService, SchedulingPolicyServiceServer,
};
use apollo_proto::{
    ReportResponse, SchedulingDecision, SchedulingPolicy, SchedulingPolicyRequest, SchedulingResult,
};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};
use tracing::{instrument, Instrument as _};

use crate::config::Config;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::feedback::{SeenIds, DUPLICATE};
use crate::rebuild::{rebuild, Assumption, RebuildReport};
use crate::state::{ClusterState, FeedbackEffect};

/// Fully qualified gRPC service name (for health).
pub const SERVICE_NAME: &str = "apollo.SchedulingPolicyService";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabel {
    rpc: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabel {
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndLabel {
    how: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    rpc: &'static str,
    reason: &'static str,
}

/// Prometheus metrics of the service.
#[derive(Clone, Debug)]
pub struct Metrics {
    requests: Family<RpcLabel, Counter>,
    rejected: Family<ReasonLabel, Counter>,
    decisions: Family<DecisionLabel, Counter>,
    decision_seconds: Histogram,
    feedback: Counter,
    feedback_duplicates: Counter,
    feedback_failures: Counter,
    published: Family<KindLabel, Counter>,
    publish_failures: Family<KindLabel, Counter>,
    publish_dropped: Family<KindLabel, Counter>,
    nodes: Gauge,
    stale_nodes: Gauge,
    assumed: Gauge,
    assumptions_ended: Family<EndLabel, Counter>,
    penalised: Gauge,
    rebuilt: Family<RebuiltLabel, Gauge>,
    rebuild_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RebuiltLabel {
    what: &'static str,
}

/// Bounds of `apollo_scheduling_decision_seconds`: doubling from 25 µs, plus
/// one at the 1 ms answer target so the share of decisions within it is read
/// directly rather than from the 0.8 ms bound below it.
fn decision_buckets() -> impl Iterator<Item = f64> {
    const TARGET_S: f64 = 1e-3;
    let mut bounds: Vec<f64> = exponential_buckets(25e-6, 2.0, 16).collect();
    bounds.push(TARGET_S);
    bounds.sort_by(f64::total_cmp);
    bounds.into_iter()
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            rejected: Family::default(),
            decisions: Family::default(),
            decision_seconds: Histogram::new(decision_buckets()),
            feedback: Counter::default(),
            feedback_duplicates: Counter::default(),
            feedback_failures: Counter::default(),
            published: Family::default(),
            publish_failures: Family::default(),
            publish_dropped: Family::default(),
            nodes: Gauge::default(),
            stale_nodes: Gauge::default(),
            assumed: Gauge::default(),
            assumptions_ended: Family::default(),
            penalised: Gauge::default(),
            rebuilt: Family::default(),
            rebuild_seconds: Gauge::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric under `apollo_scheduling_*`.
    pub fn register(&self, r: &mut Registry) {
        // Every decision's series exists from the start (at 0).
        for decision in ["allow", "prefer", "require", "delay", "reject"] {
            let _ = self.decisions.get_or_create(&DecisionLabel { decision });
        }
        let r = r.sub_registry_with_prefix("apollo_scheduling");
        r.register("requests", "gRPC requests received", self.requests.clone());
        r.register(
            "requests_rejected",
            "gRPC requests answered with an error, by reason",
            self.rejected.clone(),
        );
        r.register(
            "decisions",
            "Policies issued, by decision",
            self.decisions.clone(),
        );
        r.register(
            "decision_seconds",
            "Server-side time to build a policy",
            self.decision_seconds.clone(),
        );
        r.register(
            "feedback_received",
            "Scheduling results received",
            self.feedback.clone(),
        );
        r.register(
            "feedback_duplicates",
            "Scheduling results already reported under the same request id",
            self.feedback_duplicates.clone(),
        );
        r.register(
            "feedback_bind_failures",
            "Scheduling results reporting a failed bind",
            self.feedback_failures.clone(),
        );
        r.register(
            "published",
            "Messages published, by kind",
            self.published.clone(),
        );
        r.register(
            "publish_failures",
            "Messages NATS did not store, by kind",
            self.publish_failures.clone(),
        );
        r.register(
            "publish_dropped",
            "Messages dropped because the publish queue was full, by kind",
            self.publish_dropped.clone(),
        );
        r.register(
            "nodes",
            "Nodes with fresh data in the snapshot",
            self.nodes.clone(),
        );
        r.register(
            "stale_nodes",
            "Nodes left out because their data is stale",
            self.stale_nodes.clone(),
        );
        r.register(
            "assumed_pods",
            "Pods assumed on their recommended node",
            self.assumed.clone(),
        );
        r.register(
            "assumptions_ended",
            "Assumed placements ended, by how (listed, bound_then_seen, covered, expired, bind_failed, no_longer_fits, evicted past --max-assumed)",
            self.assumptions_ended.clone(),
        );
        r.register(
            "penalised_nodes",
            "Nodes with a bind-failure penalty",
            self.penalised.clone(),
        );
        for what in REBUILT {
            let _ = self.rebuilt.get_or_create(&RebuiltLabel { what });
        }
        r.register(
            "rebuilt",
            "What the start-up rebuild read back and restored, by what (policies_read, feedback_read, skipped, dropped_oldest, feedback_ids, assumptions, penalties, not_assumable, timed_out)",
            self.rebuilt.clone(),
        );
        r.register(
            "rebuild_seconds",
            "Time the start-up rebuild of the assume cache and penalties took",
            self.rebuild_seconds.clone(),
        );
    }

    fn record_rebuild(&self, r: &RebuildReport, took: Duration) {
        let set = |what: &'static str, v: u64| {
            self.rebuilt
                .get_or_create(&RebuiltLabel { what })
                .set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        set("policies_read", r.policies_read);
        set("feedback_read", r.feedback_read);
        set("skipped", r.skipped);
        set("dropped_oldest", r.dropped_oldest);
        set("feedback_ids", r.feedback_ids);
        set("assumptions", r.restored.assumptions as u64);
        set("penalties", r.restored.penalties as u64);
        set("not_assumable", r.restored.not_assumable as u64);
        set("timed_out", u64::from(r.timed_out));
        self.rebuild_seconds.set(took.as_secs_f64());
    }

    fn update_state(&self, state: &ClusterState) {
        let s = state.stats();
        self.nodes.set(s.nodes as i64);
        self.stale_nodes.set(s.stale_nodes as i64);
        self.assumed.set(s.assumed as i64);
        self.penalised.set(s.penalised as i64);
        let e = s.ended;
        for (how, total) in [
            ("listed", e.listed),
            ("bound_then_seen", e.bound_then_seen),
            ("covered", e.covered),
            ("expired", e.expired),
            ("bind_failed", e.bind_failed),
            ("no_longer_fits", e.no_longer_fits),
            ("evicted", e.evicted),
        ] {
            // The state keeps running totals; the counter follows them.
            let c = self.assumptions_ended.get_or_create(&EndLabel { how });
            c.inc_by(total.saturating_sub(c.get()));
        }
    }
}

/// Labels of `apollo_scheduling_rebuilt`.
const REBUILT: [&str; 9] = [
    "policies_read",
    "feedback_read",
    "skipped",
    "dropped_oldest",
    "feedback_ids",
    "assumptions",
    "penalties",
    "not_assumable",
    "timed_out",
];

fn decision_name(d: i32) -> &'static str {
    match SchedulingDecision::try_from(d).unwrap_or_default() {
        SchedulingDecision::Unspecified => "unspecified",
        SchedulingDecision::Allow => "allow",
        SchedulingDecision::Prefer => "prefer",
        SchedulingDecision::Require => "require",
        SchedulingDecision::Delay => "delay",
        SchedulingDecision::Reject => "reject",
    }
}

/// What `apolloctl explain` reads back for a `request_id`: the request, the
/// policy with every preferred node's factors (its `reason`) and the state of
/// the engine's view when it decided. Kept in the decision bucket for
/// `--decision-record-ttl`.
#[derive(Debug, serde::Serialize)]
struct DecisionRecord {
    kind: &'static str,
    request_id: String,
    decided_at: String,
    request: SchedulingPolicyRequest,
    policy: SchedulingPolicy,
    view: ViewSummary,
}

#[derive(Debug, serde::Serialize)]
struct ViewSummary {
    nodes: usize,
    stale_nodes: usize,
    assumed_pods: usize,
    penalised_nodes: usize,
}

/// A message waiting to be published.
#[derive(Debug)]
enum Outgoing {
    /// A policy, with what it assumed (published in a header so that a
    /// restarted engine can assume it again).
    Policy(Box<(SchedulingPolicy, Option<Assumption>)>),
    Record(Box<DecisionRecord>),
    Feedback(SchedulingResult),
}

impl Outgoing {
    fn kind(&self) -> &'static str {
        match self {
            Self::Policy(_) => "policy",
            Self::Record(_) => "decision_record",
            Self::Feedback(_) => "feedback",
        }
    }

    fn subject(&self, s: &Subjects) -> Option<String> {
        match self {
            Self::Policy(p) => s.scheduling_policy(&p.0.pod_namespace, &p.0.pod_name).ok(),
            Self::Record(r) => Some(r.request_id.clone()),
            Self::Feedback(f) => s.scheduling_feedback(&f.pod_namespace, &f.pod_name).ok(),
        }
    }
}

#[derive(Debug)]
struct Shared {
    engine: Arc<Engine>,
    metrics: Metrics,
    /// Messages to publish, each with the span of the call that made it so
    /// the published message continues that call's trace.
    queue: mpsc::Sender<(Outgoing, tracing::Span)>,
    seen: Arc<SeenIds>,
}

/// The gRPC handler.
#[derive(Debug, Clone)]
pub struct SchedulingService {
    shared: Arc<Shared>,
}

impl SchedulingService {
    fn enqueue(&self, msg: Outgoing) {
        let kind = msg.kind();
        if let Err(err) = self.shared.queue.try_send((msg, tracing::Span::current())) {
            self.shared
                .metrics
                .publish_dropped
                .get_or_create(&KindLabel { kind })
                .inc();
            tracing::warn!(
                kind,
                full = matches!(err, mpsc::error::TrySendError::Full(_)),
                "publish queue unavailable, message dropped"
            );
        }
    }

    fn reject(&self, rpc: &'static str, reason: &'static str, err: Error) -> Status {
        self.shared
            .metrics
            .rejected
            .get_or_create(&ReasonLabel { rpc, reason })
            .inc();
        err.into()
    }
}

#[tonic::async_trait]
impl SchedulingPolicyService for SchedulingService {
    #[instrument(skip_all, fields(ns = %request.get_ref().pod_namespace, pod = %request.get_ref().pod_name))]
    async fn get_scheduling_policy(
        &self,
        request: Request<SchedulingPolicyRequest>,
    ) -> Result<Response<SchedulingPolicy>, Status> {
        let m = &self.shared.metrics;
        m.requests
            .get_or_create(&RpcLabel {
                rpc: "GetSchedulingPolicy",
            })
            .inc();
        let req = request.into_inner();
        if req.pod_name.trim().is_empty() || req.pod_namespace.trim().is_empty() {
            return Err(self.reject(
                "GetSchedulingPolicy",
                "missing pod identity",
                Error::InvalidArgument("pod_name and pod_namespace are required".into()),
            ));
        }
        let start = Instant::now();
        let (policy, assumed) = self.shared.engine.decide_assuming(&req);
        m.decision_seconds.observe(start.elapsed().as_secs_f64());
        m.decisions
            .get_or_create(&DecisionLabel {
                decision: decision_name(policy.decision),
            })
            .inc();
        tracing::debug!(request_id = %policy.request_id, decision = decision_name(policy.decision), "policy issued");
        self.enqueue(Outgoing::Policy(Box::new((policy.clone(), assumed))));
        let stats = self.shared.engine.state().stats();
        self.enqueue(Outgoing::Record(Box::new(DecisionRecord {
            kind: "scheduling",
            request_id: policy.request_id.clone(),
            decided_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            request: req,
            policy: policy.clone(),
            view: ViewSummary {
                nodes: stats.nodes,
                stale_nodes: stats.stale_nodes,
                assumed_pods: stats.assumed,
                penalised_nodes: stats.penalised,
            },
        })));
        Ok(Response::new(policy))
    }

    #[instrument(skip_all, fields(request_id = %request.get_ref().request_id, node = %request.get_ref().scheduled_node))]
    async fn report_scheduling_result(
        &self,
        request: Request<SchedulingResult>,
    ) -> Result<Response<ReportResponse>, Status> {
        let m = &self.shared.metrics;
        m.requests
            .get_or_create(&RpcLabel {
                rpc: "ReportSchedulingResult",
            })
            .inc();
        let result = request.into_inner();
        if result.request_id.trim().is_empty() {
            return Err(self.reject(
                "ReportSchedulingResult",
                "missing request id",
                Error::InvalidArgument("request_id is required".into()),
            ));
        }
        m.feedback.inc();
        if !self.shared.seen.first_time(&result.request_id) {
            m.feedback_duplicates.inc();
            return Ok(Response::new(ReportResponse {
                success: true,
                message: DUPLICATE.into(),
                request_id: result.request_id,
            }));
        }
        if !result.success {
            m.feedback_failures.inc();
        }
        let effect = if result.pod_name.is_empty() || result.pod_namespace.is_empty() {
            FeedbackEffect::NoAssumption
        } else {
            self.shared.engine.state().feedback(
                &(result.pod_namespace.clone(), result.pod_name.clone()),
                &result.request_id,
                result.success,
                result.scheduled_node.trim(),
            )
        };
        let message = match effect {
            FeedbackEffect::Confirmed => "recorded",
            FeedbackEffect::Failed => "recorded; assumption dropped, node penalised",
            FeedbackEffect::NoAssumption if result.success => {
                "recorded; no pending placement for this pod"
            }
            FeedbackEffect::NoAssumption => "recorded; node penalised",
        };
        let request_id = result.request_id.clone();
        if !result.pod_name.is_empty() && !result.pod_namespace.is_empty() {
            self.enqueue(Outgoing::Feedback(result));
        }
        Ok(Response::new(ReportResponse {
            success: true,
            message: message.into(),
            request_id,
        }))
    }
}

/// Publishes queued messages until the queue closes; at most `in_flight` acks
/// awaited at once.
async fn run_publisher(
    bus: Option<Bus>,
    subjects: Subjects,
    mut rx: mpsc::Receiver<(Outgoing, tracing::Span)>,
    metrics: Metrics,
    in_flight: usize,
) {
    let mut acks = FuturesUnordered::new();
    loop {
        let msg = if acks.len() >= in_flight {
            None
        } else {
            tokio::select! {
                m = rx.recv() => match m { Some(m) => Some(m), None => break },
                Some((kind, r)) = acks.next(), if !acks.is_empty() => {
                    count_ack(&metrics, kind, r);
                    continue;
                }
            }
        };
        let Some((msg, span)) = msg else {
            if let Some((kind, r)) = acks.next().await {
                count_ack(&metrics, kind, r);
            }
            continue;
        };
        let kind = msg.kind();
        let fail = |why: &dyn std::fmt::Display| {
            metrics
                .publish_failures
                .get_or_create(&KindLabel { kind })
                .inc();
            tracing::debug!(kind, %why, "publish failed");
        };
        let (Some(bus), Some(subject)) = (&bus, msg.subject(&subjects)) else {
            fail(&"no bus or no subject");
            continue;
        };
        type Ack = std::pin::Pin<
            Box<
                dyn std::future::Future<Output = std::result::Result<(), apollo_common::BusError>>
                    + Send,
            >,
        >;
        let started: std::result::Result<Ack, _> = match msg {
            Outgoing::Policy(p) => bus
                .start_publish_with_headers(
                    subject,
                    &p.0,
                    p.1.as_ref()
                        .and_then(Assumption::to_headers)
                        .unwrap_or_default(),
                )
                .instrument(span)
                .await
                .map(|a| Box::pin(async move { a.await.map(|_| ()) }) as Ack),
            Outgoing::Record(r) => {
                let bus = bus.clone();
                Ok(
                    Box::pin(async move { bus.put_decision_record(&r.request_id, &r).await })
                        as Ack,
                )
            }
            Outgoing::Feedback(f) => bus
                .start_publish(subject, &f)
                .instrument(span)
                .await
                .map(|a| Box::pin(async move { a.await.map(|_| ()) }) as Ack),
        };
        match started {
            Ok(ack) => acks.push(async move { (kind, ack.await) }),
            Err(err) => fail(&err),
        }
    }
    while let Some((kind, r)) = acks.next().await {
        count_ack(&metrics, kind, r);
    }
}

fn count_ack(
    metrics: &Metrics,
    kind: &'static str,
    r: std::result::Result<(), apollo_common::BusError>,
) {
    match r {
        Ok(_) => {
            metrics.published.get_or_create(&KindLabel { kind }).inc();
        }
        Err(err) => {
            metrics
                .publish_failures
                .get_or_create(&KindLabel { kind })
                .inc();
            tracing::warn!(kind, %err, "publish not acknowledged");
        }
    }
}

/// Once NATS is up and the view replayed, rebuilds the assume cache,
/// penalties and reported ids from the streams (see [`crate::rebuild`]);
/// the returned readiness turns true when that is done, and stays true.
fn spawn_rebuild(
    bus: Bus,
    state: Arc<ClusterState>,
    seen: Arc<SeenIds>,
    service: crate::config::ServiceArgs,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut bus_ready = bus.readiness();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = bus_ready.wait_for(|r| *r) => if r.is_err() { return },
        }
        let view = state.view().clone();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                synced = view.wait_synced(Duration::from_secs(5)) => if synced { break },
            }
        }
        let started = Instant::now();
        // The nodes the view replayed, applied to the snapshot before the
        // assumptions are placed on them.
        {
            let state = Arc::clone(&state);
            let _ = tokio::task::spawn_blocking(move || state.resync()).await;
        }
        let report = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = rebuild(&bus, &state, &seen, &service) => r,
        };
        let took = started.elapsed();
        metrics.record_rebuild(&report, took);
        metrics.update_state(&state);
        tracing::info!(
            policies = report.policies_read,
            feedback = report.feedback_read,
            assumptions = report.restored.assumptions,
            penalties = report.restored.penalties,
            feedback_ids = report.feedback_ids,
            skipped = report.skipped,
            dropped_oldest = report.dropped_oldest,
            timed_out = report.timed_out,
            ms = took.as_millis() as u64,
            "assume cache and penalties rebuilt"
        );
        tx.send_replace(true);
        // Keep the readiness source open while the service runs.
        shutdown.cancelled().await;
    });
    rx
}

/// Runs the service until `shutdown`: connects NATS, follows the view and
/// forecasts, serves gRPC on `listeners` (a gRPC listener alone binds
/// `--metrics-addr` for metrics), then drains within `--shutdown-grace`.
pub async fn serve(
    config: Config,
    listeners: impl Into<Listeners>,
    shutdown: CancellationToken,
) -> Result<()> {
    config.validate()?;
    let bus = Bus::connect(
        "apollo-scheduling",
        &config.nats,
        &config.streams,
        CancellationToken::new(),
    )
    .await?;
    let mut registry = Registry::default();
    bus.register_metrics(&mut registry);
    let view = ClusterView::with_limits(config.view.clone());
    view.register_metrics(&mut registry);
    let state = Arc::new(ClusterState::new(view.clone(), config.engine.clone()));
    // The change applier runs on a thread of its own (a blocking thread of
    // the runtime if none can be started, which the runtime waits for when
    // it is dropped): stop it whenever this function ends or is dropped, not
    // only on `shutdown`, so an embedding program (or a failing test) never
    // hangs on exit or leaks it.
    let follower_stop = shutdown.child_token();
    let _stop_follower = follower_stop.clone().drop_guard();
    state.spawn_view_follower(follower_stop);
    view.follow(bus.clone(), shutdown.clone());
    state.spawn_forecast_follower(bus.clone(), shutdown.clone());
    let engine = Arc::new(Engine::new(state));
    serve_engine(engine, Some(bus), &config, registry, listeners, shutdown).await
}

/// Binds the configured addresses and serves until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<()> {
    let listeners = Listeners::bind(config.grpc_addr, config.observability.metrics_addr)
        .await
        .map_err(Error::Server)?;
    serve(config, listeners, shutdown).await
}

/// Serves an engine over gRPC (health, reflection, metrics, publisher and
/// sweeper included). Without a bus the service reports SERVING at once and
/// publishing counts failures; benchmarks use this. On shutdown the queued
/// policies are flushed and the bus drained within the grace period.
pub async fn serve_engine(
    engine: Arc<Engine>,
    bus: Option<Bus>,
    config: &Config,
    registry: Registry,
    listeners: impl Into<Listeners>,
    shutdown: CancellationToken,
) -> Result<()> {
    let mut shell = ServiceShell::new(ShellConfig {
        name: "apollo-scheduling",
        grpc_services: &[SERVICE_NAME],
        tls: &config.grpc_tls,
        limits: &config.grpc_limits,
        observability: &config.observability,
    })
    .await
    .map_err(Error::Server)?;
    *shell.registry() = registry;
    let metrics = Metrics::default();
    metrics.register(shell.registry());
    let state = Arc::clone(engine.state());
    let sweep_every = (config.engine.stale_after / 4)
        .min(config.engine.assume_ttl / 4)
        .clamp(Duration::from_millis(100), Duration::from_secs(5));
    let tasks = CancellationToken::new();
    state.spawn_sweeper(sweep_every, tasks.clone());
    {
        let (m, s, t) = (metrics.clone(), Arc::clone(&state), tasks.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = t.cancelled() => return,
                    _ = tick.tick() => m.update_state(&s),
                }
            }
        });
    }

    let seen = Arc::new(SeenIds::new(
        config.service.feedback_dedup_capacity,
        config.service.feedback_dedup_ttl,
    ));
    let ready = match &bus {
        None => always(true),
        Some(bus) => {
            let view_ready = state.view().serving_readiness(bus, shutdown.clone());
            let rebuilt = spawn_rebuild(
                bus.clone(),
                Arc::clone(&state),
                Arc::clone(&seen),
                config.service.clone(),
                metrics.clone(),
                shutdown.clone(),
            );
            all_ready(vec![view_ready, rebuilt], shutdown.clone())
        }
    };
    let subjects = bus
        .as_ref()
        .map(|b| b.subjects().clone())
        .unwrap_or_else(|| Subjects::new(config.nats.subject_prefix.clone()));
    let (tx, rx) = mpsc::channel(config.service.publish_queue);
    let publisher = tokio::spawn(run_publisher(
        bus.clone(),
        subjects,
        rx,
        metrics.clone(),
        config.service.publish_in_flight,
    ));
    let service = SchedulingService {
        shared: Arc::new(Shared {
            engine,
            metrics,
            queue: tx,
            seen,
        }),
    };
    shell
        .start(
            listeners,
            SchedulingPolicyServiceServer::new(service),
            ready,
            shutdown,
        )
        .await
        .map_err(Error::Server)?
        // The server (and with it the queue's last sender) is gone by the
        // time the clean-up runs: flush what is queued, then the bus.
        .drain(async move {
            let _ = publisher.await;
            tasks.cancel();
            if let Some(bus) = bus {
                bus.drain().await;
            }
        })
        .await
        .map_err(Error::Server)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_buckets_rise_and_hold_the_one_millisecond_target() {
        let b: Vec<f64> = decision_buckets().collect();
        assert!(b.windows(2).all(|w| w[0] < w[1]), "{b:?}");
        assert!(b.contains(&1e-3), "{b:?}");
        assert_eq!(b.first(), Some(&25e-6));
        assert_eq!(b.len(), 17);
    }
}
