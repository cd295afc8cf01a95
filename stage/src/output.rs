//! Output directories built in a staging sibling and committed with one rename (see the
//! crate docs).

use std::collections::BTreeMap;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::file::{
    check_name, hash_file, staging_sibling, sync_dir, write_json_atomic, HashingWriter, Sink,
    StagedFile,
};

/// Name of the per-output manifest.
pub const MANIFEST: &str = "manifest.json";
const PROGRESS: &str = ".qforge-progress.json";

/// A finished output file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// File name inside the output directory.
    pub path: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Lower-case hex sha256 of the contents.
    pub sha256: String,
    /// Bytes of tensor data in the file (headers and padding excluded), known for planned
    /// files of a dry run; 0 otherwise. Not part of the manifest.
    #[serde(skip)]
    pub tensor_bytes: u64,
}

/// How to treat an existing destination or staging directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutputOptions {
    /// Continue from a staging directory left by an interrupted run.
    pub resume: bool,
    /// Replace an existing destination.
    pub overwrite: bool,
    /// Write nothing: plan every file and report its exact size (see the module docs).
    pub dry_run: bool,
    /// Write an output that computes something other than the source (see
    /// [`crate::notes::gate`]); the changes are recorded in its manifest.
    pub allow_lossy: bool,
}

/// The sha256 recorded for files of a dry run: as long as a real one, so manifests planned
/// with it have their real size.
pub const DRY_RUN_SHA256: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An output directory being built (see the module docs).
#[derive(Debug)]
pub struct OutputDir {
    dest: PathBuf,
    staging: PathBuf,
    done: BTreeMap<String, FileRecord>,
    /// Files kept from an interrupted run (verified by hash).
    pub resumed: Vec<String>,
    dry_run: bool,
}

impl OutputDir {
    /// Start (or, with `resume`, continue) building `dest`.
    pub fn begin(dest: &Path, opts: OutputOptions) -> Result<Self> {
        if opts.dry_run {
            return Ok(OutputDir {
                dest: dest.to_owned(),
                staging: dest.to_owned(),
                done: BTreeMap::new(),
                resumed: Vec::new(),
                dry_run: true,
            });
        }
        let (_, staging) = staging_sibling(dest, opts.overwrite)?;
        let mut out = OutputDir {
            dest: dest.to_owned(),
            staging,
            done: BTreeMap::new(),
            resumed: Vec::new(),
            dry_run: false,
        };
        if out.staging.exists() {
            if opts.resume {
                out.load_progress()?;
            } else {
                std::fs::remove_dir_all(&out.staging).map_err(|e| Error::io(&out.staging, e))?;
            }
        }
        std::fs::create_dir_all(&out.staging).map_err(|e| Error::io(&out.staging, e))?;
        Ok(out)
    }

    /// Keep the files an interrupted run finished whose contents still match their recorded
    /// hash; drop everything else.
    fn load_progress(&mut self) -> Result<()> {
        let p = self.staging.join(PROGRESS);
        // an unreadable record keeps nothing: every file is redone
        let records: Vec<FileRecord> = crate::resume::load(&p).ok().flatten().unwrap_or_default();
        for r in records {
            if check_name(&self.dest, &r.path).is_err() {
                continue;
            }
            let path = self.staging.join(&r.path);
            if path.is_file() && hash_file(&path)? == (r.sha256.clone(), r.bytes) {
                self.resumed.push(r.path.clone());
                self.done.insert(r.path.clone(), r);
            }
        }
        Ok(())
    }

    /// The staging directory (where files are being written).
    pub fn staging(&self) -> &Path {
        &self.staging
    }

    /// The record of `name` if it is already finished (kept from an interrupted run).
    pub fn finished(&self, name: &str) -> Option<&FileRecord> {
        self.done.get(name)
    }

    /// Whether this is a dry run (nothing is written; see the module docs).
    pub fn is_dry_run(&self) -> bool {
        self.dry_run
    }

    /// Start writing `name`.
    pub fn create(&self, name: &str) -> Result<StagedFile> {
        check_name(&self.dest, name)?;
        let part = self.staging.join(format!("{name}.part"));
        if self.dry_run {
            return Ok(StagedFile {
                name: name.to_owned(),
                part,
                writer: Some(HashingWriter::new(BufWriter::with_capacity(0, Sink::Null))),
            });
        }
        StagedFile::new(name.to_owned(), part)
    }

    /// Record a file of a dry run by its planned size, without producing its bytes.
    ///
    /// # Panics
    /// When this is not a dry run (a caller bug: real files are written with `create`).
    pub fn finish_planned(&mut self, name: &str, bytes: u64, tensor_bytes: u64) -> FileRecord {
        assert!(self.dry_run, "finish_planned outside a dry run");
        let record = FileRecord {
            path: name.to_owned(),
            bytes,
            sha256: DRY_RUN_SHA256.to_owned(),
            tensor_bytes,
        };
        self.done.insert(name.to_owned(), record.clone());
        record
    }

    /// Finish a file: flush, fsync, rename into place and record it.
    pub fn finish(&mut self, file: StagedFile) -> Result<FileRecord> {
        if self.dry_run {
            let (name, _, _, bytes) = file.close()?;
            return Ok(self.finish_planned(&name, bytes, 0));
        }
        let (name, part, sha256, bytes) = file.close()?;
        let final_path = self.staging.join(&name);
        std::fs::rename(&part, &final_path).map_err(|e| Error::io(&final_path, e))?;
        let record = FileRecord {
            tensor_bytes: 0,
            path: name.clone(),
            bytes,
            sha256,
        };
        self.done.insert(name, record.clone());
        crate::resume::save(
            &self.staging.join(PROGRESS),
            &self.done.values().collect::<Vec<_>>(),
        )?;
        Ok(record)
    }

