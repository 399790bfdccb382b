//! GPU fragmentation, after "Beware of Fragmentation: Scheduling GPU-Sharing
//! Workloads with Fragmentation Gradient Descent" (Weng et al., USENIX ATC'23).
//!
//! The fragmentation of a node is the GPU capacity (milli-GPU) that the typical
//! pods of the workload cannot use, weighted by how popular each typical pod is:
//!
//! `F(node) = sum_m p_m * F_m(node)` where, for a typical pod shape `m`,
//! - `F_m = sum_g free_g` (all free GPU) when `m` asks for no GPU, or does not fit
//!   on the node (CPU short, or fewer than `m.num_gpu` GPUs with `m.gpu_milli` free);
//! - otherwise `F_m = sum_{g : free_g < m.gpu_milli} free_g`: the GPUs too full for `m`.
//!
//! A placement is scored by how much it increases `F`; FGD picks the node (and,
//! for a GPU-sharing pod, the GPU) with the smallest increase.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::demand::PodDemand;

/// Source of distribution versions: unique across all distributions of the
/// process, so a version names one fragmentation function and memoised
/// results can be shared between snapshots.
static NEXT_VERSION: AtomicU64 = AtomicU64::new(1);

/// Most distinct `gpu_milli` values among the typical shapes evaluated with
/// the per-level fast path (more fall back to the per-shape loop).
const MAX_LEVELS: usize = 32;

/// A typical GPU shape prepared for evaluation: index of its `gpu_milli` in
/// `levels`, GPU count, CPU request, weight.
#[derive(Debug, Clone, Copy)]
struct GpuTerm {
    level: usize,
    num_gpu: u32,
    cpu_milli: u64,
    weight: f64,
}

/// The resource shape of a pod as the fragmentation model sees it (memory and
/// GPU model are left out, as in the published model).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodShape {
    /// CPU request in milli-cores.
    pub cpu_milli: u64,
    /// GPU count.
    pub num_gpu: u32,
    /// Share of each GPU (milli-GPU).
    pub gpu_milli: u32,
}

impl PodShape {
    /// The shape of a pod's demand, as the fragmentation model sees it.
    pub fn of(demand: &PodDemand) -> Self {
        Self {
            cpu_milli: demand.cpu_milli,
            num_gpu: demand.num_gpu,
            gpu_milli: demand.gpu_milli,
        }
    }
}

/// A typical shape and its popularity (weights of the typical set sum to 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TypicalShape {
    /// The shape.
    pub shape: PodShape,
    /// Probability that the next pod has this shape.
    pub weight: f64,
}

/// Default share of the workload covered by the typical shapes.
pub const DEFAULT_COVERAGE: f64 = 0.95;

/// Popularity of pod shapes, learned from observed pods and refreshed online.
///
/// `observe` only counts; `refresh` re-derives the typical set (the most popular
/// shapes that together cover `coverage` of the pods, renormalised) and bumps
/// `version`, so holders of cached fragmentation know to recompute.
#[derive(Debug, Clone)]
pub struct ShapeDistribution {
    counts: HashMap<PodShape, f64>,
    total: f64,
    coverage: f64,
    typical: Vec<TypicalShape>,
    cpu_only_weight: f64,
    /// Sorted CPU requests of the typical GPU shapes: a CPU change that crosses
    /// none of them leaves the fragmentation unchanged.
    cpu_thresholds: Vec<u64>,
    /// Distinct `gpu_milli` of the typical GPU shapes, ascending.
    levels: Vec<u32>,
    /// Typical GPU shapes in the order of `typical`.
    terms: Vec<GpuTerm>,
    version: u64,
    observed_since_refresh: u64,
    /// GPU requested (milli-GPU) by the observed GPU pods, by their allowed
    /// models (sorted; empty = any model); counted by `observe`.
    /// Ordered, so sums over it are the same in every process.
    model_counts: BTreeMap<Vec<String>, f64>,
    /// `model_counts` as of the last `refresh` (what the scorer sees, so it
    /// changes only when the typical shapes do).
    model_demand: BTreeMap<Vec<String>, f64>,
    /// GPU requested (milli-GPU) by all GPU pods in `model_demand`.
    gpu_demand: f64,
    /// CPU (milli-cores) the typical GPU shapes request per whole GPU,
    /// weighted by popularity (0 without typical GPU shapes).
    cpu_per_gpu: f64,
}

