//! Tokenizers: the GGUF `tokenizer.ggml.*` view of a tokenizer ([`Vocab`]) and its conversions
//! to and from Hugging Face `tokenizer.json` and Meta's tiktoken `tokenizer.model`
//! (specs/gguf.md §5, specs/meta.md §3.4).
//!
//! ```text
//! GGUF metadata ──Vocab::from_gguf──────────┐
//! HF tokenizer.json ──Vocab::from_tokenizer_json──► Vocab ──to_tokenizer_json / to_tokenizer_config_json──► HF
//! Meta tokenizer.model ──Vocab::from_tiktoken──┘      └──to_gguf_metadata──► GGUF
//! ```
//!
//! Byte-level BPE (`tokenizer.ggml.model = "gpt2"`), SentencePiece (`"llama"`, spm.rs) and
//! Gemma 4 (`"gemma4"`, GGUF → HF only) vocabularies are converted to `tokenizer.json`; other
//! models (WordPiece `"bert"`, Unigram `"t5"`, …) are refused. BPE pre-tokenizers by
//! llama.cpp name are in pretok.rs.
//!
//! The pre-tokenizer written for each `tokenizer.ggml.pre` reproduces what llama.cpp does for
//! that name (src/llama-vocab.cpp), not what transformers 5.23 does: transformers maps `smollm`
//! to plain GPT-2 splitting and so does not split numbers into single digits, which changes the
//! token ids of every number (specs/gguf.md §5 "Gap"). See [`PRE_TOKENIZERS`] for the names
//! understood and what each becomes.
//!
//! Every reader treats its input as hostile: lengths, ids and types are checked before use, and
//! every failure is an [`Error::Tokenizer`] naming the file and what is wrong. The writers
//! validate the merges before handing them to the `tokenizers` crate (whose BPE builder would
//! otherwise fail, or index out of bounds on a merge whose halves are longer than any token).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Serialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::gguf::{self, GgufArray, GgufMetadata, GgufValue, StringArray};
use crate::mmap::MappedFile;

mod pretok;
mod sentencepiece;
mod spm;
pub use pretok::{
    PreTokenizer, DEEPSEEK3_PATTERNS, DEEPSEEK_CODER_PATTERNS, DEEPSEEK_LLM_PATTERNS,
    DEFAULT_PATTERNS, FALCON_PATTERNS, GPT2_PATTERN, LLAMA3_PATTERN, PRE_TOKENIZERS, QWEN2_PATTERN,
    QWEN35_PATTERN,
};
pub use sentencepiece::MAX_SENTENCEPIECE_BYTES;
pub use spm::{is_byte_token, spm_merges, SPM_MAX_PIECE_BYTES, SPM_SPACE};

/// GGUF token type: a normal token (`tokenizer.ggml.token_type`, gguf-py `TokenType`).
pub const TOKEN_TYPE_NORMAL: i32 = 1;
/// GGUF token type: the unknown token.
pub const TOKEN_TYPE_UNKNOWN: i32 = 2;
/// GGUF token type: a control token (HF: a special added token such as `<|eot_id|>`).
pub const TOKEN_TYPE_CONTROL: i32 = 3;
/// GGUF token type: a user-defined token (HF: a non-special added token).
pub const TOKEN_TYPE_USER_DEFINED: i32 = 4;
/// GGUF token type: an unused id (the `[PAD{i}]` fillers of gaps in an HF vocabulary).
pub const TOKEN_TYPE_UNUSED: i32 = 5;
/// GGUF token type: a byte token (`<0x41>`, SentencePiece byte fallback).
pub const TOKEN_TYPE_BYTE: i32 = 6;

/// The probe text llama.cpp's `convert_hf_to_gguf.py` (`get_vocab_base_pre`, conversion/base.py)
/// tokenizes to identify a BPE pre-tokenizer: the sha256 of the Python `str()` of the token id
/// list names the pre-tokenizer (see [`KNOWN_PRE_HASHES`]). Its UTF-8 has sha256
/// `a36179c1e2b1cfcfbfad1dc779addad2ffc778201e4cf0d538bddeafa2c526da`.
pub const PRE_PROBE_TEXT: &str = concat!(
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n\u{1f680} (normal) \u{1f636}",
    "\u{200d}\u{1f32b}\u{fe0f} (multiple emojis concatenated) \u{2705} \u{1f999}",
    "\u{1f999} 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 \u{1780}",
    "\u{17b6}\u{1793}\u{17cb}\u{178f}\u{17c2}\u{1796}\u{17b7}\u{179f}\u{17c1}",
    "\u{179f}\u{17a2}\u{17b6}\u{1785}\u{1f601} ?\u{6211}\u{60f3}\u{5728}apple",
    "\u{5de5}\u{4f5c}1314151\u{5929}\u{ff5e} ------======= \u{43d}\u{435}\u{449}",
    "\u{43e} \u{43d}\u{430} \u{411}\u{44a}\u{43b}\u{433}\u{430}\u{440}\u{441}",
    "\u{43a}\u{438} ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's th",
    "ere, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL",
);

