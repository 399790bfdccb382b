//! Node scoring: which nodes can take a pod, and how good each one is.
//!
//! [`NodeScorer::rank`] makes one pass over the snapshot: cheap feasibility checks
//! first (counted per reason for the nodes they exclude), then the factors
//! below on the survivors, then a partial sort for the top N. Each factor is a
//! value in 0..=1 (higher is better); the composite is the weighted mean of
//! the factors that apply to this pod and node, multiplied by the bind-failure
//! discount, and mapped to the 1-100 score of `NodePreference`.
//!
//! | factor | applies when | value |
//! |---|---|---|
//! | packing | always (CPU-only pods: only while no observed pod restricts its GPU models, see [`ScoreWeights::constrained_cpu_pod_packing`]) | share of the node's GPU capacity allocated after the placement (CPU share on GPU-less nodes) |
//! | CPU surplus | CPU-only pod, and some observed pod restricts its GPU models (see [`ScoreWeights::cpu_surplus`]) | share of the pod's CPU the node gives without cutting into the CPU its free GPUs will need |
//! | GPU pod CPU surplus | GPU pod requesting CPU, once typical GPU shapes are known (see [`ScoreWeights::gpu_pod_cpu_surplus`]) | share of the pod's CPU the node gives without cutting into the CPU the GPUs left free after the placement will need |
//! | balance | always | `1 - abs(free GPU share - free CPU share)` after the placement (0.5 on GPU-less nodes) |
//! | model reserve | GPU pod, and some observed pod restricts its GPU models | `1 / (1 + pressure)` of the node's GPU model (see [`ClusterSnapshot::model_pressure`]): keeps the models that restricted pods need for them |
//! | fragmentation (FGD) | always | `1 / (1 + exp(dF / 1000))`, `dF` = increase of the node's GPU fragmentation in milli-GPU (see [`crate::fgd`]) rounded to `frag_resolution`; 0.5 = no change |
//! | headroom | node has measured usage or a forecast | `1 - max_r(max(usage_r, forecast_peak_r) + demand_r / capacity_r)` over CPU and memory (and GPU for GPU pods), clamped to 0..=1 |
//! | storage | pod has I/O hints | best device: `tier_fit * min(1, headroom / need) * (1 - utilisation / 2)` |
//! | CSD | pod benefits from or requires a CSD | 1 with an available CSD, else 0 |
//! | locality | pod names cache/data/upstream nodes | 1.0 cache node, 0.85 data node, 0.6 upstream node, else 0 |
//!
//! Bind-failure discount: `composite *= 1 - failure_penalty_weight * penalty`.
//! A forecast overload flag on a resource the pod uses excludes the node (or,
//! with `exclude_predicted_overload = false`, multiplies the composite by
//! `overload_discount`).

use std::cmp::Ordering;
use std::fmt::Write as _;

use crate::demand::{CsdNeed, PodDemand};
use crate::snapshot::{with_delta_memo, ClusterSnapshot, GpuPick, NodeState, StorageTier};

