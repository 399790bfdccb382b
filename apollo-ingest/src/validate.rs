//! Validation of incoming insights, before anything reaches the bus.
//!
//! Pure functions of the message, the current time and the allowed clock
//! skew. The first violation found is returned with the path of the field
//! (`gpu_devices[0].utilization_percent`), so a peer can fix its producer.
//!
//! Ranges (the wire contract names no units, so the field names decide):
//!
//! | fields | range |
//! |---|---|
//! | `*_percent` (`cpu_usage_percent`, `utilization_percent`, ...) | 0-100 |
//! | `confidence`, `locality_score`, `health_score` | 0-1 |
//! | `NetworkStatus.current_utilization`, `CSDStatus.compute_utilization` | 0-1 (a ratio: unlike the percent fields, the name carries no `_percent`) |
//! | `GPUStatus.allocated_milli` | 0-1000 |
//! | bytes, counts, ops, IOPS, cores, throughput, latency, power | >= 0 |
//! | `GPUStatus.temperature_celsius`, `KueueInfo.priority` | any finite value |
//! | enums | a value the proto defines (prost keeps unknown numbers) |
//! | timestamps | nanos 0-999999999, within 0001-9999, at most `max_future_skew` ahead of now |
//!
//! Identity: a `WorkloadSignature` needs `pod_name` (DNS-1123 subdomain, at
//! most 253 characters) and `pod_namespace` (DNS-1123 label, at most 63); a
//! `ClusterInsight` needs `node_name` (DNS-1123 subdomain). Optional names
//! (`WorkloadSignature.node_name`, `WorkloadSummary.pod_*`,
//! `ArgoContext.workflow_namespace`) are checked the same way when set.

use std::{
    fmt,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use apollo_proto::{
    ArgoContext, ClusterInsight, ClusterQueueStatus, CsdStatus, DataLocalityInfo,
    DistributedFilesystemInfo, GpuStatus, IoStatistics, KubeflowInfo, KueueInfo, NetworkStatus,
    NodeResources, ResourceMetrics, StorageDeviceStatus, StorageRecommendation, Timestamp,
    WorkloadSignature, WorkloadSummary,
};

/// Seconds of 0001-01-01T00:00:00Z, the earliest valid protobuf Timestamp.
const MIN_TIMESTAMP_SECONDS: i64 = -62_135_596_800;
/// Seconds of 9999-12-31T23:59:59Z, the latest valid protobuf Timestamp.
const MAX_TIMESTAMP_SECONDS: i64 = 253_402_300_799;

/// The rule a field broke; short and fixed so it can label a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    /// A required field is empty.
    Missing,
    /// Not a valid Kubernetes name.
    InvalidName,
    /// An enum number the proto does not define.
    UnknownEnum,
    /// NaN or infinite.
    NotFinite,
    /// Outside its documented range.
    OutOfRange,
    /// Negative where only sizes, counts or rates make sense.
    Negative,
    /// Nanos or seconds outside what a protobuf Timestamp allows.
    InvalidTimestamp,
    /// Further in the future than the allowed clock skew.
    FutureTimestamp,
    /// Fields that contradict each other.
    Inconsistent,
}

impl Rule {
    /// Stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::InvalidName => "invalid_name",
            Self::UnknownEnum => "unknown_enum",
            Self::NotFinite => "not_finite",
            Self::OutOfRange => "out_of_range",
            Self::Negative => "negative",
            Self::InvalidTimestamp => "invalid_timestamp",
            Self::FutureTimestamp => "future_timestamp",
            Self::Inconsistent => "inconsistent",
        }
    }
}

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Field path, e.g. `gpu_devices[0].utilization_percent`.
    pub path: String,
    /// The rule broken.
    pub rule: Rule,
    /// Human-readable detail, e.g. `140 is outside 0-100`.
    pub detail: String,
}

impl Violation {
    fn new(path: String, rule: Rule, detail: impl Into<String>) -> Self {
        Self {
            path,
            rule,
            detail: detail.into(),
        }
    }

    /// Metric label of bounded cardinality: the path without list indices
    /// plus the rule, e.g. `gpu_devices.utilization_percent:out_of_range`.
    pub fn label(&self) -> String {
        let mut out = String::with_capacity(self.path.len() + 16);
        let mut in_index = false;
        for c in self.path.chars() {
            match c {
                '[' => in_index = true,
                ']' => in_index = false,
                _ if !in_index => out.push(c),
                _ => {}
            }
        }
        out.push(':');
        out.push_str(self.rule.as_str());
        out
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.detail)
    }
}

impl std::error::Error for Violation {}

type Check = Result<(), Violation>;

/// What validation compares timestamps against.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The current time.
    pub now: SystemTime,
    /// How far ahead of `now` a timestamp may be (clock skew of the producer).
    pub max_future_skew: Duration,
}

