//! Tokenizer conversions on the tiny fixtures (GGUF, HF tokenizer.json and Meta tiktoken
//! `tokenizer.model` of the same 128-token vocabulary, written by gguf-py, `tokenizers` and a
//! tiktoken-format writer; see scripts/gen_fixtures.py), plus the pre-tokenizer families on
//! small synthetic vocabularies and hostile inputs. The real-data checks against llama.cpp
//! live in tests/interop/test_tokenizer.py.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use proptest::prelude::*;
use qforge_convert::gguf::{GgufMetadata, GgufValue};
use qforge_convert::tokenizer::{
    byte_level_spelling, byte_to_char, llama3_special_tokens, pre_for_hash, pre_probe_hash,
    Llama3Specials, PreTokenizer, Vocab, KNOWN_PRE_HASHES, PRE_TOKENIZERS, TOKEN_TYPE_CONTROL,
    TOKEN_TYPE_NORMAL, TOKEN_TYPE_USER_DEFINED,
};
use qforge_convert::Error;
use serde_json::Value;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/tiny")
        .join(rel)
}

fn tiny_gguf() -> Vocab {
    Vocab::from_gguf_file(&fixture("gguf/tiny.gguf")).expect("tiny.gguf tokenizer")
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).expect("read")).expect("JSON")
}

fn encode(tok: &tokenizers::Tokenizer, text: &str, special: bool) -> Vec<u32> {
    tok.encode(text, special)
        .expect("encode")
        .get_ids()
        .to_vec()
}

/// A byte-level vocabulary: the 256 byte tokens (id = byte) plus `extra` tokens built by the
/// merges `merges` (each "a b" whose concatenation is the next extra token).
fn synthetic(pre: &str, merges: &[&str]) -> Vocab {
    let table = byte_to_char();
    let mut tokens: Vec<String> = (0u8..=255)
        .map(|b| byte_level_spelling(&[b], &table))
        .collect();
    for m in merges {
        tokens.push(m.replace(' ', ""));
    }
    let n = tokens.len();
    Vocab {
        model: "gpt2".into(),
        pre: Some(pre.into()),
        token_types: vec![TOKEN_TYPE_NORMAL; n],
        tokens,
        merges: merges.iter().map(|m| (*m).to_owned()).collect(),
        add_bos: Some(false),
        ..Vocab::default()
    }
}

#[test]
fn gguf_view_of_tiny() {
    let v = tiny_gguf();
    assert_eq!(v.model, "gpt2");
    assert_eq!(v.pre.as_deref(), Some("llama-bpe"));
    assert_eq!(v.tokens.len(), 128);
    assert_eq!(v.tokens[0], "Ā");
    assert_eq!(v.tokens[32], "Ġ");
    assert_eq!(&v.token_types[..3], &[3, 3, 1]);
    assert!(v.token_types[2..].iter().all(|&t| t == TOKEN_TYPE_NORMAL));
    assert_eq!(v.merges, ["Ġ t", "h e", "i n", "Ġt h"]);
    assert_eq!((v.bos, v.eos, v.add_bos), (Some(0), Some(1), Some(true)));
    assert_eq!(v.scores, None);
}

/// GGUF -> tokenizer.json reproduces the fixture's tokenizer.json (written by the `tokenizers`
/// library for the same vocabulary) value for value, and encodes its samples identically.
#[test]
fn gguf_to_tokenizer_json_matches_the_hf_fixture() {
    let v = tiny_gguf();
    let ours = v.to_tokenizer_json().expect("tokenizer.json");
    let theirs = read_json(&fixture("hf/tokenizer.json"));
    for key in [
        "added_tokens",
        "normalizer",
        "pre_tokenizer",
        "post_processor",
        "decoder",
        "model",
    ] {
        assert_eq!(ours[key], theirs[key], "{key}");
    }

    let tok = v.to_tokenizer().expect("loads");
    let expected = read_json(&fixture("hf/expected.json"));
    let samples = expected["tokenizer"]["samples"]
        .as_array()
        .expect("samples");
    assert!(!samples.is_empty());
    for s in samples {
        let text = s["text"].as_str().expect("text");
        let ids = |k: &str| -> Vec<u32> {
            s[k].as_array()
                .expect("ids")
                .iter()
                .map(|x| u32::try_from(x.as_u64().expect("id")).expect("u32"))
                .collect()
        };
        assert_eq!(encode(&tok, text, false), ids("ids"), "{text:?}");
        assert_eq!(
            encode(&tok, text, true),
            ids("ids_with_special"),
            "{text:?}"
        );
    }

    let cfg = v.to_tokenizer_config_json().expect("config");
    let want = read_json(&fixture("hf/tokenizer_config.json"));
    for key in ["add_bos_token", "add_eos_token", "bos_token", "eos_token"] {
        assert_eq!(cfg[key], want[key], "{key}");
    }
}

