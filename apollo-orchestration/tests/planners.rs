//! Planners and rails on constructed views: each action reached by a
//! realistic case, each rail blocking what it should.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apollo_orchestration::forecast::Outlook;
use apollo_orchestration::planner::{PlannerConfig, Planners, Proposal, Subject};
use apollo_orchestration::rails::{BlackoutWindow, Rails, RailsConfig};
use apollo_orchestration::view::{NodeView, PlanningView, PodView};
use apollo_proto::{
    ClusterInsight, CsdStatus, IoPattern, NodeResources, OrchestrationAction, PipelineStage,
    StorageDeviceStatus, WorkloadSummary,
};

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

fn t0() -> SystemTime {
    // 2026-11-30 10:00 UTC.
    UNIX_EPOCH + Duration::from_secs(1_795_000_000 - 1_795_000_000 % 86_400 + 10 * 3600)
}

/// A 16-core, 64 GiB node using `cpu` of its CPU and 30 % of its memory.
fn insight(name: &str, cpu: f64, roles: &[&str]) -> ClusterInsight {
    ClusterInsight {
        node_name: name.into(),
        node_resources: Some(NodeResources {
            cpu_allocatable_cores: 16.0,
            memory_allocatable_bytes: (64.0 * GIB) as i64,
            cpu_used_cores: 16.0 * cpu,
            memory_used_bytes: (64.0 * GIB * 0.3) as i64,
            ..Default::default()
        }),
        node_roles: roles.iter().map(|r| r.to_string()).collect(),
        storage_devices: vec![StorageDeviceStatus {
            device_name: "nvme0".into(),
            device_type: "nvme".into(),
            total_bytes: (1000.0 * GIB) as i64,
            used_bytes: (100.0 * GIB) as i64,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn node(name: &str, cpu: f64) -> NodeView {
    NodeView::from_insight(&insight(name, cpu, &[]), None).unwrap()
}

fn pod(ns: &str, name: &str, node: &str, cores: f64, stage: PipelineStage) -> PodView {
    let w = WorkloadSummary {
        pod_name: name.into(),
        pod_namespace: ns.into(),
        current_stage: stage as i32,
        cpu_usage: cores,
        memory_usage: GIB,
        ..Default::default()
    };
    let mut i = insight(node, 0.1, &[]);
    i.running_workloads = vec![w];
    let v = PlanningView::from_insights(t0(), &[&i], &[], &HashMap::new());
    v.pods.into_iter().next().unwrap()
}

/// hot at 95 % CPU with a checkpointing, a training and a preprocessing pod;
/// w1 at 30 %, w2 at 50 %, cp (control plane) at 5 %.
fn hotspot_view() -> PlanningView {
    let mut v = PlanningView::new(t0());
    v.nodes = vec![
        node("hot", 0.95),
        node("w1", 0.30),
        node("w2", 0.50),
        NodeView::from_insight(&insight("cp", 0.05, &["control-plane"]), None).unwrap(),
    ];
    v.pods = vec![
        pod("ml", "ckpt", "hot", 4.0, PipelineStage::Checkpointing),
        pod("ml", "train", "hot", 6.0, PipelineStage::Training),
        pod("ml", "prep", "hot", 2.5, PipelineStage::Preprocessing),
    ];
    v
}

fn plan_with(
    view: &PlanningView,
    rails: &mut Rails,
) -> (Vec<Proposal>, Vec<apollo_orchestration::rails::Blocked>) {
    let mut planners = Planners::new(PlannerConfig::default());
    rails.tick(view.now);
    let proposals = planners.plan(view, rails);
    rails.approve(view, proposals)
}

fn migrations(ps: &[Proposal]) -> Vec<(String, String, String)> {
    ps.iter()
        .filter_map(|p| match &p.subject {
            Subject::Migration { pod, from, to, .. } => {
                Some((pod.clone(), from.clone(), to.clone()))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn migrate_moves_the_cheap_pod_off_a_hot_node_onto_a_worker() {
    let view = hotspot_view();
    let mut rails = Rails::new(RailsConfig::default());
    let (ok, _) = plan_with(&view, &mut rails);
    let m: Vec<_> = ok
        .iter()
        .filter(|p| p.action == OrchestrationAction::Migrate)
        .collect();
    assert_eq!(m.len(), 1, "{ok:#?}");
    let (pod, from, to) = migrations(&ok)[0].clone();
    // 95 % - 85 % + 5 % margin = 15 % of 16 cores = 2.4 cores: the
    // preprocessing pod (2.5 cores) covers it at no stage cost.
    assert_eq!(pod, "prep");
    assert_eq!(from, "hot");
    assert!(to == "w1" || to == "w2", "target {to}");
    let f = &m[0].factors;
    assert!(f.contains(&"threshold=85.0%".to_string()), "{f:?}");
    assert!(f.contains(&"current=95.0%".to_string()), "{f:?}");
    assert!(m[0].urgency >= 0.8);
}

#[test]
fn migrate_acts_on_a_forecast_crossing_with_its_lead_time() {
    let mut view = hotspot_view();
    let hot = insight("hot", 0.70, &[]);
    view.nodes[0] = NodeView::from_insight(
        &hot,
        Some(Outlook {
            horizon: Duration::from_secs(1800),
            peak_cpu: 0.97,
            peak_memory: 0.3,
            crossing_in: Some(Duration::from_secs(600)),
        }),
    )
    .unwrap();
    let mut rails = Rails::new(RailsConfig::default());
    let (ok, _) = plan_with(&view, &mut rails);
    let m: Vec<_> = ok
        .iter()
        .filter(|p| p.action == OrchestrationAction::Migrate)
        .collect();
    assert!(!m.is_empty(), "{ok:#?}");
    assert!(
        m[0].factors.contains(&"lead_time=600s".to_string()),
        "{:?}",
        m[0].factors
    );
    assert!(
        m[0].urgency < 0.8,
        "predicted is less urgent than now: {}",
        m[0].urgency
    );
    assert!(m[0].reason.contains("forecast"), "{}", m[0].reason);
}

#[test]
fn migrate_never_picks_a_target_that_would_overload_including_its_forecast() {
    let mut view = hotspot_view();
    // w1 looks idle now but its forecast peak is 90 %; w2 sits at 50 %.
    view.nodes[1] = NodeView::from_insight(
        &insight("w1", 0.10, &[]),
        Some(Outlook {
            horizon: Duration::from_secs(1800),
            peak_cpu: 0.90,
            peak_memory: 0.3,
            crossing_in: Some(Duration::from_secs(900)),
        }),
    )
    .unwrap();
    let mut rails = Rails::new(RailsConfig::default());
    let (ok, _) = plan_with(&view, &mut rails);
    for (_, _, to) in migrations(&ok) {
        assert_eq!(to, "w2");
    }
    // With every worker near the ceiling, nothing moves.
    view.nodes[2] = node("w2", 0.72);
    let mut rails = Rails::new(RailsConfig::default());
    let (ok, _) = plan_with(&view, &mut rails);
    assert!(
        migrations(&ok).iter().all(|(_, from, _)| from != "hot"),
        "{ok:#?}"
    );
}

#[test]
fn stateful_pods_keep_their_volumes() {
    let mut view = hotspot_view();
    view.pods = vec![pod("ml", "db-0", "hot", 2.5, PipelineStage::Idle)];
    let mut rails = Rails::new(RailsConfig::default());
    let (ok, _) = plan_with(&view, &mut rails);
    match &ok[0].subject {
        Subject::Migration { preserve_pv, .. } => assert!(*preserve_pv),
        other => panic!("{other:?}"),
    }
}

fn web_pods(view: &mut PlanningView, percent: f64, n: usize) {
    for i in 0..n {
        let mut p = pod(
            "web",
            &format!("api-7d9f8b6c5d-x2k4{i}"),
            "w1",
            0.5,
            PipelineStage::Inference,
        );
        p.cpu_percent = Some(percent);
        view.pods.push(p);
    }
}

#[test]
fn scale_up_on_predicted_per_replica_load() {
    let mut view = PlanningView::new(t0());
    view.nodes = vec![node("w1", 0.4)];
    web_pods(&mut view, 120.0, 2);
    let mut rails = Rails::new(RailsConfig::default());
    let (ok, _) = plan_with(&view, &mut rails);
    let up: Vec<_> = ok
        .iter()
        .filter(|p| p.action == OrchestrationAction::ScaleUp)
        .collect();
    assert_eq!(up.len(), 1, "{ok:#?}");
    match &up[0].subject {
        Subject::Scale {
            name,
            current,
            desired,
            ..
        } => {
            assert_eq!(name, "api");
            assert_eq!(*current, 2);
            // ceil(2 * 1.2 / 0.7) = 4
            assert_eq!(*desired, 4);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn scale_down_waits_for_the_stabilisation_window_and_respects_the_floor() {
    let mut planners = Planners::new(PlannerConfig::default());
    let mut rails = Rails::new(RailsConfig::default());
    let mut downs = Vec::new();
    for minute in [0u64, 2, 4, 6, 8, 12] {
        let mut view = PlanningView::new(t0() + Duration::from_secs(minute * 60));
        view.nodes = vec![node("w1", 0.4)];
        web_pods(&mut view, 5.0, 3);
        rails.tick(view.now);
        let ps = planners.plan(&view, &rails);
        for p in ps
            .into_iter()
            .filter(|p| p.action == OrchestrationAction::ScaleDown)
        {
            downs.push((minute, p));
        }
    }
    let minutes: Vec<u64> = downs.iter().map(|(m, _)| *m).collect();
    // Low since minute 0: first at 5 min or later, then not again for 5 min.
    assert_eq!(minutes, vec![6, 12], "{downs:#?}");
    match &downs[0].1.subject {
        Subject::Scale { desired, .. } => assert_eq!(*desired, 1),
        other => panic!("{other:?}"),
    }
}

#[test]
fn scale_holds_inside_the_hysteresis_band() {
    let mut planners = Planners::new(PlannerConfig::default());
    let rails = Rails::new(RailsConfig::default());
    for minute in [0u64, 6, 12] {
        let mut view = PlanningView::new(t0() + Duration::from_secs(minute * 60));
        view.nodes = vec![node("w1", 0.4)];
        // 60 %: below 77 % (up) and above 49 % (down).
        web_pods(&mut view, 60.0, 3);
        let ps = planners.plan(&view, &rails);
        assert!(
            ps.iter().all(|p| p.action != OrchestrationAction::ScaleDown
                && p.action != OrchestrationAction::ScaleUp),
            "{ps:#?}"
        );
    }
}

#[test]
fn provision_when_a_device_is_predicted_to_fill() {
    let mut planners = Planners::new(PlannerConfig::default());
    let rails = Rails::new(RailsConfig::default());
    let mut found = None;
    // 600 GiB used of 1000, growing 20 GiB per minute: 85 % in 12.5 min.
    for minute in 0u64..5 {
        let mut i = insight("w1", 0.3, &[]);
        i.storage_devices[0].used_bytes = ((600 + 20 * minute) as f64 * GIB) as i64;
        i.running_workloads = vec![WorkloadSummary {
            pod_name: "loader".into(),
            pod_namespace: "ml".into(),
            io_usage: 5.0,
            ..Default::default()
        }];
        let view = PlanningView::from_insights(
            t0() + Duration::from_secs(minute * 60),
            &[&i],
            &[],
            &HashMap::new(),
        );
        let ps = planners.plan(&view, &rails);
        if let Some(p) = ps
            .into_iter()
            .find(|p| p.action == OrchestrationAction::Provision)
        {
            found = Some((minute, p));
            break;
        }
    }
    let (minute, p) = found.expect("no PROVISION");
    assert!(
        minute >= 2,
        "needs samples over 2 min first, got minute {minute}"
    );
    match &p.subject {
        Subject::Provision {
            size_bytes,
            workload,
            ..
        } => {
            assert_eq!(workload, "loader");
            // 20 GiB/min over 24 h.
            assert!(
                *size_bytes as f64 >= 20.0 * GIB * 60.0 * 24.0 * 0.99,
                "{size_bytes}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        p.factors.iter().any(|f| f.starts_with("lead_time=")),
        "{:?}",
        p.factors
    );
}

#[test]
fn provision_a_faster_class_for_random_io_on_disk() {
    let mut i = insight("w1", 0.3, &[]);
    i.storage_devices[0].device_type = "hdd".into();
    let mut view = PlanningView::from_insights(t0(), &[&i], &[], &HashMap::new());
    let mut p = pod("ml", "lookup", "w1", 0.5, PipelineStage::Training);
    p.io_pattern = IoPattern::Random;
    view.pods.push(p);
    let mut planners = Planners::new(PlannerConfig::default());
    let ps = planners.plan(&view, &Rails::new(RailsConfig::default()));
    let prov: Vec<_> = ps
        .iter()
        .filter(|p| p.action == OrchestrationAction::Provision)
        .collect();
    assert_eq!(prov.len(), 1, "{ps:#?}");
    match &prov[0].subject {
        Subject::Provision { class, .. } => assert_eq!(*class, apollo_proto::StorageClass::Fast),
        other => panic!("{other:?}"),
    }
    // The executor names the workload and its type from these factors.
    assert!(prov[0].factors.contains(&"workload=lookup".to_string()));
    assert!(prov[0]
        .factors
        .contains(&"workload_type=training".to_string()));
}

#[test]
fn rebalance_moves_a_bounded_batch_from_hot_to_cold() {
    let mut view = PlanningView::new(t0());
    view.nodes = vec![node("a", 0.80), node("b", 0.10), node("c", 0.45)];
    for i in 0..6 {
        view.pods
            .push(pod("ml", &format!("job{i}"), "a", 1.2, PipelineStage::Idle));
    }
    let mut rails = Rails::new(RailsConfig {
        max_per_node: 10,
        ..RailsConfig::default()
    });
    let (ok, _) = plan_with(&view, &mut rails);
    let r: Vec<_> = ok
        .iter()
        .filter(|p| p.action == OrchestrationAction::Rebalance)
        .collect();
    assert!(!r.is_empty() && r.len() <= 3, "{ok:#?}");
    for p in r {
        let (from, to) = p.nodes().unwrap();
        assert_eq!(from, "a");
        assert_ne!(to, "a");
    }
}

#[test]
fn optimize_moves_preprocessing_to_an_idle_csd() {
    let mut with_csd = insight("csd", 0.2, &[]);
    with_csd.csd_devices = vec![CsdStatus {
        device_id: "csd0".into(),
        is_available: true,
        compute_utilization: 0.02,
        ..Default::default()
    }];
    let mut view = PlanningView::new(t0());
    view.nodes = vec![
        node("w1", 0.4),
        NodeView::from_insight(&with_csd, None).unwrap(),
    ];
    view.pods
        .push(pod("ml", "prep", "w1", 1.0, PipelineStage::Preprocessing));
    let mut rails = Rails::new(RailsConfig::default());
    let (ok, _) = plan_with(&view, &mut rails);
    let o: Vec<_> = ok
        .iter()
        .filter(|p| p.action == OrchestrationAction::Optimize)
        .collect();
    assert_eq!(o.len(), 1, "{ok:#?}");
    assert_eq!(o[0].nodes(), Some(("w1", "csd")));
}

// ---- rails ----------------------------------------------------------------------------

fn moved_pods(view: &PlanningView, rails: &mut Rails) -> Vec<String> {
    migrations(&plan_with(view, rails).0)
        .into_iter()
        .map(|m| m.0)
        .collect()
}

#[test]
fn denied_namespaces_node_bound_and_annotated_pods_never_move() {
    for case in [
        "kube-system",
        "apollo",
        "static",
        "daemonset",
        "no-migrate",
        "pdb",
    ] {
        let mut view = hotspot_view();
        let prep = view.pods.iter_mut().find(|p| p.name == "prep").unwrap();
        match case {
            "kube-system" | "apollo" => prep.namespace = case.into(),
            "static" => {
                *prep = pod("ml", "kube-proxy-hot", "hot", 2.5, PipelineStage::Idle);
            }
            "daemonset" => {
                prep.owner = Some(apollo_orchestration::view::Owner {
                    kind: apollo_orchestration::view::WorkloadKind::DaemonSet,
                    name: "agent".into(),
                    replicas: None,
                    inferred: false,
                })
            }
            "no-migrate" => prep.no_migrate = true,
            _ => prep.disruption_allowed = Some(false),
        }
        let moved = moved_pods(&view, &mut Rails::new(RailsConfig::default()));
        assert!(
            !moved.iter().any(|p| p == "prep" || p == "kube-proxy-hot"),
            "{case}: {moved:?}"
        );
    }
}

#[test]
fn control_plane_nodes_are_never_source_or_target() {
    let mut view = hotspot_view();
    // Only the control plane has room.
    view.nodes[1] = node("w1", 0.80);
    view.nodes[2] = node("w2", 0.80);
    let (ok, _) = plan_with(&view, &mut Rails::new(RailsConfig::default()));
    assert!(
        ok.iter()
            .all(|p| p.nodes().is_none_or(|(_, to)| to != "cp")),
        "{ok:#?}"
    );
    // An overloaded control plane sheds nothing.
    let mut view = hotspot_view();
    view.nodes[0] = NodeView::from_insight(&insight("hot", 0.95, &["master"]), None).unwrap();
    let (ok, _) = plan_with(&view, &mut Rails::new(RailsConfig::default()));
    assert!(migrations(&ok).is_empty(), "{ok:#?}");
}

#[test]
fn cooldown_and_no_ping_pong() {
    let mut rails = Rails::new(RailsConfig::default());
    let view = hotspot_view();
    let (ok, _) = plan_with(&view, &mut rails);
    let (pod_name, _, to) = migrations(&ok)[0].clone();
    rails.finish(&format!("ml/{pod_name}"), &to, true);
    // Ten minutes later the pod's new node is the hot one and "hot" is idle:
    // inside the cooldown nothing moves it.
    let swap = |minutes: u64| {
        let mut v = PlanningView::new(t0() + Duration::from_secs(minutes * 60));
        v.nodes = vec![node(&to, 0.95), node("hot", 0.05), node("w3", 0.40)];
        v.pods = vec![pod("ml", &pod_name, &to, 2.5, PipelineStage::Preprocessing)];
        v
    };
    let (ok, blocked) = plan_with(&swap(10), &mut rails);
    assert!(migrations(&ok).is_empty(), "{ok:#?} {blocked:#?}");
    // After the cooldown it may move again, but never back to "hot".
    let (ok, _) = plan_with(&swap(40), &mut rails);
    let m = migrations(&ok);
    assert_eq!(m.len(), 1, "{ok:#?}");
    assert_eq!(m[0].2, "w3");
}

#[test]
fn per_node_cluster_and_cycle_caps() {
    // Two hot nodes, one cold target: one move per node at a time.
    let mut view = PlanningView::new(t0());
    view.nodes = vec![node("h1", 0.95), node("h2", 0.95), node("cold", 0.05)];
    view.pods = vec![
        pod("ml", "a", "h1", 2.5, PipelineStage::Idle),
        pod("ml", "b", "h2", 2.5, PipelineStage::Idle),
    ];
    let (ok, _) = plan_with(&view, &mut Rails::new(RailsConfig::default()));
    assert_eq!(migrations(&ok).len(), 1, "{ok:#?}");
    // Room for both targets-wise, but the cluster cap is 1.
    view.nodes.push(node("cold2", 0.05));
    let (ok, blocked) = plan_with(
        &view,
        &mut Rails::new(RailsConfig {
            max_cluster: 1,
            ..RailsConfig::default()
        }),
    );
    assert_eq!(migrations(&ok).len(), 1);
    assert!(
        blocked.iter().any(|b| b.rail == "cluster-cap"),
        "{blocked:#?}"
    );
    let (ok, blocked) = plan_with(
        &view,
        &mut Rails::new(RailsConfig {
            max_per_cycle: 1,
            ..RailsConfig::default()
        }),
    );
    assert_eq!(ok.len(), 1);
    assert!(
        blocked.iter().any(|b| b.rail == "cycle-cap"),
        "{blocked:#?}"
    );
}

#[test]
fn blackout_holds_disruptive_actions_only() {
    let mut view = hotspot_view();
    web_pods(&mut view, 120.0, 2);
    let mut rails = Rails::new(RailsConfig {
        blackout: vec![BlackoutWindow::parse("09:30-10:30").unwrap()],
        ..RailsConfig::default()
    });
    let (ok, blocked) = plan_with(&view, &mut rails);
    assert!(migrations(&ok).is_empty(), "{ok:#?}");
    assert!(blocked.iter().any(|b| b.rail == "blackout"));
    assert!(
        ok.iter().any(|p| p.action == OrchestrationAction::ScaleUp),
        "{ok:#?}"
    );
}
