//! cuBLASLt FP8 baseline for `qforge bench gemm`: the same row-wise-scaled GEMM as
//! `fp8_gemm.cu`, through cuBLASLt's "outer vector" scaling (cuBLAS 12.9+,
//! `CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F`: `D[i, j] = scaleA[i] · scaleB[j] · Σ_l A[i, l]·B[l, j]`).
//!
//! cudarc's safe `Matmul<T>` uses one element type for A, B and C, so this goes through
//! `cudarc::cublaslt::{result, sys}`. cuBLASLt is column-major and Hopper/Ada FP8 needs the
//! "TN" form, so for row-major `X[M, K]`, `W[N, K]` and `Y[M, N]` the problem is solved
//! transposed: `A = W` declared `K × N` (ld K) with `TRANSA = T`, `B = X` declared `K × M` (ld K),
//! `D` column-major `N × M` (ld N), which is row-major `Y[M, N]`; `A_SCALE = sw[N]`,
//! `B_SCALE = sx[M]`. A plan (descriptors + heuristic algorithm) is built once per shape.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublaslt::{result, sys};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};

use super::{cu, CudaGemm, DeviceFp8};
use crate::{Backend, Error, Result};

/// cuBLASLt workspace (cudarc's default for CC ≥ 9).
const WORKSPACE_BYTES: usize = 32 << 20;

fn lt<T>(op: &'static str, r: std::result::Result<T, result::CublasError>) -> Result<T> {
    r.map_err(|e| Error::Cuda {
        op,
        detail: format!("{e:?}"),
    })
}

/// A cuBLASLt handle with its workspace, on the stream of a [`CudaGemm`].
#[derive(Debug)]
pub struct CublasLtFp8 {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    stream: Arc<CudaStream>,
}

/// Descriptors and the algorithm for one `(m, n, k)` problem.
#[derive(Debug)]
pub struct Plan {
    m: usize,
    n: usize,
    k: usize,
    desc: sys::cublasLtMatmulDesc_t,
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    d: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: each descriptor was created by this plan and is destroyed once.
        unsafe {
            let _ = result::destroy_matrix_layout(self.a);
            let _ = result::destroy_matrix_layout(self.b);
            let _ = result::destroy_matrix_layout(self.d);
            let _ = result::destroy_matmul_desc(self.desc);
        }
    }
}

impl Drop for CublasLtFp8 {
    fn drop(&mut self) {
        // SAFETY: the handle was created in `new` and is destroyed once.
        unsafe {
            let _ = result::destroy_handle(self.handle);
        }
    }
}

// SAFETY: a cuBLASLt handle may be used from any thread as long as calls are not concurrent;
// every use goes through `&self` methods that enqueue on one stream.
unsafe impl Send for CublasLtFp8 {}
// SAFETY: descriptors are plain host objects, only read after construction.
unsafe impl Send for Plan {}

fn set_desc<T>(
    desc: sys::cublasLtMatmulDesc_t,
    attr: sys::cublasLtMatmulDescAttributes_t,
    v: &T,
) -> Result<()> {
    // SAFETY: `v` points at a value of the type cuBLASLt documents for `attr`, of size_of::<T>().
    lt("cublasLtMatmulDescSetAttribute", unsafe {
        result::set_matmul_desc_attribute(
            desc,
            attr,
            std::ptr::from_ref(v).cast::<c_void>(),
            std::mem::size_of::<T>(),
        )
    })
}

