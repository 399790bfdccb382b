//! `apolloctl replay`: drives a running APOLLO stack with a real trace.
//!
//! The openb node list becomes one `ClusterInsight` per node (CPU, memory and
//! one `GPUStatus` per GPU with its model), streamed to ingest. Pods of the
//! openb pod list then arrive in submission order: each is reported as a
//! `WorkloadSignature`, asked for a `SchedulingPolicy` (its requests carried in
//! `apollo.ai-storage/*` annotations, as a pod spec would), "bound" to the top
//! preferred node, and the result reported back with
//! `ReportSchedulingResult`; the bound node's new allocation is reported as a
//! fresh `ClusterInsight`, as a node agent would. Every decision is printed.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use apollo_proto::{
    forecast_service_client::ForecastServiceClient, insight_service_client::InsightServiceClient,
    scheduling_policy_service_client::SchedulingPolicyServiceClient, ClusterInsight,
    ClusterPredictionRequest, GpuStatus, NodeResources, SchedulingDecision,
    SchedulingPolicyRequest, SchedulingResult, Timestamp, WorkloadSignature,
};
use tonic::transport::{Channel, Endpoint};

/// Arguments of `apolloctl replay`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Directory of the Alibaba GPU cluster trace 2023 (openb CSVs).
    #[arg(
        long,
        env = "APOLLO_TRACE_DIR",
        default_value = "data/alibaba-gpu-2023"
    )]
    trace_dir: PathBuf,
    /// Pod list inside the trace directory.
    #[arg(long, default_value = "openb_pod_list_default.csv")]
    pod_list: String,
    /// Number of pods to replay (in submission order); 0 = all.
    #[arg(long, default_value_t = 400)]
    pods: usize,
    /// Namespace given to the replayed pods.
    #[arg(long, default_value = "openb")]
    namespace: String,
    /// Ingest gRPC endpoint.
    #[arg(
        long,
        env = "APOLLO_INGEST_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    ingest: String,
    /// Scheduling Policy Engine gRPC endpoint.
    #[arg(
        long,
        env = "APOLLO_SCHEDULING_URL",
        default_value = "http://127.0.0.1:50054"
    )]
    scheduling: String,
    /// Forecaster gRPC endpoint (optional summary at the end).
    #[arg(
        long,
        env = "APOLLO_FORECASTER_URL",
        default_value = "http://127.0.0.1:50055"
    )]
    forecaster: String,
    /// Print every Nth decision (1 = all).
    #[arg(long, default_value_t = 1)]
    show_every: usize,
    /// How long to wait for the engine to see the cluster.
    #[arg(long, default_value = "60s", value_parser = apollo_common::config::parse_duration)]
    wait: Duration,
}

#[derive(Debug, Clone)]
struct Node {
    name: String,
    cpu_milli: u64,
    memory_mib: u64,
    gpu_model: String,
    cpu_alloc: u64,
    mem_alloc: u64,
    gpus: Vec<u32>,
}

#[derive(Debug, Clone)]
struct Pod {
    name: String,
    cpu_milli: u64,
    memory_mib: u64,
    num_gpu: u32,
    gpu_milli: u32,
    gpu_spec: String,
}

fn read_csv(path: &Path) -> anyhow::Result<(Vec<String>, Vec<Vec<String>>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<String> = lines
        .next()
        .with_context(|| format!("{} is empty", path.display()))?
        .split(',')
        .map(str::to_string)
        .collect();
    let rows = lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect();
    Ok((header, rows))
}

fn column(header: &[String], name: &str, path: &Path) -> anyhow::Result<usize> {
    header
        .iter()
        .position(|h| h == name)
        .with_context(|| format!("{}: missing column {name:?}", path.display()))
}

fn field<T: std::str::FromStr>(
    row: &[String],
    idx: usize,
    path: &Path,
    line: usize,
    name: &str,
) -> anyhow::Result<T> {
    let raw = row.get(idx).map(String::as_str).unwrap_or("");
    raw.trim().parse().map_err(|_| {
        anyhow::anyhow!(
            "{}:{line}: column {name}: cannot parse {raw:?}",
            path.display()
        )
    })
}

