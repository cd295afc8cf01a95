//! `qforge plan MODEL --gpu h100|h200|SIZE`: memory and time of verifying a model layer-major on
//! one GPU (specs in DESIGN.md "Verification"; the design is specs/gpu.md §4 and Appendix B),
//! from its config alone.
//!
//! The device memory planner: given the GPU's free memory, it picks the tokens per pass (as
//! many whole chunks as fit beside two weight slots, the LM head and the activations: every pass
//! streams the weights once, so fewer passes mean fewer copies) and then how many layers stay
//! resident across passes in what is left. A slot holds a layer, or, when two layers do not
//! fit, the layer's largest linear (the layer then streams linear by linear). The time model is a bound, not a measurement:
//! - compute: `2·params·tokens` of the GEMMs plus the causal attention's `2·ctx²·heads·hd` per
//!   chunk and layer, at [`GEMM_EFFICIENCY`] of the dense peak (FP8 weights run the FP8 peak);
//! - host→device copies of the streamed layers at the PCIe rate ([`Gpu::h2d_bytes_per_s`]);
//! - the reads of the weights from disk at `--disk-rate` (they dominate when the page cache
//!   cannot hold the model);
//!
//! with copies and reads overlapped with compute (double-buffered slots, a prefetch thread), so
//! a pass takes the largest of the three. No GPU run has checked these figures (issue 21 ends
//! blocked on a device).

use std::io::Write;

use anyhow::{bail, Result};
use qforge_convert::{Checkpoint, ModelConfig};
use serde::Serialize;
use serde_json::json;

/// Share of the dense tensor-core peak the GEMMs are assumed to reach at large M (cuBLASLt
/// and CUTLASS reach 60–80 % per specs/gpu.md §2, unverified here).
pub const GEMM_EFFICIENCY: f64 = 0.6;

/// Device memory that is not ours: the CUDA context, cuBLASLt's workspace (32 MiB on sm_90)
/// and the allocator's slack.
pub const DEVICE_RESERVED: u64 = 1 << 30;

/// A GPU as the planner sees it.
#[derive(Debug, Clone, Serialize)]
pub struct Gpu {
    /// Name shown.
    pub name: String,
    /// Memory the engine may use, bytes.
    pub free_bytes: u64,
    /// Dense FP8 tensor-core peak, FLOP/s.
    pub fp8_flops: f64,
    /// Dense BF16 tensor-core peak, FLOP/s.
    pub bf16_flops: f64,
    /// Host→device copy rate from pinned memory, bytes/s.
    pub h2d_bytes_per_s: f64,
}

impl Gpu {
    /// H100 SXM5 (80 GB HBM3; 1978.9 / 989.4 dense TFLOP/s; PCIe Gen5 ≈ 50 GB/s per direction
    /// achieved), or H200 (141 GB, same compute): specs/gpu.md §2 and §4.
    pub fn named(s: &str) -> Option<Gpu> {
        match s.to_ascii_lowercase().as_str() {
            "h100" => Some(Gpu::hopper(
                "H100 SXM5 80 GB",
                80_000_000_000 - DEVICE_RESERVED,
            )),
            "h200" => Some(Gpu::hopper(
                "H200 141 GB",
                141_000_000_000 - DEVICE_RESERVED,
            )),
            _ => None,
        }
    }

    fn hopper(name: &str, free_bytes: u64) -> Gpu {
        Gpu {
            name: name.into(),
            free_bytes,
            fp8_flops: 1978.9e12,
            bf16_flops: 989.4e12,
            h2d_bytes_per_s: 50e9,
        }
    }

    /// `h100`, `h200`, or a free-memory size (`78GiB`) with an H100's rates.
    pub fn parse(s: &str) -> Result<Gpu> {
        if let Some(g) = Gpu::named(s) {
            return Ok(g);
        }
        match crate::cli::parse_size(s) {
            Ok(b) if b > 0 => Ok(Gpu::hopper(&format!("{} free, H100 rates", human(b)), b)),
            _ => bail!("--gpu {s:?}: expected h100, h200 or a free-memory size such as 78GiB"),
        }
    }
}

/// Weight storage on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Weights {
    /// FP8 E4M3 with an f32 scale per output row (fp8-rowwise, fbgemm).
    Fp8,
    /// BF16.
    Bf16,
}

/// The unit of the weight stream: what one of the two device slots holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum StreamUnit {
    /// A whole layer.
    Layer,
    /// One linear (when two layers do not fit beside the head and the activations).
    Linear,
}

