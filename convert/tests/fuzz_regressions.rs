//! Inputs the mutation fuzzer (`qforge-fuzz`) found, minimized, each named after what it
//! exposed and asserted to give exactly the error it now gives.

use std::path::Path;

use qforge_convert::tokenizer::Vocab;
use qforge_convert::Error;

fn regression(rel: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fuzz-regressions")
            .join(rel),
    )
    .unwrap()
}

/// `Vocab::from_tokenizer_json` on `bytes` as a model directory's tokenizer.json: the reason
/// of the `Error::Tokenizer` it must give.
fn tokenizer_json_reason(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), bytes).unwrap();
    match Vocab::from_tokenizer_json(dir.path(), None) {
        Err(Error::Tokenizer { path, reason }) => {
            assert_eq!(path, dir.path().join("tokenizer.json"));
            reason
        }
        other => panic!("expected Error::Tokenizer, got {other:?}"),
    }
}

/// The `tokenizers` crate loads a `TemplateProcessing` whose pieces name a special token its
/// `special_tokens` map lacks, then panics indexing the map when encoding (the probe text that
/// identifies the pre-tokenizer).
#[test]
fn tokenizer_json_template_special_token_missing() {
    let reason = tokenizer_json_reason(&regression(
        "tokenizer-json/template-special-token-missing.json",
    ));
    assert_eq!(
        reason,
        "the tokenizers library panicked encoding the pre-tokenizer probe text: no entry found for key"
    );
}

/// The `tokenizers` crate slices a BPE merge by the length of `continuing_subword_prefix`
/// without checking it, and panics while loading.
#[test]
fn tokenizer_json_bpe_merge_prefix_slice() {
    let reason = tokenizer_json_reason(&regression("tokenizer-json/bpe-merge-prefix-slice.json"));
    assert_eq!(
        reason,
        "the tokenizers library cannot load it: it panicked: range end index 3 out of range for slice of length 2"
    );
}

/// A `params.json` whose `dim` makes Meta's FFN width rule (8·dim/3) overflow 64 bits: found
/// by the bounded CI pass in a debug build (overflow checks on), where release wrapped
/// silently. Now the width is computed in 128 bits and the limits reject it.
#[test]
fn meta_params_ffn_width_overflow() {
    let text = String::from_utf8(regression("meta-params/ffn-width-overflow.json")).unwrap();
    match qforge_convert::ModelConfig::from_meta_params(&text, None) {
        Err(qforge_convert::ConfigError::Invalid { field, .. }) => {
            assert!(
                ["dim", "hidden_size", "intermediate_size"].contains(&field),
                "{field}"
            );
        }
        other => panic!("expected ConfigError::Invalid, got {other:?}"),
    }
    assert_eq!(
        qforge_convert::config::meta_ffn_dim(u64::MAX, Some(63.0), u64::MAX),
        u64::MAX
    );
}
