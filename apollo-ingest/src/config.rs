//! Command line and environment configuration of `apollo-ingest`.

use std::{net::SocketAddr, time::Duration};

use apollo_common::config::{parse_duration, NatsArgs, ObservabilityArgs, StreamArgs};
use clap::Parser;

use crate::{
    collector::CollectorArgs,
    error::{Error, Result},
};

/// Default gRPC address: the port the Insight-Trace sidecar dials.
pub const DEFAULT_GRPC_ADDR: &str = "0.0.0.0:50051";

/// Receives `WorkloadSignature`s and `ClusterInsight`s over gRPC
/// (`apollo.InsightService`, plain HTTP/2) and stores each on NATS JetStream
/// as protobuf-JSON for the forecaster and the policy engines.
#[derive(Debug, Clone, Parser)]
#[command(name = "apollo-ingest", version)]
pub struct Config {
    /// Address of the gRPC server (this service's API, health and reflection).
    #[arg(long = "grpc-addr", env = "APOLLO_GRPC_ADDR", default_value = DEFAULT_GRPC_ADDR)]
    pub grpc_addr: SocketAddr,
    /// Publish acknowledgements a client stream may have outstanding; the
    /// stream is read no faster than JetStream acknowledges.
    #[arg(
        long = "max-inflight-acks",
        env = "APOLLO_MAX_INFLIGHT_ACKS",
        default_value_t = 256
    )]
    pub max_inflight_acks: usize,
    /// How far in the future a timestamp may lie (producer clock skew).
    #[arg(long = "max-future-skew", env = "APOLLO_MAX_FUTURE_SKEW", default_value = "5m", value_parser = parse_duration)]
    pub max_future_skew: Duration,
    /// Overall deadline for storing one message (send plus acknowledgement);
    /// past it the call fails with UNAVAILABLE instead of hanging.
    #[arg(long = "publish-deadline", env = "APOLLO_PUBLISH_DEADLINE", default_value = "4s", value_parser = parse_duration)]
    pub publish_deadline: Duration,
    /// NATS connection.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// JetStream retention.
    #[command(flatten)]
    pub streams: StreamArgs,
    /// TLS of the gRPC server (plaintext h2c when unset).
    #[command(flatten)]
    pub grpc_tls: apollo_common::grpc_tls::GrpcTlsArgs,
    /// Message sizes, calls in progress and per-client rate of the gRPC server.
    #[command(flatten)]
    pub grpc_limits: apollo_common::grpc_limits::GrpcLimitArgs,
    /// Logs, traces, metrics endpoint and shutdown grace.
    #[command(flatten)]
    pub observability: ObservabilityArgs,
    /// Kubernetes cluster-state collector.
    #[command(flatten)]
    pub collector: CollectorArgs,
}

impl Config {
    /// The flag defaults with both servers on `127.0.0.1:0` and the given
    /// bus settings: what tests and benchmarks start from.
    pub fn new(nats: NatsArgs, streams: StreamArgs) -> Self {
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

    /// Checks values clap cannot.
    pub fn validate(&self) -> Result<()> {
        if self.max_inflight_acks == 0 {
            return Err(Error::Config(
                "--max-inflight-acks must be at least 1".into(),
            ));
        }
        if self.publish_deadline.is_zero() {
            return Err(Error::Config("--publish-deadline must be positive".into()));
        }
        self.collector.validate().map_err(Error::Config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent_and_defaults_parse() {
        Config::command().debug_assert();
        let c = Config::try_parse_from(["apollo-ingest", "--max-inflight-acks", "8"]).unwrap();
        assert_eq!(c.max_inflight_acks, 8);
        assert!(c.validate().is_ok());
        let bad = Config::try_parse_from(["apollo-ingest", "--max-inflight-acks", "0"]).unwrap();
        assert!(bad.validate().is_err());
        assert!(
            !c.collector.collect_kubernetes,
            "the collector is off by default"
        );
        let on = Config::try_parse_from([
            "apollo-ingest",
            "--collect-kubernetes",
            "--collect-interval",
            "5s",
            "--dcgm-selector",
            "app=dcgm",
        ])
        .unwrap();
        assert!(on.collector.collect_kubernetes);
        assert_eq!(on.collector.interval, Duration::from_secs(5));
        assert_eq!(on.collector.dcgm_selector, "app=dcgm");
        assert!(on.validate().is_ok());
        let bad = Config::try_parse_from(["apollo-ingest", "--collect-stale-after", "1s"]).unwrap();
        assert!(bad.validate().is_err(), "stale-after below the interval");
    }
}