/// `(sha256, tokenizer.ggml.pre)` pairs from llama.cpp's `get_vocab_base_pre`
/// (conversion/base.py of the llama.cpp vendored by llama-cpp-python 0.3.36, commit 0c1e57098):
/// every entry whose name is in [`PRE_TOKENIZERS`]. Where two references share a hash, the name
/// is the one llama.cpp ends up with (its checks are consecutive `if`s, the last match wins).
///
/// The first seven were reproduced by hashing the `tokenizer.json` this module writes from
/// llama.cpp's own vocabulary files (models/ggml-vocab-{llama-bpe,gpt-2,starcoder,refact,
/// command-r,mpt}.gguf) and from SmolLM2-135M-Instruct's GGUF; the others are transcribed.
pub const KNOWN_PRE_HASHES: &[(&str, &str)] = &[
    // ref: https://huggingface.co/meta-llama/Meta-Llama-3-8B
    (
        "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5",
        "llama-bpe",
    ),
    // ref: https://huggingface.co/mosaicml/mpt-7b
    // ref: https://huggingface.co/allenai/OLMo-1.7-7B-hf
    (
        "b6dc8df998e1cfbdc4eac8243701a65afe638679230920b50d6f17d81c098166",
        "olmo",
    ),
    // ref: https://huggingface.co/bigcode/starcoder2-3b
    (
        "35d91631860c815f952d711435f48d356ebac988362536bed955d43bfa436e34",
        "starcoder",
    ),
    // ref: https://huggingface.co/openai-community/gpt2
    (
        "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454",
        "gpt-2",
    ),
    // ref: https://huggingface.co/smallcloudai/Refact-1_6-base
    (
        "6221ad2852e85ce96f791f476e0b390cf9b474c9e3d1362f53a24a06dc8220ff",
        "refact",
    ),
    // ref: https://huggingface.co/CohereForAI/c4ai-command-r-v01
    (
        "9c2227e4dd922002fb81bde4fc02b0483ca4f12911410dee2255e4987644e3f8",
        "command-r",
    ),
    // ref: https://huggingface.co/HuggingFaceTB/SmolLM-135M
    (
        "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249",
        "smollm",
    ),
    // Transcribed, not reproduced here (no vocabulary file at hand).
    // ref: https://huggingface.co/sapienzanlp/Minerva-7B-base-v1.0
    (
        "1431a23e583c97432bc230bff598d103ddb5a1f89960c8f1d1051aaa944d0b35",
        "minerva-7b",
    ),
    // ref: https://huggingface.co/tiiuae/Falcon-H1-0.5B-Base
    (
        "a6b57017d60e6edb4d88ecc2845188e0eb333a70357e45dcc9b53964a73bbae6",
        "falcon-h1",
    ),
    // ref: https://huggingface.co/tiiuae/Falcon-H1-1B-Base
    (
        "60476e1243776c4fb1b993dbd7a5f15ac22f83c80afdf425fa5ae01c8d44ef86",
        "falcon-h1",
    ),
    // ref: https://huggingface.co/tiiuae/Falcon-H1-7B-Base
    (
        "3eda48b4c4dc7de733d1a8b3e3b4a85243dbbf704da2ee9d42c6beced8897896",
        "falcon-h1",
    ),
    // ref: https://huggingface.co/tiiuae/Falcon-H1-34B-Base
    (
        "48f8e02c0359c0bbdd82f26909171fac1c18a457bb47573ed1fe3bbb2c1cfd4b",
        "falcon-h1",
    ),
    // ref: https://huggingface.co/evilfreelancer/ruGPT3XL
    (
        "0fe1cf6eda062318a1af7270f3331a85c539a01778ff948e24388e949c5282f4",
        "gpt-2",
    ),
    // ref: https://huggingface.co/LiquidAI/LFM2.5-8B-A1B
    (
        "9e454714343b69b99b71795c1d27a68c2a1d15dab111f4d353109f966af29da7",
        "lfm2",
    ),
    // ref: https://huggingface.co/tiiuae/Falcon3-7B-Base
    (
        "9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e",
        "falcon3",
    ),
    // ref: https://huggingface.co/jinaai/jina-embeddings-v5-text-nano
    (
        "a023e9fdc5a11f034d3ef515b92350e56fb2af1f66c6b6811a4444ea9bf8763d",
        "jina-v5-nano",
    ),
    // ref: https://huggingface.co/WisdomShell/CodeShell-7B
    (
        "7b3e7548e4308f52a76e8229e4e6cc831195d0d1df43aed21ac6c93da05fec5f",
        "codeshell",
    ),
    // ref: https://huggingface.co/LGAI-EXAONE/EXAONE-3.0-7.8B-Instruct
    (
        "4e2b24cc4770243d65a2c9ec19770a72f08cffc161adbb73fcbb6b7dd45a0aae",
        "exaone",
    ),
    // ref: https://huggingface.co/microsoft/phi-2
    (
        "fcace8b9cac38ce847670c970cd5892031a753a1ef381abd1d9af00f713da085",
        "phi-2",
    ),
    // ref: https://huggingface.co/ai-sage/GigaChat-20B-A3B-instruct
    (
        "ad851be1dba641f2e3711822f816db2c265f788b37c63b4e1aeacb9ee92de8eb",
        "gigachat",
    ),
    // ref: https://huggingface.co/mistral-community/pixtral-12b
    (
        "0e9433cbbb161f89e264eb32e8e64bfe69e834973ffca5d41d3948a604a3e2a3",
        "pixtral",
    ),
    // ref: https://huggingface.co/skt/A.X-4.0
    (
        "b0a6b1c0bd5998ebd9df08611efde34a4ff03faed45ae09c43e6b31ebd4b94cf",
        "a.x-4.0",
    ),
    // ref: https://huggingface.co/K-intelligence/Midm-2.0-Base-Instruct
    (
        "f6791d196f87ce6b56a7d234be618e0d58f8cda3549416635b2bebcd22cd95c4",
        "midm-2.0",
    ),
    // ref: https://huggingface.co/LiquidAI/LFM2.5-350M
    (
        "169bf0296a13c4d9b7672313f749eb36501d931022de052aad6e36f2bf34dd51",
        "lfm2",
    ),
    // ref: https://huggingface.co/LGAI-EXAONE/EXAONE-4.0-32B
    (
        "2085e1638f6c377a0aa4ead21b27bb4cb941bf800df86ed391011769c1758dfb",
        "exaone4",
    ),
    // ref: https://huggingface.co/JetBrains/Mellum-4b-base
    (
        "a1e163ecab2e718a4c829d1148b6e86824ec36163bb71941c3dca9cd5ac25756",
        "mellum",
    ),
    // ref: https://huggingface.co/JetBrains/Mellum2-12B-A2.5B-Base
    (
        "9dcf830ee9990cdbf78cc523a5f7bd9ad8f3f9890c2d3581d2785ad10f07049d",
        "mellum2",
    ),
    // ref: https://huggingface.co/Qwen/Qwen1.5-7B
    (
        "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea",
        "qwen2",
    ),
    // ref: https://huggingface.co/Qwen/Qwen3-Embedding-0.6B
    (
        "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c",
        "qwen2",
    ),
    // ref: https://huggingface.co/Qwen/Qwen3.5-9B-Instruct
    (
        "d30d75d9059f1aa2c19359de71047b3ae408c70875e8a3ccf8c5fba56c9d8af4",
        "qwen35",
    ),
    // ref: https://huggingface.co/openbmb/MiniCPM-V-4_6
    (
        "1444df51289cfa8063b96f0e62b1125440111bc79a52003ea14b6eac7016fd5f",
        "qwen35",
    ),
    // ref: https://huggingface.co/deepseek-ai/deepseek-llm-7b-base
    (
        "049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754",
        "deepseek-llm",
    ),
    // ref: https://huggingface.co/deepseek-ai/deepseek-coder-6.7b-base
    (
        "347715f544604f9118bb75ed199f68779f423cabb20db6de6f31b908d04d7821",
        "deepseek-coder",
    ),
    // ref: https://huggingface.co/deepseek-ai/DeepSeek-V3
    (
        "877081d19cf6996e2c4ff0e1236341e9b7bde288f5311a56a937f0afbbb3aeb5",
        "deepseek-v3",
    ),
    // ref: https://huggingface.co/deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B
    (
        "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5",
        "deepseek-r1-qwen",
    ),
    // ref: https://huggingface.co/tiiuae/falcon-7b
    (
        "8aeee3860c56296a157a1fe2fad249ec40aa59b1bb5709f4ade11c4e6fe652ed",
        "falcon",
    ),
    // ref: https://huggingface.co/stabilityai/stablelm-2-zephyr-1_6b
    (
        "32d85c31273f8019248f2559fed492d929ea28b17e51d81d3bb36fff23ca72b3",
        "stablelm2",
    ),
    // ref: https://huggingface.co/Infinigence/Megrez-3B-Instruct
    (
        "d4c8f286ea6b520b3d495c4455483cfa2302c0cfcd4be05d781b6a8a0a7cdaf1",
        "megrez",
    ),
];

/// Which release's names the 256 Llama 3 special tokens get (specs/meta.md §3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Llama3Specials {
    /// Llama 3: `<|reserved_special_token_2..5|>` where 3.1 has named tokens.
    V3,
    /// Llama 3.1 (also 3.2 text, 3.3): `<|finetune_right_pad_id|>`, `<|eom_id|>`,
    /// `<|python_tag|>`.
    V3_1,
}

/// The 256 special tokens of Llama 3 / 3.1, for ids 128000.. in order (transformers'
/// `DEFAULT_LLAMA_SPECIAL_TOKENS`, convert_llama_weights_to_hf.py).
pub fn llama3_special_tokens(version: Llama3Specials) -> Vec<String> {
    let reserved = |i: usize| format!("<|reserved_special_token_{i}|>");
    let (named, rest): (Vec<String>, std::ops::Range<usize>) = match version {
        Llama3Specials::V3 => (
            vec![
                "<|begin_of_text|>".into(),
                "<|end_of_text|>".into(),
                reserved(0),
                reserved(1),
                reserved(2),
                reserved(3),
                "<|start_header_id|>".into(),
                "<|end_header_id|>".into(),
                reserved(4),
                "<|eot_id|>".into(),
            ],
            5..251,
        ),
        Llama3Specials::V3_1 => (
            vec![
                "<|begin_of_text|>".into(),
                "<|end_of_text|>".into(),
                reserved(0),
                reserved(1),
                "<|finetune_right_pad_id|>".into(),
                reserved(2),
                "<|start_header_id|>".into(),
                "<|end_header_id|>".into(),
                "<|eom_id|>".into(),
                "<|eot_id|>".into(),
                "<|python_tag|>".into(),
            ],
            3..248,
        ),
    };
    named.into_iter().chain(rest.map(reserved)).collect()
}

/// GPT-2's byte-to-character table (`bytes_to_unicode`): printable Latin-1 bytes stand for
/// themselves, the other 68 bytes map to U+0100..U+0143 in byte order.
pub fn byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 0x100u32;
    for (b, slot) in (0u8..=255).zip(table.iter_mut()) {
        *slot = if matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF) {
            char::from(b)
        } else {
            let c = char::from_u32(next).unwrap_or(char::REPLACEMENT_CHARACTER);
            next += 1;
            c
        };
    }
    table
}

/// Whether every character of `s` is in GPT-2's byte alphabet (the image of [`byte_to_char`]).
pub fn is_byte_level(s: &str) -> bool {
    s.chars()
        .all(|c| matches!(u32::from(c), 33..=126 | 161..=172 | 174..=323))
}

