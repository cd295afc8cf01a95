//! Round trips through every format are bit-exact on the committed fixtures (written by the
//! safetensors library, torch.save and gguf-py): the final safetensors file is byte-identical to
//! the original.

use std::path::{Path, PathBuf};
use std::process::Command;

const QFORGE: &str = env!("CARGO_BIN_EXE_qforge");

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny")
        .join(rel)
}

fn qforge(args: &[&str]) {
    let out = Command::new(QFORGE).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "qforge {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn convert(input: &Path, output: &Path, extra: &[&str]) {
    let mut args = vec!["convert", input.to_str().unwrap(), output.to_str().unwrap()];
    args.extend_from_slice(extra);
    qforge(&args);
}

fn original() -> Vec<u8> {
    std::fs::read(fixture("hf/model.safetensors")).unwrap()
}

#[test]
fn hf_to_gguf_f32_to_hf_is_byte_identical() {
    let t = tempfile::tempdir().unwrap();
    convert(
        &fixture("hf"),
        &t.path().join("m.gguf"),
        &["--to", "gguf", "--dtype", "f32"],
    );
    convert(
        &t.path().join("m.gguf"),
        &t.path().join("back"),
        &["--to", "hf", "--dtype", "bf16"],
    );
    assert_eq!(
        std::fs::read(t.path().join("back/model.safetensors")).unwrap(),
        original()
    );
}

#[test]
fn hf_to_gguf_bf16_to_hf_is_byte_identical() {
    let t = tempfile::tempdir().unwrap();
    convert(
        &fixture("hf"),
        &t.path().join("m.gguf"),
        &["--to", "gguf", "--dtype", "bf16"],
    );
    // 1-D tensors are F32 in GGUF (as llama.cpp writes them); BF16 -> F32 -> BF16 is exact.
    convert(
        &t.path().join("m.gguf"),
        &t.path().join("back"),
        &["--to", "hf", "--dtype", "bf16"],
    );
    assert_eq!(
        std::fs::read(t.path().join("back/model.safetensors")).unwrap(),
        original()
    );
}

#[test]
fn hf_to_meta_mp2_to_hf_is_byte_identical() {
    let t = tempfile::tempdir().unwrap();
    convert(
        &fixture("hf"),
        &t.path().join("meta"),
        // Meta's format cannot hold the fixture's tokenizer.json (refused unless allowed).
        &["--to", "meta", "--mp", "2", "--allow-lossy"],
    );
    convert(
        &t.path().join("meta"),
        &t.path().join("back"),
        &["--to", "hf"],
    );
    assert_eq!(
        std::fs::read(t.path().join("back/model.safetensors")).unwrap(),
        original()
    );
}

#[test]
fn meta_mp2_to_mp1_equals_the_torch_written_mp1() {
    let t = tempfile::tempdir().unwrap();
    convert(
        &fixture("meta-mp2"),
        &t.path().join("mp1"),
        &["--to", "meta", "--mp", "1"],
    );
    // Same tensors, byte for byte, as torch.save wrote for MP1 (compare through HF, which
    // normalizes torch's shared-storage layout of the fixture).
    convert(&t.path().join("mp1"), &t.path().join("a"), &["--to", "hf"]);
    convert(&fixture("meta-mp1"), &t.path().join("b"), &["--to", "hf"]);
    assert_eq!(
        std::fs::read(t.path().join("a/model.safetensors")).unwrap(),
        std::fs::read(t.path().join("b/model.safetensors")).unwrap()
    );
    assert_eq!(
        std::fs::read(t.path().join("a/model.safetensors")).unwrap(),
        original()
    );
}

#[test]
fn gguf_to_hf_to_gguf_keeps_every_float_tensor_and_key() {
    let t = tempfile::tempdir().unwrap();
    convert(
        &fixture("gguf/tiny.gguf"),
        &t.path().join("hf"),
        &["--to", "hf", "--dtype", "f32"],
    );
    convert(
        &t.path().join("hf"),
        &t.path().join("again.gguf"),
        &["--to", "gguf", "--dtype", "f32"],
    );
    convert(
        &t.path().join("again.gguf"),
        &t.path().join("hf2"),
        &["--to", "hf", "--dtype", "f32"],
    );
    assert_eq!(
        std::fs::read(t.path().join("hf/model.safetensors")).unwrap(),
        std::fs::read(t.path().join("hf2/model.safetensors")).unwrap()
    );
    assert_eq!(
        std::fs::read(t.path().join("hf/tokenizer.json")).unwrap(),
        std::fs::read(t.path().join("hf2/tokenizer.json")).unwrap()
    );
}
