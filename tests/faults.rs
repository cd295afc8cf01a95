//! Faults injected into the built `qforge` binary: random SIGKILLs followed by `--resume`, a
//! full disk (a file-size limit, so writes fail with EFBIG), a read-only output directory and
//! an unreadable input. Each ends in either a byte-identical output or a clear one-line error
//! with nothing at the destination, and the input is hashed before and after every fault.
//!
//! The commands are a table ([`JOBS`]): a new command (e.g. `qforge quantize`) is one line.

#[path = "support/model.rs"]
mod model;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use model::{bytes_under, files, fill, hashes, kill_after_bytes, make_model, remove, MEDIUM};

const QFORGE: &str = env!("CARGO_BIN_EXE_qforge");

/// A resumable command: its arguments (`{in}`, `{out}` filled in) and its resume flag.
struct Job {
    name: &'static str,
    args: &'static [&'static str],
    resume: &'static str,
}

/// Every command the fault tests run. Add `qforge quantize` lines here.
const JOBS: &[Job] = &[
    Job {
        name: "convert hf f32",
        args: &[
            "convert",
            "{in}",
            "{out}",
            "--to",
            "hf",
            "--dtype",
            "f32",
            "--shard-size",
            "8MB",
        ],
        resume: "--resume",
    },
    Job {
        name: "convert meta mp2",
        args: &[
            "convert", "{in}", "{out}", "--to", "meta", "--mp", "2", "--dtype", "f32",
        ],
        resume: "--resume",
    },
    Job {
        name: "quantize fp8-rowwise",
        args: &[
            "quantize",
            "{in}",
            "{out}",
            "--scheme",
            "fp8-rowwise",
            "--shard-size",
            "8MB",
        ],
        resume: "--resume",
    },
    Job {
        // a single-file output (AtomicFile): a failed or killed run leaves nothing at the
        // destination; a rerun starts the file again
        name: "quantize gguf q8_0",
        args: &["quantize", "{in}", "{out}", "--scheme", "gguf:q8_0"],
        resume: "--resume",
    },
];

/// SIGKILLs per job (`QFORGE_FAULT_KILLS` overrides).
fn kills() -> usize {
    std::env::var("QFORGE_FAULT_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

fn command(job: &Job, input: &Path, output: &Path, resume: bool) -> Command {
    let mut c = Command::new(QFORGE);
    c.args(fill(job.args, input, output));
    if resume {
        c.arg(job.resume);
    }
    c.stdout(Stdio::null()).stderr(Stdio::piped());
    c
}

fn staging(out: &Path) -> std::path::PathBuf {
    let name = out.file_name().unwrap().to_string_lossy();
    out.with_file_name(format!(".{name}.qforge-partial"))
}

fn run_ok(mut c: Command) {
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The destination either does not exist or is complete (manifest lists every file, hashes
/// match).
fn check_destination(out: &Path) {
    if !out.exists() {
        return;
    }
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.join("manifest.json")).expect("complete output has a manifest"),
    )
    .unwrap();
    use sha2::Digest;
    for f in manifest["files"].as_array().unwrap() {
        let bytes = std::fs::read(out.join(f["path"].as_str().unwrap())).unwrap();
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&bytes)),
            f["sha256"].as_str().unwrap()
        );
    }
}

/// One line on stderr, naming what failed.
fn one_line_error(o: &Output, want: &[&str]) -> String {
    assert!(!o.status.success(), "expected a failure");
    let err = String::from_utf8_lossy(&o.stderr).trim().to_owned();
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    for w in want {
        assert!(err.contains(w), "{err:?} does not mention {w:?}");
    }
    err
}

#[test]
fn random_sigkills_then_resume_are_byte_identical() {
    let root = tempfile::tempdir().unwrap();
    let input = root.path().join("model");
    make_model(&input, MEDIUM);
    let before = hashes(&input);
    for job in JOBS {
        let reference = root.path().join("reference");
        run_ok(command(job, &input, &reference, false));
        let full = bytes_under(&[&reference]);
        let want = files(&reference);
        remove(&reference);

        let out = root.path().join("out");
        let mut seed = 0x5EED_0000 + job.name.len() as u64;
        let mut interrupted = 0;
        for _ in 0..kills() {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            // a fresh run killed once it has written somewhere in the first 90% of a full
            // run's bytes (an amount of work, not a time: see kill_after_bytes)
            let mut child = command(job, &input, &out, false).spawn().unwrap();
            let target = (full as f64 * 0.9 * ((seed >> 33) as f64 / f64::from(u32::MAX))) as u64;
            if kill_after_bytes(&mut child, &[&out, &staging(&out)], target.max(1)) {
                interrupted += 1;
            }
            check_destination(&out);
            // then --resume finishes what the killed run left
            if !out.exists() {
                run_ok(command(job, &input, &out, true));
            }
            assert_eq!(files(&out), want, "{}: resumed output differs", job.name);
            assert!(!staging(&out).exists(), "{}: staging left behind", job.name);
            remove(&out);
            assert_eq!(hashes(&input), before, "{}: input modified", job.name);
        }
        eprintln!(
            "{}: {interrupted} of {} runs killed mid-way",
            job.name,
            kills()
        );
        assert!(
            interrupted * 2 >= kills(),
            "{}: only {interrupted} of {} kills landed before the end (the kill point is a byte \
             count, so the test thread was starved of CPU while the child wrote the rest)",
            job.name,
            kills()
        );
    }
}