#[test]
fn tokenizer_json_to_gguf_view_matches_the_gguf_fixture() {
    let gguf = tiny_gguf();
    let mut hf = Vocab::from_tokenizer_json(&fixture("hf"), Some("llama-bpe")).expect("hf view");
    // The GGUF fixture has no add_eos_token key; the HF side says false.
    assert_eq!(hf.add_eos, Some(false));
    hf.add_eos = None;
    assert_eq!(hf, gguf);

    // Its pre-tokenizer probe hash is nobody's, but its pre_tokenizer is spelled exactly as
    // llama.cpp's llama-bpe: without a name, detection by structure gives the same view.
    let mut detected = Vocab::from_tokenizer_json(&fixture("hf"), None).expect("detected");
    detected.add_eos = None;
    assert_eq!(detected, gguf);

    // A pre_tokenizer spelled unlike any llama.cpp implements, with an unknown hash, stops the
    // conversion with an error that says so.
    let dir = tempfile::tempdir().expect("tempdir");
    for name in ["tokenizer.json", "tokenizer_config.json", "config.json"] {
        std::fs::copy(fixture("hf").join(name), dir.path().join(name)).expect("copy");
    }
    let path = dir.path().join("tokenizer.json");
    let mut tj: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
    tj["pre_tokenizer"] = serde_json::json!({"type": "Whitespace"});
    std::fs::write(&path, tj.to_string()).expect("write");
    let err = Vocab::from_tokenizer_json(dir.path(), None).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Tokenizer { .. }), "{msg}");
    assert!(msg.contains("unknown BPE pre-tokenizer"), "{msg}");
    assert!(msg.contains("llama-bpe"), "{msg}");
}

#[test]
fn round_trip_through_our_own_tokenizer_json() {
    let v = tiny_gguf();
    let dir = tempfile::tempdir().expect("tempdir");
    v.write_hf_files(dir.path()).expect("write");
    let mut back = Vocab::from_tokenizer_json(dir.path(), Some("llama-bpe")).expect("read back");
    back.add_eos = None;
    assert_eq!(back, v);
}

#[test]
fn tiktoken_view_matches_the_gguf_fixture() {
    let none: [&str; 0] = [];
    let mut t =
        Vocab::from_tiktoken_file(&fixture("meta-mp1/tokenizer.model"), &none).expect("tiktoken");
    let g = tiny_gguf();
    assert_eq!(t.tokens, g.tokens);
    // Merges rebuilt from the ranks are exactly the fixture's.
    assert_eq!(t.merges, g.merges);
    assert_eq!(t.pre.as_deref(), Some("llama-bpe"));
    // The tiktoken file has no special tokens; the fixture uses bytes 0 and 1 as BOS/EOS.
    assert!(t.token_types.iter().all(|&x| x == TOKEN_TYPE_NORMAL));
    assert_eq!((t.bos, t.add_bos), (None, Some(false)));
    t.token_types[0] = TOKEN_TYPE_CONTROL;
    t.token_types[1] = TOKEN_TYPE_CONTROL;
    (t.bos, t.eos, t.add_bos, t.add_eos) = (Some(0), Some(1), Some(true), None);
    assert_eq!(t, g);
    assert_eq!(
        t.to_tokenizer_json().unwrap(),
        g.to_tokenizer_json().unwrap()
    );
}

