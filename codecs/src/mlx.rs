//! MLX affine quantization (`mx.quantize(w, group_size, bits)`, what `mlx_lm.convert -q`
//! writes): `bits` 4 or 8, groups of 32, 64 or 128 along a row, codes packed little-endian into
//! `uint32` words (element `i` of a word at bits `bits·i ..`), one scale and one bias per group
//! stored in the model dtype.
//!
//! The rule is mlx's CPU kernel (mlx/backend/cpu/quantized.cpp `quantize`, read for mlx
//! 0.32.4), all in `f32`, the scale and bias rounded to the model dtype only when stored:
//!
//! ```text
//! w_min, w_max = min(G), max(G)
//! mask  = |w_min| > |w_max|
//! scale = max((w_max − w_min) / (2^bits − 1), 1e-7);  scale = mask ? scale : −scale
//! edge  = mask ? w_min : w_max
//! q0    = rint(edge / scale)                     // ties to even
//! q0 ≠ 0: scale = edge / q0, bias = edge;  else bias = 0
//! q     = clamp(rint((w − bias) / scale), 0, 2^bits − 1)   // with the f32 scale and bias
//! stored: r(scale), r(bias)
//! w ≈ r(r(s · q) + b)                            // mx.dequantize in the model dtype
//! ```

use rayon::prelude::*;

use crate::float::{bf16_bits_to_f32, f32_to_bf16_bits};
use crate::int4::Int4Arith;
use crate::{Error, Result};

/// One matrix in MLX's affine layout.
#[derive(Debug, Clone, PartialEq)]
pub struct MlxAffine {
    /// rows (output features)
    pub rows: usize,
    /// columns (input features)
    pub cols: usize,
    /// 4 or 8
    pub bits: u8,
    /// 32, 64 or 128
    pub group_size: usize,
    /// `weight`: `[rows, cols·bits/32]` U32
    pub packed: Vec<u32>,
    /// `scales`: `[rows, cols/group_size]`, exact in the model dtype
    pub scales: Vec<f32>,
    /// `biases`: `[rows, cols/group_size]`, exact in the model dtype
    pub biases: Vec<f32>,
}

fn r(a: Int4Arith, x: f32) -> f32 {
    match a {
        Int4Arith::F32 => x,
        Int4Arith::Bf16 => bf16_bits_to_f32(f32_to_bf16_bits(x)),
    }
}

fn check_params(k: usize, bits: u8, group: usize) -> Result<()> {
    if !matches!(bits, 4 | 8) {
        return Err(Error::InvalidParameter {
            name: "bits",
            detail: format!("{bits}: MLX affine layouts here are 4 or 8 bits"),
        });
    }
    if !matches!(group, 32 | 64 | 128) {
        return Err(Error::InvalidParameter {
            name: "group_size",
            detail: format!("{group}: MLX takes 32, 64 or 128"),
        });
    }
    if k == 0 || k % group != 0 {
        return Err(Error::GroupMismatch {
            k: k as u64,
            group: group as u64,
            suggested: group as u64,
        });
    }
    Ok(())
}

/// Scale and bias (`f32`, before storage rounding) of one group (module docs).
fn group_params(g: &[f32], n_bins: f32) -> (f32, f32) {
    let (mut w_min, mut w_max) = (f32::INFINITY, f32::NEG_INFINITY);
    for &x in g {
        w_max = w_max.max(x);
        w_min = w_min.min(x);
    }
    let mask = w_min.abs() > w_max.abs();
    let mut scale = ((w_max - w_min) / n_bins).max(1e-7);
    if !mask {
        scale = -scale;
    }
    let edge = if mask { w_min } else { w_max };
    let q0 = (edge / scale).round_ties_even();
    if q0 == 0.0 {
        (scale, 0.0)
    } else {
        (edge / q0, edge)
    }
}

