//! The assume cache end to end inside the engine: every way an assumption
//! ends (listed pod, bind reported then a newer insight, requests already
//! covering it, TTL, failed bind), and a burst spreading before any insight
//! or result arrives.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use apollo_common::ClusterView;
use apollo_proto::{
    ClusterInsight, GpuStatus, NodeResources, SchedulingDecision, SchedulingPolicy,
    SchedulingPolicyRequest, Timestamp, WorkloadSummary,
};
use apollo_scheduling::config::EngineConfig;
use apollo_scheduling::engine::Engine;
use apollo_scheduling::state::{ClusterState, FeedbackEffect};

const GIB: u64 = 1 << 30;
const NS: &str = "ml";

/// What a node agent reports: capacity, what pods requested, optionally the pods.
#[derive(Debug, Clone)]
struct Report {
    node: &'static str,
    cpu_cores: f64,
    memory_gib: u64,
    gpus: usize,
    cpu_requested_milli: u64,
    memory_requested_gib: u64,
    gpu_allocated_milli: Vec<u32>,
    pods: Vec<String>,
    collected_at: SystemTime,
}

impl Report {
    fn empty(node: &'static str) -> Self {
        Self {
            node,
            cpu_cores: 32.0,
            memory_gib: 128,
            gpus: 4,
            cpu_requested_milli: 0,
            memory_requested_gib: 0,
            gpu_allocated_milli: vec![0; 4],
            pods: Vec::new(),
            collected_at: SystemTime::now(),
        }
    }

    /// The same node after `pods` more pods of `shape` were bound (GPU shares
    /// packed onto GPU 0 first, as a device plugin might).
    fn plus(mut self, shape: Shape, pods: usize) -> Self {
        for _ in 0..pods {
            self.cpu_requested_milli += shape.cpu_milli;
            self.memory_requested_gib += shape.memory_gib;
            if shape.gpu_milli > 0 {
                let g = self
                    .gpu_allocated_milli
                    .iter()
                    .position(|a| a + shape.gpu_milli <= 1000)
                    .expect("test node has a GPU with room");
                self.gpu_allocated_milli[g] += shape.gpu_milli;
            }
        }
        self
    }

    fn listing(mut self, pods: &[&str]) -> Self {
        self.pods = pods.iter().map(|p| p.to_string()).collect();
        self
    }

    fn at(mut self, t: SystemTime) -> Self {
        self.collected_at = t;
        self
    }

