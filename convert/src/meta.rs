//! Meta checkpoints: `params.json` + `consolidated.NN.pth` (any model-parallel degree) +
//! optional `tokenizer.model` (specs/meta.md §1).
//!
//! Each shard is parsed with [`crate::pth`]. With one shard its tensors pass through; with
//! several, each tensor is merged *lazily*: the result is a [`TensorLayout::Concat`] of the
//! shards' layouts along the model-parallel split dimension, and no bytes are read until asked
//! for. Split dimensions follow Meta's fairscale layers (§1.4): column-parallel `wq wk wv w1 w3
//! output` on dim 0, row-parallel `wo w2` on dim 1, `tok_embeddings` on dim 0 (Llama 3) or dim 1
//! (Llama 2, detected from its shape), norms replicated (checked bit-identical, shard 0 kept).

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::checkpoint::{list_dir, Checkpoint, Format, RawTensor, TensorLayout, TokenizerInfo};
use crate::config::{read_json_config, ModelConfig};
use crate::error::{Error, Result};
use crate::mmap::MappedFile;
use crate::names::{LayerTensor, NameMatch, NameScheme, TensorId};

/// Largest `tokenizer.model` that is parsed to count tokens (Llama 3's is 2.2 MB).
const MAX_TOKENIZER_BYTES: u64 = 64 << 20;

/// Read a Meta checkpoint directory.
pub fn read(path: &Path) -> Result<Checkpoint> {
    let dir = path;
    let params_path = dir.join("params.json");
    let params = read_json_config(&params_path, |t| Ok(t.to_owned()))?;
    let params_dim = serde_json::from_str::<serde_json::Value>(&params)
        .ok()
        .and_then(|v| v.get("dim").and_then(serde_json::Value::as_u64))
        .unwrap_or(0);

    let shard_paths = shard_files(dir)?;
    let mut files = Vec::with_capacity(shard_paths.len());
    let mut shards = Vec::with_capacity(shard_paths.len());
    for (index, p) in shard_paths.iter().enumerate() {
        let file = MappedFile::open(p)?;
        let raw = crate::pth::read_state_dict(&file, index).map_err(|kind| Error::Pth {
            path: p.clone(),
            kind,
        })?;
        files.push(file);
        shards.push(raw);
    }

    let (raw, replicated) = if shards.len() == 1 {
        (shards.pop().unwrap_or_default(), Vec::new())
    } else {
        merge(dir, &shard_paths, shards, params_dim)?
    };

    let vocab = raw
        .iter()
        .find(|t| t.name == "tok_embeddings.weight")
        .and_then(|t| t.shape.first().copied());
    let config = ModelConfig::from_meta_params(&params, vocab).map_err(|kind| Error::Config {
        path: params_path.clone(),
        kind,
    })?;

    // Replicated tensors: every shard must hold the same bytes. Only compare tensors whose shape
    // is what the config implies (bounded by its limits); `assemble` rejects the others.
    for rep in &replicated {
        if let Some(t) = raw.iter().find(|t| t.name == rep.name) {
            if config.expected_shape(rep.id) == t.shape {
                check_replicated(dir, &files, t, &rep.copies)?;
            }
        }
    }

    let tokenizer = tokenizer_info(dir)?;
    let mp = files.len();
    let mut ckpt = Checkpoint::assemble(
        Format::Meta,
        dir.into(),
        config,
        tokenizer,
        files,
        raw,
        None,
    )?;
    if mp > 1 {
        ckpt.notes
            .push(format!("merged {mp} model-parallel shards"));
    }
    Ok(ckpt)
}

/// `consolidated.NN.pth` files, sorted, which must be numbered 0, 1, … without gaps.
fn shard_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut numbered: Vec<(u64, PathBuf)> = list_dir(dir)?
        .into_iter()
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?;
            let digits = name.strip_prefix("consolidated.")?.strip_suffix(".pth")?;
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 6
            {
                return None;
            }
            Some((digits.parse().ok()?, p))
        })
        .collect();
    numbered.sort();
    if numbered.is_empty() {
        return Err(Error::NotAModel {
            path: dir.into(),
            reason: "params.json but no consolidated.NN.pth files".into(),
        });
    }
    for (want, (got, p)) in numbered.iter().enumerate() {
        if *got != want as u64 {
            return Err(Error::NotAModel {
                path: dir.into(),
                reason: format!(
                    "model-parallel shards must be numbered consolidated.00.pth … consolidated.{:02}.pth without gaps; found {}",
                    numbered.len() - 1,
                    p.display()
                ),
            });
        }
    }
    Ok(numbered.into_iter().map(|(_, p)| p).collect())
}

