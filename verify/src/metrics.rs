//! Metrics over logits, as llama-perplexity computes them (tools/perplexity/perplexity.cpp):
//! per-token NLL from a log-softmax with an `f64` sum, PPL `exp(mean NLL)` and its ± from the
//! NLL's sample variance; KL divergence of the quantized model's distribution from the base's.

/// NLL of token `tok` under `logits`: `max + ln Σ exp(l − max) − l[tok]` (max in `f32`, the
/// exponentials summed in `f64`), as perplexity.cpp's `log_softmax`.
pub fn log_softmax_nll(logits: &[f32], tok: usize) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|l| f64::from((l - max).exp())).sum();
    -(f64::from(logits[tok] - max) - sum.ln())
}

/// `KL(P_base ‖ P_quant) = Σ p_b (log p_b − log p_q)` for one position, in `f64`.
pub fn kld_row(base: &[f32], quant: &[f32]) -> f64 {
    let lse = |l: &[f32]| {
        let m = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let s: f64 = l.iter().map(|v| (f64::from(*v) - f64::from(m)).exp()).sum();
        f64::from(m) + s.ln()
    };
    let (zb, zq) = (lse(base), lse(quant));
    base.iter()
        .zip(quant)
        .map(|(b, q)| {
            let lb = f64::from(*b) - zb;
            let lq = f64::from(*q) - zq;
            lb.exp() * (lb - lq)
        })
        .sum::<f64>()
        .max(0.0)
}

/// Index of the largest logit (the first on ties).
pub fn top1(logits: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in logits.iter().enumerate() {
        if *v > logits[best] {
            best = i;
        }
    }
    best
}

/// Linearly interpolated percentile (`fraction` in `[0, 1]`) of sorted values, as
/// perplexity.cpp's `percentile` helper for the KLD statistics.
pub fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    match sorted.len() {
        0 => 0.0,
        1 => sorted[0],
        n => {
            let p = fraction * (n - 1) as f64;
            let i = p.floor() as usize;
            let f = p - i as f64;
            if i + 1 >= n {
                sorted[n - 1]
            } else {
                (1.0 - f) * sorted[i] + f * sorted[i + 1]
            }
        }
    }
}

/// Running NLL sums in scored order.
#[derive(Debug, Clone, Default)]
pub struct Perplexity {
    /// Σ NLL
    pub nll: f64,
    /// Σ NLL²
    pub nll2: f64,
    /// scored tokens
    pub count: usize,
}

impl Perplexity {
    /// Add one chunk's NLLs (in order).
    pub fn add(&mut self, nll: &[f64]) {
        for v in nll {
            self.nll += v;
            self.nll2 += v * v;
        }
        self.count += nll.len();
    }

    /// Mean NLL.
    pub fn mean(&self) -> f64 {
        self.nll / self.count.max(1) as f64
    }

    /// `exp(mean NLL)`.
    pub fn ppl(&self) -> f64 {
        self.mean().exp()
    }

    /// perplexity.cpp's final `±`: `sqrt((Σv²/n − mean²)/(n−1)) · PPL` (0 when the variance
    /// estimate is not positive).
    pub fn stderr(&self) -> f64 {
        if self.count < 2 {
            return 0.0;
        }
        let n = self.count as f64;
        let mean = self.nll / n;
        let var = self.nll2 / n - mean * mean;
        if var > 0.0 {
            (var / (n - 1.0)).sqrt() * mean.exp()
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nll_and_kld_match_f64() {
        let a: Vec<f32> = (0..50).map(|i| ((i * 7 % 13) as f32) * 0.9 - 3.0).collect();
        let b: Vec<f32> = a
            .iter()
            .enumerate()
            .map(|(i, v)| v + (i % 3) as f32 * 0.1)
            .collect();
        let lse = |l: &[f32]| l.iter().map(|v| f64::from(*v).exp()).sum::<f64>().ln();
        let nll = lse(&a) - f64::from(a[7]);
        assert!((log_softmax_nll(&a, 7) - nll).abs() < 1e-6);
        let (za, zb) = (lse(&a), lse(&b));
        let kl: f64 = a
            .iter()
            .zip(&b)
            .map(|(x, y)| {
                let p = f64::from(*x) - za;
                p.exp() * (p - (f64::from(*y) - zb))
            })
            .sum();
        assert!((kld_row(&a, &b) - kl).abs() < 1e-12);
        assert_eq!(kld_row(&a, &a), 0.0);
        assert_eq!(top1(&[1.0, 3.0, 3.0, 2.0]), 1);
    }

    #[test]
    fn perplexity_error_is_llama_cpp_formula() {
        let mut p = Perplexity::default();
        p.add(&[1.0, 2.0, 3.0, 4.0]);
        let mean: f64 = 2.5;
        let var = (1.0 + 4.0 + 9.0 + 16.0) / 4.0 - mean * mean;
        assert!((p.ppl() - mean.exp()).abs() < 1e-12);
        assert!((p.stderr() - (var / 3.0).sqrt() * mean.exp()).abs() < 1e-12);
        assert_eq!(percentile(&[0.0, 10.0], 0.99), 9.9);
    }
}
