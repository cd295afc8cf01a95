//! AVX2 lanes for the K-quant scale searches: the sub-blocks of one 256-element super-block run
//! side by side, one sub-block per 32-bit lane, so each lane performs exactly the scalar port's
//! operations in the same order and the bytes stay identical to llama.cpp's.
//!
//! Why this is exact: the scalar searches (`make_qkx_quants`, `make_qx_quants`) are sequential
//! `f32` reductions over the elements of *one* sub-block. Here the 8×32 (or 8×16) block is
//! transposed so that vector `i` holds element `i` of eight sub-blocks; every reduction still
//! runs over `i` in index order, within its own lane. Nothing is reassociated and nothing is
//! fused: `_mm256_mul_ps` then `_mm256_add_ps` round twice, as `a * b + c` does in Rust (which
//! never contracts). The scalar port's data-dependent branches become per-lane masks and blends:
//! a lane that would have left early still computes (masked garbage, never a trap: the MXCSR
//! exceptions are masked) and its result is replaced by the early-exit value at the end.
//!
//! Operand order matters where IEEE min/max and signed zeros do: `_mm256_min_ps(a, b)` is
//! `a < b ? a : b`, which is the scalar `if x < min { min = x }` with `a = x`; the `if min > 0
//! { min = 0 }` clamp is a compare and blend (not a `min`), so −0.0 stays −0.0.
//!
//! Only compiled on x86_64; callers check [`available`] (runtime detection, cached by std) and
//! fall back to the scalar port, which stays the reference.
#![allow(unsafe_code)] // std::arch intrinsics; every entry point checks AVX2 first (see each SAFETY)

use std::arch::x86_64::{
    __m256, __m256i, _mm256_add_ps, _mm256_and_ps, _mm256_and_si256, _mm256_andnot_ps,
    _mm256_blendv_ps, _mm256_castps_si256, _mm256_cmp_ps, _mm256_cvtepi32_ps, _mm256_cvttps_epi32,
    _mm256_div_ps, _mm256_loadu_ps, _mm256_max_epi32, _mm256_max_ps, _mm256_min_epi32,
    _mm256_min_ps, _mm256_mul_ps, _mm256_set1_epi32, _mm256_set1_ps, _mm256_setzero_ps,
    _mm256_sqrt_ps, _mm256_storeu_ps, _mm256_storeu_si256, _mm256_sub_epi32, _mm256_sub_ps,
    _mm256_xor_ps, _CMP_EQ_OQ, _CMP_GT_OQ, _CMP_LE_OQ, _CMP_LT_OQ,
};

use super::{Search, GROUP_MAX_EPS, QK_K};

/// Whether this CPU runs the AVX2 paths (std caches the CPUID probe).
#[inline]
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx2")
}

type V = __m256;

#[inline]
#[target_feature(enable = "avx2")]
unsafe fn splat(v: f32) -> V {
    _mm256_set1_ps(v)
}

/// ggml's `nearest_int` on eight lanes: the same 1.5·2²³ bit trick as the scalar port.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn nearest_int(v: V) -> __m256i {
    let val = _mm256_add_ps(v, _mm256_set1_ps(12_582_912.0));
    _mm256_sub_epi32(
        _mm256_and_si256(_mm256_castps_si256(val), _mm256_set1_epi32(0x007F_FFFF)),
        _mm256_set1_epi32(0x0040_0000),
    )
}

/// `l.clamp(lo, hi)` on i32 lanes, as `f32` (`l as f32`, exact for these small integers).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn clamp_to_f32(l: __m256i, lo: i32, hi: i32) -> V {
    _mm256_cvtepi32_ps(_mm256_min_epi32(
        _mm256_max_epi32(l, _mm256_set1_epi32(lo)),
        _mm256_set1_epi32(hi),
    ))
}

/// `mask ? b : a` per lane.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn select(mask: V, b: V, a: V) -> V {
    _mm256_blendv_ps(a, b, mask)
}

#[inline]
#[target_feature(enable = "avx2")]
unsafe fn abs(v: V) -> V {
    _mm256_andnot_ps(_mm256_set1_ps(-0.0), v)
}

#[inline]
#[target_feature(enable = "avx2")]
unsafe fn to_array(v: V) -> [f32; 8] {
    let mut a = [0f32; 8];
    _mm256_storeu_ps(a.as_mut_ptr(), v);
    a
}

