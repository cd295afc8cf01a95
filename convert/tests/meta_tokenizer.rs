//! Meta's tiktoken `tokenizer.model` written from the Llama 3 vocabulary llama.cpp ships
//! (`models/ggml-vocab-llama-bpe.gguf` of the llama.cpp sources `scripts/build-llama-cpp.sh`
//! unpacks): 128,000 ranks and Meta's 256 specials read back as the same tokenizer, and the
//! ranks are the ids (as in Meta's own file, where rank = line number).

use qforge_convert::meta_tokenizer::tiktoken_model;
use qforge_convert::tokenizer::{llama3_special_tokens, Llama3Specials, Vocab};

#[path = "support/cache_dir.rs"]
mod cache_dir;
use cache_dir::cache_dir;

#[test]
fn llama3_vocabulary_round_trips_through_tiktoken() {
    let path = cache_dir().join("llama.cpp-0.3.36/src/models/ggml-vocab-llama-bpe.gguf");
    if !path.is_file() {
        // scripts/test.sh unpacks the llama.cpp sources before `cargo test`, so under CI a
        // missing vocabulary is a broken setup, not a skip.
        let required = std::env::var("CI").as_deref() == Ok("true")
            || std::env::var("QFORGE_REQUIRE_DATA").as_deref() == Ok("1");
        assert!(
            !required,
            "{} not found (CI=true or QFORGE_REQUIRE_DATA=1): run scripts/build-llama-cpp.sh",
            path.display()
        );
        eprintln!(
            "meta_tokenizer: NOT RUN: {} not found (scripts/build-llama-cpp.sh unpacks it; \
             CI=true or QFORGE_REQUIRE_DATA=1 makes this a failure)",
            path.display()
        );
        return;
    }
    let vocab = Vocab::from_gguf_file(&path).unwrap();
    assert_eq!(vocab.tokens.len(), 128_256);
    // Llama 3 (3.0) names: <|reserved_special_token_2..5|> where 3.1 has named tokens.
    let bytes = tiktoken_model(&vocab, false).unwrap();
    let lines = bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    assert_eq!(lines, 128_000);
    let back = Vocab::from_tiktoken(&bytes, &llama3_special_tokens(Llama3Specials::V3)).unwrap();
    assert_eq!(back.tokens, vocab.tokens);
    assert_eq!(back.merges, vocab.merges);
    // A reader would give them Llama 3.1's names with llama3 RoPE scaling: refused.
    let err = tiktoken_model(&vocab, true).unwrap_err();
    assert!(err.contains("special tokens"), "{err}");
}
