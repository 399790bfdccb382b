//! Metrics every service exports the same way: gRPC requests, bus traffic,
//! consumer lag and log-filter changes.
//!
//! They live in one process-wide registry because the code that counts them
//! (the gRPC layer, the bus, the admin endpoint) is shared and one process
//! runs one service; [`crate::health::serve_http`] appends this registry to
//! the service's own on `/metrics`. Names and labels are listed in
//! `docs/metrics.md`.

use std::sync::LazyLock;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Labels of a gRPC request: the method path and its status code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// `package.Service/Method`, or `unknown` for a method the server lacks.
    pub rpc: String,
    /// Canonical gRPC status name, e.g. `OK`, `INVALID_ARGUMENT`.
    pub code: &'static str,
}

/// Labels of a bus message: its subject family (e.g. `insight.workload`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FamilyLabels {
    /// Subject family: the first token after the prefix, plus the second for
    /// `insight`, `policy`, `feedback` and `alert`.
    pub family: String,
}

/// Labels of a rejected bus message.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    /// Subject family.
    pub family: String,
    /// Why it was not used, e.g. `undecodable`.
    pub reason: &'static str,
}

/// Labels naming one consumer of a stream.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerLabels {
    /// What consumes, e.g. `cluster_view`, `forecaster`.
    pub consumer: &'static str,
}

/// Labels of a log-filter change.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `applied` or `rejected`.
    pub outcome: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn rpc_histogram() -> Histogram {
    // 100 µs .. ~13 s.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0001, 2.0, 18,
    ))
}

/// The shared metrics; see the module documentation.
#[derive(Debug)]
pub struct SharedMetrics {
    /// gRPC requests served, by method and status.
    pub grpc_requests: Family<RpcLabels, Counter>,
    /// Time from request to response headers, by method and status.
    pub grpc_duration: HistogramFamily<RpcLabels>,
    /// Messages stored on JetStream (acknowledged), by subject family.
    pub bus_published: Family<FamilyLabels, Counter>,
    /// Publishes that failed or were not acknowledged, by subject family.
    pub bus_publish_failures: Family<FamilyLabels, Counter>,
    /// Messages taken from the bus, by subject family.
    pub bus_consumed: Family<FamilyLabels, Counter>,
    /// Consumed messages that could not be used, by family and reason.
    pub bus_rejected: Family<RejectLabels, Counter>,
    /// Messages still pending for a consumer (JetStream's count at the last
    /// delivery): the consumer's lag.
    pub consumer_pending: Family<ConsumerLabels, Gauge>,
    /// Runtime log-filter changes, by outcome.
    pub log_filter_changes: Family<OutcomeLabels, Counter>,
    registry: Registry,
}

impl SharedMetrics {
    fn new() -> Self {
        let m = Self {
            grpc_requests: Family::default(),
            grpc_duration: Family::new_with_constructor(rpc_histogram),
            bus_published: Family::default(),
            bus_publish_failures: Family::default(),
            bus_consumed: Family::default(),
            bus_rejected: Family::default(),
            consumer_pending: Family::default(),
            log_filter_changes: Family::default(),
            registry: Registry::default(),
        };
        let mut registry = Registry::default();
        let r = registry.sub_registry_with_prefix("apollo");
        r.register(
            "grpc_server_requests",
            "gRPC requests served, by method and status code",
            m.grpc_requests.clone(),
        );
        r.register(
            "grpc_server_request_duration_seconds",
            "Time from a gRPC request to its response headers, by method and status code",
            m.grpc_duration.clone(),
        );
        r.register(
            "bus_messages_published",
            "Messages stored on JetStream (acknowledged), by subject family",
            m.bus_published.clone(),
        );
        r.register(
            "bus_publish_failures",
            "Publishes that failed or were not acknowledged, by subject family",
            m.bus_publish_failures.clone(),
        );
        r.register(
            "bus_messages_consumed",
            "Messages taken from the bus, by subject family",
            m.bus_consumed.clone(),
        );
        r.register(
            "bus_messages_rejected",
            "Consumed messages that could not be used, by subject family and reason",
            m.bus_rejected.clone(),
        );
        r.register(
            "bus_consumer_pending_messages",
            "Messages JetStream still holds for a consumer at its last delivery (consumer lag)",
            m.consumer_pending.clone(),
        );
        r.register(
            "log_filter_changes",
            "Runtime log filter changes through PUT /loglevel, by outcome",
            m.log_filter_changes.clone(),
        );
        // Series with a fixed label set start at zero, so dashboards and
        // alerts see them before the first event (an absent series is not 0).
        for family in crate::bus::SUBJECT_FAMILIES.into_iter().chain(["other"]) {
            let labels = FamilyLabels {
                family: family.to_string(),
            };
            let _ = m.bus_published.get_or_create(&labels);
            let _ = m.bus_publish_failures.get_or_create(&labels);
            let _ = m.bus_consumed.get_or_create(&labels);
        }
        for outcome in ["applied", "rejected"] {
            let _ = m
                .log_filter_changes
                .get_or_create(&OutcomeLabels { outcome });
        }
        Self { registry, ..m }
    }

    /// The registry holding these metrics (for encoding).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Counts a consumed message that could not be used.
    pub fn rejected(&self, family: String, reason: &'static str) {
        self.bus_rejected
            .get_or_create(&RejectLabels { family, reason })
            .inc();
    }
}

static SHARED: LazyLock<SharedMetrics> = LazyLock::new(SharedMetrics::new);

/// The process-wide shared metrics.
pub fn shared() -> &'static SharedMetrics {
    &SHARED
}

/// Canonical name of a gRPC status code (as in the gRPC specification).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shared_metric_is_encoded() {
        let m = SharedMetrics::new();
        m.grpc_requests
            .get_or_create(&RpcLabels {
                rpc: "x.Y/Z".into(),
                code: "OK",
            })
            .inc();
        m.grpc_duration
            .get_or_create(&RpcLabels {
                rpc: "x.Y/Z".into(),
                code: "OK",
            })
            .observe(0.01);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, m.registry()).unwrap();
        for name in [
            "apollo_grpc_server_requests_total{rpc=\"x.Y/Z\",code=\"OK\"} 1",
            "# TYPE apollo_grpc_server_request_duration_seconds histogram",
            "# TYPE apollo_bus_messages_published counter",
            "# TYPE apollo_bus_publish_failures counter",
            "# TYPE apollo_bus_messages_consumed counter",
            "apollo_bus_messages_consumed_total{family=\"policy.orchestration\"} 0",
            "apollo_bus_publish_failures_total{family=\"other\"} 0",
            "apollo_log_filter_changes_total{outcome=\"rejected\"} 0",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }

    #[test]
    fn code_names_follow_the_specification() {
        assert_eq!(code_name(tonic::Code::InvalidArgument), "INVALID_ARGUMENT");
        assert_eq!(code_name(tonic::Code::from_i32(14)), "UNAVAILABLE");
    }
}
