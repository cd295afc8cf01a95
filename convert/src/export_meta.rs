//! Writing checkpoints in Meta's layout: `params.json` and model-parallel
//! `consolidated.NN.pth` shards (specs/meta.md §1), from any readable checkpoint.
//!
//! Tensors get Meta names and Meta's order (embedding; per layer `wq wk wv wo w1 w2 w3
//! attention_norm ffn_norm`; `norm`; `output`). Q/K rows are permuted back from the HF rotary
//! layout when the source is HF (GGUF and Meta sources already use Meta's layout). Float
//! tensors keep their dtype (Meta releases are BF16); quantized ones are decoded to F32, which
//! is exact, unless a dtype is asked for.
//!
//! For MP = N each shard holds, per fairscale's layers (§1.4): rows `r·n/N..(r+1)·n/N` of `wq wk
//! wv w1 w3 output tok_embeddings` (dim 0; heads are rank-major, so every rank gets whole
//! heads), columns of `wo w2` (dim 1), and a copy of every norm. All N files are written in
//! lockstep: each tensor is produced once, and its N slices are streamed into the N files, so
//! memory follows the largest tensor, not the model. Each file is what `torch.save` writes for a
//! plain dict of these tensors (see [`crate::write::pth`]).

use std::path::Path;

use qforge_codecs::DType;
use serde_json::json;

use crate::checkpoint::{Checkpoint, Format, TensorEntry};
use crate::config::{meta_ffn_dim, ModelConfig, RopeScaling};
use crate::error::{ConfigError, Error, Result};
use crate::export::{
    has_tokenizer, rope_direction, rope_heads, target_rope_scaling, tensor_bytes, Written,
};
use crate::export_gguf::{llama3_from_factors, llama3_rope_factors};
use crate::names::{LayerTensor, NameScheme, Part, TensorId, TensorKey};
use crate::write::pth::{archive_name, plan, PthWriter};
use crate::write::safetensors::TensorSpec;
use qforge_stage::notes::Note;
use qforge_stage::{OutputDir, OutputOptions, StagedFile};

/// Options for [`convert_to_meta_with`].
#[derive(Debug, Clone, Copy)]
pub struct MetaOptions {
    /// Model-parallel degree: the number of `consolidated.NN.pth` files.
    pub mp: usize,
    /// Output dtype for every tensor; `None` keeps F32/F16/BF16 tensors as they are and decodes
    /// everything else to F32 (exact).
    pub dtype: Option<DType>,
    /// Resume / overwrite policy.
    pub output: OutputOptions,
}

/// `(ffn_dim_multiplier, multiple_of)` of Meta's releases, by `(dim, FFN width)`
/// (LM:models/sku_list.py and the Llama 2 `params.json` files).
const META_RELEASES: [(u64, u64, Option<f64>, u64); 7] = [
    (4096, 14336, Some(1.3), 1024),  // Llama 3 / 3.1 8B
    (8192, 28672, Some(1.3), 4096),  // Llama 3 / 3.1 70B, Llama 2 70B
    (16384, 53248, Some(1.2), 4096), // Llama 3.1 405B
    (2048, 8192, Some(1.5), 256),    // Llama 3.2 1B
    (3072, 8192, Some(1.0), 256),    // Llama 3.2 3B
    (4096, 11008, None, 256),        // Llama 2 7B
    (5120, 13824, None, 256),        // Llama 2 13B
];

/// The split dimension of a tensor in Meta's model-parallel layout, or `None` when every rank
/// holds a copy (the norms). Embeddings follow Llama 3's `VocabParallelEmbedding` (dim 0).
pub fn split_dim(id: TensorId) -> Option<usize> {
    match id {
        TensorId::TokenEmbedding | TensorId::Output => Some(0),
        TensorId::Layer { kind, .. } => match kind {
            LayerTensor::Q
            | LayerTensor::K
            | LayerTensor::V
            | LayerTensor::Gate
            | LayerTensor::Up => Some(0),
            LayerTensor::O | LayerTensor::Down => Some(1),
            // Meta checkpoints are Llama's: no biases or q/k norms (never asked for)
            LayerTensor::AttnNorm
            | LayerTensor::FfnNorm
            | LayerTensor::QBias
            | LayerTensor::KBias
            | LayerTensor::VBias
            | LayerTensor::QNorm
            | LayerTensor::KNorm
            | LayerTensor::Router
            | LayerTensor::Expert { .. }
            | LayerTensor::SharedExpert { .. } => None,
        },
        TensorId::OutputNorm | TensorId::RopeFreqs => None,
    }
}

