//! Every model family against what transformers computes for it: the tiny fixtures of
//! `tests/fixtures/families/<name>/` (made by transformers 4.57.6 with
//! `scripts/gen_family_fixtures.py`; see scripts/README-fixtures.md) carry transformers' float32
//! perplexity on `eval.txt` with llama-perplexity's protocol (`expected.json`) and the GGUF
//! llama.cpp's own `convert_hf_to_gguf.py` makes of them (`<name>.gguf`). Per family:
//!
//! * `qforge perplexity` on the HF directory equals transformers' within 1e-4 relative;
//! * `qforge convert --to gguf --dtype f32` equals `convert_hf_to_gguf.py`'s file: every tensor
//!   (name, type, shape, bytes) and every metadata key but the ones naming the producer;
//! * `qforge perplexity` on that GGUF equals transformers' within 1e-4 relative;
//! * HF → GGUF → HF gives the source's tensors bit for bit and its config's model keys.
//!
//! llama-perplexity on qforge's GGUF is compared in `tests/interop/test_families_llama_cpp.py`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use qforge_codecs::DType;
use qforge_convert::gguf::GgufValue;
use qforge_convert::Checkpoint;
use serde_json::Value;

const QFORGE: &str = env!("CARGO_BIN_EXE_qforge");
/// Largest relative difference to transformers' float32 perplexity.
const PPL_REL: f64 = 1e-4;

/// Every family fixture, checked in CI.
const FAMILIES: &[&str] = &[
    "llama31",
    "llama32",
    "mistral",
    "qwen2",
    "qwen2_yarn",
    "qwen3",
    "mixtral",
    "qwen3moe",
    "qwen3moe_dense",
    "llama4",
];

/// Fixtures GGUF cannot hold at all: a Qwen3-MoE with a dense block (llama.cpp's qwen3moe
/// graph has experts in every block, and `convert_hf_to_gguf.py` maps no dense FFN for it).
/// Checked on HF alone: perplexity, the refused GGUF conversion, HF -> HF bit for bit.
const HF_ONLY: &[&str] = &["qwen3moe_dense"];

/// Fixtures whose sliding window GGUF cannot hold: llama.cpp's converter writes Mistral as
/// `llama` with no window key and llama.cpp's llama graph has none (convert_hf_to_gguf.py
/// `LlamaModel`; tests/interop/test_families_llama_cpp.py shows llama-perplexity on its file
/// computes the window-ignored model). qforge refuses that conversion unless `--allow-lossy`,
/// then writes what the converter writes plus its `qforge.lossy` record; the GGUF then computes
/// transformers' "window ignored" perplexity, and GGUF -> HF gives a Llama without the window.
const WINDOW_LOST: &[&str] = &["mistral"];
/// config.json keys a window-losing round trip changes, checked apart: the class and window,
/// and `attention_bias`, which LlamaConfig states (false) where MistralConfig has no such key
/// (Mistral has no attention biases either).
const WINDOW_KEYS: &[&str] = &[
    "architectures",
    "model_type",
    "sliding_window",
    "attention_bias",
];

/// Fixtures whose Llama 4 attention GGUF cannot hold: llama.cpp's llama4 graph fixes the chunk
/// size (8192), the NoPE blocks (every 4th), the temperature tuning (floor 8192, scale 0.1)
/// and reads no key for them (src/models/llama4.cpp `load_arch_hparams`); the fixture's chunk
/// of 8, NoPE block 1 and temperature (floor 1, scale 1) are not those. qforge refuses that
/// conversion unless `--allow-lossy`; the GGUF then computes what llama.cpp computes from it,
/// transformers' `llama_cpp_constants` forward (tests/interop/test_families_llama_cpp.py runs
/// llama-perplexity on it), and GGUF -> HF gives that config.
const LLAMA4_LOST: &[&str] = &["llama4"];
/// config.json keys a Llama 4 round trip through GGUF changes (to llama.cpp's values).
const LLAMA4_KEYS: &[&str] = &[
    "attention_chunk_size",
    "floor_scale",
    "attn_scale",
    "no_rope_layers",
];

/// GGUF keys that name the producer, not the model (as `scripts/compare_gguf.py` reports them).
const PRODUCER_KEYS: &[&str] = &[
    "general.name",
    "general.basename",
    "general.size_label",
    "general.finetune",
    "general.organization",
    "general.license",
    "general.languages",
    "general.version",
];

