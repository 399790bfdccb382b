//! The decision path, the one function behind `GetSchedulingPolicy`:
//! view -> workload -> demand -> rank -> rules -> policy, then the pod is
//! assumed on its top node.
//!
//! [`Engine::decide`] never fails and never blocks on I/O: it reads the
//! cluster view (one map lookup) and ranks on the published snapshot, which
//! no update locks (see [`crate::state`]).

use std::fmt::Write as _;
use std::sync::Arc;

use apollo_proto::{
    AffinityRule, PipelineStage, PolicyPriority, SchedulingConstraint, SchedulingDecision,
    SchedulingPolicy, SchedulingPolicyRequest,
};

use crate::config::EngineConfig;
use crate::decision::{self, Decision, DecisionInput};
use crate::demand::{CsdNeed, PodDemand};
use crate::rebuild::Assumption;
use crate::scorer::{NodeScorer, Ranking, ScoreWeights};
use crate::state::ClusterState;
use crate::storage::{resource_requirements, storage_requirements};
use crate::weights::plugin_weights;
use crate::workload::{Source, Workload};

/// Longest `reason` sent.
const MAX_REASON: usize = 1024;
/// Topology key of node-level affinity.
const HOSTNAME: &str = "kubernetes.io/hostname";

/// Scores pods against the cluster state and issues policies.
#[derive(Debug)]
pub struct Engine {
    cfg: EngineConfig,
    scorer: NodeScorer,
    relaxed: NodeScorer,
    state: Arc<ClusterState>,
    assume: bool,
}

impl Engine {
    /// An engine over `state` with the default scorer weights.
    pub fn new(state: Arc<ClusterState>) -> Self {
        Self::with_weights(state, ScoreWeights::default())
    }

    /// An engine with explicit scorer weights.
    pub fn with_weights(state: Arc<ClusterState>, weights: ScoreWeights) -> Self {
        let relaxed = NodeScorer::new(ScoreWeights {
            exclude_predicted_overload: false,
            ..weights.clone()
        });
        Self {
            cfg: state.config().clone(),
            scorer: NodeScorer::new(weights),
            relaxed,
            state,
            assume: true,
        }
    }

    /// Turns the assume cache off (each decision leaves the state untouched).
    pub fn without_assume(mut self) -> Self {
        self.assume = false;
        self
    }

    /// The state the engine reads.
    pub fn state(&self) -> &Arc<ClusterState> {
        &self.state
    }

    /// The policy for a pod: its workload from the view's signature and its
    /// labels and annotations. Always returns a policy with a fresh request id.
    pub fn decide(&self, req: &SchedulingPolicyRequest) -> SchedulingPolicy {
        self.decide_assuming(req).0
    }

    /// [`Engine::decide`], with the placement the decision assumed (what a
    /// restarted engine needs to assume it again; see [`crate::rebuild`]).
    pub fn decide_assuming(
        &self,
        req: &SchedulingPolicyRequest,
    ) -> (SchedulingPolicy, Option<Assumption>) {
        let signature = self.state.view().pod(&req.pod_namespace, &req.pod_name);
        if let Some(entry) = &signature {
            // The decision's span (in the caller's trace) points at the trace
            // that reported the signature it used.
            apollo_common::telemetry::link_current_span(
                &entry.trace,
                apollo_common::telemetry::SIGNATURE_TRACE_ATTRIBUTE,
            );
        }
        let workload = Workload::derive(req, signature.as_ref().map(|e| e.value.as_ref()));
        self.decide_workload_assuming(req, &workload)
    }

    /// The policy for an already derived workload (the simulator builds the
    /// workload from a trace instead of labels).
    pub fn decide_workload(&self, req: &SchedulingPolicyRequest, w: &Workload) -> SchedulingPolicy {
        self.decide_workload_assuming(req, w).0
    }

    fn decide_workload_assuming(
        &self,
        req: &SchedulingPolicyRequest,
        w: &Workload,
    ) -> (SchedulingPolicy, Option<Assumption>) {
        let request_id = uuid::Uuid::new_v4().to_string();
        let upstream = self.state.upstream_nodes(w);
        let demand = w.demand(upstream.clone());
        let decision = self.rank_and_decide(w, &demand);
        let mut assumed = None;

        if self.assume
            && matches!(
                decision.kind,
                SchedulingDecision::Allow
                    | SchedulingDecision::Prefer
                    | SchedulingDecision::Require
            )
        {
            if let Some(top) = decision.preferences.first() {
                let pipeline = w.pipeline.clone().map(|p| (p, w.pipeline_step.clone()));
                self.state.assume_or_defer(
                    (req.pod_namespace.clone(), req.pod_name.clone()),
                    &request_id,
                    &top.node_name,
                    &demand,
                    pipeline.clone(),
                );
                assumed = Some(Assumption::new(&top.node_name, &demand, pipeline));
            }
        }

        let constraints = if decision.kind == SchedulingDecision::Require {
            vec![SchedulingConstraint {
                constraint_type: "node-in".into(),
                key: HOSTNAME.into(),
                operator: "In".into(),
                values: decision
                    .preferences
                    .iter()
                    .map(|p| p.node_name.clone())
                    .collect(),
            }]
        } else {
            Vec::new()
        };
        let reason = full_reason(&decision, w);
        let policy = SchedulingPolicy {
            request_id,
            pod_name: req.pod_name.clone(),
            pod_namespace: req.pod_namespace.clone(),
            decision: decision.kind as i32,
            node_preferences: decision.preferences,
            resource_requirements: Some(resource_requirements(w)),
            storage_requirements: Some(storage_requirements(w)),
            constraints,
            priority: priority(w) as i32,
            allow_preemption: false,
            affinity_rules: affinity_rules(w, &upstream),
            reason,
            plugin_weights: Some(plugin_weights(w)),
            workload_signature: Some(w.signature_info()),
        };
        (policy, assumed)
    }

