//! llama.cpp's quantization mixes (`llama-quantize … Q4_K_M`): which ggml type each tensor of a
//! Llama model gets, and the GGUF writer that encodes them.
//!
//! The type rules follow `src/llama-quant.cpp` of the pinned llama.cpp (`llama_tensor_get_type`,
//! `llama_tensor_get_type_impl`, `tensor_type_fallback`) for the Llama architecture and the
//! non-IQ mixes: tensors are visited in the loader's order (non-block tensors first, then block
//! by block, names sorted within each), the attention-V and FFN-down counters advance in that
//! order, and a type whose block does not divide a row falls back (Q4_K → Q5_0, Q5_K → Q5_1,
//! Q6_K → Q8_0, Q2_K/Q3_K → Q4_0; F16 if even that does not fit). Data is encoded by
//! `qforge_codecs::ggml_quant`, bit for bit llama.cpp's reference quantizers.

use std::collections::BTreeMap;
use std::path::Path;

use qforge_codecs::{ggml_quant, DType};

use crate::dequant::WeightRead;
use crate::numerics::{Numerics, WeightPolicy};
use qforge_convert::checkpoint::{Checkpoint, Format, TensorEntry};
use qforge_convert::export::{encode_float, rope_direction, rope_heads, Written};
use qforge_convert::export_gguf::{
    gguf_order, gguf_specs, gguf_tensor_name, llama3_rope_factors, model_metadata,
    tokenizer_metadata,
};
use qforge_convert::gguf::GgufValue;
use qforge_convert::names::{NameScheme, Part, TensorId, TensorKey};
use qforge_convert::notes::Note;
use qforge_convert::write::gguf::{plan, GgufTensorSpec, GgufWriter};
use qforge_convert::write::AtomicFile;
use qforge_convert::{Error, Result};

/// A llama.cpp file type (`llama_ftype`) that mixes ggml types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(non_camel_case_types)]
pub enum GgufMix {
    /// Q8_0 everywhere.
    Q8_0,
    /// Q4_0 (output Q6_K).
    Q4_0,
    /// Q4_1 (output Q6_K).
    Q4_1,
    /// Q5_0 (output Q6_K).
    Q5_0,
    /// Q5_1 (output Q6_K).
    Q5_1,
    /// Q2_K with Q3_K/Q4_K for sensitive tensors.
    Q2_K,
    /// Q3_K, small.
    Q3_K_S,
    /// Q3_K, medium.
    Q3_K_M,
    /// Q3_K, large.
    Q3_K_L,
    /// Q4_K, small.
    Q4_K_S,
    /// Q4_K with Q6_K for half of attn_v/ffn_down (the usual edge choice).
    Q4_K_M,
    /// Q5_K, small.
    Q5_K_S,
    /// Q5_K with Q6_K for half of attn_v/ffn_down.
    Q5_K_M,
    /// Q6_K everywhere.
    Q6_K,
}

impl GgufMix {
    /// Every mix, in llama-quantize's listing order.
    pub const ALL: [GgufMix; 14] = [
        GgufMix::Q4_0,
        GgufMix::Q4_1,
        GgufMix::Q5_0,
        GgufMix::Q5_1,
        GgufMix::Q2_K,
        GgufMix::Q3_K_S,
        GgufMix::Q3_K_M,
        GgufMix::Q3_K_L,
        GgufMix::Q4_K_S,
        GgufMix::Q4_K_M,
        GgufMix::Q5_K_S,
        GgufMix::Q5_K_M,
        GgufMix::Q6_K,
        GgufMix::Q8_0,
    ];

