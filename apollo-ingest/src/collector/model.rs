//! What the collector keeps of each Kubernetes object: only the fields an
//! insight needs, so 150,000 pods fit in a few tens of MiB instead of the
//! full objects a generic reflector store would hold.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{Container, Node, PersistentVolume, PersistentVolumeClaim, Pod},
    api::storage::v1::StorageClass,
    apimachinery::pkg::api::resource::Quantity,
};

use super::quantity;

/// Prefix of the APOLLO pod annotations (shared with the scheduling engine).
pub const ANNOTATION_PREFIX: &str = "apollo.ai-storage/";
/// Extended resource of the NVIDIA device plugin.
pub const NVIDIA_GPU: &str = "nvidia.com/gpu";
/// GPU feature discovery label naming the GPU model.
pub const GPU_PRODUCT_LABEL: &str = "nvidia.com/gpu.product";
/// Well-known label with the cloud instance type.
pub const INSTANCE_TYPE_LABEL: &str = "node.kubernetes.io/instance-type";
/// Prefix of role labels (`node-role.kubernetes.io/<role>`).
pub const ROLE_LABEL_PREFIX: &str = "node-role.kubernetes.io/";
/// Milli-GPU in one GPU.
pub const MILLI_PER_GPU: u32 = 1000;

/// A value in an object that could not be used; the object is kept with the
/// field treated as absent, and the problem is counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldProblem {
    /// Field path, bounded cardinality (no names), e.g. `pod.requests.cpu`.
    pub field: &'static str,
    /// What was wrong.
    pub detail: String,
}

/// The node fields the collector reports.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeInfo {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.uid`.
    pub uid: String,
    /// Allocatable CPU in cores.
    pub cpu_allocatable_cores: f64,
    /// Allocatable memory in bytes.
    pub memory_allocatable_bytes: i64,
    /// Allocatable ephemeral storage in bytes.
    pub storage_allocatable_bytes: i64,
    /// Allocatable `nvidia.com/gpu`.
    pub gpu_allocatable: u32,
    /// GPU model from GPU feature discovery, if labelled.
    pub gpu_model: String,
    /// Roles from `node-role.kubernetes.io/*` labels, sorted.
    pub roles: Vec<String>,
    /// Instance type label, or empty.
    pub node_type: String,
    /// The `Ready` condition is `True`.
    pub ready: bool,
    /// Cordoned (`spec.unschedulable`).
    pub unschedulable: bool,
    /// Taints as `key=value:effect`.
    pub taints: Vec<String>,
}

/// A pod's GPU demand, in the scheduling engine's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GpuDemand {
    /// GPUs used.
    pub count: u32,
    /// Share of each of them, 1-1000 (1000 = whole GPU).
    pub milli: u32,
}

/// The pod fields the collector aggregates.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PodInfo {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `spec.nodeName`, empty while unscheduled.
    pub node: String,
    /// `status.phase`.
    pub phase: String,
    /// Effective CPU request in cores.
    pub cpu_request_cores: f64,
    /// Effective memory request in bytes.
    pub memory_request_bytes: i64,
    /// GPU demand.
    pub gpu: GpuDemand,
    /// `metadata.creationTimestamp` in seconds, for a stable GPU packing order.
    pub created_unix: i64,
    /// Owner kind (`Job`, `ReplicaSet`, ...), if any.
    pub owner_kind: String,
    /// `status.podIP`.
    pub pod_ip: String,
}

impl PodInfo {
    /// Whether the pod holds node resources: bound and not finished. A pod
    /// in phase `Unknown` (node unreachable) still holds them, as the
    /// scheduler counts it.
    pub fn holds_resources(&self) -> bool {
        !self.node.is_empty() && !matches!(self.phase.as_str(), "Succeeded" | "Failed")
    }
}

