//! GPU-allocation simulation on the openb trace (`apolloctl simulate`), following
//! the protocol of the FGD paper's simulator:
//!
//! - the cluster is the node list, empty at start;
//! - the workload is the pod list sorted by name and shuffled with the run's
//!   seed, followed by copies of pods drawn uniformly with replacement (same
//!   generator) until the requested GPU (`num_gpu` x `gpu_milli`) reaches
//!   `inflation` x the cluster's GPU capacity;
//! - pods arrive one by one and never leave; a pod that fits nowhere fails;
//! - the GPU allocation ratio (allocated / capacity, %) is recorded each time the
//!   arrived GPU request passes another 1 % of capacity.
//!
//! The `apollo` policy goes through the same code path as the gRPC handler
//! (see [`ApolloSim`]): each pod becomes a `SchedulingPolicyRequest` whose
//! annotations carry its resources, [`Engine::decide`] answers it and assumes
//! the pod on its top node, and the node's new state comes back as a
//! `ClusterInsight` through the [`ClusterView`] into [`ClusterState`], as a
//! node agent would report it after the bind. Typical pod shapes are learned
//! online from the placed GPU pods and refreshed by [`ClusterState::sweep`]
//! every [`SWEEP_EVERY`] arrivals, unless [`ShapeSource::Trace`] fixes them to
//! the whole pod list's. The `fgd` baseline uses the shapes of the whole pod
//! list, as the published simulator does.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use apollo_common::ClusterView;
use apollo_proto::{
    ClusterInsight, GpuStatus, NodeResources, SchedulingDecision, SchedulingPolicy,
    SchedulingPolicyRequest, WorkloadSummary,
};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use thiserror::Error;

use crate::baselines::{Baseline, TieOrder};
use crate::config::EngineConfig;
use crate::demand::{PodDemand, MILLI_PER_GPU};
use crate::engine::Engine;
use crate::fgd::{ShapeDistribution, DEFAULT_COVERAGE};
use crate::scorer::ScoreWeights;
use crate::snapshot::{ClusterSnapshot, NodeState, SnapshotError};
use crate::state::ClusterState;
use crate::workload::ANNOTATION_PREFIX;

/// Arrivals between two sweeps of the `apollo` policy's state (the service's
/// sweeper runs every few seconds; this refreshes the learned shapes as often).
pub const SWEEP_EVERY: u64 = 64;
/// Namespace of the simulated pods.
const SIM_NAMESPACE: &str = "sim";

/// Errors reading traces or running a simulation.
#[derive(Debug, Error)]
pub enum SimError {
    /// The file cannot be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Malformed CSV (quoting, ragged rows).
    #[error("{path}:{line}: malformed csv: {message}")]
    Csv {
        /// File.
        path: PathBuf,
        /// 1-based line.
        line: u64,
        /// Parser message.
        message: String,
    },
    /// A required column is missing from the header.
    #[error("{path}:1: missing column {column:?} (header has: {header})")]
    MissingColumn {
        /// File.
        path: PathBuf,
        /// Column name.
        column: &'static str,
        /// The header found.
        header: String,
    },
    /// A cell cannot be parsed or is out of range.
    #[error("{path}:{line}: column {column} ({name}): {message}: {value:?}")]
    BadValue {
        /// File.
        path: PathBuf,
        /// 1-based line.
        line: u64,
        /// 1-based column.
        column: usize,
        /// Column name.
        name: &'static str,
        /// The cell.
        value: String,
        /// What is wrong.
        message: String,
    },
    /// A trace with no rows.
    #[error("{path}: no rows")]
    Empty {
        /// File.
        path: PathBuf,
    },
    /// The node list has no GPU capacity, so ratios are undefined.
    #[error("the node list has no GPUs")]
    NoGpuCapacity,
    /// Building the snapshot failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// An unknown policy name.
    #[error("unknown policy {0:?} (expected apollo, random, bestfit, dotprod, gpupacking or fgd)")]
    UnknownPolicy(String),
    /// A `gpu_spec` share outside 0..=1.
    #[error("gpu_spec share must be between 0 and 1, got {0}")]
    GpuSpecShare(f64),
}

/// One node of the node list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceNode {
    /// Node name (`sn`).
    pub name: String,
    /// CPU in milli-cores.
    pub cpu_milli: u64,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// GPU count.
    pub gpus: u32,
    /// GPU model (empty without GPUs).
    pub model: String,
}

/// One pod of the pod list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracePod {
    /// Pod name.
    pub name: String,
    /// CPU in milli-cores.
    pub cpu_milli: u64,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// GPU count.
    pub num_gpu: u32,
    /// Share of each GPU in milli-GPU.
    pub gpu_milli: u32,
    /// Allowed GPU models (empty = any).
    pub gpu_spec: Vec<String>,
}

impl TracePod {
    /// The scorer's view of this pod.
    pub fn demand(&self) -> PodDemand {
        PodDemand::new(self.cpu_milli, PodDemand::bytes_from_mib(self.memory_mib))
            .with_gpu(self.num_gpu, self.gpu_milli)
            .with_gpu_models(self.gpu_spec.iter().cloned())
    }

    /// Requested GPU in milli-GPU.
    pub fn gpu_request(&self) -> u64 {
        u64::from(self.num_gpu) * u64::from(self.gpu_milli)
    }
}

struct Table {
    path: PathBuf,
    header: Vec<String>,
    rows: Vec<(u64, csv::StringRecord)>,
}

