//! The compressed-tensors FP4 tensors of one quantized linear: `nvfp4-pack-quantized`
//! (`weight_packed` U8, `weight_scale` F8_E4M3 per 16, `weight_global_scale` F32 `[1]`) and
//! `mxfp4-pack-quantized` (`weight_packed` U8, `weight_scale` U8 E8M0 per 32), as
//! compressed-tensors' `NVFP4PackedCompressor` / `MXFP4PackedCompressor`
//! (compressors/nvfp4/base.py, compressors/mxfp4/base.py) write them. The arithmetic is
//! `qforge_codecs::fp4`'s (llm-compressor's, bit for bit).
//!
//! This module holds what the two FP4 layouts share (the packed tensors, their shape checks,
//! the writers' [`Source`]) and the MXFP4 layouts; NVFP4's own is its module, `nvfp4`.

use qforge_codecs::fp4;
use qforge_codecs::int4::Int4Arith;
use qforge_codecs::DType;

use serde_json::{json, Value};

use super::ModuleMemo;
use super::{
    checked_rows, codec_err, compressed_tensors_config, shape2, Cx, HfQuantOptions, HfScheme,
    LayoutScheme, Params,
};
use crate::dequant::Weights;
use crate::numerics::Numerics;
use qforge_convert::checkpoint::{Checkpoint, TensorEntry};
use qforge_convert::export::{OutTensor, Producer};
use qforge_convert::names::{Part, TensorId};
use qforge_convert::rope::RopeLayout;
use qforge_convert::write::safetensors::TensorSpec;
use qforge_convert::Result;

/// How the writers read a linear: the source, its RoPE order, the numeric checks and the
/// model dtype's arithmetic (shared by the FP4, FP8-block and MLX writers).
#[derive(Clone, Copy)]
pub struct Source<'a> {
    /// The checkpoint read.
    pub ckpt: &'a Checkpoint,
    /// The RoPE row order of the output.
    pub rope: Option<RopeLayout>,
    /// The bad-weight checks.
    pub numerics: Numerics,
    /// The model dtype's arithmetic.
    pub arith: Int4Arith,
}

impl Source<'_> {
    /// The weight in HF row order, rounded to the model dtype (what llm-compressor sees).
    pub(super) fn rows(&self, id: TensorId) -> Result<Vec<f32>> {
        let (_, k) = shape2(self.ckpt, id);
        let mut v = checked_rows(self.ckpt, id, self.rope, k, self.numerics)?;
        if self.arith == Int4Arith::Bf16 {
            for x in &mut v {
                *x = half::bf16::from_f32(*x).to_f32();
            }
        }
        Ok(v)
    }
}

/// `weight_packed` (U8, two E2M1 codes a byte) and `weight_scale` (`scale_dtype`, one per
/// `group` columns) of quantized linear `id`, from `quant` (run once for both, [`ModuleMemo`]).
pub(super) fn packed_tensors<'a, Q>(
    src: Source<'a>,
    id: TensorId,
    module: &str,
    (group, scale_dtype): (usize, DType),
    quant: Q,
) -> Vec<OutTensor<'a>>
where
    Q: Fn() -> Result<fp4::Fp4Packed> + 'a,
{
    let (rows, k) = shape2(src.ckpt, id);
    let quant = ModuleMemo::new(2, quant);
    let q2 = quant.clone();
    vec![
        OutTensor {
            spec: TensorSpec {
                name: format!("{module}.weight_packed"),
                dtype: DType::U8,
                shape: vec![rows as u64, (k / 2) as u64],
            },
            produce: Producer::Whole(Box::new(move |buf: &mut Vec<u8>| {
                buf.extend_from_slice(&q2.get()?.packed);
                Ok(())
            })),
        },
        OutTensor {
            spec: TensorSpec {
                name: format!("{module}.weight_scale"),
                dtype: scale_dtype,
                shape: vec![rows as u64, (k / group) as u64],
            },
            produce: Producer::Whole(Box::new(move |buf: &mut Vec<u8>| {
                buf.extend_from_slice(&quant.get()?.scales);
                Ok(())
            })),
        },
    ]
}

/// Check before any work that every row of quantized role `id` splits into whole FP4 groups of
/// `g`.
pub(super) fn check_columns(ckpt: &Checkpoint, id: TensorId, g: usize) -> Result<()> {
    let (_, k) = shape2(ckpt, id);
    if k % g == 0 {
        Ok(())
    } else {
        Err(qforge_convert::Error::BadQuantization {
            path: ckpt.path.clone(),
            tensor: super::hf_module(id),
            reason: format!(
                "rows of {k} columns do not split into groups of {g} (ignore this module)"
            ),
        })
    }
}

/// The `weight_packed` and `weight_scale` of an FP4 module whose scales have dtype
/// `scale_dtype` (`None`: not one), checked against the config's `[rows, cols]` in groups of
/// `group`.
pub(super) fn fp4_parts<'a>(
    w: &Weights<'a>,
    id: TensorId,
    scale_dtype: DType,
    group: u64,
) -> Option<Result<(&'a TensorEntry, &'a TensorEntry)>> {
    let packed = w
        .part(id, Part::WeightPacked)
        .filter(|p| p.dtype == DType::U8)?;
    let scale = w
        .part(id, Part::WeightScale)
        .filter(|s| s.dtype == scale_dtype)?;
    let [rows, cols] = match w.config.expected_shape(id).as_slice() {
        [r, c] => [*r, *c],
        _ => return Some(Err(w.bad(packed, "FP4 weights must be 2-D".into()))),
    };
    if cols % group != 0 || packed.shape != [rows, cols / 2] || scale.shape != [rows, cols / group]
    {
        return Some(Err(w.bad(
            packed,
            format!(
                "FP4 weight_packed {:?} / weight_scale {:?} do not fit [{rows}, {cols}] in \
                 groups of {group}",
                packed.shape, scale.shape
            ),
        )));
    }
    Some(Ok((packed, scale)))
}

