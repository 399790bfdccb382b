//! The NATS/JetStream bus every APOLLO service talks through.
//!
//! - [`Bus::connect`] returns at once and keeps (re)connecting in the
//!   background with backoff; [`Bus::is_ready`] is true only while connected
//!   *and* the streams exist, which is what health checks report.
//! - Streams are created or updated idempotently on every (re)connect.
//! - Every publish carries `Nats-Msg-Id` (a hash of subject and content, so a
//!   client retry is de-duplicated by JetStream), `Content-Type:
//!   application/json` and a W3C `traceparent`, and waits for the stream's ack.
//! - Payloads are protobuf-JSON, readable with `nats sub 'apollo.>'`.

mod streams;
mod subjects;
mod trace;

use std::{future::Future, sync::Arc, time::Duration};

use async_nats::{
    jetstream::{self, consumer, message::PublishMessage, stream},
    ClientError, ConnectOptions, Event, HeaderMap, ServerError,
};
use bytes::Bytes;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use serde::{de::DeserializeOwned, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use streams::{decision_bucket, StreamKind, ALL_STREAMS};
pub use subjects::{decode_token, encode_token, Subjects, SUBJECT_FAMILIES};
pub use trace::{consume_span, extract_context, inject_trace_context, HeaderExtractor};

use crate::{
    config::{NatsArgs, StreamArgs},
    shared_metrics::{shared, ConsumerLabels, FamilyLabels},
};

/// Header naming the payload encoding.
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// Errors of the bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// A name to encode into a subject was empty.
    #[error("empty name cannot be a subject token")]
    EmptyToken,
    /// A subject token was not produced by [`encode_token`].
    #[error("malformed subject token {0:?}")]
    BadToken(String),
    /// Not connected to NATS, or the streams are not set up yet.
    #[error("NATS is not available: {0}")]
    Unavailable(String),
    /// Connection options were invalid (e.g. unreadable credentials).
    #[error("invalid NATS connection settings: {0}")]
    Config(String),
    /// The server refused this client: wrong credentials, or a TLS
    /// handshake that failed. Retrying with the same settings cannot help.
    #[error("NATS at {url} refused the connection: {reason}")]
    Refused {
        /// The server URL(s), credentials redacted.
        url: String,
        /// What the server or the TLS layer said, and what to check.
        reason: String,
    },
    /// The server's permissions for this service's user forbid an
    /// operation on a subject.
    #[error("NATS denied {operation} permission on {subject:?} to this service's user; grant it in the server's authorization settings")]
    PermissionDenied {
        /// `publish` or `subscribe`.
        operation: String,
        /// The subject refused.
        subject: String,
    },
    /// The publish was not acknowledged by JetStream.
    #[error("JetStream publish to {subject} failed: {reason}")]
    Publish {
        /// Subject published to.
        subject: String,
        /// Why.
        reason: String,
    },
    /// Creating or reading a stream or consumer failed.
    #[error("JetStream {what} failed: {reason}")]
    JetStream {
        /// The operation.
        what: String,
        /// Why.
        reason: String,
    },
    /// A payload was not valid protobuf-JSON for the expected message.
    #[error("invalid JSON payload: {0}")]
    Decode(#[from] serde_json::Error),
}

impl BusError {
    /// The gRPC code of this error, the same in every service: what a
    /// client should do about it. NATS or JetStream not answering, or
    /// refusing a publish, is UNAVAILABLE (retry: publishes carry a
    /// `Nats-Msg-Id`, so a retry is stored once); a name from the request
    /// that cannot be a subject token is INVALID_ARGUMENT; bad connection
    /// settings and undecodable stored payloads are INTERNAL (retrying does
    /// not help).
    pub fn grpc_code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Self::EmptyToken | Self::BadToken(_) => Code::InvalidArgument,
            Self::Unavailable(_)
            | Self::Publish { .. }
            | Self::JetStream { .. }
            | Self::Refused { .. } => Code::Unavailable,
            Self::Config(_) | Self::Decode(_) => Code::Internal,
            // The service's own NATS user lacks a permission: the deployment
            // is wrong, not the request, and a retry cannot help.
            Self::PermissionDenied { .. } => Code::Internal,
        }
    }
}

impl From<BusError> for tonic::Status {
    fn from(err: BusError) -> Self {
        tonic::Status::new(err.grpc_code(), err.to_string())
    }
}

