//! The cluster as the planners see it: nodes with measured usage and the
//! forecast outlook, pods with their stage, I/O pattern, usage and owner.
//!
//! Built from what the insights carry ([`PlanningView::from_insights`]); when
//! Kubernetes metadata is available it is layered on top
//! ([`PodView::owner`], [`PodView::has_pv`], [`PodView::no_migrate`] and the
//! node roles). Units: `WorkloadSummary.cpu_usage` is read as cores and
//! `WorkloadSummary.memory_usage` as bytes (the contract names no units; these
//! are what the node agent's field names and `NodeResources` use).

use std::{
    collections::HashMap,
    time::{Duration, SystemTime},
};

use apollo_placement::snapshot::{NodeState, StorageTier};
use apollo_proto::{ClusterInsight, IoPattern, PipelineStage, StorageClass, WorkloadSignature};

use crate::forecast::Outlook;

/// Node roles that mark a control-plane node.
pub const CONTROL_PLANE_ROLES: [&str; 3] = ["control-plane", "master", "etcd"];

/// Annotation that excludes a pod from every move.
pub const NO_MIGRATE_ANNOTATION: &str = "apollo.ai-storage/no-migrate";

/// Kind of the workload that owns a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WorkloadKind {
    /// `apps/v1` Deployment (through its ReplicaSet).
    Deployment,
    /// `apps/v1` StatefulSet.
    StatefulSet,
    /// A bare ReplicaSet.
    ReplicaSet,
    /// `apps/v1` DaemonSet: one pod per node, never moved.
    DaemonSet,
    /// A static (mirror) pod managed by the kubelet: never moved.
    Static,
    /// A Job or anything else.
    Other,
}

impl WorkloadKind {
    /// Kubernetes kind name, as the orchestrator's REST API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deployment => "Deployment",
            Self::StatefulSet => "StatefulSet",
            Self::ReplicaSet => "ReplicaSet",
            Self::DaemonSet => "DaemonSet",
            Self::Static => "Node",
            Self::Other => "Other",
        }
    }

    /// Whether the orchestrator can scale this kind.
    pub fn scalable(self) -> bool {
        matches!(
            self,
            Self::Deployment | Self::StatefulSet | Self::ReplicaSet
        )
    }
}

/// The workload a pod belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner {
    /// Kind.
    pub kind: WorkloadKind,
    /// Name (the Deployment's, not its ReplicaSet's).
    pub name: String,
    /// Desired replicas as Kubernetes reports them; `None` without a cluster
    /// (the planners then count the pods they see).
    pub replicas: Option<u32>,
    /// True when read from the pod name rather than from Kubernetes.
    pub inferred: bool,
}

/// Infers the owner from a pod name the way the controllers generate them:
/// `<deployment>-<pod-template-hash>-<5 chars>` for a Deployment,
/// `<statefulset>-<ordinal>` for a StatefulSet, `<name>-<node>` for a static
/// pod. Used only without Kubernetes metadata; the result is marked inferred.
pub fn infer_owner(pod: &str, node: &str) -> Option<Owner> {
    let owner = |kind, name: &str| Owner {
        kind,
        name: name.to_string(),
        replicas: None,
        inferred: true,
    };
    if !node.is_empty() {
        if let Some(base) = pod.strip_suffix(node).and_then(|p| p.strip_suffix('-')) {
            if !base.is_empty() {
                return Some(owner(WorkloadKind::Static, base));
            }
        }
    }
    let parts: Vec<&str> = pod.rsplitn(3, '-').collect();
    let alnum = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    if parts.len() == 3
        && parts[0].len() == 5
        && alnum(parts[0])
        && (6..=10).contains(&parts[1].len())
        && alnum(parts[1])
        && !parts[2].is_empty()
    {
        return Some(owner(WorkloadKind::Deployment, parts[2]));
    }
    let (base, ordinal) = pod.rsplit_once('-')?;
    if !base.is_empty() && !ordinal.is_empty() && ordinal.bytes().all(|b| b.is_ascii_digit()) {
        return Some(owner(WorkloadKind::StatefulSet, base));
    }
    None
}

/// One storage device of a node.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceView {
    /// Device name.
    pub name: String,
    /// Device class.
    pub tier: StorageTier,
    /// Capacity in bytes.
    pub total_bytes: i64,
    /// Used bytes.
    pub used_bytes: i64,
}

