//! Command-line definitions (clap derive). Values are parsed and nothing more; commands turn
//! them into work.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Convert, quantize and verify Llama-family checkpoints (HF safetensors, Meta .pth, GGUF).
#[derive(Debug, Parser)]
#[command(name = "qforge", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show a checkpoint's format, config, tokenizer and tensors.
    #[command(after_help = "Examples:\n  \
        qforge inspect SmolLM2-135M-Instruct.Q4_1.gguf\n  \
        qforge inspect ./Llama-3.1-8B --json\n  \
        qforge inspect ./Llama-3.1-8B --tensor model.layers.0.self_attn.q_proj.weight --stats\n  \
        qforge inspect model.gguf --dump out/   # every tensor dequantized to raw f32 files")]
    Inspect(InspectArgs),
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A `.gguf` file, an HF directory (config.json + *.safetensors) or a Meta directory
    /// (params.json + consolidated.*.pth).
    pub model: PathBuf,
    /// Print machine-readable JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Restrict to these tensors (name as stored in the file; repeatable).
    #[arg(long = "tensor", value_name = "NAME")]
    pub tensors: Vec<String>,
    /// Dequantize the selected tensors and print min/max/mean/absmax and NaN/Inf counts.
    #[arg(long)]
    pub stats: bool,
    /// Dequantize the selected tensors (all if none selected) to `<DIR>/<name>.f32`
    /// (raw little-endian f32, row-major).
    #[arg(long, value_name = "DIR")]
    pub dump: Option<PathBuf>,
}
