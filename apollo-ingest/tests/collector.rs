//! The Kubernetes collector end to end: a synthetic API server speaking the
//! real JSON (paged lists, watches with bookmarks, metrics.k8s.io), a mock
//! DCGM exporter serving real exposition text, the ingest service with
//! `--collect-kubernetes`, and insights read back from a real nats-server.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use apollo_common::{bus::from_json, shutdown::CancellationToken, testing::TestNats};
use apollo_ingest::{collector::fake_api, Config};
use apollo_proto::ClusterInsight;
use futures::StreamExt;
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// Upper bound for anything that should happen "soon"; only there so a
/// broken build fails instead of hanging.
const BOUND: Duration = Duration::from_secs(30);
const INTERVAL: Duration = Duration::from_millis(300);
const GIB: i64 = 1 << 30;
const DCGM: &str = include_str!("fixtures/dcgm-exporter.txt");

/// A DCGM exporter stand-in: serves the fixture, or 503 while "down".
async fn mock_exporter(shutdown: CancellationToken) -> (SocketAddr, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let down = Arc::new(AtomicBool::new(false));
    let flag = down.clone();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let down = flag.load(Ordering::SeqCst);
            async move {
                if down {
                    (axum::http::StatusCode::SERVICE_UNAVAILABLE, String::new())
                } else {
                    (axum::http::StatusCode::OK, DCGM.to_string())
                }
            }
        }),
    );
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
            .unwrap();
    });
    (addr, down)
}

/// node-exporter text of the `k`-th scrape: counters grow by a fixed step
/// per scrape, so every rate-derived total is one step.
fn node_exporter_text(k: u64) -> String {
    let k = k as f64;
    format!(
        "# TYPE node_disk_read_bytes_total counter\n\
         node_disk_read_bytes_total{{device=\"nvme0n1\"}} {}\n\
         # TYPE node_disk_written_bytes_total counter\n\
         node_disk_written_bytes_total{{device=\"nvme0n1\"}} {}\n\
         # TYPE node_disk_reads_completed_total counter\n\
         node_disk_reads_completed_total{{device=\"nvme0n1\"}} {}\n\
         # TYPE node_disk_writes_completed_total counter\n\
         node_disk_writes_completed_total{{device=\"nvme0n1\"}} {}\n\
         # TYPE node_disk_io_time_seconds_total counter\n\
         node_disk_io_time_seconds_total{{device=\"nvme0n1\"}} {}\n\
         # TYPE node_filesystem_size_bytes gauge\n\
         node_filesystem_size_bytes{{device=\"/dev/nvme0n1p1\",fstype=\"ext4\",mountpoint=\"/\"}} 5e+11\n\
         # TYPE node_filesystem_avail_bytes gauge\n\
         node_filesystem_avail_bytes{{device=\"/dev/nvme0n1p1\",fstype=\"ext4\",mountpoint=\"/\"}} 2e+11\n\
         # TYPE node_network_receive_bytes_total counter\n\
         node_network_receive_bytes_total{{device=\"eth0\"}} {}\n\
         # TYPE node_network_transmit_bytes_total counter\n\
         node_network_transmit_bytes_total{{device=\"eth0\"}} {}\n\
         # TYPE node_network_speed_bytes gauge\n\
         node_network_speed_bytes{{device=\"eth0\"}} 1.25e+09\n",
        1e9 + k * 1e8,
        5e8 + k * 5e7,
        1e4 + k * 2e3,
        5e3 + k * 1e3,
        100.0 + k * 0.01,
        1e10 + k * 1e6,
        5e9 + k * 1e6,
    )
}

/// A node-exporter stand-in; `restart` sets its counters back to the start.
async fn mock_node_exporter(
    shutdown: CancellationToken,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let scrapes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = scrapes.clone();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let k = counter.fetch_add(1, Ordering::SeqCst);
            async move { node_exporter_text(k) }
        }),
    );
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
            .unwrap();
    });
    (addr, scrapes)
}

