//! Typed tensor roles and the one name table per format.
//!
//! Each naming scheme (HF `model.layers.3.self_attn.q_proj.weight`, Meta
//! `layers.3.attention.wq.weight`, GGUF `blk.3.attn_q.weight`) is parsed once into a [`TensorKey`]
//! and printed back from it. A name that matches no table entry is [`NameMatch::Unknown`], which
//! readers turn into an error: nothing is dropped silently. A few names that are known leftovers
//! of other tools (rotary `inv_freq` buffers) are [`NameMatch::Ignored`] with a reason.

use std::fmt;

/// A tensor inside a transformer block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LayerTensor {
    /// RMSNorm before attention.
    AttnNorm,
    /// Query projection.
    Q,
    /// Key projection.
    K,
    /// Value projection.
    V,
    /// Attention output projection.
    O,
    /// RMSNorm before the FFN.
    FfnNorm,
    /// FFN gate projection (Meta `w1`).
    Gate,
    /// FFN up projection (Meta `w3`).
    Up,
    /// FFN down projection (Meta `w2`).
    Down,
    /// Query projection bias (Qwen2).
    QBias,
    /// Key projection bias (Qwen2).
    KBias,
    /// Value projection bias (Qwen2).
    VBias,
    /// Per-head RMSNorm on queries before RoPE (Qwen3), `[head_dim]`.
    QNorm,
    /// Per-head RMSNorm on keys before RoPE (Qwen3), `[head_dim]`.
    KNorm,
    /// Mixture-of-experts router `[n_expert, hidden]` (HF `block_sparse_moe.gate` /
    /// `mlp.gate`, GGUF `ffn_gate_inp`); never quantized.
    Router,
    /// One projection of one expert of a mixture-of-experts FFN, `[out, in]` as the dense
    /// projection. GGUF stores the experts of a projection as one 3-D stack
    /// (`ffn_{gate,up,down}_exps`, experts outermost); qforge reads and writes it expert by
    /// expert (see [`NameScheme::Gguf`]'s `blk.N.ffn_gate_exps.E.weight` slice names).
    Expert {
        /// expert number, from 0
        expert: u32,
        /// which projection
        proj: FfnProj,
    },
    /// One projection of a mixture-of-experts block's shared expert, run on every token
    /// beside the routed experts (Llama 4: HF `feed_forward.shared_expert.*_proj`, GGUF
    /// `ffn_{gate,up,down}_shexp`), `[out, in]`.
    SharedExpert {
        /// which projection
        proj: FfnProj,
    },
}

/// The three projections of a SwiGLU FFN (dense or one expert).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FfnProj {
    /// gate (Meta/Mixtral `w1`)
    Gate,
    /// up (`w3`)
    Up,
    /// down (`w2`)
    Down,
}

impl FfnProj {
    /// All three, in gate, up, down order.
    pub const ALL: [FfnProj; 3] = [FfnProj::Gate, FfnProj::Up, FfnProj::Down];

    /// `(Qwen/HF-default module, Mixtral module, GGUF stack)` of an expert's projection.
    const fn names(self) -> (&'static str, &'static str, &'static str) {
        match self {
            FfnProj::Gate => ("gate_proj", "w1", "ffn_gate_exps"),
            FfnProj::Up => ("up_proj", "w3", "ffn_up_exps"),
            FfnProj::Down => ("down_proj", "w2", "ffn_down_exps"),
        }
    }

    /// The GGUF module of this projection of a shared expert (`ffn_gate_shexp`).
    const fn gguf_shared(self) -> &'static str {
        match self {
            FfnProj::Gate => "ffn_gate_shexp",
            FfnProj::Up => "ffn_up_shexp",
            FfnProj::Down => "ffn_down_shexp",
        }
    }

    /// The GGUF 3-D stack name of this projection in block `index` (`blk.0.ffn_gate_exps.weight`).
    pub fn gguf_stack(self, index: u32) -> String {
        format!("blk.{index}.{}.weight", self.names().2)
    }

    /// The projection whose GGUF stack is `name` (`blk.N.ffn_*_exps.weight`), with `N`.
    pub fn parse_gguf_stack(name: &str) -> Option<(u32, FfnProj)> {
        let rest = name.strip_prefix("blk.")?.strip_suffix(".weight")?;
        let (index, module) = rest.split_once('.')?;
        let index = parse_index(index)?;
        FfnProj::ALL
            .into_iter()
            .find(|p| p.names().2 == module)
            .map(|p| (index, p))
    }
}

