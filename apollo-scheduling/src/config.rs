//! Service configuration: every flag has an `APOLLO_*` environment variable.
//!
//! [`Config`] is what `main` parses; [`EngineConfig`] is the part the decision
//! path needs, so the simulator and tests can build an engine without clap.

use std::{net::SocketAddr, time::Duration};

use apollo_common::config::{parse_duration, NatsArgs, ObservabilityArgs, StreamArgs};
use clap::{Args, Parser};

use crate::error::Error;

/// Command line and environment of the `apollo-scheduling` binary.
#[derive(Debug, Clone, Parser)]
#[command(name = "apollo-scheduling", version, about)]
pub struct Config {
    /// Address of the gRPC server (this service's API, health and reflection).
    #[arg(
        long = "grpc-addr",
        env = "APOLLO_GRPC_ADDR",
        default_value = "0.0.0.0:50054"
    )]
    pub grpc_addr: SocketAddr,
    /// Decision-path settings.
    #[command(flatten)]
    pub engine: EngineConfig,
    /// Publishing and feedback settings.
    #[command(flatten)]
    pub service: ServiceArgs,
    /// NATS connection.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// JetStream retention.
    #[command(flatten)]
    pub streams: StreamArgs,
    /// Bounds of the in-memory cluster view.
    #[command(flatten)]
    pub view: apollo_common::config::ViewArgs,
    /// TLS of the gRPC server (plaintext h2c when unset).
    #[command(flatten)]
    pub grpc_tls: apollo_common::grpc_tls::GrpcTlsArgs,
    /// Message sizes, calls in progress and per-client rate of the gRPC server.
    #[command(flatten)]
    pub grpc_limits: apollo_common::grpc_limits::GrpcLimitArgs,
    /// Logs, traces, metrics endpoint, shutdown grace.
    #[command(flatten)]
    pub observability: ObservabilityArgs,
}

/// Settings of the decision path ([`crate::engine::Engine`]).
#[derive(Debug, Clone, Args)]
pub struct EngineConfig {
    /// Node preferences returned per policy (the scheduler reads them all).
    #[arg(long = "top-nodes", env = "APOLLO_TOP_NODES", default_value_t = 20)]
    pub top_nodes: usize,
    /// A node whose latest insight is older than this is left out of decisions.
    #[arg(long = "stale-after", env = "APOLLO_STALE_AFTER", default_value = "2m", value_parser = parse_duration)]
    pub stale_after: Duration,
    /// How far ahead forecasts are read (peaks, overload, capacity freeing for DELAY).
    #[arg(long = "forecast-horizon", env = "APOLLO_SCHED_FORECAST_HORIZON", default_value = "30m", value_parser = parse_duration)]
    pub forecast_horizon: Duration,
    /// Predicted utilisation (a fraction, 0-1) at or above which a node
    /// counts as overloaded when scoring.
    #[arg(
        long = "overload-threshold",
        env = "APOLLO_SCHED_OVERLOAD_THRESHOLD",
        default_value_t = 0.9
    )]
    pub overload_threshold: f64,
    /// How long a pod stays assumed on the node it was recommended for, when no
    /// insight shows it and no report confirms it.
    #[arg(long = "assume-ttl", env = "APOLLO_ASSUME_TTL", default_value = "60s", value_parser = parse_duration)]
    pub assume_ttl: Duration,
    /// Most pods assumed at once. Past it the oldest assumption ends
    /// (counted as `evicted`), so decisions without feedback or insights
    /// cannot grow the engine's memory without bound within the TTL.
    #[arg(
        long = "max-assumed",
        env = "APOLLO_MAX_ASSUMED",
        default_value_t = 50_000
    )]
    pub max_assumed: usize,
    /// Half-life of a node's bind-failure penalty.
    #[arg(long = "failure-penalty-decay", env = "APOLLO_FAILURE_PENALTY_DECAY", default_value = "5m", value_parser = parse_duration)]
    pub failure_penalty_decay: Duration,
    /// Penalty (0-1) added to a node per failed bind.
    #[arg(
        long = "failure-penalty-step",
        env = "APOLLO_FAILURE_PENALTY_STEP",
        default_value_t = 0.5
    )]
    pub failure_penalty_step: f64,
    /// Score gap (1-100 scale) between the best and the second node above which
    /// the decision is PREFER.
    #[arg(long = "prefer-gap", env = "APOLLO_PREFER_GAP", default_value_t = 10)]
    pub prefer_gap: i32,
}

impl Default for EngineConfig {
    /// The flag defaults.
    fn default() -> Self {
        apollo_common::config::flag_defaults()
    }
}

