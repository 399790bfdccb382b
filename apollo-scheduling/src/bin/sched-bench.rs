//! Latency benchmark of the Scheduling Policy Engine; prints JSON.
//!
//! For each cluster (the openb node list turned into `ClusterInsight`s, and a
//! synthetic cluster) with `--pods` known pods (signatures) in the view, it
//! measures the server-side decision time (`Engine::decide`, assume included)
//! and the end-to-end gRPC latency of `GetSchedulingPolicy` against two no-op
//! RPCs on the same server in the same run: gRPC health `Check` and a
//! duplicate `ReportSchedulingResult`.
//!
//! Client and server share one current-thread runtime: the client waits for
//! each answer, so the server never competes with it, and no cross-thread
//! wake-ups (noisy on a shared machine) are measured. The typical pod shapes
//! are learned during a warm-up, as the service's sweeper does.
//!
//! `cargo run --release -p apollo-scheduling --bin sched-bench -- --nodes <csv>`

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use apollo_common::shutdown::CancellationToken;
use apollo_common::ClusterView;
use apollo_proto::scheduling_policy_service_client::SchedulingPolicyServiceClient;
use apollo_proto::{
    ClusterInsight, CsdStatus, DataLocalityInfo, GpuStatus, NodeResources, ResourceMetrics,
    SchedulingPolicyRequest, SchedulingResult, StorageDeviceStatus, WorkloadSignature,
};
use apollo_scheduling::config::Config;
use apollo_scheduling::engine::Engine;
use apollo_scheduling::state::ClusterState;
use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

const MODELS: [&str; 5] = ["V100M16", "V100M32", "T4", "A100", "P100"];

#[derive(Debug, Parser)]
struct Args {
    /// openb node list (sn,cpu_milli,memory_mib,gpu,model).
    #[arg(
        long,
        default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/alibaba-gpu-2023/openb_node_list_gpu_node.csv")
    )]
    nodes: PathBuf,
    /// Synthetic cluster size.
    #[arg(long, default_value_t = 5000)]
    synthetic: usize,
    /// Known pods (signatures) in the view.
    #[arg(long, default_value_t = 100_000)]
    pods: usize,
    /// In-process decisions timed per cluster.
    #[arg(long, default_value_t = 5000)]
    decisions: usize,
    /// gRPC calls timed per RPC kind and cluster.
    #[arg(long, default_value_t = 3000)]
    calls: usize,
    /// Random seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

#[derive(Debug, Serialize)]
struct Stats {
    n: usize,
    p50_us: f64,
    p99_us: f64,
    mean_us: f64,
    max_us: f64,
}

fn stats(mut d: Vec<Duration>) -> Stats {
    d.sort();
    let us = |x: Duration| x.as_secs_f64() * 1e6;
    let pick = |q: f64| us(d[((d.len() as f64 * q).ceil() as usize).clamp(1, d.len()) - 1]);
    Stats {
        n: d.len(),
        p50_us: pick(0.50),
        p99_us: pick(0.99),
        mean_us: d.iter().map(|&x| us(x)).sum::<f64>() / d.len() as f64,
        max_us: us(*d.last().unwrap_or(&Duration::ZERO)),
    }
}

#[derive(Debug, Serialize)]
struct Scenario {
    cluster: String,
    nodes: usize,
    known_pods: usize,
    decision: Stats,
    rank_only: Stats,
    sweep_with_shape_refresh_ms: f64,
    typical_shapes: usize,
    grpc_get_policy: Stats,
    noop_health_check: Stats,
    noop_duplicate_report: Stats,
    grpc_p99_over_health_p99: f64,
    decisions_by_kind: std::collections::BTreeMap<String, usize>,
}