/// How an HF checkpoint spells its mixture-of-experts modules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HfMoeNames {
    /// `mlp.gate`, `mlp.experts.E.{gate,up,down}_proj` (transformers `Qwen3MoeSparseMoeBlock`).
    Qwen,
    /// `block_sparse_moe.gate`, `block_sparse_moe.experts.E.{w1,w3,w2}` (transformers 4.57
    /// `MixtralSparseMoeBlock`, `MixtralBlockSparseTop2MLP`). Read also as
    /// `block_sparse_moe.experts.E.{gate,up,down}_proj`, llm-compressor's linearized experts;
    /// written as `w1`/`w3`/`w2`.
    Mixtral,
    /// `feed_forward.router`, `feed_forward.shared_expert.{gate,up,down}_proj`, dense blocks'
    /// `feed_forward.{gate,up,down}_proj` (transformers `Llama4TextMoe`, `Llama4TextMLP`). The
    /// experts are two fused 3-D tensors, `feed_forward.experts.gate_up_proj` `[E, hidden,
    /// 2·ffn]` and `feed_forward.experts.down_proj` `[E, ffn, hidden]` (`Llama4TextExperts`,
    /// `x @ W`, not `x @ Wᵀ`); qforge reads each expert's projection as a strided `[out, in]`
    /// view named `feed_forward.experts.E.{gate,up,down}_proj` ([`crate::hf::read`]).
    Llama4,
}

impl HfMoeNames {
    const fn block(self) -> &'static str {
        match self {
            HfMoeNames::Qwen => "mlp",
            HfMoeNames::Mixtral => "block_sparse_moe",
            HfMoeNames::Llama4 => "feed_forward",
        }
    }

    /// The HF module (without `.weight`) of a router or expert tensor (and, for Llama 4, of the
    /// shared expert and the dense FFN), `None` for others.
    fn module(self, kind: LayerTensor) -> Option<String> {
        let b = self.block();
        match kind {
            LayerTensor::Router if self == HfMoeNames::Llama4 => Some(format!("{b}.router")),
            LayerTensor::Router => Some(format!("{b}.gate")),
            LayerTensor::Expert { expert, proj } => {
                let (q, m, _) = proj.names();
                let p = if self == HfMoeNames::Mixtral { m } else { q };
                Some(format!("{b}.experts.{expert}.{p}"))
            }
            LayerTensor::SharedExpert { proj } if self == HfMoeNames::Llama4 => {
                Some(format!("{b}.shared_expert.{}", proj.names().0))
            }
            LayerTensor::Gate if self == HfMoeNames::Llama4 => Some(format!("{b}.gate_proj")),
            LayerTensor::Up if self == HfMoeNames::Llama4 => Some(format!("{b}.up_proj")),
            LayerTensor::Down if self == HfMoeNames::Llama4 => Some(format!("{b}.down_proj")),
            _ => None,
        }
    }

    /// A router, expert (or Llama 4 shared-expert and dense FFN) module of any spelling
    /// (`mlp.experts.3.up_proj`).
    fn parse(layer_module: &str) -> Option<LayerTensor> {
        for s in [HfMoeNames::Qwen, HfMoeNames::Mixtral, HfMoeNames::Llama4] {
            let Some(rest) = layer_module
                .strip_prefix(s.block())
                .and_then(|r| r.strip_prefix('.'))
            else {
                continue;
            };
            if rest
                == if s == HfMoeNames::Llama4 {
                    "router"
                } else {
                    "gate"
                }
            {
                return Some(LayerTensor::Router);
            }
            if s == HfMoeNames::Llama4 {
                let by_hf = |p: &str| FfnProj::ALL.into_iter().find(|x| x.names().0 == p);
                if let Some(p) = rest.strip_prefix("shared_expert.") {
                    return by_hf(p).map(|proj| LayerTensor::SharedExpert { proj });
                }
                if let Some(p) = by_hf(rest) {
                    return Some(match p {
                        FfnProj::Gate => LayerTensor::Gate,
                        FfnProj::Up => LayerTensor::Up,
                        FfnProj::Down => LayerTensor::Down,
                    });
                }
            }
            let (e, p) = rest.strip_prefix("experts.")?.split_once('.')?;
            let expert = parse_index(e)?;
            // Mixtral's block also in Qwen's projection names: llm-compressor saves linearized
            // Mixtral experts as `block_sparse_moe.experts.E.{gate,up,down}_proj`
            // (llmcompressor/modeling/moe/linear_experts.py `ExpertMLPWithGate`
            // `copy_from_experts_module`: gate_proj = gate_up_proj[e, :ffn], the rows
            // transformers 5 fills from `w1`, conversion_mapping.py "mixtral" `Concatenate` of
            // `w1`, `w3`; down_proj = down_proj[e], from `w2`)
            let proj = FfnProj::ALL.into_iter().find(|x| {
                let (q, m, _) = x.names();
                p == q || (s == HfMoeNames::Mixtral && p == m)
            })?;
            return Some(LayerTensor::Expert { expert, proj });
        }
        None
    }

    /// The HF name of `key` in this spelling: [`NameScheme::Hf`]'s name, with router and
    /// expert modules spelled this way.
    pub fn name(self, key: TensorKey) -> Option<String> {
        match key.id {
            TensorId::Layer { index, kind } => match self.module(kind) {
                Some(m) => Some(format!("model.layers.{index}.{m}.{}", key.part.suffix())),
                None => NameScheme::Hf.name(key),
            },
            _ => NameScheme::Hf.name(key),
        }
    }
}

