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

use qforge_codecs::int4::{Int4Arith, Int4Tensor};
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

pub mod fp4;
pub mod fp8;
pub mod fp8_block;
pub mod int;
mod kind;
pub mod mlx;
pub mod nvfp4;

/// The compressed-tensors version whose `quantization_config` qforge writes (and validates
/// against in the interop tests).
pub const COMPRESSED_TENSORS_VERSION: &str = "0.20.0";

/// FBGEMM's activation scale upper bound in Meta's Llama 3.1 405B FP8 release.
pub const META_ACTIVATION_SCALE_UB: f32 = 1200.0;

pub use kind::{ActEmulation, Cx, HfScheme, LayoutScheme, ModuleCheck, Params, QuantRate};

/// Every HF layout qforge writes and reads, in detection order (a checkpoint's module is the
/// first layout whose [`LayoutScheme::detect`] claims it). Adding a layout is a module and a
/// line here.
pub static LAYOUTS: &[&dyn LayoutScheme] = &[
    &fp8::FP8_ROWWISE,
    &fp8::FP8_STATIC,
    &fp8_block::FP8_BLOCK,
    &nvfp4::NVFP4,
    &nvfp4::NVFP4A16,
    &fp4::MXFP4,
    &fp4::MXFP4A16,
    &int::INT,
    &mlx::MLX,
];

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
    /// Static activation scales (`input_scale`) per HF module name, for `fp8-static` ([`fp8::FP8_STATIC`]).
    pub input_scales: Option<BTreeMap<String, f32>>,
    /// Calibrated activation absolute maxima per HF module (`qforge calibrate --method
    /// fp8-static`'s `input_amax`), for layouts with calibrated
    /// activation global scales (NVFP4 W4A4's `input_global_scale`).
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

