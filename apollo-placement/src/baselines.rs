//! Baseline placement policies of the FGD paper's evaluation (Weng et al.,
//! USENIX ATC'23, section 5), used by the simulator as points of comparison.
//!
//! Every policy first filters the nodes where the pod fits (CPU, memory, GPU
//! model, GPU share or whole GPUs). As in the published simulator, DotProd,
//! GpuPacking and FGD score nodes with the scheduler framework's integer
//! scores (0-100). The coarse scores make ties common, and how they are broken
//! moves the results by several points, most of all for CPU-only pods (score
//! ties everywhere for GpuPacking, mostly zero fragmentation change for FGD).
//! Among equally scored nodes the one first in a [`TieOrder`] wins: a random
//! permutation of the nodes drawn once per run from the run's seed. That is
//! what the published simulator effectively does (its node iteration order is
//! not the node list's order), and it reproduces the published cpu250 figures
//! where the node-list order did not (FGD 91.35 and GpuPacking 85.92 against
//! the published 93.20 and 88.05). Drawing a fresh random winner for every
//! pod instead is much worse (FGD about 84 on cpu250): a fixed order keeps
//! CPU-only pods together on the same nodes, a fresh draw spreads them.
//! Unless stated otherwise a GPU-sharing pod takes the fitting GPU with the
//! least free share (best fit within the node) and a multi-GPU pod the first
//! fully free GPUs.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::demand::{PodDemand, MILLI_PER_GPU};
use crate::snapshot::{with_delta_memo, ClusterSnapshot, GpuPick, ModelFilter, Placement};

/// The order in which equally scored nodes win: `rank[node index]`, lower
/// first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TieOrder {
    rank: Vec<u32>,
}

impl TieOrder {
    /// Mixed into the run's seed so the tie order is not the same stream as
    /// the workload shuffle drawn from that seed.
    const SEED_SALT: u64 = 0x7469_655f_6f72_6465;

    /// Node-list order: the first feasible node among equals wins.
    pub fn node_list(nodes: usize) -> Self {
        Self {
            rank: (0..nodes as u32).collect(),
        }
    }

    /// A uniformly random permutation of `nodes` nodes, the same for the
    /// same seed.
    pub fn seeded(nodes: usize, seed: u64) -> Self {
        let mut perm: Vec<u32> = (0..nodes as u32).collect();
        perm.shuffle(&mut StdRng::seed_from_u64(seed ^ Self::SEED_SALT));
        let mut rank = vec![0u32; nodes];
        for (r, &node) in perm.iter().enumerate() {
            rank[node as usize] = r as u32;
        }
        Self { rank }
    }

    /// Rank of the node at `idx` (lower wins); nodes beyond the order rank
    /// after all others, by index.
    pub fn rank(&self, idx: usize) -> u64 {
        self.rank
            .get(idx)
            .map_or(self.rank.len() as u64 + idx as u64, |&r| u64::from(r))
    }
}

