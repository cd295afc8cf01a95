//! Command-line definitions (clap derive). Values are parsed and nothing more; commands turn
//! them into work.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Convert, quantize and verify Llama-family checkpoints (HF safetensors, Meta .pth, GGUF).
#[derive(Debug, Parser)]
#[command(name = "qforge", version = VERSION, about, propagate_version = true, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log what happens on stderr (-v: steps, -vv: details).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

/// `qforge --version`: the package version and the git commit it was built from (build.rs).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("QFORGE_GIT_COMMIT"),
    ")"
);

/// Exit statuses, the same for every subcommand (shown in `qforge --help`).
pub const EXIT_CODES: &str = "Exit status:\n  \
    0  success\n  \
    1  error (bad input, I/O, unsupported model); the message names the file, tensor and\n     \
    offset where it can, and a hint\n  \
    2  bad command-line usage (unknown flag or scheme, missing or out-of-range value)\n  \
    3  a verification budget was exceeded (verify, pipeline)";

impl Command {
    /// Fill each command's `output` from its positional OUTPUT or its `-o`/`--output` (clap
    /// requires exactly one of them).
    pub fn resolve_outputs(&mut self) {
        fn pick(arg: &mut Option<PathBuf>, flag: &mut Option<PathBuf>) -> PathBuf {
            arg.take().or_else(|| flag.take()).unwrap_or_default()
        }
        match self {
            Command::Convert(a) => a.output = pick(&mut a.output_arg, &mut a.output_flag),
            Command::Quantize(a) => a.output = pick(&mut a.output_arg, &mut a.output_flag),
            Command::Calibrate(a) => a.output = pick(&mut a.output_arg, &mut a.output_flag),
            Command::Imatrix(a) => a.output = pick(&mut a.output_arg, &mut a.output_flag),
            _ => {}
        }
    }
}

