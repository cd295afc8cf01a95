//! The verify step: a quantized model against its base on the same token chunks (perplexity
//! drift, KL divergence, top-1 agreement, per-layer hidden-state error) and the budgets, from
//! parsed settings ([`VerifyArgs`], which `qforge verify` parses and a recipe builds).

use std::io::Write;

use anyhow::Result;
use qforge_verify::{Comparison, Model};
use serde_json::json;

use crate::cli::VerifyArgs;
use crate::steps::eval::{check_device, chunks_for, eval_options, forward_options, log_stream};

/// The error a verification returns when the comparison exceeds a budget; `main` maps it to
/// `commands::verify::BUDGET_EXIT_CODE`.
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