/// Factor weights and policy knobs. Defaults favour GPU packing (fragmentation)
/// and keep the other factors strong enough to move a pod between nodes that
/// are equally good for the GPUs.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreWeights {
    /// Fragmentation (FGD). Default 0.40.
    pub fragmentation: f64,
    /// Headroom on measured usage and forecast. Default 0.15.
    pub headroom: f64,
    /// Storage tier and I/O fit. Default 0.15.
    pub storage: f64,
    /// CSD availability. Default 0.10.
    pub csd: f64,
    /// Data locality. Default 0.20.
    pub locality: f64,
    /// GPU packing (share of the node's GPUs in use after placement): breaks
    /// near-ties between placements that fragment equally in favour of the
    /// fuller node. Default 0.01.
    pub packing: f64,
    /// CPU/GPU balance (free CPU share close to free GPU share after the
    /// placement): among placements that fragment about equally, prefers the
    /// one that leaves neither resource stranded by the other. Default 0.01
    /// (tuned on the openb traces with seeds 1-10, reported on 42-51).
    pub balance: f64,
    /// GPU-model reserve: steers GPU pods away from the GPU models that pods
    /// restricted to some models will need (high
    /// [`ClusterSnapshot::model_pressure`]) towards models with room to
    /// spare. Scored only once some observed pod restricts its models.
    /// Default 0.05.
    pub model_reserve: f64,
    /// How the model reserve measures a model's room: 0 = its share of the
    /// cluster's GPU capacity, 1 = its share of the free GPU (a model that
    /// fills faster than the rest is guarded harder, one left behind is
    /// opened up), in between a blend. Default 1.
    pub model_reserve_by_free: f64,
    /// Multiplier of the packing weight for pods without GPUs once some
    /// observed pod restricts its GPU models. Packing sends a CPU-only pod to
    /// the node whose GPUs are fullest; while the model reserve holds GPU
    /// pods off the scarce models, the partly used nodes of those models are
    /// the fullest, and without [`ScoreWeights::cpu_surplus`] CPU-only pods
    /// drained the CPU their remaining GPUs needed (on the openb cpu250 list
    /// with a third of the GPU pods restricted, 19 % of the G3 GPUs sat free
    /// on nodes short of CPU). With the surplus factor guarding that CPU,
    /// packing helps again. Default 1 (tuned with seeds 1-10, reported on
    /// 42-51).
    pub constrained_cpu_pod_packing: f64,
    /// CPU surplus for pods without GPUs once some observed pod restricts its
    /// GPU models: the share of the pod's CPU that comes out of CPU the
    /// node's free GPUs will not need (free GPU times the typical GPU pods'
    /// CPU per GPU, [`crate::fgd::ShapeDistribution::cpu_per_gpu`]). Sends
    /// CPU-only pods to CPU the GPU pods cannot use, so GPUs are not left
    /// free on nodes without the CPU to use them.
    /// Default 0.05 (tuned with seeds 1-10, reported on 42-51).
    pub cpu_surplus: f64,
    /// Multiplier of the CPU per GPU that the CPU surplus counts a free GPU
    /// to need (1 = the typical GPU shapes' mean). Default 1.
    pub cpu_surplus_need: f64,
    /// Multiplier of [`ScoreWeights::cpu_surplus`] while no observed pod
    /// restricts its GPU models. Default 0.
    pub cpu_surplus_unconstrained: f64,
    /// CPU surplus for GPU pods: the share of the pod's CPU that comes out
    /// of CPU the GPUs left free after the placement will not need (their
    /// count times [`ScoreWeights::gpu_pod_cpu_surplus_need`] times the
    /// typical GPU pods' CPU per GPU). Keeps a GPU pod that asks for much
    /// CPU off nodes whose remaining GPUs would then sit free for want of
    /// CPU: on the openb multigpu50 list most of the GPU still free when
    /// the pods stop fitting was on CPU-short G2 nodes. Default 0.3 (tuned
    /// with seeds 1-10, reported on 42-51).
    pub gpu_pod_cpu_surplus: f64,
    /// Multiplier of the typical CPU per GPU that
    /// [`ScoreWeights::gpu_pod_cpu_surplus`] reserves for each GPU left
    /// free. Default 0.5: a free GPU is counted to need half the typical
    /// CPU (at 1 the factor drives GPU pods to CPU-rich nodes and strands
    /// their CPU; tuned with seeds 1-10).
    pub gpu_pod_cpu_surplus_need: f64,
    /// Resolution (milli-GPU) at which fragmentation increases are told apart:
    /// increases are rounded to a multiple of it, so placements that fragment
    /// almost equally are decided by packing and then by node name (which
    /// fills nodes in turn and keeps the rest whole). 0 = exact. Default 40
    /// (about one point of the published FGD score; tuned on the openb traces
    /// with seeds 1-10, reported on 42-51).
    pub frag_resolution: f64,
    /// Strength of the bind-failure discount. Default 0.5 (a node whose binds
    /// keep failing keeps half its score).
    pub failure_penalty: f64,
    /// Drop nodes predicted to overload on a resource the pod uses. Default true.
    pub exclude_predicted_overload: bool,
    /// Multiplier for predicted-overload nodes when they are not excluded. Default 0.2.
    pub overload_discount: f64,
}

impl Default for ScoreWeights {
    fn default() -> Self {
        Self {
            fragmentation: 0.40,
            headroom: 0.15,
            storage: 0.15,
            csd: 0.10,
            locality: 0.20,
            packing: 0.01,
            balance: 0.01,
            model_reserve: 0.05,
            model_reserve_by_free: 1.0,
            constrained_cpu_pod_packing: 1.0,
            cpu_surplus: 0.05,
            cpu_surplus_need: 1.0,
            cpu_surplus_unconstrained: 0.0,
            gpu_pod_cpu_surplus: 0.3,
            gpu_pod_cpu_surplus_need: 0.5,
            frag_resolution: 40.0,
            failure_penalty: 0.5,
            exclude_predicted_overload: true,
            overload_discount: 0.2,
        }
    }
}

/// Counts of nodes excluded, per first failing check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exclusions {
    /// No GPU of an allowed model.
    pub gpu_model: u32,
    /// Not enough free CPU.
    pub cpu: u32,
    /// Not enough free memory.
    pub memory: u32,
    /// Not enough free GPU (share or whole GPUs).
    pub gpu: u32,
    /// CSD required but none available.
    pub csd: u32,
    /// Overload predicted within the forecast horizon.
    pub predicted_overload: u32,
}

impl Exclusions {
    /// Nodes excluded in total.
    pub fn total(&self) -> u32 {
        self.gpu_model + self.cpu + self.memory + self.gpu + self.csd + self.predicted_overload
    }

    /// (reason, count) pairs with a non-zero count, for messages and metrics.
    pub fn nonzero(&self) -> Vec<(&'static str, u32)> {
        [
            ("gpu model", self.gpu_model),
            ("cpu", self.cpu),
            ("memory", self.memory),
            ("gpu", self.gpu),
            ("csd", self.csd),
            ("predicted overload", self.predicted_overload),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect()
    }
}

/// One ranked node.
#[derive(Debug, Clone, PartialEq)]
pub struct RankedNode {
    /// Node name.
    pub node: String,
    /// Score 1-100.
    pub score: i32,
    /// Composite before mapping to 1-100 (ordering key).
    pub composite: f64,
    /// Factors that decided the score, e.g. `fgd +0m gpu1, locality cache`.
    pub reason: String,
    /// Increase of the node's GPU fragmentation (milli-GPU) from this placement.
    pub frag_delta: f64,
}

/// Result of [`NodeScorer::rank`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ranking {
    /// Best feasible nodes, best first (at most `top_n`).
    pub top: Vec<RankedNode>,
    /// Number of feasible nodes.
    pub feasible: usize,
    /// Why the other nodes were excluded.
    pub excluded: Exclusions,
}

