//! Reading exporter scrapes (Prometheus text exposition format, parsed with
//! `prometheus-parse`) into GPU and host telemetry.
//!
//! DCGM exporter: `DCGM_FI_DEV_GPU_UTIL` (%), `DCGM_FI_DEV_FB_USED` /
//! `DCGM_FI_DEV_FB_FREE` (MiB), `DCGM_FI_DEV_GPU_TEMP` (C),
//! `DCGM_FI_DEV_POWER_USAGE` (W), one series per GPU labelled `gpu`, `UUID`,
//! `modelName`.
//!
//! node-exporter: `node_disk_{read_bytes,written_bytes,reads_completed,
//! writes_completed,io_time_seconds}_total` per disk, `node_filesystem_{size,
//! avail}_bytes` per mount, `node_network_{receive,transmit}_{bytes,packets,
//! errs}_total` and `node_network_speed_bytes` per interface. Counters become
//! rates between two scrapes.
//!
//! Bad data never becomes a number: a NaN/Inf or negative value, a line that
//! does not parse, a HELP text declaring another unit than the documented
//! one, or a counter that went backwards (exporter restart) is counted as a
//! [`Problem`] and the affected figure is left out.

use std::collections::{BTreeMap, HashMap};

use apollo_proto::{IoStatistics, NetworkStatus, StorageDeviceStatus};
use prometheus_parse::{LineInfo, Scrape, Value};

use super::aggregate::{GpuTelemetry, HostTelemetry};

/// Bytes in one MiB (DCGM framebuffer unit).
const MIB: f64 = 1024.0 * 1024.0;

/// A data problem found while reading a scrape; `reason` has bounded
/// cardinality for a metric label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `malformed_line`, `not_finite`, `negative`, `unknown_unit`,
    /// `missing_metric`, `counter_reset`.
    pub reason: &'static str,
    /// Metric (or line) concerned.
    pub detail: String,
}

fn problem(reason: &'static str, detail: impl Into<String>) -> Problem {
    Problem {
        reason,
        detail: detail.into(),
    }
}

/// Parses exposition text, counting lines the parser skipped.
fn parse_text(text: &str, problems: &mut Vec<Problem>) -> Scrape {
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        match LineInfo::parse(trimmed) {
            LineInfo::Sample { value, .. } => {
                let v = value.to_ascii_lowercase();
                if v != "nan" && v.parse::<f64>().is_err() {
                    problems.push(problem("malformed_line", truncate(trimmed)));
                }
            }
            _ => problems.push(problem("malformed_line", truncate(trimmed))),
        }
    }
    let lines = text.lines().map(|l| Ok(l.to_string()));
    Scrape::parse(lines).unwrap_or_else(|_| Scrape {
        docs: HashMap::new(),
        samples: Vec::new(),
    })
}

fn truncate(s: &str) -> String {
    s.chars().take(120).collect()
}

fn scalar(v: &Value) -> Option<f64> {
    match v {
        Value::Counter(x) | Value::Gauge(x) | Value::Untyped(x) => Some(*x),
        Value::Histogram(_) | Value::Summary(_) => None,
    }
}

/// Checks a HELP text against the documented unit: `(in MiB)` style
/// declarations (DCGM) must name `unit`; no declaration is accepted.
fn unit_ok(docs: &HashMap<String, String>, metric: &str, unit: &str) -> bool {
    let Some(help) = docs.get(metric) else {
        return true;
    };
    let Some(start) = help.find("(in ") else {
        return true;
    };
    let rest = &help[start + 4..];
    let declared = rest.split(')').next().unwrap_or("").trim();
    declared.eq_ignore_ascii_case(unit)
}

/// A finite, non-negative value or a counted problem.
fn clean(metric: &str, v: f64, problems: &mut Vec<Problem>) -> Option<f64> {
    if !v.is_finite() {
        problems.push(problem("not_finite", metric));
        None
    } else if v < 0.0 {
        problems.push(problem("negative", metric));
        None
    } else {
        Some(v)
    }
}

/// DCGM metrics read, with their documented units.
const DCGM_METRICS: [(&str, &str); 5] = [
    ("DCGM_FI_DEV_GPU_UTIL", "%"),
    ("DCGM_FI_DEV_FB_USED", "MiB"),
    ("DCGM_FI_DEV_FB_FREE", "MiB"),
    ("DCGM_FI_DEV_GPU_TEMP", "C"),
    ("DCGM_FI_DEV_POWER_USAGE", "W"),
];

