//! The tensors of one linear under the FP8 rowwise and per-tensor schemes (compressed-tensors
//! `FP8_DYNAMIC` / `FP8` presets, and `fbgemm_fp8`): `weight` (F8_E4M3), `weight_scale` (one
//! per output row, `[rows, 1]`, or one per tensor, `[1]`) and, for the static scheme, the
//! calibrated `input_scale`. Each layout uses its defining tool's arithmetic ([`Fp8Rule`]);
//! rowwise codes stream from a plain float source a row block at a time.

use qforge_codecs::fp8::{self, Fp8Options};
use qforge_codecs::fp8_ct;
use qforge_codecs::int4::Int4Arith;
use qforge_codecs::DType;

use super::fp4::Source;
use super::{checked_rows, codec_err, hf_module, shape2};
use crate::dequant::WeightRead;
use crate::numerics::Numerics;
use qforge_convert::checkpoint::Checkpoint;
use qforge_convert::export::{encode_float, OutTensor, Producer, RowProducer};
use qforge_convert::names::{Part, TensorId};
use qforge_convert::rope::RopeLayout;
use qforge_convert::write::safetensors::TensorSpec;
use qforge_convert::Result;

/// The FP8 arithmetic of a layout: its defining tool's, bit for bit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Fp8Rule {
    /// FBGEMM's `quantize_fp8_per_row` (what transformers' `FbgemmFp8Linear` and Meta's
    /// releases use, fbgemm_gpu experimental/gen_ai/src/quantize/quantize.cu
    /// `fused_quantize_rowwise`): `s = max(amax/448, 1/(448·512))` in `f32`, `q = fp8(x / s)`
    /// with an `f32` division, saturating, the sign of a zero code kept (`0x80`);
    /// `qforge_codecs::fp8`.
    Fbgemm(Fp8Options),
    /// compressed-tensors' (llm-compressor 0.14's `FP8_DYNAMIC` / `FP8`): `s = r(amax/448)`
    /// (eps for a zero row), `q = fp8(clamp(r(x / s) + 0, ±448))` with `r` the model dtype's
    /// rounding, so for a BF16 model the quotient is rounded to BF16 before the cast;
    /// `qforge_codecs::fp8_ct`.
    CompressedTensors(Int4Arith),
}

type CodecResult<T> = std::result::Result<T, qforge_codecs::Error>;

impl Fp8Rule {
    /// The row scale of a row whose absolute maximum is `amax`.
    fn scale_for_amax(self, amax: f32) -> CodecResult<f32> {
        match self {
            Fp8Rule::Fbgemm(o) => fp8::scale_for_amax(amax, &o),
            Fp8Rule::CompressedTensors(a) => Ok(fp8_ct::ct_fp8_scale(half_round(a, amax), a)),
        }
    }

    /// Codes of one decoded row; returns its scale.
    fn row(self, row: &[f32], out: &mut [u8]) -> CodecResult<f32> {
        match self {
            Fp8Rule::Fbgemm(o) => fp8::quantize_fp8_row(row, out, &o),
            Fp8Rule::CompressedTensors(a) => fp8_ct::quantize_fp8_row_ct(row, out, a),
        }
    }

    /// Codes of one row of BF16 bytes with a known finite absolute maximum.
    fn row_bf16(self, bytes: &[u8], amax: f32, out: &mut [u8]) -> CodecResult<f32> {
        match self {
            Fp8Rule::Fbgemm(o) => fp8::quantize_fp8_row_bf16(bytes, amax, out, &o),
            Fp8Rule::CompressedTensors(a) => fp8_ct::quantize_fp8_row_bf16_ct(bytes, amax, out, a),
        }
    }

    /// Codes of a whole `[n, k]` tensor into `out`, one scale per row or one per tensor.
    fn codes(self, v: &[f32], k: usize, per_row: bool, out: &mut [u8]) -> CodecResult<()> {
        match (self, per_row) {
            (Fp8Rule::Fbgemm(o), true) => {
                let mut s = vec![0f32; v.len() / k.max(1)];
                fp8::quantize_fp8_rowwise(v, k, out, &mut s, &o)
            }
            (Fp8Rule::Fbgemm(o), false) => fp8::quantize_fp8_per_tensor(v, k, out, &o).map(|_| ()),
            (Fp8Rule::CompressedTensors(a), true) => {
                let (q, _) = fp8_ct::quantize_fp8_channel_ct(v, k, a)?;
                out.copy_from_slice(&q);
                Ok(())
            }
            (Fp8Rule::CompressedTensors(a), false) => {
                fp8_ct::quantize_fp8_tensor_ct(v, k, out, a).map(|_| ())
            }
        }
    }

