//! Non-seasonal ARIMA(p, d, q) with automatic order selection.
//!
//! `d` is chosen by augmented Dickey-Fuller tests (difference while a unit
//! root is not rejected at 5%, at most twice); `p <= 3`, `q <= 2` are
//! scored by AICc of a Hannan-Rissanen conditional least-squares fit (a long
//! AR gives residual estimates, then one linear regression on lagged values
//! and lagged residuals). The chosen order is refined by Nelder-Mead on the
//! conditional sum of squares (CSS). [`AutoArima`] fits on the history
//! with isolated spikes clipped to a band around a rolling median (see
//! [`winsorize`]), since spikes otherwise decide both `d` and the fitted mean. Seasonality is left to the ETS,
//! Prophet-style and lag-regression models.

use super::baseline::median;
use super::conformal::{assemble, calibrate};
use super::linalg::{cholesky_solve, ridge};
use super::optim::nelder_mead;
use super::{check_input, tail, Forecast, Model, ModelConfig, ModelError};

/// A fitted ARIMA model.
#[derive(Debug, Clone)]
pub struct FittedArima {
    /// AR order.
    pub p: usize,
    /// Differencing order.
    pub d: usize,
    /// MA order.
    pub q: usize,
    /// Constant of the differenced series.
    pub c: f64,
    /// AR coefficients.
    pub phi: Vec<f64>,
    /// MA coefficients.
    pub theta: Vec<f64>,
    /// Conditional sum of squares.
    pub css: f64,
    /// AICc of the fit.
    pub aicc: f64,
    /// In-sample residuals aligned with the differenced series.
    resid: Vec<f64>,
    /// The differenced training series.
    w: Vec<f64>,
}

fn diff(x: &[f64]) -> Vec<f64> {
    x.windows(2).map(|p| p[1] - p[0]).collect()
}

/// Augmented Dickey-Fuller t statistic of `x` (constant, `lags` lagged
/// differences): regress `dx_t` on `1, x_{t-1}, dx_{t-1..t-lags}`.
pub fn adf_statistic(x: &[f64], lags: usize) -> Option<f64> {
    let n = x.len();
    if n < lags + 10 {
        return None;
    }
    let dx = diff(x);
    let p = 2 + lags;
    let mut xs = Vec::new();
    let mut ys = Vec::new();
    for t in lags..dx.len() {
        xs.push(1.0);
        xs.push(x[t]);
        for i in 1..=lags {
            xs.push(dx[t - i]);
        }
        ys.push(dx[t]);
    }
    let rows = ys.len();
    let pen = vec![0.0; p];
    let b = ridge(&xs, &ys, p, &pen)?;
    let mut sse = 0.0;
    let mut xtx = vec![0.0; p * p];
    for (row, yv) in xs.chunks_exact(p).zip(&ys) {
        let fit: f64 = row.iter().zip(&b).map(|(a, c)| a * c).sum();
        sse += (yv - fit).powi(2);
        for i in 0..p {
            for j in 0..p {
                xtx[i * p + j] += row[i] * row[j];
            }
        }
    }
    let sigma2 = sse / (rows - p) as f64;
    let mut e1 = vec![0.0; p];
    e1[1] = 1.0;
    let inv = cholesky_solve(&mut xtx, &e1, p)?;
    let se = (sigma2 * inv[1]).sqrt();
    (se > 0.0 && se.is_finite()).then(|| b[1] / se)
}

/// 5% critical value of the ADF test with a constant (asymptotic).
const ADF_CRITICAL: f64 = -2.86;

/// Differencing order by repeated ADF tests: difference while a unit root
/// cannot be rejected at 5%, at most twice. A series without variation is
/// left as is.
pub fn choose_d(y: &[f64]) -> usize {
    let mut d = 0;
    let mut cur = y.to_vec();
    while d < 2 {
        match adf_statistic(&cur, 2) {
            Some(t) if t < ADF_CRITICAL => break,
            // No variation at all: nothing to difference.
            None if cur.windows(2).all(|p| p[0] == p[1]) => break,
            _ => {
                d += 1;
                cur = diff(&cur);
            }
        }
    }
    d
}

