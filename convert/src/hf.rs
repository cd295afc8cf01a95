//! Hugging Face checkpoints: `config.json` plus one `model.safetensors` or shards listed in
//! `model.safetensors.index.json`.
//!
//! Headers are validated by the rules of the `safetensors` crate (100 MB header cap, dtypes and
//! their sizes, contiguous non-overlapping offsets that cover the file exactly, overflow-checked
//! sizes), but parsed here, in memory proportional to the header: the crate buffers the whole
//! header as an untyped tree first (its `#[serde(flatten)]`), ten times the header's size and
//! more, and serde's type errors quote the offending string, a copy of up to the whole header.
//! On top of that qforge rejects duplicate tensor names (the crate's map would keep only the last
//! one), dtypes it has no codec for, and index files that disagree with their shards or point
//! outside the model directory. The index and the tokenizer files are read the same way, by
//! visitors that keep only what they need (a `serde_json::Value` tree costs about a hundred
//! times the JSON for a file of small values).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use qforge_codecs::DType;
use safetensors::{Dtype, SafeTensorError};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::checkpoint::{Checkpoint, Format, RawTensor, Span, TensorLayout, TokenizerInfo};
use crate::config::{read_json_config, ModelConfig};
use crate::error::{Error, Result};
use crate::mmap::MappedFile;

/// The index file of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// What is wrong with a safetensors file or its index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SafetensorsError {
    /// Shorter than the 8-byte header length.
    #[error("file is shorter than the 8-byte header length")]
    HeaderTooSmall,
    /// Header length above the safetensors limit (100 MB).
    #[error("header length is above the 100 MB limit")]
    HeaderTooLarge,
    /// The file does not start as a safetensors file does (an 8-byte little-endian header
    /// length, then the JSON header): its first bytes are text.
    #[error(
        "not a safetensors file: it starts with the text {0:?}, not an 8-byte header length and \
         a JSON header\n  hint: is it a text file, or a Git LFS pointer that was never downloaded?"
    )]
    NotSafetensors(String),
    /// Header length reaches past the end of the file.
    #[error("header length reaches past the end of the file")]
    HeaderPastEof,
    /// Header is not UTF-8 JSON of the expected shape.
    #[error("invalid header: {0}")]
    InvalidHeader(String),
    /// A tensor's data offsets overlap, leave a gap, or are out of order.
    #[error("tensor {0:?} has offsets that overlap, leave a gap or run backwards")]
    InvalidOffset(String),
    /// A tensor's byte range does not match its shape and dtype.
    #[error("a tensor's byte range does not match its shape and dtype")]
    TensorInvalidInfo,
    /// The tensor data does not end exactly at the end of the file (truncated, or trailing
    /// bytes after the last tensor).
    #[error("tensor data does not cover the file exactly (truncated, or trailing bytes)")]
    IncompleteBuffer,
    /// A shape's element or byte count overflows.
    #[error("a shape's element or byte count overflows")]
    Overflow,
    /// The same tensor name appears twice in one header.
    #[error("duplicate tensor name {0:?} in header")]
    DuplicateName(String),
    /// A dtype qforge has no codec for.
    #[error("tensor {tensor:?} has dtype {dtype} which qforge does not support")]
    UnsupportedDType {
        /// the tensor
        tensor: String,
        /// the dtype as the header spells it
        dtype: String,
    },
    /// The index JSON is malformed.
    #[error("invalid index: {0}")]
    InvalidIndex(String),
    /// The index names a shard file that is not a plain file name inside the model directory.
    #[error("index names shard {0:?}, which is not a file inside the model directory")]
    ShardOutsideModel(String),
    /// The index maps a tensor to a shard that does not contain it.
    #[error("index maps {tensor:?} to {shard:?}, which does not contain it")]
    IndexedTensorMissing {
        /// the tensor
        tensor: String,
        /// the shard named by the index
        shard: String,
    },
    /// A shard contains a tensor the index does not map to it.
    #[error("shard {shard:?} contains {tensor:?}, which the index does not map to it")]
    UnindexedTensor {
        /// the tensor
        tensor: String,
        /// the shard
        shard: String,
    },
    /// Several `.safetensors` files and no index to say how they fit together.
    #[error("several .safetensors files and no {INDEX_FILE}")]
    AmbiguousShards,
}

impl From<SafeTensorError> for SafetensorsError {
    fn from(e: SafeTensorError) -> Self {
        match e {
            SafeTensorError::HeaderTooSmall => SafetensorsError::HeaderTooSmall,
            SafeTensorError::HeaderTooLarge => SafetensorsError::HeaderTooLarge,
            SafeTensorError::InvalidHeaderLength => SafetensorsError::HeaderPastEof,
            SafeTensorError::InvalidOffset(name) => SafetensorsError::InvalidOffset(name),
            SafeTensorError::TensorInvalidInfo | SafeTensorError::MisalignedSlice => {
                SafetensorsError::TensorInvalidInfo
            }
            SafeTensorError::MetadataIncompleteBuffer => SafetensorsError::IncompleteBuffer,
            SafeTensorError::ValidationOverflow => SafetensorsError::Overflow,
            other => SafetensorsError::InvalidHeader(other.to_string()),
        }
    }
}

/// Parse and validate one safetensors file already mapped as `file` (index `file_index`).
/// Returns its tensors in data-offset order.
fn read_file(
    file: &MappedFile,
    file_index: usize,
) -> std::result::Result<Vec<RawTensor>, SafetensorsError> {
    let (n, tensors) = read_header(file.bytes())?;
    let data_start = 8 + n;
    let mut out = Vec::with_capacity(tensors.len());
    // The few dtypes of a file, looked up once each.
    let mut codecs: Vec<(Dtype, Option<DType>)> = Vec::new();
    for t in tensors {
        let codec = if let Some(&(_, codec)) = codecs.iter().find(|(d, _)| *d == t.dtype) {
            codec
        } else {
            let codec = DType::from_safetensors(&format!("{:?}", t.dtype));
            codecs.push((t.dtype, codec));
            codec
        };
        let Some(dtype) = codec else {
            return Err(SafetensorsError::UnsupportedDType {
                tensor: t.name.into_owned(),
                dtype: format!("{:?}", t.dtype),
            });
        };
        let (s, e) = t.offsets;
        out.push(RawTensor {
            dtype,
            shape: t.shape,
            layout: TensorLayout::Contiguous(Span {
                file: file_index,
                offset: data_start + s,
                len: e - s,
            }),
            file: file_index,
            name: t.name.into_owned(),
        });
    }
    Ok(out)
}

// ---- the safetensors header ----------------------------------------------------------------

/// Most bytes a header may have (the `safetensors` crate's limit).
const MAX_HEADER_LEN: u64 = 100_000_000;

