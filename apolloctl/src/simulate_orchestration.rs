//! `apolloctl simulate orchestration`: a time-stepped cluster whose pods'
//! memory use follows the real GenAI serving series, with APOLLO's
//! orchestration planners and rails (the service's code) against baselines.
//!
//! Mapping (seeded): the `pod_memory_util_anon` series (memory use relative to
//! the container's limit, 0-1) of the trace directory that cover at least
//! 90 % of the longest one are the workload shapes. Pod `i` takes series `i mod C` (C containers, in hash order),
//! circularly shifted by a random offset, and a memory limit drawn from
//! 8/16/32 GiB: its use at step `t` is `limit * util(t + offset)`. There are
//! `--pods-per-node` pods per node. Pods are placed in random order by the
//! placement core's scorer on their use at step 0, and every node gets the
//! same memory capacity, sized so that the cluster starts at
//! `--start-util` (default 65 %) mean memory use. One step is one trace
//! sample (about 57 s).
//!
//! A migration takes effect `--migration-delay` (default 2 min) after it is
//! decided and counts as a disruption of that pod; until then the pod loads
//! its source node. A node-minute counts as overloaded when the node's memory
//! use is above 90 %. A ping-pong is a pod moved back to a node it left
//! within the last 2 hours.
//!
//! Policies:
//! - `none`: nothing moves;
//! - `reactive`: when a node is over 90 % now, move its largest pod to the
//!   least-loaded node;
//! - `lownodeutil`: the descheduler's LowNodeUtilization every 5 min: nodes
//!   under 20 % are under-used, over 70 % over-used; evict pods (largest
//!   first) from over-used nodes onto the least-loaded under-used node while
//!   the source stays over 70 % and the target under it;
//! - `apollo`: every step, the orchestration planners and safety rails on the
//!   view the service would build, with a per-node forecast (least-squares
//!   trend over the last 15 samples, upper bound = trend + 2 residual standard
//!   deviations, over a 10 min horizon); moves finishing report success to
//!   the rails as the executor would.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use apollo_orchestration::forecast::Outlook;
use apollo_orchestration::planner::{PlannerConfig, Planners, Subject};
use apollo_orchestration::rails::{Rails, RailsConfig};
use apollo_orchestration::view::{NodeView, PlanningView, PodView};
use apollo_placement::demand::PodDemand;
use apollo_placement::fgd::ShapeDistribution;
use apollo_placement::scorer::NodeScorer;
use apollo_placement::snapshot::{ClusterSnapshot, NodeState};
use apollo_proto::{ClusterInsight, NodeResources, PipelineStage, WorkloadSummary};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::simulate::{parse_seeds, Output};

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
const OVERLOAD: f64 = 0.90;
const PING_PONG_WINDOW: Duration = Duration::from_secs(2 * 3600);
const FORECAST_WINDOW: usize = 15;
const FORECAST_HORIZON: Duration = Duration::from_secs(600);

/// Simulate orchestration on the GenAI series.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Directory of the GenAI trace (`pod_memory_util_anon.csv`).
    #[arg(
        long,
        env = "APOLLO_SIM_GENAI",
        default_value = "data/alibaba-genai-2026"
    )]
    genai: PathBuf,
    /// Nodes in the cluster.
    #[arg(long = "nodes", env = "APOLLO_SIM_ORCH_NODES", default_value_t = 12)]
    nodes: usize,
    /// Pods per node.
    #[arg(long, env = "APOLLO_SIM_PODS_PER_NODE", default_value_t = 6)]
    pods_per_node: usize,
    /// Seeds: a number, a range `a-b`, or a comma list of those.
    #[arg(long, env = "APOLLO_SIM_SEEDS", default_value = "42-46")]
    seeds: String,
    /// Mean memory use of the cluster at the start (0-1).
    #[arg(long, env = "APOLLO_SIM_START_UTIL", default_value_t = 0.65)]
    start_util: f64,
    /// Time from a migration decision to the pod running on its target.
    #[arg(long, env = "APOLLO_SIM_MIGRATION_DELAY", default_value = "2m", value_parser = apollo_common::config::parse_duration)]
    migration_delay: Duration,
    /// Policies, comma separated: none, reactive, lownodeutil, apollo, or all.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "all",
        env = "APOLLO_SIM_ORCH_POLICY"
    )]
    policy: Vec<String>,
    /// Output format.
    #[arg(
        short = 'o',
        long,
        value_enum,
        default_value = "table",
        env = "APOLLO_SIM_OUTPUT"
    )]
    output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    None,
    Reactive,
    LowNodeUtil,
    Apollo,
}