/// Acknowledgement of a stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Stream that stored the message.
    pub stream: String,
    /// Stream sequence of the message (of the original for a duplicate).
    pub sequence: u64,
    /// The `Nats-Msg-Id` sent.
    pub msg_id: String,
    /// True when JetStream recognised the message as a duplicate of one
    /// already stored within the duplicate window.
    pub duplicate: bool,
}

/// Serialises a message as protobuf-JSON.
pub fn to_json<T: Serialize>(msg: &T) -> Result<Bytes, BusError> {
    Ok(Bytes::from(serde_json::to_vec(msg)?))
}

/// Parses a protobuf-JSON payload.
pub fn from_json<T: DeserializeOwned>(payload: &[u8]) -> Result<T, BusError> {
    Ok(serde_json::from_slice(payload)?)
}

/// Content identity of a message: the same subject and payload always give the
/// same id, so a retried report is stored once.
pub fn content_id(subject: &str, payload: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(subject.as_bytes());
    h.update([0u8]);
    h.update(payload);
    let digest = h.finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// A permission the NATS server refused this connection's user, parsed from
/// its `Permissions Violation for Publish to "subject"` error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermissionViolation {
    /// `publish` or `subscribe`.
    pub operation: String,
    /// The subject refused.
    pub subject: String,
}

impl PermissionViolation {
    /// Parses the server's error text; `None` for any other error.
    pub fn parse(server_error: &str) -> Option<Self> {
        let text = server_error.trim().trim_matches('\'');
        const PREFIX: &str = "permissions violation for ";
        let rest = text
            .get(..PREFIX.len())
            .filter(|p| p.eq_ignore_ascii_case(PREFIX))
            .map(|_| &text[PREFIX.len()..])?;
        let (op, rest) = rest.split_once(' ')?;
        let operation = match op.to_ascii_lowercase().as_str() {
            "publish" => "publish",
            "subscription" => "subscribe",
            _ => return None,
        };
        let subject = rest.strip_prefix("to ")?.trim();
        // The subject is quoted; a queue group may follow it.
        let subject = subject
            .strip_prefix('"')
            .and_then(|s| s.split_once('"'))
            .map_or(subject, |(s, _)| s);
        Some(Self {
            operation: operation.to_string(),
            subject: subject.to_string(),
        })
    }

