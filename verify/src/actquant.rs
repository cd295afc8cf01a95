//! Activation quantization emulated in `f32`: what a serving kernel or llama.cpp does to a
//! linear's input before the matmul.
//!
//! * [`fp8_per_token`]: dynamic per-token FP8 E4M3 (compressed-tensors W8A8 `strategy: token,
//!   dynamic: true`, fbgemm_fp8 with `activation_scale_ub`; specs/serving-formats.md §4a):
//!   `s_t = max(min(amax_t, ub)/448, 1/(448·512))`, `x_q = e4m3_sat(x/s_t)`; the caller
//!   multiplies the matmul's row `t` by `s_t`.
//! * [`fp8_per_token_group`]: dynamic per-token-group FP8 E4M3, what vLLM applies to the input
//!   of a block-quantized FP8 linear (compressed-tensors `FP8_BLOCK`, `input_activations:
//!   {strategy: group, group_size: 128, dynamic: true}`): vLLM
//!   model_executor/layers/quantization/utils/fp8_utils.py `per_token_group_quant_fp8` (CUDA:
//!   csrc/quantization/w8a8/fp8/per_token_group_quant.cu `ComputeGroupScale` /
//!   `QuantizeGroup`; Triton fallback `_per_token_group_quant_fp8`, the same formula):
//!   per group `g` of 128 consecutive values of a token, in `f32`,
//!   `s_g = max(eps, amax_g)/448` (`eps = 1e-10`), `x_q = e4m3(clamp(x/s_g, ±448))`; the block
//!   GEMM multiplies each group's partial sums by `s_g` and the weight block's scale, which the
//!   emulation does by replacing `x` with `x_q·s_g` before the `f32` matmul of the dequantized
//!   weights.
//! * [`ggml_quantize`]: ggml-cpu's quantization of the activation row to the weight type's
//!   `vec_dot_type` (`quantize_row_q8_0` / `quantize_row_q8_1` for AVX2 in
//!   ggml-cpu/arch/x86/quants.c, `quantize_row_q8_K_ref` in ggml-quants.c, f16/bf16 rounding),
//!   returned dequantized, plus for Q8_1 the per-block correction `s − d·Σq` that the
//!   `q4_1·q8_1` / `q5_1·q8_1` dot products add through the weight block's min `m` (they use
//!   the block's stored `s = f16(d·Σq)` instead of `d·Σq`). The quantizer itself is
//!   [`crate::gemm::ggml::quantize_q8`], whose codes the exact ggml dot products use.

use qforge_codecs::float::{f16_bits_to_f32, f32_to_bf16_bits, f32_to_f16_bits};
use qforge_codecs::fp8::{encode_e4m3_sat, E4M3_MAX, MIN_ROW_SCALE};
use qforge_codecs::DType;
use rayon::prelude::*;

fn f16_round(x: f32) -> f32 {
    f16_bits_to_f32(f32_to_f16_bits(x))
}

/// Quantize each row of `x` (`width` wide) to FP8 E4M3 in place (values replaced by the FP8
/// value, as `f32`), returning the per-row scales `s_t`.
pub fn fp8_per_token(x: &mut [f32], width: usize, ub: Option<f32>) -> Vec<f32> {
    x.par_chunks_mut(width)
        .map(|row| {
            let mut amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            if let Some(ub) = ub {
                amax = amax.min(ub);
            }
            let s = (amax / E4M3_MAX).max(MIN_ROW_SCALE);
            for v in row.iter_mut() {
                *v = qforge_codecs::float::f8_e4m3_to_f32(encode_e4m3_sat(*v / s));
            }
            s
        })
        .collect()
}

/// vLLM's activation group for block FP8 (`FP8_BLOCK`'s `input_activations.group_size`).
pub const FP8_ACT_GROUP: usize = 128;

/// Quantize-dequantize each row of `x` (`width` wide) in groups of `group` consecutive values
/// as vLLM's `per_token_group_quant_fp8` (module docs): each value becomes `x_q·s_g`. vLLM
/// requires whole groups (it asserts `width % group == 0`); a partial last group here is
/// quantized on its own, as compressed-tensors pads the weights' edge block.
pub fn fp8_per_token_group(x: &mut [f32], width: usize, group: usize) {
    const EPS: f32 = 1e-10;
    let group = group.max(1);
    x.par_chunks_mut(width.max(1)).for_each(|row| {
        for g in row.chunks_mut(group) {
            let s = g.iter().fold(EPS, |m, v| m.max(v.abs())) / E4M3_MAX;
            for v in g.iter_mut() {
                *v = qforge_codecs::float::f8_e4m3_to_f32(encode_e4m3_sat(*v / s)) * s;
            }
        }
    });
}

