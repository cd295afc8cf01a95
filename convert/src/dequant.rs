//! Reading a linear's weight as `f32`, whatever its storage: plain floats, ggml blocks, FP8
//! with per-row or per-tensor scales (compressed-tensors `float-quantized`/`naive-quantized`,
//! `fbgemm_fp8`), or INT4 `pack-quantized` with group scales and optional zero points.
//!
//! This is the one place that knows how each stored layout dequantizes; `verify`, `convert` and
//! `inspect` all go through [`Checkpoint::weight_f32`]. The arithmetic is exactly the
//! dequantization of the format's reference (`w = f8(q)·s` and `w = s·(q − zp)`), done in `f32`:
//! every product is exact in `f32` (a ≤ 5-bit integer or a 4-bit-mantissa FP8 value times a
//! BF16/F32 scale), so rounding the result to BF16 gives what compressed-tensors computes in the
//! model dtype.

use qforge_quantize::{int4, DType};
use rayon::prelude::*;

use crate::checkpoint::{Checkpoint, TensorEntry};
use crate::error::{Error, Result};
use crate::export::rope_heads;
use crate::names::{Part, TensorId, TensorKey};
use crate::rope::{source_row, RopeLayout};

/// How a module's weight is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightStorage {
    /// A plain tensor (any float dtype or ggml block type) with no scale.
    Plain(DType),
    /// FP8 codes with one scale per output row (`weight_scale` `[out, 1]`).
    Fp8Rowwise,
    /// FP8 codes with a single scale (`weight_scale` `[1]` or `[]`).
    Fp8PerTensor,
    /// compressed-tensors `pack-quantized` INT4 (or INT8, `bits: 8`) with `group_size`
    /// columns per scale.
    Int4Packed {
        /// code width, 4 or 8 (from the packed tensor's shape: `ceil(cols·bits/32)` words a row)
        bits: u8,
        /// columns per scale (the row length for per-channel scales)
        group_size: u64,
        /// whether zero points are stored
        asymmetric: bool,
    },
}

impl Checkpoint {
    /// The tensor with role `id` and part `part`, if present.
    pub fn part(&self, id: TensorId, part: Part) -> Option<&TensorEntry> {
        self.tensor_by_key(TensorKey { id, part })
    }

    /// How `id`'s weight is stored.
    pub fn weight_storage(&self, id: TensorId) -> Result<WeightStorage> {
        if let Some(packed) = self.part(id, Part::WeightPacked) {
            let (rows, cols, bits) = self.packed_dims(id, packed)?;
            let scale = self.required(id, Part::WeightScale, packed)?;
            let groups = match scale.shape.as_slice() {
                [r, g] if *r == rows && *g > 0 && cols % g == 0 => *g,
                other => {
                    return Err(self.bad(
                        scale,
                        format!(
                        "weight_scale shape {other:?} does not fit weight_shape [{rows}, {cols}]"
                    ),
                    ))
                }
            };
            return Ok(WeightStorage::Int4Packed {
                bits,
                group_size: cols / groups,
                asymmetric: self.part(id, Part::WeightZeroPoint).is_some(),
            });
        }
        let w = self
            .part(id, Part::Weight)
            .ok_or_else(|| Error::NoSuchTensor(id.to_string()))?;
        let Some(scale) = self.part(id, Part::WeightScale) else {
            return Ok(WeightStorage::Plain(w.dtype));
        };
        if w.dtype != DType::F8_E4M3 && w.dtype != DType::F8_E5M2 {
            return Err(self.bad(
                w,
                format!(
                    "has a weight_scale but dtype {} (expected F8_E4M3)",
                    w.dtype
                ),
            ));
        }
        let rows = w.shape.first().copied().unwrap_or(1);
        match scale.shape.as_slice() {
            [r, 1] if *r == rows && rows > 1 => Ok(WeightStorage::Fp8Rowwise),
            [] | [1] | [1, 1] => Ok(WeightStorage::Fp8PerTensor),
            other => Err(self.bad(
                scale,
                format!("weight_scale shape {other:?} is neither [{rows}, 1] nor [1]"),
            )),
        }
    }

    /// The weight of `id`, dequantized to `f32`, row-major `[out, in]` (the stored layout of
    /// this format: Q/K rows stay in the format's own RoPE order).
    pub fn weight_f32(&self, id: TensorId) -> Result<Vec<f32>> {
        match self.weight_storage(id)? {
            WeightStorage::Plain(_) => {
                let w = self
                    .part(id, Part::Weight)
                    .expect("checked by weight_storage");
                self.to_f32(w)
            }
            WeightStorage::Fp8Rowwise | WeightStorage::Fp8PerTensor => {
                let w = self
                    .part(id, Part::Weight)
                    .expect("checked by weight_storage");
                let scale = self.part(id, Part::WeightScale).expect("checked");
                let s = self.to_f32(scale)?;
                let mut out = self.to_f32(w)?;
                let k = w.shape.last().copied().unwrap_or(1).max(1) as usize;
                check_finite_scales(self, scale, &s)?;
                if s.len() == 1 {
                    for x in &mut out {
                        *x *= s[0];
                    }
                } else {
                    for (row, s) in out.chunks_mut(k).zip(&s) {
                        for x in row {
                            *x *= s;
                        }
                    }
                }
                Ok(out)
            }
            WeightStorage::Int4Packed {
                group_size, bits, ..
            } => {
                let packed = self.part(id, Part::WeightPacked).expect("checked");
                let (rows, cols, _) = self.packed_dims(id, packed)?;
                let scale = self.part(id, Part::WeightScale).expect("checked");
                let weight_scale = self.to_f32(scale)?;
                check_finite_scales(self, scale, &weight_scale)?;
                let words = self.i32s(packed)?;
                let weight_zero_point = match self.part(id, Part::WeightZeroPoint) {
                    Some(z) => Some(self.i32s(z)?),
                    None => None,
                };
                let p = int4::CtPacked {
                    bits,
                    weight_packed: words,
                    weight_scale,
                    weight_zero_point,
                    weight_shape: [rows as i64, cols as i64],
                    group_size: group_size as usize,
                };
                int4::dequantize_compressed_tensors(&p).map_err(|source| Error::Codec {
                    path: self.path.clone(),
                    tensor: packed.name.clone(),
                    source,
                })
            }
        }
    }

