//! The tensors of one linear under the FP8 rowwise and per-tensor schemes (compressed-tensors
//! `FP8_DYNAMIC` / `FP8` presets, and `fbgemm_fp8`): `weight` (F8_E4M3), `weight_scale` (one
//! per output row, `[rows, 1]`, or one per tensor, `[1]`) and, for the static scheme, the
//! calibrated `input_scale`. Each layout uses its defining tool's arithmetic ([`Fp8Rule`]);
//! rowwise codes stream from a plain float source a row block at a time. This module is the
//! home of both schemes ([`FP8_ROWWISE`], [`FP8_STATIC`]): names, config, producers, reading
//! back and activation emulation.

use qforge_codecs::fp8::{self, Fp8Options};
use qforge_codecs::fp8_ct;
use qforge_codecs::int4::Int4Arith;
use qforge_codecs::DType;

use serde_json::{json, Value};

use super::fp4::Source;
use super::{
    checked_rows, codec_err, compressed_tensors_config, hf_module, model_arith, run_error, shape2,
    Cx, HfLayout, HfQuantOptions, HfScheme, LayoutScheme, ModuleCheck, Params,
};
use crate::dequant::{check_finite_scales, WeightRead, Weights};
use crate::numerics::Numerics;
use crate::scheme::Calibration;
use qforge_convert::checkpoint::Checkpoint;
use qforge_convert::checkpoint::TensorEntry;
use qforge_convert::export::{encode_float, OutTensor, Producer, RowProducer};
use qforge_convert::export::{streams, STREAMED_BYTES};
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

/// FP8 E4M3 weights with one scale per output row; activations quantized per token at run time
/// (compressed-tensors `FP8_DYNAMIC`, or `fbgemm_fp8`). Rounding: in compressed-tensors,
/// llm-compressor's (`W / scale` rounded to the model dtype, BF16 for a BF16 model, before the
/// clamp and FP8 cast; `qforge_codecs::fp8_ct`); in `fbgemm_fp8`, FBGEMM's
/// `quantize_fp8_per_row` (an `f32` division, `-0` kept as `0x80`; `qforge_codecs::fp8`).
pub static FP8_ROWWISE: Fp8 = Fp8 { per_row: true };

/// FP8 E4M3 weights with one scale per tensor and a static per-tensor activation scale from
/// calibration (compressed-tensors `FP8`). Rounding: llm-compressor's, as [`FP8_ROWWISE`] in
/// compressed-tensors.
pub static FP8_STATIC: Fp8 = Fp8 { per_row: false };

/// The FP8 rowwise / per-tensor layouts.
#[derive(Debug)]
pub struct Fp8 {
    per_row: bool,
}

/// The FP8 arithmetic of a layout: compressed-tensors' in the model dtype (llm-compressor's
/// bytes), FBGEMM's for `fbgemm_fp8`.
fn fp8_rule(opts: &HfQuantOptions) -> Fp8Rule {
    match opts.layout {
        HfLayout::Fbgemm => Fp8Rule::Fbgemm(Fp8Options {
            upper_bound: None,
            keep_negative_zero: true,
        }),
        HfLayout::CompressedTensors | HfLayout::Mlx => {
            Fp8Rule::CompressedTensors(model_arith(opts.dtype))
        }
    }
}

