//! `apolloctl simulate`: replays a pod list against a node list with placement
//! policies (the published GPU-allocation protocol, see
//! `apollo_scheduling::simulate`). The `apollo` policy answers each pod with
//! the engine behind `GetSchedulingPolicy`, fed node insights as in production.

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use apollo_scheduling::scorer::ScoreWeights;
use apollo_scheduling::simulate::{self, Policy, ShapeSource, SimConfig, SimRun};
use serde::Serialize;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Output {
    /// Aligned text table.
    Table,
    /// One JSON document with every run and the means.
    Json,
}

/// Typical-shape source of the `apollo` policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Shapes {
    /// Learned online from the GPU pods placed so far, refreshed by the
    /// state's sweep (what the service does).
    Online,
    /// From the whole pod list.
    Trace,
    /// Learned online, starting from the whole pod list's shapes as a prior.
    Prior,
}

/// Replay a pod list against a node list with placement policies.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Node list CSV (`sn,cpu_milli,memory_mib,gpu,model`).
    #[arg(long, env = "APOLLO_SIM_NODES")]
    nodes: PathBuf,
    /// Pod list CSV (`name,cpu_milli,memory_mib,num_gpu,gpu_milli[,gpu_spec]`).
    #[arg(long, env = "APOLLO_SIM_PODS")]
    pods: PathBuf,
    /// Policies, comma separated: apollo, random, bestfit, dotprod, gpupacking, fgd, or all.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "apollo",
        env = "APOLLO_SIM_POLICY"
    )]
    policy: Vec<String>,
    /// Seed of a single run.
    #[arg(
        long,
        default_value_t = 42,
        env = "APOLLO_SIM_SEED",
        conflicts_with = "seeds"
    )]
    seed: u64,
    /// Seeds: a number, a range `a-b`, or a comma list of those (overrides --seed).
    #[arg(long, env = "APOLLO_SIM_SEEDS")]
    seeds: Option<String>,
    /// Give this share (0-1) of the GPU pods a GPU-model constraint
    /// (`gpu_spec`, one to three of the cluster's models), as the FGD paper's
    /// gpuspec trace variants do; pods that already carry one count towards it.
    #[arg(long, env = "APOLLO_SIM_GPUSPEC_SHARE")]
    gpuspec_share: Option<f64>,
    /// Seed of the `gpu_spec` assignment (the same constraints for every run).
    #[arg(long, default_value_t = 1, env = "APOLLO_SIM_GPUSPEC_SEED")]
    gpuspec_seed: u64,
    /// Requested GPU of the workload relative to cluster capacity.
    #[arg(long, default_value_t = 1.3, env = "APOLLO_SIM_INFLATION")]
    inflation: f64,
    /// Where the `apollo` policy learns typical pod shapes.
    #[arg(long, value_enum, default_value = "online", env = "APOLLO_SIM_SHAPES")]
    shapes: Shapes,
    /// Override an `apollo` scorer weight for a tuning run, `NAME=VALUE`
    /// (repeatable): fragmentation, packing, balance, model_reserve,
    /// model_reserve_by_free, constrained_cpu_pod_packing, cpu_surplus,
    /// cpu_surplus_need, cpu_surplus_unconstrained, gpu_pod_cpu_surplus,
    /// gpu_pod_cpu_surplus_need, frag_resolution.
    /// Published figures use the defaults.
    #[arg(long = "apollo-weight", value_name = "NAME=VALUE")]
    apollo_weights: Vec<String>,
    /// Output format.
    #[arg(
        short = 'o',
        long,
        value_enum,
        default_value = "table",
        env = "APOLLO_SIM_OUTPUT"
    )]
    output: Output,
    /// Leave the per-percent curve out of the JSON.
    #[arg(long, env = "APOLLO_SIM_NO_CURVE")]
    no_curve: bool,
    /// Draw GPU allocation vs arrived workload per policy (mean over seeds),
    /// with the published FGD points of the trace, to FILE.svg or FILE.png.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
}

/// Published FGD means (at 100 % and 130 % arrived) of the openb pod list
/// named by `pods` (default, cpu250, multigpu50), from the FGD paper.
fn published_fgd(pods: &std::path::Path) -> Vec<crate::plot::Published> {
    let name = pods
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let (at100, at130) = if name.contains("cpu250") {
        (93.20, 93.41)
    } else if name.contains("multigpu50") {
        (97.09, 97.18)
    } else if name.contains("default") {
        (95.23, 95.39)
    } else {
        return Vec::new();
    };
    vec![
        ("published FGD (mean of 10 seeds)".into(), 100.0, at100),
        ("published FGD (mean of 10 seeds)".into(), 130.0, at130),
    ]
}

/// Index-wise mean of the runs' curves.
fn mean_curve(runs: &[&SimRun]) -> Vec<f64> {
    let len = runs.iter().map(|r| r.curve.len()).max().unwrap_or(0);
    (0..len)
        .map(|i| mean(runs.iter().filter_map(|r| r.curve.get(i).copied())))
        .collect()
}

