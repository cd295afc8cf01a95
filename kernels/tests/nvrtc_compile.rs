//! Every kernel source compiles with NVRTC for sm_89 and sm_90a, and for the virtual
//! architectures the CUDA backend uses at run time (no GPU needed).
//!
//! Runs when `QFORGE_CUDA_HOME` is set (by `eval "$(scripts/cuda-env.sh)"`, which also puts the
//! wheel's `libnvrtc.so.13` on `LD_LIBRARY_PATH`, as `scripts/test.sh` does); otherwise the own
//! harness (libtest-mimic, `harness = false`) reports the test as ignored, with the reason, in the
//! runner's output. With the variable set, a missing NVRTC or any compile error fails the test
//! with NVRTC's log.
//! A real-architecture target (`sm_*`) makes NVRTC run ptxas too, so register allocation and
//! instruction availability are checked, not only the front end.
use libtest_mimic::{Arguments, Completion, Trial};
use qforge_kernels::cuda::{compile, nvrtc_arch, nvrtc_present};
use qforge_kernels::sources::SOURCES;

fn main() {
    let args = Arguments::from_args();
    let trials = vec![Trial::ignorable_test(
        "every_kernel_compiles_with_nvrtc",
        || Ok(every_kernel_compiles_with_nvrtc()),
    )];
    libtest_mimic::run(&args, trials).exit();
}

fn every_kernel_compiles_with_nvrtc() -> Completion {
    let Some(home) = std::env::var_os("QFORGE_CUDA_HOME") else {
        return Completion::ignored_with(
            "QFORGE_CUDA_HOME is not set (eval \"$(scripts/cuda-env.sh)\" to run the NVRTC compile check)",
        );
    };
    assert!(
        nvrtc_present(),
        "QFORGE_CUDA_HOME={} is set but libnvrtc cannot be loaded: is its lib/ on LD_LIBRARY_PATH?",
        home.to_string_lossy()
    );
    let mut compiled = 0;
    for src in SOURCES {
        // The real targets CI checks, then the virtual ones CudaGemm::new picks at run time.
        let runtime = [nvrtc_arch(8, 9).unwrap(), nvrtc_arch(9, 0).unwrap()];
        for arch in ["sm_89", "sm_90a", runtime[0], runtime[1]] {
            let ptx = compile(src, arch).unwrap_or_else(|e| panic!("{e}"));
            let text = ptx.to_src();
            for k in src.kernels {
                assert!(
                    text.contains(&format!(".entry {k}(")),
                    "{} for {arch}: no PTX entry for {k}",
                    src.name
                );
            }
            if src.name == "fp8_gemm.cu" {
                assert!(text.contains("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32"));
                assert!(text.contains("cp.async.cg.shared.global"));
                assert!(text.contains("ldmatrix.sync.aligned.m8n8.x4.shared.b16"));
            }
            compiled += 1;
            eprintln!("nvrtc: {} -> {arch}: {} PTX bytes", src.name, text.len());
        }
    }
    assert_eq!(compiled, 4 * SOURCES.len());
    Completion::Completed
}
