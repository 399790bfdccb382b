//! OPTIMIZE: idle accelerators while work that could use them runs elsewhere.
//! - CSD: a preprocessing or data-loading pod (the stages computational
//!   storage offloads) on a node without an idle CSD, while another node has
//!   one: move it there.
//! - GPU: a GPU pod on a node whose GPUs are busier than `gpu_busy`, while
//!   another node has a whole idle GPU: move it there.
//!
//! Targets pass the same headroom check as every move. At most `batch`
//! proposals per cycle; low priority.

use std::time::Duration;

use apollo_proto::{OrchestrationAction, PipelineStage};

use super::{pct, Proposal, Subject};
use crate::placement::{Placer, TargetFilter};
use crate::view::PlanningView;

/// Thresholds of accelerator optimisation.
#[derive(Debug, Clone, PartialEq)]
pub struct OptimizeConfig {
    /// Mean GPU utilisation (0-1) above which a GPU pod's node counts as busy. Default 0.90.
    pub gpu_busy: f64,
    /// A target's peak with the pod added must stay below this. Default 0.70.
    pub target_ceiling: f64,
    /// Proposals per cycle. Default 2.
    pub batch: usize,
}

impl Default for OptimizeConfig {
    fn default() -> Self {
        Self {
            gpu_busy: 0.90,
            target_ceiling: 0.70,
            batch: 2,
        }
    }
}

/// Plans accelerator optimisation.
pub fn plan(view: &PlanningView, cfg: &OptimizeConfig, filter: &dyn TargetFilter) -> Vec<Proposal> {
    let mut placer = Placer::new(view);
    let mut out = Vec::new();
    let csd_stage =
        |s: PipelineStage| matches!(s, PipelineStage::Preprocessing | PipelineStage::DataLoading);
    for pod in &view.pods {
        if out.len() >= cfg.batch {
            break;
        }
        let Some(node) = view.node(&pod.node) else {
            continue;
        };
        if node.control_plane || filter.pod_blocked(pod).is_some() {
            continue;
        }
        let (kind, wants): (&str, &dyn Fn(&crate::view::NodeView) -> bool) =
            if csd_stage(pod.stage) && node.idle_csds == 0 {
                ("csd", &|n| n.idle_csds > 0)
            } else if pod.gpu && node.gpus > 0 && node.gpu_util > cfg.gpu_busy {
                ("gpu", &|n| n.idle_gpus > 0)
            } else {
                continue;
            };
        let Some(target) = placer.choose(pod, cfg.target_ceiling, filter, wants) else {
            continue;
        };
        let factors = vec![
            format!("accelerator={kind}"),
            format!("source={}", node.name),
            format!("source_idle_csds={}", node.idle_csds),
            format!("source_gpu_util={}", pct(node.gpu_util)),
            format!("pod_stage={}", pod.stage.as_str_name()),
            format!("target={}", target.node),
            format!("target_projected_peak={}", pct(target.projected)),
            format!("target_score={}", target.score),
        ];
        placer.record_move(pod, &node.name, &target.node);
        out.push(Proposal {
            action: OrchestrationAction::Optimize,
            namespace: pod.namespace.clone(),
            subject: Subject::Migration {
                pod: pod.name.clone(),
                from: node.name.clone(),
                to: target.node.clone(),
                preserve_pv: pod.has_pv,
            },
            urgency: 0.15,
            reason: format!(
                "idle {kind} on {} while {} ({}) runs on {} without one: move it",
                target.node,
                pod.key(),
                pod.stage.as_str_name(),
                node.name
            ),
            factors,
            deadline_in: Duration::from_secs(3600),
            disruptive: true,
        });
    }
    out
}
