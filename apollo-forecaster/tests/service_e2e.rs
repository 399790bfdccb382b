//! The forecaster against a real nats-server and a real gRPC client:
//! predictions on `apollo.forecast.<node>` and over gRPC, overload alerts
//! ahead of the crossing, no alert on a flat series, history rebuilt after a
//! restart, request validation.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apollo_common::{
    bus::from_json,
    config::{NatsArgs, StreamArgs},
    shutdown::CancellationToken,
    testing::TestNats,
    Bus,
};
use apollo_forecaster::{history::Resource, Config, Forecaster};
use apollo_proto::{
    forecast_service_client::ForecastServiceClient, AlertState, ClusterInsight,
    ClusterPredictionRequest, NodeResources, PredictionRequest, ResourceAlert, ResourcePrediction,
    Timestamp,
};
use clap::Parser;
use futures::StreamExt;
use tokio::net::TcpListener;

const POINTS: usize = 40;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn config(nats: &NatsArgs, streams: &StreamArgs) -> Config {
    let mut c = Config::parse_from([
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
        "5s",
    ]);
    c.nats = nats.clone();
    c.streams = streams.clone();
    c
}

async fn start(nats: &NatsArgs, streams: &StreamArgs) -> (Forecaster, CancellationToken) {
    let token = CancellationToken::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let f = Forecaster::start(config(nats, streams), listener, token.clone())
        .await
        .unwrap();
    (f, token)
}

