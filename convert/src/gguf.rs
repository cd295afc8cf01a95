//! GGUF v2/v3 reader (specs/gguf.md §1).
//!
//! [`parse`] is a pure function over the file's bytes: it validates the header, the key/value
//! metadata and every tensor info before anything is trusted, and returns the metadata plus one
//! [`GgufTensorInfo`] per tensor. [`read`] maps a file, parses it and assembles a
//! [`Checkpoint`].
//!
//! # What is checked
//!
//! The limits are ggml's (`ggml/src/gguf.cpp`, `gguf_init_from_file_impl`), plus the stricter
//! checks a converter should make:
//!
//! - magic `GGUF`; version 2 or 3 (v1 had 32-bit counts); byte-swapped (big-endian) files are
//!   recognized by `(version & 0xFFFF) == 0` and refused, as ggml does.
//! - every declared count and length is checked against the bytes left in the file *before*
//!   anything is allocated from it (a key/value pair takes at least 13 bytes, a tensor info 24,
//!   an array element its fixed size or 8 for a string), and strings and arrays are capped at
//!   2^30 bytes/elements like ggml's `GGUF_MAX_STRING_LENGTH` / `GGUF_MAX_ARRAY_ELEMENTS`.
//!   `kv_count` is capped at [`MAX_KV_COUNT`] (2^16) and `tensor_count` at [`MAX_TENSOR_COUNT`]
//!   (2^20), far above real models (ggml has no such caps).
//! - strings are strict UTF-8 (gguf-py decodes strictly; ggml does not check). Keys and tensor
//!   names must not contain NUL: ggml handles them as C strings, so `"a\0b"` would be `"a"` there
//!   and two readers would disagree about which key or tensor is which.
//! - keys are non-empty (ggml aborts on an empty key) and unique; value types are 0..=12;
//!   arrays do not nest; bools are 0 or 1 (ggml reads any non-zero byte as true, but no writer
//!   produces one, so another value means a corrupt or crafted file and is refused).
//! - `general.alignment`, if present, is a `u32` holding a non-zero power of two (ggml asserts
//!   the type and checks the value); default 32.
//! - tensor names are at most 63 bytes (`GGML_MAX_NAME` = 64 with the NUL) and unique; at most 4
//!   dimensions (`GGML_MAX_DIMS`; 0 dimensions is a scalar, as in ggml), each read as `i64` and
//!   non-negative, with an element count that fits `i64`; a ggml type id known to
//!   [`DType::from_ggml`] (removed ids 4, 5, 31–33, 36–38 are rejected); `ne[0]` a whole number
//!   of blocks; a byte size that fits `usize`.
//! - tensor data in info order, contiguous and padded: `info[i].offset` must equal
//!   `Σ_{k<i} align_up(nbytes_k, A)` exactly (ggml: "tensor has offset X, expected Y"), which
//!   also rules out overlaps; each offset a multiple of `A`; and every tensor's bytes inside the
//!   file. The blob starts at the aligned end of the tensor infos when there are tensors, right
//!   after them otherwise (ggml).
//!
//! Keys and tensor names are checked for duplicates once all key/values (then all tensor infos)
//! have been read, so a file with a repeated key *and* a malformed later entry reports the later
//! entry; of several repeats, the first in file order is reported.
//!
//! Padding bytes are not required to be zero and bytes after the last tensor are allowed (ggml
//! checks neither). All arithmetic on file values is checked; nothing here can panic on file
//! data.
//!
//! # Memory
//!
//! Values are stored compactly: a scalar array as a vector of its Rust type, a string array as
//! one [`StringArray`], so strings and arrays never take more memory than their bytes in the
//! file. On top of those, each key/value pair costs at most 72 bytes (its `(String,
//! GgufValue)` plus 8 for the duplicate check) and each tensor info 88 (its
//! [`GgufTensorInfo`] plus 8); both are reserved from the declared counts, which is why those
//! are capped. So [`parse`] allocates at most about
//!
//! `file size + 72 × kv_count + 88 × tensor_count` ≤ file size + 4.5 MiB + 88 MiB,
//!
//! whatever the file declares. For real models that overhead is small (SmolLM2-135M, a 94 MiB
//! file: 1.7 MiB allocated in all, most of it the vocabulary); only a file of nothing but tiny
//! key/values (13 bytes each at least) or tensor infos (24) can make it exceed the file size, by
//! at most about 5.5 and 3.7 times respectively (measured in `tests/gguf_alloc.rs`).

use std::path::Path;

use qforge_codecs::DType;
use serde::Serialize;

use crate::checkpoint::{Checkpoint, Format, RawTensor, Span, TensorLayout, TokenizerInfo};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::mmap::MappedFile;
use crate::names::{FfnProj, LayerTensor, NameScheme, TensorId, TensorKey};

/// The four magic bytes at the start of every GGUF file.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// Data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u32 = 32;
/// The metadata key that sets the data alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// Longest string accepted, in bytes (ggml's `GGUF_MAX_STRING_LENGTH`).
pub const MAX_STRING_LEN: u64 = 1 << 30;
/// Most elements accepted in one metadata array (ggml's `GGUF_MAX_ARRAY_ELEMENTS`).
pub const MAX_ARRAY_LEN: u64 = 1 << 30;
/// Most key/value pairs accepted (`kv_count`).
///
/// ggml has no such cap, but each pair costs 72 bytes of memory (key `String` plus
/// [`GgufValue`], and 8 for the duplicate check) however few bytes it takes in the file (13 at
/// least), so a file of nothing but tiny pairs makes the reader use several times its own size.
/// Real models have a few dozen keys (Llama 3.1 405B: about 40; vocabularies and per-layer
/// values are arrays, one key each), so 2^16 = 65,536 is over a thousand times what is needed,
/// and bounds that overhead to 72 × 2^16 bytes = 4.5 MiB.
pub const MAX_KV_COUNT: u64 = 1 << 16;
/// Most tensors accepted (`tensor_count`).
///
/// ggml has no such cap; the reason is the one for [`MAX_KV_COUNT`]: each [`GgufTensorInfo`]
/// costs 88 bytes of memory beyond its name and dimensions (with 8 for the duplicate check), for
/// at least 24 in the file. Real models have about a thousand tensors (Llama 3.1 405B: 1,138;
/// old GGUFs with one tensor per MoE expert a few thousand), so 2^20 = 1,048,576 is far above
/// any real file, and keeps that overhead below 88 × 2^20 bytes = 88 MiB (for a file of at
/// least 24 MiB).
pub const MAX_TENSOR_COUNT: u64 = 1 << 20;
/// Most dimensions a tensor may have (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;
/// Longest tensor name accepted, in bytes (ggml's `GGML_MAX_NAME` less its NUL).
pub const MAX_NAME_LEN: usize = 63;