impl Default for ShapeDistribution {
    fn default() -> Self {
        Self::new(DEFAULT_COVERAGE)
    }
}

impl ShapeDistribution {
    /// An empty distribution: fragmentation is 0 until pods are observed.
    pub fn new(coverage: f64) -> Self {
        Self {
            counts: HashMap::new(),
            total: 0.0,
            coverage: if coverage.is_finite() {
                coverage.clamp(0.01, 1.0)
            } else {
                DEFAULT_COVERAGE
            },
            typical: Vec::new(),
            cpu_only_weight: 0.0,
            cpu_thresholds: Vec::new(),
            levels: Vec::new(),
            terms: Vec::new(),
            version: 0,
            observed_since_refresh: 0,
            model_counts: BTreeMap::new(),
            model_demand: BTreeMap::new(),
            gpu_demand: 0.0,
            cpu_per_gpu: 0.0,
        }
    }

    /// Builds and refreshes a distribution from a pod list.
    pub fn from_pods<'a, I>(pods: I, coverage: f64) -> Self
    where
        I: IntoIterator<Item = &'a PodDemand>,
    {
        let mut dist = Self::new(coverage);
        for pod in pods {
            dist.observe(pod);
        }
        dist.refresh();
        dist
    }

    /// Builds from explicit shape weights (need not be normalised).
    pub fn from_weights<I>(shapes: I) -> Self
    where
        I: IntoIterator<Item = (PodShape, f64)>,
    {
        let mut dist = Self::new(1.0);
        for (shape, w) in shapes {
            if w.is_finite() && w > 0.0 {
                *dist.counts.entry(shape).or_insert(0.0) += w;
                dist.total += w;
            }
        }
        dist.refresh();
        dist
    }

    /// Counts one pod (takes effect at the next `refresh`).
    pub fn observe(&mut self, pod: &PodDemand) {
        *self.counts.entry(PodShape::of(pod)).or_insert(0.0) += 1.0;
        self.total += 1.0;
        self.observed_since_refresh += 1;
        let gpu = pod.gpu_milli_total() as f64;
        if gpu > 0.0 {
            let mut models: Vec<String> = pod
                .gpu_models
                .iter()
                .map(|m| m.trim())
                .filter(|m| !m.is_empty())
                .map(String::from)
                .collect();
            models.sort_unstable();
            models.dedup();
            *self.model_counts.entry(models).or_insert(0.0) += gpu;
        }
    }