/// Bytes of the largest of a layer's seven linears (gate/up/down for Llama shapes).
fn largest_linear(c: &ModelConfig, weights: Weights) -> u64 {
    let att = c.num_heads * c.head_dim;
    let h = c.hidden_size;
    let (out, inp) = [
        (att, h),
        (h, att),
        (c.intermediate_size, h),
        (h, c.intermediate_size),
    ]
    .into_iter()
    .max_by_key(|(o, i)| o * i)
    .unwrap_or((h, h));
    match weights {
        Weights::Fp8 => out * inp + out * 4,
        Weights::Bf16 => out * inp * 2,
    }
}

/// One model's forward on the device.
#[derive(Debug, Clone, Serialize)]
pub struct Pass {
    /// Weight storage.
    pub weights: Weights,
    /// What one device slot holds.
    pub stream_unit: StreamUnit,
    /// One layer's weights on the device, bytes.
    pub layer_bytes: u64,
    /// LM head and final norm, bytes (on the device for the logits).
    pub head_bytes: u64,
    /// Tokens per pass over the layers (whole chunks).
    pub batch_tokens: u64,
    /// Passes over the layers.
    pub passes: u64,
    /// Layers kept on the device across passes.
    pub resident_layers: u64,
    /// Activations of one pass (hidden states, one chunk's scratch and attention, logits).
    pub activation_bytes: u64,
    /// Peak device memory.
    pub peak_bytes: u64,
    /// Bytes copied host→device.
    pub copied_bytes: u64,
    /// Compute seconds at the assumed efficiency.
    pub compute_seconds: f64,
    /// Copy seconds.
    pub copy_seconds: f64,
    /// Disk read seconds (every weight once).
    pub disk_seconds: f64,
    /// The estimate: the largest of the three per pass, summed.
    pub seconds: f64,
}

/// A verification's plan.
#[derive(Debug, Clone, Serialize)]
pub struct DevicePlan {
    /// The device.
    pub gpu: Gpu,
    /// Tokens per chunk.
    pub ctx: u64,
    /// Chunks.
    pub chunks: u64,
    /// The base model's forward (BF16), run once and reused ([`qforge_verify::basecache`]).
    pub base: Pass,
    /// Each candidate's forward.
    pub candidate: Pass,
}

fn layer_params(c: &ModelConfig) -> (u64, u64) {
    let att = c.num_heads * c.head_dim;
    let kv = c.num_kv_heads * c.head_dim;
    let h = c.hidden_size;
    let linears = h * att + 2 * h * kv + att * h + 3 * h * c.intermediate_size;
    // rows of the seven linears (one f32 scale each in FP8)
    let rows = att + 2 * kv + h + 2 * c.intermediate_size + h;
    (linears, rows)
}

/// Activation bytes of a pass of `tokens` tokens (`ctx` per chunk) with `vocab` logits.
fn activations(c: &ModelConfig, tokens: u64, ctx: u64) -> u64 {
    let (h, ffn) = (c.hidden_size, c.intermediate_size);
    let att = c.num_heads * c.head_dim;
    let kv = c.num_kv_heads * c.head_dim;
    // f32 hidden states of every token of the pass, plus one chunk's scratch (x, q, k, v,
    // attention output, gate, up; f32) and its attention scores, and one chunk's logits.
    let hidden = tokens * h * 4;
    let scratch = ctx * (h + att + 2 * kv + att + 2 * ffn) * 4;
    let scores = c.num_heads * ctx * ctx * 4;
    let logits = (ctx / 2) * c.vocab_size * 4;
    hidden + scratch + scores + logits
}