/// A recipe for the pipeline fault test: conversion, three quantized artifacts (HF FP8 and INT4,
/// GGUF Q8_0) and their verification.
fn pipeline_recipe(dir: &Path, input: &Path) -> std::path::PathBuf {
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/hf");
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tiny.join(f), input.join(f)).unwrap();
    }
    std::fs::write(
        dir.join("eval.txt"),
        "the quick brown fox jumps over the lazy dog. ".repeat(200),
    )
    .unwrap();
    let p = dir.join("recipe.toml");
    std::fs::write(
        &p,
        format!(
            "[input]\nmodel = \"{}\"\n[output]\ndir = \"out\"\n\
             [convert]\ndtype = \"f32\"\nshard_size = \"8MB\"\n\
             [[quantize]]\nname = \"fp8\"\nscheme = \"fp8-rowwise\"\nshard_size = \"8MB\"\n\
             [[quantize]]\nname = \"w4\"\nscheme = \"int4-g64\"\n\
             [[quantize]]\nname = \"q8\"\nscheme = \"gguf:q8_0\"\n\
             [verify]\ndata = \"eval.txt\"\nctx = 64\nchunks = 2\nmax_kld = 1000.0\n",
            input.display()
        ),
    )
    .unwrap();
    p
}

/// Steps recorded as done in a pipeline's state file.
fn pipeline_done_steps(out: &Path) -> Vec<String> {
    let Ok(b) = std::fs::read(out.join(".qforge-pipeline-state.json")) else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
    v["steps"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, s)| s["status"] == "done")
        .map(|(k, _)| k.clone())
        .collect()
}

#[test]
fn pipeline_killed_at_any_step_resumes_without_redoing_finished_steps() {
    let root = tempfile::tempdir().unwrap();
    let input = root.path().join("model");
    make_model(&input, MEDIUM);
    let recipe = pipeline_recipe(root.path(), &input);
    let before = hashes(&input);
    let out = root.path().join("out");
    let pipeline = || {
        let mut c = Command::new(QFORGE);
        c.arg("pipeline").arg(&recipe);
        c.stdout(Stdio::null()).stderr(Stdio::piped());
        c
    };
    let started = std::time::Instant::now();
    run_ok(pipeline());
    let full = started.elapsed();
    // Every artifact and the report; the state file is bookkeeping (it records the sizes and
    // modification times of single-file artifacts, which differ from run to run).
    let outputs = |out: &Path| {
        let mut h = hashes(out);
        h.remove(".qforge-pipeline-state.json");
        h
    };
    let want = outputs(&out);
    std::fs::remove_dir_all(&out).unwrap();

    let kills = kills().min(5);
    let mut seed = 0x91BE_11E5u64;
    let mut interrupted = 0;
    let mut skipped_total = 0;
    for _ in 0..kills {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        // Still a wall-clock kill point (a byte count put every kill of the first seeds inside
        // the first step, where no finished step can be kept).
        let mut child = pipeline().spawn().unwrap();
        std::thread::sleep(full.mul_f64(0.95 * ((seed >> 33) as f64 / f64::from(u32::MAX))));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            interrupted += 1;
        }
        child.wait().unwrap();
        // every artifact is absent or complete
        for a in ["base", "fp8", "w4"] {
            check_destination(&out.join(a));
        }
        let done = pipeline_done_steps(&out);
        // the rerun finishes the rest and redoes none of the finished steps
        let o = pipeline().output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let err = String::from_utf8_lossy(&o.stderr);
        for step in &done {
            assert!(
                err.contains(&format!("{step}: done earlier, skipped")),
                "{step} was redone after the kill:\n{err}"
            );
            assert!(!err.contains(&format!("{step}: running")), "{err}");
        }
        skipped_total += done.len();
        let got = outputs(&out);
        let differ: Vec<&String> = want
            .keys()
            .chain(got.keys())
            .filter(|k| want.get(*k) != got.get(*k))
            .collect();
        assert!(
            differ.is_empty(),
            "resumed pipeline output differs in {differ:?}"
        );
        std::fs::remove_dir_all(&out).unwrap();
        assert_eq!(hashes(&input), before, "input modified");
    }
    eprintln!(
        "pipeline: {interrupted} of {kills} runs killed mid-way, {skipped_total} finished steps kept"
    );
    assert!(
        interrupted * 2 >= kills,
        "only {interrupted} of {kills} kills landed before the end (a wall-clock kill point: \
         the machine may have been starved of CPU while the reference run was timed)"
    );
    assert!(skipped_total > 0, "no kill landed after a finished step");
}

