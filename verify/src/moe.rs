//! The mixture-of-experts FFN of Mixtral and Qwen3-MoE blocks: a router picks each token's
//! top-k experts, whose SwiGLU outputs are summed with the routing weights.
//!
//! Sources: transformers 4.57 `MixtralSparseMoeBlock.forward` (`models/mixtral/
//! modeling_mixtral.py`) and `Qwen3MoeSparseMoeBlock.forward` (`models/qwen3_moe/
//! modeling_qwen3_moe.py`): `softmax(router_logits)` in float32, `torch.topk(·, top_k)`, the
//! top-k weights divided by their sum (Mixtral always, Qwen3-MoE when `norm_topk_prob`), each
//! expert run on the tokens routed to it and its output scaled by the weight and added. llama.cpp
//! `llama-graph.cpp` `build_moe_ffn` computes the same (softmax gating, `ggml_top_k`, `norm_w`).

use qforge_convert::{FfnProj, LayerTensor, TensorId};

use crate::error::{Error, Result};
use crate::matmul::matmul_t;
use crate::model::{Dense, Linear, Model, Project};
use crate::ops::{softmax, swiglu};
use crate::real::Real;

/// One block's experts and router.
pub struct MoeWeights<T = f32, L = Linear> {
    /// Router `[n_expert, hidden]` (never quantized).
    pub router: Vec<T>,
    /// `[gate, up, down]` of each expert.
    pub experts: Vec<[L; 3]>,
    /// Experts per token.
    pub top_k: usize,
    /// Renormalise the top-k weights to sum 1.
    pub norm_topk: bool,
    /// One expert's FFN width.
    pub ffn: usize,
}

impl MoeWeights {
    /// Block `index`'s router and experts from `model`, dequantized.
    pub fn load(model: &Model, index: u32) -> Result<Self> {
        let cfg = model.config();
        let moe = cfg.moe.as_ref().ok_or_else(|| Error::Unsupported {
            path: model.ckpt.path.clone(),
            reason: format!("block {index} has no experts"),
        })?;
        let router = model.norm(TensorId::Layer {
            index,
            kind: LayerTensor::Router,
        })?;
        let mut experts = Vec::with_capacity(moe.num_experts as usize);
        for expert in 0..moe.num_experts as u32 {
            let l = |proj| model.linear(index, LayerTensor::Expert { expert, proj });
            experts.push([l(FfnProj::Gate)?, l(FfnProj::Up)?, l(FfnProj::Down)?]);
        }
        Ok(MoeWeights {
            router,
            experts,
            top_k: usize::try_from(moe.experts_per_tok).unwrap_or(usize::MAX),
            norm_topk: moe.norm_topk_prob,
            ffn: usize::try_from(moe.expert_ffn).unwrap_or(usize::MAX),
        })
    }

    /// The same weights in `f64`, or `None` when an expert quantizes its activations.
    pub fn to_f64(&self) -> Option<MoeWeights<f64, Dense<f64>>> {
        let experts = self
            .experts
            .iter()
            .map(|[g, u, d]| Some([dense64(g)?, dense64(u)?, dense64(d)?]))
            .collect::<Option<Vec<_>>>()?;
        Some(MoeWeights {
            router: self.router.iter().map(|&v| f64::from(v)).collect(),
            experts,
            top_k: self.top_k,
            norm_topk: self.norm_topk,
            ffn: self.ffn,
        })
    }
}

fn dense64(l: &Linear) -> Option<Dense<f64>> {
    matches!(
        l.act,
        crate::model::ActQuant::None
            | crate::model::ActQuant::Ggml(crate::actquant::GgmlActType::F32)
    )
    .then(|| Dense {
        w: l.w.iter().map(|&v| f64::from(v)).collect(),
        out: l.out,
        inp: l.inp,
    })
}

/// The experts token rows are routed to: per token its `top_k` experts (descending weight;
/// equal weights: the lower expert first, as `torch.topk` returns them on CPU) and weights.
pub fn route<T: Real>(
    logits: &mut [T],
    n_expert: usize,
    top_k: usize,
    norm: bool,
) -> Vec<(usize, T)> {
    let k = top_k.min(n_expert);
    let mut out = Vec::with_capacity(logits.len() / n_expert.max(1) * k);
    let mut order: Vec<usize> = (0..n_expert).collect();
    for row in logits.chunks_exact_mut(n_expert.max(1)) {
        softmax(row);
        order.sort_by(|&a, &b| {
            row[b]
                .partial_cmp(&row[a])
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.cmp(&b))
        });
        let picked = &order[..k];
        let sum = picked.iter().fold(T::ZERO, |s, &e| s + row[e]);
        for &e in picked {
            let w = if norm { row[e] / sum } else { row[e] };
            out.push((e, w));
        }
        order.sort_unstable();
    }
    out
}

