//! What quantization does with NaN, ±inf and absurdly large weights.
//!
//! A non-finite or huge weight makes its row's (or group's, or block's) scale meaningless: the
//! quantized tensor comes out NaN or all zeros, silently. So by default every tensor that is
//! quantized is checked row by row as it is encoded, and the first bad value stops the run with
//! an error naming the file, the tensor, the row and the column. The user may opt in to a
//! policy instead ([`WeightPolicy`]): clamp the bad values, or leave the tensors that hold any
//! unquantized. Both policies scan the tensors first (one extra read of each quantized tensor)
//! so that the output plan and the report know which tensors are affected.
//!
//! Tensors that are copied rather than quantized (norms, ignored modules) are not checked: a
//! copy keeps whatever the input holds.

use std::fmt;
use std::str::FromStr;

use qforge_codecs::DType;

use crate::dequant::WeightRead;
use qforge_convert::checkpoint::Checkpoint;
use qforge_convert::names::{Part, TensorId};
use qforge_convert::Result;

/// F16's largest finite value: the default limit on a weight's magnitude. No trained Llama
/// weight comes near it, and a GGUF block scale (stored as F16) cannot represent a larger one.
pub const DEFAULT_MAX_ABS: f32 = 65504.0;

/// The policy for bad weights in tensors being quantized.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WeightPolicy {
    /// Stop at the first bad value (the default).
    #[default]
    Error,
    /// Replace NaN by 0 and clamp ±inf and values beyond the limit to ±limit, then quantize.
    Clamp,
    /// Leave every tensor that holds a bad value unquantized (in the output's float dtype).
    Skip,
}

impl FromStr for WeightPolicy {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "error" => Ok(WeightPolicy::Error),
            "clamp" => Ok(WeightPolicy::Clamp),
            "skip" => Ok(WeightPolicy::Skip),
            _ => Err(format!("unknown policy {s:?} (use error, clamp or skip)")),
        }
    }
}

impl fmt::Display for WeightPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WeightPolicy::Error => "error",
            WeightPolicy::Clamp => "clamp",
            WeightPolicy::Skip => "skip",
        })
    }
}

/// Bad-weight handling for one quantization run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Numerics {
    /// What to do with bad values.
    pub policy: WeightPolicy,
    /// Largest magnitude accepted (finite, positive).
    pub max_abs: f32,
}

impl Default for Numerics {
    fn default() -> Self {
        Numerics {
            policy: WeightPolicy::Error,
            max_abs: DEFAULT_MAX_ABS,
        }
    }
}

/// What a scan of one tensor found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Finding {
    /// Bad values in the tensor.
    pub count: u64,
    /// The first one in row-major order of the source tensor: (row, column, value).
    pub first: (u64, u64, f32),
}

impl Numerics {
    /// Whether `v` is bad (NaN, ±inf or beyond the limit).
    #[inline]
    fn bad(self, v: f32) -> bool {
        v.is_nan() || v.abs() > self.max_abs
    }

    /// The error for the bad value `v` at (`row`, `col`).
    fn error(self, row: u64, col: u64, v: f32) -> qforge_codecs::Error {
        if v.is_finite() {
            qforge_codecs::Error::OutOfRange {
                row,
                col,
                value: v,
                limit: self.max_abs,
            }
        } else {
            qforge_codecs::Error::NonFinite { row, col }
        }
    }

    /// Apply the policy to one decoded row about to be quantized (row number 0 in errors: the
    /// callers that know it put it in). Clamps in place under [`WeightPolicy::Clamp`]; under
    /// the other policies the first bad value is an error.
    pub fn row(&self, row: &mut [f32]) -> std::result::Result<(), qforge_codecs::Error> {
        // The common case, no bad value, is one branch-free pass that vectorizes: v is bad
        // (NaN, or |v| > max_abs) exactly when its bit pattern with the sign cleared is above
        // the limit's, for any limit ≥ 0 (NaNs sort above inf above every finite value; a NaN
        // or negative limit takes the slow path).
        let m = row
            .iter()
            .fold(0u32, |m, v| m.max(v.to_bits() & 0x7FFF_FFFF));
        if self.max_abs >= 0.0 && m <= self.max_abs.abs().to_bits() {
            return Ok(());
        }
        let Some(c) = row.iter().position(|&v| self.bad(v)) else {
            return Ok(());
        };
        if self.policy != WeightPolicy::Clamp {
            return Err(self.error(0, c as u64, row[c]));
        }
        for v in &mut row[c..] {
            if v.is_nan() {
                *v = 0.0;
            } else if self.bad(*v) {
                *v = self.max_abs.copysign(*v);
            }
        }
        Ok(())
    }

    /// [`Numerics::row`] over every row of a row-major `[rows, k]` tensor, with the row in the
    /// error.
    pub fn rows(
        &self,
        values: &mut [f32],
        k: usize,
    ) -> std::result::Result<(), qforge_codecs::Error> {
        for (r, row) in values.chunks_mut(k.max(1)).enumerate() {
            self.row(row).map_err(|e| with_row(e, r as u64))?;
        }
        Ok(())
    }

