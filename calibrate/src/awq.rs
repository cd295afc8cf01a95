//! AWQ (activation-aware weight quantization) scale search, as llm-compressor 0.14.0.1 does it
//! (`llmcompressor/modifiers/transform/awq/base.py`), and the fold that applies the scales.
//!
//! A *mapping* is a smooth layer (an RMSNorm, or a linear whose output rows can be divided) and
//! the balance linears that read its output. For one mapping:
//!
//! * `x̄_j` = mean over all calibration tokens of `|x_j|`, `x` the balance layers' input
//!   ([`ActStats`]);
//! * `w̄_j` = over the balance layers' rows, concatenated, the mean of
//!   `|w_rj| / (max |w| in w_rj's quantization group + 1e-6)` ([`weight_mean`]);
//! * grid ([`grid`], `duo_scaling = true`, `n_grid = 20`): `(α = 0, plain)` then
//!   `α = i/18, i = 0..=18` with duo scaling. Plain: `s = max(x̄^α, 1e-4)`; duo:
//!   `s = max(x̄^α / (w̄^(1−α) + 1e-4), 1e-4)`; then `s /= √(max s · min s)`, inf/NaN → 1
//!   ([`candidate_scales`]). The first point is `s = 1`, i.e. plain round-to-nearest;
//! * each balance weight becomes `Q(W·s)/s` ([`fake_quant_scaled`], compressed-tensors'
//!   min-max qparams of the scheme) and the loss is the mean squared difference of the *parent
//!   module's* output (self_attn, mlp, or the balance linear itself) against the unquantized
//!   output on the same cached inputs ([`mse`]); the lowest loss wins ([`search`]), the first
//!   one on ties (llm-compressor keeps a candidate only when `loss < best`).
//! * fold ([`LayerScales::apply`]): smooth RMSNorm weight `/= s`, smooth linear's output rows
//!   `/= s`, balance weight columns `*= s`; each product is formed in `f64` (llm-compressor's
//!   scales are float64) and rounded once to `f32`, mapping by mapping.
//!
//! Llama mappings (llm-compressor `default_mappings`): input_layernorm → q, k, v (parent
//! self_attn); v_proj → o_proj (parent o_proj), **skipped when v's outputs ≠ o's inputs**, i.e.
//! under GQA; post_attention_layernorm → gate, up (parent mlp); up_proj → down_proj (parent
//! down_proj). llm-compressor omits AutoAWQ's clip search, and so do we. Mixture-of-experts
//! blocks take its MoE mappings (router and every expert's gate/up; per expert up → down):
//! see `awq_layer.rs`, which runs the search on one layer through verify's modules.

use qforge_codecs::float::{bf16_bits_to_f32, f32_to_bf16_bits};
use qforge_codecs::int4::{self, Int4Arith, Int4Config, Int4Scheme};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// llm-compressor's default grid size.
pub const N_GRID: usize = 20;

/// What AWQ searches for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AwqConfig {
    /// Columns per quantization group; `None` = one group per row.
    pub group_size: Option<usize>,
    /// Symmetric (compressed-tensors W4A16) or asymmetric (W4A16_ASYM) INT4.
    pub symmetric: bool,
    /// Grid points (llm-compressor `n_grid`, default 20).
    pub n_grid: usize,
    /// llm-compressor `duo_scaling` (default true).
    pub duo_scaling: bool,
    /// Fake-quantize in BF16 arithmetic (a BF16 model), else `f32`.
    pub bf16: bool,
}

impl Default for AwqConfig {
    fn default() -> Self {
        AwqConfig {
            group_size: Some(int4::DEFAULT_GROUP_SIZE),
            symmetric: true,
            n_grid: N_GRID,
            duo_scaling: true,
            bf16: false,
        }
    }
}

impl AwqConfig {
    fn int4(&self) -> Int4Config {
        Int4Config {
            bits: 4,
            scheme: if self.symmetric {
                Int4Scheme::Symmetric
            } else {
                Int4Scheme::Asymmetric
            },
            group_size: self.group_size,
            arith: if self.bf16 {
                Int4Arith::Bf16
            } else {
                Int4Arith::F32
            },
        }
    }
}

