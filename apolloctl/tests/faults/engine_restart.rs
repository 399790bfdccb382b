//! Each engine killed with SIGKILL mid-run and started again: it rebuilds
//! its view from the streams, reports SERVING only then, and its first
//! answers equal what it answered before for the same state.

use std::time::{Duration, Instant};

use apollo_common::testing::TestNats;
use apollo_proto::{
    insight_service_client::InsightServiceClient,
    orchestration_policy_service_client::OrchestrationPolicyServiceClient,
    scheduling_policy_service_client::SchedulingPolicyServiceClient, DataLocalityInfo,
    OrchestrationAction, OrchestrationPolicyRequest, PipelineStage, SchedulingResult,
    WorkloadSignature,
};

use crate::{
    procs::{wait_until, Service},
    scenario::{hot_node, nats_version, node, pod_request},
};

const BOUND: Duration = Duration::from_secs(60);

/// A policy as JSON without what differs per call (ids, timestamps).
fn comparable<T: serde::Serialize>(policy: &T) -> serde_json::Value {
    let mut v = serde_json::to_value(policy).unwrap();
    if let Some(o) = v.as_object_mut() {
        for k in ["requestId", "createdAt", "deadline"] {
            o.remove(k);
        }
    }
    v
}

/// Pods asked about before the kill and after the restart.
const PROBES: [(&str, &str); 5] = [
    ("loader", "1"),
    ("p-a", "2"),
    ("p-b", "4"),
    ("p-c", "8"),
    ("p-d", "12"),
];

/// Asks for each probe's policy, then reports its bind failed without a
/// node: the pod is no longer assumed and no node is penalised, so every
/// probe is answered on the same state, before the kill and after.
async fn ask_probes(url: String) -> Vec<serde_json::Value> {
    let mut c = SchedulingPolicyServiceClient::connect(url).await.unwrap();
    let mut out = Vec::new();
    for (pod, cpu) in PROBES {
        let p = c
            .get_scheduling_policy(pod_request(pod, cpu))
            .await
            .unwrap()
            .into_inner();
        report(&mut c, &p.request_id, pod, false, "").await;
        out.push(comparable(&p));
    }
    out
}

