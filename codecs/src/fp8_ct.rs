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
//! Blocks: the weight is zero-padded to whole blocks (`maybe_pad_tensor_for_block_quant`), so an
//! edge block's amax is that of its valid part (the padding zeros change neither `min(B, 0)` nor
//! `max(B, 0)`), and the scale tensor is `[ceil(rows/bh), ceil(cols/bw)]` (SmolLM2's 576 columns
//! are 4.5 blocks of 128: five block columns, the last one 64 wide).

use rayon::prelude::*;

use crate::float::{bf16_bits_to_f32, f32_to_bf16_bits, f8_e4m3_to_f32};
use crate::fp8::{encode_e4m3_sat, E4M3_MAX};
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

/// The FP8 code of one element `x` with scale `s` (module docs).
pub fn ct_fp8_code(x: f32, s: f32, arith: Int4Arith) -> u8 {
    // NaN cannot occur: inputs are finite and s > 0 (an overflow to ±inf saturates)
    encode_e4m3_sat((r(arith, x / s) + 0.0).clamp(-E4M3_MAX, E4M3_MAX))
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
            *s = ct_fp8_scale(row.iter().fold(0f32, |m, x| m.max(x.abs())), arith);
            for (o, &x) in q.iter_mut().zip(row) {
                *o = ct_fp8_code(x, *s, arith);
            }
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
                *sc = ct_fp8_scale(amax, arith);
                for (qrow, row) in q.chunks_mut(k).zip(band.chunks(k)) {
                    for (o, &x) in qrow[cols.clone()].iter_mut().zip(&row[cols.clone()]) {
                        *o = ct_fp8_code(x, *sc, arith);
                    }
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
