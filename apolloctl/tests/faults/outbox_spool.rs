//! NATS down through the orchestration engine's shutdown: what its outbox
//! still holds at the drain deadline is written to the spool
//! (`APOLLO_OUTBOX_SPOOL`) and published first on the next start, once
//! each; the same spool published again is dropped by JetStream's
//! duplicate window (same `Nats-Msg-Id`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use apollo_common::{
    bus::StreamKind, config::StreamArgs, shutdown::CancellationToken, testing::TestNats, Bus,
};
use apollo_proto::{
    insight_service_client::InsightServiceClient,
    orchestration_policy_service_client::OrchestrationPolicyServiceClient, ExecutionResult,
    OrchestrationPolicy,
};

use crate::{
    procs::{wait_until, Service},
    scenario::{decode, hot_node, nats_version, node, stored},
};

const BOUND: Duration = Duration::from_secs(60);

/// Request ids on the orchestration policy stream and on its feedback
/// stream, each with how often it is stored.
async fn stored_ids(bus: &Bus) -> (BTreeMap<String, usize>, BTreeMap<String, usize>) {
    let policies: Vec<OrchestrationPolicy> = decode(
        &stored(
            bus,
            StreamKind::Policy,
            bus.subjects().all("policy.orchestration"),
        )
        .await,
    );
    let results: Vec<ExecutionResult> = decode(
        &stored(
            bus,
            StreamKind::Feedback,
            bus.subjects().all("feedback.orchestration"),
        )
        .await,
    );
    let count = |ids: Vec<String>| {
        let mut m = BTreeMap::new();
        for id in ids {
            *m.entry(id).or_insert(0) += 1;
        }
        m
    };
    (
        count(policies.into_iter().map(|p| p.request_id).collect()),
        count(results.into_iter().map(|r| r.request_id).collect()),
    )
}

/// (`policy` or `result`, request id) of each spool line.
fn spooled_ids(spool: &[u8]) -> Vec<(&'static str, String)> {
    String::from_utf8_lossy(spool)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a spool line");
            let kind = if v.get("policy").is_some() {
                "policy"
            } else {
                "result"
            };
            let id = v[kind]["requestId"].as_str().expect("a request id");
            (kind, id.to_string())
        })
        .collect()
}

