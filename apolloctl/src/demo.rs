//! `apolloctl demo`: the whole stack on the shipped trace excerpt, with a
//! running account of what the engines decide.
//!
//! Starts the stack on free ports (`apolloctl up`), replays the openb pods
//! through it (`apolloctl replay`), and meanwhile follows the bus: forecasts
//! (summarised every few seconds), early warnings and orchestration policies
//! as they appear, scheduling decisions counted by kind. Ends by itself with
//! a summary, or keeps running with `--follow` until Ctrl-C.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use apollo_proto::{OrchestrationPolicy, ResourceAlert, ResourcePrediction, SchedulingPolicy};
use clap::Parser as _;
use futures::StreamExt as _;
use serde::Serialize;

use crate::inspect::{action_name, decision_name};
use crate::output::Output;
use crate::stack::{Service, Stack, StopSignals};
use crate::up::{StackArgs, STOP_GRACE};

/// Arguments of `apolloctl demo`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  apolloctl demo                       # a few minutes, then a summary\n  apolloctl demo --short               # about a minute (what CI runs)\n  apolloctl demo --pods 0 --follow     # every pod, then keep running until Ctrl-C"
)]
pub(crate) struct Args {
    #[command(flatten)]
    stack: StackArgs,
    /// Pods of the trace to replay (0 = all 8,152).
    #[arg(long)]
    pods: Option<usize>,
    /// Print every Nth scheduling decision.
    #[arg(long)]
    show_every: Option<usize>,
    /// A short run (fewer pods, brief observation): what CI runs.
    #[arg(long)]
    short: bool,
    /// Keep running after the replay, narrating, until Ctrl-C.
    #[arg(long)]
    follow: bool,
    /// How long to keep watching forecasts and policies after the replay.
    #[arg(long, value_parser = apollo_common::config::parse_duration)]
    observe: Option<Duration>,
    /// openb trace directory (default: the excerpt shipped in apolloctl).
    #[arg(long)]
    trace_dir: Option<std::path::PathBuf>,
    /// Summary format (`json` prints the summary as one JSON document last).
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

/// What the demo saw.
#[derive(Debug, Default, Clone, Serialize)]
struct Account {
    scheduling_decisions: BTreeMap<String, u64>,
    forecasts: u64,
    nodes_forecast: u64,
    alerts_raised: BTreeMap<String, u64>,
    alerts_cleared: u64,
    orchestration_policies: BTreeMap<String, u64>,
    #[serde(skip)]
    window: Window,
    #[serde(skip)]
    printed_alerts: u64,
    #[serde(skip)]
    printed_policies: u64,
}

/// Forecasts since the last summary line.
#[derive(Debug, Default, Clone)]
struct Window {
    nodes: BTreeMap<String, (f64, f64, f64)>,
    peak: Option<(String, &'static str, f64)>,
}

/// The demo's summary (`-o json`).
#[derive(Debug, Serialize)]
struct Summary {
    /// `apolloctl replay`'s summary (placed, unplaced, GPU allocation, latency).
    replay: Option<serde_json::Value>,
    pods_requested: usize,
    seconds: f64,
    #[serde(flatten)]
    account: Account,
}

const MAX_PRINTED: u64 = 40;

fn last_point(p: &ResourcePrediction) -> Option<(f64, f64, f64)> {
    p.predicted_usage
        .last()
        .map(|u| (u.cpu_usage, u.memory_usage, u.gpu_usage))
}

fn on_message(acc: &Mutex<Account>, prefix: &str, subject: &str, payload: &[u8], quiet: bool) {
    let rest = subject
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('.'))
        .unwrap_or("");
    let mut acc = acc.lock().unwrap_or_else(|p| p.into_inner());
    if rest.starts_with("policy.scheduling.") {
        if let Ok(p) = serde_json::from_slice::<SchedulingPolicy>(payload) {
            *acc.scheduling_decisions
                .entry(decision_name(p.decision).to_string())
                .or_default() += 1;
        }
    } else if rest.starts_with("policy.orchestration.") {
        if let Ok(p) = serde_json::from_slice::<OrchestrationPolicy>(payload) {
            let action = action_name(p.action);
            *acc.orchestration_policies
                .entry(action.to_string())
                .or_default() += 1;
            if !quiet && acc.printed_policies < MAX_PRINTED {
                acc.printed_policies += 1;
                println!("[orchestration] {action}: {}", p.reason);
            }
        }
    } else if rest.starts_with("forecast.") {
        if let Ok(p) = serde_json::from_slice::<ResourcePrediction>(payload) {
            acc.forecasts += 1;
            if let Some((cpu, mem, gpu)) = last_point(&p) {
                for (res, v) in [("cpu", cpu), ("memory", mem), ("gpu", gpu)] {
                    if acc.window.peak.as_ref().is_none_or(|(_, _, pv)| v > *pv) {
                        acc.window.peak = Some((p.node_name.clone(), res, v));
                    }
                }
                acc.window
                    .nodes
                    .insert(p.node_name.clone(), (cpu, mem, gpu));
            }
        }
    } else if rest.starts_with("alert.") {
        if let Ok(a) = serde_json::from_slice::<ResourceAlert>(payload) {
            let raised = a.state == apollo_proto::AlertState::Raised as i32;
            if raised {
                *acc.alerts_raised
                    .entry(format!("{}/{}", a.kind, a.resource))
                    .or_default() += 1;
            } else {
                acc.alerts_cleared += 1;
            }
            if !quiet && acc.printed_alerts < MAX_PRINTED {
                acc.printed_alerts += 1;
                println!(
                    "[alert] {} {} {} on {}: {}",
                    if raised { "RAISED" } else { "cleared" },
                    a.kind,
                    a.resource,
                    a.node_name,
                    a.message
                );
            }
        }
    }
}

/// Prints one line about the forecasts received since the last call.
fn flush_forecasts(acc: &Mutex<Account>, quiet: bool) {
    let mut acc = acc.lock().unwrap_or_else(|p| p.into_inner());
    let w = std::mem::take(&mut acc.window);
    if w.nodes.is_empty() {
        return;
    }
    acc.nodes_forecast = acc.nodes_forecast.max(w.nodes.len() as u64);
    if quiet {
        return;
    }
    let n = w.nodes.len() as f64;
    let (c, m, g) = w
        .nodes
        .values()
        .fold((0.0, 0.0, 0.0), |a, v| (a.0 + v.0, a.1 + v.1, a.2 + v.2));
    let peak = w
        .peak
        .map(|(node, res, v)| format!("; highest: {node} {res} {v:.0}%"))
        .unwrap_or_default();
    println!(
        "[forecast] {} nodes; mean predicted use at the horizon: cpu {:.1}% memory {:.1}% gpu {:.1}%{peak}",
        w.nodes.len(),
        c / n,
        m / n,
        g / n
    );
}

/// `apolloctl demo`.
pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let pods = args.pods.unwrap_or(if args.short { 300 } else { 2000 });
    let observe = args.observe.unwrap_or(if args.short {
        Duration::from_secs(20)
    } else {
        Duration::from_secs(60)
    });
    let quiet = args.output == Output::Json;
    let mut opts = args.stack.options(true);
    // A demo cannot wait an hour for history: the forecaster resamples at a
    // 2 s step and refreshes every 5 s, so forecasts appear within a minute.
    opts.env.insert(
        Service::Forecaster.binary(),
        vec![
            ("APOLLO_FORECAST_STEP".into(), "2s".into()),
            ("APOLLO_FORECAST_REFRESH_INTERVAL".into(), "5s".into()),
            ("APOLLO_FORECAST_MIN_HISTORY".into(), "12".into()),
        ],
    );
    let mut signals = StopSignals::listen()?;
    eprintln!("== starting nats-server and the four services");
    let mut stack = Stack::start(&opts).await?;
    let ready = tokio::select! {
        r = stack.wait_ready(args.stack.ready_timeout) => r,
        sig = signals.recv() => Err(anyhow::anyhow!("{sig} while starting; stack stopped")),
    };
    if let Err(err) = ready {
        stack.stop(STOP_GRACE, true).await?;
        return Err(err);
    }
    let endpoints = stack.endpoints().clone();
    for s in &endpoints.services {
        eprintln!(
            "   {:<21} grpc {}  metrics {}/metrics",
            s.service, s.grpc, s.metrics
        );
    }
    eprintln!(
        "   tap the streams with: nats --server {} sub 'apollo.>'   (or apolloctl tap 'apollo.>' with APOLLO_NATS_URL set)",
        endpoints.nats
    );

