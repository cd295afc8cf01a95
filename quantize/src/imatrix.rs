//! llama.cpp importance matrices (`llama-imatrix` output, `llama-quantize --imatrix` input).
//!
//! Two file formats, both read and written here exactly as the pinned llama.cpp does
//! (`tools/imatrix/imatrix.cpp` `save_imatrix` / `save_imatrix_legacy`,
//! `common/imatrix-loader.cpp` `common_imatrix_load`):
//!
//! * **GGUF** (current): `general.type = "imatrix"`, `imatrix.datasets` (string array),
//!   `imatrix.chunk_count` and `imatrix.chunk_size` (u32), then per weight tensor, names
//!   sorted bytewise, `<name>.in_sum2` (F32, `ne = [columns, matrices]`: Σx² over every token
//!   seen, per input column) and `<name>.counts` (F32, `ne = [1, matrices]`: tokens seen).
//!   Trailing dimensions of 1 are dropped, as ggml's `ggml_n_dims` does, so a dense weight's
//!   tensors are 1-D.
//! * **legacy `.dat`**: `i32 n_entries`, then per entry `i32 len, name, i32 ncall, i32 nval,
//!   nval × f32` where each value is `Σx²/count · ncall` and `ncall = ⌈max count / chunk
//!   size⌉`; then optionally `i32 chunk count, i32 len, dataset name`.
//!
//! Every length, count and value is checked before it is used: counts against the bytes left,
//! names for UTF-8 and NUL, values for being finite and non-negative, and a GGUF imatrix goes
//! through the GGUF reader's own checks ([`qforge_convert::gguf::parse`]). Nothing here panics on file
//! data, and allocations are bounded by the file size.
//!
//! [`Imatrix::quant_weights`] turns a file into the per-column weights llama-quantize passes
//! to its quantizers (`tools/quantize/quantize.cpp` `load_imatrix`), with the same float
//! operations.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use qforge_codecs::DType;

use qforge_convert::gguf::{GgufArray, GgufError, GgufValue, StringArray, MAX_NAME_LEN};
use qforge_convert::write::gguf::{plan, GgufTensorSpec, GgufWriter};
use qforge_convert::{Error, Result};
use qforge_stage::{AtomicFile, FileRecord};

/// `general.type` of an imatrix GGUF.
pub const GENERAL_TYPE: &str = "imatrix";
/// Key of the dataset names.
pub const KEY_DATASETS: &str = "imatrix.datasets";
/// Key of the number of chunks processed.
pub const KEY_CHUNK_COUNT: &str = "imatrix.chunk_count";
/// Key of the tokens per chunk.
pub const KEY_CHUNK_SIZE: &str = "imatrix.chunk_size";
/// Suffix of the Σx² tensors.
pub const SUFFIX_SUMS: &str = ".in_sum2";
/// Suffix of the token-count tensors.
pub const SUFFIX_COUNTS: &str = ".counts";

/// Which file format an [`Imatrix`] was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImatrixFormat {
    /// The GGUF format: raw sums and token counts.
    Gguf,
    /// The legacy `.dat` format: sums normalized to `Σx²/count · ncall`, counts `[ncall]`.
    Legacy,
}

/// One weight tensor's statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct ImatrixEntry {
    /// Per input column of each matrix (`counts.len()` matrices, row-major): Σx² over the
    /// tokens seen (legacy: `Σx²/count · ncall`).
    pub sums: Vec<f32>,
    /// Tokens seen by each matrix (legacy: one value, `ncall`).
    pub counts: Vec<i64>,
}

impl ImatrixEntry {
    /// Input columns per matrix.
    pub fn columns(&self) -> usize {
        self.sums.len() / self.counts.len().max(1)
    }
}

/// An importance matrix: statistics per weight tensor (GGUF tensor names, e.g.
/// `blk.0.attn_q.weight`) plus llama-imatrix's metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Imatrix {
    /// The format the statistics are in.
    pub format: ImatrixFormat,
    /// Entries by tensor name (sorted bytewise, llama-imatrix's order).
    pub entries: BTreeMap<String, ImatrixEntry>,
    /// Names of the text files the statistics were collected on.
    pub datasets: Vec<String>,
    /// Chunks processed.
    pub chunk_count: u32,
    /// Tokens per chunk (0 when unknown: legacy files).
    pub chunk_size: u32,
    /// Whether the GGUF file has all three `imatrix.*` keys (llama-quantize requires them).
    pub has_metadata: bool,
}