/// Meta's tensor order (`nn.Module` registration order of Meta's `Transformer`).
fn meta_order(id: TensorId) -> (u64, u32) {
    let kind_rank = |k: LayerTensor| match k {
        LayerTensor::Q => 0,
        LayerTensor::K => 1,
        LayerTensor::V => 2,
        LayerTensor::O => 3,
        LayerTensor::Gate => 4,
        LayerTensor::Down => 5,
        LayerTensor::Up => 6,
        LayerTensor::AttnNorm => 7,
        LayerTensor::FfnNorm => 8,
        // not in Meta checkpoints (Llama only)
        LayerTensor::QBias
        | LayerTensor::KBias
        | LayerTensor::VBias
        | LayerTensor::QNorm
        | LayerTensor::KNorm
        | LayerTensor::Router
        | LayerTensor::Expert { .. }
        | LayerTensor::SharedExpert { .. } => 9,
    };
    match id {
        TensorId::TokenEmbedding => (0, 0),
        TensorId::Layer { index, kind } => (1 + u64::from(index), kind_rank(kind)),
        TensorId::OutputNorm => (u64::MAX - 1, 0),
        TensorId::Output => (u64::MAX, 0),
        TensorId::RopeFreqs => (u64::MAX, 1),
    }
}

/// A `(ffn_dim_multiplier, multiple_of)` pair for which Meta's rule
/// ([`crate::config::meta_ffn_dim`]) gives the config's `intermediate_size`: the config's own
/// values when it has them (Meta sources), else the pair of the matching Meta release, else no
/// multiplier and the largest power-of-two `multiple_of` that works, else the shortest decimal
/// multiplier with `multiple_of` the largest power of two dividing the width.
pub fn meta_ffn_params(cfg: &ModelConfig) -> Option<(Option<f64>, u64)> {
    let (dim, ffn) = (cfg.hidden_size, cfg.intermediate_size);
    let works = |mult: Option<f64>, m: u64| {
        m > 0
            && mult.is_none_or(|x| x.is_finite() && x > 0.0 && x < 64.0)
            && meta_ffn_dim(dim, mult, m) == ffn
    };
    if let Some(m) = cfg.multiple_of {
        if works(cfg.ffn_dim_multiplier, m) {
            return Some((cfg.ffn_dim_multiplier, m));
        }
    }
    for &(d, f, mult, m) in &META_RELEASES {
        if (d, f) == (dim, ffn) && works(mult, m) {
            return Some((mult, m));
        }
    }
    for shift in (0..=40).rev() {
        if works(None, 1 << shift) {
            return Some((None, 1 << shift));
        }
    }
    let h = (2 * 4 * dim) / 3;
    let m = 1u64 << ffn.trailing_zeros().min(40);
    for digits in 1..=12u32 {
        let scale = 10u64.pow(digits);
        let k = (u128::from(ffn) * u128::from(scale)).div_ceil(u128::from(h.max(1)));
        let mult = k as f64 / scale as f64;
        if works(Some(mult), m) {
            return Some((Some(mult), m));
        }
    }
    None
}

