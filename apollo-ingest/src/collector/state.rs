//! The collector's view of the cluster, kept current by kube-runtime
//! watchers (one list, then watch with bookmarks; relist on expiry).
//!
//! Each resource is a [`Table`] of compact records keyed by
//! `namespace/name` (or `name`). A relist (`Init` .. `InitDone`) builds a
//! fresh table and swaps it in, so objects deleted while the watch was down
//! disappear too.

use std::{
    collections::{HashMap, HashSet},
    fmt::Debug,
    sync::{Arc, Mutex},
    time::Instant,
};

use apollo_common::shutdown::CancellationToken;
use futures::StreamExt;
use kube::{
    runtime::{watcher, WatchStreamExt},
    Api, Resource, ResourceExt,
};
use serde::de::DeserializeOwned;

use super::{
    metrics::CollectorMetrics,
    model::{ClaimInfo, FieldProblem, NodeInfo, PodInfo, StorageClassInfo, VolumeInfo},
};

/// How long a deleted node stays listed as gone.
const GONE_MEMORY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Records of one resource kind.
#[derive(Debug)]
pub struct Table<T> {
    items: HashMap<String, T>,
    relist: Option<HashMap<String, T>>,
    synced: bool,
    failing_since: Option<Instant>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Self {
            items: HashMap::new(),
            relist: None,
            synced: false,
            failing_since: None,
        }
    }
}

impl<T> Table<T> {
    /// Records held.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.items.values()
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// A first full list has been applied.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// Since when list/watch calls have been failing, if they are.
    pub fn failing_since(&self) -> Option<Instant> {
        self.failing_since
    }
}

/// Every table of the view.
#[derive(Debug, Default)]
pub struct ClusterState {
    /// Nodes by name.
    pub nodes: Table<NodeInfo>,
    /// Pods by `namespace/name`.
    pub pods: Table<PodInfo>,
    /// PersistentVolumes by name.
    pub volumes: Table<VolumeInfo>,
    /// PersistentVolumeClaims by `namespace/name`.
    pub claims: Table<ClaimInfo>,
    /// StorageClasses by name.
    pub classes: Table<StorageClassInfo>,
    /// DCGM exporter targets by pod key: (node, scrape URL).
    pub dcgm_targets: Table<(String, String)>,
    /// node-exporter targets by pod key: (node, scrape URL).
    pub node_exporter_targets: Table<(String, String)>,
    /// Nodes deleted from the API (name -> when), no longer reported.
    pub gone: HashMap<String, Instant>,
}

/// Shared handle on the view.
pub type SharedState = Arc<Mutex<ClusterState>>;

/// Locks the view; a panic elsewhere while holding it leaves data that is
/// still consistent per record, so poisoning is ignored.
pub fn lock(state: &SharedState) -> std::sync::MutexGuard<'_, ClusterState> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Turns an object into its record, `None` to skip it.
pub type Extract<K, T> = Box<dyn Fn(&K, &mut Vec<FieldProblem>) -> Option<T> + Send>;

/// How one resource kind is turned into records.
pub struct Binding<K, T> {
    /// Metric label (`nodes`, `pods`, ...).
    pub resource: &'static str,
    /// The record of an object, `None` to skip it.
    pub extract: Extract<K, T>,
    /// Its table.
    pub table: fn(&mut ClusterState) -> &mut Table<T>,
}

fn key_of<K: Resource>(obj: &K) -> String {
    match obj.meta().namespace.as_deref() {
        Some(ns) => format!("{ns}/{}", obj.name_any()),
        None => obj.name_any(),
    }
}