impl LayoutScheme for Fp8 {
    fn id(&self) -> &'static str {
        if self.per_row {
            "fp8-rowwise"
        } else {
            "fp8-static"
        }
    }
    fn names(&self) -> &'static [&'static str] {
        if self.per_row {
            &["fp8-rowwise"]
        } else {
            &["fp8-static"]
        }
    }
    fn presets(&self) -> &'static [(&'static str, &'static str, bool)] {
        // compressed-tensors quantization/quant_scheme.py: FP8_DYNAMIC is per-channel weights
        // with dynamic per-token activations, FP8 per-tensor weights with static activations
        if self.per_row {
            &[("FP8_DYNAMIC", "fp8-rowwise", false)]
        } else {
            &[("FP8", "fp8-static", false)]
        }
    }
    fn storage_name(&self, _s: HfScheme) -> String {
        if self.per_row {
            "fp8-rowwise"
        } else {
            "fp8-tensor"
        }
        .into()
    }
    fn accepts(&self, _s: HfScheme, c: Calibration) -> bool {
        !self.per_row && c == Calibration::Fp8Static
    }
    fn without_calibration(&self, _s: HfScheme) -> Option<HfScheme> {
        (!self.per_row).then(|| HfScheme::new(&FP8_ROWWISE, Params::NONE))
    }
    fn check_options(&self, _s: HfScheme, opts: &HfQuantOptions) -> ModuleCheck {
        if self.per_row {
            // the one scheme fbgemm_fp8 holds
            return super::kind::no_calibrated_codes(opts);
        }
        super::kind::default_check_options(opts)
    }
    fn check_module(
        &self,
        _s: HfScheme,
        opts: &HfQuantOptions,
        ckpt: &Checkpoint,
        id: TensorId,
    ) -> Result<()> {
        if self.per_row {
            return Ok(());
        }
        let m = hf_module(id);
        match opts.input_scales.as_ref().and_then(|s| s.get(&m)) {
            Some(s) if s.is_finite() && *s > 0.0 => Ok(()),
            Some(s) => Err(run_error(ckpt, format!("input scale of {m} is {s}"))),
            None => Err(run_error(
                ckpt,
                format!(
                    "fp8-static needs calibrated activation scales: none for {m} \
                 (run `qforge calibrate --method fp8-static` and pass --calib)"
                ),
            )),
        }
    }
    fn tensors<'a>(
        &self,
        _s: HfScheme,
        cx: &Cx<'a>,
        id: TensorId,
        module: &str,
    ) -> Result<Vec<OutTensor<'a>>> {
        let input_scale = (!self.per_row).then(|| {
            cx.opts
                .input_scales
                .as_ref()
                .and_then(|m| m.get(module))
                .copied()
                .expect("checked by check_module")
        });
        Ok(tensors(
            cx.src,
            id,
            module,
            self.per_row,
            fp8_rule(cx.opts),
            input_scale,
            cx.scale_dtype,
        ))
    }
    fn write_config(&self, _s: HfScheme, opts: &HfQuantOptions, nc: &[String], config: &mut Value) {
        config["quantization_config"] = if opts.layout == HfLayout::Fbgemm {
            // transformers' FbgemmFp8Config
            json!({
                "activation_scale_ub": opts.activation_scale_ub,
                "modules_to_not_convert": nc,
                "quant_method": "fbgemm_fp8",
            })
        } else if self.per_row {
            compressed_tensors_config(
                opts,
                nc,
                (
                    "float-quantized",
                    json!({"dynamic": false, "group_size": null, "num_bits": 8,
                           "strategy": "channel", "symmetric": true, "type": "float"}),
                    json!({"dynamic": true, "group_size": null, "num_bits": 8,
                           "strategy": "token", "symmetric": true, "type": "float"}),
                ),
            )
        } else {
            compressed_tensors_config(
                opts,
                nc,
                (
                    "float-quantized",
                    json!({"dynamic": false, "group_size": null, "num_bits": 8,
                           "strategy": "tensor", "symmetric": true, "type": "float"}),
                    json!({"dynamic": false, "group_size": null, "num_bits": 8,
                           "observer": "static_minmax", "strategy": "tensor",
                           "symmetric": true, "type": "float"}),
                ),
            )
        };
    }
    fn work_bytes(&self, _s: HfScheme, weight: Option<&TensorEntry>, n: u64) -> u64 {
        // rowwise codes stream from a plain mapped source (two row blocks); per-tensor ones,
        // or from another source, one byte each
        if self.per_row && weight.is_some_and(streams) {
            STREAMED_BYTES
        } else {
            n
        }
    }
    fn detect(&self, w: &Weights<'_>, id: TensorId) -> Option<Result<Params>> {
        let (wt, scale) = fp8_parts(w, id)?;
        let wt = match wt {
            Ok(t) => t,
            Err(e) => return Some(Err(e)),
        };
        let rows = wt.shape.first().copied().unwrap_or(1);
        let fits = match scale.shape.as_slice() {
            [] | [1] | [1, 1] => !self.per_row,
            [r, 1] => self.per_row && *r == rows && rows > 1,
            _ => false,
        };
        fits.then_some(Ok(Params::NONE))
    }
    fn dequant(&self, _s: HfScheme, w: &Weights<'_>, id: TensorId) -> Result<Vec<f32>> {
        let wt = w.part(id, Part::Weight).expect("checked by detect");
        let scale = w.part(id, Part::WeightScale).expect("checked by detect");
        let s = w.to_f32(scale)?;
        let mut out = w.to_f32(wt)?;
        let k = wt.shape.last().copied().unwrap_or(1).max(1) as usize;
        check_finite_scales(w, scale, &s)?;
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
}

/// The `weight` and `weight_scale` of an FP8 module (`None`: not one: no scale, or a packed or
/// MLX layout), the weight an error when its dtype is not FP8.
pub(super) fn fp8_parts<'a>(
    w: &Weights<'a>,
    id: TensorId,
) -> Option<(Result<&'a TensorEntry>, &'a TensorEntry)> {
    let wt = w.part(id, Part::Weight)?;
    let scale = w.part(id, Part::WeightScale)?;
    if wt.dtype == DType::U32
        || w.part(id, Part::Scales).is_some()
        || w.part(id, Part::WeightPacked).is_some()
    {
        return None;
    }
    if wt.dtype != DType::F8_E4M3 && wt.dtype != DType::F8_E5M2 {
        return Some((
            Err(w.bad(
                wt,
                format!(
                    "has a weight_scale but dtype {} (expected F8_E4M3)",
                    wt.dtype
                ),
            )),
            scale,
        ));
    }
    Some((Ok(wt), scale))
}
