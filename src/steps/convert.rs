//! The convert step: any supported checkpoint to another format, from parsed settings
//! ([`ConvertArgs`], which `qforge convert` parses and a recipe builds:
//! [`crate::steps::from_recipe::convert_args`]).

use anyhow::Result;
use qforge_codecs::DType;
use qforge_convert::export::{convert_to_hf, HfOptions, Written};
use qforge_convert::export_gguf::{convert_to_gguf, GgufOptions};
use qforge_convert::export_meta::{convert_to_meta_with, MetaOptions};
use qforge_convert::Checkpoint;
use qforge_stage::OutputOptions;

use crate::cli::{ConvertArgs, ConvertTarget, FloatDtype};

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
