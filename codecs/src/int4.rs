//! INT4 (and INT8) weight quantization (compressed-tensors min-max rule) and the three packed
//! layouts that serving engines read: compressed-tensors `pack-quantized` (4 or 8 bits), GPTQ
//! and AWQ (4 bits).
//!
//! INT8 (`bits: 8`, W8A16) is the same rule with `q ∈ [−128, 127]`, `s = amax/127.5`
//! (asymmetric: `(max − min)/255`, zero point `−128 − min/s`) and four codes per `pack-quantized`
//! word, u = q + 128 (compressed-tensors `pack_to_int32(value, 8)`: element `i` of a run of four
//! at bits `8i..8i+7`).
//!
//! # Quantization rule
//!
//! This is compressed-tensors' `calculate_qparams` + `_quantize`
//! (compressed_tensors/quantization/utils/helpers.py and quantization/lifecycle/forward.py,
//! read at neuralmagic/compressed-tensors 024cea3 / b29792f), which llm-compressor's `minmax`
//! observer and its W4A16 preset use. Per group `G` of `gs` consecutive elements of a row
//! (per row: `gs = k`), with `q_min = −8`, `q_max = 7`, `eps = 2^−23` (`torch.finfo(float32).eps`):
//!
//! ```text
//! min = min(min(G), 0)      max = max(max(G), 0)          // 0 is always representable
//! symmetric:  s = max( r(max(|min|, |max|) / 7.5), eps )  // 7.5 = (q_max − q_min)/2
//!             zp = 0
//! asymmetric: s = max( r(r(max − min) / 15), eps )
//!             zp = round_half_even( clamp( r(−8 − r(min / s)), −8, 7 ) )
//! q = round_half_even( clamp( r(r(x / s) + zp), −8, 7 ) )  // clamp *before* rounding
//! x ≈ s · (q − zp)
//! ```
//!
//! `r` is the arithmetic of the model dtype ([`Int4Arith`]): identity in `F32` mode; in `Bf16`
//! mode every tensor operation is done in `f32` and rounded to BF16 (RNE), as torch does for a
//! BF16 tensor, so the scales, zero points and codes are those llm-compressor writes for a BF16
//! model (spec worked example: specs/serving-formats.md §1.4). The rounding is `torch.round`,
//! i.e. **round half to even** (`f32::round_ties_even`), applied after the clamp: `+amax`
//! lands on 7.5 and is clamped to 7, while `−amax` lands on −7.5 and rounds (to even) to −8. The
//! symmetric scale is `amax/7.5` (7.5 = (q_max − q_min)/2, CT's `bit_range / 2`), *not*
//! AutoAWQ's `amax/7` (specs/serving-formats.md §6: "Do not mix the two").
//!
//! # Packings (u = q + 8 ∈ [0, 15] everywhere; the first element of a run of 8 is the low nibble)
//!
//! | layout | tensor | shape | packed along | nibble `i` of a word holds |
//! |---|---|---|---|---|
//! | compressed-tensors | `weight_packed` | `[out, ceil(in/8)]` I32 | input | element `8w + i` (zero-padded: u = 0) |
//! | compressed-tensors | `weight_zero_point` (asym) | `[ceil(out/8), in/gs]` I32 | output | zp + 8 of row `8w + i` |
//! | GPTQ | `qweight` | `[in/8, out]` I32 | input | input `8w + i` (the CT tensor transposed) |
//! | GPTQ | `qzeros` | `[n_groups, out/8]` I32 | output | z − 1 (`gptq` v1) or z (`gptq_v2`), z = zp + 8 |
//! | AWQ | `qweight` | `[in, out/8]` I32 | output | column `8c + ORDER[i]`, ORDER = [0, 2, 4, 6, 1, 3, 5, 7] |
//! | AWQ | `qzeros` | `[n_groups, out/8]` I32 | output | same interleave, z unsigned |
//!
//! (compressed_tensors/compressors/quantized_compressors/pack_quantized.py `pack_to_int32`;
//! specs/serving-formats.md §1.2, §3.1, §3.2.)

use rayon::prelude::*;

use crate::error::check_len;
use crate::float::{bf16_bits_to_f32, f32_to_bf16_bits};
use crate::{Error, Result};

/// compressed-tensors' W4A16 preset group size.
pub const DEFAULT_GROUP_SIZE: usize = 128;

/// Smallest scale: `torch.finfo(torch.float32).eps` (compressed-tensors clamps to it, so an
/// all-zero group gets this scale and quantizes to zeros).
pub const MIN_SCALE: f32 = f32::EPSILON;

/// Eight 4-bit fields in one little-endian 32-bit word; field `i` occupies bits `4i..4i+3`.
/// This is the storage unit of every INT4 layout here (stored as I32 in safetensors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(transparent)]
pub struct PackedInt4(pub u32);

const _: () = assert!(std::mem::size_of::<PackedInt4>() == 4);

impl PackedInt4 {
    /// Pack eight unsigned nibbles (each must be < 16), field `i` from `u[i]`.
    pub fn from_nibbles(u: [u8; 8]) -> Self {
        let mut w = 0u32;
        for (i, &n) in u.iter().enumerate() {
            debug_assert!(n < 16);
            w |= u32::from(n & 0x0F) << (4 * i);
        }
        PackedInt4(w)
    }

    /// Field `i` (0..8).
    pub fn get(self, i: usize) -> u8 {
        ((self.0 >> (4 * i)) & 0x0F) as u8
    }

    /// The word as the signed value safetensors stores.
    pub fn as_i32(self) -> i32 {
        self.0 as i32
    }
}

/// Symmetric (zero point 0) or asymmetric (per-group zero point).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Int4Scheme {
    /// `s = amax/7.5`, q ∈ [−8, 7], no zero point (CT `symmetric: true`, W4A16).
    #[default]
    Symmetric,
    /// `s = (max − min)/15` with a zero point (CT `symmetric: false`, W4A16_ASYM).
    Asymmetric,
}

