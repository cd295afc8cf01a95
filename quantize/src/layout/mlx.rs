//! mlx-lm's quantized layout (`mlx_lm.convert -q`, mlx_lm/utils.py `quantize_model`, read at
//! mlx-lm's main branch for mlx 0.32): every module with `to_quantized` (`nn.Linear` and
//! `nn.Embedding`, so the token embedding and an untied LM head too, norms never) whose rows
//! split into whole groups becomes `weight` (U32, `[rows, cols·bits/32]`), `scales` and
//! `biases` (model dtype, `[rows, cols/group_size]`) under its HF module name; a module whose
//! row length is not a multiple of the group size stays in the model dtype, as mlx-lm's
//! `wrapped_predicate` leaves it. `config.json` gets `quantization` = `quantization_config` =
//! `{"bits", "group_size", "mode": "affine"}` (`save_config`), which `mlx_lm.utils.load_model`
//! reads to swap in `QuantizedLinear` / `QuantizedEmbedding` wherever `{module}.scales`
//! exists. The arithmetic is `qforge_codecs::mlx`'s (mlx's CPU kernel, bit for bit).

use qforge_codecs::mlx;
use qforge_codecs::DType;
use serde_json::{json, Value};

use super::fp4::Source;
use super::{codec_err, shape2};
use qforge_convert::export::{encode_float, OutTensor, Producer};
use qforge_convert::names::TensorId;
use qforge_convert::write::safetensors::TensorSpec;
use qforge_convert::Result;

/// Whether mlx-lm quantizes role `id` (a linear, the embedding or the LM head) of row length
/// `k` with groups of `group`.
pub(super) fn quantizes(id: TensorId, k: usize, group: usize) -> bool {
    let module = matches!(id, TensorId::TokenEmbedding | TensorId::Output)
        || matches!(id, TensorId::Layer { kind, .. } if kind.is_linear());
    module && group > 0 && k % group == 0
}

/// The `quantization` (and `quantization_config`) object of config.json.
pub fn config(bits: u8, group_size: usize) -> Value {
    json!({"bits": bits, "group_size": group_size, "mode": "affine"})
}

/// The output tensors of quantized module `id`: `weight`, `scales`, `biases`.
pub(super) fn tensors<'a>(
    src: Source<'a>,
    id: TensorId,
    module: &str,
    bits: u8,
    group: usize,
    model_dtype: DType,
) -> Vec<OutTensor<'a>> {
    let (rows, k) = shape2(src.ckpt, id);
    let quant = move || -> Result<mlx::MlxAffine> {
        let v = src.rows(id)?;
        mlx::quantize_mlx_affine(&v, k, bits, group, src.arith)
            .map_err(|e| codec_err(src.ckpt, id, e))
    };
    let words = k * usize::from(bits) / 32;
    let mut out = vec![OutTensor {
        spec: TensorSpec {
            name: format!("{module}.weight"),
            dtype: DType::U32,
            shape: vec![rows as u64, words as u64],
        },
        produce: Producer::Whole(Box::new(move |buf: &mut Vec<u8>| {
            buf.extend(quant()?.packed.iter().flat_map(|w| w.to_le_bytes()));
            Ok(())
        })),
    }];
    for (part, biases) in [("scales", false), ("biases", true)] {
        out.push(OutTensor {
            spec: TensorSpec {
                name: format!("{module}.{part}"),
                dtype: model_dtype,
                shape: vec![rows as u64, (k / group) as u64],
            },
            produce: Producer::Whole(Box::new(move |buf: &mut Vec<u8>| {
                let m = quant()?;
                let v = if biases { &m.biases } else { &m.scales };
                encode_float(v, model_dtype, buf).expect("float dtype checked");
                Ok(())
            })),
        });
    }
    out
}
