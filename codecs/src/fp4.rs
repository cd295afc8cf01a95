//! FP4 E2M1 and E8M0 scalar codecs, and the three FP4 block formats built on them: NVFP4 and
//! MXFP4 as compressed-tensors writes them (`nvfp4-pack-quantized`, `mxfp4-pack-quantized`),
//! and ggml's `MXFP4` block (GGUF type 39).
//!
//! # Scalar codecs
//!
//! | function | rule |
//! |---|---|
//! | [`encode_e2m1`] | ml_dtypes 0.6.0 `astype(float4_e2m1fn)`: RNE, saturating at ±6 (±inf too); NaN gives `0x8` for a positive sign bit and `0x0` for a negative one (what ml_dtypes does) |
//! | [`e2m1_to_f32`] | the 16 codes: 0, 0.5, 1, 1.5, 2, 3, 4, 6 and their negatives (`0x8` is −0) |
//! | [`encode_e8m0`] | ml_dtypes 0.6.0 `astype(float8_e8m0fnu)`: `2^(c−127)`, the mantissa rounded half *up* (for `f32` subnormal inputs: above `2^−127` gives `2^−126`); 0, negatives, ±inf, NaN and results above `2^127` give `0xFF` (NaN); below `2^−127` gives `0x00` |
//! | [`e8m0_to_f32`] | `2^(c−127)`, `0xFF` is NaN (ml_dtypes `float8_e8m0fnu`) |
//!
//! Both are checked over every BF16 and F16 code and 10⁷ `f32` values against ml_dtypes in
//! `tests/interop/test_codecs.py`.
//!
//! # compressed-tensors FP4 rounding
//!
//! compressed-tensors rounds to E2M1 with thresholds (quantization/utils/fp4_utils.py
//! `cast_to_fp4`, CPU path; the Triton `_round_to_fp4` has the same thresholds), which is RNE on
//! the clamped value, and packs with `torch.signbit` (compressors/nvfp4/helpers.py
//! `pack_fp4_to_uint8`). The one difference from ml_dtypes is the sign of zero: `torch.sign(±0)`
//! is `+0`, so an exact ±0 packs as `0x0`, while a negative value that rounds to zero packs as
//! `0x8` ([`encode_e2m1_ct`]). Two codes share a byte, the even-indexed element in the low
//! nibble.
//!
//! # NVFP4 (compressed-tensors, llm-compressor `NVFP4A16` / `NVFP4`)
//!
//! Per tensor (llm-compressor `Observer.get_global_scale` → compressed-tensors
//! quantization/utils/helpers.py `generate_gparam`) and per group `G` of 16 consecutive elements
//! of a row (`calculate_qparams` with `scale_dtype = float8_e4m3fn`, then `_quantize` in
//! quantization/lifecycle/forward_helpers.py, read at compressed-tensors 0.19.0 and 0.20.0, which
//! agree here). `r` is the model dtype's rounding ([`Int4Arith`]: BF16 for a BF16 model), every
//! other operation is `f32`:
//!
//! ```text
//! amax = max(|min(W, 0)|, max(W, 0)), clamped below by the dtype's smallest normal (2^-126)
//! gs   = r(r(1 / amax) · 2688)            // 448·6 / amax is Tensor.__rtruediv__: reciprocal, then ×
//!        (inf or NaN → 1.0)               // torch.nan_to_num
//! s_G  = e4m3( clamp(gs · r(amax_G / 6), ±448) )     // FP8 code, stored as weight_scale
//!        (s_G == 0 → 0.125)                          // _get_dtype_eps(float8_e4m3fn)
//! q    = encode_e2m1_ct( clamp(x / (s_G / gs), ±6) ) // f32: the BF16 scale / F32 gs promotes
//! x ≈ q · (s_G / gs)                                 // decompress, then cast to the model dtype
//! ```
//!
//! llm-compressor fuses the global scales of q/k/v and of gate/up (one `gs` for the group); the
//! caller passes whichever `gs` applies, [`nvfp4_global_scale`] computes it from an amax.
//!
//! # MXFP4 (compressed-tensors, llm-compressor `MXFP4A16` / `MXFP4`)
//!
//! Groups of 32, one E8M0 exponent each (quantization/utils/mxfp_utils.py `round_to_power_2`
//! and `generate_mx_scales`, compressors/mx_utils.py):
//!
//! ```text
//! p    = round_to_power_2(amax_G)   // on the model dtype's bits: (bits + 2^(mant-2)) & sign|exp mask
//! e    = clamp(127 + floor(log2 p) − 2, 0, 255)       // log2(0) = −inf → 0
//! q    = encode_e2m1_ct( clamp(r(x / 2^(e−127)), ±6) ) // BF16 ÷ BF16 stays BF16
//! x ≈ r(q · 2^(e−127))
//! ```
//!
//! # ggml MXFP4 (GGUF type 39)
//!
//! `u8 e; u8 qs[16]`, element `j` in the low nibble of `qs[j]` and `j+16` in the high one, the
//! nibble an index into `kvalues_mxfp4 = {0, 1, 2, 3, 4, 6, 8, 12, 0, −1, …, −12}` (doubled E2M1)
//! and `d = 2^(e−128)` (`GGML_E8M0_TO_FP32_HALF`). Quantization is ggml-quants.c
//! `quantize_row_mxfp4_ref` / gguf-py quants.py `MXFP4.quantize_blocks`:
//! `e = floor(log2(amax)) − 2 + 127` (0 for an all-zero block) and each element takes the first
//! index of least `|kvalue·d − x|`.

