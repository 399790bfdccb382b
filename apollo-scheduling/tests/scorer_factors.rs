//! Scorer behaviour on small constructed snapshots.

use apollo_scheduling::demand::{CsdNeed, IoHints, IoPattern, LocalityHints, PodDemand};
use apollo_scheduling::fgd::{PodShape, ShapeDistribution};
use apollo_scheduling::scorer::{NodeScorer, ScoreWeights};
use apollo_scheduling::snapshot::{
    ClusterSnapshot, MeasuredUsage, NodeForecast, NodeState, StorageDevice, StorageTier,
};

const GIB: u64 = 1 << 30;

fn shape(cpu: u64, n: u32, m: u32) -> PodShape {
    PodShape {
        cpu_milli: cpu,
        num_gpu: n,
        gpu_milli: m,
    }
}

fn mixed_shapes() -> ShapeDistribution {
    ShapeDistribution::from_weights([
        (shape(1000, 1, 500), 0.4),
        (shape(1000, 1, 1000), 0.4),
        (shape(1000, 2, 1000), 0.2),
    ])
}

fn gpu_node(name: &str, gpus: usize) -> NodeState {
    NodeState::new(name, 32_000, 128 * GIB).with_gpus(gpus, "V100")
}

fn cpu_node(name: &str) -> NodeState {
    NodeState::new(name, 32_000, 128 * GIB)
}

fn snapshot(nodes: Vec<NodeState>) -> ClusterSnapshot {
    let mut s = ClusterSnapshot::new(mixed_shapes());
    for n in nodes {
        s.upsert_node(n);
    }
    s
}

fn top(s: &ClusterSnapshot, d: &PodDemand) -> String {
    NodeScorer::default()
        .rank(s, d, 3)
        .top
        .first()
        .map(|r| r.node.clone())
        .unwrap_or_default()
}

#[test]
fn sharing_pod_fills_a_partly_used_gpu() {
    let mut partly = gpu_node("partly", 2);
    partly.gpus[0].allocated_milli = 500;
    let s = snapshot(vec![gpu_node("fresh", 2), partly]);
    let pod = PodDemand::new(1000, GIB).with_gpu(1, 500);
    assert_eq!(top(&s, &pod), "partly");

    // Within the node the same choice: the used GPU, not the free one.
    let mut s = s;
    let placed = s.assume("partly", &pod).unwrap();
    assert_eq!(placed.gpus, vec![(0, 500)]);
    assert_eq!(s.node("partly").unwrap().gpus[0].allocated_milli, 1000);
    assert_eq!(s.node("partly").unwrap().gpus[1].allocated_milli, 0);
}

#[test]
fn whole_gpu_pod_avoids_breaking_a_gpu_pair() {
    // Taking one of two free GPUs leaves a node that cannot host 2-GPU pods;
    // taking one of three does not.
    let s = snapshot(vec![gpu_node("two", 2), gpu_node("three", 3)]);
    let r = NodeScorer::default().rank(&s, &PodDemand::new(1000, GIB).with_gpu(1, 1000), 2);
    assert_eq!(r.top[0].node, "three");
    assert!(r.top[0].frag_delta < r.top[1].frag_delta);
    assert!(r.top[0].score >= r.top[1].score);
}

#[test]
fn equal_fragmentation_goes_to_the_node_with_cpu_left_for_its_gpus() {
    // Same GPU use, same fragmentation; "drained" comes first in cluster
    // order but has almost no CPU left for its two free GPUs.
    let mut drained = gpu_node("drained", 4);
    drained.gpus[0].allocated_milli = 1000;
    drained.cpu_milli_allocated = 28_000;
    let mut even = gpu_node("even", 4);
    even.gpus[0].allocated_milli = 1000;
    even.cpu_milli_allocated = 8_000;
    let s = snapshot(vec![drained, even]);
    let pod = PodDemand::new(2000, GIB).with_gpu(1, 1000);
    let r = NodeScorer::default().rank(&s, &pod, 2);
    assert_eq!(r.top[0].frag_delta, r.top[1].frag_delta);
    assert_eq!(r.top[0].node, "even");

    // Without the balance factor the tie goes to cluster order.
    let no_balance = NodeScorer::new(ScoreWeights {
        balance: 0.0,
        ..ScoreWeights::default()
    });
    assert_eq!(no_balance.rank(&s, &pod, 2).top[0].node, "drained");
}

