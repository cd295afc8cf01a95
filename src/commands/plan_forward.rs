//! Peak memory and time of the commands that run the reference forward — `verify`,
//! `perplexity`, `imatrix` and `calibrate` — from the model's shapes, for `qforge plan` of a
//! recipe's `[verify]` and `[calibrate]` steps.
//!
//! What qforge-verify holds (verify/src/eval.rs `compare`, `perplexity`, `collect_imatrix`;
//! calibrate/src/engine.rs `calibrate`), layer-major over a batch of chunks:
//! - the hidden states of the batch, `[batch·ctx, hidden]` f32 per model (f64 for
//!   `--precision f64`), the batch as many chunks as fit 2 GiB (eval.rs `batch_size`);
//! - embedding phase (`Model::embed`): for an embedding stored plainly (float or ggml blocks)
//!   only the rows of the batch's tokens are decoded, straight into the hidden states, so the
//!   phase adds the source pages those rows touch; another storage (FP8, packed INT4) is
//!   decoded whole to f32 while its mapped source pages are still resident; one model at a
//!   time;
//! - layer phase: one layer's weights in f32 plus their mapped source, and the layer's
//!   scratch for one chunk (attention and FFN activations); verify, perplexity and imatrix
//!   prefetch (verify/src/engine.rs), so they hold two layers per model (the one computing and
//!   the next being read); GPTQ adds its Hessians (f32, one per distinct linear input) and one
//!   f64 copy of the widest. Verify, perplexity and imatrix leave a mixture-of-experts block's
//!   experts out of the layer (`Model::layer_streamed`) and dequantize one expert at a time
//!   during the forward (verify/src/moe.rs `ffn_streamed`), on the batch's rows at once
//!   (eval.rs `run_layer_streamed`: the block's input and output for the whole batch, and one
//!   expert's activations for at most every row); calibrate holds every expert;
//! - head phase (verify, perplexity): every model's LM head in f32 and one chunk's logits per
//!   model (`[scored, vocab]` f32), or while a head is decoded its mapped source instead;
//! - on top, a fixed part: the process ([`super::plan::BASE_RSS`]), the text, tokens and
//!   thread pool ([`FIXED_EXTRA`]) and each model's tokenizer ([`TOKENIZER_PER_VOCAB`]).
//!
//! Measured on SmolLM2-135M (BF16, Hamlet; peak RSS from `/usr/bin/time`, BENCHMARKS.md
//! "Plan: memory and time model"): verify ctx 512 × 2 chunks 388 MiB (head phase), × 8 chunks
//! 402 MiB; perplexity 226 MiB (head phase); imatrix 95 MiB; calibrate fp8-static 16 × 256
//! 81 MiB, GPTQ 126 MiB (layer phase). The constants below come from the first runs of these
//! (before issue 21 the embedding phase, decoding the whole table, was the peak of perplexity,
//! imatrix and calibrate).

use qforge_convert::names::{LayerTensor, TensorId};
use qforge_convert::{Checkpoint, ModelConfig};

use super::plan::BASE_RSS;

/// Resident memory of a forward command besides [`BASE_RSS`] and the terms modelled: the text,
/// its tokens, the thread pool's stacks, allocator slack (perplexity on SmolLM2: 49 MiB fixed
/// in all, less one tokenizer).
pub const FIXED_EXTRA: u64 = 11 << 20;

/// A loaded tokenizer, bytes per vocabulary entry (SmolLM2, 49,152 entries: 14 MiB per model,
/// from verify's two models against perplexity's one).
pub const TOKENIZER_PER_VOCAB: u64 = 300;

/// Activation memory eval.rs aims for when `--batch-chunks` is not given (`ACT_BUDGET_BYTES`).
const ACT_BUDGET: u64 = 2 << 30;

/// What runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Job {
    /// `qforge verify`: two models in lockstep, logits of both.
    Verify,
    /// `qforge perplexity`: one model, logits (no recipe step runs it; the unit test holds the
    /// model to its measured peaks).
    #[cfg_attr(not(test), allow(dead_code))]
    Perplexity,
    /// `qforge imatrix`: one model, no logits.
    Imatrix,
    /// `qforge calibrate --method fp8-static` (`f64`: `--precision f64`).
    CalibFp8 { f64: bool },
    /// `qforge calibrate --method gptq`.
    CalibGptq,
    /// `qforge calibrate --method awq` (planned with the fp8-static terms; not measured).
    CalibAwq,
}