    /// GPU requested by the GPU pods observed up to the last refresh
    /// (milli-GPU), per list of allowed models (sorted; empty = any model):
    /// what the workload asks of each GPU model, which the fragmentation
    /// shapes leave out.
    pub fn model_demand(&self) -> impl Iterator<Item = (&[String], f64)> + '_ {
        self.model_demand.iter().map(|(m, d)| (m.as_slice(), *d))
    }

    /// GPU requested by the GPU pods observed up to the last refresh (milli-GPU).
    pub fn gpu_demand(&self) -> f64 {
        self.gpu_demand
    }

    /// CPU (milli-cores) the typical GPU pods request per whole GPU they
    /// request, weighted by popularity: how much CPU a node's free GPUs
    /// will take with them when typical pods fill them (0 without typical
    /// GPU shapes).
    pub fn cpu_per_gpu(&self) -> f64 {
        self.cpu_per_gpu
    }

    /// Pods observed since the last refresh.
    pub fn pending(&self) -> u64 {
        self.observed_since_refresh
    }

    /// Re-derives the typical set from the counts and bumps the version.
    pub fn refresh(&mut self) {
        let mut all: Vec<(PodShape, f64)> = self.counts.iter().map(|(s, c)| (*s, *c)).collect();
        // Most popular first; ties by shape so the result is deterministic.
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let target = self.coverage * self.total;
        let mut cum = 0.0;
        let mut cut = 0;
        for (_, c) in &all {
            if cum >= target && cut > 0 {
                break;
            }
            cum += c;
            cut += 1;
        }
        all.truncate(cut);
        self.typical = all
            .into_iter()
            .map(|(shape, c)| TypicalShape {
                shape,
                weight: if cum > 0.0 { c / cum } else { 0.0 },
            })
            .collect();
        self.cpu_only_weight = self
            .typical
            .iter()
            .filter(|t| t.shape.gpu_milli == 0 || t.shape.num_gpu == 0)
            .map(|t| t.weight)
            .sum();
        self.cpu_thresholds = self
            .typical
            .iter()
            .filter(|t| t.shape.gpu_milli > 0 && t.shape.num_gpu > 0)
            .map(|t| t.shape.cpu_milli)
            .collect();
        self.cpu_thresholds.sort_unstable();
        self.cpu_thresholds.dedup();
        self.levels = self
            .typical
            .iter()
            .filter(|t| t.shape.gpu_milli > 0 && t.shape.num_gpu > 0)
            .map(|t| t.shape.gpu_milli)
            .collect();
        self.levels.sort_unstable();
        self.levels.dedup();
        let levels = &self.levels;
        self.terms = self
            .typical
            .iter()
            .filter(|t| t.shape.gpu_milli > 0 && t.shape.num_gpu > 0)
            .map(|t| GpuTerm {
                level: levels.partition_point(|&l| l < t.shape.gpu_milli),
                num_gpu: t.shape.num_gpu,
                cpu_milli: t.shape.cpu_milli,
                weight: t.weight,
            })
            .collect();
        let (cpu, gpu) = self
            .typical
            .iter()
            .filter(|t| t.shape.gpu_milli > 0 && t.shape.num_gpu > 0)
            .fold((0.0, 0.0), |(c, g), t| {
                (
                    c + t.weight * t.shape.cpu_milli as f64,
                    g + t.weight * f64::from(t.shape.num_gpu) * f64::from(t.shape.gpu_milli)
                        / f64::from(crate::demand::MILLI_PER_GPU),
                )
            });
        self.cpu_per_gpu = if gpu > 0.0 { cpu / gpu } else { 0.0 };
        self.model_demand.clone_from(&self.model_counts);
        self.gpu_demand = self.model_demand.values().sum();
        self.version = NEXT_VERSION.fetch_add(1, Ordering::Relaxed);
        self.observed_since_refresh = 0;
    }

    /// The typical shapes with their weights.
    pub fn typical(&self) -> &[TypicalShape] {
        &self.typical
    }

    /// Changed by every `refresh`; unique across the distributions of the
    /// process (0 = never refreshed), so equal versions mean equal
    /// fragmentation functions.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Number of pods observed.
    pub fn observed(&self) -> f64 {
        self.total
    }

    /// Which typical GPU shapes a node with `cpu_free` milli-cores can hold
    /// on CPU, as the number of distinct typical CPU requests at or below it.
    /// Fragmentation depends on free CPU only through this class.
    pub fn cpu_class(&self, cpu_free: u64) -> usize {
        self.cpu_thresholds.partition_point(|&t| t <= cpu_free)
    }

    /// Number of CPU classes (one more than the distinct typical CPU requests).
    pub fn cpu_classes(&self) -> usize {
        self.cpu_thresholds.len() + 1
    }

    /// True when lowering a node's free CPU from `before` to `after` (GPUs
    /// unchanged) changes which typical shapes fit, i.e. can change fragmentation.
    pub fn cpu_change_matters(&self, before: u64, after: u64) -> bool {
        // Any threshold t with after < t <= before?
        let i = self.cpu_thresholds.partition_point(|&t| t <= after);
        self.cpu_thresholds.get(i).is_some_and(|&t| t <= before)
    }

    /// Fragmentation (milli-GPU) of a node with `cpu_free` milli-cores and the
    /// given free milli-GPU per GPU.
    pub fn fragmentation(&self, cpu_free: u64, gpu_free: &[u32]) -> f64 {
        let total: u64 = gpu_free.iter().map(|&g| u64::from(g)).sum();
        if total == 0 {
            return 0.0;
        }
        let total_f = total as f64;
        let mut frag = self.cpu_only_weight * total_f;
        if self.levels.len() > MAX_LEVELS {
            for t in &self.terms {
                let f = if cpu_free < t.cpu_milli {
                    total_f
                } else {
                    let milli = self.levels[t.level];
                    let (fit, small) = level_fit(gpu_free, milli);
                    if fit >= t.num_gpu {
                        small as f64
                    } else {
                        total_f
                    }
                };
                frag += t.weight * f;
            }
            return frag;
        }
        // GPUs that fit and capacity too small, once per distinct share.
        let mut per_level = [(0u32, 0u64); MAX_LEVELS];
        for (slot, &milli) in per_level.iter_mut().zip(&self.levels) {
            *slot = level_fit(gpu_free, milli);
        }
        for t in &self.terms {
            let f = if cpu_free < t.cpu_milli {
                total_f
            } else {
                let (fit, small) = per_level[t.level];
                if fit >= t.num_gpu {
                    small as f64
                } else {
                    total_f
                }
            };
            frag += t.weight * f;
        }
        frag
    }
}

