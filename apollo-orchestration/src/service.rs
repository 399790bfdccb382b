//! `OrchestrationPolicyService` over gRPC, the planning loop and policy
//! delivery.
//!
//! Delivery: every issued policy is stored on JetStream under
//! `apollo.policy.orchestration.<action>.<namespace>`. Each `SubscribePolicies`
//! stream reads from a durable consumer named after its `subscriber_id`
//! (`orch-sub-<encoded id>`, created at the first subscription, delivering
//! policies issued from then on). The server acknowledges a policy once the
//! gRPC stream has taken it from the subscriber's buffer (checked every
//! 200 ms), and hands the unacknowledged ones back (NAK) when the stream
//! ends, so a subscriber that
//! reconnects with the same `subscriber_id` resumes with the first policy it
//! had not received: delivery is at least once, deduplicate by `request_id`.
//! One stream per subscriber id is active: a new one replaces the old.
//!
//! A slow subscriber has a bounded buffer (`--subscriber-buffer`); if it stays
//! full for `--subscriber-stall`, the stream ends with RESOURCE_EXHAUSTED (and
//! the subscriber resumes on reconnect). The buffer is emptied at once when a
//! stream is cut off, so a client that never reads again (its HTTP/2 window
//! full) holds only the final status. The planner never waits for it. When
//! the server shuts down, every stream ends at once with UNAVAILABLE.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use apollo_common::bus::{encode_token, from_json, StreamKind};
use apollo_common::shutdown::CancellationToken;
use apollo_common::{Bus, BusError};
use apollo_proto::orchestration_policy_service_server::OrchestrationPolicyService;
use apollo_proto::{
    ExecutionResult, OrchestrationAction, OrchestrationPolicy, OrchestrationPolicyRequest,
    PolicySubscription, ReportResponse, ResourcePrediction,
};
use async_nats::jetstream::{self, consumer, AckKind};
use futures::{Stream, StreamExt};
use tokio::sync::Notify;
use tonic::{Request, Response, Status};

use crate::engine::{Engine, EngineError};
use crate::executor::ExecutorHandle;
use crate::mailbox::{mailbox, MailboxWriter, Refused};
use crate::outbox::{Outbox, Outgoing};
use crate::policy::{action_token, is_dry_run, namespace_of};

/// Fully qualified gRPC service name (for health).
pub const SERVICE_NAME: &str = "apollo.OrchestrationPolicyService";

/// Delivery settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliverySettings {
    /// Policies buffered per subscriber.
    pub buffer: usize,
    /// How long a full buffer is tolerated before the stream ends.
    pub stall: Duration,
    /// Open streams at most.
    pub max_subscribers: usize,
    /// Idle time after which NATS deletes a subscriber's durable consumer.
    pub expiry: Duration,
    /// Policies and results kept while NATS cannot store them.
    pub outbox: usize,
}

/// Stream of policies to one subscriber.
pub type PolicyStream = Pin<Box<dyn Stream<Item = Result<OrchestrationPolicy, Status>> + Send>>;

/// The gRPC service.
#[derive(Clone)]
pub struct PolicyService {
    engine: Engine,
    bus: Bus,
    delivery: DeliverySettings,
    executor: Option<ExecutorHandle>,
    outbox: Outbox,
    /// Open streams by consumer name, with the generation of the newest.
    active: Arc<Mutex<HashMap<String, (u64, CancellationToken)>>>,
    generation: Arc<std::sync::atomic::AtomicU64>,
    /// Cancelled when the server starts shutting down: streams end with
    /// UNAVAILABLE at once instead of being reset at the end of the grace.
    streams: CancellationToken,
    events: Option<crate::kubernetes::EventRecorder>,
    leadership: Option<tokio::sync::watch::Receiver<bool>>,
}

impl std::fmt::Debug for PolicyService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyService").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn status(e: EngineError) -> Status {
    match e {
        EngineError::Invalid { .. } => Status::invalid_argument(e.to_string()),
        EngineError::NotFound(_) => Status::not_found(e.to_string()),
    }
}

/// Durable consumer name of a subscriber.
pub fn consumer_name(subscriber_id: &str) -> Result<String, Status> {
    let id = subscriber_id.trim();
    if id.is_empty() {
        return Err(Status::invalid_argument("subscriber_id must not be empty"));
    }
    if id.len() > 128 {
        return Err(Status::invalid_argument(
            "subscriber_id must be at most 128 characters",
        ));
    }
    let token = encode_token(id).map_err(Status::from)?;
    Ok(format!("orch-sub-{}", token.replace('%', "_")))
}