    fn into_error(self) -> BusError {
        BusError::PermissionDenied {
            operation: self.operation,
            subject: self.subject,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabel {
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

/// What the NATS server refused, for `/metrics`.
#[derive(Clone, Default)]
struct BusMetrics {
    permission_denied: Family<OperationLabel, Counter>,
    refused: Family<ReasonLabel, Counter>,
}

/// Why a connection attempt failed, when it is the server or TLS refusing
/// us (rather than the server being unreachable).
fn refusal(kind: &str) -> Option<(&'static str, &'static str)> {
    match kind {
        "authorization violation" => Some((
            "auth",
            "authorization violation: check --nats-user/--nats-password, --nats-token, --nats-nkey or --nats-creds",
        )),
        "failed signing nonce" => Some((
            "auth",
            "cannot sign the server's nonce: check the NKey seed or credentials file",
        )),
        "TLS error" => Some(("tls", tls_hint())),
        _ => None,
    }
}

struct Inner {
    client: async_nats::Client,
    violations: tokio::sync::broadcast::Sender<PermissionViolation>,
    metrics: BusMetrics,
    js: jetstream::Context,
    subjects: Subjects,
    stream_prefix: String,
    ready: watch::Receiver<bool>,
    shutdown: CancellationToken,
    decisions: tokio::sync::OnceCell<jetstream::kv::Store>,
}

/// Handle to NATS + JetStream; cheap to clone.
#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("prefix", &self.inner.subjects.prefix())
            .field("ready", &self.is_ready())
            .finish()
    }
}

impl Bus {
    /// Starts connecting to NATS and returns immediately; a background task
    /// keeps the connection and the streams in place until `shutdown`.
    pub async fn connect(
        name: &str,
        nats: &NatsArgs,
        streams: &StreamArgs,
        shutdown: CancellationToken,
    ) -> Result<Self, BusError> {
        // One plain attempt first: refused credentials or TLS are a
        // configuration error worth stopping for, with the reason; an
        // unreachable server is not (the bus keeps retrying in the
        // background, as it does after any outage).
        // `--nats-url` takes a comma-separated list (every server of a
        // cluster); the client fails over between them.
        let servers: Vec<String> = nats
            .url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        match connect_options(name, nats)
            .await?
            .connect(servers.clone())
            .await
        {
            Ok(probe) => drop(probe),
            Err(err) => {
                if let Some((_, reason)) = classify_connect_error(&err) {
                    return Err(BusError::Refused {
                        url: nats.display_url(),
                        reason,
                    });
                }
                tracing::warn!(url = %nats.display_url(), %err, "NATS not reachable yet, retrying in the background");
            }
        }
        let (event_tx, mut event_rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
        let client = connect_options(name, nats)
            .await?
            .retry_on_initial_connect()
            .event_callback(move |event| {
                let tx = event_tx.clone();
                async move {
                    let _ = tx.send(event);
                }
            })
            .connect(servers.clone())
            .await
            .map_err(|e| BusError::Config(format!("{}: {e}", nats.display_url())))?;
        let (violations, _) = tokio::sync::broadcast::channel(64);
        let metrics = BusMetrics::default();
        let js = jetstream::ContextBuilder::new()
            .timeout(nats.request_timeout)
            .build(client.clone());

        let (ready_tx, ready_rx) = watch::channel(false);
        let subjects = Subjects::new(nats.subject_prefix.clone());
        let inner = Arc::new(Inner {
            client: client.clone(),
            violations: violations.clone(),
            metrics: metrics.clone(),
            js: js.clone(),
            subjects: subjects.clone(),
            stream_prefix: nats.stream_prefix.clone(),
            ready: ready_rx,
            shutdown: shutdown.clone(),
            decisions: tokio::sync::OnceCell::new(),
        });

        let stream_cfgs = streams::configs(&nats.stream_prefix, &subjects, streams);
        let decision_cfg = streams::decision_bucket_config(&nats.stream_prefix, streams);
        // Logged, so without credentials.
        let url = nats.display_url();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            let mut reconnecting = false;
            loop {
                let connected =
                    client.connection_state() == async_nats::connection::State::Connected;
                if connected && !*ready_tx.borrow() {
                    match streams::ensure(&js, &stream_cfgs, &decision_cfg).await {
                        Ok(()) => {
                            tracing::info!(url = %url, "connected to NATS, streams ready");
                            let _ = ready_tx.send(true);
                            backoff = Duration::from_millis(100);
                        }
                        Err(err) => {
                            tracing::warn!(%err, retry_in = ?backoff, "stream setup failed");
                        }
                    }
                } else if !connected && *ready_tx.borrow() {
                    let _ = ready_tx.send(false);
                }
                let wait = if *ready_tx.borrow() {
                    Duration::from_secs(5)
                } else {
                    backoff
                };
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    ev = event_rx.recv() => match ev {
                        Some(Event::Disconnected) => {
                            tracing::warn!(url = %url, "disconnected from NATS, reconnecting");
                            reconnecting = true;
                            let _ = ready_tx.send(false);
                        }
                        Some(Event::Connected) => {
                            tracing::info!(url = %url, "NATS connection established");
                            // After an outage the streams may be gone (a server
                            // without storage restarted): set them up again. The
                            // first connection was already handled above.
                            if reconnecting {
                                reconnecting = false;
                                let _ = ready_tx.send(false);
                            }
                        }
                        Some(Event::ServerError(ServerError::Other(text))) => {
                            match PermissionViolation::parse(&text) {
                                Some(v) => {
                                    tracing::error!(
                                        operation = %v.operation,
                                        subject = %v.subject,
                                        "nats denied permission to this service's user"
                                    );
                                    metrics
                                        .permission_denied
                                        .get_or_create(&OperationLabel {
                                            operation: v.operation.clone(),
                                        })
                                        .inc();
                                    let _ = violations.send(v);
                                }
                                None => tracing::warn!(error = %text, "nats server error"),
                            }
                        }
                        Some(Event::ClientError(ClientError::Other(kind))) => {
                            match refusal(&kind) {
                                Some((label, reason)) => {
                                    tracing::error!(url = %url, reason, "nats refused the connection");
                                    metrics
                                        .refused
                                        .get_or_create(&ReasonLabel { reason: label.into() })
                                        .inc();
                                }
                                None => tracing::debug!(url = %url, error = %kind, "nats connection attempt failed"),
                            }
                        }
                        Some(Event::ServerError(ServerError::AuthorizationViolation)) => {
                            tracing::error!(url = %url, "nats refused the connection: authorization violation");
                            metrics
                                .refused
                                .get_or_create(&ReasonLabel { reason: "auth".into() })
                                .inc();
                        }
                        Some(other) => tracing::debug!(event = %other, "nats event"),
                        None => {}
                    },
                    _ = tokio::time::sleep(wait) => {
                        if !*ready_tx.borrow() {
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                            if !connected {
                                tracing::debug!(url = %url, "waiting for NATS");
                            }
                        }
                    }
                }
            }
        });
        Ok(Self { inner })
    }

