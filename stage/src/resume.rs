//! Resume records: the small JSON files that say how far an interrupted run got, each tagged
//! by the caller with a key of the inputs and options that run had (a [`Key`]), so a rerun
//! continues only what the same inputs started. Records are replaced atomically
//! ([`crate::write_json_atomic`]), so a kill leaves the previous record or the next, never a
//! torn one.
//!
//! Users: [`crate::OutputDir`]'s `.qforge-progress.json` (finished files by hash), the
//! calibration state (`<output>.qforge-state/state.json`: next layer, by a key of model,
//! samples and method) and the pipeline's `.qforge-pipeline-state.json` (each step's key and
//! status).

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// A resume key: the lower-case hex sha256 of the parts fed to it, in order (the same digest
/// as hashing their concatenation).
#[derive(Debug, Clone, Default)]
pub struct Key(Sha256);

impl Key {
    /// An empty key.
    pub fn new() -> Self {
        Key(Sha256::new())
    }

    /// Feed `part`.
    pub fn update(&mut self, part: impl AsRef<[u8]>) -> &mut Self {
        self.0.update(part.as_ref());
        self
    }

    /// The hex digest.
    pub fn finish(self) -> String {
        hex::encode(self.0.finalize())
    }

    /// The key of one part.
    pub fn of(part: impl AsRef<[u8]>) -> String {
        let mut k = Key::new();
        k.update(part);
        k.finish()
    }
}

/// The record at `path`: `None` when there is none, an error when it is not the JSON of a `T`.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::BadRecord {
            path: path.to_owned(),
            reason: e.to_string(),
        })
}

/// Replace the record at `path` with `value` (pretty JSON, atomically).
pub fn save<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    crate::write_json_atomic(path, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_the_sha256_of_the_concatenated_parts() {
        let mut k = Key::new();
        k.update("hel").update(b"lo");
        let want = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        assert_eq!(k.finish(), want);
        assert_eq!(Key::of("hello"), want);
    }

    #[test]
    fn records_round_trip_and_missing_or_torn_ones_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        assert!(load::<Vec<u32>>(&p).unwrap().is_none());
        save(&p, &vec![1u32, 2, 3]).unwrap();
        assert_eq!(load::<Vec<u32>>(&p).unwrap(), Some(vec![1, 2, 3]));
        assert!(std::fs::read(&p).unwrap().ends_with(b"]\n"));
        std::fs::write(&p, b"[1, 2").unwrap();
        assert!(matches!(load::<Vec<u32>>(&p), Err(Error::BadRecord { .. })));
        // nothing but the record is left beside it
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }
}
