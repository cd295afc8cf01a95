//! `qforge plan` / `--dry-run` against real runs (every planned file size must equal the size
//! written, for every layout), the 405B figures from a config alone, and `qforge pipeline` end
//! to end: artifacts, report, budgets and exit status, reruns that skip finished steps.

#[path = "support/model.rs"]
mod model;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const QFORGE: &str = env!("CARGO_BIN_EXE_qforge");

fn qforge(args: &[&str]) -> std::process::Output {
    Command::new(QFORGE).args(args).output().unwrap()
}

fn ok(args: &[&str]) -> Vec<u8> {
    let o = qforge(args);
    assert!(
        o.status.success(),
        "qforge {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

/// A synthetic BF16 model with the tiny fixture's tokenizer (130 tokens, inside the vocab).
pub fn model_with_tokenizer(dir: &Path, dims: model::Dims) {
    model::make_model(dir, dims);
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/hf");
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tiny.join(f), dir.join(f)).unwrap();
    }
}

/// Path → size of every file of an output (a directory or one file).
fn sizes(out: &Path) -> BTreeMap<String, u64> {
    if out.is_file() {
        let name = out.file_name().unwrap().to_string_lossy().into_owned();
        return [(name, std::fs::metadata(out).unwrap().len())].into();
    }
    model::files(out)
        .into_iter()
        .map(|(k, v)| (k, v.len() as u64))
        .collect()
}

fn planned(plan: &Value) -> BTreeMap<String, u64> {
    plan["outputs"][0]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_owned(),
                f["bytes"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn plan_sizes_equal_written_sizes_for_every_layout() {
    let root = tempfile::tempdir().unwrap();
    let input = root.path().join("model");
    model_with_tokenizer(&input, model::SMALL);
    let i = input.to_str().unwrap();
    let cases: &[(&str, &[&str])] = &[
        (
            "hf-f32-sharded",
            &[
                "convert",
                "--to",
                "hf",
                "--dtype",
                "f32",
                "--shard-size",
                "2MB",
            ],
        ),
        (
            "gguf-f16.gguf",
            &["convert", "--to", "gguf", "--dtype", "f16"],
        ),
        ("fp8", &["quantize", "--scheme", "fp8-rowwise"]),
        (
            "fp8-sharded",
            &["quantize", "--scheme", "fp8-rowwise", "--shard-size", "1MB"],
        ),
        (
            "fbgemm",
            &[
                "quantize",
                "--scheme",
                "fp8-rowwise",
                "--layout",
                "fbgemm",
                "--policy",
                "meta-405b",
            ],
        ),
        ("int4-g64", &["quantize", "--scheme", "int4-g64"]),
        (
            "int4-asym",
            &["quantize", "--scheme", "int4-g128", "--asym"],
        ),
        ("q4km.gguf", &["quantize", "--scheme", "gguf:q4_k_m"]),
        ("q8.gguf", &["quantize", "--scheme", "gguf:q8_0"]),
    ];
    for (name, args) in cases {
        let out = root.path().join(name);
        let o = out.to_str().unwrap();
        let mut full = vec![args[0], i, o];
        full.extend_from_slice(&args[1..]);
        let mut dry = full.clone();
        dry.push("--dry-run");
        if args[0] == "quantize" {
            dry.push("--json");
        }
        let text = ok(&dry);
        assert!(!out.exists(), "{name}: --dry-run wrote the output");
        let plan: Value = if args[0] == "quantize" {
            serde_json::from_slice(&text).unwrap()
        } else {
            // convert --dry-run prints the table: use `qforge plan --to` for JSON
            let to = args[2];
            let mut p = vec!["plan", i, "--to", to, "--json"];
            p.extend_from_slice(&args[3..]);
            let mut v: Value = serde_json::from_slice(&ok(&p)).unwrap();
            // `plan` names the output itself; the file names inside are what matter
            if out.extension().is_some_and(|e| e == "gguf") {
                v["outputs"][0]["files"][0]["path"] = Value::from(*name);
            }
            v
        };
        ok(&full);
        assert_eq!(planned(&plan), sizes(&out), "{name}: planned vs written");
        let total: u64 = sizes(&out).values().sum();
        assert_eq!(plan["outputs"][0]["file_bytes"].as_u64(), Some(total));
    }
}

/// Llama 3.1 405B's config.json (no weights).
fn llama_405b_config(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        r#"{"architectures":["LlamaForCausalLM"],"bos_token_id":128000,"eos_token_id":[128001,128008,128009],
        "hidden_act":"silu","hidden_size":16384,"intermediate_size":53248,"max_position_embeddings":131072,
        "model_type":"llama","num_attention_heads":128,"num_hidden_layers":126,"num_key_value_heads":8,
        "rms_norm_eps":1e-05,"rope_scaling":{"factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
        "original_max_position_embeddings":8192,"rope_type":"llama3"},"rope_theta":500000.0,
        "tie_word_embeddings":false,"torch_dtype":"bfloat16","vocab_size":128256}"#,
    )
    .unwrap();
}

