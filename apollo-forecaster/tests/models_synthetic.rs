//! Models on synthetic series with known structure (seeded, deterministic).

use apollo_forecaster::models::arima::{choose_d, winsorize, FittedArima};
use apollo_forecaster::models::auto::detect_level_shift;
use apollo_forecaster::models::ets::{AutoEts, FittedEts, Spec, Trend};
use apollo_forecaster::models::lstm::{Lstm, TrainConfig};
use apollo_forecaster::models::{
    by_name, by_name_with, AutoConfig, AutoSelector, Model, ModelConfig, ModelError, MODEL_NAMES,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Standard normal draw (Box-Muller).
fn normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(1e-300);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

fn seasonal(n: usize, m: usize, amp: f64, noise: f64, seed: u64) -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|t| {
            10.0 + amp * (2.0 * std::f64::consts::PI * t as f64 / m as f64).sin()
                + noise * normal(&mut rng)
        })
        .collect()
}

fn truth_seasonal(t: usize, m: usize, amp: f64) -> f64 {
    10.0 + amp * (2.0 * std::f64::consts::PI * t as f64 / m as f64).sin()
}

fn mae(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>() / a.len() as f64
}

#[test]
fn ses_alpha_is_recovered_from_a_simulated_local_level() {
    let mut rng = StdRng::seed_from_u64(1);
    let alpha = 0.3;
    let mut level = 5.0;
    let y: Vec<f64> = (0..3000)
        .map(|_| {
            let e = normal(&mut rng);
            let v = level + e;
            level += alpha * e;
            v
        })
        .collect();
    let fit = FittedEts::fit(
        &y,
        Spec {
            trend: Trend::None,
            season: None,
        },
    )
    .expect("fit");
    assert!(
        (fit.params.alpha - alpha).abs() < 0.05,
        "alpha {}",
        fit.params.alpha
    );
}

#[test]
fn ets_follows_a_linear_trend() {
    let mut rng = StdRng::seed_from_u64(2);
    let y: Vec<f64> = (0..400)
        .map(|t| 3.0 + 0.5 * t as f64 + 0.3 * normal(&mut rng))
        .collect();
    let f = AutoEts::new(ModelConfig::default())
        .forecast(&y, 20, 0.95)
        .expect("forecast");
    let truth: Vec<f64> = (400..420).map(|t| 3.0 + 0.5 * t as f64).collect();
    // Within 2 noise standard deviations on average.
    assert!(mae(&f.mean, &truth) < 0.6, "mae {}", mae(&f.mean, &truth));
    assert!(
        f.model_type.contains(",A") || f.model_type.contains(",Ad"),
        "{}",
        f.model_type
    );
}

#[test]
fn ets_recovers_an_additive_season() {
    let (m, amp) = (24, 5.0);
    let y = seasonal(24 * 20, m, amp, 0.2, 3);
    let cfg = ModelConfig {
        season: Some(m),
        ..ModelConfig::default()
    };
    let f = AutoEts::new(cfg).forecast(&y, 48, 0.95).expect("forecast");
    let truth: Vec<f64> = (y.len()..y.len() + 48)
        .map(|t| truth_seasonal(t, m, amp))
        .collect();
    assert!(f.model_type.ends_with(",A)"), "{}", f.model_type);
    assert!(mae(&f.mean, &truth) < 0.4, "mae {}", mae(&f.mean, &truth));
}

#[test]
fn arima_recovers_ar1_coefficient() {
    let mut rng = StdRng::seed_from_u64(4);
    let phi = 0.7;
    let mut x = 0.0;
    let y: Vec<f64> = (0..3000)
        .map(|_| {
            x = phi * x + normal(&mut rng);
            x
        })
        .collect();
    let fit = FittedArima::fit_auto(&y).expect("fit");
    assert_eq!(fit.d, 0, "stationary AR(1) must not be differenced");
    assert!(fit.p >= 1, "{}", fit.label());
    if (fit.p, fit.q) == (1, 0) {
        assert!((fit.phi[0] - phi).abs() < 0.05, "phi {}", fit.phi[0]);
    }
    // Whatever the order, the one-step forecast must act like 0.7 * last.
    let last = *y.last().expect("non-empty");
    let f1 = fit.point(&y, y.len(), 1)[0];
    assert!(
        (f1 - phi * last).abs() < 0.1 + 0.05 * last.abs(),
        "{f1} vs {}",
        phi * last
    );
}

#[test]
fn random_walk_is_differenced_and_white_noise_is_not() {
    let mut rng = StdRng::seed_from_u64(5);
    let mut s = 0.0;
    let walk: Vec<f64> = (0..2000)
        .map(|_| {
            s += normal(&mut rng);
            s
        })
        .collect();
    let noise: Vec<f64> = (0..2000).map(|_| normal(&mut rng)).collect();
    assert_eq!(choose_d(&walk), 1);
    assert_eq!(choose_d(&noise), 0);
}