    fn rank_and_decide(&self, w: &Workload, demand: &PodDemand) -> Decision {
        let stale_nodes = self.state.stale_nodes();
        let snap = self.state.read();
        let fresh_nodes = snap.len();
        if fresh_nodes == 0 {
            return decision::decide(&DecisionInput {
                stale_nodes,
                ..DecisionInput::default()
            });
        }
        let ranking = self.scorer.rank(&snap, demand, self.cfg.top_nodes);
        let mut relaxed: Option<Ranking> = None;
        let mut fits_when_empty = true;
        let mut delay = None;
        if ranking.feasible == 0 {
            fits_when_empty = NodeScorer::fits_anywhere_when_empty(&snap, demand);
            if fits_when_empty {
                delay = self.state.delay_hint(&snap, demand);
                if delay.is_none() && ranking.excluded.predicted_overload > 0 {
                    relaxed = Some(self.relaxed.rank(&snap, demand, self.cfg.top_nodes));
                }
            }
        }
        let partial_hard_need = if ranking.feasible > 0 {
            hard_need(w, demand).filter(|_| {
                // Only a need that some node fails is worth REQUIRE.
                snap.nodes().any(|n| !meets_hard_need(n, demand))
            })
        } else {
            None
        };
        drop(snap);
        decision::decide(&DecisionInput {
            fresh_nodes,
            stale_nodes,
            ranking: Some(&ranking),
            relaxed: relaxed.as_ref(),
            fits_when_empty,
            partial_hard_need,
            delay,
            demand_summary: demand_summary(demand),
            prefer_gap: self.cfg.prefer_gap,
        })
    }
}

fn hard_need(w: &Workload, d: &PodDemand) -> Option<String> {
    let csd = d.csd == CsdNeed::Requires;
    let models = w.has_gpu_model_constraint();
    match (csd, models) {
        (true, true) => Some(format!(
            "requires a CSD and GPU model {}",
            d.gpu_models.join("|")
        )),
        (true, false) => Some("requires a CSD".into()),
        (false, true) => Some(format!("requires GPU model {}", d.gpu_models.join("|"))),
        (false, false) => None,
    }
}

fn meets_hard_need(n: &crate::snapshot::NodeState, d: &PodDemand) -> bool {
    if d.csd == CsdNeed::Requires && n.csd_available == 0 {
        return false;
    }
    if d.num_gpu > 0 && !d.gpu_models.is_empty() {
        return n
            .gpus
            .iter()
            .any(|g| d.gpu_models.iter().any(|m| m.trim() == g.model.trim()));
    }
    true
}

fn demand_summary(d: &PodDemand) -> String {
    let mut s = format!("cpu {}m, memory {} MiB", d.cpu_milli, d.memory_bytes >> 20);
    if d.num_gpu > 0 {
        let _ = write!(s, ", {} GPU x {}m", d.num_gpu, d.gpu_milli);
        if !d.gpu_models.is_empty() {
            let _ = write!(s, " of {}", d.gpu_models.join("|"));
        }
    }
    if d.csd == CsdNeed::Requires {
        s.push_str(", CSD");
    }
    s
}

/// Priority by stage (a Kueue priority > 0 maps to high).
fn priority(w: &Workload) -> PolicyPriority {
    if w.kueue_priority > 0 {
        return PolicyPriority::High;
    }
    match w.stage {
        PipelineStage::Inference | PipelineStage::Checkpointing => PolicyPriority::High,
        PipelineStage::Training | PipelineStage::DataLoading | PipelineStage::Preprocessing => {
            PolicyPriority::Medium
        }
        PipelineStage::Validation | PipelineStage::Postprocessing | PipelineStage::Idle => {
            PolicyPriority::Low
        }
        PipelineStage::Unknown => PolicyPriority::Medium,
    }
}

/// Preferred (never required) affinity: cache and data nodes, upstream
/// steps' nodes, and the pipeline's other pods.
fn affinity_rules(w: &Workload, upstream: &[String]) -> Vec<AffinityRule> {
    let mut rules = Vec::new();
    let node_rule = |nodes: &[String], weight| AffinityRule {
        rule_type: "node-affinity".into(),
        topology_key: HOSTNAME.into(),
        target_labels: nodes.iter().map(|n| format!("{HOSTNAME}={n}")).collect(),
        is_required: false,
        weight,
    };
    if !w.cache_nodes.is_empty() {
        rules.push(node_rule(&w.cache_nodes, 100));
    }
    if !w.data_locations.is_empty() {
        rules.push(node_rule(&w.data_locations, 80));
    }
    if !upstream.is_empty() {
        rules.push(node_rule(upstream, 60));
    }
    if let Some(p) = &w.pipeline {
        let label = match p.kind {
            "argo" => crate::workload::ARGO_WORKFLOW,
            _ => crate::workload::KFP_RUN,
        };
        rules.push(AffinityRule {
            rule_type: "pod-affinity".into(),
            topology_key: HOSTNAME.into(),
            target_labels: vec![format!("{label}={}", p.name)],
            is_required: false,
            weight: 40,
        });
    }
    rules
}

fn full_reason(d: &Decision, w: &Workload) -> String {
    let mut s = d.reason.clone();
    s.push_str(match w.source {
        Source::Signature => "; workload from signature",
        Source::Metadata => "; workload from labels/annotations",
        Source::None => "; no workload information",
    });
    for n in &w.notes {
        s.push_str("; ");
        s.push_str(n);
    }
    if s.len() > MAX_REASON {
        let mut cut = MAX_REASON;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}