/// Plan one model's forward.
pub fn plan_pass(
    c: &ModelConfig,
    gpu: &Gpu,
    weights: Weights,
    ctx: u64,
    chunks: u64,
    disk_bytes_per_s: f64,
) -> Result<Pass> {
    let (params, rows) = layer_params(c);
    let layer_bytes = match weights {
        Weights::Fp8 => params + rows * 4,
        Weights::Bf16 => params * 2,
    } + 2 * c.hidden_size * 2;
    // The LM head in BF16 (the fp8 layouts keep it unquantized) and the final norm; the
    // embedding rows are gathered on the host (verify's Model::embed) and copied as activations.
    let head_bytes = c.vocab_size * c.hidden_size * 2 + c.hidden_size * 2;
    // Double-buffered slots of a whole layer; when two do not fit, of the largest linear
    // (the layer then streams linear by linear: the same bytes, more and smaller copies).
    let linear_bytes = largest_linear(c, weights);
    let one_chunk = activations(c, ctx, ctx);
    let (stream_unit, slot_bytes) = if 2 * layer_bytes + head_bytes + one_chunk <= gpu.free_bytes {
        (StreamUnit::Layer, layer_bytes)
    } else {
        (StreamUnit::Linear, linear_bytes)
    };
    let fixed = 2 * slot_bytes + head_bytes;
    if fixed + one_chunk > gpu.free_bytes {
        bail!(
            "{}: two slots of the largest linear ({}) and the LM head ({}) with one chunk's \
             activations do not fit {} free",
            gpu.name,
            human(2 * linear_bytes),
            human(head_bytes),
            human(gpu.free_bytes)
        );
    }
    let mut per_pass = chunks;
    while per_pass > 1 && fixed + activations(c, per_pass * ctx, ctx) > gpu.free_bytes {
        per_pass -= 1;
    }
    let batch_tokens = per_pass * ctx;
    let passes = chunks.div_ceil(per_pass);
    let act = activations(c, batch_tokens, ctx);
    let spare = gpu.free_bytes - fixed - act;
    let nl = c.num_layers;
    let resident_layers = if passes > 1 {
        (spare / layer_bytes).min(nl)
    } else {
        0
    };
    let streamed = nl - resident_layers;
    let copied_bytes = resident_layers * layer_bytes + passes * streamed * layer_bytes + head_bytes;
    let peak_bytes = fixed + act + resident_layers * layer_bytes;
    let tokens = chunks * ctx;
    let att_flops = 2 * ctx * ctx * c.num_heads * c.head_dim; // QKᵀ and PV, causal half
    let gemm_flops =
        2 * params * tokens * nl + 2 * c.vocab_size * c.hidden_size * chunks * (ctx / 2);
    let peak = match weights {
        Weights::Fp8 => gpu.fp8_flops,
        Weights::Bf16 => gpu.bf16_flops,
    };
    let compute_seconds = (gemm_flops as f64 / (peak * GEMM_EFFICIENCY))
        + (att_flops * chunks * nl) as f64 / (gpu.bf16_flops * GEMM_EFFICIENCY);
    let copy_seconds = copied_bytes as f64 / gpu.h2d_bytes_per_s;
    let embed = if c.tie_word_embeddings {
        0
    } else {
        c.vocab_size * c.hidden_size * 2
    };
    let disk_bytes = nl * layer_bytes + head_bytes + embed;
    let disk_seconds = disk_bytes as f64 / disk_bytes_per_s;
    // Per pass the three overlap; the disk is read once (later passes hit the page cache only
    // if the host holds the model, so the first pass carries the disk).
    let per_pass_compute = compute_seconds / passes as f64;
    let per_pass_copy =
        (passes * streamed * layer_bytes) as f64 / gpu.h2d_bytes_per_s / passes as f64;
    let seconds = per_pass_compute.max(per_pass_copy).max(disk_seconds)
        + (passes - 1) as f64 * per_pass_compute.max(per_pass_copy);
    Ok(Pass {
        weights,
        stream_unit,
        layer_bytes,
        head_bytes,
        batch_tokens,
        passes,
        resident_layers,
        activation_bytes: act,
        peak_bytes,
        copied_bytes,
        compute_seconds,
        copy_seconds,
        disk_seconds,
        seconds,
    })
}

/// Plan verifying a `candidate`-weight model against its BF16 base on `gpu`.
pub fn plan(
    c: &ModelConfig,
    gpu: &Gpu,
    candidate: Weights,
    ctx: u64,
    chunks: u64,
    disk_bytes_per_s: f64,
) -> Result<DevicePlan> {
    Ok(DevicePlan {
        gpu: gpu.clone(),
        ctx,
        chunks,
        base: plan_pass(c, gpu, Weights::Bf16, ctx, chunks, disk_bytes_per_s)?,
        candidate: plan_pass(c, gpu, candidate, ctx, chunks, disk_bytes_per_s)?,
    })
}

fn human(b: u64) -> String {
    let b = b as f64;
    if b >= 1e12 {
        format!("{:.2} TB", b / 1e12)
    } else if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else {
        format!("{:.1} MB", b / 1e6)
    }
}

fn secs(s: f64) -> String {
    if s >= 3600.0 {
        format!("{:.1} h", s / 3600.0)
    } else if s >= 60.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{s:.1} s")
    }
}

