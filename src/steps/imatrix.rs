//! The importance-matrix step: llama-imatrix's importance matrix from the reference forward
//! pass, from parsed settings ([`ImatrixArgs`]: `qforge imatrix` parses them, a recipe builds them).

use std::io::Write;

use std::path::PathBuf;

use anyhow::Result;
use qforge_verify::{Chunks, EvalOptions, ForwardOptions, Model, TextTokenizer, W8a8Mode};
use serde_json::json;

use crate::cli::{ImatrixArgs, ImatrixFormatArg};

pub fn run(args: &ImatrixArgs) -> Result<()> {
    let model = Model::open(
        &args.model,
        ForwardOptions {
            w8a8: W8a8Mode::Auto,
            ggml_act_quant: args.ggml_act_quant,
            kv_f16: args.kv_f16,
            ggml_cpu_ops: args.ggml_cpu_ops,
        },
    )?;
    crate::commands::warn_long_ctx(model.config(), "--ctx", args.ctx);
    crate::commands::log_read("model", &model.ckpt);
    let tok = TextTokenizer::for_checkpoint(&model.ckpt)?;
    let mut ids = Vec::new();
    for p in &args.data {
        let mut text = crate::commands::read_text(p)?;
        // llama.cpp's -f drops one trailing newline.
        if text.ends_with('\n') {
            text.pop();
        }
        ids.extend(tok.encode(&text)?);
    }
    let chunks = Chunks::new(&ids, args.ctx, args.chunks, tok.bos).map_err(|e| {
        let paths: Vec<&std::path::Path> = args.data.iter().map(PathBuf::as_path).collect();
        crate::commands::name_texts(e, &paths)
    })?;
    let opts = EvalOptions {
        batch_chunks: args.batch_chunks,
        logits_out: None,
        progress: !args.quiet && !args.json,
        device: args.device,
        prefetch: !args.no_prefetch,
        base_cache: None,
    };
    let start = std::time::Instant::now();
    crate::steps::eval::check_device(args.device)?;
    let mut m = qforge_verify::with_threads(args.threads, || {
        qforge_verify::collect_imatrix(&model, &chunks, &opts, args.process_output)
    })??;
    let seconds = start.elapsed().as_secs_f64();
    m.datasets = args
        .data
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let legacy = match args.format {
        Some(f) => f == ImatrixFormatArg::Dat,
        None => args.output.extension().is_some_and(|e| e == "dat"),
    };
    let rec = m.write(&args.output, legacy, args.overwrite)?;
    tracing::info!(
        "wrote {}: {} entries, {} bytes",
        args.output.display(),
        m.entries.len(),
        rec.bytes
    );
    if args.json {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer_pretty(
            &mut out,
            &json!({
                "output": args.output,
                "format": if legacy { "dat" } else { "gguf" },
                "entries": m.entries.len(),
                "chunks": m.chunk_count,
                "chunk_size": m.chunk_size,
                "tokens": chunks.n * chunks.ctx,
                "seconds": seconds,
                "bytes": rec.bytes,
                "sha256": rec.sha256,
            }),
        )?;
        writeln!(out)?;
    } else {
        writeln!(
            std::io::stderr(),
            "wrote {} ({} entries, {} chunks × {} tokens, {:.1} s)",
            args.output.display(),
            m.entries.len(),
            m.chunk_count,
            m.chunk_size,
            seconds
        )?;
    }
    Ok(())
}