#[test]
fn cpu_pod_prefers_node_without_gpus() {
    let s = snapshot(vec![gpu_node("gpu", 4), cpu_node("cpu")]);
    // 31 cores would starve the GPU node's typical pods of CPU.
    assert_eq!(top(&s, &PodDemand::new(31_500, GIB)), "cpu");
}

#[test]
fn predicted_overload_is_excluded_or_penalised() {
    let mut hot = gpu_node("hot", 2);
    hot.forecast = Some(NodeForecast {
        horizon_minutes: 30,
        peak_cpu: 0.97,
        overload_cpu: true,
        ..NodeForecast::default()
    });
    let s = snapshot(vec![hot, gpu_node("calm", 2)]);
    let pod = PodDemand::new(1000, GIB);
    let r = NodeScorer::default().rank(&s, &pod, 5);
    assert_eq!(r.feasible, 1);
    assert_eq!(r.excluded.predicted_overload, 1);
    assert_eq!(r.top[0].node, "calm");

    let lenient = NodeScorer::new(ScoreWeights {
        exclude_predicted_overload: false,
        ..ScoreWeights::default()
    });
    let r = lenient.rank(&s, &pod, 5);
    assert_eq!(r.feasible, 2);
    assert_eq!(r.top[0].node, "calm");
    assert!(r.top[1].reason.contains("overload"));
}

#[test]
fn high_measured_usage_lowers_the_score() {
    let mut busy = gpu_node("busy", 2);
    busy.usage = Some(MeasuredUsage {
        cpu: 0.9,
        memory: 0.5,
        ..MeasuredUsage::default()
    });
    let mut idle = gpu_node("idle", 2);
    idle.usage = Some(MeasuredUsage::default());
    let s = snapshot(vec![busy, idle]);
    assert_eq!(top(&s, &PodDemand::new(2000, GIB)), "idle");
}

#[test]
fn csd_is_preferred_or_required() {
    let mut with = cpu_node("with-csd");
    with.csd_available = 1;
    let s = snapshot(vec![cpu_node("without"), with]);
    let pod = PodDemand::new(1000, GIB).with_csd(CsdNeed::Benefits);
    let r = NodeScorer::default().rank(&s, &pod, 2);
    assert_eq!(r.top[0].node, "with-csd");
    assert_eq!(r.feasible, 2);

    let r = NodeScorer::default().rank(&s, &pod.with_csd(CsdNeed::Requires), 2);
    assert_eq!(r.feasible, 1);
    assert_eq!(r.excluded.csd, 1);
}

#[test]
fn data_locality_wins_between_equal_nodes() {
    let s = snapshot(vec![cpu_node("a"), cpu_node("b"), cpu_node("c")]);
    let pod = PodDemand::new(1000, GIB).with_locality(LocalityHints {
        data_nodes: vec!["b".into()],
        cache_nodes: vec!["c".into()],
        upstream_nodes: vec![],
    });
    let r = NodeScorer::default().rank(&s, &pod, 3);
    let order: Vec<&str> = r.top.iter().map(|t| t.node.as_str()).collect();
    assert_eq!(order, ["c", "b", "a"]);
    assert!(r.top[0].reason.contains("cache-local"));
}

#[test]
fn storage_tier_follows_the_io_pattern() {
    let dev = |tier, util| StorageDevice {
        name: "d0".into(),
        tier,
        utilisation: util,
        iops_headroom: 500_000,
        throughput_headroom_mbps: 3000.0,
    };
    let mut nvme = cpu_node("nvme");
    nvme.storage = vec![dev(StorageTier::Nvme, 0.2)];
    let mut hdd = cpu_node("hdd");
    hdd.storage = vec![dev(StorageTier::Hdd, 0.2)];
    let s = snapshot(vec![hdd, nvme]);
    let random = PodDemand::new(1000, GIB).with_io(IoHints {
        pattern: IoPattern::RandomRead,
        iops: 100_000,
        ..IoHints::default()
    });
    assert_eq!(top(&s, &random), "nvme");
    // An explicit HDD preference (cheap archive tier) is honoured.
    let archive = PodDemand::new(1000, GIB).with_io(IoHints {
        pattern: IoPattern::SequentialWrite,
        tier: Some(StorageTier::Hdd),
        ..IoHints::default()
    });
    assert_eq!(top(&s, &archive), "hdd");
}