fn load_nodes(path: &Path) -> anyhow::Result<Vec<Node>> {
    let (header, rows) = read_csv(path)?;
    let (sn, cpu, mem, gpu, model) = (
        column(&header, "sn", path)?,
        column(&header, "cpu_milli", path)?,
        column(&header, "memory_mib", path)?,
        column(&header, "gpu", path)?,
        column(&header, "model", path)?,
    );
    rows.iter()
        .enumerate()
        .map(|(i, r)| {
            let line = i + 2;
            let gpus: usize = field(r, gpu, path, line, "gpu")?;
            Ok(Node {
                name: r.get(sn).cloned().unwrap_or_default(),
                cpu_milli: field(r, cpu, path, line, "cpu_milli")?,
                memory_mib: field(r, mem, path, line, "memory_mib")?,
                gpu_model: r.get(model).cloned().unwrap_or_default(),
                cpu_alloc: 0,
                mem_alloc: 0,
                gpus: vec![0; gpus],
            })
        })
        .collect()
}

fn load_pods(path: &Path, limit: usize) -> anyhow::Result<Vec<Pod>> {
    let (header, rows) = read_csv(path)?;
    let (name, cpu, mem, ng, gm, spec) = (
        column(&header, "name", path)?,
        column(&header, "cpu_milli", path)?,
        column(&header, "memory_mib", path)?,
        column(&header, "num_gpu", path)?,
        column(&header, "gpu_milli", path)?,
        column(&header, "gpu_spec", path).ok(),
    );
    let mut pods = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        if limit > 0 && pods.len() >= limit {
            break;
        }
        let line = i + 2;
        pods.push(Pod {
            name: r.get(name).cloned().unwrap_or_default(),
            cpu_milli: field(r, cpu, path, line, "cpu_milli")?,
            memory_mib: field(r, mem, path, line, "memory_mib")?,
            num_gpu: field(r, ng, path, line, "num_gpu")?,
            gpu_milli: field(r, gm, path, line, "gpu_milli")?,
            gpu_spec: spec.and_then(|s| r.get(s).cloned()).unwrap_or_default(),
        });
    }
    Ok(pods)
}

fn now() -> Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn insight(node: &Node) -> ClusterInsight {
    const MIB: i64 = 1 << 20;
    let gpu_used = node.gpus.iter().filter(|a| **a > 0).count() as i32;
    ClusterInsight {
        node_name: node.name.clone(),
        node_type: "gpu".into(),
        node_resources: Some(NodeResources {
            cpu_allocatable_cores: node.cpu_milli as f64 / 1000.0,
            memory_allocatable_bytes: node.memory_mib as i64 * MIB,
            gpu_allocatable: node.gpus.len() as i32,
            gpu_used,
            gpu_available: node.gpus.len() as i32 - gpu_used,
            cpu_available_cores: (node.cpu_milli - node.cpu_alloc) as f64 / 1000.0,
            memory_available_bytes: (node.memory_mib - node.mem_alloc) as i64 * MIB,
            cpu_requested_cores: node.cpu_alloc as f64 / 1000.0,
            memory_requested_bytes: node.mem_alloc as i64 * MIB,
            ..Default::default()
        }),
        gpu_devices: node
            .gpus
            .iter()
            .enumerate()
            .map(|(i, alloc)| GpuStatus {
                gpu_id: format!("{}-gpu{i}", node.name),
                gpu_model: node.gpu_model.clone(),
                is_available: true,
                allocated_milli: *alloc as i32,
                ..Default::default()
            })
            .collect(),
        collected_at: Some(now()),
        ..Default::default()
    }
}

fn annotations(pod: &Pod) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    a.insert(
        "apollo.ai-storage/cpu".into(),
        format!("{}m", pod.cpu_milli),
    );
    a.insert(
        "apollo.ai-storage/memory".into(),
        format!("{}Mi", pod.memory_mib),
    );
    if pod.num_gpu > 0 {
        a.insert("apollo.ai-storage/gpu".into(), pod.num_gpu.to_string());
        a.insert(
            "apollo.ai-storage/gpu-milli".into(),
            pod.gpu_milli.to_string(),
        );
    }
    if !pod.gpu_spec.is_empty() {
        // The trace joins allowed models with `|`; the annotation takes a comma list.
        a.insert(
            "apollo.ai-storage/gpu-model".into(),
            pod.gpu_spec.replace('|', ","),
        );
    }
    a
}

