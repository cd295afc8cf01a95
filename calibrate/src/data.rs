//! Calibration samples.
//!
//! How samples are drawn (deterministic for a given text, tokenizer, `seq_len`, `n` and seed):
//! 1. Each text file is tokenized whole with the model's tokenizer (special tokens as the
//!    tokenizer adds them, e.g. BOS), and the token streams are concatenated in file order.
//! 2. The stream is cut into `⌊tokens/seq_len⌋` non-overlapping windows of `seq_len` tokens
//!    starting at 0 (the tail is dropped).
//! 3. The window indices are shuffled with a Fisher–Yates shuffle driven by SplitMix64 seeded
//!    with `seed`, and the first `n` are taken, in that order.
//! 4. When the tokenizer adds BOS, each window's first token is replaced by BOS (as
//!    llama-perplexity does for its chunks), so every sample starts like a document.
//!
//! llm-compressor's `oneshot` shuffles its dataset rows with a seed and tokenizes each row
//! truncated to `max_seq_length`; rows of a text file are lines, mostly far shorter than
//! `seq_len`, so cutting a continuous stream gives full-length samples instead. The drawn token
//! ids are written with [`Samples::to_json`] so the Python side can feed exactly the same ids.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// `n` calibration samples of `seq_len` tokens each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Samples {
    /// Tokens per sample.
    pub seq_len: usize,
    /// The samples' token ids, one list per sample.
    pub samples: Vec<Vec<u32>>,
}

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny, well-mixed, portable generator.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`), by rejection (no modulo bias).
    pub fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }
}

impl Samples {
    /// Draw `n` windows of `seq_len` tokens from `tokens` (steps 2–4 of the module docs).
    pub fn draw(
        tokens: &[u32],
        seq_len: usize,
        n: usize,
        seed: u64,
        bos: Option<u32>,
    ) -> Result<Self> {
        if seq_len < 2 {
            return Err(Error::InvalidOption {
                name: "seq-len",
                reason: format!("{seq_len} is too small (at least 2 tokens)"),
            });
        }
        if n == 0 {
            return Err(Error::InvalidOption {
                name: "samples",
                reason: "must be at least 1".into(),
            });
        }
        let windows = tokens.len() / seq_len;
        if windows < n {
            return Err(Error::NotEnoughData {
                tokens: tokens.len(),
                windows,
                seq_len,
                samples: n,
            });
        }
        let mut idx: Vec<usize> = (0..windows).collect();
        let mut rng = SplitMix64(seed);
        for i in (1..windows).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            idx.swap(i, j);
        }
        let samples = idx[..n]
            .iter()
            .map(|&w| {
                let mut s = tokens[w * seq_len..(w + 1) * seq_len].to_vec();
                if let Some(b) = bos {
                    s[0] = b;
                }
                s
            })
            .collect();
        Ok(Samples { seq_len, samples })
    }

    /// Number of samples.
    pub fn n(&self) -> usize {
        self.samples.len()
    }

    /// All token ids, sample after sample.
    pub fn flat(&self) -> Vec<u32> {
        self.samples.iter().flatten().copied().collect()
    }

    /// `{"seq_len": L, "samples": [[ids…], …]}`.
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).expect("plain data serializes");
        v.push(b'\n');
        v
    }

    /// Read [`Samples::to_json`] output, checking every sample has `seq_len` tokens.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let s: Samples = serde_json::from_slice(&bytes).map_err(|e| Error::BadFile {
            path: path.into(),
            reason: format!("not a samples file: {e}"),
        })?;
        if s.samples.is_empty() || s.seq_len < 2 {
            return Err(Error::BadFile {
                path: path.into(),
                reason: "no samples, or seq_len below 2".into(),
            });
        }
        if let Some(i) = s.samples.iter().position(|x| x.len() != s.seq_len) {
            return Err(Error::BadFile {
                path: path.into(),
                reason: format!(
                    "sample {i} has {} tokens, not seq_len {}",
                    s.samples[i].len(),
                    s.seq_len
                ),
            });
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draw_is_seeded_and_disjoint() {
        let t: Vec<u32> = (0..100).collect();
        let a = Samples::draw(&t, 10, 4, 7, None).unwrap();
        let b = Samples::draw(&t, 10, 4, 7, None).unwrap();
        assert_eq!(a, b);
        let c = Samples::draw(&t, 10, 4, 8, None).unwrap();
        assert_ne!(a, c);
        let mut starts: Vec<u32> = a.samples.iter().map(|s| s[0]).collect();
        starts.sort_unstable();
        starts.dedup();
        assert_eq!(starts.len(), 4);
        assert!(a.samples.iter().all(|s| s[0] % 10 == 0 && s[9] == s[0] + 9));
        let d = Samples::draw(&t, 10, 2, 7, Some(999)).unwrap();
        assert!(d.samples.iter().all(|s| s[0] == 999));
        assert!(matches!(
            Samples::draw(&t, 10, 11, 0, None),
            Err(Error::NotEnoughData {
                windows: 10,
                samples: 11,
                ..
            })
        ));
    }
}