/// Spell bytes in GPT-2's byte alphabet (`"Ġthe"` for `b" the"`).
pub fn byte_level_spelling(bytes: &[u8], table: &[char; 256]) -> String {
    bytes.iter().map(|&b| table[usize::from(b)]).collect()
}

/// The message of a caught panic.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// `tokenizers::Tokenizer::from_str`, with a panic of the library (it slices merges by the
/// length of `continuing_subword_prefix` unchecked, for one) turned into an error.
fn load_tokenizer(text: &str) -> std::result::Result<tokenizers::Tokenizer, String> {
    std::panic::catch_unwind(|| tokenizers::Tokenizer::from_str(text))
        .map_err(|p| format!("it panicked: {}", panic_message(&*p)))?
        .map_err(|e| e.to_string())
}

/// The sha256 (hex) llama.cpp's converter computes to identify a BPE pre-tokenizer: token ids of
/// [`PRE_PROBE_TEXT`], encoded with special tokens added (transformers' `tokenizer.encode`),
/// written like a Python list (`[1, 2, 3]`).
///
/// The `tokenizers` crate panics on some inconsistent files it loads without complaint (a
/// `TemplateProcessing` piece naming a special token its map lacks indexes the map): such a
/// panic is caught here and reported as [`Error::Tokenizer`], like any other bad file.
pub fn pre_probe_hash(tokenizer: &tokenizers::Tokenizer) -> Result<String> {
    let encoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        tokenizer.encode(PRE_PROBE_TEXT, true)
    }))
    .map_err(|panic| {
        format!(
            "the tokenizers library panicked encoding the pre-tokenizer probe text: {}",
            panic_message(&*panic)
        )
    })
    .map_err(tok_err("tokenizer.json"))?;
    let enc = encoded
        .map_err(|e| format!("encoding the pre-tokenizer probe text failed: {e}"))
        .map_err(tok_err("tokenizer.json"))?;
    let ids: Vec<String> = enc.get_ids().iter().map(u32::to_string).collect();
    let text = format!("[{}]", ids.join(", "));
    Ok(hex::encode(Sha256::digest(text.as_bytes())))
}

/// The `tokenizer.ggml.pre` name for a probe hash, if it is one of [`KNOWN_PRE_HASHES`].
pub fn pre_for_hash(hash: &str) -> Option<&'static str> {
    KNOWN_PRE_HASHES
        .iter()
        .find(|(h, _)| *h == hash)
        .map(|&(_, name)| name)
}

/// Largest `tokenizer.json` / `tokenizer_config.json` / `config.json` read (Llama 3's
/// tokenizer.json is 9 MB).
pub const MAX_JSON_BYTES: u64 = 256 << 20;
/// Largest vocabulary accepted from HF or tiktoken files (real ones have at most ~260k tokens);
/// bounds the `[PAD{i}]` filling of id gaps.
pub const MAX_VOCAB: usize = 1 << 24;