#[test]
fn plan_405b_from_config_alone() {
    let root = tempfile::tempdir().unwrap();
    let m = root.path().join("Llama-3.1-405B");
    llama_405b_config(&m);
    let m = m.to_str().unwrap();
    let tensor_bytes = |extra: &[&str]| {
        let mut a = vec!["plan", m, "--scheme", "fp8-rowwise", "--json"];
        a.extend_from_slice(extra);
        let v: Value = serde_json::from_slice(&ok(&a)).unwrap();
        v["outputs"][0]["tensor_bytes"].as_u64().unwrap()
    };
    // Meta's recipe: FFN of blocks 1..124 FP8 with F32 row scales, everything else BF16
    assert_eq!(
        tensor_bytes(&["--layout", "fbgemm", "--policy", "meta-405b"]),
        487_229_259_776
    );
    // every block linear in FP8 with F32 row scales
    assert_eq!(tensor_bytes(&["--layout", "fbgemm"]), 410_139_705_344);
    // the example recipe, planned through `qforge plan` with the model path substituted
    let recipe = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/405b-fp8.toml"),
    )
    .unwrap()
    .replace("./configs/Llama-3.1-405B-Instruct", m);
    let rp = root.path().join("405b.toml");
    std::fs::write(&rp, recipe).unwrap();
    let v: Value = serde_json::from_slice(&ok(&["plan", rp.to_str().unwrap(), "--json"])).unwrap();
    assert_eq!(
        v["outputs"][0]["tensor_bytes"].as_u64(),
        Some(487_229_259_776)
    );
    assert!(
        !root.path().join("out-405b").exists(),
        "plan wrote something"
    );
}

fn text(dir: &Path) -> PathBuf {
    // words the tiny tokenizer knows (its vocabulary is bytes and a few merges)
    let p = dir.join("eval.txt");
    let s = "the quick brown fox jumps over the lazy dog. ".repeat(200);
    std::fs::write(&p, s).unwrap();
    p
}

fn recipe(dir: &Path, input: &Path, budget: &str) -> PathBuf {
    let r = format!(
        r#"
[input]
model = "{}"
[output]
dir = "out"
[convert]
dtype = "f32"
shard_size = "4MB"
[[quantize]]
name = "fp8"
scheme = "fp8-rowwise"
[[quantize]]
name = "w4"
scheme = "int4-g64"
[[quantize]]
name = "q8"
scheme = "gguf:q8_0"
[verify]
data = "eval.txt"
ctx = 64
chunks = 2
{budget}
"#,
        input.display()
    );
    let p = dir.join("recipe.toml");
    std::fs::write(&p, r).unwrap();
    p
}