/// The grid `(α, duo)` of llm-compressor's `_get_grid_search_params`.
pub fn grid(n_grid: usize, duo_scaling: bool) -> Vec<(f64, bool)> {
    if duo_scaling {
        let m = n_grid.saturating_sub(2).max(1) as f64;
        std::iter::once((0.0, false))
            .chain((0..n_grid.saturating_sub(1)).map(|i| (i as f64 / m, true)))
            .collect()
    } else {
        let m = n_grid.saturating_sub(1).max(1) as f64;
        (0..n_grid).map(|i| (i as f64 / m, false)).collect()
    }
}

/// Running `Σ|x_j|` and token count of one mapping's input.
#[derive(Debug, Clone)]
pub struct ActStats {
    sum: Vec<f64>,
    count: usize,
}

impl ActStats {
    /// Statistics of a `width`-wide input.
    pub fn new(width: usize) -> Self {
        ActStats {
            sum: vec![0.0; width],
            count: 0,
        }
    }

    /// Add tokens (`[t, width]` row-major).
    pub fn add(&mut self, x: &[f32]) {
        let w = self.sum.len();
        for row in x.chunks_exact(w) {
            for (s, &v) in self.sum.iter_mut().zip(row) {
                *s += f64::from(v.abs());
            }
            self.count += 1;
        }
    }

    /// `x̄` in `f32` (llm-compressor accumulates `|x|` in float32 and divides by the count).
    pub fn mean(&self) -> Vec<f32> {
        let n = self.count.max(1) as f64;
        self.sum.iter().map(|s| (s / n) as f32).collect()
    }
}

/// `w̄` over the balance layers (each `[rows, cols]` row-major, all with `cols` columns):
/// llm-compressor `_compute_layer_means` for channel/group strategies.
pub fn weight_mean(layers: &[&[f32]], cols: usize, group_size: Option<usize>) -> Vec<f64> {
    let gs = group_size.unwrap_or(cols).clamp(1, cols.max(1));
    let mut sum = vec![0f64; cols];
    let mut rows = 0usize;
    for w in layers {
        for row in w.chunks_exact(cols) {
            for (sg, wg) in sum.chunks_mut(gs).zip(row.chunks(gs)) {
                let amax = wg.iter().fold(0f32, |m, x| m.max(x.abs())) + 1e-6;
                for (s, x) in sg.iter_mut().zip(wg) {
                    *s += f64::from(x.abs() / amax);
                }
            }
            rows += 1;
        }
    }
    let n = rows.max(1) as f64;
    sum.iter().map(|s| s / n).collect()
}

/// Candidate scales for one grid point (see the module docs).
pub fn candidate_scales(x_mean: &[f32], w_mean: Option<&[f64]>, ratio: f64) -> Vec<f64> {
    let mut s: Vec<f64> = match w_mean {
        Some(wm) => x_mean
            .iter()
            .zip(wm)
            .map(|(&x, &w)| {
                (f64::from(x.powf(ratio as f32)) / (w.powf(1.0 - ratio) + 1e-4)).max(1e-4)
            })
            .collect(),
        None => x_mean
            .iter()
            .map(|&x| f64::from(x.powf(ratio as f32).max(1e-4)))
            .collect(),
    };
    let (mn, mx) = s
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let norm = (mx * mn).sqrt();
    for v in &mut s {
        *v /= norm;
        if !v.is_finite() {
            *v = 1.0;
        }
    }
    s
}

/// `w[r, c] *= s[c]` (product in `f64`, rounded to `f32`).
pub fn scale_cols(w: &mut [f32], cols: usize, s: &[f64]) {
    w.par_chunks_mut(cols.max(1)).for_each(|row| {
        for (x, &v) in row.iter_mut().zip(s) {
            *x = (f64::from(*x) * v) as f32;
        }
    });
}

/// `w[r, c] /= s[r]` (quotient in `f64`, rounded to `f32`); a 1-D weight is one column.
pub fn div_rows(w: &mut [f32], cols: usize, s: &[f64]) {
    w.par_chunks_mut(cols.max(1))
        .zip(s.par_iter())
        .for_each(|(row, &v)| {
            for x in row {
                *x = (f64::from(*x) / v) as f32;
            }
        });
}

/// `Q(W·s)/s` of a `[rows, cols]` weight, `Q` the scheme's round-to-nearest with min-max
/// qparams per group (compressed-tensors `forward_quantize`).
pub fn fake_quant_scaled(w: &[f32], cols: usize, s: &[f64], cfg: &AwqConfig) -> Result<Vec<f32>> {
    let mut ws = w.to_vec();
    scale_cols(&mut ws, cols, s);
    let mut d = int4::quantize_int4(&ws, cols, &cfg.int4())?.dequantize();
    let round = |x: f32| {
        if cfg.bf16 {
            // the dequantized weight and the division are in the weight dtype
            bf16_bits_to_f32(f32_to_bf16_bits(x))
        } else {
            x
        }
    };
    d.par_chunks_mut(cols.max(1)).for_each(|row| {
        for (x, &v) in row.iter_mut().zip(s) {
            *x = round((f64::from(round(*x)) / v) as f32);
        }
    });
    Ok(d)
}

