//! `ClusterView`: the latest `ClusterInsight` per node and `WorkloadSignature`
//! per pod, as the engines see the cluster.
//!
//! It is rebuilt from the insight stream at start (last message per subject)
//! and then kept current by following the stream, so an engine restart loses
//! nothing that JetStream retained. Every entry carries the time JetStream
//! stored it, so stale data (a node agent that stopped reporting) can be told
//! apart from fresh data.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use apollo_proto::{ClusterInsight, WorkloadSignature};
use futures::StreamExt;
use prometheus_client::{metrics::counter::Counter, metrics::gauge::Gauge, registry::Registry};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::bus::{from_json, Bus, StreamKind};

/// One entry of the view.
#[derive(Debug, Clone)]
pub struct Entry<T> {
    /// The latest message.
    pub value: Arc<T>,
    /// When JetStream stored it (publish time).
    pub stored_at: SystemTime,
    /// Its stream sequence (0 for entries applied directly).
    pub sequence: u64,
}

impl<T> Entry<T> {
    /// Time since the message was stored (zero if the clock went backwards).
    pub fn age(&self) -> Duration {
        SystemTime::now()
            .duration_since(self.stored_at)
            .unwrap_or_default()
    }

    /// Whether the entry is older than `max_age`.
    pub fn is_stale(&self, max_age: Duration) -> bool {
        self.age() > max_age
    }
}

/// What changed in the view; lets an engine update derived state incrementally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewChange {
    /// A node's insight was replaced.
    Node(String),
    /// A pod's signature was replaced.
    Pod {
        /// Namespace.
        namespace: String,
        /// Pod name.
        name: String,
    },
}

#[derive(Default)]
struct State {
    nodes: HashMap<String, Entry<ClusterInsight>>,
    pods: HashMap<(String, String), Entry<WorkloadSignature>>,
}

#[derive(Clone, Default)]
struct ViewMetrics {
    applied: Counter,
    rejected: Counter,
    nodes: Gauge,
    pods: Gauge,
}

/// Shared, cheaply cloneable view of the cluster.
#[derive(Clone)]
pub struct ClusterView {
    state: Arc<RwLock<State>>,
    changes: broadcast::Sender<ViewChange>,
    synced: Arc<watch::Sender<bool>>,
    metrics: ViewMetrics,
}

impl std::fmt::Debug for ClusterView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (n, p) = self.len();
        f.debug_struct("ClusterView")
            .field("nodes", &n)
            .field("pods", &p)
            .finish()
    }
}

impl Default for ClusterView {
    fn default() -> Self {
        Self::new()
    }
}

impl ClusterView {
    /// An empty view (not yet synced).
    pub fn new() -> Self {
        let (changes, _) = broadcast::channel(4096);
        let (synced, _) = watch::channel(false);
        Self {
            state: Arc::default(),
            changes,
            synced: Arc::new(synced),
            metrics: ViewMetrics::default(),
        }
    }

