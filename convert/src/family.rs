//! The model families qforge reads and writes, and the facts in which each differs from Llama:
//! one row of [`FAMILIES`] per family. Everything family-specific elsewhere (config parsing,
//! tensor sets, GGUF keys, the HF `config.json`, the forward pass) reads this table; adding a
//! Llama descendant is one row plus tests.
//!
//! Sources: transformers 4.57 `models/{llama,mistral,qwen2,qwen3}` (`configuration_*.py`,
//! `modeling_*.py`), llama.cpp `convert_hf_to_gguf.py` (`conversion/llama.py` `LlamaModel`,
//! `conversion/qwen.py` `Qwen2Model`/`Qwen3Model`, `conversion/base.py`
//! `TextModel.set_gguf_parameters`), `src/llama-model.cpp` (`llama_model_rope_type`),
//! `src/models/{llama,qwen2,qwen3}.cpp`, `src/llama-quant.cpp`
//! (`tensor_allows_quantization`), and llm-compressor `modifiers/awq/mappings.py`
//! (`AWQ_MAPPING_REGISTRY`).

use serde::Serialize;

use crate::checkpoint::Format;
use crate::names::{HfMoeNames, LayerTensor, NameMatch, NameScheme, TensorKey};

/// A model family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Llama 3.x (and 1/2): `LlamaForCausalLM`.
    Llama,
    /// Qwen2 / Qwen2.5: `Qwen2ForCausalLM` (q/k/v biases).
    Qwen2,
    /// Qwen3 dense: `Qwen3ForCausalLM` (per-head q/k RMSNorm, free `head_dim`).
    Qwen3,
    /// Mistral: `MistralForCausalLM` (sliding-window attention where the config sets one).
    Mistral,
    /// Mixtral: `MixtralForCausalLM` (Mistral attention, a mixture of experts in every block).
    Mixtral,
    /// Qwen3-MoE: `Qwen3MoeForCausalLM` (Qwen3 attention, mixture-of-experts blocks).
    #[serde(rename = "qwen3moe")]
    Qwen3Moe,
    /// Llama 4 text (Scout/Maverick): `Llama4ForCausalLM` (fused experts, a shared expert,
    /// sigmoid top-1 routing, NoPE blocks, chunked attention, q/k L2 norm, temperature tuning).
    Llama4,
}

/// How a mixture-of-experts family routes and names its experts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MoeSpec {
    /// HF module spelling.
    pub hf_names: HfMoeNames,
    /// `config.json` key of the expert count (`num_local_experts` / `num_experts`).
    pub hf_experts_key: &'static str,
    /// `config.json` key of one expert's FFN width (Mixtral: `intermediate_size`; Qwen3-MoE:
    /// `moe_intermediate_size`, its `intermediate_size` being the dense layers').
    pub hf_expert_ffn_key: &'static str,
    /// The top-k weights are renormalised to sum 1 always (Mixtral:
    /// `MixtralSparseMoeBlock.forward` divides by their sum) rather than when the config's
    /// `norm_topk_prob` says (`Qwen3MoeSparseMoeBlock.forward`).
    pub always_norm_topk: bool,
    /// Dense blocks are possible (`mlp_only_layers`, `decoder_sparse_step`: transformers
    /// `Qwen3MoeDecoderLayer.__init__`; Llama 4 `interleave_moe_layer_step`).
    pub dense_layers: bool,
    /// How router logits become expert weights.
    pub gating: Gating,
    /// A shared expert (of one expert's width) runs on every token beside the routed ones
    /// (transformers `Llama4TextMoe.shared_expert`, GGUF `ffn_*_shexp`).
    pub shared_expert: bool,
}

/// How a router's logits weight the chosen experts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Gating {
    /// `softmax(logits)` over all experts, top-k of it, the weight scaling each expert's
    /// output (Mixtral, Qwen3-MoE).
    Softmax,
    /// top-k of the logits, `sigmoid(logit)` scaling each expert's *input* (transformers
    /// `Llama4Router.forward` + `Llama4TextMoe.forward`; llama.cpp `build_moe_ffn` with
    /// `LLAMA_EXPERT_GATING_FUNC_TYPE_SIGMOID` and `weight_before_ffn` for `LLM_ARCH_LLAMA4`).
    SigmoidInput,
}