#[test]
fn tiktoken_with_llama31_specials() {
    let bytes = std::fs::read(fixture("meta-mp1/tokenizer.model")).expect("read");
    let specials = llama3_special_tokens(Llama3Specials::V3_1);
    let v = Vocab::from_tiktoken(&bytes, &specials).expect("tiktoken");
    assert_eq!(v.tokens.len(), 128 + 256);
    assert_eq!(v.tokens[128], "<|begin_of_text|>");
    assert_eq!(v.token_types[128..], [TOKEN_TYPE_CONTROL; 256]);
    assert_eq!(
        (v.bos, v.eos, v.eom, v.eot),
        (Some(128), Some(129), Some(136), Some(137))
    );
    assert_eq!((v.add_bos, v.add_eos), (Some(true), Some(false)));

    let json = v.to_tokenizer_json().expect("json");
    assert_eq!(json["added_tokens"].as_array().unwrap().len(), 256);
    assert_eq!(json["model"]["ignore_merges"], true);
    assert_eq!(
        json["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"],
        qforge_convert::tokenizer::LLAMA3_PATTERN
    );
    let tok = v.to_tokenizer().expect("loads");
    // BOS added; specials in the text are matched whole; " th" is one token (rank 127).
    assert_eq!(
        encode(&tok, "the<|eot_id|> th", true),
        vec![128, 116, 125, 137, 127]
    );
    assert_eq!(encode(&tok, "the", false), vec![116, 125]);
    let cfg = v.to_tokenizer_config_json().expect("cfg");
    assert_eq!(cfg["bos_token"], "<|begin_of_text|>");
    assert_eq!(cfg["eos_token"], "<|end_of_text|>");
}