/// config.json keys that describe the model (what a round trip must keep).
const CONFIG_KEYS: &[&str] = &[
    "architectures",
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_hidden_layers",
    "num_key_value_heads",
    "head_dim",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "vocab_size",
    "tie_word_embeddings",
    "attention_bias",
    "sliding_window",
    "bos_token_id",
    "eos_token_id",
    // mixtures of experts (MixtralConfig, Qwen3MoeConfig)
    "num_local_experts",
    "num_experts",
    "num_experts_per_tok",
    "moe_intermediate_size",
    "norm_topk_prob",
    "decoder_sparse_step",
    "mlp_only_layers",
    // Llama4TextConfig
    "intermediate_size_mlp",
    "interleave_moe_layer_step",
    "moe_layers",
    "no_rope_layers",
    "attention_chunk_size",
    "use_qk_norm",
    "attn_temperature_tuning",
    "floor_scale",
    "attn_scale",
];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/families")
        .join(name)
}

fn expected(name: &str) -> Value {
    let p = fixture(name).join("expected.json");
    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
}

fn qforge(args: &[&str]) -> std::process::Output {
    Command::new(QFORGE).args(args).output().unwrap()
}

fn check(what: &str, out: &std::process::Output) -> Result<(), String> {
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `qforge perplexity` on `model` with the fixture's protocol: (ppl, scored tokens).
fn perplexity(model: &Path, e: &Value) -> Result<(f64, u64), String> {
    let text = fixture("eval.txt");
    let ctx = e["protocol"]["ctx"].to_string();
    let chunks = e["protocol"]["chunks"].to_string();
    let m = model.to_str().unwrap();
    let args = [
        "perplexity",
        m,
        "--data",
        text.to_str().unwrap(),
        "--ctx",
        &ctx,
        "--chunks",
        &chunks,
        "--json",
        "--quiet",
    ];
    let out = qforge(&args);
    check(&format!("perplexity {m}"), &out)?;
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    Ok((
        v["ppl"].as_f64().unwrap(),
        v["scored_tokens"].as_u64().unwrap(),
    ))
}

/// `qforge perplexity` on `model` against transformers' figure in `e` (its true forward, or
/// the `wrong_forwards` entry `wrong` names).
fn same_perplexity(
    model: &Path,
    e: &Value,
    wrong: Option<&str>,
    log: &mut Vec<String>,
) -> Result<(), String> {
    let want = match wrong {
        None => e["transformers_f32"]["ppl"].as_f64().unwrap(),
        Some(w) => e["wrong_forwards"][w]["ppl"].as_f64().unwrap(),
    };
    let (ppl, scored) = perplexity(model, e)?;
    let rel = (ppl - want).abs() / want;
    log.push(format!(
        "{}: ppl {ppl:.9} vs transformers {want:.9}, rel {rel:.2e}",
        model.file_name().unwrap().to_string_lossy()
    ));
    if scored != e["transformers_f32"]["scored_tokens"].as_u64().unwrap() {
        return Err(format!("{}: {scored} scored tokens", model.display()));
    }
    if rel > PPL_REL {
        return Err(format!(
            "{}: ppl {ppl} vs transformers {want}: rel {rel:e} > {PPL_REL:e}",
            model.display()
        ));
    }
    Ok(())
}

/// Every tensor of a checkpoint by name: (dtype, shape, bytes).
type Tensors = BTreeMap<String, (DType, Vec<u64>, Vec<u8>)>;

fn tensors(path: &Path) -> Result<Tensors, String> {
    let ckpt = Checkpoint::open(path).map_err(|e| e.to_string())?;
    ckpt.tensors
        .iter()
        .map(|t| {
            let b = ckpt.bytes(t).map_err(|e| e.to_string())?.into_owned();
            Ok((t.name.clone(), (t.dtype, t.shape.clone(), b)))
        })
        .collect()
}

fn same_tensors(ours: &Tensors, theirs: &Tensors, what: &str) -> Result<(), String> {
    let names = |t: &Tensors| t.keys().cloned().collect::<Vec<_>>();
    if names(ours) != names(theirs) {
        return Err(format!(
            "{what}: tensors {:?} vs {:?}",
            names(ours),
            names(theirs)
        ));
    }
    let differ: Vec<&String> = ours
        .iter()
        .filter(|(n, t)| theirs[*n] != **t)
        .map(|(n, _)| n)
        .collect();
    if differ.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{what}: differ in type, shape or bytes: {differ:?}"
        ))
    }
}

/// The model keys of a GGUF file (producer keys left out), in file order.
fn gguf_keys(path: &Path) -> Result<Vec<(String, GgufValue)>, String> {
    let ckpt = Checkpoint::open(path).map_err(|e| e.to_string())?;
    let meta = ckpt.gguf.ok_or("no GGUF metadata")?;
    Ok(meta
        .entries
        .into_iter()
        .filter(|(k, _)| !PRODUCER_KEYS.contains(&k.as_str()))
        .collect())
}