/// Mean of `(a − b)²` over all elements, summed in `f64` in fixed blocks (deterministic for
/// any thread count).
///
/// # Panics
/// If the lengths differ (a caller bug).
pub fn mse(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "mse lengths");
    let parts: Vec<f64> = a
        .par_chunks(4096)
        .zip(b.par_chunks(4096))
        .map(|(x, y)| {
            x.iter()
                .zip(y)
                .map(|(p, q)| {
                    let d = f64::from(*p) - f64::from(*q);
                    d * d
                })
                .sum()
        })
        .collect();
    parts.iter().sum::<f64>() / a.len().max(1) as f64
}

/// The outcome of one mapping's search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchResult {
    /// Best scales, one per input channel.
    #[serde(skip)]
    pub scales: Vec<f64>,
    /// Best α.
    pub ratio: f64,
    /// Whether the best point used duo scaling.
    pub duo_scaling: bool,
    /// Loss of the first grid point (`s = 1`: plain round-to-nearest).
    pub initial_loss: f64,
    /// Loss of the best point.
    pub best_loss: f64,
}

/// Grid-search one mapping. `balance` are the balance weights (`[rows_i, cols]`), `x_mean` the
/// input statistic; `loss` gets the fake-quantized balance weights (same order) and returns the
/// parent output's MSE against the unquantized output.
///
/// Errors: [`Error::NonFinite`] when no grid point gives a finite loss; codec errors.
pub fn search(
    module: &str,
    balance: &[&[f32]],
    cols: usize,
    x_mean: &[f32],
    cfg: &AwqConfig,
    loss: &mut dyn FnMut(&[Vec<f32>]) -> Result<f64>,
) -> Result<SearchResult> {
    let w_mean = cfg
        .duo_scaling
        .then(|| weight_mean(balance, cols, cfg.group_size));
    let mut best: Option<SearchResult> = None;
    let mut initial = None;
    for (ratio, duo) in grid(cfg.n_grid, cfg.duo_scaling) {
        let s = candidate_scales(x_mean, duo.then_some(()).and(w_mean.as_deref()), ratio);
        let wq = balance
            .iter()
            .map(|w| fake_quant_scaled(w, cols, &s, cfg))
            .collect::<Result<Vec<_>>>()?;
        let l = loss(&wq)?;
        initial.get_or_insert(l);
        if best.as_ref().is_none_or(|b| l < b.best_loss) && l.is_finite() {
            best = Some(SearchResult {
                scales: s,
                ratio,
                duo_scaling: duo,
                initial_loss: 0.0,
                best_loss: l,
            });
        }
    }
    let mut b = best.ok_or_else(|| Error::NonFinite {
        module: module.into(),
        what: "every AWQ grid point's loss",
    })?;
    b.initial_loss = initial.unwrap_or(f64::NAN);
    Ok(b)
}

/// One decoder layer's AWQ scales, by mapping (`None`: mapping skipped).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LayerScales {
    /// input_layernorm → q, k, v.
    pub attn: Option<Vec<f64>>,
    /// v_proj → o_proj (only when v's outputs equal o's inputs).
    pub vo: Option<Vec<f64>>,
    /// post_attention_layernorm → gate, up.
    pub mlp: Option<Vec<f64>>,
    /// up_proj → down_proj.
    pub up_down: Option<Vec<f64>>,
    /// Mixture-of-experts blocks: each expert's up_proj → down_proj, by expert (an expert
    /// that saw no row has none).
    pub experts_up_down: std::collections::BTreeMap<u32, Vec<f64>>,
    /// Llama 4's shared expert's up_proj → down_proj.
    pub shared_up_down: Option<Vec<f64>>,
}

use qforge_convert::FfnProj;
/// Which tensor of a layer [`LayerScales::apply`] folds into.
pub use qforge_convert::LayerTensor;

