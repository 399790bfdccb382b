//! Every metric `docs/metrics.md` lists is on the real `/metrics` endpoint of
//! the services it names: the four services run in-process against one NATS
//! server (ingest with its Kubernetes collector on a fake API server), and
//! each endpoint is scraped over HTTP. A renamed or removed metric, a row
//! naming a metric that does not exist, or an exported metric without a row
//! fails here.

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use apollo_common::{shutdown::CancellationToken, testing::TestNats, Bus};
use apollo_proto::{
    insight_service_client::InsightServiceClient,
    scheduling_policy_service_client::SchedulingPolicyServiceClient, ClusterInsight, NodeResources,
    SchedulingPolicyRequest, Timestamp, WorkloadSignature,
};
use clap::Parser;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

const SERVICES: [&str; 4] = ["ingest", "forecaster", "scheduling", "orchestration"];

/// (metric, the services exporting it) per table row.
type Rows = Vec<(String, Vec<&'static str>)>;

/// Heading of the table of families exported only once they have a series.
const FIRST_EVENT: &str = "### Series that appear with their first event";

/// (metric, services) rows of the tables in `docs/metrics.md`: the main
/// table (always exported) and the first-event table.
fn documented() -> (Rows, Rows) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md");
    let doc = std::fs::read_to_string(path).expect("docs/metrics.md exists");
    let (always, first_event) = doc
        .split_once(FIRST_EVENT)
        .expect("docs/metrics.md has the first-event table");
    let always = rows(always);
    assert!(always.len() >= 60, "the table lost rows: {}", always.len());
    (always, rows(first_event))
}

fn rows(doc: &str) -> Rows {
    let mut rows = Vec::new();
    for line in doc.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        assert!(cells.len() >= 5, "malformed row: {line}");
        let name = cells[0].trim_matches('`').to_string();
        let services: Vec<&'static str> = if cells[3] == "all" {
            SERVICES.to_vec()
        } else {
            SERVICES
                .iter()
                .copied()
                .filter(|s| cells[3].split(',').any(|c| c.trim().starts_with(s)))
                .collect()
        };
        assert!(!services.is_empty(), "row names no known service: {line}");
        rows.push((name, services));
    }
    rows
}

/// Metric names a query can use on an OpenMetrics text: every family, and
/// counters also with `_total`.
fn exported(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            names.insert(name.to_string());
            if kind == "counter" {
                names.insert(format!("{name}_total"));
            }
        }
    }
    names
}

/// (family, type) of every `# TYPE` line.
fn families(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| {
            let mut parts = rest.split_whitespace();
            Some((parts.next()?.to_string(), parts.next()?.to_string()))
        })
        .collect()
}

