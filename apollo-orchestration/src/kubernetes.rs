//! Kubernetes metadata, Events and leader election.
//!
//! - [`Metadata`]: owners with replica counts, PodDisruptionBudgets, the
//!   no-migrate annotation, PVC mounts and control-plane nodes, read with list
//!   calls and layered onto the [`PlanningView`] so the rails use real data.
//! - [`EventRecorder`]: a `core/v1` Event on the object each issued policy
//!   concerns, best effort.
//! - [`Elector`]: leader election on a `coordination.k8s.io/v1` Lease, so that
//!   with several replicas exactly one plans and issues policies.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use apollo_common::shutdown::CancellationToken;
use apollo_proto::{orchestration_policy::Target, OrchestrationAction, OrchestrationPolicy};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Event, EventSource, Node, ObjectReference, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, MicroTime, ObjectMeta, OwnerReference, Time,
};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ListParams, PostParams};
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::view::{Owner, PlanningView, WorkloadKind, CONTROL_PLANE_ROLES, NO_MIGRATE_ANNOTATION};

/// Component name on Events and the default Lease name.
pub const COMPONENT: &str = "apollo-orchestration";

/// Annotation the kubelet puts on mirror pods of static pods.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Errors talking to the Kubernetes API.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// A request failed.
    #[error("kubernetes {what}: {source}")]
    Api {
        /// What was requested.
        what: &'static str,
        /// The client error.
        #[source]
        source: kube::Error,
    },
}

fn api_err(what: &'static str) -> impl FnOnce(kube::Error) -> KubeError {
    move |source| KubeError::Api { what, source }
}

/// A node taint that keeps pods off (`NoSchedule` or `NoExecute`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTaint {
    /// Key.
    pub key: String,
    /// Value (empty when none).
    pub value: String,
    /// Effect.
    pub effect: String,
}

/// A pod toleration, as the scheduler matches it against taints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodToleration {
    /// Key; `None` with `Exists` tolerates every taint.
    pub key: Option<String>,
    /// `Equal` (default) or `Exists`.
    pub operator: String,
    /// Value for `Equal`.
    pub value: String,
    /// Effect; `None` matches every effect.
    pub effect: Option<String>,
}

impl PodToleration {
    /// Whether this toleration tolerates `t`.
    pub fn tolerates(&self, t: &NodeTaint) -> bool {
        if self.effect.as_ref().is_some_and(|e| *e != t.effect) {
            return false;
        }
        match (&self.key, self.operator.as_str()) {
            (None, "Exists") => true,
            (Some(k), "Exists") => *k == t.key,
            (Some(k), _) => *k == t.key && self.value == t.value,
            (None, _) => false,
        }
    }
}

/// What Kubernetes says about one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodMeta {
    /// Controlling workload (the Deployment, not its ReplicaSet), with its
    /// desired replicas; `None` for a bare pod.
    pub owner: Option<Owner>,
    /// PersistentVolumeClaims the pod mounts.
    pub claims: Vec<String>,
    /// Annotated [`NO_MIGRATE_ANNOTATION`] with a value other than `false`.
    pub no_migrate: bool,
    /// Every PodDisruptionBudget selecting the pod allows a disruption now
    /// (true when none selects it).
    pub disruption_allowed: bool,
    /// Its tolerations: which tainted nodes it may move to.
    pub tolerations: Vec<PodToleration>,
}

/// What Kubernetes says about one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeMeta {
    /// Carries a control-plane role label or taint.
    pub control_plane: bool,
    /// Taints as `key=value:Effect`.
    pub taints: Vec<String>,
    /// Cordoned (`spec.unschedulable`): never a target.
    pub unschedulable: bool,
    /// `NoSchedule`/`NoExecute` taints: a target only for pods tolerating them.
    pub blocking_taints: Vec<NodeTaint>,
}

/// Kubernetes metadata of the cluster at one point in time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata {
    /// Pods by `namespace/name`.
    pub pods: HashMap<String, PodMeta>,
    /// Nodes by name.
    pub nodes: HashMap<String, NodeMeta>,
}

fn key(ns: Option<&String>, name: Option<&String>) -> String {
    format!(
        "{}/{}",
        ns.map_or("", String::as_str),
        name.map_or("", String::as_str)
    )
}

