//! The building blocks of the Llama forward pass, in `f32` with wider accumulation where
//! llama.cpp uses it: RMSNorm, rotary embeddings (both row layouts, llama3 and YaRN scaling),
//! causal grouped-query attention, SwiGLU. Generic over [`Real`]: the same code runs in `f64`
//! for exact calibration statistics.

use rayon::prelude::*;

use crate::real::Real;

/// `y = x · (mean(x²) + eps)^(-1/2) · w` per row of `width` (sum of squares in `f64`, as
/// ggml's `rms_norm`), in place.
pub fn rms_norm<T: Real>(x: &mut [T], width: usize, w: &[T], eps: T) {
    x.par_chunks_mut(width).for_each(|row| {
        let ss: f64 = row.iter().map(|v| v.to_f64() * v.to_f64()).sum();
        let mean = T::of_f64(ss / width as f64);
        let scale = T::ONE / (mean + eps).sqrt();
        for (v, g) in row.iter_mut().zip(w) {
            *v = (*v * scale) * *g;
        }
    });
}

/// Which rows of a head's Q/K projection are rotated together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RopeLayout {
    /// Pairs `(2j, 2j+1)`: Meta `.pth` and GGUF (llama.cpp rope mode NORM).
    Interleaved,
    /// Pairs `(j, j + hd/2)`: Hugging Face (`rotate_half`).
    HalfSplit,
}

/// llama3 (Llama 3.1) frequency scaling parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3Scaling {
    /// `factor`
    pub factor: f64,
    /// `low_freq_factor`
    pub low_freq_factor: f64,
    /// `high_freq_factor`
    pub high_freq_factor: f64,
    /// `original_max_position_embeddings`
    pub original_max_position_embeddings: f64,
}

/// The rotary frequencies `inv_freq_i = θ^(−2i/hd)` (`i < hd/2`), in `f64`, adjusted by
/// llama3 scaling (transformers `_compute_llama3_parameters`, specs/meta.md §4) or divided by
/// GGUF `rope_freqs` factors (llama.cpp's `freq_factors`), or by a linear `factor`.
pub fn inv_freqs(
    theta: f64,
    head_dim: usize,
    llama3: Option<Llama3Scaling>,
    linear_factor: Option<f64>,
    freq_factors: Option<&[f32]>,
) -> Vec<f64> {
    (0..head_dim / 2)
        .map(|i| {
            let mut f = 1.0 / theta.powf((2 * i) as f64 / head_dim as f64);
            if let Some(s) = llama3 {
                let low_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
                let high_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
                let wavelen = 2.0 * std::f64::consts::PI / f;
                if wavelen > low_wavelen {
                    f /= s.factor;
                } else if wavelen >= high_wavelen {
                    let smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor)
                        / (s.high_freq_factor - s.low_freq_factor);
                    f = (1.0 - smooth) * f / s.factor + smooth * f;
                }
            }
            if let Some(l) = linear_factor {
                f /= l;
            }
            if let Some(ff) = freq_factors {
                f /= f64::from(ff[i]);
            }
            f
        })
        .collect()
}

/// YaRN parameters (transformers `_compute_yarn_parameters`; llama.cpp `ggml_rope_yarn_corr_dims`,
/// `rope_yarn`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct YarnScaling {
    /// `factor`
    pub factor: f64,
    /// `original_max_position_embeddings`
    pub original_max_position_embeddings: f64,
    /// `beta_fast` (32 when the config has none)
    pub beta_fast: f64,
    /// `beta_slow` (1 when the config has none)
    pub beta_slow: f64,
}

