//! Rolling-origin backtest harness on real traces (`apolloctl eval forecast`).
//!
//! Protocol: the last 20% of every series is the test part; forecast origins
//! lie every `origin_step` steps through it and each model sees only the
//! data before the origin (models cap their own training window at
//! `ModelConfig::max_train`). For each series and horizon `h` the error is
//! taken at exactly `h` steps ahead; `rel_mae` divides the model's MAE by the
//! naive MAE over the same origins, and the aggregate is the geometric mean
//! over series (series whose naive MAE is 0 are skipped). MASE scales by the
//! in-sample one-step naive MAE; coverage is the share of targets inside the
//! interval.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use thiserror::Error;

use std::sync::Mutex;

use crate::models::{
    self, lstm, AutoConfig, AutoSelector, Forecast, Model, ModelConfig, ModelError,
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
                values: cpu,
            },
            Series {
                id: "memory_alloc_ratio".into(),
                values: mem,
            },
            Series {
                id: "gpu_alloc_ratio".into(),
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
    /// Model names (see [`models::MODEL_NAMES`], plus [`AUTO_CACHED`]).
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
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct ResultRow {
    /// Model name.
    pub model: String,
    /// Steps ahead.
    pub horizon: usize,
    /// Geometric mean over series of MAE(model) / MAE(naive).
    pub rel_mae_gmean: Option<f64>,
    /// Mean over series of MAE / in-sample one-step naive MAE.
    pub mase_mean: Option<f64>,
    /// Share of targets inside the interval.
    pub coverage_95: Option<f64>,
    /// Mean wall time per series of all fits and forecasts (all origins).
    pub ms_per_series: f64,
    /// Mean wall time of one fit + forecast.
    pub ms_per_fit: f64,
    /// Series that entered the geometric mean.
    pub series_scored: usize,
    /// Forecast calls that failed (scored as missing).
    pub failures: usize,
}

/// The harness output.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Dataset name.
    pub dataset: String,
    /// Number of series.
    pub series: usize,
    /// Interval level used for coverage.
    pub level: f64,
    /// One row per model and horizon.
    pub results: Vec<ResultRow>,
}

/// Per-series, per-horizon sums for one model.
#[derive(Debug, Clone, Default)]
struct Acc {
    abs: Vec<f64>,
    naive_abs: Vec<f64>,
    count: Vec<usize>,
    covered: Vec<usize>,
}

struct SeriesResult {
    /// Per model: accumulators.
    acc: Vec<Acc>,
    /// Per model: total seconds and calls.
    time: Vec<(f64, usize)>,
    failures: Vec<usize>,
    scale: f64,
}

/// Harness-only model name: `auto` as the service runs it, one
/// [`AutoSelector`] per series kept across origins, re-selecting every
/// `reselect_every` calls (the cached fast path in between).
pub const AUTO_CACHED: &str = "auto_cached";

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
    global_lstm: Option<&lstm::Lstm>,
) -> Result<Box<dyn Model>, EvalError> {
    if name == AUTO_CACHED {
        return Ok(Box::new(CachedAuto(Mutex::new(AutoSelector::new(
            AutoConfig {
                model: cfg.clone(),
                ..AutoConfig::default()
            },
        )))));
    }
    if name == "lstm" {
        if let Some(m) = global_lstm {
            return Ok(Box::new(m.clone()));
        }
    }
    models::by_name_with(name, cfg).ok_or_else(|| EvalError::UnknownModel(name.to_string()))
}

fn eval_series(y: &[f64], models: &[Box<dyn Model>], cfg: &EvalConfig) -> SeriesResult {
    let n = y.len();
    let hmax = cfg.horizons.iter().copied().max().unwrap_or(1);
    let test = ((n as f64) * cfg.test_fraction).round() as usize;
    let start = n - test.min(n - 2);
    let scale = y[..start]
        .windows(2)
        .map(|p| (p[1] - p[0]).abs())
        .sum::<f64>()
        / (start.max(2) - 1) as f64;
    let nh = cfg.horizons.len();
    let mut acc = vec![
        Acc {
            abs: vec![0.0; nh],
            naive_abs: vec![0.0; nh],
            count: vec![0; nh],
            covered: vec![0; nh],
        };
        models.len()
    ];
    let mut time = vec![(0.0, 0); models.len()];
    let mut failures = vec![0; models.len()];
    let mut origin = start;
    while origin < n {
        let hist = &y[..origin];
        for (mi, m) in models.iter().enumerate() {
            let t0 = Instant::now();
            let res: Result<Forecast, ModelError> = m.forecast(hist, hmax, cfg.level);
            time[mi].0 += t0.elapsed().as_secs_f64();
            time[mi].1 += 1;
            let f = match res {
                Ok(f) => f,
                Err(_) => {
                    failures[mi] += 1;
                    continue;
                }
            };
            for (hi, &h) in cfg.horizons.iter().enumerate() {
                let target = origin + h - 1;
                if target >= n {
                    continue;
                }
                let actual = y[target];
                let a = &mut acc[mi];
                a.abs[hi] += (actual - f.mean[h - 1]).abs();
                a.naive_abs[hi] += (actual - y[origin - 1]).abs();
                a.count[hi] += 1;
                if actual >= f.lower[h - 1] && actual <= f.upper[h - 1] {
                    a.covered[hi] += 1;
                }
            }
        }
        origin += cfg.origin_step;
    }
    SeriesResult {
        acc,
        time,
        failures,
        scale,
    }
}

