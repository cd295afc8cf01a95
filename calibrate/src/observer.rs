//! Static per-tensor FP8 input-activation scales.
//!
//! [`ObserverKind::MinMax`] is llm-compressor 0.14's `static_minmax` observer (the one
//! compressed-tensors' FP8 preset names for `input_activations`): the global minimum and maximum
//! over every calibration token, each extended to include 0, then compressed-tensors
//! `calculate_qparams`: `scale = max(|min|, |max|) / 448` (`bit_range/2` with E4M3's range
//! `[−448, 448]`), computed in the activations' dtype (`f32` here), a zero scale replaced by the
//! dtype's epsilon. llm-compressor calibrates with quantization disabled, so the activations
//! are the unquantized model's, and so are ours.
//!
//! [`ObserverKind::Percentile`]: per calibration sample, the `p`-th percentile of `|x|` over
//! all of that sample's values (nearest rank); the scale uses the largest of those.

/// FP8 E4M3's largest finite value.
pub const FP8_MAX: f32 = 448.0;

/// Which statistic of the activations sets the scale.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ObserverKind {
    /// Global min/max (llm-compressor `static_minmax`).
    MinMax,
    /// Largest per-sample `p`-th percentile of |x| (`0 < p ≤ 100`).
    Percentile(f64),
}

use qforge_verify::Real;

/// Running statistics of one linear's input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observer {
    kind: ObserverKind,
    /// Running minimum (min-max) — starts at 0 (the range always includes 0). `f64` holds the
    /// `f32` forward's values exactly.
    pub min: f64,
    /// Running maximum (min-max), or the largest per-sample percentile.
    pub max: f64,
    /// Values observed.
    pub count: u64,
}

impl Observer {
    /// An observer with no data.
    pub fn new(kind: ObserverKind) -> Self {
        Observer {
            kind,
            min: 0.0,
            max: 0.0,
            count: 0,
        }
    }

    /// Observe one sample's activations (`x`, all of its tokens).
    pub fn observe<T: Real>(&mut self, x: &[T]) {
        self.count += x.len() as u64;
        match self.kind {
            ObserverKind::MinMax => {
                for &v in x {
                    self.min = self.min.min(v.to_f64());
                    self.max = self.max.max(v.to_f64());
                }
            }
            ObserverKind::Percentile(p) => {
                if x.is_empty() {
                    return;
                }
                let mut a: Vec<f64> = x.iter().map(|v| v.to_f64().abs()).collect();
                let rank = ((p / 100.0) * a.len() as f64).ceil() as usize;
                let k = rank.clamp(1, a.len()) - 1;
                let (_, v, _) = a.select_nth_unstable_by(k, f64::total_cmp);
                self.max = self.max.max(*v);
            }
        }
    }

    /// The largest magnitude the scale must cover.
    pub fn amax(&self) -> f64 {
        self.min.abs().max(self.max.abs())
    }

    /// `amax / 448` computed in `f32` (the `f32` forward's values, as llm-compressor computes
    /// it in the activations' dtype), or `f32::EPSILON` for an all-zero input.
    #[allow(clippy::cast_possible_truncation)] // the f32 forward's amax is an f32 value
    pub fn scale(&self) -> f32 {
        nonzero((self.amax() as f32) / FP8_MAX)
    }

    /// `amax / 448` computed in `f64` and rounded once to `f32` (the `f64` forward), or
    /// `f32::EPSILON` for an all-zero input.
    #[allow(clippy::cast_possible_truncation)] // the one rounding to the stored F32 scale
    pub fn scale_f64(&self) -> f32 {
        nonzero((self.amax() / f64::from(FP8_MAX)) as f32)
    }
}

fn nonzero(s: f32) -> f32 {
    if s == 0.0 {
        f32::EPSILON
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minmax_is_global_and_includes_zero() {
        let mut o = Observer::new(ObserverKind::MinMax);
        o.observe(&[1.0, 2.0]);
        o.observe(&[-3.5, 0.5]);
        assert_eq!(o.amax(), 3.5);
        assert_eq!(o.scale(), 3.5 / 448.0);
        let mut z = Observer::new(ObserverKind::MinMax);
        z.observe(&[0.0; 4]);
        assert_eq!(z.scale(), f32::EPSILON);
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let mut o = Observer::new(ObserverKind::Percentile(50.0));
        o.observe(&[-4.0, 1.0, 2.0, 3.0]);
        assert_eq!(o.amax(), 2.0);
        o.observe(&[10.0, 10.0, -1.0, 0.0]);
        assert_eq!(o.amax(), 2.0);
        o.observe(&[10.0, 10.0, -10.0, 0.0]);
        assert_eq!(o.amax(), 10.0);
    }
}
