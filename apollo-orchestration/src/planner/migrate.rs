//! MIGRATE, hotspot relief: a node whose utilisation (the fuller of CPU and
//! memory) is over the threshold now, or whose forecast upper bound crosses it
//! within the horizon, sheds pods until its projected peak is back under.
//!
//! Which pod: each candidate gets `benefit - cost` with
//! - benefit = `min(1, share / needed)`: how much of the needed relief it
//!   brings (`share` = its use of the node's dominant resource, `needed` =
//!   peak - threshold + `margin`);
//! - cost = stage cost (checkpointing pods are never moved; training and
//!   inference cost most, idle and preprocessing nothing) + `pv_cost` for a
//!   pod with volumes (moved with `preserve_pv`) + `overshoot_weight` x
//!   relative overshoot (a pod much larger than needed moves more state than
//!   the relief requires).
//!
//! Where to: the placement core's best node whose own forecast peak plus the
//! pod stays below `target_ceiling` ([`crate::placement::Placer`]).

use std::time::Duration;

use apollo_proto::{OrchestrationAction, PipelineStage};

use super::{pct, Proposal, Subject};
use crate::placement::{Placer, TargetFilter};
use crate::view::{NodeView, PlanningView, PodView};

/// Thresholds of hotspot relief.
#[derive(Debug, Clone, PartialEq)]
pub struct MigrateConfig {
    /// Utilisation (0-1) at or above which a node is a hotspot, now or
    /// predicted. Default 0.85.
    pub threshold: f64,
    /// A target's peak with the pod added must stay below this. Default 0.75.
    pub target_ceiling: f64,
    /// Relief aimed for below the threshold. Default 0.05.
    pub margin: f64,
    /// Moves planned per hotspot per cycle. Default 2.
    pub max_moves_per_node: usize,
    /// Cost of moving a pod with volumes. Default 0.1.
    pub pv_cost: f64,
    /// Weight of relative overshoot. Default 0.2.
    pub overshoot_weight: f64,
    /// Deadline of a migration for a node overloaded now. Default 5 min.
    pub urgent_deadline: Duration,
}

impl Default for MigrateConfig {
    fn default() -> Self {
        Self {
            threshold: 0.85,
            target_ceiling: 0.75,
            margin: 0.05,
            max_moves_per_node: 2,
            pv_cost: 0.1,
            overshoot_weight: 0.2,
            urgent_deadline: Duration::from_secs(300),
        }
    }
}

/// Cost of interrupting a pod in `stage`; `None` = never move it.
pub fn stage_cost(stage: PipelineStage) -> Option<f64> {
    match stage {
        PipelineStage::Checkpointing => None,
        PipelineStage::Training => Some(0.3),
        PipelineStage::Inference => Some(0.2),
        PipelineStage::Validation => Some(0.15),
        PipelineStage::DataLoading | PipelineStage::Unknown => Some(0.1),
        PipelineStage::Postprocessing => Some(0.05),
        PipelineStage::Preprocessing | PipelineStage::Idle => Some(0.0),
    }
}

/// Share of `node`'s dominant resource (`cpu` or not) that `pod` uses.
fn share(pod: &PodView, node: &NodeView, cpu: bool) -> f64 {
    let (v, cap) = if cpu {
        (pod.cpu_cores, node.cpu_capacity)
    } else {
        (pod.memory_bytes, node.memory_capacity)
    };
    if cap > 0.0 {
        v / cap
    } else {
        0.0
    }
}

/// A candidate pod with its score.
struct Candidate<'a> {
    pod: &'a PodView,
    share: f64,
    score: f64,
}

