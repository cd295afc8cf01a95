//! The hostile corpus (`tests/hostile/`, written by `scripts/gen_hostile.py`): every file is
//! rejected with the error class its manifest entry names and a message that names every fact
//! the generator planted (offset, declared number, global, tensor or shard name),
//! within a memory cap and a time limit, and no payload runs (the canary file it would create
//! never appears). Symbolic links leaving the model directory are made here, at test time.
#![allow(unsafe_code)] // the counting `GlobalAlloc` (support/counting_alloc.rs) is unsafe by definition

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use qforge_convert::tokenizer::Vocab;
use qforge_convert::{Checkpoint, Error};

/// Most bytes a reader may hold at once while rejecting one of these files (each is under
/// 1 MB; the bombs claim terabytes).
const MEMORY_CAP: usize = 64 << 20;
/// Most CPU time a rejection may use (debug build). CPU time of the reading thread, so a busy
/// machine cannot fail it (see `counting_alloc::Cost::check`).
const TIME_LIMIT: Duration = Duration::from_secs(10);
/// What the pickle payloads would create.
const CANARY: &str = "qforge-hostile-canary";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixture(rel: &str) -> PathBuf {
    root().join("tests/fixtures/tiny").join(rel)
}

/// A copy of fixture directory `rel` (without its expected.json) in `dir`.
fn copy_model(rel: &str, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for e in std::fs::read_dir(fixture(rel)).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "expected.json" {
            std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        }
    }
}

/// `Error` variant, and the variant of its `kind` if it has one: `Pth/ForbiddenGlobal`.
fn variant(e: &Error) -> String {
    let debug = format!("{e:?}");
    let word = |s: &str| -> String { s.chars().take_while(char::is_ascii_alphanumeric).collect() };
    let outer = word(&debug);
    match debug.find("kind: ") {
        Some(i) => format!("{outer}/{}", word(&debug[i + 6..])),
        None => outer,
    }
}

/// Open `name` the way a user would hand it to qforge, in a fresh directory under `tmp`.
fn open(name: &str, tmp: &Path) -> Result<(), Error> {
    let src = root().join("tests/hostile").join(name);
    let model = tmp.join("model");
    let place = |dir: &str, as_name: &str| {
        copy_model(dir, &model);
        std::fs::copy(&src, model.join(as_name)).unwrap();
    };
    let checkpoint = |p: &Path| -> Result<(), Error> {
        let c = Checkpoint::open(p)?;
        // accepted: every tensor must still decode, or this is a reader bug
        for t in &c.tensors {
            c.to_f32(t)?;
        }
        Ok(())
    };
    let ext = Path::new(name).extension().and_then(|e| e.to_str());
    if ext == Some("pth") {
        std::fs::create_dir_all(&model).unwrap();
        std::fs::copy(fixture("meta-mp1/params.json"), model.join("params.json")).unwrap();
        std::fs::copy(&src, model.join("consolidated.00.pth")).unwrap();
        checkpoint(&model)
    } else if ext == Some("gguf") {
        std::fs::create_dir_all(&model).unwrap();
        let p = model.join("model.gguf");
        std::fs::copy(&src, &p).unwrap();
        checkpoint(&p)
    } else if ext == Some("safetensors") {
        std::fs::create_dir_all(&model).unwrap();
        std::fs::copy(fixture("hf/config.json"), model.join("config.json")).unwrap();
        std::fs::copy(&src, model.join("model.safetensors")).unwrap();
        checkpoint(&model)
    } else if name.starts_with("index_") {
        place("hf-sharded", "model.safetensors.index.json");
        checkpoint(&model)
    } else if name.starts_with("config_") {
        place("hf", "config.json");
        checkpoint(&model)
    } else if name.starts_with("params_") {
        place("meta-mp1", "params.json");
        checkpoint(&model)
    } else if name.starts_with("tiktoken_") {
        Vocab::from_tiktoken_file(&src, &["<|begin_of_text|>"]).map(drop)
    } else if name.starts_with("tokenizer_json_") {
        std::fs::create_dir_all(&model).unwrap();
        std::fs::copy(&src, model.join("tokenizer.json")).unwrap();
        Vocab::from_tokenizer_json(&model, None).map(drop)
    } else {
        panic!("{name}: no rule says how to open this file; name it by reader")
    }
}

