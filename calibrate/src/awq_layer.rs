//! AWQ on one decoder layer ([`awq_layer`]): capture each mapping's input with the original
//! weights, search the scales of each mapping in llm-compressor's order, fold them into the
//! layer, then run the folded, *unquantized* layer for the next layer's inputs
//! (llm-compressor calibrates and propagates under `DisableQuantization`; AWQ only rescales).
//!
//! The losses are computed by verify's own modules ([`self_attention`], [`feed_forward`]) run
//! with the candidate weights: the forward exists once.
//!
//! Mixture-of-experts blocks take llm-compressor's MoE mappings (modifiers/transform/awq/
//! mappings.py `_moe_default_mappings` for Qwen3-MoE, `_llama4_default_mappings` for Llama 4;
//! Mixtral is not in `AWQ_MAPPING_REGISTRY`, and its `w1`/`w3`/`w2` names match none of the
//! default mappings, so it gets the same MoE mappings with its names):
//! * post_attention_layernorm → the router, every expert's gate and up (and the shared
//!   expert's): the statistic is over every token (the hook sits on the router, the first
//!   balance layer); the loss is on the whole block's output. The router has no quantization
//!   scheme, so the search neither quantizes it nor counts it in the weight mean, and routes
//!   with its original weights (`_compute_best_scale` patches only `balance_layers_to_patch`);
//!   the fold multiplies its columns by the scales like any balance layer (`_smooth`), so the
//!   folded block routes as before.
//! * each expert's up → its down, on the rows that expert saw (routed rows, or every token
//!   with [`ExpertTokens::All`]); an expert that saw no row keeps scale 1 (no mapping). The
//!   shared expert sees every token.

use qforge_convert::{FfnProj, LayerTensor, TensorId};
use qforge_quantize::layout::hf_module;
use qforge_verify::eval::{feed_forward, self_attention, AttnProjs, DenseRef, FfnProjs};
use qforge_verify::moe::MoeWeights;
use qforge_verify::ops::RopeTable;
use qforge_verify::{LayerWeights, Linear, Model};

use crate::awq::{self, ActStats, AwqConfig, LayerScales, SearchResult};
use crate::engine::{layer_forward, layer_forward_moe, Site};
use crate::error::Result;
use crate::moe::{expert_inputs, ExpertTokens};
use crate::output::AwqMapping;

fn dense(w: &[f32], out: usize, inp: usize) -> DenseRef<'_, f32> {
    DenseRef { w, out, inp }
}

fn like<'a>(l: &Linear, w: &'a [f32]) -> DenseRef<'a, f32> {
    dense(w, l.out, l.inp)
}

/// `y = x·Wᵀ` for `x.len() / inp` tokens.
fn linear(x: &[f32], inp: usize, w: &[f32], out: usize) -> Vec<f32> {
    use qforge_verify::Project;
    let t = x.len() / inp.max(1);
    let mut y = vec![0f32; t * out];
    dense(w, out, inp).project(x, t, &mut y);
    y
}

/// The self_attn module's output for normed inputs `x` (`[samples·seq, hidden]`) with the
/// q/k/v/o weights `w`.
fn attn_loss_out(
    model: &Model,
    lw: &LayerWeights,
    rope: &RopeTable,
    x: &[f32],
    seq: usize,
    w: [&[f32]; 4],
) -> Vec<f32> {
    let p = AttnProjs {
        q: &like(&lw.q, w[0]),
        k: &like(&lw.k, w[1]),
        v: &like(&lw.v, w[2]),
        o: &like(&lw.o, w[3]),
    };
    let mut y = vec![0f32; x.len()];
    self_attention(model, lw, rope, x, seq, &p, &mut y, &mut |_, _| {});
    y
}