/// A bad command-line value found after clap parsed the line (an unknown `--scheme`, say):
/// `main` prints it like clap's own errors and exits with status 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Turn an error about a command-line value into a [`UsageError`] (exit status 2).
#[allow(clippy::needless_pass_by_value)] // the shape `map_err` hands over
pub fn usage(e: anyhow::Error) -> anyhow::Error {
    UsageError(format!("{e:#}")).into()
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
    /// Convert a checkpoint to another format (streamed, atomic, resumable).
    #[command(after_help = "Examples:\n  \
        qforge convert SmolLM2-135M-Instruct.Q4_1.gguf smollm2-hf --to hf --dtype bf16\n  \
        qforge convert ./Meta-Llama-3.1-8B ./llama31-8b-hf --to hf --shard-size 5GB\n  \
        qforge convert ./model.gguf ./out --to hf --resume   # continue an interrupted run")]
    Convert(ConvertArgs),
    /// Quantize a checkpoint to FP8, INT4 or a llama.cpp GGUF mix (streamed, atomic, resumable).
    #[command(after_help = "Schemes:\n  \
        fp8-rowwise      FP8 E4M3 weights, one scale per output row, dynamic per-token FP8 activations\n  \
        fp8-static       FP8 weights with per-tensor scales + calibrated static activation scales (--calib)\n  \
        int4-g<N>        INT4 weights, one scale per N input columns (int4 = int4-g128); --asym for zero points\n  \
        int4-row         INT4 weights, one scale per output row\n  \
        int8-g<N>, int8-row  INT8 weights (W8A16, 4 codes a word), same options as INT4\n  \
        fp8-block        FP8 weights, one scale per 128x128 block, dynamic per-128-group activations\n  \
        nvfp4a16         FP4 E2M1 weights, an FP8 scale per 16 and a per-tensor global scale\n  \
        mxfp4, mxfp4a16  OCP MXFP4: E2M1 weights, an E8M0 scale per 32 (mxfp4: MXFP4 activations too)\n  \
        gguf:<mix>       llama.cpp mix: q8_0 q4_0 q4_1 q5_0 q5_1 q2_k q3_k_s q3_k_m q3_k_l q4_k_s q4_k_m q5_k_s q5_k_m q6_k\n\
        \nllm-compressor's presets mean the same here: FP8 (= fp8-static), FP8_DYNAMIC (= fp8-rowwise),\n\
        FP8_BLOCK, W4A16 (= int4-g128), W4A16_ASYM, W8A16 (= int8-g128), NVFP4A16, MXFP4, MXFP4A16;\n\
        llama.cpp type names (Q4_K_M, Q8_0, ...) need no gguf: prefix. Case and -/_ do not matter.\n\
        \nExamples:\n  \
        qforge quantize ./Llama-3.1-8B ./Llama-3.1-8B-FP8 --scheme fp8-rowwise\n  \
        qforge quantize ./Llama-3.1-405B ./405B-FP8 --scheme fp8-rowwise --layout fbgemm --policy meta-405b\n  \
        qforge quantize ./smollm2-hf ./smollm2-w4a16 --scheme int4-g64\n  \
        qforge quantize ./Llama-3.1-8B llama-8b.Q4_K_M.gguf --scheme gguf:q4_k_m")]
    Quantize(QuantizeArgs),
    /// Perplexity of a model on a text, with llama-perplexity's protocol.
    #[command(after_help = "Examples:\n  \
        qforge perplexity SmolLM2-135M-Instruct.Q4_1.gguf --data hamlet.txt --chunks 4\n  \
        qforge perplexity model.gguf --data hamlet.txt --ggml-act-quant --ggml-cpu-ops   # as llama.cpp computes it")]
    Perplexity(PerplexityArgs),
    /// Compare a quantized model against its base: PPL drift, KL divergence, top-1, per-layer error.
    #[command(after_help = "Examples:\n  \
        qforge verify ./Llama-3.1-8B ./Llama-3.1-8B-FP8 --data hamlet.txt --max-ppl-drift 1% --report drift.json\n\n\
        Exit status: 0 within budget, 3 when a budget (--max-ppl-drift, --max-kld, --min-top1) is exceeded, 1 on error.")]
    Verify(VerifyArgs),
    /// Benchmarks (GEMM kernels on a CUDA device).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Collect a llama.cpp-compatible importance matrix (llama-imatrix's statistic) for
    /// `qforge quantize --imatrix` or `llama-quantize --imatrix`.
    #[command(after_help = "Examples:\n  \
        qforge imatrix model.gguf --data hamlet.txt -o imatrix.gguf --chunks 8\n  \
        qforge imatrix model.gguf --data hamlet.txt -o imatrix.dat --format dat\n  \
        qforge quantize model.gguf model.Q4_K_M.gguf --scheme gguf:q4_k_m --imatrix imatrix.gguf\n\n\
        Chunks, tokenization and BOS follow llama-imatrix (-c 512 --chunks N): every token of each\n\
        chunk is counted for every blk.* linear; --process-output adds output.weight (not for tied\n\
        embeddings, as llama.cpp). --kv-f16 and --ggml-act-quant emulate llama.cpp's CPU numerics.")]
    Imatrix(ImatrixArgs),
    /// Calibrate layer by layer on text: static FP8 activation scales or GPTQ INT4/INT8 codes.
    #[command(after_help = "Methods:\n  \
        fp8-static   per-tensor static input scales (amax/448); -o FILE (JSON) for quantize --scheme fp8-static --calib FILE\n  \
        gptq         GPTQ codes and scales; -o DIR for quantize --scheme int4-g<N>|int4-row|int8-… --calib DIR\n  \
        awq          AWQ smoothing scales (llm-compressor's search); -o DIR for quantize --scheme int4-g<N>|int4-row --calib DIR\n\
        \nSamples: the texts are tokenized with the model's tokenizer, concatenated, cut into windows of\n\
        --seq-len tokens and --samples of them drawn with a seeded shuffle (--seed). An interrupted run\n\
        resumes from <output>.qforge-state at the next layer.\n\
        \nExamples:\n  \
        qforge calibrate ./smollm2-hf --data macbeth.txt --method fp8-static -o smollm2-fp8.calib.json\n  \
        qforge quantize ./smollm2-hf ./smollm2-fp8s --scheme fp8-static --calib smollm2-fp8.calib.json\n  \
        qforge calibrate ./smollm2-hf --data macbeth.txt othello.txt --method gptq --scheme int4-g64 -o smollm2-gptq\n  \
        qforge quantize ./smollm2-hf ./smollm2-w4a16 --scheme int4-g64 --calib smollm2-gptq")]
    Calibrate(CalibrateArgs),
    /// Run a recipe: convert, calibrate, quantize and verify in one resumable go.
    #[command(
        after_help = "A recipe (TOML) names the input, an optional conversion and calibration, the \
        quantized outputs and the verification budgets; see examples/*.toml. Rerunning a recipe \
        skips finished steps and finishes interrupted ones (state in <out>/.qforge-pipeline-state.json).\n\n\
        Examples:\n  \
        qforge pipeline examples/ci-gate.toml\n  \
        qforge pipeline examples/405b-fp8.toml --dry-run   # sizes, memory, disk, time; writes nothing\n\n\
        Exit status: 0 all budgets met, 3 a budget exceeded (report written), 1 on error."
    )]
    Pipeline(PipelineArgs),
    /// Predict output sizes, peak memory, disk and time from configs and headers alone.
    #[command(
        after_help = "Reads no tensor data: works on a model that is only a config.json.\n\n\
        Examples:\n  \
        qforge plan examples/405b-fp8.toml\n  \
        qforge plan ./Llama-3.1-405B --scheme fp8-rowwise --layout fbgemm --policy meta-405b\n  \
        qforge plan ./Llama-3.1-8B --scheme gguf:q4_k_m --json\n  \
        qforge plan model.gguf --to hf --dtype bf16"
    )]
    Plan(PlanArgs),
    /// Print a shell completion script.
    #[command(after_help = "Examples:\n  \
        qforge completions bash > ~/.local/share/bash-completion/completions/qforge\n  \
        qforge completions zsh > ~/.zfunc/_qforge\n  \
        qforge completions fish > ~/.config/fish/completions/qforge.fish")]
    Completions(CompletionsArgs),
}

