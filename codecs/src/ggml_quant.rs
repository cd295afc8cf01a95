//! llama.cpp's reference quantizers for the ggml block formats, ported operation for operation.
//!
//! Source: ggml/src/ggml-quants.c (the llama.cpp tree vendored by llama-cpp-python 0.3.36,
//! llama.cpp commit 0c1e57098). Without an importance matrix each type follows its
//! `quantize_row_*_ref`, which is what `llama-quantize` (via `ggml_quantize_chunk` →
//! `quantize_*` with `quant_weights == NULL`) and gguf-py's `gguf.quants.quantize` produce. With
//! an importance matrix (`imatrix`, one non-negative weight per column of the row) the
//! `quantize_row_*_impl` variants are used, as `llama-quantize --imatrix` does:
//!
//! | type | without imatrix | with imatrix |
//! |---|---|---|
//! | Q8_0 | `quantize_row_q8_0_ref`: d = amax/127, q = `roundf(x·id)` (half away from zero) | (imatrix ignored, as in ggml) |
//! | Q4_0 | `_ref`: d = max/−8 (max = signed value of largest \|x\|), q = min(15, trunc(x·id + 8.5)) | `quantize_row_q4_0_impl`: `make_qx_quants(32, 8, …, qw·√(σ²+x²))` |
//! | Q4_1 | `_ref`: d = (max−min)/15, m = min, q = min(15, trunc((x−min)·id + 0.5)) | `_impl`: `make_qkx3_quants(32, 15, …, −0.9, 0.05, 36)` |
//! | Q5_0 | `_ref`: d = max/−16, q = min(31, trunc(x·id + 16.5)) | `_impl`: `make_qx_quants(32, 16, …)` |
//! | Q5_1 | `_ref`: d = (max−min)/31, q = trunc((x−min)·id + 0.5) | `_impl`: `make_qkx3_quants(32, 31, …)` |
//! | Q2_K | `_ref`: `make_qkx2_quants(16, 3, w=\|x\|, −0.5, 0.1, 15, mad)`, 4-bit scales/mins | `_impl`: `make_qkx3_quants` + `make_qp_quants(16, 15)` |
//! | Q3_K | `_ref`: `make_q3_quants(16, 4, rmse)`, 6-bit signed scales | `_impl`: `make_qx_quants(16, 4)` + `make_qx_quants(16, 32)` on the scales |
//! | Q4_K | `_ref`: `make_qkx2_quants(32, 15, w=av+\|x\|, −1, 0.1, 20)`, 6-bit scales/mins | `_impl`: `make_qkx3_quants(32, 15, …, −0.9, 0.05, 36)` + `make_qp_quants(8, 63)` |
//! | Q5_K | `_ref`: `make_qkx2_quants(32, 31, …, −0.5, 0.1, 15)` | `_impl`: as Q4_K with nmax 31 |
//! | Q6_K | `_ref`: `make_qx_quants(16, 32, rmse_type 1)`, 8-bit signed scales | `_impl`: `make_qx_quants(16, 32, 1, qw)` |
//!
//! # Exactness rules
//!
//! - All arithmetic is `f32`, in the C source's operation order, with **no fused multiply-add**
//!   (Rust never contracts `a*b + c`); sums accumulate in index order. This is ISO C semantics
//!   (`-ffp-contract=off`); a ggml build that lets the compiler contract into FMAs (GCC's default
//!   with `-march=native` on an FMA machine) can differ at rare ties.
//! - The quants are computed from the `f32` scale; the block stores `f16(d)` (RNE, the
//!   `_cvtss_sh`/`GGML_FP32_TO_FP16` rule). The K-quant requantization step uses the
//!   f16-rounded super-block scales, as the C does.
//! - `nearest_int` is the C bit trick (add 1.5·2²³, keep the low 22 mantissa bits): round half
//!   to even for |x| ≤ 4194303, and the same garbage as C beyond that.
//! - Integer narrowing follows C on the targets ggml supports: int → `uint8_t`/`int8_t`
//!   stores wrap modulo 256 (Rust `as`), float → small int truncates toward zero (the ported
//!   expressions never leave the target range).
//! - amax ties: the first element wins (strict `<`/`>` comparisons), which fixes the sign of d.
//!
//! - On x86_64 with AVX2 (detected at run time) the K-quant scale searches of Q4_K/Q5_K
//!   (`make_qkx_quants`) and Q6_K (`make_qx_quants`) run the sub-blocks of a super-block in SIMD
//!   lanes, one sub-block per lane, each lane doing the scalar port's operations in its order
//!   (see `ggml_quant/avx2.rs`); the scalar port is the reference and the fallback, and a test
//!   compares the two byte for byte on random and adversarial super-blocks.
//!
//! Non-finite inputs are rejected ([`Error::NonFinite`]) instead of producing whatever C's
//! undefined float→int conversions give; imatrix weights must be finite and non-negative.
//!
//! Each row is quantized independently (every `_ref`/`_impl` only looks inside its row), rows run
//! in parallel with rayon, and the output is byte-identical for any thread count.

// The ports index arrays by position exactly as the C loops do; iterator rewrites would obscure
// the line-by-line correspondence with ggml-quants.c that makes them reviewable.
#![allow(clippy::needless_range_loop)]

use rayon::prelude::*;

use crate::float::f16_bits_to_f32;
use crate::{DType, Error, Result};

#[cfg(target_arch = "x86_64")]
mod avx2;

/// Whether the K-quant searches run on SIMD lanes here (AVX2, detected at run time; the
/// scalar port is the reference and the fallback, and gives the same bytes).
fn simd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx2::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Elements per block of the legacy formats (Q4_0 … Q8_0).
pub const QK: usize = 32;
/// Elements per K-quant super-block.
pub const QK_K: usize = 256;
const GROUP_MAX_EPS: f32 = 1e-15;

/// A ggml block layout: a `#[repr(C)]` struct of byte arrays whose field order is the on-disk
/// order (ggml-common.h), so its size is the block size in bytes.
pub trait GgmlBlock: Sized {
    /// The ggml type.
    const DTYPE: DType;
    /// Bytes per block.
    const BYTES: usize;
    /// An all-zero block.
    fn zeroed() -> Self;
    /// Write the block's bytes (`out.len() == BYTES`).
    fn write_to(&self, out: &mut [u8]);
}