/// One node.
#[derive(Debug, Clone)]
pub struct NodeView {
    /// Node name.
    pub name: String,
    /// Carries a control-plane role: never a source or a target.
    pub control_plane: bool,
    /// Allocatable CPU in cores.
    pub cpu_capacity: f64,
    /// Allocatable memory in bytes.
    pub memory_capacity: f64,
    /// Measured CPU use in cores.
    pub cpu_used: f64,
    /// Measured memory use in bytes.
    pub memory_used: f64,
    /// Forecast over the horizon, if the forecaster published one.
    pub outlook: Option<Outlook>,
    /// Storage devices.
    pub devices: Vec<DeviceView>,
    /// Available CSDs whose compute is below 10 %.
    pub idle_csds: u32,
    /// GPUs with no pod allocated and below 10 % utilisation.
    pub idle_gpus: u32,
    /// Mean GPU utilisation, 0-1 (0 without GPUs).
    pub gpu_util: f64,
    /// GPUs on the node.
    pub gpus: u32,
    /// The node as the placement core's scorer sees it.
    pub placement: NodeState,
}

fn frac(used: f64, cap: f64) -> f64 {
    if cap > 0.0 && used.is_finite() {
        (used / cap).max(0.0)
    } else {
        0.0
    }
}

impl NodeView {
    /// The view of a node from its latest insight and forecast outlook.
    /// `None` for an insight the placement core rejects (bad numbers).
    pub fn from_insight(insight: &ClusterInsight, outlook: Option<Outlook>) -> Option<Self> {
        let mut placement = NodeState::from_insight(insight).ok()?;
        let res = insight.node_resources.unwrap_or_default();
        let control_plane = insight
            .node_roles
            .iter()
            .any(|r| CONTROL_PLANE_ROLES.contains(&r.trim().to_ascii_lowercase().as_str()));
        let devices = insight
            .storage_devices
            .iter()
            .map(|d| DeviceView {
                name: d.device_name.clone(),
                tier: StorageTier::parse(&d.device_type).unwrap_or(StorageTier::Hdd),
                total_bytes: d.total_bytes.max(0),
                used_bytes: d.used_bytes.max(0),
            })
            .collect();
        let idle_csds = insight
            .csd_devices
            .iter()
            .filter(|c| c.is_available && c.compute_utilization < 0.1)
            .count() as u32;
        let idle_gpus = insight
            .gpu_devices
            .iter()
            .filter(|g| g.is_available && g.allocated_milli == 0 && g.utilization_percent < 10.0)
            .count() as u32;
        let gpus = insight.gpu_devices.len() as u32;
        let gpu_util = if gpus == 0 {
            0.0
        } else {
            insight
                .gpu_devices
                .iter()
                .map(|g| g.utilization_percent / 100.0)
                .sum::<f64>()
                / f64::from(gpus)
        };
        if let Some(o) = &outlook {
            placement.forecast = Some(o.as_node_forecast());
        }
        Some(Self {
            name: insight.node_name.trim().to_string(),
            control_plane,
            cpu_capacity: res.cpu_allocatable_cores,
            memory_capacity: res.memory_allocatable_bytes as f64,
            cpu_used: res.cpu_used_cores,
            memory_used: res.memory_used_bytes as f64,
            outlook,
            devices,
            idle_csds,
            idle_gpus,
            gpu_util,
            gpus,
            placement,
        })
    }

    /// CPU utilisation now, 0-1.
    pub fn cpu_now(&self) -> f64 {
        frac(self.cpu_used, self.cpu_capacity)
    }

    /// Memory utilisation now, 0-1.
    pub fn memory_now(&self) -> f64 {
        frac(self.memory_used, self.memory_capacity)
    }

    /// Utilisation now: the fuller of CPU and memory.
    pub fn util_now(&self) -> f64 {
        self.cpu_now().max(self.memory_now())
    }

    /// Peak CPU over the horizon: the forecast's upper bound, never below now.
    pub fn cpu_peak(&self) -> f64 {
        let f = self.outlook.as_ref().map_or(0.0, |o| o.peak_cpu);
        self.cpu_now().max(f)
    }

    /// Peak memory over the horizon.
    pub fn memory_peak(&self) -> f64 {
        let f = self.outlook.as_ref().map_or(0.0, |o| o.peak_memory);
        self.memory_now().max(f)
    }