/// Fewest bytes a key/value pair can take: empty key (8) + value type (4) + a `u8` value (1).
const MIN_KV_BYTES: u64 = 13;
/// Fewest bytes a tensor info can take: empty name (8) + `n_dims` (4) + type (4) + offset (8).
const MIN_TENSOR_INFO_BYTES: u64 = 24;
/// File offset of the `tensor_count` field.
const TENSOR_COUNT_OFFSET: u64 = 8;
/// File offset of the `kv_count` field.
const KV_COUNT_OFFSET: u64 = 16;

/// A GGUF metadata value type (`gguf_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GgufType {
    /// 0
    U8,
    /// 1
    I8,
    /// 2
    U16,
    /// 3
    I16,
    /// 4
    U32,
    /// 5
    I32,
    /// 6
    F32,
    /// 7
    Bool,
    /// 8
    String,
    /// 9
    Array,
    /// 10
    U64,
    /// 11
    I64,
    /// 12
    F64,
}

impl GgufType {
    /// The type for a `gguf_type` id as stored in files, if it is one of 0..=12.
    pub const fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => GgufType::U8,
            1 => GgufType::I8,
            2 => GgufType::U16,
            3 => GgufType::I16,
            4 => GgufType::U32,
            5 => GgufType::I32,
            6 => GgufType::F32,
            7 => GgufType::Bool,
            8 => GgufType::String,
            9 => GgufType::Array,
            10 => GgufType::U64,
            11 => GgufType::I64,
            12 => GgufType::F64,
            _ => return None,
        })
    }

    /// The `gguf_type` id stored in files.
    pub const fn id(self) -> u32 {
        match self {
            GgufType::U8 => 0,
            GgufType::I8 => 1,
            GgufType::U16 => 2,
            GgufType::I16 => 3,
            GgufType::U32 => 4,
            GgufType::I32 => 5,
            GgufType::F32 => 6,
            GgufType::Bool => 7,
            GgufType::String => 8,
            GgufType::Array => 9,
            GgufType::U64 => 10,
            GgufType::I64 => 11,
            GgufType::F64 => 12,
        }
    }

    /// Fewest bytes one value of this type occupies in a file: its size for fixed-size types,
    /// the 8-byte length prefix for strings, and the 12-byte element type + count for arrays.
    pub const fn min_size(self) -> u64 {
        match self {
            GgufType::U8 | GgufType::I8 | GgufType::Bool => 1,
            GgufType::U16 | GgufType::I16 => 2,
            GgufType::U32 | GgufType::I32 | GgufType::F32 => 4,
            GgufType::U64 | GgufType::I64 | GgufType::F64 | GgufType::String => 8,
            GgufType::Array => 12,
        }
    }
}

/// A GGUF metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// u8
    U8(u8),
    /// i8
    I8(i8),
    /// u16
    U16(u16),
    /// i16
    I16(i16),
    /// u32
    U32(u32),
    /// i32
    I32(i32),
    /// f32
    F32(f32),
    /// bool
    Bool(bool),
    /// UTF-8 string
    String(String),
    /// Array of one element type (never nested), stored compactly by element type.
    Array(GgufArray),
    /// u64
    U64(u64),
    /// i64
    I64(i64),
    /// f64
    F64(f64),
}

impl GgufValue {
    /// The value's type tag.
    pub fn ty(&self) -> GgufType {
        match self {
            GgufValue::U8(_) => GgufType::U8,
            GgufValue::I8(_) => GgufType::I8,
            GgufValue::U16(_) => GgufType::U16,
            GgufValue::I16(_) => GgufType::I16,
            GgufValue::U32(_) => GgufType::U32,
            GgufValue::I32(_) => GgufType::I32,
            GgufValue::F32(_) => GgufType::F32,
            GgufValue::Bool(_) => GgufType::Bool,
            GgufValue::String(_) => GgufType::String,
            GgufValue::Array(..) => GgufType::Array,
            GgufValue::U64(_) => GgufType::U64,
            GgufValue::I64(_) => GgufType::I64,
            GgufValue::F64(_) => GgufType::F64,
        }
    }

