//! Torch `.pth` files: a stored ZIP archive holding a pickle (`data.pkl`) and raw storages
//! (`data/<key>`), as written by `torch.save` (specs/meta.md §2).
//!
//! Reading is three layers, each validating what it is given before the next trusts it:
//!
//! 1. [`zip::PthArchive`] locates every record from the central directory and its local header
//!    (stored only, in bounds, names consistent; ZIP64 included).
//! 2. [`pickle::load`] interprets `data.pkl` with an allowlisted VM that never calls anything.
//! 3. [`parse_state_dict`] checks that the result is a `{name: tensor}` dict, that each storage
//!    record has exactly `numel × element size` bytes, and that each view (offset, shape,
//!    strides) stays inside its storage, and produces [`PthTensor`]s whose layouts are byte
//!    ranges of the file: nothing is copied.

use std::borrow::Cow;
use std::collections::HashSet;
use std::path::Path;

use qforge_codecs::DType;

use crate::checkpoint::{RawTensor, Span, TensorLayout};
use crate::error::{Error, Result};
use crate::mmap::MappedFile;

pub mod pickle;
pub mod zip;

use pickle::{TensorDesc, Value};
use zip::{EntrySpan, PthArchive};

/// What is wrong with a `.pth` file. ZIP-layer variants name entries as the archive spells them
/// (with the folder prefix); pickle variants carry the byte `offset` of the offending opcode in
/// `data.pkl`; state-dict variants name records relative to the folder (`data.pkl`, `data/0`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PthError {
    /// The ZIP structure is unreadable or inconsistent (no end-of-central-directory record,
    /// duplicate names, sizes that disagree, …).
    #[error("invalid ZIP archive: {0}")]
    Zip(String),
    /// An entry is encrypted.
    #[error("ZIP entry {entry:?} is encrypted")]
    Encrypted {
        /// the entry name
        entry: String,
    },
    /// An entry is compressed; torch always stores records uncompressed, and qforge maps them
    /// in place.
    #[error("ZIP entry {entry:?} uses compression method {method}; torch archives store entries uncompressed (method 0)")]
    NotStored {
        /// the entry name
        entry: String,
        /// the ZIP compression method (8 = deflate)
        method: u16,
    },
    /// An entry's local header, name or data reaches past the end of the file.
    #[error("ZIP entry {entry:?} reaches past the end of the file")]
    EntryOutOfBounds {
        /// the entry name
        entry: String,
    },
    /// An entry's local header names a different file than the central directory.
    #[error("ZIP entry {entry:?}: local header name differs from the central directory")]
    NameMismatch {
        /// the name in the central directory
        entry: String,
    },
    /// An entry lies outside the archive's one top-level folder.
    #[error("ZIP entry {entry:?} is outside the archive folder {prefix:?}")]
    OutsideFolder {
        /// the entry name
        entry: String,
        /// the folder taken from the first entry
        prefix: String,
    },
    /// A record the file needs is absent.
    #[error("record {entry:?} is missing from the archive")]
    MissingEntry {
        /// record name inside the archive folder, e.g. `data.pkl` or `data/3`
        entry: String,
    },
    /// The `byteorder` record says `big`; qforge does not byte-swap.
    #[error("big-endian .pth files are not supported")]
    BigEndian,
    /// The `byteorder` record holds something other than `little` or `big`.
    #[error("byteorder record holds {value:?}, expected \"little\"")]
    UnknownByteOrder {
        /// the record's text (clipped)
        value: String,
    },
    /// The pickle names a global outside the allowlist (`os.system`, `builtins.eval`, …).
    #[error("data.pkl offset {offset}: forbidden global {module}.{name} (only torch tensor rebuild functions, storages, dtypes and OrderedDict are allowed)")]
    ForbiddenGlobal {
        /// module part of the name
        module: String,
        /// attribute part of the name
        name: String,
        /// offset of the GLOBAL / STACK_GLOBAL / INST opcode
        offset: u64,
    },
    /// The pickle asks to call, instantiate or set state on something that is not an
    /// allowlisted tensor constructor (`REDUCE`/`NEWOBJ`/`BUILD`/`INST`/`OBJ` abuse).
    #[error("data.pkl offset {offset}: forbidden call: {what}")]
    ForbiddenCall {
        /// what was attempted
        what: String,
        /// offset of the opcode
        offset: u64,
    },
    /// An opcode the interpreter does not implement.
    #[error("data.pkl offset {offset}: unsupported pickle opcode 0x{opcode:02x}")]
    UnsupportedOpcode {
        /// the opcode byte
        opcode: u8,
        /// its offset
        offset: u64,
    },
    /// An opcode popped more values than its stack frame holds.
    #[error("data.pkl offset {offset}: stack underflow")]
    StackUnderflow {
        /// offset of the opcode
        offset: u64,
    },
    /// An opcode that needs a MARK found none.
    #[error("data.pkl offset {offset}: no MARK on the stack")]
    MissingMark {
        /// offset of the opcode
        offset: u64,
    },
    /// The stack or a value's nesting exceeds the interpreter's limits
    /// ([`pickle::MAX_STACK`], [`pickle::MAX_NESTING`]).
    #[error("data.pkl offset {offset}: pickle nests too deeply")]
    TooDeep {
        /// offset of the opcode
        offset: u64,
    },
    /// Another resource limit was hit (memo entries, memo slots of one container, memo
    /// bookkeeping work, container items, tensor dimensions; see the constants of [`pickle`]).
    #[error("data.pkl offset {offset}: too many {what}")]
    LimitExceeded {
        /// the resource
        what: &'static str,
        /// offset of the opcode
        offset: u64,
    },
    /// `BINGET` of a memo slot that was never filled.
    #[error("data.pkl offset {offset}: memo slot {index} is empty")]
    MemoMissing {
        /// the memo index
        index: u32,
        /// offset of the opcode
        offset: u64,
    },
    /// The pickle ends inside an opcode or its operand, a length runs past the end, or there
    /// is no `STOP`.
    #[error("data.pkl offset {offset}: pickle truncated")]
    Truncated {
        /// offset of the opcode being decoded
        offset: u64,
    },
    /// An operand or value of the wrong type or range.
    #[error("data.pkl offset {offset}: {what}")]
    BadValue {
        /// what is wrong
        what: String,
        /// offset of the opcode
        offset: u64,
    },
    /// A storage class qforge has no element format for (complex, quantized).
    #[error("storage type {name} is not supported")]
    UnknownStorage {
        /// e.g. `torch.ComplexFloatStorage`
        name: String,
    },
    /// A tensor dtype qforge has no element format for.
    #[error("tensor dtype {name} is not supported")]
    UnsupportedDType {
        /// e.g. `torch.complex64`
        name: String,
    },
    /// A storage record's size differs from `numel × element size`.
    #[error("storage data/{key} holds {got} bytes, its persistent id implies {expected}")]
    StorageSize {
        /// the storage key
        key: String,
        /// bytes implied by the pickle
        expected: u64,
        /// bytes in the record
        got: u64,
    },
    /// A tensor view reaches past the end of its storage.
    #[error("tensor {tensor:?} reaches past the end of its storage")]
    ViewOutOfBounds {
        /// the tensor name
        tensor: String,
    },
    /// A view with more elements than its storage (overlapping or broadcast strides). Torch
    /// state dicts do not contain these; reading one could expand a few stored bytes without
    /// bound.
    #[error("tensor {tensor:?} has more elements than its storage (overlapping strides)")]
    ExpandedView {
        /// the tensor name
        tensor: String,
    },
    /// The pickle is valid but is not a `{str: tensor}` dict.
    #[error("not a state dict: {reason}")]
    NotAStateDict {
        /// what was found instead
        reason: String,
    },
}

