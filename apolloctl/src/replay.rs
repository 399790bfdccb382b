//! `apolloctl replay`: drives a running APOLLO stack with a real trace.
//!
//! The openb node list becomes one `ClusterInsight` per node (CPU, memory and
//! one `GPUStatus` per GPU with its model), streamed to ingest. Pods of the
//! openb pod list then arrive in submission order: each is reported as a
//! `WorkloadSignature`, asked for a `SchedulingPolicy` (its requests carried in
//! `apollo.ai-storage/*` annotations, as a pod spec would), bound to the first
//! preferred node that has room, and the result reported back with
//! `ReportSchedulingResult`. Pods never leave.
//!
//! Node insights are what a node agent (kubelet plus a device plugin) would
//! report: allocatable capacity, the sum of the requests of the pods bound
//! there (`cpu_requested_cores`, `memory_requested_bytes`, per-GPU
//! `allocated_milli`) and those pods in `running_workloads`. A node's insight
//! is sent right after each bind on it, and every node's insight again every
//! `--report-every`, as agents report periodically (the engine drops nodes
//! whose latest insight is older than its `--stale-after`).
//!
//! `--compare-simulation` first runs the same pods in the same order through
//! the simulation's engine (`apollo_scheduling::simulate::ApolloSim`, what
//! `apolloctl simulate --policy apollo` uses) and reports both side by side.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context as _};
use apollo_proto::{
    forecast_service_client::ForecastServiceClient, insight_service_client::InsightServiceClient,
    scheduling_policy_service_client::SchedulingPolicyServiceClient, ClusterInsight,
    ClusterPredictionRequest, GpuStatus, NodeResources, SchedulingDecision, SchedulingPolicy,
    SchedulingPolicyRequest, SchedulingResult, Timestamp, WorkloadSignature, WorkloadSummary,
};
use apollo_scheduling::simulate::{self, ApolloSim, ShapeSource, TraceNode, TracePod};
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Output {
    /// Decision lines while replaying, then a text summary.
    Text,
    /// One JSON summary on stdout (progress on stderr).
    Json,
}

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
    /// Print every Nth decision (1 = all; text output only).
    #[arg(long, default_value_t = 1)]
    show_every: usize,
    /// How long to wait for the engine to see the cluster.
    #[arg(long, default_value = "60s", value_parser = apollo_common::config::parse_duration)]
    wait: Duration,
    /// How often every node's insight is sent again, as node agents report
    /// periodically (keep it below the engine's `--stale-after`).
    #[arg(long, env = "APOLLO_REPLAY_REPORT_EVERY", default_value = "30s", value_parser = apollo_common::config::parse_duration)]
    report_every: Duration,
    /// Whether node insights list the pods bound there (`false`: requests
    /// only, as many node agents report).
    #[arg(long, env = "APOLLO_REPLAY_LIST_PODS", default_value_t = true, action = clap::ArgAction::Set)]
    list_pods: bool,
    /// Also run the same pods in the same order through the simulation's
    /// engine and report both.
    #[arg(long)]
    compare_simulation: bool,
    /// Output format.
    #[arg(
        short = 'o',
        long,
        value_enum,
        default_value = "text",
        env = "APOLLO_REPLAY_OUTPUT"
    )]
    output: Output,
}

/// A node of the replayed cluster as its agent sees it.
#[derive(Debug, Clone)]
struct Node {
    trace: TraceNode,
    cpu_alloc: u64,
    mem_alloc_mib: u64,
    gpus: Vec<u32>,
    /// Indices of the pods bound here.
    pods: Vec<usize>,
}

impl Node {
    fn new(trace: TraceNode) -> Self {
        Self {
            gpus: vec![0; trace.gpus as usize],
            trace,
            cpu_alloc: 0,
            mem_alloc_mib: 0,
            pods: Vec::new(),
        }
    }

