//! FP8 encoders (E4M3FN and E5M2) and FBGEMM-style row-wise / per-tensor FP8 quantization.
//!
//! # Encoders
//!
//! All encoders round to nearest, ties to even, on the exact binary value of the `f32` input
//! (there is no intermediate format, so there is no double rounding). They differ only in what
//! happens outside the finite range:
//!
//! | function | NaN | ±inf | finite overflow |
//! |---|---|---|---|
//! | [`encode_e4m3`] (ml_dtypes `float8_e4m3fn`) | `0x7F`/`0xFF` (sign kept) | `0x7F`/`0xFF` (NaN) | \|x\| > 464 → NaN; 448 ≤ \|x\| ≤ 464 → ±448 |
//! | [`encode_e4m3_sat`] (qforge weights) | `0x7F`/`0xFF` (sign kept) | ±448 | ±448 |
//! | [`encode_e5m2`] (ml_dtypes `float8_e5m2`) | `0x7E`/`0xFE` (sign kept) | ±inf `0x7C`/`0xFC` | \|x\| ≥ 61440 → ±inf |
//! | [`encode_e5m2_sat`] | `0x7E`/`0xFE` (sign kept) | ±57344 | ±57344 |
//!
//! The non-saturating encoders are bit-identical to ml_dtypes 0.6.0's `astype` from `float32`
//! (ml_dtypes/include/float8.h `ConvertImpl`, checked over all BF16/F16 codes and 10⁷ random
//! `f32` in `tests/interop/test_codecs.py`). The saturating ones equal ml_dtypes applied to
//! `np.clip(x, -max, max)`, i.e. compressed-tensors' "clamp, then cast" and CUDA's
//! `__NV_SATFINITE`: infinities saturate too, NaN stays NaN. NaN payloads are not kept (FP8
//! has one NaN per sign in E4M3FN; E5M2 uses the quiet pattern `0x7E`). The sign of zero is
//! kept: `-0.0` and negative values that round to zero encode as `0x80`, like ml_dtypes.
//!
//! # Row-wise quantization
//!
//! [`quantize_fp8_rowwise`] follows FBGEMM's `quantize_fp8_per_row` (specs/meta.md §5.2):
//! per row, `b = min(amax, ub)` (activations only), `s = max(b / 448, 1 / (448·512))`,
//! `q = e4m3_sat(x / s)` with a true `f32` division, and `s` is the *dequantization* scale
//! (`x ≈ q·s`). [`quantize_fp8_per_tensor`] is the same with one amax over the whole tensor.
//! Both reject NaN/±inf inputs with [`Error::NonFinite`]. By default they never emit `0x80`
//! (negative zero is written as `0x00`: ROCm's fnuz FP8 reads `0x80` as NaN,
//! specs/serving-formats.md §6); [`Fp8Options::keep_negative_zero`] keeps the sign of a zero
//! code as FBGEMM does (fbgemm_gpu experimental/gen_ai/src/quantize/quantize.cu
//! `quantize_fp8_per_row` → `fused_quantize_rowwise`: `static_cast<__nv_fp8_e4m3>(x / s)`,
//! CUDA's `__nv_cvt_float_to_fp8(…, __NV_SATFINITE, __NV_E4M3)`, which ORs the sign into an
//! underflowed result), so `-0` and negative values that round to zero give `0x80`.
//!
//! compressed-tensors (llm-compressor) FP8 rounds differently (the quotient in the model dtype):
//! that rule is [`crate::fp8_ct`]'s.

use rayon::prelude::*;

use crate::error::check_len;
use crate::float::{bf16_bits_to_f32, f16_bits_to_f32};
use crate::{Error, Result};

/// Largest finite FP8 E4M3FN magnitude.
pub const E4M3_MAX: f32 = 448.0;
/// Largest finite FP8 E5M2 magnitude.
pub const E5M2_MAX: f32 = 57344.0;
/// FBGEMM's lower bound on a row scale, `1 / (448·512)`: an all-zero row gets this scale
/// instead of 0 (and quantizes to zeros).
pub const MIN_ROW_SCALE: f32 = 1.0 / (448.0 * 512.0);

/// Parameters of one FP8 layout (1 sign bit, `E` exponent bits, `M` mantissa bits).
struct Layout {
    man_bits: u32,
    bias: i32,
    /// magnitude code of the largest finite value
    max_code: u32,
    /// magnitude code written for NaN
    nan_code: u8,
    /// magnitude code for ±inf when the format has infinities
    inf_code: Option<u8>,
}

const E4M3: Layout = Layout {
    man_bits: 3,
    bias: 7,
    max_code: 0x7E,
    nan_code: 0x7F,
    inf_code: None,
};

const E5M2: Layout = Layout {
    man_bits: 2,
    bias: 15,
    max_code: 0x7B,
    nan_code: 0x7E,
    inf_code: Some(0x7C),
};

