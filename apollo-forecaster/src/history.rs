//! Per-node resource histories: extraction of utilisation and allocation
//! values from a `ClusterInsight`, and resampling onto a fixed step grid in
//! bounded ring buffers.
//!
//! # Resampling rules
//! - A sample's time is `collected_at`, else the stream publish time; a
//!   sample without either is rejected.
//! - Slot `k` covers `[k * step, (k + 1) * step)`; several samples in one
//!   slot are averaged. A sample with a timestamp already seen (one of the
//!   last 64 of the node) is a duplicate and ignored.
//! - Samples may arrive out of order: a late sample fills or joins its slot
//!   as long as the slot is still inside the window; older ones are rejected
//!   as `too_old`. Samples more than five minutes (or one step, if larger)
//!   ahead of the clock are rejected as `future`.
//! - When time advances by several slots, each series carries its last real
//!   value forward for up to `carry_forward` slots; slots after that hold a
//!   gap marker (NaN). Forecasts use the newest gap-free segment only, so a
//!   long outage starts the series afresh instead of inventing a line.
//! - NaN, infinite and negative raw values, and utilisations above 1000 %,
//!   are rejected per value (the rest of the insight is kept) and counted.
//! - Allocation series (requests / allocatable) start at the first insight
//!   that reports a non-zero request, since proto3 cannot tell "no requests"
//!   from "field not sent".

use std::collections::VecDeque;

use apollo_proto::ClusterInsight;

/// A forecast resource; every series is a percentage of capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    /// CPU: used cores / allocatable cores.
    Cpu = 0,
    /// Memory: used bytes / allocatable bytes.
    Memory = 1,
    /// GPU: mean `utilization_percent` over the node's GPUs.
    Gpu = 2,
    /// Storage: used / total bytes over the storage devices (else the node's
    /// storage fields); published as `io_usage`.
    Storage = 3,
    /// Network: `network_status.current_utilization`, a 0-1 ratio (as ingest
    /// validates it), kept as percent like every other series.
    Network = 4,
}

impl Resource {
    /// Number of resources.
    pub const COUNT: usize = 5;
    /// Every resource in index order.
    pub const ALL: [Resource; Self::COUNT] = [
        Resource::Cpu,
        Resource::Memory,
        Resource::Gpu,
        Resource::Storage,
        Resource::Network,
    ];

    /// Lowercase name used in flags, alerts and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Resource::Cpu => "cpu",
            Resource::Memory => "memory",
            Resource::Gpu => "gpu",
            Resource::Storage => "storage",
            Resource::Network => "network",
        }
    }

    /// Parses [`Resource::name`].
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.name() == s)
    }
}

/// A stored series: the utilisation of each resource plus the allocation
/// (requested share) of CPU, memory and GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SeriesKind {
    /// Utilisation of a resource, percent.
    Usage(Resource),
    /// Requested CPU cores / allocatable, percent.
    CpuAllocation,
    /// Requested memory / allocatable, percent.
    MemoryAllocation,
    /// Mean `allocated_milli` / 10 over the GPUs, percent.
    GpuAllocation,
}

impl SeriesKind {
    /// Number of series per node.
    pub const COUNT: usize = Resource::COUNT + 3;

    /// Dense index in `0..COUNT`.
    pub fn index(self) -> usize {
        match self {
            SeriesKind::Usage(r) => r as usize,
            SeriesKind::CpuAllocation => Resource::COUNT,
            SeriesKind::MemoryAllocation => Resource::COUNT + 1,
            SeriesKind::GpuAllocation => Resource::COUNT + 2,
        }
    }

    /// Inverse of [`SeriesKind::index`].
    pub fn from_index(i: usize) -> Option<Self> {
        Some(match i {
            i if i < Resource::COUNT => SeriesKind::Usage(Resource::ALL[i]),
            5 => SeriesKind::CpuAllocation,
            6 => SeriesKind::MemoryAllocation,
            7 => SeriesKind::GpuAllocation,
            _ => return None,
        })
    }

