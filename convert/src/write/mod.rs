//! Atomic, resumable, deterministic output.
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

pub mod gguf;
pub mod pth;
pub mod safetensors;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

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

/// Where a staged file's bytes go: the file, or nowhere (a dry run).
#[derive(Debug)]
pub enum Sink {
    /// A real file.
    File {
        /// The open `.part` file.
        file: File,
        /// Bytes handed to the kernel so far.
        written: u64,
        /// Bytes whose writeback to disk has been started (see [`start_writeback`]).
        kicked: u64,
    },
    /// A dry run: bytes are counted and dropped.
    Null,
}

impl Sink {
    fn file(file: File) -> Self {
        Sink::File {
            file,
            written: 0,
            kicked: 0,
        }
    }
}

/// Bytes between two early-writeback requests.
const WRITEBACK_EVERY: u64 = 64 << 20;

/// Ask the kernel to start writing `len` bytes at `offset` of `file` to disk now, without
/// waiting for them. The final `fsync` then finds most of the file already on disk instead of
/// starting all of it at the end: the disk works while qforge computes the next tensors, rather
/// than after. Errors are ignored: this is only a hint, the `fsync` that follows is the check.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: sync_file_range(2) reads only its integer arguments; `file` is open for the
    // duration of the call.
    #[allow(unsafe_code)]
    let _ = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::File {
                file,
                written,
                kicked,
            } => {
                let n = file.write(buf)?;
                *written += n as u64;
                if *written - *kicked >= WRITEBACK_EVERY {
                    start_writeback(file, *kicked, *written - *kicked);
                    *kicked = *written;
                }
                Ok(n)
            }
            Sink::Null => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::File { file, .. } => file.flush(),
            Sink::Null => Ok(()),
        }
    }
}

const PIECE: usize = 1 << 20;

/// A writer that hashes and counts what passes through it.
#[derive(Debug)]
pub struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    /// Wrap `inner`.
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The inner writer and the hex sha256 of everything written.
    pub fn finish(self) -> (W, String, u64) {
        (self.inner, hex::encode(self.hasher.finalize()), self.bytes)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // hash first, then write: the kernel's copy reads the piece from cache
        let piece = &buf[..buf.len().min(PIECE)];
        let mut h = self.hasher.clone();
        h.update(piece);
        let n = self.inner.write(piece)?;
        if n == piece.len() {
            self.hasher = h;
        } else {
            self.hasher.update(&buf[..n]);
        }
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A file being written inside the staging directory (or next to its destination).
///
/// Dropping it before it is finished (an error while writing it, a full disk) deletes the
/// partial file, so a failed run gives its space back; the files finished before it stay in the
/// staging directory for `--resume`.
#[derive(Debug)]
pub struct StagedFile {
    name: String,
    part: PathBuf,
    /// `None` once closed.
    writer: Option<HashingWriter<BufWriter<Sink>>>,
}

fn closed() -> io::Error {
    io::Error::other("write to a closed staged file")
}

impl Write for StagedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.as_mut().ok_or_else(closed)?.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.writer.as_mut().ok_or_else(closed)?.write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.as_mut().ok_or_else(closed)?.flush()
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        if let Some(w) = self.writer.take() {
            // Unfinished: close the handle without flushing more into it, then delete it.
            let (buf, _, _) = w.finish();
            let (file, _) = buf.into_parts();
            drop(file);
            let _ = std::fs::remove_file(&self.part);
        }
    }
}

impl StagedFile {
    fn new(name: String, part: PathBuf) -> Result<Self> {
        let f = File::create(&part).map_err(|e| Error::io(&part, e))?;
        Ok(StagedFile {
            name,
            part,
            writer: Some(HashingWriter::new(BufWriter::with_capacity(
                PIECE,
                Sink::file(f),
            ))),
        })
    }