impl Policy {
    const ALL: [Policy; 4] = [Self::None, Self::Reactive, Self::LowNodeUtil, Self::Apollo];

    fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Reactive => "reactive",
            Self::LowNodeUtil => "lownodeutil",
            Self::Apollo => "apollo",
        }
    }
}

fn parse_policies(names: &[String]) -> anyhow::Result<Vec<Policy>> {
    let mut out = Vec::new();
    for n in names.iter().map(|n| n.trim().to_ascii_lowercase()) {
        match n.as_str() {
            "all" => out.extend(Policy::ALL),
            "none" => out.push(Policy::None),
            "reactive" => out.push(Policy::Reactive),
            "lownodeutil" => out.push(Policy::LowNodeUtil),
            "apollo" => out.push(Policy::Apollo),
            "" => {}
            other => bail!("unknown policy {other:?} (none, reactive, lownodeutil, apollo, all)"),
        }
    }
    out.dedup();
    if out.is_empty() {
        bail!("no policy given");
    }
    Ok(out)
}

/// One run's outcome.
#[derive(Debug, Clone, Serialize)]
struct Run {
    policy: &'static str,
    seed: u64,
    overload_node_minutes: f64,
    migrations: u64,
    ping_pong: u64,
    pods_disrupted: u64,
    max_node_util_p99: f64,
}

/// Median and range over seeds.
#[derive(Debug, Clone, Serialize)]
struct Aggregate {
    policy: &'static str,
    runs: usize,
    overload_node_minutes: f64,
    overload_node_minutes_min: f64,
    overload_node_minutes_max: f64,
    migrations: f64,
    migrations_min: f64,
    migrations_max: f64,
    ping_pong: f64,
    pods_disrupted: f64,
    max_node_util_p99: f64,
    /// Overload node-minutes relative to `none` in the same seeds (median of per-seed ratios).
    overload_vs_none: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    by_policy: Vec<Aggregate>,
    runs: Vec<Run>,
}

/// The workload: pods with their usage series and the node capacity.
struct Workload {
    /// Per pod: memory use in bytes per step.
    usage: Vec<Vec<f64>>,
    node_capacity: f64,
    initial: Vec<usize>,
    nodes: usize,
    step: Duration,
}

fn build_workload(
    series: &[Vec<f64>],
    nodes: usize,
    per_node: usize,
    start_util: f64,
    seed: u64,
) -> anyhow::Result<Workload> {
    let steps = series.iter().map(Vec::len).min().unwrap_or(0);
    if steps < 2 * FORECAST_WINDOW {
        bail!("series too short ({steps} samples)");
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let pods = nodes * per_node;
    let limits = [8.0 * GIB, 16.0 * GIB, 32.0 * GIB];
    let usage: Vec<Vec<f64>> = (0..pods)
        .map(|i| {
            let s = &series[i % series.len()];
            let offset = rng.random_range(0..steps);
            let limit = limits[rng.random_range(0..limits.len())];
            (0..steps)
                .map(|t| limit * s[(t + offset) % steps].clamp(0.0, 1.0))
                .collect()
        })
        .collect();
    let total0: f64 = usage.iter().map(|u| u[0]).sum();
    let node_capacity = total0 / (start_util * nodes as f64);
    // Initial placement by the placement core on use at step 0, random order.
    let mut snapshot = ClusterSnapshot::new(ShapeDistribution::default());
    for n in 0..nodes {
        snapshot.upsert_node(NodeState::new(
            node_name(n),
            1_000_000,
            node_capacity as u64,
        ));
    }
    let scorer = NodeScorer::default();
    let mut order: Vec<usize> = (0..pods).collect();
    for i in (1..order.len()).rev() {
        let j = rng.random_range(0..=i);
        order.swap(i, j);
    }
    let mut initial = vec![0; pods];
    let mut load: Vec<f64> = vec![0.0; nodes];
    for &p in &order {
        let demand = PodDemand::new(100, usage[p][0] as u64);
        let ranking = scorer.rank(&snapshot, &demand, 1);
        let n = match ranking.top.first() {
            Some(r) => r.node.trim_start_matches("node-").parse::<usize>()?,
            // Nothing fits by the scorer's books: least-loaded node.
            None => (0..nodes)
                .min_by(|a, b| load[*a].total_cmp(&load[*b]))
                .unwrap_or(0),
        };
        let _ = snapshot.assume(&node_name(n), &demand);
        load[n] += usage[p][0];
        initial[p] = n;
    }
    Ok(Workload {
        usage,
        node_capacity,
        initial,
        nodes,
        step: Duration::from_secs(57),
    })
}

fn node_name(n: usize) -> String {
    format!("node-{n:03}")
}

struct Pending {
    pod: usize,
    to: usize,
    at_step: usize,
}

struct Sim<'a> {
    w: &'a Workload,
    placement: Vec<usize>,
    pending: Vec<Pending>,
    left: Vec<Vec<(usize, usize)>>,
    moved: Vec<bool>,
    migrations: u64,
    ping_pong: u64,
    delay_steps: usize,
}

