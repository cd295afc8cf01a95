//! Export to Meta's layout (`params.json` + `consolidated.NN.pth`), checked against the
//! committed fixtures written by torch (scripts/gen_fixtures.py): what qforge writes must read
//! back as the same tensors, and where the fixture is a plain `torch.save` of a dict
//! (`meta-mp2`) it must be the same bytes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use qforge_codecs::DType;
use qforge_convert::export::{convert_to_hf, HfOptions, DEFAULT_SHARD_SIZE};
use qforge_convert::export_meta::{convert_to_meta, convert_to_meta_with, MetaOptions};
use qforge_convert::{Checkpoint, Error, Format};
use qforge_stage::{OutputDir, OutputOptions};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/tiny")
        .join(rel)
}

fn open(p: impl AsRef<Path>) -> Checkpoint {
    Checkpoint::open(p.as_ref()).unwrap_or_else(|e| panic!("{}: {e}", p.as_ref().display()))
}

/// The Meta conversion of `src` (whose tokenizer, if any, Meta's format cannot hold: allowed).
fn meta(src: &Checkpoint, dest: &Path, mp: usize) {
    convert_to_meta(src, dest, mp, LOSSY).unwrap();
}

const LOSSY: OutputOptions = OutputOptions {
    resume: false,
    overwrite: false,
    dry_run: false,
    allow_lossy: true,
};

/// Same tensors, name by name: dtype, shape and contiguous bytes.
fn assert_same_tensors(got: &Checkpoint, want: &Checkpoint) {
    assert_eq!(got.tensors.len(), want.tensors.len(), "tensor count");
    for w in &want.tensors {
        let g = got
            .tensor(&w.name)
            .unwrap_or_else(|| panic!("{} missing", w.name));
        assert_eq!((g.dtype, &g.shape), (w.dtype, &w.shape), "{}", w.name);
        assert!(
            got.bytes(g).unwrap() == want.bytes(w).unwrap(),
            "{} bytes differ",
            w.name
        );
    }
}

/// Every file of a directory, by name.
fn dir_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect()
}

#[test]
fn hf_to_meta_mp1_reads_back_as_the_meta_fixture() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("meta");
    meta(&open(fixture("hf")), &dest, 1);
    let got = open(&dest);
    let want = open(fixture("meta-mp1"));
    assert_eq!(got.format, Format::Meta);
    assert_eq!(got.files().count(), 1);
    assert_same_tensors(&got, &want);
    assert_eq!(got.config, want.config, "params.json means the same model");
    // The fixture is an OrderedDict with shared per-layer storages; ours is a plain dict with
    // one storage per tensor, Meta's order.
    let names: Vec<&str> = got.tensors.iter().map(|t| t.name.as_str()).collect();
    let want_names: Vec<&str> = want.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, want_names, "Meta's tensor order");
}

#[test]
fn hf_to_meta_mp2_is_byte_identical_to_torch_save() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("meta");
    meta(&open(fixture("hf")), &dest, 2);
    for shard in ["consolidated.00.pth", "consolidated.01.pth"] {
        assert!(
            std::fs::read(dest.join(shard)).unwrap()
                == std::fs::read(fixture("meta-mp2").join(shard)).unwrap(),
            "{shard} differs from the file torch.save wrote"
        );
    }
    // Merged back it is the MP1 model.
    assert_same_tensors(&open(&dest), &open(fixture("meta-mp1")));
}

#[test]
fn hf_to_meta_to_hf_round_trip_is_bit_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let src = open(fixture("hf"));
    let m = tmp.path().join("meta");
    meta(&src, &m, 2);
    let back = tmp.path().join("hf");
    convert_to_hf(
        &open(&m),
        &back,
        HfOptions {
            dtype: None,
            shard_size: DEFAULT_SHARD_SIZE,
            output: OutputOptions::default(),
        },
    )
    .unwrap();
    assert_same_tensors(&open(&back), &src);
}

#[test]
fn meta_reshards_both_ways() {
    let tmp = tempfile::tempdir().unwrap();
    // MP2 → MP1 gives the MP1 model.
    let m1 = tmp.path().join("m1");
    meta(&open(fixture("meta-mp2")), &m1, 1);
    assert_same_tensors(&open(&m1), &open(fixture("meta-mp1")));
    // MP1 (shared storages, OrderedDict) → MP2 gives exactly torch's MP2 files.
    let m2 = tmp.path().join("m2");
    meta(&open(fixture("meta-mp1")), &m2, 2);
    let got = dir_files(&m2);
    let want = dir_files(&fixture("meta-mp2"));
    for name in [
        "consolidated.00.pth",
        "consolidated.01.pth",
        "params.json",
        "tokenizer.model",
    ] {
        assert!(got[name] == want[name], "{name} differs");
    }
}