    /// Registers the bus's counters: `apollo_nats_permission_denied_total`
    /// (by `operation`) and `apollo_nats_connection_refused_total` (by
    /// `reason`: `auth` or `tls`).
    /// Every label value starts at zero, so `rate()` and alerts work before
    /// the first refusal.
    pub fn register_metrics(&self, registry: &mut Registry) {
        let metrics = &self.inner.metrics;
        for operation in ["publish", "subscribe"] {
            let _ = metrics.permission_denied.get_or_create(&OperationLabel {
                operation: operation.into(),
            });
        }
        for reason in ["auth", "tls"] {
            let _ = metrics.refused.get_or_create(&ReasonLabel {
                reason: reason.into(),
            });
        }
        registry.register(
            "apollo_nats_permission_denied",
            "Operations the NATS server refused this service's user, by operation",
            self.inner.metrics.permission_denied.clone(),
        );
        registry.register(
            "apollo_nats_connection_refused",
            "Connection attempts the NATS server or TLS refused, by reason",
            self.inner.metrics.refused.clone(),
        );
    }

    /// Permission violations the server reports from now on, so a caller
    /// waiting on a reply can fail at once instead of timing out.
    pub fn permission_violations(&self) -> tokio::sync::broadcast::Receiver<PermissionViolation> {
        self.inner.violations.subscribe()
    }

    /// Subject builder for this bus's prefix.
    pub fn subjects(&self) -> &Subjects {
        &self.inner.subjects
    }

    /// Name of the JetStream stream of a kind, e.g. `APOLLO_INSIGHT`.
    pub fn stream_name(&self, kind: StreamKind) -> String {
        kind.stream_name(&self.inner.stream_prefix)
    }

    /// True while connected with streams in place.
    pub fn is_ready(&self) -> bool {
        *self.inner.ready.borrow()
    }

    /// Watch readiness changes.
    pub fn readiness(&self) -> watch::Receiver<bool> {
        self.inner.ready.clone()
    }

