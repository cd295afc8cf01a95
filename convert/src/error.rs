//! The crate's one error type. Reader-specific details live in per-format `kind` enums
//! ([`crate::gguf::GgufError`], [`crate::hf::SafetensorsError`], [`crate::pth::PthError`]) so
//! that tests can match the exact failure, while every error still names its file.

use std::path::PathBuf;

use qforge_codecs::DType;

use crate::gguf::GgufError;
use crate::hf::SafetensorsError;
use crate::pth::PthError;

/// Errors from reading, validating and decoding checkpoints.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system error on a file.
    #[error("{}: {source}", crate::error::shown(path))]
    Io {
        /// the file or directory
        path: PathBuf,
        /// what the OS said
        source: std::io::Error,
    },
    /// The conversion would change what the model computes and that was not allowed.
    #[error("refused: the output would compute something other than the source:\n  - {}\npass --allow-lossy to write it anyway (the changes are recorded in the output)", changes.join("\n  - "))]
    Lossy {
        /// each change, with how to keep what it loses
        changes: Vec<String>,
    },
    /// The path is not a checkpoint qforge recognizes.
    #[error("{}: not a model: {reason}", crate::error::shown(path))]
    NotAModel {
        /// the path given
        path: PathBuf,
        /// why it was not recognized, and what was expected
        reason: String,
    },
    /// A malformed safetensors file or index.
    #[error("{}: {kind}", crate::error::shown(path))]
    Safetensors {
        /// the file
        path: PathBuf,
        /// what is wrong
        kind: SafetensorsError,
    },
    /// A malformed GGUF file.
    #[error("{}: {kind}", crate::error::shown(path))]
    Gguf {
        /// the file
        path: PathBuf,
        /// what is wrong
        kind: GgufError,
    },
    /// A malformed importance-matrix file (llama-imatrix GGUF or legacy `.dat`). The kind is
    /// `qforge_quantize::imatrix::ImatrixError`: those files are read where they are used.
    #[error("{}: importance matrix: {kind}", crate::error::shown(path))]
    Imatrix {
        /// the file
        path: PathBuf,
        /// what is wrong
        kind: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A malformed or unsafe `.pth` file (ZIP container or pickle stream).
    #[error("{}: {kind}", crate::error::shown(path))]
    Pth {
        /// the file
        path: PathBuf,
        /// what is wrong
        kind: PthError,
    },
    /// A missing, malformed or inconsistent model configuration.
    #[error("{}: {kind}", crate::error::shown(path))]
    Config {
        /// the configuration file (or the model file its values came from)
        path: PathBuf,
        /// what is wrong
        kind: ConfigError,
    },
    /// A checkpoint planned from its configuration alone (`Checkpoint::from_config`) has shapes
    /// but no tensor data.
    #[error(
        "{}: tensor {tensor}: no data (the model was opened from its config alone, for planning)",
        crate::error::shown(path)
    )]
    NoTensorData {
        /// the model directory
        path: PathBuf,
        /// the tensor asked for
        tensor: String,
    },
    /// A tensor name that no name table knows. qforge never drops tensors silently.
    #[error(
        "{}: unknown tensor name {name:?} for the {scheme} naming scheme",
        crate::error::shown(path)
    )]
    UnknownTensor {
        /// the file holding it
        path: PathBuf,
        /// the name
        name: String,
        /// the naming scheme of the format
        scheme: &'static str,
    },
    /// Two tensors with the same name, or two names for the same tensor role.
    #[error("{}: duplicate tensor {name:?}", crate::error::shown(path))]
    DuplicateTensor {
        /// the file holding the second occurrence
        path: PathBuf,
        /// the name
        name: String,
    },
    /// A tensor the configuration requires is absent.
    #[error("{}: missing tensor {name:?}", crate::error::shown(path))]
    MissingTensor {
        /// the model path
        path: PathBuf,
        /// the name it would have in this format
        name: String,
    },
    /// A tensor whose shape disagrees with the configuration.
    #[error(
        "{}: tensor {tensor:?} has shape {got:?}, the config implies {expected:?}",
        crate::error::shown(path)
    )]
    ShapeMismatch {
        /// the file holding it
        path: PathBuf,
        /// the tensor name
        tensor: String,
        /// shape implied by the config
        expected: Vec<u64>,
        /// shape in the file
        got: Vec<u64>,
    },
    /// Model-parallel shards that cannot be merged.
    #[error(
        "{}: shards of {tensor:?} cannot be merged: {reason}",
        crate::error::shown(path)
    )]
    ShardMismatch {
        /// the model directory
        path: PathBuf,
        /// the tensor name
        tensor: String,
        /// why
        reason: String,
    },
    /// A tensor could not be decoded.
    #[error("{}: tensor {tensor:?}: {source}", crate::error::shown(path))]
    Codec {
        /// the file holding it
        path: PathBuf,
        /// the tensor name
        tensor: String,
        /// the codec's error
        source: qforge_codecs::Error,
    },
    /// A tensor's dtype cannot be used for the requested operation.
    #[error(
        "{}: tensor {tensor:?}: dtype {dtype} is not supported here: {reason}",
        crate::error::shown(path)
    )]
    UnsupportedDType {
        /// the file holding it
        path: PathBuf,
        /// the tensor name
        tensor: String,
        /// its dtype
        dtype: DType,
        /// why
        reason: &'static str,
    },
    /// The output path exists and overwriting was not asked for.
    #[error(
        "{}: output already exists (pass --overwrite to replace it, or choose another path)",
        crate::error::shown(path)
    )]
    OutputExists {
        /// the destination
        path: PathBuf,
    },
    /// A quantized module whose companion tensors (scales, packed words, shape) do not fit
    /// together.
    #[error("{}: tensor {tensor:?}: {reason}", crate::error::shown(path))]
    BadQuantization {
        /// the checkpoint
        path: PathBuf,
        /// the tensor name
        tensor: String,
        /// what is wrong
        reason: String,
    },
    /// No tensor of that name in the checkpoint.
    #[error("no tensor named {0:?} in this checkpoint")]
    NoSuchTensor(String),
    /// A tokenizer that cannot be read, or cannot be converted to the requested form.
    #[error("{}: tokenizer: {reason}", crate::error::shown(path))]
    Tokenizer {
        /// the tokenizer file or directory (or what the tokenizer was being turned into)
        path: PathBuf,
        /// what is wrong
        reason: String,
    },
}

