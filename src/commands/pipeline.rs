//! `qforge pipeline <recipe.toml>`: convert, calibrate, quantize and verify in one resumable run.
//!
//! Every step has a key: the sha256 of its options and of the fingerprints of its inputs (a
//! model directory's `manifest.json` when it has one, otherwise the names, sizes and modification
//! times of its files; the evaluation and calibration texts are hashed whole). The state file
//! `<out>/.qforge-pipeline-state.json` (replaced atomically after every change) records each
//! step as `started` or `done` with its key and the fingerprint of what it wrote. A rerun skips
//! the steps that are done with the same key and whose outputs are unchanged, and finishes the
//! others: a step recorded as `started` whose output exists completed (outputs appear
//! atomically), one without output resumes from its staging directory. Any other step starts
//! afresh (stale outputs and staging directories of other options are removed first). Outputs
//! are deterministic, so an interrupted and resumed run ends with the same bytes as an
//! uninterrupted one, the report included (it holds no timings).

use qforge_quantize::scheme::CalibInput;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use qforge_stage::resume::{self, Key};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::cli::{EvalArgs, PipelineArgs, VerifyArgs, W8a8Arg};
use crate::recipe::{CalibrateStep, QuantizeStep, Recipe};
use crate::steps::from_recipe::{
    base_and_input, calib_use, calibrate_args, convert_args, quantize_args, CalibrateSettings,
};
use crate::steps::verify::{BudgetExceeded, Budgets};

/// The state file's name inside the output directory.
pub const STATE_FILE: &str = ".qforge-pipeline-state.json";

/// Runs a recipe's `[calibrate]` step: writes the calibration results for `model` to `out`
/// (atomically, e.g. with [`qforge_stage::AtomicFile`]) in the JSON form `qforge quantize --calib` reads.
/// The pipeline passes `out` to every quantize step as `--calib`.
pub trait Calibrator {
    /// Calibrate `model` as `step` says, writing `out`.
    fn calibrate(&self, model: &Path, step: &CalibrateStep, out: &Path) -> Result<()>;
}

/// The calibrator of this build: `qforge calibrate` (fp8-static, gptq, awq) and `qforge imatrix`,
/// run in-process with the recipe's settings.
pub struct Builtin;

impl Calibrator for Builtin {
    fn calibrate(&self, model: &Path, step: &CalibrateStep, out: &Path) -> Result<()> {
        match calibrate_args(model, step, out)? {
            CalibrateSettings::Layers(a) => crate::steps::calibrate::run(&a),
            CalibrateSettings::Imatrix(a) => crate::steps::imatrix::run(&a),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    version: u32,
    steps: BTreeMap<String, StepState>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StepState {
    key: String,
    status: Status,
    /// Fingerprint of the step's output when done.
    #[serde(default)]
    output: Option<String>,
    /// What the step reported (quantize summary, verify report).
    #[serde(default)]
    result: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Started,
    Done,
}

/// Cheap identity of a model or artifact: its manifest (which holds every file's sha256), else
/// the names, sizes and modification times of its files.
fn fingerprint(path: &Path) -> Result<String> {
    let manifest = path.join(qforge_stage::MANIFEST);
    if manifest.is_file() {
        let b =
            std::fs::read(&manifest).with_context(|| format!("reading {}", manifest.display()))?;
        return Ok(format!("manifest:{}", Key::of(&b)));
    }
    let meta = |p: &Path| -> Result<String> {
        let m = std::fs::metadata(p).with_context(|| format!("reading {}", p.display()))?;
        let mtime = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        Ok(format!("{}:{}:{mtime}", m.len(), m.is_dir()))
    };
    let mut lines = vec![meta(path)?];
    if path.is_dir() {
        let mut names: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        names.sort();
        for p in names {
            lines.push(format!(
                "{}={}",
                p.file_name().unwrap_or_default().to_string_lossy(),
                meta(&p)?
            ));
        }
    }
    Ok(format!("stat:{}", Key::of(lines.join("\n").as_bytes())))
}

/// What a convert or quantize step wrote: a directory's manifest entries, or a file's size.
fn describe_output(p: &Path) -> Result<Value> {
    let manifest = p.join(qforge_stage::MANIFEST);
    let files = if manifest.is_file() {
        read_json(&manifest)?["files"].clone()
    } else {
        let m = std::fs::metadata(p).with_context(|| format!("reading {}", p.display()))?;
        json!([{"path": p.file_name().map(|n| n.to_string_lossy().into_owned()), "bytes": m.len()}])
    };
    let bytes: u64 = files
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["bytes"].as_u64())
        .sum();
    Ok(json!({"bytes": bytes, "files": files}))
}

fn read_json(p: &Path) -> Result<Value> {
    let b = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_slice(&b).with_context(|| format!("{}: not JSON", p.display()))
}

fn hash_file(p: &Path) -> Result<String> {
    Ok(qforge_stage::hash_file(p)?.0)
}

/// Timings differ run to run; the report and the state keep only what is deterministic.
fn strip_timings(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|k, _| !matches!(k.as_str(), "seconds" | "tokens_per_second"));
            m.values_mut().for_each(strip_timings);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_timings),
        _ => {}
    }
}

