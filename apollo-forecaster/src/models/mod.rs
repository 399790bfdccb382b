//! Forecasting models for per-node resource series and the `auto` selector
//! that the service serves by default.
//!
//! Every model takes an equally spaced history (the service resamples) and
//! returns a point forecast for steps `1..=horizon` with a prediction
//! interval at a requested coverage `level` (e.g. 0.95).
//!
//! # Models
//! | name | what | training window |
//! |---|---|---|
//! | `naive` | last value | - |
//! | `seasonal_naive` | value one season back (naive without a season) | - |
//! | `mean`, `median` | moving mean / median over `window` | `window` |
//! | `ets` | ETS(A,{N,A,Ad},{N,A}), Nelder-Mead on SSE, AICc choice | `max_train` |
//! | `arima` | ARIMA(p<=3, d<=2 by ADF, q<=2), Hannan-Rissanen + CSS, AICc, spikes clipped | `max_train` |
//! | `prophet` | changepoint trend + Fourier season, ridge regression (own code) | `max_train` |
//! | `lagreg` | smartcore random forest on lag features, direct multi-step | `max_train`, <= 1,000 rows |
//! | `lstm` | hand-written LSTM (no deep-learning dependency), global across series | see [`lstm`] |
//! | `auto` | per-series backtest selection/combination of cheap candidates and full models (ETS, ARIMA, the forest by default; Prophet-style and a global LSTM when configured); holds the last value exactly on plateaus when the backtest agrees (on step-like series always, and serves the last value unless the combination wins both backtest halves); combines widely where that wins on the newer half of the backtest; interval level chosen out of sample | `max_train` |
//!
//! # Prediction intervals
//! All models use the same split-conformal style method: the fitted model
//! (with its parameters frozen) forecasts from many past origins inside the
//! training window, and the empirical quantiles of the signed `h`-step errors
//! at `(1 - level) / 2` and `(1 + level) / 2` are added to the point forecast
//! (see [`conformal`]). This needs no distributional assumption, so it keeps
//! close to nominal coverage on bursty, skewed series where Gaussian model
//! variance intervals are far too narrow.
//!
//! # Model accuracy
//! [`Forecast::accuracy`] is the backtest accuracy used for `model_accuracy`
//! on the wire: `1 - wMAPE`, clamped to `[0, 1]`, where
//! `wMAPE = sum |error| / sum |actual|` over the backtest origins and steps.
//! [`Forecast::rel_mae`] is the backtest MAE divided by the naive
//! (last-value) MAE on the same origins (below 1 = better than naive).

use thiserror::Error;

pub mod arima;
pub mod auto;
pub mod baseline;
pub mod conformal;
pub mod ets;
pub mod lagreg;
mod linalg;
pub mod lstm;
mod optim;
pub mod prophet;

pub use auto::{Auto, AutoConfig, AutoSelector, FullModel, Selection, Served, Want};

/// Errors from fitting or forecasting; every bad input maps to one of these.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ModelError {
    /// The history holds fewer points than the model needs.
    #[error("history too short for {model}: need at least {need} points, got {got}")]
    TooShort {
        /// Model name.
        model: &'static str,
        /// Minimum number of points.
        need: usize,
        /// Points supplied.
        got: usize,
    },
    /// A history value is NaN or infinite.
    #[error("history value at index {index} is not finite ({value})")]
    NonFinite {
        /// Position in the history.
        index: usize,
        /// The offending value.
        value: f64,
    },
    /// The horizon is zero or larger than the model supports.
    #[error("invalid horizon {0}: must be between 1 and {max}", max = MAX_HORIZON)]
    InvalidHorizon(usize),
    /// The interval level is not strictly between 0 and 1.
    #[error("invalid interval level {0}: must be in (0, 1)")]
    InvalidLevel(f64),
    /// A configuration value is out of range.
    #[error("invalid model configuration: {0}")]
    InvalidConfig(String),
    /// The numerical fit failed (singular system, diverging optimiser).
    #[error("{model} fit failed: {reason}")]
    Fit {
        /// Model name.
        model: &'static str,
        /// What went wrong.
        reason: String,
    },
}

/// Largest horizon any model accepts; keeps memory per request bounded.
pub const MAX_HORIZON: usize = 10_000;

/// Names accepted by [`by_name`], in a stable order.
pub const MODEL_NAMES: &[&str] = &[
    "naive",
    "seasonal_naive",
    "mean",
    "median",
    "ets",
    "arima",
    "prophet",
    "lagreg",
    "lstm",
    "auto",
];

