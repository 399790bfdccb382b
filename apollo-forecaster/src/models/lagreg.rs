//! Lag-feature regression with a smartcore random forest.
//!
//! One forest serves every horizon (direct strategy): a training row is an
//! origin `t` and a step `k`, its features are recent lags, rolling means,
//! a rolling spread and, with a season, the phase of the target time and the
//! value one season before it, all relative to the last value and scaled by
//! the series' typical step size; the target is the scaled change between
//! the last value and `y[t + k - 1]`. Predicting changes rather than levels
//! lets the trees follow series whose level moves outside the training
//! range. The training set is capped at about 1,000 rows and 15 trees so a
//! fit stays in the tens of milliseconds.

use smartcore::ensemble::random_forest_regressor::{
    RandomForestRegressor, RandomForestRegressorParameters,
};
use smartcore::linalg::basic::matrix::DenseMatrix;

use super::baseline::median;
use super::conformal::{assemble, calibrate};
use super::{check_input, tail, Forecast, Model, ModelConfig, ModelError};

/// Steps `k` used as training targets; other steps are interpolated by the
/// trees through the `k` feature.
const STEPS: &[usize] = &[1, 2, 3, 5, 8, 12, 18, 27, 40, 60, 90, 135, 200, 300];
/// Lags used as features.
const LAGS: usize = 8;
/// Longest look-back of any feature.
const LOOKBACK: usize = 60;
/// Cap on training rows.
const MAX_ROWS: usize = 1_000;

/// Target moves up to this many typical steps stay (nearly) linear.
const KNEE: f64 = 4.0;

/// Linear near zero, logarithmic beyond `KNEE`: keeps ordinary moves exact
/// and compresses bursts.
fn squash(x: f64) -> f64 {
    KNEE * (x / KNEE).asinh()
}

fn unsquash(z: f64) -> f64 {
    KNEE * (z / KNEE).clamp(-50.0, 50.0).sinh()
}

type Forest = RandomForestRegressor<f64, f64, DenseMatrix<f64>, Vec<f64>>;

/// A fitted lag-feature forest.
pub struct FittedLagReg {
    forest: Forest,
    scale: f64,
    season: Option<usize>,
    n_features: usize,
}

impl std::fmt::Debug for FittedLagReg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FittedLagReg")
            .field("scale", &self.scale)
            .field("season", &self.season)
            .finish_non_exhaustive()
    }
}

/// Features of origin `t` (uses `y[..t]`) for step `k` (1-based).
fn row(y: &[f64], t: usize, k: usize, scale: f64, season: Option<usize>, out: &mut Vec<f64>) {
    let v = y[t - 1];
    let rel = |x: f64| ((x - v) / scale).asinh();
    for j in 2..=LAGS + 1 {
        out.push(if t >= j { rel(y[t - j]) } else { 0.0 });
    }
    for w in [5usize, 15, 60] {
        let s = &y[t.saturating_sub(w)..t];
        out.push(rel(s.iter().sum::<f64>() / s.len() as f64));
    }
    let s = &y[t.saturating_sub(LOOKBACK)..t];
    out.push(rel(median(s)));
    let s15 = &y[t.saturating_sub(15)..t];
    let m15 = s15.iter().sum::<f64>() / s15.len() as f64;
    out.push(
        ((s15.iter().map(|x| (x - m15).powi(2)).sum::<f64>() / s15.len() as f64).sqrt() / scale)
            .asinh(),
    );
    out.push(k as f64);
    if let Some(m) = season {
        let target = t + k - 1;
        let a = 2.0 * std::f64::consts::PI * (target % m) as f64 / m as f64;
        out.push(a.sin());
        out.push(a.cos());
        let back = m * k.div_ceil(m);
        out.push(if target >= back {
            rel(y[target - back])
        } else {
            0.0
        });
    }
}

fn typical_step(y: &[f64]) -> f64 {
    let d: Vec<f64> = y.windows(2).map(|p| (p[1] - p[0]).abs()).collect();
    let mean = d.iter().sum::<f64>() / d.len().max(1) as f64;
    let med = median(&d);
    let s = if med > 0.0 { med } else { mean };
    if s > 0.0 && s.is_finite() {
        s
    } else {
        1.0
    }
}

impl FittedLagReg {
    /// Fits the forest on `y` for steps up to `max_step`.
    pub fn fit(
        y: &[f64],
        season: Option<usize>,
        max_step: usize,
        seed: u64,
    ) -> Result<Self, ModelError> {
        Self::fit_rows(y, season, max_step, seed, MAX_ROWS)
    }

