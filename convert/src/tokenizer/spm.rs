//! SentencePiece vocabularies (`tokenizer.ggml.model = "llama"`: Llama 1/2, Mistral, Phi-3)
//! as an HF `tokenizer.json` and back; Gemma 4's SentencePiece-style BPE (`"gemma4"`) one way,
//! GGUF → `tokenizer.json` ([`Vocab::gemma4_json_inner`]).
//!
//! GGUF → `tokenizer.json` writes what transformers' `LlamaConverter` (convert_slow_tokenizer.py,
//! legacy mode, the one Llama 2's and Phi-3's published `tokenizer.json` come from) makes of the
//! SentencePiece model: a BPE model with `byte_fallback` and `fuse_unk`, unknown token id 0's
//! text; merges from the scores ([`spm_merges`], transformers' `generate_merges`); normalizer
//! `Prepend("▁")` (when `add_space_prefix`) then `Replace(" ", "▁")`; no pre-tokenizer;
//! control and user-defined tokens as added tokens; decoder `Replace("▁", " ")`,
//! `ByteFallback`, `Fuse`, `Strip(" ", 1, 0)`.
//!
//! That reproduces llama.cpp's SPM tokenizer (src/llama-vocab.cpp `llm_tokenizer_spm_session`):
//! llama.cpp prefixes a space to the text and to every text fragment after a special token
//! (`is_prev_special`), escapes spaces as `▁`, then repeatedly merges the adjacent pair whose
//! concatenation is the token of highest score, leftmost first, and spells a symbol that is not
//! a token as its byte tokens `<0xXX>`. transformers' `Prepend` applies to each fragment
//! between added tokens; its merge ranks are the scores in decreasing order; `byte_fallback`
//! spells an unknown character as bytes. The two differ only where one token can be formed by
//! two different splits at two places at once (llama.cpp: leftmost; `tokenizers`: the split
//! with the longer left part); llama.cpp's test vectors do not reach that case.
//!
//! `tokenizer.json` → GGUF follows llama.cpp's `convert_hf_to_gguf.py` for a Llama tokenizer
//! without `tokenizer.model` (gguf-py `LlamaHfVocab`): tokens by id, `<0xXX>` byte tokens typed
//! byte, special added tokens control, other added tokens user-defined. gguf-py gives every
//! token the score -1000, which makes llama.cpp merge leftmost-first instead of by rank (it
//! tokenizes differently from the `tokenizer.json`); here each token made by a merge gets
//! `-(rank of its first merge)`, so llama.cpp's highest-score-first order is the merge order.

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use super::TOKEN_TYPE_USER_DEFINED;
use super::{Vocab, Why, TOKEN_TYPE_BYTE, TOKEN_TYPE_CONTROL, TOKEN_TYPE_UNKNOWN};

/// SentencePiece's word-boundary mark, U+2581 LOWER ONE EIGHTH BLOCK.
pub const SPM_SPACE: &str = "\u{2581}";

/// The longest SentencePiece piece [`Vocab::to_tokenizer_json`] accepts, in bytes.
pub const SPM_MAX_PIECE_BYTES: usize = 1024;

/// Gemma 4's only split in llama.cpp: runs of non-newlines and runs of newlines.
const GEMMA4_PATTERN: &str = r"[^\n]+|[\n]+";

/// Whether a Gemma 4 piece that is itself a token is taken whole. llama.cpp does so for a
/// run of newlines (its fix for Gemma 4, llama.cpp PR 21343) and runs the merges on other
/// pieces; `tokenizers` has one switch for all pieces. With it on, our tokenizer.json gives
/// llama.cpp's ids on its Gemma 4 test vectors and on Hamlet (tests/interop/test_tokenizer.py);
/// a line that is a token the merges cannot reach would differ.
const GEMMA4_IGNORE_MERGES: bool = true;