/// Round-to-nearest-even encoding of `x` into `l`; `saturate` picks the overflow policy.
fn encode(l: &Layout, x: f32, saturate: bool) -> u8 {
    let bits = x.to_bits();
    let sign = ((bits >> 24) & 0x80) as u8;
    let a = bits & 0x7FFF_FFFF;
    if a > 0x7F80_0000 {
        return sign | l.nan_code;
    }
    let overflow = if saturate {
        l.max_code as u8
    } else {
        l.inf_code.unwrap_or(l.nan_code)
    };
    if a == 0x7F80_0000 {
        return sign | overflow;
    }
    let exp = (a >> 23) as i32 - 127;
    let code = if exp >= 1 - l.bias {
        // Normal in the target: rebias the exponent, then round the 23-bit mantissa to
        // `man_bits` with ties to even; a mantissa carry moves into the exponent by itself.
        let shift = 23 - l.man_bits;
        let rebased = a - (((127 - l.bias) as u32) << 23);
        let half = (1u32 << (shift - 1)) - 1;
        (rebased + half + ((rebased >> shift) & 1)) >> shift
    } else {
        // Subnormal (or zero) in the target: the code is |x| / 2^(1-bias-man_bits) rounded to
        // an integer. The scaling is by a power of two, so it is exact; the result is at most
        // 2^man_bits, which is exactly the code of the smallest normal.
        let quantum_inv = f32::from_bits(((127 + l.bias - 1 + l.man_bits as i32) as u32) << 23);
        (f32::from_bits(a) * quantum_inv).round_ties_even() as u32
    };
    if code > l.max_code {
        sign | overflow
    } else {
        sign | code as u8
    }
}

/// `f32` → FP8 E4M3FN exactly as ml_dtypes 0.6.0 `astype(float8_e4m3fn)` (non-saturating):
/// RNE; 448 < |x| ≤ 464 rounds to ±448 (464 is the tie and 448 is the even code);
/// |x| > 464, ±inf and NaN give NaN (`0x7F`, `0xFF` for negative sign).
pub fn encode_e4m3(x: f32) -> u8 {
    encode(&E4M3, x, false)
}

/// `f32` → FP8 E4M3FN, saturating (qforge's weight policy): RNE; every finite |x| ≥ 448 and
/// ±inf give ±448 (`0x7E`/`0xFE`); NaN gives `0x7F`/`0xFF`. Equal to
/// `ml_dtypes(np.clip(x, -448, 448))` for every input.
pub fn encode_e4m3_sat(x: f32) -> u8 {
    if x.is_nan() {
        return encode(&E4M3, x, true);
    }
    encode_e4m3_sat_finite(x)
}

/// The saturating E4M3 encoding of a non-NaN `x`, branch-free so that row loops vectorize:
/// clamp |x| to 448, then round to nearest even with integer arithmetic on the bits for normal
/// codes (|x| ≥ 2^-6) and with the 2^23 magic-number addition for subnormal ones (|x|·2^9 is
/// exact and below 8, so adding 2^23 rounds it to an integer with ties to even). Equal to
/// [`encode`]`(E4M3, x, true)` for every non-NaN input (exhaustive test below).
// always: inlined into the AVX2 copy, this loop is compiled for AVX2; called, it is not
#[allow(clippy::inline_always)]
#[inline(always)]
pub(crate) fn encode_e4m3_sat_finite(x: f32) -> u8 {
    let bits = x.to_bits();
    let sign = (bits >> 24) & 0x80;
    let a = f32::from_bits(bits & 0x7FFF_FFFF).min(E4M3_MAX);
    let ab = a.to_bits();
    // normal: rebias 127 -> 7 and round the mantissa from 23 to 3 bits, ties to even
    let rebased = ab.wrapping_sub(120 << 23);
    let normal = rebased.wrapping_add(0x7_FFFF + ((rebased >> 20) & 1)) >> 20;
    // subnormal: |x|·2^9 rounded to an integer (0..=8; 8 is the smallest normal code)
    // (the integer is read from the low mantissa bits of a·2^9 + 2^23, not by a float→int
    // conversion, so the row loop vectorizes)
    let sub = (a * 512.0 + 8_388_608.0)
        .to_bits()
        .wrapping_sub(0x4B00_0000);
    let code = if ab >= 0x3C80_0000 { normal } else { sub };
    (sign | code) as u8
}

/// `f32` → FP8 E5M2 exactly as ml_dtypes 0.6.0 `astype(float8_e5m2)`: RNE; |x| ≥ 61440 (the
/// tie above 57344, which rounds to the even pattern `0x7C`) and ±inf give ±inf; NaN gives
/// `0x7E`/`0xFE`.
pub fn encode_e5m2(x: f32) -> u8 {
    encode(&E5M2, x, false)
}

/// `f32` → FP8 E5M2, saturating: RNE; finite overflow and ±inf give ±57344 (`0x7B`/`0xFB`);
/// NaN gives `0x7E`/`0xFE`. Equal to `ml_dtypes(np.clip(x, -57344, 57344))`.
pub fn encode_e5m2_sat(x: f32) -> u8 {
    encode(&E5M2, x, true)
}

/// One of the four FP8 encoders, for slice-level APIs and command-line selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fp8Encoding {
    /// [`encode_e4m3`] (ml_dtypes-exact, overflow → NaN)
    E4M3,
    /// [`encode_e4m3_sat`]
    E4M3Sat,
    /// [`encode_e5m2`] (ml_dtypes-exact, overflow → inf)
    E5M2,
    /// [`encode_e5m2_sat`]
    E5M2Sat,
}

impl Fp8Encoding {
    /// Encode one value.
    pub fn encode(self, x: f32) -> u8 {
        match self {
            Fp8Encoding::E4M3 => encode_e4m3(x),
            Fp8Encoding::E4M3Sat => encode_e4m3_sat(x),
            Fp8Encoding::E5M2 => encode_e5m2(x),
            Fp8Encoding::E5M2Sat => encode_e5m2_sat(x),
        }
    }

    /// Encode a slice of `f32`.
    ///
    /// # Panics
    /// If `dst.len() != src.len()` (a caller bug, not a data error).
    pub fn encode_f32_slice(self, src: &[f32], dst: &mut [u8]) {
        assert_eq!(src.len(), dst.len(), "encode_f32_slice: length mismatch");
        for (d, &x) in dst.iter_mut().zip(src) {
            *d = self.encode(x);
        }
    }

