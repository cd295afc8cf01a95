//! [`ModelConfig`]: the hyper-parameters of a model of one of qforge's families
//! ([`crate::family`]), parsed and validated from HF `config.json`, Meta `params.json` or GGUF
//! metadata.

use std::path::Path;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{ConfigError, Error, Result};
use crate::family::{Family, WindowRule};
use crate::gguf::{GgufMetadata, GgufValue};
use crate::names::{FfnProj, LayerTensor, TensorId};

/// RoPE frequency scaling.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "rope_type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// Llama 3.1 scaling (`rope_type: "llama3"`).
    Llama3 {
        /// `factor` (8 for 3.1, 32 for 3.2 1B/3B)
        factor: f64,
        /// `low_freq_factor`
        low_freq_factor: f64,
        /// `high_freq_factor`
        high_freq_factor: f64,
        /// `original_max_position_embeddings`
        original_max_position_embeddings: u64,
    },
    /// Linear position interpolation.
    Linear {
        /// `factor`
        factor: f64,
    },
    /// YaRN (`rope_type`/`type: "yarn"`: Qwen2.5, Qwen3 long context): frequencies ramped
    /// between extrapolation and interpolation by `factor`, cos/sin scaled by the attention
    /// factor `1 + 0.1 ln factor` (transformers `_compute_yarn_parameters`; GGUF
    /// `rope.scaling.type = yarn`, `rope.scaling.factor`, `rope.scaling.original_context_length`).
    Yarn {
        /// `factor`
        factor: f64,
        /// `original_max_position_embeddings` (GGUF `rope.scaling.original_context_length`)
        original_max_position_embeddings: u64,
        /// `beta_fast` (GGUF `rope.scaling.yarn_beta_fast`); absent: 32
        #[serde(skip_serializing_if = "Option::is_none")]
        beta_fast: Option<f64>,
        /// `beta_slow` (GGUF `rope.scaling.yarn_beta_slow`); absent: 1
        #[serde(skip_serializing_if = "Option::is_none")]
        beta_slow: Option<f64>,
    },
}

/// YaRN settings qforge does not apply (transformers reads them, llama.cpp reads them
/// differently or not at all): a config with one of them is refused rather than computed wrong.
const YARN_UNSUPPORTED: &[&str] = &[
    "attention_factor",
    "mscale",
    "mscale_all_dim",
    "truncate",
    "extrapolation_factor",
];

/// Sliding-window attention: a query at position `i` sees keys `j` with `i − size < j ≤ i`
/// (transformers `sliding_window_overlay`), on layers `first_layer..`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SlidingWindow {
    /// Keys a query sees, itself included.
    pub size: u64,
    /// The first layer that slides (Mistral 0; Qwen `max_window_layers`).
    pub first_layer: u64,
}

/// The mixture of experts of a MoE family's blocks (transformers `MixtralConfig`,
/// `Qwen3MoeConfig`; GGUF `<arch>.expert_count`, `expert_used_count`,
/// `expert_feed_forward_length`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MoeConfig {
    /// Experts per MoE block (`num_local_experts` / `num_experts`).
    pub num_experts: u64,
    /// Experts each token is routed to (`num_experts_per_tok`).
    pub experts_per_tok: u64,
    /// One expert's FFN width (Mixtral `intermediate_size`, Qwen3-MoE `moe_intermediate_size`).
    pub expert_ffn: u64,
    /// Renormalise the top-k routing weights to sum 1 (Mixtral always; Qwen3-MoE
    /// `norm_topk_prob`).
    pub norm_topk_prob: bool,
    /// Blocks with a dense FFN of `intermediate_size` instead (Qwen3-MoE: `mlp_only_layers`,
    /// and the blocks `decoder_sparse_step` skips), ascending.
    pub dense_layers: Vec<u64>,
}

/// Llama 4's per-block attention (transformers 4.57 `Llama4TextConfig`, `Llama4TextAttention`;
/// llama.cpp `src/models/llama4.cpp`): RoPE blocks rotate q/k, L2-normalise them per head
/// (`use_qk_norm`, `Llama4TextL2Norm`: `x·rsqrt(mean(x²) + rms_norm_eps)`, no weight) and
/// attend within chunks; NoPE blocks do neither and scale q by the attention temperature.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Llama4Attention {
    /// Blocks without RoPE (`no_rope_layers[i] == 0`; default every
    /// `no_rope_layer_interval`-th, i.e. `(i + 1) % 4 == 0`), ascending.
    pub nope_layers: Vec<u64>,
    /// Blocks with chunked attention (`layer_types[i] == "chunked_attention"`; default the RoPE
    /// blocks), ascending.
    pub chunked_layers: Vec<u64>,
    /// `attention_chunk_size`: on a chunked block the query at `i` sees keys `j ≤ i` with
    /// `j / size == i / size` (transformers `masking_utils.chunked_overlay`).
    pub chunk_size: u64,
    /// `use_qk_norm`: the q/k L2 norm on RoPE blocks, after RoPE.
    pub qk_l2_norm: bool,
    /// `attn_temperature_tuning`: on NoPE blocks q is scaled by
    /// `log1p(floor((pos + 1) / floor_scale)) · attn_scale + 1`.
    pub temperature_tuning: bool,
    /// `floor_scale`.
    pub floor_scale: u64,
    /// `attn_scale`.
    pub attn_scale: f64,
}

impl Llama4Attention {
    /// What llama.cpp assumes of every `llama4` GGUF with experts (src/models/llama4.cpp
    /// `load_arch_hparams`: `n_swa` 8192 chunked on 3 of every 4 blocks, the 4th NoPE
    /// (`n_no_rope_layer_step` 4), `n_attn_temp_floor_scale` 8192, `f_attn_temp_scale` 0.1,
    /// `use_kq_norm` unless 128 experts); no GGUF key holds any of them.
    pub fn llama_cpp(num_layers: u64, num_experts: u64) -> Self {
        let nope: Vec<u64> = (0..num_layers).filter(|i| (i + 1) % 4 == 0).collect();
        Llama4Attention {
            chunked_layers: (0..num_layers).filter(|i| !nope.contains(i)).collect(),
            nope_layers: nope,
            chunk_size: 8192,
            qk_l2_norm: num_experts != 128,
            temperature_tuning: true,
            floor_scale: 8192,
            attn_scale: 0.1,
        }
    }

    /// Whether block `index` rotates q/k.
    pub fn rope(&self, index: u32) -> bool {
        !self.nope_layers.contains(&u64::from(index))
    }

    /// Whether block `index` attends within chunks.
    pub fn chunked(&self, index: u32) -> bool {
        self.chunked_layers.contains(&u64::from(index))
    }
}

/// Most experts a config may declare (Qwen3-MoE has 128, DeepSeek 256).
const MAX_EXPERTS: u64 = 1 << 12;

/// Hyper-parameters of a model. All counts are validated non-zero and consistent
/// (see [`ModelConfig::validate`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelConfig {
    /// Model family (the row of [`crate::family::FAMILIES`]).
    pub family: Family,
    /// Residual width.
    pub hidden_size: u64,
    /// Transformer blocks.
    pub num_layers: u64,
    /// Query heads.
    pub num_heads: u64,
    /// Key/value heads (grouped-query attention when fewer than `num_heads`).
    pub num_kv_heads: u64,
    /// Width of one head.
    pub head_dim: u64,
    /// FFN hidden width.
    pub intermediate_size: u64,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: u64,
    /// RoPE base θ.
    pub rope_theta: f64,
    /// RoPE scaling, if any.
    pub rope_scaling: Option<RopeScaling>,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Context length the model was trained for.
    pub max_position_embeddings: u64,
    /// True when the LM head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Beginning-of-sequence token.
    pub bos_token_id: Option<u64>,
    /// End-of-sequence tokens (instruct models have several).
    pub eos_token_ids: Vec<u64>,
    /// Meta `ffn_dim_multiplier`, kept to write `params.json` back.
    pub ffn_dim_multiplier: Option<f64>,
    /// Meta `multiple_of`, kept to write `params.json` back.
    pub multiple_of: Option<u64>,
    /// Sliding-window attention, where the config sets one.
    pub sliding_window: Option<SlidingWindow>,
    /// The mixture of experts, for the MoE families.
    pub moe: Option<MoeConfig>,
    /// Llama 4's per-block attention, for Llama 4.
    pub llama4: Option<Llama4Attention>,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Limits far above any real Llama model, so that hostile configs cannot make later code
