//! Writing checkpoints as GGUF (F32/F16/BF16 tensors; quantized types come with the
//! quantization layouts), with llama.cpp's metadata keys and types (specs/gguf.md §3).
//!
//! Follows `convert_hf_to_gguf.py`: 1-D tensors (norms, rope factors) are always F32; Q/K rows
//! are permuted from HF's half-split RoPE layout to llama.cpp's interleaved one; Llama 3.1 rope
//! scaling becomes a `rope_freqs.weight` tensor instead of keys.

use std::path::Path;

use qforge_codecs::DType;

use crate::checkpoint::{Checkpoint, Format, TensorEntry};
use crate::config::{ModelConfig, RopeScaling};
use crate::error::{Error, Result};
use crate::export::{rope_direction, tensor_bytes, Written};
use crate::gguf::GgufValue;
use crate::names::{FfnProj, LayerTensor, NameScheme, Part, TensorId, TensorKey};
use crate::write::gguf::{plan, GgufTensorSpec, GgufWriter};
use qforge_stage::notes::Note;
use qforge_stage::AtomicFile;

/// llama.cpp's `general.file_type` for an all-`dtype` file (`LlamaFileType`).
pub fn file_type(dtype: DType) -> Option<u32> {
    Some(match dtype {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::Q4_0 => 2,
        DType::Q4_1 => 3,
        DType::Q8_0 => 7,
        DType::Q5_0 => 8,
        DType::Q5_1 => 9,
        DType::BF16 => 32,
        _ => return None,
    })
}

/// Llama 3.1 rope frequency factors as `convert_hf_to_gguf.py` computes them (f32 arithmetic,
/// `freqs = 1 / base^(arange(0, hd, 2) / hd)`, then the piecewise wavelength rule).
pub fn llama3_rope_factors(cfg: &ModelConfig) -> Option<Vec<f32>> {
    match &cfg.rope_scaling {
        Some(s @ RopeScaling::Llama3 { .. }) => llama3_factors(cfg.rope_theta, cfg.head_dim, s),
        _ => None,
    }
}

/// [`llama3_rope_factors`] for RoPE base `theta`, head width `head_dim` and scaling `s`
/// (`None` unless `s` is llama3 scaling).
fn llama3_factors(theta: f64, head_dim: u64, s: &RopeScaling) -> Option<Vec<f32>> {
    let RopeScaling::Llama3 {
        factor,
        low_freq_factor,
        high_freq_factor,
        original_max_position_embeddings,
    } = *s
    else {
        return None;
    };
    let hd = head_dim as f32;
    let base = theta as f32;
    let (factor, low, high) = (
        factor as f32,
        low_freq_factor as f32,
        high_freq_factor as f32,
    );
    let old = original_max_position_embeddings as f32;
    let (low_wavelen, high_wavelen) = (old / low, old / high);
    Some(
        (0..head_dim / 2)
            .map(|i| {
                let freq = 1.0 / base.powf((2 * i) as f32 / hd);
                // convert_hf_to_gguf.py (conversion/llama.py LlamaModel.generate_extra_tensors)
                // computes in float32 torch, where `scalar / tensor` is `tensor.reciprocal() *
                // scalar` (Tensor.__rtruediv__): `2 * math.pi / freq` and `old_context_len /
                // wavelen` round differently from a plain division in the last bit.
                let wavelen = (1.0 / freq) * (2.0 * std::f32::consts::PI);
                if wavelen < high_wavelen {
                    1.0
                } else if wavelen > low_wavelen {
                    factor
                } else {
                    let smooth = ((1.0 / wavelen) * old - low) / (high - low);
                    1.0 / ((1.0 - smooth) / factor + smooth)
                }
            })
            .collect(),
    )
}