/// GPUs with at least `milli` free, and the free capacity of the others.
#[inline]
fn level_fit(gpu_free: &[u32], milli: u32) -> (u32, u64) {
    let mut fit = 0u32;
    let mut small = 0u64;
    for &g in gpu_free {
        if g >= milli {
            fit += 1;
        } else {
            small += u64::from(g);
        }
    }
    (fit, small)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(cpu: u64, n: u32, m: u32) -> PodShape {
        PodShape {
            cpu_milli: cpu,
            num_gpu: n,
            gpu_milli: m,
        }
    }

    #[test]
    fn typical_set_covers_requested_share() {
        let d =
            ShapeDistribution::from_weights([(shape(1, 1, 500), 90.0), (shape(1, 1, 1000), 10.0)]);
        assert_eq!(d.typical().len(), 2);
        let mut d2 = ShapeDistribution::new(0.9);
        for _ in 0..90 {
            d2.observe(&PodDemand::new(1, 0).with_gpu(1, 500));
        }
        for _ in 0..10 {
            d2.observe(&PodDemand::new(1, 0).with_gpu(1, 1000));
        }
        d2.refresh();
        assert_eq!(d2.typical().len(), 1);
        assert!((d2.typical()[0].weight - 1.0).abs() < 1e-9);
    }

    #[test]
    fn fragmentation_counts_unusable_capacity() {
        let d = ShapeDistribution::from_weights([(shape(1000, 1, 500), 1.0)]);
        // GPU with 300 free cannot host a 500 pod: 300 fragmented; 1000 free is fine.
        assert_eq!(d.fragmentation(10_000, &[300, 1000]), 300.0);
        // Without CPU the whole free capacity is fragmented.
        assert_eq!(d.fragmentation(500, &[300, 1000]), 1300.0);
        assert!(d.cpu_change_matters(1000, 999));
        assert!(!d.cpu_change_matters(5000, 1000));
        assert!(
            !d.cpu_change_matters(999, 0)
                || d.fragmentation(0, &[1000]) != d.fragmentation(999, &[1000])
        );
        let whole = ShapeDistribution::from_weights([(shape(1000, 2, 1000), 1.0)]);
        assert_eq!(whole.fragmentation(10_000, &[1000, 1000, 400]), 400.0);
        assert_eq!(whole.fragmentation(10_000, &[1000, 600, 400]), 2000.0);
    }

    #[test]
    fn cpu_per_gpu_weighs_typical_gpu_shapes_by_popularity() {
        let d = ShapeDistribution::from_weights([
            (shape(4000, 1, 500), 1.0),
            (shape(8000, 2, 1000), 1.0),
            (shape(16000, 0, 0), 2.0),
        ]);
        // (4000 + 8000) / (0.5 + 2) GPUs; CPU-only shapes take no GPU.
        assert!((d.cpu_per_gpu() - 4800.0).abs() < 1e-9);
        assert_eq!(ShapeDistribution::default().cpu_per_gpu(), 0.0);
    }
}