/// allocate without bound or overflow.
const MAX_WIDTH: u64 = 1 << 20;
const MAX_LAYERS: u64 = 4096;
const MAX_VOCAB: u64 = 1 << 24;
/// A context length GGUF can hold (`rope.scaling.original_context_length` is a `u32`).
const MAX_CONTEXT: u64 = u32::MAX as u64;

/// Meta's FFN width rule (specs/meta.md §1.2): `h = floor(8·dim/3)`, optionally
/// `h = floor(mult·h)`, rounded up to a multiple of `multiple_of`.
///
/// Computed in 128-bit integers and saturated to `u64::MAX`, so a hostile `dim` or
/// `multiple_of` cannot overflow; the width limits reject the result afterwards.
pub fn meta_ffn_dim(dim: u64, multiplier: Option<f64>, multiple_of: u64) -> u64 {
    let mut h = u128::from(dim) * 8 / 3;
    if let Some(m) = multiplier {
        // `as` saturates a too-large float
        h = u128::from((m * h as f64).floor() as u64);
    }
    let m = u128::from(multiple_of.max(1));
    u64::try_from(h.div_ceil(m) * m).unwrap_or(u64::MAX)
}

struct Obj<'a>(&'a Map<String, Value>);

impl Obj<'_> {
    fn get(&self, k: &str) -> Option<&Value> {
        self.0.get(k).filter(|v| !v.is_null())
    }
    fn u64(&self, k: &'static str) -> std::result::Result<Option<u64>, ConfigError> {
        self.get(k)
            .map(|v| {
                v.as_u64()
                    .ok_or_else(|| invalid(k, format!("expected a non-negative integer, got {v}")))
            })
            .transpose()
    }
    fn req_u64(&self, k: &'static str) -> std::result::Result<u64, ConfigError> {
        self.u64(k)?.ok_or(ConfigError::Missing(k))
    }
    fn f64(&self, k: &'static str) -> std::result::Result<Option<f64>, ConfigError> {
        self.get(k)
            .map(|v| {
                v.as_f64()
                    .ok_or_else(|| invalid(k, format!("expected a number, got {v}")))
            })
            .transpose()
    }
    fn bool(&self, k: &'static str) -> std::result::Result<Option<bool>, ConfigError> {
        self.get(k)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| invalid(k, format!("expected a boolean, got {v}")))
            })
            .transpose()
    }
    fn str(&self, k: &'static str) -> std::result::Result<Option<&str>, ConfigError> {
        self.get(k)
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| invalid(k, format!("expected a string, got {v}")))
            })
            .transpose()
    }
    /// An id or a list of ids.
    fn ids(&self, k: &'static str) -> std::result::Result<Vec<u64>, ConfigError> {
        match self.get(k) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_u64().ok_or_else(|| invalid(k, "expected token ids")))
                .collect(),
            Some(v) => Ok(vec![v
                .as_u64()
                .ok_or_else(|| invalid(k, "expected a token id"))?]),
        }
    }
}

fn parse_json_object(text: &str) -> std::result::Result<Map<String, Value>, ConfigError> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ConfigError::Json("top level is not an object".into())),
        Err(e) => Err(ConfigError::Json(e.to_string())),
    }
}

/// The HF `model_type` of Meta's multimodal Llama 4 checkpoints
/// (`Llama4ForConditionalGeneration`, transformers `Llama4Config`).
const LLAMA4_WRAPPER_MODEL_TYPE: &str = "llama4";

/// The text model's keys of a `config.json`: a `Llama4ForConditionalGeneration` config (model
/// type `llama4`) keeps the text model's under `text_config` (and the vision encoder's under
/// `vision_config`, not read). Merged over the top level, the text model's keys winning, as
/// `convert_hf_to_gguf.py` does (conversion/base.py `TextModel.__init__`:
/// `{**hparams, **hparams["text_config"]}`); the vision settings are dropped. Any other config
/// is returned as it is.
fn text_model_config(
    mut m: Map<String, Value>,
) -> std::result::Result<Map<String, Value>, ConfigError> {
    if m.get("model_type").and_then(Value::as_str) != Some(LLAMA4_WRAPPER_MODEL_TYPE) {
        return Ok(m);
    }
    let text = match m.remove("text_config") {
        Some(Value::Object(t)) => t,
        Some(_) => return Err(invalid("text_config", "not an object")),
        None => return Err(ConfigError::Missing("text_config")),
    };
    for k in ["model_type", "architectures", "vision_config"] {
        m.remove(k);
    }
    m.extend(text);
    Ok(m)
}

fn parse_rope_scaling(
    o: &Obj<'_>,
    field: &'static str,
) -> std::result::Result<Option<RopeScaling>, ConfigError> {
    let Some(v) = o.get(field) else {
        return Ok(None);
    };
    let Value::Object(m) = v else {
        return Err(invalid(field, "expected an object"));
    };
    let r = Obj(m);
    let kind = match r.str("rope_type")? {
        Some(t) => t,
        None => r.str("type")?.unwrap_or("default"),
    };
    match kind {
        "default" => Ok(None),
        "llama3" => Ok(Some(RopeScaling::Llama3 {
            factor: r
                .f64("factor")?
                .ok_or(ConfigError::Missing("rope_scaling.factor"))?,
            low_freq_factor: r.f64("low_freq_factor")?.unwrap_or(1.0),
            high_freq_factor: r.f64("high_freq_factor")?.unwrap_or(4.0),
            original_max_position_embeddings: r
                .u64("original_max_position_embeddings")?
                .unwrap_or(8192),
        })),
        "linear" => Ok(Some(RopeScaling::Linear {
            factor: r
                .f64("factor")?
                .ok_or(ConfigError::Missing("rope_scaling.factor"))?,
        })),
        "yarn" => {
            if let Some(k) = YARN_UNSUPPORTED.iter().find(|k| r.get(k).is_some()) {
                return Err(invalid(
                    field,
                    format!("yarn with {k} is not supported (factor, original_max_position_embeddings, beta_fast and beta_slow are)"),
                ));
            }
            Ok(Some(RopeScaling::Yarn {
                factor: r
                    .f64("factor")?
                    .ok_or(ConfigError::Missing("rope_scaling.factor"))?,
                original_max_position_embeddings: r
                    .u64("original_max_position_embeddings")?
                    .ok_or(ConfigError::Missing(
                        "rope_scaling.original_max_position_embeddings",
                    ))?,
                beta_fast: r.f64("beta_fast")?,
                beta_slow: r.f64("beta_slow")?,
            }))
        }
        other => Err(invalid(
            field,
            format!("unsupported rope_type {other:?} (llama3, linear, yarn and default are)"),
        )),
    }
}

