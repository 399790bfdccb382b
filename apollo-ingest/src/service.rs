//! `apollo.InsightService`: validate, publish to JetStream, answer after the
//! acknowledgement.
//!
//! `ReportResponse.request_id` is `<stream>:<sequence>` of the stored message
//! (e.g. `APOLLO_INSIGHT:42`). A retry with identical content within the
//! stream's duplicate window is de-duplicated by JetStream (`Nats-Msg-Id` is a
//! hash of subject and payload) and answers the *original* id, with
//! `message` = `duplicate of an already stored message`.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use apollo_common::{
    bus::{BusError, Stored, Subjects},
    Bus,
};
use apollo_proto::{
    insight_service_server::InsightService, ClusterInsight, ReportResponse, StreamResponse,
    WorkloadSignature,
};
use futures::{stream::FuturesUnordered, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tracing::{instrument, Span};

use crate::{
    error::{Error, Result},
    metrics::{Kind, Metrics},
    validate::{self, Limits, Violation},
};

/// How many rejection reasons a `StreamResponse.status` lists.
const REASONS_SHOWN: usize = 3;

/// Rejection label of messages above `--grpc-max-recv-bytes`.
pub const TOO_LARGE_REASON: &str = "message:too_large";

/// A message type the service ingests.
pub(crate) trait Insight: serde::Serialize + Send + Sync + 'static {
    /// Metric label.
    const KIND: Kind;
    /// Field checks.
    fn check(&self, limits: &Limits) -> Result<(), Violation>;
    /// Subject the message is stored under.
    fn subject(&self, subjects: &Subjects) -> Result<String, BusError>;
}

impl Insight for WorkloadSignature {
    const KIND: Kind = Kind::Workload;

    fn check(&self, limits: &Limits) -> Result<(), Violation> {
        validate::workload_signature(self, limits)
    }

    fn subject(&self, subjects: &Subjects) -> Result<String, BusError> {
        subjects.workload(&self.pod_namespace, &self.pod_name)
    }
}

impl Insight for ClusterInsight {
    const KIND: Kind = Kind::Cluster;

    fn check(&self, limits: &Limits) -> Result<(), Violation> {
        validate::cluster_insight(self, limits)
    }

    fn subject(&self, subjects: &Subjects) -> Result<String, BusError> {
        subjects.cluster(&self.node_name)
    }
}

/// Settings of the ingest path.
#[derive(Debug, Clone, Copy)]
pub struct IngestSettings {
    /// Allowed clock skew of producer timestamps.
    pub max_future_skew: Duration,
    /// Overall deadline of one publish (send plus acknowledgement).
    pub publish_deadline: Duration,
    /// Acknowledgements a client stream may have outstanding.
    pub max_inflight_acks: usize,
}

/// The one path by which a message gets stored: validation, subject, JetStream
/// publish within the deadline, metrics. The gRPC service and the Kubernetes
/// collector both go through it, so a collected insight is checked and
/// counted exactly like a reported one.
pub struct Publisher {
    bus: Bus,
    metrics: Metrics,
    settings: IngestSettings,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("settings", &self.settings)
            .finish()
    }
}

/// The `InsightService` implementation; cheap to clone.
#[derive(Clone, Debug)]
pub struct IngestService {
    shared: Arc<Publisher>,
}

type AckFuture = Pin<Box<dyn Future<Output = (Instant, Result<Stored>)> + Send>>;

/// Counts of one client stream.
#[derive(Debug, Default)]
struct Tally {
    received: u64,
    processed: u64,
    rejected: u64,
    duplicates: u64,
    reasons: Vec<String>,
}

impl Tally {
    fn status(&self) -> String {
        let mut s = if self.rejected == 0 {
            format!("ok: {} of {} stored", self.processed, self.received)
        } else {
            let mut s = format!("{} rejected: {}", self.rejected, self.reasons.join("; "));
            let hidden = self.rejected.saturating_sub(self.reasons.len() as u64);
            if hidden > 0 {
                s.push_str(&format!("; and {hidden} more"));
            }
            s.push_str(&format!("; {} of {} stored", self.processed, self.received));
            s
        };
        if self.duplicates > 0 {
            s.push_str(&format!(" ({} duplicate)", self.duplicates));
        }
        s
    }

