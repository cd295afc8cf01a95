//! The tensors of one linear under the integer schemes (compressed-tensors `pack-quantized`:
//! llm-compressor's `W4A16`, `W4A16_ASYM`, `W8A16` and per-channel variants): `weight_packed`
//! (I32 words of 8 INT4 or 4 INT8 codes), `weight_scale` (`[rows, groups]`), `weight_shape`
//! and, asymmetric, `weight_zero_point`. The arithmetic is `qforge_codecs::int4`'s; GPTQ codes
//! ([`PrecomputedInt4`]) and AWQ scales ([`WeightTransform`]) from calibration come in here.
//! This module is the home of the integer schemes ([`INT`]: `int4-g<N>`, `int8-row`, …).

use qforge_codecs::int4::{self, Int4Config, Int4Scheme};
use qforge_codecs::DType;
use serde_json::{json, Value};

use super::fp4::Source;
use super::ModuleMemo;
use super::{
    checked_rows, codec_err, compressed_tensors_config, hf_module, model_arith, push_i32s,
    run_error, shape2, Cx, HfQuantOptions, HfScheme, LayoutScheme, ModuleCheck, Params,
    PrecomputedInt4, QuantRate, WeightTransform,
};
use crate::dequant::{check_finite_scales, Weights};
use crate::scheme::{CalibMismatch, Calibrated, Calibration, SchemeError};
use qforge_convert::checkpoint::{Checkpoint, TensorEntry};
use qforge_convert::export::{encode_float, OutTensor, Producer};
use qforge_convert::names::Part;
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
    let quant = ModuleMemo::new(
        if symmetric { 2 } else { 3 },
        move || -> Result<int4::CtPacked> {
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
        },
    );
    tensors.push(OutTensor {
        spec: TensorSpec {
            name: format!("{module}.weight_packed"),
            dtype: DType::I32,
            shape: vec![rows as u64, k.div_ceil(per_word) as u64],
        },
        produce: Producer::Whole(Box::new({
            let quant = quant.clone();
            move |buf: &mut Vec<u8>| {
                push_i32s(&quant.get()?.weight_packed, buf);
                Ok(())
            }
        })),
    });
    tensors.push(OutTensor {
        spec: TensorSpec {
            name: format!("{module}.weight_scale"),
            dtype: scale_dtype,
            shape: vec![rows as u64, groups as u64],
        },
        produce: Producer::Whole(Box::new({
            let quant = quant.clone();
            move |buf: &mut Vec<u8>| {
                scale_out(&quant.get()?.weight_scale, buf);
                Ok(())
            }
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
                let p = quant.get()?;
                push_i32s(p.weight_zero_point.as_deref().unwrap_or(&[]), buf);
                Ok(())
            })),
        });
    }
    Ok(tensors)
}

/// INT4 (or INT8) weights, 16-bit activations (compressed-tensors W4A16 / W8A16
/// `pack-quantized`): parameters `bits` (4 or 8), `group_size` (columns per scale; `None` = one
/// scale per row, `strategy: "channel"`) and `symmetric` (`s = amax/7.5`, `amax/127.5` for 8
/// bits) or asymmetric with zero points. Rounding: llm-compressor's (`qforge_codecs::int4`,
/// in the model dtype).
pub static INT: Int = Int;

/// The integer layouts.
#[derive(Debug)]
pub struct Int;

/// The `--scheme` spelling of an integer scheme: `int4-g64`, `int8-row`.
fn int_name(bits: u8, group_size: Option<usize>) -> String {
    match group_size {
        Some(g) => format!("int{bits}-g{g}"),
        None => format!("int{bits}-row"),
    }
}

/// The codec configuration of scheme `s` in a run of `opts`.
fn int4_config(s: HfScheme, opts: &HfQuantOptions) -> Int4Config {
    Int4Config {
        bits: s.params.bits,
        scheme: if s.params.symmetric {
            Int4Scheme::Symmetric
        } else {
            Int4Scheme::Asymmetric
        },
        group_size: s.params.group_size,
        arith: model_arith(opts.dtype),
    }
}

