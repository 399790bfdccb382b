//! `apolloctl up`: the whole stack locally until Ctrl-C.

use std::{path::PathBuf, time::Duration};

use crate::output::Output;
use crate::stack::{Stack, StackOptions, StopSignals};

/// Where the stack comes from (shared by `up` and `demo`).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct StackArgs {
    /// Use this NATS server instead of starting `nats-server` in a temp dir.
    #[arg(long, env = "APOLLO_NATS_URL")]
    pub(crate) nats_url: Option<String>,
    /// Directory with the service binaries (default: beside apolloctl).
    #[arg(long, env = "APOLLO_BIN_DIR")]
    pub(crate) bin_dir: Option<PathBuf>,
    /// Log filter for the services (their logs go to the work directory).
    #[arg(long, default_value = "info")]
    pub(crate) service_log: String,
    /// How long to wait for every service to report ready.
    #[arg(long, default_value = "60s", value_parser = apollo_common::config::parse_duration)]
    pub(crate) ready_timeout: Duration,
    /// Keep the work directory (logs, JetStream store) after a clean stop.
    #[arg(long)]
    pub(crate) keep_logs: bool,
}

impl StackArgs {
    pub(crate) fn options(&self, free_ports: bool) -> StackOptions {
        StackOptions {
            nats_url: self.nats_url.clone(),
            bin_dir: self.bin_dir.clone(),
            free_ports,
            log: self.service_log.clone(),
            env: Default::default(),
        }
    }
}

/// Arguments of `apolloctl up`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  apolloctl up                 # standard ports where free\n  apolloctl up --free-ports -o json"
)]
pub(crate) struct Args {
    #[command(flatten)]
    stack: StackArgs,
    /// Take free ports instead of the standard ones (50051, 50053-50055, 4222).
    #[arg(long)]
    free_ports: bool,
    /// Output format of the endpoint listing.
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

/// Grace given to the services to drain on stop.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(25);

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let mut signals = StopSignals::listen()?;
    let mut stack = Stack::start(&args.stack.options(args.free_ports)).await?;
    let ready = tokio::select! {
        r = stack.wait_ready(args.stack.ready_timeout) => r,
        sig = signals.recv() => Err(anyhow::anyhow!("{sig} while starting; stack stopped")),
    };
    if let Err(err) = ready {
        stack.stop(STOP_GRACE, true).await?;
        return Err(err);
    }
    print_endpoints(&stack, args.output)?;
    tokio::select! {
        sig = signals.recv() => {
            eprintln!("{sig}: stopping the stack");
            stack.stop(STOP_GRACE, args.stack.keep_logs).await?;
            eprintln!("stopped");
            Ok(())
        }
        exit = stack.child_exit() => {
            let dir = stack.endpoints().work_dir.clone();
            exit.print_log_tail();
            stack.stop(STOP_GRACE, true).await?;
            anyhow::bail!("{exit}; stack stopped, logs in {}", dir.display())
        }
    }
}

fn print_endpoints(stack: &Stack, output: Output) -> anyhow::Result<()> {
    let e = stack.endpoints();
    match output {
        Output::Json => println!("{}", serde_json::to_string(e)?),
        Output::Text => {
            println!(
                "nats                 {}{}",
                e.nats,
                if e.nats_started {
                    "  (started here, JetStream on)"
                } else {
                    ""
                }
            );
            for s in &e.services {
                println!(
                    "{:<20} grpc {:<24} metrics {}/metrics  pid {}",
                    s.service, s.grpc, s.metrics, s.pid
                );
            }
            println!("logs                 {}", e.work_dir.display());
            println!();
            println!("# for other apolloctl commands and the NATS CLI:");
            println!("export APOLLO_NATS_URL={}", e.nats);
            for (var, svc) in [
                ("APOLLO_INGEST_URL", "apollo-ingest"),
                ("APOLLO_SCHEDULING_URL", "apollo-scheduling"),
                ("APOLLO_FORECASTER_URL", "apollo-forecaster"),
                ("APOLLO_ORCHESTRATION_URL", "apollo-orchestration"),
            ] {
                if let Some(s) = e.services.iter().find(|s| s.service == svc) {
                    println!("export {var}={}", s.grpc);
                }
            }
            println!();
            println!("all services ready; Ctrl-C stops everything");
        }
    }
    Ok(())
}