/// A float as Python's `repr` (and so `json.dump`) writes it: shortest round-trip digits,
/// positional with a `.0` for integral values when the decimal exponent is in `-4..16`,
/// otherwise `d.ddde±XX`.
fn py_float(v: f64) -> String {
    if v == 0.0 {
        return if v.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    if !v.is_finite() {
        return if v.is_nan() {
            "NaN".into()
        } else if v > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let sci = format!("{:e}", v.abs()); // shortest digits, e.g. "1.3e0", "1e-5"
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if v < 0.0 { "-" } else { "" };
    if !(-4..16).contains(&exp) {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        return format!("{sign}{first}{frac}e{esign}{:02}", exp.abs());
    }
    if exp < 0 {
        let zeros = "0".repeat((-exp - 1) as usize);
        return format!("{sign}0.{zeros}{digits}");
    }
    let int_len = exp as usize + 1;
    if digits.len() <= int_len {
        let zeros = "0".repeat(int_len - digits.len());
        format!("{sign}{digits}{zeros}.0")
    } else {
        format!("{sign}{}.{}", &digits[..int_len], &digits[int_len..])
    }
}

/// How `params.json` says `cfg`'s RoPE scaling: `use_scaled_rope`, and the
/// `(rope_scaling_factor, rope_high_freq_factor)` to write (none for Llama 3.1's 8 and 4), with
/// what that costs.
///
/// Meta's Llama 3 reference code (llama-models `models/llama3/args.py` `ModelArgs`,
/// `models/llama3/model.py` `apply_scaling`) reads only `use_scaled_rope` and fixes factor 8,
/// `low_freq_factor` 1, `high_freq_factor` 4 and `old_context_len` 8192; its Llama 4 code
/// (`models/llama4/args.py` `ModelArgs`, `models/llama4/model.py` `apply_scaling`) also reads
/// `rope_scaling_factor` and `rope_high_freq_factor` with the same fixed low factor and 8192.
/// Those are the keys written: qforge reads them back. Any other llama3 scaling is written as
/// the factor/high-frequency factor giving the same frequencies for this head width and θ
/// ([`llama3_from_factors`]) when there is one; otherwise it cannot be said.
fn meta_rope(cfg: &ModelConfig) -> (bool, Option<(f64, f64)>, Vec<Note>) {
    let keep = "convert to HF or GGUF, which keep it";
    let s = match &cfg.rope_scaling {
        None => return (false, None, Vec::new()),
        Some(RopeScaling::Linear { factor }) => {
            let what = format!(
                "params.json cannot say linear RoPE scaling (factor {factor}): Meta's format knows only Llama 3.1 scaling (use_scaled_rope); written without scaling"
            );
            return (false, None, vec![Note::changes_math(what, keep)]);
        }
        Some(RopeScaling::Yarn { factor, .. }) => {
            let what = format!(
                "params.json cannot say YaRN RoPE scaling (factor {factor}): Meta's format knows only Llama 3.1 scaling (use_scaled_rope); written without scaling"
            );
            return (false, None, vec![Note::changes_math(what, keep)]);
        }
        Some(s @ RopeScaling::Llama3 { .. }) => s,
    };
    let factors = llama3_rope_factors(cfg).unwrap_or_default();
    let meta = llama3_from_factors(cfg.rope_theta, cfg.head_dim, &factors, Some((1.0, 8192)));
    let mut notes = Vec::new();
    let (factor, high) = match (&meta, s) {
        (
            Some(RopeScaling::Llama3 {
                factor,
                high_freq_factor,
                ..
            }),
            _,
        ) => {
            if meta.as_ref() != Some(s) {
                notes.push(Note::metadata_lost(
                    format!(
                        "params.json says the RoPE scaling as {meta:?} (Meta's code fixes low_freq_factor 1 and original context 8192), the source said {s:?}: the same frequencies for head_dim {} and rope_theta {}",
                        cfg.head_dim, cfg.rope_theta
                    ),
                    "keep the source's config.json",
                ));
            }
            (*factor, *high_freq_factor)
        }
        (
            None,
            RopeScaling::Llama3 {
                factor,
                high_freq_factor,
                ..
            },
        ) => {
            notes.push(Note::changes_math(
                format!(
                    "params.json cannot say this llama3 RoPE scaling ({s:?}): Meta's code fixes low_freq_factor 1 and original context 8192 (llama-models models/llama3/model.py apply_scaling) and no rope_scaling_factor/rope_high_freq_factor gives the same frequencies; written as factor {factor}, high-frequency factor {high_freq_factor} with those"
                ),
                keep,
            ));
            (*factor, *high_freq_factor)
        }
        _ => return (false, None, notes),
    };
    if (factor, high) == (8.0, 4.0) {
        return (true, None, notes);
    }
    notes.push(Note::lossless(format!(
        "params.json says rope_scaling_factor {factor} and rope_high_freq_factor {high} (read by qforge and Meta's Llama 4 code); Meta's Llama 3 reference code ignores them and applies factor 8, as it does for Meta's own Llama 3.2 releases"
    )));
    (true, Some((factor, high)), notes)
}

/// `params.json` for `cfg` (one line, keys sorted, Python `json.dump` spelling, as in Meta's
/// Llama 3.1 releases), plus notes on what it costs (see [`meta_rope`]; there is no context
/// length key: Meta's `Llama.build` passes `max_seq_len` to `ModelArgs` itself, next to the
/// file's keys, so a `max_seq_len` in the file would be a duplicate argument).
pub fn meta_params_json(cfg: &ModelConfig) -> Result<(String, Vec<Note>)> {
    let config_error = |reason: String| Error::Config {
        path: "params.json".into(),
        kind: ConfigError::Inconsistent(reason),
    };
    let (mult, multiple_of) = meta_ffn_params(cfg).ok_or_else(|| {
        config_error(format!(
            "no ffn_dim_multiplier/multiple_of reproduces intermediate_size {} for dim {}",
            cfg.intermediate_size, cfg.hidden_size
        ))
    })?;
    let (use_scaled_rope, scaling, mut notes) = meta_rope(cfg);
    let mut fields = vec![("dim", cfg.hidden_size.to_string())];
    if let Some(m) = mult {
        fields.push(("ffn_dim_multiplier", py_float(m)));
    }
    fields.extend([
        ("multiple_of", multiple_of.to_string()),
        ("n_heads", cfg.num_heads.to_string()),
        ("n_kv_heads", cfg.num_kv_heads.to_string()),
        ("n_layers", cfg.num_layers.to_string()),
        ("norm_eps", py_float(cfg.rms_norm_eps)),
    ]);
    if let Some((factor, high)) = scaling {
        fields.push(("rope_high_freq_factor", py_float(high)));
        fields.push(("rope_scaling_factor", py_float(factor)));
    }
    fields.extend([
        ("rope_theta", py_float(cfg.rope_theta)),
        ("use_scaled_rope", use_scaled_rope.to_string()),
        ("vocab_size", cfg.vocab_size.to_string()),
    ]);
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("\"{k}\": {v}"))
        .collect();
    let text = format!("{{{}}}", body.join(", "));

    // What a Meta reader will make of it, against what the source said.
    let back = ModelConfig::from_meta_params(&text, None).map_err(|kind| Error::Config {
        path: "params.json".into(),
        kind,
    })?;
    if back.intermediate_size != cfg.intermediate_size {
        return Err(config_error(format!(
            "params.json gives FFN width {}, the model has {}",
            back.intermediate_size, cfg.intermediate_size
        )));
    }
    if back.max_position_embeddings != cfg.max_position_embeddings {
        notes.push(Note::metadata_lost(
            format!(
                "params.json has no context length: readers assume {} (the source said {})",
                back.max_position_embeddings, cfg.max_position_embeddings
            ),
            "keep the source's config.json (max_position_embeddings) or GGUF (context_length)",
        ));
    }
    Ok((text, notes))
}

/// One tensor of the output, unsplit.
struct Planned<'a> {
    id: TensorId,
    name: String,
    source: &'a TensorEntry,
    dtype: DType,
    shape: Vec<u64>,
    split: Option<usize>,
}