    /// Binds a pod the way a device plugin would: a sharing pod on the
    /// fullest GPU it fits, whole-GPU pods on free GPUs of an allowed model.
    /// Returns false if it does not fit (the engine's view was stale).
    fn bind(&mut self, idx: usize, pod: &TracePod) -> bool {
        if self.cpu_alloc + pod.cpu_milli > self.trace.cpu_milli
            || self.mem_alloc_mib + pod.memory_mib > self.trace.memory_mib
        {
            return false;
        }
        if pod.num_gpu > 0 && !pod.gpu_spec.is_empty() && !pod.gpu_spec.contains(&self.trace.model)
        {
            return false;
        }
        if pod.num_gpu == 1 && pod.gpu_milli < 1000 {
            let best = self
                .gpus
                .iter()
                .enumerate()
                .filter(|(_, a)| **a + pod.gpu_milli <= 1000)
                .max_by_key(|(_, a)| **a)
                .map(|(i, _)| i);
            let Some(i) = best else { return false };
            self.gpus[i] += pod.gpu_milli;
        } else if pod.num_gpu > 0 {
            let free: Vec<usize> = self
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
                self.gpus[i] = 1000;
            }
        }
        self.cpu_alloc += pod.cpu_milli;
        self.mem_alloc_mib += pod.memory_mib;
        self.pods.push(idx);
        true
    }

    /// The insight a node agent reports now: capacity, requests of the pods
    /// bound here and, given their namespace, those pods.
    fn insight(&self, pods: &[TracePod], namespace: Option<&str>) -> ClusterInsight {
        const MIB: i64 = 1 << 20;
        let t = &self.trace;
        let gpu_used = self.gpus.iter().filter(|a| **a > 0).count() as i32;
        ClusterInsight {
            node_name: t.name.clone(),
            node_type: "gpu".into(),
            node_resources: Some(NodeResources {
                cpu_allocatable_cores: t.cpu_milli as f64 / 1000.0,
                memory_allocatable_bytes: t.memory_mib as i64 * MIB,
                gpu_allocatable: self.gpus.len() as i32,
                gpu_used,
                gpu_available: self.gpus.len() as i32 - gpu_used,
                cpu_available_cores: (t.cpu_milli - self.cpu_alloc) as f64 / 1000.0,
                memory_available_bytes: (t.memory_mib - self.mem_alloc_mib) as i64 * MIB,
                cpu_requested_cores: self.cpu_alloc as f64 / 1000.0,
                memory_requested_bytes: self.mem_alloc_mib as i64 * MIB,
                ..Default::default()
            }),
            gpu_devices: self
                .gpus
                .iter()
                .enumerate()
                .map(|(i, alloc)| GpuStatus {
                    gpu_id: format!("{}-gpu{i}", t.name),
                    gpu_model: t.model.clone(),
                    is_available: true,
                    allocated_milli: *alloc as i32,
                    ..Default::default()
                })
                .collect(),
            running_workloads: match namespace {
                Some(ns) => self
                    .pods
                    .iter()
                    .map(|&p| WorkloadSummary {
                        pod_name: pods[p].name.clone(),
                        pod_namespace: ns.to_string(),
                        ..Default::default()
                    })
                    .collect(),
                None => Vec::new(),
            },
            collected_at: Some(timestamp(SystemTime::now())),
            ..Default::default()
        }
    }
}

fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// The policy request for a trace pod (the simulator's annotations, the
/// replay's pod name and namespace).
fn request(pod: &TracePod, namespace: &str) -> SchedulingPolicyRequest {
    SchedulingPolicyRequest {
        pod_name: pod.name.clone(),
        pod_namespace: namespace.to_string(),
        ..simulate::request_for(pod, 0)
    }
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

/// A policy that places the pod (a decision that binds, and a node).
fn places(policy: &SchedulingPolicy) -> bool {
    matches!(
        policy.decision(),
        SchedulingDecision::Allow | SchedulingDecision::Prefer | SchedulingDecision::Require
    ) && !policy.node_preferences.is_empty()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Client-side `GetSchedulingPolicy` latency, milliseconds.
#[derive(Debug, Serialize)]
struct Latency {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

impl Latency {
    fn of(mut ms: Vec<f64>) -> Self {
        ms.sort_by(f64::total_cmp);
        Self {
            p50: percentile(&ms, 0.5),
            p90: percentile(&ms, 0.9),
            p99: percentile(&ms, 0.99),
            max: ms.last().copied().unwrap_or(0.0),
        }
    }
}

/// The simulation's outcome on the same pods in the same order.
#[derive(Debug, Serialize)]
struct SimulationSummary {
    placed: usize,
    unplaced: usize,
    gpu_allocated_percent: f64,
    unplaced_pods: Vec<String>,
    wall_s: f64,
}

/// The cluster-wide forecast after the replay.
#[derive(Debug, Serialize)]
struct ForecastSummary {
    nodes: usize,
    horizon_minutes: i32,
    cpu_percent: f64,
    memory_percent: f64,
    gpu_percent: f64,
    model: String,
}

/// What `replay -o json` prints.
#[derive(Debug, Serialize)]
struct Summary {
    pods: usize,
    placed: usize,
    unplaced: usize,
    /// Preferred nodes skipped because they had no room when binding.
    stale_preferences_skipped: usize,
    gpus: u64,
    gpu_allocated_percent: f64,
    decisions: BTreeMap<&'static str, usize>,
    latency_ms: Latency,
    unplaced_pods: Vec<String>,
    wall_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    simulation: Option<SimulationSummary>,
    /// Pods unplaced live that the simulation placed.
    #[serde(skip_serializing_if = "Option::is_none")]
    unplaced_live_only: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    forecast: Option<ForecastSummary>,
}

/// Runs the pods in order through the simulation's engine.
fn simulate_same_order(trace: &[TraceNode], pods: &[TracePod]) -> SimulationSummary {
    let started = Instant::now();
    let mut sim = ApolloSim::new(trace, pods, ShapeSource::Online);
    let mut unplaced_pods = Vec::new();
    for (k, pod) in pods.iter().enumerate() {
        let before = sim.gpu_allocated_milli();
        let policy = sim.place(pod, k as u64);
        let placed =
            places(&policy) && (pod.gpu_request() == 0 || sim.gpu_allocated_milli() > before);
        if !placed {
            unplaced_pods.push(pod.name.clone());
        }
    }
    SimulationSummary {
        placed: pods.len() - unplaced_pods.len(),
        unplaced: unplaced_pods.len(),
        gpu_allocated_percent: 100.0 * sim.gpu_allocated_milli() as f64
            / sim.gpu_capacity_milli().max(1) as f64,
        unplaced_pods,
        wall_s: started.elapsed().as_secs_f64(),
    }
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?
        .block_on(replay(args))
}

fn load(args: &Args) -> anyhow::Result<(Vec<TraceNode>, Vec<TracePod>, PathBuf)> {
    let node_path = args.trace_dir.join("openb_node_list_gpu_node.csv");
    let pod_path = args.trace_dir.join(&args.pod_list);
    let nodes = simulate::load_nodes(&node_path)?;
    let mut pods = simulate::load_pods(&pod_path)?;
    if args.pods > 0 {
        pods.truncate(args.pods);
    }
    Ok((nodes, pods, pod_path))
}

async fn stream_all(
    ingest: &mut InsightServiceClient<Channel>,
    nodes: &[Node],
    pods: &[TracePod],
    namespace: Option<&str>,
) -> anyhow::Result<i64> {
    let insights: Vec<ClusterInsight> = nodes.iter().map(|n| n.insight(pods, namespace)).collect();
    let resp = ingest
        .stream_cluster_insights(tokio_stream::iter(insights))
        .await
        .context("streaming cluster insights to ingest failed")?
        .into_inner();
    Ok(resp.messages_processed)
}

async fn replay(args: Args) -> anyhow::Result<()> {
    let (trace, pods, pod_path) = load(&args)?;
    let text = args.output == Output::Text;
    let gpu_capacity: u64 = trace.iter().map(|n| u64::from(n.gpus) * 1000).sum();
    eprintln!(
        "trace: {} nodes ({} GPUs), {} pods from {}",
        trace.len(),
        gpu_capacity / 1000,
        pods.len(),
        pod_path.display()
    );
    let simulation = if args.compare_simulation {
        let s = simulate_same_order(&trace, &pods);
        eprintln!(
            "simulation (same pods, same order): {} placed, {} unplaced, {:.2}% of GPUs allocated ({:.1} s)",
            s.placed, s.unplaced, s.gpu_allocated_percent, s.wall_s
        );
        Some(s)
    } else {
        None
    };
    let mut nodes: Vec<Node> = trace.iter().cloned().map(Node::new).collect();
    let listed_ns = args.list_pods.then_some(args.namespace.as_str());
    let index: HashMap<String, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.trace.name.clone(), i))
        .collect();

    let mut ingest = InsightServiceClient::new(channel(&args.ingest).await?);
    let mut scheduling = SchedulingPolicyServiceClient::new(channel(&args.scheduling).await?);

    // 1. The cluster, as node agents report it.
    let stored = stream_all(&mut ingest, &nodes, &pods, listed_ns).await?;
    eprintln!(
        "ingest: {stored} of {} cluster insights stored",
        nodes.len()
    );
    if stored == 0 {
        bail!("ingest stored no cluster insight");
    }
    let mut last_full_report = Instant::now();

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
            // Drop the probe's assumption at once.
            scheduling
                .report_scheduling_result(SchedulingResult {
                    request_id: probe.request_id,
                    pod_name: probe.pod_name,
                    pod_namespace: probe.pod_namespace,
                    success: false,
                    failure_reason: "readiness probe, not bound".into(),
                    ..Default::default()
                })
                .await
                .context("scheduling engine rejected the result report")?;
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
    eprintln!("scheduling engine sees the cluster; replaying pods");
    if text {
        println!(
            "\n{:<16} {:<8} {:<18} {:>5}  reason",
            "pod", "decision", "node", "score"
        );
    }

    let started_all = Instant::now();
    let progress_every = (pods.len() / 20).max(1);
    let mut latencies = Vec::with_capacity(pods.len());
    let mut decisions: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut unplaced_pods = Vec::new();
    let mut stale = 0usize;
    for (i, pod) in pods.iter().enumerate() {
        if last_full_report.elapsed() >= args.report_every {
            stream_all(&mut ingest, &nodes, &pods, listed_ns).await?;
            last_full_report = Instant::now();
        }
        let signature = WorkloadSignature {
            pod_name: pod.name.clone(),
            pod_namespace: args.namespace.clone(),
            is_gpu_workload: pod.num_gpu > 0,
            last_seen: Some(timestamp(SystemTime::now())),
            ..Default::default()
        };
        ingest
            .report_workload_signature(signature)
            .await
            .with_context(|| format!("ingest rejected the signature of {}", pod.name))?;

        let started = Instant::now();
        let policy = scheduling
            .get_scheduling_policy(request(pod, &args.namespace))
            .await
            .with_context(|| format!("no policy for {}", pod.name))?
            .into_inner();
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        let decision = decision_name(policy.decision);
        *decisions.entry(decision).or_default() += 1;

        let mut bound_on = None;
        if places(&policy) {
            for pref in &policy.node_preferences {
                if let Some(&idx) = index.get(&pref.node_name) {
                    if nodes[idx].bind(i, pod) {
                        bound_on = Some((idx, pref.score));
                        break;
                    }
                    stale += 1;
                }
            }
        }
        let (node_name, score) = match bound_on {
            Some((idx, score)) => {
                ingest
                    .report_cluster_insight(nodes[idx].insight(&pods, listed_ns))
                    .await
                    .context("ingest rejected a node update")?;
                (nodes[idx].trace.name.clone(), score)
            }
            None => {
                unplaced_pods.push(pod.name.clone());
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

        if text && args.show_every > 0 && i % args.show_every == 0 {
            println!(
                "{:<16} {:<8} {:<18} {:>5}  {}",
                pod.name,
                decision,
                node_name,
                score,
                shorten(&policy.reason, 110)
            );
        } else if !text && (i + 1) % progress_every == 0 {
            eprintln!(
                "{}/{} pods, {} unplaced, {:.0} pods/s",
                i + 1,
                pods.len(),
                unplaced_pods.len(),
                (i + 1) as f64 / started_all.elapsed().as_secs_f64().max(1e-9)
            );
        }
    }
    let wall_s = started_all.elapsed().as_secs_f64();
    let gpu_alloc: u64 = nodes
        .iter()
        .flat_map(|n| n.gpus.iter())
        .map(|a| u64::from(*a))
        .sum();
    let (forecast, forecast_error) = match forecast(&args.forecaster).await {
        Ok(f) => (f, None),
        Err(e) => (None, Some(e)),
    };
    let unplaced_live_only = simulation.as_ref().map(|s| {
        unplaced_pods
            .iter()
            .filter(|p| !s.unplaced_pods.contains(p))
            .cloned()
            .collect()
    });
    let summary = Summary {
        pods: pods.len(),
        placed: pods.len() - unplaced_pods.len(),
        unplaced: unplaced_pods.len(),
        stale_preferences_skipped: stale,
        gpus: gpu_capacity / 1000,
        gpu_allocated_percent: 100.0 * gpu_alloc as f64 / gpu_capacity.max(1) as f64,
        decisions,
        latency_ms: Latency::of(latencies),
        unplaced_pods,
        wall_s,
        simulation,
        unplaced_live_only,
        forecast,
    };
    match args.output {
        Output::Json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&summary).context("cannot encode the summary")?
            );
        }
        Output::Text => print_text(&summary, forecast_error),
    }
    Ok(())
}

