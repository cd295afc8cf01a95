//! FP8 E4M3 weights with compressed-tensors' (llm-compressor's) arithmetic: one scale per
//! output channel (`FP8_DYNAMIC` / `FP8` presets, `strategy: channel`) or per
//! `bh × bw` block (`FP8_BLOCK`, `strategy: block`, `block_structure: [128, 128]`).
//!
//! These are separate from [`crate::fp8`]'s FBGEMM rule (which divides in `f32`, clamps the
//! scale below at `1/(448·512)` and never writes `0x80`): compressed-tensors does its tensor
//! operations in the model dtype, so for a BF16 model the quotient `W / scale` is rounded to
//! BF16 before the FP8 cast. The rule (quantization/utils/helpers.py `calculate_qparams`,
//! quantization/lifecycle/forward_helpers.py `_quantize` / `_process_block`,
//! compressors/naive_quantized/base.py, read at compressed-tensors 0.19.0 and 0.20.0), with `r`
//! the model dtype's rounding ([`Int4Arith`]):
//!
//! ```text
//! amax = max(|min(B, 0)|, max(B, 0))         // B: the channel or block
//! s    = r(amax / 448)                        // bf16 / bf16(448)
//!        (s == 0 → eps: 2^-7 for BF16, 2^-23 for F32; torch.finfo(dtype).eps)
//! q    = e4m3( clamp(r(x / s) + 0, ±448) )   // + 0: the zero point llm-compressor keeps while
//!                                             //   compressing turns −0 into +0; a negative
//!                                             //   quotient that rounds to zero is still 0x80
//! x ≈ r(f8(q) · s)                            // decompress: x_q.to(bf16) · scale
//! ```
//!
//! The inputs are the model's weights in the model dtype: the functions here round each input to
//! it first (`r(x)`, a no-op for values already in that dtype, e.g. a BF16 checkpoint quantized
//! to a BF16 model), as the model holds them once loaded in that dtype.
//!
//! Blocks: the weight is zero-padded to whole blocks (`maybe_pad_tensor_for_block_quant`), so an
//! edge block's amax is that of its valid part (the padding zeros change neither `min(B, 0)` nor
//! `max(B, 0)`), and the scale tensor is `[ceil(rows/bh), ceil(cols/bw)]` (SmolLM2's 576 columns
//! are 4.5 blocks of 128: five block columns, the last one 64 wide).

use rayon::prelude::*;

use crate::error::check_len;
use crate::float::{bf16_bits_to_f32, f32_to_bf16_bits, f8_e4m3_to_f32};
use crate::fp8::{encode_e4m3_sat, encode_e4m3_sat_finite, row_amax, E4M3_MAX};
use crate::int4::Int4Arith;
use crate::{Error, Result};

/// compressed-tensors' `FP8_BLOCK` block structure.
pub const CT_BLOCK: [usize; 2] = [128, 128];

fn r(a: Int4Arith, x: f32) -> f32 {
    match a {
        Int4Arith::F32 => x,
        Int4Arith::Bf16 => bf16_bits_to_f32(f32_to_bf16_bits(x)),
    }
}

/// The FP8 scale compressed-tensors gives a channel or block whose absolute maximum is `amax`.
pub fn ct_fp8_scale(amax: f32, arith: Int4Arith) -> f32 {
    let s = r(arith, amax / E4M3_MAX);
    if s != 0.0 {
        return s;
    }
    match arith {
        Int4Arith::F32 => f32::EPSILON,
        Int4Arith::Bf16 => 1.0 / 128.0,
    }
}

/// The FP8 code of one element `x` with scale `s` (module docs; the scalar reference of the
/// row functions).
pub fn ct_fp8_code(x: f32, s: f32, arith: Int4Arith) -> u8 {
    // NaN cannot occur: inputs are finite and s > 0 (an overflow to ±inf saturates)
    encode_e4m3_sat((r(arith, r(arith, x) / s) + 0.0).clamp(-E4M3_MAX, E4M3_MAX))
}