use rayon::prelude::*;

use crate::error::check_len;
use crate::float::{bf16_bits_to_f32, f32_to_bf16_bits};
use crate::fp8::{encode_e4m3_sat, E4M3_MAX};
use crate::int4::Int4Arith;
use crate::{Error, Result};

/// Largest finite E2M1 magnitude.
pub const E2M1_MAX: f32 = 6.0;
/// NVFP4 group size (elements per FP8 scale).
pub const NVFP4_GROUP: usize = 16;
/// MXFP4 group size (elements per E8M0 scale), compressed-tensors and ggml alike.
pub const MXFP4_GROUP: usize = 32;
/// Bytes of one ggml `block_mxfp4` (`e` + 16 bytes of nibbles).
pub const GGML_MXFP4_BLOCK_BYTES: usize = 17;

const E2M1: [f32; 16] = [
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
];

/// ggml-common.h `kvalues_mxfp4`: E2M1 values doubled.
const KVALUES_MXFP4: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// Decode an E2M1 code (the low 4 bits of `code`).
pub fn e2m1_to_f32(code: u8) -> f32 {
    E2M1[usize::from(code & 0x0F)]
}

/// RNE magnitude code (0..=7) of a non-NaN `|x|`, saturating at 6.
fn e2m1_magnitude(a: f32) -> u8 {
    if a >= E2M1_MAX {
        return 7;
    }
    if a < 1.0 {
        // subnormal range: a·2 rounded to an integer (0, 1 or 2; 2 is the code of 1.0)
        return (a * 2.0).round_ties_even() as u8;
    }
    // normal: rebias 127 → 1 and round the mantissa from 23 bits to 1, ties to even
    let rebased = a.to_bits() - (126 << 23);
    let code = (rebased + (1 << 21) - 1 + ((rebased >> 22) & 1)) >> 22;
    code.min(7) as u8
}

/// `f32` → E2M1 exactly as ml_dtypes 0.6.0 `astype(float4_e2m1fn)` (rule in the module docs).
pub fn encode_e2m1(x: f32) -> u8 {
    let sign = ((x.to_bits() >> 28) & 0x8) as u8;
    if x.is_nan() {
        return sign ^ 0x8;
    }
    sign | e2m1_magnitude(x.abs())
}

