//! The production path against the simulator, over a real nats-server: node
//! insights published in a shuffled order (some nodes first with an outdated
//! state, replaced later) reach `ClusterState` through the insight stream,
//! the `ClusterView` follower and the state's view follower, as in the
//! service. The simulator builds its state from the node list in list order.
//! Pod after pod (a third of the GPU pods restricted to some GPU models), both
//! must give the same decision and the same preferences.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apollo_common::shutdown::CancellationToken;
use apollo_common::testing::TestNats;
use apollo_common::{Bus, ClusterView};
use apollo_scheduling::config::EngineConfig;
use apollo_scheduling::engine::Engine;
use apollo_scheduling::simulate::{
    assign_gpu_specs, insight_for, load_nodes, load_pods, request_for, ApolloSim, ShapeSource,
    SWEEP_EVERY,
};
use apollo_scheduling::state::ClusterState;
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// Only there so a broken build fails instead of hanging.
const BOUND: Duration = Duration::from_secs(30);

fn data(file: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../data/alibaba-gpu-2023")
        .join(file)
}

fn prefs(p: &apollo_proto::SchedulingPolicy) -> Vec<(String, i32)> {
    p.node_preferences
        .iter()
        .map(|n| (n.node_name.clone(), n.score))
        .collect()
}

#[tokio::test]
async fn insights_over_nats_in_any_order_give_the_simulators_preferences() {
    let nodes = load_nodes(&data("openb_node_list_gpu_node.csv")).unwrap();
    let nodes = &nodes[..300];
    let mut pods = load_pods(&data("openb_pod_list_default.csv")).unwrap();
    pods.truncate(600);
    assign_gpu_specs(&mut pods, nodes, 1.0 / 3.0, 1).unwrap();
    assert!(pods.iter().any(|p| !p.gpu_spec.is_empty()));

    // Production: the service's wiring, fed over NATS.
    let nats = TestNats::start().await;
    let (n, s) = nats.bus_args();
    let shutdown = CancellationToken::new();
    let service_bus = Bus::connect("apollo-scheduling", &n, &s, shutdown.clone())
        .await
        .unwrap();
    let agent = Bus::connect("node-agents", &n, &s, shutdown.clone())
        .await
        .unwrap();
    assert!(service_bus.wait_ready(BOUND).await && agent.wait_ready(BOUND).await);
    let view = ClusterView::new();
    // No assumption expires and no node goes stale however long a slow
    // machine takes over the comparison (the simulator binds instead).
    let cfg = EngineConfig {
        assume_ttl: Duration::from_secs(3600),
        stale_after: Duration::from_secs(3600),
        ..EngineConfig::default()
    };
    let live_state = Arc::new(ClusterState::new(view.clone(), cfg));
    live_state.spawn_view_follower(shutdown.clone());
    view.follow(service_bus.clone(), shutdown.clone());

    let subjects = agent.subjects().clone();
    let mut shuffled: Vec<_> = nodes.to_vec();
    shuffled.shuffle(&mut rand::rngs::StdRng::seed_from_u64(11));
    // An outdated report first for every third node: half of each GPU taken.
    for node in shuffled.iter().step_by(3).filter(|n| n.gpus > 0) {
        let mut old = insight_for(node);
        for g in &mut old.gpu_devices {
            g.allocated_milli = 500;
        }
        agent
            .publish(subjects.cluster(&node.name).unwrap(), &old)
            .await
            .unwrap();
    }
    for node in &shuffled {
        agent
            .publish(subjects.cluster(&node.name).unwrap(), &insight_for(node))
            .await
            .unwrap();
    }
    // Ready once every node is known with its latest report.
    let deadline = Instant::now() + BOUND;
    loop {
        let (known, allocated) = {
            let snap = live_state.read();
            (snap.len(), snap.gpu_allocated_milli())
        };
        if known == nodes.len() && allocated == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "state never caught up: {known} of {} nodes, {allocated} milli-GPU allocated",
            nodes.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let live = Engine::new(Arc::clone(&live_state));

    // Simulator: the node list in list order, each bind reported back.
    let mut sim = ApolloSim::new(nodes, &pods, ShapeSource::Online);

    let mut compared = 0;
    let mut restricted = 0;
    for (k, pod) in pods.iter().enumerate() {
        // The simulator sweeps every SWEEP_EVERY arrivals; the service's
        // sweeper runs on a timer. Sweep the live state at the same points.
        if (k as u64 + 1).is_multiple_of(SWEEP_EVERY) {
            live_state.sweep();
        }
        let b = live.decide(&request_for(pod, k as u64));
        let a = sim.place(pod, k as u64);
        assert_eq!(prefs(&a), prefs(&b), "pod {k} ({})", pod.name);
        assert_eq!(
            a.decision, b.decision,
            "pod {k} ({}): {}",
            pod.name, a.reason
        );
        compared += a.node_preferences.len();
        if !pod.gpu_spec.is_empty() && !a.node_preferences.is_empty() {
            restricted += 1;
        }
    }
    assert!(compared > 1000, "only {compared} preferences compared");
    assert!(restricted > 20, "only {restricted} restricted pods placed");
    assert_eq!(
        sim.gpu_allocated_milli(),
        live_state.read().gpu_allocated_milli(),
        "both placed the same GPU"
    );
    shutdown.cancel();
}