/// Largest framebuffer reading taken, bytes (2^62).
const MAX_GPU_MEMORY_BYTES: f64 = 4_611_686_018_427_387_904.0;

/// Reads a dcgm-exporter scrape into per-GPU telemetry (sorted by index).
pub fn parse_dcgm(text: &str, problems: &mut Vec<Problem>) -> Vec<GpuTelemetry> {
    let scrape = parse_text(text, problems);
    let mut gpus: BTreeMap<u32, GpuTelemetry> = BTreeMap::new();
    let mut fb_free: BTreeMap<u32, f64> = BTreeMap::new();
    let mut bad_unit = [false; DCGM_METRICS.len()];
    for (i, (metric, unit)) in DCGM_METRICS.iter().enumerate() {
        if !unit_ok(&scrape.docs, metric, unit) {
            bad_unit[i] = true;
            problems.push(problem("unknown_unit", *metric));
        }
    }
    let mut seen = [false; DCGM_METRICS.len()];
    for s in &scrape.samples {
        let Some(which) = DCGM_METRICS.iter().position(|(m, _)| *m == s.metric) else {
            continue;
        };
        seen[which] = true;
        let Some(index) = s.labels.get("gpu").and_then(|g| g.parse::<u32>().ok()) else {
            problems.push(problem(
                "malformed_line",
                format!("{} without gpu label", s.metric),
            ));
            continue;
        };
        let gpu = gpus.entry(index).or_insert_with(|| GpuTelemetry {
            index,
            ..Default::default()
        });
        if let Some(uuid) = s.labels.get("UUID") {
            gpu.uuid = uuid.to_string();
        }
        if let Some(model) = s.labels.get("modelName") {
            gpu.model = model.to_string();
        }
        if bad_unit[which] {
            continue;
        }
        let Some(v) = scalar(&s.value).and_then(|v| clean(&s.metric, v, problems)) else {
            continue;
        };
        match which {
            0 => {
                if v <= 100.0 {
                    gpu.utilization_percent = Some(v);
                } else {
                    problems.push(problem("out_of_range", s.metric.as_str()));
                }
            }
            // Bytes must fit an i64 with room for used + free: beyond 2^62
            // (4 EiB) a reading is nonsense, not a GPU.
            1 if v * MIB < MAX_GPU_MEMORY_BYTES => gpu.memory_used_bytes = Some((v * MIB) as i64),
            2 if v * MIB < MAX_GPU_MEMORY_BYTES => {
                fb_free.insert(index, v * MIB);
            }
            1 | 2 => problems.push(problem("out_of_range", s.metric.as_str())),
            3 => gpu.temperature_celsius = Some(v),
            _ => gpu.power_watts = Some(v),
        }
    }
    for (i, (metric, _)) in DCGM_METRICS.iter().enumerate() {
        if !seen[i] {
            problems.push(problem("missing_metric", *metric));
        }
    }
    for (index, free) in fb_free {
        if let Some(gpu) = gpus.get_mut(&index) {
            if let Some(used) = gpu.memory_used_bytes {
                gpu.memory_total_bytes = Some(used + free as i64);
            }
        }
    }
    gpus.into_values().collect()
}

/// Cumulative counters of one disk.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DiskCounters {
    /// Bytes read.
    pub read_bytes: Option<f64>,
    /// Bytes written.
    pub written_bytes: Option<f64>,
    /// Reads completed.
    pub reads: Option<f64>,
    /// Writes completed.
    pub writes: Option<f64>,
    /// Seconds spent doing I/O.
    pub io_time_seconds: Option<f64>,
}

/// Cumulative counters of one network interface.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct NetCounters {
    /// Bytes received.
    pub rx_bytes: Option<f64>,
    /// Bytes sent.
    pub tx_bytes: Option<f64>,
    /// Packets received.
    pub rx_packets: Option<f64>,
    /// Packets sent.
    pub tx_packets: Option<f64>,
    /// Receive plus transmit errors.
    pub errors: Option<f64>,
    /// Link speed in bytes per second.
    pub speed_bytes: Option<f64>,
}

/// One filesystem.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Filesystem {
    /// `device` label.
    pub device: String,
    /// `fstype` label.
    pub fstype: String,
    /// `mountpoint` label.
    pub mountpoint: String,
    /// Size in bytes.
    pub size_bytes: f64,
    /// Available bytes.
    pub avail_bytes: f64,
}