/// Binds `pod` on `node` the way a device plugin would: a sharing pod on the
/// fullest GPU it fits, whole-GPU pods on free GPUs. Returns false if it
/// does not fit (the engine's view was stale).
fn bind(node: &mut Node, pod: &Pod) -> bool {
    if node.cpu_alloc + pod.cpu_milli > node.cpu_milli
        || node.mem_alloc + pod.memory_mib > node.memory_mib
    {
        return false;
    }
    if pod.num_gpu == 1 && pod.gpu_milli < 1000 {
        let best = node
            .gpus
            .iter()
            .enumerate()
            .filter(|(_, a)| **a + pod.gpu_milli <= 1000)
            .max_by_key(|(_, a)| **a)
            .map(|(i, _)| i);
        let Some(i) = best else { return false };
        node.gpus[i] += pod.gpu_milli;
    } else if pod.num_gpu > 0 {
        let free: Vec<usize> = node
            .gpus
            .iter()
            .enumerate()
            .filter(|(_, a)| **a == 0)
            .map(|(i, _)| i)
            .take(pod.num_gpu as usize)
            .collect();
        if free.len() < pod.num_gpu as usize {
            return false;
        }
        for i in free {
            node.gpus[i] = 1000;
        }
    }
    node.cpu_alloc += pod.cpu_milli;
    node.mem_alloc += pod.memory_mib;
    true
}

