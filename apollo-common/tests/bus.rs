//! The bus against a real nats-server: streams, headers, de-duplication and
//! rebuilding the ClusterView from the stream.

use std::time::{Duration, SystemTime};

use apollo_common::{shutdown::CancellationToken, testing::TestNats, Bus, ClusterView};
use apollo_proto::{ClusterInsight, NodeResources, WorkloadSignature};
use futures::StreamExt;

async fn bus(nats: &TestNats) -> (Bus, CancellationToken) {
    let (n, s) = nats.bus_args();
    let token = CancellationToken::new();
    let bus = Bus::connect("test", &n, &s, token.clone()).await.unwrap();
    assert!(
        bus.wait_ready(Duration::from_secs(30)).await,
        "bus never became ready"
    );
    (bus, token)
}

fn insight(node: &str, cpu: f64) -> ClusterInsight {
    ClusterInsight {
        node_name: node.into(),
        node_resources: Some(NodeResources {
            cpu_used_cores: cpu,
            cpu_allocatable_cores: 32.0,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn publish_sets_headers_and_deduplicates_retries() {
    let nats = TestNats::start().await;
    let (bus, _t) = bus(&nats).await;
    let subject = bus.subjects().cluster("node.a").unwrap();
    let mut sub = bus.client().subscribe(subject.clone()).await.unwrap();

    let first = bus
        .publish(subject.clone(), &insight("node.a", 1.5))
        .await
        .unwrap();
    let retry = bus
        .publish(subject.clone(), &insight("node.a", 1.5))
        .await
        .unwrap();
    let other = bus
        .publish(subject.clone(), &insight("node.a", 2.5))
        .await
        .unwrap();
    assert!(!first.duplicate);
    assert!(retry.duplicate, "identical content must be de-duplicated");
    assert_eq!(first.msg_id, retry.msg_id);
    assert_ne!(first.msg_id, other.msg_id);

    let stream = bus
        .get_stream(apollo_common::bus::StreamKind::Insight)
        .await
        .unwrap();
    let info = stream.get_info().await.unwrap();
    assert_eq!(info.state.messages, 2);

    let msg = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap();
    let headers = msg.headers.expect("headers");
    assert_eq!(
        headers.get("Content-Type").unwrap().as_str(),
        "application/json"
    );
    assert_eq!(headers.get("Nats-Msg-Id").unwrap().as_str(), first.msg_id);
    let tp = headers.get("traceparent").unwrap().as_str().to_string();
    assert_eq!(tp.split('-').count(), 4, "traceparent {tp}");
    let body: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(body["nodeName"], "node.a");
    assert_eq!(body["nodeResources"]["cpuUsedCores"], 1.5);
}

#[tokio::test]
async fn cluster_view_rebuilds_latest_state_then_follows() {
    let nats = TestNats::start().await;
    let (bus, token) = bus(&nats).await;
    let s = bus.subjects().clone();
    for cpu in [1.0, 2.0, 3.0] {
        bus.publish(s.cluster("n1").unwrap(), &insight("n1", cpu))
            .await
            .unwrap();
    }
    bus.publish(s.cluster("n2").unwrap(), &insight("n2", 7.0))
        .await
        .unwrap();
    let sig = WorkloadSignature {
        pod_name: "trainer.0".into(),
        pod_namespace: "ml".into(),
        ..Default::default()
    };
    bus.publish(s.workload("ml", "trainer.0").unwrap(), &sig)
        .await
        .unwrap();
    // Garbage on an insight subject must be counted and skipped, not stop the view.
    bus.client()
        .publish(s.cluster("bad").unwrap(), "not json".into())
        .await
        .unwrap();
    bus.client().flush().await.unwrap();

    let view = ClusterView::new();
    view.follow(bus.clone(), token.clone());
    assert!(view.wait_synced(Duration::from_secs(10)).await);
    // The following runs on its own thread under SCHED_IDLE (5), off the
    // runtime that answers calls.
    let policies = apollo_common::testing::thread_policies("view-follower");
    assert!(
        !policies.is_empty() && policies.iter().all(|p| *p == 5),
        "view-follower threads and their policies: {policies:?}"
    );
    assert_eq!(view.len(), (2, 1));
    let n1 = view.node("n1").unwrap();
    assert_eq!(
        n1.value.node_resources.as_ref().unwrap().cpu_used_cores,
        3.0
    );
    assert!(n1.age() < Duration::from_secs(60));
    assert!(n1.stored_at <= SystemTime::now());
    assert!(view.pod("ml", "trainer.0").is_some());

    let mut changes = view.subscribe();
    bus.publish(s.cluster("n3").unwrap(), &insight("n3", 4.0))
        .await
        .unwrap();
    let change = tokio::time::timeout(Duration::from_secs(5), changes.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        change,
        apollo_common::cluster_view::ViewChange::Node("n3".into())
    );
    assert_eq!(view.len(), (3, 1));
    token.cancel();
}

#[tokio::test]
async fn not_ready_without_nats_and_recovers() {
    let mut nats = TestNats::start().await;
    if !nats.can_restart() {
        eprintln!("skipping: the NATS server in use cannot be stopped by the test (NATS_URL or container)");
        return;
    }
    let (bus, _t) = bus(&nats).await;
    assert!(nats.stop());
    let mut ready = bus.readiness();
    tokio::time::timeout(Duration::from_secs(10), ready.wait_for(|r| !*r))
        .await
        .unwrap()
        .unwrap();
    let err = bus
        .publish(bus.subjects().cluster("n").unwrap(), &insight("n", 1.0))
        .await
        .unwrap_err();
    assert!(
        matches!(err, apollo_common::BusError::Unavailable(_)),
        "{err}"
    );
    assert!(nats.restart());
    assert!(
        bus.wait_ready(Duration::from_secs(20)).await,
        "bus did not recover"
    );
    bus.publish(bus.subjects().cluster("n").unwrap(), &insight("n", 1.0))
        .await
        .unwrap();
}

/// Services of one deployment start together and set up the same streams at
/// once: every one of them must become ready, whatever order the server
/// sees their requests in (nats-server 2.9.10 crashed under needless
/// concurrent stream updates).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_starting_together_on_the_same_streams_all_become_ready() {
    let nats = TestNats::start().await;
    for round in 0..5 {
        let (n, s) = nats.bus_args();
        let token = CancellationToken::new();
        let mut buses = Vec::new();
        for i in 0..6 {
            let (n, s, token) = (n.clone(), s.clone(), token.clone());
            buses.push(tokio::spawn(async move {
                let bus = Bus::connect(&format!("svc-{i}"), &n, &s, token)
                    .await
                    .unwrap();
                let started = std::time::Instant::now();
                let ready = bus.wait_ready(Duration::from_secs(15)).await;
                (ready, started.elapsed())
            }));
        }
        let mut outcomes = Vec::new();
        for b in buses {
            outcomes.push(b.await.unwrap());
        }
        assert!(
            outcomes.iter().all(|(ready, _)| *ready),
            "round {round}: ready, time: {outcomes:?}"
        );
        token.cancel();
    }
}
