//! Quantization schemes for qforge.
//!
//! Sits above `qforge-convert` (formats: readers, writers, names, configs) and below
//! `qforge-verify` / `qforge-calibrate`: which tensors a scheme quantizes ([`layout::Policy`],
//! ignore lists), the streaming producers of its tensors and the `quantization_config` it writes
//! (compressed-tensors, fbgemm_fp8, MLX: [`layout`]; llama.cpp mixes: [`gguf_mix`]), how a
//! quantized checkpoint is read back ([`dequant`]), importance matrices ([`imatrix`]) and the
//! policy for non-finite or huge weights ([`numerics`]). The arithmetic itself is
//! `qforge-codecs`'s (slices in, slices out).
#![deny(missing_docs)]

pub mod dequant;
pub mod gguf_mix;
pub mod imatrix;
pub mod layout;
pub mod numerics;
pub mod scheme;