/// The packed codes and scales of an FP4 module (shapes checked by [`fp4_parts`]).
pub(super) fn fp4_packed(w: &Weights<'_>, id: TensorId) -> Result<fp4::Fp4Packed> {
    let packed = w.part(id, Part::WeightPacked).expect("checked by detect");
    let scale = w.part(id, Part::WeightScale).expect("checked by detect");
    let shape = w.config.expected_shape(id);
    Ok(fp4::Fp4Packed {
        rows: shape[0] as usize,
        cols: shape[1] as usize,
        packed: w.bytes(packed)?.into_owned(),
        scales: w.bytes(scale)?.into_owned(),
    })
}

/// FP4 E2M1 weights with an E8M0 scale per 32 (compressed-tensors `mxfp4-pack-quantized`,
/// llm-compressor `MXFP4`: activations dynamic MXFP4 at run time). Rounding: llm-compressor's
/// (`qforge_codecs::fp4::quantize_mxfp4_ct`).
pub static MXFP4: Mxfp4 = Mxfp4 { a16: false };

/// [`MXFP4`]'s weights with 16-bit activations (llm-compressor `MXFP4A16`).
pub static MXFP4A16: Mxfp4 = Mxfp4 { a16: true };

/// The MXFP4 layouts.
#[derive(Debug)]
pub struct Mxfp4 {
    /// 16-bit activations (no `input_activations` in the config)
    a16: bool,
}

impl LayoutScheme for Mxfp4 {
    fn id(&self) -> &'static str {
        if self.a16 {
            "mxfp4a16"
        } else {
            "mxfp4"
        }
    }
    fn names(&self) -> &'static [&'static str] {
        if self.a16 {
            &["mxfp4a16"]
        } else {
            &["mxfp4"]
        }
    }
    fn presets(&self) -> &'static [(&'static str, &'static str, bool)] {
        if self.a16 {
            &[("MXFP4A16", "mxfp4a16", false)]
        } else {
            &[("MXFP4", "mxfp4", false)]
        }
    }
    fn storage_name(&self, _s: HfScheme) -> String {
        "mxfp4".into()
    }
    fn check_module(
        &self,
        _s: HfScheme,
        _o: &HfQuantOptions,
        ckpt: &Checkpoint,
        id: TensorId,
    ) -> Result<()> {
        check_columns(ckpt, id, fp4::MXFP4_GROUP)
    }
    fn tensors<'a>(
        &self,
        _s: HfScheme,
        cx: &Cx<'a>,
        id: TensorId,
        module: &str,
    ) -> Result<Vec<OutTensor<'a>>> {
        let src = cx.src;
        let (_, k) = shape2(src.ckpt, id);
        let quant = move || -> Result<fp4::Fp4Packed> {
            let v = src.rows(id)?;
            fp4::quantize_mxfp4_ct(&v, k, src.arith).map_err(|e| codec_err(src.ckpt, id, e))
        };
        Ok(packed_tensors(
            src,
            id,
            module,
            (fp4::MXFP4_GROUP, DType::U8),
            quant,
        ))
    }
    fn write_config(&self, _s: HfScheme, opts: &HfQuantOptions, nc: &[String], config: &mut Value) {
        // quantization/quant_scheme.py MXFP4 / MXFP4A16 as QuantizationArgs serializes them
        // (zp_dtype is dropped for symmetric args, scale_dtype is kept)
        let args = json!({"dynamic": false, "group_size": 32, "num_bits": 4,
                          "scale_dtype": "torch.uint8", "strategy": "group", "symmetric": true,
                          "type": "float"});
        let input = if self.a16 {
            Value::Null
        } else {
            json!({"dynamic": true, "group_size": 32, "num_bits": 4,
                   "scale_dtype": "torch.uint8", "strategy": "group", "symmetric": true,
                   "type": "float"})
        };
        config["quantization_config"] =
            compressed_tensors_config(opts, nc, ("mxfp4-pack-quantized", args, input));
    }
    fn detect(&self, w: &Weights<'_>, id: TensorId) -> Option<Result<Params>> {
        if self.a16 {
            // the same tensors as MXFP4: read back as that
            return None;
        }
        Some(fp4_parts(w, id, DType::U8, fp4::MXFP4_GROUP as u64)?.map(|_| Params::NONE))
    }
    /// MXFP4 in `f32` as compressed-tensors computes it before the cast to the model dtype
    /// (`qforge_codecs::fp4::dequantize_mxfp4_ct` with `f32` arithmetic).
    fn dequant(&self, _s: HfScheme, w: &Weights<'_>, id: TensorId) -> Result<Vec<f32>> {
        let p = fp4_packed(w, id)?;
        fp4::dequantize_mxfp4_ct(&p, Int4Arith::F32).map_err(|source| {
            qforge_convert::Error::Codec {
                path: w.path.clone(),
                tensor: w
                    .part(id, Part::WeightPacked)
                    .expect("checked")
                    .name
                    .clone(),
                source,
            }
        })
    }
}