/// Plans hotspot relief.
pub fn plan(view: &PlanningView, cfg: &MigrateConfig, filter: &dyn TargetFilter) -> Vec<Proposal> {
    let mut placer = Placer::new(view);
    let mut hot: Vec<&NodeView> = view
        .nodes
        .iter()
        .filter(|n| !n.control_plane && n.util_peak() >= cfg.threshold)
        .collect();
    hot.sort_by(|a, b| b.util_peak().total_cmp(&a.util_peak()));
    let mut out = Vec::new();
    for node in hot {
        let now = node.util_now();
        let crossing = node.outlook.as_ref().and_then(|o| o.crossing_in);
        let horizon = node
            .outlook
            .as_ref()
            .map_or(Duration::from_secs(1800), |o| o.horizon);
        let cpu = node.cpu_peak() >= node.memory_peak();
        for _ in 0..cfg.max_moves_per_node {
            let peak = placer.peak(node);
            if peak < cfg.threshold || placer.touching(&node.name) >= filter.moves_left(&node.name)
            {
                break;
            }
            let needed = (peak - cfg.threshold + cfg.margin).max(0.01);
            let mut candidates: Vec<Candidate<'_>> = view
                .pods_on(&node.name)
                .filter(|p| filter.pod_blocked(p).is_none())
                .filter(|p| !out.iter().any(|o: &Proposal| o.pod_key() == Some(p.key())))
                .filter_map(|p| {
                    let stage = stage_cost(p.stage)?;
                    let s = share(p, node, cpu);
                    if s <= 0.0 {
                        return None;
                    }
                    let benefit = (s / needed).min(1.0);
                    let overshoot = ((s - needed).max(0.0) / needed).min(1.0);
                    let pv = if p.has_pv { cfg.pv_cost } else { 0.0 };
                    Some(Candidate {
                        pod: p,
                        share: s,
                        score: benefit - stage - pv - cfg.overshoot_weight * overshoot,
                    })
                })
                .collect();
            candidates.sort_by(|a, b| {
                b.score
                    .total_cmp(&a.score)
                    .then_with(|| a.pod.name.cmp(&b.pod.name))
            });
            let Some((c, target)) = candidates.iter().find_map(|c| {
                placer
                    .choose(c.pod, cfg.target_ceiling, filter, &|_| true)
                    .map(|t| (c, t))
            }) else {
                break;
            };
            let overloaded_now = now >= cfg.threshold;
            let lead = crossing.unwrap_or(Duration::ZERO);
            let urgency = if overloaded_now {
                0.8 + 0.2 * ((now - cfg.threshold) / (1.0 - cfg.threshold).max(0.01)).min(1.0)
            } else {
                0.3 + 0.5 * (1.0 - lead.as_secs_f64() / horizon.as_secs_f64().max(1.0)).max(0.0)
            };
            let deadline_in = if overloaded_now {
                cfg.urgent_deadline
            } else {
                lead.max(Duration::from_secs(120))
            };
            let reason = if overloaded_now {
                format!(
                    "node {} is at {} (threshold {}): move {} to {}",
                    node.name,
                    pct(now),
                    pct(cfg.threshold),
                    c.pod.name,
                    target.node
                )
            } else {
                format!(
                    "node {} is forecast to reach {} within {}s (threshold {}): move {} to {}",
                    node.name,
                    pct(placer.peak(node)),
                    lead.as_secs(),
                    pct(cfg.threshold),
                    c.pod.name,
                    target.node
                )
            };
            let factors = vec![
                format!("source={}", node.name),
                format!("current={}", pct(now)),
                format!("predicted_peak={}", pct(peak)),
                format!("threshold={}", pct(cfg.threshold)),
                format!(
                    "lead_time={}",
                    crossing.map_or("none".into(), |d| format!("{}s", d.as_secs()))
                ),
                format!("resource={}", if cpu { "cpu" } else { "memory" }),
                format!("relief_needed={}", pct(needed)),
                format!("pod_share={}", pct(c.share)),
                format!("pod_stage={}", c.pod.stage.as_str_name()),
                format!("benefit_minus_cost={:.2}", c.score),
                format!("target={}", target.node),
                format!("target_projected_peak={}", pct(target.projected)),
                format!("target_ceiling={}", pct(cfg.target_ceiling)),
                format!("target_score={}", target.score),
            ];
            placer.record_move(c.pod, &node.name, &target.node);
            out.push(Proposal {
                action: OrchestrationAction::Migrate,
                namespace: c.pod.namespace.clone(),
                subject: Subject::Migration {
                    pod: c.pod.name.clone(),
                    from: node.name.clone(),
                    to: target.node,
                    preserve_pv: c.pod.has_pv,
                },
                urgency: urgency.clamp(0.0, 1.0),
                reason,
                factors,
                deadline_in,
                disruptive: true,
            });
        }
    }
    out
}