fn remove_any(p: &Path) -> Result<()> {
    let r = if p.is_dir() {
        std::fs::remove_dir_all(p)
    } else {
        std::fs::remove_file(p)
    };
    match r {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing stale {}", p.display()))
        }
        _ => Ok(()),
    }
}

/// Where `[verify]` keeps the base forward until every output is verified.
const BASE_CACHE_DIR: &str = ".verify-base-cache";

struct Runner<'a> {
    dir: PathBuf,
    state: State,
    quiet: bool,
    progress: indicatif::ProgressBar,
    calibrator: &'a dyn Calibrator,
    /// Steps run (not skipped) in this invocation, in order.
    ran: Vec<String>,
}

impl Runner<'_> {
    fn save(&self) -> Result<()> {
        Ok(resume::save(&self.dir.join(STATE_FILE), &self.state)?)
    }

    fn say(&self, msg: &str) {
        tracing::info!("{msg}");
        if !self.quiet {
            self.progress.suspend(|| {
                let _ = writeln!(std::io::stderr(), "{msg}");
            });
        }
    }

    /// Run step `id` with key `key`, writing `out`, unless it is already done. The step's
    /// result is `describe(out)`, a function of its (atomically written) output alone, so a step
    /// killed after its output appeared but before the state was saved is recognised as done.
    /// The `verify:<name>` step of one output `out` against the base (`(path, fingerprint)`):
    /// runs (or reuses) the comparison, writes `<name>.verify.json`, and checks the budgets
    /// (the output's own over `[verify]`'s). Returns the report's verify entry and the failures.
    fn verify_output(
        &mut self,
        v: &crate::recipe::VerifyStep,
        q: &QuantizeStep,
        name: &str,
        out: &Path,
        (base, base_fp): (&Path, &str),
    ) -> Result<(Value, Vec<String>)> {
        let id = format!("verify:{name}");
        let vopts = json!({"data": v.data.file_name().map(|n| n.to_string_lossy().into_owned()),
                           "ctx": v.ctx, "chunks": v.chunks});
        let art_fp = fingerprint(out)?;
        let key = step_key(&id, &vopts, &[base_fp, &art_fp, &hash_file(&v.data)?]);
        let report_path = self.dir.join(format!("{name}.verify.json"));
        let base_cache = self.dir.join(BASE_CACHE_DIR);
        let budgets = Budgets {
            max_ppl_drift_pct: q.max_ppl_drift.or(v.max_ppl_drift).map(|p| p.0),
            max_kld: q.max_kld.or(v.max_kld),
            min_top1_pct: q.min_top1.or(v.min_top1),
        };
        let quiet = self.quiet;
        let result = self.step(
            &id,
            &key,
            &report_path,
            |_| {
                let a = verify_args(base, out, v, &base_cache, quiet);
                let vr = crate::steps::verify::evaluate(&a)?;
                let mut res = json!(vr.comparison);
                strip_timings(&mut res);
                write_json(&report_path, &res)
            },
            read_json,
        )?;
        let num = |k: &str| result[k].as_f64().unwrap_or(f64::NAN);
        let failures = budgets.check(num("ppl_drift_pct"), num("kld_mean"), num("top1_pct"));
        let entry = json!({
            "result": result,
            "budgets": budgets,
            "passed": failures.is_empty(),
            "failures": failures,
        });
        Ok((entry, failures))
    }

    fn step(
        &mut self,
        id: &str,
        key: &str,
        out: &Path,
        run: impl FnOnce(bool) -> Result<()>,
        describe: impl Fn(&Path) -> Result<Value>,
    ) -> Result<Value> {
        self.progress.set_message(id.to_owned());
        let prev = self.state.steps.get(id).cloned();
        let same = prev.as_ref().filter(|s| s.key == key);
        if let Some(s) = same {
            let exists = out.exists();
            if s.status == Status::Done && exists && s.output.as_deref() == Some(&fingerprint(out)?)
            {
                self.say(&format!("{id}: done earlier, skipped"));
                self.progress.inc(1);
                return Ok(s.result.clone());
            }
            if s.status == Status::Started && exists {
                // Outputs appear atomically: this one was complete when the run was killed.
                let result = describe(out)?;
                self.finish(id, key, fingerprint(out)?, result.clone())?;
                self.say(&format!("{id}: completed before the interruption, kept"));
                return Ok(result);
            }
        }
        // Resume only what this very step (same key) left behind.
        let resume = same.is_some_and(|s| s.status == Status::Started);
        remove_any(out)?;
        if !resume {
            remove_any(&qforge_stage::staging_path(out))?;
        }
        self.state.steps.insert(
            id.to_owned(),
            StepState {
                key: key.to_owned(),
                status: Status::Started,
                output: None,
                result: Value::Null,
            },
        );
        self.save()?;
        self.say(&format!(
            "{id}: {}",
            if resume { "resuming" } else { "running" }
        ));
        // the step shows its own progress (bytes or layers, rate, ETA) with the steps bar hidden
        self.progress
            .suspend(|| run(resume))
            .with_context(|| format!("pipeline step {id}"))?;
        let result = describe(out)?;
        self.finish(id, key, fingerprint(out)?, result.clone())?;
        self.ran.push(id.to_owned());
        Ok(result)
    }

    fn finish(&mut self, id: &str, key: &str, fp: String, result: Value) -> Result<()> {
        self.state.steps.insert(
            id.to_owned(),
            StepState {
                key: key.to_owned(),
                status: Status::Done,
                output: Some(fp),
                result,
            },
        );
        self.progress.inc(1);
        self.save()
    }
}