fn shorten(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let cut = (0..=max)
        .rev()
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(0);
    format!("{}…", &s[..cut])
}

fn print_text(s: &Summary, forecast_error: Option<String>) {
    println!();
    println!("pods replayed        {}", s.pods);
    println!(
        "placed / unplaced    {} / {}  (stale preferences skipped: {})",
        s.placed, s.unplaced, s.stale_preferences_skipped
    );
    println!(
        "decisions            {}",
        s.decisions
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "policy latency (ms)  p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}  (client side, incl. gRPC)",
        s.latency_ms.p50, s.latency_ms.p90, s.latency_ms.p99, s.latency_ms.max
    );
    println!(
        "GPU allocated        {:.2}% of {} GPUs",
        s.gpu_allocated_percent, s.gpus
    );
    if let Some(sim) = &s.simulation {
        println!(
            "simulation           {} / {} placed / unplaced, {:.2}% GPU allocated",
            sim.placed, sim.unplaced, sim.gpu_allocated_percent
        );
        if let Some(only) = &s.unplaced_live_only {
            println!(
                "unplaced live only   {} {}",
                only.len(),
                shorten(&only.join(" "), 200)
            );
        }
    }
    match (&s.forecast, forecast_error) {
        (Some(f), _) => println!(
            "forecast ({} min)    {} nodes; cluster cpu {:.1}% mem {:.1}% gpu {:.1}% used  model {}",
            f.horizon_minutes, f.nodes, f.cpu_percent, f.memory_percent, f.gpu_percent, f.model
        ),
        (None, Some(err)) => println!("forecast             unavailable: {err}"),
        (None, None) => println!("forecast             no node has enough history yet"),
    }
}