/// A forward job's shape: tokens per chunk and chunks.
#[derive(Debug, Clone, Copy)]
pub struct Work {
    /// Tokens per chunk (`--ctx`, `--seq-len`).
    pub ctx: u64,
    /// Chunks (`--chunks`, `--samples`).
    pub chunks: u64,
}

fn numel(ckpt: &Checkpoint, id: TensorId) -> u64 {
    ckpt.config.expected_shape(id).iter().product()
}

fn source_bytes(ckpt: &Checkpoint, id: TensorId) -> u64 {
    let b = ckpt.role_bytes(id);
    if b == 0 {
        // a config-only model: BF16, as the checkpoints are shipped
        2 * numel(ckpt, id)
    } else {
        b
    }
}

/// The linears and norms of block `index` (a mixture-of-experts block: router and every
/// expert instead of the dense FFN).
fn layer_ids(c: &ModelConfig, index: u32) -> impl Iterator<Item = TensorId> {
    c.layer_tensors(index)
        .into_iter()
        .filter(|k| {
            k.is_linear()
                || matches!(
                    k,
                    LayerTensor::Router | LayerTensor::AttnNorm | LayerTensor::FfnNorm
                )
        })
        .map(move |kind| TensorId::Layer { index, kind })
}

fn is_expert(id: TensorId) -> bool {
    matches!(
        id,
        TensorId::Layer {
            kind: LayerTensor::Expert { .. },
            ..
        }
    )
}

/// The three projections of one routed expert (of the first mixture-of-experts block; every
/// block's experts have one shape), none for a dense model.
fn one_expert(c: &ModelConfig) -> Vec<TensorId> {
    let n = u32::try_from(c.num_layers).unwrap_or(u32::MAX);
    let Some(index) = (0..n).find(|&i| c.moe.is_some() && c.is_moe_layer(i)) else {
        return Vec::new();
    };
    qforge_convert::FfnProj::ALL
        .into_iter()
        .map(|proj| TensorId::Layer {
            index,
            kind: LayerTensor::Expert { expert: 0, proj },
        })
        .collect()
}

/// The largest over the blocks of `f` summed over a block's tensors (blocks differ where a
/// mixture of experts has dense blocks).
fn max_layer(ckpt: &Checkpoint, f: impl Fn(TensorId) -> u64) -> u64 {
    let c = &ckpt.config;
    let n = u32::try_from(c.num_layers).unwrap_or(u32::MAX);
    // dense models: every block alike
    let blocks = if c.moe.is_some() { n } else { n.min(1) };
    (0..blocks)
        .map(|i| layer_ids(c, i).map(&f).sum::<u64>())
        .max()
        .unwrap_or(0)
}