impl ModelConfig {
    /// Parse a Hugging Face `config.json` (transformers 4.x `rope_scaling` and 5.x
    /// `rope_parameters` forms both accepted).
    pub fn from_hf_json(text: &str) -> std::result::Result<Self, ConfigError> {
        let m = text_model_config(parse_json_object(text)?)?;
        let o = Obj(&m);
        let model_type = o
            .str("model_type")?
            .ok_or(ConfigError::Missing("model_type"))?;
        let family = Family::from_model_type(model_type)
            .ok_or_else(|| ConfigError::Architecture(model_type.to_owned()))?;
        let spec = family.spec();
        let hidden_size = o.req_u64("hidden_size")?;
        let num_heads = o.req_u64("num_attention_heads")?;
        let explicit_head_dim = o.u64("head_dim")?.filter(|_| spec.hf_head_dim);
        let head_dim =
            explicit_head_dim.unwrap_or_else(|| implied_head_dim(hidden_size, num_heads));
        // q/k/v/o biases: a family has them or not (transformers' `attention_bias` switches
        // them for Llama and Qwen3; no released checkpoint of those sets it).
        if let Some(true) = o.bool("attention_bias")? {
            if !spec.qkv_bias {
                return Err(unsupported(family, "attention_bias: true"));
            }
        }
        if o.bool("mlp_bias")? == Some(true) {
            return Err(unsupported(family, "mlp_bias: true"));
        }
        if let Some(act) = o.str("hidden_act")? {
            if act != spec.activation {
                return Err(unsupported(family, format!("hidden_act {act:?}")));
            }
        }
        let mut rope_theta = o.f64("rope_theta")?;
        let mut rope_scaling = parse_rope_scaling(&o, "rope_scaling")?;
        if let Some(Value::Object(p)) = o.get("rope_parameters") {
            let p = Obj(p);
            rope_theta = rope_theta.or(p.f64("rope_theta")?);
            if rope_scaling.is_none() {
                rope_scaling = parse_rope_scaling(&o, "rope_parameters")?;
            }
        }
        check_rope_scaling(family, rope_scaling.as_ref())?;
        let num_layers = o.req_u64("num_hidden_layers")?;
        let cfg = ModelConfig {
            family,
            hidden_size,
            num_layers,
            num_heads,
            num_kv_heads: o.u64("num_key_value_heads")?.unwrap_or(num_heads),
            head_dim,
            // Llama4TextConfig: the dense blocks' width is intermediate_size_mlp
            intermediate_size: o.req_u64(if family == Family::Llama4 {
                "intermediate_size_mlp"
            } else {
                "intermediate_size"
            })?,
            vocab_size: o.req_u64("vocab_size")?,
            rope_theta: rope_theta.unwrap_or(10000.0),
            rope_scaling,
            rms_norm_eps: o.f64("rms_norm_eps")?.unwrap_or(1e-6),
            max_position_embeddings: o.u64("max_position_embeddings")?.unwrap_or(2048),
            tie_word_embeddings: o.bool("tie_word_embeddings")?.unwrap_or(spec.tie_default),
            bos_token_id: o.u64("bos_token_id")?,
            eos_token_ids: o.ids("eos_token_id")?,
            ffn_dim_multiplier: None,
            multiple_of: None,
            sliding_window: parse_window(&o, family, num_layers)?,
            moe: parse_moe(&o, family, num_layers)?,
            llama4: parse_llama4(&o, family, num_layers)?,
        };
        cfg.validate()?;
        cfg.check_implied_head_dim(explicit_head_dim.is_some())?;
        Ok(cfg)
    }