impl Limits {
    /// Limits at the current wall-clock time.
    pub fn now(max_future_skew: Duration) -> Self {
        Self {
            now: SystemTime::now(),
            max_future_skew,
        }
    }
}

/// A path prefix under construction (`""` at the root).
#[derive(Clone, Copy)]
struct At<'a>(&'a str);

impl At<'_> {
    fn field(self, name: &str) -> String {
        if self.0.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.0)
        }
    }

    fn item(self, name: &str, index: usize) -> String {
        format!("{}[{index}]", self.field(name))
    }
}

fn finite(at: At<'_>, name: &str, v: f64) -> Check {
    if v.is_finite() {
        Ok(())
    } else {
        Err(Violation::new(
            at.field(name),
            Rule::NotFinite,
            format!("{v} is not a finite number"),
        ))
    }
}

fn within(at: At<'_>, name: &str, v: f64, lo: f64, hi: f64, range: &str) -> Check {
    finite(at, name, v)?;
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(Violation::new(
            at.field(name),
            Rule::OutOfRange,
            format!("{v} is outside {range}"),
        ))
    }
}

fn percent(at: At<'_>, name: &str, v: f64) -> Check {
    within(at, name, v, 0.0, 100.0, "0-100")
}

fn ratio(at: At<'_>, name: &str, v: f64) -> Check {
    within(at, name, v, 0.0, 1.0, "0-1")
}

fn non_negative(at: At<'_>, name: &str, v: f64) -> Check {
    finite(at, name, v)?;
    if v >= 0.0 {
        Ok(())
    } else {
        Err(Violation::new(
            at.field(name),
            Rule::Negative,
            format!("{v} must not be negative"),
        ))
    }
}

fn count<T: Into<i64> + Copy>(at: At<'_>, name: &str, v: T) -> Check {
    let v: i64 = v.into();
    if v >= 0 {
        Ok(())
    } else {
        Err(Violation::new(
            at.field(name),
            Rule::Negative,
            format!("{v} must not be negative"),
        ))
    }
}

fn enum_value<E: TryFrom<i32>>(at: At<'_>, name: &str, v: i32, enum_name: &str) -> Check {
    if E::try_from(v).is_ok() {
        Ok(())
    } else {
        Err(Violation::new(
            at.field(name),
            Rule::UnknownEnum,
            format!("{v} is not a known {enum_name}"),
        ))
    }
}

/// One dot-free segment: lowercase alphanumerics and `-`, starting and
/// ending alphanumeric (no length limit of its own).
fn is_segment(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// A DNS-1123 label: lowercase alphanumerics and `-`, starting and ending
/// alphanumeric, at most 63 characters (Kubernetes namespace names).
pub fn is_dns1123_label(s: &str) -> bool {
    s.len() <= 63 && is_segment(s)
}

/// A DNS-1123 subdomain as Kubernetes checks it: dot-separated segments of
/// lowercase alphanumerics and `-`, at most 253 characters in all (pod and
/// node names).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_segment)
}

fn name(at: At<'_>, field: &str, v: &str, required: bool, label: bool) -> Check {
    if v.is_empty() {
        return if required {
            Err(Violation::new(
                at.field(field),
                Rule::Missing,
                "is required",
            ))
        } else {
            Ok(())
        };
    }
    let (ok, what) = if label {
        (
            is_dns1123_label(v),
            "a DNS-1123 label (lowercase alphanumerics and '-', starting and ending alphanumeric, at most 63 characters)",
        )
    } else {
        (
            is_dns1123_subdomain(v),
            "a DNS-1123 subdomain (dot-separated lowercase labels, at most 253 characters)",
        )
    };
    if ok {
        Ok(())
    } else {
        let shown: String = v.chars().take(64).collect();
        Err(Violation::new(
            at.field(field),
            Rule::InvalidName,
            format!("{shown:?} is not {what}"),
        ))
    }
}

fn timestamp(at: At<'_>, field: &str, ts: Option<&Timestamp>, limits: &Limits) -> Check {
    let Some(ts) = ts else { return Ok(()) };
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(Violation::new(
            at.field(field),
            Rule::InvalidTimestamp,
            format!("nanos {} is outside 0-999999999", ts.nanos),
        ));
    }
    if !(MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS).contains(&ts.seconds) {
        return Err(Violation::new(
            at.field(field),
            Rule::InvalidTimestamp,
            format!("seconds {} is outside years 0001-9999", ts.seconds),
        ));
    }
    let now = match limits.now.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    };
    let t = ts.seconds as f64 + f64::from(ts.nanos) / 1e9;
    let ahead = t - now;
    if ahead > limits.max_future_skew.as_secs_f64() {
        return Err(Violation::new(
            at.field(field),
            Rule::FutureTimestamp,
            format!(
                "{} is {:.0} s in the future (allowed skew {} s)",
                ts.seconds,
                ahead,
                limits.max_future_skew.as_secs()
            ),
        ));
    }
    Ok(())
}

