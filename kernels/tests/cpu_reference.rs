//! The CPU reference against independent `f64` computations, with the budgets stated in
//! `kernels/src/cpu.rs`:
//! - FP8 GEMM, f32 out: `|y − y64| ≤ 2^-24·|y64|·(1 + 2^-20)` (the dot product is exact; only the
//!   final rounding to f32 and two f64 scale multiplications remain);
//! - FP8 GEMM, BF16 out: `|y − y64| ≤ (2^-8 + 2^-23)·|y64|` (BF16 keeps 8 significant bits);
//! - W4A16, f32 out: `|y − y64| ≤ 2^-24·|y64|·(1 + 2^-20) + 2^-50·Σ|x·w|`;
//! - activation quantization: bit-identical to `qforge_codecs::fp8::quantize_fp8_rowwise`.

mod support;

use qforge_codecs::float::bf16_bits_to_f32;
use qforge_codecs::int4::{
    dequantize_compressed_tensors, pack_compressed_tensors, quantize_int4, Int4Config,
};
use qforge_kernels::cpu::{CpuGemm, EXACT_K_MAX};
use qforge_kernels::{linear_fp8, Backend, Error, Fp8Rows, Gemm, Int4Rows, OutputMut};
use support::{activations, fp8_ref_f64, Rng};

const F32_REL: f64 = 5.960_464_477_539_063e-8 * (1.0 + 1.0 / 1_048_576.0); // 2^-24 (1 + 2^-20)
const BF16_REL: f64 = 1.0 / 256.0 + 1.0 / 8_388_608.0; // 2^-8 + 2^-23

fn weights(rng: &mut Rng, n: usize, k: usize) -> Vec<f32> {
    let mut w = vec![0f32; n * k];
    for r in 0..n {
        let mag = [0.01f32, 0.2, 1.5][r % 3];
        for c in 0..k {
            w[r * k + c] = if n > 2 && r == 2 {
                0.0
            } else {
                rng.normalish(mag)
            };
        }
    }
    w
}

fn fp8_case(m: usize, n: usize, k: usize, ub: Option<f32>, seed: u64) {
    let mut rng = Rng::new(seed);
    let x = activations(&mut rng, m, k);
    let w = Fp8Rows::quantize(&weights(&mut rng, n, k), k, None).unwrap();
    let cpu = CpuGemm::new();
    let xq = cpu.quantize_activations(&x, m, k, ub).unwrap();
    let wd = cpu.upload_fp8(&w).unwrap();
    let mut y32 = vec![0f32; m * n];
    let mut y16 = vec![0u16; m * n];
    cpu.fp8_gemm(&xq, &wd, OutputMut::F32(&mut y32)).unwrap();
    cpu.fp8_gemm(&xq, &wd, OutputMut::Bf16(&mut y16)).unwrap();
    let (y64, _) = fp8_ref_f64(xq.codes(), xq.scales(), w.codes(), w.scales(), m, n, k);
    for i in 0..m * n {
        let r = y64[i];
        let e32 = (f64::from(y32[i]) - r).abs();
        assert!(
            e32 <= F32_REL * r.abs(),
            "f32 [{i}] {} vs {r} (m={m} n={n} k={k})",
            y32[i]
        );
        let e16 = (f64::from(bf16_bits_to_f32(y16[i])) - r).abs();
        assert!(
            e16 <= BF16_REL * r.abs() + 1e-38,
            "bf16 [{i}] vs {r} (m={m} n={n} k={k})"
        );
        assert!(y32[i].is_finite());
    }
    // linear_fp8 is quantize + GEMM.
    let mut y2 = vec![0f32; m * n];
    linear_fp8(&cpu, &x, m, &wd, ub, OutputMut::F32(&mut y2)).unwrap();
    assert_eq!(y2, y32);
}

#[test]
fn fp8_gemm_matches_f64_small_odd_shapes() {
    for (i, &(m, n, k)) in [
        (1, 1, 1),
        (1, 7, 16),
        (3, 5, 40),
        (17, 130, 200),
        (5, 9, 33),
    ]
    .iter()
    .enumerate()
    {
        fp8_case(m, n, k, None, 10 + i as u64);
    }
}