/// Fewest bytes a valid tensor entry can take in a header:
/// `"":{"dtype":"U8","shape":[],"data_offsets":[0,0]},` (every field is required).
const MIN_ENTRY_LEN: usize = 49;

/// One tensor of a header as written: not yet checked against the others or the file.
struct HeaderTensor<'h> {
    /// borrowed from the header unless it has escapes
    name: Cow<'h, str>,
    dtype: Dtype,
    shape: Vec<u64>,
    offsets: (u64, u64),
}

/// [`SafetensorsError::NotSafetensors`] when the first 8 bytes, which a safetensors file
/// holds its header length in, are printable text (no real header is that long: text makes a
/// length above 10^17).
fn text_not_safetensors(head: &[u8]) -> Option<SafetensorsError> {
    let len = head.get(..8)?;
    len.iter()
        .all(|&b| b.is_ascii_graphic() || b.is_ascii_whitespace())
        .then(|| SafetensorsError::NotSafetensors(String::from_utf8_lossy(head).into_owned()))
}

/// Parse and validate the header of the safetensors file `buf`: the header length and the
/// tensors in data-offset order.
///
/// One pass counts the entries and a second reads them into a vector of that size (or of the
/// most the header could hold, if less), so the memory is a fixed-size struct per tensor plus
/// the names that have escapes; nothing quotes the header in an error message.
fn read_header(buf: &[u8]) -> std::result::Result<(u64, Vec<HeaderTensor<'_>>), SafetensorsError> {
    let len = buf.get(..8).ok_or(SafetensorsError::HeaderTooSmall)?;
    let n = u64::from_le_bytes(
        len.try_into()
            .map_err(|_| SafetensorsError::HeaderTooSmall)?,
    );
    let header = usize::try_from(n)
        .ok()
        .filter(|_| n <= MAX_HEADER_LEN)
        .and_then(|n| buf.get(8..8 + n));
    let Some(header) = header else {
        // a length that cannot be right, made of printable text: not a safetensors file at all
        if let Some(e) = text_not_safetensors(&buf[..buf.len().min(24)]) {
            return Err(e);
        }
        return Err(if n > MAX_HEADER_LEN {
            SafetensorsError::HeaderTooLarge
        } else {
            SafetensorsError::HeaderPastEof
        });
    };
    let text = std::str::from_utf8(header)
        .map_err(|e| SafetensorsError::InvalidHeader(format!("invalid UTF-8 in header: {e}")))?;
    let entries = header_json(text, CountEntries)?;
    let capacity = entries.min(text.len() / MIN_ENTRY_LEN + 1);
    let mut tensors = header_json(text, Header { capacity })?;
    if let Some(name) = first_duplicate(&tensors) {
        return Err(SafetensorsError::DuplicateName(name.to_owned()));
    }
    tensors.sort_unstable_by_key(|t| t.offsets);
    let mut end = 0u64;
    for t in &tensors {
        let (s, e) = t.offsets;
        if s != end || e < s {
            return Err(SafetensorsError::InvalidOffset(t.name.to_string()));
        }
        end = e;
        let bits = t
            .shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .and_then(|elements| elements.checked_mul(t.dtype.bitsize() as u64))
            .ok_or(SafetensorsError::Overflow)?;
        if bits % 8 != 0 || e - s != bits / 8 {
            return Err(SafetensorsError::TensorInvalidInfo);
        }
    }
    if end.checked_add(8 + n) != Some(buf.len() as u64) {
        return Err(SafetensorsError::IncompleteBuffer);
    }
    Ok((n, tensors))
}

/// Run `seed` over the whole header `text`.
fn header_json<'h, S: DeserializeSeed<'h>>(
    text: &'h str,
    seed: S,
) -> std::result::Result<S::Value, SafetensorsError> {
    let mut de = serde_json::Deserializer::from_str(text);
    seed.deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| SafetensorsError::InvalidHeader(format!("invalid JSON in header: {e}")))
}

/// The name of the first tensor (in file order) whose name an earlier one already has.
fn first_duplicate<'a>(tensors: &'a [HeaderTensor<'_>]) -> Option<&'a str> {
    // Positions sorted by (name, position): 4 bytes a tensor, where a set of names costs more.
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_unstable_by(|&a, &b| tensors[a].name.cmp(&tensors[b].name).then(a.cmp(&b)));
    order
        .windows(2)
        .filter(|w| tensors[w[0]].name == tensors[w[1]].name)
        .map(|w| w[1])
        .min()
        .map(|i| &*tensors[i].name)
}

/// Names in error messages come from the header: at most 32 bytes of them.
fn clip(s: &str) -> &str {
    let mut end = s.len().min(32);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `visit_str` for a visitor that does not take strings. serde's default quotes the whole
/// string in the error: a copy of up to the whole header.
macro_rules! refuse_str {
    () => {
        fn visit_str<E: de::Error>(self, _: &str) -> std::result::Result<Self::Value, E> {
            Err(E::invalid_type(de::Unexpected::Other("string"), &self))
        }
    };
}

/// Implement `DeserializeSeed` for a visitor by handing it to `deserialize_any`.
macro_rules! seed_by_any {
    ($t:ty) => {
        impl<'de> DeserializeSeed<'de> for $t {
            type Value = <Self as Visitor<'de>>::Value;
            fn deserialize<D: de::Deserializer<'de>>(
                self,
                d: D,
            ) -> std::result::Result<Self::Value, D::Error> {
                d.deserialize_any(self)
            }
        }
    };
}

/// Counts the entries of the header object without keeping anything.
struct CountEntries;
seed_by_any!(CountEntries);

impl<'de> Visitor<'de> for CountEntries {
    type Value = usize;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    refuse_str!();
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<usize, A::Error> {
        let mut n = 0;
        while map.next_key::<IgnoredAny>()?.is_some() {
            map.next_value::<IgnoredAny>()?;
            n += 1;
        }
        Ok(n)
    }
}

/// The header object: its tensors in file order; `__metadata__` is checked and dropped.
struct Header {
    capacity: usize,
}
seed_by_any!(Header);

impl<'de> Visitor<'de> for Header {
    type Value = Vec<HeaderTensor<'de>>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    refuse_str!();
    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(self.capacity);
        let mut shape = Vec::new();
        let mut metadata = false;
        while let Some(name) = map.next_key_seed(Name)? {
            if name == "__metadata__" {
                if std::mem::replace(&mut metadata, true) {
                    return Err(de::Error::duplicate_field("__metadata__"));
                }
                map.next_value_seed(Metadata)?;
                continue;
            }
            let (dtype, offsets) = map.next_value_seed(Info { shape: &mut shape })?;
            out.push(HeaderTensor {
                name,
                dtype,
                shape: shape.as_slice().to_vec(),
                offsets,
            });
        }
        Ok(out)
    }
}

/// An object key, borrowed from the input when it has no escapes.
struct Name;

