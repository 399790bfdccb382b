//! `apolloctl`: APOLLO's command-line tool.

use clap::{Parser, Subcommand};

mod eval_forecast;
mod replay;
mod simulate;
mod simulate_orchestration;

/// APOLLO command-line tool.
#[derive(Debug, Parser)]
#[command(name = "apolloctl", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Measure a component on real traces.
    #[command(subcommand)]
    Eval(EvalCommand),
    /// Replay a pod list against a node list with a placement policy (the
    /// published GPU-allocation protocol), or `simulate orchestration`.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Simulate(SimulateArgs),
    /// Drive a running APOLLO stack with a real trace and print its decisions.
    Replay(replay::Args),
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Eval(EvalCommand::Forecast(args)) => eval_forecast::run(args),
        Command::Simulate(SimulateArgs {
            command: Some(SimulateCommand::Orchestration(args)),
            ..
        }) => simulate_orchestration::run_cli(args),
        Command::Simulate(SimulateArgs {
            placement: Some(args),
            ..
        }) => simulate::run(args),
        Command::Simulate(_) => anyhow::bail!("simulate needs --nodes and --pods, or a subcommand"),
        Command::Replay(args) => replay::run(args),
    }
}