/// Parses `42`, `42-51`, `1,5,7-9`.
pub(crate) fn parse_seeds(spec: &str) -> anyhow::Result<Vec<u64>> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let a: u64 = a
                    .trim()
                    .parse()
                    .with_context(|| format!("bad seed range start in {part:?}"))?;
                let b: u64 = b
                    .trim()
                    .parse()
                    .with_context(|| format!("bad seed range end in {part:?}"))?;
                if b < a {
                    bail!("empty seed range {part:?}");
                }
                if b - a >= 100_000 {
                    bail!("seed range {part:?} is too long");
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().with_context(|| format!("bad seed {part:?}"))?),
        }
    }
    if out.is_empty() {
        bail!("no seeds in {spec:?}");
    }
    Ok(out)
}

/// Applies `NAME=VALUE` overrides to the default scorer weights.
fn parse_weights(overrides: &[String]) -> anyhow::Result<ScoreWeights> {
    let mut w = ScoreWeights::default();
    for o in overrides {
        let (name, value) = o
            .split_once('=')
            .with_context(|| format!("--apollo-weight {o:?}: expected NAME=VALUE"))?;
        let v: f64 = value
            .trim()
            .parse()
            .with_context(|| format!("--apollo-weight {o:?}: not a number"))?;
        if !(v.is_finite() && v >= 0.0) {
            bail!("--apollo-weight {o:?}: must be a finite number >= 0");
        }
        let slot = match name.trim() {
            "fragmentation" => &mut w.fragmentation,
            "packing" => &mut w.packing,
            "balance" => &mut w.balance,
            "model_reserve" => &mut w.model_reserve,
            "model_reserve_by_free" => &mut w.model_reserve_by_free,
            "frag_resolution" => &mut w.frag_resolution,
            "constrained_cpu_pod_packing" => &mut w.constrained_cpu_pod_packing,
            "cpu_surplus" => &mut w.cpu_surplus,
            "cpu_surplus_unconstrained" => &mut w.cpu_surplus_unconstrained,
            "cpu_surplus_need" => &mut w.cpu_surplus_need,
            "gpu_pod_cpu_surplus" => &mut w.gpu_pod_cpu_surplus,
            "gpu_pod_cpu_surplus_need" => &mut w.gpu_pod_cpu_surplus_need,
            other => bail!(
                "--apollo-weight: unknown weight {other:?} (expected fragmentation, packing, balance, model_reserve, model_reserve_by_free, constrained_cpu_pod_packing, cpu_surplus, cpu_surplus_need, cpu_surplus_unconstrained, gpu_pod_cpu_surplus, gpu_pod_cpu_surplus_need or frag_resolution)"
            ),
        };
        *slot = v;
    }
    Ok(w)
}

fn parse_policies(names: &[String]) -> anyhow::Result<Vec<Policy>> {
    let mut out = Vec::new();
    for n in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        if n.eq_ignore_ascii_case("all") {
            out.extend(Policy::ALL);
        } else {
            out.push(n.parse::<Policy>()?);
        }
    }
    out.dedup();
    if out.is_empty() {
        bail!("no policy given");
    }
    Ok(out)
}

#[derive(Debug, Serialize)]
struct Mean {
    gpu_alloc_ratio_at_100: f64,
    gpu_alloc_ratio_at_130: f64,
}

#[derive(Debug, Serialize)]
struct PolicyMean {
    policy: String,
    runs: usize,
    gpu_alloc_ratio_at_100: f64,
    gpu_alloc_ratio_at_130: f64,
    failed_pods: f64,
    wall_s: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    runs: Vec<SimRun>,
    mean: Mean,
    by_policy: Vec<PolicyMean>,
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = xs.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 {
        0.0
    } else {
        s / n as f64
    }
}

