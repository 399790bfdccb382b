//! `auto`: per-series choice among cheap candidates by rolling-origin
//! backtest, re-evaluated as data arrives.
//!
//! Candidates are O(1)-O(window) per origin (naive, moving means and
//! medians, simple exponential smoothing at fixed smoothing constants, a
//! damped-trend Holt, drift over recent slopes, partial reversion of the last
//! value towards a moving mean or median with per-step coefficients fitted
//! on the backtest, and with a season: seasonal naive and season-long
//! means). A backtest over
//! the recent window scores each candidate at every step `h`; at each step
//! the best `top_k` candidates within [`COMBINE_WITHIN`] of the best score
//! are combined with inverse-MAE weights, and the combination's own
//! backtest errors (out of sample: nothing is fitted on the origins it is
//! scored on) give the conformal interval offsets. A wider combination
//! ([`AutoConfig::combine_wide`]: more candidates, a looser factor) replaces
//! the narrow one for a series when, built from the older half of the
//! origins, it forecasts the newer half better.
//!
//! Full models ([`FullModel`]: ETS, ARIMA, the lag-feature forest, and when
//! configured the Prophet-style model and a trained global LSTM) compete
//! too. Each is fitted once per selection on the history before the first
//! backtest origin, forecasts with frozen parameters from every
//! `full_stride`-th origin (their cost is what the stride bounds), and is
//! scored like any candidate. A chosen full model keeps its frozen fit
//! until the next selection; the cached path only re-runs its filter on the
//! newest data.
//!
//! Plateaus: on step-like series (runs of one repeated value, then jumps)
//! the backtest may choose to hold the last value exactly whenever the
//! newest [`HOLD_RUNS`] values are identical, and a last-plateau candidate
//! forecasts the level a short dip returns to ([`AutoConfig::hold_flat`]);
//! only from below: a rise above the plateau is a new level
//! ([`AutoConfig::plateau_dips_only`]). On step-like series (at least half
//! of the backtest window's consecutive values repeat exactly) the last
//! value is held on every repeat, and the last value is served outright
//! unless the combination beats it on both halves of the backtest
//! ([`AutoConfig::naive_guard`]).
//!
//! Intervals: the combination's backtest errors give conformal offsets at
//! an interval level chosen per series out of sample
//! ([`AutoConfig::calibrate_level`]): the smallest level whose offsets from
//! the older half of the origins cover the nominal share of the newer
//! half's errors.
//!
//! Level shifts: a CUSUM test on the recent window locates a shift; window
//! candidates then ignore data before it and backtest origins before it are
//! down-weighted, so a stale regime does not drive the choice.
//!
//! [`AutoSelector`] keeps the selection between calls: the fast path only
//! evaluates the chosen candidates at the newest origin (a few microseconds
//! to tens of microseconds), and the backtest reruns every
//! `reselect_every` calls, when the horizon or level changes, or when a level
//! shift appears or disappears.

use std::sync::Arc;

use super::arima::{winsorize_trailing, FittedArima};
use super::baseline::{median, median_point};
use super::conformal::{assemble, calibrate, conformal_quantile, Calibration};
use super::ets::{AutoEts, FittedEts};
use super::lagreg::FittedLagReg;
use super::lstm::Lstm;
use super::prophet::FittedProphet;
use super::{check_input, tail, Forecast, Model, ModelConfig, ModelError};

/// The full models that compete in `auto` beside the cheap candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FullModel {
    /// [`super::ets`], AICc choice of trend/season.
    Ets,
    /// [`super::arima`] on the trailing-window winsorized series.
    Arima,
    /// [`super::prophet`], the changepoint-trend + Fourier regression.
    Prophet,
    /// [`super::lagreg`], the lag-feature random forest.
    LagReg,
    /// [`super::lstm`], only when a trained global model is supplied.
    Lstm,
}

impl FullModel {
    /// Every full model, in a stable order.
    pub const ALL: [FullModel; 5] = [
        FullModel::Ets,
        FullModel::Arima,
        FullModel::Prophet,
        FullModel::LagReg,
        FullModel::Lstm,
    ];

    /// The full model called `name` (as in [`super::MODEL_NAMES`]).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Name as in [`super::MODEL_NAMES`].
    pub fn name(self) -> &'static str {
        match self {
            FullModel::Ets => "ets",
            FullModel::Arima => "arima",
            FullModel::Prophet => "prophet",
            FullModel::LagReg => "lagreg",
            FullModel::Lstm => "lstm",
        }
    }
}

/// Full models in `auto` by default: on the tuning containers (GenAI hashes
/// 0-4) the Prophet-style model and the global LSTM made `auto` worse when
/// added (their backtest wins did not carry over), so they compete only
/// when configured.
pub const DEFAULT_FULL_MODELS: [FullModel; 3] =
    [FullModel::Ets, FullModel::Arima, FullModel::LagReg];

/// A full model fitted once per selection on the history before the first
/// backtest origin; its parameters stay frozen until the next selection,
/// and newer data only updates its state (filters re-run with the same
/// coefficients, the forest and the LSTM read the newest lags).
#[derive(Debug)]
enum Frozen {
    Ets(FittedEts),
    /// The fit and the winsorizing band it was fitted with.
    Arima(FittedArima, f64),
    /// Refitted on serve: a function of time, not of recent values.
    Prophet(FittedProphet),
    LagReg(FittedLagReg),
    Lstm(Lstm),
}

/// Shortest series (before the first backtest origin) a full model is fitted on.
const FULL_MIN_TRAIN: usize = 120;
/// Points the serving path of ARIMA re-filters (its state forgets faster).
const ARIMA_SERVE_TAIL: usize = 480;
/// Training rows of the forest inside a selection (a third of the
/// standalone model's, for a third of the fit time).
const LAGREG_ROWS: usize = 300;

impl Frozen {
    fn fit(
        m: FullModel,
        train: &[f64],
        horizon: usize,
        cfg: &ModelConfig,
        lstm: Option<&Lstm>,
    ) -> Option<Self> {
        match m {
            FullModel::Ets => AutoEts::new(cfg.clone()).fit(train).ok().map(Frozen::Ets),
            FullModel::Arima => {
                let (yc, band) = winsorize_trailing(train, train.len(), None);
                FittedArima::fit_auto(&yc)
                    .ok()
                    .map(|f| Frozen::Arima(f, band))
            }
            FullModel::Prophet => FittedProphet::fit(train, cfg.season)
                .ok()
                .map(Frozen::Prophet),
            FullModel::LagReg => {
                FittedLagReg::fit_rows(train, cfg.season, horizon, cfg.seed, LAGREG_ROWS)
                    .ok()
                    .map(Frozen::LagReg)
            }
            FullModel::Lstm => lstm.filter(|l| l.is_trained()).cloned().map(Frozen::Lstm),
        }
    }

    /// Forecasts of `horizon` steps from each origin `t` (using `y[..t]`);
    /// `None` when the model cannot forecast this series.
    fn forecasts(&self, y: &[f64], origins: &[usize], horizon: usize) -> Option<Vec<Vec<f64>>> {
        let out: Vec<Vec<f64>> = match self {
            Frozen::Ets(f) => {
                let g = f.refilter(y);
                origins.iter().map(|&t| g.point(t, horizon)).collect()
            }
            Frozen::Arima(f, band) => {
                let (yc, _) = winsorize_trailing(y, 0, Some(*band));
                let g = f.refilter(&yc);
                origins.iter().map(|&t| g.point(&yc, t, horizon)).collect()
            }
            Frozen::Prophet(f) => origins
                .iter()
                .map(|&t| (t..t + horizon).map(|i| f.at(i)).collect())
                .collect(),
            Frozen::LagReg(f) => {
                let req: Vec<(usize, usize)> = origins.iter().map(|&t| (t, horizon)).collect();
                f.point_many(y, &req).ok()?
            }
            Frozen::Lstm(l) => origins
                .iter()
                .map(|&t| l.point_at(y, t, horizon))
                .collect::<Option<_>>()?,
        };
        if !out.iter().all(|f| f.len() == horizon) {
            return None;
        }
        // Keep each forecast within the range seen before its origin,
        // widened by half its span: a fitted model that extrapolates wildly
        // (an LSTM fed an unseen burst, a twice-differenced ARIMA) cannot
        // wreck a combination.
        let mut out = out;
        let mut lo = f64::INFINITY;
        let mut hi = f64::NEG_INFINITY;
        let mut seen = 0;
        for (&t, f) in origins.iter().zip(&mut out) {
            for v in &y[seen..t] {
                lo = lo.min(*v);
                hi = hi.max(*v);
            }
            seen = seen.max(t);
            // A flat recent window (an idle device) carries nothing but its
            // level: forecast the level, as the cheap candidates do.
            let recent = &y[t.saturating_sub(FLAT_WINDOW)..t];
            if recent.iter().all(|v| *v == y[t - 1]) {
                f.fill(y[t - 1]);
                continue;
            }
            let pad = 0.5 * (hi - lo);
            for v in f.iter_mut() {
                if !v.is_finite() {
                    return None;
                }
                *v = v.clamp(lo - pad, hi + pad);
            }
        }
        Some(out)
    }

