//! Deterministic test data shared by the kernel tests.
#![allow(dead_code)]

/// splitmix64: a tiny deterministic generator (no dependency, same stream everywhere).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    /// Roughly normal (sum of 4 uniforms), times `scale`.
    pub fn normalish(&mut self, scale: f32) -> f32 {
        (self.uniform() + self.uniform() + self.uniform() + self.uniform()) * 0.5 * scale
    }
    /// Random E4M3 codes, never NaN (0x7F / 0xFF).
    pub fn fp8_codes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            for b in self.next_u64().to_le_bytes() {
                if out.len() < len && b & 0x7F != 0x7F {
                    out.push(b);
                }
            }
        }
        out
    }
}

/// BF16 bits of `x` (RNE).
pub fn bf16(x: f32) -> u16 {
    qforge_codecs::float::f32_to_bf16_bits(x)
}

/// Activations `[m, k]` as BF16 bits: rows of different magnitudes, a few outliers, one row
/// (index 1 when m > 1) all zero.
pub fn activations(rng: &mut Rng, m: usize, k: usize) -> Vec<u16> {
    let mut x = vec![0u16; m * k];
    for r in 0..m {
        let mag = [0.02f32, 1.0, 3.0, 40.0][r % 4];
        for c in 0..k {
            let v = if m > 1 && r == 1 {
                0.0
            } else if (r + c) % 97 == 0 {
                rng.normalish(mag * 30.0)
            } else {
                rng.normalish(mag)
            };
            x[r * k + c] = bf16(v);
        }
    }
    x
}

/// Independent f64 FP8 reference: a plain triple loop over decoded codes.
pub fn fp8_ref_f64(
    xq: &[u8],
    xs: &[f32],
    wq: &[u8],
    ws: &[f32],
    m: usize,
    n: usize,
    k: usize,
) -> (Vec<f64>, Vec<f64>) {
    use qforge_codecs::float::f8_e4m3_to_f32;
    let mut y = vec![0f64; m * n];
    let mut abs = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let (mut s, mut a) = (0f64, 0f64);
            for c in 0..k {
                let p = f64::from(f8_e4m3_to_f32(xq[i * k + c]))
                    * f64::from(f8_e4m3_to_f32(wq[j * k + c]));
                s += p;
                a += p.abs();
            }
            let sc = f64::from(xs[i]) * f64::from(ws[j]);
            y[i * n + j] = s * sc;
            abs[i * n + j] = a * sc;
        }
    }
    (y, abs)
}