fn read_table<R: Read>(reader: R, path: &Path) -> Result<Table, SimError> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(reader);
    let header = rdr
        .headers()
        .map_err(|e| csv_error(path, &e))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    let mut rows = Vec::new();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| csv_error(path, &e))?;
        let line = rec.position().map_or(0, |p| p.line());
        rows.push((line, rec));
    }
    if rows.is_empty() {
        return Err(SimError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(Table {
        path: path.to_path_buf(),
        header,
        rows,
    })
}

fn csv_error(path: &Path, e: &csv::Error) -> SimError {
    if let csv::ErrorKind::Io(io) = e.kind() {
        return SimError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(io.kind(), io.to_string()),
        };
    }
    SimError::Csv {
        path: path.to_path_buf(),
        line: e.position().map_or(0, |p| p.line()),
        message: e.to_string(),
    }
}

impl Table {
    fn col(&self, name: &'static str) -> Result<usize, SimError> {
        self.header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| SimError::MissingColumn {
                path: self.path.clone(),
                column: name,
                header: self.header.join(","),
            })
    }

    fn opt_col(&self, name: &str) -> Option<usize> {
        self.header.iter().position(|h| h == name)
    }

    fn bad(
        &self,
        line: u64,
        col: usize,
        name: &'static str,
        value: &str,
        message: impl Into<String>,
    ) -> SimError {
        SimError::BadValue {
            path: self.path.clone(),
            line,
            column: col + 1,
            name,
            value: value.to_string(),
            message: message.into(),
        }
    }

    fn text<'a>(
        &self,
        rec: &'a csv::StringRecord,
        line: u64,
        col: usize,
        name: &'static str,
    ) -> Result<&'a str, SimError> {
        rec.get(col)
            .map(str::trim)
            .ok_or_else(|| self.bad(line, col, name, "", "missing cell"))
    }

    fn num<T>(
        &self,
        rec: &csv::StringRecord,
        line: u64,
        col: usize,
        name: &'static str,
        max: u64,
    ) -> Result<T, SimError>
    where
        T: TryFrom<u64>,
    {
        let v = self.text(rec, line, col, name)?;
        let n: u64 = v
            .parse()
            .map_err(|_| self.bad(line, col, name, v, "not a non-negative integer"))?;
        if n > max {
            return Err(self.bad(line, col, name, v, format!("above the maximum {max}")));
        }
        T::try_from(n).map_err(|_| self.bad(line, col, name, v, "out of range"))
    }
}

/// Parses a node list (`sn,cpu_milli,memory_mib,gpu,model`); `path` names the
/// source in errors.
pub fn parse_nodes<R: Read>(reader: R, path: &Path) -> Result<Vec<TraceNode>, SimError> {
    let t = read_table(reader, path)?;
    let (sn, cpu, mem, gpu, model) = (
        t.col("sn")?,
        t.col("cpu_milli")?,
        t.col("memory_mib")?,
        t.col("gpu")?,
        t.col("model")?,
    );
    let mut out = Vec::with_capacity(t.rows.len());
    for (line, rec) in &t.rows {
        let line = *line;
        let name = t.text(rec, line, sn, "sn")?;
        if name.is_empty() {
            return Err(t.bad(line, sn, "sn", name, "empty node name"));
        }
        let gpus: u32 = t.num(rec, line, gpu, "gpu", 64)?;
        let m = t.text(rec, line, model, "model")?;
        if gpus > 0 && m.is_empty() {
            return Err(t.bad(line, model, "model", m, "GPU node without a GPU model"));
        }
        out.push(TraceNode {
            name: name.to_string(),
            cpu_milli: t.num(rec, line, cpu, "cpu_milli", 1 << 40)?,
            memory_mib: t.num(rec, line, mem, "memory_mib", 1 << 40)?,
            gpus,
            model: m.to_string(),
        });
    }
    Ok(out)
}

/// Parses a pod list (`name,cpu_milli,memory_mib,num_gpu,gpu_milli[,gpu_spec,...]`).
pub fn parse_pods<R: Read>(reader: R, path: &Path) -> Result<Vec<TracePod>, SimError> {
    let t = read_table(reader, path)?;
    let (name, cpu, mem, ngpu, milli) = (
        t.col("name")?,
        t.col("cpu_milli")?,
        t.col("memory_mib")?,
        t.col("num_gpu")?,
        t.col("gpu_milli")?,
    );
    let spec = t.opt_col("gpu_spec");
    let mut out = Vec::with_capacity(t.rows.len());
    for (line, rec) in &t.rows {
        let line = *line;
        let n = t.text(rec, line, name, "name")?;
        if n.is_empty() {
            return Err(t.bad(line, name, "name", n, "empty pod name"));
        }
        let num_gpu: u32 = t.num(rec, line, ngpu, "num_gpu", 64)?;
        let gpu_milli: u32 = t.num(rec, line, milli, "gpu_milli", u64::from(MILLI_PER_GPU))?;
        let pod = TracePod {
            name: n.to_string(),
            cpu_milli: t.num(rec, line, cpu, "cpu_milli", 1 << 40)?,
            memory_mib: t.num(rec, line, mem, "memory_mib", 1 << 40)?,
            num_gpu,
            gpu_milli,
            gpu_spec: match spec {
                Some(c) => t
                    .text(rec, line, c, "gpu_spec")?
                    .split('|')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect(),
                None => Vec::new(),
            },
        };
        if let Err(e) = pod.demand().validate() {
            let col = if num_gpu == 0 { ngpu } else { milli };
            let field = if num_gpu == 0 { "num_gpu" } else { "gpu_milli" };
            return Err(t.bad(line, col, field, rec.get(col).unwrap_or(""), e.to_string()));
        }
        out.push(pod);
    }
    Ok(out)
}

