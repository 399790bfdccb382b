//! Rolling-origin backtest harness on real traces (`apolloctl eval forecast`).
//!
//! Protocol: the last 20% of every series is the test part; forecast origins
//! lie every `origin_step` steps through it and each model sees only the
//! data before the origin (models cap their own training window at
//! `ModelConfig::max_train`; the global LSTM trains on the training parts).
//! For each series and horizon `h` every model is asked for exactly `h`
//! steps and the error is taken at step `h`.
//!
//! Headline aggregate ([`robust_ratio`], [`summarise_ratios`]): per series
//! ratio = MAE(model) / MAE(naive) on the same origins, both zero counts as
//! 1, naive zero with the model non-zero counts as 10, ratios clipped to
//! [0.1, 10], geometric mean over all series (none dropped); beside it the
//! median ratio and the share of series where the model beats naive. MASE
//! scales by the in-sample one-step naive MAE; coverage is the share of
//! targets inside the interval. Per-series rows carry the raw sums.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use thiserror::Error;

use std::sync::Mutex;

use crate::models::{
    self, lstm, Auto, AutoConfig, AutoSelector, Forecast, FullModel, Model, ModelConfig, ModelError,
};

/// Errors of the harness; trace errors name the file, line and column.
#[derive(Debug, Error)]
pub enum EvalError {
    /// The file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// File path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The CSV structure is broken.
    #[error("{path}: line {line}: {message}")]
    Csv {
        /// File path.
        path: PathBuf,
        /// 1-based line.
        line: u64,
        /// What the CSV reader reported.
        message: String,
    },
    /// A required column is missing from the header.
    #[error("{path}: line 1: missing column `{column}`")]
    MissingColumn {
        /// File path.
        path: PathBuf,
        /// Column name.
        column: String,
    },
    /// A field does not parse as a number.
    #[error("{path}: line {line}, column `{column}`: cannot parse {value:?} as a number")]
    Parse {
        /// File path.
        path: PathBuf,
        /// 1-based line.
        line: u64,
        /// Column name.
        column: String,
        /// The raw field.
        value: String,
    },
    /// Nothing to evaluate.
    #[error("no usable series: {0}")]
    NoSeries(String),
    /// A model name that [`models::by_name`] does not know.
    #[error("unknown model `{0}` (known: {known})", known = models::MODEL_NAMES.join(", "))]
    UnknownModel(String),
    /// Invalid harness settings.
    #[error("invalid evaluation settings: {0}")]
    Config(String),
    /// Training a global model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// One equally spaced series.
#[derive(Debug, Clone)]
pub struct Series {
    /// Identifier (file and key).
    pub id: String,
    /// What kind of series it is (GenAI file stem, openb ratio name), so
    /// results can be split by kind.
    pub family: String,
    /// Values in time order.
    pub values: Vec<f64>,
}

/// A named set of series with a shared season.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Dataset name for the report.
    pub name: String,
    /// Season length in steps, if any.
    pub season: Option<usize>,
    /// The series.
    pub series: Vec<Series>,
}

/// Column positions of a CSV header, looked up by name.
struct Columns {
    path: PathBuf,
    index: HashMap<String, usize>,
}

impl Columns {
    fn get(&self, name: &str) -> Result<usize, EvalError> {
        self.index
            .get(name)
            .copied()
            .ok_or_else(|| EvalError::MissingColumn {
                path: self.path.clone(),
                column: name.to_string(),
            })
    }
}

fn open_csv(path: &Path) -> Result<(csv::Reader<std::fs::File>, Columns), EvalError> {
    let file = std::fs::File::open(path).map_err(|source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    read_csv(file, path)
}

/// A CSV reader over `reader` with its header's columns; `path` names the
/// source in errors.
fn read_csv<R: std::io::Read>(
    reader: R,
    path: &Path,
) -> Result<(csv::Reader<R>, Columns), EvalError> {
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(false)
        .from_reader(reader);
    let headers = rdr.headers().map_err(|e| csv_error(path, &e))?.clone();
    let index = headers
        .iter()
        .enumerate()
        .map(|(i, h)| (h.trim().to_string(), i))
        .collect();
    Ok((
        rdr,
        Columns {
            path: path.to_path_buf(),
            index,
        },
    ))
}

fn csv_error(path: &Path, e: &csv::Error) -> EvalError {
    if let csv::ErrorKind::Io(io) = e.kind() {
        return EvalError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(io.kind(), io.to_string()),
        };
    }
    EvalError::Csv {
        path: path.to_path_buf(),
        line: e.position().map_or(0, |p| p.line()),
        message: e.to_string(),
    }
}