/// What is wrong with an importance-matrix file (carried by `qforge_convert::Error::Imatrix`).
/// Offsets are absolute byte offsets.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ImatrixError {
    /// A GGUF imatrix that the GGUF reader rejects.
    #[error("{0}")]
    Gguf(GgufError),
    /// `general.type` is present and not `"imatrix"` (e.g. a model file).
    #[error("general.type is {found:?}, not \"imatrix\" (is this a model file?)")]
    NotImatrix {
        /// the value found
        found: String,
    },
    /// A metadata key with the wrong value type.
    #[error("metadata key {key} must be {expected}")]
    KeyType {
        /// the key
        key: &'static str,
        /// the type llama.cpp reads it as
        expected: &'static str,
    },
    /// A tensor whose name ends in neither `.in_sum2` nor `.counts`.
    #[error("tensor {tensor:?} is neither <name>.in_sum2 nor <name>.counts")]
    UnknownTensor {
        /// the tensor
        tensor: String,
    },
    /// A `.in_sum2` tensor without its `.counts` or the other way round.
    #[error("entry {name:?} has no {missing} tensor")]
    Unpaired {
        /// the weight name
        name: String,
        /// the missing suffix
        missing: &'static str,
    },
    /// A sums or counts tensor that is not F32.
    #[error("tensor {tensor:?} is {dtype}, llama.cpp requires F32")]
    NotF32 {
        /// the tensor
        tensor: String,
        /// its type
        dtype: DType,
    },
    /// Sums and counts whose sizes do not fit together (no counts, no sums, or sums not a
    /// whole number of columns per count).
    #[error("entry {name:?}: {sums} sums cannot be split over {counts} counts")]
    BadShape {
        /// the weight name
        name: String,
        /// sums stored
        sums: u64,
        /// counts stored
        counts: u64,
    },
    /// A count that is negative, not finite or not representable.
    #[error("entry {name:?}: count {index} is {value}, not a non-negative token count")]
    BadCount {
        /// the weight name
        name: String,
        /// which count
        index: usize,
        /// its value
        value: f64,
    },
    /// A sum that is negative or not finite.
    #[error("entry {name:?}: value {index} is {value}, not a finite non-negative sum of squares")]
    BadValue {
        /// the weight name
        name: String,
        /// which value
        index: usize,
        /// its value
        value: f32,
    },
    /// No entries at all (llama.cpp: "no data in file").
    #[error("no entries in the file")]
    Empty,
    /// The file ends inside a field.
    #[error("file truncated: {need} bytes needed at offset {offset}")]
    Truncated {
        /// where the field starts
        offset: u64,
        /// bytes the field needs
        need: u64,
    },
    /// A legacy length or count that is negative or larger than the rest of the file.
    #[error("{what} {value} at offset {offset} is negative or larger than the file can hold")]
    BadLength {
        /// which field
        what: &'static str,
        /// its value
        value: i64,
        /// where the field is
        offset: u64,
    },
    /// A legacy entry name that is empty, not UTF-8 or contains NUL.
    #[error("entry name at offset {offset} is empty, not UTF-8 or contains NUL")]
    BadName {
        /// where the name's length field is
        offset: u64,
    },
    /// The same entry twice.
    #[error("duplicate entry {name:?}")]
    DuplicateEntry {
        /// the weight name
        name: String,
    },
    /// Bytes after the legacy trailer.
    #[error("{count} unexpected bytes after the end of the data at offset {offset}")]
    TrailingBytes {
        /// where they start
        offset: u64,
        /// how many
        count: u64,
    },
    /// A GGUF imatrix without `imatrix.datasets`, `imatrix.chunk_count` and
    /// `imatrix.chunk_size`, which llama-quantize refuses.
    #[error(
        "missing imatrix metadata (imatrix.datasets, imatrix.chunk_count, imatrix.chunk_size)"
    )]
    MissingMetadata,
    /// A name too long for a ggml tensor name once `.in_sum2` is appended.
    #[error(
        "entry {name:?} is too long for a GGUF tensor name ({MAX_NAME_LEN} bytes with .in_sum2)"
    )]
    NameTooLong {
        /// the weight name
        name: String,
    },
    /// Statistics that cannot be written (e.g. the legacy format without a chunk size).
    #[error("cannot write: {0}")]
    Unwritable(String),
}

/// The error naming `path` for `kind`.
pub fn err(path: &Path, kind: ImatrixError) -> Error {
    Error::Imatrix {
        path: path.to_owned(),
        kind: Box::new(kind),
    }
}

