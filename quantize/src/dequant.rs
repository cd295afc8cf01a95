//! Reading a linear's weight as `f32`, whatever its storage: plain floats, ggml blocks, FP8
//! with per-row, per-tensor or 128×128-block scales (compressed-tensors
//! `float-quantized`/`naive-quantized`, `fbgemm_fp8`), INT4 `pack-quantized` with group scales
//! and optional zero points, or FP4 (`nvfp4-pack-quantized`, `mxfp4-pack-quantized`).
//!
//! This is the one place that knows how each stored layout dequantizes; `verify`, `convert` and
//! `inspect` all go through [`WeightRead::weight_f32`]. The arithmetic is exactly the
//! dequantization of the format's reference (`w = f8(q)·s` and `w = s·(q − zp)`), done in `f32`:
//! every product is exact in `f32` (a ≤ 5-bit integer or a 4-bit-mantissa FP8 value times a
//! BF16/F32 scale), so rounding the result to BF16 gives what compressed-tensors computes in the
//! model dtype.

use qforge_codecs::int4::Int4Arith;
use qforge_codecs::{fp4, fp8_ct, int4, mlx, DType};
use rayon::prelude::*;

use qforge_convert::checkpoint::{Checkpoint, TensorEntry};
use qforge_convert::export::rope_heads;
use qforge_convert::names::{Part, TensorId, TensorKey};
use qforge_convert::rope::{source_row, RopeLayout};
use qforge_convert::{Error, Result};

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
    /// FP8 codes with one scale per 128×128 block (compressed-tensors `strategy: block`,
    /// `weight_scale` `[ceil(out/128), ceil(in/128)]`).
    Fp8Block,
    /// compressed-tensors `nvfp4-pack-quantized`: U8 `weight_packed` (two E2M1 codes a byte),
    /// F8_E4M3 `weight_scale` per 16, F32 `weight_global_scale`.
    Nvfp4,
    /// compressed-tensors `mxfp4-pack-quantized`: U8 `weight_packed`, U8 (E8M0) `weight_scale`
    /// per 32.
    Mxfp4,
    /// mlx-lm affine: U32 `weight` (packed codes), `scales` and `biases` per group.
    MlxAffine {
        /// code width, 4 or 8
        bits: u8,
        /// columns per scale and bias
        group_size: u64,
    },
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
pub(crate) struct Weights<'a>(pub(crate) &'a Checkpoint);

impl std::ops::Deref for Weights<'_> {
    type Target = Checkpoint;
    fn deref(&self) -> &Checkpoint {
        self.0
    }
}

