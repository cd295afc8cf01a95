//! `qforge bench gemm`: FP8 rowwise-scaled GEMM, ours (kernels/cuda/fp8_gemm.cu) vs cuBLASLt, on
//! Llama 3.1 projection shapes. CUDA events on one stream, warm-up, median of repeats (with
//! p10/p90), TFLOP/s = 2·M·N·K / t and GB/s = (M·K + N·K + 2·M·N) / t. Weights are rotated over
//! enough copies (≥ 256 MB together) that they do not stay in L2 between launches. Random FP8
//! codes and scales: timing does not depend on the values.
//!
//! Without a CUDA device this fails with "no CUDA device: <reason>" (exit status 1); `--cpu`
//! times the CPU reference on small shapes instead.

use std::io::{BufWriter, Write};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use qforge_kernels::cpu::CpuGemm;
use qforge_kernels::cuda::cublaslt::CublasLtFp8;
use qforge_kernels::cuda::CudaGemm;
use qforge_kernels::{Fp8Rows, Gemm, OutputMut};
use serde_json::{json, Value};

use crate::cli::BenchGemmArgs;

/// (projection, N, K) of one Llama 3.1 size (h = hidden, i = FFN, 8 KV heads of 128).
fn shapes(model: &str) -> Result<Vec<(&'static str, usize, usize)>> {
    let (h, i) = match model.to_ascii_lowercase().as_str() {
        "8b" => (4096, 14336),
        "70b" => (8192, 28672),
        "405b" => (16384, 53248),
        other => bail!("unknown model size {other:?} (use 8b, 70b, 405b)"),
    };
    let kv = 8 * 128;
    Ok(vec![
        ("q", h, h),
        ("k/v", kv, h),
        ("o", h, h),
        ("gate/up", i, h),
        ("down", h, i),
    ])
}

/// splitmix64 bytes: random E4M3 codes (never NaN) and positive scales.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn fp8(&mut self, rows: usize, k: usize) -> Result<Fp8Rows> {
        let mut q = vec![0u8; rows * k];
        for chunk in q.chunks_mut(8) {
            let b = self.next().to_le_bytes();
            for (d, s) in chunk.iter_mut().zip(b) {
                *d = if s & 0x7F == 0x7F { s ^ 1 } else { s };
            }
        }
        let scale = (0..rows)
            .map(|_| ((self.next() >> 40) as f32 / (1u64 << 24) as f32 + 0.01) * 1e-3)
            .collect();
        Ok(Fp8Rows::new(rows, k, q, scale)?)
    }
}

#[derive(Debug, Clone, Copy)]
#[allow(clippy::struct_field_names)]
struct Timing {
    median_ms: f64,
    p10_ms: f64,
    p90_ms: f64,
}

impl Timing {
    fn of(mut ms: Vec<f32>) -> Timing {
        ms.sort_by(f32::total_cmp);
        let at = |q: f64| f64::from(ms[((ms.len() - 1) as f64 * q).round() as usize]);
        Timing {
            median_ms: at(0.5),
            p10_ms: at(0.1),
            p90_ms: at(0.9),
        }
    }
}

struct Row {
    model: String,
    proj: &'static str,
    m: usize,
    n: usize,
    k: usize,
    ours: Timing,
    cublas: Option<Result<Timing, String>>,
}

impl Row {
    fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64
    }
    fn bytes(&self) -> f64 {
        (self.m * self.k + self.n * self.k + 2 * self.m * self.n) as f64
    }
    fn tflops(&self, t: Timing) -> f64 {
        self.flops() / (t.median_ms * 1e-3) / 1e12
    }
    fn gbs(&self, t: Timing) -> f64 {
        self.bytes() / (t.median_ms * 1e-3) / 1e9
    }
    fn to_json(&self) -> Value {
        let t = |t: Timing| {
            json!({"median_ms": t.median_ms, "p10_ms": t.p10_ms, "p90_ms": t.p90_ms,
                   "tflops": self.tflops(t), "gb_per_s": self.gbs(t)})
        };
        let mut v = json!({"model": self.model, "proj": self.proj, "m": self.m, "n": self.n,
                           "k": self.k, "ours": t(self.ours)});
        match &self.cublas {
            Some(Ok(c)) => {
                v["cublaslt"] = t(*c);
                v["ours_vs_cublaslt"] = json!(c.median_ms / self.ours.median_ms);
            }
            Some(Err(e)) => v["cublaslt"] = json!({"error": e}),
            None => {}
        }
        v
    }
}

