//! Hostile input at every boundary of a running stack, one table per
//! boundary: each row is an input and the precise error it must get (gRPC
//! status code and message fragment, or exit code and stderr fragment). For
//! the service boundaries the row also names the rejection metric that must
//! go up by one, and the test checks that nothing else changed: no message
//! stored, no scheduling decision made, no node or pod added to the
//! engines' view.
//!
//! Real processes: `apolloctl up --free-ports` (nats-server with JetStream
//! and the four services on 127.0.0.1), the service binaries themselves for
//! configuration errors.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use apollo_proto::{
    insight_service_client::InsightServiceClient,
    scheduling_policy_service_client::SchedulingPolicyServiceClient, ClusterInsight, GpuStatus,
    NodeResources, SchedulingPolicyRequest, SchedulingResult, Timestamp, WorkloadSignature,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn bin(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_apolloctl"))
        .parent()
        .unwrap()
        .join(name)
}

/// `apolloctl up --free-ports`, stopped on drop.
struct Stack {
    child: Child,
    endpoints: serde_json::Value,
}

impl Stack {
    fn start() -> Self {
        for b in [
            "apollo-ingest",
            "apollo-forecaster",
            "apollo-scheduling",
            "apollo-orchestration",
        ] {
            assert!(
                bin(b).is_file(),
                "{b} missing: run `cargo build --bins` (scripts/test.sh builds the workspace)"
            );
        }
        let mut child = Command::new(bin("apolloctl"))
            .args(["up", "--free-ports", "-o", "json", "--service-log", "warn"])
            .env_remove("APOLLO_NATS_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start apolloctl up");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let endpoints = serde_json::from_str(&line).unwrap_or_else(|e| {
            let _ = child.kill();
            panic!("up printed no endpoints ({e}): {line:?}")
        });
        Self { child, endpoints }
    }

    fn service(&self, name: &str, key: &str) -> String {
        self.endpoints["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["service"] == name)
            .unwrap()[key]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn nats(&self) -> String {
        self.endpoints["nats"].as_str().unwrap().to_string()
    }

    /// A service's `/metrics` text.
    fn metrics(&self, service: &str) -> String {
        let addr = self.service(service, "metrics");
        let addr = addr.trim_start_matches("http://");
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(40);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
    }
}

/// Sum of the samples of `name` whose labels contain every fragment.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn now() -> Option<Timestamp> {
    let d = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap();
    Some(Timestamp {
        seconds: d.as_secs() as i64,
        nanos: 0,
    })
}

fn good_insight() -> ClusterInsight {
    ClusterInsight {
        node_name: "hostile-node-0".into(),
        node_resources: Some(NodeResources {
            cpu_allocatable_cores: 32.0,
            memory_allocatable_bytes: 1 << 36,
            gpu_allocatable: 1,
            ..Default::default()
        }),
        gpu_devices: vec![GpuStatus {
            gpu_id: "gpu0".into(),
            utilization_percent: 10.0,
            ..Default::default()
        }],
        collected_at: now(),
        ..Default::default()
    }
}

fn good_signature() -> WorkloadSignature {
    WorkloadSignature {
        pod_name: "hostile-pod".into(),
        pod_namespace: "hostile".into(),
        confidence: 0.5,
        updated_at: now(),
        ..Default::default()
    }
}

/// What must stay as it was after a rejected input.
#[derive(Debug, PartialEq)]
struct State {
    insight_messages: u64,
    published: f64,
    decisions: f64,
    view_nodes: f64,
    view_pods: f64,
}

async fn stream_messages(js: &async_nats::jetstream::Context, name: &str) -> u64 {
    js.get_stream(name)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages
}

async fn state(stack: &Stack, js: &async_nats::jetstream::Context) -> State {
    let ingest = stack.metrics("apollo-ingest");
    let sched = stack.metrics("apollo-scheduling");
    State {
        insight_messages: stream_messages(js, "APOLLO_INSIGHT").await,
        published: metric(&ingest, "apollo_ingest_published_total", &[]),
        decisions: metric(&sched, "apollo_scheduling_decisions_total", &[]),
        view_nodes: metric(&sched, "apollo_view_nodes", &[]),
        view_pods: metric(&sched, "apollo_view_pods", &[]),
    }
}

/// A gRPC call that must fail.
// A dozen rows built once: their size does not matter.
#[allow(clippy::large_enum_variant)]
enum Call {
    Insight(ClusterInsight),
    Signature(Box<WorkloadSignature>),
    Policy(SchedulingPolicyRequest),
    Result(SchedulingResult),
}

struct GrpcRow {
    what: &'static str,
    call: Call,
    code: tonic::Code,
    message: &'static str,
    /// (service, metric, label fragments) that must go up by one.
    counted: (&'static str, &'static str, &'static [&'static str]),
}