/// The merges transformers' `generate_merges(vocab, vocab_scores)` (convert_slow_tokenizer.py)
/// derives from a SentencePiece vocabulary: for every token (in id order, a repeated text once,
/// with its last score), every split into two parts that are both tokens, ordered by the parts'
/// ids; then all of them sorted (stably) by the token's score, the left part's length and the
/// right part's length, in decreasing order. Lengths count characters, as Python's `len`.
///
/// `scores` must have one finite value per token (checked by the caller).
pub fn spm_merges(tokens: &[String], scores: &[f32]) -> Vec<(String, String)> {
    // Python: vocab = {piece: id} (last id wins); dict(vocab_scores) keeps the first position
    // of a repeated piece with its last score.
    let mut id_of: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    let mut order: Vec<&str> = Vec::with_capacity(tokens.len());
    let mut score_of: HashMap<&str, f32> = HashMap::with_capacity(tokens.len());
    for (id, (t, &s)) in tokens.iter().zip(scores).enumerate() {
        if id_of.insert(t.as_str(), id).is_none() {
            order.push(t.as_str());
        }
        score_of.insert(t.as_str(), s);
    }
    let mut merges: Vec<(&str, &str, f32, usize, usize)> = Vec::new();
    for piece in order {
        let score = score_of[piece];
        let mut local: Vec<(&str, &str, usize, usize)> = piece
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| {
                let (l, r) = piece.split_at(at);
                Some((l, r, *id_of.get(l)?, *id_of.get(r)?))
            })
            .collect();
        local.sort_by_key(|&(_, _, il, ir)| (il, ir));
        merges.extend(
            local
                .into_iter()
                .map(|(l, r, _, _)| (l, r, score, l.chars().count(), r.chars().count())),
        );
    }
    // Stable, decreasing: equal keys keep their order, as Python's sorted(reverse=True).
    merges.sort_by(|a, b| b.2.total_cmp(&a.2).then(b.3.cmp(&a.3)).then(b.4.cmp(&a.4)));
    merges
        .into_iter()
        .map(|(l, r, ..)| (l.to_owned(), r.to_owned()))
        .collect()
}

/// Whether `t` is a SentencePiece byte token `<0xXX>` (two upper-case hex digits).
pub fn is_byte_token(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() == 6
        && t.starts_with("<0x")
        && t.ends_with('>')
        && b[3..5]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(c))
}

impl Vocab {
    /// The BPE `vocab` (text → id; a repeated text keeps its last id, as llama.cpp's
    /// `token_to_id`) and the added tokens (control → special, user-defined → not special; an
    /// added token whose text resolves to another id is left out).
    fn vocab_and_added(&self) -> (Map<String, Value>, Vec<Value>) {
        let mut vocab = Map::with_capacity(self.tokens.len());
        let mut added = Vec::new();
        for (id, (text, &ty)) in self.tokens.iter().zip(&self.token_types).enumerate() {
            vocab.remove(text);
            vocab.insert(text.clone(), Value::from(id as u64));
            if (ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED) && !text.is_empty() {
                added.push(json!({
                    "id": id, "content": text, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": ty == TOKEN_TYPE_CONTROL,
                }));
            }
        }
        added.retain(|t| vocab.get(t["content"].as_str().unwrap_or_default()) == Some(&t["id"]));
        (vocab, added)
    }

    /// Token types checked against GGUF's range (1..6).
    fn check_token_types(&self) -> Why<()> {
        match self
            .token_types
            .iter()
            .enumerate()
            .find(|(_, &ty)| !(1..=6).contains(&ty))
        {
            Some((i, ty)) => Err(format!(
                "tokenizer.ggml.token_type[{i}] is {ty}, not a GGUF token type (1..6)"
            )),
            None => Ok(()),
        }
    }