fn insight(node: &str, cpu_percent: f64, ts_ms: i64) -> ClusterInsight {
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

/// Publishes `values` as one-second samples ending now.
async fn publish_series(bus: &Bus, node: &str, values: &[f64]) {
    let end = now_ms() - 500;
    for (i, v) in values.iter().enumerate() {
        let t = end - (values.len() - 1 - i) as i64 * 1000;
        bus.publish(bus.subjects().cluster(node).unwrap(), &insight(node, *v, t))
            .await
            .unwrap();
    }
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predictions_alerts_and_restart() {
    let nats = TestNats::start().await;
    let (n, s) = nats.bus_args();
    let token = CancellationToken::new();
    let bus = Bus::connect("test", &n, &s, token.clone()).await.unwrap();
    assert!(bus.wait_ready(Duration::from_secs(30)).await);

    let (svc, stop) = start(&n, &s).await;
    wait_for("ready", || svc.is_ready()).await;

    let rising: Vec<f64> = (0..POINTS).map(|i| 40.0 + i as f64).collect();
    let flat: Vec<f64> = (0..POINTS).map(|i| 30.0 + 0.2 * (i % 3) as f64).collect();
    publish_series(&bus, "hot", &rising).await;
    publish_series(&bus, "flat", &flat).await;
    let e = svc.engine().clone();
    wait_for("histories", || {
        e.history_len("hot", Resource::Cpu) == Some(POINTS)
            && e.history_len("flat", Resource::Cpu) == Some(POINTS)
    })
    .await;

    // Registered with the server before the refresh publishes.
    let mut forecasts =
        apollo_common::testing::subscribe_ready(bus.client(), bus.subjects().all("forecast")).await;
    let mut alerts =
        apollo_common::testing::subscribe_ready(bus.client(), bus.subjects().all("alert")).await;
    let summary = svc.refresh_now().await.unwrap();
    assert_eq!(summary.nodes, 2);
    assert_eq!(summary.published, 2);
    assert_eq!(summary.failed, 0);

    let mut got = Vec::new();
    for _ in 0..2 {
        let m = tokio::time::timeout(Duration::from_secs(5), forecasts.next())
            .await
            .unwrap()
            .unwrap();
        let p: ResourcePrediction = from_json(&m.payload).unwrap();
        assert_eq!(
            m.subject.as_str(),
            bus.subjects().forecast(&p.node_name).unwrap()
        );
        got.push(p);
    }
    let hot = got.iter().find(|p| p.node_name == "hot").unwrap();
    assert!(hot.model_type.contains("cpu:auto("), "{}", hot.model_type);
    assert!(hot.model_accuracy > 0.0 && hot.model_accuracy <= 1.0);
    assert_eq!(hot.predicted_usage.len(), 1);
    assert!(hot.upper_bound[0].cpu_usage >= hot.predicted_usage[0].cpu_usage);
    assert!(hot.lower_bound[0].cpu_usage <= hot.predicted_usage[0].cpu_usage);
    assert!((hot.predicted_usage[0].memory_usage - 40.0).abs() < 1.0);

    // Exactly one overload alert, for the rising node, ahead of the crossing.
    let m = tokio::time::timeout(Duration::from_secs(5), alerts.next())
        .await
        .unwrap()
        .unwrap();
    let a: ResourceAlert = from_json(&m.payload).unwrap();
    assert_eq!(
        m.subject.as_str(),
        bus.subjects().alert("overload", "hot").unwrap()
    );
    assert_eq!(a.state, AlertState::Raised as i32);
    assert_eq!(a.resource, "cpu");
    assert!(a.lead_time_seconds > 0, "{a:?}");
    assert!(a.predicted_percent >= 90.0);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), alerts.next())
            .await
            .is_err(),
        "the flat node must not alert"
    );

    // gRPC: served, validated.
    let url = format!("http://{}", svc.grpc_addr());
    let mut client = ForecastServiceClient::connect(url.clone()).await.unwrap();
    let p = client
        .get_resource_prediction(PredictionRequest {
            node_name: "flat".into(),
            horizon_minutes: 1,
            confidence_level: 0.0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!((p.predicted_usage[0].cpu_usage - 30.2).abs() < 2.0, "{p:?}");
    assert!(!p.anomaly_detected);
    let p80 = client
        .get_resource_prediction(PredictionRequest {
            node_name: "flat".into(),
            horizon_minutes: 1,
            confidence_level: 0.5,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p80.confidence_level, 0.5);
    for (req, code) in [
        (("nope", 1, 0.9), tonic::Code::NotFound),
        (("flat", 0 - 1, 0.9), tonic::Code::InvalidArgument),
        (("flat", 2, 0.9), tonic::Code::InvalidArgument),
        (("flat", 1, 1.5), tonic::Code::InvalidArgument),
    ] {
        let err = client
            .get_resource_prediction(PredictionRequest {
                node_name: req.0.into(),
                horizon_minutes: req.1,
                confidence_level: req.2,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{req:?}");
    }
    let c = client
        .get_cluster_prediction(ClusterPredictionRequest {
            horizon_minutes: 0,
            confidence_level: 0.0,
            node_filters: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.node_predictions.len(), 2);
    let agg = c.aggregated_prediction.unwrap();
    let (h, f) = (&c.node_predictions[0], &c.node_predictions[1]);
    let mean = (h.predicted_usage[0].cpu_usage + f.predicted_usage[0].cpu_usage) / 2.0;
    assert!((agg.predicted_usage[0].cpu_usage - mean).abs() < 1e-9);

    // Metrics are exported.
    let body = http_get(svc.metrics_addr(), "/metrics").await;
    assert!(
        body.contains("apollo_forecaster_predictions_published_total 2"),
        "{body}"
    );
    assert!(body.contains("apollo_forecaster_alerts_total{kind=\"overload\",state=\"raised\"} 1"));

    // Restart: the history comes back from the stream before readiness.
    let before = svc.engine().history_len("hot", Resource::Cpu);
    stop.cancel();
    svc.wait().await.unwrap();
    let (svc, stop) = start(&n, &s).await;
    wait_for("ready after restart", || svc.is_ready()).await;
    assert_eq!(svc.engine().history_len("hot", Resource::Cpu), before);
    let mut client = ForecastServiceClient::connect(format!("http://{}", svc.grpc_addr()))
        .await
        .unwrap();
    let p = client
        .get_resource_prediction(PredictionRequest {
            node_name: "hot".into(),
            horizon_minutes: 1,
            confidence_level: 0.0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(p.model_type.contains("cpu:auto("), "{}", p.model_type);
    stop.cancel();
    svc.wait().await.unwrap();
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_counted_and_skipped() {
    let nats = TestNats::start().await;
    let (n, s) = nats.bus_args();
    let token = CancellationToken::new();
    let bus = Bus::connect("test", &n, &s, token.clone()).await.unwrap();
    assert!(bus.wait_ready(Duration::from_secs(30)).await);
    let (svc, stop) = start(&n, &s).await;
    wait_for("ready", || svc.is_ready()).await;

    let subject = bus.subjects().cluster("n1").unwrap();
    bus.jetstream()
        .publish(subject.clone(), "not json".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let mut bad = insight("n1", 50.0, now_ms() - 2000);
    if let Some(nr) = bad.node_resources.as_mut() {
        nr.cpu_used_cores = -3.0;
    }
    bus.publish(subject.clone(), &bad).await.unwrap();
    bus.publish(subject.clone(), &insight("n1", 50.0, now_ms() - 1000))
        .await
        .unwrap();
    let e = svc.engine().clone();
    wait_for("good sample", || {
        e.history_len("n1", Resource::Cpu) == Some(1)
    })
    .await;
    let body = http_get(svc.metrics_addr(), "/metrics").await;
    assert!(
        body.contains("apollo_forecaster_insights_rejected_total{reason=\"decode\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("apollo_forecaster_values_rejected_total{reason=\"negative\"} 1"),
        "{body}"
    );
    stop.cancel();
    svc.wait().await.unwrap();
    token.cancel();
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    buf
}
