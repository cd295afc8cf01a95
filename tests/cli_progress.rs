//! Progress (issue 19): a bar with bytes, rate and ETA when stderr is a terminal (driven here
//! under a pseudo-terminal), plain periodic lines when it is not, nothing with `--quiet`.
#![allow(unsafe_code)] // openpty: the test's pseudo-terminal

use std::io::Read;
use std::os::fd::FromRawFd;
use std::path::Path;
use std::process::{Command, Stdio};

#[path = "support/model.rs"]
mod model;

const QFORGE: &str = env!("CARGO_BIN_EXE_qforge");

/// A quantization that runs for a few seconds (K-quant search on ~60 MB of BF16).
fn job(input: &Path, out: &Path) -> Vec<String> {
    [
        "quantize",
        input.to_str().unwrap(),
        out.to_str().unwrap(),
        "--scheme",
        "gguf:q4_k_m",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// Run `args` with stderr on a pseudo-terminal; everything the terminal received.
fn under_pty(args: &[String]) -> (bool, String) {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two descriptors into the two ints; no name, termios or winsize
    let rc = unsafe {
        libc::openpty(
            &raw mut master,
            &raw mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty failed");
    // SAFETY: both descriptors were just opened and are owned here alone
    let (master, slave) = unsafe {
        (
            std::fs::File::from_raw_fd(master),
            std::fs::File::from_raw_fd(slave),
        )
    };
    let mut child = Command::new(QFORGE)
        .args(args)
        // the bar from 100 ms on (not 1 s): the job is short on a fast machine
        .env("QFORGE_PROGRESS_EVERY_MS", "100")
        .stdout(Stdio::null())
        .stderr(Stdio::from(slave))
        .spawn()
        .unwrap();
    let reader = std::thread::spawn(move || {
        let mut master = master;
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        // EIO once the child (the slave's last holder) is gone
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        all
    });
    let ok = child.wait().unwrap().success();
    let all = reader.join().unwrap();
    (ok, String::from_utf8_lossy(&all).into_owned())
}

#[test]
fn a_terminal_gets_a_bar_with_bytes_rate_and_eta() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("model");
    model::make_model(&input, model::MEDIUM);
    let (ok, screen) = under_pty(&job(&input, &tmp.path().join("a.gguf")));
    assert!(ok, "{screen}");
    assert!(screen.contains("quantize "), "{screen}");
    assert!(screen.contains("ETA"), "{screen}");
    assert!(
        screen.contains(" MiB (") && screen.contains("/s, ETA"),
        "{screen}"
    ); // bytes of a total, a rate
       // --quiet: nothing on the terminal
    let mut quiet = job(&input, &tmp.path().join("b.gguf"));
    quiet.push("--quiet".into());
    let (ok, screen) = under_pty(&quiet);
    assert!(ok);
    assert!(screen.trim().is_empty(), "{screen:?}");
}

#[test]
fn a_pipe_gets_plain_periodic_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("model");
    model::make_model(&input, model::MEDIUM);
    let o = Command::new(QFORGE)
        .args(job(&input, &tmp.path().join("a.gguf")))
        .env("QFORGE_PROGRESS_EVERY_MS", "200")
        .output()
        .unwrap();
    assert!(o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = e.lines().filter(|l| l.starts_with("quantize: ")).collect();
    assert!(!lines.is_empty(), "{e}");
    assert!(
        lines.iter().all(|l| l.contains('%') && l.contains("ETA")),
        "{e}"
    );
    assert!(!e.contains('\r') && !e.contains('\u{1b}'), "{e:?}");
}

#[test]
fn pipeline_steps_show_their_own_bar() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("model");
    model::make_model(&input, model::MEDIUM);
    let recipe = tmp.path().join("r.toml");
    std::fs::write(
        &recipe,
        format!(
            "[input]\nmodel = \"{}\"\n[output]\ndir = \"out\"\n[[quantize]]\nname = \"q\"\n\
             scheme = \"gguf:q4_k_m\"\n",
            input.display()
        ),
    )
    .unwrap();
    let args = vec!["pipeline".to_owned(), recipe.to_str().unwrap().to_owned()];
    let (ok, screen) = under_pty(&args);
    assert!(ok, "{screen}");
    // the quantize step's bar (bytes of a total, a rate, ETA), not a frozen steps counter
    assert!(
        screen.contains(" MiB (") && screen.contains("/s, ETA"),
        "{screen}"
    );
    assert!(screen.contains("step 1/1"), "{screen}");
    assert!(!screen.contains("steps ("), "{screen}");
}

#[test]
fn calibrate_prints_layer_lines_and_quiet_hides_them() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/hf");
    let text = tmp.path().join("t.txt");
    std::fs::write(
        &text,
        "the quick brown fox jumps over the lazy dog. ".repeat(50),
    )
    .unwrap();
    let run = |out: &str, quiet: bool| {
        let mut c = Command::new(QFORGE);
        c.args(["calibrate", hf.to_str().unwrap(), "--data"])
            .arg(&text)
            .args([
                "--method",
                "fp8-static",
                "--samples",
                "2",
                "--seq-len",
                "16",
            ])
            .arg("-o")
            .arg(tmp.path().join(out));
        if quiet {
            c.arg("-q");
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let loud = run("a.json", false);
    assert!(loud.contains("layer 1/2:"), "{loud}");
    // --quiet: the one-line summary of what was written, no per-layer lines
    let quiet = run("b.json", true);
    assert!(!quiet.contains("layer 1/2"), "{quiet:?}");
    assert_eq!(quiet.lines().count(), 1, "{quiet:?}");
}

#[test]
fn calibrate_on_a_terminal_rewrites_one_line_with_eta() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/hf");
    let text = tmp.path().join("t.txt");
    std::fs::write(
        &text,
        "the quick brown fox jumps over the lazy dog. ".repeat(50),
    )
    .unwrap();
    let args: Vec<String> = [
        "calibrate",
        hf.to_str().unwrap(),
        "--data",
        text.to_str().unwrap(),
        "--method",
        "fp8-static",
        "--samples",
        "2",
        "--seq-len",
        "16",
        "-o",
        tmp.path().join("c.json").to_str().unwrap(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let (ok, screen) = under_pty(&args);
    assert!(ok, "{screen}");
    // each layer rewrites the line in place (carriage return + erase), with percent and ETA
    assert!(
        screen.contains("\r\x1b[2Klayer 1/2: fp8-static done in"),
        "{screen:?}"
    );
    assert!(
        screen.contains("\r\x1b[2Klayer 2/2: fp8-static done in"),
        "{screen:?}"
    );
    assert!(
        screen.contains("50%") && screen.contains("ETA"),
        "{screen:?}"
    );
    // the scrolling "layer i/n" lines a pipe gets are not printed on a terminal
    assert!(!screen.contains("s\nlayer 2/2"), "{screen:?}");
}