/// Every tensor of a GGUF file as the file stores it (3-D expert stacks whole, not the
/// per-expert slices [`Checkpoint`] reads them as): name -> (ne, type, bytes).
/// GGUF tensors as stored: name -> (ne, type, bytes).
type FileTensors = BTreeMap<String, (Vec<u64>, DType, Vec<u8>)>;

fn gguf_file_tensors(path: &Path) -> Result<FileTensors, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let (_, infos) = qforge_convert::gguf::parse(&bytes).map_err(|e| format!("{e:?}"))?;
    Ok(infos
        .into_iter()
        .map(|t| {
            let at = t.absolute_offset as usize;
            let data = bytes[at..at + t.nbytes as usize].to_vec();
            (t.name, (t.ne, t.dtype, data))
        })
        .collect())
}

/// `qforge convert --to gguf` of the HF directory against `convert_hf_to_gguf.py`'s file.
fn same_as_llama_cpp(ours: &Path, name: &str, lossy: bool) -> Result<(), String> {
    let theirs = fixture(name).join(format!("{name}.gguf"));
    let (a, b) = (gguf_file_tensors(ours)?, gguf_file_tensors(&theirs)?);
    if a.keys().ne(b.keys()) {
        return Err(format!(
            "GGUF tensor names vs convert_hf_to_gguf.py: {:?} vs {:?}",
            a.keys().collect::<Vec<_>>(),
            b.keys().collect::<Vec<_>>()
        ));
    }
    let differ: Vec<&String> = a
        .iter()
        .filter(|(n, t)| b[*n] != **t)
        .map(|(n, _)| n)
        .collect();
    if !differ.is_empty() {
        return Err(format!(
            "GGUF tensors (ne, type, bytes) differ from convert_hf_to_gguf.py's: {differ:?}"
        ));
    }
    same_tensors(
        &tensors(ours)?,
        &tensors(&theirs)?,
        "GGUF vs convert_hf_to_gguf.py",
    )?;
    let (a, b) = (gguf_keys(ours)?, gguf_keys(&theirs)?);
    let mut differ = Vec::new();
    let get = |m: &[(String, GgufValue)], k: &str| m.iter().find(|(x, _)| x == k).cloned();
    let keys: std::collections::BTreeSet<&String> = a.iter().chain(&b).map(|(k, _)| k).collect();
    for k in keys {
        let (x, y) = (get(&a, k).map(|p| p.1), get(&b, k).map(|p| p.1));
        // gguf-py's SpecialVocab writes add_sep_token false when a TemplateProcessing pair
        // template has no separator (gguf/vocab.py _try_load_from_tokenizer_json); absent, a
        // BPE vocabulary's add_sep is false in llama.cpp too (llama-vocab.cpp load: add_sep =
        // false unless the vocabulary type sets it): the same tokenizer.
        if k == "tokenizer.ggml.add_sep_token" && x.is_none() && y == Some(GgufValue::Bool(false)) {
            continue;
        }
        // an allowed lossy conversion records what it lost; the converter records nothing
        if lossy && k.starts_with("qforge.") && x.is_some() && y.is_none() {
            continue;
        }
        if x != y {
            let short = |v: Option<GgufValue>| {
                let s = format!("{v:?}");
                s.chars().take(120).collect::<String>()
            };
            differ.push(format!("{k}: {} vs {}", short(x), short(y)));
        }
    }
    if differ.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "GGUF keys vs convert_hf_to_gguf.py:\n  {}",
            differ.join("\n  ")
        ))
    }
}

fn config(dir: &Path) -> Result<Value, String> {
    let p = dir.join("config.json");
    serde_json::from_slice(&std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?)
        .map_err(|e| e.to_string())
}