    /// Flush and fsync the file; returns its name, its `.part` path, sha256 and size. On an
    /// error the partial file is deleted.
    fn close(mut self) -> Result<(String, PathBuf, String, u64)> {
        let writer = self
            .writer
            .take()
            .ok_or_else(|| Error::io(&self.part, closed()))?;
        let name = std::mem::take(&mut self.name);
        let part = self.part.clone();
        let result = Self::sync(writer, &part);
        if result.is_err() {
            let _ = std::fs::remove_file(&part);
        }
        let (sha256, bytes) = result?;
        Ok((name, part, sha256, bytes))
    }

    fn sync(writer: HashingWriter<BufWriter<Sink>>, part: &Path) -> Result<(String, u64)> {
        let (buf, sha256, bytes) = writer.finish();
        let f = buf
            .into_inner()
            .map_err(|e| Error::io(part, e.into_error()))?;
        if let Sink::File { file: f, .. } = f {
            f.sync_all().map_err(|e| Error::io(part, e))?;
        }
        Ok((sha256, bytes))
    }

    /// The path being written (for error messages).
    pub fn path(&self) -> &Path {
        &self.part
    }
}

/// sha256 and size of a file, read in 8 MiB chunks.
pub fn hash_file(path: &Path) -> Result<(String, u64)> {
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 8 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hex::encode(h.finalize()), total))
}

fn sync_dir(dir: &Path) {
    // Directory fsync makes the renames durable; not all platforms support it.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

fn write_json_atomic(path: &Path, value: &impl Serialize) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut text =
        serde_json::to_vec_pretty(value).map_err(|e| Error::io(path, io::Error::other(e)))?;
    text.push(b'\n');
    let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(&text).map_err(|e| Error::io(&tmp, e))?;
    f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Reject names that would escape the output directory.
fn check_name(dest: &Path, name: &str) -> Result<()> {
    let ok = !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\', '\0']);
    if ok {
        Ok(())
    } else {
        Err(Error::io(
            dest,
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad output file name {name:?}"),
            ),
        ))
    }
}

/// The file name of `dest` and its staging sibling `.<name>.qforge-partial`, after refusing an
/// existing destination (unless `overwrite`) and creating the parent directory.
fn staging_sibling(dest: &Path, overwrite: bool) -> Result<(String, PathBuf)> {
    let name = dest.file_name().ok_or_else(|| {
        Error::io(
            dest,
            io::Error::new(io::ErrorKind::InvalidInput, "output path has no file name"),
        )
    })?;
    if dest.exists() && !overwrite {
        return Err(Error::OutputExists {
            path: dest.to_owned(),
        });
    }
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let name = name.to_string_lossy().into_owned();
    let staging = parent.join(format!(".{name}.qforge-partial"));
    Ok((name, staging))
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
        let records: Vec<FileRecord> = std::fs::read(&p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
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
        write_json_atomic(
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

/// The destination of a single output file. [`AtomicFile::create`] returns it with a
/// [`StagedFile`] writing to a temporary sibling (`.<name>.qforge-partial`); [`AtomicFile::commit`]
/// renames that into place once complete, so the destination never holds a partial file.
#[derive(Debug)]
pub struct AtomicFile {
    dest: PathBuf,
}

impl AtomicFile {
    /// Start writing `dest`.
    pub fn create(dest: &Path, overwrite: bool) -> Result<(Self, StagedFile)> {
        let (name, part) = staging_sibling(dest, overwrite)?;
        let file = StagedFile::new(name, part)?;
        Ok((
            AtomicFile {
                dest: dest.to_owned(),
            },
            file,
        ))
    }

    /// Flush and fsync `file`, then rename it into place; returns its size and hash.
    pub fn commit(self, file: StagedFile) -> Result<FileRecord> {
        let (name, part, sha256, bytes) = file.close()?;
        std::fs::rename(&part, &self.dest).map_err(|e| Error::io(&self.dest, e))?;
        if let Some(parent) = self.dest.parent() {
            sync_dir(parent);
        }
        Ok(FileRecord {
            tensor_bytes: 0,
            path: name,
            bytes,
            sha256,
        })
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