#[test]
fn prophet_recovers_trend_and_season() {
    let (m, amp) = (24, 3.0);
    let mut rng = StdRng::seed_from_u64(6);
    let truth = |t: usize| 0.02 * t as f64 + truth_seasonal(t, m, amp);
    let y: Vec<f64> = (0..480)
        .map(|t| truth(t) + 0.2 * normal(&mut rng))
        .collect();
    let cfg = ModelConfig {
        season: Some(m),
        ..ModelConfig::default()
    };
    let f = by_name_with("prophet", &cfg)
        .expect("known")
        .forecast(&y, 24, 0.95)
        .expect("forecast");
    let want: Vec<f64> = (480..504).map(truth).collect();
    assert!(mae(&f.mean, &want) < 0.5, "mae {}", mae(&f.mean, &want));
}

#[test]
fn lagreg_learns_a_season() {
    let (m, amp) = (24, 5.0);
    let y = seasonal(24 * 20, m, amp, 0.2, 7);
    let cfg = ModelConfig {
        season: Some(m),
        ..ModelConfig::default()
    };
    let f = by_name_with("lagreg", &cfg)
        .expect("known")
        .forecast(&y, 24, 0.95)
        .expect("forecast");
    let want: Vec<f64> = (y.len()..y.len() + 24)
        .map(|t| truth_seasonal(t, m, amp))
        .collect();
    // The naive forecast is off by ~3.2 on average here.
    assert!(mae(&f.mean, &want) < 1.0, "mae {}", mae(&f.mean, &want));
}

#[test]
fn global_lstm_beats_naive_on_mean_reverting_series() {
    // AR(1) around a per-series mean: the best forecast reverts, naive does not.
    let mut rng = StdRng::seed_from_u64(8);
    let series: Vec<Vec<f64>> = (0..4)
        .map(|i| {
            let mu = 10.0 * i as f64;
            let mut x = 0.0;
            (0..600)
                .map(|_| {
                    x = 0.8 * x + normal(&mut rng);
                    mu + x
                })
                .collect()
        })
        .collect();
    let refs: Vec<&[f64]> = series.iter().map(|s| &s[..500]).collect();
    // Small schedule and few calibration origins: unoptimised test builds
    // run the scalar loops slowly.
    let cfg = ModelConfig {
        calib_origins: 20,
        ..ModelConfig::default()
    };
    let model = Lstm::train(
        &refs,
        &cfg,
        &TrainConfig {
            steps: 120,
            batch: 8,
            ..TrainConfig::default()
        },
    )
    .expect("train");
    assert!(model.is_trained());
    let (mut err_lstm, mut err_naive) = (0.0, 0.0);
    for s in &series {
        for t in (500..590).step_by(9) {
            let f = model.forecast(&s[..t], 10, 0.95).expect("forecast");
            err_lstm += (f.mean[9] - s[t + 9]).abs();
            err_naive += (s[t - 1] - s[t + 9]).abs();
        }
    }
    assert!(err_lstm < err_naive, "lstm {err_lstm} naive {err_naive}");
}

#[test]
fn level_shift_is_detected_and_followed_by_auto() {
    let mut rng = StdRng::seed_from_u64(9);
    let mut y: Vec<f64> = (0..600).map(|_| 2.0 + 0.3 * normal(&mut rng)).collect();
    for v in y.iter_mut().skip(550) {
        *v += 10.0;
    }
    let cp = detect_level_shift(&y, 400).expect("shift found");
    assert!((548..=552).contains(&cp), "changepoint {cp}");
    let f = by_name("auto")
        .expect("known")
        .forecast(&y, 10, 0.95)
        .expect("forecast");
    assert!(
        f.mean.iter().all(|v| (v - 12.0).abs() < 1.0),
        "{:?}",
        f.mean
    );
    // No shift in plain noise.
    let noise: Vec<f64> = (0..600).map(|_| normal(&mut rng)).collect();
    assert_eq!(detect_level_shift(&noise, 400), None);
}

#[test]
fn intervals_cover_at_about_the_nominal_rate_on_noise() {
    let mut rng = StdRng::seed_from_u64(10);
    for name in ["mean", "auto", "ets"] {
        let model = by_name(name).expect("known");
        let (mut inside, mut total) = (0usize, 0usize);
        for _ in 0..60 {
            let y: Vec<f64> = (0..505).map(|_| normal(&mut rng)).collect();
            let f = model.forecast(&y[..500], 5, 0.95).expect("forecast");
            for k in 0..5 {
                total += 1;
                if y[500 + k] >= f.lower[k] && y[500 + k] <= f.upper[k] {
                    inside += 1;
                }
            }
        }
        let cov = inside as f64 / total as f64;
        assert!((0.91..=0.99).contains(&cov), "{name}: coverage {cov}");
    }
}