/// compressed-tensors' E2M1 code of a finite `x` (module docs): clamp to ±6, RNE, and the sign
/// bit only for `x < 0` (an exact −0 packs as `0x0`).
pub fn encode_e2m1_ct(x: f32) -> u8 {
    let m = e2m1_magnitude(x.abs());
    if x < 0.0 {
        m | 0x8
    } else {
        m
    }
}

/// Decode an E8M0 byte as ml_dtypes `float8_e8m0fnu`: `2^(c−127)`, `0xFF` is NaN.
pub fn e8m0_to_f32(c: u8) -> f32 {
    match c {
        0xFF => f32::NAN,
        0 => f32::from_bits(0x0040_0000), // 2^-127, an f32 subnormal
        _ => f32::from_bits(u32::from(c) << 23),
    }
}

/// `f32` → E8M0 exactly as ml_dtypes 0.6.0 `astype(float8_e8m0fnu)` (rule in the module docs).
pub fn encode_e8m0(x: f32) -> u8 {
    if x.is_nan() || x <= 0.0 || x.is_infinite() {
        return 0xFF;
    }
    let bits = x.to_bits();
    let exp = bits >> 23;
    if exp == 0 {
        // f32 subnormals (below 2^-126): 2^-127 itself and anything smaller give code 0,
        // anything above 2^-127 gives code 1 (what ml_dtypes does)
        return u8::from(bits > 0x0040_0000);
    }
    let code = exp + u32::from(bits & 0x0040_0000 != 0);
    if code > 254 {
        0xFF
    } else {
        code as u8
    }
}

/// The model dtype's rounding of one tensor operation's `f32` result.
fn r(a: Int4Arith, x: f32) -> f32 {
    match a {
        Int4Arith::F32 => x,
        Int4Arith::Bf16 => bf16_bits_to_f32(f32_to_bf16_bits(x)),
    }
}

/// A row-major `[rows, cols]` matrix in an FP4 block format as compressed-tensors stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct Fp4Packed {
    /// rows (output features)
    pub rows: usize,
    /// columns (input features)
    pub cols: usize,
    /// `weight_packed`: `[rows, cols/2]` U8, two E2M1 codes per byte, even element low
    pub packed: Vec<u8>,
    /// `weight_scale`: `[rows, cols/group]` U8, FP8 E4M3 codes (NVFP4) or E8M0 exponents (MXFP4)
    pub scales: Vec<u8>,
}

fn check_matrix(w: &[f32], k: usize, group: usize) -> Result<usize> {
    if k == 0 || k % group != 0 {
        return Err(Error::GroupMismatch {
            k: k as u64,
            group: group as u64,
            suggested: group as u64,
        });
    }
    crate::error::finite_rows(w, k)
}

/// `max(|min(g, 0)|, max(g, 0))`, compressed-tensors' symmetric amax.
fn amax(g: &[f32]) -> f32 {
    g.iter().fold(0f32, |m, x| m.max(x.abs()))
}

/// Pack E2M1 codes two per byte, even element in the low nibble.
fn pack_pairs(codes: impl Iterator<Item = u8>, out: &mut [u8]) {
    let mut it = codes;
    for o in out.iter_mut() {
        let lo = it.next().unwrap_or(0);
        let hi = it.next().unwrap_or(0);
        *o = lo | (hi << 4);
    }
}

/// NVFP4's per-tensor global scale for a tensor (or fused tensors) whose absolute maximum is
/// `amax` (module docs; compressed-tensors `generate_gparam`). The result is stored as the F32
/// `weight_global_scale`.
pub fn nvfp4_global_scale(amax: f32, arith: Int4Arith) -> f32 {
    let tiny = f32::MIN_POSITIVE; // 2^-126, torch.finfo(bf16 and f32).tiny
    let a = if amax.is_nan() { amax } else { amax.max(tiny) };
    let gs = r(arith, r(arith, 1.0 / a) * (E4M3_MAX * E2M1_MAX));
    if gs.is_finite() {
        gs
    } else {
        1.0
    }
}