pub fn run_gemm(args: &BenchGemmArgs) -> Result<()> {
    if args.cpu {
        return run_cpu(args);
    }
    if args.iters == 0 {
        bail!("--iters must be positive");
    }
    let gpu = CudaGemm::new(0)
        .context("qforge bench gemm needs a CUDA device (sm_89+); --cpu times the CPU reference")?;
    let lt = if args.no_cublas {
        None
    } else {
        Some(CublasLtFp8::new(&gpu))
    };
    eprintln!("device: {}", gpu.device_name());
    let mut rng = Rng(0x5EED);
    let mut rows = Vec::new();
    for model in &args.models {
        for (proj, n, k) in shapes(model)? {
            // Enough weight copies that consecutive launches read from HBM, not L2.
            let copies = (256usize << 20).div_ceil(n * k).clamp(1, 8);
            let w: Vec<_> = (0..copies)
                .map(|_| Ok(gpu.upload_rows(&rng.fp8(n, k)?)?))
                .collect::<Result<_>>()?;
            for &m in &args.m {
                let x = gpu.upload_rows(&rng.fp8(m, k)?)?;
                let mut y = gpu.alloc_out(m, n, false)?;
                let ours = Timing::of(gpu.time_ms(args.warmup, args.iters, |i| {
                    gpu.fp8_gemm_into(&x, &w[i % copies], &mut y)
                })?);
                let cublas = match &lt {
                    None => None,
                    Some(Err(e)) => Some(Err(e.to_string())),
                    Some(Ok(lt)) => Some(match lt.plan(m, n, k, args.fast_accum) {
                        Err(e) => Err(e.to_string()),
                        Ok(plan) => {
                            let mut yc = gpu.stream().alloc_zeros::<u16>(m * n)?;
                            gpu.time_ms(args.warmup, args.iters, |i| {
                                lt.run(&plan, &x, &w[i % copies], &mut yc)
                            })
                            .map(Timing::of)
                            .map_err(|e| e.to_string())
                        }
                    }),
                };
                let row = Row {
                    model: model.clone(),
                    proj,
                    m,
                    n,
                    k,
                    ours,
                    cublas,
                };
                eprintln!(
                    "{model} {proj} m={m}: ours {:.3} ms ({:.1} TFLOP/s)",
                    ours.median_ms,
                    row.tflops(ours)
                );
                rows.push(row);
            }
        }
    }
    print_rows(args, &gpu.device_name(), &rows)
}

fn print_rows(args: &BenchGemmArgs, device: &str, rows: &[Row]) -> Result<()> {
    let mut out = BufWriter::new(std::io::stdout().lock());
    if args.json {
        let v = json!({"device": device, "warmup": args.warmup, "iters": args.iters,
                       "fast_accum": args.fast_accum,
                       "results": rows.iter().map(Row::to_json).collect::<Vec<_>>()});
        serde_json::to_writer_pretty(&mut out, &v)?;
        writeln!(out)?;
    } else {
        writeln!(out, "device: {device}")?;
        writeln!(
            out,
            "| model | proj | M | N | K | ours ms | ours TFLOP/s | ours GB/s | cuBLASLt ms | cuBLASLt TFLOP/s | ours/cuBLASLt |"
        )?;
        writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|")?;
        for r in rows {
            let (cms, ctf, ratio) = match &r.cublas {
                Some(Ok(c)) => (
                    format!("{:.4}", c.median_ms),
                    format!("{:.1}", r.tflops(*c)),
                    format!("{:.0}%", 100.0 * c.median_ms / r.ours.median_ms),
                ),
                Some(Err(_)) => ("error".into(), "-".into(), "-".into()),
                None => ("-".into(), "-".into(), "-".into()),
            };
            writeln!(
                out,
                "| {} | {} | {} | {} | {} | {:.4} | {:.1} | {:.0} | {cms} | {ctf} | {ratio} |",
                r.model,
                r.proj,
                r.m,
                r.n,
                r.k,
                r.ours.median_ms,
                r.tflops(r.ours),
                r.gbs(r.ours)
            )?;
        }
    }
    out.flush()?;
    Ok(())
}

/// `--cpu`: the CPU reference on 8B's `o` projection (N = K = 4096) at small M.
fn run_cpu(args: &BenchGemmArgs) -> Result<()> {
    let cpu = CpuGemm::new();
    let mut rng = Rng(0x5EED);
    let (n, k) = (4096usize, 4096usize);
    let w = cpu.upload_fp8(&rng.fp8(n, k)?)?;
    let iters = args.iters.clamp(1, 5);
    let mut rows = Vec::new();
    for &m in args.m.iter().filter(|&&m| m <= 16) {
        let x = rng.fp8(m, k)?;
        let mut y = vec![0u16; m * n];
        let mut ms = Vec::with_capacity(iters);
        for _ in 0..iters {
            let t = Instant::now();
            cpu.fp8_gemm(&x, &w, OutputMut::Bf16(&mut y))?;
            ms.push(t.elapsed().as_secs_f32() * 1e3);
        }
        rows.push(Row {
            model: "8b".into(),
            proj: "o",
            m,
            n,
            k,
            ours: Timing::of(ms),
            cublas: None,
        });
    }
    if rows.is_empty() {
        bail!("--cpu times M <= 16 only; pass e.g. --m 1,16");
    }
    print_rows(args, &cpu.device_name(), &rows)
}
