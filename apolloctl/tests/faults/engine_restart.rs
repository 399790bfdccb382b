//! Each engine killed with SIGKILL mid-run and started again: it rebuilds
//! its view from the streams, reports SERVING only then, and its first
//! answers equal what it answered before for the same state.

use std::time::{Duration, Instant};

use apollo_common::testing::TestNats;
use apollo_proto::{
    insight_service_client::InsightServiceClient,
    orchestration_policy_service_client::OrchestrationPolicyServiceClient,
    scheduling_policy_service_client::SchedulingPolicyServiceClient, DataLocalityInfo,
    OrchestrationAction, OrchestrationPolicyRequest, PipelineStage, WorkloadSignature,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduling_killed_and_restarted_answers_as_before() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ingest = Service::start("apollo-ingest", dir.path(), nats.url(), &[]);
    let mut scheduling = Service::start("apollo-scheduling", dir.path(), nats.url(), &[]);
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

    // A burst: each answer also depends on the ones before it (assumed pods).
    let questions = [
        ("loader", "1"),
        ("a", "2"),
        ("b", "4"),
        ("c", "8"),
        ("d", "12"),
    ];
    let ask_all = |url: String| async move {
        let mut c = SchedulingPolicyServiceClient::connect(url).await.unwrap();
        let mut out = Vec::new();
        for (pod, cpu) in questions {
            let p = c
                .get_scheduling_policy(pod_request(pod, cpu))
                .await
                .unwrap()
                .into_inner();
            out.push(comparable(&p));
        }
        out
    };
    let before = ask_all(scheduling.url()).await;
    assert!(
        before[0]["nodePreferences"][0]["nodeName"] == "n5",
        "the cached node leads: {}",
        before[0]
    );

    scheduling.sigkill();
    let restarted = Instant::now();
    scheduling.spawn();
    scheduling.wait_ready_state(true, BOUND).await;
    let ready_ms = restarted.elapsed().as_millis() as u64;
    let after = ask_all(scheduling.url()).await;
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        assert_eq!(b, a, "answer {i} differs after the restart");
    }
    eprintln!(
        "{}",
        serde_json::json!({
            "fault": "scheduling_sigkill",
            "nats_server": nats_version(),
            "answers_compared": before.len(),
            "answers_equal": before.len(),
            "ready_after_restart_ms": ready_ms,
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
