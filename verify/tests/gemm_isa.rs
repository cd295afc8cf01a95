//! Every GEMM kernel (`qforge_verify::gemm`) against the definition it promises: each output
//! element is the `f32` fma chain `c ← fma(x[i,p], w[j,p], c)` over `p = 0..k` in order, from
//! `+0`. Compared bit for bit, so the kernels equal each other and any thread count equals
//! any other. Shapes cross every blocking edge: ragged `MR`/`NR` tiles, k over several
//! k-blocks, an output wide enough to be packed in several slices (the LM head's path), and
//! strided operands (attention's).
//!
//! Own harness (libtest-mimic, `harness = false`): a kernel this CPU lacks (AVX-512 on most
//! desktops, AVX2 off x86) is reported `ignored` with the reason in the runner's own output,
//! never as a pass.

use libtest_mimic::{Arguments, Completion, Failed, Trial};
use qforge_verify::gemm::{matmul_t_isa, sgemm_serial, Isa};

fn data(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            // wide dynamic range, both signs: rounding differences would show
            let u = (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            u * f32::powi(2.0, ((s >> 20) % 9) as i32 - 4)
        })
        .collect()
}

/// `C[i, j] = chain over p of A(i, p)·B(p, j)` with element accessors.
fn chain(
    m: usize,
    k: usize,
    n: usize,
    a: impl Fn(usize, usize) -> f32,
    b: impl Fn(usize, usize) -> f32,
) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut c = 0f32;
            for p in 0..k {
                c = a(i, p).mul_add(b(p, j), c);
            }
            y[i * n + j] = c;
        }
    }
    y
}

fn same_bits(got: &[f32], want: &[f32], what: &str) -> Result<(), Failed> {
    if let Some(i) = (0..want.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        return Err(format!(
            "{what}: element {i} is {:e}, the fma chain gives {:e}",
            got[i], want[i]
        )
        .into());
    }
    Ok(())
}

fn kernel_is_the_fma_chain(isa: Isa) -> Result<(), Failed> {
    // (m, k, n): tiles with ragged edges for every MR/NR, k across KC = 256 blocks, the
    // LM head's slicing (n·k above 2^21 floats), tiny and degenerate shapes.
    let shapes = [
        (1, 1, 1),
        (13, 7, 33),
        (97, 300, 70),
        (130, 577, 41),
        (5, 576, 8192),
        (25, 1536, 100),
    ];
    for &(m, k, n) in &shapes {
        let x = data(m * k, 1 + m as u64);
        let w = data(n * k, 2 + n as u64);
        let want = chain(m, k, n, |i, p| x[i * k + p], |p, j| w[j * k + p]);
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .map_err(|e| Failed::from(e.to_string()))?;
            let mut y = vec![f32::NAN; m * n];
            pool.install(|| matmul_t_isa(isa, &x, m, k, &w, n, &mut y));
            same_bits(
                &y,
                &want,
                &format!("{} {m}x{k}x{n}, {threads} threads", isa.name()),
            )?;
        }
    }
    // strided operands, as attention passes them: A rows with a stride wider than k,
    // B(p, j) = kmat[j·ld + p] (keys, transposed) and B(p, j) = v[p·ld + j].
    let (m, k, n, ld) = (70, 64, 150, 200);
    let a = data(m * ld, 7);
    let kmat = data(n * ld, 8);
    let v = data(k * ld, 9);
    let want_t = chain(m, k, n, |i, p| a[i * ld + p], |p, j| kmat[j * ld + p]);
    let want_v = chain(m, k, n, |i, p| a[i * ld + p], |p, j| v[p * ld + j]);
    let mut y = vec![f32::NAN; m * n];
    // SAFETY: every (i, p) and (p, j) addressed is inside the allocations above.
    #[allow(unsafe_code)]
    unsafe {
        sgemm_serial(
            isa,
            m,
            k,
            n,
            a.as_ptr(),
            ld,
            1,
            kmat.as_ptr(),
            1,
            ld,
            y.as_mut_ptr(),
            n,
        );
    }
    same_bits(
        &y,
        &want_t,
        &format!("{} strided, B transposed", isa.name()),
    )?;
    // SAFETY: as above.
    #[allow(unsafe_code)]
    unsafe {
        sgemm_serial(
            isa,
            m,
            k,
            n,
            a.as_ptr(),
            ld,
            1,
            v.as_ptr(),
            ld,
            1,
            y.as_mut_ptr(),
            n,
        );
    }
    same_bits(&y, &want_v, &format!("{} strided, B row-major", isa.name()))
}

fn main() {
    let args = Arguments::from_args();
    let trials = [Isa::Avx512, Isa::Avx2, Isa::Scalar]
        .into_iter()
        .map(|isa| {
            let name = format!("{}_kernel_is_the_fma_chain_bit_for_bit", isa.name());
            Trial::ignorable_test(name, move || {
                if isa.available() {
                    kernel_is_the_fma_chain(isa).map(|()| Completion::Completed)
                } else {
                    Ok(Completion::ignored_with(format!(
                        "this CPU has no {}",
                        isa.name()
                    )))
                }
            })
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