impl LayerTensor {
    /// Every block tensor any family has, in the order qforge writes them (a family's own set:
    /// [`crate::Family::layer_tensors`]).
    pub const ALL: [LayerTensor; 14] = [
        LayerTensor::AttnNorm,
        LayerTensor::Q,
        LayerTensor::K,
        LayerTensor::V,
        LayerTensor::O,
        LayerTensor::FfnNorm,
        LayerTensor::Gate,
        LayerTensor::Up,
        LayerTensor::Down,
        LayerTensor::QBias,
        LayerTensor::KBias,
        LayerTensor::VBias,
        LayerTensor::QNorm,
        LayerTensor::KNorm,
    ];

    /// The linear projections of a block, in the order qforge writes them.
    pub const LINEARS: [LayerTensor; 7] = [
        LayerTensor::Q,
        LayerTensor::K,
        LayerTensor::V,
        LayerTensor::O,
        LayerTensor::Gate,
        LayerTensor::Up,
        LayerTensor::Down,
    ];

    /// True for the linear projections (not the norms, not the biases, not the MoE router:
    /// quantization schemes keep it in high precision as llm-compressor's recipes ignore
    /// `re:.*mlp.gate$` and llama.cpp keeps `ffn_gate_inp` F32 (`llama-quant.cpp`
    /// `tensor_allows_quantization`: `ffn_gate_inp.weight` is excluded)). Experts are linear.
    pub const fn is_linear(self) -> bool {
        matches!(
            self,
            LayerTensor::Q
                | LayerTensor::K
                | LayerTensor::V
                | LayerTensor::O
                | LayerTensor::Gate
                | LayerTensor::Up
                | LayerTensor::Down
                | LayerTensor::Expert { .. }
                | LayerTensor::SharedExpert { .. }
        )
    }

    /// The projection a bias belongs to (`QBias` → `Q`), for the bias tensors.
    pub const fn bias_of(self) -> Option<LayerTensor> {
        match self {
            LayerTensor::QBias => Some(LayerTensor::Q),
            LayerTensor::KBias => Some(LayerTensor::K),
            LayerTensor::VBias => Some(LayerTensor::V),
            _ => None,
        }
    }

    /// The bias of a projection, for the projections that can have one.
    const fn bias(self) -> Option<LayerTensor> {
        match self {
            LayerTensor::Q => Some(LayerTensor::QBias),
            LayerTensor::K => Some(LayerTensor::KBias),
            LayerTensor::V => Some(LayerTensor::VBias),
            _ => None,
        }
    }
}

