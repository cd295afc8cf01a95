//! The mixture-of-experts FFN of Mixtral and Qwen3-MoE blocks: a router picks each token's
//! top-k experts, whose SwiGLU outputs are summed with the routing weights.
//!
//! Sources: transformers 4.57 `MixtralSparseMoeBlock.forward` (`models/mixtral/
//! modeling_mixtral.py`) and `Qwen3MoeSparseMoeBlock.forward` (`models/qwen3_moe/
//! modeling_qwen3_moe.py`): `softmax(router_logits)` in float32, `torch.topk(·, top_k)`, the
//! top-k weights divided by their sum (Mixtral always, Qwen3-MoE when `norm_topk_prob`), each
//! expert run on the tokens routed to it and its output scaled by the weight and added. llama.cpp
//! `llama-graph.cpp` `build_moe_ffn` computes the same (softmax gating, `ggml_top_k`, `norm_w`).

use qforge_convert::{FfnProj, Gating, LayerTensor, TensorId};

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
    /// How the router's logits weight the experts.
    pub gating: Gating,
    /// `[gate, up, down]` of the shared expert (Llama 4), run on every token.
    pub shared: Option<[L; 3]>,
    /// Experts read one at a time by the forward ([`ffn_streamed`]) instead of held here:
    /// `experts` is then empty.
    pub streamed: Option<StreamedExperts>,
}

/// Where [`ffn_streamed`] reads a block's experts from, one at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamedExperts {
    /// The block.
    pub index: u32,
    /// Its experts.
    pub n_expert: usize,
}

impl MoeWeights {
    /// Block `index`'s router and experts from `model`, dequantized.
    pub fn load(model: &Model, index: u32) -> Result<Self> {
        Self::load_with(model, index, false)
    }

    /// Block `index`'s router and shared expert from `model`, dequantized; its experts are
    /// left to [`ffn_streamed`], which dequantizes one at a time (a layer's peak is then its
    /// attention plus one expert, not every expert in f32).
    pub fn load_streamed(model: &Model, index: u32) -> Result<Self> {
        Self::load_with(model, index, true)
    }

    fn load_with(model: &Model, index: u32, streamed: bool) -> Result<Self> {
        let cfg = model.config();
        let moe = cfg.moe.as_ref().ok_or_else(|| Error::Unsupported {
            path: model.ckpt.path.clone(),
            reason: format!("block {index} has no experts"),
        })?;
        let router = model.norm(TensorId::Layer {
            index,
            kind: LayerTensor::Router,
        })?;
        let spec = cfg.family.spec().moe;
        let gating = spec.map_or(Gating::Softmax, |s| s.gating);
        let shared = if spec.is_some_and(|s| s.shared_expert) {
            let l = |proj| model.linear(index, LayerTensor::SharedExpert { proj });
            Some([l(FfnProj::Gate)?, l(FfnProj::Up)?, l(FfnProj::Down)?])
        } else {
            None
        };
        let n_expert = usize::try_from(moe.num_experts).unwrap_or(usize::MAX);
        let mut experts = Vec::new();
        if !streamed {
            experts.reserve(n_expert);
            for expert in 0..n_expert {
                experts.push(load_expert(model, index, expert)?);
            }
        }
        Ok(MoeWeights {
            router,
            experts,
            top_k: usize::try_from(moe.experts_per_tok).unwrap_or(usize::MAX),
            norm_topk: moe.norm_topk_prob,
            ffn: usize::try_from(moe.expert_ffn).unwrap_or(usize::MAX),
            gating,
            shared,
            streamed: streamed.then_some(StreamedExperts { index, n_expert }),
        })
    }

    /// The same weights in `f64`, or `None` when an expert quantizes its activations or the
    /// experts are streamed.
    pub fn to_f64(&self) -> Option<MoeWeights<f64, Dense<f64>>> {
        if self.streamed.is_some() {
            return None;
        }
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
            gating: self.gating,
            shared: match &self.shared {
                Some([g, u, d]) => Some([dense64(g)?, dense64(u)?, dense64(d)?]),
                None => None,
            },
            streamed: None,
        })
    }
}

