//! The tensors of one linear under the integer schemes (compressed-tensors `pack-quantized`:
//! llm-compressor's `W4A16`, `W4A16_ASYM`, `W8A16` and per-channel variants): `weight_packed`
//! (I32 words of 8 INT4 or 4 INT8 codes), `weight_scale` (`[rows, groups]`), `weight_shape`
//! and, asymmetric, `weight_zero_point`. The arithmetic is `qforge_codecs::int4`'s; GPTQ codes
//! ([`PrecomputedInt4`]) and AWQ scales ([`WeightTransform`]) from calibration come in here.

use qforge_codecs::int4::{self, Int4Config};
use qforge_codecs::DType;

use super::fp4::Source;
use super::{
    checked_rows, codec_err, hf_module, push_i32s, shape2, PrecomputedInt4, WeightTransform,
};
use qforge_convert::export::{encode_float, OutTensor, Producer};
use qforge_convert::names::TensorId;
use qforge_convert::write::safetensors::TensorSpec;
use qforge_convert::{Error, Result};

/// The output tensors of quantized linear `id` with codes from `cfg4` (or `pre`, calibrated
/// GPTQ codes; weights through `transform` first, AWQ); scales are stored in `scale_dtype`.
#[allow(clippy::too_many_arguments)]
pub(super) fn tensors<'a>(
    src: Source<'a>,
    id: TensorId,
    module: &str,
    cfg4: Int4Config,
    symmetric: bool,
    pre: Option<&'a dyn PrecomputedInt4>,
    transform: Option<&'a dyn WeightTransform>,
    scale_dtype: DType,
) -> Result<Vec<OutTensor<'a>>> {
    let Source {
        ckpt,
        rope,
        numerics,
        ..
    } = src;
    let (rows, k) = shape2(ckpt, id);
    let scale_out = move |s: &[f32], buf: &mut Vec<u8>| {
        encode_float(s, scale_dtype, buf).expect("float dtype checked");
    };
    let mut tensors = Vec::new();
    let gs = int4::check_group(k, cfg4.group_size).map_err(|e| codec_err(ckpt, id, e))?;
    let groups = k / gs;
    // codes per 32-bit word: 8 for INT4, 4 for INT8
    let per_word = 32 / usize::from(cfg4.bits);
    let bits = cfg4.bits;
    let quant = move || -> Result<int4::CtPacked> {
        if let Some(p) = pre {
            let bad = |reason: String| Error::BadQuantization {
                path: ckpt.path.clone(),
                tensor: hf_module(id),
                reason,
            };
            let t = p.int4(&hf_module(id)).map_err(bad)?;
            if (t.rows, t.cols, t.group_size, t.bits) != (rows, k, gs, bits)
                || t.zero_points.is_some()
            {
                return Err(bad(format!(
                    "calibrated codes are {}-bit {}x{} in groups of {}, the scheme \
                     wants {bits}-bit {rows}x{k} in groups of {gs} (symmetric)",
                    t.bits, t.rows, t.cols, t.group_size
                )));
            }
            return int4::pack_compressed_tensors(&t).map_err(|e| codec_err(ckpt, id, e));
        }
        let mut v = checked_rows(ckpt, id, rope, k, numerics)?;
        if let Some(tr) = transform.filter(|t| t.touches(id)) {
            tr.apply(id, &mut v, k)
                .map_err(|reason| Error::BadQuantization {
                    path: ckpt.path.clone(),
                    tensor: hf_module(id),
                    reason,
                })?;
        }
        let t = int4::quantize_int4(&v, k, &cfg4).map_err(|e| codec_err(ckpt, id, e))?;
        int4::pack_compressed_tensors(&t).map_err(|e| codec_err(ckpt, id, e))
    };
    tensors.push(OutTensor {
        spec: TensorSpec {
            name: format!("{module}.weight_packed"),
            dtype: DType::I32,
            shape: vec![rows as u64, k.div_ceil(per_word) as u64],
        },
        produce: Producer::Whole(Box::new(move |buf: &mut Vec<u8>| {
            push_i32s(&quant()?.weight_packed, buf);
            Ok(())
        })),
    });
    tensors.push(OutTensor {
        spec: TensorSpec {
            name: format!("{module}.weight_scale"),
            dtype: scale_dtype,
            shape: vec![rows as u64, groups as u64],
        },
        produce: Producer::Whole(Box::new(move |buf: &mut Vec<u8>| {
            scale_out(&quant()?.weight_scale, buf);
            Ok(())
        })),
    });
    tensors.push(OutTensor {
        spec: TensorSpec {
            name: format!("{module}.weight_shape"),
            dtype: DType::I64,
            shape: vec![2],
        },
        produce: Producer::Whole(Box::new(move |buf: &mut Vec<u8>| {
            buf.extend((rows as i64).to_le_bytes());
            buf.extend((k as i64).to_le_bytes());
            Ok(())
        })),
    });
    if !symmetric {
        tensors.push(OutTensor {
            spec: TensorSpec {
                name: format!("{module}.weight_zero_point"),
                dtype: DType::I32,
                shape: vec![rows.div_ceil(per_word) as u64, groups as u64],
            },
            produce: Producer::Whole(Box::new(move |buf: &mut Vec<u8>| {
                let p = quant()?;
                push_i32s(p.weight_zero_point.as_deref().unwrap_or(&[]), buf);
                Ok(())
            })),
        });
    }
    Ok(tensors)
}