impl EngineConfig {
    /// Checks ranges once after parsing.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::Config(m));
        if self.top_nodes == 0 || self.top_nodes > 1000 {
            return bad(format!(
                "--top-nodes must be 1..=1000, got {}",
                self.top_nodes
            ));
        }
        if self.stale_after.is_zero() {
            return bad("--stale-after must be positive".into());
        }
        if !(self.overload_threshold > 0.0 && self.overload_threshold <= 1.0) {
            return bad(format!(
                "--overload-threshold must be in (0, 1], got {}",
                self.overload_threshold
            ));
        }
        if self.max_assumed == 0 {
            return bad("--max-assumed must be positive".into());
        }
        if self.failure_penalty_decay.is_zero() {
            return bad("--failure-penalty-decay must be positive".into());
        }
        if !(self.failure_penalty_step > 0.0 && self.failure_penalty_step <= 1.0) {
            return bad(format!(
                "--failure-penalty-step must be in (0, 1], got {}",
                self.failure_penalty_step
            ));
        }
        if !(0..=99).contains(&self.prefer_gap) {
            return bad(format!(
                "--prefer-gap must be 0..=99, got {}",
                self.prefer_gap
            ));
        }
        Ok(())
    }
}

/// Publishing and feedback settings of the service.
#[derive(Debug, Clone, Args)]
pub struct ServiceArgs {
    /// Policies and feedback waiting to be published; when full, new ones are
    /// dropped (counted) rather than slowing the scheduler down.
    #[arg(
        long = "publish-queue",
        env = "APOLLO_PUBLISH_QUEUE",
        default_value_t = 4096
    )]
    pub publish_queue: usize,
    /// JetStream acks awaited at once by the publisher.
    #[arg(
        long = "publish-in-flight",
        env = "APOLLO_PUBLISH_IN_FLIGHT",
        default_value_t = 256
    )]
    pub publish_in_flight: usize,
    /// Request ids remembered to answer repeated `ReportSchedulingResult`s.
    #[arg(
        long = "feedback-dedup-capacity",
        env = "APOLLO_FEEDBACK_DEDUP_CAPACITY",
        default_value_t = 100_000
    )]
    pub feedback_dedup_capacity: usize,
    /// How long a reported request id is remembered.
    #[arg(long = "feedback-dedup-ttl", env = "APOLLO_FEEDBACK_DEDUP_TTL", default_value = "15m", value_parser = parse_duration)]
    pub feedback_dedup_ttl: Duration,
    /// Most policies, and most scheduling results, read back per stream on
    /// start to rebuild the assume cache and penalties (the newest are
    /// kept); 0 turns the rebuild off.
    #[arg(
        long = "rebuild-max-messages",
        env = "APOLLO_SCHED_REBUILD_MAX_MESSAGES",
        default_value_t = 200_000
    )]
    pub rebuild_max_messages: usize,
    /// Longest the start-up rebuild reads the streams; past it what was
    /// read is applied and the engine reports SERVING.
    #[arg(long = "rebuild-timeout", env = "APOLLO_SCHED_REBUILD_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub rebuild_timeout: Duration,
}

impl Default for ServiceArgs {
    /// The flag defaults.
    fn default() -> Self {
        apollo_common::config::flag_defaults()
    }
}

impl Config {
    /// The flag defaults with both servers on `127.0.0.1:0` and the given
    /// bus settings: what tests and embedders start from.
    pub fn with_defaults(nats: NatsArgs, streams: StreamArgs) -> Self {
        let mut c: Self = apollo_common::config::parse_flags(&[
            "--grpc-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .expect("test flags parse");
        c.nats = nats;
        c.streams = streams;
        c
    }

    /// Checks every group once after parsing.
    pub fn validate(&self) -> Result<(), Error> {
        self.engine.validate()?;
        self.view.validate().map_err(Error::Config)?;
        if self.service.publish_queue == 0 || self.service.publish_in_flight == 0 {
            return Err(Error::Config(
                "--publish-queue and --publish-in-flight must be positive".into(),
            ));
        }
        if self.service.rebuild_max_messages > 0 && self.service.rebuild_timeout.is_zero() {
            return Err(Error::Config(
                "--rebuild-timeout must be positive (turn the rebuild off with --rebuild-max-messages 0)".into(),
            ));
        }
        if self.service.feedback_dedup_capacity == 0 {
            return Err(Error::Config(
                "--feedback-dedup-capacity must be positive".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_validate() {
        let c = Config::try_parse_from(["apollo-scheduling"]).unwrap();
        assert_eq!(c.engine.top_nodes, 20);
        assert_eq!(c.engine.stale_after, Duration::from_secs(120));
        assert_eq!(c.grpc_addr.port(), 50054);
        c.validate().unwrap();
    }

    #[test]
    fn out_of_range_values_are_rejected() {
        let c = Config::try_parse_from(["apollo-scheduling", "--top-nodes", "0"]).unwrap();
        assert!(c.validate().is_err());
        let c =
            Config::try_parse_from(["apollo-scheduling", "--overload-threshold", "1.5"]).unwrap();
        assert!(c.validate().is_err());
        assert!(Config::try_parse_from(["apollo-scheduling", "--stale-after", "soon"]).is_err());
    }
}