impl LayoutScheme for Int {
    fn id(&self) -> &'static str {
        "int"
    }
    fn names(&self) -> &'static [&'static str] {
        &[
            "int4-g32",
            "int4-g64",
            "int4-g128",
            "int4-row",
            "int8-g32",
            "int8-g64",
            "int8-g128",
            "int8-row",
        ]
    }
    fn presets(&self) -> &'static [(&'static str, &'static str, bool)] {
        // compressed-tensors quantization/quant_scheme.py: group-128 symmetric integer weights
        &[
            ("W4A16", "int4-g128", false),
            ("W4A16_ASYM", "int4-g128", true),
            ("W8A16", "int8-g128", false),
        ]
    }
    fn parse(&self, t: &str, asym: bool) -> Option<std::result::Result<Params, SchemeError>> {
        let int = |bits, group_size| {
            Some(Ok(Params {
                bits,
                group_size,
                symmetric: !asym,
            }))
        };
        match t {
            "int4" => return int(4, Some(int4::DEFAULT_GROUP_SIZE)),
            "int4-row" | "int4-channel" => return int(4, None),
            "int8-row" | "int8-channel" => return int(8, None),
            _ => {}
        }
        for (prefix, bits) in [("int4-g", 4), ("int8-g", 8)] {
            if let Some(g) = t.strip_prefix(prefix) {
                return match g.parse::<usize>().ok().filter(|g| *g > 0) {
                    Some(g) => int(bits, Some(g)),
                    None => Some(Err(SchemeError(
                        "group size must be a positive integer".into(),
                    ))),
                };
            }
        }
        None
    }
    fn name(&self, s: HfScheme) -> String {
        let p = s.params;
        format!(
            "{}{}",
            int_name(p.bits, p.group_size),
            if p.symmetric { "" } else { " --asym" }
        )
    }
    fn storage_name(&self, s: HfScheme) -> String {
        let p = s.params;
        format!(
            "int{}-g{}{}",
            p.bits,
            p.group_size.unwrap_or(0),
            if p.symmetric { "" } else { "-asym" }
        )
    }
    fn accepts(&self, s: HfScheme, c: Calibration) -> bool {
        c == Calibration::Gptq || (c == Calibration::Awq && s.params.bits == 4)
    }
    /// GPTQ codes fit the same symmetric integer scheme; AWQ scales the same INT4 scheme.
    fn check_calibrated(
        &self,
        s: HfScheme,
        c: Calibrated,
    ) -> Option<std::result::Result<(), CalibMismatch>> {
        let made = match c {
            Calibrated::Awq {
                group_size,
                symmetric,
            } if s.params.bits == 4 => Params {
                bits: 4,
                group_size,
                symmetric,
            },
            Calibrated::Gptq { bits, group_size } if s.params.symmetric => Params {
                bits,
                group_size,
                symmetric: true,
            },
            _ => return None,
        };
        let made = HfScheme::new(&INT, made);
        Some(
            (made == s)
                .then_some(())
                .ok_or(CalibMismatch::MadeFor(made.name())),
        )
    }
    fn check_options(&self, s: HfScheme, opts: &HfQuantOptions) -> ModuleCheck {
        if opts.layout == super::HfLayout::Fbgemm {
            return super::kind::default_check_options(opts);
        }
        if opts.weight_transform.is_some()
            && (s.params.bits != 4 || opts.precomputed_int4.is_some())
        {
            return Err(
                "folded calibration scales (AWQ) need an int4 scheme quantized round-to-nearest"
                    .into(),
            );
        }
        if opts.precomputed_int4.is_some() && !s.params.symmetric {
            return Err("calibrated codes need a symmetric int4 or int8 scheme".into());
        }
        Ok(())
    }
    fn check_module(
        &self,
        s: HfScheme,
        opts: &HfQuantOptions,
        ckpt: &Checkpoint,
        id: TensorId,
    ) -> Result<()> {
        let (_, k) = shape2(ckpt, id);
        int4::check_group(k, s.params.group_size).map_err(|e| codec_err(ckpt, id, e))?;
        let m = hf_module(id);
        match &opts.precomputed_int4 {
            Some(p) if !p.has(&m) => Err(run_error(
                ckpt,
                format!(
                    "the calibration results have no codes for {m} (calibrated with other \
                     --ignore/--policy, or for another model?)"
                ),
            )),
            _ => Ok(()),
        }
    }
    fn tensors<'a>(
        &self,
        s: HfScheme,
        cx: &Cx<'a>,
        id: TensorId,
        module: &str,
    ) -> Result<Vec<OutTensor<'a>>> {
        tensors(
            cx.src,
            id,
            module,
            int4_config(s, cx.opts),
            s.params.symmetric,
            cx.opts.precomputed_int4.as_deref(),
            cx.opts.weight_transform.as_deref(),
            cx.scale_dtype,
        )
    }
    fn write_config(&self, s: HfScheme, opts: &HfQuantOptions, nc: &[String], config: &mut Value) {
        let p = s.params;
        let weights = json!({"dynamic": false, "group_size": p.group_size, "num_bits": p.bits,
               "strategy": if p.group_size.is_some() { "group" } else { "channel" },
               "symmetric": p.symmetric, "type": "int"});
        config["quantization_config"] =
            compressed_tensors_config(opts, nc, ("pack-quantized", weights, Value::Null));
    }
    fn work_bytes(&self, s: HfScheme, _weight: Option<&TensorEntry>, n: u64) -> u64 {
        // f32 decode + codes (one byte each) + packed codes + scales
        4 * n + n + n * u64::from(s.params.bits) / 8
    }
    fn integer_codes(&self, s: HfScheme) -> Option<Params> {
        Some(s.params)
    }
    fn rate(&self) -> QuantRate {
        QuantRate::Integer
    }
    fn detect(&self, w: &Weights<'_>, id: TensorId) -> Option<Result<Params>> {
        let packed = w
            .part(id, Part::WeightPacked)
            .filter(|p| p.dtype != DType::U8)?;
        Some(detect_packed(w, id, packed))
    }
    fn dequant(&self, s: HfScheme, w: &Weights<'_>, id: TensorId) -> Result<Vec<f32>> {
        let packed = w.part(id, Part::WeightPacked).expect("checked by detect");
        let (rows, cols, _) = packed_dims(w, id, packed)?;
        let scale = w.part(id, Part::WeightScale).expect("checked by detect");
        let weight_scale = w.to_f32(scale)?;
        check_finite_scales(w, scale, &weight_scale)?;
        let words = w.i32s(packed)?;
        let weight_zero_point = match w.part(id, Part::WeightZeroPoint) {
            Some(z) => Some(w.i32s(z)?),
            None => None,
        };
        let p = int4::CtPacked {
            bits: s.params.bits,
            weight_packed: words,
            weight_scale,
            weight_zero_point,
            weight_shape: [rows as i64, cols as i64],
            group_size: s.params.group_size.unwrap_or(cols as usize),
        };
        int4::dequantize_compressed_tensors(&p).map_err(|source| Error::Codec {
            path: w.path.clone(),
            tensor: packed.name.clone(),
            source,
        })
    }
}