    /// Encode a slice of bfloat16 bit patterns. Widening BF16 → f32 is exact, so this is the
    /// same as encoding the widened values (there is no double rounding).
    ///
    /// # Panics
    /// If `dst.len() != src.len()`.
    pub fn encode_bf16_slice(self, src: &[u16], dst: &mut [u8]) {
        assert_eq!(src.len(), dst.len(), "encode_bf16_slice: length mismatch");
        for (d, &b) in dst.iter_mut().zip(src) {
            *d = self.encode(bf16_bits_to_f32(b));
        }
    }

    /// Encode a slice of IEEE binary16 bit patterns (widened exactly to f32 first).
    ///
    /// # Panics
    /// If `dst.len() != src.len()`.
    pub fn encode_f16_slice(self, src: &[u16], dst: &mut [u8]) {
        assert_eq!(src.len(), dst.len(), "encode_f16_slice: length mismatch");
        for (d, &b) in dst.iter_mut().zip(src) {
            *d = self.encode(f16_bits_to_f32(b));
        }
    }
}

/// Options of [`quantize_fp8_rowwise`] / [`quantize_fp8_per_tensor`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Fp8Options {
    /// Upper bound on amax (FBGEMM `activation_scale_ub`, e.g. 1200.0); `None` for weights.
    /// Values beyond ±ub saturate. Must be finite and positive.
    pub upper_bound: Option<f32>,
    /// Write a negative zero code as `0x80`, as FBGEMM's CUDA conversion does (module docs);
    /// `false` (qforge's activations and the default) writes it as `0x00`.
    pub keep_negative_zero: bool,
}

impl Fp8Options {
    fn check(&self) -> Result<()> {
        match self.upper_bound {
            Some(ub) if !(ub.is_finite() && ub > 0.0) => Err(Error::InvalidParameter {
                name: "upper_bound",
                detail: format!("{ub} is not a finite positive number"),
            }),
            _ => Ok(()),
        }
    }

    /// The dequantization scale for a block with absolute maximum `amax`.
    fn scale(&self, amax: f32) -> f32 {
        let b = self.upper_bound.map_or(amax, |ub| amax.min(ub));
        (b / E4M3_MAX).max(MIN_ROW_SCALE)
    }
}

/// Absolute maximum of a row, or the column of its first non-finite value. Computed on the
/// bit patterns (|x| orders like its bits with the sign cleared; NaN and ±inf are the patterns
/// from 0x7F80_0000 up), which is branch-free and vectorizes.
pub(crate) fn row_amax(row: &[f32]) -> std::result::Result<f32, usize> {
    let m = row
        .iter()
        .fold(0u32, |m, x| m.max(x.to_bits() & 0x7FFF_FFFF));
    if m >= 0x7F80_0000 {
        return Err(row.iter().position(|x| !x.is_finite()).unwrap_or(0));
    }
    Ok(f32::from_bits(m))
}

