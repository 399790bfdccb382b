//! Executor for the AI-Storage Orchestrator's REST API
//! (`--executor orchestrator --orchestrator-url URL`).
//!
//! | action | request |
//! |---|---|
//! | MIGRATE, REBALANCE, OPTIMIZE | `POST /api/v1/migrations` `{pod_name, pod_namespace, source_node, target_node, preserve_pv, timeout}`, then `GET /api/v1/migrations/{id}` until `completed`, `failed` or `cancelled`, or the policy's timeout |
//! | SCALE_UP, SCALE_DOWN | `POST /api/v1/autoscaling` `{workload_name, workload_namespace, workload_type, min_replicas, max_replicas, target_cpu_percent}` with min = max = desired replicas |
//! | PROVISION | `POST /api/v1/provisioning` `{workload_name, workload_namespace, workload_type, storage_size, storage_class}` |
//!
//! Payloads obey the orchestrator's rules before anything is sent (non-zero
//! required integers, non-empty and distinct source/target, its storage class
//! names); a policy that cannot be expressed fails without a request.
//! Retries (exponential backoff, up to the policy's `max_retries`) only where
//! sending twice is harmless: a request the orchestrator did not take
//! (connection refused, 503, 429) is sent again, whatever it is; one whose
//! outcome is unknown (a timeout, another 5xx, a broken connection) is sent
//! again only if it is idempotent (status polls, autoscaling, which sets
//! absolute replica counts). A migration or provisioning request with an
//! unknown outcome fails as such rather than risk a second move or volume.
//! 4xx answers are never retried.
//! Every outcome becomes an `ExecutionResult` fed through the same path as
//! `ReportExecutionResult`. Dry-run policies never reach the executor.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use apollo_proto::{
    orchestration_policy::Target, ExecutionResult, OrchestrationAction, OrchestrationPolicy,
    StorageClass,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// Executor settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutorConfig {
    /// Base URL, e.g. `http://ai-storage-orchestrator:8080`.
    pub base_url: String,
    /// Deadline of one HTTP request.
    pub request_timeout: Duration,
    /// Interval between status polls of a migration.
    pub poll_interval: Duration,
    /// First retry delay (doubles per attempt).
    pub backoff: Duration,
    /// Policies queued for execution.
    pub queue: usize,
    /// `target_cpu_percent` sent with scaling requests.
    pub target_cpu_percent: u32,
}

/// Policies being executed, by request id.
type Running = Arc<Mutex<HashMap<String, OrchestrationPolicy>>>;

/// Hands policies to the executor task.
#[derive(Debug, Clone)]
pub struct ExecutorHandle {
    tx: mpsc::Sender<OrchestrationPolicy>,
    results: mpsc::Sender<ExecutionResult>,
    metrics: Metrics,
    running: Running,
    finished: Arc<tokio::sync::Notify>,
}

fn lock(running: &Running) -> MutexGuard<'_, HashMap<String, OrchestrationPolicy>> {
    running.lock().unwrap_or_else(|p| p.into_inner())
}

impl ExecutorHandle {
    /// Policies being executed now.
    pub fn running(&self) -> usize {
        lock(&self.running).len()
    }

    /// Waits until no execution is under way.
    pub async fn idle(&self) {
        loop {
            let finished = self.finished.notified();
            if self.running() == 0 {
                return;
            }
            finished.await;
        }
    }

    /// Gives up on the executions still under way (at shutdown): each
    /// becomes a failed result saying it was not done, and their own
    /// outcomes, should they still arrive, are discarded.
    pub fn abandon(&self) -> Vec<ExecutionResult> {
        let abandoned: Vec<_> = lock(&self.running).drain().map(|(_, p)| p).collect();
        abandoned
            .iter()
            .map(|p| {
                self.metrics.execution("abandoned");
                result(
                    p,
                    Err("not done: the engine shut down before the orchestrator finished; the outcome is unknown".into()),
                    0,
                )
            })
            .collect()
    }

    /// Queues a policy; a full queue fails it at once (reported as a result).
    pub fn submit(&self, p: OrchestrationPolicy) {
        if let Err(e) = self.tx.try_send(p) {
            let p = match e {
                mpsc::error::TrySendError::Full(p) | mpsc::error::TrySendError::Closed(p) => p,
            };
            self.metrics.execution("queue_full");
            tracing::warn!(request_id = %p.request_id, "executor queue full, policy failed");
            let _ = self
                .results
                .try_send(result(&p, Err("executor queue full".into()), 0));
        }
    }
}

