//! Cluster state as the scorer sees it: one [`NodeState`] per node, indexed by
//! name, with derived per-node data (free resources, current GPU fragmentation)
//! cached and recomputed only when that node changes.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use apollo_proto::ClusterInsight;
use thiserror::Error;

pub use crate::demand::StorageTier;
use crate::demand::{PodDemand, MILLI_PER_GPU};
use crate::fgd::ShapeDistribution;

/// Errors from snapshot updates and placements.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum SnapshotError {
    /// The named node is not in the snapshot.
    #[error("unknown node {0:?}")]
    UnknownNode(String),
    /// A ClusterInsight without a node name.
    #[error("cluster insight without node_name")]
    MissingNodeName,
    /// A numeric field out of range.
    #[error("node {node:?}: {field} = {value} is out of range")]
    OutOfRange {
        /// Node name.
        node: String,
        /// Field name.
        field: &'static str,
        /// Offending value.
        value: f64,
    },
    /// The demand is malformed.
    #[error(transparent)]
    Demand(#[from] crate::demand::DemandError),
    /// The pod does not fit the node (assume on a stale choice).
    #[error("pod does not fit on node {node:?}: {reason}")]
    DoesNotFit {
        /// Node name.
        node: String,
        /// What is short.
        reason: &'static str,
    },
}

/// One GPU: its model and how much of it pods have been allocated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuState {
    /// GPU model (e.g. `V100M16`, `T4`).
    pub model: String,
    /// Allocated share in milli-GPU (0-1000).
    pub allocated_milli: u32,
    /// False for a GPU that is unhealthy or withheld: nothing can be placed on it.
    pub available: bool,
}

impl GpuState {
    /// A free, available GPU.
    pub fn free(model: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            allocated_milli: 0,
            available: true,
        }
    }

    /// Free share in milli-GPU (0 when unavailable).
    pub fn free_milli(&self) -> u32 {
        if self.available {
            MILLI_PER_GPU.saturating_sub(self.allocated_milli)
        } else {
            0
        }
    }
}

/// One storage device with its current load.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageDevice {
    /// Device name.
    pub name: String,
    /// Tier.
    pub tier: StorageTier,
    /// Busy fraction, 0-1.
    pub utilisation: f64,
    /// IOPS still available (max - current).
    pub iops_headroom: u64,
    /// Throughput still available in MB/s (max - current).
    pub throughput_headroom_mbps: f64,
}

/// Forecast for the node over the forecaster's horizon. Fractions are 0-1 of
/// capacity; the overload flags say the forecaster expects the node to cross
/// its overload threshold within the horizon.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeForecast {
    /// Horizon the peaks refer to, in minutes.
    pub horizon_minutes: u32,
    /// Predicted peak CPU utilisation.
    pub peak_cpu: f64,
    /// Predicted peak memory utilisation.
    pub peak_memory: f64,
    /// Predicted peak GPU utilisation.
    pub peak_gpu: f64,
    /// Predicted peak storage I/O utilisation.
    pub peak_io: f64,
    /// CPU overload predicted.
    pub overload_cpu: bool,
    /// Memory overload predicted.
    pub overload_memory: bool,
    /// GPU overload predicted.
    pub overload_gpu: bool,
    /// Storage I/O overload predicted.
    pub overload_io: bool,
}

/// Measured (not requested) utilisation, fractions 0-1.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MeasuredUsage {
    /// CPU.
    pub cpu: f64,
    /// Memory.
    pub memory: f64,
    /// GPU (mean over GPUs).
    pub gpu: f64,
    /// Storage I/O (mean device utilisation).
    pub io: f64,
}

/// Everything the scorer knows about one node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeState {
    /// Node name (the index key).
    pub name: String,
    /// Allocatable CPU in milli-cores.
    pub cpu_milli_capacity: u64,
    /// Sum of CPU requests of pods bound (or assumed) on the node.
    pub cpu_milli_allocated: u64,
    /// Allocatable memory in bytes.
    pub memory_bytes_capacity: u64,
    /// Sum of memory requests of pods bound (or assumed) on the node.
    pub memory_bytes_allocated: u64,
    /// GPUs in device order.
    pub gpus: Vec<GpuState>,
    /// Storage devices.
    pub storage: Vec<StorageDevice>,
    /// Number of available computational-storage devices.
    pub csd_available: u32,
    /// Node labels.
    pub labels: BTreeMap<String, String>,
    /// Latest forecast, if any.
    pub forecast: Option<NodeForecast>,
    /// Latest measured usage, if any.
    pub usage: Option<MeasuredUsage>,
    /// Recent bind-failure penalty, 0 (none) to 1 (binds keep failing); kept
    /// up to date by the feedback loop.
    pub bind_failure_penalty: f64,
}

impl NodeState {
    /// A node with capacity only (no GPUs, nothing allocated).
    pub fn new(name: impl Into<String>, cpu_milli: u64, memory_bytes: u64) -> Self {
        Self {
            name: name.into(),
            cpu_milli_capacity: cpu_milli,
            memory_bytes_capacity: memory_bytes,
            ..Self::default()
        }
    }

    /// Adds `count` free GPUs of `model`.
    pub fn with_gpus(mut self, count: usize, model: &str) -> Self {
        self.gpus.extend((0..count).map(|_| GpuState::free(model)));
        self
    }

    /// Free CPU in milli-cores.
    pub fn cpu_milli_free(&self) -> u64 {
        self.cpu_milli_capacity
            .saturating_sub(self.cpu_milli_allocated)
    }

    /// Free memory in bytes.
    pub fn memory_bytes_free(&self) -> u64 {
        self.memory_bytes_capacity
            .saturating_sub(self.memory_bytes_allocated)
    }