/// The MoE FFN of `x` (`[t, hidden]`, normed) into `y` (`[t, hidden]`, overwritten). Each
/// expert sees the rows routed to it, gathered; `observe` is shown them with the expert's
/// gate/up, then its down projection's input.
pub fn ffn<T: Real, L: Project<T>>(
    m: &MoeWeights<T, L>,
    x: &[T],
    t: usize,
    hid: usize,
    y: &mut [T],
    observe: &mut dyn FnMut(&[LayerTensor], &[T]),
) {
    let n = m.experts.len();
    let mut logits = vec![T::ZERO; t * n];
    observe(&[LayerTensor::Router], x);
    matmul_t(x, t, hid, &m.router, n, &mut logits);
    let k = m.top_k.min(n);
    let routes = route(&mut logits, n, k, m.norm_topk);
    y.fill(T::ZERO);
    let mut rows: Vec<(usize, T)> = Vec::new();
    for (e, [gate, up, down]) in m.experts.iter().enumerate() {
        rows.clear();
        rows.extend(
            routes
                .iter()
                .enumerate()
                .filter(|(_, r)| r.0 == e)
                .map(|(i, r)| (i / k.max(1), r.1)),
        );
        if rows.is_empty() {
            continue;
        }
        let r = rows.len();
        let mut xe = Vec::with_capacity(r * hid);
        for &(tok, _) in &rows {
            xe.extend_from_slice(&x[tok * hid..(tok + 1) * hid]);
        }
        let kind = |proj| LayerTensor::Expert {
            expert: e as u32,
            proj,
        };
        observe(&[kind(FfnProj::Gate), kind(FfnProj::Up)], &xe);
        let mut g = vec![T::ZERO; r * m.ffn];
        let mut u = vec![T::ZERO; r * m.ffn];
        gate.project(&xe, r, &mut g);
        up.project(&xe, r, &mut u);
        swiglu(&mut g, &u);
        observe(&[kind(FfnProj::Down)], &g);
        let mut o = vec![T::ZERO; r * hid];
        down.project(&g, r, &mut o);
        for (&(tok, w), orow) in rows.iter().zip(o.chunks_exact(hid)) {
            for (a, b) in y[tok * hid..(tok + 1) * hid].iter_mut().zip(orow) {
                *a += *b * w;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_picks_top_k_and_normalises() {
        // softmax of [0, ln 2, ln 3, 0] = [1, 2, 3, 1]/7
        let mut l = vec![0f64, 2f64.ln(), 3f64.ln(), 0.0];
        let r = route(&mut l, 4, 2, true);
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].0, r[1].0), (2, 1));
        assert!((r[0].1 - 0.6).abs() < 1e-12 && (r[1].1 - 0.4).abs() < 1e-12);
        let mut l = vec![0f64, 2f64.ln(), 3f64.ln(), 0.0];
        let r = route(&mut l, 4, 2, false);
        assert!((r[0].1 - 3.0 / 7.0).abs() < 1e-12 && (r[1].1 - 2.0 / 7.0).abs() < 1e-12);
        // ties: the lower expert first
        let mut l = vec![1f64, 5.0, 5.0, 1.0];
        let r = route(&mut l, 4, 1, true);
        assert_eq!(r, vec![(1, 1.0)]);
    }

    #[test]
    fn ffn_is_the_weighted_sum_of_the_chosen_experts() {
        // 2 tokens, hidden 2, 3 experts of width 1 with identity-like weights
        let ex = |s: f64| {
            [
                Dense {
                    w: vec![s, 0.0],
                    out: 1,
                    inp: 2,
                },
                Dense {
                    w: vec![1.0, 1.0],
                    out: 1,
                    inp: 2,
                },
                Dense {
                    w: vec![1.0, -1.0],
                    out: 2,
                    inp: 1,
                },
            ]
        };
        let m = MoeWeights {
            router: vec![1.0, 0.0, 0.0, 1.0, -1.0, -1.0],
            experts: vec![ex(1.0), ex(2.0), ex(3.0)],
            top_k: 2,
            norm_topk: true,
            ffn: 1,
        };
        let x = vec![1.0f64, 0.5, -0.25, 2.0];
        let mut y = vec![0.0; 4];
        ffn(&m, &x, 2, 2, &mut y, &mut |_, _| {});
        let mut want = vec![0.0; 4];
        for tok in 0..2 {
            let xr = &x[tok * 2..tok * 2 + 2];
            let mut p: Vec<f64> = (0..3)
                .map(|e| m.router[e * 2] * xr[0] + m.router[e * 2 + 1] * xr[1])
                .collect();
            let mx = p.iter().copied().fold(f64::MIN, f64::max);
            for v in &mut p {
                *v = (*v - mx).exp();
            }
            let s: f64 = p.iter().sum();
            for v in &mut p {
                *v /= s;
            }
            let mut idx = [0usize, 1, 2];
            idx.sort_by(|&a, &b| p[b].partial_cmp(&p[a]).unwrap());
            let z = p[idx[0]] + p[idx[1]];
            for &e in &idx[..2] {
                let g = (e as f64 + 1.0) * xr[0];
                let u = xr[0] + xr[1];
                let h = g / (1.0 + (-g).exp()) * u;
                want[tok * 2] += p[e] / z * h;
                want[tok * 2 + 1] -= p[e] / z * h;
            }
        }
        for (a, b) in y.iter().zip(&want) {
            assert!((a - b).abs() < 1e-12, "{y:?} vs {want:?}");
        }
    }
}
