//! Layer-major evaluation (DESIGN.md "Verification", specs/gpu.md Appendix B): every
//! evaluation token of a batch of chunks passes layer `i` before layer `i+1` is dequantized,
//! so each weight is dequantized once per batch and memory holds one layer plus the
//! activations. A verify run steps the base and the quantized model through the layers in
//! lockstep and measures how far their hidden states drift apart after each layer.
//!
//! The weights arrive through [`crate::engine::stream_layers`] (layer `i+1` read on a helper
//! thread while layer `i` computes, `EvalOptions::prefetch`), the arithmetic runs on a
//! [`crate::backend::Backend`] (`EvalOptions::device`), and [`compare_run`] can read the base's
//! side back from a [`crate::basecache`] entry instead of computing it. None of the three
//! changes a result bit.

use qforge_quantize::dequant::WeightRead;
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::backend::{backend_for, Backend, Device};
use crate::basecache::{base_key, lookup, Layout, Lookup};
use crate::engine::{stream_layers, StreamStats};
use crate::error::{Error, Result};
use crate::metrics::{kld_row, log_softmax_nll, percentile, top1, Perplexity};
use crate::model::{LayerWeights, Linear, Llama4Layer, Model, Project};
use crate::ops::{attention, rms_norm, round_f16, swiglu, KeyMask, RopeTable};
use crate::progress::Progress;
use crate::real::Real;
use crate::tokenize::Chunks;
use qforge_convert::LayerTensor;

/// Evaluation settings shared by `perplexity` and `verify`.
#[derive(Debug, Clone, Default)]
pub struct EvalOptions {
    /// Chunks evaluated together layer-major (default: as many as fit the activation budget).
    pub batch_chunks: Option<usize>,
    /// Write chunk 0's scored logits (`[ctx−1−ctx/2, vocab]` f32 LE) here.
    pub logits_out: Option<std::path::PathBuf>,
    /// Report per-layer progress on stderr.
    pub progress: bool,
    /// Where the layers run ([`crate::backend`]).
    pub device: Device,
    /// Read and dequantize layer `i+1` on a helper thread while layer `i` computes
    /// ([`crate::engine`]); changes no result bit.
    pub prefetch: bool,
    /// `compare`: keep the base forward under this directory and reuse it when the same base,
    /// tokens and protocol come again ([`crate::basecache`]).
    pub base_cache: Option<std::path::PathBuf>,
}

/// Activation memory aimed for when `batch_chunks` is not given.
const ACT_BUDGET_BYTES: usize = 2 << 30;

fn batch_size(model: &Model, chunks: &Chunks, opts: &EvalOptions, models: usize) -> usize {
    if let Some(b) = opts.batch_chunks {
        return b.clamp(1, chunks.n);
    }
    let h = model.config().hidden_size as usize;
    let per_chunk = chunks.ctx * h * 4 * models;
    (ACT_BUDGET_BYTES / per_chunk.max(1)).clamp(1, chunks.n)
}

/// One layer over `h` (chunks of `ctx` tokens, in place), showing `observe` each linear's
/// input (`[ctx, inp]`, before any activation quantization) with the linears that read it,
/// chunk after chunk. The forward of [`perplexity`] and [`compare`]; calibration and the
/// importance matrix observe through it. It is the residual stream around the layer's two
/// modules, [`self_attention`] and [`feed_forward`], which calibrate's AWQ also evaluates
/// with candidate weights.
pub fn run_layer_observed<T: Real, L: Project<T>>(
    model: &Model,
    lw: &LayerWeights<T, L>,
    rope: &RopeTable,
    h: &mut [T],
    ctx: usize,
    observe: &mut dyn FnMut(&[LayerTensor], &[T]),
) {
    let cfg = model.config();
    let hid = cfg.hidden_size as usize;
    let eps = T::of_f64(cfg.rms_norm_eps);
    let ggml = model.opts.ggml_cpu_ops;
    let glu: fn(&mut [T], &[T]) = if ggml {
        crate::ggml_cpu::swiglu_as
    } else {
        swiglu
    };
    let mut x = vec![T::ZERO; ctx * hid];
    let mut y = vec![T::ZERO; ctx * hid];
    let attn = AttnProjs {
        q: &lw.q,
        k: &lw.k,
        v: &lw.v,
        o: &lw.o,
    };
    let ffn = match &lw.moe {
        Some(m) => FfnProjs::Moe(m),
        None => FfnProjs::Dense {
            gate: &lw.gate,
            up: &lw.up,
            down: &lw.down,
            ffn: cfg.intermediate_size as usize,
        },
    };
    for hc in h.chunks_mut(ctx * hid) {
        x.copy_from_slice(hc);
        crate::ggml_cpu::rms_norm_as(ggml, &mut x, hid, &lw.attn_norm, eps);
        self_attention(model, lw, rope, &x, ctx, &attn, &mut y, observe);
        add(hc, &y);
        x.copy_from_slice(hc);
        crate::ggml_cpu::rms_norm_as(ggml, &mut x, hid, &lw.ffn_norm, eps);
        feed_forward_with(&ffn, &x, ctx, hid, &mut y, observe, glu);
        add(hc, &y);
    }
}