    /// Any non-negative integer value as `u64`.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any float value (or integer, exactly representable) as `f64`.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The string, for string values.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The elements, for array values.
    pub fn as_array(&self) -> Option<&GgufArray> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// The elements of a metadata array, one vector per element type.
///
/// Each element takes the memory of its Rust type, which is exactly its size in the file for
/// the fixed-size types (a `bool` is one byte in both), and strings are packed into one
/// [`StringArray`]. So an array never takes more memory than the file bytes it was read from,
/// whatever its length (a `Vec` of a 32-byte enum per element would take up to 32 times more).
#[derive(Debug, Clone, PartialEq)]
pub enum GgufArray {
    /// `u8` elements
    U8(Vec<u8>),
    /// `i8` elements
    I8(Vec<i8>),
    /// `u16` elements
    U16(Vec<u16>),
    /// `i16` elements
    I16(Vec<i16>),
    /// `u32` elements
    U32(Vec<u32>),
    /// `i32` elements
    I32(Vec<i32>),
    /// `f32` elements (bit patterns preserved, NaN payloads included)
    F32(Vec<f32>),
    /// `bool` elements
    Bool(Vec<bool>),
    /// UTF-8 string elements
    String(StringArray),
    /// `u64` elements
    U64(Vec<u64>),
    /// `i64` elements
    I64(Vec<i64>),
    /// `f64` elements (bit patterns preserved)
    F64(Vec<f64>),
}

impl GgufArray {
    /// The element type (never [`GgufType::Array`]).
    pub fn elem_type(&self) -> GgufType {
        match self {
            GgufArray::U8(_) => GgufType::U8,
            GgufArray::I8(_) => GgufType::I8,
            GgufArray::U16(_) => GgufType::U16,
            GgufArray::I16(_) => GgufType::I16,
            GgufArray::U32(_) => GgufType::U32,
            GgufArray::I32(_) => GgufType::I32,
            GgufArray::F32(_) => GgufType::F32,
            GgufArray::Bool(_) => GgufType::Bool,
            GgufArray::String(_) => GgufType::String,
            GgufArray::U64(_) => GgufType::U64,
            GgufArray::I64(_) => GgufType::I64,
            GgufArray::F64(_) => GgufType::F64,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            GgufArray::U8(v) => v.len(),
            GgufArray::I8(v) => v.len(),
            GgufArray::U16(v) => v.len(),
            GgufArray::I16(v) => v.len(),
            GgufArray::U32(v) => v.len(),
            GgufArray::I32(v) => v.len(),
            GgufArray::F32(v) => v.len(),
            GgufArray::Bool(v) => v.len(),
            GgufArray::String(v) => v.len(),
            GgufArray::U64(v) => v.len(),
            GgufArray::I64(v) => v.len(),
            GgufArray::F64(v) => v.len(),
        }
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An array of strings held as one allocation of text plus one of end offsets: element `i` is
/// `text[ends[i - 1]..ends[i]]` (from 0 for the first).
///
/// Memory is the strings' bytes plus 8 bytes per element, never more than the file bytes the
/// array was read from (each element there is an 8-byte length prefix and its bytes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StringArray {
    /// All elements concatenated.
    text: Box<str>,
    /// One past the last byte of each element in `text`, non-decreasing, each on a char
    /// boundary.
    ends: Box<[u64]>,
}

impl StringArray {
    /// Number of strings.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are no strings.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// String `i`, if `i < len()`.
    pub fn get(&self, i: usize) -> Option<&str> {
        let start = match i.checked_sub(1) {
            None => 0,
            Some(prev) => *self.ends.get(prev)?,
        };
        let end = *self.ends.get(i)?;
        self.text
            .get(usize::try_from(start).ok()?..usize::try_from(end).ok()?)
    }

    /// The strings in order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &str> + ExactSizeIterator + '_ {
        // `get` cannot fail for an index below `len()`; `ends` is built that way.
        (0..self.len()).map(|i| self.get(i).unwrap_or_default())
    }
}

impl<S: AsRef<str>> FromIterator<S> for StringArray {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        let mut text = String::new();
        let mut ends = Vec::new();
        for s in iter {
            text.push_str(s.as_ref());
            ends.push(text.len() as u64);
        }
        StringArray {
            text: text.into_boxed_str(),
            ends: ends.into_boxed_slice(),
        }
    }
}

/// The key/value metadata of a GGUF file, in file order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GgufMetadata {
    /// GGUF version (2 or 3).
    pub version: u32,
    /// Entries in file order; keys are unique.
    pub entries: Vec<(String, GgufValue)>,
    /// Data alignment (`general.alignment`, default 32).
    pub alignment: u64,
    /// Absolute file offset of the tensor data blob.
    pub data_offset: u64,
}

impl GgufMetadata {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

/// One tensor info of a GGUF file, validated: its bytes lie inside the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTensorInfo {
    /// Tensor name (UTF-8, at most [`MAX_NAME_LEN`] bytes, no NUL).
    pub name: String,
    /// Dimensions in GGUF order: `ne[0]` first, the innermost (contiguous) one. Empty for a
    /// 0-dimensional (scalar) tensor.
    pub ne: Vec<u64>,
    /// Element format.
    pub dtype: DType,
    /// Offset of the first byte relative to the data blob ([`GgufMetadata::data_offset`]).
    pub offset: u64,
    /// Absolute file offset of the first byte.
    pub absolute_offset: u64,
    /// Byte size of the data (without padding).
    pub nbytes: u64,
}

impl GgufTensorInfo {
    /// The shape outermost first (PyTorch order): `ne` reversed.
    pub fn shape(&self) -> Vec<u64> {
        self.ne.iter().rev().copied().collect()
    }

    /// Element count (1 for a scalar).
    pub fn numel(&self) -> u64 {
        // Validated by `parse` to fit in i64.
        self.ne.iter().product()
    }
}