/// How a family's rotary embedding pairs a head's values in GGUF (llama.cpp
/// `llama_model_rope_type`). Hugging Face checkpoints always pair `(j, j + hd/2)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GgufRope {
    /// `LLAMA_ROPE_TYPE_NORM`: consecutive pairs; `convert_hf_to_gguf.py` permutes Q/K rows
    /// (`LlamaModel.permute`).
    Norm,
    /// `LLAMA_ROPE_TYPE_NEOX`: pairs `n_rot/2` apart, as HF; rows are copied unpermuted.
    Neox,
}

/// Where a family's sliding-window attention comes from in `config.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowRule {
    /// No sliding window.
    None,
    /// `sliding_window` (null or absent: none) on every layer (transformers `MistralAttention`).
    EveryLayer,
    /// `sliding_window` only when `use_sliding_window`, on layers `i >= max_window_layers`
    /// (transformers `Qwen2Config`/`Qwen3Config` `layer_types`), or as `layer_types` says.
    QwenLayers,
}

/// The AWQ smoothing mappings llm-compressor uses for a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AwqMappings {
    /// llm-compressor `_default_mappings`: input_layernorm → q/k/v, v_proj → o_proj,
    /// post_attention_layernorm → gate/up, up_proj → down_proj (`AWQ_MAPPING_REGISTRY` maps
    /// `LlamaForCausalLM`, `MistralForCausalLM`, `Qwen2ForCausalLM` and `Qwen3ForCausalLM` to
    /// it).
    Default,
}

/// Which llama-quantize type rules a family gets (`llama-quant.cpp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QuantRules {
    /// The generic rules keyed on tensor names (`tensor_allows_quantization`: 2-D `*weight`
    /// not `*_norm.weight`; `llama_tensor_get_type` by category). Biases (`*.bias`) and
    /// `attn_q_norm`/`attn_k_norm` are 1-D and stay F32. No architecture-specific branch
    /// applies to llama, qwen2 or qwen3.
    Generic,
}

/// The facts of one family.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FamilySpec {
    /// The family.
    pub family: Family,
    /// Display name.
    pub name: &'static str,
    /// HF `architectures` classes; the first is written.
    pub hf_classes: &'static [&'static str],
    /// HF `model_type`.
    pub model_type: &'static str,
    /// GGUF `general.architecture`, also the metadata key prefix (`<arch>.block_count`).
    /// `convert_hf_to_gguf.py` writes Mistral as `llama`, so a GGUF file reads back as Llama.
    pub gguf_arch: &'static str,
    /// Rotary pairing in GGUF.
    pub gguf_rope: GgufRope,
    /// q_proj/k_proj/v_proj carry a `bias` (transformers `Qwen2Attention`: `bias=True`).
    pub qkv_bias: bool,
    /// Per-head RMSNorm on Q and K before RoPE (`Qwen3Attention.q_norm`/`k_norm`, llama.cpp
    /// `attn_q_norm`/`attn_k_norm`, `[head_dim]`).
    pub qk_norm: bool,
    /// Normalization: RMSNorm (`x · rsqrt(mean(x²) + eps) · w`) for every family here.
    pub norm: &'static str,
    /// FFN activation: SwiGLU (`silu(gate) ⊙ up`) for every family here.
    pub activation: &'static str,
    /// `rope_scaling` types accepted (`default` always is).
    pub rope_scalings: &'static [&'static str],
    /// Sliding-window attention.
    pub window: WindowRule,
    /// transformers' `tie_word_embeddings` default for the class.
    pub tie_default: bool,
    /// The config class has a `head_dim` (written to `config.json`); `convert_hf_to_gguf.py`
    /// writes `attention.key_length`/`value_length` only when `config.json` has one.
    pub hf_head_dim: bool,
    /// `convert_hf_to_gguf.py` writes `<arch>.vocab_size` and `<arch>.rope.dimension_count`
    /// (`LlamaModel.set_gguf_parameters`; `Qwen2Model` does not).
    pub gguf_vocab_and_rope_dim: bool,
    /// transformers' config defaults for `bos_token_id`/`eos_token_id` (written when the
    /// source has none).
    pub bos_default: Option<u64>,
    /// See [`FamilySpec::bos_default`].
    pub eos_default: Option<u64>,
    /// Meta `consolidated.*.pth` checkpoints exist for the family.
    pub meta: bool,
    /// AWQ mappings.
    pub awq: AwqMappings,
    /// llama-quantize rules.
    pub quant: QuantRules,
    /// Mixture-of-experts facts, for the MoE families.
    pub moe: Option<MoeSpec>,
    /// The HF checkpoint pairs RoPE values `(2j, 2j+1)` (complex pairs: transformers
    /// `modeling_llama4.py` `apply_rotary_emb` views `[..., hd/2, 2]` as complex), not
    /// `(j, j + hd/2)`; `convert_hf_to_gguf.py` then copies Q/K unpermuted
    /// (`Llama4Model.undo_permute = False`).
    pub hf_interleaved_rope: bool,
}