    /// Waits until ready or `timeout` passes; returns readiness.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let mut rx = self.inner.ready.clone();
        tokio::time::timeout(timeout, rx.wait_for(|r| *r))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The raw NATS client, for core subscriptions.
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.inner.js
    }

    /// Serialises `msg` and publishes it; resolves when JetStream stored it.
    pub async fn publish<T: Serialize>(
        &self,
        subject: String,
        msg: &T,
    ) -> Result<Stored, BusError> {
        self.start_publish(subject, msg).await?.await
    }

    /// Sends `msg` and returns a future for its ack, so a caller can keep a
    /// bounded number of acks in flight. Fails fast when NATS is unavailable.
    pub async fn start_publish<T: Serialize>(
        &self,
        subject: String,
        msg: &T,
    ) -> Result<impl Future<Output = Result<Stored, BusError>> + Send + 'static, BusError> {
        self.start_publish_with_headers(subject, msg, HeaderMap::new())
            .await
    }

    /// [`start_publish`](Self::start_publish) with `extra` headers beside
    /// the standard ones (what a reader needs that the payload's schema
    /// lacks). The message id covers the payload only, as for every publish.
    pub async fn start_publish_with_headers<T: Serialize>(
        &self,
        subject: String,
        msg: &T,
        extra: HeaderMap,
    ) -> Result<impl Future<Output = Result<Stored, BusError>> + Send + 'static, BusError> {
        if !self.is_ready() {
            return Err(BusError::Unavailable("not connected to NATS".into()));
        }
        let payload = to_json(msg)?;
        let msg_id = content_id(&subject, &payload);
        let mut headers = extra;
        headers.insert("Content-Type", CONTENT_TYPE_JSON);
        inject_trace_context(&mut headers);
        let publish = PublishMessage::build()
            .payload(payload)
            .headers(headers)
            .message_id(&msg_id);
        let family = FamilyLabels {
            family: self.inner.subjects.family_of(&subject).to_string(),
        };
        let failed = |family: &FamilyLabels| {
            shared().bus_publish_failures.get_or_create(family).inc();
        };
        // Subscribed before sending: a refused publish gets no ack, only a
        // server error on the connection, which must end the wait at once.
        let mut violations = self.permission_violations();
        let ack = self
            .inner
            .js
            .send_publish(subject.clone(), publish)
            .await
            .map_err(|e| {
                failed(&family);
                classify_publish_error(&subject, e)
            })?;
        Ok(async move {
            let denied = async {
                loop {
                    match violations.recv().await {
                        Ok(v) if v.operation == "publish" && v.subject == subject => return v,
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                            std::future::pending::<()>().await
                        }
                    }
                }
            };
            let ack = tokio::select! {
                ack = ack => ack.map_err(|e| {
                    failed(&family);
                    classify_publish_error(&subject, e)
                })?,
                v = denied => {
                    failed(&family);
                    return Err(v.into_error());
                }
            };
            shared().bus_published.get_or_create(&family).inc();
            Ok(Stored {
                stream: ack.stream,
                sequence: ack.sequence,
                msg_id,
                duplicate: ack.duplicate,
            })
        })
    }

    /// Starts handling a message taken from a JetStream consumer: counts
    /// it, records the consumer's lag (messages still pending) and returns
    /// the span to handle it in, which continues the publisher's trace.
    pub fn consumed(&self, consumer: &'static str, msg: &jetstream::Message) -> tracing::Span {
        if let Ok(info) = msg.info() {
            shared()
                .consumer_pending
                .get_or_create(&ConsumerLabels { consumer })
                .set(i64::try_from(info.pending).unwrap_or(i64::MAX));
        }
        self.consumed_core(&msg.message)
    }

    /// [`consumed`](Self::consumed) for a core NATS message (no lag to tell).
    pub fn consumed_core(&self, msg: &async_nats::Message) -> tracing::Span {
        let family = self.inner.subjects.family_of(&msg.subject);
        shared()
            .bus_consumed
            .get_or_create(&FamilyLabels {
                family: family.to_string(),
            })
            .inc();
        consume_span(&msg.subject, family, msg.headers.as_ref())
    }

    /// Counts a consumed message that could not be used, by `reason`
    /// (e.g. `undecodable`).
    pub fn rejected(&self, subject: &str, reason: &'static str) {
        shared().rejected(self.inner.subjects.family_of(subject).to_string(), reason);
    }

    /// A durable pull consumer with explicit acks on a stream, filtered to
    /// `filters`; created if missing, reused across restarts.
    pub async fn durable_consumer(
        &self,
        kind: StreamKind,
        durable: &str,
        filters: Vec<String>,
        deliver_policy: consumer::DeliverPolicy,
    ) -> Result<consumer::PullConsumer, BusError> {
        let stream = self.get_stream(kind).await?;
        let config = consumer::pull::Config {
            durable_name: Some(durable.to_string()),
            filter_subject: single(&filters),
            filter_subjects: multi(filters),
            ack_policy: consumer::AckPolicy::Explicit,
            deliver_policy,
            max_deliver: 5,
            ack_wait: Duration::from_secs(30),
            ..Default::default()
        };
        stream
            .get_or_create_consumer(durable, config)
            .await
            .map_err(|e| BusError::JetStream {
                what: format!("consumer {durable}"),
                reason: e.to_string(),
            })
    }

    /// An ordered (ephemeral, in-order, gap-free) consumer that first delivers
    /// the last message of every matching subject, then follows new ones: the
    /// way to rebuild "latest state per node/pod" after a restart. Returns the
    /// number of messages pending at creation (the replay length) too.
    pub async fn latest_then_follow(
        &self,
        kind: StreamKind,
        filters: Vec<String>,
    ) -> Result<(u64, consumer::pull::Ordered), BusError> {
        let stream = self.get_stream(kind).await?;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: single(&filters),
                filter_subjects: multi(filters),
                deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .map_err(|e| BusError::JetStream {
                what: "ordered consumer".into(),
                reason: e.to_string(),
            })?;
        let pending = consumer.cached_info().num_pending;
        let messages = consumer.messages().await.map_err(|e| BusError::JetStream {
            what: "ordered consumer messages".into(),
            reason: e.to_string(),
        })?;
        Ok((pending, messages))
    }

    /// Stores the decision record of the policy `request_id` (its inputs and
    /// factors, as JSON) in the decision bucket, replacing an earlier one.
    pub async fn put_decision_record<T: Serialize>(
        &self,
        request_id: &str,
        record: &T,
    ) -> Result<(), BusError> {
        if !self.is_ready() {
            return Err(BusError::Unavailable("not connected to NATS".into()));
        }
        let key = decision_key(request_id)?;
        let store = self.decision_store().await?;
        store
            .put(key, to_json(record)?)
            .await
            .map_err(|e| BusError::JetStream {
                what: format!("put decision record {request_id}"),
                reason: e.to_string(),
            })?;
        Ok(())
    }

    /// The decision record of `request_id`, if still kept.
    pub async fn decision_record(
        &self,
        request_id: &str,
    ) -> Result<Option<serde_json::Value>, BusError> {
        let key = decision_key(request_id)?;
        let store = self.decision_store().await?;
        let value = store.get(key).await.map_err(|e| BusError::JetStream {
            what: format!("get decision record {request_id}"),
            reason: e.to_string(),
        })?;
        value.map(|v| from_json(&v)).transpose()
    }

    async fn decision_store(&self) -> Result<&jetstream::kv::Store, BusError> {
        self.inner
            .decisions
            .get_or_try_init(|| async {
                let bucket = decision_bucket(&self.inner.stream_prefix);
                self.inner
                    .js
                    .get_key_value(&bucket)
                    .await
                    .map_err(|e| BusError::JetStream {
                        what: format!("key-value bucket {bucket}"),
                        reason: e.to_string(),
                    })
            })
            .await
    }

    /// The stream handle of a kind.
    pub async fn get_stream(&self, kind: StreamKind) -> Result<stream::Stream, BusError> {
        let name = self.stream_name(kind);
        self.inner
            .js
            .get_stream(&name)
            .await
            .map_err(|e| BusError::JetStream {
                what: format!("get stream {name}"),
                reason: e.to_string(),
            })
    }

    /// Flushes and drains the connection (pending publishes are sent).
    pub async fn drain(&self) {
        self.inner.shutdown.cancel();
        if let Err(err) = self.inner.client.drain().await {
            tracing::debug!(%err, "nats drain");
        }
    }
}