/// CSS residuals of an ARMA on `w`; infinite when the AR part explodes.
fn css(w: &[f64], c: f64, phi: &[f64], theta: &[f64], resid: &mut Vec<f64>) -> f64 {
    let p = phi.len();
    resid.clear();
    resid.resize(w.len(), 0.0);
    let mut sse = 0.0;
    for t in p..w.len() {
        let mut pred = c;
        for (i, a) in phi.iter().enumerate() {
            pred += a * w[t - 1 - i];
        }
        for (j, b) in theta.iter().enumerate() {
            if t > j {
                pred += b * resid[t - 1 - j];
            }
        }
        let e = w[t] - pred;
        resid[t] = e;
        sse += e * e;
    }
    sse
}

/// Rejects AR parts whose impulse response does not die out and MA parts
/// that are not invertible (residual recursion would blow up).
fn admissible(phi: &[f64], theta: &[f64]) -> bool {
    let decays = |coef: &[f64], sign: f64| {
        let mut psi = vec![0.0; 80];
        psi[0] = 1.0;
        for t in 1..80 {
            let mut s = 0.0;
            for (i, a) in coef.iter().enumerate() {
                if t > i {
                    s += sign * a * psi[t - 1 - i];
                }
            }
            psi[t] = s;
        }
        psi[60..].iter().all(|v| v.abs() < 0.5)
    };
    decays(phi, 1.0) && decays(theta, -1.0)
}

fn aicc(n: usize, sse: f64, k: usize) -> f64 {
    let (n, k) = (n as f64, k as f64);
    if n - k - 1.0 <= 0.0 {
        return f64::INFINITY;
    }
    n * (sse / n).max(1e-300).ln() + 2.0 * k + 2.0 * k * (k + 1.0) / (n - k - 1.0)
}

/// Hannan-Rissanen estimate of (c, phi, theta) for the given orders.
fn hannan_rissanen(
    w: &[f64],
    long_resid: &[f64],
    start: usize,
    p: usize,
    q: usize,
    with_c: bool,
) -> Option<Vec<f64>> {
    let cols = usize::from(with_c) + p + q;
    if cols == 0 {
        return Some(Vec::new());
    }
    let mut x = Vec::new();
    let mut ys = Vec::new();
    for t in start..w.len() {
        if with_c {
            x.push(1.0);
        }
        for i in 0..p {
            x.push(w[t - 1 - i]);
        }
        for j in 0..q {
            x.push(long_resid[t - 1 - j]);
        }
        ys.push(w[t]);
    }
    let pen = vec![1e-8; cols];
    ridge(&x, &ys, cols, &pen)
}