#[derive(Debug, Args)]
pub struct PipelineArgs {
    /// The recipe (TOML).
    pub recipe: PathBuf,
    /// Plan the recipe (sizes, memory, disk, time) and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report (or the plan) as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress bars or step lines on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// A recipe (.toml), or a model (directory, .gguf file, config-only directory, or
    /// org/name[@revision] in the Hugging Face cache).
    pub target: PathBuf,
    /// Plan `qforge quantize` with this scheme (see `qforge quantize --help`).
    #[arg(long)]
    pub scheme: Option<String>,
    /// Plan `qforge convert` to this format.
    #[arg(long, conflicts_with = "scheme")]
    pub to: Option<ConvertTarget>,
    /// Quantized layout (with --scheme).
    #[arg(long)]
    pub layout: Option<QuantLayout>,
    /// Which linears to quantize (with --scheme).
    #[arg(long, default_value = "all-linear")]
    pub policy: QuantPolicy,
    /// Modules left unquantized (with --scheme; repeatable).
    #[arg(long = "ignore", value_name = "PATTERN")]
    pub ignore: Vec<String>,
    /// INT4 with zero points (with --scheme).
    #[arg(long)]
    pub asym: bool,
    /// Dtype of unquantized tensors (with --scheme), or of every tensor (with --to).
    #[arg(long)]
    pub dtype: Option<FloatDtype>,
    /// Largest safetensors shard, e.g. 5GB.
    #[arg(long, default_value = "5GB", value_parser = parse_size)]
    pub shard_size: u64,
    /// Plan verifying the model layer-major on one GPU instead: h100, h200, or the device's free
    /// memory (e.g. 78GiB, with an H100's rates): tokens per pass, resident layers, memory, time.
    #[arg(long, value_name = "h100|h200|SIZE", conflicts_with_all = ["scheme", "to"])]
    pub gpu: Option<String>,
    /// With --gpu: the candidate's weights on the device (fp8 or bf16); the base is bf16.
    #[arg(long, default_value = "fp8", value_name = "fp8|bf16")]
    pub gpu_weights: String,
    /// With --gpu: tokens per chunk.
    #[arg(long, default_value_t = 512)]
    pub ctx: u64,
    /// With --gpu: chunks.
    #[arg(long, default_value_t = 20)]
    pub chunks: u64,
    /// With --gpu: the rate the weights are read from disk (cold page cache), per second.
    #[arg(long, default_value = "2GB", value_parser = parse_size)]
    pub disk_rate: u64,
    /// Print machine-readable JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell.
    pub shell: clap_complete::Shell,
}

/// `qforge calibrate` methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CalibMethod {
    /// Static per-tensor FP8 input-activation scales.
    #[value(name = "fp8-static")]
    Fp8Static,
    /// GPTQ weight quantization.
    Gptq,
    /// AWQ smoothing scales (llm-compressor's search); `qforge quantize --calib` folds them
    /// and quantizes round-to-nearest.
    Awq,
}

/// Activation-scale observers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CalibObserver {
    /// Global min/max over all tokens (llm-compressor `static_minmax`).
    Minmax,
    /// Largest per-sample --percentile of |x|.
    Percentile,
}