/// One node-exporter scrape.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HostSample {
    /// Disks by device name.
    pub disks: BTreeMap<String, DiskCounters>,
    /// Interfaces by device name (loopback excluded).
    pub nets: BTreeMap<String, NetCounters>,
    /// Real filesystems (pseudo filesystems excluded).
    pub filesystems: Vec<Filesystem>,
}

const PSEUDO_FS: [&str; 9] = [
    "tmpfs", "devtmpfs", "overlay", "proc", "sysfs", "cgroup", "cgroup2", "squashfs", "nsfs",
];

/// Reads a node-exporter scrape.
pub fn parse_node_exporter(text: &str, problems: &mut Vec<Problem>) -> HostSample {
    let scrape = parse_text(text, problems);
    let mut out = HostSample::default();
    let mut fs: BTreeMap<(String, String), Filesystem> = BTreeMap::new();
    let mut saw_disk = false;
    let mut saw_net = false;
    for s in &scrape.samples {
        let m = s.metric.as_str();
        let interesting = m.starts_with("node_disk_")
            || m.starts_with("node_network_")
            || m.starts_with("node_filesystem_");
        if !interesting {
            continue;
        }
        let Some(v) = scalar(&s.value).and_then(|v| clean(m, v, problems)) else {
            continue;
        };
        let device = s.labels.get("device").unwrap_or("").to_string();
        match m {
            "node_disk_read_bytes_total"
            | "node_disk_written_bytes_total"
            | "node_disk_reads_completed_total"
            | "node_disk_writes_completed_total"
            | "node_disk_io_time_seconds_total" => {
                if device.starts_with("loop") || device.starts_with("ram") {
                    continue;
                }
                saw_disk = true;
                let d = out.disks.entry(device).or_default();
                let slot = match m {
                    "node_disk_read_bytes_total" => &mut d.read_bytes,
                    "node_disk_written_bytes_total" => &mut d.written_bytes,
                    "node_disk_reads_completed_total" => &mut d.reads,
                    "node_disk_writes_completed_total" => &mut d.writes,
                    _ => &mut d.io_time_seconds,
                };
                *slot = Some(v);
            }
            "node_network_receive_bytes_total"
            | "node_network_transmit_bytes_total"
            | "node_network_receive_packets_total"
            | "node_network_transmit_packets_total"
            | "node_network_receive_errs_total"
            | "node_network_transmit_errs_total"
            | "node_network_speed_bytes" => {
                if device == "lo" {
                    continue;
                }
                saw_net = true;
                let n = out.nets.entry(device).or_default();
                match m {
                    "node_network_receive_bytes_total" => n.rx_bytes = Some(v),
                    "node_network_transmit_bytes_total" => n.tx_bytes = Some(v),
                    "node_network_receive_packets_total" => n.rx_packets = Some(v),
                    "node_network_transmit_packets_total" => n.tx_packets = Some(v),
                    "node_network_speed_bytes" => n.speed_bytes = Some(v),
                    _ => n.errors = Some(n.errors.unwrap_or(0.0) + v),
                }
            }
            "node_filesystem_size_bytes" | "node_filesystem_avail_bytes" => {
                let fstype = s.labels.get("fstype").unwrap_or("");
                if PSEUDO_FS.contains(&fstype) {
                    continue;
                }
                let mountpoint = s.labels.get("mountpoint").unwrap_or("").to_string();
                let f = fs
                    .entry((device.clone(), mountpoint.clone()))
                    .or_insert_with(|| Filesystem {
                        device,
                        fstype: fstype.to_string(),
                        mountpoint,
                        ..Default::default()
                    });
                if m == "node_filesystem_size_bytes" {
                    f.size_bytes = v;
                } else {
                    f.avail_bytes = v;
                }
            }
            _ => {}
        }
    }
    if !saw_disk {
        problems.push(problem("missing_metric", "node_disk_*"));
    }
    if !saw_net {
        problems.push(problem("missing_metric", "node_network_*"));
    }
    out.filesystems = fs.into_values().collect();
    out
}

