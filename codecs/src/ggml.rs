//! Dequantization of llama.cpp's ggml block formats.
//!
//! Each function follows ggml's `dequantize_row_*` (ggml-quants.c) and gguf-py's numpy
//! `dequantize_blocks` (gguf-py/gguf/quants.py) operation for operation, in `f32`, with no fused
//! multiply-adds, so results are bit-identical to gguf-py. Block layouts are in
//! `specs/gguf.md` §2.1.

use crate::float::f16_bits_to_f32;
use crate::{DType, Error, Result};

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16_bits_to_f32(u16::from_le_bytes([b[i], b[i + 1]]))
}

/// Dequantize whole blocks of `dtype`; `bytes.len()` and `out.len()` have been checked to agree.
pub(crate) fn dequantize(dtype: DType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    let f: fn(&[u8], &mut [f32]) = match dtype {
        DType::Q4_0 => q4_0,
        DType::Q4_1 => q4_1,
        DType::Q5_0 => q5_0,
        DType::Q5_1 => q5_1,
        DType::Q8_0 => q8_0,
        DType::Q2_K => q2_k,
        DType::Q3_K => q3_k,
        DType::Q4_K => q4_k,
        DType::Q5_K => q5_k,
        DType::Q6_K => q6_k,
        DType::MXFP4 => crate::fp4::dequantize_mxfp4_ggml_block,
        other => return Err(Error::Unsupported(other)),
    };
    let bb = dtype.block_bytes() as usize;
    let bs = dtype.block_size() as usize;
    for (blk, o) in bytes.chunks_exact(bb).zip(out.chunks_exact_mut(bs)) {
        f(blk, o);
    }
    Ok(())
}

/// `f16 d; u8 qs[16]`: x[j] = d·(lo(qs[j]) − 8), x[j+16] = d·(hi(qs[j]) − 8).
fn q4_0(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..16 {
        let q = b[2 + j];
        o[j] = d * f32::from(i8::try_from(q & 0x0F).unwrap_or(0) - 8);
        o[j + 16] = d * f32::from(i8::try_from(q >> 4).unwrap_or(0) - 8);
    }
}

/// `f16 d; f16 m; u8 qs[16]`: x = d·q + m.
fn q4_1(b: &[u8], o: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for j in 0..16 {
        let q = b[4 + j];
        o[j] = d * f32::from(q & 0x0F) + m;
        o[j + 16] = d * f32::from(q >> 4) + m;
    }
}

/// Five-bit value `j` of a Q5 block: low nibble from `qs`, fifth bit from the 32-bit `qh`.
fn q5_value(qh: u32, qs: &[u8], j: usize) -> u8 {
    let nib = if j < 16 {
        qs[j] & 0x0F
    } else {
        qs[j - 16] >> 4
    };
    nib | ((((qh >> j) & 1) as u8) << 4)
}

/// `f16 d; u32 qh; u8 qs[16]`: x = d·(q − 16).
fn q5_0(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for (j, x) in o.iter_mut().enumerate().take(32) {
        *x = d * f32::from(i16::from(q5_value(qh, &b[6..], j)) - 16);
    }
}

/// `f16 d; f16 m; u32 qh; u8 qs[16]`: x = d·q + m.
fn q5_1(b: &[u8], o: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for (j, x) in o.iter_mut().enumerate().take(32) {
        *x = d * f32::from(q5_value(qh, &b[8..], j)) + m;
    }
}

/// `f16 d; i8 qs[32]`: x = q·d.
fn q8_0(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, x) in o.iter_mut().enumerate().take(32) {
        *x = f32::from(b[2 + j] as i8) * d;
    }
}

/// `u8 scales[16]; u8 qs[64]; f16 d; f16 dmin`: x = (d·sc)·q − dmin·m over 16-element groups.
fn q2_k(b: &[u8], o: &mut [f32]) {
    let (scales, qs) = (&b[0..16], &b[16..80]);
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    for (e, x) in o.iter_mut().enumerate().take(256) {
        let (g, s, l) = (e / 128, (e % 128) / 32, e % 32);
        let q = (qs[g * 32 + l] >> (2 * s)) & 3;
        let sc = scales[e / 16];
        let dl = d * f32::from(sc & 0x0F);
        let ml = dmin * f32::from(sc >> 4);
        *x = dl * f32::from(q) - ml;
    }
}

/// `u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d`: 6-bit signed scales per 16 elements,
/// q = low2 − 4·(1 − hbit).
fn q3_k(b: &[u8], o: &mut [f32]) {
    let (hmask, qs, sc) = (&b[0..32], &b[32..96], &b[96..108]);
    let d = f16_at(b, 108);
    let mut scales = [0f32; 16];
    for (i, s) in scales.iter_mut().enumerate() {
        let lo = if i < 8 { sc[i] & 0x0F } else { sc[i - 8] >> 4 };
        let hi = (sc[8 + i % 4] >> (2 * (i / 4))) & 3;
        *s = f32::from(((lo | (hi << 4)) as i8).wrapping_sub(32));
    }
    for (e, x) in o.iter_mut().enumerate().take(256) {
        let (g, s, l) = (e / 128, (e % 128) / 32, e % 32);
        let low = i8::try_from((qs[g * 32 + l] >> (2 * s)) & 3).unwrap_or(0);
        let hbit = i8::try_from((hmask[l] >> (e / 32)) & 1).unwrap_or(0);
        let q = low - ((hbit ^ 1) << 2);
        *x = (d * scales[e / 16]) * f32::from(q);
    }
}