/// Print the plan of `--gpu` for `ckpt`.
pub fn run(ckpt: &Checkpoint, args: &crate::cli::PlanArgs, gpu: &str) -> Result<()> {
    let g = Gpu::parse(gpu)?;
    let w = if args.gpu_weights.eq_ignore_ascii_case("bf16") {
        Weights::Bf16
    } else if args.gpu_weights.eq_ignore_ascii_case("fp8") {
        Weights::Fp8
    } else {
        bail!("--gpu-weights {:?}: expected fp8 or bf16", args.gpu_weights);
    };
    if args.ctx < 4 || args.chunks == 0 {
        bail!("--ctx must be at least 4 and --chunks at least 1");
    }
    let disk = args.disk_rate as f64;
    if disk <= 0.0 {
        bail!("--disk-rate must be positive");
    }
    let p = plan(&ckpt.config, &g, w, args.ctx, args.chunks, disk)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&json!({"device_verify": p}))?
        )?;
        return Ok(());
    }
    let c = &ckpt.config;
    writeln!(
        out,
        "verify {} ({} layers, hidden {}) on {}: {} chunks × {} tokens, disk {}/s",
        args.target.display(),
        c.num_layers,
        c.hidden_size,
        g.name,
        args.chunks,
        args.ctx,
        human(args.disk_rate)
    )?;
    writeln!(
        out,
        "{:<10} {:>9} {:>6} {:>7} {:>7} {:>8} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9}",
        "forward",
        "layer",
        "slot",
        "tok/pass",
        "passes",
        "resident",
        "peak mem",
        "copied",
        "compute",
        "copy",
        "disk",
        "estimate"
    )?;
    for (name, q) in [("base bf16", &p.base), ("candidate", &p.candidate)] {
        writeln!(
            out,
            "{:<10} {:>9} {:>6} {:>7} {:>7} {:>8} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9}",
            name,
            human(q.layer_bytes),
            match q.stream_unit {
                StreamUnit::Layer => "layer",
                StreamUnit::Linear => "linear",
            },
            q.batch_tokens,
            q.passes,
            q.resident_layers,
            human(q.peak_bytes),
            human(q.copied_bytes),
            secs(q.compute_seconds),
            secs(q.copy_seconds),
            secs(q.disk_seconds),
            secs(q.seconds)
        )?;
    }
    writeln!(
        out,
        "N candidates: base once + N × candidate = {} + N × {} (the base forward is reused, \
         verify --base-cache); compute at {:.0} % of the dense peak; unmeasured (no GPU run)",
        secs(p.base.seconds),
        secs(p.candidate.seconds),
        GEMM_EFFICIENCY * 100.0
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llama405b() -> ModelConfig {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples/configs/Llama-3.1-405B-Instruct");
        Checkpoint::from_config(&dir).expect("405B config").config
    }

    #[test]
    fn fp8_405b_layer_matches_the_spec_and_fits_an_h100() {
        let c = llama405b();
        let g = Gpu::named("h100").unwrap();
        let p = plan_pass(&c, &g, Weights::Fp8, 512, 20, 2e9).unwrap();
        // specs/gpu.md §4: 3.188 B params per layer, 3.19 GB in FP8 (+0.63 MB of row scales).
        assert!(
            (3.18e9..3.20e9).contains(&(p.layer_bytes as f64)),
            "{}",
            p.layer_bytes
        );
        assert!(p.peak_bytes <= g.free_bytes);
        // 20 chunks × 512 tokens: 671 MB of f32 hidden states fit in one pass.
        assert_eq!((p.batch_tokens, p.passes, p.resident_layers), (10240, 1, 0));
        // every layer once, plus the head
        assert_eq!(p.copied_bytes, 126 * p.layer_bytes + p.head_bytes);
        // ~406 GB at 2 GB/s: the disk bounds the pass
        assert!(p.seconds >= p.disk_seconds && p.disk_seconds > 190.0);
    }

    #[test]
    fn small_memory_splits_passes_and_keeps_layers_resident() {
        let c = llama405b();
        // 16 GB free: two 3.19 GB slots + a 4.2 GB head leave ~5 GB, ~145 chunks of f32
        // hidden states (64 KiB per token): 400 chunks take 3 passes.
        let g = Gpu::parse("16GB").unwrap();
        let p = plan_pass(&c, &g, Weights::Fp8, 512, 400, 2e9).unwrap();
        assert_eq!(p.passes, 3, "{p:?}");
        assert!(p.resident_layers <= 1, "{p:?}");
        assert_eq!(
            p.copied_bytes,
            p.resident_layers * p.layer_bytes
                + 3 * (126 - p.resident_layers) * p.layer_bytes
                + p.head_bytes
        );
        assert!(p.peak_bytes <= g.free_bytes, "{p:?}");
        assert_eq!(p.batch_tokens % 512, 0);
        assert_eq!(p.stream_unit, StreamUnit::Layer);
        // the BF16 base's two 6.38 GB layers do not fit beside the head: it streams linears
        // (the largest, gate/up/down, 1.74 GB each)
        let b = plan_pass(&c, &g, Weights::Bf16, 512, 400, 2e9).unwrap();
        assert_eq!(b.stream_unit, StreamUnit::Linear, "{b:?}");
        assert!(b.peak_bytes <= g.free_bytes, "{b:?}");
        // too small for two linear slots and the head: refused, not planned
        assert!(plan_pass(&c, &Gpu::parse("6GB").unwrap(), Weights::Fp8, 512, 4, 2e9).is_err());
    }
}
