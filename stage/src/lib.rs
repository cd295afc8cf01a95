//! Staging and resume for qforge's outputs: the one home of "write it beside, fsync, rename".
//!
//! What an output records about itself is here too: [`notes`] (what a conversion or
//! quantization changed or lost), gated by [`OutputOptions::allow_lossy`] and written into the
//! manifest.
//!
//! Three things use it: the writers of model directories and single files ([`OutputDir`],
//! [`AtomicFile`]), `qforge calibrate`'s per-layer state and `qforge pipeline`'s step state
//! (both [`resume`] records, written with [`write_json_atomic`] / [`write_atomic`]).
//!
//! Every output (a model directory) is built in a staging sibling, `.<name>.qforge-partial`,
//! next to the destination. Each file is written as `<file>.part`, hashed while it is written,
//! fsynced, renamed to its final name inside the staging directory and recorded in
//! `.qforge-progress.json` (itself replaced atomically). When every file is done, a
//! `manifest.json` with the sha256 of each file is written and the staging directory is renamed
//! to the destination in one step. So the destination either does not exist or is complete; an
//! interrupted run leaves only the staging directory, and `--resume` continues from it,
//! re-verifying the hash of every file it keeps.
//!
//! A dry run ([`OutputOptions::dry_run`]) goes through the same code with nothing written:
//! files go to a null sink that counts bytes, tensor data is never produced (the writers record
//! each planned file's size, see [`OutputDir::finish_planned`]), and the manifest is laid out
//! with placeholder hashes of the same length, so every size it reports is exact.
//!
//! Single files ([`AtomicFile`], [`write_atomic`]) are written as a hidden sibling of their
//! destination, fsynced and renamed over it, so a reader sees the old file or the new one.
#![deny(missing_docs)]

mod error;
mod file;
pub mod notes;
mod output;
pub mod resume;

pub use error::{shown, Error, Result};
pub use file::{
    hash_file, staging_path, staging_sibling, sync_dir, write_atomic, write_json_atomic,
    AtomicFile, HashingWriter, Sink, StagedFile,
};
pub use output::{planned_file, FileRecord, OutputDir, OutputOptions, DRY_RUN_SHA256, MANIFEST};