    /// The name llama-quantize uses (`Q4_K_M`).
    pub const fn name(self) -> &'static str {
        match self {
            GgufMix::Q8_0 => "Q8_0",
            GgufMix::Q4_0 => "Q4_0",
            GgufMix::Q4_1 => "Q4_1",
            GgufMix::Q5_0 => "Q5_0",
            GgufMix::Q5_1 => "Q5_1",
            GgufMix::Q2_K => "Q2_K",
            GgufMix::Q3_K_S => "Q3_K_S",
            GgufMix::Q3_K_M => "Q3_K_M",
            GgufMix::Q3_K_L => "Q3_K_L",
            GgufMix::Q4_K_S => "Q4_K_S",
            GgufMix::Q4_K_M => "Q4_K_M",
            GgufMix::Q5_K_S => "Q5_K_S",
            GgufMix::Q5_K_M => "Q5_K_M",
            GgufMix::Q6_K => "Q6_K",
        }
    }

    /// Parse a mix name, case-insensitively (`q4_k_m`, `Q8_0`).
    pub fn parse(s: &str) -> Option<GgufMix> {
        Self::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(s.trim()))
    }

    /// `general.file_type` (`llama_ftype`).
    pub const fn file_type(self) -> u32 {
        match self {
            GgufMix::Q4_0 => 2,
            GgufMix::Q4_1 => 3,
            GgufMix::Q8_0 => 7,
            GgufMix::Q5_0 => 8,
            GgufMix::Q5_1 => 9,
            GgufMix::Q2_K => 10,
            GgufMix::Q3_K_S => 11,
            GgufMix::Q3_K_M => 12,
            GgufMix::Q3_K_L => 13,
            GgufMix::Q4_K_S => 14,
            GgufMix::Q4_K_M => 15,
            GgufMix::Q5_K_S => 16,
            GgufMix::Q5_K_M => 17,
            GgufMix::Q6_K => 18,
        }
    }

    /// The mix's base type (`llama_ftype_get_default_type`).
    pub const fn default_type(self) -> DType {
        match self {
            GgufMix::Q8_0 => DType::Q8_0,
            GgufMix::Q4_0 => DType::Q4_0,
            GgufMix::Q4_1 => DType::Q4_1,
            GgufMix::Q5_0 => DType::Q5_0,
            GgufMix::Q5_1 => DType::Q5_1,
            GgufMix::Q2_K => DType::Q2_K,
            GgufMix::Q3_K_S | GgufMix::Q3_K_M | GgufMix::Q3_K_L => DType::Q3_K,
            GgufMix::Q4_K_S | GgufMix::Q4_K_M => DType::Q4_K,
            GgufMix::Q5_K_S | GgufMix::Q5_K_M => DType::Q5_K,
            GgufMix::Q6_K => DType::Q6_K,
        }
    }
}

impl std::fmt::Display for GgufMix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the type rules need to know about the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MixModel {
    /// Blocks.
    pub n_layers: u64,
    /// Attention heads.
    pub n_head: u64,
    /// KV heads.
    pub n_head_kv: u64,
    /// Whether an importance matrix is used (changes Q4_0/Q5_0 ffn_down of early blocks).
    pub has_imatrix: bool,
    /// Experts per MoE block (0 for a dense model); 8 (Mixtral) raises attention types.
    pub n_expert: u64,
}

/// One tensor as the type rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MixTensor {
    /// GGUF name (`blk.3.attn_v.weight`).
    pub name: String,
    /// Row length (`ne[0]`).
    pub ne0: u64,
    /// Number of dimensions.
    pub n_dims: usize,
    /// The type it has when it is not quantized.
    pub current: DType,
}

/// The type chosen for a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MixChoice {
    /// The ggml type written.
    pub dtype: DType,
    /// The type the mix wanted, when the row length forced a fallback.
    pub fallback_from: Option<DType>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Category {
    Output,
    TokenEmbd,
    AttnQkv,
    AttnKvB,
    AttnV,
    AttnK,
    AttnQ,
    AttnOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Other,
}

fn category(name: &str) -> Category {
    if name == "output.weight" {
        Category::Output
    } else if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
        Category::TokenEmbd
    } else if name.contains("attn_qkv.weight") {
        Category::AttnQkv
    } else if name.contains("attn_kv_b.weight") {
        Category::AttnKvB
    } else if name.contains("attn_v.weight") {
        Category::AttnV
    } else if name.contains("attn_k.weight") {
        Category::AttnK
    } else if name.contains("attn_q.weight") {
        Category::AttnQ
    } else if name.contains("attn_output.weight") {
        Category::AttnOutput
    } else if name.contains("ffn_up") {
        Category::FfnUp
    } else if name.contains("ffn_gate") {
        Category::FfnGate
    } else if name.contains("ffn_down") {
        Category::FfnDown
    } else {
        Category::Other
    }
}

/// llama.cpp's `tensor_allows_quantization` for a Llama model (no MoE, no multimodal).
fn allows_quantization(t: &MixTensor) -> bool {
    // the MoE router stays as it is (`quantize &= name.find("ffn_gate_inp.weight") == npos`)
    t.n_dims >= 2
        && t.name.ends_with("weight")
        && !t.name.contains("_norm.weight")
        && !t.name.contains("ffn_gate_inp.weight")
}

/// `blk.N.` → N, else −1 (llama_model_loader's `weight_name_comparer`).
fn layer_of(name: &str) -> i64 {
    name.strip_prefix("blk.")
        .and_then(|r| r.split('.').next())
        .and_then(|n| n.parse::<i64>().ok())
        .unwrap_or(-1)
}

