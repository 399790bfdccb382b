//! Collector -> NATS -> Scheduling Policy Engine: the engine's policy for a
//! pod reflects the requests and GPU allocation the collector saw in a
//! (synthetic) Kubernetes cluster.

use std::time::Duration;

use apollo_common::{shutdown::CancellationToken, testing::TestNats};
use apollo_ingest::{collector::fake_api, Config};
use apollo_proto::{
    scheduling_policy_service_client::SchedulingPolicyServiceClient, SchedulingPolicy,
    SchedulingPolicyRequest,
};
use tokio::net::TcpListener;
use tonic::transport::Channel;

async fn ask(
    client: &mut SchedulingPolicyServiceClient<Channel>,
    name: &str,
    annotations: &[(&str, &str)],
) -> SchedulingPolicy {
    client
        .get_scheduling_policy(SchedulingPolicyRequest {
            pod_name: name.into(),
            pod_namespace: "ml".into(),
            pod_annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        })
        .await
        .expect("the engine always answers")
        .into_inner()
}

/// Asks until `done` holds (the engine's view follows the bus).
async fn ask_until(
    client: &mut SchedulingPolicyServiceClient<Channel>,
    name: &str,
    annotations: &[(&str, &str)],
    done: impl Fn(&SchedulingPolicy) -> bool,
) -> SchedulingPolicy {
    let mut last = None;
    for _ in 0..400 {
        let p = ask(client, name, annotations).await;
        if done(&p) {
            return p;
        }
        last = Some(p);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition never met; last policy: {last:?}");
}

fn preferred(p: &SchedulingPolicy) -> Vec<&str> {
    p.node_preferences
        .iter()
        .map(|n| n.node_name.as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_follow_requests_and_gpu_allocation_seen_in_the_cluster() {
    let nats = TestNats::start().await;
    let shutdown = CancellationToken::new();
    let api = fake_api::FakeApi::serve(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        Duration::from_millis(200),
        shutdown.clone(),
    )
    .unwrap();
    // gpu-full: every GPU taken by one trainer; gpu-free: one of four taken;
    // cpu-busy: 28 of 32 cores requested.
    api.apply(fake_api::node("gpu-full", "64", "512Gi", 4, &["worker"]));
    api.apply(fake_api::node("gpu-free", "64", "512Gi", 4, &["worker"]));
    api.apply(fake_api::node("cpu-busy", "32", "256Gi", 0, &["worker"]));
    api.apply(fake_api::pod(
        "ml", "trainer", "gpu-full", "Running", "8", "64Gi", 4,
    ));
    api.apply(fake_api::pod(
        "ml", "small", "gpu-free", "Running", "8", "64Gi", 1,
    ));
    api.apply(fake_api::pod(
        "ml", "etl", "cpu-busy", "Running", "28", "64Gi", 0,
    ));

    let (n, s) = nats.bus_args();
    let mut ingest_config = Config::new(n.clone(), s.clone());
    ingest_config.collector.collect_kubernetes = true;
    ingest_config.collector.interval = Duration::from_millis(200);
    ingest_config.collector.stale_after = Duration::from_secs(30);
    let ingest = tokio::spawn(apollo_ingest::serve_with_kubernetes(
        ingest_config,
        (
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
        ),
        Some(api.client()),
        shutdown.clone(),
    ));

    let mut sched_config = apollo_scheduling::config::Config::with_defaults(n, s);
    sched_config.observability.shutdown_grace = Duration::from_secs(3);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let scheduling = tokio::spawn(apollo_scheduling::service::serve(
        sched_config,
        listener,
        shutdown.clone(),
    ));
    let mut client = None;
    for _ in 0..100 {
        if let Ok(c) = SchedulingPolicyServiceClient::connect(format!("http://{addr}")).await {
            client = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut client = client.expect("scheduling engine accepts connections");

    // Wait until the engine sees all three nodes (a one-core pod fits all).
    ask_until(
        &mut client,
        "probe",
        &[("apollo.ai-storage/cpu", "1")],
        |p| {
            let n = preferred(p);
            ["gpu-full", "gpu-free", "cpu-busy"]
                .iter()
                .all(|want| n.contains(want))
        },
    )
    .await;

    // A two-GPU pod: only gpu-free has two GPUs left.
    let gpu_pod = [("apollo.ai-storage/gpu", "2")];
    let p = ask_until(&mut client, "gpu-job", &gpu_pod, |p| {
        preferred(p).contains(&"gpu-free")
    })
    .await;
    let nodes = preferred(&p);
    assert!(
        !nodes.contains(&"gpu-full"),
        "all GPUs of gpu-full are allocated: {p:?}"
    );
    assert!(!nodes.contains(&"cpu-busy"), "cpu-busy has no GPU: {p:?}");

    // A 16-core pod: cpu-busy has only 4 unrequested cores.
    let cpu_pod = [("apollo.ai-storage/cpu", "16")];
    let p = ask_until(&mut client, "cpu-job", &cpu_pod, |p| {
        !p.node_preferences.is_empty()
    })
    .await;
    assert!(!preferred(&p).contains(&"cpu-busy"), "{p:?}");

    // The trainer finishes: its GPUs are free again and gpu-full qualifies.
    api.delete("Pod", "ml/trainer");
    ask_until(&mut client, "gpu-job", &gpu_pod, |p| {
        preferred(p).contains(&"gpu-full")
    })
    .await;
    // The ETL pod is deleted: cpu-busy fits the 16-core pod again.
    api.delete("Pod", "ml/etl");
    ask_until(&mut client, "cpu-job", &cpu_pod, |p| {
        preferred(p).contains(&"cpu-busy")
    })
    .await;

    shutdown.cancel();
    for task in [ingest] {
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("ingest stops")
            .unwrap()
            .unwrap();
    }
    tokio::time::timeout(Duration::from_secs(20), scheduling)
        .await
        .expect("scheduling stops")
        .unwrap()
        .unwrap();
}
