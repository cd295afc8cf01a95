//! The CUDA backend: [`CudaGemm`] implements [`Gemm`] with the kernels of `kernels/cuda/*.cu`,
//! compiled by NVRTC when the backend is created; [`cublaslt::CublasLtFp8`] is the cuBLASLt FP8
//! baseline used by `qforge bench gemm`.
//!
//! Every library (driver, NVRTC, cuBLASLt) is loaded at run time by cudarc. cudarc panics when a
//! library it needs cannot be loaded, so [`probe`] checks their presence first and every
//! constructor here returns [`Error::NoDevice`] instead of reaching cudarc on a machine without
//! CUDA.
//!
//! Two levels of API:
//! - the [`Gemm`] trait (host slices in and out; weights uploaded once with
//!   [`Gemm::upload_fp8`]) for `verify`;
//! - device-resident buffers ([`DeviceFp8`], [`DeviceInt4`], [`DeviceOut`]) and `*_into`
//!   launchers that never copy, for benchmarks and layer streaming.

#![allow(unsafe_code)] // kernel launches and raw cuBLASLt calls; each site has a SAFETY comment

pub mod cublaslt;

use std::sync::Arc;

use cudarc::driver::sys::{CUevent_flags, CUfunction_attribute};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DriverError, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileError, CompileOptions, Ptx};

use crate::sources::{KernelSource, FP8_GEMM, QUANT_FP8, W4A16_GEMM};
use crate::{
    check_fp8_gemm, check_len, check_w4a16_gemm, Backend, Error, Fp8Rows, Fp8Storage, Fp8Weight,
    Gemm, Int4Rows, Int4Storage, Int4Weight, OutputMut, Result,
};

/// Largest M the W4A16 kernels take (decode batch).
pub const W4A16_MAX_M: usize = 16;

/// Map a driver error to [`Error::Cuda`].
pub(crate) fn cu<T>(op: &'static str, r: std::result::Result<T, DriverError>) -> Result<T> {
    r.map_err(|e| Error::Cuda {
        op,
        detail: e.to_string(),
    })
}

/// Whether NVRTC (`libnvrtc.so.13` or another candidate name cudarc knows) can be loaded.
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the library; never panics.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Check that a CUDA device can be used: the driver library loads, NVRTC loads, and the driver
/// reports at least one device. The error says which step failed. No cudarc call that could
/// panic is made before the library checks.
pub fn probe() -> Result<()> {
    // SAFETY: only tries to dlopen the driver library; never panics.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(Error::NoDevice {
            reason: "the CUDA driver library (libcuda.so.1) cannot be loaded".into(),
        });
    }
    if !nvrtc_present() {
        return Err(Error::NoDevice {
            reason: "NVRTC (libnvrtc.so.13) cannot be loaded; put the CUDA 13 lib directory on \
                     LD_LIBRARY_PATH (e.g. eval \"$(scripts/cuda-env.sh)\")"
                .into(),
        });
    }
    match CudaContext::device_count() {
        Ok(n) if n > 0 => Ok(()),
        Ok(_) => Err(Error::NoDevice {
            reason: "the driver reports no device".into(),
        }),
        Err(e) => Err(Error::NoDevice {
            reason: format!("cuInit/cuDeviceGetCount failed: {e}"),
        }),
    }
}

/// The NVRTC target for a compute capability: PTX for a virtual architecture, which the driver
/// JIT-compiles for the exact device. sm_89 is the first with FP8 `mma.sync`/`cvt`; Hopper gets
/// its own target, anything newer runs the sm_89 PTX.
pub fn nvrtc_arch(major: i32, minor: i32) -> Result<&'static str> {
    match (major, minor) {
        (m, n) if (m, n) < (8, 9) => Err(Error::UnsupportedArch { major, minor }),
        (9, 0) => Ok("compute_90"),
        _ => Ok("compute_89"),
    }
}

