//! Reading a linear's weight as `f32`, whatever its storage: plain floats, ggml blocks, FP8
//! with per-row, per-tensor or 128×128-block scales (compressed-tensors
//! `float-quantized`/`naive-quantized`, `fbgemm_fp8`), INT4 `pack-quantized` with group scales
//! and optional zero points, or FP4 (`nvfp4-pack-quantized`, `mxfp4-pack-quantized`).
//!
//! Each layout's module ([`crate::layout::LAYOUTS`]) recognises and dequantizes its own
//! storage; `verify`, `convert` and `inspect` all go through [`WeightRead::weight_f32`], which
//! asks them in turn. The arithmetic is exactly the
//! dequantization of the format's reference (`w = f8(q)·s` and `w = s·(q − zp)`), done in `f32`:
//! every product is exact in `f32` (a ≤ 5-bit integer or a 4-bit-mantissa FP8 value times a
//! BF16/F32 scale), so rounding the result to BF16 gives what compressed-tensors computes in the
//! model dtype.

use qforge_codecs::DType;
use rayon::prelude::*;

use crate::layout::{HfScheme, LAYOUTS};

use qforge_convert::checkpoint::{Checkpoint, TensorEntry};
use qforge_convert::export::rope_heads;
use qforge_convert::names::{Part, TensorId, TensorKey};
use qforge_convert::rope::{source_row, RopeLayout};
use qforge_convert::{Error, Result};

/// How a module's weight is stored: plainly, or in one of the quantized layouts
/// ([`crate::layout::LAYOUTS`]) with its parameters (the same [`HfScheme`] `--scheme` parses to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightStorage {
    /// A plain tensor (any float dtype or ggml block type) with no scale.
    Plain(DType),
    /// A quantized layout.
    Quantized(HfScheme),
}

impl WeightStorage {
    /// The name `qforge inspect` shows: the dtype, or the layout's storage name
    /// (`fp8-rowwise`, `int4-g64-asym`, `nvfp4`, `mlx-4bit-g64`).
    pub fn name(&self) -> String {
        match self {
            WeightStorage::Plain(d) => d.name().to_owned(),
            WeightStorage::Quantized(s) => s.storage_name(),
        }
    }
}

/// Reading a checkpoint's linear weights back whatever their scheme (implemented for
/// [`Checkpoint`]; bring it into scope to call `ckpt.weight_f32(id)`).
pub trait WeightRead {
    /// The tensor with role `id` and part `part`, if present.
    fn part(&self, id: TensorId, part: Part) -> Option<&TensorEntry>;
    /// How `id`'s weight is stored.
    fn weight_storage(&self, id: TensorId) -> Result<WeightStorage>;
    /// The weight of `id`, dequantized to `f32`, row-major `[out, in]` (the stored layout of
    /// this format: Q/K rows stay in the format's own RoPE order).
    fn weight_f32(&self, id: TensorId) -> Result<Vec<f32>>;
    /// The values of role `id` as `f32`, row-major, with Q/K rows moved in direction `rope`
    /// (`None`: the format's own order); the role's mapped pages are released after.
    fn role_rows_f32(&self, id: TensorId, rope: Option<RopeLayout>) -> Result<Vec<f32>>;
}

impl WeightRead for Checkpoint {
    fn part(&self, id: TensorId, part: Part) -> Option<&TensorEntry> {
        self.tensor_by_key(TensorKey { id, part })
    }
    fn weight_storage(&self, id: TensorId) -> Result<WeightStorage> {
        Weights(self).weight_storage(id)
    }
    fn weight_f32(&self, id: TensorId) -> Result<Vec<f32>> {
        Weights(self).weight_f32(id)
    }
    fn role_rows_f32(&self, id: TensorId, rope: Option<RopeLayout>) -> Result<Vec<f32>> {
        Weights(self).role_rows_f32(id, rope)
    }
}

/// A checkpoint seen by the read-back code and the row-parallel producers (crate-private
/// helpers on a foreign type).
pub struct Weights<'a>(pub(crate) &'a Checkpoint);

impl std::ops::Deref for Weights<'_> {
    type Target = Checkpoint;
    fn deref(&self) -> &Checkpoint {
        self.0
    }
}

