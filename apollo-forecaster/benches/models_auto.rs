//! Cost of the `auto` selector as the service uses it: full selections, the
//! cached fast path, and a simulated refresh of many series where each
//! selector re-selects every `reselect_every` calls. Prints one JSON object.
//!
//! Run: `cargo bench -p apollo-forecaster --bench models_auto`
//! (optional env: `BENCH_SERIES`, default 2000).

use std::time::Instant;

use apollo_forecaster::models::{by_name, AutoConfig, AutoSelector};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const POINTS: usize = 1_440;
const HORIZON: usize = 30;

/// A mix of shapes like the real traces: smooth with noise, bursty and
/// intermittent, level shifts.
fn series(i: usize, rng: &mut StdRng) -> Vec<f64> {
    let mut y = Vec::with_capacity(POINTS + 200);
    let mut level = 50.0 * rng.random::<f64>();
    for t in 0..POINTS + 200 {
        let v = match i % 3 {
            0 => level + rng.random::<f64>(),
            1 => {
                if rng.random::<f64>() < 0.05 {
                    level + 40.0 * rng.random::<f64>()
                } else {
                    0.0
                }
            }
            _ => {
                if t % 500 == 499 {
                    level += 10.0;
                }
                level + 2.0 * rng.random::<f64>()
            }
        };
        y.push(v);
    }
    y
}

fn main() {
    let n_series: usize = std::env::var("BENCH_SERIES")
        .ok()
        .and_then(|v| v.parse().ok())
        // Under `cargo test` (no `--bench` argument) a short smoke pass.
        .unwrap_or(if std::env::args().any(|a| a == "--bench") {
            2_000
        } else {
            20
        });
    let mut rng = StdRng::seed_from_u64(7);
    let data: Vec<Vec<f64>> = (0..n_series).map(|i| series(i, &mut rng)).collect();

    // Full selection (what a fresh selector or a re-selection costs).
    let t0 = Instant::now();
    let mut selectors: Vec<AutoSelector> = data
        .iter()
        .map(|y| {
            let mut s = AutoSelector::new(AutoConfig::default());
            let _ = s.forecast(&y[..POINTS], HORIZON, 0.95);
            s
        })
        .collect();
    let select_us = t0.elapsed().as_secs_f64() * 1e6 / n_series as f64;

    // Refresh rounds: the window slides by one point per round.
    let rounds = 20;
    let t0 = Instant::now();
    for r in 1..=rounds {
        for (s, y) in selectors.iter_mut().zip(&data) {
            let _ = s.forecast(&y[r..POINTS + r], HORIZON, 0.95);
        }
    }
    let refresh_us = t0.elapsed().as_secs_f64() * 1e6 / (n_series * rounds) as f64;

    // Stateless `auto` (fresh selection every call), for comparison.
    let model = by_name("auto").map(|m| {
        let t0 = Instant::now();
        for y in data.iter().take(200) {
            let _ = m.forecast(&y[..POINTS], HORIZON, 0.95);
        }
        t0.elapsed().as_secs_f64() * 1e6 / data.len().min(200) as f64
    });

    let fleet = 5_000 * 4;
    println!(
        "{}",
        serde_json::json!({
            "bench": "auto_selector",
            "series": n_series,
            "points": POINTS,
            "horizon": HORIZON,
            "full_selection_us_per_series": select_us,
            "refresh_us_per_series_amortised": refresh_us,
            "stateless_auto_us_per_call": model,
            "projected_refresh_s_for_20000_series_one_core": refresh_us * fleet as f64 / 1e6,
        })
    );
}
