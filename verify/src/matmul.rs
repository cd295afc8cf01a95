//! `y = x · Wᵀ` on the CPU. `f32` (the evaluation forward) runs qforge's own packed kernel,
//! [`crate::gemm`] (AVX-512 / AVX2+FMA / portable, chosen at run time, the same bits on each
//! and for any thread count). `f64` (`calibrate --precision f64`) runs `matrixmultiply`'s
//! `dgemm`, split into fixed blocks that rayon runs in parallel ([`blocked`]).

use rayon::prelude::*;

use crate::real::Real;

/// Rows of `x` per parallel block when splitting over rows.
const ROW_BLOCK: usize = 64;
/// Columns of `y` (rows of `W`) per parallel block when splitting over columns.
const COL_BLOCK: usize = 512;

/// `y[m, n] = x[m, k] · w[n, k]ᵀ` (all row-major, contiguous), overwriting `y`.
///
/// # Panics
/// If a slice is shorter than its shape says (a caller bug).
pub fn matmul_t<T: Real>(x: &[T], m: usize, k: usize, w: &[T], n: usize, y: &mut [T]) {
    T::matmul_t(x, m, k, w, n, y);
}

/// [`matmul_t`] through [`Real::gemm`] on fixed blocks in parallel.
///
/// Determinism: the blocks depend only on the shapes (never on the thread count), and each
/// output element is computed entirely inside one block by one `gemm` call, whose reduction
/// order over `k` depends only on `k`. So the result is bit-identical for any number of threads.
///
/// Large outputs (the LM head) are split over `n` so each block streams its share of `W`
/// once; the rest over `m`.
///
/// # Panics
/// If a slice is shorter than its shape says (a caller bug).
pub fn blocked<T: Real>(x: &[T], m: usize, k: usize, w: &[T], n: usize, y: &mut [T]) {
    assert!(
        x.len() >= m * k && w.len() >= n * k && y.len() >= m * n,
        "matmul shapes"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        y[..m * n].fill(T::ZERO);
        return;
    }
    let y = &mut y[..m * n];
    if n >= 8 * COL_BLOCK {
        // Split over output columns: block j writes columns [j·B, (j+1)·B) of every row.
        let yp = SendPtr(y.as_mut_ptr());
        (0..n.div_ceil(COL_BLOCK)).into_par_iter().for_each(|j| {
            let c0 = j * COL_BLOCK;
            let nc = COL_BLOCK.min(n - c0);
            let yp = &yp;
            // SAFETY: blocks write disjoint column ranges of `y`, which outlives the loop;
            // `gemm` reads `x` and `w` within the asserted bounds (row stride k, col stride 1).
            #[allow(unsafe_code)]
            unsafe {
                T::gemm(
                    m,
                    k,
                    nc,
                    x.as_ptr(),
                    k as isize,
                    1,
                    w.as_ptr().add(c0 * k),
                    1,
                    k as isize,
                    yp.0.add(c0),
                    n as isize,
                );
            }
        });
    } else {
        y.par_chunks_mut(ROW_BLOCK * n)
            .enumerate()
            .for_each(|(i, yb)| {
                let r0 = i * ROW_BLOCK;
                let mr = yb.len() / n;
                // SAFETY: `yb` is this block's rows; `x` rows r0..r0+mr and all of `w` are in
                // bounds by the assertion above.
                #[allow(unsafe_code)]
                unsafe {
                    T::gemm(
                        mr,
                        k,
                        n,
                        x.as_ptr().add(r0 * k),
                        k as isize,
                        1,
                        w.as_ptr(),
                        1,
                        k as isize,
                        yb.as_mut_ptr(),
                        n as isize,
                    );
                }
            });
    }
}

struct SendPtr<T>(*mut T);
// SAFETY: only used to hand disjoint column ranges of one buffer to rayon workers.
#[allow(unsafe_code)]
unsafe impl<T> Sync for SendPtr<T> {}
#[allow(unsafe_code)]
unsafe impl<T> Send for SendPtr<T> {}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f64> {
        let mut y = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                y[i * n + j] = (0..k)
                    .map(|l| f64::from(x[i * k + l]) * f64::from(w[j * k + l]))
                    .sum();
            }
        }
        y
    }

    fn data(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    #[test]
    fn matches_f64_reference_on_both_split_paths() {
        // (m, k, n): row split with a ragged last block; column split (n ≥ 8·COL_BLOCK).
        for &(m, k, n) in &[(130usize, 37usize, 21usize), (5, 16, 8 * COL_BLOCK + 3)] {
            let x = data(m * k, 1);
            let w = data(n * k, 2);
            let mut y = vec![f32::NAN; m * n];
            matmul_t(&x, m, k, &w, n, &mut y);
            let r = naive(&x, m, k, &w, n);
            // Each term is < 0.25 in magnitude; f32 accumulation over k terms errs by at most
            // about k·2⁻²⁴·Σ|terms| ≤ 1e-5 here.
            let err = y
                .iter()
                .zip(&r)
                .map(|(a, b)| (f64::from(*a) - b).abs())
                .fold(0.0, f64::max);
            assert!(err < 1e-5, "max abs error {err} for {m}x{k}x{n}");
        }
    }

    #[test]
    fn identical_for_any_thread_count() {
        let (m, k, n) = (200, 64, 96);
        let x = data(m * k, 3);
        let w = data(n * k, 4);
        let run = |t| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .unwrap();
            let mut y = vec![0f32; m * n];
            pool.install(|| matmul_t(&x, m, k, &w, n, &mut y));
            y
        };
        let one = run(1);
        assert_eq!(one, run(3));
    }
}
