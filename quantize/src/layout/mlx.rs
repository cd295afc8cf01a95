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
//!
//! `--layout mlx` takes an integer `--scheme` (`int4-g<N>`, `int8-g<N>`, N = 32, 64, 128) and
//! writes [`MLX`] with its bits and group size ([`from_options`]); MLX's affine codes are always
//! asymmetric.

use qforge_codecs::int4::Int4Arith;
use qforge_codecs::mlx;
use qforge_codecs::DType;
use serde_json::{json, Value};

use super::fp4::Source;
use super::{codec_err, shape2, Cx, HfQuantOptions, HfScheme, LayoutScheme, Params};
use crate::dequant::Weights;
use qforge_convert::checkpoint::TensorEntry;
use qforge_convert::export::{encode_float, OutTensor, Producer};
use qforge_convert::names::Part;
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

/// mlx-lm's affine layout: parameters `bits` (4 or 8) and `group_size` (32, 64 or 128).
pub static MLX: Mlx = Mlx;

/// The MLX affine layout.
#[derive(Debug)]
pub struct Mlx;

/// The MLX scheme of a `--layout mlx` run: the integer `--scheme`'s bits and group size, or
/// why the options do not make one.
pub(super) fn from_options(opts: &HfQuantOptions) -> std::result::Result<HfScheme, String> {
    let p = opts.scheme.integer_codes();
    match p {
        Some(Params {
            bits: bits @ (4 | 8),
            group_size: Some(g @ (32 | 64 | 128)),
            ..
        }) if opts.precomputed_int4.is_none() && opts.weight_transform.is_none() => {
            Ok(HfScheme::new(
                &MLX,
                Params {
                    bits,
                    group_size: Some(g),
                    symmetric: false,
                },
            ))
        }
        _ => Err(
            "the mlx layout holds MLX affine weights: --scheme int4-g<N> or int8-g<N> \
                  with N = 32, 64 or 128 (round to nearest, no calibration results)"
                .into(),
        ),
    }
}

/// `(bits, group_size)` of an MLX scheme.
fn bits_group(s: HfScheme) -> (u8, usize) {
    (s.params.bits, s.params.group_size.unwrap_or(0))
}

impl LayoutScheme for Mlx {
    fn id(&self) -> &'static str {
        "mlx"
    }
    fn name(&self, s: HfScheme) -> String {
        let (bits, g) = bits_group(s);
        format!("mlx-{bits}bit-g{g}")
    }
    fn check_options(&self, _s: HfScheme, _opts: &HfQuantOptions) -> super::ModuleCheck {
        // checked by from_options
        Ok(())
    }
    fn also_quantizes(&self, id: TensorId) -> bool {
        matches!(id, TensorId::TokenEmbedding | TensorId::Output)
    }
    fn leaves(&self, s: HfScheme, id: TensorId, cols: usize) -> bool {
        // mlx-lm leaves modules whose rows do not split into whole groups unquantized
        !quantizes(id, cols, bits_group(s).1)
    }
    fn tensors<'a>(
        &self,
        s: HfScheme,
        cx: &Cx<'a>,
        id: TensorId,
        module: &str,
    ) -> Result<Vec<OutTensor<'a>>> {
        let (bits, g) = bits_group(s);
        Ok(tensors(cx.src, id, module, bits, g, cx.opts.dtype))
    }
    fn write_config(&self, s: HfScheme, _o: &HfQuantOptions, _nc: &[String], c: &mut Value) {
        let (bits, g) = bits_group(s);
        // mlx_lm/utils.py save_config: quantization_config is a copy of quantization
        c["quantization"] = config(bits, g);
        c["quantization_config"] = config(bits, g);
    }
    fn detect(&self, w: &Weights<'_>, id: TensorId) -> Option<Result<Params>> {
        let wt = w.part(id, Part::Weight)?;
        if wt.dtype != DType::U32 && w.part(id, Part::Scales).is_none() {
            return None;
        }
        Some(detect_affine(w, id, wt))
    }
    /// mlx-lm affine weights as `mx.dequantize` computes them, `r(r(s·q) + b)` in the scales'
    /// dtype (`qforge_codecs::mlx::dequantize_mlx_affine`).
    fn dequant(&self, s: HfScheme, w: &Weights<'_>, id: TensorId) -> Result<Vec<f32>> {
        let (bits, group) = bits_group(s);
        let wt = w.part(id, Part::Weight).expect("checked by detect");
        let scales = w.part(id, Part::Scales).expect("checked by detect");
        let biases = w.part(id, Part::Biases).expect("checked by detect");
        let shape = w.config.expected_shape(id);
        let m = mlx::MlxAffine {
            rows: shape[0] as usize,
            cols: shape[1] as usize,
            bits,
            group_size: group,
            packed: w
                .bytes(wt)?
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            scales: w.to_f32(scales)?,
            biases: w.to_f32(biases)?,
        };
        let arith = if scales.dtype == DType::BF16 {
            Int4Arith::Bf16
        } else {
            Int4Arith::F32
        };
        mlx::dequantize_mlx_affine(&m, arith).map_err(|source| qforge_convert::Error::Codec {
            path: w.path.clone(),
            tensor: wt.name.clone(),
            source,
        })
    }
}

/// mlx-lm affine storage: U32 `weight` `[rows, cols·bits/32]` with `scales` and `biases`
/// `[rows, cols/group]` in one float dtype; bits and group size follow from the shapes.
fn detect_affine(w: &Weights<'_>, id: TensorId, wt: &TensorEntry) -> Result<Params> {
    let scales = w.required(id, Part::Scales, wt)?;
    let biases = w.required(id, Part::Biases, wt)?;
    let [rows, cols] = match w.config.expected_shape(id).as_slice() {
        [r, c] => [*r, *c],
        _ => return Err(w.bad(wt, "MLX weights must be 2-D".into())),
    };
    let (words, groups) = match (wt.shape.as_slice(), scales.shape.as_slice()) {
        ([r, wd], [r2, g]) if *r == rows && *r2 == rows && *wd > 0 && *g > 0 => (*wd, *g),
        _ => {
            return Err(w.bad(
                wt,
                format!(
                    "MLX weight {:?} / scales {:?} do not fit [{rows}, {cols}]",
                    wt.shape, scales.shape
                ),
            ))
        }
    };
    let bits = (words * 32).checked_div(cols).unwrap_or(0);
    let ok = wt.dtype == DType::U32
        && matches!(scales.dtype, DType::BF16 | DType::F16 | DType::F32)
        && biases.dtype == scales.dtype
        && biases.shape == scales.shape
        && matches!(bits, 4 | 8)
        && words * 32 == cols * bits
        && cols % groups == 0
        && matches!(cols / groups, 32 | 64 | 128);
    if !ok {
        return Err(w.bad(
            wt,
            format!(
                "MLX weight {} {:?}, scales {} {:?}, biases {} {:?} do not make a 4/8-bit \
                 affine [{rows}, {cols}] in groups of 32/64/128",
                wt.dtype, wt.shape, scales.dtype, scales.shape, biases.dtype, biases.shape
            ),
        ));
    }
    Ok(Params {
        bits: bits as u8,
        group_size: Some((cols / groups) as usize),
        symmetric: false,
    })
}
