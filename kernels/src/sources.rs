//! The CUDA C++ sources of the kernels (`kernels/cuda/*.cu`), embedded in the binary and compiled
//! at run time by NVRTC for the device's architecture. They are header-free (`unsigned char` for
//! E4M3, `unsigned short` for BF16, inline PTX for conversions and tensor-core instructions), so
//! NVRTC needs no CUDA include path.
//!
//! `scripts/check-kernels.sh` compiles every file with nvcc/ptxas for sm_89 and sm_90a (register
//! and spill table in BENCHMARKS.md) and `tests/nvrtc_compile.rs` compiles every entry of
//! [`SOURCES`] with NVRTC; both run in CI without a GPU.

/// One `.cu` file and the `extern "C"` kernels it defines.
#[derive(Debug, Clone, Copy)]
pub struct KernelSource {
    /// File name under `kernels/cuda/`.
    pub name: &'static str,
    /// CUDA C++ source.
    pub code: &'static str,
    /// Entry points (`extern "C" __global__`).
    pub kernels: &'static [&'static str],
}

/// Per-token FP8 activation quantization.
pub const QUANT_FP8: KernelSource = KernelSource {
    name: "quant_fp8.cu",
    code: include_str!("../cuda/quant_fp8.cu"),
    kernels: &["quantize_fp8_rows"],
};

/// FP8 × FP8 → BF16/f32 row-wise-scaled GEMM (mma.sync m16n8k32 e4m3).
pub const FP8_GEMM: KernelSource = KernelSource {
    name: "fp8_gemm.cu",
    code: include_str!("../cuda/fp8_gemm.cu"),
    kernels: &[
        "fp8_gemm_bm128_bn128",
        "fp8_gemm_bm64_bn128",
        "fp8_gemm_bm16_bn64",
    ],
};

/// W4A16 GEMM for M ≤ 16.
pub const W4A16_GEMM: KernelSource = KernelSource {
    name: "w4a16_gemm.cu",
    code: include_str!("../cuda/w4a16_gemm.cu"),
    kernels: &[
        "w4a16_gemm_m1",
        "w4a16_gemm_m2",
        "w4a16_gemm_m4",
        "w4a16_gemm_m8",
        "w4a16_gemm_m16",
    ],
};

/// Every kernel source; a test checks that this covers every file in `kernels/cuda/`.
pub const SOURCES: &[KernelSource] = &[QUANT_FP8, FP8_GEMM, W4A16_GEMM];
