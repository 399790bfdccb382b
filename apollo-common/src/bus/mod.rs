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
    ConnectOptions, Event, HeaderMap,
};
use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use streams::{decision_bucket, StreamKind, ALL_STREAMS};
pub use subjects::{decode_token, encode_token, Subjects};
pub use trace::{extract_context, inject_trace_context, HeaderExtractor};

use crate::config::{NatsArgs, StreamArgs};

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

struct Inner {
    client: async_nats::Client,
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
        let (event_tx, mut event_rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
        let mut opts = ConnectOptions::new()
            .name(name)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(2))
            .request_timeout(Some(nats.request_timeout))
            .reconnect_delay_callback(|attempts| {
                // 100 ms doubling to a 5 s ceiling.
                let exp = attempts.min(6) as u32;
                Duration::from_millis(100 * 2u64.pow(exp)).min(Duration::from_secs(5))
            })
            .event_callback(move |event| {
                let tx = event_tx.clone();
                async move {
                    let _ = tx.send(event);
                }
            });
        if let Some(path) = &nats.creds_file {
            opts = opts.credentials_file(path).await.map_err(|e| {
                BusError::Config(format!("credentials file {}: {e}", path.display()))
            })?;
        }
        if let (Some(user), Some(pass)) = (&nats.user, &nats.password) {
            opts = opts.user_and_password(user.clone(), pass.clone());
        }
        if let Some(token) = &nats.token {
            opts = opts.token(token.clone());
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
        // `--nats-url` takes a comma-separated list (every server of a
        // cluster); the client fails over between them.
        let servers: Vec<&str> = nats
            .url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let client = opts
            .connect(servers)
            .await
            .map_err(|e| BusError::Config(format!("{}: {e}", nats.url)))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(nats.request_timeout)
            .build(client.clone());

        let (ready_tx, ready_rx) = watch::channel(false);
        let subjects = Subjects::new(nats.subject_prefix.clone());
        let inner = Arc::new(Inner {
            client: client.clone(),
            js: js.clone(),
            subjects: subjects.clone(),
            stream_prefix: nats.stream_prefix.clone(),
            ready: ready_rx,
            shutdown: shutdown.clone(),
            decisions: tokio::sync::OnceCell::new(),
        });

        let stream_cfgs = streams::configs(&nats.stream_prefix, &subjects, streams);
        let decision_cfg = streams::decision_bucket_config(&nats.stream_prefix, streams);
        let url = nats.url.clone();
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
        if !self.is_ready() {
            return Err(BusError::Unavailable("not connected to NATS".into()));
        }
        let payload = to_json(msg)?;
        let msg_id = content_id(&subject, &payload);
        let mut headers = HeaderMap::new();
        headers.insert("Content-Type", CONTENT_TYPE_JSON);
        inject_trace_context(&mut headers);
        let publish = PublishMessage::build()
            .payload(payload)
            .headers(headers)
            .message_id(&msg_id);
        let ack = self
            .inner
            .js
            .send_publish(subject.clone(), publish)
            .await
            .map_err(|e| classify_publish_error(&subject, e))?;
        Ok(async move {
            let ack = ack.await.map_err(|e| classify_publish_error(&subject, e))?;
            Ok(Stored {
                stream: ack.stream,
                sequence: ack.sequence,
                msg_id,
                duplicate: ack.duplicate,
            })
        })
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
