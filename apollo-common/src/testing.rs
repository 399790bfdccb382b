//! A real NATS server with JetStream for tests.
//!
//! Resolution order: `NATS_URL` if set; else the `nats-server` binary on PATH,
//! started on a free loopback port with a temporary store directory; else a
//! testcontainers `nats` container when a Docker engine is present; else a
//! clear failure naming the install command. Each [`TestNats::bus_args`] call
//! returns unique subject and stream prefixes, so tests share a server and
//! still run in parallel. [`TestNatsCluster`] starts a JetStream cluster of
//! servers that can each be killed and restarted.

use std::{path::PathBuf, process::Child, time::Duration};

use crate::config::{parse_flags, NatsArgs, StreamArgs};

enum Backend {
    External,
    Binary {
        child: Option<Child>,
        port: u16,
        store: tempfile::TempDir,
        binary: PathBuf,
        config: Option<PathBuf>,
    },
    Container(
        #[allow(dead_code)] Box<testcontainers::ContainerAsync<testcontainers_modules::nats::Nats>>,
    ),
}

/// A NATS server for one test (stopped on drop).
pub struct TestNats {
    url: String,
    backend: Backend,
}

impl std::fmt::Debug for TestNats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNats").field("url", &self.url).finish()
    }
}

fn docker_available() -> bool {
    std::env::var_os("DOCKER_HOST").is_some()
        || std::path::Path::new("/var/run/docker.sock").exists()
}

impl TestNats {
    /// Starts (or finds) a NATS server; panics with a clear message when none
    /// can be had, since the test cannot run without one.
    pub async fn start() -> Self {
        if let Ok(url) = std::env::var("NATS_URL") {
            return Self {
                url,
                backend: Backend::External,
            };
        }
        if let Some(binary) = crate::nats_server::find_binary() {
            let store = tempfile::tempdir().expect("create temp dir for the JetStream store");
            let (child, port) = crate::nats_server::spawn(&binary, None, store.path())
                .unwrap_or_else(|e| panic!("failed to start {}: {e}", binary.display()));
            return Self {
                url: format!("nats://127.0.0.1:{port}"),
                backend: Backend::Binary {
                    child: Some(child),
                    port,
                    store,
                    binary,
                    config: None,
                },
            };
        }
        if docker_available() {
            use testcontainers::{runners::AsyncRunner, ImageExt};
            use testcontainers_modules::nats::{Nats, NatsServerCmd};
            let cmd = NatsServerCmd::default().with_jetstream();
            let container = Nats::default()
                .with_cmd(&cmd)
                .start()
                .await
                .expect("start the nats container");
            let host = container.get_host().await.expect("container host");
            let port = container
                .get_host_port_ipv4(4222)
                .await
                .expect("container port");
            return Self {
                url: format!("nats://{host}:{port}"),
                backend: Backend::Container(Box::new(container)),
            };
        }
        panic!(
            "these tests need a NATS server with JetStream: set NATS_URL, or install the binary \
             (`apt-get install -y nats-server`), or run a Docker engine for testcontainers"
        );
    }

    /// Starts a `nats-server` from the binary with the configuration
    /// `config` (authorization, TLS, ...) on a free loopback port with
    /// JetStream in a temporary directory (`$STORE` in `config`). Needs the
    /// binary: a server from `NATS_URL` or a container cannot take the file.
    pub fn start_with_config(config: &str) -> Self {
        Self::start_with_files(config, &[])
    }