    /// Parse a Meta `params.json`. `vocab_from_tensors` is the embedding's row count, used when
    /// the file says `vocab_size: -1` (Llama 2) or omits it.
    pub fn from_meta_params(
        text: &str,
        vocab_from_tensors: Option<u64>,
    ) -> std::result::Result<Self, ConfigError> {
        let m = parse_json_object(text)?;
        let o = Obj(&m);
        let dim = o.req_u64("dim")?;
        let num_heads = o.req_u64("n_heads")?;
        let multiple_of = o.u64("multiple_of")?.unwrap_or(256);
        if multiple_of == 0 {
            return Err(invalid("multiple_of", "must be positive"));
        }
        let ffn_dim_multiplier = o.f64("ffn_dim_multiplier")?;
        if let Some(mult) = ffn_dim_multiplier {
            if !(mult.is_finite() && mult > 0.0 && mult < 64.0) {
                return Err(invalid(
                    "ffn_dim_multiplier",
                    format!("{mult} is out of range"),
                ));
            }
        }
        let vocab_size = match o.get("vocab_size").and_then(Value::as_i64) {
            Some(v) if v > 0 => v as u64,
            _ => vocab_from_tensors.ok_or(ConfigError::Missing("vocab_size"))?,
        };
        let use_scaled_rope = o.bool("use_scaled_rope")?.unwrap_or(false);
        // llama-models: Llama 3 (models/llama3/model.py apply_scaling) fixes factor 8 and
        // high_freq_factor 4; Llama 4 (models/llama4/args.py ModelArgs) reads them as
        // rope_scaling_factor and rope_high_freq_factor. Both fix low_freq_factor 1 and
        // old_context_len 8192.
        let positive = |k: &'static str, default: f64| match o.f64(k)? {
            None => Ok(default),
            Some(v) if v.is_finite() && v > 0.0 => Ok(v),
            Some(v) => Err(invalid(k, format!("{v} is not a positive number"))),
        };
        let factor = positive("rope_scaling_factor", 8.0)?;
        let high_freq_factor = positive("rope_high_freq_factor", 4.0)?;
        let rope_scaling = use_scaled_rope.then_some(RopeScaling::Llama3 {
            factor,
            low_freq_factor: 1.0,
            high_freq_factor,
            original_max_position_embeddings: 8192,
        });
        // params.json carries no context length. Meta's releases: Llama 3.1 (scaled rope)
        // 131072, Llama 3 8192, Llama 2 (32000-token vocab) 4096.
        let max_position_embeddings = match o.u64("max_seq_len")? {
            Some(n) => n,
            None if use_scaled_rope => 131_072,
            None if vocab_size >= 128_000 => 8192,
            None => 4096,
        };
        let cfg = ModelConfig {
            family: Family::Llama,
            hidden_size: dim,
            num_layers: o.req_u64("n_layers")?,
            num_heads,
            num_kv_heads: o.u64("n_kv_heads")?.unwrap_or(num_heads),
            head_dim: dim.checked_div(num_heads).unwrap_or(0),
            intermediate_size: meta_ffn_dim(dim, ffn_dim_multiplier, multiple_of),
            vocab_size,
            rope_theta: o.f64("rope_theta")?.unwrap_or(10000.0),
            rope_scaling,
            rms_norm_eps: o.f64("norm_eps")?.unwrap_or(1e-5),
            max_position_embeddings,
            tie_word_embeddings: false,
            bos_token_id: None,
            eos_token_ids: Vec::new(),
            ffn_dim_multiplier,
            multiple_of: Some(multiple_of),
            sliding_window: None,
            moe: None,
            llama4: None,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Build from GGUF metadata. `has_output` says whether an `output.weight` tensor exists
    /// (tied embeddings otherwise); `vocab_from_tensors` is `token_embd`'s row count.
    pub fn from_gguf(
        meta: &GgufMetadata,
        has_output: bool,
        vocab_from_tensors: Option<u64>,
    ) -> std::result::Result<Self, ConfigError> {
        let arch = match meta.get("general.architecture") {
            Some(GgufValue::String(s)) => s.clone(),
            Some(_) => return Err(invalid("general.architecture", "expected a string")),
            None => return Err(ConfigError::Missing("general.architecture")),
        };
        let experts_key = format!("{arch}.expert_count");
        let family = Family::from_gguf(&arch, meta.get(&experts_key).is_some())
            .ok_or_else(|| ConfigError::Architecture(arch.clone()))?;
        let k = GgufKeys { meta, family };
        let (key, missing) = (|n: &str| k.key(n), |n: &str| k.missing(n));
        let (int, float) = (|n: &'static str| k.int(n), |n: &'static str| k.float(n));
        let hidden_size = int("embedding_length")?.ok_or_else(|| missing("embedding_length"))?;
        let num_heads =
            int("attention.head_count")?.ok_or_else(|| missing("attention.head_count"))?;
        let explicit_head_dim = int("attention.key_length")?;
        let head_dim =
            explicit_head_dim.unwrap_or_else(|| implied_head_dim(hidden_size, num_heads));
        if let Some(v) = int("attention.value_length")? {
            if v != head_dim {
                return Err(ConfigError::Inconsistent(format!(
                    "{} {v} differs from head_dim {head_dim}",
                    key("attention.value_length")
                )));
            }
        }
        if let Some(rot) = int("rope.dimension_count")? {
            if rot != head_dim {
                return Err(ConfigError::Inconsistent(format!(
                    "{} {rot} differs from head_dim {head_dim}",
                    key("rope.dimension_count")
                )));
            }
        }
        let tokens = match meta.get("tokenizer.ggml.tokens") {
            Some(GgufValue::Array(v)) => Some(v.len() as u64),
            _ => None,
        };
        let vocab_size = int("vocab_size")?
            .or(tokens)
            .or(vocab_from_tensors)
            .ok_or_else(|| missing("vocab_size"))?;
        let rope_scaling = k.rope_scaling()?;
        let tok_id = |k: &str| meta.get(k).and_then(GgufValue::as_u64);
        let mut cfg = ModelConfig {
            family,
            hidden_size,
            num_layers: int("block_count")?.ok_or_else(|| missing("block_count"))?,
            num_heads,
            num_kv_heads: int("attention.head_count_kv")?.unwrap_or(num_heads),
            head_dim,
            intermediate_size: int("feed_forward_length")?
                .ok_or_else(|| missing("feed_forward_length"))?,
            vocab_size,
            rope_theta: float("rope.freq_base")?.unwrap_or(10000.0),
            rope_scaling,
            rms_norm_eps: float("attention.layer_norm_rms_epsilon")?
                .ok_or_else(|| missing("attention.layer_norm_rms_epsilon"))?,
            max_position_embeddings: int("context_length")?
                .ok_or_else(|| missing("context_length"))?,
            tie_word_embeddings: !has_output,
            bos_token_id: tok_id("tokenizer.ggml.bos_token_id"),
            eos_token_ids: tok_id("tokenizer.ggml.eos_token_id").into_iter().collect(),
            ffn_dim_multiplier: None,
            multiple_of: None,
            // llama.cpp's llama, qwen2 and qwen3 graphs attend over the whole context
            // (src/models/{llama,qwen2,qwen3}.cpp read no sliding-window key).
            sliding_window: None,
            moe: k.moe()?,
            llama4: None,
        };
        if family == Family::Llama4 {
            cfg.llama4 = Some(k.llama4(&mut cfg)?);
        }
        cfg.validate()?;
        cfg.check_implied_head_dim(explicit_head_dim.is_some())?;
        Ok(cfg)
    }

    /// A head width the config does not name is `hidden_size / num_heads`, which must divide.
    fn check_implied_head_dim(&self, explicit: bool) -> std::result::Result<(), ConfigError> {
        if !explicit && self.head_dim * self.num_heads != self.hidden_size {
            return Err(ConfigError::Inconsistent(format!(
                "head_dim {} × {} heads ≠ hidden_size {}",
                self.head_dim, self.num_heads, self.hidden_size
            )));
        }
        Ok(())
    }

    /// Check that every count is positive and bounded and that the fields agree with each other.
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        let bounded = |field: &'static str, v: u64, max: u64| {
            if v == 0 || v > max {
                Err(invalid(field, format!("{v} is outside 1..={max}")))
            } else {
                Ok(())
            }
        };
        bounded("hidden_size", self.hidden_size, MAX_WIDTH)?;
        bounded("num_layers", self.num_layers, MAX_LAYERS)?;
        bounded("num_heads", self.num_heads, MAX_WIDTH)?;
        bounded("num_kv_heads", self.num_kv_heads, MAX_WIDTH)?;
        bounded("head_dim", self.head_dim, MAX_WIDTH)?;
        bounded("intermediate_size", self.intermediate_size, MAX_WIDTH)?;
        bounded("vocab_size", self.vocab_size, MAX_VOCAB)?;
        if self.num_heads % self.num_kv_heads != 0 {
            return Err(ConfigError::Inconsistent(format!(
                "{} heads is not a multiple of {} key/value heads",
                self.num_heads, self.num_kv_heads
            )));
        }
        if self.head_dim % 2 != 0 {
            return Err(ConfigError::Inconsistent(format!(
                "head_dim {} is odd; RoPE needs pairs",
                self.head_dim
            )));
        }
        // head_dim is free where the family's config names it (Qwen3: 128 × 16 heads with
        // hidden 1024); otherwise it is hidden_size / num_heads.
        if !self.family.spec().hf_head_dim && self.head_dim * self.num_heads != self.hidden_size {
            return Err(ConfigError::Inconsistent(format!(
                "head_dim {} × {} heads ≠ hidden_size {}",
                self.head_dim, self.num_heads, self.hidden_size
            )));
        }
        if let Some(w) = self.sliding_window {
            if w.size == 0 {
                return Err(invalid("sliding_window", "must be positive"));
            }
        }
        check_rope_scaling(self.family, self.rope_scaling.as_ref())?;
        if self.family.spec().moe.is_some() != self.moe.is_some() {
            return Err(ConfigError::Inconsistent(format!(
                "{} with{} a mixture of experts",
                self.family,
                if self.moe.is_some() { "" } else { "out" }
            )));
        }
        if let Some(m) = &self.moe {
            bounded("num_experts", m.num_experts, MAX_EXPERTS)?;
            bounded("num_experts_per_tok", m.experts_per_tok, m.num_experts)?;
            bounded("moe_intermediate_size", m.expert_ffn, MAX_WIDTH)?;
            if m.dense_layers.iter().any(|&l| l >= self.num_layers)
                || m.dense_layers.windows(2).any(|w| w[0] >= w[1])
            {
                return Err(invalid(
                    "mlp_only_layers",
                    format!(
                        "{:?} is not an ascending list of layers below {}",
                        m.dense_layers, self.num_layers
                    ),
                ));
            }
        }
        for (field, v) in [
            ("rope_theta", self.rope_theta),
            ("rms_norm_eps", self.rms_norm_eps),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(invalid(
                    field,
                    format!("{v} must be a positive finite number"),
                ));
            }
        }
        Ok(())
    }

    /// The shape (outermost first, `[out, in]` for linears) this config implies for a tensor's
    /// `weight`.
    pub fn expected_shape(&self, id: TensorId) -> Vec<u64> {
        let (d, q, kv, f) = (
            self.hidden_size,
            self.num_heads * self.head_dim,
            self.num_kv_heads * self.head_dim,
            self.intermediate_size,
        );
        match id {
            TensorId::TokenEmbedding | TensorId::Output => vec![self.vocab_size, d],
            TensorId::OutputNorm => vec![d],
            TensorId::RopeFreqs => vec![self.head_dim / 2],
            TensorId::Layer { kind, .. } => match kind {
                LayerTensor::AttnNorm | LayerTensor::FfnNorm => vec![d],
                LayerTensor::QNorm | LayerTensor::KNorm => vec![self.head_dim],
                LayerTensor::QBias => vec![q],
                LayerTensor::KBias | LayerTensor::VBias => vec![kv],
                LayerTensor::Q => vec![q, d],
                LayerTensor::K | LayerTensor::V => vec![kv, d],
                LayerTensor::O => vec![d, q],
                LayerTensor::Gate | LayerTensor::Up => vec![f, d],
                LayerTensor::Down => vec![d, f],
                LayerTensor::Router => {
                    vec![self.moe.as_ref().map_or(0, |m| m.num_experts), d]
                }
                LayerTensor::Expert { proj, .. } | LayerTensor::SharedExpert { proj } => {
                    let e = self.moe.as_ref().map_or(0, |m| m.expert_ffn);
                    match proj {
                        FfnProj::Gate | FfnProj::Up => vec![e, d],
                        FfnProj::Down => vec![d, e],
                    }
                }
            },
        }
    }

    /// Whether block `index` is a mixture of experts.
    pub fn is_moe_layer(&self, index: u32) -> bool {
        self.moe
            .as_ref()
            .is_some_and(|m| !m.dense_layers.contains(&u64::from(index)))
    }

    /// The tensors block `index` has: the family's dense set, where a mixture-of-experts block
    /// has the router and every expert's gate/up/down (expert-major) instead of the dense FFN.
    pub fn layer_tensors(&self, index: u32) -> Vec<LayerTensor> {
        let dense = self.family.layer_tensors();
        let Some(m) = self.moe.as_ref().filter(|_| self.is_moe_layer(index)) else {
            return dense;
        };
        let mut v: Vec<LayerTensor> = dense
            .into_iter()
            .filter(|k| !matches!(k, LayerTensor::Gate | LayerTensor::Up | LayerTensor::Down))
            .collect();
        v.push(LayerTensor::Router);
        if self.family.spec().moe.is_some_and(|s| s.shared_expert) {
            v.extend(
                FfnProj::ALL
                    .into_iter()
                    .map(|proj| LayerTensor::SharedExpert { proj }),
            );
        }
        for expert in 0..u32::try_from(m.num_experts).unwrap_or(0) {
            v.extend(
                FfnProj::ALL
                    .into_iter()
                    .map(|proj| LayerTensor::Expert { expert, proj }),
            );
        }
        v
    }

    /// Parameter count implied by the config (weights only).
    pub fn parameter_count(&self) -> u64 {
        let mut ids = vec![TensorId::TokenEmbedding, TensorId::OutputNorm];
        if !self.tie_word_embeddings {
            ids.push(TensorId::Output);
        }
        let layers: u64 = (0..u32::try_from(self.num_layers).unwrap_or(u32::MAX))
            .flat_map(|index| {
                self.layer_tensors(index)
                    .into_iter()
                    .map(move |kind| TensorId::Layer { index, kind })
            })
            .map(|id| self.expected_shape(id).iter().product::<u64>())
            .sum();
        ids.iter()
            .map(|&id| self.expected_shape(id).iter().product::<u64>())
            .sum::<u64>()
            + layers
    }
}

