//! `apolloctl` as a user runs it: real processes, real nats-server, real
//! services (the workspace's binaries beside apolloctl).

use std::{
    io::{BufRead as _, BufReader},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use apollo_common::testing::TestCa;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn apolloctl() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_apolloctl"))
}

/// The service binaries must sit beside apolloctl (`cargo test --workspace`
/// builds them before any test runs).
fn require_service_binaries() {
    let dir = apolloctl().parent().unwrap().to_path_buf();
    for b in [
        "apollo-ingest",
        "apollo-forecaster",
        "apollo-scheduling",
        "apollo-orchestration",
    ] {
        assert!(
            dir.join(b).is_file(),
            "{b} missing in {}: run `cargo build --bins` (scripts/test.sh builds the workspace)",
            dir.display()
        );
    }
}

fn run(args: &[&str]) -> Output {
    Command::new(apolloctl())
        .args(args)
        .env_remove("APOLLO_NATS_URL")
        .env_remove("APOLLO_TLS_CA")
        .env_remove("APOLLO_TLS_CLIENT_CERT")
        .env_remove("APOLLO_TLS_CLIENT_KEY")
        .env_remove("APOLLO_TLS_SERVER_NAME")
        .stdin(Stdio::null())
        .output()
        .expect("run apolloctl")
}

fn stderr_lines(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .map(str::to_string)
        .collect()
}

fn alive(pid: u32) -> bool {
    // Signal 0 checks existence; a zombie is reaped by its parent, which has exited.
    kill(Pid::from_raw(pid as i32), None).is_ok()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true)
}

fn port_free(url: &str) -> bool {
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "apolloctl did not exit in time");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Up {
    child: Child,
    endpoints: serde_json::Value,
}

impl Up {
    fn start() -> Self {
        Self::start_with_env(&[])
    }