/// A forecast for steps `1..=horizon` after the last history point.
#[derive(Debug, Clone, PartialEq)]
pub struct Forecast {
    /// Point forecast per step.
    pub mean: Vec<f64>,
    /// Lower interval bound per step.
    pub lower: Vec<f64>,
    /// Upper interval bound per step.
    pub upper: Vec<f64>,
    /// Interval coverage the bounds aim at.
    pub level: f64,
    /// Model that produced the forecast (`model_type` on the wire); for
    /// `auto` this names the chosen candidate(s), e.g. `auto(ses_0.3)`.
    pub model_type: String,
    /// Backtest accuracy `1 - wMAPE` in `[0, 1]`, when a backtest ran.
    pub accuracy: Option<f64>,
    /// Backtest MAE relative to the naive forecast, when a backtest ran.
    pub rel_mae: Option<f64>,
}

/// Settings shared by all models.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Season length in steps (e.g. 144 for daily at 10-minute steps);
    /// `None` = no seasonality.
    pub season: Option<usize>,
    /// Models train on at most this many most recent points.
    pub max_train: usize,
    /// Window of the moving mean/median baselines.
    pub window: usize,
    /// Number of past origins used to calibrate the intervals.
    pub calib_origins: usize,
    /// Seed for models with randomness (forest, LSTM).
    pub seed: u64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            season: None,
            max_train: 1_440,
            window: 30,
            calib_origins: 200,
            seed: 42,
        }
    }
}

impl ModelConfig {
    /// Checks ranges once so the models can rely on them.
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.season == Some(0) || self.season == Some(1) {
            return Err(ModelError::InvalidConfig(
                "season must be at least 2 when set".into(),
            ));
        }
        if self.max_train < 8 {
            return Err(ModelError::InvalidConfig(
                "max_train must be at least 8".into(),
            ));
        }
        if self.window == 0 {
            return Err(ModelError::InvalidConfig(
                "window must be at least 1".into(),
            ));
        }
        if self.calib_origins < 10 {
            return Err(ModelError::InvalidConfig(
                "calib_origins must be at least 10 for meaningful intervals".into(),
            ));
        }
        Ok(())
    }
}

/// A forecasting model. Implementations are stateless between calls (all
/// fitting happens inside `forecast`), so one instance serves many series.
pub trait Model: Send + Sync {
    /// Short stable name, as accepted by [`by_name`].
    fn name(&self) -> &'static str;
    /// Forecasts `horizon` steps after `history` with a `level` interval.
    fn forecast(&self, history: &[f64], horizon: usize, level: f64)
        -> Result<Forecast, ModelError>;
}

/// Builds a model by name with the default configuration.
pub fn by_name(name: &str) -> Option<Box<dyn Model>> {
    by_name_with(name, &ModelConfig::default())
}

/// Builds a model by name with a given configuration.
pub fn by_name_with(name: &str, config: &ModelConfig) -> Option<Box<dyn Model>> {
    let c = config.clone();
    Some(match name {
        "naive" => Box::new(baseline::Naive::new(c)),
        "seasonal_naive" => Box::new(baseline::SeasonalNaive::new(c)),
        "mean" => Box::new(baseline::WindowMean::new(c)),
        "median" => Box::new(baseline::WindowMedian::new(c)),
        "ets" => Box::new(ets::AutoEts::new(c)),
        "arima" => Box::new(arima::AutoArima::new(c)),
        "prophet" => Box::new(prophet::Prophet::new(c)),
        "lagreg" => Box::new(lagreg::LagRegression::new(c)),
        "lstm" => Box::new(lstm::Lstm::new(c)),
        "auto" => Box::new(auto::Auto::new(AutoConfig {
            model: c,
            ..AutoConfig::default()
        })),
        _ => return None,
    })
}

/// Checks the common preconditions of every model call.
pub(crate) fn check_input(
    model: &'static str,
    history: &[f64],
    need: usize,
    horizon: usize,
    level: f64,
) -> Result<(), ModelError> {
    if horizon == 0 || horizon > MAX_HORIZON {
        return Err(ModelError::InvalidHorizon(horizon));
    }
    if !(level > 0.0 && level < 1.0) {
        return Err(ModelError::InvalidLevel(level));
    }
    if history.len() < need {
        return Err(ModelError::TooShort {
            model,
            need,
            got: history.len(),
        });
    }
    if let Some((index, &value)) = history.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(ModelError::NonFinite { index, value });
    }
    Ok(())
}

/// The most recent `max` points of `history`.
pub(crate) fn tail(history: &[f64], max: usize) -> &[f64] {
    &history[history.len().saturating_sub(max)..]
}