    /// Converts the insight the node agent reports into scorer state. Bind
    /// penalty and forecast are not part of an insight and start empty (the
    /// caller keeps them across updates, see [`ClusterSnapshot::apply_insight`]).
    pub fn from_insight(insight: &ClusterInsight) -> Result<Self, SnapshotError> {
        let node = insight.node_name.trim();
        if node.is_empty() {
            return Err(SnapshotError::MissingNodeName);
        }
        let check = |field: &'static str, v: f64| -> Result<f64, SnapshotError> {
            if v.is_finite() && v >= 0.0 {
                Ok(v)
            } else {
                Err(SnapshotError::OutOfRange {
                    node: node.to_string(),
                    field,
                    value: v,
                })
            }
        };
        let res = insight.node_resources.unwrap_or_default();
        let cpu_cap = check("cpu_allocatable_cores", res.cpu_allocatable_cores)?;
        let cpu_req = check("cpu_requested_cores", res.cpu_requested_cores)?;
        let cpu_used = check("cpu_used_cores", res.cpu_used_cores)?;
        let mem_cap = check(
            "memory_allocatable_bytes",
            res.memory_allocatable_bytes as f64,
        )?;
        let mem_req = check("memory_requested_bytes", res.memory_requested_bytes as f64)?;
        let mem_used = check("memory_used_bytes", res.memory_used_bytes as f64)?;

        let mut gpus = Vec::with_capacity(insight.gpu_devices.len());
        let mut gpu_util = 0.0;
        for g in &insight.gpu_devices {
            if !(0..=MILLI_PER_GPU as i32).contains(&g.allocated_milli) {
                return Err(SnapshotError::OutOfRange {
                    node: node.to_string(),
                    field: "gpu_devices.allocated_milli",
                    value: f64::from(g.allocated_milli),
                });
            }
            gpu_util += check("gpu_devices.utilization_percent", g.utilization_percent)? / 100.0;
            gpus.push(GpuState {
                model: g.gpu_model.clone(),
                allocated_milli: g.allocated_milli as u32,
                available: g.is_available,
            });
        }
        let mut storage = Vec::with_capacity(insight.storage_devices.len());
        let mut io_util = 0.0;
        for d in &insight.storage_devices {
            let util = check("storage_devices.utilization_percent", d.utilization_percent)? / 100.0;
            io_util += util;
            // Unknown device types are treated as the slowest tier rather than rejected:
            // new hardware should not take a node out of scheduling.
            let tier = StorageTier::parse(&d.device_type).unwrap_or(StorageTier::Hdd);
            storage.push(StorageDevice {
                name: d.device_name.clone(),
                tier,
                utilisation: util.min(1.0),
                iops_headroom: d.max_iops.saturating_sub(d.current_iops).max(0) as u64,
                throughput_headroom_mbps: (d.max_throughput_mbps - d.current_throughput_mbps)
                    .max(0.0),
            });
        }
        let ratio = |used: f64, cap: f64| {
            if cap > 0.0 {
                (used / cap).min(1.0)
            } else {
                0.0
            }
        };
        // proto3 cannot tell "not measured" from zero: an insight without any
        // usage figure carries no measurement, and headroom is then not scored.
        let measured = cpu_used > 0.0 || mem_used > 0.0 || gpu_util > 0.0 || io_util > 0.0;
        let usage = MeasuredUsage {
            cpu: ratio(cpu_used, cpu_cap),
            memory: ratio(mem_used, mem_cap),
            gpu: if gpus.is_empty() {
                0.0
            } else {
                (gpu_util / gpus.len() as f64).min(1.0)
            },
            io: if storage.is_empty() {
                0.0
            } else {
                io_util / storage.len() as f64
            },
        };
        let mut labels = BTreeMap::new();
        if !insight.node_type.is_empty() {
            labels.insert("apollo.io/node-type".to_string(), insight.node_type.clone());
        }
        for role in &insight.node_roles {
            labels.insert(format!("apollo.io/role-{role}"), "true".to_string());
        }
        Ok(Self {
            name: node.to_string(),
            cpu_milli_capacity: (cpu_cap * 1000.0).round() as u64,
            cpu_milli_allocated: (cpu_req * 1000.0).round() as u64,
            memory_bytes_capacity: mem_cap as u64,
            memory_bytes_allocated: mem_req as u64,
            gpus,
            storage,
            csd_available: insight
                .csd_devices
                .iter()
                .filter(|c| c.is_available)
                .count() as u32,
            labels,
            forecast: None,
            usage: measured.then_some(usage),
            bind_failure_penalty: 0.0,
        })
    }
}

/// Which GPUs of a node a placement takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuPick {
    /// No GPU.
    None,
    /// A share of the GPU at this index.
    Share(u16),
    /// The first `n` fully free allowed GPUs (in device order).
    Whole(u32),
}

/// A placement applied by [`ClusterSnapshot::assume`], kept to undo it with
/// [`ClusterSnapshot::forget`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Node name.
    pub node: String,
    /// CPU taken (milli-cores).
    pub cpu_milli: u64,
    /// Memory taken (bytes).
    pub memory_bytes: u64,
    /// (GPU index, milli-GPU taken) pairs.
    pub gpus: Vec<(u16, u32)>,
}

/// Derived per-node data used on the hot path.
#[derive(Debug, Clone, Default)]
pub(crate) struct NodeCache {
    pub(crate) cpu_free: u64,
    pub(crate) mem_free: u64,
    /// CPU free for fragmentation purposes: reduced by predicted usage.
    pub(crate) frag_cpu_free: u64,
    pub(crate) gpu_free: Vec<u32>,
    pub(crate) gpu_model: Vec<u16>,
    pub(crate) gpu_free_total: u64,
    pub(crate) gpu_capacity: u64,
    pub(crate) max_free: u32,
    pub(crate) frag: f64,
    /// Free milli-GPU of each GPU, sorted and packed 10 bits each (absent
    /// GPUs as 0x3FF), when the node has at most [`MEMO_GPUS`] GPUs all of one
    /// model: the node's GPU state as the fragmentation model sees it.
    pub(crate) gpu_key: Option<u128>,
    /// The model of every GPU when they share one.
    pub(crate) uniform_model: Option<u16>,
}

/// Most GPUs per node whose fragmentation deltas are memoised.
const MEMO_GPUS: usize = 8;
/// Memoised deltas kept per thread before the memo starts over.
const MEMO_CAPACITY: usize = 1 << 16;
/// Marks an absent GPU in a packed GPU state.
const NO_GPU: u128 = 0x3FF;
/// Memoised pick: no particular GPU (CPU-only or whole GPUs).
const PICK_NONE: u32 = u32::MAX;

