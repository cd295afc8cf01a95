//! Meta's Llama 3 `tokenizer.model` written from another format's tokenizer, when it says
//! exactly the same thing. (Llama 1/2's SentencePiece `tokenizer.model` is read and written by
//! `crate::tokenizer::sentencepiece`.)
//!
//! The file is tiktoken's BPE format: one `base64(token bytes) rank` line per token, rank = id
//! (llama-models `models/llama3/tokenizer.py`: `load_tiktoken_bpe(model_path)`). Meta's code
//! splits text with the Llama 3 pattern (`pat_str`) and appends its 256 special tokens after the
//! ranks (`num_reserved_special_tokens = 256`, ids 128000.. for Llama 3); qforge reads one back
//! the same way ([`crate::export::source_vocab`]: the specials only after exactly 128,000 ranks,
//! with Llama 3.1's names when the config has llama3 RoPE scaling, Llama 3's otherwise) and
//! rebuilds the merges from the ranks as transformers' `TikTokenConverter` does. So a tokenizer
//! is written only when that reading gives it back unchanged: byte-level BPE with the Llama 3
//! pre-tokenizer, every id a token, the merges exactly those the ranks imply, and either no
//! special tokens or Meta's 256 after 128,000 ranks. Anything else is refused by the caller.

use crate::tokenizer::{
    byte_to_char, llama3_special_tokens, Llama3Specials, PreTokenizer, Vocab, TOKEN_TYPE_CONTROL,
    TOKEN_TYPE_NORMAL,
};

/// Whether the Meta `tokenizer.model` at `path` is tiktoken's text format (Llama 3: every
/// line `base64 rank`) rather than a SentencePiece protobuf (Llama 1/2), judged on its first
/// line. A protobuf `ModelProto` starts with a `pieces` field key (`0x0a`), never a base64
/// character.
pub fn is_tiktoken_file(path: &std::path::Path) -> crate::error::Result<bool> {
    use std::io::Read;
    let mut head = Vec::with_capacity(256);
    std::fs::File::open(path)
        .and_then(|f| f.take(256).read_to_end(&mut head))
        .map_err(|e| crate::error::Error::io(path, e))?;
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let is_b64 = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=');
    Ok(match line.iter().position(|&b| b == b' ') {
        Some(sp) => {
            sp > 0
                && line[..sp].iter().all(is_b64)
                && sp + 1 < line.len()
                && line[sp + 1..].iter().all(u8::is_ascii_digit)
        }
        None => false,
    })
}

/// The GGUF view of a Meta Llama 1/2 SentencePiece `tokenizer.model`
/// ([`Vocab::from_sentencepiece_file`]) with the flags Meta's code applies and the HF/GGUF
/// conversions of it state: BOS added, EOS not (llama `generation.py`: `encode(x, bos=True,
/// eos=False)`; transformers `LlamaTokenizer` defaults `add_bos_token` true, `add_eos_token`
/// false, which `convert_hf_to_gguf.py` writes), the model's dummy prefix as
/// `add_space_prefix` and the `default` pre-tokenizer (`_set_vocab_sentencepiece` writes both),
/// UNK/BOS/EOS control tokens scored -1000 as that converter makes transformers' special added
/// tokens.
pub fn meta_sentencepiece_vocab(path: &std::path::Path) -> crate::error::Result<Vocab> {
    let mut v = Vocab::from_sentencepiece_file(path)?;
    // transformers' LlamaTokenizer lists UNK, BOS and EOS as special added tokens
    // (tokenizer_config.json added_tokens_decoder), which convert_hf_to_gguf.py
    // `_create_vocab_sentencepiece` makes control tokens scored -1000 (sentencepiece itself
    // never scores them)
    for id in [v.unk, v.bos, v.eos].into_iter().flatten() {
        let id = id as usize;
        v.token_types[id] = TOKEN_TYPE_CONTROL;
        if let Some(scores) = v.scores.as_mut() {
            scores[id] = -1000.0;
        }
    }
    v.pre = Some("default".into());
    v.add_space_prefix = Some(v.add_space_prefix != Some(false));
    v.add_bos = Some(true);
    v.add_eos = Some(false);
    Ok(v)
}

/// Ranks of a full Llama 3 vocabulary, after which Meta's 256 special tokens come.
const LLAMA3_RANKS: usize = 128_000;