    /// Forecast from the end of `y` for serving.
    fn forecast_now(&self, y: &[f64], horizon: usize, season: Option<usize>) -> Option<Vec<f64>> {
        match self {
            Frozen::Prophet(_) => {
                let f = FittedProphet::fit(y, season).ok()?;
                Frozen::Prophet(f).forecasts(y, &[y.len()], horizon)
            }
            Frozen::Arima(..) => {
                let y = tail(y, ARIMA_SERVE_TAIL);
                self.forecasts(y, &[y.len()], horizon)
            }
            _ => self.forecasts(y, &[y.len()], horizon),
        }?
        .pop()
    }
}

/// Candidates join the combination at a step only when their backtest
/// MAE is within this factor of the best one (a perfect backtest keeps
/// only the perfect), so a weak model cannot dilute a strong one.
pub const COMBINE_WITHIN: f64 = 1.25;

/// A window this long of one repeated value makes every full model
/// forecast that value.
const FLAT_WINDOW: usize = 30;

/// Frozen fits a selection keeps for serving; compared by identity.
#[derive(Debug, Clone, Default)]
struct FrozenSet(Vec<(FullModel, Arc<Frozen>)>);

impl PartialEq for FrozenSet {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(&other.0)
                .all(|(a, b)| a.0 == b.0 && Arc::ptr_eq(&a.1, &b.1))
    }
}

/// Settings of the `auto` selector.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoConfig {
    /// Shared model settings (season, training cap, seed).
    pub model: ModelConfig,
    /// Backtest origins lie in this many most recent points (at least seven
    /// seasons when a season is set).
    pub backtest_window: usize,
    /// Steps between backtest origins.
    pub stride: usize,
    /// Candidates combined at each step.
    pub top_k: usize,
    /// Forecast calls between two full re-selections.
    pub reselect_every: usize,
    /// Window lengths of the moving mean/median candidates.
    pub windows: Vec<usize>,
    /// Smoothing constants of the exponential-smoothing candidates.
    pub alphas: Vec<f64>,
    /// Windows of the mean/median-reversion candidates.
    pub revert_windows: Vec<usize>,
    /// Windows of the drift (recent mean slope) candidates, which let
    /// steady ramps such as leaks be extrapolated.
    pub drift_windows: Vec<usize>,
    /// Full models that compete beside the cheap candidates (the LSTM only
    /// with a trained global model, see [`AutoSelector::with_global_lstm`]).
    pub full_models: Vec<FullModel>,
    /// Full models forecast from every `full_stride`-th backtest origin
    /// only: the knob that bounds their share of a selection's cost.
    pub full_stride: usize,
    /// Step-like series (long runs of one repeated value, then jumps):
    /// lets the backtest choose to hold the last value exactly whenever the
    /// newest [`HOLD_RUNS`] values are identical, and adds the
    /// last-plateau candidate. Off reproduces the selector without either.
    pub hold_flat: bool,
    /// Candidates join the combination at a step when their backtest MAE
    /// is within this factor of the best one (see [`COMBINE_WITHIN`]).
    pub combine_within: f64,
    /// The last-plateau candidate returns to the plateau only from below
    /// it (a dip); above it the series has risen to a new level (memory
    /// allocated again after a restart stays allocated) and the candidate
    /// forecasts the last value.
    pub plateau_dips_only: bool,
    /// A wider combination `(top_k, within)` that replaces the narrow one
    /// (`top_k`, `combine_within`) for a series when, built from the older
    /// half of the backtest origins, it has the lower MAE on the newer half
    /// (out of sample for both). Where backtest scores are too noisy to pick
    /// a few candidates (long horizons, smooth series) averaging more of
    /// them forecasts better; `None` always combines narrowly.
    pub combine_wide: Option<(usize, f64)>,
    /// Chooses the interval level per series out of sample
    /// ([`out_of_sample_level`]): offsets from the older half of the
    /// backtest errors must cover the nominal share of the newer half.
    /// Off uses the nominal level's quantiles of all backtest errors.
    pub calibrate_level: bool,
    /// On step-like series (at least half of the backtest window's
    /// consecutive values repeat exactly) holds the last value whenever the
    /// newest two values are identical, and serves the last value outright
    /// when the combination (with that hold) does not beat it on both
    /// halves of the backtest origins: there a backtest win rests on a few
    /// events and need not repeat, and the window being forecast is often
    /// calmer than the backtest's.
    pub naive_guard: bool,
}

impl AutoConfig {
    /// Checks ranges once so selection can rely on them.
    pub fn validate(&self) -> Result<(), ModelError> {
        self.model.validate()?;
        let windows = self
            .windows
            .iter()
            .chain(&self.revert_windows)
            .chain(&self.drift_windows);
        if windows.clone().any(|w| *w == 0) {
            return Err(ModelError::InvalidConfig(
                "auto windows must be at least 1".into(),
            ));
        }
        let factor_ok = |w: f64| w >= 1.0 && w.is_finite();
        let wide_ok = self
            .combine_wide
            .is_none_or(|(k, w)| k >= 1 && factor_ok(w));
        if !factor_ok(self.combine_within) || !wide_ok {
            return Err(ModelError::InvalidConfig(
                "auto combine_within and the wide factor must be finite and >= 1, the wide top_k >= 1".into(),
            ));
        }
        if self.alphas.iter().any(|a| !(*a > 0.0 && *a <= 1.0)) {
            return Err(ModelError::InvalidConfig(
                "auto smoothing constants must be in (0, 1]".into(),
            ));
        }
        if self.backtest_window < 10 || self.stride == 0 || self.top_k == 0 || self.full_stride == 0
        {
            return Err(ModelError::InvalidConfig(
                "auto needs backtest_window >= 10, stride, full_stride and top_k >= 1".into(),
            ));
        }
        Ok(())
    }
}

