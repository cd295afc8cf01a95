//! The command line's surface (issue 19): flags that agree between commands, exit statuses,
//! messages and guards, driven through the binary on the committed tiny fixtures.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

#[path = "support/model.rs"]
mod model;

const QFORGE: &str = env!("CARGO_BIN_EXE_qforge");

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny")
        .join(rel)
}

fn run(args: &[&str]) -> Output {
    Command::new(QFORGE)
        .args(args)
        .env("COLUMNS", "100")
        .env_remove("CLICOLOR_FORCE")
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(args: &[&str]) -> Output {
    let o = run(args);
    assert!(o.status.success(), "qforge {args:?}: {}", stderr(&o));
    o
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A text the tiny tokenizer cuts into plenty of tokens.
fn text(dir: &Path) -> PathBuf {
    let p = dir.join("text.txt");
    std::fs::write(
        &p,
        "the quick brown fox jumps over the lazy dog. ".repeat(40),
    )
    .unwrap();
    p
}

#[test]
fn output_is_positional_or_dash_o_on_every_writing_command() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = fixture("hf");
    let gguf = fixture("gguf/tiny.gguf");
    // convert and quantize: -o as well as the positional
    let a = tmp.path().join("a");
    ok(&["convert", s(&gguf), "-o", s(&a), "--to", "hf", "-q"]);
    assert!(a.join("config.json").is_file());
    let b = tmp.path().join("b");
    ok(&[
        "quantize",
        s(&hf),
        "--output",
        s(&b),
        "--scheme",
        "fp8-rowwise",
    ]);
    assert!(b.join("config.json").is_file());
    // imatrix and calibrate: the positional as well as -o
    let t = text(tmp.path());
    let im = tmp.path().join("im.gguf");
    ok(&[
        "imatrix",
        s(&hf),
        s(&im),
        "-f",
        s(&t),
        "-c",
        "16",
        "--chunks",
        "1",
        "-t",
        "1",
        "-q",
    ]);
    assert!(im.is_file());
    let cal = tmp.path().join("cal.json");
    ok(&[
        "calibrate",
        s(&hf),
        s(&cal),
        "--method",
        "fp8-static",
        "--samples",
        "2",
        "--seq-len",
        "16",
        "-t",
        "1",
        "-f",
        s(&t),
    ]);
    assert!(cal.is_file());
    // both, or neither: bad usage
    let both = run(&["convert", s(&gguf), s(&a), "-o", s(&b), "--to", "hf"]);
    assert_eq!(both.status.code(), Some(2), "{}", stderr(&both));
    let neither = run(&["quantize", s(&hf), "--scheme", "fp8"]);
    assert_eq!(neither.status.code(), Some(2), "{}", stderr(&neither));
}

#[test]
fn quiet_and_json_on_convert_and_quantize() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = fixture("gguf/tiny.gguf");
    let a = tmp.path().join("a");
    let o = ok(&["convert", s(&gguf), s(&a), "--to", "hf", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["to"], "hf");
    let files = v["files"].as_array().unwrap();
    assert!(
        files.iter().any(|f| f["path"] == "model.safetensors"),
        "{v}"
    );
    let total: u64 = files.iter().map(|f| f["bytes"].as_u64().unwrap()).sum();
    assert_eq!(v["bytes"].as_u64(), Some(total));
    let b = tmp.path().join("b");
    let o = ok(&[
        "quantize",
        s(&fixture("hf")),
        s(&b),
        "--scheme",
        "int4-g32",
        "--quiet",
    ]);
    assert!(o.stdout.is_empty());
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
}

#[test]
fn llama_cpp_short_forms_on_perplexity() {
    let tmp = tempfile::tempdir().unwrap();
    let t = text(tmp.path());
    let o = ok(&[
        "perplexity",
        s(&fixture("hf")),
        "-f",
        s(&t),
        "-c",
        "16",
        "-t",
        "1",
        "--chunks",
        "2",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ctx"], 16);
    assert_eq!(v["chunks"], 2);
}

#[test]
fn convert_to_meta_dry_run_is_refused_as_usage() {
    let tmp = tempfile::tempdir().unwrap();
    let o = run(&[
        "convert",
        s(&fixture("hf")),
        s(&tmp.path().join("m")),
        "--to",
        "meta",
        "--dry-run",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    insta::assert_snapshot!("convert-meta-dry-run", e);
}

/// The error of a failed run, with the temporary directory's path shown as `[TMP]`.
fn error_in(dir: &Path, args: &[&str]) -> String {
    let o = Command::new(QFORGE)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
    let real = dir.canonicalize().unwrap();
    stderr(&o)
        .replace(s(&real), "[TMP]")
        .replace(s(dir), "[TMP]")
}

#[test]
fn errors_name_the_file_once_by_full_path_with_a_hint() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // a text file named .safetensors
    std::fs::write(
        dir.join("notes.safetensors"),
        "hello, this is not a model\n",
    )
    .unwrap();
    let e = error_in(dir, &["inspect", "notes.safetensors"]);
    assert!(
        e.contains("not a safetensors file") && e.contains("hint:"),
        "{e}"
    );
    assert!(e.contains("[TMP]/notes.safetensors"), "{e}");
    insta::assert_snapshot!("error-text-as-safetensors", e);
    // a lone .safetensors file, named relative to the working directory
    std::fs::copy(
        fixture("hf/model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    let e = error_in(dir, &["inspect", "model.safetensors"]);
    assert_eq!(e.matches("config.json").count(), 2, "{e}"); // the path, and the hint
    assert!(
        e.contains("[TMP]/config.json") && e.contains("hint:"),
        "{e}"
    );
    assert!(!e.contains("os error"), "{e}");
    insta::assert_snapshot!("error-lone-safetensors", e);
    // a truncated GGUF
    let full = std::fs::read(fixture("gguf/tiny.gguf")).unwrap();
    std::fs::write(dir.join("cut.gguf"), &full[..full.len() - 100]).unwrap();
    let e = error_in(dir, &["inspect", "cut.gguf"]);
    assert!(
        e.contains("truncated") && e.contains("[TMP]/cut.gguf"),
        "{e}"
    );
    // an empty --data
    std::fs::write(dir.join("empty.txt"), "").unwrap();
    let model = fixture("hf");
    let e = error_in(dir, &["perplexity", s(&model), "--data", "empty.txt"]);
    assert!(e.contains("[TMP]/empty.txt: the text is empty"), "{e}");
    assert_eq!(e.matches("empty.txt").count(), 1, "{e}");
    insta::assert_snapshot!("error-empty-data", e);
    // a missing --data: the OS error said once
    let e = error_in(dir, &["perplexity", s(&model), "--data", "nope.txt"]);
    assert_eq!(e.matches("os error").count(), 1, "{e}");
    assert!(e.contains("[TMP]/nope.txt") && e.contains("hint:"), "{e}");
    // a short text names the file too
    std::fs::write(dir.join("short.txt"), "a few words").unwrap();
    let e = error_in(dir, &["perplexity", s(&model), "--data", "short.txt"]);
    assert!(
        e.contains("[TMP]/short.txt") && e.contains("smaller --ctx"),
        "{e}"
    );
}

#[test]
fn int4_groups_suggest_what_servers_run_once() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = fixture("hf");
    // the fixture's rows are 32 (hidden) and 96 (ffn) wide: the default group 128 divides none
    let o = run(&[
        "quantize",
        s(&hf),
        s(&tmp.path().join("a")),
        "--scheme",
        "int4",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert_eq!(e.matches("does not divide").count(), 1, "{e}");
    assert!(
        e.contains("hint: use --scheme int4-g32 or --scheme int4-row"),
        "{e}"
    );
    insta::assert_snapshot!("error-int4-group", e);
    // a group servers do not run is warned about, and written
    let o = ok(&[
        "quantize",
        s(&hf),
        s(&tmp.path().join("b")),
        "--scheme",
        "int4-g16",
    ]);
    assert!(
        stderr(&o).contains("warning: group 16 is not one vLLM's"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn guards_requantize_extension_and_context() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = fixture("gguf/tiny.gguf");
    // an already quantized model (Q4_0 … Q8_0 linears) is refused without --allow-requantize
    let out = tmp.path().join("q8.gguf");
    let o = run(&["quantize", s(&gguf), s(&out), "--scheme", "gguf:q8_0"]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("already quantized") && e.contains("--allow-requantize"),
        "{e}"
    );
    assert!(e.contains("Q4_1"), "{e}");
    assert!(!out.exists());
    ok(&[
        "quantize",
        s(&gguf),
        s(&out),
        "--scheme",
        "gguf:q8_0",
        "--allow-requantize",
    ]);
    // a quantized HF output (FP8 from the float fixture) is refused too
    let fp8 = tmp.path().join("fp8");
    ok(&[
        "quantize",
        s(&fixture("hf")),
        s(&fp8),
        "--scheme",
        "fp8-rowwise",
    ]);
    let o = run(&[
        "quantize",
        s(&fp8),
        s(&tmp.path().join("x")),
        "--scheme",
        "int4-g32",
    ]);
    assert!(stderr(&o).contains("already quantized"), "{}", stderr(&o));
    // a directory output named .gguf: bad usage, nothing written
    let dir_gguf = tmp.path().join("fp8.gguf");
    let o = run(&[
        "quantize",
        s(&fixture("hf")),
        s(&dir_gguf),
        "--scheme",
        "fp8-rowwise",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(!dir_gguf.exists());
    let o = run(&["convert", s(&gguf), s(&dir_gguf), "--to", "hf"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // a GGUF file without the extension: written, with a warning
    let o = ok(&[
        "convert",
        s(&fixture("hf")),
        s(&tmp.path().join("q4dir")),
        "--to",
        "gguf",
    ]);
    assert!(
        stderr(&o).contains("does not end in .gguf"),
        "{}",
        stderr(&o)
    );
    // --ctx above the model's context (the fixture's max_position_embeddings is 8192)
    let t = text(tmp.path());
    let o = run(&["perplexity", s(&fixture("hf")), "-f", s(&t), "-c", "9000"]);
    assert!(
        stderr(&o).contains("warning: --ctx 9000 is above the model's context length 8192"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn convert_to_gguf_keeps_the_source_precision_by_default() {
    let tmp = tempfile::tempdir().unwrap();
    // the float fixture is BF16: its 2-D tensors stay BF16 (not F16), 1-D ones are F32
    let out = tmp.path().join("m.gguf");
    ok(&["convert", s(&fixture("hf")), s(&out), "--to", "gguf"]);
    let v: serde_json::Value =
        serde_json::from_slice(&ok(&["inspect", s(&out), "--json"]).stdout).unwrap();
    for t in v["tensors"].as_array().unwrap() {
        let want = if t["shape"].as_array().unwrap().len() == 1 {
            "F32"
        } else {
            "BF16"
        };
        assert_eq!(t["dtype"], want, "{t}");
    }
    // an F32 source stays F32
    let f32_hf = tmp.path().join("f32");
    ok(&[
        "convert",
        s(&fixture("hf")),
        s(&f32_hf),
        "--to",
        "hf",
        "--dtype",
        "f32",
    ]);
    let out32 = tmp.path().join("m32.gguf");
    ok(&["convert", s(&f32_hf), s(&out32), "--to", "gguf"]);
    let v: serde_json::Value =
        serde_json::from_slice(&ok(&["inspect", s(&out32), "--json"]).stdout).unwrap();
    assert!(v["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["dtype"] == "F32"));
}

#[test]
fn version_names_the_git_commit() {
    let o = ok(&["--version"]);
    let v = String::from_utf8(o.stdout).unwrap();
    let commit = v
        .trim()
        .strip_prefix(concat!("qforge ", env!("CARGO_PKG_VERSION"), " (commit "))
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{v}"));
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8(o.stdout).unwrap().trim().to_owned());
    match head {
        Some(h) if std::env::var_os("QFORGE_GIT_COMMIT").is_none() => assert_eq!(commit, h),
        _ => assert!(!commit.is_empty()),
    }
    // the LICENSE the package metadata names is there
    let license =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("LICENSE")).unwrap();
    assert!(license.contains("Apache License") && license.contains("Version 2.0"));
}

#[test]
fn ctrl_c_says_how_to_resume_and_a_rerun_says_it_starts_over() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("model");
    model::make_model(&input, model::MEDIUM);
    let out = tmp.path().join("q");
    let args = [
        "quantize",
        s(&input),
        s(&out),
        "--scheme",
        "int4-g64",
        "--shard-size",
        "8MB",
    ];
    let mut child = Command::new(QFORGE)
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let staging = tmp.path().join(".q.qforge-partial");
    let start = Instant::now();
    while !staging.exists() && start.elapsed() < Duration::from_secs(60) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("interrupted: the files finished so far are kept in"),
        "{e}"
    );
    assert!(e.contains(s(&staging)), "{e}");
    let resume = format!("continue with: qforge {} --resume", args.join(" "));
    assert!(e.contains(&resume), "{e}");
    assert!(staging.is_dir() && !out.exists());
    // a rerun without --resume says it found the interrupted run and starts over
    let o = ok(&args);
    assert!(
        stderr(&o).contains("holds an interrupted run; starting over"),
        "{}",
        stderr(&o)
    );
    assert!(out.is_dir() && !staging.exists());
}

/// One GGUF string key-value pair, encoded as in the file.
fn gguf_kv(key: &str, value: &str) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend((key.len() as u64).to_le_bytes());
    b.extend(key.as_bytes());
    b.extend(8u32.to_le_bytes()); // GGUF_TYPE_STRING
    b.extend((value.len() as u64).to_le_bytes());
    b.extend(value.as_bytes());
    b
}

#[test]
fn gguf_quantize_keeps_the_general_keys() {
    let tmp = tempfile::tempdir().unwrap();
    // tiny.gguf with two more general.* keys, inserted before the others: each is 64 bytes, so
    // the tensor data stays aligned (32) and its relative offsets are unchanged
    let src = std::fs::read(fixture("gguf/tiny.gguf")).unwrap();
    let kv = [
        gguf_kv("general.license", "apache-2.0 (a test fixture..)"),
        gguf_kv("general.organization", "qforge tests, synthetic."),
    ];
    assert!(
        kv.iter().all(|k| k.len() % 32 == 0),
        "{:?}",
        kv.iter().map(Vec::len).collect::<Vec<_>>()
    );
    let count = u64::from_le_bytes(src[16..24].try_into().unwrap());
    let mut with = src[..16].to_vec();
    with.extend((count + 2).to_le_bytes());
    for k in &kv {
        with.extend(k);
    }
    with.extend(&src[24..]);
    let input = tmp.path().join("licensed.gguf");
    std::fs::write(&input, with).unwrap();
    let out = tmp.path().join("q8.gguf");
    ok(&[
        "quantize",
        s(&input),
        s(&out),
        "--scheme",
        "gguf:q8_0",
        "--allow-requantize",
    ]);
    let v: serde_json::Value =
        serde_json::from_slice(&ok(&["inspect", s(&out), "--json"]).stdout).unwrap();
    let kv = v["metadata"]["kv"].as_array().unwrap();
    let get = |k: &str| {
        kv.iter()
            .find(|e| e["key"] == k)
            .map(|e| e["value"].clone())
    };
    assert_eq!(
        get("general.license").unwrap(),
        "apache-2.0 (a test fixture..)"
    );
    assert_eq!(
        get("general.organization").unwrap(),
        "qforge tests, synthetic."
    );
    assert!(get("general.name").is_some());
    // the file type is the new one (Q8_0 = 7), set once
    assert_eq!(get("general.file_type").unwrap(), 7);
    assert_eq!(
        kv.iter()
            .filter(|e| e["key"] == "general.file_type")
            .count(),
        1
    );
}

#[test]
fn verbose_logs_what_was_read_chosen_and_written() {
    let tmp = tempfile::tempdir().unwrap();
    let quiet = ok(&["inspect", s(&fixture("hf"))]);
    assert!(stderr(&quiet).is_empty(), "{}", stderr(&quiet));
    let o = ok(&["-v", "inspect", s(&fixture("hf"))]);
    assert!(stderr(&o).contains("read model"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("model.layers.0.mlp.up_proj.weight"));
    let out = tmp.path().join("q");
    let o = ok(&[
        "-vv",
        "quantize",
        s(&fixture("hf")),
        s(&out),
        "--scheme",
        "fp8-rowwise",
    ]);
    let e = stderr(&o);
    for want in [
        "read input",
        "model.layers.1.mlp.down_proj.weight BF16 [32, 96]",
        "chose: scheme fp8-rowwise, layout default, policy all-linear",
        "model.layers.1.mlp.down_proj -> fp8-rowwise",
        "wrote ",
        "model.safetensors",
    ] {
        assert!(e.contains(want), "{want:?} not in:\n{e}");
    }
    let o = ok(&[
        "-v",
        "convert",
        s(&fixture("hf")),
        s(&tmp.path().join("c.gguf")),
        "--to",
        "gguf",
    ]);
    assert!(
        stderr(&o).contains("chose: --to gguf, dtype kept per tensor"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn inspect_prints_no_debug_formatting_and_counts_parameters() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = fixture("gguf/tiny.gguf");
    let human = String::from_utf8(ok(&["inspect", s(&gguf)]).stdout).unwrap();
    let shown = human.replace(s(&fixture("")), "[FIXTURES]/");
    for bad in ["Some(", "None", "(Gguf", "[]", "file(s)", "{\""] {
        assert!(!shown.contains(bad), "{bad:?} in:\n{shown}");
    }
    insta::assert_snapshot!("inspect-tiny-gguf", shown);
    // a quantized model counts its logical weights, not its packed 32-bit words
    let params = |model: &Path| -> String {
        let h = String::from_utf8(ok(&["inspect", s(model)]).stdout).unwrap();
        let footer = h
            .lines()
            .find(|l| l.contains(" parameters, "))
            .unwrap_or_else(|| panic!("{h}"))
            .to_owned();
        footer.split(", ").nth(1).unwrap().to_owned()
    };
    let int4 = tmp.path().join("int4");
    ok(&[
        "quantize",
        s(&fixture("hf")),
        s(&int4),
        "--scheme",
        "int4-g32",
    ]);
    assert_eq!(params(&int4), params(&fixture("hf")));
    // --tensor: its row (and stats), no whole-model footer
    let one = String::from_utf8(
        ok(&[
            "inspect",
            s(&gguf),
            "--tensor",
            "blk.0.attn_q.weight",
            "--stats",
        ])
        .stdout,
    )
    .unwrap();
    assert!(
        one.contains("blk.0.attn_q.weight") && one.contains("absmax"),
        "{one}"
    );
    assert!(
        !one.contains(" parameters, ") && !one.contains("2-D "),
        "{one}"
    );
}

#[test]
fn gguf_to_hf_writes_generation_config() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("hf");
    ok(&[
        "convert",
        s(&fixture("gguf/tiny.gguf")),
        s(&out),
        "--to",
        "hf",
    ]);
    let g: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("generation_config.json")).unwrap())
            .unwrap();
    assert_eq!(
        g,
        serde_json::json!({"_from_model_config": true, "bos_token_id": 0, "eos_token_id": 1})
    );
}

#[test]
fn evaluation_progress_has_an_eta_and_quiet_hides_it() {
    let tmp = tempfile::tempdir().unwrap();
    let t = text(tmp.path());
    let hf = fixture("hf");
    let args = [
        "perplexity",
        s(&hf),
        "-f",
        s(&t),
        "-c",
        "16",
        "--chunks",
        "2",
    ];
    let o = ok(&args);
    let e = stderr(&o);
    // not a terminal: plain lines at most every 5 s, and always the last one
    assert!(e.contains("layer 2/2 (chunks 0..2): 100%"), "{e}");
    assert!(e.lines().all(|l| l.contains("ETA")), "{e}");
    assert!(!e.contains('\r'), "{e:?}");
    let mut q = args.to_vec();
    q.push("-q");
    assert!(stderr(&ok(&q)).is_empty());
}

#[test]
fn general_name_survives_gguf_to_hf_to_gguf_through_the_model_card() {
    let tmp = tempfile::tempdir().unwrap();
    let name = |gguf: &Path| -> serde_json::Value {
        let v: serde_json::Value =
            serde_json::from_slice(&ok(&["inspect", s(gguf), "--json"]).stdout).unwrap();
        v["metadata"]["kv"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["key"] == "general.name")
            .map_or(serde_json::Value::Null, |e| e["value"].clone())
    };
    let src = fixture("gguf/tiny.gguf");
    let want = name(&src);
    assert!(want.is_string());
    let hf = tmp.path().join("hf");
    ok(&["convert", s(&src), s(&hf), "--to", "hf"]);
    let card = std::fs::read_to_string(hf.join("README.md")).unwrap();
    assert!(card.starts_with("---\nmodel_name: "), "{card}");
    let back = tmp.path().join("back.gguf");
    ok(&["convert", s(&hf), s(&back), "--to", "gguf"]);
    assert_eq!(name(&back), want);
    // and an HF -> HF conversion carries the card over
    let hf2 = tmp.path().join("hf2");
    ok(&["convert", s(&hf), s(&hf2), "--to", "hf"]);
    assert_eq!(
        std::fs::read_to_string(hf2.join("README.md")).unwrap(),
        card
    );
}