    /// [`FittedLagReg::fit`] on at most about `max_rows` training rows
    /// (fewer rows = a cheaper fit, used inside `auto`'s selection).
    pub fn fit_rows(
        y: &[f64],
        season: Option<usize>,
        max_step: usize,
        seed: u64,
        max_rows: usize,
    ) -> Result<Self, ModelError> {
        let season = season.filter(|m| y.len() >= 3 * m);
        let need = LOOKBACK + 20;
        if y.len() < need {
            return Err(ModelError::TooShort {
                model: "lagreg",
                need,
                got: y.len(),
            });
        }
        let scale = typical_step(y);
        let steps: Vec<usize> = STEPS
            .iter()
            .copied()
            .filter(|k| *k <= max_step.max(1))
            .collect();
        let origins = y.len() - LOOKBACK;
        let stride = (origins * steps.len() / max_rows.max(1)).max(1);
        let mut x = Vec::new();
        let mut target = Vec::new();
        let mut rows = 0;
        for t in (LOOKBACK..y.len()).step_by(stride) {
            for &k in &steps {
                if t + k > y.len() {
                    continue;
                }
                row(y, t, k, scale, season, &mut x);
                target.push(squash((y[t + k - 1] - y[t - 1]) / scale));
                rows += 1;
            }
        }
        if rows < 10 {
            return Err(ModelError::TooShort {
                model: "lagreg",
                need: need + 10,
                got: y.len(),
            });
        }
        let p = x.len() / rows;
        let xm = DenseMatrix::new(rows, p, x, false).map_err(|e| ModelError::Fit {
            model: "lagreg",
            reason: e.to_string(),
        })?;
        let params = RandomForestRegressorParameters::default()
            .with_n_trees(15)
            .with_max_depth(7)
            .with_min_samples_leaf(5)
            // Half the features per split: the default sqrt(p) often misses
            // the one informative lag.
            .with_m((p / 2).max(1))
            .with_seed(seed);
        let forest =
            RandomForestRegressor::fit(&xm, &target, params).map_err(|e| ModelError::Fit {
                model: "lagreg",
                reason: e.to_string(),
            })?;
        Ok(Self {
            forest,
            scale,
            season,
            n_features: p,
        })
    }

    /// Forecasts for several origins at once: one row per (origin, step).
    pub fn point_many(
        &self,
        y: &[f64],
        origins: &[(usize, usize)],
    ) -> Result<Vec<Vec<f64>>, ModelError> {
        let mut x = Vec::new();
        let mut rows = 0;
        for &(t, h) in origins {
            for k in 1..=h {
                row(y, t, k, self.scale, self.season, &mut x);
                rows += 1;
            }
        }
        if rows == 0 {
            return Ok(vec![Vec::new(); origins.len()]);
        }
        let xm =
            DenseMatrix::new(rows, self.n_features, x, false).map_err(|e| ModelError::Fit {
                model: "lagreg",
                reason: e.to_string(),
            })?;
        let pred = self.forest.predict(&xm).map_err(|e| ModelError::Fit {
            model: "lagreg",
            reason: e.to_string(),
        })?;
        let mut out = Vec::with_capacity(origins.len());
        let mut i = 0;
        for &(t, h) in origins {
            let v = y[t - 1];
            out.push(
                pred[i..i + h]
                    .iter()
                    .map(|d| v + unsquash(*d) * self.scale)
                    .collect(),
            );
            i += h;
        }
        Ok(out)
    }
}

/// Lag-feature random-forest regression.
#[derive(Debug, Clone)]
pub struct LagRegression {
    config: ModelConfig,
}

impl LagRegression {
    /// Creates the model.
    pub fn new(config: ModelConfig) -> Self {
        Self { config }
    }
}

impl Model for LagRegression {
    fn name(&self) -> &'static str {
        "lagreg"
    }
    fn forecast(
        &self,
        history: &[f64],
        horizon: usize,
        level: f64,
    ) -> Result<Forecast, ModelError> {
        self.config.validate()?;
        check_input("lagreg", history, LOOKBACK + 20, horizon, level)?;
        let y = tail(history, self.config.max_train);
        let fit = FittedLagReg::fit(y, self.config.season, horizon, self.config.seed)?;
        // Batch the calibration origins into one prediction call.
        let mut wanted = Vec::new();
        calibrate(
            y,
            LOOKBACK,
            horizon,
            level,
            self.config.calib_origins,
            |t, h| {
                wanted.push((t, h));
                Vec::new()
            },
        );
        let preds = fit.point_many(y, &wanted)?;
        let mut it = preds.into_iter();
        let cal = calibrate(
            y,
            LOOKBACK,
            horizon,
            level,
            self.config.calib_origins,
            |_, _| it.next().unwrap_or_default(),
        );
        let mean = fit
            .point_many(y, &[(y.len(), horizon)])?
            .pop()
            .unwrap_or_default();
        Ok(assemble("lagreg".into(), mean, &cal, level))
    }
}
