//! `--ggml-cpu-ops` (llama.cpp's CPU norm, RoPE, SwiGLU and flash attention; bit-level peer
//! check in verify/tests/ggml_peer.rs) from the command line: the same bits for any thread
//! count, and within f32 rounding noise of the plain forward with `--kv-f16` (no activation
//! quantization here, so last-bit differences stay last-bit).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const QFORGE: &str = env!("CARGO_BIN_EXE_qforge");

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/hf")
}

fn ppl(data: &Path, extra: &[&str]) -> f64 {
    let model = fixture();
    let mut a = vec![
        "perplexity",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--ctx",
        "96",
        "--json",
        "--quiet",
    ];
    a.extend_from_slice(extra);
    let o = Command::new(QFORGE).args(&a).output().unwrap();
    assert!(
        o.status.success(),
        "{a:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v["ppl"].as_f64().unwrap()
}

#[test]
fn ggml_cpu_ops_is_thread_count_independent_and_close_to_the_plain_forward() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("text.txt");
    let line = "To be, or not to be, that is the question: whether 'tis nobler in the mind. ";
    std::fs::write(&data, line.repeat(20)).unwrap();
    let one = ppl(&data, &["--ggml-cpu-ops", "--threads", "1"]);
    let two = ppl(&data, &["--ggml-cpu-ops", "--threads", "2"]);
    let three = ppl(&data, &["--ggml-cpu-ops", "--threads", "3"]);
    assert_eq!(one.to_bits(), two.to_bits(), "1 vs 2 threads: {one} {two}");
    assert_eq!(
        one.to_bits(),
        three.to_bits(),
        "1 vs 3 threads: {one} {three}"
    );
    let plain = ppl(&data, &["--kv-f16", "--threads", "2"]);
    let rel = (one / plain - 1.0).abs();
    assert!(
        rel < 1e-4,
        "--ggml-cpu-ops {one} vs --kv-f16 {plain}: {rel:e}"
    );
}
