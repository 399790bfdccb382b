//! Consumption of `apollo.insight.cluster.>`.
//!
//! # Restart: rebuild, then follow
//! A durable consumer resumes after its last ack, so on its own it would not
//! give a restarted forecaster its history back. Instead, on start:
//! 1. an ordered consumer with `DeliverPolicy::All` replays the insight
//!    stream's retained window (1,440 messages per node subject, 24 h by
//!    default), feeding the histories; the service reports ready once the
//!    replay has caught up, so the first answers already have full history;
//! 2. the durable consumer `apollo-forecaster` (explicit acks) then follows.
//!    Messages it delivers that were already applied (by the replay, or by
//!    the consumer itself: see [`AppliedSequences`]) are acked and skipped: a
//!    server that restarts after losing acks it had not yet written to disk
//!    redelivers them, and a sample must count once. A message delivered
//!    after later ones (its first delivery went to a pull request lost with
//!    a failed consumer leader, so it comes back only after the ack wait) is
//!    applied, not taken for a redelivery.
//!
//! Poison messages (not JSON for a `ClusterInsight`, or without node and
//! time) are terminated (`Term`) and counted; insights whose values are
//! rejected (NaN, negative, too old, duplicate) are acked and counted.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use apollo_common::{
    bus::{from_json, StreamKind},
    shutdown::CancellationToken,
    Bus,
};
use apollo_proto::ClusterInsight;
use async_nats::jetstream::{
    self,
    consumer::{pull::OrderedConfig, DeliverPolicy},
    AckKind,
};
use futures::StreamExt;

use crate::{engine::Engine, history::SampleReject, Error, Result};

/// Durable consumer name.
pub const DURABLE: &str = "apollo-forecaster";

/// Wall clock, Unix ms.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// What to do with a message after ingesting it.
enum Verdict {
    Ack,
    Term,
}

fn handle(engine: &Engine, bus: &Bus, msg: &jetstream::Message) -> Verdict {
    let _span = bus.consumed("forecaster", msg).entered();
    let publish_ms = msg
        .info()
        .ok()
        .map(|i| (i.published.unix_timestamp_nanos() / 1_000_000) as i64);
    let mut insight: ClusterInsight = match from_json(&msg.payload) {
        Ok(i) => i,
        Err(err) => {
            engine.metrics().insights_consumed.inc();
            engine.metrics().reject_insight("decode");
            bus.rejected(&msg.subject, "undecodable");
            tracing::warn!(subject = %msg.subject, %err, "poison insight terminated");
            return Verdict::Term;
        }
    };
    if insight.node_name.is_empty() {
        // The subject names the node too.
        if let Some(tokens) = bus.subjects().parse("insight.cluster", &msg.subject) {
            if let [node] = tokens.as_slice() {
                insight.node_name = node.clone();
            }
        }
    }
    match engine.ingest(&insight, publish_ms, now_ms()) {
        Ok(_) => {
            engine.note_insight_trace(
                &insight.node_name,
                apollo_common::telemetry::current_span_context(),
            );
            Verdict::Ack
        }
        Err(SampleReject::MissingNode | SampleReject::MissingTimestamp) => {
            bus.rejected(&msg.subject, "missing node or time");
            tracing::warn!(subject = %msg.subject, "insight without node or time terminated");
            Verdict::Term
        }
        Err(reason) => {
            tracing::debug!(subject = %msg.subject, reason = reason.as_str(), "insight not stored");
            Verdict::Ack
        }
    }
}

/// Replays the retained window; returns the last stream sequence applied.
async fn replay(
    engine: &Engine,
    bus: &Bus,
    filter: &str,
    shutdown: &CancellationToken,
) -> Result<u64> {
    let stream = bus.get_stream(StreamKind::Insight).await?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: filter.to_string(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| js_err("replay consumer", e))?;
    let pending = consumer.cached_info().num_pending;
    if pending == 0 {
        return Ok(0);
    }
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| js_err("replay messages", e))?;
    let mut last = 0;
    let mut n = 0u64;
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return Ok(last),
            m = tokio::time::timeout(Duration::from_secs(10), messages.next()) => m,
        };
        let msg = match next {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => return Err(js_err("replay", e)),
            Ok(None) | Err(_) => break,
        };
        let _ = handle(engine, bus, &msg);
        n += 1;
        let Ok(info) = msg.info() else { continue };
        last = last.max(info.stream_sequence);
        if info.pending == 0 {
            break;
        }
    }
    tracing::info!(
        messages = n,
        nodes = engine.node_count(),
        "history rebuilt from the insight stream"
    );
    Ok(last)
}

fn js_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Bus(apollo_common::BusError::JetStream {
        what: what.to_string(),
        reason: e.to_string(),
    })
}

/// Sequences of recently applied messages kept above the replay's end.
const RECENT_APPLIED: usize = 100_000;

/// Which stream sequences were applied: every one up to the replay's end,
/// and the most recent [`RECENT_APPLIED`] the durable consumer applied.
///
/// Delivery is not always in stream order: a message whose delivery was
/// lost with a failed-over consumer leader comes again after the ack wait,
/// behind later ones. So "at or below the highest applied" is no test of a
/// redelivery; membership is. A redelivery of a message older than the
/// recent set is applied again, and the history's own duplicate check
/// refuses its sample.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppliedSequences {
    /// Every sequence at or below it was applied (the in-order replay's end).
    replayed_up_to: u64,
    /// Sequences above `replayed_up_to` applied since.
    recent: BTreeSet<u64>,
}