/// The arithmetic the reference does its tensor operations in (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Int4Arith {
    /// Plain `f32` (an F32 model, or the most accurate result).
    F32,
    /// Every operation rounded to BF16, like compressed-tensors on a BF16 model; the input is
    /// rounded to BF16 first. The scales are then exactly representable in BF16.
    #[default]
    Bf16,
}

/// What to quantize to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Int4Config {
    /// Code width: 4 (default) or 8.
    pub bits: u8,
    /// Symmetric or asymmetric.
    pub scheme: Int4Scheme,
    /// Group size along the row; `None` = one group per row (CT `strategy: "channel"`).
    pub group_size: Option<usize>,
    /// Arithmetic of the reference.
    pub arith: Int4Arith,
}

impl Default for Int4Config {
    /// compressed-tensors W4A16 on a BF16 model: symmetric, groups of 128, BF16 arithmetic.
    fn default() -> Self {
        Int4Config {
            bits: 4,
            scheme: Int4Scheme::Symmetric,
            group_size: Some(DEFAULT_GROUP_SIZE),
            arith: Int4Arith::Bf16,
        }
    }
}

/// A quantized `[rows, cols]` matrix in its unpacked form.
#[derive(Debug, Clone, PartialEq)]
pub struct Int4Tensor {
    /// Code width: 4 or 8.
    pub bits: u8,
    /// Rows (output features).
    pub rows: usize,
    /// Columns (input features).
    pub cols: usize,
    /// Elements per group along a row (`cols` for per-row quantization).
    pub group_size: usize,
    /// Signed codes in [−8, 7] ([−128, 127] for 8 bits), row-major `[rows, cols]`.
    pub q: Vec<i8>,
    /// Scales, `[rows, cols/group_size]`.
    pub scales: Vec<f32>,
    /// Signed zero points in [−8, 7], `[rows, cols/group_size]`; `None` when symmetric.
    pub zero_points: Option<Vec<i8>>,
}

impl Int4Tensor {
    /// Groups per row.
    pub fn n_groups(&self) -> usize {
        self.cols / self.group_size
    }

    /// `x = s·(q − zp)` in `f32` (exact: a ≤ 9-bit integer times the scale), row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let ng = self.n_groups();
        let mut out = vec![0f32; self.rows * self.cols];
        out.par_chunks_mut(self.cols.max(1))
            .enumerate()
            .for_each(|(r, row)| {
                for (c, x) in row.iter_mut().enumerate() {
                    let g = r * ng + c / self.group_size;
                    let zp = self.zero_points.as_ref().map_or(0, |z| z[g]);
                    *x = f32::from(i16::from(self.q[r * self.cols + c]) - i16::from(zp))
                        * self.scales[g];
                }
            });
        out
    }
}

/// The largest divisor of `k` not above `group`, preferring multiples of 8 (kernels want them).
fn suggest_group(k: usize, group: usize) -> usize {
    let top = group.min(k).max(1);
    (1..=top)
        .rev()
        .find(|g| k % g == 0 && g % 8 == 0)
        .or_else(|| (1..=top).rev().find(|g| k % g == 0))
        .unwrap_or(1)
}

/// Check `group` against a row length `k` and return the effective group size.
pub fn check_group(k: usize, group: Option<usize>) -> Result<usize> {
    match group {
        None => Ok(k),
        Some(0) => Err(Error::InvalidParameter {
            name: "group_size",
            detail: "must be positive".into(),
        }),
        Some(g) if k % g != 0 => Err(Error::GroupMismatch {
            k: k as u64,
            group: g as u64,
            suggested: suggest_group(k, g) as u64,
        }),
        Some(g) => Ok(g),
    }
}

fn round_bf16(x: f32) -> f32 {
    bf16_bits_to_f32(f32_to_bf16_bits(x))
}

impl Int4Arith {
    fn r(self, x: f32) -> f32 {
        match self {
            Int4Arith::F32 => x,
            Int4Arith::Bf16 => round_bf16(x),
        }
    }
}

/// `[q_min, q_max]` of a signed `bits`-bit code.
pub fn code_range(bits: u8) -> (f32, f32) {
    let half = f32::from(1u16 << (bits - 1));
    (-half, half - 1.0)
}

fn check_bits(bits: u8) -> Result<()> {
    if matches!(bits, 4 | 8) {
        Ok(())
    } else {
        Err(Error::InvalidParameter {
            name: "bits",
            detail: format!("{bits}: pack-quantized codes are 4 or 8 bits"),
        })
    }
}

/// Scale and (float) zero point of one group, compressed-tensors `calculate_qparams`.
fn group_params(g: &[f32], bits: u8, scheme: Int4Scheme, a: Int4Arith) -> (f32, f32) {
    let (qmin, qmax) = code_range(bits);
    let (mut mn, mut mx) = (0f32, 0f32);
    for &x in g {
        mn = mn.min(x);
        mx = mx.max(x);
    }
    match scheme {
        Int4Scheme::Symmetric => {
            let amax = mn.abs().max(mx);
            (a.r(amax / ((qmax - qmin) / 2.0)).max(MIN_SCALE), 0.0)
        }
        Int4Scheme::Asymmetric => {
            let s = a.r(a.r(mx - mn) / (qmax - qmin)).max(MIN_SCALE);
            let zp = a.r(qmin - a.r(mn / s)).clamp(qmin, qmax).round_ties_even();
            (s, zp)
        }
    }
}

