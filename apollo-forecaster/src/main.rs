//! `apollo-forecaster`: parse the configuration, start telemetry, serve.

use anyhow::Context;
use apollo_forecaster::Config;
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    config.validate().context("invalid configuration")?;
    let _telemetry = apollo_common::telemetry::init("apollo-forecaster", &config.observability)
        .context("failed to initialise telemetry")?;
    apollo_forecaster::run(config, apollo_common::shutdown::on_signal())
        .await
        .context("forecaster failed")
}