/// Scores nodes for a pod; stateless apart from its weights, so one instance
/// serves all requests.
#[derive(Debug, Clone)]
pub struct NodeScorer {
    weights: ScoreWeights,
    /// `frag_value(k * frag_resolution)` for k in -FRAG_TABLE..=FRAG_TABLE
    /// (empty when the resolution is 0): no `exp` per node.
    frag_table: Vec<f64>,
}

impl Default for NodeScorer {
    fn default() -> Self {
        Self::new(ScoreWeights::default())
    }
}

/// Half-width of the precomputed fragmentation-factor table.
const FRAG_TABLE: i64 = 1024;

#[derive(Debug, Clone, Copy)]
struct Candidate {
    idx: u32,
    /// The node's position in name order: breaks ties.
    order: u32,
    composite: f64,
    frag_delta: f64,
    pick: GpuPick,
    locality: f32,
    storage: f32,
    headroom: f32,
    overloaded: bool,
}

/// Largest `top_n` kept by insertion while scanning; larger ones collect
/// every candidate and select.
const INSERT_TOP_MAX: usize = 64;

fn cmp_candidates(a: &Candidate, b: &Candidate) -> Ordering {
    // Best first; ties by node name so results do not depend on the order in
    // which nodes became known.
    b.composite
        .total_cmp(&a.composite)
        .then_with(|| a.order.cmp(&b.order))
}

impl NodeScorer {
    /// A scorer with these weights.
    pub fn new(weights: ScoreWeights) -> Self {
        let step = weights.frag_resolution;
        let frag_table = if step > 0.0 && step.is_finite() {
            (-FRAG_TABLE..=FRAG_TABLE)
                .map(|k| frag_value(k as f64 * step))
                .collect()
        } else {
            Vec::new()
        };
        Self {
            weights,
            frag_table,
        }
    }

    /// The fragmentation factor of an increase, at the configured resolution.
    fn frag_factor(&self, delta: f64) -> f64 {
        let step = self.weights.frag_resolution;
        if !self.frag_table.is_empty() {
            let r = delta / step;
            if r.abs() < FRAG_TABLE as f64 {
                let k = round_half_away(r);
                return self.frag_table[(k + FRAG_TABLE) as usize];
            }
        }
        frag_value(quantise(delta, step))
    }

    /// The weights in use.
    pub fn weights(&self) -> &ScoreWeights {
        &self.weights
    }

