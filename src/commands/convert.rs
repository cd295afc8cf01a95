//! `qforge convert`: parses its arguments once and runs the convert step
//! ([`crate::steps::convert`]), then reports.

use std::io::Write;

use anyhow::Result;
use qforge_convert::export::Written;

use crate::cli::{ConvertArgs, ConvertTarget, FloatDtype};
use crate::steps::convert::execute;

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