/// The role of a tensor in a Llama model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TensorId {
    /// Token embedding table `[vocab, hidden]`.
    TokenEmbedding,
    /// A tensor of transformer block `index`.
    Layer {
        /// block number, from 0
        index: u32,
        /// which tensor of the block
        kind: LayerTensor,
    },
    /// Final RMSNorm `[hidden]`.
    OutputNorm,
    /// Output projection (LM head) `[vocab, hidden]`.
    Output,
    /// Llama 3.1 rope frequency factors `[head_dim / 2]` (GGUF only).
    RopeFreqs,
}

/// Which tensor of a (possibly quantized) module a name refers to. Plain checkpoints only have
/// `Weight`; quantized HF layouts add companions beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Part {
    /// `weight`
    Weight,
    /// `weight_scale` (FP8 / INT scales)
    WeightScale,
    /// `input_scale` (static activation scale)
    InputScale,
    /// `weight_packed` (compressed-tensors pack-quantized)
    WeightPacked,
    /// `weight_zero_point`
    WeightZeroPoint,
    /// `weight_shape`
    WeightShape,
    /// `weight_g_idx`
    WeightGIdx,
    /// `weight_global_scale` (compressed-tensors NVFP4's per-tensor F32 scale)
    WeightGlobalScale,
    /// `input_global_scale` (compressed-tensors NVFP4 W4A4's calibrated activation scale)
    InputGlobalScale,
    /// `scales` (mlx-lm affine quantization)
    Scales,
    /// `biases` (mlx-lm affine quantization)
    Biases,
}

impl Part {
    const ALL: [Part; 11] = [
        Part::Weight,
        Part::WeightScale,
        Part::InputScale,
        Part::WeightPacked,
        Part::WeightZeroPoint,
        Part::WeightShape,
        Part::WeightGIdx,
        Part::WeightGlobalScale,
        Part::InputGlobalScale,
        Part::Scales,
        Part::Biases,
    ];

    /// The suffix after the module name.
    pub const fn suffix(self) -> &'static str {
        match self {
            Part::Weight => "weight",
            Part::WeightScale => "weight_scale",
            Part::InputScale => "input_scale",
            Part::WeightPacked => "weight_packed",
            Part::WeightZeroPoint => "weight_zero_point",
            Part::WeightShape => "weight_shape",
            Part::WeightGIdx => "weight_g_idx",
            Part::WeightGlobalScale => "weight_global_scale",
            Part::InputGlobalScale => "input_global_scale",
            Part::Scales => "scales",
            Part::Biases => "biases",
        }
    }

    fn from_suffix(s: &str) -> Option<Part> {
        Part::ALL.into_iter().find(|p| p.suffix() == s)
    }
}

/// A tensor role plus which part of the module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorKey {
    /// the role
    pub id: TensorId,
    /// the part
    pub part: Part,
}

impl TensorKey {
    /// The `weight` of a role.
    pub const fn weight(id: TensorId) -> Self {
        TensorKey {
            id,
            part: Part::Weight,
        }
    }
}

/// What a name table made of a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameMatch {
    /// A tensor qforge understands.
    Tensor(TensorKey),
    /// A known leftover that carries no model weights; skipped on purpose, with the reason.
    Ignored(&'static str),
    /// Not in the table: readers report it as an error.
    Unknown,
}

/// The naming scheme of a format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NameScheme {
    /// Hugging Face transformers `LlamaForCausalLM`.
    Hf,
    /// Meta's reference implementation (`consolidated.NN.pth`).
    Meta,
    /// llama.cpp GGUF.
    Gguf,
}

impl fmt::Display for NameScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// (role, HF module, Meta module, GGUF module) for the block tensors (biases are the `bias` of
/// their projection's module, see [`LayerTensor::bias_of`]). Meta checkpoints (Llama only)
/// have no q/k norms: their module names are empty and never match.
const LAYER_TABLE: [(LayerTensor, &str, &str, &str); 11] = [
    (
        LayerTensor::AttnNorm,
        "input_layernorm",
        "attention_norm",
        "attn_norm",
    ),
    (LayerTensor::Q, "self_attn.q_proj", "attention.wq", "attn_q"),
    (LayerTensor::K, "self_attn.k_proj", "attention.wk", "attn_k"),
    (LayerTensor::V, "self_attn.v_proj", "attention.wv", "attn_v"),
    (
        LayerTensor::O,
        "self_attn.o_proj",
        "attention.wo",
        "attn_output",
    ),
    (
        LayerTensor::FfnNorm,
        "post_attention_layernorm",
        "ffn_norm",
        "ffn_norm",
    ),
    (
        LayerTensor::Gate,
        "mlp.gate_proj",
        "feed_forward.w1",
        "ffn_gate",
    ),
    (LayerTensor::Up, "mlp.up_proj", "feed_forward.w3", "ffn_up"),
    (
        LayerTensor::Down,
        "mlp.down_proj",
        "feed_forward.w2",
        "ffn_down",
    ),
    (LayerTensor::QNorm, "self_attn.q_norm", "", "attn_q_norm"),
    (LayerTensor::KNorm, "self_attn.k_norm", "", "attn_k_norm"),
];

