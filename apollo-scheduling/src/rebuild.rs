//! After a restart, the assume cache, the bind-failure penalties and the
//! set of reported request ids are rebuilt from the streams before the
//! engine reports SERVING, so that its first answers are the ones it would
//! have given had it not stopped.
//!
//! Every policy is published on `apollo.policy.scheduling.<ns>.<pod>`; one
//! that assumed its pod on a node carries what was assumed in the
//! [`ASSUMED_HEADER`] header (the node, the pod's CPU, memory and GPU
//! request and pipeline step: what `SchedulingPolicy` itself does not say).
//! Every scheduling result is published on
//! `apollo.feedback.scheduling.<ns>.<pod>`. On start, once the cluster view
//! is replayed, [`rebuild`] reads both streams back over the window that can
//! still matter and applies them in the order JetStream stored them:
//!
//! - policies from `2 × --assume-ttl` ago (an assumption lives a TTL after
//!   its policy, or a TTL after a confirmation that came within the first);
//! - feedback from the longest of that, the time a full penalty takes to
//!   decay below the floor the engine drops it at
//!   (`--failure-penalty-decay × log2(100)`), and `--feedback-dedup-ttl`.
//!
//! Each read is bounded: at most `--rebuild-max-messages` messages per
//! stream are kept (the newest), and the whole rebuild gives up after
//! `--rebuild-timeout`, applying what it read. Progress is logged every
//! second; `apollo_scheduling_rebuilt{what}` says what was rebuilt.
//!
//! Not rebuilt: a policy or report the bounded publish queue dropped, or
//! that was still queued when the process died (counted in
//! `apollo_scheduling_publish_dropped` before the stop); decisions answered
//! while NATS was down (their publish failed); the typical GPU shapes learned
//! from pods older than the policy window; a pipeline's members recorded
//! from feedback older than the window. An insight that arrived between a
//! policy and the restart is judged against the restored assumption by the
//! exact rules only (listed, bound then seen): the requests the node
//! reported before the policy are not read back, so such an assumption
//! counts until the node's next insight shows it or its TTL ends.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use apollo_common::bus::{from_json, StreamKind};
use apollo_common::Bus;
use apollo_proto::{SchedulingPolicy, SchedulingResult};
use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
use async_nats::HeaderMap;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};

use crate::config::{EngineConfig, ServiceArgs};
use crate::demand::PodDemand;
use crate::feedback::SeenIds;
use crate::state::{ClusterState, RestoreEvent, Restored};
use crate::workload::PipelineRef;

/// Header of a published policy carrying the [`Assumption`] it made, as
/// JSON.
pub const ASSUMED_HEADER: &str = "Apollo-Assumed";

/// A penalty is dropped once it decayed below 1 % of the largest (1.0):
/// after log2(100) half-lives.
const PENALTY_HALF_LIVES: f64 = 6.65;

/// What a policy assumed: enough to assume the pod again on the same node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Assumption {
    /// The node the pod was assumed on (the policy's top node).
    pub node: String,
    /// CPU request in milli-cores.
    pub cpu_milli: u64,
    /// Memory request in bytes.
    pub memory_bytes: u64,
    /// GPUs requested.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub num_gpu: u32,
    /// Share of each GPU in milli-GPU.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gpu_milli: u32,
    /// Allowed GPU models (empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpu_models: Vec<String>,
    /// The pod's pipeline and step, for co-locating later steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<PipelineStep>,
}

