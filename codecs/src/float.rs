//! Scalar element formats: IEEE binary16/32/64, bfloat16, FP8 (E4M3FN, E5M2) and integers.
//!
//! Decoding to `f32` is exact for every 8- and 16-bit float format (each value is representable in
//! binary32, NaN payloads are kept where the source has them). `F64` and the 32/64-bit integers
//! round to the nearest `f32`.

use crate::{DType, Result};

/// Decode one FP8 E4M3FN byte. `0x7F`/`0xFF` are NaN; there are no infinities; the largest
/// finite magnitude is 448 (`0x7E`); subnormals are `m/8 · 2^-6`.
pub fn f8_e4m3_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0f32 } else { 1.0 };
    let exp = i32::from((b >> 3) & 0x0F);
    let man = f32::from(b & 0x07);
    if exp == 0x0F && b & 0x07 == 0x07 {
        return f32::NAN.copysign(sign);
    }
    if exp == 0 {
        sign * man / 8.0 * 2f32.powi(-6)
    } else {
        sign * (1.0 + man / 8.0) * 2f32.powi(exp - 7)
    }
}

/// Decode one FP8 E5M2 byte. E5M2 is exactly the upper byte of an IEEE binary16, so this is a
/// shift, infinities and NaNs included.
pub fn f8_e5m2_to_f32(b: u8) -> f32 {
    f16_bits_to_f32(u16::from(b) << 8)
}

/// Decode bfloat16 bits: a 16-bit shift, exact for every code. NaN payloads (signalling ones
/// included) are kept bit for bit, as numpy and gguf-py do; `half`'s conversion quiets them.
pub const fn bf16_bits_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// Decode IEEE binary16 bits exactly, keeping NaN payloads bit for bit (numpy's
/// `npy_halfbits_to_floatbits`; hardware F16C and `half` quiet signalling NaNs instead).
pub fn f16_bits_to_f32(h: u16) -> f32 {
    // Branch-free (selects only) so that row decoders vectorize: normal codes rebias the
    // exponent by 112, inf/NaN by 224 (exponent 31 → 255, payload kept, a signalling NaN stays
    // signalling), and subnormals and zeros are man · 2^-24, exact in f32.
    let em = u32::from(h & 0x7FFF);
    let sign = u32::from(h & 0x8000) << 16;
    let mut bits = (em << 13) + (112 << 23);
    if em >= 0x7C00 {
        bits += 112 << 23;
    }
    let sub = (em as f32 * f32::from_bits(0x3380_0000)).to_bits(); // 2^-24
    f32::from_bits(sign | if em < 0x0400 { sub } else { bits })
}

/// Encode an `f32` as bfloat16 bits exactly as ggml (`ggml_compute_fp32_to_bf16`, ggml-impl.h)
/// and gguf-py (`gguf.quants.BF16`) do: round to nearest, ties to even; overflow rounds to
/// ±inf; a NaN keeps its sign and upper payload bits and gets the quiet bit 0x0040 forced on
/// (so a signalling NaN never truncates to an infinity).
pub const fn f32_to_bf16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    if u & 0x7FFF_FFFF > 0x7F80_0000 {
        return ((u >> 16) | 0x40) as u16;
    }
    // u64 so that 0x7FFF_FFFF-ish patterns cannot wrap (they are NaN and handled above anyway)
    ((u as u64 + 0x7FFF + ((u as u64 >> 16) & 1)) >> 16) as u16
}

/// Encode an `f32` as IEEE binary16 bits: round to nearest, ties to even; magnitudes that
/// round above 65504 become ±inf; subnormals are produced exactly; NaN stays NaN (sign and
/// the top 10 payload bits kept, quiet bit set — the `half` crate's rule, which is also what
/// x86 F16C `vcvtps2ph` does).
pub fn f32_to_f16_bits(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}

