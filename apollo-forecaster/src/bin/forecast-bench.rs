//! Refresh benchmark: N nodes x 4 resources with full histories, forecast
//! with the served model and with `naive`, in one run. Prints JSON with wall
//! times and peak RSS (`VmHWM`).
//!
//! `cargo run --release -p apollo-forecaster --bin forecast-bench -- [nodes] [points] [refreshes] [auto select budget]`
//!
//! Per-refresh times, full `auto` selections and warming series go to
//! stderr as they happen and into the JSON.

use std::time::{Duration, Instant};

use apollo_forecaster::{config::ForecastArgs, engine::Engine, metrics::Metrics};
use apollo_proto::{ClusterInsight, GpuStatus, NodeResources, StorageDeviceStatus, Timestamp};
use rand::{rngs::StdRng, Rng, SeedableRng};

fn vm_hwm_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn arg(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

fn build(model: &str, nodes: usize, points: usize, budget: usize, now_ms: i64) -> Engine {
    let cfg = ForecastArgs {
        model: model.into(),
        auto_select_budget: budget,
        history_points: points,
        node_ttl: Duration::from_secs(86_400 * 365),
        ..ForecastArgs::default()
    };
    let engine = Engine::new(cfg, Metrics::unregistered()).expect("valid config");
    let mut rng = StdRng::seed_from_u64(1);
    for n in 0..nodes {
        let name = format!("node-{n:05}");
        let base: [f64; 4] = std::array::from_fn(|_| rng.random_range(10.0..70.0));
        let mut level = base;
        for k in 0..points {
            let t = now_ms - (points - 1 - k) as i64 * 60_000;
            let day = (k as f64 / 1440.0 * std::f64::consts::TAU).sin() * 8.0;
            for l in &mut level {
                *l = (*l + rng.random_range(-1.0..1.0)).clamp(1.0, 95.0);
            }
            let v = |i: usize| (level[i] + day).clamp(0.0, 100.0);
            let insight = ClusterInsight {
                node_name: name.clone(),
                node_resources: Some(NodeResources {
                    cpu_allocatable_cores: 64.0,
                    cpu_used_cores: 0.64 * v(0),
                    memory_allocatable_bytes: 1 << 40,
                    memory_used_bytes: ((1u64 << 40) as f64 * v(1) / 100.0) as i64,
                    ..Default::default()
                }),
                gpu_devices: vec![GpuStatus {
                    utilization_percent: v(2),
                    ..Default::default()
                }],
                storage_devices: vec![StorageDeviceStatus {
                    total_bytes: 1 << 40,
                    used_bytes: ((1u64 << 40) as f64 * v(3) / 100.0) as i64,
                    ..Default::default()
                }],
                collected_at: Some(Timestamp {
                    seconds: t / 1000,
                    nanos: 0,
                }),
                ..Default::default()
            };
            let _ = engine.ingest(&insight, None, now_ms);
        }
    }
    engine
}

fn run(
    model: &str,
    nodes: usize,
    points: usize,
    refreshes: usize,
    budget: usize,
    now_ms: i64,
) -> serde_json::Value {
    let t0 = Instant::now();
    let engine = build(model, nodes, points, budget, now_ms);
    let load = t0.elapsed().as_secs_f64();
    let mut times = Vec::new();
    let mut selections = Vec::new();
    let mut warming = Vec::new();
    let mut series = 0;
    for i in 0..refreshes {
        let out = engine.refresh(now_ms + i as i64);
        series = out.series;
        times.push(out.seconds);
        selections.push(out.selections);
        warming.push(out.warming);
        eprintln!(
            "{model} refresh {}: {:.3} s, {} full selections, {} warming",
            i + 1,
            out.seconds,
            out.selections,
            out.warming
        );
    }
    let first = times.first().copied().unwrap_or(0.0);
    let rest = &times[1.min(times.len())..];
    let steady = if rest.is_empty() {
        first
    } else {
        rest.iter().sum::<f64>() / rest.len() as f64
    };
    let max = times.iter().copied().fold(0.0, f64::max);
    serde_json::json!({
        "model": model,
        "series": series,
        "load_seconds": load,
        "first_refresh_seconds": first,
        "steady_refresh_seconds_mean": steady,
        "max_refresh_seconds": max,
        "refresh_seconds": times,
        "selections_per_refresh": selections,
        "warming_per_refresh": warming,
        "auto_select_budget": engine.config().auto_select_budget,
        "auto_select_time_budget_seconds": engine.config().auto_select_time_budget.as_secs_f64(),
        "vm_hwm_mib_after": vm_hwm_kib().map(|k| k as f64 / 1024.0),
    })
}

fn main() {
    let nodes = arg(1, 5000);
    let points = arg(2, 1440);
    let refreshes = arg(3, 12).max(1);
    let budget = arg(4, ForecastArgs::default().auto_select_budget);
    let now_ms = 1_700_000_000_000;
    // Naive first, so the served model's peak RSS includes both.
    let naive = run("naive", nodes, points, refreshes, budget, now_ms);
    let auto = run("auto", nodes, points, refreshes, budget, now_ms);
    let ratio = |k: &str| {
        let a = auto[k].as_f64().unwrap_or(0.0);
        let n = naive[k].as_f64().unwrap_or(0.0);
        if n > 0.0 {
            a / n
        } else {
            0.0
        }
    };
    let report = serde_json::json!({
        "nodes": nodes,
        "resources_per_node": 4,
        "points": points,
        "refreshes": refreshes,
        "threads": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "served": auto,
        "naive": naive,
        "ratio_first_refresh_vs_naive": ratio("first_refresh_seconds"),
        "ratio_steady_refresh_vs_naive": ratio("steady_refresh_seconds_mean"),
        "peak_rss_mib": vm_hwm_kib().map(|k| k as f64 / 1024.0),
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
}
