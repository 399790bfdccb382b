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
//! Traces: `--trace-dir` (or `APOLLO_TRACE_DIR`) names a directory of openb
//! CSVs; without it the excerpt built into apolloctl is used (see
//! [`crate::traces`]), wherever apolloctl runs from.
//!
//! Usage (`--genai`, on by default with the built-in GenAI excerpt): each
//! placed pod follows the series of one GenAI container (see [`UsageModel`]),
//! and every `--tick` the nodes running pods report their measured use
//! (`cpu_used_cores`, `memory_used_bytes`, per-GPU `utilization_percent` and
//! `memory_used_bytes`), so the forecaster has real usage to forecast.
//!
//! Time: `collected_at` is always the wall clock at sending (ingest rejects
//! timestamps ahead of its clock, and the forecaster drops samples older than
//! its window, so trace timestamps cannot be sent). Trace time only picks
//! the sample: it is the wall time since the replay started x `--speed`.
//! The forecaster resamples on `collected_at` onto its `APOLLO_FORECAST_STEP`
//! grid; until a node has `APOLLO_FORECAST_MIN_HISTORY` steps (30 x 60 s by
//! default: half an hour) it forecasts the last value, after that with its
//! models. For model forecasts within a few minutes run the forecaster with
//! a step equal to `--tick` (e.g. `APOLLO_FORECAST_STEP=1s`). After the last
//! pod the replay keeps reporting until the forecaster forecasts some use,
//! at most `--forecast-wait`.
//!
//! Exit status: 2 for bad arguments, 1 for failures (an unreachable or
//! refusing service), each with one line on stderr.
//!
//! `--compare-simulation` first runs the same pods in the same order through
//! the simulation's engine (`apollo_scheduling::simulate::ApolloSim`, what
//! `apolloctl simulate --policy apollo` uses) and reports both side by side.

use std::{
    collections::{BTreeMap, HashMap},
    io::IsTerminal as _,
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context as _};
use apollo_forecaster::eval::{Dataset, GENAI_FILES};
use apollo_proto::{
    forecast_service_client::ForecastServiceClient, insight_service_client::InsightServiceClient,
    scheduling_policy_service_client::SchedulingPolicyServiceClient, ClusterInsight,
    ClusterPredictionRequest, GpuStatus, NodeResources, SchedulingDecision, SchedulingPolicy,
    SchedulingPolicyRequest, SchedulingResult, Timestamp, WorkloadSignature, WorkloadSummary,
};
use apollo_scheduling::simulate::{self, ApolloSim, ShapeSource, TraceNode, TracePod};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tonic::transport::Channel;

use crate::inspect::decision_name;

use crate::traces;

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
    /// Directory of the Alibaba GPU cluster trace 2023 (openb CSVs); default:
    /// the excerpt built into apolloctl (the repository's `data/alibaba-gpu-2023`).
    #[arg(long, env = "APOLLO_TRACE_DIR")]
    trace_dir: Option<PathBuf>,
    /// Pod list inside `--trace-dir` (the built-in excerpt has only the default list).
    #[arg(long, default_value = DEFAULT_POD_LIST)]
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
    /// Where node and pod usage comes from: a directory of the Alibaba GenAI
    /// 2026 series, `builtin` (the excerpt built into apolloctl) or `off`
    /// (insights carry requests only, no measured usage).
    #[arg(long, env = "APOLLO_REPLAY_GENAI", default_value = "builtin")]
    genai: String,
    /// Trace seconds replayed per wall second: with the default 60 and one
    /// GenAI sample per 60 trace seconds, usage moves one sample per second.
    #[arg(long, env = "APOLLO_REPLAY_SPEED", default_value_t = 60.0, value_parser = positive)]
    speed: f64,
    /// How often every node reports its usage (with usage on; match the
    /// forecaster's `APOLLO_FORECAST_STEP` so each report fills one step).
    #[arg(long, env = "APOLLO_REPLAY_TICK", default_value = "1s", value_parser = positive_duration)]
    tick: Duration,
    /// Seed of the pod -> GenAI container mapping.
    #[arg(long, env = "APOLLO_REPLAY_SEED", default_value_t = 42)]
    seed: u64,
    /// With usage on: after the pods, keep reporting usage until the
    /// forecaster forecasts some, at most this long (0s: do not wait).
    #[arg(long, env = "APOLLO_REPLAY_FORECAST_WAIT", default_value = "2m", value_parser = apollo_common::config::parse_duration)]
    forecast_wait: Duration,
    /// Instead of the pod list: ask for this many copies of the list's first
    /// whole-GPU pod back to back, before any result or insight, bind each
    /// on its top node and report how they spread.
    #[arg(long, env = "APOLLO_REPLAY_BURST", default_value_t = 0)]
    burst: usize,
    /// Output format.
    #[arg(
        short = 'o',
        long,
        value_enum,
        default_value = "text",
        env = "APOLLO_REPLAY_OUTPUT"
    )]
    output: Output,
    /// Set by `apolloctl demo`: return the summary instead of printing it.
    #[arg(skip)]
    pub(crate) quiet: bool,
}

