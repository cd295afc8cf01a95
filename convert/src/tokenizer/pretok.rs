//! BPE pre-tokenizers by llama.cpp name: the regexes llama.cpp's `llm_tokenizer_bpe`
//! constructor (src/llama-vocab.cpp) applies for each `tokenizer.ggml.pre`, and the
//! `pre_tokenizer` object of a `tokenizer.json` that splits text the same way.
//!
//! llama.cpp applies its regexes in turn, each one splitting every piece left by the previous
//! one into matches and the gaps between them; `tokenizers`' `Split` with behaviour `Isolated`
//! does exactly that, so a list of regexes becomes a `Sequence` of isolated splits followed by
//! `ByteLevel(use_regex=false)`. Where llama.cpp replaced a `tokenizer.json` regex by an
//! equivalent spelling its engine handles (`(?i:'s|…)` → `'[sS]|…`), the original spelling is
//! written (see [`LLAMA3_PATTERN`]).

use serde_json::{json, Value};

/// The Llama 3 pre-tokenizer regex, exactly as in Meta's `tokenizer.py` (`pat_str`), the
/// official HF `tokenizer.json` and transformers' `TikTokenConverter`.
///
/// llama.cpp runs the same expression with the contractions spelt `'[sS]|'[tT]|…` instead of
/// `(?i:'s|'t|…)`; the two differ only where Unicode case folding matters, i.e. `'ſ` (U+017F
/// LATIN SMALL LETTER LONG S, which folds to `s`): Meta and HF split it off as a contraction,
/// llama.cpp does not. We follow the model's own tokenizer there.
pub const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GPT-2's pre-tokenizer regex (the one built into the `tokenizers` ByteLevel pre-tokenizer).
pub const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// llama.cpp's regexes for a BPE vocabulary whose `tokenizer.ggml.pre` is `default` or absent
/// (applied in turn, each splitting the pieces of the previous one, matches and gaps alike).
pub const DEFAULT_PATTERNS: [&str; 4] = [
    r"[\p{P}\$\+<=>\^~\|]+",
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
    r"\p{N}+",
    r"[0-9][0-9][0-9]",
];

/// Qwen2's pre-tokenizer regex as in its `tokenizer.json` (llama.cpp `LLAMA_VOCAB_PRE_TYPE_QWEN2`
/// runs the `'[sS]|…` spelling through its custom splitter): Llama 3's with single digits.
pub const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen3.5's pre-tokenizer regex as in its `tokenizer.json` (llama.cpp
/// `LLAMA_VOCAB_PRE_TYPE_QWEN35`): Qwen2's with combining marks (`\p{M}`) kept with letters.
pub const QWEN35_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// llama.cpp's regexes for `deepseek-llm` (`LLAMA_VOCAB_PRE_TYPE_DEEPSEEK_LLM`), in order.
///
/// Written with `\u{…}` escapes: the letter class holds characters that Unicode normalization
/// (NFC) would silently change (U+212A KELVIN SIGN into `K`, which turns `K-ℭ` into a range
/// over all of ASCII from `K` on; U+1F7D, U+1FD3, U+1FDB into lower code points, reversing their
/// ranges), so an editor or a copy must not touch them. Generated from llama-vocab.cpp.
pub const DEEPSEEK_LLM_PATTERNS: [&str; 6] = [
    "[\\r\\n]",
    "\\s?[A-Za-z\u{b5}\u{c0}-\u{d6}\u{d8}-\u{f6}\u{f8}-\u{1ba}\u{1bc}-\u{1bf}\u{1c4}-\u{293}\u{295}-\u{2af}\u{370}-\u{373}\u{376}\u{377}\u{37b}-\u{37d}\u{37f}\u{386}\u{388}-\u{38a}\u{38c}\u{38e}-\u{3a1}\u{3a3}-\u{3f5}\u{3f7}-\u{481}\u{48a}-\u{52f}\u{531}-\u{556}\u{10a0}-\u{10c5}\u{13a0}-\u{13f5}\u{13f8}-\u{13fd}\u{1c90}-\u{1cba}\u{1cbd}-\u{1cbf}\u{1d00}-\u{1d2b}\u{1d6b}-\u{1d77}\u{1d79}-\u{1d9a}\u{1e00}-\u{1f15}\u{1f18}-\u{1f1d}\u{1f20}-\u{1f45}\u{1f48}-\u{1f4d}\u{1f50}-\u{1f57}\u{1f59}\u{1f5b}\u{1f5d}\u{1f5f}-\u{1f7d}\u{1f80}-\u{1fb4}\u{1fb6}-\u{1fbc}\u{1fbe}\u{1fc2}-\u{1fc4}\u{1fc6}-\u{1fcc}\u{1fd0}-\u{1fd3}\u{1fd6}-\u{1fdb}\u{1fe0}-\u{1fec}\u{1ff2}-\u{1ff4}\u{1ff6}-\u{1ffc}\u{2102}\u{2107}\u{210a}-\u{2113}\u{2115}\u{2119}-\u{211d}\u{2124}\u{2126}\u{2128}\u{212a}-\u{212d}\u{212f}-\u{2134}\u{2139}\u{213c}-\u{213f}\u{2145}-\u{2149}\u{214e}\u{2183}\u{2184}\u{2c00}-\u{2c7b}\u{2c7e}-\u{2ce4}\u{2ceb}-\u{2cee}\u{2cf2}\u{2cf3}\u{a640}-\u{a66d}\u{a680}-\u{a69b}\u{a722}-\u{a76f}\u{a771}-\u{a787}\u{a78b}-\u{a78e}\u{ab70}-\u{abbf}\u{fb00}-\u{fb06}\u{fb13}-\u{fb17}\u{ff21}-\u{ff3a}\u{ff41}-\u{ff5a}\u{10400}-\u{1044f}\u{104b0}-\u{104d3}\u{104d8}-\u{104fb}\u{10c80}-\u{10cb2}\u{10cc0}-\u{10cf2}\u{118a0}-\u{118df}\u{1e900}-\u{1e943}]+",
    "\\s?[!-/:-~\u{ff01}-\u{ff0f}\u{ff1a}-\u{ff5e}\u{2018}-\u{201f}\u{3000}-\u{3002}]+",
    "\\s+$",
    "[\u{4e00}-\u{9fa5}\u{800}-\u{4e00}\u{ac00}-\u{d7ff}]+",
    "\\p{N}+",
];

