//! The calibration error type.

use std::path::PathBuf;

/// Result alias.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong while calibrating.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the model or running the forward pass.
    #[error(transparent)]
    Verify(#[from] qforge_verify::Error),
    /// Reading a checkpoint or writing an output.
    #[error(transparent)]
    Convert(#[from] qforge_convert::Error),
    /// Staging or committing an output, or reading a resume record.
    #[error(transparent)]
    Stage(#[from] qforge_stage::Error),
    /// A codec rejected its input.
    #[error(transparent)]
    Codec(#[from] qforge_codecs::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// the file
        path: PathBuf,
        /// the OS error
        #[source]
        source: std::io::Error,
    },
    /// An option is out of range.
    #[error("invalid option --{name}: {reason}")]
    InvalidOption {
        /// the option
        name: &'static str,
        /// why
        reason: String,
    },
    /// The calibration text is too short for the requested samples.
    #[error(
        "calibration text has {tokens} tokens: {windows} windows of {seq_len}, but --samples \
         {samples} were asked for (add text, or lower --samples / --seq-len)"
    )]
    NotEnoughData {
        /// tokens in all files
        tokens: usize,
        /// non-overlapping windows available
        windows: usize,
        /// tokens per sample
        seq_len: usize,
        /// samples requested
        samples: usize,
    },
    /// A Hessian stayed non-positive-definite after every extra damping step.
    #[error(
        "{module}: the Hessian is not positive definite (Cholesky pivot {pivot} failed) even \
         with dampening {damping} x mean(diag H); the calibration activations are degenerate"
    )]
    NotPositiveDefinite {
        /// HF module name
        module: String,
        /// the last dampening tried
        damping: f64,
        /// the column whose pivot was not positive
        pivot: usize,
    },
    /// A weight, Hessian or activation holds NaN or an infinity.
    #[error("{module}: non-finite value in {what}")]
    NonFinite {
        /// HF module name
        module: String,
        /// which input
        what: &'static str,
    },
    /// A calibration file or state directory is malformed or belongs to another run.
    #[error("{path}: {reason}")]
    BadFile {
        /// the file
        path: PathBuf,
        /// what is wrong
        reason: String,
    },
    /// The model or the option combination is not supported.
    #[error("{0}")]
    Unsupported(String),
    /// The run stopped on purpose after a layer (`CalibOptions::stop_after_layer`, tests).
    #[error("stopped after layer {layer} as requested; run again to resume")]
    Stopped {
        /// the last layer checkpointed
        layer: u32,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
