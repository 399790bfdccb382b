//! Keeps the [`ClusterSnapshot`] current: node insights from the
//! [`ClusterView`] change feed, forecasts from `apollo.forecast.>`, placements
//! assumed when a policy is issued, and bind-failure penalties from feedback.
//!
//! Concurrency: decisions never wait on updates. They rank on a published,
//! immutable [`ClusterSnapshot`] that writers replace whole (an atomic
//! pointer swap, [`arc_swap`]). Writers (node insights, forecasts,
//! assumptions, feedback, the sweeper) take one mutex, change a second copy
//! (the *draft*), then publish it; the copy readers let go of becomes the
//! next draft once the changes made since are replayed on it (left-right),
//! and is cloned instead only while a decision still reads it. View changes
//! are coalesced per node and applied in batches off the request path (a
//! blocking thread, at most [`MAX_BATCH`] nodes per hold of the mutex). The
//! assumption a decision makes is applied at once when no writer holds the
//! mutex, otherwise queued and applied by that writer before it publishes,
//! so a burst's next decision sees it as soon as that batch is out.
//! Forecasts and the pipeline index have leaf mutexes that are never held
//! while taking another lock.
//!
//! # Assume cache
//!
//! This mirrors kube-scheduler's assume/confirm cycle. kube-scheduler
//! *assumes* a pod on the node it picked (its cache counts the pod there at
//! once, so the next pod of a burst sees the node fuller), binds
//! asynchronously, and *confirms* the pod when the informer delivers it with
//! `spec.nodeName` set; an assumed pod whose bind fails is *forgotten*, and one
//! never confirmed expires after a TTL.
//!
//! Here a policy that names a top node assumes the pod there
//! ([`ClusterSnapshot::assume`]), recording the node's requested resources
//! (CPU, memory, per-GPU `allocated_milli`) of the insight it was made on: its
//! *baseline*. The node agent's `ClusterInsight` plays the informer's part, but
//! agents differ in what they send: some list the node's pods in
//! `running_workloads`, some only Running ones, many none at all, and every
//! insight's requests already include the pods bound before it was collected.
//! So that each placement is counted exactly once whatever the agent sends, a
//! new insight of a node ends each assumption on it that it already reflects:
//!
//! 1. **listed**: the insight lists the pod in `running_workloads`;
//! 2. **bound, then seen**: a successful `ReportSchedulingResult` for that node
//!    arrived and the insight was collected (`collected_at`, else the time
//!    JetStream stored it) after that report, so its requests include the pod;
//! 3. **covered**: the increase of the insight's requests over the
//!    assumption's baseline covers the pod's CPU, memory and GPU milli (an
//!    assumption that survives an insight is judged absent from it and takes
//!    that insight as its new baseline). With
//!    several assumptions on one node the increase is consumed in assume
//!    order: what rules 1 and 2 ended in the same pass is taken first, then
//!    each older assumption takes its share before a younger one is judged, so
//!    one bind never ends two assumptions. GPU increase is the sum of per-GPU
//!    increases (the device plugin may pick other GPUs than the engine did).
//!
//! Assumptions not reflected stay on top of the fresh state (re-applied; one
//! that no longer fits is dropped). Outside insights an assumption ends when a
//! failed bind is reported (forgotten, node penalised) or after
//! `--assume-ttl` (expired). A successful report for another node moves it
//! there (with that node's baseline).
//!
//! Rules 1 and 2 are exact and take precedence, with one caveat: rule 2
//! compares the agent's clock (`collected_at`) with the engine's (when the
//! report arrived), so a skew larger than the time from bind to report can
//! end an assumption one insight early. Rule 3 is a judgement: a pod bound
//! by someone else in the same interval can be taken for the assumed one,
//! which then stops counting until the next insight shows the node fuller.
//! An insight whose requests fell (pods left) may cover nothing; the
//! assumption then waits for rule 1, 2 or the TTL, the pod counted twice
//! meanwhile.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant, SystemTime};

use apollo_common::bus::{from_json, Bus, StreamKind};
use apollo_common::cluster_view::ViewChange;
use apollo_common::shutdown::CancellationToken;
use apollo_common::ClusterView;
use apollo_proto::{ClusterInsight, ResourcePrediction};
use arc_swap::ArcSwap;
use futures::StreamExt;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use crate::config::EngineConfig;
use crate::decision::DelayHint;
use crate::demand::PodDemand;
use crate::fgd::{ShapeDistribution, DEFAULT_COVERAGE};
use crate::scorer::NodeScorer;
use crate::snapshot::{ClusterSnapshot, NodeForecast, NodeState, Placement, SnapshotError};
use crate::workload::{PipelineRef, Workload};

/// Namespace and name of a pod.
pub type PodKey = (String, String);

/// Members remembered per pipeline.
const MAX_PIPELINE_MEMBERS: usize = 64;
/// Pipelines remembered.
const MAX_PIPELINES: usize = 20_000;
/// Upstream nodes handed to the scorer.
const MAX_UPSTREAM: usize = 8;
/// Marker the forecaster puts in `model_type` for series with too little
/// history to forecast (`persistence(insufficient-history:<have>/<need>)`).
const INSUFFICIENT_HISTORY: &str = "insufficient-history";
/// A penalty below this is dropped.
const PENALTY_FLOOR: f64 = 0.01;
/// Nodes (or pods) applied per hold of the writers' mutex, which bounds how
/// long a feedback report or the sweeper can wait behind a batch of view
/// changes.
pub const MAX_BATCH: usize = 128;

/// One change made to the draft snapshot, kept so that the copy readers let
/// go of can be brought up to date by replaying it. Replaying the same
/// changes on an equal snapshot gives an equal snapshot (GPU picks included).
#[derive(Debug, Clone)]
enum SnapOp {
    Upsert(NodeState),
    Remove(String),
    Forecast(String, Option<NodeForecast>),
    Penalty(String, f64),
    Assume(String, PodDemand),
    Forget(Placement),
    ObservePod(PodDemand),
    RefreshShapes,
}

impl SnapOp {
    fn replay(self, snap: &mut ClusterSnapshot) {
        match self {
            Self::Upsert(n) => snap.upsert_node(n),
            Self::Remove(n) => {
                snap.remove_node(&n);
            }
            Self::Forecast(n, f) => {
                let _ = snap.set_forecast(&n, f);
            }
            Self::Penalty(n, p) => {
                let _ = snap.set_bind_failure_penalty(&n, p);
            }
            Self::Assume(n, d) => {
                let _ = snap.assume(&n, &d);
            }
            Self::Forget(p) => {
                let _ = snap.forget(&p);
            }
            Self::ObservePod(d) => snap.observe_pod(&d),
            Self::RefreshShapes => snap.refresh_shapes(),
        }
    }
}

/// The writers' copy of the snapshot and the changes made to it since it was
/// last published. Reads go through `Deref`; every change goes through a
/// method here so that it is logged.
#[derive(Debug, Default)]
struct Draft {
    snap: ClusterSnapshot,
    log: Vec<SnapOp>,
}

impl Deref for Draft {
    type Target = ClusterSnapshot;

    fn deref(&self) -> &ClusterSnapshot {
        &self.snap
    }
}

impl Draft {
    fn upsert_node(&mut self, node: NodeState) {
        self.log.push(SnapOp::Upsert(node.clone()));
        self.snap.upsert_node(node);
    }

    fn remove_node(&mut self, name: &str) {
        if self.snap.remove_node(name).is_some() {
            self.log.push(SnapOp::Remove(name.to_string()));
        }
    }

    fn set_forecast(
        &mut self,
        name: &str,
        forecast: Option<NodeForecast>,
    ) -> Result<(), SnapshotError> {
        self.snap.set_forecast(name, forecast.clone())?;
        self.log.push(SnapOp::Forecast(name.to_string(), forecast));
        Ok(())
    }

    fn set_bind_failure_penalty(&mut self, name: &str, penalty: f64) -> Result<(), SnapshotError> {
        self.snap.set_bind_failure_penalty(name, penalty)?;
        self.log.push(SnapOp::Penalty(name.to_string(), penalty));
        Ok(())
    }

    fn assume(&mut self, node: &str, demand: &PodDemand) -> Result<Placement, SnapshotError> {
        let placement = self.snap.assume(node, demand)?;
        self.log
            .push(SnapOp::Assume(node.to_string(), demand.clone()));
        Ok(placement)
    }