fn unsupported(family: Family, reason: impl Into<String>) -> ConfigError {
    ConfigError::Unsupported {
        family: family.name(),
        reason: reason.into(),
    }
}

/// `hidden_size / num_heads` (0 for no heads: [`ModelConfig::validate`] names the count).
fn implied_head_dim(hidden: u64, heads: u64) -> u64 {
    hidden.checked_div(heads).unwrap_or(0)
}

/// RoPE scaling the family's forward (and llama.cpp's) applies.
fn check_rope_scaling(
    family: Family,
    s: Option<&RopeScaling>,
) -> std::result::Result<(), ConfigError> {
    let kind = match s {
        None => return Ok(()),
        Some(RopeScaling::Llama3 { .. }) => "llama3",
        Some(RopeScaling::Linear { .. }) => "linear",
        Some(RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            beta_fast,
            beta_slow,
        }) => {
            let positive = |x: f64| x.is_finite() && x > 0.0;
            if !positive(*factor) {
                return Err(invalid(
                    "rope_scaling.factor",
                    format!("{factor} is not positive"),
                ));
            }
            if *original_max_position_embeddings == 0
                || *original_max_position_embeddings > MAX_CONTEXT
            {
                return Err(invalid(
                    "rope_scaling.original_max_position_embeddings",
                    format!("{original_max_position_embeddings} is outside 1..={MAX_CONTEXT}"),
                ));
            }
            for (k, b) in [
                ("rope_scaling.beta_fast", beta_fast),
                ("rope_scaling.beta_slow", beta_slow),
            ] {
                if let Some(b) = b.filter(|b| !positive(*b)) {
                    return Err(invalid(k, format!("{b} is not positive")));
                }
            }
            "yarn"
        }
    };
    if family.spec().rope_scalings.contains(&kind) {
        Ok(())
    } else {
        Err(unsupported(family, format!("rope_type {kind:?}")))
    }
}

/// The sliding window a family's `config.json` sets ([`WindowRule`]).
fn parse_window(
    o: &Obj<'_>,
    family: Family,
    num_layers: u64,
) -> std::result::Result<Option<SlidingWindow>, ConfigError> {
    let size = || o.u64("sliding_window");
    match family.spec().window {
        WindowRule::None => Ok(None),
        WindowRule::EveryLayer => Ok(size()?.map(|size| SlidingWindow {
            size,
            first_layer: 0,
        })),
        WindowRule::QwenLayers => {
            if o.bool("use_sliding_window")? != Some(true) {
                return Ok(None);
            }
            let Some(size) = size()? else {
                return Ok(None);
            };
            // transformers Qwen2Config: layer_types[i] = sliding iff i >= max_window_layers
            let first_layer = match o.get("layer_types") {
                Some(Value::Array(types)) => {
                    let sliding: Vec<bool> = types
                        .iter()
                        .map(|t| t.as_str() == Some("sliding_attention"))
                        .collect();
                    let first = sliding.iter().position(|&s| s).unwrap_or(sliding.len()) as u64;
                    if sliding.len() as u64 != num_layers
                        || sliding.iter().skip(first as usize).any(|&s| !s)
                    {
                        return Err(unsupported(
                            family,
                            "layer_types other than full layers followed by sliding ones",
                        ));
                    }
                    first
                }
                _ => o.u64("max_window_layers")?.unwrap_or(28),
            };
            Ok((first_layer < num_layers).then_some(SlidingWindow { size, first_layer }))
        }
    }
}

/// A MoE family's experts from `config.json` (transformers `MixtralConfig`,
/// `Qwen3MoeConfig`; the dense blocks as `Qwen3MoeDecoderLayer.__init__` decides them: block
/// `i` is sparse iff `i ∉ mlp_only_layers` and `(i + 1) % decoder_sparse_step == 0`).
fn parse_moe(
    o: &Obj<'_>,
    family: Family,
    num_layers: u64,
) -> std::result::Result<Option<MoeConfig>, ConfigError> {
    let Some(spec) = family.spec().moe else {
        return Ok(None);
    };
    // transformers 5's `Qwen3MoeConfig` maps `num_experts` to `num_local_experts`
    // (configuration_qwen3_moe.py `attribute_map`) and saves it under that name
    let num_experts = match (o.u64(spec.hf_experts_key)?, o.u64("num_local_experts")?) {
        (Some(a), Some(b)) if a != b => {
            return Err(ConfigError::Inconsistent(format!(
                "{} {a} but num_local_experts {b}",
                spec.hf_experts_key
            )))
        }
        (Some(a), _) | (None, Some(a)) => a,
        (None, None) => return Err(ConfigError::Missing(spec.hf_experts_key)),
    };
    let experts_per_tok = o.req_u64("num_experts_per_tok")?;
    let expert_ffn = o.req_u64(spec.hf_expert_ffn_key)?;
    let norm_topk_prob = spec.always_norm_topk || o.bool("norm_topk_prob")?.unwrap_or(false);
    let mut dense_layers = Vec::new();
    if family == Family::Llama4 {
        // Llama4TextConfig: moe_layers, default every interleave_moe_layer_step-th block
        // (range(step - 1, n, step)); llama.cpp: (i + 1) % n_moe_layer_step == 0
        let step = o.u64("interleave_moe_layer_step")?.unwrap_or(1);
        if step == 0 {
            return Err(invalid("interleave_moe_layer_step", "must be positive"));
        }
        let moe_layers = match o.get("moe_layers") {
            Some(Value::Array(_)) => o.ids("moe_layers")?,
            _ => (0..num_layers.min(MAX_LAYERS))
                .filter(|i| (i + 1) % step == 0)
                .collect(),
        };
        dense_layers = (0..num_layers.min(MAX_LAYERS))
            .filter(|i| !moe_layers.contains(i))
            .collect();
    } else if spec.dense_layers {
        let step = o.u64("decoder_sparse_step")?.unwrap_or(1);
        if step == 0 {
            return Err(invalid("decoder_sparse_step", "must be positive"));
        }
        let only = o.ids("mlp_only_layers")?;
        dense_layers = (0..num_layers.min(MAX_LAYERS))
            .filter(|i| only.contains(i) || (i + 1) % step != 0)
            .collect();
    } else if o.get("mlp_only_layers").is_some() || o.get("decoder_sparse_step").is_some() {
        return Err(unsupported(family, "dense blocks (mlp_only_layers)"));
    }
    Ok(Some(MoeConfig {
        num_experts,
        experts_per_tok,
        expert_ffn,
        norm_topk_prob,
        dense_layers,
    }))
}