impl LayerScales {
    /// Set the up → down scales of `up` (an expert's or the shared expert's up_proj).
    pub fn set_up_down(&mut self, up: LayerTensor, s: Vec<f64>) {
        match up {
            LayerTensor::Expert { expert, .. } => {
                self.experts_up_down.insert(expert, s);
            }
            LayerTensor::SharedExpert { .. } => self.shared_up_down = Some(s),
            _ => self.up_down = Some(s),
        }
    }

    /// The up → down scales of an expert's (or the shared expert's) projection `kind`.
    fn expert_up_down(&self, kind: LayerTensor) -> Option<&Vec<f64>> {
        match kind {
            LayerTensor::Expert { expert, .. } => self.experts_up_down.get(&expert),
            LayerTensor::SharedExpert { .. } => self.shared_up_down.as_ref(),
            _ => None,
        }
    }

    /// Whether `kind`'s weight changes.
    pub fn touches(&self, kind: LayerTensor) -> bool {
        use LayerTensor as K;
        match kind {
            K::AttnNorm | K::Q | K::K => self.attn.is_some(),
            K::V => self.attn.is_some() || self.vo.is_some(),
            // llm-compressor `AWQModifier._smooth` divides the smooth layer's bias too
            K::O | K::VBias => self.vo.is_some(),
            // post_attention_layernorm's mapping also folds into the router (llm-compressor
            // `_moe_default_mappings` balances `mlp.gate`)
            K::FfnNorm | K::Gate | K::Router => self.mlp.is_some(),
            K::Up => self.mlp.is_some() || self.up_down.is_some(),
            K::Down => self.up_down.is_some(),
            // and into every expert's gate/up
            K::Expert { proj, .. } | K::SharedExpert { proj } => match proj {
                FfnProj::Gate => self.mlp.is_some(),
                FfnProj::Up => self.mlp.is_some() || self.expert_up_down(kind).is_some(),
                FfnProj::Down => self.expert_up_down(kind).is_some(),
            },
            K::QBias | K::KBias | K::QNorm | K::KNorm => false,
        }
    }

    /// Fold the scales into `kind`'s weight (`[rows, cols]`, HF order; a norm is `[1, cols]`,
    /// a bias one value per row),
    /// mapping by mapping in llm-compressor's order.
    ///
    /// Errors: [`Error::Unsupported`] when a scale vector does not fit the weight.
    pub fn apply(&self, kind: LayerTensor, w: &mut [f32], cols: usize) -> Result<()> {
        use LayerTensor as K;
        let len = w.len();
        let rows = len / cols.max(1);
        let fit = |s: &[f64], n: usize, what: &str| {
            if s.len() == n && len == rows * cols {
                Ok(())
            } else {
                Err(Error::Unsupported(format!(
                    "AWQ scales ({}) do not fit {kind:?} {what} ({n})",
                    s.len()
                )))
            }
        };
        let cols_by = |w: &mut [f32], s: &Option<Vec<f64>>| -> Result<()> {
            if let Some(s) = s {
                fit(s, cols, "columns")?;
                scale_cols(w, cols, s);
            }
            Ok(())
        };
        let rows_by = |w: &mut [f32], s: &Option<Vec<f64>>| -> Result<()> {
            if let Some(s) = s {
                fit(s, rows, "rows")?;
                div_rows(w, cols, s);
            }
            Ok(())
        };
        let norm_by = |w: &mut [f32], s: &Option<Vec<f64>>| -> Result<()> {
            if let Some(s) = s {
                fit(s, w.len(), "weights")?;
                for (x, &v) in w.iter_mut().zip(s) {
                    *x = (f64::from(*x) / v) as f32;
                }
            }
            Ok(())
        };
        match kind {
            K::AttnNorm => norm_by(w, &self.attn),
            K::Q | K::K => cols_by(w, &self.attn),
            K::V => {
                cols_by(w, &self.attn)?;
                rows_by(w, &self.vo)
            }
            K::O => cols_by(w, &self.vo),
            K::FfnNorm => norm_by(w, &self.mlp),
            K::Gate | K::Router => cols_by(w, &self.mlp),
            K::Up => {
                cols_by(w, &self.mlp)?;
                rows_by(w, &self.up_down)
            }
            K::Down => cols_by(w, &self.up_down),
            // v_proj's bias divides with its rows, whatever `cols` says (llm-compressor
            // `_smooth`: `smooth_layer.bias.div_(scales)`)
            K::VBias => match &self.vo {
                Some(s) if s.len() == len => {
                    div_rows(w, 1, s);
                    Ok(())
                }
                Some(s) => fit(s, len, "rows"),
                None => Ok(()),
            },
            K::Expert { proj, .. } | K::SharedExpert { proj } => {
                let ud = self.expert_up_down(kind).cloned();
                match proj {
                    FfnProj::Gate => cols_by(w, &self.mlp),
                    FfnProj::Up => {
                        cols_by(w, &self.mlp)?;
                        rows_by(w, &ud)
                    }
                    FfnProj::Down => cols_by(w, &ud),
                }
            }
            K::QBias | K::KBias | K::QNorm | K::KNorm => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(n: usize, seed: u64, amp: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let u = ((s >> 40) as f32) / (1u64 << 24) as f32;
                (u - 0.5) * 2.0 * amp
            })
            .collect()
    }