/// Quantize a row-major `[n, k]` matrix to INT4 with `cfg` (rule in the module docs). Rows are
/// quantized in parallel; the result does not depend on the thread count.
///
/// Errors: [`Error::NonFinite`] (first in row-major order), [`Error::GroupMismatch`] when the
/// group size does not divide `k`, [`Error::InvalidParameter`] for `k == 0` or group 0,
/// [`Error::BufferLength`] when `w.len()` is not a multiple of `k`.
pub fn quantize_int4(w: &[f32], k: usize, cfg: &Int4Config) -> Result<Int4Tensor> {
    if k == 0 {
        return Err(Error::InvalidParameter {
            name: "k",
            detail: "row length must be positive".into(),
        });
    }
    if w.len() % k != 0 {
        return Err(Error::BufferLength {
            what: "weights (a whole number of rows)",
            expected: (w.len() / k * k) as u64,
            got: w.len() as u64,
        });
    }
    let gs = check_group(k, cfg.group_size)?;
    check_bits(cfg.bits)?;
    let (qmin, qmax) = code_range(cfg.bits);
    if let Some(i) = w.iter().position(|x| !x.is_finite()) {
        return Err(Error::NonFinite {
            row: (i / k) as u64,
            col: (i % k) as u64,
        });
    }
    let rows = w.len() / k;
    let ng = k / gs;
    let a = cfg.arith;
    let mut q = vec![0i8; w.len()];
    let mut scales = vec![0f32; rows * ng];
    let mut zps = vec![0i8; rows * ng];
    q.par_chunks_mut(k)
        .zip(scales.par_chunks_mut(ng))
        .zip(zps.par_chunks_mut(ng))
        .zip(w.par_chunks(k))
        .for_each(|(((qr, sr), zr), wr)| {
            let mut xs = vec![0f32; gs];
            for (g, (qg, wg)) in qr.chunks_mut(gs).zip(wr.chunks(gs)).enumerate() {
                for (d, &x) in xs.iter_mut().zip(wg) {
                    *d = a.r(x);
                }
                let (s, zp) = group_params(&xs, cfg.bits, cfg.scheme, a);
                sr[g] = s;
                zr[g] = zp as i8;
                for (o, &x) in qg.iter_mut().zip(&xs) {
                    let v = a.r(a.r(x / s) + zp);
                    *o = v.clamp(qmin, qmax).round_ties_even() as i8;
                }
            }
        });
    Ok(Int4Tensor {
        bits: cfg.bits,
        rows,
        cols: k,
        group_size: gs,
        q,
        scales,
        zero_points: (cfg.scheme == Int4Scheme::Asymmetric).then_some(zps),
    })
}

fn nibble(q: i8) -> u8 {
    debug_assert!((-8..=7).contains(&q));
    (q + 8) as u8
}

fn check_codes(q: &[i8], bits: u8) -> Result<()> {
    let (lo, hi) = code_range(bits);
    match q.iter().position(|&v| !(lo..=hi).contains(&f32::from(v))) {
        None => Ok(()),
        Some(i) => Err(Error::InvalidParameter {
            name: "q",
            detail: format!("code {} at index {i} is outside [{lo}, {hi}]", q[i]),
        }),
    }
}

/// Codes per 32-bit word.
fn per_word(bits: u8) -> usize {
    32 / usize::from(bits)
}

/// `u = q + 2^(bits−1)` of run `vals` (at most `32/bits`) in one word, element `i` at bits
/// `bits·i`.
fn pack_word(vals: impl Iterator<Item = i8>, bits: u8) -> i32 {
    let off = 1i16 << (bits - 1);
    let mut w = 0u32;
    for (i, v) in vals.enumerate() {
        w |= u32::from((i16::from(v) + off) as u16 as u8) << (usize::from(bits) * i);
    }
    w as i32
}

fn unpack_field(word: i32, i: usize, bits: u8) -> i8 {
    let mask = (1u32 << bits) - 1;
    let u = ((word as u32) >> (usize::from(bits) * i)) & mask;
    (i16::try_from(u).unwrap_or(0) - (1i16 << (bits - 1))) as i8
}

/// compressed-tensors `pack_to_int32(q, 4)` along dim 1: `[rows, cols]` signed codes →
/// `[rows, ceil(cols/8)]` words, u = q + 8, a partial last word padded with u = 0.
pub fn pack_ct(q: &[i8], rows: usize, cols: usize) -> Result<Vec<i32>> {
    pack_ct_bits(q, rows, cols, 4)
}

/// compressed-tensors `pack_to_int32(q, bits)` along dim 1 for 4 or 8 bits: `[rows,
/// ceil(cols·bits/32)]` words.
pub fn pack_ct_bits(q: &[i8], rows: usize, cols: usize, bits: u8) -> Result<Vec<i32>> {
    check_bits(bits)?;
    check_len("q", rows * cols, q.len())?;
    check_codes(q, bits)?;
    let pw = per_word(bits);
    let wpr = cols.div_ceil(pw);
    let mut out = vec![0i32; rows * wpr];
    if cols == 0 {
        return Ok(out);
    }
    for (o, qr) in out.chunks_mut(wpr.max(1)).zip(q.chunks(cols)) {
        for (w, chunk) in o.iter_mut().zip(qr.chunks(pw)) {
            *w = pack_word(chunk.iter().copied(), bits);
        }
    }
    Ok(out)
}

/// Inverse of [`pack_ct`] (CT `unpack_from_int32`): words → signed codes, padding dropped.
pub fn unpack_ct(packed: &[i32], rows: usize, cols: usize) -> Result<Vec<i8>> {
    unpack_ct_bits(packed, rows, cols, 4)
}

/// Inverse of [`pack_ct_bits`].
pub fn unpack_ct_bits(packed: &[i32], rows: usize, cols: usize, bits: u8) -> Result<Vec<i8>> {
    check_bits(bits)?;
    let pw = per_word(bits);
    let wpr = cols.div_ceil(pw);
    check_len("weight_packed", rows * wpr, packed.len())?;
    let mut q = vec![0i8; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            q[r * cols + c] = unpack_field(packed[r * wpr + c / pw], c % pw, bits);
        }
    }
    Ok(q)
}