/// Llama 4's per-block attention from `config.json` (transformers 4.57 `Llama4TextConfig.__init__`:
/// `no_rope_layers` default `[(i + 1) % no_rope_layer_interval != 0]`, `layer_types` default
/// chunked on the RoPE blocks, full on the NoPE ones).
fn parse_llama4(
    o: &Obj<'_>,
    family: Family,
    num_layers: u64,
) -> std::result::Result<Option<Llama4Attention>, ConfigError> {
    if family != Family::Llama4 {
        return Ok(None);
    }
    let n = num_layers.min(MAX_LAYERS);
    let interval = o.u64("no_rope_layer_interval")?.unwrap_or(4);
    if interval == 0 {
        return Err(invalid("no_rope_layer_interval", "must be positive"));
    }
    let flags = o.ids("no_rope_layers")?;
    let rope: Vec<bool> = if flags.is_empty() {
        (0..n).map(|i| (i + 1) % interval != 0).collect()
    } else {
        if (flags.len() as u64) < n || flags.iter().any(|&f| f > 1) {
            return Err(invalid(
                "no_rope_layers",
                format!("needs a 0 or 1 for each of the {n} layers"),
            ));
        }
        flags.iter().take(n as usize).map(|&f| f == 1).collect()
    };
    let nope_layers: Vec<u64> = (0..n).filter(|&i| !rope[i as usize]).collect();
    let chunked_layers: Vec<u64> = match o.get("layer_types") {
        Some(Value::Array(types)) => {
            if types.len() as u64 != n {
                return Err(invalid(
                    "layer_types",
                    format!("{} entries for {n} layers", types.len()),
                ));
            }
            let mut v = Vec::new();
            for (i, t) in types.iter().enumerate() {
                match t.as_str() {
                    Some("chunked_attention") => v.push(i as u64),
                    Some("full_attention") => {}
                    _ => {
                        return Err(unsupported(family, format!("layer_types entry {t}")));
                    }
                }
            }
            v
        }
        _ => (0..n).filter(|&i| rope[i as usize]).collect(),
    };
    let chunk_size = o.u64("attention_chunk_size")?.unwrap_or(8192);
    let floor_scale = o.u64("floor_scale")?.unwrap_or(8192);
    let attn_scale = o.f64("attn_scale")?.unwrap_or(0.1);
    if chunk_size == 0 || floor_scale == 0 || !attn_scale.is_finite() {
        return Err(invalid(
            "attention_chunk_size",
            "attention_chunk_size and floor_scale must be positive, attn_scale finite",
        ));
    }
    Ok(Some(Llama4Attention {
        nope_layers,
        chunked_layers,
        chunk_size,
        qk_l2_norm: o.bool("use_qk_norm")?.unwrap_or(true),
        temperature_tuning: o.bool("attn_temperature_tuning")?.unwrap_or(true),
        floor_scale,
        attn_scale,
    }))
}

/// Read a config file and wrap parse errors with its path.
pub(crate) fn read_json_config<T>(
    path: &Path,
    parse: impl FnOnce(&str) -> std::result::Result<T, ConfigError>,
) -> Result<T> {
    // Configs are small; refuse anything that is clearly not one rather than reading it whole.
    const MAX_CONFIG_BYTES: u64 = 16 << 20;
    let len = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    if len > MAX_CONFIG_BYTES {
        return Err(Error::Config {
            path: path.into(),
            kind: ConfigError::Json(format!("{len} bytes is too large for a config file")),
        });
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse(&text).map_err(|kind| Error::Config {
        path: path.into(),
        kind,
    })
}

/// A GGUF file's metadata read through one family's key prefix (`{arch}.…`).
struct GgufKeys<'a> {
    meta: &'a GgufMetadata,
    family: Family,
}