impl<'a> Weights<'a> {
    /// The tensor with role `id` and part `part`, if present.
    fn part(&self, id: TensorId, part: Part) -> Option<&'a TensorEntry> {
        let ck: &'a Checkpoint = self.0;
        ck.tensor_by_key(TensorKey { id, part })
    }

    /// How `id`'s weight is stored.
    fn weight_storage(&self, id: TensorId) -> Result<WeightStorage> {
        if let Some(packed) = self.part(id, Part::WeightPacked) {
            if packed.dtype == DType::U8 {
                return self.fp4_storage(id, packed);
            }
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
        if w.dtype == DType::U32 || self.part(id, Part::Scales).is_some() {
            return self.mlx_storage(id, w);
        }
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
            other if *other == fp8_block_grid(&w.shape) => Ok(WeightStorage::Fp8Block),
            other => Err(self.bad(
                scale,
                format!(
                    "weight_scale shape {other:?} is neither [{rows}, 1], [1] nor the \
                     128×128 block grid {:?}",
                    fp8_block_grid(&w.shape)
                ),
            )),
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
            WeightStorage::Fp8Block => self.fp8_block_f32(id),
            WeightStorage::Nvfp4 | WeightStorage::Mxfp4 => self.fp4_f32(id),
            WeightStorage::MlxAffine { bits, group_size } => {
                self.mlx_f32(id, bits, group_size as usize)
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

    /// NVFP4 or MXFP4 from a U8 `weight_packed`, its shapes checked against the config.
    fn fp4_storage(&self, id: TensorId, packed: &TensorEntry) -> Result<WeightStorage> {
        let scale = self.required(id, Part::WeightScale, packed)?;
        let (storage, group) = match scale.dtype {
            DType::F8_E4M3 => (WeightStorage::Nvfp4, fp4::NVFP4_GROUP as u64),
            DType::U8 => (WeightStorage::Mxfp4, fp4::MXFP4_GROUP as u64),
            d => return Err(self.bad(scale, format!("FP4 scales must be F8_E4M3 or U8, not {d}"))),
        };
        let [rows, cols] = match self.config.expected_shape(id).as_slice() {
            [r, c] => [*r, *c],
            _ => return Err(self.bad(packed, "FP4 weights must be 2-D".into())),
        };
        if cols % group != 0
            || packed.shape != [rows, cols / 2]
            || scale.shape != [rows, cols / group]
        {
            return Err(self.bad(
                packed,
                format!(
                    "FP4 weight_packed {:?} / weight_scale {:?} do not fit [{rows}, {cols}] in \
                     groups of {group}",
                    packed.shape, scale.shape
                ),
            ));
        }
        if storage == WeightStorage::Nvfp4 {
            let g = self.required(id, Part::WeightGlobalScale, packed)?;
            if g.dtype != DType::F32 || g.shape.iter().product::<u64>() != 1 {
                return Err(self.bad(g, "weight_global_scale must be one F32".into()));
            }
        }
        Ok(storage)
    }

    /// Block FP8: `f8(q) · s` in `f32` (`qforge_codecs::fp8_ct::dequantize_fp8_block_ct`
    /// with `f32` arithmetic; exact, so its BF16 rounding is compressed-tensors' BF16 result).
    fn fp8_block_f32(&self, id: TensorId) -> Result<Vec<f32>> {
        let w = self.part(id, Part::Weight).expect("checked");
        let scale = self.part(id, Part::WeightScale).expect("checked");
        let scales = self.to_f32(scale)?;
        check_finite_scales(self, scale, &scales)?;
        let [rows, cols] = match w.shape.as_slice() {
            [r, c] => [*r as usize, *c as usize],
            _ => return Err(self.bad(w, "block FP8 weights must be 2-D".into())),
        };
        let b = fp8_ct::Fp8Blocks {
            rows,
            cols,
            block: fp8_ct::CT_BLOCK,
            codes: self.bytes(w)?.into_owned(),
            scales,
        };
        fp8_ct::dequantize_fp8_block_ct(&b, Int4Arith::F32).map_err(|source| Error::Codec {
            path: self.path.clone(),
            tensor: w.name.clone(),
            source,
        })
    }

    /// NVFP4 / MXFP4 in `f32` as compressed-tensors computes them before the cast to the model
    /// dtype (`qforge_codecs::fp4::dequantize_nvfp4`, `dequantize_mxfp4_ct` with `f32`
    /// arithmetic).
    fn fp4_f32(&self, id: TensorId) -> Result<Vec<f32>> {
        let packed = self.part(id, Part::WeightPacked).expect("checked");
        let scale = self.part(id, Part::WeightScale).expect("checked");
        let shape = self.config.expected_shape(id);
        let p = fp4::Fp4Packed {
            rows: shape[0] as usize,
            cols: shape[1] as usize,
            packed: self.bytes(packed)?.into_owned(),
            scales: self.bytes(scale)?.into_owned(),
        };
        let codec = |source| Error::Codec {
            path: self.path.clone(),
            tensor: packed.name.clone(),
            source,
        };
        if scale.dtype == DType::U8 {
            return fp4::dequantize_mxfp4_ct(&p, Int4Arith::F32).map_err(codec);
        }
        let g = self.part(id, Part::WeightGlobalScale).expect("checked");
        let gs = self.to_f32(g)?[0];
        if !(gs.is_finite() && gs > 0.0) {
            return Err(self.bad(g, format!("global scale is {gs} (must be finite and > 0)")));
        }
        fp4::dequantize_nvfp4(&p, gs).map_err(codec)
    }

    /// mlx-lm affine storage: U32 `weight` `[rows, cols·bits/32]` with `scales` and `biases`
    /// `[rows, cols/group]` in one float dtype; bits and group size follow from the shapes.
    fn mlx_storage(&self, id: TensorId, w: &TensorEntry) -> Result<WeightStorage> {
        let scales = self.required(id, Part::Scales, w)?;
        let biases = self.required(id, Part::Biases, w)?;
        let [rows, cols] = match self.config.expected_shape(id).as_slice() {
            [r, c] => [*r, *c],
            _ => return Err(self.bad(w, "MLX weights must be 2-D".into())),
        };
        let (words, groups) = match (w.shape.as_slice(), scales.shape.as_slice()) {
            ([r, wd], [r2, g]) if *r == rows && *r2 == rows && *wd > 0 && *g > 0 => (*wd, *g),
            _ => {
                return Err(self.bad(
                    w,
                    format!(
                        "MLX weight {:?} / scales {:?} do not fit [{rows}, {cols}]",
                        w.shape, scales.shape
                    ),
                ))
            }
        };
        let bits = (words * 32).checked_div(cols).unwrap_or(0);
        let ok = w.dtype == DType::U32
            && matches!(scales.dtype, DType::BF16 | DType::F16 | DType::F32)
            && biases.dtype == scales.dtype
            && biases.shape == scales.shape
            && matches!(bits, 4 | 8)
            && words * 32 == cols * bits
            && cols % groups == 0
            && matches!(cols / groups, 32 | 64 | 128);
        if !ok {
            return Err(self.bad(
                w,
                format!(
                    "MLX weight {} {:?}, scales {} {:?}, biases {} {:?} do not make a 4/8-bit \
                     affine [{rows}, {cols}] in groups of 32/64/128",
                    w.dtype, w.shape, scales.dtype, scales.shape, biases.dtype, biases.shape
                ),
            ));
        }
        Ok(WeightStorage::MlxAffine {
            bits: bits as u8,
            group_size: cols / groups,
        })
    }

    /// mlx-lm affine weights as `mx.dequantize` computes them, `r(r(s·q) + b)` in the scales'
    /// dtype (`qforge_codecs::mlx::dequantize_mlx_affine`).
    fn mlx_f32(&self, id: TensorId, bits: u8, group: usize) -> Result<Vec<f32>> {
        let w = self.part(id, Part::Weight).expect("checked");
        let scales = self.part(id, Part::Scales).expect("checked");
        let biases = self.part(id, Part::Biases).expect("checked");
        let shape = self.config.expected_shape(id);
        let m = mlx::MlxAffine {
            rows: shape[0] as usize,
            cols: shape[1] as usize,
            bits,
            group_size: group,
            packed: self
                .bytes(w)?
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            scales: self.to_f32(scales)?,
            biases: self.to_f32(biases)?,
        };
        let arith = if scales.dtype == DType::BF16 {
            Int4Arith::Bf16
        } else {
            Int4Arith::F32
        };
        mlx::dequantize_mlx_affine(&m, arith).map_err(|source| Error::Codec {
            path: self.path.clone(),
            tensor: w.name.clone(),
            source,
        })
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

/// The compressed-tensors block-FP8 scale grid of a `[rows, cols]` weight.
fn fp8_block_grid(shape: &[u64]) -> Vec<u64> {
    match shape {
        [r, c] => vec![
            r.div_ceil(fp8_ct::CT_BLOCK[0] as u64),
            c.div_ceil(fp8_ct::CT_BLOCK[1] as u64),
        ],
        _ => vec![],
    }
}

fn check_finite_scales(ck: &Weights<'_>, t: &TensorEntry, s: &[f32]) -> Result<()> {
    match s.iter().position(|x| !x.is_finite() || *x < 0.0) {
        None => Ok(()),
        Some(i) => Err(ck.bad(t, format!("scale {i} is {} (must be finite and ≥ 0)", s[i]))),
    }
}