/// Parses field `col` (named `name`) of a record as a finite number.
fn num(path: &Path, rec: &csv::StringRecord, col: usize, name: &str) -> Result<f64, EvalError> {
    let raw = rec.get(col).unwrap_or("");
    match raw.trim().parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(EvalError::Parse {
            path: path.to_path_buf(),
            line: rec.position().map_or(0, |p| p.line()),
            column: name.to_string(),
            value: raw.to_string(),
        }),
    }
}

/// The three per-container files of the GenAI serving trace.
pub const GENAI_FILES: &[&str] = &[
    "pod_gpu_duty_cycle_anon.csv",
    "pod_gpu_memory_used_bytes_anon.csv",
    "pod_memory_util_anon.csv",
];

/// Loads the GenAI trace: one series per `container_ip` per file, sorted by
/// time, keeping series with at least `min_len` points.
pub fn load_genai(dir: &Path, min_len: usize) -> Result<Dataset, EvalError> {
    let mut series = Vec::new();
    for file in GENAI_FILES {
        let path = dir.join(file);
        let f = std::fs::File::open(&path).map_err(|source| EvalError::Io {
            path: path.clone(),
            source,
        })?;
        genai_file(f, &path, min_len, &mut series)?;
    }
    genai_dataset(series, &dir.display().to_string(), min_len)
}

/// [`load_genai`] over already opened files: `(path, reader)` pairs whose
/// file names are among [`GENAI_FILES`]; `source` names the set in errors.
pub fn parse_genai<R: std::io::Read>(
    files: Vec<(PathBuf, R)>,
    source: &str,
    min_len: usize,
) -> Result<Dataset, EvalError> {
    let mut series = Vec::new();
    for (path, reader) in files {
        genai_file(reader, &path, min_len, &mut series)?;
    }
    genai_dataset(series, source, min_len)
}

/// Adds one GenAI file's per-container series to `series`.
fn genai_file<R: std::io::Read>(
    reader: R,
    path: &Path,
    min_len: usize,
    series: &mut Vec<Series>,
) -> Result<(), EvalError> {
    let (mut rdr, cols) = read_csv(reader, path)?;
    let (cv, ct, ck) = (
        cols.get("value")?,
        cols.get("timestamp_anon")?,
        cols.get("container_ip")?,
    );
    let mut groups: HashMap<String, Vec<(f64, f64)>> = HashMap::new();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| csv_error(path, &e))?;
        let v = num(path, &rec, cv, "value")?;
        let t = num(path, &rec, ct, "timestamp_anon")?;
        let key = rec.get(ck).unwrap_or("").to_string();
        groups.entry(key).or_default().push((t, v));
    }
    let file = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let stem = file.trim_end_matches(".csv");
    let mut keys: Vec<String> = groups.keys().cloned().collect();
    keys.sort();
    for key in keys {
        let mut pts = groups.remove(&key).unwrap_or_default();
        if pts.len() < min_len {
            continue;
        }
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        series.push(Series {
            id: format!("{stem}/{key}"),
            family: stem.to_string(),
            values: pts.into_iter().map(|p| p.1).collect(),
        });
    }
    Ok(())
}

fn genai_dataset(series: Vec<Series>, source: &str, min_len: usize) -> Result<Dataset, EvalError> {
    if series.is_empty() {
        return Err(EvalError::NoSeries(format!(
            "{source}: no container with at least {min_len} points"
        )));
    }
    Ok(Dataset {
        name: "alibaba-genai-2026".into(),
        season: None,
        series,
    })
}

