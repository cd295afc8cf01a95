//! SentencePiece's own model file (`tokenizer.model` of Llama 1/2, Mistral, Phi-3: a
//! `ModelProto` protobuf, sentencepiece_model.proto) read into the GGUF view, as llama.cpp's
//! `convert_hf_to_gguf.py` does it (conversion/base.py `_create_vocab_sentencepiece`): every
//! piece with its score; type unknown, control, unused or byte as SentencePiece says, any other
//! piece (user-defined included) normal; BOS/EOS/UNK/PAD ids from the trainer spec.
//!
//! Only the fields used are decoded; the protobuf wire format is checked as it is read (every
//! length within the buffer, varints at most ten bytes, known wire types), so a hostile file is
//! an error naming the file, never a panic.

use std::path::Path;

use super::{
    tok_err, Vocab, Why, MAX_VOCAB, TOKEN_TYPE_CONTROL, TOKEN_TYPE_NORMAL, TOKEN_TYPE_UNKNOWN,
};
use crate::error::{Error, Result};

/// Largest `tokenizer.model` read (Llama 2's is 500 kB, Gemma's 4 MB).
pub const MAX_SENTENCEPIECE_BYTES: u64 = 64 << 20;

/// One protobuf field: its number and its value.
enum Field<'a> {
    Varint(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
}

/// A protobuf message reader over a byte slice.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn varint(&mut self) -> Why<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or("a varint runs past the end of its message")?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("a varint longer than ten bytes".into())
    }

    fn take(&mut self, n: usize) -> Why<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or("a field runs past the end of its message")?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// The next field, or `None` at the end of the message.
    fn next(&mut self) -> Why<Option<(u64, Field<'a>)>> {
        if self.pos == self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let (num, wire) = (key >> 3, key & 7);
        let field = match wire {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Field::Varint(0)
            }
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| "a huge length")?;
                Field::Bytes(self.take(n)?)
            }
            5 => {
                let b = self.take(4)?;
                Field::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            w => {
                return Err(format!(
                    "protobuf wire type {w} (field {num}) is not supported"
                ))
            }
        };
        Ok(Some((num, field)))
    }
}

/// A trainer-spec id (`int32`; -1 = none) as a token id, if in range.
fn spec_id(v: Option<u64>, default: i64, n: usize) -> Option<u32> {
    // int32 is sign-extended to 64 bits on the wire.
    let id = v.map_or(default, |x| x as i64);
    u32::try_from(id).ok().filter(|&i| (i as usize) < n)
}

impl Vocab {
    /// The GGUF view of a SentencePiece `tokenizer.model` (see the module documentation).
    pub fn from_sentencepiece(bytes: &[u8]) -> Result<Self> {
        sentencepiece_inner(bytes).map_err(tok_err("tokenizer.model"))
    }

    /// Read and parse a SentencePiece `tokenizer.model` file.
    pub fn from_sentencepiece_file(path: &Path) -> Result<Self> {
        let len = std::fs::metadata(path)
            .map_err(|e| Error::io(path, e))?
            .len();
        if len > MAX_SENTENCEPIECE_BYTES {
            return Err(tok_err(path)(format!(
                "{len} bytes, above the {MAX_SENTENCEPIECE_BYTES} accepted"
            )));
        }
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        sentencepiece_inner(&bytes).map_err(tok_err(path))
    }
}

impl Vocab {
    /// Take the scores and types of `sp` (the directory's `tokenizer.model`) for its pieces;
    /// ids past them (tokens added in tokenizer.json, `[PAD]` fillers) get the score -1000,
    /// as convert_hf_to_gguf.py gives them. The pieces must be this vocabulary's first tokens.
    pub(super) fn adopt_sentencepiece(&mut self, sp: &Vocab) -> Why<()> {
        let m = sp.tokens.len();
        if m > self.tokens.len() {
            return Err(format!(
                "{m} pieces, more than tokenizer.json's {} tokens",
                self.tokens.len()
            ));
        }
        if let Some(i) = (0..m).find(|&i| sp.tokens[i] != self.tokens[i]) {
            return Err(format!(
                "piece {i} is {:?} but tokenizer.json's token {i} is {:?}",
                sp.tokens[i], self.tokens[i]
            ));
        }
        let sp_scores = sp.scores.as_deref().unwrap_or_default();
        let mut scores = vec![-1000.0f32; self.tokens.len()];
        scores[..m].copy_from_slice(&sp_scores[..m.min(sp_scores.len())]);
        self.scores = Some(scores);
        self.token_types[..m].copy_from_slice(&sp.token_types[..m]);
        Ok(())
    }
}