#[test]
fn fp8_gemm_matches_f64_with_upper_bound() {
    // ub = 1200 (Meta's FP8 checkpoints) clips the 40x rows' outliers: their values saturate to
    // ±448 codes and the product is still exact.
    fp8_case(8, 33, 256, Some(1200.0), 21);
    fp8_case(8, 33, 256, Some(0.5), 22);
}

#[test]
fn fp8_gemm_matches_f64_decode_shape() {
    // One Llama-8B-like slice: M = 16 decode tokens, K = 4096.
    fp8_case(16, 96, 4096, None, 31);
}

#[test]
fn exact_dot_at_full_scale() {
    // All codes ±448 over K = 4096: each product is 200704 and the sum is exactly representable;
    // a f32 accumulation would be exact here too, so also check a cancellation case where f32
    // would lose everything: 448·448 · (K/2 pairs of +1, −1) + one tiny product.
    let k = 4096;
    let mut a = vec![0x7Eu8; k]; // +448
    let mut b = vec![0x7Eu8; k];
    for c in (1..k).step_by(2) {
        b[c] = 0xFE; // −448
    }
    a[k - 1] = 0x01; // 2^-9
    b[k - 1] = 0x01; // 2^-9: last product 2^-18 (and its −448² partner is gone)
    let x = Fp8Rows::new(1, k, a, vec![1.0]).unwrap();
    let w = Fp8Rows::new(1, k, b, vec![1.0]).unwrap();
    let cpu = CpuGemm::new();
    let wd = cpu.upload_fp8(&w).unwrap();
    let mut y = [0f32];
    cpu.fp8_gemm(&x, &wd, OutputMut::F32(&mut y)).unwrap();
    // pairs 0..k-2: (k/2 − 1) pairs cancel; element k−2 is +448², element k−1 is 2^-18.
    let expected = 200_704.0f64 + 2f64.powi(-18);
    assert_eq!(f64::from(y[0]), f64::from(expected as f32));
    let y64 = qforge_kernels::cpu::fp8_gemm_f64(&x, &w).unwrap();
    assert_eq!(y64[0], expected, "the f64 dot product must be exact");
    assert_eq!(EXACT_K_MAX, 171_196);
}

#[test]
fn activation_quantization_is_quantize_fp8_rowwise() {
    let mut rng = Rng::new(5);
    let (m, k) = (9, 300);
    let x = activations(&mut rng, m, k);
    let xf: Vec<f32> = x.iter().map(|&b| bf16_bits_to_f32(b)).collect();
    for ub in [None, Some(1200.0f32), Some(0.25)] {
        let got = CpuGemm::new().quantize_activations(&x, m, k, ub).unwrap();
        let mut q = vec![0u8; m * k];
        let mut s = vec![0f32; m];
        let opts = qforge_codecs::fp8::Fp8Options {
            upper_bound: ub,
            ..Default::default()
        };
        qforge_codecs::fp8::quantize_fp8_rowwise(&xf, k, &mut q, &mut s, &opts).unwrap();
        assert_eq!(got.codes(), &q[..]);
        assert_eq!(got.scales(), &s[..]);
        // The all-zero row gets the minimum scale and zero codes; no negative zero anywhere.
        assert_eq!(got.scales()[1], qforge_codecs::fp8::MIN_ROW_SCALE);
        assert!(got.codes().iter().all(|&c| c != 0x80));
    }
}

#[test]
fn w4a16_matches_f64() {
    let mut rng = Rng::new(77);
    for &(m, n, k) in &[(1usize, 5usize, 128usize), (4, 33, 512), (16, 64, 1024)] {
        let w = weights(&mut rng, n, k);
        let t = quantize_int4(&w, k, &Int4Config::default()).unwrap();
        let p = pack_compressed_tensors(&t).unwrap();
        let rows = Int4Rows::from_compressed_tensors(&p).unwrap();
        let wf = dequantize_compressed_tensors(&p).unwrap();
        let x = activations(&mut rng, m, k);
        let cpu = CpuGemm::new();
        let wd = cpu.upload_int4(&rows).unwrap();
        let mut y = vec![0f32; m * n];
        cpu.w4a16_gemm(&x, m, &wd, OutputMut::F32(&mut y)).unwrap();
        for i in 0..m {
            for j in 0..n {
                let (mut s, mut a) = (0f64, 0f64);
                for c in 0..k {
                    let p = f64::from(bf16_bits_to_f32(x[i * k + c])) * f64::from(wf[j * k + c]);
                    s += p;
                    a += p.abs();
                }
                let e = (f64::from(y[i * n + j]) - s).abs();
                assert!(
                    e <= F32_REL * s.abs() + a * 2f64.powi(-50),
                    "w4a16 ({i},{j}) {} vs {s}",
                    y[i * n + j]
                );
            }
        }
    }
}