fn openb(path: &PathBuf) -> anyhow::Result<Vec<ClusterInsight>> {
    let mut rdr =
        csv::Reader::from_path(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec.with_context(|| format!("{}:{}", path.display(), i + 2))?;
        let field = |j: usize| rec.get(j).unwrap_or("").trim().to_string();
        let num = |j: usize| -> anyhow::Result<i64> {
            field(j)
                .parse()
                .with_context(|| format!("{}:{} column {}", path.display(), i + 2, j + 1))
        };
        let gpus = num(3)?;
        let model = field(4);
        out.push(ClusterInsight {
            node_name: field(0),
            node_resources: Some(NodeResources {
                cpu_allocatable_cores: num(1)? as f64 / 1000.0,
                memory_allocatable_bytes: num(2)? << 20,
                gpu_allocatable: gpus as i32,
                ..Default::default()
            }),
            gpu_devices: (0..gpus)
                .map(|g| GpuStatus {
                    gpu_id: format!("gpu{g}"),
                    gpu_model: model.clone(),
                    is_available: true,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        });
    }
    Ok(out)
}

fn synthetic(n: usize, rng: &mut StdRng) -> Vec<ClusterInsight> {
    (0..n)
        .map(|i| {
            let gpu_node = rng.random_bool(0.6);
            let gpus = if gpu_node { 8 } else { 0 };
            let model = MODELS[rng.random_range(0..MODELS.len())];
            let cpu = 96.0;
            let tiers = ["nvme", "ssd", "hdd"];
            ClusterInsight {
                node_name: format!("syn-{i:05}"),
                node_resources: Some(NodeResources {
                    cpu_allocatable_cores: cpu,
                    cpu_requested_cores: rng.random_range(0.0..60.0),
                    cpu_used_cores: rng.random_range(0.0..50.0),
                    memory_allocatable_bytes: 512 << 30,
                    memory_requested_bytes: rng.random_range(0..256i64) << 30,
                    memory_used_bytes: rng.random_range(0..200i64) << 30,
                    ..Default::default()
                }),
                gpu_devices: (0..gpus)
                    .map(|g| GpuStatus {
                        gpu_id: format!("gpu{g}"),
                        gpu_model: model.into(),
                        is_available: true,
                        allocated_milli: *[0, 0, 0, 250, 500, 1000]
                            .get(rng.random_range(0..6))
                            .unwrap_or(&0),
                        utilization_percent: rng.random_range(0.0..90.0),
                        ..Default::default()
                    })
                    .collect(),
                storage_devices: vec![StorageDeviceStatus {
                    device_name: "d0".into(),
                    device_type: tiers[i % 3].into(),
                    total_bytes: 4 << 40,
                    utilization_percent: rng.random_range(0.0..80.0),
                    max_iops: 500_000,
                    current_iops: rng.random_range(0..300_000),
                    max_throughput_mbps: 3000.0,
                    current_throughput_mbps: rng.random_range(0.0..2000.0),
                    ..Default::default()
                }],
                csd_devices: if i % 10 == 0 {
                    vec![CsdStatus {
                        device_id: "csd0".into(),
                        is_available: true,
                        ..Default::default()
                    }]
                } else {
                    Vec::new()
                },
                ..Default::default()
            }
        })
        .collect()
}

fn signatures(n: usize, nodes: &[String], rng: &mut StdRng) -> Vec<WorkloadSignature> {
    (0..n)
        .map(|i| WorkloadSignature {
            pod_name: format!("pod-{i}"),
            pod_namespace: format!("ns-{}", i % 50),
            current_stage: rng.random_range(1..=7),
            io_pattern: rng.random_range(0..=6),
            confidence: 0.8,
            node_name: nodes[rng.random_range(0..nodes.len())].clone(),
            current_metrics: Some(ResourceMetrics {
                cpu_request_cores: rng.random_range(1..8) as f64,
                memory_request_bytes: rng.random_range(1..32i64) << 30,
                ..Default::default()
            }),
            data_locality: Some(DataLocalityInfo {
                data_nodes: vec![nodes[rng.random_range(0..nodes.len())].clone()],
                cache_nodes: vec![nodes[rng.random_range(0..nodes.len())].clone()],
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect()
}

/// A request mix: half known pods (signature), half annotated unknown pods
/// with GPU sharing, whole GPUs, model constraints, CSD, or CPU only.
fn request(i: usize, known: usize, nodes: &[String], rng: &mut StdRng) -> SchedulingPolicyRequest {
    if known > 0 && i.is_multiple_of(2) {
        let k = rng.random_range(0..known);
        return SchedulingPolicyRequest {
            pod_name: format!("pod-{k}"),
            pod_namespace: format!("ns-{}", k % 50),
            ..Default::default()
        };
    }
    let mut a: Vec<(String, String)> = vec![
        (
            "apollo.ai-storage/cpu".into(),
            format!("{}", rng.random_range(1..16)),
        ),
        (
            "apollo.ai-storage/memory".into(),
            format!("{}Gi", rng.random_range(1..64)),
        ),
    ];
    match i % 5 {
        0 => a.push(("apollo.ai-storage/gpu".into(), "0.5".into())),
        1 => a.push((
            "apollo.ai-storage/gpu".into(),
            format!("{}", rng.random_range(1..=4)),
        )),
        2 => {
            a.push(("apollo.ai-storage/gpu".into(), "1".into()));
            a.push((
                "apollo.ai-storage/gpu-model".into(),
                MODELS[i % MODELS.len()].into(),
            ));
        }
        3 => {
            a.push(("apollo.ai-storage/requires-csd".into(), "true".into()));
            a.push(("apollo.ai-storage/stage".into(), "preprocessing".into()));
        }
        _ => {
            a.push(("apollo.ai-storage/io-pattern".into(), "random".into()));
            a.push((
                "apollo.ai-storage/data-locations".into(),
                nodes[rng.random_range(0..nodes.len())].clone(),
            ));
        }
    }
    SchedulingPolicyRequest {
        pod_name: format!("new-{i}"),
        pod_namespace: "bench".into(),
        pod_annotations: a.into_iter().collect(),
        ..Default::default()
    }
}

async fn scenario(
    name: &str,
    insights: Vec<ClusterInsight>,
    args: &Args,
    rng: &mut StdRng,
) -> anyhow::Result<Scenario> {
    let view = ClusterView::new();
    let names: Vec<String> = insights.iter().map(|i| i.node_name.clone()).collect();
    let now = SystemTime::now();
    for ins in insights {
        view.upsert_node(ins, now, 0);
    }
    for sig in signatures(args.pods, &names, rng) {
        view.upsert_pod(sig, now, 0);
    }
    let mut config = Config::try_parse_from(["sched-bench"])?;
    config.observability.metrics_addr = "127.0.0.1:0".parse()?;
    config.service.feedback_dedup_capacity = 1_000_000;
    let state = Arc::new(ClusterState::new(view, config.engine.clone()));
    state.resync();
    let engine = Arc::new(Engine::new(Arc::clone(&state)));

    // In-process decisions: decide (with assume), then a failed report
    // without node forgets the assumption so the cluster stays in steady state.
    let mut kinds = std::collections::BTreeMap::new();
    let mut times = Vec::with_capacity(args.decisions);
    for i in 0..args.decisions + 200 {
        let req = request(i, args.pods, &names, rng);
        let t = Instant::now();
        let p = engine.decide(&req);
        let el = t.elapsed();
        state.feedback(
            &(req.pod_namespace.clone(), req.pod_name.clone()),
            &p.request_id,
            false,
            "",
        );
        if i == 199 {
            // Warm-up done: learn the typical pod shapes as the sweeper would,
            // so the timed decisions pay for a realistic fragmentation model.
            state.sweep();
        }
        if i >= 200 {
            times.push(el);
            *kinds
                .entry(format!("{:?}", p.decision()).to_lowercase())
                .or_insert(0) += 1;
        }
    }
    let decision = stats(times);

    // The scorer alone on the same mix (the core's share of a decision).
    let scorer = apollo_scheduling::scorer::NodeScorer::default();
    let mut rank_times = Vec::with_capacity(args.decisions);
    for i in 0..args.decisions {
        let req = request(i, args.pods, &names, rng);
        let sig = state.view().pod(&req.pod_namespace, &req.pod_name);
        let w = apollo_scheduling::workload::Workload::derive(
            &req,
            sig.as_ref().map(|e| e.value.as_ref()),
        );
        let demand = w.demand(Vec::new());
        let snap = state.read();
        let t = Instant::now();
        let r = scorer.rank(&snap, &demand, 20);
        rank_times.push(t.elapsed());
        std::hint::black_box(r);
    }
    let rank_only = stats(rank_times);
    let typical_shapes = state.read().shapes().typical().len();
    let t = Instant::now();
    state.sweep();
    let sweep_ms = t.elapsed().as_secs_f64() * 1e3;

    // gRPC on the same engine.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let server = {
        let (engine, shutdown) = (Arc::clone(&engine), shutdown.clone());
        tokio::spawn(async move {
            apollo_scheduling::service::serve_engine(
                engine,
                None,
                &config,
                prometheus_client::registry::Registry::default(),
                listener,
                shutdown,
            )
            .await
        })
    };
    let endpoint = format!("http://{addr}");
    let channel = loop {
        match tonic::transport::Endpoint::from_shared(endpoint.clone())?
            .connect()
            .await
        {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let mut client = SchedulingPolicyServiceClient::new(channel.clone());
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let mut get = Vec::new();
    let mut noop = Vec::new();
    let mut dup = Vec::new();
    let dup_report = SchedulingResult {
        request_id: "bench-duplicate".into(),
        pod_name: "x".into(),
        pod_namespace: "bench".into(),
        success: true,
        ..Default::default()
    };
    client.report_scheduling_result(dup_report.clone()).await?;
    for i in 0..args.calls + 200 {
        // Interleave the three RPCs so they see the same conditions.
        let req = request(i, args.pods, &names, rng);
        let t = Instant::now();
        let p = client
            .get_scheduling_policy(req.clone())
            .await?
            .into_inner();
        let e1 = t.elapsed();
        let t = Instant::now();
        health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await?;
        let e2 = t.elapsed();
        let t = Instant::now();
        client.report_scheduling_result(dup_report.clone()).await?;
        let e3 = t.elapsed();
        client
            .report_scheduling_result(SchedulingResult {
                request_id: p.request_id,
                pod_name: req.pod_name,
                pod_namespace: req.pod_namespace,
                success: false,
                ..Default::default()
            })
            .await?;
        if i >= 200 {
            get.push(e1);
            noop.push(e2);
            dup.push(e3);
        }
    }
    shutdown.cancel();
    let _ = server.await;
    let get = stats(get);
    let noop = stats(noop);
    Ok(Scenario {
        cluster: name.into(),
        nodes: names.len(),
        known_pods: args.pods,
        grpc_p99_over_health_p99: get.p99_us / noop.p99_us,
        decision,
        rank_only,
        sweep_with_shape_refresh_ms: sweep_ms,
        typical_shapes,
        grpc_get_policy: get,
        noop_health_check: noop,
        noop_duplicate_report: stats(dup),
        decisions_by_kind: kinds,
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut out = Vec::new();
    let nodes = openb(&args.nodes)?;
    eprintln!("openb: {} nodes", nodes.len());
    out.push(scenario("openb", nodes, &args, &mut rng).await?);
    let nodes = synthetic(args.synthetic, &mut rng);
    eprintln!("synthetic: {} nodes", nodes.len());
    out.push(scenario("synthetic", nodes, &args, &mut rng).await?);
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({ "scenarios": out }))?
    );
    Ok(())
}