/// All checks for one family; the first failure, with what passed before it.
fn check_family(name: &str, work: &Path) -> Result<Vec<String>, String> {
    let mut log = Vec::new();
    let src = fixture(name);
    let e = expected(name);
    let fail = |log: &Vec<String>, err: String| format!("{name}: {err}\n(passed: {log:#?})");
    same_perplexity(&src, &e, None, &mut log).map_err(|x| fail(&log, x))?;
    if HF_ONLY.contains(&name) {
        return check_hf_only(name, &src, work, log).map_err(|(log, x)| fail(&log, x));
    }

    let gguf = work.join(format!("{name}.gguf"));
    let (s, g) = (src.to_str().unwrap(), gguf.to_str().unwrap());
    let window_lost = WINDOW_LOST.contains(&name);
    let llama4_lost = LLAMA4_LOST.contains(&name);
    let lossy = window_lost || llama4_lost;
    let to_gguf = ["convert", s, g, "--to", "gguf", "--dtype", "f32"];
    if lossy {
        // refused without --allow-lossy, naming what is lost, before anything is written
        let what = if window_lost {
            "window"
        } else {
            "Llama 4 attention"
        };
        let out = qforge(&to_gguf);
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || !err.contains(what) || gguf.exists() {
            return Err(fail(
                &log,
                format!("GGUF without --allow-lossy was not refused: {err}"),
            ));
        }
        log.push(format!("{name}: GGUF refused without --allow-lossy"));
    }
    let allow: &[&str] = if lossy { &["--allow-lossy"] } else { &[] };
    check(
        "convert --to gguf",
        &qforge(&[&to_gguf[..], allow].concat()),
    )
    .map_err(|x| fail(&log, x))?;
    same_as_llama_cpp(&gguf, name, lossy).map_err(|x| fail(&log, x))?;
    log.push(format!(
        "{name}: GGUF equals convert_hf_to_gguf.py's (tensors, model keys)"
    ));
    let wrong = if window_lost {
        Some("window_ignored")
    } else if llama4_lost {
        Some("llama_cpp_constants")
    } else {
        None
    };
    same_perplexity(&gguf, &e, wrong, &mut log).map_err(|x| fail(&log, x))?;

    // HF (BF16) -> GGUF (F32) -> HF (BF16): the source's tensors bit for bit.
    let back = work.join(format!("{name}-back"));
    let b = back.to_str().unwrap();
    check(
        "convert --to hf",
        &qforge(&["convert", g, b, "--to", "hf", "--dtype", "bf16"]),
    )
    .map_err(|x| fail(&log, x))?;
    same_tensors(&tensors(&back)?, &tensors(&src)?, "HF -> GGUF -> HF")
        .map_err(|x| fail(&log, x))?;
    let (c0, c1) = (config(&src)?, config(&back)?);
    for k in CONFIG_KEYS {
        if (window_lost && WINDOW_KEYS.contains(k)) || (llama4_lost && LLAMA4_KEYS.contains(k)) {
            continue;
        }
        // an absent key and an explicit null mean the same to transformers' config classes
        let get = |c: &Value| c.get(*k).filter(|v| !v.is_null()).cloned();
        if get(&c0) != get(&c1) {
            return Err(fail(
                &log,
                format!(
                    "HF -> GGUF -> HF config.json {k}: {:?} vs source {:?}",
                    c1.get(*k),
                    c0.get(*k)
                ),
            ));
        }
    }
    if lossy {
        // what GGUF could not hold comes back as the llama.cpp model it computes
        let lost = if llama4_lost {
            c1["attention_chunk_size"] == 8192
                && c1["floor_scale"] == 8192
                && c1["no_rope_layers"] == serde_json::json!([1, 1, 1, 0])
        } else {
            (c1["model_type"] == "llama") && c1.get("sliding_window").is_none_or(Value::is_null)
        };
        if !lost {
            return Err(fail(&log, format!("HF -> GGUF -> HF: {c1}")));
        }
    }
    log.push(format!(
        "{name}: HF -> GGUF -> HF bit for bit, config keys kept"
    ));
    Ok(log)
}

