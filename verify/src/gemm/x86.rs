//! The x86-64 microkernels: AVX2+FMA (6 × 16) and AVX-512F (12 × 32). Each keeps its whole
//! `MR × NR` tile of `C` in registers and, per `p`, loads one row of the packed B panel and
//! broadcasts the `MR` values of the packed A panel (the BLIS microkernel shape; cf. BLIS
//! `kernels/haswell/3/bli_gemm_haswell_asm_d6x8.c` and `kernels/skx/3/bli_sgemm_skx_asm_32x12_l2.c`).
//! One fma per element and `p`, in order: see the parent module for why that makes every
//! kernel give the same bits.

#![allow(unsafe_code)]

use std::arch::x86_64::{
    __m256, __m512, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_set1_ps, _mm256_setzero_ps,
    _mm256_storeu_ps, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_setzero_ps,
    _mm512_storeu_ps,
};

/// AVX2+FMA kernel, `MR = 6`, `NR = 16`.
///
/// # Safety
/// The CPU has AVX2 and FMA; `a` holds `kc·6` and `b` `kc·16` floats; `c` addresses a 6 × 16
/// tile with row stride `rsc`.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn kernel_avx2(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    rsc: usize,
    load: bool,
) {
    const MR: usize = 6;
    // SAFETY: the caller's contract above.
    unsafe {
        let mut acc: [[__m256; 2]; MR] = [[_mm256_setzero_ps(); 2]; MR];
        if load {
            for (i, r) in acc.iter_mut().enumerate() {
                r[0] = _mm256_loadu_ps(c.add(i * rsc));
                r[1] = _mm256_loadu_ps(c.add(i * rsc + 8));
            }
        }
        let (mut a, mut b) = (a, b);
        for _ in 0..kc {
            let b0 = _mm256_loadu_ps(b);
            let b1 = _mm256_loadu_ps(b.add(8));
            for (i, r) in acc.iter_mut().enumerate() {
                let ai = _mm256_set1_ps(*a.add(i));
                r[0] = _mm256_fmadd_ps(ai, b0, r[0]);
                r[1] = _mm256_fmadd_ps(ai, b1, r[1]);
            }
            a = a.add(MR);
            b = b.add(16);
        }
        for (i, r) in acc.iter().enumerate() {
            _mm256_storeu_ps(c.add(i * rsc), r[0]);
            _mm256_storeu_ps(c.add(i * rsc + 8), r[1]);
        }
    }
}

/// AVX-512F kernel, `MR = 12`, `NR = 32`.
///
/// # Safety
/// The CPU has AVX-512F; `a` holds `kc·12` and `b` `kc·32` floats; `c` addresses a 12 × 32
/// tile with row stride `rsc`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn kernel_avx512(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    rsc: usize,
    load: bool,
) {
    const MR: usize = 12;
    // SAFETY: the caller's contract above.
    unsafe {
        let mut acc: [[__m512; 2]; MR] = [[_mm512_setzero_ps(); 2]; MR];
        if load {
            for (i, r) in acc.iter_mut().enumerate() {
                r[0] = _mm512_loadu_ps(c.add(i * rsc));
                r[1] = _mm512_loadu_ps(c.add(i * rsc + 16));
            }
        }
        let (mut a, mut b) = (a, b);
        for _ in 0..kc {
            let b0 = _mm512_loadu_ps(b);
            let b1 = _mm512_loadu_ps(b.add(16));
            for (i, r) in acc.iter_mut().enumerate() {
                let ai = _mm512_set1_ps(*a.add(i));
                r[0] = _mm512_fmadd_ps(ai, b0, r[0]);
                r[1] = _mm512_fmadd_ps(ai, b1, r[1]);
            }
            a = a.add(MR);
            b = b.add(32);
        }
        for (i, r) in acc.iter().enumerate() {
            _mm512_storeu_ps(c.add(i * rsc), r[0]);
            _mm512_storeu_ps(c.add(i * rsc + 16), r[1]);
        }
    }
}
