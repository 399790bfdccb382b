//! The live path with a node agent that reports requests but no pod list:
//! ingest (real gRPC) -> nats-server -> the scheduling engine (real gRPC),
//! each bind reported as a result and as the node's fresh insight. Every
//! placement is counted once: the cluster fills exactly to capacity and the
//! engine's books match the agent's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use apollo_common::shutdown::CancellationToken;
use apollo_common::testing::TestNats;
use apollo_common::{Bus, ClusterView};
use apollo_proto::insight_service_client::InsightServiceClient;
use apollo_proto::scheduling_policy_service_client::SchedulingPolicyServiceClient;
use apollo_proto::{
    ClusterInsight, GpuStatus, NodeResources, SchedulingDecision, SchedulingPolicyRequest,
    SchedulingResult, Timestamp,
};
use apollo_scheduling::config::Config;
use apollo_scheduling::engine::Engine;
use apollo_scheduling::state::ClusterState;
use tokio::net::TcpListener;
use tonic::transport::Channel;
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

const GIB: i64 = 1 << 30;
/// Only there so a broken build fails instead of hanging.
const BOUND: Duration = Duration::from_secs(20);

/// A node as its agent sees it: capacity 8 cores, 32 GiB, 2 GPUs.
#[derive(Debug, Clone, Default)]
struct AgentNode {
    cpu_milli: u64,
    memory_gib: i64,
    gpus: [u32; 2],
}

impl AgentNode {
    /// Binds a pod of 1 core, 4 GiB, 250 milli-GPU on the fullest GPU it fits.
    fn bind(&mut self) -> bool {
        if self.cpu_milli + 1000 > 8000 || self.memory_gib + 4 > 32 {
            return false;
        }
        let Some(g) = (0..2)
            .filter(|&g| self.gpus[g] + 250 <= 1000)
            .max_by_key(|&g| self.gpus[g])
        else {
            return false;
        };
        self.gpus[g] += 250;
        self.cpu_milli += 1000;
        self.memory_gib += 4;
        true
    }

    /// The insight: requests only, `running_workloads` left empty.
    fn insight(&self, name: &str) -> ClusterInsight {
        let d = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap();
        ClusterInsight {
            node_name: name.into(),
            node_resources: Some(NodeResources {
                cpu_allocatable_cores: 8.0,
                cpu_requested_cores: self.cpu_milli as f64 / 1000.0,
                memory_allocatable_bytes: 32 * GIB,
                memory_requested_bytes: self.memory_gib * GIB,
                gpu_allocatable: 2,
                ..Default::default()
            }),
            gpu_devices: (0..2)
                .map(|g| GpuStatus {
                    gpu_id: format!("{name}-gpu{g}"),
                    gpu_model: "T4".into(),
                    is_available: true,
                    allocated_milli: self.gpus[g] as i32,
                    ..Default::default()
                })
                .collect(),
            collected_at: Some(Timestamp {
                seconds: d.as_secs() as i64,
                nanos: d.subsec_nanos() as i32,
            }),
            ..Default::default()
        }
    }
}

