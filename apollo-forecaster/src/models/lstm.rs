//! A small LSTM trained as one global model across series, written by hand
//! (forward pass, backpropagation through time, Adam) to keep the default
//! build free of a deep-learning dependency.
//!
//! Each sample is a window of `WINDOW` values made relative to its last
//! value and scaled by the window's mean absolute step, passed through
//! `asinh` (bursts are compressed). One LSTM layer of `HIDDEN` units reads
//! the window; a linear head emits the scaled change for steps
//! `1..=OUTPUT` at once (direct multi-horizon). Steps beyond `OUTPUT` repeat
//! the last one. The loss is the mean absolute error in the transformed
//! space. Training takes a few seconds on one core.
//!
//! [`Lstm::train_global`] fits one model over many series; an untrained
//! [`Lstm`] (from [`super::by_name`]) trains a smaller model on the history
//! it is asked to forecast, which is much slower per call.

use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::conformal::{assemble, calibrate};
use super::{check_input, tail, Forecast, Model, ModelConfig, ModelError};

/// Input window length.
pub const WINDOW: usize = 24;
/// Hidden units.
pub const HIDDEN: usize = 16;
/// Steps emitted by the head.
pub const OUTPUT: usize = 48;

const GATES: usize = 4 * HIDDEN;
const ZIN: usize = 1 + HIDDEN;

/// Training settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    /// Optimiser steps.
    pub steps: usize,
    /// Samples per step.
    pub batch: usize,
    /// Adam learning rate.
    pub learning_rate: f64,
    /// Random seed (initialisation and sampling).
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 1_500,
            batch: 32,
            learning_rate: 0.005,
            seed: 42,
        }
    }
}

/// Network parameters, flattened.
#[derive(Debug, Clone)]
struct Weights {
    /// Gate weights: `GATES x ZIN`, rows i, f, g, o.
    w: Vec<f64>,
    b: Vec<f64>,
    /// Head: `OUTPUT x HIDDEN`.
    wo: Vec<f64>,
    bo: Vec<f64>,
}

impl Weights {
    fn init(rng: &mut StdRng) -> Self {
        let r = 1.0 / (HIDDEN as f64).sqrt();
        let mut u = |n: usize, s: f64| -> Vec<f64> {
            (0..n)
                .map(|_| (rng.random::<f64>() * 2.0 - 1.0) * s)
                .collect()
        };
        let w = u(GATES * ZIN, r);
        let mut b = vec![0.0; GATES];
        // Forget-gate bias 1: remember by default.
        b[HIDDEN..2 * HIDDEN].fill(1.0);
        let wo = u(OUTPUT * HIDDEN, r * 0.1);
        Self {
            w,
            b,
            wo,
            bo: vec![0.0; OUTPUT],
        }
    }

    fn zeros() -> Self {
        Self {
            w: vec![0.0; GATES * ZIN],
            b: vec![0.0; GATES],
            wo: vec![0.0; OUTPUT * HIDDEN],
            bo: vec![0.0; OUTPUT],
        }
    }