    /// `tokenizer.json` for a Gemma 4 vocabulary (`tokenizer.ggml.model = "gemma4"`), as
    /// llama.cpp tokenizes it (src/llama-vocab.cpp, `LLAMA_VOCAB_PRE_TYPE_GEMMA4`): spaces
    /// escaped as `▁` (no prefix), the text split into runs of non-newlines and runs of
    /// newlines, BPE by the stored merges over raw UTF-8 characters with `<0xXX>` byte
    /// fallback, a run of newlines that is itself a token taken whole; BOS always added.
    pub(super) fn gemma4_json_inner(&self) -> Why<Value> {
        self.check_lengths()?;
        self.check_token_types()?;
        let n = self.tokens.len();
        if u32::try_from(n).is_err() {
            return Err(format!("{n} tokens do not fit u32 ids"));
        }
        let (vocab, added) = self.vocab_and_added();
        let mut merges = Vec::with_capacity(self.merges.len());
        let mut seen = std::collections::HashSet::with_capacity(self.merges.len());
        for (i, m) in self.merges.iter().enumerate() {
            let (a, b) = super::split_merge(m).ok_or_else(|| {
                format!("tokenizer.ggml.merges[{i}] {m:?} is not two space-separated parts")
            })?;
            for part in [a, b, &format!("{a}{b}")] {
                if !vocab.contains_key(part) {
                    return Err(format!(
                        "tokenizer.ggml.merges[{i}] {m:?}: {part:?} is not a token"
                    ));
                }
            }
            // llama.cpp's bpe_ranks.emplace keeps a repeated pair's first rank.
            if seen.insert((a, b)) {
                merges.push(json!([a, b]));
            }
        }
        let unk = match self.unk {
            Some(u) => Value::from(
                self.token(u)
                    .ok_or_else(|| format!("unknown token id {u} is out of range ({n} tokens)"))?,
            ),
            None => Value::Null,
        };
        Ok(json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": SPM_SPACE},
            "pre_tokenizer": {"type": "Split", "pattern": {"Regex": GEMMA4_PATTERN},
                              "behavior": "Isolated", "invert": false},
            "post_processor": self.template_processor()?,
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": SPM_SPACE}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
            ]},
            "model": {
                "type": "BPE",
                "dropout": null,
                "unk_token": unk,
                "continuing_subword_prefix": null,
                "end_of_word_suffix": null,
                "fuse_unk": false,
                "byte_fallback": true,
                "ignore_merges": GEMMA4_IGNORE_MERGES,
                "vocab": vocab,
                "merges": merges,
            },
        }))
    }

    /// The scores of a SentencePiece vocabulary, checked: one finite value per token.
    pub(super) fn spm_scores(&self) -> Why<&[f32]> {
        let scores = self
            .scores
            .as_deref()
            .ok_or("a SentencePiece (llama) vocabulary without tokenizer.ggml.scores")?;
        if scores.len() != self.tokens.len() {
            return Err(format!(
                "tokenizer.ggml.scores has {} entries for {} tokens",
                scores.len(),
                self.tokens.len()
            ));
        }
        if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
            return Err(format!(
                "tokenizer.ggml.scores[{i}] is {}, not a finite score",
                scores[i]
            ));
        }
        Ok(scores)
    }

    /// llama.cpp's `add_space_prefix` (default true for a SentencePiece vocabulary).
    pub fn effective_add_space_prefix(&self) -> bool {
        self.add_space_prefix.unwrap_or(true)
    }

    /// `tokenizer.json` for a SentencePiece vocabulary (see the module documentation).
    pub(super) fn spm_json_inner(&self) -> Why<Value> {
        self.check_lengths()?;
        let scores = self.spm_scores()?;
        let n = self.tokens.len();
        if u32::try_from(n).is_err() {
            return Err(format!("{n} tokens do not fit u32 ids"));
        }
        self.check_token_types()?;
        let (vocab, added) = self.vocab_and_added();
        let unk_id = self.unk.unwrap_or(0);
        let unk = self
            .token(unk_id)
            .ok_or_else(|| format!("unknown token id {unk_id} is out of range ({n} tokens)"))?;
        // Deriving merges looks up every split of every piece: quadratic in a piece's length.
        // Real pieces are short (Llama 2, Phi-3: at most 48 bytes); a hostile file must not
        // turn that into hours.
        if let Some((i, t)) = self
            .tokens
            .iter()
            .enumerate()
            .find(|(_, t)| t.len() > SPM_MAX_PIECE_BYTES)
        {
            return Err(format!(
                "tokenizer.ggml.tokens[{i}] is {} bytes long; SentencePiece pieces over \
                 {SPM_MAX_PIECE_BYTES} bytes are refused (deriving the merges is quadratic in \
                 a piece's length)",
                t.len()
            ));
        }
        let merges: Vec<Value> = spm_merges(&self.tokens, scores)
            .into_iter()
            .map(|(l, r)| json!([l, r]))
            .collect();
        let mut normalizers = Vec::new();
        if self.effective_add_space_prefix() {
            normalizers.push(json!({"type": "Prepend", "prepend": SPM_SPACE}));
        }
        normalizers.push(json!({"type": "Replace", "pattern": {"String": " "},
                                "content": SPM_SPACE}));
        let mut decoders = vec![
            json!({"type": "Replace", "pattern": {"String": SPM_SPACE}, "content": " "}),
            json!({"type": "ByteFallback"}),
            json!({"type": "Fuse"}),
        ];
        if self.effective_add_space_prefix() {
            decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
        }
        Ok(json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": {"type": "Sequence", "normalizers": normalizers},
            "pre_tokenizer": null,
            "post_processor": self.template_processor()?,
            "decoder": {"type": "Sequence", "decoders": decoders},
            "model": {
                "type": "BPE",
                "dropout": null,
                "unk_token": unk,
                "continuing_subword_prefix": null,
                "end_of_word_suffix": null,
                "fuse_unk": true,
                "byte_fallback": true,
                "ignore_merges": false,
                "vocab": vocab,
                "merges": merges,
            },
        }))
    }
}