/// Replays the openb pod list against the GPU node list's capacity and
/// returns cluster CPU, memory and GPU allocation ratio series at `step`
/// seconds. A pod holds its resources from `scheduled_time` to
/// `deletion_time`; pods never scheduled are skipped.
pub fn load_openb(dir: &Path, step: f64) -> Result<Dataset, EvalError> {
    if step.is_nan() || step <= 0.0 {
        return Err(EvalError::Config("openb step must be positive".into()));
    }
    let node_path = dir.join("openb_node_list_gpu_node.csv");
    let (mut rdr, cols) = open_csv(&node_path)?;
    let (ncpu, nmem, ngpu) = (
        cols.get("cpu_milli")?,
        cols.get("memory_mib")?,
        cols.get("gpu")?,
    );
    let mut cap = [0.0_f64; 3];
    for rec in rdr.records() {
        let rec = rec.map_err(|e| csv_error(&node_path, &e))?;
        cap[0] += num(&node_path, &rec, ncpu, "cpu_milli")?;
        cap[1] += num(&node_path, &rec, nmem, "memory_mib")?;
        cap[2] += 1000.0 * num(&node_path, &rec, ngpu, "gpu")?;
    }
    if cap.iter().any(|c| *c <= 0.0) {
        return Err(EvalError::NoSeries(format!(
            "{}: zero total capacity",
            node_path.display()
        )));
    }
    let pod_path = dir.join("openb_pod_list_default.csv");
    let (mut rdr, cols) = open_csv(&pod_path)?;
    let c = [
        cols.get("cpu_milli")?,
        cols.get("memory_mib")?,
        cols.get("num_gpu")?,
        cols.get("gpu_milli")?,
        cols.get("scheduled_time")?,
        cols.get("deletion_time")?,
    ];
    // (start, end, cpu, mem, gpu)
    let mut pods = Vec::new();
    let mut t_end = 0.0_f64;
    for rec in rdr.records() {
        let rec = rec.map_err(|e| csv_error(&pod_path, &e))?;
        if rec.get(c[4]).unwrap_or("").trim().is_empty() {
            continue;
        }
        let start = num(&pod_path, &rec, c[4], "scheduled_time")?;
        let end = num(&pod_path, &rec, c[5], "deletion_time")?;
        let cpu = num(&pod_path, &rec, c[0], "cpu_milli")?;
        let mem = num(&pod_path, &rec, c[1], "memory_mib")?;
        let gpu = num(&pod_path, &rec, c[2], "num_gpu")? * num(&pod_path, &rec, c[3], "gpu_milli")?;
        t_end = t_end.max(end);
        pods.push((start, end, cpu, mem, gpu));
    }
    if pods.is_empty() {
        return Err(EvalError::NoSeries(format!(
            "{}: no scheduled pods",
            pod_path.display()
        )));
    }
    let n = (t_end / step).ceil() as usize + 1;
    let mut delta = vec![[0.0_f64; 3]; n + 1];
    for (start, end, cpu, mem, gpu) in pods {
        // Sample k at time k*step counts pods with start <= t < end.
        let a = ((start / step).ceil().max(0.0) as usize).min(n);
        let b = ((end / step).ceil().max(0.0) as usize).min(n);
        if b <= a {
            continue;
        }
        for (r, v) in [cpu, mem, gpu].into_iter().enumerate() {
            delta[a][r] += v;
            delta[b][r] -= v;
        }
    }
    let mut out = [
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    ];
    let mut acc = [0.0_f64; 3];
    for d in delta.iter().take(n) {
        for r in 0..3 {
            acc[r] += d[r];
            out[r].push(acc[r] / cap[r]);
        }
    }
    let [cpu, mem, gpu] = out;
    Ok(Dataset {
        name: "alibaba-gpu-2023-openb".into(),
        season: Some((86_400.0 / step).round() as usize).filter(|m| *m >= 2),
        series: vec![
            Series {
                id: "cpu_alloc_ratio".into(),
                family: "cpu_alloc_ratio".into(),
                values: cpu,
            },
            Series {
                id: "memory_alloc_ratio".into(),
                family: "memory_alloc_ratio".into(),
                values: mem,
            },
            Series {
                id: "gpu_alloc_ratio".into(),
                family: "gpu_alloc_ratio".into(),
                values: gpu,
            },
        ],
    })
}

/// Harness settings.
#[derive(Debug, Clone)]
pub struct EvalConfig {
    /// Horizons (steps ahead) to score.
    pub horizons: Vec<usize>,
    /// Model names (see [`models::MODEL_NAMES`], plus [`HARNESS_MODELS`]).
    pub models: Vec<String>,
    /// Interval level.
    pub level: f64,
    /// Share of each series held out as test.
    pub test_fraction: f64,
    /// Steps between forecast origins.
    pub origin_step: usize,
    /// Model settings (season is taken from the dataset when unset).
    pub model: ModelConfig,
    /// Worker threads over series.
    pub jobs: usize,
    /// Optimiser steps of the global LSTM (used by `lstm` and `auto`).
    pub lstm_steps: usize,
    /// Full models that compete inside `auto` and `auto_cached`.
    pub auto_full_models: Vec<FullModel>,
    /// Which part of the test origins is scored (a split in time for
    /// datasets with too few series to split by series, such as openb).
    pub origin_part: OriginPart,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            horizons: vec![5, 15, 30],
            models: vec!["naive".into(), "auto".into()],
            level: 0.95,
            test_fraction: 0.2,
            origin_step: 5,
            model: ModelConfig::default(),
            jobs: 1,
            lstm_steps: lstm::TrainConfig::default().steps,
            auto_full_models: AutoConfig::default().full_models,
            origin_part: OriginPart::All,
        }
    }
}