    fn slices_mut(&mut self) -> [&mut Vec<f64>; 4] {
        [&mut self.w, &mut self.b, &mut self.wo, &mut self.bo]
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Per-step activations kept for backpropagation.
struct Trace {
    x: [f64; WINDOW],
    /// Gates after activation, per step: i, f, g, o.
    gates: Vec<[f64; GATES]>,
    /// Cell states, index s+1 after step s (index 0 = zeros).
    c: Vec<[f64; HIDDEN]>,
    h: Vec<[f64; HIDDEN]>,
}

fn forward(wt: &Weights, x: &[f64; WINDOW], keep: bool) -> ([f64; OUTPUT], Option<Trace>) {
    let mut h = [0.0; HIDDEN];
    let mut c = [0.0; HIDDEN];
    let mut tr = keep.then(|| Trace {
        x: *x,
        gates: Vec::with_capacity(WINDOW),
        c: vec![[0.0; HIDDEN]],
        h: vec![[0.0; HIDDEN]],
    });
    for &xs in x.iter() {
        let mut z = [0.0; GATES];
        for (r, zr) in z.iter_mut().enumerate() {
            let row = &wt.w[r * ZIN..(r + 1) * ZIN];
            let mut s = wt.b[r] + row[0] * xs;
            for j in 0..HIDDEN {
                s += row[1 + j] * h[j];
            }
            *zr = s;
        }
        for j in 0..HIDDEN {
            z[j] = sigmoid(z[j]);
            z[HIDDEN + j] = sigmoid(z[HIDDEN + j]);
            z[2 * HIDDEN + j] = z[2 * HIDDEN + j].tanh();
            z[3 * HIDDEN + j] = sigmoid(z[3 * HIDDEN + j]);
            c[j] = z[HIDDEN + j] * c[j] + z[j] * z[2 * HIDDEN + j];
            h[j] = z[3 * HIDDEN + j] * c[j].tanh();
        }
        if let Some(t) = tr.as_mut() {
            t.gates.push(z);
            t.c.push(c);
            t.h.push(h);
        }
    }
    let mut out = [0.0; OUTPUT];
    for (k, o) in out.iter_mut().enumerate() {
        let row = &wt.wo[k * HIDDEN..(k + 1) * HIDDEN];
        *o = wt.bo[k] + row.iter().zip(&h).map(|(a, b)| a * b).sum::<f64>();
    }
    (out, tr)
}

/// Adds the gradient of the masked L1 loss of one sample to `g`.
fn backward(wt: &Weights, tr: &Trace, out: &[f64; OUTPUT], target: &[f64], g: &mut Weights) {
    let hl = tr.h[WINDOW];
    let mut dh = [0.0; HIDDEN];
    let m = target.len().max(1) as f64;
    for (k, t) in target.iter().enumerate() {
        let d = if out[k] > *t {
            1.0 / m
        } else if out[k] < *t {
            -1.0 / m
        } else {
            0.0
        };
        g.bo[k] += d;
        for j in 0..HIDDEN {
            g.wo[k * HIDDEN + j] += d * hl[j];
            dh[j] += d * wt.wo[k * HIDDEN + j];
        }
    }
    let mut dc = [0.0; HIDDEN];
    for s in (0..WINDOW).rev() {
        let z = &tr.gates[s];
        let c = &tr.c[s + 1];
        let c_prev = &tr.c[s];
        let h_prev = &tr.h[s];
        let mut dz = [0.0; GATES];
        for j in 0..HIDDEN {
            let (i, f, gg, o) = (z[j], z[HIDDEN + j], z[2 * HIDDEN + j], z[3 * HIDDEN + j]);
            let tc = c[j].tanh();
            let d_o = dh[j] * tc;
            dc[j] += dh[j] * o * (1.0 - tc * tc);
            dz[j] = dc[j] * gg * i * (1.0 - i);
            dz[HIDDEN + j] = dc[j] * c_prev[j] * f * (1.0 - f);
            dz[2 * HIDDEN + j] = dc[j] * i * (1.0 - gg * gg);
            dz[3 * HIDDEN + j] = d_o * o * (1.0 - o);
            dc[j] *= f;
        }
        let mut dh_prev = [0.0; HIDDEN];
        for (r, &d) in dz.iter().enumerate() {
            if d == 0.0 {
                continue;
            }
            g.b[r] += d;
            let row = r * ZIN;
            g.w[row] += d * tr.x[s];
            for j in 0..HIDDEN {
                g.w[row + 1 + j] += d * h_prev[j];
                dh_prev[j] += d * wt.w[row + 1 + j];
            }
        }
        dh = dh_prev;
    }
}

/// Window of `y[t - WINDOW..t]` in model space, with its anchor and scale.
fn encode(y: &[f64], t: usize) -> ([f64; WINDOW], f64, f64) {
    let v = y[t - 1];
    let start = t.saturating_sub(WINDOW);
    let s = &y[start..t];
    let steps =
        s.windows(2).map(|p| (p[1] - p[0]).abs()).sum::<f64>() / (s.len().max(2) - 1) as f64;
    let scale = steps.max(1e-9 * (v.abs() + 1.0)).max(1e-12);
    let mut x = [0.0; WINDOW];
    // Left-pad short histories with the first value.
    for (i, xi) in x.iter_mut().enumerate() {
        let idx = (t + i)
            .checked_sub(WINDOW)
            .filter(|&j| j >= start)
            .unwrap_or(start);
        *xi = ((y[idx] - v) / scale).asinh();
    }
    (x, v, scale)
}

/// A trained (or not yet trained) LSTM forecaster.
#[derive(Debug, Clone)]
pub struct Lstm {
    config: ModelConfig,
    weights: Option<Arc<Weights>>,
}

impl Lstm {
    /// An untrained model: each forecast trains on its own history.
    pub fn new(config: ModelConfig) -> Self {
        Self {
            config,
            weights: None,
        }
    }

    /// Whether the model carries trained weights.
    pub fn is_trained(&self) -> bool {
        self.weights.is_some()
    }

    /// Trains one model across `series` with the default schedule.
    pub fn train_global(series: &[&[f64]], config: &ModelConfig) -> Result<Self, ModelError> {
        Self::train(
            series,
            config,
            &TrainConfig {
                seed: config.seed,
                ..TrainConfig::default()
            },
        )
    }

    /// Trains one model across `series`.
    pub fn train(
        series: &[&[f64]],
        config: &ModelConfig,
        tc: &TrainConfig,
    ) -> Result<Self, ModelError> {
        config.validate()?;
        if tc.steps == 0 || tc.batch == 0 || tc.learning_rate.is_nan() || tc.learning_rate <= 0.0 {
            return Err(ModelError::InvalidConfig(
                "lstm training needs steps, batch and learning rate > 0".into(),
            ));
        }
        // (series, origin) pairs with at least one target inside the series.
        let mut pool: Vec<(usize, usize)> = Vec::new();
        for (si, s) in series.iter().enumerate() {
            if let Some((index, &value)) = s.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(ModelError::NonFinite { index, value });
            }
            for t in WINDOW..s.len() {
                pool.push((si, t));
            }
        }
        if pool.is_empty() {
            return Err(ModelError::TooShort {
                model: "lstm",
                need: WINDOW + 1,
                got: series.iter().map(|s| s.len()).max().unwrap_or(0),
            });
        }
        let mut rng = StdRng::seed_from_u64(tc.seed);
        let mut wt = Weights::init(&mut rng);
        let mut m1 = Weights::zeros();
        let mut m2 = Weights::zeros();
        let (b1, b2, eps) = (0.9_f64, 0.999_f64, 1e-8);
        let mut target = Vec::with_capacity(OUTPUT);
        for step in 1..=tc.steps {
            let mut g = Weights::zeros();
            for _ in 0..tc.batch {
                let (si, t) = pool[rng.random_range(0..pool.len())];
                let y = series[si];
                let (x, v, scale) = encode(y, t);
                target.clear();
                for k in 0..OUTPUT.min(y.len() - t) {
                    target.push(((y[t + k] - v) / scale).asinh());
                }
                let (out, tr) = forward(&wt, &x, true);
                if let Some(tr) = tr {
                    backward(&wt, &tr, &out, &target, &mut g);
                }
            }
            // Clip the global gradient norm at 1.
            let norm = g
                .slices_mut()
                .iter()
                .flat_map(|v| v.iter())
                .map(|x| x * x)
                .sum::<f64>()
                .sqrt()
                / tc.batch as f64;
            let clip = if norm > 1.0 { 1.0 / norm } else { 1.0 };
            let lr = tc.learning_rate * (1.0 - b2.powi(step as i32)).sqrt()
                / (1.0 - b1.powi(step as i32));
            let gs = g.slices_mut();
            let ws = wt.slices_mut();
            let a1 = m1.slices_mut();
            let a2 = m2.slices_mut();
            for (((gv, wv), v1), v2) in gs.into_iter().zip(ws).zip(a1).zip(a2) {
                for i in 0..gv.len() {
                    let gi = gv[i] / tc.batch as f64 * clip;
                    v1[i] = b1 * v1[i] + (1.0 - b1) * gi;
                    v2[i] = b2 * v2[i] + (1.0 - b2) * gi * gi;
                    wv[i] -= lr * v1[i] / (v2[i].sqrt() + eps);
                }
            }
        }
        if wt.w.iter().chain(&wt.wo).any(|v| !v.is_finite()) {
            return Err(ModelError::Fit {
                model: "lstm",
                reason: "training diverged".into(),
            });
        }
        Ok(Self {
            config: config.clone(),
            weights: Some(Arc::new(wt)),
        })
    }

    /// Forecast of `y[t..t + h]` from `y[..t]` with the trained weights;
    /// `None` when the model is untrained or `t` is too early.
    pub fn point_at(&self, y: &[f64], t: usize, h: usize) -> Option<Vec<f64>> {
        let wt = self.weights.as_deref()?;
        (t >= 2 && t <= y.len()).then(|| Self::point(wt, y, t, h))
    }

    /// Forecast of `y[t..t + h]` from `y[..t]`.
    fn point(wt: &Weights, y: &[f64], t: usize, h: usize) -> Vec<f64> {
        let (x, v, scale) = encode(y, t);
        let (out, _) = forward(wt, &x, false);
        (0..h)
            .map(|k| v + out[k.min(OUTPUT - 1)].clamp(-50.0, 50.0).sinh() * scale)
            .collect()
    }
}

impl Model for Lstm {
    fn name(&self) -> &'static str {
        "lstm"
    }
    fn forecast(
        &self,
        history: &[f64],
        horizon: usize,
        level: f64,
    ) -> Result<Forecast, ModelError> {
        self.config.validate()?;
        check_input("lstm", history, WINDOW + 2, horizon, level)?;
        let y = tail(history, self.config.max_train);
        let trained;
        let wt: &Weights = match &self.weights {
            Some(w) => w,
            None => {
                trained = Self::train(
                    &[y],
                    &self.config,
                    &TrainConfig {
                        steps: 300,
                        batch: 16,
                        seed: self.config.seed,
                        ..TrainConfig::default()
                    },
                )?;
                trained.weights.as_deref().ok_or_else(|| ModelError::Fit {
                    model: "lstm",
                    reason: "no weights after training".into(),
                })?
            }
        };
        let cal = calibrate(
            y,
            WINDOW,
            horizon,
            level,
            self.config.calib_origins,
            |t, h| Self::point(wt, y, t, h),
        );
        let mean = Self::point(wt, y, y.len(), horizon);
        Ok(assemble("lstm".into(), mean, &cal, level))
    }
}
