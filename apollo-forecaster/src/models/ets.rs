//! Exponential smoothing (ETS with additive errors): level, optional
//! additive or damped trend, optional additive season. Smoothing parameters
//! are fitted by Nelder-Mead on the one-step sum of squared errors; the
//! variant is chosen by AICc. Initial states come from a simple heuristic
//! (first-season means and slope) rather than being optimised, which keeps
//! a fit to a few milliseconds.

use super::conformal::{assemble, calibrate};
use super::optim::nelder_mead;
use super::{check_input, tail, Forecast, Model, ModelConfig, ModelError};

/// Trend component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trend {
    /// No trend.
    None,
    /// Additive trend.
    Additive,
    /// Additive trend damped towards flat.
    Damped,
}

/// One ETS specification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// Trend component.
    pub trend: Trend,
    /// Season length (additive season) or `None`.
    pub season: Option<usize>,
}

impl Spec {
    /// Conventional short name, e.g. `ETS(A,Ad,A)`.
    pub fn label(&self) -> String {
        let t = match self.trend {
            Trend::None => "N",
            Trend::Additive => "A",
            Trend::Damped => "Ad",
        };
        let s = if self.season.is_some() { "A" } else { "N" };
        format!("ETS(A,{t},{s})")
    }
}

/// Smoothing parameters of a fitted model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// Level smoothing.
    pub alpha: f64,
    /// Trend smoothing (error-correction form, `0 < beta < alpha`).
    pub beta: f64,
    /// Season smoothing (`0 < gamma < 1 - alpha`).
    pub gamma: f64,
    /// Damping (1 when not damped).
    pub phi: f64,
}

/// A fitted ETS model with its state path over the training data.
#[derive(Debug, Clone)]
pub struct FittedEts {
    /// Specification.
    pub spec: Spec,
    /// Fitted parameters.
    pub params: Params,
    /// One-step sum of squared errors.
    pub sse: f64,
    /// Corrected Akaike information criterion.
    pub aicc: f64,
    /// (level, trend) after each observation.
    states: Vec<(f64, f64)>,
    /// Seasonal component: index `i + m` holds the value after observation `i`.
    season: Vec<f64>,
}

fn sigmoid(u: f64) -> f64 {
    1.0 / (1.0 + (-u).exp())
}

fn logit(p: f64) -> f64 {
    let p = p.clamp(1e-6, 1.0 - 1e-6);
    (p / (1.0 - p)).ln()
}

fn params_from(u: &[f64], spec: Spec) -> Params {
    let alpha = 0.0001 + 0.9998 * sigmoid(u[0]);
    let mut i = 1;
    let (mut beta, mut phi, mut gamma) = (0.0, 1.0, 0.0);
    if spec.trend != Trend::None {
        beta = alpha * sigmoid(u[i]);
        i += 1;
    }
    if spec.trend == Trend::Damped {
        phi = 0.8 + 0.18 * sigmoid(u[i]);
        i += 1;
    }
    if spec.season.is_some() {
        gamma = (1.0 - alpha) * sigmoid(u[i]);
    }
    Params {
        alpha,
        beta,
        gamma,
        phi,
    }
}

/// Heuristic initial level, trend and season.
fn init_states(y: &[f64], spec: Spec) -> (f64, f64, Vec<f64>) {
    match spec.season {
        Some(m) => {
            let first = y[..m].iter().sum::<f64>() / m as f64;
            let second = y[m..2 * m].iter().sum::<f64>() / m as f64;
            let b = if spec.trend == Trend::None {
                0.0
            } else {
                (second - first) / m as f64
            };
            let s: Vec<f64> = y[..m].iter().map(|v| v - first).collect();
            // Level before the first observation, so that the first season is
            // centred on `first`.
            let l0 = first - b * (m as f64 - 1.0) / 2.0;
            (l0, b, s)
        }
        None => {
            let k = y.len().min(10);
            let b = if spec.trend == Trend::None || k < 2 {
                0.0
            } else {
                (y[k - 1] - y[0]) / (k - 1) as f64
            };
            (y[0] - b, b, Vec::new())
        }
    }
}

/// Runs the filter; returns SSE and (optionally) the state path.
fn filter(y: &[f64], spec: Spec, p: Params, keep: bool) -> (f64, Vec<(f64, f64)>, Vec<f64>) {
    let (mut l, mut b, s0) = init_states(y, spec);
    let m = spec.season.unwrap_or(0);
    let mut season = s0;
    if keep {
        season.reserve(y.len());
    }
    let mut states = Vec::with_capacity(if keep { y.len() } else { 0 });
    let mut sse = 0.0;
    for (i, &v) in y.iter().enumerate() {
        let s_prev = if m > 0 { season[i] } else { 0.0 };
        let lb = l + p.phi * b;
        let e = v - (lb + s_prev);
        sse += e * e;
        l = lb + p.alpha * e;
        b = p.phi * b + p.beta * e;
        if m > 0 {
            season.push(s_prev + p.gamma * e);
        }
        if keep {
            states.push((l, b));
        }
    }
    (sse, states, season)
}