/// Lower clip of a per-series MAE ratio in the robust aggregate.
pub const RATIO_MIN: f64 = 0.1;
/// Upper clip of a per-series MAE ratio, also the ratio of a series where
/// naive is perfect and the model is not.
pub const RATIO_MAX: f64 = 10.0;

/// The per-series ratio of the headline aggregate: MAE(model) / MAE(naive)
/// on the same origins, clipped to [`RATIO_MIN`], [`RATIO_MAX`]. Both zero
/// counts as 1 (a tie); naive zero with the model non-zero counts as the cap.
/// No series is ever dropped, so a perfect forecast on an idle series
/// weighs no more than any 10x better forecast.
pub fn robust_ratio(model_mae: f64, naive_mae: f64) -> f64 {
    if naive_mae <= 0.0 {
        return if model_mae <= 0.0 { 1.0 } else { RATIO_MAX };
    }
    (model_mae / naive_mae).clamp(RATIO_MIN, RATIO_MAX)
}

/// Aggregates of [`robust_ratio`] over series.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RatioSummary {
    /// Geometric mean of the clipped ratios (the headline figure).
    pub gmean: f64,
    /// Median of the clipped ratios.
    pub median: f64,
    /// Share of series whose ratio is below 1 (the model beats naive).
    pub beats_naive: f64,
    /// Series aggregated.
    pub series: usize,
}

/// Summarises per-series `(model_mae, naive_mae)` pairs; `None` when empty.
pub fn summarise_ratios(pairs: &[(f64, f64)]) -> Option<RatioSummary> {
    if pairs.is_empty() {
        return None;
    }
    let mut r: Vec<f64> = pairs.iter().map(|(m, n)| robust_ratio(*m, *n)).collect();
    let gmean = (r.iter().map(|v| v.ln()).sum::<f64>() / r.len() as f64).exp();
    let beats = r.iter().filter(|v| **v < 1.0).count() as f64 / r.len() as f64;
    r.sort_by(f64::total_cmp);
    let k = r.len();
    let median = if k % 2 == 1 {
        r[k / 2]
    } else {
        0.5 * (r[k / 2 - 1] + r[k / 2])
    };
    Some(RatioSummary {
        gmean,
        median,
        beats_naive: beats,
        series: k,
    })
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct ResultRow {
    /// Model name.
    pub model: String,
    /// Steps ahead.
    pub horizon: usize,
    /// Geometric mean over series of the clipped MAE ratio ([`robust_ratio`]).
    pub rel_mae_gmean: Option<f64>,
    /// Median over series of the clipped MAE ratio.
    pub rel_mae_median: Option<f64>,
    /// Share of series where the model's MAE is below naive's.
    pub beats_naive_share: Option<f64>,
    /// Mean over series of MAE / in-sample one-step naive MAE (series with a
    /// zero scale left out).
    pub mase_mean: Option<f64>,
    /// Share of targets inside the interval.
    pub coverage_95: Option<f64>,
    /// Mean wall time per series of all fits and forecasts (all origins).
    pub ms_per_series: f64,
    /// Mean wall time of one fit + forecast.
    pub ms_per_fit: f64,
    /// Series in the aggregates (every series with at least one target).
    pub series_scored: usize,
    /// Forecast calls that failed (scored as missing).
    pub failures: usize,
}

/// One series, model and horizon: the raw sums behind every aggregate.
#[derive(Debug, Clone, Serialize)]
pub struct SeriesRow {
    /// Series identifier.
    pub id: String,
    /// Series family (GenAI file stem, or the openb ratio name).
    pub family: String,
    /// Model name.
    pub model: String,
    /// Steps ahead.
    pub horizon: usize,
    /// Origins scored (targets inside the series, forecast succeeded).
    pub n_origins: usize,
    /// MAE of the model at exactly `horizon` steps.
    pub mae: f64,
    /// MAE of naive (last value) on the same origins.
    pub naive_mae: f64,
    /// Targets inside the interval (out of `n_origins`).
    pub covered: usize,
    /// MAE / in-sample one-step naive MAE; `None` when that scale is zero.
    pub mase: Option<f64>,
}

/// The harness output.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Dataset name.
    pub dataset: String,
    /// Number of series.
    pub n_series: usize,
    /// Interval level used for coverage.
    pub level: f64,
    /// One row per model and horizon.
    pub results: Vec<ResultRow>,
    /// One row per series, model and horizon, so any aggregate can be
    /// recomputed.
    pub series: Vec<SeriesRow>,
}