    /// Ranks the feasible nodes for `demand`, returning the best `top_n`.
    pub fn rank(&self, snapshot: &ClusterSnapshot, demand: &PodDemand, top_n: usize) -> Ranking {
        let mut out = Ranking::default();
        if demand.validate().is_err() {
            // A malformed demand fits nowhere; count it against GPU capacity.
            out.excluded.gpu = snapshot.len() as u32;
            return out;
        }
        let filter = snapshot.model_filter(demand);
        let locality = LocalityIdx::new(snapshot, demand);
        let w = &self.weights;
        let mut scratch = Vec::with_capacity(16);
        let pressures =
            if w.model_reserve > 0.0 && demand.num_gpu > 0 && snapshot.has_model_pressure() {
                snapshot.model_pressures(w.model_reserve_by_free)
            } else {
                Vec::new()
            };
        // The best `top_n` so far, best first (or every candidate when many
        // are asked for).
        let bounded = top_n <= INSERT_TOP_MAX;
        let mut cands: Vec<Candidate> =
            Vec::with_capacity(if bounded { top_n } else { snapshot.len() });
        let mut feasible = 0usize;
        let gpu_total = demand.gpu_milli_total();
        let w_packing = if demand.num_gpu == 0 && snapshot.has_model_pressure() {
            w.packing * w.constrained_cpu_pod_packing
        } else {
            w.packing
        };
        let w_balance = w.balance;
        let w_surplus = match (demand.num_gpu, snapshot.has_model_pressure()) {
            (0, true) => w.cpu_surplus,
            (0, false) => w.cpu_surplus * w.cpu_surplus_unconstrained,
            _ => 0.0,
        };
        let cpu_per_gpu = snapshot.shapes().cpu_per_gpu() * w.cpu_surplus_need;
        let (w_gpu_surplus, gpu_pod_cpu_per_gpu) = if demand.num_gpu > 0 && demand.cpu_milli > 0 {
            (
                w.gpu_pod_cpu_surplus,
                snapshot.shapes().cpu_per_gpu() * w.gpu_pod_cpu_surplus_need,
            )
        } else {
            (0.0, 0.0)
        };
        with_delta_memo(|memo| {
            for (idx, entry) in snapshot.nodes.iter().enumerate() {
                match snapshot.fit_reason(idx, demand, &filter) {
                    Some("gpu model") => {
                        out.excluded.gpu_model += 1;
                        continue;
                    }
                    Some("cpu") => {
                        out.excluded.cpu += 1;
                        continue;
                    }
                    Some("memory") => {
                        out.excluded.memory += 1;
                        continue;
                    }
                    Some(_) => {
                        out.excluded.gpu += 1;
                        continue;
                    }
                    None => {}
                }
                let node = &entry.state;
                let hot = &snapshot.hot[idx];
                if demand.csd == CsdNeed::Requires && !hot.csd {
                    out.excluded.csd += 1;
                    continue;
                }
                let overloaded = hot.has_forecast && predicted_overload(node, demand);
                if overloaded && w.exclude_predicted_overload {
                    out.excluded.predicted_overload += 1;
                    continue;
                }

                let (pick, frag_delta) =
                    snapshot.best_gpu_pick(idx, demand, &filter, &mut scratch, memo);
                let (packing, balance) = packing_and_balance(hot, demand.cpu_milli, gpu_total);
                let mut num = w.fragmentation * self.frag_factor(frag_delta)
                    + w_packing * packing
                    + w_balance * balance;
                let mut den = w.fragmentation + w_packing + w_balance;
                if w_surplus > 0.0 {
                    num += w_surplus * cpu_surplus(hot, demand.cpu_milli, 0, cpu_per_gpu);
                    den += w_surplus;
                }
                if w_gpu_surplus > 0.0 {
                    num += w_gpu_surplus
                        * cpu_surplus(hot, demand.cpu_milli, gpu_total, gpu_pod_cpu_per_gpu);
                    den += w_gpu_surplus;
                }
                if !pressures.is_empty() {
                    num += w.model_reserve / (1.0 + snapshot.node_model_pressure(idx, &pressures));
                    den += w.model_reserve;
                }
                let mut headroom = -1.0f32;
                if hot.observed {
                    let h = headroom_value(node, demand);
                    headroom = h as f32;
                    num += w.headroom * h;
                    den += w.headroom;
                }
                let mut storage = -1.0f32;
                if demand.io.is_set() {
                    let s = storage_value(node, demand);
                    storage = s as f32;
                    num += w.storage * s;
                    den += w.storage;
                }
                if demand.csd != CsdNeed::None {
                    num += w.csd * if hot.csd { 1.0 } else { 0.0 };
                    den += w.csd;
                }
                let mut loc = -1.0f32;
                if locality.active {
                    let l = locality.value(idx);
                    loc = l as f32;
                    num += w.locality * l;
                    den += w.locality;
                }
                let mut composite = if den > 0.0 { num / den } else { 0.0 };
                if hot.penalty > 0.0 {
                    composite *= 1.0 - (w.failure_penalty * hot.penalty).clamp(0.0, 1.0);
                }
                if overloaded {
                    composite *= w.overload_discount.clamp(0.0, 1.0);
                }
                feasible += 1;
                let cand = Candidate {
                    idx: idx as u32,
                    order: snapshot.name_rank[idx],
                    composite,
                    frag_delta,
                    pick,
                    locality: loc,
                    storage,
                    headroom,
                    overloaded,
                };
                if !bounded {
                    cands.push(cand);
                } else if top_n > 0
                    && (cands.len() < top_n
                        || cands
                            .last()
                            .is_some_and(|w| cmp_candidates(&cand, w) == Ordering::Less))
                {
                    let pos = cands.partition_point(|c| cmp_candidates(c, &cand) == Ordering::Less);
                    if cands.len() == top_n {
                        cands.pop();
                    }
                    cands.insert(pos, cand);
                }
            }
        });

        out.feasible = feasible;
        let n = top_n.min(cands.len());
        if n > 0 {
            if n < cands.len() {
                cands.select_nth_unstable_by(n - 1, cmp_candidates);
                cands.truncate(n);
            }
            cands.sort_unstable_by(cmp_candidates);
            out.top = cands
                .iter()
                .map(|c| {
                    let node = &snapshot.nodes[c.idx as usize].state;
                    RankedNode {
                        node: node.name.clone(),
                        score: (1.0 + 99.0 * c.composite.clamp(0.0, 1.0)).round() as i32,
                        composite: c.composite,
                        reason: reason(node, demand, c),
                        frag_delta: c.frag_delta,
                    }
                })
                .collect();
        }
        out
    }

    /// True when the pod would fit `node` if nothing were allocated on it
    /// (capacity, GPU count and model, required CSD). A pod that fits no node
    /// even when empty can be rejected outright.
    pub fn fits_when_empty(node: &NodeState, demand: &PodDemand) -> bool {
        if demand.validate().is_err()
            || node.cpu_milli_capacity < demand.cpu_milli
            || node.memory_bytes_capacity < demand.memory_bytes
            || (demand.csd == CsdNeed::Requires && node.csd_available == 0)
        {
            return false;
        }
        if demand.num_gpu == 0 {
            return true;
        }
        let usable = node
            .gpus
            .iter()
            .filter(|g| g.available)
            .filter(|g| {
                demand.gpu_models.is_empty()
                    || demand.gpu_models.iter().any(|m| m.trim() == g.model.trim())
            })
            .count();
        usable as u64 >= u64::from(demand.num_gpu)
    }

    /// True when some node of the snapshot could take the pod if it were empty.
    pub fn fits_anywhere_when_empty(snapshot: &ClusterSnapshot, demand: &PodDemand) -> bool {
        snapshot.nodes().any(|n| Self::fits_when_empty(n, demand))
    }
}

/// Rounds a fragmentation increase to a multiple of `step` (exact when
/// `step` is 0 or not finite).
fn quantise(delta: f64, step: f64) -> f64 {
    let r = delta / step;
    if step > 0.0 && r.is_finite() && r.abs() < 1e15 {
        // Half away from zero, without a libm call.
        let n = if r >= 0.0 {
            (r + 0.5) as i64
        } else {
            (r - 0.5) as i64
        };
        n as f64 * step
    } else {
        delta
    }
}

