//! Anomaly detection with robust statistics.
//!
//! - Per series: the newest points are compared with the median of the
//!   window before them, scaled by the MAD (`1.4826 * MAD` estimates the
//!   standard deviation without being dragged by the outliers themselves).
//!   The service also checks the newest point against the interval the
//!   previous refresh predicted for it.
//! - Across nodes: each node's current level of a resource is compared with
//!   the fleet's median and MAD (a robust z-score); a node far from its peers
//!   by both the z-score and an absolute margin is an outlier.
//!
//! Scores are reported relative to their threshold, so `score >= 1` means
//! anomalous whatever the check.

/// Median of a slice (sorts it); 0 for an empty slice.
pub fn median_in_place(xs: &mut [f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// Median and robust standard deviation (`1.4826 * MAD`, at least `floor`).
pub fn robust_scale(xs: &[f64], floor: f64) -> (f64, f64) {
    let mut v = xs.to_vec();
    let c = median_in_place(&mut v);
    for x in &mut v {
        *x = (*x - c).abs();
    }
    let mad = median_in_place(&mut v);
    (c, (1.4826 * mad).max(floor))
}

/// Smallest robust scale, in percentage points: a perfectly flat series
/// must not turn a 0.1-point wobble into an anomaly.
pub const SCALE_FLOOR: f64 = 1.0;

/// An anomalous point in one series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PointAnomaly {
    /// Robust z-score of the most extreme recent point (signed).
    pub z: f64,
    /// Points from the end of the series to that point (0 = newest).
    pub age: usize,
}

/// Looks for a point among the newest `recent` whose robust z-score against
/// the `window` points before them is at least `threshold` in magnitude.
pub fn series_anomaly(
    y: &[f64],
    recent: usize,
    window: usize,
    threshold: f64,
) -> Option<PointAnomaly> {
    let recent = recent.max(1);
    if y.len() < recent + 10 {
        return None;
    }
    let end = y.len() - recent;
    let start = end.saturating_sub(window);
    let (c, s) = robust_scale(&y[start..end], SCALE_FLOOR);
    y[end..]
        .iter()
        .enumerate()
        .map(|(i, v)| PointAnomaly {
            z: (v - c) / s,
            age: recent - 1 - i,
        })
        .max_by(|a, b| a.z.abs().total_cmp(&b.z.abs()))
        .filter(|a| a.z.abs() >= threshold)
}

/// How far `actual` lies outside `[lower, upper]`, in half-widths of the
/// interval (0 when inside).
pub fn interval_excess(actual: f64, lower: f64, upper: f64) -> f64 {
    let half = ((upper - lower) / 2.0).max(SCALE_FLOOR / 2.0);
    if actual > upper {
        (actual - upper) / half
    } else if actual < lower {
        (lower - actual) / half
    } else {
        0.0
    }
}

/// A node whose level departs from its peers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeerOutlier {
    /// Index into the input.
    pub index: usize,
    /// Robust z-score against the fleet (signed).
    pub z: f64,
}

/// Fleets smaller than this have no meaningful peer statistics.
pub const MIN_PEERS: usize = 5;

/// Nodes whose level is at least `threshold` robust standard deviations and
/// `min_diff` points away from the fleet median.
pub fn peer_outliers(levels: &[f64], threshold: f64, min_diff: f64) -> Vec<PeerOutlier> {
    if levels.len() < MIN_PEERS {
        return Vec::new();
    }
    let (c, s) = robust_scale(levels, SCALE_FLOOR);
    levels
        .iter()
        .enumerate()
        .filter_map(|(index, v)| {
            let z = (v - c) / s;
            (z.abs() >= threshold && (v - c).abs() >= min_diff).then_some(PeerOutlier { index, z })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    fn noise(seed: u64, n: usize, level: f64, sd: f64) -> Vec<f64> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                // Sum of uniforms: roughly normal, bounded.
                let u: f64 = (0..12).map(|_| rng.random::<f64>()).sum::<f64>() - 6.0;
                level + sd * u
            })
            .collect()
    }

    #[test]
    fn spike_is_detected() {
        let mut y = noise(7, 200, 40.0, 2.0);
        y.push(75.0);
        let a = series_anomaly(&y, 1, 60, 6.0).expect("spike");
        assert!(a.z > 6.0);
        assert_eq!(a.age, 0);
        let mut d = noise(8, 200, 40.0, 2.0);
        d.push(2.0);
        assert!(series_anomaly(&d, 1, 60, 6.0).unwrap().z < -6.0);
    }

    #[test]
    fn normal_noise_and_trends_are_not_flagged() {
        for seed in 0..50 {
            let y = noise(seed, 300, 50.0, 3.0);
            for end in 80..y.len() {
                assert_eq!(series_anomaly(&y[..end], 1, 60, 6.0), None, "seed {seed}");
            }
        }
        let trend: Vec<f64> = (0..200).map(|i| 10.0 + 0.4 * f64::from(i)).collect();
        assert_eq!(series_anomaly(&trend, 1, 60, 6.0), None);
        let flat = vec![30.0; 100];
        let mut wobble = flat.clone();
        wobble.push(30.5);
        assert_eq!(series_anomaly(&wobble, 1, 60, 6.0), None);
    }

    #[test]
    fn peer_outlier_is_detected_and_normal_fleet_is_not() {
        let mut fleet = noise(3, 40, 45.0, 3.0);
        assert!(peer_outliers(&fleet, 4.0, 20.0).is_empty());
        fleet[17] = 97.0;
        let out = peer_outliers(&fleet, 4.0, 20.0);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].index, 17);
        assert!(out[0].z > 4.0);
        // Too few peers: nothing to compare with.
        assert!(peer_outliers(&[10.0, 90.0, 10.0], 4.0, 20.0).is_empty());
        for seed in 0..50 {
            let f = noise(100 + seed, 30, 60.0, 5.0);
            assert!(peer_outliers(&f, 4.0, 20.0).is_empty(), "seed {seed}");
        }
    }

    #[test]
    fn interval_excess_measures_half_widths() {
        assert_eq!(interval_excess(5.0, 0.0, 10.0), 0.0);
        assert_eq!(interval_excess(20.0, 0.0, 10.0), 2.0);
        assert_eq!(interval_excess(-5.0, 0.0, 10.0), 1.0);
    }
}
