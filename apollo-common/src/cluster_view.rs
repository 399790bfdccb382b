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
use opentelemetry::trace::SpanContext;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::bus::{from_json, Bus, StreamKind};
use crate::config::ViewArgs;
use crate::telemetry::current_span_context;

/// Messages the follower applies before it yields to the other tasks of its
/// runtime (a message takes some tens of microseconds to decode and apply;
/// the fallback runs the follower on the service's own runtime).
const YIELD_EVERY: usize = 8;

/// One entry of the view.
#[derive(Debug, Clone)]
pub struct Entry<T> {
    /// The latest message.
    pub value: Arc<T>,
    /// When JetStream stored it (publish time).
    pub stored_at: SystemTime,
    /// Its stream sequence (0 for entries applied directly).
    pub sequence: u64,
    /// The trace the message was consumed in (invalid when traces are not
    /// exported), so a decision that uses the entry can link to it.
    pub trace: SpanContext,
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EvictionLabels {
    /// `node` or `pod`.
    kind: &'static str,
    /// `capacity` (the bound was reached) or `expired` (not reported for
    /// the entry TTL).
    reason: &'static str,
}

#[derive(Clone, Default)]
struct ViewMetrics {
    applied: Counter,
    rejected: Counter,
    nodes: Gauge,
    pods: Gauge,
    last_stored: Gauge<f64, std::sync::atomic::AtomicU64>,
    evicted: Family<EvictionLabels, Counter>,
}

impl ViewMetrics {
    fn evicted(&self, kind: &'static str, reason: &'static str, n: usize) {
        if n > 0 {
            self.evicted
                .get_or_create(&EvictionLabels { kind, reason })
                .inc_by(n as u64);
        }
    }
}

/// Removes the entries reported least recently until `map` holds at most
/// `max`; returns the removed keys. Evicts a further 1% at once so a full
/// map does not pay a scan on every insert.
fn evict_oldest<K: Clone + Eq + std::hash::Hash, T>(
    map: &mut HashMap<K, Entry<T>>,
    max: usize,
) -> Vec<K> {
    if map.len() <= max {
        return Vec::new();
    }
    let target = max.saturating_sub(max / 100);
    let excess = map.len() - target;
    let mut by_age: Vec<(SystemTime, u64, K)> = map
        .iter()
        .map(|(k, e)| (e.stored_at, e.sequence, k.clone()))
        .collect();
    by_age.select_nth_unstable_by(excess - 1, |a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    by_age.truncate(excess);
    by_age
        .into_iter()
        .map(|(_, _, k)| {
            map.remove(&k);
            k
        })
        .collect()
}

/// Removes the entries older than `ttl` at `now`; returns their keys.
fn evict_expired<K: Clone + Eq + std::hash::Hash, T>(
    map: &mut HashMap<K, Entry<T>>,
    ttl: Duration,
    now: SystemTime,
) -> Vec<K> {
    let expired: Vec<K> = map
        .iter()
        .filter(|(_, e)| now.duration_since(e.stored_at).unwrap_or_default() > ttl)
        .map(|(k, _)| k.clone())
        .collect();
    for k in &expired {
        map.remove(k);
    }
    expired
}

/// Shared, cheaply cloneable view of the cluster.
#[derive(Clone)]
pub struct ClusterView {
    state: Arc<RwLock<State>>,
    changes: broadcast::Sender<ViewChange>,
    synced: Arc<watch::Sender<bool>>,
    metrics: ViewMetrics,
    limits: Arc<ViewArgs>,
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
    /// An empty view (not yet synced) with the default bounds.
    pub fn new() -> Self {
        Self::with_limits(ViewArgs::default())
    }

    /// An empty view holding at most `limits.max_nodes` nodes and
    /// `limits.max_pods` pods, each for at most `limits.entry_ttl` after its
    /// last report.
    pub fn with_limits(limits: ViewArgs) -> Self {
        let (changes, _) = broadcast::channel(4096);
        let (synced, _) = watch::channel(false);
        Self {
            state: Arc::default(),
            changes,
            synced: Arc::new(synced),
            metrics: ViewMetrics::default(),
            limits: Arc::new(limits),
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
        registry.register(
            "apollo_view_last_stored_timestamp_seconds",
            "When JetStream stored the newest message applied to the view (Unix time); \
             time() minus this is the view's staleness",
            self.metrics.last_stored.clone(),
        );
        for kind in ["node", "pod"] {
            for reason in ["capacity", "expired"] {
                let _ = self
                    .metrics
                    .evicted
                    .get_or_create(&EvictionLabels { kind, reason });
            }
        }
        registry.register(
            "apollo_view_evicted",
            "Nodes and pods dropped from the cluster view, by kind and reason (capacity, expired)",
            self.metrics.evicted.clone(),
        );
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces a node's insight (ignored without a node name, or when older
    /// than the entry it would replace). The entry remembers the trace of the
    /// current span.
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
        let entry = Entry {
            value: Arc::new(insight),
            stored_at,
            sequence,
            trace: current_span_context(),
        };
        if entry.is_stale(self.limits.entry_ttl) {
            // Replayed from the stream but already past the TTL.
            self.metrics.evicted("node", "expired", 1);
            return false;
        }
        let evicted = {
            let mut state = self.write();
            if let Some(old) = state.nodes.get(&name) {
                if sequence != 0 && old.sequence > sequence {
                    return false;
                }
            }
            state.nodes.insert(name.clone(), entry);
            let evicted = evict_oldest(&mut state.nodes, self.limits.max_nodes);
            self.metrics.nodes.set(state.nodes.len() as i64);
            evicted
        };
        self.applied(stored_at);
        self.metrics.evicted("node", "capacity", evicted.len());
        let _ = self.changes.send(ViewChange::Node(name));
        for node in evicted {
            let _ = self.changes.send(ViewChange::Node(node));
        }
        true
    }

    /// Replaces a pod's signature (ignored without namespace/name, or when
    /// older than the entry it would replace). The entry remembers the trace
    /// of the current span.
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
        let entry = Entry {
            value: Arc::new(signature),
            stored_at,
            sequence,
            trace: current_span_context(),
        };
        if entry.is_stale(self.limits.entry_ttl) {
            self.metrics.evicted("pod", "expired", 1);
            return false;
        }
        let evicted = {
            let mut state = self.write();
            if let Some(old) = state.pods.get(&key) {
                if sequence != 0 && old.sequence > sequence {
                    return false;
                }
            }
            state.pods.insert(key.clone(), entry);
            let evicted = evict_oldest(&mut state.pods, self.limits.max_pods);
            self.metrics.pods.set(state.pods.len() as i64);
            evicted
        };
        self.applied(stored_at);
        self.metrics.evicted("pod", "capacity", evicted.len());
        for (namespace, name) in std::iter::once(key).chain(evicted) {
            let _ = self.changes.send(ViewChange::Pod { namespace, name });
        }
        true
    }

    fn applied(&self, stored_at: SystemTime) {
        self.metrics.applied.inc();
        let at = stored_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        if at > self.metrics.last_stored.get() {
            self.metrics.last_stored.set(at);
        }
    }

    /// Drops the nodes and pods not reported for the entry TTL; returns how
    /// many. [`follow`](Self::follow) calls it periodically.
    pub fn expire_stale(&self) -> usize {
        self.expire_stale_at(SystemTime::now())
    }

    fn expire_stale_at(&self, now: SystemTime) -> usize {
        let ttl = self.limits.entry_ttl;
        let (nodes, pods) = {
            let mut state = self.write();
            let nodes = evict_expired(&mut state.nodes, ttl, now);
            let pods = evict_expired(&mut state.pods, ttl, now);
            self.metrics.nodes.set(state.nodes.len() as i64);
            self.metrics.pods.set(state.pods.len() as i64);
            (nodes, pods)
        };
        self.metrics.evicted("node", "expired", nodes.len());
        self.metrics.evicted("pod", "expired", pods.len());
        let n = nodes.len() + pods.len();
        for node in nodes {
            let _ = self.changes.send(ViewChange::Node(node));
        }
        for (namespace, name) in pods {
            let _ = self.changes.send(ViewChange::Pod { namespace, name });
        }
        n
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
            bus.rejected(subject, "unexpected subject");
            self.metrics.rejected.inc();
            return false;
        }
        bus.rejected(subject, "undecodable");
        self.metrics.rejected.inc();
        false
    }

    /// Rebuilds the view from the insight stream, then follows it until
    /// `shutdown`; re-subscribes after connection loss. The following runs on
    /// a thread and runtime of its own at `--view-follower-priority`, so
    /// decoding the stream never holds up the caller's runtime (the one that
    /// answers calls); if that thread cannot be started it runs on the
    /// caller's runtime instead.
    pub fn follow(&self, bus: Bus, shutdown: CancellationToken) {
        let work = Box::pin(self.clone().following(bus, shutdown));
        if let Err(not) =
            crate::background::spawn_runtime("view-follower", self.limits.follower_priority, work)
        {
            tracing::warn!(err = %not.error, "no thread for the view follower; following on the service's runtime");
            tokio::spawn(not.work);
        }
    }

    /// How the threads that follow this view are scheduled.
    pub fn follower_priority(&self) -> crate::background::FollowerPriority {
        self.limits.follower_priority
    }

    /// The follower's work: see [`ClusterView::follow`].
    async fn following(self, bus: Bus, shutdown: CancellationToken) {
        let view = self;
        {
            // One filter over the whole family (nats-server 2.9 has no multi-filter).
            let filters = vec![bus.subjects().all("insight")];
            let mut ready = bus.readiness();
            // A tenth of the TTL, between 1 s and 1 min.
            let sweep_every =
                (view.limits.entry_ttl / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
            let mut sweep = tokio::time::interval(sweep_every);
            sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                let mut since_yield = 0usize;
                loop {
                    let next = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = sweep.tick() => {
                            let n = view.expire_stale();
                            if n > 0 {
                                tracing::debug!(expired = n, "stale nodes and pods left the cluster view");
                            }
                            continue;
                        }
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
                            let span = bus.consumed("cluster_view", &msg);
                            span.in_scope(|| {
                                view.apply_message(
                                    &bus,
                                    msg.subject.as_str(),
                                    &msg.payload,
                                    stored_at,
                                    seq,
                                )
                            });
                            pending = left;
                            since_yield += 1;
                            if since_yield >= YIELD_EVERY {
                                // A busy stream is ready message after message:
                                // let the runtime's other tasks (the sweep, or
                                // calls when following on the service's
                                // runtime) run now and then.
                                since_yield = 0;
                                tokio::task::yield_now().await;
                            }
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
        }
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

    fn signature(ns: &str, pod: &str) -> WorkloadSignature {
        WorkloadSignature {
            pod_namespace: ns.into(),
            pod_name: pod.into(),
            ..Default::default()
        }
    }

    fn evicted(registry: &Registry, kind: &str, reason: &str) -> u64 {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        let series = format!("apollo_view_evicted_total{{kind=\"{kind}\",reason=\"{reason}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .map_or(0, |v| v.trim().parse().unwrap())
    }

    #[test]
    fn pods_past_the_bound_evict_the_least_recently_reported() {
        let view = ClusterView::with_limits(ViewArgs {
            max_pods: 100,
            ..ViewArgs::default()
        });
        let mut registry = Registry::default();
        view.register_metrics(&mut registry);
        let t0 = SystemTime::now() - Duration::from_secs(3600);
        for i in 0..1000u64 {
            assert!(view.upsert_pod(
                signature("flood", &format!("pod-{i}")),
                t0 + Duration::from_secs(i),
                i + 1
            ));
            assert!(view.len().1 <= 100, "{} pods after {i}", view.len().1);
        }
        // The newest pod is kept, the first ones are gone.
        assert!(view.pod("flood", "pod-999").is_some());
        assert!(view.pod("flood", "pod-0").is_none());
        let kept = view.len().1;
        assert!((99..=100).contains(&kept), "{kept}");
        assert_eq!(evicted(&registry, "pod", "capacity"), 1000 - kept as u64);
        // Every kept pod is newer than every evicted one.
        let oldest_kept = view.pods().iter().map(|e| e.stored_at).min().unwrap();
        assert!(oldest_kept >= t0 + Duration::from_secs(1000 - kept as u64));
    }

    #[test]
    fn nodes_past_the_bound_evict_and_announce_the_least_recently_reported() {
        let view = ClusterView::with_limits(ViewArgs {
            max_nodes: 3,
            ..ViewArgs::default()
        });
        let mut registry = Registry::default();
        view.register_metrics(&mut registry);
        let t = SystemTime::now();
        for (i, n) in ["a", "b", "c"].iter().enumerate() {
            view.upsert_node(insight(n, 1.0), t + Duration::from_secs(i as u64), 0);
        }
        let mut rx = view.subscribe();
        // "a" is refreshed, so "b" is now the least recently reported.
        view.upsert_node(insight("a", 2.0), t + Duration::from_secs(10), 0);
        view.upsert_node(insight("d", 1.0), t + Duration::from_secs(11), 0);
        assert_eq!(view.len().0, 3);
        assert!(view.node("b").is_none());
        for n in ["a", "c", "d"] {
            assert!(view.node(n).is_some(), "{n}");
        }
        assert_eq!(evicted(&registry, "node", "capacity"), 1);
        let changes: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert!(
            changes.contains(&ViewChange::Node("b".into())),
            "{changes:?}"
        );
    }

    #[test]
    fn entries_not_reported_for_the_ttl_expire() {
        let view = ClusterView::with_limits(ViewArgs {
            entry_ttl: Duration::from_secs(600),
            ..ViewArgs::default()
        });
        let mut registry = Registry::default();
        view.register_metrics(&mut registry);
        let now = SystemTime::now();
        view.upsert_node(insight("fresh", 1.0), now, 0);
        view.upsert_pod(signature("ns", "fresh"), now, 0);
        view.upsert_node(insight("quiet", 1.0), now - Duration::from_secs(500), 0);
        view.upsert_pod(signature("ns", "quiet"), now - Duration::from_secs(500), 0);
        // Already past the TTL when it arrives (a replay of old messages).
        assert!(!view.upsert_pod(
            signature("ns", "ancient"),
            now - Duration::from_secs(7200),
            0
        ));
        assert_eq!(view.len(), (2, 2));
        assert_eq!(evicted(&registry, "pod", "expired"), 1);

        // Nothing is past the TTL yet.
        assert_eq!(view.expire_stale(), 0);
        // 200 s later the quiet node and pod are 700 s old.
        assert_eq!(view.expire_stale_at(now + Duration::from_secs(200)), 2);
        assert!(view.node("quiet").is_none());
        assert!(view.pod("ns", "quiet").is_none());
        assert!(view.node("fresh").is_some());
        assert!(view.pod("ns", "fresh").is_some());
        assert_eq!(evicted(&registry, "node", "expired"), 1);
        assert_eq!(evicted(&registry, "pod", "expired"), 2);
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
