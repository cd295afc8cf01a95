//! `qforge quantize`: parses its arguments once and runs the quantize step
//! ([`crate::steps::quantize`]), then reports.

use std::io::Write;

use anyhow::Result;

use crate::cli::QuantizeArgs;
use crate::steps::quantize::{check_output_name, execute, parse_scheme, Scheme};

pub fn run(args: &QuantizeArgs) -> Result<()> {
    // a bad --scheme is a usage error (exit status 2), found before the model is opened
    parse_scheme(&args.scheme, args.asym).map_err(crate::cli::usage)?;
    if args.dry_run {
        return crate::commands::plan::run_quantize(args);
    }
    crate::commands::note_partial(&args.output, args.resume, args.quiet);
    let summary = execute(args)?.summary;
    // after the run, so that a failing run prints its one error line only
    let scheme = parse_scheme(&args.scheme, args.asym)?;
    if matches!(scheme, Scheme::Gguf(_)) && !args.quiet {
        check_output_name(&args.output, scheme, &mut std::io::stderr())?;
    }
    print_summary(args, &summary)
}

fn print_summary(args: &QuantizeArgs, summary: &serde_json::Value) -> Result<()> {
    let mut err = std::io::stderr().lock();
    if args.json {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut out, summary)?;
        writeln!(out)?;
    } else if !args.quiet {
        if let Some(types) = summary.get("types").and_then(serde_json::Value::as_object) {
            let list: Vec<String> = types.iter().map(|(t, n)| format!("{n} {t}")).collect();
            writeln!(err, "tensor types: {}", list.join(", "))?;
        }
        if let Some(n) = summary.get("quantized_modules") {
            writeln!(
                err,
                "quantized {n} linear modules; kept in {}: {}",
                args.dtype.name(),
                summary["kept_modules"].as_array().map_or(0, Vec::len)
            )?;
        }
        writeln!(
            err,
            "wrote {} ({} bytes)",
            args.output.display(),
            summary["bytes"]
        )?;
    }
    Ok(())
}
