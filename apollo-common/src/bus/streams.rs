//! The JetStream streams and their retention.
//!
//! | stream | subjects | retention (defaults) |
//! |---|---|---|
//! | `APOLLO_INSIGHT` | `apollo.insight.>` | 1440 msgs per subject, 24 h |
//! | `APOLLO_FORECAST` | `apollo.forecast.>` | 100 per subject, 7 d |
//! | `APOLLO_ALERT` | `apollo.alert.>` | 100 per subject, 7 d |
//! | `APOLLO_POLICY` | `apollo.policy.>` | 100 per subject, 7 d |
//! | `APOLLO_FEEDBACK` | `apollo.feedback.>` | 100 per subject, 7 d |

use async_nats::jetstream::{self, stream};

use super::{BusError, Subjects};
use crate::config::StreamArgs;

/// The streams APOLLO owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// Workload signatures and cluster insights.
    Insight,
    /// Resource predictions.
    Forecast,
    /// Early warnings.
    Alert,
    /// Every issued policy (audit trail).
    Policy,
    /// Results reported back by the peers.
    Feedback,
}

/// Every stream, in creation order.
pub const ALL_STREAMS: [StreamKind; 5] = [
    StreamKind::Insight,
    StreamKind::Forecast,
    StreamKind::Alert,
    StreamKind::Policy,
    StreamKind::Feedback,
];

impl StreamKind {
    /// Subject family token (second subject token).
    pub fn family(self) -> &'static str {
        match self {
            Self::Insight => "insight",
            Self::Forecast => "forecast",
            Self::Alert => "alert",
            Self::Policy => "policy",
            Self::Feedback => "feedback",
        }
    }

    /// Stream name under a prefix, e.g. `APOLLO_INSIGHT`.
    pub fn stream_name(self, prefix: &str) -> String {
        format!("{prefix}_{}", self.family().to_ascii_uppercase())
    }
}

pub(super) fn configs(prefix: &str, subjects: &Subjects, args: &StreamArgs) -> Vec<stream::Config> {
    let storage = if args.storage == "memory" {
        stream::StorageType::Memory
    } else {
        stream::StorageType::File
    };
    ALL_STREAMS
        .iter()
        .map(|kind| {
            let (per_subject, max_age) = match kind {
                StreamKind::Insight => (args.insight_max_per_subject, args.insight_max_age),
                _ => (args.events_max_per_subject, args.events_max_age),
            };
            stream::Config {
                name: kind.stream_name(prefix),
                description: Some(format!("APOLLO {} messages", kind.family())),
                subjects: vec![subjects.all(kind.family())],
                max_messages_per_subject: per_subject,
                max_age,
                storage,
                num_replicas: args.replicas,
                duplicate_window: args.duplicate_window,
                allow_direct: true,
                ..Default::default()
            }
        })
        .collect()
}

/// Name of the key-value bucket of decision records under a stream prefix.
pub fn decision_bucket(prefix: &str) -> String {
    format!("{prefix}_DECISIONS")
}

/// The decision-record bucket: one entry per policy `request_id`, kept for
/// `--decision-record-ttl`, latest value only. Declared as the stream behind a
/// key-value bucket (`KV_<bucket>` on `$KV.<bucket>.>`) rather than through
/// the client's bucket helper, which needs an account-info reply that
/// nats-server 2.9 does not give.
pub(super) fn decision_bucket_config(prefix: &str, args: &StreamArgs) -> stream::Config {
    let bucket = decision_bucket(prefix);
    stream::Config {
        name: format!("KV_{bucket}"),
        description: Some("APOLLO decision records by request id".into()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age: args.decision_record_ttl,
        storage: if args.storage == "memory" {
            stream::StorageType::Memory
        } else {
            stream::StorageType::File
        },
        num_replicas: args.replicas,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        duplicate_window: args.duplicate_window.min(args.decision_record_ttl),
        ..Default::default()
    }
}

pub(super) async fn ensure(
    js: &jetstream::Context,
    configs: &[stream::Config],
    decisions: &stream::Config,
) -> Result<(), BusError> {
    for config in configs.iter().chain([decisions]) {
        js.create_or_update_stream(config.clone())
            .await
            .map_err(|e| BusError::JetStream {
                what: format!("create or update stream {}", config.name),
                reason: e.to_string(),
            })?;
    }
    Ok(())
}