/// `q = e4m3_sat(x / s)` for one row, with negative zero written as `0x00` unless `keep`: the loop below
/// compiled for AVX2 when the CPU has it (runtime detection), else for the baseline. The two
/// are the same IEEE operations (a division and integer bit work per element; Rust never
/// contracts), so the bytes do not depend on the CPU (tested below).
fn encode_row(row: &[f32], s: f32, keep: bool, out: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        #[allow(unsafe_code)]
        unsafe {
            encode_row_avx2(row, s, keep, out);
        }
        return;
    }
    encode_row_base(row, s, keep, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn encode_row_avx2(row: &[f32], s: f32, keep: bool, out: &mut [u8]) {
    encode_row_base(row, s, keep, out);
}

// always: inlined into the AVX2 copy, this loop is compiled for AVX2; called, it is not
#[allow(clippy::inline_always)]
#[inline(always)]
fn encode_row_base(row: &[f32], s: f32, keep: bool, out: &mut [u8]) {
    // Rows reaching here are finite (checked by `row_amax`) and `s` is positive and finite, so
    // `x / s` is never NaN (it may overflow to ±inf, which saturates).
    let zero = if keep { 0x80 } else { 0 };
    for (q, &x) in out.iter_mut().zip(row) {
        let b = encode_e4m3_sat_finite(x / s);
        // no negative zero in stored weights unless the layout's defining tool writes it
        *q = if b == 0x80 { zero } else { b };
    }
}

fn check_shape(len: usize, k: usize) -> Result<usize> {
    if k == 0 {
        return Err(Error::InvalidParameter {
            name: "k",
            detail: "row length must be positive".into(),
        });
    }
    if len % k != 0 {
        return Err(Error::BufferLength {
            what: "input (a whole number of rows)",
            expected: (len / k * k) as u64,
            got: len as u64,
        });
    }
    Ok(len / k)
}

/// Quantize a row-major `[n, k]` matrix to FP8 E4M3FN with one scale per row (FBGEMM
/// `quantize_fp8_per_row`; the formula is in the module docs).
///
/// `out_q` must hold `n·k` bytes and `out_scale` `n` values (the dequantization scales,
/// `x ≈ f8(q)·scale`). Rows are processed in parallel; each row depends only on itself, so
/// the output is identical for any thread count. On error the outputs are unspecified.
///
/// Errors: [`Error::NonFinite`] for the first NaN/±inf in row-major order,
/// [`Error::BufferLength`] for mismatched slices, [`Error::InvalidParameter`] for `k == 0`
/// or a bad upper bound.
pub fn quantize_fp8_rowwise(
    rows: &[f32],
    k: usize,
    out_q: &mut [u8],
    out_scale: &mut [f32],
    opts: &Fp8Options,
) -> Result<()> {
    opts.check()?;
    let n = check_shape(rows.len(), k)?;
    check_len("out_q", rows.len(), out_q.len())?;
    check_len("out_scale", n, out_scale.len())?;
    let bad: Vec<(usize, usize)> = rows
        .par_chunks(k)
        .zip(out_q.par_chunks_mut(k))
        .zip(out_scale.par_iter_mut())
        .enumerate()
        .filter_map(|(r, ((row, q), s))| match row_amax(row) {
            Ok(amax) => {
                *s = opts.scale(amax);
                encode_row(row, *s, opts.keep_negative_zero, q);
                None
            }
            Err(c) => Some((r, c)),
        })
        .collect();
    first_bad(&bad)
}

/// The dequantization scale for a row or tensor whose absolute maximum is `amax` (the rule
/// every function here uses: `max(min(amax, ub)/448, 1/(448·512))`, rounded as `opts` says).
/// Callers that find `amax` faster than decoding (from BF16 bit patterns, say) use it.
pub fn scale_for_amax(amax: f32, opts: &Fp8Options) -> Result<f32> {
    opts.check()?;
    Ok(opts.scale(amax))
}

/// Quantize one row with its own scale (the rule of [`quantize_fp8_rowwise`]): writes the
/// codes to `out` and returns the dequantization scale. Streaming
/// writers use it to quantize a tensor row by row without materialising it in `f32`.
///
/// Errors: [`Error::NonFinite`] (row 0, the column of the first bad value),
/// [`Error::BufferLength`] when `out` is not as long as `row`.
pub fn quantize_fp8_row(row: &[f32], out: &mut [u8], opts: &Fp8Options) -> Result<f32> {
    opts.check()?;
    check_len("out", row.len(), out.len())?;
    let amax = row_amax(row).map_err(|c| Error::NonFinite {
        row: 0,
        col: c as u64,
    })?;
    let s = opts.scale(amax);
    encode_row(row, s, opts.keep_negative_zero, out);
    Ok(s)
}

/// Absolute maximum of a row of little-endian BF16, F16 or F32 values (any other dtype is
/// read as F32) computed on the bit patterns (|x| orders like its bits with the sign cleared),
/// or the column of the first NaN/±inf. Compiled for AVX2 when the CPU has it (an integer max
/// reduction, exact in any order).
pub fn amax_of_bits(dtype: crate::DType, bytes: &[u8]) -> std::result::Result<f32, usize> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        #[allow(unsafe_code)]
        return unsafe { amax_of_bits_avx2(dtype, bytes) };
    }
    amax_of_bits_base(dtype, bytes)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn amax_of_bits_avx2(dtype: crate::DType, bytes: &[u8]) -> std::result::Result<f32, usize> {
    amax_of_bits_base(dtype, bytes)
}

// always: inlined into the AVX2 copy, this loop is compiled for AVX2; called, it is not
#[allow(clippy::inline_always)]
#[inline(always)]
fn amax_of_bits_base(dtype: crate::DType, bytes: &[u8]) -> std::result::Result<f32, usize> {
    use crate::DType;
    match dtype {
        DType::BF16 | DType::F16 => {
            let inf = if dtype == DType::BF16 { 0x7F80 } else { 0x7C00 };
            let mut m = 0u16;
            for c in bytes.chunks_exact(2) {
                m = m.max(u16::from_le_bytes([c[0], c[1]]) & 0x7FFF);
            }
            if m >= inf {
                let col = bytes
                    .chunks_exact(2)
                    .position(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7FFF >= inf)
                    .unwrap_or(0);
                return Err(col);
            }
            Ok(if dtype == DType::BF16 {
                bf16_bits_to_f32(m)
            } else {
                f16_bits_to_f32(m)
            })
        }
        _ => {
            let mut m = 0u32;
            for c in bytes.chunks_exact(4) {
                m = m.max(u32::from_le_bytes([c[0], c[1], c[2], c[3]]) & 0x7FFF_FFFF);
            }
            if m >= 0x7F80_0000 {
                let col = bytes
                    .chunks_exact(4)
                    .position(|c| {
                        u32::from_le_bytes([c[0], c[1], c[2], c[3]]) & 0x7FFF_FFFF >= 0x7F80_0000
                    })
                    .unwrap_or(0);
                return Err(col);
            }
            Ok(f32::from_bits(m))
        }
    }
}

/// [`quantize_fp8_row`] of a row of little-endian BF16 values whose absolute maximum `amax`
/// is known (from [`amax_of_bits`]) and finite: the values are widened from their bits inside
/// the encoding loop, so the row is read once. The codes and scale are exactly those of
/// decoding the row to `f32` and calling [`quantize_fp8_row`] (widening BF16 is exact).
///
/// Errors: [`Error::BufferLength`] when `out` does not hold one code per value,
/// [`Error::InvalidParameter`] for a non-finite `amax` or bad options.
pub fn quantize_fp8_row_bf16(
    bytes: &[u8],
    amax: f32,
    out: &mut [u8],
    opts: &Fp8Options,
) -> Result<f32> {
    opts.check()?;
    check_len("out", bytes.len() / 2, out.len())?;
    if !amax.is_finite() {
        return Err(Error::InvalidParameter {
            name: "amax",
            detail: format!("{amax} is not finite"),
        });
    }
    let s = opts.scale(amax);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        #[allow(unsafe_code)]
        unsafe {
            encode_bf16_row_avx2(bytes, s, opts.keep_negative_zero, out);
        }
        return Ok(s);
    }
    encode_bf16_row_base(bytes, s, opts.keep_negative_zero, out);
    Ok(s)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn encode_bf16_row_avx2(bytes: &[u8], s: f32, keep: bool, out: &mut [u8]) {
    encode_bf16_row_base(bytes, s, keep, out);
}