/// Objects of one kind by `namespace/name`.
fn by_key<K: kube::Resource>(objects: &[K]) -> HashMap<String, &K> {
    objects
        .iter()
        .map(|o| {
            let m = o.meta();
            (key(m.namespace.as_ref(), m.name.as_ref()), o)
        })
        .collect()
}

fn controller(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))
}

/// Whether `selector` selects `labels` (matchLabels and matchExpressions).
/// An empty selector selects every pod of the namespace, as for PDBs.
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

/// Raw objects [`Metadata::build`] reads, as the list calls return them.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    /// Pods (all namespaces).
    pub pods: Vec<Pod>,
    /// ReplicaSets.
    pub replica_sets: Vec<ReplicaSet>,
    /// Deployments.
    pub deployments: Vec<Deployment>,
    /// StatefulSets.
    pub stateful_sets: Vec<StatefulSet>,
    /// PodDisruptionBudgets.
    pub pdbs: Vec<PodDisruptionBudget>,
    /// Nodes.
    pub nodes: Vec<Node>,
}

impl Metadata {
    /// Resolves owners (Pod -> ReplicaSet -> Deployment, StatefulSet,
    /// DaemonSet, static pods), PDBs, annotations, PVC mounts and node roles.
    pub fn build(o: &Objects) -> Self {
        let rs = by_key(&o.replica_sets);
        let deploy = by_key(&o.deployments);
        let sts = by_key(&o.stateful_sets);
        let empty = BTreeMap::new();
        let mut pods = HashMap::new();
        for pod in &o.pods {
            let m = &pod.metadata;
            let ns = m.namespace.clone().unwrap_or_default();
            let pod_key = key(m.namespace.as_ref(), m.name.as_ref());
            let replicas = |r: Option<i32>| Some(r.unwrap_or(1).max(0) as u32);
            let owner_of = |kind, name: &str, r| Owner {
                kind,
                name: name.to_string(),
                replicas: r,
                inferred: false,
            };
            let mirror = m
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(MIRROR_ANNOTATION));
            let owner = match controller(m) {
                _ if mirror => Some(owner_of(
                    WorkloadKind::Static,
                    m.name.as_deref().unwrap_or_default(),
                    None,
                )),
                Some(c) => Some(match c.kind.as_str() {
                    "ReplicaSet" => {
                        let r = rs.get(&format!("{ns}/{}", c.name));
                        match r.and_then(|r| controller(&r.metadata).map(|d| (r, d))) {
                            Some((_, d)) if d.kind == "Deployment" => {
                                let spec = deploy.get(&format!("{ns}/{}", d.name)).map(|d| &d.spec);
                                owner_of(
                                    WorkloadKind::Deployment,
                                    &d.name,
                                    spec.and_then(|s| replicas(s.replicas)),
                                )
                            }
                            _ => owner_of(
                                WorkloadKind::ReplicaSet,
                                &c.name,
                                r.map(|r| &r.spec).and_then(|s| replicas(s.replicas)),
                            ),
                        }
                    }
                    "StatefulSet" => owner_of(
                        WorkloadKind::StatefulSet,
                        &c.name,
                        sts.get(&format!("{ns}/{}", c.name))
                            .map(|s| &s.spec)
                            .and_then(|s| replicas(s.replicas)),
                    ),
                    "DaemonSet" => owner_of(WorkloadKind::DaemonSet, &c.name, None),
                    "Node" => owner_of(WorkloadKind::Static, &c.name, None),
                    _ => owner_of(WorkloadKind::Other, &c.name, None),
                }),
                None => None,
            };
            let claims: Vec<String> = pod
                .spec
                .iter()
                .flat_map(|s| s.volumes.iter().flatten())
                .filter_map(|v| v.persistent_volume_claim.as_ref())
                .map(|c| c.claim_name.clone())
                .collect();
            let no_migrate = m
                .annotations
                .as_ref()
                .and_then(|a| a.get(NO_MIGRATE_ANNOTATION))
                .is_some_and(|v| !v.trim().eq_ignore_ascii_case("false"));
            let labels = m.labels.as_ref().unwrap_or(&empty);
            let disruption_allowed = o
                .pdbs
                .iter()
                .filter(|b| b.metadata.namespace.as_deref() == Some(ns.as_str()))
                .filter(|b| {
                    b.spec
                        .as_ref()
                        .and_then(|s| s.selector.as_ref())
                        .is_some_and(|sel| selects(sel, labels))
                })
                .all(|b| {
                    b.status
                        .as_ref()
                        .is_some_and(|s| s.disruptions_allowed.unwrap_or(0) > 0)
                });
            let tolerations = pod
                .spec
                .iter()
                .flat_map(|s| s.tolerations.iter().flatten())
                .map(|t| PodToleration {
                    key: t.key.clone().filter(|k| !k.is_empty()),
                    operator: t.operator.clone().unwrap_or_else(|| "Equal".into()),
                    value: t.value.clone().unwrap_or_default(),
                    effect: t.effect.clone().filter(|e| !e.is_empty()),
                })
                .collect();
            pods.insert(
                pod_key,
                PodMeta {
                    owner,
                    claims,
                    no_migrate,
                    disruption_allowed,
                    tolerations,
                },
            );
        }
        let nodes = o
            .nodes
            .iter()
            .filter_map(|n| {
                let name = n.metadata.name.clone()?;
                let role_label = n.metadata.labels.iter().flatten().any(|(k, _)| {
                    k.strip_prefix("node-role.kubernetes.io/")
                        .is_some_and(|r| CONTROL_PLANE_ROLES.contains(&r))
                });
                let taints: Vec<_> = n
                    .spec
                    .iter()
                    .flat_map(|s| s.taints.iter().flatten())
                    .collect();
                let role_taint = taints.iter().any(|t| {
                    t.key
                        .strip_prefix("node-role.kubernetes.io/")
                        .is_some_and(|r| CONTROL_PLANE_ROLES.contains(&r))
                });
                let blocking_taints = taints
                    .iter()
                    .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
                    .map(|t| NodeTaint {
                        key: t.key.clone(),
                        value: t.value.clone().unwrap_or_default(),
                        effect: t.effect.clone(),
                    })
                    .collect();
                Some((
                    name,
                    NodeMeta {
                        unschedulable: n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true),
                        blocking_taints,
                        control_plane: role_label || role_taint,
                        taints: taints
                            .iter()
                            .map(|t| {
                                format!(
                                    "{}={}:{}",
                                    t.key,
                                    t.value.as_deref().unwrap_or_default(),
                                    t.effect
                                )
                            })
                            .collect(),
                    },
                ))
            })
            .collect();
        Self { pods, nodes }
    }

    /// Lists everything [`Metadata::build`] needs.
    pub async fn fetch(client: &kube::Client) -> Result<Self, KubeError> {
        let lp = ListParams::default();
        let c = client.clone();
        let objects = Objects {
            pods: Api::<Pod>::all(c.clone())
                .list(&lp)
                .await
                .map_err(api_err("list pods"))?
                .items,
            replica_sets: Api::<ReplicaSet>::all(c.clone())
                .list(&lp)
                .await
                .map_err(api_err("list replicasets"))?
                .items,
            deployments: Api::<Deployment>::all(c.clone())
                .list(&lp)
                .await
                .map_err(api_err("list deployments"))?
                .items,
            stateful_sets: Api::<StatefulSet>::all(c.clone())
                .list(&lp)
                .await
                .map_err(api_err("list statefulsets"))?
                .items,
            pdbs: Api::<PodDisruptionBudget>::all(c.clone())
                .list(&lp)
                .await
                .map_err(api_err("list poddisruptionbudgets"))?
                .items,
            nodes: Api::<Node>::all(c)
                .list(&lp)
                .await
                .map_err(api_err("list nodes"))?
                .items,
        };
        Ok(Self::build(&objects))
    }

    /// Whether the pod `namespace/name` may be moved to `node`: not when
    /// the node is cordoned or has a `NoSchedule`/`NoExecute` taint the pod
    /// does not tolerate. Nodes or pods Kubernetes did not list pass.
    pub fn admits(&self, pod: &str, node: &str) -> Result<(), String> {
        let Some(n) = self.nodes.get(node) else {
            return Ok(());
        };
        if n.unschedulable {
            return Err(format!("{node} is cordoned"));
        }
        let tolerations = self.pods.get(pod).map(|p| p.tolerations.as_slice());
        for t in &n.blocking_taints {
            if !tolerations
                .unwrap_or_default()
                .iter()
                .any(|tol| tol.tolerates(t))
            {
                return Err(format!(
                    "{node} has taint {}={}:{} that {pod} does not tolerate",
                    t.key, t.value, t.effect
                ));
            }
        }
        Ok(())
    }

    /// Layers the metadata onto a view built from the insights: owners and
    /// replica counts, PV mounts, no-migrate, PDBs, control-plane nodes. Pods
    /// Kubernetes does not list keep what the insights gave them.
    pub fn apply(&self, view: &mut PlanningView) {
        for pod in &mut view.pods {
            let Some(m) = self.pods.get(&pod.key()) else {
                continue;
            };
            pod.owner = m.owner.clone();
            pod.has_pv = !m.claims.is_empty();
            pod.no_migrate = m.no_migrate;
            pod.disruption_allowed = Some(m.disruption_allowed);
        }
        for node in &mut view.nodes {
            if let Some(m) = self.nodes.get(&node.name) {
                node.control_plane |= m.control_plane;
            }
        }
    }
}

