//! `qforge plan` and `--dry-run`: what a conversion, quantization or pipeline would write, from
//! configs and headers alone.
//!
//! Sizes are not estimated: the real writers run in dry-run mode (see
//! `qforge_convert::write`), planning every safetensors header, index, config, tokenizer file,
//! manifest and GGUF header exactly as a real run lays them out, without producing tensor data.
//! A model that is only a `config.json` is planned from the shapes the config implies
//! ([`Checkpoint::from_config`]).
//!
//! Peak memory and time are models, documented in BENCHMARKS.md ("Plan: memory and time
//! model") with the measurements they come from:
//! - memory: a fixed base (the process, its thread pool and I/O buffers) plus, for the most
//!   demanding tensor, what the writer holds while producing it: the source tensor's mapped
//!   pages, the output bytes, and for INT4 the whole-tensor `f32` decode and codes;
//! - time: bytes of source tensor data over the throughput measured per kind of work on the
//!   2-core reference machine, scaled by the number of cores for compute-bound work.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use qforge_codecs::DType;
use qforge_convert::names::{TensorId, TensorKey};
use qforge_convert::write::FileRecord;
use qforge_convert::Checkpoint;
use serde::Serialize;
use serde_json::json;

use crate::cli::{ConvertArgs, ConvertTarget, FloatDtype, PlanArgs, QuantizeArgs};
use crate::commands::plan_forward::{self, Job, Work};
use crate::commands::quantize::{parse_scheme, Scheme};
use crate::recipe::Recipe;

/// Resident memory of the process before the largest tensor: binary, thread pool, 1 MiB write
/// buffer, allocator slack (measured, BENCHMARKS.md).
pub const BASE_RSS: u64 = 24 << 20;

/// Measured throughputs on the 2-core reference machine, bytes of source tensor data per
/// second (BENCHMARKS.md, "Quantization throughput" and "Plan: memory and time model").
mod rate {
    /// Copy / float conversion to safetensors or GGUF.
    pub const COPY: f64 = 450e6;
    /// FP8 rowwise (two passes over the source; the median of the three rounds of
    /// `scripts/bench-quantize.sh`, 2026-11-23, 544 MB/s).
    pub const FP8: f64 = 540e6;
    /// INT4 (whole-tensor f32 decode, three producers).
    pub const INT4: f64 = 60e6;
    /// GGUF Q8_0 / Q4_0-style blocks.
    pub const GGUF_SIMPLE: f64 = 284e6;
    /// GGUF K-quant mixes (ggml's scale search).
    pub const GGUF_K: f64 = 24e6;
    /// Reference forward of verify, multiply-adds per second (f32).
    pub const VERIFY_MACS: f64 = 6e9;
    /// The cores these were measured on.
    pub const CORES: f64 = 2.0;
}

/// One planned output.
#[derive(Debug, Clone, Serialize)]
pub struct OutputPlan {
    /// What makes it (`convert`, `quantize`).
    pub step: String,
    /// Destination.
    pub output: PathBuf,
    /// Every file with its exact size.
    pub files: Vec<PlannedFile>,
    /// Sum of the file sizes.
    pub file_bytes: u64,
    /// Bytes of tensor data (headers, metadata and padding excluded).
    pub tensor_bytes: u64,
    /// Predicted peak resident memory of the step.
    pub peak_memory_bytes: u64,
    /// Disk needed while writing (the output; staging is renamed, not copied).
    pub disk_bytes: u64,
    /// Predicted wall time.
    pub seconds: f64,
}

/// A planned file.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedFile {
    /// Name inside the output (or the file name of a single-file output).
    pub path: String,
    /// Exact size.
    pub bytes: u64,
}

impl OutputPlan {
    /// The plan of `step` writing `records` (the writers' dry run) to `output`, with the
    /// step's largest working set `worst` (on top of [`BASE_RSS`]) and predicted time.
    fn new(step: &str, output: &Path, records: &[FileRecord], worst: u64, seconds: f64) -> Self {
        let files: Vec<PlannedFile> = records
            .iter()
            .map(|r| PlannedFile {
                path: r.path.clone(),
                bytes: r.bytes,
            })
            .collect();
        let file_bytes = records.iter().map(|r| r.bytes).sum();
        OutputPlan {
            step: step.into(),
            output: output.into(),
            files,
            file_bytes,
            tensor_bytes: records.iter().map(|r| r.tensor_bytes).sum(),
            peak_memory_bytes: BASE_RSS + worst,
            disk_bytes: file_bytes,
            seconds,
        }
    }
}

fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

/// Open a model for planning: headers only, or a config-only directory's implied shapes.
pub fn open_for_plan(s: &str) -> Result<Checkpoint> {
    let path = crate::modelref::resolve(s)?;
    let has_weights = path.is_file()
        || std::fs::read_dir(&path).is_ok_and(|d| {
            d.filter_map(std::result::Result::ok).any(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                n.ends_with(".safetensors")
                    || n.ends_with(".gguf")
                    || n.ends_with(".pth")
                    || n == "params.json"
            })
        });
    if !has_weights && path.join("config.json").is_file() {
        return Ok(Checkpoint::from_config(&path)?);
    }
    Ok(Checkpoint::open(&path)?)
}

fn numel(ckpt: &Checkpoint, id: TensorId) -> u64 {
    ckpt.config.expected_shape(id).iter().product()
}

fn roles(ckpt: &Checkpoint) -> Vec<TensorId> {
    let mut ids: Vec<TensorId> = ckpt.tensors.iter().map(|t| t.key.id).collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Plan a quantization of `ckpt`.
pub fn plan_quantize(ckpt: &Checkpoint, args: &QuantizeArgs) -> Result<OutputPlan> {
    let mut a = clone_quantize(args);
    a.dry_run = true;
    let q = crate::commands::quantize::execute_on(ckpt, &a)?;
    let scheme = parse_scheme(&args.scheme, args.asym)?;
    let model_dtype = match args.dtype {
        FloatDtype::F32 => DType::F32,
        _ => DType::BF16,
    };
    // Per role: (working memory while producing it, seconds).
    let mut worst = 0u64;
    let mut seconds = 0f64;
    let c = cores();
    for id in roles(ckpt) {
        if id == TensorId::RopeFreqs {
            continue;
        }
        let src = ckpt.role_bytes(id);
        let (work, secs) = match scheme {
            Scheme::Gguf(_) => {
                let name = qforge_convert::names::NameScheme::Gguf
                    .name(TensorKey::weight(id))
                    .unwrap_or_default();
                let dt = q
                    .gguf_types
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map_or(DType::F32, |(_, t)| *t);
                let r = match dt {
                    DType::Q2_K | DType::Q3_K | DType::Q4_K | DType::Q5_K | DType::Q6_K => {
                        rate::GGUF_K * c / rate::CORES
                    }
                    d if d.is_block() => rate::GGUF_SIMPLE,
                    _ => rate::COPY,
                };
                (scheme.resident_bytes(ckpt, id, true, dt), src as f64 / r)
            }
            Scheme::Hf(hf) => {
                let quantized = q.modules.contains(&qforge_quantize::layout::hf_module(id));
                let r = match hf.kind.rate() {
                    _ if !quantized => rate::COPY,
                    qforge_quantize::layout::QuantRate::Integer => rate::INT4 * c / rate::CORES,
                    qforge_quantize::layout::QuantRate::Light => rate::FP8,
                };
                (
                    scheme.resident_bytes(ckpt, id, quantized, model_dtype),
                    src as f64 / r,
                )
            }
        };
        worst = worst.max(work);
        seconds += secs;
    }
    Ok(OutputPlan::new(
        "quantize",
        &args.output,
        &q.files,
        worst,
        seconds,
    ))
}

/// Plan a conversion of `ckpt`.
pub fn plan_convert(ckpt: &Checkpoint, args: &ConvertArgs) -> Result<OutputPlan> {
    let a = ConvertArgs {
        input: args.input.clone(),
        output: args.output.clone(),
        to: args.to,
        dtype: args.dtype,
        shard_size: args.shard_size,
        mp: args.mp,
        resume: false,
        overwrite: true,
        dry_run: true,
        json: false,
        quiet: true,
        output_arg: None,
        output_flag: None,
        allow_lossy: args.allow_lossy,
    };
    let w = crate::commands::convert::execute_on(ckpt, &a)?;
    let mut worst = 0u64;
    let mut seconds = 0f64;
    for t in &ckpt.tensors {
        let out = match (args.dtype, args.to) {
            (Some(FloatDtype::Bf16 | FloatDtype::F16), _) => 2 * t.numel(),
            (Some(FloatDtype::F32), _) => 4 * t.numel(),
            (None, _) if t.dtype.is_block() => 4 * t.numel(),
            (None, _) => t.nbytes(),
        };
        // the resident source (mapped pages, merged copy) and the converted bytes; a same-dtype
        // merged tensor is moved, not copied, and a same-dtype mapped one streams into
        // safetensors a row block at a time (BENCHMARKS.md)
        let merged = !matches!(t.layout, qforge_convert::TensorLayout::Contiguous(_));
        let same_dtype = match args.dtype {
            Some(FloatDtype::Bf16) => t.dtype == DType::BF16,
            Some(FloatDtype::F16) => t.dtype == DType::F16,
            Some(FloatDtype::F32) => t.dtype == DType::F32,
            None => true,
        };
        let extra = if merged && out == t.nbytes() {
            0
        } else if args.to == ConvertTarget::Hf && same_dtype && qforge_convert::export::streams(t) {
            qforge_convert::export::STREAMED_BYTES
        } else {
            out
        };
        worst = worst.max(qforge_convert::export::source_resident(t) + extra);
        seconds += t.nbytes() as f64 / rate::COPY;
    }
    Ok(OutputPlan::new(
        "convert",
        &args.output,
        &w.files,
        worst,
        seconds,
    ))
}

fn clone_quantize(a: &QuantizeArgs) -> QuantizeArgs {
    QuantizeArgs {
        input: a.input.clone(),
        output: a.output.clone(),
        scheme: a.scheme.clone(),
        layout: a.layout,
        policy: a.policy,
        ignore: a.ignore.clone(),
        asym: a.asym,
        dtype: a.dtype,
        activation_scale_ub: a.activation_scale_ub,
        calib: a.calib.clone(),
        imatrix: a.imatrix.clone(),
        shard_size: a.shard_size,
        bad_weights: a.bad_weights,
        max_abs_weight: a.max_abs_weight,
        resume: false,
        overwrite: true,
        allow_lossy: a.allow_lossy,
        json: a.json,
        dry_run: true,
        quiet: true,
        output_arg: None,
        output_flag: None,
        allow_requantize: a.allow_requantize,
    }
}

/// Verification time: two forwards (base and quantized) over the evaluated tokens.
fn verify_seconds(ckpt: &Checkpoint, tokens: u64) -> f64 {
    let cfg = &ckpt.config;
    let per_token: u64 = roles(ckpt)
        .into_iter()
        .filter(|id| matches!(id, TensorId::Layer { .. } | TensorId::Output))
        .map(|id| numel(ckpt, id))
        .sum::<u64>()
        + if cfg.tie_word_embeddings {
            numel(ckpt, TensorId::TokenEmbedding)
        } else {
            0
        };
    2.0 * (per_token * tokens) as f64 / (rate::VERIFY_MACS * cores() / rate::CORES)
}

/// The whole plan of a recipe.
pub fn plan_recipe(path: &Path) -> Result<serde_json::Value> {
    let r = Recipe::load(path)?;
    let input = open_for_plan(&r.input.model)?;
    let mut outputs = Vec::new();
    let mut notes = Vec::new();
    let base_dir = match &r.convert {
        Some(c) => r.output.dir.join(&c.name),
        None => input.path.clone(),
    };
    let converted;
    let base: &Checkpoint =
        if let Some(a) = crate::commands::pipeline::convert_args(&r, &input.path, false)? {
            outputs.push(plan_convert(&input, &a)?);
            // Plan the later steps on the shapes the conversion will write.
            converted = virtual_converted(&input, &a)?;
            &converted
        } else {
            &input
        };
    let calibrate = r
        .calibrate
        .as_ref()
        .map(|c| plan_calibrate(base, c, &mut notes));
    for q in &r.quantize {
        let calib = r.calibrate.as_ref().map(|c| r.output.dir.join(&c.name));
        let mut a = crate::commands::pipeline::quantize_args(&r, q, &base_dir, None, false)?;
        let stand_in = parse_scheme(&a.scheme, a.asym)
            .ok()
            .and_then(Scheme::without_calibration);
        if let (Some(s), true) = (stand_in, calib.is_some()) {
            notes.push(format!(
                "{}: {} is planned without its calibration file (as {})",
                q.name,
                a.scheme,
                s.name()
            ));
            a.scheme = s.name();
        }
        outputs.push(plan_quantize(base, &a)?);
    }
    let mut verify_s = 0.0;
    let mut verify = None;
    if let Some(v) = &r.verify {
        let ctx = v.ctx.unwrap_or(512) as u64;
        let chunks = if let Some(c) = v.chunks {
            c as u64
        } else {
            notes.push(
                "verify without `chunks` evaluates the whole text: its chunks are estimated \
                 from the text's size (4 bytes a token)"
                    .into(),
            );
            estimated_chunks(&v.data, ctx)
        };
        let artifacts = r
            .quantize
            .iter()
            .filter(|q| q.verify != Some(false))
            .count();
        verify_s = verify_seconds(base, ctx * chunks) * artifacts as f64;
        if artifacts > 0 {
            verify = Some(json!({
                "artifacts": artifacts,
                "peak_memory_bytes": plan_forward::peak_memory(base, Job::Verify, Work { ctx, chunks }),
                "seconds": verify_s,
            }));
        }
    }
    let disk: u64 = outputs.iter().map(|o| o.disk_bytes).sum();
    let forward_peaks = [&calibrate, &verify]
        .into_iter()
        .flatten()
        .map(|v| v["peak_memory_bytes"].as_u64().unwrap_or(0));
    let peak = outputs
        .iter()
        .map(|o| o.peak_memory_bytes)
        .chain(forward_peaks)
        .max()
        .unwrap_or(0);
    let calib_s = calibrate
        .as_ref()
        .map_or(0.0, |c| c["seconds"].as_f64().unwrap_or(0.0));
    let secs: f64 = outputs.iter().map(|o| o.seconds).sum::<f64>() + verify_s + calib_s;
    Ok(json!({
        "recipe": path,
        "input": r.input.model,
        "family": family_json(&input),
        "outputs": outputs,
        "calibrate": calibrate,
        "verify": verify,
        "verify_seconds": verify_s,
        "total": {"disk_bytes": disk, "peak_memory_bytes": peak, "seconds": secs},
        "notes": notes,
    }))
}

/// Chunks of `ctx` tokens in the text at `data` when a step does not say: its size over 4
/// bytes a token (an estimate; 1 when the text is missing).
fn estimated_chunks(data: &Path, ctx: u64) -> u64 {
    std::fs::metadata(data).map_or(1, |m| (m.len() / 4 / ctx.max(1)).max(1))
}

/// Peak memory and time of a recipe's `[calibrate]` on `base` (plan_forward.rs).
fn plan_calibrate(
    base: &Checkpoint,
    c: &crate::recipe::CalibrateStep,
    notes: &mut Vec<String>,
) -> serde_json::Value {
    let (job, ctx, chunks) = match c.method.as_str() {
        "imatrix" => {
            let ctx = c.ctx.unwrap_or(512) as u64;
            let chunks = c
                .chunks
                .map_or_else(|| estimated_chunks(&c.data, ctx), |n| n as u64);
            (Job::Imatrix, ctx, chunks)
        }
        m => {
            let job = match m {
                "gptq" => {
                    notes.push(
                        "calibrate (gptq): time counts the forward only, not GPTQ's solve".into(),
                    );
                    Job::CalibGptq
                }
                "awq" => {
                    notes.push(
                        "calibrate (awq): planned as fp8-static's forward (its search not \
                         modelled)"
                            .into(),
                    );
                    Job::CalibAwq
                }
                _ => Job::CalibFp8 {
                    f64: c.precision.as_deref() == Some("f64"),
                },
            };
            // qforge calibrate's defaults: --samples 128, --seq-len 512
            (
                job,
                c.ctx.unwrap_or(512) as u64,
                c.chunks.unwrap_or(128) as u64,
            )
        }
    };
    let tokens = ctx * chunks;
    // no logits in calibration or the importance matrix
    let seconds = (plan_forward::macs_per_token(base, false) * tokens) as f64
        / (rate::VERIFY_MACS * cores() / rate::CORES);
    json!({
        "method": c.method,
        "peak_memory_bytes": plan_forward::peak_memory(base, job, Work { ctx, chunks }),
        "seconds": seconds,
    })
}

/// The shapes a conversion to HF will write, as a config-only checkpoint in a temporary
/// directory (so quantization can be planned before the conversion exists).
fn virtual_converted(input: &Checkpoint, a: &ConvertArgs) -> Result<Checkpoint> {
    let dtype = match a.dtype {
        Some(FloatDtype::F16) => DType::F16,
        Some(FloatDtype::F32) => DType::F32,
        _ => DType::BF16,
    };
    let dir = std::env::temp_dir().join(format!("qforge-plan-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let cfg = qforge_convert::export::hf_config_json(&input.config, dtype);
    std::fs::write(dir.join("config.json"), serde_json::to_vec(&cfg)?)?;
    let r = Checkpoint::from_config(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    let mut c = r?;
    // The tokenizer files come along with the conversion.
    c.path.clone_from(&input.path);
    c.tokenizer = input.tokenizer.clone();
    Ok(c)
}

pub fn run_recipe(path: &Path, as_json: bool) -> Result<()> {
    let plan = plan_recipe(path)?;
    print_plan(&plan, as_json)
}

pub fn run_quantize(args: &QuantizeArgs) -> Result<()> {
    let ckpt = open_for_plan(&args.input.to_string_lossy())?;
    let p = plan_quantize(&ckpt, args)?;
    print_plan(
        &json!({"family": family_json(&ckpt), "outputs": [p]}),
        args.json,
    )
}

pub fn run_convert(args: &ConvertArgs) -> Result<()> {
    let ckpt = open_for_plan(&args.input.to_string_lossy())?;
    let p = plan_convert(&ckpt, args)?;
    print_plan(
        &json!({"family": family_json(&ckpt), "outputs": [p]}),
        false,
    )
}

pub fn run(args: &PlanArgs) -> Result<()> {
    let t = args.target.to_string_lossy();
    if t.ends_with(".toml") {
        return run_recipe(&args.target, args.json);
    }
    if let Some(scheme) = &args.scheme {
        parse_scheme(scheme, args.asym).map_err(crate::cli::usage)?;
    }
    let ckpt = open_for_plan(&t)?;
    if let Some(gpu) = &args.gpu {
        return crate::commands::plan_device::run(&ckpt, args, gpu);
    }
    let name = args
        .target
        .file_name()
        .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned());
    let p = if let Some(scheme) = &args.scheme {
        let gguf = parse_scheme(scheme, args.asym)?.writes_gguf();
        let out = PathBuf::from(format!(
            "{name}-{}{}",
            scheme.replace(':', "-"),
            if gguf { ".gguf" } else { "" }
        ));
        plan_quantize(
            &ckpt,
            &QuantizeArgs {
                input: args.target.clone(),
                output: out,
                scheme: scheme.clone(),
                layout: args.layout,
                policy: args.policy,
                ignore: args.ignore.clone(),
                asym: args.asym,
                dtype: args.dtype.unwrap_or(FloatDtype::Bf16),
                activation_scale_ub: qforge_quantize::layout::META_ACTIVATION_SCALE_UB,
                calib: None,
                imatrix: None,
                shard_size: args.shard_size,
                bad_weights: qforge_quantize::numerics::WeightPolicy::Error,
                max_abs_weight: qforge_quantize::numerics::DEFAULT_MAX_ABS,
                resume: false,
                overwrite: true,
                allow_lossy: false,
                json: args.json,
                dry_run: true,
                quiet: true,
                output_arg: None,
                output_flag: None,
                allow_requantize: true,
            },
        )?
    } else if let Some(to) = args.to {
        let ext = if to == ConvertTarget::Gguf {
            ".gguf"
        } else {
            ""
        };
        plan_convert(
            &ckpt,
            &ConvertArgs {
                input: args.target.clone(),
                output: PathBuf::from(format!("{name}-converted{ext}")),
                to,
                dtype: args.dtype,
                shard_size: args.shard_size,
                mp: 1,
                resume: false,
                overwrite: true,
                dry_run: true,
                json: false,
                quiet: true,
                output_arg: None,
                output_flag: None,
                allow_lossy: false,
            },
        )?
    } else {
        bail!(
            "nothing to plan for a model without --scheme or --to\n  hint: qforge plan {t} --scheme fp8-rowwise, \
             or qforge plan recipe.toml"
        );
    };
    print_plan(&json!({"outputs": [p]}), args.json)
}

fn human(b: u64) -> String {
    let b = b as f64;
    if b >= 1e12 {
        format!("{:.2} TB", b / 1e12)
    } else if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else {
        format!("{:.1} kB", b / 1e3)
    }
}

fn human_secs(s: f64) -> String {
    if s >= 3600.0 {
        format!("{:.1} h", s / 3600.0)
    } else if s >= 60.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{s:.1} s")
    }
}

/// The input's model family (its row of `qforge_convert::family::FAMILIES`).
fn family_json(ckpt: &Checkpoint) -> serde_json::Value {
    let s = ckpt.config.family.spec();
    json!({"name": s.name, "hf_class": s.hf_classes[0], "gguf_architecture": s.gguf_arch})
}

fn print_plan(plan: &serde_json::Value, as_json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if as_json {
        serde_json::to_writer_pretty(&mut out, plan)?;
        writeln!(out)?;
        return Ok(());
    }
    for o in plan["outputs"].as_array().into_iter().flatten() {
        let u = |k: &str| o[k].as_u64().unwrap_or(0);
        writeln!(
            out,
            "{} {}",
            o["step"].as_str().unwrap_or(""),
            o["output"].as_str().unwrap_or("")
        )?;
        for f in o["files"].as_array().into_iter().flatten() {
            writeln!(
                out,
                "  {:<44} {:>16} bytes",
                f["path"].as_str().unwrap_or(""),
                f["bytes"].as_u64().unwrap_or(0)
            )?;
        }
        writeln!(
            out,
            "  files {} bytes ({}), tensor data {} bytes; peak memory ~{}, disk {}, time ~{}",
            u("file_bytes"),
            human(u("file_bytes")),
            u("tensor_bytes"),
            human(u("peak_memory_bytes")),
            human(u("disk_bytes")),
            human_secs(o["seconds"].as_f64().unwrap_or(0.0))
        )?;
    }
    for (k, what) in [("calibrate", "calibrate"), ("verify", "verify")] {
        let v = &plan[k];
        if v.is_null() {
            continue;
        }
        let label = match (v["method"].as_str(), v["artifacts"].as_u64()) {
            (Some(m), _) => format!("{what} ({m})"),
            (None, Some(n)) => format!("{what} ({n} artifact{})", if n == 1 { "" } else { "s" }),
            _ => what.to_owned(),
        };
        writeln!(
            out,
            "{label}: peak memory ~{}, time ~{}",
            human(v["peak_memory_bytes"].as_u64().unwrap_or(0)),
            human_secs(v["seconds"].as_f64().unwrap_or(0.0))
        )?;
    }
    if let Some(t) = plan.get("total") {
        writeln!(
            out,
            "total: disk {}, peak memory ~{}, time ~{} (verify ~{})",
            human(t["disk_bytes"].as_u64().unwrap_or(0)),
            human(t["peak_memory_bytes"].as_u64().unwrap_or(0)),
            human_secs(t["seconds"].as_f64().unwrap_or(0.0)),
            human_secs(plan["verify_seconds"].as_f64().unwrap_or(0.0)),
        )?;
    }
    for n in plan["notes"].as_array().into_iter().flatten() {
        writeln!(out, "note: {}", n.as_str().unwrap_or(""))?;
    }
    if let Some(f) = plan.get("family") {
        writeln!(
            out,
            "family: {} ({}, GGUF {})",
            f["name"].as_str().unwrap_or(""),
            f["hf_class"].as_str().unwrap_or(""),
            f["gguf_architecture"].as_str().unwrap_or("")
        )?;
    }
    Ok(())
}