pub fn run(args: &PipelineArgs) -> Result<()> {
    if args.dry_run {
        return crate::commands::plan::run_recipe(&args.recipe, args.json);
    }
    run_with(args, &Builtin)
}

/// Run a recipe with calibration done by `calibrator`.
pub fn run_with(args: &PipelineArgs, calibrator: &dyn Calibrator) -> Result<()> {
    let r = Recipe::load(&args.recipe)?;
    let (base, input) = base_and_input(&r)?;
    std::fs::create_dir_all(&r.output.dir)
        .with_context(|| format!("creating {}", r.output.dir.display()))?;
    // an unreadable record starts afresh (every step's output is checked against its key)
    let state: State = resume::load(&r.output.dir.join(STATE_FILE))
        .ok()
        .flatten()
        .unwrap_or_default();
    let verify_n = r.verify.as_ref().map_or(0, |_| {
        r.quantize
            .iter()
            .filter(|q| q.verify != Some(false))
            .count()
    });
    let total = u64::from(r.convert.is_some())
        + u64::from(r.calibrate.is_some())
        + r.quantize.len() as u64
        + verify_n as u64;
    let progress = crate::progress::steps_bar(total, args.quiet);
    let quiet = args.quiet;
    let mut run = Runner {
        dir: r.output.dir.clone(),
        state,
        quiet: args.quiet,
        progress,
        calibrator,
        ran: Vec::new(),
    };
    let recipe_json = serde_json::to_value(&r)?;
    let input_fp = fingerprint(&input)?;
    let mut steps = serde_json::Map::new();

    // 1. convert
    let base_fp = if let Some(c) = &r.convert {
        let key = step_key("convert", &json!(c), &[&input_fp]);
        let out = base.clone();
        let res = run.step(
            "convert",
            &key,
            &out,
            |resume| {
                let mut a = convert_args(&r, &input, resume)?.expect("has [convert]");
                a.quiet = quiet;
                crate::steps::convert::execute(&a).map(drop)
            },
            describe_output,
        )?;
        steps.insert("convert".into(), res);
        fingerprint(&base)?
    } else {
        input_fp.clone()
    };

    // 2. calibrate
    let calib = if let Some(c) = &r.calibrate {
        let out = r.output.dir.join(&c.name);
        let key = step_key("calibrate", &json!(c), &[&base_fp, &hash_file(&c.data)?]);
        let cal = run.calibrator;
        let res = run.step(
            "calibrate",
            &key,
            &out,
            |_| cal.calibrate(&base, c, &out),
            describe_output,
        )?;
        steps.insert("calibrate".into(), res);
        Some(out)
    } else {
        None
    };
    let calib_fp = match &calib {
        Some(p) => fingerprint(p)?,
        None => String::new(),
    };

    // 3. quantize
    let mut artifacts = Vec::new();
    for q in &r.quantize {
        let name = Recipe::artifact_name(q);
        let id = format!("quantize:{name}");
        let key = step_key(&id, &json!(q), &[&base_fp, &calib_fp]);
        let out = r.output.dir.join(&name);
        let res = run.step(
            &id,
            &key,
            &out,
            |resume| {
                let method = r.calibrate.as_ref().map_or("", |c| c.method.as_str());
                let (c, im) = match (calib_use(method, &q.scheme), &calib) {
                    (Some(CalibInput::Imatrix), Some(p)) => (None, Some(p.clone())),
                    (Some(CalibInput::Calib), Some(p)) => (Some(p.clone()), None),
                    _ => (None, None),
                };
                let mut a = quantize_args(&r, q, &base, c, resume)?;
                a.imatrix = im;
                a.quiet = quiet;
                crate::steps::quantize::execute(&a).map(drop)
            },
            describe_output,
        )?;
        artifacts.push((q, name, out, res));
    }

    // 4. verify: the base forward runs once for all the outputs (kept in base_cache until
    // every output is verified, so an interrupted run resumes without it either)
    let base_cache = r.output.dir.join(BASE_CACHE_DIR);
    let mut report_artifacts = Vec::new();
    let mut all_failures = Vec::new();
    for (q, name, out, summary) in artifacts {
        let mut entry = json!({"name": name, "quantize": summary});
        if let (Some(v), true) = (&r.verify, q.verify != Some(false)) {
            let (verified, failures) = run.verify_output(v, q, &name, &out, (&base, &base_fp))?;
            all_failures.extend(failures.iter().map(|f| format!("{name}: {f}")));
            entry["verify"] = verified;
        }
        report_artifacts.push(entry);
    }
    if base_cache.exists() {
        std::fs::remove_dir_all(&base_cache)
            .with_context(|| format!("removing {}", base_cache.display()))?;
    }
    run.progress.finish_and_clear();

    let report = json!({
        "generator": format!("qforge {}", env!("CARGO_PKG_VERSION")),
        "recipe": recipe_json,
        "input": r.input.model,
        "base": base.strip_prefix(&r.output.dir).unwrap_or(&base),
        "steps": steps,
        "artifacts": report_artifacts,
        "passed": all_failures.is_empty(),
        "failures": all_failures,
    });
    let report_path = r.output.dir.join(&r.output.report);
    write_json(&report_path, &report)?;
    print_table(&report, args.json)?;
    tracing::debug!(ran = ?run.ran, "steps run in this invocation");
    if all_failures.is_empty() {
        Ok(())
    } else {
        Err(BudgetExceeded(format!(
            "{} budget(s) exceeded: {} (report: {})",
            all_failures.len(),
            all_failures.join("; "),
            report_path.display()
        ))
        .into())
    }
}

