use crate::DType;

/// Errors from the codecs. Every variant carries what is needed to say which input was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The element count is not a whole number of blocks of a block format.
    #[error("{elements} elements is not a multiple of the {dtype} block size {block}")]
    PartialBlock {
        /// the block format
        dtype: DType,
        /// the element count asked for
        elements: u64,
        /// its block size
        block: u64,
    },
    /// The byte size of a tensor does not fit in 64 bits.
    #[error("byte size of {elements} elements of {dtype} overflows")]
    SizeOverflow {
        /// the format
        dtype: DType,
        /// the element count asked for
        elements: u64,
    },
    /// A byte buffer does not hold exactly the bytes of the element count asked for.
    #[error("{elements} elements of {dtype} need {expected_bytes} bytes, got {got_bytes}")]
    LengthMismatch {
        /// the format
        dtype: DType,
        /// the element count asked for
        elements: u64,
        /// bytes those elements occupy
        expected_bytes: u64,
        /// bytes supplied
        got_bytes: u64,
    },
    /// The format is known (it can be stored and copied) but qforge has no decoder for it yet.
    #[error("decoding {0} to f32 is not supported")]
    Unsupported(DType),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;
