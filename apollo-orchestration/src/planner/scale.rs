//! SCALE_UP / SCALE_DOWN for Deployments and StatefulSets.
//!
//! Per-replica load = mean over the workload's pods of CPU use relative to the
//! request (`ResourceMetrics.cpu_usage_percent`), each scaled by its node's
//! forecast growth (`cpu_peak / cpu_now`, 1-1.5): the predicted load per
//! replica. Desired replicas = `ceil(replicas * load / target)`, within
//! `[min_replicas, max_replicas]`.
//!
//! - Up when load > `target * (1 + up_tolerance)`.
//! - Down only when load stayed below `target * (1 - down_hysteresis)` for the
//!   whole `stabilisation` window, and no scale-up happened within it; the
//!   band between the two thresholds is the hysteresis that stops flapping.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use apollo_proto::OrchestrationAction;

use super::{pct, Proposal, Subject};
use crate::view::{PlanningView, WorkloadKind};

/// Thresholds of replica scaling.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleConfig {
    /// Per-replica load aimed for, 0-1 of the CPU request. Default 0.70.
    pub target: f64,
    /// Relative excess over the target that triggers a scale-up. Default 0.10.
    pub up_tolerance: f64,
    /// Relative shortfall under the target that allows a scale-down. Default 0.30.
    pub down_hysteresis: f64,
    /// How long the load must stay low before a scale-down. Default 5 min.
    pub stabilisation: Duration,
    /// Never fewer replicas. Default 1.
    pub min_replicas: u32,
    /// Never more replicas. Default 50.
    pub max_replicas: u32,
}

impl Default for ScaleConfig {
    fn default() -> Self {
        Self {
            target: 0.70,
            up_tolerance: 0.10,
            down_hysteresis: 0.30,
            stabilisation: Duration::from_secs(300),
            min_replicas: 1,
            max_replicas: 50,
        }
    }
}

type WorkloadKey = (String, WorkloadKind, String);

/// Scaling memory across cycles.
#[derive(Debug, Default, Clone)]
pub struct ScaleState {
    low_since: HashMap<WorkloadKey, SystemTime>,
    last_up: HashMap<WorkloadKey, SystemTime>,
}

struct Load {
    replicas: u32,
    sum: f64,
    measured: u32,
}

/// Plans scaling for every scalable workload in the view.
pub fn plan(view: &PlanningView, cfg: &ScaleConfig, state: &mut ScaleState) -> Vec<Proposal> {
    let mut loads: HashMap<WorkloadKey, Load> = HashMap::new();
    for pod in &view.pods {
        let Some(owner) = pod
            .owner
            .as_ref()
            .filter(|o| matches!(o.kind, WorkloadKind::Deployment | WorkloadKind::StatefulSet))
        else {
            continue;
        };
        let key = (pod.namespace.clone(), owner.kind, owner.name.clone());
        let e = loads.entry(key).or_insert(Load {
            replicas: owner.replicas.unwrap_or(0),
            sum: 0.0,
            measured: 0,
        });
        if owner.replicas.is_none() {
            e.replicas += 1;
        }
        if let Some(p) = pod.cpu_percent {
            let growth = view.node(&pod.node).map_or(1.0, |n| {
                let now = n.cpu_now();
                if now > 0.0 {
                    (n.cpu_peak() / now).clamp(1.0, 1.5)
                } else {
                    1.0
                }
            });
            e.sum += p / 100.0 * growth;
            e.measured += 1;
        }
    }
    let mut keys: Vec<_> = loads.keys().cloned().collect();
    keys.sort();
    let mut out = Vec::new();
    let up_at = cfg.target * (1.0 + cfg.up_tolerance);
    let down_at = cfg.target * (1.0 - cfg.down_hysteresis);
    for key in keys {
        let l = &loads[&key];
        if l.measured == 0 || l.replicas == 0 {
            continue;
        }
        let load = l.sum / f64::from(l.measured);
        let desired = ((f64::from(l.replicas) * load / cfg.target).ceil() as u32)
            .clamp(cfg.min_replicas.max(1), cfg.max_replicas.max(1));
        let (ns, kind, name) = key.clone();
        let mk = |action, desired: u32, urgency: f64, reason: String, extra: Vec<String>| {
            let mut factors = vec![
                format!("workload={}/{}", kind.as_str(), name),
                format!("replicas={}", l.replicas),
                format!("desired={desired}"),
                format!("predicted_load_per_replica={}", pct(load)),
                format!("target={}", pct(cfg.target)),
                format!("pods_measured={}", l.measured),
            ];
            factors.extend(extra);
            Proposal {
                action,
                namespace: ns.clone(),
                subject: Subject::Scale {
                    kind,
                    name: name.clone(),
                    current: l.replicas,
                    desired,
                },
                urgency,
                reason,
                factors,
                deadline_in: Duration::from_secs(300),
                disruptive: false,
            }
        };
        if load > up_at && desired > l.replicas {
            state.low_since.remove(&key);
            state.last_up.insert(key.clone(), view.now);
            out.push(mk(
                OrchestrationAction::ScaleUp,
                desired,
                (0.5 + (load - up_at)).clamp(0.5, 0.9),
                format!(
                    "{} {}/{} predicted at {} per replica (scale up above {}): {} -> {} replicas",
                    kind.as_str(),
                    ns,
                    name,
                    pct(load),
                    pct(up_at),
                    l.replicas,
                    desired
                ),
                vec![format!("threshold={}", pct(up_at))],
            ));
        } else if load < down_at && desired < l.replicas {
            let since = *state.low_since.entry(key.clone()).or_insert(view.now);
            let low_for = view.now.duration_since(since).unwrap_or_default();
            let since_up = state.last_up.get(&key).map_or(Duration::MAX, |t| {
                view.now.duration_since(*t).unwrap_or_default()
            });
            if low_for >= cfg.stabilisation && since_up >= cfg.stabilisation {
                state.low_since.insert(key.clone(), view.now);
                out.push(mk(
                    OrchestrationAction::ScaleDown,
                    desired,
                    0.2,
                    format!(
                        "{} {}/{} at {} per replica for {}s (scale down below {}): {} -> {} replicas",
                        kind.as_str(),
                        ns,
                        name,
                        pct(load),
                        low_for.as_secs(),
                        pct(down_at),
                        l.replicas,
                        desired
                    ),
                    vec![
                        format!("threshold={}", pct(down_at)),
                        format!("stabilised_for={}s", low_for.as_secs()),
                        format!("floor={}", cfg.min_replicas.max(1)),
                    ],
                ));
            }
        } else {
            state.low_since.remove(&key);
        }
    }
    out
}