fn use_more_bits(i: i64, n: i64) -> bool {
    // C's `%` truncates toward zero like Rust's, so a negative left side never equals 2.
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

fn fallback(ne0: u64, target: DType) -> MixChoice {
    let bs = target.block_size();
    if ne0 % bs == 0 {
        return MixChoice {
            dtype: target,
            fallback_from: None,
        };
    }
    let mut t = match target {
        DType::Q2_K | DType::Q3_K => DType::Q4_0,
        DType::Q4_K => DType::Q5_0,
        DType::Q5_K => DType::Q5_1,
        DType::Q6_K => DType::Q8_0,
        other => other,
    };
    if ne0 % t.block_size() != 0 {
        t = DType::F16;
    }
    MixChoice {
        dtype: t,
        fallback_from: Some(target),
    }
}

struct State {
    n_attention_wv: i64,
    i_attention_wv: i64,
    n_ffn_down: i64,
    i_ffn_down: i64,
    tied: bool,
}

fn mix_type(mix: GgufMix, m: &MixModel, st: &mut State, t: &MixTensor, cat: Category) -> DType {
    use GgufMix as F;
    let mut new = mix.default_type();
    let n_gqa = m.n_head / m.n_head_kv.max(1);
    let is_70b = m.n_layers == 80 && m.n_head != m.n_head_kv;
    if cat == Category::Output || (st.tied && cat == Category::TokenEmbd) {
        if t.ne0 % new.block_size() != 0 {
            new = DType::Q8_0;
        } else if new != DType::Q8_0 {
            new = DType::Q6_K;
        }
    } else if cat == Category::TokenEmbd {
        // only the IQ mixes and Q2_0/TQ change token embeddings
    } else if matches!(cat, Category::AttnV | Category::AttnQkv | Category::AttnKvB) {
        let (i, n) = (st.i_attention_wv, st.n_attention_wv);
        match mix {
            F::Q2_K => new = if n_gqa >= 4 { DType::Q4_K } else { DType::Q3_K },
            F::Q3_K_M => new = if i < 2 { DType::Q5_K } else { DType::Q4_K },
            F::Q3_K_L => new = DType::Q5_K,
            F::Q4_K_M | F::Q5_K_M if use_more_bits(i, n) => new = DType::Q6_K,
            F::Q4_K_S if i < 4 => new = DType::Q5_K,
            _ => {}
        }
        if is_70b && matches!(new, DType::Q3_K | DType::Q4_K) {
            new = DType::Q5_K;
        }
        // "for the 8-expert model, bumping this to Q8_0 trades just ~128MB"
        if m.n_expert == 8 {
            new = DType::Q8_0;
        }
        st.i_attention_wv += 1;
    } else if cat == Category::AttnK {
        if m.n_expert == 8 {
            new = DType::Q8_0;
        }
    } else if cat == Category::FfnDown {
        // llama-quant.cpp `layer_info`: with experts the layer is parsed from the name (a
        // Llama 4 block has ffn_down_exps and ffn_down_shexp, a dense block ffn_down: the
        // counter would run ahead of the layer)
        let i = if m.n_expert > 1 {
            layer_of(&t.name)
        } else {
            st.i_ffn_down
        };
        let n = st.n_ffn_down;
        match mix {
            F::Q2_K => new = DType::Q3_K,
            F::Q3_K_M => new = if i < n / 16 { DType::Q5_K } else { DType::Q4_K },
            F::Q3_K_L => new = DType::Q5_K,
            F::Q4_K_M | F::Q5_K_M if use_more_bits(i, n) => new = DType::Q6_K,
            F::Q4_K_S if i < n / 8 => new = DType::Q5_K,
            F::Q4_0 | F::Q5_0 if m.has_imatrix && i < n / 8 => {
                new = if mix == F::Q4_0 {
                    DType::Q4_1
                } else {
                    DType::Q5_1
                };
            }
            _ => {}
        }
        st.i_ffn_down += 1;
    } else if cat == Category::AttnOutput {
        if m.n_expert == 8 {
            if matches!(mix, F::Q2_K | F::Q3_K_S | F::Q3_K_M | F::Q4_K_S | F::Q4_K_M) {
                new = DType::Q5_K;
            }
        } else {
            match mix {
                F::Q2_K => new = DType::Q3_K,
                F::Q3_K_M => new = DType::Q4_K,
                F::Q3_K_L => new = DType::Q5_K,
                _ => {}
            }
        }
    }
    new
}

/// The ggml type of every tensor under `mix`, in the order given (the rules themselves visit
/// the tensors in llama.cpp's loader order, whatever order they are given in).
pub fn choose_types(mix: GgufMix, model: &MixModel, tensors: &[MixTensor]) -> Vec<MixChoice> {
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (&tensors[a].name, &tensors[b].name);
        layer_of(x).cmp(&layer_of(y)).then_with(|| x.cmp(y))
    });
    let mut st = State {
        n_attention_wv: tensors
            .iter()
            .filter(|t| {
                matches!(
                    category(&t.name),
                    Category::AttnV | Category::AttnQkv | Category::AttnKvB
                )
            })
            .count() as i64,
        i_attention_wv: 0,
        n_ffn_down: model.n_layers as i64,
        i_ffn_down: 0,
        tied: !tensors.iter().any(|t| t.name == "output.weight"),
    };
    let mut out = vec![
        MixChoice {
            dtype: DType::F32,
            fallback_from: None
        };
        tensors.len()
    ];
    for i in order {
        let t = &tensors[i];
        out[i] = if allows_quantization(t) {
            let want = mix_type(mix, model, &mut st, t, category(&t.name));
            fallback(t.ne0, want)
        } else {
            MixChoice {
                dtype: t.current,
                fallback_from: None,
            }
        };
    }
    out
}

