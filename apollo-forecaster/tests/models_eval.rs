//! Trace loaders and the backtest harness on small generated files.

use std::path::PathBuf;

use apollo_forecaster::eval::{
    backtest_forecasts, evaluate, load_genai, load_openb, origins, robust_ratio, summarise_ratios,
    Dataset, EvalConfig, EvalError, HashSplit, ModelSet, OriginPart, Report, Series, RATIO_MAX,
    RATIO_MIN,
};
use apollo_forecaster::models::{Forecast, MODEL_NAMES};

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
            family: "line".into(),
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
    // ETS is exact; the robust aggregate clips its ratio at 0.1.
    assert!(
        (get("ets", 5) - RATIO_MIN).abs() < 1e-12,
        "ets {}",
        get("ets", 5)
    );
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
            family: "flat".into(),
            values: vec![1.0; 100],
        }],
    };
    let cfg = EvalConfig {
        models: vec!["nope".into()],
        ..EvalConfig::default()
    };
    assert!(matches!(evaluate(&ds, &cfg, &|_| {}), Err(EvalError::UnknownModel(m)) if m == "nope"));
}

#[test]
fn robust_ratio_follows_its_definition() {
    assert_eq!(robust_ratio(0.0, 0.0), 1.0);
    assert_eq!(robust_ratio(0.5, 0.0), RATIO_MAX);
    assert_eq!(robust_ratio(0.0, 2.0), RATIO_MIN);
    assert_eq!(robust_ratio(1e9, 1.0), RATIO_MAX);
    assert!((robust_ratio(3.0, 4.0) - 0.75).abs() < 1e-15);
    // Four series: a perfect idle one (tie), a 2x better, a 2x worse and a
    // model error where naive is perfect. None is dropped.
    let s = summarise_ratios(&[(0.0, 0.0), (1.0, 2.0), (4.0, 2.0), (1.0, 0.0)]).expect("some");
    assert_eq!(s.series, 4);
    let expected = (1.0_f64 * 0.5 * 2.0 * 10.0).powf(0.25);
    assert!((s.gmean - expected).abs() < 1e-12, "{}", s.gmean);
    assert!((s.median - 1.5).abs() < 1e-12);
    assert!((s.beats_naive - 0.25).abs() < 1e-12);
    assert!(summarise_ratios(&[]).is_none());
}

#[test]
fn hash_split_separates_tuning_from_held_out_containers() {
    let mk = |id: &str| Series {
        id: id.into(),
        family: "f".into(),
        values: vec![0.0; 30],
    };
    let ds = Dataset {
        name: "g".into(),
        season: None,
        series: vec![
            mk("a/0ab"),
            mk("a/4ff"),
            mk("b/5cd"),
            mk("b/9aa"),
            mk("b/fee"),
        ],
    };
    let ids = |split: HashSplit| {
        let mut d = ds.clone();
        split.filter(&mut d);
        d.series.into_iter().map(|s| s.id).collect::<Vec<_>>()
    };
    assert_eq!(ids(HashSplit::Tune), ["a/0ab", "a/4ff"]);
    assert_eq!(ids(HashSplit::HeldOut), ["b/5cd", "b/9aa"]);
    assert_eq!(ids(HashSplit::All).len(), 5);
}

#[test]
fn origin_halves_split_the_test_part_in_time_and_cover_it_exactly() {
    let part = |p: OriginPart| {
        let cfg = EvalConfig {
            origin_part: p,
            ..EvalConfig::default()
        };
        origins(1000, &cfg).collect::<Vec<_>>()
    };
    let (all, early, late) = (
        part(OriginPart::All),
        part(OriginPart::Early),
        part(OriginPart::Late),
    );
    // Test part = last 20 % (origins 800, 805, ..., 995), split at 900.
    assert_eq!(all.first(), Some(&800));
    assert_eq!(all.len(), 40);
    assert!(early.iter().all(|t| *t < 900) && late.iter().all(|t| *t >= 900));
    assert_eq!((early.len(), late.len()), (20, 20));
    let joined: Vec<usize> = early.into_iter().chain(late).collect();
    assert_eq!(joined, all);
}

/// Bursty series with idle stretches, a level shift and a slow cycle: long
/// enough (700 points) that `auto` fits its full models.
fn synthetic(seed: u64) -> Vec<f64> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut rnd = move || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..700)
        .map(|t| {
            let base = if t > 400 { 30.0 } else { 20.0 };
            let cycle = 5.0 * (t as f64 / 40.0).sin();
            let burst = if rnd() < 0.05 { 25.0 * rnd() } else { 0.0 };
            if (200..260).contains(&t) {
                0.0
            } else {
                base + cycle + 3.0 * rnd() + burst
            }
        })
        .collect()
}