/// What the engine knows about Kubernetes.
#[derive(Debug, Clone, Default)]
pub enum KubeState {
    /// Not configured (`--kubernetes` off).
    #[default]
    Disabled,
    /// Configured but the last read failed.
    Unreachable(String),
    /// The latest metadata.
    Ready(Arc<Metadata>),
}

/// Refreshes the engine's metadata every `interval` until `shutdown`; a
/// failed read marks Kubernetes unreachable (planning goes on without it).
pub async fn follow_metadata(
    client: kube::Client,
    engine: crate::engine::Engine,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match Metadata::fetch(&client).await {
            Ok(m) => {
                engine.metrics().kube_reads("ok");
                engine.set_kubernetes(KubeState::Ready(Arc::new(m)));
            }
            Err(err) => {
                engine.metrics().kube_reads("error");
                tracing::warn!(%err, "kubernetes metadata unavailable");
                engine.set_kubernetes(KubeState::Unreachable(err.to_string()));
            }
        }
    }
}

/// Kubernetes limits an Event message to 1024 bytes.
const EVENT_MESSAGE_MAX: usize = 1024;

/// The object a policy concerns, as an Event's `involvedObject`.
pub fn involved_object(p: &OrchestrationPolicy) -> Option<ObjectReference> {
    let (api_version, kind, namespace, name) = match p.target.as_ref()? {
        Target::Migration(m) => ("v1", "Pod".to_string(), &m.pod_namespace, &m.pod_name),
        Target::Autoscaling(a) => (
            "apps/v1",
            a.workload_kind.clone(),
            &a.workload_namespace,
            &a.workload_name,
        ),
        Target::Provisioning(v) => (
            "v1",
            "PersistentVolumeClaim".to_string(),
            &v.namespace,
            &v.pvc_name,
        ),
    };
    if namespace.is_empty() || name.is_empty() {
        return None;
    }
    Some(ObjectReference {
        api_version: Some(api_version.into()),
        kind: Some(kind),
        namespace: Some(namespace.clone()),
        name: Some(name.clone()),
        ..ObjectReference::default()
    })
}