/// Multiplicative hasher for the memo's `u128` keys (they are already well
/// mixed bit fields; SipHash would cost more than the lookup saves).
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }

    fn write_u128(&mut self, v: u128) {
        let folded = (v as u64) ^ ((v >> 64) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = (self.0 ^ folded).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        self.0 ^= self.0 >> 29;
    }
}

/// Fragmentation deltas by (GPU state, CPU classes, pod GPU shape), for one
/// shape distribution version. Deltas are pure functions of that key, so
/// nodes in the same state (common: idle nodes of one type, nodes filled
/// the same way) and later requests of the same shape reuse them.
#[derive(Default)]
pub(crate) struct DeltaMemo {
    version: u64,
    map: HashMap<u128, (f64, u32), BuildHasherDefault<KeyHasher>>,
}

thread_local! {
    static MEMO: RefCell<DeltaMemo> = RefCell::new(DeltaMemo::default());
}

/// Runs `f` with this thread's delta memo (borrowed once for a whole pass over
/// the nodes; `f` must not call back into it).
pub(crate) fn with_delta_memo<R>(f: impl FnOnce(&mut DeltaMemo) -> R) -> R {
    MEMO.with(|m| f(&mut m.borrow_mut()))
}

fn pack_gpu_state(free: &[u32]) -> Option<u128> {
    if free.len() > MEMO_GPUS {
        return None;
    }
    let mut sorted = [u32::MAX; MEMO_GPUS];
    sorted[..free.len()].copy_from_slice(free);
    sorted[..free.len()].sort_unstable();
    let mut key = 0u128;
    for (i, &f) in sorted.iter().enumerate() {
        let v = if f == u32::MAX {
            NO_GPU
        } else {
            u128::from(f.min(1000))
        };
        key |= v << (10 * i);
    }
    Some(key)
}

/// What the scan over all nodes reads, kept in one compact array parallel to
/// the nodes so a request touches one or two cache lines per node.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct NodeHot {
    pub(crate) cpu_free: u64,
    pub(crate) mem_free: u64,
    pub(crate) frag_cpu_free: u64,
    pub(crate) gpu_free_total: u64,
    pub(crate) gpu_capacity: u64,
    pub(crate) cpu_capacity: u64,
    /// `1 / (max(gpu_capacity, 1) * max(cpu_capacity, 1))`: both capacity
    /// shares of a placement with one multiplication each.
    pub(crate) inv_caps: f64,
    pub(crate) frag: f64,
    pub(crate) penalty: f64,
    /// Packed sorted GPU state, valid when `keyed`.
    pub(crate) gpu_key: u128,
    pub(crate) max_free: u32,
    /// CPU class of `frag_cpu_free` under the current shapes.
    pub(crate) cpu_class: u32,
    /// Available GPUs with nothing allocated.
    pub(crate) whole_free: u32,
    /// Model of every GPU, [`NO_MODEL`] when mixed or without GPUs.
    pub(crate) model: u16,
    pub(crate) keyed: bool,
    /// Measured usage or a forecast is present (headroom is scored).
    pub(crate) observed: bool,
    pub(crate) has_forecast: bool,
    pub(crate) csd: bool,
}

/// No single GPU model.
pub(crate) const NO_MODEL: u16 = u16::MAX;

#[derive(Debug, Clone)]
pub(crate) struct NodeEntry {
    pub(crate) state: NodeState,
    pub(crate) cache: NodeCache,
}

/// Models a pod may use, resolved to interned ids once per request.
#[derive(Debug, Clone, Default)]
pub(crate) struct ModelFilter {
    any: bool,
    ids: Vec<u16>,
}

impl ModelFilter {
    #[inline]
    pub(crate) fn allows(&self, id: u16) -> bool {
        self.any || self.ids.contains(&id)
    }
}

/// All nodes, indexed by name, with cached derived data and the pod-shape
/// distribution that defines fragmentation.
#[derive(Debug, Clone, Default)]
pub struct ClusterSnapshot {
    pub(crate) nodes: Vec<NodeEntry>,
    /// Parallel to `nodes`.
    pub(crate) hot: Vec<NodeHot>,
    /// Parallel to `nodes`: the node's position in name order. Equally
    /// scored nodes rank by name, so the order in which insights arrived
    /// (list order in a simulation, any order over NATS) never changes a
    /// ranking.
    pub(crate) name_rank: Vec<u32>,
    index: HashMap<String, usize>,
    models: Vec<String>,
    model_index: HashMap<String, u16>,
    shapes: ShapeDistribution,
    /// Refresh the shape distribution after this many observed pods (0 = never).
    shape_refresh_every: u64,
    gpu_capacity_milli: u64,
    gpu_allocated_milli: u64,
    /// Available GPU capacity (milli-GPU) per interned model id.
    model_capacity: Vec<u64>,
    /// Free milli-GPU of available GPUs per interned model id.
    model_free: Vec<u64>,
    /// Share of the observed GPU demand that pods restricted to some models
    /// put on each model (see [`ClusterSnapshot::model_pressure`]), per
    /// interned model id.
    model_want: Vec<f64>,
    /// True when some observed GPU pod restricts its GPU models.
    constrained_demand: bool,
}

impl ClusterSnapshot {
    /// An empty snapshot with this shape distribution.
    pub fn new(shapes: ShapeDistribution) -> Self {
        Self {
            shapes,
            shape_refresh_every: 64,
            ..Self::default()
        }
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True without nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Looks a node up by name.
    pub fn node(&self, name: &str) -> Option<&NodeState> {
        self.index.get(name).map(|&i| &self.nodes[i].state)
    }

    /// All nodes in insertion order.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeState> + '_ {
        self.nodes.iter().map(|e| &e.state)
    }

    /// Current fragmentation of a node (milli-GPU), from the cache.
    pub fn fragmentation(&self, name: &str) -> Option<f64> {
        self.index.get(name).map(|&i| self.nodes[i].cache.frag)
    }