/// Peak resident memory of `job` on `ckpt` (for verify, the quantized model is taken to have
/// the base's shapes and no smaller a source: an upper bound by its source bytes).
pub fn peak_memory(ckpt: &Checkpoint, job: Job, w: Work) -> u64 {
    let c = &ckpt.config;
    let hid = c.hidden_size;
    let ffn = c.intermediate_size;
    let vocab = c.vocab_size;
    let heads = c.num_heads;
    let att = heads * c.head_dim;
    let kv = c.num_kv_heads * c.head_dim;
    let models: u64 = if job == Job::Verify { 2 } else { 1 };
    let elem: u64 = if job == (Job::CalibFp8 { f64: true }) {
        8
    } else {
        4
    };
    // hidden states: the batch layer-major runs together (calibration: every sample)
    let batch = match job {
        Job::Verify | Job::Perplexity | Job::Imatrix => {
            (ACT_BUDGET / (w.ctx * hid * 4 * models).max(1)).clamp(1, w.chunks.max(1))
        }
        _ => w.chunks.max(1),
    };
    let acts = models * batch * w.ctx * hid * elem;
    let emb = TensorId::TokenEmbedding;
    let emb_src = source_bytes(ckpt, emb);
    let gathered = !matches!(
        qforge_quantize::dequant::WeightRead::weight_storage(ckpt, emb),
        Ok(s) if !matches!(s, qforge_quantize::dequant::WeightStorage::Plain(_))
    );
    let embed_phase = if gathered {
        // each token's row, and at most the page around it
        let tokens = batch * w.ctx;
        let row = emb_src / vocab.max(1);
        emb_src.min(tokens * (row + 4096))
    } else {
        4 * numel(ckpt, emb) + emb_src
    };
    // verify, perplexity and imatrix stream the experts (one at a time, beside the layer)
    let streamed = matches!(job, Job::Verify | Job::Perplexity | Job::Imatrix);
    let held = |id| !(streamed && is_expert(id));
    let layer_f32: u64 = max_layer(ckpt, |id| if held(id) { 4 * numel(ckpt, id) } else { 0 });
    let layer_src: u64 = max_layer(ckpt, |id| if held(id) { source_bytes(ckpt, id) } else { 0 });
    let expert = match one_expert(c) {
        e if streamed && !e.is_empty() => {
            // its three projections in f32, the source of the one being decoded (Model::linear
            // releases each projection's pages once decoded)
            let f32s: u64 = e.iter().map(|&id| 4 * numel(ckpt, id)).sum();
            let src = e
                .iter()
                .map(|&id| source_bytes(ckpt, id))
                .max()
                .unwrap_or(0);
            let ffn_e = c.moe.as_ref().map_or(0, |m| m.expert_ffn);
            // the block's input and output over the batch; one expert's rows, gate/up, down
            // input and output for at most every row
            let acts = 4 * batch * w.ctx * (4 * hid + 3 * ffn_e);
            f32s + src + acts
        }
        _ => 0,
    };
    // one chunk's x, q, k, v, attention output, scores (one row block per head) and FFN
    let scratch = elem * w.ctx * (2 * hid + 2 * att + 2 * kv + 2 * ffn + heads * w.ctx);
    let method = match job {
        Job::CalibGptq => {
            // Hessians of q/k/v, o, gate/up, down inputs (f32) and one f64 working copy
            4 * (2 * hid * hid + att * att + ffn * ffn) + 8 * ffn.max(hid).pow(2)
        }
        // f64: the layer's weights held in f64 beside their f32 copy
        Job::CalibFp8 { f64: true } => 2 * layer_f32,
        _ => 0,
    };
    // prefetch reads the next layer while one computes (verify/src/engine.rs: not for a
    // one-layer model)
    let resident_layers = match job {
        Job::Verify | Job::Perplexity | Job::Imatrix if c.num_layers > 1 => 2 * models,
        Job::Verify | Job::Perplexity | Job::Imatrix => models,
        _ => 1,
    };
    let layer_phase = resident_layers * (layer_f32 + layer_src) + expert + scratch + method;
    let head_phase = match job {
        Job::Verify | Job::Perplexity => {
            let head = if ckpt.config.tie_word_embeddings {
                emb
            } else {
                TensorId::Output
            };
            let scored = w.ctx - 1 - w.ctx / 2;
            // each model's head in f32; the source of the head being decoded (Model::head
            // releases its pages after), or later each model's chunk of logits
            models * 4 * numel(ckpt, head)
                + source_bytes(ckpt, head).max(models * scored * vocab * 4)
        }
        _ => 0,
    };
    BASE_RSS
        + FIXED_EXTRA
        + models * TOKENIZER_PER_VOCAB * vocab
        + acts
        + embed_phase.max(layer_phase).max(head_phase)
}