/// Llama 3.1 scaling parameters whose [`llama3_rope_factors`] are `factors` (for RoPE base
/// `theta` and head width `head_dim`), or `None` when there are none qforge can find. The
/// factors fix `factor` (the lowest frequency's) and only the ratios of
/// `original_max_position_embeddings`, `low_freq_factor` and `high_freq_factor` (the rule
/// uses `old/low`, `old/high` and `(old/wavelen - low)/(high - low)`), so one triple is as good
/// as another: `fixed = Some((low, old))` asks for those two (Meta's reference code fixes
/// `low_freq_factor = 1`, `old_context_len = 8192`); otherwise Llama 3's own values are tried
/// first, then `low = 1` with power-of-two context lengths. `high_freq_factor` is taken from
/// Llama 3's 4 and a few round values, then solved from each factor strictly between 1 and
/// `factor`. Parameters whose factors match bit for bit win; failing that, any within 1e-6
/// relative (a solved `high_freq_factor` may round differently in the last bit).
pub fn llama3_from_factors(
    theta: f64,
    head_dim: u64,
    factors: &[f32],
    fixed: Option<(f64, u64)>,
) -> Option<RopeScaling> {
    let factor = f64::from(*factors.last()?);
    if factors.len() as u64 != head_dim / 2 || !(factor > 1.0 && factor.is_finite()) {
        return None;
    }
    let hd = head_dim as f32;
    let wavelen = |i: usize| {
        let freq = 1.0 / (theta as f32).powf((2 * i) as f32 / hd);
        f64::from((1.0 / freq) * (2.0 * std::f32::consts::PI)) // as llama3_factors
    };
    let starts: Vec<(f64, u64)> = if let Some(f) = fixed {
        vec![f]
    } else {
        // Then 16..256, after the others so that they change no earlier answer (the Llama
        // 3.1-style test fixture has original context 64).
        std::iter::once((1.0, 8192))
            .chain((9..=20).map(|k| (1.0, 1u64 << k)))
            .chain((4..=8).map(|k| (1.0, 1u64 << k)))
            .collect()
    };
    let mut best: Option<(f64, RopeScaling)> = None;
    for (low, old) in starts {
        let mut highs = vec![4.0, 2.0, 8.0, 16.0, 32.0, 1.5, 3.0, 6.0];
        for (i, &f) in factors.iter().enumerate() {
            let f = f64::from(f);
            if f > 1.0 && f < factor {
                // 1/f = (1 - s)/factor + s  =>  s; s = (old/wavelen - low)/(high - low)
                let s = (1.0 / f - 1.0 / factor) / (1.0 - 1.0 / factor);
                if s > 0.0 {
                    let high = low + (old as f64 / wavelen(i) - low) / s;
                    // A solved value is off in its last bits; the round number it stands for
                    // (512, not 511.99997) is tried first.
                    highs.extend([high.round(), high]);
                }
            }
        }
        for high in highs {
            if !(high.is_finite() && high > low) {
                continue;
            }
            let s = RopeScaling::Llama3 {
                factor,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_position_embeddings: old,
            };
            let Some(got) = llama3_factors(theta, head_dim, &s) else {
                continue;
            };
            let err = got
                .iter()
                .zip(factors)
                .map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs() / f64::from(*b).abs())
                .fold(0.0, f64::max);
            if err == 0.0 {
                return Some(s);
            }
            if err <= 1e-6 && best.as_ref().is_none_or(|(e, _)| err < *e) {
                best = Some((err, s));
            }
        }
    }
    best.map(|(_, s)| s)
}