/// [`run_layer_observed`] of a layer whose experts are streamed
/// ([`Model::layer_streamed`]): attention chunk by chunk, then the MoE block over the rows of
/// every chunk at once ([`crate::moe::ffn_streamed`]), so each expert is dequantized once per
/// call and dropped before the next. Every row's arithmetic is that of
/// [`run_layer_observed`] (the projections, routing and per-row activation quantization are
/// row-independent; `observe` sees each linear's rows in the same token order), so the result
/// has the same bits. Other layers go to [`run_layer_observed`].
pub fn run_layer_streamed(
    model: &Model,
    lw: &LayerWeights,
    rope: &RopeTable,
    h: &mut [f32],
    ctx: usize,
    observe: &mut dyn FnMut(&[LayerTensor], &[f32]),
) -> Result<()> {
    let Some(m) = lw.moe.as_ref().filter(|m| m.streamed.is_some()) else {
        run_layer_observed(model, lw, rope, h, ctx, observe);
        return Ok(());
    };
    let cfg = model.config();
    let hid = cfg.hidden_size as usize;
    let eps = f32::of_f64(cfg.rms_norm_eps);
    let ggml = model.opts.ggml_cpu_ops;
    let attn = AttnProjs {
        q: &lw.q,
        k: &lw.k,
        v: &lw.v,
        o: &lw.o,
    };
    let mut x = vec![0f32; ctx * hid];
    let mut y = vec![0f32; ctx * hid];
    // post_attention_layernorm's output of every chunk: the MoE block's input
    let mut xf = vec![0f32; h.len()];
    for (hc, xc) in h.chunks_mut(ctx * hid).zip(xf.chunks_mut(ctx * hid)) {
        x.copy_from_slice(hc);
        crate::ggml_cpu::rms_norm_as(ggml, &mut x, hid, &lw.attn_norm, eps);
        self_attention(model, lw, rope, &x, ctx, &attn, &mut y, observe);
        add(hc, &y);
        xc.copy_from_slice(hc);
        crate::ggml_cpu::rms_norm_as(ggml, xc, hid, &lw.ffn_norm, eps);
    }
    let t = h.len() / hid.max(1);
    let mut yf = vec![0f32; h.len()];
    crate::moe::ffn_streamed(model, m, &xf, t, hid, &mut yf, observe)?;
    add(h, &yf);
    Ok(())
}

/// The q/k/v/o projections [`self_attention`] runs with: a layer's own, or candidate weights
/// (calibrate's AWQ search, [`DenseRef`]).
pub struct AttnProjs<'a, P> {
    /// `q_proj`.
    pub q: &'a P,
    /// `k_proj`.
    pub k: &'a P,
    /// `v_proj`.
    pub v: &'a P,
    /// `o_proj`.
    pub o: &'a P,
}

/// The projections [`feed_forward`] runs with: a dense SwiGLU MLP's gate/up/down, or a
/// mixture-of-experts block (router, experts, shared expert; [`crate::moe::ffn`]).
pub enum FfnProjs<'a, T, P> {
    /// `down(silu(gate·x) ⊙ up·x)`.
    Dense {
        /// `gate_proj`.
        gate: &'a P,
        /// `up_proj`.
        up: &'a P,
        /// `down_proj`.
        down: &'a P,
        /// The MLP's width (gate/up outputs).
        ffn: usize,
    },
    /// A mixture-of-experts block.
    Moe(&'a crate::moe::MoeWeights<T, P>),
}

/// A borrowed plain linear layer `[out, inp]` in `T` (no activation quantization): candidate
/// weights for [`self_attention`] and [`feed_forward`] without copying them.
pub struct DenseRef<'a, T> {
    /// Weights, `[out, inp]` row-major.
    pub w: &'a [T],
    /// Output features.
    pub out: usize,
    /// Input features.
    pub inp: usize,
}

impl<T: Real> Project<T> for DenseRef<'_, T> {
    fn project(&self, x: &[T], t: usize, y: &mut [T]) {
        crate::matmul::matmul_t(x, t, self.inp, self.w, self.out, y);
    }
}

/// The self-attention module (transformers `LlamaAttention.forward`, input_layernorm's output
/// to o_proj's output, before the residual) of `x`: `t = n·ctx` normed rows of `n` sequences
/// of `ctx` tokens. The projections run over all `t` rows at once, the attention
/// ([`attend`]: biases, q/k norms, RoPE, masks of the layer `lw`) per sequence; `y` (`[t,
/// hidden]`) is overwritten. `observe` sees the q/k/v input and o_proj's input.
#[allow(clippy::too_many_arguments)]
pub fn self_attention<T: Real, L, P: Project<T>>(
    model: &Model,
    lw: &LayerWeights<T, L>,
    rope: &RopeTable,
    x: &[T],
    ctx: usize,
    p: &AttnProjs<'_, P>,
    y: &mut [T],
    observe: &mut dyn FnMut(&[LayerTensor], &[T]),
) {
    let cfg = model.config();
    let (heads, kvh, hd) = (
        cfg.num_heads as usize,
        cfg.num_kv_heads as usize,
        cfg.head_dim as usize,
    );
    let t = x.len() / (cfg.hidden_size as usize).max(1);
    let (qw, kw) = (heads * hd, kvh * hd);
    let mut q = vec![T::ZERO; t * qw];
    let mut k = vec![T::ZERO; t * kw];
    let mut v = vec![T::ZERO; t * kw];
    let mut att = vec![T::ZERO; t * qw];
    observe(&[LayerTensor::Q, LayerTensor::K, LayerTensor::V], x);
    p.q.project(x, t, &mut q);
    p.k.project(x, t, &mut k);
    p.v.project(x, t, &mut v);
    for ((qc, kc), (vc, ac)) in q
        .chunks_mut(ctx * qw)
        .zip(k.chunks_mut(ctx * kw))
        .zip(v.chunks_mut(ctx * kw).zip(att.chunks_mut(ctx * qw)))
    {
        attend(model, lw, rope, qc, kc, vc, ctx, ac);
    }
    observe(&[LayerTensor::O], &att);
    p.o.project(&att, t, y);
}