/// (role, HF module, Meta module, GGUF module) for the tensors outside the blocks.
const GLOBAL_TABLE: [(TensorId, Option<&str>, Option<&str>, &str); 4] = [
    (
        TensorId::TokenEmbedding,
        Some("model.embed_tokens"),
        Some("tok_embeddings"),
        "token_embd",
    ),
    (
        TensorId::OutputNorm,
        Some("model.norm"),
        Some("norm"),
        "output_norm",
    ),
    (TensorId::Output, Some("lm_head"), Some("output"), "output"),
    (TensorId::RopeFreqs, None, None, "rope_freqs"),
];

impl NameScheme {
    /// Lower-case name of the scheme.
    pub const fn as_str(self) -> &'static str {
        match self {
            NameScheme::Hf => "hf",
            NameScheme::Meta => "meta",
            NameScheme::Gguf => "gguf",
        }
    }

    const fn pick<'a>(self, hf: &'a str, meta: &'a str, gguf: &'a str) -> &'a str {
        match self {
            NameScheme::Hf => hf,
            NameScheme::Meta => meta,
            NameScheme::Gguf => gguf,
        }
    }

    const fn layer_prefix(self) -> &'static str {
        self.pick("model.layers.", "layers.", "blk.")
    }

    /// The prefix of a block's tensor names (`model.layers.`, `layers.`, `blk.`).
    pub const fn layer_prefix_str(self) -> &'static str {
        self.layer_prefix()
    }

    /// A router or expert module inside a block: HF in either spelling ([`HfMoeNames`]), GGUF
    /// `ffn_gate_inp` and the expert slices `ffn_gate_exps.E` qforge names a 3-D stack's experts
    /// by (the file holds one tensor `ffn_gate_exps.weight`; [`crate::gguf::read`] splits it).
    fn parse_moe(self, layer_module: &str) -> Option<LayerTensor> {
        match self {
            NameScheme::Hf => HfMoeNames::parse(layer_module),
            NameScheme::Meta => None,
            NameScheme::Gguf => {
                if layer_module == "ffn_gate_inp" {
                    return Some(LayerTensor::Router);
                }
                if let Some(proj) = FfnProj::ALL
                    .into_iter()
                    .find(|p| p.gguf_shared() == layer_module)
                {
                    return Some(LayerTensor::SharedExpert { proj });
                }
                let (stack, e) = layer_module.split_once('.')?;
                let proj = FfnProj::ALL.into_iter().find(|p| p.names().2 == stack)?;
                Some(LayerTensor::Expert {
                    expert: parse_index(e)?,
                    proj,
                })
            }
        }
    }

    /// Parse a tensor name of this scheme.
    pub fn parse(self, name: &str) -> NameMatch {
        let Some((module, suffix)) = name.rsplit_once('.') else {
            return NameMatch::Unknown;
        };
        if self == NameScheme::Hf && suffix == "inv_freq" && module.ends_with(".rotary_emb") {
            return NameMatch::Ignored("rotary inv_freq buffer (recomputed from the config)");
        }
        if self == NameScheme::Meta && name == "rope.freqs" {
            return NameMatch::Ignored("rope.freqs buffer (recomputed from params.json)");
        }
        // `<projection>.bias` (HF `self_attn.q_proj.bias`, GGUF `attn_q.bias`): a role of its own
        if suffix == "bias" && self != NameScheme::Meta {
            return match self.parse(&format!("{module}.weight")) {
                NameMatch::Tensor(TensorKey {
                    id: TensorId::Layer { index, kind },
                    part: Part::Weight,
                }) => kind.bias().map_or(NameMatch::Unknown, |kind| {
                    NameMatch::Tensor(TensorKey::weight(TensorId::Layer { index, kind }))
                }),
                _ => NameMatch::Unknown,
            };
        }
        let Some(part) = Part::from_suffix(suffix) else {
            return NameMatch::Unknown;
        };
        // Only HF checkpoints carry quantization companions.
        if part != Part::Weight && self != NameScheme::Hf {
            return NameMatch::Unknown;
        }
        if let Some(rest) = module.strip_prefix(self.layer_prefix()) {
            let Some((index, layer_module)) = rest.split_once('.') else {
                return NameMatch::Unknown;
            };
            let Some(index) = parse_index(index) else {
                return NameMatch::Unknown;
            };
            if let Some(kind) = self.parse_moe(layer_module) {
                return NameMatch::Tensor(TensorKey {
                    id: TensorId::Layer { index, kind },
                    part,
                });
            }
            return LAYER_TABLE
                .iter()
                .find(|(_, hf, meta, gguf)| {
                    let m = self.pick(hf, meta, gguf);
                    !m.is_empty() && m == layer_module
                })
                .map_or(NameMatch::Unknown, |(kind, ..)| {
                    NameMatch::Tensor(TensorKey {
                        id: TensorId::Layer { index, kind: *kind },
                        part,
                    })
                });
        }
        GLOBAL_TABLE
            .iter()
            .find(|(_, hf, meta, gguf)| match self {
                NameScheme::Hf => *hf == Some(module),
                NameScheme::Meta => *meta == Some(module),
                NameScheme::Gguf => *gguf == module,
            })
            .map_or(NameMatch::Unknown, |(id, ..)| {
                NameMatch::Tensor(TensorKey { id: *id, part })
            })
    }

    /// The name of `key` in this scheme, or `None` if the format cannot hold it (rope frequency
    /// factors outside GGUF, quantization companions outside HF).
    pub fn name(self, key: TensorKey) -> Option<String> {
        if key.part != Part::Weight && self != NameScheme::Hf {
            return None;
        }
        let module = match key.id {
            TensorId::Layer { index, kind } if kind.bias_of().is_some() => {
                if self == NameScheme::Meta || key.part != Part::Weight {
                    return None;
                }
                let of = TensorId::Layer {
                    index,
                    kind: kind.bias_of()?,
                };
                let w = self.name(TensorKey::weight(of))?;
                return Some(format!("{}.bias", w.strip_suffix(".weight")?));
            }
            TensorId::Layer {
                index,
                kind: LayerTensor::SharedExpert { proj },
            } => match self {
                NameScheme::Hf => return HfMoeNames::Llama4.name(key),
                NameScheme::Meta => return None,
                NameScheme::Gguf => format!("blk.{index}.{}", proj.gguf_shared()),
            },
            TensorId::Layer {
                index,
                kind: kind @ (LayerTensor::Router | LayerTensor::Expert { .. }),
            } => match self {
                NameScheme::Hf => return HfMoeNames::Qwen.name(key),
                NameScheme::Meta => return None,
                NameScheme::Gguf => match kind {
                    LayerTensor::Expert { expert, proj } => {
                        format!("blk.{index}.{}.{expert}", proj.names().2)
                    }
                    _ => format!("blk.{index}.ffn_gate_inp"),
                },
            },
            TensorId::Layer { index, kind } => {
                let (_, hf, meta, gguf) = LAYER_TABLE.iter().find(|row| row.0 == kind)?;
                if self.pick(hf, meta, gguf).is_empty() {
                    return None;
                }
                format!(
                    "{}{index}.{}",
                    self.layer_prefix(),
                    self.pick(hf, meta, gguf)
                )
            }
            id => {
                let (_, hf, meta, gguf) = GLOBAL_TABLE.iter().find(|row| row.0 == id)?;
                match self {
                    NameScheme::Hf => (*hf)?.to_owned(),
                    NameScheme::Meta => (*meta)?.to_owned(),
                    NameScheme::Gguf => (*gguf).to_owned(),
                }
            }
        };
        Some(format!("{module}.{}", key.part.suffix()))
    }
}

