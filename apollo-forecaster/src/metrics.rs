//! Prometheus metrics of the forecaster.

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

type Labels = Vec<(&'static str, &'static str)>;

/// Every metric the forecaster exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Insights taken from the stream (replay included).
    pub insights_consumed: Counter,
    /// Redelivered insights (stream sequence already applied) acked and
    /// skipped: JetStream redelivers after a server restart that lost acks.
    pub redeliveries_skipped: Counter,
    /// Insights not stored, by reason.
    pub insights_rejected: Family<Labels, Counter>,
    /// Single values not stored, by reason.
    pub values_rejected: Family<Labels, Counter>,
    /// Nodes with a history.
    pub nodes: Gauge,
    /// Series stored across nodes.
    pub series: Gauge,
    /// Nodes dropped after their TTL.
    pub nodes_expired: Counter,
    /// Wall time of a forecast refresh (compute only).
    pub refresh_duration: Histogram,
    /// Predictions published on `apollo.forecast.<node>`.
    pub predictions_published: Counter,
    /// Publishes (predictions or alerts) that failed.
    pub publish_failures: Counter,
    /// Alerts published, by kind and state.
    pub alerts: Family<Labels, Counter>,
}

impl Metrics {
    /// Creates the metrics and registers them under `apollo_forecaster_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            insights_consumed: Counter::default(),
            redeliveries_skipped: Counter::default(),
            insights_rejected: Family::default(),
            values_rejected: Family::default(),
            nodes: Gauge::default(),
            series: Gauge::default(),
            nodes_expired: Counter::default(),
            refresh_duration: Histogram::new([
                0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            predictions_published: Counter::default(),
            publish_failures: Counter::default(),
            alerts: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("apollo_forecaster");
        r.register(
            "insights_consumed",
            "Cluster insights consumed",
            m.insights_consumed.clone(),
        );
        r.register(
            "redeliveries_skipped",
            "Redelivered insights already applied, acked and skipped",
            m.redeliveries_skipped.clone(),
        );
        r.register(
            "insights_rejected",
            "Cluster insights not stored, by reason",
            m.insights_rejected.clone(),
        );
        r.register(
            "values_rejected",
            "Single resource values not stored, by reason",
            m.values_rejected.clone(),
        );
        r.register("nodes", "Nodes with a history", m.nodes.clone());
        r.register("series", "Resource series stored", m.series.clone());
        r.register(
            "nodes_expired",
            "Nodes dropped after the node TTL",
            m.nodes_expired.clone(),
        );
        r.register(
            "refresh_duration_seconds",
            "Wall time of a forecast refresh",
            m.refresh_duration.clone(),
        );
        r.register(
            "predictions_published",
            "Resource predictions published",
            m.predictions_published.clone(),
        );
        r.register(
            "publish_failures",
            "Predictions or alerts that could not be published",
            m.publish_failures.clone(),
        );
        r.register(
            "alerts",
            "Alerts published, by kind and state",
            m.alerts.clone(),
        );
        m
    }

    /// Metrics attached to no registry (benchmarks, unit tests).
    pub fn unregistered() -> Self {
        Self::register(&mut Registry::default())
    }

    /// Counts a rejected insight.
    pub fn reject_insight(&self, reason: &'static str) {
        self.insights_rejected
            .get_or_create(&vec![("reason", reason)])
            .inc();
    }
}
