//! Layer-by-layer calibration for qforge (DESIGN.md "Calibration", specs/serving-formats.md §4).
//!
//! * [`data`]: calibration samples — text tokenized with the model's own tokenizer, cut into
//!   windows of `seq_len` tokens, `N` of them drawn with a seeded shuffle.
//! * [`engine`]: the sequential pipeline (llm-compressor's `SequentialPipeline`): the samples
//!   are embedded once; for each decoder layer only that layer's weights are loaded, the layer
//!   runs over every sample while observers see each linear's input, the method runs, and the
//!   layer's outputs (computed with the *quantized* weights for GPTQ) feed the next layer. Memory
//!   is one layer's weights plus the calibration activations, whatever the model size. After
//!   every layer the hidden states and results so far are checkpointed atomically, so an
//!   interrupted run resumes at the next layer and writes the same bytes.
//! * [`observer`]: static FP8 input scales (global min/max, llm-compressor's `static_minmax`;
//!   or a percentile of |x|).
//! * [`awq`]: the AWQ smoothing-scale search of one mapping and the fold of the scales.
//! * [`gptq`] on one linear, with the f64 Cholesky factorisation in [`linalg`].
//! * [`output`]: the calibration files `qforge quantize --calib` reads.
//!
//! Every result is bit-identical for any thread count: parallel work is split by rows whose
//! arithmetic never depends on the split, and the GEMMs are verify's deterministic ones.
#![deny(missing_docs)]

pub mod awq;
mod awq_layer;
pub mod data;
pub mod engine;
mod error;
pub mod gptq;
pub mod linalg;
pub mod moe;
pub mod observer;
pub mod output;

pub use awq::AwqConfig;
pub use data::Samples;
pub use engine::{calibrate, CalibOptions, CalibSummary, Method, Precision};
pub use error::{Error, Result};
pub use gptq::{GptqConfig, GptqResult};
pub use observer::ObserverKind;