/// Vector `i` of the result holds `x[stride * lane + i]` for the eight lanes.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn transpose<const N: usize>(x: &[f32], stride: usize) -> [V; N] {
    let mut t = [[0f32; 8]; N];
    for (lane, block) in x.chunks_exact(stride).take(8).enumerate() {
        for i in 0..N {
            t[i][lane] = block[i];
        }
    }
    let mut v = [_mm256_setzero_ps(); N];
    for i in 0..N {
        v[i] = _mm256_loadu_ps(t[i].as_ptr());
    }
    v
}

/// `make_qkx_quants(32, nmax, x, w, …)` for the eight 32-element sub-blocks at once (lane `j`
/// is sub-block `j`), with `p.nstep ≥ 1` and `p.use_mad == false` (the Q4_K/Q5_K callers).
/// Returns per lane the scale, `the_min`, and the quants (`l[i]` lane `j` = `L[32j + i]`).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn make_qkx_quants_x8(
    nmax: i32,
    x: &[V; 32],
    w: &[V; 32],
    p: Search,
    qkx3: bool,
) -> (V, V, [V; 32]) {
    let zero = _mm256_setzero_ps();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = w[0];
    let mut sum_x = _mm256_mul_ps(sum_w, x[0]);
    for i in 1..32 {
        min = _mm256_min_ps(x[i], min); // x < min ? x : min
        max = _mm256_max_ps(x[i], max); // x > max ? x : max
        sum_w = _mm256_add_ps(sum_w, w[i]);
        sum_x = _mm256_add_ps(sum_x, _mm256_mul_ps(w[i], x[i]));
    }
    min = select(_mm256_cmp_ps::<_CMP_GT_OQ>(min, zero), zero, min);
    let done = if qkx3 {
        _mm256_cmp_ps::<_CMP_LE_OQ>(max, min)
    } else {
        _mm256_cmp_ps::<_CMP_EQ_OQ>(max, min)
    };
    let early_min = min;
    let nmaxf = nmax as f32;
    let range = _mm256_sub_ps(max, min);
    let iscale = _mm256_div_ps(splat(nmaxf), range);
    let mut scale = _mm256_div_ps(splat(1.0), iscale);
    let mut best_error = zero;
    let mut l_out = [zero; 32];
    for i in 0..32 {
        let lf = clamp_to_f32(
            nearest_int(_mm256_mul_ps(iscale, _mm256_sub_ps(x[i], min))),
            0,
            nmax,
        );
        l_out[i] = lf;
        let mut diff = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(scale, lf), min), x[i]);
        diff = _mm256_mul_ps(diff, diff);
        best_error = _mm256_add_ps(best_error, _mm256_mul_ps(w[i], diff));
    }
    let mut laux = [zero; 32];
    for is in 0..=p.nstep {
        let iscale = _mm256_div_ps(
            splat(p.rmin + p.rdelta * is as f32 + nmaxf),
            _mm256_sub_ps(max, min),
        );
        let (mut sum_l, mut sum_l2, mut sum_xl) = (zero, zero, zero);
        for i in 0..32 {
            let lf = clamp_to_f32(
                nearest_int(_mm256_mul_ps(iscale, _mm256_sub_ps(x[i], min))),
                0,
                nmax,
            );
            laux[i] = lf;
            let wl = _mm256_mul_ps(w[i], lf);
            sum_l = _mm256_add_ps(sum_l, wl);
            sum_l2 = _mm256_add_ps(sum_l2, _mm256_mul_ps(wl, lf));
            sum_xl = _mm256_add_ps(sum_xl, _mm256_mul_ps(wl, x[i]));
        }
        let d = _mm256_sub_ps(_mm256_mul_ps(sum_w, sum_l2), _mm256_mul_ps(sum_l, sum_l));
        let d_pos = _mm256_cmp_ps::<_CMP_GT_OQ>(d, zero);
        let mut this_scale = _mm256_div_ps(
            _mm256_sub_ps(_mm256_mul_ps(sum_w, sum_xl), _mm256_mul_ps(sum_x, sum_l)),
            d,
        );
        let mut this_min = _mm256_div_ps(
            _mm256_sub_ps(_mm256_mul_ps(sum_l2, sum_x), _mm256_mul_ps(sum_l, sum_xl)),
            d,
        );
        let min_pos = _mm256_cmp_ps::<_CMP_GT_OQ>(this_min, zero);
        this_min = select(min_pos, zero, this_min);
        this_scale = select(min_pos, _mm256_div_ps(sum_xl, sum_l2), this_scale);
        let mut cur_error = zero;
        for i in 0..32 {
            let mut diff = _mm256_sub_ps(
                _mm256_add_ps(_mm256_mul_ps(this_scale, laux[i]), this_min),
                x[i],
            );
            diff = _mm256_mul_ps(diff, diff);
            cur_error = _mm256_add_ps(cur_error, _mm256_mul_ps(w[i], diff));
        }
        let better = _mm256_and_ps(d_pos, _mm256_cmp_ps::<_CMP_LT_OQ>(cur_error, best_error));
        for i in 0..32 {
            l_out[i] = select(better, laux[i], l_out[i]);
        }
        best_error = select(better, cur_error, best_error);
        scale = select(better, this_scale, scale);
        min = select(better, this_min, min);
    }
    for l in &mut l_out {
        *l = select(done, zero, *l);
    }
    min = select(done, early_min, min);
    scale = select(done, zero, scale);
    // the_min = -min: flip the sign bit, as unary minus does
    let the_min = _mm256_xor_ps(min, _mm256_set1_ps(-0.0));
    (scale, the_min, l_out)
}