// always: inlined into the AVX2 copy, this loop is compiled for AVX2; called, it is not
#[allow(clippy::inline_always)]
#[inline(always)]
fn encode_bf16_row_base(bytes: &[u8], s: f32, keep: bool, out: &mut [u8]) {
    let zero = if keep { 0x80 } else { 0 };
    for (q, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let x = f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16);
        let b = encode_e4m3_sat_finite(x / s);
        *q = if b == 0x80 { zero } else { b };
    }
}

/// The scales [`quantize_fp8_rowwise`] would produce for the same input, without encoding
/// (one pass over the data: the row absolute maxima). Writers that must store the scales
/// before the codes use it; the two always agree because they share the scale rule.
pub fn rowwise_scales(rows: &[f32], k: usize, opts: &Fp8Options) -> Result<Vec<f32>> {
    opts.check()?;
    let n = check_shape(rows.len(), k)?;
    let mut out = vec![0f32; n];
    let bad: Vec<(usize, usize)> = rows
        .par_chunks(k)
        .zip(out.par_iter_mut())
        .enumerate()
        .filter_map(|(r, (row, s))| match row_amax(row) {
            Ok(amax) => {
                *s = opts.scale(amax);
                None
            }
            Err(c) => Some((r, c)),
        })
        .collect();
    first_bad(&bad)?;
    Ok(out)
}

/// The scale [`quantize_fp8_per_tensor`] would produce for the same input, without encoding.
pub fn per_tensor_scale(x: &[f32], k: usize, opts: &Fp8Options) -> Result<f32> {
    opts.check()?;
    check_shape(x.len(), k)?;
    Ok(opts.scale(tensor_amax(x, k)?))
}

/// Absolute maximum of a whole `[n, k]` tensor, or the first non-finite value in row-major
/// order. max is exact and order-independent on finite values, so the parallel reduction is
/// deterministic.
fn tensor_amax(x: &[f32], k: usize) -> Result<f32> {
    let per_row: Vec<std::result::Result<f32, usize>> = x.par_chunks(k).map(row_amax).collect();
    let mut amax = 0f32;
    for (r, m) in per_row.iter().enumerate() {
        match m {
            Ok(m) => amax = amax.max(*m),
            Err(c) => {
                return Err(Error::NonFinite {
                    row: r as u64,
                    col: *c as u64,
                })
            }
        }
    }
    Ok(amax)
}

/// Quantize a row-major `[n, k]` tensor to FP8 E4M3FN with a single scale (the amax of the
/// whole tensor), returned as the dequantization scale. Same rules and errors as
/// [`quantize_fp8_rowwise`]; `k` is only used to report the row/column of a non-finite value.
pub fn quantize_fp8_per_tensor(
    x: &[f32],
    k: usize,
    out_q: &mut [u8],
    opts: &Fp8Options,
) -> Result<f32> {
    opts.check()?;
    check_shape(x.len(), k)?;
    check_len("out_q", x.len(), out_q.len())?;
    let amax = tensor_amax(x, k)?;
    let s = opts.scale(amax);
    x.par_chunks(k)
        .zip(out_q.par_chunks_mut(k))
        .for_each(|(row, q)| encode_row(row, s, opts.keep_negative_zero, q));
    Ok(s)
}

fn first_bad(bad: &[(usize, usize)]) -> Result<()> {
    // `collect` on an indexed parallel iterator keeps the order, so the first entry is the
    // first bad row.
    match bad.first() {
        None => Ok(()),
        Some(&(r, c)) => Err(Error::NonFinite {
            row: r as u64,
            col: c as u64,
        }),
    }
}

#[cfg(test)]
mod tests {
    /// The branch-free saturating encoder equals the generic reference on every f32 whose
    /// low 9 mantissa bits are one of {0, 1, 0x100, 0x1FF} (every rounding decision of a
    /// 3-bit mantissa lives in the upper bits; the low bits only act as sticky bits), i.e.
    /// 2^23 · 4 inputs covering every sign, exponent and rounding case.
    /// The AVX2 row loop gives the baseline loop's bytes: on every non-NaN pattern of the
    /// sampled set above (scaled by a few row scales, so quotients hit every rounding case and
    /// overflow to ±inf), in rows of awkward lengths so the vector tails run too.
    #[test]
    fn avx2_row_loop_equals_the_baseline() {
        #[cfg(target_arch = "x86_64")]
        {
            if !std::arch::is_x86_feature_detected!("avx2") {
                eprintln!("skipped: no AVX2 on this CPU");
                return;
            }
            let xs: Vec<f32> = (0u32..(1 << 23))
                .step_by(7)
                .flat_map(|hi| [0u32, 1, 0x100, 0x1FF].map(|lo| f32::from_bits((hi << 9) | lo)))
                .filter(|x| !x.is_nan())
                .collect();
            for s in [1.0f32, 0.75, 3.0e-3, 1.0e-30] {
                for (row, keep) in xs.chunks(1021).zip([false, true].into_iter().cycle()) {
                    let mut a = vec![0u8; row.len()];
                    let mut b = vec![0u8; row.len()];
                    encode_row_base(row, s, keep, &mut a);
                    // SAFETY: AVX2 checked above.
                    #[allow(unsafe_code)]
                    unsafe {
                        encode_row_avx2(row, s, keep, &mut b);
                    }
                    assert_eq!(a, b, "scale {s}");
                }
            }
        }
    }