impl<'de> DeserializeSeed<'de> for Name {
    type Value = Cow<'de, str>;
    fn deserialize<D: de::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Name {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> std::result::Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
}

/// Which of these names an object key is, if any (nothing is allocated).
struct Known<'k>(&'k [&'k str]);

impl<'de> DeserializeSeed<'de> for Known<'_> {
    type Value = Option<usize>;
    fn deserialize<D: de::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for Known<'_> {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Self::Value, E> {
        Ok(self.0.iter().position(|k| *k == v))
    }
}

/// `__metadata__`: `null` or an object of strings.
struct Metadata;
seed_by_any!(Metadata);

impl<'de> Visitor<'de> for Metadata {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("null or an object of strings")
    }
    refuse_str!();
    fn visit_unit<E: de::Error>(self) -> std::result::Result<(), E> {
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        while map.next_key::<IgnoredAny>()?.is_some() {
            map.next_value_seed(AnyStr)?;
        }
        Ok(())
    }
}

/// A string, ignored.
struct AnyStr;
seed_by_any!(AnyStr);

impl Visitor<'_> for AnyStr {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: de::Error>(self, _: &str) -> std::result::Result<(), E> {
        Ok(())
    }
}

/// A tensor entry: its dtype and data offsets; the shape goes to `shape`.
struct Info<'s> {
    shape: &'s mut Vec<u64>,
}

impl<'de> DeserializeSeed<'de> for Info<'_> {
    type Value = (Dtype, (u64, u64));
    fn deserialize<D: de::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Info<'_> {
    type Value = (Dtype, (u64, u64));
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object with dtype, shape and data_offsets")
    }
    refuse_str!();
    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        const FIELDS: &[&str] = &["dtype", "shape", "data_offsets"];
        let (mut dtype, mut shape, mut offsets) = (None, false, None);
        while let Some(field) = map.next_key_seed(Known(FIELDS))? {
            match field {
                Some(0) if dtype.is_none() => dtype = Some(map.next_value_seed(DtypeName)?),
                Some(1) if !shape => {
                    self.shape.clear();
                    map.next_value_seed(Shape(&mut *self.shape))?;
                    shape = true;
                }
                Some(2) if offsets.is_none() => offsets = Some(map.next_value_seed(Offsets)?),
                Some(i) => return Err(de::Error::duplicate_field(FIELDS[i])),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let dtype = dtype.ok_or_else(|| de::Error::missing_field("dtype"))?;
        if !shape {
            return Err(de::Error::missing_field("shape"));
        }
        let offsets = offsets.ok_or_else(|| de::Error::missing_field("data_offsets"))?;
        Ok((dtype, offsets))
    }
}

/// A dtype as the safetensors format spells it.
struct DtypeName;
seed_by_any!(DtypeName);

impl Visitor<'_> for DtypeName {
    type Value = Dtype;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a safetensors dtype")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Dtype, E> {
        // The crate's own names; anything long is not one of them (and is not quoted whole).
        (v.len() <= 32)
            .then(|| serde::Deserialize::deserialize(de::value::StrDeserializer::<E>::new(v)).ok())
            .flatten()
            .ok_or_else(|| E::custom(format_args!("unknown dtype {:?}", clip(v))))
    }
}

/// A shape: an array of dimensions, into the vector given.
struct Shape<'s>(&'s mut Vec<u64>);

impl<'de> DeserializeSeed<'de> for Shape<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Shape<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of dimensions")
    }
    refuse_str!();
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        while let Some(d) = seq.next_element_seed(Count)? {
            self.0.push(d);
        }
        Ok(())
    }
}

/// `data_offsets`: an array of exactly two counts.
struct Offsets;
seed_by_any!(Offsets);

impl<'de> Visitor<'de> for Offsets {
    type Value = (u64, u64);
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of two offsets")
    }
    refuse_str!();
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(u64, u64), A::Error> {
        let start = seq
            .next_element_seed(Count)?
            .ok_or_else(|| de::Error::invalid_length(0, &self))?;
        let end = seq
            .next_element_seed(Count)?
            .ok_or_else(|| de::Error::invalid_length(1, &self))?;
        if seq.next_element::<IgnoredAny>()?.is_some() {
            return Err(de::Error::invalid_length(3, &self));
        }
        Ok((start, end))
    }
}

/// A non-negative integer.
struct Count;
seed_by_any!(Count);

impl Visitor<'_> for Count {
    type Value = u64;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a non-negative integer")
    }
    refuse_str!();
    fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<u64, E> {
        Ok(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<u64, E> {
        // `-0` arrives here, and serde reads it as 0.
        u64::try_from(v).map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
    }
}

/// A shard name from an index: a plain file name that resolves inside `dir` (no separators,
/// no `..`, no symbolic link leading elsewhere).
fn shard_path(dir: &Path, name: &str) -> Result<PathBuf> {
    let outside = || Error::Safetensors {
        path: dir.join(INDEX_FILE),
        kind: SafetensorsError::ShardOutsideModel(name.to_owned()),
    };
    let plain =
        !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0']);
    if !plain {
        return Err(outside());
    }
    let path = dir.join(name);
    let real = std::fs::canonicalize(&path).map_err(|e| Error::io(&path, e))?;
    let real_dir = std::fs::canonicalize(dir).map_err(|e| Error::io(dir, e))?;
    if real.parent() != Some(real_dir.as_path()) && !in_hub_blobs(&real_dir, &real) {
        return Err(outside());
    }
    Ok(path)
}

/// Whether `dir` is a Hugging Face hub cache snapshot (`models--org--name/snapshots/<rev>`) and
/// `real` a file directly in the same repository's `blobs/` (where the hub keeps the bytes the
/// snapshot's symbolic links point to). Both paths are canonical. Links anywhere else, including
/// another repository's blobs, stay refused.
fn in_hub_blobs(dir: &Path, real: &Path) -> bool {
    let Some(snapshots) = dir.parent() else {
        return false;
    };
    let Some(repo) = snapshots.parent() else {
        return false;
    };
    let is_repo = repo
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("models--"));
    is_repo
        && snapshots.file_name().is_some_and(|n| n == "snapshots")
        && real.parent() == Some(repo.join("blobs").as_path())
}

/// Most shard files an index may name.
const MAX_SHARDS: usize = 1 << 16;