    let account = Arc::new(Mutex::new(Account::default()));
    let nats = crate::client::nats(&endpoints.nats).await?;
    let mut sub = nats
        .subscribe("apollo.>")
        .await
        .context("cannot subscribe to apollo.>")?;
    nats.flush()
        .await
        .context("NATS did not confirm the subscription")?;
    let acc = Arc::clone(&account);
    let narrator = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        tick.tick().await;
        loop {
            tokio::select! {
                m = sub.next() => match m {
                    Some(m) => on_message(&acc, "apollo", m.subject.as_str(), &m.payload, quiet),
                    None => return,
                },
                _ = tick.tick() => flush_forecasts(&acc, quiet),
            }
        }
    });

    let mut argv: Vec<String> = vec![
        "replay".into(),
        "--ingest".into(),
        endpoints.grpc(Service::Ingest).into(),
        "--scheduling".into(),
        endpoints.grpc(Service::Scheduling).into(),
        "--forecaster".into(),
        endpoints.grpc(Service::Forecaster).into(),
        "--pods".into(),
        pods.to_string(),
        "--show-every".into(),
        args.show_every
            .unwrap_or(if quiet {
                0
            } else if args.short {
                10
            } else {
                25
            })
            .to_string(),
    ];
    if let Some(dir) = &args.trace_dir {
        argv.push("--trace-dir".into());
        argv.push(dir.display().to_string());
    }
    let mut replay_args = ReplayArgv::try_parse_from(argv)
        .context("internal: replay arguments")?
        .args;
    replay_args.quiet = quiet;
    eprintln!(
        "== replaying {} pods of the openb trace",
        if pods == 0 {
            "all".to_string()
        } else {
            pods.to_string()
        }
    );
    let outcome = tokio::select! {
        r = crate::replay::replay(replay_args) => r.map(Some),
        exit = stack.child_exit() => {
            exit.print_log_tail();
            Err(anyhow::anyhow!("{exit}"))
        }
        _ = signals.recv() => Ok(None),
    };
    let mut interrupted = matches!(outcome, Ok(None));
    if outcome.is_ok() && !interrupted {
        if args.follow {
            eprintln!("== replay done; following the engines until Ctrl-C");
        } else {
            eprintln!("== replay done; watching forecasts and policies for {observe:?}");
        }
        let until = tokio::time::sleep(if args.follow {
            Duration::from_secs(u64::MAX / 4)
        } else {
            observe
        });
        tokio::select! {
            _ = until => {}
            _ = signals.recv() => interrupted = true,
            exit = stack.child_exit() => {
                exit.print_log_tail();
                narrator.abort();
                stack.stop(STOP_GRACE, true).await?;
                anyhow::bail!("{exit}");
            }
        }
    }
    flush_forecasts(&account, quiet);
    narrator.abort();
    let keep = args.stack.keep_logs || outcome.is_err();
    let work_dir = endpoints.work_dir.clone();
    stack.stop(STOP_GRACE, keep).await?;
    let replay = outcome?;

    let acc = account.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let summary = Summary {
        replay,
        pods_requested: pods,
        seconds: started.elapsed().as_secs_f64(),
        account: acc,
    };
    match args.output {
        Output::Json => println!("{}", serde_json::to_string(&summary)?),
        Output::Text => {
            let join = |m: &BTreeMap<String, u64>| {
                if m.is_empty() {
                    "none".to_string()
                } else {
                    m.iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                }
            };
            println!();
            println!(
                "== demo summary ({:.0} s{})",
                summary.seconds,
                if interrupted { ", interrupted" } else { "" }
            );
            println!(
                "scheduling decisions   {}",
                join(&summary.account.scheduling_decisions)
            );
            println!(
                "forecasts              {} published, up to {} nodes per refresh",
                summary.account.forecasts, summary.account.nodes_forecast
            );
            println!(
                "early warnings         raised {} cleared {}",
                join(&summary.account.alerts_raised),
                summary.account.alerts_cleared
            );
            println!(
                "orchestration policies {}",
                join(&summary.account.orchestration_policies)
            );
            if keep {
                println!("logs                   {}", work_dir.display());
            }
        }
    }
    Ok(())
}

/// Parses replay's own flags, so the demo drives it exactly as a user would.
#[derive(Debug, clap::Parser)]
struct ReplayArgv {
    #[command(flatten)]
    args: crate::replay::Args,
}
