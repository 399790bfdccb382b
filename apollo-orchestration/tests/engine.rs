//! The planning engine over a cluster view filled directly: fresh
//! evaluations, idempotent results, failure backoff, stale nodes.

use std::time::{Duration, SystemTime};

use apollo_common::ClusterView;
use apollo_orchestration::engine::{Engine, EngineConfig, EngineError, PolicyState};
use apollo_orchestration::metrics::Metrics;
use apollo_orchestration::planner::PlannerConfig;
use apollo_orchestration::policy::PolicySettings;
use apollo_orchestration::rails::RailsConfig;
use apollo_proto::orchestration_policy::Target;
use apollo_proto::{
    ClusterInsight, ExecutionResult, NodeResources, OrchestrationAction, PipelineStage,
    WorkloadSummary,
};

const GIB: i64 = 1 << 30;

fn insight(name: &str, cpu: f64, pods: &[(&str, f64, PipelineStage)]) -> ClusterInsight {
    ClusterInsight {
        node_name: name.into(),
        node_resources: Some(NodeResources {
            cpu_allocatable_cores: 16.0,
            memory_allocatable_bytes: 64 * GIB,
            cpu_used_cores: 16.0 * cpu,
            memory_used_bytes: 16 * GIB,
            ..Default::default()
        }),
        running_workloads: pods
            .iter()
            .map(|(n, c, s)| WorkloadSummary {
                pod_name: n.to_string(),
                pod_namespace: "ml".into(),
                current_stage: *s as i32,
                cpu_usage: *c,
                memory_usage: GIB as f64,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn engine(dry_run: bool, stored_at: SystemTime) -> Engine {
    let view = ClusterView::new();
    view.upsert_node(
        insight(
            "hot",
            0.95,
            &[
                ("prep", 2.5, PipelineStage::Preprocessing),
                ("train", 6.0, PipelineStage::Training),
            ],
        ),
        stored_at,
        1,
    );
    view.upsert_node(
        insight("w1", 0.3, &[("idle", 1.0, PipelineStage::Idle)]),
        stored_at,
        2,
    );
    let cfg = EngineConfig {
        planners: PlannerConfig::default(),
        rails: RailsConfig::default(),
        policy: PolicySettings {
            dry_run,
            ..PolicySettings::default()
        },
        forecast_horizon: Duration::from_secs(1800),
        stale_after: Duration::from_secs(120),
    };
    Engine::new(cfg, view, Metrics::default())
}

#[test]
fn fresh_evaluation_answers_without_side_effects() {
    let now = SystemTime::now();
    let e = engine(false, now);
    // Nothing issued yet: a fresh evaluation proposes the move...
    let p = e
        .policy_for("ml", "prep", OrchestrationAction::Unspecified, now)
        .unwrap();
    assert_eq!(p.action, OrchestrationAction::Migrate as i32);
    // ...without recording it: the planning cycle still issues it.
    assert!(e.record(&p.request_id).is_none());
    let cycle = e.plan(now);
    assert_eq!(cycle.issued.len(), 1, "{cycle:?}");
    // A pod on a cool node gets "no action" with the numbers.
    let idle = e
        .policy_for("ml", "idle", OrchestrationAction::Unspecified, now)
        .unwrap();
    assert_eq!(idle.action, OrchestrationAction::Unspecified as i32);
    assert!(
        idle.reason.starts_with("no action: node w1"),
        "{}",
        idle.reason
    );
    assert_eq!(
        e.policy_for("ml", "", OrchestrationAction::Unspecified, now),
        Err(EngineError::Invalid {
            field: "pod_name",
            reason: "empty".into()
        })
    );
}

#[test]
fn a_failed_move_backs_off_the_pod_and_results_are_idempotent() {
    let now = SystemTime::now();
    let e = engine(false, now);
    let issued = e.plan(now).issued;
    let first = issued[0].clone();
    let Some(Target::Migration(m)) = &first.target else {
        panic!("{first:?}")
    };
    assert_eq!(m.pod_name, "prep");
    let failure = ExecutionResult {
        request_id: first.request_id.clone(),
        action: first.action,
        success: false,
        failure_reason: "target rejected the pod".into(),
        ..Default::default()
    };
    let a = e.report(&failure).unwrap();
    let b = e.report(&failure).unwrap();
    assert!(!a.duplicate && b.duplicate);
    assert_eq!(a.response, b.response);
    assert_eq!(
        e.record(&first.request_id).unwrap().state,
        PolicyState::Failed
    );
    // Next cycle: "prep" is backed off, so relief comes from another pod.
    let next = e.plan(now + Duration::from_secs(20)).issued;
    for p in &next {
        if let Some(Target::Migration(m)) = &p.target {
            assert_ne!(m.pod_name, "prep", "{next:?}");
        }
    }
    // A result for another action is refused.
    let wrong = ExecutionResult {
        request_id: first.request_id.clone(),
        action: OrchestrationAction::Provision as i32,
        ..Default::default()
    };
    assert!(matches!(
        e.report(&wrong),
        Err(EngineError::Invalid {
            field: "action",
            ..
        })
    ));
}

#[test]
fn dry_run_policies_are_recorded_as_such_and_stale_nodes_are_ignored() {
    let now = SystemTime::now();
    let e = engine(true, now);
    let issued = e.plan(now).issued;
    assert_eq!(issued.len(), 1);
    assert!(apollo_orchestration::policy::is_dry_run(&issued[0]));
    assert_eq!(
        e.record(&issued[0].request_id).unwrap().state,
        PolicyState::DryRun
    );

    let stale = engine(false, now - Duration::from_secs(600));
    assert!(
        stale.plan(now).issued.is_empty(),
        "insights ten minutes old"
    );
}
