//! `qforge verify`: runs the verify step ([`crate::steps::verify`]) and reports; budgets
//! exceeded turn into a non-zero exit status ([`BUDGET_EXIT_CODE`]).

use std::io::Write;

use anyhow::Result;
use qforge_stage::AtomicFile;
use qforge_verify::Comparison;

use crate::cli::VerifyArgs;
use crate::steps::verify::{evaluate, BudgetExceeded, Verified};

/// Exit status when a budget is exceeded (documented in `qforge verify --help`).
pub const BUDGET_EXIT_CODE: u8 = 3;

pub fn run(args: &VerifyArgs) -> Result<()> {
    let Verified {
        report,
        comparison: c,
        failures,
    } = evaluate(args)?;
    let worst = &c.layers[c.worst_layer as usize];
    if let Some(path) = &args.report {
        let (dest, mut file) = AtomicFile::create(path, true)?;
        serde_json::to_writer_pretty(&mut file, &report)?;
        file.write_all(b"\n")?;
        dest.commit(file)?;
        // the same report as a page with charts, beside it (report.json -> report.html)
        let html = crate::commands::verify_html::html_path(path);
        if html != *path {
            let (dest, mut file) = AtomicFile::create(&html, true)?;
            file.write_all(crate::commands::verify_html::render(&report).as_bytes())?;
            dest.commit(file)?;
        }
    }
    let mut out = std::io::stdout().lock();
    if args.eval.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        print_table(&mut out, &c)?;
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(BudgetExceeded(format!(
            "{}; worst layer: {} (relative error {:.4}, +{:.4} added there)",
            failures.join("; "),
            worst.layer,
            worst.rel_error,
            worst.added
        ))
        .into())
    }
}

fn print_table(out: &mut impl Write, c: &Comparison) -> std::io::Result<()> {
    writeln!(
        out,
        "{} chunks × {} tokens, {} scored",
        c.base.chunks, c.base.ctx, c.base.scored_tokens
    )?;
    writeln!(out, "{:<14} {:>12} {:>12}", "", "base", "quantized")?;
    writeln!(
        out,
        "{:<14} {:>12.4} {:>12.4}",
        "PPL", c.base.ppl, c.quant.ppl
    )?;
    writeln!(
        out,
        "{:<14} {:>12.5} {:>12.5}",
        "± (stderr)", c.base.ppl_stderr, c.quant.ppl_stderr
    )?;
    writeln!(out, "PPL drift       {:+.3} %", c.ppl_drift_pct)?;
    writeln!(
        out,
        "KLD             mean {:.6}  p99 {:.6}  max {:.6}",
        c.kld_mean, c.kld_p99, c.kld_max
    )?;
    writeln!(out, "top-1 agreement {:.2} %", c.top1_pct)?;
    writeln!(out)?;
    writeln!(out, "{:>5} {:>12} {:>12}", "layer", "rel. error", "added")?;
    for l in &c.layers {
        let mark = if l.layer == c.worst_layer {
            "  <- worst"
        } else {
            ""
        };
        writeln!(
            out,
            "{:>5} {:>12.6} {:>+12.6}{mark}",
            l.layer, l.rel_error, l.added
        )?;
    }
    Ok(())
}
