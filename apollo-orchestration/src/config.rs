//! Configuration of `apollo-orchestration`: clap flags, each with an
//! `APOLLO_*` environment variable. Planner and rail defaults are defined
//! once, in their modules' `Default`, and shown by `--help`.

use std::{net::SocketAddr, time::Duration};

use apollo_common::config::{parse_duration, NatsArgs, ObservabilityArgs, StreamArgs};
use clap::{Args, Parser, ValueEnum};

use crate::engine::EngineConfig;
use crate::executor::ExecutorConfig;
use crate::planner::{
    migrate::MigrateConfig, optimize::OptimizeConfig, provision::ProvisionConfig,
    rebalance::RebalanceConfig, scale::ScaleConfig, PlannerConfig,
};
use crate::policy::PolicySettings;
use crate::rails::{BlackoutWindow, RailsConfig};
use crate::service::DeliverySettings;

/// Where approved policies are executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExecutorKind {
    /// Nowhere: subscribers execute and report back.
    None,
    /// The AI-Storage Orchestrator's REST API.
    Orchestrator,
}

/// Planner thresholds.
#[derive(Debug, Clone, Args)]
pub struct PlannerArgs {
    /// Utilisation (0-1) at or above which a node is a hotspot, now or within the horizon.
    #[arg(long, env = "APOLLO_ORCH_MIGRATE_THRESHOLD", default_value_t = MigrateConfig::default().threshold)]
    pub migrate_threshold: f64,
    /// A migration target's forecast peak with the pod added must stay below this (0-1).
    #[arg(long, env = "APOLLO_ORCH_TARGET_CEILING", default_value_t = MigrateConfig::default().target_ceiling)]
    pub target_ceiling: f64,
    /// Per-replica CPU load (0-1 of the request) that scaling aims for.
    #[arg(long, env = "APOLLO_ORCH_SCALE_TARGET", default_value_t = ScaleConfig::default().target)]
    pub scale_target: f64,
    /// How long load must stay low before a scale-down.
    #[arg(long, env = "APOLLO_ORCH_SCALE_STABILISATION", default_value = "5m", value_parser = parse_duration)]
    pub scale_stabilisation: Duration,
    /// Never scale below this many replicas.
    #[arg(long, env = "APOLLO_ORCH_SCALE_MIN_REPLICAS", default_value_t = ScaleConfig::default().min_replicas)]
    pub scale_min_replicas: u32,
    /// Fill level (0-1) a storage device must not reach within the provisioning horizon.
    #[arg(long, env = "APOLLO_ORCH_PROVISION_FILL_THRESHOLD", default_value_t = ProvisionConfig::default().fill_threshold)]
    pub provision_fill_threshold: f64,
    /// Utilisation spread (0-1, hottest minus coldest worker) that triggers rebalancing.
    #[arg(long, env = "APOLLO_ORCH_REBALANCE_SPREAD", default_value_t = RebalanceConfig::default().spread_threshold)]
    pub rebalance_spread: f64,
    /// Moves per rebalancing batch.
    #[arg(long, env = "APOLLO_ORCH_REBALANCE_BATCH", default_value_t = RebalanceConfig::default().batch)]
    pub rebalance_batch: usize,
}

/// Safety rails.
#[derive(Debug, Clone, Args)]
pub struct RailArgs {
    /// Namespaces never touched (comma separated).
    #[arg(
        long,
        env = "APOLLO_ORCH_DENY_NAMESPACES",
        value_delimiter = ',',
        default_value = "kube-system,apollo"
    )]
    pub deny_namespaces: Vec<String>,
    /// If set, the only namespaces touched (comma separated).
    #[arg(long, env = "APOLLO_ORCH_ALLOW_NAMESPACES", value_delimiter = ',')]
    pub allow_namespaces: Vec<String>,
    /// Minimum time between two moves of one pod.
    #[arg(long, env = "APOLLO_ORCH_COOLDOWN", default_value = "30m", value_parser = parse_duration)]
    pub cooldown: Duration,
    /// Concurrent moves touching one node.
    #[arg(long, env = "APOLLO_ORCH_MAX_MOVES_PER_NODE", default_value_t = RailsConfig::default().max_per_node)]
    pub max_moves_per_node: usize,
    /// Concurrent moves in the cluster.
    #[arg(long, env = "APOLLO_ORCH_MAX_MOVES", default_value_t = RailsConfig::default().max_cluster)]
    pub max_moves: usize,
    /// Policies per planning cycle.
    #[arg(long, env = "APOLLO_ORCH_MAX_POLICIES_PER_CYCLE", default_value_t = RailsConfig::default().max_per_cycle)]
    pub max_policies_per_cycle: usize,
    /// Daily windows without disruptive actions, `HH:MM-HH:MM` UTC (comma separated).
    #[arg(long, env = "APOLLO_ORCH_BLACKOUT", value_delimiter = ',', value_parser = BlackoutWindow::parse)]
    pub blackout: Vec<BlackoutWindow>,
    /// Publish and stream policies marked dry-run; execute nothing.
    #[arg(long, env = "APOLLO_ORCH_DRY_RUN")]
    pub dry_run: bool,
}