/// The FP8 E4M3 code of one NVFP4 group scale (module docs).
fn nvfp4_scale_code(amax_g: f32, gs: f32, arith: Int4Arith) -> u8 {
    let s = gs * r(arith, amax_g / E2M1_MAX);
    let code = encode_e4m3_sat(s.min(E4M3_MAX));
    if code == 0 {
        0x20 // 0.125, compressed-tensors' eps for an FP8 scale
    } else {
        code
    }
}

/// Quantize a row-major `[n, k]` matrix to NVFP4 with the global scale `gs` (module docs).
/// `k` must be a multiple of 16.
///
/// Errors: [`Error::GroupMismatch`], [`Error::BufferLength`], [`Error::NonFinite`], and
/// [`Error::InvalidParameter`] for a `gs` that is not finite and positive.
pub fn quantize_nvfp4(w: &[f32], k: usize, gs: f32, arith: Int4Arith) -> Result<Fp4Packed> {
    if !(gs.is_finite() && gs > 0.0) {
        return Err(Error::InvalidParameter {
            name: "global_scale",
            detail: format!("{gs} is not a finite positive number"),
        });
    }
    let rows = check_matrix(w, k, NVFP4_GROUP)?;
    let ng = k / NVFP4_GROUP;
    let mut packed = vec![0u8; w.len() / 2];
    let mut scales = vec![0u8; rows * ng];
    packed
        .par_chunks_mut(NVFP4_GROUP / 2)
        .zip(scales.par_iter_mut())
        .zip(w.par_chunks(NVFP4_GROUP))
        .for_each(|((p, s), g)| {
            *s = nvfp4_scale_code(amax(g), gs, arith);
            let div = crate::float::f8_e4m3_to_f32(*s) / gs;
            pack_pairs(
                g.iter()
                    .map(|&x| encode_e2m1_ct((x / div).clamp(-E2M1_MAX, E2M1_MAX))),
                p,
            );
        });
    Ok(Fp4Packed {
        rows,
        cols: k,
        packed,
        scales,
    })
}

fn check_packed(p: &Fp4Packed, group: usize) -> Result<()> {
    if p.cols == 0 || p.cols % group != 0 {
        return Err(Error::GroupMismatch {
            k: p.cols as u64,
            group: group as u64,
            suggested: group as u64,
        });
    }
    let n = p.rows.checked_mul(p.cols).ok_or(Error::InvalidParameter {
        name: "shape",
        detail: "rows × cols overflows".into(),
    })?;
    check_len("weight_packed", n / 2, p.packed.len())?;
    check_len("weight_scale", n / group, p.scales.len())
}

/// Dequantize NVFP4: `q · (s_G / gs)` in `f32`, the value compressed-tensors' decompressor
/// computes before its cast to the model dtype (round it with the model dtype to get the
/// decompressed weight).
pub fn dequantize_nvfp4(p: &Fp4Packed, gs: f32) -> Result<Vec<f32>> {
    check_packed(p, NVFP4_GROUP)?;
    let mut out = vec![0f32; p.rows * p.cols];
    out.par_chunks_mut(NVFP4_GROUP)
        .zip(p.packed.par_chunks(NVFP4_GROUP / 2))
        .zip(p.scales.par_iter())
        .for_each(|((o, b), &s)| {
            let m = crate::float::f8_e4m3_to_f32(s) / gs;
            for (pair, &byte) in o.chunks_exact_mut(2).zip(b) {
                pair[0] = e2m1_to_f32(byte) * m;
                pair[1] = e2m1_to_f32(byte >> 4) * m;
            }
        });
    Ok(out)
}