/// BF16 rounding of a non-NaN `f32` on its bits (RNE), branch-free so that row loops vectorize;
/// equal to [`f32_to_bf16_bits`] widened back for every non-NaN input (±inf included).
// always: inlined into the AVX2 copies of the row loops
#[allow(clippy::inline_always)]
#[inline(always)]
fn round_bf16(x: f32) -> f32 {
    let u = x.to_bits();
    f32::from_bits(u.wrapping_add(0x7FFF + ((u >> 16) & 1)) & 0xFFFF_0000)
}

/// [`ct_fp8_code`] of every element of a finite row with scale `s > 0`; `BF16` picks the
/// model dtype's rounding of the quotient. Compiled for AVX2 when the CPU has it (the same IEEE
/// operations, so the bytes do not depend on the CPU; tested below).
fn encode_row_ct(row: &[f32], s: f32, arith: Int4Arith, out: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        #[allow(unsafe_code)]
        unsafe {
            match arith {
                Int4Arith::Bf16 => encode_row_ct_avx2::<true>(row, s, out),
                Int4Arith::F32 => encode_row_ct_avx2::<false>(row, s, out),
            }
        }
        return;
    }
    match arith {
        Int4Arith::Bf16 => encode_row_ct_base::<true>(row, s, out),
        Int4Arith::F32 => encode_row_ct_base::<false>(row, s, out),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn encode_row_ct_avx2<const BF16: bool>(row: &[f32], s: f32, out: &mut [u8]) {
    encode_row_ct_base::<BF16>(row, s, out);
}

// always: inlined into the AVX2 copy, this loop is compiled for AVX2; called, it is not
#[allow(clippy::inline_always)]
#[inline(always)]
fn encode_row_ct_base<const BF16: bool>(row: &[f32], s: f32, out: &mut [u8]) {
    for (q, &x) in out.iter_mut().zip(row) {
        // the model holds r(x); the quotient is rounded to the model dtype; + 0 clears −0; the
        // saturating encoder is the clamp to ±448 and the cast
        let v = if BF16 {
            round_bf16(round_bf16(x) / s)
        } else {
            x / s
        };
        *q = encode_e4m3_sat_finite(v + 0.0);
    }
}

/// The absolute maximum of a finite row in the model dtype (`r` is monotonic, so it is the
/// rounded maximum), or the column of its first NaN/±inf.
fn row_amax_ct(row: &[f32], arith: Int4Arith) -> std::result::Result<f32, usize> {
    row_amax(row).map(|m| r(arith, m))
}

/// Quantize one row with its own scale (compressed-tensors `strategy: channel`, module docs):
/// writes the codes to `out` and returns the scale. Streaming writers use it a row at a time.
///
/// Errors: [`Error::NonFinite`] (row 0, the column of the first bad value),
/// [`Error::BufferLength`] when `out` is not as long as `row`.
pub fn quantize_fp8_row_ct(row: &[f32], out: &mut [u8], arith: Int4Arith) -> Result<f32> {
    check_len("out", row.len(), out.len())?;
    let amax = row_amax_ct(row, arith).map_err(|c| Error::NonFinite {
        row: 0,
        col: c as u64,
    })?;
    let s = ct_fp8_scale(amax, arith);
    encode_row_ct(row, s, arith, out);
    Ok(s)
}

/// [`quantize_fp8_row_ct`] of a row of little-endian BF16 values whose absolute maximum
/// `amax` is known (`crate::fp8::amax_of_bits`) and finite: the values are widened from their
/// bits inside the loop, so the row is read once. The same codes and scale as decoding the row
/// to `f32` first (widening BF16 is exact; tested below).
///
/// Errors: [`Error::BufferLength`] when `out` does not hold one code per value,
/// [`Error::InvalidParameter`] for a non-finite `amax`.
pub fn quantize_fp8_row_bf16_ct(
    bytes: &[u8],
    amax: f32,
    out: &mut [u8],
    arith: Int4Arith,
) -> Result<f32> {
    check_len("out", bytes.len() / 2, out.len())?;
    if !amax.is_finite() {
        return Err(Error::InvalidParameter {
            name: "amax",
            detail: format!("{amax} is not finite"),
        });
    }
    let s = ct_fp8_scale(r(arith, amax), arith);
    let mut buf = [0f32; 256];
    for (q, c) in out.chunks_mut(256).zip(bytes.chunks(512)) {
        let b = &mut buf[..q.len()];
        for (v, p) in b.iter_mut().zip(c.chunks_exact(2)) {
            *v = bf16_bits_to_f32(u16::from_le_bytes([p[0], p[1]]));
        }
        encode_row_ct(b, s, arith, q);
    }
    Ok(s)
}

/// The scales [`quantize_fp8_channel_ct`] gives the same input, without encoding (one pass of
/// row maxima), for writers that store the scales before the codes.
///
/// Errors: as [`quantize_fp8_channel_ct`].
pub fn channel_scales_ct(w: &[f32], k: usize, arith: Int4Arith) -> Result<Vec<f32>> {
    check(w, k, [1, 1])?;
    Ok(w.par_chunks(k)
        .map(|row| ct_fp8_scale(row_amax_ct(row, arith).unwrap_or(0.0), arith))
        .collect())
}

/// The one scale compressed-tensors gives a whole tensor (`strategy: tensor`, the `FP8`
/// preset's weights): [`ct_fp8_scale`] of the tensor's absolute maximum.
///
/// Errors: as [`quantize_fp8_channel_ct`].
pub fn tensor_scale_ct(w: &[f32], k: usize, arith: Int4Arith) -> Result<f32> {
    check(w, k, [1, 1])?;
    let amax = w
        .par_chunks(k)
        .map(|row| row_amax_ct(row, arith).unwrap_or(0.0))
        .reduce(|| 0.0, f32::max);
    Ok(ct_fp8_scale(amax, arith))
}

/// Quantize a row-major `[n, k]` tensor with one scale (`strategy: tensor`); writes the codes
/// to `out` and returns the scale.
///
/// Errors: as [`quantize_fp8_channel_ct`], and [`Error::BufferLength`] for a short `out`.
pub fn quantize_fp8_tensor_ct(
    w: &[f32],
    k: usize,
    out: &mut [u8],
    arith: Int4Arith,
) -> Result<f32> {
    check_len("out", w.len(), out.len())?;
    let s = tensor_scale_ct(w, k, arith)?;
    out.par_chunks_mut(k)
        .zip(w.par_chunks(k))
        .for_each(|(q, row)| encode_row_ct(row, s, arith, q));
    Ok(s)
}

/// FP8 codes and scales of a `[rows, cols]` matrix quantized in `bh × bw` blocks.
#[derive(Debug, Clone, PartialEq)]
pub struct Fp8Blocks {
    /// rows of the matrix
    pub rows: usize,
    /// columns of the matrix
    pub cols: usize,
    /// `[bh, bw]`
    pub block: [usize; 2],
    /// `[rows, cols]` E4M3 codes, row-major
    pub codes: Vec<u8>,
    /// `[ceil(rows/bh), ceil(cols/bw)]` dequantization scales (exact in the model dtype)
    pub scales: Vec<f32>,
}

fn check(w: &[f32], k: usize, block: [usize; 2]) -> Result<usize> {
    if k == 0 || block[0] == 0 || block[1] == 0 {
        return Err(Error::InvalidParameter {
            name: "shape",
            detail: format!("row length {k} and block {block:?} must be positive"),
        });
    }
    crate::error::finite_rows(w, k)
}

/// Quantize a row-major `[n, k]` matrix with one scale per row (compressed-tensors
/// `strategy: channel`). Returns the codes and the `n` scales.
///
/// Errors: [`Error::NonFinite`], [`Error::BufferLength`], [`Error::InvalidParameter`].
pub fn quantize_fp8_channel_ct(
    w: &[f32],
    k: usize,
    arith: Int4Arith,
) -> Result<(Vec<u8>, Vec<f32>)> {
    let n = check(w, k, [1, 1])?;
    let mut codes = vec![0u8; w.len()];
    let mut scales = vec![0f32; n];
    codes
        .par_chunks_mut(k)
        .zip(scales.par_iter_mut())
        .zip(w.par_chunks(k))
        .for_each(|((q, s), row)| {
            *s = quantize_fp8_row_ct(row, q, arith).expect("rows checked finite");
        });
    Ok((codes, scales))
}

/// Quantize a row-major `[n, k]` matrix in `block = [bh, bw]` blocks (compressed-tensors
/// `strategy: block`, partial edge blocks as in the module docs).
///
/// Errors: [`Error::NonFinite`], [`Error::BufferLength`], [`Error::InvalidParameter`].
pub fn quantize_fp8_block_ct(
    w: &[f32],
    k: usize,
    block: [usize; 2],
    arith: Int4Arith,
) -> Result<Fp8Blocks> {
    let rows = check(w, k, block)?;
    let [bh, bw] = block;
    let nbc = k.div_ceil(bw);
    let mut codes = vec![0u8; w.len()];
    let mut scales = vec![0f32; rows.div_ceil(bh) * nbc];
    codes
        .par_chunks_mut(bh * k)
        .zip(scales.par_chunks_mut(nbc))
        .zip(w.par_chunks(bh * k))
        .for_each(|((q, s), band)| {
            for (bc, sc) in s.iter_mut().enumerate() {
                let cols = bc * bw..(bc * bw + bw).min(k);
                let amax = band
                    .chunks(k)
                    .flat_map(|row| &row[cols.clone()])
                    .fold(0f32, |m, x| m.max(x.abs()));
                *sc = ct_fp8_scale(r(arith, amax), arith);
                for (qrow, row) in q.chunks_mut(k).zip(band.chunks(k)) {
                    encode_row_ct(&row[cols.clone()], *sc, arith, &mut qrow[cols.clone()]);
                }
            }
        });
    Ok(Fp8Blocks {
        rows,
        cols: k,
        block,
        codes,
        scales,
    })
}

/// Dequantize block FP8 as compressed-tensors' decompressor does: `r(f8(q) · s)`.
///
/// Errors: [`Error::BufferLength`] when the codes or scales do not match the shape,
/// [`Error::InvalidParameter`] for a zero dimension.
pub fn dequantize_fp8_block_ct(b: &Fp8Blocks, arith: Int4Arith) -> Result<Vec<f32>> {
    let [bh, bw] = b.block;
    if b.cols == 0 || bh == 0 || bw == 0 {
        return Err(Error::InvalidParameter {
            name: "shape",
            detail: "columns and block sides must be positive".into(),
        });
    }
    let n = b.rows.checked_mul(b.cols).ok_or(Error::InvalidParameter {
        name: "shape",
        detail: "rows × cols overflows".into(),
    })?;
    crate::error::check_len("codes", n, b.codes.len())?;
    let nbc = b.cols.div_ceil(bw);
    crate::error::check_len("scales", b.rows.div_ceil(bh) * nbc, b.scales.len())?;
    let mut out = vec![0f32; n];
    out.par_chunks_mut(b.cols)
        .zip(b.codes.par_chunks(b.cols))
        .enumerate()
        .for_each(|(i, (o, q))| {
            let srow = &b.scales[i / bh * nbc..][..nbc];
            for (j, (v, &c)) in o.iter_mut().zip(q).enumerate() {
                *v = r(arith, f8_e4m3_to_f32(c) * srow[j / bw]);
            }
        });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_quotient_rounding_differs_from_f32_division() {
        // 10.5 + 2^-6 is above the FP8 midpoint 10.5 (f32: 11, code 0x53) but rounds to 10.5
        // in BF16, and that tie goes to the even code 10 (0x52)
        let s = ct_fp8_scale(448.0, Int4Arith::Bf16);
        assert_eq!(s, 1.0);
        let x = 10.5 + 1.0 / 64.0;
        assert_eq!(ct_fp8_code(x, s, Int4Arith::Bf16), 0x52);
        assert_eq!(ct_fp8_code(x, s, Int4Arith::F32), 0x53);
        // all-zero rows get BF16's eps; exact -0 gives 0x00, tiny negatives 0x80
        assert_eq!(ct_fp8_scale(0.0, Int4Arith::Bf16), 1.0 / 128.0);
        assert_eq!(ct_fp8_code(-0.0, 1.0, Int4Arith::Bf16), 0x00);
        assert_eq!(ct_fp8_code(-1e-6, 1.0, Int4Arith::Bf16), 0x80);
    }

    /// The branch-free BF16 rounding equals the reference on a sample of every sign, exponent
    /// and rounding case (low 16 bits: ties, just above and below, and a spread of others).
    #[test]
    fn branch_free_bf16_rounding_equals_reference() {
        for hi in 0u32..=0xFFFF {
            for lo in [0u32, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF, 0x1234, 0xC000] {
                let x = f32::from_bits((hi << 16) | lo);
                if x.is_nan() {
                    continue;
                }
                let want = bf16_bits_to_f32(f32_to_bf16_bits(x));
                assert_eq!(round_bf16(x).to_bits(), want.to_bits(), "{x:e}");
            }
        }
    }

    /// The row functions (dispatched and baseline loops, f32 and BF16 input) give the scalar
    /// rule's codes and scale on every finite BF16 pattern, in rows of 1021 (each its own scale),
    /// plus f32 inputs between BF16 values (rounded to the model dtype first).
    #[test]
    fn row_functions_equal_the_scalar_rule() {
        let bits: Vec<u16> = (0..=u16::MAX).filter(|b| b & 0x7FFF < 0x7F80).collect();
        for arith in [Int4Arith::Bf16, Int4Arith::F32] {
            for row in bits.chunks(1021) {
                let bytes: Vec<u8> = row.iter().flat_map(|b| b.to_le_bytes()).collect();
                let mut vals: Vec<f32> = row.iter().map(|&b| bf16_bits_to_f32(b)).collect();
                let amax = crate::fp8::amax_of_bits(crate::DType::BF16, &bytes).unwrap();
                let s = ct_fp8_scale(amax, arith);
                let want: Vec<u8> = vals.iter().map(|&x| ct_fp8_code(x, s, arith)).collect();
                let (mut a, mut b, mut c) = (
                    vec![0u8; row.len()],
                    vec![0u8; row.len()],
                    vec![0u8; row.len()],
                );
                assert_eq!(quantize_fp8_row_ct(&vals, &mut a, arith).unwrap(), s);
                assert_eq!(
                    quantize_fp8_row_bf16_ct(&bytes, amax, &mut b, arith).unwrap(),
                    s
                );
                match arith {
                    Int4Arith::Bf16 => encode_row_ct_base::<true>(&vals, s, &mut c),
                    Int4Arith::F32 => encode_row_ct_base::<false>(&vals, s, &mut c),
                }
                assert_eq!((&a, &b, &c), (&want, &want, &want), "{arith:?}");
                // the same values nudged off the BF16 grid: the BF16 rule rounds them back
                for v in &mut vals {
                    *v = f32::from_bits(v.to_bits() ^ 0x5A5);
                }
                let s = quantize_fp8_row_ct(&vals, &mut a, arith).unwrap();
                let amax = vals.iter().fold(0f32, |m, x| m.max(x.abs()));
                assert_eq!(s, ct_fp8_scale(r(arith, amax), arith));
                let want: Vec<u8> = vals.iter().map(|&x| ct_fp8_code(x, s, arith)).collect();
                assert_eq!(a, want);
            }
        }
        let mut bad = [1.0f32, 2.0, f32::NAN];
        assert_eq!(
            quantize_fp8_row_ct(&bad, &mut [0u8; 3], Int4Arith::Bf16),
            Err(Error::NonFinite { row: 0, col: 2 })
        );
        bad[2] = 0.0;
        assert!(quantize_fp8_row_ct(&bad, &mut [0u8; 2], Int4Arith::Bf16).is_err());
        assert!(
            quantize_fp8_row_bf16_ct(&[0; 4], f32::INFINITY, &mut [0u8; 2], Int4Arith::Bf16)
                .is_err()
        );
    }

    /// Block quantization (its rows encoded by the vectorized row loop) equals the scalar rule
    /// element by element: every finite BF16 pattern, as a `[n, 300]` matrix in 128×128 blocks
    /// with partial edges, plus the same values off the BF16 grid, both arithmetics.
    #[test]
    fn blocks_equal_the_scalar_rule() {
        let mut vals: Vec<f32> = (0..=u16::MAX)
            .filter(|b| b & 0x7FFF < 0x7F80)
            .map(bf16_bits_to_f32)
            .collect();
        let k = 300;
        vals.truncate(vals.len() / k * k);
        for nudge in [false, true] {
            if nudge {
                for v in &mut vals {
                    *v = f32::from_bits(v.to_bits() ^ 0x5A5);
                }
            }
            for arith in [Int4Arith::Bf16, Int4Arith::F32] {
                let b = quantize_fp8_block_ct(&vals, k, CT_BLOCK, arith).unwrap();
                let nbc = k.div_ceil(128);
                for (i, row) in vals.chunks(k).enumerate() {
                    for (j, &x) in row.iter().enumerate() {
                        let s = b.scales[(i / 128) * nbc + j / 128];
                        assert_eq!(b.codes[i * k + j], ct_fp8_code(x, s, arith), "{i},{j}");
                    }
                }
            }
        }
    }

    /// specs/serving-formats.md §1.4, FP8 per-row: s = amax/448 rounded to BF16 (0.001564026)
    /// and the quotients rounded to BF16 before the cast give the spec's codes.
    #[test]
    fn spec_worked_example_bf16_scale() {
        let w = [
            0.5,
            -0.25,
            0.100_097_66,
            0.0,
            0.699_218_75,
            -0.699_218_75,
            0.330_078_12,
            0.050_048_83,
        ];
        let (q, s) = quantize_fp8_channel_ct(&w, 8, Int4Arith::Bf16).unwrap();
        assert_eq!(f32_to_bf16_bits(s[0]), f32_to_bf16_bits(0.001_564_026));
        assert_eq!(q, [0x7A, 0xF2, 0x68, 0x00, 0x7E, 0xFE, 0x75, 0x60]);
        assert_eq!(channel_scales_ct(&w, 8, Int4Arith::Bf16).unwrap(), s);
    }

    #[test]
    fn per_tensor_uses_the_tensor_amax() {
        let w = [1.0f32, -2.0, 0.5, 896.0, -1e-9, -0.0];
        let mut q = [0u8; 6];
        let s = quantize_fp8_tensor_ct(&w, 2, &mut q, Int4Arith::Bf16).unwrap();
        assert_eq!(s, 2.0);
        assert_eq!(tensor_scale_ct(&w, 2, Int4Arith::Bf16).unwrap(), 2.0);
        assert_eq!(q, [0x30, 0xB8, 0x28, 0x7E, 0x80, 0x00]);
        let w0 = [0.0f32; 4];
        assert_eq!(
            tensor_scale_ct(&w0, 2, Int4Arith::Bf16).unwrap(),
            1.0 / 128.0
        );
        assert!(quantize_fp8_tensor_ct(&w, 2, &mut q[..5], Int4Arith::Bf16).is_err());
    }

    #[test]
    fn blocks_cover_partial_edges() {
        let (rows, k) = (5, 7);
        let w: Vec<f32> = (0..rows * k).map(|i| (i as f32 - 17.0) * 0.37).collect();
        let b = quantize_fp8_block_ct(&w, k, [2, 3], Int4Arith::Bf16).unwrap();
        assert_eq!(b.scales.len(), 3 * 3);
        // the last block (row 4, columns 6..7) holds one value
        let last = w[4 * k + 6].abs();
        assert_eq!(b.scales[8], ct_fp8_scale(last, Int4Arith::Bf16));
        let back = dequantize_fp8_block_ct(&b, Int4Arith::Bf16).unwrap();
        for (a, v) in w.iter().zip(&back) {
            assert!((a - v).abs() <= a.abs() / 8.0 + 1e-3, "{a} {v}");
        }
        assert!(quantize_fp8_block_ct(&w, k, [0, 3], Int4Arith::Bf16).is_err());
        let mut short = b.clone();
        short.scales.pop();
        assert!(dequantize_fp8_block_ct(&short, Int4Arith::Bf16).is_err());
    }
}