    /// Name for logs and metrics, e.g. `cpu` or `cpu_allocation`.
    pub fn name(self) -> &'static str {
        match self {
            SeriesKind::Usage(r) => r.name(),
            SeriesKind::CpuAllocation => "cpu_allocation",
            SeriesKind::MemoryAllocation => "memory_allocation",
            SeriesKind::GpuAllocation => "gpu_allocation",
        }
    }

    fn is_allocation(self) -> bool {
        !matches!(self, SeriesKind::Usage(_))
    }
}

/// Why one value of an insight was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueReject {
    /// A raw field was NaN or infinite.
    NonFinite,
    /// A raw field was negative.
    Negative,
    /// Usage reported against a zero capacity.
    ZeroCapacity,
    /// The resulting utilisation is implausible (above 1000 %).
    OutOfRange,
}

impl ValueReject {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ValueReject::NonFinite => "non_finite",
            ValueReject::Negative => "negative",
            ValueReject::ZeroCapacity => "zero_capacity",
            ValueReject::OutOfRange => "out_of_range",
        }
    }
}

/// Why a whole insight was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SampleReject {
    /// No `node_name`.
    MissingNode,
    /// Neither `collected_at` nor a publish time.
    MissingTimestamp,
    /// Seen already (same node and timestamp).
    Duplicate,
    /// Older than the window.
    TooOld,
    /// Too far in the future.
    Future,
}

impl SampleReject {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            SampleReject::MissingNode => "missing_node",
            SampleReject::MissingTimestamp => "missing_timestamp",
            SampleReject::Duplicate => "duplicate",
            SampleReject::TooOld => "too_old",
            SampleReject::Future => "future",
        }
    }
}

/// Latest capacity of a node, used to weight the cluster aggregate.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Capacity(pub [f64; Resource::COUNT]);

/// The values extracted from one insight.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Node name.
    pub node: String,
    /// Sample time, Unix milliseconds.
    pub ts_ms: i64,
    /// One optional value per [`SeriesKind`] index, percent.
    pub values: [Option<f64>; SeriesKind::COUNT],
    /// Capacity per resource (cores, bytes, GPUs, bytes, Mbit/s).
    pub capacity: Capacity,
    /// Values dropped, with the reason.
    pub rejected: Vec<(SeriesKind, ValueReject)>,
}

fn timestamp_ms(ts: &apollo_proto::Timestamp) -> Option<i64> {
    if ts.seconds == 0 && ts.nanos == 0 {
        return None;
    }
    ts.seconds
        .checked_mul(1000)?
        .checked_add(i64::from(ts.nanos) / 1_000_000)
}

fn check(raw: &[f64]) -> Result<(), ValueReject> {
    if raw.iter().any(|v| !v.is_finite()) {
        return Err(ValueReject::NonFinite);
    }
    if raw.iter().any(|v| *v < 0.0) {
        return Err(ValueReject::Negative);
    }
    Ok(())
}

/// `used / capacity` in percent; `None` when nothing is reported.
fn ratio(used: f64, cap: f64) -> Option<Result<f64, ValueReject>> {
    if let Err(e) = check(&[used, cap]) {
        return Some(Err(e));
    }
    if cap == 0.0 {
        return (used > 0.0).then_some(Err(ValueReject::ZeroCapacity));
    }
    Some(Ok(100.0 * used / cap))
}

fn mean(xs: impl Iterator<Item = f64>) -> Option<Result<f64, ValueReject>> {
    let v: Vec<f64> = xs.collect();
    if v.is_empty() {
        return None;
    }
    if let Err(e) = check(&v) {
        return Some(Err(e));
    }
    Some(Ok(v.iter().sum::<f64>() / v.len() as f64))
}

