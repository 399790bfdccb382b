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
        ensure_one(js, config)
            .await
            .map_err(|reason| BusError::JetStream {
                what: format!("create or update stream {}", config.name),
                reason,
            })?;
    }
    Ok(())
}

/// Creates the stream if it is missing and updates it only when a setting
/// APOLLO owns differs. The services of a deployment start together and each
/// sets up every stream; an update that changes nothing is never sent,
/// because nats-server 2.9.10 can crash (nil dereference in its stream
/// update handler) when one client updates a stream that another is still
/// creating.
async fn ensure_one(js: &jetstream::Context, want: &stream::Config) -> Result<(), String> {
    use async_nats::jetstream::{context::GetStreamErrorKind, ErrorCode};
    match js.get_stream(&want.name).await {
        Ok(stream) => {
            if differs(&stream.cached_info().config, want) {
                js.update_stream(want).await.map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        Err(e)
            if matches!(e.kind(), GetStreamErrorKind::JetStream(ref j)
                if j.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
        {
            // Creating a stream that another service has just created with
            // the same settings succeeds; with other settings it fails and
            // the caller retries, then finds and updates it.
            js.create_stream(want.clone())
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Whether a stream's settings differ from APOLLO's in what APOLLO sets
/// (the server fills in the rest, which is not compared).
fn differs(have: &stream::Config, want: &stream::Config) -> bool {
    let mut have_subjects = have.subjects.clone();
    let mut want_subjects = want.subjects.clone();
    have_subjects.sort();
    want_subjects.sort();
    let replicas = |n: usize| n.max(1);
    have_subjects != want_subjects
        || have.description != want.description
        || have.max_messages_per_subject != want.max_messages_per_subject
        || have.max_age != want.max_age
        || replicas(have.num_replicas) != replicas(want.num_replicas)
        // Zero asks for the server's default window.
        || (!want.duplicate_window.is_zero() && have.duplicate_window != want.duplicate_window)
        || have.allow_direct != want.allow_direct
        || have.allow_rollup != want.allow_rollup
        || have.deny_delete != want.deny_delete
        || have.discard != want.discard
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The insight stream with the default settings.
    fn insight_stream() -> stream::Config {
        configs("APOLLO", &Subjects::new("apollo"), &StreamArgs::default())
            .into_iter()
            .next()
            .expect("one config per stream")
    }

    #[test]
    fn settings_the_server_fills_in_are_not_a_difference() {
        let mut want = insight_stream();
        want.subjects.push("apollo.more.>".into());
        let mut have = want.clone();
        have.num_replicas = 0;
        have.max_bytes = 1 << 30;
        // The server may list the subjects in another order.
        have.subjects.reverse();
        assert!(!differs(&have, &want));
        let mut zero_window = want.clone();
        zero_window.duplicate_window = Duration::ZERO;
        assert!(!differs(&have, &zero_window));
    }

    #[test]
    fn a_setting_apollo_owns_is_a_difference() {
        let want = insight_stream();
        let changes: [fn(&mut stream::Config); 5] = [
            |c| c.max_age += Duration::from_secs(1),
            |c| c.max_messages_per_subject += 1,
            |c| c.subjects.push("other.>".into()),
            |c| c.num_replicas = 3,
            |c| c.duplicate_window += Duration::from_secs(1),
        ];
        for change in changes {
            let mut have = want.clone();
            change(&mut have);
            assert!(differs(&have, &want), "{have:?}");
        }
    }
}
