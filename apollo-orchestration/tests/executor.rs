//! The REST executor against a local HTTP server implementing the
//! AI-Storage Orchestrator's endpoints: retries where sending twice is
//! harmless (503 and 429 always, timeouts and other 5xx only for idempotent
//! requests), none on 4xx, status polling, payload rules.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use apollo_orchestration::executor::{ExecutorConfig, OrchestratorClient};
use apollo_proto::orchestration_policy::Target;
use apollo_proto::{
    AutoscalingTarget, ExecutionConstraints, MigrationTarget, OrchestrationAction,
    OrchestrationPolicy, ProvisioningTarget, StorageClass,
};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde_json::Value;

#[derive(Default)]
struct Seen {
    posts: Vec<(String, Value)>,
    polls: usize,
}

#[derive(Clone)]
struct Orchestrator {
    seen: Arc<Mutex<Seen>>,
    /// Failures before the first accepted migration.
    failures: Arc<Mutex<u32>>,
    /// The status of those failures.
    failure: StatusCode,
    /// Take migrations and never answer.
    hang: bool,
}

async fn migrations(State(o): State<Orchestrator>, body: String) -> (StatusCode, String) {
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    o.seen.lock().unwrap().posts.push(("migrations".into(), v));
    if o.hang {
        std::future::pending::<()>().await;
    }
    let mut f = o.failures.lock().unwrap();
    if *f > 0 {
        *f -= 1;
        return (o.failure, "busy".into());
    }
    (
        StatusCode::CREATED,
        r#"{"id":"m-7","status":"pending"}"#.into(),
    )
}

