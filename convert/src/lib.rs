//! Checkpoint containers for qforge.
//!
//! Reads the three formats Llama-family checkpoints are held in — Hugging Face safetensors
//! (single or sharded), Meta `consolidated.NN.pth` (any model-parallel degree) and GGUF — into one
//! typed, memory-mapped [`Checkpoint`]: a validated [`ModelConfig`], a tokenizer summary, and an
//! ordered list of [`TensorEntry`]s whose bytes stay in the mapped files until asked for.
//!
//! Every reader treats its input as hostile: each count, length, offset, shape and dtype read from
//! a file is checked (with checked arithmetic, against the bytes actually present) before it is
//! used, and failures are [`Error`] values naming the file, the tensor and the offset. Pickle
//! streams inside `.pth` files are interpreted by an allowlisted virtual machine that never calls
//! anything.
#![deny(missing_docs)]

pub mod checkpoint;
pub mod config;
mod error;
pub mod export;
pub mod export_gguf;
pub mod export_meta;
pub mod family;
pub mod gguf;
pub mod hf;
pub mod meta;
pub mod meta_tokenizer;
mod mmap;
pub mod names;
pub mod narrow;
pub mod pth;
pub mod tokenizer;
pub mod write;

pub use checkpoint::{Checkpoint, Format, TensorEntry, TensorLayout, TokenizerInfo};
pub use config::{Llama4Attention, ModelConfig, MoeConfig, RopeScaling, SlidingWindow};
pub use error::{shown, ConfigError, Error, Result};
pub use family::{Family, FamilySpec, Gating};
pub use names::{
    FfnProj, HfMoeNames, LayerTensor, NameMatch, NameScheme, Part, TensorId, TensorKey,
};