/// Name of the default pod list.
const DEFAULT_POD_LIST: &str = "openb_pod_list_default.csv";
/// Name of the node list.
const NODE_LIST: &str = "openb_node_list_gpu_node.csv";

fn positive(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a positive number")),
    }
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    match apollo_common::config::parse_duration(s) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("must be longer than 0s".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Where the replay reads its traces from.
#[derive(Debug, Clone, PartialEq)]
enum Source {
    BuiltIn,
    Dir(PathBuf),
}

impl Args {
    /// Checks what clap cannot: endpoints are URLs, directories and their
    /// files exist.
    fn validate(&self) -> Result<(), String> {
        for (flag, url) in [
            ("--ingest", &self.ingest),
            ("--scheduling", &self.scheduling),
            ("--forecaster", &self.forecaster),
        ] {
            let ok = url.parse::<tonic::transport::Uri>().is_ok_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
            });
            if !ok {
                return Err(format!("{flag} {url}: not an http:// or https:// URL"));
            }
        }
        match &self.trace_dir {
            Some(dir) => {
                for f in [NODE_LIST, self.pod_list.as_str()] {
                    if !dir.join(f).is_file() {
                        return Err(format!("--trace-dir {}: no {f} there", dir.display()));
                    }
                }
            }
            None if self.pod_list != DEFAULT_POD_LIST => {
                return Err(format!(
                "--pod-list {}: the built-in excerpt has only {DEFAULT_POD_LIST}; give --trace-dir",
                self.pod_list
            ))
            }
            None => {}
        }
        if let Some(Source::Dir(dir)) = self.genai_source() {
            for f in GENAI_FILES {
                if !dir.join(f).is_file() {
                    return Err(format!("--genai {}: no {f} there", dir.display()));
                }
            }
        }
        Ok(())
    }

    /// `None`: usage off.
    fn genai_source(&self) -> Option<Source> {
        match self.genai.trim() {
            "off" => None,
            "builtin" | "" => Some(Source::BuiltIn),
            dir => Some(Source::Dir(PathBuf::from(dir))),
        }
    }
}

