//! `qforge convert` writes byte-identical outputs whatever the thread count and run: every
//! output format (HF, GGUF F16/BF16, Meta MP2) is converted with `RAYON_NUM_THREADS=1`, `=2`,
//! and `=2` again, and the three outputs compared file by file.
//!
//! The commands are a table ([`JOBS`]): a new command (e.g. `qforge quantize`) is one line.

#[path = "support/model.rs"]
mod model;

use std::process::{Command, Stdio};

use model::{files, fill, hashes, make_model, SMALL};

const QFORGE: &str = env!("CARGO_BIN_EXE_qforge");

/// (name, arguments with `{in}`/`{out}`, output file name). Add `qforge quantize` lines here.
const JOBS: &[(&str, &[&str], &str)] = &[
    (
        "hf f32",
        &[
            "convert",
            "{in}",
            "{out}",
            "--to",
            "hf",
            "--dtype",
            "f32",
            "--shard-size",
            "2MB",
        ],
        "out",
    ),
    (
        "hf bf16",
        &["convert", "{in}", "{out}", "--to", "hf", "--dtype", "bf16"],
        "out",
    ),
    (
        "gguf f16",
        &["convert", "{in}", "{out}", "--to", "gguf", "--dtype", "f16"],
        "out.gguf",
    ),
    (
        "gguf bf16",
        &[
            "convert", "{in}", "{out}", "--to", "gguf", "--dtype", "bf16",
        ],
        "out.gguf",
    ),
    (
        "meta mp2",
        &["convert", "{in}", "{out}", "--to", "meta", "--mp", "2"],
        "out",
    ),
    (
        "quantize fp8-rowwise",
        &["quantize", "{in}", "{out}", "--scheme", "fp8-rowwise"],
        "out",
    ),
    (
        "quantize int4-row",
        &[
            "quantize", "{in}", "{out}", "--scheme", "int4-row", "--asym",
        ],
        "out",
    ),
    (
        "quantize gguf q4_k_m",
        &["quantize", "{in}", "{out}", "--scheme", "gguf:q4_k_m"],
        "out.gguf",
    ),
];

#[test]
fn outputs_are_identical_across_thread_counts_and_runs() {
    let root = tempfile::tempdir().unwrap();
    let input = root.path().join("model");
    make_model(&input, SMALL);
    let before = hashes(&input);
    for (name, args, out_name) in JOBS {
        let mut outputs = Vec::new();
        for (run, threads) in ["1", "2", "2"].into_iter().enumerate() {
            let dir = root.path().join(format!("run{run}"));
            std::fs::create_dir(&dir).unwrap();
            let out = dir.join(out_name);
            let o = Command::new(QFORGE)
                .args(fill(args, &input, &out))
                .env("RAYON_NUM_THREADS", threads)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            outputs.push(files(&dir));
            std::fs::remove_dir_all(&dir).unwrap();
        }
        assert!(!outputs[0].is_empty(), "{name}: no output");
        assert_eq!(
            outputs[0], outputs[1],
            "{name}: 1 thread vs 2 threads differ"
        );
        assert_eq!(
            outputs[1], outputs[2],
            "{name}: two runs with 2 threads differ"
        );
        assert_eq!(hashes(&input), before, "{name}: input modified");
    }
}