/// `sh` with a file-size limit and SIGXFSZ ignored, so a write past it fails with EFBIG
/// ("File too large") as on a full disk, instead of killing the process.
fn with_file_size_limit(c: &Command, blocks_512: u64) -> Command {
    let mut s = Command::new("sh");
    s.arg("-c")
        .arg(format!(
            "ulimit -f {blocks_512} && trap '' XFSZ && exec \"$0\" \"$@\""
        ))
        .arg(c.get_program())
        .args(c.get_args());
    s.stdout(Stdio::null()).stderr(Stdio::piped());
    s
}

#[test]
fn disk_full_is_a_clear_error_and_resumable() {
    let root = tempfile::tempdir().unwrap();
    let input = root.path().join("model");
    make_model(&input, MEDIUM);
    let before = hashes(&input);
    for job in JOBS {
        let reference = root.path().join("reference");
        run_ok(command(job, &input, &reference, false));
        let want = files(&reference);
        remove(&reference);

        let out = root.path().join("out");
        // 4 MiB in 512-byte blocks (dash counts 512, bash 1024: 4 or 8 MiB, below every
        // output file of the jobs)
        let o = with_file_size_limit(&command(job, &input, &out, false), 8192)
            .output()
            .unwrap();
        one_line_error(&o, &["File too large"]);
        assert!(
            !out.exists(),
            "{}: output appeared after a failed write",
            job.name
        );
        // the file being written when the write failed is deleted (its space given back); the
        // files finished before it stay in staging for --resume, each complete
        if staging(&out).is_dir() {
            let parts: Vec<String> = files(&staging(&out))
                .into_keys()
                .filter(|n| {
                    std::path::Path::new(n)
                        .extension()
                        .is_some_and(|e| e == "part")
                })
                .collect();
            assert!(
                parts.is_empty(),
                "{}: partial files left {parts:?}",
                job.name
            );
        } else {
            // a single-file output (GGUF): its partial sibling is gone
            assert!(
                !staging(&out).exists(),
                "{}: partial output file left behind",
                job.name
            );
        }
        // with space again, --resume completes to the same bytes and frees the staging space
        run_ok(command(job, &input, &out, true));
        assert_eq!(files(&out), want, "{}: resumed output differs", job.name);
        assert!(!staging(&out).exists(), "{}: staging left behind", job.name);
        remove(&out);
        assert_eq!(hashes(&input), before, "{}: input modified", job.name);
    }
}

/// Whether this process runs as root (which ignores permission bits).
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `c`, run as an unprivileged user when we are root (permission bits mean nothing to root).
fn unprivileged(c: &Command) -> Command {
    if !is_root() {
        let mut d = Command::new(c.get_program());
        d.args(c.get_args());
        d.stdout(Stdio::null()).stderr(Stdio::piped());
        return d;
    }
    let mut s = Command::new("setpriv");
    s.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(c.get_program())
        .args(c.get_args());
    s.stdout(Stdio::null()).stderr(Stdio::piped());
    s
}

fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn read_only_output_and_unreadable_input_are_one_line_errors() {
    let root = tempfile::tempdir().unwrap();
    chmod(root.path(), 0o755);
    let input = root.path().join("model");
    make_model(&input, model::SMALL);
    let before = hashes(&input);
    let job = &JOBS[0];

    // read-only output directory
    let ro = root.path().join("read-only");
    std::fs::create_dir(&ro).unwrap();
    chmod(&ro, 0o555);
    let out = ro.join("out");
    let o = unprivileged(&command(job, &input, &out, false))
        .output()
        .unwrap();
    one_line_error(&o, &["Permission denied", "read-only"]);
    assert!(!out.exists() && !staging(&out).exists());

    // unreadable input
    let weights = input.join("model.safetensors");
    chmod(&weights, 0o000);
    let out = root.path().join("out");
    let o = unprivileged(&command(job, &input, &out, false))
        .output()
        .unwrap();
    chmod(&weights, 0o644);
    one_line_error(&o, &["Permission denied", "model.safetensors"]);
    assert!(!out.exists() && !staging(&out).exists());
    assert_eq!(hashes(&input), before, "input modified");
}

#[test]
fn fault_jobs_table_is_wellformed() {
    for job in JOBS {
        assert!(
            job.args.contains(&"{in}") && job.args.contains(&"{out}"),
            "{}",
            job.name
        );
        assert!(job.resume.starts_with("--"), "{}", job.name);
    }
}
