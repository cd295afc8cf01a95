//! Quantized Hugging Face layouts: compressed-tensors (`float-quantized` FP8 and
//! `pack-quantized` INT4, as vLLM, transformers and SGLang load them) and `fbgemm_fp8` (Meta's
//! Llama 3.1 405B FP8 release layout). Specs: `specs/serving-formats.md` §1–2, `specs/meta.md` §5.
//!
//! Every linear of every block is decoded to `f32` (whatever the source stores: floats, ggml
//! blocks, or an already quantized layout), put in HF row order (Q/K RoPE permutation), and
//! encoded with the codecs of `qforge-codecs`. Everything else (embeddings, norms, the LM
//! head, modules the policy or `--ignore` leaves out) is written in the model dtype.
//!
//! Writing order: safetensors files keep the library's data order (descending dtype alignment,
//! then name), so a module's scales are written before its codes. The scale producers therefore
//! compute the scales alone (FP8: one pass of row maxima) and the code producers recompute them
//! with the codes; both use the same rule, so they always agree. Memory stays at one tensor.
//! FP8 row scales are [`Producer::Ahead`]: a helper thread makes them in write order while the
//! writer is still hashing and writing the large tensors the order puts first (embeddings, LM
//! head), so that pass over the linears no longer waits its turn.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use qforge_codecs::fp8::Fp8Options;
use qforge_codecs::int4::{self, Int4Arith, Int4Config, Int4Scheme, Int4Tensor};
use qforge_codecs::DType;
use serde_json::{json, Value};

use crate::dequant::WeightRead;
use crate::numerics::{Numerics, WeightPolicy};
use qforge_convert::checkpoint::{Checkpoint, Format};
use qforge_convert::export::{
    copy_rows, encode_float, hf_config_json, rope_direction, target_rope_scaling, tensor_bytes,
    write_hf_side_files, write_safetensors_shards, OutTensor, Producer, Written,
};
use qforge_convert::names::{LayerTensor, NameScheme, Part, TensorId, TensorKey};
use qforge_convert::notes::Note;
use qforge_convert::rope::RopeLayout;
use qforge_convert::write::safetensors::TensorSpec;
use qforge_convert::write::{OutputDir, OutputOptions};
use qforge_convert::ModelConfig;
use qforge_convert::{Error, Result};

mod fp4;
mod fp8;
pub mod fp8_block;
mod int;
pub mod mlx;
mod nvfp4;

/// The compressed-tensors version whose `quantization_config` qforge writes (and validates
/// against in the interop tests).
pub const COMPRESSED_TENSORS_VERSION: &str = "0.20.0";

/// FBGEMM's activation scale upper bound in Meta's Llama 3.1 405B FP8 release.
pub const META_ACTIVATION_SCALE_UB: f32 = 1200.0;

/// What the weights become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HfScheme {
    /// FP8 E4M3 weights with one scale per output row; activations quantized per token at run
    /// time (compressed-tensors FP8_DYNAMIC, or `fbgemm_fp8`). Rounding: in compressed-tensors,
    /// llm-compressor's (`W / scale` rounded to the model dtype, BF16 for a BF16 model, before
    /// the clamp and FP8 cast; `qforge_codecs::fp8_ct`); in `fbgemm_fp8`, FBGEMM's
    /// `quantize_fp8_per_row` (an `f32` division, `-0` kept as `0x80`; `qforge_codecs::fp8`).
    Fp8Rowwise,
    /// FP8 E4M3 weights with one scale per tensor and a static per-tensor activation scale from
    /// calibration (compressed-tensors FP8). Rounding: llm-compressor's, as
    /// [`HfScheme::Fp8Rowwise`] in compressed-tensors.
    Fp8Static,
    /// INT4 (or INT8) weights, 16-bit activations (compressed-tensors W4A16 / W8A16
    /// `pack-quantized`).
    Int4 {
        /// code width: 4 or 8
        bits: u8,
        /// columns per scale; `None` = one scale per row (`strategy: "channel"`)
        group_size: Option<usize>,
        /// symmetric (`s = amax/7.5`, `amax/127.5` for 8 bits) or asymmetric with zero points
        symmetric: bool,
    },
    /// FP8 E4M3 weights with one scale per 128×128 block, activations FP8 dynamic per token
    /// group of 128 (compressed-tensors `strategy: block`, llm-compressor `FP8_BLOCK`).
    /// Rounding: llm-compressor's (`W / scale` in the model dtype, then the FP8 cast;
    /// `qforge_codecs::fp8_ct`).
    Fp8Block,
    /// FP4 E2M1 weights with an FP8 E4M3 scale per 16 and a per-tensor F32 global scale,
    /// 16-bit activations (compressed-tensors `nvfp4-pack-quantized`, llm-compressor
    /// `NVFP4A16`; arithmetic in `qforge_codecs::fp4`).
    Nvfp4A16,
    /// NVFP4 weights as [`HfScheme::Nvfp4A16`] plus FP4 activations with a calibrated per-tensor
    /// `input_global_scale` (llm-compressor `NVFP4`, W4A4; [`nvfp4`]).
    Nvfp4,
    /// FP4 E2M1 weights with an E8M0 scale per 32 (compressed-tensors `mxfp4-pack-quantized`):
    /// llm-compressor `MXFP4` (activations dynamic MXFP4 at run time) or, with
    /// `a16`, `MXFP4A16`.
    Mxfp4 {
        /// 16-bit activations (no `input_activations` in the config)
        a16: bool,
    },
}

