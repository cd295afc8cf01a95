//! A checkpoint opened for evaluation: configuration, RoPE layout, how each linear's input is
//! quantized, and per-layer weights dequantized on demand.

use qforge_quantize::dequant::WeightRead;
use std::path::Path;

use qforge_convert::{Checkpoint, Format, LayerTensor, ModelConfig, RopeScaling, TensorId};
use qforge_quantize::dequant::WeightStorage;
use qforge_quantize::layout::ActEmulation;
use serde_json::Value;

use crate::actquant::{
    fp8_per_token, fp8_per_token_group, ggml_quantize, nvfp4_qdq, GgmlActType, FP8_ACT_GROUP,
};
use crate::error::{Error, Result};
use crate::matmul::matmul_t;
use crate::ops::{inv_freqs, yarn_inv_freqs, Llama3Scaling, RopeLayout, RopeTable, YarnScaling};
use crate::real::Real;

/// Whether to emulate dynamic per-token FP8 activations (W8A8) on quantized linears.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum W8a8Mode {
    /// From the checkpoint's `quantization_config` (compressed-tensors `input_activations`
    /// `{type: float, strategy: token, dynamic: true}`, or `fbgemm_fp8`).
    #[default]
    Auto,
    /// Always, on every linear that has a `weight_scale` (no upper bound on the amax).
    On,
    /// Never.
    Off,
}

/// How the forward pass treats a model's numbers.
#[derive(Debug, Clone, Copy, Default)]
pub struct ForwardOptions {
    /// Dynamic FP8 activations on quantized linears.
    pub w8a8: W8a8Mode,
    /// Quantize each linear's input to the weight type's ggml `vec_dot_type` (what
    /// llama.cpp's CPU backend does), for comparisons with llama.cpp on quantized GGUFs.
    pub ggml_act_quant: bool,
    /// Round K (after RoPE) and V to f16, as llama.cpp's default F16 KV cache does.
    pub kv_f16: bool,
    /// Attention as ggml-cpu's flash attention computes it over the F16 KV cache
    /// ([`crate::ggml_cpu::flash_attn_ext`]; llama-perplexity's default): implies `kv_f16`.
    pub ggml_cpu_ops: bool,
}

/// Activation handling of one linear.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ActQuant {
    /// Activations used as they are.
    None,
    /// Dynamic per-token FP8 with an optional amax upper bound.
    Fp8Token {
        /// fbgemm's `activation_scale_ub`.
        ub: Option<f32>,
    },
    /// ggml-cpu's `vec_dot_type` quantization.
    Ggml(GgmlActType),
    /// Dynamic per-token-group FP8 (groups of 128), vLLM's activations for block FP8 weights.
    Fp8Group,
    /// NVFP4 W4A4: FP4 groups of 16 under the calibrated `input_global_scale`.
    Nvfp4 {
        /// compressed-tensors' `input_global_scale`.
        gs: f32,
    },
}

/// A linear layer's weight, dequantized: `[out, inp]` row-major.
pub struct Linear {
    /// Weights, `[out, inp]` row-major.
    pub w: Vec<f32>,
    /// Output features.
    pub out: usize,
    /// Input features.
    pub inp: usize,
    /// What happens to the input before the matmul.
    pub act: ActQuant,
    /// The stored codes and scales, for the linears whose matmul is computed as the
    /// reference computes it ([`Exact`]) rather than as an `f32` GEMM of `w`.
    pub exact: Option<Exact>,
}

/// A weight kept in its stored integer/FP8 form for an order-independent matmul.
#[derive(Debug, Clone)]
pub enum Exact {
    /// A 32-block ggml type, multiplied with Q8_0/Q8_1 activations as ggml-cpu does
    /// ([`crate::gemm::ggml`]).
    Ggml(crate::gemm::ggml::GgmlWeights),
    /// FP8 E4M3 with per-row or per-tensor scales, multiplied with dynamic per-token FP8
    /// activations as vLLM's scaled matmul defines it ([`crate::gemm::fp8`]).
    Fp8(crate::gemm::fp8::Fp8Weights),
}

