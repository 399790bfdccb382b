//! Simulation protocol on small clusters with known answers, and trace parsing.

use std::path::Path;

use apollo_scheduling::baselines::Baseline;
use apollo_scheduling::simulate::{
    self, parse_nodes, parse_pods, Policy, ShapeSource, SimConfig, SimError,
};

fn nodes(csv: &str) -> Vec<simulate::TraceNode> {
    parse_nodes(csv.as_bytes(), Path::new("nodes.csv")).unwrap()
}

fn pods(csv: &str) -> Vec<simulate::TracePod> {
    parse_pods(csv.as_bytes(), Path::new("pods.csv")).unwrap()
}

fn cfg(policy: Policy, seed: u64, inflation: f64) -> SimConfig {
    SimConfig {
        policy,
        seed,
        inflation,
        shapes: ShapeSource::Trace,
        weights: Default::default(),
    }
}

const TWO_NODES: &str =
    "sn,cpu_milli,memory_mib,gpu,model\nn0,8000,16384,1,T4\nn1,8000,16384,1,T4\n";
const HALVES_AND_WHOLE: &str = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\n\
p0,1000,1024,1,500,\np1,1000,1024,1,500,\np2,1000,1024,1,1000,\n";

#[test]
fn fgd_and_apollo_pack_halves_together() {
    // Two halves and one whole GPU exactly fill two single-GPU nodes, but only
    // if the halves share a GPU; every arrival order must reach 100 %.
    let n = nodes(TWO_NODES);
    let p = pods(HALVES_AND_WHOLE);
    for seed in 0..8 {
        for policy in [Policy::Apollo, Policy::Baseline(Baseline::Fgd)] {
            let r = simulate::run(&n, &p, &cfg(policy, seed, 1.0)).unwrap();
            assert_eq!(r.failed_pods, 0, "{policy} seed {seed}");
            assert!(
                (r.gpu_alloc_ratio_at_100 - 100.0).abs() < 1e-9,
                "{policy} seed {seed}"
            );
            assert_eq!(r.curve.len(), 100);
        }
    }
}

#[test]
fn online_shapes_also_pack_halves() {
    let n = nodes(TWO_NODES);
    let p = pods(HALVES_AND_WHOLE);
    for seed in 0..8 {
        let mut c = cfg(Policy::Apollo, seed, 1.0);
        c.shapes = ShapeSource::Online;
        let r = simulate::run(&n, &p, &c).unwrap();
        assert!(
            r.gpu_alloc_ratio_at_100 > 99.9,
            "seed {seed}: {}",
            r.gpu_alloc_ratio_at_100
        );
    }
}

#[test]
fn fgd_beats_random_on_a_sharing_workload() {
    let mut node_csv = String::from("sn,cpu_milli,memory_mib,gpu,model\n");
    for i in 0..8 {
        node_csv.push_str(&format!("n{i},32000,65536,2,T4\n"));
    }
    let mut pod_csv = String::from("name,cpu_milli,memory_mib,num_gpu,gpu_milli\n");
    for i in 0..12 {
        let milli = [300, 700, 1000, 500][i % 4];
        pod_csv.push_str(&format!("p{i:02},2000,2048,1,{milli}\n"));
    }
    let (n, p) = (nodes(&node_csv), pods(&pod_csv));
    let (mut fgd, mut random) = (0.0, 0.0);
    for seed in 0..6 {
        fgd += simulate::run(&n, &p, &cfg(Policy::Baseline(Baseline::Fgd), seed, 1.3))
            .unwrap()
            .gpu_alloc_ratio_at_130;
        random += simulate::run(&n, &p, &cfg(Policy::Baseline(Baseline::Random), seed, 1.3))
            .unwrap()
            .gpu_alloc_ratio_at_130;
    }
    assert!(fgd > random, "fgd {fgd} random {random}");
}