    fn aborted(&self, source: Error) -> Error {
        Error::StreamAborted {
            received: self.received,
            processed: self.processed,
            rejected: self.rejected,
            source: Box::new(source),
        }
    }
}

impl Publisher {
    /// A publisher storing through `bus`, counting into `metrics`.
    pub fn new(bus: Bus, metrics: Metrics, settings: IngestSettings) -> Self {
        Self {
            bus,
            metrics,
            settings,
        }
    }

    /// The bus messages are stored on.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    fn limits(&self) -> Limits {
        Limits::now(self.settings.max_future_skew)
    }

    /// Validates `msg`; counts and returns a rejection.
    fn admit<M: Insight>(&self, msg: &M) -> Result<String> {
        self.metrics.received(M::KIND);
        if let Err(v) = msg.check(&self.limits()) {
            self.metrics.rejected(M::KIND, v.label());
            return Err(Error::Invalid(v));
        }
        Ok(msg.subject(self.bus.subjects())?)
    }

    /// Sends `msg` and returns its bounded acknowledgement future.
    async fn start<M: Insight>(&self, subject: String, msg: &M) -> Result<AckFuture> {
        let deadline = self.settings.publish_deadline;
        let started = Instant::now();
        let sent = tokio::time::timeout(deadline, self.bus.start_publish(subject, msg)).await;
        let ack = match sent {
            Ok(Ok(ack)) => ack,
            Ok(Err(err)) => {
                self.metrics.publish_failed(M::KIND);
                return Err(err.into());
            }
            Err(_) => {
                self.metrics.publish_failed(M::KIND);
                return Err(Error::Timeout(deadline));
            }
        };
        let remaining = deadline.saturating_sub(started.elapsed());
        Ok(Box::pin(async move {
            let res = match tokio::time::timeout(remaining, ack).await {
                Ok(Ok(stored)) => Ok(stored),
                Ok(Err(err)) => Err(Error::from(err)),
                Err(_) => Err(Error::Timeout(deadline)),
            };
            (started, res)
        }))
    }

    /// Records the outcome of one acknowledgement.
    fn settle(&self, kind: Kind, started: Instant, res: Result<Stored>) -> Result<Stored> {
        match res {
            Ok(stored) => {
                self.metrics
                    .published(kind, stored.duplicate, started.elapsed());
                Ok(stored)
            }
            Err(err) => {
                self.metrics.publish_failed(kind);
                Err(err)
            }
        }
    }

    /// Validates and stores `msg`, resolving once JetStream acknowledged it.
    pub async fn store_cluster_insight(&self, msg: &ClusterInsight) -> Result<Stored> {
        self.store(msg).await
    }

    /// Validates and stores `msg`, resolving once JetStream acknowledged it.
    pub async fn store_workload_signature(&self, msg: &WorkloadSignature) -> Result<Stored> {
        self.store(msg).await
    }

    async fn store<M: Insight>(&self, msg: &M) -> Result<Stored> {
        let subject = self.admit(msg)?;
        let ack = self.start(subject, msg).await?;
        let (started, res) = ack.await;
        self.settle(M::KIND, started, res)
    }
}

impl IngestService {
    /// A service publishing through `bus`.
    pub fn new(bus: Bus, metrics: Metrics, settings: IngestSettings) -> Self {
        Self::with_publisher(Arc::new(Publisher::new(bus, metrics, settings)))
    }

    /// A service storing through an existing (shared) publisher.
    pub fn with_publisher(publisher: Arc<Publisher>) -> Self {
        Self { shared: publisher }
    }

    async fn report<M: Insight>(&self, msg: M) -> Result<ReportResponse> {
        let stored = self.shared.store(&msg).await?;
        let request_id = format!("{}:{}", stored.stream, stored.sequence);
        Span::current().record("request_id", request_id.as_str());
        let message = if stored.duplicate {
            tracing::debug!(%request_id, "duplicate report");
            "duplicate of an already stored message".to_string()
        } else {
            "stored".to_string()
        };
        Ok(ReportResponse {
            success: true,
            message,
            request_id,
        })
    }