/// The calibration forward's float type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CalibPrecision {
    /// f32, as `qforge verify` computes.
    F32,
    /// f64 weights, activations and matmuls (fp8-static).
    F64,
}

#[derive(Debug, Args)]
pub struct CalibrateArgs {
    /// Model (HF directory for gptq; any format for fp8-static).
    pub model: PathBuf,
    /// Calibration text files (llama.cpp's -f).
    #[arg(
        long,
        short = 'f',
        num_args = 1..,
        value_name = "TEXT",
        required_unless_present = "tokens"
    )]
    pub data: Vec<PathBuf>,
    /// Read the samples' token ids from this JSON file instead of --data (as --samples-out writes).
    #[arg(long, value_name = "FILE", conflicts_with = "data")]
    pub tokens: Option<PathBuf>,
    /// Write the drawn samples' token ids here (JSON: {"seq_len", "samples": [[ids]]}).
    #[arg(long, value_name = "FILE")]
    pub samples_out: Option<PathBuf>,
    /// Method.
    #[arg(long, value_enum)]
    pub method: CalibMethod,
    /// GPTQ scheme: int4-g<N>, int4-row, int8-g<N>, int8-row (or W4A16, W4A16_ASYM, W8A16).
    #[arg(long, default_value = "int4-g128")]
    pub scheme: String,
    /// GPTQ activation ordering: weight (llm-compressor's default "static") or none.
    #[arg(long, default_value = "weight", value_name = "weight|none")]
    pub actorder: String,
    /// GPTQ dampening, a fraction of the Hessian's mean diagonal.
    #[arg(long, default_value_t = 0.01)]
    pub dampening: f64,
    /// GPTQ lazy-update block size.
    #[arg(long, default_value_t = 128)]
    pub block_size: usize,
    /// fp8-static observer.
    #[arg(long, value_enum, default_value = "minmax")]
    pub observer: CalibObserver,
    /// Percentile for --observer percentile.
    #[arg(long, default_value_t = 99.99)]
    pub percentile: f64,
    /// fp8-static: the calibration forward's float type (f64: the model's exact activations,
    /// free of f32 accumulation-order noise; about 2x the time).
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: CalibPrecision,
    /// Mixture-of-experts models: calibrate every expert on every token (llm-compressor's
    /// calibrate_all_experts) instead of only the tokens routed to it.
    #[arg(long)]
    pub all_experts: bool,
    /// Calibration samples.
    #[arg(long, default_value_t = 128)]
    pub samples: usize,
    /// Tokens per sample.
    #[arg(long, default_value_t = 512)]
    pub seq_len: usize,
    /// Seed of the sample draw.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output: a JSON file (fp8-static) or a directory (gptq, awq); also -o.
    #[arg(value_name = "OUTPUT", required_unless_present = "output_flag")]
    pub output_arg: Option<PathBuf>,
    /// The output, as an option (instead of the positional OUTPUT).
    #[arg(
        short = 'o',
        long = "output",
        id = "output_flag",
        value_name = "OUTPUT",
        conflicts_with = "output_arg"
    )]
    pub output_flag: Option<PathBuf>,
    /// OUTPUT or -o, whichever was given (filled by [`Command::resolve_outputs`]).
    #[arg(skip)]
    pub output: PathBuf,
    /// Replace an existing output.
    #[arg(long)]
    pub overwrite: bool,
    /// Threads (default: all cores); results do not depend on it.
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
    /// Where the forward runs: cpu, cuda (device 0) or cuda:N.
    #[arg(long, value_name = "DEVICE", default_value = "cpu", value_parser = parse_device)]
    pub device: qforge_verify::Device,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress lines on stderr.
    #[arg(long, short)]
    pub quiet: bool,
    /// Stop after checkpointing this layer (testing resume).
    #[arg(long, hide = true)]
    pub stop_after_layer: Option<u32>,
    /// AWQ: search for asymmetric INT4 (zero points; llm-compressor W4A16_ASYM), to be
    /// quantized with `qforge quantize --asym`.
    #[arg(long)]
    pub asym: bool,
}

/// `qforge bench` subcommands.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// FP8 rowwise-scaled GEMM (ours vs cuBLASLt) on Llama 3.1 layer shapes. Needs a CUDA device
    /// (sm_89+): without one it exits with status 1 and "no CUDA device: <reason>"; `--cpu`
    /// times the CPU reference instead.
    #[command(after_help = "Examples:\n  \
        qforge bench gemm                          # 8B/70B/405B, M = 1,16,128,2048,8192\n  \
        qforge bench gemm --models 8b --m 1,16 --json\n  \
        qforge bench gemm --cpu                    # CPU reference, small shapes")]
    Gemm(BenchGemmArgs),
}

