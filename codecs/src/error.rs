use crate::DType;

/// Errors from the codecs. Every variant carries what is needed to say which input was wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
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
    /// qforge has no encoder (quantizer) for this format.
    #[error("encoding f32 to {0} is not supported")]
    UnsupportedEncode(DType),
    /// A value to be quantized is NaN or infinite. Weights must be finite: a scale computed from
    /// them would be meaningless, so the quantizers refuse rather than emit NaN codes.
    #[error("non-finite value at row {row}, column {col}")]
    NonFinite {
        /// row index (0-based) in the row-major input
        row: u64,
        /// column index (0-based) within that row
        col: u64,
    },
    /// A weight to be quantized is finite but absurdly large (above the limit the caller set,
    /// by default F16's largest value): its row's scale would flatten every other weight to zero.
    #[error("value {value:e} at row {row}, column {col} exceeds the limit {limit:e}")]
    OutOfRange {
        /// row index (0-based) in the row-major input
        row: u64,
        /// column index (0-based) within that row
        col: u64,
        /// the value
        value: f32,
        /// the largest magnitude allowed
        limit: f32,
    },
    /// An importance (imatrix) weight is NaN, infinite or negative.
    #[error("importance weight at column {col} is not a finite non-negative number")]
    BadImportance {
        /// column index of the offending weight
        col: u64,
    },
    /// The quantization group size does not divide the row length.
    #[error("group size {group} does not divide the row length {k}; {suggested} would")]
    GroupMismatch {
        /// the row length (input features)
        k: u64,
        /// the group size asked for
        group: u64,
        /// the largest divisor of `k` not above `group` (a multiple of 8 when `k` has one)
        suggested: u64,
    },
    /// A slice passed to a codec does not have the length the other arguments imply.
    #[error("{what}: expected {expected} elements, got {got}")]
    BufferLength {
        /// which argument
        what: &'static str,
        /// the length implied by the other arguments
        expected: u64,
        /// the length supplied
        got: u64,
    },
    /// A parameter is outside its domain (zero row length, non-positive bound, ...).
    #[error("invalid {name}: {detail}")]
    InvalidParameter {
        /// the parameter
        name: &'static str,
        /// what is wrong with it
        detail: String,
    },
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// [`Error::BufferLength`] unless a slice has the length the other arguments imply.
pub(crate) fn check_len(what: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(Error::BufferLength {
            what,
            expected: expected as u64,
            got: got as u64,
        })
    }
}

/// The number of rows of a row-major weight matrix with rows of `k > 0` values: [`Error::BufferLength`]
/// unless `w` holds whole rows, [`Error::NonFinite`] at the first NaN/inf in row-major order.
pub(crate) fn finite_rows(w: &[f32], k: usize) -> Result<usize> {
    debug_assert!(k > 0, "callers check the row length first");
    if w.len() % k != 0 {
        return Err(Error::BufferLength {
            what: "weights (a whole number of rows)",
            expected: (w.len() / k * k) as u64,
            got: w.len() as u64,
        });
    }
    if let Some(i) = w.iter().position(|x| !x.is_finite()) {
        return Err(Error::NonFinite {
            row: (i / k) as u64,
            col: (i % k) as u64,
        });
    }
    Ok(w.len() / k)
}