fn node_exporter_pod(node: &str, port: u16) -> serde_json::Value {
    json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": format!("node-exporter-{node}"), "namespace": "monitoring",
                     "labels": {"app.kubernetes.io/name": "prometheus-node-exporter"}},
        "spec": {"nodeName": node, "containers": [{"name": "node-exporter", "image": "node-exporter",
                 "ports": [{"name": "http-metrics", "containerPort": port}]}]},
        "status": {"phase": "Running", "podIP": "127.0.0.1"}
    })
}

fn exporter_pod(node: &str, port: u16) -> serde_json::Value {
    json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": format!("dcgm-exporter-{node}"), "namespace": "gpu-operator",
                     "labels": {"app.kubernetes.io/name": "dcgm-exporter"}},
        "spec": {"nodeName": node, "containers": [{"name": "exporter", "image": "dcgm-exporter",
                 "ports": [{"name": "metrics", "containerPort": port}]}]},
        "status": {"phase": "Running", "podIP": "127.0.0.1"}
    })
}

async fn metrics_text(addr: SocketAddr) -> String {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    tokio::time::timeout(BOUND, conn.read_to_string(&mut body))
        .await
        .expect("metrics response")
        .unwrap();
    body
}

/// Value of the first sample line starting with `prefix`.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

struct Harness {
    api: fake_api::FakeApi,
    grpc_addr: SocketAddr,
    insights: async_nats::Subscriber,
    metrics_addr: SocketAddr,
    exporter_down: Arc<AtomicBool>,
    node_exporter_scrapes: Arc<std::sync::atomic::AtomicU64>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<apollo_ingest::Result<()>>,
    _nats: TestNats,
}

impl Harness {
    async fn start() -> Self {
        Self::start_with(Duration::from_secs(60)).await
    }

    /// With `--collect-stale-after` set to `stale_after`.
    async fn start_with(stale_after: Duration) -> Self {
        let nats = TestNats::start().await;
        let shutdown = CancellationToken::new();
        let api = fake_api::FakeApi::serve(
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            Duration::from_millis(200),
            shutdown.clone(),
        )
        .unwrap();
        let (exporter, exporter_down) = mock_exporter(shutdown.clone()).await;
        let (node_exporter, node_exporter_scrapes) = mock_node_exporter(shutdown.clone()).await;

        api.apply(fake_api::node("cpu-1", "8", "32Gi", 0, &["worker"]));
        api.apply(fake_api::node(
            "gpu-1",
            "64",
            "512Gi",
            4,
            &["worker", "gpu"],
        ));
        for p in [
            fake_api::pod("ml", "web", "cpu-1", "Running", "2", "4Gi", 0),
            fake_api::pod("ml", "starting", "cpu-1", "Pending", "500m", "1Gi", 0),
            fake_api::pod("ml", "finished", "cpu-1", "Succeeded", "4", "4Gi", 0),
            fake_api::pod("ml", "crashed", "cpu-1", "Failed", "4", "4Gi", 0),
            fake_api::pod("ml", "queued", "", "Pending", "4", "4Gi", 0),
            fake_api::pod("ml", "trainer", "gpu-1", "Running", "16", "128Gi", 2),
        ] {
            api.apply(p);
        }
        let mut shared = fake_api::pod("ml", "notebook", "gpu-1", "Running", "2", "8Gi", 0);
        shared["metadata"]["annotations"] = json!({"apollo.ai-storage/gpu": "0.5"});
        // Created after the trainer, so packed after its two whole GPUs.
        shared["metadata"]["creationTimestamp"] = json!("2026-01-01T00:05:00Z");
        api.apply(shared);
        api.apply(exporter_pod("gpu-1", exporter.port()));
        api.apply(node_exporter_pod("cpu-1", node_exporter.port()));
        api.set_node_metrics(vec![
            json!({"metadata": {"name": "cpu-1"}, "timestamp": "2026-01-01T00:00:00Z",
                   "window": "10s", "usage": {"cpu": "3", "memory": "6Gi"}}),
            json!({"metadata": {"name": "gpu-1"}, "timestamp": "2026-01-01T00:00:00Z",
                   "window": "10s", "usage": {"cpu": "10500m", "memory": "100Gi"}}),
        ]);
        api.set_pod_metrics(vec![json!({
            "metadata": {"name": "web", "namespace": "ml"}, "timestamp": "2026-01-01T00:00:00Z",
            "window": "10s", "containers": [{"name": "main", "usage": {"cpu": "1500m", "memory": "3Gi"}}]
        })]);

        let (n, s) = nats.bus_args();
        let prefix = n.subject_prefix.clone();
        let client = async_nats::connect(nats.url()).await.unwrap();
        let insights =
            apollo_common::testing::subscribe_ready(&client, format!("{prefix}.insight.cluster.>"))
                .await;
        let mut config = Config::new(n, s);
        config.grpc_addr = "127.0.0.1:0".parse().unwrap();
        config.collector.collect_kubernetes = true;
        config.collector.interval = INTERVAL;
        config.collector.stale_after = stale_after;
        config.collector.scrape_timeout = Duration::from_secs(2);
        // Small pages so the initial lists need `continue`.
        config.collector.page_size = 2;
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc_addr = grpc.local_addr().unwrap();
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics_addr = http.local_addr().unwrap();
        let task = tokio::spawn(apollo_ingest::serve_with_kubernetes(
            config,
            (grpc, http),
            Some(api.client()),
            shutdown.clone(),
        ));
        Self {
            api,
            grpc_addr,
            insights,
            metrics_addr,
            exporter_down,
            node_exporter_scrapes,
            shutdown,
            task,
            _nats: nats,
        }
    }