async fn migration_status(
    State(o): State<Orchestrator>,
    Path(id): Path<String>,
) -> (StatusCode, String) {
    let polls = {
        let mut s = o.seen.lock().unwrap();
        s.polls += 1;
        s.polls
    };
    if id != "m-7" {
        return (
            StatusCode::NOT_FOUND,
            r#"{"error":"migration not found"}"#.into(),
        );
    }
    let status = if polls < 3 { "running" } else { "completed" };
    (
        StatusCode::OK,
        format!(r#"{{"id":"m-7","status":"{status}"}}"#),
    )
}

async fn autoscaling(State(o): State<Orchestrator>, body: String) -> (StatusCode, String) {
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    o.seen.lock().unwrap().posts.push(("autoscaling".into(), v));
    (
        StatusCode::BAD_REQUEST,
        r#"{"error":"max_replicas below min_replicas"}"#.into(),
    )
}

async fn provisioning(State(o): State<Orchestrator>, body: String) -> (StatusCode, String) {
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    o.seen
        .lock()
        .unwrap()
        .posts
        .push(("provisioning".into(), v));
    // Far beyond the client's timeout in the test that uses this route.
    tokio::time::sleep(Duration::from_secs(30)).await;
    (StatusCode::OK, "{}".into())
}

async fn serve(failures: u32) -> (String, Orchestrator) {
    serve_failing(failures, StatusCode::SERVICE_UNAVAILABLE).await
}

async fn serve_failing(failures: u32, failure: StatusCode) -> (String, Orchestrator) {
    serve_with(Orchestrator {
        seen: Arc::default(),
        failures: Arc::new(Mutex::new(failures)),
        failure,
        hang: false,
    })
    .await
}

async fn serve_with(o: Orchestrator) -> (String, Orchestrator) {
    let app = axum::Router::new()
        .route("/api/v1/migrations", post(migrations))
        .route("/api/v1/migrations/{id}", get(migration_status))
        .route("/api/v1/autoscaling", post(autoscaling))
        .route("/api/v1/provisioning", post(provisioning))
        .with_state(o.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    (format!("http://{addr}"), o)
}

/// A client whose requests are answered in time however loaded the machine:
/// only the slow-provisioning test waits for a timeout.
fn client(url: String) -> OrchestratorClient {
    client_timing_out_after(url, Duration::from_secs(10))
}

fn client_timing_out_after(url: String, request_timeout: Duration) -> OrchestratorClient {
    OrchestratorClient::new(ExecutorConfig {
        base_url: url,
        request_timeout,
        poll_interval: Duration::from_millis(10),
        backoff: Duration::from_millis(10),
        queue: 8,
        target_cpu_percent: 70,
    })
}

fn policy(action: OrchestrationAction, target: Target) -> OrchestrationPolicy {
    OrchestrationPolicy {
        request_id: "r-1".into(),
        action: action as i32,
        target: Some(target),
        constraints: Some(ExecutionConstraints {
            max_retries: 3,
            timeout_seconds: 30,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn migrate(from: &str, to: &str) -> OrchestrationPolicy {
    policy(
        OrchestrationAction::Migrate,
        Target::Migration(MigrationTarget {
            pod_name: "prep".into(),
            pod_namespace: "ml".into(),
            source_node: from.into(),
            target_node: to.into(),
            preserve_pv: true,
            timeout_seconds: 0,
        }),
    )
}

#[tokio::test]
async fn migration_retries_while_the_orchestrator_is_unavailable_then_polls_to_completion() {
    let (url, o) = serve(2).await;
    client(url).execute(&migrate("hot", "w1")).await.unwrap();
    let seen = o.seen.lock().unwrap();
    assert_eq!(seen.posts.len(), 3, "two 503s, then accepted");
    assert_eq!(seen.polls, 3, "running, running, completed");
    let body = &seen.posts[2].1;
    assert_eq!(body["pod_name"], "prep");
    assert_eq!(body["source_node"], "hot");
    assert_eq!(body["target_node"], "w1");
    assert_eq!(body["preserve_pv"], true);
    assert!(
        body["timeout"].as_i64().unwrap() > 0,
        "zero is rejected by the orchestrator"
    );
}

#[tokio::test]
async fn unavailability_beyond_the_retry_budget_fails() {
    let (url, o) = serve(10).await;
    let err = client(url)
        .execute(&migrate("hot", "w1"))
        .await
        .unwrap_err();
    assert!(err.contains("503"), "{err}");
    assert_eq!(
        o.seen.lock().unwrap().posts.len(),
        4,
        "first try plus 3 retries"
    );
}

#[tokio::test]
async fn a_migration_answered_with_500_is_not_sent_again() {
    let (url, o) = serve_failing(10, StatusCode::INTERNAL_SERVER_ERROR).await;
    let err = client(url)
        .execute(&migrate("hot", "w1"))
        .await
        .unwrap_err();
    assert!(
        err.contains("500") && err.contains("outcome unknown"),
        "{err}"
    );
    assert_eq!(o.seen.lock().unwrap().posts.len(), 1);
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let (url, o) = serve(0).await;
    let scale = policy(
        OrchestrationAction::ScaleUp,
        Target::Autoscaling(AutoscalingTarget {
            workload_name: "api".into(),
            workload_namespace: "web".into(),
            workload_kind: "Deployment".into(),
            current_replicas: 2,
            desired_replicas: 3,
            scaling_reason: String::new(),
        }),
    );
    let err = client(url).execute(&scale).await.unwrap_err();
    assert!(err.contains("400") && err.contains("max_replicas"), "{err}");
    let seen = o.seen.lock().unwrap();
    assert_eq!(seen.posts.len(), 1);
    let body = &seen.posts[0].1;
    assert_eq!(body["workload_type"], "Deployment");
    assert_eq!(body["min_replicas"], 3);
    assert_eq!(body["max_replicas"], 3);
    assert_eq!(body["target_cpu_percent"], 70);
}

#[tokio::test]
async fn unknown_migration_status_is_a_failure_without_retries() {
    let (url, o) = serve(0).await;
    // A migration the orchestrator does not know answers 404.
    let err = client(url)
        .poll_migration("m-unknown", &migrate("hot", "w1"))
        .await
        .unwrap_err();
    assert!(err.contains("404"), "{err}");
    assert_eq!(o.seen.lock().unwrap().polls, 1);
}

#[tokio::test]
async fn a_slow_provisioning_reply_times_out_and_is_not_sent_again() {
    let (url, o) = serve(0).await;
    let mut p = policy(
        OrchestrationAction::Provision,
        Target::Provisioning(ProvisioningTarget {
            pvc_name: "loader-fast".into(),
            namespace: "ml".into(),
            storage_class: StorageClass::Fast as i32,
            size_bytes: 100 << 30,
            ..Default::default()
        }),
    );
    p.constraints.as_mut().unwrap().max_retries = 1;
    let err = client_timing_out_after(url, Duration::from_millis(500))
        .execute(&p)
        .await
        .unwrap_err();
    assert!(err.contains("no answer within"), "{err}");
    assert!(err.contains("outcome unknown"), "{err}");
    let seen = o.seen.lock().unwrap();
    assert_eq!(seen.posts.len(), 1, "a second volume is worse than none");
    assert_eq!(seen.posts[0].1["storage_class"], "high-iops");
    assert_eq!(seen.posts[0].1["storage_size"], "100Gi");
}

#[tokio::test]
async fn payloads_the_orchestrator_would_reject_are_never_sent() {
    let (url, o) = serve(0).await;
    let c = client(url);
    assert!(c
        .execute(&migrate("n1", "n1"))
        .await
        .unwrap_err()
        .contains("both"));
    assert!(c.execute(&migrate("", "n1")).await.is_err());
    let zero = policy(
        OrchestrationAction::ScaleDown,
        Target::Autoscaling(AutoscalingTarget {
            workload_name: "api".into(),
            workload_namespace: "web".into(),
            workload_kind: "Deployment".into(),
            current_replicas: 2,
            desired_replicas: 0,
            scaling_reason: String::new(),
        }),
    );
    assert!(c.execute(&zero).await.is_err());
    assert!(o.seen.lock().unwrap().posts.is_empty());
}

#[tokio::test]
async fn a_hanging_orchestrator_fills_a_bounded_queue_and_the_rest_fail_at_once() {
    let (url, o) = serve_with(Orchestrator {
        seen: Arc::default(),
        failures: Arc::default(),
        failure: StatusCode::OK,
        hang: true,
    })
    .await;
    let metrics = apollo_orchestration::metrics::Metrics::default();
    let (results_tx, mut results) = tokio::sync::mpsc::channel(64);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let handle = apollo_orchestration::executor::spawn(
        ExecutorConfig {
            base_url: url,
            request_timeout: Duration::from_secs(30),
            poll_interval: Duration::from_millis(10),
            backoff: Duration::from_millis(10),
            queue: 2,
            target_cpu_percent: 70,
        },
        metrics.clone(),
        results_tx,
        shutdown.clone(),
    );
    // Submitting never waits, however stuck the orchestrator.
    for i in 0..20 {
        let mut p = migrate("hot", "w1");
        p.request_id = format!("r-{i}");
        handle.submit(p);
    }
    // What found no room failed at once, as results.
    let mut failed = Vec::new();
    while let Ok(Some(r)) = tokio::time::timeout(Duration::from_millis(500), results.recv()).await {
        assert!(!r.success);
        assert_eq!(r.failure_reason, "executor queue full");
        failed.push(r.request_id);
    }
    let running = o.seen.lock().unwrap().posts.len();
    assert!(running <= 4, "at most 4 executions at once, saw {running}");
    // At most 4 running, one waiting for a slot and 2 queued: at least 13
    // of the 20 refused.
    assert!(failed.len() >= 13, "{failed:?}");
    assert_eq!(metrics.execution_count("queue_full"), failed.len() as u64);
    shutdown.cancel();
}