fn before(ts: Option<&Timestamp>) -> Option<(i64, i32)> {
    ts.map(|t| (t.seconds, t.nanos))
}

/// Validates a `WorkloadSignature` from the Insight-Trace sidecar.
pub fn workload_signature(sig: &WorkloadSignature, limits: &Limits) -> Check {
    use apollo_proto::{IoPattern, PipelineStage, WorkloadType};
    let at = At("");
    name(at, "pod_name", &sig.pod_name, true, false)?;
    name(at, "pod_namespace", &sig.pod_namespace, true, true)?;
    name(at, "node_name", &sig.node_name, false, false)?;
    enum_value::<WorkloadType>(at, "workload_type", sig.workload_type, "WorkloadType")?;
    enum_value::<PipelineStage>(at, "current_stage", sig.current_stage, "PipelineStage")?;
    enum_value::<IoPattern>(at, "io_pattern", sig.io_pattern, "IOPattern")?;
    ratio(at, "confidence", sig.confidence)?;
    count(at, "estimated_batch_size", sig.estimated_batch_size)?;
    if let Some(m) = &sig.current_metrics {
        resource_metrics(At("current_metrics"), m, limits)?;
    }
    if let Some(r) = &sig.storage_recommendation {
        storage_recommendation(At("storage_recommendation"), r)?;
    }
    if let Some(a) = &sig.argo_context {
        argo_context(At("argo_context"), a)?;
    }
    timestamp(at, "first_seen", sig.first_seen.as_ref(), limits)?;
    timestamp(at, "last_seen", sig.last_seen.as_ref(), limits)?;
    timestamp(at, "updated_at", sig.updated_at.as_ref(), limits)?;
    if let (Some(first), Some(last)) = (
        before(sig.first_seen.as_ref()),
        before(sig.last_seen.as_ref()),
    ) {
        if last < first {
            return Err(Violation::new(
                at.field("last_seen"),
                Rule::Inconsistent,
                format!("{} is before first_seen {}", last.0, first.0),
            ));
        }
    }
    if let Some(k) = &sig.kubeflow_info {
        kubeflow_info(At("kubeflow_info"), k)?;
    }
    if let Some(k) = &sig.kueue_info {
        kueue_info(At("kueue_info"), k)?;
    }
    if let Some(d) = &sig.data_locality {
        data_locality(At("data_locality"), d)?;
    }
    Ok(())
}

/// Validates a per-node `ClusterInsight`.
pub fn cluster_insight(ci: &ClusterInsight, limits: &Limits) -> Check {
    let at = At("");
    name(at, "node_name", &ci.node_name, true, false)?;
    if let Some(r) = &ci.node_resources {
        node_resources(At("node_resources"), r)?;
    }
    for (i, d) in ci.storage_devices.iter().enumerate() {
        storage_device(At(&at.item("storage_devices", i)), d)?;
    }
    for (i, w) in ci.running_workloads.iter().enumerate() {
        workload_summary(At(&at.item("running_workloads", i)), w)?;
    }
    for (i, d) in ci.csd_devices.iter().enumerate() {
        csd_status(At(&at.item("csd_devices", i)), d)?;
    }
    for (i, g) in ci.gpu_devices.iter().enumerate() {
        gpu_status(At(&at.item("gpu_devices", i)), g)?;
    }
    if let Some(n) = &ci.network_status {
        network_status(At("network_status"), n)?;
    }
    if let Some(s) = &ci.io_statistics {
        io_statistics(At("io_statistics"), s)?;
    }
    timestamp(at, "collected_at", ci.collected_at.as_ref(), limits)?;
    for (i, f) in ci.distributed_filesystems.iter().enumerate() {
        distributed_filesystem(At(&at.item("distributed_filesystems", i)), f)?;
    }
    for (i, q) in ci.cluster_queues.iter().enumerate() {
        cluster_queue(At(&at.item("cluster_queues", i)), q)?;
    }
    Ok(())
}