    /// The values of role `id` as `f32`, row-major, with Q/K rows moved in direction `rope`
    /// (`None`: the format's own order). Weights go through [`Checkpoint::weight_f32`], 1-D
    /// tensors through [`Checkpoint::to_f32`]; the role's mapped pages are released after.
    pub fn role_rows_f32(&self, id: TensorId, rope: Option<RopeLayout>) -> Result<Vec<f32>> {
        let values = match self.part(id, Part::Weight) {
            Some(t) if t.shape.len() == 1 => self.to_f32(t)?,
            _ => self.weight_f32(id)?,
        };
        for part in [
            Part::Weight,
            Part::WeightPacked,
            Part::WeightScale,
            Part::WeightZeroPoint,
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
    /// [`qforge_quantize::Error::NonFinite`] given its row.
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
            ) -> std::result::Result<T, qforge_quantize::Error>
            + Sync,
    {
        let rows = t.shape.first().copied().unwrap_or(0) as usize;
        let src = self.bytes(t)?;
        let results = self.par_rows_of(t, (&src, 0..rows), rope, name, out, f);
        drop(src);
        self.release(t);
        results
    }

    /// [`Checkpoint::par_source_rows`] for output rows `range` only, from `src`, all of `t`'s
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
            ) -> std::result::Result<T, qforge_quantize::Error>
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
        let results: Vec<std::result::Result<T, (usize, qforge_quantize::Error)>> = match out {
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

    /// `[rows, cols]` of a packed weight, from its `weight_shape` (checked against the config
    /// and against the packed tensor's own shape), and the code width the packed shape implies:
    /// `[rows, ceil(cols/8)]` words hold 4-bit codes, `[rows, ceil(cols/4)]` 8-bit ones (the
    /// two coincide only for rows of at most 4, read as 4-bit).
    fn packed_dims(&self, id: TensorId, packed: &TensorEntry) -> Result<(u64, u64, u8)> {
        let shape_t = self.required(id, Part::WeightShape, packed)?;
        let dims = self
            .to_f32(shape_t)
            .ok()
            .filter(|d| d.len() == 2)
            .ok_or_else(|| self.bad(shape_t, "weight_shape must hold two integers".into()))?;
        let (rows, cols) = (dims[0] as u64, dims[1] as u64);
        let expected = self.config.expected_shape(id);
        if expected != [rows, cols] {
            return Err(Error::ShapeMismatch {
                path: self.path.clone(),
                tensor: shape_t.name.clone(),
                expected,
                got: vec![rows, cols],
            });
        }
        let bits = match packed.shape.as_slice() {
            [r, w] if packed.dtype == DType::I32 && *r == rows && *w == cols.div_ceil(8) => 4,
            [r, w] if packed.dtype == DType::I32 && *r == rows && *w == cols.div_ceil(4) => 8,
            _ => {
                return Err(self.bad(
                    packed,
                    format!(
                        "weight_packed must be I32 [{rows}, {}] (4-bit) or [{rows}, {}] (8-bit) for weight_shape [{rows}, {cols}], found {} {:?}",
                        cols.div_ceil(8),
                        cols.div_ceil(4),
                        packed.dtype,
                        packed.shape
                    ),
                ))
            }
        };
        Ok((rows, cols, bits))
    }

    fn required(&self, id: TensorId, part: Part, beside: &TensorEntry) -> Result<&TensorEntry> {
        self.part(id, part)
            .ok_or_else(|| self.bad(beside, format!("has no companion {} tensor", part.suffix())))
    }

    fn i32s(&self, t: &TensorEntry) -> Result<Vec<i32>> {
        if t.dtype != DType::I32 {
            return Err(self.bad(t, format!("must be I32, found {}", t.dtype)));
        }
        let b = self.bytes(t)?;
        Ok(b.chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    fn bad(&self, t: &TensorEntry, reason: String) -> Error {
        Error::BadQuantization {
            path: self.path.clone(),
            tensor: t.name.clone(),
            reason,
        }
    }
}

fn check_finite_scales(ck: &Checkpoint, t: &TensorEntry, s: &[f32]) -> Result<()> {
    match s.iter().position(|x| !x.is_finite() || *x < 0.0) {
        None => Ok(()),
        Some(i) => Err(ck.bad(t, format!("scale {i} is {} (must be finite and ≥ 0)", s[i]))),
    }
}