impl PolicyService {
    /// The service.
    pub fn new(
        engine: Engine,
        bus: Bus,
        delivery: DeliverySettings,
        executor: Option<ExecutorHandle>,
        streams: CancellationToken,
    ) -> Self {
        let outbox = Outbox::new(bus.clone(), delivery.outbox, engine.metrics().clone());
        Self {
            engine,
            bus,
            outbox,
            delivery,
            executor,
            active: Arc::default(),
            generation: Arc::default(),
            streams,
            events: None,
            leadership: None,
        }
    }

    /// Records a Kubernetes Event for every policy the planning loop issues.
    pub fn with_events(mut self, events: crate::kubernetes::EventRecorder) -> Self {
        self.events = Some(events);
        self
    }

    /// Plans only while `leader` is true (leader election); without it this
    /// replica always plans.
    pub fn with_leadership(mut self, leader: tokio::sync::watch::Receiver<bool>) -> Self {
        self.leadership = Some(leader);
        self
    }

    /// Whether this replica plans now.
    pub fn is_leader(&self) -> bool {
        self.leadership.as_ref().is_none_or(|l| *l.borrow())
    }

    /// The outbox of policies and results waiting for NATS; its
    /// [`run`](Outbox::run) task must be started beside the service.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Stores an issued policy on JetStream (through the outbox, so an
    /// outage delays it rather than loses it) and hands it to the executor.
    pub async fn publish(&self, policy: &OrchestrationPolicy) {
        let action = OrchestrationAction::try_from(policy.action)
            .unwrap_or(OrchestrationAction::Unspecified);
        let subject = match self
            .bus
            .subjects()
            .orchestration_policy(&action_token(action), namespace_of(policy))
        {
            Ok(s) => s,
            Err(err) => {
                self.engine.metrics().publish_failures.inc();
                tracing::warn!(%err, request_id = %policy.request_id, "policy subject");
                return;
            }
        };
        self.outbox
            .send(subject, Outgoing::Policy(policy.clone()))
            .await;
        // What `apolloctl explain` shows: the policy with its reason and the
        // numbers behind it (contributing factors), kept for the record TTL.
        let record = serde_json::json!({
            "kind": "orchestration",
            "request_id": policy.request_id,
            "decided_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "dry_run": is_dry_run(policy),
            "policy": policy,
        });
        if let Err(err) = self
            .bus
            .put_decision_record(&policy.request_id, &record)
            .await
        {
            tracing::debug!(%err, request_id = %policy.request_id, "decision record not kept");
        }
        if let Some(exec) = &self.executor {
            if !is_dry_run(policy) {
                exec.submit(policy.clone());
            }
        }
    }

    /// Applies a result (from the RPC or the executor) and publishes it on
    /// `apollo.feedback.orchestration.<action>.<namespace>` unless duplicate.
    pub async fn apply_result(&self, r: &ExecutionResult) -> Result<ReportResponse, Status> {
        let reported = self.engine.report(r).map_err(status)?;
        if !reported.duplicate {
            let subject = self
                .bus
                .subjects()
                .orchestration_feedback(&action_token(reported.action), &reported.namespace)
                .map_err(Status::from)?;
            self.outbox.send(subject, Outgoing::Result(r.clone())).await;
        }
        Ok(reported.response)
    }

    async fn open_consumer(&self, name: &str) -> Result<consumer::PullConsumer, Status> {
        let stream = self
            .bus
            .get_stream(StreamKind::Policy)
            .await
            .map_err(Status::from)?;
        let filter = format!("{}.policy.orchestration.>", self.bus.subjects().prefix());
        let config = consumer::pull::Config {
            durable_name: Some(name.to_string()),
            filter_subject: filter,
            ack_policy: consumer::AckPolicy::Explicit,
            deliver_policy: consumer::DeliverPolicy::New,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: (self.delivery.buffer as i64 + 16).max(64),
            // Subscribers that never come back do not leave consumers behind.
            inactive_threshold: self.delivery.expiry,
            ..Default::default()
        };
        stream
            .get_or_create_consumer(name, config)
            .await
            .map_err(|e| Status::unavailable(format!("subscription consumer: {e}")))
    }
}