fn mp_error(path: &Path, mp: usize, reason: &str) -> Error {
    Error::Config {
        path: path.into(),
        kind: ConfigError::Inconsistent(format!(
            "cannot split into {mp} model-parallel shards: {reason}"
        )),
    }
}

/// Check that `cfg` splits into `mp` ranks of whole heads and equal slices.
fn check_mp(path: &Path, cfg: &ModelConfig, mp: usize) -> Result<()> {
    if mp == 0 {
        return Err(mp_error(path, mp, "the degree must be at least 1"));
    }
    if cfg.num_heads % mp as u64 != 0 {
        return Err(mp_error(
            path,
            mp,
            &format!("n_heads {} is not a multiple of {mp}", cfg.num_heads),
        ));
    }
    if mp as u64 > cfg.num_kv_heads {
        return Err(mp_error(
            path,
            mp,
            &format!(
                "the model has only {} key/value heads; Meta's layout for more ranks than key/value heads (405B MP16) duplicates them, which qforge does not write",
                cfg.num_kv_heads
            ),
        ));
    }
    for (what, n) in [
        ("n_kv_heads", cfg.num_kv_heads),
        ("vocab_size", cfg.vocab_size),
        ("the FFN width", cfg.intermediate_size),
    ] {
        if n % mp as u64 != 0 {
            return Err(mp_error(
                path,
                mp,
                &format!("{what} {n} is not a multiple of {mp}"),
            ));
        }
    }
    Ok(())
}

/// `params.json` bytes, `tokenizer.model` bytes to write (none: nothing, or the Meta source's own
/// file), and the notes.
type MetaSideFiles = (Vec<u8>, Option<Vec<u8>>, Vec<Note>);

/// The output's `params.json` (the source's own file when it is Meta), the `tokenizer.model`
/// to write for a non-Meta source, and the notes on what the output keeps: the reading's
/// notes, the RoPE scaling (a GGUF source's `rope_freqs` recovered as Llama 3.1 scaling, see
/// [`target_rope_scaling`]; then [`meta_params_json`]), the embeddings re-tied or not, and the
/// tokenizer (see [`meta_tokenizer`]).
fn meta_params_and_notes(ckpt: &Checkpoint) -> Result<MetaSideFiles> {
    let mut notes = qforge_stage::notes::from_reading(&ckpt.notes);
    if ckpt.format == Format::Meta {
        let p = ckpt.path.join("params.json");
        return Ok((
            std::fs::read(&p).map_err(|e| Error::io(&p, e))?,
            None,
            notes,
        ));
    }
    let mut cfg = ckpt.config.clone();
    let (rope_scaling, rope_notes) = target_rope_scaling(ckpt, "params.json")?;
    cfg.rope_scaling = rope_scaling;
    notes.extend(rope_notes);
    let (text, more) = meta_params_json(&cfg)?;
    notes.extend(more);
    let (tokenizer, note) = meta_tokenizer(ckpt, &cfg);
    notes.push(note);
    Ok((text.into_bytes(), tokenizer, notes))
}