impl Default for AutoConfig {
    fn default() -> Self {
        Self {
            model: ModelConfig::default(),
            backtest_window: 400,
            stride: 2,
            top_k: 3,
            reselect_every: 10,
            windows: vec![5, 15, 30, 60, 120],
            alphas: vec![0.1, 0.3, 0.6],
            revert_windows: vec![30, 120],
            drift_windows: vec![20, 60],
            full_models: DEFAULT_FULL_MODELS.to_vec(),
            full_stride: 4,
            hold_flat: true,
            combine_within: COMBINE_WITHIN,
            plateau_dips_only: true,
            combine_wide: Some((10, 2.0)),
            calibrate_level: true,
            naive_guard: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Cand {
    Naive,
    Mean(usize),
    Median(usize),
    Ses(f64),
    Holt,
    SeasonalNaive(usize),
    /// Partial reversion of the last value towards a moving mean (`false`)
    /// or median (`true`) of window `w`, with a per-step coefficient fitted on
    /// the backtest origins.
    Revert(usize, bool),
    /// Last value plus the mean slope over the last `w` steps.
    Drift(usize),
    /// A full model with parameters frozen at selection.
    Full(FullModel),
    /// The value of the newest run of [`PLATEAU_RUN`] identical values in
    /// the last [`PLATEAU_LOOKBACK`] points (the last value without one):
    /// on step-like series the level a short dip returns to. With `true`
    /// ([`AutoConfig::plateau_dips_only`]) never below the last value.
    Plateau(bool),
}

impl Cand {
    fn label(&self) -> String {
        match self {
            Cand::Naive => "naive".into(),
            Cand::Mean(w) => format!("mean{w}"),
            Cand::Median(w) => format!("median{w}"),
            Cand::Ses(a) => format!("ses{a}"),
            Cand::Holt => "holt_damped".into(),
            Cand::SeasonalNaive(m) => format!("snaive{m}"),
            Cand::Revert(w, false) => format!("revert_mean{w}"),
            Cand::Revert(w, true) => format!("revert_median{w}"),
            Cand::Drift(w) => format!("drift{w}"),
            Cand::Full(m) => m.name().into(),
            Cand::Plateau(_) => "plateau".into(),
        }
    }
}

/// Run lengths the hold rule may require (chosen per series by backtest):
/// when the newest `r` values are identical the series sits on a plateau
/// and the forecast is that value exactly, so a naive error of zero is not
/// turned into a small non-zero one by smoothers that remember past dips.
pub const HOLD_RUNS: [usize; 3] = [2, 3, 5];

/// Identical values that make a plateau for [`Cand::Plateau`].
const PLATEAU_RUN: usize = 3;
/// How far back [`Cand::Plateau`] looks for a plateau.
const PLATEAU_LOOKBACK: usize = 120;

/// Whether the `run` values before `t` are all identical.
fn flat_before(y: &[f64], t: usize, run: usize) -> bool {
    t >= run && y[t - run..t].iter().all(|v| *v == y[t - 1])
}

/// Value of the newest run of [`PLATEAU_RUN`] identical values before `t`
/// within [`PLATEAU_LOOKBACK`] points; the last value when there is none.
fn plateau_before(y: &[f64], t: usize) -> f64 {
    let start = t.saturating_sub(PLATEAU_LOOKBACK);
    let mut run = 1;
    for i in (start + 1..t).rev() {
        if y[i] == y[i - 1] {
            run += 1;
            if run >= PLATEAU_RUN {
                return y[i];
            }
        } else {
            run = 1;
        }
    }
    y[t - 1]
}

const HOLT_ALPHA: f64 = 0.3;
const HOLT_BETA: f64 = 0.05;
const HOLT_PHI: f64 = 0.9;

/// Precomputed running states for one history, so every candidate forecasts
/// from any origin in O(1) (medians in O(window)).
struct Prep<'a> {
    y: &'a [f64],
    prefix: Vec<f64>,
    ses: Vec<(f64, Vec<f64>)>,
    holt: Vec<(f64, f64)>,
    /// Index of the first point of the current regime, if a shift was found.
    cp: Option<usize>,
    /// Per reversion candidate: coefficient per step.
    revert: Vec<(Cand, Vec<f64>)>,
    /// Per full model: its forecast from the end of `y` (serving only).
    full_now: Vec<(FullModel, Vec<f64>)>,
}

impl<'a> Prep<'a> {
    fn new(y: &'a [f64], cands: &[Cand], cp: Option<usize>) -> Self {
        let mut prefix = Vec::with_capacity(y.len() + 1);
        prefix.push(0.0);
        let mut acc = 0.0;
        for v in y {
            acc += v;
            prefix.push(acc);
        }
        let ses = cands
            .iter()
            .filter_map(|c| match c {
                Cand::Ses(a) => {
                    let mut l = y[0];
                    let lv = y
                        .iter()
                        .map(|v| {
                            l += a * (v - l);
                            l
                        })
                        .collect();
                    Some((*a, lv))
                }
                _ => None,
            })
            .collect();
        let holt = if cands.contains(&Cand::Holt) {
            let (mut l, mut b) = (y[0], 0.0);
            y.iter()
                .map(|v| {
                    let prev = l;
                    l = HOLT_ALPHA * v + (1.0 - HOLT_ALPHA) * (l + HOLT_PHI * b);
                    b = HOLT_BETA * (l - prev) + (1.0 - HOLT_BETA) * HOLT_PHI * b;
                    (l, b)
                })
                .collect()
        } else {
            Vec::new()
        };
        Self {
            y,
            prefix,
            ses,
            holt,
            cp,
            revert: Vec::new(),
            full_now: Vec::new(),
        }
    }

    fn revert_coefs(&self, c: Cand) -> &[f64] {
        self.revert
            .iter()
            .find(|(x, _)| *x == c)
            .map_or(&[], |(_, b)| b.as_slice())
    }

    /// Centre of a reversion candidate at origin `t`.
    fn centre(&self, w: usize, med: bool, t: usize, scratch: &mut Vec<f64>) -> f64 {
        if med {
            self.point(Cand::Median(w), t, 0, scratch)
        } else {
            self.point(Cand::Mean(w), t, 0, scratch)
        }
    }

    /// Fits the per-step reversion coefficients by least squares over the
    /// origins: `y[t+k] - c = b_k (y[t-1] - c)`, `b_k` clamped to `[0, 1]`.
    fn fit_revert(&mut self, cands: &[Cand], origins: &[usize], horizon: usize) {
        let mut scratch = Vec::new();
        let n = self.y.len();
        let mut out = Vec::new();
        for &c in cands {
            let Cand::Revert(w, med) = c else { continue };
            let mut num = vec![0.0; horizon];
            let mut den = vec![0.0; horizon];
            for &t in origins {
                let centre = self.centre(w, med, t, &mut scratch);
                let d0 = self.y[t - 1] - centre;
                for k in 0..horizon.min(n - t) {
                    num[k] += d0 * (self.y[t + k] - centre);
                    den[k] += d0 * d0;
                }
            }
            let mut b: Vec<f64> = num
                .iter()
                .zip(&den)
                .map(|(a, d)| {
                    if *d > 0.0 {
                        (a / d).clamp(0.0, 1.0)
                    } else {
                        1.0
                    }
                })
                .collect();
            // Steps without origins keep the last fitted coefficient.
            for k in 1..horizon {
                if den[k] == 0.0 {
                    b[k] = b[k - 1];
                }
            }
            out.push((c, b));
        }
        self.revert = out;
    }

    fn window_start(&self, t: usize, w: usize) -> usize {
        let s = t.saturating_sub(w);
        match self.cp {
            Some(c) if c < t && c > s => c,
            _ => s,
        }
    }

    /// Forecast of `c` for step `k` (0-based) from origin `t`.
    fn point(&self, c: Cand, t: usize, k: usize, scratch: &mut Vec<f64>) -> f64 {
        let y = self.y;
        match c {
            Cand::Naive => y[t - 1],
            Cand::Mean(w) => {
                let s = self.window_start(t, w);
                (self.prefix[t] - self.prefix[s]) / (t - s) as f64
            }
            Cand::Median(w) => {
                let s = self.window_start(t, w);
                scratch.clear();
                scratch.extend_from_slice(&y[s..t]);
                median(scratch)
            }
            Cand::Ses(a) => self
                .ses
                .iter()
                .find(|(b, _)| *b == a)
                .map_or(y[t - 1], |(_, l)| l[t - 1]),
            Cand::Holt => {
                let (l, b) = self.holt[t - 1];
                // Sum of phi^j for j = 1..=k+1.
                let damp = HOLT_PHI * (1.0 - HOLT_PHI.powi(k as i32 + 1)) / (1.0 - HOLT_PHI);
                l + damp * b
            }
            Cand::SeasonalNaive(m) => y[t - m + (k % m)],
            Cand::Drift(w) => {
                let back = w.min(t - 1);
                if back == 0 {
                    return y[t - 1];
                }
                let slope = (y[t - 1] - y[t - 1 - back]) / back as f64;
                y[t - 1] + (k + 1) as f64 * slope
            }
            Cand::Plateau(false) => plateau_before(y, t),
            Cand::Plateau(true) => plateau_before(y, t).max(y[t - 1]),
            Cand::Full(m) => self
                .full_now
                .iter()
                .find(|(x, _)| *x == m)
                .and_then(|(_, f)| f.get(k).copied())
                .unwrap_or(y[t - 1]),
            Cand::Revert(w, med) => {
                let centre = self.centre(w, med, t, scratch);
                let b = self
                    .revert
                    .iter()
                    .find(|(x, _)| *x == c)
                    .and_then(|(_, b)| b.get(k).copied())
                    .unwrap_or(1.0);
                centre + b * (y[t - 1] - centre)
            }
        }
    }

    /// Flat candidates forecast the same value at every step.
    fn flat(c: Cand) -> bool {
        !matches!(
            c,
            Cand::Holt | Cand::SeasonalNaive(_) | Cand::Revert(..) | Cand::Drift(_) | Cand::Full(_)
        )
    }
}

/// Finds a recent level shift with a CUSUM test over the last `window`
/// points; returns the index (into `y`) of the first point after the shift.
///
/// A shift counts only when the CUSUM statistic is large relative to the
/// noise of first differences *and* the medians before and after differ by
/// more than three robust standard deviations of either segment, so slow
/// drifts and random-walk wander are not reported.
pub fn detect_level_shift(y: &[f64], window: usize) -> Option<usize> {
    let n = y.len();
    let w = window.min(n);
    if w < 30 {
        return None;
    }
    let start = n - w;
    let x = &y[start..];
    let m = x.iter().sum::<f64>() / w as f64;
    let (mut s, mut best, mut arg) = (0.0_f64, 0.0_f64, 0usize);
    for (i, v) in x.iter().enumerate().take(w - 1) {
        s += v - m;
        if s.abs() > best {
            best = s.abs();
            arg = i + 1;
        }
    }
    if arg < 10 || w - arg < 5 {
        return None;
    }
    let mad = |seg: &[f64]| {
        let med = median(seg);
        let dev: Vec<f64> = seg.iter().map(|v| (v - med).abs()).collect();
        (med, 1.4826 * median(&dev))
    };
    let diffs: Vec<f64> = x.windows(2).map(|p| p[1] - p[0]).collect();
    let (_, sd_diff) = mad(&diffs);
    let sigma = (sd_diff / std::f64::consts::SQRT_2).max(1e-12);
    let stat = best / (sigma * (w as f64).sqrt());
    let (mb, sb) = mad(&x[..arg]);
    let (ma, sa) = mad(&x[arg..]);
    let jump = (ma - mb).abs();
    let scale = sb.max(sa).max(1e-9 * (mb.abs() + ma.abs()));
    (stat > 1.5 && jump > 3.0 * scale && jump > 0.0).then_some(start + arg)
}

/// Current choice of the selector (what the service reports).
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// `auto(...)` with the candidates in use, heaviest first.
    pub model_type: String,
    /// Backtest `1 - wMAPE` of the combination.
    pub accuracy: Option<f64>,
    /// Backtest MAE of the combination relative to naive.
    pub rel_mae: Option<f64>,
    /// Distance from the end of the history to a detected level shift.
    pub shift_age: Option<usize>,
    horizon: usize,
    level: f64,
    /// Per step: (candidate, weight).
    weights: Vec<Vec<(Cand, f64)>>,
    lower: Vec<f64>,
    upper: Vec<f64>,
    revert: Vec<(Cand, Vec<f64>)>,
    /// Full models in use, with frozen parameters.
    full: FrozenSet,
    /// Run length of the hold rule, when the backtest chose it.
    hold_run: Option<usize>,
}

/// Stateful `auto` forecaster for one series; cheap between re-selections.
#[derive(Debug, Clone)]
pub struct AutoSelector {
    config: AutoConfig,
    selection: Option<Selection>,
    calls_since: usize,
    /// The last call saw a level shift appear or disappear but was not
    /// allowed to re-select.
    shift_flip_seen: bool,
    /// Cached calibration of the warming forecast.
    warm: Option<WarmCalibration>,
    /// Trained global LSTM, when one is available.
    lstm: Option<Lstm>,
}

/// Interval offsets of the warming forecast, reused for a few calls.
#[derive(Debug, Clone)]
struct WarmCalibration {
    horizon: usize,
    level: f64,
    /// Calls served since it was computed.
    age: usize,
    cal: Calibration,
}

/// Moving-median window of the warming forecast: robust to bursts and
/// one of the candidates, so a series keeps a sane forecast until its
/// first selection.
const WARMING_WINDOW: usize = 30;

/// Why a selector wants a full re-selection, most urgent first (the order
/// of the variants is the priority).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Want {
    /// Never selected (or only for other settings): serving the warming
    /// forecast.
    Initial,
    /// A level shift appeared or disappeared since the selection.
    Shift,
    /// The horizon grew or the level changed.
    Settings,
    /// The re-selection cadence came round.
    Cadence,
}

