//! The CPU implementation of [`Gemm`], which is also the reference the CUDA kernels are tested
//! against.
//!
//! # FP8 GEMM: exact dot products
//!
//! Every E4M3FN value is `±i · 2^-9` with an integer `i ≤ 448·512` whose significand has at
//! most 4 bits, so the product of two codes has at most 8 significant bits and lies between
//! `2^-18` and `448² = 200704 < 2^17.7` in magnitude: it is **exact** in `f32` (and in `f64`).
//! Summing in `f64`, every partial sum is an integer multiple of `2^-18` below
//! `K · 448²`; such numbers are exact in `f64` while `K · 448² < 2^35`, i.e. for
//! `K ≤ 171,196` ([`EXACT_K_MAX`], more than every Llama shape: 405B's down projection has
//! K = 53,248). So the dot product is computed **exactly**, in any order; beyond `EXACT_K_MAX`
//! the usual `f64` bound applies (`|err| ≤ K·2^-53·Σ|products|`).
//!
//! The scales are then applied in `f64`, `y = (dot · sx[m]) · sw[n]` (two roundings of relative
//! size `2^-53`), and the result is rounded once to `f32` (RNE). Hence the f32 output satisfies
//! `|y − y_exact| ≤ 2^-24·|y_exact|·(1 + 2^-50)` (tests assert this against an independent
//! `f64` computation), and the BF16 output is the f32 output rounded to nearest even (as the
//! CUDA kernels do: BF16 keeps 8 significant bits, so `|bf16 − y_exact| ≤ (2^-8 + 2^-23)·|y_exact|`
//! for normal results).
//!
//! # W4A16 GEMM
//!
//! BF16 activations (8-bit significands) and dequantized weights `s·(u − 8)` (a BF16 scale times
//! a 4-bit integer: exact in `f32`, ≤ 12 significant bits) have exact `f64` products; the sum
//! over K is accumulated in `f64` (`|err| ≤ K·2^-53·Σ|x·w|`), then rounded once to `f32`.
//!
//! # Determinism
//!
//! Each output element is computed by one task with a fixed summation order, so the output is
//! bit-identical for any number of rayon threads.

use rayon::prelude::*;

use qforge_codecs::float::{bf16_bits_to_f32, f32_to_bf16_bits, f8_e4m3_to_f32};

use crate::{
    check_fp8_gemm, check_len, check_w4a16_gemm, Backend, Error, Fp8Rows, Fp8Storage, Fp8Weight,
    Gemm, Int4Rows, Int4Storage, Int4Weight, OutputMut, Result,
};

/// Largest K for which the `f64` FP8 dot product is exact (`K · 448² · 2^18 ≤ 2^53`).
pub const EXACT_K_MAX: usize = (1usize << 35) / (448 * 448);

/// The 256 E4M3FN codes decoded to `f32` (exact; `0x7F`/`0xFF` are NaN).
fn e4m3_table() -> &'static [f32; 256] {
    static TABLE: std::sync::OnceLock<[f32; 256]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| std::array::from_fn(|b| f8_e4m3_to_f32(b as u8)))
}

/// Decode a row of E4M3 codes into `out` (exact).
pub fn decode_e4m3_row(codes: &[u8], out: &mut [f32]) {
    let t = e4m3_table();
    for (o, &b) in out.iter_mut().zip(codes) {
        *o = t[usize::from(b)];
    }
}

/// `Σ a[i]·b[i]` in `f64` with eight independent accumulators (vectorizable). For FP8-decoded
/// inputs with `len ≤ EXACT_K_MAX` every partial sum is exact, so the result does not depend on
/// the order; otherwise the order is still fixed (deterministic).
pub fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += f64::from(x[i]) * f64::from(y[i]);
        }
    }
    let mut tail = 0f64;
    for (x, y) in ta.iter().zip(tb) {
        tail += f64::from(*x) * f64::from(*y);
    }
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail
}

/// FP8 row-wise GEMM into an `f64` buffer `[m, n]`: `(dot · sx[m]) · sw[n]`, before the final
/// rounding. This is the function both [`CpuGemm::fp8_gemm`] outputs are rounded from.
pub fn fp8_gemm_f64(x: &Fp8Rows, w: &Fp8Rows) -> Result<Vec<f64>> {
    if x.k() != w.k() {
        return Err(Error::ShapeMismatch {
            what: "activation K vs weight K",
            left: x.k() as u64,
            right: w.k() as u64,
        });
    }
    let (m, n, k) = (x.rows(), w.rows(), x.k());
    let mut xf = vec![0f32; m * k];
    xf.par_chunks_mut(k)
        .zip(x.codes().par_chunks(k))
        .for_each(|(o, c)| decode_e4m3_row(c, o));
    // Parallel over weight rows: each task decodes its row once and dots it with every
    // activation row, writing column n of the transposed result.
    let mut yt = vec![0f64; n * m];
    yt.par_chunks_mut(m.max(1))
        .zip(w.codes().par_chunks(k))
        .zip(w.scales().par_iter())
        .for_each_init(
            || vec![0f32; k],
            |wrow, ((col, codes), &sw)| {
                decode_e4m3_row(codes, wrow);
                for (mi, out) in col.iter_mut().enumerate() {
                    let dot = dot_f64(&xf[mi * k..(mi + 1) * k], wrow);
                    *out = dot * f64::from(x.scales()[mi]) * f64::from(sw);
                }
            },
        );
    let mut y = vec![0f64; m * n];
    for (ni, col) in yt.chunks(m.max(1)).enumerate().take(n) {
        for (mi, &v) in col.iter().enumerate() {
            y[mi * n + ni] = v;
        }
    }
    Ok(y)
}