/// YaRN's rotary frequencies and attention factor for `head_dim` (transformers
/// `_compute_yarn_parameters` with `truncate` true and no `attention_factor`/`mscale`):
/// pair `i` mixes the extrapolated `θ^(−2i/hd)` and the interpolated `θ^(−2i/hd)/factor` by
/// the ramp `clamp((i − low)/(high − low), 0, 1)` (0: extrapolated), with `low`, `high` the
/// floored/ceiled correction dimensions of `beta_fast`/`beta_slow` rotations over the original
/// context; cos/sin are scaled by `0.1 ln factor + 1` (1 for `factor ≤ 1`).
///
/// llama.cpp computes the same: `rope_yarn_ramp` is `1 −` this ramp, and its magnitude
/// `yarn_attn_factor · (1 + 0.1 ln(1/freq_scale))` with llama_context's
/// `yarn_attn_factor = get_mscale(factor) / (1 + 0.1 ln factor)` is `get_mscale(factor)`.
pub fn yarn_inv_freqs(theta: f64, head_dim: usize, s: &YarnScaling) -> (Vec<f64>, f64) {
    let dim = head_dim as f64;
    let corr_dim = |rotations: f64| {
        dim * (s.original_max_position_embeddings / (rotations * 2.0 * std::f64::consts::PI)).ln()
            / (2.0 * theta.ln())
    };
    let low = corr_dim(s.beta_fast).floor().max(0.0);
    let mut high = corr_dim(s.beta_slow).ceil().min(dim - 1.0);
    if low == high {
        high += 0.001; // transformers linear_ramp_factor: "prevent singularity"
    }
    let freqs = (0..head_dim / 2)
        .map(|i| {
            let extrapolated = 1.0 / theta.powf((2 * i) as f64 / dim);
            let interpolated = extrapolated / s.factor;
            let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
            let keep = 1.0 - ramp;
            interpolated * (1.0 - keep) + extrapolated * keep
        })
        .collect();
    let attn = if s.factor <= 1.0 {
        1.0
    } else {
        0.1 * s.factor.ln() + 1.0
    };
    (freqs, attn)
}

/// `cos`/`sin` of `p · inv_freq_i` for positions `0..positions` (angles in `f64`, rounded
/// once to the forward's type when applied), row-major `[p][i]`.
#[derive(Debug, Clone)]
pub struct RopeTable {
    half: usize,
    cos: Vec<f64>,
    sin: Vec<f64>,
    /// Rotate with one FMA per output, as ggml-cpu's `rotate_pairs` compiles ([`Self::ggml`]).
    fma: bool,
}

impl RopeTable {
    /// Tables for `positions` positions.
    pub fn new(inv_freq: &[f64], positions: usize) -> Self {
        Self::scaled(inv_freq, positions, 1.0)
    }

    /// Tables for `positions` positions with cos/sin multiplied by `attn_factor` (YaRN's
    /// attention factor: transformers multiplies `cos`/`sin` by `attention_scaling`, llama.cpp
    /// `rope_yarn` by `mscale`).
    pub fn scaled(inv_freq: &[f64], positions: usize, attn_factor: f64) -> Self {
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        for p in 0..positions {
            for f in inv_freq {
                let a = p as f64 * f;
                cos.push(a.cos() * attn_factor);
                sin.push(a.sin() * attn_factor);
            }
        }
        RopeTable {
            half,
            cos,
            sin,
            fma: false,
        }
    }

    /// ggml-cpu's tables and rotation (`--ggml-cpu-ops`): cos/sin of the `f32` angles of
    /// [`crate::ggml_cpu::rope_cache`], applied as `fma(x0, cos, −(x1·sin))`,
    /// `fma(x0, sin, x1·cos)` (ops.cpp `rotate_pairs`; GCC contracts it under `-mfma`).
    pub fn ggml(base: f32, hd: usize, freq_factors: Option<&[f32]>, positions: usize) -> Self {
        let half = hd / 2;
        let (mut cos, mut sin) = (Vec::with_capacity(positions * half), Vec::new());
        sin.reserve(positions * half);
        let mut cs = vec![(0f32, 0f32); half];
        for p in 0..positions {
            crate::ggml_cpu::rope_cache(p, base, hd, freq_factors, &mut cs);
            for &(c, s) in &cs {
                cos.push(f64::from(c));
                sin.push(f64::from(s));
            }
        }
        RopeTable {
            half,
            cos,
            sin,
            fma: true,
        }
    }