    /// Count the bad values of a weight (source row order, no RoPE permutation). Reads the
    /// whole tensor once; used by the opt-in policies before writing.
    pub fn scan(&self, ckpt: &Checkpoint, id: TensorId) -> Result<Option<Finding>> {
        let Some(t) = ckpt.part(id, Part::Weight) else {
            return Ok(None);
        };
        let per_row: Vec<(u64, Option<(u64, f32)>)> =
            if t.shape.len() == 2 && matches!(t.dtype, DType::BF16 | DType::F16 | DType::F32) {
                let dtype = t.dtype;
                crate::dequant::Weights(ckpt).par_source_rows(
                    t,
                    None,
                    &t.name,
                    None,
                    |bytes, buf, _| {
                        qforge_codecs::decode_to_f32(dtype, bytes, buf)?;
                        Ok(self.count(buf))
                    },
                )?
            } else {
                let v = ckpt.weight_f32(id)?;
                let k = t.shape.last().copied().unwrap_or(1).max(1) as usize;
                v.chunks(k).map(|r| self.count(r)).collect()
            };
        let count = per_row.iter().map(|(n, _)| n).sum();
        Ok(per_row
            .iter()
            .enumerate()
            .find_map(|(r, (_, f))| f.map(|(c, v)| (r as u64, c, v)))
            .map(|first| Finding { count, first }))
    }

    fn count(self, row: &[f32]) -> (u64, Option<(u64, f32)>) {
        let mut first = None;
        let mut n = 0;
        for (c, &v) in row.iter().enumerate() {
            if self.bad(v) {
                n += 1;
                first.get_or_insert((c as u64, v));
            }
        }
        (n, first)
    }

    /// A note for the report about a tensor the policy acted on.
    pub fn note(&self, tensor: &str, f: &Finding) -> String {
        let (r, c, v) = f.first;
        let what = match self.policy {
            WeightPolicy::Skip => "left unquantized",
            _ => "clamped",
        };
        format!(
            "{tensor}: {} bad value(s) (NaN, inf or |w| > {:e}; first {v:e} at row {r}, column \
             {c}): {what} (--bad-weights {})",
            f.count, self.max_abs, self.policy
        )
    }
}

/// `e` with its row set to `row` (the codecs report row 0 for a single row).
pub fn with_row(e: qforge_codecs::Error, row: u64) -> qforge_codecs::Error {
    match e {
        qforge_codecs::Error::NonFinite { col, .. } => qforge_codecs::Error::NonFinite { row, col },
        qforge_codecs::Error::OutOfRange {
            col, value, limit, ..
        } => qforge_codecs::Error::OutOfRange {
            row,
            col,
            value,
            limit,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_policy_names_the_first_bad_value() {
        let n = Numerics::default();
        let mut v = vec![1.0, 2.0, 3.0, 70000.0, f32::NAN, 1.0];
        assert_eq!(
            n.rows(&mut v, 3),
            Err(qforge_codecs::Error::OutOfRange {
                row: 1,
                col: 0,
                value: 70000.0,
                limit: DEFAULT_MAX_ABS
            })
        );
        let mut v = vec![1.0, f32::NEG_INFINITY];
        assert_eq!(
            n.rows(&mut v, 2),
            Err(qforge_codecs::Error::NonFinite { row: 0, col: 1 })
        );
        let mut ok = vec![65504.0, -65504.0, 0.0];
        assert_eq!(n.rows(&mut ok, 3), Ok(()));
    }

    #[test]
    fn clamp_policy_replaces_bad_values() {
        let n = Numerics {
            policy: WeightPolicy::Clamp,
            max_abs: 100.0,
        };
        let mut v = vec![f32::NAN, f32::INFINITY, -1e9, 5.0, -100.0];
        n.rows(&mut v, 5).unwrap();
        assert_eq!(v, vec![0.0, 100.0, -100.0, 5.0, -100.0]);
    }

    /// The vectorized fast path of `row` reports exactly what a per-value `bad` scan finds,
    /// at the limit's boundary and for unusual limits (0, −0, inf, negative, NaN).
    #[test]
    fn row_fast_path_agrees_with_per_value_scan() {
        let vals = [
            0.0,
            -0.0,
            1.0,
            -100.0,
            100.0,
            f32::from_bits(100f32.to_bits() + 1),
            -f32::from_bits(100f32.to_bits() + 1),
            f32::MAX,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7F80_0001),
            1e-45,
        ];
        for max_abs in [100.0, 0.0, -0.0, f32::INFINITY, -1.0, f32::NAN] {
            let n = Numerics {
                policy: WeightPolicy::Error,
                max_abs,
            };
            for &a in &vals {
                for &b in &vals {
                    let mut row = vec![0.5, a, b];
                    let want = row.iter().position(|&v| n.bad(v));
                    let got = n.row(&mut row).err();
                    assert_eq!(got.is_some(), want.is_some(), "{max_abs} {a} {b}");
                    if let Some(c) = want {
                        assert_eq!(got, Some(n.error(0, c as u64, row[c])));
                    }
                }
            }
        }
    }
}