/// compressed-tensors `round_to_power_2` of a non-negative `amax` on the model dtype's bits.
fn round_to_power_2(amax: f32, arith: Int4Arith) -> f32 {
    match arith {
        // mantissa 7, E2M1 mantissa 1: add 1 << 5, keep sign and exponent (0xFF80)
        Int4Arith::Bf16 => {
            let b = f32_to_bf16_bits(amax);
            bf16_bits_to_f32(b.wrapping_add(1 << 5) & 0xFF80)
        }
        // mantissa 23: add 1 << 21, keep sign and exponent
        Int4Arith::F32 => f32::from_bits(amax.to_bits().wrapping_add(1 << 21) & 0xFF80_0000),
    }
}

/// The E8M0 exponent compressed-tensors gives a group whose amax is `amax_g` (module docs).
pub fn mxfp4_ct_exponent(amax_g: f32, arith: Int4Arith) -> u8 {
    let p = round_to_power_2(amax_g, arith);
    if p == 0.0 {
        return 0; // log2(0) = -inf, clamped to 0
    }
    if p.is_infinite() {
        return 255;
    }
    // p is a power of two (normal), so floor(log2 p) is its unbiased exponent
    let e = (p.to_bits() >> 23) as i32 - 127 + 127 - 2;
    e.clamp(0, 255) as u8
}

/// The float scale of an MXFP4 exponent as compressed-tensors uses it: `2^(e−127)`
/// (`maybe_convert_from_mx_exp`; 255 gives +inf, not NaN).
pub fn mxfp4_ct_scale(e: u8) -> f32 {
    match e {
        0 => f32::from_bits(0x0040_0000),
        255 => f32::INFINITY,
        _ => f32::from_bits(u32::from(e) << 23),
    }
}

/// Quantize a row-major `[n, k]` matrix to compressed-tensors MXFP4 (module docs). `k` must be
/// a multiple of 32.
///
/// Errors: [`Error::GroupMismatch`], [`Error::BufferLength`], [`Error::NonFinite`].
pub fn quantize_mxfp4_ct(w: &[f32], k: usize, arith: Int4Arith) -> Result<Fp4Packed> {
    let rows = check_matrix(w, k, MXFP4_GROUP)?;
    let mut packed = vec![0u8; w.len() / 2];
    let mut scales = vec![0u8; rows * (k / MXFP4_GROUP)];
    packed
        .par_chunks_mut(MXFP4_GROUP / 2)
        .zip(scales.par_iter_mut())
        .zip(w.par_chunks(MXFP4_GROUP))
        .for_each(|((p, e), g)| {
            *e = mxfp4_ct_exponent(amax(g), arith);
            let s = mxfp4_ct_scale(*e);
            pack_pairs(
                g.iter()
                    .map(|&x| encode_e2m1_ct(r(arith, x / s).clamp(-E2M1_MAX, E2M1_MAX))),
                p,
            );
        });
    Ok(Fp4Packed {
        rows,
        cols: k,
        packed,
        scales,
    })
}

/// Dequantize compressed-tensors MXFP4: `r(q · 2^(e−127))` (BF16 × BF16 for a BF16 model).
pub fn dequantize_mxfp4_ct(p: &Fp4Packed, arith: Int4Arith) -> Result<Vec<f32>> {
    check_packed(p, MXFP4_GROUP)?;
    let mut out = vec![0f32; p.rows * p.cols];
    out.par_chunks_mut(MXFP4_GROUP)
        .zip(p.packed.par_chunks(MXFP4_GROUP / 2))
        .zip(p.scales.par_iter())
        .for_each(|((o, b), &e)| {
            let s = r(arith, mxfp4_ct_scale(e));
            for (pair, &byte) in o.chunks_exact_mut(2).zip(b) {
                pair[0] = r(arith, e2m1_to_f32(byte) * s);
                pair[1] = r(arith, e2m1_to_f32(byte >> 4) * s);
            }
        });
    Ok(out)
}

/// ggml-impl.h `GGML_E8M0_TO_FP32_HALF`: `2^(e−128)`.
pub fn ggml_e8m0_to_f32_half(e: u8) -> f32 {
    if e < 2 {
        f32::from_bits(0x0020_0000 << e)
    } else {
        f32::from_bits(u32::from(e - 1) << 23)
    }
}