/// Compile one kernel source with NVRTC for `arch` (`compute_89`, `compute_90`, `sm_89`,
/// `sm_90a`, …). A compile error carries the full NVRTC log ([`Error::Compile`]).
pub fn compile(src: &KernelSource, arch: &'static str) -> Result<Ptx> {
    let opts = CompileOptions {
        arch: Some(arch),
        options: vec!["-std=c++17".into()],
        name: Some(src.name.into()),
        ..CompileOptions::default()
    };
    compile_ptx_with_opts(src.code, opts).map_err(|e| match e {
        CompileError::CompileError { log, .. } => Error::Compile {
            source_name: src.name,
            arch: arch.into(),
            log: log.to_string_lossy().into_owned(),
        },
        other => Error::Cuda {
            op: "NVRTC",
            detail: other.to_string(),
        },
    })
}

/// FP8 rows (weights `[n, k]` or activations `[m, k]`) resident on the device.
#[derive(Debug)]
pub struct DeviceFp8 {
    /// Rows.
    pub rows: usize,
    /// Row length.
    pub k: usize,
    /// E4M3 codes, `rows·k` bytes.
    pub q: CudaSlice<u8>,
    /// Dequantization scales, `rows`.
    pub scale: CudaSlice<f32>,
}

/// Compressed-tensors INT4 weights resident on the device.
#[derive(Debug)]
pub struct DeviceInt4 {
    /// Output features.
    pub n: usize,
    /// Input features.
    pub k: usize,
    /// Group size.
    pub group: usize,
    /// `[n, k/8]` words.
    pub packed: CudaSlice<i32>,
    /// `[n, k/group]` BF16 scale bits.
    pub scales: CudaSlice<u16>,
}

/// A device output buffer `[m, n]`.
#[derive(Debug)]
pub enum DeviceOut {
    /// BF16 bits.
    Bf16(CudaSlice<u16>),
    /// f32.
    F32(CudaSlice<f32>),
}

impl DeviceOut {
    fn len(&self) -> usize {
        match self {
            DeviceOut::Bf16(s) => s.len(),
            DeviceOut::F32(s) => s.len(),
        }
    }
    fn is_f32(&self) -> i32 {
        i32::from(matches!(self, DeviceOut::F32(_)))
    }
}

/// One FP8 GEMM tile configuration (must match the `extern "C"` kernels of fp8_gemm.cu).
#[derive(Debug, Clone, Copy)]
struct TileConfig {
    name: &'static str,
    bm: usize,
    bn: usize,
    threads: u32,
}

/// fp8_gemm.cu: BK = 64 bytes per stage, smem rows padded to 80 bytes, 4 stages.
const FP8_SMEM_LD: usize = 80;
const FP8_STAGES: usize = 4;

impl TileConfig {
    fn smem_bytes(self) -> u32 {
        (FP8_STAGES * (self.bm + self.bn) * FP8_SMEM_LD) as u32
    }
}

const TILE_LARGE: TileConfig = TileConfig {
    name: "fp8_gemm_bm128_bn128",
    bm: 128,
    bn: 128,
    threads: 256,
};
const TILE_MID: TileConfig = TileConfig {
    name: "fp8_gemm_bm64_bn128",
    bm: 64,
    bn: 128,
    threads: 256,
};
const TILE_SMALL: TileConfig = TileConfig {
    name: "fp8_gemm_bm16_bn64",
    bm: 16,
    bn: 64,
    threads: 128,
};

/// Tile configuration for `m` rows of activations.
fn tile_for(m: usize) -> TileConfig {
    if m <= 16 {
        TILE_SMALL
    } else if m <= 128 {
        TILE_MID
    } else {
        TILE_LARGE
    }
}

/// W4A16 kernels for `MT` ∈ {1, 2, 4, 8, 16} (index i ↔ MT = 2^i); 4 warps × 4 rows per CTA.
const W4_ROWS_PER_CTA: usize = 16;
const W4_THREADS: u32 = 128;

fn to_i32(what: &'static str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::Unsupported {
        backend: Backend::Cuda,
        detail: format!("{what} = {v} does not fit a 32-bit kernel argument"),
    })
}

