//! Small dense linear algebra for the regression-based models.

/// Solves the ridge least-squares problem `min |X b - y|^2 + sum_j
/// penalty[j] b_j^2` through the normal equations and a Cholesky factor.
/// `x` is row-major with `p` columns. Returns `None` when the system is not
/// positive definite even after a tiny jitter.
pub(crate) fn ridge(x: &[f64], y: &[f64], p: usize, penalty: &[f64]) -> Option<Vec<f64>> {
    let n = y.len();
    if p == 0 || x.len() != n * p || penalty.len() != p {
        return None;
    }
    let mut a = vec![0.0; p * p];
    let mut b = vec![0.0; p];
    for (row, &yi) in x.chunks_exact(p).zip(y) {
        for i in 0..p {
            let xi = row[i];
            if xi == 0.0 {
                continue;
            }
            b[i] += xi * yi;
            for j in i..p {
                a[i * p + j] += xi * row[j];
            }
        }
    }
    for i in 0..p {
        for j in 0..i {
            a[i * p + j] = a[j * p + i];
        }
        a[i * p + i] += penalty[i];
    }
    let scale = (0..p)
        .map(|i| a[i * p + i].abs())
        .fold(0.0, f64::max)
        .max(1e-300);
    for jitter in [0.0, 1e-10, 1e-7] {
        let mut m = a.clone();
        for i in 0..p {
            m[i * p + i] += jitter * scale;
        }
        if let Some(sol) = cholesky_solve(&mut m, &b, p) {
            return Some(sol);
        }
    }
    None
}

/// Solves `A x = b` for symmetric positive definite `A` (overwritten).
pub(crate) fn cholesky_solve(a: &mut [f64], b: &[f64], p: usize) -> Option<Vec<f64>> {
    for j in 0..p {
        let mut d = a[j * p + j];
        for k in 0..j {
            d -= a[j * p + k] * a[j * p + k];
        }
        if d.is_nan() || d <= 0.0 || !d.is_finite() {
            return None;
        }
        let d = d.sqrt();
        a[j * p + j] = d;
        for i in j + 1..p {
            let mut s = a[i * p + j];
            for k in 0..j {
                s -= a[i * p + k] * a[j * p + k];
            }
            a[i * p + j] = s / d;
        }
    }
    let mut z = vec![0.0; p];
    for i in 0..p {
        let mut s = b[i];
        for k in 0..i {
            s -= a[i * p + k] * z[k];
        }
        z[i] = s / a[i * p + i];
    }
    let mut x = vec![0.0; p];
    for i in (0..p).rev() {
        let mut s = z[i];
        for k in i + 1..p {
            s -= a[k * p + i] * x[k];
        }
        x[i] = s / a[i * p + i];
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_exact_linear_fit() {
        // y = 2 + 3 x
        let xs: Vec<f64> = (0..10).flat_map(|i| [1.0, f64::from(i)]).collect();
        let ys: Vec<f64> = (0..10).map(|i| 2.0 + 3.0 * f64::from(i)).collect();
        let b = ridge(&xs, &ys, 2, &[0.0, 0.0]).expect("solvable");
        assert!((b[0] - 2.0).abs() < 1e-9 && (b[1] - 3.0).abs() < 1e-9);
    }

    #[test]
    fn singular_system_without_penalty_is_handled() {
        let xs = vec![1.0, 1.0, 1.0, 1.0];
        let ys = vec![1.0, 2.0];
        // Two identical columns: jitter makes it solvable or it says no.
        let _ = ridge(&xs, &ys, 2, &[0.0, 0.0]);
        assert!(ridge(&xs, &ys, 2, &[1.0, 1.0]).is_some());
    }
}
