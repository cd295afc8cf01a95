//! llama.cpp's CPU matmul of a 32-block quantized weight (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) with
//! activations quantized to its `vec_dot_type` (Q8_0 / Q8_1), computed as ggml computes it,
//! so that `--ggml-act-quant` no longer depends on an `f32` GEMM's summation order.
//!
//! The order is the one of the x86 AVX2 build our interop tests use (`QFORGE_LLAMA_ISA=avx2`):
//! ggml/src/ggml-cpu/arch/x86/quants.c `ggml_vec_dot_q4_0_q8_0`, `ggml_vec_dot_q4_1_q8_1`,
//! `ggml_vec_dot_q5_0_q8_0`, `ggml_vec_dot_q5_1_q8_1`, `ggml_vec_dot_q8_0_q8_0` (the
//! `__AVX2__` branches; ggml-cpu/llamafile/sgemm.cpp `tinyBLAS_Q0_AVX` computes the same per
//! output for the `_0` types on batches). Per output `y[t, o]` and per 32-block `b`:
//!
//! * `d = d_w[b] · d_a[b]` in `f32` (`_mm256_mul_ps` / the scalar product of the two f16 scales),
//! * eight integer lane sums `isum_j = Σ_{i<4} qw[4j+i]·qa[4j+i]` (`maddubs`+`madd` or
//!   `dpbusd`: exact, so the instruction does not matter),
//! * `acc_j = fma(d, isum_j, acc_j)` (`_mm256_fmadd_ps`, lanes from `+0`),
//! * for Q4_1/Q5_1 `summs = fma(m_w[b], s_a[b], summs)` (the source's `summs += m·s`, which
//!   gcc contracts to `vfmadd231ss`, checked in the reference build's object code),
//!
//! then `hsum_float_8(acc) + summs` with `hsum_float_8` = `((a0+a4) + (a2+a6)) + ((a1+a5) +
//! (a3+a7))` (extract high half, add, `movehl` add, `movehdup` add).
//!
//! Not emulated here: llama.cpp's AVX2 build repacks Q4_0 weights (ggml-cpu/repack.cpp
//! `q4_0_8x8_q8_0`), whose GEMM sums in another order, so Q4_0 follows `vec_dot`'s order, not
//! the repacked one; the K-quants (×Q8_K) still run as an `f32` GEMM of dequantized values.
//!
//! Every output is one sequential computation over its row, so the result is the same for any
//! thread count and any ISA (the AVX2+FMA path and the portable `mul_add` path are correctly
//! rounded fmas in the same order).

use qforge_codecs::float::f16_bits_to_f32;
use qforge_codecs::DType;
use rayon::prelude::*;

/// Values per block of the `_0`/`_1` formats and of Q8_0/Q8_1.
pub const QK: usize = 32;

/// A quantized weight's integer codes and per-block scales, `[out, inp]`.
#[derive(Debug, Clone)]
pub struct GgmlWeights {
    /// The weight's block type.
    pub dtype: DType,
    /// Codes as ggml's dot products use them, row-major `[out, inp]`: Q4_0 `q − 8`, Q5_0
    /// `q − 16`, Q8_0 `q` (signed); Q4_1, Q5_1 `q` (unsigned, `0..=31`).
    pub codes: Vec<i8>,
    /// Block scales `d` as `f32`, `[out, inp/32]`.
    pub d: Vec<f32>,
    /// Block minimums `m` (Q4_1, Q5_1), `[out, inp/32]`; empty for the `_0` types.
    pub m: Vec<f32>,
}

/// Activations quantized to Q8_0 / Q8_1 (ggml-cpu's `quantize_row_q8_0` / `_q8_1`).
#[derive(Debug, Clone, Default)]
pub struct Q8Blocks {
    /// Codes, row-major `[rows, width]`.
    pub codes: Vec<i8>,
    /// Block scales `f16(amax/127)` as `f32`, `[rows, width/32]`.
    pub d: Vec<f32>,
    /// Q8_1 block sums `f16(d·Σq)` (with the unrounded `d`) as `f32`; empty for Q8_0.
    pub s: Vec<f32>,
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16_bits_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

impl GgmlWeights {
    /// Whether ggml's dot for `dtype` is emulated here.
    pub fn supports(dtype: DType) -> bool {
        matches!(
            dtype,
            DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1 | DType::Q8_0
        )
    }