/// Runs the command.
pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    if !(args.inflation.is_finite() && args.inflation > 0.0 && args.inflation <= 10.0) {
        bail!("--inflation must be in (0, 10], got {}", args.inflation);
    }
    let policies = parse_policies(&args.policy)?;
    let weights = parse_weights(&args.apollo_weights)?;
    if let Some(p) = &args.plot {
        crate::plot::check_path(p)?;
    }
    let seeds = match &args.seeds {
        Some(s) => parse_seeds(s)?,
        None => vec![args.seed],
    };
    let nodes = simulate::load_nodes(&args.nodes).context("failed to read the node list")?;
    let mut pods = simulate::load_pods(&args.pods).context("failed to read the pod list")?;
    if let Some(share) = args.gpuspec_share {
        let n = simulate::assign_gpu_specs(&mut pods, &nodes, share, args.gpuspec_seed)
            .context("bad --gpuspec-share")?;
        eprintln!(
            "{n} GPU pods carry a gpu_spec (share {share}, seed {})",
            args.gpuspec_seed
        );
    }
    let shapes = match args.shapes {
        Shapes::Online => ShapeSource::Online,
        Shapes::Trace => ShapeSource::Trace,
        Shapes::Prior => ShapeSource::Prior,
    };
    let total = policies.len() * seeds.len();
    let mut runs = Vec::with_capacity(total);
    for &policy in &policies {
        for &seed in &seeds {
            let cfg = SimConfig {
                policy,
                seed,
                inflation: args.inflation,
                shapes,
                weights: weights.clone(),
            };
            let r = simulate::run(&nodes, &pods, &cfg)
                .with_context(|| format!("simulation {policy} seed {seed} failed"))?;
            if total > 1 {
                eprintln!(
                    "[{}/{}] {policy} seed {seed}: {:.2}% at 100%, {:.2}% at 130%, {} failed, {:.1}s",
                    runs.len() + 1,
                    total,
                    r.gpu_alloc_ratio_at_100,
                    r.gpu_alloc_ratio_at_130,
                    r.failed_pods,
                    r.wall_s
                );
            }
            runs.push(r);
        }
    }
    let by_policy: Vec<PolicyMean> = policies
        .iter()
        .map(|p| {
            let rs: Vec<&SimRun> = runs.iter().filter(|r| r.policy == p.name()).collect();
            PolicyMean {
                policy: p.name().to_string(),
                runs: rs.len(),
                gpu_alloc_ratio_at_100: mean(rs.iter().map(|r| r.gpu_alloc_ratio_at_100)),
                gpu_alloc_ratio_at_130: mean(rs.iter().map(|r| r.gpu_alloc_ratio_at_130)),
                failed_pods: mean(rs.iter().map(|r| r.failed_pods as f64)),
                wall_s: mean(rs.iter().map(|r| r.wall_s)),
            }
        })
        .collect();
    if let Some(path) = &args.plot {
        let curves: Vec<crate::plot::AllocationCurve> = policies
            .iter()
            .map(|p| crate::plot::AllocationCurve {
                policy: p.name().to_string(),
                points: mean_curve(
                    &runs
                        .iter()
                        .filter(|r| r.policy == p.name())
                        .collect::<Vec<_>>(),
                ),
            })
            .collect();
        let title = format!(
            "GPU allocation: {} on {} ({} seeds)",
            args.pods
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("pods"),
            args.nodes
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("nodes"),
            seeds.len()
        );
        crate::plot::allocation(path, &title, &curves, &published_fgd(&args.pods))?;
        eprintln!("plot written to {}", path.display());
    }
    if args.no_curve {
        for r in &mut runs {
            r.curve.clear();
        }
    }
    let report = Report {
        mean: Mean {
            gpu_alloc_ratio_at_100: mean(runs.iter().map(|r| r.gpu_alloc_ratio_at_100)),
            gpu_alloc_ratio_at_130: mean(runs.iter().map(|r| r.gpu_alloc_ratio_at_130)),
        },
        runs,
        by_policy,
    };
    match args.output {
        Output::Json => println!("{}", serde_json::to_string(&report)?),
        Output::Table => {
            println!(
                "{:<12} {:>5} {:>9} {:>9} {:>9} {:>8}",
                "policy", "runs", "@100%", "@130%", "failed", "wall_s"
            );
            for p in &report.by_policy {
                println!(
                    "{:<12} {:>5} {:>9.2} {:>9.2} {:>9.1} {:>8.2}",
                    p.policy,
                    p.runs,
                    p.gpu_alloc_ratio_at_100,
                    p.gpu_alloc_ratio_at_130,
                    p.failed_pods,
                    p.wall_s
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_accept_numbers_ranges_and_lists() {
        assert_eq!(parse_seeds("42").unwrap(), vec![42]);
        assert_eq!(parse_seeds("42-44").unwrap(), vec![42, 43, 44]);
        assert_eq!(parse_seeds("1,5-6, 9").unwrap(), vec![1, 5, 6, 9]);
        assert!(parse_seeds("5-3").is_err());
        assert!(parse_seeds("x").is_err());
        assert!(parse_seeds("").is_err());
    }

    #[test]
    fn weight_overrides_parse_and_bad_ones_are_rejected() {
        let w = parse_weights(&["model_reserve=0.2".into(), "balance = 0".into()]).unwrap();
        assert_eq!(w.model_reserve, 0.2);
        assert_eq!(w.balance, 0.0);
        assert_eq!(w.packing, ScoreWeights::default().packing);
        for bad in [
            "model_reserve",
            "nope=1",
            "packing=x",
            "packing=-1",
            "packing=inf",
        ] {
            assert!(parse_weights(&[bad.into()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn policies_parse() {
        let p = parse_policies(&["fgd".into(), "Random".into()]).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(parse_policies(&["all".into()]).unwrap().len(), 6);
        assert!(parse_policies(&["nope".into()]).is_err());
    }
}