async fn report(
    c: &mut SchedulingPolicyServiceClient<tonic::transport::Channel>,
    request_id: &str,
    pod: &str,
    success: bool,
    node: &str,
) {
    let r = c
        .report_scheduling_result(SchedulingResult {
            request_id: request_id.into(),
            pod_name: pod.into(),
            pod_namespace: "ml".into(),
            scheduled_node: node.into(),
            success,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.success, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduling_killed_and_restarted_answers_as_before() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ingest = Service::start("apollo-ingest", dir.path(), nats.url(), &[]);
    // Nothing may change by itself while the test runs (the answers are
    // compared for the same state): assumptions, insights and penalties
    // outlive it.
    let mut scheduling = Service::start(
        "apollo-scheduling",
        dir.path(),
        nats.url(),
        &[
            ("APOLLO_ASSUME_TTL", "10m"),
            ("APOLLO_STALE_AFTER", "10m"),
            ("APOLLO_FAILURE_PENALTY_DECAY", "1000h"),
        ],
    );
    ingest.wait_ready_state(true, BOUND).await;
    scheduling.wait_ready_state(true, BOUND).await;

    // State: six nodes of rising use and one pod's signature with a cache.
    let mut ic = InsightServiceClient::connect(ingest.url()).await.unwrap();
    for i in 1..=6 {
        let insight = node(&format!("n{i}"), 0.1 * i as f64, vec![]);
        assert!(
            ic.report_cluster_insight(insight)
                .await
                .unwrap()
                .into_inner()
                .success
        );
    }
    let signature = WorkloadSignature {
        pod_name: "loader".into(),
        pod_namespace: "ml".into(),
        current_stage: PipelineStage::DataLoading as i32,
        data_locality: Some(DataLocalityInfo {
            cache_nodes: vec!["n5".into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    assert!(
        ic.report_workload_signature(signature)
            .await
            .unwrap()
            .into_inner()
            .success
    );
    wait_until("scheduling holds the state", BOUND, || async {
        scheduling.metric("apollo_view_nodes").await == 6.0
            && scheduling.metric("apollo_view_pods").await == 1.0
            && scheduling.metric("apollo_scheduling_nodes").await == 6.0
    })
    .await;

    // A burst the engine assumes on the nodes it recommends; then one bind
    // fails (that node is penalised) and one is confirmed.
    let mut c = SchedulingPolicyServiceClient::connect(scheduling.url())
        .await
        .unwrap();
    let mut burst = Vec::new();
    for (pod, cpu) in [
        ("b1", "4"),
        ("b2", "6"),
        ("b3", "3"),
        ("b4", "5"),
        ("b5", "2"),
    ] {
        let p = c
            .get_scheduling_policy(pod_request(pod, cpu))
            .await
            .unwrap()
            .into_inner();
        let top = p.node_preferences[0].node_name.clone();
        burst.push((pod, p.request_id, top));
    }
    report(&mut c, &burst[1].1, burst[1].0, false, &burst[1].2).await;
    report(&mut c, &burst[2].1, burst[2].0, true, &burst[2].2).await;
    let before = ask_probes(scheduling.url()).await;
    assert!(
        before[0]["nodePreferences"][0]["nodeName"] == "n5",
        "the cached node leads: {}",
        before[0]
    );
    assert!(
        before
            .iter()
            .any(|p| p.to_string().contains("bind-fail penalty")),
        "the penalty shows: {before:?}"
    );
    // What was answered is on the streams before the kill (the publisher
    // works off the request path).
    let policies = (burst.len() + PROBES.len()) as f64;
    let reports = (2 + PROBES.len()) as f64;
    wait_until("policies and reports published", BOUND, || async {
        scheduling
            .metric(r#"apollo_scheduling_published_total{kind="policy"}"#)
            .await
            == policies
            && scheduling
                .metric(r#"apollo_scheduling_published_total{kind="feedback"}"#)
                .await
                == reports
    })
    .await;

    scheduling.sigkill();
    let restarted = Instant::now();
    scheduling.spawn();
    scheduling.wait_ready_state(true, BOUND).await;
    let ready_ms = restarted.elapsed().as_millis() as u64;
    let rebuilt = |what: &'static str| {
        let s = &scheduling;
        async move {
            s.metric(&format!(r#"apollo_scheduling_rebuilt{{what="{what}"}}"#))
                .await
        }
    };
    // b1, b3 (confirmed), b4, b5; b2's bind failed, every probe's too.
    assert_eq!(rebuilt("assumptions").await, 4.0);
    assert_eq!(rebuilt("penalties").await, 1.0);
    assert_eq!(rebuilt("policies_read").await, policies);
    assert_eq!(rebuilt("feedback_read").await, reports);
    let rebuild_ms = (scheduling.metric("apollo_scheduling_rebuild_seconds").await * 1000.0) as u64;
    let after = ask_probes(scheduling.url()).await;
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        assert_eq!(b, a, "answer {i} differs after the restart");
    }
    // A repeated report of a request answered before the kill is still a
    // duplicate (the reported ids were rebuilt too).
    let mut c = SchedulingPolicyServiceClient::connect(scheduling.url())
        .await
        .unwrap();
    let again = c
        .report_scheduling_result(SchedulingResult {
            request_id: burst[1].1.clone(),
            pod_name: "b2".into(),
            pod_namespace: "ml".into(),
            scheduled_node: burst[1].2.clone(),
            success: false,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.message, "duplicate");

    // The same restart without the rebuild: other answers.
    scheduling.sigkill();
    scheduling.set_env("APOLLO_SCHED_REBUILD_MAX_MESSAGES", "0");
    scheduling.spawn();
    scheduling.wait_ready_state(true, BOUND).await;
    let unrebuilt = ask_probes(scheduling.url()).await;
    let differing = before
        .iter()
        .zip(&unrebuilt)
        .filter(|(b, u)| b != u)
        .count();
    assert!(
        differing > 0,
        "without the rebuild the answers are the same: the test shows nothing"
    );
    eprintln!(
        "{}",
        serde_json::json!({
            "fault": "scheduling_sigkill",
            "nats_server": nats_version(),
            "policies_sent": policies,
            "reports_sent": reports,
            "rebuilt_assumptions": 4,
            "rebuilt_penalties": 1,
            "answers_compared": before.len(),
            "answers_equal": before.len(),
            "answers_differing_without_rebuild": differing,
            "ready_after_restart_ms": ready_ms,
            "rebuild_ms": rebuild_ms,
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchestration_killed_and_restarted_answers_as_before() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ingest = Service::start("apollo-ingest", dir.path(), nats.url(), &[]);
    let mut orchestration = Service::start("apollo-orchestration", dir.path(), nats.url(), &[]);
    ingest.wait_ready_state(true, BOUND).await;
    orchestration.wait_ready_state(true, BOUND).await;

    let mut ic = InsightServiceClient::connect(ingest.url()).await.unwrap();
    for insight in [
        node("worker-1", 0.10, vec![]),
        node("worker-2", 0.30, vec![]),
        hot_node("hot-1"),
    ] {
        assert!(
            ic.report_cluster_insight(insight)
                .await
                .unwrap()
                .into_inner()
                .success
        );
    }
    wait_until("orchestration holds the state", BOUND, || async {
        orchestration.metric("apollo_view_nodes").await == 3.0
    })
    .await;

    let questions = [
        ("hot-1-train", OrchestrationAction::Migrate),
        ("hot-1-prep", OrchestrationAction::Migrate),
        ("hot-1-train", OrchestrationAction::Unspecified),
    ];
    let ask_all = |url: String| async move {
        let mut c = OrchestrationPolicyServiceClient::connect(url)
            .await
            .unwrap();
        let mut out = Vec::new();
        for (pod, action) in questions {
            let answer = c
                .get_orchestration_policy(OrchestrationPolicyRequest {
                    pod_name: pod.into(),
                    pod_namespace: "ml".into(),
                    requested_action: action as i32,
                })
                .await;
            out.push(match answer {
                Ok(p) => comparable(&p.into_inner()),
                Err(s) => {
                    serde_json::json!({"code": format!("{:?}", s.code()), "message": s.message()})
                }
            });
        }
        out
    };
    let before = ask_all(orchestration.url()).await;
    assert!(
        before[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("hot-1")),
        "an answer about the hot node: {}",
        before[0]
    );

    orchestration.sigkill();
    let restarted = Instant::now();
    orchestration.spawn();
    orchestration.wait_ready_state(true, BOUND).await;
    let ready_ms = restarted.elapsed().as_millis() as u64;
    let after = ask_all(orchestration.url()).await;
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        assert_eq!(b, a, "answer {i} differs after the restart");
    }
    eprintln!(
        "{}",
        serde_json::json!({
            "fault": "orchestration_sigkill",
            "nats_server": nats_version(),
            "answers_compared": before.len(),
            "answers_equal": before.len(),
            "ready_after_restart_ms": ready_ms,
        })
    );
}