impl<'a> Weights<'a> {
    /// The tensor with role `id` and part `part`, if present.
    pub(crate) fn part(&self, id: TensorId, part: Part) -> Option<&'a TensorEntry> {
        let ck: &'a Checkpoint = self.0;
        ck.tensor_by_key(TensorKey { id, part })
    }

    /// How `id`'s weight is stored: the first layout of [`LAYOUTS`] that claims it, else a
    /// plain tensor (an error when it has quantization companions no layout reads).
    fn weight_storage(&self, id: TensorId) -> Result<WeightStorage> {
        for kind in LAYOUTS {
            if let Some(p) = kind.detect(self, id) {
                return Ok(WeightStorage::Quantized(HfScheme::new(*kind, p?)));
            }
        }
        if let Some(packed) = self.part(id, Part::WeightPacked) {
            return Err(match self.part(id, Part::WeightScale) {
                None => self.bad(packed, "has no companion weight_scale tensor".into()),
                Some(scale) => self.bad(
                    scale,
                    format!(
                        "weight_packed {} with weight_scale {} {:?} is no layout qforge reads \
                         (FP4 scales are F8_E4M3 or U8)",
                        packed.dtype, scale.dtype, scale.shape
                    ),
                ),
            });
        }
        let w = self
            .part(id, Part::Weight)
            .ok_or_else(|| Error::NoSuchTensor(id.to_string()))?;
        match self.part(id, Part::WeightScale) {
            None => Ok(WeightStorage::Plain(w.dtype)),
            Some(scale) => {
                let rows = w.shape.first().copied().unwrap_or(1);
                Err(self.bad(
                    scale,
                    format!(
                        "weight_scale shape {:?} is neither [{rows}, 1], [1] nor the 128×128 \
                         block grid of weight {:?}",
                        scale.shape, w.shape
                    ),
                ))
            }
        }
    }

    /// The weight of `id`, dequantized to `f32`, row-major `[out, in]` (the stored layout of
    /// this format: Q/K rows stay in the format's own RoPE order).
    fn weight_f32(&self, id: TensorId) -> Result<Vec<f32>> {
        match self.weight_storage(id)? {
            WeightStorage::Plain(_) => {
                let w = self
                    .part(id, Part::Weight)
                    .expect("checked by weight_storage");
                self.to_f32(w)
            }
            WeightStorage::Quantized(s) => s.kind.dequant(s, self, id),
        }
    }

    /// The values of role `id` as `f32`, row-major, with Q/K rows moved in direction `rope`
    /// (`None`: the format's own order). Weights go through [`WeightRead::weight_f32`], 1-D
    /// tensors through [`Checkpoint::to_f32`]; the role's mapped pages are released after.
    fn role_rows_f32(&self, id: TensorId, rope: Option<RopeLayout>) -> Result<Vec<f32>> {
        let values = match self.part(id, Part::Weight) {
            Some(t) if t.shape.len() == 1 => self.to_f32(t)?,
            _ => self.weight_f32(id)?,
        };
        for part in [
            Part::Weight,
            Part::WeightPacked,
            Part::WeightScale,
            Part::WeightZeroPoint,
            Part::WeightGlobalScale,
            Part::Scales,
            Part::Biases,
        ] {
            if let Some(t) = self.part(id, part) {
                self.release(t);
            }
        }
        let Some((dir, h)) = rope.zip(rope_heads(&self.config, TensorKey::weight(id))) else {
            return Ok(values);
        };
        let hd = self.config.head_dim as usize;
        let rows = h * hd;
        let k = values.len() / rows.max(1);
        let mut out = Vec::with_capacity(values.len());
        for dst in 0..rows {
            let s = source_row(dst, hd, dir);
            out.extend_from_slice(&values[s * k..(s + 1) * k]);
        }
        Ok(out)
    }

    /// Run `f(source_row_bytes, scratch, out_row)` for every row of the 2-D plain float tensor
    /// `t` (BF16/F16/F32), in parallel, without an `f32` copy of the tensor. Output row `r`
    /// reads source row `r`, or the row the RoPE permutation `rope` maps to it for Q/K.
    /// `scratch` is a per-thread buffer of one row of `f32`. With `out = Some((bytes,
    /// row_bytes))`, `out_row` is that row's slice of `bytes`. The mapped pages are released
    /// after. The first error in row order becomes [`Error::Codec`] naming `name`, with a
    /// [`qforge_codecs::Error::NonFinite`] given its row.
    pub(crate) fn par_source_rows<T, F>(
        &self,
        t: &TensorEntry,
        rope: Option<RopeLayout>,
        name: &str,
        out: Option<(&mut [u8], usize)>,
        f: F,
    ) -> Result<Vec<T>>
    where
        T: Send,
        F: Fn(
                &[u8],
                &mut Vec<f32>,
                Option<&mut [u8]>,
            ) -> std::result::Result<T, qforge_codecs::Error>
            + Sync,
    {
        let rows = t.shape.first().copied().unwrap_or(0) as usize;
        let src = self.bytes(t)?;
        let results = self.par_rows_of(t, (&src, 0..rows), rope, name, out, f);
        drop(src);
        self.release(t);
        results
    }

    /// [`Weights::par_source_rows`] for output rows `range` only, from `src`, all of `t`'s
    /// bytes (already at hand: row-block writers call this once per block), with `out`
    /// holding just those rows; nothing is released. Errors name absolute row numbers.
    pub(crate) fn par_rows_of<T, F>(
        &self,
        t: &TensorEntry,
        (src, range): (&[u8], std::ops::Range<usize>),
        rope: Option<RopeLayout>,
        name: &str,
        out: Option<(&mut [u8], usize)>,
        f: F,
    ) -> Result<Vec<T>>
    where
        T: Send,
        F: Fn(
                &[u8],
                &mut Vec<f32>,
                Option<&mut [u8]>,
            ) -> std::result::Result<T, qforge_codecs::Error>
            + Sync,
    {
        debug_assert!(matches!(t.dtype, DType::BF16 | DType::F16 | DType::F32));
        let (rows, k) = match t.shape.as_slice() {
            [r, k] => (*r as usize, *k as usize),
            _ => return Err(self.bad(t, "row streaming needs a 2-D tensor".into())),
        };
        let row_len = k * t.dtype.block_bytes() as usize;
        if range.end > rows || src.len() < rows * row_len {
            return Err(self.bad(
                t,
                format!(
                    "rows {range:?} asked of a {rows}-row tensor of {} bytes",
                    src.len()
                ),
            ));
        }
        let heads = rope.zip(rope_heads(&self.config, t.key));
        let hd = self.config.head_dim as usize;
        let one = |scratch: &mut Vec<f32>, r: usize, o: Option<&mut [u8]>| {
            let sr = heads.map_or(r, |(dir, _)| source_row(r, hd, dir));
            f(&src[sr * row_len..(sr + 1) * row_len], scratch, o).map_err(|e| (r, e))
        };
        let results: Vec<std::result::Result<T, (usize, qforge_codecs::Error)>> = match out {
            Some((bytes, row_bytes)) => bytes
                .par_chunks_mut(row_bytes)
                .enumerate()
                .map_init(
                    || vec![0f32; k],
                    |b, (i, o)| one(b, range.start + i, Some(o)),
                )
                .collect(),
            None => range
                .into_par_iter()
                .map_init(|| vec![0f32; k], |b, r| one(b, r, None))
                .collect(),
        };
        results
            .into_iter()
            .map(|r| {
                r.map_err(|(row, e)| Error::Codec {
                    path: self.path.clone(),
                    tensor: name.to_owned(),
                    source: crate::numerics::with_row(e, row as u64),
                })
            })
            .collect()
    }

    /// The companion `part` of role `id`, an error naming `beside` when it is missing.
    pub(crate) fn required(
        &self,
        id: TensorId,
        part: Part,
        beside: &TensorEntry,
    ) -> Result<&'a TensorEntry> {
        self.part(id, part)
            .ok_or_else(|| self.bad(beside, format!("has no companion {} tensor", part.suffix())))
    }

    /// An I32 tensor's values.
    pub(crate) fn i32s(&self, t: &TensorEntry) -> Result<Vec<i32>> {
        if t.dtype != DType::I32 {
            return Err(self.bad(t, format!("must be I32, found {}", t.dtype)));
        }
        let b = self.bytes(t)?;
        Ok(b.chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// [`Error::BadQuantization`] naming `t`.
    pub(crate) fn bad(&self, t: &TensorEntry, reason: String) -> Error {
        Error::BadQuantization {
            path: self.path.clone(),
            tensor: t.name.clone(),
            reason,
        }
    }
}

/// Check that every scale is finite and non-negative (an error naming `t` and the index).
pub(crate) fn check_finite_scales(ck: &Weights<'_>, t: &TensorEntry, s: &[f32]) -> Result<()> {
    match s.iter().position(|x| !x.is_finite() || *x < 0.0) {
        None => Ok(()),
        Some(i) => Err(ck.bad(t, format!("scale {i} is {} (must be finite and ≥ 0)", s[i]))),
    }
}
