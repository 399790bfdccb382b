//! The planners: each reads the [`PlanningView`] and proposes actions with the
//! numbers behind them. Proposals then pass the safety rails
//! ([`crate::rails`]) and become policies ([`crate::policy`]).
//!
//! | planner | action | module |
//! |---|---|---|
//! | hotspot relief | MIGRATE | [`migrate`] |
//! | replica scaling | SCALE_UP / SCALE_DOWN | [`scale`] |
//! | storage provisioning | PROVISION | [`provision`] |
//! | utilisation spread | REBALANCE | [`rebalance`] |
//! | idle accelerators | OPTIMIZE | [`optimize`] |

pub mod migrate;
pub mod optimize;
pub mod provision;
pub mod rebalance;
pub mod scale;

use std::time::Duration;

use apollo_proto::{OrchestrationAction, StorageClass};

use crate::placement::TargetFilter;
use crate::view::{PlanningView, WorkloadKind};

/// What a proposal acts on.
#[derive(Debug, Clone, PartialEq)]
pub enum Subject {
    /// Move a pod.
    Migration {
        /// Pod name.
        pod: String,
        /// Node it leaves.
        from: String,
        /// Node it goes to.
        to: String,
        /// Keep its PersistentVolumes.
        preserve_pv: bool,
    },
    /// Change a workload's replicas.
    Scale {
        /// Owner kind.
        kind: WorkloadKind,
        /// Owner name.
        name: String,
        /// Replicas now.
        current: u32,
        /// Replicas wanted.
        desired: u32,
    },
    /// Provision storage for a workload.
    Provision {
        /// Workload (pod or owner) the storage is for.
        workload: String,
        /// Claim name to create.
        pvc_name: String,
        /// Class.
        class: StorageClass,
        /// Size in bytes.
        size_bytes: i64,
        /// Node whose device fills up, if that is the trigger.
        node: Option<String>,
    },
}

/// A planner's proposal, before the safety rails.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    /// Action.
    pub action: OrchestrationAction,
    /// Namespace of the affected workload.
    pub namespace: String,
    /// What it acts on.
    pub subject: Subject,
    /// Urgency 0-1: decides priority and the order the rails admit proposals.
    pub urgency: f64,
    /// One-line reason.
    pub reason: String,
    /// The numbers behind it (`current=0.93`, `threshold=0.85`, ...).
    pub factors: Vec<String>,
    /// How long the action stays useful.
    pub deadline_in: Duration,
    /// Whether it restarts a pod.
    pub disruptive: bool,
}

impl Proposal {
    /// The pod key `namespace/name` of a migration.
    pub fn pod_key(&self) -> Option<String> {
        match &self.subject {
            Subject::Migration { pod, .. } => Some(format!("{}/{}", self.namespace, pod)),
            _ => None,
        }
    }

    /// Source and target nodes of a migration.
    pub fn nodes(&self) -> Option<(&str, &str)> {
        match &self.subject {
            Subject::Migration { from, to, .. } => Some((from, to)),
            _ => None,
        }
    }
}

/// Thresholds of every planner.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlannerConfig {
    /// Hotspot relief.
    pub migrate: migrate::MigrateConfig,
    /// Replica scaling.
    pub scale: scale::ScaleConfig,
    /// Provisioning.
    pub provision: provision::ProvisionConfig,
    /// Rebalancing.
    pub rebalance: rebalance::RebalanceConfig,
    /// Idle accelerators.
    pub optimize: optimize::OptimizeConfig,
}

/// The planners with the state they keep across cycles (scaling windows,
/// storage growth samples).
#[derive(Debug, Default)]
pub struct Planners {
    config: PlannerConfig,
    scale: scale::ScaleState,
    provision: provision::GrowthBook,
}

impl Planners {
    /// Planners with these thresholds.
    pub fn new(config: PlannerConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    /// The thresholds.
    pub fn config(&self) -> &PlannerConfig {
        &self.config
    }

    /// Runs every planner over `view`; `filter` says which pods may move and
    /// which nodes may receive them. Proposals come most urgent first.
    pub fn plan(&mut self, view: &PlanningView, filter: &dyn TargetFilter) -> Vec<Proposal> {
        let mut out = migrate::plan(view, &self.config.migrate, filter);
        let busy: Vec<String> = out.iter().filter_map(|p| p.pod_key()).collect();
        out.extend(scale::plan(view, &self.config.scale, &mut self.scale));
        out.extend(provision::plan(
            view,
            &self.config.provision,
            &mut self.provision,
        ));
        let overloaded = out.iter().any(|p| p.action == OrchestrationAction::Migrate);
        if !overloaded {
            out.extend(rebalance::plan(view, &self.config.rebalance, filter));
        }
        out.extend(
            optimize::plan(view, &self.config.optimize, filter)
                .into_iter()
                .filter(|p| p.pod_key().is_none_or(|k| !busy.contains(&k))),
        );
        out.sort_by(|a, b| b.urgency.total_cmp(&a.urgency));
        out
    }
}

/// Formats a fraction as a percentage with one decimal.
pub(crate) fn pct(v: f64) -> String {
    format!("{:.1}%", v * 100.0)
}