/// llama.cpp's regexes for `deepseek-coder` (`LLAMA_VOCAB_PRE_TYPE_DEEPSEEK_CODER`), in order.
pub const DEEPSEEK_CODER_PATTERNS: [&str; 5] = [
    "[\\r\\n]",
    "\\s?\\p{L}+",
    "\\s?\\p{P}+",
    "[\u{4e00}-\u{9fa5}\u{800}-\u{4e00}\u{ac00}-\u{d7ff}]+",
    "\\p{N}",
];

/// llama.cpp's regexes for `deepseek-v3` (`LLAMA_VOCAB_PRE_TYPE_DEEPSEEK3_LLM`), in order.
pub const DEEPSEEK3_PATTERNS: [&str; 3] = [
    "\\p{N}{1,3}",
    "[\u{4e00}-\u{9fa5}\u{3040}-\u{309f}\u{30a0}-\u{30ff}]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\\r\\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
];

/// llama.cpp's regexes for `falcon` (`LLAMA_VOCAB_PRE_TYPE_FALCON`), in order.
pub const FALCON_PATTERNS: [&str; 3] = [
    "[\\p{P}\\$\\+<=>\\^~\\|`]+",
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)",
    "[0-9][0-9][0-9]",
];

/// How a family of `tokenizer.ggml.pre` names pre-tokenizes, in llama.cpp and in the
/// `tokenizer.json` we write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreTokenizer {
    /// [`LLAMA3_PATTERN`] with `ignore_merges` (a piece that is itself a token is emitted whole)
    /// and BOS added by default: `Sequence[Split(LLAMA3, Isolated), ByteLevel(use_regex=false)]`.
    Llama3,
    /// Every number character alone, then GPT-2 splitting (llama.cpp: `\p{N}` then
    /// [`GPT2_PATTERN`]); written as the original SmolLM `tokenizer.json` does:
    /// `Sequence[Digits(individual_digits=true), ByteLevel(use_regex=true)]`.
    DigitsThenGpt2,
    /// Plain GPT-2 splitting: `ByteLevel(use_regex=true)`.
    Gpt2,
    /// llama.cpp's fallback for a missing or `default` pre: the four [`DEFAULT_PATTERNS`] as
    /// isolated splits, then `ByteLevel(use_regex=false)`.
    Default,
    /// Qwen2 / Qwen2.5 / Qwen3: [`QWEN2_PATTERN`] then `ByteLevel(use_regex=false)`, as
    /// Qwen2's own `tokenizer.json` (less its NFC normalizer, which llama.cpp does not apply).
    Qwen2,
    /// Qwen3.5: [`QWEN35_PATTERN`] then `ByteLevel(use_regex=false)`.
    Qwen35,
    /// DeepSeek LLM: the six [`DEEPSEEK_LLM_PATTERNS`] as isolated splits, then ByteLevel.
    DeepseekLlm,
    /// DeepSeek Coder: the five [`DEEPSEEK_CODER_PATTERNS`], then ByteLevel.
    DeepseekCoder,
    /// DeepSeek V3: the three [`DEEPSEEK3_PATTERNS`], then ByteLevel.
    Deepseek3,
    /// Falcon: the three [`FALCON_PATTERNS`], then ByteLevel.
    Falcon,
}

