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
/// In llama.cpp's source three ranges of the letter class end in a character that Unicode
/// normalization (NFC) folded into a lower code point (`Ὗ-ώ`, `ῐ-ΐ`, `ῖ-Ί` with U+03CE, U+0390,
/// U+038A): reversed ranges, which the `tokenizers` library (rightly) refuses. They are written
/// here with the end points DeepSeek's `tokenizer.json` has, U+1F7D, U+1FD3 and U+1FDB. On
/// every character of U+1F50..U+1F7F and U+1FC0..U+1FDF, alone, doubled and between letters
/// and punctuation, the ids equal `llama-tokenize`'s with either reading (checked by hand with
/// llama.cpp 0.3.36's vocabulary file; the vocabulary has no merges that tell them apart).
pub const DEEPSEEK_LLM_PATTERNS: [&str; 6] = [
    r"[\r\n]",
    r"\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
    r"\s?[!-/:-~！-／：-～‘-‟　-。]+",
    r"\s+$",
    r"[一-龥ࠀ-一가-퟿]+",
    r"\p{N}+",
];

/// llama.cpp's regexes for `deepseek-coder` (`LLAMA_VOCAB_PRE_TYPE_DEEPSEEK_CODER`), in order.
pub const DEEPSEEK_CODER_PATTERNS: [&str; 5] = [
    r"[\r\n]",
    r"\s?\p{L}+",
    r"\s?\p{P}+",
    r"[一-龥ࠀ-一가-퟿]+",
    r"\p{N}",
];

/// llama.cpp's regexes for `deepseek-v3` (`LLAMA_VOCAB_PRE_TYPE_DEEPSEEK3_LLM`), in order.
pub const DEEPSEEK3_PATTERNS: [&str; 3] = [
    r"\p{N}{1,3}",
    r"[一-龥぀-ゟ゠-ヿ]+",
    r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##,
];

/// llama.cpp's regexes for `falcon` (`LLAMA_VOCAB_PRE_TYPE_FALCON`), in order.
pub const FALCON_PATTERNS: [&str; 3] = [
    r"[\p{P}\$\+<=>\^~\|`]+",
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
    r"[0-9][0-9][0-9]",
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