    /// [`start_with_config`](Self::start_with_config) with extra files
    /// (name, contents) written into the store directory first, e.g.
    /// certificates the configuration names as `$STORE/<name>`.
    pub fn start_with_files(config: &str, files: &[(&str, &str)]) -> Self {
        let binary = crate::nats_server::find_binary().unwrap_or_else(|| {
            panic!(
                "this test configures its own nats-server and needs the binary \
                 (scripts/ensure-nats.sh, or `apt-get install -y nats-server`)"
            )
        });
        let store = tempfile::tempdir().expect("create temp dir for the JetStream store");
        for (name, body) in files {
            std::fs::write(store.path().join(name), body).expect("write server file");
        }
        let config_path = store.path().join("nats-server.conf");
        let text = config.replace("$STORE", &store.path().display().to_string());
        std::fs::write(&config_path, text).expect("write nats-server.conf");
        let (child, port) =
            crate::nats_server::spawn_with_config(&binary, None, store.path(), Some(&config_path))
                .unwrap_or_else(|e| {
                    panic!("failed to start {} with {config:?}: {e}", binary.display())
                });
        Self {
            url: format!("nats://127.0.0.1:{port}"),
            backend: Backend::Binary {
                child: Some(child),
                port,
                store,
                binary,
                config: Some(config_path),
            },
        }
    }

    /// URL of the server.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Bus settings with unique subject and stream prefixes (memory storage).
    pub fn bus_args(&self) -> (NatsArgs, StreamArgs) {
        let id = &uuid::Uuid::new_v4().simple().to_string()[..10];
        let subject_prefix = format!("t{id}");
        let stream_prefix = format!("T{}", id.to_ascii_uppercase());
        let nats = parse_flags(&[
            "--nats-url",
            &self.url,
            "--subject-prefix",
            &subject_prefix,
            "--stream-prefix",
            &stream_prefix,
            "--nats-timeout",
            "2s",
        ])
        .expect("test NATS flags parse");
        let streams =
            parse_flags(&["--stream-storage", "memory"]).expect("test stream flags parse");
        (nats, streams)
    }

    /// Whether [`stop`](Self::stop)/[`restart`](Self::restart) are supported
    /// (only for a server this helper started from the binary).
    pub fn can_restart(&self) -> bool {
        matches!(self.backend, Backend::Binary { .. })
    }

    /// Stops the server (simulates an outage); returns false if unsupported.
    pub fn stop(&mut self) -> bool {
        if let Backend::Binary { child, .. } = &mut self.backend {
            if let Some(mut c) = child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            return true;
        }
        false
    }

    /// Starts the server again on the same port and store; returns false if
    /// unsupported or it did not come back.
    pub fn restart(&mut self) -> bool {
        if let Backend::Binary {
            child,
            port,
            store,
            binary,
            config,
        } = &mut self.backend
        {
            if child.is_some() {
                return true;
            }
            let Ok((c, _)) = crate::nats_server::spawn_with_config(
                binary,
                Some(*port),
                store.path(),
                config.as_deref(),
            ) else {
                return false;
            };
            *child = Some(c);
            return true;
        }
        false
    }
}

impl Drop for TestNats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One server of a [`TestNatsCluster`].
struct ClusterServer {
    name: String,
    port: u16,
    cluster_port: u16,
    store: PathBuf,
    child: Option<Child>,
}

/// A JetStream cluster of nats-server processes on loopback (each with its
/// own store directory), for fault tests: any server can be killed and
/// started again on the same ports and store. Stopped on drop.
pub struct TestNatsCluster {
    binary: PathBuf,
    servers: Vec<ClusterServer>,
    _root: tempfile::TempDir,
}

impl std::fmt::Debug for TestNatsCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNatsCluster")
            .field("url", &self.url())
            .finish()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free local port")
        .port()
}

impl TestNatsCluster {
    /// Starts `size` clustered servers from the `nats-server` binary; `None`
    /// when there is no binary to start (e.g. only `NATS_URL` is given).
    pub fn start(size: usize) -> Option<Self> {
        let binary = crate::nats_server::find_binary()?;
        let root = tempfile::tempdir().expect("create temp dir for the cluster stores");
        let servers: Vec<ClusterServer> = (0..size)
            .map(|i| ClusterServer {
                name: format!("n{i}"),
                port: free_port(),
                cluster_port: free_port(),
                store: root.path().join(format!("n{i}")),
                child: None,
            })
            .collect();
        let mut cluster = Self {
            binary,
            servers,
            _root: root,
        };
        for i in 0..size {
            assert!(cluster.restart(i), "cluster server {i} did not start");
        }
        Some(cluster)
    }

