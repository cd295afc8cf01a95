//! llama.cpp's CPU arithmetic where the forward's own `f32` differs from it in the last bits:
//! the flash attention llama-perplexity runs by default (`-fa auto` → on for the CPU), over the
//! F16 KV cache. Used by `--ggml-cpu-ops` for bit-level comparisons with llama.cpp; with
//! `--ggml-act-quant` every rounding decision of the next linear's Q8 activation quantization
//! depends on these last bits, so a 1-ulp difference here moves the perplexity by ~1e-3.
//!
//! Source: ggml/src/ggml-cpu/ops.cpp of the llama.cpp tree pinned by scripts/build-llama-cpp.sh
//! (`ggml_compute_forward_flash_attn_ext_f16`: with `F32` Q, `F16` K/V and 64 or more query
//! rows it runs `ggml_compute_forward_flash_attn_ext_tiled`), simd-gemm.h (`simd_gemm`),
//! vec.cpp (`ggml_vec_soft_max_f32`) and vec.h (`ggml_v_expf`, AVX2 + FMA).

// `#[inline(always)]` below: the arithmetic must be compiled inside `block_fma`'s
// `target_feature(enable = "avx2,fma")`, where `mul_add` is one `vfmadd` instead of a libm call.
#![allow(clippy::inline_always)]

use rayon::prelude::*;

use crate::ops::KeyMask;
use crate::real::Real;

/// `GGML_FA_TILE_Q` (query rows per tile; only the work split: each row's result is its own).
const TILE_Q: usize = 64;
/// `GGML_FA_TILE_KV`: keys per tile; the online softmax rescales between these tiles.
const TILE_KV: usize = 64;

const fn f(bits: u32) -> f32 {
    f32::from_bits(bits)
}

/// One lane of ggml's `ggml_v_expf` (vec.h, the `__AVX2__ && __FMA__` branch; ARM NEON's and
/// AVX-512's versions compute the same formula): `2^n · (1 + j)` from a degree-5 polynomial,
/// the slow path for `|n| > 126` (underflow to 0 below −192).
#[inline(always)]
pub fn v_expf(x: f32) -> f32 {
    let r = f(0x4b40_0000); // 0x1.8p23f
    let z = x.mul_add(f(0x3fb8_aa3b), r); // 0x1.715476p+0f
    let n = z - r;
    // fnmadd(a, b, c) = −(a·b) + c, one rounding
    let b = (-n).mul_add(f(0x35bf_be8e), (-n).mul_add(f(0x3f31_7200), x));
    let e = z.to_bits() << 23;
    let k = f32::from_bits(e.wrapping_add(1f32.to_bits()));
    let u = b * b;
    let j = f(0x3c07_2010)
        .mul_add(b, f(0x3d2b_9f17))
        .mul_add(u, f(0x3e2a_af33).mul_add(b, f(0x3eff_fedb)))
        .mul_add(u, f(0x3f7f_fff6) * b);
    if n.abs() <= 126.0 {
        return j.mul_add(k, k);
    }
    let g: u32 = if n <= 0.0 { 0x8200_0000 } else { 0 };
    let s1 = f32::from_bits(g.wrapping_add(0x7f00_0000));
    let s2 = f32::from_bits(e.wrapping_sub(g));
    if n.abs() > 192.0 {
        s1 * s1
    } else {
        s2.mul_add(j, s2) * s1
    }
}

/// `ggml_vec_soft_max_f32` on one tile row (AVX2: 8 lanes): `y = v_expf(x − max)`, and the
/// sum of each group of 8 in the order `_mm256_extractf128_ps` / `movehl` / `movehdup` add
/// them, accumulated over the groups in `f64`.
#[inline(always)]
fn soft_max_tile(row: &mut [f32; TILE_KV], max: f32) -> f64 {
    let mut sum = 0f64;
    for g in row.chunks_exact_mut(8) {
        for v in g.iter_mut() {
            *v = v_expf(*v - max);
        }
        let a = [g[0] + g[4], g[1] + g[5], g[2] + g[6], g[3] + g[7]];
        let s = (a[0] + a[2]) + (a[1] + a[3]);
        sum += f64::from(s);
    }
    sum
}

/// Keys visible from query row `i` (`first..=i`).
fn first_key(mask: KeyMask, i: usize) -> usize {
    match mask {
        KeyMask::Causal => 0,
        KeyMask::Window(w) => (i + 1).saturating_sub(w),
        KeyMask::Chunk(c) => i / c.max(1) * c.max(1),
    }
}