/// The resume key of a step: its id, options and inputs' fingerprints, hashed.
fn step_key(id: &str, opts: &Value, inputs: &[&str]) -> String {
    Key::of(
        json!({"step": id, "options": opts, "inputs": inputs})
            .to_string()
            .as_bytes(),
    )
}

/// `value` as pretty JSON at `path`, written atomically.
fn write_json(path: &Path, value: &Value) -> Result<()> {
    Ok(qforge_stage::write_json_atomic(path, value)?)
}

/// What a recipe's `[verify]` runs for one output: `qforge verify` with the recipe's text,
/// context and chunks, the defaults otherwise, JSON out, the shared base cache.
fn verify_args(
    base: &Path,
    out: &Path,
    v: &crate::recipe::VerifyStep,
    base_cache: &Path,
    quiet: bool,
) -> VerifyArgs {
    VerifyArgs {
        base: base.to_path_buf(),
        quantized: out.to_path_buf(),
        eval: EvalArgs {
            data: v.data.clone(),
            ctx: v.ctx.unwrap_or(512),
            chunks: v.chunks,
            threads: None,
            device: qforge_verify::Device::Cpu,
            no_prefetch: false,
            batch_chunks: None,
            ggml_act_quant: false,
            kv_f16: false,
            ggml_cpu_ops: false,
            w8a8: W8a8Arg::Auto,
            logits_out: None,
            json: true,
            quiet,
        },
        report: None,
        max_ppl_drift: None,
        max_kld: None,
        min_top1: None,
        base_cache: Some(base_cache.to_path_buf()),
    }
}