/// The `# HELP` text of `family`.
fn help(text: &str, family: &str) -> String {
    let prefix = format!("# HELP {family} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or("")
        .to_string()
}

async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// Scrapes `/metrics` once the endpoint answers.
async fn scrape(addr: SocketAddr) -> String {
    for _ in 0..400 {
        if let Some((200, body)) = get(addr, "/metrics").await {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no /metrics on {addr}");
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn cpu_insight(node: &str, cpu_percent: f64, ts_ms: i64) -> ClusterInsight {
    ClusterInsight {
        node_name: node.into(),
        node_resources: Some(NodeResources {
            cpu_used_cores: cpu_percent * 0.32,
            cpu_allocatable_cores: 32.0,
            memory_used_bytes: 40 << 30,
            memory_allocatable_bytes: 100 << 30,
            ..Default::default()
        }),
        collected_at: Some(Timestamp {
            seconds: ts_ms / 1000,
            nanos: ((ts_ms % 1000) * 1_000_000) as i32,
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_metric_is_exported_by_its_services() {
    let (rows, first_event) = documented();
    let nats = TestNats::start().await;
    let (n, s) = nats.bus_args();
    let shutdown = CancellationToken::new();

    let api = apollo_ingest::collector::fake_api::FakeApi::serve(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        Duration::from_millis(200),
        shutdown.clone(),
    )
    .unwrap();
    api.apply(apollo_ingest::collector::fake_api::node(
        "gpu-1",
        "64",
        "512Gi",
        4,
        &["worker"],
    ));
    let mut ingest_config = apollo_ingest::Config::new(n.clone(), s.clone());
    ingest_config.collector.collect_kubernetes = true;
    ingest_config.collector.interval = Duration::from_millis(200);
    ingest_config.observability.shutdown_grace = Duration::from_millis(300);
    let ingest_http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ingest_metrics = ingest_http.local_addr().unwrap();
    let ingest_grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut grpc = vec![ingest_grpc.local_addr().unwrap()];
    let ingest = tokio::spawn(apollo_ingest::serve_with_kubernetes(
        ingest_config,
        (ingest_grpc, ingest_http),
        Some(api.client()),
        shutdown.clone(),
    ));

    let mut forecaster_config = apollo_forecaster::Config::parse_from([
        "apollo-forecaster",
        "--step",
        "1s",
        "--horizons",
        "1",
        "--refresh-interval",
        "1h",
        "--metrics-addr",
        "127.0.0.1:0",
        "--shutdown-grace",
        "1s",
    ]);
    forecaster_config.nats = n.clone();
    forecaster_config.streams = s.clone();
    let forecaster_grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    grpc.push(forecaster_grpc.local_addr().unwrap());
    let forecaster =
        apollo_forecaster::Forecaster::start(forecaster_config, forecaster_grpc, shutdown.clone())
            .await
            .unwrap();
    let forecaster_metrics = forecaster.metrics_addr();

    let sched_http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let scheduling_metrics = sched_http.local_addr().unwrap();
    let mut sched_config = apollo_scheduling::config::Config::with_defaults(n.clone(), s.clone());
    sched_config.observability.shutdown_grace = Duration::from_secs(1);
    let sched_grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    grpc.push(sched_grpc.local_addr().unwrap());
    let scheduling = tokio::spawn(apollo_scheduling::service::serve(
        sched_config,
        (sched_grpc, sched_http),
        shutdown.clone(),
    ));

    let orch_http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let orchestration_metrics = orch_http.local_addr().unwrap();
    let mut orch_config = apollo_orchestration::Config::with_defaults(n.clone(), s.clone());
    orch_config.observability.shutdown_grace = Duration::from_millis(300);
    let orch_grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    grpc.push(orch_grpc.local_addr().unwrap());
    let orchestration = tokio::spawn(apollo_orchestration::serve(
        orch_config,
        (orch_grpc, orch_http),
        shutdown.clone(),
    ));

    // Traffic that makes labelled series appear: a health check on every
    // server (gRPC metrics), and an undecodable insight every consumer
    // counts as rejected.
    for addr in &grpc {
        apollo_common::testing::wait_serving(&format!("http://{addr}")).await;
    }
    let bus = Bus::connect("metrics-doc", &n, &s, CancellationToken::new())
        .await
        .unwrap();
    assert!(bus.wait_ready(Duration::from_secs(30)).await);
    bus.publish(
        bus.subjects().cluster("poison").unwrap(),
        &serde_json::json!("not an insight"),
    )
    .await
    .unwrap();

    // An invalid report (ingest rejects it), a policy request without a pod
    // name (scheduling rejects it) and one with (a decision).
    let mut insight = InsightServiceClient::connect(format!("http://{}", grpc[0]))
        .await
        .unwrap();
    let refused = insight
        .report_workload_signature(WorkloadSignature::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let mut policies = SchedulingPolicyServiceClient::connect(format!("http://{}", grpc[2]))
        .await
        .unwrap();
    let refused = policies
        .get_scheduling_policy(SchedulingPolicyRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    policies
        .get_scheduling_policy(SchedulingPolicyRequest {
            pod_name: "probe".into(),
            pod_namespace: "ml".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    // Forty one-second samples of a node, then a forecast refresh: the
    // selected model's backtest accuracy feeds the per-model rolling mean.
    let end_ms = now_ms() - 500;
    for i in 0..40 {
        let t = end_ms - (39 - i) * 1000;
        bus.publish(
            bus.subjects().cluster("hot").unwrap(),
            &cpu_insight("hot", 40.0 + i as f64, t),
        )
        .await
        .unwrap();
    }
    let engine = forecaster.engine().clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while engine.history_len("hot", apollo_forecaster::history::Resource::Cpu) != Some(40) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the forecaster never held the 40 published points"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    forecaster.refresh_now().await.unwrap();

    let endpoints = [
        ("ingest", ingest_metrics),
        ("forecaster", forecaster_metrics),
        ("scheduling", scheduling_metrics),
        ("orchestration", orchestration_metrics),
    ];
    // Consumers count asynchronously: scrape until complete or 20 s passed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut missing = Vec::new();
    loop {
        missing.clear();
        for (service, addr) in endpoints {
            let names = exported(&scrape(addr).await);
            for (metric, services) in &rows {
                if services.contains(&service) && !names.contains(metric) {
                    missing.push(format!("{metric} on {service}"));
                }
            }
        }
        if missing.is_empty() || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        missing.is_empty(),
        "documented in docs/metrics.md but not exported:\n{}",
        missing.join("\n")
    );

    // And the other way round: every APOLLO metric a service exports has
    // its row, naming that service.
    let mut undocumented = BTreeSet::new();
    for (service, addr) in endpoints {
        let text = scrape(addr).await;
        for (family, kind) in families(&text) {
            if !family.starts_with("apollo_") {
                continue;
            }
            let query = if kind == "counter" {
                format!("{family}_total")
            } else {
                family.clone()
            };
            let row = rows
                .iter()
                .chain(&first_event)
                .find(|(name, _)| *name == query);
            if !row.is_some_and(|(_, services)| services.contains(&service)) {
                let help = help(&text, &family);
                undocumented.insert(format!("{query} ({kind}) on {service}: {help}"));
            }
        }
    }
    assert!(
        undocumented.is_empty(),
        "exported but without a row in docs/metrics.md (or the row does not name the service):\n{}",
        undocumented.into_iter().collect::<Vec<_>>().join("\n")
    );

    shutdown.cancel();
    for task in [ingest] {
        let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(20), forecaster.wait()).await;
    let _ = tokio::time::timeout(Duration::from_secs(20), scheduling).await;
    let _ = tokio::time::timeout(Duration::from_secs(20), orchestration).await;
}