/// Quantize a row-major `[n, k]` matrix like `mx.quantize` (module docs); `arith` is the model
/// dtype the scales and biases are stored in (BF16 or F32).
///
/// Errors: [`Error::InvalidParameter`] for bits/group sizes MLX does not take,
/// [`Error::GroupMismatch`], [`Error::BufferLength`], [`Error::NonFinite`].
pub fn quantize_mlx_affine(
    w: &[f32],
    k: usize,
    bits: u8,
    group: usize,
    arith: Int4Arith,
) -> Result<MlxAffine> {
    check_params(k, bits, group)?;
    crate::error::finite_rows(w, k)?;
    let per = 32 / usize::from(bits);
    let n_bins = f32::from((1u16 << bits) - 1);
    let ng = w.len() / group;
    let mut packed = vec![0u32; w.len() / per];
    let mut scales = vec![0f32; ng];
    let mut biases = vec![0f32; ng];
    packed
        .par_chunks_mut(group / per)
        .zip(scales.par_iter_mut())
        .zip(biases.par_iter_mut())
        .zip(w.par_chunks(group))
        .for_each(|(((p, s), b), g)| {
            let (scale, bias) = group_params(g, n_bins);
            for (word, xs) in p.iter_mut().zip(g.chunks(per)) {
                *word = xs.iter().enumerate().fold(0u32, |acc, (i, &x)| {
                    let q = ((x - bias) / scale).round_ties_even().clamp(0.0, n_bins);
                    acc | ((q as u32) << (i * usize::from(bits)))
                });
            }
            *s = r(arith, scale);
            *b = r(arith, bias);
        });
    Ok(MlxAffine {
        rows: w.len() / k,
        cols: k,
        bits,
        group_size: group,
        packed,
        scales,
        biases,
    })
}

/// Dequantize like `mx.dequantize`: `r(r(s · q) + b)` in the model dtype.
///
/// Errors: [`Error::InvalidParameter`], [`Error::GroupMismatch`], [`Error::BufferLength`] when
/// the arrays do not match the shape.
pub fn dequantize_mlx_affine(m: &MlxAffine, arith: Int4Arith) -> Result<Vec<f32>> {
    check_params(m.cols, m.bits, m.group_size)?;
    let n = m.rows.checked_mul(m.cols).ok_or(Error::InvalidParameter {
        name: "shape",
        detail: "rows × cols overflows".into(),
    })?;
    let per = 32 / usize::from(m.bits);
    crate::error::check_len("weight", n / per, m.packed.len())?;
    crate::error::check_len("scales", n / m.group_size, m.scales.len())?;
    crate::error::check_len("biases", n / m.group_size, m.biases.len())?;
    let mask = (1u32 << m.bits) - 1;
    let mut out = vec![0f32; n];
    out.par_chunks_mut(m.group_size)
        .zip(m.packed.par_chunks(m.group_size / per))
        .zip(m.scales.par_iter().zip(m.biases.par_iter()))
        .for_each(|((o, p), (&s, &b))| {
            for (j, v) in o.iter_mut().enumerate() {
                let q = (p[j / per] >> ((j % per) * usize::from(m.bits))) & mask;
                *v = r(arith, r(arith, s * q as f32) + b);
            }
        });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_is_within_half_a_step() {
        let w: Vec<f32> = (0..256)
            .map(|i| ((i * 53) % 97) as f32 / 97.0 - 0.3)
            .collect();
        for bits in [4u8, 8] {
            let m = quantize_mlx_affine(&w, 128, bits, 64, Int4Arith::F32).unwrap();
            let back = dequantize_mlx_affine(&m, Int4Arith::F32).unwrap();
            for (i, (a, b)) in w.iter().zip(&back).enumerate() {
                let half_step = m.scales[i / 64].abs() * 0.5;
                assert!((a - b).abs() <= half_step * 1.001, "{bits}: {a} {b}");
            }
        }
        assert!(quantize_mlx_affine(&w, 128, 3, 64, Int4Arith::F32).is_err());
        assert!(quantize_mlx_affine(&w, 128, 4, 48, Int4Arith::F32).is_err());
        assert!(quantize_mlx_affine(&w, 96, 4, 64, Int4Arith::F32).is_err());
        let mut bad = w.clone();
        bad[7] = f32::NAN;
        assert!(quantize_mlx_affine(&bad, 128, 4, 64, Int4Arith::F32).is_err());
    }
}