/// The feed-forward module's output for normed inputs `x`: the dense MLP with gate/up `gu`
/// (`[gate, up]`), or the MoE block with each expert's gate/up from `gu` (every expert's gate,
/// every expert's up, then the shared expert's gate and up); down projections and router as
/// in `lw`.
fn ffn_loss_out(lw: &LayerWeights, x: &[f32], gu: &[&[f32]]) -> Vec<f32> {
    let hid = lw.q.inp;
    let t = x.len() / hid.max(1);
    let mut y = vec![0f32; x.len()];
    let Some(m) = &lw.moe else {
        let p = FfnProjs::Dense {
            gate: &like(&lw.gate, gu[0]),
            up: &like(&lw.up, gu[1]),
            down: &like(&lw.down, &lw.down.w),
            ffn: lw.gate.out,
        };
        feed_forward(&p, x, t, hid, &mut y, &mut |_, _| {});
        return y;
    };
    let n = m.experts.len();
    let cand = MoeWeights {
        router: m.router.clone(),
        experts: (0..n)
            .map(|e| {
                let [eg, eu, ed] = &m.experts[e];
                [like(eg, gu[e]), like(eu, gu[n + e]), like(ed, &ed.w)]
            })
            .collect(),
        top_k: m.top_k,
        norm_topk: m.norm_topk,
        ffn: m.ffn,
        gating: m.gating,
        shared: m
            .shared
            .as_ref()
            .map(|[g, u, d]| [like(g, gu[2 * n]), like(u, gu[2 * n + 1]), like(d, &d.w)]),
        streamed: None,
    };
    feed_forward(&FfnProjs::Moe(&cand), x, t, hid, &mut y, &mut |_, _| {});
    y
}

/// Every input the layer's mappings read, captured over all samples with the original weights.
#[derive(Default)]
struct Captured {
    /// q/k/v input.
    qkv: Vec<f32>,
    /// o_proj input (when the v → o mapping applies).
    o: Vec<f32>,
    /// The FFN's normed input (the MLP's, or every token's at the router).
    ffn: Vec<f32>,
    /// down_proj's input of a dense MLP.
    down: Vec<f32>,
    /// Per expert slot (the shared expert last), its down projection's input rows.
    expert_down: Vec<Vec<f32>>,
}

fn capture(
    model: &Model,
    lw: &LayerWeights,
    rope: &RopeTable,
    h: &[f32],
    seq: usize,
    tokens: ExpertTokens,
) -> Captured {
    let hid = lw.q.inp;
    let vo = lw.v.out == lw.o.inp;
    let slots = lw
        .moe
        .as_ref()
        .map_or(0, |m| m.experts.len() + usize::from(m.shared.is_some()));
    let mut c = Captured {
        expert_down: vec![Vec::new(); slots],
        ..Captured::default()
    };
    let mut scratch = vec![0f32; seq * hid];
    for hc in h.chunks(seq * hid) {
        scratch.copy_from_slice(hc);
        let (mut qkv, mut o, mut ffn, mut down) = (
            std::mem::take(&mut c.qkv),
            std::mem::take(&mut c.o),
            std::mem::take(&mut c.ffn),
            std::mem::take(&mut c.down),
        );
        // a MoE block's normed input comes from the router's observation, a dense MLP's from
        // gate/up's: never both in one layer
        let mut moe_in = Vec::new();
        let ed = &mut c.expert_down;
        layer_forward_moe(
            model,
            lw,
            rope,
            &mut scratch,
            seq,
            &mut |site, x| match site {
                Site::Qkv => qkv.extend_from_slice(x),
                Site::O if vo => o.extend_from_slice(x),
                Site::O => {}
                Site::GateUp => ffn.extend_from_slice(x),
                Site::Down => down.extend_from_slice(x),
            },
            &mut |kinds, x| {
                if let Some(m) = &lw.moe {
                    if kinds.first() == Some(&LayerTensor::Router) {
                        moe_in.extend_from_slice(x);
                    }
                    expert_inputs(m, tokens, kinds, x, &mut |e, is_down, x| {
                        if let (true, Some(v)) = (is_down, ed.get_mut(e)) {
                            v.extend_from_slice(x);
                        }
                    });
                }
            },
        );
        ffn.extend_from_slice(&moe_in);
        (c.qkv, c.o, c.ffn, c.down) = (qkv, o, ffn, down);
    }
    c
}