#[derive(Debug, Args)]
pub struct BenchGemmArgs {
    /// Llama 3.1 sizes whose projection shapes to run (8b, 70b, 405b).
    #[arg(long, value_delimiter = ',', default_value = "8b,70b,405b")]
    pub models: Vec<String>,
    /// Token counts M (rows of activations).
    #[arg(
        long = "m",
        value_delimiter = ',',
        default_value = "1,16,128,2048,8192"
    )]
    pub m: Vec<usize>,
    /// Untimed launches before timing.
    #[arg(long, default_value_t = 10)]
    pub warmup: usize,
    /// Timed launches (the median is reported, with p10/p90).
    #[arg(long, default_value_t = 50)]
    pub iters: usize,
    /// cuBLASLt with CUBLASLT_MATMUL_DESC_FAST_ACCUM (fbgemm's default); off by default so both
    /// sides accumulate in f32.
    #[arg(long)]
    pub fast_accum: bool,
    /// Skip the cuBLASLt baseline.
    #[arg(long)]
    pub no_cublas: bool,
    /// Time the CPU reference on small shapes instead (no device needed).
    #[arg(long)]
    pub cpu: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
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

/// Output format of `qforge convert`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConvertTarget {
    /// Hugging Face safetensors directory.
    Hf,
    /// A single GGUF file (llama.cpp).
    Gguf,
    /// Meta directory: params.json + consolidated.NN.pth (torch.save format).
    Meta,
}

/// Float dtype for converted tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FloatDtype {
    /// bfloat16
    Bf16,
    /// IEEE half
    F16,
    /// IEEE single
    F32,
}

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// Input checkpoint (.gguf file, HF directory or Meta directory).
    pub input: PathBuf,
    /// Output directory (--to hf, meta) or .gguf file (--to gguf), also -o; it appears
    /// only when complete.
    #[arg(value_name = "OUTPUT", required_unless_present = "output_flag")]
    pub output_arg: Option<PathBuf>,
    /// The output, as an option (instead of the positional OUTPUT).
    #[arg(
        short = 'o',
        long = "output",
        id = "output_flag",
        value_name = "OUTPUT",
        conflicts_with = "output_arg"
    )]
    pub output_flag: Option<PathBuf>,
    /// OUTPUT or -o, whichever was given (filled by [`Command::resolve_outputs`]).
    #[arg(skip)]
    pub output: PathBuf,
    /// Output format.
    #[arg(long)]
    pub to: ConvertTarget,
    /// Dtype of every output tensor [default: keep float tensors, decode quantized ones to f32].
    #[arg(long)]
    pub dtype: Option<FloatDtype>,
    /// Largest safetensors shard, e.g. 5GB, 500MB, 2GiB.
    #[arg(long, default_value = "5GB", value_parser = parse_size)]
    pub shard_size: u64,
    /// Model-parallel shards (consolidated.00.pth …) for --to meta: 1 for 8B, 8 for 70B/405B.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub mp: u16,
    /// Continue an interrupted run from its staging directory (finished files are re-verified).
    #[arg(long)]
    pub resume: bool,
    /// Replace the output if it exists.
    #[arg(long)]
    pub overwrite: bool,
    /// Print what would be written (exact sizes, peak memory, disk, time) and write nothing
    /// (--to hf and --to gguf; Meta's .pth containers are not planned).
    #[arg(long)]
    pub dry_run: bool,
    /// Print a machine-readable summary (JSON) on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress, notes or status lines on stderr (errors still appear).
    #[arg(long, short)]
    pub quiet: bool,
    /// Write the output even when it would compute something other than the input (RoPE
    /// scaling or a tokenizer the target cannot hold); the changes are recorded in it.
    #[arg(long)]
    pub allow_lossy: bool,
}

impl FloatDtype {
    /// The lower-case name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            FloatDtype::Bf16 => "bf16",
            FloatDtype::F16 => "f16",
            FloatDtype::F32 => "f32",
        }
    }
}

/// Output layout of `qforge quantize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QuantLayout {
    /// compressed-tensors (vLLM, transformers, SGLang): float-quantized / pack-quantized.
    CompressedTensors,
    /// fbgemm_fp8 (Meta's Llama 3.1 405B FP8 layout; FP8 rowwise only).
    Fbgemm,
    /// A GGUF file (llama.cpp), for gguf:<mix> schemes.
    Gguf,
    /// mlx-lm (Apple silicon): MLX affine weights, with --scheme int4-g<N> / int8-g<N>, N = 32, 64, 128.
    Mlx,
}

