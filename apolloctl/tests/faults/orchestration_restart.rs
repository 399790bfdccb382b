//! The orchestration engine killed (SIGKILL) right after it issued a
//! migration and started again under the same overload: it takes back its
//! policies from the policy stream before planning, so it does not move the
//! same pod again inside the cooldown.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use apollo_common::{
    bus::StreamKind, config::StreamArgs, shutdown::CancellationToken, testing::TestNats, Bus,
};
use apollo_proto::{
    insight_service_client::InsightServiceClient, orchestration_policy::Target, OrchestrationPolicy,
};

use crate::{
    procs::{wait_until, Service},
    scenario::{decode, hot_node, nats_version, node, stored},
};

const BOUND: Duration = Duration::from_secs(60);

/// Migrations on the policy stream, per `namespace/pod`.
async fn migrations(bus: &Bus) -> HashMap<String, Vec<String>> {
    let filter = bus.subjects().all("policy.orchestration");
    let policies: Vec<OrchestrationPolicy> = decode(&stored(bus, StreamKind::Policy, filter).await);
    let mut by_pod: HashMap<String, Vec<String>> = HashMap::new();
    for p in policies {
        if let Some(Target::Migration(m)) = &p.target {
            by_pod
                .entry(format!("{}/{}", m.pod_namespace, m.pod_name))
                .or_default()
                .push(p.request_id.clone());
        }
    }
    by_pod
}

/// Two idle workers and a hot node, reported through ingest.
async fn report_overload(ic: &mut InsightServiceClient<tonic::transport::Channel>) {
    for insight in [
        node("worker-1", 0.10, vec![]),
        node("worker-2", 0.30, vec![]),
        hot_node("hot-1"),
    ] {
        let r = ic
            .report_cluster_insight(insight)
            .await
            .unwrap()
            .into_inner();
        assert!(r.success, "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchestration_killed_after_a_migration_does_not_move_the_pod_again() {
    let nats = TestNats::start().await;
    let (mut bus_args, _) = nats.bus_args();
    let streams = StreamArgs::default();
    bus_args.request_timeout = Duration::from_secs(5);
    let env = [
        ("APOLLO_SUBJECT_PREFIX", bus_args.subject_prefix.as_str()),
        ("APOLLO_STREAM_PREFIX", bus_args.stream_prefix.as_str()),
        ("APOLLO_ORCH_PLAN_INTERVAL", "200ms"),
        ("APOLLO_ORCH_PLAN_MIN_GAP", "50ms"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let ingest = Service::start("apollo-ingest", dir.path(), nats.url(), &env);
    let mut orchestration = Service::start("apollo-orchestration", dir.path(), nats.url(), &env);
    ingest.wait_ready_state(true, BOUND).await;
    orchestration.wait_ready_state(true, BOUND).await;
    let bus = Bus::connect("fault-test", &bus_args, &streams, CancellationToken::new())
        .await
        .unwrap();
    assert!(bus.wait_ready(BOUND).await);

    let mut ic = InsightServiceClient::connect(ingest.url()).await.unwrap();
    report_overload(&mut ic).await;
    wait_until("a migration off hot-1", BOUND, || {
        let bus = bus.clone();
        async move { !migrations(&bus).await.is_empty() }
    })
    .await;
    let before = migrations(&bus).await;

    orchestration.sigkill();
    let restarted = Instant::now();
    orchestration.spawn();
    orchestration.wait_ready_state(true, BOUND).await;
    let ready_ms = restarted.elapsed().as_millis() as u64;
    let in_flight = orchestration
        .metric("apollo_orchestration_moves_in_flight")
        .await;
    // The same overload again, then enough planning cycles to act on it.
    report_overload(&mut ic).await;
    wait_until("planning cycles after the restart", BOUND, || async {
        orchestration
            .metric("apollo_orchestration_plan_cycles_total")
            .await
            >= 10.0
    })
    .await;
    let cycles = orchestration
        .metric("apollo_orchestration_plan_cycles_total")
        .await;
    let after = migrations(&bus).await;
    for (pod, ids) in &after {
        assert_eq!(
            ids.len(),
            1,
            "{pod} migrated again after the restart: {ids:?}"
        );
    }
    assert_eq!(after, before, "no migration issued after the restart");
    eprintln!(
        "{}",
        serde_json::json!({
            "fault": "orchestration_sigkill_cooldown",
            "nats_server": nats_version(),
            "migrations_before": before.values().map(Vec::len).sum::<usize>(),
            "migrations_after": after.values().map(Vec::len).sum::<usize>(),
            "moves_in_flight_restored": in_flight,
            "plan_cycles_after_restart": cycles,
            "ready_after_restart_ms": ready_ms,
        })
    );
}
