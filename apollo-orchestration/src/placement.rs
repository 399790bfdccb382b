//! Target nodes for moved pods, judged by the placement core the scheduling
//! engine uses ([`apollo_placement::scorer::NodeScorer`]: fragmentation,
//! headroom with forecasts, storage tier, locality), after a hard check of
//! real headroom: a target must stay below the ceiling with the pod added to
//! its *forecast peak*, so a move never creates the next hotspot.

use std::collections::HashMap;

use apollo_placement::{
    demand::PodDemand, fgd::ShapeDistribution, scorer::NodeScorer, snapshot::ClusterSnapshot,
};

use crate::view::{NodeView, PlanningView, PodView};

/// Which pods may move and where; implemented by the safety rails.
pub trait TargetFilter {
    /// Why the pod may not move at all, or `None` if it may.
    fn pod_blocked(&self, pod: &PodView) -> Option<String>;
    /// Whether `node` may receive `pod` (roles, ping-pong, caps).
    fn target_allowed(&self, pod: &PodView, node: &NodeView) -> bool;
    /// How many more moves may touch `node` now (unlimited by default).
    fn moves_left(&self, _node: &str) -> usize {
        usize::MAX
    }
}

/// Lets everything through (tests, simulations without rails).
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl TargetFilter for AllowAll {
    fn pod_blocked(&self, _pod: &PodView) -> Option<String> {
        None
    }
    fn target_allowed(&self, _pod: &PodView, node: &NodeView) -> bool {
        !node.control_plane
    }
}

/// A chosen target.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// Node name.
    pub node: String,
    /// Its utilisation peak over the horizon with the pod added, 0-1.
    pub projected: f64,
    /// Placement-core score 1-100.
    pub score: i32,
}

/// Chooses targets within one planning cycle, keeping track of the load the
/// cycle's earlier moves put on (or take off) each node.
#[derive(Debug)]
pub struct Placer<'a> {
    view: &'a PlanningView,
    snapshot: ClusterSnapshot,
    scorer: NodeScorer,
    /// Planned (cpu cores, memory bytes) change per node this cycle.
    planned: HashMap<String, (f64, f64)>,
    /// Moves planned this cycle touching each node.
    touching: HashMap<String, usize>,
}

impl<'a> Placer<'a> {
    /// A placer over the view's nodes.
    pub fn new(view: &'a PlanningView) -> Self {
        let mut snapshot = ClusterSnapshot::new(ShapeDistribution::default());
        for n in &view.nodes {
            snapshot.upsert_node(n.placement.clone());
        }
        Self {
            view,
            snapshot,
            scorer: NodeScorer::default(),
            planned: HashMap::new(),
            touching: HashMap::new(),
        }
    }

    /// Peak utilisation of a node over the horizon including this cycle's
    /// planned moves, 0-1.
    pub fn peak(&self, node: &NodeView) -> f64 {
        let (dc, dm) = self.planned.get(&node.name).copied().unwrap_or_default();
        let cpu = node.cpu_peak() + ratio(dc, node.cpu_capacity);
        let mem = node.memory_peak() + ratio(dm, node.memory_capacity);
        cpu.max(mem)
    }

    /// Utilisation now including this cycle's planned moves, 0-1.
    pub fn now(&self, node: &NodeView) -> f64 {
        let (dc, dm) = self.planned.get(&node.name).copied().unwrap_or_default();
        (node.cpu_now() + ratio(dc, node.cpu_capacity))
            .max(node.memory_now() + ratio(dm, node.memory_capacity))
    }

    /// Peak of `node` over the horizon if `pod` were added to it.
    pub fn projected_with(&self, node: &NodeView, pod: &PodView) -> f64 {
        let (dc, dm) = self.planned.get(&node.name).copied().unwrap_or_default();
        let cpu = node.cpu_peak() + ratio(dc + pod.cpu_cores, node.cpu_capacity);
        let mem = node.memory_peak() + ratio(dm + pod.memory_bytes, node.memory_capacity);
        cpu.max(mem)
    }

    /// The best node for `pod` whose projected peak stays below `ceiling`,
    /// ranked by the placement core; `None` when no node qualifies.
    pub fn choose(
        &self,
        pod: &PodView,
        ceiling: f64,
        filter: &dyn TargetFilter,
        extra: &dyn Fn(&NodeView) -> bool,
    ) -> Option<Target> {
        let ok: HashMap<&str, f64> = self
            .view
            .nodes
            .iter()
            .filter(|n| n.name != pod.node && !n.control_plane)
            .filter(|n| filter.target_allowed(pod, n) && extra(n))
            .filter(|n| self.touching(&n.name) < filter.moves_left(&n.name))
            .map(|n| (n.name.as_str(), self.projected_with(n, pod)))
            .filter(|(_, p)| *p < ceiling)
            .collect();
        if ok.is_empty() {
            return None;
        }
        let demand = PodDemand::new(
            (pod.cpu_cores * 1000.0).round() as u64,
            pod.memory_bytes.round() as u64,
        );
        let ranking = self
            .scorer
            .rank(&self.snapshot, &demand, self.view.nodes.len());
        ranking.top.iter().find_map(|r| {
            ok.get(r.node.as_str()).map(|p| Target {
                node: r.node.clone(),
                projected: *p,
                score: r.score,
            })
        })
    }

    /// Moves planned this cycle that touch `node`.
    pub fn touching(&self, node: &str) -> usize {
        self.touching.get(node).copied().unwrap_or(0)
    }

    /// Records a planned move so later choices in the cycle see it.
    pub fn record_move(&mut self, pod: &PodView, from: &str, to: &str) {
        *self.touching.entry(from.to_string()).or_default() += 1;
        *self.touching.entry(to.to_string()).or_default() += 1;
        let e = self.planned.entry(from.to_string()).or_default();
        e.0 -= pod.cpu_cores;
        e.1 -= pod.memory_bytes;
        let e = self.planned.entry(to.to_string()).or_default();
        e.0 += pod.cpu_cores;
        e.1 += pod.memory_bytes;
        let demand = PodDemand::new(
            (pod.cpu_cores * 1000.0).round() as u64,
            pod.memory_bytes.round() as u64,
        );
        // Keep the scorer's view of allocation in step; a target the scorer
        // could not fit was never chosen, so failure here is not expected.
        let _ = self.snapshot.assume(to, &demand);
    }
}

fn ratio(v: f64, cap: f64) -> f64 {
    if cap > 0.0 {
        v / cap
    } else {
        0.0
    }
}
