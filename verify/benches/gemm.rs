//! The f32 GEMM of the forward (`qforge_verify::gemm::matmul_t`) on SmolLM2's and Llama 8B's
//! shapes, against this machine's FMA peak measured in the same run.
//!
//! Peak: every thread of the pool runs a loop of 24 independent FMA chains in the widest
//! vector registers its kernel uses (enough to cover FMA latency × FMA ports on current x86
//! cores), so `peak = Σ threads (FMA instructions/s × lanes × 2)`, measured, not assumed.
//! GEMM: `2·m·n·k` flops over the best of `REPS` timed runs after a warm-up.
//!
//! Clock: one thread runs a chain of dependent 64-bit `imul`s (3 cycles each on Intel cores
//! since Sandy Bridge; not `add reg, imm`, of which a chain ran at 0.17 cycles each here,
//! collapsed by the renamer) and a chain of dependent 512-bit FMAs (4 cycles on Skylake-SP
//! through Sapphire Rapids: Intel's optimization manual, latency tables); the best of 10 short
//! runs gives the core clock under scalar and under AVX-512 work (a Xeon may run AVX-512 at a
//! lower licence clock). From the latter, `peak_clock = threads × 2 FMA ports × lanes × 2 × f`,
//! the hardware's figure; and the measured 24-chain rate of one thread over `lanes × 2 × f` is
//! the FMA instructions it retires per cycle (2 where there are two FMA ports).
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

/// Core clock in GHz (one thread): (scalar `imul` chain, dependent AVX-512 FMA chain).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
fn clock_ghz() -> (f64, f64) {
    #[target_feature(enable = "avx512f")]
    unsafe fn fma_chain(iters: u64) -> f32 {
        use std::arch::x86_64::{_mm512_fmadd_ps, _mm512_reduce_add_ps, _mm512_set1_ps};
        let (m, d) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
        let mut a = _mm512_set1_ps(1.0);
        for _ in 0..iters {
            a = _mm512_fmadd_ps(a, m, d);
        }
        _mm512_reduce_add_ps(a)
    }
    let iters: u64 = 20_000_000;
    let (mut add, mut fma) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..10 {
        let t = Instant::now();
        // SAFETY: register-only arithmetic.
        unsafe {
            std::arch::asm!(
                "2:",
                "imul {x}, {x}", "imul {x}, {x}", "imul {x}, {x}", "imul {x}, {x}",
                "imul {x}, {x}", "imul {x}, {x}", "imul {x}, {x}", "imul {x}, {x}",
                "dec {n}",
                "jnz 2b",
                n = inout(reg) iters => _,
                x = inout(reg) 3u64 => _,
                options(nomem, nostack),
            );
        }
        add = add.min(t.elapsed().as_secs_f64());
        if Isa::Avx512.available() {
            let t = Instant::now();
            // SAFETY: AVX-512F is present (checked).
            std::hint::black_box(unsafe { fma_chain(iters) });
            fma = fma.min(t.elapsed().as_secs_f64());
        }
    }
    (
        24.0 * iters as f64 / add / 1e9,
        4.0 * iters as f64 / fma / 1e9,
    )
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
    // the hardware's peak from the measured clock (x86-64 with AVX-512 only)
    let mut peak_clock = f64::NAN;
    #[cfg(target_arch = "x86_64")]
    if widest == Isa::Avx512 {
        let (f_add, f_fma) = clock_ghz();
        let one = fma_peak(Isa::Avx512, 1);
        peak_clock = threads as f64 * 2.0 * 16.0 * 2.0 * f_fma;
        println!(
            "clock: {f_add:.2} GHz (imul chain), {f_fma:.2} GHz (AVX-512 FMA chain); one thread \
             retires {:.2} AVX-512 FMAs/cycle; clock peak {threads} threads × 2 ports × 32 \
             flops × {f_fma:.2} GHz = {peak_clock:.1} GFLOP/s",
            one / (32.0 * f_fma)
        );
    }
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
    println!(
        " {} % of measured {} peak | % of clock peak |",
        widest.name(),
        widest.name()
    );
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
        println!(
            " {:.0} % | {:.0} % |",
            100.0 * first / peak_widest,
            100.0 * first / peak_clock
        );
    }
    // the peak again at the end: the machine is shared, so a drift shows here
    println!(
        "FMA peak {} again: {:.1} GFLOP/s",
        widest.name(),
        fma_peak(widest, threads)
    );
}