fn synthetic_dataset() -> Dataset {
    Dataset {
        name: "synthetic".into(),
        season: None,
        series: (0..2)
            .map(|i| Series {
                id: format!("s{i}"),
                family: "synthetic".into(),
                values: synthetic(i + 1),
            })
            .collect(),
    }
}

/// Quick harness settings: few origins, a short LSTM training.
fn quick(models: &[&str], horizons: &[usize]) -> EvalConfig {
    EvalConfig {
        horizons: horizons.to_vec(),
        models: models.iter().map(|m| m.to_string()).collect(),
        origin_step: 35,
        lstm_steps: 20,
        ..EvalConfig::default()
    }
}

fn rows_of(r: &Report, model: &str, h: usize) -> Vec<(String, usize, f64, f64, usize)> {
    r.series
        .iter()
        .filter(|x| x.model == model && x.horizon == h)
        .map(|x| (x.id.clone(), x.n_origins, x.mae, x.naive_mae, x.covered))
        .collect()
}

#[test]
fn results_do_not_depend_on_other_models_or_horizons_in_the_run() {
    let ds = synthetic_dataset();
    let alone = evaluate(&ds, &quick(&["naive", "auto"], &[6]), &|_| {}).expect("alone");
    let crowded = evaluate(
        &ds,
        &quick(
            &["mean", "auto_cached", "arima", "auto", "naive"],
            &[2, 6, 12],
        ),
        &|_| {},
    )
    .expect("crowded");
    let a = rows_of(&alone, "auto", 6);
    assert_eq!(a.len(), 2);
    assert!(a.iter().all(|r| r.1 > 0));
    assert_eq!(a, rows_of(&crowded, "auto", 6));
    assert_eq!(rows_of(&alone, "naive", 6), rows_of(&crowded, "naive", 6));
    let row = |r: &Report| {
        let x = r
            .results
            .iter()
            .find(|x| x.model == "auto" && x.horizon == 6)
            .expect("row");
        (x.rel_mae_gmean, x.rel_mae_median, x.coverage_95)
    };
    assert_eq!(row(&alone), row(&crowded));
    // The per-series rows reproduce the headline aggregate.
    let pairs: Vec<(f64, f64)> = a.iter().map(|r| (r.2, r.3)).collect();
    assert_eq!(
        summarise_ratios(&pairs).map(|s| s.gmean),
        row(&alone).0,
        "aggregate recomputed from the series rows"
    );
}

/// Replaces every value at and after `origin` with garbage.
fn poison(y: &[f64], origin: usize) -> Vec<f64> {
    let junk = [f64::NAN, 1e300, -1e300, f64::INFINITY, 0.0, -7.5e12];
    y.iter()
        .enumerate()
        .map(|(i, v)| if i < origin { *v } else { junk[i % junk.len()] })
        .collect()
}

/// Forecasts of every model at every origin up to `last` for one series.
fn forecasts_until(
    set: &ModelSet,
    y: &[f64],
    h: usize,
    cfg: &EvalConfig,
    last: usize,
) -> Vec<(usize, usize, Result<Forecast, String>)> {
    let models = set.build().expect("build").remove(0);
    let mut out = Vec::new();
    backtest_forecasts(y, &models, h, cfg, &mut |origin, mi, res, _| {
        if origin <= last {
            out.push((origin, mi, res.map_err(|e| e.to_string())));
        }
    });
    out
}

#[test]
fn poisoning_the_future_changes_no_forecast() {
    let mut names: Vec<&str> = MODEL_NAMES.to_vec();
    names.push("auto_cached");
    let h = 8;
    let cfg = quick(&names, &[h]);
    let clean = synthetic_dataset();
    // Origins are 560, 595, 630, 665: poison from the second one on, so
    // the second is the last whose history is clean.
    let cut = 595;
    let mut dirty = clean.clone();
    for s in &mut dirty.series {
        s.values = poison(&s.values, cut);
    }
    let set_clean = ModelSet::prepare(&clean, &cfg, &|_| {}).expect("prepare clean");
    let set_dirty = ModelSet::prepare(&dirty, &cfg, &|_| {}).expect("prepare dirty");
    for (c, d) in clean.series.iter().zip(&dirty.series) {
        let a = forecasts_until(&set_clean, &c.values, h, &cfg, cut);
        let b = forecasts_until(&set_dirty, &d.values, h, &cfg, cut);
        assert_eq!(a.len(), 2 * names.len());
        for ((o, mi, fa), (_, _, fb)) in a.iter().zip(&b) {
            let fa = fa.as_ref().expect("clean forecast");
            assert!(fa.mean.iter().all(|v| v.is_finite()));
            assert_eq!(Ok(fa), fb.as_ref(), "{} at origin {o}", names[*mi]);
        }
    }
}