    fn forget(&mut self, placement: &Placement) -> Result<(), SnapshotError> {
        self.snap.forget(placement)?;
        self.log.push(SnapOp::Forget(placement.clone()));
        Ok(())
    }

    fn observe_pod(&mut self, demand: &PodDemand) {
        self.snap.observe_pod(demand);
        self.log.push(SnapOp::ObservePod(demand.clone()));
    }

    fn refresh_shapes(&mut self) {
        self.snap.refresh_shapes();
        self.log.push(SnapOp::RefreshShapes);
    }
}

/// What the writers' mutex guards.
#[derive(Debug)]
struct Writer {
    books: Books,
    draft: Draft,
}

/// An assumption a decision made while a writer held the mutex.
#[derive(Debug)]
struct DeferredAssume {
    pod: PodKey,
    request_id: String,
    node: String,
    demand: PodDemand,
    pipeline: Option<(PipelineRef, String)>,
}

/// A node's change, prepared before the writers' mutex is taken.
enum Prepared {
    Gone,
    Stale,
    Fresh {
        node: Box<NodeState>,
        insight: Arc<ClusterInsight>,
        stored_at: SystemTime,
    },
    Invalid(SnapshotError),
}

#[derive(Debug, Clone)]
struct Assumed {
    request_id: String,
    demand: PodDemand,
    placement: Placement,
    since: Instant,
    pipeline: Option<(PipelineRef, String)>,
    /// Assume order (monotonic per state).
    seq: u64,
    /// The node's reported requests when the pod was assumed there; `None`
    /// when the node had no insight yet.
    baseline: Option<Requested>,
    /// When a successful bind on the assumed node was reported.
    bound_at: Option<SystemTime>,
}

/// What a node's latest insight says pods have requested there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Requested {
    cpu_milli: u64,
    memory_bytes: u64,
    gpu_milli: Vec<u32>,
}

impl Requested {
    fn of(n: &NodeState) -> Self {
        Self {
            cpu_milli: n.cpu_milli_allocated,
            memory_bytes: n.memory_bytes_allocated,
            gpu_milli: n.gpus.iter().map(|g| g.allocated_milli).collect(),
        }
    }

    /// (CPU, memory, GPU) increase of `self` over `base`: CPU and memory as
    /// signed differences, GPU as the sum of per-GPU increases.
    fn increase_over(&self, base: &Requested) -> (i128, i128, i128) {
        let gpu: i128 = self
            .gpu_milli
            .iter()
            .enumerate()
            .map(|(i, &now)| {
                let before = base.gpu_milli.get(i).copied().unwrap_or(0);
                i128::from(now.saturating_sub(before))
            })
            .sum();
        (
            i128::from(self.cpu_milli) - i128::from(base.cpu_milli),
            i128::from(self.memory_bytes) - i128::from(base.memory_bytes),
            gpu,
        )
    }
}

/// Resources of a placement as (CPU, memory, GPU milli).
fn amounts(p: &Placement) -> (i128, i128, i128) {
    (
        i128::from(p.cpu_milli),
        i128::from(p.memory_bytes),
        p.gpus.iter().map(|&(_, m)| i128::from(m)).sum(),
    )
}

#[derive(Debug, Clone, Copy)]
struct Penalty {
    value: f64,
    at: Instant,
}

#[derive(Debug, Default)]
struct Books {
    /// Stored-at time of the insight each snapshot node came from.
    insight_at: HashMap<String, SystemTime>,
    /// Nodes left out of the snapshot because their insight is stale.
    stale: HashSet<String>,
    assumed: AssumedPods,
    /// Assume order, oldest first: `(seq, pod)`, entries whose assumption
    /// ended since are skipped and compacted away.
    assume_order: VecDeque<(u64, PodKey)>,
    /// `--max-assumed`.
    max_assumed: usize,
    /// Requests reported by the latest insight applied per node.
    reported: HashMap<String, Requested>,
    /// Next assume order number.
    next_seq: u64,
    ended: AssumptionEnds,
    penalties: HashMap<String, Penalty>,
}

/// The pods assumed on nodes, by pod and by node: every node insight
/// settles the assumptions on its node, and scanning all of them for each
/// insight would cost assumptions x insights per second.
#[derive(Debug, Default)]
struct AssumedPods {
    by_pod: HashMap<PodKey, Assumed>,
    by_node: HashMap<String, HashSet<PodKey>>,
}

impl AssumedPods {
    fn len(&self) -> usize {
        self.by_pod.len()
    }

    fn get(&self, pod: &PodKey) -> Option<&Assumed> {
        self.by_pod.get(pod)
    }

    /// The assumption of `pod`, to change in place; its node must stay the
    /// same (move it with [`Self::insert`]).
    fn get_mut(&mut self, pod: &PodKey) -> Option<&mut Assumed> {
        self.by_pod.get_mut(pod)
    }

    fn insert(&mut self, pod: PodKey, a: Assumed) -> Option<Assumed> {
        let old = self.remove(&pod);
        self.by_node
            .entry(a.placement.node.clone())
            .or_default()
            .insert(pod.clone());
        self.by_pod.insert(pod, a);
        old
    }

    fn remove(&mut self, pod: &PodKey) -> Option<Assumed> {
        let a = self.by_pod.remove(pod)?;
        self.unindex(&a.placement.node, pod);
        Some(a)
    }

    fn unindex(&mut self, node: &str, pod: &PodKey) {
        if let Some(set) = self.by_node.get_mut(node) {
            set.remove(pod);
            if set.is_empty() {
                self.by_node.remove(node);
            }
        }
    }

    /// Drops every assumption on `node`.
    fn remove_node(&mut self, node: &str) {
        for pod in self.by_node.remove(node).unwrap_or_default() {
            self.by_pod.remove(&pod);
        }
    }

    /// `(assume order, pod)` of the assumptions on `node`.
    fn on_node(&self, node: &str) -> Vec<(u64, PodKey)> {
        self.by_node.get(node).map_or_else(Vec::new, |pods| {
            pods.iter()
                .filter_map(|k| self.by_pod.get(k).map(|a| (a.seq, k.clone())))
                .collect()
        })
    }

    fn iter(&self) -> impl Iterator<Item = (&PodKey, &Assumed)> {
        self.by_pod.iter()
    }

    fn values(&self) -> impl Iterator<Item = &Assumed> {
        self.by_pod.values()
    }
}

/// Point forecast of one node: (time, cpu, memory) fractions 0-1.
#[derive(Debug, Clone, Default)]
struct ForecastSeries {
    points: Vec<(SystemTime, f64, f64)>,
    summary: Option<NodeForecast>,
}

#[derive(Debug, Default)]
struct Pipelines {
    members: HashMap<PipelineRef, Vec<(String, String)>>,
    order: VecDeque<PipelineRef>,
}

impl Pipelines {
    fn record(&mut self, p: &PipelineRef, step: &str, node: &str) {
        if node.is_empty() {
            return;
        }
        let list = match self.members.get_mut(p) {
            Some(l) => l,
            None => {
                if self.order.len() >= MAX_PIPELINES {
                    if let Some(old) = self.order.pop_front() {
                        self.members.remove(&old);
                    }
                }
                self.order.push_back(p.clone());
                self.members.entry(p.clone()).or_default()
            }
        };
        if let Some(m) = list.iter_mut().find(|(s, _)| s == step) {
            m.1 = node.to_string();
        } else if list.len() < MAX_PIPELINE_MEMBERS {
            list.push((step.to_string(), node.to_string()));
        }
    }
}

/// How assumptions ended, counted since start.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AssumptionEnds {
    /// An insight listed the pod among its running workloads.
    pub listed: u64,
    /// A successful bind was reported and a later-collected insight arrived.
    pub bound_then_seen: u64,
    /// An insight's requests grew by at least the pod's requests.
    pub covered: u64,
    /// No insight reflected it within `--assume-ttl`.
    pub expired: u64,
    /// A failed bind was reported.
    pub bind_failed: u64,
    /// Re-applied on a fresh insight, it no longer fit the node.
    pub no_longer_fits: u64,
    /// The oldest assumption, dropped to stay within `--max-assumed`.
    pub evicted: u64,
}