/// Expert `expert`'s `[gate, up, down]` of block `index`, dequantized.
fn load_expert(model: &Model, index: u32, expert: usize) -> Result<[Linear; 3]> {
    let expert = u32::try_from(expert).unwrap_or(u32::MAX);
    let l = |proj| model.linear(index, LayerTensor::Expert { expert, proj });
    Ok([l(FfnProj::Gate)?, l(FfnProj::Up)?, l(FfnProj::Down)?])
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
    route_gated(logits, n_expert, top_k, norm, Gating::Softmax)
}

/// [`route`] with the family's gating: [`Gating::SigmoidInput`] picks the top-k logits and
/// weights each `sigmoid(logit)` (monotonic, so the same experts as the top-k of the
/// sigmoids).
pub fn route_gated<T: Real>(
    logits: &mut [T],
    n_expert: usize,
    top_k: usize,
    norm: bool,
    gating: Gating,
) -> Vec<(usize, T)> {
    let k = top_k.min(n_expert);
    let mut out = Vec::with_capacity(logits.len() / n_expert.max(1) * k);
    let mut order: Vec<usize> = (0..n_expert).collect();
    for row in logits.chunks_exact_mut(n_expert.max(1)) {
        match gating {
            Gating::Softmax => {
                softmax(row);
            }
            // Llama4Router.forward: sigmoid in float32 of the top-k logits
            Gating::SigmoidInput => {
                for v in row.iter_mut() {
                    *v = T::ONE / (T::ONE + (-*v).exp());
                }
            }
        }
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
    debug_assert!(m.streamed.is_none(), "streamed experts: use ffn_streamed");
    let n = m.experts.len();
    let r: Result<()> = ffn_with(m, n, x, t, hid, y, observe, &mut |e, run| {
        run(&m.experts[e]);
        Ok(())
    });
    debug_assert!(r.is_ok());
}

/// [`ffn`] of a block loaded with [`MoeWeights::load_streamed`]: each expert that any row is
/// routed to is dequantized from `model`, run on all its rows (all of `x`'s chunks at once) and
/// dropped before the next; the same arithmetic in the same order, so the same bits.
pub fn ffn_streamed(
    model: &Model,
    m: &MoeWeights,
    x: &[f32],
    t: usize,
    hid: usize,
    y: &mut [f32],
    observe: &mut dyn FnMut(&[LayerTensor], &[f32]),
) -> Result<()> {
    let Some(s) = m.streamed else {
        ffn(m, x, t, hid, y, observe);
        return Ok(());
    };
    ffn_with(m, s.n_expert, x, t, hid, y, observe, &mut |e, run| {
        let w = load_expert(model, s.index, e)?;
        run(&w);
        Ok(())
    })
}

/// `with_expert(e, run)` calls `run` with expert `e`'s `[gate, up, down]`.
type WithExpert<'a, L> = dyn FnMut(usize, &mut dyn FnMut(&[L; 3])) -> Result<()> + 'a;

/// The routing, the routed experts (through `with_expert`) and the shared expert of [`ffn`].
#[allow(clippy::too_many_arguments)]
fn ffn_with<T: Real, L: Project<T>>(
    m: &MoeWeights<T, L>,
    n: usize,
    x: &[T],
    t: usize,
    hid: usize,
    y: &mut [T],
    observe: &mut dyn FnMut(&[LayerTensor], &[T]),
    with_expert: &mut WithExpert<'_, L>,
) -> Result<()> {
    let mut logits = vec![T::ZERO; t * n];
    observe(&[LayerTensor::Router], x);
    matmul_t(x, t, hid, &m.router, n, &mut logits);
    let k = m.top_k.min(n);
    let routes = route_gated(&mut logits, n, k, m.norm_topk, m.gating);
    let scale_input = m.gating == Gating::SigmoidInput;
    y.fill(T::ZERO);
    let mut rows: Vec<(usize, T)> = Vec::new();
    for e in 0..n {
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
        for &(tok, w) in &rows {
            let row = &x[tok * hid..(tok + 1) * hid];
            if scale_input {
                // Llama4TextMoe.forward: routed_in = hidden_states * router_scores
                xe.extend(row.iter().map(|&v| v * w));
            } else {
                xe.extend_from_slice(row);
            }
        }
        let kind = |proj| LayerTensor::Expert {
            expert: e as u32,
            proj,
        };
        observe(&[kind(FfnProj::Gate), kind(FfnProj::Up)], &xe);
        let mut o = vec![T::ZERO; r * hid];
        let mut down_in: Vec<T> = Vec::new();
        with_expert(e, &mut |[gate, up, down]| {
            down_in = swiglu_of(gate, up, &xe, r, m.ffn);
            down.project(&down_in, r, &mut o);
        })?;
        // shown after the expert ran: its down input exists only then
        observe(&[kind(FfnProj::Down)], &down_in);
        for (&(tok, w), orow) in rows.iter().zip(o.chunks_exact(hid)) {
            let w = if scale_input { T::ONE } else { w };
            for (a, b) in y[tok * hid..(tok + 1) * hid].iter_mut().zip(orow) {
                *a += *b * w;
            }
        }
    }
    if let Some([gate, up, down]) = &m.shared {
        // Llama4TextMoe.forward: out = shared_expert(hidden_states) + the routed sum
        let kind = |proj| LayerTensor::SharedExpert { proj };
        observe(&[kind(FfnProj::Gate), kind(FfnProj::Up)], x);
        let g = swiglu_of(gate, up, x, t, m.ffn);
        observe(&[kind(FfnProj::Down)], &g);
        let mut o = vec![T::ZERO; t * hid];
        down.project(&g, t, &mut o);
        for (a, b) in y.iter_mut().zip(&o) {
            *a += *b;
        }
    }
    Ok(())
}

/// `silu(gate·x) ⊙ up·x` of `r` rows, `[r, ffn]`.
fn swiglu_of<T: Real, L: Project<T>>(gate: &L, up: &L, x: &[T], r: usize, ffn: usize) -> Vec<T> {
    let mut g = vec![T::ZERO; r * ffn];
    let mut u = vec![T::ZERO; r * ffn];
    gate.project(x, r, &mut g);
    up.project(x, r, &mut u);
    swiglu(&mut g, &u);
    g
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
    fn llama4_routing_is_sigmoid_of_the_top_logit_scaling_the_input() {
        // Llama4Router: top-1 of the logits, weight sigmoid(logit), never renormalised
        let mut l = vec![0.5f64, 2.0, -1.0];
        let r = route_gated(&mut l, 3, 1, false, Gating::SigmoidInput);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].0, 1);
        assert!((r[0].1 - 1.0 / (1.0 + (-2.0f64).exp())).abs() < 1e-15);
        // softmax would weight it exp(2) / (exp(0.5) + exp(2) + exp(-1)): the wrong router
        let mut l = vec![0.5f64, 2.0, -1.0];
        let s = route_gated(&mut l, 3, 1, false, Gating::Softmax);
        assert_eq!(s[0].0, 1);
        assert!((s[0].1 - r[0].1).abs() > 0.05);
        // one expert (gate w_g, up w_u, down w_d of width 1), a shared expert; the routed
        // expert sees x·w: silu(w_g·x·w)·(w_u·x·w)·w_d, not w·silu(w_g·x)·(w_u·x)·w_d
        let lin = |w: Vec<f64>, out, inp| Dense { w, out, inp };
        let expert = || {
            [
                lin(vec![1.0], 1, 1),
                lin(vec![2.0], 1, 1),
                lin(vec![3.0], 1, 1),
            ]
        };
        let m = MoeWeights {
            router: vec![1.0],
            experts: vec![expert()],
            top_k: 1,
            norm_topk: false,
            ffn: 1,
            gating: Gating::SigmoidInput,
            shared: Some(expert()),
            streamed: None,
        };
        let x = 0.7f64;
        let mut y = vec![0.0];
        ffn(&m, &[x], 1, 1, &mut y, &mut |_, _| {});
        let silu = |v: f64| v / (1.0 + (-v).exp());
        let w = 1.0 / (1.0 + (-x).exp());
        let want = silu(x * w) * (2.0 * x * w) * 3.0 + silu(x) * (2.0 * x) * 3.0;
        assert!((y[0] - want).abs() < 1e-12, "{} vs {want}", y[0]);
        let output_scaled = w * silu(x) * (2.0 * x) * 3.0 + silu(x) * (2.0 * x) * 3.0;
        assert!((y[0] - output_scaled).abs() > 1e-3);
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
            gating: Gating::Softmax,
            shared: None,
            streamed: None,
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
