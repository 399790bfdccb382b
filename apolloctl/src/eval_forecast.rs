//! `apolloctl eval forecast`: rolling-origin forecast accuracy on real traces.

use std::path::PathBuf;

use anyhow::Context as _;
use apollo_forecaster::eval::{self, EvalConfig};
use apollo_forecaster::models::{FullModel, ModelConfig};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Output {
    /// Aligned text table.
    Table,
    /// One JSON document per dataset.
    Json,
}

/// Which GenAI containers to evaluate (by the first character of the hash).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Containers {
    /// Every container.
    All,
    /// Hashes starting 0-4: the tuning set.
    Tune,
    /// Hashes starting 5-9: held out from tuning.
    Heldout,
}

impl From<Containers> for eval::HashSplit {
    fn from(c: Containers) -> Self {
        match c {
            Containers::All => eval::HashSplit::All,
            Containers::Tune => eval::HashSplit::Tune,
            Containers::Heldout => eval::HashSplit::HeldOut,
        }
    }
}

/// Which test origins to score (a split in time of the test part).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Origins {
    /// Every origin of the test part.
    All,
    /// The first half of the test part: what openb defaults are tuned on.
    Early,
    /// The second half of the test part: never tuned on.
    Late,
}

impl From<Origins> for eval::OriginPart {
    fn from(o: Origins) -> Self {
        match o {
            Origins::All => eval::OriginPart::All,
            Origins::Early => eval::OriginPart::Early,
            Origins::Late => eval::OriginPart::Late,
        }
    }
}

/// Forecast accuracy by rolling-origin backtest on the GenAI and/or openb traces.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Directory with the three Alibaba GenAI CSVs.
    #[arg(long, env = "APOLLO_EVAL_GENAI")]
    genai: Option<PathBuf>,
    /// GenAI containers to evaluate: `tune` (hash 0-4, what defaults are
    /// tuned on), `heldout` (hash 5-9, never tuned on) or `all`.
    #[arg(
        long,
        value_enum,
        default_value = "all",
        env = "APOLLO_EVAL_CONTAINERS"
    )]
    containers: Containers,
    /// Test origins to score: `early` (first half of the test part, what
    /// openb defaults are tuned on), `late` (second half, never tuned on)
    /// or `all`.
    #[arg(long, value_enum, default_value = "all", env = "APOLLO_EVAL_ORIGINS")]
    origins: Origins,
    /// Directory with the openb pod and node lists.
    #[arg(long, env = "APOLLO_EVAL_OPENB")]
    openb: Option<PathBuf>,
    /// Horizons in steps; defaults to 5,15,30 for GenAI and 6,36,144 for openb.
    #[arg(long, value_delimiter = ',', env = "APOLLO_EVAL_HORIZONS")]
    horizons: Vec<usize>,
    /// Models to evaluate (`auto_cached` = `auto` with one selector kept per
    /// series across origins, as the service runs it; `auto_nohold` = `auto`
    /// without the hold rule and the last-plateau candidate; `auto_narrow` =
    /// `auto` that never chooses the wide combination; `auto_nominal` =
    /// `auto` with intervals at the nominal level; `auto_noguard` = `auto`
    /// without the step-like guard).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "naive,seasonal_naive,mean,median,ets,arima,prophet,lagreg,lstm,auto",
        env = "APOLLO_EVAL_MODELS"
    )]
    models: Vec<String>,
    /// Full models that compete inside `auto` (any of ets, arima, prophet,
    /// lagreg, lstm; `none` for the cheap candidates only); the default is
    /// the service's.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ets,arima,lagreg",
        env = "APOLLO_EVAL_AUTO_FULL"
    )]
    auto_full: Vec<String>,
    /// Output format.
    #[arg(
        short = 'o',
        long,
        value_enum,
        default_value = "table",
        env = "APOLLO_EVAL_OUTPUT"
    )]
    output: Output,
    /// Interval level.
    #[arg(long, default_value_t = 0.95, env = "APOLLO_EVAL_LEVEL")]
    level: f64,
    /// Steps between forecast origins in the test part.
    #[arg(long, default_value_t = 5, env = "APOLLO_EVAL_ORIGIN_STEP")]
    origin_step: usize,
    /// Minimum points for a GenAI series to be used.
    #[arg(long, default_value_t = 1000, env = "APOLLO_EVAL_MIN_POINTS")]
    min_points: usize,
    /// Models train on at most this many recent points.
    #[arg(long, default_value_t = 1440, env = "APOLLO_EVAL_MAX_TRAIN")]
    max_train: usize,
    /// Only the first N series of each dataset (quick runs).
    #[arg(long, env = "APOLLO_EVAL_LIMIT")]
    limit: Option<usize>,
    /// Only series whose family contains one of these strings (e.g.
    /// `gpu_memory`); every family when empty.
    #[arg(long, value_delimiter = ',', env = "APOLLO_EVAL_FAMILIES")]
    families: Vec<String>,
    /// Only every K-th series of each dataset (quick runs over all kinds).
    #[arg(long, default_value_t = 1, env = "APOLLO_EVAL_SAMPLE_EVERY")]
    sample_every: usize,
    /// Worker threads over series (the machine is shared: keep it small).
    #[arg(long, default_value_t = 1, env = "APOLLO_EVAL_JOBS")]
    jobs: usize,
    /// No progress lines on stderr.
    #[arg(long, short)]
    quiet: bool,
    /// Draw the first dataset's first --plot-series series (history, actual,
    /// forecast and its interval at the last origin, by `auto` if asked for,
    /// else the first model) and the error by horizon per model, to
    /// FILE.svg or FILE.png.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// Series drawn with --plot.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=12))]
    plot_series: u16,
}

