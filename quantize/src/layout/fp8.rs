//! The tensors of one linear under the FP8 rowwise and per-tensor schemes (compressed-tensors
//! `FP8_DYNAMIC` / `FP8` presets, and `fbgemm_fp8`): `weight` (F8_E4M3), `weight_scale` (one
//! per output row, `[rows, 1]`, or one per tensor, `[1]`) and, for the static scheme, the
//! calibrated `input_scale`. The arithmetic is `qforge_codecs::fp8`'s; rowwise codes stream
//! from a plain float source a row block at a time.

use qforge_codecs::fp8::{self, Fp8Options};
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

/// The output tensors of quantized linear `id`: per-row scales (`per_row`) or one per tensor
/// with the calibrated `input_scale` (`Some` for the static scheme); scales are stored in
/// `scale_dtype`.
pub(super) fn tensors<'a>(
    src: Source<'a>,
    id: TensorId,
    module: &str,
    per_row: bool,
    fp8_opts: Fp8Options,
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
        fp8_code_rows(ckpt, id, rope, fp8_opts, numerics)
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
                    if let Some(r) =
                        fp8_rows_streamed(ckpt, id, rope, &fp8_opts, numerics, Some(buf))
                    {
                        return r.map(|_| ());
                    }
                }
                let v = checked_rows(ckpt, id, rope, k, numerics)?;
                buf.resize(v.len(), 0);
                if per_row {
                    let mut s = vec![0f32; rows];
                    fp8::quantize_fp8_rowwise(&v, k, buf, &mut s, &fp8_opts)
                } else {
                    fp8::quantize_fp8_per_tensor(&v, k, buf, &fp8_opts).map(|_| ())
                }
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
                    if let Some(r) = fp8_rows_streamed(ckpt, id, rope, &fp8_opts, numerics, None) {
                        scale_out(&r?, buf);
                        return Ok(());
                    }
                }
                let v = checked_rows(ckpt, id, rope, k, numerics)?;
                let s = if per_row {
                    fp8::rowwise_scales(&v, k, &fp8_opts)
                } else {
                    fp8::per_tensor_scale(&v, k, &fp8_opts).map(|s| vec![s])
                }
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

/// FP8 rowwise straight from a plain float source: each output row is decoded from its source
/// row (after the RoPE permutation) into a small per-thread buffer, scaled and encoded, so no
/// `f32` copy of the tensor is ever made. `out_q` (codes) is optional: the scale producers only
/// need the scales. Returns `None` when the source is not a plain float tensor (ggml blocks,
/// already quantized layouts), which take the whole-tensor path.
fn fp8_rows_streamed(
    ckpt: &Checkpoint,
    id: TensorId,
    rope: Option<RopeLayout>,
    opts: &Fp8Options,
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
                        return fp8::scale_for_amax(amax, opts);
                    }
                }
                qforge_codecs::decode_to_f32(w.dtype, bytes, buf)?;
                numerics.row(buf)?;
                let amax = buf.iter().fold(0f32, |m, v| m.max(v.abs()));
                return fp8::scale_for_amax(amax, opts);
            };
            qforge_codecs::decode_to_f32(w.dtype, bytes, buf)?;
            numerics.row(buf)?;
            fp8::quantize_fp8_row(buf, q, opts)
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
    opts: Fp8Options,
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
                                    return fp8::quantize_fp8_row_bf16(bytes, amax, q, &opts);
                                }
                            }
                        }
                        qforge_codecs::decode_to_f32(w.dtype, bytes, buf)?;
                        numerics.row(buf)?;
                        fp8::quantize_fp8_row(buf, q, &opts)
                    },
                )
                .map(|_| ())
        }),
        done: Box::new(move || ckpt.release(w)),
    }))
}
