//! Hostile replies at the REST boundary: a local server stands in for the
//! AI-Storage Orchestrator and answers each row's migration request and
//! status poll with what the row says. Each row must fail the execution
//! with a precise reason, be counted once as a failed execution, and cause
//! no request beyond those the row allows (no retry of a 4xx, no poll
//! after an unusable acceptance, no request outside the migration API).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use apollo_orchestration::executor::{self, ExecutorConfig};
use apollo_orchestration::metrics::Metrics;
use apollo_proto::orchestration_policy::Target;
use apollo_proto::{
    ExecutionConstraints, MigrationTarget, OrchestrationAction, OrchestrationPolicy,
};
use axum::extract::State;
use axum::http::{StatusCode, Uri};

/// An HTTP status code and body.
type Reply = (u16, String);

/// What the stand-in answers, and every request it received.
#[derive(Clone, Default)]
struct Stand {
    accept: Arc<Mutex<Reply>>,
    status: Arc<Mutex<Reply>>,
    requests: Arc<Mutex<Vec<String>>>,
}

async fn any(State(s): State<Stand>, method: axum::http::Method, uri: Uri) -> (StatusCode, String) {
    s.requests.lock().unwrap().push(format!("{method} {uri}"));
    let (code, body) = if method == axum::http::Method::POST && uri.path() == "/api/v1/migrations" {
        s.accept.lock().unwrap().clone()
    } else if method == axum::http::Method::GET && uri.path().starts_with("/api/v1/migrations/") {
        s.status.lock().unwrap().clone()
    } else {
        (404, "no such endpoint".into())
    };
    (StatusCode::from_u16(code).unwrap(), body)
}

fn migrate(request_id: &str) -> OrchestrationPolicy {
    OrchestrationPolicy {
        request_id: request_id.into(),
        action: OrchestrationAction::Migrate as i32,
        target: Some(Target::Migration(MigrationTarget {
            pod_name: "prep".into(),
            pod_namespace: "ml".into(),
            source_node: "node-a".into(),
            target_node: "node-b".into(),
            preserve_pv: true,
            timeout_seconds: 0,
        })),
        constraints: Some(ExecutionConstraints {
            max_retries: 2,
            timeout_seconds: 5,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn hostile_orchestrator_replies_fail_precisely_and_go_no_further() {
    let stand = Stand::default();
    let app = axum::Router::new().fallback(any).with_state(stand.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });

    let metrics = Metrics::default();
    let (tx, mut results) = tokio::sync::mpsc::channel(8);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let handle = executor::spawn(
        ExecutorConfig {
            base_url: format!("http://{addr}"),
            request_timeout: Duration::from_secs(10),
            poll_interval: Duration::from_millis(10),
            backoff: Duration::from_millis(10),
            queue: 8,
            target_cpu_percent: 70,
        },
        metrics.clone(),
        tx,
        shutdown.clone(),
    );
    let accepted = (201, r#"{"id":"m-1","status":"pending"}"#.to_string());
    let huge = format!("{{\"id\":\"{}\"}}", "a".repeat(1 << 20));
    /// (what, acceptance reply, status reply, reason fragment, requests made)
    type Row<'a> = (&'a str, Reply, Reply, &'a str, usize);
    let rows: Vec<Row<'_>> = vec![
        (
            "acceptance that is not JSON",
            (201, "accepted!".into()),
            accepted.clone(),
            "migration accepted without an id",
            1,
        ),
        (
            "acceptance with an empty id",
            (201, r#"{"id":""}"#.into()),
            accepted.clone(),
            "migration accepted without an id",
            1,
        ),
        (
            "acceptance with an object id",
            (201, r#"{"id":{"x":1}}"#.into()),
            accepted.clone(),
            "migration accepted without an id",
            1,
        ),
        (
            "id that walks out of the API",
            (201, r#"{"id":"../../admin"}"#.into()),
            accepted.clone(),
            "unusable id \"../../admin\"",
            1,
        ),
        (
            "id with a query",
            (201, r#"{"id":"m-1?delete=all"}"#.into()),
            accepted.clone(),
            "unusable id",
            1,
        ),
        (
            "id of 1 MiB",
            (201, huge),
            accepted.clone(),
            "unusable id",
            1,
        ),
        (
            "request refused with 422",
            (422, r#"{"error":"bad target"}"#.into()),
            accepted.clone(),
            "rejected with 422: {\"error\":\"bad target\"}",
            1,
        ),
        (
            "status not JSON",
            accepted.clone(),
            (200, "<html>".into()),
            "migration m-1: unknown status \"\"",
            2,
        ),
        (
            "status of the wrong type",
            accepted.clone(),
            (200, r#"{"status":7}"#.into()),
            "unknown status \"\"",
            2,
        ),
        (
            "status unknown",
            accepted.clone(),
            (200, r#"{"status":"exploded"}"#.into()),
            "unknown status \"exploded\"",
            2,
        ),
        (
            "status failed",
            accepted.clone(),
            (200, r#"{"status":"failed","error":"disk full"}"#.into()),
            "migration m-1 failed: disk full",
            2,
        ),
        (
            "status poll refused with 404",
            accepted.clone(),
            (404, "gone".into()),
            "rejected with 404: gone",
            2,
        ),
    ];
    for (i, (what, accept, status, reason, requests)) in rows.into_iter().enumerate() {
        *stand.accept.lock().unwrap() = accept;
        *stand.status.lock().unwrap() = status;
        stand.requests.lock().unwrap().clear();
        let failures = metrics.execution_count("failure");
        let request_id = format!("r-{i}");
        handle.submit(migrate(&request_id));
        let result = tokio::time::timeout(Duration::from_secs(10), results.recv())
            .await
            .unwrap_or_else(|_| panic!("{what}: no result within 10 s"))
            .unwrap();
        assert_eq!(result.request_id, request_id, "{what}");
        assert!(!result.success, "{what}: reported success");
        assert!(
            result.failure_reason.contains(reason),
            "{what}: {:?} does not contain {reason:?}",
            result.failure_reason
        );
        assert_eq!(
            metrics.execution_count("failure"),
            failures + 1,
            "{what}: not counted once"
        );
        assert_eq!(metrics.execution_count("success"), 0, "{what}");
        let seen = stand.requests.lock().unwrap().clone();
        assert_eq!(seen.len(), requests, "{what}: requests {seen:?}");
        assert!(
            seen.iter().all(|r| r.starts_with("POST /api/v1/migrations")
                || r.starts_with("GET /api/v1/migrations/m-1")),
            "{what}: left the migration API: {seen:?}"
        );
    }
    shutdown.cancel();
}