/// The on-disk layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HfLayout {
    /// compressed-tensors (vLLM / transformers / SGLang).
    CompressedTensors,
    /// `fbgemm_fp8` (FP8 rowwise only).
    Fbgemm,
    /// mlx-lm's affine layout (`weight` U32, `scales`, `biases`; [`mlx`]): the scheme must be
    /// `Int4 { bits: 4 | 8, group_size: Some(32 | 64 | 128), .. }` (MLX's affine codes are
    /// always asymmetric; `symmetric` is not used).
    Mlx,
}

/// Which linears are quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Every linear of every block (the LM head stays in the model dtype).
    #[default]
    AllLinear,
    /// Meta's Llama 3.1 405B FP8 recipe: only the FFN (gate, up, down) of blocks 1..n−2;
    /// attention, the first and last blocks and the LM head stay BF16.
    Meta405b,
    /// Meta's Llama 4 FP8 recipe (llama-models `models/llama4/quantization/loader.py`
    /// `convert_to_quantized_model`, `QuantizationMode.fp8_mixed`): only the routed experts'
    /// projections (`w1`, `w3`, `w2`) of the MoE blocks other than the first and last;
    /// attention, the shared expert, the router, dense FFN blocks, embeddings and the LM head
    /// stay BF16.
    MetaLlama4,
}

impl Policy {
    /// Whether this policy quantizes `id`.
    pub fn selects(self, id: TensorId, num_layers: u64) -> bool {
        let TensorId::Layer { index, kind } = id else {
            return false;
        };
        match self {
            Policy::AllLinear => kind.is_linear(),
            Policy::Meta405b => {
                matches!(
                    kind,
                    LayerTensor::Gate | LayerTensor::Up | LayerTensor::Down
                ) && index >= 1
                    && u64::from(index) + 1 < num_layers
            }
            Policy::MetaLlama4 => {
                matches!(kind, LayerTensor::Expert { .. })
                    && index >= 1
                    && u64::from(index) + 1 < num_layers
            }
        }
    }
}

/// Module names (or `re:` regexes, as compressed-tensors' `ignore`) to leave unquantized.
#[derive(Debug, Clone, Default)]
pub struct IgnoreList {
    patterns: Vec<(String, Option<regex::Regex>)>,
}

impl IgnoreList {
    /// Parse patterns: an exact HF module name (`model.layers.0.mlp.down_proj`, `lm_head`) or
    /// `re:<regex>` matched against the module name (search, like Python's `re.match` on the
    /// whole name when anchored).
    pub fn new(patterns: &[String]) -> std::result::Result<Self, String> {
        let mut out = Vec::new();
        for p in patterns {
            let re = match p.strip_prefix("re:") {
                Some(r) => Some(
                    regex::Regex::new(r).map_err(|e| format!("bad --ignore regex {p:?}: {e}"))?,
                ),
                None => None,
            };
            out.push((p.clone(), re));
        }
        Ok(IgnoreList { patterns: out })
    }

    /// Whether `module` is ignored.
    pub fn matches(&self, module: &str) -> bool {
        self.patterns.iter().any(|(p, re)| match re {
            Some(re) => re.find(module).is_some_and(|m| m.start() == 0),
            None => p == module,
        })
    }

    /// The patterns as given.
    pub fn patterns(&self) -> impl Iterator<Item = &str> {
        self.patterns.iter().map(|(p, _)| p.as_str())
    }
}

