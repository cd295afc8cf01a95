//! `qforge perplexity`: a model's perplexity on a text, with llama-perplexity's protocol.

use std::io::Write;

use anyhow::Result;
use qforge_verify::{Chunks, EvalOptions, ForwardOptions, Model, TextTokenizer, W8a8Mode};

use crate::cli::{EvalArgs, PerplexityArgs, W8a8Arg};

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

pub fn run(args: &PerplexityArgs) -> Result<()> {
    let e = &args.eval;
    check_device(e.device)?;
    let model = Model::open(
        &crate::modelref::resolve(&args.model.to_string_lossy())?,
        forward_options(e),
    )?;
    let chunks = chunks_for(&model, e)?;
    let opts = eval_options(e);
    let (r, stream) = qforge_verify::with_threads(e.threads, || {
        qforge_verify::perplexity_run(&model, &chunks, &opts)
    })??;
    log_stream(&stream, opts.prefetch);
    let mut out = std::io::stdout().lock();
    if e.json {
        serde_json::to_writer_pretty(&mut out, &r)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "{}: {} chunks × {} tokens ({} scored)",
            args.model.display(),
            r.chunks,
            r.ctx,
            r.scored_tokens
        )?;
        let running: Vec<String> = r
            .running_ppl
            .iter()
            .enumerate()
            .map(|(i, p)| format!("[{}]{p:.4}", i + 1))
            .collect();
        writeln!(out, "{}", running.join(","))?;
        writeln!(
            out,
            "Final estimate: PPL = {:.4} +/- {:.5}",
            r.ppl, r.ppl_stderr
        )?;
        writeln!(
            out,
            "{:.1} tokens/s ({} tokens in {:.2} s)",
            r.tokens_per_second, r.tokens_evaluated, r.seconds
        )?;
    }
    Ok(())
}