    /// Sum of free milli-GPU over all available GPUs.
    pub fn gpu_capacity_milli(&self) -> u64 {
        self.gpu_capacity_milli
    }

    /// Sum of allocated milli-GPU over all available GPUs.
    pub fn gpu_allocated_milli(&self) -> u64 {
        self.gpu_allocated_milli
    }

    /// The shape distribution in use.
    pub fn shapes(&self) -> &ShapeDistribution {
        &self.shapes
    }

    /// Replaces the shape distribution and recomputes every node's fragmentation.
    pub fn set_shapes(&mut self, shapes: ShapeDistribution) {
        self.shapes = shapes;
        self.recompute_all_frag();
        self.recompute_model_pressure();
    }

    /// How many observed pods trigger a refresh of the typical shapes (0 = only
    /// explicit [`ClusterSnapshot::refresh_shapes`]).
    pub fn set_shape_refresh_every(&mut self, pods: u64) {
        self.shape_refresh_every = pods;
    }

    /// Learns from one pod; refreshes the typical shapes (and every node's
    /// cached fragmentation) when enough pods have been seen since the last one.
    pub fn observe_pod(&mut self, demand: &PodDemand) {
        self.shapes.observe(demand);
        let first = self.shapes.typical().is_empty();
        if first
            || (self.shape_refresh_every > 0 && self.shapes.pending() >= self.shape_refresh_every)
        {
            self.refresh_shapes();
        }
    }

    /// Re-derives the typical shapes now.
    pub fn refresh_shapes(&mut self) {
        self.shapes.refresh();
        self.recompute_all_frag();
        self.recompute_model_pressure();
    }

    /// Inserts or replaces a node.
    pub fn upsert_node(&mut self, node: NodeState) {
        let models_before = self.models.len();
        let capacity_before = self.model_capacity.clone();
        let idx = match self.index.get(&node.name) {
            Some(&i) => {
                self.remove_totals(i);
                self.nodes[i].state = node;
                i
            }
            None => {
                let mut rank = 0u32;
                for (r, e) in self.name_rank.iter_mut().zip(&self.nodes) {
                    if e.state.name < node.name {
                        rank += 1;
                    } else {
                        *r += 1;
                    }
                }
                self.name_rank.push(rank);
                self.index.insert(node.name.clone(), self.nodes.len());
                self.nodes.push(NodeEntry {
                    state: node,
                    cache: NodeCache::default(),
                });
                self.hot.push(NodeHot::default());
                self.nodes.len() - 1
            }
        };
        self.recache(idx);
        // Only a change of capacity per model moves the pressure.
        if self.models.len() != models_before || self.model_capacity != capacity_before {
            self.recompute_model_pressure();
        }
    }

    /// Applies a node agent's insight, keeping the forecast and bind penalty
    /// that the insight does not carry.
    pub fn apply_insight(&mut self, insight: &ClusterInsight) -> Result<(), SnapshotError> {
        let mut node = NodeState::from_insight(insight)?;
        if let Some(old) = self.node(&node.name) {
            node.forecast = old.forecast.clone();
            node.bind_failure_penalty = old.bind_failure_penalty;
        }
        self.upsert_node(node);
        Ok(())
    }

    /// Removes a node.
    pub fn remove_node(&mut self, name: &str) -> Option<NodeState> {
        let idx = self.index.remove(name)?;
        self.remove_totals(idx);
        let entry = self.nodes.swap_remove(idx);
        self.hot.swap_remove(idx);
        let gone = self.name_rank.swap_remove(idx);
        for r in &mut self.name_rank {
            if *r > gone {
                *r -= 1;
            }
        }
        if idx < self.nodes.len() {
            let moved = self.nodes[idx].state.name.clone();
            self.index.insert(moved, idx);
        }
        self.recompute_model_pressure();
        Some(entry.state)
    }

    /// Edits one node in place and recomputes its cached data.
    pub fn update_node<F: FnOnce(&mut NodeState)>(
        &mut self,
        name: &str,
        f: F,
    ) -> Result<(), SnapshotError> {
        let idx = *self
            .index
            .get(name)
            .ok_or_else(|| SnapshotError::UnknownNode(name.to_string()))?;
        self.remove_totals(idx);
        f(&mut self.nodes[idx].state);
        self.nodes[idx].state.name = name.to_string();
        self.recache(idx);
        Ok(())
    }

    /// Sets (or clears) a node's forecast.
    pub fn set_forecast(
        &mut self,
        name: &str,
        forecast: Option<NodeForecast>,
    ) -> Result<(), SnapshotError> {
        self.update_node(name, |n| n.forecast = forecast)
    }

    /// Sets a node's bind-failure penalty (clamped to 0-1).
    pub fn set_bind_failure_penalty(
        &mut self,
        name: &str,
        penalty: f64,
    ) -> Result<(), SnapshotError> {
        let p = if penalty.is_finite() {
            penalty.clamp(0.0, 1.0)
        } else {
            1.0
        };
        let idx = *self
            .index
            .get(name)
            .ok_or_else(|| SnapshotError::UnknownNode(name.to_string()))?;
        self.nodes[idx].state.bind_failure_penalty = p;
        self.hot[idx].penalty = p;
        Ok(())
    }

    /// Places a pod on a node (CPU, memory and GPUs, the GPUs chosen the way
    /// FGD chooses them: the choice that adds the least fragmentation).
    pub fn assume(&mut self, node: &str, demand: &PodDemand) -> Result<Placement, SnapshotError> {
        demand.validate()?;
        let idx = *self
            .index
            .get(node)
            .ok_or_else(|| SnapshotError::UnknownNode(node.to_string()))?;
        let filter = self.model_filter(demand);
        let mut scratch = Vec::new();
        let pick = match self.fit_reason(idx, demand, &filter) {
            Some(reason) => {
                return Err(SnapshotError::DoesNotFit {
                    node: node.to_string(),
                    reason,
                })
            }
            None => {
                with_delta_memo(|memo| self.best_gpu_pick(idx, demand, &filter, &mut scratch, memo))
                    .0
            }
        };
        Ok(self.apply_pick(idx, demand, &filter, pick))
    }