macro_rules! block {
    ($(#[$m:meta])* $name:ident = $dtype:ident, $bytes:literal { $($(#[$fm:meta])* $f:ident: $n:literal),* $(,)? }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $name { $($(#[$fm])* pub $f: [u8; $n],)* }

        const _: () = assert!(std::mem::size_of::<$name>() == $bytes);

        impl GgmlBlock for $name {
            const DTYPE: DType = DType::$dtype;
            const BYTES: usize = $bytes;
            fn zeroed() -> Self {
                Self { $($f: [0; $n],)* }
            }
            fn write_to(&self, out: &mut [u8]) {
                let mut o = 0;
                $(
                    out[o..o + $n].copy_from_slice(&self.$f);
                    o += $n;
                )*
                debug_assert_eq!(o, $bytes);
            }
        }
    };
}

block! {
    /// `block_q8_0`: x = d·qs.
    BlockQ8_0 = Q8_0, 34 {
        /// f16 scale
        d: 2,
        /// i8 quants
        qs: 32,
    }
}
block! {
    /// `block_q4_0`: `x[j] = d·(lo(qs[j]) − 8)`, `x[j+16] = d·(hi(qs[j]) − 8)`.
    BlockQ4_0 = Q4_0, 18 {
        /// f16 scale
        d: 2,
        /// nibbles, low = first half of the block
        qs: 16,
    }
}
block! {
    /// `block_q4_1`: x = d·q + m.
    BlockQ4_1 = Q4_1, 20 {
        /// f16 scale
        d: 2,
        /// f16 min
        m: 2,
        /// nibbles
        qs: 16,
    }
}
block! {
    /// `block_q5_0`: x = d·(q − 16), fifth bits in `qh` (little-endian u32, bit j = element j).
    BlockQ5_0 = Q5_0, 22 {
        /// f16 scale
        d: 2,
        /// fifth bits
        qh: 4,
        /// low nibbles
        qs: 16,
    }
}
block! {
    /// `block_q5_1`: x = d·q + m.
    BlockQ5_1 = Q5_1, 24 {
        /// f16 scale
        d: 2,
        /// f16 min
        m: 2,
        /// fifth bits
        qh: 4,
        /// low nibbles
        qs: 16,
    }
}
block! {
    /// `block_q2_K`: 16 groups of 16, 4-bit scale and min per group.
    BlockQ2K = Q2_K, 84 {
        /// scale (low nibble) and min (high nibble) per group
        scales: 16,
        /// 2-bit quants
        qs: 64,
        /// f16 super-block scale
        d: 2,
        /// f16 super-block min scale
        dmin: 2,
    }
}
block! {
    /// `block_q3_K`: 16 groups of 16, 6-bit signed scales, 3-bit quants (2 low bits + hmask).
    BlockQ3K = Q3_K, 110 {
        /// high bits
        hmask: 32,
        /// low 2 bits
        qs: 64,
        /// packed 6-bit scales
        scales: 12,
        /// f16 super-block scale
        d: 2,
    }
}
block! {
    /// `block_q4_K`: 8 groups of 32, 6-bit scale and min per group.
    BlockQ4K = Q4_K, 144 {
        /// f16 super-block scale
        d: 2,
        /// f16 super-block min scale
        dmin: 2,
        /// packed 6-bit scales and mins (`get_scale_min_k4`)
        scales: 12,
        /// nibbles
        qs: 128,
    }
}
block! {
    /// `block_q5_K`: Q4_K plus a fifth bit per element.
    BlockQ5K = Q5_K, 176 {
        /// f16 super-block scale
        d: 2,
        /// f16 super-block min scale
        dmin: 2,
        /// packed 6-bit scales and mins
        scales: 12,
        /// fifth bits
        qh: 32,
        /// low nibbles
        qs: 128,
    }
}
block! {
    /// `block_q6_K`: 16 groups of 16, 8-bit signed scales, 6-bit quants; `d` is last.
    BlockQ6K = Q6_K, 210 {
        /// low 4 bits
        ql: 128,
        /// high 2 bits
        qh: 64,
        /// i8 scales
        scales: 16,
        /// f16 super-block scale
        d: 2,
    }
}

/// `GGML_FP32_TO_FP16` as little-endian bytes (RNE; overflow → inf).
fn fp16(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_le_bytes()
}

/// `GGML_FP16_TO_FP32`.
fn fp32(b: [u8; 2]) -> f32 {
    f16_bits_to_f32(u16::from_le_bytes(b))
}

/// ggml's `nearest_int`: round half to even via the 1.5·2²³ bit trick.
#[inline]
fn nearest_int(fval: f32) -> i32 {
    let val = fval + 12_582_912.0;
    let i = val.to_bits() as i32;
    (i & 0x007F_FFFF) - 0x0040_0000
}

// ---------------------------------------------------------------- legacy 32-element blocks

/// C's `roundf` (half away from zero) for |x| < 2^23, without a libm call or a float→int
/// conversion (a saturating `as i32` does not vectorize): |x| + 2^23 rounds |x| to the nearest
/// integer, ties to even, and holds it in its low mantissa bits; |x| − that integer is exact,
/// so a tie that went down to even is seen and moved away from zero.
#[inline]
fn round_half_away(x: f32) -> i32 {
    let a = x.abs();
    let big = a + 8_388_608.0;
    let r = big - 8_388_608.0;
    let mut i = big.to_bits().wrapping_sub(0x4B00_0000) as i32;
    if a - r == 0.5 {
        i += 1;
    }
    if x < 0.0 {
        -i
    } else {
        i
    }
}

fn q8_0(x: &[f32]) -> BlockQ8_0 {
    // MAX(amax, fabsf(v)) over the block: for the finite values quantized here the order of
    // |v| is the order of its bit pattern with the sign cleared, and an integer max reduction
    // vectorizes (a float one cannot be reordered by the compiler).
    let amax = f32::from_bits(x.iter().fold(0u32, |m, v| m.max(v.to_bits() & 0x7FFF_FFFF)));
    let d = amax / 127.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    let mut y = BlockQ8_0::zeroed();
    y.d = fp16(d);
    for (q, &v) in y.qs.iter_mut().zip(x) {
        *q = round_half_away(v * id) as i8 as u8; // roundf: half away from zero
    }
    y
}

/// (amax, signed max) with the first maximal |x| winning.
fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    (amax, max)
}

fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

fn q4_0(x: &[f32]) -> BlockQ4_0 {
    let (_, max) = signed_absmax(x);
    let d = max / -8.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    let mut y = BlockQ4_0::zeroed();
    y.d = fp16(d);
    for j in 0..QK / 2 {
        let x0 = x[j] * id;
        let x1 = x[QK / 2 + j] * id;
        let xi0 = ((x0 + 8.5) as i8).min(15) as u8;
        let xi1 = ((x1 + 8.5) as i8).min(15) as u8;
        y.qs[j] = xi0 | (xi1 << 4);
    }
    y
}

fn q4_1(x: &[f32]) -> BlockQ4_1 {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    let mut y = BlockQ4_1::zeroed();
    y.d = fp16(d);
    y.m = fp16(min);
    for j in 0..QK / 2 {
        let x0 = (x[j] - min) * id;
        let x1 = (x[QK / 2 + j] - min) * id;
        let xi0 = ((x0 + 0.5) as i8).min(15) as u8;
        let xi1 = ((x1 + 0.5) as i8).min(15) as u8;
        y.qs[j] = xi0 | (xi1 << 4);
    }
    y
}

