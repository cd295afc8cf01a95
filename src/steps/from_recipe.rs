//! Settings from a recipe: the same structs `qforge <command>` parses from its arguments, built
//! from a recipe's `[convert]`, `[calibrate]`, `[[quantize]]` and `[verify]` tables, so a
//! pipeline step and the command run the same step function with the same settings.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use qforge_quantize::scheme::{CalibInput, Calibration};

use crate::cli::{
    parse_size, CalibrateArgs, ConvertArgs, ConvertTarget, FloatDtype, ImatrixArgs, QuantLayout,
    QuantPolicy, QuantizeArgs,
};
use crate::recipe::{CalibrateStep, QuantizeStep, Recipe};

/// The settings of a recipe's `[calibrate]`: layer-by-layer calibration (fp8-static, gptq,
/// awq) or an importance matrix.
pub enum CalibrateSettings {
    /// `qforge calibrate`'s settings.
    Layers(CalibrateArgs),
    /// `qforge imatrix`'s settings.
    Imatrix(ImatrixArgs),
}

/// The settings of a recipe's `[calibrate]` for `model`, writing `out`: the recipe's keys as
/// the command's options, parsed by the command's own parser (so every default is the
/// command's).
pub fn calibrate_args(model: &Path, step: &CalibrateStep, out: &Path) -> Result<CalibrateSettings> {
    let model = model.to_string_lossy().into_owned();
    let data = step.data.to_string_lossy().into_owned();
    let out = out.to_string_lossy().into_owned();
    let mut argv: Vec<String> = Vec::new();
    match step.method.as_str() {
            "fp8-static" | "gptq" | "awq" => {
                argv.extend(["qforge", "calibrate", &model, "--data", &data, "-o", &out]
                    .map(str::to_owned));
                argv.extend(["--method".into(), step.method.clone(), "--overwrite".into()]);
                if let Some(n) = step.chunks {
                    argv.extend(["--samples".into(), n.to_string()]);
                }
                if let Some(n) = step.ctx {
                    argv.extend(["--seq-len".into(), n.to_string()]);
                }
                if let Some(sch) = &step.scheme {
                    argv.extend(["--scheme".into(), sch.clone()]);
                }
                if step.asym {
                    argv.push("--asym".into());
                }
                if let Some(p) = &step.precision {
                    argv.extend(["--precision".into(), p.clone()]);
                }
            }
            "imatrix" => {
                argv.extend(["qforge", "imatrix", &model, "--data", &data, "-o", &out]
                    .map(str::to_owned));
                argv.extend(["--overwrite".into(), "--quiet".into()]);
                if let Some(n) = step.chunks {
                    argv.extend(["--chunks".into(), n.to_string()]);
                }
                if let Some(n) = step.ctx {
                    argv.extend(["--ctx".into(), n.to_string()]);
                }
            }
            other => bail!(
                "[calibrate] method {other:?} is not available\n  hint: use fp8-static, gptq, awq or imatrix"
            ),
        }
    let mut cli = <crate::cli::Cli as clap::Parser>::try_parse_from(&argv)
        .map_err(|e| anyhow::anyhow!("[calibrate]: {}", e.to_string().trim()))?;
    cli.command.resolve_outputs();
    Ok(match cli.command {
        crate::cli::Command::Calibrate(a) => CalibrateSettings::Layers(a),
        crate::cli::Command::Imatrix(a) => CalibrateSettings::Imatrix(a),
        _ => unreachable!("built above"),
    })
}

/// How the `[calibrate]` result is passed to a quantize step with `scheme` (`None`: not at
/// all); the scheme says ([`Scheme::accepts`](qforge_quantize::scheme::Scheme::accepts)).
pub fn calib_use(method: &str, scheme: &str) -> Option<CalibInput> {
    let scheme = crate::steps::quantize::parse_scheme(scheme, false).ok()?;
    scheme.accepts(Calibration::from_name(method)?)
}

