//! The service end to end: nats-server, apollo-ingest and apollo-orchestration
//! on 127.0.0.1:0, insights reported through ingest's gRPC API, policies
//! received on SubscribePolicies streams.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apollo_common::shutdown::CancellationToken;
use apollo_common::testing::{wait_serving, TestNats};
use apollo_common::{bus::StreamKind, Bus};
use apollo_orchestration::config::ExecutorKind;
use apollo_proto::insight_service_client::InsightServiceClient;
use apollo_proto::orchestration_policy::Target;
use apollo_proto::orchestration_policy_service_client::OrchestrationPolicyServiceClient;
use apollo_proto::{
    ClusterInsight, ExecutionResult, NodeResources, OrchestrationAction, OrchestrationPolicy,
    OrchestrationPolicyRequest, PipelineStage, PolicySubscription, ResourceMetrics,
    WorkloadSignature, WorkloadSummary,
};
use tonic::transport::Channel;
use tonic::Streaming;

const GIB: i64 = 1 << 30;

struct Stack {
    nats: TestNats,
    bus: Bus,
    insights: InsightServiceClient<Channel>,
    policies: OrchestrationPolicyServiceClient<Channel>,
    orch_addr: std::net::SocketAddr,
    metrics_addr: std::net::SocketAddr,
    /// The orchestration engine's settings, its own shutdown and its task.
    orch_config: apollo_orchestration::Config,
    orch_shutdown: CancellationToken,
    orch: tokio::task::JoinHandle<Result<(), apollo_orchestration::Error>>,
    shutdown: CancellationToken,
}

/// Starts the orchestration engine on fresh ports.
async fn start_orchestration(
    config: apollo_orchestration::Config,
    shutdown: CancellationToken,
) -> (
    std::net::SocketAddr,
    std::net::SocketAddr,
    tokio::task::JoinHandle<Result<(), apollo_orchestration::Error>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let orch_addr = listener.local_addr().unwrap();
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = metrics.local_addr().unwrap();
    let task = tokio::spawn(apollo_orchestration::serve(
        config,
        (listener, metrics),
        shutdown,
    ));
    apollo_common::testing::wait_serving(&format!("http://{orch_addr}")).await;
    (orch_addr, metrics_addr, task)
}

impl Stack {
    /// Stops the orchestration engine (its in-memory state goes with it)
    /// and starts a new one on the same NATS.
    async fn restart_orchestration(&mut self) {
        self.orch_shutdown.cancel();
        (&mut self.orch)
            .await
            .expect("orchestration task")
            .expect("orchestration stopped cleanly");
        self.orch_shutdown = self.shutdown.child_token();
        let (orch_addr, metrics_addr, orch) =
            start_orchestration(self.orch_config.clone(), self.orch_shutdown.clone()).await;
        self.orch = orch;
        self.orch_addr = orch_addr;
        self.metrics_addr = metrics_addr;
        self.policies = OrchestrationPolicyServiceClient::new(connect(orch_addr).await);
    }
}

async fn connect(addr: std::net::SocketAddr) -> Channel {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap();
    for _ in 0..200 {
        if let Ok(c) = endpoint.connect().await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{addr} never accepted connections");
}

async fn start(tune: impl FnOnce(&mut apollo_orchestration::Config)) -> Stack {
    let nats = TestNats::start().await;
    let (n, s) = nats.bus_args();
    let shutdown = CancellationToken::new();

    let mut ingest = apollo_ingest::Config::new(n.clone(), s.clone());
    ingest.observability.shutdown_grace = Duration::from_millis(300);
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ingest_addr = grpc.local_addr().unwrap();
    tokio::spawn(apollo_ingest::serve(ingest, (grpc, http), shutdown.clone()));

    let mut config = apollo_orchestration::Config::with_defaults(n.clone(), s.clone());
    config.plan_min_gap = Duration::from_millis(50);
    config.observability.shutdown_grace = Duration::from_millis(300);
    tune(&mut config);
    apollo_common::testing::wait_serving(&format!("http://{ingest_addr}")).await;
    let orch_shutdown = shutdown.child_token();
    let (orch_addr, metrics_addr, orch) =
        start_orchestration(config.clone(), orch_shutdown.clone()).await;

    let bus = Bus::connect("test-peer", &n, &s, CancellationToken::new())
        .await
        .unwrap();
    assert!(bus.wait_ready(Duration::from_secs(30)).await);
    // Both services answer only once their own bus is ready.
    wait_serving(&format!("http://{ingest_addr}")).await;
    wait_serving(&format!("http://{orch_addr}")).await;
    Stack {
        insights: InsightServiceClient::new(connect(ingest_addr).await),
        policies: OrchestrationPolicyServiceClient::new(connect(orch_addr).await),
        orch_addr,
        metrics_addr,
        orch_config: config,
        orch_shutdown,
        orch,
        nats,
        bus,
        shutdown,
    }
}

/// [`start`] with the executor sending policies to the orchestrator at `addr`.
async fn start_executing(
    addr: std::net::SocketAddr,
    tune: impl FnOnce(&mut apollo_orchestration::Config),
) -> Stack {
    start(|c| {
        c.executor = ExecutorKind::Orchestrator;
        c.orchestrator_url = Some(format!("http://{addr}"));
        tune(c);
    })
    .await
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown.cancel();
        let _ = &self.nats;
    }
}