    /// The one-pass BF16 row encoder equals decoding to f32 and [`quantize_fp8_row`], on
    /// every finite BF16 pattern (rows of 1021 values, so every row has its own scale), and
    /// the bit-pattern maximum equals the decoded one.
    #[test]
    fn bf16_row_encoder_equals_decode_then_quantize() {
        let bits: Vec<u16> = (0..=u16::MAX).filter(|b| b & 0x7FFF < 0x7F80).collect();
        for (ub, keep) in [(None, false), (Some(1200.0f32), false), (None, true)] {
            let opts = Fp8Options {
                upper_bound: ub,
                keep_negative_zero: keep,
            };
            for row in bits.chunks(1021) {
                let bytes: Vec<u8> = row.iter().flat_map(|b| b.to_le_bytes()).collect();
                let vals: Vec<f32> = row.iter().map(|&b| bf16_bits_to_f32(b)).collect();
                let amax = amax_of_bits(crate::DType::BF16, &bytes).unwrap();
                assert_eq!(amax, row_amax(&vals).unwrap());
                let (mut a, mut b) = (vec![0u8; row.len()], vec![0u8; row.len()]);
                let sa = quantize_fp8_row_bf16(&bytes, amax, &mut a, &opts).unwrap();
                let sb = quantize_fp8_row(&vals, &mut b, &opts).unwrap();
                assert_eq!((sa, &a), (sb, &b));
                let mut c = vec![0u8; row.len()];
                encode_bf16_row_base(&bytes, sa, keep, &mut c);
                assert_eq!(c, a, "baseline and dispatched loops differ");
            }
        }
        let mut bad = vec![0u8; 64];
        bad[22..24].copy_from_slice(&0x7FC0u16.to_le_bytes());
        assert_eq!(amax_of_bits(crate::DType::BF16, &bad), Err(11));
        assert_eq!(amax_of_bits_base(crate::DType::BF16, &bad), Err(11));
    }

    #[test]
    fn fast_saturating_encoder_equals_reference() {
        for hi in 0u32..(1 << 23) {
            for lo in [0u32, 1, 0x100, 0x1FF] {
                let bits = (hi << 9) | lo;
                let x = f32::from_bits(bits);
                if x.is_nan() {
                    continue;
                }
                let want = encode(&E4M3, x, true);
                assert_eq!(encode_e4m3_sat_finite(x), want, "{x:e} ({bits:#010x})");
            }
        }
    }

    use super::*;
    use crate::float::{f8_e4m3_to_f32, f8_e5m2_to_f32};

    fn is_nan_code(enc: Fp8Encoding, b: u8) -> bool {
        match enc {
            Fp8Encoding::E4M3 | Fp8Encoding::E4M3Sat => b & 0x7F == 0x7F,
            Fp8Encoding::E5M2 | Fp8Encoding::E5M2Sat => b & 0x7F > 0x7C,
        }
    }

    fn decode(enc: Fp8Encoding, b: u8) -> f32 {
        match enc {
            Fp8Encoding::E4M3 | Fp8Encoding::E4M3Sat => f8_e4m3_to_f32(b),
            Fp8Encoding::E5M2 | Fp8Encoding::E5M2Sat => f8_e5m2_to_f32(b),
        }
    }

    const ALL: [Fp8Encoding; 4] = [
        Fp8Encoding::E4M3,
        Fp8Encoding::E4M3Sat,
        Fp8Encoding::E5M2,
        Fp8Encoding::E5M2Sat,
    ];

    #[test]
    fn every_code_round_trips() {
        for enc in ALL {
            let mut nans = 0;
            for b in 0..=255u8 {
                let x = decode(enc, b);
                let back = enc.encode(x);
                if x.is_nan() {
                    // NaN codes all map to the one canonical NaN of their sign.
                    nans += 1;
                    assert!(is_nan_code(enc, back));
                    assert_eq!(back & 0x80, b & 0x80);
                } else if x.is_infinite() && enc == Fp8Encoding::E5M2Sat {
                    // ±inf saturates to ±max under the saturating E5M2 policy.
                    assert_eq!(back, (b & 0x80) | 0x7B, "{enc:?} {b:#04x}");
                } else {
                    assert_eq!(back, b, "{enc:?} {b:#04x} ({x})");
                }
            }
            let want = if matches!(enc, Fp8Encoding::E4M3 | Fp8Encoding::E4M3Sat) {
                2
            } else {
                6
            };
            assert_eq!(nans, want, "{enc:?}");
        }
    }

    /// The exact midpoint between two adjacent finite codes rounds to the one with an even
    /// mantissa (even code); a hair either side rounds to the nearer one.
    #[test]
    fn midpoints_round_to_even() {
        for enc in ALL {
            let top = if matches!(enc, Fp8Encoding::E4M3 | Fp8Encoding::E4M3Sat) {
                0x7E
            } else {
                0x7B
            };
            for lo in 0..top {
                for sign in [0u8, 0x80] {
                    let (a, b) = (decode(enc, sign | lo), decode(enc, sign | (lo + 1)));
                    let mid = f32::midpoint(a, b); // exact: both have few mantissa bits
                    assert_eq!(f64::from(mid), f64::midpoint(f64::from(a), f64::from(b)));
                    let even = if lo % 2 == 0 { lo } else { lo + 1 };
                    assert_eq!(enc.encode(mid), sign | even, "{enc:?} {a} {b}");
                    let toward_a = f32::from_bits(mid.to_bits() - 1);
                    let toward_b = f32::from_bits(mid.to_bits() + 1);
                    assert_eq!(enc.encode(toward_a), sign | lo);
                    assert_eq!(enc.encode(toward_b), sign | (lo + 1));
                }
            }
        }
    }