    /// Client URLs of every server, comma separated (what services take).
    pub fn url(&self) -> String {
        (0..self.servers.len())
            .map(|i| self.server_url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Client URL of server `i`.
    pub fn server_url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.servers[i].port)
    }

    /// Kills server `i` (SIGKILL: nothing flushed, like a crash).
    pub fn stop(&mut self, i: usize) {
        if let Some(mut c) = self.servers[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts server `i` again on its ports and store; false if it did not
    /// come up.
    pub fn restart(&mut self, i: usize) -> bool {
        if self.servers[i].child.is_some() {
            return true;
        }
        let routes: Vec<u16> = self
            .servers
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, s)| s.cluster_port)
            .collect();
        let s = &self.servers[i];
        match crate::nats_server::spawn_cluster_node(
            &self.binary,
            &s.name,
            s.port,
            s.cluster_port,
            &routes,
            &s.store,
        ) {
            Ok(child) => {
                self.servers[i].child = Some(child);
                true
            }
            Err(err) => {
                eprintln!("cluster server {i}: {err}");
                false
            }
        }
    }
}

impl Drop for TestNatsCluster {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.stop(i);
        }
    }
}

/// Subscribes to `subject` and returns only once the server has registered
/// the interest. `Client::flush` only flushes the socket; a message published
/// right after on another connection could otherwise arrive before the
/// subscription exists. Subscriptions on one connection are processed in
/// order, so a round trip through a second, private subscription is the
/// barrier.
pub async fn subscribe_ready(
    client: &async_nats::Client,
    subject: String,
) -> async_nats::Subscriber {
    use futures::StreamExt as _;
    let sub = client
        .subscribe(subject.clone())
        .await
        .unwrap_or_else(|e| panic!("subscribe {subject}: {e}"));
    let barrier = format!("_apollo_test_barrier.{}", uuid::Uuid::new_v4().simple());
    let mut probe = client
        .subscribe(barrier.clone())
        .await
        .expect("subscribe barrier");
    client
        .publish(barrier, "".into())
        .await
        .expect("publish barrier");
    tokio::time::timeout(Duration::from_secs(10), probe.next())
        .await
        .expect("barrier round trip timed out")
        .expect("barrier subscription closed");
    sub
}

/// One finished span as a test sees it.
#[derive(Debug, Clone)]
pub struct CollectedSpan {
    /// Span name (the `otel.name` when set).
    pub name: String,
    /// Trace id, 32 hex digits.
    pub trace_id: String,
    /// Span id, 16 hex digits.
    pub span_id: String,
    /// Parent span id (`0000000000000000` for a root).
    pub parent_span_id: String,
    /// Attributes as strings.
    pub attributes: std::collections::HashMap<String, String>,
    /// Trace ids of the spans this one links to.
    pub linked_trace_ids: Vec<String>,
}

/// An in-process span exporter: every finished span lands in memory.
#[derive(Debug, Clone, Default)]
pub struct SpanCollector {
    spans: std::sync::Arc<std::sync::Mutex<Vec<CollectedSpan>>>,
}

impl opentelemetry_sdk::trace::SpanExporter for SpanCollector {
    async fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        let mut spans = self.spans.lock().unwrap_or_else(|p| p.into_inner());
        spans.extend(batch.into_iter().map(|s| {
            CollectedSpan {
                name: s.name.to_string(),
                trace_id: s.span_context.trace_id().to_string(),
                span_id: s.span_context.span_id().to_string(),
                parent_span_id: s.parent_span_id.to_string(),
                attributes: s
                    .attributes
                    .iter()
                    .map(|kv| (kv.key.to_string(), kv.value.to_string()))
                    .collect(),
                linked_trace_ids: s
                    .links
                    .iter()
                    .map(|l| l.span_context.trace_id().to_string())
                    .collect(),
            }
        }));
        Ok(())
    }
}