fn open(path: &Path) -> Result<std::fs::File, SimError> {
    std::fs::File::open(path).map_err(|source| SimError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a node list file.
pub fn load_nodes(path: &Path) -> Result<Vec<TraceNode>, SimError> {
    parse_nodes(open(path)?, path)
}

/// Reads a pod list file.
pub fn load_pods(path: &Path) -> Result<Vec<TracePod>, SimError> {
    parse_pods(open(path)?, path)
}

/// A placement policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    /// APOLLO's scorer (top node of [`NodeScorer::rank`]).
    Apollo,
    /// A published baseline.
    Baseline(Baseline),
}

impl Policy {
    /// Every policy, APOLLO first.
    pub const ALL: [Policy; 6] = [
        Policy::Apollo,
        Policy::Baseline(Baseline::Random),
        Policy::Baseline(Baseline::DotProd),
        Policy::Baseline(Baseline::GpuPacking),
        Policy::Baseline(Baseline::BestFit),
        Policy::Baseline(Baseline::Fgd),
    ];

    /// Command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Apollo => "apollo",
            Self::Baseline(b) => b.name(),
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Policy {
    type Err = SimError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim().to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or(SimError::UnknownPolicy(s))
    }
}

/// Where the `apollo` policy gets its typical pod shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShapeSource {
    /// Learned from the pods that arrived so far (what production does).
    #[default]
    Online,
    /// From the whole pod list up front (what the published FGD does).
    Trace,
    /// Learned online as with [`ShapeSource::Online`], starting from the
    /// counts of the whole pod list as a prior (the information the
    /// published FGD has; in production, the shapes observed before).
    Prior,
}

/// Parameters of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Policy.
    pub policy: Policy,
    /// Seed of the workload order, the copies and random tie-breaks.
    pub seed: u64,
    /// Requested GPU of the workload relative to capacity (1.3 in the paper).
    pub inflation: f64,
    /// Shape source of the `apollo` policy.
    pub shapes: ShapeSource,
    /// Scorer weights of the `apollo` policy (the service's defaults unless
    /// a tuning run changes them).
    pub weights: ScoreWeights,
}

/// Result of one run. Ratios are percentages.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimRun {
    /// Policy name.
    pub policy: String,
    /// Seed.
    pub seed: u64,
    /// GPU allocation ratio when the arrived request reached 100 % of capacity.
    pub gpu_alloc_ratio_at_100: f64,
    /// GPU allocation ratio at 130 % arrived (the end of the run when the
    /// inflation is lower).
    pub gpu_alloc_ratio_at_130: f64,
    /// Pods that fit nowhere.
    pub failed_pods: u64,
    /// Pods that arrived.
    pub arrived_pods: u64,
    /// Failed pods by kind (constrained or not, CPU-only, GPU-sharing or
    /// whole GPUs), with the GPU they asked for and when they failed: which
    /// pods a policy loses, and how early.
    pub failures: Vec<FailureCount>,
    /// GPU allocation per GPU model when the arrived request reached 100 %
    /// of capacity (the end of the run when it never did), models by name.
    pub alloc_by_model_at_100: Vec<ModelAllocation>,
    /// GPU allocation per GPU model at the end of the run.
    pub alloc_by_model_at_end: Vec<ModelAllocation>,
    /// Failed restricted pods per GPU model they allowed (a pod counts once
    /// for each model of its list): which models the failures asked for.
    pub failures_by_allowed_model: Vec<ModelFailures>,
    /// Allocation ratio at 1 %, 2 %, ... arrived.
    pub curve: Vec<f64>,
    /// Wall time of the run in seconds.
    pub wall_s: f64,
}

/// What kind of pod failed, for [`SimRun::failures`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PodKind {
    /// No GPU.
    CpuOnly,
    /// A share of one GPU, any model.
    Sharing,
    /// A share of one GPU of the allowed models.
    SharingConstrained,
    /// Whole GPUs, any model.
    Whole,
    /// Whole GPUs of the allowed models.
    WholeConstrained,
}

impl PodKind {
    /// The kind of a trace pod.
    pub fn of(pod: &TracePod) -> Self {
        let constrained = !pod.gpu_spec.is_empty();
        match (pod.num_gpu, pod.gpu_milli < MILLI_PER_GPU, constrained) {
            (0, _, _) => Self::CpuOnly,
            (1, true, false) => Self::Sharing,
            (1, true, true) => Self::SharingConstrained,
            (_, _, false) => Self::Whole,
            (_, _, true) => Self::WholeConstrained,
        }
    }
}

/// Failed pods of one kind in a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailureCount {
    /// Kind of pod.
    pub kind: PodKind,
    /// Pods of this kind that fit nowhere.
    pub pods: u64,
    /// Of those, the pods that failed before the arrived request reached
    /// 100 % of capacity.
    pub pods_before_100: u64,
    /// GPU (milli-GPU) those pods asked for, over the whole run.
    pub gpu_milli: u64,
    /// Arrived request (% of capacity) at the first failure of this kind.
    pub first_at_pct: f64,
    /// Of the failed pods, those that some node could have taken on GPUs
    /// (allowed model, enough free GPU) but none of those nodes had the CPU
    /// or memory left: pods lost to GPU stranded by CPU.
    pub pods_cpu_short: u64,
    /// Of `pods_cpu_short`, the pods that failed before 100 % arrived.
    pub pods_cpu_short_before_100: u64,
}