/// Why an HTTP exchange failed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CallError {
    /// 4xx: the request is wrong; retrying cannot help.
    Rejected(u16, String),
    /// The orchestrator did not take the request (no connection, 503, 429):
    /// sending it again is safe.
    NotTaken(String),
    /// No usable answer (timeout, other 5xx, connection lost mid-way): the
    /// orchestrator may have acted on it.
    Unknown(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Rejected(code, body) => write!(f, "rejected with {code}: {body}"),
            Self::NotTaken(e) | Self::Unknown(e) => write!(f, "{e}"),
        }
    }
}

/// The REST client.
#[derive(Debug, Clone)]
pub struct OrchestratorClient {
    cfg: ExecutorConfig,
    http: Client<HttpConnector, Full<Bytes>>,
}

fn storage_class_name(c: StorageClass) -> &'static str {
    match c {
        StorageClass::UltraFast | StorageClass::Memory | StorageClass::Csd => "high-throughput",
        StorageClass::Fast => "high-iops",
        StorageClass::Standard => "standard",
        StorageClass::Unspecified => "balanced",
    }
}

fn factor<'a>(p: &'a OrchestrationPolicy, key: &str) -> Option<&'a str> {
    p.contributing_factors
        .iter()
        .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))
}

/// The request a policy becomes: (path, body), or why it cannot be sent.
pub fn request_for(
    p: &OrchestrationPolicy,
    target_cpu_percent: u32,
) -> Result<(&'static str, Value), String> {
    let action =
        OrchestrationAction::try_from(p.action).unwrap_or(OrchestrationAction::Unspecified);
    match (&p.target, action) {
        (
            Some(Target::Migration(m)),
            OrchestrationAction::Migrate
            | OrchestrationAction::Rebalance
            | OrchestrationAction::Optimize,
        ) => {
            if m.pod_name.is_empty() || m.pod_namespace.is_empty() {
                return Err("migration without pod name or namespace".into());
            }
            if m.source_node.is_empty() || m.target_node.is_empty() {
                return Err("migration without source or target node".into());
            }
            if m.source_node == m.target_node {
                return Err(format!("source and target are both {}", m.source_node));
            }
            let timeout = if m.timeout_seconds > 0 {
                m.timeout_seconds
            } else {
                600
            };
            Ok((
                "/api/v1/migrations",
                json!({
                    "pod_name": m.pod_name,
                    "pod_namespace": m.pod_namespace,
                    "source_node": m.source_node,
                    "target_node": m.target_node,
                    "preserve_pv": m.preserve_pv,
                    "timeout": timeout,
                }),
            ))
        }
        (
            Some(Target::Autoscaling(a)),
            OrchestrationAction::ScaleUp | OrchestrationAction::ScaleDown,
        ) => {
            let kind = match a.workload_kind.as_str() {
                k @ ("Deployment" | "StatefulSet" | "ReplicaSet") => k,
                other => return Err(format!("workload kind {other:?} cannot be scaled")),
            };
            if a.desired_replicas < 1 {
                return Err(format!("desired replicas {} below 1", a.desired_replicas));
            }
            if target_cpu_percent == 0 {
                return Err("target_cpu_percent must not be 0".into());
            }
            Ok((
                "/api/v1/autoscaling",
                json!({
                    "workload_name": a.workload_name,
                    "workload_namespace": a.workload_namespace,
                    "workload_type": kind,
                    "min_replicas": a.desired_replicas,
                    "max_replicas": a.desired_replicas,
                    "target_cpu_percent": target_cpu_percent,
                }),
            ))
        }
        (Some(Target::Provisioning(t)), OrchestrationAction::Provision) => {
            if t.size_bytes <= 0 {
                return Err(format!("storage size {} is not positive", t.size_bytes));
            }
            let gib = (t.size_bytes + (1 << 30) - 1) >> 30;
            let class =
                StorageClass::try_from(t.storage_class).unwrap_or(StorageClass::Unspecified);
            let workload = factor(p, "workload").unwrap_or(t.pvc_name.as_str());
            let workload_type = factor(p, "workload_type")
                .filter(|w| matches!(*w, "training" | "inference" | "data-pipeline"))
                .unwrap_or("training");
            Ok((
                "/api/v1/provisioning",
                json!({
                    "workload_name": workload,
                    "workload_namespace": t.namespace,
                    "workload_type": workload_type,
                    "storage_size": format!("{gib}Gi"),
                    "storage_class": storage_class_name(class),
                }),
            ))
        }
        _ => Err(format!(
            "{} policy without a matching target",
            action.as_str_name()
        )),
    }
}

