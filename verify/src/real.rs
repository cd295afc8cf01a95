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
    /// `self · a + b` with one rounding.
    #[must_use]
    fn mul_add(self, a: Self, b: Self) -> Self;
    /// The nearest `f16` value (RNE), as this type.
    #[must_use]
    fn round_f16(self) -> Self;
    /// `C[m, n] = A[m, k] · B[k, n]` with element strides (α = 1, β = 0, `C` column stride 1),
    /// on the calling thread: [`crate::gemm::sgemm_serial`] for `f32`, `matrixmultiply`'s
    /// `dgemm` for `f64`.
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
    /// `y[m, n] = x[m, k] · w[n, k]ᵀ` in parallel: [`crate::gemm::matmul_t`] for `f32`,
    /// [`crate::matmul::blocked`] for `f64`.
    fn matmul_t(x: &[Self], m: usize, k: usize, w: &[Self], n: usize, y: &mut [Self]);
    /// `x` as `f32`s when this type is `f32` (the emulations of llama.cpp's `f32` arithmetic).
    fn as_f32(x: &[Self]) -> Option<&[f32]>;
    /// `x` as `f32`s when this type is `f32`.
    fn as_f32_mut(x: &mut [Self]) -> Option<&mut [f32]>;
}

/// The members both impls share: constants, `exp` and `sqrt`.
macro_rules! shared {
    ($t:ident) => {
        const ZERO: Self = 0.0;
        const ONE: Self = 1.0;
        const NEG_INFINITY: Self = $t::NEG_INFINITY;

        fn exp(self) -> Self {
            $t::exp(self)
        }
        fn sqrt(self) -> Self {
            $t::sqrt(self)
        }
        fn mul_add(self, a: Self, b: Self) -> Self {
            $t::mul_add(self, a, b)
        }
    };
}

impl Real for f32 {
    shared!(f32);

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
        let u = |s: isize| usize::try_from(s).expect("gemm strides are non-negative");
        let isa = crate::gemm::Isa::detect();
        // SAFETY: forwarded from the caller's contract.
        unsafe {
            crate::gemm::sgemm_serial(
                isa,
                m,
                k,
                n,
                a,
                u(rsa),
                u(csa),
                b,
                u(rsb),
                u(csb),
                c,
                u(rsc),
            );
        }
    }
    fn matmul_t(x: &[Self], m: usize, k: usize, w: &[Self], n: usize, y: &mut [Self]) {
        crate::gemm::matmul_t(x, m, k, w, n, y);
    }
    fn as_f32(x: &[Self]) -> Option<&[f32]> {
        Some(x)
    }
    fn as_f32_mut(x: &mut [Self]) -> Option<&mut [f32]> {
        Some(x)
    }

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
    shared!(f64);

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
        unsafe { matrixmultiply::dgemm(m, k, n, 1.0, a, rsa, csa, b, rsb, csb, 0.0, c, rsc, 1) }
    }
    fn matmul_t(x: &[Self], m: usize, k: usize, w: &[Self], n: usize, y: &mut [Self]) {
        crate::matmul::blocked(x, m, k, w, n, y);
    }
    fn as_f32(_: &[Self]) -> Option<&[f32]> {
        None
    }
    fn as_f32_mut(_: &mut [Self]) -> Option<&mut [f32]> {
        None
    }

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