/// Parse `model.safetensors.index.json`: shard file → tensor names it must hold, each list
/// sorted.
///
/// Two passes over `weight_map`: the first counts the tensors of each shard, the second files
/// their names in vectors of exactly that size. An entry can be 8 bytes of JSON; a vector that
/// doubles would cost up to 72 bytes a name on top of the name's own 24.
fn read_index(path: &Path) -> Result<BTreeMap<String, Vec<String>>> {
    let bad = |why: String| Error::Safetensors {
        path: path.into(),
        kind: SafetensorsError::InvalidIndex(why),
    };
    let len = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    if len > 256 << 20 {
        return Err(bad(format!("{len} bytes is too large for an index")));
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut de = serde_json::Deserializer::from_str(&text);
    let counts = IndexFile(CountShards)
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| bad(e.to_string()))?
        .ok_or_else(|| bad("missing field `weight_map`".into()))?;
    // The text parsed once: the second pass cannot fail, nor miss `weight_map`.
    let mut shards = IndexFile(FileShards(counts))
        .deserialize(&mut serde_json::Deserializer::from_str(&text))
        .map_err(|e| bad(e.to_string()))?
        .unwrap_or_default();
    let total = shards.values().map(Vec::len).sum();
    let mut names: Vec<&str> = Vec::with_capacity(total);
    names.extend(shards.values().flatten().map(String::as_str));
    names.sort_unstable();
    if let Some([name, ..]) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(bad(format!("tensor {name:?} listed twice in weight_map")));
    }
    drop(names);
    if shards.is_empty() {
        return Err(bad("weight_map is empty".into()));
    }
    for names in shards.values_mut() {
        names.sort_unstable();
    }
    Ok(shards)
}

/// The index object: what `.0` makes of its `weight_map`, if it has one.
struct IndexFile<S>(S);

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for IndexFile<S> {
    type Value = Option<S::Value>;
    fn deserialize<D: de::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, S: DeserializeSeed<'de>> Visitor<'de> for IndexFile<S> {
    type Value = Option<S::Value>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object with a weight_map")
    }
    refuse_str!();
    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let (mut seed, mut out) = (Some(self.0), None);
        while let Some(key) = map.next_key_seed(Known(&["weight_map"]))? {
            if key.is_none() {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let seed = seed
                .take()
                .ok_or_else(|| de::Error::duplicate_field("weight_map"))?;
            out = Some(map.next_value_seed(seed)?);
        }
        Ok(out)
    }
}

/// `weight_map`, first pass: how many tensors each shard holds.
struct CountShards;
seed_by_any!(CountShards);

impl<'de> Visitor<'de> for CountShards {
    type Value = BTreeMap<String, usize>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object of shard file names")
    }
    refuse_str!();
    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        while map.next_key::<IgnoredAny>()?.is_some() {
            let shard = map.next_value_seed(Name)?;
            if let Some(n) = counts.get_mut(&*shard) {
                *n += 1;
            } else if counts.len() == MAX_SHARDS {
                return Err(de::Error::custom(format_args!(
                    "more than {MAX_SHARDS} shard files"
                )));
            } else {
                counts.insert(shard.into_owned(), 1);
            }
        }
        Ok(counts)
    }
}

/// `weight_map`, second pass: the tensor names by shard, in vectors of the sizes counted.
struct FileShards(BTreeMap<String, usize>);

impl<'de> DeserializeSeed<'de> for FileShards {
    type Value = BTreeMap<String, Vec<String>>;
    fn deserialize<D: de::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FileShards {
    type Value = BTreeMap<String, Vec<String>>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object of shard file names")
    }
    refuse_str!();
    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut shards: BTreeMap<String, Vec<String>> = self
            .0
            .into_iter()
            .map(|(shard, n)| (shard, Vec::with_capacity(n)))
            .collect();
        while let Some(tensor) = map.next_key_seed(Name)? {
            let shard = map.next_value_seed(Name)?;
            if let Some(names) = shards.get_mut(&*shard) {
                names.push(tensor.into_owned());
            }
        }
        Ok(shards)
    }
}

/// Tokenizer files larger than this are listed but not read.
const MAX_TOKENIZER_FILE: u64 = 256 << 20;

/// Summarize the tokenizer files of an HF directory.
pub(crate) fn tokenizer_info(dir: &Path) -> TokenizerInfo {
    let mut info = TokenizerInfo {
        kind: "none".into(),
        ..TokenizerInfo::default()
    };
    let read_small = |path: &Path| {
        let small = std::fs::metadata(path).is_ok_and(|m| m.len() < MAX_TOKENIZER_FILE);
        small.then(|| std::fs::read(path).ok()).flatten()
    };
    let tj = dir.join("tokenizer.json");
    if tj.is_file() {
        info.kind = "tokenizer.json".into();
        info.files.push(tj.clone());
        if let Some(summary) = read_small(&tj).and_then(|b| pick_json(&b, TokenizerJson)) {
            let mut ids = summary.vocab;
            ids.extend(summary.added);
            ids.sort_unstable();
            ids.dedup();
            info.vocab_size = Some(ids.len() as u64);
            info.pre = summary.pre;
            if let Some(t) = summary.model_type {
                info.kind = format!("tokenizer.json:{t}");
            }
        }
    }
    let tc = dir.join("tokenizer_config.json");
    if tc.is_file() {
        info.files.push(tc.clone());
        info.chat_template = read_small(&tc)
            .and_then(|b| pick_json(&b, HasChatTemplate))
            .unwrap_or(false);
    }
    if dir.join("chat_template.jinja").is_file() {
        info.chat_template = true;
    }
    info
}

/// Read `bytes` as one JSON value with `pick`; `None` if it is not JSON.
fn pick_json<P: Pick>(bytes: &[u8], pick: P) -> Option<P::Out> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let out = Lenient(pick).deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(out)
}

/// What a [`Lenient`] visitor takes from a JSON value: each method sees one kind of value, and
/// by default ignores it. A value of a kind it does not take gives `Out::default()`, not an
/// error, as `Value::get`/`Value::as_*` on a parsed tree would; a repeated key replaces the
/// earlier value, as in a parsed tree.
trait Pick: Sized {
    type Out: Default;
    fn map<'de, A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Self::Out, A::Error> {
        while map.next_key::<IgnoredAny>()?.is_some() {
            map.next_value::<IgnoredAny>()?;
        }
        Ok(Self::Out::default())
    }
    fn seq<'de, A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Self::Out, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Self::Out::default())
    }
    fn str(self, _: &str) -> Self::Out {
        Self::Out::default()
    }
    fn u64(self, _: u64) -> Self::Out {
        Self::Out::default()
    }
}

/// Runs a [`Pick`] over any JSON value.
struct Lenient<P>(P);

