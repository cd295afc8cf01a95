//! `qforge convert`: any supported checkpoint to another format.

use std::io::Write;

use anyhow::Result;
use qforge_convert::export::{convert_to_hf, HfOptions};
use qforge_convert::export_gguf::{convert_to_gguf, GgufOptions};
use qforge_convert::export_meta::{convert_to_meta_with, MetaOptions};
use qforge_convert::write::OutputOptions;
use qforge_convert::Checkpoint;
use qforge_quantize::DType;

use crate::cli::{ConvertArgs, ConvertTarget, FloatDtype};

pub fn run(args: &ConvertArgs) -> Result<()> {
    let ckpt = Checkpoint::open(&args.input)?;
    let dtype = args.dtype.map(|d| match d {
        FloatDtype::Bf16 => DType::BF16,
        FloatDtype::F16 => DType::F16,
        FloatDtype::F32 => DType::F32,
    });
    let output = OutputOptions {
        resume: args.resume,
        overwrite: args.overwrite,
    };
    let written = match args.to {
        ConvertTarget::Hf => convert_to_hf(
            &ckpt,
            &args.output,
            HfOptions {
                dtype,
                shard_size: args.shard_size,
                output,
            },
        )?,
        ConvertTarget::Gguf => convert_to_gguf(
            &ckpt,
            &args.output,
            GgufOptions {
                // llama.cpp's converter defaults to F16 for 2-D tensors.
                dtype: dtype.unwrap_or(DType::F16),
                overwrite: args.overwrite,
            },
        )?,
        ConvertTarget::Meta => convert_to_meta_with(
            &ckpt,
            &args.output,
            MetaOptions {
                mp: usize::from(args.mp),
                dtype,
                output,
            },
        )?,
    };
    let mut err = std::io::stderr().lock();
    for n in &written.notes {
        writeln!(err, "note: {n}")?;
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