    /// Rotate every head of `x` (`[tokens, heads·hd]`, token `t` at position `t`), in place.
    pub fn apply<T: Real>(&self, x: &mut [T], heads: usize, layout: RopeLayout) {
        let hd = 2 * self.half;
        let half = self.half;
        x.par_chunks_mut(heads * hd)
            .enumerate()
            .for_each(|(p, row)| {
                let c = &self.cos[p * half..(p + 1) * half];
                let s = &self.sin[p * half..(p + 1) * half];
                for head in row.chunks_exact_mut(hd) {
                    for j in 0..half {
                        let (ia, ib) = match layout {
                            RopeLayout::Interleaved => (2 * j, 2 * j + 1),
                            RopeLayout::HalfSplit => (j, j + half),
                        };
                        let (a, b) = (head[ia], head[ib]);
                        let (c, s) = (T::of_f64(c[j]), T::of_f64(s[j]));
                        if self.fma {
                            head[ia] = a.mul_add(c, -(b * s));
                            head[ib] = a.mul_add(s, b * c);
                        } else {
                            head[ia] = a * c - b * s;
                            head[ib] = b * c + a * s;
                        }
                    }
                }
            });
    }

    /// Positions covered.
    pub fn positions(&self) -> usize {
        self.cos.len() / self.half.max(1)
    }
}

/// Numerically stable softmax of `x` in place (max subtracted, sum in `f64`); returns the
/// sum of `exp(x − max)`.
pub fn softmax<T: Real>(x: &mut [T]) -> f64 {
    let max = x
        .iter()
        .copied()
        .fold(T::NEG_INFINITY, |a, b| if b > a { b } else { a });
    if max == T::NEG_INFINITY {
        x.fill(T::ZERO);
        return 0.0;
    }
    let mut sum = 0f64;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += v.to_f64();
    }
    let inv = T::of_f64(1.0 / sum);
    for v in x.iter_mut() {
        *v *= inv;
    }
    sum
}

/// Query rows per attention block.
const Q_BLOCK: usize = 64;

/// Which earlier keys a query sees besides itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyMask {
    /// Every key up to the query (causal).
    Causal,
    /// The last `w` keys, itself included (sliding window: transformers
    /// `sliding_window_overlay`).
    Window(usize),
    /// The keys of the query's chunk of `c` positions up to it: key `j` for query `i` when
    /// `j ≤ i` and `j / c == i / c` (transformers `masking_utils.chunked_overlay`, Llama 4).
    Chunk(usize),
}