/// How shards of a tensor combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Split {
    /// concatenated along this dimension
    Dim(usize),
    /// identical in every shard
    Replicated,
}

/// The split rule of a Meta tensor name (§1.4); `None` for names the merge does not know, which
/// are passed through from shard 0 for [`Checkpoint::assemble`] to judge.
fn split_of(name: &str, shard_shape: &[u64], mp: u64, dim: u64) -> Option<(Split, TensorId)> {
    let NameMatch::Tensor(key) = NameScheme::Meta.parse(name) else {
        return None;
    };
    let split = match key.id {
        TensorId::TokenEmbedding => {
            // Llama 2's ParallelEmbedding splits the embedding width, Llama 3's
            // VocabParallelEmbedding the vocabulary.
            let cols = shard_shape.get(1).copied().unwrap_or(0);
            if dim > 0 && cols.checked_mul(mp) == Some(dim) {
                Split::Dim(1)
            } else {
                Split::Dim(0)
            }
        }
        TensorId::Output => Split::Dim(0),
        TensorId::OutputNorm => Split::Replicated,
        TensorId::Layer { kind, .. } => match kind {
            LayerTensor::Q
            | LayerTensor::K
            | LayerTensor::V
            | LayerTensor::Gate
            | LayerTensor::Up => Split::Dim(0),
            LayerTensor::O | LayerTensor::Down => Split::Dim(1),
            LayerTensor::AttnNorm | LayerTensor::FfnNorm => Split::Replicated,
            // Meta names never parse to these (Llama has none)
            LayerTensor::QBias
            | LayerTensor::KBias
            | LayerTensor::VBias
            | LayerTensor::QNorm
            | LayerTensor::KNorm
            | LayerTensor::Router
            | LayerTensor::Expert { .. }
            | LayerTensor::SharedExpert { .. } => return None,
        },
        TensorId::RopeFreqs => return None,
    };
    Some((split, key.id))
}

/// A replicated tensor whose shard copies must be compared once the config is known.
struct Replicated {
    name: String,
    id: TensorId,
    /// the other shards' copies (shape, layout); shard 0's is the merged tensor
    copies: Vec<(Vec<u64>, TensorLayout)>,
}

/// Names a shard (its file name) and builds the errors of [`merge`].
struct ShardNames<'a> {
    dir: &'a Path,
    paths: &'a [PathBuf],
}

impl ShardNames<'_> {
    fn name(&self, r: usize) -> String {
        self.paths.get(r).and_then(|p| p.file_name()).map_or_else(
            || format!("shard {r}"),
            |n| n.to_string_lossy().into_owned(),
        )
    }

    fn mismatch(&self, tensor: &str, reason: String) -> Error {
        Error::ShardMismatch {
            path: self.dir.into(),
            tensor: tensor.into(),
            reason,
        }
    }
}

/// A tensor split on `dim` across the shards: shard 0's `t0` and the others' `parts`, merged
/// lazily as one [`TensorLayout::Concat`] (every other dimension must agree).
fn concat_shards(
    names: &ShardNames<'_>,
    t0: RawTensor,
    parts: Vec<RawTensor>,
    dim: usize,
) -> Result<RawTensor> {
    let mp = parts.len() + 1;
    let shard_name = |r: usize| names.name(r);
    let mismatch = |tensor: &str, reason: String| names.mismatch(tensor, reason);
    let mut shape = t0.shape.clone();
    if dim >= shape.len() {
        return Err(mismatch(
            &t0.name,
            format!(
                "shape {shape:?} in {} has no dimension {dim} to merge on",
                shard_name(0)
            ),
        ));
    }
    for (r, t) in parts.iter().enumerate() {
        let fits = t.shape.len() == t0.shape.len()
            && t.shape
                .iter()
                .zip(&t0.shape)
                .enumerate()
                .all(|(i, (a, b))| i == dim || a == b);
        if !fits {
            return Err(mismatch(
                &t0.name,
                format!(
                    "shape {:?} in {} does not fit {:?} in {} split on dim {dim}",
                    t.shape,
                    shard_name(r + 1),
                    t0.shape,
                    shard_name(0)
                ),
            ));
        }
        shape[dim] = shape[dim]
            .checked_add(t.shape[dim])
            .ok_or_else(|| mismatch(&t0.name, "merged size overflows".into()))?;
    }
    let RawTensor {
        name,
        dtype,
        shape: shape0,
        layout: layout0,
        file,
    } = t0;
    let mut all = Vec::with_capacity(mp);
    all.push((shape0, layout0));
    all.extend(parts.into_iter().map(|t| (t.shape, t.layout)));
    Ok(RawTensor {
        name,
        dtype,
        shape,
        layout: TensorLayout::Concat { dim, parts: all },
        file,
    })
}