/// Pack 32 five-bit values into (qs, qh) as `quantize_row_q5_*` do.
fn pack_q5(l: impl Fn(usize) -> u8) -> ([u8; 16], [u8; 4]) {
    let mut qs = [0u8; 16];
    let mut qh = 0u32;
    for j in 0..QK / 2 {
        let (xi0, xi1) = (l(j), l(j + QK / 2));
        qs[j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
        qh |= (u32::from(xi0 & 0x10) >> 4) << j;
        qh |= (u32::from(xi1 & 0x10) >> 4) << (j + QK / 2);
    }
    (qs, qh.to_le_bytes())
}

fn q5_0(x: &[f32]) -> BlockQ5_0 {
    let (_, max) = signed_absmax(x);
    let d = max / -16.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    let mut y = BlockQ5_0::zeroed();
    y.d = fp16(d);
    (y.qs, y.qh) = pack_q5(|j| ((x[j] * id + 16.5) as i8).min(31) as u8);
    y
}

fn q5_1(x: &[f32]) -> BlockQ5_1 {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    let mut y = BlockQ5_1::zeroed();
    y.d = fp16(d);
    y.m = fp16(min);
    (y.qs, y.qh) = pack_q5(|j| ((x[j] - min) * id + 0.5) as u8);
    y
}

// ---------------------------------------------------------------- helpers of the K-quants

/// Weight of element `i` in `make_qx_quants`.
fn qx_weight(qw: Option<&[f32]>, rmse_type: i32, x: f32, i: usize) -> f32 {
    match qw {
        Some(w) => w[i],
        None => match rmse_type {
            1 => x * x,
            2 => 1.0,
            3 => x.abs(),
            _ => x.abs().sqrt(),
        },
    }
}

/// `make_qx_quants`: symmetric quants `L[i] ∈ [0, 2·nmax)` (offset by nmax) and a signed scale.
fn make_qx_quants(
    n: usize,
    nmax: i32,
    x: &[f32],
    l_out: &mut [i8],
    mut rmse_type: i32,
    qw: Option<&[f32]>,
) -> f32 {
    let (amax, max) = {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in &x[..n] {
            let ax = v.abs();
            if ax > amax {
                amax = ax;
                max = v;
            }
        }
        (amax, max)
    };
    if amax < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let mut iscale = -nmaxf / max;
    if rmse_type == 0 {
        for i in 0..n {
            let l = nearest_int(iscale * x[i]);
            l_out[i] = (nmax + l.clamp(-nmax, nmax - 1)) as i8;
        }
        return 1.0 / iscale;
    }
    let mut return_early = false;
    if rmse_type < 0 {
        rmse_type = -rmse_type;
        return_early = true;
    }
    let mut sumlx = 0f32;
    let mut suml2 = 0f32;
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        l_out[i] = (l + nmax) as i8;
        let w = qx_weight(qw, rmse_type, x[i], i);
        let lf = l as f32;
        sumlx += w * x[i] * lf;
        suml2 += w * lf * lf;
    }
    let mut scale = if suml2 == 0.0 { 0.0 } else { sumlx / suml2 };
    if return_early {
        return if suml2 > 0.0 {
            0.5 * (scale + 1.0 / iscale)
        } else {
            1.0 / iscale
        };
    }
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmaxf + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for i in 0..n {
            let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
            let w = qx_weight(qw, rmse_type, x[i], i);
            let lf = l as f32;
            sumlx += w * x[i] * lf;
            suml2 += w * lf * lf;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for i in 0..n {
                let l = nearest_int(iscale * x[i]);
                l_out[i] = (nmax + l.clamp(-nmax, nmax - 1)) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// `make_q3_quants` (Q3_K reference path).
fn make_q3_quants(n: usize, nmax: i32, x: &[f32], l_out: &mut [i8], do_rmse: bool) -> f32 {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in &x[..n] {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    if do_rmse {
        let mut sumlx = 0f32;
        let mut suml2 = 0f32;
        for i in 0..n {
            let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
            l_out[i] = l as i8;
            let w = x[i] * x[i];
            sumlx += w * x[i] * l as f32;
            suml2 += w * l as f32 * l as f32;
        }
        for _ in 0..5 {
            let mut n_changed = 0;
            for i in 0..n {
                let w = x[i] * x[i];
                let li = f32::from(l_out[i]);
                let mut slx = sumlx - w * x[i] * li;
                if slx > 0.0 {
                    let mut sl2 = suml2 - w * li * li;
                    let new_l = nearest_int(x[i] * sl2 / slx).clamp(-nmax, nmax - 1);
                    if new_l != i32::from(l_out[i]) {
                        let nl = new_l as f32;
                        slx += w * x[i] * nl;
                        sl2 += w * nl * nl;
                        if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                            l_out[i] = new_l as i8;
                            sumlx = slx;
                            suml2 = sl2;
                            n_changed += 1;
                        }
                    }
                }
            }
            if n_changed == 0 {
                break;
            }
        }
        for l in &mut l_out[..n] {
            *l = (i32::from(*l) + nmax) as i8;
        }
        return if suml2 > 0.0 { sumlx / suml2 } else { 0.0 };
    }
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        l_out[i] = (l + nmax) as i8;
    }
    1.0 / iscale
}

/// Parameters of the scale search in `make_qkx2_quants` / `make_qkx3_quants`.
#[derive(Clone, Copy)]
struct Search {
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
}

/// `make_qkx2_quants` (weights given) and `make_qkx3_quants` (weights optional, default x²;
/// `qkx3` selects its `max <= min` early exit, identical in effect). Returns the scale and
/// writes `the_min` (≥ 0, the amount subtracted).
#[allow(clippy::too_many_arguments)]
fn make_qkx_quants(
    n: usize,
    nmax: i32,
    x: &[f32],
    weights: Option<&[f32]>,
    l_out: &mut [u8],
    the_min: &mut f32,
    laux: &mut [u8],
    p: Search,
    qkx3: bool,
) -> f32 {
    let wt = |i: usize| weights.map_or(x[i] * x[i], |w| w[i]);
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = wt(0);
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = wt(i);
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if (qkx3 && max <= min) || (!qkx3 && max == min) {
        l_out[..n].fill(0);
        *the_min = -min;
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let mut iscale = nmaxf / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min));
        l_out[i] = l.clamp(0, nmax) as u8;
        let mut diff = scale * f32::from(l_out[i]) + min - x[i];
        diff = if p.use_mad { diff.abs() } else { diff * diff };
        best_error += wt(i) * diff;
    }
    if p.nstep < 1 {
        *the_min = -min;
        return scale;
    }
    for is in 0..=p.nstep {
        iscale = (p.rmin + p.rdelta * is as f32 + nmaxf) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = l as u8;
            let w = wt(i);
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..n {
                let mut diff = this_scale * f32::from(laux[i]) + this_min - x[i];
                diff = if p.use_mad { diff.abs() } else { diff * diff };
                cur_error += wt(i) * diff;
            }
            if cur_error < best_error {
                l_out[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    scale
}

/// `make_qp_quants`: non-negative values `x` (scales or mins) to `L ∈ [0, nmax]` with an
/// importance-weighted scale.
fn make_qp_quants(n: usize, nmax: i32, x: &[f32], l_out: &mut [u8], qw: &[f32]) -> f32 {
    let mut max = 0f32;
    for &v in &x[..n] {
        max = if max > v { max } else { v }; // MAX(max, x[i])
    }
    if max < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let mut iscale = nmaxf / max;
    for i in 0..n {
        l_out[i] = nearest_int(iscale * x[i]) as u8;
    }
    let scale = 1.0 / iscale;
    let mut best_mse = 0f32;
    for i in 0..n {
        let diff = x[i] - scale * f32::from(l_out[i]);
        best_mse += qw[i] * diff * diff;
    }
    for is in -4..=4 {
        if is == 0 {
            continue;
        }
        let iscale_is = (0.1 * is as f32 + nmaxf) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0f32;
        for i in 0..n {
            let l = nearest_int(iscale_is * x[i]).min(nmax);
            let diff = x[i] - scale_is * l as f32;
            mse += qw[i] * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    let mut sumlx = 0f32;
    let mut suml2 = 0f32;
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).min(nmax);
        l_out[i] = l as u8;
        let w = qw[i];
        let lf = l as f32;
        sumlx += w * x[i] * lf;
        suml2 += w * lf * lf;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for i in 0..n {
            let w = qw[i];
            let li = f32::from(l_out[i]);
            let mut slx = sumlx - w * x[i] * li;
            let mut sl2 = suml2 - w * li * li;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest_int(x[i] * sl2 / slx).min(nmax);
                if new_l != i32::from(l_out[i]) {
                    let nl = new_l as f32;
                    slx += w * x[i] * nl;
                    sl2 += w * nl * nl;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l_out[i] = new_l as u8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// `get_scale_min_k4`.
fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Pack eight 6-bit (scale, min) pairs the way Q4_K/Q5_K store them.
fn pack_scale_min_k4(ls: [u8; 8], lm: [u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..8 {
        let (ls, lm) = (ls[j], lm[j]);
        if j < 4 {
            s[j] = ls;
            s[j + 4] = lm;
        } else {
            s[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            s[j - 4] |= (ls >> 4) << 6;
            s[j] |= (lm >> 4) << 6;
        }
    }
    s
}

/// Requantize the 8×32 elements of a Q4_K/Q5_K super-block with the f16-rounded scales.
fn requantize_k4(x: &[f32], d: [u8; 2], dmin: [u8; 2], scales: &[u8; 12], nmax: i32, l: &mut [u8]) {
    for j in 0..QK_K / 32 {
        let (sc, m) = scale_min_k4(j, scales);
        let dd = fp32(d) * f32::from(sc);
        if dd == 0.0 {
            continue;
        }
        let dm = fp32(dmin) * f32::from(m);
        for ii in 0..32 {
            let v = nearest_int((x[32 * j + ii] + dm) / dd);
            l[32 * j + ii] = v.clamp(0, nmax) as u8;
        }
    }
}

/// Sum of squares in index order.
fn sum_sq(x: &[f32]) -> f32 {
    let mut s = 0f32;
    for &v in x {
        s += v * v;
    }
    s
}

fn sum(x: &[f32]) -> f32 {
    let mut s = 0f32;
    for &v in x {
        s += v;
    }
    s
}

// ---------------------------------------------------------------- Q2_K

fn pack_2bit(l: &[u8; QK_K]) -> [u8; 64] {
    let mut qs = [0u8; 64];
    for j in (0..QK_K).step_by(128) {
        for i in 0..32 {
            qs[j / 4 + i] =
                l[j + i] | (l[j + i + 32] << 2) | (l[j + i + 64] << 4) | (l[j + i + 96] << 6);
        }
    }
    qs
}

fn q2_k_ref(x: &[f32]) -> BlockQ2K {
    let mut y = BlockQ2K::zeroed();
    let mut l = [0u8; QK_K];
    let mut laux = [0u8; 16];
    let mut weights = [0f32; 16];
    let mut mins = [0f32; QK_K / 16];
    let mut scales = [0f32; QK_K / 16];
    let q4scale = 15f32;
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    let search = Search {
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
        use_mad: true,
    };
    for j in 0..QK_K / 16 {
        for (w, &v) in weights.iter_mut().zip(&x[16 * j..16 * j + 16]) {
            *w = v.abs();
        }
        scales[j] = make_qkx_quants(
            16,
            3,
            &x[16 * j..],
            Some(&weights),
            &mut l[16 * j..],
            &mut mins[j],
            &mut laux,
            search,
            false,
        );
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    if max_scale > 0.0 {
        let iscale = q4scale / max_scale;
        for j in 0..QK_K / 16 {
            y.scales[j] = nearest_int(iscale * scales[j]) as u8;
        }
        y.d = fp16(max_scale / q4scale);
    } else {
        y.scales = [0; 16];
        y.d = fp16(0.0);
    }
    if max_min > 0.0 {
        let iscale = q4scale / max_min;
        for j in 0..QK_K / 16 {
            let lm = nearest_int(iscale * mins[j]);
            y.scales[j] |= lm.wrapping_shl(4) as u8;
        }
        y.dmin = fp16(max_min / q4scale);
    } else {
        y.dmin = fp16(0.0);
    }
    requantize_q2(x, &y, &mut l);
    y.qs = pack_2bit(&l);
    y
}

fn requantize_q2(x: &[f32], y: &BlockQ2K, l: &mut [u8; QK_K]) {
    let (dm, mm) = (fp32(y.d), fp32(y.dmin));
    for j in 0..QK_K / 16 {
        let d = dm * f32::from(y.scales[j] & 0xF);
        if d == 0.0 {
            continue;
        }
        let m = mm * f32::from(y.scales[j] >> 4);
        for ii in 0..16 {
            let v = nearest_int((x[16 * j + ii] + m) / d);
            l[16 * j + ii] = v.clamp(0, 3) as u8;
        }
    }
}

fn q2_k_imatrix(x: &[f32], qw: &[f32]) -> BlockQ2K {
    let mut y = BlockQ2K::zeroed();
    let mut l = [0u8; QK_K];
    let mut laux = [0u8; 16];
    let mut mins = [0f32; QK_K / 16];
    let mut scales = [0f32; QK_K / 16];
    let mut sw = [0f32; QK_K / 16];
    let mut weight = [0f32; 16];
    let (mut ls, mut lm) = ([0u8; QK_K / 16], [0u8; QK_K / 16]);
    let sigma2 = sum_sq(&x[..QK_K]) / QK_K as f32;
    let search = Search {
        rmin: -0.9,
        rdelta: 0.05,
        nstep: 36,
        use_mad: false,
    };
    for j in 0..QK_K / 16 {
        for i in 0..16 {
            let v = x[16 * j + i];
            weight[i] = qw[16 * j + i] * (sigma2 + v * v).sqrt();
        }
        for &w in &weight {
            sw[j] += w;
        }
        scales[j] = make_qkx_quants(
            16,
            3,
            &x[16 * j..],
            Some(&weight),
            &mut l[16 * j..],
            &mut mins[j],
            &mut laux,
            search,
            true,
        );
    }
    let dm = make_qp_quants(QK_K / 16, 15, &scales, &mut ls, &sw);
    let mm = make_qp_quants(QK_K / 16, 15, &mins, &mut lm, &sw);
    y.d = fp16(dm);
    y.dmin = fp16(mm);
    for j in 0..QK_K / 16 {
        y.scales[j] = ls[j] | (lm[j] << 4);
    }
    requantize_q2(x, &y, &mut l);
    y.qs = pack_2bit(&l);
    y
}

// ---------------------------------------------------------------- Q3_K

/// Store 16 six-bit values (already offset to 0..63) in the Q3_K scale layout.
fn pack_q3_scales(lv: impl Fn(usize) -> i32) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..QK_K / 16 {
        let l = lv(j);
        if j < 8 {
            s[j] = (l & 0xF) as u8;
        } else {
            s[j - 8] |= ((l & 0xF) << 4) as u8;
        }
        let hi = l >> 4;
        s[j % 4 + 8] |= (hi << (2 * (j / 4))) as u8;
    }
    s
}

fn finish_q3(x: &[f32], y: &mut BlockQ3K, l: &mut [i8; QK_K]) {
    for j in 0..QK_K / 16 {
        let lo = if j < 8 {
            y.scales[j] & 0xF
        } else {
            y.scales[j - 8] >> 4
        };
        let sc = i32::from(lo | (((y.scales[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32;
        let d = fp32(y.d) * sc as f32;
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let v = nearest_int(x[16 * j + ii] / d).clamp(-4, 3);
            l[16 * j + ii] = (v + 4) as i8;
        }
    }
    y.hmask = [0; 32];
    let mut m = 0usize;
    let mut hm = 1u8;
    for v in l.iter_mut() {
        if *v > 3 {
            y.hmask[m] |= hm;
            *v -= 4;
        }
        m += 1;
        if m == QK_K / 8 {
            m = 0;
            hm <<= 1;
        }
    }
    let mut lu = [0u8; QK_K];
    for (d, &s) in lu.iter_mut().zip(l.iter()) {
        *d = s as u8;
    }
    y.qs = pack_2bit(&lu);
}

fn q3_k_ref(x: &[f32]) -> BlockQ3K {
    let mut y = BlockQ3K::zeroed();
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; QK_K / 16];
    let (mut max_scale, mut amax) = (0f32, 0f32);
    for j in 0..QK_K / 16 {
        scales[j] = make_q3_quants(16, 4, &x[16 * j..], &mut l[16 * j..], true);
        let scale = scales[j].abs();
        if scale > amax {
            amax = scale;
            max_scale = scales[j];
        }
    }
    if max_scale == 0.0 {
        y.d = fp16(0.0);
    } else {
        let iscale = -32.0 / max_scale;
        y.scales = pack_q3_scales(|j| {
            let l8 = nearest_int(iscale * scales[j]) as i8;
            i32::from(l8).clamp(-32, 31) + 32
        });
        y.d = fp16(1.0 / iscale);
    }
    finish_q3(x, &mut y, &mut l);
    y
}

fn q3_k_imatrix(x: &[f32], qw: &[f32]) -> BlockQ3K {
    let mut y = BlockQ3K::zeroed();
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; QK_K / 16];
    let mut weight = [0f32; 16];
    let mut sw = [0f32; QK_K / 16];
    let mut ls = [0i8; QK_K / 16];
    let sigma2 = 2.0 * sum_sq(&x[..QK_K]) / QK_K as f32;
    for j in 0..QK_K / 16 {
        for i in 0..16 {
            let v = x[16 * j + i];
            weight[i] = qw[16 * j + i] * (sigma2 + v * v).sqrt();
        }
        sw[j] = sum(&weight);
        scales[j] = make_qx_quants(16, 4, &x[16 * j..], &mut l[16 * j..], 1, Some(&weight));
    }
    let d_block = make_qx_quants(QK_K / 16, 32, &scales, &mut ls, 1, Some(&sw));
    y.scales = pack_q3_scales(|j| i32::from(ls[j]));
    y.d = fp16(d_block);
    finish_q3(x, &mut y, &mut l);
    y
}

// ---------------------------------------------------------------- Q4_K / Q5_K

/// The eight `make_qkx_quants` searches of a Q4_K/Q5_K super-block: per sub-block its scale,
/// its min, the sum of its weights (importance path only, else zero) and the provisional
/// quants. With `simd` the AVX2 lanes run them (same bytes; see `avx2`), else the scalar port.
fn k4_sub_blocks(
    x: &[f32],
    nmax: i32,
    imatrix: Option<&[f32]>,
    sigma2: f32,
    search: Search,
    simd: bool,
) -> ([f32; 8], [f32; 8], [f32; 8], [u8; QK_K]) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        return avx2::k4_search(x, nmax, imatrix, sigma2, search);
    }
    let _ = simd;
    let mut l = [0u8; QK_K];
    let mut laux = [0u8; 32];
    let mut weights = [0f32; 32];
    let mut mins = [0f32; QK_K / 32];
    let mut scales = [0f32; QK_K / 32];
    let mut sw = [0f32; QK_K / 32];
    for j in 0..QK_K / 32 {
        let xs = &x[32 * j..32 * j + 32];
        if let Some(qw) = imatrix {
            for i in 0..32 {
                weights[i] = qw[32 * j + i] * (sigma2 + xs[i] * xs[i]).sqrt();
            }
            sw[j] = sum(&weights);
        } else {
            let av_x = (sum_sq(xs) / 32.0).sqrt();
            for (w, &v) in weights.iter_mut().zip(xs) {
                *w = av_x + v.abs();
            }
        }
        scales[j] = make_qkx_quants(
            32,
            nmax,
            xs,
            Some(&weights),
            &mut l[32 * j..],
            &mut mins[j],
            &mut laux,
            search,
            imatrix.is_some(),
        );
    }
    (scales, mins, sw, l)
}

/// The per-sub-block search of Q4_K/Q5_K, reference (`imatrix == None`) or importance path.
/// Returns the packed scales, d, dmin and the provisional quants.
fn k4_scales(
    x: &[f32],
    nmax: i32,
    imatrix: Option<&[f32]>,
    simd: bool,
) -> ([u8; 12], [u8; 2], [u8; 2], [u8; QK_K]) {
    if let Some(qw) = imatrix {
        let sigma2 = 2.0 * sum_sq(&x[..QK_K]) / QK_K as f32;
        let search = Search {
            rmin: -0.9,
            rdelta: 0.05,
            nstep: 36,
            use_mad: false,
        };
        let (scales, mins, sw, l) = k4_sub_blocks(x, nmax, Some(qw), sigma2, search, simd);
        let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
        let d_block = make_qp_quants(QK_K / 32, 63, &scales, &mut ls, &sw);
        let m_block = make_qp_quants(QK_K / 32, 63, &mins, &mut lm, &sw);
        if nmax == 31 {
            // quantize_row_q5_K_impl clamps to 63; quantize_row_q4_K_impl does not
            for v in ls.iter_mut().chain(lm.iter_mut()) {
                *v = (*v).min(63);
            }
        }
        (pack_scale_min_k4(ls, lm), fp16(d_block), fp16(m_block), l)
    } else {
        let search = if nmax == 15 {
            Search {
                rmin: -1.0,
                rdelta: 0.1,
                nstep: 20,
                use_mad: false,
            }
        } else {
            Search {
                rmin: -0.5,
                rdelta: 0.1,
                nstep: 15,
                use_mad: false,
            }
        };
        let (scales, mins, _, l) = k4_sub_blocks(x, nmax, None, 0.0, search, simd);
        let (mut max_scale, mut max_min) = (0f32, 0f32);
        for j in 0..QK_K / 32 {
            if scales[j] > max_scale {
                max_scale = scales[j];
            }
            if mins[j] > max_min {
                max_min = mins[j];
            }
        }
        let inv_scale = if max_scale > 0.0 {
            63.0 / max_scale
        } else {
            0.0
        };
        let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
        let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
        for j in 0..QK_K / 32 {
            ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
            lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
        }
        (
            pack_scale_min_k4(ls, lm),
            fp16(max_scale / 63.0),
            fp16(max_min / 63.0),
            l,
        )
    }
}

fn q4_k(x: &[f32], imatrix: Option<&[f32]>, simd: bool) -> BlockQ4K {
    let (scales, d, dmin, mut l) = k4_scales(x, 15, imatrix, simd);
    requantize_k4(x, d, dmin, &scales, 15, &mut l);
    let mut y = BlockQ4K {
        d,
        dmin,
        scales,
        qs: [0; 128],
    };
    for (c, j) in (0..QK_K).step_by(64).enumerate() {
        for i in 0..32 {
            y.qs[32 * c + i] = l[j + i] | (l[j + i + 32] << 4);
        }
    }
    y
}

fn q5_k(x: &[f32], imatrix: Option<&[f32]>, simd: bool) -> BlockQ5K {
    let (scales, d, dmin, mut l) = k4_scales(x, 31, imatrix, simd);
    requantize_k4(x, d, dmin, &scales, 31, &mut l);
    let mut y = BlockQ5K {
        d,
        dmin,
        scales,
        qh: [0; 32],
        qs: [0; 128],
    };
    let (mut m1, mut m2) = (1u8, 2u8);
    for (c, n) in (0..QK_K).step_by(64).enumerate() {
        for j in 0..32 {
            let mut l1 = l[n + j];
            if l1 > 15 {
                l1 -= 16;
                y.qh[j] |= m1;
            }
            let mut l2 = l[n + j + 32];
            if l2 > 15 {
                l2 -= 16;
                y.qh[j] |= m2;
            }
            y.qs[32 * c + j] = l1 | (l2 << 4);
        }
        m1 <<= 2;
        m2 <<= 2;
    }
    y
}

// ---------------------------------------------------------------- Q6_K

/// Q6_K's sixteen `make_qx_quants(16, 32, …, 1, qw)` searches: the scales and the quants.
fn q6_sub_blocks(x: &[f32], imatrix: Option<&[f32]>, simd: bool) -> ([f32; 16], [i8; QK_K]) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        return avx2::q6_search(x, imatrix);
    }
    let _ = simd;
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; QK_K / 16];
    for ib in 0..QK_K / 16 {
        let qw = imatrix.map(|w| &w[16 * ib..16 * ib + 16]);
        scales[ib] = make_qx_quants(16, 32, &x[16 * ib..], &mut l[16 * ib..], 1, qw);
    }
    (scales, l)
}

fn q6_k(x: &[f32], imatrix: Option<&[f32]>, simd: bool) -> BlockQ6K {
    let (scales, mut l) = q6_sub_blocks(x, imatrix, simd);
    let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
    for &scale in &scales {
        let abs_scale = scale.abs();
        if abs_scale > max_abs_scale {
            max_abs_scale = abs_scale;
            max_scale = scale;
        }
    }
    let mut y = BlockQ6K::zeroed();
    if max_abs_scale < GROUP_MAX_EPS {
        y.d = fp16(0.0);
        return y;
    }
    let iscale = -128.0 / max_scale;
    y.d = fp16(1.0 / iscale);
    for ib in 0..QK_K / 16 {
        y.scales[ib] = nearest_int(iscale * scales[ib]).min(127) as i8 as u8;
    }
    for j in 0..QK_K / 16 {
        let d = fp32(y.d) * f32::from(y.scales[j] as i8);
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let v = nearest_int(x[16 * j + ii] / d).clamp(-32, 31);
            l[16 * j + ii] = (v + 32) as i8;
        }
    }
    let lu = |i: usize| l[i] as u8;
    for (h, j) in (0..QK_K).step_by(128).enumerate() {
        let (ql, qh) = (64 * h, 32 * h);
        for i in 0..32 {
            let q1 = lu(j + i) & 0xF;
            let q2 = lu(j + i + 32) & 0xF;
            let q3 = lu(j + i + 64) & 0xF;
            let q4 = lu(j + i + 96) & 0xF;
            y.ql[ql + i] = q1 | (q3 << 4);
            y.ql[ql + i + 32] = q2 | (q4 << 4);
            y.qh[qh + i] = (lu(j + i) >> 4)
                | ((lu(j + i + 32) >> 4) << 2)
                | ((lu(j + i + 64) >> 4) << 4)
                | ((lu(j + i + 96) >> 4) << 6);
        }
    }
    y
}

// ---------------------------------------------------------------- legacy types with imatrix

/// σ² of a whole row for the legacy `_impl` quantizers: Σx²/n.
fn row_sigma2(x: &[f32]) -> f32 {
    sum_sq(x) / x.len() as f32
}

fn legacy_weights(xb: &[f32], qw: &[f32], sigma2: f32) -> [f32; QK] {
    let mut w = [0f32; QK];
    for j in 0..QK {
        w[j] = qw[j] * (sigma2 + xb[j] * xb[j]).sqrt();
    }
    w
}

fn q4_0_imatrix(xb: &[f32], qw: &[f32], sigma2: f32) -> BlockQ4_0 {
    let weight = legacy_weights(xb, qw, sigma2);
    let mut l = [0i8; QK];
    let d = make_qx_quants(QK, 8, xb, &mut l, 1, Some(&weight));
    let mut y = BlockQ4_0::zeroed();
    y.d = fp16(d);
    for j in 0..16 {
        y.qs[j] = (l[j] as u8) | ((l[j + 16] as u8) << 4);
    }
    y
}

fn q5_0_imatrix(xb: &[f32], qw: &[f32], sigma2: f32) -> BlockQ5_0 {
    let weight = legacy_weights(xb, qw, sigma2);
    let mut l = [0i8; QK];
    let d = make_qx_quants(QK, 16, xb, &mut l, 1, Some(&weight));
    let mut y = BlockQ5_0::zeroed();
    y.d = fp16(d);
    (y.qs, y.qh) = pack_q5(|j| l[j] as u8);
    y
}

fn qkx3_legacy(xb: &[f32], qw: &[f32], sigma2: f32, nmax: i32) -> (f32, f32, [u8; QK]) {
    let weight = legacy_weights(xb, qw, sigma2);
    let (mut l, mut laux) = ([0u8; QK], [0u8; QK]);
    let mut min = 0f32;
    let search = Search {
        rmin: -0.9,
        rdelta: 0.05,
        nstep: 36,
        use_mad: false,
    };
    let d = make_qkx_quants(
        QK,
        nmax,
        xb,
        Some(&weight),
        &mut l,
        &mut min,
        &mut laux,
        search,
        true,
    );
    (d, min, l)
}

fn q4_1_imatrix(xb: &[f32], qw: &[f32], sigma2: f32) -> BlockQ4_1 {
    let (d, min, l) = qkx3_legacy(xb, qw, sigma2, 15);
    let mut y = BlockQ4_1::zeroed();
    y.d = fp16(d);
    y.m = fp16(-min);
    for j in 0..16 {
        y.qs[j] = l[j] | (l[j + 16] << 4);
    }
    y
}

fn q5_1_imatrix(xb: &[f32], qw: &[f32], sigma2: f32) -> BlockQ5_1 {
    let (d, min, l) = qkx3_legacy(xb, qw, sigma2, 31);
    let mut y = BlockQ5_1::zeroed();
    y.d = fp16(d);
    y.m = fp16(-min);
    (y.qs, y.qh) = pack_q5(|j| l[j]);
    y
}

// ---------------------------------------------------------------- row driver and public API

/// The ggml types this module can quantize to.
pub const SUPPORTED: &[DType] = &[
    DType::Q8_0,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q2_K,
    DType::Q3_K,
    DType::Q4_K,
    DType::Q5_K,
    DType::Q6_K,
];

/// Whether [`quantize_rows`] supports `dtype`.
pub fn supports(dtype: DType) -> bool {
    SUPPORTED.contains(&dtype)
}

fn blocks<B: GgmlBlock>(x: &[f32], bs: usize, out: &mut [u8], f: impl Fn(usize, &[f32]) -> B) {
    for (i, (xb, ob)) in x
        .chunks_exact(bs)
        .zip(out.chunks_exact_mut(B::BYTES))
        .enumerate()
    {
        f(i, xb).write_to(ob);
    }
}

/// Quantize one row (finite values, whole blocks, `out` sized exactly; checked by the caller).
fn quantize_row(dtype: DType, x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    let sigma2 = || row_sigma2(x);
    let qw = |i: usize, n: usize| imatrix.map(|w| &w[i * n..(i + 1) * n]);
    match (dtype, imatrix) {
        (DType::Q8_0, _) => blocks(x, QK, out, |_, b| q8_0(b)),
        (DType::Q4_0, None) => blocks(x, QK, out, |_, b| q4_0(b)),
        (DType::Q4_0, Some(w)) => {
            let s2 = sigma2();
            blocks(x, QK, out, |i, b| q4_0_imatrix(b, &w[i * QK..], s2));
        }
        (DType::Q4_1, None) => blocks(x, QK, out, |_, b| q4_1(b)),
        (DType::Q4_1, Some(w)) => {
            let s2 = sigma2();
            blocks(x, QK, out, |i, b| q4_1_imatrix(b, &w[i * QK..], s2));
        }
        (DType::Q5_0, None) => blocks(x, QK, out, |_, b| q5_0(b)),
        (DType::Q5_0, Some(w)) => {
            let s2 = sigma2();
            blocks(x, QK, out, |i, b| q5_0_imatrix(b, &w[i * QK..], s2));
        }
        (DType::Q5_1, None) => blocks(x, QK, out, |_, b| q5_1(b)),
        (DType::Q5_1, Some(w)) => {
            let s2 = sigma2();
            blocks(x, QK, out, |i, b| q5_1_imatrix(b, &w[i * QK..], s2));
        }
        (DType::Q2_K, None) => blocks(x, QK_K, out, |_, b| q2_k_ref(b)),
        (DType::Q2_K, Some(w)) => blocks(x, QK_K, out, |i, b| q2_k_imatrix(b, &w[i * QK_K..])),
        (DType::Q3_K, None) => blocks(x, QK_K, out, |_, b| q3_k_ref(b)),
        (DType::Q3_K, Some(w)) => blocks(x, QK_K, out, |i, b| q3_k_imatrix(b, &w[i * QK_K..])),
        (DType::Q4_K, _) => blocks(x, QK_K, out, |i, b| q4_k(b, qw(i, QK_K), simd())),
        (DType::Q5_K, _) => blocks(x, QK_K, out, |i, b| q5_k(b, qw(i, QK_K), simd())),
        (DType::Q6_K, _) => blocks(x, QK_K, out, |i, b| q6_k(b, qw(i, QK_K), simd())),
        _ => unreachable!("checked by quantize_rows"),
    }
}

/// Quantize a row-major matrix of `src.len() / row_len` rows into ggml blocks of `dtype`,
/// written to `out` in the GGUF tensor layout (rows back to back, each `row_len / block`
/// blocks). `imatrix`, if given, has one importance weight per column (`row_len` values, the
/// same for every row, as llama.cpp's `--imatrix` data) and selects the `_impl` quantizers.
///
/// Rows run in parallel; the output does not depend on the thread count.
///
/// Errors: [`Error::UnsupportedEncode`]; [`Error::PartialBlock`] if `row_len` is not a multiple
/// of the block size; [`Error::BufferLength`] for a `src` that is not whole rows, an `out` of
/// the wrong size, or an imatrix of the wrong length; [`Error::NonFinite`] for the first NaN/inf
/// in row-major order; [`Error::BadImportance`] for a NaN/inf/negative imatrix value;
/// [`Error::InvalidParameter`] for `row_len == 0`.
pub fn quantize_rows(
    dtype: DType,
    src: &[f32],
    row_len: usize,
    imatrix: Option<&[f32]>,
    out: &mut [u8],
) -> Result<()> {
    if !supports(dtype) {
        return Err(Error::UnsupportedEncode(dtype));
    }
    if row_len == 0 {
        return Err(Error::InvalidParameter {
            name: "row_len",
            detail: "must be positive".into(),
        });
    }
    let row_bytes =
        usize::try_from(dtype.bytes_for(row_len as u64)?).map_err(|_| Error::SizeOverflow {
            dtype,
            elements: row_len as u64,
        })?;
    if src.len() % row_len != 0 {
        return Err(Error::BufferLength {
            what: "src (a whole number of rows)",
            expected: (src.len() / row_len * row_len) as u64,
            got: src.len() as u64,
        });
    }
    let rows = src.len() / row_len;
    let want = rows.checked_mul(row_bytes).ok_or(Error::SizeOverflow {
        dtype,
        elements: src.len() as u64,
    })?;
    if out.len() != want {
        return Err(Error::BufferLength {
            what: "out (bytes)",
            expected: want as u64,
            got: out.len() as u64,
        });
    }
    if let Some(w) = imatrix {
        if w.len() != row_len {
            return Err(Error::BufferLength {
                what: "imatrix",
                expected: row_len as u64,
                got: w.len() as u64,
            });
        }
        if let Some(c) = w.iter().position(|v| !(v.is_finite() && *v >= 0.0)) {
            return Err(Error::BadImportance { col: c as u64 });
        }
    }
    if row_bytes == 0 {
        return Ok(());
    }
    // Each row is checked for NaN/±inf (on its bit patterns, which vectorizes) right before it
    // is quantized; the first bad row in row order is reported whatever the thread count.
    let bad: Vec<Option<(usize, usize)>> = src
        .par_chunks(row_len)
        .zip(out.par_chunks_mut(row_bytes))
        .enumerate()
        .map(|(r, (x, o))| {
            if let Some(c) = first_non_finite(x) {
                return Some((r, c));
            }
            quantize_row(dtype, x, imatrix, o);
            None
        })
        .collect();
    if let Some((r, c)) = bad.into_iter().flatten().next() {
        return Err(Error::NonFinite {
            row: r as u64,
            col: c as u64,
        });
    }
    Ok(())
}

/// The column of the first NaN/±inf in `row`, if any. The common all-finite case is one
/// branch-free pass over the bit patterns (NaN and ±inf are the patterns from 0x7F80_0000 up
/// once the sign is cleared), which vectorizes.
fn first_non_finite(row: &[f32]) -> Option<usize> {
    let m = row
        .iter()
        .fold(0u32, |m, v| m.max(v.to_bits() & 0x7FFF_FFFF));
    if m < 0x7F80_0000 {
        return None;
    }
    row.iter().position(|v| !v.is_finite())
}

/// Quantize one row (no threads: callers parallelize over rows themselves, e.g. while decoding
/// each row from its source). Same rules and errors as [`quantize_rows`] with one row.
pub fn quantize_one_row(
    dtype: DType,
    row: &[f32],
    imatrix: Option<&[f32]>,
    out: &mut [u8],
) -> Result<()> {
    if !supports(dtype) {
        return Err(Error::UnsupportedEncode(dtype));
    }
    let want = dtype.bytes_for(row.len() as u64)?;
    if out.len() as u64 != want || row.is_empty() {
        return Err(Error::BufferLength {
            what: "out (bytes)",
            expected: want,
            got: out.len() as u64,
        });
    }
    if let Some(w) = imatrix {
        if w.len() != row.len() {
            return Err(Error::BufferLength {
                what: "imatrix",
                expected: row.len() as u64,
                got: w.len() as u64,
            });
        }
        if let Some(c) = w.iter().position(|v| !(v.is_finite() && *v >= 0.0)) {
            return Err(Error::BadImportance { col: c as u64 });
        }
    }
    if let Some(c) = first_non_finite(row) {
        return Err(Error::NonFinite {
            row: 0,
            col: c as u64,
        });
    }
    quantize_row(dtype, row, imatrix, out);
    Ok(())
}

/// [`quantize_rows`] into a new buffer.
pub fn quantize_to_vec(
    dtype: DType,
    src: &[f32],
    row_len: usize,
    imatrix: Option<&[f32]>,
) -> Result<Vec<u8>> {
    if !supports(dtype) {
        return Err(Error::UnsupportedEncode(dtype));
    }
    let n =
        usize::try_from(dtype.bytes_for(src.len() as u64)?).map_err(|_| Error::SizeOverflow {
            dtype,
            elements: src.len() as u64,
        })?;
    let mut out = vec![0u8; n];
    quantize_rows(dtype, src, row_len, imatrix, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    /// `round_half_away` equals `f32::round` (C's roundf) on every f32 in (−2^23, 2^23) whose
    /// low 8 bits are 0 or 0xFF, and on all halves.
    #[test]
    fn round_half_away_is_roundf() {
        for hi in 0u32..(1 << 24) {
            for lo in [0u32, 0xFF] {
                let x = f32::from_bits((hi << 8) | lo);
                if x.is_nan() || x.abs() >= 8_388_608.0 {
                    continue;
                }
                assert_eq!(round_half_away(x), x.round() as i32, "{x:e}");
            }
        }
        for k in -1000..1000 {
            let x = k as f32 + 0.5;
            assert_eq!(round_half_away(x), x.round() as i32, "{x}");
        }
    }

    use super::*;
    use crate::decode_to_f32;

    /// ggml tests/test-quantize-fns.cpp `generate_data`: 0.1 + 2·cos(i + offset).
    fn synthetic(offset: f32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (0.1 + 2.0 * f64::from((i as f32 + offset).cos())) as f32)
            .collect()
    }

    /// test-quantize-fns.cpp `array_rmse` (sic: sqrt of the sum, divided by n).
    fn array_rmse(a: &[f32], b: &[f32]) -> f32 {
        let mut sum = 0f64;
        for (x, y) in a.iter().zip(b) {
            let d = f64::from(*x) - f64::from(*y);
            sum += d * d;
        }
        (sum.sqrt() as f32) / a.len() as f32
    }

    fn round_trip(dtype: DType, x: &[f32], row: usize, imatrix: Option<&[f32]>) -> Vec<f32> {
        let q = quantize_to_vec(dtype, x, row, imatrix).unwrap();
        let mut back = vec![0f32; x.len()];
        decode_to_f32(dtype, &q, &mut back).unwrap();
        back
    }

    /// Error budgets of ggml's test-quantize-fns (MAX_QUANTIZATION_TOTAL_ERROR*), on its own
    /// synthetic data, with and without an importance matrix.
    #[test]
    fn total_error_within_ggml_budget() {
        let x = synthetic(0.0, 32 * 128);
        let imatrix: Vec<f32> = (0..1024).map(|i| 0.5 + (i % 7) as f32 * 0.25).collect();
        for &dtype in SUPPORTED {
            let budget = match dtype {
                DType::Q2_K => 0.0075,
                DType::Q3_K => 0.0040,
                _ => 0.002,
            };
            for im in [None, Some(&imatrix[..])] {
                let back = round_trip(dtype, &x, 1024, im);
                let err = array_rmse(&x, &back);
                assert!(err < budget, "{dtype} imatrix={}: {err}", im.is_some());
            }
        }
    }

    /// Per-element bounds that follow from the legacy formulas: |x − x̂| ≤ step/2 plus the f16
    /// rounding of d (relative 2⁻¹¹ of the largest code), except that Q4_0/Q5_0 clip the
    /// opposite extreme to +7/+15 (one full step).
    #[test]
    fn legacy_elementwise_bounds() {
        let x: Vec<f32> = (0..32 * 64)
            .map(|i| ((i as f32 * 0.7).sin() * (1.0 + (i / 32) as f32 / 16.0)).powi(3))
            .collect();
        for dtype in [
            DType::Q8_0,
            DType::Q4_0,
            DType::Q4_1,
            DType::Q5_0,
            DType::Q5_1,
        ] {
            let back = round_trip(dtype, &x, 256, None);
            for (blk, (xs, ys)) in x.chunks(32).zip(back.chunks(32)).enumerate() {
                let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
                let (mn, mx) = xs
                    .iter()
                    .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
                let bound = match dtype {
                    DType::Q8_0 => amax / 127.0 * 0.5 + amax * 2f32.powi(-11),
                    DType::Q4_0 => amax / 8.0 + amax * 2f32.powi(-10),
                    DType::Q5_0 => amax / 16.0 + amax * 2f32.powi(-10),
                    DType::Q4_1 => (mx - mn) / 30.0 + (mx - mn + amax) * 2f32.powi(-10),
                    _ => (mx - mn) / 62.0 + (mx - mn + amax) * 2f32.powi(-10),
                } * 1.0001;
                for (a, b) in xs.iter().zip(ys) {
                    assert!(
                        (a - b).abs() <= bound,
                        "{dtype} block {blk}: {a} vs {b} (bound {bound})"
                    );
                }
            }
        }
    }

    #[test]
    fn known_vectors() {
        // Q8_0 of a ramp: amax 31 → d = 31/127, q = round(x·127/31)
        let x: Vec<f32> = (0..32)
            .map(|i| i as f32 - 16.0 + if i >= 16 { 15.0 / 16.0 } else { 0.0 })
            .collect();
        let q = quantize_to_vec(DType::Q8_0, &x, 32, None).unwrap();
        let d = 16.0f32 / 127.0;
        assert_eq!(q[..2], half::f16::from_f32(d).to_le_bytes());
        assert_eq!(q[2] as i8, -127);
        // Q4_0: the extreme (−8) maps to code 0, its negation would be +8 → clamped to 15
        let mut x = [0f32; 32];
        x[0] = -8.0;
        x[1] = 8.0;
        x[2] = 1.0;
        let q = quantize_to_vec(DType::Q4_0, &x, 32, None).unwrap();
        assert_eq!(q[..2], half::f16::from_f32(1.0).to_le_bytes());
        assert_eq!(q[2] & 0xF, 0);
        assert_eq!(q[3] & 0xF, 15);
        assert_eq!(q[4] & 0xF, 9);
        // ties: Q8_0 rounds half away from zero (2.5 → 3), nearest_int to even (2.5 → 2)
        let mut x = [0f32; 32];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = -2.5;
        let q = quantize_to_vec(DType::Q8_0, &x, 32, None).unwrap();
        assert_eq!((q[3] as i8, q[4] as i8), (3, -3));
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(3.5), 4);
        assert_eq!(nearest_int(-2.5), -2);
        assert_eq!(nearest_int(-0.4), 0);
        // all-zero super-blocks
        for &dtype in SUPPORTED {
            let z = vec![0f32; 256];
            let back = round_trip(dtype, &z, 256, None);
            assert!(back.iter().all(|&v| v == 0.0), "{dtype}");
        }
        let q6 = quantize_to_vec(DType::Q6_K, &[0f32; 256], 256, None).unwrap();
        assert!(q6.iter().all(|&b| b == 0));
    }

    /// FNV-1a of the output for the synthetic input: a golden fingerprint produced with
    /// llama.cpp's C reference (ggml-quants.c built with -O2 -ffp-contract=off, see
    /// tests/interop/test_codecs.py), so the Rust port is pinned even without Python.
    #[test]
    fn golden_fingerprints_match_c_reference() {
        fn fnv1a(b: &[u8]) -> u64 {
            let mut h = 0xcbf2_9ce4_8422_2325u64;
            for &x in b {
                h ^= u64::from(x);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
            h
        }
        // xorshift64 → [-1, 1) with a different scale per row: plain arithmetic only, so the
        // input is identical on every platform (no libm).
        let scales = [0.01f32, 0.25, 3.0, 0.0005];
        let mut s = 0x2545_F491_4F6C_DD1Du64;
        let x: Vec<f32> = (0..4 * 512)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let v = ((s >> 40) as i32 - (1 << 23)) as f32 / (1 << 23) as f32;
                v * scales[i / 512]
            })
            .collect();
        let imatrix: Vec<f32> = (0..512)
            .map(|i| 0.1 + ((i * 37) % 101) as f32 / 50.0)
            .collect();
        let mut got = Vec::new();
        for &dtype in SUPPORTED {
            for im in [None, Some(&imatrix[..])] {
                let q = quantize_to_vec(dtype, &x, 512, im).unwrap();
                got.push((dtype.name(), im.is_some(), fnv1a(&q)));
            }
        }
        let want = GOLDEN;
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g, w, "got {got:#x?}");
        }
    }

    /// Produced by the C oracle (see `golden_fingerprints_match_c_reference`).
    const GOLDEN: &[(&str, bool, u64)] = &[
        ("Q8_0", false, 0xdb60_187d_a7d5_a621),
        ("Q8_0", true, 0xdb60_187d_a7d5_a621),
        ("Q4_0", false, 0x5b25_e151_8981_85ea),
        ("Q4_0", true, 0x1c57_6059_58ae_61cc),
        ("Q4_1", false, 0x3ece_e211_7996_84bd),
        ("Q4_1", true, 0x82b9_1b46_c8bc_d5bc),
        ("Q5_0", false, 0x766a_3773_5ddf_9d54),
        ("Q5_0", true, 0x6ead_44f8_510a_7695),
        ("Q5_1", false, 0x4260_d9e1_30c3_ce9a),
        ("Q5_1", true, 0x92f1_2ec3_7a4d_cfdb),
        ("Q2_K", false, 0x3971_8bd3_a422_1390),
        ("Q2_K", true, 0x0edb_56ac_1549_4763),
        ("Q3_K", false, 0x3651_496d_48e0_ce13),
        ("Q3_K", true, 0xb8d6_0276_4450_f3d6),
        ("Q4_K", false, 0xec13_82c9_f653_ca98),
        ("Q4_K", true, 0xfebd_7374_95e5_edfd),
        ("Q5_K", false, 0x8b23_fe23_67f9_74df),
        ("Q5_K", true, 0xe3bd_c157_f75e_fc59),
        ("Q6_K", false, 0x7e75_42e4_f38c_ceab),
        ("Q6_K", true, 0x4bbe_7f87_e1c8_67ab),
    ];

    #[test]
    fn errors() {
        let x = vec![0.5f32; 512];
        let mut out = vec![0u8; 2 * 144];
        assert_eq!(
            quantize_rows(DType::IQ2_XXS, &x, 256, None, &mut out),
            Err(Error::UnsupportedEncode(DType::IQ2_XXS))
        );
        assert!(matches!(
            quantize_rows(DType::Q4_K, &x, 128, None, &mut out),
            Err(Error::PartialBlock { .. })
        ));
        assert!(matches!(
            quantize_rows(DType::Q4_K, &x, 256, None, &mut out[..100]),
            Err(Error::BufferLength {
                what: "out (bytes)",
                ..
            })
        ));
        assert!(matches!(
            quantize_rows(DType::Q4_K, &x[..300], 256, None, &mut out),
            Err(Error::BufferLength { .. })
        ));
        assert!(matches!(
            quantize_rows(DType::Q4_K, &x, 256, Some(&[1.0; 255]), &mut out),
            Err(Error::BufferLength {
                what: "imatrix",
                ..
            })
        ));
        let mut w = vec![1.0f32; 256];
        w[7] = -1.0;
        assert_eq!(
            quantize_rows(DType::Q4_K, &x, 256, Some(&w), &mut out),
            Err(Error::BadImportance { col: 7 })
        );
        let mut y = x.clone();
        y[300] = f32::INFINITY;
        y[400] = f32::NAN;
        assert_eq!(
            quantize_rows(DType::Q4_K, &y, 256, None, &mut out),
            Err(Error::NonFinite { row: 1, col: 44 })
        );
        assert!(matches!(
            quantize_rows(DType::Q8_0, &x, 0, None, &mut out),
            Err(Error::InvalidParameter { .. })
        ));
        assert_eq!(quantize_rows(DType::Q8_0, &[], 32, None, &mut []), Ok(()));
    }

    #[test]
    fn block_sizes_match_dtype_table() {
        fn check<B: GgmlBlock>() {
            assert_eq!(B::DTYPE.block_bytes() as usize, B::BYTES, "{}", B::DTYPE);
            assert_eq!(std::mem::size_of::<B>(), B::BYTES);
        }
        check::<BlockQ8_0>();
        check::<BlockQ4_0>();
        check::<BlockQ4_1>();
        check::<BlockQ5_0>();
        check::<BlockQ5_1>();
        check::<BlockQ2K>();
        check::<BlockQ3K>();
        check::<BlockQ4K>();
        check::<BlockQ5K>();
        check::<BlockQ6K>();
    }

    #[test]
    fn thread_count_independent() {
        let x = synthetic(0.3, 256 * 4 * 33);
        let imatrix: Vec<f32> = (0..1024).map(|i| 1.0 + (i % 5) as f32).collect();
        for &dtype in SUPPORTED {
            let run = |n: usize| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .build()
                    .unwrap()
                    .install(|| quantize_to_vec(dtype, &x, 1024, Some(&imatrix)).unwrap())
            };
            assert_eq!(run(1), run(4), "{dtype}");
        }
    }

    /// The AVX2 lanes of the K-quant searches against the scalar port, byte for byte, on
    /// random and adversarial super-blocks whose sub-blocks (the SIMD lanes) each take their
    /// own kind, so lanes leave early, tie and overflow independently: zeros, ±0, constants, a
    /// single outlier, ±huge (x² overflows), subnormals, exact halves, one-signed ramps; with
    /// no importance weights and with random, zero, partly zero, huge and subnormal ones.
    #[test]
    fn simd_k_quants_match_scalar() {
        fn fill(out: &mut [f32], mut f: impl FnMut(usize) -> f32) {
            for (i, v) in out.iter_mut().enumerate() {
                *v = f(i);
            }
        }
        if !simd() {
            // no AVX2 here: quantize_rows runs the scalar port only, nothing to compare
            return;
        }
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let mut unit = move || ((next() >> 40) as i32 - (1 << 23)) as f32 / (1 << 23) as f32;
        let mut kinds = 0u64;
        let mut sub_block = |kind: u64, out: &mut [f32], unit: &mut dyn FnMut() -> f32| {
            let n = out.len();
            let scale = [1e-3f32, 0.02, 1.0, 300.0][(kind >> 8) as usize % 4];
            match kind % 14 {
                0 => out.fill(0.0),
                1 => out
                    .iter_mut()
                    .enumerate()
                    .for_each(|(i, v)| *v = if i % 2 == 0 { 0.0 } else { -0.0 }),
                2 => out.fill(scale),
                3 => out.fill(-scale),
                4 => {
                    out.fill(0.0);
                    out[(kind as usize >> 4) % n] = scale * 1000.0;
                }
                5 => {
                    fill(out, |_| unit() * 1e-3);
                    out[(kind as usize >> 4) % n] = -scale * 1000.0;
                }
                6 => out
                    .iter_mut()
                    .for_each(|v| *v = if unit() > 0.0 { 3.0e38 } else { -3.0e38 }),
                7 => fill(out, |_| unit() * 2.0e19),
                8 => fill(out, |_| unit() * 1e-39),
                9 => out
                    .iter_mut()
                    .for_each(|v| *v = (unit() * 16.0).round() / 2.0),
                10 => out
                    .iter_mut()
                    .enumerate()
                    .for_each(|(i, v)| *v = scale * i as f32),
                11 => out
                    .iter_mut()
                    .enumerate()
                    .for_each(|(i, v)| *v = -scale * (n - i) as f32),
                12 => out
                    .iter_mut()
                    .for_each(|v| *v = unit().abs() * scale + scale),
                _ => fill(out, |_| unit() * scale),
            }
            kinds |= 1 << (kind % 14);
        };
        let mut blocks = 0;
        for round in 0..600u64 {
            let mut x = [0f32; QK_K];
            // half the super-blocks in 32-element pieces (Q4_K/Q5_K lanes), half in 16 (Q6_K)
            let piece = if round % 2 == 0 { 32 } else { 16 };
            for c in x.chunks_mut(piece) {
                let k = if round < 14 {
                    round
                } else {
                    next() % 1000 + (next() % 4) * 256
                };
                sub_block(k, c, &mut unit);
            }
            let mut w = [0f32; QK_K];
            let imatrix = match round % 6 {
                0 => None,
                1 => {
                    fill(&mut w, |_| unit().abs() * 4.0);
                    Some(w)
                }
                2 => Some(w),
                3 => {
                    w.iter_mut()
                        .enumerate()
                        .for_each(|(i, v)| *v = if i % 3 == 0 { 0.0 } else { 1.0 + unit() });
                    Some(w)
                }
                4 => {
                    fill(&mut w, |_| unit().abs() * 1e30);
                    Some(w)
                }
                _ => {
                    fill(&mut w, |_| unit().abs() * 1e-40);
                    Some(w)
                }
            };
            let im = imatrix.as_ref().map(|w| &w[..]);
            let (mut a, mut b) = ([0u8; 256], [0u8; 256]);
            let mut check = |dtype: DType, f: &dyn Fn(bool, &mut [u8])| {
                let n = dtype.bytes_for(QK_K as u64).unwrap() as usize;
                f(false, &mut a[..n]);
                f(true, &mut b[..n]);
                assert_eq!(
                    a[..n],
                    b[..n],
                    "{dtype} round {round} imatrix {}: {x:?}",
                    round % 6
                );
            };
            check(DType::Q4_K, &|simd, o| q4_k(&x, im, simd).write_to(o));
            check(DType::Q5_K, &|simd, o| q5_k(&x, im, simd).write_to(o));
            check(DType::Q6_K, &|simd, o| q6_k(&x, im, simd).write_to(o));
            blocks += 1;
        }
        assert_eq!(kinds, (1 << 14) - 1, "every sub-block kind was drawn");
        assert_eq!(blocks, 600);
    }
}
