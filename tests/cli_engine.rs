//! The layer-major engine from the command line (issue 21): `--device cuda` on a machine that
//! cannot run it is a one-line error (never a panic) on every forward command; prefetching and
//! a reused base forward (`verify --base-cache`) change no report byte besides the timings, and
//! the second verification against the same base runs no base forward.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const QFORGE: &str = env!("CARGO_BIN_EXE_qforge");

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/hf")
}

fn text(dir: &Path) -> PathBuf {
    // Enough for several 32-token chunks with the fixture's byte-level tokenizer.
    let p = dir.join("text.txt");
    let line = "To be, or not to be, that is the question: whether 'tis nobler in the mind. ";
    std::fs::write(&p, line.repeat(20)).unwrap();
    p
}

fn qforge(args: &[&str]) -> Output {
    Command::new(QFORGE).args(args).output().unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn device_cuda_without_a_backend_is_a_one_line_error() {
    let tmp = tempfile::tempdir().unwrap();
    let data = text(tmp.path());
    let base = fixture();
    let out = tmp.path().join("out");
    let runs: Vec<Vec<&str>> = vec![
        vec!["perplexity", s(&base), "--data", s(&data), "--ctx", "32"],
        vec![
            "verify",
            s(&base),
            s(&base),
            "--data",
            s(&data),
            "--ctx",
            "32",
        ],
        vec![
            "imatrix",
            s(&base),
            "--data",
            s(&data),
            "--ctx",
            "32",
            s(&out),
        ],
        vec![
            "calibrate",
            s(&base),
            "--data",
            s(&data),
            "--method",
            "fp8-static",
            "--samples",
            "2",
            "--seq-len",
            "16",
            s(&out),
        ],
    ];
    for args in runs {
        for dev in ["cuda", "cuda:1"] {
            let mut a = args.clone();
            a.extend(["--device", dev]);
            let o = qforge(&a);
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(1), "{a:?}: {err}");
            assert_eq!(err.trim_end().lines().count(), 1, "{a:?}: one line: {err}");
            assert!(
                err.contains(&format!(
                    "--device {}",
                    if dev == "cuda" { "cuda:0" } else { dev }
                )),
                "{err}"
            );
            assert!(!err.contains("panicked"), "{err}");
            assert!(!out.exists(), "{a:?} wrote an output");
        }
    }
    // A device that is not one is a usage error.
    let o = qforge(&[
        "perplexity",
        s(&base),
        "--data",
        s(&data),
        "--device",
        "gpu",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cpu, cuda or cuda:N"));
}

/// The report with its timing fields (`seconds`, `tokens_per_second`) removed.
fn untimed(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.contains("\"seconds\"") && !l.contains("\"tokens_per_second\""))
        .collect::<Vec<_>>()
        .join("\n")
}

fn verify(base: &Path, quant: &Path, data: &Path, report: &Path, extra: &[&str]) -> String {
    let mut a = vec![
        "verify",
        s(base),
        s(quant),
        "--data",
        s(data),
        "--ctx",
        "32",
        "--chunks",
        "4",
        "--batch-chunks",
        "3",
        "--report",
        s(report),
    ];
    a.extend(extra);
    let o = qforge(&a);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(0), "{a:?}: {err}");
    err
}

