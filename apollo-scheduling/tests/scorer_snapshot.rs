//! Snapshot updates: assume/forget, incremental fragmentation, insight conversion.

use apollo_proto::{ClusterInsight, CsdStatus, GpuStatus, NodeResources, StorageDeviceStatus};
use apollo_scheduling::demand::PodDemand;
use apollo_scheduling::fgd::{PodShape, ShapeDistribution};
use apollo_scheduling::snapshot::{ClusterSnapshot, NodeState, SnapshotError, StorageTier};

const GIB: u64 = 1 << 30;

fn shapes() -> ShapeDistribution {
    ShapeDistribution::from_weights([(
        PodShape {
            cpu_milli: 1000,
            num_gpu: 1,
            gpu_milli: 600,
        },
        1.0,
    )])
}

#[test]
fn assume_then_forget_restores_state() {
    let mut s = ClusterSnapshot::new(shapes());
    s.upsert_node(NodeState::new("n", 8000, 16 * GIB).with_gpus(2, "T4"));
    let before = s.node("n").unwrap().clone();
    let frag0 = s.fragmentation("n").unwrap();
    assert_eq!(s.gpu_capacity_milli(), 2000);

    let pod = PodDemand::new(2000, GIB).with_gpu(1, 500);
    let p = s.assume("n", &pod).unwrap();
    assert_eq!(s.gpu_allocated_milli(), 500);
    // 500 left on the used GPU is too little for the 600 shape.
    assert_eq!(s.fragmentation("n").unwrap(), 500.0);
    assert_eq!(s.node("n").unwrap().cpu_milli_allocated, 2000);

    s.forget(&p).unwrap();
    assert_eq!(s.node("n").unwrap(), &before);
    assert_eq!(s.fragmentation("n").unwrap(), frag0);
    assert_eq!(s.gpu_allocated_milli(), 0);
}

#[test]
fn assume_rejects_what_does_not_fit() {
    let mut s = ClusterSnapshot::new(shapes());
    s.upsert_node(NodeState::new("n", 1000, GIB).with_gpus(1, "T4"));
    let err = s.assume("n", &PodDemand::new(2000, 0)).unwrap_err();
    assert!(matches!(
        err,
        SnapshotError::DoesNotFit { reason: "cpu", .. }
    ));
    assert!(matches!(
        s.assume("missing", &PodDemand::new(1, 0)),
        Err(SnapshotError::UnknownNode(_))
    ));
    assert!(matches!(
        s.assume("n", &PodDemand::new(1, 0).with_gpu(2, 500)),
        Err(SnapshotError::Demand(_))
    ));
}

#[test]
fn updates_and_removal_keep_totals() {
    let mut s = ClusterSnapshot::new(shapes());
    s.upsert_node(NodeState::new("a", 8000, GIB).with_gpus(4, "T4"));
    s.upsert_node(NodeState::new("b", 8000, GIB).with_gpus(2, "T4"));
    assert_eq!(s.gpu_capacity_milli(), 6000);
    s.update_node("a", |n| n.gpus[0].allocated_milli = 700)
        .unwrap();
    assert_eq!(s.gpu_allocated_milli(), 700);
    assert_eq!(s.fragmentation("a").unwrap(), 300.0);
    s.remove_node("a").unwrap();
    assert_eq!(s.gpu_capacity_milli(), 2000);
    assert_eq!(s.gpu_allocated_milli(), 0);
    assert_eq!(s.len(), 1);
    assert!(s.node("b").is_some());
}

#[test]
fn online_shapes_change_fragmentation() {
    let mut s = ClusterSnapshot::new(ShapeDistribution::default());
    s.upsert_node(NodeState::new("n", 8000, GIB).with_gpus(1, "T4"));
    s.update_node("n", |n| n.gpus[0].allocated_milli = 500)
        .unwrap();
    assert_eq!(s.fragmentation("n").unwrap(), 0.0); // nothing learned yet
    s.observe_pod(&PodDemand::new(100, 0).with_gpu(1, 1000));
    assert_eq!(s.fragmentation("n").unwrap(), 500.0);
}

#[test]
fn from_insight_converts_resources() {
    let insight = ClusterInsight {
        node_name: "node-1".into(),
        node_resources: Some(NodeResources {
            cpu_allocatable_cores: 16.0,
            cpu_requested_cores: 4.5,
            cpu_used_cores: 8.0,
            memory_allocatable_bytes: 64 << 30,
            memory_requested_bytes: 16 << 30,
            memory_used_bytes: 32 << 30,
            ..NodeResources::default()
        }),
        gpu_devices: vec![
            GpuStatus {
                gpu_model: "A10".into(),
                allocated_milli: 250,
                is_available: true,
                utilization_percent: 40.0,
                ..GpuStatus::default()
            },
            GpuStatus {
                gpu_model: "A10".into(),
                is_available: false,
                ..GpuStatus::default()
            },
        ],
        storage_devices: vec![StorageDeviceStatus {
            device_name: "nvme0".into(),
            device_type: "NVMe".into(),
            utilization_percent: 30.0,
            max_iops: 1000,
            current_iops: 400,
            max_throughput_mbps: 2000.0,
            current_throughput_mbps: 500.0,
            ..StorageDeviceStatus::default()
        }],
        csd_devices: vec![CsdStatus {
            is_available: true,
            ..CsdStatus::default()
        }],
        ..ClusterInsight::default()
    };
    let n = NodeState::from_insight(&insight).unwrap();
    assert_eq!(n.cpu_milli_capacity, 16_000);
    assert_eq!(n.cpu_milli_allocated, 4500);
    assert_eq!(n.memory_bytes_allocated, 16 << 30);
    assert_eq!(n.gpus.len(), 2);
    assert_eq!(n.gpus[0].free_milli(), 750);
    assert_eq!(n.gpus[1].free_milli(), 0);
    assert_eq!(n.storage[0].tier, StorageTier::Nvme);
    assert_eq!(n.storage[0].iops_headroom, 600);
    assert_eq!(n.csd_available, 1);
    let u = n.usage.unwrap();
    assert!((u.cpu - 0.5).abs() < 1e-9);

    let mut bad = insight.clone();
    bad.gpu_devices[0].allocated_milli = 1500;
    assert!(matches!(
        NodeState::from_insight(&bad),
        Err(SnapshotError::OutOfRange { .. })
    ));
    bad.node_name = " ".into();
    assert_eq!(
        NodeState::from_insight(&bad),
        Err(SnapshotError::MissingNodeName)
    );

    // Applying an insight keeps the feedback-maintained penalty.
    let mut s = ClusterSnapshot::new(shapes());
    s.apply_insight(&insight).unwrap();
    s.set_bind_failure_penalty("node-1", 0.4).unwrap();
    s.apply_insight(&insight).unwrap();
    assert_eq!(s.node("node-1").unwrap().bind_failure_penalty, 0.4);
    assert_eq!(s.gpu_capacity_milli(), 1000);
    assert_eq!(s.gpu_allocated_milli(), 250);
}