/// Kubernetes metadata, Events and leader election.
#[derive(Debug, Clone, Args)]
pub struct KubeArgs {
    /// Read owners, PDBs, annotations, PVC mounts and node roles from
    /// Kubernetes, record an Event per policy and elect a leader (in-cluster
    /// config, else KUBECONFIG). Off: planning runs on what the insights carry.
    #[arg(long, env = "APOLLO_ORCH_KUBERNETES")]
    pub kubernetes: bool,
    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "APOLLO_ORCH_LEASE_NAME",
        default_value = "apollo-orchestration"
    )]
    pub lease_name: String,
    /// Namespace of the Lease (APOLLO's own namespace).
    #[arg(long, env = "APOLLO_ORCH_LEASE_NAMESPACE", default_value = "apollo")]
    pub lease_namespace: String,
    /// How long a leader that stops renewing keeps the Lease.
    #[arg(long, env = "APOLLO_ORCH_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// Interval between Lease renewals.
    #[arg(long, env = "APOLLO_ORCH_LEASE_RENEW", default_value = "5s", value_parser = parse_duration)]
    pub lease_renew: Duration,
    /// This replica's identity in the Lease (default: $HOSTNAME, the pod name).
    #[arg(long, env = "APOLLO_ORCH_IDENTITY")]
    pub identity: Option<String>,
}

/// Configuration of `apollo-orchestration`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "apollo-orchestration",
    version,
    about = "APOLLO Orchestration Policy Engine"
)]
pub struct Config {
    /// Address of the gRPC server (this service's API, health and reflection).
    #[arg(long, env = "APOLLO_GRPC_ADDR", default_value = "0.0.0.0:50053")]
    pub grpc_addr: SocketAddr,
    /// Time between planning cycles (a cycle also runs at once on an alert).
    #[arg(long, env = "APOLLO_ORCH_PLAN_INTERVAL", default_value = "15s", value_parser = parse_duration)]
    pub plan_interval: Duration,
    /// Shortest time between two cycles started by insight changes or alerts.
    #[arg(long, env = "APOLLO_ORCH_PLAN_MIN_GAP", default_value = "1s", value_parser = parse_duration)]
    pub plan_min_gap: Duration,
    /// How far ahead forecasts are read.
    #[arg(long, env = "APOLLO_ORCH_FORECAST_HORIZON", default_value = "30m", value_parser = parse_duration)]
    pub forecast_horizon: Duration,
    /// A node whose latest insight is older than this is left out of decisions.
    #[arg(long, env = "APOLLO_STALE_AFTER", default_value = "2m", value_parser = parse_duration)]
    pub stale_after: Duration,
    /// Planner thresholds.
    #[command(flatten)]
    pub planners: PlannerArgs,
    /// Safety rails.
    #[command(flatten)]
    pub rails: RailArgs,
    /// Policies buffered per subscriber before it counts as slow.
    #[arg(long, env = "APOLLO_ORCH_SUBSCRIBER_BUFFER", default_value_t = 64)]
    pub subscriber_buffer: usize,
    /// How long a slow subscriber's full buffer is tolerated before its stream ends.
    #[arg(long, env = "APOLLO_ORCH_SUBSCRIBER_STALL", default_value = "10s", value_parser = parse_duration)]
    pub subscriber_stall: Duration,
    /// Open `SubscribePolicies` streams at most; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "APOLLO_ORCH_MAX_SUBSCRIBERS", default_value_t = 256)]
    pub max_subscribers: usize,
    /// A subscriber's durable consumer is deleted by NATS after this long without a stream.
    #[arg(long, env = "APOLLO_ORCH_SUBSCRIBER_EXPIRY", default_value = "24h", value_parser = parse_duration)]
    pub subscriber_expiry: Duration,
    /// Policies and results kept, in order, while NATS cannot store them; past this the oldest are dropped.
    #[arg(long, env = "APOLLO_ORCH_POLICY_OUTBOX", default_value_t = 4096)]
    pub policy_outbox: usize,
    /// File the outbox is written to when NATS has not stored everything by
    /// the end of a shutdown, and published from first on the next start.
    /// Unset: what is left is logged and lost. Needs a writable directory
    /// that outlives the process (a volume).
    #[arg(long, env = "APOLLO_OUTBOX_SPOOL")]
    pub outbox_spool: Option<std::path::PathBuf>,
    /// Where approved policies are executed.
    #[arg(long, env = "APOLLO_ORCH_EXECUTOR", value_enum, default_value = "none")]
    pub executor: ExecutorKind,
    /// Base URL of the AI-Storage Orchestrator's REST API.
    #[arg(
        long,
        env = "APOLLO_ORCHESTRATOR_URL",
        required_if_eq("executor", "orchestrator")
    )]
    pub orchestrator_url: Option<String>,
    /// Deadline of one request to the orchestrator.
    #[arg(long, env = "APOLLO_ORCHESTRATOR_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub orchestrator_timeout: Duration,
    /// Interval between migration status polls.
    #[arg(long, env = "APOLLO_ORCHESTRATOR_POLL", default_value = "2s", value_parser = parse_duration)]
    pub orchestrator_poll: Duration,
    /// Kubernetes.
    #[command(flatten)]
    pub kube: KubeArgs,
    /// NATS connection.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Stream retention.
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
    /// Metrics, logs, shutdown.
    #[command(flatten)]
    pub observability: ObservabilityArgs,
}