/// Merge model-parallel shards tensor by tensor (lazily, as [`TensorLayout::Concat`]).
fn merge(
    dir: &Path,
    paths: &[PathBuf],
    shards: Vec<Vec<RawTensor>>,
    params_dim: u64,
) -> Result<(Vec<RawTensor>, Vec<Replicated>)> {
    let mp = shards.len();
    let names = ShardNames { dir, paths };
    let shard_name = |r: usize| names.name(r);
    let mismatch = |tensor: &str, reason: String| names.mismatch(tensor, reason);

    let mut shards = shards.into_iter();
    let first = shards.next().unwrap_or_default();
    // For every other shard: name → tensor, consumed as shard 0's names are visited.
    let mut others: Vec<HashMap<String, RawTensor>> = Vec::with_capacity(mp - 1);
    for (r, shard) in shards.enumerate() {
        let mut map = HashMap::with_capacity(shard.len());
        for t in shard {
            let name = t.name.clone();
            if map.insert(name.clone(), t).is_some() {
                return Err(Error::DuplicateTensor {
                    path: paths.get(r + 1).cloned().unwrap_or_default(),
                    name,
                });
            }
        }
        others.push(map);
    }

    let mut merged = Vec::with_capacity(first.len());
    let mut replicated = Vec::new();
    for t0 in first {
        let mut parts = Vec::with_capacity(mp);
        for (r, map) in others.iter_mut().enumerate() {
            let t = map.remove(&t0.name).ok_or_else(|| {
                mismatch(
                    &t0.name,
                    format!(
                        "present in {} but not in {}",
                        shard_name(0),
                        shard_name(r + 1)
                    ),
                )
            })?;
            if t.dtype != t0.dtype {
                return Err(mismatch(
                    &t0.name,
                    format!(
                        "{} in {} but {} in {}",
                        t0.dtype,
                        shard_name(0),
                        t.dtype,
                        shard_name(r + 1)
                    ),
                ));
            }
            parts.push(t);
        }
        match split_of(&t0.name, &t0.shape, mp as u64, params_dim) {
            None => merged.push(t0),
            Some((Split::Replicated, id)) => {
                for (r, t) in parts.iter().enumerate() {
                    if t.shape != t0.shape {
                        return Err(mismatch(
                            &t0.name,
                            format!(
                                "replicated tensor has shape {:?} in {} but {:?} in {}",
                                t0.shape,
                                shard_name(0),
                                t.shape,
                                shard_name(r + 1)
                            ),
                        ));
                    }
                }
                replicated.push(Replicated {
                    name: t0.name.clone(),
                    id,
                    copies: parts.into_iter().map(|t| (t.shape, t.layout)).collect(),
                });
                merged.push(t0);
            }
            Some((Split::Dim(dim), _)) => merged.push(concat_shards(&names, t0, parts, dim)?),
        }
    }
    for (r, map) in others.iter().enumerate() {
        if let Some(name) = map.keys().min() {
            return Err(mismatch(
                name,
                format!(
                    "present in {} but not in {}",
                    shard_name(r + 1),
                    shard_name(0)
                ),
            ));
        }
    }
    Ok((merged, replicated))
}

