//! Read-only memory maps: the one place in the crate that needs `unsafe`.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A file mapped read-only for the life of a [`crate::Checkpoint`].
#[derive(Debug)]
pub(crate) struct MappedFile {
    pub(crate) path: PathBuf,
    map: Option<memmap2::Mmap>,
}

impl MappedFile {
    /// Map `path` read-only.
    ///
    /// Mapping a file is only memory-safe while no one truncates or rewrites it underneath us
    /// (that would be a SIGBUS or a torn read, not undefined behaviour we can see). qforge never
    /// writes its inputs, and its writers create new files and rename them into place, so a live
    /// map never observes its own output. Users must not modify a model while qforge reads it.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let map = if len == 0 {
            None // mmap(2) rejects empty mappings; an empty file is simply no bytes
        } else {
            // SAFETY: read-only map of a file we only read; see the contract above.
            #[allow(unsafe_code)]
            let map = unsafe { memmap2::MmapOptions::new().map(&file) }
                .map_err(|e| Error::io(path, e))?;
            Some(map)
        };
        Ok(MappedFile {
            path: path.to_owned(),
            map,
        })
    }

    /// Drop this process's mapping of `len` bytes at `offset` (rounded out to whole pages), so
    /// resident-set size follows the tensor being worked on rather than everything read so far.
    /// The pages stay in the page cache; touching them again re-faults them from the file.
    /// Errors are ignored: this only affects memory accounting, never contents.
    pub(crate) fn release(&self, offset: u64, len: u64) {
        #[cfg(unix)]
        if let (Some(map), Ok(offset), Ok(len)) =
            (&self.map, usize::try_from(offset), usize::try_from(len))
        {
            if offset.checked_add(len).is_some_and(|end| end <= map.len()) && len > 0 {
                // SAFETY: `map` is a read-only, shared mapping of a file nobody writes while we
                // read it (see `open`). MADV_DONTNEED on such a mapping discards only our page
                // table entries; a later read faults the same bytes back from the file, so no
                // slice borrowed from the map ever observes different contents.
                #[allow(unsafe_code)]
                let _ = unsafe {
                    map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len)
                };
            }
        }
    }

    /// All bytes of the file.
    pub(crate) fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}