fn sentencepiece_inner(bytes: &[u8]) -> Why<Vocab> {
    let mut tokens = Vec::new();
    let mut types = Vec::new();
    let mut scores = Vec::new();
    let (mut model_type, mut byte_fallback) = (None, false);
    let (mut unk, mut bos, mut eos, mut pad) = (None, None, None, None);
    let mut add_dummy_prefix = true;
    let mut top = Reader::new(bytes);
    while let Some((num, field)) = top.next()? {
        match (num, field) {
            (1, Field::Bytes(piece)) => {
                if tokens.len() >= MAX_VOCAB {
                    return Err(format!("more than {MAX_VOCAB} pieces"));
                }
                let i = tokens.len();
                let (mut text, mut score, mut ty) = (None, 0.0f32, 1u64);
                let mut r = Reader::new(piece);
                while let Some((n, f)) = r.next()? {
                    match (n, f) {
                        (1, Field::Bytes(t)) => {
                            text = Some(
                                std::str::from_utf8(t)
                                    .map_err(|_| format!("piece {i} is not UTF-8"))?
                                    .to_owned(),
                            );
                        }
                        (2, Field::Fixed32(s)) => score = f32::from_bits(s),
                        (3, Field::Varint(t)) => ty = t,
                        _ => {}
                    }
                }
                let text = text.ok_or_else(|| format!("piece {i} has no text"))?;
                if !score.is_finite() {
                    return Err(format!("piece {i} ({text:?}) has score {score}"));
                }
                // sentencepiece_model.proto Type: NORMAL 1, UNKNOWN 2, CONTROL 3,
                // USER_DEFINED 4, BYTE 6, UNUSED 5 -- GGUF's numbering; user-defined becomes
                // normal as in convert_hf_to_gguf.py.
                let ty = match ty {
                    1 | 4 => TOKEN_TYPE_NORMAL,
                    2 | 3 | 5 | 6 => ty as i32,
                    other => return Err(format!("piece {i} ({text:?}) has type {other}")),
                };
                tokens.push(text);
                types.push(ty);
                scores.push(score);
            }
            (2, Field::Bytes(spec)) => {
                let mut r = Reader::new(spec);
                while let Some((n, f)) = r.next()? {
                    if let Field::Varint(v) = f {
                        match n {
                            3 => model_type = Some(v),
                            35 => byte_fallback = v != 0,
                            40 => unk = Some(v),
                            41 => bos = Some(v),
                            42 => eos = Some(v),
                            43 => pad = Some(v),
                            _ => {}
                        }
                    }
                }
            }
            (3, Field::Bytes(spec)) => {
                let mut r = Reader::new(spec);
                while let Some((n, f)) = r.next()? {
                    if let (3, Field::Varint(v)) = (n, f) {
                        add_dummy_prefix = v != 0;
                    }
                }
            }
            _ => {}
        }
    }
    // TrainerSpec.ModelType: UNIGRAM 1 (the default), BPE 2, WORD 3, CHAR 4.
    match model_type.unwrap_or(1) {
        2 => {}
        1 => {
            return Err(
                "a Unigram SentencePiece model (T5-style): only BPE ones (Llama, \
                        Mistral, Phi-3) are converted"
                    .into(),
            )
        }
        t => {
            return Err(format!(
                "SentencePiece model type {t}: only BPE (2) is converted"
            ))
        }
    }
    if tokens.is_empty() {
        return Err("no pieces".into());
    }
    if !byte_fallback {
        return Err(
            "a BPE SentencePiece model without byte_fallback: llama.cpp's SPM \
                    tokenizer and transformers' LlamaConverter assume byte fallback"
                .into(),
        );
    }
    let n = tokens.len();
    Ok(Vocab {
        model: "llama".into(),
        tokens,
        token_types: types,
        scores: Some(scores),
        unk: spec_id(unk, 0, n),
        bos: spec_id(bos, 1, n),
        eos: spec_id(eos, 2, n),
        pad: spec_id(pad, -1, n),
        add_space_prefix: (!add_dummy_prefix).then_some(false),
        ..Vocab::default()
    })
}

/// Append a protobuf varint.
fn put_varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// Append a varint field (`int32` negatives sign-extended to ten bytes, as protobuf does).
fn put_varint_field(num: u64, v: u64, out: &mut Vec<u8>) {
    put_varint(num << 3, out);
    put_varint(v, out);
}

