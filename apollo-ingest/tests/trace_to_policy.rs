//! One trace from a caller's report to the policy that used it: a caller with
//! a known trace id reports a workload signature through ingest; the
//! scheduling engine consumes it in the same trace, and the decision for that
//! pod (in the trace of whoever asked for the policy) links to it and names
//! its trace id. Spans go to an in-process exporter.
//!
//! One test per binary: the tracing subscriber is process-wide.

use std::time::Duration;

use apollo_common::{
    shutdown::CancellationToken,
    telemetry::SIGNATURE_TRACE_ATTRIBUTE,
    testing::{CollectedSpan, SpanCollector, TestNats},
};
use apollo_proto::{
    insight_service_client::InsightServiceClient,
    scheduling_policy_service_client::SchedulingPolicyServiceClient, SchedulingPolicyRequest,
    WorkloadSignature,
};
use futures::StreamExt;
use tokio::net::TcpListener;
use tonic::Request;

/// The caller's trace: the one the report must stay in.
const REPORT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const REPORT_PARENT: &str = "00f067aa0ba902b7";
/// Whoever asks for the policy (the scheduler plugin) has its own trace.
const ASK_TRACE: &str = "a3ce929d0e0e47364bf92f3577b34da6";
const ASK_PARENT: &str = "0ba902b700f067aa";

fn traced<T>(msg: T, trace: &str, parent: &str) -> Request<T> {
    let mut request = Request::new(msg);
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace}-{parent}-01").parse().unwrap(),
    );
    request
}

fn signature() -> WorkloadSignature {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    WorkloadSignature {
        pod_name: "trainer".into(),
        pod_namespace: "ml".into(),
        node_name: "gpu-node-1".into(),
        workload_type: apollo_proto::WorkloadType::Image as i32,
        current_stage: apollo_proto::PipelineStage::Training as i32,
        io_pattern: apollo_proto::IoPattern::ReadHeavy as i32,
        confidence: 0.8,
        framework: "pytorch".into(),
        updated_at: Some(apollo_proto::Timestamp {
            seconds: now.as_secs() as i64,
            nanos: 0,
        }),
        ..Default::default()
    }
}

fn describe(spans: &[CollectedSpan]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} trace={} parent={}",
                s.name, s.trace_id, s.parent_span_id
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reported_signature_and_the_policy_that_used_it_share_its_trace() {
    let (spans, _guard) = SpanCollector::install("apollo-trace-test");
    let nats = TestNats::start().await;
    let shutdown = CancellationToken::new();
    let (n, s) = nats.bus_args();

    let ingest_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ingest_addr = ingest_listener.local_addr().unwrap();
    let ingest = tokio::spawn(apollo_ingest::serve(
        apollo_ingest::Config::new(n.clone(), s.clone()),
        (
            ingest_listener,
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
        ),
        shutdown.clone(),
    ));
    let mut sched_config = apollo_scheduling::config::Config::with_defaults(n.clone(), s);
    sched_config.observability.shutdown_grace = Duration::from_secs(3);
    let sched_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sched_addr = sched_listener.local_addr().unwrap();
    let scheduling = tokio::spawn(apollo_scheduling::service::serve(
        sched_config,
        sched_listener,
        shutdown.clone(),
    ));
    apollo_common::testing::wait_serving(&format!("http://{ingest_addr}")).await;
    apollo_common::testing::wait_serving(&format!("http://{sched_addr}")).await;

    // Watch the policies the engine publishes, to see which trace they carry.
    let nats_client = async_nats::connect(nats.url()).await.unwrap();
    let mut policies = nats_client
        .subscribe(format!("{}.policy.scheduling.>", n.subject_prefix))
        .await
        .unwrap();
    nats_client.flush().await.unwrap();

    let mut insight = InsightServiceClient::connect(format!("http://{ingest_addr}"))
        .await
        .unwrap();
    insight
        .report_workload_signature(traced(signature(), REPORT_TRACE, REPORT_PARENT))
        .await
        .expect("ingest stores the signature");

    // Ingest's server span continues the caller's trace...
    let rpc = spans
        .wait_for(Duration::from_secs(10), |s| {
            s.name.ends_with("InsightService/ReportWorkloadSignature")
        })
        .await
        .unwrap_or_else(|| panic!("no ingest RPC span:\n{}", describe(&spans.spans())));
    assert_eq!(rpc.trace_id, REPORT_TRACE, "{rpc:?}");
    assert_eq!(rpc.parent_span_id, REPORT_PARENT, "{rpc:?}");
    // ...and so does the scheduling engine's consumption of the message.
    let consumed = spans
        .wait_for(Duration::from_secs(10), |s| {
            s.name == "insight.workload process"
                && s.attributes
                    .get("messaging.destination.name")
                    .is_some_and(|d| d.ends_with(".ml.trainer"))
        })
        .await
        .unwrap_or_else(|| panic!("no consume span:\n{}", describe(&spans.spans())));
    assert_eq!(
        consumed.trace_id,
        REPORT_TRACE,
        "the engine consumed the signature outside the caller's trace:\n{}",
        describe(&spans.spans())
    );

    // The engine's view applied it inside that span, so the decision can
    // point at it.
    let mut policy_client = SchedulingPolicyServiceClient::connect(format!("http://{sched_addr}"))
        .await
        .unwrap();
    let policy = policy_client
        .get_scheduling_policy(traced(
            SchedulingPolicyRequest {
                pod_name: "trainer".into(),
                pod_namespace: "ml".into(),
                ..Default::default()
            },
            ASK_TRACE,
            ASK_PARENT,
        ))
        .await
        .expect("the engine answers")
        .into_inner();

    let decision = spans
        .wait_for(Duration::from_secs(10), |s| {
            s.trace_id == ASK_TRACE && !s.linked_trace_ids.is_empty()
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "no span of the policy request links to the signature's trace:\n{}",
                describe(&spans.spans())
            )
        });
    assert_eq!(decision.linked_trace_ids, vec![REPORT_TRACE.to_string()]);
    assert_eq!(
        decision
            .attributes
            .get(SIGNATURE_TRACE_ATTRIBUTE)
            .map(String::as_str),
        Some(REPORT_TRACE),
        "{decision:?}"
    );
    let served = spans
        .wait_for(Duration::from_secs(10), |s| {
            s.name
                .ends_with("SchedulingPolicyService/GetSchedulingPolicy")
        })
        .await
        .expect("scheduling RPC span");
    assert_eq!(served.trace_id, ASK_TRACE);
    assert_eq!(served.parent_span_id, ASK_PARENT);

    // The published policy continues the trace of the request that made it.
    let published = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let m = policies.next().await.expect("subscription open");
            let p: apollo_proto::SchedulingPolicy =
                apollo_common::bus::from_json(&m.payload).unwrap();
            if p.request_id == policy.request_id {
                return m;
            }
        }
    })
    .await
    .expect("the policy is published");
    let traceparent = published
        .headers
        .as_ref()
        .and_then(|h| h.get("traceparent"))
        .map(|v| v.as_str().to_string())
        .expect("policy message has a traceparent");
    assert_eq!(
        traceparent.split('-').nth(1),
        Some(ASK_TRACE),
        "{traceparent}"
    );

    shutdown.cancel();
    for task in [ingest] {
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("ingest stops")
            .unwrap()
            .unwrap();
    }
    tokio::time::timeout(Duration::from_secs(20), scheduling)
        .await
        .expect("scheduling stops")
        .unwrap()
        .unwrap();
}