/// The table.
pub const FAMILIES: &[FamilySpec] = &[
    FamilySpec {
        family: Family::Llama,
        name: "Llama",
        hf_classes: &["LlamaForCausalLM"],
        model_type: "llama",
        gguf_arch: "llama",
        gguf_rope: GgufRope::Norm,
        qkv_bias: false,
        qk_norm: false,
        norm: "rms",
        activation: "silu",
        rope_scalings: &["llama3", "linear"],
        window: WindowRule::None,
        tie_default: false,
        hf_head_dim: true,
        gguf_vocab_and_rope_dim: true,
        bos_default: Some(1),
        eos_default: Some(2),
        meta: true,
        awq: AwqMappings::Default,
        quant: QuantRules::Generic,
        moe: None,
        hf_interleaved_rope: false,
    },
    FamilySpec {
        family: Family::Qwen2,
        name: "Qwen2",
        hf_classes: &["Qwen2ForCausalLM"],
        model_type: "qwen2",
        gguf_arch: "qwen2",
        gguf_rope: GgufRope::Neox,
        qkv_bias: true,
        qk_norm: false,
        norm: "rms",
        activation: "silu",
        rope_scalings: &["linear", "yarn"],
        window: WindowRule::QwenLayers,
        tie_default: false,
        hf_head_dim: false,
        gguf_vocab_and_rope_dim: false,
        bos_default: None,
        eos_default: None,
        meta: false,
        awq: AwqMappings::Default,
        quant: QuantRules::Generic,
        moe: None,
        hf_interleaved_rope: false,
    },
    FamilySpec {
        family: Family::Qwen3,
        name: "Qwen3",
        hf_classes: &["Qwen3ForCausalLM"],
        model_type: "qwen3",
        gguf_arch: "qwen3",
        gguf_rope: GgufRope::Neox,
        qkv_bias: false,
        qk_norm: true,
        norm: "rms",
        activation: "silu",
        rope_scalings: &["linear", "yarn"],
        window: WindowRule::QwenLayers,
        tie_default: false,
        hf_head_dim: true,
        gguf_vocab_and_rope_dim: false,
        bos_default: None,
        eos_default: None,
        meta: false,
        awq: AwqMappings::Default,
        quant: QuantRules::Generic,
        moe: None,
        hf_interleaved_rope: false,
    },
    FamilySpec {
        family: Family::Mistral,
        name: "Mistral",
        hf_classes: &["MistralForCausalLM"],
        model_type: "mistral",
        // conversion/llama.py registers MistralForCausalLM with LlamaModel
        gguf_arch: "llama",
        gguf_rope: GgufRope::Norm,
        qkv_bias: false,
        qk_norm: false,
        norm: "rms",
        activation: "silu",
        rope_scalings: &["linear"],
        // v0.1 sets 4096; v0.3 null
        window: WindowRule::EveryLayer,
        tie_default: false,
        hf_head_dim: true,
        gguf_vocab_and_rope_dim: true,
        bos_default: Some(1),
        eos_default: Some(2),
        meta: false,
        awq: AwqMappings::Default,
        quant: QuantRules::Generic,
        moe: None,
        hf_interleaved_rope: false,
    },
    FamilySpec {
        family: Family::Mixtral,
        name: "Mixtral",
        hf_classes: &["MixtralForCausalLM"],
        model_type: "mixtral",
        // conversion/llama.py registers MixtralForCausalLM with LlamaModel; the expert keys
        // (`llama.expert_count`) tell it from Llama when read back
        gguf_arch: "llama",
        gguf_rope: GgufRope::Norm,
        qkv_bias: false,
        qk_norm: false,
        norm: "rms",
        activation: "silu",
        rope_scalings: &[],
        window: WindowRule::EveryLayer,
        tie_default: false,
        hf_head_dim: true,
        gguf_vocab_and_rope_dim: true,
        bos_default: Some(1),
        eos_default: Some(2),
        meta: false,
        awq: AwqMappings::Default,
        quant: QuantRules::Generic,
        moe: Some(MoeSpec {
            hf_names: HfMoeNames::Mixtral,
            hf_experts_key: "num_local_experts",
            hf_expert_ffn_key: "intermediate_size",
            always_norm_topk: true,
            dense_layers: false,
            gating: Gating::Softmax,
            shared_expert: false,
        }),
        hf_interleaved_rope: false,
    },
    FamilySpec {
        family: Family::Qwen3Moe,
        name: "Qwen3-MoE",
        hf_classes: &["Qwen3MoeForCausalLM"],
        model_type: "qwen3_moe",
        gguf_arch: "qwen3moe",
        gguf_rope: GgufRope::Neox,
        qkv_bias: false,
        qk_norm: true,
        norm: "rms",
        activation: "silu",
        rope_scalings: &["linear", "yarn"],
        window: WindowRule::QwenLayers,
        tie_default: false,
        hf_head_dim: true,
        gguf_vocab_and_rope_dim: false,
        bos_default: None,
        eos_default: None,
        meta: false,
        awq: AwqMappings::Default,
        quant: QuantRules::Generic,
        moe: Some(MoeSpec {
            hf_names: HfMoeNames::Qwen,
            hf_experts_key: "num_experts",
            hf_expert_ffn_key: "moe_intermediate_size",
            always_norm_topk: false,
            dense_layers: true,
            gating: Gating::Softmax,
            shared_expert: false,
        }),
        hf_interleaved_rope: false,
    },
    FamilySpec {
        family: Family::Llama4,
        name: "Llama 4",
        hf_classes: &["Llama4ForCausalLM"],
        model_type: "llama4_text",
        gguf_arch: "llama4",
        // llama_model_rope_type: LLM_ARCH_LLAMA4 is LLAMA_ROPE_TYPE_NORM, and HF already pairs
        // (2j, 2j+1): no permutation either way
        gguf_rope: GgufRope::Norm,
        qkv_bias: false,
        // the q/k L2 norm has no weights (Llama4TextL2Norm); see ModelConfig::llama4
        qk_norm: false,
        norm: "rms",
        activation: "silu",
        rope_scalings: &["llama3"],
        window: WindowRule::None,
        tie_default: false,
        hf_head_dim: true,
        gguf_vocab_and_rope_dim: true,
        bos_default: Some(1),
        eos_default: Some(2),
        meta: false,
        awq: AwqMappings::Default,
        quant: QuantRules::Generic,
        moe: Some(MoeSpec {
            hf_names: HfMoeNames::Llama4,
            hf_experts_key: "num_local_experts",
            // Llama4TextConfig: intermediate_size is one expert's (and the shared expert's)
            // width, intermediate_size_mlp the dense blocks'
            hf_expert_ffn_key: "intermediate_size",
            always_norm_topk: false,
            dense_layers: true,
            gating: Gating::SigmoidInput,
            shared_expert: true,
        }),
        hf_interleaved_rope: true,
    },
];

