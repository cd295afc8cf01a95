//! Whether writing tensors in another float dtype changes their values: every value is
//! decoded, rounded to the output dtype as the writers round it ([`crate::export::encode_float`]:
//! `half`'s round-to-nearest-even) and compared bit for bit with the value it came from. A
//! narrowing that changes any value changes what the model computes
//! ([`crate::notes::NoteKind::ChangesMath`]); an exact one (F32 tensors that hold only
//! BF16-representable values, as a BF16 → F32 → BF16 round trip has) costs nothing.

use rayon::prelude::*;

use crate::checkpoint::{Checkpoint, TensorEntry};
use crate::error::{Error, Result};
use crate::notes::Note;
use qforge_codecs::DType;

/// Values decoded per chunk (each rayon worker holds one chunk of f32s).
const CHUNK_VALUES: usize = 1 << 20;

/// What rounding one tensor (or all of them) to the output dtype changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changed {
    /// Values that do not come back bit for bit (a NaN that stays a NaN counts as kept).
    pub values: u64,
    /// Finite values that become ±inf.
    pub overflow: u64,
    /// Nonzero values that become ±0.
    pub underflow: u64,
}

impl Changed {
    fn add(self, o: Changed) -> Changed {
        Changed {
            values: self.values + o.values,
            overflow: self.overflow + o.overflow,
            underflow: self.underflow + o.underflow,
        }
    }
}

/// Whether writing a `from` tensor as `to` can change a value at all: F32 holds every value a
/// float or block type decodes to (the decode is defined in f32), except F64's.
fn may_change(from: DType, to: DType) -> bool {
    from != to && (to != DType::F32 || from == DType::F64)
}

/// `v` after a round trip through `to` as the writers encode it.
fn round_trip(v: f64, to: DType) -> f64 {
    let v = v as f32;
    f64::from(match to {
        DType::F16 => half::f16::from_f32(v).to_f32(),
        DType::BF16 => half::bf16::from_f32(v).to_f32(),
        _ => v,
    })
}

fn count(values: impl Iterator<Item = f64>, to: DType) -> Changed {
    let mut c = Changed::default();
    for v in values {
        let r = round_trip(v, to);
        if r.to_bits() == v.to_bits() || (r.is_nan() && v.is_nan()) {
            continue;
        }
        c.values += 1;
        c.overflow += u64::from(v.is_finite() && r.is_infinite());
        c.underflow += u64::from(v != 0.0 && r == 0.0);
    }
    c
}

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
            .try_reduce(Changed::default, |a, b| Ok(a.add(b)))
    };
    drop(src);
    ckpt.release(t);
    c
}

/// The [`crate::notes::NoteKind::ChangesMath`] note for writing each `(tensor, dtype)` of
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
        total = total.add(c);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_count_only_changed_values() {
        let bf = |v: f32| f64::from(half::bf16::from_f32(v).to_f32());
        // BF16-representable F32 values go to BF16 exactly, NaN and -0 included
        let exact = [1.0f32, -0.0, 0.5, bf(0.1) as f32, f32::NAN, f32::INFINITY];
        let c = count(exact.iter().map(|&v| f64::from(v)), DType::BF16);
        assert_eq!(c, Changed::default());
        let c = count([0.1f64, 1.0 + 1.0 / 256.0].into_iter(), DType::BF16);
        assert_eq!(c.values, 2);
        // F16: 1e5 overflows, 1e-9 flushes to zero, 1.0 stays
        let c = count(
            [1e5f32, 1e-9, 1.0].iter().map(|&v| f64::from(v)),
            DType::F16,
        );
        assert_eq!(
            c,
            Changed {
                values: 2,
                overflow: 1,
                underflow: 1
            }
        );
        assert!(!may_change(DType::BF16, DType::F32));
        assert!(!may_change(DType::Q4_0, DType::F32));
        assert!(may_change(DType::F64, DType::F32));
        assert!(may_change(DType::BF16, DType::F16));
    }
}
