//! Baselines: last value, seasonal last value, moving mean and median.
//! They are the yardsticks of the harness and the cheap candidates of `auto`.

use super::conformal::{assemble, calibrate};
use super::{check_input, tail, Forecast, Model, ModelConfig, ModelError};

/// Forecasts with frozen-parameter point function and conformal intervals.
pub(crate) fn forecast_with<F>(
    name: &'static str,
    config: &ModelConfig,
    history: &[f64],
    need: usize,
    horizon: usize,
    level: f64,
    point: F,
) -> Result<Forecast, ModelError>
where
    F: Fn(&[f64], usize, usize) -> Vec<f64>,
{
    config.validate()?;
    check_input(name, history, need, horizon, level)?;
    let y = tail(history, config.max_train);
    let cal = calibrate(y, need, horizon, level, config.calib_origins, |t, h| {
        point(y, t, h)
    });
    let mean = point(y, y.len(), horizon);
    Ok(assemble(name.to_string(), mean, &cal, level))
}

/// Last observed value repeated.
#[derive(Debug, Clone)]
pub struct Naive {
    config: ModelConfig,
}

impl Naive {
    /// Creates the model.
    pub fn new(config: ModelConfig) -> Self {
        Self { config }
    }
}

/// Naive point forecast from origin `t`.
pub(crate) fn naive_point(y: &[f64], t: usize, h: usize) -> Vec<f64> {
    vec![y[t - 1]; h]
}

impl Model for Naive {
    fn name(&self) -> &'static str {
        "naive"
    }
    fn forecast(
        &self,
        history: &[f64],
        horizon: usize,
        level: f64,
    ) -> Result<Forecast, ModelError> {
        forecast_with(
            "naive",
            &self.config,
            history,
            1,
            horizon,
            level,
            naive_point,
        )
    }
}

/// Value one season earlier; falls back to the last value without a season.
#[derive(Debug, Clone)]
pub struct SeasonalNaive {
    config: ModelConfig,
}

impl SeasonalNaive {
    /// Creates the model.
    pub fn new(config: ModelConfig) -> Self {
        Self { config }
    }
}

/// Seasonal-naive point forecast from origin `t` with season `m`.
pub(crate) fn seasonal_naive_point(y: &[f64], t: usize, h: usize, m: usize) -> Vec<f64> {
    (0..h)
        .map(|k| {
            // Step k+1 ahead maps to the same phase in the last full season.
            let back = m - (k % m);
            y[t - back]
        })
        .collect()
}

impl Model for SeasonalNaive {
    fn name(&self) -> &'static str {
        "seasonal_naive"
    }
    fn forecast(
        &self,
        history: &[f64],
        horizon: usize,
        level: f64,
    ) -> Result<Forecast, ModelError> {
        match self.config.season {
            Some(m) => forecast_with(
                "seasonal_naive",
                &self.config,
                history,
                m,
                horizon,
                level,
                move |y, t, h| seasonal_naive_point(y, t, h, m),
            ),
            None => forecast_with(
                "seasonal_naive",
                &self.config,
                history,
                1,
                horizon,
                level,
                naive_point,
            ),
        }
    }
}

/// Mean of the last `window` points.
#[derive(Debug, Clone)]
pub struct WindowMean {
    config: ModelConfig,
}

impl WindowMean {
    /// Creates the model.
    pub fn new(config: ModelConfig) -> Self {
        Self { config }
    }
}

/// Moving-mean point forecast from origin `t`.
pub(crate) fn mean_point(y: &[f64], t: usize, h: usize, w: usize) -> Vec<f64> {
    let s = &y[t.saturating_sub(w)..t];
    vec![s.iter().sum::<f64>() / s.len() as f64; h]
}

/// Median of a slice (copies it).
pub(crate) fn median(s: &[f64]) -> f64 {
    if s.is_empty() {
        return f64::NAN;
    }
    let mut v = s.to_vec();
    let mid = v.len() / 2;
    let (_, m, _) = v.select_nth_unstable_by(mid, f64::total_cmp);
    let m = *m;
    if v.len() % 2 == 1 {
        m
    } else {
        let below = v[..mid].iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (m + below) / 2.0
    }
}

/// Moving-median point forecast from origin `t`.
pub(crate) fn median_point(y: &[f64], t: usize, h: usize, w: usize) -> Vec<f64> {
    vec![median(&y[t.saturating_sub(w)..t]); h]
}

impl Model for WindowMean {
    fn name(&self) -> &'static str {
        "mean"
    }
    fn forecast(
        &self,
        history: &[f64],
        horizon: usize,
        level: f64,
    ) -> Result<Forecast, ModelError> {
        let w = self.config.window;
        forecast_with(
            "mean",
            &self.config,
            history,
            1,
            horizon,
            level,
            move |y, t, h| mean_point(y, t, h, w),
        )
    }
}

/// Median of the last `window` points: robust to isolated bursts.
#[derive(Debug, Clone)]
pub struct WindowMedian {
    config: ModelConfig,
}

impl WindowMedian {
    /// Creates the model.
    pub fn new(config: ModelConfig) -> Self {
        Self { config }
    }
}

impl Model for WindowMedian {
    fn name(&self) -> &'static str {
        "median"
    }
    fn forecast(
        &self,
        history: &[f64],
        horizon: usize,
        level: f64,
    ) -> Result<Forecast, ModelError> {
        let w = self.config.window;
        forecast_with(
            "median",
            &self.config,
            history,
            1,
            horizon,
            level,
            move |y, t, h| median_point(y, t, h, w),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seasonal_naive_repeats_last_season() {
        let y = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        assert_eq!(
            seasonal_naive_point(&y, 6, 5, 3),
            vec![4.0, 5.0, 6.0, 4.0, 5.0]
        );
    }

    #[test]
    fn median_even_and_odd() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
