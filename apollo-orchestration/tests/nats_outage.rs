//! NATS stopped and restarted under the orchestration engine (a real
//! nats-server): what it issues meanwhile waits in the outbox and is stored
//! once the server is back, in order, once each, within the outbox bound;
//! and the engine follows forecasts again at once.

use std::time::{Duration, Instant};

use apollo_common::shutdown::CancellationToken;
use apollo_common::testing::TestNats;
use apollo_common::{bus::StreamKind, Bus, ClusterView};
use apollo_orchestration::engine::Engine;
use apollo_orchestration::metrics::Metrics;
use apollo_orchestration::service::PolicyService;
use apollo_proto::orchestration_policy::Target;
use apollo_proto::{MigrationTarget, OrchestrationAction, OrchestrationPolicy};

fn policy(i: usize) -> OrchestrationPolicy {
    OrchestrationPolicy {
        request_id: format!("while-down-{i}"),
        action: OrchestrationAction::Migrate as i32,
        target: Some(Target::Migration(MigrationTarget {
            pod_name: format!("p{i}"),
            pod_namespace: format!("ns{i}"),
            source_node: "a".into(),
            target_node: "b".into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

struct Engine0 {
    nats: TestNats,
    bus: Bus,
    service: PolicyService,
    metrics: Metrics,
    engine: Engine,
    shutdown: CancellationToken,
}

impl Drop for Engine0 {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(outbox: usize) -> Engine0 {
    let nats = TestNats::start().await;
    assert!(nats.can_restart(), "needs a nats-server binary");
    let (n, s) = nats.bus_args();
    on(nats, n, s, outbox).await
}

/// The engine's bus, engine and policy service (no gRPC server) on `nats`,
/// with its outbox running.
async fn on(
    nats: TestNats,
    n: apollo_common::config::NatsArgs,
    s: apollo_common::config::StreamArgs,
    outbox: usize,
) -> Engine0 {
    let mut config = apollo_orchestration::Config::with_defaults(n.clone(), s.clone());
    config.policy_outbox = outbox;
    let shutdown = CancellationToken::new();
    let bus = Bus::connect("apollo-orchestration", &n, &s, shutdown.clone())
        .await
        .unwrap();
    assert!(bus.wait_ready(Duration::from_secs(10)).await);
    let metrics = Metrics::default();
    let engine = Engine::new(
        config.engine(),
        ClusterView::with_limits(config.view.clone()),
        metrics.clone(),
    );
    let service = PolicyService::new(
        engine.clone(),
        bus.clone(),
        config.delivery(),
        None,
        shutdown.child_token(),
    );
    tokio::spawn(service.outbox().clone().run(shutdown.clone()));
    Engine0 {
        nats,
        bus,
        service,
        metrics,
        engine,
        shutdown,
    }
}

async fn wait_not_ready(bus: &Bus) {
    let mut ready = bus.readiness();
    tokio::time::timeout(Duration::from_secs(10), ready.wait_for(|r| !*r))
        .await
        .expect("the bus never noticed the outage")
        .unwrap();
}

/// Every orchestration policy on the stream, in stream order.
async fn stored(bus: &Bus) -> Vec<String> {
    let stream = bus.get_stream(StreamKind::Policy).await.unwrap();
    let n = stream.cached_info().state.messages;
    let mut ids = Vec::new();
    for seq in 1..=stream.cached_info().state.last_sequence {
        if let Ok(m) = stream.get_raw_message(seq).await {
            let p: OrchestrationPolicy = serde_json::from_slice(&m.payload).unwrap();
            ids.push(p.request_id);
        }
    }
    assert_eq!(ids.len() as u64, n);
    ids
}

async fn wait_flushed(e: &Engine0) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while e.service.outbox().depth() > 0 {
        assert!(
            Instant::now() < deadline,
            "outbox still holds {} after NATS came back",
            e.service.outbox().depth()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn policies_issued_while_nats_is_down_are_stored_once_it_is_back() {
    let mut e = start(5).await;
    let t0 = Instant::now();
    assert!(e.nats.stop());
    wait_not_ready(&e.bus).await;

    // Within the bound: all five wait, then all five are stored, in order,
    // once each.
    for i in 0..5 {
        e.service.publish(&policy(i)).await;
    }
    assert_eq!(e.service.outbox().depth(), 5);
    assert_eq!(e.metrics.outbox_depth.get(), 5);
    assert!(e.nats.restart());
    let down = t0.elapsed();
    wait_flushed(&e).await;
    let recovered = t0.elapsed() - down;
    let first = stored(&e.bus).await;
    let want: Vec<String> = (0..5).map(|i| format!("while-down-{i}")).collect();
    assert_eq!(first, want, "stored in order, once each");
    assert_eq!(e.metrics.outbox_dropped.get(), 0);

    // Past the bound: the oldest two of seven are dropped and counted, the
    // newest five stored.
    assert!(e.nats.stop());
    wait_not_ready(&e.bus).await;
    for i in 10..17 {
        e.service.publish(&policy(i)).await;
    }
    assert_eq!(e.metrics.outbox_dropped.get(), 2);
    assert_eq!(e.service.outbox().depth(), 5);
    assert!(e.nats.restart());
    wait_flushed(&e).await;
    let second = stored(&e.bus).await;
    let want: Vec<String> = (12..17).map(|i| format!("while-down-{i}")).collect();
    assert_eq!(second, want, "the newest five, in order, once each");
    let duplicated =
        |ids: &[String]| ids.len() - ids.iter().collect::<std::collections::HashSet<_>>().len();
    eprintln!(
        "{}",
        serde_json::json!({
            "fault": "orchestration outbox across a NATS restart",
            "within_bound": {"issued": 5, "stored": first.len(), "lost": 5 - first.len(), "duplicated": duplicated(&first)},
            "past_bound": {"issued": 7, "capacity": 5, "dropped": e.metrics.outbox_dropped.get(), "stored": second.len(), "duplicated": duplicated(&second)},
            "publish_failures": e.metrics.publish_failures.get(),
            "flushed_after_restart_ms": recovered.as_millis(),
        })
    );
    let _ = &e.engine;
}

fn forecast(node: &str, id: &str) -> apollo_proto::ResourcePrediction {
    apollo_proto::ResourcePrediction {
        node_name: node.into(),
        prediction_id: id.into(),
        ..Default::default()
    }
}

async fn wait_forecast(engine: &Engine, node: &str, within: Duration) -> Duration {
    let t0 = Instant::now();
    while engine.forecast(node).is_none() {
        assert!(
            t0.elapsed() < within,
            "forecast for {node} not applied within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    t0.elapsed()
}

#[tokio::test]
async fn forecasts_are_followed_again_as_soon_as_nats_is_back() {
    let mut e = start(16).await;
    tokio::spawn(apollo_orchestration::service::follow_forecasts(
        e.bus.clone(),
        e.engine.clone(),
        e.shutdown.clone(),
    ));
    let subject = |node: &str| e.bus.subjects().forecast(node).unwrap();
    e.bus
        .publish(subject("n1"), &forecast("n1", "before"))
        .await
        .unwrap();
    wait_forecast(&e.engine, "n1", Duration::from_secs(10)).await;

    assert!(e.nats.stop());
    wait_not_ready(&e.bus).await;
    assert!(e.nats.restart());
    assert!(e.bus.wait_ready(Duration::from_secs(20)).await);
    e.bus
        .publish(subject("n2"), &forecast("n2", "after"))
        .await
        .unwrap();
    // Without following anew, the old consumer waits for missed heartbeats
    // (about 15 s) before anything arrives.
    let took = wait_forecast(&e.engine, "n2", Duration::from_secs(5)).await;
    assert_eq!(e.engine.forecast("n2").unwrap().prediction_id, "after");
    eprintln!(
        "{}",
        serde_json::json!({
            "fault": "orchestration forecasts across a NATS restart",
            "applied_after_publish_ms": took.as_millis(),
        })
    );
}

#[tokio::test]
async fn a_policy_nats_refuses_for_good_is_dropped_and_holds_back_nothing() {
    // This service's NATS user may publish migrations but not rebalancing
    // policies (a deployment mistake a retry cannot cure).
    let nats = TestNats::start_with_config(
        r#"authorization { users = [ {
            user: "orch", password: "orch-pass",
            permissions: {
                publish: { allow: ["$JS.API.>", "refused.policy.orchestration.migrate.>"] },
                subscribe: { allow: ["_INBOX.>"] }
            }
        } ] }"#,
    );
    let (mut n, s) = nats.bus_args();
    n.subject_prefix = "refused".into();
    n.stream_prefix = "REFUSED".into();
    n.user = Some("orch".into());
    n.password = Some("orch-pass".into());
    let e = on(nats, n, s, 16).await;

    let mut refused = policy(1);
    refused.action = OrchestrationAction::Rebalance as i32;
    e.service.publish(&refused).await;
    e.service.publish(&policy(2)).await;
    assert_eq!(
        e.service.outbox().depth(),
        0,
        "nothing waits behind the refused policy"
    );
    assert_eq!(e.metrics.outbox_dropped.get(), 1);
    assert_eq!(stored(&e.bus).await, vec!["while-down-2".to_string()]);
}