/// What a [`AutoSelector::forecast_budgeted`] call served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// Ran a full selection (for this reason) and served it.
    Selected(Want),
    /// Served the existing selection (a due re-selection, if any, waits).
    Cached,
    /// Served the warming forecast.
    Warming,
}

impl AutoSelector {
    /// Creates a selector with no choice yet (the first call selects).
    pub fn new(config: AutoConfig) -> Self {
        Self {
            config,
            selection: None,
            calls_since: 0,
            shift_flip_seen: false,
            warm: None,
            lstm: None,
        }
    }

    /// Lets a trained global LSTM compete (an untrained one is ignored:
    /// training per series is too slow for a selection).
    pub fn with_global_lstm(mut self, lstm: Option<Lstm>) -> Self {
        self.lstm = lstm.filter(|l| l.is_trained());
        self
    }

    /// The current choice, if one was made.
    pub fn selection(&self) -> Option<&Selection> {
        self.selection.as_ref()
    }

    /// Forgets the choice so the next call re-selects.
    pub fn invalidate(&mut self) {
        self.selection = None;
        self.shift_flip_seen = false;
    }

    /// Seasonal series need about a week of origins for a stable choice.
    fn backtest_window(&self) -> usize {
        match self.config.model.season {
            Some(m) => self.config.backtest_window.max(7 * m),
            None => self.config.backtest_window,
        }
    }

    fn candidates(&self, n: usize) -> Vec<Cand> {
        let mut c = vec![Cand::Naive, Cand::Holt];
        for &w in &self.config.windows {
            c.push(Cand::Mean(w));
            // Medians cost O(w) per origin: keep them to short windows.
            if w <= 60 {
                c.push(Cand::Median(w));
            }
        }
        for &w in &self.config.drift_windows {
            c.push(Cand::Drift(w));
        }
        for &w in &self.config.revert_windows {
            c.push(Cand::Revert(w, false));
            c.push(Cand::Revert(w, true));
        }
        for &a in &self.config.alphas {
            c.push(Cand::Ses(a));
        }
        if self.config.hold_flat {
            c.push(Cand::Plateau(self.config.plateau_dips_only));
        }
        if let Some(m) = self.config.model.season {
            if n >= 3 * m {
                c.push(Cand::SeasonalNaive(m));
                // Day-scale level: mean over one and three seasons.
                c.push(Cand::Mean(m));
                c.push(Cand::Mean(3 * m));
                c.push(Cand::Revert(m, false));
                c.push(Cand::Revert(3 * m, false));
            }
        }
        c
    }

    /// Forecasts `horizon` steps, re-selecting when due.
    pub fn forecast(
        &mut self,
        history: &[f64],
        horizon: usize,
        level: f64,
    ) -> Result<Forecast, ModelError> {
        self.forecast_budgeted(history, horizon, level, &mut |_| true)
            .map(|(f, _)| f)
    }

    /// Why the next call would re-select, judged from the state left by the
    /// previous call (a level-shift flip is only known once a call saw it).
    /// `Some((want, overdue))`: `overdue` orders cadence re-selections, the
    /// most overdue first. Lets a caller share a selection budget among
    /// many selectors before forecasting them.
    pub fn pending(&self, horizon: usize, level: f64) -> Option<(Want, usize)> {
        let Some(s) = &self.selection else {
            return Some((Want::Initial, 0));
        };
        if self.shift_flip_seen {
            Some((Want::Shift, 0))
        } else if s.horizon < horizon || s.level != level {
            Some((Want::Settings, 0))
        } else if self.calls_since >= self.config.reselect_every {
            Some((Want::Cadence, self.calls_since - self.config.reselect_every))
        } else {
            None
        }
    }

    /// Forecasts `horizon` steps; a due re-selection runs only when `allow`
    /// grants it. Without a grant the previous selection keeps serving
    /// (re-selecting later), and a series never selected (or selected for
    /// other settings) gets the warming forecast: a moving median with
    /// conformal intervals, reported as `auto(warming:median30)`, whose
    /// calibration is cached between calls.
    pub fn forecast_budgeted(
        &mut self,
        history: &[f64],
        horizon: usize,
        level: f64,
        allow: &mut dyn FnMut(Want) -> bool,
    ) -> Result<(Forecast, Served), ModelError> {
        self.config.validate()?;
        check_input("auto", history, 3, horizon, level)?;
        let y = tail(history, self.config.model.max_train);
        let n = y.len();
        let cp = detect_level_shift(y, self.config.backtest_window);
        let shift_age = cp.map(|c| n - c);
        let want = match &self.selection {
            None => Some(Want::Initial),
            Some(s) if s.shift_age.is_some() != shift_age.is_some() => Some(Want::Shift),
            Some(s) if s.horizon < horizon || s.level != level => Some(Want::Settings),
            Some(_) if self.calls_since >= self.config.reselect_every => Some(Want::Cadence),
            Some(_) => None,
        };
        let mut served = Served::Cached;
        if let Some(w) = want {
            if allow(w) {
                self.selection = Some(self.select(y, cp, horizon, level));
                self.calls_since = 0;
                self.warm = None;
                served = Served::Selected(w);
            }
        }
        self.shift_flip_seen = want == Some(Want::Shift) && served == Served::Cached;
        let usable = self
            .selection
            .as_ref()
            .filter(|s| s.horizon >= horizon && s.level == level);
        let Some(sel) = usable else {
            return Ok((self.warming(y, horizon, level), Served::Warming));
        };
        self.calls_since += 1;
        let season = self.config.model.season;
        Ok((serve(sel, y, cp, horizon, level, season), served))
    }

