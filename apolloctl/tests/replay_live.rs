//! `apolloctl replay -o json` against real services: nats-server, ingest and
//! the scheduling engine on 127.0.0.1, the binary run as a user runs it.
//! Node insights carry requests only (`--list-pods false`), the case where
//! an engine that counted a bound pod twice would leave pods unplaced, and
//! the pods fill a small cluster exactly.

use std::net::SocketAddr;
use std::time::Duration;

use apollo_common::shutdown::CancellationToken;
use apollo_common::testing::{wait_serving, TestNats};
use tokio::net::TcpListener;

/// Only there so a broken build fails instead of hanging.
const BOUND: Duration = Duration::from_secs(30);

/// Waits until `addr` serves, failing with the service's own error if it
/// stopped first (a wait for readiness alone would only time out).
async fn serving<T: std::fmt::Debug>(addr: SocketAddr, service: &mut tokio::task::JoinHandle<T>) {
    let endpoint = format!("http://{addr}");
    tokio::select! {
        () = wait_serving(&endpoint) => {}
        r = service => panic!("the service at {addr} stopped before serving: {r:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_json_matches_the_simulation_with_requests_only_insights() {
    let nats = TestNats::start().await;
    let (n, s) = nats.bus_args();
    let shutdown = CancellationToken::new();

    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ingest_addr = grpc.local_addr().unwrap();
    let mut ingest = tokio::spawn(apollo_ingest::serve(
        apollo_ingest::Config::new(n.clone(), s.clone()),
        (grpc, http),
        shutdown.clone(),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sched_addr = listener.local_addr().unwrap();
    let mut scheduling = tokio::spawn(apollo_scheduling::service::serve(
        apollo_scheduling::config::Config::with_defaults(n, s),
        listener,
        shutdown.clone(),
    ));
    serving(ingest_addr, &mut ingest).await;
    serving(sched_addr, &mut scheduling).await;

    // 3 nodes x (8 T4, 32 cores, 128 GiB); 48 pods of half a GPU, 2 cores,
    // 8 GiB fill them exactly.
    let trace = tempfile::tempdir().unwrap();
    let mut nodes = String::from("sn,cpu_milli,memory_mib,gpu,model\n");
    for i in 0..3 {
        nodes.push_str(&format!("node-{i},32000,131072,8,T4\n"));
    }
    let mut pods = String::from("name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\n");
    for i in 0..48 {
        pods.push_str(&format!("worker-{i:02},2000,8192,1,500,\n"));
    }
    std::fs::write(trace.path().join("openb_node_list_gpu_node.csv"), nodes).unwrap();
    std::fs::write(trace.path().join("openb_pod_list_default.csv"), pods).unwrap();

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_apolloctl"))
        .args(["replay", "--pods", "0", "-o", "json"])
        .arg("--trace-dir")
        .arg(trace.path())
        .args([
            "--list-pods",
            "false",
            "--genai",
            "off",
            "--compare-simulation",
        ])
        .args(["--ingest", &format!("http://{ingest_addr}")])
        .args(["--scheduling", &format!("http://{sched_addr}")])
        // No forecaster: the summary leaves the forecast out and the replay succeeds.
        .args([
            "--forecaster",
            "http://127.0.0.1:1",
            "--forecast-wait",
            "0s",
        ])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));

    assert_eq!(summary["pods"], 48);
    assert_eq!(summary["placed"], 48, "{summary}");
    assert_eq!(summary["unplaced"], 0);
    let by_kind: u64 = summary["decisions"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(by_kind, 48);
    let lat = &summary["latency_ms"];
    assert!(lat["p50"].as_f64().unwrap() > 0.0);
    assert!(lat["p50"].as_f64() <= lat["p99"].as_f64());

    let sim = &summary["simulation"];
    assert_eq!(
        summary["unplaced_live_only"],
        serde_json::json!([]),
        "{summary}"
    );
    let live_gpu = summary["gpu_allocated_percent"].as_f64().unwrap();
    let sim_gpu = sim["gpu_allocated_percent"].as_f64().unwrap();
    assert_eq!(live_gpu, 100.0);
    assert!(
        (live_gpu - sim_gpu).abs() <= 1.0,
        "live {live_gpu} vs simulation {sim_gpu}"
    );
    assert!(summary.get("forecast").is_none());

    shutdown.cancel();
    tokio::time::timeout(BOUND, scheduling)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    tokio::time::timeout(BOUND, ingest)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
