//! Prometheus metrics of the forecaster.

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::EncodeLabelSet,
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
    /// Rolling backtest accuracy (`1 - wMAPE`) of the forecasts each model
    /// made: an exponentially weighted mean over refreshes.
    pub model_accuracy: Family<ModelLabels, Gauge<f64, AtomicU64>>,
    /// Series forecasts scored into `model_accuracy`, by model.
    pub model_forecasts_scored: Family<ModelLabels, Counter>,
}

/// The model a forecast came from, e.g. `auto(ets+arima)`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    /// Model name without the per-series details (`auto(warming:median30)`
    /// is `auto(warming)`).
    pub model: String,
}

/// Weight of the newest accuracy in the rolling mean.
const ACCURACY_WEIGHT: f64 = 0.1;

/// A model name fit for a label: details after `:` inside brackets dropped,
/// at most 64 characters.
fn model_label(model_type: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for c in model_type.chars() {
        match c {
            ':' => skipping = true,
            ')' => {
                skipping = false;
                out.push(c);
            }
            _ if !skipping => out.push(c),
            _ => {}
        }
    }
    out.chars().take(64).collect()
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
            model_accuracy: Family::default(),
            model_forecasts_scored: Family::default(),
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
        r.register(
            "model_accuracy",
            "Rolling backtest accuracy (1 - wMAPE) of each model's forecasts, weighted 0.1 per forecast",
            m.model_accuracy.clone(),
        );
        r.register(
            "model_forecasts_scored",
            "Series forecasts with a backtest accuracy, by model",
            m.model_forecasts_scored.clone(),
        );
        m
    }

    /// Metrics attached to no registry (benchmarks, unit tests).
    pub fn unregistered() -> Self {
        Self::register(&mut Registry::default())
    }

    /// Folds one forecast's backtest accuracy into its model's rolling mean.
    pub fn observe_accuracy(&self, model_type: &str, accuracy: f64) {
        if !accuracy.is_finite() {
            return;
        }
        let labels = ModelLabels {
            model: model_label(model_type),
        };
        let scored = self.model_forecasts_scored.get_or_create(&labels);
        let gauge = self.model_accuracy.get_or_create(&labels);
        let next = if scored.get() == 0 {
            accuracy
        } else {
            gauge.get() + ACCURACY_WEIGHT * (accuracy - gauge.get())
        };
        gauge.set(next);
        scored.inc();
    }

    /// Counts a rejected insight.
    pub fn reject_insight(&self, reason: &'static str) {
        self.insights_rejected
            .get_or_create(&vec![("reason", reason)])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_is_a_rolling_mean_per_model() {
        let m = Metrics::unregistered();
        m.observe_accuracy("auto(ets+arima)", 0.9);
        m.observe_accuracy("auto(ets+arima)", 0.5);
        m.observe_accuracy("auto(warming:median30)", 0.7);
        m.observe_accuracy("auto(warming:median60)", f64::NAN);
        let get = |model: &str| {
            m.model_accuracy
                .get_or_create(&ModelLabels {
                    model: model.into(),
                })
                .get()
        };
        assert!((get("auto(ets+arima)") - 0.86).abs() < 1e-9);
        assert!((get("auto(warming)") - 0.7).abs() < 1e-9);
        assert_eq!(
            m.model_forecasts_scored
                .get_or_create(&ModelLabels {
                    model: "auto(warming)".into()
                })
                .get(),
            1
        );
    }
}
