//! Round trips are checked by what the model computes: the Llama 3.1-style (llama3 RoPE
//! scaling, factor 8, `original_max_position_embeddings` 64 instead of Llama 3's 8192) and
//! Llama 3.2-style (factor 32, original context 8192, tied embeddings) fixtures made by
//! transformers (`tests/fixtures/families/llama31`, `llama32`; scripts/gen_family_fixtures.py)
//! go through every format (HF, GGUF F32, Meta MP1 and MP2) and back, and `qforge perplexity`
//! on their evaluation text (`eval.txt`, ctx 64, 40 chunks) must stay within 1e-6 relative of
//! the source's, or the conversion must refuse without `--allow-lossy` (and with it succeed,
//! listing the change in the output).
//!
//! The fixtures' tokenizers are byte-level BPEs of 384 tokens, not Meta's Llama 3 vocabulary, so
//! every conversion into Meta's format refuses for the tokenizer alone unless allowed; the
//! chains through Meta put the source's tokenizer files back into their final HF directory
//! before measuring (what the weights and config compute is under test).
//!
//! The narrowing test writes its own F32 checkpoint (values BF16 cannot hold), with the
//! committed tiny byte-level tokenizer (`tests/fixtures/tiny/hf`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use qforge_codecs::DType;
use qforge_convert::write::safetensors::{plan, TensorSpec, Writer};
use serde_json::{json, Value};

const QFORGE: &str = env!("CARGO_BIN_EXE_qforge");
/// Largest relative perplexity change of a conversion that keeps the math.
const SAME: f64 = 1e-6;
/// Smallest relative change the refused RoPE conversion must make (it is refused for a reason).
const CHANGED: f64 = 1e-4;

/// One of the transformers-made fixtures.
struct Style {
    name: &'static str,
    /// Meta's params.json can say this RoPE scaling (factor, high-frequency factor with Meta's
    /// fixed low-frequency factor 1 and original context 8192).
    meta_expresses_rope: bool,
}

const STYLES: [Style; 2] = [
    Style {
        name: "llama31",
        meta_expresses_rope: false,
    },
    Style {
        name: "llama32",
        meta_expresses_rope: true,
    },
];

fn families() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/families")
}

/// A fixture's config.json.
fn config(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap()
}

/// The Llama 3.2-style scaling the narrowing test's own checkpoint uses.
fn llama32_rope() -> Value {
    json!({"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
}

const HIDDEN: u64 = 64;
const LAYERS: u64 = 2;
const HEADS: u64 = 4;
const KV: u64 = 2;
const FFN: u64 = 128;
const VOCAB: u64 = 128;

/// A Llama 3.2-style HF checkpoint (tied embeddings) in `dir`: config.json, model.safetensors
/// with the weights stored as `dtype` (BF16, or F32 holding values BF16 cannot: the full 24
/// random bits) and the tiny tokenizer. Weights are uniform in ±scale (norms 1 ± 0.1).
fn make_fixture_as(dir: &Path, dtype: DType) {
    let tied = true;
    std::fs::create_dir_all(dir).unwrap();
    let config = json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
        "intermediate_size": FFN, "num_attention_heads": HEADS, "num_hidden_layers": LAYERS,
        "num_key_value_heads": KV, "head_dim": HIDDEN / HEADS, "rms_norm_eps": 1e-5,
        "rope_theta": 500_000.0, "vocab_size": VOCAB, "max_position_embeddings": 131_072,
        "rope_scaling": llama32_rope(), "tie_word_embeddings": tied,
        "bos_token_id": 0, "eos_token_id": 1, "torch_dtype": "bfloat16",
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/hf");
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tiny.join(f), dir.join(f)).unwrap();
    }
    let hd = HIDDEN / HEADS;
    let mut specs: Vec<(String, Vec<u64>, f32)> =
        vec![("model.embed_tokens.weight".into(), vec![VOCAB, HIDDEN], 0.3)];
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        specs.extend([
            (format!("{p}.input_layernorm.weight"), vec![HIDDEN], 0.0),
            (
                format!("{p}.post_attention_layernorm.weight"),
                vec![HIDDEN],
                0.0,
            ),
            (
                format!("{p}.self_attn.q_proj.weight"),
                vec![HEADS * hd, HIDDEN],
                0.6,
            ),
            (
                format!("{p}.self_attn.k_proj.weight"),
                vec![KV * hd, HIDDEN],
                0.6,
            ),
            (
                format!("{p}.self_attn.v_proj.weight"),
                vec![KV * hd, HIDDEN],
                0.3,
            ),
            (
                format!("{p}.self_attn.o_proj.weight"),
                vec![HIDDEN, HEADS * hd],
                0.3,
            ),
            (format!("{p}.mlp.gate_proj.weight"), vec![FFN, HIDDEN], 0.3),
            (format!("{p}.mlp.up_proj.weight"), vec![FFN, HIDDEN], 0.3),
            (format!("{p}.mlp.down_proj.weight"), vec![HIDDEN, FFN], 0.2),
        ]);
    }
    specs.push(("model.norm.weight".into(), vec![HIDDEN], 0.0));
    if !tied {
        specs.push(("lm_head.weight".into(), vec![VOCAB, HIDDEN], 0.3));
    }
    let scale: BTreeMap<String, f32> = specs.iter().map(|(n, _, s)| (n.clone(), *s)).collect();
    let p = plan(
        specs
            .into_iter()
            .map(|(name, shape, _)| TensorSpec { name, dtype, shape })
            .collect(),
        &BTreeMap::new(),
    )
    .unwrap();
    let f = std::io::BufWriter::new(std::fs::File::create(dir.join("model.safetensors")).unwrap());
    let mut w = Writer::new(f, p.clone()).unwrap();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for (spec, start, end) in &p.tensors {
        let s = scale[&spec.name];
        let width = if dtype == DType::F32 { 4 } else { 2 };
        let bytes: Vec<u8> = (0..(end - start) / width)
            .flat_map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let u = (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0; // [-1, 1)
                let v = if s == 0.0 { 1.0 + 0.1 * u } else { s * u };
                let b = v.to_bits().to_le_bytes();
                if dtype == DType::F32 {
                    b.to_vec()
                } else {
                    b[2..].to_vec()
                }
            })
            .collect();
        w.write_tensor(&spec.name, &bytes).unwrap();
    }
    use std::io::Write;
    w.finish().unwrap().flush().unwrap();
}