/// The parameters of a `pack-quantized` module: bits from the packed shape, the group size
/// from the scales' (the row length for per-channel scales), zero points if stored.
fn detect_packed(w: &Weights<'_>, id: TensorId, packed: &TensorEntry) -> Result<Params> {
    let (rows, cols, bits) = packed_dims(w, id, packed)?;
    let scale = w.required(id, Part::WeightScale, packed)?;
    let groups = match scale.shape.as_slice() {
        [r, g] if *r == rows && *g > 0 && cols % g == 0 => *g,
        other => {
            return Err(w.bad(
                scale,
                format!("weight_scale shape {other:?} does not fit weight_shape [{rows}, {cols}]"),
            ))
        }
    };
    Ok(Params {
        bits,
        group_size: Some((cols / groups) as usize),
        symmetric: w.part(id, Part::WeightZeroPoint).is_none(),
    })
}

/// `[rows, cols]` of a packed weight, from its `weight_shape` (checked against the config
/// and against the packed tensor's own shape), and the code width the packed shape implies:
/// `[rows, ceil(cols/8)]` words hold 4-bit codes, `[rows, ceil(cols/4)]` 8-bit ones (the
/// two coincide only for rows of at most 4, read as 4-bit).
fn packed_dims(w: &Weights<'_>, id: TensorId, packed: &TensorEntry) -> Result<(u64, u64, u8)> {
    let shape_t = w.required(id, Part::WeightShape, packed)?;
    let dims = w
        .to_f32(shape_t)
        .ok()
        .filter(|d| d.len() == 2)
        .ok_or_else(|| w.bad(shape_t, "weight_shape must hold two integers".into()))?;
    let (rows, cols) = (dims[0] as u64, dims[1] as u64);
    let expected = w.config.expected_shape(id);
    if expected != [rows, cols] {
        return Err(Error::ShapeMismatch {
            path: w.path.clone(),
            tensor: shape_t.name.clone(),
            expected,
            got: vec![rows, cols],
        });
    }
    let bits = match packed.shape.as_slice() {
        [r, c] if packed.dtype == DType::I32 && *r == rows && *c == cols.div_ceil(8) => 4,
        [r, c] if packed.dtype == DType::I32 && *r == rows && *c == cols.div_ceil(4) => 8,
        _ => {
            return Err(w.bad(
                packed,
                format!(
                    "weight_packed must be I32 [{rows}, {}] (4-bit) or [{rows}, {}] (8-bit) for \
                     weight_shape [{rows}, {cols}], found {} {:?}",
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