fn result(p: &OrchestrationPolicy, outcome: Result<(), String>, ms: i64) -> ExecutionResult {
    ExecutionResult {
        request_id: p.request_id.clone(),
        action: p.action,
        success: outcome.is_ok(),
        failure_reason: outcome.err().unwrap_or_default(),
        execution_duration_ms: ms,
        metrics: Default::default(),
    }
}

impl OrchestratorClient {
    /// A client for `cfg.base_url`.
    pub fn new(cfg: ExecutorConfig) -> Self {
        let http = Client::builder(TokioExecutor::new()).build_http();
        Self { cfg, http }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, CallError> {
        let url = format!("{}{}", self.cfg.base_url.trim_end_matches('/'), path);
        let payload = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let req = hyper::Request::builder()
            .method(method)
            .uri(&url)
            .header("content-type", "application/json")
            .body(Full::new(payload))
            .map_err(|e| CallError::Rejected(0, format!("bad request for {url}: {e}")))?;
        let exchange = async {
            let resp = self.http.request(req).await.map_err(|e| {
                let what = format!("{method} {url}: {e}");
                if e.is_connect() {
                    CallError::NotTaken(what)
                } else {
                    CallError::Unknown(what)
                }
            })?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| CallError::Unknown(format!("{method} {url}: reading body: {e}")))?
                .to_bytes();
            let text = String::from_utf8_lossy(&bytes).into_owned();
            if status == hyper::StatusCode::SERVICE_UNAVAILABLE
                || status == hyper::StatusCode::TOO_MANY_REQUESTS
            {
                return Err(CallError::NotTaken(format!(
                    "{method} {url}: {status}: {text}"
                )));
            }
            if status.is_server_error() {
                return Err(CallError::Unknown(format!(
                    "{method} {url}: {status}: {text}"
                )));
            }
            if !status.is_success() {
                return Err(CallError::Rejected(status.as_u16(), text));
            }
            Ok(reply_json(&bytes))
        };
        tokio::time::timeout(self.cfg.request_timeout, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(CallError::Unknown(format!(
                    "{method} {url}: no answer within {:?}",
                    self.cfg.request_timeout
                )))
            })
    }

    async fn call_with_retries(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        retries: u32,
        idempotent: bool,
    ) -> Result<Value, CallError> {
        let mut delay = self.cfg.backoff;
        let mut attempt = 0;
        loop {
            let outcome = self.call(method, path, body).await;
            let again = match &outcome {
                Err(CallError::NotTaken(e)) => Some(e),
                Err(CallError::Unknown(e)) if idempotent => Some(e),
                _ => None,
            };
            match again {
                Some(e) if attempt < retries => {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "orchestrator call failed, retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
                _ => return outcome,
            }
        }
    }

    /// Executes one policy to a terminal state; returns the failure reason.
    pub async fn execute(&self, p: &OrchestrationPolicy) -> Result<(), String> {
        let (path, body) = request_for(p, self.cfg.target_cpu_percent)?;
        let constraints = p.constraints.clone().unwrap_or_default();
        let retries = constraints.max_retries.max(0) as u32;
        // Autoscaling sets absolute replica counts: sending it twice is
        // harmless. A second migration or volume is not.
        let idempotent = path == "/api/v1/autoscaling";
        let answer = self
            .call_with_retries("POST", path, Some(&body), retries, idempotent)
            .await
            .map_err(|e| match e {
                CallError::Unknown(e) if !idempotent => {
                    format!("outcome unknown, not sent again: {e}")
                }
                e => e.to_string(),
            })?;
        if path != "/api/v1/migrations" {
            return Ok(());
        }
        let id = migration_id(&answer)?;
        self.poll_migration(&id, p).await
    }

    /// Polls a migration until a terminal state or the policy's timeout.
    pub async fn poll_migration(&self, id: &str, p: &OrchestrationPolicy) -> Result<(), String> {
        let constraints = p.constraints.clone().unwrap_or_default();
        let retries = constraints.max_retries.max(0) as u32;
        let timeout = Duration::from_secs(constraints.timeout_seconds.max(1) as u64);
        let started = Instant::now();
        loop {
            let status = self
                .call_with_retries(
                    "GET",
                    &format!("/api/v1/migrations/{id}"),
                    None,
                    retries,
                    true,
                )
                .await
                .map_err(|e| e.to_string())?;
            if let Some(outcome) = migration_outcome(id, &status) {
                return outcome;
            }
            if started.elapsed() >= timeout {
                return Err(format!("migration {id} not finished within {timeout:?}"));
            }
            tokio::time::sleep(self.cfg.poll_interval).await;
        }
    }
}