#[test]
fn workload_reaches_the_inflated_request_and_curve_is_monotone() {
    let n = nodes(TWO_NODES);
    let p = pods(HALVES_AND_WHOLE);
    let r = simulate::run(&n, &p, &cfg(Policy::Baseline(Baseline::BestFit), 7, 1.3)).unwrap();
    assert!(r.curve.len() >= 130); // the last pod may overshoot
    assert!(r.curve.windows(2).all(|w| w[0] <= w[1]));
    assert!(r.failed_pods > 0); // 130 % of capacity cannot all fit
    assert!(r.gpu_alloc_ratio_at_130 <= 100.0);
}

#[test]
fn cpu_and_memory_must_fit() {
    let n = nodes("sn,cpu_milli,memory_mib,gpu,model\nn0,4000,4096,2,T4\n");
    let p = pods(
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli\na,3000,1024,1,1000\nb,3000,1024,1,1000\n",
    );
    for policy in Policy::ALL {
        let r = simulate::run(&n, &p, &cfg(policy, 1, 1.0)).unwrap();
        assert_eq!(r.failed_pods, 1, "{policy}");
        assert!((r.gpu_alloc_ratio_at_100 - 50.0).abs() < 1e-9, "{policy}");
    }
}

#[test]
fn gpu_spec_limits_models() {
    let n = nodes("sn,cpu_milli,memory_mib,gpu,model\nv,8000,8192,1,V100\nt,8000,8192,1,T4\n");
    let p = pods("name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\na,1000,1024,1,1000,T4\nb,1000,1024,1,1000,T4|A10\n");
    for policy in Policy::ALL {
        let r = simulate::run(&n, &p, &cfg(policy, 3, 1.0)).unwrap();
        assert_eq!(r.failed_pods, 1, "{policy}");
    }
}

#[test]
fn bad_csv_errors_name_file_line_and_column() {
    let err = parse_pods(
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np0,1000,1024,1,500\np1,lots,1024,1,500\n"
            .as_bytes(),
        Path::new("pods.csv"),
    )
    .unwrap_err();
    match &err {
        SimError::BadValue {
            line, column, name, ..
        } => {
            assert_eq!((*line, *column, *name), (3, 2, "cpu_milli"));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err
        .to_string()
        .starts_with("pods.csv:3: column 2 (cpu_milli)"));

    let err = parse_pods(
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np0,1,1,1,1500\n".as_bytes(),
        Path::new("p.csv"),
    )
    .unwrap_err();
    assert!(matches!(err, SimError::BadValue { column: 5, .. }), "{err}");
    let err = parse_pods(
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np0,1,1,2,500\n".as_bytes(),
        Path::new("p.csv"),
    )
    .unwrap_err();
    assert!(matches!(err, SimError::BadValue { line: 2, .. }), "{err}");

    let err = parse_nodes(
        "sn,cpu_milli,gpu,model\nn0,1,1,T4\n".as_bytes(),
        Path::new("n.csv"),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            SimError::MissingColumn {
                column: "memory_mib",
                ..
            }
        ),
        "{err}"
    );
    let err = parse_nodes(
        "sn,cpu_milli,memory_mib,gpu,model\nn0,1,1,2,\n".as_bytes(),
        Path::new("n.csv"),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            SimError::BadValue {
                line: 2,
                column: 5,
                ..
            }
        ),
        "{err}"
    );
    let err = parse_nodes(
        "sn,cpu_milli,memory_mib,gpu,model\nn0,1,1\n".as_bytes(),
        Path::new("n.csv"),
    )
    .unwrap_err();
    assert!(matches!(err, SimError::Csv { line: 2, .. }), "{err}");
    let err = parse_nodes(
        "sn,cpu_milli,memory_mib,gpu,model\n".as_bytes(),
        Path::new("n.csv"),
    )
    .unwrap_err();
    assert!(matches!(err, SimError::Empty { .. }), "{err}");
    assert!(matches!(
        "nope".parse::<Policy>(),
        Err(SimError::UnknownPolicy(_))
    ));
}
