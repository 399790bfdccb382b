//! `apollo-ingest`: parse the configuration, start telemetry, serve.

use anyhow::Context;
use apollo_ingest::Config;
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let _telemetry = apollo_common::telemetry::init("apollo-ingest", &config.observability)
        .context("failed to initialise telemetry")?;
    apollo_ingest::run(config, apollo_common::shutdown::on_signal())
        .await
        .context("apollo-ingest failed")
}
