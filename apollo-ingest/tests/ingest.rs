//! The ingest service end to end: real gRPC on 127.0.0.1:0, a real
//! nats-server, messages read back from the subjects and the stream.

use std::{net::SocketAddr, time::Duration};

use apollo_common::{shutdown::CancellationToken, testing::TestNats, Subjects};
use apollo_ingest::Config;
use apollo_proto::{
    insight_service_client::InsightServiceClient, ClusterInsight, GpuStatus, NodeResources,
    ResourceMetrics, Timestamp, WorkloadSignature,
};
use futures::StreamExt;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tonic::{transport::Channel, Code};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

/// Upper bound for anything that should happen "soon"; only there so a
/// broken build fails instead of hanging.
const BOUND: Duration = Duration::from_secs(20);

struct Ingest {
    client: InsightServiceClient<Channel>,
    health: HealthClient<Channel>,
    metrics_addr: SocketAddr,
    subjects: Subjects,
    stream: String,
    nats: async_nats::Client,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<apollo_ingest::Result<()>>,
}

impl Ingest {
    async fn start(nats: &TestNats, tweak: impl FnOnce(&mut Config)) -> Self {
        let (n, s) = nats.bus_args();
        let subjects = Subjects::new(n.subject_prefix.clone());
        let stream = format!("{}_INSIGHT", n.stream_prefix);
        let mut config = Config::new(n, s);
        config.publish_deadline = Duration::from_secs(3);
        config.observability.shutdown_grace = Duration::from_secs(5);
        tweak(&mut config);
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = grpc.local_addr().unwrap();
        let metrics_addr = http.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(apollo_ingest::serve(config, (grpc, http), shutdown.clone()));
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let me = Self {
            client: InsightServiceClient::new(channel.clone()),
            health: HealthClient::new(channel),
            metrics_addr,
            subjects,
            stream,
            nats: async_nats::connect(nats.url()).await.unwrap(),
            shutdown,
            task,
        };
        me.wait_health(ServingStatus::Serving).await;
        me
    }

    async fn health_status(&self) -> Option<ServingStatus> {
        let resp = self
            .health
            .clone()
            .check(HealthCheckRequest {
                service: "apollo.InsightService".into(),
            })
            .await
            .ok()?;
        ServingStatus::try_from(resp.into_inner().status).ok()
    }