/// Whether a policy passes a subscription's filters.
pub fn matches(sub: &PolicySubscription, p: &OrchestrationPolicy) -> bool {
    (sub.action_filters.is_empty() || sub.action_filters.contains(&p.action))
        && (sub.namespace_filters.is_empty()
            || sub.namespace_filters.iter().any(|n| n == namespace_of(p)))
}

fn validate_subscription(sub: &PolicySubscription) -> Result<(), Status> {
    for a in &sub.action_filters {
        match OrchestrationAction::try_from(*a) {
            Ok(OrchestrationAction::Unspecified) | Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "action_filters: {a} is not an orchestration action"
                )))
            }
            Ok(_) => {}
        }
    }
    if sub.namespace_filters.iter().any(|n| n.trim().is_empty()) {
        return Err(Status::invalid_argument(
            "namespace_filters must not contain empty names",
        ));
    }
    Ok(())
}

/// Ends a subscription stream because the subscriber did not keep up.
fn cut_off(sub: &PolicySubscription, stall: Duration, capacity: usize) -> Status {
    Status::resource_exhausted(format!(
        "subscriber {} did not take policies for {} ms with {} buffered; reconnect with the same subscriber_id to resume",
        sub.subscriber_id,
        stall.as_millis(),
        capacity
    ))
}

/// Why a stream's cancel token fired.
fn cancelled(shutdown: &CancellationToken) -> Status {
    if shutdown.is_cancelled() {
        Status::unavailable(
            "the server is shutting down; reconnect with the same subscriber_id to resume",
        )
    } else {
        Status::aborted("replaced by a newer stream with the same subscriber_id")
    }
}

/// Copies policies from the subscriber's consumer into its mailbox until the
/// client goes away, the stream is replaced, the server shuts down, or the
/// mailbox stays full for `stall`.
struct Pump {
    messages: consumer::pull::Stream,
    sub: PolicySubscription,
    mailbox: MailboxWriter,
    stall: Duration,
    cancel: CancellationToken,
    shutdown: CancellationToken,
    engine: Engine,
}

impl Pump {
    async fn run(self) {
        let Pump {
            mut messages,
            sub,
            mailbox,
            stall,
            cancel,
            shutdown,
            engine,
        } = self;
        // Handed to the mailbox, oldest first; the first `len - queued` of
        // them the gRPC side has taken.
        let mut delivered: VecDeque<jetstream::Message> = VecDeque::new();
        let outcome: Option<Status> = loop {
            let taken = delivered.len().saturating_sub(mailbox.queued());
            for m in delivered.drain(..taken) {
                let _ = m.ack().await;
            }
            let next = tokio::select! {
                _ = cancel.cancelled() => break Some(cancelled(&shutdown)),
                _ = mailbox.reader_gone_wait() => break None,
                n = messages.next() => n,
                // Wake up now and then to acknowledge what the client has taken.
                _ = tokio::time::sleep(Duration::from_millis(200)), if !delivered.is_empty() => continue,
            };
            let msg = match next {
                Some(Ok(m)) => m,
                Some(Err(err)) => {
                    tracing::warn!(%err, subscriber = %sub.subscriber_id, "subscription consumer");
                    break Some(Status::unavailable(format!(
                        "policy stream interrupted: {err}"
                    )));
                }
                None => break Some(Status::unavailable("policy stream ended")),
            };
            let shared = apollo_common::shared_metrics::shared();
            let family = apollo_common::shared_metrics::FamilyLabels {
                family: "policy.orchestration".into(),
            };
            shared.bus_consumed.get_or_create(&family).inc();
            let policy: OrchestrationPolicy = match from_json(&msg.payload) {
                Ok(p) => p,
                Err(err) => {
                    engine.metrics().bad_messages.inc();
                    shared.rejected(family.family, "undecodable");
                    tracing::warn!(%err, subject = %msg.subject, "undecodable policy on the stream");
                    let _ = msg.ack_with(AckKind::Term).await;
                    continue;
                }
            };
            if !matches(&sub, &policy) {
                let _ = msg.ack().await;
                continue;
            }
            delivered.push_back(msg);
            let pushed = tokio::select! {
                _ = cancel.cancelled() => break Some(cancelled(&shutdown)),
                r = mailbox.push(policy, stall) => r,
            };
            match pushed {
                Ok(()) => {}
                Err(Refused::ReaderGone) => break None,
                Err(Refused::Stalled) => {
                    engine.metrics().slow_subscribers.inc();
                    tracing::warn!(subscriber = %sub.subscriber_id, "slow subscriber cut off");
                    break Some(cut_off(&sub, stall, mailbox.capacity()));
                }
            }
        };
        // What the gRPC side took is acknowledged; what is still queued is
        // dropped with the mailbox and handed back (NAK), as is anything the
        // client may not have read, so a resumed stream gets it again.
        let queued = mailbox.close(outcome);
        let taken = delivered.len().saturating_sub(queued);
        for m in delivered.drain(..taken) {
            let _ = m.ack().await;
        }
        for m in delivered {
            let _ = m.ack_with(AckKind::Nak(None)).await;
        }
    }
}