impl CublasLtFp8 {
    /// Create a handle on `gemm`'s stream. [`Error::NoDevice`] when libcublasLt cannot be loaded.
    pub fn new(gemm: &CudaGemm) -> Result<Self> {
        // SAFETY: only tries to dlopen the library.
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::NoDevice {
                reason: "cuBLASLt (libcublasLt.so.13) cannot be loaded".into(),
            });
        }
        let stream = gemm.stream().clone();
        cu("bind context", stream.context().bind_to_thread())?;
        let handle = lt("cublasLtCreate", result::create_handle())?;
        let workspace = cu("alloc workspace", stream.alloc_zeros::<u8>(WORKSPACE_BYTES))?;
        Ok(CublasLtFp8 {
            handle,
            workspace,
            stream,
        })
    }

    /// Build the plan for `Y[m, n] (bf16) = rowwise-scaled X[m, k] · W[n, k]ᵀ`. `fast_accum`
    /// sets `CUBLASLT_MATMUL_DESC_FAST_ACCUM` (fbgemm's default is on). Errors with
    /// [`Error::Unsupported`] when cuBLASLt has no algorithm (e.g. outer-vector scaling missing
    /// before cuBLAS 12.9, or K not a multiple of 16).
    pub fn plan(&self, m: usize, n: usize, k: usize, fast_accum: bool) -> Result<Plan> {
        use sys::cublasLtMatmulDescAttributes_t as A;
        let desc = lt(
            "cublasLtMatmulDescCreate",
            result::create_matmul_desc(
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cudaDataType::CUDA_R_32F,
            ),
        )?;
        let layout = |dt, rows: usize, cols: usize, ld: usize| {
            lt(
                "cublasLtMatrixLayoutCreate",
                result::create_matrix_layout(dt, rows as u64, cols as u64, ld as i64),
            )
        };
        let a = layout(sys::cudaDataType::CUDA_R_8F_E4M3, k, n, k)?;
        let b = layout(sys::cudaDataType::CUDA_R_8F_E4M3, k, m, k)?;
        let d = layout(sys::cudaDataType::CUDA_R_16BF, n, m, n)?;
        let mut plan = Plan {
            m,
            n,
            k,
            desc,
            a,
            b,
            d,
            // SAFETY: a plain C struct of integers; overwritten by the heuristic below.
            algo: unsafe { std::mem::zeroed() },
        };
        let trans_t: i32 = 1; // CUBLAS_OP_T
        set_desc(desc, A::CUBLASLT_MATMUL_DESC_TRANSA, &trans_t)?;
        let outer =
            sys::cublasLtMatmulMatrixScale_t::CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F as i32;
        set_desc(desc, A::CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &outer)?;
        set_desc(desc, A::CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &outer)?;
        let fast: i8 = i8::from(fast_accum);
        set_desc(desc, A::CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast)?;
        // The heuristic depends on the scale modes only; the scale pointers are set per run.
        let pref = lt(
            "cublasLtMatmulPreferenceCreate",
            result::create_matmul_pref(),
        )?;
        let ws = WORKSPACE_BYTES as u64;
        // SAFETY: the attribute is a u64 byte count.
        let r = lt("cublasLtMatmulPreferenceSetAttribute", unsafe {
            result::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                std::ptr::from_ref(&ws).cast::<c_void>(),
                std::mem::size_of::<u64>(),
            )
        })
        .and_then(|()| {
            // SAFETY: all descriptors are live; C and D share the layout `d`.
            let h = unsafe { result::get_matmul_algo_heuristic(self.handle, desc, a, b, d, d, pref) };
            h.map_err(|e| Error::Unsupported {
                backend: Backend::Cuda,
                detail: format!("cuBLASLt has no FP8 outer-vector-scaled algorithm for m={m} n={n} k={k}: {e:?}"),
            })
        });
        // SAFETY: created above, destroyed once.
        unsafe {
            let _ = result::destroy_matmul_pref(pref);
        }
        plan.algo = r?.algo;
        Ok(plan)
    }

    /// Enqueue `y = rowwise-scaled x · wᵀ` (BF16) with `plan` on the stream.
    pub fn run(
        &self,
        plan: &Plan,
        x: &DeviceFp8,
        w: &DeviceFp8,
        y: &mut CudaSlice<u16>,
    ) -> Result<()> {
        if (x.rows, w.rows, x.k) != (plan.m, plan.n, plan.k)
            || w.k != plan.k
            || y.len() != plan.m * plan.n
        {
            return Err(Error::ShapeMismatch {
                what: "operands vs cuBLASLt plan (m·n·k)",
                left: (x.rows * w.rows * x.k) as u64,
                right: (plan.m * plan.n * plan.k) as u64,
            });
        }
        use sys::cublasLtMatmulDescAttributes_t as A;
        let s = &self.stream;
        let (wq, _g1) = w.q.device_ptr(s);
        let (xq, _g2) = x.q.device_ptr(s);
        let (ws_ptr, _g3) = w.scale.device_ptr(s);
        let (xs_ptr, _g4) = x.scale.device_ptr(s);
        let (yp, _g5) = y.device_ptr_mut(s);
        let (wk, _g6) = self.workspace.device_ptr(s);
        set_desc(plan.desc, A::CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &ws_ptr)?;
        set_desc(plan.desc, A::CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &xs_ptr)?;
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: the descriptors belong to `plan`; every device pointer stays valid while its
        // guard lives (until the end of this function, after the call is enqueued); alpha/beta
        // are host f32 (the default pointer mode) matching the f32 scale type; the workspace
        // holds WORKSPACE_BYTES.
        lt("cublasLtMatmul", unsafe {
            result::matmul(
                self.handle,
                plan.desc,
                std::ptr::from_ref(&alpha).cast(),
                std::ptr::from_ref(&beta).cast(),
                wq as *const c_void,
                plan.a,
                xq as *const c_void,
                plan.b,
                yp as *const c_void,
                plan.d,
                yp as *mut c_void,
                plan.d,
                std::ptr::from_ref(&plan.algo),
                wk as *mut c_void,
                WORKSPACE_BYTES,
                s.cu_stream() as sys::cudaStream_t,
            )
        })
    }
}