/// What is wrong with a GGUF file. Offsets are absolute byte offsets in the file, of the field
/// at fault (for a string: of its length prefix).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    /// The file does not start with the magic bytes `GGUF`.
    #[error("bad magic {found:02x?}, expected \"GGUF\"")]
    BadMagic {
        /// the first four bytes of the file
        found: [u8; 4],
    },
    /// The version field is byte-swapped: the file was written big-endian, and only
    /// little-endian GGUF is supported.
    #[error(
        "version field {version:#010x} is byte-swapped: big-endian GGUF files are not supported"
    )]
    BigEndian {
        /// the version field as read little-endian (`0x0300_0000` for a big-endian v3 file)
        version: u32,
    },
    /// A GGUF version other than 2 or 3 (v1 used 32-bit counts and is obsolete).
    #[error("unsupported GGUF version {version} (only 2 and 3 are supported)")]
    UnsupportedVersion {
        /// the version in the file
        version: u32,
    },
    /// The file ends in the middle of a field, or before the padding that precedes the data.
    #[error("file truncated: {need} bytes needed at offset {offset}")]
    Truncated {
        /// where the field starts
        offset: u64,
        /// bytes the field needs
        need: u64,
    },
    /// A count that cannot be right: its items would take more bytes than are left in the file,
    /// or it is above its cap (ggml's 2^30 for array elements, [`MAX_KV_COUNT`],
    /// [`MAX_TENSOR_COUNT`]).
    #[error(
        "{what} {count} at offset {offset} is larger than the file can hold (truncated or corrupt)"
    )]
    CountTooLarge {
        /// which count: `"tensor_count"`, `"kv_count"` or `"array elements"`
        what: &'static str,
        /// the count in the file
        count: u64,
        /// where the count field is
        offset: u64,
    },
    /// A string's declared length is above ggml's 2^30-byte cap or longer than the rest of
    /// the file.
    #[error(
        "string at offset {offset} declares {len} bytes, more than the file holds or the 2^30 cap (truncated or corrupt)"
    )]
    StringTooLong {
        /// the declared length
        len: u64,
        /// where the string's length prefix is
        offset: u64,
    },
    /// A string (key, value or tensor name) that is not valid UTF-8.
    #[error("string at offset {offset} is not valid UTF-8")]
    InvalidUtf8 {
        /// where the string's length prefix is
        offset: u64,
    },
    /// A key or tensor name containing a NUL byte (ggml would cut it short there).
    #[error("key or tensor name at offset {offset} contains a NUL byte")]
    EmbeddedNul {
        /// where the string's length prefix is
        offset: u64,
    },
    /// A metadata key that is the empty string.
    #[error("empty metadata key at offset {offset}")]
    EmptyKey {
        /// where the key is
        offset: u64,
    },
    /// The same metadata key appears twice.
    #[error("duplicate metadata key {key:?} at offset {offset}")]
    DuplicateKey {
        /// the key
        key: String,
        /// where its second occurrence is
        offset: u64,
    },
    /// A value type (or array element type) outside 0..=12.
    #[error("invalid value type {ty} at offset {offset}")]
    BadValueType {
        /// the type id in the file
        ty: u32,
        /// where the type field is
        offset: u64,
    },
    /// An array whose element type is itself an array (ggml rejects nested arrays).
    #[error("nested array at offset {offset}")]
    NestedArray {
        /// where the element type field is
        offset: u64,
    },
    /// A bool value other than 0 or 1.
    #[error("bool value {value} at offset {offset} is neither 0 nor 1")]
    BadBool {
        /// the byte in the file
        value: u8,
        /// where it is
        offset: u64,
    },
    /// `general.alignment` is not a non-zero power of two.
    #[error("general.alignment {value} is not a non-zero power of two")]
    BadAlignment {
        /// the value in the file
        value: u32,
    },
    /// `general.alignment` is not a `u32` (ggml asserts the type).
    #[error("general.alignment has type {ty:?}, expected u32")]
    BadAlignmentType {
        /// the type in the file
        ty: GgufType,
    },
    /// A tensor name longer than 63 bytes.
    #[error("tensor name {tensor:?} is {} bytes, more than 63", tensor.len())]
    NameTooLong {
        /// the name
        tensor: String,
    },
    /// The same tensor name appears twice.
    #[error("duplicate tensor name {name:?}")]
    DuplicateTensor {
        /// the name
        name: String,
    },
    /// A tensor with more than 4 dimensions.
    #[error("tensor {tensor:?} has {n_dims} dimensions, more than 4")]
    TooManyDims {
        /// the tensor
        tensor: String,
        /// its dimension count
        n_dims: u32,
    },
    /// A dimension that is negative when read as `i64`.
    #[error("tensor {tensor:?} dimension {dim} is negative ({value})")]
    NegativeDim {
        /// the tensor
        tensor: String,
        /// which dimension (GGUF order, 0 = innermost)
        dim: u32,
        /// the value as `i64`
        value: i64,
    },
    /// A tensor whose element count overflows `i64`, or whose byte size overflows `u64` or
    /// this machine's address space.
    #[error("tensor {tensor:?} is too large: its element count or byte size overflows")]
    DimOverflow {
        /// the tensor
        tensor: String,
    },
    /// A ggml type id that is unknown or removed.
    #[error("tensor {tensor:?} has unknown ggml type {type_id}")]
    UnknownType {
        /// the tensor
        tensor: String,
        /// the type id in the file
        type_id: u32,
    },
    /// A row length (`ne[0]`) that is not a whole number of blocks of the tensor's type.
    #[error(
        "tensor {tensor:?} has rows of {ne0} elements, not a multiple of its block size {block}"
    )]
    PartialBlock {
        /// the tensor
        tensor: String,
        /// `ne[0]` (1 for a scalar)
        ne0: u64,
        /// the type's block size
        block: u64,
    },
    /// A tensor offset that is not a multiple of the alignment.
    #[error("tensor {tensor:?} has offset {offset}, not a multiple of the alignment")]
    BadOffset {
        /// the tensor
        tensor: String,
        /// its offset relative to the data blob
        offset: u64,
    },
    /// A tensor offset other than the end of the previous tensor padded to the alignment: the
    /// data is out of info order, overlaps, or has gaps.
    #[error("tensor {tensor:?} has offset {got}, expected {expected} (data must follow info order, contiguous and padded)")]
    OffsetMismatch {
        /// the tensor
        tensor: String,
        /// the offset ggml requires
        expected: u64,
        /// the offset in the file
        got: u64,
    },
    /// A tensor whose data runs past the end of the file.
    #[error(
        "file truncated: tensor {tensor:?} data ends at byte {end}, past the end of the file ({file_len} bytes)"
    )]
    DataPastEof {
        /// the tensor
        tensor: String,
        /// absolute offset one past its last byte (saturated at `u64::MAX`)
        end: u64,
        /// the file length
        file_len: u64,
    },
}

