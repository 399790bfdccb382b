//! `apolloctl`: APOLLO's command-line tool.

use clap::{Parser, Subcommand};

mod eval_forecast;
mod replay;
mod simulate;
mod traces;

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
    /// published GPU-allocation protocol).
    Simulate(simulate::Args),
    /// Drive a running APOLLO stack with a real trace and print its decisions.
    Replay(replay::Args),
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
        Command::Simulate(args) => simulate::run(args),
        Command::Replay(args) => replay::run(args),
    }
}
