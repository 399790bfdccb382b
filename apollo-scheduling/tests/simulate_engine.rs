//! The simulator's `apollo` policy and the gRPC handler rank alike: same
//! state, same request, same node preferences and scores.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use apollo_common::shutdown::CancellationToken;
use apollo_proto::scheduling_policy_service_client::SchedulingPolicyServiceClient;
use apollo_scheduling::config::Config;
use apollo_scheduling::engine::Engine;
use apollo_scheduling::simulate::{self, ApolloSim, ShapeSource};
use clap::Parser;

const NODES: &str = "sn,cpu_milli,memory_mib,gpu,model\n\
n0,32000,65536,4,T4\nn1,32000,65536,8,V100M16\nn2,16000,32768,2,T4\n\
n3,64000,131072,8,V100M32\nn4,8000,16384,1,T4\nn5,32000,65536,4,V100M16\n";

const PODS: &str = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\n\
a,4000,8192,1,500,\nb,2000,4096,1,250,\nc,8000,16384,2,1000,\nd,1000,2048,0,0,\n\
e,6000,12288,1,1000,T4\nf,3000,4096,1,300,\ng,12000,32768,4,1000,\nh,2000,2048,1,700,V100M16|V100M32\n";

#[tokio::test]
async fn simulate_apollo_and_grpc_handler_rank_the_same() {
    let nodes = simulate::parse_nodes(NODES.as_bytes(), Path::new("nodes.csv")).unwrap();
    let pods = simulate::parse_pods(PODS.as_bytes(), Path::new("pods.csv")).unwrap();
    let mut sim = ApolloSim::new(&nodes, &pods, ShapeSource::Online);
    for k in 0..12u64 {
        sim.place(&pods[(k as usize * 3) % pods.len()], k);
    }
    // Learn the shapes now so the server's first sweep changes nothing.
    sim.state().sweep();
    assert!(sim.gpu_allocated_milli() > 0, "the warm-up placed nothing");

    let mut config = Config::try_parse_from(["test"]).unwrap();
    config.observability.metrics_addr = "127.0.0.1:0".parse().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let engine = Arc::new(Engine::new(Arc::clone(sim.state())).without_assume());
    let server = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            apollo_scheduling::service::serve_engine(
                engine,
                None,
                &config,
                prometheus_client::registry::Registry::default(),
                listener,
                shutdown,
            )
            .await
        })
    };
    let mut client = None;
    for _ in 0..100 {
        if let Ok(c) = SchedulingPolicyServiceClient::connect(format!("http://{addr}")).await {
            client = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut client = client.expect("server never accepted connections");

    let mut compared = 0;
    for (j, pod) in pods.iter().enumerate() {
        let k = 1000 + j as u64;
        let direct = sim.preview(pod, k);
        let wire = client
            .get_scheduling_policy(simulate::request_for(pod, k))
            .await
            .unwrap()
            .into_inner();
        let names = |p: &apollo_proto::SchedulingPolicy| {
            p.node_preferences
                .iter()
                .map(|n| (n.node_name.clone(), n.score))
                .collect::<Vec<_>>()
        };
        assert_eq!(direct.decision, wire.decision, "pod {}", pod.name);
        assert_eq!(names(&direct), names(&wire), "pod {}", pod.name);
        compared += usize::from(!direct.node_preferences.is_empty());
    }
    assert!(compared >= 4, "too few pods fit anywhere: {compared}");
    shutdown.cancel();
    let _ = server.await;
}
