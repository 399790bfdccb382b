//! REBALANCE: when the spread of node utilisation (hottest minus coldest
//! worker, on the forecast peak) is above `spread_threshold`, a bounded batch
//! of moves from the hottest nodes to the coldest. A move is planned only if
//! it narrows the gap between its two nodes (the source stays at or above the
//! target after it), and the target is chosen by the placement core among the
//! colder half of the cluster. Runs only in cycles without hotspots.

use std::time::Duration;

use apollo_proto::{OrchestrationAction, PipelineStage};

use super::{pct, Proposal, Subject};
use crate::placement::{Placer, TargetFilter};
use crate::view::{NodeView, PlanningView};

/// Thresholds of rebalancing.
#[derive(Debug, Clone, PartialEq)]
pub struct RebalanceConfig {
    /// Spread (0-1) above which a batch is planned. Default 0.40.
    pub spread_threshold: f64,
    /// Moves per batch. Default 3.
    pub batch: usize,
    /// A target's peak with the pod added must stay below this. Default 0.70.
    pub target_ceiling: f64,
    /// Deadline of a rebalancing move. Default 30 min.
    pub deadline: Duration,
}

impl Default for RebalanceConfig {
    fn default() -> Self {
        Self {
            spread_threshold: 0.40,
            batch: 3,
            target_ceiling: 0.70,
            deadline: Duration::from_secs(1800),
        }
    }
}

/// Spread of peak utilisation over the worker nodes: (hottest, coldest).
fn extremes<'a>(
    nodes: &[&'a NodeView],
    placer: &Placer<'_>,
) -> Option<(&'a NodeView, &'a NodeView)> {
    let hot = nodes
        .iter()
        .max_by(|a, b| placer.peak(a).total_cmp(&placer.peak(b)))?;
    let cold = nodes
        .iter()
        .min_by(|a, b| placer.peak(a).total_cmp(&placer.peak(b)))?;
    Some((hot, cold))
}

/// Plans one rebalancing batch.
pub fn plan(
    view: &PlanningView,
    cfg: &RebalanceConfig,
    filter: &dyn TargetFilter,
) -> Vec<Proposal> {
    let workers: Vec<&NodeView> = view.nodes.iter().filter(|n| !n.control_plane).collect();
    if workers.len() < 2 {
        return Vec::new();
    }
    let mut placer = Placer::new(view);
    let Some((hot, cold)) = extremes(&workers, &placer) else {
        return Vec::new();
    };
    let spread0 = placer.peak(hot) - placer.peak(cold);
    if spread0 <= cfg.spread_threshold {
        return Vec::new();
    }
    let mut out: Vec<Proposal> = Vec::new();
    while out.len() < cfg.batch {
        let Some((hot, cold)) = extremes(&workers, &placer) else {
            break;
        };
        let spread = placer.peak(hot) - placer.peak(cold);
        if spread <= cfg.spread_threshold / 2.0
            || placer.touching(&hot.name) >= filter.moves_left(&hot.name)
        {
            break;
        }
        let median = {
            let mut p: Vec<f64> = workers.iter().map(|n| placer.peak(n)).collect();
            p.sort_by(f64::total_cmp);
            p[p.len() / 2]
        };
        // Smallest movable pods first: least disruption per point of spread.
        let mut pods: Vec<_> = view
            .pods_on(&hot.name)
            .filter(|p| filter.pod_blocked(p).is_none())
            .filter(|p| p.stage != PipelineStage::Checkpointing)
            .filter(|p| !out.iter().any(|o| o.pod_key() == Some(p.key())))
            .filter(|p| p.cpu_cores > 0.0 || p.memory_bytes > 0.0)
            .collect();
        pods.sort_by(|a, b| {
            let sa = a.cpu_cores / hot.cpu_capacity.max(1e-9)
                + a.memory_bytes / hot.memory_capacity.max(1.0);
            let sb = b.cpu_cores / hot.cpu_capacity.max(1e-9)
                + b.memory_bytes / hot.memory_capacity.max(1.0);
            sa.total_cmp(&sb).then_with(|| a.name.cmp(&b.name))
        });
        let hot_peak = placer.peak(hot);
        let chosen = pods.iter().find_map(|p| {
            let t = placer.choose(p, cfg.target_ceiling, filter, &|n| placer.peak(n) <= median)?;
            // The move must narrow the gap, not swap the roles of the nodes.
            let share = (p.cpu_cores / hot.cpu_capacity.max(1e-9))
                .max(p.memory_bytes / hot.memory_capacity.max(1.0));
            (hot_peak - share >= t.projected).then_some((*p, t))
        });
        let Some((pod, target)) = chosen else {
            // Nothing movable on the hottest node: nothing better to do in
            // this cycle without disturbing cooler nodes.
            break;
        };
        let factors = vec![
            format!("source={}", hot.name),
            format!("source_peak={}", pct(hot_peak)),
            format!("coldest={}", cold.name),
            format!("coldest_peak={}", pct(placer.peak(cold))),
            format!("spread={}", pct(spread)),
            format!("spread_threshold={}", pct(cfg.spread_threshold)),
            format!("target={}", target.node),
            format!("target_projected_peak={}", pct(target.projected)),
            format!("target_score={}", target.score),
            format!("batch_index={}", out.len() + 1),
        ];
        placer.record_move(pod, &hot.name, &target.node);
        out.push(Proposal {
            action: OrchestrationAction::Rebalance,
            namespace: pod.namespace.clone(),
            subject: Subject::Migration {
                pod: pod.name.clone(),
                from: hot.name.clone(),
                to: target.node.clone(),
                preserve_pv: pod.has_pv,
            },
            urgency: (0.2 + (spread - cfg.spread_threshold)).clamp(0.2, 0.5),
            reason: format!(
                "utilisation spread {} exceeds {}: move {} from {} to {}",
                pct(spread),
                pct(cfg.spread_threshold),
                pod.name,
                hot.name,
                target.node
            ),
            factors,
            deadline_in: cfg.deadline,
            disruptive: true,
        });
    }
    out
}