/// The source's tokenizer as Meta's tiktoken `tokenizer.model`, when that file reads back as
/// the same tokenizer ([`crate::meta_tokenizer::tiktoken_model`]; `cfg` is the output's
/// config: Llama 3.1 special-token names with llama3 RoPE scaling). Otherwise nothing is
/// written and that changes the math: a Meta reader then tokenizes with another tokenizer
/// (Meta's reference code loads the Llama 3 one it ships, llama-models
/// `models/llama3/tokenizer.py` `Tokenizer.get_instance`).
fn meta_tokenizer(ckpt: &Checkpoint, cfg: &ModelConfig) -> (Option<Vec<u8>>, Note) {
    if !has_tokenizer(ckpt) {
        return (
            None,
            Note::lossless("the source has no tokenizer: none written"),
        );
    }
    let llama31 = matches!(cfg.rope_scaling, Some(RopeScaling::Llama3 { .. }));
    let why = match crate::export::source_vocab(ckpt) {
        // SentencePiece (Llama 1/2): Meta's own tokenizer.model is a SentencePiece model
        // (llama `tokenizer.py`: `SentencePieceProcessor(model_file=...)`)
        Ok(Some(v)) if v.model == "llama" => match v.to_sentencepiece() {
            Ok(bytes) => {
                let note = Note::lossless(
                    "the tokenizer is written as a SentencePiece tokenizer.model, as Llama 2's (it reads back as the same tokenizer)",
                );
                return (Some(bytes), note);
            }
            Err(e) => e.to_string(),
        },
        Ok(Some(v)) => match crate::meta_tokenizer::tiktoken_model(&v, llama31) {
            Ok(bytes) => {
                let note = Note::lossless(
                    "the tokenizer is written as Meta's tiktoken tokenizer.model (it reads back as the same tokenizer)",
                );
                return (Some(bytes), note);
            }
            Err(why) => why,
        },
        Ok(None) => "none found".into(),
        Err(e) => e.to_string(),
    };
    let what = format!(
        "the source's tokenizer is not written: Meta's tokenizer.model cannot hold it exactly ({why}), and a Meta reader then tokenizes with another one (Meta's reference code loads the Llama 3 tokenizer it ships)"
    );
    let note = Note::changes_math(
        what,
        "copy the original release's tokenizer.model into the output, or convert to HF or GGUF, which keep the tokenizer",
    );
    (None, note)
}

/// The output's tensors in Meta's names and order, with their dtypes and split dimensions
/// (a tied embedding gets an `output.weight` copy); fails on dtypes Meta export does not write
/// and on tensors that do not split into `opts.mp` equal parts.
fn plan_tensors<'a>(
    ckpt: &'a Checkpoint,
    dest: &Path,
    opts: MetaOptions,
    notes: &mut Vec<Note>,
) -> Result<Vec<Planned<'a>>> {
    if let Some(d) = opts.dtype {
        if !matches!(d, DType::F32 | DType::F16 | DType::BF16) {
            return Err(Error::UnsupportedDType {
                path: dest.into(),
                tensor: "(every tensor)".into(),
                dtype: d,
                reason: "Meta export writes F32, F16 or BF16",
            });
        }
    }
    let out_dtype = |t: &TensorEntry| match opts.dtype {
        Some(d) => d,
        None if matches!(t.dtype, DType::F32 | DType::F16 | DType::BF16) => t.dtype,
        None => DType::F32,
    };
    let mp = opts.mp;
    let mut planned: Vec<Planned<'_>> = Vec::with_capacity(ckpt.tensors.len() + 1);
    let mut decoded = 0usize;
    for t in &ckpt.tensors {
        if t.key.part != Part::Weight {
            return Err(Error::UnsupportedDType {
                path: ckpt.path.clone(),
                tensor: t.name.clone(),
                dtype: t.dtype,
                reason: "quantized HF checkpoints must be dequantized before conversion",
            });
        }
        let Some(name) = NameScheme::Meta.name(t.key) else {
            continue; // rope_freqs: see meta_params_and_notes
        };
        let dtype = out_dtype(t);
        if opts.dtype.is_none() && dtype != t.dtype {
            decoded += 1;
        }
        planned.push(Planned {
            id: t.key.id,
            name,
            source: t,
            dtype,
            shape: t.shape.clone(),
            split: split_dim(t.key.id),
        });
    }
    if ckpt
        .tensor_by_key(TensorKey::weight(TensorId::Output))
        .is_none()
    {
        // Tied embeddings (Llama 3.2 1B/3B, GGUF files without output.weight): Meta's files
        // carry output.weight anyway.
        if let Some(emb) = ckpt.tensor_by_key(TensorKey::weight(TensorId::TokenEmbedding)) {
            notes.push(Note::lossless(
                "tied embeddings: output.weight written as a copy of tok_embeddings.weight",
            ));
            planned.push(Planned {
                id: TensorId::Output,
                name: NameScheme::Meta
                    .name(TensorKey::weight(TensorId::Output))
                    .unwrap_or_else(|| "output.weight".into()),
                source: emb,
                dtype: out_dtype(emb),
                shape: emb.shape.clone(),
                split: split_dim(TensorId::Output),
            });
        }
    }
    planned.sort_by_key(|p| meta_order(p.id));
    if decoded > 0 {
        notes.push(Note::lossless(format!(
            "{decoded} quantized tensor(s) decoded to F32 (exact); pass a dtype to choose another"
        )));
    }
    for p in &planned {
        if let Some(dim) = p.split {
            if p.shape.get(dim).is_none_or(|&n| n % mp as u64 != 0) {
                return Err(mp_error(
                    &ckpt.path,
                    mp,
                    &format!("{} has shape {:?}, split on dim {dim}", p.name, p.shape),
                ));
            }
        }
    }

    Ok(planned)
}