/// ggml-quants.c `best_index_mxfp4`: the first index of least `|kvalue·d − x|`.
fn best_index_mxfp4(x: f32, d: f32) -> u8 {
    let mut best = 0u8;
    let mut best_err = (f32::from(KVALUES_MXFP4[0]) * d - x).abs();
    for (i, &kv) in KVALUES_MXFP4.iter().enumerate().skip(1) {
        let err = (f32::from(kv) * d - x).abs();
        if err < best_err {
            best = i as u8;
            best_err = err;
        }
    }
    best
}

/// The ggml MXFP4 exponent of a block with absolute maximum `amax`:
/// `(uint8_t)(floorf(log2f(amax)) − 2 + 127)`, 0 when `amax` is 0. `log2f` is taken as the
/// correctly rounded `f32` log2 (the `f64` log2 rounded once); below `2^−125` the C conversion
/// of a negative float to `uint8_t` wraps as x86 does (`cvttss2si`, low byte).
fn ggml_mxfp4_exponent(amax: f32) -> u8 {
    if amax <= 0.0 {
        return 0;
    }
    let l = (f64::from(amax).log2() as f32).floor();
    (l - 2.0 + 127.0) as i32 as u8
}

/// Quantize `x` (a whole number of 32-element blocks) to ggml MXFP4 blocks
/// (ggml-quants.c `quantize_row_mxfp4_ref`, gguf-py `MXFP4.quantize_blocks`).
///
/// Errors: [`Error::PartialBlock`], [`Error::NonFinite`] (row 0, the index of the value).
pub fn quantize_mxfp4_ggml(x: &[f32]) -> Result<Vec<u8>> {
    if x.len() % MXFP4_GROUP != 0 {
        return Err(Error::PartialBlock {
            dtype: crate::DType::MXFP4,
            elements: x.len() as u64,
            block: MXFP4_GROUP as u64,
        });
    }
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFinite {
            row: 0,
            col: i as u64,
        });
    }
    let mut out = vec![0u8; x.len() / MXFP4_GROUP * GGML_MXFP4_BLOCK_BYTES];
    out.par_chunks_mut(GGML_MXFP4_BLOCK_BYTES)
        .zip(x.par_chunks(MXFP4_GROUP))
        .for_each(|(b, xb)| {
            let e = ggml_mxfp4_exponent(amax(xb));
            let d = ggml_e8m0_to_f32_half(e);
            b[0] = e;
            for j in 0..16 {
                b[1 + j] = best_index_mxfp4(xb[j], d) | (best_index_mxfp4(xb[j + 16], d) << 4);
            }
        });
    Ok(out)
}