impl Linear {
    /// A 0 × 0 linear (the dense FFN of a mixture-of-experts block).
    pub fn empty() -> Self {
        Linear {
            w: Vec::new(),
            out: 0,
            inp: 0,
            act: ActQuant::None,
            exact: None,
        }
    }

    /// `y[t, out] = act(x)[t, inp] · Wᵀ`.
    pub fn forward(&self, x: &[f32], t: usize, y: &mut [f32]) {
        match self.act {
            ActQuant::None | ActQuant::Ggml(GgmlActType::F32) => {
                matmul_t(x, t, self.inp, &self.w, self.out, y);
            }
            ActQuant::Fp8Token { ub } => {
                let mut xq = x.to_vec();
                let s = fp8_per_token(&mut xq, self.inp, ub);
                if let Some(Exact::Fp8(w)) = &self.exact {
                    crate::gemm::fp8::matmul(&xq, &s, t, w, self.out, self.inp, y);
                    return;
                }
                matmul_t(&xq, t, self.inp, &self.w, self.out, y);
                for (row, s) in y.chunks_exact_mut(self.out).zip(&s) {
                    for v in row {
                        *v *= s;
                    }
                }
            }
            ActQuant::Fp8Group => {
                let mut xq = x.to_vec();
                fp8_per_token_group(&mut xq, self.inp, FP8_ACT_GROUP);
                matmul_t(&xq, t, self.inp, &self.w, self.out, y);
            }
            ActQuant::Nvfp4 { gs } => {
                let mut xq = x.to_vec();
                nvfp4_qdq(&mut xq, self.inp, gs);
                matmul_t(&xq, t, self.inp, &self.w, self.out, y);
            }
            ActQuant::Ggml(ty) => {
                if let Some(Exact::Ggml(w)) = &self.exact {
                    let a = crate::gemm::ggml::quantize_q8(&x[..t * self.inp], !w.m.is_empty());
                    crate::gemm::ggml::matmul(&a, t, w, self.out, self.inp, y);
                    return;
                }
                // the float types and the K-quants: an f32 GEMM of the dequantized values
                let mut xq = x.to_vec();
                ggml_quantize(&mut xq, self.inp, ty);
                matmul_t(&xq, t, self.inp, &self.w, self.out, y);
            }
        }
    }
}

/// A linear layer the generic forward can run: `y[t, out] = x[t, inp] · Wᵀ` in `T`.
pub trait Project<T> {
    /// `y = x · Wᵀ` for `t` tokens.
    fn project(&self, x: &[T], t: usize, y: &mut [T]);
}

impl Project<f32> for Linear {
    fn project(&self, x: &[f32], t: usize, y: &mut [f32]) {
        self.forward(x, t, y);
    }
}

/// A plain linear layer in `T` (no activation quantization): the `f64` forward's weights.
pub struct Dense<T> {
    /// Weights, `[out, inp]` row-major.
    pub w: Vec<T>,
    /// Output features.
    pub out: usize,
    /// Input features.
    pub inp: usize,
}

impl<T: Real> Project<T> for Dense<T> {
    fn project(&self, x: &[T], t: usize, y: &mut [T]) {
        matmul_t(x, t, self.inp, &self.w, self.out, y);
    }
}

/// One transformer block's weights, dequantized (`f32` [`Linear`]s by default).
pub struct LayerWeights<T = f32, L = Linear> {
    /// `input_layernorm` weight.
    pub attn_norm: Vec<T>,
    /// `q_proj`.
    pub q: L,
    /// `k_proj`.
    pub k: L,
    /// `v_proj`.
    pub v: L,
    /// `o_proj`.
    pub o: L,
    /// `post_attention_layernorm` weight.
    pub ffn_norm: Vec<T>,
    /// `gate_proj`.
    pub gate: L,
    /// `up_proj`.
    pub up: L,
    /// `down_proj`.
    pub down: L,
    /// `q_proj`/`k_proj`/`v_proj` biases, for the families that have them (Qwen2).
    pub qkv_bias: Option<[Vec<T>; 3]>,
    /// Per-head `q_norm`/`k_norm` weights (`[head_dim]`), applied before RoPE (Qwen3).
    pub qk_norm: Option<[Vec<T>; 2]>,
    /// Keys a query sees on this layer (sliding-window attention), `None`: all before it.
    pub window: Option<usize>,
    /// The router and experts of a mixture-of-experts block, whose `gate`/`up`/`down` are then
    /// empty (0 × 0).
    pub moe: Option<crate::moe::MoeWeights<T, L>>,
    /// Llama 4's attention variant of this block.
    pub llama4: Option<Llama4Layer>,
}

