//! Hostile Hugging Face checkpoints: each test builds a malformed safetensors file, index or
//! directory in a fresh temporary directory and asserts the exact error.

use std::path::{Path, PathBuf};

use qforge_convert::hf::SafetensorsError;
use qforge_convert::{Checkpoint, ConfigError, Error};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/tiny")
        .join(rel)
}

/// A temp dir holding the tiny fixture's config.json (2 layers, hidden 32, vocab 128).
fn model_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("hf/config.json"), dir.path().join("config.json")).unwrap();
    dir
}

/// Safetensors bytes from a raw header string and a data section.
fn st(header: &str, data: &[u8]) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(data);
    b
}

fn open_with(bytes: &[u8]) -> Result<Checkpoint, Error> {
    let dir = model_dir();
    std::fs::write(dir.path().join("model.safetensors"), bytes).unwrap();
    Checkpoint::open(dir.path())
}

fn st_kind(r: Result<Checkpoint, Error>) -> SafetensorsError {
    match r {
        Err(Error::Safetensors { kind, .. }) => kind,
        other => panic!("expected a safetensors error, got {other:?}"),
    }
}

#[test]
fn shorter_than_header_length() {
    assert_eq!(
        st_kind(open_with(&[1, 2, 3])),
        SafetensorsError::HeaderTooSmall
    );
}

#[test]
fn header_length_above_limit() {
    let mut b = (1u64 << 40).to_le_bytes().to_vec();
    b.extend_from_slice(b"{}");
    assert_eq!(st_kind(open_with(&b)), SafetensorsError::HeaderTooLarge);
}

#[test]
fn header_length_past_eof() {
    let mut b = 1000u64.to_le_bytes().to_vec();
    b.extend_from_slice(b"{}");
    assert_eq!(st_kind(open_with(&b)), SafetensorsError::HeaderPastEof);
}

#[test]
fn header_not_json() {
    assert!(matches!(
        st_kind(open_with(&st("{not json", &[]))),
        SafetensorsError::InvalidHeader(_)
    ));
}

#[test]
fn header_not_utf8() {
    let mut b = 4u64.to_le_bytes().to_vec();
    b.extend_from_slice(&[b'{', 0xFF, 0xFE, b'}']);
    assert!(matches!(
        st_kind(open_with(&b)),
        SafetensorsError::InvalidHeader(_)
    ));
}

#[test]
fn overlapping_offsets() {
    let h = r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}"#;
    assert!(matches!(
        st_kind(open_with(&st(h, &[0; 6]))),
        SafetensorsError::InvalidOffset(_)
    ));
}

#[test]
fn gapped_offsets() {
    let h = r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[8,12]}}"#;
    assert!(matches!(
        st_kind(open_with(&st(h, &[0; 12]))),
        SafetensorsError::InvalidOffset(_)
    ));
}

#[test]
fn offsets_past_end_of_file() {
    let h = r#"{"a":{"dtype":"U8","shape":[64],"data_offsets":[0,64]}}"#;
    assert_eq!(
        st_kind(open_with(&st(h, &[0; 10]))),
        SafetensorsError::IncompleteBuffer
    );
}

#[test]
fn trailing_bytes_after_last_tensor_polyglot() {
    let h = r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#;
    let mut data = vec![0u8; 4];
    data.extend_from_slice(b"PK\x03\x04 a zip hiding after the tensors");
    assert_eq!(
        st_kind(open_with(&st(h, &data))),
        SafetensorsError::IncompleteBuffer
    );
}

#[test]
fn byte_range_disagrees_with_shape() {
    let h = r#"{"a":{"dtype":"BF16","shape":[4],"data_offsets":[0,4]}}"#;
    assert_eq!(
        st_kind(open_with(&st(h, &[0; 4]))),
        SafetensorsError::TensorInvalidInfo
    );
}

#[test]
fn element_count_overflows() {
    let h = r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,4]}}"#;
    assert_eq!(
        st_kind(open_with(&st(h, &[0; 4]))),
        SafetensorsError::Overflow
    );
}