    /// Undoes a placement made by [`ClusterSnapshot::assume`].
    pub fn forget(&mut self, placement: &Placement) -> Result<(), SnapshotError> {
        let idx = *self
            .index
            .get(&placement.node)
            .ok_or_else(|| SnapshotError::UnknownNode(placement.node.clone()))?;
        self.remove_totals(idx);
        let n = &mut self.nodes[idx].state;
        n.cpu_milli_allocated = n.cpu_milli_allocated.saturating_sub(placement.cpu_milli);
        n.memory_bytes_allocated = n
            .memory_bytes_allocated
            .saturating_sub(placement.memory_bytes);
        for &(g, milli) in &placement.gpus {
            if let Some(gpu) = n.gpus.get_mut(usize::from(g)) {
                gpu.allocated_milli = gpu.allocated_milli.saturating_sub(milli);
            }
        }
        self.recache(idx);
        Ok(())
    }

    // ---- crate-internal hot-path helpers -------------------------------------------------

    pub(crate) fn index_of(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    pub(crate) fn model_filter(&self, demand: &PodDemand) -> ModelFilter {
        if demand.gpu_models.is_empty() {
            return ModelFilter {
                any: true,
                ids: Vec::new(),
            };
        }
        ModelFilter {
            any: false,
            ids: demand
                .gpu_models
                .iter()
                .filter_map(|m| self.model_index.get(m.trim()).copied())
                .collect(),
        }
    }

    /// Why a pod does not fit a node right now (`None` = fits). Checks in the
    /// order: GPU model, CPU, memory, GPU capacity.
    pub(crate) fn fit_reason(
        &self,
        idx: usize,
        demand: &PodDemand,
        filter: &ModelFilter,
    ) -> Option<&'static str> {
        let h = &self.hot[idx];
        if demand.num_gpu > 0 {
            let allowed = if h.model != NO_MODEL {
                filter.allows(h.model)
            } else {
                self.nodes[idx]
                    .cache
                    .gpu_model
                    .iter()
                    .any(|&m| filter.allows(m))
            };
            if !allowed {
                return Some("gpu model");
            }
        }
        if h.cpu_free < demand.cpu_milli {
            return Some("cpu");
        }
        if h.mem_free < demand.memory_bytes {
            return Some("memory");
        }
        if demand.num_gpu > 0 {
            if h.max_free < demand.gpu_milli {
                return Some("gpu");
            }
            if h.model != NO_MODEL {
                // One model, and the pod may use it.
                if demand.num_gpu == 1 {
                    return None;
                }
                if demand.gpu_milli == MILLI_PER_GPU {
                    return (h.whole_free < demand.num_gpu).then_some("gpu");
                }
            }
            let c = &self.nodes[idx].cache;
            let fit = c
                .gpu_free
                .iter()
                .zip(&c.gpu_model)
                .filter(|(&f, &m)| f >= demand.gpu_milli && filter.allows(m))
                .count();
            if (fit as u64) < u64::from(demand.num_gpu) {
                return Some("gpu");
            }
        }
        None
    }

    /// The GPU choice adding the least fragmentation and that increase
    /// (milli-GPU). Assumes the pod fits (see `fit_reason`).
    ///
    /// A GPU-sharing pod considers each distinct free share once (GPUs with the
    /// same share and model are interchangeable; the first in device order is
    /// taken), smallest share first; ties go to the fuller GPU.
    pub(crate) fn best_gpu_pick(
        &self,
        idx: usize,
        demand: &PodDemand,
        filter: &ModelFilter,
        scratch: &mut Vec<u32>,
        memo: &mut DeltaMemo,
    ) -> (GpuPick, f64) {
        let h = &self.hot[idx];
        let cpu_after = h.frag_cpu_free.saturating_sub(demand.cpu_milli);
        if demand.num_gpu == 0 && h.gpu_free_total == 0 {
            return (GpuPick::None, 0.0);
        }
        let after_class = self.shapes.cpu_class(cpu_after);
        // Fragmentation sees CPU only through its class.
        if demand.num_gpu == 0 && after_class == h.cpu_class as usize {
            return (GpuPick::None, 0.0);
        }
        let c = &self.nodes[idx].cache;
        let Some(key) = self.memo_key(h, demand, filter, after_class) else {
            return self.compute_gpu_pick(c, demand, filter, cpu_after, scratch);
        };
        let version = self.shapes.version();
        let hit = if memo.version == version {
            memo.map.get(&key).copied()
        } else {
            None
        };
        let (delta, free) = match hit {
            Some(v) => v,
            None => {
                let (pick, delta) = self.compute_gpu_pick(c, demand, filter, cpu_after, scratch);
                let free = match pick {
                    GpuPick::Share(g) => c.gpu_free[usize::from(g)],
                    _ => PICK_NONE,
                };
                if memo.version != version || memo.map.len() >= MEMO_CAPACITY {
                    memo.map.clear();
                    memo.version = version;
                }
                memo.map.insert(key, (delta, free));
                return (pick, delta);
            }
        };
        let pick = if free == PICK_NONE {
            match demand.num_gpu {
                0 => GpuPick::None,
                _ if demand.is_gpu_sharing() => GpuPick::None,
                n => GpuPick::Whole(n),
            }
        } else {
            match c.gpu_free.iter().position(|&f| f == free) {
                Some(g) => GpuPick::Share(g as u16),
                None => GpuPick::None,
            }
        };
        (pick, delta)
    }

    /// The memo key of a placement, when the node's GPUs can be described by
    /// their sorted free shares alone (at most 8, one model the pod may use).
    fn memo_key(
        &self,
        h: &NodeHot,
        demand: &PodDemand,
        filter: &ModelFilter,
        after: usize,
    ) -> Option<u128> {
        if !h.keyed || (demand.num_gpu > 0 && (h.model == NO_MODEL || !filter.allows(h.model))) {
            return None;
        }
        let gpus = h.gpu_key;
        let before = h.cpu_class as usize;
        if before > 0x7F || demand.num_gpu > 0x7F || demand.gpu_milli > 0x3FF {
            return None;
        }
        Some(
            gpus | (before as u128) << 80
                | (after as u128) << 87
                | u128::from(demand.gpu_milli) << 94
                | u128::from(demand.num_gpu) << 104,
        )
    }