/// Which linears `qforge quantize` converts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QuantPolicy {
    /// Every linear of every block (the LM head stays in the model dtype).
    AllLinear,
    /// Meta's 405B FP8 recipe: only the FFN of blocks 1..n-2.
    #[value(name = "meta-405b")]
    Meta405b,
    /// Meta's Llama 4 FP8 recipe: only the routed experts of MoE blocks 1..n-2.
    #[value(name = "meta-llama4")]
    MetaLlama4,
}

#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// Input checkpoint (.gguf file, HF directory or Meta directory).
    pub input: PathBuf,
    /// Output directory (HF layouts) or .gguf file (gguf:<mix>), also -o; it appears only
    /// when complete.
    #[arg(value_name = "OUTPUT", required_unless_present = "output_flag")]
    pub output_arg: Option<PathBuf>,
    /// The output, as an option (instead of the positional OUTPUT).
    #[arg(
        short = 'o',
        long = "output",
        id = "output_flag",
        value_name = "OUTPUT",
        conflicts_with = "output_arg"
    )]
    pub output_flag: Option<PathBuf>,
    /// OUTPUT or -o, whichever was given (filled by [`Command::resolve_outputs`]).
    #[arg(skip)]
    pub output: PathBuf,
    /// A scheme, an llm-compressor preset or a llama.cpp type (see below).
    #[arg(long)]
    pub scheme: String,
    /// On-disk layout [default: compressed-tensors for FP8/INT4, gguf for gguf:<mix>].
    #[arg(long)]
    pub layout: Option<QuantLayout>,
    /// Which linears to quantize.
    #[arg(long, default_value = "all-linear")]
    pub policy: QuantPolicy,
    /// Leave this module unquantized: an HF module name (model.layers.0.mlp.down_proj) or
    /// re:<regex> (repeatable). lm_head is never quantized.
    #[arg(long = "ignore", value_name = "PATTERN")]
    pub ignore: Vec<String>,
    /// INT4 with zero points (asymmetric) instead of symmetric.
    #[arg(long)]
    pub asym: bool,
    /// Dtype of unquantized tensors and compressed-tensors scales.
    #[arg(long, default_value = "bf16")]
    pub dtype: FloatDtype,
    /// fbgemm_fp8 activation_scale_ub (per-token activation amax cap).
    #[arg(long, default_value_t = 1200.0)]
    pub activation_scale_ub: f32,
    /// Calibration results from `qforge calibrate`: its JSON file (--method fp8-static, with
    /// "input_scales") or its directory (--method gptq or awq).
    #[arg(long, value_name = "PATH")]
    pub calib: Option<PathBuf>,
    /// A llama.cpp importance matrix (llama-imatrix's GGUF or legacy .dat, or `qforge imatrix`'s)
    /// for gguf:<mix> schemes, used as `llama-quantize --imatrix` uses it.
    #[arg(long, value_name = "FILE")]
    pub imatrix: Option<PathBuf>,
    /// Largest safetensors shard, e.g. 5GB, 500MB, 2GiB.
    #[arg(long, default_value = "5GB", value_parser = parse_size)]
    pub shard_size: u64,
    /// What to do with NaN, ±inf or absurdly large (> --max-abs-weight) weights in tensors
    /// being quantized: error (stop, naming tensor, row and column), clamp (NaN → 0, the rest
    /// to ±limit), skip (leave those tensors unquantized). clamp and skip scan each tensor first.
    #[arg(long, default_value = "error", value_name = "POLICY")]
    pub bad_weights: qforge_quantize::numerics::WeightPolicy,
    /// Largest weight magnitude accepted (default: F16's maximum).
    #[arg(long, default_value_t = qforge_quantize::numerics::DEFAULT_MAX_ABS, value_name = "X")]
    pub max_abs_weight: f32,
    /// Continue an interrupted run from its staging directory.
    #[arg(long)]
    pub resume: bool,
    /// Replace the output if it exists.
    #[arg(long)]
    pub overwrite: bool,
    /// Write HF output even when it would compute something other than the input (a GGUF
    /// input's rope_freqs that are not Llama 3.1 scaling); the changes are recorded in it.
    #[arg(long)]
    pub allow_lossy: bool,
    /// Print a machine-readable summary (JSON) on stdout.
    #[arg(long)]
    pub json: bool,
    /// Print what would be written (exact sizes, peak memory, disk, time) and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// No progress, notes or status lines on stderr (errors still appear).
    #[arg(long, short)]
    pub quiet: bool,
    /// Quantize a model whose weights are already quantized (Q4_1, FP8, INT4 …): the error
    /// compounds, so it is refused without this (llama-quantize's --allow-requantize).
    #[arg(long)]
    pub allow_requantize: bool,
}