/// Per-module decision: quantized by `scheme` (the policy's linears and what the layout adds,
/// less `--ignore` and what the layout or the bad-weight scan leaves), else kept in the model
/// dtype.
fn treatment(
    id: TensorId,
    scheme: HfScheme,
    opts: &HfQuantOptions,
    ckpt: &Checkpoint,
    skipped: &BTreeSet<TensorId>,
) -> bool {
    let extra = opts.policy == Policy::AllLinear && scheme.kind.also_quantizes(id);
    let module = hf_module(id);
    // `--ignore` names a module as the family spells it (Llama 4's dense
    // `feed_forward.down_proj`, Mixtral's `block_sparse_moe.experts.0.w2`) or as the generic
    // Llama spelling does
    let ignored = opts.ignore.matches(&module)
        || opts
            .ignore
            .matches(&ckpt.config.family.hf_spelling(&module));
    (opts.policy.selects(id, ckpt.config.num_layers) || extra) && !ignored && !skipped.contains(&id)
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
    scheme: HfScheme,
    opts: &HfQuantOptions,
    notes: &mut Vec<Note>,
) -> Result<BTreeSet<TensorId>> {
    let mut skipped = BTreeSet::new();
    if opts.numerics.policy == WeightPolicy::Error {
        return Ok(skipped);
    }
    let none = BTreeSet::new();
    for id in roles(ckpt) {
        if !treatment(id, scheme, opts, ckpt, &none) {
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

/// A module's quantization, computed once for its several output tensors (codes, scales, zero
/// points) instead of once per tensor. The writer asks for a module's tensors one after the
/// other (safetensors' sorted order keeps them adjacent), so the value is dropped as soon as the
/// last of its `users` has taken it: memory stays one module's. A producer asked again later
/// recomputes it.
pub(crate) struct ModuleMemo<'a, T> {
    make: Box<dyn Fn() -> Result<T> + 'a>,
    users: usize,
    /// the value and how many users have taken it
    state: std::cell::RefCell<(Option<std::rc::Rc<T>>, usize)>,
}

impl<'a, T> ModuleMemo<'a, T> {
    /// A memo of `make` shared by `users` producers.
    pub(crate) fn new(users: usize, make: impl Fn() -> Result<T> + 'a) -> std::rc::Rc<Self> {
        std::rc::Rc::new(Self {
            make: Box::new(make),
            users,
            state: std::cell::RefCell::new((None, 0)),
        })
    }

    /// The value: the cached one, or a fresh one kept for the users still to come.
    pub(crate) fn get(&self) -> Result<std::rc::Rc<T>> {
        let cached = self.state.borrow().0.clone();
        let v = match cached {
            Some(v) => v,
            None => std::rc::Rc::new((self.make)()?),
        };
        let mut st = self.state.borrow_mut();
        st.1 += 1;
        if st.1 >= self.users {
            *st = (None, 0);
        } else {
            st.0 = Some(v.clone());
        }
        Ok(v)
    }
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

/// The model dtype's arithmetic (compressed-tensors computes in it): BF16 or F32.
fn model_arith(dtype: DType) -> Int4Arith {
    if dtype == DType::BF16 {
        Int4Arith::Bf16
    } else {
        Int4Arith::F32
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

/// Check the options against the checkpoint before any work: the model dtype, the layout's
/// options, and every quantized module against the layout (group sizes that must divide its
/// rows, calibration results it needs).
fn preflight(
    ckpt: &Checkpoint,
    scheme: HfScheme,
    opts: &HfQuantOptions,
    skipped: &BTreeSet<TensorId>,
) -> Result<()> {
    let bad = |tensor: String, reason: String| Error::BadQuantization {
        path: ckpt.path.clone(),
        tensor,
        reason,
    };
    if !matches!(opts.dtype, DType::BF16 | DType::F32) {
        return Err(bad(
            String::new(),
            format!(
                "model dtype {} is not supported for quantized HF output (use bf16 or f32)",
                opts.dtype
            ),
        ));
    }
    if !(opts.activation_scale_ub.is_finite() && opts.activation_scale_ub > 0.0) {
        return Err(bad(
            String::new(),
            "activation scale upper bound must be positive".into(),
        ));
    }
    scheme
        .kind
        .check_options(scheme, opts)
        .map_err(|r| bad(String::new(), r))?;
    for id in roles(ckpt) {
        if treatment(id, scheme, opts, ckpt, skipped) {
            scheme.kind.check_module(scheme, opts, ckpt, id)?;
        }
    }
    Ok(())
}

/// An error of the whole run (no tensor named).
fn run_error(ckpt: &Checkpoint, reason: String) -> Error {
    Error::BadQuantization {
        path: ckpt.path.clone(),
        tensor: String::new(),
        reason,
    }
}

/// The scheme a run writes: `--scheme`'s, or for `--layout mlx` MLX's affine codes of the same
/// bits and group size.
fn effective_scheme(opts: &HfQuantOptions) -> std::result::Result<HfScheme, String> {
    match opts.layout {
        HfLayout::Mlx => mlx::from_options(opts),
        HfLayout::CompressedTensors | HfLayout::Fbgemm => Ok(opts.scheme),
    }
}

/// The compressed-tensors `quantization_config` of one config group (`format`, the `weights`
/// and `input_activations` arguments as `QuantizationArgs` serializes them), exactly as
/// compressed-tensors 0.20 / llm-compressor write it (keys sorted by [`sort_keys`]).
pub fn compressed_tensors_config(
    opts: &HfQuantOptions,
    not_converted: &[String],
    (format, weights, input): (&str, Value, Value),
) -> Value {
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
/// the effective scheme, the output's model config, the notes and the roles left unquantized.
fn prepare(
    ckpt: &Checkpoint,
    opts: &HfQuantOptions,
) -> Result<(HfScheme, ModelConfig, Vec<Note>, BTreeSet<TensorId>)> {
    let bad = |reason: String| Error::BadQuantization {
        path: ckpt.path.clone(),
        tensor: String::new(),
        reason,
    };
    if !(opts.numerics.max_abs.is_finite() && opts.numerics.max_abs > 0.0) {
        return Err(bad(format!(
            "the weight magnitude limit must be positive, not {}",
            opts.numerics.max_abs
        )));
    }
    let mut notes = qforge_convert::notes::from_reading(&ckpt.notes);
    let mut hf_cfg = ckpt.config.clone();
    let (rope_scaling, rope_notes) = target_rope_scaling(ckpt, "config.json")?;
    hf_cfg.rope_scaling = rope_scaling;
    notes.extend(rope_notes);
    qforge_convert::notes::gate(&notes, opts.output.allow_lossy)?;
    let scheme = effective_scheme(opts).map_err(bad)?;
    let mut skipped = scan_policy(ckpt, scheme, opts, &mut notes)?;
    skipped.extend(
        roles(ckpt)
            .into_iter()
            .filter(|&id| scheme.kind.leaves(scheme, id, shape2_cols(ckpt, id))),
    );
    preflight(ckpt, scheme, opts, &skipped)?;
    Ok((scheme, hf_cfg, notes, skipped))
}

/// Quantize any checkpoint into a Hugging Face directory with a quantized layout.
pub fn quantize_to_hf(
    ckpt: &Checkpoint,
    dest: &Path,
    opts: &HfQuantOptions,
) -> Result<QuantWritten> {
    let (scheme, hf_cfg, notes, skipped) = prepare(ckpt, opts)?;
    let cfg = &ckpt.config;
    let rope = rope_direction(&ckpt.config, ckpt.format, Format::Hf);
    let model_dtype = opts.dtype;
    let cx = Cx {
        src: fp4::Source {
            ckpt,
            rope,
            numerics: opts.numerics,
            arith: model_arith(model_dtype),
        },
        opts,
        scale_dtype: match opts.layout {
            HfLayout::CompressedTensors | HfLayout::Mlx => model_dtype,
            HfLayout::Fbgemm => DType::F32,
        },
        scheme,
        skipped: &skipped,
    };
    let mut quantized = Vec::new();
    let mut kept = Vec::new();
    let mut tensors: Vec<OutTensor<'_>> = Vec::new();
    let transform = opts.weight_transform.as_deref();
    for id in roles(ckpt) {
        let module = hf_module(id);
        // a MoE router is an nn.Linear kept in high precision: listed with the kept linears
        // (compressed-tensors `ignore`), as llm-compressor's MoE recipes ignore `mlp.gate`
        let linear = matches!(id, TensorId::Layer { kind, .. }
            if kind.is_linear() || kind == LayerTensor::Router)
            || id == TensorId::Output;
        if !treatment(id, scheme, opts, ckpt, &skipped) {
            if linear {
                kept.push(module.clone());
            }
            tensors.push(kept_tensor(ckpt, id, &module, model_dtype, rope, transform));
            continue;
        }
        tensors.extend(scheme.kind.tensors(scheme, &cx, id, &module)?);
        quantized.push(module);
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
        (scheme, opts),
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
    (scheme, opts): (HfScheme, &HfQuantOptions),
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
    scheme
        .kind
        .write_config(scheme, opts, &not_converted, &mut config);
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
