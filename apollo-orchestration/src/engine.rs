//! The planning engine: builds the [`PlanningView`] from the cluster view and
//! the forecasts, runs the planners and the rails, keeps every issued policy
//! with its state, and applies execution results. No I/O: the service
//! ([`crate::service`]) publishes what a cycle issues.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use apollo_common::ClusterView;
use apollo_proto::{
    orchestration_policy::Target, ExecutionResult, OrchestrationAction, OrchestrationPolicy,
    ReportResponse, ResourcePrediction,
};

use crate::forecast::{outlook, to_timestamp};
use crate::kubernetes::KubeState;
use crate::metrics::Metrics;
use crate::placement::TargetFilter;
use crate::planner::{PlannerConfig, Planners, Proposal, Subject};
use crate::policy::{self, PolicySettings};
use crate::rails::{Blocked, Rails, RailsConfig};
use crate::view::{is_fresh, PlanningView};

/// Policies remembered for lookups and reports.
const BOOK_CAPACITY: usize = 10_000;

/// Settings of the engine.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineConfig {
    /// Planner thresholds.
    pub planners: PlannerConfig,
    /// Safety rails.
    pub rails: RailsConfig,
    /// Policy settings (constraints, dry-run).
    pub policy: PolicySettings,
    /// How far ahead forecasts are read.
    pub forecast_horizon: Duration,
    /// Node insights older than this are left out.
    pub stale_after: Duration,
}

/// State of an issued policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyState {
    /// Issued, no result yet.
    Pending,
    /// Published as a dry run: never executed.
    DryRun,
    /// Executed successfully.
    Succeeded,
    /// Execution failed.
    Failed,
}

impl PolicyState {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::DryRun => "dry-run",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }
}

/// An issued policy and its state.
#[derive(Debug, Clone)]
pub struct Record {
    /// The policy.
    pub policy: OrchestrationPolicy,
    /// Its state.
    pub state: PolicyState,
}

/// Errors of requests to the engine.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EngineError {
    /// A required field is missing or malformed.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// Field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The pod or policy is not known.
    #[error("{0}")]
    NotFound(String),
}

/// What one planning cycle produced.
#[derive(Debug, Clone, Default)]
pub struct Cycle {
    /// Policies issued (already recorded).
    pub issued: Vec<OrchestrationPolicy>,
    /// Proposals the rails refused.
    pub blocked: Vec<Blocked>,
    /// What the view lacked.
    pub unavailable: Vec<&'static str>,
}

/// Outcome of an execution report.
#[derive(Debug, Clone, PartialEq)]
pub struct Reported {
    /// The answer.
    pub response: ReportResponse,
    /// The result was already applied (same request_id).
    pub duplicate: bool,
    /// Action and namespace of the policy, for the feedback subject.
    pub action: OrchestrationAction,
    /// Namespace of the policy.
    pub namespace: String,
}

#[derive(Debug, Default)]
struct Book {
    by_id: HashMap<String, Record>,
    latest_by_pod: HashMap<String, String>,
    order: VecDeque<String>,
    reports: HashMap<String, ReportResponse>,
}

impl Book {
    fn insert(&mut self, policy: OrchestrationPolicy, state: PolicyState) {
        let id = policy.request_id.clone();
        if let Some(key) = pod_key(&policy) {
            self.latest_by_pod.insert(key, id.clone());
        }
        self.by_id.insert(id.clone(), Record { policy, state });
        self.order.push_back(id);
        while self.order.len() > BOOK_CAPACITY {
            if let Some(old) = self.order.pop_front() {
                if let Some(r) = self.by_id.remove(&old) {
                    if let Some(k) = pod_key(&r.policy) {
                        if self.latest_by_pod.get(&k) == Some(&old) {
                            self.latest_by_pod.remove(&k);
                        }
                    }
                }
                self.reports.remove(&old);
            }
        }
    }
}

/// `namespace/pod` a policy concerns (migrations; the workload name for the others).
fn pod_key(p: &OrchestrationPolicy) -> Option<String> {
    match &p.target {
        Some(Target::Migration(m)) => Some(format!("{}/{}", m.pod_namespace, m.pod_name)),
        _ => None,
    }
}

struct Planning {
    planners: Planners,
    rails: Rails,
}