#[test]
fn reused_base_and_prefetch_change_no_report_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let data = text(tmp.path());
    let base = fixture();
    let mut candidates = Vec::new();
    for scheme in ["fp8-rowwise", "int8-g32"] {
        let q = tmp.path().join(scheme);
        let o = qforge(&["quantize", s(&base), s(&q), "--scheme", scheme, "--quiet"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        candidates.push(q);
    }
    let cache = tmp.path().join("base-cache");
    for (i, q) in candidates.iter().enumerate() {
        let plain = tmp.path().join(format!("{i}-plain.json"));
        let err = verify(&base, q, &data, &plain, &["--no-prefetch"]);
        assert!(err.contains("base forward: computed in"), "{err}");
        let prefetched = tmp.path().join(format!("{i}-prefetch.json"));
        verify(&base, q, &data, &prefetched, &[]);
        assert_eq!(
            untimed(&plain),
            untimed(&prefetched),
            "prefetch changed the report"
        );

        let cached = tmp.path().join(format!("{i}-cached.json"));
        let err = verify(&base, q, &data, &cached, &["--base-cache", s(&cache)]);
        if i == 0 {
            // the first candidate computes the base and stores it
            assert!(err.contains("stored in"), "{err}");
        } else {
            // every later one reads it back: no base forward runs
            assert!(err.contains("(no base forward)"), "{err}");
        }
        assert_eq!(
            untimed(&plain),
            untimed(&cached),
            "the cache changed the report"
        );
        // once stored, always reused
        let again = tmp.path().join(format!("{i}-again.json"));
        let err = verify(&base, q, &data, &again, &["--base-cache", s(&cache)]);
        assert!(err.contains("(no base forward)"), "{err}");
        assert_eq!(untimed(&plain), untimed(&again));
    }
    // one entry, complete (no staging directory left behind)
    let entries: Vec<_> = std::fs::read_dir(&cache).unwrap().collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    // another protocol (ctx) is another entry, not a wrong hit
    let other = tmp.path().join("ctx16.json");
    let o = qforge(&[
        "verify",
        s(&base),
        s(&candidates[0]),
        "--data",
        s(&data),
        "--ctx",
        "16",
        "--chunks",
        "4",
        "--report",
        s(&other),
        "--base-cache",
        s(&cache),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.contains("stored in"), "{err}");
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 2);
    // a damaged entry is ignored and rewritten
    for e in std::fs::read_dir(&cache).unwrap() {
        let f = e.unwrap().path().join("logits.f32");
        let len = std::fs::metadata(&f).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&f)
            .unwrap()
            .set_len(len - 4)
            .unwrap();
    }
    let redo = tmp.path().join("redo.json");
    let err = verify(
        &base,
        &candidates[1],
        &data,
        &redo,
        &["--base-cache", s(&cache)],
    );
    assert!(err.contains("stored in"), "{err}");
    assert_eq!(untimed(&redo), untimed(&tmp.path().join("1-plain.json")));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&redo).unwrap()).unwrap();
    assert!(v["result"]["kld_mean"].as_f64().unwrap() > 0.0);
    // a modified entry (same size, one byte changed) is an error, not other figures
    for e in std::fs::read_dir(&cache).unwrap() {
        let f = e.unwrap().path().join("hidden.f32");
        let mut b = std::fs::read(&f).unwrap();
        b[100] ^= 0x40;
        std::fs::write(&f, b).unwrap();
    }
    let bad = tmp.path().join("bad.json");
    let o = qforge(&[
        "verify",
        s(&base),
        s(&candidates[0]),
        "--data",
        s(&data),
        "--ctx",
        "32",
        "--chunks",
        "4",
        "--batch-chunks",
        "3",
        "--report",
        s(&bad),
        "--base-cache",
        s(&cache),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("hidden.f32") && err.contains("was modified"),
        "{err}"
    );
    assert!(!bad.exists());
}

#[test]
fn pipeline_runs_the_base_forward_once_for_its_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    text(tmp.path());
    let recipe = tmp.path().join("recipe.toml");
    std::fs::write(
        &recipe,
        format!(
            r#"
[input]
model = "{}"
[output]
dir = "out"
[[quantize]]
name = "fp8"
scheme = "fp8-rowwise"
[[quantize]]
name = "i8"
scheme = "int8-g32"
[verify]
data = "text.txt"
ctx = 32
chunks = 3
"#,
            fixture().display()
        ),
    )
    .unwrap();
    let o = qforge(&["pipeline", s(&recipe), "--json", "-v"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    // -v logs each verification's base origin: computed and stored once, then reused
    assert_eq!(err.matches("base forward: Stored(").count(), 1, "{err}");
    assert_eq!(err.matches("base forward: Cached(").count(), 1, "{err}");
    assert_eq!(err.matches("base forward: Computed").count(), 0, "{err}");
    // the stored base does not outlive the run
    let out = tmp.path().join("out");
    assert!(out.join("report.json").is_file());
    assert!(!out.join(".verify-base-cache").exists());
}
