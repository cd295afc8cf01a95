//! SentencePiece vocabularies and the BPE pre-tokenizers added beside GPT-2's and Llama 3's:
//! tokenizer.json written from the GGUF view, read back, and checked through the `tokenizers`
//! crate. llama.cpp's own vocabulary suite runs in tests/interop/test_tokenizer.py.

use qforge_convert::gguf::GgufValue;
use qforge_convert::tokenizer::{
    byte_level_spelling, byte_to_char, spm_merges, Vocab, DEEPSEEK_LLM_PATTERNS, PRE_TOKENIZERS,
    TOKEN_TYPE_BYTE, TOKEN_TYPE_CONTROL, TOKEN_TYPE_NORMAL, TOKEN_TYPE_UNKNOWN,
};
use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer as _};

/// A byte-level BPE vocabulary of the 256 byte tokens with the given pre-tokenizer name.
fn byte_level(pre: &str) -> Vocab {
    let table = byte_to_char();
    let tokens: Vec<String> = (0u8..=255)
        .map(|b| byte_level_spelling(&[b], &table))
        .collect();
    Vocab {
        model: "gpt2".into(),
        pre: Some(pre.into()),
        token_types: vec![TOKEN_TYPE_NORMAL; tokens.len()],
        tokens,
        add_bos: Some(false),
        ..Vocab::default()
    }
}

fn pieces(v: &Vocab, text: &str) -> Vec<String> {
    let tok = v.to_tokenizer().unwrap();
    let mut pts = PreTokenizedString::from(text);
    tok.get_pre_tokenizer()
        .unwrap()
        .pre_tokenize(&mut pts)
        .unwrap();
    pts.get_splits(OffsetReferential::Original, OffsetType::Byte)
        .into_iter()
        .map(|(s, _, _)| s.to_owned())
        .collect()
}