/// A reply body as JSON; `null` when it is not JSON (some endpoints answer
/// with an empty or plain-text body, which only the status code qualifies).
pub fn reply_json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or(Value::Null)
}

/// The id of an accepted migration: `id` or `migration_id`, a non-empty
/// string or a number. It becomes a path segment of the status URL, so an
/// id that is not one safe segment (`[A-Za-z0-9._~-]`, at most 256 bytes,
/// not `.` or `..`) is refused rather than followed elsewhere.
pub fn migration_id(answer: &Value) -> Result<String, String> {
    let id = ["id", "migration_id"]
        .iter()
        .find_map(|k| match &answer[*k] {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
        .ok_or_else(|| format!("migration accepted without an id: {answer}"))?;
    let safe = id.len() <= 256
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'));
    if !safe {
        return Err(format!(
            "migration accepted with an unusable id {:?}",
            id.chars().take(64).collect::<String>()
        ));
    }
    Ok(id)
}

/// What a migration status reply says: `None` while it is pending or
/// running, else its terminal outcome (an unknown status is a failure).
pub fn migration_outcome(id: &str, status: &Value) -> Option<Result<(), String>> {
    match status["status"].as_str().unwrap_or("") {
        "completed" => Some(Ok(())),
        s @ ("failed" | "cancelled") => {
            let why = status["error"]
                .as_str()
                .or(status["message"].as_str())
                .unwrap_or("");
            Some(Err(format!("migration {id} {s}: {why}")))
        }
        "pending" | "running" => None,
        other => Some(Err(format!("migration {id}: unknown status {other:?}"))),
    }
}

/// Starts the executor: policies submitted through the handle are executed
/// (up to 4 at a time) and their results sent on `results`.
pub fn spawn(
    cfg: ExecutorConfig,
    metrics: Metrics,
    results: mpsc::Sender<ExecutionResult>,
    shutdown: tokio_util::sync::CancellationToken,
) -> ExecutorHandle {
    let (tx, mut rx) = mpsc::channel::<OrchestrationPolicy>(cfg.queue.max(1));
    let client = OrchestratorClient::new(cfg);
    let running: Running = Arc::default();
    let finished = Arc::new(tokio::sync::Notify::new());
    let handle = ExecutorHandle {
        tx,
        results: results.clone(),
        metrics: metrics.clone(),
        running: running.clone(),
        finished: finished.clone(),
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(4));
    tokio::spawn(async move {
        loop {
            let p = tokio::select! {
                _ = shutdown.cancelled() => return,
                p = rx.recv() => match p { Some(p) => p, None => return },
            };
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let client = client.clone();
            let results = results.clone();
            let metrics = metrics.clone();
            let (running, finished) = (running.clone(), finished.clone());
            lock(&running).insert(p.request_id.clone(), p.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let outcome = client.execute(&p).await;
                // Abandoned at shutdown: already reported as not done.
                let abandoned = lock(&running).remove(&p.request_id).is_none();
                finished.notify_waiters();
                if abandoned {
                    tracing::info!(request_id = %p.request_id, "execution finished after it was abandoned");
                    drop(permit);
                    return;
                }
                metrics.execution(if outcome.is_ok() {
                    "success"
                } else {
                    "failure"
                });
                if let Err(e) = &outcome {
                    tracing::warn!(request_id = %p.request_id, error = %e, "policy execution failed");
                }
                let r = result(&p, outcome, started.elapsed().as_millis() as i64);
                let _ = results.send(r).await;
                drop(permit);
            });
        }
    });
    handle
}