/// The feed-forward module (post_attention_layernorm's output to the MLP's or MoE block's
/// output, before the residual) of `x` (`[t, hidden]`, normed) into `y` (`[t, hidden]`,
/// overwritten); `observe` sees each linear's input (per expert in a MoE block).
pub fn feed_forward<T: Real, P: Project<T>>(
    p: &FfnProjs<'_, T, P>,
    x: &[T],
    t: usize,
    hid: usize,
    y: &mut [T],
    observe: &mut dyn FnMut(&[LayerTensor], &[T]),
) {
    feed_forward_with(p, x, t, hid, y, observe, swiglu);
}

/// [`feed_forward`] with the dense MLP's SwiGLU given (ggml-cpu's under `--ggml-cpu-ops`).
fn feed_forward_with<T: Real, P: Project<T>>(
    p: &FfnProjs<'_, T, P>,
    x: &[T],
    t: usize,
    hid: usize,
    y: &mut [T],
    observe: &mut dyn FnMut(&[LayerTensor], &[T]),
    glu: fn(&mut [T], &[T]),
) {
    match p {
        FfnProjs::Moe(m) => crate::moe::ffn(m, x, t, hid, y, observe),
        FfnProjs::Dense {
            gate,
            up,
            down,
            ffn,
        } => {
            let mut g = vec![T::ZERO; t * ffn];
            let mut u = vec![T::ZERO; g.len()];
            observe(&[LayerTensor::Gate, LayerTensor::Up], x);
            gate.project(x, t, &mut g);
            up.project(x, t, &mut u);
            glu(&mut g, &u);
            observe(&[LayerTensor::Down], &g);
            down.project(&g, t, y);
        }
    }
}

/// Self-attention of one sequence of `ctx` tokens from its q/k/v projections (`[ctx, ·]`,
/// modified in place): the family's biases and q/k norms ([`qkv_extras`]), RoPE, the F16 KV
/// cache rounding when asked, causal (windowed where the layer slides) GQA into `att`
/// (`[ctx, heads·hd]`, o_proj's input). The one copy of this arithmetic: the forward and
/// calibrate's AWQ search both call it.
#[allow(clippy::too_many_arguments)]
pub fn attend<T: Real, L>(
    model: &Model,
    lw: &LayerWeights<T, L>,
    rope: &RopeTable,
    q: &mut [T],
    k: &mut [T],
    v: &mut [T],
    ctx: usize,
    att: &mut [T],
) {
    let cfg = model.config();
    let (heads, kvh, hd) = (
        cfg.num_heads as usize,
        cfg.num_kv_heads as usize,
        cfg.head_dim as usize,
    );
    let scale = T::ONE / T::of_f64(hd as f64).sqrt();
    qkv_extras(lw, q, k, v, hd, T::of_f64(cfg.rms_norm_eps));
    let mut mask = match lw.window {
        Some(w) => KeyMask::Window(w),
        None => KeyMask::Causal,
    };
    match lw.llama4 {
        None => {
            rope.apply(q, heads, model.rope_layout);
            rope.apply(k, kvh, model.rope_layout);
        }
        Some(l4) => {
            llama4_qk(
                &l4,
                rope,
                model.rope_layout,
                q,
                k,
                heads,
                kvh,
                hd,
                cfg.rms_norm_eps,
            );
            if let Some(c) = l4.chunk {
                mask = KeyMask::Chunk(c);
            }
        }
    }
    if model.opts.kv_f16 || model.opts.ggml_cpu_ops {
        round_f16(k);
        round_f16(v);
    }
    if model.opts.ggml_cpu_ops {
        if let (Some(qf), Some(kf), Some(vf)) = (T::as_f32(q), T::as_f32(k), T::as_f32(v)) {
            if let Some(out) = T::as_f32_mut(att) {
                let s = 1.0 / (hd as f32).sqrt(); // llama.cpp's kq_scale, in f32
                crate::ggml_cpu::flash_attn_ext(qf, kf, vf, ctx, heads, kvh, hd, s, mask, out);
                return;
            }
        }
    }
    attention(q, k, v, ctx, heads, kvh, hd, scale, mask, att);
}

/// Llama 4's q/k (transformers `Llama4TextAttention.forward`; llama.cpp src/models/llama4.cpp):
/// a RoPE block rotates them, then L2-normalises each head (`Llama4TextL2Norm`, eps
/// `rms_norm_eps`) where `use_qk_norm`; a NoPE block leaves k alone and scales q at position
/// `p` by the attention temperature `log1p(floor((p + 1) / floor_scale)) · attn_scale + 1`
/// (computed in f32, as torch does).
#[allow(clippy::too_many_arguments)]
fn llama4_qk<T: Real>(
    l4: &Llama4Layer,
    rope: &RopeTable,
    layout: crate::ops::RopeLayout,
    q: &mut [T],
    k: &mut [T],
    heads: usize,
    kvh: usize,
    hd: usize,
    eps: f64,
) {
    if l4.rope {
        rope.apply(q, heads, layout);
        rope.apply(k, kvh, layout);
        if l4.qk_l2_norm {
            let ones = vec![T::ONE; hd];
            rms_norm(q, hd, &ones, T::of_f64(eps));
            rms_norm(k, hd, &ones, T::of_f64(eps));
        }
    } else if let Some((floor_scale, attn_scale)) = l4.temperature {
        let (fs, a) = (floor_scale as f32, attn_scale as f32);
        for (p, row) in q.chunks_exact_mut(heads * hd).enumerate() {
            let s = ((p as f32 + 1.0) / fs).floor().ln_1p() * a + 1.0;
            let s = T::of_f64(f64::from(s));
            for v in row.iter_mut() {
                *v *= s;
            }
        }
    }
}