/// A bounds-checked little-endian reader over the file's bytes.
#[derive(Clone)]
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn offset(&self) -> u64 {
        self.pos as u64
    }

    fn remaining(&self) -> u64 {
        self.buf.len().saturating_sub(self.pos) as u64
    }

    fn take(&mut self, n: u64) -> std::result::Result<&'a [u8], GgufError> {
        let truncated = GgufError::Truncated {
            offset: self.offset(),
            need: n,
        };
        let bytes = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .and_then(|end| Some((end, self.buf.get(self.pos..end)?)));
        let (end, bytes) = bytes.ok_or(truncated)?;
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> std::result::Result<[u8; N], GgufError> {
        let at = self.offset();
        let bytes = self.take(N as u64)?;
        <[u8; N]>::try_from(bytes).map_err(|_| GgufError::Truncated {
            offset: at,
            need: N as u64,
        })
    }

    fn u8(&mut self) -> std::result::Result<u8, GgufError> {
        Ok(u8::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> std::result::Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> std::result::Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn i64(&mut self) -> std::result::Result<i64, GgufError> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    /// A length-prefixed UTF-8 string, borrowed from the buffer.
    fn str(&mut self) -> std::result::Result<&'a str, GgufError> {
        let offset = self.offset();
        let len = self.u64()?;
        if len > MAX_STRING_LEN || len > self.remaining() {
            return Err(GgufError::StringTooLong { len, offset });
        }
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).map_err(|_| GgufError::InvalidUtf8 { offset })
    }

    /// Check that `count` items of at least `min_size` bytes each can fit in the rest of the
    /// file (and that `count` is at most `cap`), so that allocating `count` items is bounded by
    /// the file size. Returns `count` as `usize`.
    fn check_count(
        &self,
        what: &'static str,
        count: u64,
        min_size: u64,
        cap: u64,
        offset: u64,
    ) -> std::result::Result<usize, GgufError> {
        let fits = count <= cap
            && count
                .checked_mul(min_size)
                .is_some_and(|b| b <= self.remaining());
        fits.then(|| usize::try_from(count).ok())
            .flatten()
            .ok_or(GgufError::CountTooLarge {
                what,
                count,
                offset,
            })
    }

    /// One value of a non-array type.
    fn scalar(&mut self, ty: GgufType) -> std::result::Result<GgufValue, GgufError> {
        Ok(match ty {
            GgufType::U8 => GgufValue::U8(self.u8()?),
            GgufType::I8 => GgufValue::I8(i8::from_le_bytes(self.array()?)),
            GgufType::U16 => GgufValue::U16(u16::from_le_bytes(self.array()?)),
            GgufType::I16 => GgufValue::I16(i16::from_le_bytes(self.array()?)),
            GgufType::U32 => GgufValue::U32(self.u32()?),
            GgufType::I32 => GgufValue::I32(i32::from_le_bytes(self.array()?)),
            GgufType::F32 => GgufValue::F32(f32::from_le_bytes(self.array()?)),
            GgufType::Bool => {
                let offset = self.offset();
                match self.u8()? {
                    0 => GgufValue::Bool(false),
                    1 => GgufValue::Bool(true),
                    value => return Err(GgufError::BadBool { value, offset }),
                }
            }
            GgufType::String => GgufValue::String(self.str()?.to_owned()),
            GgufType::U64 => GgufValue::U64(self.u64()?),
            GgufType::I64 => GgufValue::I64(self.i64()?),
            GgufType::F64 => GgufValue::F64(f64::from_le_bytes(self.array()?)),
            GgufType::Array => {
                // Unreachable from `value`, which handles arrays; refuse rather than recurse.
                return Err(GgufError::NestedArray {
                    offset: self.offset(),
                });
            }
        })
    }

    /// One value of type `ty`; arrays hold scalars only.
    fn value(&mut self, ty: GgufType) -> std::result::Result<GgufValue, GgufError> {
        if ty == GgufType::Array {
            Ok(GgufValue::Array(self.array_value()?))
        } else {
            self.scalar(ty)
        }
    }

    /// An array value: element type, count, elements. Each vector is allocated once, at its
    /// exact size, after the count has been checked against the bytes left.
    fn array_value(&mut self) -> std::result::Result<GgufArray, GgufError> {
        let ty_offset = self.offset();
        let id = self.u32()?;
        let elem = GgufType::from_id(id).ok_or(GgufError::BadValueType {
            ty: id,
            offset: ty_offset,
        })?;
        if elem == GgufType::Array {
            return Err(GgufError::NestedArray { offset: ty_offset });
        }
        let count_offset = self.offset();
        let count = self.u64()?;
        let n = self.check_count(
            "array elements",
            count,
            elem.min_size(),
            MAX_ARRAY_LEN,
            count_offset,
        )?;
        Ok(match elem {
            GgufType::U8 => GgufArray::U8(self.take(n as u64)?.to_vec()),
            GgufType::I8 => GgufArray::I8(self.fixed(n, i8::from_le_bytes)?),
            GgufType::U16 => GgufArray::U16(self.fixed(n, u16::from_le_bytes)?),
            GgufType::I16 => GgufArray::I16(self.fixed(n, i16::from_le_bytes)?),
            GgufType::U32 => GgufArray::U32(self.fixed(n, u32::from_le_bytes)?),
            GgufType::I32 => GgufArray::I32(self.fixed(n, i32::from_le_bytes)?),
            GgufType::F32 => GgufArray::F32(self.fixed(n, f32::from_le_bytes)?),
            GgufType::U64 => GgufArray::U64(self.fixed(n, u64::from_le_bytes)?),
            GgufType::I64 => GgufArray::I64(self.fixed(n, i64::from_le_bytes)?),
            GgufType::F64 => GgufArray::F64(self.fixed(n, f64::from_le_bytes)?),
            GgufType::Bool => {
                let start = self.offset();
                let bytes = self.take(n as u64)?;
                if let Some(i) = bytes.iter().position(|&b| b > 1) {
                    return Err(GgufError::BadBool {
                        value: bytes[i],
                        offset: start + i as u64,
                    });
                }
                GgufArray::Bool(bytes.iter().map(|&b| b == 1).collect())
            }
            GgufType::String => GgufArray::String(self.string_array(n)?),
            GgufType::Array => return Err(GgufError::NestedArray { offset: ty_offset }),
        })
    }

    /// `n` fixed-size elements of `N` bytes each, converted by `from_le`, read in one piece.
    fn fixed<const N: usize, T>(
        &mut self,
        n: usize,
        from_le: fn([u8; N]) -> T,
    ) -> std::result::Result<Vec<T>, GgufError> {
        let offset = self.offset();
        let len = (n as u64)
            .checked_mul(N as u64)
            .ok_or(GgufError::Truncated {
                offset,
                need: u64::MAX,
            })?;
        let bytes = self.take(len)?;
        // `chunks_exact` knows its length, so `collect` allocates exactly `n` elements once.
        Ok(bytes
            .chunks_exact(N)
            .map(|c| from_le(<[u8; N]>::try_from(c).unwrap_or([0; N])))
            .collect())
    }

    /// `n` strings, packed. A first pass reads and validates them all without allocating (so
    /// the errors and their order are those of reading them one by one) and sums their lengths;
    /// the second copies them into buffers allocated once at their exact sizes.
    fn string_array(&mut self, n: usize) -> std::result::Result<StringArray, GgufError> {
        let mut scan = self.clone();
        let mut total: usize = 0;
        for _ in 0..n {
            total = total.saturating_add(scan.str()?.len());
        }
        let mut text = String::with_capacity(total);
        let mut ends = Vec::with_capacity(n);
        for _ in 0..n {
            text.push_str(self.str()?);
            ends.push(text.len() as u64);
        }
        Ok(StringArray {
            text: text.into_boxed_str(),
            ends: ends.into_boxed_slice(),
        })
    }
}