/// Extracts a sample; `publish_ms` is the stream publish time, used when the
/// insight carries no `collected_at`.
pub fn extract(insight: &ClusterInsight, publish_ms: Option<i64>) -> Result<Sample, SampleReject> {
    if insight.node_name.trim().is_empty() {
        return Err(SampleReject::MissingNode);
    }
    let ts_ms = insight
        .collected_at
        .as_ref()
        .and_then(timestamp_ms)
        .or(publish_ms)
        .ok_or(SampleReject::MissingTimestamp)?;
    let mut values: [Option<Result<f64, ValueReject>>; SeriesKind::COUNT] = Default::default();
    let mut capacity = Capacity::default();
    if let Some(nr) = &insight.node_resources {
        let mem_cap = nr.memory_allocatable_bytes as f64;
        values[SeriesKind::Usage(Resource::Cpu).index()] =
            ratio(nr.cpu_used_cores, nr.cpu_allocatable_cores);
        values[SeriesKind::Usage(Resource::Memory).index()] =
            ratio(nr.memory_used_bytes as f64, mem_cap);
        values[SeriesKind::CpuAllocation.index()] =
            ratio(nr.cpu_requested_cores, nr.cpu_allocatable_cores);
        values[SeriesKind::MemoryAllocation.index()] =
            ratio(nr.memory_requested_bytes as f64, mem_cap);
        capacity.0[Resource::Cpu as usize] = nr.cpu_allocatable_cores.max(0.0);
        capacity.0[Resource::Memory as usize] = mem_cap.max(0.0);
        capacity.0[Resource::Storage as usize] = (nr.storage_allocatable_bytes as f64).max(0.0);
        capacity.0[Resource::Gpu as usize] = f64::from(nr.gpu_allocatable.max(0));
    }
    if !insight.gpu_devices.is_empty() {
        values[SeriesKind::Usage(Resource::Gpu).index()] =
            mean(insight.gpu_devices.iter().map(|g| g.utilization_percent));
        values[SeriesKind::GpuAllocation.index()] = mean(
            insight
                .gpu_devices
                .iter()
                .map(|g| f64::from(g.allocated_milli) / 10.0),
        );
        if capacity.0[Resource::Gpu as usize] == 0.0 {
            capacity.0[Resource::Gpu as usize] = insight.gpu_devices.len() as f64;
        }
    }
    let devices: Vec<_> = insight
        .storage_devices
        .iter()
        .filter(|d| d.total_bytes != 0 || d.used_bytes != 0)
        .collect();
    if !devices.is_empty() {
        let used: f64 = devices.iter().map(|d| d.used_bytes as f64).sum();
        let total: f64 = devices.iter().map(|d| d.total_bytes as f64).sum();
        let any_negative = devices
            .iter()
            .any(|d| d.used_bytes < 0 || d.total_bytes < 0);
        values[SeriesKind::Usage(Resource::Storage).index()] = if any_negative {
            Some(Err(ValueReject::Negative))
        } else {
            capacity.0[Resource::Storage as usize] = total;
            ratio(used, total)
        };
    } else if let Some(nr) = &insight.node_resources {
        values[SeriesKind::Usage(Resource::Storage).index()] = ratio(
            nr.storage_used_bytes as f64,
            nr.storage_allocatable_bytes as f64,
        );
    }
    if let Some(net) = &insight.network_status {
        values[SeriesKind::Usage(Resource::Network).index()] = ratio(net.current_utilization, 1.0);
        capacity.0[Resource::Network as usize] = if net.bandwidth_mbps.is_finite() {
            net.bandwidth_mbps.max(0.0)
        } else {
            0.0
        };
    }
    let mut out = [None; SeriesKind::COUNT];
    let mut rejected = Vec::new();
    for (i, v) in values.into_iter().enumerate() {
        let Some(kind) = SeriesKind::from_index(i) else {
            continue;
        };
        match v {
            Some(Ok(x)) if x > 1000.0 => rejected.push((kind, ValueReject::OutOfRange)),
            Some(Ok(x)) => out[i] = Some(x),
            Some(Err(e)) => rejected.push((kind, e)),
            None => {}
        }
    }
    Ok(Sample {
        node: insight.node_name.clone(),
        ts_ms,
        values: out,
        capacity,
        rejected,
    })
}

