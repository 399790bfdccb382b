//! One `ClusterInsight` per node from the collected state: a pure function,
//! so every rule is unit-tested without a cluster.
//!
//! - requested = sum of the effective requests of the node's pods that hold
//!   resources (bound and not Succeeded/Failed);
//! - used = metrics.k8s.io usage when fresh, else 0 (proto3 cannot say
//!   "unknown"; consumers treat an all-zero usage as not measured);
//! - available = allocatable - max(requested, used), never below 0;
//! - GPUs: one `GPUStatus` per allocatable `nvidia.com/gpu`; pods are packed
//!   onto them in creation order (whole-GPU pods take free GPUs, shares go
//!   best-fit) to give each GPU's `allocated_milli`; `gpu_used` counts GPUs
//!   with any allocation. DCGM telemetry fills utilisation, memory,
//!   temperature, power and model when its exporter answered recently.

use std::collections::HashMap;

use apollo_proto::{
    ClusterInsight, GpuStatus, IoStatistics, NetworkStatus, NodeResources, StorageDeviceStatus,
    WorkloadSummary,
};

use super::model::{GpuDemand, NodeInfo, PodInfo, VolumeInfo, MILLI_PER_GPU};

/// Measured CPU and memory of a node or pod (metrics.k8s.io).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Usage {
    /// CPU in cores.
    pub cpu_cores: f64,
    /// Working-set memory in bytes.
    pub memory_bytes: i64,
}

/// One GPU as DCGM reports it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GpuTelemetry {
    /// Index on the node (DCGM's `gpu` label).
    pub index: u32,
    /// `UUID` label.
    pub uuid: String,
    /// `modelName` label.
    pub model: String,
    /// `DCGM_FI_DEV_GPU_UTIL`, percent.
    pub utilization_percent: Option<f64>,
    /// `DCGM_FI_DEV_FB_USED`, bytes.
    pub memory_used_bytes: Option<i64>,
    /// `DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE`, bytes.
    pub memory_total_bytes: Option<i64>,
    /// `DCGM_FI_DEV_GPU_TEMP`, Celsius.
    pub temperature_celsius: Option<f64>,
    /// `DCGM_FI_DEV_POWER_USAGE`, watts.
    pub power_watts: Option<f64>,
}

/// Host telemetry derived from node-exporter.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HostTelemetry {
    /// Filesystems and disks.
    pub storage_devices: Vec<StorageDeviceStatus>,
    /// Disk totals, when two samples gave rates.
    pub io: Option<IoStatistics>,
    /// Network totals.
    pub network: Option<NetworkStatus>,
}

/// Fresh measurements by node (stale ones are left out by the caller).
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// metrics.k8s.io NodeMetrics by node.
    pub node_usage: HashMap<String, Usage>,
    /// metrics.k8s.io PodMetrics by `namespace/name`.
    pub pod_usage: HashMap<String, Usage>,
    /// DCGM telemetry by node.
    pub gpus: HashMap<String, Vec<GpuTelemetry>>,
    /// node-exporter telemetry by node.
    pub hosts: HashMap<String, HostTelemetry>,
}

/// Result of packing a node's GPU demands onto its GPUs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GpuPacking {
    /// Allocated milli-GPU per GPU.
    pub allocated_milli: Vec<u32>,
    /// Demands that did not fit (more requested than the node has).
    pub unplaced: u32,
}

/// Packs `demands` (already in a stable order) onto `gpus` GPUs.
pub fn pack_gpus(gpus: u32, demands: &[GpuDemand]) -> GpuPacking {
    let mut alloc = vec![0u32; gpus as usize];
    let mut unplaced = 0;
    for d in demands.iter().filter(|d| d.count > 0 && d.milli > 0) {
        if d.milli >= MILLI_PER_GPU {
            let free: Vec<usize> = (0..alloc.len()).filter(|&g| alloc[g] == 0).collect();
            if free.len() < d.count as usize {
                unplaced += 1;
                continue;
            }
            for &g in free.iter().take(d.count as usize) {
                alloc[g] = MILLI_PER_GPU;
            }
        } else {
            // Best fit: the fullest GPU that still has room.
            let best = (0..alloc.len())
                .filter(|&g| alloc[g] + d.milli <= MILLI_PER_GPU)
                .max_by_key(|&g| (alloc[g], std::cmp::Reverse(g)));
            match best {
                Some(g) => alloc[g] += d.milli,
                None => unplaced += 1,
            }
        }
    }
    GpuPacking {
        allocated_milli: alloc,
        unplaced,
    }
}