/// How a Llama 4 block attends ([`qforge_convert::Llama4Attention`] for one block).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama4Layer {
    /// Rotate q/k (a RoPE block) or not (NoPE).
    pub rope: bool,
    /// RMS-normalise q and k per head after RoPE, without a weight (`Llama4TextL2Norm`).
    pub qk_l2_norm: bool,
    /// Attend within chunks of this many positions.
    pub chunk: Option<usize>,
    /// Scale q at position `p` by `log1p(floor((p + 1) / floor_scale)) · attn_scale + 1`:
    /// `(floor_scale, attn_scale)`.
    pub temperature: Option<(f64, f64)>,
}

impl LayerWeights {
    /// The same weights in `f64` (exact), or `None` when a linear quantizes its activations
    /// (the `f64` forward computes the unquantized model only).
    pub fn to_f64(&self) -> Option<LayerWeights<f64, Dense<f64>>> {
        let d = |l: &Linear| {
            matches!(l.act, ActQuant::None | ActQuant::Ggml(GgmlActType::F32)).then(|| Dense {
                w: l.w.iter().map(|&v| f64::from(v)).collect(),
                out: l.out,
                inp: l.inp,
            })
        };
        let n = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>();
        Some(LayerWeights {
            attn_norm: n(&self.attn_norm),
            q: d(&self.q)?,
            k: d(&self.k)?,
            v: d(&self.v)?,
            o: d(&self.o)?,
            ffn_norm: n(&self.ffn_norm),
            gate: d(&self.gate)?,
            up: d(&self.up)?,
            down: d(&self.down)?,
            qkv_bias: self.qkv_bias.as_ref().map(|b| b.each_ref().map(|v| n(v))),
            qk_norm: self.qk_norm.as_ref().map(|b| b.each_ref().map(|v| n(v))),
            window: self.window,
            moe: match &self.moe {
                Some(m) => Some(m.to_f64()?),
                None => None,
            },
            llama4: self.llama4,
        })
    }
}

/// A model ready for evaluation.
pub struct Model {
    /// The checkpoint.
    pub ckpt: Checkpoint,
    /// Row order of Q/K for RoPE.
    pub rope_layout: RopeLayout,
    /// Rotary frequencies, `head_dim/2` of them.
    pub inv_freq: Vec<f64>,
    /// Factor on cos/sin (YaRN's attention factor; 1 otherwise): build tables with
    /// [`Model::rope_table`].
    pub rope_attn_factor: f64,
    /// Options in force.
    pub opts: ForwardOptions,
    /// FP8 per-token activations resolved from the options and the checkpoint (upper bound).
    pub w8a8: Option<Option<f32>>,
    /// Under `--ggml-cpu-ops`: the `f32` RoPE base and `rope_freqs` factors ggml's tables are
    /// computed from ([`RopeTable::ggml`]).
    ggml_rope: Option<(f32, Option<Vec<f32>>)>,
}

impl Model {
    /// Open `path` (any format [`Checkpoint::open`] reads) for evaluation.
    pub fn open(path: &Path, opts: ForwardOptions) -> Result<Self> {
        let ckpt = Checkpoint::open(path)?;
        Self::new(ckpt, opts)
    }

