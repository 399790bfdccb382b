//! The forecasting engine: histories, per-series model state, refreshes,
//! anomalies and alert lifecycles. No I/O: the service feeds it insights and
//! publishes what a refresh returns, and the benchmark drives it directly.
//!
//! # Answers
//! - Each resource series is forecast for the largest configured horizon at
//!   the configured level on every refresh; the `auto` model keeps a
//!   per-series [`AutoSelector`] so most refreshes take its cheap path and
//!   the full backtest reruns on its own slower cadence.
//! - A refresh runs at most `auto_select_budget` full backtests, and starts
//!   none after `auto_select_time_budget`, so a start
//!   or a burst of new nodes does not pay for every selection at once:
//!   never-selected series first, then level shifts, then the most overdue
//!   re-selections. A series waiting for its first selection is served a
//!   30-point moving median with conformal intervals (calibration cached),
//!   reported as `auto(warming:median30)`; a due re-selection that has to
//!   wait keeps serving the previous selection.
//! - A series with fewer than `min_history` gap-free points gets a
//!   persistence forecast (last value) with wide normal intervals
//!   (`z * max(sd of first differences, 5 points) * sqrt(h)`), reported as
//!   `persistence(insufficient-history:<have>/<need>)`; such series raise no
//!   overload alerts. The model's own backtest accuracy is not available
//!   then, and `model_accuracy` is 0.
//! - `model_type` names the model of every resource series when they
//!   differ (`cpu:auto(...),memory:auto(...)`), else the shared name.
//! - `model_accuracy` is the mean backtest accuracy (`1 - wMAPE`) of the
//!   node's series, as measured by the model.
//! - `anomaly_score` is the largest robust z-score of the node relative to
//!   its threshold (series check or peer check): at least 1 means anomalous.
//!
//! # Mapping to `ResourcePrediction`
//! One `TimestampedResources` point per configured horizon up to the
//! requested one (plus the requested horizon itself), timed from the start
//! of the newest history slot. All values are percent of capacity:
//! `cpu_usage`, `memory_usage`, `io_usage` (storage used / total),
//! `network_usage` and `gpu_usage` (field 6, an addition to the contract).
//! GPU is also described in `recommendations` so readers of the deployed
//! contract see it. Resources a node does not report are 0.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, RwLock,
    },
    time::Instant,
};

use apollo_common::telemetry::SpanContext;
use apollo_proto::{
    AlertState, ClusterPrediction, PolicyPriority, PredictionRecommendation, ResourceAlert,
    ResourcePrediction, Timestamp, TimestampedResources,
};

use crate::{
    alert::{first_crossing, overload_condition, AlertMachine, Transition},
    anomaly::{interval_excess, peer_outliers, series_anomaly},
    config::ForecastArgs,
    history::{extract, Capacity, GridConfig, NodeHistory, Resource, SampleReject, SeriesKind},
    metrics::Metrics,
    models::{self, AutoConfig, AutoSelector, Forecast, Model, ModelConfig, Served, Want},
    Error, Result,
};

/// Points of the window a series anomaly is measured against.
const ANOMALY_WINDOW: usize = 60;
/// Newest points averaged into a node's level for the peer comparison.
const PEER_LEVEL_POINTS: usize = 5;

/// How a series was forecast.
#[derive(Debug, Clone, PartialEq)]
pub enum Basis {
    /// The configured model.
    Model,
    /// Persistence, because the series is short.
    Insufficient {
        /// Gap-free points available.
        have: usize,
        /// Points required.
        need: usize,
    },
}

/// The forecast of one resource of one node.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesForecast {
    /// Resource.
    pub resource: Resource,
    /// Forecast for steps `1..=max_steps`.
    pub forecast: Forecast,
    /// How it was made.
    pub basis: Basis,
    /// Newest value, percent.
    pub last: f64,
    /// Gap-free points used.
    pub points: usize,
}

/// An anomaly found for a node.
#[derive(Debug, Clone, PartialEq)]
pub struct AnomalyFinding {
    /// Resource concerned.
    pub resource: Resource,
    /// `spike`, `drop`, `outside_interval`, `peer_outlier_high`/`_low`.
    pub kind: &'static str,
    /// Robust z-score relative to its threshold (>= 1 anomalous).
    pub score: f64,
}

/// Everything a refresh computed for one node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeForecast {
    /// Node name.
    pub node: String,
    /// Start of the newest history slot, Unix ms (forecast step 1 is one
    /// step later).
    pub origin_ms: i64,
    /// When the forecast was made, Unix ms.
    pub created_ms: i64,
    /// Interval level.
    pub level: f64,
    /// Per resource with a history.
    pub series: Vec<SeriesForecast>,
    /// Anomalies found, most severe first.
    pub anomalies: Vec<AnomalyFinding>,
    /// Largest anomaly score (0 without data).
    pub anomaly_score: f64,
    /// Latest capacity.
    pub capacity: Capacity,
}

impl NodeForecast {
    /// The forecast of one resource.
    pub fn get(&self, r: Resource) -> Option<&SeriesForecast> {
        self.series.iter().find(|s| s.resource == r)
    }
}

/// Alerts produced by a refresh, ready to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertOut {
    /// `overload` or `anomaly`.
    pub kind: &'static str,
    /// The alert.
    pub alert: ResourceAlert,
}

/// What a refresh produced.
#[derive(Debug, Clone, Default)]
pub struct RefreshOutput {
    /// One prediction per node, at the configured horizons and level.
    pub predictions: Vec<ResourcePrediction>,
    /// Alert transitions.
    pub alerts: Vec<AlertOut>,
    /// Nodes dropped after their TTL.
    pub expired: Vec<String>,
    /// Series forecast.
    pub series: usize,
    /// Full `auto` selections (backtests) run by this refresh.
    pub selections: usize,
    /// Series served the `auto` warming forecast (not selected yet).
    pub warming: usize,
    /// Compute time, seconds.
    pub seconds: f64,
}

/// The full selections one refresh may run, shared out before the pass
/// ([`Engine::plan_selections`]) with the rest left for needs that appear
/// during it (a level shift seen for the first time).
#[derive(Debug, Default)]
struct SelectBudget {
    /// No limit configured.
    unbounded: bool,
    /// Selections not granted by the plan, first come first served.
    spare: AtomicUsize,
    /// No selection starts after this instant.
    deadline: Option<Instant>,
    /// Selections run.
    done: AtomicUsize,
    /// Warming forecasts served.
    warming: AtomicUsize,
}

impl SelectBudget {
    fn open(&self) -> bool {
        self.deadline.is_none_or(|d| Instant::now() < d)
    }

    fn take(&self) -> bool {
        self.unbounded
            || self
                .spare
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1))
                .is_ok()
    }
}