    /// Registers `apollo_view_*` metrics.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "apollo_view_messages_applied",
            "Insight messages applied to the cluster view",
            self.metrics.applied.clone(),
        );
        registry.register(
            "apollo_view_messages_rejected",
            "Insight messages from the stream that could not be decoded or lacked identity",
            self.metrics.rejected.clone(),
        );
        registry.register(
            "apollo_view_nodes",
            "Nodes in the cluster view",
            self.metrics.nodes.clone(),
        );
        registry.register(
            "apollo_view_pods",
            "Pods in the cluster view",
            self.metrics.pods.clone(),
        );
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces a node's insight (ignored without a node name, or when older
    /// than the entry it would replace).
    pub fn upsert_node(
        &self,
        insight: ClusterInsight,
        stored_at: SystemTime,
        sequence: u64,
    ) -> bool {
        if insight.node_name.is_empty() {
            self.metrics.rejected.inc();
            return false;
        }
        let name = insight.node_name.clone();
        {
            let mut state = self.write();
            if let Some(old) = state.nodes.get(&name) {
                if sequence != 0 && old.sequence > sequence {
                    return false;
                }
            }
            state.nodes.insert(
                name.clone(),
                Entry {
                    value: Arc::new(insight),
                    stored_at,
                    sequence,
                },
            );
            self.metrics.nodes.set(state.nodes.len() as i64);
        }
        self.metrics.applied.inc();
        let _ = self.changes.send(ViewChange::Node(name));
        true
    }

    /// Replaces a pod's signature (ignored without namespace/name, or when
    /// older than the entry it would replace).
    pub fn upsert_pod(
        &self,
        signature: WorkloadSignature,
        stored_at: SystemTime,
        sequence: u64,
    ) -> bool {
        if signature.pod_name.is_empty() || signature.pod_namespace.is_empty() {
            self.metrics.rejected.inc();
            return false;
        }
        let key = (signature.pod_namespace.clone(), signature.pod_name.clone());
        {
            let mut state = self.write();
            if let Some(old) = state.pods.get(&key) {
                if sequence != 0 && old.sequence > sequence {
                    return false;
                }
            }
            state.pods.insert(
                key.clone(),
                Entry {
                    value: Arc::new(signature),
                    stored_at,
                    sequence,
                },
            );
            self.metrics.pods.set(state.pods.len() as i64);
        }
        self.metrics.applied.inc();
        let _ = self.changes.send(ViewChange::Pod {
            namespace: key.0,
            name: key.1,
        });
        true
    }

    /// Drops a node (e.g. deleted from the cluster).
    pub fn remove_node(&self, name: &str) -> bool {
        let removed = {
            let mut state = self.write();
            let removed = state.nodes.remove(name).is_some();
            self.metrics.nodes.set(state.nodes.len() as i64);
            removed
        };
        if removed {
            let _ = self.changes.send(ViewChange::Node(name.to_string()));
        }
        removed
    }

    /// The latest insight of a node.
    pub fn node(&self, name: &str) -> Option<Entry<ClusterInsight>> {
        self.read().nodes.get(name).cloned()
    }

    /// The latest signature of a pod.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<Entry<WorkloadSignature>> {
        self.read()
            .pods
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Every node's latest insight.
    pub fn nodes(&self) -> Vec<Entry<ClusterInsight>> {
        self.read().nodes.values().cloned().collect()
    }

    /// Every pod's latest signature.
    pub fn pods(&self) -> Vec<Entry<WorkloadSignature>> {
        self.read().pods.values().cloned().collect()
    }

    /// (nodes, pods) counts.
    pub fn len(&self) -> (usize, usize) {
        let s = self.read();
        (s.nodes.len(), s.pods.len())
    }

    /// Whether the view holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0)
    }

    /// Change notifications (lagging receivers should resync from `nodes()`).
    pub fn subscribe(&self) -> broadcast::Receiver<ViewChange> {
        self.changes.subscribe()
    }

    /// True once the retained stream has been replayed.
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Waits until the replay finished or `timeout` passed.
    pub async fn wait_synced(&self, timeout: Duration) -> bool {
        let mut rx = self.synced.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|s| *s))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Readiness of a service that answers from this view: NATS ready *and*
    /// the retained stream replayed. A restarted engine thus reports SERVING
    /// only once its answers are the ones it gave before for the same state,
    /// never from a half-rebuilt view.
    pub fn serving_readiness(
        &self,
        bus: &Bus,
        shutdown: CancellationToken,
    ) -> watch::Receiver<bool> {
        let mut bus_ready = bus.readiness();
        let mut synced = self.synced.subscribe();
        let ready = *bus_ready.borrow_and_update() && *synced.borrow_and_update();
        let (tx, rx) = watch::channel(ready);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = bus_ready.changed() => if r.is_err() { return },
                    r = synced.changed() => if r.is_err() { return },
                }
                let ready = *bus_ready.borrow_and_update() && *synced.borrow_and_update();
                tx.send_replace(ready);
            }
        });
        rx
    }

    /// Applies one message from the insight stream by its subject.
    pub fn apply_message(
        &self,
        bus: &Bus,
        subject: &str,
        payload: &[u8],
        stored_at: SystemTime,
        sequence: u64,
    ) -> bool {
        let subjects = bus.subjects();
        if subjects.parse("insight.cluster", subject).is_some() {
            match from_json::<ClusterInsight>(payload) {
                Ok(insight) => return self.upsert_node(insight, stored_at, sequence),
                Err(err) => tracing::warn!(subject, %err, "undecodable cluster insight skipped"),
            }
        } else if subjects.parse("insight.workload", subject).is_some() {
            match from_json::<WorkloadSignature>(payload) {
                Ok(sig) => return self.upsert_pod(sig, stored_at, sequence),
                Err(err) => tracing::warn!(subject, %err, "undecodable workload signature skipped"),
            }
        } else {
            tracing::warn!(subject, "unexpected subject on insight stream");
        }
        self.metrics.rejected.inc();
        false
    }

    /// Rebuilds the view from the insight stream, then follows it until
    /// `shutdown`; re-subscribes after connection loss.
    pub fn follow(&self, bus: Bus, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let view = self.clone();
        tokio::spawn(async move {
            // One filter over the whole family (nats-server 2.9 has no multi-filter).
            let filters = vec![bus.subjects().all("insight")];
            let mut ready = bus.readiness();
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = ready.wait_for(|r| *r) => if r.is_err() { return },
                }
                let (mut pending, mut messages) = match bus
                    .latest_then_follow(StreamKind::Insight, filters.clone())
                    .await
                {
                    Ok(x) => x,
                    Err(err) => {
                        tracing::warn!(%err, "cannot follow insight stream, retrying");
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        }
                    }
                };
                if pending == 0 {
                    view.synced.send_replace(true);
                }
                loop {
                    let next = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        // Connection lost: follow anew once it is back rather
                        // than wait for the consumer's missed heartbeats.
                        r = ready.wait_for(|r| !*r) => {
                            if r.is_err() { return }
                            tracing::info!("NATS gone; following the insight stream anew when back");
                            break;
                        }
                        m = messages.next() => m,
                    };
                    match next {
                        Some(Ok(msg)) => {
                            let (stored_at, seq, left) = match msg.info() {
                                Ok(info) => (
                                    SystemTime::from(info.published),
                                    info.stream_sequence,
                                    info.pending,
                                ),
                                Err(_) => (SystemTime::now(), 0, 0),
                            };
                            view.apply_message(
                                &bus,
                                msg.subject.as_str(),
                                &msg.payload,
                                stored_at,
                                seq,
                            );
                            pending = left;
                            if pending == 0 && !view.is_synced() {
                                tracing::info!(
                                    nodes = view.len().0,
                                    pods = view.len().1,
                                    "cluster view rebuilt from stream"
                                );
                                view.synced.send_replace(true);
                            }
                        }
                        Some(Err(err)) => {
                            tracing::warn!(%err, "insight stream error, resubscribing");
                            break;
                        }
                        None => break,
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insight(node: &str, cpu: f64) -> ClusterInsight {
        ClusterInsight {
            node_name: node.into(),
            node_resources: Some(apollo_proto::NodeResources {
                cpu_used_cores: cpu,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn newer_sequence_wins_and_changes_are_announced() {
        let view = ClusterView::new();
        let mut rx = view.subscribe();
        let t = SystemTime::now();
        assert!(view.upsert_node(insight("n1", 1.0), t, 5));
        assert!(
            !view.upsert_node(insight("n1", 9.0), t, 3),
            "older message must not replace newer"
        );
        assert_eq!(
            view.node("n1")
                .unwrap()
                .value
                .node_resources
                .as_ref()
                .unwrap()
                .cpu_used_cores,
            1.0
        );
        assert_eq!(rx.try_recv().unwrap(), ViewChange::Node("n1".into()));
        assert!(rx.try_recv().is_err());
        assert!(!view.upsert_node(insight("", 1.0), t, 6));
        assert_eq!(view.len(), (1, 0));
    }

    #[test]
    fn age_tells_stale_entries_apart() {
        let view = ClusterView::new();
        view.upsert_node(
            insight("old", 1.0),
            SystemTime::now() - Duration::from_secs(600),
            1,
        );
        view.upsert_node(insight("new", 1.0), SystemTime::now(), 2);
        assert!(view.node("old").unwrap().is_stale(Duration::from_secs(120)));
        assert!(!view.node("new").unwrap().is_stale(Duration::from_secs(120)));
    }
}