impl FittedArima {
    /// Fits with automatic order selection.
    pub fn fit_auto(y: &[f64]) -> Result<Self, ModelError> {
        let d = choose_d(y);
        let mut w = y.to_vec();
        for _ in 0..d {
            w = diff(&w);
        }
        let n = w.len();
        if n < 30 {
            return Err(ModelError::TooShort {
                model: "arima",
                need: 30 + d,
                got: y.len(),
            });
        }
        // Long AR for residual estimates.
        let long = 10.min(n / 5);
        let mut long_resid = vec![0.0; n];
        if let Some(b) = hannan_rissanen(&w, &long_resid.clone(), long, long, 0, true) {
            for t in long..n {
                let mut pred = b[0];
                for i in 0..long {
                    pred += b[1 + i] * w[t - 1 - i];
                }
                long_resid[t] = w[t] - pred;
            }
        }
        let start = long + 2;
        let mut best: Option<(usize, usize, Vec<f64>, f64)> = None;
        let mut resid = Vec::new();
        for p in 0..=3 {
            for q in 0..=2 {
                let Some(mut b) = hannan_rissanen(&w, &long_resid, start, p, q, d == 0) else {
                    continue;
                };
                if d > 0 {
                    b.insert(0, 0.0);
                }
                let (phi, theta) = (&b[1..1 + p], &b[1 + p..]);
                if !admissible(phi, theta) {
                    continue;
                }
                let sse = css(&w, b[0], phi, theta, &mut resid);
                let score = aicc(n - p, sse, p + q + 1 + usize::from(d == 0));
                if score.is_finite() && best.as_ref().is_none_or(|x| score < x.3) {
                    best = Some((p, q, b, score));
                }
            }
        }
        let Some((p, q, b0, _)) = best else {
            return Err(ModelError::Fit {
                model: "arima",
                reason: "no admissible order".into(),
            });
        };
        // With d >= 1 a constant would be a drift that compounds over the
        // horizon; it is left out (fixed at zero) as most auto-ARIMA
        // implementations do by default for d = 2, and here for d = 1 too.
        let with_c = d == 0;
        let start_vec: Vec<f64> = if with_c { b0.clone() } else { b0[1..].to_vec() };
        let unpack = |v: &[f64]| -> Vec<f64> {
            if with_c {
                v.to_vec()
            } else {
                std::iter::once(0.0).chain(v.iter().copied()).collect()
            }
        };
        let (v, _) = nelder_mead(
            |v| {
                let b = unpack(v);
                let (phi, theta) = (&b[1..1 + p], &b[1 + p..]);
                if !admissible(phi, theta) {
                    return f64::INFINITY;
                }
                css(&w, b[0], phi, theta, &mut resid)
            },
            &start_vec,
            0.05,
            150 * start_vec.len().max(1),
            1e-10,
        );
        let b = unpack(&v);
        let (phi, theta) = (b[1..1 + p].to_vec(), b[1 + p..].to_vec());
        let sse = css(&w, b[0], &phi, &theta, &mut resid);
        if !sse.is_finite() {
            return Err(ModelError::Fit {
                model: "arima",
                reason: "conditional sum of squares diverged".into(),
            });
        }
        Ok(Self {
            p,
            d,
            q,
            c: b[0],
            aicc: aicc(n - p, sse, p + q + 1 + usize::from(with_c)),
            phi,
            theta,
            css: sse,
            resid,
            w,
        })
    }

    /// The same coefficients run over `y` (typically the training data plus
    /// newer points), so [`FittedArima::point`] works at origins up to
    /// `y.len()` without refitting.
    pub fn refilter(&self, y: &[f64]) -> Self {
        let mut w = y.to_vec();
        for _ in 0..self.d {
            w = diff(&w);
        }
        let mut resid = Vec::new();
        let sse = css(&w, self.c, &self.phi, &self.theta, &mut resid);
        Self {
            css: sse,
            resid,
            w,
            ..self.clone()
        }
    }

    /// Order label, e.g. `ARIMA(1,1,0)`.
    pub fn label(&self) -> String {
        format!("ARIMA({},{},{})", self.p, self.d, self.q)
    }

    /// Forecast of `y[t..t + h]` from `y[..t]` with frozen coefficients;
    /// `y` is the training series the model was fitted on.
    pub fn point(&self, y: &[f64], t: usize, h: usize) -> Vec<f64> {
        let d = self.d;
        // Differenced index i corresponds to y index i + d.
        let tw = t.saturating_sub(d);
        let mut wf: Vec<f64> = self.w[..tw.min(self.w.len())].to_vec();
        let mut ef: Vec<f64> = self.resid[..wf.len()].to_vec();
        for _ in 0..h {
            let i = wf.len();
            let mut pred = self.c;
            for (k, a) in self.phi.iter().enumerate() {
                if i > k {
                    pred += a * wf[i - 1 - k];
                }
            }
            for (k, b) in self.theta.iter().enumerate() {
                if i > k {
                    pred += b * ef[i - 1 - k];
                }
            }
            wf.push(pred);
            ef.push(0.0);
        }
        let future = &wf[wf.len() - h..];
        match d {
            0 => future.to_vec(),
            1 => {
                let mut lvl = y[t - 1];
                future
                    .iter()
                    .map(|dv| {
                        lvl += dv;
                        lvl
                    })
                    .collect()
            }
            _ => {
                let mut lvl = y[t - 1];
                let mut slope = if t >= 2 { y[t - 1] - y[t - 2] } else { 0.0 };
                future
                    .iter()
                    .map(|dv| {
                        slope += dv;
                        lvl += slope;
                        lvl
                    })
                    .collect()
            }
        }
    }
}