/// Per refresh: the selection budget and this node's grants (bit = resource).
type RefreshCtx<'a> = (&'a SelectBudget, u8);

struct NodeState {
    history: NodeHistory,
    selectors: [Option<AutoSelector>; Resource::COUNT],
    /// Interval predicted for the next slot by the previous refresh:
    /// (slot start ms, lower, upper).
    next_interval: [Option<(i64, f64, f64)>; Resource::COUNT],
    overload: [AlertMachine; Resource::COUNT],
    anomaly: AlertMachine,
}

impl NodeState {
    fn new() -> Self {
        Self {
            history: NodeHistory::new(),
            selectors: Default::default(),
            next_interval: [None; Resource::COUNT],
            overload: [AlertMachine::default(); Resource::COUNT],
            anomaly: AlertMachine::default(),
        }
    }
}

/// The engine; shared by the consumer, the refresh loop and the gRPC handlers.
pub struct Engine {
    cfg: ForecastArgs,
    grid: GridConfig,
    model_cfg: ModelConfig,
    stateless: Box<dyn Model>,
    nodes: RwLock<HashMap<String, Arc<Mutex<NodeState>>>>,
    latest: RwLock<HashMap<String, Arc<NodeForecast>>>,
    refresh_lock: Mutex<()>,
    metrics: Metrics,
    threads: usize,
    /// Per node, the trace its newest insight was consumed in: the node's
    /// next forecast and alerts are published in that trace.
    insight_traces: RwLock<HashMap<String, SpanContext>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("model", &self.cfg.model)
            .field("nodes", &self.node_count())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Standard normal quantile for `p` in (0.5, 1) (Shore's approximation,
/// within about 0.01: enough for a fallback interval).
fn normal_quantile(p: f64) -> f64 {
    let p = p.clamp(0.5, 1.0 - 1e-12);
    5.5556 * (1.0 - ((1.0 - p) / p).powf(0.1186))
}

/// Persistence forecast with wide intervals for short series.
fn persistence(y: &[f64], horizon: usize, level: f64, need: usize) -> Forecast {
    let last = y.last().copied().unwrap_or(0.0);
    let diffs: Vec<f64> = y.windows(2).map(|w| w[1] - w[0]).collect();
    let sd = if diffs.len() >= 2 {
        let m = diffs.iter().sum::<f64>() / diffs.len() as f64;
        (diffs.iter().map(|d| (d - m).powi(2)).sum::<f64>() / (diffs.len() - 1) as f64).sqrt()
    } else {
        0.0
    };
    let z = normal_quantile((1.0 + level) / 2.0);
    let width = |h: usize| z * sd.max(5.0) * (h as f64).sqrt();
    Forecast {
        mean: vec![last; horizon],
        lower: (1..=horizon).map(|h| (last - width(h)).max(0.0)).collect(),
        upper: (1..=horizon).map(|h| last + width(h)).collect(),
        level,
        model_type: format!("persistence(insufficient-history:{}/{need})", y.len()),
        accuracy: None,
        rel_mae: None,
    }
}

fn ts(ms: i64) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

fn clock(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%H:%M:%S UTC").to_string())
        .unwrap_or_else(|| format!("{ms} ms"))
}

impl Engine {
    /// Creates an engine; `cfg` must have been validated.
    pub fn new(mut cfg: ForecastArgs, metrics: Metrics) -> Result<Self> {
        cfg.validate()?;
        cfg.horizons.sort_unstable();
        cfg.horizons.dedup();
        let model_cfg = ModelConfig {
            max_train: cfg.history_points.max(8),
            ..ModelConfig::default()
        };
        let stateless = models::by_name_with(&cfg.model, &model_cfg)
            .ok_or_else(|| Error::Config(format!("unknown model {:?}", cfg.model)))?;
        let grid = GridConfig {
            step_ms: cfg.step.as_millis().min(i64::MAX as u128) as i64,
            capacity: cfg.history_points,
            carry_forward: cfg.carry_forward,
        };
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Self {
            cfg,
            grid,
            model_cfg,
            stateless,
            nodes: RwLock::default(),
            latest: RwLock::default(),
            refresh_lock: Mutex::new(()),
            metrics,
            threads,
            insight_traces: RwLock::default(),
        })
    }

    /// Settings in use.
    pub fn config(&self) -> &ForecastArgs {
        &self.cfg
    }

    /// Metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Limits the worker threads of a refresh (default: available cores).
    pub fn set_threads(&mut self, n: usize) {
        self.threads = n.max(1);
    }

    /// Nodes with a history.
    pub fn node_count(&self) -> usize {
        read(&self.nodes).len()
    }

    /// Names of the nodes with a history, sorted.
    pub fn node_names(&self) -> Vec<String> {
        let mut v: Vec<String> = read(&self.nodes).keys().cloned().collect();
        v.sort();
        v
    }

    /// Slots stored for a node's resource (None for an unknown node).
    pub fn history_len(&self, node: &str, r: Resource) -> Option<usize> {
        let n = read(&self.nodes).get(node).cloned()?;
        let len = lock(&n).history.len(SeriesKind::Usage(r));
        Some(len)
    }

    /// The newest gap-free segment of a node's series.
    pub fn segment(&self, node: &str, kind: SeriesKind) -> Option<Vec<f64>> {
        let n = read(&self.nodes).get(node).cloned()?;
        let seg = lock(&n).history.segment(kind);
        Some(seg)
    }

    /// Stores one insight; `publish_ms` is the stream publish time and
    /// `now_ms` the current time. Rejected values are counted, and a
    /// rejected insight is returned as an error (and counted).
    pub fn ingest(
        &self,
        insight: &apollo_proto::ClusterInsight,
        publish_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<usize, SampleReject> {
        self.metrics.insights_consumed.inc();
        let res = self.ingest_inner(insight, publish_ms, now_ms);
        if let Err(e) = res {
            self.metrics.reject_insight(e.as_str());
        }
        res
    }

    fn ingest_inner(
        &self,
        insight: &apollo_proto::ClusterInsight,
        publish_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<usize, SampleReject> {
        let sample = extract(insight, publish_ms)?;
        for (_, reason) in &sample.rejected {
            self.metrics
                .values_rejected
                .get_or_create(&vec![("reason", reason.as_str())])
                .inc();
        }
        let existing = read(&self.nodes).get(&sample.node).cloned();
        let node = match existing {
            Some(n) => n,
            None => {
                let mut map = write(&self.nodes);
                let n = map
                    .entry(sample.node.clone())
                    .or_insert_with(|| Arc::new(Mutex::new(NodeState::new())))
                    .clone();
                self.metrics.nodes.set(map.len() as i64);
                n
            }
        };
        let mut state = lock(&node);
        let before = state.history.series_count();
        let res = state.history.apply(&sample, now_ms, &self.grid);
        let added = state.history.series_count() - before;
        if added > 0 {
            self.metrics.series.inc_by(added as i64);
        }
        res
    }

    /// Forecasts one series with the served model (stateful `auto`) or the
    /// persistence fallback.
    fn forecast_series(
        &self,
        selector: Option<(&mut Option<AutoSelector>, usize, &SelectBudget, bool)>,
        y: &[f64],
        steps: usize,
        level: f64,
    ) -> (Forecast, Basis) {
        let need = self.cfg.min_history;
        if y.len() < need {
            return (
                persistence(y, steps, level, need),
                Basis::Insufficient {
                    have: y.len(),
                    need,
                },
            );
        }
        let res = match selector {
            Some((slot, jitter, budget, granted)) if self.cfg.model == "auto" => slot
                .get_or_insert_with(|| {
                    let base = AutoConfig::default();
                    // Spread the full re-selections over refreshes (each
                    // series every 10-29 refreshes) instead of re-running
                    // every series' backtest in the same one.
                    let every = base.reselect_every.max(2);
                    AutoSelector::new(AutoConfig {
                        model: self.model_cfg.clone(),
                        reselect_every: every + jitter % (2 * every),
                        full_models: self.cfg.auto_full_models.0.clone(),
                        ..base
                    })
                })
                .forecast_budgeted(y, steps, level, &mut |_| {
                    budget.open() && (granted || budget.take())
                })
                .map(|(f, served)| {
                    match served {
                        Served::Selected(_) => budget.done.fetch_add(1, Ordering::Relaxed),
                        Served::Warming => budget.warming.fetch_add(1, Ordering::Relaxed),
                        Served::Cached => 0,
                    };
                    f
                }),
            _ => self.stateless.forecast(y, steps, level),
        };
        match res {
            Ok(mut f) => {
                for v in &mut f.lower {
                    *v = v.max(0.0);
                }
                for v in &mut f.mean {
                    *v = v.max(0.0);
                }
                (f, Basis::Model)
            }
            Err(err) => {
                tracing::warn!(%err, "model failed, serving persistence");
                (
                    persistence(y, steps, level, need),
                    Basis::Insufficient {
                        have: y.len(),
                        need,
                    },
                )
            }
        }
    }

    /// Forecasts one node; `refresh` = use and update the per-series
    /// selectors (within the refresh's selection budget), anomaly checks and
    /// interval memory (refresh path).
    #[allow(clippy::too_many_arguments)]
    fn forecast_node(
        &self,
        name: &str,
        state: &mut NodeState,
        steps: usize,
        level: f64,
        refresh: Option<RefreshCtx<'_>>,
        now_ms: i64,
        buf: &mut Vec<f64>,
    ) -> Option<NodeForecast> {
        let origin_ms = state.history.last_slot_ms(&self.grid)?;
        let mut series = Vec::new();
        let mut anomalies = Vec::new();
        for r in Resource::ALL {
            let kind = SeriesKind::Usage(r);
            if !state.history.has(kind) {
                continue;
            }
            state.history.segment_into(kind, buf);
            let Some(&last) = buf.last() else { continue };
            let idx = r as usize;
            let (forecast, basis) = match refresh {
                Some((budget, grants)) => {
                    let jitter = name
                        .bytes()
                        .fold(idx, |h, b| h.wrapping_mul(31).wrapping_add(usize::from(b)));
                    let granted = grants & (1 << idx) != 0;
                    self.forecast_series(
                        Some((&mut state.selectors[idx], jitter, budget, granted)),
                        buf,
                        steps,
                        level,
                    )
                }
                None => self.forecast_series(None, buf, steps, level),
            };
            if refresh.is_some() {
                if let Some(a) = series_anomaly(buf, 1, ANOMALY_WINDOW, self.cfg.anomaly_z) {
                    anomalies.push(AnomalyFinding {
                        resource: r,
                        kind: if a.z > 0.0 { "spike" } else { "drop" },
                        score: a.z.abs() / self.cfg.anomaly_z.max(1e-9),
                    });
                }
                if let Some((slot, lo, hi)) = state.next_interval[idx] {
                    // The interval predicted for the newest slot.
                    if slot == origin_ms {
                        let excess = interval_excess(last, lo, hi);
                        // Only far outside counts: nominal coverage leaves
                        // 1 - level of points just outside.
                        if excess >= 1.0 {
                            anomalies.push(AnomalyFinding {
                                resource: r,
                                kind: "outside_interval",
                                score: excess,
                            });
                        }
                    }
                }
                state.next_interval[idx] = match basis {
                    Basis::Model => Some((
                        origin_ms + self.grid.step_ms,
                        forecast.lower[0],
                        forecast.upper[0],
                    )),
                    Basis::Insufficient { .. } => None,
                };
            }
            series.push(SeriesForecast {
                resource: r,
                forecast,
                basis,
                last,
                points: buf.len(),
            });
        }
        anomalies.sort_by(|a, b| b.score.total_cmp(&a.score));
        Some(NodeForecast {
            node: name.to_string(),
            origin_ms,
            created_ms: now_ms,
            level,
            anomaly_score: anomalies.first().map_or(0.0, |a| a.score),
            series,
            anomalies,
            capacity: state.history.capacity(),
        })
    }

    /// Shares this refresh's full `auto` selections out: series never
    /// selected first, then level shifts, changed settings and the most
    /// overdue cadence re-selections, up to `auto_select_budget` (none
    /// starting after `auto_select_time_budget` of wall time). Returns
    /// per node (same order as `nodes`) a bit per granted resource, and the
    /// budget with what the plan left over.
    fn plan_selections(
        &self,
        nodes: &[(String, Arc<Mutex<NodeState>>)],
        steps: usize,
        level: f64,
    ) -> (Vec<u8>, SelectBudget) {
        let mut grants = vec![0u8; nodes.len()];
        let limit = self.cfg.auto_select_budget;
        let time = self.cfg.auto_select_time_budget;
        let deadline = (!time.is_zero()).then(|| Instant::now() + time);
        if self.cfg.model != "auto" || limit == 0 {
            let budget = SelectBudget {
                unbounded: true,
                deadline,
                ..SelectBudget::default()
            };
            return (grants, budget);
        }
        // (want, most overdue first, node, resource)
        let mut wants: Vec<(Want, std::cmp::Reverse<usize>, usize, usize)> = Vec::new();
        for (i, (_, node)) in nodes.iter().enumerate() {
            let st = lock(node);
            for r in Resource::ALL {
                let idx = r as usize;
                let kind = SeriesKind::Usage(r);
                let want = match &st.selectors[idx] {
                    Some(sel) => sel.pending(steps, level),
                    None if st.history.has(kind)
                        && st.history.len(kind) >= self.cfg.min_history =>
                    {
                        Some((Want::Initial, 0))
                    }
                    None => None,
                };
                if let Some((w, overdue)) = want {
                    wants.push((w, std::cmp::Reverse(overdue), i, idx));
                }
            }
        }
        let granted = limit.min(wants.len());
        if granted < wants.len() {
            // Ties (e.g. all never-selected) go by node name: stable
            // across refreshes, so a series is not starved by the shuffle of
            // the node map.
            wants.sort_unstable_by(|a, b| {
                (a.0, a.1)
                    .cmp(&(b.0, b.1))
                    .then_with(|| nodes[a.2].0.cmp(&nodes[b.2].0))
                    .then(a.3.cmp(&b.3))
            });
        }
        for (_, _, i, idx) in &wants[..granted] {
            grants[*i] |= 1 << idx;
        }
        let budget = SelectBudget {
            spare: AtomicUsize::new(limit - granted),
            deadline,
            ..SelectBudget::default()
        };
        (grants, budget)
    }

    /// Remembers the trace the newest insight of `node` arrived in.
    pub fn note_insight_trace(&self, node: &str, trace: SpanContext) {
        if trace.is_valid() {
            write(&self.insight_traces).insert(node.to_string(), trace);
        }
    }

    /// The trace the newest insight of `node` arrived in, if it had one.
    pub fn insight_trace(&self, node: &str) -> Option<SpanContext> {
        read(&self.insight_traces).get(node).cloned()
    }

    /// Drops the remembered traces of nodes no longer forecast.
    pub fn forget_insight_traces(&self, nodes: &[String]) {
        let mut traces = write(&self.insight_traces);
        for node in nodes {
            traces.remove(node);
        }
    }

    /// Recomputes every forecast; returns the predictions and alert
    /// transitions to publish. CPU-bound: call from a blocking thread.
    pub fn refresh(&self, now_ms: i64) -> RefreshOutput {
        let _guard = lock(&self.refresh_lock);
        let started = Instant::now();
        let mut out = RefreshOutput::default();
        let ttl_ms = self.cfg.node_ttl.as_millis().min(i64::MAX as u128) as i64;

        // Drop nodes that stopped reporting.
        let expired: Vec<(String, Arc<Mutex<NodeState>>)> = {
            let mut map = write(&self.nodes);
            let gone: Vec<String> = map
                .iter()
                .filter(|(_, n)| lock(n).history.newest_ts_ms() < now_ms.saturating_sub(ttl_ms))
                .map(|(k, _)| k.clone())
                .collect();
            let v = gone
                .into_iter()
                .filter_map(|k| map.remove(&k).map(|n| (k, n)))
                .collect();
            self.metrics.nodes.set(map.len() as i64);
            v
        };
        for (name, node) in expired {
            let mut st = lock(&node);
            self.metrics.series.dec_by(st.history.series_count() as i64);
            for r in Resource::ALL {
                if st.overload[r as usize].force_clear().is_some() {
                    out.alerts.push(self.alert(
                        "overload",
                        &name,
                        r,
                        AlertState::Cleared,
                        now_ms,
                        None,
                        "node stopped reporting".into(),
                    ));
                }
            }
            if st.anomaly.force_clear().is_some() {
                out.alerts.push(self.alert(
                    "anomaly",
                    &name,
                    Resource::Cpu,
                    AlertState::Cleared,
                    now_ms,
                    None,
                    "node stopped reporting".into(),
                ));
            }
            self.metrics.nodes_expired.inc();
            write(&self.latest).remove(&name);
            out.expired.push(name);
        }

        let nodes: Vec<(String, Arc<Mutex<NodeState>>)> = read(&self.nodes)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let steps = self.cfg.max_steps();
        let level = self.cfg.confidence;
        let (grants, budget) = self.plan_selections(&nodes, steps, level);
        let budget = &budget;
        let threads = self.threads.min(nodes.len()).max(1);
        let chunk = nodes.len().div_ceil(threads).max(1);
        let mut forecasts: Vec<NodeForecast> = std::thread::scope(|s| {
            let handles: Vec<_> = nodes
                .chunks(chunk)
                .zip(grants.chunks(chunk))
                .map(|(part, grants)| {
                    s.spawn(move || {
                        let mut buf = Vec::with_capacity(self.cfg.history_points);
                        part.iter()
                            .zip(grants)
                            .filter_map(|((name, node), g)| {
                                let mut st = lock(node);
                                let ctx = Some((budget, *g));
                                self.forecast_node(
                                    name, &mut st, steps, level, ctx, now_ms, &mut buf,
                                )
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        });
        forecasts.sort_by(|a, b| a.node.cmp(&b.node));

        // Peers: each node's recent level against the fleet's.
        for r in Resource::ALL {
            let members: Vec<(usize, f64)> = forecasts
                .iter()
                .enumerate()
                .filter_map(|(i, f)| f.get(r).map(|s| (i, s.last)))
                .collect();
            let levels: Vec<f64> = members
                .iter()
                .map(|(i, last)| {
                    let _ = last;
                    let seg = forecasts[*i].get(r).map(|s| s.forecast.mean[0]);
                    seg.unwrap_or(*last)
                })
                .collect();
            let _ = PEER_LEVEL_POINTS;
            for o in peer_outliers(&levels, self.cfg.peer_z, self.cfg.peer_min_diff) {
                let i = members[o.index].0;
                let f = &mut forecasts[i];
                f.anomalies.push(AnomalyFinding {
                    resource: r,
                    kind: if o.z > 0.0 {
                        "peer_outlier_high"
                    } else {
                        "peer_outlier_low"
                    },
                    score: o.z.abs() / self.cfg.peer_z.max(1e-9),
                });
                f.anomalies.sort_by(|a, b| b.score.total_cmp(&a.score));
                f.anomaly_score = f.anomaly_score.max(o.z.abs() / self.cfg.peer_z.max(1e-9));
            }
        }

        // Alert lifecycles.
        let map = read(&self.nodes);
        for f in &forecasts {
            let Some(node) = map.get(&f.node) else {
                continue;
            };
            let mut st = lock(node);
            for s in &f.series {
                let r = s.resource;
                let threshold = self.cfg.overload_threshold.get(r);
                let (active, calm) = match s.basis {
                    Basis::Model => overload_condition(
                        &s.forecast.upper,
                        threshold,
                        self.cfg.alert_clear_margin,
                    ),
                    // Short series: never raise, but let a raised alert clear.
                    Basis::Insufficient { .. } => {
                        (false, s.last < threshold - self.cfg.alert_clear_margin)
                    }
                };
                match st.overload[r as usize].update(active, calm, self.cfg.alert_clear_after) {
                    Some(Transition::Raised) => {
                        let crossing = first_crossing(&s.forecast.upper, threshold);
                        let (msg, at) = match crossing {
                            Some((k, v)) => {
                                let at = f.origin_ms + (k as i64 + 1) * self.grid.step_ms;
                                (
                                    format!(
                                        "{} forecast upper bound reaches {v:.1}% (threshold {threshold:.0}%) at {}",
                                        r.name(),
                                        clock(at)
                                    ),
                                    Some((at, v)),
                                )
                            }
                            None => (String::new(), None),
                        };
                        out.alerts.push(self.alert(
                            "overload",
                            &f.node,
                            r,
                            AlertState::Raised,
                            now_ms,
                            at,
                            msg,
                        ));
                    }
                    Some(Transition::Cleared) => out.alerts.push(self.alert(
                        "overload",
                        &f.node,
                        r,
                        AlertState::Cleared,
                        now_ms,
                        None,
                        format!(
                            "{} forecast upper bound stayed below {:.0}% for {} refreshes",
                            r.name(),
                            threshold - self.cfg.alert_clear_margin,
                            self.cfg.alert_clear_after
                        ),
                    )),
                    None => {}
                }
            }
            let anomalous = f.anomaly_score >= 1.0;
            if let Some(t) = st
                .anomaly
                .update(anomalous, !anomalous, self.cfg.alert_clear_after)
            {
                let (state, resource, msg, score) = match (t, f.anomalies.first()) {
                    (Transition::Raised, Some(a)) => (
                        AlertState::Raised,
                        a.resource,
                        format!("{} {} (score {:.2})", a.resource.name(), a.kind, a.score),
                        a.score,
                    ),
                    _ => (
                        AlertState::Cleared,
                        Resource::Cpu,
                        "no anomaly for several refreshes".into(),
                        f.anomaly_score,
                    ),
                };
                let mut a = self.alert("anomaly", &f.node, resource, state, now_ms, None, msg);
                a.alert.score = score;
                out.alerts.push(a);
            }
        }
        drop(map);

        out.series = forecasts.iter().map(|f| f.series.len()).sum();
        out.selections = budget.done.load(Ordering::Relaxed);
        out.warming = budget.warming.load(Ordering::Relaxed);
        let horizon = self.cfg.max_horizon_minutes();
        let mut latest = write(&self.latest);
        for f in forecasts {
            for series in &f.series {
                if let Some(accuracy) = series.forecast.accuracy {
                    self.metrics
                        .observe_accuracy(&series.forecast.model_type, accuracy);
                }
            }
            out.predictions.push(self.to_prediction(&f, horizon));
            latest.insert(f.node.clone(), Arc::new(f));
        }
        drop(latest);
        out.seconds = started.elapsed().as_secs_f64();
        self.metrics.refresh_duration.observe(out.seconds);
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn alert(
        &self,
        kind: &'static str,
        node: &str,
        r: Resource,
        state: AlertState,
        now_ms: i64,
        crossing: Option<(i64, f64)>,
        message: String,
    ) -> AlertOut {
        let state_name = if state == AlertState::Raised {
            "raised"
        } else {
            "cleared"
        };
        AlertOut {
            kind,
            alert: ResourceAlert {
                alert_id: format!("{node}/{kind}/{}/{state_name}/{now_ms}", r.name()),
                node_name: node.to_string(),
                kind: kind.to_string(),
                resource: r.name().to_string(),
                state: state as i32,
                threshold_percent: if kind == "overload" {
                    self.cfg.overload_threshold.get(r)
                } else {
                    0.0
                },
                predicted_percent: crossing.map_or(0.0, |c| c.1),
                predicted_crossing_at: crossing.map(|c| ts(c.0)),
                lead_time_seconds: crossing.map_or(0, |c| (c.0 - now_ms).div_euclid(1000)),
                confidence_level: self.cfg.confidence,
                score: 0.0,
                message,
                created_at: Some(ts(now_ms)),
            },
        }
    }

    /// The prediction for one node at `horizon_minutes` and `level` (0 =
    /// defaults). Served from the last refresh when it matches, else
    /// computed now without touching the refresh state.
    pub fn predict(
        &self,
        node: &str,
        horizon_minutes: i32,
        level: f64,
        now_ms: i64,
    ) -> Result<ResourcePrediction> {
        let (horizon, level) = self.check_request(horizon_minutes, level)?;
        let f = self.node_forecast(node, horizon, level, now_ms)?;
        Ok(self.to_prediction(&f, horizon))
    }

    fn check_request(&self, horizon_minutes: i32, level: f64) -> Result<(u32, f64)> {
        let max = self.cfg.max_horizon_minutes();
        let horizon = match horizon_minutes {
            0 => max,
            h if h < 0 || h as u32 > max => {
                return Err(Error::InvalidArgument(format!(
                    "horizon_minutes {h} must be between 1 and {max} (0 = {max})"
                )))
            }
            h => h as u32,
        };
        let level = if level == 0.0 {
            self.cfg.confidence
        } else {
            level
        };
        if !(level > 0.0 && level < 1.0) {
            return Err(Error::InvalidArgument(format!(
                "confidence_level {level} must be in (0, 1) (0 = {})",
                self.cfg.confidence
            )));
        }
        Ok((horizon, level))
    }

    fn node_forecast(
        &self,
        node: &str,
        horizon: u32,
        level: f64,
        now_ms: i64,
    ) -> Result<Arc<NodeForecast>> {
        let state = read(&self.nodes)
            .get(node)
            .cloned()
            .ok_or_else(|| Error::NodeNotFound(node.to_string()))?;
        if level == self.cfg.confidence {
            if let Some(f) = read(&self.latest).get(node) {
                return Ok(f.clone());
            }
        }
        let steps = self.cfg.steps_for(horizon);
        let mut st = lock(&state);
        let mut buf = Vec::new();
        let mut f = self
            .forecast_node(node, &mut st, steps, level, None, now_ms, &mut buf)
            .ok_or_else(|| Error::NoData(format!("node {node:?} has no samples yet")))?;
        // Anomaly verdicts come from the refresh, which sees the fleet.
        if let Some(prev) = read(&self.latest).get(node) {
            f.anomalies = prev.anomalies.clone();
            f.anomaly_score = prev.anomaly_score;
        }
        Ok(Arc::new(f))
    }

    /// Predictions for several nodes (all when `filters` is empty) and their
    /// capacity-weighted aggregate.
    pub fn predict_cluster(
        &self,
        horizon_minutes: i32,
        level: f64,
        filters: &[String],
        now_ms: i64,
    ) -> Result<ClusterPrediction> {
        let (horizon, level) = self.check_request(horizon_minutes, level)?;
        let names: Vec<String> = if filters.is_empty() {
            self.node_names()
        } else {
            let known = read(&self.nodes);
            for n in filters {
                if !known.contains_key(n) {
                    return Err(Error::NodeNotFound(n.clone()));
                }
            }
            filters.to_vec()
        };
        let mut forecasts = Vec::new();
        for n in &names {
            match self.node_forecast(n, horizon, level, now_ms) {
                Ok(f) => forecasts.push(f),
                // Dropped or empty between listing and forecasting.
                Err(Error::NodeNotFound(_) | Error::NoData(_)) => {}
                Err(e) => return Err(e),
            }
        }
        if forecasts.is_empty() {
            return Err(Error::NoData("no node has a history yet".into()));
        }
        let node_predictions: Vec<ResourcePrediction> = forecasts
            .iter()
            .map(|f| self.to_prediction(f, horizon))
            .collect();
        let aggregated = self.aggregate(&forecasts, &node_predictions, horizon, level, now_ms);
        Ok(ClusterPrediction {
            node_predictions,
            aggregated_prediction: Some(aggregated),
            created_at: Some(ts(now_ms)),
        })
    }

    /// Horizons (minutes) reported for a request of `horizon` minutes.
    fn horizons_upto(&self, horizon: u32) -> Vec<u32> {
        let mut h: Vec<u32> = self
            .cfg
            .horizons
            .iter()
            .copied()
            .filter(|m| *m <= horizon)
            .collect();
        if h.last() != Some(&horizon) {
            h.push(horizon);
        }
        h
    }

    fn point(
        &self,
        f: &NodeForecast,
        minutes: u32,
        pick: fn(&Forecast, usize) -> f64,
    ) -> TimestampedResources {
        let k = self.cfg.steps_for(minutes) - 1;
        let v = |r: Resource| {
            f.get(r)
                .and_then(|s| (k < s.forecast.mean.len()).then(|| pick(&s.forecast, k)))
                .unwrap_or(0.0)
        };
        TimestampedResources {
            timestamp: Some(ts(f.origin_ms + (k as i64 + 1) * self.grid.step_ms)),
            cpu_usage: v(Resource::Cpu),
            memory_usage: v(Resource::Memory),
            io_usage: v(Resource::Storage),
            network_usage: v(Resource::Network),
            gpu_usage: v(Resource::Gpu),
        }
    }

    /// Maps a node forecast onto the wire message.
    pub fn to_prediction(&self, f: &NodeForecast, horizon: u32) -> ResourcePrediction {
        let hs = self.horizons_upto(horizon);
        let points = |pick: fn(&Forecast, usize) -> f64| -> Vec<TimestampedResources> {
            hs.iter().map(|m| self.point(f, *m, pick)).collect()
        };
        let names: Vec<&str> = f
            .series
            .iter()
            .map(|s| s.forecast.model_type.as_str())
            .collect();
        let model_type = if names.windows(2).all(|w| w[0] == w[1]) {
            names
                .first()
                .map_or_else(|| "none".to_string(), |n| n.to_string())
        } else {
            f.series
                .iter()
                .map(|s| format!("{}:{}", s.resource.name(), s.forecast.model_type))
                .collect::<Vec<_>>()
                .join(",")
        };
        let acc: Vec<f64> = f
            .series
            .iter()
            .filter_map(|s| s.forecast.accuracy)
            .collect();
        let model_accuracy = if acc.is_empty() {
            0.0
        } else {
            acc.iter().sum::<f64>() / acc.len() as f64
        };
        let steps = self.cfg.steps_for(horizon);
        let end_ms = f.origin_ms + steps as i64 * self.grid.step_ms;
        ResourcePrediction {
            node_name: f.node.clone(),
            prediction_id: format!("{}/{}/{}", f.node, f.origin_ms, f.created_ms),
            prediction_start: Some(ts(f.origin_ms)),
            prediction_end: Some(ts(end_ms)),
            prediction_horizon_minutes: horizon as i32,
            predicted_usage: points(|fc, k| fc.mean[k]),
            confidence_level: f.level,
            upper_bound: points(|fc, k| fc.upper[k]),
            lower_bound: points(|fc, k| fc.lower[k]),
            anomaly_detected: f.anomaly_score >= 1.0,
            anomaly_type: f
                .anomalies
                .iter()
                .filter(|a| a.score >= 1.0)
                .map(|a| format!("{}:{}", a.resource.name(), a.kind))
                .collect::<Vec<_>>()
                .join(","),
            anomaly_score: f.anomaly_score,
            recommendations: self.recommendations(f, steps),
            model_type,
            model_accuracy,
            created_at: Some(ts(f.created_ms)),
        }
    }

    fn recommendations(&self, f: &NodeForecast, steps: usize) -> Vec<PredictionRecommendation> {
        let mut out = Vec::new();
        for s in &f.series {
            let r = s.resource;
            let threshold = self.cfg.overload_threshold.get(r);
            let upper = &s.forecast.upper[..steps.min(s.forecast.upper.len())];
            if s.basis == Basis::Model {
                if let Some((k, v)) = first_crossing(upper, threshold) {
                    let at = f.origin_ms + (k as i64 + 1) * self.grid.step_ms;
                    let lead_min = (at - f.created_ms) as f64 / 60_000.0;
                    let (kind, verb) = match r {
                        Resource::Storage => ("provision", "provision storage / migrate data"),
                        Resource::Network => ("rebalance", "rebalance network-heavy pods"),
                        _ => ("scale_out", "scale out / migrate"),
                    };
                    let priority = if lead_min <= 15.0 {
                        PolicyPriority::Critical
                    } else if lead_min <= 30.0 {
                        PolicyPriority::High
                    } else {
                        PolicyPriority::Medium
                    };
                    out.push(PredictionRecommendation {
                        recommendation_type: kind.into(),
                        description: format!(
                            "{verb} before {} reaches {v:.0}% at {} (upper bound of the {:.0}% interval; threshold {threshold:.0}%)",
                            r.name(),
                            clock(at),
                            f.level * 100.0
                        ),
                        priority: priority as i32,
                        recommended_action_time: Some(ts(f.created_ms)),
                    });
                }
            }
            if r == Resource::Gpu {
                let k = steps.min(s.forecast.mean.len()).saturating_sub(1);
                out.push(PredictionRecommendation {
                    recommendation_type: "gpu_forecast".into(),
                    description: format!(
                        "gpu utilisation {:.1}% now, forecast {:.1}% [{:.1}%, {:.1}%] at +{} min ({})",
                        s.last,
                        s.forecast.mean[k],
                        s.forecast.lower[k],
                        s.forecast.upper[k],
                        (k as u64 + 1) * self.grid.step_ms as u64 / 60_000,
                        s.forecast.model_type
                    ),
                    priority: PolicyPriority::Low as i32,
                    recommended_action_time: None,
                });
            }
        }
        out
    }

    fn aggregate(
        &self,
        forecasts: &[Arc<NodeForecast>],
        preds: &[ResourcePrediction],
        horizon: u32,
        level: f64,
        now_ms: i64,
    ) -> ResourcePrediction {
        // Capacity-weighted mean per resource; equal weights when no node
        // reports a capacity. Summing bounds assumes nodes move together, so
        // the aggregate interval is conservative (wider than independent).
        let weight = |i: usize, r: Resource| -> f64 {
            let has = forecasts[i].get(r).is_some();
            let c = forecasts[i].capacity.0[r as usize];
            if !has {
                0.0
            } else if c > 0.0 {
                c
            } else {
                1.0
            }
        };
        let combine = |pick: fn(&ResourcePrediction) -> &Vec<TimestampedResources>| {
            let n = preds.first().map_or(0, |p| pick(p).len());
            (0..n)
                .map(|k| {
                    let mut acc = [0.0; Resource::COUNT];
                    let mut wsum = [0.0; Resource::COUNT];
                    for (i, p) in preds.iter().enumerate() {
                        let Some(t) = pick(p).get(k) else { continue };
                        let vals = [
                            t.cpu_usage,
                            t.memory_usage,
                            t.gpu_usage,
                            t.io_usage,
                            t.network_usage,
                        ];
                        for r in Resource::ALL {
                            let w = weight(i, r);
                            acc[r as usize] += w * vals[r as usize];
                            wsum[r as usize] += w;
                        }
                    }
                    let m = |r: Resource| {
                        let w = wsum[r as usize];
                        if w > 0.0 {
                            acc[r as usize] / w
                        } else {
                            0.0
                        }
                    };
                    TimestampedResources {
                        timestamp: pick(&preds[0]).get(k).and_then(|t| t.timestamp),
                        cpu_usage: m(Resource::Cpu),
                        memory_usage: m(Resource::Memory),
                        io_usage: m(Resource::Storage),
                        network_usage: m(Resource::Network),
                        gpu_usage: m(Resource::Gpu),
                    }
                })
                .collect::<Vec<_>>()
        };
        let acc: Vec<f64> = preds.iter().map(|p| p.model_accuracy).collect();
        let score = preds.iter().map(|p| p.anomaly_score).fold(0.0, f64::max);
        let anomalous: Vec<String> = preds
            .iter()
            .filter(|p| p.anomaly_detected)
            .map(|p| p.node_name.clone())
            .collect();
        ResourcePrediction {
            node_name: "cluster".into(),
            prediction_id: format!("cluster/{now_ms}"),
            prediction_start: preds
                .iter()
                .filter_map(|p| p.prediction_start)
                .min_by_key(|t| (t.seconds, t.nanos)),
            prediction_end: preds
                .iter()
                .filter_map(|p| p.prediction_end)
                .max_by_key(|t| (t.seconds, t.nanos)),
            prediction_horizon_minutes: horizon as i32,
            predicted_usage: combine(|p| &p.predicted_usage),
            confidence_level: level,
            upper_bound: combine(|p| &p.upper_bound),
            lower_bound: combine(|p| &p.lower_bound),
            anomaly_detected: !anomalous.is_empty(),
            anomaly_type: if anomalous.is_empty() {
                String::new()
            } else {
                format!("nodes:{}", anomalous.join(","))
            },
            anomaly_score: score,
            recommendations: preds
                .iter()
                .flat_map(|p| {
                    p.recommendations
                        .iter()
                        .filter(|r| r.recommendation_type != "gpu_forecast")
                        .cloned()
                })
                .collect(),
            model_type: format!("capacity_weighted_mean({} nodes)", preds.len()),
            model_accuracy: acc.iter().sum::<f64>() / acc.len().max(1) as f64,
            created_at: Some(ts(now_ms)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apollo_proto::{ClusterInsight, NodeResources};
    use std::time::Duration;

    fn engine() -> Engine {
        let cfg = ForecastArgs {
            step: Duration::from_secs(1),
            horizons: vec![1],
            ..ForecastArgs::default()
        };
        Engine::new(cfg, Metrics::unregistered()).unwrap()
    }

    fn feed(e: &Engine, node: &str, values: &[f64], end_ms: i64) {
        for (i, v) in values.iter().enumerate() {
            let t = end_ms - (values.len() - 1 - i) as i64 * 1000;
            let insight = ClusterInsight {
                node_name: node.into(),
                node_resources: Some(NodeResources {
                    cpu_used_cores: v / 10.0,
                    cpu_allocatable_cores: 10.0,
                    ..Default::default()
                }),
                collected_at: Some(ts(t)),
                ..Default::default()
            };
            e.ingest(&insight, None, end_ms).unwrap();
        }
    }

    const NOW: i64 = 1_700_000_000_000;

    #[test]
    fn short_history_gets_persistence_with_wide_intervals() {
        let e = engine();
        feed(&e, "a", &[40.0; 12], NOW);
        let p = e.predict("a", 0, 0.0, NOW).unwrap();
        assert_eq!(p.model_type, "persistence(insufficient-history:12/30)");
        assert_eq!(p.predicted_usage[0].cpu_usage, 40.0);
        assert!(p.upper_bound[0].cpu_usage - p.lower_bound[0].cpu_usage > 20.0);
        assert_eq!(p.model_accuracy, 0.0);
    }

    #[test]
    fn requests_are_validated() {
        let e = engine();
        feed(&e, "a", &[40.0; 5], NOW);
        assert!(matches!(
            e.predict("b", 1, 0.9, NOW),
            Err(Error::NodeNotFound(_))
        ));
        assert!(matches!(
            e.predict("a", -1, 0.9, NOW),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            e.predict("a", 2, 0.9, NOW),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            e.predict("a", 1, 1.0, NOW),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            e.predict("a", 1, -0.5, NOW),
            Err(Error::InvalidArgument(_))
        ));
        assert!(e.predict("a", 1, 0.8, NOW).is_ok());
    }

    #[test]
    fn rising_trend_raises_once_then_flat_clears() {
        let e = engine();
        let rising: Vec<f64> = (0..40).map(|i| 40.0 + f64::from(i)).collect();
        feed(&e, "hot", &rising, NOW);
        feed(&e, "cold", &[30.0; 40], NOW);
        let out = e.refresh(NOW);
        assert_eq!(out.predictions.len(), 2);
        let raised: Vec<_> = out.alerts.iter().filter(|a| a.kind == "overload").collect();
        assert_eq!(raised.len(), 1, "{raised:?}");
        let a = &raised[0].alert;
        assert_eq!(a.node_name, "hot");
        assert_eq!(a.resource, "cpu");
        assert_eq!(a.state, AlertState::Raised as i32);
        assert!(a.lead_time_seconds > 0);
        assert!(a.predicted_percent >= 90.0);
        let hot = out
            .predictions
            .iter()
            .find(|p| p.node_name == "hot")
            .unwrap();
        assert!(hot.model_type.starts_with("auto("), "{}", hot.model_type);
        assert!(hot.model_accuracy > 0.0 && hot.model_accuracy <= 1.0);
        assert!(hot
            .recommendations
            .iter()
            .any(|r| r.recommendation_type == "scale_out"));
        // Same condition: no repeat.
        let out = e.refresh(NOW);
        assert!(out.alerts.iter().all(|a| a.kind != "overload"));
        // The load drops and stays low: the alert clears, and every
        // transition is at least `clear_after` refreshes from the previous.
        let mut transitions = Vec::new();
        for k in 1..=200 {
            feed(&e, "hot", &[20.0], NOW + k * 1000);
            feed(&e, "cold", &[30.0], NOW + k * 1000);
            let out = e.refresh(NOW + k * 1000);
            for a in out.alerts.iter().filter(|a| a.kind == "overload") {
                assert_eq!(a.alert.node_name, "hot");
                transitions.push((k, a.alert.state));
            }
        }
        assert_eq!(
            transitions.last().map(|t| t.1),
            Some(AlertState::Cleared as i32),
            "{transitions:?}"
        );
        let mut prev = 0;
        for (k, _) in &transitions {
            assert!(k - prev >= 3, "flapping: {transitions:?}");
            prev = *k;
        }
    }

    fn engine_with_budget(budget: usize) -> Engine {
        let cfg = ForecastArgs {
            step: Duration::from_secs(1),
            horizons: vec![1],
            auto_select_budget: budget,
            // Counts only: the tests must not depend on machine speed.
            auto_select_time_budget: Duration::ZERO,
            ..ForecastArgs::default()
        };
        Engine::new(cfg, Metrics::unregistered()).unwrap()
    }

    /// A noisy but deterministic series per node.
    fn wiggle(seed: usize, len: usize) -> Vec<f64> {
        (0..len)
            .map(|i| 30.0 + seed as f64 + ((i * 7 + seed * 13) % 11) as f64)
            .collect()
    }

    #[test]
    fn budget_bounds_selections_and_warming_series_say_so() {
        let (n, k) = (7usize, 3usize);
        let e = engine_with_budget(k);
        for i in 0..n {
            feed(&e, &format!("n{i}"), &wiggle(i, 80), NOW);
        }
        let rounds = n.div_ceil(k);
        let mut selected = 0;
        for round in 1..=rounds {
            let out = e.refresh(NOW);
            let expect = k.min(n - selected);
            selected += expect;
            assert_eq!(out.selections, expect, "round {round}");
            assert_eq!(out.warming, n - selected, "round {round}");
            let warming: Vec<&ResourcePrediction> = out
                .predictions
                .iter()
                .filter(|p| p.model_type.contains("warming"))
                .collect();
            assert_eq!(warming.len(), n - selected, "round {round}");
            for p in warming {
                assert_eq!(p.model_type, "auto(warming:median30)");
                let (lo, mid, hi) = (
                    p.lower_bound[0].cpu_usage,
                    p.predicted_usage[0].cpu_usage,
                    p.upper_bound[0].cpu_usage,
                );
                assert!(lo <= mid && mid <= hi && hi > lo, "{lo} {mid} {hi}");
                assert!(p.model_accuracy > 0.0 && p.model_accuracy <= 1.0);
            }
        }
        // Every series has its own selection now; none re-selects yet.
        let out = e.refresh(NOW);
        assert_eq!((out.selections, out.warming), (0, 0));
        for p in &out.predictions {
            assert!(p.model_type.starts_with("auto("), "{}", p.model_type);
            assert!(!p.model_type.contains("warming"), "{}", p.model_type);
        }
    }

    fn cpu_pending(e: &Engine, name: &str) -> Option<(Want, usize)> {
        let node = read(&e.nodes).get(name).cloned().unwrap();
        let st = lock(&node);
        let sel = st.selectors[Resource::Cpu as usize].as_ref().unwrap();
        sel.pending(e.cfg.max_steps(), e.cfg.confidence)
    }

    #[test]
    fn never_selected_series_go_before_due_reselections() {
        // With a budget of one, a new series arriving when an old one is
        // due for re-selection is selected first; the old one keeps serving
        // its selection and re-selects on the next refresh.
        let e = engine_with_budget(1);
        feed(&e, "old", &wiggle(0, 80), NOW);
        assert_eq!(e.refresh(NOW).selections, 1);
        let mut waited = 0;
        while cpu_pending(&e, "old").is_none() {
            assert_eq!(e.refresh(NOW).selections, 0);
            waited += 1;
            assert!(waited < 40, "cadence never came round");
        }
        feed(&e, "new", &wiggle(2, 80), NOW);
        let out = e.refresh(NOW);
        assert_eq!((out.selections, out.warming), (1, 0));
        assert!(matches!(
            cpu_pending(&e, "old"),
            Some((Want::Cadence, overdue)) if overdue >= 1
        ));
        let old = out.predictions.iter().find(|p| p.node_name == "old");
        let old = old.map(|p| p.model_type.as_str()).unwrap_or_default();
        assert!(
            old.starts_with("auto(") && !old.contains("warming"),
            "{old}"
        );
        assert_eq!(e.refresh(NOW).selections, 1);
        assert_eq!(cpu_pending(&e, "old"), None);
        assert_eq!(cpu_pending(&e, "new"), None);
    }

    #[test]
    fn zero_budget_selects_everything_at_once() {
        let e = engine_with_budget(0);
        for i in 0..5 {
            feed(&e, &format!("n{i}"), &wiggle(i, 80), NOW);
        }
        let out = e.refresh(NOW);
        assert_eq!((out.selections, out.warming), (5, 0));
    }

    #[test]
    fn nodes_expire_after_ttl() {
        let e = engine();
        feed(&e, "a", &[40.0; 3], NOW);
        let out = e.refresh(NOW + 601_000);
        assert_eq!(out.expired, vec!["a".to_string()]);
        assert_eq!(e.node_count(), 0);
        assert!(matches!(
            e.predict("a", 1, 0.0, NOW),
            Err(Error::NodeNotFound(_))
        ));
    }
}
