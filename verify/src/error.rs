//! The error type of qforge-verify.

use std::path::PathBuf;

/// What can go wrong while evaluating a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading the checkpoint failed (file, tensor and offset are in the source).
    #[error(transparent)]
    Convert(#[from] qforge_convert::Error),
    /// The model's tokenizer could not be built or refused the text.
    #[error("{path}: tokenizer: {reason}")]
    Tokenizer {
        /// tokenizer source
        path: PathBuf,
        /// what went wrong
        reason: String,
    },
    /// Reading the evaluation text failed.
    #[error("{path}: {source}")]
    Io {
        /// the file
        path: PathBuf,
        /// the OS error
        #[source]
        source: std::io::Error,
    },
    /// The evaluation text is too short for even one chunk.
    #[error(
        "the text tokenizes to {tokens} tokens; llama.cpp's protocol needs at least {needed} \
         (2 × ctx {ctx})"
    )]
    NotEnoughTokens {
        /// tokens in the text
        tokens: usize,
        /// tokens required
        needed: usize,
        /// context length asked for
        ctx: usize,
    },
    /// An option is out of range.
    #[error("invalid option {name}: {reason}")]
    InvalidOption {
        /// option name
        name: &'static str,
        /// why
        reason: String,
    },
    /// The model uses something the reference forward does not implement.
    #[error("{path}: unsupported model: {reason}")]
    Unsupported {
        /// checkpoint path
        path: PathBuf,
        /// what is missing
        reason: String,
    },
    /// The base and quantized models are not the same architecture.
    #[error("base and quantized models differ: {0}")]
    Mismatch(String),
    /// The device asked for cannot run the forward here (one line: which device and why).
    #[error("{0}")]
    Device(String),
    /// Activations that overflowed to inf or NaN (llama-imatrix stops on them too).
    #[error("non-finite activations reach {tensor}")]
    NonFiniteActivations {
        /// the linear whose input statistics overflowed
        tensor: String,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