/// A fixture with no GGUF form: conversion to GGUF refused (with `--allow-lossy` too), nothing
/// written; HF -> HF gives the source's tensors bit for bit and its model keys.
fn check_hf_only(
    name: &str,
    src: &Path,
    work: &Path,
    mut log: Vec<String>,
) -> Result<Vec<String>, (Vec<String>, String)> {
    let gguf = work.join(format!("{name}.gguf"));
    let s = src.to_str().unwrap();
    for extra in [&[][..], &["--allow-lossy"][..]] {
        let out = qforge(
            &[
                &["convert", s, gguf.to_str().unwrap(), "--to", "gguf"][..],
                extra,
            ]
            .concat(),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || !err.contains("dense blocks") || gguf.exists() {
            return Err((log, format!("GGUF {extra:?} was not refused: {err}")));
        }
    }
    log.push(format!("{name}: GGUF refused (dense blocks)"));
    let back = work.join(format!("{name}-back"));
    let out = qforge(&[
        "convert",
        s,
        back.to_str().unwrap(),
        "--to",
        "hf",
        "--dtype",
        "bf16",
    ]);
    if let Err(x) = check("convert --to hf", &out) {
        return Err((log, x));
    }
    let same = tensors(&back)
        .and_then(|b| tensors(src).and_then(|a| same_tensors(&b, &a, "HF -> HF")))
        .and_then(|()| {
            let (c0, c1) = (config(src)?, config(&back)?);
            let get = |c: &Value, k: &str| c.get(k).filter(|v| !v.is_null()).cloned();
            match CONFIG_KEYS.iter().find(|k| get(&c0, k) != get(&c1, k)) {
                Some(k) => Err(format!(
                    "HF -> HF config.json {k}: {:?} vs {:?}",
                    c1.get(*k),
                    c0.get(*k)
                )),
                None => Ok(()),
            }
        });
    match same {
        Ok(()) => {
            log.push(format!("{name}: HF -> HF bit for bit, config keys kept"));
            Ok(log)
        }
        Err(x) => Err((log, x)),
    }
}

#[test]
fn families_match_transformers_and_llama_cpp_converter() {
    let t = tempfile::tempdir().unwrap();
    for name in FAMILIES {
        match check_family(name, t.path()) {
            Ok(log) => eprintln!("{}", log.join("\n")),
            Err(e) => panic!("{e}"),
        }
    }
}

/// Every fixture directory is listed once, and each discriminates: its expected.json records
/// wrong forwards that move transformers' perplexity by more than 1 %.
#[test]
fn every_fixture_is_listed_and_discriminates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/families");
    let mut found: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            e.file_type()
                .unwrap()
                .is_dir()
                .then(|| e.file_name().into_string().unwrap())
        })
        .collect();
    found.sort();
    let mut listed: Vec<String> = FAMILIES.iter().map(ToString::to_string).collect();
    listed.sort();
    assert_eq!(found, listed);
    for name in &listed {
        let e = expected(name);
        let wrong = e["wrong_forwards"].as_object().unwrap();
        assert!(!wrong.is_empty(), "{name}");
        for (how, w) in wrong {
            let rel = w["rel_change"].as_f64().unwrap();
            assert!(rel > 0.01, "{name}/{how}: {rel}");
        }
    }
}

/// The mixture-of-experts fixtures' wrong routers, as config changes qforge reads: top-1
/// instead of top-2 (`num_experts_per_tok: 1`) and, where the config can say it, no
/// renormalisation of the top-k weights (Qwen3-MoE `norm_topk_prob: false`). qforge's
/// perplexity of each equals transformers' for that wrong forward within 1e-4 (so the forward
/// follows the config), and each moves the perplexity by more than 1 %. Mixtral always
/// renormalises (MixtralSparseMoeBlock), so its `router_unnormalised` figure is transformers'
/// alone.
#[test]
fn wrong_routers_match_transformers_and_move_perplexity() {
    let t = tempfile::tempdir().unwrap();
    let mut log = Vec::new();
    for (name, how, key, value) in [
        (
            "mixtral",
            "top1_router",
            "num_experts_per_tok",
            Value::from(1),
        ),
        (
            "qwen3moe",
            "top1_router",
            "num_experts_per_tok",
            Value::from(1),
        ),
        (
            "qwen3moe",
            "router_unnormalised",
            "norm_topk_prob",
            Value::from(false),
        ),
        (
            "qwen3moe_dense",
            "router_unnormalised",
            "norm_topk_prob",
            Value::from(false),
        ),
    ] {
        wrong_config_matches(t.path(), name, how, key, value, &mut log);
    }
    eprintln!("{}", log.join("\n"));
}

/// A copy of fixture `name`'s HF files (not its GGUF) in `work/{name}-{how}`, with the given
/// `config.json` keys set.
fn fixture_with_config(work: &Path, name: &str, how: &str, keys: &[(&str, Value)]) -> PathBuf {
    let dir = work.join(format!("{name}-{how}"));
    std::fs::create_dir(&dir).unwrap();
    for f in std::fs::read_dir(fixture(name)).unwrap() {
        let f = f.unwrap().path();
        if f.extension().is_some_and(|x| x == "gguf") {
            continue;
        }
        std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
    }
    let mut c = config(&dir).unwrap();
    for (k, v) in keys {
        c[*k] = v.clone();
    }
    std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
    dir
}

/// The fixture `name` with `config.json`'s `key` set to `value`: `qforge perplexity` equals
/// transformers' `wrong_forwards[how]` within 1e-4, which is > 1 % from the true forward.
fn wrong_config_matches(
    work: &Path,
    name: &str,
    how: &str,
    key: &str,
    value: Value,
    log: &mut Vec<String>,
) {
    let e = expected(name);
    let dir = fixture_with_config(work, name, how, &[(key, value)]);
    same_perplexity(&dir, &e, Some(how), log).unwrap_or_else(|x| panic!("{x}"));
    let (right, wrong) = (
        e["transformers_f32"]["ppl"].as_f64().unwrap(),
        e["wrong_forwards"][how]["ppl"].as_f64().unwrap(),
    );
    assert!((wrong - right).abs() / right > 0.01, "{name}/{how}");
}