/// The raw bytes of the length-prefixed string at `offset` in `buf`, or `None` if it is not
/// there. Only called on strings `parse` has already read.
fn raw_string_at(buf: &[u8], offset: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    let len_bytes = buf.get(start..start.checked_add(8)?)?;
    let len = usize::try_from(u64::from_le_bytes(len_bytes.try_into().ok()?)).ok()?;
    let from = start + 8;
    buf.get(from..from.checked_add(len)?)
}

/// Among the length-prefixed strings at `offsets` (already read and validated by `parse`),
/// the first one in file order that repeats an earlier one: its offset and text.
///
/// Sorts `offsets` (by string, then offset) instead of filling a hash set as the strings are
/// read: 8 bytes per string instead of about 35 for a `HashSet<&str>`, which matters when a
/// file is nothing but tiny entries. Within a run of equal strings the second offset is the
/// first repeat of that string, and the smallest such offset over all runs is the first repeat
/// in the file, the one a hash set filled in file order would have found.
fn first_duplicate<'a>(buf: &'a [u8], offsets: &mut [u64]) -> Option<(u64, &'a str)> {
    let raw = |at: u64| raw_string_at(buf, at);
    offsets.sort_unstable_by(|&a, &b| raw(a).cmp(&raw(b)).then(a.cmp(&b)));
    let at = offsets
        .windows(2)
        .filter(|w| raw(w[0]) == raw(w[1]))
        .map(|w| w[1])
        .min()?;
    let text = std::str::from_utf8(raw(at)?).ok()?;
    Some((at, text))
}

/// `x` rounded up to a multiple of `align` (a non-zero power of two), or `None` on overflow.
fn align_up(x: u64, align: u64) -> Option<u64> {
    let mask = align.checked_sub(1)?;
    Some(x.checked_add(mask)? & !mask)
}

/// Parse and validate a whole GGUF file held in `bytes`.
///
/// Returns the metadata (with [`GgufMetadata::alignment`] and [`GgufMetadata::data_offset`]
/// filled in) and the tensor infos in file order, each checked to lie inside `bytes`. Never
/// panics, and allocates at most the file size plus 72 bytes per key/value and 88 per tensor
/// info whatever the file declares (see the module documentation, which also lists the checks
/// made).
pub fn parse(bytes: &[u8]) -> std::result::Result<(GgufMetadata, Vec<GgufTensorInfo>), GgufError> {
    let mut cur = Cursor { buf: bytes, pos: 0 };
    let (version, tensor_count, n_kv) = header(&mut cur)?;
    let entries = key_values(&mut cur, bytes, n_kv)?;
    let alignment = match entries
        .iter()
        .find(|(k, _)| k == ALIGNMENT_KEY)
        .map(|(_, v)| v)
    {
        None => DEFAULT_ALIGNMENT,
        Some(&GgufValue::U32(value)) if value.is_power_of_two() => value,
        Some(&GgufValue::U32(value)) => return Err(GgufError::BadAlignment { value }),
        Some(other) => return Err(GgufError::BadAlignmentType { ty: other.ty() }),
    };
    let align = u64::from(alignment);
    let mut infos = tensor_infos(&mut cur, bytes, tensor_count)?;
    let data_offset = place_data(cur.offset(), bytes.len() as u64, align, &mut infos)?;
    let meta = GgufMetadata {
        version,
        entries,
        alignment: align,
        data_offset,
    };
    Ok((meta, infos))
}

/// The header: magic, version (2 or 3, little-endian), and the two counts. Returns the version,
/// the declared tensor count and the checked key/value count.
fn header(cur: &mut Cursor<'_>) -> std::result::Result<(u32, u64, usize), GgufError> {
    let magic: [u8; 4] = cur.array()?;
    if magic != MAGIC {
        return Err(GgufError::BadMagic { found: magic });
    }
    let version = cur.u32()?;
    // A byte-swapped small version has its low 16 bits zero (ggml's `(version & 0xFFFF) == 0`).
    if version != 0 && version.trailing_zeros() >= 16 {
        return Err(GgufError::BigEndian { version });
    }
    if !(2..=3).contains(&version) {
        return Err(GgufError::UnsupportedVersion { version });
    }
    let tensor_count = cur.u64()?;
    let kv_count = cur.u64()?;
    // Both lists follow the header; each must fit in what is left (checked again, tighter,
    // for the tensor infos once the metadata has been read).
    cur.check_count(
        "tensor_count",
        tensor_count,
        MIN_TENSOR_INFO_BYTES,
        MAX_TENSOR_COUNT,
        TENSOR_COUNT_OFFSET,
    )?;
    let n_kv = cur.check_count(
        "kv_count",
        kv_count,
        MIN_KV_BYTES,
        MAX_KV_COUNT,
        KV_COUNT_OFFSET,
    )?;
    Ok((version, tensor_count, n_kv))
}