/// Failed pods restricted to lists that include one GPU model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelFailures {
    /// GPU model.
    pub model: String,
    /// Restricted pods whose allowed models include it that fit nowhere.
    pub pods: u64,
    /// Of those, the pods that failed before 100 % arrived.
    pub pods_before_100: u64,
}

/// GPU allocation of one GPU model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelAllocation {
    /// GPU model.
    pub model: String,
    /// GPU capacity of the model (milli-GPU).
    pub capacity_milli: u64,
    /// Allocated milli-GPU.
    pub allocated_milli: u64,
    /// CPU capacity (milli-cores) of the nodes with GPUs of this model.
    pub cpu_capacity_milli: u64,
    /// Allocated CPU (milli-cores) on those nodes.
    pub cpu_allocated_milli: u64,
    /// Free milli-GPU on nodes whose free CPU is below the median CPU request
    /// of the trace's GPU pods: GPU that most GPU pods can no longer use for
    /// want of CPU.
    pub gpu_free_cpu_short_milli: u64,
    /// CPU (milli-cores) that CPU-only pods were given on those nodes.
    pub cpu_only_cpu_milli: u64,
}

/// Per-model GPU allocation of a snapshot, models by name; `cpu_short` is the
/// free CPU below which a node's free GPU counts as held up by CPU.
fn alloc_by_model(
    snap: &ClusterSnapshot,
    cpu_short: u64,
    cpu_only: &std::collections::HashMap<String, u64>,
) -> Vec<ModelAllocation> {
    let mut by: std::collections::BTreeMap<&str, ModelAllocation> =
        std::collections::BTreeMap::new();
    for n in snap.nodes() {
        let Some(first) = n.gpus.iter().find(|g| g.available) else {
            continue;
        };
        let e = by
            .entry(first.model.as_str())
            .or_insert_with(|| ModelAllocation {
                model: first.model.clone(),
                capacity_milli: 0,
                allocated_milli: 0,
                cpu_capacity_milli: 0,
                cpu_allocated_milli: 0,
                gpu_free_cpu_short_milli: 0,
                cpu_only_cpu_milli: 0,
            });
        e.cpu_only_cpu_milli += cpu_only.get(&n.name).copied().unwrap_or(0);
        e.cpu_capacity_milli += n.cpu_milli_capacity;
        e.cpu_allocated_milli += n.cpu_milli_allocated;
        let short = n.cpu_milli_free() < cpu_short;
        for g in n.gpus.iter().filter(|g| g.available) {
            e.capacity_milli += u64::from(MILLI_PER_GPU);
            e.allocated_milli += u64::from(g.allocated_milli);
            if short {
                e.gpu_free_cpu_short_milli += u64::from(g.free_milli());
            }
        }
    }
    by.into_values().collect()
}

/// True when some node of `snap` has the GPUs `demand` asks for free but
/// none of those nodes has its CPU and memory left.
fn gpus_free_but_cpu_short(snap: &ClusterSnapshot, demand: &PodDemand) -> bool {
    let mut gpu_fit = false;
    for n in snap.nodes() {
        let usable = n
            .gpus
            .iter()
            .filter(|g| {
                g.free_milli() >= demand.gpu_milli
                    && (demand.gpu_models.is_empty()
                        || demand.gpu_models.iter().any(|m| m.trim() == g.model.trim()))
            })
            .count();
        if (usable as u64) < u64::from(demand.num_gpu) {
            continue;
        }
        if n.cpu_milli_free() >= demand.cpu_milli && n.memory_bytes_free() >= demand.memory_bytes {
            return false;
        }
        gpu_fit = true;
    }
    gpu_fit
}

/// Median CPU request (milli-cores) of the GPU pods of a pod list (0 without any).
fn median_gpu_pod_cpu(pods: &[TracePod]) -> u64 {
    let mut cpu: Vec<u64> = pods
        .iter()
        .filter(|p| p.num_gpu > 0)
        .map(|p| p.cpu_milli)
        .collect();
    if cpu.is_empty() {
        return 0;
    }
    let mid = cpu.len() / 2;
    *cpu.select_nth_unstable(mid).1
}

/// The workload order: indices into `pods` (sorted by name, shuffled with the
/// seed, then uniform copies until the GPU request reaches `inflation` x
/// `capacity_milli`).
pub fn build_workload(
    pods: &[TracePod],
    capacity_milli: u64,
    inflation: f64,
    rng: &mut StdRng,
) -> Vec<usize> {
    let mut order: Vec<usize> = (0..pods.len()).collect();
    order.sort_by(|&a, &b| pods[a].name.cmp(&pods[b].name));
    order.shuffle(rng);
    let target = (capacity_milli as f64 * inflation.max(0.0)).ceil() as u64;
    let mut requested: u64 = order.iter().map(|&i| pods[i].gpu_request()).sum();
    if pods.iter().all(|p| p.gpu_request() == 0) {
        return order;
    }
    while requested < target {
        let i = rng.random_range(0..pods.len());
        requested += pods[i].gpu_request();
        order.push(i);
    }
    order
}