/// YaRN ignored (`rope_scaling: null`) on the qwen2_yarn fixture: qforge computes
/// transformers' `rope_scaling_ignored` forward, 1.97 % from the true one, so the YaRN
/// frequencies and attention factor are what the fixture's figure depends on.
#[test]
fn yarn_ignored_matches_transformers_and_moves_perplexity() {
    let t = tempfile::tempdir().unwrap();
    let mut log = Vec::new();
    wrong_config_matches(
        t.path(),
        "qwen2_yarn",
        "rope_scaling_ignored",
        "rope_scaling",
        Value::Null,
        &mut log,
    );
    eprintln!("{}", log.join("\n"));
}

/// Llama 4's attention variants, as config changes qforge reads (transformers'
/// `Llama4TextConfig` keys): every block rotating (`no_rope_layers` all 1: the NoPE block then
/// also L2-normalises q/k and drops the temperature, as `Llama4TextAttention` does for a RoPE
/// block), no chunking (`attention_chunk_size` 8192), no temperature tuning, and llama.cpp's
/// fixed values all at once. qforge's perplexity of each equals transformers' for that forward
/// within 1e-4, so the forward follows each key; the fixture's `expected.json` records how far
/// each moves the perplexity (the sigmoid → softmax router, which no key expresses, is
/// transformers' figure alone; `verify/src/moe.rs` tests the two gatings).
#[test]
fn llama4_attention_variants_match_transformers() {
    let t = tempfile::tempdir().unwrap();
    let mut log = Vec::new();
    let name = "llama4";
    let e = expected(name);
    let variants: [(&str, Vec<(&str, Value)>); 4] = [
        (
            "nope_ignored",
            vec![("no_rope_layers", serde_json::json!([1, 1, 1, 1]))],
        ),
        (
            "chunking_ignored",
            vec![("attention_chunk_size", Value::from(8192))],
        ),
        (
            "temperature_ignored",
            vec![("attn_temperature_tuning", Value::from(false))],
        ),
        (
            "llama_cpp_constants",
            vec![
                ("attention_chunk_size", Value::from(8192)),
                ("floor_scale", Value::from(8192)),
                ("attn_scale", Value::from(0.1)),
                ("no_rope_layers", serde_json::json!([1, 1, 1, 0])),
                (
                    "layer_types",
                    serde_json::json!([
                        "chunked_attention",
                        "chunked_attention",
                        "chunked_attention",
                        "full_attention"
                    ]),
                ),
            ],
        ),
    ];
    for (how, keys) in variants {
        let dir = fixture_with_config(t.path(), name, how, &keys);
        same_perplexity(&dir, &e, Some(how), &mut log).unwrap_or_else(|x| panic!("{x}"));
    }
    eprintln!("{}", log.join("\n"));
}

/// A safetensors file's tensors: name → (dtype spelling, shape, bytes).
type RawFile = BTreeMap<String, (String, Vec<u64>, Vec<u8>)>;

fn read_safetensors(path: &Path) -> RawFile {
    let b = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, Value> = serde_json::from_slice(&b[8..8 + n]).unwrap();
    let data = &b[8 + n..];
    header
        .into_iter()
        .filter(|(k, _)| k != "__metadata__")
        .map(|(k, v)| {
            let o = &v["data_offsets"];
            let (s, e) = (
                o[0].as_u64().unwrap() as usize,
                o[1].as_u64().unwrap() as usize,
            );
            let shape = v["shape"].as_array().unwrap();
            let shape = shape.iter().map(|d| d.as_u64().unwrap()).collect();
            let dtype = v["dtype"].as_str().unwrap().to_owned();
            (k, (dtype, shape, data[s..e].to_vec()))
        })
        .collect()
}

fn write_safetensors(path: &Path, t: &RawFile) {
    use qforge_convert::write::safetensors::{plan, TensorSpec, Writer};
    let dtype = |s: &str| match s {
        "BF16" => DType::BF16,
        "F32" => DType::F32,
        other => panic!("dtype {other}"),
    };
    let specs = t
        .iter()
        .map(|(name, (d, shape, _))| TensorSpec {
            name: name.clone(),
            dtype: dtype(d),
            shape: shape.clone(),
        })
        .collect();
    let p = plan(specs, &BTreeMap::new()).unwrap();
    let f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut w = Writer::new(f, p.clone()).unwrap();
    for (spec, _, _) in &p.tensors {
        w.write_tensor(&spec.name, &t[&spec.name].2).unwrap();
    }
    use std::io::Write;
    w.finish().unwrap().flush().unwrap();
}