/// Resampling settings shared by every node.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GridConfig {
    /// Step, milliseconds.
    pub step_ms: i64,
    /// Points per series.
    pub capacity: usize,
    /// Slots filled with the last value before a gap is marked.
    pub carry_forward: u32,
}

impl GridConfig {
    fn future_tolerance_ms(&self) -> i64 {
        self.step_ms.max(300_000)
    }
}

/// One resampled series: values (NaN = gap) and samples per slot (0 =
/// filled, not observed).
#[derive(Debug, Clone, Default)]
struct Series {
    values: VecDeque<f32>,
    counts: VecDeque<u8>,
    last_real: f32,
    last_real_slot: i64,
}

impl Series {
    /// Appends one slot without an observation.
    fn advance(&mut self, slot: i64, cfg: &GridConfig) {
        let since = slot - self.last_real_slot;
        let v = if since <= i64::from(cfg.carry_forward) {
            self.last_real
        } else {
            f32::NAN
        };
        self.values.push_back(v);
        self.counts.push_back(0);
    }

    /// Records `v` at `offset` slots before the newest slot.
    fn set(&mut self, offset: usize, slot: i64, v: f64, cfg: &GridConfig) {
        while self.values.len() <= offset {
            self.values.push_front(f32::NAN);
            self.counts.push_front(0);
        }
        let idx = self.values.len() - 1 - offset;
        let c = self.counts[idx];
        let new = if c == 0 {
            v as f32
        } else {
            ((f64::from(self.values[idx]) * f64::from(c) + v) / (f64::from(c) + 1.0)) as f32
        };
        self.values[idx] = new;
        self.counts[idx] = c.saturating_add(1);
        if slot >= self.last_real_slot || self.last_real.is_nan() {
            self.last_real = new;
            self.last_real_slot = slot;
            // Re-carry the newer value over the slots after it.
            for k in 1..=offset.min(cfg.carry_forward as usize) {
                let j = idx + k;
                if self.counts[j] == 0 {
                    self.values[j] = new;
                }
            }
        }
        while self.values.len() > cfg.capacity {
            self.values.pop_front();
            self.counts.pop_front();
        }
    }

    /// The newest gap-free segment.
    fn segment(&self) -> impl Iterator<Item = f64> + '_ {
        let start = self
            .values
            .iter()
            .rposition(|v| v.is_nan())
            .map_or(0, |i| i + 1);
        self.values.range(start..).map(|v| f64::from(*v))
    }
}

/// The history of one node.
#[derive(Debug, Clone)]
pub struct NodeHistory {
    last_slot: Option<i64>,
    newest_ts_ms: i64,
    recent: VecDeque<i64>,
    series: [Option<Series>; SeriesKind::COUNT],
    capacity: Capacity,
}

impl Default for NodeHistory {
    fn default() -> Self {
        Self::new()
    }
}

const RECENT_TS: usize = 64;

impl NodeHistory {
    /// An empty history.
    pub fn new() -> Self {
        Self {
            last_slot: None,
            newest_ts_ms: i64::MIN,
            recent: VecDeque::with_capacity(RECENT_TS),
            series: Default::default(),
            capacity: Capacity::default(),
        }
    }

