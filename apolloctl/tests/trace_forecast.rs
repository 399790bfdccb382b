//! An insight's trace continues through the forecaster: a node reports a
//! cluster insight through ingest with a known trace id; the forecaster
//! consumes it in that trace, publishes the node's forecast in it, and the
//! scheduling engine consumes the forecast in it too. Spans go to an
//! in-process exporter; ingest, forecaster and scheduling run in-process
//! against a real nats-server.
//!
//! One test per binary: the tracing subscriber is process-wide.

use std::time::Duration;

use apollo_common::{
    shutdown::CancellationToken,
    testing::{wait_serving, CollectedSpan, SpanCollector, TestNats},
};
use apollo_proto::{
    insight_service_client::InsightServiceClient, ClusterInsight, NodeResources, Timestamp,
};
use clap::Parser;
use futures::StreamExt;
use tokio::net::TcpListener;

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT: &str = "b7ad6b7169203331";

fn describe(spans: &[CollectedSpan]) -> String {
    spans
        .iter()
        .map(|s| format!("{} trace={}", s.name, s.trace_id))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forecast_continues_the_trace_of_the_insight_it_was_made_from() {
    let (spans, _guard) = SpanCollector::install("apollo-forecast-trace-test");
    let nats = TestNats::start().await;
    let (n, s) = nats.bus_args();
    let shutdown = CancellationToken::new();

    let ingest_grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ingest_addr = ingest_grpc.local_addr().unwrap();
    let ingest = tokio::spawn(apollo_ingest::serve(
        apollo_ingest::Config::new(n.clone(), s.clone()),
        (ingest_grpc, TcpListener::bind("127.0.0.1:0").await.unwrap()),
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
    let forecaster_addr = forecaster_grpc.local_addr().unwrap();
    let forecaster =
        apollo_forecaster::Forecaster::start(forecaster_config, forecaster_grpc, shutdown.clone())
            .await
            .unwrap();
    let mut sched_config = apollo_scheduling::config::Config::with_defaults(n.clone(), s.clone());
    sched_config.observability.metrics_addr = "127.0.0.1:0".parse().unwrap();
    sched_config.observability.shutdown_grace = Duration::from_secs(1);
    let sched_grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sched_addr = sched_grpc.local_addr().unwrap();
    let scheduling = tokio::spawn(apollo_scheduling::service::serve(
        sched_config,
        sched_grpc,
        shutdown.clone(),
    ));
    for addr in [ingest_addr, forecaster_addr, sched_addr] {
        wait_serving(&format!("http://{addr}")).await;
    }

    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut forecasts = client
        .subscribe(format!("{}.forecast.>", n.subject_prefix))
        .await
        .unwrap();
    client.flush().await.unwrap();

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let mut request = tonic::Request::new(ClusterInsight {
        node_name: "gpu-node-7".into(),
        node_resources: Some(NodeResources {
            cpu_allocatable_cores: 64.0,
            cpu_used_cores: 12.0,
            memory_allocatable_bytes: 256 << 30,
            memory_used_bytes: 64 << 30,
            ..Default::default()
        }),
        collected_at: Some(Timestamp {
            seconds: now.as_secs() as i64,
            nanos: 0,
        }),
        ..Default::default()
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE}-{PARENT}-01").parse().unwrap(),
    );
    InsightServiceClient::connect(format!("http://{ingest_addr}"))
        .await
        .unwrap()
        .report_cluster_insight(request)
        .await
        .expect("ingest stores the insight");

    // The forecaster consumed the insight in the reporter's trace.
    let consumed = spans
        .wait_for(Duration::from_secs(10), |s| {
            s.name == "insight.cluster process" && s.trace_id == TRACE
        })
        .await;
    assert!(
        consumed.is_some(),
        "no consumption of the insight in its trace:\n{}",
        describe(&spans.spans())
    );
    let engine = forecaster.engine().clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while engine.node_count() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the forecaster never took the insight in"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    forecaster.refresh_now().await.unwrap();

    // The forecast message carries that trace...
    let forecast = tokio::time::timeout(Duration::from_secs(10), forecasts.next())
        .await
        .expect("a forecast is published")
        .expect("subscription open");
    let traceparent = forecast
        .headers
        .as_ref()
        .and_then(|h| h.get("traceparent"))
        .map(|v| v.as_str().to_string())
        .expect("forecast has a traceparent");
    assert_eq!(traceparent.split('-').nth(1), Some(TRACE), "{traceparent}");
    // ...and the scheduling engine consumes it in the same trace.
    let applied = spans
        .wait_for(Duration::from_secs(10), |s| {
            s.name == "forecast process" && s.trace_id == TRACE
        })
        .await;
    assert!(
        applied.is_some(),
        "the scheduling engine consumed the forecast outside the insight's trace:\n{}",
        describe(&spans.spans())
    );

    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(20), ingest).await;
    let _ = tokio::time::timeout(Duration::from_secs(20), forecaster.wait()).await;
    let _ = tokio::time::timeout(Duration::from_secs(20), scheduling).await;
}