/// A pipeline step, as [`Assumption`] carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PipelineStep {
    /// Namespace of the pipeline's pods.
    pub namespace: String,
    /// `argo` or `kfp`.
    pub kind: String,
    /// Workflow or run name.
    pub name: String,
    /// The step.
    pub step: String,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl Assumption {
    /// What a decision assumed on `node`.
    pub fn new(node: &str, demand: &PodDemand, pipeline: Option<(PipelineRef, String)>) -> Self {
        Self {
            node: node.to_string(),
            cpu_milli: demand.cpu_milli,
            memory_bytes: demand.memory_bytes,
            num_gpu: demand.num_gpu,
            gpu_milli: demand.gpu_milli,
            gpu_models: demand.gpu_models.clone(),
            pipeline: pipeline.map(|(p, step)| PipelineStep {
                namespace: p.namespace,
                kind: p.kind.to_string(),
                name: p.name,
                step,
            }),
        }
    }

    /// The demand to assume again: what placing the pod takes (its
    /// scoring hints do not matter once the node is chosen).
    pub fn demand(&self) -> PodDemand {
        let d = PodDemand::new(self.cpu_milli, self.memory_bytes);
        if self.num_gpu > 0 {
            d.with_gpu(self.num_gpu, self.gpu_milli)
                .with_gpu_models(self.gpu_models.iter().cloned())
        } else {
            d
        }
    }

    /// The pipeline step; `None` for a kind the engine does not know.
    pub fn pipeline(&self) -> Option<(PipelineRef, String)> {
        let p = self.pipeline.as_ref()?;
        let kind = match p.kind.as_str() {
            "argo" => "argo",
            "kfp" => "kfp",
            _ => return None,
        };
        Some((
            PipelineRef {
                namespace: p.namespace.clone(),
                kind,
                name: p.name.clone(),
            },
            p.step.clone(),
        ))
    }

    /// The header to publish the policy with; `None` when the value cannot
    /// be a header (it always can: JSON escapes line breaks).
    pub fn to_headers(&self) -> Option<HeaderMap> {
        let json = serde_json::to_string(self).ok()?;
        let value: async_nats::HeaderValue = json.parse().ok()?;
        let mut h = HeaderMap::new();
        h.insert(ASSUMED_HEADER, value);
        Some(h)
    }

    /// Reads the header back.
    pub fn from_headers(headers: Option<&HeaderMap>) -> Option<Result<Self, serde_json::Error>> {
        let v = headers?.get(ASSUMED_HEADER)?;
        Some(serde_json::from_str(v.as_str()))
    }
}

/// How far back each stream is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    /// Policies (assumptions).
    pub policies: Duration,
    /// Feedback (penalties, confirmations, reported ids).
    pub feedback: Duration,
}

impl Windows {
    /// The windows that can still matter under these settings (see the
    /// module doc).
    pub fn of(engine: &EngineConfig, service: &ServiceArgs) -> Self {
        let policies = engine.assume_ttl.saturating_mul(2);
        let week = Duration::from_secs(7 * 24 * 3600);
        let penalty = Duration::try_from_secs_f64(
            engine.failure_penalty_decay.as_secs_f64() * PENALTY_HALF_LIVES,
        )
        .unwrap_or(week)
        .min(week);
        Self {
            policies,
            feedback: policies.max(penalty).max(service.feedback_dedup_ttl),
        }
    }
}

/// What a rebuild read and restored.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RebuildReport {
    /// Policies read back.
    pub policies_read: u64,
    /// Scheduling results read back.
    pub feedback_read: u64,
    /// Messages that could not be used (undecodable payload or header).
    pub skipped: u64,
    /// Oldest messages left out to stay within `--rebuild-max-messages`.
    pub dropped_oldest: u64,
    /// Request ids remembered as reported.
    pub feedback_ids: u64,
    /// Whether `--rebuild-timeout` ended the reads early.
    pub timed_out: bool,
    /// What the state holds after the replay.
    pub restored: Restored,
}

/// One stored message.
struct StoredMsg {
    at: SystemTime,
    payload: bytes::Bytes,
    headers: Option<HeaderMap>,
    subject: String,
}

/// The newest messages of one stream's window, oldest first.
#[derive(Default)]
struct Window {
    msgs: VecDeque<StoredMsg>,
    dropped_oldest: u64,
    timed_out: bool,
}