/// A tensor of a `.pth` state dict, with its bytes located in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PthTensor {
    /// The state-dict key.
    pub name: String,
    /// Element format.
    pub dtype: DType,
    /// Shape, outermost first.
    pub shape: Vec<u64>,
    /// Where the bytes are: [`TensorLayout::Contiguous`] or [`TensorLayout::Strided`], with
    /// spans in file `file` as passed to [`parse_state_dict`].
    pub layout: TensorLayout,
}

impl PthTensor {
    /// The tensor's bytes, contiguous and row-major, from `file` (the bytes it was parsed from):
    /// borrowed for contiguous tensors, gathered for strided views.
    pub fn bytes<'a>(&self, file: &'a [u8]) -> std::result::Result<Cow<'a, [u8]>, PthError> {
        layout_bytes(file, self.dtype, &self.shape, &self.layout).ok_or_else(|| {
            PthError::ViewOutOfBounds {
                tensor: self.name.clone(),
            }
        })
    }
}

/// Bytes of a single-file layout (contiguous or strided) as row-major, or `None` if the layout
/// does not fit `file` or is a model-parallel concatenation.
pub(crate) fn layout_bytes<'a>(
    file: &'a [u8],
    dtype: DType,
    shape: &[u64],
    layout: &TensorLayout,
) -> Option<Cow<'a, [u8]>> {
    let esize = usize::try_from(dtype.block_bytes()).ok()?;
    match layout {
        TensorLayout::Contiguous(span) => span_slice(file, span).map(Cow::Borrowed),
        TensorLayout::Strided { storage, strides } => {
            if dtype.is_block() || strides.len() != shape.len() {
                return None;
            }
            let base = span_slice(file, storage)?;
            let numel = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d))?;
            // Bounded by the storage: views never have more elements than their storage.
            if numel.checked_mul(esize as u64)? > storage.len {
                return None;
            }
            let mut out = Vec::with_capacity(usize::try_from(numel).ok()? * esize);
            let mut idx = vec![0u64; shape.len()];
            for _ in 0..numel {
                let elem = idx.iter().zip(strides).try_fold(0u64, |a, (&i, &s)| {
                    i.checked_mul(s).and_then(|x| a.checked_add(x))
                })?;
                let start = usize::try_from(elem).ok()?.checked_mul(esize)?;
                out.extend_from_slice(base.get(start..start.checked_add(esize)?)?);
                for d in (0..shape.len()).rev() {
                    idx[d] += 1;
                    if idx[d] < shape[d] {
                        break;
                    }
                    idx[d] = 0;
                }
            }
            Some(Cow::Owned(out))
        }
        TensorLayout::Concat { .. } => None,
    }
}