#[test]
fn every_pre_tokenizer_name_loads() {
    for (name, _) in PRE_TOKENIZERS {
        let v = byte_level(name);
        v.to_tokenizer().unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn new_pre_tokenizers_split_as_llama_cpp() {
    // Qwen2: digits one by one (Llama 3 takes up to three).
    assert_eq!(
        pieces(&byte_level("qwen2"), "ab 1234"),
        ["ab", "Ġ", "1", "2", "3", "4"]
    );
    // Falcon: punctuation runs first, then GPT-2 splitting, then runs of three digits.
    assert_eq!(
        pieces(&byte_level("falcon"), "x.]y 12345"),
        ["x", ".]", "y", "Ġ", "123", "45"]
    );
    // DeepSeek Coder: newlines alone, letters with one leading space, digits one by one.
    assert_eq!(
        pieces(&byte_level("deepseek-coder"), "a b\n12"),
        ["a", "Ġb", "Ċ", "1", "2"]
    );
    // DeepSeek LLM: `]` is not a letter (the class's KELVIN SIGN must not become `K`, whose
    // range `K-ℭ` would then take in `]`).
    let v = byte_level("deepseek-llm");
    assert_eq!(pieces(&v, "Exit.]"), ["Exit", ".]"]);
}

#[test]
fn deepseek_llm_class_keeps_its_non_nfc_characters() {
    let letters = DEEPSEEK_LLM_PATTERNS[1];
    for c in [
        '\u{212a}', '\u{2126}', '\u{1f7d}', '\u{1fd3}', '\u{1fdb}', '\u{1fbe}',
    ] {
        assert!(letters.contains(c), "U+{:04X}", u32::from(c));
    }
    assert!(!letters.contains("K-"));
}

/// A tiny SentencePiece vocabulary: <unk> <s> </s>, 256 byte tokens, then pieces.
fn tiny_spm() -> Vocab {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types = vec![TOKEN_TYPE_UNKNOWN, TOKEN_TYPE_CONTROL, TOKEN_TYPE_CONTROL];
    let mut scores = vec![0.0f32; 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(TOKEN_TYPE_BYTE);
        scores.push(0.0);
    }
    for (i, p) in ["▁", "a", "b", "▁a", "ab", "▁ab", "▁b"].iter().enumerate() {
        tokens.push((*p).into());
        types.push(TOKEN_TYPE_NORMAL);
        scores.push(-(i as f32));
    }
    Vocab {
        model: "llama".into(),
        pre: Some("default".into()),
        tokens,
        token_types: types,
        scores: Some(scores),
        bos: Some(1),
        eos: Some(2),
        unk: Some(0),
        add_bos: Some(true),
        add_eos: Some(false),
        ..Vocab::default()
    }
}

fn id(v: &Vocab, t: &str) -> u32 {
    v.tokens.iter().position(|x| x == t).unwrap() as u32
}

#[test]
fn spm_tokenizer_json_encodes_as_llama_cpp() {
    let v = tiny_spm();
    let tok = v.to_tokenizer().unwrap();
    // A space is prefixed; the highest-score pair merges first, as in llama.cpp:
    // ▁ a b -> ▁a b ("▁a" -3 beats "ab" -4) -> ▁ab.
    let ids = tok.encode("ab", false).unwrap().get_ids().to_vec();
    assert_eq!(ids, [id(&v, "▁ab")]);
    // A character that is no token falls back to its bytes; BOS when special tokens are added.
    let ids = tok.encode("a\tb", true).unwrap().get_ids().to_vec();
    assert_eq!(ids, [1, id(&v, "▁a"), id(&v, "<0x09>"), id(&v, "b")]);
    // No space prefix when add_space_prefix is false.
    let mut np = tiny_spm();
    np.add_space_prefix = Some(false);
    let ids = np
        .to_tokenizer()
        .unwrap()
        .encode("ab", false)
        .unwrap()
        .get_ids()
        .to_vec();
    assert_eq!(ids, [id(&v, "ab")]);
}

#[test]
fn spm_merges_are_score_ordered() {
    let v = tiny_spm();
    let m = spm_merges(&v.tokens, v.scores.as_deref().unwrap());
    let m: Vec<String> = m.into_iter().map(|(l, r)| format!("{l} {r}")).collect();
    assert_eq!(m, ["▁ a", "a b", "▁a b", "▁ ab", "▁ b"]);
}

#[test]
fn spm_round_trip_through_tokenizer_json() {
    let v = tiny_spm();
    let dir = tempfile::tempdir().unwrap();
    v.write_hf_files(dir.path()).unwrap();
    let back = Vocab::from_tokenizer_json(dir.path(), None).unwrap();
    assert_eq!(back.model, "llama");
    assert_eq!(back.pre, None);
    assert_eq!(back.tokens, v.tokens);
    assert_eq!(back.token_types, v.token_types);
    assert_eq!((back.bos, back.eos, back.unk), (Some(1), Some(2), Some(0)));
    assert_eq!(
        (back.add_bos, back.add_space_prefix),
        (Some(true), Some(true))
    );
    assert!(back.merges.is_empty());
    // Scores from merge ranks: the same merge order, hence the same tokenization.
    let scores = back.scores.as_deref().unwrap();
    let again = spm_merges(&back.tokens, scores);
    assert_eq!(again, spm_merges(&v.tokens, v.scores.as_deref().unwrap()));
    let meta = back.to_gguf_metadata();
    let get = |k: &str| {
        meta.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        get("tokenizer.ggml.model"),
        Some(GgufValue::String("llama".into()))
    );
    assert_eq!(
        get("tokenizer.ggml.add_space_prefix"),
        Some(GgufValue::Bool(true))
    );
    assert!(get("tokenizer.ggml.merges").is_none());
}

#[test]
fn spm_errors_name_the_key() {
    let mut v = tiny_spm();
    v.scores.as_mut().unwrap()[5] = f32::INFINITY;
    let err = v.to_tokenizer_json().unwrap_err().to_string();
    assert!(err.contains("tokenizer.ggml.scores[5]"), "{err}");
    let mut v = tiny_spm();
    v.token_types[7] = 0;
    let err = v.to_tokenizer_json().unwrap_err().to_string();
    assert!(err.contains("tokenizer.ggml.token_type[7]"), "{err}");
    let mut v = tiny_spm();
    v.scores = None;
    let err = v.to_tokenizer_json().unwrap_err().to_string();
    assert!(err.contains("tokenizer.ggml.scores"), "{err}");
}

/// A tiny Gemma 4 vocabulary: <pad> <eos> <bos> <unk>, byte tokens, pieces, newline runs.
fn tiny_gemma4() -> Vocab {
    let mut tokens: Vec<String> = vec!["<pad>".into(), "<eos>".into(), "<bos>".into()];
    let mut types = vec![TOKEN_TYPE_CONTROL; 3];
    tokens.push("<unk>".into());
    types.push(TOKEN_TYPE_UNKNOWN);
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(TOKEN_TYPE_BYTE);
    }
    for p in ["a", "b", "▁", "ab", "▁ab", "\n", "\n\n\n"] {
        tokens.push(p.into());
        types.push(TOKEN_TYPE_NORMAL);
    }
    Vocab {
        model: "gemma4".into(),
        tokens,
        token_types: types,
        merges: vec!["a b".into(), "▁ ab".into()],
        bos: Some(2),
        eos: Some(1),
        unk: Some(3),
        add_bos: Some(false),
        ..Vocab::default()
    }
}

#[test]
fn gemma4_tokenizer_json_encodes_as_llama_cpp() {
    let v = tiny_gemma4();
    let tok = v.to_tokenizer().unwrap();
    // No space prefix; spaces escaped; a newline run that is a token taken whole; bytes for the
    // rest; BOS added even though the file says add_bos = false (llama.cpp forces it).
    let ids = tok.encode("ab ab\n\n\nc", true).unwrap().get_ids().to_vec();
    assert_eq!(
        ids,
        [
            2,
            id(&v, "ab"),
            id(&v, "▁ab"),
            id(&v, "\n\n\n"),
            id(&v, "<0x63>")
        ]
    );
    let mut bad = tiny_gemma4();
    bad.merges.push("a zz".into());
    let err = bad.to_tokenizer_json().unwrap_err().to_string();
    assert!(err.contains("tokenizer.ggml.merges[2]"), "{err}");
    let mut bad = tiny_gemma4();
    bad.merges.push("ab".into());
    assert!(bad.to_tokenizer_json().is_err());
}

#[test]
fn spm_refuses_an_absurdly_long_piece() {
    let mut v = tiny_spm();
    v.tokens
        .push("x".repeat(qforge_convert::tokenizer::SPM_MAX_PIECE_BYTES + 1));
    v.token_types.push(TOKEN_TYPE_NORMAL);
    v.scores.as_mut().unwrap().push(-100.0);
    let err = v.to_tokenizer_json().unwrap_err().to_string();
    assert!(err.contains("tokenizer.ggml.tokens[266]"), "{err}");
}
