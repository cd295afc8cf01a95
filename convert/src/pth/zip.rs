//! The ZIP layer of a `.pth` file (specs/meta.md §2.1).
//!
//! `torch.save` writes an ordinary ZIP archive whose entries are all *stored* (method 0) and live
//! in one top-level folder (`archive/`, `consolidated.00/`, …). We let the `zip` crate find and
//! decode the central directory (end-of-central-directory search, ZIP64 records and extra
//! fields), and nothing more: each entry's data offset is computed from its **local** header,
//! read here from the mapped bytes, because the local extra field (torch pads it so that data is
//! 64-byte aligned) differs from the central one. Every entry must be stored, uncompressed size
//! must equal compressed size, the local name must equal the central name, and the data range
//! must lie inside the file (all in checked `u64` arithmetic). The data is never read or copied
//! here: an entry is just a byte range of the caller's buffer.

use std::collections::HashMap;
use std::io::Cursor;

use super::PthError;

/// Local file header signature `PK\x03\x04`.
const LOCAL_SIGNATURE: u32 = 0x0403_4b50;
/// Central directory file header signature `PK\x01\x02`.
const CENTRAL_SIGNATURE: u32 = 0x0201_4b50;
/// Fixed part of a local file header.
const LOCAL_HEADER_LEN: u64 = 30;
/// Fixed part of a central directory file header.
const CENTRAL_HEADER_LEN: u64 = 46;
/// General-purpose flag bit 0: the entry is encrypted.
const FLAG_ENCRYPTED: u16 = 1;
/// General-purpose flag bit 3: sizes and CRC follow the data in a data descriptor (torch's
/// writer sets it, so local header sizes are zero).
const FLAG_DATA_DESCRIPTOR: u16 = 1 << 3;

/// Where one entry's (stored, uncompressed) bytes lie in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntrySpan {
    /// Absolute byte offset of the first data byte.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

impl EntrySpan {
    /// The entry's bytes within `file` (the buffer the archive was parsed from), or `None` when
    /// the span does not fit `file` (only possible with a different buffer).
    pub fn slice<'a>(&self, file: &'a [u8]) -> Option<&'a [u8]> {
        let start = usize::try_from(self.offset).ok()?;
        let end = start.checked_add(usize::try_from(self.len).ok()?)?;
        file.get(start..end)
    }
}

/// The validated entry table of a torch ZIP archive.
#[derive(Debug, Clone)]
pub struct PthArchive {
    prefix: String,
    /// record name (without the prefix) → span
    entries: HashMap<String, EntrySpan>,
    /// record names in central-directory order
    order: Vec<String>,
}

impl PthArchive {
    /// Read and validate the entry table of the ZIP archive in `file`.
    ///
    /// The archive folder is taken from the first entry's name (everything up to and including
    /// its first `/`); every other entry must live in the same folder. Directory entries (names
    /// ending in `/`, size 0) are skipped.
    pub fn parse(file: &[u8]) -> Result<Self, PthError> {
        // torch writes nothing before the archive: pin the archive offset at 0 so the `zip`
        // crate does not hunt for a displaced central directory through a multi-GB file.
        let config = ::zip::read::Config {
            archive_offset: ::zip::read::ArchiveOffset::Known(0),
        };
        let zip = ::zip::ZipArchive::with_config(config, Cursor::new(file))
            .map_err(|e| PthError::Zip(e.to_string()))?;
        if zip.has_duplicate_names() {
            return Err(PthError::Zip(
                "the central directory lists an entry name twice".into(),
            ));
        }
        if zip.is_empty() {
            return Err(PthError::Zip("the archive has no entries".into()));
        }
        let prefix = {
            let first = zip
                .by_index_data(0)
                .map_err(|e| PthError::Zip(e.to_string()))?;
            let name = String::from_utf8_lossy(first.name_raw());
            let Some(slash) = name.find('/') else {
                return Err(PthError::Zip(format!(
                    "first entry {name:?} is not inside a folder (torch archives keep every record in one)"
                )));
            };
            name[..=slash].to_owned()
        };
        let mut entries = HashMap::with_capacity(zip.len());
        let mut order = Vec::with_capacity(zip.len());
        for index in 0..zip.len() {
            let entry = zip
                .by_index_data(index)
                .map_err(|e| PthError::Zip(e.to_string()))?;
            let raw_name = entry.name_raw();
            let name = std::str::from_utf8(raw_name).map_err(|_| {
                PthError::Zip(format!("entry {index} has a name that is not UTF-8"))
            })?;
            let Some(record) = name.strip_prefix(prefix.as_str()) else {
                return Err(PthError::OutsideFolder {
                    entry: name.to_owned(),
                    prefix: prefix.clone(),
                });
            };
            if entry.encrypted() {
                return Err(PthError::Encrypted {
                    entry: name.to_owned(),
                });
            }
            let central_method = central_method(file, entry.central_header_start(), name)?;
            if central_method != 0 {
                return Err(PthError::NotStored {
                    entry: name.to_owned(),
                    method: central_method,
                });
            }
            let (compressed, size) = (entry.compressed_size(), entry.size());
            if compressed != size {
                return Err(PthError::Zip(format!(
                    "stored entry {name:?} has compressed size {compressed} but size {size}"
                )));
            }
            let offset = local_data_offset(file, entry.header_start(), raw_name, name, compressed)?;
            let end = offset.checked_add(size);
            if end.is_none_or(|end| end > file.len() as u64) {
                return Err(PthError::EntryOutOfBounds {
                    entry: name.to_owned(),
                });
            }
            if record.is_empty() || (record.ends_with('/') && size == 0) {
                continue; // the folder itself, or a sub-folder entry
            }
            entries.insert(record.to_owned(), EntrySpan { offset, len: size });
            order.push(record.to_owned());
        }
        Ok(PthArchive {
            prefix,
            entries,
            order,
        })
    }

