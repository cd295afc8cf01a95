//! The crate's error type.

use crate::Backend;

/// Errors of qforge-kernels. Variants carry the values needed to match them in tests.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No usable CUDA device: the driver library is missing, it reports no device, the crate was
    /// built without the `cuda` feature, or NVRTC cannot be loaded. GPU tests skip on this.
    #[error("no CUDA device: {reason}")]
    NoDevice {
        /// Why (e.g. "libcuda could not be loaded").
        reason: String,
    },
    /// The device's compute capability is below what the FP8 kernels need (8.9).
    #[error(
        "compute capability {major}.{minor} is not supported (FP8 mma.sync needs sm_89 or newer)"
    )]
    UnsupportedArch {
        /// Major compute capability.
        major: i32,
        /// Minor compute capability.
        minor: i32,
    },
    /// A buffer has the wrong number of elements for the shape it was given with.
    #[error("{what}: expected {expected} elements, got {got}")]
    BufferLength {
        /// Which buffer.
        what: &'static str,
        /// Elements the shape implies.
        expected: u64,
        /// Elements passed.
        got: u64,
    },
    /// Two operands disagree on a dimension.
    #[error("shape mismatch: {what} ({left} vs {right})")]
    ShapeMismatch {
        /// Which dimensions.
        what: &'static str,
        /// One side.
        left: u64,
        /// The other side.
        right: u64,
    },
    /// A parameter is out of its domain.
    #[error("invalid {name}: {detail}")]
    InvalidParameter {
        /// Parameter name.
        name: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// A shape the CUDA kernels do not handle (e.g. K not a multiple of 16 for FP8 GEMM).
    #[error("unsupported by the {backend} kernels: {detail}")]
    Unsupported {
        /// Backend that refused.
        backend: Backend,
        /// Which constraint failed.
        detail: String,
    },
    /// Weights prepared for one backend were passed to another.
    #[error("weights were uploaded to {got}, but this GEMM runs on {expected}")]
    BackendMismatch {
        /// Backend of the GEMM.
        expected: Backend,
        /// Backend the weights live on.
        got: Backend,
    },
    /// Quantization failed (non-finite input, bad upper bound, bad lengths).
    #[error(transparent)]
    Quantize(#[from] qforge_codecs::Error),
    /// A CUDA driver, NVRTC or cuBLASLt call failed.
    #[error("CUDA {op} failed: {detail}")]
    Cuda {
        /// The operation.
        op: &'static str,
        /// The driver's message.
        detail: String,
    },
    /// NVRTC rejected a kernel source; `log` is the compiler log.
    #[error("NVRTC could not compile {source_name} for {arch}:\n{log}")]
    Compile {
        /// The `.cu` file.
        source_name: &'static str,
        /// Target architecture.
        arch: String,
        /// Compiler log.
        log: String,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
