//! The building blocks of the Llama forward pass, in `f32` with wider accumulation where
//! llama.cpp uses it: RMSNorm, rotary embeddings (both row layouts, llama3 frequency scaling),
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

/// `cos`/`sin` of `p · inv_freq_i` for positions `0..positions` (angles in `f64`, rounded
/// once to the forward's type when applied), row-major `[p][i]`.
#[derive(Debug, Clone)]
pub struct RopeTable {
    half: usize,
    cos: Vec<f64>,
    sin: Vec<f64>,
}

impl RopeTable {
    /// Tables for `positions` positions.
    pub fn new(inv_freq: &[f64], positions: usize) -> Self {
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        for p in 0..positions {
            for f in inv_freq {
                let a = p as f64 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        RopeTable { half, cos, sin }
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
                        head[ia] = a * c - b * s;
                        head[ib] = b * c + a * s;
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
        let from_hf = qforge_convert::rope::RopeLayout::FromHf;
        let inter: Vec<f32> = (0..heads * hd)
            .map(|dst| x[qforge_convert::rope::source_row(dst, hd, from_hf)])
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
                let src = qforge_convert::rope::source_row(
                    dst,
                    hd,
                    qforge_convert::rope::RopeLayout::FromHf,
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