/// Rebuilds the assume cache, penalties and reported ids of `state` and
/// `seen` from the streams (see the module doc). Waits neither for NATS nor
/// for the view: call it once both are ready. Errors reading a stream are
/// retried until `--rebuild-timeout`, then what was read is applied.
pub async fn rebuild(
    bus: &Bus,
    state: &std::sync::Arc<ClusterState>,
    seen: &SeenIds,
    service: &ServiceArgs,
) -> RebuildReport {
    let mut report = RebuildReport::default();
    let max = service.rebuild_max_messages;
    if max == 0 {
        tracing::info!("rebuild off (--rebuild-max-messages 0)");
        return report;
    }
    let windows = Windows::of(state.config(), service);
    let now = SystemTime::now();
    let deadline = tokio::time::Instant::now() + service.rebuild_timeout;
    let subjects = bus.subjects();
    let policies = read_window(
        bus,
        StreamKind::Policy,
        format!("{}.policy.scheduling.>", subjects.prefix()),
        now.checked_sub(windows.policies)
            .unwrap_or(SystemTime::UNIX_EPOCH),
        max,
        deadline,
    )
    .await;
    let feedback = read_window(
        bus,
        StreamKind::Feedback,
        format!("{}.feedback.scheduling.>", subjects.prefix()),
        now.checked_sub(windows.feedback)
            .unwrap_or(SystemTime::UNIX_EPOCH),
        max,
        deadline,
    )
    .await;
    report.timed_out = policies.timed_out || feedback.timed_out;
    report.dropped_oldest = policies.dropped_oldest + feedback.dropped_oldest;
    report.policies_read = policies.msgs.len() as u64;
    report.feedback_read = feedback.msgs.len() as u64;
    if report.timed_out {
        tracing::warn!(
            policies = report.policies_read,
            feedback = report.feedback_read,
            "rebuild timed out; applying what was read"
        );
    }

    let mut ids = Vec::new();
    let assumed: Vec<RestoreEvent> = policies
        .msgs
        .into_iter()
        .filter_map(|m| policy_event(m, &mut report))
        .collect();
    let reported: Vec<RestoreEvent> = feedback
        .msgs
        .into_iter()
        .filter_map(|m| feedback_event(m, &mut report, &mut ids))
        .collect();
    let events = in_causal_order(assumed, reported);
    for (id, at) in ids {
        seen.remember_at(&id, at);
        report.feedback_ids += 1;
    }
    let restore = {
        let state = std::sync::Arc::clone(state);
        tokio::task::spawn_blocking(move || state.restore(events))
    };
    match restore.await {
        Ok(r) => report.restored = r,
        Err(err) => tracing::warn!(%err, "rebuild did not finish"),
    }
    report
}

/// Merges the policies and the reports (each in store order) by store
/// time, except that a report never goes before the policy it reports on:
/// the two streams stamp their messages independently, so a report can be
/// stored a moment "before" its policy, and applied first it would find no
/// assumption to end.
fn in_causal_order(policies: Vec<RestoreEvent>, reports: Vec<RestoreEvent>) -> Vec<RestoreEvent> {
    fn key(e: &RestoreEvent) -> (&str, SystemTime) {
        match e {
            RestoreEvent::Assume { request_id, at, .. }
            | RestoreEvent::Feedback { request_id, at, .. } => (request_id, *at),
        }
    }
    let mut waiting: std::collections::HashSet<String> =
        policies.iter().map(|e| key(e).0.to_string()).collect();
    let mut out = Vec::with_capacity(policies.len() + reports.len());
    let mut p = policies.into_iter().peekable();
    for report in reports {
        let (id, at) = key(&report);
        // Policies stored no later than the report go first (a policy before
        // a report stored at the same instant), and so does the report's
        // own policy, wherever its stamp put it.
        while let Some(next) = p.next_if(|n| key(n).1 <= at || waiting.contains(id)) {
            waiting.remove(key(&next).0);
            out.push(next);
        }
        out.push(report);
    }
    out.extend(p);
    out
}

fn policy_event(msg: StoredMsg, report: &mut RebuildReport) -> Option<RestoreEvent> {
    let assumption = match Assumption::from_headers(msg.headers.as_ref()) {
        // A policy that assumed nothing (DELAY, REJECT, no node).
        None => return None,
        Some(Ok(a)) => a,
        Some(Err(err)) => {
            report.skipped += 1;
            tracing::warn!(subject = msg.subject, %err, "undecodable assumption header skipped");
            return None;
        }
    };
    let policy: SchedulingPolicy = match from_json(&msg.payload) {
        Ok(p) => p,
        Err(err) => {
            report.skipped += 1;
            tracing::warn!(subject = msg.subject, %err, "undecodable policy skipped");
            return None;
        }
    };
    if policy.pod_name.is_empty() || policy.pod_namespace.is_empty() {
        report.skipped += 1;
        return None;
    }
    Some(RestoreEvent::Assume {
        pod: (policy.pod_namespace, policy.pod_name),
        request_id: policy.request_id,
        demand: Box::new(assumption.demand()),
        pipeline: assumption.pipeline(),
        node: assumption.node,
        at: msg.at,
    })
}