fn span_slice<'a>(file: &'a [u8], span: &Span) -> Option<&'a [u8]> {
    EntrySpan {
        offset: span.offset,
        len: span.len,
    }
    .slice(file)
}

/// Parse the `.pth` file in `bytes` as a state dict. Spans in the result name file `file` (an
/// index into the caller's file list).
pub fn parse_state_dict(
    bytes: &[u8],
    file: usize,
) -> std::result::Result<Vec<PthTensor>, PthError> {
    let archive = PthArchive::parse(bytes)?;
    if let Some(order) = archive.entry("byteorder") {
        let text = order
            .slice(bytes)
            .ok_or_else(|| PthError::EntryOutOfBounds {
                entry: "byteorder".into(),
            })?;
        match text {
            b"little" => {}
            b"big" => return Err(PthError::BigEndian),
            other => {
                let value =
                    String::from_utf8_lossy(other.get(..other.len().min(32)).unwrap_or_default())
                        .into_owned();
                return Err(PthError::UnknownByteOrder { value });
            }
        }
    }
    let pkl = archive.require("data.pkl")?;
    let pkl = pkl.slice(bytes).ok_or_else(|| PthError::EntryOutOfBounds {
        entry: "data.pkl".into(),
    })?;
    let top = pickle::load(pkl)?;
    let Value::Dict(dict) = &top else {
        return Err(PthError::NotAStateDict {
            reason: format!("data.pkl holds a {}, not a dict", top.type_name()),
        });
    };
    // Grown as entries pass the checks, not reserved for the dict's length: a hostile dict of
    // a million one-byte entries would otherwise reserve a `PthTensor` for each first.
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (k, v) in &dict.items {
        let Value::Str(name) = k else {
            return Err(PthError::NotAStateDict {
                reason: format!("a key is a {}, not a string", k.type_name()),
            });
        };
        if !seen.insert(name.clone()) {
            return Err(PthError::NotAStateDict {
                reason: format!("key {name:?} appears twice"),
            });
        }
        let Value::Tensor(t) = v else {
            return Err(PthError::NotAStateDict {
                reason: format!("value of {name:?} is a {}, not a tensor", v.type_name()),
            });
        };
        out.push(tensor(&archive, file, name, t)?);
    }
    Ok(out)
}

/// Check one tensor view against its storage record and locate its bytes.
fn tensor(
    archive: &PthArchive,
    file: usize,
    name: &str,
    t: &TensorDesc,
) -> std::result::Result<PthTensor, PthError> {
    let key = &t.storage.key;
    let entry = archive.require(&format!("data/{key}"))?;
    if entry.len != t.storage.nbytes {
        return Err(PthError::StorageSize {
            key: key.clone(),
            expected: t.storage.nbytes,
            got: entry.len,
        });
    }
    let esize = t.dtype.block_bytes();
    let out_of_bounds = || PthError::ViewOutOfBounds {
        tensor: name.to_owned(),
    };
    let numel = t
        .size
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .ok_or_else(out_of_bounds)?;
    let layout = if numel == 0 {
        TensorLayout::Contiguous(Span {
            file,
            offset: entry.offset,
            len: 0,
        })
    } else {
        // Last element reached: offset + Σ (size_i − 1)·stride_i, which must be inside the storage.
        let last = t
            .size
            .iter()
            .zip(&t.stride)
            .try_fold(t.storage_offset, |a, (&d, &s)| {
                (d - 1).checked_mul(s).and_then(|x| a.checked_add(x))
            })
            .ok_or_else(out_of_bounds)?;
        let storage_elems = entry.len / esize;
        if last >= storage_elems {
            return Err(out_of_bounds());
        }
        if numel > storage_elems {
            return Err(PthError::ExpandedView {
                tensor: name.to_owned(),
            });
        }
        // Both fit: storage_offset ≤ last < storage_elems, numel ≤ storage_elems.
        let skip = t.storage_offset * esize;
        let start = entry.offset + skip;
        if is_contiguous(&t.size, &t.stride) {
            TensorLayout::Contiguous(Span {
                file,
                offset: start,
                len: numel * esize,
            })
        } else {
            TensorLayout::Strided {
                storage: Span {
                    file,
                    offset: start,
                    len: entry.len - skip,
                },
                strides: t.stride.clone(),
            }
        }
    };
    Ok(PthTensor {
        name: name.to_owned(),
        dtype: t.dtype,
        shape: t.size.clone(),
        layout,
    })
}

