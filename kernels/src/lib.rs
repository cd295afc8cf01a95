//! GEMM kernels for qforge: FP8 row-wise-scaled GEMM (BF16 or f32 out), per-token FP8
//! activation quantization, and W4A16 GEMM (compressed-tensors INT4 weights, BF16 activations).
//!
//! One [`Gemm`] trait, two implementations:
//! - [`cpu::CpuGemm`], the **reference**: FP8 products are exact and summed exactly in `f64`
//!   (see [`cpu`] for the error bounds), rows in parallel with rayon, the same bits for any
//!   thread count. Always available.
//! - `cuda::CudaGemm` (cargo feature `cuda`, on by default): NVRTC compiles `kernels/cuda/*.cu`
//!   at run time for the device's architecture, and the driver, NVRTC and cuBLASLt libraries are
//!   loaded dynamically, so the crate builds and its tests pass on machines without CUDA. Without
//!   a device every CUDA entry point returns [`Error::NoDevice`] (never a panic: the driver
//!   library's presence is checked before any driver call).
//!
//! Data flow for a linear layer `y = x · Wᵀ` with FP8 weights:
//! ```text
//! Fp8Rows (host, from the checkpoint) --upload_fp8--> Fp8Weight (resident on the backend)
//! x (BF16) --quantize_activations--> Fp8Rows (per-token scales) --fp8_gemm(·, Fp8Weight)--> y
//! ```
//! and for W4A16: `Int4Rows --upload_int4--> Int4Weight`, `w4a16_gemm(x, Int4Weight) -> y`.
#![deny(missing_docs)]

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
mod error;
pub mod sources;

use std::fmt;

pub use error::{Error, Result};
use qforge_codecs::fp8::{quantize_fp8_rowwise, Fp8Options};
use qforge_codecs::int4::CtPacked;

/// Where a GEMM runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// The CPU reference ([`cpu::CpuGemm`]).
    Cpu,
    /// A CUDA device (`cuda::CudaGemm`).
    Cuda,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Cpu => "cpu",
            Backend::Cuda => "cuda",
        })
    }
}

pub(crate) fn check_len(what: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(Error::BufferLength {
            what,
            expected: expected as u64,
            got: got as u64,
        })
    }
}

fn checked_elems(what: &'static str, rows: usize, cols: usize) -> Result<usize> {
    rows.checked_mul(cols)
        .ok_or_else(|| Error::InvalidParameter {
            name: what,
            detail: format!("{rows} x {cols} overflows usize"),
        })
}

/// A row-major `[rows, k]` FP8 E4M3FN matrix with one `f32` dequantization scale per row
/// (`x[r, c] ≈ f8(q[r, c]) · scale[r]`): FP8 weights `[n, k]` as stored by fbgemm /
/// compressed-tensors channel-wise FP8, or per-token-quantized activations `[m, k]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Fp8Rows {
    rows: usize,
    k: usize,
    q: Vec<u8>,
    scale: Vec<f32>,
}

impl Fp8Rows {
    /// Wrap existing codes and scales. Errors: [`Error::BufferLength`] if `q.len() != rows·k`
    /// or `scale.len() != rows`; [`Error::InvalidParameter`] if `k == 0`.
    pub fn new(rows: usize, k: usize, q: Vec<u8>, scale: Vec<f32>) -> Result<Self> {
        if k == 0 {
            return Err(Error::InvalidParameter {
                name: "k",
                detail: "must be positive".into(),
            });
        }
        check_len("fp8 codes", checked_elems("fp8 codes", rows, k)?, q.len())?;
        check_len("fp8 row scales", rows, scale.len())?;
        Ok(Fp8Rows { rows, k, q, scale })
    }

    /// Quantize a row-major `[rows, k]` f32 matrix per row (FBGEMM `quantize_fp8_per_row`,
    /// [`qforge_codecs::fp8::quantize_fp8_rowwise`]): `s = max(min(amax, ub)/448, 1/(448·512))`,
    /// `q = e4m3_sat(x/s)`. `upper_bound` is FBGEMM's activation `scale_ub` (`None` for weights).
    /// Errors: non-finite input or a bad bound ([`Error::Quantize`]), lengths.
    pub fn quantize(x: &[f32], k: usize, upper_bound: Option<f32>) -> Result<Self> {
        if k == 0 || x.len() % k != 0 {
            return Err(Error::InvalidParameter {
                name: "k",
                detail: format!("{} elements are not whole rows of {k}", x.len()),
            });
        }
        let rows = x.len() / k;
        let mut q = vec![0u8; x.len()];
        let mut scale = vec![0f32; rows];
        let opts = Fp8Options {
            upper_bound,
            ..Fp8Options::default()
        };
        quantize_fp8_rowwise(x, k, &mut q, &mut scale, &opts)?;
        Ok(Fp8Rows { rows, k, q, scale })
    }