/// A sharded HF model whose first shard is a symbolic link to a file outside the directory.
#[cfg(unix)]
fn open_symlinked_shard(tmp: &Path) -> Result<(), Error> {
    let model = tmp.join("model");
    copy_model("hf-sharded", &model);
    let shard = "model-00001-of-00002.safetensors";
    let outside = tmp.join("outside.safetensors");
    std::fs::rename(model.join(shard), &outside).unwrap();
    std::os::unix::fs::symlink(&outside, model.join(shard)).unwrap();
    Checkpoint::open(&model).map(drop)
}

/// A sharded HF model whose shard is a symbolic link to a directory's `..`-relative file.
#[cfg(unix)]
fn open_relative_symlink(tmp: &Path) -> Result<(), Error> {
    let model = tmp.join("model");
    copy_model("hf-sharded", &model);
    let shard = "model-00002-of-00002.safetensors";
    std::fs::rename(model.join(shard), tmp.join(shard)).unwrap();
    std::os::unix::fs::symlink(Path::new("..").join(shard), model.join(shard)).unwrap();
    Checkpoint::open(&model).map(drop)
}

/// What `scripts/gen_hostile.py` planted in a file: the error class the defect belongs to and
/// the facts (offsets, declared numbers, names) the message must contain, computed by the
/// generator, not copied from qforge's output.
#[derive(Debug, serde::Deserialize)]
struct Expect {
    error: String,
    names: Vec<String>,
}

fn canaries(tmp: &Path) -> Vec<PathBuf> {
    [
        PathBuf::from(CANARY),
        root().join(CANARY),
        tmp.join(CANARY),
        tmp.join("model").join(CANARY),
    ]
    .into_iter()
    .filter(|p| p.exists())
    .collect()
}

fn check(
    name: &str,
    want: &Expect,
    run: impl FnOnce(&Path) -> Result<(), Error>,
) -> Option<String> {
    let tmp = tempfile::tempdir().unwrap();
    let (peak, result, cost) = counting_alloc::measure(|| run(tmp.path()));
    let fired = canaries(tmp.path());
    let mut problems = Vec::new();
    match &result {
        Ok(()) => problems.push("accepted".to_owned()),
        Err(e) => {
            let (v, msg) = (variant(e), e.to_string());
            let missing: Vec<&String> = want.names.iter().filter(|f| !msg.contains(*f)).collect();
            if v != want.error || !missing.is_empty() {
                problems.push(format!("got {v}: {msg} (facts not named: {missing:?})"));
            }
        }
    }
    if peak > MEMORY_CAP {
        problems.push(format!("peak {peak} bytes > cap {MEMORY_CAP}"));
    }
    if let Err(e) = cost.check(TIME_LIMIT) {
        problems.push(e);
    }
    if !fired.is_empty() {
        problems.push(format!("payload ran: {fired:?}"));
    }
    (!problems.is_empty()).then(|| {
        format!(
            "{name}: expected {} naming {:?}; {}",
            want.error,
            want.names,
            problems.join("; ")
        )
    })
}

#[test]
fn hostile_corpus_is_rejected_exactly() {
    let dir = root().join("tests/hostile");
    let manifest: BTreeMap<String, Expect> =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "manifest.json")
        .collect();
    on_disk.sort();
    assert!(on_disk.len() >= 40, "{} files", on_disk.len());
    let mut failures = Vec::new();
    for name in &on_disk {
        let Some(want) = manifest.get(name) else {
            failures.push(format!("{name}: not in manifest.json"));
            continue;
        };
        failures.extend(check(name, want, |tmp| open(name, tmp)));
    }
    #[cfg(unix)]
    {
        type Case = (&'static str, fn(&Path) -> Result<(), Error>);
        let cases: [Case; 2] = [
            ("<symlinked shard>", open_symlinked_shard),
            ("<relative symlinked shard>", open_relative_symlink),
        ];
        for (name, run) in cases {
            let want = manifest
                .get(name)
                .unwrap_or_else(|| panic!("{name} not in manifest.json"));
            failures.extend(check(name, want, run));
        }
    }
    for name in manifest.keys() {
        if !name.starts_with('<') && !on_disk.contains(name) {
            failures.push(format!("{name}: in manifest.json but not on disk"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