/// Panels for `--plot`: per series, the last `3 h` points of history, the
/// actual values after the origin and `model`'s forecast from it.
fn forecast_panels(
    ds: &eval::Dataset,
    cfg: &EvalConfig,
    count: usize,
) -> anyhow::Result<Vec<crate::plot::ForecastPanel>> {
    let h = cfg.horizons.iter().copied().max().unwrap_or(15);
    // `auto` when asked for (what the service runs), else the first model.
    let name = if cfg.models.iter().any(|m| m == "auto") {
        "auto".to_string()
    } else {
        cfg.models
            .iter()
            .find(|m| !eval::HARNESS_MODELS.contains(&m.as_str()))
            .cloned()
            .unwrap_or_else(|| "auto".into())
    };
    let model = apollo_forecaster::models::by_name_with(&name, &cfg.model)
        .with_context(|| format!("unknown model {name}"))?;
    let mut panels = Vec::new();
    for s in ds.series.iter().take(count) {
        if s.values.len() < 4 * h {
            continue;
        }
        let origin = s.values.len() - h;
        let f = model
            .forecast(&s.values[..origin], h, cfg.level)
            .map_err(|e| anyhow::anyhow!("{name} on {}: {e}", s.id))?;
        let start = origin.saturating_sub(3 * h);
        panels.push(crate::plot::ForecastPanel {
            title: s.id.chars().take(48).collect(),
            actual: s.values[start..].to_vec(),
            origin: origin - start,
            mean: f.mean,
            lower: f.lower,
            upper: f.upper,
            level: f.level,
            model: f.model_type,
        });
    }
    Ok(panels)
}