/// W4A16 GEMM into `f64` `[m, n]` (exact products, `f64` sums).
pub fn w4a16_gemm_f64(x: &[u16], m: usize, w: &Int4Rows) -> Result<Vec<f64>> {
    let (n, k, g) = (w.n(), w.k(), w.group());
    check_len("activations [m, k]", m * k, x.len())?;
    let xf: Vec<f32> = x.iter().map(|&b| bf16_bits_to_f32(b)).collect();
    let words = k / 8;
    let groups = k / g;
    let mut yt = vec![0f64; n * m];
    yt.par_chunks_mut(m.max(1)).enumerate().for_each_init(
        || vec![0f32; k],
        |wrow, (ni, col)| {
            let packed = &w.packed()[ni * words..(ni + 1) * words];
            let scales = &w.scales()[ni * groups..(ni + 1) * groups];
            for (c, v) in wrow.iter_mut().enumerate() {
                let u = (packed[c / 8] as u32 >> (4 * (c % 8))) & 0xF;
                // (u − 8) · s: a 4-bit integer times a BF16 scale, exact in f32.
                *v = (u as f32 - 8.0) * bf16_bits_to_f32(scales[c / g]);
            }
            for (mi, out) in col.iter_mut().enumerate() {
                *out = dot_f64(&xf[mi * k..(mi + 1) * k], wrow);
            }
        },
    );
    let mut y = vec![0f64; m * n];
    for (ni, col) in yt.chunks(m.max(1)).enumerate().take(n) {
        for (mi, &v) in col.iter().enumerate() {
            y[mi * n + ni] = v;
        }
    }
    Ok(y)
}

fn write_output(y64: &[f64], out: OutputMut<'_>) {
    match out {
        OutputMut::F32(y) => {
            for (o, &v) in y.iter_mut().zip(y64) {
                *o = v as f32;
            }
        }
        OutputMut::Bf16(y) => {
            for (o, &v) in y.iter_mut().zip(y64) {
                *o = f32_to_bf16_bits(v as f32);
            }
        }
    }
}

/// The CPU reference backend (rayon; uses the global pool or the pool it is called from).
#[derive(Debug, Default, Clone, Copy)]
pub struct CpuGemm;

impl CpuGemm {
    /// A CPU backend.
    pub fn new() -> Self {
        CpuGemm
    }
}

impl Gemm for CpuGemm {
    fn backend(&self) -> Backend {
        Backend::Cpu
    }

    fn device_name(&self) -> String {
        format!(
            "CPU reference ({} rayon threads)",
            rayon::current_num_threads()
        )
    }

    fn upload_fp8(&self, w: &Fp8Rows) -> Result<Fp8Weight> {
        Ok(Fp8Weight {
            n: w.rows(),
            k: w.k(),
            storage: Fp8Storage::Host(w.clone()),
        })
    }

    fn upload_int4(&self, w: &Int4Rows) -> Result<Int4Weight> {
        Ok(Int4Weight {
            n: w.n(),
            k: w.k(),
            storage: Int4Storage::Host(w.clone()),
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
        let xf: Vec<f32> = x.iter().map(|&b| bf16_bits_to_f32(b)).collect();
        if m == 0 {
            return Fp8Rows::new(0, k, Vec::new(), Vec::new());
        }
        Fp8Rows::quantize(&xf, k, upper_bound)
    }

    // Without the `cuda` feature the storage has one variant.
    #[cfg_attr(not(feature = "cuda"), allow(clippy::infallible_destructuring_match))]
    fn fp8_gemm(&self, x: &Fp8Rows, w: &Fp8Weight, y: OutputMut<'_>) -> Result<()> {
        check_fp8_gemm(x, w, &y)?;
        let wr = match &w.storage {
            Fp8Storage::Host(r) => r,
            #[cfg(feature = "cuda")]
            Fp8Storage::Cuda(_) => {
                return Err(Error::BackendMismatch {
                    expected: Backend::Cpu,
                    got: Backend::Cuda,
                })
            }
        };
        let y64 = fp8_gemm_f64(x, wr)?;
        write_output(&y64, y);
        Ok(())
    }

    // Without the `cuda` feature the storage has one variant.
    #[cfg_attr(not(feature = "cuda"), allow(clippy::infallible_destructuring_match))]
    fn w4a16_gemm(&self, x: &[u16], m: usize, w: &Int4Weight, y: OutputMut<'_>) -> Result<()> {
        check_w4a16_gemm(x, m, w, &y)?;
        let wr = match &w.storage {
            Int4Storage::Host(r) => r,
            #[cfg(feature = "cuda")]
            Int4Storage::Cuda(_) => {
                return Err(Error::BackendMismatch {
                    expected: Backend::Cpu,
                    got: Backend::Cuda,
                })
            }
        };
        let y64 = w4a16_gemm_f64(x, m, wr)?;
        write_output(&y64, y);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_k_bound() {
        // K · 448² · 2^18 must stay within 2^53.
        assert_eq!(EXACT_K_MAX, 171_196);
        assert!((EXACT_K_MAX as u128) * 448 * 448 * (1 << 18) <= 1u128 << 53);
    }

    #[test]
    fn e4m3_products_are_exact_in_f32() {
        let t = e4m3_table();
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let (x, y) = (t[usize::from(a)], t[usize::from(b)]);
                if x.is_nan() || y.is_nan() {
                    continue;
                }
                assert_eq!(
                    f64::from(x * y),
                    f64::from(x) * f64::from(y),
                    "{a:#x} * {b:#x}"
                );
            }
        }
    }
}