/// The CUDA backend on one device: a context, a stream, and the compiled kernels.
#[derive(Debug)]
pub struct CudaGemm {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    name: String,
    cc: (i32, i32),
    arch: &'static str,
    quant: CudaFunction,
    gemm_large: CudaFunction,
    gemm_mid: CudaFunction,
    gemm_small: CudaFunction,
    w4: Vec<CudaFunction>,
}

impl CudaGemm {
    /// Open device `ordinal`, compile every kernel with NVRTC for its architecture and load them.
    /// Errors: [`Error::NoDevice`] (checked with [`probe`] first, so this never panics on a
    /// machine without CUDA), [`Error::UnsupportedArch`] below sm_89, [`Error::Compile`].
    pub fn new(ordinal: usize) -> Result<Self> {
        probe()?;
        let ctx = cu("cuCtx create", CudaContext::new(ordinal))?;
        let cc = cu("compute capability", ctx.compute_capability())?;
        let arch = nvrtc_arch(cc.0, cc.1)?;
        let name = cu("device name", ctx.name())?;
        let stream = ctx.default_stream();

        let load = |src: &KernelSource| -> Result<Arc<cudarc::driver::CudaModule>> {
            let ptx = compile(src, arch)?;
            cu("module load (PTX JIT)", ctx.load_module(ptx))
        };
        let mq = load(&QUANT_FP8)?;
        let mg = load(&FP8_GEMM)?;
        let mw = load(&W4A16_GEMM)?;
        let quant = cu(
            "load quantize_fp8_rows",
            mq.load_function("quantize_fp8_rows"),
        )?;
        let gemm = |t: TileConfig| -> Result<CudaFunction> {
            let f = cu("load fp8_gemm", mg.load_function(t.name))?;
            // Above 48 KiB, dynamic shared memory must be opted into per function.
            cu(
                "set max dynamic shared memory",
                f.set_attribute(
                    CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    t.smem_bytes() as i32,
                ),
            )?;
            Ok(f)
        };
        let w4 = W4A16_GEMM
            .kernels
            .iter()
            .map(|k| cu("load w4a16_gemm", mw.load_function(k)))
            .collect::<Result<Vec<_>>>()?;
        Ok(CudaGemm {
            quant,
            gemm_large: gemm(TILE_LARGE)?,
            gemm_mid: gemm(TILE_MID)?,
            gemm_small: gemm(TILE_SMALL)?,
            w4,
            ctx,
            stream,
            name,
            cc,
            arch,
        })
    }

    /// The stream every launch goes to.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The device context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// Compute capability `(major, minor)`.
    pub fn compute_capability(&self) -> (i32, i32) {
        self.cc
    }

