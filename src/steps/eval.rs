//! The evaluation settings the steps share (`qforge perplexity`, `verify`, `imatrix`,
//! `calibrate`): forward and evaluation options from [`EvalArgs`], the device check, the token
//! chunks of a text.

use anyhow::Result;
use qforge_verify::{Chunks, EvalOptions, ForwardOptions, Model, TextTokenizer, W8a8Mode};

use crate::cli::{EvalArgs, W8a8Arg};

/// Forward options from the command line.
pub fn forward_options(e: &EvalArgs) -> ForwardOptions {
    ForwardOptions {
        w8a8: match e.w8a8 {
            W8a8Arg::Auto => W8a8Mode::Auto,
            W8a8Arg::On => W8a8Mode::On,
            W8a8Arg::Off => W8a8Mode::Off,
        },
        ggml_act_quant: e.ggml_act_quant,
        kv_f16: e.kv_f16,
        ggml_cpu_ops: e.ggml_cpu_ops,
    }
}

/// Evaluation options from the command line.
pub fn eval_options(e: &EvalArgs) -> EvalOptions {
    EvalOptions {
        batch_chunks: e.batch_chunks,
        logits_out: e.logits_out.clone(),
        progress: !e.quiet && !e.json,
        device: e.device,
        prefetch: !e.no_prefetch,
        base_cache: None,
    }
}

/// Refuse a `--device` that cannot run here, in one line, before any model is read.
pub fn check_device(device: qforge_verify::Device) -> Result<()> {
    match qforge_verify::backend::unavailable(device) {
        Some(reason) => Err(anyhow::anyhow!(reason)),
        None => Ok(()),
    }
}

/// `-v`: where the weight stream's time went.
pub fn log_stream(s: &qforge_verify::StreamStats, prefetch: bool) {
    tracing::info!(
        "weights: {} layer reads, {:.2} s reading and dequantizing, {:.2} s waited for ({})",
        s.layers,
        s.load_seconds,
        s.wait_seconds,
        if prefetch {
            "prefetched"
        } else {
            "no prefetch"
        }
    );
}

/// Tokenize the evaluation text with `model`'s tokenizer and cut it into chunks.
pub fn chunks_for(model: &Model, e: &EvalArgs) -> Result<Chunks> {
    crate::commands::warn_long_ctx(model.config(), "--ctx", e.ctx);
    crate::commands::log_read("model", &model.ckpt);
    let text = crate::commands::read_text(&e.data)?;
    let tok = TextTokenizer::for_checkpoint(&model.ckpt)?;
    let ids = tok.encode(&text)?;
    tracing::info!(
        "read {}: {} bytes, {} tokens; chunks of {} tokens, at most {:?}",
        e.data.display(),
        text.len(),
        ids.len(),
        e.ctx,
        e.chunks
    );
    Chunks::new(&ids, e.ctx, e.chunks, tok.bos)
        .map_err(|err| crate::commands::name_texts(err, &[&e.data]))
}