    async fn next(&mut self) -> ClusterInsight {
        let msg = tokio::time::timeout(BOUND, self.insights.next())
            .await
            .expect("an insight within the bound")
            .expect("subscription open");
        from_json(&msg.payload).expect("a ClusterInsight in protobuf JSON")
    }

    /// The next insight of `node` satisfying `ok`.
    async fn wait_for(
        &mut self,
        node: &str,
        what: &str,
        ok: impl Fn(&ClusterInsight) -> bool,
    ) -> ClusterInsight {
        let deadline = tokio::time::Instant::now() + BOUND;
        loop {
            assert!(tokio::time::Instant::now() < deadline, "never saw {what}");
            let i = self.next().await;
            if i.node_name == node && ok(&i) {
                return i;
            }
        }
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

fn seconds(i: &ClusterInsight) -> f64 {
    let t = i.collected_at.unwrap();
    t.seconds as f64 + f64::from(t.nanos) / 1e9
}

fn now_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_state_becomes_insights_and_follows_changes() {
    let mut h = Harness::start().await;

    // Nodes and pods appear -> correct insights.
    let cpu = h
        .wait_for("cpu-1", "cpu-1 with usage", |i| {
            i.node_resources.is_some_and(|r| r.cpu_used_cores > 0.0)
        })
        .await;
    let r = cpu.node_resources.unwrap();
    assert_eq!(r.cpu_allocatable_cores, 8.0);
    assert_eq!(r.memory_allocatable_bytes, 32 * GIB);
    // Running (2, 4Gi) + bound Pending (0.5, 1Gi); not Succeeded/Failed/unbound.
    assert_eq!(r.cpu_requested_cores, 2.5);
    assert_eq!(r.memory_requested_bytes, 5 * GIB);
    assert_eq!(r.cpu_used_cores, 3.0);
    assert_eq!(r.memory_used_bytes, 6 * GIB);
    assert_eq!(r.cpu_available_cores, 5.0, "8 - max(2.5 requested, 3 used)");
    assert_eq!(r.memory_available_bytes, 26 * GIB, "32Gi - max(5Gi, 6Gi)");
    assert_eq!(cpu.node_roles, vec!["worker"]);
    assert_eq!(cpu.node_uid, "uid-cpu-1");
    let mut names: Vec<_> = cpu
        .running_workloads
        .iter()
        .map(|w| w.pod_name.as_str())
        .collect();
    names.sort();
    assert_eq!(names, vec!["node-exporter-cpu-1", "starting", "web"]);
    let web = cpu
        .running_workloads
        .iter()
        .find(|w| w.pod_name == "web")
        .unwrap();
    assert_eq!(web.cpu_usage, 1.5);

    let gpu = h
        .wait_for("gpu-1", "gpu-1 with DCGM telemetry", |i| {
            i.gpu_devices.iter().any(|g| g.utilization_percent > 0.0)
        })
        .await;
    let r = gpu.node_resources.unwrap();
    assert_eq!(r.gpu_allocatable, 4);
    assert_eq!(r.gpu_used, 3, "two whole GPUs and one shared");
    assert_eq!(r.gpu_available, 1);
    assert_eq!(r.cpu_requested_cores, 18.0);
    assert_eq!(gpu.node_roles, vec!["gpu", "worker"]);
    let milli: Vec<i32> = gpu.gpu_devices.iter().map(|g| g.allocated_milli).collect();
    assert_eq!(milli, vec![1000, 1000, 500, 0]);
    assert_eq!(gpu.gpu_devices[1].utilization_percent, 87.0);
    assert_eq!(gpu.gpu_devices[1].gpu_model, "NVIDIA A100-SXM4-80GB");
    assert_eq!(gpu.gpu_devices[1].memory_used_bytes, 40_000 << 20);

    // node-exporter counters -> per-scrape totals, filesystem and network.
    let host = h
        .wait_for("cpu-1", "cpu-1 with node-exporter rates", |i| {
            i.io_statistics.is_some()
        })
        .await;
    let io = host.io_statistics.unwrap();
    assert_eq!(io.total_read_bytes, 100_000_000);
    assert_eq!(io.total_write_bytes, 50_000_000);
    assert_eq!(io.total_read_ops, 2000);
    let root = host
        .storage_devices
        .iter()
        .find(|d| d.device_name == "/")
        .expect("root filesystem");
    assert_eq!(root.total_bytes, 500_000_000_000);
    assert_eq!(root.available_bytes, 200_000_000_000);
    let disk = host
        .storage_devices
        .iter()
        .find(|d| d.device_name == "nvme0n1")
        .expect("nvme disk");
    assert_eq!(disk.device_type, "nvme");
    assert!(disk.current_iops > 0);
    assert_eq!(host.network_status.unwrap().bandwidth_mbps, 10_000.0);

    // node-exporter restarts: counters start over -> counted, no rates made up.
    h.node_exporter_scrapes.store(0, Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let m = metrics_text(h.metrics_addr).await;
        let resets = "apollo_collector_data_problems_total{source=\"node_exporter\",reason=\"counter_reset\"}";
        if sample(&m, resets).is_some_and(|v| v >= 1.0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "reset never counted"
        );
        tokio::time::sleep(INTERVAL).await;
    }

    // The client used the real protocol: paged lists and bookmarked watches.
    let calls = h.api.calls();
    assert!(calls.continued_lists.load(Ordering::Relaxed) > 0);
    assert!(calls.watches_with_bookmarks.load(Ordering::Relaxed) > 0);

    // A pod deleted -> its requests drop from the node's insights (how soon
    // depends on the watch event's delivery, so it is waited for, not timed).
    assert!(h.api.delete("Pod", "ml/web"));
    let after = h
        .wait_for("cpu-1", "an insight without the deleted pod", |i| {
            i.running_workloads.iter().all(|w| w.pod_name != "web")
        })
        .await;
    let r = after.node_resources.unwrap();
    assert_eq!(r.cpu_requested_cores, 0.5);
    assert_eq!(r.memory_requested_bytes, GIB);
    assert_eq!(after.running_workloads.len(), 2);

    // Exporter down -> last good telemetry kept (stale), not zeros.
    h.exporter_down.store(true, Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let m = metrics_text(h.metrics_addr).await;
        if sample(&m, "apollo_collector_stale_nodes{source=\"dcgm\"}") == Some(1.0) {
            assert!(
                sample(&m, "apollo_collector_scrape_errors_total{source=\"dcgm\"").unwrap() >= 1.0
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "dcgm never marked stale"
        );
        tokio::time::sleep(INTERVAL).await;
    }
    let marked = now_seconds();
    let stale = h
        .wait_for("gpu-1", "an insight after the exporter went down", |i| {
            seconds(i) > marked
        })
        .await;
    assert_eq!(stale.gpu_devices[1].utilization_percent, 87.0);

    // A node deleted -> its insights stop once the collector has seen the
    // deletion (an insight already being built may still name it).
    assert!(h.api.delete("Node", "cpu-1"));
    let deadline = tokio::time::Instant::now() + BOUND;
    while sample(
        &metrics_text(h.metrics_addr).await,
        "apollo_collector_nodes_gone_total",
    ) != Some(1.0)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node deletion never seen"
        );
        tokio::time::sleep(INTERVAL / 3).await;
    }
    let gone_at = now_seconds() + INTERVAL.as_secs_f64();
    let mut later_rounds = 0;
    while later_rounds < 3 {
        let i = h.next().await;
        if seconds(&i) > gone_at {
            assert_ne!(i.node_name, "cpu-1", "a deleted node is still reported");
            later_rounds += 1;
        }
    }
    let m = metrics_text(h.metrics_addr).await;
    assert_eq!(sample(&m, "apollo_collector_nodes_gone_total"), Some(1.0));
    assert!(sample(&m, "apollo_ingest_published_total{kind=\"cluster\"}").unwrap() >= 4.0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_outage_keeps_last_state_and_recovers() {
    let mut h = Harness::start().await;
    h.wait_for("cpu-1", "first insight", |_| true).await;
    h.api.set_down(true);
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let m = metrics_text(h.metrics_addr).await;
        if sample(&m, "apollo_collector_source_up{source=\"kubernetes\"}") == Some(0.0) {
            assert!(sample(&m, "apollo_collector_watch_errors_total").unwrap() >= 1.0);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "outage never noticed: {m}"
        );
        tokio::time::sleep(INTERVAL).await;
    }
    // Within --collect-stale-after the last good state is still reported.
    let noticed = now_seconds();
    let i = h
        .wait_for("cpu-1", "an insight during the outage", |i| {
            seconds(i) > noticed
        })
        .await;
    assert_eq!(i.node_resources.unwrap().cpu_requested_cores, 2.5);
    h.api.set_down(false);
    h.api.delete("Pod", "ml/web");
    h.wait_for("cpu-1", "the change made during recovery", |i| {
        i.node_resources.unwrap().cpu_requested_cores == 0.5
    })
    .await;
    h.stop().await;
}

/// Waits until the metrics satisfy `ok`; returns them.
async fn wait_metrics(addr: SocketAddr, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let m = metrics_text(addr).await;
        if ok(&m) {
            return m;
        }
        assert!(tokio::time::Instant::now() < deadline, "never {what}:\n{m}");
        tokio::time::sleep(INTERVAL / 3).await;
    }
}

/// The API server process gone (connections refused, open watches cut) and
/// back on the same port: ingest keeps serving node agents' reports and
/// stays SERVING, the collector shows the outage in its metrics, and once the
/// server is back its watches resume by themselves and a round reports every
/// node exactly once, changes made during the outage included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_gone_and_back_ingest_keeps_serving_and_the_view_recovers() {
    use apollo_proto::{insight_service_client::InsightServiceClient, NodeResources};
    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };

    // An outage longer than --collect-stale-after: the collector stops
    // publishing its view, which must not take ingest out of service.
    let mut h = Harness::start_with(Duration::from_secs(1)).await;
    h.wait_for("cpu-1", "first insight", |_| true).await;
    wait_metrics(h.metrics_addr, "a current view", |m| {
        sample(m, "apollo_collector_view_current") == Some(1.0)
    })
    .await;
    let endpoint = format!("http://{}", h.grpc_addr);
    let channel = tonic::transport::Endpoint::from_shared(endpoint)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    let mut ingest = InsightServiceClient::new(channel);
    let serving = |r: Result<tonic::Response<tonic_health::pb::HealthCheckResponse>, _>| {
        r.map(|r| r.into_inner().status).ok() == Some(ServingStatus::Serving as i32)
    };
    assert!(serving(
        health
            .check(HealthCheckRequest {
                service: String::new()
            })
            .await
    ));

    h.api.stop().await;
    let refused = tokio::net::TcpStream::connect(h.api.url().trim_start_matches("http://")).await;
    assert!(refused.is_err(), "the API server's port still accepts");
    let m = wait_metrics(h.metrics_addr, "the outage noticed", |m| {
        sample(m, "apollo_collector_source_up{source=\"kubernetes\"}") == Some(0.0)
            && sample(m, "apollo_collector_view_current") == Some(0.0)
    })
    .await;
    assert!(
        sample(
            &m,
            "apollo_collector_insights_total{outcome=\"skipped_stale\"}"
        )
        .unwrap()
            >= 1.0,
        "{m}"
    );
    assert!(
        sample(&m, "apollo_collector_watch_errors_total").unwrap() >= 1.0,
        "{m}"
    );

    // The rest keeps working: ingest serves and stores a node agent's report.
    let agent = ClusterInsight {
        node_name: "agent-1".into(),
        node_resources: Some(NodeResources {
            cpu_allocatable_cores: 8.0,
            memory_allocatable_bytes: 32 * GIB,
            ..Default::default()
        }),
        ..Default::default()
    };
    let r = ingest
        .report_cluster_insight(agent)
        .await
        .expect("ingest answers during the API outage")
        .into_inner();
    assert!(r.success, "{r:?}");
    h.wait_for("agent-1", "the agent's report stored", |_| true)
        .await;
    assert!(
        serving(
            health
                .check(HealthCheckRequest {
                    service: String::new()
                })
                .await
        ),
        "ingest stopped serving because the Kubernetes API is down"
    );

    // Changes made while the collector cannot see them.
    h.api
        .apply(fake_api::node("cpu-2", "16", "64Gi", 0, &["worker"]));
    h.api.delete("Pod", "ml/web");
    h.api.restart().await.expect("the same port again");

    h.wait_for("cpu-2", "the node added during the outage", |_| true)
        .await;
    h.wait_for("cpu-1", "the pod deleted during the outage", |i| {
        i.node_resources.unwrap().cpu_requested_cores == 0.5
    })
    .await;
    let m = wait_metrics(h.metrics_addr, "the collector back to current", |m| {
        sample(m, "apollo_collector_source_up{source=\"kubernetes\"}") == Some(1.0)
            && sample(m, "apollo_collector_view_current") == Some(1.0)
    })
    .await;
    assert_eq!(
        sample(&m, "apollo_collector_objects{resource=\"nodes\"}"),
        Some(3.0),
        "{m}"
    );

    // One whole round after recovery: each node exactly once.
    let mut rounds: std::collections::BTreeMap<i64, Vec<String>> = Default::default();
    let deadline = tokio::time::Instant::now() + BOUND;
    let complete = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no whole round: {rounds:?}"
        );
        let i = h.next().await;
        if i.node_name == "agent-1" {
            continue;
        }
        let t = i.collected_at.unwrap();
        rounds
            .entry(t.seconds * 1_000_000_000 + i64::from(t.nanos))
            .or_default()
            .push(i.node_name);
        // A round is whole once a later one has started.
        if rounds.len() >= 3 {
            break rounds.values().nth(1).unwrap().clone();
        }
    };
    let mut names = complete;
    names.sort();
    assert_eq!(names, ["cpu-1", "cpu-2", "gpu-1"]);
    h.stop().await;
}
