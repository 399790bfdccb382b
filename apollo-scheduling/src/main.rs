//! `apollo-scheduling`: the Scheduling Policy Engine service.

use anyhow::Context as _;
use apollo_scheduling::config::Config;
use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let _telemetry = apollo_common::telemetry::init("apollo-scheduling", &config.observability)
        .context("failed to initialise telemetry")?;
    let listener = tokio::net::TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("failed to bind {}", config.grpc_addr))?;
    tracing::info!(addr = %config.grpc_addr, "serving SchedulingPolicyService");
    let shutdown = apollo_common::shutdown::on_signal();
    apollo_scheduling::service::serve(config, listener, shutdown)
        .await
        .context("scheduling service failed")
}