fn unit(name: &str, v: f64) -> Result<(), String> {
    if v.is_finite() && v > 0.0 && v <= 1.0 {
        Ok(())
    } else {
        Err(format!("{name} must be in (0, 1], got {v}"))
    }
}

impl Config {
    /// Defaults (as `--help` shows them) with the given NATS settings, gRPC on
    /// `127.0.0.1:0`: what tests start from.
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

    /// Checks the values once after parsing.
    pub fn validate(&self) -> Result<(), String> {
        let p = &self.planners;
        unit("--migrate-threshold", p.migrate_threshold)?;
        unit("--target-ceiling", p.target_ceiling)?;
        unit("--scale-target", p.scale_target)?;
        unit("--provision-fill-threshold", p.provision_fill_threshold)?;
        unit("--rebalance-spread", p.rebalance_spread)?;
        if p.target_ceiling >= p.migrate_threshold {
            return Err(format!(
                "--target-ceiling ({}) must be below --migrate-threshold ({}), or moves create hotspots",
                p.target_ceiling, p.migrate_threshold
            ));
        }
        if self.subscriber_buffer == 0 {
            return Err("--subscriber-buffer must be at least 1".into());
        }
        if self.policy_outbox == 0 {
            return Err("--policy-outbox must be at least 1".into());
        }
        if self.max_subscribers == 0 {
            return Err("--max-subscribers must be at least 1".into());
        }
        if self.subscriber_expiry < Duration::from_secs(1) {
            return Err(format!(
                "--subscriber-expiry ({:?}) must be at least 1s",
                self.subscriber_expiry
            ));
        }
        self.view.validate()?;
        if self.kube.lease_renew.is_zero() || self.kube.lease_renew >= self.kube.lease_duration {
            return Err(format!(
                "--lease-renew ({:?}) must be positive and below --lease-duration ({:?})",
                self.kube.lease_renew, self.kube.lease_duration
            ));
        }
        if self.kube.lease_name.trim().is_empty() || self.kube.lease_namespace.trim().is_empty() {
            return Err("--lease-name and --lease-namespace must not be empty".into());
        }
        if self.plan_interval.is_zero() {
            return Err("--plan-interval must be positive".into());
        }
        if let Some(url) = &self.orchestrator_url {
            if !url.starts_with("http://") {
                return Err(format!("--orchestrator-url {url:?} must be an http:// URL"));
            }
        }
        Ok(())
    }

