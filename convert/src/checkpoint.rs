//! [`Checkpoint`]: a memory-mapped model in any supported format, with its tensors mapped to
//! typed roles and validated against its configuration.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use qforge_codecs::DType;
use serde::Serialize;

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::gguf::GgufMetadata;
use crate::mmap::MappedFile;
use crate::names::{NameMatch, NameScheme, Part, TensorId, TensorKey};

/// The container format of a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Hugging Face safetensors directory (single file or sharded with an index).
    Hf,
    /// Meta `params.json` + `consolidated.NN.pth`.
    Meta,
    /// A GGUF file.
    Gguf,
}

impl Format {
    /// The naming scheme of this format.
    pub const fn scheme(self) -> NameScheme {
        match self {
            Format::Hf => NameScheme::Hf,
            Format::Meta => NameScheme::Meta,
            Format::Gguf => NameScheme::Gguf,
        }
    }
}

/// What is known about the checkpoint's tokenizer without loading it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TokenizerInfo {
    /// `tokenizer.json`, `tiktoken` (Meta `tokenizer.model`), `gguf:gpt2`, `gguf:llama`, or
    /// `none`.
    pub kind: String,
    /// Tokenizer files found beside the model.
    pub files: Vec<PathBuf>,
    /// Number of tokens, when it could be counted.
    pub vocab_size: Option<u64>,
    /// GGUF `tokenizer.ggml.pre` / HF pre-tokenizer type, when known.
    pub pre: Option<String>,
    /// Whether a chat template is present.
    pub chat_template: bool,
}

/// A byte range in one of the checkpoint's mapped files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Span {
    /// index into [`Checkpoint::files`]
    pub file: usize,
    /// absolute byte offset in that file
    pub offset: u64,
    /// byte length
    pub len: u64,
}

/// Where a tensor's bytes are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TensorLayout {
    /// Contiguous row-major bytes.
    Contiguous(Span),
    /// A strided view into a storage (torch): element `i` (multi-index) is at
    /// `storage.offset + esize · Σ i_k · strides[k]`. `storage` covers the whole storage, so
    /// every reachable element has been checked to lie inside it.
    Strided {
        /// the storage's bytes, starting at the view's first element
        storage: Span,
        /// strides in elements, one per dimension
        strides: Vec<u64>,
    },
    /// Model-parallel shards concatenated along `dim`, each with its own shape and layout.
    Concat {
        /// the dimension the shards are split on
        dim: usize,
        /// the shards, in rank order
        parts: Vec<(Vec<u64>, TensorLayout)>,
    },
}

/// One tensor of a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorEntry {
    /// The name in the source format.
    pub name: String,
    /// Its role.
    pub key: TensorKey,
    /// Element format.
    pub dtype: DType,
    /// Shape, outermost first (`[out, in]` for linears; the reverse of GGUF's `ne`).
    pub shape: Vec<u64>,
    /// Where its bytes are.
    pub layout: TensorLayout,
}

impl TensorEntry {
    /// Element count.
    pub fn numel(&self) -> u64 {
        self.shape.iter().product()
    }

    /// Byte size of the tensor's data (validated when the checkpoint was read).
    pub fn nbytes(&self) -> u64 {
        self.dtype.bytes_for(self.numel()).unwrap_or(0)
    }
}

/// A model opened for reading: configuration, tokenizer summary and tensors, with the data
/// left in memory-mapped files until asked for.
#[derive(Debug)]
pub struct Checkpoint {
    /// Container format.
    pub format: Format,
    /// The path it was opened from.
    pub path: PathBuf,
    /// Validated configuration.
    pub config: ModelConfig,
    /// Tokenizer summary.
    pub tokenizer: TokenizerInfo,
    /// Tensors in file order.
    pub tensors: Vec<TensorEntry>,
    /// GGUF metadata, for GGUF inputs.
    pub gguf: Option<GgufMetadata>,
    /// Things the reader skipped or assumed, for the user to see.
    pub notes: Vec<String>,
    pub(crate) files: Vec<MappedFile>,
}

/// A tensor as a reader found it, before naming and validation.
pub(crate) struct RawTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub layout: TensorLayout,
    /// the file it was found in (for error messages)
    pub file: usize,
}