fn resource_metrics(at: At<'_>, m: &ResourceMetrics, limits: &Limits) -> Check {
    percent(at, "cpu_usage_percent", m.cpu_usage_percent)?;
    non_negative(at, "cpu_request_cores", m.cpu_request_cores)?;
    non_negative(at, "cpu_limit_cores", m.cpu_limit_cores)?;
    percent(at, "memory_usage_percent", m.memory_usage_percent)?;
    count(at, "memory_usage_bytes", m.memory_usage_bytes)?;
    count(at, "memory_request_bytes", m.memory_request_bytes)?;
    count(at, "memory_limit_bytes", m.memory_limit_bytes)?;
    count(at, "disk_read_bytes", m.disk_read_bytes)?;
    count(at, "disk_write_bytes", m.disk_write_bytes)?;
    count(at, "disk_read_iops", m.disk_read_iops)?;
    count(at, "disk_write_iops", m.disk_write_iops)?;
    non_negative(at, "disk_read_throughput_mbps", m.disk_read_throughput_mbps)?;
    non_negative(
        at,
        "disk_write_throughput_mbps",
        m.disk_write_throughput_mbps,
    )?;
    count(at, "network_rx_bytes", m.network_rx_bytes)?;
    count(at, "network_tx_bytes", m.network_tx_bytes)?;
    non_negative(
        at,
        "network_rx_throughput_mbps",
        m.network_rx_throughput_mbps,
    )?;
    non_negative(
        at,
        "network_tx_throughput_mbps",
        m.network_tx_throughput_mbps,
    )?;
    percent(at, "gpu_usage_percent", m.gpu_usage_percent)?;
    count(at, "gpu_memory_usage_bytes", m.gpu_memory_usage_bytes)?;
    count(at, "gpu_memory_total_bytes", m.gpu_memory_total_bytes)?;
    timestamp(at, "collected_at", m.collected_at.as_ref(), limits)
}

fn storage_recommendation(at: At<'_>, r: &StorageRecommendation) -> Check {
    enum_value::<apollo_proto::StorageClass>(
        at,
        "recommended_class",
        r.recommended_class,
        "StorageClass",
    )?;
    count(at, "recommended_iops", r.recommended_iops)?;
    count(
        at,
        "recommended_throughput_mbps",
        r.recommended_throughput_mbps,
    )
}

fn argo_context(at: At<'_>, a: &ArgoContext) -> Check {
    name(at, "workflow_namespace", &a.workflow_namespace, false, true)
}

fn kubeflow_info(at: At<'_>, k: &KubeflowInfo) -> Check {
    count(at, "parallelism", k.parallelism)?;
    count(at, "completions", k.completions)?;
    count(at, "backoff_limit", k.backoff_limit)?;
    count(at, "active_deadline_seconds", k.active_deadline_seconds)?;
    count(at, "replicas", k.replicas)?;
    count(at, "min_replicas", k.min_replicas)?;
    count(at, "max_replicas", k.max_replicas)?;
    non_negative(at, "cpu_request", k.cpu_request)?;
    count(at, "memory_request_bytes", k.memory_request_bytes)?;
    count(at, "gpu_request", k.gpu_request)?;
    count(at, "active_pods", k.active_pods)?;
    count(at, "succeeded_pods", k.succeeded_pods)?;
    count(at, "failed_pods", k.failed_pods)
}

fn kueue_info(at: At<'_>, k: &KueueInfo) -> Check {
    count(at, "pending_workloads", k.pending_workloads)?;
    count(at, "admitted_workloads", k.admitted_workloads)?;
    count(at, "reserved_workloads", k.reserved_workloads)?;
    non_negative(at, "nominal_cpu", k.nominal_cpu)?;
    count(at, "nominal_memory_bytes", k.nominal_memory_bytes)?;
    non_negative(at, "borrowing_limit_cpu", k.borrowing_limit_cpu)?;
    count(at, "borrowing_limit_memory", k.borrowing_limit_memory)?;
    for (i, a) in k.affinities.iter().enumerate() {
        let path = at.item("affinities", i);
        // Kubernetes affinity weights are 1-100; 0 means "not a preferred term".
        within(
            At(&path),
            "weight",
            f64::from(a.weight),
            0.0,
            100.0,
            "0-100",
        )?;
    }
    Ok(())
}

fn data_locality(at: At<'_>, d: &DataLocalityInfo) -> Check {
    ratio(at, "locality_score", d.locality_score)?;
    count(at, "data_size_bytes", d.data_size_bytes)?;
    non_negative(
        at,
        "estimated_transfer_time_ms",
        d.estimated_transfer_time_ms,
    )
}

fn node_resources(at: At<'_>, r: &NodeResources) -> Check {
    non_negative(at, "cpu_allocatable_cores", r.cpu_allocatable_cores)?;
    count(at, "memory_allocatable_bytes", r.memory_allocatable_bytes)?;
    count(at, "storage_allocatable_bytes", r.storage_allocatable_bytes)?;
    count(at, "gpu_allocatable", r.gpu_allocatable)?;
    non_negative(at, "cpu_used_cores", r.cpu_used_cores)?;
    count(at, "memory_used_bytes", r.memory_used_bytes)?;
    count(at, "storage_used_bytes", r.storage_used_bytes)?;
    count(at, "gpu_used", r.gpu_used)?;
    non_negative(at, "cpu_available_cores", r.cpu_available_cores)?;
    count(at, "memory_available_bytes", r.memory_available_bytes)?;
    count(at, "storage_available_bytes", r.storage_available_bytes)?;
    count(at, "gpu_available", r.gpu_available)?;
    non_negative(at, "cpu_requested_cores", r.cpu_requested_cores)?;
    count(at, "memory_requested_bytes", r.memory_requested_bytes)
}