/// Options of [`quantize_to_gguf`].
#[derive(Debug, Clone, Default)]
pub struct GgufQuantOptions {
    /// Importance matrix: GGUF tensor name → one weight per input column.
    pub imatrix: Option<BTreeMap<String, Vec<f32>>>,
    /// Replace an existing output file.
    pub overwrite: bool,
    /// NaN, ±inf and absurdly large weights in the tensors being quantized (`skip` keeps a
    /// tensor in F32).
    pub numerics: Numerics,
    /// Key/values appended after llama-quantize's own (e.g. the `quantize.imatrix.*` keys
    /// from [`crate::imatrix::Imatrix::quantize_metadata`]).
    pub extra_metadata: Vec<(String, GgufValue)>,
    /// Plan the file and report its exact size; write nothing, read no tensor data.
    pub dry_run: bool,
}

/// A GGUF quantization's result: the file plus each tensor's type.
#[derive(Debug, Clone)]
pub struct GgufQuantWritten {
    /// The file and notes.
    pub written: Written,
    /// (GGUF name, type, type wanted before a fallback) per tensor, in file order.
    pub types: Vec<(String, DType, Option<DType>)>,
}

/// Quantize a plain float tensor row by row straight from its source bytes (each row decoded
/// into a per-thread buffer, permuted for RoPE when the source is HF), in parallel, without an
/// `f32` copy of the tensor. `None` when the tensor is not a plain float 2-D weight or the
/// target is not a ggml block type (those take the whole-tensor path).
fn quantize_streamed(
    ckpt: &Checkpoint,
    t: &TensorEntry,
    dtype: DType,
    gguf_name: &str,
    opts: &GgufQuantOptions,
    buf: &mut Vec<u8>,
) -> Option<Result<()>> {
    if !dtype.is_block()
        || t.key.part != Part::Weight
        || t.shape.len() != 2
        || !matches!(t.dtype, DType::F32 | DType::F16 | DType::BF16)
    {
        return None;
    }
    let (rows, k) = (t.shape[0] as usize, t.shape[1] as usize);
    let row_bytes = usize::try_from(dtype.bytes_for(k as u64).ok()?).ok()?;
    let imatrix = imatrix_slice(opts, gguf_name, t.key, k as u64);
    buf.resize(rows * row_bytes, 0);
    let rope = rope_direction(&ckpt.config, ckpt.format, Format::Gguf);
    let done = crate::dequant::Weights(ckpt).par_source_rows(
        t,
        rope,
        &t.name,
        Some((buf, row_bytes)),
        |bytes, vals, out| {
            qforge_codecs::decode_to_f32(t.dtype, bytes, vals)?;
            opts.numerics.row(vals)?;
            ggml_quant::quantize_one_row(dtype, vals, imatrix, out.expect("output rows given"))
        },
    );
    Some(done.map(|_| ()))
}

/// Scan what would be quantized under an opt-in bad-weight policy; `skip` keeps the tensors
/// with bad values in F32 (notes name each). `mix_of[i]` is entry `i`'s GGUF tensor.
fn scan_bad_weights(
    ckpt: &Checkpoint,
    opts: &GgufQuantOptions,
    (entries, mix_of): (&[&TensorEntry], &[usize]),
    mix_tensors: &[MixTensor],
    choices: &mut [MixChoice],
    notes: &mut Vec<Note>,
) -> Result<()> {
    if opts.numerics.policy == WeightPolicy::Error {
        return Ok(());
    }
    // Scan what would be quantized; `skip` keeps the tensors with bad values in F32.
    for (i, t) in entries.iter().enumerate() {
        let c = &mut choices[mix_of[i]];
        if !c.dtype.is_block() || t.key.part != Part::Weight {
            continue;
        }
        if let Some(f) = opts.numerics.scan(ckpt, t.key.id)? {
            notes.push(Note::requested(
                opts.numerics.note(&mix_tensors[mix_of[i]].name, &f),
            ));
            if opts.numerics.policy == WeightPolicy::Skip {
                c.dtype = DType::F32;
                c.fallback_from = None;
            }
        }
    }
    Ok(())
}

/// The importance weights of `name` for the rows of `key` (`ne0` wide): the whole vector, or
/// an expert's slice of a per-expert stack's (checked against the stack's size before).
fn imatrix_slice<'a>(
    opts: &'a GgufQuantOptions,
    name: &str,
    key: TensorKey,
    ne0: u64,
) -> Option<&'a [f32]> {
    let w = opts.imatrix.as_ref()?.get(name)?;
    let ne0 = usize::try_from(ne0).ok()?;
    match gguf_tensor_name(key) {
        Some((_, Some(e))) if w.len() != ne0 => {
            let e = e as usize;
            w.get(e.checked_mul(ne0)?..e.checked_add(1)?.checked_mul(ne0)?)
        }
        _ => Some(w),
    }
}