fn grpc_rows() -> Vec<GrpcRow> {
    let mut rows = Vec::new();
    let mut row = |what, call, code, message, counted| {
        rows.push(GrpcRow {
            what,
            call,
            code,
            message,
            counted,
        })
    };
    use tonic::Code::*;
    row(
        "insight without a node name",
        Call::Insight(ClusterInsight {
            node_name: String::new(),
            ..good_insight()
        }),
        InvalidArgument,
        "node_name",
        (
            "apollo-ingest",
            "apollo_ingest_rejected_total",
            &["kind=\"cluster\"", "reason=\"node_name:missing\""],
        ),
    );
    row(
        "node name that is no DNS name",
        Call::Insight(ClusterInsight {
            node_name: "Node A/../etc".into(),
            ..good_insight()
        }),
        InvalidArgument,
        "node_name",
        (
            "apollo-ingest",
            "apollo_ingest_rejected_total",
            &["reason=\"node_name:invalid_name\""],
        ),
    );
    let mut nan = good_insight();
    nan.node_resources.as_mut().unwrap().cpu_used_cores = f64::NAN;
    row(
        "NaN CPU use",
        Call::Insight(nan),
        InvalidArgument,
        "node_resources.cpu_used_cores",
        (
            "apollo-ingest",
            "apollo_ingest_rejected_total",
            &["reason=\"node_resources.cpu_used_cores:not_finite\""],
        ),
    );
    let mut hot = good_insight();
    hot.gpu_devices[0].utilization_percent = 140.0;
    row(
        "GPU utilisation above 100 %",
        Call::Insight(hot),
        InvalidArgument,
        "gpu_devices[0].utilization_percent",
        (
            "apollo-ingest",
            "apollo_ingest_rejected_total",
            &["reason=\"gpu_devices.utilization_percent:out_of_range\""],
        ),
    );
    let mut future = good_insight();
    future.collected_at.as_mut().unwrap().seconds += 86_400;
    row(
        "insight collected a day from now",
        Call::Insight(future),
        InvalidArgument,
        "collected_at",
        (
            "apollo-ingest",
            "apollo_ingest_rejected_total",
            &["reason=\"collected_at:future_timestamp\""],
        ),
    );
    row(
        "insight of 5 MiB (limit 4 MiB)",
        Call::Insight(ClusterInsight {
            node_type: "x".repeat(5 << 20),
            ..good_insight()
        }),
        ResourceExhausted,
        "over the server's limit of 4194304 bytes",
        (
            "apollo-ingest",
            "apollo_ingest_rejected_total",
            &["reason=\"message:too_large\""],
        ),
    );
    row(
        "signature without a namespace",
        Call::Signature(Box::new(WorkloadSignature {
            pod_namespace: String::new(),
            ..good_signature()
        })),
        InvalidArgument,
        "pod_namespace",
        (
            "apollo-ingest",
            "apollo_ingest_rejected_total",
            &["kind=\"workload\"", "reason=\"pod_namespace:missing\""],
        ),
    );
    row(
        "signature confidence 1.5",
        Call::Signature(Box::new(WorkloadSignature {
            confidence: 1.5,
            ..good_signature()
        })),
        InvalidArgument,
        "confidence",
        (
            "apollo-ingest",
            "apollo_ingest_rejected_total",
            &["reason=\"confidence:out_of_range\""],
        ),
    );
    row(
        "signature with an unknown workload type",
        Call::Signature(Box::new(WorkloadSignature {
            workload_type: 99,
            ..good_signature()
        })),
        InvalidArgument,
        "workload_type",
        (
            "apollo-ingest",
            "apollo_ingest_rejected_total",
            &["reason=\"workload_type:unknown_enum\""],
        ),
    );
    row(
        "policy request without a pod",
        Call::Policy(SchedulingPolicyRequest {
            pod_namespace: "hostile".into(),
            ..Default::default()
        }),
        InvalidArgument,
        "pod_name and pod_namespace are required",
        (
            "apollo-scheduling",
            "apollo_scheduling_requests_rejected_total",
            &[
                "rpc=\"GetSchedulingPolicy\"",
                "reason=\"missing pod identity\"",
            ],
        ),
    );
    row(
        "policy request with a blank namespace",
        Call::Policy(SchedulingPolicyRequest {
            pod_name: "p".into(),
            pod_namespace: "   ".into(),
            ..Default::default()
        }),
        InvalidArgument,
        "pod_name and pod_namespace are required",
        (
            "apollo-scheduling",
            "apollo_scheduling_requests_rejected_total",
            &["rpc=\"GetSchedulingPolicy\""],
        ),
    );
    row(
        "scheduling result without a request id",
        Call::Result(SchedulingResult {
            pod_name: "p".into(),
            pod_namespace: "hostile".into(),
            success: true,
            ..Default::default()
        }),
        InvalidArgument,
        "request_id is required",
        (
            "apollo-scheduling",
            "apollo_scheduling_requests_rejected_total",
            &[
                "rpc=\"ReportSchedulingResult\"",
                "reason=\"missing request id\"",
            ],
        ),
    );
    rows
}