fn perplexity(model: &Path, data: &Path) -> f64 {
    let out = Command::new(QFORGE)
        .args(["perplexity", model.to_str().unwrap(), "--data"])
        .arg(data)
        .args(["--ctx", "64", "--chunks", "40", "--json", "--quiet"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "perplexity {}: {}",
        model.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["ppl"].as_f64().unwrap()
}

/// One conversion: `--to` and extra arguments.
#[derive(Clone, Copy)]
struct Step {
    to: &'static str,
    args: &'static [&'static str],
}

const GGUF: Step = Step {
    to: "gguf",
    args: &["--dtype", "f32"],
};
const HF: Step = Step {
    to: "hf",
    args: &[],
};
const META1: Step = Step {
    to: "meta",
    args: &["--mp", "1"],
};
const META2: Step = Step {
    to: "meta",
    args: &["--mp", "2"],
};

/// Convert `input` into `output`; on refusal (exit status 1 naming --allow-lossy, nothing
/// written) retry with `--allow-lossy`. Returns the refusal's message, if there was one.
fn convert(input: &Path, output: &Path, step: Step) -> Option<String> {
    let run = |extra: &[&str]| {
        Command::new(QFORGE)
            .args(["convert", input.to_str().unwrap(), output.to_str().unwrap()])
            .args(["--to", step.to])
            .args(step.args)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&[]);
    if out.status.success() {
        return None;
    }
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.contains("--allow-lossy"),
        "{} -> {}: {err}",
        input.display(),
        step.to
    );
    assert!(
        !output.exists(),
        "a refused conversion wrote {}",
        output.display()
    );
    let out = run(&["--allow-lossy"]);
    assert!(
        out.status.success(),
        "{} --allow-lossy: {}",
        input.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(err)
}

/// The allowed changes an output records: `manifest.json`'s `lossy` (HF, Meta) or the
/// `qforge.lossy` key (GGUF).
fn recorded_lossy(output: &Path) -> Vec<String> {
    if output.is_dir() {
        let m: Value =
            serde_json::from_slice(&std::fs::read(output.join("manifest.json")).unwrap()).unwrap();
        return m["lossy"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|n| n["what"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default();
    }
    let ckpt = qforge_convert::Checkpoint::open(output).unwrap();
    match ckpt.gguf.unwrap().get(qforge_stage::notes::LOSSY_KEY) {
        Some(qforge_convert::gguf::GgufValue::Array(qforge_convert::gguf::GgufArray::String(
            a,
        ))) => a.iter().map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

#[test]
fn round_trips_keep_perplexity_or_refuse() {
    let t = tempfile::tempdir().unwrap();
    let data = families().join("eval.txt");
    let chains: [(&str, &[Step]); 7] = [
        ("hf-gguf", &[GGUF]),
        ("hf-gguf-hf", &[GGUF, HF]),
        ("hf-meta1-hf", &[META1, HF]),
        ("hf-meta2-hf", &[META2, HF]),
        ("hf-gguf-meta2-hf", &[GGUF, META2, HF]),
        ("hf-meta1-gguf-hf", &[META1, GGUF, HF]),
        ("hf-meta2-meta1-hf", &[META2, META1, HF]),
    ];
    let mut report = Vec::new();
    for style in &STYLES {
        let src = families().join(style.name);
        let source_config = config(&src);
        let base = perplexity(&src, &data);
        // The measure sees the change the issue reported: the same weights with the RoPE
        // scaling Meta's Llama 3 code would apply (factor 8, original context 8192).
        let control = t.path().join(style.name).join("control");
        std::fs::create_dir_all(&control).unwrap();
        for f in std::fs::read_dir(&src).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_some_and(|e| e != "gguf") {
                std::fs::copy(&f, control.join(f.file_name().unwrap())).unwrap();
            }
        }
        let mut c = source_config.clone();
        c["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        std::fs::write(control.join("config.json"), c.to_string()).unwrap();
        let moved = (perplexity(&control, &data) - base).abs() / base;
        report.push(format!(
            "{}/control (factor 8, context 8192): rel {moved:.2e}",
            style.name
        ));
        assert!(moved > CHANGED, "{}: {moved:e}", style.name);
        for (name, steps) in chains {
            let mut input = src.clone();
            let mut refusals = Vec::new();
            let mut recorded = Vec::new();
            let mut through_meta = false;
            for (i, step) in steps.iter().enumerate() {
                let ext = if step.to == "gguf" { ".gguf" } else { "" };
                let output: PathBuf = t
                    .path()
                    .join(style.name)
                    .join(format!("{name}-{i}-{}{ext}", step.to));
                refusals.extend(convert(&input, &output, *step));
                recorded.extend(recorded_lossy(&output));
                through_meta |= step.to == "meta";
                input = output;
            }
            if through_meta {
                // Meta's format dropped the tokenizer (refused and recorded below); put the
                // source's back to measure what the weights and config compute.
                for f in ["tokenizer.json", "tokenizer_config.json"] {
                    std::fs::copy(src.join(f), input.join(f)).unwrap();
                }
            }
            let ppl = perplexity(&input, &data);
            let rel = (ppl - base).abs() / base;
            report.push(format!(
                "{}/{name}: ppl {ppl:.9} vs {base:.9}, rel {rel:.2e}, refusals {}",
                style.name,
                refusals.len()
            ));
            let rope_refused = refusals.iter().any(|e| e.contains("RoPE scaling"));
            let tok_refused = refusals
                .iter()
                .any(|e| e.contains("tokenizer is not written"));
            // Every conversion into Meta refuses for the tokenizer; only the RoPE scaling
            // params.json cannot say changes the math.
            assert_eq!(
                tok_refused, through_meta,
                "{}/{name}: {refusals:?}",
                style.name
            );
            // Only the first conversion into Meta has a tokenizer to drop.
            assert_eq!(
                refusals.len(),
                usize::from(through_meta),
                "{}/{name}: {refusals:?}",
                style.name
            );
            assert_eq!(
                rope_refused,
                through_meta && !style.meta_expresses_rope,
                "{}/{name}: {refusals:?}",
                style.name
            );
            // What was allowed is recorded in the output it changed.
            for e in &refusals {
                assert!(
                    recorded.iter().any(|r| e.contains(r.as_str())),
                    "{}/{name}: {e} not recorded in {recorded:?}",
                    style.name
                );
            }
            if rope_refused {
                assert!(
                    rel > CHANGED,
                    "{}/{name}: the refused change is real: {rel:e}",
                    style.name
                );
            } else {
                assert!(
                    rel <= SAME,
                    "{}/{name}: {ppl} vs {base} ({rel:e})",
                    style.name
                );
            }
            if input.join("config.json").is_file() && !rope_refused {
                // The config says what the source's said: RoPE scaling, tied embeddings.
                let c: Value =
                    serde_json::from_slice(&std::fs::read(input.join("config.json")).unwrap())
                        .unwrap();
                assert_eq!(
                    c["tie_word_embeddings"], source_config["tie_word_embeddings"],
                    "{}/{name}",
                    style.name
                );
                assert_eq!(
                    c["rope_scaling"], source_config["rope_scaling"],
                    "{}/{name}",
                    style.name
                );
            }
        }
    }
    eprintln!("{}", report.join("\n"));
}

/// Every tensor of the checkpoint at `path`, by name: dtype and bytes.
fn tensors(path: &Path) -> BTreeMap<String, (DType, Vec<u8>)> {
    let ckpt = qforge_convert::Checkpoint::open(path).unwrap();
    ckpt.tensors
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                (t.dtype, ckpt.bytes(t).unwrap().into_owned()),
            )
        })
        .collect()
}

/// A narrowed `--dtype` is checked value by value: F32 weights BF16 cannot hold are refused
/// (nothing written; the message names the counts and the worst tensor), written and recorded
/// with `--allow-lossy`; F32 weights that are BF16 values (a BF16 → F32 round trip) narrow back
/// to BF16 without a word, bit for bit.
#[test]
fn a_narrowed_dtype_is_refused_only_when_it_changes_values() {
    let t = tempfile::tempdir().unwrap();
    let run = |input: &Path, output: &Path, args: &[&str]| {
        Command::new(QFORGE)
            .args(["convert", input.to_str().unwrap(), output.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap()
    };
    // exact: BF16 -> F32 -> BF16, HF and GGUF
    let bf16 = t.path().join("bf16");
    make_fixture_as(&bf16, DType::BF16);
    let f32_dir = t.path().join("f32");
    let out = run(&bf16, &f32_dir, &["--to", "hf", "--dtype", "f32"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let source = tensors(&bf16);
    for (to, name) in [("hf", "back"), ("gguf", "back.gguf")] {
        let back = t.path().join(name);
        let out = run(&f32_dir, &back, &["--to", to, "--dtype", "bf16"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{to}: {err}");
        assert!(!err.contains("lossy"), "{to}: {err}");
        assert!(recorded_lossy(&back).is_empty(), "{to}");
        if to == "hf" {
            assert_eq!(tensors(&back), source);
        }
    }
    // changed: F32 values BF16 (and F16) cannot hold
    let full = t.path().join("full");
    make_fixture_as(&full, DType::F32);
    for (to, dtype, name) in [
        ("hf", "bf16", "narrow"),
        ("gguf", "f16", "narrow.gguf"),
        ("meta", "bf16", "narrow-meta"),
    ] {
        let narrow = t.path().join(name);
        let out = run(&full, &narrow, &["--to", to, "--dtype", dtype]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{to} {dtype}");
        assert!(err.contains("--allow-lossy"), "{to} {dtype}: {err}");
        assert!(err.contains("omit --dtype"), "{to} {dtype}: {err}");
        // every tensor changes: 15 matrices (tied embeddings) and 5 norms, which GGUF keeps F32
        let want = if to == "gguf" {
            "in 15 tensor(s)"
        } else {
            "in 20 tensor(s)"
        };
        assert!(err.contains(want), "{to} {dtype}: {err}");
        assert!(err.contains("most in "), "{to} {dtype}: {err}");
        assert!(
            !narrow.exists(),
            "a refused conversion wrote {}",
            narrow.display()
        );
        if to == "meta" {
            continue; // Meta also refuses for its tokenizer; the rest is the same code
        }
        let out = run(
            &full,
            &narrow,
            &["--to", to, "--dtype", dtype, "--allow-lossy"],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lossy = recorded_lossy(&narrow);
        assert_eq!(lossy.len(), 1, "{lossy:?}");
        assert!(lossy[0].contains("value(s)"), "{lossy:?}");
    }
}

/// HF → Meta writes the tokenizer as Meta's tiktoken `tokenizer.model` when that file holds it
/// exactly: the tiny Meta checkpoint's tiktoken tokenizer, converted to HF's tokenizer.json,
/// comes back byte for byte and nothing is refused; the families' fixtures (specials after the
/// trained ranks, not Meta's layout) are refused for the tokenizer, naming why.
#[test]
fn hf_to_meta_keeps_a_tokenizer_tiktoken_can_hold() {
    let t = tempfile::tempdir().unwrap();
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/meta-mp1");
    let run = |input: &Path, output: &Path, to: &str| {
        Command::new(QFORGE)
            .args(["convert", input.to_str().unwrap(), output.to_str().unwrap()])
            .args(["--to", to])
            .output()
            .unwrap()
    };
    let hf = t.path().join("hf");
    let out = run(&tiny, &hf, "hf");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(hf.join("tokenizer.json").is_file());
    let meta = t.path().join("meta");
    let out = run(&hf, &meta, "meta");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("tiktoken tokenizer.model"), "{err}");
    assert_eq!(
        std::fs::read(meta.join("tokenizer.model")).unwrap(),
        std::fs::read(tiny.join("tokenizer.model")).unwrap()
    );
    assert!(recorded_lossy(&meta).is_empty());

    let refused = t.path().join("refused");
    let out = run(&families().join("llama32"), &refused, "meta");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("tokenizer is not written"), "{err}");
    assert!(err.contains("is a special, added or unused token"), "{err}");
    assert!(!refused.exists());
}