    /// Peak utilisation over the horizon: the fuller of CPU and memory.
    pub fn util_peak(&self) -> f64 {
        self.cpu_peak().max(self.memory_peak())
    }

    /// Best storage tier on the node.
    pub fn best_tier(&self) -> Option<StorageTier> {
        self.devices.iter().map(|d| d.tier).min()
    }
}

/// One running pod.
#[derive(Debug, Clone)]
pub struct PodView {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Node it runs on.
    pub node: String,
    /// Pipeline stage from its workload signature.
    pub stage: PipelineStage,
    /// I/O pattern from its workload signature.
    pub io_pattern: IoPattern,
    /// Measured CPU use in cores.
    pub cpu_cores: f64,
    /// Measured memory use in bytes.
    pub memory_bytes: f64,
    /// I/O use as the node agent reports it (only compared between pods).
    pub io_usage: f64,
    /// CPU use relative to its request, percent (from the signature), if known.
    pub cpu_percent: Option<f64>,
    /// Uses a GPU.
    pub gpu: bool,
    /// Storage class the sidecar recommends for its I/O.
    pub recommended_class: StorageClass,
    /// Owning workload, from Kubernetes or inferred from the name.
    pub owner: Option<Owner>,
    /// Mounts a PersistentVolume (Kubernetes); without a cluster, assumed for
    /// StatefulSet pods.
    pub has_pv: bool,
    /// Annotated [`NO_MIGRATE_ANNOTATION`].
    pub no_migrate: bool,
    /// Whether its PodDisruptionBudget allows a disruption now; `None`
    /// without Kubernetes (not checked).
    pub disruption_allowed: Option<bool>,
}

impl PodView {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Owned by a DaemonSet or a static pod: never moved.
    pub fn node_bound(&self) -> bool {
        matches!(
            self.owner.as_ref().map(|o| o.kind),
            Some(WorkloadKind::DaemonSet | WorkloadKind::Static)
        )
    }
}

/// What the planners plan over.
#[derive(Debug, Clone)]
pub struct PlanningView {
    /// Time of the view.
    pub now: SystemTime,
    /// Nodes (fresh ones only).
    pub nodes: Vec<NodeView>,
    /// Running pods.
    pub pods: Vec<PodView>,
    /// What is not available to this view (e.g. Kubernetes metadata), for
    /// logs and policy factors.
    pub unavailable: Vec<&'static str>,
}

impl PlanningView {
    /// An empty view at `now`.
    pub fn new(now: SystemTime) -> Self {
        Self {
            now,
            nodes: Vec::new(),
            pods: Vec::new(),
            unavailable: Vec::new(),
        }
    }

    /// Builds the view from node insights, workload signatures and outlooks.
    /// Pods come from each node's `running_workloads`, enriched with their
    /// signature; a pod only a signature names (with `node_name`) is added
    /// with the usage its metrics give. Owners are inferred from names.
    pub fn from_insights(
        now: SystemTime,
        insights: &[&ClusterInsight],
        signatures: &[&WorkloadSignature],
        outlooks: &HashMap<String, Outlook>,
    ) -> Self {
        let mut view = Self::new(now);
        let sigs: HashMap<(&str, &str), &WorkloadSignature> = signatures
            .iter()
            .map(|s| ((s.pod_namespace.as_str(), s.pod_name.as_str()), *s))
            .collect();
        let mut seen: std::collections::HashSet<(String, String)> = Default::default();
        for insight in insights {
            let Some(node) =
                NodeView::from_insight(insight, outlooks.get(insight.node_name.trim()).cloned())
            else {
                continue;
            };
            for w in &insight.running_workloads {
                if w.pod_name.is_empty() || w.pod_namespace.is_empty() {
                    continue;
                }
                let sig = sigs
                    .get(&(w.pod_namespace.as_str(), w.pod_name.as_str()))
                    .copied();
                let stage = PipelineStage::try_from(w.current_stage)
                    .ok()
                    .filter(|s| *s != PipelineStage::Unknown)
                    .or_else(|| sig.and_then(|s| PipelineStage::try_from(s.current_stage).ok()))
                    .unwrap_or(PipelineStage::Unknown);
                let mut pod = pod_from(
                    &w.pod_namespace,
                    &w.pod_name,
                    &node.name,
                    stage,
                    [w.cpu_usage, w.memory_usage, w.io_usage],
                    sig,
                );
                if pod.cpu_cores == 0.0 && pod.memory_bytes == 0.0 {
                    if let Some((c, m)) = sig.and_then(signature_usage) {
                        pod.cpu_cores = c;
                        pod.memory_bytes = m;
                    }
                }
                seen.insert((pod.namespace.clone(), pod.name.clone()));
                view.pods.push(pod);
            }
            view.nodes.push(node);
        }
        for s in signatures {
            let key = (s.pod_namespace.clone(), s.pod_name.clone());
            if s.node_name.is_empty() || seen.contains(&key) || view.node(&s.node_name).is_none() {
                continue;
            }
            let (cpu, mem) = signature_usage(s).unwrap_or((0.0, 0.0));
            let stage = PipelineStage::try_from(s.current_stage).unwrap_or(PipelineStage::Unknown);
            let pod = pod_from(
                &s.pod_namespace,
                &s.pod_name,
                &s.node_name,
                stage,
                [cpu, mem, 0.0],
                Some(s),
            );
            view.pods.push(pod);
        }
        view.nodes.sort_by(|a, b| a.name.cmp(&b.name));
        view.pods
            .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        view
    }