fn feedback_event(
    msg: StoredMsg,
    report: &mut RebuildReport,
    ids: &mut Vec<(String, SystemTime)>,
) -> Option<RestoreEvent> {
    let result: SchedulingResult = match from_json(&msg.payload) {
        Ok(r) => r,
        Err(err) => {
            report.skipped += 1;
            tracing::warn!(subject = msg.subject, %err, "undecodable scheduling result skipped");
            return None;
        }
    };
    if result.request_id.trim().is_empty()
        || result.pod_name.is_empty()
        || result.pod_namespace.is_empty()
    {
        report.skipped += 1;
        return None;
    }
    ids.push((result.request_id.clone(), msg.at));
    Some(RestoreEvent::Feedback {
        pod: (result.pod_namespace, result.pod_name),
        request_id: result.request_id,
        success: result.success,
        node: result.scheduled_node.trim().to_string(),
        at: msg.at,
    })
}

/// Reads the messages stored under `filter` since `since`, keeping the
/// newest `max`, until the stream is read to its end as of the start or
/// `deadline`. Errors are retried (from the start) until the deadline.
async fn read_window(
    bus: &Bus,
    kind: StreamKind,
    filter: String,
    since: SystemTime,
    max: usize,
    deadline: tokio::time::Instant,
) -> Window {
    loop {
        match read_window_once(bus, kind, &filter, since, max, deadline).await {
            Ok(w) => return w,
            Err(err) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(filter, %err, "rebuild read failed, retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(err) => {
                tracing::warn!(filter, %err, "rebuild read failed; nothing read from this stream");
                return Window {
                    timed_out: true,
                    ..Window::default()
                };
            }
        }
    }
}

