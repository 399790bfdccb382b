//! Prometheus metrics of the collector (`apollo_collector_*`).
//!
//! - `watch_events_total{resource,event}`: watch events applied.
//! - `watch_errors_total{resource}`: failed list/watch calls (retried with backoff).
//! - `objects{resource}`: objects held.
//! - `field_problems_total{field}`: object fields that could not be used.
//! - `insights_total{outcome}`: insights `published` / `failed` / `skipped_stale`.
//! - `cycle_seconds`: time to build and publish one round of insights.
//! - `source_up{source}`: 1 when the last read of `kubernetes`, `metrics_api`
//!   succeeded (exporters: share of targets whose last scrape succeeded).
//! - `stale_nodes{source}`: nodes whose `dcgm` / `node_exporter` /
//!   `metrics_api` data is from an earlier round (last read failed).
//! - `expired_nodes{source}`: nodes whose data is older than
//!   `--collect-stale-after` and left out.
//! - `scrape_errors_total{source,reason}`, `data_problems_total{source,reason}`.
//! - `nodes_gone_total`: nodes deleted from the API (no longer reported).

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResourceEvent {
    resource: String,
    event: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResourceLabel {
    resource: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FieldLabel {
    field: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SourceLabel {
    source: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SourceReason {
    source: String,
    reason: String,
}

/// The collector's metrics; cheap to clone.
#[derive(Debug, Clone)]
pub struct CollectorMetrics {
    watch_events: Family<ResourceEvent, Counter>,
    watch_errors: Family<ResourceLabel, Counter>,
    objects: Family<ResourceLabel, Gauge>,
    field_problems: Family<FieldLabel, Counter>,
    insights: Family<OutcomeLabel, Counter>,
    cycle: Histogram,
    source_up: Family<SourceLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    stale_nodes: Family<SourceLabel, Gauge>,
    expired_nodes: Family<SourceLabel, Gauge>,
    scrape_errors: Family<SourceReason, Counter>,
    data_problems: Family<SourceReason, Counter>,
    nodes_gone: Counter,
    view_current: Gauge,
}

impl CollectorMetrics {
    /// Creates the metrics and registers them under `apollo_collector_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            watch_events: Family::default(),
            watch_errors: Family::default(),
            objects: Family::default(),
            field_problems: Family::default(),
            insights: Family::default(),
            // 1 ms .. ~16 s.
            cycle: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.001, 2.0, 15,
            )),
            source_up: Family::default(),
            stale_nodes: Family::default(),
            expired_nodes: Family::default(),
            scrape_errors: Family::default(),
            data_problems: Family::default(),
            nodes_gone: Counter::default(),
            view_current: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("apollo_collector");
        r.register(
            "watch_events",
            "Kubernetes watch events applied",
            m.watch_events.clone(),
        );
        r.register(
            "view_current",
            "1 while the Node and Pod views are synced and current, so insights are published; 0 while the Kubernetes API has failed for --collect-stale-after (ingest keeps serving reports)",
            m.view_current.clone(),
        );
        r.register(
            "watch_errors",
            "Failed Kubernetes list/watch calls (retried with backoff)",
            m.watch_errors.clone(),
        );
        r.register("objects", "Kubernetes objects held", m.objects.clone());
        r.register(
            "field_problems",
            "Object fields that could not be used",
            m.field_problems.clone(),
        );
        r.register(
            "insights",
            "Collected insights by outcome",
            m.insights.clone(),
        );
        r.register(
            "cycle_seconds",
            "Time to build and publish one round of insights",
            m.cycle.clone(),
        );
        r.register(
            "source_up",
            "Whether the last read of a source succeeded (exporters: share of targets)",
            m.source_up.clone(),
        );
        r.register(
            "stale_nodes",
            "Nodes reported with data from an earlier round because the last read failed",
            m.stale_nodes.clone(),
        );
        r.register(
            "expired_nodes",
            "Nodes whose data is older than the staleness limit and left out",
            m.expired_nodes.clone(),
        );
        r.register(
            "scrape_errors",
            "Failed reads of metrics.k8s.io or an exporter",
            m.scrape_errors.clone(),
        );
        r.register(
            "data_problems",
            "Values refused while reading a source (NaN, counter reset, unknown unit, ...)",
            m.data_problems.clone(),
        );
        r.register(
            "nodes_gone",
            "Nodes deleted from the API and no longer reported",
            m.nodes_gone.clone(),
        );
        m
    }

    /// A watch event was applied.
    pub fn watch_event(&self, resource: &str, event: &str) {
        self.watch_events
            .get_or_create(&ResourceEvent {
                resource: resource.into(),
                event: event.into(),
            })
            .inc();
    }

    /// A list/watch call failed.
    pub fn watch_error(&self, resource: &str) {
        self.watch_errors
            .get_or_create(&ResourceLabel {
                resource: resource.into(),
            })
            .inc();
    }

    /// Objects held of `resource`.
    pub fn set_objects(&self, resource: &str, n: usize) {
        self.objects
            .get_or_create(&ResourceLabel {
                resource: resource.into(),
            })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// A field could not be used.
    pub fn field_problem(&self, field: &str) {
        self.field_problems
            .get_or_create(&FieldLabel {
                field: field.into(),
            })
            .inc();
    }

    /// `n` insights ended with `outcome`.
    pub fn insights(&self, outcome: &str, n: u64) {
        self.insights
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .inc_by(n);
    }

    /// One round took `seconds`.
    pub fn cycle(&self, seconds: f64) {
        self.cycle.observe(seconds);
    }

    /// Whether the collector's view is current (it publishes insights).
    pub fn view_current(&self, current: bool) {
        self.view_current.set(i64::from(current));
    }

    /// Health of a source, 0-1.
    pub fn source_up(&self, source: &str, up: f64) {
        self.source_up
            .get_or_create(&SourceLabel {
                source: source.into(),
            })
            .set(up);
    }

    /// Nodes served from an earlier round, and nodes whose data expired.
    pub fn staleness(&self, source: &str, stale: usize, expired: usize) {
        let l = SourceLabel {
            source: source.into(),
        };
        self.stale_nodes
            .get_or_create(&l)
            .set(i64::try_from(stale).unwrap_or(i64::MAX));
        self.expired_nodes
            .get_or_create(&l)
            .set(i64::try_from(expired).unwrap_or(i64::MAX));
    }

    /// A read of `source` failed for `reason`.
    pub fn scrape_error(&self, source: &str, reason: &str) {
        self.scrape_errors
            .get_or_create(&SourceReason {
                source: source.into(),
                reason: reason.into(),
            })
            .inc();
    }

    /// A value from `source` was refused for `reason`.
    pub fn data_problem(&self, source: &str, reason: &str) {
        self.data_problems
            .get_or_create(&SourceReason {
                source: source.into(),
                reason: reason.into(),
            })
            .inc();
    }

    /// A node was deleted from the API.
    pub fn node_gone(&self) {
        self.nodes_gone.inc();
    }
}