    /// Write a small file in one go.
    pub fn write_file(&mut self, name: &str, contents: &[u8]) -> Result<FileRecord> {
        let mut f = self.create(name)?;
        f.write_all(contents).map_err(|e| Error::io(f.path(), e))?;
        self.finish(f)
    }

    /// Write `manifest.json` (every file with its size and sha256, plus `extra` fields) and move
    /// the finished directory to its destination. A dry run writes nothing and returns the
    /// files with `manifest.json` (its planned size) appended.
    pub fn commit(
        self,
        extra: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Vec<FileRecord>> {
        let files: Vec<FileRecord> = self.done.values().cloned().collect();
        let mut manifest = serde_json::Map::new();
        manifest.insert(
            "generator".into(),
            format!("qforge {}", env!("CARGO_PKG_VERSION")).into(),
        );
        manifest.extend(extra);
        manifest.insert(
            "files".into(),
            serde_json::to_value(&files).map_err(|e| Error::io(&self.dest, io::Error::other(e)))?,
        );
        if self.dry_run {
            let text = serde_json::to_vec_pretty(&manifest)
                .map_err(|e| Error::io(&self.dest, io::Error::other(e)))?;
            let mut files = files;
            files.push(FileRecord {
                tensor_bytes: 0,
                path: MANIFEST.into(),
                bytes: text.len() as u64 + 1,
                sha256: DRY_RUN_SHA256.to_owned(),
            });
            return Ok(files);
        }
        write_json_atomic(&self.staging.join(MANIFEST), &manifest)?;
        let progress = self.staging.join(PROGRESS);
        std::fs::remove_file(&progress).map_err(|e| Error::io(&progress, e))?;
        sync_dir(&self.staging);
        if self.dest.exists() {
            // --overwrite: move the old output aside first so the swap is one rename.
            let old = self.staging.with_extension("qforge-old");
            std::fs::rename(&self.dest, &old).map_err(|e| Error::io(&self.dest, e))?;
            std::fs::rename(&self.staging, &self.dest).map_err(|e| Error::io(&self.dest, e))?;
            if old.is_dir() {
                std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
            } else {
                std::fs::remove_file(&old).map_err(|e| Error::io(&old, e))?;
            }
        } else {
            std::fs::rename(&self.staging, &self.dest).map_err(|e| Error::io(&self.dest, e))?;
        }
        if let Some(parent) = self.dest.parent() {
            sync_dir(parent);
        }
        Ok(files)
    }
}

/// The record of a single-file output of a dry run: its planned size, a placeholder hash.
pub fn planned_file(dest: &Path, bytes: u64, tensor_bytes: u64) -> FileRecord {
    FileRecord {
        tensor_bytes,
        path: dest
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        bytes,
        sha256: DRY_RUN_SHA256.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_appears_only_on_commit_and_resume_keeps_verified_files() {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("out");
        let mut out = OutputDir::begin(&dest, OutputOptions::default()).unwrap();
        out.write_file("a.bin", b"hello").unwrap();
        let mut b = out.create("b.bin").unwrap();
        b.write_all(b"half-writ").unwrap();
        drop(b); // interrupted mid-file
        drop(out);
        assert!(!dest.exists());

        // Corrupt nothing: a.bin is kept, b.bin (never finished) is redone.
        let mut out = OutputDir::begin(
            &dest,
            OutputOptions {
                resume: true,
                overwrite: false,
                dry_run: false,
                allow_lossy: false,
            },
        )
        .unwrap();
        assert_eq!(out.resumed, vec!["a.bin".to_owned()]);
        assert!(out.finished("b.bin").is_none());
        out.write_file("b.bin", b"whole").unwrap();
        let files = out.commit(serde_json::Map::new()).unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(std::fs::read(dest.join("b.bin")).unwrap(), b"whole");
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dest.join(MANIFEST)).unwrap()).unwrap();
        assert_eq!(
            manifest["files"][0]["sha256"],
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert!(!dest.join(PROGRESS).exists());
        assert!(matches!(
            OutputDir::begin(&dest, OutputOptions::default()),
            Err(Error::OutputExists { .. })
        ));
    }

    #[test]
    fn resume_drops_files_whose_hash_changed() {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("out");
        let mut out = OutputDir::begin(&dest, OutputOptions::default()).unwrap();
        out.write_file("a.bin", b"hello").unwrap();
        let staging = out.staging().to_owned();
        drop(out);
        std::fs::write(staging.join("a.bin"), b"HELLO").unwrap();
        let out = OutputDir::begin(
            &dest,
            OutputOptions {
                resume: true,
                overwrite: false,
                dry_run: false,
                allow_lossy: false,
            },
        )
        .unwrap();
        assert!(out.resumed.is_empty());
    }

    #[test]
    fn rejects_escaping_names() {
        let root = tempfile::tempdir().unwrap();
        let out = OutputDir::begin(&root.path().join("o"), OutputOptions::default()).unwrap();
        for bad in ["../x", "a/b", "", ".hidden"] {
            assert!(out.create(bad).is_err(), "{bad}");
        }
    }
}