/// AWQ on one decoder layer (see the module docs); `lw` gets the folded weights and `h` the
/// next layer's inputs. Returns the scales, the mappings searched and, in a MoE block, the
/// rows each expert saw.
#[allow(clippy::too_many_arguments)]
pub(crate) fn awq_layer(
    model: &Model,
    lw: &mut LayerWeights,
    rope: &RopeTable,
    h: &mut [f32],
    seq: usize,
    i: u32,
    a: &AwqConfig,
    tokens: ExpertTokens,
) -> Result<(LayerScales, Vec<AwqMapping>, Vec<u64>)> {
    let hid = lw.q.inp;
    let c = capture(model, lw, rope, h, seq, tokens);
    let rows: Vec<u64> = match &lw.moe {
        Some(m) => c.expert_down[..m.experts.len()]
            .iter()
            .map(|x| (x.len() / m.ffn.max(1)) as u64)
            .collect(),
        None => Vec::new(),
    };
    let name = |kind| hf_module(TensorId::Layer { index: i, kind });
    let stats = |x: &[f32], w: usize| {
        let mut s = ActStats::new(w);
        s.add(x);
        s.mean()
    };
    let mut scales = LayerScales::default();
    let mut maps = Vec::new();
    let mut record = |smooth: LayerTensor, balance: &[LayerTensor], r: &SearchResult| {
        maps.push(AwqMapping {
            smooth: name(smooth),
            balance: balance.iter().map(|&k| name(k)).collect(),
            result: r.clone(),
        });
    };
    let finite = |v: &[f32]| v.iter().all(|x| x.is_finite());

    // input_layernorm -> q, k, v; loss on self_attn's output
    let ws = [&lw.q.w[..], &lw.k.w, &lw.v.w, &lw.o.w];
    let fp = attn_loss_out(model, lw, rope, &c.qkv, seq, ws);
    if finite(&fp) {
        let r = awq::search(
            &name(LayerTensor::AttnNorm),
            &ws[..3],
            hid,
            &stats(&c.qkv, hid),
            a,
            &mut |wq| {
                let w = [&wq[0][..], &wq[1], &wq[2], &lw.o.w];
                Ok(awq::mse(
                    &fp,
                    &attn_loss_out(model, lw, rope, &c.qkv, seq, w),
                ))
            },
        )?;
        record(
            LayerTensor::AttnNorm,
            &[LayerTensor::Q, LayerTensor::K, LayerTensor::V],
            &r,
        );
        scales.attn = Some(r.scales);
    }
    // v_proj -> o_proj, only when the shapes agree (not under GQA); loss on o_proj's output
    if !c.o.is_empty() {
        if let Some(r) = linear_mapping(&name(LayerTensor::V), &c.o, &lw.o, a)? {
            record(LayerTensor::V, &[LayerTensor::O], &r);
            scales.vo = Some(r.scales);
        }
    }
    // post_attention_layernorm -> gate, up (every expert's, the router folded); loss on the
    // feed-forward module's output
    let (gu, balance) = ffn_balance(lw);
    let fp = ffn_loss_out(lw, &c.ffn, &gu);
    if finite(&fp) {
        let r = awq::search(
            &name(LayerTensor::FfnNorm),
            &gu,
            hid,
            &stats(&c.ffn, hid),
            a,
            &mut |wq| {
                let w: Vec<&[f32]> = wq.iter().map(Vec::as_slice).collect();
                Ok(awq::mse(&fp, &ffn_loss_out(lw, &c.ffn, &w)))
            },
        )?;
        record(LayerTensor::FfnNorm, &balance, &r);
        scales.mlp = Some(r.scales);
    }
    // up_proj -> down_proj (per expert on its rows); loss on down_proj's output
    match &lw.moe {
        None => {
            if let Some(r) = linear_mapping(&name(LayerTensor::Up), &c.down, &lw.down, a)? {
                record(LayerTensor::Up, &[LayerTensor::Down], &r);
                scales.up_down = Some(r.scales);
            }
        }
        Some(m) => {
            for (slot, x) in c.expert_down.iter().enumerate() {
                let (up, down) = expert_slot(slot, m.experts.len());
                let lin = if slot < m.experts.len() {
                    &m.experts[slot][2]
                } else if let Some([_, _, d]) = &m.shared {
                    d
                } else {
                    continue;
                };
                if x.is_empty() {
                    continue;
                }
                if let Some(r) = linear_mapping(&name(up), x, lin, a)? {
                    record(up, &[down], &r);
                    scales.set_up_down(up, r.scales);
                }
            }
        }
    }
    drop(c);
    fold(lw, &scales)?;
    for hc in h.chunks_mut(seq * hid) {
        layer_forward(model, lw, rope, hc, seq, &mut |_, _| {});
    }
    Ok((scales, maps, rows))
}