/// Delay before connection attempt `attempts` (counted from 1, reset by a
/// successful connection): the first attempt goes at once, so a service
/// starting beside a ready server is not held back; then 100 ms doubling
/// to a 5 s ceiling.
fn reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let exp = (attempts - 2).min(6) as u32;
    Duration::from_millis(100 * 2u64.pow(exp)).min(Duration::from_secs(5))
}

/// The connection options every attempt uses: name, timeouts, reconnect
/// backoff, credentials and TLS from `nats`.
async fn connect_options(name: &str, nats: &NatsArgs) -> Result<ConnectOptions, BusError> {
    let mut opts = ConnectOptions::new()
        .name(name)
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(nats.request_timeout))
        .reconnect_delay_callback(reconnect_delay);
    if let Some(path) = &nats.creds_file {
        opts = opts
            .credentials_file(path)
            .await
            .map_err(|e| BusError::Config(format!("credentials file {}: {e}", path.display())))?;
    }
    if let (Some(user), Some(pass)) = (&nats.user, &nats.password) {
        opts = opts.user_and_password(user.clone(), pass.clone());
    }
    if let Some(token) = &nats.token {
        opts = opts.token(token.clone());
    }
    if let Some(path) = &nats.nkey_file {
        let seed = std::fs::read_to_string(path)
            .map_err(|e| BusError::Config(format!("NKey seed file {}: {e}", path.display())))?;
        let seed = seed
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("SU"))
            .ok_or_else(|| {
                BusError::Config(format!(
                    "NKey seed file {}: no user seed (a line starting with SU)",
                    path.display()
                ))
            })?;
        opts = opts.nkey(seed.to_string());
    }
    if let Some(ca) = &nats.tls_ca {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&nats.tls_cert, &nats.tls_key) {
        opts = opts.add_client_certificate(cert.clone(), key.clone());
    }
    if nats.tls_required {
        opts = opts.require_tls(true);
    }
    Ok(opts)
}