    /// Prepare an opened checkpoint.
    pub fn new(ckpt: Checkpoint, opts: ForwardOptions) -> Result<Self> {
        let cfg = &ckpt.config;
        let unsupported = |reason: String| Error::Unsupported {
            path: ckpt.path.clone(),
            reason,
        };
        if cfg.head_dim % 2 != 0 {
            return Err(unsupported(format!("odd head_dim {}", cfg.head_dim)));
        }
        // HF pairs (j, j + hd/2); Meta and GGUF per the family's llama.cpp rope type
        let rope_layout = if cfg.family.half_split_rope(ckpt.format) {
            RopeLayout::HalfSplit
        } else {
            RopeLayout::Interleaved
        };
        let hd = cfg.head_dim as usize;
        let freq_factors = match ckpt.part(TensorId::RopeFreqs, qforge_convert::Part::Weight) {
            Some(t) => {
                let f = ckpt.to_f32(t)?;
                if f.len() != hd / 2 || f.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
                    return Err(unsupported(format!(
                        "rope_freqs must hold {} positive factors",
                        hd / 2
                    )));
                }
                Some(f)
            }
            None => None,
        };
        let (llama3, linear) = match (&cfg.rope_scaling, &freq_factors) {
            // GGUF carries llama3 scaling as rope_freqs; never apply it twice.
            (_, Some(_)) | (None | Some(RopeScaling::Yarn { .. }), None) => (None, None),
            (
                Some(RopeScaling::Llama3 {
                    factor,
                    low_freq_factor,
                    high_freq_factor,
                    original_max_position_embeddings,
                }),
                None,
            ) => (
                Some(Llama3Scaling {
                    factor: *factor,
                    low_freq_factor: *low_freq_factor,
                    high_freq_factor: *high_freq_factor,
                    original_max_position_embeddings: *original_max_position_embeddings as f64,
                }),
                None,
            ),
            (Some(RopeScaling::Linear { factor }), None) => (None, Some(*factor)),
        };
        let (inv_freq, rope_attn_factor) = match (&cfg.rope_scaling, &freq_factors) {
            (
                Some(RopeScaling::Yarn {
                    factor,
                    original_max_position_embeddings,
                    beta_fast,
                    beta_slow,
                }),
                None,
            ) => yarn_inv_freqs(
                cfg.rope_theta,
                hd,
                &YarnScaling {
                    factor: *factor,
                    original_max_position_embeddings: *original_max_position_embeddings as f64,
                    beta_fast: beta_fast.unwrap_or(32.0),
                    beta_slow: beta_slow.unwrap_or(1.0),
                },
            ),
            (Some(RopeScaling::Yarn { .. }), Some(_)) => {
                return Err(unsupported(
                    "YaRN RoPE scaling with rope_freqs factors".into(),
                ))
            }
            _ => (
                inv_freqs(cfg.rope_theta, hd, llama3, linear, freq_factors.as_deref()),
                1.0,
            ),
        };
        let w8a8 = match opts.w8a8 {
            W8a8Mode::Off => None,
            W8a8Mode::On => Some(None),
            W8a8Mode::Auto => detect_w8a8(&ckpt),
        };
        let ggml_rope = match (&cfg.rope_scaling, freq_factors) {
            _ if !opts.ggml_cpu_ops => None,
            // llama3 scaling reaches ggml as GGUF rope_freqs
            (_, Some(ff)) => Some((cfg.rope_theta as f32, Some(ff))),
            (None, None) => Some((cfg.rope_theta as f32, None)),
            (Some(s), None) => {
                return Err(unsupported(format!(
                    "--ggml-cpu-ops emulates ggml's RoPE without scaling or with GGUF rope_freqs \
                     factors, not {s:?} scaling"
                )))
            }
        };
        Ok(Model {
            ckpt,
            rope_layout,
            inv_freq,
            rope_attn_factor,
            opts,
            w8a8,
            ggml_rope,
        })
    }

    /// The rotary cos/sin tables for `positions` positions (frequencies and attention factor).
    pub fn rope_table(&self, positions: usize) -> RopeTable {
        match &self.ggml_rope {
            Some((base, ff)) => {
                RopeTable::ggml(*base, self.inv_freq.len() * 2, ff.as_deref(), positions)
            }
            None => RopeTable::scaled(&self.inv_freq, positions, self.rope_attn_factor),
        }
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.ckpt.config
    }

    pub(crate) fn linear(&self, index: u32, kind: LayerTensor) -> Result<Linear> {
        let id = TensorId::Layer { index, kind };
        let storage = self.ckpt.weight_storage(id)?;
        let shape = self.ckpt.config.expected_shape(id);
        let (out, inp) = (shape[0] as usize, shape[1] as usize);
        let w = self.ckpt.weight_f32(id)?;
        let act = match storage {
            WeightStorage::Plain(dtype) if self.opts.ggml_act_quant => {
                let ty = GgmlActType::for_weight(dtype).ok_or_else(|| Error::Unsupported {
                    path: self.ckpt.path.clone(),
                    reason: format!("no ggml activation type known for {dtype} weights ({id})"),
                })?;
                if inp % ty.block() != 0 {
                    return Err(Error::Unsupported {
                        path: self.ckpt.path.clone(),
                        reason: format!("{id}: row length {inp} is not whole {ty:?} blocks"),
                    });
                }
                ActQuant::Ggml(ty)
            }
            WeightStorage::Plain(_) => ActQuant::None,
            // the layout chooses the activation quantization servers apply
            WeightStorage::Quantized(s) => match s.act_emulation(&self.ckpt, id, self.w8a8)? {
                ActEmulation::None => ActQuant::None,
                ActEmulation::Fp8Token { ub } => ActQuant::Fp8Token { ub },
                ActEmulation::Fp8Group => ActQuant::Fp8Group,
                ActEmulation::Nvfp4 { gs } => ActQuant::Nvfp4 { gs },
            },
        };
        let exact = self.exact_weights(id, storage, act, out, inp)?;
        self.release(id);
        Ok(Linear {
            w,
            out,
            inp,
            act,
            exact,
        })
    }

    /// The stored form of `id`'s weight when its matmul runs on codes ([`Exact`]): ggml's
    /// 32-block types under `--ggml-act-quant`, FP8 E4M3 row/tensor-scaled weights under
    /// W8A8; `None` otherwise.
    fn exact_weights(
        &self,
        id: TensorId,
        storage: WeightStorage,
        act: ActQuant,
        out: usize,
        inp: usize,
    ) -> Result<Option<Exact>> {
        let part = |p| {
            self.ckpt
                .part(id, p)
                .ok_or_else(|| qforge_convert::Error::NoSuchTensor(id.to_string()))
        };
        let bad = |reason: String| Error::Unsupported {
            path: self.ckpt.path.clone(),
            reason: format!("{id}: {reason}"),
        };
        match (act, storage) {
            (ActQuant::Ggml(_), WeightStorage::Plain(dtype))
                if crate::gemm::ggml::GgmlWeights::supports(dtype) =>
            {
                let t = part(qforge_convert::Part::Weight)?;
                let bytes = self.ckpt.bytes(t)?;
                let w = crate::gemm::ggml::GgmlWeights::from_blocks(dtype, &bytes, out, inp)
                    .map_err(|e| bad(format!("{} {e}", t.name)))?;
                Ok(Some(Exact::Ggml(w)))
            }
            // FP8 with one scale per row or per tensor (not FP8 block, whose act is Fp8Group)
            (ActQuant::Fp8Token { .. }, WeightStorage::Quantized(s))
                if matches!(s.kind.id(), "fp8-rowwise" | "fp8-static")
                    && inp <= crate::gemm::fp8::MAX_K =>
            {
                let t = part(qforge_convert::Part::Weight)?;
                if t.dtype != qforge_codecs::DType::F8_E4M3 {
                    // E5M2 products are not exact in f64 over long rows: f32 GEMM of `w`
                    return Ok(None);
                }
                let codes = self.ckpt.bytes(t)?.into_owned();
                if Some(codes.len()) != out.checked_mul(inp) {
                    return Err(bad(format!(
                        "{}: {} bytes for [{out}, {inp}] FP8",
                        t.name,
                        codes.len()
                    )));
                }
                let st = part(qforge_convert::Part::WeightScale)?;
                let scale = self.ckpt.to_f32(st)?;
                if scale.len() != 1 && scale.len() != out {
                    return Err(bad(format!(
                        "{}: {} scales for {out} rows",
                        st.name,
                        scale.len()
                    )));
                }
                Ok(Some(Exact::Fp8(crate::gemm::fp8::Fp8Weights {
                    codes,
                    scale,
                })))
            }
            _ => Ok(None),
        }
    }

    pub(crate) fn norm(&self, id: TensorId) -> Result<Vec<f32>> {
        let t = self
            .ckpt
            .part(id, qforge_convert::Part::Weight)
            .ok_or_else(|| qforge_convert::Error::NoSuchTensor(id.to_string()))?;
        let v = self.ckpt.to_f32(t)?;
        self.ckpt.release(t);
        Ok(v)
    }

    fn release(&self, id: TensorId) {
        for t in self.ckpt.tensors.iter().filter(|t| t.key.id == id) {
            self.ckpt.release(t);
        }
    }

    /// Layer `index`'s weights, dequantized (their mapped pages released afterwards).
    pub fn layer(&self, index: u32) -> Result<LayerWeights> {
        self.layer_with(index, false)
    }

    /// [`Model::layer`] with a mixture-of-experts block's experts left on the checkpoint
    /// ([`crate::moe::MoeWeights::load_streamed`]): the forward
    /// ([`crate::eval::run_layer_streamed`]) dequantizes them one at a time.
    pub fn layer_streamed(&self, index: u32) -> Result<LayerWeights> {
        self.layer_with(index, true)
    }

    fn layer_with(&self, index: u32, stream_experts: bool) -> Result<LayerWeights> {
        let l = |kind| TensorId::Layer { index, kind };
        let spec = self.ckpt.config.family.spec();
        let qkv_bias = if spec.qkv_bias {
            Some([
                self.norm(l(LayerTensor::QBias))?,
                self.norm(l(LayerTensor::KBias))?,
                self.norm(l(LayerTensor::VBias))?,
            ])
        } else {
            None
        };
        let qk_norm = if spec.qk_norm {
            Some([
                self.norm(l(LayerTensor::QNorm))?,
                self.norm(l(LayerTensor::KNorm))?,
            ])
        } else {
            None
        };
        let window = self
            .ckpt
            .config
            .sliding_window
            .filter(|w| u64::from(index) >= w.first_layer)
            .map(|w| usize::try_from(w.size).unwrap_or(usize::MAX));
        // a mixture-of-experts block: router and experts instead of the dense FFN
        let moe = if self.ckpt.config.is_moe_layer(index) {
            Some(if stream_experts {
                crate::moe::MoeWeights::load_streamed(self, index)?
            } else {
                crate::moe::MoeWeights::load(self, index)?
            })
        } else {
            None
        };
        let dense = |kind| match moe {
            Some(_) => Ok(Linear::empty()),
            None => self.linear(index, kind),
        };
        let llama4 = self.ckpt.config.llama4.as_ref().map(|a| {
            let rope = a.rope(index);
            Llama4Layer {
                rope,
                qk_l2_norm: rope && a.qk_l2_norm,
                chunk: a
                    .chunked(index)
                    .then(|| usize::try_from(a.chunk_size).unwrap_or(usize::MAX)),
                temperature: (!rope && a.temperature_tuning)
                    .then_some((a.floor_scale as f64, a.attn_scale)),
            }
        });
        Ok(LayerWeights {
            qkv_bias,
            qk_norm,
            window,
            llama4,
            attn_norm: self.norm(l(LayerTensor::AttnNorm))?,
            q: self.linear(index, LayerTensor::Q)?,
            k: self.linear(index, LayerTensor::K)?,
            v: self.linear(index, LayerTensor::V)?,
            o: self.linear(index, LayerTensor::O)?,
            ffn_norm: self.norm(l(LayerTensor::FfnNorm))?,
            gate: dense(LayerTensor::Gate)?,
            up: dense(LayerTensor::Up)?,
            down: dense(LayerTensor::Down)?,
            moe,
        })
    }

    /// Embedding rows for `tokens` (`[tokens, hidden]`).
    pub fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        if let Some(rows) = self.embed_rows(tokens)? {
            return Ok(rows);
        }
        let h = self.ckpt.config.hidden_size as usize;
        let e = self.ckpt.weight_f32(TensorId::TokenEmbedding)?;
        self.release(TensorId::TokenEmbedding);
        let vocab = e.len() / h;
        let mut out = Vec::with_capacity(tokens.len() * h);
        for &t in tokens {
            let t = t as usize;
            if t >= vocab {
                return Err(Error::InvalidOption {
                    name: "tokens",
                    reason: format!("token id {t} is outside the embedding ({vocab} rows)"),
                });
            }
            out.extend_from_slice(&e[t * h..(t + 1) * h]);
        }
        Ok(out)
    }

    /// [`Model::embed`] decoding only the rows asked for, for an embedding stored plainly
    /// (any float or ggml block type, `[vocab, hidden]`, rows of whole blocks): the same bits as
    /// decoding the whole table (each value, or each ggml block, decodes on its own), without
    /// its `vocab·hidden` f32 copy (8.4 GB for Llama 3.1 405B). `None`: another storage.
    fn embed_rows(&self, tokens: &[u32]) -> Result<Option<Vec<f32>>> {
        let id = TensorId::TokenEmbedding;
        let WeightStorage::Plain(dtype) = self.ckpt.weight_storage(id)? else {
            return Ok(None);
        };
        let Some(t) = self.ckpt.part(id, qforge_convert::Part::Weight) else {
            return Ok(None);
        };
        let h = self.ckpt.config.hidden_size;
        let (vocab, row_bytes) = match (t.shape.as_slice(), dtype.bytes_for(h)) {
            ([v, w], Ok(rb)) if *w == h && h > 0 => (*v, rb as usize),
            _ => return Ok(None),
        };
        let bytes = self.ckpt.bytes(t)?;
        if bytes.len() as u64 != vocab.saturating_mul(row_bytes as u64) {
            return Ok(None);
        }
        let h = h as usize;
        let mut out = vec![0f32; tokens.len() * h];
        for (&tok, row) in tokens.iter().zip(out.chunks_exact_mut(h)) {
            if u64::from(tok) >= vocab {
                return Err(Error::InvalidOption {
                    name: "tokens",
                    reason: format!("token id {tok} is outside the embedding ({vocab} rows)"),
                });
            }
            let at = tok as usize * row_bytes;
            qforge_codecs::decode_to_f32(dtype, &bytes[at..at + row_bytes], row).map_err(
                |source| qforge_convert::Error::Codec {
                    path: self.ckpt.path.clone(),
                    tensor: t.name.clone(),
                    source,
                },
            )?;
        }
        drop(bytes);
        self.release(id);
        Ok(Some(out))
    }

    /// The final norm's weight.
    pub(crate) fn output_norm(&self) -> Result<Vec<f32>> {
        self.norm(TensorId::OutputNorm)
    }

    /// Final norm weight and the LM head as a [`Linear`] (the embedding when tied).
    pub(crate) fn head(&self) -> Result<(Vec<f32>, Linear)> {
        let norm = self.norm(TensorId::OutputNorm)?;
        let id = if self
            .ckpt
            .part(TensorId::Output, qforge_convert::Part::Weight)
            .is_some()
            || self
                .ckpt
                .part(TensorId::Output, qforge_convert::Part::WeightPacked)
                .is_some()
        {
            TensorId::Output
        } else {
            TensorId::TokenEmbedding
        };
        let storage = self.ckpt.weight_storage(id)?;
        let w = self.ckpt.weight_f32(id)?;
        let inp = self.ckpt.config.hidden_size as usize;
        let out = w.len() / inp;
        let act = match storage {
            WeightStorage::Plain(dtype) if self.opts.ggml_act_quant => {
                ActQuant::Ggml(GgmlActType::for_weight(dtype).ok_or_else(|| {
                    Error::Unsupported {
                        path: self.ckpt.path.clone(),
                        reason: format!("no ggml activation type known for {dtype} ({id})"),
                    }
                })?)
            }
            WeightStorage::Plain(_) => ActQuant::None,
            WeightStorage::Quantized(_) => match self.w8a8 {
                Some(ub) => ActQuant::Fp8Token { ub },
                None => ActQuant::None,
            },
        };
        let exact = self.exact_weights(id, storage, act, out, inp)?;
        self.release(id);
        Ok((
            norm,
            Linear {
                w,
                out,
                inp,
                act,
                exact,
            },
        ))
    }
}

