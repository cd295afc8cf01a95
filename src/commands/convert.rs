//! `qforge convert`: any supported checkpoint to another format.

use std::io::Write;

use anyhow::Result;
use qforge_convert::export::{convert_to_hf, HfOptions, Written};
use qforge_convert::export_gguf::{convert_to_gguf, GgufOptions};
use qforge_convert::export_meta::{convert_to_meta_with, MetaOptions};
use qforge_convert::write::OutputOptions;
use qforge_convert::Checkpoint;
use qforge_quantize::DType;

use crate::cli::{ConvertArgs, ConvertTarget, FloatDtype};

pub fn run(args: &ConvertArgs) -> Result<()> {
    if args.dry_run {
        return crate::commands::plan::run_convert(args);
    }
    let written = execute(args)?;
    report(args, &written, &mut std::io::stderr().lock())
}

/// Convert as `args` say.
pub fn execute(args: &ConvertArgs) -> Result<Written> {
    let ckpt = Checkpoint::open(crate::modelref::resolve(&args.input.to_string_lossy())?)?;
    execute_on(&ckpt, args)
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
                // llama.cpp's converter defaults to F16 for 2-D tensors.
                dtype: dtype.unwrap_or(DType::F16),
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

fn report(args: &ConvertArgs, written: &Written, err: &mut impl Write) -> Result<()> {
    for n in &written.notes {
        writeln!(err, "{}: {n}", n.label())?;
    }
    if !written.resumed.is_empty() {
        writeln!(
            err,
            "resumed: kept {} verified file(s) from the interrupted run",
            written.resumed.len()
        )?;
    }
    let total: u64 = written.files.iter().map(|f| f.bytes).sum();
    writeln!(
        err,
        "wrote {} ({} files, {} bytes)",
        args.output.display(),
        written.files.len(),
        total
    )?;
    Ok(())
}