    fn compute_gpu_pick(
        &self,
        c: &NodeCache,
        demand: &PodDemand,
        filter: &ModelFilter,
        cpu_after: u64,
        scratch: &mut Vec<u32>,
    ) -> (GpuPick, f64) {
        scratch.clear();
        scratch.extend_from_slice(&c.gpu_free);
        if demand.num_gpu == 0 {
            let after = self.shapes.fragmentation(cpu_after, scratch);
            return (GpuPick::None, after - c.frag);
        }
        if demand.is_gpu_sharing() {
            let mut best: Option<(u16, f64, u32)> = None;
            let mut last: Option<u32> = None;
            loop {
                // Next distinct free share above the last one tried.
                let next = c
                    .gpu_free
                    .iter()
                    .zip(&c.gpu_model)
                    .filter(|(&f, &m)| {
                        f >= demand.gpu_milli && filter.allows(m) && last.is_none_or(|l| f > l)
                    })
                    .map(|(&f, _)| f)
                    .min();
                let Some(free) = next else { break };
                last = Some(free);
                // Interchangeable GPUs: each allowed model with this share once.
                for g in 0..c.gpu_free.len() {
                    let model = c.gpu_model[g];
                    if c.gpu_free[g] != free
                        || !filter.allows(model)
                        || c.gpu_free[..g]
                            .iter()
                            .zip(&c.gpu_model[..g])
                            .any(|(&f, &m)| f == free && m == model)
                    {
                        continue;
                    }
                    scratch[g] = free - demand.gpu_milli;
                    let after = self.shapes.fragmentation(cpu_after, scratch);
                    scratch[g] = free;
                    let delta = after - c.frag;
                    // Shares are tried smallest first: a tie keeps the fuller GPU.
                    if best.is_none_or(|(_, d, _)| delta < d - 1e-9) {
                        best = Some((g as u16, delta, free));
                    }
                }
            }
            return match best {
                Some((g, d, _)) => (GpuPick::Share(g), d),
                None => (GpuPick::None, f64::INFINITY),
            };
        }
        let mut need = demand.num_gpu;
        for (free, &model) in scratch.iter_mut().zip(&c.gpu_model) {
            if need == 0 {
                break;
            }
            if *free >= demand.gpu_milli && filter.allows(model) {
                *free -= demand.gpu_milli;
                need -= 1;
            }
        }
        let after = self.shapes.fragmentation(cpu_after, scratch);
        (GpuPick::Whole(demand.num_gpu), after - c.frag)
    }

    /// Applies a placement with an explicit GPU choice (policies that pick GPUs
    /// their own way use this). The caller has checked that the pod fits.
    pub(crate) fn apply_pick(
        &mut self,
        idx: usize,
        demand: &PodDemand,
        filter: &ModelFilter,
        pick: GpuPick,
    ) -> Placement {
        self.remove_totals(idx);
        let entry = &mut self.nodes[idx];
        let n = &mut entry.state;
        n.cpu_milli_allocated = n.cpu_milli_allocated.saturating_add(demand.cpu_milli);
        n.memory_bytes_allocated = n.memory_bytes_allocated.saturating_add(demand.memory_bytes);
        let mut gpus = Vec::new();
        match pick {
            GpuPick::None => {}
            GpuPick::Share(g) => {
                if let Some(gpu) = n.gpus.get_mut(usize::from(g)) {
                    gpu.allocated_milli = gpu.allocated_milli.saturating_add(demand.gpu_milli);
                    gpus.push((g, demand.gpu_milli));
                }
            }
            GpuPick::Whole(k) => {
                let mut need = k;
                for (g, gpu) in n.gpus.iter_mut().enumerate() {
                    if need == 0 {
                        break;
                    }
                    let model_ok = entry
                        .cache
                        .gpu_model
                        .get(g)
                        .is_some_and(|&m| filter.allows(m));
                    if model_ok && gpu.free_milli() >= demand.gpu_milli {
                        gpu.allocated_milli = gpu.allocated_milli.saturating_add(demand.gpu_milli);
                        gpus.push((g as u16, demand.gpu_milli));
                        need -= 1;
                    }
                }
            }
        }
        let placement = Placement {
            node: n.name.clone(),
            cpu_milli: demand.cpu_milli,
            memory_bytes: demand.memory_bytes,
            gpus,
        };
        self.recache(idx);
        placement
    }

    fn intern_model(&mut self, model: &str) -> u16 {
        if let Some(&id) = self.model_index.get(model) {
            return id;
        }
        let id = self.models.len().min(usize::from(u16::MAX)) as u16;
        self.models.push(model.to_string());
        self.model_index.insert(model.to_string(), id);
        id
    }

    fn remove_totals(&mut self, idx: usize) {
        let e = &self.nodes[idx];
        for (g, &m) in e.state.gpus.iter().zip(&e.cache.gpu_model) {
            if g.available {
                if let Some(k) = self.model_capacity.get_mut(usize::from(m)) {
                    *k = k.saturating_sub(u64::from(MILLI_PER_GPU));
                }
                if let Some(f) = self.model_free.get_mut(usize::from(m)) {
                    *f = f.saturating_sub(u64::from(g.free_milli()));
                }
            }
        }
        let c = &self.nodes[idx].cache;
        self.gpu_capacity_milli = self.gpu_capacity_milli.saturating_sub(c.gpu_capacity);
        self.gpu_allocated_milli = self
            .gpu_allocated_milli
            .saturating_sub(c.gpu_capacity - c.gpu_free_total.min(c.gpu_capacity));
    }