fn spool_lines(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// Ingest and the orchestration engine (with `spool` as its
/// `APOLLO_OUTBOX_SPOOL`, if any) on one NATS server, after: policies
/// issued and stored, NATS stopped, every policy's execution reported
/// (acknowledged, waiting in the outbox), and SIGTERM.
struct AfterShutdown {
    nats: TestNats,
    _ingest: Service,
    orchestration: Service,
    bus: Bus,
    policies_before: BTreeMap<String, usize>,
    /// Results acknowledged while NATS was down.
    reported: Vec<String>,
    /// Outbox depth just before SIGTERM.
    held: usize,
    exit_after: Duration,
}

async fn shut_down_with_nats_down(dir: &std::path::Path, spool: Option<&str>) -> AfterShutdown {
    let mut nats = TestNats::start().await;
    let (bus_args, _) = nats.bus_args();
    let streams = StreamArgs::default();
    let mut env = vec![
        ("APOLLO_SUBJECT_PREFIX", bus_args.subject_prefix.as_str()),
        ("APOLLO_STREAM_PREFIX", bus_args.stream_prefix.as_str()),
        ("APOLLO_ORCH_PLAN_INTERVAL", "200ms"),
        ("APOLLO_ORCH_PLAN_MIN_GAP", "50ms"),
        ("APOLLO_SHUTDOWN_GRACE", "2s"),
    ];
    env.extend(spool.map(|s| ("APOLLO_OUTBOX_SPOOL", s)));
    let ingest = Service::start("apollo-ingest", dir, nats.url(), &env);
    let mut orchestration = Service::start("apollo-orchestration", dir, nats.url(), &env);
    ingest.wait_ready_state(true, BOUND).await;
    orchestration.wait_ready_state(true, BOUND).await;
    let bus = Bus::connect("fault-test", &bus_args, &streams, CancellationToken::new())
        .await
        .unwrap();
    assert!(bus.wait_ready(BOUND).await);

    // Policies issued and stored while NATS is up.
    let mut ic = InsightServiceClient::connect(ingest.url()).await.unwrap();
    for insight in [
        node("worker-1", 0.10, vec![]),
        node("worker-2", 0.20, vec![]),
        node("worker-3", 0.10, vec![]),
        node("worker-4", 0.20, vec![]),
        hot_node("hot-1"),
        hot_node("hot-2"),
        hot_node("hot-3"),
        hot_node("hot-4"),
    ] {
        assert!(
            ic.report_cluster_insight(insight)
                .await
                .unwrap()
                .into_inner()
                .success
        );
    }
    wait_until("policies off the hot nodes", BOUND, || {
        let bus = bus.clone();
        async move { stored_ids(&bus).await.0.len() >= 4 }
    })
    .await;
    let (policies_before, results_before) = stored_ids(&bus).await;
    assert!(results_before.is_empty());

    // NATS goes away; every policy's execution is reported meanwhile. Each
    // report is acknowledged to its client and waits in the outbox.
    nats.stop();
    orchestration.wait_ready_state(false, BOUND).await;
    let mut oc = OrchestrationPolicyServiceClient::connect(orchestration.url())
        .await
        .unwrap();
    for id in policies_before.keys() {
        let r = oc
            .report_execution_result(ExecutionResult {
                request_id: id.clone(),
                success: true,
                execution_duration_ms: 1200,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.success, "{r:?}");
    }
    let reported: Vec<String> = policies_before.keys().cloned().collect();
    // Whatever the planner issued meanwhile waits there too.
    let held = orchestration
        .metric("apollo_orchestration_outbox_depth")
        .await as usize;
    assert!(held >= reported.len(), "outbox holds {held}");

    // SIGTERM with NATS still down: the outbox keeps trying until the drain
    // deadline, then what is left goes to the spool (if there is one).
    let (exit_after, status) = orchestration.sigterm(BOUND).await;
    assert!(status.success(), "exit status {status}");
    AfterShutdown {
        nats,
        _ingest: ingest,
        orchestration,
        bus,
        policies_before,
        reported,
        held,
        exit_after,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_left_at_shutdown_with_nats_down_is_spooled_and_stored_once_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("outbox.spool");
    let spool_env = spool.display().to_string();
    let AfterShutdown {
        mut nats,
        _ingest,
        mut orchestration,
        bus,
        policies_before,
        reported,
        held,
        exit_after,
    } = shut_down_with_nats_down(dir.path(), Some(&spool_env)).await;
    let spooled = spool_lines(&spool);
    // The planner may add one between the depth read and SIGTERM.
    assert!(
        spooled >= held,
        "{spooled} spooled, {held} held before SIGTERM"
    );
    let spool_copy = std::fs::read(&spool).unwrap();
    assert_eq!(
        spooled_ids(&spool_copy)
            .iter()
            .filter(|(k, _)| *k == "result")
            .count(),
        reported.len()
    );

    // NATS back, the engine started again: the spool goes out first.
    assert!(nats.restart());
    assert!(bus.wait_ready(BOUND).await);
    let restarted = Instant::now();
    orchestration.spawn();
    orchestration.wait_ready_state(true, BOUND).await;
    wait_until("the spool stored and removed", BOUND, || async {
        !spool.exists()
            && orchestration
                .metric("apollo_orchestration_outbox_depth")
                .await
                == 0.0
    })
    .await;
    let stored_ms = restarted.elapsed().as_millis() as u64;
    assert_eq!(
        orchestration
            .metric(r#"apollo_orchestration_outbox_spool_total{op="loaded"}"#)
            .await,
        spooled as f64
    );
    let (policies_after, results_after) = stored_ids(&bus).await;
    assert!(policies_before
        .keys()
        .all(|id| policies_after.contains_key(id)));
    let lost: Vec<&String> = reported
        .iter()
        .filter(|id| !results_after.contains_key(*id))
        .collect();
    assert!(lost.is_empty(), "results lost: {lost:?}");
    let duplicated = |m: &BTreeMap<String, usize>| m.values().filter(|&&n| n > 1).count();
    assert_eq!(duplicated(&policies_after), 0, "{policies_after:?}");
    assert_eq!(duplicated(&results_after), 0, "{results_after:?}");
    // Each spooled message is stored, once.
    for (kind, id) in spooled_ids(&spool_copy) {
        let stored = if kind == "policy" {
            &policies_after
        } else {
            &results_after
        };
        assert_eq!(stored.get(&id), Some(&1), "spooled {kind} {id}");
    }

    // The same spool published again (a crash after storing it, before the
    // file was removed): JetStream drops every message as a duplicate.
    orchestration.sigkill();
    std::fs::write(&spool, &spool_copy).unwrap();
    orchestration.spawn();
    orchestration.wait_ready_state(true, BOUND).await;
    wait_until("the spool published again and removed", BOUND, || async {
        !spool.exists()
    })
    .await;
    let (policies_again, results_again) = stored_ids(&bus).await;
    for (kind, id) in spooled_ids(&spool_copy) {
        let stored = if kind == "policy" {
            &policies_again
        } else {
            &results_again
        };
        assert_eq!(
            stored.get(&id),
            Some(&1),
            "spooled {kind} {id} published again"
        );
    }
    assert_eq!(duplicated(&policies_again) + duplicated(&results_again), 0);

    eprintln!(
        "{}",
        serde_json::json!({
            "fault": "orchestration SIGTERM with NATS down, outbox spooled",
            "nats_server": nats_version(),
            "results_reported_while_down": reported.len(),
            "held_at_shutdown": held,
            "spooled": spooled,
            "spooled_stored_after_restart": spooled_ids(&spool_copy).len(),
            "lost": lost.len(),
            "duplicated": duplicated(&policies_after) + duplicated(&results_after),
            "duplicated_after_republishing_the_spool": duplicated(&policies_again) + duplicated(&results_again),
            "sigterm_to_exit_ms": exit_after.as_millis() as u64,
            "restart_to_spool_stored_ms": stored_ms,
        })
    );
}

/// The same shutdown without a spool: what the outbox held is lost (what
/// the test above shows the spool prevents).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_left_at_shutdown_without_a_spool_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let AfterShutdown {
        mut nats,
        _ingest,
        mut orchestration,
        bus,
        reported,
        held,
        ..
    } = shut_down_with_nats_down(dir.path(), None).await;
    assert!(nats.restart());
    assert!(bus.wait_ready(BOUND).await);
    orchestration.spawn();
    orchestration.wait_ready_state(true, BOUND).await;
    let (_, results_after) = stored_ids(&bus).await;
    let lost = reported
        .iter()
        .filter(|id| !results_after.contains_key(*id))
        .count();
    assert_eq!(lost, reported.len(), "{results_after:?}");
    eprintln!(
        "{}",
        serde_json::json!({
            "fault": "orchestration SIGTERM with NATS down, no spool",
            "nats_server": nats_version(),
            "results_reported_while_down": reported.len(),
            "held_at_shutdown": held,
            "lost": lost,
        })
    );
}