/// Parse a byte size with an optional decimal (KB, MB, GB, TB) or binary (KiB, MiB, GiB) unit.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (use B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
            ))
        }
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 5GB or 500MiB"))?;
    let bytes = value * mult as f64;
    if !(1.0..1e18).contains(&bytes) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(bytes as u64)
}

/// Whether to emulate dynamic per-token FP8 activations on quantized linears.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum W8a8Arg {
    /// As the checkpoint's quantization_config says (W8A8 dynamic FP8, fbgemm_fp8).
    Auto,
    /// On every linear with a weight_scale.
    On,
    /// Never.
    Off,
}

/// Evaluation options shared by `perplexity` and `verify`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Evaluation text (UTF-8; llama.cpp's -f), tokenized with the (base) model's tokenizer.
    #[arg(long, short = 'f', value_name = "TEXT")]
    pub data: PathBuf,
    /// Tokens per chunk (llama-perplexity -c).
    #[arg(long, short = 'c', default_value_t = 512, value_parser = chunk_tokens)]
    pub ctx: usize,
    /// Evaluate at most N chunks [default: all].
    #[arg(long, value_name = "N", value_parser = positive)]
    pub chunks: Option<usize>,
    /// Worker threads [default: all cores].
    #[arg(long, short = 't', value_name = "T")]
    pub threads: Option<usize>,
    /// Where the forward runs: cpu, cuda (device 0) or cuda:N.
    #[arg(long, value_name = "DEVICE", default_value = "cpu", value_parser = parse_device)]
    pub device: qforge_verify::Device,
    /// Read each layer in the thread that computes it, instead of reading layer i+1 on a helper
    /// thread while layer i computes (results are the same bits either way).
    #[arg(long)]
    pub no_prefetch: bool,
    /// Chunks evaluated together layer-major [default: as many as fit 2 GiB of activations].
    #[arg(long, value_name = "N")]
    pub batch_chunks: Option<usize>,
    /// Quantize each linear's input to the ggml vec_dot type of its weights, as llama.cpp's CPU
    /// backend does (Q8_0/Q8_1/Q8_K, f16/bf16).
    #[arg(long)]
    pub ggml_act_quant: bool,
    /// Round K and V to f16 like llama.cpp's default F16 KV cache.
    #[arg(long)]
    pub kv_f16: bool,
    /// RMSNorm, RoPE, SwiGLU and attention with ggml-cpu's bits (its flash attention over the
    /// F16 KV cache, llama-perplexity's default); implies --kv-f16.
    #[arg(long)]
    pub ggml_cpu_ops: bool,
    /// Dynamic per-token FP8 activations on quantized linears.
    #[arg(long, value_enum, default_value = "auto")]
    pub w8a8: W8a8Arg,
    /// Write chunk 0's scored logits ([ctx-1-ctx/2, vocab] f32 little-endian) to this file.
    #[arg(long, value_name = "FILE")]
    pub logits_out: Option<PathBuf>,
    /// Print machine-readable JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// No progress lines on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct PerplexityArgs {
    /// Model (.gguf file, HF directory or Meta directory).
    pub model: PathBuf,
    #[command(flatten)]
    pub eval: EvalArgs,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The unquantized model.
    pub base: PathBuf,
    /// The quantized model.
    pub quantized: PathBuf,
    #[command(flatten)]
    pub eval: EvalArgs,
    /// Write the JSON report here (atomically), and beside it the same report as a page with
    /// charts (report.json -> report.html: verdict, per-layer error, per-chunk perplexity).
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Largest allowed perplexity increase, in percent ("1%" or "1").
    #[arg(long, value_name = "PCT", value_parser = parse_percent)]
    pub max_ppl_drift: Option<f64>,
    /// Largest allowed mean KL divergence (nats per token).
    #[arg(long, value_name = "X")]
    pub max_kld: Option<f64>,
    /// Smallest allowed top-1 agreement with the base model, in percent ("95%" or "95").
    #[arg(long, value_name = "PCT", value_parser = parse_percent)]
    pub min_top1: Option<f64>,
    /// Keep the base model's forward (hidden states and scored logits) under this directory,
    /// keyed by model, tokens and protocol, and reuse it when verifying another candidate
    /// against the same base: N candidates cost N + 1 forwards, with the same report bytes.
    #[arg(long, value_name = "DIR")]
    pub base_cache: Option<PathBuf>,
}

