//! Peak memory follows the largest tensor, not the model (README: "peak RSS follows the largest
//! tensor"). Each command runs as a child process on a 500 MB BF16 model whose largest tensor is
//! 64 MiB; its peak resident set size comes from `wait4`'s `ru_maxrss` for that child alone
//! (a memory figure, not a time, so a busy machine cannot fail it). Mapped input pages count
//! towards RSS, so a reader that keeps every tensor's pages resident fails here. Linux carries a
//! process's high-water mark across exec (`exec_mmap` records the image it replaces, here this
//! test process's), so each figure is an upper bound: max(this process's peak at the spawn,
//! the command's own peak); the test prints its own peak too.
#![cfg(target_os = "linux")]
#![allow(unsafe_code)] // wait4(2): the one way to get one child's peak RSS

#[path = "support/model.rs"]
mod model;

use std::path::Path;
use std::process::Command;

/// hidden 1024, 12 layers, 8 heads, 2 kv heads, ffn 4096, vocab 32768: embeddings and LM head
/// 32768 × 1024 BF16 = 64 MiB each, 12 × 29 MiB of layers, 476 MiB in all.
const DIMS: model::Dims = (1024, 12, 8, 2, 4096, 32768);
const LARGEST: u64 = 32768 * 1024 * 2;

/// Run qforge with `args` and return its peak RSS in bytes (it must succeed).
fn peak_rss(args: &[&str]) -> u64 {
    let child = Command::new(env!("CARGO_BIN_EXE_qforge"))
        .args(args)
        .arg("--quiet")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn qforge");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: `rusage` is plain old data, zero is a valid value; `wait4` writes it for `pid`,
    // our own child, which has not been waited for yet (`child` is never waited on by std).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &raw mut status, 0, &raw mut usage) };
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "qforge {args:?} failed: status {status}"
    );
    std::mem::forget(child);
    // ru_maxrss is in KiB on Linux
    usage.ru_maxrss as u64 * 1024
}

fn model_bytes(dir: &Path) -> u64 {
    std::fs::metadata(dir.join("model.safetensors"))
        .unwrap()
        .len()
}

#[test]
fn peak_rss_follows_the_largest_tensor_not_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    model::make_model(&src, DIMS);
    let total = model_bytes(&src);
    assert!(total > 7 * LARGEST, "model {total} bytes");
    let s = src.to_str().unwrap();
    let out = |n: &str| tmp.path().join(n).to_str().unwrap().to_owned();
    // Budget: twice the largest tensor (its input pages plus one output copy) and 64 MiB for the
    // binary, the allocator and the writer's two 4 MiB blocks; the whole model is 7.4× larger.
    let budget = 2 * LARGEST + (64 << 20);
    let runs: [(&str, Vec<String>); 4] = [
        (
            "convert --to gguf",
            vec![
                "convert".into(),
                s.into(),
                out("a.gguf"),
                "--to".into(),
                "gguf".into(),
            ],
        ),
        (
            "convert --to meta",
            vec![
                "convert".into(),
                s.into(),
                out("meta"),
                "--to".into(),
                "meta".into(),
                "--allow-lossy".into(),
            ],
        ),
        (
            "quantize fp8-rowwise",
            vec![
                "quantize".into(),
                s.into(),
                out("fp8"),
                "--scheme".into(),
                "fp8-rowwise".into(),
            ],
        ),
        (
            "quantize gguf:q4_k_m",
            vec![
                "quantize".into(),
                s.into(),
                out("q4.gguf"),
                "--scheme".into(),
                "gguf:q4_k_m".into(),
            ],
        ),
    ];
    // SAFETY: as in `peak_rss`; RUSAGE_SELF of this process.
    let mut me: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &raw mut me) },
        0
    );
    eprintln!(
        "this test process before the runs: peak RSS {:.1} MiB (a floor for the figures below)",
        me.ru_maxrss as f64 / 1024.0
    );
    let mut report = Vec::new();
    for (what, args) in &runs {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let peak = peak_rss(&args);
        eprintln!(
            "{what}: peak RSS {:.1} MiB = {:.2}× the largest tensor ({:.2}× the model)",
            peak as f64 / f64::from(1 << 20),
            peak as f64 / LARGEST as f64,
            peak as f64 / total as f64
        );
        if peak > budget {
            report.push(format!("{what}: {peak} bytes > budget {budget}"));
        }
    }
    assert!(report.is_empty(), "{}", report.join("\n"));
}