/// What the forecaster says about the cluster now (`Ok(None)`: nothing yet).
async fn forecast(url: &str) -> Result<Option<ForecastSummary>, String> {
    const HORIZON: i32 = 15;
    let ch = channel(url).await.map_err(|e| format!("{e:#}"))?;
    let p = ForecastServiceClient::new(ch)
        .get_cluster_prediction(ClusterPredictionRequest {
            horizon_minutes: HORIZON,
            confidence_level: 0.95,
            node_filters: Vec::new(),
        })
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner();
    if p.node_predictions.is_empty() {
        return Ok(None);
    }
    let agg = p.aggregated_prediction.unwrap_or_default();
    let last = agg.predicted_usage.last().cloned().unwrap_or_default();
    Ok(Some(ForecastSummary {
        nodes: p.node_predictions.len(),
        horizon_minutes: HORIZON,
        cpu_percent: last.cpu_usage,
        memory_percent: last.memory_usage,
        gpu_percent: last.gpu_usage,
        model: agg.model_type,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(gpus: u32, model: &str) -> Node {
        Node::new(TraceNode {
            name: "n".into(),
            cpu_milli: 8000,
            memory_mib: 8192,
            gpus,
            model: model.into(),
        })
    }

    fn pod(name: &str, cpu: u64, num_gpu: u32, gpu_milli: u32) -> TracePod {
        TracePod {
            name: name.into(),
            cpu_milli: cpu,
            memory_mib: 1024,
            num_gpu,
            gpu_milli,
            gpu_spec: Vec::new(),
        }
    }

    #[test]
    fn insights_carry_requests_and_the_pods_bound() {
        let pods = vec![pod("a", 1000, 1, 300), pod("b", 2000, 1, 600)];
        let mut n = node(2, "T4");
        assert!(n.bind(0, &pods[0]));
        assert!(n.bind(1, &pods[1]));
        assert!(n.insight(&pods, None).running_workloads.is_empty());
        let i = n.insight(&pods, Some("openb"));
        let r = i.node_resources.unwrap();
        assert_eq!(r.cpu_requested_cores, 3.0);
        assert_eq!(r.memory_requested_bytes, 2048 << 20);
        // The fuller GPU first: both shares on one GPU.
        let mut milli: Vec<i32> = i.gpu_devices.iter().map(|g| g.allocated_milli).collect();
        milli.sort_unstable();
        assert_eq!(milli, vec![0, 900]);
        let listed: Vec<(&str, &str)> = i
            .running_workloads
            .iter()
            .map(|w| (w.pod_namespace.as_str(), w.pod_name.as_str()))
            .collect();
        assert_eq!(listed, vec![("openb", "a"), ("openb", "b")]);
    }

    #[test]
    fn binds_refuse_what_does_not_fit() {
        let pods = [pod("big", 9000, 0, 0), pod("two", 100, 2, 1000)];
        let mut n = node(1, "T4");
        assert!(!n.bind(0, &pods[0]), "CPU over capacity");
        assert!(!n.bind(1, &pods[1]), "two whole GPUs on a one-GPU node");
        let mut v100 = pod("v100", 100, 1, 1000);
        v100.gpu_spec = vec!["V100M16".into()];
        assert!(!n.bind(2, &v100), "model not allowed");
        assert!(n.pods.is_empty());
        assert_eq!(n.cpu_alloc, 0);
    }

    #[test]
    fn latency_percentiles_come_from_the_samples() {
        let l = Latency::of((1..=100).rev().map(f64::from).collect());
        assert_eq!((l.p50, l.p90, l.p99, l.max), (51.0, 90.0, 99.0, 100.0));
    }
}