struct Inner {
    cfg: EngineConfig,
    view: ClusterView,
    forecasts: Mutex<HashMap<String, ResourcePrediction>>,
    planning: Mutex<Planning>,
    book: Mutex<Book>,
    kubernetes: Mutex<KubeState>,
    metrics: Metrics,
}

/// The planning engine; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Engine {
    /// An engine over `view`.
    pub fn new(cfg: EngineConfig, view: ClusterView, metrics: Metrics) -> Self {
        let planning = Planning {
            planners: Planners::new(cfg.planners.clone()),
            rails: Rails::new(cfg.rails.clone()),
        };
        Self {
            inner: Arc::new(Inner {
                cfg,
                view,
                forecasts: Mutex::new(HashMap::new()),
                planning: Mutex::new(planning),
                book: Mutex::new(Book::default()),
                kubernetes: Mutex::new(KubeState::Disabled),
                metrics,
            }),
        }
    }

    /// The settings.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.cfg
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Keeps a node's latest forecast; ignored without a node name.
    pub fn apply_forecast(&self, p: ResourcePrediction) -> bool {
        let node = p.node_name.trim().to_string();
        if node.is_empty() {
            return false;
        }
        lock(&self.inner.forecasts).insert(node, p);
        true
    }

    /// The latest forecast of `node`, if any.
    pub fn forecast(&self, node: &str) -> Option<ResourcePrediction> {
        lock(&self.inner.forecasts).get(node).cloned()
    }

    /// The view the planners see at `now`.
    pub fn planning_view(&self, now: SystemTime) -> PlanningView {
        let cfg = &self.inner.cfg;
        let threshold = cfg.planners.migrate.threshold;
        let outlooks: HashMap<String, _> = lock(&self.inner.forecasts)
            .iter()
            .filter_map(|(n, p)| {
                Some((n.clone(), outlook(p, now, cfg.forecast_horizon, threshold)?))
            })
            .collect();
        let nodes: Vec<_> = self
            .inner
            .view
            .nodes()
            .into_iter()
            .filter(|e| is_fresh(e.stored_at, now, cfg.stale_after))
            .collect();
        let pods = self.inner.view.pods();
        let insights: Vec<_> = nodes.iter().map(|e| e.value.as_ref()).collect();
        let sigs: Vec<_> = pods.iter().map(|e| e.value.as_ref()).collect();
        let mut view = PlanningView::from_insights(now, &insights, &sigs, &outlooks);
        match &*lock(&self.inner.kubernetes) {
            KubeState::Ready(meta) => meta.apply(&mut view),
            KubeState::Disabled => view.unavailable.push(
                "kubernetes: owners inferred from pod names; PodDisruptionBudgets, no-migrate annotations and PVC mounts not read",
            ),
            KubeState::Unreachable(_) => view.unavailable.push(
                "kubernetes (unreachable): owners inferred from pod names; PodDisruptionBudgets, no-migrate annotations and PVC mounts not read",
            ),
        }
        view
    }

    fn kube_metadata(&self) -> Option<Arc<crate::kubernetes::Metadata>> {
        match &*lock(&self.inner.kubernetes) {
            KubeState::Ready(m) => Some(m.clone()),
            _ => None,
        }
    }

    /// Replaces what the engine knows about Kubernetes (see
    /// [`crate::kubernetes::follow_metadata`]).
    pub fn set_kubernetes(&self, state: KubeState) {
        *lock(&self.inner.kubernetes) = state;
    }

    /// One planning cycle at `now`: plan, pass the rails, record the issued
    /// policies.
    pub fn plan(&self, now: SystemTime) -> Cycle {
        let view = self.planning_view(now);
        let m = &self.inner.metrics;
        m.cycles.inc();
        let (approved, blocked) = {
            let mut p = lock(&self.inner.planning);
            let Planning { planners, rails } = &mut *p;
            rails.tick(now);
            rails.set_kubernetes(self.kube_metadata());
            let proposals = planners.plan(&view, rails);
            let out = rails.approve(&view, proposals);
            m.in_flight.set(rails.in_flight() as i64);
            out
        };
        for b in &blocked {
            m.blocked(b.rail);
            tracing::debug!(rail = b.rail, detail = %b.detail, reason = %b.proposal.reason, "proposal blocked");
        }
        let state = if self.inner.cfg.policy.dry_run {
            PolicyState::DryRun
        } else {
            PolicyState::Pending
        };
        let mut issued = Vec::with_capacity(approved.len());
        {
            let mut book = lock(&self.inner.book);
            for p in &approved {
                let policy = policy::to_policy(
                    p,
                    uuid::Uuid::new_v4().to_string(),
                    now,
                    &self.inner.cfg.policy,
                );
                m.issued(&policy::action_token(p.action));
                book.insert(policy.clone(), state);
                issued.push(policy);
            }
        }
        if self.inner.cfg.policy.dry_run {
            // Nothing will execute: moves are not under way.
            let mut p = lock(&self.inner.planning);
            for prop in &approved {
                if let (Some(k), Some((_, to))) = (prop.pod_key(), prop.nodes()) {
                    p.rails.finish(&k, to, true);
                }
            }
        }
        Cycle {
            issued,
            blocked,
            unavailable: view.unavailable.clone(),
        }
    }

    /// A policy by request id.
    pub fn record(&self, request_id: &str) -> Option<Record> {
        lock(&self.inner.book).by_id.get(request_id).cloned()
    }

    /// The pending or latest policy for a pod, or else a fresh evaluation
    /// (without side effects). `requested` other than UNSPECIFIED restricts
    /// the action. A pod the view does not know is `NotFound`.
    pub fn policy_for(
        &self,
        namespace: &str,
        pod: &str,
        requested: OrchestrationAction,
        now: SystemTime,
    ) -> Result<OrchestrationPolicy, EngineError> {
        if pod.trim().is_empty() {
            return Err(EngineError::Invalid {
                field: "pod_name",
                reason: "empty".into(),
            });
        }
        if namespace.trim().is_empty() {
            return Err(EngineError::Invalid {
                field: "pod_namespace",
                reason: "empty".into(),
            });
        }
        let key = format!("{namespace}/{pod}");
        let wanted =
            |a: i32| requested == OrchestrationAction::Unspecified || a == requested as i32;
        {
            let book = lock(&self.inner.book);
            if let Some(r) = book
                .latest_by_pod
                .get(&key)
                .and_then(|id| book.by_id.get(id))
                .filter(|r| wanted(r.policy.action))
            {
                return Ok(r.policy.clone());
            }
        }
        let view = self.planning_view(now);
        let Some(pv) = view.pod(namespace, pod).cloned() else {
            return Err(EngineError::NotFound(format!(
                "pod {key} is not in the cluster view"
            )));
        };
        let (proposal, block) = {
            let p = lock(&self.inner.planning);
            let mut planners = Planners::new(p.planners.config().clone());
            let mut rails = p.rails.clone();
            rails.tick(now);
            rails.set_kubernetes(self.kube_metadata());
            let block = rails.pod_blocked(&pv);
            let proposals = planners.plan(&view, &rails);
            let concerns = |pr: &Proposal| match &pr.subject {
                Subject::Migration { pod: name, .. } => pr.namespace == namespace && name == pod,
                Subject::Scale { name, .. } => {
                    pr.namespace == namespace && pv.owner.as_ref().is_some_and(|o| &o.name == name)
                }
                Subject::Provision { workload, .. } => pr.namespace == namespace && workload == pod,
            };
            let (approved, _) = rails.approve(
                &view,
                proposals
                    .into_iter()
                    .filter(|p| concerns(p) && wanted(p.action as i32))
                    .collect(),
            );
            (approved.into_iter().next(), block)
        };
        let id = uuid::Uuid::new_v4().to_string();
        if let Some(p) = proposal {
            return Ok(policy::to_policy(&p, id, now, &self.inner.cfg.policy));
        }
        let node = view.node(&pv.node);
        let reason = match (block, node) {
            (Some(b), _) => format!("no action: {b}"),
            (None, Some(n)) => format!(
                "no action: node {} at {} now, {} forecast peak (threshold {})",
                n.name,
                crate::planner::pct(n.util_now()),
                crate::planner::pct(n.util_peak()),
                crate::planner::pct(self.inner.cfg.planners.migrate.threshold)
            ),
            (None, None) => format!("no action: node {} has no fresh insight", pv.node),
        };
        Ok(OrchestrationPolicy {
            request_id: id,
            action: OrchestrationAction::Unspecified as i32,
            reason,
            contributing_factors: view
                .unavailable
                .iter()
                .map(|u| format!("unavailable={u}"))
                .collect(),
            created_at: Some(to_timestamp(now)),
            ..OrchestrationPolicy::default()
        })
    }

    /// How far back the engine's own policies and results matter after a
    /// restart (see [`restore_policy`](Self::restore_policy)).
    pub fn restore_window(&self) -> std::time::Duration {
        lock(&self.inner.planning).rails.memory()
    }

    /// Takes back a policy this engine issued before a restart, read from
    /// the policy stream (its audit trail): it is in the book again (so
    /// results for it are accepted and `GetOrchestrationPolicy` answers as
    /// before), and a migration is under way and in cooldown for the rails,
    /// so the same pod is not moved again inside its cooldown.
    pub fn restore_policy(&self, p: OrchestrationPolicy, now: SystemTime) {
        // Already known (issued here, or restored before): what the engine
        // holds is at least as current.
        if lock(&self.inner.book).by_id.contains_key(&p.request_id) {
            return;
        }
        let dry_run = policy::is_dry_run(&p);
        if !dry_run {
            if let Some(Target::Migration(m)) = &p.target {
                let at = p
                    .created_at
                    .as_ref()
                    .and_then(crate::forecast::to_system_time)
                    .unwrap_or(now);
                if !m.source_node.is_empty() && !m.target_node.is_empty() {
                    let mut planning = lock(&self.inner.planning);
                    planning.rails.tick(now);
                    planning.rails.remember(
                        format!("{}/{}", m.pod_namespace, m.pod_name),
                        &m.source_node,
                        &m.target_node,
                        at,
                    );
                    self.inner
                        .metrics
                        .in_flight
                        .set(planning.rails.in_flight() as i64);
                }
            }
        }
        let state = if dry_run {
            PolicyState::DryRun
        } else {
            PolicyState::Pending
        };
        lock(&self.inner.book).insert(p, state);
    }

    /// Takes back an execution result published before a restart (from the
    /// feedback stream), after [`restore_policy`](Self::restore_policy); not
    /// counted as a new report.
    pub fn restore_result(&self, r: &ExecutionResult) -> Result<(), EngineError> {
        self.apply_report(r, false).map(drop)
    }

    /// Applies an execution result; idempotent per request id. A failed move
    /// backs off its pod and target node.
    pub fn report(&self, r: &ExecutionResult) -> Result<Reported, EngineError> {
        self.apply_report(r, true)
    }

    fn apply_report(&self, r: &ExecutionResult, count: bool) -> Result<Reported, EngineError> {
        let id = r.request_id.trim();
        if id.is_empty() {
            return Err(EngineError::Invalid {
                field: "request_id",
                reason: "empty".into(),
            });
        }
        let mut book = lock(&self.inner.book);
        let Some(rec) = book.by_id.get(id).cloned() else {
            return Err(EngineError::NotFound(format!(
                "no policy with request_id {id}"
            )));
        };
        let action = OrchestrationAction::try_from(rec.policy.action)
            .unwrap_or(OrchestrationAction::Unspecified);
        let namespace = policy::namespace_of(&rec.policy).to_string();
        if r.action != 0 && r.action != rec.policy.action {
            return Err(EngineError::Invalid {
                field: "action",
                reason: format!(
                    "policy {id} is {}, the report says {}",
                    action.as_str_name(),
                    OrchestrationAction::try_from(r.action)
                        .map_or("an unknown action".to_string(), |a| a
                            .as_str_name()
                            .to_string())
                ),
            });
        }
        if let Some(resp) = book.reports.get(id) {
            if count {
                self.inner.metrics.report("duplicate");
            }
            return Ok(Reported {
                response: resp.clone(),
                duplicate: true,
                action,
                namespace,
            });
        }
        let state = if r.success {
            PolicyState::Succeeded
        } else {
            PolicyState::Failed
        };
        if let Some(rec) = book.by_id.get_mut(id) {
            rec.state = state;
        }
        let response = ReportResponse {
            success: true,
            message: format!("policy {id} {}", state.as_str()),
            request_id: id.to_string(),
        };
        book.reports.insert(id.to_string(), response.clone());
        drop(book);
        if let Some(Target::Migration(m)) = &rec.policy.target {
            let mut p = lock(&self.inner.planning);
            p.rails.finish(
                &format!("{}/{}", m.pod_namespace, m.pod_name),
                &m.target_node,
                r.success,
            );
        }
        if count {
            self.inner
                .metrics
                .report(if r.success { "success" } else { "failure" });
        }
        Ok(Reported {
            response,
            duplicate: false,
            action,
            namespace,
        })
    }
}
