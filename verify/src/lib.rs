//! Reference Llama forward pass and drift metrics for qforge.
//!
//! * [`Model`]: a checkpoint in any format, read through [`qforge_convert::Checkpoint`], whose
//!   linears are dequantized one layer at a time ([`qforge_convert::Checkpoint::weight_f32`]).
//! * [`eval::perplexity`] and [`eval::compare`]: layer-major evaluation (all evaluation tokens
//!   pass layer `i` before layer `i+1` is read) with llama.cpp's perplexity protocol, KL
//!   divergence, top-1 agreement and per-layer hidden-state drift.
//! * [`engine`]: the weight stream of that evaluation (layer `i+1` read on a helper thread while
//!   layer `i` computes), [`backend`]: the device the layers run on (`--device`), [`basecache`]:
//!   a base forward stored for reuse by later comparisons.
//! * Emulations of what serving stacks do to activations: dynamic per-token FP8 (W8A8) and
//!   ggml-cpu's activation quantization ([`actquant`]), and llama.cpp's F16 KV cache.
//!
//! Numbers: weights and activations in `f32`, matmuls accumulate in `f32`, norms, softmax sums
//! and the metrics in `f64`. The layer forward is generic over [`Real`], so calibration can run
//! it in `f64` ([`LayerWeights::to_f64`]). Results are bit-identical for any thread count (see
//! [`matmul`]).
#![deny(missing_docs)]

pub mod actquant;
pub mod backend;
pub mod basecache;
pub mod engine;
mod error;
pub mod eval;
pub mod gemm;
pub mod ggml_cpu;
pub mod matmul;
pub mod metrics;
pub mod model;
pub mod moe;
pub mod moe_observe;
pub mod ops;
pub mod progress;
pub mod real;
pub mod tokenize;

pub use backend::{Backend, Device};
pub use engine::StreamStats;
pub use error::{Error, Result};
pub use eval::{
    collect_imatrix, compare, compare_run, perplexity, perplexity_run, BaseOrigin, CompareRun,
    Comparison, EvalOptions, LayerError, PerplexityResult,
};
pub use model::{ActQuant, Dense, ForwardOptions, LayerWeights, Linear, Model, Project, W8a8Mode};
pub use real::Real;
pub use tokenize::{Chunks, TextTokenizer};

/// Run `f` on a rayon pool of `threads` threads (the global pool when `None`).
pub fn with_threads<T: Send>(threads: Option<usize>, f: impl FnOnce() -> T + Send) -> Result<T> {
    match threads {
        None => Ok(f()),
        Some(t) => {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(t.max(1))
                .build()
                .map_err(|e| Error::InvalidOption {
                    name: "threads",
                    reason: e.to_string(),
                })?;
            Ok(pool.install(f))
        }
    }
}