    /// The NVRTC target the kernels were compiled for.
    pub fn arch(&self) -> &'static str {
        self.arch
    }

    /// Copy FP8 rows to the device.
    pub fn upload_rows(&self, r: &Fp8Rows) -> Result<DeviceFp8> {
        Ok(DeviceFp8 {
            rows: r.rows(),
            k: r.k(),
            q: cu("upload fp8 codes", self.stream.clone_htod(r.codes()))?,
            scale: cu("upload fp8 scales", self.stream.clone_htod(r.scales()))?,
        })
    }

    /// Copy INT4 weights to the device.
    pub fn upload_int4_rows(&self, r: &Int4Rows) -> Result<DeviceInt4> {
        Ok(DeviceInt4 {
            n: r.n(),
            k: r.k(),
            group: r.group(),
            packed: cu("upload int4 words", self.stream.clone_htod(r.packed()))?,
            scales: cu("upload int4 scales", self.stream.clone_htod(r.scales()))?,
        })
    }

    /// Allocate zeroed FP8 rows `[rows, k]` on the device (e.g. for quantized activations).
    pub fn alloc_fp8(&self, rows: usize, k: usize) -> Result<DeviceFp8> {
        let len = rows.checked_mul(k).ok_or_else(|| Error::InvalidParameter {
            name: "rows x k",
            detail: "overflows usize".into(),
        })?;
        Ok(DeviceFp8 {
            rows,
            k,
            q: cu("alloc", self.stream.alloc_zeros::<u8>(len))?,
            scale: cu("alloc", self.stream.alloc_zeros::<f32>(rows))?,
        })
    }

    /// Allocate a zeroed output `[m, n]`.
    pub fn alloc_out(&self, m: usize, n: usize, f32_out: bool) -> Result<DeviceOut> {
        let len = m.checked_mul(n).ok_or_else(|| Error::InvalidParameter {
            name: "m x n",
            detail: "overflows usize".into(),
        })?;
        Ok(if f32_out {
            DeviceOut::F32(cu("alloc", self.stream.alloc_zeros::<f32>(len))?)
        } else {
            DeviceOut::Bf16(cu("alloc", self.stream.alloc_zeros::<u16>(len))?)
        })
    }

    /// Per-token FP8 quantization of device BF16 activations `x` (`[m, k]`) into `out`
    /// (same rows and k). Asynchronous on [`Self::stream`].
    pub fn quantize_into(
        &self,
        x: &CudaSlice<u16>,
        m: usize,
        k: usize,
        upper_bound: Option<f32>,
        out: &mut DeviceFp8,
    ) -> Result<()> {
        if let Some(ub) = upper_bound {
            if !(ub.is_finite() && ub > 0.0) {
                return Err(Error::InvalidParameter {
                    name: "upper_bound",
                    detail: format!("{ub} is not a finite positive number"),
                });
            }
        }
        check_len("activations [m, k]", m.saturating_mul(k), x.len())?;
        if out.rows != m || out.k != k {
            return Err(Error::ShapeMismatch {
                what: "quantized output rows x k vs activations",
                left: (out.rows * out.k) as u64,
                right: (m * k) as u64,
            });
        }
        if m == 0 {
            return Ok(());
        }
        let (m_i, k_i) = (to_i32("m", m)?, to_i32("k", k)?);
        let ub = upper_bound.unwrap_or(0.0);
        let min_scale = qforge_codecs::fp8::MIN_ROW_SCALE;
        let cfg = LaunchConfig {
            grid_dim: (m as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(&self.quant);
        b.arg(x)
            .arg(&mut out.q)
            .arg(&mut out.scale)
            .arg(&m_i)
            .arg(&k_i)
            .arg(&ub)
            .arg(&min_scale);
        // SAFETY: argument list matches quantize_fp8_rows(const u16*, u8*, float*, int, int, float,
        // float); x holds m·k, out.q m·k and out.scale m elements (checked above); one CTA per row.
        cu(
            "launch quantize_fp8_rows",
            unsafe { b.launch(cfg) }.map(|_| ()),
        )
    }

    /// FP8 row-wise GEMM on device buffers: `y = (x · wᵀ) ⊙ sx ⊗ sw`. Requires `k % 16 == 0`
    /// ([`Error::Unsupported`]). Asynchronous on [`Self::stream`].
    pub fn fp8_gemm_into(&self, x: &DeviceFp8, w: &DeviceFp8, y: &mut DeviceOut) -> Result<()> {
        if x.k != w.k {
            return Err(Error::ShapeMismatch {
                what: "activation K vs weight K",
                left: x.k as u64,
                right: w.k as u64,
            });
        }
        let (m, n, k) = (x.rows, w.rows, x.k);
        check_len("output [m, n]", m.saturating_mul(n), y.len())?;
        if k % 16 != 0 {
            return Err(Error::Unsupported {
                backend: Backend::Cuda,
                detail: format!("FP8 GEMM needs K % 16 == 0 (16-byte cp.async), got K = {k}"),
            });
        }
        if m == 0 || n == 0 {
            return Ok(());
        }
        let t = tile_for(m);
        let f = match t.name {
            n if n == TILE_SMALL.name => &self.gemm_small,
            n if n == TILE_MID.name => &self.gemm_mid,
            _ => &self.gemm_large,
        };
        let grid_y = m.div_ceil(t.bm);
        if grid_y > 65_535 {
            return Err(Error::Unsupported {
                backend: Backend::Cuda,
                detail: format!("M = {m} needs {grid_y} row tiles (grid.y ≤ 65535)"),
            });
        }
        let (m_i, n_i, k_i) = (to_i32("m", m)?, to_i32("n", n)?, to_i32("k", k)?);
        let out_f32 = y.is_f32();
        let cfg = LaunchConfig {
            grid_dim: (n.div_ceil(t.bn) as u32, grid_y as u32, 1),
            block_dim: (t.threads, 1, 1),
            shared_mem_bytes: t.smem_bytes(),
        };
        let mut b = self.stream.launch_builder(f);
        b.arg(&x.q).arg(&w.q).arg(&x.scale).arg(&w.scale);
        match y {
            DeviceOut::Bf16(s) => b.arg(s),
            DeviceOut::F32(s) => b.arg(s),
        };
        b.arg(&m_i).arg(&n_i).arg(&k_i).arg(&out_f32);
        // SAFETY: arguments match fp8_gemm_*(const u8* a, const u8* w, const float* sa,
        // const float* sw, void* out, int M, int N, int K, int out_f32); buffer sizes were checked
        // (codes m·k / n·k via DeviceFp8 construction, output m·n); K % 16 == 0 and cudarc's
        // allocations are 256-byte aligned, as the kernel's cp.async requires; the dynamic shared
        // memory size was enabled with set_attribute when the function was loaded.
        cu("launch fp8_gemm", unsafe { b.launch(cfg) }.map(|_| ()))
    }

    /// W4A16 GEMM on device buffers, `m ≤ 16`. Asynchronous on [`Self::stream`].
    pub fn w4a16_into(
        &self,
        x: &CudaSlice<u16>,
        m: usize,
        w: &DeviceInt4,
        y: &mut DeviceOut,
    ) -> Result<()> {
        check_len("activations [m, k]", m.saturating_mul(w.k), x.len())?;
        check_len("output [m, n]", m.saturating_mul(w.n), y.len())?;
        if m > W4A16_MAX_M {
            return Err(Error::Unsupported {
                backend: Backend::Cuda,
                detail: format!("W4A16 GEMM takes M ≤ {W4A16_MAX_M}, got {m}"),
            });
        }
        if m == 0 || w.n == 0 {
            return Ok(());
        }
        // Smallest MT = 2^i ≥ m.
        let idx = m.next_power_of_two().trailing_zeros() as usize;
        let f = &self.w4[idx];
        let (m_i, n_i, k_i, g_i) = (
            to_i32("m", m)?,
            to_i32("n", w.n)?,
            to_i32("k", w.k)?,
            to_i32("group", w.group)?,
        );
        let out_f32 = y.is_f32();
        let cfg = LaunchConfig {
            grid_dim: (w.n.div_ceil(W4_ROWS_PER_CTA) as u32, 1, 1),
            block_dim: (W4_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(f);
        b.arg(x).arg(&w.packed).arg(&w.scales);
        match y {
            DeviceOut::Bf16(s) => b.arg(s),
            DeviceOut::F32(s) => b.arg(s),
        };
        b.arg(&m_i).arg(&n_i).arg(&k_i).arg(&g_i).arg(&out_f32);
        // SAFETY: arguments match w4a16_gemm_mT(const u16* x, const int* wq, const u16* ws,
        // void* out, int M, int N, int K, int G, int out_f32); sizes checked above and by
        // Int4Rows::new (k % 8 == 0, group % 8 == 0, k % group == 0); M ≤ MT of the kernel chosen.
        cu("launch w4a16_gemm", unsafe { b.launch(cfg) }.map(|_| ()))
    }

    /// Copy a device output into a host [`OutputMut`] of the same kind and length.
    fn download(&self, y: &DeviceOut, out: OutputMut<'_>) -> Result<()> {
        match (y, out) {
            (DeviceOut::Bf16(s), OutputMut::Bf16(o)) => {
                cu("download", self.stream.memcpy_dtoh(s, o))
            }
            (DeviceOut::F32(s), OutputMut::F32(o)) => cu("download", self.stream.memcpy_dtoh(s, o)),
            _ => unreachable!("output buffer allocated with the kind of the host output"),
        }?;
        cu("synchronize", self.stream.synchronize())
    }

    /// Time `f` with CUDA events on [`Self::stream`]: `warmup` untimed calls, then `iters` timed
    /// ones; returns each call's milliseconds.
    pub fn time_ms(
        &self,
        warmup: usize,
        iters: usize,
        mut f: impl FnMut(usize) -> Result<()>,
    ) -> Result<Vec<f32>> {
        for i in 0..warmup {
            f(i)?;
        }
        cu("synchronize", self.stream.synchronize())?;
        let mut events = Vec::with_capacity(iters);
        for i in 0..iters {
            let a = cu(
                "event",
                self.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)),
            )?;
            let b = cu(
                "event",
                self.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)),
            )?;
            cu("event record", a.record(&self.stream))?;
            f(warmup + i)?;
            cu("event record", b.record(&self.stream))?;
            events.push((a, b));
        }
        cu("synchronize", self.stream.synchronize())?;
        events
            .iter()
            .map(|(a, b)| cu("event elapsed", a.elapsed_ms(b)))
            .collect()
    }
}