/// A PersistentVolume pinned to one node (local volumes).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VolumeInfo {
    /// `metadata.name`.
    pub name: String,
    /// Node the volume lives on, from its node affinity; empty if network
    /// attached.
    pub node: String,
    /// Capacity in bytes.
    pub capacity_bytes: i64,
    /// `spec.storageClassName`.
    pub storage_class: String,
    /// Bound to a claim.
    pub bound: bool,
}

/// A PersistentVolumeClaim (kept for counts and pending-claim visibility).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClaimInfo {
    /// `namespace/name`.
    pub key: String,
    /// Bound volume name.
    pub volume: String,
    /// `status.phase`.
    pub phase: String,
}

/// A StorageClass (name and provisioner).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StorageClassInfo {
    /// `metadata.name`.
    pub name: String,
    /// `provisioner`.
    pub provisioner: String,
}

fn quantity_of(
    map: Option<&BTreeMap<String, Quantity>>,
    key: &str,
    field: &'static str,
    problems: &mut Vec<FieldProblem>,
) -> Option<f64> {
    let q = map?.get(key)?;
    match quantity::parse(&q.0) {
        Ok(v) => Some(v),
        Err(e) => {
            problems.push(FieldProblem {
                field,
                detail: e.to_string(),
            });
            None
        }
    }
}

fn to_bytes(v: f64) -> i64 {
    if v >= i64::MAX as f64 {
        i64::MAX
    } else {
        v.ceil() as i64
    }
}

impl NodeInfo {
    /// Extracts what the collector needs from a Node.
    pub fn from_node(node: &Node, problems: &mut Vec<FieldProblem>) -> Self {
        let meta = &node.metadata;
        let labels = meta.labels.as_ref();
        let alloc = node.status.as_ref().and_then(|s| s.allocatable.as_ref());
        let mut roles: Vec<String> = labels
            .into_iter()
            .flatten()
            .filter_map(|(k, _)| k.strip_prefix(ROLE_LABEL_PREFIX))
            .filter(|r| !r.is_empty())
            .map(str::to_string)
            .collect();
        roles.sort();
        let label = |k: &str| labels.and_then(|l| l.get(k)).cloned().unwrap_or_default();
        let gpu = quantity_of(alloc, NVIDIA_GPU, "node.allocatable.gpu", problems).unwrap_or(0.0);
        let spec = node.spec.as_ref();
        Self {
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone().unwrap_or_default(),
            cpu_allocatable_cores: quantity_of(alloc, "cpu", "node.allocatable.cpu", problems)
                .unwrap_or(0.0),
            memory_allocatable_bytes: to_bytes(
                quantity_of(alloc, "memory", "node.allocatable.memory", problems).unwrap_or(0.0),
            ),
            storage_allocatable_bytes: to_bytes(
                quantity_of(
                    alloc,
                    "ephemeral-storage",
                    "node.allocatable.ephemeral_storage",
                    problems,
                )
                .unwrap_or(0.0),
            ),
            gpu_allocatable: gpu.floor().min(f64::from(i32::MAX as u32)) as u32,
            gpu_model: label(GPU_PRODUCT_LABEL),
            roles,
            node_type: label(INSTANCE_TYPE_LABEL),
            ready: node
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True"),
            unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
            taints: spec
                .and_then(|s| s.taints.as_ref())
                .into_iter()
                .flatten()
                .map(|t| {
                    format!(
                        "{}={}:{}",
                        t.key,
                        t.value.as_deref().unwrap_or(""),
                        t.effect
                    )
                })
                .collect(),
        }
    }
}

/// Requests of one container set: CPU cores, memory bytes, whole GPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Requests {
    cpu: f64,
    memory: f64,
    gpu: f64,
}

impl Requests {
    fn of(c: &Container, problems: &mut Vec<FieldProblem>) -> Self {
        let req = c.resources.as_ref().and_then(|r| r.requests.as_ref());
        Self {
            cpu: quantity_of(req, "cpu", "pod.requests.cpu", problems).unwrap_or(0.0),
            memory: quantity_of(req, "memory", "pod.requests.memory", problems).unwrap_or(0.0),
            gpu: quantity_of(req, NVIDIA_GPU, "pod.requests.gpu", problems).unwrap_or(0.0),
        }
    }

