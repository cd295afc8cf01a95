//! W8A8 FP8 (E4M3 weights with per-row or per-tensor scales, dynamic per-token E4M3
//! activations) as vLLM's scaled matmul defines it, independent of any summation order:
//! `y[m, n] = s_a[m] · (s_w[n] · acc[m, n])`, `acc = Σ_k xq[m, k]·wq[n, k]` over the FP8
//! values. The scale order is vLLM's CUTLASS epilogue (csrc/quantization/w8a8/cutlass/c3x/
//! scaled_mm_epilogues_c3x.hpp `ScaledEpilogue`: `EVTCompute0 = ScaleB × Accum`, then
//! `ScaleA × EVTCompute0`, both f32 multiplies).
//!
//! The dot is exact here: every E4M3 value is an integer multiple of 2⁻⁹ of magnitude at most
//! 448 = 229 376·2⁻⁹, so a product is an integer multiple of 2⁻¹⁸ below 448² < 2^17.7, and
//! any partial sum of `k` products is a multiple of 2⁻¹⁸ below k·2^17.7. That is exactly
//! representable in `f64` (53 significant bits) while k·2^17.7·2^18 < 2^53, i.e.
//! k < 2^17.3 = 160 000 ([`MAX_K`] = 2^17). So an `f64` GEMM in any order and with any
//! blocking gives the exact sum, and its one rounding to `f32` is the hardware accumulator's
//! ideal. (A GPU accumulates in f32 in its own order; the exact sum is the formula's value,
//! which no order-specific emulation of one kernel would be for another.)

use rayon::prelude::*;

/// Longest reduction for which the `f64` sum of E4M3 products is exact (module docs).
pub const MAX_K: usize = 1 << 17;

/// Output rows (weight rows) converted to `f64` per pass: bounds the temporary to
/// `CHUNK · inp` doubles.
const CHUNK: usize = 256;

/// An FP8 E4M3 weight's codes and scales.
#[derive(Debug, Clone)]
pub struct Fp8Weights {
    /// E4M3 bytes, row-major `[out, inp]`.
    pub codes: Vec<u8>,
    /// One scale per output row, or one for the whole tensor.
    pub scale: Vec<f32>,
}

/// `y[t, out]` (overwritten) for activations `xq` (E4M3 values as `f32`, `[t, inp]`) with
/// per-row scales `s_a` and weights `w` (module docs).
///
/// # Panics
/// If a buffer is shorter than its shape says, the scale count is neither 1 nor `out`, or
/// `inp` exceeds [`MAX_K`] (caller bugs: [`Fp8Weights`] are built only below it).
pub fn matmul(
    xq: &[f32],
    s_a: &[f32],
    t: usize,
    w: &Fp8Weights,
    out: usize,
    inp: usize,
    y: &mut [f32],
) {
    assert!(
        xq.len() >= t * inp
            && s_a.len() >= t
            && w.codes.len() >= out * inp
            && (w.scale.len() == 1 || w.scale.len() == out)
            && y.len() >= t * out
            && inp <= MAX_K,
        "fp8 matmul shapes"
    );
    if t == 0 || out == 0 {
        return;
    }
    let lut: Vec<f64> = (0..=255u8)
        .map(|b| f64::from(qforge_codecs::float::f8_e4m3_to_f32(b)))
        .collect();
    let x64: Vec<f64> = xq[..t * inp].par_iter().map(|&v| f64::from(v)).collect();
    let mut w64 = vec![0f64; CHUNK.min(out) * inp];
    let mut acc = vec![0f64; t * CHUNK.min(out)];
    for c0 in (0..out).step_by(CHUNK) {
        let nc = CHUNK.min(out - c0);
        w64[..nc * inp]
            .par_chunks_mut(inp.max(1))
            .zip(w.codes[c0 * inp..(c0 + nc) * inp].par_chunks(inp.max(1)))
            .for_each(|(d, s)| {
                for (d, s) in d.iter_mut().zip(s) {
                    *d = lut[usize::from(*s)];
                }
            });
        crate::matmul::matmul_t(&x64, t, inp, &w64[..nc * inp], nc, &mut acc[..t * nc]);
        y[..t * out]
            .par_chunks_mut(out)
            .zip(acc[..t * nc].par_chunks(nc))
            .zip(&s_a[..t])
            .for_each(|((row, a), sa)| {
                for (j, (v, a)) in row[c0..c0 + nc].iter_mut().zip(a).enumerate() {
                    let sw = if w.scale.len() == 1 {
                        w.scale[0]
                    } else {
                        w.scale[c0 + j]
                    };
                    #[allow(clippy::cast_possible_truncation)] // the accumulator's rounding
                    let a = *a as f32;
                    *v = sa * (sw * a);
                }
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qforge_codecs::float::f8_e4m3_to_f32;

    /// The `f64` dot equals an exact integer dot (codes × 2⁹ are integers, products in i128)
    /// for any summation order, here against the largest-magnitude codes and a long row where
    /// an `f32` sum would round; the scales apply as `s_a · (s_w · acc)`.
    #[test]
    fn exact_integer_dot_then_scales() {
        let (t, out, inp) = (3, 5, 4096);
        let mut s = 12345u64;
        let mut next = || {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (s >> 33) as u8
        };
        // any byte but the two NaN codes (0x7F, 0xFF)
        let mut code = || loop {
            let b = next();
            if b & 0x7F != 0x7F {
                return b;
            }
        };
        let w = Fp8Weights {
            codes: (0..out * inp).map(|_| code()).collect(),
            scale: vec![0.5, 1.25, 3.0e-3, 7.0, 1.0],
        };
        let xb: Vec<u8> = (0..t * inp).map(|_| code()).collect();
        let xq: Vec<f32> = xb.iter().map(|&b| f8_e4m3_to_f32(b)).collect();
        let s_a = [0.1f32, 2.0, 1.0e-4];
        let mut y = vec![0f32; t * out];
        matmul(&xq, &s_a, t, &w, out, inp, &mut y);
        let int = |b: u8| (f64::from(f8_e4m3_to_f32(b)) * 512.0) as i128;
        for i in 0..t {
            for o in 0..out {
                let exact: i128 = (0..inp)
                    .map(|k| int(xb[i * inp + k]) * int(w.codes[o * inp + k]))
                    .sum();
                // exact / 2^18, rounded once to f32
                let acc = (exact as f64 / f64::from(1u32 << 18)) as f32;
                assert_eq!(y[i * out + o], s_a[i] * (w.scale[o] * acc), "({i}, {o})");
            }
        }
        // a per-tensor scale
        let w1 = Fp8Weights {
            codes: w.codes.clone(),
            scale: vec![0.75],
        };
        let mut y1 = vec![0f32; t * out];
        matmul(&xq, &s_a, t, &w1, out, inp, &mut y1);
        let mut y2 = vec![0f32; t * out];
        let w2 = Fp8Weights {
            codes: w.codes.clone(),
            scale: vec![0.75; out],
        };
        matmul(&xq, &s_a, t, &w2, out, inp, &mut y2);
        assert_eq!(y1, y2);
    }
}