/// The llama4 fixture as Meta ships Llama 4 (`Llama4ForConditionalGeneration`, transformers
/// 5.23 `modeling_llama4.py`): the text model's tensors under `language_model.model.*`, an
/// untied `language_model.lm_head.weight` (a copy of the embeddings, so the same function),
/// vision tensors beside them (`vision_model.*`, `multi_modal_projector.*`), and the text
/// config under `text_config` of a `llama4` config. qforge reads the text model: its
/// perplexity equals the text fixture's exactly (and transformers' within 1e-4), and the
/// vision tensors are named in a note; a wrapper without `text_config` is refused naming it.
#[test]
fn llama4_conditional_generation_reads_the_text_model() {
    let t = tempfile::tempdir().unwrap();
    let e = expected("llama4");
    let text = fixture_with_config(t.path(), "llama4", "text", &[]);
    let dir = fixture_with_config(t.path(), "llama4", "wrapped", &[]);
    let mut st: RawFile = read_safetensors(&dir.join("model.safetensors"))
        .into_iter()
        .map(|(k, v)| (format!("language_model.{k}"), v))
        .collect();
    let embed = st["language_model.model.embed_tokens.weight"].clone();
    st.insert("language_model.lm_head.weight".into(), embed);
    let f32s = |n: usize| {
        (0..n)
            .flat_map(|i| (i as f32 * 0.01).to_le_bytes())
            .collect()
    };
    st.insert(
        "vision_model.patch_embedding.linear.weight".into(),
        ("F32".into(), vec![8, 12], f32s(96)),
    );
    st.insert(
        "multi_modal_projector.linear_1.weight".into(),
        ("F32".into(), vec![64, 8], f32s(512)),
    );
    write_safetensors(&dir.join("model.safetensors"), &st);
    let mut text_config = config(&text).unwrap();
    text_config["tie_word_embeddings"] = Value::from(false);
    let wrapper = serde_json::json!({
        "architectures": ["Llama4ForConditionalGeneration"],
        "model_type": "llama4",
        "image_token_index": 200_092,
        "tie_word_embeddings": false,
        "text_config": text_config,
        "vision_config": {"model_type": "llama4_vision_model", "hidden_size": 8,
                          "num_hidden_layers": 1},
    });
    std::fs::write(dir.join("config.json"), wrapper.to_string()).unwrap();
    let ckpt = Checkpoint::open(&dir).unwrap();
    let note = ckpt.notes.iter().find(|n| n.contains("vision"));
    assert!(
        note.is_some_and(|n| n.contains("skipped 2 vision tensors")),
        "{:?}",
        ckpt.notes
    );
    let (want, _) = perplexity(&text, &e).unwrap();
    let (got, _) = perplexity(&dir, &e).unwrap();
    assert_eq!(got, want, "wrapped perplexity {got} vs text fixture {want}");
    let mut log = Vec::new();
    same_perplexity(&dir, &e, None, &mut log).unwrap_or_else(|x| panic!("{x}"));
    eprintln!("{}", log.join("\n"));
    let mut bare = wrapper.clone();
    bare.as_object_mut().unwrap().remove("text_config");
    std::fs::write(dir.join("config.json"), bare.to_string()).unwrap();
    let err = Checkpoint::open(&dir).unwrap_err().to_string();
    assert!(err.contains("text_config"), "{err}");
}