/// Options of [`quantize_to_hf`].
#[derive(Debug, Clone)]
pub struct HfQuantOptions {
    /// Weight scheme.
    pub scheme: HfScheme,
    /// On-disk layout.
    pub layout: HfLayout,
    /// Which linears are quantized.
    pub policy: Policy,
    /// Extra modules to leave unquantized.
    pub ignore: IgnoreList,
    /// Dtype of unquantized tensors and of compressed-tensors scales: BF16 (default) or F32.
    pub dtype: DType,
    /// `fbgemm_fp8` `activation_scale_ub`.
    pub activation_scale_ub: f32,
    /// Static activation scales (`input_scale`) per HF module name, for [`HfScheme::Fp8Static`].
    pub input_scales: Option<BTreeMap<String, f32>>,
    /// Calibrated activation absolute maxima per HF module (`qforge calibrate --method
    /// fp8-static`'s `input_amax`), for [`HfScheme::Nvfp4`]'s `input_global_scale`.
    pub input_amax: Option<BTreeMap<String, f32>>,
    /// Largest shard, bytes of tensor data.
    pub shard_size: u64,
    /// Resume / overwrite policy.
    pub output: OutputOptions,
    /// NaN, ±inf and absurdly large weights in the tensors being quantized.
    pub numerics: Numerics,
    /// INT4 codes and scales chosen by calibration (GPTQ) to write instead of
    /// round-to-nearest; every quantized module must have them.
    pub precomputed_int4: Option<std::sync::Arc<dyn PrecomputedInt4>>,
    /// A change applied to weights before they are written or quantized round-to-nearest
    /// (AWQ's smoothing scales folded into norms and linears); INT4 schemes only.
    pub weight_transform: Option<std::sync::Arc<dyn WeightTransform>>,
}

/// A per-tensor change of the `f32` weights before writing (e.g. AWQ's folded scales).
pub trait WeightTransform: Send + Sync + std::fmt::Debug {
    /// Whether `id`'s weight changes.
    fn touches(&self, id: TensorId) -> bool;
    /// Change `w` (`[rows, cols]` row-major, HF row order; a norm is one row) in place.
    fn apply(&self, id: TensorId, w: &mut [f32], cols: usize) -> std::result::Result<(), String>;
}

/// INT4 codes chosen elsewhere (e.g. by GPTQ in `qforge-calibrate`), per HF module.
pub trait PrecomputedInt4: Send + Sync + std::fmt::Debug {
    /// Whether `module` has codes.
    fn has(&self, module: &str) -> bool;
    /// The codes and scales of `module` (`[rows, cols]`, HF row order, symmetric).
    fn int4(&self, module: &str) -> std::result::Result<Int4Tensor, String>;
}

/// HF module name of a role (`model.layers.3.self_attn.q_proj`, `lm_head`).
pub fn hf_module(id: TensorId) -> String {
    let name = NameScheme::Hf
        .name(TensorKey::weight(id))
        .unwrap_or_else(|| id.to_string());
    name.strip_suffix(".weight").unwrap_or(&name).to_owned()
}

/// What happens to one module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Treatment {
    Keep,
    Quantize,
}

/// Per-module decision: quantized by the scheme, or left in the model dtype.
fn treatment(
    id: TensorId,
    opts: &HfQuantOptions,
    num_layers: u64,
    skipped: &BTreeSet<TensorId>,
) -> Treatment {
    let mlx_extra = opts.layout == HfLayout::Mlx
        && opts.policy == Policy::AllLinear
        && matches!(id, TensorId::TokenEmbedding | TensorId::Output);
    if (opts.policy.selects(id, num_layers) || mlx_extra)
        && !opts.ignore.matches(&hf_module(id))
        && !skipped.contains(&id)
    {
        Treatment::Quantize
    } else {
        Treatment::Keep
    }
}

/// The roles of a checkpoint, in HF file order, each once (quantized sources list several
/// parts per role).
fn roles(ckpt: &Checkpoint) -> Vec<TensorId> {
    let mut ids: Vec<TensorId> = ckpt
        .tensors
        .iter()
        .map(|t| t.key.id)
        .filter(|id| *id != TensorId::RopeFreqs)
        .collect();
    ids.sort();
    ids.dedup();
    ids.sort_by_key(|id| qforge_convert::export::hf_order(&TensorKey::weight(*id)));
    ids
}

/// Under an opt-in bad-weight policy, scan every tensor the run would quantize; returns those
/// to leave unquantized (`skip`) and notes each tensor found.
fn scan_policy(
    ckpt: &Checkpoint,
    opts: &HfQuantOptions,
    notes: &mut Vec<Note>,
) -> Result<BTreeSet<TensorId>> {
    let mut skipped = BTreeSet::new();
    if opts.numerics.policy == WeightPolicy::Error {
        return Ok(skipped);
    }
    let none = BTreeSet::new();
    for id in roles(ckpt) {
        if treatment(id, opts, ckpt.config.num_layers, &none) != Treatment::Quantize {
            continue;
        }
        if let Some(f) = opts.numerics.scan(ckpt, id)? {
            notes.push(Note::requested(
                opts.numerics.note(&(hf_module(id) + ".weight"), &f),
            ));
            if opts.numerics.policy == WeightPolicy::Skip {
                skipped.insert(id);
            }
        }
    }
    Ok(skipped)
}