#[test]
fn same_bits_for_any_thread_count() {
    let mut rng = Rng::new(9);
    let (m, n, k) = (7, 50, 320);
    let x = activations(&mut rng, m, k);
    let w = Fp8Rows::quantize(&weights(&mut rng, n, k), k, None).unwrap();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let cpu = CpuGemm::new();
            let xq = cpu.quantize_activations(&x, m, k, None).unwrap();
            let wd = cpu.upload_fp8(&w).unwrap();
            let mut y = vec![0u16; m * n];
            cpu.fp8_gemm(&xq, &wd, OutputMut::Bf16(&mut y)).unwrap();
            y
        })
    };
    assert_eq!(run(1), run(3));
}

#[test]
fn shape_and_input_errors() {
    let cpu = CpuGemm::new();
    let w = cpu
        .upload_fp8(&Fp8Rows::new(2, 16, vec![0; 32], vec![1.0; 2]).unwrap())
        .unwrap();
    assert_eq!(w.backend(), Backend::Cpu);
    let x = Fp8Rows::new(1, 32, vec![0; 32], vec![1.0]).unwrap();
    let mut y = [0f32; 2];
    assert!(matches!(
        cpu.fp8_gemm(&x, &w, OutputMut::F32(&mut y)),
        Err(Error::ShapeMismatch {
            left: 32,
            right: 16,
            ..
        })
    ));
    let x = Fp8Rows::new(1, 16, vec![0; 16], vec![1.0]).unwrap();
    let mut y3 = [0f32; 3];
    assert!(matches!(
        cpu.fp8_gemm(&x, &w, OutputMut::F32(&mut y3)),
        Err(Error::BufferLength {
            expected: 2,
            got: 3,
            ..
        })
    ));
    assert!(matches!(
        Fp8Rows::new(2, 16, vec![0; 31], vec![1.0; 2]),
        Err(Error::BufferLength {
            expected: 32,
            got: 31,
            ..
        })
    ));
    // NaN activations are rejected by the CPU quantizer.
    let nan = [qforge_codecs::float::f32_to_bf16_bits(f32::NAN); 4];
    assert!(matches!(
        cpu.quantize_activations(&nan, 1, 4, None),
        Err(Error::Quantize(qforge_codecs::Error::NonFinite {
            row: 0,
            col: 0
        }))
    ));
    assert!(matches!(
        cpu.quantize_activations(&[0; 4], 1, 4, Some(-1.0)),
        Err(Error::Quantize(
            qforge_codecs::Error::InvalidParameter { .. }
        ))
    ));
    assert!(matches!(
        Int4Rows::new(1, 12, 8, vec![0; 1], vec![0; 1]),
        Err(Error::InvalidParameter { name: "k", .. })
    ));
    assert!(matches!(
        Int4Rows::new(1, 16, 12, vec![0; 2], vec![0; 1]),
        Err(Error::InvalidParameter { name: "group", .. })
    ));
}

#[test]
fn every_cu_file_is_embedded() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cuda");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| {
            std::path::Path::new(n)
                .extension()
                .is_some_and(|e| e == "cu")
        })
        .collect();
    files.sort();
    let mut embedded: Vec<String> = qforge_kernels::sources::SOURCES
        .iter()
        .map(|s| s.name.to_string())
        .collect();
    embedded.sort();
    assert_eq!(files, embedded);
    for s in qforge_kernels::sources::SOURCES {
        for k in s.kernels {
            assert!(s.code.contains(k), "{} does not define {k}", s.name);
        }
        assert!(
            !s.code.contains("#include"),
            "{} must stay header-free",
            s.name
        );
    }
}
