//! `qforge quantize` end to end on the committed tiny fixtures: every input format, every
//! scheme, the same bytes from HF, Meta and GGUF sources, one-line errors with hints, and
//! atomic outputs.

use qforge_quantize::dequant::WeightRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use qforge_codecs::DType;
use qforge_convert::{Checkpoint, LayerTensor, Part, TensorId};

#[path = "support/model.rs"]
mod model;
use model::remove;

const QFORGE: &str = env!("CARGO_BIN_EXE_qforge");

/// One scheme of each codec family: FP8, INT4 per group and per row, a legacy and a K-quant mix.
const SCHEMES: [&str; 5] = [
    "fp8-rowwise",
    "int4-g32",
    "int4-row",
    "gguf:q8_0",
    "gguf:q4_k_m",
];

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
        for scheme in SCHEMES {
            let ext = if scheme.starts_with("gguf") {
                ".gguf"
            } else {
                ""
            };
            let out = t
                .path()
                .join(format!("{i}-{}{ext}", scheme.replace(':', "_")));
            // tiny.gguf is itself quantized (Q4_0 … Q8_0): requantizing it is opted into
            let s = quantize(&src, &out, scheme, &["--allow-requantize"]);
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
    // a group size that does not divide the rows names the tensor and suggests, once, the
    // groups servers run that divide every row (the rows are 32 and 96 wide: g32, or per-row)
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
        err.contains("model.layers.0.") && err.contains("--scheme int4-g32 or --scheme int4-row"),
        "{err}"
    );
    assert_eq!(err.matches("does not divide").count(), 1, "{err}");
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

/// A copy of the tiny HF fixture with `value` poked into `tensor` at (`row`, `col`) (BF16).
fn poisoned(dir: &Path, tensor: &str, row: usize, col: usize, value: f32) -> PathBuf {
    let out = dir.join(format!("poisoned-{row}-{col}"));
    std::fs::create_dir_all(&out).unwrap();
    for e in std::fs::read_dir(fixture("hf")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, out.join(p.file_name().unwrap())).unwrap();
    }
    let st = out.join("model.safetensors");
    let mut bytes = std::fs::read(&st).unwrap();
    let n = usize::try_from(u64::from_le_bytes(bytes[..8].try_into().unwrap())).unwrap();
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let t = &header[tensor];
    assert_eq!(t["dtype"], "BF16");
    let cols = usize::try_from(t["shape"][1].as_u64().unwrap()).unwrap();
    let start = usize::try_from(t["data_offsets"][0].as_u64().unwrap()).unwrap();
    let at = 8 + n + start + 2 * (row * cols + col);
    let bf16 = (value.to_bits() >> 16) as u16;
    bytes[at..at + 2].copy_from_slice(&bf16.to_le_bytes());
    std::fs::write(&st, bytes).unwrap();
    out
}

#[test]
fn bad_weights_stop_the_run_unless_a_policy_is_chosen() {
    let t = tempfile::tempdir().unwrap();
    let down = "model.layers.0.mlp.down_proj.weight";
    let nan = poisoned(t.path(), down, 1, 2, f32::NAN);
    let huge = poisoned(t.path(), down, 3, 5, 1.0e6);
    for (model, what) in [
        (&nan, "non-finite value at row 1, column 2"),
        (&huge, "row 3, column 5 exceeds the limit"),
    ] {
        for scheme in SCHEMES {
            let out = t.path().join("out");
            let mut args = vec![
                "quantize",
                model.to_str().unwrap(),
                out.to_str().unwrap(),
                "--scheme",
                scheme,
            ];
            let o = run(&args);
            assert!(!o.status.success(), "{scheme}: accepted a bad weight");
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(err.contains(what), "{scheme}: {err}");
            assert!(err.contains("down_proj"), "{scheme}: {err}");
            assert!(err.contains("hint: "), "{scheme}: {err}");
            assert!(!out.exists(), "{scheme}: output after an error");

            // clamp: quantized anyway, reported; the dequantized weights are all finite and
            // bounded by the limit (plus the codec's rounding: INT4's -8 code reaches 8/7.5 of
            // the group maximum)
            args.extend(["--bad-weights", "clamp", "--max-abs-weight", "100"]);
            let o = run(&args);
            assert!(
                o.status.success(),
                "{scheme} clamp: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(
                err.contains("1 bad value(s)") && err.contains("clamped"),
                "{err}"
            );
            let w = Checkpoint::open(&out)
                .unwrap()
                .weight_f32(TensorId::Layer {
                    index: 0,
                    kind: LayerTensor::Down,
                })
                .unwrap();
            assert!(
                w.iter().all(|v| v.is_finite() && v.abs() <= 110.0),
                "{scheme}"
            );
            remove(&out);

            // skip: that tensor is left unquantized, the others are quantized
            let n = args.len();
            args[n - 3] = "skip";
            let o = run(&args);
            assert!(
                o.status.success(),
                "{scheme} skip: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            let ckpt = Checkpoint::open(&out).unwrap();
            let dtype_of = |kind| {
                let id = TensorId::Layer { index: 0, kind };
                ckpt.part(id, Part::Weight)
                    .or_else(|| ckpt.part(id, Part::WeightPacked))
                    .unwrap_or_else(|| panic!("{scheme}: no weight for {id:?}"))
                    .dtype
            };
            let (kept, other) = (dtype_of(LayerTensor::Down), dtype_of(LayerTensor::Up));
            let want = if scheme.starts_with("gguf") {
                DType::F32
            } else {
                DType::BF16
            };
            assert_eq!(kept, want, "{scheme}");
            assert_ne!(other, want, "{scheme}: the clean tensors are quantized");
            remove(&out);
        }
    }
}