/// ClusterInsight equivalent of a node-list entry (what a node agent would report
/// for the empty node).
pub fn insight_for(node: &TraceNode) -> ClusterInsight {
    ClusterInsight {
        node_name: node.name.clone(),
        node_resources: Some(NodeResources {
            cpu_allocatable_cores: node.cpu_milli as f64 / 1000.0,
            memory_allocatable_bytes: i64::try_from(PodDemand::bytes_from_mib(node.memory_mib))
                .unwrap_or(i64::MAX),
            gpu_allocatable: node.gpus as i32,
            gpu_available: node.gpus as i32,
            cpu_available_cores: node.cpu_milli as f64 / 1000.0,
            ..NodeResources::default()
        }),
        gpu_devices: (0..node.gpus)
            .map(|i| GpuStatus {
                gpu_id: format!("{}-gpu{i}", node.name),
                gpu_model: node.model.clone(),
                is_available: true,
                ..GpuStatus::default()
            })
            .collect(),
        ..ClusterInsight::default()
    }
}

/// Gives a share of the GPU pods a GPU-model constraint (`gpu_spec`), as the
/// FGD paper's `gpuspec` trace variants do: `share` of the pods with GPUs
/// (rounded to the nearest pod, chosen uniformly) are restricted to one to
/// three models drawn from the cluster's models that have a node with enough
/// GPUs for the pod. Pods that already carry a `gpu_spec` keep it and count
/// towards the share. Deterministic for a seed; returns how many pods carry a
/// constraint afterwards.
pub fn assign_gpu_specs(
    pods: &mut [TracePod],
    nodes: &[TraceNode],
    share: f64,
    seed: u64,
) -> Result<usize, SimError> {
    if !(share.is_finite() && (0.0..=1.0).contains(&share)) {
        return Err(SimError::GpuSpecShare(share));
    }
    // Largest GPU count per model, models in name order.
    let mut models: std::collections::BTreeMap<&str, u32> = std::collections::BTreeMap::new();
    for n in nodes.iter().filter(|n| n.gpus > 0 && !n.model.is_empty()) {
        let m = models.entry(n.model.as_str()).or_default();
        *m = (*m).max(n.gpus);
    }
    let gpu_pods: Vec<usize> = (0..pods.len()).filter(|&i| pods[i].num_gpu > 0).collect();
    let target = (share * gpu_pods.len() as f64).round() as usize;
    let already = gpu_pods
        .iter()
        .filter(|&&i| !pods[i].gpu_spec.is_empty())
        .count();
    let mut free: Vec<usize> = gpu_pods
        .into_iter()
        .filter(|&i| pods[i].gpu_spec.is_empty())
        .collect();
    let mut rng = StdRng::seed_from_u64(seed);
    free.shuffle(&mut rng);
    let mut assigned = already;
    for i in free {
        if assigned >= target {
            break;
        }
        let fit: Vec<&str> = models
            .iter()
            .filter(|&(_, &g)| g >= pods[i].num_gpu)
            .map(|(&m, _)| m)
            .collect();
        if fit.is_empty() {
            continue;
        }
        let k = rng.random_range(1..=fit.len().min(3));
        let mut spec: Vec<String> = fit
            .choose_multiple(&mut rng, k)
            .map(|m| (*m).to_string())
            .collect();
        spec.sort_unstable();
        pods[i].gpu_spec = spec;
        assigned += 1;
    }
    Ok(assigned)
}

/// Builds the empty-cluster snapshot the way production does (through
/// `ClusterInsight`).
pub fn snapshot_for(
    nodes: &[TraceNode],
    shapes: ShapeDistribution,
) -> Result<ClusterSnapshot, SimError> {
    let mut snap = ClusterSnapshot::new(shapes);
    for n in nodes {
        snap.upsert_node(NodeState::from_insight(&insight_for(n))?);
    }
    Ok(snap)
}

/// The `apollo` policy's cluster: a [`ClusterView`] fed with node insights,
/// the [`ClusterState`] following it and the [`Engine`] the gRPC handler
/// uses. Placing a pod is one `GetSchedulingPolicy` decision followed by the
/// node's insight after the bind.
#[derive(Debug)]
pub struct ApolloSim {
    view: ClusterView,
    state: Arc<ClusterState>,
    engine: Engine,
    /// The same engine without the assume step, for looking without placing.
    preview: Engine,
    /// Pods bound per node, reported in the node's insight.
    running: std::collections::HashMap<String, Vec<WorkloadSummary>>,
    shapes: ShapeSource,
    arrivals: u64,
}

impl ApolloSim {
    /// The empty cluster of the node list; `pods` gives the typical shapes
    /// when `shapes` is [`ShapeSource::Trace`].
    pub fn new(nodes: &[TraceNode], pods: &[TracePod], shapes: ShapeSource) -> Self {
        Self::with_weights(nodes, pods, shapes, ScoreWeights::default())
    }

    /// [`ApolloSim::new`] with explicit scorer weights.
    pub fn with_weights(
        nodes: &[TraceNode],
        pods: &[TracePod],
        shapes: ShapeSource,
        weights: ScoreWeights,
    ) -> Self {
        let view = ClusterView::new();
        let now = SystemTime::now();
        for n in nodes {
            view.upsert_node(insight_for(n), now, 0);
        }
        let cfg = EngineConfig::default();
        let state = match shapes {
            ShapeSource::Online => ClusterState::new(view.clone(), cfg),
            ShapeSource::Trace | ShapeSource::Prior => {
                let demands: Vec<PodDemand> = pods.iter().map(TracePod::demand).collect();
                let dist = ShapeDistribution::from_pods(demands.iter(), DEFAULT_COVERAGE);
                ClusterState::with_snapshot(view.clone(), cfg, ClusterSnapshot::new(dist))
            }
        };
        let state = Arc::new(state);
        // Node by node in list order; ties rank by node name, so the order in
        // which a production view learns the nodes gives the same rankings.
        for n in nodes {
            state.sync_node(&n.name);
        }
        Self {
            view,
            engine: Engine::with_weights(Arc::clone(&state), weights.clone()),
            preview: Engine::with_weights(Arc::clone(&state), weights).without_assume(),
            state,
            running: std::collections::HashMap::new(),
            shapes,
            arrivals: 0,
        }
    }