fn float_dtype(s: Option<&str>, what: &str) -> Result<Option<FloatDtype>> {
    Ok(match s.map(str::to_ascii_lowercase).as_deref() {
        None => None,
        Some("bf16") => Some(FloatDtype::Bf16),
        Some("f16") => Some(FloatDtype::F16),
        Some("f32") => Some(FloatDtype::F32),
        Some(o) => bail!("{what} dtype {o:?}: use bf16, f16 or f32"),
    })
}

fn size(s: Option<&str>) -> Result<u64> {
    s.map_or(Ok(qforge_convert::export::DEFAULT_SHARD_SIZE), |s| {
        parse_size(s).map_err(anyhow::Error::msg)
    })
}

/// The `qforge convert` arguments of a recipe's `[convert]`.
pub fn convert_args(r: &Recipe, input: &Path, resume: bool) -> Result<Option<ConvertArgs>> {
    let Some(c) = &r.convert else { return Ok(None) };
    Ok(Some(ConvertArgs {
        input: input.to_owned(),
        output: r.output.dir.join(&c.name),
        to: match c.to.as_str() {
            "gguf" => ConvertTarget::Gguf,
            "meta" => ConvertTarget::Meta,
            _ => ConvertTarget::Hf,
        },
        dtype: float_dtype(c.dtype.as_deref(), "[convert]")?,
        shard_size: size(c.shard_size.as_deref())?,
        mp: 1,
        resume,
        overwrite: false,
        dry_run: false,
        json: false,
        quiet: true,
        output_arg: None,
        output_flag: None,
        allow_lossy: c.allow_lossy,
    }))
}

/// The `qforge quantize` arguments of one `[[quantize]]`.
pub fn quantize_args(
    r: &Recipe,
    q: &QuantizeStep,
    base: &Path,
    calib: Option<PathBuf>,
    resume: bool,
) -> Result<QuantizeArgs> {
    Ok(QuantizeArgs {
        input: base.to_owned(),
        output: r.output.dir.join(Recipe::artifact_name(q)),
        scheme: q.scheme.clone(),
        layout: match q.layout.as_deref() {
            None => None,
            Some("compressed-tensors") => Some(QuantLayout::CompressedTensors),
            Some("fbgemm") => Some(QuantLayout::Fbgemm),
            Some("gguf") => Some(QuantLayout::Gguf),
            Some(o) => bail!(
                "[[quantize]] {:?}: layout {o:?}: use compressed-tensors, fbgemm or gguf",
                q.name
            ),
        },
        policy: match q.policy.as_deref() {
            None | Some("all-linear") => QuantPolicy::AllLinear,
            Some("meta-405b") => QuantPolicy::Meta405b,
            Some("meta-llama4") => QuantPolicy::MetaLlama4,
            Some(o) => bail!(
                "[[quantize]] {:?}: policy {o:?}: use all-linear, meta-405b or meta-llama4",
                q.name
            ),
        },
        ignore: q.ignore.clone(),
        asym: q.asym,
        dtype: float_dtype(q.dtype.as_deref(), "[[quantize]]")?.unwrap_or(FloatDtype::Bf16),
        activation_scale_ub: q
            .activation_scale_ub
            .unwrap_or(qforge_quantize::layout::META_ACTIVATION_SCALE_UB),
        calib,
        imatrix: None,
        shard_size: size(q.shard_size.as_deref())?,
        bad_weights: qforge_quantize::numerics::WeightPolicy::Error,
        max_abs_weight: qforge_quantize::numerics::DEFAULT_MAX_ABS,
        resume,
        overwrite: false,
        allow_lossy: false,
        json: false,
        dry_run: false,
        quiet: true,
        output_arg: None,
        output_flag: None,
        allow_requantize: false,
    })
}

/// The base model of a recipe (the conversion's output when there is one) and the input.
pub fn base_and_input(r: &Recipe) -> Result<(PathBuf, PathBuf)> {
    let input = crate::modelref::resolve(&r.input.model)?;
    let base = match &r.convert {
        Some(c) => r.output.dir.join(&c.name),
        None => input.clone(),
    };
    Ok((base, input))
}