impl GgufKeys<'_> {
    fn key(&self, k: &str) -> String {
        self.family.gguf_key(k)
    }

    fn missing(&self, k: &str) -> ConfigError {
        ConfigError::MissingKey(self.key(k))
    }

    fn int(&self, k: &'static str) -> std::result::Result<Option<u64>, ConfigError> {
        match self.meta.get(&self.key(k)) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| invalid(k, "expected a non-negative integer")),
        }
    }

    fn float(&self, k: &'static str) -> std::result::Result<Option<f64>, ConfigError> {
        match self.meta.get(&self.key(k)) {
            None => Ok(None),
            // An f32 key holds what a writer rounded from a decimal (1e-5 becomes
            // 9.99999974e-6); take the shortest decimal that rounds to the same f32, so
            // config.json says 1e-05 as the original did and writing GGUF back is exact.
            Some(GgufValue::F32(x)) => Ok(Some(x.to_string().parse().unwrap_or(f64::from(*x)))),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| invalid(k, "expected a number")),
        }
    }

    /// `rope.scaling.*`: linear or YaRN (none when absent, `none`, or a factor of 1).
    fn rope_scaling(&self) -> std::result::Result<Option<RopeScaling>, ConfigError> {
        let scaling_key = self.key("rope.scaling.type");
        Ok(match self.meta.get(&scaling_key) {
            Some(GgufValue::String(t)) if t == "linear" => {
                match self.float("rope.scaling.factor")? {
                    // a factor of exactly 1 is what writers emit for "no scaling"
                    Some(f) if f != 1.0 => Some(RopeScaling::Linear { factor: f }),
                    _ => None,
                }
            }
            Some(GgufValue::String(t)) if t == "yarn" => {
                // llama.cpp llama_model::load_hparams: the original context defaults to the
                // training context; llama_context computes the attention factor itself
                // (yarn_attn_factor and yarn_log_multiplier change it: not applied here)
                for k in [
                    "rope.scaling.yarn_ext_factor",
                    "rope.scaling.yarn_attn_factor",
                    "rope.scaling.yarn_log_multiplier",
                    "rope.scaling.attn_factor",
                ] {
                    if self.meta.get(&self.key(k)).is_some() {
                        return Err(invalid(
                            "rope.scaling.type",
                            format!("{}: yarn with {k} is not supported", self.key(k)),
                        ));
                    }
                }
                Some(RopeScaling::Yarn {
                    factor: self
                        .float("rope.scaling.factor")?
                        .ok_or_else(|| self.missing("rope.scaling.factor"))?,
                    original_max_position_embeddings: match self
                        .int("rope.scaling.original_context_length")?
                    {
                        Some(n) => n,
                        None => self
                            .int("context_length")?
                            .ok_or_else(|| self.missing("context_length"))?,
                    },
                    beta_fast: self.float("rope.scaling.yarn_beta_fast")?,
                    beta_slow: self.float("rope.scaling.yarn_beta_slow")?,
                })
            }
            Some(GgufValue::String(t)) if t == "none" => None,
            Some(GgufValue::String(t)) => {
                return Err(invalid(
                    "rope.scaling.type",
                    format!("{scaling_key}: unsupported {t:?}"),
                ));
            }
            Some(_) => {
                return Err(invalid(
                    "rope.scaling.type",
                    format!("{scaling_key}: expected a string"),
                ))
            }
            None => None,
        })
    }

    /// The expert counts of a mixture-of-experts family (`None` for a dense one).
    fn moe(&self) -> std::result::Result<Option<MoeConfig>, ConfigError> {
        Ok(if self.family.spec().moe.is_some() {
            let n = self
                .int("expert_count")?
                .ok_or_else(|| self.missing("expert_count"))?;
            let used = self
                .int("expert_used_count")?
                .ok_or_else(|| self.missing("expert_used_count"))?;
            let ffn = self.int("feed_forward_length")?.unwrap_or(0);
            Some(MoeConfig {
                num_experts: n,
                experts_per_tok: used,
                expert_ffn: self.int("expert_feed_forward_length")?.unwrap_or(ffn),
                // llama.cpp's llama (Mixtral) and qwen3moe graphs renormalise the top-k
                // weights (src/models/{llama,qwen3moe}.cpp: build_moe_ffn with norm_w
                // true); GGUF has no key for it
                norm_topk_prob: true,
                // which blocks are dense: read from the tensors (crate::gguf::read)
                dense_layers: Vec::new(),
            })
        } else {
            None
        })
    }

    /// Llama 4's attention pattern as llama.cpp fixes it for a `llama4` GGUF.
    fn llama4(&self, cfg: &mut ModelConfig) -> std::result::Result<Llama4Attention, ConfigError> {
        // llama.cpp's llama4 graph: sigmoid top-k, never renormalised (build_moe_ffn with
        // norm_w false); the rest fixed by load_arch_hparams unless sliding_window is 0
        if let Some(m) = cfg.moe.as_mut() {
            m.norm_topk_prob = false;
        }
        let n_exp = cfg.moe.as_ref().map_or(0, |m| m.num_experts);
        let mut a = Llama4Attention::llama_cpp(cfg.num_layers, n_exp);
        if self.int("attention.sliding_window")? == Some(0) {
            a.nope_layers.clear();
            a.chunked_layers.clear();
        }
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hostile Llama 4 attention keys on the llama4 fixture's config: each is refused naming
    /// its field, never a panic or an unbounded allocation.
    #[test]
    fn hostile_llama4_attention_keys_are_refused_naming_the_field() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/families/llama4/config.json"
        );
        let text = std::fs::read_to_string(path).unwrap();
        ModelConfig::from_hf_json(&text).unwrap();
        let cases: [(&str, serde_json::Value, &str); 5] = [
            (
                "attention_chunk_size",
                serde_json::json!(0),
                "attention_chunk_size",
            ),
            ("floor_scale", serde_json::json!(0), "attention_chunk_size"),
            (
                "no_rope_layers",
                serde_json::json!([1, 0]),
                "no_rope_layers",
            ),
            (
                "no_rope_layers",
                serde_json::json!([1, 2, 1, 1]),
                "no_rope_layers",
            ),
            (
                "no_rope_layer_interval",
                serde_json::json!(0),
                "no_rope_layer_interval",
            ),
        ];
        for (key, value, field) in cases {
            let mut c: serde_json::Value = serde_json::from_str(&text).unwrap();
            c[key] = value.clone();
            if key == "no_rope_layer_interval" {
                c.as_object_mut().unwrap().remove("no_rope_layers");
            }
            let e = ModelConfig::from_hf_json(&c.to_string())
                .expect_err(&format!("{key} = {value} accepted"))
                .to_string();
            assert!(e.contains(field), "{key} = {value}: {e}");
        }
    }

    #[test]
    fn meta_ffn_dims_match_released_models() {
        assert_eq!(meta_ffn_dim(4096, Some(1.3), 1024), 14336);
        assert_eq!(meta_ffn_dim(8192, Some(1.3), 4096), 28672);
        assert_eq!(meta_ffn_dim(16384, Some(1.2), 4096), 53248);
        assert_eq!(meta_ffn_dim(2048, Some(1.5), 256), 8192);
        assert_eq!(meta_ffn_dim(3072, Some(1.0), 256), 8192);
        assert_eq!(meta_ffn_dim(32, None, 32), 96);
    }

    const LLAMA31_8B: &str = r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama","hidden_size":4096,
      "intermediate_size":14336,"num_attention_heads":32,"num_hidden_layers":32,"num_key_value_heads":8,
      "rms_norm_eps":1e-05,"rope_theta":500000.0,"vocab_size":128256,"max_position_embeddings":131072,
      "rope_scaling":{"factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
      "original_max_position_embeddings":8192,"rope_type":"llama3"},"tie_word_embeddings":false,
      "bos_token_id":128000,"eos_token_id":[128001,128008,128009],"head_dim":null}"#;

    #[test]
    fn hf_llama31_8b() {
        let c = ModelConfig::from_hf_json(LLAMA31_8B).unwrap();
        assert_eq!(
            (c.hidden_size, c.head_dim, c.num_kv_heads, c.vocab_size),
            (4096, 128, 8, 128_256)
        );
        assert_eq!(c.eos_token_ids, vec![128_001, 128_008, 128_009]);
        assert!(
            matches!(c.rope_scaling, Some(RopeScaling::Llama3 { factor, .. }) if factor == 8.0)
        );
        assert_eq!(c.parameter_count(), 8_030_261_248);
    }

    #[test]
    fn meta_405b_params() {
        let p = r#"{"dim": 16384, "ffn_dim_multiplier": 1.2, "multiple_of": 4096, "n_heads": 128,
            "n_kv_heads": 8, "n_layers": 126, "norm_eps": 1e-05, "rope_theta": 500000.0,
            "use_scaled_rope": true, "vocab_size": 128256}"#;
        let c = ModelConfig::from_meta_params(p, None).unwrap();
        assert_eq!(c.intermediate_size, 53248);
        assert_eq!(c.parameter_count(), 405_853_388_800);
        assert_eq!(c.max_position_embeddings, 131_072);
    }

    /// transformers 5 saves Qwen3-MoE's `num_experts` as `num_local_experts` (its
    /// `attribute_map`): read either, refuse two that disagree, name the family's key if
    /// neither is there.
    #[test]
    fn qwen3_moe_experts_under_either_key() {
        let qwen = |keys: &str| {
            ModelConfig::from_hf_json(&format!(
                r#"{{"model_type": "qwen3_moe", "hidden_size": 64, "num_attention_heads": 4,
                "num_key_value_heads": 2, "head_dim": 32, "intermediate_size": 128,
                "num_hidden_layers": 2, "vocab_size": 384, "num_experts_per_tok": 2,
                "moe_intermediate_size": 32{keys}}}"#
            ))
        };
        for keys in [
            r#", "num_local_experts": 8"#,
            r#", "num_experts": 8"#,
            r#", "num_experts": 8, "num_local_experts": 8"#,
        ] {
            assert_eq!(qwen(keys).unwrap().moe.unwrap().num_experts, 8, "{keys}");
        }
        let e = qwen(r#", "num_experts": 8, "num_local_experts": 6"#).unwrap_err();
        assert!(matches!(e, ConfigError::Inconsistent(_)), "{e}");
        let e = qwen("").unwrap_err();
        assert!(matches!(e, ConfigError::Missing("num_experts")), "{e}");
    }

    /// transformers `Qwen3MoeDecoderLayer.__init__`: block `i` is sparse iff `i ∉
    /// mlp_only_layers` and `(i + 1) % decoder_sparse_step == 0`; Mixtral has experts in every
    /// block and always renormalises.
    #[test]
    fn moe_configs() {
        let qwen = |extra: &str| {
            ModelConfig::from_hf_json(&format!(
                r#"{{"model_type": "qwen3_moe", "hidden_size": 64, "num_attention_heads": 4,
                "num_key_value_heads": 2, "head_dim": 32, "intermediate_size": 128,
                "num_hidden_layers": 6, "vocab_size": 384, "num_experts": 8,
                "num_experts_per_tok": 2, "moe_intermediate_size": 32{extra}}}"#
            ))
        };
        let c = qwen(r#", "decoder_sparse_step": 2, "mlp_only_layers": [3]"#).unwrap();
        let m = c.moe.clone().unwrap();
        assert_eq!(m.dense_layers, vec![0, 2, 3, 4]);
        assert!(!m.norm_topk_prob);
        assert!(c.is_moe_layer(1) && c.is_moe_layer(5) && !c.is_moe_layer(3));
        // a sparse block: router and 8 × 3 experts instead of gate/up/down
        let kinds = c.layer_tensors(1);
        assert_eq!(kinds.len(), c.family.layer_tensors().len() - 3 + 1 + 24);
        assert!(!kinds.contains(&LayerTensor::Gate));
        assert_eq!(
            c.expected_shape(TensorId::Layer {
                index: 1,
                kind: LayerTensor::Expert {
                    expert: 7,
                    proj: FfnProj::Down
                }
            }),
            vec![64, 32]
        );
        assert_eq!(
            c.expected_shape(TensorId::Layer {
                index: 1,
                kind: LayerTensor::Router
            }),
            vec![8, 64]
        );
        assert_eq!(c.layer_tensors(0), c.family.layer_tensors());
        assert!(
            qwen(r#", "norm_topk_prob": true"#)
                .unwrap()
                .moe
                .unwrap()
                .norm_topk_prob
        );
        for bad in [
            r#", "num_experts_per_tok": 9"#,
            r#", "num_experts": 0"#,
            r#", "decoder_sparse_step": 0"#,
            r#", "moe_intermediate_size": 0"#,
        ] {
            // a repeated key: serde_json keeps the last, the bad value
            let r = qwen(bad);
            assert!(r.is_err(), "{bad}");
        }
        let mixtral = ModelConfig::from_hf_json(
            r#"{"model_type": "mixtral", "hidden_size": 64, "num_attention_heads": 4,
            "num_key_value_heads": 2, "intermediate_size": 32, "num_hidden_layers": 2,
            "vocab_size": 384, "num_local_experts": 4, "num_experts_per_tok": 2}"#,
        )
        .unwrap();
        let m = mixtral.moe.unwrap();
        assert!(m.norm_topk_prob && m.dense_layers.is_empty() && m.expert_ffn == 32);
        // a MoE family without its expert keys is refused
        assert!(ModelConfig::from_hf_json(
            r#"{"model_type": "mixtral", "hidden_size": 64, "num_attention_heads": 4,
            "intermediate_size": 32, "num_hidden_layers": 2, "vocab_size": 384}"#
        )
        .is_err());
    }

    /// Qwen2.5-7B-Instruct's config.json with its long-context YaRN block (the model card's).
    const QWEN25_7B_YARN: &str = r#"{"architectures":["Qwen2ForCausalLM"],"model_type":"qwen2",
      "hidden_size":3584,"intermediate_size":18944,"num_attention_heads":28,"num_hidden_layers":28,
      "num_key_value_heads":4,"rms_norm_eps":1e-06,"rope_theta":1000000.0,"vocab_size":152064,
      "max_position_embeddings":32768,"sliding_window":131072,"use_sliding_window":false,
      "max_window_layers":28,"tie_word_embeddings":false,"bos_token_id":151643,"eos_token_id":151645,
      "rope_scaling":{"factor":4.0,"original_max_position_embeddings":32768,"type":"yarn"}}"#;

    #[test]
    fn yarn_configs() {
        let c = ModelConfig::from_hf_json(QWEN25_7B_YARN).unwrap();
        assert_eq!(
            c.rope_scaling,
            Some(RopeScaling::Yarn {
                factor: 4.0,
                original_max_position_embeddings: 32768,
                beta_fast: None,
                beta_slow: None
            })
        );
        let with = |from: &str, to: &str| {
            assert!(QWEN25_7B_YARN.contains(from), "{from}");
            ModelConfig::from_hf_json(&QWEN25_7B_YARN.replace(from, to))
        };
        let betas = with(
            "\"type\":\"yarn\"",
            "\"rope_type\":\"yarn\",\"beta_fast\":16,\"beta_slow\":2",
        )
        .unwrap();
        assert!(matches!(
            betas.rope_scaling,
            Some(RopeScaling::Yarn {
                beta_fast: Some(16.0),
                beta_slow: Some(2.0),
                ..
            })
        ));
        // settings qforge does not compute, hostile values, a family without YaRN
        for (from, to, field) in [
            (
                "\"type\":\"yarn\"",
                "\"type\":\"yarn\",\"attention_factor\":0.8",
                "rope_scaling",
            ),
            (
                "\"type\":\"yarn\"",
                "\"type\":\"yarn\",\"mscale\":1",
                "rope_scaling",
            ),
            (
                "\"type\":\"yarn\"",
                "\"type\":\"yarn\",\"truncate\":false",
                "rope_scaling",
            ),
            ("\"factor\":4.0", "\"factor\":-4.0", "rope_scaling.factor"),
            ("\"factor\":4.0", "\"factor\":\"4\"", "factor"),
            (
                "\"original_max_position_embeddings\":32768",
                "\"original_max_position_embeddings\":0",
                "rope_scaling.original_max_position_embeddings",
            ),
            (
                "\"original_max_position_embeddings\":32768",
                "\"original_max_position_embeddings\":1e30",
                "original_max_position_embeddings",
            ),
            (
                "\"type\":\"yarn\"",
                "\"type\":\"yarn\",\"beta_fast\":0",
                "rope_scaling.beta_fast",
            ),
        ] {
            match with(from, to) {
                Err(ConfigError::Invalid { field: f, .. }) if f == field => {}
                other => panic!("{to}: {other:?}"),
            }
        }
        assert!(matches!(
            with("\"factor\":4.0,", ""),
            Err(ConfigError::Missing("rope_scaling.factor"))
        ));
        assert!(matches!(
            with("\"original_max_position_embeddings\":32768,", ""),
            Err(ConfigError::Missing(
                "rope_scaling.original_max_position_embeddings"
            ))
        ));
        let mistral = QWEN25_7B_YARN
            .replace("Qwen2ForCausalLM", "MistralForCausalLM")
            .replace("\"qwen2\"", "\"mistral\"");
        assert!(ModelConfig::from_hf_json(&mistral)
            .unwrap_err()
            .to_string()
            .contains("yarn"));
    }

    #[test]
    fn rejects_inconsistent_and_absurd() {
        let bad = LLAMA31_8B.replace("\"num_key_value_heads\":8", "\"num_key_value_heads\":7");
        assert!(matches!(
            ModelConfig::from_hf_json(&bad),
            Err(ConfigError::Inconsistent(_))
        ));
        let bad = LLAMA31_8B.replace("\"hidden_size\":4096", "\"hidden_size\":4097");
        assert!(matches!(
            ModelConfig::from_hf_json(&bad),
            Err(ConfigError::Inconsistent(_))
        ));
        let bad = LLAMA31_8B.replace("\"num_hidden_layers\":32", "\"num_hidden_layers\":1e300");
        assert!(matches!(
            ModelConfig::from_hf_json(&bad),
            Err(ConfigError::Invalid {
                field: "num_hidden_layers",
                ..
            })
        ));
        let bad = LLAMA31_8B.replace("\"vocab_size\":128256", "\"vocab_size\":0");
        assert!(matches!(
            ModelConfig::from_hf_json(&bad),
            Err(ConfigError::Invalid {
                field: "vocab_size",
                ..
            })
        ));
        let bad = LLAMA31_8B.replace("\"model_type\":\"llama\"", "\"model_type\":\"gpt2\"");
        assert!(matches!(
            ModelConfig::from_hf_json(&bad),
            Err(ConfigError::Architecture(_))
        ));
        assert!(matches!(
            ModelConfig::from_hf_json("[1]"),
            Err(ConfigError::Json(_))
        ));
        assert!(matches!(
            ModelConfig::from_meta_params(
                r#"{"dim":64,"n_heads":4,"n_layers":1,"multiple_of":0}"#,
                Some(8)
            ),
            Err(ConfigError::Invalid {
                field: "multiple_of",
                ..
            })
        ));
    }
}