/// Importance-matrix rows must match the tensors they weight.
fn check_imatrix(
    opts: &GgufQuantOptions,
    dest: &Path,
    mix_tensors: &[MixTensor],
    choices: &[MixChoice],
    n_expert: u64,
) -> Result<()> {
    if let Some(im) = &opts.imatrix {
        for (mt, c) in mix_tensors.iter().zip(choices) {
            if let Some(w) = im.get(&mt.name) {
                // an expert stack: one row of weights per expert (llama-imatrix's
                // `ne0 · n_expert`; llama-quant.cpp `llama_model_quantize_impl` checks
                // `ne[0]*ne[2]` and quantizes expert `i03` with its slice)
                let per_expert = mt.n_dims == 3 && w.len() as u64 == mt.ne0 * n_expert;
                if c.dtype.is_block() && w.len() as u64 != mt.ne0 && !per_expert {
                    return Err(Error::BadQuantization {
                        path: dest.into(),
                        tensor: mt.name.clone(),
                        reason: format!(
                            "importance matrix has {} values, the tensor's rows have {}",
                            w.len(),
                            mt.ne0
                        ),
                    });
                }
            }
        }
    }
    Ok(())
}

/// GGUF key/value pairs in file order.
type Metadata = Vec<(String, GgufValue)>;

/// The file's metadata (llama.cpp's model and tokenizer keys, the source's `general.*` keys,
/// `extra_metadata`), with one note per kind of type fallback.
fn gguf_metadata(
    ckpt: &Checkpoint,
    mix: GgufMix,
    opts: &GgufQuantOptions,
    (mix_tensors, choices): (&[MixTensor], &[MixChoice]),
    notes: &mut Vec<Note>,
) -> Result<Metadata> {
    // general.name from the source GGUF, or from an HF source's model card (as
    // convert_hf_to_gguf.py names the file from it)
    let card = qforge_convert::export::model_card_fields(ckpt);
    let general_name = card
        .iter()
        .find(|(k, _)| *k == "model_name")
        .map(|(_, v)| v.clone());
    let mut metadata = model_metadata(&ckpt.config, general_name.as_deref(), Some(mix.file_type()));
    metadata.extend(tokenizer_metadata(ckpt, notes)?);
    metadata.push(("general.quantization_version".into(), GgufValue::U32(2)));
    metadata.extend(source_general_keys(ckpt, &metadata));
    metadata.extend(opts.extra_metadata.iter().cloned());
    // One note per kind of fallback (the per-tensor list is in the returned types).
    let mut fallbacks: BTreeMap<(u64, String, String), usize> = BTreeMap::new();
    for (mt, c) in mix_tensors.iter().zip(choices) {
        if let Some(from) = c.fallback_from {
            *fallbacks
                .entry((mt.ne0, from.to_string(), c.dtype.to_string()))
                .or_default() += 1;
        }
    }
    for ((ne0, from, to), n) in fallbacks {
        notes.push(Note::requested(format!(
            "{n} tensor(s) with rows of {ne0}, not a multiple of {from}'s 256-block: {to} instead \
             (llama-quantize's fallback)"
        )));
    }

    Ok(metadata)
}

/// Make the bytes of source tensor `t` as (a piece of) GGUF tensor `mt` of type `c.dtype` in
/// `buf`: a copy when it already has that type, else quantized (row by row from a plain float
/// source, or whole) or converted.
fn encode_tensor(
    ckpt: &Checkpoint,
    t: &TensorEntry,
    (mt, c): (&MixTensor, MixChoice),
    opts: &GgufQuantOptions,
    buf: &mut Vec<u8>,
) -> Result<()> {
    qforge_convert::export::reset_buffer(buf);
    let same_layout = rope_direction(&ckpt.config, ckpt.format, Format::Gguf).is_none()
        || rope_heads(&ckpt.config, t.key).is_none();
    if t.dtype == c.dtype && t.key.part == Part::Weight && same_layout {
        // llama-quantize copies a tensor that already has its target type.
        buf.extend_from_slice(&ckpt.bytes(t)?);
        ckpt.release(t);
    } else if let Some(r) = quantize_streamed(ckpt, t, c.dtype, &mt.name, opts, buf) {
        r?;
    } else {
        let mut rows = ckpt.role_rows_f32(
            t.key.id,
            rope_direction(&ckpt.config, ckpt.format, Format::Gguf),
        )?;
        if c.dtype.is_block() {
            opts.numerics
                .rows(&mut rows, mt.ne0.max(1) as usize)
                .map_err(|source| Error::Codec {
                    path: ckpt.path.clone(),
                    tensor: t.name.clone(),
                    source,
                })?;
            let imatrix = imatrix_slice(opts, &mt.name, t.key, mt.ne0);
            let n = usize::try_from(c.dtype.bytes_for(rows.len() as u64).map_err(|e| {
                Error::Codec {
                    path: ckpt.path.clone(),
                    tensor: t.name.clone(),
                    source: e,
                }
            })?)
            .unwrap_or(usize::MAX);
            buf.resize(n, 0);
            ggml_quant::quantize_rows(c.dtype, &rows, mt.ne0 as usize, imatrix, buf).map_err(
                |source| Error::Codec {
                    path: ckpt.path.clone(),
                    tensor: t.name.clone(),
                    source,
                },
            )?;
        } else {
            encode_float(&rows, c.dtype, buf).ok_or_else(|| Error::UnsupportedDType {
                path: ckpt.path.clone(),
                tensor: t.name.clone(),
                dtype: c.dtype,
                reason: "not a float or ggml block type",
            })?;
        }
    }
    Ok(())
}