#[test]
fn bad_input_gives_errors_not_panics() {
    for name in MODEL_NAMES {
        let model = by_name(name).expect("known");
        let mut y: Vec<f64> = (0..200).map(|t| (t % 7) as f64).collect();
        y[50] = f64::NAN;
        assert!(
            matches!(
                model.forecast(&y, 5, 0.95),
                Err(ModelError::NonFinite { index: 50, .. })
            ),
            "{name} NaN"
        );
        y[50] = f64::INFINITY;
        assert!(model.forecast(&y, 5, 0.95).is_err(), "{name} inf");
        assert!(
            matches!(model.forecast(&[1.0], 5, 0.95), Err(ModelError::TooShort { .. })) ||
            // naive-type models accept a single point
            model.forecast(&[1.0], 5, 0.95).is_ok(),
            "{name} short"
        );
        assert!(model.forecast(&[], 5, 0.95).is_err(), "{name} empty");
        let ok: Vec<f64> = (0..200).map(|t| (t % 7) as f64).collect();
        assert_eq!(
            model.forecast(&ok, 0, 0.95).err(),
            Some(ModelError::InvalidHorizon(0)),
            "{name} horizon"
        );
        assert_eq!(
            model.forecast(&ok, 5, 1.5).err(),
            Some(ModelError::InvalidLevel(1.5)),
            "{name} level"
        );
    }
}

#[test]
fn constant_series_gives_the_constant() {
    let y = vec![3.5; 300];
    for name in MODEL_NAMES {
        let f = by_name(name)
            .expect("known")
            .forecast(&y, 8, 0.95)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(f.mean.len(), 8);
        for k in 0..8 {
            assert!((f.mean[k] - 3.5).abs() < 1e-6, "{name}: {:?}", f.mean);
            assert!(f.lower[k] <= f.mean[k] && f.mean[k] <= f.upper[k], "{name}");
        }
    }
}

#[test]
fn auto_selector_reuses_its_choice_and_reselects_on_change() {
    let y = seasonal(1000, 50, 2.0, 0.1, 11);
    let mut sel = AutoSelector::new(AutoConfig {
        reselect_every: 3,
        ..AutoConfig::default()
    });
    let first = sel.forecast(&y[..900], 15, 0.95).expect("forecast");
    assert!(
        first.model_type.starts_with("auto("),
        "{}",
        first.model_type
    );
    assert!(first.accuracy.is_some_and(|a| (0.0..=1.0).contains(&a)));
    let chosen = sel.selection().expect("selected").clone();
    // Next calls reuse the selection: same model and same interval widths.
    let second = sel.forecast(&y[..901], 15, 0.95).expect("forecast");
    assert_eq!(sel.selection(), Some(&chosen));
    let w1: Vec<f64> = first
        .upper
        .iter()
        .zip(&first.mean)
        .map(|(u, m)| u - m)
        .collect();
    let w2: Vec<f64> = second
        .upper
        .iter()
        .zip(&second.mean)
        .map(|(u, m)| u - m)
        .collect();
    for (a, b) in w1.iter().zip(&w2) {
        assert!((a - b).abs() < 1e-9);
    }
    // A longer horizon forces a new selection.
    let long = sel.forecast(&y[..902], 30, 0.95).expect("forecast");
    assert_eq!(long.mean.len(), 30);
    assert_ne!(sel.selection(), Some(&chosen));
}

#[test]
fn invalid_configuration_is_rejected() {
    let bad = ModelConfig {
        season: Some(1),
        ..ModelConfig::default()
    };
    let y: Vec<f64> = (0..100).map(f64::from).collect();
    for name in MODEL_NAMES {
        let m = by_name_with(name, &bad).expect("known");
        assert!(
            matches!(m.forecast(&y, 3, 0.9), Err(ModelError::InvalidConfig(_))),
            "{name}"
        );
    }
    let mut sel = AutoSelector::new(AutoConfig {
        windows: vec![0],
        ..AutoConfig::default()
    });
    assert!(matches!(
        sel.forecast(&y, 3, 0.9),
        Err(ModelError::InvalidConfig(_))
    ));
    assert!(by_name("no-such-model").is_none());
}

#[test]
fn winsorize_clips_spikes_but_keeps_level_shifts() {
    let mut rng = StdRng::seed_from_u64(12);
    let mut y: Vec<f64> = (0..300).map(|_| 1.0 + 0.1 * normal(&mut rng)).collect();
    y[100] = 50.0;
    for v in y.iter_mut().skip(200) {
        *v += 5.0;
    }
    let w = winsorize(&y);
    assert!(w[100] < 2.0, "spike kept: {}", w[100]);
    // The shifted regime is untouched away from its edge.
    for i in 220..300 {
        assert_eq!(w[i], y[i]);
    }
}