/// `general.*` and `<arch>.*` keys for a config (the prefix and key set from the family's
/// row in [`crate::family::FAMILIES`]), in `convert_hf_to_gguf.py`'s order: `conversion/base.py`
/// `TextModel.set_gguf_parameters`, then `conversion/llama.py` `LlamaModel.set_gguf_parameters`
/// for the families that write `vocab_size` and `rope.dimension_count`.
pub fn model_metadata(
    cfg: &ModelConfig,
    name: Option<&str>,
    ftype: Option<u32>,
) -> Vec<(String, GgufValue)> {
    let spec = cfg.family.spec();
    let k = |key: &str| cfg.family.gguf_key(key);
    let u32v = |v: u64| GgufValue::U32(u32::try_from(v).unwrap_or(u32::MAX));
    // Floats round-trip through their shortest decimal form, as Python writes them.
    let f32v = |v: f64| GgufValue::F32(v as f32);
    let mut m: Vec<(String, GgufValue)> = vec![
        (
            "general.architecture".into(),
            GgufValue::String(spec.gguf_arch.into()),
        ),
        ("general.type".into(), GgufValue::String("model".into())),
    ];
    if let Some(n) = name {
        m.push(("general.name".into(), GgufValue::String(n.into())));
    }
    m.extend([
        (k("block_count"), u32v(cfg.num_layers)),
        (k("context_length"), u32v(cfg.max_position_embeddings)),
        (k("embedding_length"), u32v(cfg.hidden_size)),
        (k("feed_forward_length"), u32v(cfg.intermediate_size)),
        (k("attention.head_count"), u32v(cfg.num_heads)),
        (k("attention.head_count_kv"), u32v(cfg.num_kv_heads)),
    ]);
    match cfg.rope_scaling {
        Some(RopeScaling::Linear { factor }) => {
            m.push((k("rope.scaling.type"), GgufValue::String("linear".into())));
            m.push((k("rope.scaling.factor"), f32v(factor)));
        }
        // convert_hf_to_gguf.py TextModel.set_gguf_parameters (rope_type == "yarn")
        Some(RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            beta_fast,
            beta_slow,
        }) => {
            m.push((k("rope.scaling.type"), GgufValue::String("yarn".into())));
            m.push((k("rope.scaling.factor"), f32v(factor)));
            m.push((
                k("rope.scaling.original_context_length"),
                u32v(original_max_position_embeddings),
            ));
            if let Some(b) = beta_fast {
                m.push((k("rope.scaling.yarn_beta_fast"), f32v(b)));
            }
            if let Some(b) = beta_slow {
                m.push((k("rope.scaling.yarn_beta_slow"), f32v(b)));
            }
        }
        Some(RopeScaling::Llama3 { .. }) | None => {}
    }
    m.extend([
        (k("rope.freq_base"), f32v(cfg.rope_theta)),
        (
            k("attention.layer_norm_rms_epsilon"),
            f32v(cfg.rms_norm_eps),
        ),
    ]);
    // convert_hf_to_gguf.py writes these whenever config.json has head_dim, as every config
    // qforge writes for a family whose class has one (and the Llama 3.x, Qwen3 releases do).
    if spec.hf_head_dim {
        m.push((k("attention.key_length"), u32v(cfg.head_dim)));
        m.push((k("attention.value_length"), u32v(cfg.head_dim)));
    }
    if let Some(ft) = ftype {
        m.push(("general.file_type".into(), GgufValue::U32(ft)));
    }
    if let Some(moe) = &cfg.moe {
        // conversion/base.py TextModel.set_gguf_parameters: expert_count, expert_used_count;
        // conversion/qwen.py Qwen2MoeModel.set_gguf_parameters: expert_feed_forward_length
        m.push((k("expert_count"), u32v(moe.num_experts)));
        m.push((k("expert_used_count"), u32v(moe.experts_per_tok)));
        if spec
            .moe
            .is_some_and(|s| s.hf_expert_ffn_key != "intermediate_size")
        {
            m.push((k("expert_feed_forward_length"), u32v(moe.expert_ffn)));
        }
        if cfg.family == crate::family::Family::Llama4 {
            // conversion/llama.py Llama4Model.set_gguf_parameters
            m.push((
                k("interleave_moe_layer_step"),
                u32v(llama4_moe_step(cfg).unwrap_or(0)),
            ));
            m.push((k("expert_feed_forward_length"), u32v(moe.expert_ffn)));
        }
    }
    if spec.gguf_vocab_and_rope_dim {
        m.push((k("vocab_size"), u32v(cfg.vocab_size)));
        m.push((k("rope.dimension_count"), u32v(cfg.head_dim)));
    }
    m
}

/// A family written under another family's GGUF architecture (`convert_hf_to_gguf.py` writes
/// `MistralForCausalLM` as `llama`) reads back as that family: its HF class is not kept.
pub fn class_lost(cfg: &ModelConfig) -> Option<Note> {
    let spec = cfg.family.spec();
    let back = crate::family::Family::from_gguf(spec.gguf_arch, spec.moe.is_some())?;
    (back != cfg.family).then(|| {
        Note::metadata_lost(
            format!(
                "GGUF architecture {:?} reads back as {back}: {} is not kept",
                spec.gguf_arch, spec.hf_classes[0]
            ),
            "keep the source's config.json next to the GGUF file",
        )
    })
}

/// What GGUF cannot say about a config: a sliding window (llama.cpp's llama, qwen2 and qwen3
/// graphs attend over the whole context, and `convert_hf_to_gguf.py` writes no window key for
/// them), which changes the math past the window.
pub fn window_lost(cfg: &ModelConfig) -> Option<Note> {
    cfg.sliding_window.map(|w| {
        Note::changes_math(
            format!(
                "{} sliding-window attention ({} tokens from layer {}) has no GGUF form: llama.cpp attends over the whole context, so every position past the window computes otherwise",
                cfg.family, w.size, w.first_layer
            ),
            "evaluate within the window, or keep the HF checkpoint",
        )
    })
}