/// Causal grouped-query attention over one sequence of `t` tokens.
///
/// `q` is `[t, heads·hd]`, `k`/`v` are `[t, kv_heads·hd]` (RoPE already applied); query head
/// `h` reads kv head `h / (heads/kv_heads)`. Scores `q·kᵀ·scale`, keys after the query masked
/// out, and with a `window` also keys `window` or more positions before it (transformers
/// `sliding_window_overlay`: key `j` visible from query `i` iff `i − window < j ≤ i`), softmax
/// in `f32` with an `f64` sum, output `P·v` written to `out` (`[t, heads·hd]`). Query blocks
/// only touch the keys up to their last row, so the masked upper half is never computed.
///
/// # Panics
/// If the slices do not match the shapes (a caller bug).
#[allow(clippy::too_many_arguments)]
pub fn attention<T: Real>(
    q: &[T],
    k: &[T],
    v: &[T],
    t: usize,
    heads: usize,
    kv_heads: usize,
    hd: usize,
    scale: T,
    mask: KeyMask,
    out: &mut [T],
) {
    let qw = heads * hd;
    let kw = kv_heads * hd;
    assert!(
        q.len() == t * qw && k.len() == t * kw && v.len() == t * kw && out.len() == t * qw,
        "attention shapes"
    );
    assert!(kv_heads > 0 && heads % kv_heads == 0, "heads % kv_heads");
    let group = heads / kv_heads;
    let nblocks = t.div_ceil(Q_BLOCK);
    // One task per (query block, head); each returns its [rows, hd] output.
    let parts: Vec<(usize, usize, Vec<T>)> = (0..nblocks * heads)
        .into_par_iter()
        .map(|task| {
            let (b, h) = (task / heads, task % heads);
            let r0 = b * Q_BLOCK;
            let rows = Q_BLOCK.min(t - r0);
            let keys = r0 + rows;
            let kvh = h / group;
            let mut s = vec![T::ZERO; rows * keys];
            // SAFETY: q rows r0..r0+rows of head h (stride qw), k rows 0..keys of head kvh
            // (stride kw, read as the transposed operand), s is [rows, keys]; all in bounds
            // by the shape assertion above.
            #[allow(unsafe_code)]
            unsafe {
                T::gemm(
                    rows,
                    hd,
                    keys,
                    q.as_ptr().add(r0 * qw + h * hd),
                    qw as isize,
                    1,
                    k.as_ptr().add(kvh * hd),
                    1,
                    kw as isize,
                    s.as_mut_ptr(),
                    keys as isize,
                );
            }
            for (i, row) in s.chunks_exact_mut(keys).enumerate() {
                let visible = r0 + i + 1;
                let first = match mask {
                    KeyMask::Causal => 0,
                    KeyMask::Window(w) => visible.saturating_sub(w),
                    KeyMask::Chunk(c) => (r0 + i) / c.max(1) * c.max(1),
                };
                for x in &mut row[first..visible] {
                    *x *= scale;
                }
                row[..first].fill(T::NEG_INFINITY);
                row[visible..].fill(T::NEG_INFINITY);
                softmax(row);
            }
            let mut o = vec![T::ZERO; rows * hd];
            // SAFETY: s is [rows, keys]; v rows 0..keys of head kvh (stride kw); o is
            // [rows, hd].
            #[allow(unsafe_code)]
            unsafe {
                T::gemm(
                    rows,
                    keys,
                    hd,
                    s.as_ptr(),
                    keys as isize,
                    1,
                    v.as_ptr().add(kvh * hd),
                    kw as isize,
                    1,
                    o.as_mut_ptr(),
                    hd as isize,
                );
            }
            (r0, h, o)
        })
        .collect();
    for (r0, h, o) in parts {
        for (i, row) in o.chunks_exact(hd).enumerate() {
            out[(r0 + i) * qw + h * hd..][..hd].copy_from_slice(row);
        }
    }
}

/// SwiGLU: `gate ← silu(gate) ⊙ up` with `silu(z) = z / (1 + e^(−z))`.
pub fn swiglu<T: Real>(gate: &mut [T], up: &[T]) {
    gate.par_chunks_mut(4096)
        .zip(up.par_chunks(4096))
        .for_each(|(g, u)| {
            for (a, b) in g.iter_mut().zip(u) {
                *a = *a / (T::ONE + (-*a).exp()) * *b;
            }
        });
}