    fn recache(&mut self, idx: usize) {
        // Known models resolve without allocating; new ones are interned.
        let mut ids: Vec<u16> = Vec::with_capacity(self.nodes[idx].state.gpus.len());
        for g in 0..self.nodes[idx].state.gpus.len() {
            let name = self.nodes[idx].state.gpus[g].model.trim();
            let id = match self.model_index.get(name) {
                Some(&id) => id,
                None => {
                    let name = name.to_string();
                    self.intern_model(&name)
                }
            };
            ids.push(id);
        }
        let entry = &mut self.nodes[idx];
        let n = &entry.state;
        let c = &mut entry.cache;
        c.cpu_free = n.cpu_milli_free();
        c.mem_free = n.memory_bytes_free();
        c.frag_cpu_free = match &n.forecast {
            // Predicted usage above what is requested eats into the headroom that
            // future pods would get in practice.
            Some(f) if f.peak_cpu > 0.0 => {
                let predicted_free =
                    (n.cpu_milli_capacity as f64 * (1.0 - f.peak_cpu.min(1.0))).max(0.0) as u64;
                c.cpu_free.min(predicted_free.max(c.cpu_free / 2))
            }
            _ => c.cpu_free,
        };
        c.gpu_free.clear();
        c.gpu_free.extend(n.gpus.iter().map(GpuState::free_milli));
        c.gpu_model = ids;
        c.gpu_free_total = c.gpu_free.iter().map(|&g| u64::from(g)).sum();
        c.gpu_capacity =
            n.gpus.iter().filter(|g| g.available).count() as u64 * u64::from(MILLI_PER_GPU);
        c.max_free = c.gpu_free.iter().copied().max().unwrap_or(0);
        c.frag = self.shapes.fragmentation(c.frag_cpu_free, &c.gpu_free);
        c.uniform_model = match c.gpu_model.split_first() {
            Some((&m, rest)) if rest.iter().all(|&o| o == m) => Some(m),
            _ => None,
        };
        c.gpu_key = if c.uniform_model.is_some() {
            pack_gpu_state(&c.gpu_free)
        } else {
            None
        };
        self.hot[idx] = NodeHot {
            cpu_free: c.cpu_free,
            mem_free: c.mem_free,
            frag_cpu_free: c.frag_cpu_free,
            gpu_free_total: c.gpu_free_total,
            gpu_capacity: c.gpu_capacity,
            cpu_capacity: n.cpu_milli_capacity,
            inv_caps: 1.0 / (c.gpu_capacity.max(1) as f64 * n.cpu_milli_capacity.max(1) as f64),
            frag: c.frag,
            penalty: n.bind_failure_penalty,
            gpu_key: c.gpu_key.unwrap_or(0),
            max_free: c.max_free,
            cpu_class: self.shapes.cpu_class(c.frag_cpu_free) as u32,
            whole_free: c.gpu_free.iter().filter(|&&f| f == MILLI_PER_GPU).count() as u32,
            model: c.uniform_model.unwrap_or(NO_MODEL),
            keyed: c.gpu_key.is_some(),
            observed: n.usage.is_some() || n.forecast.is_some(),
            has_forecast: n.forecast.is_some(),
            csd: n.csd_available > 0,
        };
        self.gpu_capacity_milli += c.gpu_capacity;
        self.gpu_allocated_milli += c.gpu_capacity - c.gpu_free_total.min(c.gpu_capacity);
        let e = &self.nodes[idx];
        for (g, &m) in e.state.gpus.iter().zip(&e.cache.gpu_model) {
            if g.available {
                let m = usize::from(m);
                if self.model_capacity.len() <= m {
                    self.model_capacity.resize(m + 1, 0);
                    self.model_free.resize(m + 1, 0);
                }
                self.model_capacity[m] += u64::from(MILLI_PER_GPU);
                self.model_free[m] += u64::from(g.free_milli());
            }
        }
    }

    /// Recomputes each model's share of the restricted demand from the
    /// observed demand and the capacity per model. Each allowed-model list's
    /// demand is spread over its models in proportion to their capacity (the
    /// way the pods would spread if placed freely among them).
    fn recompute_model_pressure(&mut self) {
        let models = self.models.len();
        self.model_want.clear();
        self.model_want.resize(models, 0.0);
        self.constrained_demand = false;
        let total_demand = self.shapes.gpu_demand();
        if total_demand <= 0.0 {
            return;
        }
        let capacity = |id: u16| {
            self.model_capacity
                .get(usize::from(id))
                .copied()
                .unwrap_or(0)
        };
        let mut ids: Vec<u16> = Vec::new();
        for (allowed, demand) in self.shapes.model_demand() {
            if allowed.is_empty() {
                continue;
            }
            ids.clear();
            ids.extend(
                allowed
                    .iter()
                    .filter_map(|m| self.model_index.get(m).copied()),
            );
            let room: u64 = ids.iter().map(|&id| capacity(id)).sum();
            if room == 0 {
                continue;
            }
            self.constrained_demand = true;
            for &id in &ids {
                self.model_want[usize::from(id)] +=
                    demand / total_demand * capacity(id) as f64 / room as f64;
            }
        }
    }

    /// Pressure of each interned model (see [`ClusterSnapshot::model_pressure`]).
    pub(crate) fn model_pressures(&self, by_free: f64) -> Vec<f64> {
        let a = by_free.clamp(0.0, 1.0);
        let total_capacity = self.gpu_capacity_milli.max(1) as f64;
        let total_free = self
            .gpu_capacity_milli
            .saturating_sub(self.gpu_allocated_milli)
            .max(1) as f64;
        self.model_want
            .iter()
            .enumerate()
            .map(|(id, &want)| {
                if want <= 0.0 {
                    return 0.0;
                }
                let cap = self.model_capacity.get(id).copied().unwrap_or(0) as f64;
                let free = self.model_free.get(id).copied().unwrap_or(0) as f64;
                let room = (1.0 - a) * cap / total_capacity + a * free / total_free;
                if room > 0.0 {
                    want / room
                } else {
                    f64::INFINITY
                }
            })
            .collect()
    }

    /// How much of a GPU model the pods restricted to some models will want:
    /// the share of the observed GPU demand that such pods put on the model
    /// (each pod's demand spread over its allowed models by capacity),
    /// divided by the model's share of the cluster's GPU capacity
    /// (`by_free` = 0) or of its free GPU (`by_free` = 1), or a blend of the
    /// two. 0 for a model no restricted pod asks for; 1 when, as the
    /// workload fills the cluster, restricted pods alone would take the
    /// whole model. Unknown models have pressure 0.
    pub fn model_pressure(&self, model: &str, by_free: f64) -> f64 {
        self.model_index
            .get(model.trim())
            .and_then(|&id| self.model_pressures(by_free).get(usize::from(id)).copied())
            .unwrap_or(0.0)
    }