/// The drift table (or the report as JSON) on stdout.
fn print_table(report: &Value, as_json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if as_json {
        serde_json::to_writer_pretty(&mut out, report)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<24} {:>14} {:>10} {:>10} {:>8} {:>10} {:>8}  budget",
        "artifact", "bytes", "PPL base", "PPL quant", "drift", "mean KLD", "top-1"
    )?;
    for a in report["artifacts"].as_array().into_iter().flatten() {
        let bytes = a["quantize"]["bytes"].as_u64().unwrap_or(0);
        let name = a["name"].as_str().unwrap_or("");
        let v = &a["verify"];
        if v.is_null() {
            writeln!(out, "{name:<24} {bytes:>14}  (not verified)")?;
            continue;
        }
        let r = &v["result"];
        let f = |x: &Value| x.as_f64().unwrap_or(f64::NAN);
        writeln!(
            out,
            "{name:<24} {bytes:>14} {:>10.4} {:>10.4} {:>+7.2}% {:>10.5} {:>7.2}%  {}",
            f(&r["base"]["ppl"]),
            f(&r["quant"]["ppl"]),
            f(&r["ppl_drift_pct"]),
            f(&r["kld_mean"]),
            f(&r["top1_pct"]),
            if v["passed"].as_bool() == Some(true) {
                "ok"
            } else {
                "EXCEEDED"
            }
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_timings_removes_only_timings() {
        let mut v = json!({"a": {"seconds": 1.0, "ppl": 2.0, "x": [{"tokens_per_second": 3}]}});
        strip_timings(&mut v);
        assert_eq!(v, json!({"a": {"ppl": 2.0, "x": [{}]}}));
    }
}
