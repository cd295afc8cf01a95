//! Meta checkpoints written by real `torch.save` (tests/fixtures/tiny, from
//! scripts/gen_fixtures.py) read back exactly: every tensor's dtype, shape and bytes (SHA-256 of
//! the raw little-endian bytes and of the f32 decoding, as torch computed them), and MP2 merged
//! tensors byte-identical to the MP1 model.

use std::path::{Path, PathBuf};

use qforge_convert::pth::PthFile;
use qforge_convert::{Checkpoint, Format, TensorLayout};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/tiny")
        .join(name)
}

fn expected(dir: &str) -> Value {
    let text = std::fs::read_to_string(fixture(dir).join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Hex SHA-256, as recorded in expected.json.
fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

fn f32_le(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Compare one tensor (its dtype name, shape, raw bytes and f32 decoding) with its expected.json
/// entry.
fn check_tensor(what: &str, dtype: &str, shape: &[u64], bytes: &[u8], f32s: &[f32], want: &Value) {
    assert_eq!(dtype, want["dtype"].as_str().unwrap(), "{what}: dtype");
    let want_shape: Vec<u64> = want["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(shape, want_shape.as_slice(), "{what}: shape");
    assert_eq!(
        sha256_hex(bytes),
        want["sha256"].as_str().unwrap(),
        "{what}: bytes"
    );
    if let Some(f) = want.get("f32_sha256") {
        assert_eq!(
            sha256_hex(&f32_le(f32s)),
            f.as_str().unwrap(),
            "{what}: f32 values"
        );
    }
    let head: Vec<f32> = want["head"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(&f32s[..head.len()], head.as_slice(), "{what}: first values");
}

/// Every tensor of `ckpt` named in `want` (an expected.json `tensors` object) matches, and there
/// are no others.
fn check_checkpoint(ckpt: &Checkpoint, want: &Value, what: &str) {
    let want = want.as_object().unwrap();
    assert_eq!(ckpt.tensors.len(), want.len(), "{what}: tensor count");
    for (name, w) in want {
        let t = ckpt
            .tensor(name)
            .unwrap_or_else(|| panic!("{what}: no tensor {name}"));
        let bytes = ckpt.bytes(t).unwrap();
        check_tensor(
            &format!("{what} {name}"),
            t.dtype.name(),
            &t.shape,
            &bytes,
            &ckpt.to_f32(t).unwrap(),
            w,
        );
    }
}

fn check_pth_file(path: &Path, want: &Value) {
    let f = PthFile::open(path).unwrap();
    let want = want.as_object().unwrap();
    let what = path.file_name().unwrap().to_string_lossy();
    assert_eq!(f.tensors().len(), want.len(), "{what}: tensor count");
    for (name, w) in want {
        let t = f
            .tensor(name)
            .unwrap_or_else(|| panic!("{what}: no tensor {name}"));
        let bytes = f.bytes(t).unwrap();
        check_tensor(
            &format!("{what} {name}"),
            t.dtype.name(),
            &t.shape,
            &bytes,
            &f.to_f32(t).unwrap(),
            w,
        );
        let contiguous = w["contiguous"].as_bool().unwrap();
        assert_eq!(
            matches!(t.layout, TensorLayout::Contiguous(_)),
            contiguous,
            "{what} {name}: layout {:?}",
            t.layout
        );
    }
}

#[test]
fn meta_mp1_matches_torch() {
    let ckpt = Checkpoint::open(fixture("meta-mp1")).unwrap();
    assert_eq!(ckpt.format, Format::Meta);
    let c = &ckpt.config;
    assert_eq!(
        (
            c.hidden_size,
            c.num_layers,
            c.num_heads,
            c.num_kv_heads,
            c.head_dim,
            c.intermediate_size,
            c.vocab_size
        ),
        (32, 2, 4, 2, 8, 96, 128)
    );
    assert_eq!(
        (ckpt.tokenizer.kind.as_str(), ckpt.tokenizer.vocab_size),
        ("tiktoken", Some(128))
    );
    assert_eq!(
        ckpt.tokenizer.files,
        [fixture("meta-mp1").join("tokenizer.model")]
    );
    let exp = expected("meta-mp1");
    check_checkpoint(
        &ckpt,
        &exp["files"]["consolidated.00.pth"]["tensors"],
        "meta-mp1",
    );
    // The layer tensors are views into one shared storage per layer, mapped in place.
    let wk = ckpt.tensor("layers.0.attention.wk.weight").unwrap();
    let wq = ckpt.tensor("layers.0.attention.wq.weight").unwrap();
    let (TensorLayout::Contiguous(k), TensorLayout::Contiguous(q)) = (&wk.layout, &wq.layout)
    else {
        panic!("views are contiguous")
    };
    assert_eq!(
        k.offset - q.offset,
        1024 * 2,
        "wk follows wq (1024 bf16 elements) in the layer storage"
    );
}

#[test]
fn meta_mp2_shards_match_torch() {
    let exp = expected("meta-mp2");
    for (file, want) in exp["files"].as_object().unwrap() {
        check_pth_file(&fixture("meta-mp2").join(file), &want["tensors"]);
    }
}

#[test]
fn meta_mp2_merges_to_mp1_exactly() {
    let mp2 = Checkpoint::open(fixture("meta-mp2")).unwrap();
    let mp1 = Checkpoint::open(fixture("meta-mp1")).unwrap();
    assert_eq!(mp2.config, mp1.config);
    assert!(
        mp2.notes
            .iter()
            .any(|n| n == "merged 2 model-parallel shards"),
        "{:?}",
        mp2.notes
    );
    check_checkpoint(
        &mp2,
        &expected("meta-mp2")["merged"]["tensors"],
        "meta-mp2 merged",
    );
    assert_eq!(mp2.tensors.len(), mp1.tensors.len());
    for t1 in &mp1.tensors {
        let t2 = mp2.tensor(&t1.name).unwrap();
        assert_eq!(
            (t2.dtype, &t2.shape, t2.key),
            (t1.dtype, &t1.shape, t1.key),
            "{}",
            t1.name
        );
        assert_eq!(
            mp2.bytes(t2).unwrap(),
            mp1.bytes(t1).unwrap(),
            "{}",
            t1.name
        );
        let merged_on = match &t2.layout {
            TensorLayout::Concat { dim, parts } => {
                assert_eq!(parts.len(), 2);
                Some(*dim)
            }
            _ => None,
        };
        let name = t1.name.as_str();
        let want = if name.ends_with("norm.weight") {
            None
        } else if name.ends_with("wo.weight") || name.ends_with("w2.weight") {
            Some(1)
        } else {
            Some(0)
        };
        assert_eq!(merged_on, want, "{name}");
    }
}

#[test]
fn odd_pth_matches_torch() {
    // FP8 via _rebuild_tensor_v3 + UntypedStorage, a Parameter, integer and bool storages, a
    // transposed and a strided view, a 0-d scalar, views sharing a storage at non-zero offsets, an
    // empty tensor.
    let exp = expected("meta-extras");
    check_pth_file(
        &fixture("meta-extras").join("odd.pth"),
        &exp["files"]["odd.pth"]["tensors"],
    );
}

#[test]
fn meta_without_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["params.json", "consolidated.00.pth"] {
        std::fs::copy(fixture("meta-mp1").join(f), dir.path().join(f)).unwrap();
    }
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(
        (ckpt.tokenizer.kind.as_str(), ckpt.tokenizer.files.len()),
        ("none", 0)
    );
    // A SentencePiece (binary protobuf) tokenizer is recognized as such.
    std::fs::write(
        dir.path().join("tokenizer.model"),
        b"\x0a\x0b\x0a\x05<unk>\x15\x00\x00\x00\x00\x18\x02",
    )
    .unwrap();
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(
        (ckpt.tokenizer.kind.as_str(), ckpt.tokenizer.vocab_size),
        ("sentencepiece", None)
    );
}
