//! Text → token ids with the model's own tokenizer, and llama.cpp's chunking.
//!
//! GGUF: the tokenizer is rebuilt from `tokenizer.ggml.*` ([`Vocab::to_tokenizer`], exactly
//! llama.cpp's ids); HF: the directory's `tokenizer.json`; Meta: `tokenizer.model` (tiktoken
//! ranks with the Llama 3.1 special tokens). Whether BOS is added is read off the tokenizer
//! itself (its post-processor), which for GGUF follows `tokenizer.ggml.add_bos_token`.

use std::path::PathBuf;
use std::str::FromStr;

use qforge_convert::tokenizer::{llama3_special_tokens, Llama3Specials, Vocab};
use qforge_convert::{Checkpoint, Format};

use crate::error::{Error, Result};

/// A loaded tokenizer and its BOS policy.
pub struct TextTokenizer {
    tok: tokenizers::Tokenizer,
    /// The BOS id when the tokenizer prepends one (llama.cpp `add_bos`).
    pub bos: Option<u32>,
    source: PathBuf,
}

impl TextTokenizer {
    /// The tokenizer of `ckpt`.
    pub fn for_checkpoint(ckpt: &Checkpoint) -> Result<Self> {
        let err = |path: PathBuf| move |e: String| Error::Tokenizer { path, reason: e };
        let (tok, source) = match ckpt.format {
            Format::Gguf => {
                let meta = ckpt.gguf.as_ref().ok_or_else(|| Error::Tokenizer {
                    path: ckpt.path.clone(),
                    reason: "GGUF metadata missing".into(),
                })?;
                (Vocab::from_gguf(meta)?.to_tokenizer()?, ckpt.path.clone())
            }
            Format::Hf => {
                let p = ckpt.dir().join("tokenizer.json");
                let text = std::fs::read_to_string(&p).map_err(|source| Error::Io {
                    path: p.clone(),
                    source,
                })?;
                let t = tokenizers::Tokenizer::from_str(&text)
                    .map_err(|e| err(p.clone())(e.to_string()))?;
                (t, p)
            }
            Format::Meta => {
                let p = ckpt.dir().join("tokenizer.model");
                let v = if qforge_convert::meta_tokenizer::is_tiktoken_file(&p)? {
                    Vocab::from_tiktoken_file(&p, &llama3_special_tokens(Llama3Specials::V3_1))?
                } else {
                    qforge_convert::meta_tokenizer::meta_sentencepiece_vocab(&p)?
                    // Llama 1/2
                };
                (v.to_tokenizer()?, p)
            }
        };
        // BOS policy: whatever the post-processor prepends to a plain word.
        let probe = |special: bool| -> Result<Vec<u32>> {
            Ok(tok
                .encode("Hello", special)
                .map_err(|e| err(source.clone())(e.to_string()))?
                .get_ids()
                .to_vec())
        };
        let (with, without) = (probe(true)?, probe(false)?);
        let bos = (with.len() > without.len() && with.first() != without.first()).then(|| with[0]);
        Ok(TextTokenizer { tok, bos, source })
    }

    /// Token ids of `text` with the special tokens the tokenizer adds (llama.cpp's
    /// `common_tokenize(ctx, text, add_special = true)`).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .tok
            .encode(text, true)
            .map_err(|e| Error::Tokenizer {
                path: self.source.clone(),
                reason: e.to_string(),
            })?
            .get_ids()
            .to_vec())
    }
}

/// Evaluation chunks as llama-perplexity builds them (tools/perplexity/perplexity.cpp
/// `perplexity`): `n = min(chunks, len/ctx)` consecutive windows of `ctx` tokens, the first
/// token of each replaced by BOS when the vocabulary adds BOS. At least `2·ctx` tokens are
/// required, as llama.cpp requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunks {
    /// `n · ctx` token ids, chunk after chunk.
    pub tokens: Vec<u32>,
    /// Tokens per chunk.
    pub ctx: usize,
    /// Number of chunks.
    pub n: usize,
}

impl Chunks {
    /// Split `tokens` (the whole text) into chunks.
    pub fn new(
        tokens: &[u32],
        ctx: usize,
        max_chunks: Option<usize>,
        bos: Option<u32>,
    ) -> Result<Self> {
        if ctx < 4 {
            return Err(Error::InvalidOption {
                name: "ctx",
                reason: format!("{ctx} is too small (at least 4 tokens per chunk)"),
            });
        }
        if tokens.len() < 2 * ctx {
            return Err(Error::NotEnoughTokens {
                tokens: tokens.len(),
                needed: 2 * ctx,
                ctx,
            });
        }
        let n_max = tokens.len() / ctx;
        let n = match max_chunks {
            Some(0) => {
                return Err(Error::InvalidOption {
                    name: "chunks",
                    reason: "must be at least 1".into(),
                })
            }
            Some(c) => c.min(n_max),
            None => n_max,
        };
        let mut out = tokens[..n * ctx].to_vec();
        if let Some(b) = bos {
            for c in out.chunks_mut(ctx) {
                c[0] = b;
            }
        }
        Ok(Chunks {
            tokens: out,
            ctx,
            n,
        })
    }

    /// Chunk `i`'s tokens.
    pub fn chunk(&self, i: usize) -> &[u32] {
        &self.tokens[i * self.ctx..(i + 1) * self.ctx]
    }

    /// First position whose prediction is scored: `ctx/2` (the logits of positions
    /// `first..ctx−1` score tokens `first+1..ctx`).
    pub fn first(&self) -> usize {
        self.ctx / 2
    }

    /// Scored tokens per chunk: `ctx − 1 − first`.
    pub fn scored_per_chunk(&self) -> usize {
        self.ctx - 1 - self.first()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_follow_llama_perplexity() {
        let t: Vec<u32> = (0..25).collect();
        let c = Chunks::new(&t, 8, None, Some(99)).unwrap();
        assert_eq!(c.n, 3);
        assert_eq!(c.chunk(1), &[99, 9, 10, 11, 12, 13, 14, 15]);
        assert_eq!(c.scored_per_chunk(), 3);
        let c = Chunks::new(&t, 8, Some(2), None).unwrap();
        assert_eq!(c.n, 2);
        assert_eq!(c.chunk(0)[0], 0);
        assert!(matches!(
            Chunks::new(&t[..15], 8, None, None),
            Err(Error::NotEnoughTokens {
                tokens: 15,
                needed: 16,
                ctx: 8
            })
        ));
    }
}
