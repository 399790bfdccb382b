//! Nelder-Mead simplex minimisation for the smoothing and ARMA fits.

/// Minimises `f` from `x0` with initial step `step`; stops after `max_iter`
/// iterations or when the simplex values agree within `tol`. Non-finite
/// objective values are treated as +infinity, so infeasible points are
/// simply rejected.
pub(crate) fn nelder_mead<F>(
    mut f: F,
    x0: &[f64],
    step: f64,
    max_iter: usize,
    tol: f64,
) -> (Vec<f64>, f64)
where
    F: FnMut(&[f64]) -> f64,
{
    let n = x0.len();
    let mut eval = |x: &[f64]| {
        let v = f(x);
        if v.is_finite() {
            v
        } else {
            f64::INFINITY
        }
    };
    if n == 0 {
        let v = eval(x0);
        return (Vec::new(), v);
    }
    let mut pts: Vec<Vec<f64>> = vec![x0.to_vec()];
    for i in 0..n {
        let mut p = x0.to_vec();
        p[i] += step;
        pts.push(p);
    }
    let mut vals: Vec<f64> = pts.iter().map(|p| eval(p)).collect();
    for _ in 0..max_iter {
        let mut idx: Vec<usize> = (0..=n).collect();
        idx.sort_by(|&a, &b| vals[a].total_cmp(&vals[b]));
        pts = idx.iter().map(|&i| pts[i].clone()).collect();
        vals = idx.iter().map(|&i| vals[i]).collect();
        if (vals[n] - vals[0]).abs() <= tol * (vals[0].abs() + tol) {
            break;
        }
        let mut c = vec![0.0; n];
        for p in &pts[..n] {
            for (ci, pi) in c.iter_mut().zip(p) {
                *ci += pi / n as f64;
            }
        }
        let along = |t: f64| -> Vec<f64> {
            c.iter()
                .zip(&pts[n])
                .map(|(ci, wi)| ci + t * (ci - wi))
                .collect()
        };
        let xr = along(1.0);
        let fr = eval(&xr);
        if fr < vals[0] {
            let xe = along(2.0);
            let fe = eval(&xe);
            if fe < fr {
                pts[n] = xe;
                vals[n] = fe;
            } else {
                pts[n] = xr;
                vals[n] = fr;
            }
        } else if fr < vals[n - 1] {
            pts[n] = xr;
            vals[n] = fr;
        } else {
            let (xc, fc) = if fr < vals[n] {
                let x = along(0.5);
                let v = eval(&x);
                (x, v)
            } else {
                let x = along(-0.5);
                let v = eval(&x);
                (x, v)
            };
            if fc < vals[n].min(fr) {
                pts[n] = xc;
                vals[n] = fc;
            } else {
                // Shrink towards the best point.
                let best = pts[0].clone();
                for i in 1..=n {
                    for (pij, bj) in pts[i].iter_mut().zip(&best) {
                        *pij = bj + 0.5 * (*pij - bj);
                    }
                    vals[i] = eval(&pts[i]);
                }
            }
        }
    }
    let best = (0..=n)
        .min_by(|&a, &b| vals[a].total_cmp(&vals[b]))
        .unwrap_or(0);
    (pts[best].clone(), vals[best])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_quadratic_minimum() {
        let (x, v) = nelder_mead(
            |p| (p[0] - 1.0).powi(2) + 10.0 * (p[1] + 2.0).powi(2),
            &[0.0, 0.0],
            0.5,
            500,
            1e-12,
        );
        assert!(
            (x[0] - 1.0).abs() < 1e-3 && (x[1] + 2.0).abs() < 1e-3,
            "{x:?}"
        );
        assert!(v < 1e-6);
    }
}