/// Quantize-dequantize each row of `x` (`width` wide, a multiple of 16) as NVFP4 W4A4
/// activations with the calibrated global scale `gs` (`input_global_scale`), as vLLM's
/// emulation does (model_executor/layers/quantization/utils/nvfp4_emulation_utils.py
/// `ref_nvfp4_quant` then `dequantize_to_dtype`, all `f32`): per group of 16,
/// `s = e4m3(clamp(gs · (amax · (1/6)), ±448))`, `q = e2m1(clamp(x · 1/(s · 1/gs), ±6))` (RNE,
/// vLLM's `cast_to_fp4` thresholds), `x ≈ q · (s / gs)`; a zero scale gives zeros.
pub fn nvfp4_qdq(x: &mut [f32], width: usize, gs: f32) {
    use qforge_codecs::fp4::{e2m1_to_f32, encode_e2m1_ct, E2M1_MAX, NVFP4_GROUP};
    let recip = |v: f32| if v == 0.0 { 0.0 } else { 1.0 / v };
    let inv6 = recip(E2M1_MAX);
    x.par_chunks_mut(width).for_each(|row| {
        for g in row.chunks_mut(NVFP4_GROUP) {
            let amax = g.iter().fold(0f32, |m, v| m.max(v.abs()));
            let s = (gs * (amax * inv6)).clamp(-E4M3_MAX, E4M3_MAX);
            let s = qforge_codecs::float::f8_e4m3_to_f32(encode_e4m3_sat(s));
            let out = recip(s * recip(gs));
            let back = s / gs;
            for v in g.iter_mut() {
                let q = e2m1_to_f32(encode_e2m1_ct((*v * out).clamp(-E2M1_MAX, E2M1_MAX)));
                *v = q * back;
            }
        }
    });
}

/// The activation format ggml-cpu's matmul converts a linear's input to (`vec_dot_type` of the
/// weight type in ggml-cpu.c's `type_traits_cpu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum GgmlActType {
    /// No conversion (F32 weights).
    F32,
    /// Rounded to f16 (F16 weights).
    F16,
    /// Rounded to bf16 (BF16 weights).
    Bf16,
    /// Q8_0 blocks of 32 (Q4_0, Q5_0, Q8_0 weights).
    Q8_0,
    /// Q8_1 blocks of 32 with `s = d·Σq` (Q4_1, Q5_1 weights).
    Q8_1,
    /// Q8_K blocks of 256 (K-quant weights).
    Q8K,
}

impl GgmlActType {
    /// The `vec_dot_type` of a weight dtype, or `None` when ggml has none we emulate.
    pub fn for_weight(dtype: DType) -> Option<Self> {
        Some(match dtype {
            DType::F32 => GgmlActType::F32,
            DType::F16 => GgmlActType::F16,
            DType::BF16 => GgmlActType::Bf16,
            DType::Q4_0 | DType::Q5_0 | DType::Q8_0 => GgmlActType::Q8_0,
            DType::Q4_1 | DType::Q5_1 => GgmlActType::Q8_1,
            DType::Q2_K | DType::Q3_K | DType::Q4_K | DType::Q5_K | DType::Q6_K => GgmlActType::Q8K,
            _ => return None,
        })
    }

    /// Block size along the row (1 for the float types).
    pub const fn block(self) -> usize {
        match self {
            GgmlActType::F32 | GgmlActType::F16 | GgmlActType::Bf16 => 1,
            GgmlActType::Q8_0 | GgmlActType::Q8_1 => 32,
            GgmlActType::Q8K => 256,
        }
    }
}