    /// The stack with extra environment for `up` and the services it starts.
    fn start_with_env(env: &[(&str, &Path)]) -> Self {
        require_service_binaries();
        let mut child = Command::new(apolloctl())
            .args(["up", "--free-ports", "-o", "json", "--service-log", "warn"])
            .env_remove("APOLLO_NATS_URL")
            .envs(env.iter().map(|(k, v)| (k, v.as_os_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start apolloctl up");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        match serde_json::from_str(&line) {
            Ok(endpoints) => Self { child, endpoints },
            Err(e) => {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "up printed no endpoints ({e}): {line:?} / {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            }
        }
    }

    fn pids(&self) -> Vec<u32> {
        self.endpoints["services"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["pid"].as_u64().unwrap() as u32)
            .collect()
    }

    fn grpc(&self, service: &str) -> String {
        self.endpoints["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["service"] == service)
            .unwrap()["grpc"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
            let _ = wait_exit(&mut self.child, Duration::from_secs(40));
        }
    }
}

#[test]
fn up_serves_then_stops_everything_on_ctrl_c() {
    let mut up = Up::start();
    let pids = up.pids();
    assert_eq!(pids.len(), 4);
    assert!(pids.iter().all(|p| alive(*p)));
    let grpc: Vec<String> = up.endpoints["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["grpc"].as_str().unwrap().to_string())
        .collect();
    assert!(grpc.iter().all(|g| !port_free(g)), "services listen");

    // The scheduling engine answers through apolloctl, in JSON.
    let sched = up.grpc("apollo-scheduling");
    let o = run(&[
        "policy",
        "get",
        "ml/trainer-0",
        "--scheduling",
        &sched,
        "-o",
        "json",
    ]);
    assert!(o.status.success(), "{:?}", stderr_lines(&o));
    let policy: serde_json::Value = serde_json::from_slice(&o.stdout).expect("policy JSON");
    let request_id = policy["requestId"].as_str().unwrap().to_string();
    assert!(!request_id.is_empty());

    // Its decision record is kept and explained.
    let nats = up.endpoints["nats"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    let record = loop {
        let o = run(&["explain", &request_id, "--nats-url", &nats, "-o", "json"]);
        if o.status.success() {
            break serde_json::from_slice::<serde_json::Value>(&o.stdout).expect("record JSON");
        }
        assert!(
            Instant::now() < deadline,
            "no decision record: {:?}",
            stderr_lines(&o)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(record["kind"], "scheduling");
    assert_eq!(record["policy"]["requestId"], request_id.as_str());
    assert_eq!(record["request"]["podName"], "trainer-0");

    up.signal(Signal::SIGINT);
    let status = wait_exit(&mut up.child, Duration::from_secs(40));
    assert!(status.success(), "up exits 0 on Ctrl-C: {status}");
    for p in pids {
        assert!(!alive(p), "pid {p} outlived the stack");
    }
    assert!(grpc.iter().all(|g| port_free(g)), "ports freed");
}

/// A hot node (95 % CPU) with a movable pod and an idle worker, reported
/// through ingest as a node agent would.
async fn report_hot_cluster(ingest: &str) {
    use apollo_proto::{
        insight_service_client::InsightServiceClient, ClusterInsight, NodeResources, PipelineStage,
        Timestamp, WorkloadSummary,
    };
    const GIB: i64 = 1 << 30;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let node = |name: &str, cpu: f64, pods: Vec<WorkloadSummary>| ClusterInsight {
        node_name: name.into(),
        node_resources: Some(NodeResources {
            cpu_allocatable_cores: 16.0,
            memory_allocatable_bytes: 64 * GIB,
            cpu_used_cores: 16.0 * cpu,
            memory_used_bytes: 16 * GIB,
            ..Default::default()
        }),
        running_workloads: pods,
        collected_at: Some(Timestamp {
            seconds: now.as_secs() as i64,
            nanos: 0,
        }),
        ..Default::default()
    };
    let pod = |name: &str, cores: f64, stage: PipelineStage| WorkloadSummary {
        pod_name: name.into(),
        pod_namespace: "ml".into(),
        current_stage: stage as i32,
        cpu_usage: cores,
        memory_usage: GIB as f64,
        ..Default::default()
    };
    let mut c = InsightServiceClient::connect(ingest.to_string())
        .await
        .unwrap();
    c.report_cluster_insight(node("worker-1", 0.10, vec![]))
        .await
        .unwrap();
    c.report_cluster_insight(node(
        "hot-1",
        0.95,
        vec![
            pod("train", 9.0, PipelineStage::Training),
            pod("prep", 3.0, PipelineStage::Preprocessing),
        ],
    ))
    .await
    .unwrap();
}

#[test]
fn watch_receives_a_migration_policy() {
    let up = Up::start();
    let mut watch = Command::new(apolloctl())
        .args([
            "watch",
            "--count",
            "1",
            "-o",
            "json",
            "--orchestration",
            &up.grpc("apollo-orchestration"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Subscribed once it says so.
    let mut line = String::new();
    BufReader::new(watch.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("watching"), "{line}");
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(report_hot_cluster(&up.grpc("apollo-ingest")));
    let status = wait_exit(&mut watch, Duration::from_secs(60));
    assert!(status.success());
    let mut out = String::new();
    std::io::Read::read_to_string(watch.stdout.as_mut().unwrap(), &mut out).unwrap();
    let policy: serde_json::Value = serde_json::from_str(out.trim()).expect("policy JSON");
    assert_eq!(policy["action"], "ORCHESTRATION_ACTION_MIGRATE", "{policy}");
    assert_eq!(policy["migration"]["sourceNode"], "hot-1", "{policy}");
    assert_eq!(policy["migration"]["targetNode"], "worker-1", "{policy}");

    // The orchestration engine keeps its decision record too.
    let id = policy["requestId"].as_str().unwrap();
    let nats = up.endpoints["nats"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let o = run(&["explain", id, "--nats-url", nats, "-o", "json"]);
        if o.status.success() {
            let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            assert_eq!(r["kind"], "orchestration");
            assert_eq!(r["policy"]["requestId"], id);
            break;
        }
        assert!(Instant::now() < deadline, "{:?}", stderr_lines(&o));
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn up_reports_a_crashed_child_and_stops_the_rest() {
    let mut up = Up::start();
    let sched_pid = up.endpoints["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == "apollo-scheduling")
        .unwrap()["pid"]
        .as_u64()
        .unwrap() as u32;
    let pids = up.pids();
    kill(Pid::from_raw(sched_pid as i32), Signal::SIGKILL).unwrap();
    let status = wait_exit(&mut up.child, Duration::from_secs(40));
    assert_eq!(status.code(), Some(1));
    let mut err = String::new();
    std::io::Read::read_to_string(up.child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(
        err.contains("apollo-scheduling exited unexpectedly"),
        "stderr: {err}"
    );
    for p in pids {
        assert!(!alive(p), "pid {p} outlived the stack");
    }
}

#[test]
fn demo_short_replays_the_shipped_excerpt_and_summarises() {
    require_service_binaries();
    let dir = tempfile::tempdir().unwrap();
    // From a directory with no repository around it: the excerpt is built in.
    let o = Command::new(apolloctl())
        .args([
            "demo",
            "--short",
            "--pods",
            "120",
            "--observe",
            "5s",
            "-o",
            "json",
        ])
        .current_dir(dir.path())
        .env_remove("APOLLO_NATS_URL")
        .env_remove("APOLLO_TRACE_DIR")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "demo failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let text = String::from_utf8_lossy(&o.stdout);
    let summary: serde_json::Value =
        serde_json::from_str(text.lines().last().unwrap_or_default()).expect("summary JSON");
    let decisions: u64 = summary["scheduling_decisions"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert!(decisions >= 120, "{summary}");
    assert_eq!(summary["replay"]["pods"], 120, "{summary}");
    assert!(
        summary["replay"]["placed"].as_u64().unwrap() >= 110,
        "{summary}"
    );
    assert!(summary["replay"]["gpu_allocated_percent"].as_f64().unwrap() > 0.0);
    assert!(!Path::new(&dir.path().join("data")).exists());
}

#[test]
fn bad_arguments_exit_2_with_one_line() {
    for args in [
        vec!["policy", "get", "no-namespace"],
        vec!["watch", "--action", "teleport"],
        vec!["forecast"],
        vec!["no-such-command"],
        vec!["explain", "not a valid id"],
        vec!["load", "--nodes", "0"],
        vec!["load", "--insight-rate", "fast"],
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {:?}", stderr_lines(&o));
        let lines = stderr_lines(&o);
        assert_eq!(lines.len(), 1, "{args:?}: {lines:?}");
        assert!(lines[0].starts_with("apolloctl: "), "{lines:?}");
    }
}

#[test]
fn unreachable_servers_give_one_line_and_exit_1() {
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    for args in [
        vec![
            "forecast".to_string(),
            "n1".into(),
            "--forecaster".into(),
            format!("http://127.0.0.1:{closed}"),
        ],
        vec![
            "tap".into(),
            "apollo.>".into(),
            "--nats-url".into(),
            format!("nats://127.0.0.1:{closed}"),
        ],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = run(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let lines = stderr_lines(&o);
        assert_eq!(lines.len(), 1, "{args:?}: {lines:?}");
        assert!(lines[0].contains("cannot connect"), "{lines:?}");
    }
}

#[test]
fn completions_are_generated_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let o = run(&["completions", shell]);
        assert!(o.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains("apolloctl"), "{shell}");
        assert!(text.contains("demo"), "{shell}: subcommands completed");
    }
}

/// `apolloctl policy get` against the stack's scheduling engine with extra
/// arguments and environment; apolloctl's own TLS variables are cleared
/// first so the caller's environment cannot leak in.
fn policy_get(up: &Up, extra: &[&str], env: &[(&str, &Path)]) -> Output {
    let url = up.grpc("apollo-scheduling");
    let mut args = vec![
        "policy",
        "get",
        "tls/probe-0",
        "--scheduling",
        &url,
        "-o",
        "json",
    ];
    args.extend_from_slice(extra);
    Command::new(apolloctl())
        .args(&args)
        .env_remove("APOLLO_TLS_CA")
        .env_remove("APOLLO_TLS_CLIENT_CERT")
        .env_remove("APOLLO_TLS_CLIENT_KEY")
        .env_remove("APOLLO_TLS_SERVER_NAME")
        .envs(env.iter().map(|(k, v)| (k, v.as_os_str())))
        .stdin(Stdio::null())
        .output()
        .expect("run apolloctl")
}

fn assert_policy(o: &Output) {
    assert!(o.status.success(), "{:?}", stderr_lines(o));
    let policy: serde_json::Value = serde_json::from_slice(&o.stdout).expect("policy JSON");
    assert!(policy["decision"].is_string(), "{policy}");
}

fn assert_one_line_failure(o: &Output, what: &str) {
    assert_eq!(o.status.code(), Some(1), "{what}: {:?}", stderr_lines(o));
    let lines = stderr_lines(o);
    assert_eq!(lines.len(), 1, "{what}: {lines:?}");
    assert!(lines[0].starts_with("apolloctl: "), "{what}: {lines:?}");
    assert!(o.stdout.is_empty(), "{what}: printed a result");
}

#[test]
fn grpc_commands_reach_a_tls_server_only_with_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("server CA");
    // The certificate names localhost; the endpoint is 127.0.0.1, so the
    // name to verify is given with --tls-server-name.
    let (ca_pem, cert, key) = ca.write_leaf(dir.path(), "server", "localhost");
    let up = Up::start_with_env(&[("APOLLO_TLS_CERT", &cert), ("APOLLO_TLS_KEY", &key)]);

    assert_one_line_failure(&policy_get(&up, &[], &[]), "plaintext client");
    let ca_arg = ca_pem.to_str().unwrap();
    // Right CA, but the certificate does not name 127.0.0.1.
    assert_one_line_failure(
        &policy_get(&up, &["--tls-ca", ca_arg], &[]),
        "name mismatch",
    );
    let other = TestCa::new("other CA");
    let (other_ca, _, _) = other.write_leaf(dir.path(), "other", "localhost");
    assert_one_line_failure(
        &policy_get(
            &up,
            &[
                "--tls-ca",
                other_ca.to_str().unwrap(),
                "--tls-server-name",
                "localhost",
            ],
            &[],
        ),
        "untrusted CA",
    );

    assert_policy(&policy_get(
        &up,
        &["--tls-ca", ca_arg, "--tls-server-name", "localhost"],
        &[],
    ));
    // The same through the environment.
    assert_policy(&policy_get(
        &up,
        &[],
        &[
            ("APOLLO_TLS_CA", &ca_pem),
            ("APOLLO_TLS_SERVER_NAME", Path::new("localhost")),
        ],
    ));
}

#[test]
fn grpc_commands_reach_a_mutual_tls_server_only_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = TestCa::new("server CA");
    let client_ca = TestCa::new("client CA");
    let (ca_pem, cert, key) = server_ca.write_leaf(dir.path(), "server", "127.0.0.1");
    let (clients_ca, client_cert, client_key) =
        client_ca.write_leaf(dir.path(), "client", "apolloctl");
    let up = Up::start_with_env(&[
        ("APOLLO_TLS_CERT", &cert),
        ("APOLLO_TLS_KEY", &key),
        ("APOLLO_TLS_CLIENT_CA", &clients_ca),
    ]);
    let ca_arg = ca_pem.to_str().unwrap();

    assert_one_line_failure(&policy_get(&up, &[], &[]), "plaintext client");
    assert_one_line_failure(
        &policy_get(&up, &["--tls-ca", ca_arg], &[]),
        "no client certificate",
    );
    let stranger = TestCa::new("stranger CA");
    let (_, s_cert, s_key) = stranger.write_leaf(dir.path(), "stranger", "apolloctl");
    assert_one_line_failure(
        &policy_get(
            &up,
            &[
                "--tls-ca",
                ca_arg,
                "--tls-client-cert",
                s_cert.to_str().unwrap(),
                "--tls-client-key",
                s_key.to_str().unwrap(),
            ],
            &[],
        ),
        "client certificate from another CA",
    );

    assert_policy(&policy_get(
        &up,
        &[
            "--tls-ca",
            ca_arg,
            "--tls-client-cert",
            client_cert.to_str().unwrap(),
            "--tls-client-key",
            client_key.to_str().unwrap(),
        ],
        &[],
    ));
    assert_policy(&policy_get(
        &up,
        &[],
        &[
            ("APOLLO_TLS_CA", &ca_pem),
            ("APOLLO_TLS_CLIENT_CERT", &client_cert),
            ("APOLLO_TLS_CLIENT_KEY", &client_key),
        ],
    ));
}

#[test]
fn unusable_tls_settings_fail_before_dialling() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing-ca.pem");
    let o = run(&["forecast", "n1", "--tls-ca", missing.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let lines = stderr_lines(&o);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains(&format!("cannot read TLS CA {}", missing.display())),
        "{lines:?}"
    );
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let o = run(&["forecast", "n1", "--tls-ca", garbage.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr_lines(&o)[0].contains("no PEM block"),
        "{:?}",
        stderr_lines(&o)
    );
    // A client certificate without a CA to verify the server is a usage error.
    let o = run(&[
        "forecast",
        "n1",
        "--tls-client-cert",
        garbage.to_str().unwrap(),
        "--tls-client-key",
        garbage.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{:?}", stderr_lines(&o));
}

/// Runs `apolloctl load --start-stack` for 3 s with `extra` arguments and
/// returns its JSON summary, after checking what holds for every run.
fn load_summary(extra: &[&str]) -> serde_json::Value {
    require_service_binaries();
    let o = Command::new(apolloctl())
        .args([
            "load",
            "--start-stack",
            "--duration",
            "3s",
            "--signature-rate",
            "10",
            "--policy-rate",
            "20",
            "--max-calls",
            "150",
            "--nodes",
            "200",
            "--service-log",
            "warn",
            "-o",
            "json",
        ])
        .args(extra)
        .env_remove("APOLLO_NATS_URL")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "load failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&o.stdout).expect("one JSON document on stdout");
    let rpcs = summary["rpcs"].as_object().unwrap();
    assert_eq!(rpcs.len(), 3, "{summary}");
    for (name, r) in rpcs {
        let sent = r["sent"].as_u64().unwrap();
        let ok = r["ok"].as_u64().unwrap();
        let errors = r["errors"].as_u64().unwrap();
        let by_code: u64 = r["errors_by_code"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(sent, ok + errors, "{name}: {r}");
        assert_eq!(errors, by_code, "{name}: {r}");
        assert!(ok > 0, "{name}: {r}");
        let lat = &r["latency_ms"];
        assert!(lat["p50"].as_f64().unwrap() <= lat["p99"].as_f64().unwrap());
        assert!(lat["p99"].as_f64().unwrap() <= lat["max"].as_f64().unwrap());
    }
    assert_eq!(summary["nodes"], 200);
    // The engine's own histogram saw at least every answered policy.
    let decided = summary["scheduling_decision_server"]["decisions"]
        .as_u64()
        .unwrap();
    assert!(
        decided >= rpcs["GetSchedulingPolicy"]["ok"].as_u64().unwrap(),
        "{summary}"
    );
    // The engine's view applied insights during the run.
    assert!(
        summary["scheduling_view"]["messages_applied"]
            .as_u64()
            .unwrap()
            > 0,
        "{summary}"
    );
    assert!(
        summary["scheduling_view"]["lag_at_end_s"].is_f64(),
        "{summary}"
    );
    // The four services, nats-server and the generator itself.
    let processes = summary["processes"].as_array().unwrap();
    let mut names: Vec<&str> = processes
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "apollo-forecaster",
            "apollo-ingest",
            "apollo-orchestration",
            "apollo-scheduling",
            "apolloctl",
            "nats-server"
        ],
        "{summary}"
    );
    for p in processes {
        assert!(p["rss_start_kib"].as_u64().unwrap() > 0, "{p}");
        assert!(p["rss_end_kib"].as_u64().unwrap() > 0, "{p}");
        assert!(p["cpu_s"].as_f64().unwrap() >= 0.0, "{p}");
    }
    summary
}

#[test]
fn load_reports_counts_that_add_up_as_json() {
    let summary = load_summary(&["--insight-rate", "100"]);
    let rpcs = summary["rpcs"].as_object().unwrap();
    for (name, r) in rpcs {
        assert!(
            r["sent"].as_u64().unwrap() <= 150,
            "--max-calls bounds each kind: {name}: {r}"
        );
        assert_eq!(r["messages_per_call"], 1, "{name}: {r}");
    }
    // 100/s for 3 s would be 300: the count bound stopped it at 150.
    assert_eq!(rpcs["ReportClusterInsight"]["sent"], 150, "{summary}");
}

#[test]
fn load_streams_batched_insights_and_counts_them_as_insights() {
    // 500 insights/s, 25 a call: 20 StreamClusterInsights calls a second.
    let summary = load_summary(&["--insight-rate", "500", "--insight-batch", "25"]);
    let rpcs = summary["rpcs"].as_object().unwrap();
    assert!(
        !rpcs.contains_key("ReportClusterInsight"),
        "batched insights are not unary calls: {summary}"
    );
    let r = &rpcs["StreamClusterInsights"];
    assert_eq!(r["messages_per_call"], 25, "{r}");
    let sent = r["sent"].as_u64().unwrap();
    assert_eq!(sent % 25, 0, "whole calls of 25: {r}");
    assert!(sent > 150, "counts are in insights, not calls: {r}");
    assert_eq!(
        r["ok"], r["sent"],
        "a healthy stack stores every insight: {r}"
    );
}