#[test]
fn merges_from_ranks_follow_tiktoken_converter_order() {
    // ranks: bytes a b c d = 0..3, then "ab" 4, "cd" 5, "abc" 6, "abcd" 7.
    let b64 = |s: &[u8]| -> String {
        // tiny encoder for the test (standard alphabet, padded)
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in s.chunks(3) {
            let n = chunk.len();
            let v = u32::from(chunk[0]) << 16
                | u32::from(*chunk.get(1).unwrap_or(&0)) << 8
                | u32::from(*chunk.get(2).unwrap_or(&0));
            for i in 0..4 {
                if i <= n {
                    out.push(char::from(A[(v >> (18 - 6 * i) & 63) as usize]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    };
    let toks: [&[u8]; 8] = [b"a", b"b", b"c", b"d", b"ab", b"cd", b"abc", b"abcd"];
    let mut file = String::new();
    for (r, t) in toks.iter().enumerate() {
        writeln!(file, "{} {r}", b64(t)).expect("write to String");
    }
    let none: [&str; 0] = [];
    let v = Vocab::from_tiktoken(file.as_bytes(), &none).expect("tiktoken");
    // abcd splits: (abc, d) ranks (6, 3) and (ab, cd) ranks (4, 5): ordered by rank of left.
    assert_eq!(v.merges, ["a b", "c d", "ab c", "ab cd", "abc d"]);
}

#[test]
fn smollm_splits_every_digit_and_gpt2_does_not() {
    // "12" and "34" exist as tokens; SmolLM's pre-tokenizer never lets them form.
    let merges = ["1 2", "3 4", "Ġ 1", "a b"];
    let text = "ab 1234 ab12";
    let smol = synthetic("smollm", &merges).to_tokenizer().expect("smollm");
    let gpt2 = synthetic("gpt-2", &merges).to_tokenizer().expect("gpt-2");
    let dflt = synthetic("default", &merges)
        .to_tokenizer()
        .expect("default");
    let ids = |t: &str| -> Vec<u32> {
        t.split(',')
            .map(|x| match x {
                "ab" => 259,
                "Ġ1" => 258,
                "12" => 256,
                "34" => 257,
                b => u32::from(b.as_bytes()[0]),
            })
            .collect()
    };
    assert_eq!(encode(&smol, text, true), ids("ab, ,1,2,3,4, ,ab,1,2"));
    // GPT-2: " 1234" is one piece, where "1 2" (rank 0) beats "Ġ 1" (rank 2).
    assert_eq!(encode(&gpt2, text, true), ids("ab, ,12,34, ,ab,12"));
    // llama.cpp's default: punctuation runs, GPT-2 words, digit runs (splitting " 1234" into
    // " " and "1234"), then groups of three digits ("123", "4").
    assert_eq!(encode(&dflt, text, true), ids("ab, ,12,3,4, ,ab,12"));
    let j = synthetic("smollm", &merges).to_tokenizer_json().unwrap();
    assert_eq!(j["pre_tokenizer"]["pretokenizers"][0]["type"], "Digits");
    assert_eq!(j["model"]["ignore_merges"], false);
    let cfg = synthetic("smollm", &merges)
        .to_tokenizer_config_json()
        .unwrap();
    assert_eq!(cfg["clean_up_tokenization_spaces"], false);
}

#[test]
fn llama3_ignore_merges_emits_whole_pieces() {
    // "abc" is a token but no merge builds it: with ignore_merges the piece "abc" is one token.
    let mut v = synthetic("llama-bpe", &["a b"]);
    v.tokens.push("abc".into());
    v.token_types.push(TOKEN_TYPE_NORMAL);
    let tok = v.to_tokenizer().expect("llama3");
    assert_eq!(encode(&tok, "abc ab", false), vec![257, 32, 256]);
    v.pre = Some("gpt-2".into());
    let tok = v.to_tokenizer().expect("gpt2");
    assert_eq!(encode(&tok, "abc", false), vec![256, 99]);
}

#[test]
fn added_tokens_and_bos_eos() {
    let mut v = synthetic("gpt-2", &["a b"]);
    v.tokens.push("<|end|>".into());
    v.token_types.push(TOKEN_TYPE_CONTROL);
    v.tokens.push("<tool call>".into()); // not byte-level: matched as written
    v.token_types.push(TOKEN_TYPE_USER_DEFINED);
    (v.bos, v.eos, v.add_bos, v.add_eos) = (Some(257), Some(257), Some(true), Some(true));
    let json = v.to_tokenizer_json().unwrap();
    let added = json["added_tokens"].as_array().unwrap();
    assert_eq!(added.len(), 2);
    assert_eq!(
        (added[0]["special"].clone(), added[1]["special"].clone()),
        (true.into(), false.into())
    );
    let tok = v.to_tokenizer().unwrap();
    assert_eq!(
        encode(&tok, "ab<tool call>", true),
        vec![257, 256, 258, 257]
    );
    assert_eq!(encode(&tok, "ab<tool call>", false), vec![256, 258]);
    // add_bos with no BOS id, or an out-of-range one, is an error, not a panic.
    v.bos = None;
    assert!(v.to_tokenizer_json().is_err());
    v.bos = Some(10_000);
    assert!(v.to_tokenizer_json().is_err());
}

#[test]
fn duplicate_merges_keep_their_first_priority() {
    let mut v = synthetic("gpt-2", &["a b", "b c"]);
    v.merges.push("a b".into());
    let json = v.to_tokenizer_json().unwrap();
    assert_eq!(
        json["model"]["merges"],
        serde_json::json!([["a", "b"], ["b", "c"]])
    );
}

#[test]
fn gguf_metadata_round_trip() {
    let v = tiny_gguf();
    let meta = GgufMetadata {
        version: 3,
        entries: v.to_gguf_metadata(),
        alignment: 32,
        data_offset: 0,
    };
    assert_eq!(Vocab::from_gguf(&meta).unwrap(), v);
    let get = |k: &str| meta.get(k).cloned();
    assert_eq!(get("tokenizer.ggml.bos_token_id"), Some(GgufValue::U32(0)));
    assert_eq!(
        get("tokenizer.ggml.add_bos_token"),
        Some(GgufValue::Bool(true))
    );
}

#[test]
fn hostile_vocabularies_are_errors() {
    let base = synthetic("gpt-2", &["a b"]);
    type Edit = Box<dyn Fn(&mut Vocab)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "unknown pre",
            Box::new(|v| v.pre = Some("chatglm-bpe".into())),
        ),
        ("spm without scores", Box::new(|v| v.model = "llama".into())),
        (
            "spm with short scores",
            Box::new(|v| {
                v.model = "llama".into();
                v.scores = Some(vec![0.0; 3]);
            }),
        ),
        (
            "spm with a NaN score",
            Box::new(|v| {
                v.model = "llama".into();
                v.scores = Some(vec![f32::NAN; v.tokens.len()]);
            }),
        ),
        (
            "spm with a bad token type",
            Box::new(|v| {
                v.model = "llama".into();
                v.scores = Some(vec![0.0; v.tokens.len()]);
                v.token_types[0] = 9;
            }),
        ),
        (
            "spm with unk out of range",
            Box::new(|v| {
                v.model = "llama".into();
                v.scores = Some(vec![0.0; v.tokens.len()]);
                v.unk = Some(1 << 20);
            }),
        ),
        ("unknown model", Box::new(|v| v.model = "bert".into())),
        (
            "merge without space",
            Box::new(|v| v.merges.push("ab".into())),
        ),
        (
            "merge of a non-token",
            Box::new(|v| v.merges.push("a zz".into())),
        ),
        (
            // both halves are tokens but the result is not (tokenizers would index past its buffer)
            "merge result not a token",
            Box::new(|v| v.merges.push("ab ab".into())),
        ),
        ("types length", Box::new(|v| v.token_types.truncate(1))),
        ("eos without id", Box::new(|v| v.add_eos = Some(true))),
    ];
    for (what, edit) in cases {
        let mut v = base.clone();
        edit(&mut v);
        let err = v.to_tokenizer_json().expect_err(what);
        assert!(matches!(err, Error::Tokenizer { .. }), "{what}: {err}");
    }
}

#[test]
fn hostile_gguf_metadata_is_an_error() {
    let good = tiny_gguf().to_gguf_metadata();
    let with = |key: &str, val: Option<GgufValue>| {
        let mut entries: Vec<_> = good.iter().filter(|(k, _)| k != key).cloned().collect();
        if let Some(v) = val {
            entries.push((key.to_owned(), v));
        }
        Vocab::from_gguf(&GgufMetadata {
            version: 3,
            entries,
            alignment: 32,
            data_offset: 0,
        })
    };
    assert!(with("tokenizer.ggml.model", None).is_err());
    assert!(with("tokenizer.ggml.tokens", None).is_err());
    assert!(with("tokenizer.ggml.merges", None).is_err()); // gpt2 needs merges
    assert!(with("tokenizer.ggml.tokens", Some(GgufValue::U32(3))).is_err());
    assert!(with("tokenizer.ggml.bos_token_id", Some(GgufValue::I32(-1))).is_err());
    assert!(with("tokenizer.ggml.bos_token_id", Some(GgufValue::U64(1 << 40))).is_err());
    assert!(with("tokenizer.ggml.add_bos_token", Some(GgufValue::U8(1))).is_err());
    let short = qforge_convert::gguf::GgufArray::I32(vec![1; 3]);
    assert!(with("tokenizer.ggml.token_type", Some(GgufValue::Array(short))).is_err());
    // A missing token_type is all-normal, like llama.cpp.
    let v = with("tokenizer.ggml.token_type", None).unwrap();
    assert!(v.token_types.iter().all(|&t| t == TOKEN_TYPE_NORMAL));
}

#[test]
fn hostile_tiktoken_is_an_error() {
    let none: [&str; 0] = [];
    for (what, text) in [
        ("empty", ""),
        ("no rank", "YQ==\n"),
        ("bad base64", "Y*== 0\n"),
        ("bad rank", "YQ== -1\n"),
        ("repeated token", "YQ== 0\nYQ== 1\n"),
        ("repeated rank", "YQ== 0\nYg== 0\n"),
        ("too sparse", "YQ== 4000000000\n"),
        ("empty token", "= 0\n"),
        ("three fields", "YQ== 0 1\n"),
    ] {
        let err = Vocab::from_tiktoken(text.as_bytes(), &none).expect_err(what);
        assert!(matches!(err, Error::Tokenizer { .. }), "{what}: {err}");
    }
    // A gap in the ranks is an unused [PAD] id, as in an HF vocabulary with holes.
    let v = Vocab::from_tiktoken(b"YQ== 0\nYg== 2\r\n", &none).unwrap();
    assert_eq!(v.tokens, ["a", "[PAD1]", "b"]);
    assert_eq!(v.token_types, [1, 5, 1]);
}

#[test]
fn hostile_tokenizer_json_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let write = |s: &str| std::fs::write(dir.path().join("tokenizer.json"), s).unwrap();
    let bl = r#""pre_tokenizer": {"type": "ByteLevel"}"#;
    for (what, body) in [
        ("not json", "{".to_owned()),
        ("no model", "{}".to_owned()),
        (
            "wordpiece",
            format!(r#"{{"model": {{"type": "WordPiece", "vocab": {{}}}}, {bl}}}"#),
        ),
        (
            // SentencePiece-style: a merge whose result is not a token
            "byte fallback, bad merge",
            r#"{"model": {"type": "BPE", "byte_fallback": true, "vocab": {"a": 0, "b": 1},
                "merges": [["a", "b"]]}}"#
                .to_owned(),
        ),
        (
            "byte fallback, unknown prepend scheme",
            r#"{"model": {"type": "BPE", "byte_fallback": true, "vocab": {"a": 0}},
                "pre_tokenizer": {"type": "Metaspace", "prepend_scheme": "odd"}}"#
                .to_owned(),
        ),
        (
            "not byte-level",
            r#"{"model": {"type": "BPE", "vocab": {"a": 0}}}"#.to_owned(),
        ),
        (
            "huge id",
            format!(r#"{{"model": {{"type": "BPE", "vocab": {{"a": 99999999999}}}}, {bl}}}"#),
        ),
        (
            "bad merge",
            format!(r#"{{"model": {{"type": "BPE", "vocab": {{"a": 0}}, "merges": [1]}}, {bl}}}"#),
        ),
        (
            "bad added",
            format!(
                r#"{{"model": {{"type": "BPE", "vocab": {{"a": 0}}}}, "added_tokens": [{{"id": 1}}], {bl}}}"#
            ),
        ),
    ] {
        write(&body);
        let err = Vocab::from_tokenizer_json(dir.path(), Some("gpt-2")).expect_err(what);
        assert!(matches!(err, Error::Tokenizer { .. }), "{what}: {err}");
    }
    // config.json's vocab_size below the largest id is refused; above it pads with [PAD].
    write(&format!(
        r#"{{"model": {{"type": "BPE", "vocab": {{"a": 0, "b": 1}}}}, {bl}}}"#
    ));
    std::fs::write(dir.path().join("config.json"), r#"{"vocab_size": 1}"#).unwrap();
    assert!(Vocab::from_tokenizer_json(dir.path(), Some("gpt-2")).is_err());
    std::fs::write(dir.path().join("config.json"), r#"{"vocab_size": 4}"#).unwrap();
    let v = Vocab::from_tokenizer_json(dir.path(), Some("gpt-2")).unwrap();
    assert_eq!(v.tokens, ["a", "b", "[PAD2]", "[PAD3]"]);
    assert_eq!(v.token_types, [1, 1, 5, 5]);
    let missing = Vocab::from_tokenizer_json(&dir.path().join("nope"), None).unwrap_err();
    assert!(matches!(missing, Error::Io { .. }), "{missing}");
}

#[test]
fn pre_table_is_consistent() {
    for (hash, name) in KNOWN_PRE_HASHES {
        assert_eq!(hash.len(), 64);
        assert!(PreTokenizer::from_pre(Some(name)).is_some(), "{name}");
        assert_eq!(pre_for_hash(hash), Some(*name));
    }
    for (name, kind) in PRE_TOKENIZERS {
        assert_eq!(PreTokenizer::from_pre(Some(name)), Some(*kind));
    }
    assert_eq!(PreTokenizer::from_pre(None), Some(PreTokenizer::Default));
    assert_eq!(PreTokenizer::from_pre(Some("chatglm-bpe")), None);
}

#[test]
fn probe_hash_of_a_loaded_tokenizer() {
    let tok = tiny_gguf().to_tokenizer().unwrap();
    let h = pre_probe_hash(&tok).unwrap();
    assert_eq!(h.len(), 64);
    assert_eq!(pre_for_hash(&h), None);
    // Same file through the crate's own JSON loader gives the same hash.
    let text = std::fs::read_to_string(fixture("hf/tokenizer.json")).unwrap();
    let theirs = tokenizers::Tokenizer::from_str(&text).unwrap();
    assert_eq!(pre_probe_hash(&theirs).unwrap(), h);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_tiktoken_never_panics(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        let none: [&str; 0] = [];
        let _ = Vocab::from_tiktoken(&data, &none);
    }

    #[test]
    fn random_vocab_edits_never_panic(
        edits in proptest::collection::vec((0usize..300, "[ a-cĠ0-9]{0,4}", -2i32..8), 0..6),
        merges in proptest::collection::vec("[a-cĠ ]{0,5}", 0..6),
        pre in proptest::sample::select(vec!["llama-bpe", "smollm", "gpt-2", "default", "x"]),
        bos in proptest::option::of(0u32..300),
        add_bos in proptest::option::of(any::<bool>()),
    ) {
        let mut v = synthetic(pre, &["a b"]);
        for (i, text, ty) in edits {
            if let (Some(t), Some(y)) = (v.tokens.get_mut(i), v.token_types.get_mut(i)) {
                *t = text;
                *y = ty;
            }
        }
        v.merges.extend(merges);
        v.bos = bos;
        v.add_bos = add_bos;
        if let Ok(tok) = v.to_tokenizer() {
            let _ = tok.encode("ab 12 Ġ <|x|> abc", true);
        }
        let _ = v.to_tokenizer_config_json();
    }
}