#[tonic::async_trait]
impl OrchestrationPolicyService for PolicyService {
    async fn get_orchestration_policy(
        &self,
        request: Request<OrchestrationPolicyRequest>,
    ) -> Result<Response<OrchestrationPolicy>, Status> {
        let r = request.into_inner();
        let requested = OrchestrationAction::try_from(r.requested_action).map_err(|_| {
            self.engine.metrics().rejected("get", "bad_action");
            Status::invalid_argument(format!(
                "requested_action {} is not an orchestration action",
                r.requested_action
            ))
        })?;
        self.engine
            .policy_for(&r.pod_namespace, &r.pod_name, requested, SystemTime::now())
            .map(Response::new)
            .map_err(|e| {
                self.engine.metrics().rejected(
                    "get",
                    match e {
                        EngineError::Invalid { .. } => "invalid",
                        EngineError::NotFound(_) => "not_found",
                    },
                );
                status(e)
            })
    }

    async fn report_execution_result(
        &self,
        request: Request<ExecutionResult>,
    ) -> Result<Response<ReportResponse>, Status> {
        let r = request.into_inner();
        self.apply_result(&r)
            .await
            .map(Response::new)
            .inspect_err(|s| {
                self.engine.metrics().rejected(
                    "report",
                    match s.code() {
                        tonic::Code::InvalidArgument => "invalid",
                        tonic::Code::NotFound => "not_found",
                        _ => "internal",
                    },
                );
            })
    }

    type SubscribePoliciesStream = PolicyStream;

    async fn subscribe_policies(
        &self,
        request: Request<PolicySubscription>,
    ) -> Result<Response<Self::SubscribePoliciesStream>, Status> {
        let sub = request.into_inner();
        let name = consumer_name(&sub.subscriber_id)
            .and_then(|n| validate_subscription(&sub).map(|_| n))
            .inspect_err(|_| self.engine.metrics().rejected("subscribe", "invalid"))?;
        let cancel = self.streams.child_token();
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        {
            // Checked and reserved at once, before a consumer is created: a
            // refused subscriber leaves nothing behind. A stream replacing
            // one with the same id takes its place.
            let mut active = lock(&self.active);
            if !active.contains_key(&name) && active.len() >= self.delivery.max_subscribers {
                self.engine
                    .metrics()
                    .rejected("subscribe", "too_many_subscribers");
                return Err(Status::resource_exhausted(format!(
                    "{} policy subscriptions are open, the most this server takes (--max-subscribers); close one or reconnect later",
                    active.len()
                )));
            }
            if let Some((_, old)) = active.insert(name.clone(), (generation, cancel.clone())) {
                old.cancel();
            }
        }
        let release = |active: &Mutex<HashMap<String, (u64, CancellationToken)>>| {
            let mut active = lock(active);
            if active.get(&name).is_some_and(|(g, _)| *g == generation) {
                active.remove(&name);
            }
        };
        let consumer = match self.open_consumer(&name).await {
            Ok(c) => c,
            Err(e) => {
                release(&self.active);
                return Err(e);
            }
        };
        // One policy per pull, and pull requests that expire within a
        // second: when a subscriber goes away, at most one policy is in
        // flight to it, and it comes back after `ack_wait`.
        let messages = consumer
            .stream()
            .max_messages_per_batch(1)
            .expires(Duration::from_secs(1))
            .heartbeat(Duration::from_millis(400))
            .messages()
            .await;
        let messages = match messages {
            Ok(m) => m,
            Err(e) => {
                release(&self.active);
                return Err(Status::unavailable(format!("subscription messages: {e}")));
            }
        };
        let on_drop = {
            let active = self.active.clone();
            let engine = self.engine.clone();
            let name = name.clone();
            Box::new(move || {
                let mut active = lock(&active);
                if active.get(&name).is_some_and(|(g, _)| *g == generation) {
                    active.remove(&name);
                }
                engine.metrics().subscribers.dec();
            })
        };
        let (writer, reader) = mailbox(
            self.delivery.buffer.max(1),
            self.engine.metrics().subscriber_queued.clone(),
            on_drop,
        );
        self.engine.metrics().subscribers.inc();
        tracing::info!(subscriber = %sub.subscriber_id, consumer = %name, "policy subscription opened");
        tokio::spawn(
            Pump {
                messages,
                sub,
                mailbox: writer,
                stall: self.delivery.stall,
                cancel,
                shutdown: self.streams.clone(),
                engine: self.engine.clone(),
            }
            .run(),
        );
        Ok(Response::new(Box::pin(reader.into_stream())))
    }
}