/// The Event recorded for an issued policy.
pub fn event_for(p: &OrchestrationPolicy, now: Timestamp) -> Option<Event> {
    let object = involved_object(p)?;
    let action = OrchestrationAction::try_from(p.action).unwrap_or_default();
    let reason: String = crate::policy::action_token(action)
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    let mut message = format!("{} policy {}: {}", reason, p.request_id, p.reason);
    if message.len() > EVENT_MESSAGE_MAX {
        let mut cut = EVENT_MESSAGE_MAX;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    let name = format!(
        "{}.{}",
        object.name.as_deref().unwrap_or_default(),
        p.request_id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(16)
            .collect::<String>()
    );
    Some(Event {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: object.namespace.clone(),
            ..ObjectMeta::default()
        },
        involved_object: object,
        reason: Some(format!("Apollo{reason}")),
        message: Some(message),
        type_: Some("Normal".into()),
        source: Some(EventSource {
            component: Some(COMPONENT.into()),
            host: None,
        }),
        reporting_component: Some(COMPONENT.into()),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        count: Some(1),
        ..Event::default()
    })
}

/// Records an Event per issued policy, off the planning path.
#[derive(Clone)]
pub struct EventRecorder {
    client: kube::Client,
    metrics: Metrics,
}

impl std::fmt::Debug for EventRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventRecorder").finish_non_exhaustive()
    }
}