impl<'a> Sim<'a> {
    fn node_loads(&self, t: usize) -> Vec<f64> {
        let mut load = vec![0.0; self.w.nodes];
        for (p, &n) in self.placement.iter().enumerate() {
            load[n] += self.w.usage[p][t];
        }
        load.iter().map(|l| l / self.w.node_capacity).collect()
    }

    fn in_flight(&self, pod: usize) -> bool {
        self.pending.iter().any(|m| m.pod == pod)
    }

    /// Starts a migration at step `t`.
    fn migrate(&mut self, pod: usize, to: usize, t: usize) -> bool {
        if self.in_flight(pod) || self.placement[pod] == to {
            return false;
        }
        let window = (PING_PONG_WINDOW.as_secs() / self.w.step.as_secs()) as usize;
        if self.left[pod]
            .iter()
            .any(|(node, at)| *node == to && t.saturating_sub(*at) <= window)
        {
            self.ping_pong += 1;
        }
        self.pending.push(Pending {
            pod,
            to,
            at_step: t + self.delay_steps,
        });
        self.migrations += 1;
        self.moved[pod] = true;
        true
    }

    /// Applies migrations due at step `t`; returns the finished ones.
    fn land(&mut self, t: usize) -> Vec<(usize, usize, usize)> {
        let mut done = Vec::new();
        let mut i = 0;
        while i < self.pending.len() {
            if self.pending[i].at_step <= t {
                let m = self.pending.swap_remove(i);
                let from = self.placement[m.pod];
                self.left[m.pod].push((from, t));
                self.placement[m.pod] = m.to;
                done.push((m.pod, from, m.to));
            } else {
                i += 1;
            }
        }
        done
    }
}

/// Per-node trend forecast over the last samples.
fn outlook(history: &VecDeque<f64>, step: Duration, threshold: f64) -> Option<Outlook> {
    let n = history.len();
    if n < 3 {
        return None;
    }
    let xs: Vec<f64> = (0..n).map(|i| i as f64).collect();
    let mx = xs.iter().sum::<f64>() / n as f64;
    let my = history.iter().sum::<f64>() / n as f64;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (x, y) in xs.iter().zip(history) {
        sxy += (x - mx) * (y - my);
        sxx += (x - mx) * (x - mx);
    }
    let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    let intercept = my - slope * mx;
    let resid = (xs
        .iter()
        .zip(history)
        .map(|(x, y)| (y - (intercept + slope * x)).powi(2))
        .sum::<f64>()
        / n as f64)
        .sqrt();
    let horizon_steps = (FORECAST_HORIZON.as_secs() / step.as_secs()).max(1) as usize;
    let mut peak: f64 = 0.0;
    let mut crossing = None;
    for h in 1..=horizon_steps {
        let v = intercept + slope * (n - 1 + h) as f64 + 2.0 * resid;
        peak = peak.max(v);
        if crossing.is_none() && v >= threshold {
            crossing = Some(step * h as u32);
        }
    }
    Some(Outlook {
        horizon: FORECAST_HORIZON,
        peak_cpu: 0.0,
        peak_memory: peak.max(0.0),
        crossing_in: crossing,
    })
}