async fn channel(url: &str) -> anyhow::Result<Channel> {
    Endpoint::from_shared(url.to_string())
        .with_context(|| format!("invalid endpoint {url}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("cannot connect to {url}"))
}

fn decision_name(d: i32) -> &'static str {
    match SchedulingDecision::try_from(d).unwrap_or(SchedulingDecision::Unspecified) {
        SchedulingDecision::Allow => "ALLOW",
        SchedulingDecision::Prefer => "PREFER",
        SchedulingDecision::Require => "REQUIRE",
        SchedulingDecision::Delay => "DELAY",
        SchedulingDecision::Reject => "REJECT",
        SchedulingDecision::Unspecified => "UNSPECIFIED",
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?
        .block_on(replay(args))
}

pub(crate) async fn replay(args: Args) -> anyhow::Result<()> {
    let node_path = args.trace_dir.join("openb_node_list_gpu_node.csv");
    let pod_path = args.trace_dir.join(&args.pod_list);
    let mut nodes = load_nodes(&node_path)?;
    let pods = load_pods(&pod_path, args.pods)?;
    let index: HashMap<String, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.clone(), i))
        .collect();
    let gpu_capacity: u64 = nodes.iter().map(|n| n.gpus.len() as u64 * 1000).sum();
    eprintln!(
        "trace: {} nodes ({} GPUs), {} pods from {}",
        nodes.len(),
        gpu_capacity / 1000,
        pods.len(),
        pod_path.display()
    );

    let mut ingest = InsightServiceClient::new(channel(&args.ingest).await?);
    let mut scheduling = SchedulingPolicyServiceClient::new(channel(&args.scheduling).await?);

    // 1. The cluster, as a node agent would report it.
    let insights: Vec<ClusterInsight> = nodes.iter().map(insight).collect();
    let resp = ingest
        .stream_cluster_insights(tokio_stream::iter(insights))
        .await
        .context("streaming cluster insights to ingest failed")?
        .into_inner();
    eprintln!(
        "ingest: {} cluster insights received, {} stored ({})",
        resp.messages_received, resp.messages_processed, resp.status
    );
    if resp.messages_processed == 0 {
        bail!("ingest stored no cluster insight");
    }

    // 2. Wait until the engine's view holds the cluster.
    let deadline = Instant::now() + args.wait;
    loop {
        let probe = scheduling
            .get_scheduling_policy(SchedulingPolicyRequest {
                pod_name: "apolloctl-probe".into(),
                pod_namespace: args.namespace.clone(),
                pod_annotations: [("apollo.ai-storage/cpu".to_string(), "1".to_string())].into(),
                ..Default::default()
            })
            .await
            .context("scheduling engine did not answer")?
            .into_inner();
        if !probe.node_preferences.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the scheduling engine saw no nodes within {:?}: {}",
                args.wait,
                probe.reason
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("scheduling engine sees the cluster; replaying pods\n");
    println!(
        "{:<16} {:<8} {:<18} {:>5}  reason",
        "pod", "decision", "node", "score"
    );

    let mut latencies = Vec::with_capacity(pods.len());
    let mut by_decision: BTreeMap<&'static str, usize> = BTreeMap::new();
    let (mut placed, mut unplaced, mut stale) = (0usize, 0usize, 0usize);
    for (i, pod) in pods.iter().enumerate() {
        let signature = WorkloadSignature {
            pod_name: pod.name.clone(),
            pod_namespace: args.namespace.clone(),
            is_gpu_workload: pod.num_gpu > 0,
            last_seen: Some(now()),
            ..Default::default()
        };
        ingest
            .report_workload_signature(signature)
            .await
            .with_context(|| format!("ingest rejected the signature of {}", pod.name))?;

        let started = Instant::now();
        let policy = scheduling
            .get_scheduling_policy(SchedulingPolicyRequest {
                pod_name: pod.name.clone(),
                pod_namespace: args.namespace.clone(),
                pod_annotations: annotations(pod),
                ..Default::default()
            })
            .await
            .with_context(|| format!("no policy for {}", pod.name))?
            .into_inner();
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        let decision = decision_name(policy.decision);
        *by_decision.entry(decision).or_default() += 1;

        let mut bound_on = None;
        for pref in &policy.node_preferences {
            if let Some(&idx) = index.get(&pref.node_name) {
                if bind(&mut nodes[idx], pod) {
                    bound_on = Some((idx, pref.score));
                    break;
                }
                stale += 1;
            }
        }
        let (node_name, score) = match bound_on {
            Some((idx, score)) => {
                placed += 1;
                ingest
                    .report_cluster_insight(insight(&nodes[idx]))
                    .await
                    .context("ingest rejected a node update")?;
                (nodes[idx].name.clone(), score)
            }
            None => {
                unplaced += 1;
                ("-".to_string(), 0)
            }
        };
        scheduling
            .report_scheduling_result(SchedulingResult {
                request_id: policy.request_id.clone(),
                pod_name: pod.name.clone(),
                pod_namespace: args.namespace.clone(),
                scheduled_node: if bound_on.is_some() {
                    node_name.clone()
                } else {
                    String::new()
                },
                success: bound_on.is_some(),
                failure_reason: if bound_on.is_some() {
                    String::new()
                } else {
                    "no preferred node had room".into()
                },
                scheduling_duration_ms: started.elapsed().as_millis() as i64,
            })
            .await
            .context("scheduling engine rejected the result report")?;

        if args.show_every > 0 && i % args.show_every == 0 {
            let mut reason = policy.reason.clone();
            if reason.len() > 110 {
                let cut = (0..=110)
                    .rev()
                    .find(|i| reason.is_char_boundary(*i))
                    .unwrap_or(0);
                reason.truncate(cut);
                reason.push('…');
            }
            println!(
                "{:<16} {:<8} {:<18} {:>5}  {}",
                pod.name, decision, node_name, score, reason
            );
        }
    }

    latencies.sort_by(f64::total_cmp);
    let gpu_alloc: u64 = nodes
        .iter()
        .flat_map(|n| n.gpus.iter())
        .map(|a| u64::from(*a))
        .sum();
    println!();
    println!("pods replayed        {}", pods.len());
    println!("placed / unplaced    {placed} / {unplaced}  (stale preferences skipped: {stale})");
    println!(
        "decisions            {}",
        by_decision
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "policy latency (ms)  p50 {:.3}  p99 {:.3}  (client side, incl. gRPC)",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );
    println!(
        "GPU allocated        {:.2}% of {} GPUs",
        100.0 * gpu_alloc as f64 / gpu_capacity.max(1) as f64,
        gpu_capacity / 1000
    );

    // 3. What the forecaster says about the cluster now.
    match channel(&args.forecaster).await {
        Ok(ch) => {
            let mut forecaster = ForecastServiceClient::new(ch);
            match forecaster
                .get_cluster_prediction(ClusterPredictionRequest {
                    horizon_minutes: 15,
                    confidence_level: 0.95,
                    node_filters: Vec::new(),
                })
                .await
            {
                Ok(resp) => {
                    let p = resp.into_inner();
                    let agg = p.aggregated_prediction.unwrap_or_default();
                    let last = agg.predicted_usage.last().cloned().unwrap_or_default();
                    println!(
                        "forecast (15 min)    {} nodes; cluster cpu {:.1}% mem {:.1}% gpu {:.1}% used  model {}",
                        p.node_predictions.len(),
                        last.cpu_usage,
                        last.memory_usage,
                        last.gpu_usage,
                        agg.model_type
                    );
                    println!(
                        "                     (the trace gives allocations, not measured usage, so replayed nodes report 0 % used)"
                    );
                }
                Err(status) => println!("forecast             unavailable: {}", status.message()),
            }
        }
        Err(err) => println!("forecast             unavailable: {err:#}"),
    }
    Ok(())
}