/// A node of the replayed cluster as its agent sees it.
#[derive(Debug, Clone)]
struct Node {
    trace: TraceNode,
    cpu_alloc: u64,
    mem_alloc_mib: u64,
    gpus: Vec<u32>,
    /// Pods bound here: index and the (GPU, milli-GPU) shares they hold.
    pods: Vec<(usize, Vec<(usize, u32)>)>,
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
        let mut shares = Vec::new();
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
            shares.push((i, pod.gpu_milli));
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
                shares.push((i, 1000));
            }
        }
        self.cpu_alloc += pod.cpu_milli;
        self.mem_alloc_mib += pod.memory_mib;
        self.pods.push((idx, shares));
        true
    }

    /// The insight a node agent reports now: capacity, requests of the pods
    /// bound here, with `usage` their measured use at trace time `trace_s`,
    /// and, given their namespace, those pods.
    fn insight(
        &self,
        pods: &[TracePod],
        namespace: Option<&str>,
        usage: Option<(&UsageModel, f64)>,
    ) -> ClusterInsight {
        const MIB: i64 = 1 << 20;
        let t = &self.trace;
        let gpu_used = self.gpus.iter().filter(|a| **a > 0).count() as i32;
        let gpu_memory = gpu_memory_bytes(&t.model);
        let mut cpu_used = 0.0;
        let mut mem_used = 0.0;
        let mut gpu_util = vec![0.0; self.gpus.len()];
        let mut gpu_mem = vec![0.0; self.gpus.len()];
        if let Some((model, trace_s)) = usage {
            for (p, shares) in &self.pods {
                let pod = &pods[*p];
                let u = model.at(&pod.name, trace_s);
                cpu_used += pod.cpu_milli as f64 / 1000.0 * u.cpu;
                mem_used += (pod.memory_mib << 20) as f64 * u.memory;
                for &(g, milli) in shares {
                    let share = f64::from(milli) / 1000.0;
                    gpu_util[g] += share * u.gpu_percent;
                    gpu_mem[g] += share * u.gpu_memory * gpu_memory as f64;
                }
            }
        }
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
                cpu_used_cores: cpu_used.min(t.cpu_milli as f64 / 1000.0),
                memory_used_bytes: (mem_used as i64).min(t.memory_mib as i64 * MIB),
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
                    utilization_percent: gpu_util[i].min(100.0),
                    memory_used_bytes: (gpu_mem[i] as i64).min(gpu_memory),
                    memory_total_bytes: if usage.is_some() { gpu_memory } else { 0 },
                    ..Default::default()
                })
                .collect(),
            running_workloads: match namespace {
                Some(ns) => self
                    .pods
                    .iter()
                    .map(|(p, _)| WorkloadSummary {
                        pod_name: pods[*p].name.clone(),
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

/// GPU memory of an openb GPU model (vendor figures; `G2`/`G3` are
/// anonymised in the trace and taken as 16 GiB).
fn gpu_memory_bytes(model: &str) -> i64 {
    const GIB: i64 = 1 << 30;
    match model {
        "V100M32" => 32 * GIB,
        "A10" => 24 * GIB,
        "P100" => 12 * GIB,
        _ => 16 * GIB,
    }
}

/// Use of one pod at a trace time, as fractions of its requests (GPU
/// utilisation in percent of the GPUs it holds).
#[derive(Debug, Clone, Copy, PartialEq)]
struct PodUsage {
    cpu: f64,
    memory: f64,
    gpu_percent: f64,
    gpu_memory: f64,
}

/// One GenAI container's series, aligned sample by sample.
#[derive(Debug, Clone)]
struct Container {
    /// GPU duty cycle, percent.
    gpu_percent: Vec<f64>,
    /// GPU memory in use over the container's peak, 0-1.
    gpu_memory: Vec<f64>,
    /// Container memory utilisation, 0-1.
    memory: Vec<f64>,
}

/// Pod usage driven by the GenAI serving trace.
///
/// Mapping: each pod is tied to one container and a starting sample, both
/// taken from a 64-bit FNV-1a hash of `--seed` and the pod name (the same pod
/// gets the same series in every run with the same seed), and then follows
/// that container's series one sample per [`SAMPLE_SECONDS`] of trace time
/// (wrapping around at the end). Scaled to the pod's requests: memory use is
/// the container's memory utilisation x the pod's memory request; GPU
/// utilisation is its duty cycle on each GPU share it holds (weighted by the
/// share); GPU memory is its GPU memory over its peak x the share x the GPU's
/// memory; CPU, which the trace does not measure, follows the GPU duty cycle
/// (a serving process is busy while its GPU is) x the CPU request.
#[derive(Debug, Clone)]
struct UsageModel {
    containers: Vec<Container>,
    seed: u64,
}

/// Trace seconds between two GenAI samples (the trace samples about every 57 s).
const SAMPLE_SECONDS: f64 = 60.0;

impl UsageModel {
    fn from_dataset(d: &Dataset) -> anyhow::Result<Self> {
        let mut by_key: BTreeMap<&str, [Option<&Vec<f64>>; 3]> = BTreeMap::new();
        for s in &d.series {
            let Some((stem, key)) = s.id.split_once('/') else {
                continue;
            };
            let slot = match stem {
                "pod_gpu_duty_cycle_anon" => 0,
                "pod_gpu_memory_used_bytes_anon" => 1,
                "pod_memory_util_anon" => 2,
                _ => continue,
            };
            by_key.entry(key).or_default()[slot] = Some(&s.values);
        }
        let containers: Vec<Container> = by_key
            .into_values()
            .filter_map(|[duty, gmem, mem]| {
                let (duty, gmem, mem) = (duty?, gmem?, mem?);
                let n = duty.len().min(gmem.len()).min(mem.len());
                if n == 0 {
                    return None;
                }
                let peak = gmem[..n].iter().copied().fold(0.0, f64::max);
                Some(Container {
                    gpu_percent: duty[..n].iter().map(|v| v.clamp(0.0, 100.0)).collect(),
                    gpu_memory: gmem[..n]
                        .iter()
                        .map(|v| {
                            if peak > 0.0 {
                                (v / peak).clamp(0.0, 1.0)
                            } else {
                                0.0
                            }
                        })
                        .collect(),
                    memory: mem[..n].iter().map(|v| v.clamp(0.0, 1.0)).collect(),
                })
            })
            .collect();
        if containers.is_empty() {
            bail!("the GenAI series hold no container with all three series");
        }
        Ok(Self {
            containers,
            seed: 0,
        })
    }

    fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    fn at(&self, pod: &str, trace_s: f64) -> PodUsage {
        let h = fnv1a(self.seed, pod);
        let c = &self.containers[(h % self.containers.len() as u64) as usize];
        let len = c.memory.len();
        let start = ((h >> 32) % len as u64) as usize;
        let step = (trace_s.max(0.0) / SAMPLE_SECONDS) as usize;
        let i = (start + step) % len;
        PodUsage {
            cpu: c.gpu_percent[i] / 100.0,
            memory: c.memory[i],
            gpu_percent: c.gpu_percent[i],
            gpu_memory: c.gpu_memory[i],
        }
    }
}

fn fnv1a(seed: u64, s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.to_le_bytes().iter().chain(s.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
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

/// gRPC channel with replay's 5 s connect and call deadlines.
async fn channel(url: &str) -> anyhow::Result<Channel> {
    crate::client::channel(url, Duration::from_secs(5)).await
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

/// Runs the replay. Exits 2 on arguments clap cannot check, 1 on failures,
/// each with one line on stderr.
pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    args.validate().map_err(crate::client::UsageError)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?
        .block_on(replay(args))
        .map(|_| ())
}

/// Nodes, pods (cut to `--pods`) and a name for the pod list.
fn load(args: &Args) -> anyhow::Result<(Vec<TraceNode>, Vec<TracePod>, String)> {
    let (nodes, mut pods, name) = match &args.trace_dir {
        Some(dir) => {
            let pod_path = dir.join(&args.pod_list);
            (
                simulate::load_nodes(&dir.join(NODE_LIST))?,
                simulate::load_pods(&pod_path)?,
                pod_path.display().to_string(),
            )
        }
        None => (
            traces::openb_nodes()?,
            traces::openb_pods()?,
            format!("{}/{DEFAULT_POD_LIST}", traces::EMBEDDED),
        ),
    };
    if args.pods > 0 {
        pods.truncate(args.pods);
    }
    Ok((nodes, pods, name))
}

/// The usage model of `--genai` (`None`: off).
fn usage_model(args: &Args) -> anyhow::Result<Option<UsageModel>> {
    let dataset = match args.genai_source() {
        None => return Ok(None),
        Some(Source::BuiltIn) => traces::genai(1)?,
        Some(Source::Dir(dir)) => apollo_forecaster::eval::load_genai(&dir, 1)?,
    };
    Ok(Some(
        UsageModel::from_dataset(&dataset)?.with_seed(args.seed),
    ))
}

/// The node agents' side of the replay: what they know and how they report.
struct Agents<'a> {
    nodes: Vec<Node>,
    pods: &'a [TracePod],
    /// Namespace listed in `running_workloads` (`None`: no pod list).
    listed: Option<&'a str>,
    usage: Option<UsageModel>,
    speed: f64,
    started: Instant,
    /// Period of full reports (`--report-every`).
    every: Duration,
    /// Period of usage reports (`--tick`).
    tick: Duration,
    last_full: Instant,
    last_tick: Instant,
}

impl Agents<'_> {
    /// Trace time now: wall time since the start x `--speed`.
    fn trace_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64() * self.speed
    }

    fn insight(&self, idx: usize) -> ClusterInsight {
        let usage = self.usage.as_ref().map(|u| (u, self.trace_s()));
        self.nodes[idx].insight(self.pods, self.listed, usage)
    }

    /// Node insights streamed to ingest: every node's when `full`, else
    /// only those of nodes running pods (the others' usage has not changed).
    /// Returns how many ingest stored.
    async fn report(
        &mut self,
        ingest: &mut InsightServiceClient<Channel>,
        full: bool,
    ) -> anyhow::Result<i64> {
        let insights: Vec<ClusterInsight> = (0..self.nodes.len())
            .filter(|&i| full || !self.nodes[i].pods.is_empty())
            .map(|i| self.insight(i))
            .collect();
        let now = Instant::now();
        self.last_tick = now;
        if full {
            self.last_full = now;
        }
        if insights.is_empty() {
            return Ok(0);
        }
        let resp = ingest
            .stream_cluster_insights(tokio_stream::iter(insights))
            .await
            .context("streaming cluster insights to ingest failed")?
            .into_inner();
        Ok(resp.messages_processed)
    }

    /// Reports what is due: every node each `--report-every`, the nodes
    /// running pods each `--tick` when usage is on.
    async fn report_due(
        &mut self,
        ingest: &mut InsightServiceClient<Channel>,
    ) -> anyhow::Result<()> {
        if self.last_full.elapsed() >= self.every {
            self.report(ingest, true).await?;
        } else if self.usage.is_some() && self.last_tick.elapsed() >= self.tick {
            self.report(ingest, false).await?;
        }
        Ok(())
    }
}

/// Progress on stderr: a bar with rate and ETA on a terminal, else a line
/// every 5 %.
struct Progress {
    bar: Option<ProgressBar>,
    total: usize,
    every: usize,
    started: Instant,
}

impl Progress {
    fn new(total: usize) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} pods  {per_sec}  ETA {eta}  {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        Self {
            bar,
            total,
            every: (total / 20).max(1),
            started: Instant::now(),
        }
    }

    fn done(&self, n: usize, unplaced: usize) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(n as u64);
                if unplaced > 0 {
                    bar.set_message(format!("{unplaced} unplaced"));
                }
            }
            None if n.is_multiple_of(self.every) || n == self.total => eprintln!(
                "{n}/{} pods, {unplaced} unplaced, {:.0} pods/s",
                self.total,
                n as f64 / self.started.elapsed().as_secs_f64().max(1e-9)
            ),
            None => {}
        }
    }

    /// Prints a line on stdout without tearing the bar.
    fn println(&self, line: String) {
        match &self.bar {
            Some(bar) => bar.suspend(|| println!("{line}")),
            None => println!("{line}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Replays and returns the summary as JSON (printed too unless `quiet`).
pub(crate) async fn replay(args: Args) -> anyhow::Result<serde_json::Value> {
    let (trace, mut pods, pod_list) = load(&args)?;
    if args.burst > 0 {
        pods = burst_pods(&pods, args.burst)?;
    }
    let usage = usage_model(&args)?;
    let text = args.output == Output::Text;
    let gpu_capacity: u64 = trace.iter().map(|n| u64::from(n.gpus) * 1000).sum();
    eprintln!(
        "trace: {} nodes ({} GPUs), {} pods from {pod_list}",
        trace.len(),
        gpu_capacity / 1000,
        pods.len(),
    );
    if let Some(u) = &usage {
        eprintln!(
            "usage: {} GenAI containers, {} trace s per wall s, reported every {:?}",
            u.containers.len(),
            args.speed,
            args.tick
        );
    }
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
    let index: HashMap<String, usize> = trace
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.clone(), i))
        .collect();
    let mut agents = Agents {
        nodes: trace.iter().cloned().map(Node::new).collect(),
        pods: &pods,
        listed: args.list_pods.then_some(args.namespace.as_str()),
        usage,
        speed: args.speed,
        started: Instant::now(),
        every: args.report_every,
        tick: args.tick,
        last_full: Instant::now(),
        last_tick: Instant::now(),
    };

    let mut ingest = InsightServiceClient::new(channel(&args.ingest).await?);
    let mut scheduling = SchedulingPolicyServiceClient::new(channel(&args.scheduling).await?);

    // 1. The cluster, as node agents report it.
    let stored = agents.report(&mut ingest, true).await?;
    eprintln!(
        "ingest: {stored} of {} cluster insights stored",
        trace.len()
    );
    if stored == 0 {
        bail!("ingest stored no cluster insight");
    }

    // 2. Wait until the engine's view holds the cluster.
    wait_for_cluster(&mut scheduling, &args).await?;
    if args.burst > 0 {
        let b = burst(&mut agents, &index, &mut scheduling, &mut ingest, &args).await?;
        let value = serde_json::to_value(&b).context("cannot encode the summary")?;
        match args.output {
            _ if args.quiet => {}
            Output::Json => println!(
                "{}",
                serde_json::to_string_pretty(&b).context("cannot encode the summary")?
            ),
            Output::Text => println!(
                "burst of {} x {}: top nodes {} distinct, at most {} per node, {} did not fit their top node",
                b.pods, b.shape, b.distinct_top_nodes, b.max_per_node, b.overcommitted
            ),
        }
        return Ok(value);
    }
    eprintln!("scheduling engine sees the cluster; replaying pods");
    if text {
        println!(
            "\n{:<16} {:<8} {:<18} {:>5}  reason",
            "pod", "decision", "node", "score"
        );
    }

    // 3. The pods, in submission order.
    let started_all = Instant::now();
    let progress = Progress::new(pods.len());
    let mut latencies = Vec::with_capacity(pods.len());
    let mut decisions: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut unplaced_pods = Vec::new();
    let mut stale = 0usize;
    for (i, pod) in pods.iter().enumerate() {
        agents.report_due(&mut ingest).await?;
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
                    if agents.nodes[idx].bind(i, pod) {
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
                    .report_cluster_insight(agents.insight(idx))
                    .await
                    .context("ingest rejected a node update")?;
                (trace[idx].name.clone(), score)
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
            progress.println(format!(
                "{:<16} {:<8} {:<18} {:>5}  {}",
                pod.name,
                decision,
                node_name,
                score,
                shorten(&policy.reason, 110)
            ));
        }
        progress.done(i + 1, unplaced_pods.len());
    }
    progress.finish();
    let wall_s = started_all.elapsed().as_secs_f64();
    let gpu_alloc: u64 = agents
        .nodes
        .iter()
        .flat_map(|n| n.gpus.iter())
        .map(|a| u64::from(*a))
        .sum();

    // 4. What the forecaster makes of the usage reported.
    let (forecast, forecast_error) = settle_forecast(&mut agents, &mut ingest, &args).await?;
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
        _ if args.quiet => {}
        Output::Json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&summary).context("cannot encode the summary")?
            );
        }
        Output::Text => print_text(&summary, forecast_error),
    }
    serde_json::to_value(&summary).context("cannot encode the summary")
}