    fn add(self, o: Self) -> Self {
        Self {
            cpu: self.cpu + o.cpu,
            memory: self.memory + o.memory,
            gpu: self.gpu + o.gpu,
        }
    }

    fn max(self, o: Self) -> Self {
        Self {
            cpu: self.cpu.max(o.cpu),
            memory: self.memory.max(o.memory),
            gpu: self.gpu.max(o.gpu),
        }
    }
}

/// The pod's effective request as the scheduler computes it: the larger of
/// (app containers + restartable init "sidecar" containers) and each
/// ordinary init container (plus the sidecars started before it), plus the
/// RuntimeClass overhead.
fn effective_requests(pod: &Pod, problems: &mut Vec<FieldProblem>) -> Requests {
    let Some(spec) = pod.spec.as_ref() else {
        return Requests::default();
    };
    let mut sidecars = Requests::default();
    let mut init_peak = Requests::default();
    for c in spec.init_containers.iter().flatten() {
        let r = Requests::of(c, problems);
        if c.restart_policy.as_deref() == Some("Always") {
            sidecars = sidecars.add(r);
            init_peak = init_peak.max(sidecars);
        } else {
            init_peak = init_peak.max(sidecars.add(r));
        }
    }
    let mut app = sidecars;
    for c in &spec.containers {
        app = app.add(Requests::of(c, problems));
    }
    let mut total = app.max(init_peak);
    let overhead = spec.overhead.as_ref();
    total.cpu += quantity_of(overhead, "cpu", "pod.overhead.cpu", problems).unwrap_or(0.0);
    total.memory += quantity_of(overhead, "memory", "pod.overhead.memory", problems).unwrap_or(0.0);
    total
}

/// GPU demand: `nvidia.com/gpu` requests take whole GPUs; otherwise the
/// `apollo.ai-storage/gpu` and `gpu-milli` annotations give a share, read
/// exactly as the scheduling engine reads them.
fn gpu_demand(
    whole: f64,
    annotations: Option<&BTreeMap<String, String>>,
    problems: &mut Vec<FieldProblem>,
) -> GpuDemand {
    if whole >= 1.0 {
        return GpuDemand {
            count: whole.floor().min(1024.0) as u32,
            milli: MILLI_PER_GPU,
        };
    }
    let get = |k: &str| annotations.and_then(|a| a.get(&format!("{ANNOTATION_PREFIX}{k}")));
    let mut demand = GpuDemand::default();
    let mut milli_given = None;
    if let Some(v) = get("gpu-milli") {
        match v.trim().parse::<u32>() {
            Ok(x) if (1..=MILLI_PER_GPU).contains(&x) => milli_given = Some(x),
            _ => problems.push(FieldProblem {
                field: "pod.annotations.gpu_milli",
                detail: format!("{v:?} is not an integer 1-1000"),
            }),
        }
    }
    if let Some(v) = get("gpu") {
        match v.trim().parse::<f64>() {
            Ok(x) if x.is_finite() && x == 0.0 => {}
            Ok(x) if x.is_finite() && x > 0.0 && x < 1.0 => {
                demand = GpuDemand {
                    count: 1,
                    milli: ((x * 1000.0).round() as u32).clamp(1, MILLI_PER_GPU),
                }
            }
            Ok(x) if (1.0..=64.0).contains(&x) && x.fract() == 0.0 => {
                demand = GpuDemand {
                    count: x as u32,
                    milli: MILLI_PER_GPU,
                }
            }
            _ => problems.push(FieldProblem {
                field: "pod.annotations.gpu",
                detail: format!("{v:?} is not a GPU count 0-64 or a fraction below 1"),
            }),
        }
    }
    if let Some(milli) = milli_given {
        match demand.count {
            0 | 1 => demand = GpuDemand { count: 1, milli },
            _ => problems.push(FieldProblem {
                field: "pod.annotations.gpu_milli",
                detail: "a multi-GPU request takes whole GPUs".into(),
            }),
        }
    }
    demand
}

