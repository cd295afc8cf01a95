//! GPTQ on one linear (specs/serving-formats.md §4b; llm-compressor 0.14
//! `modifiers/gptq/gptq_quantize.py` and `helpers.py`).
//!
//! * Scales: per (row, group) from the *original* weights before any update (llm-compressor's
//!   weight observer, "static groups"), symmetric: `s = amax / (qmax − qmin)/2` (7.5 for 4 bits,
//!   127.5 for 8), computed in the model dtype (BF16: the division is rounded to BF16), exactly
//!   as `qforge_codecs::int4::quantize_int4` computes them for round-to-nearest.
//! * Dead columns (`H_ii = 0`): `H_ii = 1` and the weight column is zeroed.
//! * Activation order `weight` (llm-compressor's default `static`): columns processed by
//!   descending `H_ii` (ties by index), each still using its natural group `k / group_size`, so
//!   no `g_idx` is needed on disk.
//! * Damping `λ·mean(diag H)`; `U = chol_upper(H⁻¹)` in `f64` ([`crate::linalg`]). If the
//!   Cholesky fails, λ is multiplied by 10 and the factorisation retried (at most
//!   [`MAX_DAMPING_RETRIES`] times, reported in [`GptqResult::retries`]); then it is an error.
//!   (llm-compressor instead falls back to round-to-nearest.)
//! * Column loop in `f32` per row, blocks of `block_size`: `q = clamp(round(w/s))`,
//!   `d = q·s` (rounded to BF16 in BF16 arithmetic, as compressed-tensors' fake-quantize
//!   does), `e = (w − d)/U_ii`, the rest of the block gets `w −= e·U[i, ·]`, the columns after
//!   the block get the block's errors at once. Rows are independent, so they run in parallel.

use qforge_codecs::float::{bf16_bits_to_f32, f32_to_bf16_bits};
use qforge_codecs::int4::{self, Int4Arith, Int4Config, Int4Scheme};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::linalg::inverse_upper_cholesky_reversed;

/// How many times the damping is multiplied by 10 when the Cholesky fails.
pub const MAX_DAMPING_RETRIES: u32 = 4;

/// GPTQ settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GptqConfig {
    /// 4 or 8 (symmetric integers).
    pub bits: u8,
    /// Columns per scale; `None` = one scale per row.
    pub group_size: Option<usize>,
    /// Activation ordering (llm-compressor `actorder: weight`).
    pub actorder: bool,
    /// λ: damping as a fraction of `mean(diag H)`.
    pub dampening: f64,
    /// Columns per lazy-update block.
    pub block_size: usize,
    /// Scales and dequantized values rounded to BF16 (a BF16 model, as compressed-tensors).
    pub bf16: bool,
}

impl Default for GptqConfig {
    /// llm-compressor W4A16 defaults: 4 bits, group 128, actorder weight, λ 0.01, block 128.
    fn default() -> Self {
        GptqConfig {
            bits: 4,
            group_size: Some(128),
            actorder: true,
            dampening: 0.01,
            block_size: 128,
            bf16: true,
        }
    }
}

/// GPTQ's result for one `[rows, cols]` weight.
#[derive(Debug, Clone, PartialEq)]
pub struct GptqResult {
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
    /// Effective group size (`cols` per row).
    pub group_size: usize,
    /// Signed codes, `[rows, cols]`, in `[−2^(bits−1), 2^(bits−1) − 1]`.
    pub q: Vec<i8>,
    /// Scales, `[rows, cols/group_size]`.
    pub scales: Vec<f32>,
    /// `Σ e²/2` over all rows and columns (llm-compressor's logged loss).
    pub loss: f64,
    /// The dampening that factorised.
    pub damping: f64,
    /// Extra damping steps needed.
    pub retries: u32,
    /// Columns with `H_ii = 0`.
    pub dead_columns: usize,
}

impl GptqResult {
    /// `w = s·q` in `f32`.
    pub fn dequantize(&self) -> Vec<f32> {
        let ng = self.cols / self.group_size;
        let mut out = vec![0f32; self.rows * self.cols];
        out.par_chunks_mut(self.cols)
            .enumerate()
            .for_each(|(r, row)| {
                for (c, v) in row.iter_mut().enumerate() {
                    *v = f32::from(self.q[r * self.cols + c])
                        * self.scales[r * ng + c / self.group_size];
                }
            });
        out
    }
}

fn r16(x: f32) -> f32 {
    bf16_bits_to_f32(f32_to_bf16_bits(x))
}

