//! The float types the forward pass runs in: `f32` (evaluation, calibration) and `f64`
//! (`qforge calibrate --precision f64`: activations free of accumulation-order rounding).

use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub};

/// A float the forward pass can run in. The `f32` forward is the reference evaluation; the
/// same generic code in `f64` gives the model's activations to within `f64` rounding.
pub trait Real:
    Copy
    + Send
    + Sync
    + PartialOrd
    + std::fmt::Debug
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + MulAssign
    + 'static
{
    /// `0`.
    const ZERO: Self;
    /// `1`.
    const ONE: Self;
    /// `−∞`.
    const NEG_INFINITY: Self;

    /// `v` rounded to nearest.
    fn of_f64(v: f64) -> Self;
    /// The value as `f64` (exact).
    fn to_f64(self) -> f64;
    /// `eˣ`.
    #[must_use]
    fn exp(self) -> Self;
    /// `√x`.
    #[must_use]
    fn sqrt(self) -> Self;
    /// The nearest `f16` value (RNE), as this type.
    #[must_use]
    fn round_f16(self) -> Self;
    /// `C[m, n] = A[m, k] · B[k, n]` with element strides (`matrixmultiply`'s gemm, α = 1,
    /// β = 0, `C` column stride 1).
    ///
    /// # Safety
    /// The pointers and strides must address valid, non-overlapping (for `C`) memory for the
    /// given shapes.
    #[allow(unsafe_code, clippy::too_many_arguments)]
    unsafe fn gemm(
        m: usize,
        k: usize,
        n: usize,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        c: *mut Self,
        rsc: isize,
    );
}

/// The members both impls share: constants, `exp`, `sqrt` and the gemm.
macro_rules! shared {
    ($t:ident, $gemm:path) => {
        const ZERO: Self = 0.0;
        const ONE: Self = 1.0;
        const NEG_INFINITY: Self = $t::NEG_INFINITY;

        fn exp(self) -> Self {
            $t::exp(self)
        }
        fn sqrt(self) -> Self {
            $t::sqrt(self)
        }
        #[allow(unsafe_code)]
        unsafe fn gemm(
            m: usize,
            k: usize,
            n: usize,
            a: *const Self,
            rsa: isize,
            csa: isize,
            b: *const Self,
            rsb: isize,
            csb: isize,
            c: *mut Self,
            rsc: isize,
        ) {
            // SAFETY: forwarded from the caller's contract.
            unsafe { $gemm(m, k, n, 1.0, a, rsa, csa, b, rsb, csb, 0.0, c, rsc, 1) }
        }
    };
}

impl Real for f32 {
    shared!(f32, matrixmultiply::sgemm);

    #[allow(clippy::cast_possible_truncation)] // rounding to f32 is the point
    fn of_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn round_f16(self) -> Self {
        qforge_codecs::float::f16_bits_to_f32(qforge_codecs::float::f32_to_f16_bits(self))
    }
}

impl Real for f64 {
    shared!(f64, matrixmultiply::dgemm);

    fn of_f64(v: f64) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn round_f16(self) -> Self {
        f64::from(half::f16::from_f64(self))
    }
}