/// What building the insights noticed, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BuildStats {
    /// Pods counted into some node.
    pub pods_counted: u64,
    /// Bound pods whose node is not (or no longer) known.
    pub pods_on_unknown_nodes: u64,
    /// GPU demands that did not fit their node's GPUs.
    pub gpu_unplaced: u64,
}

fn to_i32(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// Builds one insight per known node, sorted by node name.
pub fn build_insights<'a>(
    nodes: impl IntoIterator<Item = &'a NodeInfo>,
    pods: impl IntoIterator<Item = &'a PodInfo>,
    volumes: impl IntoIterator<Item = &'a VolumeInfo>,
    observed: &Observed,
    collected_at: apollo_proto::Timestamp,
) -> (Vec<ClusterInsight>, BuildStats) {
    let mut stats = BuildStats::default();
    let mut by_node: HashMap<&str, (&NodeInfo, Vec<&PodInfo>, Vec<&VolumeInfo>)> = nodes
        .into_iter()
        .map(|n| (n.name.as_str(), (n, Vec::new(), Vec::new())))
        .collect();
    for p in pods.into_iter().filter(|p| p.holds_resources()) {
        match by_node.get_mut(p.node.as_str()) {
            Some(entry) => {
                entry.1.push(p);
                stats.pods_counted += 1;
            }
            None => stats.pods_on_unknown_nodes += 1,
        }
    }
    for v in volumes {
        if let Some(entry) = by_node.get_mut(v.node.as_str()) {
            entry.2.push(v);
        }
    }
    let mut out: Vec<ClusterInsight> = by_node
        .into_values()
        .map(|(node, mut pods, vols)| {
            pods.sort_by(|a, b| {
                (a.created_unix, &a.namespace, &a.name).cmp(&(
                    b.created_unix,
                    &b.namespace,
                    &b.name,
                ))
            });
            let (insight, unplaced) = node_insight(node, &pods, &vols, observed, collected_at);
            stats.gpu_unplaced += u64::from(unplaced);
            insight
        })
        .collect();
    out.sort_by(|a, b| a.node_name.cmp(&b.node_name));
    (out, stats)
}

