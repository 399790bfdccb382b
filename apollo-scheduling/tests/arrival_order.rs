//! The production path learns nodes in whatever order their insights arrive
//! over NATS (and rebuilds its state in the view's hash order); the simulator
//! syncs them in list order. For the same cluster both must give the same
//! preferences, pod after pod.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use apollo_common::ClusterView;
use apollo_scheduling::config::EngineConfig;
use apollo_scheduling::engine::Engine;
use apollo_scheduling::simulate::{insight_for, load_nodes, load_pods, request_for};
use apollo_scheduling::state::ClusterState;
use rand::seq::SliceRandom;
use rand::SeedableRng;

fn data(file: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../data/alibaba-gpu-2023")
        .join(file)
}

#[test]
fn arrival_order_of_insights_does_not_change_preferences() {
    let nodes = load_nodes(&data("openb_node_list_gpu_node.csv")).unwrap();
    let nodes = &nodes[..300];
    let pods = load_pods(&data("openb_pod_list_default.csv")).unwrap();

    // Simulator: list order.
    let listed = ClusterView::new();
    let now = SystemTime::now();
    for n in nodes {
        listed.upsert_node(insight_for(n), now, 0);
    }
    let sim_state = Arc::new(ClusterState::new(listed, EngineConfig::default()));
    for n in nodes {
        sim_state.sync_node(&n.name);
    }

    // Production: insights in a shuffled order, then a resync (hash order).
    let mut shuffled: Vec<_> = nodes.to_vec();
    shuffled.shuffle(&mut rand::rngs::StdRng::seed_from_u64(7));
    let arrived = ClusterView::new();
    for n in &shuffled {
        arrived.upsert_node(insight_for(n), now, 0);
    }
    let live_state = Arc::new(ClusterState::new(arrived.clone(), EngineConfig::default()));
    for n in shuffled.iter().rev() {
        live_state.sync_node(&n.name);
    }
    live_state.resync();

    let sim = Engine::new(Arc::clone(&sim_state));
    let live = Engine::new(Arc::clone(&live_state));
    let mut compared = 0;
    for (k, pod) in pods.iter().take(400).enumerate() {
        let req = request_for(pod, k as u64);
        let a = sim.decide(&req);
        let b = live.decide(&req);
        let names = |p: &apollo_proto::SchedulingPolicy| -> Vec<(String, i32)> {
            p.node_preferences
                .iter()
                .map(|n| (n.node_name.clone(), n.score))
                .collect()
        };
        assert_eq!(names(&a), names(&b), "pod {k} ({})", pod.name);
        assert_eq!(a.decision, b.decision, "pod {k}");
        compared += a.node_preferences.len();
    }
    assert!(compared > 1000, "only {compared} preferences compared");
}