/// Runs the command.
pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    if args.genai.is_none() && args.openb.is_none() {
        anyhow::bail!("give --genai DIR and/or --openb DIR");
    }
    if args.sample_every == 0 {
        anyhow::bail!("--sample-every must be at least 1");
    }
    let mut auto_full = Vec::new();
    for name in args.auto_full.iter().map(|m| m.trim()) {
        if name == "none" {
            continue;
        }
        auto_full.push(FullModel::from_name(name).with_context(|| {
            format!("unknown full model `{name}` for --auto-full (known: ets, arima, prophet, lagreg, lstm, none)")
        })?);
    }
    if let Some(p) = &args.plot {
        crate::plot::check_path(p)?;
    }
    let quiet = args.quiet;
    let progress = move |line: &str| {
        if !quiet {
            eprintln!("{line}");
        }
    };
    let base = EvalConfig {
        horizons: args.horizons.clone(),
        models: args.models.iter().map(|m| m.trim().to_string()).collect(),
        level: args.level,
        origin_step: args.origin_step,
        model: ModelConfig {
            max_train: args.max_train,
            ..ModelConfig::default()
        },
        jobs: args.jobs,
        auto_full_models: auto_full,
        origin_part: args.origins.into(),
        ..EvalConfig::default()
    };
    // Fail on a bad model name before loading traces.
    for m in &base.models {
        if apollo_forecaster::models::by_name(m).is_none()
            && !eval::HARNESS_MODELS.contains(&m.as_str())
        {
            anyhow::bail!(
                "unknown model `{m}` (known: {}, {})",
                apollo_forecaster::models::MODEL_NAMES.join(", "),
                eval::HARNESS_MODELS.join(", ")
            );
        }
    }
    let mut datasets = Vec::new();
    if let Some(dir) = &args.genai {
        progress(&format!("loading {}", dir.display()));
        let mut ds =
            eval::load_genai(dir, args.min_points).context("failed to load the GenAI trace")?;
        eval::HashSplit::from(args.containers).filter(&mut ds);
        if ds.series.is_empty() {
            anyhow::bail!(
                "{}: no container in the {:?} split",
                dir.display(),
                args.containers
            );
        }
        datasets.push((ds, vec![5, 15, 30]));
    }
    if let Some(dir) = &args.openb {
        progress(&format!("loading {}", dir.display()));
        let ds = eval::load_openb(dir, 600.0).context("failed to load the openb trace")?;
        datasets.push((ds, vec![6, 36, 144]));
    }
    let mut plotted = false;
    for (mut ds, default_h) in datasets {
        if args.sample_every > 1 {
            ds.series = ds.series.into_iter().step_by(args.sample_every).collect();
        }
        if !args.families.is_empty() {
            ds.series
                .retain(|s| args.families.iter().any(|f| s.family.contains(f.as_str())));
            if ds.series.is_empty() {
                anyhow::bail!("{}: no series of the families {:?}", ds.name, args.families);
            }
        }
        if let Some(limit) = args.limit {
            ds.series.truncate(limit);
        }
        let mut cfg = base.clone();
        if cfg.horizons.is_empty() {
            cfg.horizons = default_h;
        }
        let t0 = std::time::Instant::now();
        let report = eval::evaluate(&ds, &cfg, &progress)
            .with_context(|| format!("evaluation of {} failed", ds.name))?;
        progress(&format!(
            "{}: {} series in {:.1} s",
            ds.name,
            report.n_series,
            t0.elapsed().as_secs_f64()
        ));
        match args.output {
            Output::Json => println!("{}", serde_json::to_string(&report)?),
            Output::Table => print!("{}", eval::render_table(&report)),
        }
        if let (Some(path), false) = (&args.plot, plotted) {
            plotted = true;
            let panels = forecast_panels(&ds, &cfg, usize::from(args.plot_series))?;
            let mut by_model: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
            for r in &report.results {
                let Some(v) = r.rel_mae_gmean else { continue };
                match by_model.iter_mut().find(|(m, _)| *m == r.model) {
                    Some((_, pts)) => pts.push((r.horizon as f64, v)),
                    None => by_model.push((r.model.clone(), vec![(r.horizon as f64, v)])),
                }
            }
            for (_, pts) in &mut by_model {
                pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            }
            crate::plot::forecasts(path, &panels, &by_model)?;
            progress(&format!("plot written to {}", path.display()));
        }
    }
    Ok(())
}
