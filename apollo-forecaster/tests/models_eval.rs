//! Trace loaders and the backtest harness on small generated files.

use std::path::PathBuf;

use apollo_forecaster::eval::{
    evaluate, load_genai, load_openb, Dataset, EvalConfig, EvalError, Series,
};

/// A fresh directory under the system temp dir, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Self {
        let p =
            std::env::temp_dir().join(format!("apollo-models-eval-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        Self(p)
    }
    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.0.join(name), text).expect("write");
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn genai_file(order: &[&str], rows: usize) -> String {
    let mut s = order.join(",") + "\n";
    for t in (0..rows).rev() {
        for ip in ["a", "b"] {
            let fields: Vec<String> = order
                .iter()
                .map(|c| match *c {
                    "value" => format!("{}", (t % 10) as f64),
                    "timestamp_anon" => format!("{}.0", 1000 + 60 * t),
                    _ => ip.to_string(),
                })
                .collect();
            s += &(fields.join(",") + "\n");
        }
    }
    s
}

#[test]
fn genai_loader_reads_headers_in_any_order_and_sorts_by_time() {
    let d = Dir::new("genai-ok");
    d.write(
        "pod_gpu_duty_cycle_anon.csv",
        &genai_file(&["value", "timestamp_anon", "container_ip"], 30),
    );
    d.write(
        "pod_gpu_memory_used_bytes_anon.csv",
        &genai_file(&["timestamp_anon", "value", "container_ip"], 30),
    );
    d.write(
        "pod_memory_util_anon.csv",
        &genai_file(&["container_ip", "value", "timestamp_anon"], 10),
    );
    let ds = load_genai(&d.0, 20).expect("load");
    // Two containers in each of the first two files; the third is too short.
    assert_eq!(ds.series.len(), 4);
    let s = &ds.series[0];
    assert_eq!(s.values.len(), 30);
    // Rows were written newest first; sorted by time the values count up.
    assert_eq!(&s.values[..3], &[0.0, 1.0, 2.0]);
}

#[test]
fn genai_loader_names_file_line_and_column_of_a_bad_number() {
    let d = Dir::new("genai-bad");
    let mut text = genai_file(&["value", "timestamp_anon", "container_ip"], 5);
    text += "oops,1.0,a\n";
    d.write("pod_gpu_duty_cycle_anon.csv", &text);
    let err = load_genai(&d.0, 1).expect_err("bad number");
    match &err {
        EvalError::Parse {
            path,
            line,
            column,
            value,
        } => {
            assert!(path.ends_with("pod_gpu_duty_cycle_anon.csv"));
            assert_eq!(*line, 12);
            assert_eq!(column, "value");
            assert_eq!(value, "oops");
        }
        other => panic!("unexpected {other}"),
    }
    assert!(err.to_string().contains("line 12"), "{err}");
}

#[test]
fn genai_loader_reports_a_missing_column() {
    let d = Dir::new("genai-col");
    d.write("pod_gpu_duty_cycle_anon.csv", "value,container_ip\n1,a\n");
    let err = load_genai(&d.0, 1).expect_err("missing column");
    assert!(
        matches!(&err, EvalError::MissingColumn { column, .. } if column == "timestamp_anon"),
        "{err}"
    );
}

#[test]
fn openb_replay_builds_allocation_ratios() {
    let d = Dir::new("openb");
    d.write(
        "openb_node_list_gpu_node.csv",
        "sn,cpu_milli,memory_mib,gpu,model\nn0,1000,1000,1,T4\nn1,1000,1000,1,T4\n",
    );
    d.write(
        "openb_pod_list_default.csv",
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n\
         p0,500,200,1,1000,,LS,Running,0,1200,0\n\
         p1,500,200,1,500,,LS,Running,0,2400,600\n\
         p2,500,200,1,500,,LS,Pending,0,2400,\n",
    );
    let ds = load_openb(&d.0, 600.0).expect("load");
    assert_eq!(ds.series.len(), 3);
    let gpu = &ds.series[2].values;
    // t=0: p0 (1000 of 2000); t=600: p0+p1; t=1200,1800: p1; t=2400: none.
    assert_eq!(gpu, &vec![0.5, 0.75, 0.25, 0.25, 0.0]);
    let cpu = &ds.series[0].values;
    assert_eq!(cpu, &vec![0.25, 0.5, 0.25, 0.25, 0.0]);
}

#[test]
fn harness_scores_naive_as_one_and_a_perfect_model_below() {
    // A pure line: "mean" lags behind, naive is off by the slope, ETS with
    // a trend is exact.
    let values: Vec<f64> = (0..300).map(|t| 2.0 * t as f64).collect();
    let ds = Dataset {
        name: "line".into(),
        season: None,
        series: vec![Series {
            id: "s".into(),
            values,
        }],
    };
    let cfg = EvalConfig {
        horizons: vec![1, 5],
        models: vec!["naive".into(), "ets".into(), "mean".into()],
        ..EvalConfig::default()
    };
    let r = evaluate(&ds, &cfg, &|_| {}).expect("evaluate");
    assert_eq!(r.results.len(), 6);
    let get = |m: &str, h: usize| {
        r.results
            .iter()
            .find(|x| x.model == m && x.horizon == h)
            .and_then(|x| x.rel_mae_gmean)
            .expect("row")
    };
    assert!((get("naive", 5) - 1.0).abs() < 1e-12);
    assert!(get("ets", 5) < 0.1, "ets {}", get("ets", 5));
    assert!(get("mean", 5) > 1.0);
    let naive5 = r
        .results
        .iter()
        .find(|x| x.model == "naive" && x.horizon == 5)
        .expect("row");
    // Naive MAE at h=5 is 10, the in-sample one-step naive MAE is 2.
    assert!((naive5.mase_mean.expect("mase") - 5.0).abs() < 1e-9);
}

#[test]
fn harness_rejects_unknown_models() {
    let ds = Dataset {
        name: "x".into(),
        season: None,
        series: vec![Series {
            id: "s".into(),
            values: vec![1.0; 100],
        }],
    };
    let cfg = EvalConfig {
        models: vec!["nope".into()],
        ..EvalConfig::default()
    };
    assert!(matches!(evaluate(&ds, &cfg, &|_| {}), Err(EvalError::UnknownModel(m)) if m == "nope"));
}