impl Gemm for CudaGemm {
    fn backend(&self) -> Backend {
        Backend::Cuda
    }

    fn device_name(&self) -> String {
        format!(
            "{} (sm_{}{}, kernels compiled for {})",
            self.name, self.cc.0, self.cc.1, self.arch
        )
    }

    fn upload_fp8(&self, w: &Fp8Rows) -> Result<Fp8Weight> {
        Ok(Fp8Weight {
            n: w.rows(),
            k: w.k(),
            storage: Fp8Storage::Cuda(self.upload_rows(w)?),
        })
    }

    fn upload_int4(&self, w: &Int4Rows) -> Result<Int4Weight> {
        Ok(Int4Weight {
            n: w.n(),
            k: w.k(),
            storage: Int4Storage::Cuda(self.upload_int4_rows(w)?),
        })
    }

    fn quantize_activations(
        &self,
        x: &[u16],
        m: usize,
        k: usize,
        upper_bound: Option<f32>,
    ) -> Result<Fp8Rows> {
        check_len("activations [m, k]", m.saturating_mul(k), x.len())?;
        if k == 0 {
            return Err(Error::InvalidParameter {
                name: "k",
                detail: "must be positive".into(),
            });
        }
        let xd = cu("upload activations", self.stream.clone_htod(x))?;
        let mut out = self.alloc_fp8(m, k)?;
        self.quantize_into(&xd, m, k, upper_bound, &mut out)?;
        let q = cu("download", self.stream.clone_dtoh(&out.q))?;
        let scale = cu("download", self.stream.clone_dtoh(&out.scale))?;
        cu("synchronize", self.stream.synchronize())?;
        Fp8Rows::new(m, k, q, scale)
    }

