//! Torch `.pth` files: a stored ZIP archive holding a pickle (`data.pkl`) and raw storages.
//!
//! TODO(helper): zip + pickle.

/// What is wrong with a `.pth` file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PthError {
    /// Placeholder until the parser lands.
    #[error(".pth parsing not implemented")]
    Unimplemented,
}