    async fn wait_health(&self, want: ServingStatus) {
        let deadline = tokio::time::Instant::now() + BOUND;
        loop {
            if self.health_status().await == Some(want) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "health never became {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stored_count(&self) -> u64 {
        let js = async_nats::jetstream::new(self.nats.clone());
        let mut stream = js.get_stream(&self.stream).await.unwrap();
        stream.info().await.unwrap().state.messages
    }

    async fn subscribe_insights(&self) -> async_nats::Subscriber {
        apollo_common::testing::subscribe_ready(&self.nats, self.subjects.all("insight")).await
    }

    async fn metrics(&self) -> String {
        let mut conn = TcpStream::connect(self.metrics_addr).await.unwrap();
        conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut body = String::new();
        tokio::time::timeout(BOUND, conn.read_to_string(&mut body))
            .await
            .expect("metrics response")
            .unwrap();
        assert!(
            body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"),
            "{body}"
        );
        body
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(BOUND, self.task)
            .await
            .expect("server did not stop")
            .unwrap()
            .unwrap();
    }
}

async fn next_json(sub: &mut async_nats::Subscriber) -> (String, serde_json::Value) {
    let msg = tokio::time::timeout(BOUND, sub.next())
        .await
        .expect("no message on the subject")
        .expect("subscription closed");
    let body = serde_json::from_slice(&msg.payload).expect("payload is JSON");
    (msg.subject.to_string(), body)
}

fn now_ts() -> Timestamp {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    Timestamp {
        seconds: now.as_secs() as i64,
        nanos: 0,
    }
}

fn signature(pod: &str, cpu: f64) -> WorkloadSignature {
    WorkloadSignature {
        pod_name: pod.into(),
        pod_namespace: "ml-team".into(),
        node_name: "gpu-node-1".into(),
        workload_type: apollo_proto::WorkloadType::Image as i32,
        current_stage: apollo_proto::PipelineStage::Training as i32,
        io_pattern: apollo_proto::IoPattern::ReadHeavy as i32,
        confidence: 0.8,
        framework: "pytorch".into(),
        current_metrics: Some(ResourceMetrics {
            cpu_usage_percent: cpu,
            memory_usage_bytes: 3 << 30,
            ..Default::default()
        }),
        updated_at: Some(now_ts()),
        ..Default::default()
    }
}

fn insight(node: &str, gpu_util: f64) -> ClusterInsight {
    ClusterInsight {
        node_name: node.into(),
        node_resources: Some(NodeResources {
            cpu_allocatable_cores: 64.0,
            cpu_used_cores: 10.0,
            memory_allocatable_bytes: 256 << 30,
            ..Default::default()
        }),
        gpu_devices: vec![GpuStatus {
            gpu_id: "gpu0".into(),
            utilization_percent: gpu_util,
            allocated_milli: 500,
            ..Default::default()
        }],
        collected_at: Some(now_ts()),
        ..Default::default()
    }
}

#[tokio::test]
async fn report_workload_signature_stores_json_then_deduplicates_retry() {
    let nats = TestNats::start().await;
    let ingest = Ingest::start(&nats, |_| {}).await;
    let mut sub = ingest.subscribe_insights().await;

    let sig = signature("trainer-0", 42.5);
    let first = ingest
        .client
        .clone()
        .report_workload_signature(sig.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(first.success);
    assert_eq!(first.message, "stored");
    assert_eq!(first.request_id, format!("{}:1", ingest.stream));

    let (subject, body) = next_json(&mut sub).await;
    assert_eq!(
        subject,
        ingest.subjects.workload("ml-team", "trainer-0").unwrap()
    );
    assert_eq!(body["podName"], "trainer-0");
    assert_eq!(body["podNamespace"], "ml-team");
    assert_eq!(body["workloadType"], "WORKLOAD_TYPE_IMAGE");
    assert_eq!(body["ioPattern"], "IO_PATTERN_READ_HEAVY");
    assert_eq!(body["currentMetrics"]["cpuUsagePercent"], 42.5);
    assert_eq!(
        body["currentMetrics"]["memoryUsageBytes"],
        (3u64 << 30).to_string()
    );

    // The sidecar retries after a timeout: same content, same stored message.
    let retry = ingest
        .client
        .clone()
        .report_workload_signature(sig)
        .await
        .unwrap()
        .into_inner();
    assert!(retry.success);
    assert_eq!(retry.request_id, first.request_id);
    assert!(retry.message.contains("duplicate"), "{}", retry.message);
    assert_eq!(ingest.stored_count().await, 1);

    // Different content is a new message.
    let other = ingest
        .client
        .clone()
        .report_workload_signature(signature("trainer-0", 43.0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(other.request_id, format!("{}:2", ingest.stream));
    assert_eq!(ingest.stored_count().await, 2);
    ingest.stop().await;
}

#[tokio::test]
async fn report_cluster_insight_stores_json() {
    let nats = TestNats::start().await;
    let ingest = Ingest::start(&nats, |_| {}).await;
    let mut sub = ingest.subscribe_insights().await;

    let sent = insight("node-a.rack1", 77.0);
    let resp = ingest
        .client
        .clone()
        .report_cluster_insight(sent.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(resp.success);
    assert!(resp.request_id.starts_with(&format!("{}:", ingest.stream)));

    let (subject, body) = next_json(&mut sub).await;
    assert_eq!(subject, ingest.subjects.cluster("node-a.rack1").unwrap());
    assert_eq!(body["nodeName"], "node-a.rack1");
    assert_eq!(body["nodeResources"]["cpuAllocatableCores"], 64.0);
    assert_eq!(body["gpuDevices"][0]["utilizationPercent"], 77.0);
    assert_eq!(body["gpuDevices"][0]["allocatedMilli"], 500);
    let collected = body["collectedAt"].as_str().expect("RFC 3339 string");
    assert_eq!(
        serde_json::from_value::<Timestamp>(body["collectedAt"].clone()).unwrap(),
        sent.collected_at.unwrap(),
        "{collected}"
    );
    ingest.stop().await;
}

#[tokio::test]
async fn bad_unary_reports_are_refused_with_the_field_and_not_published() {
    let nats = TestNats::start().await;
    let ingest = Ingest::start(&nats, |_| {}).await;
    let mut sub = ingest.subscribe_insights().await;

    let far_future = Timestamp {
        seconds: now_ts().seconds + 3600,
        nanos: 0,
    };
    let sig_cases: Vec<(WorkloadSignature, &str)> = vec![
        (
            WorkloadSignature {
                pod_name: String::new(),
                ..signature("x", 1.0)
            },
            "pod_name",
        ),
        (
            WorkloadSignature {
                pod_namespace: String::new(),
                ..signature("x", 1.0)
            },
            "pod_namespace",
        ),
        (signature("Trainer_0", 1.0), "pod_name"),
        (
            WorkloadSignature {
                pod_namespace: "a".repeat(64),
                ..signature("x", 1.0)
            },
            "pod_namespace",
        ),
        (
            signature("x", 140.0),
            "current_metrics.cpu_usage_percent: 140 is outside 0-100",
        ),
        (
            signature("x", f64::NAN),
            "current_metrics.cpu_usage_percent",
        ),
        (
            WorkloadSignature {
                workload_type: 42,
                ..signature("x", 1.0)
            },
            "workload_type",
        ),
        (
            WorkloadSignature {
                confidence: 1.5,
                ..signature("x", 1.0)
            },
            "confidence",
        ),
        (
            WorkloadSignature {
                updated_at: Some(far_future),
                ..signature("x", 1.0)
            },
            "updated_at",
        ),
        (
            WorkloadSignature {
                first_seen: Some(Timestamp {
                    seconds: 1,
                    nanos: -5,
                }),
                ..signature("x", 1.0)
            },
            "first_seen",
        ),
    ];
    for (msg, field) in sig_cases {
        let err = ingest
            .client
            .clone()
            .report_workload_signature(msg)
            .await
            .expect_err(field);
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }

    let mut no_node = insight("n", 1.0);
    no_node.node_name.clear();
    let mut milli = insight("n", 1.0);
    milli.gpu_devices[0].allocated_milli = 2000;
    let mut net = insight("n", 1.0);
    net.network_status = Some(apollo_proto::NetworkStatus {
        current_utilization: 75.0,
        ..Default::default()
    });
    let mut disk = insight("n", 1.0);
    disk.storage_devices = vec![apollo_proto::StorageDeviceStatus {
        used_bytes: -1,
        ..Default::default()
    }];
    let insight_cases = vec![
        (no_node, "node_name"),
        (insight("Node_A", 1.0), "node_name"),
        (insight("n", 100.1), "gpu_devices[0].utilization_percent"),
        (milli, "gpu_devices[0].allocated_milli"),
        (net, "network_status.current_utilization"),
        (disk, "storage_devices[0].used_bytes"),
    ];
    for (msg, field) in insight_cases {
        let err = ingest
            .client
            .clone()
            .report_cluster_insight(msg)
            .await
            .expect_err(field);
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }

    // Nothing of the above reached the bus: the first message seen is this one.
    ingest
        .client
        .clone()
        .report_cluster_insight(insight("good-node", 1.0))
        .await
        .unwrap();
    let (subject, _) = next_json(&mut sub).await;
    assert_eq!(subject, ingest.subjects.cluster("good-node").unwrap());
    assert_eq!(ingest.stored_count().await, 1);
    ingest.stop().await;
}

#[tokio::test]
async fn client_stream_skips_bad_items_and_stores_the_good_ones() {
    let nats = TestNats::start().await;
    // A small window so the stream exercises backpressure.
    let ingest = Ingest::start(&nats, |c| c.max_inflight_acks = 2).await;
    let mut sub = ingest.subscribe_insights().await;

    let items = vec![
        signature("p0", 1.0),
        signature("p1", 2.0),
        signature("bad-cpu", 250.0),
        signature("p2", 3.0),
        WorkloadSignature {
            pod_namespace: "Bad_NS".into(),
            ..signature("p3", 4.0)
        },
        signature("p4", 5.0),
        signature("p5", 6.0),
    ];
    let resp = ingest
        .client
        .clone()
        .stream_workload_signatures(futures::stream::iter(items))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.messages_received, 7);
    assert_eq!(resp.messages_processed, 5);
    assert!(resp.status.starts_with("2 rejected"), "{}", resp.status);
    assert!(
        resp.status
            .contains("message 2: current_metrics.cpu_usage_percent"),
        "{}",
        resp.status
    );
    assert!(
        resp.status.contains("message 4: pod_namespace"),
        "{}",
        resp.status
    );

    let mut pods = Vec::new();
    for _ in 0..5 {
        let (_, body) = next_json(&mut sub).await;
        pods.push(body["podName"].as_str().unwrap().to_string());
    }
    pods.sort();
    assert_eq!(pods, ["p0", "p1", "p2", "p4", "p5"]);
    assert_eq!(ingest.stored_count().await, 5);
    ingest.stop().await;
}

#[tokio::test]
async fn cluster_insight_stream_stores_every_item() {
    let nats = TestNats::start().await;
    let ingest = Ingest::start(&nats, |_| {}).await;
    let mut sub = ingest.subscribe_insights().await;
    let items: Vec<ClusterInsight> = (0..20)
        .map(|i| insight(&format!("node-{i}"), 5.0))
        .collect();
    let resp = ingest
        .client
        .clone()
        .stream_cluster_insights(futures::stream::iter(items))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((resp.messages_received, resp.messages_processed), (20, 20));
    assert!(resp.status.starts_with("ok"), "{}", resp.status);
    let mut nodes = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let (subject, body) = next_json(&mut sub).await;
        let node = body["nodeName"].as_str().unwrap().to_string();
        assert_eq!(subject, ingest.subjects.cluster(&node).unwrap());
        nodes.insert(node);
    }
    assert_eq!(nodes.len(), 20);
    assert_eq!(ingest.stored_count().await, 20);
    ingest.stop().await;
}

#[tokio::test]
async fn oversized_messages_are_refused_and_counted() {
    let nats = TestNats::start().await;
    let ingest = Ingest::start(&nats, |c| c.grpc_limits.max_recv_bytes = 16 * 1024).await;
    let mut big = signature("big", 1.0);
    big.framework = "x".repeat(64 * 1024);

    let err = ingest
        .client
        .clone()
        .report_workload_signature(big.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("limit of 16384 bytes"),
        "{}",
        err.message()
    );

    let err = ingest
        .client
        .clone()
        .stream_workload_signatures(futures::stream::iter(vec![signature("ok", 1.0), big]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("limit of 16384 bytes"),
        "{}",
        err.message()
    );
    assert!(err.message().contains("1 of 2"), "{}", err.message());
    assert_eq!(ingest.stored_count().await, 1);

    let metrics = ingest.metrics().await;
    assert!(
        metrics.contains(r#"apollo_grpc_rejected_total{reason="request_too_large"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"apollo_ingest_rejected_total{kind="workload",reason="message:too_large"} 2"#
        ),
        "{metrics}"
    );
    ingest.stop().await;
}

#[tokio::test]
async fn metrics_endpoint_counts_received_rejected_published_duplicates() {
    let nats = TestNats::start().await;
    let ingest = Ingest::start(&nats, |_| {}).await;
    let mut client = ingest.client.clone();
    // One value sent twice: building it twice could straddle a second of its
    // timestamp and make the retry a different message.
    let retried = signature("m0", 1.0);
    client
        .report_workload_signature(retried.clone())
        .await
        .unwrap();
    client.report_workload_signature(retried).await.unwrap();
    client
        .report_workload_signature(signature("m1", 120.0))
        .await
        .unwrap_err();
    client
        .report_cluster_insight(insight("n1", 1.0))
        .await
        .unwrap();

    let m = ingest.metrics().await;
    for line in [
        r#"apollo_ingest_received_total{kind="workload"} 3"#,
        r#"apollo_ingest_received_total{kind="cluster"} 1"#,
        r#"apollo_ingest_published_total{kind="workload"} 2"#,
        r#"apollo_ingest_published_total{kind="cluster"} 1"#,
        r#"apollo_ingest_rejected_total{kind="workload",reason="current_metrics.cpu_usage_percent:out_of_range"} 1"#,
        "apollo_ingest_duplicates_total 1",
        "apollo_ingest_publish_latency_seconds_count 3",
    ] {
        assert!(m.contains(line), "missing {line:?} in\n{m}");
    }
    ingest.stop().await;
}

#[tokio::test]
async fn nats_outage_gives_unavailable_and_not_serving_then_recovers() {
    let mut nats = TestNats::start().await;
    if !nats.can_restart() {
        eprintln!("skipping: the NATS server in use cannot be stopped by the test (NATS_URL or container)");
        return;
    }
    let ingest = Ingest::start(&nats, |_| {}).await;
    ingest
        .client
        .clone()
        .report_workload_signature(signature("before", 1.0))
        .await
        .unwrap();

    assert!(nats.stop());
    ingest.wait_health(ServingStatus::NotServing).await;
    let err = tokio::time::timeout(
        BOUND,
        ingest
            .client
            .clone()
            .report_workload_signature(signature("during", 1.0)),
    )
    .await
    .expect("report hung while NATS was down")
    .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let err = tokio::time::timeout(
        BOUND,
        ingest
            .client
            .clone()
            .stream_cluster_insights(futures::stream::iter(vec![insight("n", 1.0)])),
    )
    .await
    .expect("stream hung while NATS was down")
    .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("0 of 1"), "{}", err.message());

    assert!(nats.restart());
    ingest.wait_health(ServingStatus::Serving).await;
    let ok = ingest
        .client
        .clone()
        .report_workload_signature(signature("after", 1.0))
        .await
        .unwrap()
        .into_inner();
    assert!(ok.success);
    ingest.stop().await;
}

#[tokio::test]
async fn shutdown_lets_an_inflight_stream_finish_then_stops() {
    let nats = TestNats::start().await;
    let ingest = Ingest::start(&nats, |_| {}).await;
    let (tx, rx) = futures::channel::mpsc::unbounded::<WorkloadSignature>();
    tx.unbounded_send(signature("drain-0", 1.0)).unwrap();
    let mut client = ingest.client.clone();
    let call = tokio::spawn(async move { client.stream_workload_signatures(rx).await });

    // The first item is stored while the stream is still open.
    let deadline = tokio::time::Instant::now() + BOUND;
    while ingest.stored_count().await < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "first item never stored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Drain starts: the open stream may still send and complete.
    ingest.shutdown.cancel();
    tx.unbounded_send(signature("drain-1", 2.0)).unwrap();
    drop(tx);
    let resp = tokio::time::timeout(BOUND, call)
        .await
        .expect("stream did not complete during drain")
        .unwrap()
        .unwrap()
        .into_inner();
    assert_eq!((resp.messages_received, resp.messages_processed), (2, 2));
    assert_eq!(ingest.stored_count().await, 2);
    ingest.stop().await;
}