    #[test]
    fn overflow_policies() {
        // E4M3FN: 464 is the tie between 448 (even) and the NaN pattern.
        assert_eq!(encode_e4m3(464.0), 0x7E);
        assert_eq!(encode_e4m3(-464.0), 0xFE);
        assert_eq!(encode_e4m3(f32::from_bits(464f32.to_bits() + 1)), 0x7F);
        assert_eq!(encode_e4m3(1e9), 0x7F);
        assert_eq!(encode_e4m3(f32::INFINITY), 0x7F);
        assert_eq!(encode_e4m3(f32::NEG_INFINITY), 0xFF);
        assert_eq!(encode_e4m3(f32::NAN), 0x7F);
        assert_eq!(encode_e4m3(-f32::NAN), 0xFF);
        for x in [449.0, 464.5, 480.0, 1e30, f32::MAX, f32::INFINITY] {
            assert_eq!(encode_e4m3_sat(x), 0x7E);
            assert_eq!(encode_e4m3_sat(-x), 0xFE);
        }
        assert_eq!(encode_e4m3_sat(f32::NAN), 0x7F);
        // E5M2: 61440 is the tie between 57344 and the inf pattern (even) → inf.
        assert_eq!(encode_e5m2(61439.996), 0x7B);
        assert_eq!(encode_e5m2(61440.0), 0x7C);
        assert_eq!(encode_e5m2(-1e9), 0xFC);
        assert_eq!(encode_e5m2(f32::INFINITY), 0x7C);
        assert_eq!(encode_e5m2(f32::NAN), 0x7E);
        assert_eq!(encode_e5m2_sat(61440.0), 0x7B);
        assert_eq!(encode_e5m2_sat(f32::NEG_INFINITY), 0xFB);
        assert_eq!(encode_e5m2_sat(-f32::NAN), 0xFE);
    }

    #[test]
    fn zeros_and_subnormals() {
        assert_eq!(encode_e4m3(0.0), 0x00);
        assert_eq!(encode_e4m3(-0.0), 0x80);
        assert_eq!(encode_e4m3(-1e-30), 0x80);
        assert_eq!(encode_e4m3(f32::from_bits(1)), 0x00);
        assert_eq!(encode_e4m3(2f32.powi(-10)), 0x00); // tie 0 | 2^-9 → 0
        assert_eq!(encode_e4m3(1.5 * 2f32.powi(-10)), 0x01);
        assert_eq!(encode_e4m3(3.0 * 2f32.powi(-10)), 0x02); // tie 1 | 2 → 2
        assert_eq!(encode_e4m3(15.0 * 2f32.powi(-10)), 0x08); // tie 7 | 8 (min normal) → 8
        assert_eq!(encode_e5m2(2f32.powi(-17)), 0x00);
        assert_eq!(encode_e5m2(1.5 * 2f32.powi(-16)), 0x02);
    }

    /// Independent reference: the nearest candidate value in f64, scanning every finite code
    /// plus the first value past the top of the range (which an unbounded exponent would have:
    /// 480 = code 0x7F for E4M3FN, 65536 = code 0x7C for E5M2), ties to the even code; landing
    /// on or past that virtual candidate is overflow.
    fn reference(enc: Fp8Encoding, x: f32) -> u8 {
        let e4 = matches!(enc, Fp8Encoding::E4M3 | Fp8Encoding::E4M3Sat);
        let sat = matches!(enc, Fp8Encoding::E4M3Sat | Fp8Encoding::E5M2Sat);
        let (max_code, virt, virt_code, nan) = if e4 {
            (0x7Eu8, 480.0, 0x7Fu8, 0x7Fu8)
        } else {
            (0x7B, 65536.0, 0x7C, 0x7E)
        };
        let overflow = match (sat, e4) {
            (true, _) => max_code,
            (false, true) => nan,
            (false, false) => 0x7C,
        };
        let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
        if x.is_nan() {
            return sign | nan;
        }
        let a = f64::from(x.abs());
        if a >= virt {
            return sign | overflow;
        }
        let mut best = 0u8;
        let mut best_d = f64::INFINITY;
        let candidates = (0..=max_code).map(|c| (c, f64::from(decode(enc, c))));
        for (c, v) in candidates.chain([(virt_code, virt)]) {
            let d = (v - a).abs();
            if d < best_d || (d == best_d && c % 2 == 0) {
                best = c;
                best_d = d;
            }
        }
        if best == virt_code {
            sign | overflow
        } else {
            sign | best
        }
    }

    #[test]
    fn every_bf16_code_matches_f64_reference() {
        for enc in ALL {
            for bits in 0..=u16::MAX {
                let x = bf16_bits_to_f32(bits);
                let mut got = [0u8];
                enc.encode_bf16_slice(&[bits], &mut got);
                let want = reference(enc, x);
                if x.is_nan() {
                    assert_eq!(got[0], want, "{enc:?} NaN {bits:#06x}");
                } else {
                    assert_eq!(got[0], want, "{enc:?} {bits:#06x} ({x})");
                }
            }
        }
    }