/// Counters the service exports.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StateStats {
    /// Nodes in the snapshot.
    pub nodes: usize,
    /// Nodes left out as stale.
    pub stale_nodes: usize,
    /// Pods currently assumed.
    pub assumed: usize,
    /// Nodes with a bind-failure penalty.
    pub penalised: usize,
    /// How assumptions ended so far.
    pub ended: AssumptionEnds,
}

/// What a feedback report did to the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedbackEffect {
    /// The assumption was confirmed (possibly moved to the reported node).
    Confirmed,
    /// The assumption was dropped and the node penalised (if named).
    Failed,
    /// No assumption was pending for the pod (late or unknown report).
    NoAssumption,
}

/// A policy or a scheduling result read back from the streams after a
/// restart (see [`ClusterState::restore`]).
#[derive(Debug, Clone)]
pub enum RestoreEvent {
    /// A policy assumed the pod on `node`.
    Assume {
        /// The pod.
        pod: PodKey,
        /// The policy's request id.
        request_id: String,
        /// The node the pod was assumed on (the policy's top node).
        node: String,
        /// What was assumed there.
        demand: Box<PodDemand>,
        /// The pod's pipeline and step, if any.
        pipeline: Option<(PipelineRef, String)>,
        /// When the policy was stored.
        at: SystemTime,
    },
    /// A scheduling result was reported.
    Feedback {
        /// The pod.
        pod: PodKey,
        /// The policy's request id.
        request_id: String,
        /// Whether the bind succeeded.
        success: bool,
        /// The node reported.
        node: String,
        /// When the report was stored.
        at: SystemTime,
    },
}

/// What [`ClusterState::restore`] left in the state.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// Assumptions held after the replay (TTL, cap and insights applied).
    pub assumptions: usize,
    /// Nodes with a bind-failure penalty after the replay.
    pub penalties: usize,
    /// Replayed policies whose pod no longer fits its node (or whose node
    /// is gone).
    pub not_assumable: usize,
}

/// The cluster as the engine sees it, shared by handlers and background tasks.
#[derive(Debug)]
pub struct ClusterState {
    cfg: EngineConfig,
    view: ClusterView,
    /// What decisions rank on; replaced whole by writers, never locked.
    published: ArcSwap<ClusterSnapshot>,
    /// Bookkeeping and the draft snapshot (see the module doc).
    writer: Mutex<Writer>,
    /// Assumptions waiting for the writer that held the mutex.
    deferred: Mutex<Vec<DeferredAssume>>,
    /// Counters as of the last publish, read without the writers' mutex.
    counters: Mutex<StateStats>,
    stale_count: AtomicUsize,
    forecasts: Mutex<HashMap<String, ForecastSeries>>,
    pipelines: Mutex<Pipelines>,
}

/// Holds the writers' mutex; publishes the draft when dropped.
struct Writing<'a> {
    state: &'a ClusterState,
    guard: Option<MutexGuard<'a, Writer>>,
}

impl Deref for Writing<'_> {
    type Target = Writer;

    fn deref(&self) -> &Writer {
        self.guard.as_ref().expect("guard held until drop")
    }
}