/// Harness-only model name: `auto` as the service runs it, one
/// [`AutoSelector`] per series (and horizon) kept across origins,
/// re-selecting every `reselect_every` calls (the cached fast path in
/// between).
pub const AUTO_CACHED: &str = "auto_cached";

/// Harness-only model name: `auto` without the hold rule and the
/// last-plateau candidate ([`AutoConfig::hold_flat`] off), so their effect
/// is measured in the same run.
pub const AUTO_NOHOLD: &str = "auto_nohold";

/// Harness-only model name: `auto` that always combines narrowly
/// ([`AutoConfig::combine_wide`] off), so the choice of the combination
/// width is measured in the same run.
pub const AUTO_NARROW: &str = "auto_narrow";

/// Harness-only model name: `auto` with intervals at the nominal level
/// ([`AutoConfig::calibrate_level`] off), so the out-of-sample level choice
/// is measured in the same run.
pub const AUTO_NOMINAL: &str = "auto_nominal";

/// Harness-only model name: `auto` without the step-like guard
/// ([`AutoConfig::naive_guard`] off), so its effect is measured in the same
/// run.
pub const AUTO_NOGUARD: &str = "auto_noguard";

/// Every harness-only model name (accepted beside [`models::MODEL_NAMES`]).
pub const HARNESS_MODELS: &[&str] = &[
    AUTO_CACHED,
    AUTO_NOHOLD,
    AUTO_NARROW,
    AUTO_NOMINAL,
    AUTO_NOGUARD,
];

/// [`AutoSelector`] behind the stateless [`Model`] interface.
struct CachedAuto(Mutex<AutoSelector>);

impl Model for CachedAuto {
    fn name(&self) -> &'static str {
        AUTO_CACHED
    }
    fn forecast(
        &self,
        history: &[f64],
        horizon: usize,
        level: f64,
    ) -> Result<Forecast, ModelError> {
        let mut sel = self.0.lock().map_err(|_| ModelError::Fit {
            model: "auto",
            reason: "selector lock poisoned".into(),
        })?;
        sel.forecast(history, horizon, level)
    }
}

fn build_model(
    name: &str,
    cfg: &ModelConfig,
    full: &[FullModel],
    global_lstm: Option<&lstm::Lstm>,
) -> Result<Box<dyn Model>, EvalError> {
    let auto_config = || AutoConfig {
        model: cfg.clone(),
        full_models: full.to_vec(),
        ..AutoConfig::default()
    };
    // `auto` and its ablations differ only in their configuration.
    let variant = |config: AutoConfig| -> Box<dyn Model> {
        Box::new(Auto::new(config).with_global_lstm(global_lstm.cloned()))
    };
    match name {
        AUTO_CACHED => {
            let sel = AutoSelector::new(auto_config()).with_global_lstm(global_lstm.cloned());
            Ok(Box::new(CachedAuto(Mutex::new(sel))))
        }
        "auto" => Ok(variant(auto_config())),
        AUTO_NOHOLD => Ok(variant(AutoConfig {
            hold_flat: false,
            ..auto_config()
        })),
        AUTO_NARROW => Ok(variant(AutoConfig {
            combine_wide: None,
            ..auto_config()
        })),
        AUTO_NOGUARD => Ok(variant(AutoConfig {
            naive_guard: false,
            ..auto_config()
        })),
        AUTO_NOMINAL => Ok(variant(AutoConfig {
            calibrate_level: false,
            ..auto_config()
        })),
        "lstm" => match global_lstm {
            Some(m) => Ok(Box::new(m.clone())),
            None => Ok(Box::new(lstm::Lstm::new(cfg.clone()))),
        },
        _ => {
            models::by_name_with(name, cfg).ok_or_else(|| EvalError::UnknownModel(name.to_string()))
        }
    }
}

/// First forecast origin of a series of `n` points: the start of its test
/// part. Everything before it is the training part.
pub fn test_start(n: usize, test_fraction: f64) -> usize {
    let test = ((n as f64) * test_fraction).round() as usize;
    n - test.min(n.saturating_sub(2))
}