/// The weight's rows (RoPE order of the output) as `f32`, through the bad-weight policy.
fn checked_rows(
    ckpt: &Checkpoint,
    id: TensorId,
    rope: Option<RopeLayout>,
    k: usize,
    numerics: Numerics,
) -> Result<Vec<f32>> {
    let mut v = ckpt.role_rows_f32(id, rope)?;
    numerics
        .rows(&mut v, k)
        .map_err(|e| codec_err(ckpt, id, e))?;
    Ok(v)
}

fn shape2(ckpt: &Checkpoint, id: TensorId) -> (usize, usize) {
    let s = ckpt.config.expected_shape(id);
    (s[0] as usize, s.get(1).copied().unwrap_or(1) as usize)
}

/// Row length of a role's weight (a 1-D weight is one row).
fn shape2_cols(ckpt: &Checkpoint, id: TensorId) -> usize {
    ckpt.config.expected_shape(id).last().copied().unwrap_or(1) as usize
}

fn codec_err(ckpt: &Checkpoint, id: TensorId, source: qforge_codecs::Error) -> Error {
    Error::Codec {
        path: ckpt.path.clone(),
        tensor: hf_module(id) + ".weight",
        source,
    }
}

/// The FP8 arithmetic of a layout: compressed-tensors' in the model dtype (llm-compressor's
/// bytes), FBGEMM's for `fbgemm_fp8` ([`fp8::Fp8Rule`]).
fn fp8_rule(opts: &HfQuantOptions) -> fp8::Fp8Rule {
    match opts.layout {
        HfLayout::Fbgemm => fp8::Fp8Rule::Fbgemm(Fp8Options {
            upper_bound: None,
            keep_negative_zero: true,
        }),
        HfLayout::CompressedTensors | HfLayout::Mlx => {
            fp8::Fp8Rule::CompressedTensors(if opts.dtype == DType::BF16 {
                Int4Arith::Bf16
            } else {
                Int4Arith::F32
            })
        }
    }
}

fn int4_config(opts: &HfQuantOptions) -> Option<Int4Config> {
    match opts.scheme {
        HfScheme::Int4 {
            bits,
            group_size,
            symmetric,
        } => Some(Int4Config {
            bits,
            scheme: if symmetric {
                Int4Scheme::Symmetric
            } else {
                Int4Scheme::Asymmetric
            },
            group_size,
            arith: if opts.dtype == DType::BF16 {
                Int4Arith::Bf16
            } else {
                Int4Arith::F32
            },
        }),
        _ => None,
    }
}

fn push_i32s(values: &[i32], out: &mut Vec<u8>) {
    out.extend(values.iter().flat_map(|v| v.to_le_bytes()));
}

/// What a quantization wrote, with per-module decisions for the report.
#[derive(Debug, Clone)]
pub struct QuantWritten {
    /// Files, notes.
    pub written: Written,
    /// HF module names that were quantized.
    pub quantized: Vec<String>,
    /// HF module names of linears left in the model dtype.
    pub kept: Vec<String>,
}

