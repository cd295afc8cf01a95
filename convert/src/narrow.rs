//! Whether writing tensors in another float dtype changes their values: every value is
//! decoded, rounded to the output dtype as the writers round it ([`qforge_codecs::encode_float`]:
//! `half`'s round-to-nearest-even) and compared bit for bit with the value it came from. A
//! narrowing that changes any value changes what the model computes
//! ([`qforge_stage::notes::NoteKind::ChangesMath`]); an exact one (F32 tensors that hold only
//! BF16-representable values, as a BF16 → F32 → BF16 round trip has) costs nothing.

use rayon::prelude::*;

use crate::checkpoint::{Checkpoint, TensorEntry};
use crate::error::{Error, Result};
use qforge_codecs::narrow::{count, may_change, Changed};
use qforge_codecs::DType;
use qforge_stage::notes::Note;

/// Values decoded per chunk (each rayon worker holds one chunk of f32s).
const CHUNK_VALUES: usize = 1 << 20;

/// What writing `t` as `to` changes, streamed a chunk at a time (no whole-tensor f32 copy).
pub fn changed_values(ckpt: &Checkpoint, t: &TensorEntry, to: DType) -> Result<Changed> {
    if !may_change(t.dtype, to) {
        return Ok(Changed::default());
    }
    let src = ckpt.bytes(t)?;
    let codec = |source| Error::Codec {
        path: ckpt.path.clone(),
        tensor: t.name.clone(),
        source,
    };
    let c = if t.dtype == DType::F64 {
        let values = src
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")));
        Ok(count(values, to))
    } else {
        let block = t.dtype.block_size() as usize;
        let block_bytes = t.dtype.block_bytes() as usize;
        let blocks_per_chunk = (CHUNK_VALUES / block).max(1);
        src.par_chunks(blocks_per_chunk * block_bytes)
            .map_init(Vec::new, |vals: &mut Vec<f32>, chunk| {
                vals.resize(chunk.len() / block_bytes * block, 0.0);
                qforge_codecs::decode_to_f32(t.dtype, chunk, vals).map_err(codec)?;
                Ok(count(vals.iter().map(|&v| f64::from(v)), to))
            })
            .try_reduce(Changed::default, |a, b| Ok(a + b))
    };
    drop(src);
    ckpt.release(t);
    c
}

/// The [`qforge_stage::notes::NoteKind::ChangesMath`] note for writing each `(tensor, dtype)` of
/// `plan` (a tensor listed twice, as a tied embedding's copy, is counted once), or `None` when
/// every value is kept exactly. Reads every tensor whose dtype changes; nothing is written.
pub fn narrowing_note<'a>(
    ckpt: &Checkpoint,
    plan: impl IntoIterator<Item = (&'a TensorEntry, DType)>,
) -> Result<Option<Note>> {
    let mut seen = std::collections::HashSet::new();
    let mut total = Changed::default();
    let mut tensors = 0usize;
    let mut worst: Option<(&TensorEntry, DType, u64)> = None;
    let mut targets = std::collections::BTreeSet::new();
    for (t, to) in plan {
        if !may_change(t.dtype, to) || !seen.insert((t.name.as_str(), to)) {
            continue;
        }
        let c = changed_values(ckpt, t, to)?;
        if c.values == 0 {
            continue;
        }
        tensors += 1;
        targets.insert(to.to_string());
        total = total + c;
        if worst.is_none_or(|(_, _, n)| c.values > n) {
            worst = Some((t, to, c.values));
        }
    }
    let Some((w, wto, wn)) = worst else {
        return Ok(None);
    };
    let mut extremes = Vec::new();
    if total.overflow > 0 {
        extremes.push(format!("{} overflow to ±inf", total.overflow));
    }
    if total.underflow > 0 {
        extremes.push(format!("{} flush to zero", total.underflow));
    }
    let extremes = if extremes.is_empty() {
        String::new()
    } else {
        format!(", {}", extremes.join(", "))
    };
    let what = format!(
        "writing {} changes {} value(s) in {tensors} tensor(s) that the output dtype cannot hold exactly{extremes}; most in {} ({} → {wto}: {wn} of {})",
        targets.into_iter().collect::<Vec<_>>().join("/"),
        total.values,
        w.name,
        w.dtype,
        w.numel()
    );
    Ok(Some(Note::changes_math(
        what,
        "omit --dtype to keep each tensor's source type, or choose a dtype that holds the values (f32)",
    )))
}