    async fn ingest_stream<M: Insight>(&self, mut input: Streaming<M>) -> Result<StreamResponse> {
        let max = self.shared.settings.max_inflight_acks.max(1);
        let mut acks: FuturesUnordered<AckFuture> = FuturesUnordered::new();
        let mut tally = Tally::default();
        let mut failure: Option<Error> = None;
        let mut input_done = false;
        loop {
            if (input_done || failure.is_some()) && acks.is_empty() {
                break;
            }
            tokio::select! {
                biased;
                Some((started, res)) = acks.next(), if !acks.is_empty() => {
                    match self.shared.settle(M::KIND, started, res) {
                        Ok(stored) => {
                            tally.processed += 1;
                            if stored.duplicate {
                                tally.duplicates += 1;
                            }
                        }
                        Err(err) => {
                            tracing::warn!(%err, "publish failed mid-stream");
                            failure.get_or_insert(err);
                        }
                    }
                }
                item = input.message(), if !input_done && failure.is_none() && acks.len() < max => {
                    match item {
                        Ok(Some(msg)) => {
                            let index = tally.received;
                            tally.received += 1;
                            match self.shared.admit(&msg) {
                                Ok(subject) => match self.shared.start(subject, &msg).await {
                                    Ok(ack) => acks.push(ack),
                                    Err(err) => {
                                        tracing::warn!(%err, "publish failed mid-stream");
                                        failure = Some(err);
                                    }
                                },
                                Err(Error::Invalid(v)) => {
                                    tally.rejected += 1;
                                    if tally.reasons.len() < REASONS_SHOWN {
                                        tally.reasons.push(format!("message {index}: {v}"));
                                    }
                                }
                                Err(other) => failure = Some(other),
                            }
                        }
                        Ok(None) => input_done = true,
                        Err(status) => {
                            if status.code() == tonic::Code::OutOfRange {
                                self.shared.metrics.received(M::KIND);
                                self.shared.metrics.rejected(M::KIND, TOO_LARGE_REASON.to_string());
                                tally.received += 1;
                                tally.rejected += 1;
                            }
                            failure = Some(Error::Transport(status));
                        }
                    }
                }
                else => break,
            }
        }
        Span::current().record("received", tally.received);
        Span::current().record("processed", tally.processed);
        if let Some(err) = failure {
            return Err(tally.aborted(err));
        }
        Ok(StreamResponse {
            messages_received: i64::try_from(tally.received).unwrap_or(i64::MAX),
            messages_processed: i64::try_from(tally.processed).unwrap_or(i64::MAX),
            status: tally.status(),
        })
    }
}

#[tonic::async_trait]
impl InsightService for IngestService {
    #[instrument(skip_all, fields(kind = "cluster", node, request_id))]
    async fn report_cluster_insight(
        &self,
        request: Request<ClusterInsight>,
    ) -> Result<Response<ReportResponse>, Status> {
        let msg = request.into_inner();
        Span::current().record("node", msg.node_name.as_str());
        Ok(Response::new(self.report(msg).await?))
    }

    #[instrument(skip_all, fields(kind = "workload", namespace, pod, request_id))]
    async fn report_workload_signature(
        &self,
        request: Request<WorkloadSignature>,
    ) -> Result<Response<ReportResponse>, Status> {
        let msg = request.into_inner();
        Span::current().record("namespace", msg.pod_namespace.as_str());
        Span::current().record("pod", msg.pod_name.as_str());
        Ok(Response::new(self.report(msg).await?))
    }

    #[instrument(skip_all, fields(kind = "cluster", received, processed))]
    async fn stream_cluster_insights(
        &self,
        request: Request<Streaming<ClusterInsight>>,
    ) -> Result<Response<StreamResponse>, Status> {
        Ok(Response::new(
            self.ingest_stream(request.into_inner()).await?,
        ))
    }

    #[instrument(skip_all, fields(kind = "workload", received, processed))]
    async fn stream_workload_signatures(
        &self,
        request: Request<Streaming<WorkloadSignature>>,
    ) -> Result<Response<StreamResponse>, Status> {
        Ok(Response::new(
            self.ingest_stream(request.into_inner()).await?,
        ))
    }
}