/// What a family adds between the q/k/v projections and RoPE: the projections' biases
/// (transformers `Qwen2Attention`: `nn.Linear(..., bias=True)`; llama.cpp `build_qkv` adds
/// `bq`/`bk`/`bv`) and the per-head RMSNorm of Q and K (`Qwen3Attention.q_norm`/`k_norm` over
/// `head_dim`, before `apply_rotary_pos_emb`; llama.cpp qwen3.cpp `attn_q_norm` before
/// `ggml_rope_ext`).
pub fn qkv_extras<T: Real, L>(
    lw: &LayerWeights<T, L>,
    q: &mut [T],
    k: &mut [T],
    v: &mut [T],
    hd: usize,
    eps: T,
) {
    if let Some([bq, bk, bv]) = &lw.qkv_bias {
        add_rows(q, bq);
        add_rows(k, bk);
        add_rows(v, bv);
    }
    if let Some([nq, nk]) = &lw.qk_norm {
        rms_norm(q, hd, nq, eps);
        rms_norm(k, hd, nk, eps);
    }
}

/// `x[t, :] += b` for every row.
fn add_rows<T: Real>(x: &mut [T], b: &[T]) {
    x.par_chunks_mut(b.len().max(1))
        .for_each(|row| row.iter_mut().zip(b).for_each(|(a, c)| *a += *c));
}

fn add<T: Real>(h: &mut [T], d: &[T]) {
    h.par_chunks_mut(4096)
        .zip(d.par_chunks(4096))
        .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(x, y)| *x += *y));
}

/// Logits of the scored positions of one chunk: `[ctx−1−first, vocab]`.
fn chunk_logits(
    backend: &dyn Backend,
    model: &Model,
    norm: &[f32],
    head: &Linear,
    h: &[f32],
    chunks: &Chunks,
) -> Result<Vec<f32>> {
    let hid = model.config().hidden_size as usize;
    let (first, rows) = (chunks.first(), chunks.scored_per_chunk());
    backend.logits(model, norm, head, &h[first * hid..(first + rows) * hid])
}

/// Result of [`perplexity`].
#[derive(Debug, Clone, Serialize)]
pub struct PerplexityResult {
    /// `exp(mean NLL)`.
    pub ppl: f64,
    /// llama.cpp's ± (standard error of the mean NLL times PPL).
    pub ppl_stderr: f64,
    /// Mean NLL (nats).
    pub nll_mean: f64,
    /// Scored tokens.
    pub scored_tokens: usize,
    /// Chunks evaluated.
    pub chunks: usize,
    /// Tokens per chunk.
    pub ctx: usize,
    /// Running (cumulative) PPL over chunks `0..=i`, after each chunk `i`: llama.cpp's
    /// `[i]x.xxxx` line. (Named `per_chunk_ppl` before; nothing outside qforge read it.)
    pub running_ppl: Vec<f64>,
    /// Each chunk's own PPL, `exp` of the mean NLL of that chunk's scored tokens alone.
    pub chunk_ppl: Vec<f64>,
    /// Tokens evaluated (`chunks·ctx`).
    pub tokens_evaluated: usize,
    /// Wall time of the evaluation (tokenization excluded).
    pub seconds: f64,
    /// `tokens_evaluated / seconds`.
    pub tokens_per_second: f64,
}

/// One chunk's own perplexity: `exp` of the mean of its tokens' NLLs.
fn chunk_ppl(nll: &[f64]) -> f64 {
    (nll.iter().sum::<f64>() / nll.len().max(1) as f64).exp()
}

/// Perplexity of `model` on `chunks`, llama.cpp's protocol.
pub fn perplexity(model: &Model, chunks: &Chunks, opts: &EvalOptions) -> Result<PerplexityResult> {
    perplexity_run(model, chunks, opts).map(|r| r.0)
}