    fn insight(&self) -> ClusterInsight {
        let d = self
            .collected_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap();
        ClusterInsight {
            node_name: self.node.into(),
            node_resources: Some(NodeResources {
                cpu_allocatable_cores: self.cpu_cores,
                cpu_requested_cores: self.cpu_requested_milli as f64 / 1000.0,
                memory_allocatable_bytes: (self.memory_gib * GIB) as i64,
                memory_requested_bytes: (self.memory_requested_gib * GIB) as i64,
                gpu_allocatable: self.gpus as i32,
                ..Default::default()
            }),
            gpu_devices: (0..self.gpus)
                .map(|i| GpuStatus {
                    gpu_id: format!("{}-gpu{i}", self.node),
                    gpu_model: "A100".into(),
                    is_available: true,
                    allocated_milli: self.gpu_allocated_milli[i] as i32,
                    ..Default::default()
                })
                .collect(),
            running_workloads: self
                .pods
                .iter()
                .map(|p| WorkloadSummary {
                    pod_name: p.clone(),
                    pod_namespace: NS.into(),
                    ..Default::default()
                })
                .collect(),
            collected_at: Some(Timestamp {
                seconds: d.as_secs() as i64,
                nanos: d.subsec_nanos() as i32,
            }),
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Shape {
    cpu_milli: u64,
    memory_gib: u64,
    gpu_milli: u32,
}

const SHARED: Shape = Shape {
    cpu_milli: 4000,
    memory_gib: 8,
    gpu_milli: 500,
};

struct Cluster {
    view: ClusterView,
    engine: Engine,
}

impl Cluster {
    fn new(nodes: &[Report], cfg: EngineConfig) -> Self {
        let view = ClusterView::new();
        let state = Arc::new(ClusterState::new(view.clone(), cfg));
        let me = Self {
            view,
            engine: Engine::new(state),
        };
        for n in nodes {
            me.report(n);
        }
        me
    }

    fn state(&self) -> &Arc<ClusterState> {
        self.engine.state()
    }

    /// Delivers a node's insight as the view follower would.
    fn report(&self, r: &Report) {
        assert!(self.view.upsert_node(r.insight(), SystemTime::now(), 0));
        self.state().sync_node(r.node);
    }

    fn ask(&self, pod: &str, shape: Shape) -> SchedulingPolicy {
        let mut ann: HashMap<String, String> = HashMap::new();
        ann.insert(
            "apollo.ai-storage/cpu".into(),
            format!("{}m", shape.cpu_milli),
        );
        ann.insert(
            "apollo.ai-storage/memory".into(),
            format!("{}Gi", shape.memory_gib),
        );
        if shape.gpu_milli > 0 {
            ann.insert("apollo.ai-storage/gpu".into(), "1".into());
            ann.insert(
                "apollo.ai-storage/gpu-milli".into(),
                shape.gpu_milli.to_string(),
            );
        }
        let policy = self.engine.decide(&SchedulingPolicyRequest {
            pod_name: pod.into(),
            pod_namespace: NS.into(),
            pod_annotations: ann.into_iter().collect(),
            ..Default::default()
        });
        assert!(
            matches!(
                policy.decision(),
                SchedulingDecision::Allow
                    | SchedulingDecision::Prefer
                    | SchedulingDecision::Require
            ),
            "{pod}: {}",
            policy.reason
        );
        policy
    }

    fn bound(&self, pod: &str, policy: &SchedulingPolicy, ok: bool) -> FeedbackEffect {
        let node = &policy.node_preferences[0].node_name;
        self.state()
            .feedback(&(NS.into(), pod.into()), &policy.request_id, ok, node)
    }

    /// (CPU milli, memory GiB, GPU milli) the engine counts on `node`.
    fn counted(&self, node: &str) -> (u64, u64, u64) {
        let snap = self.state().read();
        let n = snap.node(node).expect("node known");
        (
            n.cpu_milli_allocated,
            n.memory_bytes_allocated / GIB,
            n.gpus.iter().map(|g| u64::from(g.allocated_milli)).sum(),
        )
    }
}

fn once(pods: u64) -> (u64, u64, u64) {
    (
        SHARED.cpu_milli * pods,
        SHARED.memory_gib * pods,
        u64::from(SHARED.gpu_milli) * pods,
    )
}

#[test]
fn an_insight_listing_the_pod_ends_its_assumption() {
    let c = Cluster::new(&[Report::empty("n1")], EngineConfig::default());
    c.ask("p1", SHARED);
    assert_eq!(c.counted("n1"), once(1), "assumed at once");
    assert_eq!(c.state().stats().assumed, 1);

    c.report(&Report::empty("n1").plus(SHARED, 1).listing(&["p1"]));
    assert_eq!(c.counted("n1"), once(1), "counted once, from the insight");
    let s = c.state().stats();
    assert_eq!((s.assumed, s.ended.listed), (0, 1));
}

#[test]
fn a_reported_bind_then_a_newer_insight_ends_it() {
    let c = Cluster::new(&[Report::empty("n1")], EngineConfig::default());
    let before_bind = SystemTime::now() - Duration::from_secs(5);
    let p = c.ask("p1", SHARED);
    assert_eq!(c.bound("p1", &p, true), FeedbackEffect::Confirmed);

    // Collected before the bind: the pod may be missing from it; still assumed.
    // (Requests unchanged, so only the bind time can end the assumption.)
    c.report(&Report::empty("n1").at(before_bind));
    assert_eq!(c.counted("n1"), once(1));
    assert_eq!(c.state().stats().assumed, 1);

    // Collected after the bind: it is the node's word, whatever it counts.
    let after_bind = SystemTime::now() + Duration::from_millis(1);
    c.report(&Report::empty("n1").at(after_bind));
    assert_eq!(c.counted("n1"), (0, 0, 0));
    let s = c.state().stats();
    assert_eq!((s.assumed, s.ended.bound_then_seen), (0, 1));
}

#[test]
fn requests_covering_the_pod_end_it_once_per_bind_in_assume_order() {
    let c = Cluster::new(&[Report::empty("n1")], EngineConfig::default());
    c.ask("p1", SHARED);
    c.ask("p2", SHARED);
    c.ask("p3", SHARED);
    assert_eq!(c.counted("n1"), once(3));

    // One bind shows in the node's requests (no pod list): one assumption ends.
    c.report(&Report::empty("n1").plus(SHARED, 1));
    assert_eq!(
        c.counted("n1"),
        once(3),
        "one from the insight, two assumed"
    );
    assert_eq!(c.state().stats().assumed, 2);
    assert_eq!(
        c.state().assumed_node(NS, "p1"),
        None,
        "the oldest ends first"
    );

    // A pod assumed now is measured from this insight on.
    c.ask("p4", SHARED);
    assert_eq!(c.counted("n1"), once(4));

    // An insight that shows nothing new ends nothing.
    c.report(&Report::empty("n1").plus(SHARED, 1));
    assert_eq!(c.state().stats().assumed, 3);

    // All four bound.
    c.report(&Report::empty("n1").plus(SHARED, 4));
    assert_eq!(c.counted("n1"), once(4));
    let s = c.state().stats();
    assert_eq!((s.assumed, s.ended.covered), (0, 4));
}

#[test]
fn an_increase_too_small_for_the_pod_does_not_end_it() {
    let c = Cluster::new(&[Report::empty("n1")], EngineConfig::default());
    c.ask("big", SHARED);
    // Someone else's small pod landed: CPU and memory grew, but less than `big`.
    let small = Shape {
        cpu_milli: 1000,
        memory_gib: 1,
        gpu_milli: 0,
    };
    c.report(&Report::empty("n1").plus(small, 1));
    assert_eq!(c.counted("n1"), (5000, 9, 500));
    assert_eq!(c.state().stats().assumed, 1);
}

#[test]
fn assumptions_expire_after_the_ttl() {
    let keep = Cluster::new(&[Report::empty("n1")], EngineConfig::default());
    keep.ask("p1", SHARED);
    keep.state().sweep();
    assert_eq!(keep.counted("n1"), once(1), "60 s TTL: still assumed");

    let cfg = EngineConfig {
        assume_ttl: Duration::from_millis(1),
        ..EngineConfig::default()
    };
    let expire = Cluster::new(&[Report::empty("n1")], cfg);
    expire.ask("p1", SHARED);
    assert_eq!(expire.counted("n1"), once(1));
    std::thread::sleep(Duration::from_millis(5));
    expire.state().sweep();
    assert_eq!(expire.counted("n1"), (0, 0, 0));
    let s = expire.state().stats();
    assert_eq!((s.assumed, s.ended.expired), (0, 1));
}

#[test]
fn a_failed_bind_drops_the_assumption_and_penalises_the_node() {
    let c = Cluster::new(&[Report::empty("n1")], EngineConfig::default());
    let p = c.ask("p1", SHARED);
    assert_eq!(c.bound("p1", &p, false), FeedbackEffect::Failed);
    assert_eq!(c.counted("n1"), (0, 0, 0));
    let s = c.state().stats();
    assert_eq!((s.assumed, s.ended.bind_failed, s.penalised), (0, 1, 1));
    // A later insight does not bring it back.
    c.report(&Report::empty("n1"));
    assert_eq!(c.counted("n1"), (0, 0, 0));
}

/// The live replay's order: policy, bind, the node's insight (requests, no
/// pods) and the result, with insights arriving a few pods late. Every pod is
/// counted once, so the node fills exactly to capacity.
#[test]
fn a_node_agent_without_pod_lists_fills_the_node_exactly() {
    let c = Cluster::new(&[Report::empty("n1")], EngineConfig::default());
    // 8 GPU halves fit; CPU 32 cores and 128 GiB also allow exactly 8.
    let mut sent = Vec::new();
    for i in 0..8 {
        let pod = format!("p{i}");
        let policy = c.ask(&pod, SHARED);
        assert_eq!(policy.node_preferences[0].node_name, "n1");
        sent.push(Report::empty("n1").plus(SHARED, i + 1));
        // Insights lag two binds behind; the result arrives at once.
        if i >= 2 {
            c.report(&sent[i - 2]);
        }
        assert_eq!(c.bound(&pod, &policy, true), FeedbackEffect::Confirmed);
        assert_eq!(c.counted("n1"), once(i as u64 + 1), "after pod {i}");
    }
    c.report(&sent[6]);
    c.report(&sent[7]);
    assert_eq!(c.counted("n1"), once(8));
    assert_eq!(c.state().stats().assumed, 0);
}

/// 200 pods asked for before any insight or result arrives spread over the
/// cluster instead of all naming the best-scored node.
#[test]
fn a_burst_spreads_before_any_insight_or_result() {
    let nodes: Vec<Report> = [
        "n00", "n01", "n02", "n03", "n04", "n05", "n06", "n07", "n08", "n09", "n10", "n11", "n12",
        "n13", "n14", "n15", "n16", "n17", "n18", "n19", "n20", "n21", "n22", "n23", "n24",
    ]
    .into_iter()
    .map(Report::empty)
    .collect();
    let worker = Shape {
        cpu_milli: 2000,
        memory_gib: 8,
        gpu_milli: 500,
    };
    // Each node takes 8 workers (4 GPUs x 2 halves): 200 fill 25 nodes exactly.
    let with_cache = Cluster::new(&nodes, EngineConfig::default());
    let without = Cluster::new(&nodes, EngineConfig::default());
    let without = Engine::new(Arc::clone(without.state())).without_assume();
    let mut per_node: HashMap<String, u32> = HashMap::new();
    let mut blind: HashMap<String, u32> = HashMap::new();
    for i in 0..200 {
        let pod = format!("worker-{i}");
        let p = with_cache.ask(&pod, worker);
        *per_node
            .entry(p.node_preferences[0].node_name.clone())
            .or_default() += 1;
        let req = SchedulingPolicyRequest {
            pod_name: pod,
            pod_namespace: NS.into(),
            pod_annotations: [
                ("apollo.ai-storage/cpu".to_string(), "2".to_string()),
                ("apollo.ai-storage/memory".to_string(), "8Gi".to_string()),
                ("apollo.ai-storage/gpu".to_string(), "1".to_string()),
                ("apollo.ai-storage/gpu-milli".to_string(), "500".to_string()),
            ]
            .into(),
            ..Default::default()
        };
        let p = without.decide(&req);
        *blind
            .entry(p.node_preferences[0].node_name.clone())
            .or_default() += 1;
    }
    assert_eq!(per_node.len(), 25, "{per_node:?}");
    assert!(per_node.values().all(|&n| n == 8), "{per_node:?}");
    assert_eq!(with_cache.state().stats().assumed, 200);
    // Without the cache every pod names the same node.
    assert_eq!(blind.len(), 1, "{blind:?}");
}
