//! The compressed-tensors tensors of one linear under llm-compressor's `FP8_BLOCK` preset
//! (quantization/quant_scheme.py `FP8_BLOCK`: FP8 E4M3 weights with one scale per 128×128
//! block, `strategy: block`, `block_structure: [128, 128]`; activations FP8 dynamic per token
//! group of 128 at run time). compressed-tensors' `FloatQuantizationCompressor`
//! (compressors/quantized_compressors/fp8_quantized.py) writes `weight` (F8_E4M3, the full
//! `[rows, cols]` shape) and `weight_scale` (model dtype, `[ceil(rows/128), ceil(cols/128)]`,
//! partial edge blocks as `maybe_pad_tensor_for_block_quant` makes them). The arithmetic is
//! `qforge_codecs::fp8_ct`'s (llm-compressor's: `W / scale` rounded to the model dtype
//! before the FP8 cast).

use qforge_codecs::fp8_ct::{self, CT_BLOCK};
use qforge_codecs::int4::Int4Arith;
use qforge_codecs::DType;
use serde_json::{json, Value};

use super::fp4::Source;
use super::ModuleMemo;
use super::{
    codec_err, compressed_tensors_config, shape2, ActEmulation, Cx, HfQuantOptions, HfScheme,
    LayoutScheme, Params,
};
use crate::dequant::{check_finite_scales, Weights};
use qforge_convert::checkpoint::Checkpoint;
use qforge_convert::export::{encode_float, OutTensor, Producer};
use qforge_convert::names::Part;
use qforge_convert::names::TensorId;
use qforge_convert::write::safetensors::TensorSpec;
use qforge_convert::Result;

/// The scale grid of a `[rows, cols]` weight: `[ceil(rows/128), ceil(cols/128)]`.
pub fn scale_shape(rows: usize, cols: usize) -> [usize; 2] {
    [rows.div_ceil(CT_BLOCK[0]), cols.div_ceil(CT_BLOCK[1])]
}

/// The output tensors of quantized linear `id`; scales are stored in `scale_dtype` (the model
/// dtype, in which they are exact).
pub(super) fn tensors<'a>(
    src: Source<'a>,
    id: TensorId,
    module: &str,
    scale_dtype: DType,
) -> Vec<OutTensor<'a>> {
    let (rows, k) = shape2(src.ckpt, id);
    let quant = ModuleMemo::new(2, move || -> Result<fp8_ct::Fp8Blocks> {
        let v = src.rows(id)?;
        fp8_ct::quantize_fp8_block_ct(&v, k, CT_BLOCK, src.arith)
            .map_err(|e| codec_err(src.ckpt, id, e))
    });
    let q2 = quant.clone();
    let [sr, sc] = scale_shape(rows, k);
    vec![
        OutTensor {
            spec: TensorSpec {
                name: format!("{module}.weight"),
                dtype: DType::F8_E4M3,
                shape: vec![rows as u64, k as u64],
            },
            produce: Producer::Whole(Box::new(move |buf: &mut Vec<u8>| {
                buf.extend_from_slice(&q2.get()?.codes);
                Ok(())
            })),
        },
        OutTensor {
            spec: TensorSpec {
                name: format!("{module}.weight_scale"),
                dtype: scale_dtype,
                shape: vec![sr as u64, sc as u64],
            },
            produce: Producer::Whole(Box::new(move |buf: &mut Vec<u8>| {
                encode_float(&quant.get()?.scales, scale_dtype, buf).expect("float dtype checked");
                Ok(())
            })),
        },
    ]
}

/// FP8 E4M3 weights with one scale per 128×128 block, activations FP8 dynamic per token group
/// of 128 (compressed-tensors `strategy: block`, llm-compressor `FP8_BLOCK`). Rounding:
/// llm-compressor's (`W / scale` in the model dtype, then the FP8 cast; `qforge_codecs::fp8_ct`).
pub static FP8_BLOCK: Fp8Block = Fp8Block;

/// The block-FP8 layout.
#[derive(Debug)]
pub struct Fp8Block;

impl LayoutScheme for Fp8Block {
    fn id(&self) -> &'static str {
        "fp8-block"
    }
    fn names(&self) -> &'static [&'static str] {
        &["fp8-block"]
    }
    fn presets(&self) -> &'static [(&'static str, &'static str, bool)] {
        &[("FP8_BLOCK", "fp8-block", false)]
    }
    fn tensors<'a>(
        &self,
        _s: HfScheme,
        cx: &Cx<'a>,
        id: TensorId,
        module: &str,
    ) -> Result<Vec<OutTensor<'a>>> {
        Ok(tensors(cx.src, id, module, cx.scale_dtype))
    }
    fn write_config(&self, _s: HfScheme, opts: &HfQuantOptions, nc: &[String], config: &mut Value) {
        // quantization/quant_scheme.py FP8_BLOCK as QuantizationArgs serializes it
        config["quantization_config"] = compressed_tensors_config(
            opts,
            nc,
            (
                "float-quantized",
                json!({"block_structure": [128, 128], "dynamic": false, "group_size": null,
                       "num_bits": 8, "strategy": "block", "symmetric": true, "type": "float"}),
                json!({"dynamic": true, "group_size": 128, "num_bits": 8, "strategy": "group",
                       "symmetric": true, "type": "float"}),
            ),
        );
    }
    fn detect(&self, w: &Weights<'_>, id: TensorId) -> Option<Result<Params>> {
        let (wt, scale) = super::fp8::fp8_parts(w, id)?;
        let wt = match wt {
            Ok(t) => t,
            Err(e) => return Some(Err(e)),
        };
        let grid = match wt.shape.as_slice() {
            [r, c] => scale_shape(*r as usize, *c as usize).map(|x| x as u64),
            _ => return None,
        };
        (scale.shape == grid).then_some(Ok(Params::NONE))
    }
    /// Block FP8: `f8(q) · s` in `f32` (`qforge_codecs::fp8_ct::dequantize_fp8_block_ct` with
    /// `f32` arithmetic; exact, so its BF16 rounding is compressed-tensors' BF16 result).
    fn dequant(&self, _s: HfScheme, w: &Weights<'_>, id: TensorId) -> Result<Vec<f32>> {
        let wt = w.part(id, Part::Weight).expect("checked by detect");
        let scale = w.part(id, Part::WeightScale).expect("checked by detect");
        let scales = w.to_f32(scale)?;
        check_finite_scales(w, scale, &scales)?;
        let [rows, cols] = match wt.shape.as_slice() {
            [r, c] => [*r as usize, *c as usize],
            _ => return Err(w.bad(wt, "block FP8 weights must be 2-D".into())),
        };
        let b = fp8_ct::Fp8Blocks {
            rows,
            cols,
            block: CT_BLOCK,
            codes: w.bytes(wt)?.into_owned(),
            scales,
        };
        fp8_ct::dequantize_fp8_block_ct(&b, Int4Arith::F32).map_err(|source| {
            qforge_convert::Error::Codec {
                path: w.path.clone(),
                tensor: wt.name.clone(),
                source,
            }
        })
    }
    /// vLLM's activations for block FP8 weights: dynamic FP8 per token group of 128.
    fn act_emulation(
        &self,
        _s: HfScheme,
        _ckpt: &Checkpoint,
        _id: TensorId,
        w8a8: Option<Option<f32>>,
    ) -> Result<ActEmulation> {
        Ok(match w8a8 {
            Some(_) => ActEmulation::Fp8Group,
            None => ActEmulation::None,
        })
    }
}