/// What `--burst` measured.
#[derive(Debug, Serialize)]
struct BurstSummary {
    pods: usize,
    shape: String,
    /// Policies that named a node.
    placed: usize,
    distinct_top_nodes: usize,
    max_per_node: usize,
    /// Pods whose top node had no room left when bound in asking order.
    overcommitted: usize,
    latency_ms: Latency,
}

/// `n` copies of the list's first whole-GPU pod without a model constraint
/// (a training worker), named `<pod>-<i>`.
fn burst_pods(pods: &[TracePod], n: usize) -> anyhow::Result<Vec<TracePod>> {
    let Some(template) = pods
        .iter()
        .find(|p| p.num_gpu >= 1 && p.gpu_milli == 1000 && p.gpu_spec.is_empty())
    else {
        bail!("the pod list has no whole-GPU pod without a model constraint to copy");
    };
    Ok((0..n)
        .map(|i| TracePod {
            name: format!("{}-{i}", template.name),
            ..template.clone()
        })
        .collect())
}

/// Asks for every pod (the burst's copies) with no result or insight in between,
/// then binds them in asking order on their top nodes and reports back.
async fn burst(
    agents: &mut Agents<'_>,
    index: &HashMap<String, usize>,
    scheduling: &mut SchedulingPolicyServiceClient<Channel>,
    ingest: &mut InsightServiceClient<Channel>,
    args: &Args,
) -> anyhow::Result<BurstSummary> {
    let template = &agents.pods[0];
    let shape = format!(
        "{} ({} GPU, {}m CPU, {} MiB)",
        template.name.trim_end_matches("-0"),
        template.num_gpu,
        template.cpu_milli,
        template.memory_mib
    );
    let mut asked = Vec::with_capacity(args.burst);
    let mut latencies = Vec::with_capacity(args.burst);
    for pod in agents.pods {
        let pod = pod.clone();
        let started = Instant::now();
        let policy = scheduling
            .get_scheduling_policy(request(&pod, &args.namespace))
            .await
            .with_context(|| format!("no policy for {}", pod.name))?
            .into_inner();
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        asked.push((pod, policy));
    }
    let mut per_node: HashMap<String, usize> = HashMap::new();
    let (mut placed, mut overcommitted) = (0, 0);
    for (i, (pod, policy)) in asked.iter().enumerate() {
        let top = places(policy)
            .then(|| policy.node_preferences[0].node_name.clone())
            .and_then(|n| index.get(&n).map(|&i| (n, i)));
        let bound = match top {
            Some((name, idx)) => {
                placed += 1;
                *per_node.entry(name).or_default() += 1;
                let ok = agents.nodes[idx].bind(i, pod);
                if ok {
                    ingest
                        .report_cluster_insight(agents.insight(idx))
                        .await
                        .context("ingest rejected a node update")?;
                } else {
                    overcommitted += 1;
                }
                ok.then(|| agents.nodes[idx].trace.name.clone())
            }
            None => None,
        };
        scheduling
            .report_scheduling_result(SchedulingResult {
                request_id: policy.request_id.clone(),
                pod_name: pod.name.clone(),
                pod_namespace: args.namespace.clone(),
                success: bound.is_some(),
                scheduled_node: bound.unwrap_or_default(),
                ..Default::default()
            })
            .await
            .context("scheduling engine rejected the result report")?;
    }
    Ok(BurstSummary {
        pods: args.burst,
        shape,
        placed,
        distinct_top_nodes: per_node.len(),
        max_per_node: per_node.values().copied().max().unwrap_or(0),
        overcommitted,
        latency_ms: Latency::of(latencies),
    })
}