impl EventRecorder {
    /// A recorder using `client`.
    pub fn new(client: kube::Client, metrics: Metrics) -> Self {
        Self { client, metrics }
    }

    /// Creates the Event of `policy`; the outcome is counted in
    /// `apollo_orchestration_kube_events{outcome}`.
    pub async fn record(&self, policy: &OrchestrationPolicy) -> Result<(), KubeError> {
        let Some(ev) = event_for(policy, Timestamp::now()) else {
            self.metrics.kube_events("skipped");
            return Ok(());
        };
        let ns = ev.metadata.namespace.clone().unwrap_or_default();
        let r = Api::<Event>::namespaced(self.client.clone(), &ns)
            .create(&PostParams::default(), &ev)
            .await
            .map_err(api_err("create event"));
        self.metrics
            .kube_events(if r.is_ok() { "created" } else { "error" });
        r.map(|_| ())
    }

    /// Records in the background: never blocks the caller, failures are
    /// logged and counted.
    pub fn spawn_record(&self, policy: OrchestrationPolicy) {
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(err) = this.record(&policy).await {
                tracing::warn!(%err, request_id = %policy.request_id, "event not recorded");
            }
        });
    }
}

/// Settings of the leader election.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSettings {
    /// Lease name.
    pub name: String,
    /// Namespace of the Lease.
    pub namespace: String,
    /// This replica's identity (unique among replicas).
    pub identity: String,
    /// How long a holder that stops renewing keeps the lease.
    pub duration: Duration,
    /// Interval between renewals (and acquisition attempts).
    pub renew: Duration,
}

/// Leader election on a `coordination.k8s.io/v1` Lease.
///
/// The holder renews `spec.renewTime` every `renew`; another replica takes
/// the lease over once `renewTime + leaseDurationSeconds` has passed by its
/// own clock. Writes carry the observed `resourceVersion`, so of two replicas
/// racing for an expired lease exactly one wins (the other gets 409).
#[derive(Clone)]
pub struct Elector {
    api: Api<Lease>,
    cfg: LeaseSettings,
}