/// Convert any checkpoint to a Meta directory at `dest` with `mp` model-parallel shards,
/// keeping float dtypes (see [`convert_to_meta_with`]).
pub fn convert_to_meta(
    ckpt: &Checkpoint,
    dest: &Path,
    mp: usize,
    output: OutputOptions,
) -> Result<Written> {
    convert_to_meta_with(
        ckpt,
        dest,
        MetaOptions {
            mp,
            dtype: None,
            output,
        },
    )
}

/// Convert any checkpoint to a Meta directory at `dest`: `consolidated.00.pth …
/// consolidated.{mp-1}.pth`, `params.json` (the source's own file when it is Meta), and
/// `tokenizer.model` when the source has one. Fails before writing anything when the model does
/// not split into `opts.mp` ranks (heads, vocabulary and FFN width must divide; more ranks than
/// key/value heads is not supported), for quantized HF layouts, and for RoPE scaling
/// `params.json` cannot express.
pub fn convert_to_meta_with(ckpt: &Checkpoint, dest: &Path, opts: MetaOptions) -> Result<Written> {
    let cfg = &ckpt.config;
    let mp = opts.mp;
    let refuse = |reason: &str| Error::Config {
        path: ckpt.path.clone(),
        kind: ConfigError::Unsupported {
            family: cfg.family.name(),
            reason: reason.into(),
        },
    };
    if !cfg.family.spec().meta {
        return Err(refuse(
            "no Meta consolidated.*.pth form (Meta checkpoints are Llama's)",
        ));
    }
    if cfg.head_dim * cfg.num_heads != cfg.hidden_size {
        return Err(refuse(
            "params.json has no head_dim other than dim / n_heads",
        ));
    }
    check_mp(&ckpt.path, cfg, mp)?;
    let (params, tokenizer, mut notes) = meta_params_and_notes(ckpt)?;
    let rope = rope_direction(&ckpt.config, ckpt.format, Format::Meta);

    let planned = plan_tensors(ckpt, dest, opts, &mut notes)?;
    let narrowed = planned.iter().map(|p| (p.source, p.dtype));
    notes.extend(crate::narrow::narrowing_note(ckpt, narrowed)?);
    qforge_stage::notes::gate(&notes, opts.output.allow_lossy)?;

    // Plan every shard before touching the destination.
    let names: Vec<String> = (0..mp)
        .map(|r| format!("consolidated.{r:02}.pth"))
        .collect();
    let mut plans = Vec::with_capacity(mp);
    for name in &names {
        let specs = planned
            .iter()
            .map(|p| {
                let mut shape = p.shape.clone();
                if let Some(dim) = p.split {
                    shape[dim] /= mp as u64;
                }
                TensorSpec {
                    name: p.name.clone(),
                    dtype: p.dtype,
                    shape,
                }
            })
            .collect();
        plans.push(plan(&archive_name(name), specs)?);
    }

    let mut out = OutputDir::begin(dest, opts.output)?;
    let resumed = out.resumed.clone();
    let mut writers: Vec<(usize, PthWriter<StagedFile>)> = Vec::new();
    for (r, (name, pplan)) in names.iter().zip(plans).enumerate() {
        if out.finished(name).is_some() {
            continue;
        }
        let file = out.create(name)?;
        let path = file.path().to_owned();
        let w = PthWriter::new(file, pplan).map_err(|e| Error::io(&path, e))?;
        writers.push((r, w));
    }

    if !writers.is_empty() {
        let mut buf = Vec::new();
        for p in &planned {
            crate::export::reset_buffer(&mut buf);
            // Bytes that pass through unchanged are sliced straight from the mapped source;
            // anything converted or permuted is produced once into `buf`.
            let permuted = rope.is_some() && rope_heads(cfg, p.source.key).is_some();
            let direct;
            let data: &[u8] = if p.dtype == p.source.dtype && !permuted {
                direct = ckpt.bytes(p.source)?;
                &direct
            } else {
                tensor_bytes(ckpt, p.source, p.dtype, rope, &mut buf)?;
                &buf
            };
            for (r, w) in &mut writers {
                write_slice(w, p, data, *r, mp)?;
            }
            ckpt.release(p.source);
        }
    }
    for (_, w) in writers {
        let file = w.finish().map_err(|e| Error::io(dest, e))?;
        out.finish(file)?;
    }

    if out.finished("params.json").is_none() {
        out.write_file("params.json", &params)?;
    }
    if ckpt.format == Format::Meta {
        let tok = ckpt.path.join("tokenizer.model");
        if tok.is_file() && out.finished("tokenizer.model").is_none() {
            let bytes = std::fs::read(&tok).map_err(|e| Error::io(&tok, e))?;
            out.write_file("tokenizer.model", &bytes)?;
        }
    } else if let Some(bytes) = tokenizer {
        if out.finished("tokenizer.model").is_none() {
            out.write_file("tokenizer.model", &bytes)?;
        }
    }
    let mut extra = qforge_stage::notes::record(&notes);
    extra.insert("source_format".into(), json!(ckpt.format));
    extra.insert("model_parallel".into(), json!(mp));
    let files = out.commit(extra)?;
    Ok(Written {
        files,
        resumed,
        notes,
    })
}