    /// Scales of a whole `[n, k]` tensor: one per row, or the one of the tensor.
    fn scales(self, v: &[f32], k: usize, per_row: bool) -> CodecResult<Vec<f32>> {
        match (self, per_row) {
            (Fp8Rule::Fbgemm(o), true) => fp8::rowwise_scales(v, k, &o),
            (Fp8Rule::Fbgemm(o), false) => fp8::per_tensor_scale(v, k, &o).map(|s| vec![s]),
            (Fp8Rule::CompressedTensors(a), true) => fp8_ct::channel_scales_ct(v, k, a),
            (Fp8Rule::CompressedTensors(a), false) => {
                fp8_ct::tensor_scale_ct(v, k, a).map(|s| vec![s])
            }
        }
    }
}

/// `x` rounded to the model dtype of `arith` (the amax of a row read from F32 bits is rounded
/// as its values would be).
fn half_round(arith: Int4Arith, x: f32) -> f32 {
    match arith {
        Int4Arith::Bf16 => half::bf16::from_f32(x).to_f32(),
        Int4Arith::F32 => x,
    }
}

/// The output tensors of quantized linear `id`: per-row scales (`per_row`) or one per tensor
/// with the calibrated `input_scale` (`Some` for the static scheme); scales are stored in
/// `scale_dtype`.
pub(super) fn tensors<'a>(
    src: Source<'a>,
    id: TensorId,
    module: &str,
    per_row: bool,
    rule: Fp8Rule,
    input_scale: Option<f32>,
    scale_dtype: DType,
) -> Vec<OutTensor<'a>> {
    let Source {
        ckpt,
        rope,
        numerics,
        ..
    } = src;
    let (rows, k) = shape2(ckpt, id);
    let shape = ckpt.config.expected_shape(id);
    let scale_out = move |s: &[f32], buf: &mut Vec<u8>| {
        encode_float(s, scale_dtype, buf).expect("float dtype checked");
    };
    let mut tensors = Vec::new();
    let streamed = if per_row {
        fp8_code_rows(ckpt, id, rope, rule, numerics)
    } else {
        None
    };
    tensors.push(OutTensor {
        spec: TensorSpec {
            name: format!("{module}.weight"),
            dtype: DType::F8_E4M3,
            shape: shape.clone(),
        },
        produce: streamed.unwrap_or_else(|| {
            Producer::Whole(Box::new(move |buf: &mut Vec<u8>| {
                if per_row {
                    buf.resize(rows * k, 0);
                    if let Some(r) = fp8_rows_streamed(ckpt, id, rope, rule, numerics, Some(buf)) {
                        return r.map(|_| ());
                    }
                }
                let v = whole(src, id, rule)?;
                buf.resize(v.len(), 0);
                rule.codes(&v, k, per_row, buf)
                    .map_err(|e| codec_err(ckpt, id, e))
            }))
        }),
    });
    tensors.push(OutTensor {
        spec: TensorSpec {
            name: format!("{module}.weight_scale"),
            dtype: scale_dtype,
            shape: if per_row {
                vec![rows as u64, 1]
            } else {
                vec![1]
            },
        },
        produce: {
            let make = move |buf: &mut Vec<u8>| {
                if per_row {
                    if let Some(r) = fp8_rows_streamed(ckpt, id, rope, rule, numerics, None) {
                        scale_out(&r?, buf);
                        return Ok(());
                    }
                }
                let v = whole(src, id, rule)?;
                let s = rule
                    .scales(&v, k, per_row)
                    .map_err(|e| codec_err(ckpt, id, e))?;
                scale_out(&s, buf);
                Ok(())
            };
            // Row scales from a plain float source read it a row at a time (small
            // buffers, pages released after): made ahead of the write order. The
            // rest decodes the whole tensor, so it runs in turn.
            if per_row && plain_float_weight(ckpt, id) {
                Producer::Ahead(Box::new(make))
            } else {
                Producer::Whole(Box::new(make))
            }
        },
    });
    if let Some(s) = input_scale {
        tensors.push(OutTensor {
            spec: TensorSpec {
                name: format!("{module}.input_scale"),
                dtype: scale_dtype,
                shape: vec![1],
            },
            produce: Producer::Whole(Box::new(move |buf: &mut Vec<u8>| {
                scale_out(&[s], buf);
                Ok(())
            })),
        });
    }
    tensors
}

/// The whole weight in HF row order for the whole-tensor path: compressed-tensors sees it in the
/// model dtype ([`Source::rows`]), FBGEMM as decoded.
fn whole(src: Source<'_>, id: TensorId, rule: Fp8Rule) -> Result<Vec<f32>> {
    match rule {
        Fp8Rule::CompressedTensors(_) => src.rows(id),
        Fp8Rule::Fbgemm(_) => {
            let k = shape2(src.ckpt, id).1;
            checked_rows(src.ckpt, id, src.rope, k, src.numerics)
        }
    }
}