/// Dequantize one ggml MXFP4 block (ggml-quants.c `dequantize_row_mxfp4`): `x = kvalue · d`.
pub(crate) fn dequantize_mxfp4_ggml_block(b: &[u8], o: &mut [f32]) {
    let d = ggml_e8m0_to_f32_half(b[0]);
    for j in 0..16 {
        let q = b[1 + j];
        o[j] = f32::from(KVALUES_MXFP4[usize::from(q & 0x0F)]) * d;
        o[j + 16] = f32::from(KVALUES_MXFP4[usize::from(q >> 4)]) * d;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e2m1_roundtrips_every_code_and_rounds_to_even() {
        for c in 0u8..16 {
            let v = e2m1_to_f32(c);
            let want = if c == 8 { 8 } else { c };
            assert_eq!(encode_e2m1(v), want, "{c}");
        }
        // ties: 0.25→0, 0.75→1, 1.25→1, 1.75→2, 2.5→2, 3.5→4, 5→4
        let ties = [
            (0.25, 0),
            (0.75, 2),
            (1.25, 2),
            (1.75, 4),
            (2.5, 4),
            (3.5, 6),
            (5.0, 6),
        ];
        for (x, c) in ties {
            assert_eq!(encode_e2m1(x), c, "{x}");
            assert_eq!(encode_e2m1(-x), c | 8, "{x}");
        }
        assert_eq!(encode_e2m1(1e30), 7);
        assert_eq!(encode_e2m1(f32::NEG_INFINITY), 15);
        assert_eq!(encode_e2m1_ct(-0.0), 0);
        assert_eq!(encode_e2m1_ct(-0.1), 8);
    }

    #[test]
    fn e8m0_roundtrips_every_code() {
        for c in 0u8..255 {
            assert_eq!(encode_e8m0(e8m0_to_f32(c)), c);
        }
        assert!(e8m0_to_f32(255).is_nan());
        assert_eq!(encode_e8m0(1.5), 128);
        assert_eq!(encode_e8m0(3.0), 129);
        assert_eq!(encode_e8m0(0.0), 255);
    }

    #[test]
    fn ggml_e8m0_half_is_two_to_e_minus_128() {
        for e in 0u8..=254 {
            assert_eq!(
                f64::from(ggml_e8m0_to_f32_half(e)),
                2f64.powi(i32::from(e) - 128)
            );
        }
    }

    #[test]
    fn nvfp4_roundtrip_is_close_and_zero_groups_get_eps() {
        let mut w: Vec<f32> = (0..64)
            .map(|i| ((i * 37) % 23) as f32 / 7.0 - 1.5)
            .collect();
        w[32..48].fill(0.0);
        let amax = w.iter().fold(0f32, |m, x| m.max(x.abs()));
        let gs = nvfp4_global_scale(amax, Int4Arith::Bf16);
        let p = quantize_nvfp4(&w, 32, gs, Int4Arith::Bf16).unwrap();
        assert_eq!(p.scales[2], 0x20);
        let back = dequantize_nvfp4(&p, gs).unwrap();
        for (a, b) in w.iter().zip(&back) {
            assert!((a - b).abs() <= amax / 6.0, "{a} {b}");
        }
        assert!(quantize_nvfp4(&w, 24, gs, Int4Arith::Bf16).is_err());
        assert!(quantize_nvfp4(&w, 32, f32::NAN, Int4Arith::Bf16).is_err());
        assert_eq!(nvfp4_global_scale(0.0, Int4Arith::Bf16), 1.0);
    }

    #[test]
    fn mxfp4_exponents_round_up_from_one_point_seven_five() {
        // 1.75 rounds to 2 (then 2^(1-2)), 1.5 stays 1 (2^(0-2))
        assert_eq!(mxfp4_ct_exponent(1.75, Int4Arith::Bf16), 126);
        assert_eq!(mxfp4_ct_exponent(1.5, Int4Arith::Bf16), 125);
        assert_eq!(mxfp4_ct_exponent(0.0, Int4Arith::Bf16), 0);
        let w: Vec<f32> = (0..64).map(|i| (i as f32 - 31.5) / 10.0).collect();
        let p = quantize_mxfp4_ct(&w, 64, Int4Arith::Bf16).unwrap();
        let back = dequantize_mxfp4_ct(&p, Int4Arith::Bf16).unwrap();
        for (a, b) in w.iter().zip(&back) {
            assert!((a - b).abs() <= 1.0, "{a} {b}");
        }
    }

    #[test]
    fn ggml_mxfp4_roundtrip_and_hostile_input() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 - 20.0) * 0.3).collect();
        let q = quantize_mxfp4_ggml(&x).unwrap();
        assert_eq!(q.len(), 34);
        let mut back = vec![0f32; 64];
        for (b, o) in q.chunks(17).zip(back.chunks_mut(32)) {
            dequantize_mxfp4_ggml_block(b, o);
        }
        for (a, b) in x.iter().zip(&back) {
            assert!((a - b).abs() <= 2.0, "{a} {b}");
        }
        assert!(quantize_mxfp4_ggml(&x[..31]).is_err());
        let mut bad = x.clone();
        bad[5] = f32::INFINITY;
        assert!(quantize_mxfp4_ggml(&bad).is_err());
    }
}