    /// The warming forecast (see [`AutoSelector::forecast_budgeted`]).
    fn warming(&mut self, y: &[f64], horizon: usize, level: f64) -> Forecast {
        let w = WARMING_WINDOW;
        let point = |t: usize, h: usize| median_point(y, t, h, w);
        let stale = self.warm.as_ref().is_some_and(|c| {
            c.horizon < horizon || c.level != level || c.age >= self.config.reselect_every
        });
        if stale {
            self.warm = None;
        }
        let origins = self.config.model.calib_origins;
        let c = self.warm.get_or_insert_with(|| WarmCalibration {
            horizon,
            level,
            age: 0,
            cal: calibrate(y, 1, horizon, level, origins, point),
        });
        c.age += 1;
        let mean = point(y.len(), horizon);
        assemble(format!("auto(warming:median{w})"), mean, &c.cal, level)
    }

    /// Runs the backtest and builds a new selection.
    fn select(&self, y: &[f64], cp: Option<usize>, horizon: usize, level: f64) -> Selection {
        let n = y.len();
        let mut cands = self.candidates(n);
        let min_origin = cands
            .iter()
            .map(|c| match c {
                Cand::SeasonalNaive(m) => *m,
                _ => 1,
            })
            .max()
            .unwrap_or(1)
            .max(2);
        let first = n
            .saturating_sub(self.backtest_window() + horizon)
            .max(min_origin);
        let stride = self.config.stride.max(1);
        let origins: Vec<usize> = (first..n).step_by(stride).collect();
        // Full models: fitted once on the history before the first origin,
        // so their backtest errors are out of sample like everyone else's.
        // They forecast from every `full_stride`-th origin only (their
        // forecasts cost far more than the cheap candidates'); elsewhere
        // their cells stay NaN and are left out of their scores.
        let full_stride = self.config.full_stride.max(1);
        let full_origins: Vec<usize> = origins.iter().copied().step_by(full_stride).collect();
        let mut full: Vec<(FullModel, Arc<Frozen>, Vec<Vec<f64>>)> = Vec::new();
        if first >= FULL_MIN_TRAIN {
            for &m in &self.config.full_models {
                let fit = Frozen::fit(
                    m,
                    &y[..first],
                    horizon,
                    &self.config.model,
                    self.lstm.as_ref(),
                );
                if let Some(fz) = fit {
                    if let Some(f) = fz.forecasts(y, &full_origins, horizon) {
                        full.push((m, Arc::new(fz), f));
                        cands.push(Cand::Full(m));
                    }
                }
            }
        }
        let mut prep = Prep::new(y, &cands, cp);
        let nc = cands.len();
        prep.fit_revert(&cands, &origins, horizon);
        // Forecast cube: origin x candidate x step (NaN = not forecast).
        let mut fc = vec![f64::NAN; origins.len() * nc * horizon];
        let mut scratch = Vec::new();
        for (oi, &t) in origins.iter().enumerate() {
            let steps = horizon.min(n - t);
            for (ci, &c) in cands.iter().enumerate() {
                let base = (oi * nc + ci) * horizon;
                if let Cand::Full(m) = c {
                    let f = full.iter().find(|(x, _, _)| *x == m);
                    if let Some((_, _, f)) = f.filter(|_| oi % full_stride == 0) {
                        fc[base..base + steps].copy_from_slice(&f[oi / full_stride][..steps]);
                    }
                } else if Prep::flat(c) {
                    let v = prep.point(c, t, 0, &mut scratch);
                    fc[base..base + steps].fill(v);
                } else if let Cand::Revert(w, med) = c {
                    let centre = prep.centre(w, med, t, &mut scratch);
                    let d0 = y[t - 1] - centre;
                    let b = prep.revert_coefs(c);
                    for k in 0..steps {
                        fc[base + k] = centre + b.get(k).copied().unwrap_or(1.0) * d0;
                    }
                } else {
                    for k in 0..steps {
                        fc[base + k] = prep.point(c, t, k, &mut scratch);
                    }
                }
            }
        }
        // Origins whose forecasts start before a level shift describe the
        // old regime: keep them but with less say.
        let weight = |t: usize| match cp {
            Some(c) if t < c => 0.25,
            _ => 1.0,
        };
        // Weighted MAE per step and candidate, over all origins and over
        // the older half only (for the out-of-sample choice of the
        // combination width below).
        let half = origins.len() / 2;
        let mut mae = vec![0.0; horizon * nc];
        let mut wsum = vec![0.0; horizon * nc];
        let mut mae_old = vec![0.0; horizon * nc];
        let mut wsum_old = vec![0.0; horizon * nc];
        for (oi, &t) in origins.iter().enumerate() {
            let w = weight(t);
            for k in 0..horizon.min(n - t) {
                let actual = y[t + k];
                for ci in 0..nc {
                    let f = fc[(oi * nc + ci) * horizon + k];
                    if !f.is_nan() {
                        let e = w * (actual - f).abs();
                        mae[k * nc + ci] += e;
                        wsum[k * nc + ci] += w;
                        if oi < half {
                            mae_old[k * nc + ci] += e;
                            wsum_old[k * nc + ci] += w;
                        }
                    }
                }
            }
        }
        let combine = |mae: &[f64], wsum: &[f64], top_k: usize, within: f64| {
            combination_weights(&cands, mae, wsum, horizon, top_k, within)
        };
        let narrow = (self.config.top_k.max(1), self.config.combine_within);
        // Wide or narrow combination: each built from the older half of the
        // origins and scored on the newer half, where neither was fitted.
        let (top_k, within) = match self.config.combine_wide {
            Some(wide) if half > 0 => {
                let a = combine(&mae_old, &wsum_old, narrow.0, narrow.1);
                let b = combine(&mae_old, &wsum_old, wide.0.max(1), wide.1);
                let (mut ea, mut eb) = (0.0, 0.0);
                for (oi, &t) in origins.iter().enumerate().skip(half) {
                    for k in 0..horizon.min(n - t) {
                        let at = |ws: &[Vec<(Cand, f64)>]| -> f64 {
                            ws[k]
                                .iter()
                                .map(|(c, w)| {
                                    let ci = cands.iter().position(|x| x == c).unwrap_or(0);
                                    w * fc[(oi * nc + ci) * horizon + k]
                                })
                                .sum()
                        };
                        let (fa, fb) = (at(&a), at(&b));
                        if fa.is_nan() || fb.is_nan() {
                            continue;
                        }
                        let w = weight(t);
                        ea += w * (y[t + k] - fa).abs();
                        eb += w * (y[t + k] - fb).abs();
                    }
                }
                if eb < ea {
                    wide
                } else {
                    narrow
                }
            }
            _ => narrow,
        };
        let weights = combine(&mae, &wsum, top_k.max(1), within);
        // The combination's forecast per origin and step (NaN where a
        // chosen full model did not forecast).
        let comb = |oi: usize, k: usize| -> f64 {
            weights[k]
                .iter()
                .map(|(c, w)| {
                    let ci = cands.iter().position(|x| x == c).unwrap_or(0);
                    w * fc[(oi * nc + ci) * horizon + k]
                })
                .sum()
        };
        // Hold rule: on the same origins, holding the last value exactly
        // wherever the newest `r` values are identical must not lose to the
        // combination (ties hold: an exact level is what a plateau repeats).
        let repeats = y[first - 1..].windows(2).filter(|p| p[0] == p[1]).count();
        let step_like = 2 * repeats >= n - first;
        let hold_run = if self.config.naive_guard && step_like {
            // Step-like: a repeat is a plateau more often than the
            // backtest's few events suggest.
            Some(HOLD_RUNS[0])
        } else if self.config.hold_flat {
            let mut plain = 0.0;
            let mut held = [0.0; HOLD_RUNS.len()];
            let mut fired = [0usize; HOLD_RUNS.len()];
            for (oi, &t) in origins.iter().enumerate() {
                for k in 0..horizon.min(n - t) {
                    let f = comb(oi, k);
                    if f.is_nan() {
                        continue;
                    }
                    let actual = y[t + k];
                    plain += (actual - f).abs();
                    for (i, &r) in HOLD_RUNS.iter().enumerate() {
                        let flat = flat_before(y, t, r);
                        fired[i] += usize::from(flat);
                        held[i] += (actual - if flat { y[t - 1] } else { f }).abs();
                    }
                }
            }
            // Only a rule that fired on the history has evidence for it.
            (0..HOLD_RUNS.len())
                .filter(|&i| fired[i] > 0 && held[i] <= plain)
                .min_by(|&a, &b| held[a].total_cmp(&held[b]))
                .map(|i| HOLD_RUNS[i])
        } else {
            None
        };
        // Naive guard: the combination (with the hold rule) must beat the
        // last value on both halves of the origins, or the series is served
        // the last value.
        let naive_fallback = self.config.naive_guard && step_like && half > 0 && {
            let mut e_comb = [0.0; 2];
            let mut e_naive = [0.0; 2];
            for (oi, &t) in origins.iter().enumerate() {
                let part = usize::from(oi >= half);
                for k in 0..horizon.min(n - t) {
                    let mut f = comb(oi, k);
                    if f.is_nan() {
                        continue;
                    }
                    if hold_run.is_some_and(|r| flat_before(y, t, r)) {
                        f = y[t - 1];
                    }
                    let w = weight(t);
                    e_comb[part] += w * (y[t + k] - f).abs();
                    e_naive[part] += w * (y[t + k] - y[t - 1]).abs();
                }
            }
            (0..2).any(|p| e_comb[p] >= e_naive[p] && e_naive[p] > 0.0)
        };
        let comb = |oi: usize, k: usize| -> f64 {
            if naive_fallback {
                y[origins[oi] - 1]
            } else {
                comb(oi, k)
            }
        };
        let hold_run = hold_run.filter(|_| !naive_fallback);
        // Combination errors give the interval offsets and the accuracy;
        // the older half's errors apart, for the out-of-sample level.
        let mut errs: Vec<Vec<f64>> = vec![Vec::new(); horizon];
        let mut errs_old: Vec<Vec<f64>> = vec![Vec::new(); horizon];
        let mut errs_new: Vec<Vec<f64>> = vec![Vec::new(); horizon];
        let (mut abs_sum, mut act_sum, mut naive_sum) = (0.0, 0.0, 0.0);
        for (oi, &t) in origins.iter().enumerate() {
            for k in 0..horizon.min(n - t) {
                let mut f = comb(oi, k);
                if f.is_nan() {
                    // A chosen full model did not forecast from here.
                    continue;
                }
                if hold_run.is_some_and(|r| flat_before(y, t, r)) {
                    f = y[t - 1];
                }
                let actual = y[t + k];
                let e = actual - f;
                errs[k].push(e);
                if oi < half {
                    errs_old[k].push(e);
                } else {
                    errs_new[k].push(e);
                }
                abs_sum += e.abs();
                act_sum += actual.abs();
                naive_sum += (actual - y[t - 1]).abs();
            }
        }
        let interval_level = if self.config.calibrate_level {
            out_of_sample_level(&mut errs_old, &errs_new, level)
        } else {
            level
        };
        let (lower, upper) = interval_offsets(&mut errs, interval_level);
        let accuracy = if act_sum > 0.0 {
            Some((1.0 - abs_sum / act_sum).clamp(0.0, 1.0))
        } else {
            (!origins.is_empty()).then_some(if abs_sum == 0.0 { 1.0 } else { 0.0 })
        };
        let rel_mae = (naive_sum > 0.0).then(|| abs_sum / naive_sum);
        let weights = if naive_fallback {
            vec![vec![(Cand::Naive, 1.0)]; horizon]
        } else {
            weights
        };
        let mut total: Vec<(Cand, f64)> = Vec::new();
        for step in &weights {
            for (c, w) in step {
                match total.iter_mut().find(|(x, _)| x == c) {
                    Some(e) => e.1 += w,
                    None => total.push((*c, *w)),
                }
            }
        }
        total.sort_by(|a, b| b.1.total_cmp(&a.1));
        let mut names: Vec<String> = total.iter().map(|(c, _)| c.label()).collect();
        if let Some(r) = hold_run {
            names.push(format!("hold{r}"));
        }
        let full = FrozenSet(
            full.into_iter()
                .filter(|(m, _, _)| total.iter().any(|(c, _)| *c == Cand::Full(*m)))
                .map(|(m, fz, _)| (m, fz))
                .collect(),
        );
        Selection {
            model_type: format!("auto({})", names.join("+")),
            accuracy,
            rel_mae,
            shift_age: cp.map(|c| n - c),
            horizon,
            level,
            weights,
            lower,
            upper,
            revert: prep.revert.clone(),
            full,
            hold_run,
        }
    }
}