/// Which test origins are scored: a split in time of the test part, so a
/// dataset with few series (openb has three) can be tuned on one half and
/// reported on the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginPart {
    /// Every origin of the test part.
    All,
    /// Origins in the first half of the test part (the tuning half).
    Early,
    /// Origins in the second half of the test part (never tuned on).
    Late,
}

/// Forecast origins of a series of `n` points: every `origin_step`-th
/// point of the test part, restricted to [`EvalConfig::origin_part`]. The
/// halves split at the middle of the test part, so together they are
/// exactly the origins of [`OriginPart::All`].
pub fn origins(n: usize, cfg: &EvalConfig) -> impl Iterator<Item = usize> {
    let start = test_start(n, cfg.test_fraction);
    let mid = start + (n - start) / 2;
    let part = cfg.origin_part;
    (start..n)
        .step_by(cfg.origin_step.max(1))
        .filter(move |&t| match part {
            OriginPart::All => true,
            OriginPart::Early => t < mid,
            OriginPart::Late => t >= mid,
        })
}

/// Calls `sink(origin, model index, forecast)` for every origin of `y` and
/// every model in `models`, each asked for exactly `horizon` steps from the
/// history before the origin. The only place the harness slices history, so
/// the poison test covers it.
pub fn backtest_forecasts(
    y: &[f64],
    models: &[Box<dyn Model>],
    horizon: usize,
    cfg: &EvalConfig,
    sink: &mut dyn FnMut(usize, usize, Result<Forecast, ModelError>, f64),
) {
    for origin in origins(y.len(), cfg) {
        let hist = &y[..origin];
        for (mi, m) in models.iter().enumerate() {
            let t0 = Instant::now();
            let res = m.forecast(hist, horizon, cfg.level);
            sink(origin, mi, res, t0.elapsed().as_secs_f64());
        }
    }
}

/// Per series, model and horizon sums.
#[derive(Debug, Clone, Copy, Default)]
struct Acc {
    abs: f64,
    naive_abs: f64,
    count: usize,
    covered: usize,
    secs: f64,
    calls: usize,
    failures: usize,
}

/// `acc[hi][mi]` for one series.
fn eval_series(
    y: &[f64],
    per_horizon: &[Vec<Box<dyn Model>>],
    cfg: &EvalConfig,
) -> (Vec<Vec<Acc>>, f64) {
    let start = test_start(y.len(), cfg.test_fraction);
    let scale = y[..start]
        .windows(2)
        .map(|p| (p[1] - p[0]).abs())
        .sum::<f64>()
        / (start.max(2) - 1) as f64;
    let mut out = Vec::with_capacity(cfg.horizons.len());
    for (&h, models) in cfg.horizons.iter().zip(per_horizon) {
        let mut acc = vec![Acc::default(); models.len()];
        backtest_forecasts(y, models, h, cfg, &mut |origin, mi, res, secs| {
            let a = &mut acc[mi];
            a.secs += secs;
            a.calls += 1;
            let f = match res {
                Ok(f) => f,
                Err(_) => {
                    a.failures += 1;
                    return;
                }
            };
            let target = origin + h - 1;
            if target >= y.len() {
                return;
            }
            let actual = y[target];
            a.abs += (actual - f.mean[h - 1]).abs();
            a.naive_abs += (actual - y[origin - 1]).abs();
            a.count += 1;
            if actual >= f.lower[h - 1] && actual <= f.upper[h - 1] {
                a.covered += 1;
            }
        });
        out.push(acc);
    }
    (out, scale)
}

