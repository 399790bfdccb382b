//! Proposals become `OrchestrationPolicy` messages: target, priority from
//! urgency, deadline, execution constraints, reason and the numbers behind it.
//!
//! A dry-run policy carries the factor [`DRY_RUN_FACTOR`] and a reason
//! starting with `dry-run:`; executors skip it.

use std::time::{Duration, SystemTime};

use apollo_proto::{
    orchestration_policy::Target, AutoscalingTarget, ExecutionConstraints, MigrationTarget,
    OrchestrationAction, OrchestrationPolicy, PolicyPriority, ProvisioningTarget,
};

use crate::forecast::to_timestamp;
use crate::planner::{Proposal, Subject};

/// Contributing factor that marks a dry-run policy.
pub const DRY_RUN_FACTOR: &str = "dry_run=true";

/// Priority from urgency (0-1).
pub fn priority(urgency: f64) -> PolicyPriority {
    if urgency >= 0.85 {
        PolicyPriority::Critical
    } else if urgency >= 0.6 {
        PolicyPriority::High
    } else if urgency >= 0.35 {
        PolicyPriority::Medium
    } else {
        PolicyPriority::Low
    }
}

/// Execution settings shared by every policy.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicySettings {
    /// Retries an executor may make.
    pub max_retries: i32,
    /// Time an executor may take for a migration.
    pub migration_timeout: Duration,
    /// Blackout windows passed to executors, `HH:MM-HH:MM` UTC.
    pub blackout_windows: Vec<String>,
    /// Publish without executing.
    pub dry_run: bool,
}

impl Default for PolicySettings {
    fn default() -> Self {
        Self {
            max_retries: 3,
            migration_timeout: Duration::from_secs(600),
            blackout_windows: Vec::new(),
            dry_run: false,
        }
    }
}

/// Whether a policy is a dry run.
pub fn is_dry_run(p: &OrchestrationPolicy) -> bool {
    p.contributing_factors.iter().any(|f| f == DRY_RUN_FACTOR)
}

/// Namespace of a policy (its target's).
pub fn namespace_of(p: &OrchestrationPolicy) -> &str {
    match &p.target {
        Some(Target::Migration(m)) => &m.pod_namespace,
        Some(Target::Provisioning(t)) => &t.namespace,
        Some(Target::Autoscaling(a)) => &a.workload_namespace,
        None => "",
    }
}

/// Subject token of an action, e.g. `migrate`.
pub fn action_token(a: OrchestrationAction) -> String {
    a.as_str_name()
        .trim_start_matches("ORCHESTRATION_ACTION_")
        .to_ascii_lowercase()
}

/// Builds the policy for an approved proposal.
pub fn to_policy(
    p: &Proposal,
    request_id: String,
    now: SystemTime,
    s: &PolicySettings,
) -> OrchestrationPolicy {
    let timeout = match &p.subject {
        Subject::Migration { .. } => s.migration_timeout,
        _ => p.deadline_in.min(Duration::from_secs(3600)),
    };
    let target = match &p.subject {
        Subject::Migration {
            pod,
            from,
            to,
            preserve_pv,
        } => Target::Migration(MigrationTarget {
            pod_name: pod.clone(),
            pod_namespace: p.namespace.clone(),
            source_node: from.clone(),
            target_node: to.clone(),
            preserve_pv: *preserve_pv,
            timeout_seconds: timeout.as_secs().max(1) as i32,
        }),
        Subject::Scale {
            kind,
            name,
            current,
            desired,
        } => Target::Autoscaling(AutoscalingTarget {
            workload_name: name.clone(),
            workload_namespace: p.namespace.clone(),
            workload_kind: kind.as_str().to_string(),
            current_replicas: *current as i32,
            desired_replicas: *desired as i32,
            scaling_reason: p.reason.clone(),
        }),
        Subject::Provision {
            pvc_name,
            class,
            size_bytes,
            ..
        } => Target::Provisioning(ProvisioningTarget {
            pvc_name: pvc_name.clone(),
            namespace: p.namespace.clone(),
            storage_class: *class as i32,
            size_bytes: *size_bytes,
            iops: 0,
            throughput_mbps: 0,
            access_mode: "ReadWriteOnce".into(),
        }),
    };
    let mut factors = p.factors.clone();
    let mut reason = p.reason.clone();
    if s.dry_run {
        factors.push(DRY_RUN_FACTOR.to_string());
        reason = format!("dry-run: {reason}");
    }
    OrchestrationPolicy {
        request_id,
        action: p.action as i32,
        target: Some(target),
        priority: priority(p.urgency) as i32,
        constraints: Some(ExecutionConstraints {
            max_retries: s.max_retries,
            timeout_seconds: timeout.as_secs().max(1) as i32,
            allow_disruption: p.disruptive,
            blackout_windows: s.blackout_windows.clone(),
        }),
        reason,
        contributing_factors: factors,
        created_at: Some(to_timestamp(now)),
        deadline: Some(to_timestamp(now + p.deadline_in)),
    }
}