/// [`perplexity`], with where the weight stream's time went.
pub fn perplexity_run(
    model: &Model,
    chunks: &Chunks,
    opts: &EvalOptions,
) -> Result<(PerplexityResult, StreamStats)> {
    let backend = backend_for(opts.device)?;
    let backend = &*backend;
    let mut stats = StreamStats::default();
    let start = Instant::now();
    let rope = model.rope_table(chunks.ctx);
    let hid = model.config().hidden_size as usize;
    let nl = model.config().num_layers as u32;
    let bsz = batch_size(model, chunks, opts, 1);
    let mut ppl = Perplexity::default();
    let mut per_chunk = Vec::with_capacity(chunks.n);
    let mut own = Vec::with_capacity(chunks.n);
    let mut bar = Progress::new(opts.progress, chunks.n.div_ceil(bsz.max(1)) * nl as usize);
    for b0 in (0..chunks.n).step_by(bsz) {
        let nb = bsz.min(chunks.n - b0);
        let toks = &chunks.tokens[b0 * chunks.ctx..(b0 + nb) * chunks.ctx];
        let mut h = model.embed(toks)?;
        stream_layers(&[model], nl, opts.prefetch, &mut stats, |i, lw| {
            backend.layer(model, &lw[0], &rope, &mut h, chunks.ctx, &mut |_, _| {})?;
            bar.step(format_args!(
                "layer {}/{nl} (chunks {b0}..{})",
                i + 1,
                b0 + nb
            ));
            Ok(())
        })?;
        let (norm, head) = model.head()?;
        for c in 0..nb {
            let hc = &h[c * chunks.ctx * hid..(c + 1) * chunks.ctx * hid];
            let logits = chunk_logits(backend, model, &norm, &head, hc, chunks)?;
            if b0 + c == 0 {
                if let Some(p) = &opts.logits_out {
                    write_f32(p, &logits)?;
                }
            }
            let targets = &chunks.chunk(b0 + c)[chunks.first() + 1..];
            let nll: Vec<f64> = logits
                .par_chunks(head.out)
                .zip(targets.par_iter())
                .map(|(row, &t)| log_softmax_nll(row, t as usize))
                .collect();
            ppl.add(&nll);
            per_chunk.push(ppl.ppl());
            own.push(chunk_ppl(&nll));
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let tokens = chunks.n * chunks.ctx;
    let r = PerplexityResult {
        ppl: ppl.ppl(),
        ppl_stderr: ppl.stderr(),
        nll_mean: ppl.mean(),
        scored_tokens: ppl.count,
        chunks: chunks.n,
        ctx: chunks.ctx,
        running_ppl: per_chunk,
        chunk_ppl: own,
        tokens_evaluated: tokens,
        seconds,
        tokens_per_second: tokens as f64 / seconds,
    };
    Ok((r, stats))
}

fn write_f32(path: &std::path::Path, v: &[f32]) -> Result<()> {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(path, bytes).map_err(|source| Error::Io {
        path: path.into(),
        source,
    })
}

/// Relative drift of the quantized model's hidden state after one layer.
#[derive(Debug, Clone, Serialize)]
pub struct LayerError {
    /// Layer index.
    pub layer: u32,
    /// `‖h_q − h_b‖ / ‖h_b‖` over every evaluation token after this layer.
    pub rel_error: f64,
    /// `rel_error` minus the previous layer's: what this layer added.
    pub added: f64,
}

/// Result of [`compare`].
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// Base model perplexity.
    pub base: PerplexityResult,
    /// Quantized model perplexity.
    pub quant: PerplexityResult,
    /// `(ppl_q / ppl_b − 1) · 100`.
    pub ppl_drift_pct: f64,
    /// Mean KL(base ‖ quant) per scored token (nats).
    pub kld_mean: f64,
    /// 99th percentile of the per-token KLD.
    pub kld_p99: f64,
    /// Largest per-token KLD.
    pub kld_max: f64,
    /// Share of scored tokens whose argmax agrees (%).
    pub top1_pct: f64,
    /// Per-layer hidden-state drift.
    pub layers: Vec<LayerError>,
    /// The layer that added the most drift.
    pub worst_layer: u32,
}

/// Evaluate `base` and `quant` in lockstep on the same chunks.
pub fn compare(
    base: &Model,
    quant: &Model,
    chunks: &Chunks,
    opts: &EvalOptions,
) -> Result<Comparison> {
    compare_run(base, quant, chunks, opts).map(|r| r.comparison)
}

/// Where a [`compare_run`]'s base figures came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseOrigin {
    /// Computed (no `base_cache`).
    Computed,
    /// Computed and stored in this cache entry.
    Stored(std::path::PathBuf),
    /// Read from this cache entry: no base forward ran.
    Cached(std::path::PathBuf),
}

/// A [`compare`] with what the engine did besides the figures.
#[derive(Debug, Clone)]
pub struct CompareRun {
    /// The figures (the same bits whatever the origin of the base's).
    pub comparison: Comparison,
    /// Whether the base forward ran.
    pub base_origin: BaseOrigin,
    /// Base forward seconds of this run (0 when cached).
    pub base_seconds: f64,
    /// Quantized forward seconds of this run.
    pub quant_seconds: f64,
    /// The weight stream's figures (both models).
    pub stream: StreamStats,
}

/// The base side of a comparison.
enum BaseSide {
    /// The base forward runs here, and is stored when a writer is given.
    Live(Option<crate::basecache::Writer>),
    /// The base figures are read back.
    Cached(crate::basecache::Reader),
}

