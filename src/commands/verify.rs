//! `qforge verify`: a quantized model against its base on the same token chunks: perplexity
//! drift, KL divergence, top-1 agreement and per-layer hidden-state error, with budgets that
//! turn into a non-zero exit status.

use std::io::Write;

use anyhow::Result;
use qforge_convert::write::AtomicFile;
use qforge_verify::{Comparison, Model};
use serde_json::json;

use crate::cli::VerifyArgs;
use crate::commands::perplexity::{
    check_device, chunks_for, eval_options, forward_options, log_stream,
};

/// Exit status when a budget is exceeded (documented in `qforge verify --help`).
pub const BUDGET_EXIT_CODE: u8 = 3;

/// The error `run` returns when the comparison exceeds a budget; `main` maps it to
/// [`BUDGET_EXIT_CODE`].
#[derive(Debug)]
pub struct BudgetExceeded(pub String);

impl std::fmt::Display for BudgetExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BudgetExceeded {}

/// The outcome of a verification: the report (JSON), the comparison, and the budget failures.
pub struct Verified {
    /// The JSON report `--report` writes.
    pub report: serde_json::Value,
    /// The figures.
    pub comparison: Comparison,
    /// One line per exceeded budget (empty when within budget).
    pub failures: Vec<String>,
}

/// Budgets of a verification.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Budgets {
    /// Largest allowed perplexity increase, percent.
    pub max_ppl_drift_pct: Option<f64>,
    /// Largest allowed mean KLD.
    pub max_kld: Option<f64>,
    /// Smallest allowed top-1 agreement, percent.
    pub min_top1_pct: Option<f64>,
}

impl Budgets {
    /// One line per budget `c` exceeds.
    pub fn failures(&self, c: &Comparison) -> Vec<String> {
        self.check(c.ppl_drift_pct, c.kld_mean, c.top1_pct)
    }

    /// One line per budget exceeded by these figures.
    pub fn check(&self, ppl_drift_pct: f64, kld_mean: f64, top1_pct: f64) -> Vec<String> {
        struct C {
            ppl_drift_pct: f64,
            kld_mean: f64,
            top1_pct: f64,
        }
        let c = C {
            ppl_drift_pct,
            kld_mean,
            top1_pct,
        };
        let mut failures = Vec::new();
        if let Some(max) = self.max_ppl_drift_pct {
            if c.ppl_drift_pct > max || c.ppl_drift_pct.is_nan() {
                failures.push(format!(
                    "perplexity drift {:+.3}% exceeds {max}%",
                    c.ppl_drift_pct
                ));
            }
        }
        if let Some(max) = self.max_kld {
            if c.kld_mean > max || c.kld_mean.is_nan() {
                failures.push(format!("mean KLD {:.6} exceeds {max}", c.kld_mean));
            }
        }
        if let Some(min) = self.min_top1_pct {
            if c.top1_pct < min || c.top1_pct.is_nan() {
                failures.push(format!(
                    "top-1 agreement {:.2}% is below {min}%",
                    c.top1_pct
                ));
            }
        }
        failures
    }
}

/// Compare as `args` say and build the report.
pub fn evaluate(args: &VerifyArgs) -> Result<Verified> {
    let e = &args.eval;
    check_device(e.device)?;
    let fwd = forward_options(e);
    let base = Model::open(
        &crate::modelref::resolve(&args.base.to_string_lossy())?,
        fwd,
    )?;
    let quant = Model::open(
        &crate::modelref::resolve(&args.quantized.to_string_lossy())?,
        fwd,
    )?;
    // Both models see the same tokens: the base model's tokenizer.
    let chunks = chunks_for(&base, e)?;
    let mut opts = eval_options(e);
    opts.base_cache.clone_from(&args.base_cache);
    let run = qforge_verify::with_threads(e.threads, || {
        qforge_verify::compare_run(&base, &quant, &chunks, &opts)
    })??;
    log_stream(&run.stream, opts.prefetch);
    tracing::info!("base forward: {:?}", run.base_origin);
    note_base(&run, e.quiet || e.json);
    let c = run.comparison;
    let budgets = Budgets {
        max_ppl_drift_pct: args.max_ppl_drift,
        max_kld: args.max_kld,
        min_top1_pct: args.min_top1,
    };
    let failures = budgets.failures(&c);
    let report = json!({
        "base": args.base,
        "quantized": args.quantized,
        "data": e.data,
        "ctx": chunks.ctx,
        "chunks": chunks.n,
        "options": {
            "ggml_act_quant": fwd.ggml_act_quant,
            "kv_f16": fwd.kv_f16,
            "ggml_cpu_ops": fwd.ggml_cpu_ops,
            "w8a8_base": base.w8a8.map(|ub| json!({"activation_scale_ub": ub})),
            "w8a8_quantized": quant.w8a8.map(|ub| json!({"activation_scale_ub": ub})),
        },
        "result": &c,
        "budgets": {
            "max_ppl_drift_pct": args.max_ppl_drift,
            "max_kld": args.max_kld,
            "min_top1_pct": args.min_top1,
        },
        "passed": failures.is_empty(),
        "failures": failures,
    });
    Ok(Verified {
        report,
        comparison: c,
        failures,
    })
}

/// On stderr (as the progress lines: not with --quiet or --json): whether the base forward ran,
/// and each side's seconds.
fn note_base(run: &qforge_verify::CompareRun, quiet: bool) {
    use qforge_verify::BaseOrigin;
    if quiet {
        return;
    }
    let base = match &run.base_origin {
        BaseOrigin::Computed => format!("computed in {:.2} s", run.base_seconds),
        BaseOrigin::Stored(p) => format!(
            "computed in {:.2} s, stored in {}",
            run.base_seconds,
            p.display()
        ),
        BaseOrigin::Cached(p) => format!("reused from {} (no base forward)", p.display()),
    };
    let _ = writeln!(
        std::io::stderr(),
        "base forward: {base}; quantized forward: {:.2} s",
        run.quant_seconds
    );
}

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