/// What GGUF cannot say about a mixture of experts: un-renormalised top-k weights (llama.cpp's
/// llama and qwen3moe graphs call `build_moe_ffn` with `norm_w` true and read no key for it,
/// src/models/qwen3moe.cpp), which changes every MoE block's output.
pub fn moe_lost(cfg: &ModelConfig) -> Option<Note> {
    // Llama 4's sigmoid weights are never renormalised, by transformers or llama.cpp
    let softmax = cfg
        .family
        .spec()
        .moe
        .is_some_and(|s| s.gating == crate::family::Gating::Softmax);
    let m = cfg.moe.as_ref().filter(|m| softmax && !m.norm_topk_prob)?;
    Some(Note::changes_math(
        format!(
            "{} routes without renormalising its top-{} weights (norm_topk_prob false): llama.cpp always renormalises them",
            cfg.family, m.experts_per_tok
        ),
        "keep the HF checkpoint",
    ))
}

/// The `interleave_moe_layer_step` whose pattern (`(i + 1) % step == 0` sparse, llama.cpp
/// `llama_model_llama4::load_arch_tensors`) gives a Llama 4 config's MoE blocks, if one does.
pub fn llama4_moe_step(cfg: &ModelConfig) -> Option<u64> {
    let m = cfg.moe.as_ref()?;
    (1..=cfg.num_layers).find(|step| {
        (0..cfg.num_layers).all(|i| m.dense_layers.contains(&i) == ((i + 1) % step != 0))
    })
}

/// What a `llama4` GGUF cannot say about a Llama 4 config: llama.cpp fixes the chunk size,
/// NoPE pattern, temperature tuning and q/k norm
/// ([`crate::config::Llama4Attention::llama_cpp`]), so any other value computes otherwise.
pub fn llama4_lost(cfg: &ModelConfig) -> Option<Note> {
    let a = cfg.llama4.as_ref()?;
    let n_exp = cfg.moe.as_ref().map_or(0, |m| m.num_experts);
    let want = crate::config::Llama4Attention::llama_cpp(cfg.num_layers, n_exp);
    let mut lost = Vec::new();
    if a.nope_layers != want.nope_layers {
        lost.push(format!(
            "NoPE blocks {:?} (llama.cpp: {:?})",
            a.nope_layers, want.nope_layers
        ));
    }
    if a.chunked_layers != want.chunked_layers {
        lost.push(format!(
            "chunked blocks {:?} (llama.cpp: {:?})",
            a.chunked_layers, want.chunked_layers
        ));
    }
    if a.chunk_size != want.chunk_size && !a.chunked_layers.is_empty() {
        lost.push(format!(
            "attention_chunk_size {} (llama.cpp: 8192)",
            a.chunk_size
        ));
    }
    if a.qk_l2_norm != want.qk_l2_norm {
        lost.push(format!(
            "use_qk_norm {} (llama.cpp: {})",
            a.qk_l2_norm, want.qk_l2_norm
        ));
    }
    if !a.nope_layers.is_empty()
        && (!a.temperature_tuning
            || a.floor_scale != want.floor_scale
            || a.attn_scale != want.attn_scale)
    {
        lost.push(format!(
            "attention temperature tuning {} with floor_scale {}, attn_scale {} (llama.cpp: on, 8192, 0.1)",
            a.temperature_tuning, a.floor_scale, a.attn_scale
        ));
    }
    (!lost.is_empty()).then(|| {
        Note::changes_math(
            format!(
                "Llama 4 attention GGUF cannot hold (llama.cpp's llama4 graph fixes these, src/models/llama4.cpp): {}",
                lost.join("; ")
            ),
            "keep the HF checkpoint",
        )
    })
}

/// Dense blocks in a mixture-of-experts model have no GGUF form: llama.cpp's qwen3moe loads
/// `ffn_gate_inp` and the expert stacks in every block (src/models/qwen3moe.cpp
/// `load_arch_tensors`) and `convert_hf_to_gguf.py` maps no dense FFN for it.
/// (Llama 4 has dense blocks where its `interleave_moe_layer_step` pattern says.)
pub fn check_moe_gguf(cfg: &ModelConfig, path: &Path) -> Result<()> {
    if cfg.family == crate::family::Family::Llama4 && llama4_moe_step(cfg).is_some() {
        return Ok(());
    }
    match cfg.moe.as_ref().filter(|m| !m.dense_layers.is_empty()) {
        None => Ok(()),
        Some(m) => Err(Error::Config {
            path: path.into(),
            kind: crate::error::ConfigError::Unsupported {
                family: cfg.family.name(),
                reason: format!(
                    "dense blocks {:?} (mlp_only_layers) have no GGUF form: llama.cpp's {} graph has experts in every block",
                    m.dense_layers,
                    cfg.family.spec().gguf_arch
                ),
            },
        }),
    }
}