/// Runs planning cycles every `interval`, at once on any `apollo.alert.>`
/// message and (at most every `min_gap`) when a node's insight changes, and
/// publishes what each cycle issues.
pub async fn planning_loop(
    service: PolicyService,
    view: apollo_common::ClusterView,
    interval: Duration,
    min_gap: Duration,
    shutdown: CancellationToken,
) {
    let wake = Arc::new(Notify::new());
    let alerts = format!("{}.alert.>", service.bus.subjects().prefix());
    {
        let wake = wake.clone();
        let client = service.bus.client().clone();
        let bus = service.bus.clone();
        let shutdown = shutdown.clone();
        let engine = service.engine.clone();
        tokio::spawn(async move {
            let mut sub = match client.subscribe(alerts.clone()).await {
                Ok(s) => s,
                Err(err) => {
                    engine.metrics().bad_messages.inc();
                    tracing::warn!(%err, "alert subscription failed; planning on the timer only");
                    return;
                }
            };
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    m = sub.next() => match m {
                        Some(m) => {
                            let _span = bus.consumed_core(&m).entered();
                            tracing::debug!(subject = %m.subject, "alert, planning now");
                            wake.notify_one();
                        }
                        None => return,
                    }
                }
            }
        });
    }
    {
        let wake = wake.clone();
        let mut changes = view.subscribe();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    c = changes.recv() => match c {
                        Ok(apollo_common::cluster_view::ViewChange::Node(_))
                        | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => wake.notify_one(),
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
            }
        });
    }
    if let Some(mut leadership) = service.leadership.clone() {
        // Taking over the Lease is a reason to act at once (restore, plan).
        let wake = wake.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = leadership.changed() => if r.is_err() { return },
                }
                wake.notify_one();
            }
        });
    }
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The caller restored before the first cycle; a replica that takes over
    // the Lease later restores again first, for what the previous leader
    // issued meanwhile (its cooldowns and moves under way).
    let mut leading = service.is_leader();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
            _ = wake.notified() => {}
        }
        if !service.is_leader() {
            // Standby: serve reads, plan nothing until the Lease is ours.
            leading = false;
            continue;
        }
        if !leading {
            if !restore_until_done(&service.bus, &service.engine, &shutdown).await {
                return;
            }
            leading = true;
        }
        let cycle = service.engine.plan(SystemTime::now());
        if !cycle.issued.is_empty() || !cycle.blocked.is_empty() {
            tracing::info!(
                issued = cycle.issued.len(),
                blocked = cycle.blocked.len(),
                "planning cycle"
            );
        }
        for p in &cycle.issued {
            service.publish(p).await;
            if let Some(events) = &service.events {
                events.spawn_record(p.clone());
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(min_gap) => {}
        }
    }
}

/// Reads back the policies and execution results this engine published
/// within its restore window (the rails' memory: cooldown, ping-pong window,
/// moves under way) and hands them to the engine, so a restarted engine
/// keeps the cooldowns it had. Returns how many policies and results.
pub async fn restore(bus: &Bus, engine: &Engine) -> Result<(usize, usize), BusError> {
    let now = SystemTime::now();
    let since = now
        .checked_sub(engine.restore_window())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let prefix = bus.subjects().prefix().to_string();
    let mut policies = 0;
    replay_since(
        bus,
        StreamKind::Policy,
        format!("{prefix}.policy.orchestration.>"),
        since,
        |payload| match from_json::<OrchestrationPolicy>(payload) {
            Ok(p) => {
                engine.restore_policy(p, now);
                policies += 1;
            }
            Err(err) => {
                engine.metrics().bad_messages.inc();
                tracing::warn!(%err, "undecodable policy on the stream, not restored");
            }
        },
    )
    .await?;
    let mut results = 0;
    replay_since(
        bus,
        StreamKind::Feedback,
        format!("{prefix}.feedback.orchestration.>"),
        since,
        |payload| match from_json::<ExecutionResult>(payload) {
            Ok(r) => {
                // A result for a policy older than the window finds none.
                if engine.restore_result(&r).is_ok() {
                    results += 1;
                }
            }
            Err(err) => {
                engine.metrics().bad_messages.inc();
                tracing::warn!(%err, "undecodable execution result on the stream, not restored");
            }
        },
    )
    .await?;
    Ok((policies, results))
}

