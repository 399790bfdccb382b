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
//! The `apollo` policy places each pod on the top node of [`NodeScorer::rank`]
//! and applies it with [`ClusterSnapshot::assume`], exactly what the gRPC
//! handler and its assume cache do. Its nodes are built through
//! [`NodeState::from_insight`] from `ClusterInsight` messages equivalent to the
//! node list, and its pod-shape distribution is learned online from the pods
//! seen so far ([`ClusterSnapshot::observe_pod`]) unless [`ShapeSource::Trace`]
//! is asked for. The `fgd` baseline uses the shapes of the whole pod list, as
//! the published simulator does.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use apollo_proto::{ClusterInsight, GpuStatus, NodeResources};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use thiserror::Error;

use crate::baselines::Baseline;
use crate::demand::{PodDemand, MILLI_PER_GPU};
use crate::fgd::{ShapeDistribution, DEFAULT_COVERAGE};
use crate::scorer::NodeScorer;
use crate::snapshot::{ClusterSnapshot, NodeState, SnapshotError};

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
    /// Allocation ratio at 1 %, 2 %, ... arrived.
    pub curve: Vec<f64>,
    /// Wall time of the run in seconds.
    pub wall_s: f64,
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

/// Runs one simulation.
pub fn run(nodes: &[TraceNode], pods: &[TracePod], cfg: &SimConfig) -> Result<SimRun, SimError> {
    let start = Instant::now();
    let demands: Vec<PodDemand> = pods.iter().map(TracePod::demand).collect();
    let trace_shapes = || ShapeDistribution::from_pods(demands.iter(), DEFAULT_COVERAGE);
    let online = cfg.policy == Policy::Apollo && cfg.shapes == ShapeSource::Online;
    let uses_shapes = matches!(cfg.policy, Policy::Apollo | Policy::Baseline(Baseline::Fgd));
    let shapes = if uses_shapes && !online {
        trace_shapes()
    } else {
        ShapeDistribution::default()
    };
    let mut snap = snapshot_for(nodes, shapes)?;
    let capacity = snap.gpu_capacity_milli();
    if capacity == 0 {
        return Err(SimError::NoGpuCapacity);
    }
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let order = build_workload(pods, capacity, cfg.inflation, &mut rng);
    let scorer = NodeScorer::default();

    let mut arrived: u64 = 0;
    let mut next_pct: u64 = 1;
    let mut curve = Vec::with_capacity((cfg.inflation * 100.0) as usize + 2);
    let mut failed = 0u64;
    for &i in &order {
        let demand = &demands[i];
        let placed = match cfg.policy {
            Policy::Apollo => {
                if online {
                    snap.observe_pod(demand);
                }
                let ranking = scorer.rank(&snap, demand, 1);
                match ranking.top.first() {
                    Some(best) => snap.assume(&best.node, demand).is_ok(),
                    None => false,
                }
            }
            Policy::Baseline(b) => b.place(&mut snap, demand, &mut rng).is_some(),
        };
        if !placed {
            failed += 1;
        }
        arrived += pods[i].gpu_request();
        while arrived.saturating_mul(100) >= next_pct.saturating_mul(capacity) {
            curve.push(100.0 * snap.gpu_allocated_milli() as f64 / capacity as f64);
            next_pct += 1;
        }
    }
    let last = 100.0 * snap.gpu_allocated_milli() as f64 / capacity as f64;
    let at = |pct: usize| curve.get(pct - 1).copied().unwrap_or(last);
    Ok(SimRun {
        policy: cfg.policy.name().to_string(),
        seed: cfg.seed,
        gpu_alloc_ratio_at_100: at(100),
        gpu_alloc_ratio_at_130: at(130),
        failed_pods: failed,
        arrived_pods: order.len() as u64,
        curve,
        wall_s: start.elapsed().as_secs_f64(),
    })
}
