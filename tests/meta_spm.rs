//! Meta Llama 1/2 checkpoints with a SentencePiece `tokenizer.model` (not Llama 3's tiktoken
//! ranks), against the sentencepiece library, transformers and llama.cpp's converter.
//!
//! `tests/fixtures/spm/` (`scripts/gen_spm_fixture.py`): a BPE `tokenizer.model` trained by
//! sentencepiece on Hamlet with Llama 2's settings, the ids sentencepiece and transformers'
//! `LlamaTokenizerFast` (converted from it) give for the family fixtures' `eval.txt` and every
//! string of llama.cpp's `ggml-vocab-llama-spm` test file (they agree on all 47), and
//! `vocab.gguf`, `convert_hf_to_gguf.py --vocab-only` of an HF directory holding it.
//!
//! A Meta checkpoint is made from the llama32 family fixture (`qforge convert --to meta`, vocab
//! 384 as the tokenizer) with that `tokenizer.model` in place of the tiktoken one; then
//! * Meta → HF: the `tokenizer.json` written encodes every string to sentencepiece's ids (BOS
//!   first, as Meta's `generation.py` encodes);
//! * Meta → GGUF: the `tokenizer.ggml.*` keys equal `convert_hf_to_gguf.py`'s, and llama.cpp's
//!   view of them (rebuilt by qforge) encodes every string to the same ids;
//! * HF → Meta and GGUF → Meta write a SentencePiece `tokenizer.model` that reads back as the
//!   same pieces, types and ids and encodes every string to the same ids; from GGUF with the
//!   same scores, from HF (whose `tokenizer.json` has merges, not scores) with scores in the
//!   same order for every piece a merge makes.

use std::path::{Path, PathBuf};
use std::process::Command;

use qforge_convert::gguf::GgufValue;
use qforge_convert::tokenizer::Vocab;
use qforge_convert::Checkpoint;
use qforge_verify::tokenize::TextTokenizer;
use serde_json::Value;

const QFORGE: &str = env!("CARGO_BIN_EXE_qforge");

fn spm(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/spm")
        .join(name)
}

fn qforge(args: &[&str]) {
    let out = Command::new(QFORGE).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "qforge {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn convert(src: &Path, dst: &Path, to: &str, extra: &[&str]) {
    let args = [
        "convert",
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
        "--to",
        to,
    ];
    qforge(&[&args[..], extra].concat());
}

/// (text, sentencepiece's ids) for every case.
fn cases() -> Vec<(String, Vec<u32>)> {
    let e: Value = serde_json::from_slice(&std::fs::read(spm("expected.json")).unwrap()).unwrap();
    assert_eq!(
        e["differ"],
        Value::Array(vec![]),
        "sentencepiece vs transformers"
    );
    e["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let ids = c["sentencepiece"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| u32::try_from(v.as_u64().unwrap()).unwrap())
                .collect();
            (c["text"].as_str().unwrap().to_owned(), ids)
        })
        .collect()
}

/// Every case encodes to sentencepiece's ids with `model`'s own tokenizer.
fn same_ids(model: &Path, cases: &[(String, Vec<u32>)]) {
    let ckpt = Checkpoint::open(model).unwrap();
    let tok = TextTokenizer::for_checkpoint(&ckpt).unwrap();
    let mut bad = Vec::new();
    for (i, (text, want)) in cases.iter().enumerate() {
        let got = tok.encode(text).unwrap();
        if &got != want {
            bad.push(format!("case {i} {text:?}: {got:?} vs {want:?}"));
        }
    }
    assert!(
        bad.is_empty(),
        "{}: {} of {} differ from sentencepiece:\n{}",
        model.display(),
        bad.len(),
        cases.len(),
        bad.iter().take(5).cloned().collect::<Vec<_>>().join("\n")
    );
}