/// `Σ (q − b)²` and `Σ b²` over every value, in f64 (fixed 4096-blocks, so thread-count free).
fn drift_sums(hb: &[f32], hq: &[f32]) -> (f64, f64) {
    hb.par_chunks(4096)
        .zip(hq.par_chunks(4096))
        .map(|(a, b)| {
            a.iter().zip(b).fold((0f64, 0f64), |(d, n), (x, y)| {
                let (x, y) = (f64::from(*x), f64::from(*y));
                (d + (y - x) * (y - x), n + x * x)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .fold((0.0, 0.0), |(a, b), (c, e)| (a + c, b + e))
}

/// [`compare`], reusing (or storing) the base forward under `opts.base_cache`.
pub fn compare_run(
    base: &Model,
    quant: &Model,
    chunks: &Chunks,
    opts: &EvalOptions,
) -> Result<CompareRun> {
    check_same_shape(base, quant)?;
    let backend = backend_for(opts.device)?;
    let backend = &*backend;
    let rope_b = base.rope_table(chunks.ctx);
    let rope_q = quant.rope_table(chunks.ctx);
    let hid = base.config().hidden_size as usize;
    let nl = base.config().num_layers as u32;
    let vocab = base.config().vocab_size as usize;
    let bsz = batch_size(base, chunks, opts, 2);
    let mut side = match &opts.base_cache {
        None => BaseSide::Live(None),
        Some(root) => {
            let key = base_key(base, chunks, bsz, opts.device)?;
            match lookup(root, &key, Layout::of(base, chunks, vocab))? {
                Lookup::Hit(r) => BaseSide::Cached(r),
                Lookup::Miss(w) => BaseSide::Live(Some(w)),
            }
        }
    };
    let mut sc = Scores::default();
    let mut diff2 = vec![0f64; nl as usize];
    let mut base2 = vec![0f64; nl as usize];
    let (mut tb, mut tq) = (0f64, 0f64);
    let mut stats = StreamStats::default();
    let mut bar = Progress::new(opts.progress, chunks.n.div_ceil(bsz.max(1)) * nl as usize);
    for b0 in (0..chunks.n).step_by(bsz) {
        let nb = bsz.min(chunks.n - b0);
        let toks = &chunks.tokens[b0 * chunks.ctx..(b0 + nb) * chunks.ctx];
        let cached = matches!(side, BaseSide::Cached(_));
        let mut hb = if cached {
            vec![0f32; toks.len() * hid]
        } else {
            base.embed(toks)?
        };
        let mut hq = quant.embed(toks)?;
        let models: &[&Model] = if cached { &[quant] } else { &[base, quant] };
        stream_layers(models, nl, opts.prefetch, &mut stats, |i, mut lw| {
            let lq = lw
                .pop()
                .ok_or_else(|| Error::Mismatch("no layer weights".into()))?;
            match &mut side {
                BaseSide::Live(w) => {
                    let t = Instant::now();
                    backend.layer(base, &lw[0], &rope_b, &mut hb, chunks.ctx, &mut |_, _| {})?;
                    drop(lw);
                    tb += t.elapsed().as_secs_f64();
                    if let Some(w) = w {
                        w.hidden(&hb)?;
                    }
                }
                BaseSide::Cached(r) => r.hidden(&mut hb)?,
            }
            let t = Instant::now();
            backend.layer(quant, &lq, &rope_q, &mut hq, chunks.ctx, &mut |_, _| {})?;
            drop(lq);
            tq += t.elapsed().as_secs_f64();
            let (d, n) = drift_sums(&hb, &hq);
            diff2[i as usize] += d;
            base2[i as usize] += n;
            bar.step(format_args!(
                "layer {}/{nl} (chunks {b0}..{})",
                i + 1,
                b0 + nb
            ));
            Ok(())
        })?;
        let t = Instant::now();
        let base_head = if cached { None } else { Some(base.head()?) };
        let (norm_q, head_q) = quant.head()?;
        let out_b = base_head.as_ref().map_or(vocab, |(_, h)| h.out);
        if out_b != head_q.out {
            return Err(Error::Mismatch(format!(
                "vocabularies differ: {} vs {} logits",
                out_b, head_q.out
            )));
        }
        if out_b != vocab {
            // The cache's layout assumes config.vocab_size logits per position.
            if let BaseSide::Live(w) = &mut side {
                *w = None;
            }
        }
        for c in 0..nb {
            let range = c * chunks.ctx * hid..(c + 1) * chunks.ctx * hid;
            let lb = match (&mut side, &base_head) {
                (BaseSide::Live(w), Some((norm_b, head_b))) => {
                    let l =
                        chunk_logits(backend, base, norm_b, head_b, &hb[range.clone()], chunks)?;
                    if let Some(w) = w {
                        w.logits(&l)?;
                    }
                    l
                }
                (BaseSide::Cached(r), _) => r.logits(chunks.scored_per_chunk() * head_q.out)?,
                (BaseSide::Live(_), None) => {
                    return Err(Error::Mismatch("the base head was not read".into()))
                }
            };
            let lq = chunk_logits(backend, quant, &norm_q, &head_q, &hq[range], chunks)?;
            if b0 + c == 0 {
                if let Some(p) = &opts.logits_out {
                    write_f32(p, &lq)?;
                }
            }
            let targets = &chunks.chunk(b0 + c)[chunks.first() + 1..];
            sc.add_chunk(&lb, &lq, head_q.out, targets);
        }
        let secs = t.elapsed().as_secs_f64();
        if cached {
            tq += secs;
        } else {
            tb += secs / 2.0;
            tq += secs / 2.0;
        }
    }
    let (base_origin, base_seconds, tb_report) = match side {
        BaseSide::Live(None) => (BaseOrigin::Computed, tb, tb),
        BaseSide::Live(Some(w)) => (BaseOrigin::Stored(w.finish(tb)?), tb, tb),
        // the report shows the base's seconds when it was computed
        BaseSide::Cached(r) => {
            r.check()?;
            (BaseOrigin::Cached(r.dir().to_path_buf()), 0.0, r.seconds)
        }
    };
    let comparison = summarize(chunks, nl, sc, &diff2, &base2, tb_report, tq);
    Ok(CompareRun {
        comparison,
        base_origin,
        base_seconds,
        quant_seconds: tq,
        stream: stats,
    })
}

/// The running figures of a comparison over its scored positions, chunk after chunk.
#[derive(Default)]
struct Scores {
    pb: Perplexity,
    pq: Perplexity,
    per_b: Vec<f64>,
    per_q: Vec<f64>,
    own_b: Vec<f64>,
    own_q: Vec<f64>,
    kld: Vec<f64>,
    same_top: usize,
}

impl Scores {
    /// One chunk's scored logits of both models (`[rows, vocab]`) and its target tokens.
    fn add_chunk(&mut self, lb: &[f32], lq: &[f32], vocab: usize, targets: &[u32]) {
        let rows: Vec<(f64, f64, f64, bool)> = lb
            .par_chunks(vocab)
            .zip(lq.par_chunks(vocab))
            .zip(targets.par_iter())
            .map(|((a, b), &t)| {
                (
                    log_softmax_nll(a, t as usize),
                    log_softmax_nll(b, t as usize),
                    kld_row(a, b),
                    top1(a) == top1(b),
                )
            })
            .collect();
        let nll_b: Vec<f64> = rows.iter().map(|r| r.0).collect();
        let nll_q: Vec<f64> = rows.iter().map(|r| r.1).collect();
        self.pb.add(&nll_b);
        self.pq.add(&nll_q);
        self.per_b.push(self.pb.ppl());
        self.per_q.push(self.pq.ppl());
        self.own_b.push(chunk_ppl(&nll_b));
        self.own_q.push(chunk_ppl(&nll_q));
        self.kld.extend(rows.iter().map(|r| r.2));
        self.same_top += rows.iter().filter(|r| r.3).count();
    }
}

/// The figures of a comparison from its sums.
fn summarize(
    chunks: &Chunks,
    nl: u32,
    sc: Scores,
    diff2: &[f64],
    base2: &[f64],
    tb: f64,
    tq: f64,
) -> Comparison {
    let Scores {
        pb,
        pq,
        per_b,
        per_q,
        own_b,
        own_q,
        kld,
        same_top,
    } = sc;
    let tokens = chunks.n * chunks.ctx;
    let result = |p: &Perplexity, per: Vec<f64>, own: Vec<f64>, secs: f64| PerplexityResult {
        ppl: p.ppl(),
        ppl_stderr: p.stderr(),
        nll_mean: p.mean(),
        scored_tokens: p.count,
        chunks: chunks.n,
        ctx: chunks.ctx,
        running_ppl: per,
        chunk_ppl: own,
        tokens_evaluated: tokens,
        seconds: secs,
        tokens_per_second: tokens as f64 / secs,
    };
    let mut layers = Vec::with_capacity(nl as usize);
    let mut prev = 0.0;
    for i in 0..nl as usize {
        let rel = if base2[i] > 0.0 {
            (diff2[i] / base2[i]).sqrt()
        } else {
            0.0
        };
        layers.push(LayerError {
            layer: i as u32,
            rel_error: rel,
            added: rel - prev,
        });
        prev = rel;
    }
    let worst_layer = layers
        .iter()
        .fold(None::<&LayerError>, |w, l| match w {
            Some(w) if w.added >= l.added => Some(w),
            _ => Some(l),
        })
        .map_or(0, |l| l.layer);
    let base_r = result(&pb, per_b, own_b, tb);
    let quant_r = result(&pq, per_q, own_q, tq);
    // the mean sums in scored order, before sorting
    let kld_mean = kld.iter().sum::<f64>() / kld.len().max(1) as f64;
    let mut sorted = kld;
    sorted.sort_by(f64::total_cmp);
    Comparison {
        ppl_drift_pct: (quant_r.ppl / base_r.ppl - 1.0) * 100.0,
        kld_mean,
        kld_p99: percentile(&sorted, 0.99),
        kld_max: sorted.last().copied().unwrap_or(0.0),
        top1_pct: same_top as f64 * 100.0 / sorted.len().max(1) as f64,
        base: base_r,
        quant: quant_r,
        layers,
        worst_layer,
    }
}

fn check_same_shape(a: &Model, b: &Model) -> Result<()> {
    let (x, y) = (a.config(), b.config());
    let fields = [
        ("hidden_size", x.hidden_size, y.hidden_size),
        ("num_layers", x.num_layers, y.num_layers),
        ("num_heads", x.num_heads, y.num_heads),
        ("num_kv_heads", x.num_kv_heads, y.num_kv_heads),
        ("head_dim", x.head_dim, y.head_dim),
        (
            "intermediate_size",
            x.intermediate_size,
            y.intermediate_size,
        ),
        ("vocab_size", x.vocab_size, y.vocab_size),
    ];
    for (name, p, q) in fields {
        if p != q {
            return Err(Error::Mismatch(format!("{name}: {p} vs {q}")));
        }
    }
    Ok(())
}

/// Add `Σ_t x[t, j]²` to `acc[j]` for every column `j` of `x` (`[tokens, acc.len()]`), token
/// after token in f32, as llama-imatrix's collector does (`acc[j] += x[j]*x[j]`). Columns are
/// split across threads; each column's sum keeps the token order, so the result does not
/// depend on the thread count.
pub fn accumulate_squares(acc: &mut [f32], x: &[f32]) {
    let cols = acc.len();
    if cols == 0 {
        return;
    }
    const BLOCK: usize = 64;
    acc.par_chunks_mut(BLOCK).enumerate().for_each(|(b, a)| {
        let (j0, n) = (b * BLOCK, a.len());
        for row in x.chunks_exact(cols) {
            for (s, v) in a.iter_mut().zip(&row[j0..j0 + n]) {
                *s += v * v;
            }
        }
    });
}

/// llama-imatrix's statistics of `model` on `chunks` (tools/imatrix/imatrix.cpp
/// `collect_imatrix`): for every `blk.*` linear (and `output.weight` when `process_output` and
/// the model has an untied output, as llama.cpp matches by name), Σx² per input column over
/// every token of every chunk, and the token count. Layer-major like [`perplexity`]; no logits
/// are computed. The result has no datasets; the caller names them.
pub fn collect_imatrix(
    model: &Model,
    chunks: &Chunks,
    opts: &EvalOptions,
    process_output: bool,
) -> Result<qforge_quantize::imatrix::Imatrix> {
    use qforge_convert::{NameScheme, TensorId, TensorKey};
    use qforge_quantize::imatrix::{Imatrix, ImatrixEntry, ImatrixFormat};
    let cfg = model.config();
    // Mixture-of-experts blocks: llama-imatrix's per-expert sums and counts (moe_observe).
    let mut experts = cfg.moe.as_ref().map(|m| {
        crate::moe_observe::ExpertSums::new(
            m.num_experts as usize,
            cfg.hidden_size as usize,
            m.expert_ffn as usize,
        )
    });
    let (hid, ffn) = (cfg.hidden_size as usize, cfg.intermediate_size as usize);
    let att = cfg.num_heads as usize * cfg.head_dim as usize;
    let nl = cfg.num_layers as u32;
    let rope = model.rope_table(chunks.ctx);
    let bsz = batch_size(model, chunks, opts, 1);
    let gguf_name = |id: TensorId| {
        NameScheme::Gguf
            .name(TensorKey::weight(id))
            .unwrap_or_else(|| id.to_string())
    };
    let width = |k: LayerTensor| match k {
        LayerTensor::O => att,
        LayerTensor::Down => ffn,
        _ => hid,
    };
    let kinds = LayerTensor::LINEARS;
    let mut sums: Vec<Vec<Vec<f32>>> = (0..nl)
        .map(|_| kinds.iter().map(|&k| vec![0f32; width(k)]).collect())
        .collect();
    let untied = model
        .ckpt
        .part(TensorId::Output, qforge_convert::Part::Weight)
        .is_some()
        || model
            .ckpt
            .part(TensorId::Output, qforge_convert::Part::WeightPacked)
            .is_some();
    let with_output = process_output && untied;
    let mut out_sums = vec![0f32; if with_output { hid } else { 0 }];
    let backend = backend_for(opts.device)?;
    let backend = &*backend;
    let mut stats = StreamStats::default();
    let mut bar = Progress::new(opts.progress, chunks.n.div_ceil(bsz.max(1)) * nl as usize);
    for b0 in (0..chunks.n).step_by(bsz) {
        let nb = bsz.min(chunks.n - b0);
        let toks = &chunks.tokens[b0 * chunks.ctx..(b0 + nb) * chunks.ctx];
        let mut h = model.embed(toks)?;
        stream_layers(&[model], nl, opts.prefetch, &mut stats, |i, lw| {
            let layer = &mut sums[i as usize];
            backend.layer(model, &lw[0], &rope, &mut h, chunks.ctx, &mut |ks, x| {
                if crate::moe_observe::is_moe(ks) {
                    if let Some(e) = experts.as_mut() {
                        e.observe(i, ks, x);
                    }
                    return;
                }
                // Linears that share an input (q/k/v, gate/up) get the same sums.
                let slot = |k: &LayerTensor| kinds.iter().position(|q| q == k).unwrap_or(0);
                let first = slot(&ks[0]);
                accumulate_squares(&mut layer[first], x);
                let total = layer[first].clone();
                for k in &ks[1..] {
                    layer[slot(k)].copy_from_slice(&total);
                }
            })?;
            bar.step(format_args!(
                "layer {}/{nl} (chunks {b0}..{})",
                i + 1,
                b0 + nb
            ));
            Ok(())
        })?;
        if with_output {
            let norm = model.output_norm()?;
            for hc in h.chunks(chunks.ctx * hid) {
                let mut x = hc.to_vec();
                rms_norm(&mut x, hid, &norm, cfg.rms_norm_eps as f32);
                accumulate_squares(&mut out_sums, &x);
            }
        }
    }
    let count = (chunks.n * chunks.ctx) as i64;
    let mut entries = std::collections::BTreeMap::new();
    for (i, layer) in sums.into_iter().enumerate() {
        for (k, s) in kinds.iter().zip(layer) {
            let id = TensorId::Layer {
                index: i as u32,
                kind: *k,
            };
            entries.insert(
                gguf_name(id),
                ImatrixEntry {
                    sums: s,
                    counts: vec![count],
                },
            );
        }
    }
    if let Some(e) = experts {
        e.finish(&mut entries);
    }
    if with_output {
        entries.insert(
            gguf_name(TensorId::Output),
            ImatrixEntry {
                sums: out_sums,
                counts: vec![count],
            },
        );
    }
    if let Some((name, _)) = entries
        .iter()
        .find(|(_, e)| e.sums.iter().any(|v| !v.is_finite()))
    {
        // llama-imatrix stops on this too ("non-finite values detected").
        return Err(Error::NonFiniteActivations {
            tensor: name.clone(),
        });
    }
    Ok(Imatrix {
        format: ImatrixFormat::Gguf,
        entries,
        datasets: Vec::new(),
        chunk_count: chunks.n as u32,
        chunk_size: chunks.ctx as u32,
        has_metadata: true,
    })
}