/// The up and down kinds of expert slot `slot` (the shared expert after the `n` experts).
fn expert_slot(slot: usize, n: usize) -> (LayerTensor, LayerTensor) {
    if slot < n {
        let e = |proj| LayerTensor::Expert {
            expert: slot as u32,
            proj,
        };
        (e(FfnProj::Up), e(FfnProj::Down))
    } else {
        let e = |proj| LayerTensor::SharedExpert { proj };
        (e(FfnProj::Up), e(FfnProj::Down))
    }
}

/// The balance weights of post_attention_layernorm's mapping, in llm-compressor's order (every
/// gate, then every up; the router, which has no quantization scheme, is folded but neither
/// quantized nor searched), and the balance modules the mapping names.
fn ffn_balance(lw: &LayerWeights) -> (Vec<&[f32]>, Vec<LayerTensor>) {
    let Some(m) = &lw.moe else {
        return (
            vec![&lw.gate.w, &lw.up.w],
            vec![LayerTensor::Gate, LayerTensor::Up],
        );
    };
    let mut w: Vec<&[f32]> = Vec::new();
    let mut kinds = vec![LayerTensor::Router];
    for p in [FfnProj::Gate, FfnProj::Up] {
        let i = p as usize;
        w.extend(m.experts.iter().map(|e| &e[i].w[..]));
        kinds.extend((0..m.experts.len()).map(|e| LayerTensor::Expert {
            expert: e as u32,
            proj: p,
        }));
    }
    if let Some(s) = &m.shared {
        w.extend([&s[0].w[..], &s[1].w]);
        kinds.extend([FfnProj::Gate, FfnProj::Up].map(|proj| LayerTensor::SharedExpert { proj }));
    }
    (w, kinds)
}

/// A mapping whose parent is the one balance linear `lin` reading `x`: the search, or `None`
/// when the unquantized output is not finite.
fn linear_mapping(
    smooth: &str,
    x: &[f32],
    lin: &Linear,
    a: &AwqConfig,
) -> Result<Option<SearchResult>> {
    let (inp, out) = (lin.inp, lin.out);
    let fp = linear(x, inp, &lin.w, out);
    if !fp.iter().all(|v| v.is_finite()) {
        return Ok(None);
    }
    let mut s = ActStats::new(inp);
    s.add(x);
    awq::search(smooth, &[&lin.w], inp, &s.mean(), a, &mut |wq| {
        Ok(awq::mse(&fp, &linear(x, inp, &wq[0], out)))
    })
    .map(Some)
}

/// Fold `scales` into the layer's weights.
fn fold(lw: &mut LayerWeights, scales: &LayerScales) -> Result<()> {
    let n1 = lw.attn_norm.len();
    scales.apply(LayerTensor::AttnNorm, &mut lw.attn_norm, n1)?;
    let n2 = lw.ffn_norm.len();
    scales.apply(LayerTensor::FfnNorm, &mut lw.ffn_norm, n2)?;
    let mut lins = vec![
        (LayerTensor::Q, &mut lw.q),
        (LayerTensor::K, &mut lw.k),
        (LayerTensor::V, &mut lw.v),
        (LayerTensor::O, &mut lw.o),
    ];
    if lw.moe.is_none() {
        lins.extend([
            (LayerTensor::Gate, &mut lw.gate),
            (LayerTensor::Up, &mut lw.up),
            (LayerTensor::Down, &mut lw.down),
        ]);
    }
    for (kind, lin) in lins {
        scales.apply(kind, &mut lin.w, lin.inp)?;
    }
    if let Some([_, _, bv]) = &mut lw.qkv_bias {
        scales.apply(LayerTensor::VBias, bv, 1)?;
    }
    if let Some(m) = &mut lw.moe {
        let hid = m.router.len() / m.experts.len().max(1);
        scales.apply(LayerTensor::Router, &mut m.router, hid)?;
        for (e, ex) in m.experts.iter_mut().enumerate() {
            for (p, lin) in FfnProj::ALL.into_iter().zip(ex.iter_mut()) {
                let kind = LayerTensor::Expert {
                    expert: e as u32,
                    proj: p,
                };
                scales.apply(kind, &mut lin.w, lin.inp)?;
            }
        }
        if let Some(s) = &mut m.shared {
            for (proj, lin) in FfnProj::ALL.into_iter().zip(s.iter_mut()) {
                scales.apply(LayerTensor::SharedExpert { proj }, &mut lin.w, lin.inp)?;
            }
        }
    }
    Ok(())
}