fn node_insight(
    node: &NodeInfo,
    pods: &[&PodInfo],
    volumes: &[&VolumeInfo],
    observed: &Observed,
    collected_at: apollo_proto::Timestamp,
) -> (ClusterInsight, u32) {
    let cpu_requested: f64 = pods.iter().map(|p| p.cpu_request_cores).sum();
    let memory_requested: i64 = pods
        .iter()
        .map(|p| p.memory_request_bytes)
        .fold(0i64, i64::saturating_add);
    let usage = observed.node_usage.get(&node.name).copied();
    let used = usage.unwrap_or_default();

    let demands: Vec<GpuDemand> = pods.iter().map(|p| p.gpu).collect();
    let packing = pack_gpus(node.gpu_allocatable, &demands);
    let telemetry = observed.gpus.get(&node.name);
    let gpu_devices: Vec<GpuStatus> = packing
        .allocated_milli
        .iter()
        .enumerate()
        .map(|(i, &milli)| {
            let t = telemetry.and_then(|ts| ts.iter().find(|t| t.index as usize == i));
            GpuStatus {
                gpu_id: t
                    .map(|t| t.uuid.clone())
                    .filter(|u| !u.is_empty())
                    .unwrap_or_else(|| format!("gpu{i}")),
                gpu_model: t
                    .map(|t| t.model.clone())
                    .filter(|m| !m.is_empty())
                    .unwrap_or_else(|| node.gpu_model.clone()),
                utilization_percent: t.and_then(|t| t.utilization_percent).unwrap_or(0.0),
                memory_used_bytes: t.and_then(|t| t.memory_used_bytes).unwrap_or(0),
                memory_total_bytes: t.and_then(|t| t.memory_total_bytes).unwrap_or(0),
                temperature_celsius: t.and_then(|t| t.temperature_celsius).unwrap_or(0.0),
                power_usage_watts: t.and_then(|t| t.power_watts).unwrap_or(0.0),
                is_available: node.ready && !node.unschedulable,
                allocated_milli: to_i32(milli),
            }
        })
        .collect();
    let gpu_used = packing.allocated_milli.iter().filter(|&&m| m > 0).count() as u32;

    let host = observed.hosts.get(&node.name);
    let mut storage_devices = host.map(|h| h.storage_devices.clone()).unwrap_or_default();
    for v in volumes {
        // A local PersistentVolume is allocated whole to its claim.
        let used = if v.bound { v.capacity_bytes } else { 0 };
        storage_devices.push(StorageDeviceStatus {
            device_name: format!("pv/{}", v.name),
            device_type: v.storage_class.clone(),
            total_bytes: v.capacity_bytes,
            used_bytes: used,
            available_bytes: v.capacity_bytes - used,
            utilization_percent: if v.capacity_bytes > 0 {
                100.0 * used as f64 / v.capacity_bytes as f64
            } else {
                0.0
            },
            health_score: 1.0,
            ..Default::default()
        });
    }

    let resources = NodeResources {
        cpu_allocatable_cores: node.cpu_allocatable_cores,
        memory_allocatable_bytes: node.memory_allocatable_bytes,
        storage_allocatable_bytes: node.storage_allocatable_bytes,
        gpu_allocatable: to_i32(node.gpu_allocatable),
        cpu_used_cores: used.cpu_cores,
        memory_used_bytes: used.memory_bytes,
        storage_used_bytes: 0,
        gpu_used: to_i32(gpu_used),
        cpu_available_cores: (node.cpu_allocatable_cores - cpu_requested.max(used.cpu_cores))
            .max(0.0),
        memory_available_bytes: node
            .memory_allocatable_bytes
            .saturating_sub(memory_requested.max(used.memory_bytes))
            .max(0),
        storage_available_bytes: node.storage_allocatable_bytes,
        gpu_available: to_i32(node.gpu_allocatable.saturating_sub(gpu_used)),
        cpu_requested_cores: cpu_requested,
        memory_requested_bytes: memory_requested,
    };
    let running_workloads = pods
        .iter()
        .map(|p| {
            let u = observed
                .pod_usage
                .get(&format!("{}/{}", p.namespace, p.name))
                .copied()
                .unwrap_or_default();
            WorkloadSummary {
                pod_name: p.name.clone(),
                pod_namespace: p.namespace.clone(),
                cpu_usage: u.cpu_cores,
                memory_usage: u.memory_bytes as f64,
                ..Default::default()
            }
        })
        .collect();
    let insight = ClusterInsight {
        node_name: node.name.clone(),
        node_uid: node.uid.clone(),
        node_resources: Some(resources),
        storage_devices,
        running_workloads,
        gpu_devices,
        network_status: host.and_then(|h| h.network),
        io_statistics: host.and_then(|h| h.io),
        collected_at: Some(collected_at),
        node_type: node.node_type.clone(),
        node_roles: node.roles.clone(),
        ..Default::default()
    };
    (insight, packing.unplaced)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cpu: f64, mem: i64, gpus: u32) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            cpu_allocatable_cores: cpu,
            memory_allocatable_bytes: mem,
            gpu_allocatable: gpus,
            ready: true,
            roles: vec!["worker".into()],
            ..Default::default()
        }
    }

    fn pod(name: &str, node: &str, phase: &str, cpu: f64, mem: i64, gpu: GpuDemand) -> PodInfo {
        PodInfo {
            namespace: "ns".into(),
            name: name.into(),
            node: node.into(),
            phase: phase.into(),
            cpu_request_cores: cpu,
            memory_request_bytes: mem,
            gpu,
            ..Default::default()
        }
    }

    const NONE: GpuDemand = GpuDemand { count: 0, milli: 0 };

    #[test]
    fn requested_counts_running_and_bound_pending_only() {
        let nodes = [node("n1", 8.0, 32 << 30, 0)];
        let pods = [
            pod("run", "n1", "Running", 2.0, 4 << 30, NONE),
            pod("bound", "n1", "Pending", 1.0, 1 << 30, NONE),
            pod("unbound", "", "Pending", 4.0, 4 << 30, NONE),
            pod("done", "n1", "Succeeded", 4.0, 4 << 30, NONE),
            pod("failed", "n1", "Failed", 4.0, 4 << 30, NONE),
            pod("elsewhere", "gone", "Running", 1.0, 1, NONE),
        ];
        let mut observed = Observed::default();
        observed.node_usage.insert(
            "n1".into(),
            Usage {
                cpu_cores: 5.0,
                memory_bytes: 1 << 30,
            },
        );
        let (out, stats) = build_insights(&nodes, &pods, [], &observed, Default::default());
        assert_eq!(out.len(), 1);
        let r = out[0].node_resources.unwrap();
        assert_eq!(r.cpu_requested_cores, 3.0);
        assert_eq!(r.memory_requested_bytes, 5 << 30);
        assert_eq!(r.cpu_used_cores, 5.0);
        // available = allocatable - max(requested, used)
        assert_eq!(r.cpu_available_cores, 3.0);
        assert_eq!(r.memory_available_bytes, 27 << 30);
        assert_eq!(out[0].running_workloads.len(), 2);
        assert_eq!(out[0].node_roles, vec!["worker"]);
        assert_eq!(stats.pods_counted, 2);
        assert_eq!(stats.pods_on_unknown_nodes, 1);
    }

    #[test]
    fn gpu_packing_whole_then_best_fit_shares() {
        let whole = |n| GpuDemand {
            count: n,
            milli: 1000,
        };
        let share = |m| GpuDemand { count: 1, milli: m };
        let p = pack_gpus(
            4,
            &[whole(2), share(500), share(300), share(600), share(200)],
        );
        assert_eq!(p.allocated_milli, vec![1000, 1000, 1000, 600]);
        assert_eq!(p.unplaced, 0);
        let p = pack_gpus(1, &[whole(2), share(600), share(600)]);
        assert_eq!(p.allocated_milli, vec![600]);
        assert_eq!(p.unplaced, 2);
    }

    #[test]
    fn gpu_devices_carry_allocation_and_fresh_telemetry() {
        let mut n = node("g1", 64.0, 512 << 30, 2);
        n.gpu_model = "A100".into();
        let pods = [pod(
            "a",
            "g1",
            "Running",
            1.0,
            1,
            GpuDemand {
                count: 1,
                milli: 250,
            },
        )];
        let mut observed = Observed::default();
        observed.gpus.insert(
            "g1".into(),
            vec![GpuTelemetry {
                index: 1,
                uuid: "GPU-1".into(),
                model: "NVIDIA A100-SXM4-80GB".into(),
                utilization_percent: Some(37.0),
                ..Default::default()
            }],
        );
        let (out, _) = build_insights([&n], &pods, [], &observed, Default::default());
        let g = &out[0].gpu_devices;
        assert_eq!(g.len(), 2);
        assert_eq!((g[0].gpu_id.as_str(), g[0].allocated_milli), ("gpu0", 250));
        assert_eq!(g[0].gpu_model, "A100");
        assert_eq!(g[0].utilization_percent, 0.0);
        assert_eq!(g[1].gpu_id, "GPU-1");
        assert_eq!(g[1].utilization_percent, 37.0);
        assert_eq!(g[1].gpu_model, "NVIDIA A100-SXM4-80GB");
        let r = out[0].node_resources.unwrap();
        assert_eq!((r.gpu_allocatable, r.gpu_used, r.gpu_available), (2, 1, 1));
    }
}
