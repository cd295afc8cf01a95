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

/// SHA-256 (FIPS 180-4), so the tests can check every byte against torch's digests without a
/// hashing dependency.
fn sha256_hex(data: &[u8]) -> String {
    const K: [u32; 64] = [
        0x428a_2f98,
        0x7137_4491,
        0xb5c0_fbcf,
        0xe9b5_dba5,
        0x3956_c25b,
        0x59f1_11f1,
        0x923f_82a4,
        0xab1c_5ed5,
        0xd807_aa98,
        0x1283_5b01,
        0x2431_85be,
        0x550c_7dc3,
        0x72be_5d74,
        0x80de_b1fe,
        0x9bdc_06a7,
        0xc19b_f174,
        0xe49b_69c1,
        0xefbe_4786,
        0x0fc1_9dc6,
        0x240c_a1cc,
        0x2de9_2c6f,
        0x4a74_84aa,
        0x5cb0_a9dc,
        0x76f9_88da,
        0x983e_5152,
        0xa831_c66d,
        0xb003_27c8,
        0xbf59_7fc7,
        0xc6e0_0bf3,
        0xd5a7_9147,
        0x06ca_6351,
        0x1429_2967,
        0x27b7_0a85,
        0x2e1b_2138,
        0x4d2c_6dfc,
        0x5338_0d13,
        0x650a_7354,
        0x766a_0abb,
        0x81c2_c92e,
        0x9272_2c85,
        0xa2bf_e8a1,
        0xa81a_664b,
        0xc24b_8b70,
        0xc76c_51a3,
        0xd192_e819,
        0xd699_0624,
        0xf40e_3585,
        0x106a_a070,
        0x19a4_c116,
        0x1e37_6c08,
        0x2748_774c,
        0x34b0_bcb5,
        0x391c_0cb3,
        0x4ed8_aa4a,
        0x5b9c_ca4f,
        0x682e_6ff3,
        0x748f_82ee,
        0x78a5_636f,
        0x84c8_7814,
        0x8cc7_0208,
        0x90be_fffa,
        0xa450_6ceb,
        0xbef9_a3f7,
        0xc671_78f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09_e667,
        0xbb67_ae85,
        0x3c6e_f372,
        0xa54f_f53a,
        0x510e_527f,
        0x9b05_688c,
        0x1f83_d9ab,
        0x5be0_cd19,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (i, c) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let mut v = h;
        for i in 0..64 {
            let s1 = v[4].rotate_right(6) ^ v[4].rotate_right(11) ^ v[4].rotate_right(25);
            let ch = (v[4] & v[5]) ^ (!v[4] & v[6]);
            let t1 = v[7]
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = v[0].rotate_right(2) ^ v[0].rotate_right(13) ^ v[0].rotate_right(22);
            let maj = (v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]);
            let t2 = s0.wrapping_add(maj);
            v = [
                t1.wrapping_add(t2),
                v[0],
                v[1],
                v[2],
                v[3].wrapping_add(t1),
                v[4],
                v[5],
                v[6],
            ];
        }
        for (a, b) in h.iter_mut().zip(v) {
            *a = a.wrapping_add(b);
        }
    }
    h.iter().fold(String::with_capacity(64), |mut s, x| {
        use std::fmt::Write;
        write!(s, "{x:08x}").unwrap();
        s
    })
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
fn sha256_known_answers() {
    assert_eq!(
        sha256_hex(b""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        sha256_hex(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    let two_blocks = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    assert_eq!(
        sha256_hex(two_blocks),
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
    );
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