/// GGUF tensor order: rope factors, embeddings, each block (in the order `convert_hf_to_gguf.py`
/// emits a block's HF tensors), final norm, output. A block's experts sort by projection, then
/// expert, so that each 3-D stack's slices are consecutive ([`gguf_tensor_name`]).
pub fn gguf_order(key: &TensorKey) -> (u32, u32, u32) {
    // HF names sorted: input_layernorm, mlp.{down,gate,up}_proj, post_attention_layernorm,
    // self_attn.{k_norm, k_proj.bias, k_proj.weight, o_proj, q_norm, q_proj.bias, …}. A
    // Qwen3-MoE block's `mlp.experts.*` are emitted (merged, conversion/qwen.py
    // Qwen2MoeModel.modify_tensors: down, gate, up) when the last arrives, before `mlp.gate`.
    // Mixtral's `block_sparse_moe.*` sort before `input_layernorm` in the converter's output;
    // here they take the same place as Qwen3-MoE's (the order does not change the model).
    let kind_rank = |k: LayerTensor| match k {
        LayerTensor::AttnNorm => (0, 0),
        LayerTensor::Down => (1, 0),
        LayerTensor::Gate => (2, 0),
        LayerTensor::Up => (3, 0),
        LayerTensor::Expert { expert, proj } => (
            match proj {
                FfnProj::Down => 4,
                FfnProj::Gate => 5,
                FfnProj::Up => 6,
            },
            expert,
        ),
        LayerTensor::Router => (7, 0),
        LayerTensor::SharedExpert { proj } => (
            7,
            match proj {
                FfnProj::Down => 1,
                FfnProj::Gate => 2,
                FfnProj::Up => 3,
            },
        ),
        LayerTensor::FfnNorm => (8, 0),
        LayerTensor::KNorm => (9, 0),
        LayerTensor::KBias => (10, 0),
        LayerTensor::K => (11, 0),
        LayerTensor::O => (12, 0),
        LayerTensor::QNorm => (13, 0),
        LayerTensor::QBias => (14, 0),
        LayerTensor::Q => (15, 0),
        LayerTensor::VBias => (16, 0),
        LayerTensor::V => (17, 0),
    };
    match key.id {
        TensorId::RopeFreqs => (0, 0, 0),
        TensorId::TokenEmbedding => (1, 0, 0),
        TensorId::Layer { index, kind } => {
            let (r, e) = kind_rank(kind);
            (2 + index, r, e)
        }
        TensorId::OutputNorm => (u32::MAX - 1, 0, 0),
        TensorId::Output => (u32::MAX, 0, 0),
    }
}

/// The GGUF tensor `key` is written into and, for an expert's projection, the slice it is:
/// `(blk.N.ffn_gate_exps.weight, Some(expert))`. Experts of one projection are one 3-D stack
/// (`convert_hf_to_gguf.py` `LlamaModel.modify_tensors` / `Qwen2MoeModel.modify_tensors`:
/// `torch.stack` over experts), written expert by expert.
pub fn gguf_tensor_name(key: TensorKey) -> Option<(String, Option<u32>)> {
    match key.id {
        TensorId::Layer {
            index,
            kind: LayerTensor::Expert { expert, proj },
        } if key.part == Part::Weight => Some((proj.gguf_stack(index), Some(expert))),
        _ => NameScheme::Gguf.name(key).map(|n| (n, None)),
    }
}

/// The planned tensors of `entries` (in [`gguf_order`]) of types `dtype(entry)`: one per tensor,
/// one 3-D stack `[n_expert, out, in]` per block and expert projection (its slices must all be
/// there, in expert order, of one type and shape).
pub fn gguf_specs<'a>(
    path: &Path,
    entries: impl IntoIterator<Item = (&'a TensorEntry, DType)>,
) -> Result<Vec<GgufTensorSpec>> {
    let mut specs: Vec<GgufTensorSpec> = Vec::new();
    let mut open_stack: Option<u32> = None; // experts seen of the last spec's stack
    for (t, dtype) in entries {
        let (name, expert) = gguf_tensor_name(t.key).unwrap_or_else(|| (t.name.clone(), None));
        let bad = |reason: String| Error::NotAModel {
            path: path.into(),
            reason: format!("{}: {reason}", t.name),
        };
        match expert {
            None => {
                open_stack = None;
                specs.push(GgufTensorSpec {
                    name,
                    dtype,
                    shape: t.shape.clone(),
                });
            }
            Some(0) => {
                open_stack = Some(1);
                let mut shape = vec![1];
                shape.extend(&t.shape);
                specs.push(GgufTensorSpec { name, dtype, shape });
            }
            Some(e) => {
                let last = specs.last_mut().filter(|s| s.name == name);
                match (last, open_stack) {
                    (Some(s), Some(n))
                        if n == e && s.dtype == dtype && s.shape[1..] == t.shape[..] =>
                    {
                        s.shape[0] += 1;
                        open_stack = Some(n + 1);
                    }
                    _ => {
                        return Err(bad(format!(
                        "expert {e} does not follow expert {} of {name} with its type and shape",
                        e - 1
                    )))
                    }
                }
            }
        }
    }
    Ok(specs)
}