fn storage_device(at: At<'_>, d: &StorageDeviceStatus) -> Check {
    count(at, "total_bytes", d.total_bytes)?;
    count(at, "used_bytes", d.used_bytes)?;
    count(at, "available_bytes", d.available_bytes)?;
    percent(at, "utilization_percent", d.utilization_percent)?;
    ratio(at, "health_score", d.health_score)?;
    count(at, "current_iops", d.current_iops)?;
    count(at, "max_iops", d.max_iops)?;
    non_negative(at, "current_throughput_mbps", d.current_throughput_mbps)?;
    non_negative(at, "max_throughput_mbps", d.max_throughput_mbps)
}

fn workload_summary(at: At<'_>, w: &WorkloadSummary) -> Check {
    use apollo_proto::{PipelineStage, WorkloadType};
    name(at, "pod_name", &w.pod_name, false, false)?;
    name(at, "pod_namespace", &w.pod_namespace, false, true)?;
    enum_value::<WorkloadType>(at, "workload_type", w.workload_type, "WorkloadType")?;
    enum_value::<PipelineStage>(at, "current_stage", w.current_stage, "PipelineStage")?;
    non_negative(at, "cpu_usage", w.cpu_usage)?;
    non_negative(at, "memory_usage", w.memory_usage)?;
    non_negative(at, "io_usage", w.io_usage)
}

fn csd_status(at: At<'_>, d: &CsdStatus) -> Check {
    ratio(at, "compute_utilization", d.compute_utilization)?;
    count(at, "memory_used_bytes", d.memory_used_bytes)?;
    count(at, "memory_total_bytes", d.memory_total_bytes)?;
    ratio(at, "health_score", d.health_score)
}

fn gpu_status(at: At<'_>, g: &GpuStatus) -> Check {
    percent(at, "utilization_percent", g.utilization_percent)?;
    count(at, "memory_used_bytes", g.memory_used_bytes)?;
    count(at, "memory_total_bytes", g.memory_total_bytes)?;
    finite(at, "temperature_celsius", g.temperature_celsius)?;
    non_negative(at, "power_usage_watts", g.power_usage_watts)?;
    within(
        at,
        "allocated_milli",
        f64::from(g.allocated_milli),
        0.0,
        1000.0,
        "0-1000",
    )
}

fn network_status(at: At<'_>, n: &NetworkStatus) -> Check {
    non_negative(at, "bandwidth_mbps", n.bandwidth_mbps)?;
    ratio(at, "current_utilization", n.current_utilization)?;
    non_negative(at, "latency_ms", n.latency_ms)?;
    count(at, "packets_rx", n.packets_rx)?;
    count(at, "packets_tx", n.packets_tx)?;
    count(at, "errors", n.errors)
}

fn io_statistics(at: At<'_>, s: &IoStatistics) -> Check {
    count(at, "total_read_bytes", s.total_read_bytes)?;
    count(at, "total_write_bytes", s.total_write_bytes)?;
    count(at, "total_read_ops", s.total_read_ops)?;
    count(at, "total_write_ops", s.total_write_ops)?;
    non_negative(at, "avg_read_latency_ms", s.avg_read_latency_ms)?;
    non_negative(at, "avg_write_latency_ms", s.avg_write_latency_ms)?;
    non_negative(at, "p99_read_latency_ms", s.p99_read_latency_ms)?;
    non_negative(at, "p99_write_latency_ms", s.p99_write_latency_ms)
}

fn distributed_filesystem(at: At<'_>, f: &DistributedFilesystemInfo) -> Check {
    count(at, "total_bytes", f.total_bytes)?;
    count(at, "available_bytes", f.available_bytes)?;
    percent(at, "utilization_percent", f.utilization_percent)?;
    non_negative(at, "latency_ms", f.latency_ms)?;
    non_negative(at, "throughput_mbps", f.throughput_mbps)
}

fn cluster_queue(at: At<'_>, q: &ClusterQueueStatus) -> Check {
    count(at, "pending_workloads", q.pending_workloads)?;
    count(at, "admitted_workloads", q.admitted_workloads)?;
    percent(at, "cpu_usage_percent", q.cpu_usage_percent)?;
    percent(at, "memory_usage_percent", q.memory_usage_percent)?;
    count(at, "total_local_queues", q.total_local_queues)
}

#[cfg(test)]
mod tests {
    use super::*;
    use apollo_proto::{
        ArgoContext, ClusterQueueStatus, CsdStatus, DataLocalityInfo, DistributedFilesystemInfo,
        GpuStatus, IoStatistics, KueueAffinity, KueueInfo, NetworkStatus, NodeResources,
        ResourceMetrics, StorageDeviceStatus, StorageRecommendation, WorkloadSummary,
    };

