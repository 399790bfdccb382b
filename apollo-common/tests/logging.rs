//! JSON logs and the runtime log filter, through the real HTTP endpoint.
//!
//! One test per binary: the subscriber and its filter are process-wide.

use std::{
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use apollo_common::{
    config::ObservabilityArgs, health, shutdown::CancellationToken, testing::TestNats, Bus,
};
use prometheus_client::registry::Registry;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Log lines written so far.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines(&self) -> Vec<serde_json::Value> {
        String::from_utf8(self.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"))
            })
            .collect()
    }

    fn with_marker(&self, marker: &str) -> Vec<serde_json::Value> {
        self.lines()
            .into_iter()
            .filter(|l| l["fields"]["marker"] == marker)
            .collect()
    }

    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// A plain HTTP/1.1 request; returns (status, body).
async fn http(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad response: {response}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_and_a_log_filter_changed_at_runtime() {
    let captured = Captured::default();
    let writer = captured.clone();
    let args = ObservabilityArgs {
        log_format: "json".into(),
        log_filter: "info".into(),
        ..Default::default()
    };
    let _guard =
        apollo_common::telemetry::init_with("apollo-log-test", &args, None, move || writer.clone())
            .unwrap();

    tracing::info!(marker = "structured", node = "gpu-1", "short message");
    tracing::debug!(marker = "debug-before", "hidden at info");
    let structured = captured.with_marker("structured");
    assert_eq!(structured.len(), 1, "{}", captured.text());
    let line = &structured[0];
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["fields"]["message"], "short message");
    assert_eq!(line["fields"]["node"], "gpu-1");
    assert_eq!(line["target"], "logging");
    assert!(line["timestamp"].is_string(), "{line}");
    assert!(captured.with_marker("debug-before").is_empty());

    let shutdown = CancellationToken::new();
    let (readiness, _health) = health::Readiness::new(vec![]).await;
    let (addr, server) = health::spawn_http(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(Registry::default()),
        readiness,
        shutdown.clone(),
    )
    .await
    .unwrap();

    assert_eq!(
        http(addr, "GET", "/loglevel", "").await,
        (200, "info".into())
    );
    // Refused filters leave the current one in force, with a reason.
    let (status, body) = http(addr, "PUT", "/loglevel", "info,[[[").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid log filter"), "{body}");
    let (status, body) = http(addr, "PUT", "/loglevel", "  ").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("empty log filter"), "{body}");
    let (status, _) = http(addr, "PUT", "/loglevel", &"x".repeat(5000)).await;
    assert_eq!(status, 413);
    tracing::debug!(marker = "debug-still-hidden", "hidden at info");
    assert!(captured.with_marker("debug-still-hidden").is_empty());

    let (status, body) = http(addr, "PUT", "/loglevel", "info,logging=debug").await;
    assert_eq!((status, body.as_str()), (200, "info,logging=debug"));
    tracing::debug!(marker = "debug-after", "shown once the filter changed");
    assert_eq!(
        captured.with_marker("debug-after").len(),
        1,
        "{}",
        captured.text()
    );
    assert_eq!(
        http(addr, "GET", "/loglevel", "").await,
        (200, "info,logging=debug".into())
    );

    let (_, metrics) = http(addr, "GET", "/metrics", "").await;
    assert!(
        metrics.contains("apollo_log_filter_changes_total{outcome=\"applied\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("apollo_log_filter_changes_total{outcome=\"rejected\"} 3"),
        "{metrics}"
    );

    // Secrets never reach the logs: a password in the NATS URL is redacted
    // where the bus logs the server it connected to.
    let nats = TestNats::start().await;
    let (mut n, s) = nats.bus_args();
    n.url = n
        .url
        .replacen("nats://", "nats://apollo:url-secret-value@", 1);
    n.password = Some("flag-secret-value".into());
    let bus = Bus::connect("log-test", &n, &s, CancellationToken::new())
        .await
        .unwrap();
    assert!(bus.wait_ready(Duration::from_secs(10)).await);
    let text = captured.text();
    assert!(text.contains("connected to NATS"), "{text}");
    assert!(text.contains("nats://<redacted>@127.0.0.1"), "{text}");
    assert!(!text.contains("url-secret-value"), "{text}");
    assert!(!text.contains("flag-secret-value"), "{text}");
    bus.drain().await;

    shutdown.cancel();
    server.await.unwrap().unwrap();
}