/// Check that every shard's copy of a replicated tensor has the same bytes as shard 0's.
fn check_replicated(
    dir: &Path,
    files: &[MappedFile],
    t: &RawTensor,
    copies: &[(Vec<u64>, TensorLayout)],
) -> Result<()> {
    let mismatch = |reason: String| Error::ShardMismatch {
        path: dir.into(),
        tensor: t.name.clone(),
        reason,
    };
    let bytes_of = |shape: &[u64], layout: &TensorLayout| {
        let file = match layout {
            TensorLayout::Contiguous(s) | TensorLayout::Strided { storage: s, .. } => s.file,
            TensorLayout::Concat { .. } => usize::MAX,
        };
        files
            .get(file)
            .and_then(|f| crate::pth::layout_bytes(f.bytes(), t.dtype, shape, layout))
    };
    let first = bytes_of(&t.shape, &t.layout)
        .ok_or_else(|| mismatch("shard 0's copy lies outside its file".into()))?;
    for (r, (shape, layout)) in copies.iter().enumerate() {
        let other = bytes_of(shape, layout)
            .ok_or_else(|| mismatch(format!("shard {}'s copy lies outside its file", r + 1)))?;
        if other != first {
            return Err(mismatch(format!(
                "replicated tensor differs between shard 0 and shard {}",
                r + 1
            )));
        }
    }
    Ok(())
}

/// Summarize `tokenizer.model`: tiktoken BPE ranks (`base64 rank` lines, Llama 3) or a
/// SentencePiece model (binary protobuf, Llama 2).
fn tokenizer_info(dir: &Path) -> Result<TokenizerInfo> {
    let path = dir.join("tokenizer.model");
    if !path.is_file() {
        return Ok(TokenizerInfo {
            kind: "none".into(),
            ..TokenizerInfo::default()
        });
    }
    let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
    let mut head = Vec::new();
    file.take(MAX_TOKENIZER_BYTES + 1)
        .read_to_end(&mut head)
        .map_err(|e| Error::io(&path, e))?;
    let vocab_size = if head.len() as u64 > MAX_TOKENIZER_BYTES {
        None
    } else {
        count_tiktoken_ranks(&head)
    };
    let kind = if vocab_size.is_some() {
        "tiktoken"
    } else {
        "sentencepiece"
    };
    Ok(TokenizerInfo {
        kind: kind.into(),
        files: vec![path],
        vocab_size,
        ..TokenizerInfo::default()
    })
}

/// Number of `base64 rank` lines if every non-empty line is one, else `None`.
fn count_tiktoken_ranks(bytes: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut n = 0u64;
    for line in text.lines().filter(|l| !l.is_empty()) {
        let (token, rank) = line.split_once(' ')?;
        let is_b64 = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=');
        if token.is_empty()
            || !token.bytes().all(is_b64)
            || rank.is_empty()
            || !rank.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        n += 1;
    }
    (n > 0).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiktoken_lines_are_counted() {
        assert_eq!(count_tiktoken_ranks(b"IQ== 0\nIg== 1\n"), Some(2));
        assert_eq!(count_tiktoken_ranks(b"IQ== 0\r\nIg== 1"), Some(2));
        assert_eq!(count_tiktoken_ranks(b"IQ== x\n"), None);
        assert_eq!(count_tiktoken_ranks(b"\x0a\x0b\x0a\x05<unk>"), None);
        assert_eq!(count_tiktoken_ranks(b""), None);
    }

    #[test]
    fn split_dims_follow_fairscale() {
        let split = |name: &str, shape: &[u64]| split_of(name, shape, 8, 8192).map(|(s, _)| s);
        assert_eq!(
            split("layers.3.attention.wq.weight", &[1024, 8192]),
            Some(Split::Dim(0))
        );
        assert_eq!(
            split("layers.3.attention.wo.weight", &[8192, 1024]),
            Some(Split::Dim(1))
        );
        assert_eq!(
            split("layers.3.feed_forward.w2.weight", &[8192, 3584]),
            Some(Split::Dim(1))
        );
        assert_eq!(
            split("layers.3.ffn_norm.weight", &[8192]),
            Some(Split::Replicated)
        );
        // Llama 3 splits the vocabulary, Llama 2 the embedding width.
        assert_eq!(
            split("tok_embeddings.weight", &[16032, 8192]),
            Some(Split::Dim(0))
        );
        assert_eq!(
            split("tok_embeddings.weight", &[32000, 1024]),
            Some(Split::Dim(1))
        );
        assert_eq!(split("rope.freqs", &[64]), None);
    }
}