/// Stream rank `r`'s slice of the full (row-major) tensor bytes `buf` into `w`.
fn write_slice(
    w: &mut PthWriter<StagedFile>,
    p: &Planned<'_>,
    buf: &[u8],
    r: usize,
    mp: usize,
) -> Result<()> {
    let io = |e| Error::io(&p.name, e);
    w.begin_tensor(&p.name).map_err(io)?;
    match p.split {
        None => w.write_data(buf).map_err(io)?,
        Some(dim) => {
            // Split dim `dim` into `mp` equal blocks: for each index of the outer dimensions
            // the rank's block is a contiguous run of bytes.
            let outer = p.shape[..dim].iter().product::<u64>() as usize;
            if let Some(chunk) = buf.len().checked_div(outer) {
                let part = chunk / mp;
                for o in 0..outer {
                    let start = o * chunk + r * part;
                    w.write_data(&buf[start..start + part]).map_err(io)?;
                }
            }
        }
    }
    w.end_tensor().map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use qforge_stage::notes::NoteKind;

    #[test]
    fn floats_print_like_python_repr() {
        for (v, want) in [
            (1e-5, "1e-05"),
            (1e-6, "1e-06"),
            (1.5e-5, "1.5e-05"),
            (500_000.0, "500000.0"),
            (10_000.0, "10000.0"),
            (1.3, "1.3"),
            (1.0, "1.0"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (123_456_789_012_345_680.0, "1.2345678901234568e+17"),
            (0.1, "0.1"),
            (-2.5, "-2.5"),
            (0.0, "0.0"),
        ] {
            assert_eq!(py_float(v), want, "{v}");
        }
    }

    fn cfg(dim: u64, ffn: u64) -> ModelConfig {
        let heads = dim / 64;
        ModelConfig::from_hf_json(
            &json!({"model_type": "llama", "hidden_size": dim, "intermediate_size": ffn,
                "num_attention_heads": heads, "num_hidden_layers": 1, "num_key_value_heads": heads,
                "vocab_size": 256})
            .to_string(),
        )
        .unwrap()
    }

    #[test]
    fn ffn_params_recover_meta_releases_and_any_width() {
        assert_eq!(meta_ffn_params(&cfg(4096, 14336)), Some((Some(1.3), 1024)));
        assert_eq!(meta_ffn_params(&cfg(8192, 28672)), Some((Some(1.3), 4096)));
        assert_eq!(meta_ffn_params(&cfg(16384, 53248)), Some((Some(1.2), 4096)));
        assert_eq!(meta_ffn_params(&cfg(2048, 8192)), Some((Some(1.5), 256)));
        assert_eq!(meta_ffn_params(&cfg(4096, 11008)), Some((None, 256)));
        // SmolLM2-135M: 8·576/3 is exactly its width.
        assert_eq!(meta_ffn_params(&cfg(576, 1536)), Some((None, 512)));
        for (dim, ffn) in [(64, 100), (128, 200), (128, 64), (4096, 14000), (192, 4096)] {
            let (mult, m) = meta_ffn_params(&cfg(dim, ffn)).unwrap();
            assert_eq!(meta_ffn_dim(dim, mult, m), ffn, "{dim} {ffn}");
        }
        // A Meta source's own values win.
        let mut c = cfg(4096, 14336);
        c.ffn_dim_multiplier = Some(1.3);
        c.multiple_of = Some(256);
        assert_eq!(meta_ffn_params(&c), Some((Some(1.3), 256)));
    }

    #[test]
    fn params_json_for_llama31_8b_is_metas() {
        let text = r#"{"model_type":"llama","hidden_size":4096,"intermediate_size":14336,
            "num_attention_heads":32,"num_hidden_layers":32,"num_key_value_heads":8,
            "rms_norm_eps":1e-05,"rope_theta":500000.0,"vocab_size":128256,
            "max_position_embeddings":131072,"rope_scaling":{"factor":8.0,"low_freq_factor":1.0,
            "high_freq_factor":4.0,"original_max_position_embeddings":8192,"rope_type":"llama3"}}"#;
        let (params, notes) = meta_params_json(&ModelConfig::from_hf_json(text).unwrap()).unwrap();
        assert_eq!(
            params,
            r#"{"dim": 4096, "ffn_dim_multiplier": 1.3, "multiple_of": 1024, "n_heads": 32, "n_kv_heads": 8, "n_layers": 32, "norm_eps": 1e-05, "rope_theta": 500000.0, "use_scaled_rope": true, "vocab_size": 128256}"#
        );
        assert!(notes.is_empty(), "{notes:?}");
        let linear = text.replace(r#""rope_type":"llama3""#, r#""rope_type":"linear""#);
        let (_, notes) = meta_params_json(&ModelConfig::from_hf_json(&linear).unwrap()).unwrap();
        assert!(
            notes
                .iter()
                .any(|n| n.kind == NoteKind::ChangesMath && n.what.contains("linear")),
            "{notes:?}"
        );
    }

    #[test]
    fn params_json_says_llama32_scaling_and_reads_it_back() {
        // Llama 3.2 1B's config.json (factor 32).
        let text = r#"{"model_type":"llama","hidden_size":2048,"intermediate_size":8192,
            "num_attention_heads":32,"num_hidden_layers":16,"num_key_value_heads":8,
            "rms_norm_eps":1e-05,"rope_theta":500000.0,"vocab_size":128256,
            "max_position_embeddings":131072,"rope_scaling":{"factor":32.0,"low_freq_factor":1.0,
            "high_freq_factor":4.0,"original_max_position_embeddings":8192,"rope_type":"llama3"}}"#;
        let cfg = ModelConfig::from_hf_json(text).unwrap();
        let (params, notes) = meta_params_json(&cfg).unwrap();
        assert_eq!(
            params,
            r#"{"dim": 2048, "ffn_dim_multiplier": 1.5, "multiple_of": 256, "n_heads": 32, "n_kv_heads": 8, "n_layers": 16, "norm_eps": 1e-05, "rope_high_freq_factor": 4.0, "rope_scaling_factor": 32.0, "rope_theta": 500000.0, "use_scaled_rope": true, "vocab_size": 128256}"#
        );
        assert!(
            notes.iter().all(|n| n.kind == NoteKind::Lossless),
            "{notes:?}"
        );
        let back = ModelConfig::from_meta_params(&params, None).unwrap();
        assert_eq!(back.rope_scaling, cfg.rope_scaling);

        // Another original context: no factor/high-frequency factor gives its frequencies
        // with Meta's fixed 8192 and low factor 1 (head_dim 64: some frequencies fall between).
        let other = text.replace(
            r#""original_max_position_embeddings":8192"#,
            r#""original_max_position_embeddings":2048"#,
        );
        let (_, notes) = meta_params_json(&ModelConfig::from_hf_json(&other).unwrap()).unwrap();
        assert!(
            notes
                .iter()
                .any(|n| n.kind == NoteKind::ChangesMath && n.what.contains("RoPE")),
            "{notes:?}"
        );
    }

    #[test]
    fn model_parallel_degree_must_divide_everything_split() {
        let p = Path::new("m");
        let c = cfg(256, 96); // 4 heads, 4 kv heads, vocab 256
        assert!(check_mp(p, &c, 4).is_ok());
        assert!(check_mp(p, &c, 3)
            .unwrap_err()
            .to_string()
            .contains("n_heads 4"));
        assert!(check_mp(p, &c, 8)
            .unwrap_err()
            .to_string()
            .contains("n_heads 4"));
        let c = cfg(256, 98);
        assert!(check_mp(p, &c, 4)
            .unwrap_err()
            .to_string()
            .contains("FFN width 98"));
        let mut c = cfg(256, 96);
        c.vocab_size = 250;
        assert!(check_mp(p, &c, 4)
            .unwrap_err()
            .to_string()
            .contains("vocab_size 250"));
        c.num_kv_heads = 2;
        assert!(check_mp(p, &c, 4)
            .unwrap_err()
            .to_string()
            .contains("duplicates"));
    }

    #[test]
    fn split_dims_follow_fairscale() {
        let layer = |kind| TensorId::Layer { index: 0, kind };
        assert_eq!(split_dim(layer(LayerTensor::Q)), Some(0));
        assert_eq!(split_dim(layer(LayerTensor::Up)), Some(0));
        assert_eq!(split_dim(layer(LayerTensor::O)), Some(1));
        assert_eq!(split_dim(layer(LayerTensor::Down)), Some(1));
        assert_eq!(split_dim(layer(LayerTensor::FfnNorm)), None);
        assert_eq!(split_dim(TensorId::TokenEmbedding), Some(0));
        assert_eq!(split_dim(TensorId::Output), Some(0));
        assert_eq!(split_dim(TensorId::OutputNorm), None);
    }
}