/// Code range of a symmetric `bits`-bit integer.
fn qrange(bits: u8) -> (f32, f32) {
    let half = f32::from(1u16 << (bits - 1));
    (-half, half - 1.0)
}

/// Round-to-nearest scales and codes (compressed-tensors' symmetric observer and quantizer).
pub fn rtn(w: &[f32], rows: usize, cols: usize, cfg: &GptqConfig) -> Result<(Vec<i8>, Vec<f32>)> {
    let gs = int4::check_group(cols, cfg.group_size)?;
    if w.len() != rows * cols {
        return Err(Error::Unsupported(format!(
            "weight has {} values, not {rows}x{cols}",
            w.len()
        )));
    }
    let t = int4::quantize_int4(
        w,
        cols,
        &Int4Config {
            bits: cfg.bits,
            scheme: Int4Scheme::Symmetric,
            group_size: Some(gs),
            arith: if cfg.bf16 {
                Int4Arith::Bf16
            } else {
                Int4Arith::F32
            },
        },
    )?;
    Ok((t.q, t.scales))
}

/// Run GPTQ on `w` (`[rows, cols]` row-major) with the normalised Hessian `h` (`[cols, cols]`,
/// `(2/N)·Σ x·xᵀ`). `module` names the linear in errors.
pub fn gptq(
    module: &str,
    w: &[f32],
    rows: usize,
    cols: usize,
    h: &[f32],
    cfg: &GptqConfig,
) -> Result<GptqResult> {
    if !matches!(cfg.bits, 4 | 8) {
        return Err(Error::InvalidOption {
            name: "scheme",
            reason: format!("{} bits: GPTQ supports int4 and int8", cfg.bits),
        });
    }
    if cfg.block_size == 0 {
        return Err(Error::InvalidOption {
            name: "block-size",
            reason: "must be positive".into(),
        });
    }
    if !(cfg.dampening.is_finite() && cfg.dampening >= 0.0) {
        return Err(Error::InvalidOption {
            name: "dampening",
            reason: format!("{} is not a finite non-negative number", cfg.dampening),
        });
    }
    if h.len() != cols * cols {
        return Err(Error::Unsupported(format!(
            "{module}: Hessian has {} values for {cols} columns",
            h.len()
        )));
    }
    if w.iter().any(|x| !x.is_finite()) {
        return Err(Error::NonFinite {
            module: module.into(),
            what: "weights",
        });
    }
    if h.iter().any(|x| !x.is_finite()) {
        return Err(Error::NonFinite {
            module: module.into(),
            what: "Hessian",
        });
    }
    let (_, scales) = rtn(w, rows, cols, cfg)?;
    let gs = int4::check_group(cols, cfg.group_size)?;
    let ng = cols / gs;

    // Dead columns, then the processing order. The permuted, damped Hessian is built straight
    // from `h` for each attempt (no full `f64` copies kept beside it: memory on wide layers).
    let mut diag: Vec<f64> = (0..cols).map(|i| f64::from(h[i * cols + i])).collect();
    let mut dead = vec![false; cols];
    for (d, x) in dead.iter_mut().zip(diag.iter_mut()) {
        if *x == 0.0 {
            *x = 1.0;
            *d = true;
        }
    }
    let dead_columns = dead.iter().filter(|d| **d).count();
    let mut perm: Vec<usize> = (0..cols).collect();
    if cfg.actorder {
        // descending diag H, ties by column index (a stable, thread-independent order)
        perm.sort_by(|&a, &b| diag[b].total_cmp(&diag[a]).then(a.cmp(&b)));
    }
    let mean_diag = perm.iter().map(|&p| diag[p]).sum::<f64>() / cols as f64;
    // m = J·(P·H·Pᵀ + damp·I)·J, J the reversal (see `linalg`)
    let reversed = |damp: f64| -> Vec<f64> {
        let mut m = vec![0f64; cols * cols];
        m.par_chunks_mut(cols).enumerate().for_each(|(i, row)| {
            let a = perm[cols - 1 - i];
            let src = &h[a * cols..(a + 1) * cols];
            for (j, v) in row.iter_mut().enumerate() {
                let b = perm[cols - 1 - j];
                *v = if a == b {
                    diag[a] + damp
                } else {
                    f64::from(src[b])
                };
            }
        });
        m
    };

    // Damping with retries.
    let mut damping = cfg.dampening;
    let mut retries = 0;
    let u = loop {
        match inverse_upper_cholesky_reversed(reversed(damping * mean_diag), cols) {
            Ok(u) if u.iter().all(|x| x.is_finite()) => break u,
            Ok(_) | Err(_) if retries < MAX_DAMPING_RETRIES => {
                retries += 1;
                damping = if damping > 0.0 { damping * 10.0 } else { 0.01 };
            }
            Ok(_) => {
                return Err(Error::NotPositiveDefinite {
                    module: module.into(),
                    damping,
                    pivot: cols,
                })
            }
            Err(pivot) => {
                return Err(Error::NotPositiveDefinite {
                    module: module.into(),
                    damping,
                    pivot: perm[pivot],
                })
            }
        }
    };
    let u: Vec<f32> = u.into_iter().map(|x| x as f32).collect();

    let (qmin, qmax) = qrange(cfg.bits);
    let bs = cfg.block_size;
    let bf16 = cfg.bf16;
    let mut q = vec![0i8; rows * cols];
    let losses: Vec<f64> = q
        .par_chunks_mut(cols)
        .enumerate()
        .map(|(r, q_row)| {
            let srow = &scales[r * ng..(r + 1) * ng];
            // the row in processing order
            let mut wr: Vec<f32> = perm
                .iter()
                .map(|&c| if dead[c] { 0.0 } else { w[r * cols + c] })
                .collect();
            let mut err = vec![0f32; bs];
            let mut loss = 0f64;
            for i1 in (0..cols).step_by(bs) {
                let i2 = (i1 + bs).min(cols);
                for i in i1..i2 {
                    let c = perm[i];
                    let s = srow[c / gs];
                    let x = wr[i];
                    let code = (x / s).clamp(qmin, qmax).round_ties_even();
                    q_row[c] = code as i8;
                    let d = if bf16 { r16(code * s) } else { code * s };
                    let e = (x - d) / u[i * cols + i];
                    err[i - i1] = e;
                    loss += f64::from(e) * f64::from(e);
                    let urow = &u[i * cols..(i + 1) * cols];
                    for (wv, uv) in wr[i + 1..i2].iter_mut().zip(&urow[i + 1..i2]) {
                        *wv -= e * uv;
                    }
                }
                for i in i1..i2 {
                    let e = err[i - i1];
                    let urow = &u[i * cols..(i + 1) * cols];
                    for (wv, uv) in wr[i2..].iter_mut().zip(&urow[i2..]) {
                        *wv -= e * uv;
                    }
                }
            }
            loss
        })
        .collect();
    Ok(GptqResult {
        rows,
        cols,
        group_size: gs,
        q,
        scales,
        loss: losses.iter().sum::<f64>() / 2.0,
        damping,
        retries,
        dead_columns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::SplitMix64;

    fn randn(rng: &mut SplitMix64, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                // sum of 4 uniforms: roughly normal, heavy enough for outliers to matter
                let s: f64 = (0..4)
                    .map(|_| (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
                    .sum();
                ((s - 2.0) * f64::from(scale)) as f32
            })
            .collect()
    }

    fn bf16(v: Vec<f32>) -> Vec<f32> {
        v.into_iter().map(r16).collect()
    }

    /// Correlated activations `[t, cols]`: a few latent factors plus per-column scales.
    fn activations(rng: &mut SplitMix64, t: usize, cols: usize) -> Vec<f32> {
        let f = 4;
        let mix = randn(rng, f * cols, 1.0);
        let z = randn(rng, t * f, 1.0);
        let noise = randn(rng, t * cols, 0.3);
        let mut x = vec![0f32; t * cols];
        for r in 0..t {
            for c in 0..cols {
                let mut v = noise[r * cols + c];
                for k in 0..f {
                    v += z[r * f + k] * mix[k * cols + c];
                }
                x[r * cols + c] = v * (1.0 + (c % 7) as f32);
            }
        }
        x
    }

    fn hessian(x: &[f32], t: usize, cols: usize, samples: usize) -> Vec<f32> {
        let mut h = vec![0f32; cols * cols];
        for r in 0..t {
            let row = &x[r * cols..(r + 1) * cols];
            for i in 0..cols {
                for j in 0..cols {
                    h[i * cols + j] += 2.0 * row[i] * row[j];
                }
            }
        }
        for v in &mut h {
            *v /= samples as f32;
        }
        h
    }

    fn out_err(x: &[f32], t: usize, cols: usize, w: &[f32], q: &[f32], rows: usize) -> f64 {
        let mut e = 0f64;
        for r in 0..t {
            for o in 0..rows {
                let mut d = 0f64;
                for c in 0..cols {
                    d += f64::from(x[r * cols + c])
                        * (f64::from(w[o * cols + c]) - f64::from(q[o * cols + c]));
                }
                e += d * d;
            }
        }
        e
    }

    /// Textbook GPTQ (Frantar et al. 2022, Algorithm 1) without lazy blocks: explicit `H⁻¹`
    /// by Gauss–Jordan in f64, upper Cholesky of it, one full row update per column.
    fn reference(w: &[f32], rows: usize, cols: usize, h: &[f32], cfg: &GptqConfig) -> Vec<i8> {
        let (_, scales) = rtn(w, rows, cols, cfg).unwrap();
        let gs = cfg.group_size.unwrap_or(cols);
        let ng = cols / gs;
        let mut perm: Vec<usize> = (0..cols).collect();
        if cfg.actorder {
            perm.sort_by(|&a, &b| h[b * cols + b].total_cmp(&h[a * cols + a]).then(a.cmp(&b)));
        }
        let n = cols;
        let mut a: Vec<f64> = (0..n * n)
            .map(|i| f64::from(h[perm[i / n] * n + perm[i % n]]))
            .collect();
        let mean = (0..n).map(|i| a[i * n + i]).sum::<f64>() / n as f64;
        for i in 0..n {
            a[i * n + i] += cfg.dampening * mean;
        }
        // Gauss–Jordan inverse
        let mut inv = vec![0f64; n * n];
        for i in 0..n {
            inv[i * n + i] = 1.0;
        }
        for c in 0..n {
            let p = a[c * n + c];
            for j in 0..n {
                a[c * n + j] /= p;
                inv[c * n + j] /= p;
            }
            for r in 0..n {
                if r != c {
                    let f = a[r * n + c];
                    for j in 0..n {
                        a[r * n + j] -= f * a[c * n + j];
                        inv[r * n + j] -= f * inv[c * n + j];
                    }
                }
            }
        }
        // upper Cholesky: inv = UᵀU
        let mut u = vec![0f64; n * n];
        for i in 0..n {
            let d = inv[i * n + i] - (0..i).map(|k| u[k * n + i] * u[k * n + i]).sum::<f64>();
            u[i * n + i] = d.sqrt();
            for j in i + 1..n {
                let s = inv[i * n + j] - (0..i).map(|k| u[k * n + i] * u[k * n + j]).sum::<f64>();
                u[i * n + j] = s / u[i * n + i];
            }
        }
        let (qmin, qmax) = qrange(cfg.bits);
        let mut q = vec![0i8; rows * cols];
        for r in 0..rows {
            let mut wr: Vec<f32> = perm.iter().map(|&c| w[r * cols + c]).collect();
            for i in 0..n {
                let c = perm[i];
                let s = scales[r * ng + c / gs];
                let code = (wr[i] / s).clamp(qmin, qmax).round_ties_even();
                q[r * cols + c] = code as i8;
                let e = (wr[i] - r16(code * s)) / u[i * n + i] as f32;
                for j in i + 1..n {
                    wr[j] -= e * u[i * n + j] as f32;
                }
            }
        }
        q
    }

    fn setup(rows: usize, cols: usize, t: usize, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let mut rng = SplitMix64(seed);
        let w = bf16(randn(&mut rng, rows * cols, 0.05));
        let x = activations(&mut rng, t, cols);
        let h = hessian(&x, t, cols, 4);
        (w, x, h)
    }

    #[test]
    fn matches_the_textbook_algorithm() {
        let (rows, cols) = (16, 64);
        let (w, _, h) = setup(rows, cols, 256, 1);
        for (actorder, group, block) in [
            (false, Some(16), 128),
            (true, Some(16), 8),
            (true, None, 16),
        ] {
            let cfg = GptqConfig {
                bits: 4,
                group_size: group,
                actorder,
                dampening: 0.01,
                block_size: block,
                bf16: true,
            };
            let ours = gptq("t", &w, rows, cols, &h, &cfg).unwrap();
            let want = reference(&w, rows, cols, &h, &cfg);
            let same = ours.q.iter().zip(&want).filter(|(a, b)| a == b).count();
            // f32 update order differs (lazy blocks): allow rare flips at rounding boundaries
            assert!(
                same * 1000 >= 995 * want.len(),
                "actorder={actorder} group={group:?}: {same}/{} codes equal",
                want.len()
            );
        }
    }

    #[test]
    fn beats_round_to_nearest_on_the_layer_output() {
        let (rows, cols, t) = (32, 128, 512);
        let (w, x, h) = setup(rows, cols, t, 2);
        for bits in [4u8, 8] {
            for actorder in [false, true] {
                let cfg = GptqConfig {
                    bits,
                    group_size: Some(32),
                    actorder,
                    dampening: 0.01,
                    block_size: 32,
                    bf16: true,
                };
                let (rq, rs) = rtn(&w, rows, cols, &cfg).unwrap();
                let rtn_w: Vec<f32> = rq
                    .iter()
                    .enumerate()
                    .map(|(i, &q)| f32::from(q) * rs[(i / cols) * (cols / 32) + (i % cols) / 32])
                    .collect();
                let g = gptq("t", &w, rows, cols, &h, &cfg).unwrap();
                let e_rtn = out_err(&x, t, cols, &w, &rtn_w, rows);
                let e_gptq = out_err(&x, t, cols, &w, &g.dequantize(), rows);
                assert!(
                    e_gptq < 0.8 * e_rtn,
                    "bits={bits} actorder={actorder}: gptq {e_gptq} vs rtn {e_rtn}"
                );
                assert_eq!(g.scales, rs, "scales come from the original weights");
            }
        }
    }

    #[test]
    fn non_positive_definite_hessians_are_damped_or_reported() {
        let (rows, cols) = (4, 16);
        let (w, _, _) = setup(rows, cols, 8, 3);
        // rank one minus 5% of the mean diagonal: λ = 0.01 fails, 0.1 factorises
        let v: Vec<f32> = (0..cols).map(|i| 1.0 + i as f32 / 8.0).collect();
        let mut h: Vec<f32> = (0..cols * cols)
            .map(|i| v[i / cols] * v[i % cols])
            .collect();
        let mean = (0..cols).map(|i| h[i * cols + i]).sum::<f32>() / cols as f32;
        for i in 0..cols {
            h[i * cols + i] -= 0.05 * mean;
        }
        let cfg = GptqConfig {
            group_size: Some(8),
            ..GptqConfig::default()
        };
        let r = gptq("model.layers.0.mlp.up_proj", &w, rows, cols, &h, &cfg).unwrap();
        assert_eq!(r.retries, 1);
        assert!((r.damping - 0.1).abs() < 1e-12);
        assert!(r.dequantize().iter().all(|x| x.is_finite()));
        let neg: Vec<f32> = (0..cols * cols)
            .map(|i| if i / cols == i % cols { -1.0 } else { 0.0 })
            .collect();
        match gptq(
            "model.layers.3.self_attn.q_proj",
            &w,
            rows,
            cols,
            &neg,
            &cfg,
        ) {
            Err(Error::NotPositiveDefinite { module, .. }) => {
                assert_eq!(module, "model.layers.3.self_attn.q_proj");
            }
            other => panic!("expected NotPositiveDefinite, got {other:?}"),
        }
        let mut nan = h.clone();
        nan[5] = f32::NAN;
        assert!(matches!(
            gptq("m", &w, rows, cols, &nan, &cfg),
            Err(Error::NonFinite {
                what: "Hessian",
                ..
            })
        ));
    }

    #[test]
    fn dead_columns_are_zeroed() {
        let (rows, cols) = (4, 16);
        let (w, _, mut h) = setup(rows, cols, 64, 4);
        for k in 0..cols {
            h[3 * cols + k] = 0.0;
            h[k * cols + 3] = 0.0;
        }
        let r = gptq(
            "m",
            &w,
            rows,
            cols,
            &h,
            &GptqConfig {
                group_size: Some(8),
                ..GptqConfig::default()
            },
        )
        .unwrap();
        assert_eq!(r.dead_columns, 1);
        assert!((0..rows).all(|o| r.q[o * cols + 3] == 0));
    }

    #[test]
    fn same_result_for_any_thread_count() {
        let (rows, cols) = (64, 256);
        let (w, _, h) = setup(rows, cols, 256, 5);
        let cfg = GptqConfig {
            group_size: Some(64),
            block_size: 32,
            ..GptqConfig::default()
        };
        let run = |t| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .unwrap()
                .install(|| gptq("m", &w, rows, cols, &h, &cfg).unwrap())
        };
        assert_eq!(run(1), run(3));
    }
}