/// Parse a count that must be at least 1 (`--ctx`, `--chunks`).
pub fn positive(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a whole number")),
    }
}

/// Parse `--ctx`: tokens per chunk, at least 4 (half of each chunk is scored).
pub fn chunk_tokens(s: &str) -> Result<usize, String> {
    match positive(s)? {
        n if n < 4 => Err(format!("{n} is too small (at least 4 tokens per chunk)")),
        n => Ok(n),
    }
}

/// Parse `--device`: cpu, cuda or cuda:N.
pub fn parse_device(s: &str) -> Result<qforge_verify::Device, String> {
    s.parse()
}

/// Parse "1%", "0.5 %" or "1" as a percentage.
pub fn parse_percent(s: &str) -> Result<f64, String> {
    let t = s.trim().trim_end_matches('%').trim();
    match t.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a percentage like 1% or 0.5")),
    }
}

/// File format of `qforge imatrix`'s output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImatrixFormatArg {
    /// llama-imatrix's current GGUF format (general.type = imatrix).
    Gguf,
    /// The legacy .dat format.
    Dat,
}

#[derive(Debug, Args)]
pub struct ImatrixArgs {
    /// Model (.gguf file, HF directory or Meta directory).
    pub model: PathBuf,
    /// Calibration text(s) (UTF-8; llama.cpp's -f); several are tokenized one after the other.
    #[arg(long, short = 'f', value_name = "TEXT", num_args = 1.., required = true)]
    pub data: Vec<PathBuf>,
    /// Output file (.gguf, or .dat for the legacy format); also -o.
    #[arg(value_name = "OUTPUT", required_unless_present = "output_flag")]
    pub output_arg: Option<PathBuf>,
    /// The output, as an option (instead of the positional OUTPUT).
    #[arg(
        short = 'o',
        long = "output",
        id = "output_flag",
        value_name = "OUTPUT",
        conflicts_with = "output_arg"
    )]
    pub output_flag: Option<PathBuf>,
    /// OUTPUT or -o, whichever was given (filled by [`Command::resolve_outputs`]).
    #[arg(skip)]
    pub output: PathBuf,
    /// Tokens per chunk (llama-imatrix -c).
    #[arg(long, short = 'c', default_value_t = 512, value_parser = chunk_tokens)]
    pub ctx: usize,
    /// Process at most N chunks [default: all].
    #[arg(long, value_name = "N", value_parser = positive)]
    pub chunks: Option<usize>,
    /// Worker threads [default: all cores].
    #[arg(long, short = 't', value_name = "T")]
    pub threads: Option<usize>,
    /// Where the forward runs: cpu, cuda (device 0) or cuda:N.
    #[arg(long, value_name = "DEVICE", default_value = "cpu", value_parser = parse_device)]
    pub device: qforge_verify::Device,
    /// Read each layer in the thread that computes it, instead of reading layer i+1 on a helper
    /// thread while layer i computes (results are the same bits either way).
    #[arg(long)]
    pub no_prefetch: bool,
    /// Chunks processed together layer-major [default: as many as fit 2 GiB of activations].
    #[arg(long, value_name = "N")]
    pub batch_chunks: Option<usize>,
    /// Output format [default: dat when the file name ends in .dat, else gguf].
    #[arg(long, value_enum)]
    pub format: Option<ImatrixFormatArg>,
    /// Also collect output.weight (llama-imatrix --process-output).
    #[arg(long)]
    pub process_output: bool,
    /// Quantize each linear's input as llama.cpp's CPU backend does (for quantized models).
    #[arg(long)]
    pub ggml_act_quant: bool,
    /// Round K and V to f16 like llama.cpp's default F16 KV cache.
    #[arg(long)]
    pub kv_f16: bool,
    /// RMSNorm, RoPE, SwiGLU and attention with ggml-cpu's bits (its flash attention over the
    /// F16 KV cache, llama-perplexity's default); implies --kv-f16.
    #[arg(long)]
    pub ggml_cpu_ops: bool,
    /// Replace the output if it exists.
    #[arg(long)]
    pub overwrite: bool,
    /// Print a machine-readable summary (JSON) on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress lines on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}