    /// The state the engine reads.
    pub fn state(&self) -> &Arc<ClusterState> {
        &self.state
    }

    /// Decides the `k`-th arrival of `pod` and, when the policy names a node,
    /// binds it there and reports the node's new insight. Returns the policy.
    pub fn place(&mut self, pod: &TracePod, k: u64) -> SchedulingPolicy {
        self.arrivals += 1;
        if self.shapes != ShapeSource::Trace && self.arrivals.is_multiple_of(SWEEP_EVERY) {
            self.state.sweep();
        }
        let req = request_for(pod, k);
        let policy = self.engine.decide(&req);
        let placed = matches!(
            policy.decision(),
            SchedulingDecision::Allow | SchedulingDecision::Prefer | SchedulingDecision::Require
        );
        if let (true, Some(top)) = (placed, policy.node_preferences.first()) {
            let node = top.node_name.clone();
            if self
                .state
                .assumed_node(&req.pod_namespace, &req.pod_name)
                .as_deref()
                == Some(node.as_str())
            {
                self.report_bound(&node, &req);
            }
        }
        policy
    }

    /// The policy the `k`-th arrival of `pod` would get now, without placing it.
    pub fn preview(&self, pod: &TracePod, k: u64) -> SchedulingPolicy {
        self.preview.decide(&request_for(pod, k))
    }

    /// The node agent's report after a bind: the node as the engine assumed
    /// it, listing the pod among its running workloads.
    fn report_bound(&mut self, node: &str, req: &SchedulingPolicyRequest) {
        let running = self.running.entry(node.to_string()).or_default();
        running.push(WorkloadSummary {
            pod_name: req.pod_name.clone(),
            pod_namespace: req.pod_namespace.clone(),
            ..WorkloadSummary::default()
        });
        let Some(insight) = self
            .state
            .read()
            .node(node)
            .map(|n| insight_from_state(n, running))
        else {
            return;
        };
        self.view.upsert_node(insight, SystemTime::now(), 0);
        self.state.sync_node(node);
    }

    /// Allocated milli-GPU.
    pub fn gpu_allocated_milli(&self) -> u64 {
        self.state.read().gpu_allocated_milli()
    }

    /// GPU capacity in milli-GPU.
    pub fn gpu_capacity_milli(&self) -> u64 {
        self.state.read().gpu_capacity_milli()
    }
}

/// The `GetSchedulingPolicy` request for the `k`-th arrival of a trace pod:
/// its resources as APOLLO annotations (`cpu`, `memory`, `gpu` or
/// `gpu-milli`, `gpu-model`).
pub fn request_for(pod: &TracePod, k: u64) -> SchedulingPolicyRequest {
    let mut ann = std::collections::HashMap::new();
    let key = |name: &str| format!("{ANNOTATION_PREFIX}{name}");
    ann.insert(key("cpu"), format!("{}m", pod.cpu_milli));
    ann.insert(key("memory"), format!("{}Mi", pod.memory_mib));
    if pod.num_gpu > 0 {
        if pod.num_gpu == 1 && pod.gpu_milli < MILLI_PER_GPU {
            ann.insert(key("gpu-milli"), pod.gpu_milli.to_string());
        } else {
            ann.insert(key("gpu"), pod.num_gpu.to_string());
        }
        if !pod.gpu_spec.is_empty() {
            ann.insert(key("gpu-model"), pod.gpu_spec.join(","));
        }
    }
    SchedulingPolicyRequest {
        pod_name: format!("{}-{k}", pod.name),
        pod_namespace: SIM_NAMESPACE.to_string(),
        pod_annotations: ann.into_iter().collect(),
        ..SchedulingPolicyRequest::default()
    }
}

/// The insight a node agent reports for a node in this state.
fn insight_from_state(n: &NodeState, running: &[WorkloadSummary]) -> ClusterInsight {
    ClusterInsight {
        node_name: n.name.clone(),
        node_resources: Some(NodeResources {
            cpu_allocatable_cores: n.cpu_milli_capacity as f64 / 1000.0,
            cpu_requested_cores: n.cpu_milli_allocated as f64 / 1000.0,
            memory_allocatable_bytes: i64::try_from(n.memory_bytes_capacity).unwrap_or(i64::MAX),
            memory_requested_bytes: i64::try_from(n.memory_bytes_allocated).unwrap_or(i64::MAX),
            gpu_allocatable: n.gpus.len() as i32,
            gpu_available: n.gpus.iter().filter(|g| g.free_milli() > 0).count() as i32,
            cpu_available_cores: n.cpu_milli_free() as f64 / 1000.0,
            ..NodeResources::default()
        }),
        gpu_devices: n
            .gpus
            .iter()
            .enumerate()
            .map(|(i, g)| GpuStatus {
                gpu_id: format!("{}-gpu{i}", n.name),
                gpu_model: g.model.clone(),
                is_available: g.available,
                allocated_milli: g.allocated_milli as i32,
                ..GpuStatus::default()
            })
            .collect(),
        running_workloads: running.to_vec(),
        ..ClusterInsight::default()
    }
}

