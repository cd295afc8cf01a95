//! The quantize step: any checkpoint to FP8 / INT4 / FP4 / MLX HF layouts or a llama.cpp GGUF
//! mix, from parsed settings ([`QuantizeArgs`], which `qforge quantize` parses and a recipe
//! builds: [`crate::steps::from_recipe::quantize_args`]).

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{bail, Context, Result};
use qforge_codecs::DType;
use qforge_convert::Checkpoint;
use qforge_quantize::gguf_mix::{quantize_to_gguf, GgufMix, GgufQuantOptions};
use qforge_quantize::imatrix::Imatrix;
use qforge_quantize::layout::{
    quantize_to_hf, HfLayout, HfQuantOptions, HfScheme, IgnoreList, Params, Policy, PrecomputedInt4,
};
use qforge_quantize::numerics::Numerics;
use qforge_stage::OutputOptions;
use serde_json::json;

use crate::cli::{FloatDtype, QuantLayout, QuantPolicy, QuantizeArgs};

pub use qforge_quantize::scheme::Scheme;
use qforge_quantize::scheme::{CalibMismatch, Calibrated};

/// Parse `--scheme`: the scheme's own names and aliases ([`Scheme::parse`]).
pub fn parse_scheme(s: &str, asym: bool) -> Result<Scheme> {
    Ok(Scheme::parse(s, asym)?)
}

/// Refuse a model whose linear weights are already quantized (llama-quantize refuses the same
/// without --allow-requantize: `llama_model_quantize_impl` in llama.cpp's src/llama-quant.cpp).
fn refuse_requantize(ckpt: &Checkpoint) -> Result<()> {
    let mut found: Vec<&str> = ckpt
        .tensors
        .iter()
        .filter(|t| matches!(t.key.id, qforge_convert::TensorId::Layer { .. }))
        .filter(|t| match t.key.part {
            qforge_convert::Part::WeightPacked => true,
            qforge_convert::Part::Weight => {
                t.shape.len() == 2 && !matches!(t.dtype, DType::F32 | DType::F16 | DType::BF16)
            }
            _ => false,
        })
        .map(|t| {
            if t.key.part == qforge_convert::Part::WeightPacked {
                "packed INT4/INT8"
            } else {
                t.dtype.name()
            }
        })
        .collect();
    found.sort_unstable();
    found.dedup();
    if found.is_empty() {
        return Ok(());
    }
    bail!(
        "{}: the model is already quantized ({} weights); quantizing it again compounds the \
         error\n  hint: start from the unquantized model, or pass --allow-requantize to do it anyway",
        qforge_convert::shown(&ckpt.path),
        found.join(", ")
    )
}