impl PodInfo {
    /// Extracts what the collector needs from a Pod.
    pub fn from_pod(pod: &Pod, problems: &mut Vec<FieldProblem>) -> Self {
        let meta = &pod.metadata;
        let req = effective_requests(pod, problems);
        let status = pod.status.as_ref();
        Self {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            node: pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default(),
            phase: status
                .and_then(|s| s.phase.clone())
                .unwrap_or_else(|| "Pending".into()),
            cpu_request_cores: req.cpu,
            memory_request_bytes: to_bytes(req.memory),
            gpu: gpu_demand(req.gpu, meta.annotations.as_ref(), problems),
            created_unix: meta
                .creation_timestamp
                .as_ref()
                .map_or(0, |t| t.0.as_second()),
            owner_kind: meta
                .owner_references
                .as_ref()
                .and_then(|o| o.first())
                .map(|o| o.kind.clone())
                .unwrap_or_default(),
            pod_ip: status.and_then(|s| s.pod_ip.clone()).unwrap_or_default(),
        }
    }
}

impl VolumeInfo {
    /// Extracts a PersistentVolume; `node` is set when its node affinity
    /// requires exactly one `kubernetes.io/hostname`.
    pub fn from_pv(pv: &PersistentVolume, problems: &mut Vec<FieldProblem>) -> Self {
        let spec = pv.spec.as_ref();
        let node = spec
            .and_then(|s| s.node_affinity.as_ref())
            .and_then(|a| a.required.as_ref())
            .and_then(|r| {
                let mut hosts = r
                    .node_selector_terms
                    .iter()
                    .flat_map(|t| t.match_expressions.iter().flatten())
                    .filter(|e| e.key == "kubernetes.io/hostname" && e.operator == "In")
                    .flat_map(|e| e.values.iter().flatten());
                match (hosts.next(), hosts.next()) {
                    (Some(h), None) => Some(h.clone()),
                    _ => None,
                }
            })
            .unwrap_or_default();
        Self {
            name: pv.metadata.name.clone().unwrap_or_default(),
            node,
            capacity_bytes: to_bytes(
                quantity_of(
                    spec.and_then(|s| s.capacity.as_ref()),
                    "storage",
                    "pv.capacity.storage",
                    problems,
                )
                .unwrap_or(0.0),
            ),
            storage_class: spec
                .and_then(|s| s.storage_class_name.clone())
                .unwrap_or_default(),
            bound: pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"),
        }
    }
}

impl ClaimInfo {
    /// Extracts a PersistentVolumeClaim.
    pub fn from_pvc(pvc: &PersistentVolumeClaim) -> Self {
        Self {
            key: format!(
                "{}/{}",
                pvc.metadata.namespace.as_deref().unwrap_or(""),
                pvc.metadata.name.as_deref().unwrap_or("")
            ),
            volume: pvc
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.clone())
                .unwrap_or_default(),
            phase: pvc
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default(),
        }
    }
}