/// The MoE fixture `name` in transformers 5's layout (`MixtralExperts` / `Qwen3MoeExperts` of
/// transformers 5.23 `modeling_mixtral.py` / `modeling_qwen3_moe.py`, as their state dict
/// holds it): per block `mlp.gate.weight` (Mixtral's `block_sparse_moe` renamed, as its
/// conversion mapping does), `mlp.experts.gate_up_proj` `[E, 2·ffn, hidden]` (each expert's
/// gate rows, then its up rows) and `mlp.experts.down_proj` `[E, hidden, ffn]`.
fn fused_experts_fixture(work: &Path, name: &str) -> PathBuf {
    let dir = fixture_with_config(work, name, "fused", &[]);
    let mut st = read_safetensors(&dir.join("model.safetensors"));
    let n_expert = config(&dir).unwrap()["num_experts"]
        .as_u64()
        .or(config(&dir).unwrap()["num_local_experts"].as_u64())
        .unwrap();
    let blocks: Vec<String> = st
        .keys()
        .filter_map(|k| {
            let b = k.strip_suffix(".experts.0.w1.weight");
            b.or_else(|| k.strip_suffix(".experts.0.gate_proj.weight"))
                .map(str::to_owned)
        })
        .collect();
    assert!(!blocks.is_empty(), "{name}");
    for b in blocks {
        let layer = b.rsplit_once('.').unwrap().0.to_owned();
        let mixtral = b.ends_with("block_sparse_moe");
        let [g, u, d] = if mixtral {
            ["w1", "w3", "w2"]
        } else {
            ["gate_proj", "up_proj", "down_proj"]
        };
        let mut take = |e: u64, p: &str| st.remove(&format!("{b}.experts.{e}.{p}.weight")).unwrap();
        let (mut gate_up, mut down) = (Vec::new(), Vec::new());
        let (mut dtype, mut gs, mut ds) = (String::new(), vec![], vec![]);
        for e in 0..n_expert {
            let (dt, s, gb) = take(e, g);
            let (_, _, ub) = take(e, u);
            let (_, s2, db) = take(e, d);
            gate_up.extend(gb);
            gate_up.extend(ub);
            down.extend(db);
            (dtype, gs, ds) = (dt, s, s2);
        }
        let router = st.remove(&format!("{b}.gate.weight")).unwrap();
        st.insert(format!("{layer}.mlp.gate.weight"), router);
        st.insert(
            format!("{layer}.mlp.experts.gate_up_proj"),
            (dtype.clone(), vec![n_expert, 2 * gs[0], gs[1]], gate_up),
        );
        st.insert(
            format!("{layer}.mlp.experts.down_proj"),
            (dtype, vec![n_expert, ds[0], ds[1]], down),
        );
    }
    write_safetensors(&dir.join("model.safetensors"), &st);
    dir
}

/// transformers 5's fused expert tensors (Mixtral, Qwen3-MoE) are read as per-expert views:
/// perplexity equal to the per-expert fixture's exactly, `convert --to gguf` byte-identical
/// to converting the fixture, `convert --to hf` gives back the fixture's safetensors byte for
/// byte; a fused tensor of the wrong shape is refused naming it and the shape config.json
/// implies. (`tests/interop/test_transformers5_fused_experts.py` checks this layout against
/// transformers 5.23's own state dict.)
#[test]
fn transformers5_fused_experts_read_as_per_expert_views() {
    let t = tempfile::tempdir().unwrap();
    for name in ["mixtral", "qwen3moe"] {
        let e = expected(name);
        let dir = fused_experts_fixture(t.path(), name);
        let (want, _) = perplexity(&fixture(name), &e).unwrap();
        let (got, _) = perplexity(&dir, &e).unwrap();
        assert_eq!(
            got, want,
            "{name}: fused perplexity {got} vs per-expert {want}"
        );
        let mut outs = Vec::new();
        for (src, to, out) in [
            (fixture(name), "gguf", "a.gguf"),
            (dir.clone(), "gguf", "b.gguf"),
            (dir.clone(), "hf", "hf"),
        ] {
            let o = t.path().join(format!("{name}-{out}"));
            let args = [
                "convert",
                src.to_str().unwrap(),
                o.to_str().unwrap(),
                "--to",
                to,
            ];
            let dtype: &[&str] = if to == "gguf" {
                &["--dtype", "f32"]
            } else {
                &[]
            };
            check(out, &qforge(&[&args[..], dtype, &["-q"]].concat())).unwrap();
            outs.push(o);
        }
        let bytes = |p: &Path| std::fs::read(p).unwrap();
        assert!(bytes(&outs[0]) == bytes(&outs[1]), "{name}: GGUF differs");
        let st = |d: &Path| bytes(&d.join("model.safetensors"));
        assert!(st(&outs[2]) == st(&fixture(name)), "{name}: HF differs");
        // a gate_up_proj one expert short
        let mut st = read_safetensors(&dir.join("model.safetensors"));
        let key = st
            .keys()
            .find(|k| k.ends_with("mlp.experts.gate_up_proj"))
            .unwrap()
            .clone();
        let (dt, mut shape, b) = st.remove(&key).unwrap();
        shape[0] -= 1;
        let keep = b.len() / (shape[0] as usize + 1) * shape[0] as usize;
        st.insert(key.clone(), (dt, shape, b[..keep].to_vec()));
        write_safetensors(&dir.join("model.safetensors"), &st);
        let err = Checkpoint::open(&dir).unwrap_err().to_string();
        assert!(
            err.contains(&key) && err.contains("config.json implies"),
            "{err}"
        );
    }
}