/// Runs a watcher for `api` into `binding`'s table until `shutdown`.
/// Errors are counted and retried with kube-runtime's default backoff; the
/// table keeps its last good content meanwhile.
pub async fn run_watch<K, T>(
    api: Api<K>,
    config: watcher::Config,
    binding: Binding<K, T>,
    state: SharedState,
    metrics: CollectorMetrics,
    shutdown: CancellationToken,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    T: Send + 'static,
{
    let resource = binding.resource;
    let stream = watcher(api, config).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut problems = Vec::new();
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = stream.next() => next,
        };
        let Some(item) = next else { break };
        let event = match item {
            Ok(e) => e,
            Err(err) => {
                tracing::warn!(resource, %err, "kubernetes watch failed, retrying");
                metrics.watch_error(resource);
                let mut s = lock(&state);
                let table = (binding.table)(&mut s);
                table.failing_since.get_or_insert_with(Instant::now);
                continue;
            }
        };
        problems.clear();
        let mut s = lock(&state);
        let mut removed: Vec<String> = Vec::new();
        let label = match event {
            watcher::Event::Init => {
                (binding.table)(&mut s).relist = Some(HashMap::new());
                "init"
            }
            watcher::Event::InitApply(obj) => {
                let key = key_of(&obj);
                let rec = (binding.extract)(&obj, &mut problems);
                let table = (binding.table)(&mut s);
                if let (Some(rec), Some(buf)) = (rec, table.relist.as_mut()) {
                    buf.insert(key, rec);
                }
                "init_apply"
            }
            watcher::Event::InitDone => {
                let table = (binding.table)(&mut s);
                if let Some(fresh) = table.relist.take() {
                    let old: HashSet<&String> = table.items.keys().collect();
                    removed = old
                        .into_iter()
                        .filter(|k| !fresh.contains_key(*k))
                        .cloned()
                        .collect();
                    table.items = fresh;
                }
                table.synced = true;
                "init_done"
            }
            watcher::Event::Apply(obj) => {
                let key = key_of(&obj);
                let rec = (binding.extract)(&obj, &mut problems);
                let table = (binding.table)(&mut s);
                match rec {
                    Some(rec) => {
                        table.items.insert(key, rec);
                    }
                    None => {
                        if table.items.remove(&key).is_some() {
                            removed.push(key);
                        }
                    }
                }
                "apply"
            }
            watcher::Event::Delete(obj) => {
                let key = key_of(&obj);
                let table = (binding.table)(&mut s);
                if table.items.remove(&key).is_some() {
                    removed.push(key);
                }
                "delete"
            }
        };
        let table = (binding.table)(&mut s);
        table.failing_since = None;
        let len = table.len();
        if resource == "nodes" {
            let now = Instant::now();
            for name in &removed {
                s.gone.insert(name.clone(), now);
                metrics.node_gone();
                tracing::info!(node = %name, "node deleted, no longer reported");
            }
            let present: Vec<String> = s
                .gone
                .keys()
                .filter(|n| s.nodes.items.contains_key(*n))
                .cloned()
                .collect();
            for n in present {
                s.gone.remove(&n);
            }
            // Autoscaled clusters delete nodes all the time: remember them
            // only long enough to explain why they stopped being reported.
            s.gone.retain(|_, at| at.elapsed() < GONE_MEMORY);
        }
        drop(s);
        metrics.watch_event(resource, label);
        metrics.set_objects(resource, len);
        for p in &problems {
            tracing::debug!(resource, field = p.field, detail = %p.detail, "unusable field");
            metrics.field_problem(p.field);
        }
    }
}

/// Node binding.
pub fn nodes() -> Binding<k8s_openapi::api::core::v1::Node, NodeInfo> {
    Binding {
        resource: "nodes",
        extract: Box::new(|n, p| Some(NodeInfo::from_node(n, p))),
        table: |s| &mut s.nodes,
    }
}

/// Pod binding.
pub fn pods() -> Binding<k8s_openapi::api::core::v1::Pod, PodInfo> {
    Binding {
        resource: "pods",
        extract: Box::new(|pod, p| Some(PodInfo::from_pod(pod, p))),
        table: |s| &mut s.pods,
    }
}

/// PersistentVolume binding.
pub fn volumes() -> Binding<k8s_openapi::api::core::v1::PersistentVolume, VolumeInfo> {
    Binding {
        resource: "persistentvolumes",
        extract: Box::new(|pv, p| Some(VolumeInfo::from_pv(pv, p))),
        table: |s| &mut s.volumes,
    }
}

/// PersistentVolumeClaim binding.
pub fn claims() -> Binding<k8s_openapi::api::core::v1::PersistentVolumeClaim, ClaimInfo> {
    Binding {
        resource: "persistentvolumeclaims",
        extract: Box::new(|pvc, _| Some(ClaimInfo::from_pvc(pvc))),
        table: |s| &mut s.claims,
    }
}

/// StorageClass binding.
pub fn classes() -> Binding<k8s_openapi::api::storage::v1::StorageClass, StorageClassInfo> {
    Binding {
        resource: "storageclasses",
        extract: Box::new(|sc, _| Some(StorageClassInfo::from_class(sc))),
        table: |s| &mut s.classes,
    }
}

/// The scrape target of an exporter pod: `(node, http://<podIP>:<port>/metrics)`
/// for the container port named `port_name`; `None` while the pod is not
/// running on a node with an IP.
pub fn exporter_target(
    pod: &k8s_openapi::api::core::v1::Pod,
    port_name: &str,
) -> Option<(String, String)> {
    let node = pod.spec.as_ref()?.node_name.clone()?;
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let ip = status.pod_ip.clone()?;
    let port = pod
        .spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(port_name))?
        .container_port;
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip
    };
    Some((node, format!("http://{host}:{port}/metrics")))
}

/// Exporter pod binding: `resource` names the metric label, `port_name` the
/// container port scraped, `table` where targets go.
pub fn exporters(
    resource: &'static str,
    port_name: String,
    table: fn(&mut ClusterState) -> &mut Table<(String, String)>,
) -> Binding<k8s_openapi::api::core::v1::Pod, (String, String)> {
    Binding {
        resource,
        extract: Box::new(move |pod, _| exporter_target(pod, &port_name)),
        table,
    }
}