#[test]
fn pipeline_runs_reports_gates_and_skips_finished_steps() {
    let root = tempfile::tempdir().unwrap();
    let input = root.path().join("model");
    model_with_tokenizer(&input, model::SMALL);
    text(root.path());
    let rp = recipe(root.path(), &input, "max_kld = 10.0");
    let r = rp.to_str().unwrap();
    let o = qforge(&["pipeline", r, "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = root.path().join("out");
    let report: Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["passed"], true);
    let arts = report["artifacts"].as_array().unwrap();
    assert_eq!(arts.len(), 3);
    for a in arts {
        assert!(a["verify"]["result"]["kld_mean"].as_f64().unwrap() >= 0.0);
        assert!(out.join(a["name"].as_str().unwrap()).exists());
    }
    let first = model::files(&out);
    // the report's shape (keys and types, not numbers) is an interface: snapshot it
    insta::assert_snapshot!("pipeline-report-shape", shape(&report, 0));

    // a rerun runs nothing and rewrites the same bytes
    let o = qforge(&["pipeline", r]);
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.matches("skipped").count(), 7, "{err}");
    assert_eq!(model::files(&out), first);

    // a budget no quantization meets: exit 3, the report says why, artifacts are kept
    let rp = recipe(root.path(), &input, "max_kld = 0.0\nmin_top1 = 100.1");
    let o = qforge(&["pipeline", rp.to_str().unwrap()]);
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let report: Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["passed"], false);
    assert!(report["failures"].as_array().unwrap().len() >= 3);
    // budgets are not part of a step's key: nothing was recomputed
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.matches("skipped").count(), 7, "{err}");
}