/// Decode `bytes` of a scalar format into `out`. Returns `None` for block formats (handled by
/// [`crate::ggml`]). The caller has checked that the lengths agree.
pub(crate) fn decode_plain(dtype: DType, bytes: &[u8], out: &mut [f32]) -> Option<Result<()>> {
    fn each<const N: usize>(bytes: &[u8], out: &mut [f32], f: impl Fn([u8; N]) -> f32) {
        for (o, c) in out.iter_mut().zip(bytes.chunks_exact(N)) {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            *o = f(a);
        }
    }
    match dtype {
        DType::F32 => each(bytes, out, f32::from_le_bytes),
        DType::F16 => each(bytes, out, |b| f16_bits_to_f32(u16::from_le_bytes(b))),
        DType::BF16 => each(bytes, out, |b| bf16_bits_to_f32(u16::from_le_bytes(b))),
        DType::F64 => each(bytes, out, |b| f64::from_le_bytes(b) as f32),
        DType::F8_E4M3 => each(bytes, out, |[b]| f8_e4m3_to_f32(b)),
        DType::F8_E5M2 => each(bytes, out, |[b]| f8_e5m2_to_f32(b)),
        DType::BOOL => each(bytes, out, |[b]| f32::from(u8::from(b != 0))),
        DType::U8 => each(bytes, out, |[b]| f32::from(b)),
        DType::I8 => each(bytes, out, |b| f32::from(i8::from_le_bytes(b))),
        DType::I16 => each(bytes, out, |b| f32::from(i16::from_le_bytes(b))),
        DType::U16 => each(bytes, out, |b| f32::from(u16::from_le_bytes(b))),
        DType::I32 => each(bytes, out, |b| i32::from_le_bytes(b) as f32),
        DType::U32 => each(bytes, out, |b| u32::from_le_bytes(b) as f32),
        DType::I64 => each(bytes, out, |b| i64::from_le_bytes(b) as f32),
        DType::U64 => each(bytes, out, |b| u64::from_le_bytes(b) as f32),
        _ => return None,
    }
    Some(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e4m3_known_codes() {
        assert_eq!(f8_e4m3_to_f32(0x00), 0.0);
        assert!(f8_e4m3_to_f32(0x80).is_sign_negative());
        assert_eq!(f8_e4m3_to_f32(0x01), 2f32.powi(-9));
        assert_eq!(f8_e4m3_to_f32(0x08), 2f32.powi(-6));
        assert_eq!(f8_e4m3_to_f32(0x38), 1.0);
        assert_eq!(f8_e4m3_to_f32(0x7E), 448.0);
        assert_eq!(f8_e4m3_to_f32(0xFE), -448.0);
        assert!(f8_e4m3_to_f32(0x7F).is_nan() && f8_e4m3_to_f32(0xFF).is_nan());
        // 0x78..0x7E are finite (E4M3FN has no infinities)
        let finite = (0u8..=255)
            .filter(|&b| f8_e4m3_to_f32(b).is_finite())
            .count();
        assert_eq!(finite, 254);
    }

    #[test]
    fn e4m3_is_monotonic_over_positive_codes() {
        let v: Vec<f32> = (0u8..0x7F).map(f8_e4m3_to_f32).collect();
        assert!(v.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn e5m2_matches_f16_upper_byte() {
        assert_eq!(f8_e5m2_to_f32(0x3C), 1.0);
        assert_eq!(f8_e5m2_to_f32(0x7B), 57344.0);
        assert_eq!(f8_e5m2_to_f32(0x7C), f32::INFINITY);
        assert!(f8_e5m2_to_f32(0x7D).is_nan());
        assert_eq!(f8_e5m2_to_f32(0x01), 2f32.powi(-16));
    }

    #[test]
    fn f16_decode_matches_half_for_all_non_nan_codes() {
        for bits in 0..=u16::MAX {
            let ours = f16_bits_to_f32(bits);
            let theirs = half::f16::from_bits(bits).to_f32();
            if theirs.is_nan() {
                assert!(ours.is_nan());
                assert_eq!(ours.to_bits() & 0x007F_E000, u32::from(bits & 0x3FF) << 13);
            } else {
                assert_eq!(ours.to_bits(), theirs.to_bits(), "{bits:#06x}");
            }
        }
    }

    /// The branch-free decoder against the textbook case analysis, bit for bit (NaN payloads
    /// and signalling bits included) on all 65,536 codes, and through `decode_plain`.
    #[test]
    fn f16_decode_matches_case_analysis_for_all_codes() {
        fn reference(h: u16) -> u32 {
            let sign = u32::from(h & 0x8000) << 16;
            let exp = u32::from((h >> 10) & 0x1F);
            let man = u32::from(h & 0x03FF);
            match (exp, man) {
                (0, 0) => sign,
                (0, _) => sign | (man as f32 * 2f32.powi(-24)).to_bits(),
                (0x1F, _) => sign | 0x7F80_0000 | (man << 13),
                _ => sign | ((exp + 112) << 23) | (man << 13),
            }
        }
        let bytes: Vec<u8> = (0..=u16::MAX).flat_map(u16::to_le_bytes).collect();
        let mut out = vec![0f32; 1 << 16];
        decode_plain(DType::F16, &bytes, &mut out).unwrap().unwrap();
        for bits in 0..=u16::MAX {
            assert_eq!(
                f16_bits_to_f32(bits).to_bits(),
                reference(bits),
                "{bits:#06x}"
            );
            assert_eq!(
                out[usize::from(bits)].to_bits(),
                reference(bits),
                "{bits:#06x}"
            );
        }
    }

    #[test]
    fn bf16_decode_is_exact_for_all_codes() {
        for bits in 0..=u16::MAX {
            let mut out = [0f32];
            decode_plain(DType::BF16, &bits.to_le_bytes(), &mut out)
                .unwrap()
                .unwrap();
            let want = f32::from_bits(u32::from(bits) << 16);
            assert!(out[0].to_bits() == want.to_bits(), "{bits:#06x}");
        }
    }
}