/// The `n_kv` key/value pairs (a checked count, so at most a fixed multiple of the bytes left;
/// see `MAX_KV_COUNT`): keys non-empty, without NUL, unique.
fn key_values(
    cur: &mut Cursor<'_>,
    bytes: &[u8],
    n_kv: usize,
) -> std::result::Result<Vec<(String, GgufValue)>, GgufError> {
    let mut entries = Vec::with_capacity(n_kv);
    // Where each key is, for the duplicate check once they have all been read.
    let mut string_offsets: Vec<u64> = Vec::with_capacity(n_kv);
    for _ in 0..n_kv {
        let offset = cur.offset();
        let key = cur.str()?;
        if key.is_empty() {
            return Err(GgufError::EmptyKey { offset });
        }
        if key.contains('\0') {
            return Err(GgufError::EmbeddedNul { offset });
        }
        let ty_offset = cur.offset();
        let id = cur.u32()?;
        let ty = GgufType::from_id(id).ok_or(GgufError::BadValueType {
            ty: id,
            offset: ty_offset,
        })?;
        let value = cur.value(ty)?;
        entries.push((key.to_owned(), value));
        string_offsets.push(offset);
    }
    if let Some((offset, key)) = first_duplicate(bytes, &mut string_offsets) {
        return Err(GgufError::DuplicateKey {
            key: key.to_owned(),
            offset,
        });
    }
    Ok(entries)
}

/// The tensor infos (`tensor_count` re-checked against the bytes left after the metadata):
/// names unique and without NUL, dimensions non-negative with a product that fits, whole blocks
/// along `ne0`, a byte size that fits `usize`. Offsets are checked by [`place_data`].
fn tensor_infos(
    cur: &mut Cursor<'_>,
    bytes: &[u8],
    tensor_count: u64,
) -> std::result::Result<Vec<GgufTensorInfo>, GgufError> {
    let n_tensors = cur.check_count(
        "tensor_count",
        tensor_count,
        MIN_TENSOR_INFO_BYTES,
        MAX_TENSOR_COUNT,
        TENSOR_COUNT_OFFSET,
    )?;
    let mut infos = Vec::with_capacity(n_tensors);
    let mut string_offsets: Vec<u64> = Vec::with_capacity(n_tensors);
    for _ in 0..n_tensors {
        let name_offset = cur.offset();
        infos.push(tensor_info(cur, name_offset)?);
        string_offsets.push(name_offset);
    }
    if let Some((_, name)) = first_duplicate(bytes, &mut string_offsets) {
        return Err(GgufError::DuplicateTensor {
            name: name.to_owned(),
        });
    }
    Ok(infos)
}

/// One tensor info at `name_offset` (see [`tensor_infos`]).
fn tensor_info(
    cur: &mut Cursor<'_>,
    name_offset: u64,
) -> std::result::Result<GgufTensorInfo, GgufError> {
    let name = cur.str()?;
    if name.len() > MAX_NAME_LEN {
        return Err(GgufError::NameTooLong {
            tensor: name.to_owned(),
        });
    }
    if name.contains('\0') {
        return Err(GgufError::EmbeddedNul {
            offset: name_offset,
        });
    }
    let tensor = || name.to_owned();
    let n_dims = cur.u32()?;
    if n_dims > MAX_DIMS {
        return Err(GgufError::TooManyDims {
            tensor: tensor(),
            n_dims,
        });
    }
    let mut ne = Vec::with_capacity(n_dims as usize);
    let mut numel: i64 = 1;
    for dim in 0..n_dims {
        let value = cur.i64()?;
        let d = u64::try_from(value).map_err(|_| GgufError::NegativeDim {
            tensor: tensor(),
            dim,
            value,
        })?;
        numel = numel
            .checked_mul(value)
            .ok_or_else(|| GgufError::DimOverflow { tensor: tensor() })?;
        ne.push(d);
    }
    let type_id = cur.u32()?;
    let dtype = DType::from_ggml(type_id).ok_or_else(|| GgufError::UnknownType {
        tensor: tensor(),
        type_id,
    })?;
    let ne0 = ne.first().copied().unwrap_or(1);
    let block = dtype.block_size();
    if ne0.checked_rem(block) != Some(0) {
        return Err(GgufError::PartialBlock {
            tensor: tensor(),
            ne0,
            block,
        });
    }
    let nbytes = u64::try_from(numel)
        .ok()
        .and_then(|n| dtype.bytes_for(n).ok())
        .filter(|&b| usize::try_from(b).is_ok())
        .ok_or_else(|| GgufError::DimOverflow { tensor: tensor() })?;
    let offset = cur.u64()?;
    Ok(GgufTensorInfo {
        name: tensor(),
        ne,
        dtype,
        offset,
        absolute_offset: 0,
        nbytes,
    })
}