impl FittedEts {
    /// Fits one specification to `y`.
    pub fn fit(y: &[f64], spec: Spec) -> Result<Self, ModelError> {
        let need = spec.season.map_or(4, |m| 2 * m + 2);
        if y.len() < need {
            return Err(ModelError::TooShort {
                model: "ets",
                need,
                got: y.len(),
            });
        }
        let mut u0 = vec![logit(0.3)];
        if spec.trend != Trend::None {
            u0.push(logit(0.1));
        }
        if spec.trend == Trend::Damped {
            u0.push(0.0);
        }
        if spec.season.is_some() {
            u0.push(logit(0.1));
        }
        let (u, sse) = nelder_mead(
            |u| filter(y, spec, params_from(u, spec), false).0,
            &u0,
            1.0,
            120 * u0.len(),
            1e-8,
        );
        if !sse.is_finite() {
            return Err(ModelError::Fit {
                model: "ets",
                reason: format!("{} diverged", spec.label()),
            });
        }
        let params = params_from(&u, spec);
        let (sse, states, season) = filter(y, spec, params, true);
        let n = y.len() as f64;
        let k = (u0.len() + 1 + usize::from(spec.trend != Trend::None) + spec.season.unwrap_or(0))
            as f64;
        let sigma2 = (sse / n).max(1e-300);
        let aicc = if n - k - 1.0 > 0.0 {
            n * sigma2.ln() + 2.0 * k + 2.0 * k * (k + 1.0) / (n - k - 1.0)
        } else {
            f64::INFINITY
        };
        Ok(Self {
            spec,
            params,
            sse,
            aicc,
            states,
            season,
        })
    }

    /// The same parameters run over `y` (which should start where the
    /// training data started), so [`FittedEts::point`] works at origins up to
    /// `y.len()` without refitting.
    pub fn refilter(&self, y: &[f64]) -> Self {
        let (sse, states, season) = filter(y, self.spec, self.params, true);
        Self {
            sse,
            states,
            season,
            ..self.clone()
        }
    }

    /// Forecast of `y[t..t + h]` from the state after `y[t - 1]` (`t >= 1`).
    pub fn point(&self, t: usize, h: usize) -> Vec<f64> {
        let (l, b) = self.states[t - 1];
        let phi = self.params.phi;
        let mut damp = 0.0;
        let mut pw = 1.0;
        (0..h)
            .map(|k| {
                pw *= phi;
                damp += pw;
                let s = match self.spec.season {
                    // Latest seasonal estimate of the same phase, observed by t - 1.
                    Some(m) => self.season[t + k - m * (k / m + 1) + m],
                    None => 0.0,
                };
                l + damp * b + s
            })
            .collect()
    }
}

/// ETS with automatic choice of trend/season by AICc.
#[derive(Debug, Clone)]
pub struct AutoEts {
    config: ModelConfig,
}

impl AutoEts {
    /// Creates the model.
    pub fn new(config: ModelConfig) -> Self {
        Self { config }
    }

    /// Fits every admissible variant and keeps the lowest AICc.
    pub fn fit(&self, y: &[f64]) -> Result<FittedEts, ModelError> {
        let mut specs = Vec::new();
        let seasons = match self.config.season {
            Some(m) if y.len() >= 2 * m + 2 => vec![None, Some(m)],
            _ => vec![None],
        };
        for season in seasons {
            for trend in [Trend::None, Trend::Additive, Trend::Damped] {
                specs.push(Spec { trend, season });
            }
        }
        let mut best: Option<FittedEts> = None;
        let mut last_err = None;
        for spec in specs {
            match FittedEts::fit(y, spec) {
                Ok(f) => {
                    if best.as_ref().is_none_or(|b| f.aicc < b.aicc) {
                        best = Some(f);
                    }
                }
                Err(e) => last_err = Some(e),
            }
        }
        best.ok_or_else(|| {
            last_err.unwrap_or(ModelError::Fit {
                model: "ets",
                reason: "no variant could be fitted".into(),
            })
        })
    }
}

impl Model for AutoEts {
    fn name(&self) -> &'static str {
        "ets"
    }
    fn forecast(
        &self,
        history: &[f64],
        horizon: usize,
        level: f64,
    ) -> Result<Forecast, ModelError> {
        self.config.validate()?;
        check_input("ets", history, 4, horizon, level)?;
        let y = tail(history, self.config.max_train);
        let fit = self.fit(y)?;
        let warm = fit
            .spec
            .season
            .map_or(10, |m| 2 * m)
            .min(y.len() / 2)
            .max(1);
        let cal = calibrate(
            y,
            warm,
            horizon,
            level,
            self.config.calib_origins,
            |t, h| fit.point(t, h),
        );
        let mean = fit.point(y.len(), horizon);
        Ok(assemble(fit.spec.label(), mean, &cal, level))
    }
}