impl StorageClassInfo {
    /// Extracts a StorageClass.
    pub fn from_class(sc: &StorageClass) -> Self {
        Self {
            name: sc.metadata.name.clone().unwrap_or_default(),
            provisioner: sc.provisioner.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn effective_request_takes_init_peak_sidecars_and_overhead() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {
                "nodeName": "n1",
                "overhead": {"cpu": "100m", "memory": "10Mi"},
                "initContainers": [
                    {"name": "init", "resources": {"requests": {"cpu": "3", "memory": "1Gi"}}},
                    {"name": "sidecar", "restartPolicy": "Always",
                     "resources": {"requests": {"cpu": "250m", "memory": "128Mi"}}}
                ],
                "containers": [
                    {"name": "a", "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}},
                    {"name": "b", "resources": {"requests": {"cpu": "1", "memory": "512Mi", "nvidia.com/gpu": "2"}}}
                ]
            },
            "status": {"phase": "Running"}
        }));
        let mut problems = Vec::new();
        let info = PodInfo::from_pod(&p, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        // init peak 3 cores > app 1.75 cores; + 0.1 overhead.
        assert!((info.cpu_request_cores - 3.1).abs() < 1e-9);
        // app 1Gi+512Mi+128Mi = 1664Mi > init 1Gi; + 10Mi.
        assert_eq!(info.memory_request_bytes, 1674 * 1024 * 1024);
        assert_eq!(
            info.gpu,
            GpuDemand {
                count: 2,
                milli: 1000
            }
        );
        assert!(info.holds_resources());
    }

    #[test]
    fn gpu_share_annotations_read_like_the_scheduler() {
        let mut problems = Vec::new();
        let ann = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (format!("{ANNOTATION_PREFIX}{k}"), v.to_string()))
                .collect()
        };
        assert_eq!(
            gpu_demand(0.0, Some(&ann(&[("gpu", "0.5")])), &mut problems),
            GpuDemand {
                count: 1,
                milli: 500
            }
        );
        assert_eq!(
            gpu_demand(0.0, Some(&ann(&[("gpu-milli", "250")])), &mut problems),
            GpuDemand {
                count: 1,
                milli: 250
            }
        );
        assert!(problems.is_empty());
        let d = gpu_demand(
            0.0,
            Some(&ann(&[("gpu", "NaN"), ("gpu-milli", "5000")])),
            &mut problems,
        );
        assert_eq!(d, GpuDemand::default());
        assert_eq!(problems.len(), 2);
    }

    #[test]
    fn bad_quantities_are_reported_not_fatal() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"containers": [
                {"name": "a", "resources": {"requests": {"cpu": "lots", "memory": "1Gi"}}}
            ]},
        }));
        let mut problems = Vec::new();
        let info = PodInfo::from_pod(&p, &mut problems);
        assert_eq!(info.cpu_request_cores, 0.0);
        assert_eq!(info.memory_request_bytes, 1 << 30);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].field, "pod.requests.cpu");
        assert!(!info.holds_resources(), "unbound pod holds nothing");
    }

    #[test]
    fn node_roles_allocatable_and_gpu_model() {
        let n: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "gpu-1", "uid": "u1", "labels": {
                "node-role.kubernetes.io/worker": "",
                "node-role.kubernetes.io/gpu": "true",
                "nvidia.com/gpu.product": "A100-SXM4-80GB",
                "node.kubernetes.io/instance-type": "p4d.24xlarge"
            }},
            "spec": {"taints": [{"key": "gpu", "value": "yes", "effect": "NoSchedule"}]},
            "status": {
                "allocatable": {"cpu": "95500m", "memory": "1000Gi", "nvidia.com/gpu": "8", "ephemeral-storage": "100G"},
                "conditions": [{"type": "Ready", "status": "True"}]
            }
        }))
        .unwrap();
        let mut problems = Vec::new();
        let info = NodeInfo::from_node(&n, &mut problems);
        assert!(problems.is_empty());
        assert_eq!(info.roles, vec!["gpu", "worker"]);
        assert_eq!(info.cpu_allocatable_cores, 95.5);
        assert_eq!(info.memory_allocatable_bytes, 1000 << 30);
        assert_eq!(info.storage_allocatable_bytes, 100_000_000_000);
        assert_eq!(info.gpu_allocatable, 8);
        assert_eq!(info.gpu_model, "A100-SXM4-80GB");
        assert_eq!(info.node_type, "p4d.24xlarge");
        assert!(info.ready);
        assert_eq!(info.taints, vec!["gpu=yes:NoSchedule"]);
    }
}