/// Runs the backtest of every configured model on every series; `progress`
/// receives one line per finished series.
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
    let series: Vec<&Series> = ds.series.iter().filter(|s| s.values.len() >= 20).collect();
    if series.is_empty() {
        return Err(EvalError::NoSeries(format!(
            "{}: all series shorter than 20",
            ds.name
        )));
    }
    let mut mcfg = cfg.model.clone();
    if mcfg.season.is_none() {
        mcfg.season = ds.season;
    }
    mcfg.validate()?;
    for name in &cfg.models {
        if !models::MODEL_NAMES.contains(&name.as_str()) && name != AUTO_CACHED {
            return Err(EvalError::UnknownModel(name.clone()));
        }
    }
    // The LSTM is one global model trained on every series' training part.
    let global_lstm = if cfg.models.iter().any(|m| m == "lstm") {
        let parts: Vec<&[f64]> = series
            .iter()
            .map(|s| {
                let n = s.values.len();
                let test = ((n as f64) * cfg.test_fraction).round() as usize;
                &s.values[..n - test.min(n - 2)]
            })
            .collect();
        progress("training global lstm");
        let t0 = Instant::now();
        let m = lstm::Lstm::train_global(&parts, &mcfg)?;
        progress(&format!(
            "lstm trained in {:.1} s",
            t0.elapsed().as_secs_f64()
        ));
        Some(m)
    } else {
        None
    };
    // Built per series: stateful models (`auto_cached`) must not share state.
    let build = || -> Result<Vec<Box<dyn Model>>, EvalError> {
        cfg.models
            .iter()
            .map(|n| build_model(n, &mcfg, global_lstm.as_ref()))
            .collect()
    };
    build()?;
    let jobs = cfg.jobs.clamp(1, 16);
    let total = series.len();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let t_start = Instant::now();
    let mut results: Vec<Option<SeriesResult>> = (0..total).map(|_| None).collect();
    std::thread::scope(|scope| {
        let chunks: Vec<(usize, &mut [Option<SeriesResult>])> = {
            let per = total.div_ceil(jobs);
            results
                .chunks_mut(per.max(1))
                .enumerate()
                .map(|(i, c)| (i * per.max(1), c))
                .collect()
        };
        for (offset, chunk) in chunks {
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
    let results: Vec<SeriesResult> = results.into_iter().flatten().collect();
    let mut rows = Vec::new();
    for (mi, name) in cfg.models.iter().enumerate() {
        let secs: f64 = results.iter().map(|r| r.time[mi].0).sum();
        let calls: usize = results.iter().map(|r| r.time[mi].1).sum();
        let failures: usize = results.iter().map(|r| r.failures[mi]).sum();
        for (hi, &h) in cfg.horizons.iter().enumerate() {
            let (mut log_sum, mut scored) = (0.0, 0usize);
            let (mut mase_sum, mut mase_n) = (0.0, 0usize);
            let (mut cov, mut cnt) = (0usize, 0usize);
            for r in &results {
                let a = &r.acc[mi];
                if a.count[hi] == 0 {
                    continue;
                }
                cov += a.covered[hi];
                cnt += a.count[hi];
                let mae = a.abs[hi] / a.count[hi] as f64;
                if a.naive_abs[hi] > 0.0 {
                    let rel = a.abs[hi] / a.naive_abs[hi];
                    // A perfect forecast would give log(0); floor it.
                    log_sum += rel.max(1e-6).ln();
                    scored += 1;
                }
                if r.scale > 0.0 {
                    mase_sum += mae / r.scale;
                    mase_n += 1;
                }
            }
            rows.push(ResultRow {
                model: name.clone(),
                horizon: h,
                rel_mae_gmean: (scored > 0).then(|| (log_sum / scored as f64).exp()),
                mase_mean: (mase_n > 0).then(|| mase_sum / mase_n as f64),
                coverage_95: (cnt > 0).then(|| cov as f64 / cnt as f64),
                ms_per_series: 1e3 * secs / results.len().max(1) as f64,
                ms_per_fit: 1e3 * secs / calls.max(1) as f64,
                series_scored: scored,
                failures,
            });
        }
    }
    Ok(Report {
        dataset: ds.name.clone(),
        series: results.len(),
        level: cfg.level,
        results: rows,
    })
}

/// Renders the report as an aligned text table.
pub fn render_table(report: &Report) -> String {
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.3}"));
    let mut out = format!(
        "dataset {}  series {}  level {}\n{:<16} {:>7} {:>10} {:>9} {:>9} {:>12} {:>10} {:>8}\n",
        report.dataset,
        report.series,
        report.level,
        "model",
        "horizon",
        "rel_mae",
        "mase",
        "coverage",
        "ms/series",
        "ms/fit",
        "failed"
    );
    for r in &report.results {
        out.push_str(&format!(
            "{:<16} {:>7} {:>10} {:>9} {:>9} {:>12.1} {:>10.3} {:>8}\n",
            r.model,
            r.horizon,
            fmt(r.rel_mae_gmean),
            fmt(r.mase_mean),
            fmt(r.coverage_95),
            r.ms_per_series,
            r.ms_per_fit,
            r.failures
        ));
    }
    out
}