/// Check the options against the checkpoint before any work: scheme/layout combinations, group
/// sizes that must divide every quantized row, static scales for every quantized module.
fn preflight(ckpt: &Checkpoint, opts: &HfQuantOptions, skipped: &BTreeSet<TensorId>) -> Result<()> {
    let bad = |reason: String| Error::BadQuantization {
        path: ckpt.path.clone(),
        tensor: String::new(),
        reason,
    };
    if !matches!(opts.dtype, DType::BF16 | DType::F32) {
        return Err(bad(format!(
            "model dtype {} is not supported for quantized HF output (use bf16 or f32)",
            opts.dtype
        )));
    }
    if opts.layout == HfLayout::Fbgemm && opts.scheme != HfScheme::Fp8Rowwise {
        return Err(bad(
            "the fbgemm_fp8 layout holds FP8 rowwise weights only (--scheme fp8-rowwise)".into(),
        ));
    }
    if let Some(reason) = mlx_params(opts).err() {
        return Err(bad(reason));
    }
    if !(opts.activation_scale_ub.is_finite() && opts.activation_scale_ub > 0.0) {
        return Err(bad("activation scale upper bound must be positive".into()));
    }
    if opts.weight_transform.is_some()
        && (!matches!(opts.scheme, HfScheme::Int4 { .. }) || opts.precomputed_int4.is_some())
    {
        return Err(bad(
            "folded calibration scales (AWQ) need an int4 scheme quantized round-to-nearest".into(),
        ));
    }
    let n = ckpt.config.num_layers;
    for id in roles(ckpt) {
        if treatment(id, opts, n, skipped) != Treatment::Quantize {
            continue;
        }
        let (_, k) = shape2(ckpt, id);
        if matches!(
            opts.scheme,
            HfScheme::Nvfp4A16 | HfScheme::Nvfp4 | HfScheme::Mxfp4 { .. }
        ) {
            fp4::check_columns(opts.scheme, k).map_err(|reason| Error::BadQuantization {
                path: ckpt.path.clone(),
                tensor: hf_module(id),
                reason,
            })?;
        }
        if let Some(cfg) = int4_config(opts) {
            if let Err(e) = int4::check_group(k, cfg.group_size) {
                return Err(codec_err(ckpt, id, e));
            }
        }
        if let Some(p) = &opts.precomputed_int4 {
            let m = hf_module(id);
            if !matches!(
                opts.scheme,
                HfScheme::Int4 {
                    symmetric: true,
                    ..
                }
            ) {
                return Err(bad(
                    "calibrated codes need a symmetric int4 or int8 scheme".into()
                ));
            }
            if !p.has(&m) {
                return Err(bad(format!(
                    "the calibration results have no codes for {m} (calibrated with other \
                     --ignore/--policy, or for another model?)"
                )));
            }
        }
        if opts.scheme == HfScheme::Nvfp4 {
            nvfp4::check_amax(opts.input_amax.as_ref(), &hf_module(id)).map_err(bad)?;
        }
        if opts.scheme == HfScheme::Fp8Static {
            let m = hf_module(id);
            let s = opts.input_scales.as_ref().and_then(|s| s.get(&m));
            match s {
                Some(s) if s.is_finite() && *s > 0.0 => {}
                Some(s) => return Err(bad(format!("input scale of {m} is {s}"))),
                None => {
                    return Err(bad(format!(
                        "fp8-static needs calibrated activation scales: none for {m} \
                         (run `qforge calibrate --method fp8-static` and pass --calib)"
                    )))
                }
            }
        }
    }
    Ok(())
}

/// The `(bits, group_size)` of an [`HfLayout::Mlx`] run (`Ok(None)` for other layouts), or why
/// the options do not make one.
fn mlx_params(opts: &HfQuantOptions) -> std::result::Result<Option<(u8, usize)>, String> {
    if opts.layout != HfLayout::Mlx {
        return Ok(None);
    }
    match opts.scheme {
        HfScheme::Int4 {
            bits: bits @ (4 | 8),
            group_size: Some(g @ (32 | 64 | 128)),
            ..
        } if opts.precomputed_int4.is_none() && opts.weight_transform.is_none() => {
            Ok(Some((bits, g)))
        }
        _ => Err(
            "the mlx layout holds MLX affine weights: --scheme int4-g<N> or int8-g<N> \
                  with N = 32, 64 or 128 (round to nearest, no calibration results)"
                .into(),
        ),
    }
}

