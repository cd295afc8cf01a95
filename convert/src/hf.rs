//! Hugging Face checkpoints: `config.json` plus one `model.safetensors` or shards listed in
//! `model.safetensors.index.json`.
//!
//! Headers are parsed and validated by the `safetensors` crate (header length cap, contiguous
//! non-overlapping offsets that cover the file exactly, overflow-checked sizes). On top of that
//! qforge rejects duplicate tensor names (the crate's map would keep only the last one), dtypes it
//! has no codec for, and index files that disagree with their shards or point outside the model
//! directory.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use qforge_quantize::DType;
use safetensors::{SafeTensorError, SafeTensors};
use serde_json::Value;

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

/// A JSON object's entries in file order, duplicates kept (`serde_json` maps silently keep only
/// the last of a repeated key, which would hide a duplicate tensor).
struct Entries<T>(Vec<(String, T)>);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Entries<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
            type Value = Entries<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, T>()? {
                    out.push((k, v));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

impl<T> Entries<T> {
    fn first_duplicate(&self) -> Option<&str> {
        let mut seen = HashSet::with_capacity(self.0.len());
        self.0
            .iter()
            .map(|(k, _)| k.as_str())
            .find(|k| !seen.insert(*k))
    }
}

/// Parse and validate one safetensors file already mapped as `file` (index `file_index`).
/// Returns its tensors in data-offset order.
fn read_file(
    file: &MappedFile,
    file_index: usize,
) -> std::result::Result<Vec<RawTensor>, SafetensorsError> {
    let buf = file.bytes();
    // Duplicate names first: the crate would silently drop all but one.
    if let Some(len) = buf
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
    {
        let header = usize::try_from(len)
            .ok()
            .and_then(|n| buf.get(8..8usize.checked_add(n)?));
        let entries =
            header.and_then(|h| serde_json::from_slice::<Entries<serde::de::IgnoredAny>>(h).ok());
        if let Some(name) = entries.as_ref().and_then(Entries::first_duplicate) {
            return Err(SafetensorsError::DuplicateName(name.to_owned()));
        }
    }
    let (n, meta) = SafeTensors::read_metadata(buf)?;
    let data_start = 8 + n as u64;
    let infos = meta.tensors();
    let mut out = Vec::with_capacity(infos.len());
    for name in meta.offset_keys() {
        let info = infos[&name];
        let spelled = format!("{:?}", info.dtype);
        let dtype = DType::from_safetensors(&spelled).ok_or_else(|| {
            SafetensorsError::UnsupportedDType {
                tensor: name.clone(),
                dtype: spelled,
            }
        })?;
        let (s, e) = info.data_offsets;
        out.push(RawTensor {
            dtype,
            shape: info.shape.iter().map(|&d| d as u64).collect(),
            layout: TensorLayout::Contiguous(Span {
                file: file_index,
                offset: data_start + s as u64,
                len: (e - s) as u64,
            }),
            file: file_index,
            name,
        });
    }
    Ok(out)
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
    if real.parent() != Some(real_dir.as_path()) {
        return Err(outside());
    }
    Ok(path)
}

/// Parse `model.safetensors.index.json`: shard file → tensor names it must hold.
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
    #[derive(serde::Deserialize)]
    struct IndexFile {
        weight_map: Entries<String>,
    }
    let index: IndexFile = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    if let Some(k) = index.weight_map.first_duplicate() {
        return Err(bad(format!("tensor {k:?} listed twice in weight_map")));
    }
    let mut shards: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (tensor, file) in index.weight_map.0 {
        shards.entry(file).or_default().push(tensor);
    }
    if shards.is_empty() {
        return Err(bad("weight_map is empty".into()));
    }
    Ok(shards)
}

/// Summarize the tokenizer files of an HF directory.
pub(crate) fn tokenizer_info(dir: &Path) -> TokenizerInfo {
    let mut info = TokenizerInfo {
        kind: "none".into(),
        ..TokenizerInfo::default()
    };
    let tj = dir.join("tokenizer.json");
    if tj.is_file() {
        info.kind = "tokenizer.json".into();
        info.files.push(tj.clone());
        let small = std::fs::metadata(&tj).is_ok_and(|m| m.len() < 256 << 20);
        if let Some(v) = small
            .then(|| std::fs::read(&tj).ok())
            .flatten()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        {
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
            info.vocab_size = Some(ids.len() as u64);
            info.pre = v
                .get("pre_tokenizer")
                .and_then(|p| p.get("type"))
                .and_then(Value::as_str)
                .map(str::to_owned);
            if let Some(t) = model.and_then(|m| m.get("type")).and_then(Value::as_str) {
                info.kind = format!("tokenizer.json:{t}");
            }
        }
    }
    let tc = dir.join("tokenizer_config.json");
    if tc.is_file() {
        info.files.push(tc.clone());
        info.chat_template = std::fs::read(&tc)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .is_some_and(|v| v.get("chat_template").is_some());
    }
    if dir.join("chat_template.jinja").is_file() {
        info.chat_template = true;
    }
    info
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
            let want: HashSet<&str> = idx[&shard].iter().map(String::as_str).collect();
            let have: HashSet<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
            if let Some(t) = tensors.iter().find(|t| !want.contains(t.name.as_str())) {
                let kind = SafetensorsError::UnindexedTensor {
                    tensor: t.name.clone(),
                    shard,
                };
                return Err(Error::Safetensors {
                    path: p.clone(),
                    kind,
                });
            }
            let mut missing: Vec<&&str> = want.iter().filter(|n| !have.contains(**n)).collect();
            missing.sort();
            if let Some(t) = missing.first() {
                let kind = SafetensorsError::IndexedTensorMissing {
                    tensor: (**t).to_owned(),
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
    let tokenizer = tokenizer_info(&dir);
    Checkpoint::assemble(
        Format::Hf,
        path.to_path_buf(),
        config,
        tokenizer,
        files,
        raw,
        None,
    )
}