    /// A node by name.
    pub fn node(&self, name: &str) -> Option<&NodeView> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Pods on a node.
    pub fn pods_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a PodView> + 'a {
        self.pods.iter().filter(move |p| p.node == node)
    }

    /// A pod by namespace and name.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&PodView> {
        self.pods
            .iter()
            .find(|p| p.namespace == namespace && p.name == name)
    }
}

fn signature_usage(s: &WorkloadSignature) -> Option<(f64, f64)> {
    let m = s.current_metrics.as_ref()?;
    let cpu = m.cpu_request_cores * m.cpu_usage_percent / 100.0;
    let mem = m.memory_usage_bytes as f64;
    (cpu > 0.0 || mem > 0.0).then_some((cpu.max(0.0), mem.max(0.0)))
}

fn pod_from(
    namespace: &str,
    name: &str,
    node: &str,
    stage: PipelineStage,
    [cpu, mem, io]: [f64; 3],
    sig: Option<&WorkloadSignature>,
) -> PodView {
    let owner = infer_owner(name, node);
    let has_pv = owner
        .as_ref()
        .is_some_and(|o| o.kind == WorkloadKind::StatefulSet);
    let finite = |v: f64| if v.is_finite() { v.max(0.0) } else { 0.0 };
    PodView {
        namespace: namespace.to_string(),
        name: name.to_string(),
        node: node.to_string(),
        stage,
        io_pattern: sig
            .and_then(|s| IoPattern::try_from(s.io_pattern).ok())
            .unwrap_or(IoPattern::Unknown),
        cpu_cores: finite(cpu),
        memory_bytes: finite(mem),
        io_usage: finite(io),
        cpu_percent: sig
            .and_then(|s| s.current_metrics.as_ref())
            .map(|m| m.cpu_usage_percent)
            .filter(|v| v.is_finite() && *v > 0.0),
        gpu: sig.is_some_and(|s| s.is_gpu_workload),
        recommended_class: sig
            .and_then(|s| s.storage_recommendation.as_ref())
            .and_then(|r| StorageClass::try_from(r.recommended_class).ok())
            .unwrap_or(StorageClass::Unspecified),
        owner,
        has_pv,
        no_migrate: false,
        disruption_allowed: None,
    }
}

/// Age after which an insight no longer describes its node.
pub fn is_fresh(stored_at: SystemTime, now: SystemTime, stale_after: Duration) -> bool {
    now.duration_since(stored_at).unwrap_or_default() <= stale_after
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_inferred_from_controller_names() {
        let d = infer_owner("web-7d9f8b6c5d-x2k4p", "n1").unwrap();
        assert_eq!((d.kind, d.name.as_str()), (WorkloadKind::Deployment, "web"));
        let s = infer_owner("db-2", "n1").unwrap();
        assert_eq!((s.kind, s.name.as_str()), (WorkloadKind::StatefulSet, "db"));
        let st = infer_owner("etcd-node-a", "node-a").unwrap();
        assert_eq!(st.kind, WorkloadKind::Static);
        assert!(infer_owner("standalone", "n1").is_none());
    }
}