/// `quantization_config` for config.json, exactly as compressed-tensors 0.20 / llm-compressor
/// write it (keys sorted; `QuantizationArgs` fields that the library omits are omitted), or as
/// transformers' `FbgemmFp8Config` writes it.
pub fn quantization_config(opts: &HfQuantOptions, not_converted: &[String]) -> Value {
    if opts.layout == HfLayout::Fbgemm {
        return json!({
            "activation_scale_ub": opts.activation_scale_ub,
            "modules_to_not_convert": not_converted,
            "quant_method": "fbgemm_fp8",
        });
    }
    let (format, weights, input) = match opts.scheme {
        HfScheme::Fp8Rowwise => (
            "float-quantized",
            json!({"dynamic": false, "group_size": null, "num_bits": 8, "strategy": "channel",
                   "symmetric": true, "type": "float"}),
            json!({"dynamic": true, "group_size": null, "num_bits": 8, "strategy": "token",
                   "symmetric": true, "type": "float"}),
        ),
        HfScheme::Fp8Static => (
            "float-quantized",
            json!({"dynamic": false, "group_size": null, "num_bits": 8, "strategy": "tensor",
                   "symmetric": true, "type": "float"}),
            json!({"dynamic": false, "group_size": null, "num_bits": 8, "observer": "static_minmax",
                   "strategy": "tensor", "symmetric": true, "type": "float"}),
        ),
        HfScheme::Int4 {
            bits,
            group_size,
            symmetric,
        } => (
            "pack-quantized",
            json!({"dynamic": false, "group_size": group_size, "num_bits": bits,
                   "strategy": if group_size.is_some() { "group" } else { "channel" },
                   "symmetric": symmetric, "type": "int"}),
            Value::Null,
        ),
        // quantization/quant_scheme.py FP8_BLOCK as QuantizationArgs serializes it
        HfScheme::Fp8Block => (
            "float-quantized",
            json!({"block_structure": [128, 128], "dynamic": false, "group_size": null,
                   "num_bits": 8, "strategy": "block", "symmetric": true, "type": "float"}),
            json!({"dynamic": true, "group_size": 128, "num_bits": 8, "strategy": "group",
                   "symmetric": true, "type": "float"}),
        ),
        // quantization/quant_scheme.py NVFP4A16 / MXFP4 / MXFP4A16 as QuantizationArgs
        // serializes them (zp_dtype is dropped for symmetric args, scale_dtype is kept)
        HfScheme::Nvfp4A16 => (
            "nvfp4-pack-quantized",
            json!({"dynamic": false, "group_size": 16, "num_bits": 4,
                   "scale_dtype": "torch.float8_e4m3fn", "strategy": "tensor_group",
                   "symmetric": true, "type": "float"}),
            Value::Null,
        ),
        HfScheme::Nvfp4 => nvfp4::config(),
        HfScheme::Mxfp4 { a16 } => (
            "mxfp4-pack-quantized",
            json!({"dynamic": false, "group_size": 32, "num_bits": 4,
                   "scale_dtype": "torch.uint8", "strategy": "group", "symmetric": true,
                   "type": "float"}),
            if a16 {
                Value::Null
            } else {
                json!({"dynamic": true, "group_size": 32, "num_bits": 4,
                       "scale_dtype": "torch.uint8", "strategy": "group", "symmetric": true,
                       "type": "float"})
            },
        ),
    };
    let mut ignore: Vec<String> = opts.ignore.patterns().map(str::to_owned).collect();
    for m in not_converted {
        if !ignore.contains(m) {
            ignore.push(m.clone());
        }
    }
    if !ignore.iter().any(|m| m == "lm_head") {
        ignore.push("lm_head".into());
    }
    json!({
        "config_groups": {"group_0": {
            "format": null,
            "input_activations": input,
            "output_activations": null,
            "targets": ["Linear"],
            "weights": weights,
        }},
        "format": format,
        "global_compression_ratio": null,
        "ignore": ignore,
        "kv_cache_scheme": null,
        "moe_sparsity_config": null,
        "quant_method": "compressed-tensors",
        "quantization_status": "compressed",
        "sparsity_config": {},
        "transform_config": {},
        "version": COMPRESSED_TENSORS_VERSION,
    })
}

/// Sort every object's keys (Python `json.dump(sort_keys=True)`, as transformers and
/// llm-compressor write config.json).
pub fn sort_keys(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let sorted: BTreeMap<String, Value> =
                m.into_iter().map(|(k, v)| (k, sort_keys(v))).collect();
            Value::Object(sorted.into_iter().collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sort_keys).collect()),
        other => other,
    }
}

/// A tensor left in the model dtype: copied (or converted) a row block at a time from a plain
/// mapped source, else decoded whole (AWQ-transformed roles, quantized or ggml sources).
fn kept_tensor<'a>(
    ckpt: &'a Checkpoint,
    id: TensorId,
    module: &str,
    model_dtype: DType,
    rope: Option<RopeLayout>,
    transform: Option<&'a dyn WeightTransform>,
) -> OutTensor<'a> {
    let shape = ckpt.config.expected_shape(id);
    let streamed = if transform.is_some_and(|t| t.touches(id)) {
        None
    } else {
        ckpt.part(id, Part::Weight)
            .filter(|_| ckpt.part(id, Part::WeightScale).is_none())
            .and_then(|t| copy_rows(ckpt, t, model_dtype, rope))
    };
    // a kept tensor's own HF name (`….q_proj.bias` for a bias)
    let name = NameScheme::Hf
        .name(TensorKey::weight(id))
        .unwrap_or_else(|| format!("{module}.weight"));
    OutTensor {
        spec: TensorSpec {
            name,
            dtype: model_dtype,
            shape,
        },
        produce: streamed.unwrap_or_else(|| {
            Producer::Whole(Box::new(move |buf: &mut Vec<u8>| {
                if let Some(tr) = transform.filter(|t| t.touches(id)) {
                    let mut v = ckpt.role_rows_f32(id, rope)?;
                    let cols = shape2_cols(ckpt, id);
                    tr.apply(id, &mut v, cols)
                        .map_err(|reason| Error::BadQuantization {
                            path: ckpt.path.clone(),
                            tensor: hf_module(id),
                            reason,
                        })?;
                    encode_float(&v, model_dtype, buf).expect("float dtype checked");
                    return Ok(());
                }
                let plain = ckpt.part(id, Part::Weight).filter(|t| {
                    matches!(t.dtype, DType::BF16 | DType::F16 | DType::F32)
                        && ckpt.part(id, Part::WeightScale).is_none()
                });
                if let Some(t) = plain {
                    // copied (same dtype) or converted in chunks, never a whole f32 copy
                    return tensor_bytes(ckpt, t, model_dtype, rope, buf);
                }
                let v = ckpt.role_rows_f32(id, rope)?;
                encode_float(&v, model_dtype, buf).expect("float dtype checked");
                Ok(())
            }))
        }),
    }
}