/// Append a length-delimited field.
fn put_bytes_field(num: u64, body: &[u8], out: &mut Vec<u8>) {
    put_varint(num << 3 | 2, out);
    put_varint(body.len() as u64, out);
    out.extend_from_slice(body);
}

/// A trainer-spec id as protobuf's `int32` (none: -1, sign-extended).
fn spec_id_out(id: Option<u32>) -> u64 {
    id.map_or(-1i64, i64::from) as u64
}

impl Vocab {
    /// This SentencePiece vocabulary as a SentencePiece `tokenizer.model` (`ModelProto`,
    /// sentencepiece_model.proto) that [`Vocab::from_sentencepiece`] reads back as the same
    /// pieces, scores, types and ids, and that the sentencepiece library encodes as llama.cpp's
    /// SPM tokenizer does: a BPE model (`TrainerSpec.model_type` 2) with `byte_fallback`,
    /// `unk_id`/`bos_id`/`eos_id`/`pad_id` set, and Llama 2's normalizer (`identity`, no
    /// extra-whitespace removal, whitespace escaped to `▁`, the dummy prefix as
    /// `add_space_prefix` says). Refused when the format cannot say it: not a SentencePiece
    /// (`llama`) vocabulary, no scores or no UNK piece, or a BOS/EOS policy other than Meta's
    /// (its `generation.py` encodes with `bos=True, eos=False`; the file has no such flag).
    pub fn to_sentencepiece(&self) -> Result<Vec<u8>> {
        self.sentencepiece_bytes()
            .map_err(tok_err("tokenizer.model"))
    }

