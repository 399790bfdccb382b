//! `apollo-scheduling`: parse the configuration, start telemetry, serve.

use anyhow::Context as _;
use apollo_scheduling::config::Config;
use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let _telemetry = apollo_common::telemetry::init("apollo-scheduling", &config.observability)
        .context("failed to initialise telemetry")?;
    apollo_scheduling::service::run(config, apollo_common::shutdown::on_signal())
        .await
        .context("apollo-scheduling failed")
}