    /// Stores a sample; returns how many values were recorded.
    pub fn apply(
        &mut self,
        sample: &Sample,
        now_ms: i64,
        cfg: &GridConfig,
    ) -> Result<usize, SampleReject> {
        if self.recent.contains(&sample.ts_ms) {
            return Err(SampleReject::Duplicate);
        }
        if sample.ts_ms > now_ms.saturating_add(cfg.future_tolerance_ms()) {
            return Err(SampleReject::Future);
        }
        let slot = sample.ts_ms.div_euclid(cfg.step_ms);
        let cap = cfg.capacity as i64;
        let last = match self.last_slot {
            None => slot,
            Some(last) if slot > last => {
                if slot - last >= cap {
                    // Everything stored is older than the window.
                    for s in self.series.iter_mut().flatten() {
                        s.values.clear();
                        s.counts.clear();
                    }
                } else {
                    for s in self.series.iter_mut().flatten() {
                        for k in last + 1..=slot {
                            s.advance(k, cfg);
                        }
                        while s.values.len() > cfg.capacity {
                            s.values.pop_front();
                            s.counts.pop_front();
                        }
                    }
                }
                slot
            }
            Some(last) if last - slot >= cap => return Err(SampleReject::TooOld),
            Some(last) => last,
        };
        self.last_slot = Some(last);
        let offset = (last - slot) as usize;
        let mut applied = 0;
        for (i, v) in sample.values.iter().enumerate() {
            let Some(v) = *v else { continue };
            let Some(kind) = SeriesKind::from_index(i) else {
                continue;
            };
            if self.series[i].is_none() {
                if kind.is_allocation() && v == 0.0 {
                    continue;
                }
                self.series[i] = Some(Series {
                    last_real: f32::NAN,
                    last_real_slot: i64::MIN / 2,
                    ..Series::default()
                });
            }
            if let Some(s) = self.series[i].as_mut() {
                s.set(offset, slot, v, cfg);
                applied += 1;
            }
        }
        if sample.ts_ms > self.newest_ts_ms {
            self.newest_ts_ms = sample.ts_ms;
            self.capacity = sample.capacity;
        }
        if self.recent.len() == RECENT_TS {
            self.recent.pop_front();
        }
        self.recent.push_back(sample.ts_ms);
        Ok(applied)
    }

    /// Time of the newest sample, Unix milliseconds.
    pub fn newest_ts_ms(&self) -> i64 {
        self.newest_ts_ms
    }

    /// Start of the newest slot, Unix milliseconds.
    pub fn last_slot_ms(&self, cfg: &GridConfig) -> Option<i64> {
        self.last_slot.map(|s| s * cfg.step_ms)
    }

    /// Latest capacity.
    pub fn capacity(&self) -> Capacity {
        self.capacity
    }

    /// Whether the node has a series of this kind.
    pub fn has(&self, kind: SeriesKind) -> bool {
        self.series[kind.index()].is_some()
    }

    /// Slots stored for a series (observed, carried and gaps).
    pub fn len(&self, kind: SeriesKind) -> usize {
        self.series[kind.index()]
            .as_ref()
            .map_or(0, |s| s.values.len())
    }

    /// Whether no series holds any slot.
    pub fn is_empty(&self) -> bool {
        self.series.iter().flatten().all(|s| s.values.is_empty())
    }

    /// The newest gap-free segment of a series, oldest first, into `out`.
    pub fn segment_into(&self, kind: SeriesKind, out: &mut Vec<f64>) {
        out.clear();
        if let Some(s) = &self.series[kind.index()] {
            out.extend(s.segment());
        }
    }

    /// The newest gap-free segment of a series, oldest first.
    pub fn segment(&self, kind: SeriesKind) -> Vec<f64> {
        let mut v = Vec::new();
        self.segment_into(kind, &mut v);
        v
    }