    #[test]
    fn every_f16_code_matches_f64_reference() {
        for enc in ALL {
            for bits in 0..=u16::MAX {
                let x = f16_bits_to_f32(bits);
                let mut got = [0u8];
                enc.encode_f16_slice(&[bits], &mut got);
                assert_eq!(got[0], reference(enc, x), "{enc:?} {bits:#06x} ({x})");
            }
        }
    }

    #[test]
    fn rowwise_follows_fbgemm() {
        let k = 4;
        let x = [
            1.0, -2.0, 0.5, 448.0, 0.0, 0.0, 0.0, 0.0, -1e-3, 2e-3, 0.0, -0.0,
        ];
        let mut q = [0u8; 12];
        let mut s = [0f32; 3];
        quantize_fp8_rowwise(&x, k, &mut q, &mut s, &Fp8Options::default()).unwrap();
        assert_eq!(s[0], 448.0 / 448.0);
        assert_eq!(q[3], 0x7E);
        assert_eq!(q[0], encode_e4m3_sat(1.0));
        assert_eq!(s[1], MIN_ROW_SCALE);
        assert_eq!(&q[4..8], &[0; 4]);
        assert_eq!(s[2], 2e-3 / 448.0);
        assert_eq!(q[9], 0x7E);
        assert_eq!(q[8], encode_e4m3_sat(-1e-3 / s[2]));
        assert_eq!(q[11], 0x00, "negative zero is written as +0");
        // dequantization error is within half an FP8 ulp (relative 2^-4) of each value
        for (r, row) in x.chunks(k).enumerate() {
            for (c, &v) in row.iter().enumerate() {
                let back = f8_e4m3_to_f32(q[r * k + c]) * s[r];
                assert!(
                    (back - v).abs() <= v.abs() / 16.0 + s[r] * 2f32.powi(-10),
                    "{v}"
                );
            }
        }
    }

    #[test]
    fn rowwise_upper_bound_and_negative_zero() {
        let x = [3000.0f32, -1.0, -1e-9, 1200.0, -0.0];
        let mut q = [0u8; 5];
        let mut s = [0f32; 1];
        let opts = Fp8Options {
            upper_bound: Some(1200.0),
            keep_negative_zero: false,
        };
        quantize_fp8_rowwise(&x, 5, &mut q, &mut s, &opts).unwrap();
        assert_eq!(s[0], 1200.0 / 448.0);
        assert_eq!(q[0], 0x7E, "beyond ub saturates");
        assert_eq!((q[2], q[4]), (0x00, 0x00));
        // FBGEMM's conversion keeps the sign of a zero code; nothing else changes
        let keep = Fp8Options {
            keep_negative_zero: true,
            ..opts
        };
        let mut q2 = [0u8; 5];
        quantize_fp8_rowwise(&x, 5, &mut q2, &mut s, &keep).unwrap();
        assert_eq!((q2[2], q2[4]), (0x80, 0x80));
        assert_eq!((q2[0], q2[1], q2[3]), (q[0], q[1], q[3]));
        assert_eq!(q[1], encode_e4m3_sat(-1.0 / s[0]));
    }

    #[test]
    fn rowwise_errors() {
        let mut q = [0u8; 6];
        let mut s = [0f32; 2];
        let o = Fp8Options::default();
        let x = [1.0, 2.0, 3.0, 4.0, f32::NAN, f32::INFINITY];
        assert_eq!(
            quantize_fp8_rowwise(&x, 3, &mut q, &mut s, &o),
            Err(Error::NonFinite { row: 1, col: 1 })
        );
        assert_eq!(
            quantize_fp8_per_tensor(&x, 3, &mut q, &o),
            Err(Error::NonFinite { row: 1, col: 1 })
        );
        assert!(matches!(
            quantize_fp8_rowwise(&x[..5], 3, &mut q[..5], &mut s, &o),
            Err(Error::BufferLength { .. })
        ));
        assert!(matches!(
            quantize_fp8_rowwise(&[1.0; 6], 3, &mut q, &mut s[..1], &o),
            Err(Error::BufferLength {
                what: "out_scale",
                ..
            })
        ));
        assert!(matches!(
            quantize_fp8_rowwise(&[], 0, &mut [], &mut [], &o),
            Err(Error::InvalidParameter { name: "k", .. })
        ));
        let bad = Fp8Options {
            upper_bound: Some(-1.0),
            ..o
        };
        assert!(matches!(
            quantize_fp8_rowwise(&[1.0; 6], 3, &mut q, &mut s, &bad),
            Err(Error::InvalidParameter {
                name: "upper_bound",
                ..
            })
        ));
    }

    #[test]
    fn per_tensor_uses_global_amax() {
        let x = [1.0f32, -2.0, 0.5, 896.0];
        let mut q = [0u8; 4];
        let s = quantize_fp8_per_tensor(&x, 2, &mut q, &Fp8Options::default()).unwrap();
        assert_eq!(s, 2.0);
        assert_eq!(q, [0x30, 0xB8, 0x28, 0x7E]);
    }

    #[test]
    fn rowwise_is_thread_count_independent() {
        let k = 64;
        let x: Vec<f32> = (0..k * 97)
            .map(|i| ((i as f32) * 0.618_034).sin() * (1.0 + (i % 13) as f32))
            .collect();
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut q = vec![0u8; x.len()];
                let mut s = vec![0f32; 97];
                quantize_fp8_rowwise(&x, k, &mut q, &mut s, &Fp8Options::default()).unwrap();
                (q, s)
            })
        };
        assert_eq!(run(1), run(4));
    }
}