fn run(w: &Workload, policy: Policy, seed: u64, delay: Duration) -> Run {
    let steps = w.usage[0].len();
    let pods = w.usage.len();
    let mut sim = Sim {
        w,
        placement: w.initial.clone(),
        pending: Vec::new(),
        left: vec![Vec::new(); pods],
        moved: vec![false; pods],
        migrations: 0,
        ping_pong: 0,
        delay_steps: (delay.as_secs_f64() / w.step.as_secs_f64()).ceil() as usize,
    };
    let mut planners = Planners::new(PlannerConfig::default());
    let mut rails = Rails::new(RailsConfig {
        max_per_node: 2,
        ..RailsConfig::default()
    });
    let mut history: Vec<VecDeque<f64>> = vec![VecDeque::new(); w.nodes];
    let mut overload_steps = 0u64;
    let mut max_utils = Vec::with_capacity(steps);
    let start = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let descheduler_every = (300 / w.step.as_secs()).max(1) as usize;
    for t in 0..steps {
        let now = start + w.step * t as u32;
        for (pod, _from, to) in sim.land(t) {
            rails.tick(now);
            rails.finish(&format!("sim/pod-{pod:04}"), &node_name(to), true);
        }
        let util = sim.node_loads(t);
        overload_steps += util.iter().filter(|u| **u > OVERLOAD).count() as u64;
        max_utils.push(util.iter().copied().fold(0.0, f64::max));
        for (n, u) in util.iter().enumerate() {
            history[n].push_back(*u);
            if history[n].len() > FORECAST_WINDOW {
                history[n].pop_front();
            }
        }
        match policy {
            Policy::None => {}
            Policy::Reactive => {
                for n in 0..w.nodes {
                    if util[n] <= OVERLOAD {
                        continue;
                    }
                    let largest = (0..pods)
                        .filter(|p| sim.placement[*p] == n && !sim.in_flight(*p))
                        .max_by(|a, b| w.usage[*a][t].total_cmp(&w.usage[*b][t]));
                    let coolest = (0..w.nodes).min_by(|a, b| util[*a].total_cmp(&util[*b]));
                    if let (Some(p), Some(to)) = (largest, coolest) {
                        if to != n {
                            sim.migrate(p, to, t);
                        }
                    }
                }
            }
            Policy::LowNodeUtil => {
                if t % descheduler_every == 0 {
                    let mut u = util.clone();
                    let mut over: Vec<usize> = (0..w.nodes).filter(|n| u[*n] > 0.7).collect();
                    over.sort_by(|a, b| u[*b].total_cmp(&u[*a]));
                    for n in over {
                        let mut on: Vec<usize> = (0..pods)
                            .filter(|p| sim.placement[*p] == n && !sim.in_flight(*p))
                            .collect();
                        on.sort_by(|a, b| w.usage[*b][t].total_cmp(&w.usage[*a][t]));
                        for p in on {
                            if u[n] <= 0.7 {
                                break;
                            }
                            let share = w.usage[p][t] / w.node_capacity;
                            let Some(to) = (0..w.nodes)
                                .filter(|m| u[*m] < 0.2 && u[*m] + share < 0.7)
                                .min_by(|a, b| u[*a].total_cmp(&u[*b]))
                            else {
                                break;
                            };
                            if sim.migrate(p, to, t) {
                                u[n] -= share;
                                u[to] += share;
                            }
                        }
                    }
                }
            }
            Policy::Apollo => {
                let view = apollo_view(w, &sim, &util, &history, t, now);
                rails.tick(now);
                let proposals = planners.plan(&view, &rails);
                let (approved, _) = rails.approve(&view, proposals);
                for p in approved {
                    if let Subject::Migration { pod, to, .. } = &p.subject {
                        let idx: usize =
                            pod.trim_start_matches("pod-").parse().unwrap_or(usize::MAX);
                        let to: usize =
                            to.trim_start_matches("node-").parse().unwrap_or(usize::MAX);
                        if idx < pods && to < w.nodes && !sim.migrate(idx, to, t) {
                            rails.finish(&format!("sim/{pod}"), &node_name(to), false);
                        }
                    }
                }
            }
        }
    }
    max_utils.sort_by(f64::total_cmp);
    let p99 = max_utils[((max_utils.len() - 1) as f64 * 0.99).round() as usize];
    Run {
        policy: policy.name(),
        seed,
        overload_node_minutes: overload_steps as f64 * w.step.as_secs_f64() / 60.0,
        migrations: sim.migrations,
        ping_pong: sim.ping_pong,
        pods_disrupted: sim.moved.iter().filter(|m| **m).count() as u64,
        max_node_util_p99: p99,
    }
}

