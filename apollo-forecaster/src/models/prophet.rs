//! Prophet-style decomposable model: piecewise-linear trend with
//! changepoints plus Fourier seasonality, fitted as one ridge regression.
//!
//! Prophet puts a Laplace (lasso) prior on the changepoint slope changes and
//! fits by MAP; here the same design matrix is fitted in closed form with a
//! ridge penalty on the slope changes (and a light one on the Fourier
//! terms). Ridge keeps the fit to one small Cholesky solve, which matters
//! when it runs per origin; the price is that slope changes shrink but do
//! not become exactly zero. Implemented here rather than with a library
//! solver so the penalty can differ per column.

use super::conformal::{assemble, calibrate};
use super::linalg::ridge;
use super::{check_input, tail, Forecast, Model, ModelConfig, ModelError};

/// Number of potential changepoints.
const CHANGEPOINTS: usize = 20;
/// Changepoints lie in this leading share of the training window.
const CHANGEPOINT_RANGE: f64 = 0.8;
/// Fourier order of the seasonal terms.
const FOURIER_ORDER: usize = 6;
/// Ridge penalty on slope changes, relative to the number of points.
const CHANGEPOINT_PENALTY: f64 = 0.5;

/// A fitted decomposable model.
#[derive(Debug, Clone)]
pub struct FittedProphet {
    coef: Vec<f64>,
    changepoints: Vec<f64>,
    season: Option<usize>,
    /// Offset and scale of the value axis.
    y_shift: f64,
    y_scale: f64,
    /// Length of the training window (time is scaled by it).
    n: usize,
}

fn features(t: f64, n: usize, cps: &[f64], season: Option<usize>, out: &mut Vec<f64>) {
    let ts = t / n as f64;
    out.push(1.0);
    out.push(ts);
    for c in cps {
        out.push((ts - c).max(0.0));
    }
    if let Some(m) = season {
        for k in 1..=FOURIER_ORDER {
            let a = 2.0 * std::f64::consts::PI * k as f64 * t / m as f64;
            out.push(a.sin());
            out.push(a.cos());
        }
    }
}

impl FittedProphet {
    /// Fits trend and seasonality to `y`.
    pub fn fit(y: &[f64], season: Option<usize>) -> Result<Self, ModelError> {
        let n = y.len();
        if n < 10 {
            return Err(ModelError::TooShort {
                model: "prophet",
                need: 10,
                got: n,
            });
        }
        let season = season.filter(|m| n >= 2 * m);
        let cps: Vec<f64> = (1..=CHANGEPOINTS)
            .map(|j| CHANGEPOINT_RANGE * j as f64 / (CHANGEPOINTS + 1) as f64)
            .collect();
        let lo = y.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = y.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let y_scale = if hi > lo { hi - lo } else { 1.0 };
        let ys: Vec<f64> = y.iter().map(|v| (v - lo) / y_scale).collect();
        let mut x = Vec::new();
        for t in 0..n {
            features(t as f64, n, &cps, season, &mut x);
        }
        let p = x.len() / n;
        let mut pen = vec![1e-6 * n as f64; p];
        for v in pen.iter_mut().skip(2).take(CHANGEPOINTS) {
            *v = CHANGEPOINT_PENALTY * n as f64 / 100.0;
        }
        let coef = ridge(&x, &ys, p, &pen).ok_or_else(|| ModelError::Fit {
            model: "prophet",
            reason: "regression system is singular".into(),
        })?;
        Ok(Self {
            coef,
            changepoints: cps,
            season,
            y_shift: lo,
            y_scale,
            n,
        })
    }

    /// Fitted value at time index `t` (may lie beyond the training window).
    pub fn at(&self, t: usize) -> f64 {
        let mut f = Vec::with_capacity(self.coef.len());
        features(t as f64, self.n, &self.changepoints, self.season, &mut f);
        let v: f64 = f.iter().zip(&self.coef).map(|(a, b)| a * b).sum();
        self.y_shift + self.y_scale * v
    }
}

/// Prophet-style model.
#[derive(Debug, Clone)]
pub struct Prophet {
    config: ModelConfig,
}

impl Prophet {
    /// Creates the model.
    pub fn new(config: ModelConfig) -> Self {
        Self { config }
    }
}

impl Model for Prophet {
    fn name(&self) -> &'static str {
        "prophet"
    }
    fn forecast(
        &self,
        history: &[f64],
        horizon: usize,
        level: f64,
    ) -> Result<Forecast, ModelError> {
        self.config.validate()?;
        check_input("prophet", history, 10, horizon, level)?;
        let y = tail(history, self.config.max_train);
        let fit = FittedProphet::fit(y, self.config.season)?;
        // The fitted curve is a function of time only: the error of a
        // forecast of step t + k is the in-sample residual there.
        let cal = calibrate(y, 1, horizon, level, self.config.calib_origins, |t, h| {
            (t..t + h).map(|i| fit.at(i)).collect()
        });
        let n = y.len();
        let mean = (n..n + horizon).map(|i| fit.at(i)).collect();
        Ok(assemble("prophet".into(), mean, &cal, level))
    }
}