    /// The engine settings.
    pub fn engine(&self) -> EngineConfig {
        let p = &self.planners;
        let r = &self.rails;
        EngineConfig {
            planners: PlannerConfig {
                migrate: MigrateConfig {
                    threshold: p.migrate_threshold,
                    target_ceiling: p.target_ceiling,
                    ..MigrateConfig::default()
                },
                scale: ScaleConfig {
                    target: p.scale_target,
                    stabilisation: p.scale_stabilisation,
                    min_replicas: p.scale_min_replicas,
                    ..ScaleConfig::default()
                },
                provision: ProvisionConfig {
                    fill_threshold: p.provision_fill_threshold,
                    ..ProvisionConfig::default()
                },
                rebalance: RebalanceConfig {
                    spread_threshold: p.rebalance_spread,
                    batch: p.rebalance_batch,
                    ..RebalanceConfig::default()
                },
                optimize: OptimizeConfig::default(),
            },
            rails: RailsConfig {
                deny_namespaces: r.deny_namespaces.clone(),
                allow_namespaces: r.allow_namespaces.clone(),
                cooldown: r.cooldown,
                max_per_node: r.max_moves_per_node,
                max_cluster: r.max_moves,
                max_per_cycle: r.max_policies_per_cycle,
                blackout: r.blackout.clone(),
                ..RailsConfig::default()
            },
            policy: PolicySettings {
                blackout_windows: r.blackout.iter().map(|w| w.to_string()).collect(),
                dry_run: r.dry_run,
                ..PolicySettings::default()
            },
            forecast_horizon: self.forecast_horizon,
            stale_after: self.stale_after,
        }
    }

    /// Leader-election settings; the identity defaults to `$HOSTNAME` (the pod
    /// name in a cluster), else a random one.
    pub fn lease(&self) -> crate::kubernetes::LeaseSettings {
        let identity = self
            .kube
            .identity
            .clone()
            .filter(|i| !i.trim().is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| format!("apollo-orchestration-{}", uuid::Uuid::new_v4()));
        crate::kubernetes::LeaseSettings {
            name: self.kube.lease_name.clone(),
            namespace: self.kube.lease_namespace.clone(),
            identity,
            duration: self.kube.lease_duration,
            renew: self.kube.lease_renew,
        }
    }

    /// Delivery settings.
    pub fn delivery(&self) -> DeliverySettings {
        DeliverySettings {
            buffer: self.subscriber_buffer,
            stall: self.subscriber_stall,
            max_subscribers: self.max_subscribers,
            expiry: self.subscriber_expiry,
            outbox: self.policy_outbox,
        }
    }

    /// Executor settings, when an executor is configured.
    pub fn executor(&self) -> Option<ExecutorConfig> {
        match (self.executor, &self.orchestrator_url) {
            (ExecutorKind::Orchestrator, Some(url)) => Some(ExecutorConfig {
                base_url: url.clone(),
                request_timeout: self.orchestrator_timeout,
                poll_interval: self.orchestrator_poll,
                backoff: Duration::from_millis(200),
                queue: 256,
                target_cpu_percent: (self.planners.scale_target * 100.0).round().max(1.0) as u32,
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(flags: &[&str]) -> Result<Config, String> {
        let mut all = vec!["--grpc-addr", "127.0.0.1:0"];
        all.extend_from_slice(flags);
        let c: Config = apollo_common::config::parse_flags(&all).map_err(|e| e.to_string())?;
        c.validate().map(|()| c)
    }

    #[test]
    fn subscriber_outbox_and_expiry_bounds_are_validated() {
        assert!(config(&[]).is_ok());
        for (flags, why) in [
            (
                &["--max-subscribers", "0"][..],
                "--max-subscribers must be at least 1",
            ),
            (
                &["--policy-outbox", "0"][..],
                "--policy-outbox must be at least 1",
            ),
            (
                &["--subscriber-expiry", "100ms"][..],
                "--subscriber-expiry (100ms) must be at least 1s",
            ),
        ] {
            let err = config(flags).expect_err(why);
            assert_eq!(err, why, "{flags:?}");
        }
        let c = config(&[
            "--max-subscribers",
            "3",
            "--policy-outbox",
            "7",
            "--subscriber-expiry",
            "2h",
        ])
        .unwrap();
        let d = c.delivery();
        assert_eq!((d.max_subscribers, d.outbox), (3, 7));
        assert_eq!(d.expiry, Duration::from_secs(7200));
    }
}