/// Runs one simulation.
pub fn run(nodes: &[TraceNode], pods: &[TracePod], cfg: &SimConfig) -> Result<SimRun, SimError> {
    let start = Instant::now();
    let capacity: u64 = nodes
        .iter()
        .map(|n| u64::from(n.gpus) * u64::from(MILLI_PER_GPU))
        .sum();
    if capacity == 0 {
        return Err(SimError::NoGpuCapacity);
    }
    let demands: Vec<PodDemand> = pods.iter().map(TracePod::demand).collect();
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let order = build_workload(pods, capacity, cfg.inflation, &mut rng);
    let mut placer = match cfg.policy {
        Policy::Apollo => Placer::Apollo(Box::new(ApolloSim::with_weights(
            nodes,
            pods,
            cfg.shapes,
            cfg.weights.clone(),
        ))),
        Policy::Baseline(b) => {
            let shapes = if b == Baseline::Fgd {
                ShapeDistribution::from_pods(demands.iter(), DEFAULT_COVERAGE)
            } else {
                ShapeDistribution::default()
            };
            // Ties among equally scored nodes follow a node order drawn from
            // the run's seed (see `baselines`).
            let snap = snapshot_for(nodes, shapes)?;
            let ties = TieOrder::seeded(snap.len(), cfg.seed);
            Placer::Baseline(b, Box::new(snap), ties)
        }
    };

    let mut arrived: u64 = 0;
    let mut next_pct: u64 = 1;
    let mut curve = Vec::with_capacity((cfg.inflation * 100.0) as usize + 2);
    let mut failed = 0u64;
    let mut failures: std::collections::BTreeMap<PodKind, FailureCount> =
        std::collections::BTreeMap::new();
    let mut by_model: Option<Vec<ModelAllocation>> = None;
    // CPU given to CPU-only pods, per node.
    let mut cpu_only: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let cpu_short = median_gpu_pod_cpu(pods);
    let mut by_allowed: std::collections::BTreeMap<&str, ModelFailures> =
        std::collections::BTreeMap::new();
    for (k, &i) in order.iter().enumerate() {
        let placed_on = match &mut placer {
            Placer::Apollo(sim) => {
                let before = sim.gpu_allocated_milli();
                let policy = sim.place(&pods[i], k as u64);
                (placed_by(&policy)
                    && (pods[i].gpu_request() == 0 || sim.gpu_allocated_milli() > before))
                    .then(|| policy.node_preferences[0].node_name.clone())
            }
            Placer::Baseline(b, snap, ties) => {
                b.place(snap, &demands[i], ties, &mut rng).map(|p| p.node)
            }
        };
        if let Some(node) = &placed_on {
            if pods[i].num_gpu == 0 {
                *cpu_only.entry(node.clone()).or_default() += pods[i].cpu_milli;
            }
        }
        if placed_on.is_none() {
            failed += 1;
            let kind = PodKind::of(&pods[i]);
            let pct = 100.0 * arrived as f64 / capacity as f64;
            let f = failures.entry(kind).or_insert(FailureCount {
                kind,
                pods: 0,
                pods_before_100: 0,
                gpu_milli: 0,
                first_at_pct: pct,
                pods_cpu_short: 0,
                pods_cpu_short_before_100: 0,
            });
            f.pods += 1;
            f.gpu_milli += pods[i].gpu_request();
            if arrived < capacity {
                f.pods_before_100 += 1;
            }
            if pods[i].num_gpu > 0 && placer.gpus_free_but_cpu_short(&demands[i]) {
                f.pods_cpu_short += 1;
                if arrived < capacity {
                    f.pods_cpu_short_before_100 += 1;
                }
            }
            for m in &pods[i].gpu_spec {
                let e = by_allowed
                    .entry(m.as_str())
                    .or_insert_with(|| ModelFailures {
                        model: m.clone(),
                        pods: 0,
                        pods_before_100: 0,
                    });
                e.pods += 1;
                if arrived < capacity {
                    e.pods_before_100 += 1;
                }
            }
        }
        arrived += pods[i].gpu_request();
        if by_model.is_none() && arrived >= capacity {
            by_model = Some(placer.alloc_by_model(cpu_short, &cpu_only));
        }
        let allocated = placer.gpu_allocated_milli();
        while arrived.saturating_mul(100) >= next_pct.saturating_mul(capacity) {
            curve.push(100.0 * allocated as f64 / capacity as f64);
            next_pct += 1;
        }
    }
    let last = 100.0 * placer.gpu_allocated_milli() as f64 / capacity as f64;
    let at = |pct: usize| curve.get(pct - 1).copied().unwrap_or(last);
    Ok(SimRun {
        policy: cfg.policy.name().to_string(),
        seed: cfg.seed,
        gpu_alloc_ratio_at_100: at(100),
        gpu_alloc_ratio_at_130: at(130),
        failed_pods: failed,
        arrived_pods: order.len() as u64,
        failures: failures.into_values().collect(),
        alloc_by_model_at_100: by_model
            .unwrap_or_else(|| placer.alloc_by_model(cpu_short, &cpu_only)),
        alloc_by_model_at_end: placer.alloc_by_model(cpu_short, &cpu_only),
        failures_by_allowed_model: by_allowed.into_values().collect(),
        curve,
        wall_s: start.elapsed().as_secs_f64(),
    })
}

fn placed_by(policy: &SchedulingPolicy) -> bool {
    matches!(
        policy.decision(),
        SchedulingDecision::Allow | SchedulingDecision::Prefer | SchedulingDecision::Require
    ) && !policy.node_preferences.is_empty()
}

enum Placer {
    Apollo(Box<ApolloSim>),
    Baseline(Baseline, Box<ClusterSnapshot>, TieOrder),
}

