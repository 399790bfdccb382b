//! The real service against nats-server and real gRPC on 127.0.0.1:0.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use apollo_common::shutdown::CancellationToken;
use apollo_common::testing::TestNats;
use apollo_common::Bus;
use apollo_proto::scheduling_policy_service_client::SchedulingPolicyServiceClient;
use apollo_proto::{
    ClusterInsight, CsdStatus, DataLocalityInfo, NodeResources, SchedulingDecision,
    SchedulingPolicy, SchedulingPolicyRequest, SchedulingResult, WorkloadSignature,
};
use apollo_scheduling::config::Config;
use futures::StreamExt;
use tonic::transport::Channel;

struct Harness {
    _nats: TestNats,
    bus: Bus,
    client: SchedulingPolicyServiceClient<Channel>,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<apollo_scheduling::error::Result<()>>,
}

async fn start() -> Harness {
    let nats = TestNats::start().await;
    let (n, s) = nats.bus_args();
    let mut config = Config::with_defaults(n.clone(), s.clone());
    config.observability.shutdown_grace = Duration::from_secs(3);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(apollo_scheduling::service::serve(
        config,
        listener,
        shutdown.clone(),
    ));
    let bus = Bus::connect("test-peer", &n, &s, CancellationToken::new())
        .await
        .unwrap();
    assert!(bus.wait_ready(Duration::from_secs(30)).await);
    let endpoint = format!("http://{addr}");
    let mut client = None;
    for _ in 0..100 {
        if let Ok(c) = SchedulingPolicyServiceClient::connect(endpoint.clone()).await {
            client = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Ready only once the service's own bus is up: a policy issued before
    // that cannot be published (the publisher fails fast, by design).
    let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())
        .unwrap()
        .connect()
        .await
        .expect("health endpoint");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let mut serving = false;
    for _ in 0..200 {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "apollo.SchedulingPolicyService".into(),
            })
            .await
            .map(|r| r.into_inner().status)
            .ok();
        if status == Some(tonic_health::pb::health_check_response::ServingStatus::Serving as i32) {
            serving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(serving, "the service never reported SERVING");
    Harness {
        _nats: nats,
        bus,
        client: client.expect("server never accepted connections"),
        shutdown,
        server,
    }
}

impl Harness {
    async fn stop(self) {
        self.shutdown.cancel();
        let r = tokio::time::timeout(Duration::from_secs(10), self.server)
            .await
            .expect("server did not stop")
            .unwrap();
        r.unwrap();
    }

    async fn ask(&mut self, name: &str, annotations: &[(&str, &str)]) -> SchedulingPolicy {
        self.client
            .clone()
            .get_scheduling_policy(req(name, annotations))
            .await
            .expect("always OK")
            .into_inner()
    }

    /// Asks until `done` holds (the view follows the bus asynchronously).
    async fn ask_until(
        &mut self,
        name: &str,
        annotations: &[(&str, &str)],
        done: impl Fn(&SchedulingPolicy) -> bool,
    ) -> SchedulingPolicy {
        let mut last = None;
        for _ in 0..200 {
            let p = self.ask(name, annotations).await;
            if done(&p) {
                return p;
            }
            last = Some(p);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("condition never met; last policy: {last:?}");
    }
}

fn req(name: &str, annotations: &[(&str, &str)]) -> SchedulingPolicyRequest {
    SchedulingPolicyRequest {
        pod_name: name.into(),
        pod_namespace: "ml".into(),
        pod_annotations: annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

fn insight(name: &str, cpu: f64, csd: bool) -> ClusterInsight {
    ClusterInsight {
        node_name: name.into(),
        node_resources: Some(NodeResources {
            cpu_allocatable_cores: cpu,
            cpu_used_cores: 1.0,
            memory_allocatable_bytes: 128 << 30,
            memory_used_bytes: 8 << 30,
            ..Default::default()
        }),
        csd_devices: if csd {
            vec![CsdStatus {
                device_id: "csd0".into(),
                is_available: true,
                ..Default::default()
            }]
        } else {
            Vec::new()
        },
        ..Default::default()
    }
}

#[tokio::test]
async fn empty_view_allows_and_policies_are_published() {
    let mut h = start().await;
    let mut sub = apollo_common::testing::subscribe_ready(
        h.bus.client(),
        h.bus.subjects().all("policy.scheduling"),
    )
    .await;
    let p = h.ask("first", &[]).await;
    assert_eq!(p.decision(), SchedulingDecision::Allow);
    assert!(p.reason.contains("no cluster data"), "{}", p.reason);
    assert_eq!(
        uuid::Uuid::parse_str(&p.request_id)
            .unwrap()
            .get_version_num(),
        4
    );
    let p2 = h.ask("first", &[]).await;
    assert_ne!(p.request_id, p2.request_id);

    let msg = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("policy published")
        .unwrap();
    assert_eq!(
        msg.subject.as_str(),
        h.bus.subjects().scheduling_policy("ml", "first").unwrap()
    );
    let published: SchedulingPolicy = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(published.request_id, p.request_id);
    h.stop().await;
}

#[tokio::test]
async fn insights_signatures_and_feedback_shape_the_answers() {
    let mut h = start().await;
    let subjects = h.bus.subjects().clone();
    for (n, csd) in [("n1", false), ("n2", true), ("n3", false), ("n4", true)] {
        h.bus
            .publish(subjects.cluster(n).unwrap(), &insight(n, 16.0, csd))
            .await
            .unwrap();
    }
    // CSD pod: REQUIRE with only the CSD nodes.
    let csd = [("apollo.ai-storage/requires-csd", "true")];
    let p = h
        .ask_until("filter", &csd, |p| p.node_preferences.len() == 2)
        .await;
    assert_eq!(p.decision(), SchedulingDecision::Require, "{}", p.reason);
    let mut got: Vec<_> = p
        .node_preferences
        .iter()
        .map(|n| n.node_name.clone())
        .collect();
    got.sort();
    assert_eq!(got, vec!["n2", "n4"]);
    // Insights reached the answers through the view follower and the change
    // applier, each on its own thread under SCHED_IDLE (5).
    for thread in ["view-follower", "view-apply"] {
        let policies = apollo_common::testing::thread_policies(thread);
        assert!(
            !policies.is_empty() && policies.iter().all(|p| *p == 5),
            "{thread} threads and their policies: {policies:?}"
        );
    }

    // A signature with data locality (no annotations at all): n3 preferred.
    let sig = WorkloadSignature {
        pod_name: "loader".into(),
        pod_namespace: "ml".into(),
        current_stage: apollo_proto::PipelineStage::DataLoading as i32,
        data_locality: Some(DataLocalityInfo {
            cache_nodes: vec!["n3".into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    h.bus
        .publish(subjects.workload("ml", "loader").unwrap(), &sig)
        .await
        .unwrap();
    let p = h
        .ask_until("loader", &[], |p| {
            p.node_preferences
                .first()
                .is_some_and(|n| n.node_name == "n3")
        })
        .await;
    assert_eq!(p.decision(), SchedulingDecision::Prefer, "{}", p.reason);
    assert!(p.reason.contains("signature"), "{}", p.reason);
    let first_score = p.node_preferences[0].score;

    // Feedback: a failed bind on n3 demotes it; a repeated report is a duplicate.
    let mut feedback_sub = apollo_common::testing::subscribe_ready(
        h.bus.client(),
        subjects.all("feedback.scheduling"),
    )
    .await;
    let report = SchedulingResult {
        request_id: p.request_id.clone(),
        pod_name: "loader".into(),
        pod_namespace: "ml".into(),
        scheduled_node: "n3".into(),
        success: false,
        failure_reason: "volume node affinity conflict".into(),
        scheduling_duration_ms: 12,
    };
    let r1 = h
        .client
        .report_scheduling_result(report.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(r1.success);
    assert_ne!(r1.message, "duplicate");
    let r2 = h
        .client
        .report_scheduling_result(report.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(r2.success);
    assert_eq!(r2.message, "duplicate");
    let msg = tokio::time::timeout(Duration::from_secs(10), feedback_sub.next())
        .await
        .expect("feedback published")
        .unwrap();
    assert_eq!(
        msg.subject.as_str(),
        subjects.scheduling_feedback("ml", "loader").unwrap()
    );
    let p = h.ask("loader", &[]).await;
    let n3 = p
        .node_preferences
        .iter()
        .find(|n| n.node_name == "n3")
        .expect("n3 still listed");
    assert!(n3.score < first_score, "{} -> {}", first_score, n3.score);

    // Assume cache: a burst of 12-CPU pods spreads over the 16-CPU nodes.
    let mut tops = Vec::new();
    for i in 0..4 {
        let p = h
            .ask(&format!("burst-{i}"), &[("apollo.ai-storage/cpu", "12")])
            .await;
        tops.push(p.node_preferences[0].node_name.clone());
    }
    tops.sort();
    tops.dedup();
    assert_eq!(tops.len(), 4, "burst piled up: {tops:?}");
    h.stop().await;
}

#[tokio::test]
async fn bad_input_gets_clear_errors_or_safe_allow() {
    let mut h = start().await;
    let err = h
        .client
        .get_scheduling_policy(SchedulingPolicyRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("pod_name"), "{}", err.message());
    let err = h
        .client
        .report_scheduling_result(SchedulingResult::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // 10k labels and garbage annotations in an unknown namespace.
    let labels: BTreeMap<String, String> = (0..10_000)
        .map(|i| (format!("example.com/label-{i}"), "x".repeat(20)))
        .collect();
    let mut r = req(
        "weird",
        &[
            ("apollo.ai-storage/cpu", "\u{1F600}"),
            ("apollo.ai-storage/gpu", "-1"),
            ("apollo.ai-storage/storage-size", "9999999999999999999999Ei"),
            ("apollo.ai-storage/data-locations", ",,,"),
            ("workflows.argoproj.io/template", "{\"name\": 5"),
        ],
    );
    r.pod_namespace = "no-such-namespace".into();
    r.pod_labels = labels;
    let p = h
        .client
        .get_scheduling_policy(r)
        .await
        .expect("OK")
        .into_inner();
    assert_eq!(p.decision(), SchedulingDecision::Allow);
    assert!(
        p.reason.contains("ignored apollo.ai-storage/cpu"),
        "{}",
        p.reason
    );
    assert!(!p.request_id.is_empty());
    // A report for a request we never issued is accepted (late report).
    let r = h
        .client
        .report_scheduling_result(SchedulingResult {
            request_id: "never-issued".into(),
            pod_name: "ghost".into(),
            pod_namespace: "ml".into(),
            success: true,
            scheduled_node: "n9".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.success);
    h.stop().await;
}