/// A block index: plain decimal digits, no sign, no leading zeros, fits `u32`.
fn parse_index(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

impl fmt::Display for TensorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The GGUF spelling is the shortest and the one llama.cpp users know.
        let key = TensorKey::weight(*self);
        let name = NameScheme::Gguf.name(key).unwrap_or_default();
        f.write_str(name.strip_suffix(".weight").unwrap_or(&name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_keys() -> Vec<TensorKey> {
        let mut ids = vec![
            TensorId::TokenEmbedding,
            TensorId::OutputNorm,
            TensorId::Output,
            TensorId::RopeFreqs,
        ];
        for index in [0, 7, 125] {
            ids.extend(
                LayerTensor::ALL
                    .iter()
                    .map(|&kind| TensorId::Layer { index, kind }),
            );
            ids.push(TensorId::Layer {
                index,
                kind: LayerTensor::Router,
            });
            for expert in [0, 9, 127] {
                ids.extend(FfnProj::ALL.into_iter().map(|proj| TensorId::Layer {
                    index,
                    kind: LayerTensor::Expert { expert, proj },
                }));
            }
        }
        let mut keys = Vec::new();
        for id in ids {
            keys.extend(Part::ALL.iter().map(|&part| TensorKey { id, part }));
        }
        keys
    }

    #[test]
    fn every_name_round_trips_in_every_scheme() {
        for scheme in [NameScheme::Hf, NameScheme::Meta, NameScheme::Gguf] {
            for key in all_keys() {
                if let Some(name) = scheme.name(key) {
                    assert_eq!(
                        scheme.parse(&name),
                        NameMatch::Tensor(key),
                        "{scheme} {name}"
                    );
                }
            }
        }
    }

    #[test]
    fn known_spellings() {
        let q3 = TensorKey::weight(TensorId::Layer {
            index: 3,
            kind: LayerTensor::Q,
        });
        assert_eq!(
            NameScheme::Hf.name(q3).unwrap(),
            "model.layers.3.self_attn.q_proj.weight"
        );
        assert_eq!(
            NameScheme::Meta.name(q3).unwrap(),
            "layers.3.attention.wq.weight"
        );
        assert_eq!(NameScheme::Gguf.name(q3).unwrap(), "blk.3.attn_q.weight");
        let down = TensorKey::weight(TensorId::Layer {
            index: 0,
            kind: LayerTensor::Down,
        });
        assert_eq!(
            NameScheme::Meta.name(down).unwrap(),
            "layers.0.feed_forward.w2.weight"
        );
        assert_eq!(
            NameScheme::Hf
                .name(TensorKey::weight(TensorId::Output))
                .unwrap(),
            "lm_head.weight"
        );
        assert_eq!(
            NameScheme::Hf.name(TensorKey::weight(TensorId::RopeFreqs)),
            None
        );
        // Qwen2's biases and Qwen3's q/k norms (llama.cpp llama-arch.cpp LLM_TENSOR_NAMES)
        let layer = |kind| TensorKey::weight(TensorId::Layer { index: 5, kind });
        for (kind, hf, gguf) in [
            (
                LayerTensor::QBias,
                "model.layers.5.self_attn.q_proj.bias",
                "blk.5.attn_q.bias",
            ),
            (
                LayerTensor::VBias,
                "model.layers.5.self_attn.v_proj.bias",
                "blk.5.attn_v.bias",
            ),
            (
                LayerTensor::KNorm,
                "model.layers.5.self_attn.k_norm.weight",
                "blk.5.attn_k_norm.weight",
            ),
        ] {
            assert_eq!(NameScheme::Hf.name(layer(kind)).unwrap(), hf);
            assert_eq!(NameScheme::Gguf.name(layer(kind)).unwrap(), gguf);
            assert_eq!(NameScheme::Meta.name(layer(kind)), None);
        }
        assert_eq!(
            TensorId::Layer {
                index: 2,
                kind: LayerTensor::O
            }
            .to_string(),
            "blk.2.attn_output"
        );
    }

    #[test]
    fn moe_spellings() {
        let l = |kind| TensorKey::weight(TensorId::Layer { index: 3, kind });
        let e = |expert, proj| l(LayerTensor::Expert { expert, proj });
        // transformers' module names; llama-arch.cpp LLM_TENSOR_FFN_GATE_INP
        for (key, qwen, mixtral, gguf) in [
            (
                l(LayerTensor::Router),
                "model.layers.3.mlp.gate.weight",
                "model.layers.3.block_sparse_moe.gate.weight",
                "blk.3.ffn_gate_inp.weight",
            ),
            (
                e(5, FfnProj::Gate),
                "model.layers.3.mlp.experts.5.gate_proj.weight",
                "model.layers.3.block_sparse_moe.experts.5.w1.weight",
                "blk.3.ffn_gate_exps.5.weight",
            ),
            (
                e(0, FfnProj::Up),
                "model.layers.3.mlp.experts.0.up_proj.weight",
                "model.layers.3.block_sparse_moe.experts.0.w3.weight",
                "blk.3.ffn_up_exps.0.weight",
            ),
            (
                e(12, FfnProj::Down),
                "model.layers.3.mlp.experts.12.down_proj.weight",
                "model.layers.3.block_sparse_moe.experts.12.w2.weight",
                "blk.3.ffn_down_exps.12.weight",
            ),
        ] {
            assert_eq!(HfMoeNames::Qwen.name(key).unwrap(), qwen);
            assert_eq!(HfMoeNames::Mixtral.name(key).unwrap(), mixtral);
            assert_eq!(NameScheme::Gguf.name(key).unwrap(), gguf);
            for n in [qwen, mixtral] {
                assert_eq!(NameScheme::Hf.parse(n), NameMatch::Tensor(key), "{n}");
            }
            // llm-compressor's linearized Mixtral experts: Mixtral's block, Qwen's projections
            let linearized = qwen.replace(".mlp.", ".block_sparse_moe.");
            assert_eq!(
                NameScheme::Hf.parse(&linearized),
                NameMatch::Tensor(key),
                "{linearized}"
            );
            assert_eq!(NameScheme::Gguf.parse(gguf), NameMatch::Tensor(key));
            assert_eq!(NameScheme::Meta.name(key), None);
        }
        assert_eq!(
            FfnProj::parse_gguf_stack("blk.7.ffn_down_exps.weight"),
            Some((7, FfnProj::Down))
        );
        assert_eq!(FfnProj::Down.gguf_stack(7), "blk.7.ffn_down_exps.weight");
        for bad in [
            "model.layers.0.mlp.experts.01.up_proj.weight",
            "model.layers.0.mlp.experts.1.w1.weight",
            "model.layers.0.block_sparse_moe.experts.1.w4.weight",
            "model.layers.0.block_sparse_moe.experts.1.gate_up_proj.weight",
            "model.layers.0.mlp.experts.up_proj.weight",
            "model.layers.0.mlp.gate.bias",
        ] {
            assert_eq!(NameScheme::Hf.parse(bad), NameMatch::Unknown, "{bad}");
        }
        assert_eq!(FfnProj::parse_gguf_stack("blk.7.ffn_down.weight"), None);
    }

    #[test]
    fn rejects_near_misses() {
        for name in [
            "model.layers.01.self_attn.q_proj.weight",
            "model.layers.+1.self_attn.q_proj.weight",
            "model.layers.99999999999.self_attn.q_proj.weight",
            "model.layers.1.self_attn.o_proj.bias",
            "model.layers.1.mlp.gate_proj.bias",
            "model.layers.1.self_attn.q_norm.bias",
            "model.layers.1.self_attn.q_proj",
            "model.layers..self_attn.q_proj.weight",
            "blk.0.attn_q.weight_scale",
            "layers.0.attention.wq.weight_scale",
            "model.embed_tokens.weights",
            "",
            ".",
            "blk.0.attn_q",
        ] {
            assert_eq!(NameScheme::Hf.parse(name), NameMatch::Unknown, "{name}");
            assert_eq!(NameScheme::Gguf.parse(name), NameMatch::Unknown, "{name}");
            assert_eq!(NameScheme::Meta.parse(name), NameMatch::Unknown, "{name}");
        }
        assert!(matches!(
            NameScheme::Hf.parse("model.layers.0.self_attn.rotary_emb.inv_freq"),
            NameMatch::Ignored(_)
        ));
    }
}
