//! Number formats and codecs for qforge.
//!
//! This crate is the leaf of the workspace: pure functions over byte and float slices, no I/O.
//! It owns the one [`DType`] table every other crate uses for names, block sizes and byte sizes,
//! and the decoders that turn stored tensor bytes (IEEE and brain floats, integers, ggml blocks)
//! into `f32`.
//!
//! Every decoder here is checked bit for bit against a reference implementation (gguf-py's numpy
//! code for the ggml blocks, IEEE/`half` for the float formats); see the interop tests.
//!
//! The encoders:
//! - [`fp8`]: `f32`/BF16/F16 → FP8 E4M3FN and E5M2 (ml_dtypes-exact and saturating variants),
//!   and FBGEMM-style row-wise / per-tensor FP8 quantization with scales.
//! - [`fp4`]: FP4 E2M1 and E8M0 (ml_dtypes-exact), NVFP4 and MXFP4 blocks with
//!   compressed-tensors' arithmetic, and ggml's MXFP4 block.
//! - [`fp8_ct`]: FP8 per channel and per 128×128 block with compressed-tensors' (llm-compressor's)
//!   arithmetic.
//! - [`int4`]: compressed-tensors min-max INT4 (symmetric and asymmetric, per row or per
//!   group) with the `pack-quantized`, GPTQ and AWQ packings and their dequantizers.
//! - [`mlx`]: MLX affine 4/8-bit groups (`mx.quantize`), bit for bit.
//! - [`encode_float`]: `f32` → F32/F16/BF16 (round to nearest even), the writers' rounding.
//! - [`rope`]: the rotary Q/K row permutation between Meta/GGUF and HF layouts (any dtype).
//! - [`ggml_quant`]: llama.cpp's reference quantizers for Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K,
//!   Q3_K, Q4_K, Q5_K and Q6_K, with and without an importance matrix, bit for bit.
#![deny(missing_docs)]

mod dtype;
mod error;
pub mod float;
pub mod fp4;
pub mod fp8;
pub mod fp8_ct;
pub mod ggml;
pub mod ggml_quant;
pub mod int4;
pub mod mlx;
pub mod narrow;
pub mod rope;

pub use dtype::{DType, DTypeInfo};
pub use error::{Error, Result};

/// Decode `bytes`, holding `n` consecutive elements of `dtype` stored little-endian, into `out`
/// as `f32` (exact for every format whose values are representable in `f32`, which is all of
/// them except `F64`, `I32`, `I64` and `U32`/`U64`, which round to nearest).
///
/// `out.len()` is the element count; `bytes.len()` must be exactly
/// [`DType::bytes_for`]`(out.len())`. Block formats need `out.len()` to be a multiple of their
/// block size.
pub fn decode_to_f32(dtype: DType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    let want = dtype.bytes_for(out.len() as u64)?;
    if bytes.len() as u64 != want {
        return Err(Error::LengthMismatch {
            dtype,
            elements: out.len() as u64,
            expected_bytes: want,
            got_bytes: bytes.len() as u64,
        });
    }
    float::decode_plain(dtype, bytes, out).unwrap_or_else(|| ggml::dequantize(dtype, bytes, out))
}

/// Encode f32 values as `dtype` (F32, F16 with IEEE round-to-nearest-even and overflow to ±inf,
/// or BF16 with round-to-nearest-even and NaN kept NaN), appending to `out`.
pub fn encode_float(values: &[f32], dtype: DType, out: &mut Vec<u8>) -> Option<()> {
    match dtype {
        DType::F32 => out.extend(values.iter().flat_map(|v| v.to_le_bytes())),
        DType::F16 => out.extend(
            values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes()),
        ),
        DType::BF16 => out.extend(
            values
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()),
        ),
        _ => return None,
    }
    Some(())
}