/// Multiply-adds of one token through the model's linears (and the LM head when `head`).
pub fn macs_per_token(ckpt: &Checkpoint, head: bool) -> u64 {
    let c = &ckpt.config;
    // a token runs through top_k of a block's experts (and its router)
    let (top_k, experts) = c
        .moe
        .as_ref()
        .map_or((1, 1), |m| (m.experts_per_tok, m.num_experts.max(1)));
    let blocks = u32::try_from(c.num_layers).unwrap_or(u32::MAX);
    let layers: u64 = (0..blocks)
        .map(|index| {
            c.layer_tensors(index)
                .into_iter()
                .map(|kind| {
                    let n = numel(ckpt, TensorId::Layer { index, kind });
                    match kind {
                        LayerTensor::Expert { .. } => n * top_k / experts,
                        LayerTensor::Router => n,
                        k if k.is_linear() => n,
                        _ => 0,
                    }
                })
                .sum::<u64>()
        })
        .sum();
    let head_macs = if head {
        c.vocab_size * c.hidden_size
    } else {
        0
    };
    layers + head_macs
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-135M's shapes (a config-only model: BF16 sources, as the demo's checkpoint).
    fn smollm2() -> (tempfile::TempDir, Checkpoint) {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("config.json"),
            r#"{"architectures":["LlamaForCausalLM"],"hidden_size":576,"intermediate_size":1536,
            "num_attention_heads":9,"num_hidden_layers":30,"num_key_value_heads":3,
            "vocab_size":49152,"rms_norm_eps":1e-05,"rope_theta":100000.0,
            "max_position_embeddings":8192,"tie_word_embeddings":true,"model_type":"llama"}"#,
        )
        .unwrap();
        let c = Checkpoint::from_config(d.path()).unwrap();
        (d, c)
    }

    /// The measured peaks the constants come from (module docs), each within 20 % of the model.
    #[test]
    fn model_matches_the_measured_peaks() {
        let (_d, c) = smollm2();
        let mib = |b: u64| b as f64 / f64::from(1 << 20);
        let w = |ctx, chunks| Work { ctx, chunks };
        for (job, work, measured_mib) in [
            (Job::Verify, w(512, 2), 388.4),
            (Job::Verify, w(512, 8), 402.1),
            (Job::Perplexity, w(512, 2), 226.4),
            (Job::Perplexity, w(128, 2), 226.6),
            (Job::Imatrix, w(512, 2), 94.9),
            (Job::CalibFp8 { f64: false }, w(256, 16), 81.0),
            (Job::CalibGptq, w(256, 16), 125.9),
        ] {
            let p = mib(peak_memory(&c, job, work));
            let rel = p / measured_mib - 1.0;
            assert!(
                rel.abs() < 0.2,
                "{job:?} {work:?}: planned {p:.1} MiB, measured {measured_mib} MiB"
            );
        }
    }

    /// A Mixtral-8x7B-width block (`scripts/gen_synthetic.py --shape mixtral-8x7b --layers 1`,
    /// BENCHMARKS.md "Mixtral-8x7B widths"): perplexity streams the experts, measured 995 MiB
    /// at ctx 64 × 4 chunks (5.46 GiB when the forward held every expert in f32); planned
    /// within 20 %, and one expert (not eight) in the plan.
    #[test]
    fn moe_forward_plans_one_expert_at_a_time() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("config.json"),
            r#"{"architectures":["MixtralForCausalLM"],"hidden_size":4096,"head_dim":128,
            "intermediate_size":14336,"num_attention_heads":32,"num_hidden_layers":1,
            "num_key_value_heads":8,"num_local_experts":8,"num_experts_per_tok":2,
            "vocab_size":32000,"rms_norm_eps":1e-05,"rope_theta":1000000.0,
            "max_position_embeddings":32768,"tie_word_embeddings":false,"model_type":"mixtral"}"#,
        )
        .unwrap();
        let c = Checkpoint::from_config(d.path()).unwrap();
        let mib = |b: u64| b as f64 / f64::from(1 << 20);
        let work = Work { ctx: 64, chunks: 4 };
        let p = mib(peak_memory(&c, Job::Perplexity, work));
        eprintln!("mixtral-8x7b widths, 1 block, perplexity ctx 64 x 4: planned {p:.1} MiB");
        assert!((p / 995.3 - 1.0).abs() < 0.2, "planned {p:.1} MiB");
        // calibrate still holds every expert of the block in f32: 8 × 672 MiB
        let g = mib(peak_memory(&c, Job::CalibFp8 { f64: false }, work));
        assert!(g > 8.0 * 672.0, "planned {g:.1} MiB");
    }
}
