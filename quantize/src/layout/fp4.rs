//! The compressed-tensors FP4 tensors of one quantized linear: `nvfp4-pack-quantized`
//! (`weight_packed` U8, `weight_scale` F8_E4M3 per 16, `weight_global_scale` F32 `[1]`) and
//! `mxfp4-pack-quantized` (`weight_packed` U8, `weight_scale` U8 E8M0 per 32), as
//! compressed-tensors' `NVFP4PackedCompressor` / `MXFP4PackedCompressor`
//! (compressors/nvfp4/base.py, compressors/mxfp4/base.py) write them. The arithmetic is
//! `qforge_codecs::fp4`'s (llm-compressor's, bit for bit).
//!
//! NVFP4's global scale is shared by the layers vLLM fuses (llm-compressor
//! observers/helpers.py `FUSED_LAYER_NAMES`: q/k/v and gate/up): it is made from the amax of
//! every quantized member of the group, so each member reads its siblings once more.

use qforge_codecs::fp4;
use qforge_codecs::int4::Int4Arith;
use qforge_codecs::DType;

use super::{checked_rows, codec_err, shape2, HfScheme};
use crate::numerics::Numerics;
use qforge_convert::checkpoint::Checkpoint;
use qforge_convert::export::{OutTensor, Producer};
use qforge_convert::names::{LayerTensor, TensorId};
use qforge_convert::rope::RopeLayout;
use qforge_convert::write::safetensors::TensorSpec;
use qforge_convert::Result;

/// The layers whose NVFP4 global scale llm-compressor fuses with `id`'s (itself included).
pub(super) fn fused_group(id: TensorId) -> Vec<TensorId> {
    let TensorId::Layer { index, kind } = id else {
        return vec![id];
    };
    let kinds: &[LayerTensor] = match kind {
        LayerTensor::Q | LayerTensor::K | LayerTensor::V => {
            &[LayerTensor::Q, LayerTensor::K, LayerTensor::V]
        }
        LayerTensor::Gate | LayerTensor::Up => &[LayerTensor::Gate, LayerTensor::Up],
        _ => return vec![id],
    };
    kinds
        .iter()
        .map(|&kind| TensorId::Layer { index, kind })
        .collect()
}

/// How the writers read a linear: the source, its RoPE order, the numeric checks and the
/// model dtype's arithmetic (shared by the FP4, FP8-block and MLX writers).
#[derive(Clone, Copy)]
pub(super) struct Source<'a> {
    pub ckpt: &'a Checkpoint,
    pub rope: Option<RopeLayout>,
    pub numerics: Numerics,
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

/// The output tensors of quantized linear `id` under an FP4 `scheme`; `group` is the fused
/// group whose amax makes the NVFP4 global scale (quantized members only).
pub(super) fn tensors<'a>(
    src: Source<'a>,
    id: TensorId,
    module: &str,
    scheme: HfScheme,
    group: Vec<TensorId>,
) -> Vec<OutTensor<'a>> {
    let (rows, k) = shape2(src.ckpt, id);
    let nvfp4 = matches!(scheme, HfScheme::Nvfp4A16 | HfScheme::Nvfp4);
    let gsize = if nvfp4 {
        fp4::NVFP4_GROUP
    } else {
        fp4::MXFP4_GROUP
    };
    let global = move || -> Result<f32> {
        let mut amax = 0f32;
        for &m in &group {
            amax = src.rows(m)?.iter().fold(amax, |a, x| a.max(x.abs()));
        }
        Ok(fp4::nvfp4_global_scale(amax, src.arith))
    };
    let global2 = global.clone();
    let quant = move || -> Result<fp4::Fp4Packed> {
        let v = src.rows(id)?;
        if nvfp4 {
            fp4::quantize_nvfp4(&v, k, global2()?, src.arith)
        } else {
            fp4::quantize_mxfp4_ct(&v, k, src.arith)
        }
        .map_err(|e| codec_err(src.ckpt, id, e))
    };
    let mut out = vec![
        OutTensor {
            spec: TensorSpec {
                name: format!("{module}.weight_packed"),
                dtype: DType::U8,
                shape: vec![rows as u64, (k / 2) as u64],
            },
            produce: Producer::Whole(Box::new({
                let quant = quant.clone();
                move |buf: &mut Vec<u8>| {
                    buf.extend(quant()?.packed);
                    Ok(())
                }
            })),
        },
        OutTensor {
            spec: TensorSpec {
                name: format!("{module}.weight_scale"),
                dtype: if nvfp4 { DType::F8_E4M3 } else { DType::U8 },
                shape: vec![rows as u64, (k / gsize) as u64],
            },
            produce: Producer::Whole(Box::new(move |buf: &mut Vec<u8>| {
                buf.extend(quant()?.scales);
                Ok(())
            })),
        },
    ];
    if nvfp4 {
        out.push(OutTensor {
            spec: TensorSpec {
                name: format!("{module}.weight_global_scale"),
                dtype: DType::F32,
                shape: vec![1],
            },
            produce: Producer::Whole(Box::new(move |buf: &mut Vec<u8>| {
                buf.extend(global()?.to_le_bytes());
                Ok(())
            })),
        });
    }
    out
}

/// Check before any work that every quantized row splits into whole FP4 groups.
pub(super) fn check_columns(scheme: HfScheme, k: usize) -> std::result::Result<(), String> {
    let g = if matches!(scheme, HfScheme::Nvfp4A16 | HfScheme::Nvfp4) {
        fp4::NVFP4_GROUP
    } else {
        fp4::MXFP4_GROUP
    };
    if k % g == 0 {
        Ok(())
    } else {
        Err(format!(
            "rows of {k} columns do not split into groups of {g} (ignore this module)"
        ))
    }
}
