//! The engine's forecast consumer after NATS went away and came back (same
//! port and store): it follows the forecast stream anew as soon as the
//! connection is back, so a forecast stored right after the restart reaches
//! the engine's snapshot.
//!
//! The wait for that forecast is bounded by [`REFOLLOW_BOUND`], below the
//! time an ordered consumer takes to notice missed heartbeats and recreate
//! itself (about 15 s, see BENCHMARKS.md "Faults"): a consumer that only
//! recovers that way fails here. This is a liveness bound with a wide
//! margin over the sub-second re-follow, not a speed measurement.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use apollo_common::shutdown::CancellationToken;
use apollo_common::testing::TestNats;
use apollo_common::{Bus, ClusterView};
use apollo_proto::{
    ClusterInsight, NodeResources, ResourcePrediction, Timestamp, TimestampedResources,
};
use apollo_scheduling::config::EngineConfig;
use apollo_scheduling::state::ClusterState;

const REFOLLOW_BOUND: Duration = Duration::from_secs(10);
const BOUND: Duration = Duration::from_secs(30);

fn prediction(node: &str, cpu_percent: f64) -> ResourcePrediction {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    ResourcePrediction {
        node_name: node.into(),
        model_type: "ets".into(),
        upper_bound: vec![TimestampedResources {
            timestamp: Some(Timestamp {
                seconds: now + 300,
                nanos: 0,
            }),
            cpu_usage: cpu_percent,
            memory_usage: 10.0,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn peak_cpu(state: &ClusterState, node: &str) -> Option<f64> {
    state
        .read()
        .node(node)
        .and_then(|n| n.forecast.as_ref().map(|f| f.peak_cpu))
}

async fn wait_for(what: &str, bound: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < bound, "{what} not within {bound:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forecasts_are_followed_anew_as_soon_as_nats_is_back() {
    let mut nats = TestNats::start().await;
    assert!(nats.can_restart(), "needs a nats-server binary to restart");
    let (n, s) = nats.bus_args();
    let shutdown = CancellationToken::new();
    let service_bus = Bus::connect("apollo-scheduling", &n, &s, shutdown.clone())
        .await
        .unwrap();
    let peer = Bus::connect("test-peer", &n, &s, CancellationToken::new())
        .await
        .unwrap();
    assert!(service_bus.wait_ready(BOUND).await && peer.wait_ready(BOUND).await);

    let view = ClusterView::new();
    view.upsert_node(
        ClusterInsight {
            node_name: "n1".into(),
            node_resources: Some(NodeResources {
                cpu_allocatable_cores: 16.0,
                cpu_available_cores: 16.0,
                memory_allocatable_bytes: 64 << 30,
                ..Default::default()
            }),
            ..Default::default()
        },
        SystemTime::now(),
        0,
    );
    let state = Arc::new(ClusterState::new(view, EngineConfig::default()));
    state.sync_node("n1");
    state.spawn_forecast_follower(service_bus.clone(), shutdown.clone());

    let subject = peer.subjects().forecast("n1").unwrap();
    peer.publish(subject.clone(), &prediction("n1", 95.0))
        .await
        .expect("stored");
    wait_for("the first forecast", BOUND, || {
        peak_cpu(&state, "n1").is_some_and(|p| p > 0.9)
    })
    .await;

    assert!(nats.stop());
    let mut ready = service_bus.readiness();
    tokio::time::timeout(BOUND, ready.wait_for(|r| !*r))
        .await
        .expect("the service's bus notices the loss")
        .unwrap();
    assert!(nats.restart());
    assert!(service_bus.wait_ready(BOUND).await && peer.wait_ready(BOUND).await);

    peer.publish(subject, &prediction("n1", 30.0))
        .await
        .expect("stored after the restart");
    let took = wait_for(
        "the forecast stored after the restart",
        REFOLLOW_BOUND,
        || peak_cpu(&state, "n1").is_some_and(|p| (p - 0.3).abs() < 1e-9),
    )
    .await;
    eprintln!("forecast after restart applied in {} ms", took.as_millis());
    shutdown.cancel();
}