/// The GGUF tensors a mix chooses types for, in file order (`rope_freqs` first when written),
/// with their shapes, and for each entry of `entries` the index of its GGUF tensor: the experts
/// of a block's projection are one 3-D stack (one type for the stack, as llama-quantize
/// chooses it), written expert by expert.
fn mix_tensors(
    ckpt: &Checkpoint,
    entries: &[&TensorEntry],
    rope_factors: Option<&[f32]>,
) -> (Vec<MixTensor>, Vec<Vec<u64>>, Vec<usize>) {
    let name_of = |t: &TensorEntry| {
        NameScheme::Gguf
            .name(TensorKey::weight(t.key.id))
            .unwrap_or_else(|| t.name.clone())
    };
    let mut mix_tensors = Vec::new();
    let mut shapes = Vec::new();
    if let Some(f) = rope_factors {
        shapes.push(vec![f.len() as u64]);
        mix_tensors.push(MixTensor {
            name: "rope_freqs.weight".into(),
            ne0: f.len() as u64,
            n_dims: 1,
            current: DType::F32,
        });
    }
    let mut mix_of: Vec<usize> = Vec::with_capacity(entries.len());
    for t in entries {
        let (stack, expert) = match gguf_tensor_name(t.key) {
            Some((n, Some(e))) => (Some(n), e),
            _ => (None, 0),
        };
        if expert > 0 {
            mix_of.push(mix_tensors.len() - 1);
            continue;
        }
        let shape = ckpt.config.expected_shape(t.key.id);
        let current = if shape.len() == 1 || !matches!(t.dtype, DType::F16 | DType::BF16) {
            DType::F32
        } else {
            t.dtype
        };
        mix_of.push(mix_tensors.len());
        mix_tensors.push(MixTensor {
            n_dims: shape.len() + usize::from(stack.is_some()),
            name: stack.unwrap_or_else(|| name_of(t)),
            ne0: shape.last().copied().unwrap_or(1),
            current,
        });
        shapes.push(shape);
    }
    (mix_tensors, shapes, mix_of)
}