/// The eight lanes' quants back in element order: `out[32 j + i] = l[i]` lane `j`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn store_quants<const N: usize>(l: &[V; N], out: &mut [u8]) {
    for i in 0..N {
        let q = _mm256_cvttps_epi32(l[i]);
        let mut a = [0i32; 8];
        _mm256_storeu_si256(a.as_mut_ptr().cast(), q);
        for (lane, &v) in a.iter().enumerate() {
            out[N * lane + i] = v as u8;
        }
    }
}

/// The sub-block search of `k4_scales` (Q4_K/Q5_K, reference or importance path) on eight
/// lanes: per sub-block `j` its scale, its min, the sum of its weights (importance path only;
/// zero otherwise), and the provisional quants of the whole super-block.
///
/// `x` is one super-block (256 values); `imatrix`, if given, its 256 importance weights.
pub(super) fn k4_search(
    x: &[f32],
    nmax: i32,
    imatrix: Option<&[f32]>,
    sigma2: f32,
    p: Search,
) -> ([f32; 8], [f32; 8], [f32; 8], [u8; QK_K]) {
    assert!(available() && x.len() >= QK_K);
    // SAFETY: AVX2 is present (checked above); all memory access is through slices and arrays.
    unsafe { k4_search_avx2(x, nmax, imatrix, sigma2, p) }
}

#[target_feature(enable = "avx2")]
unsafe fn k4_search_avx2(
    x: &[f32],
    nmax: i32,
    imatrix: Option<&[f32]>,
    sigma2: f32,
    p: Search,
) -> ([f32; 8], [f32; 8], [f32; 8], [u8; QK_K]) {
    let xt: [V; 32] = transpose(&x[..QK_K], 32);
    let mut w = [_mm256_setzero_ps(); 32];
    let mut sw = _mm256_setzero_ps();
    let qkx3 = if let Some(qw) = imatrix {
        // weights[i] = qw[i] * sqrtf(sigma2 + x[i]*x[i]); sw[j] = Σ weights in index order
        let qt: [V; 32] = transpose(&qw[..QK_K], 32);
        for i in 0..32 {
            let s = _mm256_sqrt_ps(_mm256_add_ps(splat(sigma2), _mm256_mul_ps(xt[i], xt[i])));
            w[i] = _mm256_mul_ps(qt[i], s);
            sw = _mm256_add_ps(sw, w[i]);
        }
        true
    } else {
        // av_x = sqrtf(Σx²/32); weights[i] = av_x + fabsf(x[i])
        let mut s = _mm256_setzero_ps();
        for v in &xt {
            s = _mm256_add_ps(s, _mm256_mul_ps(*v, *v));
        }
        let av_x = _mm256_sqrt_ps(_mm256_div_ps(s, splat(32.0)));
        for i in 0..32 {
            w[i] = _mm256_add_ps(av_x, abs(xt[i]));
        }
        false
    };
    let (scale, the_min, l) = make_qkx_quants_x8(nmax, &xt, &w, p, qkx3);
    let mut q = [0u8; QK_K];
    store_quants(&l, &mut q);
    (to_array(scale), to_array(the_min), to_array(sw), q)
}

/// One rounding pass of `make_qx_quants` at `iscale`: `l[i] = clamp(nearest_int(iscale·x[i]),
/// −nmax, nmax−1)` and the weighted sums `(Σ w·x·l, Σ w·l·l)`, in the scalar port's order.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn qx_round(iscale: V, nmax: i32, x: &[V; 16], wt: &[V; 16], l: &mut [V; 16]) -> (V, V) {
    let zero = _mm256_setzero_ps();
    let (mut sumlx, mut suml2) = (zero, zero);
    for i in 0..16 {
        let lf = clamp_to_f32(nearest_int(_mm256_mul_ps(iscale, x[i])), -nmax, nmax - 1);
        l[i] = lf;
        let w = wt[i];
        sumlx = _mm256_add_ps(sumlx, _mm256_mul_ps(_mm256_mul_ps(w, x[i]), lf));
        suml2 = _mm256_add_ps(suml2, _mm256_mul_ps(_mm256_mul_ps(w, lf), lf));
    }
    (sumlx, suml2)
}