/// `Some((metric label, reason))` when a failed connection attempt was the
/// server or TLS refusing us rather than the server being unreachable.
fn classify_connect_error(err: &async_nats::ConnectError) -> Option<(&'static str, String)> {
    use async_nats::ConnectErrorKind as K;
    match err.kind() {
        K::AuthorizationViolation | K::Authentication => {
            return refusal(&err.kind().to_string()).map(|(l, r)| (l, r.to_string()))
        }
        K::Tls => return Some(("tls", format!("{} ({err})", tls_hint()))),
        _ => {}
    }
    // A failed handshake or a certificate the server rejects surfaces as an
    // I/O error carrying the rustls error.
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(e) = source {
        let tls = e.downcast_ref::<rustls::Error>().or_else(|| {
            e.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(tls) = tls {
            return Some(("tls", format!("{} ({tls})", tls_hint())));
        }
        source = e.source();
    }
    None
}

fn tls_hint() -> &'static str {
    "TLS handshake failed: check --nats-tls-ca (does it sign the server's certificate for this host name?) and --nats-tls-cert/--nats-tls-key"
}

/// A request id as a key-value key: ids are uuids or `[A-Za-z0-9_-]` words.
fn decision_key(request_id: &str) -> Result<String, BusError> {
    let id = request_id.trim();
    if id.is_empty()
        || id.len() > 200
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(BusError::BadToken(request_id.to_string()));
    }
    Ok(id.to_string())
}

// nats-server before 2.10 knows only the single `filter_subject`; use it
// whenever one filter suffices so older servers work too.
fn single(filters: &[String]) -> String {
    if filters.len() == 1 {
        filters[0].clone()
    } else {
        String::new()
    }
}

fn multi(filters: Vec<String>) -> Vec<String> {
    if filters.len() == 1 {
        Vec::new()
    } else {
        filters
    }
}

fn classify_publish_error(subject: &str, err: jetstream::context::PublishError) -> BusError {
    use jetstream::context::PublishErrorKind as K;
    match err.kind() {
        K::TimedOut | K::BrokenPipe | K::StreamNotFound => {
            BusError::Unavailable(format!("publish to {subject}: {err}"))
        }
        _ => BusError::Publish {
            subject: subject.to_string(),
            reason: err.to_string(),
        },
    }
}

#[cfg(test)]
mod grpc_code_tests {
    use super::*;

    #[test]
    fn every_bus_error_has_one_grpc_code() {
        use tonic::Code;
        let decode = serde_json::from_str::<u8>("x").unwrap_err();
        let cases = [
            (BusError::EmptyToken, Code::InvalidArgument),
            (BusError::BadToken("a.b".into()), Code::InvalidArgument),
            (BusError::Unavailable("down".into()), Code::Unavailable),
            (BusError::Config("bad creds".into()), Code::Internal),
            (
                BusError::Publish {
                    subject: "apollo.x".into(),
                    reason: "no ack".into(),
                },
                Code::Unavailable,
            ),
            (
                BusError::JetStream {
                    what: "get stream".into(),
                    reason: "timeout".into(),
                },
                Code::Unavailable,
            ),
            (BusError::Decode(decode), Code::Internal),
        ];
        for (err, code) in cases {
            let text = err.to_string();
            let status = tonic::Status::from(err);
            assert_eq!(status.code(), code, "{text}");
            assert_eq!(status.message(), text);
        }
    }
}

#[cfg(test)]
mod reconnect_delay_tests {
    use super::reconnect_delay;
    use std::time::Duration;

    #[test]
    fn the_first_attempt_is_immediate_then_backoff_doubles_to_a_ceiling() {
        assert_eq!(reconnect_delay(0), Duration::ZERO);
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        assert_eq!(reconnect_delay(2), Duration::from_millis(100));
        assert_eq!(reconnect_delay(3), Duration::from_millis(200));
        assert_eq!(reconnect_delay(5), Duration::from_millis(800));
        assert_eq!(reconnect_delay(8), Duration::from_secs(5));
        assert_eq!(reconnect_delay(usize::MAX), Duration::from_secs(5));
    }
}