/// The eight 6-bit (scale, min) pairs of a Q4_K/Q5_K super-block (ggml `get_scale_min_k4`).
fn scale_min_k4(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..4 {
        sc[j] = s[j] & 0x3F;
        mn[j] = s[j + 4] & 0x3F;
        sc[j + 4] = (s[j + 8] & 0x0F) | ((s[j] >> 2) & 0x30);
        mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 2) & 0x30);
    }
    (sc, mn)
}

/// `f16 d; f16 dmin; u8 scales[12]; u8 qs[128]`: x = (d·sc_j)·q − dmin·m_j over 32-element groups.
fn q4_k(b: &[u8], o: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (sc, mn) = scale_min_k4(&b[4..16]);
    let qs = &b[16..144];
    for (e, x) in o.iter_mut().enumerate().take(256) {
        let (c, l) = (e / 64, e % 64);
        let byte = qs[32 * c + l % 32];
        let q = if l < 32 { byte & 0x0F } else { byte >> 4 };
        let j = e / 32;
        *x = (d * f32::from(sc[j])) * f32::from(q) - dmin * f32::from(mn[j]);
    }
}

/// Q4_K plus a fifth bit per element from `qh[32]`.
fn q5_k(b: &[u8], o: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (sc, mn) = scale_min_k4(&b[4..16]);
    let (qh, qs) = (&b[16..48], &b[48..176]);
    for (e, x) in o.iter_mut().enumerate().take(256) {
        let (c, l) = (e / 64, e % 64);
        let byte = qs[32 * c + l % 32];
        let nib = if l < 32 { byte & 0x0F } else { byte >> 4 };
        let hi = (qh[e % 32] >> (e / 32)) & 1;
        let q = nib | (hi << 4);
        let j = e / 32;
        *x = (d * f32::from(sc[j])) * f32::from(q) - dmin * f32::from(mn[j]);
    }
}

/// `u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d` (d last): x = (d·sc)·(q − 32).
fn q6_k(b: &[u8], o: &mut [f32]) {
    let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = f16_at(b, 208);
    for (e, x) in o.iter_mut().enumerate().take(256) {
        let (h, r) = (e / 128, e % 128);
        let (quad, l) = (r / 32, r % 32);
        let lb = ql[64 * h + l + 32 * (quad & 1)];
        let nib = if quad < 2 { lb & 0x0F } else { lb >> 4 };
        let hi = (qh[32 * h + l] >> (2 * quad)) & 3;
        let q = i16::from(nib | (hi << 4)) - 32;
        let s = f32::from(scales[e / 16] as i8);
        *x = (d * s) * f32::from(q);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode_to_f32;

    fn f16b(x: f32) -> [u8; 2] {
        half::f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn q8_0_block() {
        let mut b = vec![0u8; 34];
        b[..2].copy_from_slice(&f16b(0.5));
        for j in 0..32 {
            b[2 + j] = (j as i8 - 16) as u8;
        }
        let mut o = [0f32; 32];
        decode_to_f32(DType::Q8_0, &b, &mut o).unwrap();
        for (j, x) in o.iter().enumerate() {
            assert_eq!(*x, (j as f32 - 16.0) * 0.5);
        }
    }

    #[test]
    fn q4_0_nibble_order_is_split_halves() {
        let mut b = vec![0u8; 18];
        b[..2].copy_from_slice(&f16b(1.0));
        b[2] = 0xF0; // element 0 -> lo 0 -> -8, element 16 -> hi 15 -> 7
        let mut o = [0f32; 32];
        decode_to_f32(DType::Q4_0, &b, &mut o).unwrap();
        assert_eq!((o[0], o[16], o[1]), (-8.0, 7.0, -8.0));
    }

    #[test]
    fn q4_1_uses_min() {
        let mut b = vec![0u8; 20];
        b[..2].copy_from_slice(&f16b(2.0));
        b[2..4].copy_from_slice(&f16b(-1.0));
        b[4] = 0x31;
        let mut o = [0f32; 32];
        decode_to_f32(DType::Q4_1, &b, &mut o).unwrap();
        assert_eq!((o[0], o[16], o[2]), (1.0, 5.0, -1.0));
    }

    #[test]
    fn q6_k_d_is_last() {
        let mut b = vec![0u8; 210];
        b[208..].copy_from_slice(&f16b(0.25));
        b[192] = 2; // scale of elements 0..16
                    // element 0: ql[0] low nibble 0, qh[0] bits 0..2 = 0 -> q = -32
        let mut o = [0f32; 256];
        decode_to_f32(DType::Q6_K, &b, &mut o).unwrap();
        assert_eq!(o[0], 0.25 * 2.0 * -32.0);
        assert_eq!(o[16], 0.0); // scale 0
    }

    #[test]
    fn unsupported_and_partial() {
        let mut o = [0f32; 256];
        assert_eq!(
            decode_to_f32(DType::IQ2_XXS, &[0u8; 66], &mut o),
            Err(Error::Unsupported(DType::IQ2_XXS))
        );
        let mut o = [0f32; 31];
        assert!(matches!(
            decode_to_f32(DType::Q8_0, &[0u8; 34], &mut o),
            Err(Error::PartialBlock { .. })
        ));
    }
}