    /// Rows (`n` for weights, `m` for activations).
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Row length (the reduction dimension K).
    pub fn k(&self) -> usize {
        self.k
    }
    /// E4M3FN codes, row-major.
    pub fn codes(&self) -> &[u8] {
        &self.q
    }
    /// Dequantization scales, one per row.
    pub fn scales(&self) -> &[f32] {
        &self.scale
    }
}

/// INT4 weights `[n, k]` in compressed-tensors `pack-quantized` form, symmetric
/// (`w = s · (u − 8)`, `u` the stored nibble): `packed` is `[n, k/8]` I32 (nibble `i` of word `w`
/// is column `8w + i`, low nibble first), `scales` `[n, k/group]` BF16 bits.
#[derive(Debug, Clone, PartialEq)]
pub struct Int4Rows {
    n: usize,
    k: usize,
    group: usize,
    packed: Vec<i32>,
    scales: Vec<u16>,
}

impl Int4Rows {
    /// Wrap packed words and BF16 scale bits. Requires `k % 8 == 0`, `group % 8 == 0` and
    /// `k % group == 0` ([`Error::InvalidParameter`]); lengths ([`Error::BufferLength`]).
    pub fn new(
        n: usize,
        k: usize,
        group: usize,
        packed: Vec<i32>,
        scales: Vec<u16>,
    ) -> Result<Self> {
        if k == 0 || k % 8 != 0 {
            return Err(Error::InvalidParameter {
                name: "k",
                detail: format!("{k} is not a positive multiple of 8 (eight nibbles per word)"),
            });
        }
        if group == 0 || group % 8 != 0 || k % group != 0 {
            return Err(Error::InvalidParameter {
                name: "group",
                detail: format!("{group} must be a multiple of 8 that divides k = {k}"),
            });
        }
        check_len(
            "int4 packed words",
            checked_elems("int4 packed words", n, k / 8)?,
            packed.len(),
        )?;
        check_len(
            "int4 group scales",
            checked_elems("int4 group scales", n, k / group)?,
            scales.len(),
        )?;
        Ok(Int4Rows {
            n,
            k,
            group,
            packed,
            scales,
        })
    }

    /// From qforge-codecs's compressed-tensors tensors. Symmetric only (a zero point gives
    /// [`Error::InvalidParameter`]); the `f32` scales are rounded to BF16 (RNE), the dtype the
    /// checkpoint stores them in (exact for scales computed in BF16 arithmetic, the default).
    pub fn from_compressed_tensors(p: &CtPacked) -> Result<Self> {
        if p.weight_zero_point.is_some() {
            return Err(Error::InvalidParameter {
                name: "weight_zero_point",
                detail: "asymmetric INT4 is not supported by the W4A16 kernels".into(),
            });
        }
        let [n, k] = p.weight_shape;
        let dim = |v: i64| {
            usize::try_from(v).map_err(|_| Error::InvalidParameter {
                name: "weight_shape",
                detail: format!("{v} is negative"),
            })
        };
        let scales = p
            .weight_scale
            .iter()
            .map(|&s| qforge_codecs::float::f32_to_bf16_bits(s))
            .collect();
        Int4Rows::new(
            dim(n)?,
            dim(k)?,
            p.group_size,
            p.weight_packed.clone(),
            scales,
        )
    }

    /// Output features (rows).
    pub fn n(&self) -> usize {
        self.n
    }
    /// Input features (K).
    pub fn k(&self) -> usize {
        self.k
    }
    /// Group size along K.
    pub fn group(&self) -> usize {
        self.group
    }
    /// Packed words, `[n, k/8]`.
    pub fn packed(&self) -> &[i32] {
        &self.packed
    }
    /// BF16 scale bits, `[n, k/group]`.
    pub fn scales(&self) -> &[u16] {
        &self.scales
    }
}

/// FP8 weights resident on a backend (returned by [`Gemm::upload_fp8`]).
#[derive(Debug)]
pub struct Fp8Weight {
    n: usize,
    k: usize,
    pub(crate) storage: Fp8Storage,
}

#[derive(Debug)]
pub(crate) enum Fp8Storage {
    Host(Fp8Rows),
    #[cfg(feature = "cuda")]
    Cuda(cuda::DeviceFp8),
}

impl Fp8Weight {
    /// Output features.
    pub fn n(&self) -> usize {
        self.n
    }
    /// Input features.
    pub fn k(&self) -> usize {
        self.k
    }
    /// Where the weights live.
    pub fn backend(&self) -> Backend {
        match self.storage {
            Fp8Storage::Host(_) => Backend::Cpu,
            #[cfg(feature = "cuda")]
            Fp8Storage::Cuda(_) => Backend::Cuda,
        }
    }
}

/// INT4 weights resident on a backend (returned by [`Gemm::upload_int4`]).
#[derive(Debug)]
pub struct Int4Weight {
    n: usize,
    k: usize,
    pub(crate) storage: Int4Storage,
}

#[derive(Debug)]
pub(crate) enum Int4Storage {
    Host(Int4Rows),
    #[cfg(feature = "cuda")]
    Cuda(cuda::DeviceInt4),
}