/// A little-endian cursor over the legacy format.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> std::result::Result<&[u8], ImatrixError> {
        let s = self
            .pos
            .checked_add(n)
            .and_then(|end| self.buf.get(self.pos..end))
            .ok_or(ImatrixError::Truncated {
                offset: self.pos as u64,
                need: n as u64,
            })?;
        self.pos += n;
        Ok(s)
    }

    fn i32(&mut self) -> std::result::Result<i32, ImatrixError> {
        let b = self.take(4)?;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// An `i32` length/count that must be in `min..=max`.
    fn len(
        &mut self,
        what: &'static str,
        min: i64,
        max: usize,
    ) -> std::result::Result<usize, ImatrixError> {
        let offset = self.pos as u64;
        let v = i64::from(self.i32()?);
        if v < min || v > max as i64 {
            return Err(ImatrixError::BadLength {
                what,
                value: v,
                offset,
            });
        }
        Ok(v as usize)
    }
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn check_sums(name: &str, sums: &[f32]) -> std::result::Result<(), ImatrixError> {
    match sums.iter().position(|v| !(v.is_finite() && *v >= 0.0)) {
        Some(index) => Err(ImatrixError::BadValue {
            name: name.to_owned(),
            index,
            value: sums[index],
        }),
        None => Ok(()),
    }
}

/// Smallest legacy entry: name length (4) + 1 name byte + ncall (4) + nval (4) + one value (4).
const MIN_LEGACY_ENTRY: usize = 17;

impl Imatrix {
    /// Read either format from `path` (GGUF when the file starts with `GGUF`, the legacy
    /// format otherwise).
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&bytes).map_err(|k| err(path, k))
    }

    /// Parse a whole file held in `bytes` (see [`Imatrix::read`]).
    pub fn parse(bytes: &[u8]) -> std::result::Result<Self, ImatrixError> {
        if bytes.starts_with(&qforge_convert::gguf::MAGIC) {
            Self::parse_gguf(bytes)
        } else {
            Self::parse_legacy(bytes)
        }
    }

    fn parse_gguf(bytes: &[u8]) -> std::result::Result<Self, ImatrixError> {
        let (meta, infos) = qforge_convert::gguf::parse(bytes).map_err(ImatrixError::Gguf)?;
        if let Some(v) = meta.get("general.type") {
            match v.as_str() {
                Some(GENERAL_TYPE) => {}
                Some(other) => {
                    return Err(ImatrixError::NotImatrix {
                        found: other.to_owned(),
                    })
                }
                None => {
                    return Err(ImatrixError::KeyType {
                        key: "general.type",
                        expected: "a string",
                    })
                }
            }
        }
        let datasets = match meta.get(KEY_DATASETS) {
            None => None,
            Some(GgufValue::Array(GgufArray::String(a))) => {
                Some(a.iter().map(str::to_owned).collect::<Vec<_>>())
            }
            Some(_) => {
                return Err(ImatrixError::KeyType {
                    key: KEY_DATASETS,
                    expected: "an array of strings",
                })
            }
        };
        let u32_key = |key: &'static str| match meta.get(key) {
            None => Ok(None),
            Some(GgufValue::U32(v)) => Ok(Some(*v)),
            Some(_) => Err(ImatrixError::KeyType {
                key,
                expected: "a u32",
            }),
        };
        let chunk_count = u32_key(KEY_CHUNK_COUNT)?;
        let chunk_size = u32_key(KEY_CHUNK_SIZE)?;
        let has_metadata = datasets.is_some() && chunk_count.is_some() && chunk_size.is_some();
        if infos.is_empty() {
            return Err(ImatrixError::Empty);
        }
        // name -> (sums, counts) tensor infos
        let mut pairs: BTreeMap<&str, [Option<&qforge_convert::gguf::GgufTensorInfo>; 2]> =
            BTreeMap::new();
        for t in &infos {
            let (name, slot) = if let Some(n) = t.name.strip_suffix(SUFFIX_SUMS) {
                (n, 0)
            } else if let Some(n) = t.name.strip_suffix(SUFFIX_COUNTS) {
                (n, 1)
            } else {
                return Err(ImatrixError::UnknownTensor {
                    tensor: t.name.clone(),
                });
            };
            if t.dtype != DType::F32 {
                return Err(ImatrixError::NotF32 {
                    tensor: t.name.clone(),
                    dtype: t.dtype,
                });
            }
            // Tensor names are unique (checked by the GGUF reader), so each slot fills once.
            pairs.entry(name).or_default()[slot] = Some(t);
        }
        let data = |t: &qforge_convert::gguf::GgufTensorInfo| {
            // In bounds: the GGUF reader checked every tensor's bytes lie inside the file.
            let start = usize::try_from(t.absolute_offset).unwrap_or(usize::MAX);
            let len = usize::try_from(t.nbytes).unwrap_or(usize::MAX);
            start
                .checked_add(len)
                .and_then(|end| bytes.get(start..end))
                .map(f32s)
                .ok_or(ImatrixError::Truncated {
                    offset: t.absolute_offset,
                    need: t.nbytes,
                })
        };
        let mut entries = BTreeMap::new();
        for (name, [s, c]) in pairs {
            let missing = |m| ImatrixError::Unpaired {
                name: name.to_owned(),
                missing: m,
            };
            let s = s.ok_or_else(|| missing(SUFFIX_SUMS))?;
            let c = c.ok_or_else(|| missing(SUFFIX_COUNTS))?;
            let (ns, nc) = (s.numel(), c.numel());
            if ns == 0 || nc == 0 || ns % nc != 0 {
                return Err(ImatrixError::BadShape {
                    name: name.to_owned(),
                    sums: ns,
                    counts: nc,
                });
            }
            let sums = data(s)?;
            check_sums(name, &sums)?;
            let counts = data(c)?
                .into_iter()
                .enumerate()
                .map(|(index, v)| {
                    // lround; 2^62 keeps the rounded value and later sums inside i64.
                    if v.is_finite() && (0.0..4.611_686e18).contains(&v) {
                        Ok(v.round() as i64)
                    } else {
                        Err(ImatrixError::BadCount {
                            name: name.to_owned(),
                            index,
                            value: f64::from(v),
                        })
                    }
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            entries.insert(name.to_owned(), ImatrixEntry { sums, counts });
        }
        Ok(Imatrix {
            format: ImatrixFormat::Gguf,
            entries,
            datasets: datasets.unwrap_or_default(),
            chunk_count: chunk_count.unwrap_or(0),
            chunk_size: chunk_size.unwrap_or(0),
            has_metadata,
        })
    }

    fn parse_legacy(bytes: &[u8]) -> std::result::Result<Self, ImatrixError> {
        let mut cur = Cursor { buf: bytes, pos: 0 };
        let n = cur.len("n_entries", 1, bytes.len() / MIN_LEGACY_ENTRY)?;
        let mut entries = BTreeMap::new();
        for _ in 0..n {
            let offset = cur.pos as u64;
            let len = cur.len("name length", 1, cur.left())?;
            let name = std::str::from_utf8(cur.take(len)?)
                .ok()
                .filter(|s| !s.contains('\0'))
                .ok_or(ImatrixError::BadName { offset })?
                .to_owned();
            let call_offset = cur.pos as u64;
            let ncall = cur.i32()?;
            if ncall < 0 {
                return Err(ImatrixError::BadLength {
                    what: "ncall",
                    value: i64::from(ncall),
                    offset: call_offset,
                });
            }
            let nval = cur.len("nval", 1, cur.left() / 4)?;
            let sums = f32s(cur.take(nval * 4)?);
            check_sums(&name, &sums)?;
            if entries.contains_key(&name) {
                return Err(ImatrixError::DuplicateEntry { name });
            }
            entries.insert(
                name,
                ImatrixEntry {
                    sums,
                    counts: vec![i64::from(ncall)],
                },
            );
        }
        // Optional trailer: chunk count, then the dataset name.
        let mut chunk_count = 0;
        let mut datasets = Vec::new();
        if cur.left() > 0 {
            let offset = cur.pos as u64;
            let c = cur.i32()?;
            chunk_count = u32::try_from(c).map_err(|_| ImatrixError::BadLength {
                what: "chunk count",
                value: i64::from(c),
                offset,
            })?;
            if cur.left() > 0 {
                let offset = cur.pos as u64;
                let len = cur.len("dataset name length", 0, cur.left())?;
                if len > 0 {
                    let d = std::str::from_utf8(cur.take(len)?)
                        .map_err(|_| ImatrixError::BadName { offset })?;
                    // llama.cpp reads the name as a C string.
                    datasets.push(d.split('\0').next().unwrap_or_default().to_owned());
                }
            }
        }
        if cur.left() > 0 {
            return Err(ImatrixError::TrailingBytes {
                offset: cur.pos as u64,
                count: cur.left() as u64,
            });
        }
        Ok(Imatrix {
            format: ImatrixFormat::Legacy,
            entries,
            datasets,
            chunk_count,
            chunk_size: 0,
            has_metadata: false,
        })
    }

    /// The per-column weights llama-quantize hands its quantizers, by tensor name
    /// (`load_imatrix`): GGUF `sums / count` per matrix (`1` where a matrix saw no tokens);
    /// legacy `sums / ncall` (the sums as stored when `ncall` is 0). Same f32 operations.
    ///
    /// # Errors
    /// [`ImatrixError::MissingMetadata`] for a GGUF file without the `imatrix.*` keys, as
    /// llama-quantize refuses it.
    pub fn quant_weights(&self) -> std::result::Result<BTreeMap<String, Vec<f32>>, ImatrixError> {
        if self.format == ImatrixFormat::Gguf && !self.has_metadata {
            return Err(ImatrixError::MissingMetadata);
        }
        let mut out = BTreeMap::new();
        for (name, e) in &self.entries {
            let w: Vec<f32> = match self.format {
                ImatrixFormat::Gguf => {
                    let ne0 = e.columns();
                    e.sums
                        .chunks(ne0.max(1))
                        .zip(&e.counts)
                        .flat_map(|(s, &c)| {
                            let count = c as f32;
                            s.iter()
                                .map(move |&v| if count > 0.0 { v / count } else { 1.0 })
                        })
                        .collect()
                }
                ImatrixFormat::Legacy => {
                    let ncall = e.counts.first().copied().unwrap_or(0);
                    if ncall > 0 {
                        e.sums.iter().map(|&v| v / ncall as f32).collect()
                    } else {
                        e.sums.clone()
                    }
                }
            };
            out.insert(name.clone(), w);
        }
        Ok(out)
    }

    /// The key/values llama-quantize adds to a file quantized with this imatrix, in its
    /// order: `quantize.imatrix.file` (the path as given on the command line),
    /// `quantize.imatrix.dataset` (the first dataset, when there is one),
    /// `quantize.imatrix.entries_count` and `quantize.imatrix.chunks_count` (when non-zero),
    /// strings cut to 127 bytes as its `strncpy` into `llama_model_kv_override` does (at a
    /// character boundary here).
    pub fn quantize_metadata(&self, file_arg: &str) -> Vec<(String, GgufValue)> {
        fn cut(s: &str) -> String {
            let mut end = s.len().min(127);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s[..end].to_owned()
        }
        let mut kv = vec![(
            "quantize.imatrix.file".to_owned(),
            GgufValue::String(cut(file_arg)),
        )];
        if let Some(d) = self.datasets.first() {
            kv.push((
                "quantize.imatrix.dataset".to_owned(),
                GgufValue::String(cut(d)),
            ));
        }
        kv.push((
            "quantize.imatrix.entries_count".to_owned(),
            GgufValue::U32(self.entries.len() as u32),
        ));
        if self.chunk_count > 0 {
            kv.push((
                "quantize.imatrix.chunks_count".to_owned(),
                GgufValue::U32(self.chunk_count),
            ));
        }
        kv
    }

    fn require_raw(&self) -> std::result::Result<(), ImatrixError> {
        if self.format == ImatrixFormat::Legacy {
            return Err(ImatrixError::Unwritable(
                "statistics read from a legacy file hold normalized sums, not raw ones".into(),
            ));
        }
        for (name, e) in &self.entries {
            if e.counts.is_empty() || e.sums.is_empty() || e.sums.len() % e.counts.len() != 0 {
                return Err(ImatrixError::BadShape {
                    name: name.clone(),
                    sums: e.sums.len() as u64,
                    counts: e.counts.len() as u64,
                });
            }
        }
        Ok(())
    }

    /// The GGUF file llama-imatrix writes for these statistics, byte for byte
    /// (`save_imatrix`): four keys, then `<name>.in_sum2` and `<name>.counts` per entry in
    /// name order, trailing dimensions of 1 dropped, alignment 32.
    pub fn to_gguf_bytes(&self) -> std::result::Result<Vec<u8>, ImatrixError> {
        self.require_raw()?;
        let metadata = vec![
            (
                "general.type".to_owned(),
                GgufValue::String(GENERAL_TYPE.into()),
            ),
            (
                KEY_DATASETS.to_owned(),
                GgufValue::Array(GgufArray::String(
                    self.datasets.iter().collect::<StringArray>(),
                )),
            ),
            (KEY_CHUNK_COUNT.to_owned(), GgufValue::U32(self.chunk_count)),
            (KEY_CHUNK_SIZE.to_owned(), GgufValue::U32(self.chunk_size)),
        ];
        let mut specs = Vec::with_capacity(2 * self.entries.len());
        let mut data: Vec<Vec<u8>> = Vec::with_capacity(2 * self.entries.len());
        for (name, e) in &self.entries {
            if name.len() + SUFFIX_SUMS.len() > MAX_NAME_LEN {
                return Err(ImatrixError::NameTooLong { name: name.clone() });
            }
            let nmat = e.counts.len() as u64;
            let cols = e.sums.len() as u64 / nmat;
            // ggml_n_dims: trailing dimensions of 1 are not written.
            let (sum_shape, count_shape) = if nmat > 1 {
                (vec![nmat, cols], vec![nmat, 1])
            } else {
                (vec![cols], vec![1])
            };
            specs.push(GgufTensorSpec {
                name: format!("{name}{SUFFIX_SUMS}"),
                dtype: DType::F32,
                shape: sum_shape,
            });
            data.push(e.sums.iter().flat_map(|v| v.to_le_bytes()).collect());
            specs.push(GgufTensorSpec {
                name: format!("{name}{SUFFIX_COUNTS}"),
                dtype: DType::F32,
                shape: count_shape,
            });
            data.push(
                e.counts
                    .iter()
                    .flat_map(|&c| (c as f32).to_le_bytes())
                    .collect(),
            );
        }
        let p = plan(&metadata, specs).map_err(|e| ImatrixError::Unwritable(e.to_string()))?;
        let names: Vec<String> = p.tensors.iter().map(|(s, _)| s.name.clone()).collect();
        let mut w =
            GgufWriter::new(Vec::new(), p).map_err(|e| ImatrixError::Unwritable(e.to_string()))?;
        for (n, d) in names.iter().zip(&data) {
            w.write_tensor(n, d)
                .map_err(|e| ImatrixError::Unwritable(e.to_string()))?;
        }
        w.finish()
            .map_err(|e| ImatrixError::Unwritable(e.to_string()))
    }

    /// The legacy `.dat` file llama-imatrix writes for these statistics
    /// (`save_imatrix_legacy`), byte for byte: entries with no tokens at all are left out, a
    /// matrix with no tokens stores 1s, and the trailer names the last dataset.
    pub fn to_dat_bytes(&self) -> std::result::Result<Vec<u8>, ImatrixError> {
        self.require_raw()?;
        if self.chunk_size == 0 {
            return Err(ImatrixError::Unwritable(
                "the legacy format needs the chunk size".into(),
            ));
        }
        let chunk = i64::from(self.chunk_size);
        let stored: Vec<_> = self
            .entries
            .iter()
            .filter(|(_, e)| e.counts.iter().any(|&c| c != 0))
            .collect();
        let i32_of = |what: &str, v: i64| {
            i32::try_from(v)
                .map_err(|_| ImatrixError::Unwritable(format!("{what} {v} overflows i32")))
        };
        let mut out = Vec::new();
        out.extend_from_slice(&i32_of("entry count", stored.len() as i64)?.to_le_bytes());
        for (name, e) in stored {
            out.extend_from_slice(&i32_of("name length", name.len() as i64)?.to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            let max = e.counts.iter().copied().max().unwrap_or(0);
            let ncall = i32_of("ncall", (max + chunk - 1) / chunk)?;
            out.extend_from_slice(&ncall.to_le_bytes());
            let nval = e.sums.len();
            out.extend_from_slice(&i32_of("nval", nval as i64)?.to_le_bytes());
            let per = nval / e.counts.len();
            for (i, &v) in e.sums.iter().enumerate() {
                let (mut value, mut count) = (v, e.counts[i / per] as f32);
                if count == 0.0 {
                    value = 1.0;
                    count = 1.0;
                }
                out.extend_from_slice(&((value / count) * ncall as f32).to_le_bytes());
            }
        }
        out.extend_from_slice(&i32_of("chunk count", i64::from(self.chunk_count))?.to_le_bytes());
        let ds = self.datasets.last().map_or("", String::as_str);
        out.extend_from_slice(&i32_of("dataset length", ds.len() as i64)?.to_le_bytes());
        out.extend_from_slice(ds.as_bytes());
        Ok(out)
    }

    /// Write the GGUF (`legacy == false`) or `.dat` file atomically to `dest`.
    pub fn write(&self, dest: &Path, legacy: bool, overwrite: bool) -> Result<FileRecord> {
        let bytes = if legacy {
            self.to_dat_bytes()
        } else {
            self.to_gguf_bytes()
        }
        .map_err(|k| err(dest, k))?;
        let (target, mut file) = AtomicFile::create(dest, overwrite)?;
        let part: PathBuf = file.path().to_owned();
        file.write_all(&bytes).map_err(|e| Error::io(&part, e))?;
        Ok(target.commit(file)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Imatrix {
        let mut entries = BTreeMap::new();
        entries.insert(
            "blk.0.attn_q.weight".to_owned(),
            ImatrixEntry {
                sums: vec![1.0, 2.0, 3.0, 4.0],
                counts: vec![8],
            },
        );
        entries.insert(
            "blk.0.ffn_down_exps.weight".to_owned(),
            ImatrixEntry {
                sums: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
                counts: vec![4, 0, 2],
            },
        );
        Imatrix {
            format: ImatrixFormat::Gguf,
            entries,
            datasets: vec!["hamlet.txt".into()],
            chunk_count: 2,
            chunk_size: 4,
            has_metadata: true,
        }
    }

    #[test]
    fn gguf_round_trip_and_shapes() {
        let m = sample();
        let bytes = m.to_gguf_bytes().unwrap();
        assert_eq!(Imatrix::parse(&bytes).unwrap(), m);
        let (meta, infos) = qforge_convert::gguf::parse(&bytes).unwrap();
        let keys: Vec<&str> = meta.entries.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "general.type",
                KEY_DATASETS,
                KEY_CHUNK_COUNT,
                KEY_CHUNK_SIZE
            ]
        );
        let shapes: Vec<(&str, Vec<u64>)> = infos
            .iter()
            .map(|t| (t.name.as_str(), t.ne.clone()))
            .collect();
        assert_eq!(
            shapes,
            [
                ("blk.0.attn_q.weight.in_sum2", vec![4]),
                ("blk.0.attn_q.weight.counts", vec![1]),
                ("blk.0.ffn_down_exps.weight.in_sum2", vec![2, 3]),
                ("blk.0.ffn_down_exps.weight.counts", vec![1, 3]),
            ]
        );
    }

    #[test]
    fn quant_weights_follow_llama_quantize() {
        let w = sample().quant_weights().unwrap();
        assert_eq!(w["blk.0.attn_q.weight"], [0.125, 0.25, 0.375, 0.5]);
        assert_eq!(
            w["blk.0.ffn_down_exps.weight"],
            [0.25, 0.5, 1.0, 1.0, 2.5, 3.0]
        );
        let mut m = sample();
        m.has_metadata = false;
        assert_eq!(m.quant_weights(), Err(ImatrixError::MissingMetadata));
    }

    #[test]
    fn legacy_round_trip() {
        let m = sample();
        let bytes = m.to_dat_bytes().unwrap();
        let l = Imatrix::parse(&bytes).unwrap();
        assert_eq!(l.format, ImatrixFormat::Legacy);
        assert_eq!(
            (l.chunk_count, l.datasets.clone()),
            (2, vec!["hamlet.txt".to_owned()])
        );
        // ncall = ceil(8 / 4) = 2: stored (s / 8) · 2, weights s / 8.
        let e = &l.entries["blk.0.attn_q.weight"];
        assert_eq!(
            (e.sums.clone(), e.counts.clone()),
            (vec![0.25, 0.5, 0.75, 1.0], vec![2])
        );
        let w = l.quant_weights().unwrap();
        assert_eq!(w["blk.0.attn_q.weight"], [0.125, 0.25, 0.375, 0.5]);
        // the empty expert stores 1s
        assert_eq!(
            l.entries["blk.0.ffn_down_exps.weight"].sums[2..4],
            [1.0, 1.0]
        );
        assert!(matches!(
            l.to_gguf_bytes(),
            Err(ImatrixError::Unwritable(_))
        ));
    }

    fn legacy(entries: &[(&[u8], i32, &[f32])], trailer: &[u8]) -> Vec<u8> {
        let mut b = (entries.len() as i32).to_le_bytes().to_vec();
        for (name, ncall, vals) in entries {
            b.extend((name.len() as i32).to_le_bytes());
            b.extend(*name);
            b.extend(ncall.to_le_bytes());
            b.extend((vals.len() as i32).to_le_bytes());
            b.extend(vals.iter().flat_map(|v| v.to_le_bytes()));
        }
        b.extend(trailer);
        b
    }

    #[test]
    fn hostile_legacy_files() {
        let ok = legacy(&[(b"a.weight", 1, &[1.0])], &[]);
        assert!(Imatrix::parse(&ok).is_ok());
        assert_eq!(
            Imatrix::parse(&[]),
            Err(ImatrixError::Truncated { offset: 0, need: 4 })
        );
        // a huge entry count in a tiny file
        let mut b = ok.clone();
        b[..4].copy_from_slice(&i32::MAX.to_le_bytes());
        assert!(matches!(
            Imatrix::parse(&b),
            Err(ImatrixError::BadLength {
                what: "n_entries",
                offset: 0,
                ..
            })
        ));
        assert!(matches!(
            Imatrix::parse(&legacy(&[], &[])),
            Err(ImatrixError::BadLength {
                what: "n_entries",
                value: 0,
                ..
            })
        ));
        // nval larger than the file
        let mut b = ok.clone();
        b[20..24].copy_from_slice(&1_000_000i32.to_le_bytes());
        assert!(matches!(
            Imatrix::parse(&b),
            Err(ImatrixError::BadLength {
                what: "nval",
                offset: 20,
                ..
            })
        ));
        // negative name length
        let mut b = ok.clone();
        b[4..8].copy_from_slice(&(-5i32).to_le_bytes());
        assert!(matches!(
            Imatrix::parse(&b),
            Err(ImatrixError::BadLength {
                what: "name length",
                value: -5,
                ..
            })
        ));
        assert_eq!(
            Imatrix::parse(&legacy(&[(b"a\0b", 1, &[1.0])], &[])),
            Err(ImatrixError::BadName { offset: 4 })
        );
        assert!(matches!(
            Imatrix::parse(&legacy(&[(b"a", 1, &[f32::NAN])], &[])),
            Err(ImatrixError::BadValue { index: 0, .. })
        ));
        assert!(matches!(
            Imatrix::parse(&legacy(&[(b"a", 1, &[1.0]), (b"a", 1, &[1.0])], &[])),
            Err(ImatrixError::DuplicateEntry { .. })
        ));
        assert!(matches!(
            Imatrix::parse(&legacy(&[(b"a", -1, &[1.0])], &[])),
            Err(ImatrixError::BadLength { what: "ncall", .. })
        ));
        // trailer: chunk count only, then with a dataset, then garbage after it
        let t = 3i32.to_le_bytes();
        assert_eq!(
            Imatrix::parse(&legacy(&[(b"a", 1, &[1.0])], &t))
                .unwrap()
                .chunk_count,
            3
        );
        let mut t2 = t.to_vec();
        t2.extend(2i32.to_le_bytes());
        t2.extend(b"ds");
        assert_eq!(
            Imatrix::parse(&legacy(&[(b"a", 1, &[1.0])], &t2))
                .unwrap()
                .datasets,
            ["ds"]
        );
        t2.push(0);
        assert!(matches!(
            Imatrix::parse(&legacy(&[(b"a", 1, &[1.0])], &t2)),
            Err(ImatrixError::TrailingBytes { count: 1, .. })
        ));
        assert!(matches!(
            Imatrix::parse(&legacy(&[(b"a", 1, &[1.0])], &[1, 2])),
            Err(ImatrixError::Truncated { need: 4, .. })
        ));
    }

    fn gguf_with(
        meta: &[(String, GgufValue)],
        tensors: &[(&str, DType, Vec<u64>, Vec<u8>)],
    ) -> Vec<u8> {
        let specs = tensors
            .iter()
            .map(|(n, d, s, _)| GgufTensorSpec {
                name: (*n).to_owned(),
                dtype: *d,
                shape: s.clone(),
            })
            .collect();
        let mut w = GgufWriter::new(Vec::new(), plan(meta, specs).unwrap()).unwrap();
        for (n, _, _, b) in tensors {
            w.write_tensor(n, b).unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn hostile_gguf_files() {
        let f = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let meta = vec![(
            "general.type".to_owned(),
            GgufValue::String("imatrix".into()),
        )];
        // no counts tensor
        let b = gguf_with(&meta, &[("w.in_sum2", DType::F32, vec![2], f(&[1.0, 2.0]))]);
        assert!(matches!(
            Imatrix::parse(&b),
            Err(ImatrixError::Unpaired {
                missing: ".counts",
                ..
            })
        ));
        // a model tensor
        let b = gguf_with(
            &meta,
            &[("token_embd.weight", DType::F32, vec![2], f(&[1.0, 2.0]))],
        );
        assert!(matches!(
            Imatrix::parse(&b),
            Err(ImatrixError::UnknownTensor { .. })
        ));
        // 3 sums over 2 counts
        let b = gguf_with(
            &meta,
            &[
                ("w.in_sum2", DType::F32, vec![3], f(&[1.0, 2.0, 3.0])),
                ("w.counts", DType::F32, vec![2], f(&[1.0, 1.0])),
            ],
        );
        assert!(matches!(
            Imatrix::parse(&b),
            Err(ImatrixError::BadShape {
                sums: 3,
                counts: 2,
                ..
            })
        ));
        // a negative count
        let b = gguf_with(
            &meta,
            &[
                ("w.in_sum2", DType::F32, vec![2], f(&[1.0, 2.0])),
                ("w.counts", DType::F32, vec![1], f(&[-1.0])),
            ],
        );
        assert!(matches!(
            Imatrix::parse(&b),
            Err(ImatrixError::BadCount { index: 0, .. })
        ));
        // F16 sums
        let b = gguf_with(
            &meta,
            &[
                ("w.in_sum2", DType::F16, vec![2], vec![0; 4]),
                ("w.counts", DType::F32, vec![1], f(&[1.0])),
            ],
        );
        assert!(matches!(
            Imatrix::parse(&b),
            Err(ImatrixError::NotF32 {
                dtype: DType::F16,
                ..
            })
        ));
        // a model file
        let model = vec![("general.type".to_owned(), GgufValue::String("model".into()))];
        let b = gguf_with(&model, &[("w.counts", DType::F32, vec![1], f(&[1.0]))]);
        assert!(matches!(
            Imatrix::parse(&b),
            Err(ImatrixError::NotImatrix { .. })
        ));
        // chunk_count of the wrong type
        let mut bad = meta.clone();
        bad.push((KEY_CHUNK_COUNT.to_owned(), GgufValue::U64(1)));
        let b = gguf_with(&bad, &[("w.counts", DType::F32, vec![1], f(&[1.0]))]);
        assert!(matches!(
            Imatrix::parse(&b),
            Err(ImatrixError::KeyType {
                key: KEY_CHUNK_COUNT,
                ..
            })
        ));
        // no tensors
        assert_eq!(
            Imatrix::parse(&gguf_with(&meta, &[])),
            Err(ImatrixError::Empty)
        );
        // a truncated file is the GGUF reader's error
        let good = sample().to_gguf_bytes().unwrap();
        assert!(matches!(
            Imatrix::parse(&good[..good.len() - 40]),
            Err(ImatrixError::Gguf(_))
        ));
    }
}