impl std::fmt::Debug for Elector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Elector")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl Elector {
    /// An elector for `cfg` using `client`.
    pub fn new(client: kube::Client, cfg: LeaseSettings) -> Self {
        Self {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
        }
    }

    fn spec(&self, now: Timestamp, acquired: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.cfg.identity.clone()),
            lease_duration_seconds: Some(self.cfg.duration.as_secs().max(1) as i32),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One attempt to acquire or renew: `true` when this replica holds the
    /// lease afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, KubeError> {
        let now = Timestamp::now();
        let current = self
            .api
            .get_opt(&self.cfg.name)
            .await
            .map_err(api_err("get lease"))?;
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now, now, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(api_err("create lease")(e)),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let transitions = spec.lease_transitions.unwrap_or(0);
        let new_spec = if holder == self.cfg.identity {
            let acquired = spec.acquire_time.map_or(now, |t| t.0);
            self.spec(now, acquired, transitions)
        } else {
            let duration = SignedDuration::from_secs(i64::from(
                spec.lease_duration_seconds.unwrap_or(0).max(0),
            ));
            let expired = spec
                .renew_time
                .as_ref()
                .and_then(|t| t.0.checked_add(duration).ok())
                .is_none_or(|until| until < now);
            if !holder.is_empty() && !expired {
                return Ok(false);
            }
            self.spec(now, now, transitions + 1)
        };
        lease.spec = Some(new_spec);
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(api_err("update lease")(e)),
        }
    }

    /// Gives the lease up if this replica holds it (clears the holder), so
    /// another replica takes over without waiting for it to expire.
    pub async fn release(&self) -> Result<bool, KubeError> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.cfg.name)
            .await
            .map_err(api_err("get lease"))?
        else {
            return Ok(false);
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(false);
        };
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return Ok(false);
        }
        spec.holder_identity = None;
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(api_err("release lease")(e)),
        }
    }

    /// Runs the election until `shutdown`, publishing leadership on `tx`,
    /// then releases the lease. An API error ends leadership at once
    /// (another replica may take over once the lease expires). Leadership is
    /// shown in the `apollo_orchestration_leader` gauge and logged on each
    /// change.
    pub async fn run(self, tx: watch::Sender<bool>, metrics: Metrics, shutdown: CancellationToken) {
        loop {
            let leader = match self.try_acquire_or_renew().await {
                Ok(l) => l,
                Err(err) => {
                    tracing::warn!(%err, lease = %self.cfg.name, "leader election");
                    false
                }
            };
            if *tx.borrow() != leader {
                tracing::info!(
                    identity = %self.cfg.identity,
                    lease = %self.cfg.name,
                    leader,
                    "leadership changed"
                );
            }
            metrics.leader.set(i64::from(leader));
            tx.send_replace(leader);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.cfg.renew) => {}
            }
        }
        metrics.leader.set(0);
        tx.send_replace(false);
        if let Err(err) = self.release().await {
            tracing::warn!(%err, lease = %self.cfg.name, "lease not released");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selectors_match_labels_and_expressions() {
        let req = |key: &str, op: &str, values: &[&str]| LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        };
        let sel = LabelSelector {
            match_labels: Some(labels(&[("app", "etl")])),
            match_expressions: Some(vec![
                req("tier", "NotIn", &["batch"]),
                req("zone", "Exists", &[]),
            ]),
        };
        assert!(selects(&sel, &labels(&[("app", "etl"), ("zone", "a")])));
        assert!(!selects(&sel, &labels(&[("app", "etl")])), "zone missing");
        assert!(!selects(
            &sel,
            &labels(&[("app", "etl"), ("zone", "a"), ("tier", "batch")])
        ));
        assert!(!selects(&sel, &labels(&[("app", "web"), ("zone", "a")])));
        assert!(selects(&LabelSelector::default(), &labels(&[])));
        let bad = LabelSelector {
            match_expressions: Some(vec![req("app", "Like", &["etl"])]),
            ..LabelSelector::default()
        };
        assert!(
            !selects(&bad, &labels(&[("app", "etl")])),
            "unknown operator"
        );
    }

    #[test]
    fn tolerations_match_taints_like_the_scheduler() {
        let taint = NodeTaint {
            key: "gpu".into(),
            value: "a100".into(),
            effect: "NoSchedule".into(),
        };
        let tol = |key: Option<&str>, op: &str, value: &str, effect: Option<&str>| PodToleration {
            key: key.map(String::from),
            operator: op.into(),
            value: value.into(),
            effect: effect.map(String::from),
        };
        assert!(tol(Some("gpu"), "Equal", "a100", None).tolerates(&taint));
        assert!(!tol(Some("gpu"), "Equal", "h100", None).tolerates(&taint));
        assert!(tol(Some("gpu"), "Exists", "", Some("NoSchedule")).tolerates(&taint));
        assert!(!tol(Some("gpu"), "Exists", "", Some("NoExecute")).tolerates(&taint));
        assert!(tol(None, "Exists", "", None).tolerates(&taint));
        assert!(!tol(None, "Equal", "", None).tolerates(&taint));
    }

    #[test]
    fn events_name_the_object_and_carry_the_reason() {
        let p = OrchestrationPolicy {
            request_id: "abc-123".into(),
            action: OrchestrationAction::ScaleUp as i32,
            reason: "x".repeat(2000),
            target: Some(Target::Autoscaling(apollo_proto::AutoscalingTarget {
                workload_name: "web".into(),
                workload_namespace: "shop".into(),
                workload_kind: "Deployment".into(),
                ..Default::default()
            })),
            ..OrchestrationPolicy::default()
        };
        let ev = event_for(&p, Timestamp::UNIX_EPOCH).unwrap();
        assert_eq!(ev.involved_object.kind.as_deref(), Some("Deployment"));
        assert_eq!(ev.involved_object.api_version.as_deref(), Some("apps/v1"));
        assert_eq!(ev.reason.as_deref(), Some("ApolloScaleUp"));
        assert_eq!(ev.message.as_ref().unwrap().len(), EVENT_MESSAGE_MAX);
        assert_eq!(ev.metadata.name.as_deref(), Some("web.abc123"));
        let none = OrchestrationPolicy::default();
        assert!(event_for(&none, Timestamp::UNIX_EPOCH).is_none());
    }
}