impl Int4Weight {
    /// Output features.
    pub fn n(&self) -> usize {
        self.n
    }
    /// Input features.
    pub fn k(&self) -> usize {
        self.k
    }
    /// Where the weights live.
    pub fn backend(&self) -> Backend {
        match self.storage {
            Int4Storage::Host(_) => Backend::Cpu,
            #[cfg(feature = "cuda")]
            Int4Storage::Cuda(_) => Backend::Cuda,
        }
    }
}

/// Destination of a GEMM: row-major `[m, n]`, BF16 bits (what a server produces) or `f32`
/// (for checks: the value before the final rounding to BF16).
#[derive(Debug)]
pub enum OutputMut<'a> {
    /// BF16 bits, rounded to nearest even from the `f32` result.
    Bf16(&'a mut [u16]),
    /// `f32`.
    F32(&'a mut [f32]),
}

impl OutputMut<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            OutputMut::Bf16(y) => y.len(),
            OutputMut::F32(y) => y.len(),
        }
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A GEMM backend. Object-safe, so a caller can hold a `Box<dyn Gemm>` chosen at run time
/// (`qforge bench gemm` does; `verify --device` does not use it yet: its forward is CPU-only).
///
/// All matrices are row-major; weights are `[n, k]` (K-major, as checkpoints store them), so
/// every product is `y[m, n] = Σ_k x[m, k] · w[n, k]`.
pub trait Gemm: Send + Sync {
    /// Which backend this is.
    fn backend(&self) -> Backend;

    /// Human-readable device description (CPU thread count, GPU name and compute capability).
    fn device_name(&self) -> String;

    /// Make FP8 weights resident on the backend (a copy for the CPU, an upload for CUDA).
    fn upload_fp8(&self, w: &Fp8Rows) -> Result<Fp8Weight>;

    /// Make INT4 weights resident on the backend.
    fn upload_int4(&self, w: &Int4Rows) -> Result<Int4Weight>;

    /// Per-token FP8 quantization of BF16 activations `x` (`[m, k]`, BF16 bits):
    /// `s_t = max(min(amax_t, ub)/448, 1/(448·512))`, `q = e4m3_sat(x/s_t)`, negative zero written
    /// as `0x00` — identical bits on every backend for finite input. `upper_bound` is FBGEMM's
    /// `scale_ub` (must be finite and positive). The CPU rejects non-finite input with
    /// [`Error::Quantize`]; CUDA does not check (NaN codes, ±inf saturates).
    fn quantize_activations(
        &self,
        x: &[u16],
        m: usize,
        k: usize,
        upper_bound: Option<f32>,
    ) -> Result<Fp8Rows>;

    /// `y[m, n] = (Σ_k f8(x[m, k]) · f8(w[n, k])) · sx[m] · sw[n]`.
    fn fp8_gemm(&self, x: &Fp8Rows, w: &Fp8Weight, y: OutputMut<'_>) -> Result<()>;

    /// `y[m, n] = Σ_k x[m, k] · s[n, k/g] · (u[n, k] − 8)` with BF16 activations `x` (`[m, k]`
    /// bits). Decode-sized `m` (the CUDA kernel takes m ≤ 16).
    fn w4a16_gemm(&self, x: &[u16], m: usize, w: &Int4Weight, y: OutputMut<'_>) -> Result<()>;
}

/// Quantize-then-GEMM for a linear layer with FP8 weights and dynamic per-token activation
/// scales (what vLLM's `Fp8LinearMethod` / fbgemm's `f8f8bf16_rowwise` path does).
pub fn linear_fp8(
    gemm: &dyn Gemm,
    x: &[u16],
    m: usize,
    w: &Fp8Weight,
    upper_bound: Option<f32>,
    y: OutputMut<'_>,
) -> Result<()> {
    let xq = gemm.quantize_activations(x, m, w.k(), upper_bound)?;
    gemm.fp8_gemm(&xq, w, y)
}

/// Check the operand shapes shared by every backend's `fp8_gemm`.
pub(crate) fn check_fp8_gemm(x: &Fp8Rows, w: &Fp8Weight, y: &OutputMut<'_>) -> Result<()> {
    if x.k() != w.k() {
        return Err(Error::ShapeMismatch {
            what: "activation K vs weight K",
            left: x.k() as u64,
            right: w.k() as u64,
        });
    }
    check_len(
        "output [m, n]",
        checked_elems("output", x.rows(), w.n())?,
        y.len(),
    )
}

/// Check the operand shapes shared by every backend's `w4a16_gemm`.
pub(crate) fn check_w4a16_gemm(
    x: &[u16],
    m: usize,
    w: &Int4Weight,
    y: &OutputMut<'_>,
) -> Result<()> {
    check_len(
        "activations [m, k]",
        checked_elems("activations", m, w.k())?,
        x.len(),
    )?;
    check_len("output [m, n]", checked_elems("output", m, w.n())?, y.len())
}