/// What GGUF loses when it keeps Llama 3.1 scaling as the `rope_freqs.weight` factors `f`
/// (llama.cpp's form: no keys for the parameters): nothing when the parameters read back from
/// the factors ([`llama3_from_factors`]) are the config's.
pub fn rope_metadata_lost(cfg: &ModelConfig, f: &[f32]) -> Option<Note> {
    let back = llama3_from_factors(cfg.rope_theta, cfg.head_dim, f, None);
    (back != cfg.rope_scaling).then(|| {
        Note::metadata_lost(
            format!(
                "GGUF keeps llama3 RoPE scaling only as rope_freqs.weight factors: read back they give {back:?} instead of {:?} (the same frequencies)",
                cfg.rope_scaling
            ),
            "keep the source's config.json or params.json next to the GGUF file",
        )
    })
}

/// The [`qforge_stage::notes::LOSSY_KEY`] entry listing the allowed changes to the math, if any.
pub(crate) fn lossy_metadata(notes: &[Note]) -> Option<(String, GgufValue)> {
    let lines = qforge_stage::notes::lossy_lines(notes);
    (!lines.is_empty()).then(|| {
        (
            qforge_stage::notes::LOSSY_KEY.to_owned(),
            GgufValue::Array(crate::gguf::GgufArray::String(lines.iter().collect())),
        )
    })
}

/// Options for [`convert_to_gguf`].
#[derive(Debug, Clone, Copy)]
pub struct GgufOptions {
    /// Type of the 2-D tensors (F32, F16 or BF16); 1-D tensors are always F32. `None` keeps
    /// each float tensor's own type and decodes quantized ones to F32.
    pub dtype: Option<DType>,
    /// Replace an existing output file.
    pub overwrite: bool,
    /// Plan the file and report its exact size; write nothing, read no tensor data.
    pub dry_run: bool,
    /// Write an output that computes something other than the source (see
    /// [`qforge_stage::notes::gate`]); the changes are listed under [`qforge_stage::notes::LOSSY_KEY`].
    pub allow_lossy: bool,
}

/// Tokenizer metadata for the output: carried over from a GGUF source, otherwise converted from
/// the source's tokenizer files.
pub fn tokenizer_metadata(
    ckpt: &Checkpoint,
    notes: &mut Vec<Note>,
) -> Result<Vec<(String, GgufValue)>> {
    if let Some(meta) = &ckpt.gguf {
        return Ok(meta
            .entries
            .iter()
            .filter(|(k, _)| k.starts_with("tokenizer."))
            .cloned()
            .collect());
    }
    let Some(vocab) = crate::export::source_vocab(ckpt)? else {
        notes.push(Note::lossless(
            "the source has no tokenizer: llama.cpp needs tokenizer.ggml.* keys to load the file",
        ));
        return Ok(Vec::new());
    };
    Ok(vocab.to_gguf_metadata())
}