/// compressed-tensors zero points: `[rows, n_groups]` signed → `[ceil(rows/8), n_groups]`,
/// packed along dim 0 (field `i` of word `[w, g]` is row `8w + i`), u = zp + 8, zero-padded.
pub fn pack_ct_zero_points(zp: &[i8], rows: usize, n_groups: usize) -> Result<Vec<i32>> {
    pack_ct_zero_points_bits(zp, rows, n_groups, 4)
}

/// [`pack_ct_zero_points`] for 4 or 8 bits: `[ceil(rows·bits/32), n_groups]`.
pub fn pack_ct_zero_points_bits(
    zp: &[i8],
    rows: usize,
    n_groups: usize,
    bits: u8,
) -> Result<Vec<i32>> {
    check_bits(bits)?;
    check_len("zero_points", rows * n_groups, zp.len())?;
    check_codes(zp, bits)?;
    let pw = per_word(bits);
    let wr = rows.div_ceil(pw);
    let mut out = vec![0i32; wr * n_groups];
    for w in 0..wr {
        for g in 0..n_groups {
            let r1 = (pw * w + pw).min(rows);
            out[w * n_groups + g] = pack_word((pw * w..r1).map(|r| zp[r * n_groups + g]), bits);
        }
    }
    Ok(out)
}

/// Inverse of [`pack_ct_zero_points`].
pub fn unpack_ct_zero_points(packed: &[i32], rows: usize, n_groups: usize) -> Result<Vec<i8>> {
    unpack_ct_zero_points_bits(packed, rows, n_groups, 4)
}

/// Inverse of [`pack_ct_zero_points_bits`].
pub fn unpack_ct_zero_points_bits(
    packed: &[i32],
    rows: usize,
    n_groups: usize,
    bits: u8,
) -> Result<Vec<i8>> {
    check_bits(bits)?;
    let pw = per_word(bits);
    check_len(
        "weight_zero_point",
        rows.div_ceil(pw) * n_groups,
        packed.len(),
    )?;
    let mut zp = vec![0i8; rows * n_groups];
    for r in 0..rows {
        for g in 0..n_groups {
            zp[r * n_groups + g] = unpack_field(packed[(r / pw) * n_groups + g], r % pw, bits);
        }
    }
    Ok(zp)
}

/// The tensors of one Linear in compressed-tensors `pack-quantized` form (scales as `f32`;
/// the writer stores them in the model dtype, BF16).
#[derive(Debug, Clone, PartialEq)]
pub struct CtPacked {
    /// Code width: 4 or 8.
    pub bits: u8,
    /// `weight_packed`, `[rows, ceil(cols·bits/32)]`.
    pub weight_packed: Vec<i32>,
    /// `weight_scale`, `[rows, n_groups]`.
    pub weight_scale: Vec<f32>,
    /// `weight_zero_point`, `[ceil(rows·bits/32), n_groups]`, asymmetric only.
    pub weight_zero_point: Option<Vec<i32>>,
    /// `weight_shape` = `[rows, cols]`.
    pub weight_shape: [i64; 2],
    /// group size used (`cols` for `strategy: "channel"`).
    pub group_size: usize,
}

/// Pack an [`Int4Tensor`] in compressed-tensors `pack-quantized` form.
pub fn pack_compressed_tensors(t: &Int4Tensor) -> Result<CtPacked> {
    let ng = t.n_groups();
    Ok(CtPacked {
        bits: t.bits,
        weight_packed: pack_ct_bits(&t.q, t.rows, t.cols, t.bits)?,
        weight_scale: t.scales.clone(),
        weight_zero_point: match &t.zero_points {
            Some(z) => Some(pack_ct_zero_points_bits(z, t.rows, ng, t.bits)?),
            None => None,
        },
        weight_shape: [t.rows as i64, t.cols as i64],
        group_size: t.group_size,
    })
}

/// Dequantize compressed-tensors `pack-quantized` tensors: `w = s·(q − zp)`, row-major.
pub fn dequantize_compressed_tensors(p: &CtPacked) -> Result<Vec<f32>> {
    let (rows, cols) = dims(p.weight_shape)?;
    let gs = check_group(cols, Some(p.group_size))?;
    let ng = cols / gs;
    check_len("weight_scale", rows * ng, p.weight_scale.len())?;
    let q = unpack_ct_bits(&p.weight_packed, rows, cols, p.bits)?;
    let zero_points = match &p.weight_zero_point {
        Some(z) => Some(unpack_ct_zero_points_bits(z, rows, ng, p.bits)?),
        None => None,
    };
    Ok(Int4Tensor {
        bits: p.bits,
        rows,
        cols,
        group_size: gs,
        q,
        scales: p.weight_scale.clone(),
        zero_points,
    }
    .dequantize())
}

fn dims(shape: [i64; 2]) -> Result<(usize, usize)> {
    let conv = |v: i64| {
        usize::try_from(v).map_err(|_| Error::InvalidParameter {
            name: "weight_shape",
            detail: format!("{shape:?} has a negative dimension"),
        })
    };
    let (rows, cols) = (conv(shape[0])?, conv(shape[1])?);
    if cols == 0 {
        return Err(Error::InvalidParameter {
            name: "weight_shape",
            detail: "zero columns".into(),
        });
    }
    Ok((rows, cols))
}

/// GPTQ `qzeros` convention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GptqFormat {
    /// `checkpoint_format: "gptq"` (default): stores z − 1; symmetric only (asymmetric v1
    /// cannot store z = 0 and is refused).
    V1,
    /// `checkpoint_format: "gptq_v2"`: stores z.
    V2,
}