impl Checkpoint {
    /// Open a checkpoint, detecting its format: a `.gguf` file, a directory with `config.json`
    /// and safetensors (HF), or a directory with `params.json` and `consolidated.*.pth` (Meta).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.is_file() {
            let mut magic = [0u8; 4];
            let n = {
                use std::io::Read;
                let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
                f.read(&mut magic).map_err(|e| Error::io(path, e))?
            };
            if n == 4 && &magic == b"GGUF" {
                return crate::gguf::read(path);
            }
            if path.extension().is_some_and(|e| e == "safetensors") {
                return crate::hf::read(path);
            }
            return Err(Error::NotAModel {
                path: path.into(),
                reason: "a file must be GGUF (magic \"GGUF\") or .safetensors".into(),
            });
        }
        if path.join("params.json").is_file() {
            return crate::meta::read(path);
        }
        if path.join("config.json").is_file() {
            return crate::hf::read(path);
        }
        let ggufs = list_dir(path)?
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
            .collect::<Vec<_>>();
        if let [one] = ggufs.as_slice() {
            return crate::gguf::read(one);
        }
        Err(Error::NotAModel {
            path: path.into(),
            reason: "expected a .gguf file, a directory with config.json and *.safetensors (Hugging Face), \
                     or a directory with params.json and consolidated.*.pth (Meta)"
                .into(),
        })
    }

    /// A checkpoint with the shapes `config.json` (in directory `path`) implies and no data,
    /// for planning (`qforge plan` on a model that is only a config). Tensors have the dtype of
    /// the config's `torch_dtype` (BF16 when absent); reading their bytes is an
    /// [`Error::NoTensorData`]. When `path` holds safetensors, use [`Checkpoint::open`].
    pub fn from_config(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let config_path = path.join("config.json");
        let config = crate::config::read_json_config(&config_path, ModelConfig::from_hf_json)?;
        let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
        let dtype = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| {
                let d = v
                    .get("torch_dtype")
                    .or_else(|| v.get("dtype"))?
                    .as_str()?
                    .to_owned();
                Some(d)
            })
            .map_or(DType::BF16, |d| match d.as_str() {
                "float16" => DType::F16,
                "float32" => DType::F32,
                _ => DType::BF16,
            });
        let mut ids = vec![TensorId::TokenEmbedding, TensorId::OutputNorm];
        if !config.tie_word_embeddings {
            ids.push(TensorId::Output);
        }
        for index in 0..u32::try_from(config.num_layers).unwrap_or(u32::MAX) {
            ids.extend(
                config
                    .layer_tensors(index)
                    .into_iter()
                    .map(|kind| TensorId::Layer { index, kind }),
            );
        }
        let tensors = ids
            .into_iter()
            .map(|id| {
                let key = TensorKey::weight(id);
                let shape = config.expected_shape(id);
                let len =
                    dtype
                        .bytes_for(shape.iter().product())
                        .map_err(|source| Error::Codec {
                            path: config_path.clone(),
                            tensor: id.to_string(),
                            source,
                        })?;
                Ok(TensorEntry {
                    name: NameScheme::Hf.name(key).unwrap_or_else(|| id.to_string()),
                    key,
                    dtype,
                    shape,
                    layout: TensorLayout::Contiguous(Span {
                        file: 0,
                        offset: 0,
                        len,
                    }),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Checkpoint {
            format: Format::Hf,
            path: path.to_owned(),
            config,
            tokenizer: crate::hf::tokenizer_info(path),
            tensors,
            gguf: None,
            notes: vec!["planned from config.json alone: no tensor data".into()],
            files: Vec::new(),
        })
    }

    /// The directory holding the checkpoint's side files (config, tokenizer): the path itself
    /// for a directory, its parent for a single `.gguf` or `.safetensors` file.
    pub fn dir(&self) -> &Path {
        if self.path.is_dir() {
            &self.path
        } else {
            self.path.parent().unwrap_or(Path::new("."))
        }
    }

    /// The tensor named `name` (in this format's naming scheme).
    pub fn tensor(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Bytes of every stored tensor of role `id` (a weight with its scales, zero points and
    /// bias; every shard part), as the file holds them.
    pub fn role_bytes(&self, id: TensorId) -> u64 {
        self.tensors
            .iter()
            .filter(|t| t.key.id == id)
            .map(TensorEntry::nbytes)
            .sum()
    }

    /// The tensor with role `key`.
    pub fn tensor_by_key(&self, key: TensorKey) -> Option<&TensorEntry> {
        self.tensors.iter().find(|t| t.key == key)
    }

    /// Paths of the mapped files, in the order [`Span::file`] indexes them.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|f| f.path.as_path())
    }

    /// The path of mapped file `index`.
    pub fn file_path(&self, index: usize) -> &Path {
        &self.files[index].path
    }

    /// The tensor's bytes, contiguous and row-major: borrowed from the map when the file stores
    /// them that way, gathered into a new buffer otherwise (strided views, model-parallel merges).
    pub fn bytes(&self, t: &TensorEntry) -> Result<Cow<'_, [u8]>> {
        if self.files.is_empty() {
            return Err(Error::NoTensorData {
                path: self.path.clone(),
                tensor: t.name.clone(),
            });
        }
        if let TensorLayout::Contiguous(span) = &t.layout {
            return Ok(Cow::Borrowed(self.span(span)));
        }
        if t.dtype.is_block() {
            return Err(Error::UnsupportedDType {
                path: self.path.clone(),
                tensor: t.name.clone(),
                dtype: t.dtype,
                reason: "block formats cannot be strided or sharded",
            });
        }
        let esize = t.dtype.block_bytes();
        let mut out = Vec::with_capacity(usize::try_from(t.nbytes()).unwrap_or(0));
        self.gather(&t.layout, &t.shape, esize, &mut out);
        Ok(Cow::Owned(out))
    }

    /// The tensor decoded to `f32`, row-major.
    pub fn to_f32(&self, t: &TensorEntry) -> Result<Vec<f32>> {
        let bytes = self.bytes(t)?;
        let n = usize::try_from(t.numel()).map_err(|_| Error::UnsupportedDType {
            path: self.path.clone(),
            tensor: t.name.clone(),
            dtype: t.dtype,
            reason: "tensor too large for this machine's address space",
        })?;
        let mut out = vec![0f32; n];
        qforge_codecs::decode_to_f32(t.dtype, &bytes, &mut out).map_err(|source| Error::Codec {
            path: self.path.clone(),
            tensor: t.name.clone(),
            source,
        })?;
        Ok(out)
    }

    /// Tell the OS this process is done with `t`'s bytes for now (see
    /// [`MappedFile::release`]); long conversions call it after each tensor so peak RSS follows
    /// the largest tensor, not the model.
    pub fn release(&self, t: &TensorEntry) {
        self.release_layout(&t.layout);
    }

    fn release_layout(&self, l: &TensorLayout) {
        match l {
            TensorLayout::Contiguous(s) | TensorLayout::Strided { storage: s, .. } => {
                if let Some(f) = self.files.get(s.file) {
                    f.release(s.offset, s.len);
                }
            }
            TensorLayout::Concat { parts, .. } => {
                for (_, l) in parts {
                    self.release_layout(l);
                }
            }
        }
    }

    fn span(&self, s: &Span) -> &[u8] {
        // Spans are validated against the file length when the checkpoint is built.
        let start = s.offset as usize;
        &self.files[s.file].bytes()[start..start + s.len as usize]
    }

    /// Append the row-major bytes of a (validated) layout to `out`.
    fn gather(&self, layout: &TensorLayout, shape: &[u64], esize: u64, out: &mut Vec<u8>) {
        match layout {
            TensorLayout::Contiguous(span) => out.extend_from_slice(self.span(span)),
            TensorLayout::Strided { storage, strides } => {
                let base = self.span(storage);
                let es = esize as usize;
                let numel: u64 = shape.iter().product();
                let mut idx = vec![0u64; shape.len()];
                for _ in 0..numel {
                    let off =
                        idx.iter().zip(strides).map(|(i, s)| i * s).sum::<u64>() as usize * es;
                    out.extend_from_slice(&base[off..off + es]);
                    for d in (0..shape.len()).rev() {
                        idx[d] += 1;
                        if idx[d] < shape[d] {
                            break;
                        }
                        idx[d] = 0;
                    }
                }
            }
            TensorLayout::Concat { dim, parts } => {
                let outer: u64 = shape[..*dim].iter().product();
                out.reserve(shape.iter().product::<u64>() as usize * esize as usize);
                // Contiguous shards are read straight from the map; only other layouts are
                // gathered into a temporary first. On dim 0 the shards simply follow each other.
                let views: Vec<Cow<'_, [u8]>> = parts
                    .iter()
                    .map(|(s, l)| match l {
                        TensorLayout::Contiguous(span) => Cow::Borrowed(self.span(span)),
                        other => {
                            let mut b = Vec::new();
                            self.gather(other, s, esize, &mut b);
                            Cow::Owned(b)
                        }
                    })
                    .collect();
                for o in 0..outer as usize {
                    for ((s, l), b) in parts.iter().zip(&views) {
                        let chunk = s[*dim..].iter().product::<u64>() as usize * esize as usize;
                        out.extend_from_slice(&b[o * chunk..(o + 1) * chunk]);
                        if outer == 1 {
                            // A dim-0 merge is done with each shard as soon as it is copied.
                            self.release_layout(l);
                        }
                    }
                }
            }
        }
    }

    /// Name, validate and assemble what a reader found. Rejects unknown and duplicate names,
    /// shapes that disagree with the config, byte sizes that disagree with the dtype, spans
    /// outside their file, and models missing required tensors.
    pub(crate) fn assemble(
        format: Format,
        path: PathBuf,
        config: ModelConfig,
        tokenizer: TokenizerInfo,
        files: Vec<MappedFile>,
        raw: Vec<RawTensor>,
        gguf: Option<GgufMetadata>,
    ) -> Result<Self> {
        let scheme = format.scheme();
        let mut notes = Vec::new();
        let mut tensors = Vec::with_capacity(raw.len());
        let mut seen_names: HashSet<String> = HashSet::with_capacity(raw.len());
        let mut seen_keys: HashMap<TensorKey, String> = HashMap::with_capacity(raw.len());
        for r in raw {
            let file_path = files[r.file].path.clone();
            if !seen_names.insert(r.name.clone()) {
                return Err(Error::DuplicateTensor {
                    path: file_path,
                    name: r.name,
                });
            }
            let key = match scheme.parse(&r.name) {
                NameMatch::Tensor(k) => k,
                NameMatch::Ignored(why) => {
                    notes.push(format!("skipped {}: {why}", r.name));
                    continue;
                }
                NameMatch::Unknown => {
                    return Err(Error::UnknownTensor {
                        path: file_path,
                        name: r.name,
                        scheme: scheme.as_str(),
                    });
                }
            };
            if let Some(first) = seen_keys.insert(key, r.name.clone()) {
                return Err(Error::DuplicateTensor {
                    path: file_path,
                    name: format!("{} (same role as {first})", r.name),
                });
            }
            if let TensorId::Layer { index, kind } = key.id {
                // a tensor another family has (a bias in a Llama checkpoint), an expert past
                // the count or a dense FFN in a MoE block: not this model's
                if u64::from(index) < config.num_layers
                    && !config.layer_tensors(index).contains(&kind)
                {
                    return Err(Error::UnknownTensor {
                        path: file_path,
                        name: r.name,
                        scheme: scheme.as_str(),
                    });
                }
            }
            if let TensorId::Layer { index, .. } = key.id {
                if u64::from(index) >= config.num_layers {
                    return Err(Error::ShapeMismatch {
                        path: file_path,
                        tensor: r.name,
                        expected: vec![config.num_layers],
                        got: vec![u64::from(index)],
                    });
                }
            }
            // an mlx-lm U32 `weight` holds packed codes; Checkpoint::weight_storage checks it
            if key.part == Part::Weight && r.dtype != DType::U32 {
                let expected = config.expected_shape(key.id);
                if expected != r.shape {
                    return Err(Error::ShapeMismatch {
                        path: file_path,
                        tensor: r.name,
                        expected,
                        got: r.shape,
                    });
                }
            }
            check_layout(&files, &file_path, &r.name, r.dtype, &r.shape, &r.layout)?;
            tensors.push(TensorEntry {
                name: r.name,
                key,
                dtype: r.dtype,
                shape: r.shape,
                layout: r.layout,
            });
        }
        // Completeness: every role the config implies must be present in some form.
        let mut required = vec![TensorId::TokenEmbedding, TensorId::OutputNorm];
        if !config.tie_word_embeddings {
            required.push(TensorId::Output);
        }
        for index in 0..config.num_layers as u32 {
            required.extend(
                config
                    .layer_tensors(index)
                    .into_iter()
                    .map(|kind| TensorId::Layer { index, kind }),
            );
        }
        for id in required {
            let present = [Part::Weight, Part::WeightPacked]
                .iter()
                .any(|&part| seen_keys.contains_key(&TensorKey { id, part }));
            if !present {
                let name = scheme
                    .name(TensorKey::weight(id))
                    .unwrap_or_else(|| id.to_string());
                return Err(Error::MissingTensor { path, name });
            }
        }
        Ok(Checkpoint {
            format,
            path,
            config,
            tokenizer,
            tensors,
            gguf,
            notes,
            files,
        })
    }
}

/// Check that a layout covers exactly the tensor's bytes and stays inside its files.
fn check_layout(
    files: &[MappedFile],
    path: &Path,
    name: &str,
    dtype: DType,
    shape: &[u64],
    layout: &TensorLayout,
) -> Result<()> {
    let numel = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
    let bad = |reason: String| Error::ShardMismatch {
        path: path.into(),
        tensor: name.into(),
        reason,
    };
    let numel = numel.ok_or_else(|| bad(format!("element count of shape {shape:?} overflows")))?;
    let nbytes = dtype.bytes_for(numel).map_err(|source| Error::Codec {
        path: path.into(),
        tensor: name.into(),
        source,
    })?;
    let in_file = |s: &Span| {
        let flen = files.get(s.file).map_or(0, |f| f.bytes().len() as u64);
        s.offset.checked_add(s.len).is_some_and(|end| end <= flen)
    };
    match layout {
        TensorLayout::Contiguous(s) => {
            if s.len != nbytes {
                return Err(bad(format!(
                    "{} bytes stored, shape {shape:?} of {dtype} needs {nbytes}",
                    s.len
                )));
            }
            if !in_file(s) {
                return Err(bad(format!(
                    "bytes {}..+{} lie outside the file",
                    s.offset, s.len
                )));
            }
        }
        TensorLayout::Strided { storage, strides } => {
            if strides.len() != shape.len() {
                return Err(bad(format!(
                    "{} strides for {} dimensions",
                    strides.len(),
                    shape.len()
                )));
            }
            if numel > 0 {
                let last = shape.iter().zip(strides).try_fold(0u64, |a, (&d, &s)| {
                    (d - 1).checked_mul(s).and_then(|x| a.checked_add(x))
                });
                let end = last
                    .and_then(|l| l.checked_add(1))
                    .and_then(|e| e.checked_mul(dtype.block_bytes()));
                if end.is_none_or(|e| e > storage.len) {
                    return Err(bad(format!(
                        "strided view {shape:?}/{strides:?} reaches past its storage of {} bytes",
                        storage.len
                    )));
                }
            }
            if !in_file(storage) {
                return Err(bad(format!(
                    "storage bytes {}..+{} lie outside the file",
                    storage.offset, storage.len
                )));
            }
        }
        TensorLayout::Concat { dim, parts } => {
            if *dim >= shape.len() || parts.is_empty() {
                return Err(bad(format!(
                    "cannot concatenate {} parts on dim {dim} of {shape:?}",
                    parts.len()
                )));
            }
            let mut total = 0u64;
            for (s, l) in parts {
                let same_rest = s.len() == shape.len()
                    && s.iter()
                        .zip(shape)
                        .enumerate()
                        .all(|(i, (a, b))| i == *dim || a == b);
                if !same_rest {
                    return Err(bad(format!(
                        "shard shape {s:?} does not fit {shape:?} split on dim {dim}"
                    )));
                }
                total = total.saturating_add(s[*dim]);
                check_layout(files, path, name, dtype, s, l)?;
            }
            if total != shape[*dim] {
                return Err(bad(format!(
                    "shards add up to {total} on dim {dim}, expected {}",
                    shape[*dim]
                )));
            }
        }
    }
    Ok(())
}

pub(crate) fn list_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        out.push(e.map_err(|e| Error::io(dir, e))?.path());
    }
    out.sort();
    Ok(out)
}
