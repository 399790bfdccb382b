//! Baseline placement policies of the FGD paper's evaluation (Weng et al.,
//! USENIX ATC'23, section 5), used by the simulator as points of comparison.
//!
//! Every policy first filters the nodes where the pod fits (CPU, memory, GPU
//! model, GPU share or whole GPUs). Among equally scored nodes one is drawn at
//! random, as the Kubernetes scheduler does. Unless stated otherwise a
//! GPU-sharing pod takes the fitting GPU with the least free share (best fit
//! within the node) and a multi-GPU pod the first fully free GPUs.

use rand::rngs::StdRng;
use rand::Rng;

use crate::demand::{PodDemand, MILLI_PER_GPU};
use crate::snapshot::{ClusterSnapshot, GpuPick, ModelFilter, Placement};

/// A baseline policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Baseline {
    /// Random: any feasible node, uniformly.
    Random,
    /// BestFit: the node with the least resources left after placement,
    /// `0.5 * (cpu_free - cpu_req) / max_cpu + 0.5 * (gpu_free - gpu_req) / max_gpu`
    /// (free amounts of the node, maxima over the cluster's nodes), smallest wins.
    BestFit,
    /// DotProd (Tetris alignment as used by the paper): the dot product of the
    /// node's free (CPU, GPU) and the pod's request, both normalised by the
    /// node's capacity; the smallest product wins (tightest alignment).
    DotProd,
    /// GpuPacking: prefer (1) sharing an already used GPU, the fullest first;
    /// then (2) idle GPUs on a node that already runs GPU pods; then (3) an
    /// idle node, the one with fewest GPUs first.
    GpuPacking,
    /// FGD: the node and GPU whose placement increases the node's fragmentation
    /// the least (see [`crate::fgd`]); the GPU is chosen the FGD way too.
    Fgd,
}

impl Baseline {
    /// Lower-case name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Random => "random",
            Self::BestFit => "bestfit",
            Self::DotProd => "dotprod",
            Self::GpuPacking => "gpupacking",
            Self::Fgd => "fgd",
        }
    }

    /// Chooses a node (and GPUs) and applies the placement; `None` when the pod
    /// fits nowhere.
    pub fn place(
        self,
        snap: &mut ClusterSnapshot,
        demand: &PodDemand,
        rng: &mut StdRng,
    ) -> Option<Placement> {
        demand.validate().ok()?;
        let filter = snap.model_filter(demand);
        let (idx, pick) = self.choose(snap, demand, &filter, rng)?;
        Some(snap.apply_pick(idx, demand, &filter, pick))
    }

    fn choose(
        self,
        snap: &ClusterSnapshot,
        demand: &PodDemand,
        filter: &ModelFilter,
        rng: &mut StdRng,
    ) -> Option<(usize, GpuPick)> {
        let (max_cpu, max_gpu) = snap.nodes.iter().fold((1u64, 1u64), |(c, g), e| {
            (
                c.max(e.state.cpu_milli_capacity),
                g.max(e.cache.gpu_capacity),
            )
        });
        let mut scratch = Vec::with_capacity(16);
        let mut best: Option<(usize, GpuPick, f64)> = None;
        let mut ties = 0u32;
        for idx in 0..snap.nodes.len() {
            if snap.fit_reason(idx, demand, filter).is_some() {
                continue;
            }
            let c = &snap.nodes[idx].cache;
            // Higher is better for every policy below.
            let (pick, score) = match self {
                Self::Random => (best_fit_gpu(snap, idx, demand, filter), 0.0),
                Self::BestFit => {
                    let cpu_left = c.cpu_free.saturating_sub(demand.cpu_milli) as f64;
                    let gpu_left = c.gpu_free_total.saturating_sub(demand.gpu_milli_total()) as f64;
                    let s = 0.5 * cpu_left / max_cpu as f64 + 0.5 * gpu_left / max_gpu as f64;
                    (best_fit_gpu(snap, idx, demand, filter), -s)
                }
                Self::DotProd => {
                    let cap_cpu = snap.nodes[idx].state.cpu_milli_capacity.max(1) as f64;
                    let cap_gpu = c.gpu_capacity.max(1) as f64;
                    let dot = (c.cpu_free as f64 / cap_cpu) * (demand.cpu_milli as f64 / cap_cpu)
                        + (c.gpu_free_total as f64 / cap_gpu)
                            * (demand.gpu_milli_total() as f64 / cap_gpu);
                    (best_fit_gpu(snap, idx, demand, filter), -dot)
                }
                Self::GpuPacking => {
                    let pick = best_fit_gpu(snap, idx, demand, filter);
                    (pick, packing_score(snap, idx, demand, pick))
                }
                Self::Fgd => {
                    let (pick, delta) = snap.best_gpu_pick(idx, demand, filter, &mut scratch);
                    (pick, -delta)
                }
            };
            let better = match (self, best) {
                (_, None) => true,
                // Reservoir sampling: uniform over the feasible nodes.
                (Self::Random, Some(_)) => {
                    ties += 1;
                    rng.random_range(0..ties) == 0
                }
                (_, Some((_, _, b))) => score > b + 1e-9,
            };
            if better {
                best = Some((idx, pick, score));
                if ties == 0 {
                    ties = 1;
                }
            }
        }
        best.map(|(i, p, _)| (i, p))
    }
}

/// The fitting GPU with the least free share (sharing pods) or the first fully
/// free GPUs (whole-GPU pods).
fn best_fit_gpu(
    snap: &ClusterSnapshot,
    idx: usize,
    demand: &PodDemand,
    filter: &ModelFilter,
) -> GpuPick {
    if demand.num_gpu == 0 {
        return GpuPick::None;
    }
    if !demand.is_gpu_sharing() {
        return GpuPick::Whole(demand.num_gpu);
    }
    let c = &snap.nodes[idx].cache;
    let mut best: Option<(u16, u32)> = None;
    for (g, (&free, &model)) in c.gpu_free.iter().zip(&c.gpu_model).enumerate() {
        if free >= demand.gpu_milli && filter.allows(model) && best.is_none_or(|(_, f)| free < f) {
            best = Some((g as u16, free));
        }
    }
    best.map_or(GpuPick::None, |(g, _)| GpuPick::Share(g))
}

fn packing_score(snap: &ClusterSnapshot, idx: usize, demand: &PodDemand, pick: GpuPick) -> f64 {
    let c = &snap.nodes[idx].cache;
    if demand.num_gpu == 0 {
        return 0.0;
    }
    let fully_free = c.gpu_free.iter().filter(|&&f| f == MILLI_PER_GPU).count() as f64;
    if let GpuPick::Share(g) = pick {
        let free = c.gpu_free[usize::from(g)];
        if free < MILLI_PER_GPU {
            // Tier 1: share a used GPU, fullest first.
            return 3.0 - f64::from(free) / 1000.0 / 2.0;
        }
    }
    if (fully_free as usize) < c.gpu_free.len() {
        // Tier 2: idle GPUs on an active node.
        return 2.0;
    }
    // Tier 3: an idle node, smallest first.
    1.0 - fully_free / 100.0
}
