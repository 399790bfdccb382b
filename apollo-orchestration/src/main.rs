//! `apollo-orchestration` binary.

use anyhow::Context as _;
use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = apollo_orchestration::Config::parse();
    let _telemetry = apollo_common::telemetry::init("apollo-orchestration", &config.observability)
        .context("failed to initialise telemetry")?;
    let shutdown = apollo_common::shutdown::on_signal();
    apollo_orchestration::run(config, shutdown)
        .await
        .context("apollo-orchestration failed")
}
