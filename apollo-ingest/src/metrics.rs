//! Prometheus metrics of the ingest path.
//!
//! - `apollo_ingest_received_total{kind}`: messages received (valid or not).
//! - `apollo_ingest_rejected_total{kind,reason}`: refused messages; `reason` is
//!   `<field path without indices>:<rule>` (e.g.
//!   `gpu_devices.utilization_percent:out_of_range`) or `message:too_large`,
//!   so its cardinality is bounded by the schema.
//! - `apollo_ingest_published_total{kind}`: messages JetStream acknowledged.
//! - `apollo_ingest_duplicates_total`: acknowledged as duplicates of a stored one.
//! - `apollo_ingest_publish_failures_total{kind}`: publishes that failed or timed out.
//! - `apollo_ingest_publish_latency_seconds`: send to acknowledgement.

use std::time::Duration;

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

/// Which message type a metric is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `WorkloadSignature`.
    Workload,
    /// `ClusterInsight`.
    Cluster,
}

impl EncodeLabelValue for Kind {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(self.as_str())
    }
}

impl Kind {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Workload => "workload",
            Self::Cluster => "cluster",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabels {
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RejectLabels {
    kind: Kind,
    reason: String,
}

/// The ingest counters and histogram.
#[derive(Debug, Clone)]
pub struct Metrics {
    received: Family<KindLabels, Counter>,
    rejected: Family<RejectLabels, Counter>,
    published: Family<KindLabels, Counter>,
    failures: Family<KindLabels, Counter>,
    duplicates: Counter,
    latency: Histogram,
}

impl Metrics {
    /// Creates the metrics and registers them under `apollo_ingest_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            received: Family::default(),
            rejected: Family::default(),
            published: Family::default(),
            failures: Family::default(),
            duplicates: Counter::default(),
            // 0.5 ms .. ~4 s.
            latency: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.0005, 2.0, 14,
            )),
        };
        // Both kinds start at zero, so rates and alerts work from the start.
        for kind in [Kind::Workload, Kind::Cluster] {
            let _ = m.received.get_or_create(&KindLabels { kind });
            let _ = m.published.get_or_create(&KindLabels { kind });
            let _ = m.failures.get_or_create(&KindLabels { kind });
        }
        let r = registry.sub_registry_with_prefix("apollo_ingest");
        r.register(
            "received",
            "Messages received, valid or not",
            m.received.clone(),
        );
        r.register(
            "rejected",
            "Messages refused, by field and rule",
            m.rejected.clone(),
        );
        r.register(
            "published",
            "Messages stored on JetStream (acknowledged)",
            m.published.clone(),
        );
        r.register(
            "publish_failures",
            "Publishes that failed or were not acknowledged in time",
            m.failures.clone(),
        );
        r.register(
            "duplicates",
            "Acknowledged as duplicates of an already stored message",
            m.duplicates.clone(),
        );
        r.register(
            "publish_latency_seconds",
            "Time from sending a message to its JetStream acknowledgement",
            m.latency.clone(),
        );
        m
    }

    /// One message arrived.
    pub fn received(&self, kind: Kind) {
        self.received.get_or_create(&KindLabels { kind }).inc();
    }

    /// One message was refused for `reason`.
    pub fn rejected(&self, kind: Kind, reason: String) {
        self.rejected
            .get_or_create(&RejectLabels { kind, reason })
            .inc();
    }

    /// One message was stored after `latency`.
    pub fn published(&self, kind: Kind, duplicate: bool, latency: Duration) {
        self.published.get_or_create(&KindLabels { kind }).inc();
        if duplicate {
            self.duplicates.inc();
        }
        self.latency.observe(latency.as_secs_f64());
    }

    /// One publish failed.
    pub fn publish_failed(&self, kind: Kind) {
        self.failures.get_or_create(&KindLabels { kind }).inc();
    }
}