/// Convert any checkpoint to a GGUF file at `dest`.
pub fn convert_to_gguf(ckpt: &Checkpoint, dest: &Path, opts: GgufOptions) -> Result<Written> {
    if let Some(d) = opts
        .dtype
        .filter(|d| !matches!(d, DType::F32 | DType::F16 | DType::BF16))
    {
        return Err(Error::UnsupportedDType {
            path: dest.into(),
            tensor: String::new(),
            dtype: d,
            reason: "GGUF conversion writes F32, F16 or BF16; use `qforge quantize` for ggml types",
        });
    }
    let mut notes = qforge_stage::notes::from_reading(&ckpt.notes);
    let rope = rope_direction(&ckpt.config, ckpt.format, Format::Gguf);
    let tied = crate::export::retie(ckpt)?;
    let mut entries: Vec<&TensorEntry> = Vec::new();
    for t in &ckpt.tensors {
        if t.key.part != Part::Weight {
            return Err(Error::UnsupportedDType {
                path: ckpt.path.clone(),
                tensor: t.name.clone(),
                dtype: t.dtype,
                reason: "quantized HF checkpoints must be dequantized before conversion",
            });
        }
        if tied.is_some() && t.key.id == TensorId::Output {
            continue; // llama.cpp uses token_embd for a missing output.weight
        }
        entries.push(t);
    }
    notes.extend(tied);
    notes.extend(window_lost(&ckpt.config));
    notes.extend(class_lost(&ckpt.config));
    notes.extend(moe_lost(&ckpt.config));
    notes.extend(llama4_lost(&ckpt.config));
    check_moe_gguf(&ckpt.config, &ckpt.path)?;
    let rope_factors = if entries.iter().any(|t| t.key.id == TensorId::RopeFreqs) {
        None
    } else {
        llama3_rope_factors(&ckpt.config)
    };
    if let Some(n) = rope_factors
        .as_deref()
        .and_then(|f| rope_metadata_lost(&ckpt.config, f))
    {
        notes.push(n);
    }
    entries.sort_by_key(|t| gguf_order(&t.key));
    let out_dtype = |t: &TensorEntry| match opts.dtype {
        _ if t.shape.len() == 1 => DType::F32,
        Some(d) => d,
        None if matches!(t.dtype, DType::F16 | DType::BF16) => t.dtype,
        None => DType::F32,
    };
    // general.file_type: the type most 2-D tensors are written in (llama.cpp's "mostly …")
    let main_dtype = opts.dtype.unwrap_or_else(|| {
        let mut counts: Vec<(DType, usize)> = Vec::new();
        for t in entries.iter().filter(|t| t.shape.len() == 2) {
            let d = out_dtype(t);
            match counts.iter_mut().find(|(c, _)| *c == d) {
                Some(c) => c.1 += 1,
                None => counts.push((d, 1)),
            }
        }
        counts
            .iter()
            .max_by_key(|(_, n)| *n)
            .map_or(DType::F32, |(d, _)| *d)
    });

    let mut specs = Vec::new();
    if let Some(f) = &rope_factors {
        specs.push(GgufTensorSpec {
            name: "rope_freqs.weight".into(),
            dtype: DType::F32,
            shape: vec![f.len() as u64],
        });
    }
    specs.extend(gguf_specs(
        &ckpt.path,
        entries.iter().map(|&t| (t, out_dtype(t))),
    )?);
    // general.name from the source GGUF, or from an HF source's model card (as
    // convert_hf_to_gguf.py names the file from it)
    let card = crate::export::model_card_fields(ckpt);
    let general_name = card
        .iter()
        .find(|(k, _)| *k == "model_name")
        .map(|(_, v)| v.clone());
    let mut metadata = model_metadata(&ckpt.config, general_name.as_deref(), file_type(main_dtype));
    metadata.extend(tokenizer_metadata(ckpt, &mut notes)?);
    metadata.push(("general.quantization_version".into(), GgufValue::U32(2)));
    if let Some((_, license)) = card.iter().find(|(k, _)| *k == "license") {
        metadata.push(("general.license".into(), GgufValue::String(license.clone())));
    }
    if !opts.dry_run {
        let narrowed = entries.iter().map(|&t| (t, out_dtype(t)));
        notes.extend(crate::narrow::narrowing_note(ckpt, narrowed)?);
    }
    qforge_stage::notes::gate(&notes, opts.allow_lossy)?;
    metadata.extend(lossy_metadata(&notes));

    let p = plan(&metadata, specs)?;
    if opts.dry_run {
        return Ok(Written {
            files: vec![qforge_stage::planned_file(
                dest,
                p.file_size(),
                p.tensors.iter().map(|t| t.1).sum(),
            )],
            resumed: Vec::new(),
            notes,
        });
    }
    let (target, file) = AtomicFile::create(dest, opts.overwrite)?;
    let path = file.path().to_owned();
    let mut w = GgufWriter::new(file, p).map_err(|e| Error::io(&path, e))?;
    if let Some(f) = &rope_factors {
        let bytes: Vec<u8> = f.iter().flat_map(|v| v.to_le_bytes()).collect();
        w.write_tensor("rope_freqs.weight", &bytes)
            .map_err(|e| Error::io(&path, e))?;
    }
    let mut buf = Vec::new();
    for t in &entries {
        crate::export::reset_buffer(&mut buf);
        tensor_bytes(ckpt, t, out_dtype(t), rope, &mut buf)?;
        let (name, _) = gguf_tensor_name(t.key).unwrap_or_else(|| (t.name.clone(), None));
        // an expert is one piece of its stack: memory holds one expert, never the stack
        w.write_part(&name, &buf).map_err(|e| Error::io(&path, e))?;
    }
    let file = w.finish().map_err(|e| Error::io(&path, e))?;
    let record = target.commit(file)?;
    Ok(Written {
        files: vec![record],
        resumed: Vec::new(),
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// YaRN through GGUF: the keys convert_hf_to_gguf.py writes (type, factor, original
    /// context; beta_fast/beta_slow when the config has them) read back as the same scaling, for
    /// Qwen2 and Qwen3; the original context defaults to the training context as llama.cpp's
    /// loader does; attention-factor keys qforge does not apply are refused, naming the key.
    #[test]
    fn yarn_comes_back_from_gguf() {
        use crate::gguf::GgufMetadata;
        let base = r#"{"architectures":["Qwen2ForCausalLM"],"model_type":"qwen2","hidden_size":64,
          "intermediate_size":128,"num_attention_heads":4,"num_hidden_layers":2,"num_key_value_heads":2,
          "rms_norm_eps":1e-06,"rope_theta":10000.0,"vocab_size":384,"max_position_embeddings":128,
          "tie_word_embeddings":true,"rope_scaling":{"type":"yarn","factor":4.0,
          "original_max_position_embeddings":32,"beta_fast":16.0,"beta_slow":2.0}}"#;
        let qwen3 = base
            .replace("Qwen2ForCausalLM", "Qwen3ForCausalLM")
            .replace("\"qwen2\"", "\"qwen3\"");
        for json in [
            base.to_owned(),
            qwen3,
            base.replace(",\"beta_fast\":16.0,\"beta_slow\":2.0", ""),
        ] {
            let cfg = ModelConfig::from_hf_json(&json).unwrap();
            let meta = GgufMetadata {
                entries: model_metadata(&cfg, None, None),
                ..GgufMetadata::default()
            };
            let back = ModelConfig::from_gguf(&meta, false, Some(384)).unwrap();
            assert_eq!(back.rope_scaling, cfg.rope_scaling, "{json}");
            assert!(matches!(back.rope_scaling, Some(RopeScaling::Yarn { .. })));
            let arch = cfg.family.spec().gguf_arch;
            // no original context key: the training context
            let mut m = meta.clone();
            m.entries
                .retain(|(k, _)| !k.ends_with("rope.scaling.original_context_length"));
            let c = ModelConfig::from_gguf(&m, false, Some(384)).unwrap();
            assert!(matches!(
                c.rope_scaling,
                Some(RopeScaling::Yarn {
                    original_max_position_embeddings: 128,
                    ..
                })
            ));
            for key in [
                "rope.scaling.yarn_attn_factor",
                "rope.scaling.yarn_log_multiplier",
            ] {
                let mut m = meta.clone();
                m.entries
                    .push((format!("{arch}.{key}"), GgufValue::F32(0.5)));
                let err = ModelConfig::from_gguf(&m, false, Some(384))
                    .unwrap_err()
                    .to_string();
                assert!(err.contains(key), "{err}");
            }
        }
    }

    #[test]
    fn llama3_scaling_comes_back_from_its_factors() {
        for (head_dim, theta) in [(16u64, 500_000.0), (64, 500_000.0), (128, 500_000.0)] {
            for (factor, high, old) in [(8.0, 4.0, 8192u64), (32.0, 4.0, 8192), (8.0, 4.0, 2048)] {
                let s = RopeScaling::Llama3 {
                    factor,
                    low_freq_factor: 1.0,
                    high_freq_factor: high,
                    original_max_position_embeddings: old,
                };
                let f = llama3_factors(theta, head_dim, &s).unwrap();
                let back = llama3_from_factors(theta, head_dim, &f, None).unwrap();
                // The same factors, bit for bit; the parameters themselves when they are
                // Llama 3's or found first among the tried contexts.
                assert_eq!(llama3_factors(theta, head_dim, &back).unwrap(), f);
                assert_eq!(back, s, "{head_dim} {factor} {old}");
            }
        }
        // Not llama3 scaling: a factor below 1, or the wrong count.
        assert_eq!(llama3_from_factors(500_000.0, 16, &[0.5; 8], None), None);
        assert_eq!(llama3_from_factors(500_000.0, 16, &[8.0; 4], None), None);
    }
}