    /// Codes and scales from the GGUF blocks of an `[out, inp]` weight (`inp` a multiple of
    /// 32). Errors (a message) when the byte count does not match the shape.
    pub fn from_blocks(dtype: DType, bytes: &[u8], out: usize, inp: usize) -> Result<Self, String> {
        if !Self::supports(dtype) {
            return Err(format!("no ggml integer dot product for {dtype}"));
        }
        if inp % QK != 0 {
            return Err(format!("row length {inp} is not whole {dtype} blocks"));
        }
        let bb = dtype.block_bytes() as usize;
        let nb = out
            .checked_mul(inp / QK)
            .ok_or_else(|| format!("{out} × {inp} overflows"))?;
        if Some(bytes.len()) != nb.checked_mul(bb) {
            return Err(format!(
                "{} bytes for {nb} {dtype} blocks of {bb} bytes",
                bytes.len()
            ));
        }
        let has_m = matches!(dtype, DType::Q4_1 | DType::Q5_1);
        let mut codes = vec![0i8; nb * QK];
        let mut d = vec![0f32; nb];
        let mut m = if has_m { vec![0f32; nb] } else { Vec::new() };
        codes
            .par_chunks_mut(QK * 256)
            .zip(d.par_chunks_mut(256))
            .zip(bytes.par_chunks(bb * 256))
            .for_each(|((q, dd), src)| {
                for ((q, dv), blk) in q
                    .chunks_exact_mut(QK)
                    .zip(dd.iter_mut())
                    .zip(src.chunks_exact(bb))
                {
                    *dv = f16_at(blk, 0);
                    decode_block(dtype, blk, q);
                }
            });
        if has_m {
            for (mv, blk) in m.iter_mut().zip(bytes.chunks_exact(bb)) {
                *mv = f16_at(blk, 2);
            }
        }
        Ok(GgmlWeights { dtype, codes, d, m })
    }
}

/// One block's codes in ggml's element order (ggml-quants.c `dequantize_row_q*`: low nibbles
/// are elements 0..16, high nibbles 16..32; Q5's fifth bit of element `j` is bit `j` of `qh`).
fn decode_block(dtype: DType, blk: &[u8], q: &mut [i8]) {
    let nib = |qs: &[u8], q: &mut [i8], hi: u32, off: i8| {
        for j in 0..16 {
            let h0 = (((hi >> j) & 1) << 4) as u8;
            let h1 = (((hi >> (j + 16)) & 1) << 4) as u8;
            // codes ≤ 31: the casts are exact
            q[j] = ((qs[j] & 0x0F) | h0) as i8 - off;
            q[j + 16] = ((qs[j] >> 4) | h1) as i8 - off;
        }
    };
    let qh = |at: usize| u32::from_le_bytes([blk[at], blk[at + 1], blk[at + 2], blk[at + 3]]);
    match dtype {
        DType::Q4_0 => nib(&blk[2..18], q, 0, 8),
        DType::Q4_1 => nib(&blk[4..20], q, 0, 0),
        DType::Q5_0 => nib(&blk[6..22], q, qh(2), 16),
        DType::Q5_1 => nib(&blk[8..24], q, qh(4), 0),
        DType::Q8_0 => {
            for (v, b) in q.iter_mut().zip(&blk[2..34]) {
                *v = *b as i8;
            }
        }
        _ => unreachable!("checked by from_blocks"),
    }
}

/// Quantize `x` (rows of whole 32-blocks, so blocks never straddle rows) to Q8_0 (`with_s` false) or Q8_1 as
/// ggml-cpu's AVX2 `quantize_row_q8_0` / `quantize_row_q8_1` (ggml-cpu/arch/x86/quants.c):
/// `amax` of the block, `d = amax/127`, `id = 127/amax` (0 for an all-zero block),
/// `q = round_half_even(x·id)`, `d` stored as f16; Q8_1's `s = f16(d·Σq)` with the f32 `d`.
pub fn quantize_q8(x: &[f32], with_s: bool) -> Q8Blocks {
    let nb = x.len() / QK;
    let mut out = Q8Blocks {
        codes: vec![0i8; nb * QK],
        d: vec![0f32; nb],
        s: if with_s { vec![0f32; nb] } else { Vec::new() },
    };
    let f16 = |v: f32| f16_bits_to_f32(qforge_codecs::float::f32_to_f16_bits(v));
    let body = |xb: &[f32], q: &mut [i8], d: &mut f32, s: Option<&mut f32>| {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let dv = amax / 127.0;
        let id = if amax == 0.0 { 0.0 } else { 127.0 / amax };
        let mut sum = 0i32;
        for (q, v) in q.iter_mut().zip(xb) {
            // |v·id| ≤ 127 (up to rounding of id, which round-half-even keeps ≤ 127)
            let r = (*v * id).round_ties_even();
            *q = r as i8;
            sum += r as i32;
        }
        *d = f16(dv);
        if let Some(s) = s {
            *s = f16(dv * sum as f32);
        }
    };
    const CH: usize = 256;
    if with_s {
        out.codes
            .par_chunks_mut(QK * CH)
            .zip(out.d.par_chunks_mut(CH))
            .zip(out.s.par_chunks_mut(CH))
            .zip(x.par_chunks(QK * CH))
            .for_each(|(((q, d), s), xc)| {
                for (((q, d), s), xb) in q
                    .chunks_exact_mut(QK)
                    .zip(d)
                    .zip(s)
                    .zip(xc.chunks_exact(QK))
                {
                    body(xb, q, d, Some(s));
                }
            });
    } else {
        out.codes
            .par_chunks_mut(QK * CH)
            .zip(out.d.par_chunks_mut(CH))
            .zip(x.par_chunks(QK * CH))
            .for_each(|((q, d), xc)| {
                for ((q, d), xb) in q.chunks_exact_mut(QK).zip(d).zip(xc.chunks_exact(QK)) {
                    body(xb, q, d, None);
                }
            });
    }
    out
}

/// One output: ggml's AVX2 `vec_dot` over `nb` blocks (module docs).
// always inlined, so the `avx2,fma` copy of `block_rows` compiles `mul_add` to `vfmadd`
#[allow(clippy::inline_always)]
#[inline(always)]
fn dot(wq: &[i8], wd: &[f32], wm: &[f32], aq: &[i8], ad: &[f32], asum: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    for ((wb, ab), (dw, da)) in wq
        .chunks_exact(QK)
        .zip(aq.chunks_exact(QK))
        .zip(wd.iter().zip(ad))
    {
        let d = dw * da;
        for (j, a) in acc.iter_mut().enumerate() {
            let mut s = 0i32;
            for i in 4 * j..4 * j + 4 {
                s += i32::from(wb[i]) * i32::from(ab[i]);
            }
            // |s| ≤ 4·127·128 < 2^24: exact in f32
            *a = d.mul_add(s as f32, *a);
        }
    }
    let mut summs = 0f32;
    for (m, s) in wm.iter().zip(asum) {
        summs = m.mul_add(*s, summs);
    }
    let r = [
        acc[0] + acc[4],
        acc[1] + acc[5],
        acc[2] + acc[6],
        acc[3] + acc[7],
    ];
    ((r[0] + r[2]) + (r[1] + r[3])) + summs
}

/// `out_rows` outputs of weight rows `o0..` for every token, into `[o, t]` order.
#[allow(clippy::inline_always)] // see `dot`
#[inline(always)]
fn block_rows(w: &GgmlWeights, a: &Q8Blocks, t: usize, inp: usize, o0: usize, dst: &mut [f32]) {
    let nb = inp / QK;
    let has_m = !w.m.is_empty();
    for (r, col) in dst.chunks_exact_mut(t).enumerate() {
        let o = o0 + r;
        let wq = &w.codes[o * inp..(o + 1) * inp];
        let wd = &w.d[o * nb..(o + 1) * nb];
        let wm: &[f32] = if has_m {
            &w.m[o * nb..(o + 1) * nb]
        } else {
            &[]
        };
        for (i, y) in col.iter_mut().enumerate() {
            let aq = &a.codes[i * inp..(i + 1) * inp];
            let ad = &a.d[i * nb..(i + 1) * nb];
            let asum: &[f32] = if has_m {
                &a.s[i * nb..(i + 1) * nb]
            } else {
                &[]
            };
            *y = dot(wq, wd, wm, aq, ad, asum);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(unsafe_code)]
unsafe fn block_rows_avx2(
    w: &GgmlWeights,
    a: &Q8Blocks,
    t: usize,
    inp: usize,
    o0: usize,
    dst: &mut [f32],
) {
    block_rows(w, a, t, inp, o0, dst);
}

fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Output rows per parallel task.
const ROWS: usize = 16;

/// `y[t, out]` = ggml's dot of each weight row with each activation row (module docs),
/// overwriting `y`. `a` holds `t` rows of `inp` (Q8_1 sums present iff `w` has minimums).
///
/// # Panics
/// If a buffer is shorter than its shape says (a caller bug).
pub fn matmul(a: &Q8Blocks, t: usize, w: &GgmlWeights, out: usize, inp: usize, y: &mut [f32]) {
    assert!(
        a.codes.len() >= t * inp
            && w.codes.len() >= out * inp
            && y.len() >= t * out
            && (w.m.is_empty() || a.s.len() * QK >= t * inp),
        "ggml matmul shapes"
    );
    if t == 0 || out == 0 {
        return;
    }
    let fast = has_avx2_fma();
    // [out, t], then transposed into y
    let mut yt = vec![0f32; out * t];
    yt.par_chunks_mut(ROWS * t)
        .enumerate()
        .for_each(|(c, dst)| {
            let o0 = c * ROWS;
            if fast {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: AVX2 and FMA were detected on this CPU.
                #[allow(unsafe_code)]
                unsafe {
                    block_rows_avx2(w, a, t, inp, o0, dst);
                }
            } else {
                block_rows(w, a, t, inp, o0, dst);
            }
        });
    y[..t * out]
        .par_chunks_mut(out)
        .enumerate()
        .for_each(|(i, row)| {
            for (o, v) in row.iter_mut().enumerate() {
                *v = yt[o * t + i];
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: u64) -> impl FnMut() -> u64 {
        let mut s = seed;
        move || {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            s >> 33
        }
    }

    /// Random blocks of `dtype` with small, finite f16 scales.
    fn blocks(dtype: DType, n: usize, seed: u64) -> Vec<u8> {
        let mut r = lcg(seed);
        let bb = dtype.block_bytes() as usize;
        let mut v = vec![0u8; n * bb];
        for blk in v.chunks_exact_mut(bb) {
            for b in blk.iter_mut() {
                *b = r() as u8;
            }
            let h = |x: f32| qforge_codecs::float::f32_to_f16_bits(x).to_le_bytes();
            blk[..2].copy_from_slice(&h((r() % 1000) as f32 / 50_000.0 + 1e-3));
            if matches!(dtype, DType::Q4_1 | DType::Q5_1) {
                blk[2..4].copy_from_slice(&h(-((r() % 1000) as f32) / 20_000.0));
            }
        }
        v
    }

    /// The codes dequantize to exactly what the codec decodes (`d·q` and `d·q + m`).
    #[test]
    fn codes_match_the_codec() {
        for dtype in [
            DType::Q4_0,
            DType::Q4_1,
            DType::Q5_0,
            DType::Q5_1,
            DType::Q8_0,
        ] {
            let (out, inp) = (3, 96);
            let b = blocks(dtype, out * inp / QK, 7);
            let w = GgmlWeights::from_blocks(dtype, &b, out, inp).unwrap();
            let mut want = vec![0f32; out * inp];
            qforge_codecs::decode_to_f32(dtype, &b, &mut want).unwrap();
            for (i, want) in want.iter().enumerate() {
                let (q, d) = (f32::from(w.codes[i]), w.d[i / QK]);
                let got = if w.m.is_empty() {
                    d * q
                } else {
                    let m = w.m[i / QK];
                    // the codec may fuse the multiply-add; both roundings are accepted
                    if (d * q + m).to_bits() == want.to_bits() {
                        d * q + m
                    } else {
                        d.mul_add(q, m)
                    }
                };
                assert_eq!(got.to_bits(), want.to_bits(), "{dtype} value {i}");
            }
        }
    }

    #[test]
    fn rejects_a_short_tensor() {
        let b = blocks(DType::Q4_1, 2, 1);
        assert!(GgmlWeights::from_blocks(DType::Q4_1, &b[..39], 1, 64).is_err());
        assert!(GgmlWeights::from_blocks(DType::Q4_1, &b, 1, 48).is_err());
        assert!(GgmlWeights::from_blocks(DType::Q4_K, &b, 1, 64).is_err());
    }

    /// One output worked by hand in the lane order: two blocks, weight codes 1 in lane 0 and
    /// lane 4 only, so `acc_0 = d0·4 + d1·4` lands in `a0`, `acc_4` in `a4`, and the sum is
    /// `(a0 + a4) + summs`.
    #[test]
    fn lane_order_and_min_term_by_hand() {
        let mut w = GgmlWeights {
            dtype: DType::Q4_1,
            codes: vec![0; 64],
            d: vec![0.5, 0.25],
            m: vec![2.0, -1.0],
        };
        for b in 0..2 {
            for i in 0..4 {
                w.codes[b * 32 + i] = 1;
                w.codes[b * 32 + 16 + i] = 3;
            }
        }
        let a = Q8Blocks {
            codes: vec![2; 64],
            d: vec![0.125, 1.0],
            s: vec![8.0, 3.0],
        };
        let mut y = [0f32];
        matmul(&a, 1, &w, 1, 64, &mut y);
        // block 0: d = 1/16, lane 0 isum 8, lane 4 isum 24; block 1: d = 1/4, same isums
        let a0 = 0.25f32.mul_add(8.0, 0.0625 * 8.0);
        let a4 = 0.25f32.mul_add(24.0, 0.0625 * 24.0);
        let summs = (-1.0f32).mul_add(3.0, 2.0 * 8.0);
        assert_eq!(y[0], (a0 + a4) + summs);
    }

    /// Against the f64 dot of the dequantized values (the emulation's rounding is a few f32
    /// ulps of the summed magnitudes), and the same bits for 1 and 3 threads.
    #[test]
    fn close_to_f64_and_thread_invariant() {
        for dtype in [DType::Q4_0, DType::Q4_1, DType::Q5_1, DType::Q8_0] {
            let (t, out, inp) = (5, 37, 256);
            let b = blocks(dtype, out * inp / QK, 3);
            let w = GgmlWeights::from_blocks(dtype, &b, out, inp).unwrap();
            let mut wf = vec![0f32; out * inp];
            qforge_codecs::decode_to_f32(dtype, &b, &mut wf).unwrap();
            let mut r = lcg(9);
            let x: Vec<f32> = (0..t * inp)
                .map(|_| (r() % 2001) as f32 / 1000.0 - 1.0)
                .collect();
            let a = quantize_q8(&x, !w.m.is_empty());
            let run = |n| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .build()
                    .unwrap();
                let mut y = vec![0f32; t * out];
                pool.install(|| matmul(&a, t, &w, out, inp, &mut y));
                y
            };
            let y = run(1);
            assert_eq!(y, run(3), "{dtype}");
            for i in 0..t {
                for o in 0..out {
                    let (mut want, mut mag) = (0f64, 0f64);
                    for k in 0..inp {
                        let blk = (i * inp + k) / QK;
                        let av = f64::from(a.d[blk]) * f64::from(a.codes[i * inp + k]);
                        let p = av * f64::from(wf[o * inp + k]);
                        want += p;
                        mag += p.abs();
                    }
                    if !w.m.is_empty() {
                        // Q8_1's stored s replaces d·Σq in the min term
                        for b in 0..inp / QK {
                            let (ab, wb) = (i * inp / QK + b, o * inp / QK + b);
                            let dsum: f64 = (0..QK)
                                .map(|j| f64::from(a.d[ab]) * f64::from(a.codes[ab * QK + j]))
                                .sum();
                            want += f64::from(w.m[wb]) * (f64::from(a.s[ab]) - dsum);
                            mag += (f64::from(w.m[wb]) * f64::from(a.s[ab])).abs();
                        }
                    }
                    let err = (f64::from(y[i * out + o]) - want).abs();
                    assert!(
                        err <= mag * 4e-6 + 1e-30,
                        "{dtype} ({i}, {o}): {err} vs {mag}"
                    );
                }
            }
        }
    }
}