/// Rounds half away from zero without a libm call; `r` must be finite and
/// well inside the `i64` range.
fn round_half_away(r: f64) -> i64 {
    if r >= 0.0 {
        (r + 0.5) as i64
    } else {
        (r - 0.5) as i64
    }
}

/// Maps a fragmentation increase (milli-GPU) to 0..=1, 0.5 for no change.
fn frag_value(delta: f64) -> f64 {
    if delta == 0.0 {
        return 0.5;
    }
    if !delta.is_finite() {
        return 0.0;
    }
    1.0 / (1.0 + (delta / 1000.0).exp())
}

/// Packing and balance factors of a placement of `cpu_milli` and `gpu_milli`
/// (no division: they run for every feasible node).
///
/// Packing: share of the node's GPU capacity in use after the placement (CPU
/// share for nodes without GPUs). Packing GPUs (not CPU: CPU packing on GPU
/// nodes strands their GPUs) makes pods that fragment equally go to the
/// fuller node.
///
/// Balance: how closely the node's free CPU share tracks its free GPU share
/// after the placement (0.5 on GPU-less nodes). A GPU node whose CPU runs out
/// first strands its free GPUs, one whose GPUs run out first strands CPU that
/// CPU-only pods could have used elsewhere; keeping both in step keeps the
/// node usable for the shapes to come.
fn packing_and_balance(c: &crate::snapshot::NodeHot, cpu_milli: u64, gpu_milli: u64) -> (f64, f64) {
    let cpu_left = c.cpu_free.saturating_sub(cpu_milli) as f64;
    let cpu_cap = c.cpu_capacity.max(1) as f64;
    if c.gpu_capacity == 0 {
        return ((1.0 - cpu_left * c.inv_caps).clamp(0.0, 1.0), 0.5);
    }
    let gpu_left = c.gpu_free_total.saturating_sub(gpu_milli) as f64;
    let gpu_share = gpu_left * cpu_cap * c.inv_caps;
    let cpu_share = cpu_left * c.gpu_capacity as f64 * c.inv_caps;
    (
        (1.0 - gpu_share).clamp(0.0, 1.0),
        (1.0 - (gpu_share - cpu_share).abs()).clamp(0.0, 1.0),
    )
}

/// Share of a pod's `cpu_milli` that the node can give without touching the
/// CPU its free GPUs (less the `gpu_taken` milli-GPU the pod itself takes)
/// will need when typical GPU pods (`cpu_per_gpu` milli-cores per GPU) fill
/// them: 1 = all of it from surplus, 0 = all of it from CPU that leaves free
/// GPUs short.
fn cpu_surplus(
    c: &crate::snapshot::NodeHot,
    cpu_milli: u64,
    gpu_taken: u64,
    cpu_per_gpu: f64,
) -> f64 {
    let gpu_left = c.gpu_free_total.saturating_sub(gpu_taken);
    if cpu_milli == 0 || gpu_left == 0 {
        return 1.0;
    }
    let need = gpu_left as f64 / f64::from(crate::demand::MILLI_PER_GPU) * cpu_per_gpu;
    let after = c.cpu_free.saturating_sub(cpu_milli) as f64;
    let short = (need - after).clamp(0.0, cpu_milli as f64);
    1.0 - short / cpu_milli as f64
}

fn predicted_overload(node: &NodeState, demand: &PodDemand) -> bool {
    let Some(f) = &node.forecast else {
        return false;
    };
    f.overload_cpu
        || f.overload_memory
        || (demand.num_gpu > 0 && f.overload_gpu)
        || (demand.io.is_set() && f.overload_io)
}

fn headroom_value(node: &NodeState, demand: &PodDemand) -> f64 {
    let u = node.usage.clone().unwrap_or_default();
    let (pc, pm, pg) = node
        .forecast
        .as_ref()
        .map(|f| (f.peak_cpu, f.peak_memory, f.peak_gpu))
        .unwrap_or((0.0, 0.0, 0.0));
    let share = |d: f64, cap: f64| if cap > 0.0 { d / cap } else { 1.0 };
    let cpu = u.cpu.max(pc) + share(demand.cpu_milli as f64, node.cpu_milli_capacity as f64);
    let mem = u.memory.max(pm)
        + share(
            demand.memory_bytes as f64,
            node.memory_bytes_capacity as f64,
        );
    let mut worst = cpu.max(mem);
    if demand.num_gpu > 0 && !node.gpus.is_empty() {
        let gpu = u.gpu.max(pg)
            + share(
                demand.gpu_milli_total() as f64,
                node.gpus.len() as f64 * 1000.0,
            );
        worst = worst.max(gpu);
    }
    (1.0 - worst).clamp(0.0, 1.0)
}

fn tier_fit(tier: StorageTier, demand: &PodDemand) -> f64 {
    if let Some(want) = demand.io.tier {
        return match (tier as i32) - (want as i32) {
            0 => 1.0,
            d if d < 0 => 0.8, // faster than asked: fine, but wasteful
            1 => 0.4,
            _ => 0.1,
        };
    }
    let random = demand.io.pattern.is_random() || demand.io.iops > 0;
    match (tier, random) {
        (StorageTier::Nvme, _) => 1.0,
        (StorageTier::Ssd, true) => 0.7,
        (StorageTier::Ssd, false) => 0.9,
        (StorageTier::Hdd, true) => 0.1,
        (StorageTier::Hdd, false) => 0.5,
    }
}