/// The checks and notes before any tensor is made: the magnitude limit, the RoPE scaling the
/// output can hold (lossy notes gated), the bad-weight scan and the scheme preflight. Returns
/// the output's model config, the notes and the roles left unquantized.
fn prepare(
    ckpt: &Checkpoint,
    opts: &HfQuantOptions,
) -> Result<(ModelConfig, Vec<Note>, BTreeSet<TensorId>)> {
    if !(opts.numerics.max_abs.is_finite() && opts.numerics.max_abs > 0.0) {
        return Err(Error::BadQuantization {
            path: ckpt.path.clone(),
            tensor: String::new(),
            reason: format!(
                "the weight magnitude limit must be positive, not {}",
                opts.numerics.max_abs
            ),
        });
    }
    let mut notes = qforge_convert::notes::from_reading(&ckpt.notes);
    let mut hf_cfg = ckpt.config.clone();
    let (rope_scaling, rope_notes) = target_rope_scaling(ckpt, "config.json")?;
    hf_cfg.rope_scaling = rope_scaling;
    notes.extend(rope_notes);
    qforge_convert::notes::gate(&notes, opts.output.allow_lossy)?;
    let mut skipped = scan_policy(ckpt, opts, &mut notes)?;
    if let Ok(Some((_, g))) = mlx_params(opts) {
        // mlx-lm leaves modules whose rows do not split into whole groups unquantized
        skipped.extend(
            roles(ckpt)
                .into_iter()
                .filter(|&id| !mlx::quantizes(id, shape2_cols(ckpt, id), g)),
        );
    }
    preflight(ckpt, opts, &skipped)?;
    Ok((hf_cfg, notes, skipped))
}