    fn sentencepiece_bytes(&self) -> Why<Vec<u8>> {
        if self.model != "llama" {
            return Err(format!(
                "a {:?} vocabulary is not SentencePiece (tokenizer.ggml.model \"llama\")",
                self.model
            ));
        }
        let scores = self
            .scores
            .as_deref()
            .filter(|s| s.len() == self.tokens.len())
            .ok_or("it has no score per token (SentencePiece BPE merges by score)")?;
        if self.token_types.len() != self.tokens.len() {
            return Err("it has no type per token".into());
        }
        if self.unk.is_none() {
            return Err("it has no UNK token (a SentencePiece model needs one)".into());
        }
        if self.add_bos == Some(false) || self.add_eos == Some(true) {
            return Err(format!(
                "it adds BOS {:?} / EOS {:?}: Meta's code adds BOS and no EOS, and tokenizer.model cannot say otherwise",
                self.add_bos, self.add_eos
            ));
        }
        let mut out = Vec::new();
        for (i, (t, (&score, &ty))) in self
            .tokens
            .iter()
            .zip(scores.iter().zip(&self.token_types))
            .enumerate()
        {
            if !score.is_finite() {
                return Err(format!("token {i} ({t:?}) has score {score}"));
            }
            // GGUF's token types are sentencepiece_model.proto's Type numbers
            if !(TOKEN_TYPE_NORMAL..=6).contains(&ty) {
                return Err(format!("token {i} ({t:?}) has type {ty}"));
            }
            // the unk_id piece is SentencePiece's UNKNOWN (a GGUF made by convert_hf_to_gguf.py
            // from transformers' files marks it control, as an added special token)
            let ty = if Some(i) == self.unk.map(|u| u as usize) {
                TOKEN_TYPE_UNKNOWN
            } else {
                ty
            };
            // sentencepiece's trainer scores its UNK and control pieces 0 and its encoder never
            // scores them; a GGUF vocabulary carries convert_hf_to_gguf.py's -1000 there
            let score = if matches!(ty, TOKEN_TYPE_UNKNOWN | TOKEN_TYPE_CONTROL) {
                0.0
            } else {
                score
            };
            let mut p = Vec::with_capacity(t.len() + 12);
            put_bytes_field(1, t.as_bytes(), &mut p);
            put_varint(2 << 3 | 5, &mut p);
            p.extend_from_slice(&score.to_le_bytes());
            if ty != TOKEN_TYPE_NORMAL {
                put_varint_field(3, ty as u64, &mut p);
            }
            put_bytes_field(1, &p, &mut out);
        }
        let mut trainer = Vec::new();
        put_varint_field(3, 2, &mut trainer); // model_type BPE
        put_varint_field(4, self.tokens.len() as u64, &mut trainer); // vocab_size
        put_varint_field(35, 1, &mut trainer); // byte_fallback
        put_varint_field(40, spec_id_out(self.unk), &mut trainer);
        put_varint_field(41, spec_id_out(self.bos), &mut trainer);
        put_varint_field(42, spec_id_out(self.eos), &mut trainer);
        put_varint_field(43, spec_id_out(self.pad), &mut trainer);
        put_bytes_field(2, &trainer, &mut out);
        let mut norm = Vec::new();
        put_bytes_field(1, b"identity", &mut norm);
        put_varint_field(
            3,
            u64::from(self.add_space_prefix != Some(false)),
            &mut norm,
        );
        put_varint_field(4, 0, &mut norm); // remove_extra_whitespaces
        put_varint_field(5, 1, &mut norm); // escape_whitespaces
        put_bytes_field(3, &norm, &mut out);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_field(num: u64, body: &[u8], out: &mut Vec<u8>) {
        put_varint(num << 3 | 2, out);
        put_varint(body.len() as u64, out);
        out.extend_from_slice(body);
    }

    fn piece(text: &str, score: f32, ty: u64) -> Vec<u8> {
        let mut p = Vec::new();
        bytes_field(1, text.as_bytes(), &mut p);
        put_varint(2 << 3 | 5, &mut p);
        p.extend_from_slice(&score.to_le_bytes());
        put_varint(3 << 3, &mut p);
        put_varint(ty, &mut p);
        p
    }

    fn model(pieces: &[(&str, f32, u64)], model_type: u64, pad: i64) -> Vec<u8> {
        let mut m = Vec::new();
        for &(t, s, ty) in pieces {
            bytes_field(1, &piece(t, s, ty), &mut m);
        }
        let mut spec = Vec::new();
        for (num, v) in [(3u64, model_type), (35, 1), (43, pad as u64)] {
            put_varint(num << 3, &mut spec);
            put_varint(v, &mut spec);
        }
        bytes_field(2, &spec, &mut m);
        m
    }

    #[test]
    fn reads_pieces_scores_types_and_ids() {
        let m = model(
            &[
                ("<unk>", 0.0, 2),
                ("<s>", 0.0, 3),
                ("</s>", 0.0, 3),
                ("<0x00>", 0.0, 6),
                ("▁a", -1.5, 1),
                ("<user>", 0.0, 4),
            ],
            2,
            -1,
        );
        let v = Vocab::from_sentencepiece(&m).unwrap();
        assert_eq!(v.model, "llama");
        assert_eq!(v.tokens, ["<unk>", "<s>", "</s>", "<0x00>", "▁a", "<user>"]);
        assert_eq!(v.token_types, [2, 3, 3, 6, 1, 1]);
        assert_eq!(
            v.scores.as_deref(),
            Some(&[0.0, 0.0, 0.0, 0.0, -1.5, 0.0][..])
        );
        assert_eq!(
            (v.unk, v.bos, v.eos, v.pad),
            (Some(0), Some(1), Some(2), None)
        );
        assert_eq!(v.add_space_prefix, None);
    }

    #[test]
    fn adopt_takes_scores_and_types_of_matching_pieces() {
        let sp =
            Vocab::from_sentencepiece(&model(&[("a", -1.0, 1), ("b", -2.0, 3)], 2, -1)).unwrap();
        let mut v = Vocab {
            model: "llama".into(),
            tokens: vec!["a".into(), "b".into(), "<extra>".into()],
            token_types: vec![1, 1, 3],
            scores: Some(vec![0.0; 3]),
            ..Vocab::default()
        };
        v.adopt_sentencepiece(&sp).unwrap();
        assert_eq!(v.scores.as_deref(), Some(&[-1.0, -2.0, -1000.0][..]));
        assert_eq!(v.token_types, [1, 3, 3]);
        v.tokens[1] = "c".into();
        assert!(v.adopt_sentencepiece(&sp).unwrap_err().contains("piece 1"));
        v.tokens.truncate(1);
        v.token_types.truncate(1);
        assert!(v.adopt_sentencepiece(&sp).is_err());
    }

    fn spm_vocab() -> Vocab {
        let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>"].map(String::from).to_vec();
        tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
        tokens.extend(["▁", "▁t", "he", "▁the", "<user>", "é"].map(String::from));
        let mut token_types = vec![2, 3, 3];
        token_types.extend([6; 256]);
        token_types.extend([1, 1, 1, 1, 4, 1]);
        let scores = (0..tokens.len()).map(|i| -(i as f32) / 7.0).collect();
        Vocab {
            model: "llama".into(),
            tokens,
            token_types,
            scores: Some(scores),
            unk: Some(0),
            bos: Some(1),
            eos: Some(2),
            ..Vocab::default()
        }
    }

    #[test]
    fn written_model_reads_back() {
        for add_space_prefix in [None, Some(false)] {
            for pad in [None, Some(2)] {
                let v = Vocab {
                    pad,
                    add_space_prefix,
                    ..spm_vocab()
                };
                let back = Vocab::from_sentencepiece(&v.to_sentencepiece().unwrap()).unwrap();
                let mut want = v.clone();
                // the reader gives a user-defined piece GGUF's normal type, as convert_hf_to_gguf.py
                want.token_types[259 + 4] = TOKEN_TYPE_NORMAL;
                // UNK and control pieces are written with sentencepiece's score 0
                want.scores.as_mut().unwrap()[..3].fill(0.0);
                assert_eq!(back.tokens, want.tokens);
                assert_eq!(back.token_types, want.token_types);
                assert_eq!(back.scores, want.scores);
                assert_eq!(
                    (
                        back.unk,
                        back.bos,
                        back.eos,
                        back.pad,
                        back.add_space_prefix
                    ),
                    (
                        want.unk,
                        want.bos,
                        want.eos,
                        want.pad,
                        want.add_space_prefix
                    )
                );
            }
        }
        for (what, v) in [
            (
                "gpt2",
                Vocab {
                    model: "gpt2".into(),
                    ..spm_vocab()
                },
            ),
            (
                "no scores",
                Vocab {
                    scores: None,
                    ..spm_vocab()
                },
            ),
            (
                "no unk",
                Vocab {
                    unk: None,
                    ..spm_vocab()
                },
            ),
            (
                "no bos added",
                Vocab {
                    add_bos: Some(false),
                    ..spm_vocab()
                },
            ),
            (
                "eos added",
                Vocab {
                    add_eos: Some(true),
                    ..spm_vocab()
                },
            ),
            ("nan", {
                let mut v = spm_vocab();
                v.scores.as_mut().unwrap()[5] = f32::NAN;
                v
            }),
            ("type 0", {
                let mut v = spm_vocab();
                v.token_types[5] = 0;
                v
            }),
        ] {
            assert!(v.to_sentencepiece().is_err(), "{what}");
        }
    }

    /// Every truncation and every single-byte corruption of a real model is an error or a
    /// vocabulary, never a panic; lengths past the buffer are errors.
    #[test]
    fn truncated_and_corrupted_models_never_panic() {
        let good = spm_vocab().to_sentencepiece().unwrap();
        for n in 0..good.len() {
            let _ = Vocab::from_sentencepiece(&good[..n]);
        }
        for i in 0..good.len() {
            for x in [0x00, 0x7f, 0x80, 0xff] {
                let mut b = good.clone();
                b[i] = x;
                let _ = Vocab::from_sentencepiece(&b);
            }
        }
        // the first piece's length claims more than the file holds
        let mut over = good.clone();
        over[1] = 0xff;
        over.insert(2, 0x7f);
        assert!(Vocab::from_sentencepiece(&over).is_err());
    }

    #[test]
    fn hostile_models_are_errors() {
        let good = model(&[("a", 0.0, 1)], 2, -1);
        assert!(Vocab::from_sentencepiece(&good).is_ok());
        let unigram = model(&[("a", 0.0, 1)], 1, -1);
        let nan = model(&[("a", f32::NAN, 1)], 2, -1);
        let bad_type = model(&[("a", 0.0, 9)], 2, -1);
        let empty = model(&[], 2, -1);
        let mut truncated = good.clone();
        truncated.truncate(good.len() - 3);
        let mut long_varint = vec![0x08];
        long_varint.extend([0xff; 11]);
        let mut over = Vec::new();
        put_varint(1 << 3 | 2, &mut over);
        put_varint(u64::MAX, &mut over);
        for (what, bytes) in [
            ("unigram", unigram),
            ("nan", nan),
            ("bad type", bad_type),
            ("empty", empty),
            ("truncated", truncated),
            ("long varint", long_varint),
            ("huge length", over),
            ("wire type 3", vec![0x0b]),
        ] {
            let err = Vocab::from_sentencepiece(&bytes).expect_err(what);
            assert!(matches!(err, Error::Tokenizer { .. }), "{what}: {err}");
        }
    }
}