#[test]
fn duplicate_tensor_names() {
    let h = r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#;
    assert_eq!(
        st_kind(open_with(&st(h, &[0; 4]))),
        SafetensorsError::DuplicateName("a".into())
    );
}

#[test]
fn dtype_without_codec() {
    let h = r#"{"a":{"dtype":"C64","shape":[1],"data_offsets":[0,8]}}"#;
    assert_eq!(
        st_kind(open_with(&st(h, &[0; 8]))),
        SafetensorsError::UnsupportedDType {
            tensor: "a".into(),
            dtype: "C64".into()
        }
    );
}

#[test]
fn dtype_unknown_to_safetensors() {
    let h = r#"{"a":{"dtype":"Q9_X","shape":[1],"data_offsets":[0,1]}}"#;
    assert!(matches!(
        st_kind(open_with(&st(h, &[0; 1]))),
        SafetensorsError::InvalidHeader(_)
    ));
}

#[test]
fn unknown_tensor_name() {
    let h = r#"{"model.layers.0.self_attn.q_proj.bias":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#;
    assert!(
        matches!(open_with(&st(h, &[0; 4])), Err(Error::UnknownTensor { name, .. }) if name == "model.layers.0.self_attn.q_proj.bias")
    );
}

#[test]
fn shape_disagrees_with_config() {
    let h = r#"{"model.norm.weight":{"dtype":"BF16","shape":[31],"data_offsets":[0,62]}}"#;
    assert!(
        matches!(open_with(&st(h, &[0; 62])), Err(Error::ShapeMismatch { tensor, expected, .. }) if tensor == "model.norm.weight" && expected == vec![32])
    );
}

#[test]
fn layer_index_beyond_config() {
    let h = r#"{"model.layers.2.input_layernorm.weight":{"dtype":"BF16","shape":[32],"data_offsets":[0,64]}}"#;
    assert!(matches!(
        open_with(&st(h, &[0; 64])),
        Err(Error::ShapeMismatch { .. })
    ));
}

#[test]
fn missing_tensor() {
    let h = r#"{"model.norm.weight":{"dtype":"BF16","shape":[32],"data_offsets":[0,64]}}"#;
    assert!(
        matches!(open_with(&st(h, &[0; 64])), Err(Error::MissingTensor { name, .. }) if name == "model.embed_tokens.weight")
    );
}

#[test]
fn malformed_config() {
    let dir = model_dir();
    std::fs::write(
        dir.path().join("config.json"),
        b"{\"model_type\": \"llama\", \"hidden_size\": -4}",
    )
    .unwrap();
    std::fs::write(dir.path().join("model.safetensors"), st("{}", &[])).unwrap();
    assert!(matches!(
        Checkpoint::open(dir.path()),
        Err(Error::Config {
            kind: ConfigError::Invalid {
                field: "hidden_size",
                ..
            },
            ..
        })
    ));
}

/// A copy of the sharded fixture whose index can be edited.
fn sharded_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixture("hf-sharded")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    dir
}