/// Quantize-dequantize `x` (rows of `width`, a multiple of the block size) in place as ggml-cpu
/// does for `ty`. For [`GgmlActType::Q8_1`] returns the per-(row, block) correction
/// `s − d·Σq` (row-major `[rows, width/32]`); otherwise an empty vector.
///
/// Q8_0/Q8_1 (AVX2 path): `amax` of the block, `d = amax/127` (stored as f16),
/// `id = 127/amax` (0 for an all-zero block), `q = round_half_even(x·id)`;
/// Q8_1 also stores `s = f16(d·Σq)` with the f32 `d`. Q8_K (`quantize_row_q8_K_ref`): `max` =
/// the value of largest magnitude (first one on ties), `iscale = −127/max`,
/// `q = min(127, nearest_int(iscale·x))`, `d = 1/iscale` kept in f32.
pub fn ggml_quantize(x: &mut [f32], width: usize, ty: GgmlActType) -> Vec<f32> {
    debug_assert!(width % ty.block() == 0 && x.len() % width.max(1) == 0);
    match ty {
        GgmlActType::F32 => Vec::new(),
        GgmlActType::F16 => {
            x.par_chunks_mut(4096)
                .for_each(|c| c.iter_mut().for_each(|v| *v = f16_round(*v)));
            Vec::new()
        }
        GgmlActType::Bf16 => {
            x.par_chunks_mut(4096).for_each(|c| {
                for v in c {
                    *v = qforge_codecs::float::bf16_bits_to_f32(f32_to_bf16_bits(*v));
                }
            });
            Vec::new()
        }
        GgmlActType::Q8_0 | GgmlActType::Q8_1 => {
            let want_corr = ty == GgmlActType::Q8_1;
            let q = crate::gemm::ggml::quantize_q8(x, want_corr);
            let mut corr = Vec::new();
            if want_corr {
                corr = vec![0f32; q.d.len()];
                corr.par_iter_mut().enumerate().for_each(|(b, c)| {
                    let sum: i32 = q.codes[b * 32..(b + 1) * 32]
                        .iter()
                        .map(|&v| i32::from(v))
                        .sum();
                    *c = q.s[b] - q.d[b] * sum as f32;
                });
            }
            x.par_chunks_mut(32)
                .zip(q.codes.par_chunks(32))
                .zip(&q.d)
                .for_each(|((xb, qb), d)| {
                    for (v, c) in xb.iter_mut().zip(qb) {
                        *v = d * f32::from(*c);
                    }
                });
            corr
        }
        GgmlActType::Q8K => {
            x.par_chunks_mut(256).for_each(|blk| {
                let (mut max, mut amax) = (0f32, 0f32);
                for v in blk.iter() {
                    if v.abs() > amax {
                        amax = v.abs();
                        max = *v;
                    }
                }
                if amax == 0.0 {
                    blk.fill(0.0);
                    return;
                }
                let iscale = -127.0 / max;
                let d = 1.0 / iscale;
                for v in blk.iter_mut() {
                    let q = (iscale * *v).round_ties_even().min(127.0);
                    *v = d * q;
                }
            });
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp8_per_token_scales_and_saturates() {
        let mut x = vec![1.0, -448.0 * 2.0, 3.0, 0.0, 0.0, 0.0];
        let s = fp8_per_token(&mut x, 3, None);
        assert_eq!(s[0], 2.0);
        assert_eq!(x[1], -448.0);
        assert_eq!(s[1], MIN_ROW_SCALE);
        assert_eq!(&x[3..], &[0.0, 0.0, 0.0]);
        // with an upper bound the outlier saturates
        let mut y = vec![1.0, 2400.0, -3.0];
        let s = fp8_per_token(&mut y, 3, Some(1200.0));
        assert_eq!(s[0], 1200.0 / 448.0);
        assert_eq!(y[1], 448.0);
        // (x_q · s) approximates x within FP8's half-ulp (2⁻⁴ relative)
        assert!((y[2] * s[0] + 3.0).abs() <= 3.0 / 16.0);
    }

    /// Per-token-group FP8 against values worked by hand from vLLM's formula: groups of 4 here
    /// (the rule does not depend on the size), one scale per group, a zero group untouched (the
    /// eps scale), saturation impossible (|x/s| ≤ 448), and a partial last group on its own.
    #[test]
    fn fp8_per_token_group_follows_vllm() {
        // x: group [448, -1, 0.3, 10] (s = 1) and group [0.5, 0.25, -0.125, 0.0625]
        // (s = 0.5/448); y: a zero group, then a partial group [3.0, -2.7] (s = 3/448)
        let mut x = vec![448.0, -1.0, 0.3, 10.0, 0.5, 0.25, -0.125, 0.0625];
        let mut y = vec![0.0, 0.0, -0.0, 0.0, 3.0, -2.7];
        fp8_per_token_group(&mut x, 8, 4);
        // s = 1: codes are the E4M3 roundings (0.3 → 0.3125 = 5·2⁻⁴, 10 → 10)
        assert_eq!(&x[..4], &[448.0, -1.0, 0.3125, 10.0]);
        // s = 0.5/448: x/s = 448, 224, -112, 56, all exact E4M3 values, so x comes back
        let s = 0.5f32 / 448.0;
        assert_eq!(&x[4..], &[448.0 * s, 224.0 * s, -112.0 * s, 56.0 * s]);
        fp8_per_token_group(&mut y, 6, 4);
        assert!(y[..4].iter().all(|v| *v == 0.0));
        // partial group: s = 3/448, -2.7/s = -403.2 → -416 (E4M3 steps of 32 above 256)
        let s = 3.0f32 / 448.0;
        assert_eq!(y[4], 448.0 * s);
        assert_eq!(y[5], -416.0 * s);
        // the width-128 default equals a hand loop over 128-wide groups
        let mut z: Vec<f32> = (0..640)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let orig = z.clone();
        fp8_per_token_group(&mut z, 320, FP8_ACT_GROUP);
        for (r, row) in orig.chunks(320).enumerate() {
            for (gi, g) in row.chunks(FP8_ACT_GROUP).enumerate() {
                let s = g.iter().fold(1e-10f32, |m, v| m.max(v.abs())) / 448.0;
                for (j, v) in g.iter().enumerate() {
                    let want = qforge_codecs::float::f8_e4m3_to_f32(encode_e4m3_sat(v / s)) * s;
                    assert_eq!(z[r * 320 + gi * FP8_ACT_GROUP + j], want);
                }
            }
        }
    }

    #[test]
    fn q8_0_and_q8_1_follow_ggml() {
        let mut x: Vec<f32> = (0..64).map(|i| (i as f32 - 20.0) * 0.37).collect();
        let orig = x.clone();
        let corr = ggml_quantize(&mut x, 64, GgmlActType::Q8_1);
        assert_eq!(corr.len(), 2);
        for (b, blk) in orig.chunks(32).enumerate() {
            let amax = blk.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let mut sum = 0;
            for (i, v) in blk.iter().enumerate() {
                let q = (v * (127.0 / amax)).round_ties_even();
                sum += q as i32;
                assert_eq!(x[b * 32 + i], f16_round(d) * q);
            }
            assert_eq!(
                corr[b],
                f16_round(d * sum as f32) - f16_round(d) * sum as f32
            );
        }
        let mut z = vec![0f32; 32];
        assert_eq!(ggml_quantize(&mut z, 32, GgmlActType::Q8_0).len(), 0);
        assert!(z.iter().all(|v| *v == 0.0));
    }

    #[test]
    fn q8_k_follows_the_reference() {
        let mut x: Vec<f32> = (0..256)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let orig = x.clone();
        ggml_quantize(&mut x, 256, GgmlActType::Q8K);
        let max = orig
            .iter()
            .copied()
            .fold(0f32, |m, v| if v.abs() > m.abs() { v } else { m });
        let iscale = -127.0 / max;
        for (a, b) in x.iter().zip(&orig) {
            let q = (iscale * b).round_ties_even().min(127.0);
            assert_eq!(*a, (1.0 / iscale) * q);
            // error at most half a step
            assert!((a - b).abs() <= 0.5 / iscale.abs() * 1.0001);
        }
    }

    /// NVFP4 activations: values on the E2M1 grid under an exact scale come back unchanged; an
    /// inexact group scale is rounded to E4M3 first (1.3/6 → 0.21875) and the codes follow
    /// it (vLLM's `ref_nvfp4_quant`, worked by hand); a zero group stays zero.
    #[test]
    fn nvfp4_groups_of_16_under_the_global_scale() {
        let grid: [f32; 8] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];
        let mut x: Vec<f32> = grid.iter().chain(grid.iter()).map(|v| -v).collect();
        let want = x.clone();
        nvfp4_qdq(&mut x, 16, 448.0); // s = e4m3(448 · 6/6) = 448, scale 1
        assert_eq!(x, want);
        let mut y = vec![0f32; 32];
        y[0] = 1.3;
        y[1] = 0.5;
        y[2] = -0.1;
        nvfp4_qdq(&mut y, 32, 1.0);
        // s = e4m3(1.3 · (1/6)) = 0.21875; 1.3/s = 5.94 → 6, 0.5/s = 2.29 → 2, 0.1/s = 0.46 → 0.5
        assert_eq!(&y[..3], &[6.0 * 0.21875, 2.0 * 0.21875, -0.5 * 0.21875]);
        assert!(y[3..].iter().all(|v| *v == 0.0));
    }
}