impl Family {
    /// This family's row.
    pub fn spec(self) -> &'static FamilySpec {
        FAMILIES
            .iter()
            .find(|s| s.family == self)
            .expect("every family has a row")
    }

    /// The family of an HF `model_type`.
    pub fn from_model_type(model_type: &str) -> Option<Family> {
        FAMILIES
            .iter()
            .find(|s| s.model_type == model_type)
            .map(|s| s.family)
    }

    /// The family a GGUF `general.architecture` reads as (the first row writing it).
    pub fn from_gguf_arch(arch: &str) -> Option<Family> {
        FAMILIES
            .iter()
            .find(|s| s.gguf_arch == arch)
            .map(|s| s.family)
    }

    /// The family of a GGUF file of architecture `arch` that has expert keys or not
    /// (`llama` with `llama.expert_count` is Mixtral): the first row writing `arch` that is a
    /// mixture of experts exactly when the file is, else the first row writing `arch`.
    pub fn from_gguf(arch: &str, experts: bool) -> Option<Family> {
        FAMILIES
            .iter()
            .find(|s| s.gguf_arch == arch && s.moe.is_some() == experts)
            .map(|s| s.family)
            .or_else(|| Family::from_gguf_arch(arch))
    }

    /// Display name.
    pub fn name(self) -> &'static str {
        self.spec().name
    }

    /// The HF name of `key` as this family spells it ([`NameScheme::Hf`], with the family's
    /// router and expert modules: Mixtral's `block_sparse_moe.experts.E.w1`).
    pub fn hf_name(self, key: TensorKey) -> Option<String> {
        match self.spec().moe {
            Some(m) => m.hf_names.name(key),
            None => NameScheme::Hf.name(key),
        }
    }

    /// `name` (an HF tensor name, or a module name without a part suffix) in this family's
    /// spelling ([`Family::hf_name`]: its router, expert and shared-expert modules, and Llama 4's
    /// dense `feed_forward.{gate,up,down}_proj`); a name that is no tensor's unchanged.
    pub fn hf_spelling(self, name: &str) -> String {
        let Some(moe) = self.spec().moe else {
            return name.to_owned();
        };
        let (full, module) = match NameScheme::Hf.parse(name) {
            NameMatch::Tensor(k) => (k, false),
            _ => match NameScheme::Hf.parse(&format!("{name}.weight")) {
                NameMatch::Tensor(k) => (k, true),
                _ => return name.to_owned(),
            },
        };
        match moe.hf_names.name(full) {
            Some(n) if module => n.strip_suffix(".weight").unwrap_or(&n).to_owned(),
            Some(n) => n,
            None => name.to_owned(),
        }
    }

    /// The GGUF metadata key `<arch>.<key>`.
    pub fn gguf_key(self, key: &str) -> String {
        format!("{}.{key}", self.spec().gguf_arch)
    }

    /// The block tensors a dense block of this family has, in [`LayerTensor::ALL`] order (a
    /// mixture-of-experts block: [`crate::ModelConfig::layer_tensors`]).
    pub fn layer_tensors(self) -> Vec<LayerTensor> {
        let s = self.spec();
        LayerTensor::ALL
            .into_iter()
            .filter(|k| match k {
                LayerTensor::QBias | LayerTensor::KBias | LayerTensor::VBias => s.qkv_bias,
                LayerTensor::QNorm | LayerTensor::KNorm => s.qk_norm,
                _ => true,
            })
            .collect()
    }

    /// Whether a checkpoint of this family in `format` pairs RoPE values `(j, j + hd/2)`
    /// (HF always; GGUF for [`GgufRope::Neox`] families) rather than `(2j, 2j+1)` (Meta, GGUF
    /// [`GgufRope::Norm`]).
    pub fn half_split_rope(self, format: Format) -> bool {
        match format {
            Format::Hf => !self.spec().hf_interleaved_rope,
            Format::Meta => false,
            Format::Gguf => self.spec().gguf_rope == GgufRope::Neox,
        }
    }

    /// The model types qforge knows, for error messages.
    pub fn known_model_types() -> String {
        FAMILIES
            .iter()
            .map(|s| s.model_type)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_has_one_row_and_reads_back() {
        for s in FAMILIES {
            assert_eq!(s.family.spec(), s);
            assert_eq!(Family::from_model_type(s.model_type), Some(s.family));
            assert!(Family::from_gguf_arch(s.gguf_arch).is_some());
            // a MoE family reads back as itself (Mixtral: llama with expert keys)
            if s.moe.is_some() {
                assert_eq!(Family::from_gguf(s.gguf_arch, true), Some(s.family));
            }
        }
        assert_eq!(Family::Llama.gguf_key("block_count"), "llama.block_count");
        assert_eq!(Family::Qwen2.gguf_key("block_count"), "qwen2.block_count");
        assert_eq!(Family::Qwen2.layer_tensors().len(), 12);
        assert_eq!(Family::Qwen3.layer_tensors().len(), 11);
        assert_eq!(Family::Llama.layer_tensors().len(), 9);
    }
}
