//! `NodeScorer::rank` latency on the openb cluster (1,213 GPU nodes) and on a
//! 5,000-node synthetic cluster made of the same node types, both filled to
//! about 70 % of GPU capacity with trace pods. Prints one JSON line per case.
//!
//! Run: `cargo bench -p apollo-scheduling --bench scorer` (reads the openb
//! trace from `APOLLO_TRACE_DIR`, default the excerpt in `data/` of the
//! repository). Under `cargo test` (no `--bench` argument) it runs a short
//! smoke pass on the same data so the bench cannot rot.

use std::path::PathBuf;
use std::time::Instant;

use apollo_scheduling::demand::PodDemand;
use apollo_scheduling::fgd::{ShapeDistribution, DEFAULT_COVERAGE};
use apollo_scheduling::scorer::NodeScorer;
use apollo_scheduling::simulate::{self, TraceNode};
use apollo_scheduling::snapshot::ClusterSnapshot;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn case(
    name: &str,
    nodes: &[TraceNode],
    demands: &[PodDemand],
    samples: usize,
) -> anyhow::Result<()> {
    let shapes = ShapeDistribution::from_pods(demands.iter(), DEFAULT_COVERAGE);
    let mut snap: ClusterSnapshot = simulate::snapshot_for(nodes, shapes)?;
    let scorer = NodeScorer::default();
    // Fill to ~70 % of GPU capacity the way production would (rank + assume).
    let target = snap.gpu_capacity_milli() * 7 / 10;
    let mut i = 0usize;
    let mut misses = 0;
    while snap.gpu_allocated_milli() < target && misses < 2000 {
        let d = &demands[i % demands.len()];
        i += 1;
        match scorer.rank(&snap, d, 1).top.first() {
            Some(best) => {
                let node = best.node.clone();
                snap.assume(&node, d)?;
            }
            None => misses += 1,
        }
    }
    let mut lat = Vec::with_capacity(samples);
    let mut feasible = 0usize;
    for k in 0..samples {
        let d = &demands[(k * 7919) % demands.len()];
        let t = Instant::now();
        let r = scorer.rank(&snap, d, 10);
        lat.push(t.elapsed().as_secs_f64() * 1e6);
        feasible += r.feasible;
    }
    lat.sort_by(f64::total_cmp);
    println!(
        "{}",
        serde_json::json!({
            "bench": "rank",
            "case": name,
            "nodes": snap.len(),
            "gpu_alloc_pct": 100.0 * snap.gpu_allocated_milli() as f64 / snap.gpu_capacity_milli() as f64,
            "typical_shapes": snap.shapes().typical().len(),
            "samples": samples,
            "mean_feasible": feasible as f64 / samples as f64,
            "p50_us": percentile(&lat, 0.50),
            "p99_us": percentile(&lat, 0.99),
            "max_us": percentile(&lat, 1.0),
        })
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let dir = std::env::var_os("APOLLO_TRACE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../data/alibaba-gpu-2023"
            ))
        });
    let nodes = simulate::load_nodes(&dir.join("openb_node_list_gpu_node.csv"))?;
    let pods = simulate::load_pods(&dir.join("openb_pod_list_default.csv"))?;
    let demands: Vec<PodDemand> = pods.iter().map(simulate::TracePod::demand).collect();
    let full = std::env::args().any(|a| a == "--bench");
    let samples = if full { 3000 } else { 50 };
    case("openb-1213", &nodes, &demands, samples)?;
    if !full {
        return Ok(());
    }
    let synthetic: Vec<TraceNode> = (0..5000)
        .map(|i| {
            let mut n = nodes[(i * 7) % nodes.len()].clone();
            n.name = format!("synth-{i:05}");
            n
        })
        .collect();
    case("synthetic-5000", &synthetic, &demands, samples)?;
    Ok(())
}