fn edit_index(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("model.safetensors.index.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(p, v.to_string()).unwrap();
}

#[test]
fn index_names_shard_outside_model_dir() {
    let dir = sharded_copy();
    edit_index(dir.path(), |v| {
        v["weight_map"]["model.norm.weight"] = "../../etc/passwd".into();
    });
    assert!(
        matches!(st_kind(Checkpoint::open(dir.path())), SafetensorsError::ShardOutsideModel(n) if n == "../../etc/passwd")
    );
}

#[cfg(unix)]
#[test]
fn index_shard_is_symlink_leading_outside() {
    let dir = sharded_copy();
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("evil.safetensors");
    std::fs::copy(dir.path().join("model-00002-of-00002.safetensors"), &target).unwrap();
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    std::os::unix::fs::symlink(&target, dir.path().join("model-00002-of-00002.safetensors"))
        .unwrap();
    assert!(matches!(
        st_kind(Checkpoint::open(dir.path())),
        SafetensorsError::ShardOutsideModel(_)
    ));
}

/// A Hugging Face hub cache holding the sharded fixture as `models--org--<repo>/snapshots/<rev>/`
/// whose files are symbolic links into `blobs/` (as `huggingface_hub` lays it out); returns the
/// cache root and the snapshot directory. `blob_repo` is the repository whose `blobs/` the
/// second shard's link points into.
#[cfg(unix)]
fn hub_snapshot(blob_repo: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--org--tiny");
    let snap = repo
        .join("snapshots")
        .join("0123456789abcdef0123456789abcdef01234567");
    std::fs::create_dir_all(&snap).unwrap();
    for e in std::fs::read_dir(fixture("hf-sharded")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let owner = if name == "model-00002-of-00002.safetensors" {
            cache.path().join(blob_repo)
        } else {
            repo.clone()
        };
        let blobs = owner.join("blobs");
        std::fs::create_dir_all(&blobs).unwrap();
        let blob = blobs.join(format!("blob-{name}"));
        std::fs::copy(&p, &blob).unwrap();
        let rel = Path::new("../..").join(blob.strip_prefix(&repo).unwrap_or(&blob));
        let target = if owner == repo { rel } else { blob };
        std::os::unix::fs::symlink(target, snap.join(&name)).unwrap();
    }
    (cache, snap)
}

#[cfg(unix)]
#[test]
fn hub_snapshot_links_into_own_blobs_are_read() {
    let (_cache, snap) = hub_snapshot("models--org--tiny");
    let ck = Checkpoint::open(&snap).unwrap();
    let plain = Checkpoint::open(fixture("hf-sharded")).unwrap();
    assert_eq!(ck.tensors.len(), plain.tensors.len());
}

#[cfg(unix)]
#[test]
fn hub_snapshot_link_into_another_repos_blobs_is_refused() {
    let (_cache, snap) = hub_snapshot("models--evil--other");
    assert!(matches!(
        st_kind(Checkpoint::open(&snap)),
        SafetensorsError::ShardOutsideModel(n) if n == "model-00002-of-00002.safetensors"
    ));
}

#[test]
fn index_maps_tensor_to_wrong_shard() {
    let dir = sharded_copy();
    let mut moved = String::new();
    edit_index(dir.path(), |v| {
        let wm = v["weight_map"].as_object_mut().unwrap();
        let (name, _) = wm
            .iter()
            .find(|(_, f)| *f == "model-00001-of-00002.safetensors")
            .unwrap();
        moved = name.clone();
        wm[&moved] = "model-00002-of-00002.safetensors".into();
    });
    let kind = st_kind(Checkpoint::open(dir.path()));
    assert!(
        matches!(&kind, SafetensorsError::UnindexedTensor { tensor, .. } | SafetensorsError::IndexedTensorMissing { tensor, .. } if *tensor == moved),
        "{kind:?}"
    );
}

#[test]
fn index_lists_tensor_twice() {
    let dir = sharded_copy();
    let p = dir.path().join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&p).unwrap();
    let text = text.replacen(
        "\"weight_map\": {",
        "\"weight_map\": {\"model.norm.weight\": \"model-00001-of-00002.safetensors\",",
        1,
    );
    std::fs::write(&p, text).unwrap();
    assert!(matches!(
        st_kind(Checkpoint::open(dir.path())),
        SafetensorsError::InvalidIndex(_)
    ));
}

#[test]
fn several_shards_without_index() {
    let dir = sharded_copy();
    std::fs::remove_file(dir.path().join("model.safetensors.index.json")).unwrap();
    assert_eq!(
        st_kind(Checkpoint::open(dir.path())),
        SafetensorsError::AmbiguousShards
    );
}

#[test]
fn every_truncation_of_a_real_file_is_an_error() {
    let bytes = std::fs::read(fixture("hf/model.safetensors")).unwrap();
    let dir = model_dir();
    let p = dir.path().join("model.safetensors");
    for cut in (0..bytes.len()).step_by(97).chain([bytes.len() - 1]) {
        std::fs::write(&p, &bytes[..cut]).unwrap();
        assert!(Checkpoint::open(dir.path()).is_err(), "cut at {cut}");
    }
}