/// Polls `cond` on fresh metrics of `service` until it holds (bounded).
fn wait_for(stack: &Stack, service: &str, what: &str, cond: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = stack.metrics(service);
        if cond(&text) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: not seen within 20 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn hostile_inputs_get_precise_errors_are_counted_and_change_nothing() {
    let stack = Stack::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_runtime = rt.enter();
    let nats = rt.block_on(async_nats::connect(stack.nats())).unwrap();
    let js = async_nats::jetstream::new(nats.clone());
    let mut ingest = rt
        .block_on(InsightServiceClient::connect(
            stack.service("apollo-ingest", "grpc"),
        ))
        .unwrap()
        .max_encoding_message_size(64 << 20);
    let mut scheduling = rt
        .block_on(SchedulingPolicyServiceClient::connect(
            stack.service("apollo-scheduling", "grpc"),
        ))
        .unwrap();

    // One good insight and signature first, so "unchanged" means something
    // (a node and a pod in the view, messages in the stream).
    rt.block_on(ingest.report_cluster_insight(good_insight()))
        .unwrap();
    rt.block_on(ingest.report_workload_signature(good_signature()))
        .unwrap();
    wait_for(&stack, "apollo-scheduling", "the good node and pod", |m| {
        metric(m, "apollo_view_nodes", &[]) == 1.0 && metric(m, "apollo_view_pods", &[]) == 1.0
    });

    // gRPC.
    for row in grpc_rows() {
        let (service, name, labels) = row.counted;
        let counted_before = metric(&stack.metrics(service), name, labels);
        let before = rt.block_on(state(&stack, &js));
        let result = rt.block_on(async {
            match row.call {
                Call::Insight(m) => ingest.report_cluster_insight(m).await.map(|_| ()),
                Call::Signature(m) => ingest.report_workload_signature(*m).await.map(|_| ()),
                Call::Policy(m) => scheduling.get_scheduling_policy(m).await.map(|_| ()),
                Call::Result(m) => scheduling.report_scheduling_result(m).await.map(|_| ()),
            }
        });
        let status = result.expect_err(row.what);
        assert_eq!(status.code(), row.code, "{}: {status:?}", row.what);
        assert!(
            status.message().contains(row.message),
            "{}: {:?} does not name {:?}",
            row.what,
            status.message(),
            row.message
        );
        let counted_after = metric(&stack.metrics(service), name, labels);
        assert_eq!(
            counted_after,
            counted_before + 1.0,
            "{}: {name}{labels:?} not counted once",
            row.what
        );
        assert_eq!(
            rt.block_on(state(&stack, &js)),
            before,
            "{}: state changed",
            row.what
        );
    }

    // NATS: messages a producer with publish rights could put on the insight
    // stream. Each consumer rejects and counts it; the view is unchanged.
    let nats_rows: [(&str, &str, &[u8]); 4] = [
        (
            "not JSON",
            "apollo.insight.cluster.hostile-a",
            b"\x00\xffnot json",
        ),
        (
            "JSON of the wrong shape",
            "apollo.insight.cluster.hostile-b",
            br#"{"nodeName": 17, "gpuDevices": "many"}"#,
        ),
        (
            "a signature without identity",
            "apollo.insight.workload.hostile.nobody",
            br#"{"confidence": 0.5}"#,
        ),
        (
            "a truncated insight",
            "apollo.insight.cluster.hostile-c",
            br#"{"nodeName": "hostile-c", "nodeResources": {"cpuAll"#,
        ),
    ];
    for (what, subject, payload) in nats_rows {
        let view_rejected = metric(
            &stack.metrics("apollo-scheduling"),
            "apollo_view_messages_rejected_total",
            &[],
        );
        let before = rt.block_on(state(&stack, &js));
        rt.block_on(async {
            js.publish(subject, bytes::Bytes::from_static(payload))
                .await
                .unwrap()
                .await
                .unwrap()
        });
        wait_for(&stack, "apollo-scheduling", what, |m| {
            metric(m, "apollo_view_messages_rejected_total", &[]) == view_rejected + 1.0
        });
        let after = rt.block_on(state(&stack, &js));
        // Only the stream grew (by the message published straight to it).
        assert_eq!(
            after,
            State {
                insight_messages: before.insight_messages + 1,
                ..before
            },
            "{what}: state changed"
        );
    }
    // The forecaster terminated the three undecodable insights (the
    // signature is not its subject), counted by reason.
    wait_for(
        &stack,
        "apollo-forecaster",
        "forecaster decode rejections",
        |m| {
            metric(
                m,
                "apollo_forecaster_insights_rejected_total",
                &["reason=\"decode\""],
            ) == 3.0
        },
    );
}

/// Runs a binary with `args` and `env`, bounded; returns (exit code, stderr).
fn run(binary: &str, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(bin(binary));
    cmd.args(args)
        .env_remove("APOLLO_NATS_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{binary} {args:?} {env:?} did not exit within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn hostile_command_lines_and_configuration_exit_with_precise_errors() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://127.0.0.1:{}", l.local_addr().unwrap().port())
    };
    let free_addr = || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let (grpc, metrics) = (free_addr(), free_addr());
    let listen: [(&str, &str); 3] = [
        ("APOLLO_GRPC_ADDR", &grpc),
        ("APOLLO_METRICS_ADDR", &metrics),
        ("APOLLO_NATS_URL", "nats://127.0.0.1:1"),
    ];
    // (binary, args, env, exit code, stderr fragment)
    type Row<'a> = (&'a str, Vec<&'a str>, Vec<(&'a str, &'a str)>, i32, &'a str);
    let rows: Vec<Row<'_>> = vec![
        // CLI
        (
            "apolloctl",
            vec!["load", "--nodes", "5000"],
            vec![],
            2,
            "--nodes 5000 is outside 1-1213",
        ),
        (
            "apolloctl",
            vec!["load", "--policy-rate", "NaN"],
            vec![],
            2,
            "is not a rate",
        ),
        (
            "apolloctl",
            vec!["load", "--insight-rate", "0", "--policy-rate", "0"],
            vec![],
            2,
            "nothing to send",
        ),
        (
            "apolloctl",
            vec!["load", "--duration", "soon"],
            vec![],
            2,
            "--duration",
        ),
        (
            "apolloctl",
            vec!["load", "--ingest", &closed, "--duration", "1s"],
            vec![],
            1,
            "cannot connect",
        ),
        (
            "apolloctl",
            vec!["policy", "get", "no-namespace"],
            vec![],
            2,
            "pod must be NAMESPACE/NAME",
        ),
        // Configuration through the environment
        (
            "apollo-ingest",
            vec![],
            vec![("APOLLO_GRPC_MAX_RECV_BYTES", "lots")],
            2,
            "--grpc-max-recv-bytes",
        ),
        (
            "apollo-ingest",
            vec![],
            vec![("APOLLO_GRPC_MAX_RECV_BYTES", "12")],
            1,
            "--grpc-max-recv-bytes (12) and --grpc-max-send-bytes (16777216) must be at least 1024",
        ),
        (
            "apollo-scheduling",
            vec![],
            vec![("APOLLO_NATS_TIMEOUT", "forever")],
            2,
            "--nats-timeout",
        ),
        (
            "apollo-forecaster",
            vec![],
            vec![
                ("APOLLO_TLS_CERT", "/nonexistent/cert.pem"),
                ("APOLLO_TLS_KEY", "/nonexistent/key.pem"),
            ],
            1,
            "/nonexistent/cert.pem",
        ),
        (
            "apollo-orchestration",
            vec![],
            vec![("APOLLO_GRPC_ADDR", "not-an-address")],
            2,
            "--grpc-addr",
        ),
    ];
    for (binary, args, env, code, fragment) in rows {
        let mut full_env: Vec<(&str, &str)> = listen
            .iter()
            .filter(|(k, _)| !env.iter().any(|(e, _)| e == k))
            .copied()
            .collect();
        full_env.extend(env.iter().copied());
        let (got, stderr) = if binary == "apolloctl" {
            run(binary, &args, &env)
        } else {
            run(binary, &args, &full_env)
        };
        assert_eq!(got, Some(code), "{binary} {args:?} {env:?}: {stderr}");
        assert!(
            stderr.contains(fragment),
            "{binary} {args:?} {env:?}: stderr does not name {fragment:?}: {stderr}"
        );
    }
}
