//! The f32 GEMM of the forward (`qforge_verify::gemm::matmul_t`) on SmolLM2's and Llama 8B's
//! shapes, against this machine's FMA peak measured in the same run.
//!
//! Peak: every thread of the pool runs a loop of 24 independent FMA chains in the widest
//! vector registers its kernel uses (enough to cover FMA latency × FMA ports on current x86
//! cores), so `peak = Σ threads (FMA instructions/s × lanes × 2)`, measured, not assumed.
//! GEMM: `2·m·n·k` flops over the best of `REPS` timed runs after a warm-up.
//!
//! `cargo bench -p qforge-verify --bench gemm` (env `THREADS`, default 2). Prints a table; the
//! figures in BENCHMARKS.md come from it.

#![allow(clippy::print_stdout)] // a benchmark: its output is the table

use std::time::Instant;

use qforge_verify::gemm::{matmul_t_isa, Isa};

const REPS: usize = 3;

fn data(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod peak {
    use std::arch::x86_64::{
        _mm256_fmadd_ps, _mm256_set1_ps, _mm256_storeu_ps, _mm512_fmadd_ps, _mm512_set1_ps,
        _mm512_storeu_ps,
    };

    /// `iters × 24` dependent-free FMAs on 16 lanes; returns a value so nothing is elided.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn avx512(iters: usize) -> f32 {
        let m = _mm512_set1_ps(0.999_999);
        let d = _mm512_set1_ps(1e-7);
        let mut acc = [_mm512_set1_ps(1.0); 24];
        for _ in 0..iters {
            for a in &mut acc {
                *a = _mm512_fmadd_ps(*a, m, d);
            }
        }
        let mut out = [0f32; 16];
        let s = acc.iter().fold(_mm512_set1_ps(0.0), |x, &y| {
            std::arch::x86_64::_mm512_add_ps(x, y)
        });
        // SAFETY: 16 floats.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), s) };
        out.iter().sum()
    }

    /// The same on 8 lanes (AVX2+FMA): 12 chains (of the 16 ymm registers), 2 rounds per
    /// iteration.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn avx2(iters: usize) -> f32 {
        let m = _mm256_set1_ps(0.999_999);
        let d = _mm256_set1_ps(1e-7);
        let mut acc = [_mm256_set1_ps(1.0); 12];
        for _ in 0..iters * 2 {
            for a in &mut acc {
                *a = _mm256_fmadd_ps(*a, m, d);
            }
        }
        let mut out = [0f32; 8];
        let s = acc.iter().fold(_mm256_set1_ps(0.0), |x, &y| {
            std::arch::x86_64::_mm256_add_ps(x, y)
        });
        // SAFETY: 8 floats.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
        out.iter().sum()
    }
}

/// Measured FMA peak of `threads` threads in `isa`'s vector width, GFLOP/s.
#[allow(unsafe_code)]
fn fma_peak(isa: Isa, threads: usize) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        let (lanes, per_iter) = match isa {
            Isa::Avx512 => (16.0, 24.0),
            Isa::Avx2 => (8.0, 24.0),
            Isa::Scalar => return f64::NAN,
        };
        let iters = 20_000_000;
        let mut best = 0f64;
        for _ in 0..3 {
            let t = Instant::now();
            let sum: f32 = std::thread::scope(|s| {
                let hs: Vec<_> = (0..threads)
                    .map(|_| {
                        s.spawn(move || {
                            // SAFETY: `isa` is available (checked by the caller).
                            unsafe {
                                match isa {
                                    Isa::Avx512 => peak::avx512(iters),
                                    _ => peak::avx2(iters),
                                }
                            }
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).sum()
            });
            let dt = t.elapsed().as_secs_f64();
            std::hint::black_box(sum);
            let flops = threads as f64 * iters as f64 * per_iter * lanes * 2.0;
            best = best.max(flops / dt / 1e9);
        }
        best
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (isa, threads);
        f64::NAN
    }
}

fn gflops(isa: Isa, m: usize, k: usize, n: usize) -> f64 {
    let x = data(m * k, 1);
    let w = data(n * k, 2);
    let mut y = vec![0f32; m * n];
    matmul_t_isa(isa, &x, m, k, &w, n, &mut y);
    let mut best = f64::INFINITY;
    for _ in 0..REPS {
        let t = Instant::now();
        matmul_t_isa(isa, &x, m, k, &w, n, &mut y);
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(&y);
    2.0 * (m * n * k) as f64 / best / 1e9
}

fn main() {
    let threads: usize = std::env::var("THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .expect("rayon pool");
    let isas: Vec<Isa> = [Isa::Avx512, Isa::Avx2, Isa::Scalar]
        .into_iter()
        .filter(|i| i.available())
        .collect();
    let widest = isas[0];
    let shapes: &[(&str, usize, usize, usize)] = &[
        ("SmolLM2 q/o", 4096, 576, 576),
        ("SmolLM2 gate/up", 4096, 576, 1536),
        ("SmolLM2 down", 4096, 1536, 576),
        ("SmolLM2 LM head", 255, 576, 49152),
        ("Llama 8B q/o", 512, 4096, 4096),
    ];
    let peak_widest = fma_peak(widest, threads);
    println!("threads {threads}, widest kernel {}", widest.name());
    for &isa in &isas {
        if isa != Isa::Scalar {
            println!(
                "FMA peak {}: {:.1} GFLOP/s (measured)",
                isa.name(),
                fma_peak(isa, threads)
            );
        }
    }
    print!("| shape | m × k × n |");
    for isa in &isas {
        if *isa != Isa::Scalar {
            print!(" {} GFLOP/s |", isa.name());
        }
    }
    println!(" {} % of {} peak |", widest.name(), widest.name());
    for &(name, m, k, n) in shapes {
        print!("| {name} | {m} × {k} × {n} |");
        let mut first = 0.0;
        for (i, &isa) in isas.iter().enumerate() {
            if isa == Isa::Scalar {
                continue;
            }
            let g = gflops(isa, m, k, n);
            if i == 0 {
                first = g;
            }
            print!(" {g:.1} |");
        }
        println!(" {:.0} % |", 100.0 * first / peak_widest);
    }
    // the peak again at the end: the machine is shared, so a drift shows here
    println!(
        "FMA peak {} again: {:.1} GFLOP/s",
        widest.name(),
        fma_peak(widest, threads)
    );
}
