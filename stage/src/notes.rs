//! What a conversion or quantization tells the user about its output, classified by what it
//! costs: [`Note`]. A note that says the output computes something other than the source
//! ([`NoteKind::ChangesMath`]) stops the conversion before anything is written unless the caller
//! allowed it ([`gate`]); an allowed one is recorded in the output ([`record`]).

use serde::Serialize;
use serde_json::{json, Value};

use crate::error::{Error, Result};

/// What a note costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NoteKind {
    /// Nothing the output computes or says about the model differs from the source (a layout
    /// change, a copy, a buffer recomputed from the config, an exact decode).
    Lossless,
    /// The output computes the same thing but no longer says something the source said (a
    /// context length, the exact RoPE parameters behind equivalent frequencies).
    MetadataLost,
    /// The output computes something else than the source (RoPE parameters the target cannot
    /// express, a tokenizer dropped): refused unless allowed.
    ChangesMath,
    /// A change the command was asked to make (quantization, `--bad-weights clamp`/`skip`,
    /// llama-quantize's type fallbacks): never refused.
    Requested,
}

/// One thing the user should know about an output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Note {
    /// What it costs.
    pub kind: NoteKind,
    /// What happened (or would happen).
    pub what: String,
    /// How to keep what is lost, when there is a way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub how_to_keep: Option<String>,
}

impl Note {
    /// A [`NoteKind::Lossless`] note.
    pub fn lossless(what: impl Into<String>) -> Self {
        Note {
            kind: NoteKind::Lossless,
            what: what.into(),
            how_to_keep: None,
        }
    }

    /// A [`NoteKind::MetadataLost`] note.
    pub fn metadata_lost(what: impl Into<String>, how_to_keep: impl Into<String>) -> Self {
        Note {
            kind: NoteKind::MetadataLost,
            what: what.into(),
            how_to_keep: Some(how_to_keep.into()),
        }
    }

    /// A [`NoteKind::ChangesMath`] note.
    pub fn changes_math(what: impl Into<String>, how_to_keep: impl Into<String>) -> Self {
        Note {
            kind: NoteKind::ChangesMath,
            what: what.into(),
            how_to_keep: Some(how_to_keep.into()),
        }
    }

    /// A [`NoteKind::Requested`] note.
    pub fn requested(what: impl Into<String>) -> Self {
        Note {
            kind: NoteKind::Requested,
            what: what.into(),
            how_to_keep: None,
        }
    }

    /// The label a report prints before the note.
    pub fn label(&self) -> &'static str {
        match self.kind {
            NoteKind::Lossless | NoteKind::Requested => "note",
            NoteKind::MetadataLost => "metadata lost",
            NoteKind::ChangesMath => "lossy (allowed)",
        }
    }
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.what)?;
        if let Some(how) = &self.how_to_keep {
            write!(f, " (to keep it: {how})")?;
        }
        Ok(())
    }
}

/// The notes of a checkpoint's reading (merged shards, recomputed buffers skipped), which cost
/// nothing.
pub fn from_reading(notes: &[String]) -> Vec<Note> {
    notes.iter().map(Note::lossless).collect()
}

/// Stop before writing when a note changes the math and that was not allowed.
pub fn gate(notes: &[Note], allow_lossy: bool) -> Result<()> {
    if allow_lossy || !notes.iter().any(|n| n.kind == NoteKind::ChangesMath) {
        return Ok(());
    }
    Err(Error::Lossy {
        changes: lossy_lines(notes),
    })
}

/// The manifest fields recording what an output lost: `lossy` (the changes to the math that
/// were allowed) and `metadata_lost`, each a list of notes; empty when nothing was lost.
pub fn record(notes: &[Note]) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    for (key, kind) in [
        ("lossy", NoteKind::ChangesMath),
        ("metadata_lost", NoteKind::MetadataLost),
    ] {
        let list: Vec<Value> = notes
            .iter()
            .filter(|n| n.kind == kind)
            .map(|n| json!(n))
            .collect();
        if !list.is_empty() {
            m.insert(key.into(), Value::Array(list));
        }
    }
    m
}

/// The allowed changes to the math, one line each (a GGUF output records them as
/// [`LOSSY_KEY`]).
pub fn lossy_lines(notes: &[Note]) -> Vec<String> {
    notes
        .iter()
        .filter(|n| n.kind == NoteKind::ChangesMath)
        .map(ToString::to_string)
        .collect()
}

/// GGUF metadata key listing the changes to the math a conversion was allowed to make.
pub const LOSSY_KEY: &str = "qforge.lossy";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changes_to_the_math_are_refused_and_recorded() {
        let notes = vec![
            Note::lossless("copied"),
            Note::metadata_lost("no context length", "keep the config"),
            Note::requested("clamped"),
        ];
        assert!(gate(&notes, false).is_ok());
        let mut lossy = notes.clone();
        lossy.push(Note::changes_math("factor 32 becomes 8", "use --to hf"));
        let e = gate(&lossy, false).unwrap_err().to_string();
        assert!(
            e.contains("factor 32 becomes 8 (to keep it: use --to hf)"),
            "{e}"
        );
        assert!(e.contains("--allow-lossy"), "{e}");
        assert!(gate(&lossy, true).is_ok());
        let r = record(&lossy);
        assert_eq!(r["lossy"][0]["what"], "factor 32 becomes 8");
        assert_eq!(r["metadata_lost"][0]["how_to_keep"], "keep the config");
        assert!(record(&notes[..1]).is_empty());
        assert_eq!(lossy_lines(&lossy).len(), 1);
    }
}