/// Problems with a model configuration.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Not valid JSON (or not an object).
    #[error("invalid JSON: {0}")]
    Json(String),
    /// A required field is absent.
    #[error("missing field {0:?}")]
    Missing(&'static str),
    /// A field has the wrong type or an out-of-range value.
    #[error("field {field:?}: {reason}")]
    Invalid {
        /// the field
        field: &'static str,
        /// what is wrong with it
        reason: String,
    },
    /// Fields that contradict each other.
    #[error("inconsistent config: {0}")]
    Inconsistent(String),
    /// A required metadata key (named with its architecture prefix) is absent.
    #[error("missing key {0:?}")]
    MissingKey(String),
    /// The model architecture is not one of qforge's families.
    #[error(
        "unsupported architecture {0:?} (qforge handles {known})",
        known = crate::family::Family::known_model_types()
    )]
    Architecture(String),
    /// The family does not support a setting the config asks for.
    #[error("{family}: {reason}")]
    Unsupported {
        /// the family
        family: &'static str,
        /// what it does not support
        reason: String,
    },
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

impl From<qforge_stage::Error> for Error {
    fn from(e: qforge_stage::Error) -> Self {
        match e {
            qforge_stage::Error::Io { path, source } => Error::Io { path, source },
            qforge_stage::Error::OutputExists { path } => Error::OutputExists { path },
            qforge_stage::Error::Lossy { changes } => Error::Lossy { changes },
            qforge_stage::Error::BadRecord { path, reason } => Error::io(
                path,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("unreadable resume record: {reason}"),
                ),
            ),
            other => Error::io(
                std::path::PathBuf::new(),
                std::io::Error::other(other.to_string()),
            ),
        }
    }
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

pub use qforge_stage::shown;