    /// True when some observed GPU pod restricts its GPU models to ones the
    /// cluster has (model pressure is then scored).
    pub fn has_model_pressure(&self) -> bool {
        self.constrained_demand
    }

    /// Model pressure of a node's GPUs from [`Self::model_pressures`] (mean
    /// over its GPUs; 0 without GPUs).
    pub(crate) fn node_model_pressure(&self, idx: usize, pressures: &[f64]) -> f64 {
        let h = &self.hot[idx];
        if h.model != NO_MODEL {
            return pressures.get(usize::from(h.model)).copied().unwrap_or(0.0);
        }
        let ids = &self.nodes[idx].cache.gpu_model;
        if ids.is_empty() {
            return 0.0;
        }
        ids.iter()
            .map(|&m| pressures.get(usize::from(m)).copied().unwrap_or(0.0))
            .sum::<f64>()
            / ids.len() as f64
    }

    fn recompute_all_frag(&mut self) {
        let shapes = &self.shapes;
        for (e, h) in self.nodes.iter_mut().zip(&mut self.hot) {
            e.cache.frag = shapes.fragmentation(e.cache.frag_cpu_free, &e.cache.gpu_free);
            h.frag = e.cache.frag;
            h.cpu_class = shapes.cpu_class(e.cache.frag_cpu_free) as u32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fgd::PodShape;

    fn shapes() -> ShapeDistribution {
        let s = |cpu, n, m| PodShape {
            cpu_milli: cpu,
            num_gpu: n,
            gpu_milli: m,
        };
        ShapeDistribution::from_weights([
            (s(4000, 1, 500), 4.0),
            (s(2000, 1, 250), 3.0),
            (s(8000, 2, 1000), 2.0),
            (s(1000, 0, 0), 1.0),
            (s(16000, 1, 1000), 1.0),
        ])
    }

    #[test]
    fn name_ranks_follow_insertions_and_removals() {
        let mut snap = ClusterSnapshot::new(shapes());
        for name in ["c", "a", "d", "b"] {
            snap.upsert_node(NodeState::new(name, 8_000, 1 << 34));
        }
        let ranks = |s: &ClusterSnapshot| -> Vec<(String, u32)> {
            let mut v: Vec<_> = s
                .nodes
                .iter()
                .zip(&s.name_rank)
                .map(|(e, r)| (e.state.name.clone(), *r))
                .collect();
            v.sort();
            v
        };
        let want = |names: &[&str]| -> Vec<(String, u32)> {
            names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.to_string(), i as u32))
                .collect()
        };
        assert_eq!(ranks(&snap), want(&["a", "b", "c", "d"]));
        // Replacing a node keeps its rank; removing one closes the gap.
        snap.upsert_node(NodeState::new("c", 16_000, 1 << 34));
        assert_eq!(ranks(&snap), want(&["a", "b", "c", "d"]));
        snap.remove_node("b");
        assert_eq!(ranks(&snap), want(&["a", "c", "d"]));
        snap.upsert_node(NodeState::new("bb", 8_000, 1 << 34));
        assert_eq!(ranks(&snap), want(&["a", "bb", "c", "d"]));
    }

    #[test]
    fn memoised_picks_equal_computed_ones() {
        let mut snap = ClusterSnapshot::new(shapes());
        // Same GPU state in a different device order, and a mixed-model node.
        let mut a = NodeState::new("a", 32_000, 1 << 36).with_gpus(4, "T4");
        for (g, alloc) in a.gpus.iter_mut().zip([750, 0, 500, 1000]) {
            g.allocated_milli = alloc;
        }
        let mut b = a.clone();
        b.name = "b".into();
        b.gpus.reverse();
        let mut c = NodeState::new("c", 9_000, 1 << 36)
            .with_gpus(2, "T4")
            .with_gpus(2, "A100");
        c.gpus[1].allocated_milli = 300;
        for n in [a, b, c] {
            snap.upsert_node(n);
        }
        let demands = [
            PodDemand::new(1000, 0).with_gpu(1, 250),
            PodDemand::new(3000, 0).with_gpu(1, 500),
            PodDemand::new(8000, 0).with_gpu(1, 200),
            PodDemand::new(2000, 0).with_gpu(2, 1000),
            PodDemand::new(5000, 0),
            PodDemand::new(1000, 0)
                .with_gpu(1, 500)
                .with_gpu_models(["T4"]),
        ];
        let mut scratch = Vec::new();
        for d in &demands {
            let filter = snap.model_filter(d);
            for idx in 0..snap.len() {
                if snap.fit_reason(idx, d, &filter).is_some() {
                    continue;
                }
                let c = &snap.nodes[idx].cache;
                let cpu_after = c.frag_cpu_free.saturating_sub(d.cpu_milli);
                let want = snap.compute_gpu_pick(c, d, &filter, cpu_after, &mut scratch);
                // First call fills the memo, the second reads it.
                for _ in 0..2 {
                    let got =
                        with_delta_memo(|m| snap.best_gpu_pick(idx, d, &filter, &mut scratch, m));
                    assert_eq!(got.0, want.0, "{d:?} on node {idx}");
                    assert!((got.1 - want.1).abs() < 1e-9, "{d:?} on node {idx}");
                }
            }
        }
        // Nodes a and b share their state: b's pick is the GPU with the same share.
        let d = PodDemand::new(1000, 0).with_gpu(1, 250);
        let filter = snap.model_filter(&d);
        let pick = |i| with_delta_memo(|m| snap.best_gpu_pick(i, &d, &filter, &mut Vec::new(), m));
        let (GpuPick::Share(ga), _) = pick(0) else {
            panic!("node a should take a share");
        };
        let (GpuPick::Share(gb), _) = pick(1) else {
            panic!("node b should take a share");
        };
        assert_eq!(
            snap.nodes[0].cache.gpu_free[usize::from(ga)],
            snap.nodes[1].cache.gpu_free[usize::from(gb)]
        );
    }
}