/// The tensors of one Linear in GPTQ form (`desc_act: false`, so `g_idx[k] = k / gs`).
#[derive(Debug, Clone, PartialEq)]
pub struct GptqPacked {
    /// `qweight`, `[in/8, out]`.
    pub qweight: Vec<i32>,
    /// `qzeros`, `[n_groups, out/8]`.
    pub qzeros: Vec<i32>,
    /// `scales`, `[n_groups, out]` (stored as F16 by convention).
    pub scales: Vec<f32>,
    /// `g_idx`, `[in]`.
    pub g_idx: Vec<i32>,
    /// output features (rows of the original weight)
    pub out_features: usize,
    /// input features
    pub in_features: usize,
    /// group size
    pub group_size: usize,
    /// `qzeros` convention
    pub format: GptqFormat,
}

fn need_4_bits(t: &Int4Tensor) -> Result<()> {
    if t.bits == 4 {
        Ok(())
    } else {
        Err(Error::InvalidParameter {
            name: "bits",
            detail: format!(
                "{} bits: the GPTQ and AWQ packings hold 4-bit codes",
                t.bits
            ),
        })
    }
}

fn need_multiple_of_8(name: &'static str, v: usize) -> Result<()> {
    if v % 8 == 0 {
        Ok(())
    } else {
        Err(Error::InvalidParameter {
            name,
            detail: format!("{v} is not a multiple of 8"),
        })
    }
}

/// Pack an [`Int4Tensor`] (`[out, in]`) in GPTQ form. Needs `in % 8 == 0` and `out % 8 == 0`.
pub fn pack_gptq(t: &Int4Tensor, format: GptqFormat) -> Result<GptqPacked> {
    need_4_bits(t)?;
    let (out, inp, gs, ng) = (t.rows, t.cols, t.group_size, t.n_groups());
    need_multiple_of_8("in_features", inp)?;
    need_multiple_of_8("out_features", out)?;
    if format == GptqFormat::V1 && t.zero_points.is_some() {
        return Err(Error::InvalidParameter {
            name: "format",
            detail:
                "GPTQ v1 cannot store asymmetric zero points (z − 1 wraps at z = 0); use gptq_v2"
                    .into(),
        });
    }
    let mut qweight = vec![0i32; inp / 8 * out];
    for w in 0..inp / 8 {
        for n in 0..out {
            let mut u = [0u8; 8];
            for (i, d) in u.iter_mut().enumerate() {
                *d = nibble(t.q[n * inp + 8 * w + i]);
            }
            qweight[w * out + n] = PackedInt4::from_nibbles(u).as_i32();
        }
    }
    let mut qzeros = vec![0i32; ng * out / 8];
    let mut scales = vec![0f32; ng * out];
    for g in 0..ng {
        for c in 0..out / 8 {
            let mut u = [0u8; 8];
            for (i, d) in u.iter_mut().enumerate() {
                let n = 8 * c + i;
                let z = t.zero_points.as_ref().map_or(8, |z| nibble(z[n * ng + g]));
                *d = match format {
                    GptqFormat::V1 => z - 1,
                    GptqFormat::V2 => z,
                };
            }
            qzeros[g * out / 8 + c] = PackedInt4::from_nibbles(u).as_i32();
        }
        for n in 0..out {
            scales[g * out + n] = t.scales[n * ng + g];
        }
    }
    let g_idx = (0..inp).map(|k| (k / gs) as i32).collect();
    Ok(GptqPacked {
        qweight,
        qzeros,
        scales,
        g_idx,
        out_features: out,
        in_features: inp,
        group_size: gs,
        format,
    })
}

/// Dequantize GPTQ tensors to `[out, in]` row-major:
/// `w[n, k] = scales[g_idx[k], n] · (u[k, n] − z[g_idx[k], n])` (v1: z = stored + 1).
pub fn dequantize_gptq(p: &GptqPacked) -> Result<Vec<f32>> {
    let (out, inp) = (p.out_features, p.in_features);
    need_multiple_of_8("in_features", inp)?;
    need_multiple_of_8("out_features", out)?;
    check_len("qweight", inp / 8 * out, p.qweight.len())?;
    check_len("g_idx", inp, p.g_idx.len())?;
    let ng = p.scales.len() / out.max(1);
    check_len("scales", ng * out, p.scales.len())?;
    check_len("qzeros", ng * out / 8, p.qzeros.len())?;
    let mut w = vec![0f32; out * inp];
    for k in 0..inp {
        let g = usize::try_from(p.g_idx[k])
            .ok()
            .filter(|&g| g < ng)
            .ok_or_else(|| Error::InvalidParameter {
                name: "g_idx",
                detail: format!("g_idx[{k}] = {} is not a group index", p.g_idx[k]),
            })?;
        for n in 0..out {
            let u = PackedInt4(p.qweight[(k / 8) * out + n] as u32).get(k % 8);
            let zs = PackedInt4(p.qzeros[g * out / 8 + n / 8] as u32).get(n % 8);
            let z = match p.format {
                GptqFormat::V1 => (zs + 1) & 0x0F,
                GptqFormat::V2 => zs,
            };
            w[n * inp + k] = f32::from(i16::from(u) - i16::from(z)) * p.scales[g * out + n];
        }
    }
    Ok(w)
}

/// AutoAWQ "gemm" nibble order: field `i` of a word holds column `8c + AWQ_ORDER[i]`.
pub const AWQ_ORDER: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];
/// Inverse of [`AWQ_ORDER`]: column `8c + j` is in field `AWQ_REVERSE_ORDER[j]`.
pub const AWQ_REVERSE_ORDER: [usize; 8] = [0, 4, 1, 5, 2, 6, 3, 7];

/// The tensors of one Linear in AutoAWQ "gemm" form (`zero_point: true`).
#[derive(Debug, Clone, PartialEq)]
pub struct AwqPacked {
    /// `qweight`, `[in, out/8]`.
    pub qweight: Vec<i32>,
    /// `qzeros`, `[n_groups, out/8]`, unsigned zero points (8 for symmetric input).
    pub qzeros: Vec<i32>,
    /// `scales`, `[n_groups, out]` (stored as F16).
    pub scales: Vec<f32>,
    /// output features
    pub out_features: usize,
    /// input features
    pub in_features: usize,
    /// group size
    pub group_size: usize,
}