    /// The archive folder including its trailing `/`, e.g. `consolidated.00/` or `archive/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The span of record `name` (relative to the folder, e.g. `data.pkl` or `data/0`).
    pub fn entry(&self, name: &str) -> Option<EntrySpan> {
        self.entries.get(name).copied()
    }

    /// Like [`PthArchive::entry`], but a missing record is a [`PthError::MissingEntry`].
    pub fn require(&self, name: &str) -> Result<EntrySpan, PthError> {
        self.entry(name).ok_or_else(|| PthError::MissingEntry {
            entry: name.to_owned(),
        })
    }

    /// Record names (relative to the folder) in central-directory order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.order.iter().map(String::as_str)
    }

    /// Number of records (directory entries excluded).
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// True when the archive holds no records.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// `bytes[offset .. offset + len]` with every step checked.
fn range(bytes: &[u8], offset: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    bytes.get(start..end)
}

/// The compression method of the central directory record at `at` (the `zip` crate has already
/// parsed the record; we only need the raw method number, which it does not expose).
fn central_method(file: &[u8], at: u64, name: &str) -> Result<u16, PthError> {
    let bad = || {
        PthError::Zip(format!(
            "central directory record of {name:?} is unreadable"
        ))
    };
    let h = range(file, at, CENTRAL_HEADER_LEN).ok_or_else(bad)?;
    if u32_at(h, 0) != Some(CENTRAL_SIGNATURE) {
        return Err(bad());
    }
    u16_at(h, 10).ok_or_else(bad)
}

/// Validate the local header at `header_start` against the central record and return the
/// absolute offset of the entry's data.
fn local_data_offset(
    file: &[u8],
    header_start: u64,
    central_name: &[u8],
    name: &str,
    size: u64,
) -> Result<u64, PthError> {
    let out_of_bounds = || PthError::EntryOutOfBounds {
        entry: name.to_owned(),
    };
    let h = range(file, header_start, LOCAL_HEADER_LEN).ok_or_else(out_of_bounds)?;
    if u32_at(h, 0) != Some(LOCAL_SIGNATURE) {
        return Err(PthError::Zip(format!(
            "entry {name:?}: no local header at offset {header_start}"
        )));
    }
    let field = |at| u16_at(h, at).ok_or_else(out_of_bounds);
    let flags = field(6)?;
    let method = field(8)?;
    let name_len = u64::from(field(26)?);
    let extra_len = u64::from(field(28)?);
    if flags & FLAG_ENCRYPTED != 0 {
        return Err(PthError::Encrypted {
            entry: name.to_owned(),
        });
    }
    if method != 0 {
        return Err(PthError::NotStored {
            entry: name.to_owned(),
            method,
        });
    }
    let name_start = header_start
        .checked_add(LOCAL_HEADER_LEN)
        .ok_or_else(out_of_bounds)?;
    let local_name = range(file, name_start, name_len).ok_or_else(out_of_bounds)?;
    if local_name != central_name {
        return Err(PthError::NameMismatch {
            entry: name.to_owned(),
        });
    }
    // Without a data descriptor the local sizes must agree with the central ones, unless they
    // are ZIP64 placeholders (0xFFFFFFFF, the real values then sit in the local ZIP64 extra).
    if flags & FLAG_DATA_DESCRIPTOR == 0 {
        let local_compressed = u32_at(h, 18).ok_or_else(out_of_bounds)?;
        let local_size = u32_at(h, 22).ok_or_else(out_of_bounds)?;
        for local in [local_compressed, local_size] {
            if local != u32::MAX && u64::from(local) != size {
                return Err(PthError::Zip(format!(
                    "entry {name:?}: local header size {local} disagrees with the central directory ({size})"
                )));
            }
        }
    }
    name_start
        .checked_add(name_len)
        .and_then(|o| o.checked_add(extra_len))
        .ok_or_else(out_of_bounds)
}