#[test]
fn gguf_to_meta_keeps_floats_and_decodes_quantized_to_f32() {
    let tmp = tempfile::tempdir().unwrap();
    let src = open(fixture("gguf/tiny.gguf"));
    let dest = tmp.path().join("meta");
    // The GGUF tokenizer cannot be written: refused, then allowed and recorded.
    let err = convert_to_meta(&src, &dest, 2, OutputOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Lossy { .. }), "{err}");
    assert!(
        err.to_string().contains("tokenizer is not written"),
        "{err}"
    );
    assert!(!dest.exists());
    let written = convert_to_meta(&src, &dest, 2, LOSSY).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dest.join("manifest.json")).unwrap()).unwrap();
    assert!(manifest["lossy"][0]["what"]
        .as_str()
        .is_some_and(|w| w.contains("tokenizer")));
    assert!(
        written
            .notes
            .iter()
            .any(|n| n.what.contains("decoded to F32")),
        "{:?}",
        written.notes
    );
    let got = open(&dest);
    assert_eq!(got.tensors.len(), src.tensors.len());
    for s in &src.tensors {
        let g = got.tensor_by_key(s.key).expect("same roles");
        assert_eq!(g.shape, s.shape, "{}", s.name);
        if matches!(s.dtype, DType::F32 | DType::F16 | DType::BF16) {
            // GGUF keeps Meta's rotary row order: the bytes pass through.
            assert_eq!(g.dtype, s.dtype, "{}", s.name);
            assert!(got.bytes(g).unwrap() == src.bytes(s).unwrap(), "{}", s.name);
        } else {
            assert_eq!(g.dtype, DType::F32, "{}", s.name);
            let (a, b) = (got.to_f32(g).unwrap(), src.to_f32(s).unwrap());
            assert!(
                a.iter()
                    .map(|v| v.to_bits())
                    .eq(b.iter().map(|v| v.to_bits())),
                "{}",
                s.name
            );
        }
    }
}

#[test]
fn a_dtype_applies_to_every_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let src = open(fixture("meta-mp1"));
    let dest = tmp.path().join("meta");
    convert_to_meta_with(
        &src,
        &dest,
        MetaOptions {
            mp: 1,
            dtype: Some(DType::F32),
            output: OutputOptions::default(),
        },
    )
    .unwrap();
    let got = open(&dest);
    for s in &src.tensors {
        let g = got.tensor(&s.name).unwrap();
        assert_eq!(g.dtype, DType::F32);
        // BF16 → F32 is exact.
        let (a, b) = (got.to_f32(g).unwrap(), src.to_f32(s).unwrap());
        assert!(a
            .iter()
            .map(|v| v.to_bits())
            .eq(b.iter().map(|v| v.to_bits())));
    }
}

#[test]
fn output_is_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    let src = open(fixture("hf"));
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    meta(&src, &a, 2);
    meta(&src, &b, 2);
    assert!(dir_files(&a) == dir_files(&b), "two runs differ");
}

/// The same conversion in child processes with 1 and 3 rayon threads gives the same bytes.
#[test]
fn thread_count_does_not_change_output() {
    const CHILD: &str = "QFORGE_META_EXPORT_CHILD_DEST";
    if let Some(dest) = std::env::var_os(CHILD) {
        meta(&open(fixture("gguf/tiny.gguf")), Path::new(&dest), 2);
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut outputs = Vec::new();
    for threads in ["1", "3"] {
        let dest = tmp.path().join(format!("t{threads}"));
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "thread_count_does_not_change_output",
                "--test-threads",
                "1",
            ])
            .env("RAYON_NUM_THREADS", threads)
            .env(CHILD, &dest)
            .output()
            .unwrap();
        assert!(
            child.status.success(),
            "child with {threads} threads failed:\n{}{}",
            String::from_utf8_lossy(&child.stdout),
            String::from_utf8_lossy(&child.stderr)
        );
        outputs.push(dir_files(&dest));
    }
    assert!(outputs[0].len() >= 4, "{:?}", outputs[0].keys());
    assert!(outputs[0] == outputs[1], "thread count changed the output");
}

#[test]
fn bad_model_parallel_degrees_fail_before_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = open(fixture("hf")); // 4 heads, 2 key/value heads
    for (mp, why) in [
        (0, "at least 1"),
        (3, "not a multiple of 3"),
        (4, "key/value heads"),
    ] {
        let dest = tmp.path().join(format!("mp{mp}"));
        let err = convert_to_meta(&src, &dest, mp, OutputOptions::default()).unwrap_err();
        assert!(matches!(err, Error::Config { .. }), "{err}");
        assert!(err.to_string().contains(why), "mp {mp}: {err}");
        assert!(!dest.exists());
        assert!(!tmp.path().join(format!(".mp{mp}.qforge-partial")).exists());
    }
}

#[test]
fn resume_keeps_a_finished_shard_and_writes_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let src = open(fixture("hf"));
    let fresh = tmp.path().join("fresh");
    meta(&src, &fresh, 2);

    // An interrupted run that finished shard 0 only.
    let dest = tmp.path().join("resumed");
    let mut out = OutputDir::begin(&dest, OutputOptions::default()).unwrap();
    out.write_file(
        "consolidated.00.pth",
        &std::fs::read(fresh.join("consolidated.00.pth")).unwrap(),
    )
    .unwrap();
    drop(out);

    let written = convert_to_meta(
        &src,
        &dest,
        2,
        OutputOptions {
            resume: true,
            ..LOSSY
        },
    )
    .unwrap();
    assert_eq!(written.resumed, vec!["consolidated.00.pth".to_owned()]);
    assert!(dir_files(&dest) == dir_files(&fresh));
}
