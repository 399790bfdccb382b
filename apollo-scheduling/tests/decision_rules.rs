//! Each decision (REQUIRE, PREFER, DELAY, REJECT, ALLOW) reached by a
//! realistic case through the engine, plus the assume cache and feedback.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use apollo_common::ClusterView;
use apollo_proto::{
    ClusterInsight, CsdStatus, GpuStatus, NodeResources, ResourcePrediction, SchedulingDecision,
    SchedulingPolicy, SchedulingPolicyRequest, Timestamp, TimestampedResources,
};
use apollo_scheduling::config::EngineConfig;
use apollo_scheduling::engine::Engine;
use apollo_scheduling::state::ClusterState;

const GIB: i64 = 1 << 30;

struct Node<'a> {
    name: &'a str,
    cpu: f64,
    cpu_requested: f64,
    cpu_used: f64,
    gpus: &'a [&'a str],
    csd: bool,
}

fn node(name: &str) -> Node<'_> {
    Node {
        name,
        cpu: 32.0,
        cpu_requested: 0.0,
        cpu_used: 4.0,
        gpus: &[],
        csd: false,
    }
}

fn insight(n: &Node<'_>) -> ClusterInsight {
    ClusterInsight {
        node_name: n.name.into(),
        node_resources: Some(NodeResources {
            cpu_allocatable_cores: n.cpu,
            cpu_requested_cores: n.cpu_requested,
            cpu_used_cores: n.cpu_used,
            memory_allocatable_bytes: 256 * GIB,
            memory_used_bytes: 32 * GIB,
            memory_requested_bytes: 0,
            ..Default::default()
        }),
        gpu_devices: n
            .gpus
            .iter()
            .enumerate()
            .map(|(i, m)| GpuStatus {
                gpu_id: format!("gpu{i}"),
                gpu_model: m.to_string(),
                is_available: true,
                ..Default::default()
            })
            .collect(),
        csd_devices: if n.csd {
            vec![CsdStatus {
                device_id: "csd0".into(),
                is_available: true,
                health_score: 1.0,
                ..Default::default()
            }]
        } else {
            Vec::new()
        },
        ..Default::default()
    }
}

