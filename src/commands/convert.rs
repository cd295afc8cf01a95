//! `qforge convert`: any supported checkpoint to another format.

use std::io::Write;

use anyhow::Result;
use qforge_codecs::DType;
use qforge_convert::export::{convert_to_hf, HfOptions, Written};
use qforge_convert::export_gguf::{convert_to_gguf, GgufOptions};
use qforge_convert::export_meta::{convert_to_meta_with, MetaOptions};
use qforge_convert::write::OutputOptions;
use qforge_convert::Checkpoint;

use crate::cli::{ConvertArgs, ConvertTarget, FloatDtype};

pub fn run(args: &ConvertArgs) -> Result<()> {
    if args.dry_run && args.to == ConvertTarget::Meta {
        return Err(crate::cli::UsageError(
            "--dry-run plans --to hf and --to gguf; Meta's .pth containers are not planned\n  \
             hint: plan --to hf for the tensor bytes, or convert without --dry-run"
                .to_owned(),
        )
        .into());
    }
    check_output_name(args, &mut std::io::sink())?;
    if args.dry_run {
        return crate::commands::plan::run_convert(args);
    }
    crate::commands::note_partial(&args.output, args.resume, args.quiet);
    let written = execute(args)?;
    // the name warning after the run, so that a failing run prints its one error line only
    check_output_name(args, &mut std::io::stderr().lock())?;
    report(args, &written, &mut std::io::stderr().lock())?;
    if args.json {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut out, &summary(args, &written))?;
        writeln!(out)?;
    }
    Ok(())
}

/// A directory output named `.gguf` is refused; a GGUF file without the extension is warned
/// about.
fn check_output_name(args: &ConvertArgs, err: &mut impl Write) -> Result<()> {
    let ext = args
        .output
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    match (args.to, ext.as_deref()) {
        (ConvertTarget::Hf | ConvertTarget::Meta, Some(e @ ("gguf" | "safetensors" | "pth"))) => {
            Err(crate::cli::UsageError(format!(
                "{} ends in .{e}, but --to {} writes a directory\n  hint: name the output \
                 without .{e}, or use --to gguf for a GGUF file",
                args.output.display(),
                if args.to == ConvertTarget::Hf {
                    "hf"
                } else {
                    "meta"
                }
            ))
            .into())
        }
        (ConvertTarget::Gguf, e) if e != Some("gguf") && !args.quiet => {
            writeln!(
                err,
                "warning: {} is a GGUF file; its name does not end in .gguf (llama.cpp's tools \
                 and most UIs look for the extension)",
                args.output.display()
            )?;
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The summary `--json` prints.
fn summary(args: &ConvertArgs, written: &Written) -> serde_json::Value {
    serde_json::json!({
        "output": args.output,
        "to": match args.to {
            ConvertTarget::Hf => "hf",
            ConvertTarget::Gguf => "gguf",
            ConvertTarget::Meta => "meta",
        },
        "dtype": args.dtype.map(FloatDtype::name),
        "bytes": written.files.iter().map(|f| f.bytes).sum::<u64>(),
        "files": written.files,
        "resumed_files": written.resumed.len(),
        "notes": written.notes,
    })
}

/// Convert as `args` say.
pub fn execute(args: &ConvertArgs) -> Result<Written> {
    let ckpt = Checkpoint::open(crate::modelref::resolve(&args.input.to_string_lossy())?)?;
    crate::commands::log_read("input", &ckpt);
    tracing::info!(
        "chose: --to {}, dtype {}, shard size {} bytes",
        crate::commands::value_name(&args.to),
        args.dtype.map_or("kept per tensor", FloatDtype::name),
        args.shard_size
    );
    let total = crate::commands::plan::plan_convert(&ckpt, args)
        .ok()
        .map(|p| p.file_bytes);
    let watch = crate::progress::OutputWatch::start("convert", &args.output, total, args.quiet);
    let w = execute_on(&ckpt, args);
    drop(watch);
    let w = w?;
    crate::commands::log_written(&args.output, &w.files);
    Ok(w)
}

/// Convert an open checkpoint as `args` say (`args.dry_run`: plan only; GGUF and HF targets).
pub fn execute_on(ckpt: &Checkpoint, args: &ConvertArgs) -> Result<Written> {
    if args.dry_run && args.to == ConvertTarget::Meta {
        anyhow::bail!("--dry-run plans --to hf and --to gguf; --to meta is not planned yet");
    }
    let dtype = args.dtype.map(|d| match d {
        FloatDtype::Bf16 => DType::BF16,
        FloatDtype::F16 => DType::F16,
        FloatDtype::F32 => DType::F32,
    });
    let output = OutputOptions {
        resume: args.resume,
        overwrite: args.overwrite,
        dry_run: args.dry_run,
        allow_lossy: args.allow_lossy,
    };
    Ok(match args.to {
        ConvertTarget::Hf => convert_to_hf(
            ckpt,
            &args.output,
            HfOptions {
                dtype,
                shard_size: args.shard_size,
                output,
            },
        )?,
        ConvertTarget::Gguf => convert_to_gguf(
            ckpt,
            &args.output,
            GgufOptions {
                // no --dtype: each float tensor keeps its type (as --help says), quantized
                // ones are decoded to F32
                dtype,
                overwrite: args.overwrite,
                dry_run: args.dry_run,
                allow_lossy: args.allow_lossy,
            },
        )?,
        ConvertTarget::Meta => convert_to_meta_with(
            ckpt,
            &args.output,
            MetaOptions {
                mp: usize::from(args.mp),
                dtype,
                output,
            },
        )?,
    })
}

fn report(args: &ConvertArgs, written: &Written, err: &mut impl Write) -> Result<()> {
    if args.quiet {
        return Ok(());
    }
    for n in &written.notes {
        writeln!(err, "{}: {n}", n.label())?;
    }
    if args.json {
        return Ok(());
    }
    if !written.resumed.is_empty() {
        writeln!(
            err,
            "resumed: kept {} verified file(s) from the interrupted run",
            written.resumed.len()
        )?;
    }
    let total: u64 = written.files.iter().map(|f| f.bytes).sum();
    let n = written.files.len();
    writeln!(
        err,
        "wrote {} ({n} file{}, {total} bytes)",
        args.output.display(),
        if n == 1 { "" } else { "s" },
    )?;
    Ok(())
}