/// The GGUF `tokenizer.ggml.*` view of a tokenizer: what llama.cpp reads, id = index.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Vocab {
    /// `tokenizer.ggml.model`: `"gpt2"` (byte-level BPE) or `"llama"` (SentencePiece).
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer name (`"llama-bpe"`, `"smollm"`, `"gpt-2"`, …).
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`: token text by id; byte-level spelling for BPE (`"Ġthe"`),
    /// added tokens as written (`"<|eot_id|>"`), `[PAD{i}]` for unused ids.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type`, one per token (`TOKEN_TYPE_*`).
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.merges`: `"left right"` in priority order (first = merged first).
    pub merges: Vec<String>,
    /// `tokenizer.ggml.scores` (SentencePiece only).
    pub scores: Option<Vec<f32>>,
    /// `tokenizer.ggml.bos_token_id`
    pub bos: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`
    pub eos: Option<u32>,
    /// `tokenizer.ggml.eot_token_id`
    pub eot: Option<u32>,
    /// `tokenizer.ggml.eom_token_id`
    pub eom: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`
    pub unk: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`
    pub pad: Option<u32>,
    /// `tokenizer.ggml.add_bos_token` (absent: llama.cpp's default for the pre-tokenizer).
    pub add_bos: Option<bool>,
    /// `tokenizer.ggml.add_eos_token`
    pub add_eos: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix` (SentencePiece; absent: llama.cpp's default, true).
    pub add_space_prefix: Option<bool>,
    /// `tokenizer.chat_template` (Jinja).
    pub chat_template: Option<String>,
}

/// Result of the internal helpers: a reason, turned into [`Error::Tokenizer`] with a path at
/// the public boundary.
type Why<T> = std::result::Result<T, String>;

fn tok_err(path: impl Into<PathBuf>) -> impl FnOnce(String) -> Error {
    let path = path.into();
    move |reason| Error::Tokenizer { path, reason }
}

impl Vocab {
    /// Read the `tokenizer.ggml.*` keys of GGUF metadata, checking their types and lengths as
    /// llama.cpp does (a `gpt2` vocabulary must have merges).
    pub fn from_gguf(meta: &GgufMetadata) -> Result<Self> {
        Self::gguf_inner(meta).map_err(tok_err("GGUF metadata"))
    }

    /// Map and parse a GGUF file (its whole header is validated) and read its tokenizer.
    pub fn from_gguf_file(path: &Path) -> Result<Self> {
        let file = MappedFile::open(path)?;
        let (meta, _) = gguf::parse(file.bytes()).map_err(|kind| Error::Gguf {
            path: path.into(),
            kind,
        })?;
        Self::gguf_inner(&meta).map_err(tok_err(path))
    }

    fn gguf_inner(meta: &GgufMetadata) -> Why<Self> {
        let str_key = |key: &str| -> Why<Option<String>> {
            match meta.get(key) {
                None => Ok(None),
                Some(GgufValue::String(s)) => Ok(Some(s.clone())),
                Some(v) => Err(format!("{key} is {:?}, expected a string", v.ty())),
            }
        };
        let bool_key = |key: &str| -> Why<Option<bool>> {
            match meta.get(key) {
                None => Ok(None),
                Some(GgufValue::Bool(b)) => Ok(Some(*b)),
                Some(v) => Err(format!("{key} is {:?}, expected a bool", v.ty())),
            }
        };
        let id_key = |key: &str| -> Why<Option<u32>> {
            match meta.get(key) {
                None => Ok(None),
                Some(v) => v
                    .as_u64()
                    .and_then(|x| u32::try_from(x).ok())
                    .map(Some)
                    .ok_or_else(|| format!("{key} is {v:?}, expected a u32 token id")),
            }
        };
        let str_array = |key: &str| -> Why<Option<&StringArray>> {
            match meta.get(key) {
                None => Ok(None),
                Some(GgufValue::Array(GgufArray::String(a))) => Ok(Some(a)),
                Some(v) => Err(format!(
                    "{key} is {:?}, expected an array of strings",
                    v.ty()
                )),
            }
        };

        let model = str_key("tokenizer.ggml.model")?
            .ok_or("no tokenizer.ggml.model key: the file has no tokenizer")?;
        let tokens: Vec<String> = str_array("tokenizer.ggml.tokens")?
            .ok_or("no tokenizer.ggml.tokens")?
            .iter()
            .map(str::to_owned)
            .collect();
        let n = tokens.len();
        let token_types = match meta.get("tokenizer.ggml.token_type") {
            None => vec![TOKEN_TYPE_NORMAL; n],
            Some(GgufValue::Array(a)) => {
                let types = int_array_i32(a).ok_or_else(|| {
                    format!(
                        "tokenizer.ggml.token_type is an array of {:?}, expected i32",
                        a.elem_type()
                    )
                })?;
                if types.len() != n {
                    return Err(format!(
                        "tokenizer.ggml.token_type has {} entries for {n} tokens",
                        types.len()
                    ));
                }
                types
            }
            Some(v) => {
                return Err(format!(
                    "tokenizer.ggml.token_type is {:?}, expected an array",
                    v.ty()
                ))
            }
        };
        let merges: Vec<String> = match str_array("tokenizer.ggml.merges")? {
            Some(a) => a.iter().map(str::to_owned).collect(),
            None if model == "gpt2" => {
                return Err("a gpt2 (BPE) vocabulary without tokenizer.ggml.merges".into())
            }
            None => Vec::new(),
        };
        let scores = match meta.get("tokenizer.ggml.scores") {
            None => None,
            Some(GgufValue::Array(GgufArray::F32(s))) if s.len() == n => Some(s.clone()),
            Some(GgufValue::Array(GgufArray::F32(s))) => {
                return Err(format!(
                    "tokenizer.ggml.scores has {} entries for {n} tokens",
                    s.len()
                ))
            }
            Some(v) => return Err(format!("tokenizer.ggml.scores is {v:?}, expected f32[]")),
        };
        Ok(Vocab {
            model,
            pre: str_key("tokenizer.ggml.pre")?,
            tokens,
            token_types,
            merges,
            scores,
            bos: id_key("tokenizer.ggml.bos_token_id")?,
            eos: id_key("tokenizer.ggml.eos_token_id")?,
            eot: id_key("tokenizer.ggml.eot_token_id")?,
            eom: id_key("tokenizer.ggml.eom_token_id")?,
            unk: id_key("tokenizer.ggml.unknown_token_id")?,
            pad: id_key("tokenizer.ggml.padding_token_id")?,
            add_bos: bool_key("tokenizer.ggml.add_bos_token")?,
            add_eos: bool_key("tokenizer.ggml.add_eos_token")?,
            add_space_prefix: bool_key("tokenizer.ggml.add_space_prefix")?,
            chat_template: str_key("tokenizer.chat_template")?,
        })
    }

    /// The `tokenizer.*` metadata entries for a GGUF file, with the value types llama.cpp
    /// checks (u32 ids, bool flags, i32 token types), in gguf-py's order.
    pub fn to_gguf_metadata(&self) -> Vec<(String, GgufValue)> {
        let mut out = vec![(
            "tokenizer.ggml.model".to_owned(),
            GgufValue::String(self.model.clone()),
        )];
        if let Some(pre) = &self.pre {
            out.push(("tokenizer.ggml.pre".into(), GgufValue::String(pre.clone())));
        }
        out.push((
            "tokenizer.ggml.tokens".into(),
            GgufValue::Array(GgufArray::String(self.tokens.iter().collect())),
        ));
        if let Some(scores) = &self.scores {
            out.push((
                "tokenizer.ggml.scores".into(),
                GgufValue::Array(GgufArray::F32(scores.clone())),
            ));
        }
        out.push((
            "tokenizer.ggml.token_type".into(),
            GgufValue::Array(GgufArray::I32(self.token_types.clone())),
        ));
        if !self.merges.is_empty() || self.model == "gpt2" {
            out.push((
                "tokenizer.ggml.merges".into(),
                GgufValue::Array(GgufArray::String(self.merges.iter().collect())),
            ));
        }
        for (key, id) in [
            ("bos_token_id", self.bos),
            ("eos_token_id", self.eos),
            ("eot_token_id", self.eot),
            ("eom_token_id", self.eom),
            ("unknown_token_id", self.unk),
            ("padding_token_id", self.pad),
        ] {
            if let Some(id) = id {
                out.push((format!("tokenizer.ggml.{key}"), GgufValue::U32(id)));
            }
        }
        for (key, flag) in [
            ("add_bos_token", self.add_bos),
            ("add_eos_token", self.add_eos),
            ("add_space_prefix", self.add_space_prefix),
        ] {
            if let Some(flag) = flag {
                out.push((format!("tokenizer.ggml.{key}"), GgufValue::Bool(flag)));
            }
        }
        if let Some(t) = &self.chat_template {
            out.push((
                "tokenizer.chat_template".into(),
                GgufValue::String(t.clone()),
            ));
        }
        out
    }

    /// The pre-tokenizer [`Vocab::to_tokenizer_json`] writes for [`Vocab::pre`].
    pub fn pre_tokenizer(&self) -> Option<PreTokenizer> {
        PreTokenizer::from_pre(self.pre.as_deref())
    }

    /// Whether BOS is prepended: `add_bos`, else llama.cpp's default for the pre-tokenizer.
    pub fn effective_add_bos(&self) -> bool {
        // llama.cpp (llama_vocab::impl::load) forces add_bos on for Gemma 4.
        if self.model == "gemma4" {
            return true;
        }
        self.add_bos.unwrap_or_else(|| {
            self.model == "llama"
                || self
                    .pre_tokenizer()
                    .is_some_and(PreTokenizer::default_add_bos)
        })
    }

    /// Whether EOS is appended (`add_eos`, default false).
    pub fn effective_add_eos(&self) -> bool {
        self.add_eos.unwrap_or(false)
    }

    /// Token `id`'s text, if `id` is in range.
    pub fn token(&self, id: u32) -> Option<&str> {
        self.tokens
            .get(usize::try_from(id).ok()?)
            .map(String::as_str)
    }

    /// An HF `tokenizer.json` for this vocabulary (byte-level BPE only), tokenizing as
    /// llama.cpp does for the same GGUF: see the module documentation and [`PreTokenizer`].
    ///
    /// * model: BPE over every token (id = index), with `ignore_merges` for the Llama 3 family;
    ///   each token under its text as stored. (transformers respells a token outside GPT-2's
    ///   byte alphabet through it; llama.cpp does not, so such a normal token can never come
    ///   out of its BPE, and we keep it that way.) Control and user-defined tokens are also
    ///   added tokens, matched in the raw text as written.
    /// * merges: `"a b"` split at the first space after the first character (llama.cpp's
    ///   rule); a repeated pair keeps its first (highest) priority, as llama.cpp's `emplace`
    ///   does. A merge whose halves or result are not tokens is an error.
    /// * added tokens: control → special, user-defined → not special; never normalized.
    /// * post-processor: ByteLevel, then TemplateProcessing with BOS (and EOS) when
    ///   [`Vocab::effective_add_bos`] (`add_eos`) holds. Decoder: ByteLevel. No normalizer.
    pub fn to_tokenizer_json(&self) -> Result<Value> {
        self.json_inner().map_err(tok_err("tokenizer.json"))
    }

    fn json_inner(&self) -> Why<Value> {
        if self.model == "llama" {
            return self.spm_json_inner();
        }
        if self.model == "gemma4" {
            return self.gemma4_json_inner();
        }
        if self.model != "gpt2" {
            return Err(format!(
                "only byte-level BPE (tokenizer.ggml.model \"gpt2\"), SentencePiece \
                 (\"llama\") and Gemma 4 (\"gemma4\") vocabularies can be written as \
                 tokenizer.json; this one is {:?}",
                self.model
            ));
        }
        let kind = self.pre_tokenizer().ok_or_else(|| {
            format!(
                "tokenizer.ggml.pre {:?} is not one qforge can reproduce; known: {}",
                self.pre.as_deref().unwrap_or_default(),
                PRE_TOKENIZERS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        self.check_lengths()?;
        let n = self.tokens.len();
        if u32::try_from(n).is_err() {
            return Err(format!("{n} tokens do not fit u32 ids"));
        }

        // Vocabulary: every token; a repeated text maps to its last id (llama.cpp's
        // `token_to_id[text] = id` in id order; transformers' dict does the same).
        let mut vocab = Map::with_capacity(n);
        let mut added = Vec::new();
        for (id, (text, &ty)) in self.tokens.iter().zip(&self.token_types).enumerate() {
            let is_added = ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED;
            let key = text.clone();
            vocab.remove(&key);
            vocab.insert(key, Value::from(id as u64));
            if is_added && !text.is_empty() {
                added.push(json!({
                    "id": id, "content": text, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": ty == TOKEN_TYPE_CONTROL,
                }));
            }
        }
        // A text repeated at a later id maps to that id; an added token must point at the id
        // its text resolves to, or `tokenizers` would assign it a new one.
        added.retain(|t| vocab.get(t["content"].as_str().unwrap_or_default()) == Some(&t["id"]));

        let mut merges = Vec::with_capacity(self.merges.len());
        let mut seen = HashSet::with_capacity(self.merges.len());
        for (i, m) in self.merges.iter().enumerate() {
            let (a, b) = split_merge(m)
                .ok_or_else(|| format!("merge {i} {m:?} is not two space-separated parts"))?;
            for part in [a, b, &format!("{a}{b}")] {
                if !vocab.contains_key(part) {
                    return Err(format!("merge {i} {m:?}: {part:?} is not a token"));
                }
            }
            if seen.insert((a, b)) {
                merges.push(json!([a, b]));
            }
        }

        Ok(json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": kind.to_json(),
            "post_processor": self.post_processor()?,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                        "use_regex": true},
            "model": {
                "type": "BPE",
                "dropout": null,
                "unk_token": null,
                "continuing_subword_prefix": null,
                "end_of_word_suffix": null,
                "fuse_unk": false,
                "byte_fallback": false,
                "ignore_merges": kind.ignore_merges(),
                "vocab": vocab,
                "merges": merges,
            },
        }))
    }

    pub(super) fn check_lengths(&self) -> Why<()> {
        if self.token_types.len() != self.tokens.len() {
            return Err(format!(
                "{} token types for {} tokens",
                self.token_types.len(),
                self.tokens.len()
            ));
        }
        Ok(())
    }

    /// ByteLevel (offsets only) followed by BOS/EOS insertion as the flags say.
    fn post_processor(&self) -> Why<Value> {
        let byte_level = json!({"type": "ByteLevel", "add_prefix_space": true,
                                "trim_offsets": false, "use_regex": true});
        Ok(match self.template_processor()? {
            Value::Null => byte_level,
            template => json!({"type": "Sequence", "processors": [byte_level, template]}),
        })
    }

    /// A `TemplateProcessing` inserting BOS (and EOS) as [`Vocab::effective_add_bos`]
    /// (`add_eos`) say, or null when neither is added.
    pub(super) fn template_processor(&self) -> Why<Value> {
        let special = |what: &str, id: Option<u32>| -> Why<(String, u32)> {
            let id = id.ok_or_else(|| format!("add_{what}_token is set but no {what} id"))?;
            let text = self
                .token(id)
                .ok_or_else(|| format!("{what} id {id} is out of range"))?;
            Ok((text.to_owned(), id))
        };
        let bos = self
            .effective_add_bos()
            .then(|| special("bos", self.bos))
            .transpose()?;
        let eos = self
            .effective_add_eos()
            .then(|| special("eos", self.eos))
            .transpose()?;
        if bos.is_none() && eos.is_none() {
            return Ok(Value::Null);
        }
        let tok = |t: &(String, u32), type_id: u32| json!({"SpecialToken": {"id": t.0, "type_id": type_id}});
        let seq = |name: &str, type_id: u32| json!({"Sequence": {"id": name, "type_id": type_id}});
        let side = |name: &str, type_id: u32| -> Vec<Value> {
            let mut items = Vec::new();
            items.extend(bos.as_ref().map(|t| tok(t, type_id)));
            items.push(seq(name, type_id));
            items.extend(eos.as_ref().map(|t| tok(t, type_id)));
            items
        };
        let single = side("A", 0);
        let mut pair = side("A", 0);
        pair.extend(side("B", 1));
        let mut specials = Map::new();
        for t in bos.iter().chain(eos.iter()) {
            specials.insert(
                t.0.clone(),
                json!({"id": t.0, "ids": [t.1], "tokens": [t.0]}),
            );
        }
        Ok(json!({
            "type": "TemplateProcessing", "single": single, "pair": pair,
            "special_tokens": specials,
        }))
    }

    /// An HF `tokenizer_config.json`: special token texts, `add_bos_token` / `add_eos_token`,
    /// the chat template, `clean_up_tokenization_spaces` as llama.cpp's `clean_spaces` for the
    /// pre-tokenizer, `tokenizer_class` `PreTrainedTokenizerFast`.
    pub fn to_tokenizer_config_json(&self) -> Result<Value> {
        self.check_lengths()
            .map_err(tok_err("tokenizer_config.json"))?;
        let mut cfg = Map::new();
        cfg.insert("add_bos_token".into(), self.effective_add_bos().into());
        cfg.insert("add_eos_token".into(), self.effective_add_eos().into());
        for (key, id) in [
            ("bos_token", self.bos),
            ("eos_token", self.eos),
            ("unk_token", self.unk),
            ("pad_token", self.pad),
        ] {
            if let Some(text) = id.and_then(|id| self.token(id)) {
                cfg.insert(key.into(), text.into());
            }
        }
        if let Some(t) = &self.chat_template {
            cfg.insert("chat_template".into(), t.clone().into());
        }
        // llama.cpp's clean_spaces for the pre-tokenizer (PreTokenizer::clean_spaces).
        // A SentencePiece vocabulary: transformers' LlamaTokenizer sets it false.
        let clean =
            self.model != "llama" && self.pre_tokenizer().is_none_or(PreTokenizer::clean_spaces);
        cfg.insert("clean_up_tokenization_spaces".into(), clean.into());
        cfg.insert("tokenizer_class".into(), "PreTrainedTokenizerFast".into());
        Ok(Value::Object(cfg))
    }

    /// [`Vocab::to_tokenizer_json`] loaded into the `tokenizers` crate (which also checks it).
    pub fn to_tokenizer(&self) -> Result<tokenizers::Tokenizer> {
        let json = self.to_tokenizer_json()?;
        load_tokenizer(&json.to_string()).map_err(|e| Error::Tokenizer {
            path: "tokenizer.json".into(),
            reason: format!("the tokenizers library refused the generated file: {e}"),
        })
    }

    /// `tokenizer.json` and `tokenizer_config.json` as (file name, contents), after checking
    /// that the `tokenizers` crate loads the former.
    pub fn hf_files(&self) -> Result<Vec<(&'static str, Vec<u8>)>> {
        let text = self.to_tokenizer_json()?.to_string();
        load_tokenizer(&text).map_err(|e| Error::Tokenizer {
            path: "tokenizer.json".into(),
            reason: format!("the tokenizers library refused the generated file: {e}"),
        })?;
        let cfg = self.to_tokenizer_config_json()?;
        let cfg_text = serde_json::to_string_pretty(&cfg).unwrap_or_default() + "\n";
        Ok(vec![
            ("tokenizer.json", text.into_bytes()),
            ("tokenizer_config.json", cfg_text.into_bytes()),
        ])
    }

    /// Write `tokenizer.json` and `tokenizer_config.json` into `dir` (which must exist),
    /// after checking that the `tokenizers` crate loads the former.
    pub fn write_hf_files(&self, dir: &Path) -> Result<()> {
        for (name, body) in self.hf_files()? {
            let path = dir.join(name);
            std::fs::write(&path, body).map_err(|e| Error::io(&path, e))?;
        }
        Ok(())
    }

    /// The GGUF view of an HF tokenizer directory (`tokenizer.json`, and when present
    /// `tokenizer_config.json`, `config.json`, `chat_template.jinja`), as llama.cpp's
    /// `convert_hf_to_gguf.py` builds it for a byte-level BPE tokenizer (`_set_vocab_gpt2`,
    /// gguf-py `SpecialVocab`):
    ///
    /// * tokens by id over `config.json`'s `vocab_size` (else the largest id + 1), gaps
    ///   filled with `[PAD{i}]` (type unused); added tokens that are special, or look special
    ///   (`<|…|>`), are control, other added tokens user-defined, the rest normal;
    /// * merges as `"a b"` (a space inside a part written as `Ġ`);
    /// * bos/eos/unk/pad from `tokenizer_config.json`'s token texts looked up among the added
    ///   tokens, else `config.json`'s `*_token_id`; `add_bos`/`add_eos` from the
    ///   post-processor's template, else `tokenizer_config.json`;
    /// * `pre`: the given name, else identified by hashing the token ids of
    ///   [`PRE_PROBE_TEXT`] ([`pre_probe_hash`], [`KNOWN_PRE_HASHES`]); an unknown hash is an
    ///   error (pass the name explicitly).
    ///
    /// transformers' `AutoTokenizer` can post-process differently from the raw `tokenizer.json`
    /// for some tokenizer classes; the hash here is that of the file as the `tokenizers`
    /// library loads it, which is what transformers uses for `PreTrainedTokenizerFast` and
    /// `GPT2TokenizerFast` (Llama 3, SmolLM).
    pub fn from_tokenizer_json(dir: &Path, pre: Option<&str>) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let text = read_json_text(&path)?;
        let tj: Value = serde_json::from_str(&text)
            .map_err(|e| format!("not valid JSON: {e}"))
            .map_err(tok_err(&path))?;
        let read_opt = |name: &str| -> Result<Option<Value>> {
            let p = dir.join(name);
            if !p.is_file() {
                return Ok(None);
            }
            let t = read_json_text(&p)?;
            serde_json::from_str(&t)
                .map(Some)
                .map_err(|e| tok_err(&p)(format!("not valid JSON: {e}")))
        };
        let tcfg = read_opt("tokenizer_config.json")?;
        let cfg = read_opt("config.json")?;
        let jinja_path = dir.join("chat_template.jinja");
        let jinja = if jinja_path.is_file() {
            Some(read_json_text(&jinja_path)?)
        } else {
            None
        };
        let mut vocab =
            Self::hf_inner(&tj, tcfg.as_ref(), cfg.as_ref(), jinja).map_err(tok_err(&path))?;
        let pre = if let Some(p) = pre {
            p.to_owned()
        } else if vocab.model == "llama" {
            // SentencePiece: no pre-tokenizer; llama.cpp's converter writes none. With the
            // model's own tokenizer.model beside it, its scores and types win, as in
            // convert_hf_to_gguf.py (which reads only that file).
            let sp_path = dir.join("tokenizer.model");
            if sp_path.is_file() {
                let sp = Self::from_sentencepiece_file(&sp_path)?;
                vocab.adopt_sentencepiece(&sp).map_err(tok_err(&sp_path))?;
            }
            return Ok(vocab);
        } else {
            let tok = load_tokenizer(&text)
                .map_err(|e| format!("the tokenizers library cannot load it: {e}"))
                .map_err(tok_err(&path))?;
            let hash = pre_probe_hash(&tok).map_err(|e| match e {
                Error::Tokenizer { reason, .. } => tok_err(&path)(reason),
                other => other,
            })?;
            // An unknown hash (a vocabulary llama.cpp's table has never seen) is still fine when
            // the pre-tokenizer is spelled exactly as one llama.cpp implements: the split
            // rules then agree, whatever the vocabulary.
            let structural = [
                ("llama-bpe", PreTokenizer::Llama3),
                ("smollm", PreTokenizer::DigitsThenGpt2),
                ("gpt-2", PreTokenizer::Gpt2),
                ("default", PreTokenizer::Default),
                ("qwen2", PreTokenizer::Qwen2),
                ("qwen35", PreTokenizer::Qwen35),
                ("deepseek-llm", PreTokenizer::DeepseekLlm),
                ("deepseek-coder", PreTokenizer::DeepseekCoder),
                ("deepseek-v3", PreTokenizer::Deepseek3),
                ("falcon", PreTokenizer::Falcon),
            ]
            .into_iter()
            .find(|(_, p)| {
                tj.get("pre_tokenizer").map(split_rules) == Some(split_rules(&p.to_json()))
            })
            .map(|(n, _)| n);
            let Some(name) = pre_for_hash(&hash).or(structural) else {
                let known: Vec<&str> = KNOWN_PRE_HASHES.iter().map(|(_, n)| *n).collect();
                let names: Vec<&str> = PRE_TOKENIZERS.iter().map(|(n, _)| *n).collect();
                return Err(tok_err(&path)(format!(
                    "unknown BPE pre-tokenizer: the probe text hashes to {hash}, which is none \
                     of {}, and its pre_tokenizer is spelled unlike any llama.cpp implements; \
                     llama.cpp would refuse it too (known pre-tokenizers: {})",
                    known.join(", "),
                    names.join(", ")
                )));
            };
            name.to_owned()
        };
        vocab.pre = Some(pre);
        Ok(vocab)
    }

    /// The token table of a `tokenizer.json` model: `model.vocab` and `added_tokens` by id,
    /// `config.json`'s `vocab_size` rows (gaps padded as llama.cpp's converter pads them).
    /// Returns the tokens, their types and the added tokens' (text, id).
    #[allow(clippy::type_complexity)]
    fn hf_token_table(
        tj: &Value,
        model: &Value,
        cfg: Option<&Value>,
    ) -> Why<(Vec<String>, Vec<i32>, Vec<(String, usize)>)> {
        let id_of = |v: &Value, what: &str| -> Why<usize> {
            v.as_u64()
                .and_then(|x| usize::try_from(x).ok())
                .filter(|&x| x < MAX_VOCAB)
                .ok_or_else(|| format!("{what}: id {v} is not an integer below {MAX_VOCAB}"))
        };
        let mvocab = model
            .get("vocab")
            .and_then(Value::as_object)
            .ok_or("model.vocab is not an object")?;
        let mut by_id: HashMap<usize, (String, i32)> = HashMap::with_capacity(mvocab.len());
        for (text, id) in mvocab {
            by_id.insert(id_of(id, text)?, (text.clone(), TOKEN_TYPE_NORMAL));
        }
        let empty = Vec::new();
        let added = match tj.get("added_tokens") {
            None | Some(Value::Null) => &empty,
            Some(Value::Array(a)) => a,
            Some(_) => return Err("added_tokens is not an array".into()),
        };
        let mut added_ids: Vec<(String, usize)> = Vec::with_capacity(added.len());
        for t in added {
            let content = t
                .get("content")
                .and_then(Value::as_str)
                .ok_or("an added token without a string content")?;
            let id = id_of(t.get("id").unwrap_or(&Value::Null), content)?;
            let special = t.get("special").and_then(Value::as_bool).unwrap_or(false);
            let ty = if special || looks_special(content) {
                TOKEN_TYPE_CONTROL
            } else {
                TOKEN_TYPE_USER_DEFINED
            };
            by_id.insert(id, (content.to_owned(), ty));
            added_ids.push((content.to_owned(), id));
        }
        let max_id = by_id.keys().copied().max();
        let from_cfg = cfg.and_then(|c| {
            c.get("vocab_size")
                .or_else(|| c.get("text_config").and_then(|t| t.get("vocab_size")))
                .and_then(Value::as_u64)
        });
        let n = match (from_cfg, max_id) {
            (Some(v), _) if v > MAX_VOCAB as u64 => {
                return Err(format!("config.json vocab_size {v} is above {MAX_VOCAB}"))
            }
            (Some(v), Some(m)) if (v as usize) <= m => {
                return Err(format!(
                    "config.json vocab_size {v} is not above the largest token id {m}"
                ))
            }
            (Some(v), _) => v as usize,
            (None, Some(m)) => m + 1,
            (None, None) => return Err("no tokens".into()),
        };
        let mut tokens = Vec::with_capacity(n);
        let mut token_types = Vec::with_capacity(n);
        for i in 0..n {
            let (t, ty) = by_id
                .remove(&i)
                .unwrap_or_else(|| (format!("[PAD{i}]"), TOKEN_TYPE_UNUSED));
            tokens.push(t);
            token_types.push(ty);
        }
        Ok((tokens, token_types, added_ids))
    }

    /// `model.merges`, each as `"a b"` (a pair of strings is joined, spaces spelled `Ġ`).
    fn hf_merges(model: &Value) -> Why<Vec<String>> {
        Ok(match model.get("merges") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(ms)) => ms
                .iter()
                .enumerate()
                .map(|(i, m)| match m {
                    Value::String(s) => Ok(s.clone()),
                    Value::Array(p) => match p.as_slice() {
                        [Value::String(a), Value::String(b)] => Ok(format!(
                            "{} {}",
                            a.replace(' ', "\u{120}"),
                            b.replace(' ', "\u{120}")
                        )),
                        _ => Err(format!("merge {i} is not a pair of strings")),
                    },
                    _ => Err(format!("merge {i} is neither a string nor a pair")),
                })
                .collect::<Why<_>>()?,
            Some(_) => return Err("model.merges is not an array".into()),
        })
    }

    /// `add_bos` / `add_eos`: the post-processor first (gguf-py's crude template reading), then
    /// `tokenizer_config.json`.
    fn hf_add_bos_eos(
        tj: &Value,
        tcfg: Option<&Value>,
        bos_text: Option<&str>,
        eos_text: Option<&str>,
    ) -> (Option<bool>, Option<bool>) {
        let (mut add_bos, mut add_eos) = (None, None);
        if let Some(pp) = tj.get("post_processor").filter(|p| !p.is_null()) {
            let list = match pp.get("processors").and_then(Value::as_array) {
                Some(l) => l.iter().collect::<Vec<_>>(),
                None => vec![pp],
            };
            for p in list {
                match p.get("type").and_then(Value::as_str) {
                    Some("ByteLevel") => {
                        add_bos.get_or_insert(false);
                        add_eos.get_or_insert(false);
                    }
                    Some("TemplateProcessing") => {
                        let single = p.get("single").and_then(Value::as_array);
                        let sp = |v: Option<&Value>| {
                            v.and_then(|x| x.get("SpecialToken"))
                                .and_then(|x| x.get("id"))
                                .and_then(Value::as_str)
                                .map(str::to_owned)
                        };
                        if let Some(single) = single.filter(|s| s.len() > 1) {
                            if let Some(first) = sp(single.first()) {
                                add_bos = Some(bos_text.is_none_or(|b| b == first));
                            }
                            if let Some(last) = sp(single.last()) {
                                add_eos = Some(eos_text.is_none_or(|e| e == last));
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        let cfg_flag = |key: &str| tcfg.and_then(|c| c.get(key)).and_then(Value::as_bool);
        let add_bos = add_bos.or_else(|| cfg_flag("add_bos_token"));
        let add_eos = add_eos.or_else(|| cfg_flag("add_eos_token"));
        (add_bos, add_eos)
    }

    /// The chat template: `tokenizer_config.json`'s (a string, or the one named `default` of a
    /// list), else `chat_template.jinja`'s.
    fn hf_chat_template(tcfg: Option<&Value>, jinja: Option<String>) -> Option<String> {
        match tcfg.and_then(|c| c.get("chat_template")) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(Value::as_str)
                .map(str::to_owned),
            _ => jinja,
        }
    }

    fn hf_inner(
        tj: &Value,
        tcfg: Option<&Value>,
        cfg: Option<&Value>,
        jinja: Option<String>,
    ) -> Why<Self> {
        let model = tj.get("model").ok_or("no \"model\"")?;
        let mtype = model.get("type").and_then(Value::as_str).unwrap_or("BPE");
        if mtype != "BPE" {
            return Err(format!(
                "model type {mtype:?}: only byte-level BPE tokenizers are converted"
            ));
        }
        // A BPE model with byte_fallback is a SentencePiece vocabulary (spm.rs).
        let spm = model.get("byte_fallback").and_then(Value::as_bool) == Some(true);
        if !spm
            && !mentions_byte_level(tj.get("pre_tokenizer"))
            && !mentions_byte_level(tj.get("decoder"))
        {
            return Err("no ByteLevel pre-tokenizer or decoder: not a byte-level BPE".into());
        }
        let (tokens, mut token_types, added_ids) = Self::hf_token_table(tj, model, cfg)?;
        let n = tokens.len();
        let merges = Self::hf_merges(model)?;

        // Special tokens: tokenizer_config texts among the added tokens, then config.json ids.
        let added_id = |text: &str| -> Option<u32> {
            added_ids
                .iter()
                .find(|(c, _)| c == text)
                .and_then(|&(_, id)| u32::try_from(id).ok())
        };
        let text_of = |key: &str| -> Option<String> {
            let v = tcfg?.get(key)?;
            match v {
                Value::String(s) => Some(s.clone()),
                Value::Object(o) => o.get("content")?.as_str().map(str::to_owned),
                _ => None,
            }
        };
        let in_range = |id: u32| (id as usize) < n;
        let special_id = |typ: &str| -> Option<u32> {
            text_of(&format!("{typ}_token"))
                .and_then(|t| added_id(&t))
                .or_else(|| {
                    cfg?.get(format!("{typ}_token_id"))?
                        .as_u64()
                        .and_then(|x| u32::try_from(x).ok())
                })
                .filter(|&id| in_range(id))
        };
        let bos_text = text_of("bos_token");
        let eos_text = text_of("eos_token");

        let (add_bos, add_eos) =
            Self::hf_add_bos_eos(tj, tcfg, bos_text.as_deref(), eos_text.as_deref());
        let chat_template = Self::hf_chat_template(tcfg, jinja);

        let mut unk = special_id("unk");
        let (model_name, merges, scores, add_space_prefix) = if spm {
            let unk_text = model.get("unk_token").and_then(Value::as_str);
            unk = unk.or_else(|| {
                let t = unk_text?;
                let id = tokens.iter().position(|x| x == t)?;
                u32::try_from(id).ok()
            });
            let pairs = merges
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    split_merge(m)
                        .map(|(a, b)| (a.to_owned(), b.to_owned()))
                        .ok_or_else(|| format!("merge {i} {m:?} is not two parts"))
                })
                .collect::<Why<Vec<_>>>()?;
            let (scores, prefix) = spm::hf_spm_fields(tj, &tokens, &mut token_types, &pairs, unk)?;
            ("llama", Vec::new(), Some(scores), Some(prefix))
        } else {
            ("gpt2", merges, None, None)
        };

        Ok(Vocab {
            model: model_name.into(),
            pre: None,
            tokens,
            token_types,
            merges,
            scores,
            bos: special_id("bos"),
            eos: special_id("eos"),
            eot: None,
            eom: None,
            unk,
            pad: special_id("pad"),
            add_bos,
            add_eos,
            add_space_prefix,
            chat_template,
        })
    }

    /// The GGUF view of a tiktoken BPE file (Meta's Llama 3 `tokenizer.model`: one
    /// `base64(token bytes) rank` per line, rank = id), with `specials` appended as control
    /// tokens at ids max rank + 1, … (for Llama 3: [`llama3_special_tokens`] at 128000..).
    ///
    /// Tokens are spelled in GPT-2's byte alphabet; merges are rebuilt from the ranks as
    /// transformers' `TikTokenConverter` does: for every multi-byte token each split (l, r)
    /// with both halves tokens, ordered by the rank of the token, then of l, then of r. `pre` is
    /// `llama-bpe`; bos/eos/eot/eom are `<|begin_of_text|>`, `<|end_of_text|>`, `<|eot_id|>`,
    /// `<|eom_id|>` when among the specials (set `eos` to the `<|eot_id|>` id for an instruct
    /// model, as its HF `tokenizer_config.json` does); `add_bos` is whether there is a BOS.
    pub fn from_tiktoken<S: AsRef<str>>(bytes: &[u8], specials: &[S]) -> Result<Self> {
        Self::tiktoken_inner(bytes, specials).map_err(tok_err("tokenizer.model"))
    }

    /// [`Vocab::from_tiktoken`] on a file (at most 64 MiB).
    pub fn from_tiktoken_file<S: AsRef<str>>(path: &Path, specials: &[S]) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.len() > 64 << 20 {
            return Err(tok_err(path)(format!(
                "{} bytes is too large for a tiktoken file",
                meta.len()
            )));
        }
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::tiktoken_inner(&bytes, specials).map_err(tok_err(path))
    }

    fn tiktoken_inner<S: AsRef<str>>(bytes: &[u8], specials: &[S]) -> Why<Self> {
        let mut ranks: HashMap<Vec<u8>, u32> = HashMap::new();
        let mut order: Vec<(Vec<u8>, u32)> = Vec::new();
        for (lineno, line) in bytes.split(|&b| b == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                continue;
            }
            let at = || format!("line {}", lineno + 1);
            let text = std::str::from_utf8(line).map_err(|_| format!("{}: not ASCII", at()))?;
            let mut parts = text.split_ascii_whitespace();
            let (Some(b64), Some(rank), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(format!("{}: expected `base64 rank`", at()));
            };
            let token = base64_decode(b64).ok_or_else(|| format!("{}: bad base64", at()))?;
            if token.is_empty() {
                return Err(format!("{}: empty token", at()));
            }
            let rank: u32 = rank
                .parse()
                .map_err(|_| format!("{}: rank {rank:?} is not a u32", at()))?;
            if ranks.insert(token.clone(), rank).is_some() {
                return Err(format!("{}: token repeated", at()));
            }
            order.push((token, rank));
        }
        if order.is_empty() {
            return Err("no tokens".into());
        }
        let n_base = order.iter().map(|&(_, r)| r as usize).max().unwrap_or(0) + 1;
        if n_base > order.len() + (1 << 16) || n_base + specials.len() > MAX_VOCAB {
            return Err(format!(
                "ranks up to {} for {} tokens: too sparse",
                n_base - 1,
                order.len()
            ));
        }
        let table = byte_to_char();
        let mut tokens: Vec<Option<String>> = vec![None; n_base];
        for (token, rank) in &order {
            let slot = &mut tokens[*rank as usize];
            if slot.is_some() {
                return Err(format!("rank {rank} repeated"));
            }
            *slot = Some(byte_level_spelling(token, &table));
        }
        let mut token_types = Vec::with_capacity(n_base + specials.len());
        let mut out_tokens = Vec::with_capacity(n_base + specials.len());
        for (i, t) in tokens.into_iter().enumerate() {
            if let Some(t) = t {
                out_tokens.push(t);
                token_types.push(TOKEN_TYPE_NORMAL);
            } else {
                out_tokens.push(format!("[PAD{i}]"));
                token_types.push(TOKEN_TYPE_UNUSED);
            }
        }
        for s in specials {
            out_tokens.push(s.as_ref().to_owned());
            token_types.push(TOKEN_TYPE_CONTROL);
        }

        // Merges from ranks (TikTokenConverter.extract_vocab_merges_from_model).
        // (rank of token, rank of l, rank of r) and the split point.
        let mut found: Vec<([u32; 3], &[u8], usize)> = Vec::new();
        for (token, rank) in &order {
            for i in 1..token.len() {
                let (l, r) = token.split_at(i);
                if let (Some(&rl), Some(&rr)) = (ranks.get(l), ranks.get(r)) {
                    found.push(([*rank, rl, rr], token, i));
                }
            }
        }
        found.sort_unstable_by_key(|&(key, _, _)| key);
        let merges = found
            .into_iter()
            .map(|(_, token, i)| {
                let (l, r) = token.split_at(i);
                format!(
                    "{} {}",
                    byte_level_spelling(l, &table),
                    byte_level_spelling(r, &table)
                )
            })
            .collect();

        let special_id = |name: &str| -> Option<u32> {
            specials
                .iter()
                .position(|s| s.as_ref() == name)
                .and_then(|p| u32::try_from(n_base + p).ok())
        };
        let bos = special_id("<|begin_of_text|>");
        Ok(Vocab {
            model: "gpt2".into(),
            pre: Some("llama-bpe".into()),
            tokens: out_tokens,
            token_types,
            merges,
            scores: None,
            bos,
            eos: special_id("<|end_of_text|>"),
            eot: special_id("<|eot_id|>"),
            eom: special_id("<|eom_id|>"),
            unk: None,
            pad: None,
            add_bos: Some(bos.is_some()),
            add_eos: Some(false),
            add_space_prefix: None,
            chat_template: None,
        })
    }
}

/// Split a GGUF merge at its first space after the first character (llama.cpp's
/// `word.find(' ', 1)`).
pub(super) fn split_merge(m: &str) -> Option<(&str, &str)> {
    let first = m.chars().next()?;
    let pos = m[first.len_utf8()..].find(' ')? + first.len_utf8();
    Some((&m[..pos], &m[pos + 1..]))
}

/// Whether an HF added token looks like a control token even if not marked special
/// (llama.cpp's `does_token_look_special`).
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<\u{ff5c}") && t.ends_with("\u{ff5c}>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// Whether a pre-tokenizer or decoder object is or contains a `ByteLevel` step.
fn mentions_byte_level(v: Option<&Value>) -> bool {
    let Some(v) = v else { return false };
    if v.get("type").and_then(Value::as_str) == Some("ByteLevel") {
        return true;
    }
    ["pretokenizers", "decoders"].iter().any(|k| {
        v.get(*k)
            .and_then(Value::as_array)
            .is_some_and(|l| l.iter().any(|x| mentions_byte_level(Some(x))))
    })
}

/// Integer array elements as `i32` (any integer element type whose values fit).
fn int_array_i32(a: &GgufArray) -> Option<Vec<i32>> {
    fn conv<T: Copy>(v: &[T]) -> Option<Vec<i32>>
    where
        i32: TryFrom<T>,
    {
        v.iter().map(|&x| i32::try_from(x).ok()).collect()
    }
    match a {
        GgufArray::I32(v) => Some(v.clone()),
        GgufArray::U8(v) => conv(v),
        GgufArray::I8(v) => conv(v),
        GgufArray::U16(v) => conv(v),
        GgufArray::I16(v) => conv(v),
        GgufArray::U32(v) => conv(v),
        GgufArray::U64(v) => conv(v),
        GgufArray::I64(v) => conv(v),
        _ => None,
    }
}

/// Read a (JSON or template) text file of at most [`MAX_JSON_BYTES`].
fn read_json_text(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.len() > MAX_JSON_BYTES {
        return Err(tok_err(path)(format!(
            "{} bytes is more than the {MAX_JSON_BYTES}-byte limit",
            meta.len()
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    String::from_utf8(bytes).map_err(|_| tok_err(path)("not valid UTF-8".into()))
}

/// Standard base64 (RFC 4648 alphabet, `=` padding optional); `None` on any invalid input.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // A single leftover sextet (length % 4 == 1) cannot be valid; leftover bits must be zero.
    if bits >= 6 || acc != 0 {
        return None;
    }
    Some(out)
}

/// A `pre_tokenizer` as far as it decides the split: `trim_offsets` (ByteLevel) only moves the
/// offsets `tokenizers` reports, never the ids, and Qwen2's own tokenizer.json sets it false
/// where transformers' GPT-2-style files set it true.
fn split_rules(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| k.as_str() != "trim_offsets")
                .map(|(k, v)| (k.clone(), split_rules(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(split_rules).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet() {
        let t = byte_to_char();
        assert_eq!(t[usize::from(b' ')], '\u{120}');
        assert_eq!(t[usize::from(b'\n')], '\u{10a}');
        assert_eq!(t[0], '\u{100}');
        assert_eq!(t[0xAD], '\u{143}');
        assert_eq!(t[usize::from(b'a')], 'a');
        let set: HashSet<char> = t.iter().copied().collect();
        assert_eq!(set.len(), 256);
        assert!(t.iter().all(|c| is_byte_level(&c.to_string())));
        assert!(!is_byte_level(" "));
        assert!(!is_byte_level("\u{144}"));
    }

    #[test]
    fn base64() {
        assert_eq!(base64_decode("AA==").unwrap(), vec![0]);
        assert_eq!(base64_decode("IHRo").unwrap(), b" th".to_vec());
        assert_eq!(base64_decode("aGU=").unwrap(), b"he".to_vec());
        assert_eq!(base64_decode("aGU").unwrap(), b"he".to_vec());
        assert!(base64_decode("a").is_none());
        assert!(base64_decode("aGV=").is_none()); // non-zero leftover bits
        assert!(base64_decode("a*==").is_none());
    }

    #[test]
    fn merge_split() {
        assert_eq!(split_merge("Ġ t"), Some(("Ġ", "t")));
        assert_eq!(split_merge("  x"), Some((" ", "x")));
        assert_eq!(split_merge("ab"), None);
        assert_eq!(split_merge(""), None);
        assert_eq!(split_merge("é b"), Some(("é", "b")));
    }

    #[test]
    fn probe_text_is_llama_cpps() {
        assert_eq!(PRE_PROBE_TEXT.chars().count(), 350);
        assert_eq!(
            hex::encode(Sha256::digest(PRE_PROBE_TEXT.as_bytes())),
            "a36179c1e2b1cfcfbfad1dc779addad2ffc778201e4cf0d538bddeafa2c526da"
        );
    }

    #[test]
    fn llama3_specials() {
        for v in [Llama3Specials::V3, Llama3Specials::V3_1] {
            let s = llama3_special_tokens(v);
            assert_eq!(s.len(), 256);
            assert_eq!(s[0], "<|begin_of_text|>");
            assert_eq!(s[9], "<|eot_id|>");
            assert_eq!(s.iter().collect::<HashSet<_>>().len(), 256);
        }
        let s = llama3_special_tokens(Llama3Specials::V3_1);
        assert_eq!(s[8], "<|eom_id|>");
        assert_eq!(s[10], "<|python_tag|>");
        assert_eq!(s[11], "<|reserved_special_token_3|>");
        assert_eq!(s[255], "<|reserved_special_token_247|>");
        let s = llama3_special_tokens(Llama3Specials::V3);
        assert_eq!(s[255], "<|reserved_special_token_250|>");
    }
}
