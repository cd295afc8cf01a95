//! `examples/*.toml` as shipped: the Llama 3.1 recipes plan from the configs shipped in
//! `examples/configs/` (no weights) through `qforge plan` and `qforge pipeline --dry-run`, with
//! the exact 405B figure; `ci-gate.toml` finds what `scripts/demo.sh` leaves in
//! `$QFORGE_CACHE/demo` (here a stand-in model in a scratch cache). The full runs on SmolLM2
//! after the real demo are `tests/interop/test_readme_examples.py` (CI's interop phase).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const QFORGE: &str = env!("CARGO_BIN_EXE_qforge");

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// `qforge args` with `QFORGE_CACHE` set to `cache`; stdout parsed as JSON on success.
fn run_json(args: &[&str], cache: &Path) -> Value {
    let o = Command::new(QFORGE)
        .args(args)
        .env("QFORGE_CACHE", cache)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "qforge {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Every recipe in examples/ is listed here, so a new one cannot go untested.
const RECIPES: [&str; 3] = ["405b-fp8.toml", "ci-gate.toml", "edge-8b.toml"];

#[test]
fn every_example_is_covered() {
    let mut found: Vec<String> = std::fs::read_dir(examples())
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            Path::new(&n)
                .extension()
                .is_some_and(|e| e == "toml")
                .then_some(n)
        })
        .collect();
    found.sort();
    assert_eq!(found, RECIPES);
}

#[test]
fn llama_recipes_plan_from_the_shipped_configs() {
    let cache = tempfile::tempdir().unwrap();
    let existed = ["out-405b", "out-edge"].map(|o| examples().join(o).exists());
    for (recipe, tensor_bytes) in [
        // Meta's recipe: FFN of blocks 1..124 FP8 with F32 row scales, everything else BF16
        ("405b-fp8.toml", Some(487_229_259_776u64)),
        ("edge-8b.toml", None),
    ] {
        let p = examples().join(recipe);
        let p = p.to_str().unwrap();
        let plan = run_json(&["plan", p, "--json"], cache.path());
        let dry = run_json(&["pipeline", p, "--dry-run", "--json"], cache.path());
        assert_eq!(plan["outputs"], dry["outputs"], "{recipe}");
        let outs = plan["outputs"].as_array().unwrap();
        assert!(!outs.is_empty(), "{recipe}");
        for o in outs {
            assert!(
                o["tensor_bytes"].as_u64().unwrap() > 1 << 30,
                "{recipe}: {o}"
            );
        }
        if let Some(b) = tensor_bytes {
            assert_eq!(outs[0]["tensor_bytes"].as_u64(), Some(b), "{recipe}");
        }
    }
    // planning writes nothing
    assert_eq!(
        ["out-405b", "out-edge"].map(|o| examples().join(o).exists()),
        existed
    );
}

#[test]
fn shipped_configs_plan() {
    let cache = tempfile::tempdir().unwrap();
    // parameters of the bf16 checkpoints, from the shapes (embedding and head untied)
    for (name, params) in [
        ("Llama-3.1-8B-Instruct", 8_030_261_248u64),
        ("Llama-3.1-70B-Instruct", 70_553_706_496),
        ("Llama-3.1-405B-Instruct", 405_853_388_800),
    ] {
        let m = examples().join("configs").join(name);
        let m = m.to_str().unwrap();
        let plan = run_json(
            &["plan", m, "--to", "hf", "--dtype", "bf16", "--json"],
            cache.path(),
        );
        assert_eq!(
            plan["outputs"][0]["tensor_bytes"].as_u64(),
            Some(2 * params),
            "{name}"
        );
    }
}

#[test]
fn ci_gate_finds_the_demo_model_in_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let demo = cache.path().join("demo/smollm2-hf");
    std::fs::create_dir_all(&demo).unwrap();
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/hf");
    for e in std::fs::read_dir(&tiny).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), demo.join(e.file_name())).unwrap();
    }
    let p = examples().join("ci-gate.toml");
    let plan = run_json(&["plan", p.to_str().unwrap(), "--json"], cache.path());
    assert_eq!(plan["input"].as_str(), Some(demo.to_str().unwrap()));
    // the model missing: the error names the path the variable gave
    let empty = tempfile::tempdir().unwrap();
    let o = Command::new(QFORGE)
        .args(["plan", p.to_str().unwrap()])
        .env("QFORGE_CACHE", empty.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    let want = empty.path().join("demo/smollm2-hf");
    assert!(err.contains(want.to_str().unwrap()), "{err}");
}
