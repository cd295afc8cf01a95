//! Dense symmetric factorisations in `f64` for GPTQ (row-major `n × n`).
//!
//! GPTQ needs `U = chol_upper(H⁻¹)` (the upper Cholesky factor of the inverse Hessian).
//! llm-compressor computes it as `cholesky_inverse(cholesky(H))` followed by a second
//! Cholesky. [`inverse_upper_cholesky`] gets the same unique factor with two triangular passes
//! instead of four: with `J` the reversal permutation and `J·H·J = M·Mᵀ` (lower `M`),
//! `H = (JMJ)(JMJ)ᵀ` with `JMJ` upper, so `H⁻¹ = Uᵀ·U` with `U = (JMJ)⁻¹ = J·M⁻¹·J`.
//!
//! Each pass is split across threads by rows (or columns) whose dot products run in a fixed
//! order, so the result does not depend on the thread count.

use rayon::prelude::*;

fn dot(a: &[f64], b: &[f64]) -> f64 {
    // Four independent accumulators (vectorizes), combined in a fixed order.
    let mut acc = [0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..4 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// In-place lower Cholesky factor of the symmetric matrix `a` (only the lower triangle is
/// read; the strict upper triangle is left as it was). `Err(j)` names the first pivot that is
/// not positive and finite.
pub fn cholesky_lower(a: &mut [f64], n: usize) -> std::result::Result<(), usize> {
    assert_eq!(a.len(), n * n, "cholesky_lower: shape");
    for j in 0..n {
        let (head, tail) = a.split_at_mut((j + 1) * n);
        let row_j = &mut head[j * n..(j + 1) * n];
        let d = row_j[j] - dot(&row_j[..j], &row_j[..j]);
        if !(d > 0.0 && d.is_finite()) {
            return Err(j);
        }
        let ljj = d.sqrt();
        row_j[j] = ljj;
        let lj = &row_j[..j];
        tail.par_chunks_mut(n).for_each(|row_i| {
            row_i[j] = (row_i[j] - dot(&row_i[..j], lj)) / ljj;
        });
    }
    Ok(())
}

/// `U = chol_upper(H⁻¹)` for a symmetric positive-definite `h`, as `f64`. `Err(j)`: Cholesky
/// pivot `j` (in the original column order) was not positive.
pub fn inverse_upper_cholesky(h: &[f64], n: usize) -> std::result::Result<Vec<f64>, usize> {
    assert_eq!(h.len(), n * n, "inverse_upper_cholesky: shape");
    // m = J·H·J
    let mut m = vec![0f64; n * n];
    m.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
        let src = &h[(n - 1 - i) * n..(n - i) * n];
        for (j, v) in row.iter_mut().enumerate() {
            *v = src[n - 1 - j];
        }
    });
    inverse_upper_cholesky_reversed(m, n)
}

/// [`inverse_upper_cholesky`] of `H` given `m = J·H·J` (row `i`, column `j` of `m` is
/// `H[n−1−i][n−1−j]`), reusing `m`'s memory for the result: at most two `n × n` buffers are
/// alive at once (the factor and its transposed inverse), which is what bounds GPTQ's memory on
/// wide layers (an `f64` copy of a 53,248-wide Hessian is 22.7 GB).
pub fn inverse_upper_cholesky_reversed(
    mut m: Vec<f64>,
    n: usize,
) -> std::result::Result<Vec<f64>, usize> {
    assert_eq!(m.len(), n * n, "inverse_upper_cholesky: shape");
    cholesky_lower(&mut m, n).map_err(|j| n - 1 - j)?;
    // xt row c = column c of M⁻¹ (forward substitution, one column per task)
    let mut xt = vec![0f64; n * n];
    xt.par_chunks_mut(n).enumerate().for_each(|(c, x)| {
        x[c] = 1.0 / m[c * n + c];
        for i in c + 1..n {
            let row = &m[i * n..(i + 1) * n];
            x[i] = -dot(&row[c..i], &x[c..i]) / row[i];
        }
    });
    // U = J·M⁻¹·J: U[i][j] = M⁻¹[n−1−i][n−1−j] = xt[n−1−j][n−1−i], written over m
    let u = &mut m;
    u.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
        for (j, v) in row.iter_mut().enumerate() {
            *v = if j >= i {
                xt[(n - 1 - j) * n + (n - 1 - i)]
            } else {
                0.0
            };
        }
    });
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spd(n: usize) -> Vec<f64> {
        // A = BᵀB + n·I with a fixed B
        let b: Vec<f64> = (0..n * n)
            .map(|i| ((i * 7919 % 101) as f64 - 50.0) / 50.0)
            .collect();
        let mut a = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = (0..n).map(|k| b[k * n + i] * b[k * n + j]).sum::<f64>()
                    + if i == j { n as f64 } else { 0.0 };
            }
        }
        a
    }

    #[test]
    fn upper_factor_of_the_inverse() {
        for n in [1, 2, 5, 37] {
            let a = spd(n);
            let u = inverse_upper_cholesky(&a, n).unwrap();
            // UᵀU·A = I
            let mut hinv = vec![0f64; n * n];
            for i in 0..n {
                for j in 0..n {
                    hinv[i * n + j] = (0..n).map(|k| u[k * n + i] * u[k * n + j]).sum();
                }
            }
            for i in 0..n {
                assert!(u[i * n + i] > 0.0);
                for j in 0..i {
                    assert_eq!(u[i * n + j], 0.0);
                }
                for j in 0..n {
                    let p: f64 = (0..n).map(|k| hinv[i * n + k] * a[k * n + j]).sum();
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!((p - want).abs() < 1e-10, "n={n} ({i},{j}) {p}");
                }
            }
        }
    }

    #[test]
    fn not_positive_definite_names_the_pivot() {
        let a = vec![1.0, 2.0, 2.0, 1.0]; // eigenvalues 3, −1
        assert_eq!(inverse_upper_cholesky(&a, 2), Err(0));
        let mut l = a.clone();
        assert_eq!(cholesky_lower(&mut l, 2), Err(1));
    }
}
