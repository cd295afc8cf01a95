//! One file written in a temporary sibling: hashed while written, fsynced, renamed into place.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::output::FileRecord;

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
    pub(crate) name: String,
    pub(crate) part: PathBuf,
    /// `None` once closed.
    pub(crate) writer: Option<HashingWriter<BufWriter<Sink>>>,
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
    pub(crate) fn new(name: String, part: PathBuf) -> Result<Self> {
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
    pub(crate) fn close(mut self) -> Result<(String, PathBuf, String, u64)> {
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

/// fsync a directory, making the renames in it durable (where the platform supports it).
pub fn sync_dir(dir: &Path) {
    // Directory fsync makes the renames durable; not all platforms support it.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Write `bytes` to `path` atomically: a hidden sibling `.<name>.partial`, fsynced, then
/// renamed over `path` (readers see the old contents or the new, never part of them).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::io(path, io::Error::other("no file name")))?;
    let tmp = path.with_file_name(format!(".{}.partial", name.to_string_lossy()));
    let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let written = f.write_all(bytes).and_then(|()| f.sync_all());
    drop(f);
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(&tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Write `value` as pretty JSON and a newline to `path` atomically ([`write_atomic`]).
pub fn write_json_atomic(path: &Path, value: &impl Serialize) -> Result<()> {
    let mut text =
        serde_json::to_vec_pretty(value).map_err(|e| Error::io(path, io::Error::other(e)))?;
    text.push(b'\n');
    write_atomic(path, &text)
}

/// Reject names that would escape the output directory.
pub(crate) fn check_name(dest: &Path, name: &str) -> Result<()> {
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
pub fn staging_sibling(dest: &Path, overwrite: bool) -> Result<(String, PathBuf)> {
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
    Ok((name.to_string_lossy().into_owned(), staging_path(dest)))
}

/// Where an output `dest` is staged: its sibling `.<name>.qforge-partial` (in `.` when `dest`
/// has no parent). Nothing is touched; [`staging_sibling`] also creates the parent.
pub fn staging_path(dest: &Path) -> PathBuf {
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    parent.join(format!(".{name}.qforge-partial"))
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