/// Levels [`out_of_sample_level`] may choose, ascending. The floor keeps a
/// calm newer half from collapsing the interval of a series whose bursts
/// lie further back.
pub const LEVEL_GRID: [f64; 12] = [
    0.80, 0.85, 0.88, 0.90, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 0.995,
];

/// Fewest newer-half errors that may move the level off nominal.
const LEVEL_MIN_ERRORS: usize = 40;

/// Per-step interval offsets from signed errors (`errs[k]` for step `k`,
/// sorted here) at `level`: conformal quantiles, grown like a random walk
/// where a step has fewer than 5 errors, and never narrower than the step
/// before.
fn interval_offsets(errs: &mut [Vec<f64>], level: f64) -> (Vec<f64>, Vec<f64>) {
    let horizon = errs.len();
    let p_lo = (1.0 - level) / 2.0;
    let mut lower = vec![0.0; horizon];
    let mut upper = vec![0.0; horizon];
    for k in 0..horizon {
        let e = &mut errs[k];
        if e.len() >= 5 {
            if !e.is_sorted_by(|a, b| a <= b) {
                e.sort_by(f64::total_cmp);
            }
            lower[k] = conformal_quantile(e, p_lo).min(0.0);
            upper[k] = conformal_quantile(e, 1.0 - p_lo).max(0.0);
        } else if k > 0 {
            let g = ((k + 1) as f64 / k as f64).sqrt();
            lower[k] = lower[k - 1] * g;
            upper[k] = upper[k - 1] * g;
        }
        if k > 0 {
            lower[k] = lower[k].min(lower[k - 1]);
            upper[k] = upper[k].max(upper[k - 1]);
        }
    }
    (lower, upper)
}

/// The interval level whose offsets, built from the older half of the
/// backtest errors, cover at least `level` of the newer half's errors: the
/// smallest such level in [`LEVEL_GRID`] (its top when none does). Backtest
/// errors describe the series' recent past, not its future: where the
/// older half held bursts the newer half did not, nominal offsets
/// over-cover out of sample, and where the series got noisier they
/// under-cover. With too few newer errors the level stays nominal.
fn out_of_sample_level(old: &mut [Vec<f64>], new: &[Vec<f64>], level: f64) -> f64 {
    let total: usize = new.iter().map(Vec::len).sum();
    if total < LEVEL_MIN_ERRORS || old.iter().all(Vec::is_empty) {
        return level;
    }
    for e in old.iter_mut() {
        e.sort_by(f64::total_cmp);
    }
    let need = level * total as f64;
    let mut chosen = LEVEL_GRID[LEVEL_GRID.len() - 1];
    for &l in &LEVEL_GRID {
        let (lower, upper) = interval_offsets(old, l);
        let covered = new
            .iter()
            .enumerate()
            .map(|(k, es)| {
                es.iter()
                    .filter(|e| **e >= lower[k] && **e <= upper[k])
                    .count()
            })
            .sum::<usize>();
        if covered as f64 >= need {
            chosen = l;
            break;
        }
    }
    chosen
}

/// Per step, the best `top_k` candidates whose (step-smoothed) backtest MAE
/// is within `within` of the best, with inverse-MAE weights; a step without
/// any score keeps the previous step's choice (naive at the first).
fn combination_weights(
    cands: &[Cand],
    mae: &[f64],
    wsum: &[f64],
    horizon: usize,
    top_k: usize,
    within: f64,
) -> Vec<Vec<(Cand, f64)>> {
    let nc = cands.len();
    let mut weights: Vec<Vec<(Cand, f64)>> = Vec::with_capacity(horizon);
    let mut last_good: Option<Vec<(Cand, f64)>> = None;
    for k in 0..horizon {
        // Smooth the scores over neighbouring steps: far steps have few
        // origins and noisy scores.
        let lo = k - k / 4;
        let hi = (k + k / 4).min(horizon - 1);
        let mut score: Vec<(usize, f64)> = (0..nc)
            .map(|ci| {
                let (mut s, mut ws) = (0.0, 0.0);
                for kk in lo..=hi {
                    s += mae[kk * nc + ci];
                    ws += wsum[kk * nc + ci];
                }
                (ci, if ws > 0.0 { s / ws } else { f64::INFINITY })
            })
            .collect();
        score.sort_by(|a, b| a.1.total_cmp(&b.1));
        let best = score[0].1;
        let chosen: Vec<(Cand, f64)> = if best.is_finite() {
            // A perfect backtest (idle series) keeps only the perfect.
            let top: Vec<(usize, f64)> = score
                .into_iter()
                .filter(|(_, s)| s.is_finite() && *s <= within * best)
                .take(top_k.max(1))
                .collect();
            let inv: Vec<f64> = top.iter().map(|(_, s)| 1.0 / s.max(1e-12)).collect();
            let tot: f64 = inv.iter().sum();
            top.iter()
                .zip(&inv)
                .map(|((ci, _), w)| (cands[*ci], w / tot))
                .collect()
        } else {
            last_good
                .clone()
                .unwrap_or_else(|| vec![(Cand::Naive, 1.0)])
        };
        last_good = Some(chosen.clone());
        weights.push(chosen);
    }
    weights
}