/// Row-major contiguity as torch defines it (strides of size-1 dimensions do not matter).
fn is_contiguous(size: &[u64], stride: &[u64]) -> bool {
    let mut expected = 1u64;
    for (&d, &s) in size.iter().zip(stride).rev() {
        if d != 1 {
            if s != expected {
                return false;
            }
            expected = expected.saturating_mul(d);
        }
    }
    true
}

/// Parse a mapped `.pth` file as a state dict for a [`crate::Checkpoint`]; `index` is its
/// position in the checkpoint's file list.
pub(crate) fn read_state_dict(
    file: &MappedFile,
    index: usize,
) -> std::result::Result<Vec<RawTensor>, PthError> {
    Ok(parse_state_dict(file.bytes(), index)?
        .into_iter()
        .map(|t| RawTensor {
            name: t.name,
            dtype: t.dtype,
            shape: t.shape,
            layout: t.layout,
            file: index,
        })
        .collect())
}

/// A single `.pth` file opened on its own (not as part of a model): its state dict, with the file
/// kept mapped so tensors can be read.
#[derive(Debug)]
pub struct PthFile {
    file: MappedFile,
    tensors: Vec<PthTensor>,
}

impl PthFile {
    /// Map and parse `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = MappedFile::open(path)?;
        let tensors = parse_state_dict(file.bytes(), 0).map_err(|kind| Error::Pth {
            path: path.into(),
            kind,
        })?;
        Ok(PthFile { file, tensors })
    }

    /// The state dict's tensors, in pickle order.
    pub fn tensors(&self) -> &[PthTensor] {
        &self.tensors
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&PthTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The tensor's bytes, contiguous and row-major.
    pub fn bytes(&self, t: &PthTensor) -> Result<Cow<'_, [u8]>> {
        t.bytes(self.file.bytes()).map_err(|kind| Error::Pth {
            path: self.file.path.clone(),
            kind,
        })
    }

    /// The tensor decoded to `f32`, row-major.
    pub fn to_f32(&self, t: &PthTensor) -> Result<Vec<f32>> {
        let bytes = self.bytes(t)?;
        let n = bytes.len() / usize::try_from(t.dtype.block_bytes()).unwrap_or(1).max(1);
        let mut out = vec![0f32; n];
        qforge_codecs::decode_to_f32(t.dtype, &bytes, &mut out).map_err(|source| Error::Codec {
            path: self.file.path.clone(),
            tensor: t.name.clone(),
            source,
        })?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguity_follows_torch() {
        assert!(is_contiguous(&[], &[]));
        assert!(is_contiguous(&[2, 3], &[3, 1]));
        assert!(!is_contiguous(&[3, 2], &[1, 3]));
        // Size-1 dimensions may have any stride.
        assert!(is_contiguous(&[1, 3], &[99, 1]));
        assert!(is_contiguous(&[3, 1], &[1, 7]));
        assert!(!is_contiguous(&[2, 2], &[4, 2]));
    }

    #[test]
    fn strided_gather_and_bounds() {
        let file: Vec<u8> = (0..16).collect();
        let layout = TensorLayout::Strided {
            storage: Span {
                file: 0,
                offset: 4,
                len: 12,
            },
            strides: vec![1, 3],
        };
        // U8 [3, 2] transposed view of a [2, 3] block starting at byte 4.
        let got = layout_bytes(&file, DType::U8, &[3, 2], &layout).unwrap();
        assert_eq!(&*got, &[4, 7, 5, 8, 6, 9]);
        // Spans outside the buffer and more elements than the storage are refused.
        let past = TensorLayout::Contiguous(Span {
            file: 0,
            offset: 10,
            len: 7,
        });
        assert!(layout_bytes(&file, DType::U8, &[7], &past).is_none());
        let expanded = TensorLayout::Strided {
            storage: Span {
                file: 0,
                offset: 0,
                len: 1,
            },
            strides: vec![0],
        };
        assert!(layout_bytes(&file, DType::U8, &[1 << 40], &expanded).is_none());
    }
}