/// What [`Vocab::from_tokenizer_json`] adds for a SentencePiece-style `tokenizer.json` (BPE with
/// `byte_fallback`): token types fixed up (`<0xXX>` byte, the unknown token unknown), scores
/// from the merge ranks, `add_space_prefix` from the normalizer or pre-tokenizer.
pub(super) fn hf_spm_fields(
    tj: &Value,
    tokens: &[String],
    types: &mut [i32],
    merges: &[(String, String)],
    unk: Option<u32>,
) -> Why<(Vec<f32>, bool)> {
    for (t, ty) in tokens.iter().zip(types.iter_mut()) {
        if *ty != TOKEN_TYPE_CONTROL && *ty != TOKEN_TYPE_USER_DEFINED && is_byte_token(t) {
            *ty = TOKEN_TYPE_BYTE;
        }
    }
    if let Some(slot) = unk.and_then(|u| types.get_mut(u as usize)) {
        // An unknown token written as an added token (Phi-3's GGUF types it control) stays so.
        if *slot == super::TOKEN_TYPE_NORMAL {
            *slot = TOKEN_TYPE_UNKNOWN;
        }
    }
    let id_of: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut scores = vec![0.0f32; tokens.len()];
    let mut scored = vec![false; tokens.len()];
    for (rank, (l, r)) in merges.iter().enumerate() {
        let whole = format!("{l}{r}");
        let id = *id_of
            .get(whole.as_str())
            .ok_or_else(|| format!("merge {rank} ({l:?}, {r:?}): {whole:?} is not a token"))?;
        for part in [l, r] {
            if !id_of.contains_key(part.as_str()) {
                return Err(format!(
                    "merge {rank} ({l:?}, {r:?}): {part:?} is not a token"
                ));
            }
        }
        if !scored[id] {
            scored[id] = true;
            // f32 holds every integer up to 2^24 = MAX_VOCAB exactly.
            scores[id] = -(rank as f32) - 1.0;
        }
    }
    Ok((scores, add_space_prefix_of(tj)?))
}