fn awq_word(get: impl Fn(usize) -> u8) -> i32 {
    let mut u = [0u8; 8];
    for (i, d) in u.iter_mut().enumerate() {
        *d = get(AWQ_ORDER[i]);
    }
    PackedInt4::from_nibbles(u).as_i32()
}

/// Pack an [`Int4Tensor`] (`[out, in]`) in AWQ form. Needs `out % 8 == 0`. The codes and
/// zero points are carried over unchanged (u = q + 8, z = zp + 8), so `w = s·(u − z)` is the
/// same value; note AutoAWQ's own quantizer uses a different rule (`s = (max−min)/15` without
/// extending the range to 0).
pub fn pack_awq(t: &Int4Tensor) -> Result<AwqPacked> {
    need_4_bits(t)?;
    let (out, inp, ng) = (t.rows, t.cols, t.n_groups());
    need_multiple_of_8("out_features", out)?;
    let mut qweight = vec![0i32; inp * out / 8];
    for k in 0..inp {
        for c in 0..out / 8 {
            qweight[k * out / 8 + c] = awq_word(|j| nibble(t.q[(8 * c + j) * inp + k]));
        }
    }
    let mut qzeros = vec![0i32; ng * out / 8];
    let mut scales = vec![0f32; ng * out];
    for g in 0..ng {
        for c in 0..out / 8 {
            qzeros[g * out / 8 + c] = awq_word(|j| {
                t.zero_points
                    .as_ref()
                    .map_or(8, |z| nibble(z[(8 * c + j) * ng + g]))
            });
        }
        for n in 0..out {
            scales[g * out + n] = t.scales[n * ng + g];
        }
    }
    Ok(AwqPacked {
        qweight,
        qzeros,
        scales,
        out_features: out,
        in_features: inp,
        group_size: t.group_size,
    })
}