fn storage_value(node: &NodeState, demand: &PodDemand) -> f64 {
    let mut best = 0.0f64;
    for d in &node.storage {
        let mut v = tier_fit(d.tier, demand);
        if demand.io.throughput_mbps > 0.0 {
            v *= (d.throughput_headroom_mbps / demand.io.throughput_mbps).clamp(0.0, 1.0);
        }
        if demand.io.iops > 0 {
            v *= (d.iops_headroom as f64 / demand.io.iops as f64).clamp(0.0, 1.0);
        }
        v *= 1.0 - d.utilisation.clamp(0.0, 1.0) / 2.0;
        best = best.max(v);
    }
    best
}

/// Locality hints resolved to node indices once per request.
struct LocalityIdx {
    active: bool,
    cache: Vec<usize>,
    data: Vec<usize>,
    upstream: Vec<usize>,
}

impl LocalityIdx {
    fn new(snapshot: &ClusterSnapshot, demand: &PodDemand) -> Self {
        let resolve = |names: &[String]| {
            names
                .iter()
                .filter_map(|n| snapshot.index_of(n))
                .collect::<Vec<_>>()
        };
        let l = &demand.locality;
        Self {
            active: l.is_set(),
            cache: resolve(&l.cache_nodes),
            data: resolve(&l.data_nodes),
            upstream: resolve(&l.upstream_nodes),
        }
    }

    fn value(&self, idx: usize) -> f64 {
        if self.cache.contains(&idx) {
            1.0
        } else if self.data.contains(&idx) {
            0.85
        } else if self.upstream.contains(&idx) {
            0.6
        } else {
            0.0
        }
    }
}