/// The tiktoken `tokenizer.model` bytes for `vocab`, or why Meta's format cannot hold it
/// exactly. `llama31` says which special-token names a reader gives the 256 specials (Llama
/// 3.1's when the config has llama3 RoPE scaling).
pub fn tiktoken_model(vocab: &Vocab, llama31: bool) -> Result<Vec<u8>, String> {
    if vocab.model != "gpt2" {
        return Err(format!(
            "a {:?} vocabulary is not byte-level BPE",
            vocab.model
        ));
    }
    if vocab.pre_tokenizer() != Some(PreTokenizer::Llama3) {
        return Err(format!(
            "its pre-tokenizer {:?} is not Llama 3's, the only one Meta's tokenizer.py applies",
            vocab.pre.as_deref().unwrap_or("default")
        ));
    }
    let version = if llama31 {
        Llama3Specials::V3_1
    } else {
        Llama3Specials::V3
    };
    let specials = llama3_special_tokens(version);
    let n_base = if vocab.tokens.len() == LLAMA3_RANKS + specials.len() {
        LLAMA3_RANKS
    } else {
        vocab.tokens.len()
    };
    let (base, tail) = vocab.tokens.split_at(n_base);
    if !tail.is_empty()
        && (tail != specials.as_slice()
            || vocab.token_types[n_base..]
                .iter()
                .any(|&t| t != TOKEN_TYPE_CONTROL))
    {
        return Err(format!(
            "its special tokens at {LLAMA3_RANKS}.. are not Meta's {version:?} ones"
        ));
    }
    if let Some(i) = vocab.token_types[..n_base]
        .iter()
        .position(|&t| t != TOKEN_TYPE_NORMAL)
    {
        return Err(format!(
            "id {i} ({:?}) is a special, added or unused token; Meta's format has only ranks below {LLAMA3_RANKS} and its own 256 specials after them",
            base[i]
        ));
    }
    let table = byte_to_char();
    let mut out = String::new();
    for (rank, t) in base.iter().enumerate() {
        let bytes: Option<Vec<u8>> = t
            .chars()
            .map(|c| table.iter().position(|&x| x == c).map(|b| b as u8))
            .collect();
        let bytes = bytes.ok_or_else(|| {
            format!("token {rank} ({t:?}) is not spelled in the byte-level alphabet")
        })?;
        out.push_str(&base64_encode(&bytes));
        out.push(' ');
        out.push_str(&rank.to_string());
        out.push('\n');
    }
    let bytes = out.into_bytes();
    let tail_specials: &[String] = if tail.is_empty() { &[] } else { &specials };
    let back = Vocab::from_tiktoken(&bytes, tail_specials).map_err(|e| e.to_string())?;
    same_tokenizer(vocab, &back)?;
    Ok(bytes)
}

/// Whether the vocabulary read back from the tiktoken file tokenizes as the source does: same
/// tokens, types, merges (in order), pre-tokenizer and BOS policy.
fn same_tokenizer(src: &Vocab, back: &Vocab) -> Result<(), String> {
    if src.tokens != back.tokens || src.token_types != back.token_types {
        return Err("its tokens do not read back from tiktoken ranks unchanged".into());
    }
    if let Some(i) = (0..src.merges.len().max(back.merges.len()))
        .find(|&i| src.merges.get(i) != back.merges.get(i))
    {
        return Err(format!(
            "its merges are not the ones its ranks imply (tiktoken merges by rank): merge {i} is {:?}, the ranks give {:?}",
            src.merges.get(i),
            back.merges.get(i)
        ));
    }
    if src.pre_tokenizer() != back.pre_tokenizer() {
        return Err("its pre-tokenizer does not read back".into());
    }
    if src.effective_add_bos() != back.effective_add_bos() || src.bos != back.bos {
        return Err(format!(
            "its BOS ({:?}, added: {}) is not what Meta's reader uses ({:?}, added: {})",
            src.bos,
            src.effective_add_bos(),
            back.bos,
            back.effective_add_bos()
        ));
    }
    Ok(())
}

/// Standard base64 with `=` padding (RFC 4648), as Python's `base64.b64encode` writes the
/// tokens of a tiktoken file.
fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_python() {
        // base64.b64encode(b"") / b"a" / b"ab" / b"abc" / b" the" / bytes([255, 0])
        for (input, want) in [
            (&b""[..], ""),
            (b"a", "YQ=="),
            (b"ab", "YWI="),
            (b"abc", "YWJj"),
            (b" the", "IHRoZQ=="),
            (&[255, 0], "/wA="),
        ] {
            assert_eq!(base64_encode(input), want);
        }
    }

    #[test]
    fn a_tiktoken_vocabulary_comes_back_byte_for_byte() {
        // ranks: the 256 bytes, then " t", "he", " th", "the", " the"
        let mut lines: Vec<Vec<u8>> = (0u8..=255).map(|b| vec![b]).collect();
        for t in [&b" t"[..], b"he", b" th", b"the", b" the"] {
            lines.push(t.to_vec());
        }
        let mut file = String::new();
        for (r, t) in lines.iter().enumerate() {
            file.push_str(&base64_encode(t));
            file.push(' ');
            file.push_str(&r.to_string());
            file.push('\n');
        }
        let vocab = Vocab::from_tiktoken(file.as_bytes(), &[] as &[&str]).unwrap();
        assert_eq!(tiktoken_model(&vocab, true).unwrap(), file.as_bytes());
        // a merge list the ranks do not imply is refused
        let mut other = vocab.clone();
        other.merges.reverse();
        let err = tiktoken_model(&other, true).unwrap_err();
        assert!(err.contains("merges"), "{err}");
        // a special token among the ranks is refused
        let mut special = vocab.clone();
        special.token_types[0] = TOKEN_TYPE_CONTROL;
        let err = tiktoken_model(&special, true).unwrap_err();
        assert!(err.contains("id 0"), "{err}");
        // another pre-tokenizer is refused
        let mut gpt2 = vocab;
        gpt2.pre = Some("gpt-2".into());
        assert!(tiktoken_model(&gpt2, true)
            .unwrap_err()
            .contains("pre-tokenizer"));
    }
}