impl DerefMut for Writing<'_> {
    fn deref_mut(&mut self) -> &mut Writer {
        self.guard.as_mut().expect("guard held until drop")
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        if let Some(mut guard) = self.guard.take() {
            self.state.finish(&mut guard);
            drop(guard);
            // An assumption queued after this writer drained the queue and
            // before it let go is applied by whoever gets the mutex next.
            if !lock(&self.state.deferred).is_empty() {
                if let Some(w) = self.state.try_writing() {
                    drop(w);
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ClusterState {
    /// State over `view` with an empty snapshot (shapes learned online).
    pub fn new(view: ClusterView, cfg: EngineConfig) -> Self {
        Self::with_snapshot(
            view,
            cfg,
            ClusterSnapshot::new(ShapeDistribution::new(DEFAULT_COVERAGE)),
        )
    }

    /// State starting from a prepared snapshot (simulation, tests). Typical
    /// pod shapes are refreshed by [`ClusterState::sweep`], never on the
    /// request path.
    pub fn with_snapshot(
        view: ClusterView,
        cfg: EngineConfig,
        mut snapshot: ClusterSnapshot,
    ) -> Self {
        snapshot.set_shape_refresh_every(0);
        let now = SystemTime::now();
        let books = Books {
            insight_at: snapshot.nodes().map(|n| (n.name.clone(), now)).collect(),
            reported: snapshot
                .nodes()
                .map(|n| (n.name.clone(), Requested::of(n)))
                .collect(),
            max_assumed: cfg.max_assumed,
            ..Books::default()
        };
        let counters = StateStats {
            nodes: snapshot.len(),
            ..StateStats::default()
        };
        Self {
            cfg,
            view,
            published: ArcSwap::from_pointee(snapshot.clone()),
            writer: Mutex::new(Writer {
                books,
                draft: Draft {
                    snap: snapshot,
                    log: Vec::new(),
                },
            }),
            deferred: Mutex::default(),
            counters: Mutex::new(counters),
            stale_count: AtomicUsize::new(0),
            forecasts: Mutex::default(),
            pipelines: Mutex::default(),
        }
    }

    /// The view this state follows.
    pub fn view(&self) -> &ClusterView {
        &self.view
    }

    /// Settings.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// The latest published snapshot: taken without waiting on any writer.
    /// Hold it for one decision; a writer publishing meanwhile copies
    /// instead of reusing it.
    pub fn read(&self) -> arc_swap::Guard<Arc<ClusterSnapshot>> {
        self.published.load()
    }

    /// Takes the writers' mutex and applies the queued assumptions.
    fn writing(&self) -> Writing<'_> {
        let guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.started(guard)
    }

    /// [`ClusterState::writing`] when no one holds the mutex.
    fn try_writing(&self) -> Option<Writing<'_>> {
        match self.writer.try_lock() {
            Ok(guard) => Some(self.started(guard)),
            Err(TryLockError::Poisoned(p)) => Some(self.started(p.into_inner())),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    fn started<'a>(&'a self, mut guard: MutexGuard<'a, Writer>) -> Writing<'a> {
        self.apply_deferred(&mut guard);
        Writing {
            state: self,
            guard: Some(guard),
        }
    }

    fn apply_deferred(&self, w: &mut Writer) {
        let queued = std::mem::take(&mut *lock(&self.deferred));
        for d in queued {
            assume_locked(
                w,
                d.pod,
                &d.request_id,
                &d.node,
                &d.demand,
                d.pipeline,
                Instant::now(),
            );
        }
    }

    /// Applies what was queued meanwhile and publishes the draft.
    fn finish(&self, w: &mut Writer) {
        self.apply_deferred(w);
        if !w.draft.log.is_empty() {
            let fresh = std::mem::take(&mut w.draft.snap);
            let log = std::mem::take(&mut w.draft.log);
            let old = self.published.swap(Arc::new(fresh));
            w.draft.snap = match Arc::try_unwrap(old) {
                Ok(mut snap) => {
                    for op in log {
                        op.replay(&mut snap);
                    }
                    snap
                }
                // A decision still ranks on the old copy: start from the new one.
                Err(_) => ClusterSnapshot::clone(&self.published.load()),
            };
        }
        let books = &w.books;
        self.stale_count.store(books.stale.len(), Ordering::Relaxed);
        *lock(&self.counters) = StateStats {
            nodes: w.draft.len(),
            stale_nodes: books.stale.len(),
            assumed: books.assumed.len(),
            penalised: books.penalties.len(),
            ended: books.ended,
        };
    }

    /// Sizes for metrics, as of the last publish.
    pub fn stats(&self) -> StateStats {
        *lock(&self.counters)
    }

    /// Nodes known but stale.
    pub fn stale_nodes(&self) -> usize {
        self.stale_count.load(Ordering::Relaxed)
    }

    // ---- view changes -------------------------------------------------------------------

    /// Brings one node up to date with the view.
    pub fn sync_node(&self, name: &str) {
        self.sync_nodes(std::iter::once(name.to_string()));
    }

    /// Brings these nodes up to date with the view, at most [`MAX_BATCH`]
    /// per hold of the writers' mutex and one publish per hold. Insights are
    /// decoded before the mutex is taken.
    pub fn sync_nodes(&self, names: impl IntoIterator<Item = String>) {
        let mut names = names.into_iter().peekable();
        while names.peek().is_some() {
            let chunk: Vec<(String, Prepared)> = names
                .by_ref()
                .take(MAX_BATCH)
                .map(|n| {
                    let p = self.prepare(&n);
                    (n, p)
                })
                .collect();
            let mut seen = Vec::new();
            {
                let mut w = self.writing();
                for (name, prepared) in chunk {
                    let ended = self.sync_prepared(&mut w, &name, prepared);
                    seen.extend(ended.into_iter().map(|a| (a, name.clone())));
                }
            }
            for (a, node) in &seen {
                self.record_pipeline(a, node);
            }
        }
    }

    fn prepare(&self, name: &str) -> Prepared {
        let Some(entry) = self.view.node(name) else {
            return Prepared::Gone;
        };
        if entry.is_stale(self.cfg.stale_after) {
            return Prepared::Stale;
        }
        match NodeState::from_insight(&entry.value) {
            Ok(node) => Prepared::Fresh {
                node: Box::new(node),
                insight: Arc::clone(&entry.value),
                stored_at: entry.stored_at,
            },
            Err(err) => Prepared::Invalid(err),
        }
    }

    /// Applies one prepared node change; returns the assumptions its insight
    /// ended (their pods run on the node).
    fn sync_prepared(&self, w: &mut Writer, name: &str, prepared: Prepared) -> Vec<Assumed> {
        let Writer { books, draft } = w;
        let (mut node, insight, stored_at) = match prepared {
            Prepared::Gone => {
                books.insight_at.remove(name);
                books.stale.remove(name);
                books.reported.remove(name);
                books.assumed.remove_node(name);
                draft.remove_node(name);
                return Vec::new();
            }
            Prepared::Stale => {
                if books.insight_at.remove(name).is_some() {
                    draft.remove_node(name);
                }
                books.reported.remove(name);
                books.stale.insert(name.to_string());
                return Vec::new();
            }
            Prepared::Invalid(err) => {
                tracing::warn!(node = name, %err, "insight not applied");
                return Vec::new();
            }
            Prepared::Fresh {
                node,
                insight,
                stored_at,
            } => (node, insight, stored_at),
        };
        // The forecast and bind penalty are the engine's, not the insight's.
        node.forecast = lock(&self.forecasts)
            .get(name)
            .and_then(|f| f.summary.clone());
        node.bind_failure_penalty = books.penalties.get(name).map_or_else(
            || draft.node(name).map_or(0.0, |n| n.bind_failure_penalty),
            |p| p.value,
        );
        draft.upsert_node(*node);
        books.stale.remove(name);
        books.insight_at.insert(name.to_string(), stored_at);
        let collected_at = insight
            .collected_at
            .as_ref()
            .and_then(to_system_time)
            .unwrap_or(stored_at);
        settle_assumptions(books, draft, &insight, collected_at)
    }

    /// Records a pod's pipeline membership from its signature.
    pub fn sync_pod(&self, namespace: &str, name: &str) {
        let Some(entry) = self.view.pod(namespace, name) else {
            return;
        };
        let sig = &entry.value;
        if sig.node_name.is_empty() {
            return;
        }
        let Some(argo) = &sig.argo_context else {
            return;
        };
        if argo.workflow_name.is_empty() {
            return;
        }
        let p = PipelineRef {
            namespace: if argo.workflow_namespace.is_empty() {
                namespace.to_string()
            } else {
                argo.workflow_namespace.clone()
            },
            kind: "argo",
            name: argo.workflow_name.clone(),
        };
        let step = if argo.step_name.is_empty() {
            &sig.pipeline_step
        } else {
            &argo.step_name
        };
        lock(&self.pipelines).record(&p, step, &sig.node_name);
    }

    /// Rebuilds from the whole view (start-up, or after missing changes).
    pub fn resync(&self) {
        let mut names: HashSet<String> = self
            .view
            .nodes()
            .into_iter()
            .map(|e| e.value.node_name.clone())
            .collect();
        names.extend(self.writing().books.insight_at.keys().cloned());
        let mut names: Vec<String> = names.into_iter().collect();
        names.sort_unstable();
        self.sync_nodes(names);
        for e in self.view.pods() {
            self.sync_pod(&e.value.pod_namespace, &e.value.pod_name);
        }
    }

    /// Applies view changes until `shutdown`, on a thread of its own at the
    /// view's follower priority: the changes waiting are coalesced per node
    /// and applied in batches (see [`ClusterState::sync_nodes`]), so neither
    /// the runtime's workers nor the decisions wait on them, and at `idle`
    /// the kernel runs it only while no decision is. If that thread cannot
    /// be started it runs on a blocking thread of the runtime; cancel
    /// `shutdown` before the runtime is dropped, which waits for those.
    pub fn spawn_view_follower(self: &Arc<Self>, shutdown: CancellationToken) {
        let me = Arc::clone(self);
        let mut rx = self.view.subscribe();
        let runtime = tokio::runtime::Handle::current();
        let work = move || {
            me.resync();
            loop {
                let first = runtime.block_on(async {
                    tokio::select! {
                        _ = shutdown.cancelled() => None,
                        c = rx.recv() => Some(c),
                    }
                });
                let Some(first) = first else { return };
                let mut nodes = BTreeSet::new();
                let mut pods = BTreeSet::new();
                let mut lagged = false;
                let mut closed = false;
                let mut next = Some(first);
                while let Some(change) = next.take() {
                    match change {
                        Ok(ViewChange::Node(name)) => {
                            nodes.insert(name);
                        }
                        Ok(ViewChange::Pod { namespace, name }) => {
                            pods.insert((namespace, name));
                        }
                        Err(RecvError::Lagged(n)) => {
                            tracing::debug!(missed = n, "view changes lagged, resyncing");
                            lagged = true;
                        }
                        Err(RecvError::Closed) => closed = true,
                    }
                    if closed || nodes.len() + pods.len() >= MAX_BATCH {
                        break;
                    }
                    next = match rx.try_recv() {
                        Ok(c) => Some(Ok(c)),
                        Err(TryRecvError::Empty) => None,
                        Err(TryRecvError::Lagged(n)) => Some(Err(RecvError::Lagged(n))),
                        Err(TryRecvError::Closed) => Some(Err(RecvError::Closed)),
                    };
                }
                if lagged {
                    me.resync();
                } else {
                    me.sync_nodes(nodes);
                    for (namespace, name) in &pods {
                        me.sync_pod(namespace, name);
                    }
                }
                if closed {
                    return;
                }
            }
        };
        if let Err(not) = apollo_common::background::spawn_thread(
            "view-apply",
            self.view.follower_priority(),
            work,
        ) {
            tracing::warn!(err = %not.error, "no thread for applying view changes; using a blocking one");
            tokio::task::spawn_blocking(not.work);
        }
    }

    // ---- forecasts ----------------------------------------------------------------------

    /// Applies a node's forecast: peaks of the upper bound within the horizon,
    /// overload flags against the threshold, and the point forecast for DELAY.
    /// Values are percent of capacity, as the forecaster publishes them.
    pub fn apply_forecast(&self, p: &ResourcePrediction) -> bool {
        let node = p.node_name.trim();
        if node.is_empty() {
            return false;
        }
        if p.model_type.contains(INSUFFICIENT_HISTORY) {
            // A node the forecaster knows too little about gets a persistence
            // forecast with deliberately wide intervals; its upper bound says
            // "unknown", not "overloaded" (the forecaster raises no alert on it
            // either), so it must not push pods away from new nodes.
            lock(&self.forecasts).remove(node);
            return self.writing().draft.set_forecast(node, None).is_ok();
        }
        let now = SystemTime::now();
        let until = now + self.cfg.forecast_horizon;
        let in_window =
            |ts: &Option<apollo_proto::Timestamp>| match ts.as_ref().and_then(to_system_time) {
                Some(t) => t <= until && t + Duration::from_secs(60) >= now,
                None => true,
            };
        let frac = |v: f64| {
            if v.is_finite() {
                (v / 100.0).clamp(0.0, 1.5)
            } else {
                0.0
            }
        };
        let mut summary = NodeForecast {
            horizon_minutes: (self.cfg.forecast_horizon.as_secs() / 60) as u32,
            ..NodeForecast::default()
        };
        let mut any = false;
        for b in p.upper_bound.iter().filter(|b| in_window(&b.timestamp)) {
            any = true;
            summary.peak_cpu = summary.peak_cpu.max(frac(b.cpu_usage));
            summary.peak_memory = summary.peak_memory.max(frac(b.memory_usage));
            summary.peak_io = summary.peak_io.max(frac(b.io_usage));
            summary.peak_gpu = summary.peak_gpu.max(frac(b.gpu_usage));
        }
        let t = self.cfg.overload_threshold;
        summary.overload_cpu = summary.peak_cpu >= t;
        summary.overload_memory = summary.peak_memory >= t;
        summary.overload_io = summary.peak_io >= t;
        summary.overload_gpu = summary.peak_gpu >= t;
        summary.peak_cpu = summary.peak_cpu.min(1.0);
        summary.peak_memory = summary.peak_memory.min(1.0);
        summary.peak_io = summary.peak_io.min(1.0);
        summary.peak_gpu = summary.peak_gpu.min(1.0);
        let points: Vec<_> = p
            .predicted_usage
            .iter()
            .filter_map(|u| {
                let ts = u.timestamp.as_ref().and_then(to_system_time)?;
                (ts <= until && ts >= now).then(|| (ts, frac(u.cpu_usage), frac(u.memory_usage)))
            })
            .collect();
        let summary = any.then_some(summary);
        lock(&self.forecasts).insert(
            node.to_string(),
            ForecastSeries {
                points,
                summary: summary.clone(),
            },
        );
        self.writing().draft.set_forecast(node, summary).is_ok()
    }

    /// Follows `apollo.forecast.>` until `shutdown`: re-subscribes after
    /// stream errors, and as soon as the connection is back after a loss
    /// (the way [`ClusterView::follow`] does for insights).
    pub fn spawn_forecast_follower(
        self: &Arc<Self>,
        bus: Bus,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let filters = vec![bus.subjects().all("forecast")];
            let mut ready = bus.readiness();
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = ready.wait_for(|r| *r) => if r.is_err() { return },
                }
                let mut messages = match bus
                    .latest_then_follow(StreamKind::Forecast, filters.clone())
                    .await
                {
                    Ok((_, m)) => m,
                    Err(err) => {
                        tracing::warn!(%err, "cannot follow forecasts, retrying");
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        }
                    }
                };
                loop {
                    let next = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        // Connection lost: follow anew once it is back rather
                        // than wait for the consumer's missed heartbeats.
                        r = ready.wait_for(|r| !*r) => {
                            if r.is_err() { return }
                            tracing::info!("NATS gone; following forecasts anew when back");
                            break;
                        }
                        m = messages.next() => m,
                    };
                    match next {
                        Some(Ok(msg)) => {
                            let _span = bus.consumed("scheduling_forecasts", &msg).entered();
                            match from_json::<ResourcePrediction>(&msg.payload) {
                                Ok(mut pred) => {
                                    if pred.node_name.is_empty() {
                                        if let Some(n) = bus
                                            .subjects()
                                            .parse("forecast", msg.subject.as_str())
                                            .and_then(|t| t.into_iter().next())
                                        {
                                            pred.node_name = n;
                                        }
                                    }
                                    me.apply_forecast(&pred);
                                }
                                Err(err) => {
                                    bus.rejected(&msg.subject, "undecodable");
                                    tracing::warn!(subject = %msg.subject, %err, "undecodable forecast skipped")
                                }
                            }
                        }
                        Some(Err(err)) => {
                            tracing::warn!(%err, "forecast stream error, resubscribing");
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

    /// The earliest forecast time at which some node that could take the pod
    /// when empty has freed enough CPU and memory. Predicted usage below the
    /// current measured usage is taken as capacity released by pods that end.
    pub fn delay_hint(&self, snap: &ClusterSnapshot, demand: &PodDemand) -> Option<DelayHint> {
        if demand.num_gpu > 0 {
            // Forecasts carry no GPU series; GPU capacity freeing cannot be predicted.
            return None;
        }
        let forecasts = lock(&self.forecasts);
        let now = SystemTime::now();
        let mut best: Option<DelayHint> = None;
        for node in snap.nodes() {
            let Some(series) = forecasts.get(&node.name) else {
                continue;
            };
            if !NodeScorer::fits_when_empty(node, demand) {
                continue;
            }
            let usage = node.usage.clone().unwrap_or_default();
            for &(t, cpu, mem) in &series.points {
                let freed_cpu =
                    ((usage.cpu - cpu).max(0.0) * node.cpu_milli_capacity as f64) as u64;
                let freed_mem =
                    ((usage.memory - mem).max(0.0) * node.memory_bytes_capacity as f64) as u64;
                if node.cpu_milli_free() + freed_cpu >= demand.cpu_milli
                    && node.memory_bytes_free() + freed_mem >= demand.memory_bytes
                {
                    if best.as_ref().is_none_or(|b| t < b.at) {
                        best = Some(DelayHint {
                            node: node.name.clone(),
                            at: t,
                            after: t.duration_since(now).unwrap_or_default(),
                        });
                    }
                    break;
                }
            }
        }
        best
    }

    // ---- pipelines ----------------------------------------------------------------------

    /// Nodes of the pod's upstream pipeline steps (its declared dependencies
    /// when known, otherwise every other step seen so far).
    pub fn upstream_nodes(&self, w: &Workload) -> Vec<String> {
        let Some(p) = &w.pipeline else {
            return Vec::new();
        };
        let pipelines = lock(&self.pipelines);
        let Some(members) = pipelines.members.get(p) else {
            return Vec::new();
        };
        let mut out: Vec<String> = Vec::new();
        for (step, node) in members {
            let upstream = if w.dependencies.is_empty() {
                *step != w.pipeline_step
            } else {
                w.dependencies.iter().any(|d| d == step)
            };
            if upstream && !out.contains(node) {
                out.push(node.clone());
                if out.len() >= MAX_UPSTREAM {
                    break;
                }
            }
        }
        out
    }

    // ---- assume cache -------------------------------------------------------------------

    /// Assumes the pod on `node` (replacing an earlier assumption of the same
    /// pod) and learns its shape. Returns false when it does not fit there.
    pub fn assume(
        &self,
        pod: PodKey,
        request_id: &str,
        node: &str,
        demand: &PodDemand,
        pipeline: Option<(PipelineRef, String)>,
    ) -> bool {
        assume_locked(
            &mut self.writing(),
            pod,
            request_id,
            node,
            demand,
            pipeline,
            Instant::now(),
        )
    }

    /// [`ClusterState::assume`] without waiting: when a writer holds the
    /// mutex the assumption is queued, and that writer applies it before it
    /// publishes.
    pub fn assume_or_defer(
        &self,
        pod: PodKey,
        request_id: &str,
        node: &str,
        demand: &PodDemand,
        pipeline: Option<(PipelineRef, String)>,
    ) {
        if let Some(mut w) = self.try_writing() {
            assume_locked(
                &mut w,
                pod,
                request_id,
                node,
                demand,
                pipeline,
                Instant::now(),
            );
            return;
        }
        lock(&self.deferred).push(DeferredAssume {
            pod,
            request_id: request_id.to_string(),
            node: node.to_string(),
            demand: demand.clone(),
            pipeline,
        });
        // The writer may have let go between the attempt and the push.
        if let Some(w) = self.try_writing() {
            drop(w);
        }
    }

    /// Node a pod is assumed on.
    pub fn assumed_node(&self, namespace: &str, name: &str) -> Option<String> {
        self.writing()
            .books
            .assumed
            .get(&(namespace.to_string(), name.to_string()))
            .map(|a| a.placement.node.clone())
    }

    /// Applies a scheduling result: confirm or move the assumption on
    /// success; drop it and penalise the node on failure.
    pub fn feedback(
        &self,
        pod: &PodKey,
        request_id: &str,
        success: bool,
        node: &str,
    ) -> FeedbackEffect {
        self.feedback_at(pod, request_id, success, node, SystemTime::now())
    }

    /// [`ClusterState::feedback`] as if it had arrived at `at` (replaying
    /// the feedback stream after a restart): the penalty decays from `at`,
    /// a confirmed assumption's TTL runs from `at`.
    pub fn feedback_at(
        &self,
        pod: &PodKey,
        request_id: &str,
        success: bool,
        node: &str,
        at: SystemTime,
    ) -> FeedbackEffect {
        let mut w = self.writing();
        let (effect, seen) = feedback_locked(&mut w, &self.cfg, pod, request_id, success, node, at);
        drop(w);
        if let Some((a, node)) = seen {
            self.record_pipeline(&a, &node);
        }
        effect
    }

    /// Applies policies and feedback read back from the streams after a
    /// restart, in the order given (oldest first), at most [`MAX_BATCH`]
    /// per hold of the writers' mutex; then judges the restored
    /// assumptions against their node's latest insight, as a new insight
    /// would. Returns what it restored.
    pub fn restore(&self, events: Vec<RestoreEvent>) -> Restored {
        let mut out = Restored::default();
        let mut events = events.into_iter().peekable();
        while events.peek().is_some() {
            let mut seen = Vec::new();
            {
                let mut w = self.writing();
                for e in events.by_ref().take(MAX_BATCH) {
                    match e {
                        RestoreEvent::Assume {
                            pod,
                            request_id,
                            node,
                            demand,
                            pipeline,
                            at,
                        } => {
                            if !assume_locked(
                                &mut w,
                                pod,
                                &request_id,
                                &node,
                                &demand,
                                pipeline,
                                instant_of(at),
                            ) {
                                out.not_assumable += 1;
                            }
                        }
                        RestoreEvent::Feedback {
                            pod,
                            request_id,
                            success,
                            node,
                            at,
                        } => {
                            let (_, s) = feedback_locked(
                                &mut w,
                                &self.cfg,
                                &pod,
                                &request_id,
                                success,
                                &node,
                                at,
                            );
                            seen.extend(s);
                        }
                    }
                }
            }
            for (a, node) in &seen {
                self.record_pipeline(a, node);
            }
        }
        let nodes: BTreeSet<String> = {
            let w = self.writing();
            w.books
                .assumed
                .values()
                .map(|a| a.placement.node.clone())
                .collect()
        };
        self.sync_nodes(nodes);
        // TTLs that ran out meanwhile end now; penalties decay to now.
        self.sweep();
        let w = self.writing();
        out.assumptions = w.books.assumed.len();
        out.penalties = w.books.penalties.len();
        out
    }

    fn record_pipeline(&self, a: &Assumed, node: &str) {
        if let Some((p, step)) = &a.pipeline {
            lock(&self.pipelines).record(p, step, node);
        }
    }

    /// Expires assumptions, decays penalties and drops nodes whose data went
    /// stale. Run periodically.
    pub fn sweep(&self) {
        let now = Instant::now();
        let wall = SystemTime::now();
        let mut w = self.writing();
        let Writer { books, draft: snap } = &mut *w;
        let ttl = self.cfg.assume_ttl;
        let expired: Vec<PodKey> = books
            .assumed
            .iter()
            .filter(|(_, a)| now.duration_since(a.since) > ttl)
            .map(|(k, _)| k.clone())
            .collect();
        let stale: Vec<String> = books
            .insight_at
            .iter()
            .filter(|(_, &t)| wall.duration_since(t).unwrap_or_default() > self.cfg.stale_after)
            .map(|(n, _)| n.clone())
            .collect();
        let half_life = self.cfg.failure_penalty_decay;
        if snap.shapes().pending() > 0 {
            snap.refresh_shapes();
        }
        for k in expired {
            if let Some(a) = books.assumed.remove(&k) {
                let _ = snap.forget(&a.placement);
                books.ended.expired += 1;
            }
        }
        for n in stale {
            books.insight_at.remove(&n);
            books.reported.remove(&n);
            snap.remove_node(&n);
            books.assumed.remove_node(&n);
            books.stale.insert(n);
        }
        let mut cleared = Vec::new();
        for (node, p) in books.penalties.iter_mut() {
            let v = decay(p.value, now - p.at, half_life);
            p.value = v;
            p.at = now;
            if v < PENALTY_FLOOR {
                cleared.push(node.clone());
            }
            let _ = snap.set_bind_failure_penalty(node, if v < PENALTY_FLOOR { 0.0 } else { v });
        }
        for n in cleared {
            books.penalties.remove(&n);
        }
    }

    /// Runs [`ClusterState::sweep`] every `every` until `shutdown`.
    pub fn spawn_sweeper(
        self: &Arc<Self>,
        every: Duration,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => me.sweep(),
                }
            }
        })
    }
}

fn decay(value: f64, elapsed: Duration, half_life: Duration) -> f64 {
    if half_life.is_zero() {
        return 0.0;
    }
    value * 0.5f64.powf(elapsed.as_secs_f64() / half_life.as_secs_f64())
}

fn to_system_time(ts: &apollo_proto::Timestamp) -> Option<SystemTime> {
    if ts.seconds < 0 || !(0..1_000_000_000).contains(&ts.nanos) {
        return None;
    }
    Some(SystemTime::UNIX_EPOCH + Duration::new(ts.seconds as u64, ts.nanos as u32))
}

/// After a node's insight replaced its state (the snapshot node holds the
/// insight's own requests): ends the assumptions the insight reflects (see
/// the module doc for the rules) and re-applies the others on top of it.
/// Returns the ended assumptions (their pods run on the node).
fn settle_assumptions(
    books: &mut Books,
    snap: &mut Draft,
    insight: &ClusterInsight,
    collected_at: SystemTime,
) -> Vec<Assumed> {
    let node = insight.node_name.trim();
    let Some(reported) = snap.node(node).map(Requested::of) else {
        return Vec::new();
    };
    books.reported.insert(node.to_string(), reported.clone());
    let mut on_node = books.assumed.on_node(node);
    if on_node.is_empty() {
        return Vec::new();
    }
    on_node.sort_unstable();
    let listed: HashSet<(&str, &str)> = insight
        .running_workloads
        .iter()
        .map(|w| (w.pod_namespace.as_str(), w.pod_name.as_str()))
        .collect();

    // Rules 1 and 2: exact; what they end is part of the insight's requests.
    let mut consumed = (0i128, 0i128, 0i128);
    let mut ended = Vec::new();
    let mut pending = Vec::with_capacity(on_node.len());
    for (_, key) in on_node {
        let is_listed = listed.contains(&(key.0.as_str(), key.1.as_str()));
        let seen_after_bind = books
            .assumed
            .get(&key)
            .is_some_and(|a| a.bound_at.is_some_and(|b| collected_at > b));
        if !(is_listed || seen_after_bind) {
            pending.push(key);
            continue;
        }
        if let Some(a) = books.assumed.remove(&key) {
            if is_listed {
                books.ended.listed += 1;
            } else {
                books.ended.bound_then_seen += 1;
            }
            add(&mut consumed, amounts(&a.placement));
            ended.push(a);
        }
    }
    // Rule 3, in assume order: each covered pod takes its share of the increase.
    for key in pending {
        let Some(a) = books.assumed.get_mut(&key) else {
            continue;
        };
        let covered = a.baseline.as_ref().is_some_and(|base| {
            let (cpu, mem, gpu) = reported.increase_over(base);
            let (need_cpu, need_mem, need_gpu) = amounts(&a.placement);
            cpu - consumed.0 >= need_cpu
                && mem - consumed.1 >= need_mem
                && gpu - consumed.2 >= need_gpu
        });
        if covered {
            if let Some(a) = books.assumed.remove(&key) {
                books.ended.covered += 1;
                add(&mut consumed, amounts(&a.placement));
                ended.push(a);
            }
            continue;
        }
        match snap.assume(node, &a.demand) {
            Ok(p) => {
                a.placement = p;
                // Judged absent from this insight: only a later increase can show it.
                a.baseline = Some(reported.clone());
            }
            Err(_) => {
                books.ended.no_longer_fits += 1;
                books.assumed.remove(&key);
            }
        }
    }
    ended
}

/// The instant `at` was, on the monotonic clock (now when `at` lies before
/// the clock's origin or in the future).
fn instant_of(at: SystemTime) -> Instant {
    let now = Instant::now();
    let age = SystemTime::now().duration_since(at).unwrap_or_default();
    now.checked_sub(age).unwrap_or(now)
}

/// Applies a scheduling result reported at `at` (see
/// [`ClusterState::feedback_at`]); returns the assumption whose pipeline
/// membership is to be recorded, with its node.
fn feedback_locked(
    w: &mut Writer,
    cfg: &EngineConfig,
    pod: &PodKey,
    request_id: &str,
    success: bool,
    node: &str,
    at: SystemTime,
) -> (FeedbackEffect, Option<(Assumed, String)>) {
    let Writer { books, draft: snap } = w;
    let current = books
        .assumed
        .get(pod)
        .filter(|a| request_id.is_empty() || a.request_id == request_id)
        .cloned();
    let when = instant_of(at);
    if !success {
        if let Some(a) = &current {
            let _ = snap.forget(&a.placement);
            books.assumed.remove(pod);
            books.ended.bind_failed += 1;
        }
        if !node.is_empty() {
            let decayed = books.penalties.get(node).map_or(0.0, |p| {
                decay(
                    p.value,
                    when.saturating_duration_since(p.at),
                    cfg.failure_penalty_decay,
                )
            });
            let value = (decayed + cfg.failure_penalty_step).min(1.0);
            books
                .penalties
                .insert(node.to_string(), Penalty { value, at: when });
            let _ = snap.set_bind_failure_penalty(node, value);
        }
        let effect = if current.is_some() {
            FeedbackEffect::Failed
        } else {
            FeedbackEffect::NoAssumption
        };
        return (effect, None);
    }
    let Some(mut a) = current else {
        return (FeedbackEffect::NoAssumption, None);
    };
    if !node.is_empty() && a.placement.node != node {
        let _ = snap.forget(&a.placement);
        match snap.assume(node, &a.demand) {
            Ok(p) => {
                a.placement = p;
                a.baseline = books.reported.get(node).cloned();
            }
            Err(err) => {
                // The node's state lags the bind; the next insight accounts for it.
                tracing::debug!(node, %err, "reported placement not assumable");
                books.assumed.remove(pod);
                return (FeedbackEffect::Confirmed, Some((a, node.to_string())));
            }
        }
    }
    a.since = when;
    a.bound_at = Some(at);
    let bound = a.placement.node.clone();
    books.assumed.insert(pod.clone(), a.clone());
    (FeedbackEffect::Confirmed, Some((a, bound)))
}

/// Assumes the pod on `node` in the draft (see [`ClusterState::assume`]),
/// its TTL running from `since`.
fn assume_locked(
    w: &mut Writer,
    pod: PodKey,
    request_id: &str,
    node: &str,
    demand: &PodDemand,
    pipeline: Option<(PipelineRef, String)>,
    since: Instant,
) -> bool {
    let Writer { books, draft: snap } = w;
    if let Some(old) = books.assumed.remove(&pod) {
        let _ = snap.forget(&old.placement);
    }
    if demand.num_gpu > 0 {
        snap.observe_pod(demand);
    }
    match snap.assume(node, demand) {
        Ok(placement) => {
            let seq = books.next_seq;
            books.next_seq += 1;
            let baseline = books.reported.get(node).cloned();
            books.assume_order.push_back((seq, pod.clone()));
            books.assumed.insert(
                pod,
                Assumed {
                    request_id: request_id.to_string(),
                    demand: demand.clone(),
                    placement,
                    since,
                    pipeline,
                    seq,
                    baseline,
                    bound_at: None,
                },
            );
            evict_past_cap(books, snap);
            true
        }
        Err(err) => {
            tracing::debug!(node, %err, "placement not assumed");
            false
        }
    }
}

/// Ends the oldest assumptions while more than `--max-assumed` are held, and
/// drops order entries of assumptions that ended otherwise.
fn evict_past_cap(books: &mut Books, snap: &mut Draft) {
    let live = |assumed: &AssumedPods, seq: u64, pod: &PodKey| {
        assumed.get(pod).is_some_and(|a| a.seq == seq)
    };
    while books.assumed.len() > books.max_assumed.max(1) {
        let Some((seq, pod)) = books.assume_order.pop_front() else {
            break;
        };
        if !live(&books.assumed, seq, &pod) {
            continue;
        }
        if let Some(a) = books.assumed.remove(&pod) {
            let _ = snap.forget(&a.placement);
            books.ended.evicted += 1;
        }
    }
    if books.assume_order.len() > 2 * books.assumed.len() + 64 {
        let assumed = &books.assumed;
        books
            .assume_order
            .retain(|(seq, pod)| live(assumed, *seq, pod));
    }
}

fn add(total: &mut (i128, i128, i128), x: (i128, i128, i128)) {
    total.0 += x.0;
    total.1 += x.1;
    total.2 += x.2;
}

#[cfg(test)]
mod tests {
    #[test]
    fn assumed_pods_stay_indexed_by_node_through_moves_and_removals() {
        let at = |node: &str, seq: u64| Assumed {
            request_id: format!("r{seq}"),
            demand: PodDemand::default(),
            placement: Placement {
                node: node.to_string(),
                cpu_milli: 0,
                memory_bytes: 0,
                gpus: Vec::new(),
            },
            since: Instant::now(),
            pipeline: None,
            seq,
            baseline: None,
            bound_at: None,
        };
        let key = |i: u64| ("ns".to_string(), format!("p{i}"));
        let mut pods = AssumedPods::default();
        let mut moves = 0;
        // A deterministic mix of inserts, moves (an insert of a pod held on
        // another node), removals and node drops.
        for step in 0..2_000u64 {
            let pod = key(step % 31);
            let node = format!("n{}", (step * 7) % 13);
            match step % 11 {
                0..=7 => {
                    if let Some(old) = pods.insert(pod, at(&node, step)) {
                        moves += usize::from(old.placement.node != node);
                    }
                }
                8 | 9 => {
                    pods.remove(&pod);
                }
                _ => pods.remove_node(&node),
            }
            // The index says exactly what a scan of every assumption says.
            for n in 0..13 {
                let node = format!("n{n}");
                let mut indexed = pods.on_node(&node);
                indexed.sort_unstable();
                let mut scanned: Vec<(u64, PodKey)> = pods
                    .iter()
                    .filter(|(_, a)| a.placement.node == node)
                    .map(|(k, a)| (a.seq, k.clone()))
                    .collect();
                scanned.sort_unstable();
                assert_eq!(indexed, scanned, "step {step}, node {node}");
            }
            let indexed: usize = pods.by_node.values().map(HashSet::len).sum();
            assert_eq!(indexed, pods.len(), "step {step}: no stale index entry");
        }
        assert!(pods.len() > 0);
        assert!(moves > 100, "only {moves} moves exercised");
    }

    use super::*;
    use crate::engine::Engine;
    use crate::simulate::{insight_for, load_nodes, load_pods, request_for, TracePod};

    /// The openb excerpt's nodes in a view and a state that follows it.
    fn openb() -> (ClusterView, Arc<ClusterState>, Vec<TracePod>) {
        let data =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/alibaba-gpu-2023");
        let nodes = load_nodes(&data.join("openb_node_list_gpu_node.csv")).expect("node list");
        let pods = load_pods(&data.join("openb_pod_list_default.csv")).expect("pod list");
        let view = ClusterView::new();
        let now = SystemTime::now();
        for n in &nodes {
            view.upsert_node(insight_for(n), now, 0);
        }
        let state = Arc::new(ClusterState::new(view.clone(), EngineConfig::default()));
        state.resync();
        (view, state, pods)
    }

    fn nodes_of(snap: &ClusterSnapshot) -> Vec<NodeState> {
        let mut v: Vec<NodeState> = snap.nodes().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    #[test]
    fn a_decision_does_not_wait_for_a_writer_and_its_assumption_follows() {
        let (_view, state, pods) = openb();
        let (_twin_view, twin, _) = openb();
        let engine = Arc::new(Engine::new(Arc::clone(&state)));
        let gpu_pod = pods.iter().find(|p| p.num_gpu > 0).expect("a GPU pod");
        let req = request_for(gpu_pod, 0);

        // A writer (a batch of view changes, say) holds the mutex meanwhile.
        let held = state.writing();
        let (tx, rx) = std::sync::mpsc::channel();
        let (e, r) = (Arc::clone(&engine), req.clone());
        std::thread::spawn(move || {
            let _ = tx.send(e.decide(&r));
        });
        // A bound against a deadlock, not a speed test.
        let policy = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the decision waited for the writer");
        let top = policy.node_preferences[0].node_name.clone();
        assert_eq!(lock(&state.deferred).len(), 1, "assumption queued");
        drop(held);
        assert!(lock(&state.deferred).is_empty());
        assert_eq!(
            state
                .assumed_node(&req.pod_namespace, &req.pod_name)
                .as_deref(),
            Some(top.as_str())
        );
        assert_eq!(state.stats().assumed, 1);

        // The same decision on an equal state without a writer in the way.
        let reference = Engine::new(Arc::clone(&twin)).decide(&req);
        assert_eq!(reference.decision, policy.decision);
        assert_eq!(reference.node_preferences, policy.node_preferences);
        assert_eq!(nodes_of(&state.read()), nodes_of(&twin.read()));
    }

    #[test]
    fn the_published_copy_and_the_draft_agree_after_replay_and_after_copy() {
        let (view, state, pods) = openb();
        let engine = Engine::new(Arc::clone(&state));
        let names: Vec<String> = state.read().nodes().map(|n| n.name.clone()).collect();
        for (i, pod) in pods.iter().take(60).enumerate() {
            // Every third round a reader keeps the old copy: the writer copies.
            let reader = (i % 3 == 0).then(|| state.read());
            let req = request_for(pod, i as u64);
            let policy = engine.decide(&req);
            drop(reader);
            if let Some(top) = policy.node_preferences.first() {
                if i % 4 == 0 {
                    state.feedback(
                        &(req.pod_namespace.clone(), req.pod_name.clone()),
                        &policy.request_id,
                        false,
                        &top.node_name,
                    );
                }
            }
            let n = &names[i % names.len()];
            let mut insight = (*view.node(n).expect("node").value).clone();
            if let Some(r) = insight.node_resources.as_mut() {
                r.cpu_available_cores = r.cpu_allocatable_cores * (1.0 - (i % 90) as f64 / 100.0);
            }
            view.upsert_node(insight, SystemTime::now(), 0);
            state.sync_node(n);
            if i % 10 == 0 {
                state.sweep();
            }
            let draft = nodes_of(&state.writing().draft);
            assert_eq!(nodes_of(&state.read()), draft, "round {i}");
        }
        let w = state.writing();
        assert_eq!(
            w.draft.gpu_allocated_milli(),
            state.read().gpu_allocated_milli()
        );
        assert!(w.books.assumed.len() > 10);
    }

    #[test]
    fn assumptions_past_the_cap_evict_the_oldest() {
        let (view, _, pods) = openb();
        let cfg = EngineConfig {
            max_assumed: 5,
            ..EngineConfig::default()
        };
        let state = Arc::new(ClusterState::new(view, cfg));
        state.resync();
        let engine = Engine::new(Arc::clone(&state));
        let empty = state.read().gpu_allocated_milli();
        let mut named = Vec::new();
        for (i, pod) in pods.iter().filter(|p| p.num_gpu > 0).take(20).enumerate() {
            let req = request_for(pod, i as u64);
            if !engine.decide(&req).node_preferences.is_empty() {
                named.push(req);
            }
        }
        assert!(named.len() >= 10, "only {} placements", named.len());
        let s = state.stats();
        assert_eq!(s.assumed, 5);
        assert_eq!(s.ended.evicted, named.len() as u64 - 5);
        // The five youngest stay; the evicted ones left the snapshot too.
        for (i, req) in named.iter().enumerate() {
            let kept = state
                .assumed_node(&req.pod_namespace, &req.pod_name)
                .is_some();
            assert_eq!(kept, i >= named.len() - 5, "pod {i}");
        }
        let w = state.writing();
        let held: u64 = w
            .books
            .assumed
            .values()
            .flat_map(|a| a.placement.gpus.iter().map(|&(_, m)| u64::from(m)))
            .sum();
        assert_eq!(state.read().gpu_allocated_milli(), empty + held);
        assert!(w.books.assume_order.len() <= 2 * 5 + 64);
    }

    #[test]
    fn a_state_restored_from_policies_and_feedback_answers_as_the_original() {
        let (_view, state, pods) = openb();
        // A fresh engine over the same insights (stored as early: the binds
        // below come after them), before and after the replay.
        let (_twin_view, twin, _) = openb();
        let engine = Engine::new(Arc::clone(&state));
        let mut events = Vec::new();
        let mut failed = 0;
        for (i, pod) in pods.iter().take(60).enumerate() {
            let req = request_for(pod, i as u64);
            let key = (req.pod_namespace.clone(), req.pod_name.clone());
            let (policy, assumed) = engine.decide_assuming(&req);
            if let Some(a) = assumed {
                events.push(RestoreEvent::Assume {
                    pod: key.clone(),
                    request_id: policy.request_id.clone(),
                    demand: Box::new(a.demand()),
                    pipeline: a.pipeline(),
                    node: a.node,
                    at: SystemTime::now(),
                });
            }
            let Some(top) = policy.node_preferences.first() else {
                continue;
            };
            // Every seventh bind fails (a penalty), every fifth succeeds.
            let success = match i % 35 {
                x if x % 7 == 0 => false,
                x if x % 5 == 0 => true,
                _ => continue,
            };
            failed += usize::from(!success);
            state.feedback(&key, &policy.request_id, success, &top.node_name);
            events.push(RestoreEvent::Feedback {
                pod: key,
                request_id: policy.request_id.clone(),
                success,
                node: top.node_name.clone(),
                at: SystemTime::now(),
            });
        }
        assert!(failed >= 5);
        let before = state.stats();
        assert!(before.assumed >= 40 && before.penalised >= 5, "{before:?}");

        let probes: Vec<_> = pods
            .iter()
            .skip(60)
            .take(30)
            .enumerate()
            .map(|(i, p)| request_for(p, 1000 + i as u64))
            .collect();
        let answers = |s: &Arc<ClusterState>| {
            let e = Engine::new(Arc::clone(s)).without_assume();
            probes
                .iter()
                .map(|r| {
                    let p = e.decide(r);
                    (p.decision, p.node_preferences)
                })
                .collect::<Vec<_>>()
        };
        // As the sweeper does every few seconds in the service (shapes
        // learned, penalties decayed to now); the replay ends with one.
        state.sweep();
        let original = answers(&state);
        assert_ne!(
            answers(&twin),
            original,
            "the replay has something to restore"
        );
        let restored = twin.restore(events);
        assert_eq!(twin.stats().ended, before.ended, "{restored:?}");
        assert_eq!(restored.assumptions, before.assumed);
        assert_eq!(restored.penalties, before.penalised);
        assert_eq!(restored.not_assumable, 0);
        for (i, (a, b)) in answers(&twin).iter().zip(&original).enumerate() {
            assert_eq!(a.0, b.0, "probe {i}: decision");
            assert_eq!(a.1, b.1, "probe {i}: preferences");
        }
        assert_eq!(
            twin.read().gpu_allocated_milli(),
            state.read().gpu_allocated_milli()
        );
    }

    #[test]
    fn restored_assumptions_keep_their_age() {
        let (_view, state, pods) = openb();
        let req = request_for(&pods[0], 0);
        let (policy, assumed) = Engine::new(Arc::clone(&state)).decide_assuming(&req);
        let a = assumed.expect("assumed");
        let (_twin_view, twin, _) = openb();
        let old = SystemTime::now() - state.config().assume_ttl - Duration::from_secs(1);
        let event = |at| RestoreEvent::Assume {
            pod: (req.pod_namespace.clone(), req.pod_name.clone()),
            request_id: policy.request_id.clone(),
            demand: Box::new(a.demand()),
            pipeline: None,
            node: a.node.clone(),
            at,
        };
        // Issued longer than a TTL ago: expired on the spot.
        assert_eq!(twin.restore(vec![event(old)]).assumptions, 0);
        assert_eq!(twin.stats().ended.expired, 1);
        assert_eq!(twin.restore(vec![event(SystemTime::now())]).assumptions, 1);
    }

    #[test]
    fn penalties_halve_per_half_life() {
        let h = Duration::from_secs(60);
        assert!((decay(1.0, h, h) - 0.5).abs() < 1e-9);
        assert!((decay(0.8, Duration::ZERO, h) - 0.8).abs() < 1e-9);
        assert!(decay(1.0, h * 10, h) < 0.001);
    }

    #[test]
    fn pipelines_are_bounded() {
        let mut p = Pipelines::default();
        let r = PipelineRef {
            namespace: "ns".into(),
            kind: "argo",
            name: "wf".into(),
        };
        for i in 0..200 {
            p.record(&r, &format!("s{i}"), "n1");
        }
        assert_eq!(p.members[&r].len(), MAX_PIPELINE_MEMBERS);
        p.record(&r, "s0", "n2");
        assert_eq!(p.members[&r][0].1, "n2");
    }
}