/// Whether a SentencePiece-style `tokenizer.json` prefixes a space: transformers' legacy
/// normalizer has `Prepend("▁")`; the non-legacy one a `Metaspace` pre-tokenizer whose
/// `prepend_scheme` is `always` or `first` (`never`: no prefix).
fn add_space_prefix_of(tj: &Value) -> Why<bool> {
    fn find<'a>(v: &'a Value, ty: &str, list_key: &str) -> Option<&'a Value> {
        if v.get("type").and_then(Value::as_str) == Some(ty) {
            return Some(v);
        }
        v.get(list_key)?
            .as_array()?
            .iter()
            .find_map(|x| find(x, ty, list_key))
    }
    let norm = tj.get("normalizer").unwrap_or(&Value::Null);
    if let Some(p) = find(norm, "Prepend", "normalizers") {
        return Ok(p.get("prepend").and_then(Value::as_str) == Some(SPM_SPACE));
    }
    let pre = tj.get("pre_tokenizer").unwrap_or(&Value::Null);
    if let Some(m) = find(pre, "Metaspace", "pretokenizers") {
        return match m.get("prepend_scheme").and_then(Value::as_str) {
            Some("always" | "first") => Ok(true),
            Some("never") => Ok(false),
            None => Ok(m.get("add_prefix_space").and_then(Value::as_bool) != Some(false)),
            Some(other) => Err(format!("Metaspace prepend_scheme {other:?} is not known")),
        };
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(t: &[&str]) -> Vec<String> {
        t.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn merges_follow_scores_then_lengths() {
        // "abc" can be split as a+bc and ab+c: same score, longer left part first.
        let tokens = toks(&["a", "b", "c", "ab", "bc", "abc"]);
        let scores = [0.0, 0.0, 0.0, -2.0, -1.0, -3.0];
        let m = spm_merges(&tokens, &scores);
        let m: Vec<(&str, &str)> = m.iter().map(|(l, r)| (l.as_str(), r.as_str())).collect();
        assert_eq!(m, [("b", "c"), ("a", "b"), ("ab", "c"), ("a", "bc")]);
    }

    #[test]
    fn merges_count_characters_and_dedupe_pieces() {
        // A repeated piece is visited once with its last score; multi-byte characters split
        // only at character boundaries.
        let tokens = toks(&["▁", "é", "▁é", "▁é"]);
        let m = spm_merges(&tokens, &[0.0, 0.0, -5.0, -1.0]);
        assert_eq!(m, [("▁".to_owned(), "é".to_owned())]);
    }

    #[test]
    fn byte_tokens() {
        assert!(is_byte_token("<0x0A>"));
        assert!(is_byte_token("<0xFF>"));
        assert!(!is_byte_token("<0xff>"));
        assert!(!is_byte_token("<0x0A"));
        assert!(!is_byte_token("<0x0AB>"));
        assert!(!is_byte_token("<0x\u{e9}>"));
    }

    #[test]
    fn space_prefix_from_normalizer_or_metaspace() {
        let legacy = json!({"normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"}, {"type": "Replace"}]}});
        assert!(add_space_prefix_of(&legacy).unwrap());
        let meta = json!({"normalizer": null, "pre_tokenizer": {"type": "Metaspace",
            "replacement": "▁", "prepend_scheme": "first", "split": false}});
        assert!(add_space_prefix_of(&meta).unwrap());
        let never = json!({"pre_tokenizer": {"type": "Metaspace", "prepend_scheme": "never"}});
        assert!(!add_space_prefix_of(&never).unwrap());
        let odd = json!({"pre_tokenizer": {"type": "Metaspace", "prepend_scheme": "sometimes"}});
        assert!(add_space_prefix_of(&odd).is_err());
        assert!(!add_space_prefix_of(&json!({})).unwrap());
    }
}