    fn cfg() -> AwqConfig {
        AwqConfig {
            group_size: Some(16),
            symmetric: true,
            n_grid: N_GRID,
            duo_scaling: true,
            bf16: false,
        }
    }

    #[test]
    fn grid_matches_llm_compressor() {
        let g = grid(20, true);
        assert_eq!(g.len(), 20);
        assert_eq!(g[0], (0.0, false));
        assert_eq!(g[1], (0.0, true));
        assert_eq!(g[19], (1.0, true));
        assert!((g[2].0 - 1.0 / 18.0).abs() < 1e-15);
        let p = grid(20, false);
        assert_eq!(p.len(), 20);
        assert!(p.iter().all(|(_, d)| !d));
        assert_eq!(p[19].0, 1.0);
    }

    #[test]
    fn alpha_zero_plain_is_identity_and_rtn() {
        let x = lcg(64, 1, 3.0);
        let s = candidate_scales(&x, None, 0.0);
        assert!(s.iter().all(|&v| v == 1.0));
        let w = lcg(8 * 64, 2, 0.1);
        let c = cfg();
        let fq = fake_quant_scaled(&w, 64, &s, &c).unwrap();
        let rtn = int4::quantize_int4(&w, 64, &c.int4()).unwrap().dequantize();
        assert_eq!(fq, rtn);
    }

    #[test]
    fn scales_normalised_and_finite() {
        let mut x = lcg(32, 3, 2.0);
        x[5] = 0.0;
        let wm: Vec<f64> = (0..32).map(|i| 0.1 + f64::from(i) / 40.0).collect();
        for (r, duo) in grid(20, true) {
            let s = candidate_scales(&x, duo.then_some(wm.as_slice()), r);
            let mx = s.iter().copied().fold(f64::MIN, f64::max);
            let mn = s.iter().copied().fold(f64::MAX, f64::min);
            assert!(s.iter().all(|v| v.is_finite() && *v > 0.0));
            assert!((mx * mn - 1.0).abs() < 1e-9, "max·min = {}", mx * mn);
        }
    }

    #[test]
    fn weight_mean_per_group() {
        // one row, two groups of 2: |w|/(amax+1e-6)
        let w = [1.0f32, -2.0, 4.0, 0.0];
        let m = weight_mean(&[&w], 4, Some(2));
        let e = [
            1.0 / (2.0 + 1e-6),
            2.0 / (2.0 + 1e-6),
            4.0 / (4.0 + 1e-6),
            0.0,
        ];
        for (a, b) in m.iter().zip(e) {
            assert!((a - f64::from(b as f32)).abs() < 1e-6);
        }
    }

    /// A linear with a few salient input channels: AWQ's best loss never exceeds RTN's and
    /// the result is bit-identical for 1 and 3 threads.
    #[test]
    fn search_beats_rtn_and_is_deterministic() {
        let (t, cols, rows) = (96, 64, 32);
        let mut x = lcg(t * cols, 5, 1.0);
        for r in 0..t {
            for c in [3, 17, 40] {
                x[r * cols + c] *= 20.0;
            }
        }
        let w = lcg(rows * cols, 6, 0.2);
        let c = cfg();
        let mut st = ActStats::new(cols);
        st.add(&x);
        let xm = st.mean();
        let mut fp = vec![0f32; t * rows];
        qforge_verify::matmul::matmul_t(&x, t, cols, &w, rows, &mut fp);
        let run = || {
            search("lin", &[&w], cols, &xm, &c, &mut |wq| {
                let mut y = vec![0f32; t * rows];
                qforge_verify::matmul::matmul_t(&x, t, cols, &wq[0], rows, &mut y);
                Ok(mse(&fp, &y))
            })
            .unwrap()
        };
        let pool = |n| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap()
        };
        let a = pool(1).install(run);
        let b = pool(3).install(run);
        assert_eq!(a, b);
        assert_eq!(
            a.scales.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            b.scales.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        let rtn = int4::quantize_int4(&w, cols, &c.int4())
            .unwrap()
            .dequantize();
        let mut y = vec![0f32; t * rows];
        qforge_verify::matmul::matmul_t(&x, t, cols, &rtn, rows, &mut y);
        let rtn_loss = mse(&fp, &y);
        assert_eq!(a.initial_loss, rtn_loss);
        assert!(a.best_loss <= rtn_loss);
        // salient channels make scaling pay off clearly
        assert!(
            a.best_loss < 0.9 * rtn_loss,
            "{} vs {rtn_loss}",
            a.best_loss
        );
    }

