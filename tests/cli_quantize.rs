//! `qforge quantize` end to end on the committed tiny fixtures: every input format, every
//! scheme, the same bytes from HF, Meta and GGUF sources, one-line errors with hints, and
//! atomic outputs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const QFORGE: &str = env!("CARGO_BIN_EXE_qforge");

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny")
        .join(rel)
}

fn run(args: &[&str]) -> Output {
    Command::new(QFORGE).args(args).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "qforge {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn quantize(input: &Path, output: &Path, scheme: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "quantize",
        input.to_str().unwrap(),
        output.to_str().unwrap(),
        "--scheme",
        scheme,
        "--json",
    ];
    args.extend_from_slice(extra);
    serde_json::from_str(&ok(&args)).unwrap()
}

#[test]
fn every_scheme_from_every_format() {
    let t = tempfile::tempdir().unwrap();
    for (i, src) in ["hf", "hf-sharded", "meta-mp1", "meta-mp2", "gguf/tiny.gguf"]
        .iter()
        .enumerate()
    {
        let src = fixture(src);
        if !src.exists() {
            continue;
        }
        for scheme in [
            "fp8-rowwise",
            "int4-g32",
            "int4-row",
            "gguf:q8_0",
            "gguf:q4_k_m",
        ] {
            let ext = if scheme.starts_with("gguf") {
                ".gguf"
            } else {
                ""
            };
            let out = t
                .path()
                .join(format!("{i}-{}{ext}", scheme.replace(':', "_")));
            let s = quantize(&src, &out, scheme, &[]);
            assert!(out.exists(), "{scheme}");
            assert!(s["bytes"].as_u64().unwrap() > 0);
            // inspect reads it back and reports the quantization
            let v: serde_json::Value =
                serde_json::from_str(&ok(&["inspect", out.to_str().unwrap(), "--json"])).unwrap();
            let schemes = v["quantization"]["schemes"].as_object().unwrap();
            let want = match scheme {
                "fp8-rowwise" => "fp8-rowwise",
                // int4-row: the fixture's rows are 32 wide (96 for down_proj): one group per row
                "int4-g32" | "int4-row" => "int4-g32",
                "gguf:q8_0" => "Q8_0",
                _ => "Q5_0", // Q4_K falls back to Q5_0 on 32-wide rows
            };
            assert!(schemes.contains_key(want), "{scheme}: {schemes:?}");
        }
    }
}

#[test]
fn hf_meta_and_gguf_sources_give_the_same_bytes() {
    let t = tempfile::tempdir().unwrap();
    let a = t.path().join("a");
    let b = t.path().join("b");
    quantize(&fixture("hf"), &a, "fp8-rowwise", &[]);
    quantize(&fixture("meta-mp2"), &b, "fp8-rowwise", &[]);
    assert_eq!(
        std::fs::read(a.join("model.safetensors")).unwrap(),
        std::fs::read(b.join("model.safetensors")).unwrap(),
        "Q/K rows must be permuted to HF order before quantizing"
    );
    let ga = t.path().join("a.gguf");
    let gb = t.path().join("b.gguf");
    quantize(&fixture("hf"), &ga, "gguf:q8_0", &[]);
    quantize(&fixture("meta-mp1"), &gb, "gguf:q8_0", &[]);
    let (x, y) = (std::fs::read(&ga).unwrap(), std::fs::read(&gb).unwrap());
    // same tensor data (metadata may differ: the Meta source has no HF tokenizer files)
    let tail = 4 * 1024;
    assert_eq!(x[x.len() - tail..], y[y.len() - tail..]);
}

#[test]
fn bad_arguments_are_one_line_errors_with_hints() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("x");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--scheme", "fp4"], "hint:"),
        (vec!["--scheme", "int4-g0"], "group size"),
        (
            vec!["--scheme", "gguf:q4_k_m", "--layout", "fbgemm"],
            "hint:",
        ),
        (vec!["--scheme", "int4-g64", "--layout", "fbgemm"], "fbgemm"),
    ];
    for (extra, want) in cases {
        let src = fixture("hf");
        let mut args = vec!["quantize", src.to_str().unwrap(), out.to_str().unwrap()];
        args.extend(extra);
        let r = run(&args);
        assert!(!r.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{err}");
        assert!(!out.exists(), "{args:?} left an output");
    }
    // a group size that does not divide the rows names the tensor and suggests one that does
    let r = run(&[
        "quantize",
        fixture("hf").to_str().unwrap(),
        out.to_str().unwrap(),
        "--scheme",
        "int4-g24",
    ]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(
        err.contains("model.layers.0.") && err.contains("16"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn existing_output_is_kept_unless_overwrite() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("q");
    quantize(&fixture("hf"), &out, "fp8-rowwise", &[]);
    let before = std::fs::read(out.join("model.safetensors")).unwrap();
    let r = run(&[
        "quantize",
        fixture("hf").to_str().unwrap(),
        out.to_str().unwrap(),
        "--scheme",
        "int4-g32",
    ]);
    assert!(!r.status.success());
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        before
    );
    quantize(&fixture("hf"), &out, "int4-g32", &["--overwrite"]);
    assert_ne!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        before
    );
}