/// Asks a probe policy until the engine names a node (its view holds the
/// cluster), then drops the probe's assumption.
async fn wait_for_cluster(
    scheduling: &mut SchedulingPolicyServiceClient<Channel>,
    args: &Args,
) -> anyhow::Result<()> {
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
            return Ok(());
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
}

/// With usage on, keeps reporting every tick until the forecaster forecasts
/// some use (it needs `APOLLO_FORECAST_MIN_HISTORY` steps of history) or
/// `--forecast-wait` passes; then returns its cluster forecast.
async fn settle_forecast(
    agents: &mut Agents<'_>,
    ingest: &mut InsightServiceClient<Channel>,
    args: &Args,
) -> anyhow::Result<(Option<ForecastSummary>, Option<String>)> {
    let deadline = Instant::now() + args.forecast_wait;
    let mut announced = false;
    loop {
        let (f, err) = match forecast(&args.forecaster).await {
            Ok(f) => (f, None),
            Err(e) => (None, Some(e)),
        };
        let used = f
            .as_ref()
            .is_some_and(|f| f.cpu_percent > 0.0 || f.memory_percent > 0.0 || f.gpu_percent > 0.0);
        if agents.usage.is_none() || used || err.is_some() || Instant::now() >= deadline {
            return Ok((f, err));
        }
        if !announced {
            eprintln!(
                "reporting usage until the forecaster has enough history (at most {:?})",
                args.forecast_wait
            );
            announced = true;
        }
        let next = (agents.last_tick + agents.tick).min(agents.last_full + agents.every);
        tokio::time::sleep_until(next.into()).await;
        agents.report_due(ingest).await?;
    }
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
        assert!(n.insight(&pods, None, None).running_workloads.is_empty());
        let i = n.insight(&pods, Some("openb"), None);
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

    /// Two containers: `a` busy (duty 50 %, memory 0.5), `b` rising.
    fn dataset() -> Dataset {
        let series = |id: &str, values: Vec<f64>| apollo_forecaster::eval::Series {
            id: id.into(),
            family: id.split('/').next().unwrap_or_default().into(),
            values,
        };
        Dataset {
            name: "test".into(),
            season: None,
            series: vec![
                series("pod_gpu_duty_cycle_anon/a", vec![50.0; 4]),
                series("pod_gpu_memory_used_bytes_anon/a", vec![2.0, 4.0, 2.0, 4.0]),
                series("pod_memory_util_anon/a", vec![0.5; 4]),
                series("pod_gpu_duty_cycle_anon/b", vec![0.0, 10.0, 20.0, 30.0]),
                series("pod_gpu_memory_used_bytes_anon/b", vec![1.0; 4]),
                series("pod_memory_util_anon/b", vec![0.1, 0.2, 0.3, 0.4]),
                // Incomplete: left out.
                series("pod_memory_util_anon/c", vec![0.9; 4]),
            ],
        }
    }

    #[test]
    fn usage_follows_one_container_per_pod_one_sample_per_minute() {
        let m = UsageModel::from_dataset(&dataset()).unwrap().with_seed(7);
        assert_eq!(m.containers.len(), 2);
        let names: Vec<String> = (0..64).map(|i| format!("pod-{i}")).collect();
        // Seeded: the same every time, and pods spread over both containers.
        let first: Vec<PodUsage> = names.iter().map(|n| m.at(n, 0.0)).collect();
        assert_eq!(
            first,
            names.iter().map(|n| m.at(n, 0.0)).collect::<Vec<_>>()
        );
        let on_a = first.iter().filter(|u| u.gpu_percent == 50.0).count();
        assert!(on_a > 0 && on_a < names.len(), "{on_a} of 64 on a");
        // Within a sample nothing moves; a pod on `b` moves each 60 trace s.
        let b_pod = names
            .iter()
            .find(|n| m.at(n, 0.0).gpu_percent != 50.0)
            .unwrap();
        assert_eq!(m.at(b_pod, 0.0), m.at(b_pod, 59.0));
        let (u0, u1) = (m.at(b_pod, 0.0), m.at(b_pod, 60.0));
        assert!(
            (u1.gpu_percent - u0.gpu_percent == 10.0) || (u0.gpu_percent == 30.0),
            "{u0:?} -> {u1:?}"
        );
        assert_eq!(u0.cpu, u0.gpu_percent / 100.0);
        // GPU memory is over the container's peak.
        assert!(first.iter().all(|u| (0.0..=1.0).contains(&u.gpu_memory)));
    }

    #[test]
    fn insights_report_usage_scaled_to_the_requests() {
        let m = UsageModel::from_dataset(&dataset()).unwrap();
        let a_pod = (0..64)
            .map(|i| format!("p{i}"))
            .find(|n| m.at(n, 0.0).gpu_percent == 50.0)
            .unwrap();
        let pods = vec![TracePod {
            gpu_spec: Vec::new(),
            ..pod(&a_pod, 2000, 1, 500)
        }];
        let mut n = node(2, "V100M32");
        assert!(n.bind(0, &pods[0]));
        let i = n.insight(&pods, None, Some((&m, 0.0)));
        let r = i.node_resources.unwrap();
        assert_eq!(r.cpu_used_cores, 1.0, "2 cores x 50 % duty");
        assert_eq!(r.memory_used_bytes, 512 << 20, "1 GiB x 0.5");
        let g = i
            .gpu_devices
            .iter()
            .find(|g| g.allocated_milli == 500)
            .unwrap();
        assert_eq!(g.utilization_percent, 25.0, "half a GPU at 50 %");
        let u = m.at(&a_pod, 0.0);
        assert_eq!(
            g.memory_used_bytes,
            (0.5 * u.gpu_memory * (32i64 << 30) as f64) as i64
        );
        assert_eq!(g.memory_total_bytes, 32 << 30);
        // Without usage, nothing measured is reported.
        let r = n.insight(&pods, None, None).node_resources.unwrap();
        assert_eq!((r.cpu_used_cores, r.memory_used_bytes), (0.0, 0));
    }

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
        use clap::Parser as _;
        Cli::try_parse_from(std::iter::once("replay").chain(argv.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn bad_arguments_are_named() {
        use clap::error::ErrorKind;
        let e = parse(&["--speed", "0"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ValueValidation);
        assert_eq!(e.exit_code(), 2);
        assert!(parse(&["--tick", "0s"]).is_err());

        let a = parse(&["--trace-dir", "/nonexistent"]).unwrap();
        assert!(a.validate().unwrap_err().contains("/nonexistent"));
        let a = parse(&["--pod-list", "other.csv"]).unwrap();
        assert!(a.validate().unwrap_err().contains("--trace-dir"));
        let a = parse(&["--ingest", "localhost:50051"]).unwrap();
        assert!(a.validate().unwrap_err().contains("--ingest"));
        let a = parse(&["--genai", "/nonexistent"]).unwrap();
        assert!(a.validate().unwrap_err().contains("--genai"));
        let a = parse(&[]).unwrap();
        a.validate().unwrap();
        assert_eq!(a.genai_source(), Some(Source::BuiltIn));
        assert_eq!(parse(&["--genai", "off"]).unwrap().genai_source(), None);
    }

    #[test]
    fn latency_percentiles_come_from_the_samples() {
        let l = Latency::of((1..=100).rev().map(f64::from).collect());
        assert_eq!((l.p50, l.p90, l.p99, l.max), (51.0, 90.0, 99.0, 100.0));
    }
}
