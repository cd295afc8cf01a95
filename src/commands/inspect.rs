//! `qforge inspect`: what a checkpoint holds, read from headers only (tensor data is touched
//! only for `--stats` and `--dump`).

use qforge_quantize::dequant::WeightRead;
use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use qforge_convert::gguf::{GgufArray, GgufMetadata, GgufValue};
use qforge_convert::{Checkpoint, Format, Part, TensorEntry, TensorId, TensorLayout};
use qforge_quantize::dequant::WeightStorage;
use serde_json::{json, Value};

use crate::cli::InspectArgs;

pub fn run(args: &InspectArgs) -> Result<()> {
    let ckpt = Checkpoint::open(crate::modelref::resolve(&args.model.to_string_lossy())?)?;
    crate::commands::log_read("model", &ckpt);
    let selected: Vec<&TensorEntry> = if args.tensors.is_empty() {
        ckpt.tensors.iter().collect()
    } else {
        args.tensors
            .iter()
            .map(|n| {
                ckpt.tensor(n)
                    .ok_or_else(|| qforge_convert::Error::NoSuchTensor(n.clone()))
            })
            .collect::<Result<_, _>>()?
    };
    if let Some(dir) = &args.dump {
        dump(&ckpt, &selected, dir)?;
    }
    let stats = if args.stats {
        selected
            .iter()
            .map(|t| Ok((t.name.clone(), Stats::of(&ckpt.to_f32(t)?))))
            .collect::<Result<BTreeMap<_, _>>>()?
    } else {
        BTreeMap::new()
    };
    let quant = quantization(&ckpt)?;
    let mut out = BufWriter::new(std::io::stdout().lock());
    if args.json {
        let mut v = to_json(&ckpt, &selected);
        v["quantization"] = quant.clone();
        if args.stats {
            v["stats"] = json!(stats
                .iter()
                .map(|(k, s)| (k.clone(), s.to_json()))
                .collect::<serde_json::Map<_, _>>());
        }
        serde_json::to_writer_pretty(&mut out, &v)?;
        writeln!(out)?;
    } else {
        let whole = args.tensors.is_empty();
        print_human(&mut out, &ckpt, &selected, &stats, whole)?;
        if whole {
            print_quantization(&mut out, &quant)?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Min/max/mean/absmax and non-finite counts of a dequantized tensor.
struct Stats {
    min: f32,
    max: f32,
    mean: f64,
    absmax: f32,
    nan: u64,
    inf: u64,
    n: u64,
}

impl Stats {
    fn of(v: &[f32]) -> Self {
        let mut s = Stats {
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            mean: 0.0,
            absmax: 0.0,
            nan: 0,
            inf: 0,
            n: v.len() as u64,
        };
        let mut sum = 0f64;
        let mut finite = 0u64;
        for &x in v {
            if x.is_nan() {
                s.nan += 1;
            } else if x.is_infinite() {
                s.inf += 1;
            } else {
                s.min = s.min.min(x);
                s.max = s.max.max(x);
                s.absmax = s.absmax.max(x.abs());
                sum += f64::from(x);
                finite += 1;
            }
        }
        s.mean = if finite > 0 {
            sum / finite as f64
        } else {
            f64::NAN
        };
        s
    }

    fn to_json(&self) -> Value {
        json!({"elements": self.n, "min": self.min, "max": self.max, "mean": self.mean, "absmax": self.absmax, "nan": self.nan, "inf": self.inf})
    }
}

fn dump(ckpt: &Checkpoint, tensors: &[&TensorEntry], dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for t in tensors {
        if t.name.contains(['/', '\\']) || t.name.starts_with('.') {
            bail!("tensor name {:?} cannot be used as a file name", t.name);
        }
        let values = ckpt.to_f32(t)?;
        let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
        let path = dir.join(format!("{}.f32", t.name));
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        // A quantized module also gets its weight dequantized as its layout defines it.
        if matches!(t.key.part, Part::Weight | Part::WeightPacked)
            && !matches!(ckpt.weight_storage(t.key.id)?, WeightStorage::Plain(_))
        {
            let values = ckpt.weight_f32(t.key.id)?;
            let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
            let stem = t.name.strip_suffix("_packed").unwrap_or(&t.name);
            let path = dir.join(format!("{stem}.dequant.f32"));
            std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(())
}

/// How each linear is stored, with scale statistics, and the `quantization_config` of an HF
/// checkpoint.
fn quantization(ckpt: &Checkpoint) -> Result<Value> {
    let mut ids: Vec<TensorId> = ckpt.tensors.iter().map(|t| t.key.id).collect();
    ids.sort();
    ids.dedup();
    let mut schemes: BTreeMap<String, u64> = BTreeMap::new();
    let mut modules = Vec::new();
    let (mut smin, mut smax, mut ssum, mut sn) = (f32::INFINITY, 0f32, 0f64, 0u64);
    for id in ids {
        if id == TensorId::RopeFreqs || ckpt.config.expected_shape(id).len() != 2 {
            continue;
        }
        let storage = ckpt.weight_storage(id)?;
        let scheme = storage.name();
        *schemes.entry(scheme.clone()).or_default() += 1;
        let mut m = json!({"role": id.to_string(), "scheme": scheme});
        if let Some(st) = ckpt.part(id, Part::WeightScale) {
            let s = ckpt.to_f32(st)?;
            let (lo, hi) = s
                .iter()
                .fold((f32::INFINITY, 0f32), |(a, b), &x| (a.min(x), b.max(x)));
            smin = smin.min(lo);
            smax = smax.max(hi);
            ssum += s.iter().map(|&x| f64::from(x)).sum::<f64>();
            sn += s.len() as u64;
            m["scale"] = json!({"dtype": st.dtype.name(), "count": s.len(), "min": lo, "max": hi});
        }
        if let Some(st) = ckpt.part(id, Part::InputScale) {
            m["input_scale"] = json!(ckpt.to_f32(st)?);
        }
        modules.push(m);
    }
    let config = if ckpt.format == Format::Hf {
        std::fs::read(ckpt.dir().join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v.get("quantization_config").cloned())
    } else {
        None
    };
    Ok(json!({
        "config": config,
        "schemes": schemes,
        "scales": if sn > 0 { json!({"count": sn, "min": smin, "max": smax, "mean": ssum / sn as f64}) } else { Value::Null },
        "modules": modules,
    }))
}

fn print_quantization(out: &mut impl Write, q: &Value) -> Result<()> {
    let schemes = q["schemes"].as_object().map(|m| {
        m.iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    });
    writeln!(out, "2-D        {}", schemes.unwrap_or_default())?;
    if let Some(c) = q["config"].as_object() {
        writeln!(
            out,
            "quantized  {} {}{}",
            c.get("quant_method").and_then(Value::as_str).unwrap_or("?"),
            c.get("format").and_then(Value::as_str).unwrap_or(""),
            c.get("activation_scale_ub")
                .map_or(String::new(), |ub| format!(" activation_scale_ub {ub}"))
        )?;
    }
    if let Some(s) = q["scales"].as_object() {
        writeln!(
            out,
            "scales     {} values, min {:.6e}, max {:.6e}, mean {:.6e}",
            s["count"],
            s["min"].as_f64().unwrap_or(f64::NAN),
            s["max"].as_f64().unwrap_or(f64::NAN),
            s["mean"].as_f64().unwrap_or(f64::NAN)
        )?;
    }
    Ok(())
}

/// First byte offset of a tensor and the file it is in (the first shard for merged tensors).
fn location(ckpt: &Checkpoint, layout: &TensorLayout) -> (String, u64) {
    match layout {
        TensorLayout::Contiguous(s) | TensorLayout::Strided { storage: s, .. } => (
            ckpt.file_path(s.file)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            s.offset,
        ),
        TensorLayout::Concat { parts, .. } => parts
            .first()
            .map_or((String::new(), 0), |(_, l)| location(ckpt, l)),
    }
}

fn layout_kind(layout: &TensorLayout) -> String {
    match layout {
        TensorLayout::Contiguous(_) => "contiguous".into(),
        TensorLayout::Strided { .. } => "strided".into(),
        TensorLayout::Concat { dim, parts } => {
            format!("merged {} shards on dim {dim}", parts.len())
        }
    }
}

fn gguf_value_json(v: &GgufValue) -> Value {
    match v {
        GgufValue::U8(x) => json!(x),
        GgufValue::I8(x) => json!(x),
        GgufValue::U16(x) => json!(x),
        GgufValue::I16(x) => json!(x),
        GgufValue::U32(x) => json!(x),
        GgufValue::I32(x) => json!(x),
        GgufValue::U64(x) => json!(x),
        GgufValue::I64(x) => json!(x),
        GgufValue::F32(x) => json!(f64::from(*x)),
        GgufValue::F64(x) => json!(x),
        GgufValue::Bool(x) => json!(x),
        GgufValue::String(s) => json!(s),
        GgufValue::Array(a) => gguf_array_json(a),
    }
}

/// The elements of a GGUF array as a JSON array of their values (`f32` widened exactly to
/// `f64`, as for scalars).
fn gguf_array_json(a: &GgufArray) -> Value {
    fn each<T>(items: &[T], f: impl Fn(&T) -> Value) -> Value {
        Value::Array(items.iter().map(f).collect())
    }
    match a {
        GgufArray::U8(v) => each(v, |x| json!(x)),
        GgufArray::I8(v) => each(v, |x| json!(x)),
        GgufArray::U16(v) => each(v, |x| json!(x)),
        GgufArray::I16(v) => each(v, |x| json!(x)),
        GgufArray::U32(v) => each(v, |x| json!(x)),
        GgufArray::I32(v) => each(v, |x| json!(x)),
        GgufArray::U64(v) => each(v, |x| json!(x)),
        GgufArray::I64(v) => each(v, |x| json!(x)),
        GgufArray::F32(v) => each(v, |x| json!(f64::from(*x))),
        GgufArray::F64(v) => each(v, |x| json!(x)),
        GgufArray::Bool(v) => each(v, |x| json!(x)),
        GgufArray::String(v) => Value::Array(v.iter().map(|s| json!(s)).collect()),
    }
}

fn gguf_json(m: &GgufMetadata) -> Value {
    let kv: Vec<Value> = m
        .entries
        .iter()
        .map(|(k, v)| {
            let mut e = json!({"key": k, "type": v.ty(), "value": gguf_value_json(v)});
            if let GgufValue::Array(a) = v {
                e["elem_type"] = json!(a.elem_type());
            }
            e
        })
        .collect();
    json!({"version": m.version, "alignment": m.alignment, "data_offset": m.data_offset, "kv": kv})
}

fn histogram(tensors: &[&TensorEntry]) -> BTreeMap<String, (u64, u64, u64)> {
    let mut h: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    for t in tensors {
        let e = h.entry(t.dtype.name().to_owned()).or_default();
        e.0 += 1;
        e.1 += t.numel();
        e.2 += t.nbytes();
    }
    h
}

fn to_json(ckpt: &Checkpoint, tensors: &[&TensorEntry]) -> Value {
    let tensor_rows: Vec<Value> = tensors
        .iter()
        .map(|t| {
            let (file, offset) = location(ckpt, &t.layout);
            json!({
                "name": t.name, "role": t.key.id.to_string(), "part": t.key.part.suffix(),
                "dtype": t.dtype.name(), "shape": t.shape, "elements": t.numel(), "bytes": t.nbytes(),
                "file": file, "offset": offset, "layout": layout_kind(&t.layout),
            })
        })
        .collect();
    let dtypes: serde_json::Map<String, Value> = histogram(tensors)
        .into_iter()
        .map(|(k, (n, el, b))| (k, json!({"tensors": n, "elements": el, "bytes": b})))
        .collect();
    let mut v = json!({
        "format": ckpt.format,
        "path": ckpt.path,
        "files": ckpt.files().collect::<Vec<_>>(),
        "config": ckpt.config,
        "tokenizer": ckpt.tokenizer,
        "tensors": tensor_rows,
        "totals": {
            "tensors": tensors.len(),
            "elements": tensors.iter().map(|t| t.numel()).sum::<u64>(),
            "bytes": tensors.iter().map(|t| t.nbytes()).sum::<u64>(),
        },
        "dtypes": dtypes,
        "notes": ckpt.notes,
    });
    if let Some(m) = &ckpt.gguf {
        v["metadata"] = gguf_json(m);
    }
    v
}

/// "1 file", "3 files".
fn count(n: u64, what: &str) -> String {
    format!("{} {what}{}", thousands(n), if n == 1 { "" } else { "s" })
}

/// 134515008 as "134,515,008".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn format_name(f: Format) -> &'static str {
    match f {
        Format::Hf => "Hugging Face safetensors",
        Format::Meta => "Meta .pth",
        Format::Gguf => "GGUF",
    }
}

fn rope_scaling_text(r: Option<&qforge_convert::config::RopeScaling>) -> String {
    use qforge_convert::config::RopeScaling;
    match r {
        None => "none".into(),
        Some(RopeScaling::Linear { factor }) => format!("linear × {factor}"),
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => format!(
            "llama3 × {factor} (low {low_freq_factor}, high {high_freq_factor}, original ctx \
             {original_max_position_embeddings})"
        ),
        Some(RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            beta_fast,
            beta_slow,
        }) => format!(
            "yarn × {factor} (original ctx {original_max_position_embeddings}, beta_fast {}, \
             beta_slow {})",
            beta_fast.unwrap_or(32.0),
            beta_slow.unwrap_or(1.0)
        ),
    }
}

/// The model's parameters: the logical elements of each weight (a packed INT4 weight counts
/// its `weight_shape`, not its 32-bit words), not scales, zero points or shapes.
fn parameters(ckpt: &Checkpoint, tensors: &[&TensorEntry]) -> u64 {
    tensors
        .iter()
        .map(|t| match t.key.part {
            Part::Weight => t.numel(),
            Part::WeightPacked => ckpt.config.expected_shape(t.key.id).iter().product::<u64>(),
            _ => 0,
        })
        .sum()
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = b as f64;
    let mut u = 0;
    while x >= 1024.0 && u + 1 < UNITS.len() {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{x:.2} {}", UNITS[u])
    }
}

fn print_human(
    out: &mut impl Write,
    ckpt: &Checkpoint,
    tensors: &[&TensorEntry],
    stats: &BTreeMap<String, Stats>,
    whole: bool,
) -> Result<()> {
    print_header(out, ckpt)?;
    writeln!(out)?;
    print_tensor_table(out, ckpt, tensors, stats)?;
    if whole {
        // the footer sums the whole model; a --tensor selection has its rows above
        print_footer(out, ckpt, tensors)?;
    }
    Ok(())
}

/// The checkpoint's path, config, tokenizer, container and notes.
fn print_header(out: &mut impl Write, ckpt: &Checkpoint) -> Result<()> {
    let c = &ckpt.config;
    let files = ckpt.files().count();
    writeln!(
        out,
        "{}  ({}, {})",
        ckpt.path.display(),
        format_name(ckpt.format),
        count(files as u64, "file")
    )?;
    writeln!(
        out,
        "config     {}: hidden {}, layers {}, heads {} (kv {}), head_dim {}, ffn {}, vocab {}, ctx {}",
        c.family.spec().model_type, c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim, c.intermediate_size, c.vocab_size, c.max_position_embeddings
    )?;
    writeln!(
        out,
        "           rope theta {}, scaling {}, rms eps {:e}, tied embeddings {}, bos {}, eos {}",
        c.rope_theta,
        rope_scaling_text(c.rope_scaling.as_ref()),
        c.rms_norm_eps,
        if c.tie_word_embeddings { "yes" } else { "no" },
        c.bos_token_id.map_or("none".to_owned(), |b| b.to_string()),
        if c.eos_token_ids.is_empty() {
            "none".to_owned()
        } else {
            c.eos_token_ids
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        }
    )?;
    if let Some(w) = c.sliding_window {
        writeln!(
            out,
            "           sliding window {} tokens from layer {}",
            w.size, w.first_layer
        )?;
    }
    if let Some(m) = &c.moe {
        writeln!(
            out,
            "           experts {} of width {}, top {}{}{}",
            m.num_experts,
            m.expert_ffn,
            m.experts_per_tok,
            if m.norm_topk_prob {
                " renormalised"
            } else {
                ""
            },
            if m.dense_layers.is_empty() {
                String::new()
            } else {
                format!(", dense blocks {:?}", m.dense_layers)
            }
        )?;
    }
    if let Some(a) = &c.llama4 {
        // Llama 4: sigmoid top-k routing scaling the expert input, a shared expert per MoE block
        writeln!(
            out,
            "           sigmoid routing (input-scaled) + shared expert; NoPE blocks {:?}; chunked blocks {:?} (chunk {}); q/k L2 norm {}; temperature tuning {} (floor {}, scale {})",
            a.nope_layers,
            a.chunked_layers,
            a.chunk_size,
            if a.qk_l2_norm { "yes" } else { "no" },
            if a.temperature_tuning { "yes" } else { "no" },
            a.floor_scale,
            a.attn_scale
        )?;
    }
    let t = &ckpt.tokenizer;
    writeln!(
        out,
        "tokenizer  {}{}{}{}",
        t.kind,
        t.vocab_size
            .map_or(String::new(), |v| format!(", {v} tokens")),
        t.pre
            .as_ref()
            .map_or(String::new(), |p| format!(", pre {p}")),
        if t.chat_template {
            ", chat template"
        } else {
            ""
        }
    )?;
    if let Some(m) = &ckpt.gguf {
        writeln!(
            out,
            "gguf       v{}, {} metadata keys, alignment {}, data at {}",
            m.version,
            m.entries.len(),
            m.alignment,
            m.data_offset
        )?;
    }
    for n in &ckpt.notes {
        writeln!(out, "note       {n}")?;
    }
    Ok(())
}

/// One row per tensor (with its statistics when computed).
fn print_tensor_table(
    out: &mut impl Write,
    ckpt: &Checkpoint,
    tensors: &[&TensorEntry],
    stats: &BTreeMap<String, Stats>,
) -> Result<()> {
    let name_w = tensors
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let role = |t: &TensorEntry| {
        format!(
            "{}{}",
            t.key.id,
            if t.key.part == qforge_convert::Part::Weight {
                String::new()
            } else {
                format!(".{}", t.key.part.suffix())
            }
        )
    };
    let shape = |t: &TensorEntry| {
        let dims: Vec<String> = t.shape.iter().map(ToString::to_string).collect();
        format!("[{}]", dims.join(", "))
    };
    let role_w = tensors
        .iter()
        .map(|t| role(t).len())
        .max()
        .unwrap_or(4)
        .max(4);
    let shape_w = tensors
        .iter()
        .map(|t| shape(t).len())
        .max()
        .unwrap_or(5)
        .max(5);
    writeln!(
        out,
        "{:<name_w$}  {:<role_w$}  {:<8}  {:<shape_w$}  {:>12}  {:>14}",
        "name", "role", "dtype", "shape", "bytes", "offset"
    )?;
    for t in tensors {
        let (_, offset) = location(ckpt, &t.layout);
        writeln!(
            out,
            "{:<name_w$}  {:<role_w$}  {:<8}  {:<shape_w$}  {:>12}  {:>14}",
            t.name,
            role(t),
            t.dtype.name(),
            shape(t),
            t.nbytes(),
            offset
        )?;
        if let Some(s) = stats.get(&t.name) {
            writeln!(
                out,
                "{:name_w$}  min {:.6e}  max {:.6e}  mean {:.6e}  absmax {:.6e}  nan {}  inf {}",
                "", s.min, s.max, s.mean, s.absmax, s.nan, s.inf
            )?;
        }
    }
    Ok(())
}

/// Totals: tensors, parameters, bytes, and a histogram by dtype.
fn print_footer(out: &mut impl Write, ckpt: &Checkpoint, tensors: &[&TensorEntry]) -> Result<()> {
    writeln!(out)?;
    let total_b: u64 = tensors.iter().map(|t| t.nbytes()).sum();
    writeln!(
        out,
        "{}, {} parameters, {}",
        count(tensors.len() as u64, "tensor"),
        thousands(parameters(ckpt, tensors)),
        human_bytes(total_b)
    )?;
    for (d, (n, el, b)) in histogram(tensors) {
        writeln!(
            out,
            "  {d:<8} {n:>5} tensors  {el:>14} elements  {:>12}",
            human_bytes(b)
        )?;
    }
    Ok(())
}