    const NOW: i64 = 1_750_000_000;

    fn limits() -> Limits {
        Limits {
            now: UNIX_EPOCH + Duration::from_secs(NOW as u64),
            max_future_skew: Duration::from_secs(300),
        }
    }

    fn ts(seconds: i64, nanos: i32) -> Option<Timestamp> {
        Some(Timestamp { seconds, nanos })
    }

    fn good_sig() -> WorkloadSignature {
        WorkloadSignature {
            pod_name: "trainer-0.shard".into(),
            pod_namespace: "ml".into(),
            node_name: "gpu-node-1".into(),
            workload_type: 1,
            current_stage: 3,
            io_pattern: 4,
            confidence: 0.9,
            estimated_batch_size: 64,
            current_metrics: Some(ResourceMetrics {
                cpu_usage_percent: 55.0,
                memory_usage_percent: 100.0,
                gpu_usage_percent: 0.0,
                memory_usage_bytes: 1 << 30,
                collected_at: ts(NOW - 10, 0),
                ..Default::default()
            }),
            storage_recommendation: Some(StorageRecommendation {
                recommended_class: 3,
                recommended_iops: 10_000,
                ..Default::default()
            }),
            argo_context: Some(ArgoContext {
                workflow_namespace: "argo".into(),
                ..Default::default()
            }),
            first_seen: ts(NOW - 600, 0),
            last_seen: ts(NOW, 999_999_999),
            updated_at: ts(NOW + 299, 0),
            kueue_info: Some(KueueInfo {
                priority: -10,
                affinities: vec![KueueAffinity {
                    weight: 100,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            data_locality: Some(DataLocalityInfo {
                locality_score: 1.0,
                data_size_bytes: 5,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn good_insight() -> ClusterInsight {
        ClusterInsight {
            node_name: "node-a.rack1".into(),
            node_resources: Some(NodeResources {
                cpu_allocatable_cores: 64.0,
                cpu_used_cores: 12.5,
                gpu_allocatable: 8,
                ..Default::default()
            }),
            storage_devices: vec![StorageDeviceStatus {
                utilization_percent: 40.0,
                health_score: 0.98,
                total_bytes: 1 << 40,
                ..Default::default()
            }],
            running_workloads: vec![WorkloadSummary {
                pod_name: "p".into(),
                pod_namespace: "ns".into(),
                workload_type: 7,
                current_stage: 8,
                cpu_usage: 2.0,
                ..Default::default()
            }],
            csd_devices: vec![CsdStatus {
                compute_utilization: 0.5,
                health_score: 1.0,
                ..Default::default()
            }],
            gpu_devices: vec![
                GpuStatus {
                    utilization_percent: 99.5,
                    allocated_milli: 1000,
                    temperature_celsius: -5.0,
                    ..Default::default()
                },
                GpuStatus::default(),
            ],
            network_status: Some(NetworkStatus {
                bandwidth_mbps: 25_000.0,
                current_utilization: 0.3,
                ..Default::default()
            }),
            io_statistics: Some(IoStatistics {
                total_read_bytes: 10,
                p99_read_latency_ms: 3.5,
                ..Default::default()
            }),
            collected_at: ts(NOW, 0),
            distributed_filesystems: vec![DistributedFilesystemInfo {
                utilization_percent: 12.0,
                ..Default::default()
            }],
            cluster_queues: vec![ClusterQueueStatus {
                cpu_usage_percent: 80.0,
                pending_workloads: 3,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn good_messages_pass() {
        assert_eq!(workload_signature(&good_sig(), &limits()), Ok(()));
        assert_eq!(cluster_insight(&good_insight(), &limits()), Ok(()));
        let minimal = WorkloadSignature {
            pod_name: "p".into(),
            pod_namespace: "n".into(),
            ..Default::default()
        };
        assert_eq!(workload_signature(&minimal, &limits()), Ok(()));
    }

    type SigCase = (&'static str, fn(&mut WorkloadSignature), &'static str, Rule);

    #[test]
    fn bad_workload_signatures_name_the_field() {
        let cases: Vec<SigCase> = vec![
            ("no pod", |s| s.pod_name.clear(), "pod_name", Rule::Missing),
            (
                "no ns",
                |s| s.pod_namespace.clear(),
                "pod_namespace",
                Rule::Missing,
            ),
            (
                "upper pod",
                |s| s.pod_name = "Trainer".into(),
                "pod_name",
                Rule::InvalidName,
            ),
            (
                "long pod",
                |s| s.pod_name = "a".repeat(254),
                "pod_name",
                Rule::InvalidName,
            ),
            (
                "dot ns",
                |s| s.pod_namespace = "a.b".into(),
                "pod_namespace",
                Rule::InvalidName,
            ),
            (
                "long ns",
                |s| s.pod_namespace = "a".repeat(64),
                "pod_namespace",
                Rule::InvalidName,
            ),
            (
                "dash ns",
                |s| s.pod_namespace = "-ml".into(),
                "pod_namespace",
                Rule::InvalidName,
            ),
            (
                "empty label",
                |s| s.pod_name = "a..b".into(),
                "pod_name",
                Rule::InvalidName,
            ),
            (
                "bad node",
                |s| s.node_name = "node_1".into(),
                "node_name",
                Rule::InvalidName,
            ),
            (
                "type",
                |s| s.workload_type = 8,
                "workload_type",
                Rule::UnknownEnum,
            ),
            (
                "stage",
                |s| s.current_stage = -1,
                "current_stage",
                Rule::UnknownEnum,
            ),
            ("io", |s| s.io_pattern = 7, "io_pattern", Rule::UnknownEnum),
            (
                "confidence",
                |s| s.confidence = 1.01,
                "confidence",
                Rule::OutOfRange,
            ),
            (
                "nan conf",
                |s| s.confidence = f64::NAN,
                "confidence",
                Rule::NotFinite,
            ),
            (
                "batch",
                |s| s.estimated_batch_size = -1,
                "estimated_batch_size",
                Rule::Negative,
            ),
            (
                "cpu",
                |s| s.current_metrics.as_mut().unwrap().cpu_usage_percent = 140.0,
                "current_metrics.cpu_usage_percent",
                Rule::OutOfRange,
            ),
            (
                "mem inf",
                |s| s.current_metrics.as_mut().unwrap().memory_usage_percent = f64::INFINITY,
                "current_metrics.memory_usage_percent",
                Rule::NotFinite,
            ),
            (
                "gpu neg",
                |s| s.current_metrics.as_mut().unwrap().gpu_usage_percent = -0.1,
                "current_metrics.gpu_usage_percent",
                Rule::OutOfRange,
            ),
            (
                "bytes",
                |s| s.current_metrics.as_mut().unwrap().network_rx_bytes = -5,
                "current_metrics.network_rx_bytes",
                Rule::Negative,
            ),
            (
                "metrics ts",
                |s| s.current_metrics.as_mut().unwrap().collected_at = ts(NOW, -1),
                "current_metrics.collected_at",
                Rule::InvalidTimestamp,
            ),
            (
                "class",
                |s| s.storage_recommendation.as_mut().unwrap().recommended_class = 6,
                "storage_recommendation.recommended_class",
                Rule::UnknownEnum,
            ),
            (
                "argo ns",
                |s| s.argo_context.as_mut().unwrap().workflow_namespace = "Argo".into(),
                "argo_context.workflow_namespace",
                Rule::InvalidName,
            ),
            (
                "future",
                |s| s.updated_at = ts(NOW + 301, 0),
                "updated_at",
                Rule::FutureTimestamp,
            ),
            (
                "nanos",
                |s| s.first_seen = ts(NOW, 1_000_000_000),
                "first_seen",
                Rule::InvalidTimestamp,
            ),
            (
                "year",
                |s| s.first_seen = ts(MAX_TIMESTAMP_SECONDS + 1, 0),
                "first_seen",
                Rule::InvalidTimestamp,
            ),
            (
                "order",
                |s| s.last_seen = ts(NOW - 601, 0),
                "last_seen",
                Rule::Inconsistent,
            ),
            (
                "kueue",
                |s| s.kueue_info.as_mut().unwrap().pending_workloads = -1,
                "kueue_info.pending_workloads",
                Rule::Negative,
            ),
            (
                "kueue weight",
                |s| s.kueue_info.as_mut().unwrap().affinities[0].weight = 101,
                "kueue_info.affinities[0].weight",
                Rule::OutOfRange,
            ),
            (
                "locality",
                |s| s.data_locality.as_mut().unwrap().locality_score = 2.0,
                "data_locality.locality_score",
                Rule::OutOfRange,
            ),
            (
                "kubeflow",
                |s| {
                    s.kubeflow_info = Some(apollo_proto::KubeflowInfo {
                        failed_pods: -2,
                        ..Default::default()
                    })
                },
                "kubeflow_info.failed_pods",
                Rule::Negative,
            ),
        ];
        for (name, mutate, path, rule) in cases {
            let mut sig = good_sig();
            mutate(&mut sig);
            let err = workload_signature(&sig, &limits())
                .expect_err(&format!("case {name:?} should be rejected"));
            assert_eq!(err.path, path, "case {name:?}: {err}");
            assert_eq!(err.rule, rule, "case {name:?}: {err}");
            assert!(err.to_string().starts_with(path), "case {name:?}: {err}");
        }
    }

    type InsightCase = (&'static str, fn(&mut ClusterInsight), &'static str, Rule);

    #[test]
    fn bad_cluster_insights_name_the_field() {
        let cases: Vec<InsightCase> = vec![
            (
                "no node",
                |c| c.node_name.clear(),
                "node_name",
                Rule::Missing,
            ),
            (
                "bad node",
                |c| c.node_name = "Node A".into(),
                "node_name",
                Rule::InvalidName,
            ),
            (
                "cores",
                |c| c.node_resources.as_mut().unwrap().cpu_used_cores = -1.0,
                "node_resources.cpu_used_cores",
                Rule::Negative,
            ),
            (
                "requested",
                |c| c.node_resources.as_mut().unwrap().memory_requested_bytes = -1,
                "node_resources.memory_requested_bytes",
                Rule::Negative,
            ),
            (
                "disk util",
                |c| c.storage_devices[0].utilization_percent = 100.5,
                "storage_devices[0].utilization_percent",
                Rule::OutOfRange,
            ),
            (
                "health",
                |c| c.storage_devices[0].health_score = 98.0,
                "storage_devices[0].health_score",
                Rule::OutOfRange,
            ),
            (
                "summary ns",
                |c| c.running_workloads[0].pod_namespace = "NS".into(),
                "running_workloads[0].pod_namespace",
                Rule::InvalidName,
            ),
            (
                "summary stage",
                |c| c.running_workloads[0].current_stage = 9,
                "running_workloads[0].current_stage",
                Rule::UnknownEnum,
            ),
            (
                "csd",
                |c| c.csd_devices[0].compute_utilization = 50.0,
                "csd_devices[0].compute_utilization",
                Rule::OutOfRange,
            ),
            (
                "gpu util",
                |c| c.gpu_devices[1].utilization_percent = 101.0,
                "gpu_devices[1].utilization_percent",
                Rule::OutOfRange,
            ),
            (
                "gpu milli",
                |c| c.gpu_devices[0].allocated_milli = 1001,
                "gpu_devices[0].allocated_milli",
                Rule::OutOfRange,
            ),
            (
                "gpu temp",
                |c| c.gpu_devices[0].temperature_celsius = f64::NAN,
                "gpu_devices[0].temperature_celsius",
                Rule::NotFinite,
            ),
            (
                "net",
                |c| c.network_status.as_mut().unwrap().current_utilization = 30.0,
                "network_status.current_utilization",
                Rule::OutOfRange,
            ),
            (
                "io",
                |c| c.io_statistics.as_mut().unwrap().total_write_ops = -1,
                "io_statistics.total_write_ops",
                Rule::Negative,
            ),
            (
                "collected",
                |c| c.collected_at = ts(NOW + 3600, 0),
                "collected_at",
                Rule::FutureTimestamp,
            ),
            (
                "dfs",
                |c| c.distributed_filesystems[0].utilization_percent = -3.0,
                "distributed_filesystems[0].utilization_percent",
                Rule::OutOfRange,
            ),
            (
                "queue",
                |c| c.cluster_queues[0].memory_usage_percent = 250.0,
                "cluster_queues[0].memory_usage_percent",
                Rule::OutOfRange,
            ),
        ];
        for (name, mutate, path, rule) in cases {
            let mut ci = good_insight();
            mutate(&mut ci);
            let err = cluster_insight(&ci, &limits())
                .expect_err(&format!("case {name:?} should be rejected"));
            assert_eq!(err.path, path, "case {name:?}: {err}");
            assert_eq!(err.rule, rule, "case {name:?}: {err}");
        }
    }

    #[test]
    fn messages_and_labels_are_precise() {
        let mut sig = good_sig();
        sig.current_metrics.as_mut().unwrap().cpu_usage_percent = 140.0;
        let err = workload_signature(&sig, &limits()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "current_metrics.cpu_usage_percent: 140 is outside 0-100"
        );
        let mut ci = good_insight();
        ci.gpu_devices[1].utilization_percent = 101.0;
        let err = cluster_insight(&ci, &limits()).unwrap_err();
        assert_eq!(err.label(), "gpu_devices.utilization_percent:out_of_range");
    }

    #[test]
    fn kubernetes_names() {
        for ok in ["a", "a-b", "0abc", "x.y-z.w", &"a".repeat(63)] {
            assert!(is_dns1123_subdomain(ok), "{ok}");
        }
        for bad in ["", "A", "a_b", "a.", ".a", "a-", "ü", &"a".repeat(254)] {
            assert!(!is_dns1123_subdomain(bad), "{bad}");
        }
        assert!(is_dns1123_subdomain(&"a".repeat(64)) && !is_dns1123_label(&"a".repeat(64)));
        assert!(is_dns1123_label("kube-system") && !is_dns1123_label("kube.system"));
    }
}