/// The `tokenizer.ggml.pre` names understood by [`super::Vocab::to_tokenizer_json`], with the
/// pre-tokenizer each means in llama.cpp (same regexes there; names not listed are refused).
pub const PRE_TOKENIZERS: &[(&str, PreTokenizer)] = &[
    ("llama-bpe", PreTokenizer::Llama3),
    ("llama3", PreTokenizer::Llama3),
    ("llama-v3", PreTokenizer::Llama3),
    ("falcon3", PreTokenizer::Llama3),
    ("falcon-h1", PreTokenizer::Llama3),
    ("pixtral", PreTokenizer::Llama3),
    ("midm-2.0", PreTokenizer::Llama3),
    ("lfm2", PreTokenizer::Llama3),
    ("jina-v5-nano", PreTokenizer::Llama3),
    ("smollm", PreTokenizer::DigitsThenGpt2),
    ("starcoder", PreTokenizer::DigitsThenGpt2),
    ("refact", PreTokenizer::DigitsThenGpt2),
    ("command-r", PreTokenizer::DigitsThenGpt2),
    ("codeshell", PreTokenizer::DigitsThenGpt2),
    ("exaone", PreTokenizer::DigitsThenGpt2),
    ("minerva-7b", PreTokenizer::DigitsThenGpt2),
    ("mellum2", PreTokenizer::DigitsThenGpt2),
    ("gpt-2", PreTokenizer::Gpt2),
    ("phi-2", PreTokenizer::Gpt2),
    ("gigachat", PreTokenizer::Gpt2),
    ("a.x-4.0", PreTokenizer::Gpt2),
    ("mellum", PreTokenizer::Gpt2),
    ("exaone4", PreTokenizer::Gpt2),
    ("mpt", PreTokenizer::Gpt2),
    ("olmo", PreTokenizer::Gpt2),
    ("default", PreTokenizer::Default),
    ("qwen2", PreTokenizer::Qwen2),
    ("deepseek-r1-qwen", PreTokenizer::Qwen2),
    ("stablelm2", PreTokenizer::Qwen2),
    ("megrez", PreTokenizer::Qwen2),
    ("qwen35", PreTokenizer::Qwen35),
    ("deepseek-llm", PreTokenizer::DeepseekLlm),
    ("deepseek-coder", PreTokenizer::DeepseekCoder),
    ("deepseek-v3", PreTokenizer::Deepseek3),
    ("falcon", PreTokenizer::Falcon),
];

impl PreTokenizer {
    /// The pre-tokenizer for a `tokenizer.ggml.pre` value (`None`: absent, which llama.cpp
    /// treats as `default`), or `None` for a name this module cannot write.
    pub fn from_pre(pre: Option<&str>) -> Option<Self> {
        let Some(pre) = pre else {
            return Some(PreTokenizer::Default);
        };
        PRE_TOKENIZERS
            .iter()
            .find(|(name, _)| *name == pre)
            .map(|&(_, kind)| kind)
    }

    /// Whether llama.cpp sets `ignore_merges` for this family.
    pub fn ignore_merges(self) -> bool {
        self == PreTokenizer::Llama3
    }

    /// llama.cpp's `clean_spaces` for this family (transformers'
    /// `clean_up_tokenization_spaces`): false where llama.cpp's constructor clears it.
    pub fn clean_spaces(self) -> bool {
        !matches!(
            self,
            PreTokenizer::DigitsThenGpt2
                | PreTokenizer::Qwen2
                | PreTokenizer::Qwen35
                | PreTokenizer::DeepseekLlm
                | PreTokenizer::DeepseekCoder
                | PreTokenizer::Deepseek3
        )
    }

    /// The regexes llama.cpp applies in turn, for the families written as isolated splits
    /// followed by `ByteLevel(use_regex=false)` (the others have their own spelling).
    fn split_patterns(self) -> Option<&'static [&'static str]> {
        Some(match self {
            PreTokenizer::Llama3 => std::slice::from_ref(&LLAMA3_PATTERN),
            PreTokenizer::Default => &DEFAULT_PATTERNS,
            PreTokenizer::Qwen2 => std::slice::from_ref(&QWEN2_PATTERN),
            PreTokenizer::Qwen35 => std::slice::from_ref(&QWEN35_PATTERN),
            PreTokenizer::DeepseekLlm => &DEEPSEEK_LLM_PATTERNS,
            PreTokenizer::DeepseekCoder => &DEEPSEEK_CODER_PATTERNS,
            PreTokenizer::Deepseek3 => &DEEPSEEK3_PATTERNS,
            PreTokenizer::Falcon => &FALCON_PATTERNS,
            PreTokenizer::DigitsThenGpt2 | PreTokenizer::Gpt2 => return None,
        })
    }

    /// llama.cpp's `add_bos` when the file has no `tokenizer.ggml.add_bos_token`.
    pub fn default_add_bos(self) -> bool {
        self == PreTokenizer::Llama3
    }

    /// The `pre_tokenizer` object of a `tokenizer.json`.
    pub fn to_json(self) -> Value {
        let byte_level = |use_regex: bool| {
            json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                   "use_regex": use_regex})
        };
        let split = |re: &str| {
            json!({"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated",
                   "invert": false})
        };
        if let Some(patterns) = self.split_patterns() {
            let mut steps: Vec<Value> = patterns.iter().map(|re| split(re)).collect();
            steps.push(byte_level(false));
            return json!({"type": "Sequence", "pretokenizers": steps});
        }
        match self {
            PreTokenizer::DigitsThenGpt2 => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
            _ => byte_level(true),
        }
    }
}