/// Trains the global LSTM on the training part of every series, when a
/// requested model uses it (`lstm`, and `auto` whose candidates include it).
fn train_global_lstm(
    series: &[&Series],
    cfg: &EvalConfig,
    mcfg: &ModelConfig,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Option<lstm::Lstm>, EvalError> {
    let in_auto = cfg.auto_full_models.contains(&FullModel::Lstm);
    let wanted = cfg
        .models
        .iter()
        .any(|m| m == "lstm" || (in_auto && (m == "auto" || m == AUTO_CACHED)));
    if !wanted {
        return Ok(None);
    }
    let parts: Vec<&[f64]> = series
        .iter()
        .map(|s| &s.values[..test_start(s.values.len(), cfg.test_fraction)])
        .collect();
    progress("training global lstm");
    let t0 = Instant::now();
    let m = lstm::Lstm::train(
        &parts,
        mcfg,
        &lstm::TrainConfig {
            seed: mcfg.seed,
            steps: cfg.lstm_steps,
            ..lstm::TrainConfig::default()
        },
    )?;
    progress(&format!(
        "lstm trained in {:.1} s",
        t0.elapsed().as_secs_f64()
    ));
    Ok(Some(m))
}

/// The configured models of a run: validated settings, the dataset's
/// season, and the global LSTM trained on the training parts only.
pub struct ModelSet {
    names: Vec<String>,
    horizons: usize,
    config: ModelConfig,
    full: Vec<FullModel>,
    global_lstm: Option<lstm::Lstm>,
}

impl ModelSet {
    /// Validates the model names and trains what is trained once per run.
    pub fn prepare(
        ds: &Dataset,
        cfg: &EvalConfig,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<Self, EvalError> {
        let series: Vec<&Series> = ds.series.iter().filter(|s| s.values.len() >= 20).collect();
        let mut config = cfg.model.clone();
        if config.season.is_none() {
            config.season = ds.season;
        }
        config.validate()?;
        for name in &cfg.models {
            if !models::MODEL_NAMES.contains(&name.as_str())
                && !HARNESS_MODELS.contains(&name.as_str())
            {
                return Err(EvalError::UnknownModel(name.clone()));
            }
        }
        let global_lstm = train_global_lstm(&series, cfg, &config, progress)?;
        Ok(Self {
            names: cfg.models.clone(),
            horizons: cfg.horizons.len(),
            config,
            full: cfg.auto_full_models.clone(),
            global_lstm,
        })
    }

    /// Fresh model instances for one series: `[horizon][model]`, so
    /// stateful models (`auto_cached`) never share state.
    pub fn build(&self) -> Result<Vec<Vec<Box<dyn Model>>>, EvalError> {
        (0..self.horizons)
            .map(|_| {
                self.names
                    .iter()
                    .map(|n| build_model(n, &self.config, &self.full, self.global_lstm.as_ref()))
                    .collect()
            })
            .collect()
    }
}

/// Runs the backtest of every configured model on every series; `progress`
/// receives one line per finished series.
///
/// Every model is asked for exactly the horizon being scored, and stateful
/// models get one instance per series and horizon, so a model's figures do
/// not depend on which other models or horizons are in the same run.
pub fn evaluate(
    ds: &Dataset,
    cfg: &EvalConfig,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Report, EvalError> {
    if cfg.horizons.is_empty() || cfg.horizons.contains(&0) {
        return Err(EvalError::Config("horizons must be positive".into()));
    }
    if !(cfg.test_fraction > 0.0 && cfg.test_fraction < 1.0) {
        return Err(EvalError::Config("test fraction must be in (0, 1)".into()));
    }
    if cfg.origin_step == 0 {
        return Err(EvalError::Config("origin step must be positive".into()));
    }
    if !(cfg.level > 0.0 && cfg.level < 1.0) {
        return Err(EvalError::Config("level must be in (0, 1)".into()));
    }
    if cfg.lstm_steps == 0 {
        return Err(EvalError::Config(
            "lstm training steps must be positive".into(),
        ));
    }
    let series: Vec<&Series> = ds.series.iter().filter(|s| s.values.len() >= 20).collect();
    if series.is_empty() {
        return Err(EvalError::NoSeries(format!(
            "{}: all series shorter than 20",
            ds.name
        )));
    }
    let set = ModelSet::prepare(ds, cfg, progress)?;
    let build = || set.build();
    build()?;
    let jobs = cfg.jobs.clamp(1, 16);
    let total = series.len();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let t_start = Instant::now();
    type SeriesAcc = (Vec<Vec<Acc>>, f64);
    let mut results: Vec<Option<SeriesAcc>> = (0..total).map(|_| None).collect();
    std::thread::scope(|scope| {
        let per = total.div_ceil(jobs).max(1);
        for (ci, chunk) in results.chunks_mut(per).enumerate() {
            let offset = ci * per;
            let (series, build, done) = (&series, &build, &done);
            scope.spawn(move || {
                for (j, slot) in chunk.iter_mut().enumerate() {
                    let s = series[offset + j];
                    // Checked above, so building cannot fail here.
                    let models = build().unwrap_or_default();
                    *slot = Some(eval_series(&s.values, &models, cfg));
                    let d = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                    progress(&format!(
                        "[{d}/{total}] {} ({} points) {:.1} s",
                        s.id,
                        s.values.len(),
                        t_start.elapsed().as_secs_f64()
                    ));
                }
            });
        }
    });
    let results: Vec<SeriesAcc> = results.into_iter().flatten().collect();
    let mut rows = Vec::new();
    let mut series_rows = Vec::new();
    for (mi, name) in cfg.models.iter().enumerate() {
        for (hi, &h) in cfg.horizons.iter().enumerate() {
            let (mut secs, mut calls, mut failures) = (0.0, 0usize, 0usize);
            let mut pairs = Vec::new();
            let (mut mase_sum, mut mase_n) = (0.0, 0usize);
            let (mut cov, mut cnt) = (0usize, 0usize);
            for (s, (acc, scale)) in series.iter().zip(&results) {
                let a = &acc[hi][mi];
                secs += a.secs;
                calls += a.calls;
                failures += a.failures;
                if a.count == 0 {
                    continue;
                }
                cov += a.covered;
                cnt += a.count;
                let mae = a.abs / a.count as f64;
                let naive_mae = a.naive_abs / a.count as f64;
                pairs.push((mae, naive_mae));
                let mase = (*scale > 0.0).then(|| mae / scale);
                if let Some(m) = mase {
                    mase_sum += m;
                    mase_n += 1;
                }
                series_rows.push(SeriesRow {
                    id: s.id.clone(),
                    family: s.family.clone(),
                    model: name.clone(),
                    horizon: h,
                    n_origins: a.count,
                    mae,
                    naive_mae,
                    covered: a.covered,
                    mase,
                });
            }
            let summary = summarise_ratios(&pairs);
            rows.push(ResultRow {
                model: name.clone(),
                horizon: h,
                rel_mae_gmean: summary.map(|s| s.gmean),
                rel_mae_median: summary.map(|s| s.median),
                beats_naive_share: summary.map(|s| s.beats_naive),
                mase_mean: (mase_n > 0).then(|| mase_sum / mase_n as f64),
                coverage_95: (cnt > 0).then(|| cov as f64 / cnt as f64),
                ms_per_series: 1e3 * secs / results.len().max(1) as f64,
                ms_per_fit: 1e3 * secs / calls.max(1) as f64,
                series_scored: pairs.len(),
                failures,
            });
        }
    }
    Ok(Report {
        dataset: ds.name.clone(),
        n_series: results.len(),
        level: cfg.level,
        results: rows,
        series: series_rows,
    })
}

/// Renders the report as an aligned text table.
pub fn render_table(report: &Report) -> String {
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.3}"));
    let mut out = format!(
        "dataset {}  series {}  level {}\n{:<16} {:>7} {:>8} {:>8} {:>6} {:>9} {:>9} {:>10} {:>9} {:>7}\n",
        report.dataset,
        report.n_series,
        report.level,
        "model",
        "horizon",
        "rel_mae",
        "median",
        "beats",
        "mase",
        "coverage",
        "ms/series",
        "ms/fit",
        "failed"
    );
    for r in &report.results {
        out.push_str(&format!(
            "{:<16} {:>7} {:>8} {:>8} {:>6} {:>9} {:>9} {:>10.1} {:>9.3} {:>7}\n",
            r.model,
            r.horizon,
            fmt(r.rel_mae_gmean),
            fmt(r.rel_mae_median),
            r.beats_naive_share
                .map_or("-".to_string(), |x| format!("{:.2}", x)),
            fmt(r.mase_mean),
            fmt(r.coverage_95),
            r.ms_per_series,
            r.ms_per_fit,
            r.failures
        ));
    }
    out
}

/// Which GenAI containers to evaluate, by the first character of the
/// container hash: the tuning set and the held-out set never overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashSplit {
    /// Every container.
    All,
    /// Hashes starting `0`-`4`: the only containers defaults are tuned on.
    Tune,
    /// Hashes starting `5`-`9`: reported separately, never tuned on.
    HeldOut,
}

impl HashSplit {
    /// Whether a container hash belongs to the split.
    pub fn contains(self, hash: &str) -> bool {
        let first = hash.chars().next();
        match self {
            HashSplit::All => true,
            HashSplit::Tune => matches!(first, Some('0'..='4')),
            HashSplit::HeldOut => matches!(first, Some('5'..='9')),
        }
    }

    /// Keeps the GenAI series (ids `file/hash`) of the split.
    pub fn filter(self, ds: &mut Dataset) {
        ds.series.retain(|s| {
            let hash = s.id.rsplit('/').next().unwrap_or("");
            self.contains(hash)
        });
    }
}
