//! The crate's error type: every error names its file.

use std::path::PathBuf;

/// Errors from staging, committing and resuming outputs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system error on a file.
    #[error("{}: {source}", shown(path))]
    Io {
        /// the file or directory
        path: PathBuf,
        /// what the OS said
        source: std::io::Error,
    },
    /// The output path exists and overwriting was not asked for.
    #[error(
        "{}: output already exists (pass --overwrite to replace it, or choose another path)",
        shown(path)
    )]
    OutputExists {
        /// the destination
        path: PathBuf,
    },
    /// The output would change what the model computes and that was not allowed
    /// ([`crate::notes::gate`]).
    #[error("refused: the output would compute something other than the source:\n  - {}\npass --allow-lossy to write it anyway (the changes are recorded in the output)", changes.join("\n  - "))]
    Lossy {
        /// each change, with how to keep what it loses
        changes: Vec<String>,
    },
    /// A resume record that is not the JSON its reader expects.
    #[error("{}: unreadable resume record: {reason}", shown(path))]
    BadRecord {
        /// the record's file
        path: PathBuf,
        /// what the JSON parser said
        reason: String,
    },
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// A path as error messages show it: absolute (the working directory joined to a relative
/// one, symlinks kept), so the message names the file wherever the user reads it.
pub fn shown(path: &std::path::Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_owned())
        .display()
        .to_string()
}