/// Quantize any checkpoint into a Hugging Face directory with a quantized layout.
pub fn quantize_to_hf(
    ckpt: &Checkpoint,
    dest: &Path,
    opts: &HfQuantOptions,
) -> Result<QuantWritten> {
    let (hf_cfg, notes, skipped) = prepare(ckpt, opts)?;
    let cfg = &ckpt.config;
    let rope = rope_direction(&ckpt.config, ckpt.format, Format::Hf);
    let model_dtype = opts.dtype;
    let scale_dtype = match opts.layout {
        HfLayout::CompressedTensors | HfLayout::Mlx => model_dtype,
        HfLayout::Fbgemm => DType::F32,
    };
    let mut quantized = Vec::new();
    let mut kept = Vec::new();
    let mut tensors: Vec<OutTensor<'_>> = Vec::new();
    let transform = opts.weight_transform.as_deref();
    let src = fp4::Source {
        ckpt,
        rope,
        numerics: opts.numerics,
        arith: if model_dtype == DType::BF16 {
            Int4Arith::Bf16
        } else {
            Int4Arith::F32
        },
    };
    for id in roles(ckpt) {
        let module = hf_module(id);
        // a MoE router is an nn.Linear kept in high precision: listed with the kept linears
        // (compressed-tensors `ignore`), as llm-compressor's MoE recipes ignore `mlp.gate`
        let linear = matches!(id, TensorId::Layer { kind, .. }
            if kind.is_linear() || kind == LayerTensor::Router)
            || id == TensorId::Output;
        if treatment(id, opts, cfg.num_layers, &skipped) == Treatment::Keep {
            if linear {
                kept.push(module.clone());
            }
            tensors.push(kept_tensor(ckpt, id, &module, model_dtype, rope, transform));
            continue;
        }
        quantized.push(module.clone());
        if let Ok(Some((bits, g))) = mlx_params(opts) {
            tensors.extend(mlx::tensors(src, id, &module, bits, g, model_dtype));
            continue;
        }
        match opts.scheme {
            HfScheme::Fp8Rowwise | HfScheme::Fp8Static => {
                let per_row = opts.scheme == HfScheme::Fp8Rowwise;
                let input_scale = (!per_row).then(|| {
                    opts.input_scales
                        .as_ref()
                        .and_then(|m| m.get(&module))
                        .copied()
                        .expect("checked by preflight")
                });
                tensors.extend(fp8::tensors(
                    src,
                    id,
                    &module,
                    per_row,
                    fp8_rule(opts),
                    input_scale,
                    scale_dtype,
                ));
            }
            HfScheme::Fp8Block => {
                tensors.extend(fp8_block::tensors(src, id, &module, scale_dtype));
            }
            HfScheme::Nvfp4A16 | HfScheme::Nvfp4 | HfScheme::Mxfp4 { .. } => {
                let group = fp4::fused_group(id)
                    .into_iter()
                    .filter(|m| {
                        ckpt.part(*m, Part::Weight).is_some()
                            && treatment(*m, opts, cfg.num_layers, &skipped) == Treatment::Quantize
                    })
                    .collect();
                tensors.extend(fp4::tensors(src, id, &module, opts.scheme, group));
                if opts.scheme == HfScheme::Nvfp4 {
                    tensors.push(nvfp4::input_global_scale(&module, opts, src.arith));
                }
            }
            HfScheme::Int4 { symmetric, .. } => {
                let cfg4 = int4_config(opts).expect("int4 scheme");
                let pre = opts.precomputed_int4.as_deref();
                tensors.extend(int::tensors(
                    src,
                    id,
                    &module,
                    cfg4,
                    symmetric,
                    pre,
                    transform,
                    scale_dtype,
                )?);
            }
        }
    }
    // the family's own spelling of its MoE modules (Mixtral: block_sparse_moe.experts.E.w1)
    for t in &mut tensors {
        t.spec.name = cfg.family.hf_spelling(&t.spec.name);
    }
    for m in kept.iter_mut().chain(quantized.iter_mut()) {
        *m = cfg.family.hf_spelling(m);
    }
    finish(
        ckpt,
        dest,
        opts,
        tensors,
        (hf_cfg, notes),
        (quantized, kept),
    )
}

/// Write the shards, `config.json` with the scheme's `quantization_config` (or MLX's
/// `quantization`), the side files and the manifest.
fn finish(
    ckpt: &Checkpoint,
    dest: &Path,
    opts: &HfQuantOptions,
    tensors: Vec<OutTensor<'_>>,
    (hf_cfg, notes): (ModelConfig, Vec<Note>),
    (quantized, kept): (Vec<String>, Vec<String>),
) -> Result<QuantWritten> {
    let model_dtype = opts.dtype;
    let not_converted: Vec<String> = match opts.layout {
        // Meta's release lists, block by block, every linear left in BF16, then the LM head.
        HfLayout::Fbgemm => {
            let mut v = kept.clone();
            v.retain(|m| m != "lm_head");
            v.push("lm_head".into());
            v
        }
        HfLayout::CompressedTensors | HfLayout::Mlx => kept
            .iter()
            .filter(|m| *m != "lm_head" && !opts.ignore.matches(m))
            .cloned()
            .collect(),
    };
    let mut out = OutputDir::begin(dest, opts.output)?;
    let resumed = out.resumed.clone();
    write_safetensors_shards(&mut out, tensors, opts.shard_size)?;
    let mut config = hf_config_json(&hf_cfg, model_dtype);
    if let Ok(Some((bits, g))) = mlx_params(opts) {
        // mlx_lm/utils.py save_config: quantization_config is a copy of quantization
        config["quantization"] = mlx::config(bits, g);
        config["quantization_config"] = mlx::config(bits, g);
    } else {
        config["quantization_config"] = quantization_config(opts, &not_converted);
    }
    let mut text = serde_json::to_vec_pretty(&sort_keys(config))
        .map_err(|e| Error::io(dest, std::io::Error::other(e)))?;
    text.push(b'\n');
    out.write_file("config.json", &text)?;
    write_hf_side_files(ckpt, &mut out)?;
    let mut extra = qforge_convert::notes::record(&notes);
    extra.insert("source_format".into(), json!(ckpt.format));
    let files = out.commit(extra)?;
    Ok(QuantWritten {
        written: Written {
            files,
            resumed,
            notes,
        },
        quantized,
        kept,
    })
}
