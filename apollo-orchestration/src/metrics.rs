//! Prometheus metrics of the orchestration engine (`apollo_orchestration_*`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabel {
    action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RailLabel {
    rail: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SpoolLabel {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    rpc: &'static str,
    reason: &'static str,
}

/// Metrics shared by the engine, the service and the executor.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// Planning cycles run.
    pub cycles: Counter,
    issued: Family<ActionLabel, Counter>,
    blocked: Family<RailLabel, Counter>,
    reports: Family<OutcomeLabel, Counter>,
    rejected: Family<ReasonLabel, Counter>,
    executions: Family<OutcomeLabel, Counter>,
    /// Moves under way.
    pub in_flight: Gauge,
    /// Open `SubscribePolicies` streams.
    pub subscribers: Gauge,
    /// Policies queued for subscribers and not yet taken by their streams.
    pub subscriber_queued: Gauge,
    /// Streams ended because the subscriber did not keep up.
    pub slow_subscribers: Counter,
    /// Policies and results waiting in the outbox for NATS.
    pub outbox_depth: Gauge,
    /// Messages the outbox dropped: oldest first when full, or refused for good.
    pub outbox_dropped: Counter,
    /// Policies that could not be stored on JetStream.
    pub publish_failures: Counter,
    outbox_spool: Family<SpoolLabel, Counter>,
    /// Bus messages (forecasts, alerts) that could not be decoded.
    pub bad_messages: Counter,
    kube_reads: Family<OutcomeLabel, Counter>,
    kube_events: Family<OutcomeLabel, Counter>,
    /// 1 while this replica holds the leader Lease (or runs without election).
    pub leader: Gauge,
}

impl Metrics {
    /// Counts `n` messages of the outbox spool by `op`: `loaded` (queued
    /// from the spool on start), `rejected` (spool lines skipped), `written`
    /// (left at shutdown and spooled).
    pub fn outbox_spool(&self, op: &'static str, n: u64) {
        self.outbox_spool
            .get_or_create(&SpoolLabel { op })
            .inc_by(n);
    }

    /// Messages of the outbox spool counted under `op` so far.
    pub fn outbox_spool_count(&self, op: &'static str) -> u64 {
        self.outbox_spool.get_or_create(&SpoolLabel { op }).get()
    }

    /// Counts a Kubernetes metadata read.
    pub fn kube_reads(&self, outcome: &'static str) {
        self.kube_reads
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// Counts an Event outcome.
    pub fn kube_events(&self, outcome: &'static str) {
        self.kube_events
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// Events with `outcome` so far (tests and logs).
    pub fn kube_events_count(&self, outcome: &'static str) -> u64 {
        self.kube_events
            .get_or_create(&OutcomeLabel { outcome })
            .get()
    }

    /// Registers every metric under `apollo_orchestration_*`.
    pub fn register(&self, r: &mut Registry) {
        // Every action's series exists from the start (at 0), so a query
        // for one that was never issued returns 0 rather than nothing.
        for action in [
            apollo_proto::OrchestrationAction::Migrate,
            apollo_proto::OrchestrationAction::Provision,
            apollo_proto::OrchestrationAction::ScaleUp,
            apollo_proto::OrchestrationAction::ScaleDown,
            apollo_proto::OrchestrationAction::Rebalance,
            apollo_proto::OrchestrationAction::Optimize,
        ] {
            let _ = self.issued.get_or_create(&ActionLabel {
                action: crate::policy::action_token(action),
            });
        }
        let r = r.sub_registry_with_prefix("apollo_orchestration");
        r.register("plan_cycles", "Planning cycles run", self.cycles.clone());
        r.register(
            "policies_issued",
            "Policies issued, by action",
            self.issued.clone(),
        );
        r.register(
            "proposals_blocked",
            "Proposals refused by a safety rail, by rail",
            self.blocked.clone(),
        );
        r.register(
            "execution_reports",
            "Execution results received, by outcome",
            self.reports.clone(),
        );
        r.register(
            "requests_rejected",
            "gRPC requests answered with an error, by reason",
            self.rejected.clone(),
        );
        r.register(
            "executions",
            "Policies sent to the orchestrator, by outcome",
            self.executions.clone(),
        );
        r.register("moves_in_flight", "Moves under way", self.in_flight.clone());
        r.register(
            "kube_metadata_reads",
            "Reads of Kubernetes metadata, by outcome",
            self.kube_reads.clone(),
        );
        r.register(
            "kube_events",
            "Kubernetes Events for issued policies, by outcome (created, error, skipped)",
            self.kube_events.clone(),
        );
        r.register(
            "leader",
            "1 while this replica plans (holds the Lease or runs alone)",
            self.leader.clone(),
        );
        r.register(
            "subscribers",
            "Open policy subscriptions",
            self.subscribers.clone(),
        );
        r.register(
            "subscriber_queued",
            "Policies queued for subscribers, not yet taken by their gRPC streams",
            self.subscriber_queued.clone(),
        );
        r.register(
            "slow_subscribers",
            "Subscriptions ended because their buffer stayed full",
            self.slow_subscribers.clone(),
        );
        r.register(
            "outbox_depth",
            "Policies and results waiting for NATS to be stored",
            self.outbox_depth.clone(),
        );
        r.register(
            "outbox_dropped",
            "Policies and results dropped: the outbox was full (--policy-outbox), or NATS refused them for good",
            self.outbox_dropped.clone(),
        );
        for op in ["loaded", "rejected", "written"] {
            let _ = self.outbox_spool.get_or_create(&SpoolLabel { op });
        }
        r.register(
            "outbox_spool",
            "Outbox messages through the spool file (--outbox-spool), by op: loaded on start, rejected (bad lines), written at shutdown",
            self.outbox_spool.clone(),
        );
        r.register(
            "publish_failures",
            "Attempts to store a policy or result on JetStream that failed (retried from the outbox)",
            self.publish_failures.clone(),
        );
        r.register(
            "bad_messages",
            "Forecast or alert messages that could not be decoded",
            self.bad_messages.clone(),
        );
    }

    /// Counts an issued policy.
    pub fn issued(&self, action: &str) {
        self.issued
            .get_or_create(&ActionLabel {
                action: action.to_string(),
            })
            .inc();
    }

    /// Counts a blocked proposal.
    pub fn blocked(&self, rail: &'static str) {
        self.blocked.get_or_create(&RailLabel { rail }).inc();
    }

    /// Counts an execution report.
    pub fn report(&self, outcome: &'static str) {
        self.reports.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// Counts a rejected request.
    pub fn rejected(&self, rpc: &'static str, reason: &'static str) {
        self.rejected
            .get_or_create(&ReasonLabel { rpc, reason })
            .inc();
    }

    /// Counts an execution by the orchestrator executor.
    pub fn execution(&self, outcome: &'static str) {
        self.executions
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// Value of a blocked-proposal counter (tests, simulation).
    pub fn blocked_count(&self, rail: &'static str) -> u64 {
        self.blocked.get_or_create(&RailLabel { rail }).get()
    }

    /// Value of an execution counter.
    pub fn execution_count(&self, outcome: &'static str) -> u64 {
        self.executions
            .get_or_create(&OutcomeLabel { outcome })
            .get()
    }
}
