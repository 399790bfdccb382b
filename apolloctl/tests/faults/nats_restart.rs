//! NATS gone and back: the server is stopped under the four running
//! services and started again on the same port and store directory. Each
//! service reports NOT_SERVING while it is gone, reconnects by itself, and
//! the forecaster and both engines catch up on what was stored in the
//! streams before they were back.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use apollo_common::{
    bus::StreamKind, config::StreamArgs, shutdown::CancellationToken, testing::TestNats, Bus,
};
use apollo_proto::{
    insight_service_client::InsightServiceClient,
    scheduling_policy_service_client::SchedulingPolicyServiceClient, OrchestrationAction,
    OrchestrationPolicy,
};

use crate::{
    procs::{wait_until, Service},
    scenario::{decode, hot_node, nats_version, node, pod_request, stored},
};

const BOUND: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_gone_and_back_every_service_resumes_and_catches_up() {
    let mut nats = TestNats::start().await;
    if !nats.can_restart() {
        eprintln!("skipping: the NATS server in use cannot be stopped by the test (NATS_URL or container)");
        return;
    }
    let (mut bus_args, _) = nats.bus_args();
    // What the services use: file storage, so the streams survive the restart.
    let streams = StreamArgs::default();
    bus_args.request_timeout = Duration::from_secs(5);
    let env = [
        ("APOLLO_SUBJECT_PREFIX", bus_args.subject_prefix.as_str()),
        ("APOLLO_STREAM_PREFIX", bus_args.stream_prefix.as_str()),
        ("APOLLO_ORCH_PLAN_INTERVAL", "1s"),
        ("APOLLO_ORCH_PLAN_MIN_GAP", "100ms"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let services: Vec<Service> = [
        "apollo-ingest",
        "apollo-forecaster",
        "apollo-scheduling",
        "apollo-orchestration",
    ]
    .into_iter()
    .map(|name| Service::start(name, dir.path(), nats.url(), &env))
    .collect();
    for s in &services {
        s.wait_ready_state(true, BOUND).await;
    }
    let [ingest, forecaster, scheduling, orchestration] = &services[..] else {
        unreachable!()
    };
    let fc: &Service = forecaster;
    let peer = CancellationToken::new();
    let bus = Bus::connect("fault-test", &bus_args, &streams, peer.clone())
        .await
        .unwrap();
    assert!(bus.wait_ready(BOUND).await);

    // Before: two idle nodes through ingest, seen by every consumer.
    let mut ingest_client = InsightServiceClient::connect(ingest.url()).await.unwrap();
    for name in ["worker-1", "idle-1"] {
        let r = ingest_client
            .report_cluster_insight(node(name, 0.10, vec![]))
            .await
            .unwrap()
            .into_inner();
        assert!(r.success, "{r:?}");
    }
    let mut sched_client = SchedulingPolicyServiceClient::connect(scheduling.url())
        .await
        .unwrap();
    let consumed = "apollo_forecaster_insights_consumed_total";
    wait_until(
        "forecaster consumed the first insights",
        BOUND,
        || async move { fc.metric(consumed).await == 2.0 },
    )
    .await;
    wait_until("scheduling sees both nodes", BOUND, || {
        let mut c = sched_client.clone();
        async move {
            let p = c
                .get_scheduling_policy(pod_request("before", "1"))
                .await
                .unwrap()
                .into_inner();
            p.node_preferences.len() == 2
        }
    })
    .await;

    // Gone: every service stops serving.
    let outage_started = Instant::now();
    assert!(nats.stop());
    for s in [ingest, fc, scheduling, orchestration] {
        s.wait_ready_state(false, BOUND).await;
    }
    let outage = outage_started.elapsed();

    // Back on the same port and store. The peer stores new data at once,
    // before the services are back: they must catch up on it.
    assert!(nats.restart());
    let back = Instant::now();
    assert!(bus.wait_ready(BOUND).await, "peer bus never came back");
    let subjects = bus.subjects().clone();
    let direct = [node("late-1", 0.10, vec![]), hot_node("hot-1")];
    for insight in &direct {
        bus.publish(subjects.cluster(&insight.node_name).unwrap(), insight)
            .await
            .expect("stored after the restart");
    }

    let mut recovery_ms = serde_json::Map::new();
    for s in [ingest, fc, scheduling, orchestration] {
        s.wait_ready_state(true, BOUND).await;
        recovery_ms.insert(
            s.name().into(),
            serde_json::json!(back.elapsed().as_millis() as u64),
        );
    }
    // Ingest stores again once serving.
    let r = ingest_client
        .report_cluster_insight(node("after-1", 0.10, vec![]))
        .await
        .expect("ingest accepts reports after the restart")
        .into_inner();
    assert!(r.success, "{r:?}");

    // Catch-up, each consumer on its own path.
    wait_until("forecaster caught up", BOUND, || async move {
        fc.metric(consumed).await >= 5.0
    })
    .await;
    let forecaster_caught_up = back.elapsed();
    wait_until("scheduling caught up", BOUND, || {
        let mut c = sched_client.clone();
        async move {
            let p = c
                .get_scheduling_policy(pod_request("after", "1"))
                .await
                .unwrap()
                .into_inner();
            let names: HashSet<&str> = p
                .node_preferences
                .iter()
                .map(|n| n.node_name.as_str())
                .collect();
            ["late-1", "after-1", "worker-1"]
                .iter()
                .all(|n| names.contains(n))
        }
    })
    .await;
    let scheduling_caught_up = back.elapsed();
    let policy_filter = subjects.all("policy.orchestration");
    wait_until("a migration off hot-1", BOUND, || {
        let (bus, filter) = (bus.clone(), policy_filter.clone());
        async move {
            let policies: Vec<OrchestrationPolicy> =
                decode(&stored(&bus, StreamKind::Policy, filter).await);
            policies.iter().any(|p| {
                p.action() == OrchestrationAction::Migrate
                    && matches!(
                        &p.target,
                        Some(apollo_proto::orchestration_policy::Target::Migration(m))
                            if m.source_node == "hot-1"
                    )
            })
        }
    })
    .await;
    let orchestration_caught_up = back.elapsed();
    sched_client
        .get_scheduling_policy(pod_request("final", "1"))
        .await
        .unwrap();

    // Nothing lost, nothing twice: five insights were acknowledged, five
    // are stored (one per subject), and the forecaster consumed each once.
    let insights = stored(&bus, StreamKind::Insight, subjects.all("insight.cluster")).await;
    let subjects_seen: HashSet<&str> = insights.iter().map(|(s, _, _)| s.as_str()).collect();
    assert_eq!(insights.len(), 5, "{subjects_seen:?}");
    assert_eq!(subjects_seen.len(), 5);
    let forecaster_consumed = forecaster.metric(consumed).await;
    assert_eq!(
        forecaster_consumed, 5.0,
        "the forecaster consumed a message twice"
    );
    let policies: Vec<OrchestrationPolicy> =
        decode(&stored(&bus, StreamKind::Policy, policy_filter).await);
    let ids: HashSet<&str> = policies.iter().map(|p| p.request_id.as_str()).collect();
    assert_eq!(ids.len(), policies.len(), "a policy was stored twice");

    eprintln!(
        "{}",
        serde_json::json!({
            "fault": "nats_restart",
            "nats_server": nats_version(),
            "outage_detected_ms": outage.as_millis() as u64,
            "sent": 5,
            "acknowledged": 5,
            "stored": insights.len(),
            "forecaster_consumed": forecaster_consumed,
            "forecaster_redeliveries_skipped": forecaster
                .metric("apollo_forecaster_redeliveries_skipped_total")
                .await,
            "lost": 5 - insights.len(),
            "duplicated": (forecaster_consumed as usize).saturating_sub(5),
            "ready_after_restart_ms": recovery_ms,
            "caught_up_ms": {
                "apollo-forecaster": forecaster_caught_up.as_millis() as u64,
                "apollo-scheduling": scheduling_caught_up.as_millis() as u64,
                "apollo-orchestration": orchestration_caught_up.as_millis() as u64,
            },
        })
    );
    peer.cancel();
}