/// Keys and value types of a JSON value, one per line (arrays by their first element).
fn shape(v: &Value, depth: usize) -> String {
    let pad = "  ".repeat(depth);
    match v {
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| match v {
                Value::Object(_) | Value::Array(_) => {
                    format!("{pad}{k}:\n{}", shape(v, depth + 1))
                }
                _ => format!("{pad}{k}: {}", shape(v, 0).trim()),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Array(a) => a.first().map_or(format!("{pad}[]"), |f| {
            format!("{pad}[\n{}", shape(f, depth + 1))
        }),
        Value::Null => "null".into(),
        Value::Bool(_) => "bool".into(),
        Value::Number(_) => "number".into(),
        Value::String(_) => "string".into(),
    }
}

#[test]
fn recipe_errors_are_one_line_with_a_hint() {
    let root = tempfile::tempdir().unwrap();
    let p = root.path().join("bad.toml");
    std::fs::write(
        &p,
        "[input]\nmodel = \"x\"\n[output]\ndir = \"o\"\n[[quantize]]\nname = \"a\"\nschem = \"fp8\"\n",
    )
    .unwrap();
    let o = qforge(&["pipeline", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("unknown field `schem`"), "{err}");
    assert!(err.contains("hint:"), "{err}");
}

#[cfg(unix)]
#[test]
fn hub_cache_references_resolve_and_missing_ones_say_where_qforge_looked() {
    let cache = tempfile::tempdir().unwrap();
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let repo = cache.path().join("models--org--tiny");
    let snap = repo.join("snapshots").join(sha);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), sha).unwrap();
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/hf");
    for (i, f) in ["config.json", "model.safetensors", "tokenizer.json"]
        .iter()
        .enumerate()
    {
        let blob = repo.join("blobs").join(format!("b{i}"));
        std::fs::copy(tiny.join(f), &blob).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/b{i}"), snap.join(f)).unwrap();
    }
    let run = |args: &[&str]| {
        Command::new(QFORGE)
            .args(args)
            .env("HF_HUB_CACHE", cache.path())
            .output()
            .unwrap()
    };
    let o = run(&["inspect", "org/tiny", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["config"]["hidden_size"], 32, "{v}");
    let o = run(&["inspect", &format!("org/tiny@{sha}")]);
    assert!(o.status.success());
    let o = run(&["inspect", "org/tiny@v9"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("refs/v9") && err.contains("$HF_HUB_CACHE"),
        "{err}"
    );
}

/// The example recipes for jobs 2 and 3 run for real on a small synthetic model (the model
/// reference replaced by its path): every artifact is written and verified, and the exit status
/// agrees with the report (random weights may well exceed a real model's budgets).
#[test]
fn example_recipes_run_on_a_synthetic_model() {
    let root = tempfile::tempdir().unwrap();
    let input = root.path().join("model");
    model_with_tokenizer(&input, model::SMALL);
    text(root.path());
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for (file, model_ref, artifacts) in [
        ("edge-8b.toml", "./configs/Llama-3.1-8B-Instruct", 2),
        ("ci-gate.toml", "$QFORGE_CACHE/demo/smollm2-hf", 1),
    ] {
        let text = std::fs::read_to_string(examples.join(file))
            .unwrap()
            .replace(model_ref, input.to_str().unwrap())
            .replace("$QFORGE_CACHE/text/hamlet.txt", "eval.txt");
        assert!(text.contains("eval.txt"), "{file}");
        let rp = root.path().join(file);
        std::fs::write(&rp, text).unwrap();
        let o = qforge(&["pipeline", rp.to_str().unwrap(), "--quiet"]);
        let r: Recipe = toml_dir(&rp);
        let report: Value =
            serde_json::from_slice(&std::fs::read(r.join("report.json")).unwrap()).unwrap();
        let passed = report["passed"].as_bool().unwrap();
        assert_eq!(
            o.status.code(),
            Some(if passed { 0 } else { 3 }),
            "{file}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let arts = report["artifacts"].as_array().unwrap();
        assert_eq!(arts.len(), artifacts, "{file}");
        for a in arts {
            assert!(
                a["verify"]["result"]["top1_pct"].as_f64().is_some(),
                "{file}"
            );
        }
    }
}

type Recipe = PathBuf;

/// The output directory a recipe names (`[output] dir`, relative to the recipe).
fn toml_dir(recipe: &Path) -> PathBuf {
    let text = std::fs::read_to_string(recipe).unwrap();
    let dir = text
        .lines()
        .find_map(|l| l.strip_prefix("dir = \""))
        .and_then(|l| l.split('"').next())
        .unwrap();
    recipe.parent().unwrap().join(dir)
}

#[test]
fn pipeline_calibration_steps_feed_the_quantize_steps_that_use_them() {
    let root = tempfile::tempdir().unwrap();
    let input = root.path().join("model");
    model_with_tokenizer(&input, model::SMALL);
    let data = text(root.path());
    for (method, scheme, extra) in [
        ("imatrix", "gguf:q4_k_m", "ctx = 64\nchunks = 2"),
        ("fp8-static", "fp8-static", "ctx = 32\nchunks = 4"),
        (
            "gptq",
            "int4-g32",
            "ctx = 32\nchunks = 4\nscheme = \"int4-g32\"",
        ),
        (
            "awq",
            "int4-g32",
            "ctx = 32\nchunks = 4\nscheme = \"int4-g32\"",
        ),
    ] {
        let out = root.path().join(format!("out-{method}"));
        let r = format!(
            "[input]\nmodel = \"{}\"\n[output]\ndir = \"{}\"\n[calibrate]\nmethod = \"{method}\"\n\
             data = \"{}\"\nname = \"calib-{method}\"\n{extra}\n[[quantize]]\nname = \"q\"\n\
             scheme = \"{scheme}\"\n[[quantize]]\nname = \"plain\"\nscheme = \"fp8-rowwise\"\n",
            input.display(),
            out.display(),
            data.display()
        );
        let rp = root.path().join(format!("{method}.toml"));
        std::fs::write(&rp, r).unwrap();
        let o = qforge(&["pipeline", rp.to_str().unwrap()]);
        assert!(
            o.status.success(),
            "{method}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(out.join(format!("calib-{method}")).exists(), "{method}");
        let q = if scheme.starts_with("gguf") {
            "q.gguf"
        } else {
            "q"
        };
        assert!(out.join(q).exists(), "{method}: {q}");
        // the calibrated artifact equals what the commands give by hand
        let by_hand = root.path().join(format!("by-hand-{method}"));
        let mut args = vec![
            "quantize".to_owned(),
            input.to_string_lossy().into_owned(),
            by_hand.to_string_lossy().into_owned(),
            "--scheme".into(),
            scheme.into(),
        ];
        let calib = out
            .join(format!("calib-{method}"))
            .to_string_lossy()
            .into_owned();
        args.extend([
            if method == "imatrix" {
                "--imatrix"
            } else {
                "--calib"
            }
            .to_owned(),
            calib,
        ]);
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        ok(&a);
        assert_eq!(
            model::files(&by_hand)
                .into_values()
                .collect::<Vec<_>>()
                .len(),
            model::files(&out.join(q)).len(),
            "{method}"
        );
        let strip = |m: BTreeMap<String, Vec<u8>>| {
            m.into_iter()
                .filter(|(k, _)| k != "manifest.json")
                .collect::<BTreeMap<_, _>>()
        };
        assert_eq!(
            strip(model::files(&by_hand)),
            strip(model::files(&out.join(q))),
            "{method}: pipeline and hand-run outputs differ"
        );
    }
}