/// The value of one unlabelled (or fully labelled) series on `/metrics`.
async fn metric(addr: std::net::SocketAddr, series: &str) -> Option<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.ok()?;
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut body = String::new();
    conn.read_to_string(&mut body).await.ok()?;
    body.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Waits until `series` satisfies `ok`, then returns its value.
async fn wait_metric(
    addr: std::net::SocketAddr,
    series: &str,
    ok: impl Fn(f64) -> bool,
    within: Duration,
) -> f64 {
    let deadline = Instant::now() + within;
    loop {
        let v = metric(addr, series).await;
        if let Some(v) = v.filter(|v| ok(*v)) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{series} is {v:?} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// What the engine answers for ml/prep now.
async fn policy_for_prep(stack: &Stack) -> OrchestrationPolicy {
    stack
        .policies
        .clone()
        .get_orchestration_policy(OrchestrationPolicyRequest {
            pod_name: "prep".into(),
            pod_namespace: "ml".into(),
            requested_action: 0,
        })
        .await
        .unwrap()
        .into_inner()
}

/// Reads a stream to its end: how many policies came first, and the
/// status it ended with.
async fn end_status(
    s: &mut Streaming<OrchestrationPolicy>,
    within: Duration,
) -> (usize, tonic::Status) {
    let mut got = 0;
    let status = tokio::time::timeout(within, async {
        loop {
            match s.message().await {
                Ok(Some(_)) => got += 1,
                Ok(None) => panic!("stream ended without a status"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("the stream stayed open");
    (got, status)
}

/// A stand-in for the AI-Storage Orchestrator that takes migrations and
/// never answers (counting those of ml/prep) and answers autoscaling at once.
async fn stalling_orchestrator(prep_migrations: Arc<AtomicUsize>) -> std::net::SocketAddr {
    use axum::routing::post;
    let app = axum::Router::new()
        .route(
            "/api/v1/migrations",
            post(move |body: String| {
                if body.contains(r#""pod_name":"prep""#) {
                    prep_migrations.fetch_add(1, Ordering::SeqCst);
                }
                std::future::pending::<&'static str>()
            }),
        )
        .route("/api/v1/autoscaling", post(|| async { "{}" }));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    addr
}

fn bulk_policy(i: usize) -> OrchestrationPolicy {
    OrchestrationPolicy {
        request_id: format!("bulk-{i}"),
        action: OrchestrationAction::Migrate as i32,
        reason: "x".repeat(64 * 1024),
        target: Some(Target::Migration(apollo_proto::MigrationTarget {
            pod_name: format!("p{i}"),
            pod_namespace: "ml".into(),
            source_node: "a".into(),
            target_node: "b".into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn node(name: &str, cpu: f64, roles: &[&str], pods: Vec<WorkloadSummary>) -> ClusterInsight {
    ClusterInsight {
        node_name: name.into(),
        node_resources: Some(NodeResources {
            cpu_allocatable_cores: 16.0,
            memory_allocatable_bytes: 64 * GIB,
            cpu_used_cores: 16.0 * cpu,
            memory_used_bytes: 16 * GIB,
            ..Default::default()
        }),
        node_roles: roles.iter().map(|r| r.to_string()).collect(),
        running_workloads: pods,
        collected_at: Some(apollo_orchestration::forecast::to_timestamp(
            std::time::SystemTime::now(),
        )),
        ..Default::default()
    }
}

fn summary(ns: &str, name: &str, cores: f64, stage: PipelineStage) -> WorkloadSummary {
    WorkloadSummary {
        pod_name: name.into(),
        pod_namespace: ns.into(),
        current_stage: stage as i32,
        cpu_usage: cores,
        memory_usage: GIB as f64,
        ..Default::default()
    }
}

fn busy_signature(name: &str) -> WorkloadSignature {
    WorkloadSignature {
        pod_name: name.into(),
        pod_namespace: "web".into(),
        node_name: "w1".into(),
        current_stage: PipelineStage::Inference as i32,
        current_metrics: Some(ResourceMetrics {
            cpu_usage_percent: 100.0,
            cpu_request_cores: 0.5,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Reports the cluster through ingest: two busy web replicas on w1, an idle
/// control plane, and (last) the hot node.
async fn report_cluster(stack: &mut Stack) -> Instant {
    for pod in ["api-7d9f8b6c5d-x2k4a", "api-7d9f8b6c5d-x2k4b"] {
        stack
            .insights
            .report_workload_signature(busy_signature(pod))
            .await
            .unwrap();
    }
    let web = vec![
        summary("web", "api-7d9f8b6c5d-x2k4a", 0.5, PipelineStage::Inference),
        summary("web", "api-7d9f8b6c5d-x2k4b", 0.5, PipelineStage::Inference),
    ];
    stack
        .insights
        .report_cluster_insight(node("w1", 0.30, &[], web))
        .await
        .unwrap();
    stack
        .insights
        .report_cluster_insight(node("cp", 0.05, &["control-plane"], vec![]))
        .await
        .unwrap();
    let hot = vec![
        summary("ml", "ckpt", 4.0, PipelineStage::Checkpointing),
        summary("ml", "train", 6.0, PipelineStage::Training),
        summary("ml", "prep", 2.5, PipelineStage::Preprocessing),
    ];
    let sent = Instant::now();
    stack
        .insights
        .report_cluster_insight(node("hot", 0.95, &[], hot))
        .await
        .unwrap();
    sent
}

async fn subscribe(
    stack: &Stack,
    id: &str,
    actions: &[OrchestrationAction],
    namespaces: &[&str],
) -> Streaming<OrchestrationPolicy> {
    stack
        .policies
        .clone()
        .subscribe_policies(PolicySubscription {
            subscriber_id: id.into(),
            action_filters: actions.iter().map(|a| *a as i32).collect(),
            namespace_filters: namespaces.iter().map(|n| n.to_string()).collect(),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn next(
    what: &str,
    s: &mut Streaming<OrchestrationPolicy>,
    within: Duration,
) -> OrchestrationPolicy {
    tokio::time::timeout(within, s.message())
        .await
        .unwrap_or_else(|_| panic!("{what}: no policy within {within:?}"))
        .expect("stream failed")
        .expect("stream ended")
}

fn migration(p: &OrchestrationPolicy) -> &apollo_proto::MigrationTarget {
    match &p.target {
        Some(Target::Migration(m)) => m,
        other => panic!("not a migration: {other:?}"),
    }
}

/// Waits until the subscriber's consumer has no unacknowledged policy.
async fn wait_acked(bus: &Bus, subscriber: &str) {
    let name = apollo_orchestration::service::consumer_name(subscriber).unwrap();
    let stream = bus.get_stream(StreamKind::Policy).await.unwrap();
    for _ in 0..200 {
        let mut c: async_nats::jetstream::consumer::PullConsumer =
            stream.get_consumer(&name).await.unwrap();
        let info = c.info().await.unwrap();
        if info.num_ack_pending == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("policies of {subscriber} never acknowledged");
}

/// Waits until nobody pulls from the subscriber's consumer any more.
async fn wait_detached(bus: &Bus, subscriber: &str) {
    let name = apollo_orchestration::service::consumer_name(subscriber).unwrap();
    let stream = bus.get_stream(StreamKind::Policy).await.unwrap();
    for _ in 0..400 {
        let mut c: async_nats::jetstream::consumer::PullConsumer =
            stream.get_consumer(&name).await.unwrap();
        if c.info().await.unwrap().num_waiting == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{subscriber} still pulling after its stream was dropped");
}

#[tokio::test]
async fn overload_through_ingest_reaches_filtered_subscribers_and_resumes() {
    let mut stack = start(|_| {}).await;
    let mut migrations = subscribe(&stack, "mover", &[OrchestrationAction::Migrate], &["ml"]).await;
    let mut scalers = subscribe(&stack, "scaler", &[OrchestrationAction::ScaleUp], &[]).await;

    let sent = report_cluster(&mut stack).await;
    // A bound for a loaded machine, not a latency figure (that is measured
    // by `apolloctl load`).
    let p = next("migration", &mut migrations, Duration::from_secs(10)).await;
    eprintln!("insight to streamed migration: {:?}", sent.elapsed());
    assert_eq!(p.action, OrchestrationAction::Migrate as i32, "{p:?}");
    let m = migration(&p);
    assert_eq!(
        (m.pod_namespace.as_str(), m.pod_name.as_str()),
        ("ml", "prep")
    );
    assert_eq!(m.source_node, "hot");
    assert_eq!(m.target_node, "w1", "never the control plane");
    assert!(p
        .contributing_factors
        .contains(&"threshold=85.0%".to_string()));
    assert!(p.deadline.is_some() && p.constraints.is_some());

    // The other subscriber filters on SCALE_UP and gets the web scale-up only.
    let s = next("scale-up", &mut scalers, Duration::from_secs(5)).await;
    assert_eq!(s.action, OrchestrationAction::ScaleUp as i32, "{s:?}");
    match &s.target {
        Some(Target::Autoscaling(a)) => {
            assert_eq!(
                (a.workload_namespace.as_str(), a.workload_name.as_str()),
                ("web", "api")
            );
            assert_eq!((a.current_replicas, a.desired_replicas), (2, 3));
        }
        other => panic!("{other:?}"),
    }

    // The latest policy for the pod is the one streamed.
    let got = policy_for_prep(&stack).await;
    assert_eq!(got.request_id, p.request_id);
    let missing = stack
        .policies
        .get_orchestration_policy(OrchestrationPolicyRequest {
            pod_name: "nope".into(),
            pod_namespace: "ml".into(),
            requested_action: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);

    // Results: idempotent per request_id, published as feedback.
    let result = ExecutionResult {
        request_id: p.request_id.clone(),
        action: p.action,
        success: true,
        execution_duration_ms: 1200,
        ..Default::default()
    };
    let first = stack
        .policies
        .report_execution_result(result.clone())
        .await
        .unwrap()
        .into_inner();
    let again = stack
        .policies
        .report_execution_result(result)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, again);
    let feedback = stack.bus.get_stream(StreamKind::Feedback).await.unwrap();
    let stored = feedback
        .get_last_raw_message_by_subject(
            &stack
                .bus
                .subjects()
                .orchestration_feedback("migrate", "ml")
                .unwrap(),
        )
        .await
        .unwrap();
    let fb: ExecutionResult = serde_json::from_slice(&stored.payload).unwrap();
    assert_eq!(fb.request_id, p.request_id);
    for (bad, code) in [
        ("", tonic::Code::InvalidArgument),
        ("no-such-policy", tonic::Code::NotFound),
    ] {
        let e = stack
            .policies
            .report_execution_result(ExecutionResult {
                request_id: bad.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), code);
    }

    // Resume: the subscriber goes away, a policy is stored meanwhile, and
    // the same subscriber_id picks up exactly there.
    wait_acked(&stack.bus, "mover").await;
    drop(migrations);
    wait_detached(&stack.bus, "mover").await;
    let away = OrchestrationPolicy {
        request_id: "issued-while-away".into(),
        action: OrchestrationAction::Migrate as i32,
        target: Some(Target::Migration(apollo_proto::MigrationTarget {
            pod_name: "train".into(),
            pod_namespace: "ml".into(),
            source_node: "hot".into(),
            target_node: "w1".into(),
            ..Default::default()
        })),
        ..Default::default()
    };
    stack
        .bus
        .publish(
            stack
                .bus
                .subjects()
                .orchestration_policy("migrate", "ml")
                .unwrap(),
            &away,
        )
        .await
        .unwrap();
    let mut resumed = subscribe(&stack, "mover", &[OrchestrationAction::Migrate], &["ml"]).await;
    let r = next("resumed", &mut resumed, Duration::from_secs(5)).await;
    assert_eq!(r.request_id, "issued-while-away");
}

#[tokio::test]
async fn bad_subscriptions_are_rejected() {
    let stack = start(|_| {}).await;
    for (sub, what) in [
        (PolicySubscription::default(), "subscriber_id"),
        (
            PolicySubscription {
                subscriber_id: "x".into(),
                action_filters: vec![42],
                ..Default::default()
            },
            "action_filters",
        ),
    ] {
        let e = stack
            .policies
            .clone()
            .subscribe_policies(sub)
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains(what), "{}", e.message());
    }
}

/// A stand-in for the AI-Storage Orchestrator counting every request.
async fn orchestrator(hits: Arc<AtomicUsize>) -> std::net::SocketAddr {
    use axum::routing::{get, post};
    let h1 = hits.clone();
    let h2 = hits.clone();
    let app = axum::Router::new()
        .route(
            "/api/v1/migrations",
            post(move || {
                h1.fetch_add(1, Ordering::SeqCst);
                async { r#"{"id":"m-1","status":"pending"}"# }
            }),
        )
        .route(
            "/api/v1/migrations/{id}",
            get(move || {
                h2.fetch_add(1, Ordering::SeqCst);
                async { r#"{"id":"m-1","status":"completed"}"# }
            }),
        );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    addr
}

#[tokio::test]
async fn dry_run_streams_marked_policies_and_executes_nothing() {
    let hits = Arc::new(AtomicUsize::new(0));
    let addr = orchestrator(hits.clone()).await;
    let mut stack = start(|c| {
        c.rails.dry_run = true;
        c.executor = ExecutorKind::Orchestrator;
        c.orchestrator_url = Some(format!("http://{addr}"));
    })
    .await;
    let mut sub = subscribe(&stack, "watcher", &[OrchestrationAction::Migrate], &[]).await;
    report_cluster(&mut stack).await;
    let p = next("policy", &mut sub, Duration::from_secs(5)).await;
    assert!(apollo_orchestration::policy::is_dry_run(&p), "{p:?}");
    assert!(p.reason.starts_with("dry-run:"), "{}", p.reason);
    // The executor would have been handed the policy right after it was
    // stored; give it well over its request latency.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn executor_runs_approved_policies_and_reports_the_outcome() {
    let hits = Arc::new(AtomicUsize::new(0));
    let addr = orchestrator(hits.clone()).await;
    let mut stack = start_executing(addr, |c| {
        c.orchestrator_poll = Duration::from_millis(20);
    })
    .await;
    let mut sub = subscribe(&stack, "audit", &[OrchestrationAction::Migrate], &[]).await;
    report_cluster(&mut stack).await;
    let p = next("policy", &mut sub, Duration::from_secs(5)).await;
    // The executor's outcome arrives as feedback for this policy.
    let feedback = stack.bus.get_stream(StreamKind::Feedback).await.unwrap();
    let mut found: HashMap<String, ExecutionResult> = HashMap::new();
    for _ in 0..200 {
        if let Ok(m) = feedback
            .get_last_raw_message_by_subject(
                &stack
                    .bus
                    .subjects()
                    .orchestration_feedback("migrate", "ml")
                    .unwrap(),
            )
            .await
        {
            let r: ExecutionResult = serde_json::from_slice(&m.payload).unwrap();
            found.insert(r.request_id.clone(), r);
            if found.contains_key(&p.request_id) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let r = found
        .get(&p.request_id)
        .expect("no feedback for the policy");
    assert!(r.success, "{r:?}");
    assert!(
        hits.load(Ordering::SeqCst) >= 2,
        "POST and at least one status poll"
    );
}

#[tokio::test]
async fn a_slow_subscriber_is_cut_off_without_holding_back_the_others() {
    let stack = start(|c| {
        c.subscriber_buffer = 2;
        // Long enough that a loaded machine does not stall the reading
        // subscriber; the one that never reads is cut off all the same.
        c.subscriber_stall = Duration::from_secs(2);
    })
    .await;
    let mut slow = subscribe(&stack, "slow", &[], &[]).await;
    let mut fast = subscribe(&stack, "fast", &[], &[]).await;
    // Large policies, so the transport's own buffers fill up quickly
    // behind the subscriber that does not read.
    let n = 300;
    let subject = stack
        .bus
        .subjects()
        .orchestration_policy("migrate", "ml")
        .unwrap();
    let reader = tokio::spawn(async move {
        let mut got = 0;
        while got < n {
            next("fast", &mut fast, Duration::from_secs(10)).await;
            got += 1;
        }
        got
    });
    for i in 0..n {
        stack
            .bus
            .publish(subject.clone(), &bulk_policy(i))
            .await
            .unwrap();
    }
    assert_eq!(
        reader.await.unwrap(),
        n,
        "the reading subscriber got everything"
    );
    // Cut off once it has held up its policies for the stall time.
    wait_metric(
        stack.metrics_addr,
        "apollo_orchestration_slow_subscribers_total",
        |v| v == 1.0,
        Duration::from_secs(10),
    )
    .await;
    // The slow one now reads: what was buffered, then a clear status.
    let (slow_got, status) = end_status(&mut slow, Duration::from_secs(10)).await;
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(slow_got < n, "cut off before the end: {slow_got}");
    assert!(status
        .message()
        .contains("reconnect with the same subscriber_id"));
}

#[tokio::test]
async fn a_stuck_client_with_a_full_window_is_cut_off_and_holds_nothing() {
    let stack = start(|c| {
        c.subscriber_buffer = 2;
        // Long enough that a loaded machine does not stall the reading
        // subscriber; the one that never reads is cut off all the same.
        c.subscriber_stall = Duration::from_secs(2);
    })
    .await;
    // Its own connection with a 64 KiB stream window it never releases: it
    // reads nothing at the HTTP/2 level, so the server cannot send past
    // the window, whatever the subscriber's buffer.
    let stuck_channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", stack.orch_addr))
            .unwrap()
            .initial_stream_window_size(64 * 1024)
            .connect()
            .await
            .unwrap();
    let stuck = OrchestrationPolicyServiceClient::new(stuck_channel)
        .subscribe_policies(PolicySubscription {
            subscriber_id: "stuck".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut fast = subscribe(&stack, "fast", &[], &[]).await;
    let n = 100;
    let reader = tokio::spawn(async move {
        let mut got = 0;
        while got < n {
            next("fast", &mut fast, Duration::from_secs(10)).await;
            got += 1;
        }
        (got, fast)
    });
    let subject = stack
        .bus
        .subjects()
        .orchestration_policy("migrate", "ml")
        .unwrap();
    let t0 = Instant::now();
    for i in 0..n {
        stack
            .bus
            .publish(subject.clone(), &bulk_policy(i))
            .await
            .unwrap();
    }
    let (got, _fast) = reader.await.unwrap();
    let fast_ms = t0.elapsed().as_millis();
    assert_eq!(got, n, "the reading subscriber got everything");
    let m = stack.metrics_addr;
    wait_metric(
        m,
        "apollo_orchestration_slow_subscribers_total",
        |v| v == 1.0,
        Duration::from_secs(10),
    )
    .await;
    // Cut off: both streams are still open at the HTTP/2 level, and none of
    // the policies the stuck one was given is still held for it.
    assert_eq!(
        metric(m, "apollo_orchestration_subscribers").await,
        Some(2.0)
    );
    let queued_after_cut_off = metric(m, "apollo_orchestration_subscriber_queued").await;
    assert_eq!(
        queued_after_cut_off,
        Some(0.0),
        "the cut-off stream still holds policies"
    );
    // The stuck client finally goes away: its stream is closed and counted.
    drop(stuck);
    wait_metric(
        m,
        "apollo_orchestration_subscribers",
        |v| v == 1.0,
        Duration::from_secs(10),
    )
    .await;
    eprintln!(
        "{}",
        serde_json::json!({
            "fault": "stuck_subscriber",
            "policies": n,
            "policy_bytes": 64 * 1024,
            "reader_received": got,
            "reader_all_received_ms": fast_ms,
            "cut_off": metric(m, "apollo_orchestration_slow_subscribers_total").await,
            "queued_after_cut_off": queued_after_cut_off,
        })
    );
}

#[tokio::test]
async fn subscriptions_are_bounded_and_consumers_of_departed_subscribers_expire() {
    let stack = start(|c| {
        c.max_subscribers = 2;
        c.subscriber_expiry = Duration::from_secs(1);
    })
    .await;
    let stream = stack.bus.get_stream(StreamKind::Policy).await.unwrap();
    let consumer_exists = |id: &str| {
        let stream = stream.clone();
        let name = apollo_orchestration::service::consumer_name(id).unwrap();
        async move {
            stream
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>(&name)
                .await
                .is_ok()
        }
    };
    let mut a = subscribe(&stack, "a", &[], &[]).await;
    let b = subscribe(&stack, "b", &[], &[]).await;
    let refused = stack
        .policies
        .clone()
        .subscribe_policies(PolicySubscription {
            subscriber_id: "c".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("--max-subscribers"),
        "{}",
        refused.message()
    );
    assert!(
        !consumer_exists("c").await,
        "a refused subscriber left a consumer"
    );
    assert_eq!(
        metric(
            stack.metrics_addr,
            "apollo_orchestration_requests_rejected_total{rpc=\"subscribe\",reason=\"too_many_subscribers\"}"
        )
        .await,
        Some(1.0)
    );
    // At the bound, a subscriber reconnecting with its id replaces its stream.
    let _a2 = subscribe(&stack, "a", &[], &[]).await;
    let replaced = tokio::time::timeout(Duration::from_secs(5), a.message())
        .await
        .expect("the replaced stream did not end")
        .unwrap_err();
    assert_eq!(replaced.code(), tonic::Code::Aborted, "{replaced:?}");

    // b goes away: its place is free again, and its consumer expires.
    assert!(consumer_exists("b").await);
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(10);
    let _c = loop {
        match stack
            .policies
            .clone()
            .subscribe_policies(PolicySubscription {
                subscriber_id: "c".into(),
                ..Default::default()
            })
            .await
        {
            Ok(s) => break s.into_inner(),
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::ResourceExhausted);
                assert!(Instant::now() < deadline, "b's place never freed");
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    };
    let left = Instant::now();
    let deadline = left + Duration::from_secs(20);
    while consumer_exists("b").await {
        assert!(
            Instant::now() < deadline,
            "the departed subscriber's consumer never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        consumer_exists("a").await,
        "a live subscriber's consumer stays"
    );
    eprintln!(
        "{}",
        serde_json::json!({
            "fault": "subscriber_bound",
            "max_subscribers": 2,
            "refused": metric(
                stack.metrics_addr,
                "apollo_orchestration_requests_rejected_total{rpc=\"subscribe\",reason=\"too_many_subscribers\"}"
            )
            .await,
            "subscriber_expiry_ms": 1000,
            "consumer_gone_after_place_freed_ms": left.elapsed().as_millis(),
        })
    );
}

/// The latest execution result stored as feedback for `action` in `namespace`.
async fn feedback(stack: &Stack, action: &str, namespace: &str) -> Option<ExecutionResult> {
    let stream = stack.bus.get_stream(StreamKind::Feedback).await.ok()?;
    let subject = stack
        .bus
        .subjects()
        .orchestration_feedback(action, namespace)
        .unwrap();
    let m = stream
        .get_last_raw_message_by_subject(&subject)
        .await
        .ok()?;
    serde_json::from_slice(&m.payload).ok()
}

/// Waits for an execution result stored as feedback for `action` in `namespace`.
async fn wait_feedback(
    stack: &Stack,
    action: &str,
    namespace: &str,
    within: Duration,
) -> ExecutionResult {
    let deadline = Instant::now() + within;
    loop {
        if let Some(r) = feedback(stack, action, namespace).await {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no {action} result in {namespace} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn a_hanging_orchestrator_fails_its_migration_once_and_holds_back_nothing_else() {
    let migration_posts = Arc::new(AtomicUsize::new(0));
    let addr = stalling_orchestrator(migration_posts.clone()).await;
    let mut stack = start_executing(addr, |c| {
        // Longer than the streaming and the scale-up below take on a loaded
        // machine, so the migration is still hanging when they are checked.
        c.orchestrator_timeout = Duration::from_secs(10);
    })
    .await;
    let mut all = subscribe(&stack, "all", &[], &[]).await;
    let t0 = report_cluster(&mut stack).await;
    // Both policies reach the subscriber while the migration hangs.
    let mut seen = HashMap::new();
    while seen.len() < 2 {
        let p = next("policy", &mut all, Duration::from_secs(5)).await;
        seen.insert(p.action, p);
    }
    let migration = &seen[&(OrchestrationAction::Migrate as i32)];
    assert!(seen.contains_key(&(OrchestrationAction::ScaleUp as i32)));
    assert!(
        migration.constraints.as_ref().unwrap().max_retries > 0,
        "the policy allows retries"
    );
    // The scale-up executes and is reported while the migration still hangs.
    let streamed_ms = t0.elapsed().as_millis();
    let r = wait_feedback(&stack, "scale_up", "web", Duration::from_secs(5)).await;
    let scale_ms = t0.elapsed().as_millis();
    // (The planner may have issued a later scale-up meanwhile; any one
    // succeeding shows the executor was not held back.)
    assert_eq!(r.action, OrchestrationAction::ScaleUp as i32, "{r:?}");
    assert!(r.success, "{r:?}");
    assert!(
        feedback(&stack, "migrate", "ml").await.is_none(),
        "the migration was reported before its request timed out"
    );
    // Planning answers meanwhile.
    let got = policy_for_prep(&stack).await;
    assert_eq!(got.request_id, migration.request_id);
    // The migration times out and fails as unknown, sent once only.
    let r = wait_feedback(&stack, "migrate", "ml", Duration::from_secs(30)).await;
    let migration_ms = t0.elapsed().as_millis();
    assert_eq!(r.request_id, migration.request_id);
    assert!(!r.success);
    assert!(
        r.failure_reason.contains("outcome unknown") && r.failure_reason.contains("no answer"),
        "{}",
        r.failure_reason
    );
    assert_eq!(
        migration_posts.load(Ordering::SeqCst),
        1,
        "the migration of ml/prep was sent more than once"
    );
    eprintln!(
        "{}",
        serde_json::json!({
            "fault": "hanging_orchestrator",
            "orchestrator_timeout_ms": 10_000,
            "max_retries": migration.constraints.as_ref().unwrap().max_retries,
            "migration_posts": migration_posts.load(Ordering::SeqCst),
            "both_policies_streamed_ms": streamed_ms,
            "scale_up_reported_ms": scale_ms,
            "migration_reported_failed_ms": migration_ms,
        })
    );
}

/// Migrations of `namespace/pod` stored on the policy stream.
async fn migrations_of(stack: &Stack, namespace: &str, pod: &str) -> Vec<String> {
    let stream = stack.bus.get_stream(StreamKind::Policy).await.unwrap();
    let last = stream.cached_info().state.last_sequence;
    let mut ids = Vec::new();
    for seq in 1..=last {
        let Ok(m) = stream.get_raw_message(seq).await else {
            continue;
        };
        let Ok(p) = serde_json::from_slice::<OrchestrationPolicy>(&m.payload) else {
            continue;
        };
        if let Some(Target::Migration(t)) = &p.target {
            if t.pod_namespace == namespace && t.pod_name == pod {
                ids.push(p.request_id);
            }
        }
    }
    ids
}

#[tokio::test]
async fn a_restarted_engine_keeps_its_cooldowns_and_does_not_move_a_pod_again() {
    let mut stack = start(|c| {
        c.plan_interval = Duration::from_millis(200);
    })
    .await;
    let mut sub = subscribe(&stack, "mover", &[OrchestrationAction::Migrate], &["ml"]).await;
    report_cluster(&mut stack).await;
    let first = next("migration", &mut sub, Duration::from_secs(5)).await;
    assert_eq!(migration(&first).pod_name, "prep");
    let before = policy_for_prep(&stack).await;
    assert_eq!(before.request_id, first.request_id);

    // The engine goes away with everything it remembered; a new one starts
    // on the same streams and sees the same overload again.
    stack.restart_orchestration().await;
    report_cluster(&mut stack).await;
    let cycles = wait_metric(
        stack.metrics_addr,
        "apollo_orchestration_plan_cycles_total",
        |v| v >= 5.0,
        Duration::from_secs(20),
    )
    .await;
    // Its first answer for the pod is the one before the restart...
    let after = policy_for_prep(&stack).await;
    assert_eq!(after.request_id, before.request_id, "{after:?}");
    // ...and after several planning cycles on the same overload, the pod
    // was not moved again inside its cooldown.
    let ids = migrations_of(&stack, "ml", "prep").await;
    assert_eq!(
        ids,
        vec![first.request_id.clone()],
        "ml/prep migrated again after the restart ({cycles} cycles)"
    );
}

#[tokio::test]
async fn shutdown_ends_streams_with_a_status_and_records_unfinished_executions() {
    let posts = Arc::new(AtomicUsize::new(0));
    let addr = stalling_orchestrator(posts.clone()).await;
    let mut stack = start_executing(addr, |c| {
        c.orchestrator_timeout = Duration::from_secs(60);
        c.observability.shutdown_grace = Duration::from_secs(2);
    })
    .await;
    let mut streams = Vec::new();
    for id in ["s1", "s2", "s3"] {
        streams.push(subscribe(&stack, id, &[OrchestrationAction::Migrate], &[]).await);
    }
    report_cluster(&mut stack).await;
    let p = next("policy", &mut streams[0], Duration::from_secs(5)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while posts.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the migration never reached the orchestrator"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let t0 = Instant::now();
    stack.orch_shutdown.cancel();
    // Every open stream ends with a status saying why, not a reset.
    for (i, s) in streams.iter_mut().enumerate() {
        let (_, end) = end_status(s, Duration::from_secs(5)).await;
        assert_eq!(end.code(), tonic::Code::Unavailable, "stream {i}: {end:?}");
        assert!(end.message().contains("shutting down"), "{}", end.message());
    }
    let streams_ended_ms = t0.elapsed().as_millis();
    (&mut stack.orch)
        .await
        .unwrap()
        .expect("the engine stopped cleanly");
    let stopped_ms = t0.elapsed().as_millis();
    // The migration still under way is recorded as not done.
    let r = feedback(&stack, "migrate", "ml")
        .await
        .expect("no result for the unfinished migration");
    assert_eq!(r.request_id, p.request_id);
    assert!(!r.success);
    assert!(
        r.failure_reason.starts_with("not done"),
        "{}",
        r.failure_reason
    );
    eprintln!(
        "{}",
        serde_json::json!({
            "fault": "orchestration_shutdown",
            "streams": streams.len(),
            "streams_ended_unavailable_ms": streams_ended_ms,
            "grace_ms": 2000,
            "stopped_ms": stopped_ms,
            "unfinished_execution_result": r.failure_reason,
        })
    );
}
