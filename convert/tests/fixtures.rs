//! The committed fixtures were written by the real producers (torch.save, the safetensors
//! library, gguf-py; see scripts/gen_fixtures.py), and each directory's `expected.json` records
//! what those libraries read back: dtype, shape, the sha256 of the tensor's contiguous bytes and
//! of its f32 decoding (gguf-py's dequantization for ggml blocks). qforge must reproduce every
//! one of them bit for bit.

use std::path::{Path, PathBuf};

use qforge_convert::Checkpoint;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/tiny")
        .join(rel)
}

fn expected(dir: &str) -> Value {
    let text = std::fs::read_to_string(fixture(dir).join("expected.json")).expect("expected.json");
    serde_json::from_str(&text).expect("valid JSON")
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn f32_sha(values: &[f32]) -> String {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    sha(&bytes)
}

/// Check every tensor of `want` (an `expected.json` "tensors" object) against the checkpoint;
/// returns how many were checked.
fn check_checkpoint(ckpt: &Checkpoint, want: &Value) -> usize {
    let want = want.as_object().expect("tensors object");
    assert_eq!(ckpt.tensors.len(), want.len(), "tensor count");
    for (name, w) in want {
        let t = ckpt
            .tensor(name)
            .unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(t.dtype.name(), w["dtype"].as_str().unwrap(), "{name} dtype");
        let shape: Vec<u64> = w["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(t.shape, shape, "{name} shape");
        assert_eq!(
            sha(&ckpt.bytes(t).unwrap()),
            w["sha256"].as_str().unwrap(),
            "{name} bytes"
        );
        if let Some(f) = w.get("f32_sha256").and_then(Value::as_str) {
            assert_eq!(f32_sha(&ckpt.to_f32(t).unwrap()), f, "{name} f32 decoding");
        }
    }
    want.len()
}

#[test]
fn hf_single_file_matches_safetensors_library() {
    let ckpt = Checkpoint::open(fixture("hf")).unwrap();
    let n = check_checkpoint(
        &ckpt,
        &expected("hf")["files"]["model.safetensors"]["tensors"],
    );
    assert_eq!(n, 21);
    assert_eq!(ckpt.tokenizer.vocab_size, Some(128));
}

#[test]
fn hf_sharded_matches_safetensors_library() {
    let ckpt = Checkpoint::open(fixture("hf-sharded")).unwrap();
    assert_eq!(ckpt.files().count(), 2);
    let exp = expected("hf-sharded");
    let mut all = serde_json::Map::new();
    for f in exp["files"].as_object().unwrap().values() {
        all.extend(f["tensors"].as_object().unwrap().clone());
    }
    assert_eq!(check_checkpoint(&ckpt, &Value::Object(all)), 21);
    // The sharded and single-file fixtures hold the same model.
    let single = Checkpoint::open(fixture("hf")).unwrap();
    for t in &single.tensors {
        let u = ckpt.tensor(&t.name).unwrap();
        assert_eq!(
            single.bytes(t).unwrap(),
            ckpt.bytes(u).unwrap(),
            "{}",
            t.name
        );
    }
}