impl<'de, P: Pick> DeserializeSeed<'de> for Lenient<P> {
    type Value = P::Out;
    fn deserialize<D: de::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, P: Pick> Visitor<'de> for Lenient<P> {
    type Value = P::Out;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> std::result::Result<P::Out, E> {
        Ok(P::Out::default())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> std::result::Result<P::Out, E> {
        Ok(P::Out::default())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<P::Out, E> {
        Ok(self.0.u64(v))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> std::result::Result<P::Out, E> {
        Ok(P::Out::default())
    }
    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<P::Out, E> {
        Ok(self.0.str(v))
    }
    fn visit_unit<E: de::Error>(self) -> std::result::Result<P::Out, E> {
        Ok(P::Out::default())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> std::result::Result<P::Out, A::Error> {
        self.0.seq(seq)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> std::result::Result<P::Out, A::Error> {
        self.0.map(map)
    }
}

/// What `tokenizer_info` needs from `tokenizer.json`.
#[derive(Default)]
struct TokenizerSummary {
    /// `model.type`
    model_type: Option<String>,
    /// the integer values of `model.vocab`
    vocab: Vec<u64>,
    /// the integer `id`s of `added_tokens`
    added: Vec<u64>,
    /// `pre_tokenizer.type`
    pre: Option<String>,
}

struct TokenizerJson;

impl Pick for TokenizerJson {
    type Out = TokenizerSummary;
    fn map<'de, A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Self::Out, A::Error> {
        let mut out = TokenizerSummary::default();
        while let Some(key) =
            map.next_key_seed(Known(&["model", "added_tokens", "pre_tokenizer"]))?
        {
            match key {
                Some(0) => (out.model_type, out.vocab) = map.next_value_seed(Lenient(Model))?,
                Some(1) => out.added = map.next_value_seed(Lenient(AddedTokens))?,
                Some(2) => out.pre = map.next_value_seed(Lenient(Field("type", Str)))?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(out)
    }
}

/// `model`: its `type` and the ids of its `vocab`.
struct Model;

impl Pick for Model {
    type Out = (Option<String>, Vec<u64>);
    fn map<'de, A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Self::Out, A::Error> {
        let mut out = Self::Out::default();
        while let Some(key) = map.next_key_seed(Known(&["type", "vocab"]))? {
            match key {
                Some(0) => out.0 = map.next_value_seed(Lenient(Str))?,
                Some(1) => out.1 = map.next_value_seed(Lenient(Ids))?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(out)
    }
}

/// The integer values of an object.
struct Ids;

impl Pick for Ids {
    type Out = Vec<u64>;
    fn map<'de, A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Self::Out, A::Error> {
        let mut out = Vec::new();
        while map.next_key::<IgnoredAny>()?.is_some() {
            out.extend(map.next_value_seed(Lenient(U64))?);
        }
        Ok(out)
    }
}

/// The integer `id`s of an array of objects.
struct AddedTokens;

impl Pick for AddedTokens {
    type Out = Vec<u64>;
    fn seq<'de, A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Self::Out, A::Error> {
        let mut out = Vec::new();
        while let Some(id) = seq.next_element_seed(Lenient(Field("id", U64)))? {
            out.extend(id);
        }
        Ok(out)
    }
}

/// Field `.0` of an object, taken by `.1`.
struct Field<P>(&'static str, P);

impl<P: Pick + Copy> Pick for Field<P> {
    type Out = P::Out;
    fn map<'de, A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Self::Out, A::Error> {
        let mut out = P::Out::default();
        while let Some(key) = map.next_key_seed(Known(std::slice::from_ref(&self.0)))? {
            if key.is_some() {
                out = map.next_value_seed(Lenient(self.1))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(out)
    }
}

/// A string.
#[derive(Clone, Copy)]
struct Str;

impl Pick for Str {
    type Out = Option<String>;
    fn str(self, v: &str) -> Self::Out {
        Some(v.to_owned())
    }
}

/// A non-negative integer.
#[derive(Clone, Copy)]
struct U64;

impl Pick for U64 {
    type Out = Option<u64>;
    fn u64(self, v: u64) -> Self::Out {
        Some(v)
    }
}

/// Whether `tokenizer_config.json` has a `chat_template` key.
struct HasChatTemplate;

impl Pick for HasChatTemplate {
    type Out = bool;
    fn map<'de, A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<bool, A::Error> {
        let mut found = false;
        while let Some(key) = map.next_key_seed(Known(&["chat_template"]))? {
            found |= key.is_some();
            map.next_value::<IgnoredAny>()?;
        }
        Ok(found)
    }
}

/// Read an HF checkpoint: a directory, or one `.safetensors` file whose directory holds
/// `config.json`.
pub fn read(path: &Path) -> Result<Checkpoint> {
    let (dir, single) = if path.is_file() {
        (
            path.parent().unwrap_or(Path::new(".")).to_path_buf(),
            Some(path.to_path_buf()),
        )
    } else {
        (path.to_path_buf(), None)
    };
    let config_path = dir.join("config.json");
    if let Some(file) = &single {
        // a text file named .safetensors says so before anything is asked of its directory
        let mut head = [0u8; 24];
        let n = {
            use std::io::Read;
            let mut f = std::fs::File::open(file).map_err(|e| Error::io(file, e))?;
            f.read(&mut head).map_err(|e| Error::io(file, e))?
        };
        if let Some(kind) = text_not_safetensors(&head[..n]) {
            return Err(Error::Safetensors {
                path: file.clone(),
                kind,
            });
        }
    }
    if let (Some(file), false) = (&single, config_path.exists()) {
        return Err(Error::NotAModel {
            path: file.clone(),
            reason: format!(
                "a lone .safetensors file: its model config, {}, is missing\n  hint: put the \
                 model's config.json (and tokenizer files) beside it, or pass the directory of \
                 the full Hugging Face checkpoint",
                crate::error::shown(&config_path)
            ),
        });
    }
    let config = read_json_config(&config_path, ModelConfig::from_hf_json)?;
    let index_path = dir.join(INDEX_FILE);
    let mut expected: Option<BTreeMap<String, Vec<String>>> = None;
    let shard_paths: Vec<PathBuf> = if let Some(one) = single {
        vec![one]
    } else if index_path.is_file() {
        let idx = read_index(&index_path)?;
        let paths = idx
            .keys()
            .map(|f| shard_path(&dir, f))
            .collect::<Result<Vec<_>>>()?;
        expected = Some(idx);
        paths
    } else {
        let all: Vec<PathBuf> = crate::checkpoint::list_dir(&dir)?
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        match all.len() {
            1 => all,
            0 => {
                return Err(Error::NotAModel {
                    path: dir,
                    reason: "config.json but no .safetensors file".into(),
                });
            }
            _ => {
                return Err(Error::Safetensors {
                    path: dir,
                    kind: SafetensorsError::AmbiguousShards,
                })
            }
        }
    };
    let mut files = Vec::with_capacity(shard_paths.len());
    let mut raw = Vec::new();
    for (i, p) in shard_paths.iter().enumerate() {
        let f = MappedFile::open(p)?;
        let tensors = read_file(&f, i).map_err(|kind| Error::Safetensors {
            path: p.clone(),
            kind,
        })?;
        if let Some(idx) = &expected {
            let shard = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            // Sorted by `read_index`.
            let want = &idx[&shard];
            let have: HashSet<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
            if let Some(t) = tensors
                .iter()
                .find(|t| want.binary_search_by(|w| w.as_str().cmp(&t.name)).is_err())
            {
                let kind = SafetensorsError::UnindexedTensor {
                    tensor: t.name.clone(),
                    shard,
                };
                return Err(Error::Safetensors {
                    path: p.clone(),
                    kind,
                });
            }
            if let Some(t) = want.iter().find(|n| !have.contains(n.as_str())) {
                let kind = SafetensorsError::IndexedTensorMissing {
                    tensor: t.clone(),
                    shard,
                };
                return Err(Error::Safetensors {
                    path: index_path.clone(),
                    kind,
                });
            }
        }
        raw.extend(tensors);
        files.push(f);
    }
    let mut vision = 0;
    if config.family == crate::Family::Llama4 {
        (raw, vision) = text_model_tensors(raw);
    }
    if config.moe.is_some() {
        raw = split_fused_experts(&dir, &config, raw)?;
    }
    let tokenizer = tokenizer_info(&dir);
    let mut ckpt = Checkpoint::assemble(
        Format::Hf,
        path.to_path_buf(),
        config,
        tokenizer,
        files,
        raw,
        None,
    )?;
    if vision > 0 {
        ckpt.notes.push(format!(
            "skipped {vision} vision tensors ({}*, {}*): only the text model of a \
             Llama4ForConditionalGeneration checkpoint is read",
            VISION_PREFIXES[0], VISION_PREFIXES[1]
        ));
    }
    Ok(ckpt)
}

/// The prefix of the text model's tensors in a `Llama4ForConditionalGeneration` checkpoint
/// (transformers `Llama4ForConditionalGeneration.language_model`, a `Llama4ForCausalLM`:
/// `language_model.model.*`, `language_model.lm_head.weight`).
const TEXT_MODEL_PREFIX: &str = "language_model.";

/// The vision encoder's and projector's tensors of that checkpoint
/// (`Llama4ForConditionalGeneration.vision_model`, `.multi_modal_projector`).
const VISION_PREFIXES: [&str; 2] = ["vision_model.", "multi_modal_projector."];

/// A Llama 4 checkpoint's tensors as the text model's: `language_model.` stripped (as
/// `convert_hf_to_gguf.py` conversion/base.py `ModelBase.filter_tensors` does) and the vision
/// tensors dropped (llama.cpp writes those to a separate mmproj file,
/// conversion/llama4.py `Llama4VisionModel`), with how many were dropped. A
/// `Llama4ForCausalLM` checkpoint has neither and passes through.
fn text_model_tensors(raw: Vec<RawTensor>) -> (Vec<RawTensor>, usize) {
    let before = raw.len();
    let out: Vec<RawTensor> = raw
        .into_iter()
        .filter(|t| !VISION_PREFIXES.iter().any(|p| t.name.starts_with(p)))
        .map(|mut t| {
            if let Some(rest) = t.name.strip_prefix(TEXT_MODEL_PREFIX) {
                t.name = rest.to_owned();
            }
            t
        })
        .collect();
    let dropped = before - out.len();
    (out, dropped)
}

/// Fused expert tensors as one `[out, in]` view per expert and projection, named
/// `<block>.experts.E.{gate,up,down}_proj`, read in place, so that every consumer handles one
/// expert's projection at a time, never the whole stack:
///
/// * Llama 4 (transformers 4.57 `Llama4TextExperts`): `feed_forward.experts.gate_up_proj`
///   `[E, hidden, 2·ffn]`, gate the first `ffn` columns, and `feed_forward.experts.down_proj`
///   `[E, ffn, hidden]`, both multiplied as `x @ W`: each view is the transpose of a slice,
///   strided (as `convert_hf_to_gguf.py` `Llama4Model.modify_tensors` splits and transposes
///   them);
/// * transformers 5 Mixtral and Qwen3-MoE (`MixtralExperts`, `Qwen3MoeExperts`, the layout of
///   a checkpoint saved from their state dict): `mlp.experts.gate_up_proj` `[E, 2·ffn,
///   hidden]`, gate the first `ffn` rows (`linear(x, gate_up_proj[e]).chunk(2, dim=-1)`), and
///   `mlp.experts.down_proj` `[E, hidden, ffn]`, both `linear` layout: each view is a
///   contiguous slice.
///
/// Every other tensor passes through.
fn split_fused_experts(
    dir: &Path,
    config: &ModelConfig,
    raw: Vec<RawTensor>,
) -> Result<Vec<RawTensor>> {
    use crate::names::{FfnProj, HfMoeNames, LayerTensor, NameScheme, TensorId, TensorKey};
    let mut out = Vec::with_capacity(raw.len());
    let (hid, ffn, n) = (
        config.hidden_size,
        config.moe.as_ref().map_or(0, |m| m.expert_ffn),
        config.moe.as_ref().map_or(0, |m| m.num_experts),
    );
    // x @ W (Llama 4) or linear's W·x (transformers 5's Mixtral / Qwen3-MoE experts)
    let llama4 = config.family.spec().moe.map(|m| m.hf_names) == Some(HfMoeNames::Llama4);
    let block = if llama4 { "feed_forward" } else { "mlp" };
    for t in raw {
        let fused = t
            .name
            .strip_prefix(NameScheme::Hf.layer_prefix_str())
            .and_then(|r| r.split_once('.'))
            .and_then(|(i, m)| {
                let gate_up = match m.strip_prefix(block)?.strip_prefix(".experts.")? {
                    "gate_up_proj" => true,
                    "down_proj" => false,
                    _ => return None,
                };
                i.parse::<u32>().ok().map(|i| (i, gate_up))
            });
        let Some((index, gate_up)) = fused else {
            out.push(t);
            continue;
        };
        let bad = |reason: String| Error::NotAModel {
            path: dir.into(),
            reason: format!("tensor {}: {reason}", t.name),
        };
        let want = match (gate_up, llama4) {
            (true, true) => vec![n, hid, 2 * ffn],
            (false, true) => vec![n, ffn, hid],
            (true, false) => vec![n, 2 * ffn, hid],
            (false, false) => vec![n, hid, ffn],
        };
        if t.shape != want {
            return Err(bad(format!(
                "shape {:?}, config.json implies {want:?}",
                t.shape
            )));
        }
        if t.dtype.block_size() != 1 {
            return Err(bad(format!(
                "fused experts of type {} are not read",
                t.dtype
            )));
        }
        let TensorLayout::Contiguous(span) = t.layout else {
            return Err(bad("not contiguous".into()));
        };
        let es = t.dtype.block_bytes();
        let per_expert = want[1] * want[2];
        // (projection, first element, shape, strides, storage elements) of each view;
        // strides `None`: a contiguous slice
        #[allow(clippy::type_complexity)]
        let views: Vec<(FfnProj, u64, Vec<u64>, Option<Vec<u64>>, u64)> = match (gate_up, llama4) {
            // gate[i, h] = W[e, h, i], up[i, h] = W[e, h, ffn + i]
            (true, true) => vec![
                (
                    FfnProj::Gate,
                    0,
                    vec![ffn, hid],
                    Some(vec![1, 2 * ffn]),
                    per_expert,
                ),
                (
                    FfnProj::Up,
                    ffn,
                    vec![ffn, hid],
                    Some(vec![1, 2 * ffn]),
                    per_expert - ffn,
                ),
            ],
            // down[h, i] = W[e, i, h]
            (false, true) => vec![(
                FfnProj::Down,
                0,
                vec![hid, ffn],
                Some(vec![1, hid]),
                per_expert,
            )],
            // gate = W[e, :ffn, :], up = W[e, ffn:, :]
            (true, false) => vec![
                (FfnProj::Gate, 0, vec![ffn, hid], None, ffn * hid),
                (FfnProj::Up, ffn * hid, vec![ffn, hid], None, ffn * hid),
            ],
            // down = W[e]
            (false, false) => vec![(FfnProj::Down, 0, vec![hid, ffn], None, per_expert)],
        };
        for e in 0..n {
            for (proj, skip, shape, strides, len) in &views {
                let kind = LayerTensor::Expert {
                    expert: e as u32,
                    proj: *proj,
                };
                let spelling = if llama4 {
                    HfMoeNames::Llama4
                } else {
                    HfMoeNames::Qwen
                };
                let name = spelling
                    .name(TensorKey::weight(TensorId::Layer { index, kind }))
                    .unwrap_or_default();
                let storage = Span {
                    file: span.file,
                    offset: span.offset + (e * per_expert + skip) * es,
                    len: len * es,
                };
                out.push(RawTensor {
                    name,
                    dtype: t.dtype,
                    shape: shape.clone(),
                    layout: match strides {
                        Some(strides) => TensorLayout::Strided {
                            storage,
                            strides: strides.clone(),
                        },
                        None => TensorLayout::Contiguous(storage),
                    },
                    file: t.file,
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use safetensors::SafeTensors;

    /// A tensor of a header: name, dtype, shape, data offsets.
    type Parsed = (String, Dtype, Vec<u64>, (u64, u64));

    fn ours(buf: &[u8]) -> std::result::Result<Vec<Parsed>, SafetensorsError> {
        let (_, tensors) = read_header(buf)?;
        Ok(tensors
            .into_iter()
            .map(|t| (t.name.into_owned(), t.dtype, t.shape, t.offsets))
            .collect())
    }

    /// What the `safetensors` crate makes of `buf`.
    fn theirs(buf: &[u8]) -> std::result::Result<Vec<Parsed>, SafetensorsError> {
        let (_, meta) = SafeTensors::read_metadata(buf)?;
        let infos = meta.tensors();
        Ok(meta
            .offset_keys()
            .into_iter()
            .map(|name| {
                let i = infos[&name];
                let shape = i.shape.iter().map(|&d| d as u64).collect();
                let (s, e) = i.data_offsets;
                (name, i.dtype, shape, (s as u64, e as u64))
            })
            .collect())
    }

    /// The header parser agrees with the crate's: the same tensors, or the same kind of error
    /// (the crate's messages and its choice among tensors with equal offsets aside). The one
    /// intended difference: a repeated name, which the crate's map silently drops.
    fn agree(buf: &[u8]) {
        let sorted = |mut v: Vec<Parsed>| {
            v.sort_by(|a, b| (a.3, &a.0).cmp(&(b.3, &b.0)));
            v
        };
        match (ours(buf), theirs(buf)) {
            (Ok(a), Ok(b)) => assert_eq!(sorted(a), sorted(b)),
            (Err(SafetensorsError::DuplicateName(_)), _) => {}
            (Err(a), Err(b)) => assert_eq!(
                std::mem::discriminant(&a),
                std::mem::discriminant(&b),
                "{a:?} / {b:?}"
            ),
            (a, b) => panic!("ours {a:?}, the crate's {b:?}"),
        }
    }

    fn st(header: &str, data: usize) -> Vec<u8> {
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        b.resize(b.len() + data, 0);
        b
    }

    fn fixture() -> Vec<u8> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/tiny/hf/model.safetensors"
        );
        std::fs::read(path).unwrap()
    }

    #[test]
    fn header_parser_agrees_with_the_safetensors_crate() {
        agree(&fixture());
        let t = |dtype: &str, shape: &str, offsets: &str| {
            format!(r#"{{"dtype":{dtype},"shape":{shape},"data_offsets":{offsets}}}"#)
        };
        let cases = [
            ("{}".to_owned(), 0),
            ("  {}    ".to_owned(), 0),
            (format!(r#"{{"a":{}}}"#, t(r#""U8""#, "[4]", "[0,4]")), 4),
            (
                format!(r#"{{"\u0061\n":{}}}"#, t(r#""U8""#, "[4]", "[0,4]")),
                4,
            ),
            (
                format!(
                    r#"{{"a":{},"b":{}}}"#,
                    t(r#""U8""#, "[4]", "[4,8]"),
                    t(r#""U8""#, "[4]", "[0,4]")
                ),
                8,
            ),
            (
                format!(
                    r#"{{"a":{},"b":{}}}"#,
                    t(r#""U8""#, "[4]", "[0,4]"),
                    t(r#""U8""#, "[4]", "[2,6]")
                ),
                6,
            ),
            (
                format!(
                    r#"{{"a":{},"b":{}}}"#,
                    t(r#""U8""#, "[4]", "[0,4]"),
                    t(r#""U8""#, "[4]", "[8,12]")
                ),
                12,
            ),
            (format!(r#"{{"a":{}}}"#, t(r#""U8""#, "[64]", "[0,64]")), 10),
            (format!(r#"{{"a":{}}}"#, t(r#""U8""#, "[4]", "[0,4]")), 9),
            (format!(r#"{{"a":{}}}"#, t(r#""U8""#, "[4]", "[4,0]")), 4),
            (format!(r#"{{"a":{}}}"#, t(r#""BF16""#, "[4]", "[0,4]")), 4),
            (
                format!(
                    r#"{{"a":{}}}"#,
                    t(r#""F32""#, "[4294967296,4294967296,16]", "[0,4]")
                ),
                4,
            ),
            (format!(r#"{{"a":{}}}"#, t(r#""F4""#, "[3]", "[0,2]")), 2),
            (format!(r#"{{"a":{}}}"#, t(r#""C64""#, "[1]", "[0,8]")), 8),
            (format!(r#"{{"a":{}}}"#, t(r#""Q9_X""#, "[1]", "[0,1]")), 1),
            (format!(r#"{{"a":{}}}"#, t(r#""U8""#, "[-0]", "[-0,-0]")), 0),
            (format!(r#"{{"a":{}}}"#, t(r#""U8""#, "[1]", "[0,1.0]")), 1),
            (format!(r#"{{"a":{}}}"#, t(r#""U8""#, "[1]", "[0,1,2]")), 1),
            (format!(r#"{{"a":{}}}"#, t(r#""U8""#, "[1]", "[0]")), 1),
            (
                format!(
                    r#"{{"a":{}}}"#,
                    t(r#""U8""#, "[1]", "[0,18446744073709551616]")
                ),
                1,
            ),
            (format!(r#"{{"a":{}}}"#, t("8", "[1]", "[0,1]")), 1),
            (format!(r#"{{"a":{}}}"#, t(r#""U8""#, r#""1""#, "[0,1]")), 1),
            (r#"{"a":{"dtype":"U8","shape":[1]}}"#.to_owned(), 1),
            (
                r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":[{}]}}"#.to_owned(),
                1,
            ),
            (
                r#"{"a":{"dtype":"U8","dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#.to_owned(),
                1,
            ),
            (r#"{"a":5}"#.to_owned(), 0),
            (r#"{"__metadata__":null}"#.to_owned(), 0),
            (r#"{"__metadata__":{"format":"pt","k":""}}"#.to_owned(), 0),
            (r#"{"__metadata__":{"k":1}}"#.to_owned(), 0),
            (r#"{"__metadata__":[]}"#.to_owned(), 0),
            (r#"{"__metadata__":{},"__metadata__":{}}"#.to_owned(), 0),
            ("[]".to_owned(), 0),
            (r#""{}""#.to_owned(), 0),
            ("{} x".to_owned(), 0),
            (r#"{"a":"#.to_owned(), 0),
        ];
        for (header, data) in cases {
            agree(&st(&header, data));
        }
        for bad in [
            &b""[..],
            b"\x01\x00",
            &100_000_001u64.to_le_bytes(),
            &[2, 0, 0, 0, 0, 0, 0, 0, b'{'],
        ] {
            agree(bad);
        }
        // Not UTF-8.
        agree(&[4, 0, 0, 0, 0, 0, 0, 0, b'{', 0xff, 0xfe, b'}']);
        // Intended differences: a repeated name is refused, and a tensor given as an array
        // (which serde accepts for a struct) is not a safetensors header.
        let dup = format!(
            r#"{{"a":{},"a":{}}}"#,
            t(r#""U8""#, "[1]", "[0,1]"),
            t(r#""U8""#, "[1]", "[1,2]")
        );
        assert_eq!(
            ours(&st(&dup, 2)),
            Err(SafetensorsError::DuplicateName("a".into()))
        );
        assert!(ours(&st(r#"{"a":["U8",[1],[0,1]]}"#, 1)).is_err());
    }

    /// The summary as it was taken from a parsed `serde_json::Value` tree: kind, vocabulary
    /// size, pre-tokenizer, chat template.
    fn from_tree(tokenizer: &[u8], config: &[u8]) -> (String, Option<u64>, Option<String>, bool) {
        use serde_json::Value;
        let mut out = ("tokenizer.json".to_owned(), None, None, false);
        if let Ok(v) = serde_json::from_slice::<Value>(tokenizer) {
            let model = v.get("model");
            let mut ids: HashSet<u64> = model
                .and_then(|m| m.get("vocab"))
                .and_then(Value::as_object)
                .map(|m| m.values().filter_map(Value::as_u64).collect())
                .unwrap_or_default();
            if let Some(added) = v.get("added_tokens").and_then(Value::as_array) {
                ids.extend(
                    added
                        .iter()
                        .filter_map(|t| t.get("id").and_then(Value::as_u64)),
                );
            }
            out.1 = Some(ids.len() as u64);
            out.2 = v
                .get("pre_tokenizer")
                .and_then(|p| p.get("type"))
                .and_then(Value::as_str)
                .map(str::to_owned);
            if let Some(t) = model.and_then(|m| m.get("type")).and_then(Value::as_str) {
                out.0 = format!("tokenizer.json:{t}");
            }
        }
        out.3 =
            serde_json::from_slice::<Value>(config).is_ok_and(|v| v.get("chat_template").is_some());
        out
    }

    #[test]
    fn tokenizer_summary_agrees_with_a_parsed_tree() {
        let real = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tiny/hf/");
        let tokenizers = [
            std::fs::read(format!("{real}tokenizer.json")).unwrap(),
            br#"{"model":{"type":"BPE","vocab":{"a":1,"b":1,"c":"x","d":-1,"e":2.0,"f":7}},
                "added_tokens":[{"id":3},{"id":1},5,{"id":"x"},{"content":"y"},[{"id":9}]],
                "pre_tokenizer":{"type":"ByteLevel","add_prefix_space":false}}"#
                .to_vec(),
            br#"{"model":{"type":"A","vocab":{"a":1}},"model":{"vocab":{"b":2,"c":3}}}"#.to_vec(),
            br#"{"model":{"type":"A","type":"B"},"pre_tokenizer":{"type":1}}"#.to_vec(),
            br#"{"model":null,"added_tokens":{"id":1},"pre_tokenizer":"ByteLevel"}"#.to_vec(),
            br#"{"model":{"type":5,"vocab":[1,2]},"added_tokens":[{"id":1,"id":2}]}"#.to_vec(),
            br#"{"model":{"vocab":{"\u0061":18446744073709551615}}}"#.to_vec(),
            b"{}".to_vec(),
            b"[]".to_vec(),
            b"5".to_vec(),
            b"{} trailing".to_vec(),
            b"{\"model\":".to_vec(),
        ];
        let configs = [
            std::fs::read(format!("{real}tokenizer_config.json")).unwrap(),
            br#"{"chat_template":null}"#.to_vec(),
            br#"{"a":{"chat_template":"x"}}"#.to_vec(),
            b"[]".to_vec(),
            b"{".to_vec(),
        ];
        for (i, tokenizer) in tokenizers.iter().enumerate() {
            let config = &configs[i % configs.len()];
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("tokenizer.json"), tokenizer).unwrap();
            std::fs::write(dir.path().join("tokenizer_config.json"), config).unwrap();
            let info = tokenizer_info(dir.path());
            let got = (info.kind, info.vocab_size, info.pre, info.chat_template);
            assert_eq!(
                got,
                from_tree(tokenizer, config),
                "{}",
                String::from_utf8_lossy(tokenizer)
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn mutated_headers_agree_with_the_safetensors_crate(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)
        ) {
            let mut buf = fixture();
            let header = 8 + usize::try_from(u64::from_le_bytes(buf[..8].try_into().unwrap())).unwrap();
            for (at, byte) in edits {
                let at = 8 + at.index(header - 8);
                // Mostly JSON punctuation and digits, which make the interesting near misses.
                buf[at] = b"{}[],:\"0123456789-eE. "[usize::from(byte) % 22];
            }
            agree(&buf);
        }
    }
}
