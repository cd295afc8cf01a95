//! Killing `qforge convert` with SIGKILL at random points never leaves a partial output at the
//! destination, and `--resume` then finishes with bytes identical to an uninterrupted run.

use std::path::Path;
use std::process::Command;

#[path = "support/model.rs"]
mod model;
use model::{files, make_model, MEDIUM};

const QFORGE: &str = env!("CARGO_BIN_EXE_qforge");

fn convert(model: &Path, out: &Path, resume: bool) -> Command {
    let mut c = Command::new(QFORGE);
    c.args(["convert"]).arg(model).arg(out).args([
        "--to",
        "hf",
        "--dtype",
        "f32",
        "--shard-size",
        "8MB",
    ]);
    if resume {
        c.arg("--resume");
    }
    c.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    c
}

/// The destination either does not exist or is complete (manifest lists every file, hashes match).
fn check_destination(out: &Path) {
    if !out.exists() {
        return;
    }
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.join("manifest.json")).expect("complete output has a manifest"),
    )
    .unwrap();
    for f in manifest["files"].as_array().unwrap() {
        let bytes = std::fs::read(out.join(f["path"].as_str().unwrap())).unwrap();
        use sha2::Digest;
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&bytes)),
            f["sha256"].as_str().unwrap()
        );
    }
}

#[test]
fn sigkill_then_resume_is_byte_identical() {
    let root = tempfile::tempdir().unwrap();
    let model = root.path().join("model");
    make_model(&model, MEDIUM);
    let reference = root.path().join("reference");
    assert!(convert(&model, &reference, false)
        .status()
        .unwrap()
        .success());
    let full = model::bytes_under(&[&reference]);
    let want = files(&reference);
    assert!(
        want.keys().filter(|k| k.ends_with(".safetensors")).count() > 4,
        "need several shards to interrupt"
    );

    let out = root.path().join("out");
    let mut seed = 12345u64;
    let mut kills = 0;
    for attempt in 0..40 {
        let mut child = convert(&model, &out, attempt > 0).spawn().unwrap();
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        // Kill once it has written somewhere in the first 90% of what a full run still has to
        // write (an amount of work, not a time: a busy machine does not move the kill point).
        let staging = root.path().join(".out.qforge-partial");
        let have = model::bytes_under(&[&out, &staging]);
        let frac = 0.9 * ((seed >> 33) as f64 / f64::from(u32::MAX));
        let target = have + (full.saturating_sub(have) as f64 * frac) as u64;
        if model::kill_after_bytes(&mut child, &[&out, &staging], target.max(have + 1)) {
            kills += 1;
        }
        check_destination(&out);
        if out.exists() {
            break;
        }
    }
    if !out.exists() {
        assert!(convert(&model, &out, true).status().unwrap().success());
    }
    assert!(kills >= 1, "no run was interrupted");
    eprintln!("{kills} SIGKILLs before the output completed");
    assert_eq!(
        files(&out),
        want,
        "resumed output differs from an uninterrupted run"
    );
    let staging = root.path().join(".out.qforge-partial");
    assert!(!staging.exists(), "staging directory left behind");
}

#[test]
fn output_is_independent_of_thread_count() {
    let root = tempfile::tempdir().unwrap();
    let model = root.path().join("model");
    make_model(&model, MEDIUM);
    let a = root.path().join("a");
    let b = root.path().join("b");
    assert!(convert(&model, &a, false)
        .env("RAYON_NUM_THREADS", "1")
        .status()
        .unwrap()
        .success());
    assert!(convert(&model, &b, false)
        .env("RAYON_NUM_THREADS", "2")
        .status()
        .unwrap()
        .success());
    assert_eq!(files(&a), files(&b));
}

#[test]
fn existing_output_is_refused_without_overwrite() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("exists");
    std::fs::create_dir(&out).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/hf");
    let o = convert(&fixture, &out, false)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("already exists") && err.contains("--overwrite"),
        "{err}"
    );
}