/// `make_qx_quants(16, 32, x, L, rmse_type 1, qw)` (Q6_K's search) for eight 16-element
/// sub-blocks at once; returns the scales and the quants (`L + 32`, element order).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn make_qx_quants_x8(x: &[V; 16], qw: Option<&[V; 16]>) -> (V, [V; 16]) {
    const NMAX: i32 = 32;
    let zero = _mm256_setzero_ps();
    let (mut amax, mut max) = (zero, zero);
    for v in x {
        let ax = abs(*v);
        let gt = _mm256_cmp_ps::<_CMP_GT_OQ>(ax, amax);
        amax = select(gt, ax, amax);
        max = select(gt, *v, max);
    }
    let done = _mm256_cmp_ps::<_CMP_LT_OQ>(amax, splat(GROUP_MAX_EPS));
    let nmaxf = NMAX as f32;
    // qx_weight: the importance weight, or x² (rmse_type 1)
    let mut wt = [zero; 16];
    for i in 0..16 {
        wt[i] = match qw {
            Some(w) => w[i],
            None => _mm256_mul_ps(x[i], x[i]),
        };
    }
    let mut l_out = [zero; 16];
    let iscale = _mm256_div_ps(splat(-nmaxf), max);
    let (sumlx, suml2) = qx_round(iscale, NMAX, x, &wt, &mut l_out);
    let mut scale = select(
        _mm256_cmp_ps::<_CMP_EQ_OQ>(suml2, zero),
        zero,
        _mm256_div_ps(sumlx, suml2),
    );
    let mut best = _mm256_mul_ps(scale, sumlx);
    let mut laux = [zero; 16];
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        let iscale = _mm256_div_ps(splat(-(nmaxf + 0.1 * is as f32)), max);
        let (sumlx, suml2) = qx_round(iscale, NMAX, x, &wt, &mut laux);
        let better = _mm256_and_ps(
            _mm256_cmp_ps::<_CMP_GT_OQ>(suml2, zero),
            _mm256_cmp_ps::<_CMP_GT_OQ>(_mm256_mul_ps(sumlx, sumlx), _mm256_mul_ps(best, suml2)),
        );
        for i in 0..16 {
            l_out[i] = select(better, laux[i], l_out[i]);
        }
        scale = select(better, _mm256_div_ps(sumlx, suml2), scale);
        best = select(better, _mm256_mul_ps(scale, sumlx), best);
    }
    // quants are stored offset by nmax; an early-exit lane stores 0 (not 0 + nmax)
    let off = splat(nmaxf);
    for l in &mut l_out {
        *l = select(done, zero, _mm256_add_ps(*l, off));
    }
    (select(done, zero, scale), l_out)
}

/// Q6_K's sixteen `make_qx_quants(16, 32, …, 1, qw)` searches of one super-block, in two
/// groups of eight lanes: the sixteen scales and the quants (`L + 32`, element order, as
/// `i8`).
pub(super) fn q6_search(x: &[f32], imatrix: Option<&[f32]>) -> ([f32; 16], [i8; QK_K]) {
    assert!(available() && x.len() >= QK_K);
    // SAFETY: AVX2 is present (checked above); all memory access is through slices and arrays.
    unsafe { q6_search_avx2(x, imatrix) }
}

#[target_feature(enable = "avx2")]
unsafe fn q6_search_avx2(x: &[f32], imatrix: Option<&[f32]>) -> ([f32; 16], [i8; QK_K]) {
    let mut scales = [0f32; 16];
    let mut l = [0u8; QK_K];
    for g in 0..2 {
        let r = 128 * g..128 * g + 128;
        let xt: [V; 16] = transpose(&x[r.clone()], 16);
        let qt: Option<[V; 16]> = imatrix.map(|w| transpose(&w[r.clone()], 16));
        let (s, lq) = make_qx_quants_x8(&xt, qt.as_ref());
        scales[8 * g..8 * g + 8].copy_from_slice(&to_array(s));
        store_quants(&lq, &mut l[r]);
    }
    (scales, l.map(|v| v as i8))
}