fn engine_with(nodes: &[Node<'_>], stored_at: SystemTime) -> Engine {
    let view = ClusterView::new();
    for (i, n) in nodes.iter().enumerate() {
        assert!(view.upsert_node(insight(n), stored_at, i as u64 + 1));
    }
    let state = Arc::new(ClusterState::new(view, EngineConfig::default()));
    state.resync();
    Engine::new(state)
}

fn engine(nodes: &[Node<'_>]) -> Engine {
    engine_with(nodes, SystemTime::now())
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

fn names(p: &SchedulingPolicy) -> Vec<&str> {
    p.node_preferences
        .iter()
        .map(|n| n.node_name.as_str())
        .collect()
}

#[test]
fn csd_requirement_gives_require_with_only_csd_nodes() {
    let e = engine(&[
        node("plain-1"),
        Node {
            csd: true,
            ..node("csd-1")
        },
        node("plain-2"),
        Node {
            csd: true,
            ..node("csd-2")
        },
    ]);
    let p = e.decide(&req(
        "filter-0",
        &[
            ("apollo.ai-storage/requires-csd", "true"),
            ("apollo.ai-storage/stage", "preprocessing"),
        ],
    ));
    assert_eq!(p.decision(), SchedulingDecision::Require, "{}", p.reason);
    let mut got = names(&p);
    got.sort();
    assert_eq!(got, vec!["csd-1", "csd-2"]);
    assert!(p.reason.contains("requires a CSD"), "{}", p.reason);
    assert_eq!(p.constraints.len(), 1);
    assert!(p.storage_requirements.unwrap().requires_csd);
}

#[test]
fn gpu_model_constraint_gives_require() {
    let e = engine(&[
        Node {
            gpus: &["V100M16", "V100M16"],
            ..node("v100")
        },
        Node {
            gpus: &["T4", "T4"],
            ..node("t4")
        },
        node("cpu-only"),
    ]);
    let p = e.decide(&req(
        "infer",
        &[
            ("apollo.ai-storage/gpu", "1"),
            ("apollo.ai-storage/gpu-model", "T4"),
        ],
    ));
    assert_eq!(p.decision(), SchedulingDecision::Require, "{}", p.reason);
    assert_eq!(names(&p), vec!["t4"]);
}

#[test]
fn cache_locality_gives_prefer() {
    let e = engine(&[node("n1"), node("n2"), node("n3")]);
    let p = e.decide(&req(
        "loader",
        &[
            ("apollo.ai-storage/cache-nodes", "n2"),
            ("apollo.ai-storage/stage", "data-loading"),
        ],
    ));
    assert_eq!(p.decision(), SchedulingDecision::Prefer, "{}", p.reason);
    assert_eq!(p.node_preferences[0].node_name, "n2");
    assert!(p.node_preferences[0].score >= p.node_preferences[1].score + 10);
    let sig = p.workload_signature.unwrap();
    assert_eq!(sig.cached_on_nodes, vec!["n2"]);
}

#[test]
fn identical_nodes_give_allow_with_preferences() {
    let e = engine(&[node("n1"), node("n2")]);
    let p = e.decide(&req("plain", &[("apollo.ai-storage/cpu", "1")]));
    assert_eq!(p.decision(), SchedulingDecision::Allow, "{}", p.reason);
    assert_eq!(p.node_preferences.len(), 2);
    assert!(p
        .node_preferences
        .iter()
        .all(|n| (1..=100).contains(&n.score)));
}

#[test]
fn impossible_pod_is_rejected() {
    let e = engine(&[
        Node {
            gpus: &["V100M16"; 4],
            ..node("g4")
        },
        node("c1"),
    ]);
    let p = e.decide(&req("huge", &[("apollo.ai-storage/gpu", "8")]));
    assert_eq!(p.decision(), SchedulingDecision::Reject, "{}", p.reason);
    assert!(p.node_preferences.is_empty());
    assert!(p.reason.contains("8 GPU"), "{}", p.reason);
}

#[test]
fn forecast_of_freeing_capacity_gives_delay() {
    let full = |name| Node {
        cpu_requested: 32.0,
        cpu_used: 30.0,
        ..node(name)
    };
    let e = engine(&[full("busy-1"), full("busy-2")]);
    // Without a forecast a pod that fits nowhere now is left to the scheduler.
    let p = e.decide(&req("waiting", &[("apollo.ai-storage/cpu", "4")]));
    assert_eq!(p.decision(), SchedulingDecision::Allow, "{}", p.reason);
    assert!(p.node_preferences.is_empty());

    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let at = |mins: i64, cpu: f64| TimestampedResources {
        timestamp: Some(Timestamp {
            seconds: now + mins * 60,
            nanos: 0,
        }),
        cpu_usage: cpu,
        memory_usage: 20.0,
        ..Default::default()
    };
    let pred = ResourcePrediction {
        node_name: "busy-2".into(),
        predicted_usage: vec![at(5, 93.0), at(10, 40.0), at(15, 35.0)],
        ..Default::default()
    };
    assert!(e.state().apply_forecast(&pred));
    let p = e.decide(&req("waiting", &[("apollo.ai-storage/cpu", "4")]));
    assert_eq!(p.decision(), SchedulingDecision::Delay, "{}", p.reason);
    assert!(p.reason.contains("busy-2"), "{}", p.reason);
    assert!(p.reason.contains("~10 min"), "{}", p.reason);
}

#[test]
fn forecast_gpu_overload_steers_gpu_pods_only() {
    let gpu_node = |name| Node {
        gpus: &["A100", "A100"],
        ..node(name)
    };
    let e = engine(&[gpu_node("hot"), gpu_node("cool")]);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let pred = ResourcePrediction {
        node_name: "hot".into(),
        upper_bound: vec![TimestampedResources {
            timestamp: Some(Timestamp {
                seconds: now + 600,
                nanos: 0,
            }),
            cpu_usage: 20.0,
            memory_usage: 20.0,
            gpu_usage: 97.0,
            ..Default::default()
        }],
        ..Default::default()
    };
    assert!(e.state().apply_forecast(&pred));
    let gpu_pod = e.decide(&req("gpu-pod", &[("apollo.ai-storage/gpu", "1")]));
    assert_eq!(names(&gpu_pod), vec!["cool"], "{}", gpu_pod.reason);
    let cpu_pod = e.decide(&req("cpu-pod", &[("apollo.ai-storage/cpu", "2")]));
    assert!(names(&cpu_pod).contains(&"hot"), "{}", cpu_pod.reason);
}

#[test]
fn insufficient_history_forecasts_do_not_mark_overload() {
    let gpu_node = |name| Node {
        gpus: &["A100", "A100"],
        ..node(name)
    };
    let e = engine(&[gpu_node("new"), gpu_node("known")]);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    // The forecaster's answer for a node it has one point of: persistence
    // with intervals far past capacity.
    let wide = |node: &str, model: &str| ResourcePrediction {
        node_name: node.into(),
        model_type: model.into(),
        upper_bound: vec![TimestampedResources {
            timestamp: Some(Timestamp {
                seconds: now + 600,
                nanos: 0,
            }),
            cpu_usage: 207.0,
            memory_usage: 207.0,
            gpu_usage: 207.0,
            ..Default::default()
        }],
        ..Default::default()
    };
    assert!(e
        .state()
        .apply_forecast(&wide("new", "persistence(insufficient-history:1/30)")));
    let p = e.decide(&req("gpu-pod", &[("apollo.ai-storage/gpu", "1")]));
    assert!(names(&p).contains(&"new"), "{}", p.reason);
    assert!(!p.reason.contains("overload"), "{}", p.reason);
    // The same bounds from a fitted model do mark the node.
    assert!(e.state().apply_forecast(&wide("new", "auto(ets)")));
    let p = e.decide(&req("gpu-pod-2", &[("apollo.ai-storage/gpu", "1")]));
    assert_eq!(names(&p), vec!["known"], "{}", p.reason);
}

#[test]
fn no_data_and_stale_data_give_allow() {
    let e = engine(&[]);
    let p = e.decide(&req("early", &[]));
    assert_eq!(p.decision(), SchedulingDecision::Allow);
    assert!(p.reason.contains("no cluster data"), "{}", p.reason);
    assert!(!p.request_id.is_empty());

    let old = SystemTime::now() - Duration::from_secs(600);
    let e = engine_with(&[node("n1"), node("n2")], old);
    let p = e.decide(&req("late", &[]));
    assert_eq!(p.decision(), SchedulingDecision::Allow);
    assert!(p.reason.contains("stale"), "{}", p.reason);
    assert!(p.node_preferences.is_empty());
}

#[test]
fn assume_cache_spreads_a_burst() {
    let small = |name| Node {
        cpu: 8.0,
        ..node(name)
    };
    let e = engine(&[small("a"), small("b"), small("c")]);
    let mut tops = Vec::new();
    for i in 0..3 {
        let p = e.decide(&req(&format!("w{i}"), &[("apollo.ai-storage/cpu", "6")]));
        tops.push(p.node_preferences[0].node_name.clone());
    }
    tops.sort();
    assert_eq!(tops, vec!["a", "b", "c"], "burst must spread");
    // A fourth pod fits nowhere while the three are assumed.
    let p = e.decide(&req("w3", &[("apollo.ai-storage/cpu", "6")]));
    assert!(p.node_preferences.is_empty(), "{}", p.reason);
}

#[test]
fn failed_bind_demotes_node_and_success_moves_assumption() {
    let e = engine(&[node("n1"), node("n2")]);
    let p = e.decide(&req("x", &[("apollo.ai-storage/cache-nodes", "n1")]));
    assert_eq!(p.node_preferences[0].node_name, "n1");
    let before = p.node_preferences[0].score;
    let effect = e
        .state()
        .feedback(&("ml".into(), "x".into()), &p.request_id, false, "n1");
    assert_eq!(effect, apollo_scheduling::state::FeedbackEffect::Failed);
    assert_eq!(e.state().assumed_node("ml", "x"), None);
    let p2 = e.decide(&req("x", &[("apollo.ai-storage/cache-nodes", "n1")]));
    let n1 = p2
        .node_preferences
        .iter()
        .find(|n| n.node_name == "n1")
        .unwrap();
    assert!(
        n1.score < before,
        "penalty must lower n1: {before} -> {}",
        n1.score
    );
    assert!(n1.reason.contains("bind-fail"), "{}", n1.reason);

    // Success on another node than the assumed one moves the assumption.
    let p3 = e.decide(&req("y", &[]));
    let assumed = e.state().assumed_node("ml", "y").unwrap();
    assert_eq!(assumed, p3.node_preferences[0].node_name);
    let other = if assumed == "n1" { "n2" } else { "n1" };
    e.state()
        .feedback(&("ml".into(), "y".into()), &p3.request_id, true, other);
    assert_eq!(e.state().assumed_node("ml", "y").as_deref(), Some(other));
}