/// Per-second rate of a counter between two samples; `None` (and a
/// `counter_reset` problem) when it went backwards.
fn rate(
    name: &str,
    prev: Option<f64>,
    cur: Option<f64>,
    seconds: f64,
    problems: &mut Vec<Problem>,
) -> Option<f64> {
    let (p, c) = (prev?, cur?);
    if c < p {
        problems.push(problem("counter_reset", name));
        return None;
    }
    Some((c - p) / seconds)
}

/// Storage type guessed from the kernel device name (what the scheduler
/// understands: `nvme`, `ssd`, `hdd`); `disk` when the name says nothing.
fn device_type(device: &str) -> &'static str {
    if device.starts_with("nvme") {
        "nvme"
    } else {
        "disk"
    }
}

/// Turns the latest sample (and the previous one, `seconds` earlier) into
/// host telemetry. Counter figures are totals since the previous scrape;
/// without a previous sample, or across a reset, they are left out.
pub fn host_telemetry(
    prev: Option<&HostSample>,
    cur: &HostSample,
    seconds: f64,
    problems: &mut Vec<Problem>,
) -> HostTelemetry {
    let mut storage_devices = Vec::new();
    let mut io = IoStatistics::default();
    let mut io_known = false;
    for (name, d) in &cur.disks {
        let p = prev
            .filter(|_| seconds > 0.0)
            .and_then(|p| p.disks.get(name));
        let pd = p.copied().unwrap_or_default();
        let read_b = rate(
            "node_disk_read_bytes_total",
            pd.read_bytes,
            d.read_bytes,
            seconds,
            problems,
        );
        let write_b = rate(
            "node_disk_written_bytes_total",
            pd.written_bytes,
            d.written_bytes,
            seconds,
            problems,
        );
        let reads = rate(
            "node_disk_reads_completed_total",
            pd.reads,
            d.reads,
            seconds,
            problems,
        );
        let writes = rate(
            "node_disk_writes_completed_total",
            pd.writes,
            d.writes,
            seconds,
            problems,
        );
        let busy = rate(
            "node_disk_io_time_seconds_total",
            pd.io_time_seconds,
            d.io_time_seconds,
            seconds,
            problems,
        );
        if let (Some(rb), Some(wb), Some(r), Some(w)) = (read_b, write_b, reads, writes) {
            io_known = true;
            io.total_read_bytes += (rb * seconds).round() as i64;
            io.total_write_bytes += (wb * seconds).round() as i64;
            io.total_read_ops += (r * seconds).round() as i64;
            io.total_write_ops += (w * seconds).round() as i64;
        }
        storage_devices.push(StorageDeviceStatus {
            device_name: name.clone(),
            device_type: device_type(name).to_string(),
            utilization_percent: busy.map_or(0.0, |b| (b * 100.0).clamp(0.0, 100.0)),
            health_score: 1.0,
            current_iops: match (reads, writes) {
                (Some(r), Some(w)) => (r + w).round() as i64,
                _ => 0,
            },
            current_throughput_mbps: match (read_b, write_b) {
                (Some(r), Some(w)) => (r + w) / 1e6,
                _ => 0.0,
            },
            ..Default::default()
        });
    }
    for f in &cur.filesystems {
        let used = (f.size_bytes - f.avail_bytes).max(0.0);
        storage_devices.push(StorageDeviceStatus {
            device_name: f.mountpoint.clone(),
            device_type: f.fstype.clone(),
            total_bytes: f.size_bytes as i64,
            used_bytes: used as i64,
            available_bytes: f.avail_bytes as i64,
            utilization_percent: if f.size_bytes > 0.0 {
                (100.0 * used / f.size_bytes).clamp(0.0, 100.0)
            } else {
                0.0
            },
            health_score: 1.0,
            ..Default::default()
        });
    }
    let mut network = NetworkStatus::default();
    let mut net_known = false;
    let mut bytes_per_s = 0.0;
    let mut speed = 0.0;
    for (name, n) in &cur.nets {
        let pn = prev
            .filter(|_| seconds > 0.0)
            .and_then(|p| p.nets.get(name))
            .copied()
            .unwrap_or_default();
        let rx = rate(
            "node_network_receive_bytes_total",
            pn.rx_bytes,
            n.rx_bytes,
            seconds,
            problems,
        );
        let tx = rate(
            "node_network_transmit_bytes_total",
            pn.tx_bytes,
            n.tx_bytes,
            seconds,
            problems,
        );
        let rxp = rate(
            "node_network_receive_packets_total",
            pn.rx_packets,
            n.rx_packets,
            seconds,
            problems,
        );
        let txp = rate(
            "node_network_transmit_packets_total",
            pn.tx_packets,
            n.tx_packets,
            seconds,
            problems,
        );
        let errs = rate(
            "node_network_errs_total",
            pn.errors,
            n.errors,
            seconds,
            problems,
        );
        if let (Some(rx), Some(tx)) = (rx, tx) {
            net_known = true;
            bytes_per_s += rx + tx;
        }
        network.packets_rx += rxp.map_or(0, |r| (r * seconds).round() as i64);
        network.packets_tx += txp.map_or(0, |r| (r * seconds).round() as i64);
        network.errors += errs.map_or(0, |r| (r * seconds).round() as i64);
        speed += n.speed_bytes.unwrap_or(0.0);
    }
    if speed > 0.0 {
        network.bandwidth_mbps = speed * 8.0 / 1e6;
        network.current_utilization = (bytes_per_s / speed).clamp(0.0, 1.0);
    }
    HostTelemetry {
        storage_devices,
        io: io_known.then_some(io),
        network: net_known.then_some(network),
    }
}