#[test]
fn bind_failure_penalty_demotes_a_node() {
    let mut s = snapshot(vec![cpu_node("flaky"), cpu_node("steady")]);
    let pod = PodDemand::new(1000, GIB);
    let before = NodeScorer::default().rank(&s, &pod, 2);
    assert_eq!(before.top[0].node, "flaky"); // ties go to node order
    s.set_bind_failure_penalty("flaky", 0.8).unwrap();
    let after = NodeScorer::default().rank(&s, &pod, 2);
    assert_eq!(after.top[0].node, "steady");
    assert!(after.top[1].score < after.top[0].score);
}

#[test]
fn gpu_model_constraint_and_exclusion_counts() {
    let mut full = gpu_node("full", 1);
    full.gpus[0].allocated_milli = 1000;
    let tiny = NodeState::new("tiny", 500, 128 * GIB).with_gpus(1, "T4");
    let small_mem = NodeState::new("small-mem", 32_000, GIB / 2).with_gpus(1, "T4");
    let s = snapshot(vec![
        gpu_node("v100", 2),
        NodeState::new("t4", 32_000, 128 * GIB).with_gpus(2, "T4"),
        full,
        tiny,
        small_mem,
    ]);
    let pod = PodDemand::new(1000, GIB)
        .with_gpu(1, 1000)
        .with_gpu_models(["T4"]);
    let r = NodeScorer::default().rank(&s, &pod, 5);
    assert_eq!(r.top.len(), 1);
    assert_eq!(r.top[0].node, "t4");
    assert_eq!(r.feasible, 1);
    assert_eq!(r.excluded.gpu_model, 2); // v100 and full (V100)
    assert_eq!(r.excluded.cpu, 1);
    assert_eq!(r.excluded.memory, 1);
    assert_eq!(r.excluded.total(), 4);

    let any = PodDemand::new(1000, GIB).with_gpu(1, 1000);
    let r = NodeScorer::default().rank(&s, &any, 5);
    assert_eq!(r.excluded.gpu, 1); // the full V100 node
}

#[test]
fn fits_when_empty_detects_impossible_pods() {
    let mut busy = gpu_node("busy", 2);
    busy.gpus[0].allocated_milli = 1000;
    busy.gpus[1].allocated_milli = 1000;
    let s = snapshot(vec![busy]);
    let two = PodDemand::new(1000, GIB).with_gpu(2, 1000);
    assert_eq!(NodeScorer::default().rank(&s, &two, 1).feasible, 0);
    assert!(NodeScorer::fits_anywhere_when_empty(&s, &two));
    let eight = PodDemand::new(1000, GIB).with_gpu(8, 1000);
    assert!(!NodeScorer::fits_anywhere_when_empty(&s, &eight));
    let wrong_model = two.clone().with_gpu_models(["A100"]);
    assert!(!NodeScorer::fits_anywhere_when_empty(&s, &wrong_model));
}

#[test]
fn top_n_is_sorted_and_bounded() {
    let nodes = (0..20).map(|i| {
        let mut n = gpu_node(&format!("n{i:02}"), 4);
        for g in 0..(i % 4) {
            n.gpus[g].allocated_milli = 1000;
        }
        n
    });
    let s = snapshot(nodes.collect());
    let r = NodeScorer::default().rank(&s, &PodDemand::new(1000, GIB).with_gpu(1, 500), 5);
    assert_eq!(r.top.len(), 5);
    assert_eq!(r.feasible, 20);
    assert!(r.top.windows(2).all(|w| w[0].composite >= w[1].composite));
    assert!(r.top.iter().all(|t| (1..=100).contains(&t.score)));
}