/// One query row of `ggml_compute_forward_flash_attn_ext_tiled`: for each 64-key tile holding
/// a visible key, `KQ = (Σ_d fma chain of q·k) · scale` (`simd_gemm`: one FMA chain per output
/// over `d` in order), masked keys `−∞`; `M ← max(M, tile max)`, rescaling `VKQ` and `S` by
/// `expf(M_old − M)` when it grows; `S += soft_max(KQ − M)` (stored back as `f32`); `VKQ[d]`
/// continues one FMA chain over the tile's keys in order. At the end `VKQ · (1 / S)`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn row(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    kw: usize,
    hd: usize,
    first: usize,
    last: usize,
    scale: f32,
    out: &mut [f32],
) {
    let (mut m, mut s) = (f32::NEG_INFINITY, 0f32);
    let vkq = out;
    vkq.fill(0.0);
    let mut kq = [0f32; TILE_KV];
    let mut kt = first / TILE_KV * TILE_KV;
    while kt <= last {
        let mut tile_max = f32::NEG_INFINITY;
        for (tk, x) in kq.iter_mut().enumerate() {
            let j = kt + tk;
            *x = if j < first || j > last {
                f32::NEG_INFINITY
            } else {
                let kr = &k[j * kw..j * kw + hd];
                let mut acc = 0f32;
                for (a, b) in q.iter().zip(kr) {
                    acc = a.mul_add(*b, acc);
                }
                acc * scale
            };
            tile_max = tile_max.max(*x);
        }
        if tile_max != f32::NEG_INFINITY {
            let m_new = m.max(tile_max);
            if m_new > m {
                let ms = (m - m_new).exp();
                for x in vkq.iter_mut() {
                    *x *= ms;
                }
                s *= ms;
            }
            m = m_new;
            s = (f64::from(s) + soft_max_tile(&mut kq, m_new)) as f32;
            for (tk, p) in kq.iter().enumerate() {
                let j = kt + tk;
                if j < first || j > last {
                    // exp(−∞) = 0 adds nothing: fma(0, v, acc) = acc
                    continue;
                }
                let vr = &v[j * kw..j * kw + hd];
                for (a, b) in vkq.iter_mut().zip(vr) {
                    *a = p.mul_add(*b, *a);
                }
            }
        }
        kt += TILE_KV;
    }
    let inv = if s == 0.0 { 0.0 } else { 1.0 / s };
    for x in vkq.iter_mut() {
        *x *= inv;
    }
}