impl AppliedSequences {
    /// Everything up to `seq` applied (by an in-order, gap-free replay).
    pub fn replayed_up_to(seq: u64) -> Self {
        Self {
            replayed_up_to: seq,
            recent: BTreeSet::new(),
        }
    }

    /// True when `seq` was applied.
    pub fn contains(&self, seq: u64) -> bool {
        seq <= self.replayed_up_to || self.recent.contains(&seq)
    }

    /// Records `seq` as applied, forgetting the oldest beyond the bound.
    pub fn insert(&mut self, seq: u64) {
        if seq <= self.replayed_up_to {
            return;
        }
        self.recent.insert(seq);
        while self.recent.len() > RECENT_APPLIED {
            self.recent.pop_first();
        }
    }

    /// The highest sequence applied (0 = none).
    pub fn highest(&self) -> u64 {
        self.recent
            .last()
            .copied()
            .unwrap_or(0)
            .max(self.replayed_up_to)
    }
}

/// Follows the durable consumer; `applied` records every message handled.
async fn follow(
    engine: &Engine,
    bus: &Bus,
    filter: &str,
    applied: &mut AppliedSequences,
    shutdown: &CancellationToken,
) -> Result<()> {
    // A stream that holds fewer messages than were applied was created anew
    // (memory storage, or deleted): its sequences start over.
    let last = bus
        .get_stream(StreamKind::Insight)
        .await?
        .cached_info()
        .state
        .last_sequence;
    if last < applied.highest() {
        tracing::warn!(
            last,
            applied = applied.highest(),
            "insight stream was recreated; following it from the start"
        );
        *applied = AppliedSequences::default();
    }
    let consumer = bus
        .durable_consumer(
            StreamKind::Insight,
            DURABLE,
            vec![filter.to_string()],
            DeliverPolicy::All,
        )
        .await?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| js_err("durable messages", e))?;
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            m = messages.next() => m,
        };
        let msg = match next {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(js_err("durable consumer", e)),
            None => return Err(js_err("durable consumer", "stream ended")),
        };
        let seq = msg.info().ok().map(|i| i.stream_sequence);
        let verdict = match seq {
            Some(seq) if applied.contains(seq) => {
                engine.metrics().redeliveries_skipped.inc();
                tracing::debug!(seq, "redelivered insight skipped");
                Verdict::Ack
            }
            _ => {
                if let Some(seq) = seq {
                    applied.insert(seq);
                }
                handle(engine, bus, &msg)
            }
        };
        let res = match verdict {
            Verdict::Ack => msg.ack().await,
            Verdict::Term => msg.ack_with(AckKind::Term).await,
        };
        if let Err(err) = res {
            tracing::warn!(%err, seq, "ack failed");
        }
    }
}

/// Rebuilds the histories, then follows new insights until `shutdown`;
/// reconnects with backoff. `replayed` turns true once the replay caught up
/// (the service serves from then on, while NATS is reachable).
pub async fn run(
    engine: Arc<Engine>,
    bus: Bus,
    replayed_tx: tokio::sync::watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let filter = bus.subjects().all("insight.cluster");
    let mut backoff = Duration::from_millis(200);
    // Stream sequences applied; None until the replay finished.
    let mut applied_up_to: Option<AppliedSequences> = None;
    while !shutdown.is_cancelled() {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = bus.wait_ready(Duration::from_secs(3600)) => {}
        }
        if !bus.is_ready() {
            continue;
        }
        if applied_up_to.is_none() {
            match replay(&engine, &bus, &filter, &shutdown).await {
                Ok(last) => {
                    applied_up_to = Some(AppliedSequences::replayed_up_to(last));
                    replayed_tx.send_replace(true);
                }
                Err(err) => {
                    tracing::warn!(%err, retry_in = ?backoff, "history replay failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
        }
        let mut applied = applied_up_to.take().unwrap_or_default();
        let result = follow(&engine, &bus, &filter, &mut applied, &shutdown).await;
        applied_up_to = Some(applied);
        match result {
            Ok(()) => break,
            Err(err) => {
                tracing::warn!(%err, retry_in = ?backoff, "insight consumer failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_delivered_after_later_ones_is_applied_and_its_redelivery_skipped() {
        let mut applied = AppliedSequences::replayed_up_to(10);
        assert!(applied.contains(7), "replayed");
        // 12 arrives before 11 (11's first delivery was lost).
        assert!(!applied.contains(12));
        applied.insert(12);
        assert!(
            !applied.contains(11),
            "below the highest applied, yet never applied"
        );
        applied.insert(11);
        assert!(applied.contains(11) && applied.contains(12));
        assert!(!applied.contains(13));
        assert_eq!(applied.highest(), 12);
    }

    #[test]
    fn the_recent_set_is_bounded_and_forgets_the_oldest() {
        let mut applied = AppliedSequences::default();
        for seq in 1..=(RECENT_APPLIED as u64 + 5) {
            applied.insert(seq);
        }
        assert_eq!(applied.recent.len(), RECENT_APPLIED);
        assert!(
            !applied.contains(5),
            "forgotten: applied again if redelivered"
        );
        assert!(applied.contains(6));
        assert_eq!(applied.highest(), RECENT_APPLIED as u64 + 5);
    }
}
