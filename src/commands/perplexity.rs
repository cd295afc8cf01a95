//! `qforge perplexity`: a model's perplexity on a text, with llama-perplexity's protocol.

use std::io::Write;

use anyhow::Result;
use qforge_verify::Model;

use crate::cli::PerplexityArgs;
use crate::steps::eval::{check_device, chunks_for, eval_options, forward_options, log_stream};

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