#[cfg(test)]
mod tests {
    /// Found by fuzzing (`prometheus_dcgm`): a framebuffer reading past
    /// i64 bytes overflowed used + free. It is an out-of-range problem now.
    #[test]
    fn framebuffer_readings_past_i64_are_out_of_range_not_an_overflow() {
        let text = "# TYPE DCGM_FI_DEV_FB_USED gauge\n\
# HELP DCGM_FI_DEV_FB_USED Framebuffer memory used (in MiB).\n\
DCGM_FI_DEV_FB_USED{gpu=\"0\"} 8792233720368547758070\n\
DCGM_FI_DEV_FB_USED{gpu=\"1\"} 41920\n\
# TYPE DCGM_FI_DEV_FB_FREE gauge\n\
# HELP DCGM_FI_DEV_FB_FREE Framebuffer memory free (in MiB).\n\
DCGM_FI_DEV_FB_FREE{gpu=\"0\"} 81050\n\
DCGM_FI_DEV_FB_FREE{gpu=\"1\"} 8792233720368547758070\n";
        let mut problems = Vec::new();
        let gpus = parse_dcgm(text, &mut problems);
        let out_of_range: Vec<&Problem> = problems
            .iter()
            .filter(|p| p.reason == "out_of_range")
            .collect();
        assert_eq!(out_of_range.len(), 2, "{problems:?}");
        assert_eq!(gpus.len(), 2);
        // GPU 0: used rejected, so no total; GPU 1: free rejected, used kept.
        assert_eq!(gpus[0].memory_used_bytes, None);
        assert_eq!(gpus[0].memory_total_bytes, None);
        assert_eq!(gpus[1].memory_used_bytes, Some(41920 * 1024 * 1024));
        assert_eq!(gpus[1].memory_total_bytes, None);
    }

    use super::*;

    const DCGM: &str = include_str!("../../tests/fixtures/dcgm-exporter.txt");
    const NODE_A: &str = include_str!("../../tests/fixtures/node-exporter-a.txt");
    const NODE_B: &str = include_str!("../../tests/fixtures/node-exporter-b.txt");