/// The `tokenizer.ggml.*` keys of a GGUF file.
fn tokenizer_keys(path: &Path) -> Vec<(String, GgufValue)> {
    let (meta, _) = qforge_convert::gguf::parse(&std::fs::read(path).unwrap()).unwrap();
    let mut v: Vec<(String, GgufValue)> = meta
        .entries
        .into_iter()
        .filter(|(k, _)| k.starts_with("tokenizer."))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// The SentencePiece model's content: pieces, scores, types and the special ids.
type SpmContent = (
    Vec<String>,
    Option<Vec<f32>>,
    Vec<i32>,
    [Option<u32>; 4],
    Option<bool>,
);

fn spm_content(path: &Path) -> SpmContent {
    let v = Vocab::from_sentencepiece_file(path).unwrap();
    (
        v.tokens,
        v.scores,
        v.token_types,
        [v.unk, v.bos, v.eos, v.pad],
        v.add_space_prefix,
    )
}

#[test]
fn meta_llama2_sentencepiece_converts_both_ways() {
    let t = tempfile::tempdir().unwrap();
    let w = t.path();
    let cases = cases();
    assert_eq!(cases.len(), 47);

    // a Meta checkpoint with Llama 2's kind of tokenizer.model
    let fam = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/families/llama32");
    let meta = w.join("meta");
    // (its byte-level BPE tokenizer has no Meta form: --allow-lossy, then replaced)
    convert(&fam, &meta, "meta", &["--allow-lossy"]);
    std::fs::copy(spm("tokenizer.model"), meta.join("tokenizer.model")).unwrap();
    same_ids(&meta, &cases);

    // Meta -> HF: tokenizer.json as transformers' LlamaConverter gives sentencepiece's ids
    let hf = w.join("hf");
    convert(&meta, &hf, "hf", &[]);
    assert!(hf.join("tokenizer.json").is_file());
    same_ids(&hf, &cases);

    // Meta -> GGUF: convert_hf_to_gguf.py's tokenizer keys, llama.cpp's ids
    let gguf = w.join("m.gguf");
    convert(&meta, &gguf, "gguf", &[]);
    let (ours, mut theirs) = (tokenizer_keys(&gguf), tokenizer_keys(&spm("vocab.gguf")));
    // gguf-py's SpecialVocab writes add_sep_token false (no separator in the pair template);
    // absent, llama.cpp's SPM vocabulary has add_sep false too (llama-vocab.cpp load), as
    // tests/families.rs allows
    let sep = (
        "tokenizer.ggml.add_sep_token".to_owned(),
        GgufValue::Bool(false),
    );
    if !ours.iter().any(|p| p.0 == sep.0) {
        let n = theirs.len();
        theirs.retain(|p| *p != sep);
        assert_eq!(theirs.len(), n - 1, "add_sep_token false");
    }
    let names = |v: &[(String, GgufValue)]| v.iter().map(|p| p.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(&ours), names(&theirs), "tokenizer keys");
    for ((k, a), (_, b)) in ours.iter().zip(&theirs) {
        assert!(a == b, "{k}: ours {a:?} vs convert_hf_to_gguf.py {b:?}");
    }
    same_ids(&gguf, &cases);

    // HF -> Meta and GGUF -> Meta: a SentencePiece tokenizer.model again
    let original = spm_content(&spm("tokenizer.model"));
    for (src, name) in [(&hf, "meta-from-hf"), (&gguf, "meta-from-gguf")] {
        let back = w.join(name);
        convert(src, &back, "meta", &[]);
        let p = back.join("tokenizer.model");
        assert!(!qforge_convert::meta_tokenizer::is_tiktoken_file(&p).unwrap());
        let got = spm_content(&p);
        assert_eq!(got.0, original.0, "{name}: pieces");
        // tokenizer.json has merges, not scores: from HF the scores come back as -(merge rank
        // + 1) (tokenizer::spm::hf_spm_fields), in the original's order for every piece a
        // merge makes; single characters (never a merge's result) get 0
        let (gs, os) = (got.1.clone().unwrap(), original.1.clone().unwrap());
        let merged: Vec<usize> = (0..gs.len())
            .filter(|&i| original.2[i] == 1 && original.0[i].chars().count() > 1)
            .collect();
        for &i in &merged {
            for &j in &merged {
                assert_eq!(
                    gs[i].partial_cmp(&gs[j]),
                    os[i].partial_cmp(&os[j]),
                    "{name}: score order of {:?} and {:?}",
                    got.0[i],
                    got.0[j]
                );
            }
        }
        let from_hf = name == "meta-from-hf";
        if let Some(i) = (0..got.2.len()).find(|&i| {
            got.2[i] != original.2[i]
                || (!from_hf && gs[i] != os[i])
                || (from_hf && !merged.contains(&i) && original.2[i] == 1 && gs[i] != 0.0)
        }) {
            panic!(
                "{name}: piece {i} {:?}: type {} score {:?} vs the original's {} {:?}",
                got.0[i],
                got.2[i],
                got.1.as_ref().map(|s| s[i]),
                original.2[i],
                original.1.as_ref().map(|s| s[i])
            );
        }
        assert_eq!((got.3, got.4), (original.3, original.4), "{name}: ids");
        same_ids(&back, &cases);
    }
}