async fn read_window_once(
    bus: &Bus,
    kind: StreamKind,
    filter: &str,
    since: SystemTime,
    max: usize,
    deadline: tokio::time::Instant,
) -> Result<Window, String> {
    let stream = bus.get_stream(kind).await.map_err(|e| e.to_string())?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: filter.to_string(),
            deliver_policy: DeliverPolicy::ByStartTime {
                start_time: time::OffsetDateTime::from(since),
            },
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut window = Window::default();
    let total = consumer.cached_info().num_pending;
    tracing::info!(filter, messages = total, "rebuild reading");
    if total == 0 {
        return Ok(window);
    }
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    let mut read = 0u64;
    let mut last_log = tokio::time::Instant::now();
    loop {
        let next = tokio::time::timeout_at(deadline, messages.next()).await;
        let m = match next {
            Err(_) => {
                window.timed_out = true;
                return Ok(window);
            }
            Ok(None) => return Ok(window),
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(Some(Ok(m))) => m,
        };
        let info = m.info().map_err(|e| e.to_string())?;
        let pending = info.pending;
        let at = SystemTime::from(info.published);
        read += 1;
        if window.msgs.len() >= max {
            window.msgs.pop_front();
            window.dropped_oldest += 1;
        }
        window.msgs.push_back(StoredMsg {
            at,
            subject: m.subject.to_string(),
            headers: m.headers.clone(),
            payload: m.payload.clone(),
        });
        if last_log.elapsed() >= Duration::from_secs(1) {
            last_log = tokio::time::Instant::now();
            tracing::info!(filter, read, of = total, "rebuild progress");
        }
        if pending == 0 {
            tracing::info!(filter, read, "rebuild read done");
            return Ok(window);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_assumption_survives_its_header() {
        let demand = PodDemand::new(2500, 3 << 30)
            .with_gpu(2, 500)
            .with_gpu_models(["A100", "H100"]);
        let pipeline = Some((
            PipelineRef {
                namespace: "ml".into(),
                kind: "argo",
                name: "wf\r\nx".into(),
            },
            "train".into(),
        ));
        let a = Assumption::new("gpu-1", &demand, pipeline.clone());
        let headers = a.to_headers().expect("a header");
        let back = Assumption::from_headers(Some(&headers))
            .expect("present")
            .expect("decodes");
        assert_eq!(back, a);
        let d = back.demand();
        assert_eq!(
            (d.cpu_milli, d.memory_bytes, d.num_gpu, d.gpu_milli),
            (2500, 3 << 30, 2, 500)
        );
        assert_eq!(d.gpu_models, demand.gpu_models);
        assert_eq!(back.pipeline(), pipeline);
    }

    #[test]
    fn a_bad_header_is_an_error_not_a_guess() {
        let mut h = HeaderMap::new();
        h.insert(ASSUMED_HEADER, "{\"node\":1}");
        assert!(matches!(Assumption::from_headers(Some(&h)), Some(Err(_))));
        assert!(Assumption::from_headers(Some(&HeaderMap::new())).is_none());
        assert!(Assumption::from_headers(None).is_none());
        let unknown_kind = Assumption {
            pipeline: Some(PipelineStep {
                namespace: "ml".into(),
                kind: "airflow".into(),
                name: "x".into(),
                step: "s".into(),
            }),
            ..Assumption::new("n", &PodDemand::new(1, 1), None)
        };
        assert_eq!(unknown_kind.pipeline(), None);
    }

    #[test]
    fn a_report_stored_just_before_its_policy_is_applied_after_it() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let us = |n: u64| t + Duration::from_micros(n);
        let assume = |id: &str, at| RestoreEvent::Assume {
            pod: ("ml".into(), id.into()),
            request_id: id.into(),
            node: "n1".into(),
            demand: Box::default(),
            pipeline: None,
            at,
        };
        let report = |id: &str, at| RestoreEvent::Feedback {
            pod: ("ml".into(), id.into()),
            request_id: id.into(),
            success: false,
            node: String::new(),
            at,
        };
        let order = |events: Vec<RestoreEvent>| -> Vec<String> {
            events
                .iter()
                .map(|e| match e {
                    RestoreEvent::Assume { request_id, .. } => format!("p:{request_id}"),
                    RestoreEvent::Feedback { request_id, .. } => format!("f:{request_id}"),
                })
                .collect()
        };
        // "b"'s report got a stamp 1 µs before its policy's; "c" is later
        // than both and stays after them; ties put the policy first.
        let policies = vec![assume("a", us(0)), assume("b", us(11)), assume("c", us(30))];
        let reports = vec![report("a", us(0)), report("b", us(10)), report("x", us(20))];
        assert_eq!(
            order(in_causal_order(policies, reports)),
            ["p:a", "f:a", "p:b", "f:b", "f:x", "p:c"]
        );
    }

    #[test]
    fn windows_cover_ttl_penalty_decay_and_dedup() {
        let engine = EngineConfig::default();
        let service = ServiceArgs::default();
        let w = Windows::of(&engine, &service);
        assert_eq!(w.policies, engine.assume_ttl * 2);
        // 5 min half-life: a full penalty lasts about 33 min.
        assert!(w.feedback >= Duration::from_secs(33 * 60));
        assert!(w.feedback >= service.feedback_dedup_ttl);
        let long_ttl = EngineConfig {
            assume_ttl: Duration::from_secs(3600),
            ..EngineConfig::default()
        };
        assert_eq!(
            Windows::of(&long_ttl, &service).feedback,
            Duration::from_secs(7200)
        );
        // Absurd settings give windows that reach back to the epoch at most,
        // not a panic.
        let absurd = EngineConfig {
            assume_ttl: Duration::MAX,
            failure_penalty_decay: Duration::MAX,
            ..EngineConfig::default()
        };
        let w = Windows::of(&absurd, &service);
        assert_eq!(w.policies, Duration::MAX);
        assert!(SystemTime::now().checked_sub(w.policies).is_none());
    }
}