fn request(pod: &str) -> SchedulingPolicyRequest {
    SchedulingPolicyRequest {
        pod_name: pod.into(),
        pod_namespace: "train".into(),
        pod_annotations: [
            ("apollo.ai-storage/cpu", "1"),
            ("apollo.ai-storage/memory", "4Gi"),
            ("apollo.ai-storage/gpu", "1"),
            ("apollo.ai-storage/gpu-milli", "250"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        ..Default::default()
    }
}

async fn connect(addr: std::net::SocketAddr) -> Channel {
    let deadline = Instant::now() + BOUND;
    loop {
        match Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
        {
            Ok(c) => return c,
            Err(err) if Instant::now() > deadline => panic!("{addr} never answered: {err}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Waits until gRPC health reports `service` SERVING (NATS reachable).
async fn serving(channel: Channel, service: &str) {
    let mut health = HealthClient::new(channel);
    let deadline = Instant::now() + BOUND;
    loop {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .map(|r| r.into_inner().status);
        if status.is_ok_and(|s| s == ServingStatus::Serving as i32) {
            return;
        }
        assert!(Instant::now() < deadline, "{service} never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `done` until it holds (the engine follows the bus asynchronously).
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !done() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_pod_lists_gets_each_placement_counted_once() {
    let nats = TestNats::start().await;
    let (n, s) = nats.bus_args();
    let shutdown = CancellationToken::new();

    // Ingest, as deployed.
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ingest_addr = grpc.local_addr().unwrap();
    let ingest_task = tokio::spawn(apollo_ingest::serve(
        apollo_ingest::Config::new(n.clone(), s.clone()),
        (grpc, http),
        shutdown.clone(),
    ));

    // The scheduling engine wired as `service::serve` wires it, keeping a
    // handle on its state to see when the bus has delivered.
    let mut config = Config::with_defaults(n.clone(), s.clone());
    config.observability.shutdown_grace = Duration::from_secs(3);
    let bus = Bus::connect("apollo-scheduling", &n, &s, CancellationToken::new())
        .await
        .unwrap();
    let view = ClusterView::new();
    let state = Arc::new(ClusterState::new(view.clone(), config.engine.clone()));
    state.spawn_view_follower(shutdown.clone());
    view.follow(bus.clone(), shutdown.clone());
    let engine = Arc::new(Engine::new(Arc::clone(&state)));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sched_addr = listener.local_addr().unwrap();
    let sched_task = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            apollo_scheduling::service::serve_engine(
                engine,
                Some(bus),
                &config,
                prometheus_client::registry::Registry::default(),
                listener,
                shutdown,
            )
            .await
        })
    };
    let ingest_channel = connect(ingest_addr).await;
    let sched_channel = connect(sched_addr).await;
    serving(ingest_channel.clone(), apollo_ingest::SERVICE_NAME).await;
    serving(
        sched_channel.clone(),
        apollo_scheduling::service::SERVICE_NAME,
    )
    .await;
    let mut ingest = InsightServiceClient::new(ingest_channel);
    let mut scheduling = SchedulingPolicyServiceClient::new(sched_channel);

    let mut agent: BTreeMap<String, AgentNode> = ["n1", "n2"]
        .into_iter()
        .map(|n| (n.to_string(), AgentNode::default()))
        .collect();
    for (name, node) in &agent {
        ingest
            .report_cluster_insight(node.insight(name))
            .await
            .unwrap();
    }
    until("engine sees both nodes", || state.stats().nodes == 2).await;

    // 16 workers fill the two nodes exactly (CPU, memory and GPU alike).
    for i in 0..16 {
        let pod = format!("worker-{i}");
        let policy = scheduling
            .get_scheduling_policy(request(&pod))
            .await
            .unwrap()
            .into_inner();
        assert!(
            matches!(
                policy.decision(),
                SchedulingDecision::Allow | SchedulingDecision::Prefer
            ) && !policy.node_preferences.is_empty(),
            "{pod} got no node: {:?} {}",
            policy.decision(),
            policy.reason
        );
        let top = policy.node_preferences[0].node_name.clone();
        let node = agent.get_mut(&top).expect("a known node");
        assert!(node.bind(), "{pod}: engine chose full node {top}");
        ingest
            .report_cluster_insight(node.insight(&top))
            .await
            .unwrap();
        scheduling
            .report_scheduling_result(SchedulingResult {
                request_id: policy.request_id,
                pod_name: pod,
                pod_namespace: "train".into(),
                scheduled_node: top,
                success: true,
                scheduling_duration_ms: 1,
                ..Default::default()
            })
            .await
            .unwrap();
    }

    // Every assumption ends through the insights, none by the 60 s TTL, and
    // the engine counts exactly what the agent reports.
    until("every assumption settled", || state.stats().assumed == 0).await;
    let stats = state.stats();
    assert_eq!(stats.ended.expired, 0);
    assert_eq!(stats.ended.no_longer_fits, 0);
    assert_eq!(
        stats.ended.covered + stats.ended.bound_then_seen,
        16,
        "{stats:?}"
    );
    {
        let snap = state.read();
        for (name, node) in &agent {
            let seen = snap.node(name).unwrap();
            assert_eq!(seen.cpu_milli_allocated, node.cpu_milli, "{name}");
            assert_eq!(
                seen.memory_bytes_allocated as i64,
                node.memory_gib * GIB,
                "{name}"
            );
            let gpus: Vec<u32> = seen.gpus.iter().map(|g| g.allocated_milli).collect();
            assert_eq!(gpus, node.gpus.to_vec(), "{name}");
        }
    }
    // Full now: one more worker gets no node to go to.
    let extra = scheduling
        .get_scheduling_policy(request("worker-16"))
        .await
        .unwrap()
        .into_inner();
    assert!(
        extra.node_preferences.is_empty() && extra.reason.contains("no node fits"),
        "{:?} {}",
        extra.decision(),
        extra.reason
    );

    shutdown.cancel();
    tokio::time::timeout(BOUND, sched_task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    tokio::time::timeout(BOUND, ingest_task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