/// Round every value to the nearest `f16` (RNE), as llama.cpp's default F16 KV cache stores
/// K and V.
pub fn round_f16<T: Real>(x: &mut [T]) {
    x.par_chunks_mut(4096).for_each(|c| {
        for v in c {
            *v = v.round_f16();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn max_abs(a: &[f32], b: &[f64]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (f64::from(*x) - y).abs())
            .fold(0.0, f64::max)
    }

    #[test]
    fn rms_norm_matches_f64() {
        let (rows, width) = (5, 96);
        let x = data(rows * width, 1);
        let w = data(width, 2);
        let mut y = x.clone();
        rms_norm(&mut y, width, &w, 1e-5);
        let mut want = Vec::new();
        for r in x.chunks(width) {
            let ms = r.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / width as f64;
            let s = 1.0 / (ms + 1e-5).sqrt();
            want.extend(
                r.iter()
                    .zip(&w)
                    .map(|(v, g)| f64::from(*v) * s * f64::from(*g)),
            );
        }
        // a handful of f32 roundings of values ≤ ~2: budget 1e-6
        assert!(max_abs(&y, &want) < 1e-6);
    }

    /// Rotate with a direct f64 computation of the angle for pair (a, b) of frequency j.
    fn rope_f64(x: &[f32], heads: usize, hd: usize, freqs: &[f64], layout: RopeLayout) -> Vec<f64> {
        let mut out: Vec<f64> = x.iter().map(|v| f64::from(*v)).collect();
        let w = heads * hd;
        for (p, row) in out.chunks_mut(w).enumerate() {
            for head in row.chunks_mut(hd) {
                for (j, f) in freqs.iter().enumerate() {
                    let (ia, ib) = match layout {
                        RopeLayout::Interleaved => (2 * j, 2 * j + 1),
                        RopeLayout::HalfSplit => (j, j + hd / 2),
                    };
                    let phi = p as f64 * f;
                    let (a, b) = (head[ia], head[ib]);
                    head[ia] = a * phi.cos() - b * phi.sin();
                    head[ib] = b * phi.cos() + a * phi.sin();
                }
            }
        }
        out
    }

    #[test]
    fn rope_both_layouts_match_f64() {
        let (t, heads, hd) = (300, 3, 16);
        let freqs = inv_freqs(10000.0, hd, None, None, None);
        let table = RopeTable::new(&freqs, t);
        for layout in [RopeLayout::Interleaved, RopeLayout::HalfSplit] {
            let x = data(t * heads * hd, 3);
            let mut y = x.clone();
            table.apply(&mut y, heads, layout);
            // cos/sin rounded to f32 then 2 products and a sum of values ≤ 1: budget 1e-6
            assert!(max_abs(&y, &rope_f64(&x, heads, hd, &freqs, layout)) < 1e-6);
        }
        // The two layouts are the same rotation up to the row permutation of convert::rope.
        let x = data(heads * hd, 4);
        let from_hf = qforge_codecs::rope::RopeLayout::FromHf;
        let inter: Vec<f32> = (0..heads * hd)
            .map(|dst| x[qforge_codecs::rope::source_row(dst, hd, from_hf)])
            .collect();
        let mut half = x.clone();
        let table = RopeTable::new(&freqs, 8);
        let mut xi: Vec<f32> = inter.iter().cycle().take(8 * heads * hd).copied().collect();
        let mut xh: Vec<f32> = half.iter().cycle().take(8 * heads * hd).copied().collect();
        table.apply(&mut xi, heads, RopeLayout::Interleaved);
        table.apply(&mut xh, heads, RopeLayout::HalfSplit);
        half.clear();
        for p in 0..8 {
            for dst in 0..heads * hd {
                let src = qforge_codecs::rope::source_row(
                    dst,
                    hd,
                    qforge_codecs::rope::RopeLayout::FromHf,
                );
                assert_eq!(xi[p * heads * hd + dst], xh[p * heads * hd + src]);
            }
        }
    }

    #[test]
    fn llama3_scaling_matches_transformers_formula() {
        // Llama 3.1 8B: θ = 500000, hd = 128, factor 8, low 1, high 4, original 8192.
        let s = Llama3Scaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0,
        };
        let f = inv_freqs(500_000.0, 128, Some(s), None, None);
        for (i, got) in f.iter().enumerate() {
            let base = 1.0 / 500_000f64.powf(2.0 * i as f64 / 128.0);
            let wl = 2.0 * std::f64::consts::PI / base;
            let want = if wl < 8192.0 / 4.0 {
                base
            } else if wl > 8192.0 {
                base / 8.0
            } else {
                let a = (8192.0 / wl - 1.0) / 3.0;
                (1.0 - a) * base / 8.0 + a * base
            };
            assert!((got - want).abs() <= 1e-15 * want.abs(), "i={i}");
        }
        // high-frequency end unchanged, low-frequency end divided by 8, middle in between
        let base0 = 1.0;
        assert_eq!(f[0], base0);
        let last = 1.0 / 500_000f64.powf(126.0 / 128.0);
        assert!((f[63] - last / 8.0).abs() < 1e-18);
        // GGUF rope_freqs factors give the same frequencies
        let factors: Vec<f32> = (0..64)
            .map(|i| {
                let base = 1.0 / 500_000f64.powf(2.0 * f64::from(i) / 128.0);
                (base / f[i as usize]) as f32
            })
            .collect();
        let g = inv_freqs(500_000.0, 128, None, None, Some(&factors));
        for (a, b) in f.iter().zip(&g) {
            assert!((a - b).abs() <= 1e-7 * a.abs());
        }
    }

    /// YaRN frequencies and attention factor against transformers 4.57.6
    /// `_compute_yarn_parameters` (float32 `inv_freq` printed from torch): the qwen2_yarn
    /// fixture's settings, Qwen2.5-7B's (θ 1e6, head_dim 128, factor 4, original 32768) and one
    /// with explicit beta_fast/beta_slow.
    #[test]
    #[allow(clippy::unreadable_literal)] // torch's printed float32 values, verbatim
    fn yarn_matches_transformers() {
        let cases: [(f64, usize, YarnScaling, f64, &[f64]); 3] = [
            (
                10000.0,
                16,
                YarnScaling {
                    factor: 4.0,
                    original_max_position_embeddings: 32.0,
                    beta_fast: 32.0,
                    beta_slow: 1.0,
                },
                1.138629436111989,
                &[
                    1.0,
                    0.19764235615730286,
                    0.02500000037252903,
                    0.007905694656074047,
                    0.0024999999441206455,
                    0.0007905694656074047,
                    0.0002500000118743628,
                    7.905694656074047e-05,
                ],
            ),
            (
                1_000_000.0,
                128,
                YarnScaling {
                    factor: 4.0,
                    original_max_position_embeddings: 32768.0,
                    beta_fast: 32.0,
                    beta_slow: 1.0,
                },
                1.138629436111989,
                &[
                    1.0,
                    0.8058422207832336,
                    0.6493816375732422,
                    0.5232991576194763,
                    0.4216965138912201,
                    0.33982083201408386,
                    0.2738419771194458,
                    0.22067339718341827,
                    0.17782793939113617,
                    0.14330126345157623,
                    0.11547820270061493,
                    0.09305720031261444,
                    0.07498941570520401,
                    0.0604296438395977,
                    0.04869675263762474,
                    0.03924189880490303,
                    0.03162277862429619,
                    0.025482967495918274,
                    0.02053525112569332,
                    0.016548171639442444,
                    0.01333521492779255,
                    0.010746078565716743,
                    0.00865964312106371,
                    0.006978305988013744,
                    0.005375321488827467,
                    0.004131738096475601,
                    0.0031684227287769318,
                    0.002423422411084175,
                    0.0018482765881344676,
                    0.0014051124453544617,
                    0.0010643609566614032,
                    0.000802959781140089,
                    0.0006029411451891065,
                    0.0004503235686570406,
                    0.00033424055436626077,
                    0.0002462583943270147,
                    0.0001798411540221423,
                    0.00012993148993700743,
                    9.262301318813115e-05,
                    6.490394298452884e-05,
                    4.4456985051510856e-05,
                    3.582531644497067e-05,
                    2.8869548259535804e-05,
                    2.3264301489689387e-05,
                    1.8747356079984456e-05,
                    1.5107409126358107e-05,
                    1.2174188668723218e-05,
                    9.8104746939498e-06,
                    7.905693564680405e-06,
                    6.370741630234988e-06,
                    5.133812464919174e-06,
                    4.137042651564116e-06,
                    3.3338035336782923e-06,
                    2.686519565031631e-06,
                    2.1649109385180054e-06,
                    1.7445765934098745e-06,
                    1.405853367941745e-06,
                    1.1328959317324916e-06,
                    9.129353202297352e-07,
                    7.356817945947114e-07,
                    5.928434347879374e-07,
                    4.777382400789065e-07,
                    3.8498163235090033e-07,
                    3.102344408034696e-07,
                ],
            ),
            (
                10000.0,
                32,
                YarnScaling {
                    factor: 8.0,
                    original_max_position_embeddings: 256.0,
                    beta_fast: 16.0,
                    beta_slow: 2.0,
                },
                1.2079441541679836,
                &[
                    1.0,
                    0.5623413324356079,
                    0.26088792085647583,
                    0.11558816581964493,
                    0.04749999940395355,
                    0.01687023788690567,
                    0.0039528473280370235,
                    0.002222849288955331,
                    0.0012499999720603228,
                    0.0007029266562312841,
                    0.00039528473280370235,
                    0.00022228492889553308,
                    0.0001250000059371814,
                    7.029266271274537e-05,
                    3.9528473280370235e-05,
                    2.2228492525755428e-05,
                ],
            ),
        ];
        for (theta, hd, s, attn, want) in cases {
            let (f, a) = yarn_inv_freqs(theta, hd, &s);
            assert!((a - attn).abs() < 1e-12, "{a} vs {attn}");
            assert_eq!(f.len(), want.len());
            for (i, (g, w)) in f.iter().zip(want).enumerate() {
                // transformers computes in float32
                assert!(
                    (g - w).abs() <= 1e-6 * w,
                    "θ {theta} hd {hd} pair {i}: {g} vs {w}"
                );
            }
        }
        // the table carries the factor on cos and sin alike
        let (f, a) = yarn_inv_freqs(10000.0, 16, &cases[0].2);
        let (plain, scaled) = (RopeTable::new(&f, 5), RopeTable::scaled(&f, 5, a));
        for (p, q) in plain
            .cos
            .iter()
            .chain(&plain.sin)
            .zip(scaled.cos.iter().chain(&scaled.sin))
        {
            assert!((p * a - q).abs() < 1e-15);
        }
    }

    #[test]
    fn softmax_matches_f64_and_handles_masked_rows() {
        let mut x = data(1000, 5).iter().map(|v| v * 30.0).collect::<Vec<_>>();
        let want: Vec<f64> = {
            let m = x
                .iter()
                .map(|v| f64::from(*v))
                .fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = x.iter().map(|v| (f64::from(*v) - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.iter().map(|v| v / s).collect()
        };
        softmax(&mut x);
        // relative error of exp in f32 (~1e-7) on probabilities ≤ 1
        assert!(max_abs(&x, &want) < 1e-7);
        let mut masked = vec![1.0, f32::NEG_INFINITY, 2.0];
        softmax(&mut masked);
        assert_eq!(masked[1], 0.0);
    }

    #[test]
    fn attention_matches_f64_with_causal_mask_and_gqa() {
        let (t, heads, kvh, hd) = (150, 4, 2, 8);
        let q = data(t * heads * hd, 6);
        let k = data(t * kvh * hd, 7);
        let v = data(t * kvh * hd, 8);
        let scale = 1.0 / (hd as f32).sqrt();
        let mut out = vec![0f32; t * heads * hd];
        attention(
            &q,
            &k,
            &v,
            t,
            heads,
            kvh,
            hd,
            scale,
            KeyMask::Causal,
            &mut out,
        );
        let mut want = vec![0f64; t * heads * hd];
        for h in 0..heads {
            let g = h / (heads / kvh);
            for i in 0..t {
                let s: Vec<f64> = (0..=i)
                    .map(|j| {
                        (0..hd)
                            .map(|d| {
                                f64::from(q[i * heads * hd + h * hd + d])
                                    * f64::from(k[j * kvh * hd + g * hd + d])
                            })
                            .sum::<f64>()
                            * f64::from(scale)
                    })
                    .collect();
                let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                for d in 0..hd {
                    want[i * heads * hd + h * hd + d] = s
                        .iter()
                        .enumerate()
                        .map(|(j, x)| (x - m).exp() / z * f64::from(v[j * kvh * hd + g * hd + d]))
                        .sum();
                }
            }
        }
        // f32 dot products and probabilities, |v| ≤ 1: budget 1e-6
        assert!(max_abs(&out, &want) < 1e-6, "{}", max_abs(&out, &want));
        // The first token sees only itself: output = its own value row.
        for h in 0..heads {
            let g = h / 2;
            for d in 0..hd {
                assert!((out[h * hd + d] - v[g * hd + d]).abs() < 1e-7);
            }
        }
    }

    #[test]
    fn swiglu_matches_f64() {
        let mut g = data(100, 9).iter().map(|v| v * 8.0).collect::<Vec<_>>();
        let u = data(100, 10);
        let want: Vec<f64> = g
            .iter()
            .zip(&u)
            .map(|(a, b)| f64::from(*a) / (1.0 + (-f64::from(*a)).exp()) * f64::from(*b))
            .collect();
        swiglu(&mut g, &u);
        assert!(max_abs(&g, &want) < 1e-6);
    }
}