/// Clips isolated bursts: values farther than `WINSOR_K` robust standard
/// deviations from a centred rolling median (window `WINSOR_WINDOW`) are
/// pulled back to that band. Gaussian-likelihood fits are otherwise dragged
/// by spikes (the unit-root test and the fitted mean are decided by them),
/// while level shifts and long bursts, which move the rolling median, stay.
pub fn winsorize(y: &[f64]) -> Vec<f64> {
    let n = y.len();
    let half = WINSOR_WINDOW / 2;
    let centre: Vec<f64> = (0..n)
        .map(|i| median(&y[i.saturating_sub(half)..(i + half + 1).min(n)]))
        .collect();
    let dev: Vec<f64> = y.iter().zip(&centre).map(|(v, c)| (v - c).abs()).collect();
    let band = WINSOR_K * 1.4826 * median(&dev);
    y.iter()
        .zip(&centre)
        .map(|(v, c)| v.clamp(c - band, c + band))
        .collect()
}

/// [`winsorize`] with a trailing window, so a clipped value depends only on
/// the values before it (what a backtest on history alone may use). The
/// band is `band` when given (frozen at fit time), else estimated from the
/// deviations of the first `band_from` points. Returns the clipped series
/// and the band.
pub fn winsorize_trailing(y: &[f64], band_from: usize, band: Option<f64>) -> (Vec<f64>, f64) {
    let n = y.len();
    let centre: Vec<f64> = (0..n)
        .map(|i| median(&y[(i + 1).saturating_sub(WINSOR_WINDOW)..=i]))
        .collect();
    let band = band.unwrap_or_else(|| {
        let dev: Vec<f64> = y
            .iter()
            .zip(&centre)
            .take(band_from.max(1))
            .map(|(v, c)| (v - c).abs())
            .collect();
        WINSOR_K * 1.4826 * median(&dev)
    });
    let out = y
        .iter()
        .zip(&centre)
        .map(|(v, c)| v.clamp(c - band, c + band))
        .collect();
    (out, band)
}

/// Clipping threshold of [`winsorize`] in robust standard deviations.
const WINSOR_K: f64 = 4.0;
/// Window of the rolling median in [`winsorize`].
const WINSOR_WINDOW: usize = 31;

/// ARIMA with automatic order selection, fitted on the winsorized history.
#[derive(Debug, Clone)]
pub struct AutoArima {
    config: ModelConfig,
}

impl AutoArima {
    /// Creates the model.
    pub fn new(config: ModelConfig) -> Self {
        Self { config }
    }
}

impl Model for AutoArima {
    fn name(&self) -> &'static str {
        "arima"
    }
    fn forecast(
        &self,
        history: &[f64],
        horizon: usize,
        level: f64,
    ) -> Result<Forecast, ModelError> {
        self.config.validate()?;
        check_input("arima", history, 32, horizon, level)?;
        let y = tail(history, self.config.max_train);
        // Fit and forecast on the winsorized series; score against the raw one.
        let yc = winsorize(y);
        let fit = FittedArima::fit_auto(&yc)?;
        let warm = (fit.p + fit.d + 12).min(y.len() / 2);
        let cal = calibrate(
            y,
            warm,
            horizon,
            level,
            self.config.calib_origins,
            |t, h| fit.point(&yc, t, h),
        );
        let mean = fit.point(&yc, yc.len(), horizon);
        Ok(assemble(fit.label(), mean, &cal, level))
    }
}