impl SpanCollector {
    /// Installs the process's telemetry (as `telemetry::init` does) with
    /// spans exported to the returned collector as soon as they end. Once per
    /// test binary: the subscriber is global.
    pub fn install(service_name: &'static str) -> (Self, crate::telemetry::TelemetryGuard) {
        let collector = Self::default();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_simple_exporter(collector.clone())
            .build();
        let args = crate::config::ObservabilityArgs {
            log_filter: "info".into(),
            ..Default::default()
        };
        let guard = crate::telemetry::init_with(service_name, &args, Some(provider), std::io::sink)
            .expect("telemetry installs once per test binary");
        (collector, guard)
    }

    /// Every span finished so far.
    pub fn spans(&self) -> Vec<CollectedSpan> {
        self.spans.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits (polling, up to `timeout`) for a finished span matching `pred`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&CollectedSpan) -> bool,
    ) -> Option<CollectedSpan> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(s) = self.spans().into_iter().find(|s| pred(s)) {
                return Some(s);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Waits until the gRPC server at `endpoint` (`http://host:port`) accepts
/// connections and its health service reports the whole server SERVING;
/// panics after 20 s.
pub async fn wait_serving(endpoint: &str) {
    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut last = String::from("never connected");
    while tokio::time::Instant::now() < deadline {
        match tonic::transport::Endpoint::from_shared(endpoint.to_string())
            .expect("valid endpoint")
            .connect()
            .await
        {
            Ok(channel) => {
                match HealthClient::new(channel)
                    .check(HealthCheckRequest::default())
                    .await
                {
                    Ok(r) if r.get_ref().status == ServingStatus::Serving as i32 => return,
                    Ok(r) => last = format!("status {}", r.get_ref().status),
                    Err(e) => last = e.to_string(),
                }
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{endpoint} never reported SERVING: {last}");
}

/// A certificate authority made for one test, issuing leaf certificates for
/// TLS servers and clients (gRPC and NATS).
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl TestCa {
    /// A self-signed CA with common name `name`.
    pub fn new(name: &str) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().expect("generate CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("self-sign CA");
        Self { issuer }
    }

    /// The CA certificate (PEM).
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf certificate for the DNS name or IP address `name`, as
    /// (certificate PEM, key PEM).
    pub fn leaf(&self, name: &str) -> (String, String) {
        use rcgen::{CertificateParams, KeyPair};
        let key = KeyPair::generate().expect("generate leaf key");
        let mut params = CertificateParams::new(vec![name.to_string()]).expect("leaf parameters");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        (cert.pem(), key.serialize_pem())
    }

    /// Writes the CA certificate and a leaf for `name` into `dir` as
    /// `<prefix>-ca.pem`, `<prefix>.pem` and `<prefix>.key`; returns the
    /// three paths in that order.
    pub fn write_leaf(
        &self,
        dir: &std::path::Path,
        prefix: &str,
        name: &str,
    ) -> (PathBuf, PathBuf, PathBuf) {
        let (cert, key) = self.leaf(name);
        let write = |file: String, body: &str| {
            let path = dir.join(file);
            std::fs::write(&path, body).expect("write test certificate");
            path
        };
        (
            write(format!("{prefix}-ca.pem"), &self.pem()),
            write(format!("{prefix}.pem"), &cert),
            write(format!("{prefix}.key"), &key),
        )
    }
}

/// The kernel scheduling policy (`SCHED_OTHER` = 0, `SCHED_BATCH` = 3,
/// `SCHED_IDLE` = 5) of each thread of this process named `name`, read from
/// `/proc/self/task`; empty where `/proc` is unavailable.
pub fn thread_policies(name: &str) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .filter_map(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
            // Fields after the command's closing parenthesis start at field
            // 3 (state); the policy is field 41.
            let rest = &stat[stat.rfind(')')? + 1..];
            rest.split_whitespace().nth(41 - 3)?.parse().ok()
        })
        .collect()
}