/// Rows `r0..r0 + rows` of head `h` into `o` (`[rows, hd]`).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn block(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: (usize, usize, usize),
    r0: usize,
    h: usize,
    scale: f32,
    mask: KeyMask,
    o: &mut [f32],
) {
    let (heads, kvh, hd) = shape;
    let (qw, kw) = (heads * hd, kvh * hd);
    let kh = h / (heads / kvh);
    for (i, orow) in o.chunks_exact_mut(hd).enumerate() {
        let p = r0 + i;
        let qr = &q[p * qw + h * hd..][..hd];
        row(
            qr,
            &k[kh * hd..],
            &v[kh * hd..],
            kw,
            hd,
            first_key(mask, p),
            p,
            scale,
            orow,
        );
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
#[allow(unsafe_code)]
unsafe fn block_fma(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: (usize, usize, usize),
    r0: usize,
    h: usize,
    scale: f32,
    mask: KeyMask,
    o: &mut [f32],
) {
    block(q, k, v, shape, r0, h, scale, mask, o);
}

/// ggml-cpu's flash attention (see the module doc) over one sequence of `t` tokens: `q` is
/// `[t, heads·hd]` (RoPE applied), `k`/`v` are `[t, kv_heads·hd]` holding f16 values (the KV
/// cache), `out` is `[t, heads·hd]`. Same bits for any thread count (each row is computed on
/// its own); the hardware FMA is used where present, `f32::mul_add` (same bits) otherwise.
///
/// # Panics
/// If the slices do not match the shapes (a caller bug).
#[allow(clippy::too_many_arguments)]
pub fn flash_attn_ext(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    t: usize,
    heads: usize,
    kv_heads: usize,
    hd: usize,
    scale: f32,
    mask: KeyMask,
    out: &mut [f32],
) {
    let (qw, kw) = (heads * hd, kv_heads * hd);
    assert!(
        q.len() == t * qw && k.len() == t * kw && v.len() == t * kw && out.len() == t * qw,
        "attention shapes"
    );
    assert!(kv_heads > 0 && heads % kv_heads == 0, "heads % kv_heads");
    #[cfg(target_arch = "x86_64")]
    let fma =
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
    let shape = (heads, kv_heads, hd);
    let nblocks = t.div_ceil(TILE_Q);
    let parts: Vec<(usize, usize, Vec<f32>)> = (0..nblocks * heads)
        .into_par_iter()
        .map(|task| {
            let (b, h) = (task / heads, task % heads);
            let r0 = b * TILE_Q;
            let rows = TILE_Q.min(t - r0);
            let mut o = vec![0f32; rows * hd];
            #[cfg(target_arch = "x86_64")]
            if fma {
                // SAFETY: the CPU has AVX2 and FMA (checked above).
                #[allow(unsafe_code)]
                unsafe {
                    block_fma(q, k, v, shape, r0, h, scale, mask, &mut o);
                }
                return (r0, h, o);
            }
            block(q, k, v, shape, r0, h, scale, mask, &mut o);
            (r0, h, o)
        })
        .collect();
    for (r0, h, o) in parts {
        for (i, row) in o.chunks_exact(hd).enumerate() {
            out[(r0 + i) * qw + h * hd..][..hd].copy_from_slice(row);
        }
    }
}

/// ggml's `rms_norm` followed by `mul` (ops.cpp `ggml_compute_forward_rms_norm_f32`): the
/// squares in `f32`, summed in `f64` in order, `mean` rounded to `f32`,
/// `scale = 1 / sqrtf(mean + eps)`, `y = x · scale · w`; per row of `width`, in place.
pub fn rms_norm(x: &mut [f32], width: usize, w: &[f32], eps: f32) {
    x.par_chunks_mut(width.max(1)).for_each(|row| {
        let sum: f64 = row.iter().map(|v| f64::from(v * v)).sum();
        #[allow(clippy::cast_possible_truncation)] // `const float mean = sum/ne00`
        let mean = (sum / width as f64) as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        for (v, g) in row.iter_mut().zip(w) {
            *v = *v * scale * *g;
        }
    });
}

/// ggml's rotary table for one position (ops.cpp `ggml_rope_cache_init` / `rope_yarn` without
/// YaRN): `θ₀ = p`, `θ_{j+1} = θ_j · θ_scale` in `f32` with `θ_scale = powf(base, −2/n_dims)`,
/// `cos = cosf(θ_j / ff_j)`, `sin = sinf(θ_j / ff_j)` (`ff`: GGUF `rope_freqs`, else 1).
pub fn rope_cache(
    p: usize,
    base: f32,
    hd: usize,
    freq_factors: Option<&[f32]>,
    cs: &mut [(f32, f32)],
) {
    let theta_scale = base.powf(-2.0 / hd as f32);
    #[allow(clippy::cast_precision_loss)] // positions are far below 2^24
    let mut theta = p as f32;
    for (j, c) in cs.iter_mut().enumerate().take(hd / 2) {
        let ff = freq_factors.map_or(1.0, |f| f[j]);
        let t = theta / ff;
        *c = (t.cos(), t.sin());
        theta *= theta_scale;
    }
}

/// ggml's `swiglu_split` (vec.cpp `ggml_vec_swiglu_f32`, AVX2): `gate ← x / (1 + v_expf(−x)) ·
/// up`, in place.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    gate.par_chunks_mut(4096)
        .zip(up.par_chunks(4096))
        .for_each(|(g, u)| {
            for (a, b) in g.iter_mut().zip(u) {
                *a = *a / (1.0 + v_expf(0.0 - *a)) * *b;
            }
        });
}

/// [`rms_norm`] when `ggml` and `T` is `f32`, else [`crate::ops::rms_norm`].
pub fn rms_norm_as<T: Real>(ggml: bool, x: &mut [T], width: usize, w: &[T], eps: T) {
    if ggml {
        if let (Some(xf), Some(wf)) = (T::as_f32_mut(x), T::as_f32(w)) {
            #[allow(clippy::cast_possible_truncation)] // eps is an f32 already
            return rms_norm(xf, width, wf, eps.to_f64() as f32);
        }
    }
    crate::ops::rms_norm(x, width, w, eps);
}

/// [`swiglu`] for `f32`, [`crate::ops::swiglu`] otherwise.
pub fn swiglu_as<T: Real>(gate: &mut [T], up: &[T]) {
    match (T::as_f32(up), T::as_f32_mut(gate)) {
        (Some(u), Some(g)) => swiglu(g, u),
        _ => crate::ops::swiglu(gate, up),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v_expf_is_close_to_exp_and_underflows_to_zero() {
        for i in -2000..=800 {
            let x = i as f32 * 0.11;
            let (got, want) = (v_expf(x), f64::from(x).exp());
            if want < 1e-37 {
                assert!(got < 1e-36, "{x}: {got}");
            } else if want < 1e38 {
                let rel = (f64::from(got) / want - 1.0).abs();
                assert!(rel < 4e-7, "{x}: {got} vs {want} ({rel:e})");
            }
        }
        assert_eq!(v_expf(f32::NEG_INFINITY), 0.0);
        assert_eq!(v_expf(0.0), 1.0);
    }

    #[test]
    fn flash_attn_matches_plain_softmax_attention_closely() {
        let (t, heads, kvh, hd) = (150usize, 4usize, 2usize, 16usize);
        let mut s = 7u64;
        let mut rnd = || {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
        };
        let q: Vec<f32> = (0..t * heads * hd).map(|_| rnd()).collect();
        let k: Vec<f32> = (0..t * kvh * hd).map(|_| rnd()).collect();
        let v: Vec<f32> = (0..t * kvh * hd).map(|_| rnd()).collect();
        let scale = 0.25f32;
        for mask in [KeyMask::Causal, KeyMask::Window(70)] {
            let mut a = vec![0f32; t * heads * hd];
            let mut b = a.clone();
            flash_attn_ext(&q, &k, &v, t, heads, kvh, hd, scale, mask, &mut a);
            crate::ops::attention(&q, &k, &v, t, heads, kvh, hd, scale, mask, &mut b);
            let worst = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-5, "{mask:?}: {worst}");
        }
    }
}