    fn fp8_gemm(&self, x: &Fp8Rows, w: &Fp8Weight, y: OutputMut<'_>) -> Result<()> {
        check_fp8_gemm(x, w, &y)?;
        let Fp8Storage::Cuda(wd) = &w.storage else {
            return Err(Error::BackendMismatch {
                expected: Backend::Cuda,
                got: w.backend(),
            });
        };
        let xd = self.upload_rows(x)?;
        let mut yd = self.alloc_out(x.rows(), w.n(), matches!(y, OutputMut::F32(_)))?;
        self.fp8_gemm_into(&xd, wd, &mut yd)?;
        self.download(&yd, y)
    }

    fn w4a16_gemm(&self, x: &[u16], m: usize, w: &Int4Weight, y: OutputMut<'_>) -> Result<()> {
        check_w4a16_gemm(x, m, w, &y)?;
        let Int4Storage::Cuda(wd) = &w.storage else {
            return Err(Error::BackendMismatch {
                expected: Backend::Cuda,
                got: w.backend(),
            });
        };
        let xd = cu("upload activations", self.stream.clone_htod(x))?;
        let mut yd = self.alloc_out(m, w.n(), matches!(y, OutputMut::F32(_)))?;
        self.w4a16_into(&xd, m, wd, &mut yd)?;
        self.download(&yd, y)
    }
}