/// Hands every message stored on `filter` since `since` to `apply`, in
/// stream order, up to what was there when the replay started.
async fn replay_since(
    bus: &Bus,
    kind: StreamKind,
    filter: String,
    since: SystemTime,
    mut apply: impl FnMut(&[u8]),
) -> Result<(), BusError> {
    let failed = |reason: String| BusError::JetStream {
        what: format!("replay of {filter}"),
        reason,
    };
    let stream = bus.get_stream(kind).await?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: filter.clone(),
            deliver_policy: consumer::DeliverPolicy::ByStartTime {
                start_time: time::OffsetDateTime::from(since),
            },
            ..Default::default()
        })
        .await
        .map_err(|e| failed(e.to_string()))?;
    let pending = consumer.cached_info().num_pending;
    if pending == 0 {
        return Ok(());
    }
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| failed(e.to_string()))?;
    let mut seen = 0;
    while seen < pending {
        match tokio::time::timeout(Duration::from_secs(10), messages.next()).await {
            Ok(Some(Ok(m))) => {
                apply(&m.payload);
                seen += 1;
            }
            Ok(Some(Err(e))) => return Err(failed(e.to_string())),
            Ok(None) => return Err(failed("ended early".into())),
            Err(_) => return Err(failed(format!("stalled after {seen} of {pending}"))),
        }
    }
    Ok(())
}

/// [`restore`], retried until it succeeds or `shutdown`; false on shutdown.
pub async fn restore_until_done(bus: &Bus, engine: &Engine, shutdown: &CancellationToken) -> bool {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            ready = bus.wait_ready(Duration::from_secs(5)) => if !ready { continue },
        }
        match restore(bus, engine).await {
            Ok((policies, results)) => {
                tracing::info!(
                    policies,
                    results,
                    "policy book and rails restored from the streams"
                );
                return true;
            }
            Err(err) => {
                tracing::warn!(%err, "restoring from the streams failed, retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return false,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

/// Keeps the engine's forecasts current from `apollo.forecast.>` (latest per
/// node first, then new ones), following the stream anew after every
/// reconnection.
pub async fn follow_forecasts(bus: Bus, engine: Engine, shutdown: CancellationToken) {
    let subject = format!("{}.forecast.>", bus.subjects().prefix());
    let mut ready = bus.readiness();
    loop {
        if !bus.wait_ready(Duration::from_secs(5)).await {
            if shutdown.is_cancelled() {
                return;
            }
            continue;
        }
        let (_, mut messages) = match bus
            .latest_then_follow(StreamKind::Forecast, vec![subject.clone()])
            .await
        {
            Ok(c) => c,
            Err(err) => {
                tracing::warn!(%err, "forecast consumer; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => continue,
                }
            }
        };
        loop {
            let m = tokio::select! {
                _ = shutdown.cancelled() => return,
                // Connection lost: follow anew as soon as it is back rather
                // than wait for the consumer's missed heartbeats.
                r = ready.wait_for(|r| !*r) => {
                    if r.is_err() { return }
                    tracing::info!("NATS gone; following forecasts anew when back");
                    break;
                }
                m = messages.next() => m,
            };
            match m {
                Some(Ok(m)) => {
                    let _span = bus.consumed("orchestration_forecasts", &m).entered();
                    match from_json::<ResourcePrediction>(&m.payload) {
                        Ok(p) => {
                            engine.apply_forecast(p);
                        }
                        Err(err) => {
                            engine.metrics().bad_messages.inc();
                            bus.rejected(&m.subject, "undecodable");
                            tracing::warn!(%err, subject = %m.subject, "undecodable forecast");
                        }
                    }
                }
                Some(Err(err)) => {
                    tracing::warn!(%err, "forecast stream; resubscribing");
                    break;
                }
                None => break,
            }
        }
    }
}
