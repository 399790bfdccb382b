//! `apolloctl`: APOLLO's command-line tool.
//!
//! Exit codes: 0 success, 1 failure (unreachable server, bad data, a child
//! that died), 2 usage error (bad arguments). Errors print as one line on
//! stderr.

use clap::{CommandFactory as _, Parser, Subcommand};

mod client;
mod cpu_pin;
mod demo;
mod eval_forecast;
mod inspect;
mod load;
mod output;
mod plot;
mod replay;
mod simulate;
mod simulate_orchestration;
mod stack;
mod top;
mod traces;
mod up;

/// APOLLO command-line tool: run the stack locally, drive it with real
/// traces, inspect its decisions, and measure its components.
#[derive(Debug, Parser)]
#[command(
    name = "apolloctl",
    version,
    about,
    after_help = "Examples:\n  apolloctl demo                         # the whole stack on the shipped trace excerpt\n  apolloctl up                           # the stack until Ctrl-C\n  apolloctl policy get openb/openb-pod-0017\n  apolloctl tap 'apollo.alert.>'"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    tls: client::ClientTlsArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole stack locally (nats-server and the four services) until Ctrl-C.
    Up(up::Args),
    /// The stack plus a replay of the shipped trace excerpt, narrating what the engines decide.
    Demo(demo::Args),
    /// Drive a running APOLLO stack with a real trace and print its decisions.
    Replay(replay::Args),
    /// Drive ingest and the scheduling engine at fixed rates; report
    /// throughput, latency percentiles, errors by code and memory.
    Load(load::Args),
    /// Scheduling or orchestration policy for a pod.
    #[command(subcommand)]
    Policy(inspect::PolicyCommand),
    /// Live terminal view of nodes: allocation, use, forecasts, alerts, policies.
    Top(top::Args),
    /// Stream orchestration policies as the orchestration engine issues them.
    Watch(inspect::WatchArgs),
    /// A node's resource forecast.
    Forecast(inspect::ForecastArgs),
    /// Print messages on a NATS subject, decoded by type.
    Tap(inspect::TapArgs),
    /// The inputs and factors behind a policy, by its request id.
    Explain(inspect::ExplainArgs),
    /// Measure a component on real traces.
    #[command(subcommand)]
    Eval(EvalCommand),
    /// Replay a pod list against a node list with a placement policy (the
    /// published GPU-allocation protocol), or `simulate orchestration`.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Simulate(SimulateArgs),
    /// Print a shell completion script.
    Completions {
        /// Shell.
        shell: clap_complete::Shell,
    },
}

/// `simulate` runs placement unless a subcommand is given.
#[derive(Debug, clap::Args)]
struct SimulateArgs {
    #[command(subcommand)]
    command: Option<SimulateCommand>,
    #[command(flatten)]
    placement: Option<simulate::Args>,
}

#[derive(Debug, Subcommand)]
enum SimulateCommand {
    /// Orchestration policies on a time-stepped cluster following the GenAI series.
    Orchestration(simulate_orchestration::Args),
}

#[derive(Debug, Subcommand)]
enum EvalCommand {
    /// Forecast accuracy by rolling-origin backtest.
    Forecast(eval_forecast::Args),
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("failed to start the async runtime: {e}"))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    client::configure_tls(&cli.tls)?;
    match cli.command {
        Command::Up(args) => runtime()?.block_on(up::run(args)),
        Command::Demo(args) => runtime()?.block_on(demo::run(args)),
        Command::Replay(args) => replay::run(args),
        Command::Load(args) => load::run(args),
        Command::Policy(cmd) => runtime()?.block_on(inspect::policy(cmd)),
        Command::Top(args) => runtime()?.block_on(top::run(args)),
        Command::Watch(args) => runtime()?.block_on(inspect::watch(args)),
        Command::Forecast(args) => runtime()?.block_on(inspect::forecast(args)),
        Command::Tap(args) => runtime()?.block_on(inspect::tap(args)),
        Command::Explain(args) => runtime()?.block_on(inspect::explain(args)),
        Command::Eval(EvalCommand::Forecast(args)) => eval_forecast::run(args),
        Command::Simulate(SimulateArgs {
            command: Some(SimulateCommand::Orchestration(args)),
            ..
        }) => simulate_orchestration::run_cli(args),
        Command::Simulate(SimulateArgs {
            placement: Some(args),
            ..
        }) => simulate::run(args),
        Command::Simulate(_) => Err(client::UsageError(
            "simulate needs --nodes and --pods, or a subcommand".into(),
        )
        .into()),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "apolloctl",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => {
            // --help, --version
            let _ = err.print();
            return std::process::ExitCode::SUCCESS;
        }
        Err(err) => {
            // clap's first line names the problem; the usage block after it
            // is what `--help` prints.
            let text = err.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!(
                "apolloctl: {} (see --help)",
                first.trim_start_matches("error: ").trim()
            );
            return std::process::ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => match err.downcast_ref::<client::UsageError>() {
            Some(usage) => {
                eprintln!("apolloctl: {usage}");
                std::process::ExitCode::from(2)
            }
            None => {
                eprintln!("apolloctl: {}", one_line(&format!("{err:#}")));
                std::process::ExitCode::FAILURE
            }
        },
    }
}

/// Multi-line causes joined on one line, so scripts see one error line.
fn one_line(msg: &str) -> String {
    msg.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}