/// The data blob after the infos (ending at `infos_end`): aligned when there are tensors (ggml
/// seeks to the padded position only then), each tensor at the next aligned offset after the
/// previous one and inside the file. Fills `absolute_offset`; returns the blob's offset.
fn place_data(
    infos_end: u64,
    file_len: u64,
    align: u64,
    infos: &mut [GgufTensorInfo],
) -> std::result::Result<u64, GgufError> {
    let data_offset = if infos.is_empty() {
        infos_end
    } else {
        match align_up(infos_end, align) {
            Some(start) if start <= file_len => start,
            start => {
                let need = start.map_or(align, |s| s.saturating_sub(infos_end));
                return Err(GgufError::Truncated {
                    offset: infos_end,
                    need,
                });
            }
        }
    };
    let mut expected: u64 = 0;
    for t in infos.iter_mut() {
        if t.offset.checked_rem(align) != Some(0) {
            return Err(GgufError::BadOffset {
                tensor: t.name.clone(),
                offset: t.offset,
            });
        }
        if t.offset != expected {
            return Err(GgufError::OffsetMismatch {
                tensor: t.name.clone(),
                expected,
                got: t.offset,
            });
        }
        let absolute = data_offset.saturating_add(t.offset);
        let end = absolute.saturating_add(t.nbytes);
        if end > file_len {
            return Err(GgufError::DataPastEof {
                tensor: t.name.clone(),
                end,
                file_len,
            });
        }
        t.absolute_offset = absolute;
        // nbytes <= file_len here, so neither step can overflow; stay checked all the same.
        expected = align_up(t.nbytes, align)
            .and_then(|padded| expected.checked_add(padded))
            .ok_or_else(|| GgufError::DataPastEof {
                tensor: t.name.clone(),
                end,
                file_len,
            })?;
    }

    Ok(data_offset)
}

/// Summarize the tokenizer stored in GGUF metadata.
fn tokenizer_info(meta: &GgufMetadata) -> TokenizerInfo {
    let text = |key: &str| meta.get(key).and_then(GgufValue::as_str);
    TokenizerInfo {
        kind: text("tokenizer.ggml.model")
            .map_or_else(|| "none".to_owned(), |m| format!("gguf:{m}")),
        files: Vec::new(),
        vocab_size: match meta.get("tokenizer.ggml.tokens") {
            Some(GgufValue::Array(tokens)) => Some(tokens.len() as u64),
            _ => None,
        },
        pre: text("tokenizer.ggml.pre").map(str::to_owned),
        chat_template: meta.get("tokenizer.chat_template").is_some(),
    }
}

/// Read a GGUF file: map it, [`parse`] it, build the configuration from its `llama.*` metadata
/// and assemble a [`Checkpoint`] whose tensors point into the map.
pub fn read(path: &Path) -> Result<Checkpoint> {
    let file = MappedFile::open(path)?;
    let (meta, infos) = parse(file.bytes()).map_err(|kind| Error::Gguf {
        path: path.into(),
        kind,
    })?;
    let has_output = infos.iter().any(|t| t.name == "output.weight");
    let vocab_from_tensors = infos
        .iter()
        .find(|t| t.name == "token_embd.weight")
        .and_then(|t| t.ne.get(1).copied());
    let mut config =
        ModelConfig::from_gguf(&meta, has_output, vocab_from_tensors).map_err(|kind| {
            Error::Config {
                path: path.into(),
                kind,
            }
        })?;
    if let Some(m) = config.moe.as_mut() {
        // a block without a router has a dense FFN (llama.cpp's graphs build the MoE FFN where
        // `ffn_gate_inp` exists)
        m.dense_layers = (0..config.num_layers)
            .filter(|i| {
                let router = format!("blk.{i}.ffn_gate_inp.weight");
                !infos.iter().any(|t| t.name == router)
            })
            .collect();
        config.validate().map_err(|kind| Error::Config {
            path: path.into(),
            kind,
        })?;
    }
    let tokenizer = tokenizer_info(&meta);
    let mut raw = Vec::with_capacity(infos.len());
    for t in infos {
        if let Some((index, proj)) = FfnProj::parse_gguf_stack(&t.name) {
            split_expert_stack(path, &t, index, proj, config.moe.as_ref(), &mut raw)?;
            continue;
        }
        raw.push(RawTensor {
            shape: t.shape(),
            layout: TensorLayout::Contiguous(Span {
                file: 0,
                offset: t.absolute_offset,
                len: t.nbytes,
            }),
            name: t.name,
            dtype: t.dtype,
            file: 0,
        });
    }
    Checkpoint::assemble(
        Format::Gguf,
        path.into(),
        config,
        tokenizer,
        vec![file],
        raw,
        Some(meta),
    )
}

/// A 3-D expert stack `blk.N.ffn_*_exps.weight` (`ne = [in, out, n_expert]`, experts
/// outermost, as `convert_hf_to_gguf.py` stacks them with `torch.stack(datas, dim=0)`) as one
/// contiguous 2-D tensor per expert, `blk.N.ffn_*_exps.E.weight`: every consumer then reads,
/// quantizes and writes one expert slice at a time.
fn split_expert_stack(
    path: &Path,
    t: &GgufTensorInfo,
    index: u32,
    proj: FfnProj,
    moe: Option<&crate::config::MoeConfig>,
    raw: &mut Vec<RawTensor>,
) -> Result<()> {
    let bad = |reason: String| Error::NotAModel {
        path: path.into(),
        reason: format!("tensor {}: {reason}", t.name),
    };
    let Some(moe) = moe else {
        return Err(bad("an expert stack in a model without experts".into()));
    };
    let &[cols, rows, n] = t.ne.as_slice() else {
        return Err(bad(format!(
            "expert stack with dims {:?}, expected 3",
            t.ne
        )));
    };
    if n != moe.num_experts {
        return Err(bad(format!(
            "{n} experts, expert_count says {}",
            moe.num_experts
        )));
    }
    // `parse` checked nbytes against ne and the type; a stack of n equal slices divides
    let each = t.nbytes / n;
    if each * n != t.nbytes {
        return Err(bad(format!(
            "{} bytes do not split into {n} experts",
            t.nbytes
        )));
    }
    for expert in 0..n {
        let name = NameScheme::Gguf
            .name(TensorKey::weight(TensorId::Layer {
                index,
                kind: LayerTensor::Expert {
                    expert: expert as u32,
                    proj,
                },
            }))
            .unwrap_or_default();
        raw.push(RawTensor {
            name,
            dtype: t.dtype,
            shape: vec![rows, cols],
            layout: TensorLayout::Contiguous(Span {
                file: 0,
                offset: t.absolute_offset + expert * each,
                len: each,
            }),
            file: 0,
        });
    }
    Ok(())
}
