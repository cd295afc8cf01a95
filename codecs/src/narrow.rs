//! What writing values in a narrower float dtype changes: each value rounded to the output
//! dtype as the writers round it ([`crate::encode_float`]: `half`'s round-to-nearest-even) and
//! compared bit for bit with the value it came from.

use crate::DType;

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

impl std::ops::Add for Changed {
    type Output = Changed;

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
pub fn may_change(from: DType, to: DType) -> bool {
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

/// How many of `values` change on a round trip through `to` (a NaN that stays a NaN is kept).
pub fn count(values: impl Iterator<Item = f64>, to: DType) -> Changed {
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