/// The fast path: the chosen candidates at the newest origin plus the
/// selection's interval offsets.
fn serve(
    sel: &Selection,
    y: &[f64],
    cp: Option<usize>,
    horizon: usize,
    level: f64,
    season: Option<usize>,
) -> Forecast {
    let n = y.len();
    let mut used: Vec<Cand> = Vec::new();
    for step in &sel.weights[..horizon] {
        for (c, _) in step {
            if !used.contains(c) {
                used.push(*c);
            }
        }
    }
    let mut prep = Prep::new(y, &used, cp);
    prep.revert = sel.revert.clone();
    prep.full_now = sel
        .full
        .0
        .iter()
        .filter_map(|(m, fz)| Some((*m, fz.forecast_now(y, horizon, season)?)))
        .collect();
    let mut scratch = Vec::new();
    let mut mean = Vec::with_capacity(horizon);
    for k in 0..horizon {
        let v: f64 = sel.weights[k]
            .iter()
            .map(|(c, w)| w * prep.point(*c, n, k, &mut scratch))
            .sum();
        mean.push(v);
    }
    if sel.hold_run.is_some_and(|r| flat_before(y, n, r)) {
        mean.fill(y[n - 1]);
    }
    let lower = mean.iter().zip(&sel.lower).map(|(m, l)| m + l).collect();
    let upper = mean.iter().zip(&sel.upper).map(|(m, u)| m + u).collect();
    Forecast {
        mean,
        lower,
        upper,
        level,
        model_type: sel.model_type.clone(),
        accuracy: sel.accuracy,
        rel_mae: sel.rel_mae,
    }
}

/// Stateless `auto` for the [`Model`] trait: selects afresh on every call.
#[derive(Debug, Clone)]
pub struct Auto {
    config: AutoConfig,
    lstm: Option<Lstm>,
}

impl Auto {
    /// Creates the model.
    pub fn new(config: AutoConfig) -> Self {
        Self { config, lstm: None }
    }

    /// Lets a trained global LSTM compete (see
    /// [`AutoSelector::with_global_lstm`]).
    pub fn with_global_lstm(mut self, lstm: Option<Lstm>) -> Self {
        self.lstm = lstm.filter(|l| l.is_trained());
        self
    }
}

