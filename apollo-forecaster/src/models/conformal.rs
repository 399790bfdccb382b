//! Conformal-style prediction intervals from past-origin forecast errors.
//!
//! A fitted model with frozen parameters forecasts from many origins inside
//! its own training data; the signed `h`-step errors give per-step empirical
//! quantiles. Widths are made non-decreasing in `h` so sparse far steps do
//! not produce intervals narrower than near ones.

use super::Forecast;

/// Per-step interval offsets and backtest accuracy from a calibration run.
#[derive(Debug, Clone, PartialEq)]
pub struct Calibration {
    /// Offset added to the point forecast for the lower bound (<= 0).
    pub lower: Vec<f64>,
    /// Offset added to the point forecast for the upper bound (>= 0).
    pub upper: Vec<f64>,
    /// Mean absolute error per step.
    pub mae: Vec<f64>,
    /// `1 - wMAPE` clamped to `[0, 1]` over all origins and steps.
    pub accuracy: Option<f64>,
    /// MAE over all origins and steps divided by the naive MAE.
    pub rel_mae: Option<f64>,
}

/// Empirical quantile (`p` in `[0, 1]`) of sorted data with the conformal
/// finite-sample rank correction, so small samples widen the interval.
pub(crate) fn conformal_quantile(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return 0.0;
    }
    if p >= 0.5 {
        let rank = ((n as f64 + 1.0) * p).ceil() as usize;
        sorted[rank.clamp(1, n) - 1]
    } else {
        let rank = ((n as f64 + 1.0) * p).floor() as usize;
        sorted[rank.clamp(1, n) - 1]
    }
}

/// [`conformal_quantile`] of unsorted data: the same order statistic found
/// by selection in O(n) instead of a sort (calibration runs per series and
/// per step on every forecast of the baseline models).
pub(crate) fn conformal_quantile_unsorted(data: &mut [f64], p: f64) -> f64 {
    let n = data.len();
    if n == 0 {
        return 0.0;
    }
    let rank = if p >= 0.5 {
        ((n as f64 + 1.0) * p).ceil() as usize
    } else {
        ((n as f64 + 1.0) * p).floor() as usize
    };
    let (_, v, _) = data.select_nth_unstable_by(rank.clamp(1, n) - 1, f64::total_cmp);
    *v
}

/// Collects signed `h`-step errors of `point` (forecast from origin `t`,
/// i.e. using `y[..t]`, for `y[t..t + h]`) over up to `n_origins` origins in
/// `[min_origin, y.len())`, and turns them into interval offsets at `level`.
pub fn calibrate<F>(
    y: &[f64],
    min_origin: usize,
    horizon: usize,
    level: f64,
    n_origins: usize,
    mut point: F,
) -> Calibration
where
    F: FnMut(usize, usize) -> Vec<f64>,
{
    let n = y.len();
    let mut errors: Vec<Vec<f64>> = vec![Vec::new(); horizon];
    let (mut abs_sum, mut act_sum, mut naive_sum) = (0.0, 0.0, 0.0);
    let first = min_origin.max(1);
    if first < n && n_origins > 0 {
        // Origins cover the last `n_origins * stride + horizon` points so every
        // step gets samples; the stride spreads them when data is plentiful.
        let span = n - first;
        let stride = (span / (n_origins + horizon).max(1)).clamp(1, 8);
        let lo = n.saturating_sub(stride * n_origins + horizon).max(first);
        let mut t = lo;
        while t < n {
            let steps = horizon.min(n - t);
            let f = point(t, steps);
            for k in 0..steps.min(f.len()) {
                let actual = y[t + k];
                let e = actual - f[k];
                if e.is_finite() {
                    errors[k].push(e);
                    abs_sum += e.abs();
                    act_sum += actual.abs();
                    naive_sum += (actual - y[t - 1]).abs();
                }
            }
            t += stride;
        }
    }
    let p_lo = (1.0 - level) / 2.0;
    let p_hi = 1.0 - p_lo;
    let mut lower = vec![0.0; horizon];
    let mut upper = vec![0.0; horizon];
    let mut mae = vec![0.0; horizon];
    for k in 0..horizon {
        let e = &mut errors[k];
        if e.len() >= 5 {
            lower[k] = conformal_quantile_unsorted(e, p_lo).min(0.0);
            upper[k] = conformal_quantile_unsorted(e, p_hi).max(0.0);
            mae[k] = e.iter().map(|v| v.abs()).sum::<f64>() / e.len() as f64;
        } else if k > 0 {
            // Too few samples this far out: grow the previous width like a
            // random walk would.
            let g = ((k + 1) as f64 / k as f64).sqrt();
            lower[k] = lower[k - 1] * g;
            upper[k] = upper[k - 1] * g;
            mae[k] = mae[k - 1] * g;
        }
        if k > 0 {
            lower[k] = lower[k].min(lower[k - 1]);
            upper[k] = upper[k].max(upper[k - 1]);
        }
    }
    let accuracy = if act_sum > 0.0 {
        Some((1.0 - abs_sum / act_sum).clamp(0.0, 1.0))
    } else if errors.iter().any(|e| !e.is_empty()) {
        Some(if abs_sum == 0.0 { 1.0 } else { 0.0 })
    } else {
        None
    };
    let rel_mae = (naive_sum > 0.0).then(|| abs_sum / naive_sum);
    Calibration {
        lower,
        upper,
        mae,
        accuracy,
        rel_mae,
    }
}

/// Assembles a [`Forecast`] from a point forecast and a calibration.
pub(crate) fn assemble(
    model_type: String,
    mean: Vec<f64>,
    cal: &Calibration,
    level: f64,
) -> Forecast {
    let lower = mean.iter().zip(&cal.lower).map(|(m, l)| m + l).collect();
    let upper = mean.iter().zip(&cal.upper).map(|(m, u)| m + u).collect();
    Forecast {
        mean,
        lower,
        upper,
        level,
        model_type,
        accuracy: cal.accuracy,
        rel_mae: cal.rel_mae,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_rank_is_conservative() {
        let v: Vec<f64> = (1..=19).map(f64::from).collect();
        assert_eq!(conformal_quantile(&v, 0.975), 19.0);
        assert_eq!(conformal_quantile(&v, 0.025), 1.0);
        assert_eq!(conformal_quantile(&v, 0.5), 10.0);
    }

    #[test]
    fn unsorted_quantile_matches_sorted() {
        // A fixed permutation with ties, at several levels and sizes.
        let raw: Vec<f64> = (0..57).map(|i| f64::from((i * 37) % 23) - 11.0).collect();
        for n in [1, 2, 5, 19, 57] {
            let mut sorted = raw[..n].to_vec();
            sorted.sort_by(f64::total_cmp);
            for p in [0.025, 0.05, 0.1, 0.5, 0.9, 0.95, 0.975] {
                let mut scratch = raw[..n].to_vec();
                assert_eq!(
                    conformal_quantile_unsorted(&mut scratch, p),
                    conformal_quantile(&sorted, p),
                    "n={n} p={p}"
                );
            }
        }
    }

    #[test]
    fn perfect_model_has_zero_width() {
        let y: Vec<f64> = (0..100).map(f64::from).collect();
        let cal = calibrate(&y, 10, 5, 0.9, 50, |t, h| {
            (0..h).map(|k| (t + k) as f64).collect()
        });
        assert!(cal.lower.iter().chain(&cal.upper).all(|v| *v == 0.0));
        assert_eq!(cal.accuracy, Some(1.0));
        assert_eq!(cal.rel_mae, Some(0.0));
    }
}