    /// Number of series stored.
    pub fn series_count(&self) -> usize {
        self.series.iter().flatten().count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apollo_proto::{GpuStatus, NetworkStatus, NodeResources, Timestamp};

    const CFG: GridConfig = GridConfig {
        step_ms: 1000,
        capacity: 100,
        carry_forward: 2,
    };
    const NOW: i64 = 1_000_000;
    const CPU: SeriesKind = SeriesKind::Usage(Resource::Cpu);

    fn insight(cpu_used: f64, ts_ms: i64) -> ClusterInsight {
        ClusterInsight {
            node_name: "n1".into(),
            node_resources: Some(NodeResources {
                cpu_used_cores: cpu_used,
                cpu_allocatable_cores: 10.0,
                memory_used_bytes: 50,
                memory_allocatable_bytes: 100,
                ..Default::default()
            }),
            collected_at: Some(Timestamp {
                seconds: ts_ms.div_euclid(1000),
                nanos: (ts_ms.rem_euclid(1000) * 1_000_000) as i32,
            }),
            ..Default::default()
        }
    }

    fn apply(h: &mut NodeHistory, cpu: f64, ts: i64) -> Result<usize, SampleReject> {
        let s = extract(&insight(cpu, ts), None).unwrap();
        h.apply(&s, NOW, &CFG)
    }

    #[test]
    fn network_utilisation_ratio_becomes_percent() {
        let mut i = insight(5.0, NOW);
        i.network_status = Some(NetworkStatus {
            current_utilization: 0.3,
            bandwidth_mbps: 10_000.0,
            ..Default::default()
        });
        let s = extract(&i, None).unwrap();
        let net = s.values[SeriesKind::Usage(Resource::Network).index()].unwrap();
        assert!((net - 30.0).abs() < 1e-9, "{net}");
    }

    #[test]
    fn extracts_percentages_and_rejects_bad_values() {
        let mut i = insight(5.0, NOW);
        i.gpu_devices = vec![
            GpuStatus {
                utilization_percent: 20.0,
                allocated_milli: 500,
                ..Default::default()
            },
            GpuStatus {
                utilization_percent: 40.0,
                allocated_milli: 1000,
                ..Default::default()
            },
        ];
        i.network_status = Some(NetworkStatus {
            current_utilization: f64::INFINITY,
            ..Default::default()
        });
        let s = extract(&i, None).unwrap();
        assert_eq!(s.values[CPU.index()], Some(50.0));
        assert_eq!(
            s.values[SeriesKind::Usage(Resource::Memory).index()],
            Some(50.0)
        );
        assert_eq!(
            s.values[SeriesKind::Usage(Resource::Gpu).index()],
            Some(30.0)
        );
        assert_eq!(s.values[SeriesKind::GpuAllocation.index()], Some(75.0));
        assert_eq!(s.values[SeriesKind::Usage(Resource::Network).index()], None);
        assert_eq!(
            s.rejected,
            vec![(SeriesKind::Usage(Resource::Network), ValueReject::NonFinite)]
        );

        let s = extract(&insight(f64::NAN, NOW), None).unwrap();
        assert_eq!(s.values[CPU.index()], None);
        assert_eq!(s.rejected, vec![(CPU, ValueReject::NonFinite)]);
        let s = extract(&insight(-1.0, NOW), None).unwrap();
        assert_eq!(s.rejected, vec![(CPU, ValueReject::Negative)]);
        let s = extract(&insight(1000.0, NOW), None).unwrap();
        assert_eq!(s.rejected, vec![(CPU, ValueReject::OutOfRange)]);
        let mut z = insight(1.0, NOW);
        if let Some(nr) = z.node_resources.as_mut() {
            nr.cpu_allocatable_cores = 0.0;
        }
        let s = extract(&z, None).unwrap();
        assert_eq!(s.rejected, vec![(CPU, ValueReject::ZeroCapacity)]);
    }

    #[test]
    fn whole_insights_without_node_or_time_are_rejected() {
        let mut i = insight(1.0, NOW);
        i.collected_at = None;
        assert_eq!(extract(&i, None), Err(SampleReject::MissingTimestamp));
        assert_eq!(extract(&i, Some(42)).unwrap().ts_ms, 42);
        i.node_name = " ".into();
        assert_eq!(extract(&i, Some(42)), Err(SampleReject::MissingNode));
    }

    #[test]
    fn out_of_order_and_duplicates() {
        let mut h = NodeHistory::new();
        apply(&mut h, 1.0, 10_000).unwrap();
        apply(&mut h, 3.0, 12_000).unwrap();
        // Late sample fills the carried slot 11.
        apply(&mut h, 2.0, 11_000).unwrap();
        assert_eq!(h.segment(CPU), vec![10.0, 20.0, 30.0]);
        assert_eq!(apply(&mut h, 9.0, 11_000), Err(SampleReject::Duplicate));
        // A second sample in the same slot is averaged.
        apply(&mut h, 5.0, 12_500).unwrap();
        assert_eq!(h.segment(CPU), vec![10.0, 20.0, 40.0]);
        assert_eq!(
            apply(&mut h, 1.0, NOW + 3_600_000),
            Err(SampleReject::Future)
        );
        assert_eq!(h.len(CPU), 3);
    }

    #[test]
    fn gaps_carry_then_break_the_segment() {
        let mut h = NodeHistory::new();
        apply(&mut h, 1.0, 10_000).unwrap();
        apply(&mut h, 2.0, 12_000).unwrap();
        // Slot 11 carried.
        assert_eq!(h.segment(CPU), vec![10.0, 10.0, 20.0]);
        // Four missing slots: two carried, two gaps.
        apply(&mut h, 3.0, 17_000).unwrap();
        assert_eq!(h.len(CPU), 8);
        assert_eq!(h.segment(CPU), vec![30.0]);
        // A late sample inside the gap is accepted, not re-joining the older part.
        apply(&mut h, 4.0, 16_000).unwrap();
        assert_eq!(h.segment(CPU), vec![40.0, 30.0]);
    }

    #[test]
    fn window_is_bounded_and_old_samples_rejected() {
        let mut h = NodeHistory::new();
        for k in 0..250 {
            apply(&mut h, 5.0, 100_000 + k * 1000).unwrap();
        }
        assert_eq!(h.len(CPU), CFG.capacity);
        assert_eq!(h.segment(CPU).len(), CFG.capacity);
        assert_eq!(apply(&mut h, 5.0, 100_000), Err(SampleReject::TooOld));
        // A jump beyond the window restarts the series.
        apply(&mut h, 7.0, 900_000).unwrap();
        assert_eq!(h.segment(CPU), vec![70.0]);
    }

    #[test]
    fn allocation_starts_at_first_nonzero_request() {
        let mut h = NodeHistory::new();
        apply(&mut h, 1.0, 10_000).unwrap();
        assert!(!h.has(SeriesKind::CpuAllocation));
        let mut i = insight(1.0, 11_000);
        if let Some(nr) = i.node_resources.as_mut() {
            nr.cpu_requested_cores = 2.5;
        }
        h.apply(&extract(&i, None).unwrap(), NOW, &CFG).unwrap();
        assert_eq!(h.segment(SeriesKind::CpuAllocation), vec![25.0]);
        apply(&mut h, 1.0, 12_000).unwrap();
        assert_eq!(h.segment(SeriesKind::CpuAllocation), vec![25.0, 0.0]);
    }

    #[test]
    fn arbitrary_garbage_never_panics() {
        let mut h = NodeHistory::new();
        for (k, v) in [
            f64::NAN,
            f64::INFINITY,
            -1e300,
            1e300,
            0.0,
            f64::MIN_POSITIVE,
        ]
        .iter()
        .enumerate()
        {
            for ts in [i64::MIN, -5, 0, i64::MAX, 10_000 + k as i64] {
                let mut i = insight(*v, 0);
                i.collected_at = Some(Timestamp {
                    seconds: ts,
                    nanos: -7,
                });
                if let Ok(s) = extract(&i, Some(ts)) {
                    let _ = h.apply(&s, NOW, &CFG);
                }
            }
        }
        assert!(h.segment(CPU).iter().all(|v| v.is_finite()));
    }
}