impl Placer {
    fn gpu_allocated_milli(&self) -> u64 {
        match self {
            Self::Apollo(sim) => sim.gpu_allocated_milli(),
            Self::Baseline(_, snap, _) => snap.gpu_allocated_milli(),
        }
    }

    fn alloc_by_model(
        &self,
        cpu_short: u64,
        cpu_only: &std::collections::HashMap<String, u64>,
    ) -> Vec<ModelAllocation> {
        match self {
            Self::Apollo(sim) => alloc_by_model(&sim.state.read(), cpu_short, cpu_only),
            Self::Baseline(_, snap, _) => alloc_by_model(snap, cpu_short, cpu_only),
        }
    }

    /// True when some node has the GPUs `demand` asks for free (allowed
    /// model, enough free share) but every such node lacks its CPU or memory.
    fn gpus_free_but_cpu_short(&self, demand: &PodDemand) -> bool {
        match self {
            Self::Apollo(sim) => gpus_free_but_cpu_short(&sim.state.read(), demand),
            Self::Baseline(_, snap, _) => gpus_free_but_cpu_short(snap, demand),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, gpus: u32, model: &str) -> TraceNode {
        TraceNode {
            name: name.into(),
            cpu_milli: 64_000,
            memory_mib: 262_144,
            gpus,
            model: model.into(),
        }
    }

    fn pod(i: usize, num_gpu: u32) -> TracePod {
        TracePod {
            name: format!("p{i:04}"),
            cpu_milli: 1_000,
            memory_mib: 1_024,
            num_gpu,
            gpu_milli: if num_gpu == 1 {
                500
            } else {
                1_000 * num_gpu.min(1)
            },
            gpu_spec: Vec::new(),
        }
    }

    #[test]
    fn gpu_specs_are_deterministic_and_respect_the_share() {
        let nodes = [
            node("a", 8, "V100M32"),
            node("b", 2, "T4"),
            node("c", 4, "P100"),
            node("d", 0, ""),
        ];
        // 300 GPU pods (a third of them 8-GPU pods) and 100 CPU-only pods.
        let pods: Vec<TracePod> = (0..400).map(|i| pod(i, [0, 1, 1, 8][i % 4])).collect();
        let mut a = pods.clone();
        let n = assign_gpu_specs(&mut a, &nodes, 1.0 / 3.0, 7).unwrap();
        assert_eq!(n, 100);
        assert_eq!(a.iter().filter(|p| !p.gpu_spec.is_empty()).count(), 100);
        for p in &a {
            if p.num_gpu == 0 {
                assert!(p.gpu_spec.is_empty(), "CPU-only pod {} constrained", p.name);
            }
            assert!(p.gpu_spec.len() <= 3);
            for m in &p.gpu_spec {
                assert!(["V100M32", "T4", "P100"].contains(&m.as_str()), "{m}");
            }
            if p.num_gpu == 8 && !p.gpu_spec.is_empty() {
                // Only V100M32 nodes have eight GPUs.
                assert_eq!(p.gpu_spec, ["V100M32"]);
            }
        }
        let mut b = pods.clone();
        assign_gpu_specs(&mut b, &nodes, 1.0 / 3.0, 7).unwrap();
        assert_eq!(a, b, "same seed, same constraints");
        let mut c = pods.clone();
        assign_gpu_specs(&mut c, &nodes, 1.0 / 3.0, 8).unwrap();
        assert_ne!(a, c, "another seed, other constraints");
        let mut all = pods.clone();
        assert_eq!(assign_gpu_specs(&mut all, &nodes, 1.0, 7).unwrap(), 300);
        let mut none = pods.clone();
        assert_eq!(assign_gpu_specs(&mut none, &nodes, 0.0, 7).unwrap(), 0);
        assert_eq!(none, pods);
        for bad in [-0.1, 1.5, f64::NAN] {
            assert!(matches!(
                assign_gpu_specs(&mut pods.clone(), &nodes, bad, 7),
                Err(SimError::GpuSpecShare(_))
            ));
        }
    }

    #[test]
    fn cpu_short_failures_need_free_gpus_on_nodes_without_the_cpu() {
        let nodes = [node("a", 2, "T4"), node("b", 8, "G2")];
        let mut snap = snapshot_for(&nodes, ShapeDistribution::default()).unwrap();
        // Node a: both T4 GPUs free, 2 of 64 cores left; node b: GPUs all taken.
        snap.update_node("a", |n| n.cpu_milli_allocated = 62_000)
            .unwrap();
        snap.update_node("b", |n| {
            for g in &mut n.gpus {
                g.allocated_milli = 1000;
            }
        })
        .unwrap();
        let hungry = PodDemand::new(8_000, 1 << 30).with_gpu(1, 1000);
        assert!(gpus_free_but_cpu_short(&snap, &hungry));
        // Small enough for the CPU left: not CPU-short (it would fit).
        let small = PodDemand::new(1_000, 1 << 30).with_gpu(1, 1000);
        assert!(!gpus_free_but_cpu_short(&snap, &small));
        // Only G2 allowed: no GPU of the model is free, so not CPU-short.
        let g2_only = hungry.clone().with_gpu_models(["G2"]);
        assert!(!gpus_free_but_cpu_short(&snap, &g2_only));
        // Three GPUs: no node has them free at all.
        let three = PodDemand::new(1_000, 1 << 30).with_gpu(3, 1000);
        assert!(!gpus_free_but_cpu_short(&snap, &three));
    }
}