    #[test]
    fn dcgm_fixture_reads_every_gpu() {
        let mut problems = Vec::new();
        let gpus = parse_dcgm(DCGM, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(gpus.len(), 2);
        let g = &gpus[1];
        assert_eq!(g.index, 1);
        assert_eq!(g.model, "NVIDIA A100-SXM4-80GB");
        assert!(g.uuid.starts_with("GPU-"));
        assert_eq!(g.utilization_percent, Some(87.0));
        assert_eq!(g.memory_used_bytes, Some(40_000 * 1024 * 1024));
        assert_eq!(g.memory_total_bytes, Some(81_920 * 1024 * 1024));
        assert_eq!(g.temperature_celsius, Some(61.0));
        assert_eq!(g.power_watts, Some(312.5));
    }

    #[test]
    fn dcgm_bad_values_are_counted_not_used() {
        let text = "\
# HELP DCGM_FI_DEV_FB_USED Framebuffer memory used (in KB).
# TYPE DCGM_FI_DEV_FB_USED gauge
DCGM_FI_DEV_FB_USED{gpu=\"0\",UUID=\"GPU-x\",modelName=\"T4\"} 100
DCGM_FI_DEV_GPU_UTIL{gpu=\"0\",UUID=\"GPU-x\",modelName=\"T4\"} NaN
DCGM_FI_DEV_GPU_TEMP{gpu=\"0\"} -5
DCGM_FI_DEV_POWER_USAGE{gpu=\"0\"} twelve
this is not exposition text
";
        let mut problems = Vec::new();
        let gpus = parse_dcgm(text, &mut problems);
        assert_eq!(gpus.len(), 1);
        let g = &gpus[0];
        assert_eq!(g.memory_used_bytes, None, "KB is not the documented MiB");
        assert_eq!(g.utilization_percent, None);
        assert_eq!(g.temperature_celsius, None);
        assert_eq!(g.power_watts, None);
        let reasons: Vec<_> = problems.iter().map(|p| p.reason).collect();
        for r in [
            "unknown_unit",
            "not_finite",
            "negative",
            "malformed_line",
            "missing_metric",
        ] {
            assert!(reasons.contains(&r), "{r} missing from {reasons:?}");
        }
    }

    #[test]
    fn node_exporter_rates_between_two_scrapes() {
        let mut problems = Vec::new();
        let a = parse_node_exporter(NODE_A, &mut problems);
        let b = parse_node_exporter(NODE_B, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(a.disks.len(), 1, "loop devices are skipped");
        let first = host_telemetry(None, &a, 0.0, &mut problems);
        assert!(first.io.is_none(), "one sample gives no rate");
        assert!(first.network.is_none());
        let t = host_telemetry(Some(&a), &b, 10.0, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let io = t.io.unwrap();
        assert_eq!(io.total_read_bytes, 100_000_000);
        assert_eq!(io.total_write_bytes, 50_000_000);
        assert_eq!(io.total_read_ops, 2000);
        assert_eq!(io.total_write_ops, 1000);
        let disk = t
            .storage_devices
            .iter()
            .find(|d| d.device_name == "nvme0n1")
            .unwrap();
        assert_eq!(disk.device_type, "nvme");
        assert_eq!(disk.current_iops, 300);
        assert!((disk.current_throughput_mbps - 15.0).abs() < 1e-9);
        assert!((disk.utilization_percent - 25.0).abs() < 1e-9);
        let root = t
            .storage_devices
            .iter()
            .find(|d| d.device_name == "/")
            .unwrap();
        assert_eq!(root.total_bytes, 500_000_000_000);
        assert_eq!(root.available_bytes, 200_000_000_000);
        assert!((root.utilization_percent - 60.0).abs() < 1e-9);
        assert!(
            !t.storage_devices.iter().any(|d| d.device_type == "tmpfs"),
            "pseudo filesystems are skipped"
        );
        let net = t.network.unwrap();
        // 10 Gbit/s link; 125 MB/s each way over 10 s = 20% of 1.25 GB/s.
        assert!((net.bandwidth_mbps - 10_000.0).abs() < 1e-6);
        assert!((net.current_utilization - 0.2).abs() < 1e-9);
        assert_eq!(net.packets_rx, 100_000);
        assert_eq!(net.errors, 3);
    }

    #[test]
    fn counter_going_backwards_after_restart_is_a_problem_not_a_rate() {
        let mut problems = Vec::new();
        let a = parse_node_exporter(NODE_A, &mut problems);
        let b = parse_node_exporter(NODE_B, &mut problems);
        // Exporter restart: counters start again below the previous sample.
        let t = host_telemetry(Some(&b), &a, 10.0, &mut problems);
        assert!(t.io.is_none());
        assert!(t.network.is_none());
        assert!(problems.iter().any(|p| p.reason == "counter_reset"));
        let disk = t
            .storage_devices
            .iter()
            .find(|d| d.device_name == "nvme0n1")
            .unwrap();
        assert_eq!(disk.current_iops, 0);
    }

    #[test]
    fn empty_or_garbage_scrape_never_panics() {
        let mut problems = Vec::new();
        assert!(parse_dcgm("", &mut problems).is_empty());
        let h = parse_node_exporter("\u{0}\u{1}garbage {{{ 1 2 3\n", &mut problems);
        assert!(h.disks.is_empty());
        assert!(problems.iter().any(|p| p.reason == "missing_metric"));
        assert!(problems.iter().any(|p| p.reason == "malformed_line"));
    }
}