fn reason(node: &NodeState, demand: &PodDemand, c: &Candidate) -> String {
    let mut s = String::with_capacity(64);
    let _ = write!(s, "fgd {:+.0}m", c.frag_delta);
    match c.pick {
        GpuPick::Share(g) => {
            let _ = write!(s, " gpu{g}");
        }
        GpuPick::Whole(k) => {
            let _ = write!(s, " {k}gpu");
        }
        GpuPick::None => {}
    }
    if c.headroom >= 0.0 {
        let _ = write!(s, ", headroom {:.2}", c.headroom);
    }
    if c.storage >= 0.0 {
        let _ = write!(s, ", io fit {:.2}", c.storage);
    }
    if demand.csd != CsdNeed::None {
        s.push_str(if node.csd_available > 0 {
            ", csd"
        } else {
            ", no csd"
        });
    }
    if c.locality > 0.99 {
        s.push_str(", cache-local");
    } else if c.locality > 0.8 {
        s.push_str(", data-local");
    } else if c.locality > 0.5 {
        s.push_str(", upstream-local");
    }
    if node.bind_failure_penalty > 0.0 {
        let _ = write!(s, ", bind-fail penalty {:.2}", node.bind_failure_penalty);
    }
    if c.overloaded {
        s.push_str(", overload predicted");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fgd::ShapeDistribution;

    const GIB: u64 = 1 << 30;

    /// Two T4 GPUs and eight G2 GPUs; a quarter of the GPU demand may run
    /// only on T4, the rest anywhere.
    fn cluster() -> ClusterSnapshot {
        let any = PodDemand::new(1000, GIB).with_gpu(1, 1000);
        let t4_only = any.clone().with_gpu_models(["T4"]);
        let seen: Vec<PodDemand> = std::iter::repeat_n(any, 6)
            .chain(std::iter::repeat_n(t4_only, 2))
            .collect();
        let mut s = ClusterSnapshot::new(ShapeDistribution::from_pods(seen.iter(), 1.0));
        s.upsert_node(NodeState::new("a-t4", 32_000, 128 * GIB).with_gpus(2, "T4"));
        s.upsert_node(NodeState::new("b-g2", 32_000, 128 * GIB).with_gpus(8, "G2"));
        s
    }

    /// Places `pod` on the scorer's top node; false when nothing fits.
    fn place(scorer: &NodeScorer, s: &mut ClusterSnapshot, pod: &PodDemand) -> Option<String> {
        let top = scorer.rank(s, pod, 1).top.first()?.node.clone();
        s.assume(&top, pod).ok()?;
        Some(top)
    }

    #[test]
    fn model_pressure_reflects_restricted_demand() {
        let s = cluster();
        assert!(s.has_model_pressure());
        // A quarter of the demand on a fifth of the capacity.
        assert!((s.model_pressure("T4", 0.0) - 1.25).abs() < 1e-9);
        assert_eq!(s.model_pressure("G2", 0.0), 0.0);
        assert_eq!(s.model_pressure("A100", 1.0), 0.0);
        // Nothing restricted observed: no pressure anywhere.
        let mut plain = ClusterSnapshot::new(ShapeDistribution::from_pods(
            [PodDemand::new(1000, GIB).with_gpu(1, 1000)].iter(),
            1.0,
        ));
        plain.upsert_node(NodeState::new("a-t4", 32_000, 128 * GIB).with_gpus(2, "T4"));
        assert!(!plain.has_model_pressure());
        assert_eq!(plain.model_pressure("T4", 1.0), 0.0);
    }

    #[test]
    fn unrestricted_pods_leave_the_scarce_model_to_the_pods_that_need_it() {
        let any = PodDemand::new(1000, GIB).with_gpu(1, 1000);
        let t4_only = any.clone().with_gpu_models(["T4"]);

        // Without the reserve the small T4 node wins on packing (fragmentation
        // is equal), two unrestricted pods fill it, and the T4 pods that come
        // next fit nowhere although six G2 GPUs are idle.
        let blind = NodeScorer::new(ScoreWeights {
            model_reserve: 0.0,
            ..ScoreWeights::default()
        });
        let mut s = cluster();
        assert_eq!(place(&blind, &mut s, &any).as_deref(), Some("a-t4"));
        assert_eq!(place(&blind, &mut s, &any).as_deref(), Some("a-t4"));
        assert_eq!(place(&blind, &mut s, &t4_only), None);

        // With it (the default) they go to G2 and both T4 pods find room.
        let scorer = NodeScorer::default();
        let mut s = cluster();
        assert_eq!(place(&scorer, &mut s, &any).as_deref(), Some("b-g2"));
        assert_eq!(place(&scorer, &mut s, &any).as_deref(), Some("b-g2"));
        assert_eq!(place(&scorer, &mut s, &t4_only).as_deref(), Some("a-t4"));
        assert_eq!(place(&scorer, &mut s, &t4_only).as_deref(), Some("a-t4"));
        // A T4 pod is never sent elsewhere, pressure or not.
        assert_eq!(place(&scorer, &mut s, &t4_only), None);
        // Once G2 is the only model left, unrestricted pods still use it all.
        for _ in 0..6 {
            assert_eq!(place(&scorer, &mut s, &any).as_deref(), Some("b-g2"));
        }
        assert_eq!(place(&scorer, &mut s, &any), None);
    }

    /// The pods seen so far: six of `any` and two restricted to T4 (a
    /// quarter); returns `any`, its T4-only form and the list.
    fn quarter_t4_only(any: PodDemand) -> (PodDemand, PodDemand, Vec<PodDemand>) {
        let t4_only = any.clone().with_gpu_models(["T4"]);
        let seen = std::iter::repeat_n(any.clone(), 6)
            .chain(std::iter::repeat_n(t4_only.clone(), 2))
            .collect();
        (any, t4_only, seen)
    }

    #[test]
    fn cpu_only_pods_leave_the_cpu_of_scarce_model_nodes_to_their_gpus() {
        let (any, t4_only, seen) = quarter_t4_only(PodDemand::new(1000, GIB).with_gpu(1, 1000));
        // A T4 node with one of its two GPUs in use, a G2 node with two of
        // eight: the T4 node's GPUs are the fuller ones.
        let cluster = || {
            let mut s = ClusterSnapshot::new(ShapeDistribution::from_pods(seen.iter(), 1.0));
            s.upsert_node(NodeState::new("a-g2", 32_000, 128 * GIB).with_gpus(8, "G2"));
            s.upsert_node(NodeState::new("b-t4", 16_000, 128 * GIB).with_gpus(2, "T4"));
            s.assume("b-t4", &t4_only).unwrap();
            s.assume("a-g2", &any).unwrap();
            s.assume("a-g2", &any).unwrap();
            assert!(s.has_model_pressure());
            s
        };
        let cpu_only = PodDemand::new(4000, GIB);
        let cpu_hungry_t4 = PodDemand::new(12_000, GIB)
            .with_gpu(1, 1000)
            .with_gpu_models(["T4"]);

        // Packing for CPU-only pods: the CPU-only pod goes
        // to the T4 node, the fuller one, and the T4 pod that needs its CPU
        // fits nowhere although a T4 GPU is free.
        // The surplus factor is left out here: with one core per GPU
        // typical, both nodes have CPU to spare, and it cannot tell them apart.
        let packing = NodeScorer::new(ScoreWeights {
            constrained_cpu_pod_packing: 1.0,
            cpu_surplus: 0.0,
            ..ScoreWeights::default()
        });
        let mut s = cluster();
        assert_eq!(place(&packing, &mut s, &cpu_only).as_deref(), Some("b-t4"));
        assert_eq!(place(&packing, &mut s, &cpu_hungry_t4), None);

        // Without it (the default before the surplus factor) balance sends
        // it to the G2 node and the T4 pod gets the last T4 GPU.
        let scorer = NodeScorer::new(ScoreWeights {
            constrained_cpu_pod_packing: 0.0,
            cpu_surplus: 0.0,
            ..ScoreWeights::default()
        });
        let mut s = cluster();
        assert_eq!(place(&scorer, &mut s, &cpu_only).as_deref(), Some("a-g2"));
        assert_eq!(
            place(&scorer, &mut s, &cpu_hungry_t4).as_deref(),
            Some("b-t4")
        );

        // With no restricted pod observed, packing applies to CPU-only pods
        // (the unconstrained traces are unchanged).
        let plain = || {
            let mut s = ClusterSnapshot::new(ShapeDistribution::from_pods(
                std::iter::repeat_n(&any, 8),
                1.0,
            ));
            s.upsert_node(NodeState::new("a-g2", 32_000, 128 * GIB).with_gpus(8, "G2"));
            s.upsert_node(NodeState::new("b-t4", 16_000, 128 * GIB).with_gpus(2, "T4"));
            s.assume("b-t4", &any).unwrap();
            s.assume("a-g2", &any).unwrap();
            s.assume("a-g2", &any).unwrap();
            assert!(!s.has_model_pressure());
            s
        };
        let mut s = plain();
        assert_eq!(place(&scorer, &mut s, &cpu_only).as_deref(), Some("b-t4"));
    }

    #[test]
    fn cpu_only_pods_take_cpu_that_free_gpus_will_not_need() {
        // Typical GPU pods take 6 cores per GPU; a quarter may only use T4.
        let (any, _, seen) = quarter_t4_only(PodDemand::new(6000, GIB).with_gpu(1, 1000));
        // A G2 node with two of eight GPUs free and just the 12 cores they
        // need; a T4 node with one GPU free and 60 cores.
        let cluster = || {
            let mut s = ClusterSnapshot::new(ShapeDistribution::from_pods(seen.iter(), 1.0));
            let mut g2 = NodeState::new("a-g2", 32_000, 128 * GIB).with_gpus(8, "G2");
            g2.cpu_milli_allocated = 20_000;
            for g in &mut g2.gpus[..6] {
                g.allocated_milli = 1000;
            }
            let mut t4 = NodeState::new("b-t4", 64_000, 128 * GIB).with_gpus(2, "T4");
            t4.cpu_milli_allocated = 4_000;
            t4.gpus[0].allocated_milli = 1000;
            s.upsert_node(g2);
            s.upsert_node(t4);
            assert!(s.has_model_pressure());
            assert!((s.shapes().cpu_per_gpu() - 6000.0).abs() < 1e-9);
            s
        };
        let cpu_only = PodDemand::new(4000, GIB);

        // Without the surplus factor packing sends the CPU-only pod to the
        // G2 node (its GPUs are the fuller ones); one of its free GPUs is then
        // short of CPU and the third GPU pod fits nowhere.
        let blind = NodeScorer::new(ScoreWeights {
            cpu_surplus: 0.0,
            ..ScoreWeights::default()
        });
        let mut s = cluster();
        assert_eq!(place(&blind, &mut s, &cpu_only).as_deref(), Some("a-g2"));
        assert!(place(&blind, &mut s, &any).is_some());
        assert!(place(&blind, &mut s, &any).is_some());
        assert_eq!(place(&blind, &mut s, &any), None);

        // With it (the default) the CPU-only pod takes the T4 node's spare
        // CPU and all three free GPUs are used.
        let scorer = NodeScorer::default();
        let mut s = cluster();
        assert_eq!(place(&scorer, &mut s, &cpu_only).as_deref(), Some("b-t4"));
        for _ in 0..3 {
            assert!(place(&scorer, &mut s, &any).is_some());
        }
        assert_eq!(s.gpu_allocated_milli(), s.gpu_capacity_milli());
    }
    #[test]
    fn a_cpu_heavy_gpu_pod_leaves_the_cpu_that_free_gpus_will_need() {
        // Typical GPU pods: one GPU and 4 cores. The pod to place takes one
        // GPU and 20 cores.
        let typical = PodDemand::new(4000, GIB).with_gpu(1, 1000);
        let heavy = PodDemand::new(20_000, GIB).with_gpu(1, 1000);
        // "a": half its GPUs in use, 25 cores free. "b": two of eight GPUs
        // in use, 86 cores free. Either way each free GPU could still take
        // one typical pod, so fragmentation cannot tell them apart.
        let cluster = || {
            let seen = vec![typical.clone(); 8];
            let mut s = ClusterSnapshot::new(ShapeDistribution::from_pods(seen.iter(), 1.0));
            let mut a = NodeState::new("a", 40_000, 256 * GIB).with_gpus(8, "G2");
            a.cpu_milli_allocated = 15_000;
            for g in &mut a.gpus[..4] {
                g.allocated_milli = 1000;
            }
            let mut b = NodeState::new("b", 96_000, 256 * GIB).with_gpus(8, "G2");
            b.cpu_milli_allocated = 10_000;
            for g in &mut b.gpus[..2] {
                g.allocated_milli = 1000;
            }
            s.upsert_node(a);
            s.upsert_node(b);
            s
        };
        let fill = |scorer: &NodeScorer, s: &mut ClusterSnapshot| {
            while place(scorer, s, &typical).is_some() {}
            s.gpu_capacity_milli() - s.gpu_allocated_milli()
        };

        // Without the factor packing sends it to the fuller node "a", whose
        // three remaining GPUs are left 5 cores: two of them stay free.
        let blind = NodeScorer::new(ScoreWeights {
            gpu_pod_cpu_surplus: 0.0,
            ..ScoreWeights::default()
        });
        let mut s = cluster();
        assert_eq!(place(&blind, &mut s, &heavy).as_deref(), Some("a"));
        assert_eq!(fill(&blind, &mut s), 2000, "two GPUs stranded");

        // With it (the default) it takes "b"'s spare CPU and every GPU is used.
        let scorer = NodeScorer::default();
        let mut s = cluster();
        assert_eq!(place(&scorer, &mut s, &heavy).as_deref(), Some("b"));
        assert_eq!(fill(&scorer, &mut s), 0);

        // The GPU the pod takes needs no CPU afterwards: a node it fills
        // exactly (its last GPU and its last 20 cores) is short of nothing,
        // and packing prefers it to "b".
        let mut s = cluster();
        let mut c = NodeState::new("c", 24_000, 256 * GIB).with_gpus(2, "G2");
        c.cpu_milli_allocated = 4_000;
        c.gpus[0].allocated_milli = 1000;
        s.upsert_node(c);
        assert_eq!(place(&scorer, &mut s, &heavy).as_deref(), Some("c"));
    }
}