/// W8A8 dynamic-FP8 activations announced by `config.json`'s `quantization_config`:
/// `Some(ub)` with fbgemm_fp8's `activation_scale_ub`, `Some(None)` for compressed-tensors
/// `input_activations: {type: float, strategy: token, dynamic: true}`.
pub fn detect_w8a8(ckpt: &Checkpoint) -> Option<Option<f32>> {
    if ckpt.format != Format::Hf {
        return None;
    }
    let text = std::fs::read_to_string(ckpt.dir().join("config.json")).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    w8a8_from_quantization_config(v.get("quantization_config")?)
}

/// See [`detect_w8a8`].
pub fn w8a8_from_quantization_config(q: &Value) -> Option<Option<f32>> {
    if q.get("quant_method").and_then(Value::as_str) == Some("fbgemm_fp8") {
        let ub = q.get("activation_scale_ub").and_then(Value::as_f64)?;
        return Some(Some(ub as f32));
    }
    let groups = q.get("config_groups")?.as_object()?;
    groups.values().find_map(|g| {
        let a = g.get("input_activations")?;
        let is = |k: &str, want: &Value| a.get(k) == Some(want);
        // per token, or (FP8_BLOCK) per token group of 8-bit floats
        let strategy = is("strategy", &Value::from("token"))
            || (is("strategy", &Value::from("group")) && is("num_bits", &Value::from(8)));
        (is("type", &Value::from("float")) && strategy && is("dynamic", &Value::from(true)))
            .then_some(None)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn w8a8_detection_follows_quantization_config() {
        let ct = json!({"quant_method": "compressed-tensors", "config_groups": {"group_0": {
            "input_activations": {"type": "float", "strategy": "token", "dynamic": true,
                                  "num_bits": 8, "symmetric": true},
            "weights": {"type": "float", "strategy": "channel"}}}});
        assert_eq!(w8a8_from_quantization_config(&ct), Some(None));
        let w4a16 = json!({"quant_method": "compressed-tensors", "config_groups": {"group_0": {
            "input_activations": null, "weights": {"type": "int", "num_bits": 4}}}});
        assert_eq!(w8a8_from_quantization_config(&w4a16), None);
        let static_fp8 = json!({"config_groups": {"g": {"input_activations":
            {"type": "float", "strategy": "tensor", "dynamic": false}}}});
        assert_eq!(w8a8_from_quantization_config(&static_fp8), None);
        // FP8_BLOCK: per token group of 128 FP8; MXFP4's FP4 groups of 32 are not W8A8
        let block = json!({"config_groups": {"g": {"input_activations":
            {"type": "float", "num_bits": 8, "strategy": "group", "group_size": 128,
             "dynamic": true}}}});
        assert_eq!(w8a8_from_quantization_config(&block), Some(None));
        let mx = json!({"config_groups": {"g": {"input_activations":
            {"type": "float", "num_bits": 4, "strategy": "group", "group_size": 32,
             "dynamic": true}}}});
        assert_eq!(w8a8_from_quantization_config(&mx), None);
        let fb = json!({"quant_method": "fbgemm_fp8", "activation_scale_ub": 1200.0,
                        "modules_to_not_convert": []});
        assert_eq!(w8a8_from_quantization_config(&fb), Some(Some(1200.0)));
    }
}