/// An output named for the other kind of output: a directory named `.gguf` is refused; a GGUF
/// file without the extension gets a warning.
pub fn check_output_name(
    out: &std::path::Path,
    scheme: Scheme,
    err: &mut impl Write,
) -> Result<()> {
    let ext = out
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    match (scheme, ext.as_deref()) {
        (Scheme::Hf(_), Some(e @ ("gguf" | "safetensors" | "json" | "bin"))) => {
            Err(crate::cli::UsageError(format!(
                "{} ends in .{e}, but this scheme writes a Hugging Face directory\n  hint: name \
                 the output without .{e}, or use --scheme gguf:<mix> for a GGUF file",
                out.display()
            ))
            .into())
        }
        (Scheme::Gguf(_), e) if e != Some("gguf") => {
            writeln!(
                err,
                "warning: {} is a GGUF file; its name does not end in .gguf (llama.cpp's tools \
                 and most UIs look for the extension)",
                out.display()
            )?;
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Group sizes the INT4/INT8 kernels of serving engines run (vLLM's Marlin and Machete:
/// `MARLIN_SUPPORTED_GROUP_SIZES` in vllm/model_executor/layers/quantization/utils/
/// marlin_utils.py is [-1, 32, 64, 128], -1 meaning per row).
pub const SERVED_GROUPS: [usize; 3] = [128, 64, 32];

/// Check an integer scheme's group size against every linear's row length before anything is
/// written: a group that divides none of the rows is refused once, naming a row and
/// suggesting the groups servers run that divide every row (or per-row); a group servers do not
/// run gets a warning.
fn check_groups(ckpt: &Checkpoint, scheme: Scheme, out: &mut dyn Write) -> Result<()> {
    let Some(Params {
        bits,
        group_size: Some(g),
        ..
    }) = scheme.hf().and_then(HfScheme::integer_codes)
    else {
        return Ok(());
    };
    let rows: Vec<(&str, u64)> = ckpt
        .tensors
        .iter()
        .filter(|t| {
            matches!(t.key.id, qforge_convert::TensorId::Layer { .. })
                && matches!(
                    t.key.part,
                    qforge_convert::Part::Weight | qforge_convert::Part::WeightPacked
                )
        })
        .filter_map(|t| match ckpt.config.expected_shape(t.key.id).as_slice() {
            [_, k] => Some((t.name.as_str(), *k)),
            _ => None,
        })
        .collect();
    let fits = |g: usize| rows.iter().all(|(_, k)| k % g as u64 == 0);
    if let Some((name, k)) = rows.iter().find(|(_, k)| k % g as u64 != 0) {
        let mut ok: Vec<String> = SERVED_GROUPS
            .iter()
            .filter(|&&s| fits(s))
            .map(|&s| format!("int{bits}-g{s}"))
            .collect();
        ok.push(format!("int{bits}-row"));
        bail!(
            "--scheme int{bits}-g{g}: group {g} does not divide the row length {k} of {name}\n  \
             hint: use --scheme {} (groups vLLM's kernels run: 32, 64, 128 and per-row)",
            ok.join(" or --scheme ")
        );
    }
    if !SERVED_GROUPS.contains(&g) {
        writeln!(
            out,
            "warning: group {g} is not one vLLM's INT{bits} kernels run (32, 64, 128, per-row); \
             the checkpoint may not load there"
        )?;
    }
    Ok(())
}

/// Refuse calibration results (in `p`) that `scheme` cannot use (the scheme says which).
fn check_calibrated(
    scheme: Scheme,
    made: Calibrated,
    p: &std::path::Path,
    args: &QuantizeArgs,
) -> Result<()> {
    match scheme.check_calibrated(made) {
        Ok(()) => Ok(()),
        Err(CalibMismatch::Kind(what)) => bail!("{} holds {what}", p.display()),
        Err(CalibMismatch::MadeFor(name)) => bail!(
            "{} was calibrated for --scheme {name}, not --scheme {}{}",
            qforge_convert::shown(p),
            args.scheme,
            if args.asym { " --asym" } else { "" }
        ),
    }
}

/// GPTQ codes of a calibration directory, handed to the HF writer.
#[derive(Debug)]
struct CalibCodes(qforge_calibrate::output::GptqCodes);

impl PrecomputedInt4 for CalibCodes {
    fn has(&self, module: &str) -> bool {
        self.0.has(module)
    }

    fn int4(&self, module: &str) -> std::result::Result<qforge_codecs::int4::Int4Tensor, String> {
        match self.0.int4(module) {
            Ok(Some(t)) => Ok(t),
            Ok(None) => Err(format!("no calibrated codes for {module}")),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Calibration results `qforge quantize --calib` consumes.
#[derive(Debug, Default, serde::Deserialize)]
struct Calib {
    #[serde(default)]
    input_scales: Option<BTreeMap<String, f32>>,
    #[serde(default)]
    imatrix: Option<BTreeMap<String, Vec<f32>>>,
    /// Per-module observations (fp8-static: `input_amax`, which NVFP4 W4A4 uses).
    #[serde(default)]
    modules: Vec<qforge_calibrate::output::ModuleReport>,
}

/// A bad weight (NaN, inf, too large) gets a hint naming the opt-in policies.
fn bad_weight_hint(e: qforge_convert::Error) -> anyhow::Error {
    match &e {
        qforge_convert::Error::Codec {
            source: qforge_codecs::Error::NonFinite { .. } | qforge_codecs::Error::OutOfRange { .. },
            ..
        } => anyhow::anyhow!(
            "{e}\n  hint: the input holds a bad weight; --bad-weights clamp or --bad-weights skip \
             quantizes anyway (--max-abs-weight sets the limit)"
        ),
        _ => e.into(),
    }
}

/// What a quantization wrote (or, with `dry_run`, would write).
pub struct Quantized {
    /// The summary `--json` prints.
    pub summary: serde_json::Value,
    /// Files with sizes (planned sizes in a dry run).
    pub files: Vec<qforge_stage::FileRecord>,
    /// HF output: module names quantized. GGUF output: empty.
    pub modules: Vec<String>,
    /// GGUF output: (tensor, type) in file order. HF output: empty.
    pub gguf_types: Vec<(String, DType)>,
}

/// Quantize as `args` say; returns the summary `--json` prints (notes go to stderr).
pub fn execute(args: &QuantizeArgs) -> Result<Quantized> {
    let ckpt = Checkpoint::open(crate::modelref::resolve(&args.input.to_string_lossy())?)?;
    crate::commands::log_read("input", &ckpt);
    let total = if args.dry_run {
        None
    } else {
        crate::commands::plan::plan_quantize(&ckpt, args)
            .ok()
            .map(|p| p.file_bytes)
    };
    let watch = crate::progress::OutputWatch::start("quantize", &args.output, total, args.quiet);
    let q = execute_on(&ckpt, args);
    drop(watch);
    let q = q?;
    for (name, t) in &q.gguf_types {
        tracing::debug!("  {name} -> {t}");
    }
    for m in &q.modules {
        tracing::debug!("  {m} -> {}", args.scheme);
    }
    crate::commands::log_written(&args.output, &q.files);
    Ok(q)
}

/// Quantize an open checkpoint as `args` say (`args.dry_run`: plan only, nothing read or
/// written).
pub fn execute_on(ckpt: &Checkpoint, args: &QuantizeArgs) -> Result<Quantized> {
    let scheme = parse_scheme(&args.scheme, args.asym)?;
    tracing::info!(
        "chose: scheme {}, layout {}, policy {}, {} ignore pattern(s), calib {}, imatrix {}",
        args.scheme,
        args.layout
            .map_or_else(|| "default".to_owned(), |l| crate::commands::value_name(&l)),
        crate::commands::value_name(&args.policy),
        args.ignore.len(),
        args.calib
            .as_ref()
            .map_or("none".into(), |p| p.display().to_string()),
        args.imatrix
            .as_ref()
            .map_or("none".into(), |p| p.display().to_string())
    );
    let calibrated = read_calibration(ckpt, scheme, args)?;
    let numerics = Numerics {
        policy: args.bad_weights,
        max_abs: args.max_abs_weight,
    };
    if !args.allow_requantize {
        refuse_requantize(ckpt)?;
    }
    // warnings: not with --quiet (nor from the plan a run makes of itself for its progress)
    let mut warn: Box<dyn Write> = if args.quiet {
        Box::new(std::io::sink())
    } else {
        Box::new(std::io::stderr())
    };
    if let Scheme::Hf(_) = scheme {
        check_output_name(&args.output, scheme, &mut warn)?;
    }
    match scheme {
        Scheme::Gguf(mix) => quantize_gguf(ckpt, mix, calibrated.calib.imatrix, numerics, args),
        Scheme::Hf(hf) => quantize_hf(ckpt, scheme, hf, calibrated, numerics, args, &mut warn),
    }
}

/// What `--calib` gave: a JSON calibration file's contents, or a GPTQ / AWQ calibration
/// directory (checked against the scheme).
struct CalibInputs {
    calib: Calib,
    gptq_codes: Option<std::sync::Arc<CalibCodes>>,
    awq_scales: Option<std::sync::Arc<qforge_calibrate::output::AwqScales>>,
}

/// Read `--calib` (a calibration file, or a GPTQ or AWQ directory made for `scheme`).
fn read_calibration(ckpt: &Checkpoint, scheme: Scheme, args: &QuantizeArgs) -> Result<CalibInputs> {
    let mut gptq_codes = None;
    let mut awq_scales = None;
    let calib: Calib = match &args.calib {
        Some(p) if p.is_dir() && qforge_calibrate::output::read_calib(p)?.method == "awq" => {
            // an AWQ calibration directory (qforge calibrate --method awq): scales folded
            // into the weights, then round-to-nearest with the same scheme
            let a = qforge_calibrate::output::AwqScales::open(p)?;
            let made = Calibrated::Awq {
                group_size: a.scheme.group_size,
                symmetric: a.scheme.symmetric,
            };
            check_calibrated(scheme, made, p, args)?;
            if a.layers.len() != ckpt.config.num_layers as usize {
                bail!(
                    "{} holds AWQ scales for {} layers, the model has {}",
                    p.display(),
                    a.layers.len(),
                    ckpt.config.num_layers
                );
            }
            awq_scales = Some(std::sync::Arc::new(a));
            Calib::default()
        }
        Some(p) if p.is_dir() => {
            // a GPTQ calibration directory (qforge calibrate --method gptq)
            let codes = qforge_calibrate::output::GptqCodes::open(p)?;
            let made = Calibrated::Gptq {
                bits: codes.bits(),
                group_size: codes.group_size(),
            };
            check_calibrated(scheme, made, p, args)?;
            gptq_codes = Some(std::sync::Arc::new(CalibCodes(codes)));
            Calib::default()
        }
        Some(p) => {
            let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            serde_json::from_slice(&bytes)
                .with_context(|| format!("{}: not a qforge calibration file", p.display()))?
        }
        None => Calib::default(),
    };
    Ok(CalibInputs {
        calib,
        gptq_codes,
        awq_scales,
    })
}

/// `--scheme gguf:<mix>`: llama-quantize's mix, with an importance matrix from `--imatrix` or
/// the calibration file.
fn quantize_gguf(
    ckpt: &Checkpoint,
    mix: GgufMix,
    calib_imatrix: Option<BTreeMap<String, Vec<f32>>>,
    numerics: Numerics,
    args: &QuantizeArgs,
) -> Result<Quantized> {
    let mut err = std::io::stderr().lock();
    if matches!(args.layout, Some(l) if l != QuantLayout::Gguf) {
        bail!("--scheme gguf:{mix} writes a GGUF file\n  hint: drop --layout or use --layout gguf");
    }
    if args.policy != QuantPolicy::AllLinear || !args.ignore.is_empty() {
        bail!("--policy and --ignore apply to HF layouts; GGUF mixes follow llama.cpp's rules");
    }
    let (imatrix, extra_metadata) = match (&args.imatrix, calib_imatrix) {
        (Some(_), Some(_)) => bail!(
            "--imatrix and an \"imatrix\" in --calib both give an importance matrix\n  hint: pass one of them"
        ),
        (Some(p), None) => {
            let m = Imatrix::read(p)?;
            let w = m
                .quant_weights()
                .map_err(|kind| qforge_quantize::imatrix::err(p, kind))?;
            // llama-quantize records the file, dataset, entry and chunk counts.
            let meta = m.quantize_metadata(&p.to_string_lossy());
            (Some(w).filter(|w| !w.is_empty()), meta)
        }
        (None, im) => (im, Vec::new()),
    };
    let w = quantize_to_gguf(
        ckpt,
        &args.output,
        mix,
        &GgufQuantOptions {
            imatrix,
            overwrite: args.overwrite,
            numerics,
            extra_metadata,
            dry_run: args.dry_run,
        },
    )
    .map_err(bad_weight_hint)?;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for (_, t, _) in &w.types {
        *counts.entry(t.to_string()).or_default() += 1;
    }
    if !args.dry_run && !args.quiet {
        for n in &w.written.notes {
            writeln!(err, "note: {n}")?;
        }
    }
    let summary = json!({
        "output": args.output,
        "scheme": format!("gguf:{}", mix.name().to_ascii_lowercase()),
        "layout": "gguf",
        "types": counts,
        "tensors": w.types.iter().map(|(n, t, f)| json!({
            "name": n, "type": t.to_string(), "fallback_from": f.map(|d| d.to_string())
        })).collect::<Vec<_>>(),
        "bytes": w.written.files.iter().map(|f| f.bytes).sum::<u64>(),
        "files": w.written.files,
    });
    Ok(Quantized {
        summary,
        files: w.written.files,
        modules: Vec::new(),
        gguf_types: w.types.iter().map(|(n, t, _)| (n.clone(), *t)).collect(),
    })
}

/// An HF layout (compressed-tensors, fbgemm, MLX) of `hf`, with the calibration's scales,
/// GPTQ codes or AWQ scales.
fn quantize_hf(
    ckpt: &Checkpoint,
    scheme: Scheme,
    hf: HfScheme,
    calibrated: CalibInputs,
    numerics: Numerics,
    args: &QuantizeArgs,
    warn: &mut dyn Write,
) -> Result<Quantized> {
    let CalibInputs {
        calib,
        gptq_codes,
        awq_scales,
    } = calibrated;
    let mut err = std::io::stderr().lock();
    if args.imatrix.is_some() {
        bail!("--imatrix applies to gguf:<mix> schemes (llama.cpp's K-quant and legacy codecs)");
    }
    let layout = match args.layout {
        None | Some(QuantLayout::CompressedTensors) => HfLayout::CompressedTensors,
        Some(QuantLayout::Fbgemm) => HfLayout::Fbgemm,
        Some(QuantLayout::Mlx) => HfLayout::Mlx,
        Some(QuantLayout::Gguf) => {
            bail!("--layout gguf needs a gguf:<mix> scheme\n  hint: e.g. --scheme gguf:q4_k_m")
        }
    };
    if layout == HfLayout::CompressedTensors {
        // (fbgemm is FP8 only: the writer refuses INT4 there, with its own message)
        check_groups(ckpt, scheme, warn)?;
    }
    let ignore = IgnoreList::new(&args.ignore).map_err(anyhow::Error::msg)?;
    let opts = HfQuantOptions {
        scheme: hf,
        layout,
        policy: match args.policy {
            QuantPolicy::AllLinear => Policy::AllLinear,
            QuantPolicy::Meta405b => Policy::Meta405b,
            QuantPolicy::MetaLlama4 => Policy::MetaLlama4,
        },
        ignore,
        dtype: match args.dtype {
            FloatDtype::Bf16 => DType::BF16,
            FloatDtype::F32 => DType::F32,
            FloatDtype::F16 => bail!(
                "--dtype f16 is not supported for quantized HF output\n  hint: use bf16 (default) or f32"
            ),
        },
        activation_scale_ub: args.activation_scale_ub,
        input_scales: calib.input_scales,
        input_amax: Some(calib.modules.iter())
            .map(|ms| ms.filter_map(|m| Some((m.module.clone(), m.input_amax?))).collect()),
        shard_size: args.shard_size,
        output: OutputOptions {
            resume: args.resume,
            overwrite: args.overwrite,
            dry_run: args.dry_run,
            allow_lossy: args.allow_lossy,
        },
        numerics,
        precomputed_int4: gptq_codes
            .clone()
            .map(|c| c as std::sync::Arc<dyn PrecomputedInt4>),
        weight_transform: awq_scales.clone().map(|a| {
            a as std::sync::Arc<dyn qforge_quantize::layout::WeightTransform>
        }),
    };
    let w = quantize_to_hf(ckpt, &args.output, &opts).map_err(bad_weight_hint)?;
    for n in w
        .written
        .notes
        .iter()
        .filter(|_| !args.dry_run && !args.quiet)
    {
        writeln!(err, "note: {n}")?;
    }
    if !w.written.resumed.is_empty() && !args.quiet {
        writeln!(
            err,
            "resumed: kept {} verified file(s) from the interrupted run",
            w.written.resumed.len()
        )?;
    }
    let summary = json!({
        "output": args.output,
        "scheme": args.scheme,
        "layout": match layout { HfLayout::CompressedTensors => "compressed-tensors", HfLayout::Fbgemm => "fbgemm", HfLayout::Mlx => "mlx" },
        "quantized_modules": w.quantized.len(),
        "kept_modules": w.kept,
        "bytes": w.written.files.iter().map(|f| f.bytes).sum::<u64>(),
        "files": w.written.files,
    });
    Ok(Quantized {
        summary,
        files: w.written.files,
        modules: w.quantized,
        gguf_types: Vec::new(),
    })
}