/// Quantize any checkpoint to a GGUF file with llama.cpp's `mix`.
pub fn quantize_to_gguf(
    ckpt: &Checkpoint,
    dest: &Path,
    mix: GgufMix,
    opts: &GgufQuantOptions,
) -> Result<GgufQuantWritten> {
    let mut notes = qforge_convert::notes::from_reading(&ckpt.notes);
    let mut entries: Vec<&TensorEntry> = ckpt
        .tensors
        .iter()
        .filter(|t| matches!(t.key.part, Part::Weight | Part::WeightPacked))
        .collect();
    let rope_factors = if entries.iter().any(|t| t.key.id == TensorId::RopeFreqs) {
        None
    } else {
        llama3_rope_factors(&ckpt.config)
    };
    notes.extend(
        rope_factors
            .as_deref()
            .and_then(|f| qforge_convert::export_gguf::rope_metadata_lost(&ckpt.config, f)),
    );
    notes.extend(qforge_convert::export_gguf::window_lost(&ckpt.config));
    notes.extend(qforge_convert::export_gguf::class_lost(&ckpt.config));
    notes.extend(qforge_convert::export_gguf::moe_lost(&ckpt.config));
    notes.extend(qforge_convert::export_gguf::llama4_lost(&ckpt.config));
    qforge_convert::export_gguf::check_moe_gguf(&ckpt.config, &ckpt.path)?;
    entries.sort_by_key(|t| gguf_order(&t.key));
    let (mix_tensors, shapes, mix_of) = mix_tensors(ckpt, &entries, rope_factors.as_deref());
    let model = MixModel {
        n_layers: ckpt.config.num_layers,
        n_head: ckpt.config.num_heads,
        n_head_kv: ckpt.config.num_kv_heads,
        has_imatrix: opts.imatrix.as_ref().is_some_and(|m| !m.is_empty()),
        n_expert: ckpt.config.moe.as_ref().map_or(0, |m| m.num_experts),
    };
    let mut choices = choose_types(mix, &model, &mix_tensors);
    scan_bad_weights(
        ckpt,
        opts,
        (&entries, &mix_of),
        &mix_tensors,
        &mut choices,
        &mut notes,
    )?;
    check_imatrix(opts, dest, &mix_tensors, &choices, model.n_expert)?;
    let offset = usize::from(rope_factors.is_some());
    let mut specs: Vec<GgufTensorSpec> = mix_tensors
        .iter()
        .zip(&choices)
        .zip(&shapes)
        .take(offset)
        .map(|((mt, c), shape)| GgufTensorSpec {
            name: mt.name.clone(),
            dtype: c.dtype,
            shape: shape.clone(),
        })
        .collect();
    specs.extend(gguf_specs(
        &ckpt.path,
        entries
            .iter()
            .enumerate()
            .map(|(i, &t)| (t, choices[mix_of[i]].dtype)),
    )?);
    let metadata = gguf_metadata(ckpt, mix, opts, (&mix_tensors, &choices), &mut notes)?;
    let p = plan(&metadata, specs)?;
    let types = mix_tensors
        .iter()
        .zip(&choices)
        .map(|(mt, c)| (mt.name.clone(), c.dtype, c.fallback_from))
        .collect();
    if opts.dry_run {
        return Ok(GgufQuantWritten {
            written: Written {
                files: vec![qforge_convert::write::planned_file(
                    dest,
                    p.file_size(),
                    p.tensors.iter().map(|t| t.1).sum(),
                )],
                resumed: Vec::new(),
                notes,
            },
            types,
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
    for (i, t) in entries.iter().enumerate() {
        let (mt, c) = (&mix_tensors[mix_of[i]], choices[mix_of[i]]);
        encode_tensor(ckpt, t, (mt, c), opts, &mut buf)?;
        // an expert is one piece of its stack
        w.write_part(&mt.name, &buf)
            .map_err(|e| Error::io(&path, e))?;
    }
    let file = w.finish().map_err(|e| Error::io(&path, e))?;
    let record = target.commit(file)?;
    Ok(GgufQuantWritten {
        written: Written {
            files: vec![record],
            resumed: Vec::new(),
            notes,
        },
        types,
    })
}

/// The source GGUF's other `general.*` keys (license, organization, basename, size_label,
/// finetune, languages, …), which llama-quantize carries over: it copies every key of the
/// input (`gguf_set_kv` in `llama_model_quantize_impl`, llama.cpp's src/llama-quant.cpp) and
/// then sets the file type and quantization version. Keys already in `metadata` stay as set.
fn source_general_keys(
    ckpt: &Checkpoint,
    metadata: &[(String, GgufValue)],
) -> Vec<(String, GgufValue)> {
    let Some(src) = &ckpt.gguf else {
        return Vec::new();
    };
    src.entries
        .iter()
        .filter(|(k, _)| k.starts_with("general.") && !metadata.iter().any(|(m, _)| m == k))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm2_like(tied: bool) -> Vec<MixTensor> {
        let mut v = vec![
            MixTensor {
                name: "token_embd.weight".into(),
                ne0: 576,
                n_dims: 2,
                current: DType::F32,
            },
            MixTensor {
                name: "output_norm.weight".into(),
                ne0: 576,
                n_dims: 1,
                current: DType::F32,
            },
        ];
        if !tied {
            v.push(MixTensor {
                name: "output.weight".into(),
                ne0: 576,
                n_dims: 2,
                current: DType::F32,
            });
        }
        for i in 0..30 {
            for (n, ne0, d) in [
                ("attn_norm", 576, 1),
                ("attn_q", 576, 2),
                ("attn_k", 576, 2),
                ("attn_v", 576, 2),
                ("attn_output", 576, 2),
                ("ffn_norm", 576, 1),
                ("ffn_gate", 576, 2),
                ("ffn_up", 576, 2),
                ("ffn_down", 1536, 2),
            ] {
                v.push(MixTensor {
                    name: format!("blk.{i}.{n}.weight"),
                    ne0,
                    n_dims: d,
                    current: DType::F32,
                });
            }
        }
        v
    }

    /// An 8-expert Mixtral-like model (hidden 512, experts of 512, 4 blocks): the types
    /// llama-quantize (pinned llama.cpp) chose for a transformers-made random model of these
    /// widths, converted to F32 GGUF by qforge (qforge's bytes were identical too).
    #[test]
    fn eight_experts_raise_attention_types_like_llama_cpp() {
        let mut t = vec![
            MixTensor {
                name: "token_embd.weight".into(),
                ne0: 512,
                n_dims: 2,
                current: DType::F32,
            },
            MixTensor {
                name: "output.weight".into(),
                ne0: 512,
                n_dims: 2,
                current: DType::F32,
            },
        ];
        for i in 0..4 {
            for (n, ne0, d) in [
                ("attn_q", 512, 2),
                ("attn_k", 512, 2),
                ("attn_v", 512, 2),
                ("attn_output", 512, 2),
                ("ffn_gate_inp", 512, 2),
                ("ffn_gate_exps", 512, 3),
                ("ffn_up_exps", 512, 3),
                ("ffn_down_exps", 512, 3),
                ("attn_norm", 512, 1),
            ] {
                t.push(MixTensor {
                    name: format!("blk.{i}.{n}.weight"),
                    ne0,
                    n_dims: d,
                    current: DType::F32,
                });
            }
        }
        let m = MixModel {
            n_layers: 4,
            n_head: 8,
            n_head_kv: 2,
            has_imatrix: false,
            n_expert: 8,
        };
        use DType as D;
        for (mix, attn_out, down0, gate) in [
            (GgufMix::Q4_K_M, D::Q5_K, D::Q4_K, D::Q4_K),
            (GgufMix::Q3_K_M, D::Q5_K, D::Q4_K, D::Q3_K),
            (GgufMix::Q2_K, D::Q5_K, D::Q3_K, D::Q2_K),
            (GgufMix::Q3_K_L, D::Q3_K, D::Q5_K, D::Q3_K),
            (GgufMix::Q5_K_M, D::Q5_K, D::Q5_K, D::Q5_K),
        ] {
            let c = choose_types(mix, &m, &t);
            let get = |name: &str| c[t.iter().position(|x| x.name == name).unwrap()].dtype;
            assert_eq!(get("blk.0.attn_v.weight"), D::Q8_0, "{mix:?}");
            assert_eq!(get("blk.0.attn_k.weight"), D::Q8_0, "{mix:?}");
            assert_eq!(get("blk.0.attn_output.weight"), attn_out, "{mix:?}");
            assert_eq!(get("blk.0.ffn_down_exps.weight"), down0, "{mix:?}");
            assert_eq!(get("blk.0.ffn_gate_exps.weight"), gate, "{mix:?}");
            assert_eq!(get("blk.0.ffn_gate_inp.weight"), D::F32, "{mix:?}");
            assert_eq!(get("output.weight"), D::Q6_K, "{mix:?}");
        }
    }

    #[test]
    fn q4_k_m_on_a_576_wide_model_falls_back_like_llama_cpp() {
        let t = smollm2_like(true);
        let m = MixModel {
            n_layers: 30,
            n_head: 9,
            n_head_kv: 3,
            has_imatrix: false,
            n_expert: 0,
        };
        let c = choose_types(GgufMix::Q4_K_M, &m, &t);
        let get = |name: &str| c[t.iter().position(|x| x.name == name).unwrap()].dtype;
        // tied embeddings take the output's type: 576 % 256 != 0 -> Q8_0
        assert_eq!(get("token_embd.weight"), DType::Q8_0);
        assert_eq!(get("output_norm.weight"), DType::F32);
        assert_eq!(get("blk.0.attn_q.weight"), DType::Q5_0);
        // use_more_bits(0, 30): first eighth -> Q6_K -> Q8_0 fallback for 576-wide attn_v
        assert_eq!(get("blk.0.attn_v.weight"), DType::Q8_0);
        assert_eq!(get("blk.0.ffn_down.weight"), DType::Q6_K);
        // i = 4: 4 >= 30/8 = 3, (4 - 3) % 3 = 1 -> plain Q4_K (1536 = 6·256 fits)
        assert_eq!(get("blk.4.ffn_down.weight"), DType::Q4_K);
        assert_eq!(get("blk.5.ffn_down.weight"), DType::Q6_K);
        assert_eq!(get("blk.4.attn_v.weight"), DType::Q5_0);
        assert_eq!(get("blk.29.ffn_down.weight"), DType::Q6_K);
    }

    #[test]
    fn untied_output_gets_q6_k_and_embeddings_the_base_type() {
        let mut t = smollm2_like(false);
        for x in &mut t {
            x.ne0 *= 4; // 2304 = 9·256
        }
        let m = MixModel {
            n_layers: 30,
            n_head: 9,
            n_head_kv: 3,
            has_imatrix: false,
            n_expert: 0,
        };
        let c = choose_types(GgufMix::Q4_K_M, &m, &t);
        let get = |name: &str| c[t.iter().position(|x| x.name == name).unwrap()].dtype;
        assert_eq!(get("output.weight"), DType::Q6_K);
        assert_eq!(get("token_embd.weight"), DType::Q4_K);
        let c = choose_types(GgufMix::Q8_0, &m, &t);
        assert!(c.iter().zip(&t).all(|(c, t)| c.dtype
            == if t.n_dims == 1 {
                DType::F32
            } else {
                DType::Q8_0
            }));
    }

    #[test]
    fn parse_names() {
        for m in GgufMix::ALL {
            assert_eq!(GgufMix::parse(&m.name().to_lowercase()), Some(m));
        }
        assert_eq!(GgufMix::parse("q4_k"), None);
    }
}