/// FP8 rowwise straight from a plain float source: each output row is decoded from its source
/// row (after the RoPE permutation) into a small per-thread buffer, scaled and encoded, so no
/// `f32` copy of the tensor is ever made. `out_q` (codes) is optional: the scale producers only
/// need the scales. Returns `None` when the source is not a plain float tensor (ggml blocks,
/// already quantized layouts), which take the whole-tensor path.
fn fp8_rows_streamed(
    ckpt: &Checkpoint,
    id: TensorId,
    rope: Option<RopeLayout>,
    rule: Fp8Rule,
    numerics: Numerics,
    out_q: Option<&mut [u8]>,
) -> Option<Result<Vec<f32>>> {
    if !plain_float_weight(ckpt, id) {
        return None;
    }
    let w = ckpt.part(id, Part::Weight)?;
    let k = shape2(ckpt, id).1;
    let name = hf_module(id) + ".weight";
    Some(crate::dequant::Weights(ckpt).par_source_rows(
        w,
        rope,
        &name,
        out_q.map(|q| (q, k)),
        |bytes, buf, q| {
            let Some(q) = q else {
                // Scales only: the absolute maximum straight from the bit patterns (for IEEE-style
                // formats |x| orders like its bits with the sign cleared), no decoding; a row
                // with a bad value is decoded and goes through the bad-weight policy.
                if let Ok(amax) = fp8::amax_of_bits(w.dtype, bytes) {
                    if amax <= numerics.max_abs {
                        return rule.scale_for_amax(amax);
                    }
                }
                qforge_codecs::decode_to_f32(w.dtype, bytes, buf)?;
                numerics.row(buf)?;
                let amax = buf.iter().fold(0f32, |m, v| m.max(v.abs()));
                return rule.scale_for_amax(amax);
            };
            qforge_codecs::decode_to_f32(w.dtype, bytes, buf)?;
            numerics.row(buf)?;
            rule.row(buf, q)
        },
    ))
}

/// Whether `id`'s weight is a plain float tensor (BF16/F16/F32, no scale of its own), which
/// [`fp8_rows_streamed`] reads a row at a time.
fn plain_float_weight(ckpt: &Checkpoint, id: TensorId) -> bool {
    ckpt.part(id, Part::Weight)
        .is_some_and(|w| matches!(w.dtype, DType::BF16 | DType::F16 | DType::F32))
        && ckpt.part(id, Part::WeightScale).is_none()
}

/// FP8 rowwise codes as a row-block producer (see [`RowProducer`]), when the weight is a
/// plain float tensor stored contiguously (mapped, so each block reads only its rows). `None`
/// otherwise: ggml blocks, quantized layouts and model-parallel or strided sources take the
/// whole-tensor path, which gathers them once.
fn fp8_code_rows(
    ckpt: &Checkpoint,
    id: TensorId,
    rope: Option<RopeLayout>,
    rule: Fp8Rule,
    numerics: Numerics,
) -> Option<Producer<'_>> {
    let w = ckpt.part(id, Part::Weight)?;
    if !plain_float_weight(ckpt, id)
        || !matches!(
            w.layout,
            qforge_convert::checkpoint::TensorLayout::Contiguous(_)
        )
    {
        return None;
    }
    let std::borrow::Cow::Borrowed(src) = ckpt.bytes(w).ok()? else {
        return None;
    };
    let k = shape2(ckpt, id).1;
    let name = hf_module(id) + ".weight";
    Some(Producer::Rows(RowProducer {
        row_bytes: k,
        fill: Box::new(move |range, out| {
            crate::dequant::Weights(ckpt)
                .par_rows_of(
                    w,
                    (src, range),
                    rope,
                    &name,
                    Some((out, k)),
                    |bytes, buf, q| {
                        let q = q.expect("codes requested");
                        // a BF16 row with nothing for the bad-weight policy to do is encoded from
                        // its bit patterns in one pass (the same codes as decoding it first)
                        if w.dtype == DType::BF16 {
                            if let Ok(amax) = fp8::amax_of_bits(w.dtype, bytes) {
                                if amax <= numerics.max_abs {
                                    return rule.row_bf16(bytes, amax, q);
                                }
                            }
                        }
                        qforge_codecs::decode_to_f32(w.dtype, bytes, buf)?;
                        numerics.row(buf)?;
                        rule.row(buf, q)
                    },
                )
                .map(|_| ())
        }),
        done: Box::new(move || ckpt.release(w)),
    }))
}