    /// Folding is an identity of the unquantized layer: norm/s then W·s gives W·norm.
    #[test]
    fn fold_preserves_function() {
        let cols = 8;
        let s: Vec<f64> = (0..cols).map(|i| 0.5 + i as f64 * 0.25).collect();
        let ls = LayerScales {
            attn: Some(s.clone()),
            ..LayerScales::default()
        };
        let mut norm = lcg(cols, 7, 1.0);
        let mut q = lcg(4 * cols, 8, 1.0);
        let x = lcg(cols, 9, 1.0);
        // q · (norm ⊙ x), row by row
        let out = |q: &[f32], norm: &[f32]| -> Vec<f32> {
            q.chunks(cols)
                .map(|r| {
                    r.iter()
                        .zip(&x)
                        .zip(norm)
                        .map(|((a, b), n)| a * b * n)
                        .sum()
                })
                .collect()
        };
        let y0 = out(&q, &norm);
        ls.apply(LayerTensor::AttnNorm, &mut norm, cols).unwrap();
        ls.apply(LayerTensor::Q, &mut q, cols).unwrap();
        let y1 = out(&q, &norm);
        for (a, b) in y0.iter().zip(&y1) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        assert!(ls.touches(LayerTensor::K) && !ls.touches(LayerTensor::O));
        let bad = LayerScales {
            mlp: Some(vec![1.0; 3]),
            ..LayerScales::default()
        };
        assert!(matches!(
            bad.apply(LayerTensor::Gate, &mut q, cols),
            Err(Error::Unsupported(_))
        ));
    }

    /// v_proj → o_proj with a v_proj bias (Qwen2): dividing v's rows and its bias by `s` and
    /// multiplying o's columns by `s` leaves `o · (v·x + b)` unchanged (llm-compressor
    /// `_smooth` divides the bias with the weight); the bias is folded whatever `cols` says.
    #[test]
    fn vo_scales_fold_into_v_bias() {
        let (v_rows, cols) = (6, 5);
        let s: Vec<f64> = (0..v_rows).map(|i| 0.5 + 0.25 * i as f64).collect();
        let ls = LayerScales {
            vo: Some(s),
            ..LayerScales::default()
        };
        let mut v = lcg(v_rows * cols, 11, 1.0);
        let mut b = lcg(v_rows, 12, 1.0);
        let mut o = lcg(3 * v_rows, 13, 1.0);
        let x = lcg(cols, 14, 1.0);
        let out = |v: &[f32], b: &[f32], o: &[f32]| -> Vec<f32> {
            let y: Vec<f32> = v
                .chunks(cols)
                .zip(b)
                .map(|(r, bb)| r.iter().zip(&x).map(|(a, c)| a * c).sum::<f32>() + bb)
                .collect();
            o.chunks(v_rows)
                .map(|r| r.iter().zip(&y).map(|(a, c)| a * c).sum())
                .collect()
        };
        let y0 = out(&v, &b, &o);
        assert!(ls.touches(LayerTensor::VBias) && !ls.touches(LayerTensor::QBias));
        ls.apply(LayerTensor::V, &mut v, cols).unwrap();
        ls.apply(LayerTensor::VBias, &mut b, v_rows).unwrap();
        ls.apply(LayerTensor::O, &mut o, v_rows).unwrap();
        let y1 = out(&v, &b, &o);
        for (a, c) in y0.iter().zip(&y1) {
            assert!((a - c).abs() < 1e-5, "{a} vs {c}");
        }
        let mut short = vec![1.0; 3];
        assert!(ls.apply(LayerTensor::VBias, &mut short, 3).is_err());
    }
}