/// Dequantize AWQ tensors to `[out, in]` row-major: `w[n, k] = s[g, n]·(u[k, n] − z[g, n])`.
pub fn dequantize_awq(p: &AwqPacked) -> Result<Vec<f32>> {
    let (out, inp) = (p.out_features, p.in_features);
    need_multiple_of_8("out_features", out)?;
    let gs = check_group(inp, Some(p.group_size))?;
    let ng = inp / gs;
    check_len("qweight", inp * out / 8, p.qweight.len())?;
    check_len("qzeros", ng * out / 8, p.qzeros.len())?;
    check_len("scales", ng * out, p.scales.len())?;
    let mut w = vec![0f32; out * inp];
    for k in 0..inp {
        let g = k / gs;
        for n in 0..out {
            let field = AWQ_REVERSE_ORDER[n % 8];
            let u = PackedInt4(p.qweight[k * out / 8 + n / 8] as u32).get(field);
            let z = PackedInt4(p.qzeros[g * out / 8 + n / 8] as u32).get(field);
            w[n * inp + k] = f32::from(i16::from(u) - i16::from(z)) * p.scales[g * out + n];
        }
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// specs/serving-formats.md §1.4: one BF16 row as a single group of 8.
    #[test]
    fn spec_worked_example() {
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
        let cfg = Int4Config {
            group_size: Some(8),
            ..Int4Config::default()
        };
        let t = quantize_int4(&w, 8, &cfg).unwrap();
        assert_eq!(t.scales.len(), 1);
        assert_eq!(f64::from(t.scales[0]), 0.093_261_718_75);
        assert_eq!(t.q, vec![5, -3, 1, 0, 7, -8, 4, 1]);
        let p = pack_ct(&t.q, 1, 8).unwrap();
        assert_eq!(p, vec![0x9C0F_895Du32 as i32]);
        assert_eq!(p[0], -1_676_703_395);
        // the same codes in AWQ order (spec §3.2) — pad to 8 rows to satisfy out % 8
        let t8 = Int4Tensor {
            bits: 4,
            rows: 8,
            cols: 1,
            group_size: 1,
            q: t.q.clone(),
            scales: vec![1.0; 8],
            zero_points: None,
        };
        assert_eq!(pack_awq(&t8).unwrap().qweight, vec![0x9085_CF9Du32 as i32]);
    }

    #[test]
    fn clamp_before_round_and_ties_even() {
        // +amax → 7.5 → clamp 7; −amax → −7.5 → −8 (ties to even); 2.5 → 2; −0.5 → −0 → 0
        let s = 1.0f32;
        let w = [7.5 * s, -7.5 * s, 2.5 * s, -0.5 * s, 1.5 * s, 0.0, 0.0, 0.0];
        let cfg = Int4Config {
            group_size: None,
            arith: Int4Arith::F32,
            ..Int4Config::default()
        };
        let t = quantize_int4(&w, 8, &cfg).unwrap();
        assert_eq!(t.scales, vec![1.0]);
        assert_eq!(t.q, vec![7, -8, 2, 0, 2, 0, 0, 0]);
    }

    #[test]
    fn asymmetric_zero_point() {
        // min 0 (range extended to include 0) .. max 15 → s = 1, zp = −8
        let w: Vec<f32> = (0..16).map(|i| i as f32).collect();
        let cfg = Int4Config {
            bits: 4,
            scheme: Int4Scheme::Asymmetric,
            group_size: Some(16),
            arith: Int4Arith::F32,
        };
        let t = quantize_int4(&w, 16, &cfg).unwrap();
        assert_eq!(t.scales, vec![1.0]);
        assert_eq!(t.zero_points, Some(vec![-8]));
        assert_eq!(t.dequantize(), w);
        // negative-only group: max extended to 0
        let w = [-3.0f32, -1.5, -0.0, -2.25];
        let t = quantize_int4(
            &w,
            4,
            &Int4Config {
                group_size: None,
                ..cfg
            },
        )
        .unwrap();
        assert_eq!(t.scales, vec![0.2]);
        assert_eq!(t.zero_points, Some(vec![7]));
    }

    #[test]
    fn zero_group_gets_eps_scale() {
        let t = quantize_int4(&[0.0; 8], 8, &Int4Config::default()).unwrap_err();
        assert!(matches!(
            t,
            Error::GroupMismatch {
                k: 8,
                group: 128,
                suggested: 8
            }
        ));
        let cfg = Int4Config {
            group_size: Some(4),
            ..Int4Config::default()
        };
        let t = quantize_int4(&[0.0; 8], 8, &cfg).unwrap();
        assert_eq!(t.scales, vec![MIN_SCALE, MIN_SCALE]);
        assert_eq!(t.q, vec![0; 8]);
    }

    #[test]
    fn errors() {
        let cfg = Int4Config::default();
        assert_eq!(
            check_group(4096, Some(96)),
            Err(Error::GroupMismatch {
                k: 4096,
                group: 96,
                suggested: 64
            })
        );
        assert_eq!(
            check_group(100, Some(128)),
            Err(Error::GroupMismatch {
                k: 100,
                group: 128,
                suggested: 100
            })
        );
        assert!(matches!(
            check_group(8, Some(0)),
            Err(Error::InvalidParameter { .. })
        ));
        let mut w = vec![1.0f32; 256];
        w[130] = f32::NAN;
        assert_eq!(
            quantize_int4(&w, 128, &cfg),
            Err(Error::NonFinite { row: 1, col: 2 })
        );
        assert!(matches!(
            quantize_int4(&w[..100], 128, &cfg),
            Err(Error::BufferLength { .. })
        ));
        assert!(matches!(
            pack_ct(&[9], 1, 1),
            Err(Error::InvalidParameter { name: "q", .. })
        ));
        let t = quantize_int4(
            &[1.0; 64],
            8,
            &Int4Config {
                bits: 4,
                scheme: Int4Scheme::Asymmetric,
                group_size: None,
                arith: Int4Arith::F32,
            },
        )
        .unwrap();
        assert!(matches!(
            pack_gptq(&t, GptqFormat::V1),
            Err(Error::InvalidParameter { name: "format", .. })
        ));
    }

    #[test]
    fn gptq_v1_symmetric_zeros_are_0x77777777() {
        let t = quantize_int4(
            &(0..64 * 8).map(|i| (i as f32).cos()).collect::<Vec<_>>(),
            64,
            &Int4Config {
                group_size: Some(32),
                ..Int4Config::default()
            },
        )
        .unwrap();
        let v1 = pack_gptq(&t, GptqFormat::V1).unwrap();
        assert!(v1.qzeros.iter().all(|&z| z == 0x7777_7777));
        let v2 = pack_gptq(&t, GptqFormat::V2).unwrap();
        assert!(v2.qzeros.iter().all(|&z| z as u32 == 0x8888_8888));
        assert_eq!(v1.g_idx[33], 1);
        let want = t.dequantize();
        assert_eq!(dequantize_gptq(&v1).unwrap(), want);
        assert_eq!(dequantize_gptq(&v2).unwrap(), want);
        // GPTQ qweight is the CT weight_packed transposed
        let ct = pack_ct(&t.q, t.rows, t.cols).unwrap();
        for n in 0..t.rows {
            for w in 0..t.cols / 8 {
                assert_eq!(v1.qweight[w * t.rows + n], ct[n * t.cols / 8 + w]);
            }
        }
    }

    fn arb_tensor() -> impl Strategy<Value = (Int4Tensor, bool)> {
        (1usize..4, 1usize..4, 1usize..4, any::<bool>()).prop_flat_map(|(r8, ng, gs8, asym)| {
            let (rows, gs) = (r8 * 8, gs8 * 8);
            let cols = ng * gs;
            (
                proptest::collection::vec(-8i8..=7, rows * cols),
                proptest::collection::vec(-8i8..=7, rows * ng),
                proptest::collection::vec(1e-3f32..10.0, rows * ng),
            )
                .prop_map(move |(q, z, s)| {
                    (
                        Int4Tensor {
                            bits: 4,
                            rows,
                            cols,
                            group_size: gs,
                            q,
                            scales: s,
                            zero_points: asym.then_some(z),
                        },
                        asym,
                    )
                })
        })
    }

    proptest! {
        #[test]
        fn packings_round_trip((t, asym) in arb_tensor()) {
            let want = t.dequantize();
            let ct = pack_compressed_tensors(&t).unwrap();
            prop_assert_eq!(unpack_ct(&ct.weight_packed, t.rows, t.cols).unwrap(), t.q.clone());
            if let (Some(zp), Some(z)) = (&ct.weight_zero_point, &t.zero_points) {
                prop_assert_eq!(&unpack_ct_zero_points(zp, t.rows, t.n_groups()).unwrap(), z);
            }
            prop_assert_eq!(dequantize_compressed_tensors(&ct).unwrap(), want.clone());
            prop_assert_eq!(dequantize_gptq(&pack_gptq(&t, GptqFormat::V2).unwrap()).unwrap(), want.clone());
            if !asym {
                prop_assert_eq!(dequantize_gptq(&pack_gptq(&t, GptqFormat::V1).unwrap()).unwrap(), want.clone());
            }
            prop_assert_eq!(dequantize_awq(&pack_awq(&t).unwrap()).unwrap(), want);
        }

        #[test]
        fn ct_pack_pads_odd_widths(rows in 1usize..5, cols in 1usize..30, seed in any::<u64>()) {
            let q: Vec<i8> = (0..rows * cols).map(|i| ((seed >> (i % 60)) as i8 & 0x0F) - 8).collect();
            let p = pack_ct(&q, rows, cols).unwrap();
            prop_assert_eq!(p.len(), rows * cols.div_ceil(8));
            prop_assert_eq!(unpack_ct(&p, rows, cols).unwrap(), q);
            if cols % 8 != 0 {
                // padding nibbles are u = 0
                let last = PackedInt4(p[cols.div_ceil(8) - 1] as u32);
                for i in cols % 8..8 { prop_assert_eq!(last.get(i), 0); }
            }
        }

        #[test]
        fn quantization_error_is_within_half_a_step(
            w in proptest::collection::vec(-4.0f32..4.0, 64),
            asym in any::<bool>(),
        ) {
            let cfg = Int4Config {
                bits: 4,
                scheme: if asym { Int4Scheme::Asymmetric } else { Int4Scheme::Symmetric },
                group_size: Some(16),
                arith: Int4Arith::F32,
            };
            let t = quantize_int4(&w, 32, &cfg).unwrap();
            let back = t.dequantize();
            for (i, (&a, &b)) in w.iter().zip(&back).enumerate() {
                let s = t.scales[i / 16];
                // symmetric: +amax clips from 7.5 to 7, so up to one full step there
                prop_assert!((a - b).abs() <= s * 1.0001, "{a} {b} {s}");
            }
        }
    }

    #[test]
    fn bf16_mode_scales_are_bf16() {
        let w: Vec<f32> = (0..256).map(|i| (i as f32 * 0.37).sin() * 0.1).collect();
        for scheme in [Int4Scheme::Symmetric, Int4Scheme::Asymmetric] {
            let t = quantize_int4(
                &w,
                128,
                &Int4Config {
                    bits: 4,
                    scheme,
                    group_size: Some(32),
                    arith: Int4Arith::Bf16,
                },
            )
            .unwrap();
            assert!(t.scales.iter().all(|&s| round_bf16(s) == s));
        }
    }

    #[test]
    fn thread_count_independent() {
        let w: Vec<f32> = (0..128 * 40).map(|i| (i as f32 * 0.1).sin()).collect();
        let run = |n| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap()
                .install(|| quantize_int4(&w, 128, &Int4Config::default()).unwrap())
        };
        assert_eq!(run(1), run(3));
    }

    /// INT8: compressed-tensors' rule with q ∈ [−128, 127] (`s = amax/127.5`; asymmetric
    /// `s = (max − min)/255`, `zp = round(clamp(−128 − min/s))`), written out independently.
    #[test]
    fn int8_follows_the_compressed_tensors_rule() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
        };
        let (rows, k, gs) = (7, 96, 32);
        let mut w: Vec<f32> = (0..rows * k).map(|_| next() * 0.05).collect();
        w[5] = 0.0;
        w[40] = 0.3; // an outlier
        for scheme in [Int4Scheme::Symmetric, Int4Scheme::Asymmetric] {
            let cfg = Int4Config {
                bits: 8,
                scheme,
                group_size: Some(gs),
                arith: Int4Arith::F32,
            };
            let t = quantize_int4(&w, k, &cfg).unwrap();
            assert_eq!(t.bits, 8);
            for (gi, g) in w.chunks(gs).enumerate() {
                let mn = g.iter().fold(0f32, |m, &x| m.min(x));
                let mx = g.iter().fold(0f32, |m, &x| m.max(x));
                let (s, zp) = match scheme {
                    Int4Scheme::Symmetric => ((mn.abs().max(mx) / 127.5).max(MIN_SCALE), 0.0),
                    Int4Scheme::Asymmetric => {
                        let s = ((mx - mn) / 255.0).max(MIN_SCALE);
                        (s, (-128.0 - mn / s).clamp(-128.0, 127.0).round_ties_even())
                    }
                };
                assert_eq!(t.scales[gi], s, "group {gi}");
                let z = t.zero_points.as_ref().map_or(0, |z| z[gi]);
                assert_eq!(f32::from(z), zp, "group {gi}");
                for (j, &x) in g.iter().enumerate() {
                    let q = (x / s + zp).clamp(-128.0, 127.0).round_ties_even();
                    assert_eq!(f32::from(t.q[gi * gs + j]), q, "group {gi} element {j}");
                }
            }
            let deq = t.dequantize();
            let err = w
                .iter()
                .zip(&deq)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            let smax = t.scales.iter().fold(0f32, |m, &x| m.max(x));
            assert!(err <= smax * 0.5 + 1e-7, "max error {err} vs scale {smax}");
            // packed and back
            let p = pack_compressed_tensors(&t).unwrap();
            assert_eq!(p.weight_packed.len(), rows * k / 4);
            if let Some(z) = &p.weight_zero_point {
                assert_eq!(z.len(), rows.div_ceil(4) * (k / gs));
            }
            assert_eq!(dequantize_compressed_tensors(&p).unwrap(), deq);
        }
    }

    /// `pack_to_int32(value, 8)`: four codes per word, u = q + 128, element i at bits 8i.
    #[test]
    fn int8_words_hold_four_offset_bytes_low_first() {
        let q = [-128i8, -1, 0, 127, 5, 0, 0, 0, 1];
        let p = pack_ct_bits(&q, 1, 9, 8).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[0] as u32, 0xFF80_7F00);
        assert_eq!(p[1] as u32, 0x8080_8085);
        assert_eq!(p[2] as u32, 0x0000_0081, "a partial word is zero-padded");
        assert_eq!(unpack_ct_bits(&p, 1, 9, 8).unwrap(), q);
        let z = pack_ct_zero_points_bits(&[-128, 3, 127, 0, -1], 5, 1, 8).unwrap();
        assert_eq!(z.len(), 2);
        assert_eq!(z[0] as u32, 0x80FF_8300);
        assert_eq!(
            unpack_ct_zero_points_bits(&z, 5, 1, 8).unwrap(),
            [-128, 3, 127, 0, -1]
        );
        assert!(
            pack_ct_bits(&[0i8; 4], 1, 4, 6).is_err(),
            "only 4 and 8 bits"
        );
    }
}