/// The view the service would build from node agents' insights.
fn apollo_view(
    w: &Workload,
    sim: &Sim<'_>,
    util: &[f64],
    history: &[VecDeque<f64>],
    t: usize,
    now: SystemTime,
) -> PlanningView {
    let mut view = PlanningView::new(now);
    for n in 0..w.nodes {
        let insight = ClusterInsight {
            node_name: node_name(n),
            node_resources: Some(NodeResources {
                cpu_allocatable_cores: 64.0,
                memory_allocatable_bytes: w.node_capacity as i64,
                cpu_used_cores: 0.0,
                memory_used_bytes: (util[n] * w.node_capacity) as i64,
                ..Default::default()
            }),
            running_workloads: (0..w.usage.len())
                .filter(|p| sim.placement[*p] == n)
                .map(|p| WorkloadSummary {
                    pod_name: format!("pod-{p:04}"),
                    pod_namespace: "sim".into(),
                    current_stage: PipelineStage::Inference as i32,
                    cpu_usage: 0.0,
                    memory_usage: w.usage[p][t],
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let o = outlook(
            &history[n],
            w.step,
            PlannerConfig::default().migrate.threshold,
        );
        if let Some(node) = NodeView::from_insight(&insight, o) {
            view.nodes.push(node);
        }
        for wl in &insight.running_workloads {
            view.pods.push(PodView {
                namespace: "sim".into(),
                name: wl.pod_name.clone(),
                node: node_name(n),
                stage: PipelineStage::Inference,
                io_pattern: apollo_proto::IoPattern::Unknown,
                cpu_cores: 0.0,
                memory_bytes: wl.memory_usage,
                io_usage: 0.0,
                cpu_percent: None,
                gpu: false,
                recommended_class: apollo_proto::StorageClass::Unspecified,
                owner: None,
                has_pv: false,
                no_migrate: false,
                disruption_allowed: None,
            });
        }
    }
    view
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn aggregate(policy: Policy, runs: &[Run]) -> Aggregate {
    let mine: Vec<&Run> = runs.iter().filter(|r| r.policy == policy.name()).collect();
    let col = |f: &dyn Fn(&Run) -> f64| mine.iter().map(|r| f(r)).collect::<Vec<f64>>();
    let onm = col(&|r| r.overload_node_minutes);
    let mig = col(&|r| r.migrations as f64);
    let ratios: Vec<f64> = mine
        .iter()
        .filter_map(|r| {
            let none = runs
                .iter()
                .find(|n| n.policy == "none" && n.seed == r.seed)?;
            (none.overload_node_minutes > 0.0)
                .then(|| r.overload_node_minutes / none.overload_node_minutes)
        })
        .collect();
    Aggregate {
        policy: policy.name(),
        runs: mine.len(),
        overload_node_minutes: median(onm.clone()),
        overload_node_minutes_min: onm.iter().copied().fold(f64::INFINITY, f64::min),
        overload_node_minutes_max: onm.iter().copied().fold(0.0, f64::max),
        migrations: median(mig.clone()),
        migrations_min: mig.iter().copied().fold(f64::INFINITY, f64::min),
        migrations_max: mig.iter().copied().fold(0.0, f64::max),
        ping_pong: median(col(&|r| r.ping_pong as f64)),
        pods_disrupted: median(col(&|r| r.pods_disrupted as f64)),
        max_node_util_p99: median(col(&|r| r.max_node_util_p99)),
        overload_vs_none: (!ratios.is_empty()).then(|| median(ratios)),
    }
}

/// Runs the subcommand.
pub(crate) fn run_cli(args: Args) -> anyhow::Result<()> {
    if !(0.05..=0.95).contains(&args.start_util) {
        bail!("--start-util must be within 0.05-0.95");
    }
    if args.nodes < 2 || args.pods_per_node == 0 {
        bail!("need at least 2 nodes and 1 pod per node");
    }
    let seeds = parse_seeds(&args.seeds)?;
    let policies = parse_policies(&args.policy)?;
    let data = apollo_forecaster::eval::load_genai(&args.genai, 2 * FORECAST_WINDOW).with_context(
        || {
            format!(
                "failed to load the GenAI trace from {}",
                args.genai.display()
            )
        },
    )?;
    let mut series: Vec<Vec<f64>> = data
        .series
        .into_iter()
        .filter(|s| s.id.starts_with("pod_memory_util_anon/"))
        .map(|s| s.values)
        .collect();
    // Containers that lived through (nearly) the whole trace only: the
    // simulation runs as long as the shortest series it uses.
    let longest = series.iter().map(Vec::len).max().unwrap_or(0);
    series.retain(|s| s.len() * 10 >= longest * 9);
    if series.is_empty() {
        bail!("{}: no pod_memory_util_anon series", args.genai.display());
    }
    let mut runs = Vec::new();
    for &seed in &seeds {
        let w = build_workload(
            &series,
            args.nodes,
            args.pods_per_node,
            args.start_util,
            seed,
        )?;
        for &p in &policies {
            let r = run(&w, p, seed, args.migration_delay);
            if args.output == Output::Table {
                eprintln!(
                    "{:>12} seed {seed}: {:.0} overload node-min, {} migrations, {} ping-pong",
                    r.policy, r.overload_node_minutes, r.migrations, r.ping_pong
                );
            }
            runs.push(r);
        }
    }
    let report = Report {
        by_policy: policies.iter().map(|p| aggregate(*p, &runs)).collect(),
        runs,
    };
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => {
            println!(
                "{:<12} {:>22} {:>10} {:>10} {:>10} {:>8} {:>10}",
                "policy",
                "overload node-min",
                "x none",
                "migrations",
                "ping-pong",
                "pods",
                "p99 max"
            );
            for a in &report.by_policy {
                println!(
                    "{:<12} {:>8.0} ({:>5.0}-{:>5.0}) {:>10} {:>10.0} {:>10.0} {:>8.0} {:>9.1}%",
                    a.policy,
                    a.overload_node_minutes,
                    a.overload_node_minutes_min,
                    a.overload_node_minutes_max,
                    a.overload_vs_none.map_or("-".into(), |r| format!("{r:.2}")),
                    a.migrations,
                    a.ping_pong,
                    a.pods_disrupted,
                    a.max_node_util_p99 * 100.0
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waves(n: usize) -> Vec<Vec<f64>> {
        (0..4)
            .map(|k| {
                (0..n)
                    .map(|t| 0.55 + 0.35 * ((t as f64 / 40.0) + k as f64).sin())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn cluster_starts_at_the_requested_mean_use() {
        let w = build_workload(&waves(200), 6, 5, 0.65, 7).unwrap();
        let total: f64 = w.usage.iter().map(|u| u[0]).sum();
        let mean = total / (w.node_capacity * 6.0);
        assert!((mean - 0.65).abs() < 1e-9, "{mean}");
        assert_eq!(w.initial.len(), 30);
    }

    #[test]
    fn none_never_moves_and_apollo_never_ping_pongs() {
        let w = build_workload(&waves(300), 6, 5, 0.7, 3).unwrap();
        let none = run(&w, Policy::None, 3, Duration::from_secs(120));
        assert_eq!(none.migrations, 0);
        let apollo = run(&w, Policy::Apollo, 3, Duration::from_secs(120));
        assert_eq!(apollo.ping_pong, 0);
        assert!(apollo.overload_node_minutes <= none.overload_node_minutes);
    }
}