impl Model for Auto {
    fn name(&self) -> &'static str {
        "auto"
    }
    fn forecast(
        &self,
        history: &[f64],
        horizon: usize,
        level: f64,
    ) -> Result<Forecast, ModelError> {
        AutoSelector::new(self.config.clone())
            .with_global_lstm(self.lstm.clone())
            .forecast(history, horizon, level)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noisy(level: f64, len: usize, seed: usize) -> Vec<f64> {
        (0..len)
            .map(|i| level + ((i * 7 + seed) % 5) as f64 - 2.0)
            .collect()
    }

    #[test]
    fn denied_selection_serves_warming_then_cached_until_granted() {
        let mut sel = AutoSelector::new(AutoConfig::default());
        let y = noisy(40.0, 300, 1);
        let (f, served) = sel.forecast_budgeted(&y, 10, 0.9, &mut |_| false).unwrap();
        assert_eq!(served, Served::Warming);
        assert_eq!(f.model_type, "auto(warming:median30)");
        assert!(f.lower.iter().zip(&f.upper).all(|(l, u)| l < u));
        assert_eq!(sel.pending(10, 0.9), Some((Want::Initial, 0)));

        let (f, served) = sel.forecast_budgeted(&y, 10, 0.9, &mut |_| true).unwrap();
        assert_eq!(served, Served::Selected(Want::Initial));
        assert!(!f.model_type.contains("warming"));
        assert_eq!(sel.pending(10, 0.9), None);

        // A level shift appears: denied, the old selection keeps serving
        // and the selector asks for a shift re-selection.
        let mut shifted = y.clone();
        shifted.extend(noisy(75.0, 120, 3));
        let (g, served) = sel
            .forecast_budgeted(&shifted, 10, 0.9, &mut |_| false)
            .unwrap();
        assert_eq!(served, Served::Cached);
        assert_eq!(g.model_type, f.model_type);
        assert_eq!(sel.pending(10, 0.9), Some((Want::Shift, 0)));
        let (_, served) = sel
            .forecast_budgeted(&shifted, 10, 0.9, &mut |_| true)
            .unwrap();
        assert_eq!(served, Served::Selected(Want::Shift));
        assert_eq!(sel.pending(10, 0.9), None);
    }

    #[test]
    fn full_models_compete_and_win_where_they_fit() {
        // A noisy sine of period 40: an AR(2) describes it, none of the
        // cheap smoothers does.
        let y: Vec<f64> = (0..900)
            .map(|t| {
                50.0 + 10.0 * (std::f64::consts::TAU * t as f64 / 40.0).sin()
                    + ((t * 7919) % 13) as f64 * 0.05
            })
            .collect();
        let (hist, future) = y.split_at(880);
        let cheap = AutoConfig {
            full_models: Vec::new(),
            ..AutoConfig::default()
        };
        let f_cheap = Auto::new(cheap).forecast(hist, 20, 0.9).unwrap();
        let f_full = Auto::new(AutoConfig::default())
            .forecast(hist, 20, 0.9)
            .unwrap();
        let mae = |f: &Forecast| {
            f.mean
                .iter()
                .zip(future)
                .map(|(a, b)| (a - b).abs())
                .sum::<f64>()
                / 20.0
        };
        assert!(
            f_full.model_type.contains("arima") || f_full.model_type.contains("ets"),
            "{}",
            f_full.model_type
        );
        assert!(
            mae(&f_full) < 0.5 * mae(&f_cheap),
            "full {} ({}) vs cheap {} ({})",
            mae(&f_full),
            f_full.model_type,
            mae(&f_cheap),
            f_cheap.model_type
        );
    }

    /// A seeded generator of uniform values in [0, 1) (a 64-bit LCG), so the
    /// synthetic series are the same on every run.
    fn uniform(seed: u64) -> impl FnMut() -> f64 {
        let mut state = seed;
        move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as f64 / (1u64 << 31) as f64
        }
    }

    /// Plateaus with short dips between them, ending on a plateau of
    /// `last_run` points: the shape of the GPU-memory series.
    fn step_like(last_run: usize) -> Vec<f64> {
        let mut y = Vec::new();
        let mut next = uniform(12345);
        while y.len() < 900 {
            let level = 25.0 + 10.0 * next();
            let run = 5 + (40.0 * next()) as usize;
            y.extend(std::iter::repeat_n(level, run));
            y.push(level * (0.2 + 0.6 * next()));
        }
        y.extend(std::iter::repeat_n(31.5, last_run));
        y
    }

    #[test]
    fn flat_recent_history_after_past_jumps_holds_the_last_value_exactly() {
        let y = step_like(8);
        let f = Auto::new(AutoConfig::default())
            .forecast(&y, 15, 0.95)
            .unwrap();
        assert!(f.model_type.contains("hold"), "{}", f.model_type);
        assert!(f.mean.iter().all(|v| *v == 31.5), "{:?}", f.mean);
        // The interval still has width: the plateau can end.
        assert!(f.lower[14] < 31.5 && f.upper[14] >= 31.5);
        // Without the rule (and the step-like guard, which holds too) the
        // smoothers that remember past dips move off the level.
        let off = Auto::new(AutoConfig {
            hold_flat: false,
            naive_guard: false,
            ..AutoConfig::default()
        })
        .forecast(&y, 15, 0.95)
        .unwrap();
        assert!(off.mean.iter().any(|v| *v != 31.5), "{:?}", off.mean);
        // The cached selector serves the same held level.
        let mut sel = AutoSelector::new(AutoConfig::default());
        let g = sel.forecast(&y, 15, 0.95).unwrap();
        assert_eq!(g.mean, f.mean);
    }

    #[test]
    fn hold_rule_does_not_flatten_a_trend() {
        // A steady ramp with small noise and an exact repeat now and then:
        // holding would lose to the drift candidates on the backtest.
        let mut y: Vec<f64> = (0..800)
            .map(|t| 10.0 + 0.5 * t as f64 + ((t * 7919) % 7) as f64 * 0.1)
            .collect();
        for t in (50..800).step_by(37) {
            y[t] = y[t - 1];
            y[t + 1] = y[t - 1];
        }
        let n = y.len();
        y[n - 2] = y[n - 3];
        y[n - 1] = y[n - 3];
        let f = Auto::new(AutoConfig::default())
            .forecast(&y, 15, 0.95)
            .unwrap();
        assert!(!f.model_type.contains("hold"), "{}", f.model_type);
        let last = y[n - 1];
        assert!(f.mean[14] > last + 3.0, "{:?} from {last}", f.mean);
    }

    #[test]
    fn plateau_candidate_is_the_newest_run_of_identical_values() {
        let y = [5.0, 7.0, 7.0, 7.0, 2.0, 3.0];
        assert_eq!(plateau_before(&y, 6), 7.0);
        assert_eq!(plateau_before(&y, 2), 7.0);
        let rising = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(plateau_before(&rising, 4), 4.0);
        assert!(flat_before(&[1.0, 2.0, 2.0], 3, 2));
        assert!(!flat_before(&[1.0, 2.0, 2.0], 3, 3));
    }

    #[test]
    fn plateau_candidate_returns_from_dips_but_not_from_rises() {
        let prep_point = |y: &[f64], dips_only: bool| {
            let c = Cand::Plateau(dips_only);
            Prep::new(y, &[c], None).point(c, y.len(), 0, &mut Vec::new())
        };
        // A dip below the plateau of 30: both forms expect the return.
        let dip = [30.0, 30.0, 30.0, 12.0, 18.0];
        assert_eq!(prep_point(&dip, true), 30.0);
        assert_eq!(prep_point(&dip, false), 30.0);
        // Memory climbing after an idle plateau at 0: only the old form
        // forecasts the idle level again.
        let rise = [0.0, 0.0, 0.0, 5.6, 25.7];
        assert_eq!(prep_point(&rise, true), 25.7);
        assert_eq!(prep_point(&rise, false), 0.0);
    }

    #[test]
    fn wide_combination_takes_more_candidates_but_never_dilutes_a_perfect_one() {
        let cands = [Cand::Naive, Cand::Mean(5), Cand::Mean(15), Cand::Mean(30)];
        // One step; backtest MAE 1.0, 1.1, 1.9, 3.0 over one origin each.
        let mae = [1.0, 1.1, 1.9, 3.0];
        let wsum = [1.0; 4];
        let narrow = combination_weights(&cands, &mae, &wsum, 1, 3, COMBINE_WITHIN);
        let wide = combination_weights(&cands, &mae, &wsum, 1, 10, 2.0);
        let names =
            |w: &[Vec<(Cand, f64)>]| w[0].iter().map(|(c, _)| c.label()).collect::<Vec<_>>();
        assert_eq!(names(&narrow), ["naive", "mean5"]);
        assert_eq!(names(&wide), ["naive", "mean5", "mean15"]);
        let total: f64 = wide[0].iter().map(|(_, w)| w).sum();
        assert!((total - 1.0).abs() < 1e-12);
        // A perfect candidate (idle series) stays alone however wide.
        let perfect = [0.0, 0.5, 0.6, 0.7];
        let wide = combination_weights(&cands, &perfect, &wsum, 1, 10, 2.0);
        assert_eq!(wide[0], vec![(Cand::Naive, 1.0)]);
        // And `auto` on an idle series forecasts its level exactly.
        let mut idle = noisy(10.0, 400, 3);
        idle.extend(std::iter::repeat_n(0.0, 500));
        let f = Auto::new(AutoConfig::default())
            .forecast(&idle, 15, 0.95)
            .unwrap();
        assert!(f.mean.iter().all(|v| *v == 0.0), "{:?}", f.mean);
    }

    #[test]
    fn step_like_series_holds_every_repeat_and_falls_back_to_the_last_value() {
        // A busy step-like history (plateaus of 2-6 points, dips between)
        // ending two points into a new plateau: the guard holds the last
        // value; without it the backtest's smoothers move off the level.
        let mut y = Vec::new();
        let mut next = uniform(99);
        while y.len() < 900 {
            let level = 22.0 + 4.0 * next();
            y.extend(std::iter::repeat_n(level, 2 + (5.0 * next()) as usize));
            y.push(level * (0.5 + 0.4 * next()));
        }
        y.extend([24.7, 24.7]);
        let guarded = Auto::new(AutoConfig::default())
            .forecast(&y, 15, 0.95)
            .unwrap();
        assert!(
            guarded.mean.iter().all(|v| *v == 24.7),
            "{:?}",
            guarded.mean
        );
        let off = Auto::new(AutoConfig {
            naive_guard: false,
            ..AutoConfig::default()
        })
        .forecast(&y, 15, 0.95)
        .unwrap();
        assert!(off.mean.iter().any(|v| *v != 24.7), "{}", off.model_type);
        // A series that is not step-like (no exact repeats) is unaffected.
        let smooth = noisy(40.0, 600, 5)
            .iter()
            .enumerate()
            .map(|(i, v)| v + i as f64 * 1e-3)
            .collect::<Vec<_>>();
        let a = Auto::new(AutoConfig::default())
            .forecast(&smooth, 15, 0.95)
            .unwrap();
        let b = Auto::new(AutoConfig {
            naive_guard: false,
            ..AutoConfig::default()
        })
        .forecast(&smooth, 15, 0.95)
        .unwrap();
        assert_eq!(a.mean, b.mean);
    }

    #[test]
    fn interval_level_follows_newer_half_coverage() {
        // One step. Older half: errors -100..=100 (bursts); newer half: calm
        // errors within +-2. Nominal offsets from the older half cover all of
        // the newer half, so a lower level suffices.
        let mut old = vec![(-100..=100).map(f64::from).collect::<Vec<_>>()];
        let calm = vec![(0..60).map(|i| f64::from(i % 5) - 2.0).collect::<Vec<_>>()];
        let l = out_of_sample_level(&mut old.clone(), &calm, 0.95);
        assert_eq!(l, LEVEL_GRID[0], "calm newer half narrows to the floor");
        // Newer half noisier than the older half: the level rises to the top.
        let wild = vec![(0..600)
            .map(|i| f64::from(i % 301) - 150.0)
            .collect::<Vec<_>>()];
        let l = out_of_sample_level(&mut old.clone(), &wild, 0.95);
        assert_eq!(l, *LEVEL_GRID.last().unwrap());
        // Newer half like the older half: close to nominal.
        let same = vec![(0..402)
            .map(|i| f64::from(i % 201) - 100.0)
            .collect::<Vec<_>>()];
        let l = out_of_sample_level(&mut old.clone(), &same, 0.95);
        assert!((0.92..=0.96).contains(&l), "{l}");
        // Too few newer errors: nominal.
        let few = vec![vec![0.0; LEVEL_MIN_ERRORS - 1]];
        assert_eq!(out_of_sample_level(&mut old, &few, 0.95), 0.95);
    }

    #[test]
    fn interval_narrows_when_bursts_lie_only_in_the_older_backtest_half() {
        // Bursts every 9 steps in the first part of the backtest window,
        // calm noise after: the nominal interval of all backtest errors is
        // sized by the bursts, the out-of-sample level is not.
        let n = 900;
        let calm_from = n - 200;
        let y: Vec<f64> = (0..n)
            .map(|t| {
                let noise = ((t * 7919) % 11) as f64 * 0.1;
                let burst = if t < calm_from && t % 9 == 0 {
                    30.0
                } else {
                    0.0
                };
                20.0 + noise + burst
            })
            .collect();
        let cal = Auto::new(AutoConfig::default())
            .forecast(&y, 5, 0.95)
            .unwrap();
        let nominal = Auto::new(AutoConfig {
            calibrate_level: false,
            ..AutoConfig::default()
        })
        .forecast(&y, 5, 0.95)
        .unwrap();
        let width = |f: &Forecast| f.upper[4] - f.lower[4];
        assert!(
            width(&cal) < 0.5 * width(&nominal),
            "calibrated {} nominal {}",
            width(&cal),
            width(&nominal)
        );
        // Still an interval around the calm noise.
        assert!(width(&cal) > 0.0);
    }

    #[test]
    fn cadence_overdue_grows_while_denied() {
        let mut sel = AutoSelector::new(AutoConfig {
            reselect_every: 3,
            ..AutoConfig::default()
        });
        let y = noisy(20.0, 200, 2);
        sel.forecast_budgeted(&y, 5, 0.9, &mut |_| true).unwrap();
        for _ in 0..2 {
            sel.forecast_budgeted(&y, 5, 0.9, &mut |_| false).unwrap();
        }
        assert_eq!(sel.pending(5, 0.9), Some((Want::Cadence, 0)));
        sel.forecast_budgeted(&y, 5, 0.9, &mut |_| false).unwrap();
        assert_eq!(sel.pending(5, 0.9), Some((Want::Cadence, 1)));
        let (_, served) = sel.forecast_budgeted(&y, 5, 0.9, &mut |_| true).unwrap();
        assert_eq!(served, Served::Selected(Want::Cadence));
    }
}