/// A baseline policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Baseline {
    /// Random: any feasible node, uniformly.
    Random,
    /// BestFit: the node with the least resources left after placement,
    /// `0.5 * (cpu_free - cpu_req) / max_cpu + 0.5 * (gpu_free - gpu_req) / max_gpu`
    /// (free amounts of the node, maxima over the cluster's nodes), smallest wins.
    BestFit,
    /// DotProd (Tetris alignment as used by the paper, GPUs merged into one
    /// dimension): the dot product of the node's free (CPU, GPU) and the pod's
    /// request, both normalised by the published maxima (128 cores, 8 GPUs);
    /// score `trunc(100 * (1 - dot / 2))`, highest wins.
    DotProd,
    /// GpuPacking: prefer (1) sharing an already used GPU, the fullest first;
    /// then (2) idle GPUs on a node that already runs GPU pods; then (3) an
    /// idle node, the one with fewest GPUs first (integer scores, see
    /// `packing_score`).
    GpuPacking,
    /// FGD: the node and GPU whose placement increases the node's fragmentation
    /// the least (see [`crate::fgd`]), scored `trunc(100 * sigmoid(-dF / 1000))`
    /// as published; the GPU is chosen the FGD way too (smallest exact
    /// increase, where the published code takes the first GPU of the best
    /// integer score).
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
        ties: &TieOrder,
        rng: &mut StdRng,
    ) -> Option<Placement> {
        demand.validate().ok()?;
        let filter = snap.model_filter(demand);
        let (idx, pick) = self.choose(snap, demand, &filter, ties, rng)?;
        Some(snap.apply_pick(idx, demand, &filter, pick))
    }

    fn choose(
        self,
        snap: &ClusterSnapshot,
        demand: &PodDemand,
        filter: &ModelFilter,
        order: &TieOrder,
        rng: &mut StdRng,
    ) -> Option<(usize, GpuPick)> {
        with_delta_memo(|memo| self.choose_in(snap, demand, filter, order, rng, memo))
    }

    fn choose_in(
        self,
        snap: &ClusterSnapshot,
        demand: &PodDemand,
        filter: &ModelFilter,
        order: &TieOrder,
        rng: &mut StdRng,
        memo: &mut crate::snapshot::DeltaMemo,
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
                    let dot = (c.cpu_free as f64 / MAX_SPEC_CPU)
                        * (demand.cpu_milli as f64 / MAX_SPEC_CPU)
                        + (c.gpu_free_total as f64 / MAX_SPEC_GPU)
                            * (demand.gpu_milli_total() as f64 / MAX_SPEC_GPU);
                    (
                        best_fit_gpu(snap, idx, demand, filter),
                        node_score(1.0 - dot / 2.0),
                    )
                }
                Self::GpuPacking => {
                    let pick = best_fit_gpu(snap, idx, demand, filter);
                    (pick, packing_score(snap, idx, demand))
                }
                Self::Fgd => {
                    let (pick, delta) = snap.best_gpu_pick(idx, demand, filter, &mut scratch, memo);
                    (pick, node_score(sigmoid(-delta / 1000.0)))
                }
            };
            let better = match (self, best) {
                (_, None) => true,
                // Reservoir sampling: uniform over the feasible nodes.
                (Self::Random, Some(_)) => {
                    ties += 1;
                    rng.random_range(0..ties) == 0
                }
                // Equal scores go to the node first in the run's tie order.
                (_, Some((bi, _, b))) => {
                    score > b + 1e-9 || (score >= b - 1e-9 && order.rank(idx) < order.rank(bi))
                }
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

/// Normalisation constants of the published simulator (milli-CPU, milli-GPU).
const MAX_SPEC_CPU: f64 = 128_000.0;
const MAX_SPEC_GPU: f64 = 8_000.0;

/// A 0..=1 value as the integer node score (0-100) of the scheduler framework.
fn node_score(v: f64) -> f64 {
    (v.clamp(0.0, 1.0) * 100.0).trunc()
}

fn sigmoid(x: f64) -> f64 {
    if !x.is_finite() {
        return if x > 0.0 { 1.0 } else { 0.0 };
    }
    1.0 / (1.0 + (-x).exp())
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

/// GpuPacking's integer score: sharing a used GPU (100 minus a tenth of the
/// chosen GPU's free percentage, at least 50), then idle GPUs of a used node
/// (50 minus the idle GPUs taken, at least 33), then an idle node (33 minus
/// its GPU count). CPU-only pods score 0 everywhere.
fn packing_score(snap: &ClusterSnapshot, idx: usize, demand: &PodDemand) -> f64 {
    let c = &snap.nodes[idx].cache;
    if demand.num_gpu == 0 {
        return 0.0;
    }
    let gpus = c.gpu_free.len() as i64;
    let fully_free = c.gpu_free.iter().filter(|&&f| f == MILLI_PER_GPU).count() as i64;
    if fully_free == gpus {
        return (33 - fully_free).max(fully_free) as f64;
    }
    // GPUs taken, fullest fitting first.
    let mut order: Vec<u32> = c
        .gpu_free
        .iter()
        .copied()
        .filter(|&f| f >= demand.gpu_milli)
        .collect();
    order.sort_unstable();
    let used = &order[..order.len().min(demand.num_gpu as usize)];
    let idle_taken = used.iter().filter(|&&f| f == MILLI_PER_GPU).count() as i64;
    if idle_taken > 0 {
        return (50 - idle_taken).max(33) as f64;
    }
    let free_pct: i64 = used
        .iter()
        .map(|&f| i64::from(f) * 100 / i64::from(MILLI_PER_GPU))
        .sum();
    (100 - free_pct / 10).max(50) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(t: &TieOrder, n: usize) -> Vec<u64> {
        (0..n).map(|i| t.rank(i)).collect()
    }

    #[test]
    fn tie_order_is_a_seeded_permutation() {
        let n = 64;
        let a = TieOrder::seeded(n, 42);
        assert_eq!(a, TieOrder::seeded(n, 42), "same seed, same order");
        assert_ne!(
            a,
            TieOrder::seeded(n, 43),
            "different seed, different order"
        );
        assert_ne!(a, TieOrder::node_list(n), "seeded order is shuffled");
        let mut ranks = order(&a, n);
        ranks.sort_unstable();
        assert_eq!(ranks, (0..n as u64).collect::<Vec<_>>(), "a permutation");
        // Indices beyond the order rank after every ordered node.
        assert!(a.rank(n) >= n as u64 && a.rank(n + 1) > a.rank(n));
    }

    #[test]
    fn equally_scored_nodes_go_to_the_first_in_tie_order() {
        // Identical empty nodes: every policy but Random scores a CPU-only pod
        // the same everywhere, so the tie order alone picks the node.
        let n = 16;
        let mut snap = ClusterSnapshot::new(Default::default());
        for i in 0..n {
            snap.upsert_node(
                crate::snapshot::NodeState::new(format!("n{i:02}"), 8_000, 1 << 34)
                    .with_gpus(1, "T4"),
            );
        }
        let pod = PodDemand::new(1_000, 1 << 30);
        let mut rng = StdRng::seed_from_u64(0);
        let mut winners = std::collections::HashSet::new();
        for seed in [1u64, 2, 3, 4] {
            let ties = TieOrder::seeded(n, seed);
            let first = (0..n).min_by_key(|&i| ties.rank(i)).unwrap();
            for b in [
                Baseline::BestFit,
                Baseline::DotProd,
                Baseline::GpuPacking,
                Baseline::Fgd,
            ] {
                let p = b.place(&mut snap.clone(), &pod, &ties, &mut rng).unwrap();
                assert_eq!(p.node, format!("n{first:02}"), "{} seed {seed}", b.name());
            }
            winners.insert(first);
        }
        assert!(winners.len() > 1, "the winner moves with the seed");
        let p = Baseline::Fgd
            .place(&mut snap, &pod, &TieOrder::node_list(n), &mut rng)
            .unwrap();
        assert_eq!(p.node, "n00");
    }
}
