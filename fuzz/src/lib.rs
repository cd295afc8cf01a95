//! A mutation fuzzer for qforge's readers that runs on stable Rust.
//!
//! For each reader ([`Target`]) it mutates the committed fixture files (`tests/fixtures/tiny`,
//! written by torch, safetensors and gguf-py) with a seeded deterministic generator
//! ([`mutate::mutate`]), writes each mutant over the one file it replaces in a copy of the
//! fixture's model directory (on tmpfs when there is one), and runs the reader in-process:
//!
//! * under `catch_unwind`: a panic is a finding;
//! * with a watchdog: an input that uses more CPU time than the limit is a hang (the watchdog
//!   saves it and ends the process, since a thread cannot be stopped). CPU time of the fuzzing
//!   thread, not wall time: on a busy machine a starved thread gains wall time but no CPU time,
//!   and once gave a false "hang" (README). An input that makes no progress for
//!   [`Limits::wall`] of wall time (blocked, or starved for that long) is reported as such:
//!   the message gives both times;
//! * under a counting global allocator ([`alloc`]): more than the cap live at once, or in one
//!   request, is a finding; a request above [`alloc::HARD_LIMIT`] is refused, which aborts with
//!   the input still on disk as `current.*`.
//!
//! An accepted input is also used the way `qforge convert` uses it (every tensor decoded to f32,
//! tokenizers converted to the other formats), so a reader that accepts what it should not
//! shows up as a panic or a bound exceeded further on. Findings are shrunk by greedy chunk
//! removal ([`Fuzzer::minimize`]) and saved for `tests/fuzz-regressions/`.
#![deny(missing_docs)]

pub mod alloc;
pub mod mutate;

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once, PoisonError};
use std::time::{Duration, Instant};

use mutate::{Layout, Rng, Seed};
use qforge_convert::tokenizer::Vocab;
use qforge_convert::{Checkpoint, Error};
use qforge_quantize::imatrix::{Imatrix, ImatrixFormat};

/// The readers fuzzed, one per input format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `model.safetensors` of a single-file HF checkpoint
    Safetensors,
    /// `model.safetensors.index.json` of a sharded HF checkpoint
    HfIndex,
    /// an HF `config.json`
    HfConfig,
    /// a `.gguf` file (header, metadata, tensor infos, data; its config)
    Gguf,
    /// a GGUF file's `tokenizer.ggml.*` metadata, converted to tokenizer.json
    GgufTokenizer,
    /// `consolidated.00.pth` of a Meta checkpoint (ZIP + pickle)
    Pth,
    /// a Meta `params.json`
    MetaParams,
    /// an HF `tokenizer.json`, read into a GGUF vocabulary and back
    TokenizerJson,
    /// a Meta tiktoken `tokenizer.model`
    Tiktoken,
    /// a llama-imatrix GGUF importance matrix, read, normalized and written back
    Imatrix,
    /// a llama-imatrix legacy `.dat` importance matrix
    ImatrixDat,
}

/// Every target, in report order.
pub const TARGETS: [Target; 11] = [
    Target::Safetensors,
    Target::HfIndex,
    Target::HfConfig,
    Target::Gguf,
    Target::GgufTokenizer,
    Target::Pth,
    Target::MetaParams,
    Target::TokenizerJson,
    Target::Tiktoken,
    Target::Imatrix,
    Target::ImatrixDat,
];

impl Target {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Target::Safetensors => "safetensors",
            Target::HfIndex => "hf-index",
            Target::HfConfig => "hf-config",
            Target::Gguf => "gguf",
            Target::GgufTokenizer => "gguf-tokenizer",
            Target::Pth => "pth",
            Target::MetaParams => "meta-params",
            Target::TokenizerJson => "tokenizer-json",
            Target::Tiktoken => "tiktoken",
            Target::Imatrix => "imatrix",
            Target::ImatrixDat => "imatrix-dat",
        }
    }

    /// The target called `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        TARGETS.into_iter().find(|t| t.name() == name)
    }

    /// (fixture directory copied as the model, file the mutant replaces, seed files, layout).
    fn plan(self) -> (&'static str, &'static str, &'static [&'static str], Layout) {
        match self {
            Target::Safetensors => (
                "hf",
                "model.safetensors",
                &[
                    "hf/model.safetensors",
                    "hf-sharded/model-00001-of-00002.safetensors",
                    "hf-sharded/model-00002-of-00002.safetensors",
                ],
                Layout::Safetensors,
            ),
            Target::HfIndex => (
                "hf-sharded",
                "model.safetensors.index.json",
                &["hf-sharded/model.safetensors.index.json"],
                Layout::Text,
            ),
            Target::HfConfig => (
                "hf",
                "config.json",
                &["hf/config.json", "hf-sharded/config.json"],
                Layout::Text,
            ),
            Target::Gguf => (
                "",
                "model.gguf",
                &["gguf/tiny.gguf", "gguf/kquants.gguf"],
                Layout::Gguf,
            ),
            Target::GgufTokenizer => ("", "model.gguf", &["gguf/tiny.gguf"], Layout::Gguf),
            Target::Pth => (
                "meta-mp1",
                "consolidated.00.pth",
                &[
                    "meta-mp1/consolidated.00.pth",
                    "meta-mp2/consolidated.00.pth",
                    "meta-extras/odd.pth",
                ],
                Layout::Pth,
            ),
            Target::MetaParams => (
                "meta-mp1",
                "params.json",
                &["meta-mp1/params.json"],
                Layout::Text,
            ),
            Target::TokenizerJson => (
                "hf",
                "tokenizer.json",
                &["hf/tokenizer.json", "hf/tokenizer_config.json"],
                Layout::Text,
            ),
            Target::Tiktoken => (
                "",
                "tokenizer.model",
                &["meta-mp1/tokenizer.model"],
                Layout::Text,
            ),
            Target::Imatrix => (
                "",
                "imatrix.gguf",
                &["imatrix/tiny.imatrix.gguf"],
                Layout::Gguf,
            ),
            Target::ImatrixDat => (
                "",
                "imatrix.dat",
                &["imatrix/tiny.imatrix.dat"],
                Layout::ImatrixDat,
            ),
        }
    }
}

/// The committed fixtures the seeds come from.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny")
}

/// Limits an input must stay within.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// CPU time of the fuzzing thread for one input (wall time where `/proc` cannot tell)
    pub time: Duration,
    /// wall-clock time for one input, however little CPU it used: a blocked input
    pub wall: Duration,
    /// bytes live at once, and bytes in one request
    pub alloc_cap: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            time: Duration::from_secs(2),
            wall: Duration::from_secs(300),
            alloc_cap: 256 << 20,
        }
    }
}

/// How one input ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// the reader accepted it (and every use of it succeeded)
    Ok,
    /// the reader returned an error (its `Display`)
    Rejected(String),
    /// a panic: its message and location
    Panic(String),
    /// more than the cap allocated
    AllocCap(alloc::Usage),
}

/// Counts for one target.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// inputs run
    pub inputs: u64,
    /// accepted
    pub ok: u64,
    /// rejected with an error
    pub rejected: u64,
    /// panics
    pub panics: u64,
    /// hangs (at most one: the watchdog ends the process)
    pub hangs: u64,
    /// allocation-cap hits
    pub alloc_cap: u64,
    /// most bytes live at once over all inputs
    pub peak_live: usize,
    /// largest single request over all inputs
    pub largest_alloc: usize,
    /// time taken
    pub elapsed: Duration,
    /// saved findings
    pub findings: Vec<PathBuf>,
    /// rejections by message (digits elided), for judging what the mutations reach
    pub errors: std::collections::BTreeMap<String, u64>,
}

impl Stats {
    /// Findings of any kind.
    pub fn bad(&self) -> u64 {
        self.panics + self.hangs + self.alloc_cap
    }

    /// One report line.
    pub fn line(&self, target: Target) -> String {
        format!(
            "{:<15} inputs {:>9} ok {:>8} rejected {:>9} panics {} hangs {} alloc-cap {} peak-live {:.1} MiB largest-alloc {:.1} MiB  {:.0} inputs/s",
            target.name(),
            self.inputs,
            self.ok,
            self.rejected,
            self.panics,
            self.hangs,
            self.alloc_cap,
            self.peak_live as f64 / f64::from(1u32 << 20),
            self.largest_alloc as f64 / f64::from(1u32 << 20),
            self.inputs as f64 / self.elapsed.as_secs_f64().max(1e-9),
        )
    }
}

/// The last panic's message and location, recorded by a quiet panic hook.
static LAST_PANIC: Mutex<String> = Mutex::new(String::new());

fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let msg = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let loc = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            *LAST_PANIC.lock().unwrap_or_else(PoisonError::into_inner) = format!("{msg} at {loc}");
        }));
    });
}

/// Shared with the watchdog thread: when the running input started (ms since `epoch`, 0 when
/// idle), the fuzzing thread's CPU time then, and where that thread's CPU time is read.
struct Watch {
    epoch: Instant,
    started_ms: AtomicU64,
    /// CPU time (ms) of the fuzzing thread when the input started
    cpu_start_ms: AtomicU64,
    /// `/proc/<pid>/task/<tid>/stat` of the thread running the input
    stat: Mutex<Option<PathBuf>>,
    stop: AtomicBool,
}

/// CPU time (user + system, ms) of the thread whose `/proc/<pid>/task/<tid>/stat` is `stat`;
/// `None` where `/proc` is missing or unreadable. The counters are in USER_HZ ticks, which the
/// kernel fixes at 100 per second for user space (proc(5), `/proc/pid/stat` fields 14 and 15).
fn thread_cpu_ms(stat: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(stat).ok()?;
    // fields after the command name, which is in parentheses and may hold spaces
    let rest = &text[text.rfind(')')? + 1..];
    let mut f = rest.split_ascii_whitespace().skip(11); // field 3 is the first after ')'
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some((utime + stime) * 10)
}

/// `/proc/<pid>/task/<tid>/stat` of the calling thread.
fn own_thread_stat() -> Option<PathBuf> {
    let link = std::fs::read_link("/proc/thread-self").ok()?; // "<pid>/task/<tid>"
    let stat = Path::new("/proc").join(link).join("stat");
    thread_cpu_ms(&stat).map(|_| stat)
}

impl Watch {
    /// Called by the fuzzing thread before each input: note the time and its CPU time.
    fn start_input(&self) {
        // Read each time: a Fuzzer may be driven from more than one thread in turn.
        let stat = own_thread_stat();
        let cpu = stat.as_deref().and_then(thread_cpu_ms).unwrap_or(0);
        *self.stat.lock().unwrap_or_else(PoisonError::into_inner) = stat;
        self.cpu_start_ms.store(cpu, Ordering::Relaxed);
        let start = (self.epoch.elapsed().as_millis() as u64).max(1);
        self.started_ms.store(start, Ordering::Release);
    }

    /// Called by the watchdog: why the running input is over its limits, if it is. CPU time
    /// over `limits.time` is a hang; wall time over `limits.wall` with CPU under it is an input
    /// that made no progress (blocked, or the machine starved the thread that long). Where the
    /// thread's CPU time cannot be read, wall time stands in for it.
    fn overrun(&self, limits: &Limits) -> Option<String> {
        let s = self.started_ms.load(Ordering::Acquire);
        if s == 0 {
            return None;
        }
        let wall =
            Duration::from_millis((self.epoch.elapsed().as_millis() as u64).saturating_sub(s));
        let stat = self
            .stat
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let cpu = stat.as_deref().and_then(thread_cpu_ms).map(|now| {
            Duration::from_millis(now.saturating_sub(self.cpu_start_ms.load(Ordering::Relaxed)))
        });
        // The input may have finished while the clocks were read.
        if self.started_ms.load(Ordering::Acquire) != s {
            return None;
        }
        match cpu {
            Some(cpu) if cpu > limits.time => Some(format!(
                "used {cpu:?} of CPU time, over the {:?} limit ({wall:?} wall)",
                limits.time
            )),
            Some(cpu) if wall > limits.wall => Some(format!(
                "made no progress: {wall:?} wall but only {cpu:?} of CPU time (blocked, or \
                 starved of CPU for longer than the {:?} wall limit)",
                limits.wall
            )),
            None if wall > limits.time => Some(format!(
                "ran over {:?} of wall time (CPU time unreadable here; starved of CPU?)",
                limits.time
            )),
            _ => None,
        }
    }
}

/// One target's fuzzing state: its seeds and a scratch copy of the model directory.
pub struct Fuzzer {
    target: Target,
    seeds: Vec<Seed>,
    /// the model directory (or file) handed to the reader
    model: PathBuf,
    /// the file each mutant is written to
    file: PathBuf,
    limits: Limits,
    findings_dir: PathBuf,
    watch: Arc<Watch>,
    watchdog: Option<std::thread::JoinHandle<()>>,
    // kept alive for the scratch directory
    _scratch: tempfile::TempDir,
}

/// A temporary directory on tmpfs when there is one (each input is a file write).
fn scratch_dir() -> std::io::Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::Builder::new()
            .prefix("qforge-fuzz")
            .tempdir_in(shm)
        {
            return Ok(d);
        }
    }
    tempfile::Builder::new().prefix("qforge-fuzz").tempdir()
}

impl Fuzzer {
    /// Set up `target`: load and analyse its seeds, copy its model directory to scratch space,
    /// start the watchdog. Findings are saved under `findings_dir`.
    pub fn new(target: Target, limits: Limits, findings_dir: &Path) -> std::io::Result<Self> {
        install_panic_hook();
        let (model_dir, file, seeds, layout) = target.plan();
        let fixtures = fixtures_dir();
        let seeds = seeds
            .iter()
            .map(|s| std::fs::read(fixtures.join(s)).map(|b| Seed::new(b, layout)))
            .collect::<std::io::Result<Vec<_>>>()?;
        let scratch = scratch_dir()?;
        let model = scratch.path().join("model");
        std::fs::create_dir(&model)?;
        if !model_dir.is_empty() {
            for e in std::fs::read_dir(fixtures.join(model_dir))? {
                let e = e?;
                let name = e.file_name();
                if name == "expected.json" {
                    continue;
                }
                std::fs::copy(e.path(), model.join(name))?;
            }
        }
        let file = model.join(file);
        let watch = Arc::new(Watch {
            epoch: Instant::now(),
            started_ms: AtomicU64::new(0),
            cpu_start_ms: AtomicU64::new(0),
            stat: Mutex::new(None),
            stop: AtomicBool::new(false),
        });
        let watchdog = {
            let watch = Arc::clone(&watch);
            let file = file.clone();
            let findings = findings_dir.to_path_buf();
            std::thread::spawn(move || loop {
                std::thread::sleep(Duration::from_millis(50));
                if watch.stop.load(Ordering::Relaxed) {
                    return;
                }
                if let Some(what) = watch.overrun(&limits) {
                    let _ = std::fs::create_dir_all(&findings);
                    let saved = findings.join(format!("{}-hang.bin", target.name()));
                    let _ = std::fs::copy(&file, &saved);
                    eprintln!(
                        "HANG: {} input {what}; saved to {}",
                        target.name(),
                        saved.display()
                    );
                    std::process::exit(3);
                }
            })
        };
        Ok(Fuzzer {
            target,
            seeds,
            model,
            file,
            limits,
            findings_dir: findings_dir.to_path_buf(),
            watch,
            watchdog: Some(watchdog),
            _scratch: scratch,
        })
    }

    /// Run one input: write it where the reader looks, read it, use what was read.
    pub fn run(&self, input: &[u8]) -> Outcome {
        self.run_measured(input).0
    }

    /// [`Fuzzer::run`], also returning what it allocated.
    fn run_measured(&self, input: &[u8]) -> (Outcome, alloc::Usage) {
        if let Err(e) = std::fs::write(&self.file, input) {
            return (
                Outcome::Rejected(format!("fuzzer could not write its input: {e}")),
                alloc::Usage::default(),
            );
        }
        self.watch.start_input();
        let (r, usage) = alloc::measure(|| {
            std::panic::catch_unwind(AssertUnwindSafe(|| {
                read(self.target, &self.model, &self.file, input)
            }))
        });
        self.watch.started_ms.store(0, Ordering::Relaxed);
        let outcome = match r {
            Err(_) => Outcome::Panic(
                LAST_PANIC
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone(),
            ),
            Ok(_)
                if usage.peak > self.limits.alloc_cap || usage.largest > self.limits.alloc_cap =>
            {
                Outcome::AllocCap(usage)
            }
            Ok(Ok(())) => Outcome::Ok,
            Ok(Err(e)) => Outcome::Rejected(e.to_string()),
        };
        (outcome, usage)
    }

    /// The first seed, unmutated (it must be accepted, or the target fuzzes nothing useful).
    pub fn run_first_seed(&self) -> Outcome {
        self.run(&self.seeds[0].bytes)
    }

    /// Run `n` mutants drawn with generator seed `rng_seed`, minimizing and saving findings.
    pub fn fuzz(&self, n: u64, rng_seed: u64) -> Stats {
        self.fuzz_with_progress(n, rng_seed, 0)
    }

    /// [`Fuzzer::fuzz`], printing the counts so far to stderr every `every` inputs (0: never).
    pub fn fuzz_with_progress(&self, n: u64, rng_seed: u64, every: u64) -> Stats {
        let mut rng = Rng::new(rng_seed ^ (self.target as u64).wrapping_mul(0x1000_0000_01b3));
        let mut stats = Stats::default();
        let mut input = Vec::new();
        let start = Instant::now();
        for _ in 0..n {
            mutate::mutate(&mut rng, &self.seeds, &mut input);
            let (outcome, usage) = self.run_measured(&input);
            stats.inputs += 1;
            stats.peak_live = stats.peak_live.max(usage.peak);
            stats.largest_alloc = stats.largest_alloc.max(usage.largest);
            match &outcome {
                Outcome::Ok => stats.ok += 1,
                Outcome::Rejected(e) => {
                    stats.rejected += 1;
                    let key: String = e
                        .rsplit(": ")
                        .next()
                        .unwrap_or(e)
                        .chars()
                        .filter(|c| !c.is_ascii_digit())
                        .take(70)
                        .collect();
                    *stats.errors.entry(key).or_default() += 1;
                }
                Outcome::Panic(_) => stats.panics += 1,
                Outcome::AllocCap(_) => stats.alloc_cap += 1,
            }
            if matches!(outcome, Outcome::Panic(_) | Outcome::AllocCap(_)) {
                stats.findings.push(self.save(&input, &outcome));
            }
            if every != 0 && stats.inputs % every == 0 {
                stats.elapsed = start.elapsed();
                eprintln!("progress: {}", stats.line(self.target));
            }
        }
        stats.elapsed = start.elapsed();
        stats
    }

    /// Shrink a finding and save it; returns the saved path.
    fn save(&self, input: &[u8], outcome: &Outcome) -> PathBuf {
        let min = self.minimize(input, outcome);
        let kind = match outcome {
            Outcome::Panic(_) => "panic",
            _ => "alloc-cap",
        };
        let hash = min.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        let _ = std::fs::create_dir_all(&self.findings_dir);
        let path = self
            .findings_dir
            .join(format!("{}-{kind}-{hash:016x}.bin", self.target.name()));
        let _ = std::fs::write(&path, &min);
        eprintln!(
            "FINDING: {} {kind}: {outcome:?}; {} bytes (from {}) saved to {}",
            self.target.name(),
            min.len(),
            input.len(),
            path.display()
        );
        path
    }

    /// Greedy chunk removal: drop halves, quarters, … single bytes while the input still gives
    /// the same kind of finding (for a panic, at the same place).
    pub fn minimize(&self, input: &[u8], outcome: &Outcome) -> Vec<u8> {
        let same = |o: &Outcome| match (o, outcome) {
            (Outcome::Panic(a), Outcome::Panic(b)) => {
                a.rsplit(" at ").next() == b.rsplit(" at ").next()
            }
            (Outcome::AllocCap(_), Outcome::AllocCap(_)) => true,
            _ => false,
        };
        let mut cur = input.to_vec();
        let mut budget = 4000u32;
        let mut chunk = cur.len().div_ceil(2).max(1);
        loop {
            let mut i = 0;
            while i < cur.len() && budget > 0 {
                let mut cand = cur.clone();
                cand.drain(i..(i + chunk).min(cur.len()));
                budget -= 1;
                if same(&self.run(&cand)) {
                    cur = cand;
                } else {
                    i += chunk;
                }
            }
            if chunk == 1 || budget == 0 {
                break;
            }
            chunk = chunk.div_ceil(2);
        }
        cur
    }
}

impl Drop for Fuzzer {
    fn drop(&mut self) {
        self.watch.stop.store(true, Ordering::Relaxed);
        if let Some(w) = self.watchdog.take() {
            let _ = w.join();
        }
    }
}

/// Read `file` (holding `input`) with `target`'s reader, and use what it read.
pub fn read(target: Target, model: &Path, file: &Path, input: &[u8]) -> Result<(), Error> {
    match target {
        Target::Safetensors
        | Target::HfIndex
        | Target::HfConfig
        | Target::Pth
        | Target::MetaParams => use_checkpoint(&Checkpoint::open(model)?),
        Target::Gguf => use_checkpoint(&Checkpoint::open(file)?),
        Target::GgufTokenizer => use_vocab(&Vocab::from_gguf_file(file)?),
        Target::TokenizerJson => {
            let v = Vocab::from_tokenizer_json(model, None)?;
            use_vocab(&v)?;
            // the summary `Checkpoint::open` takes of an HF directory's tokenizer files
            use_checkpoint(&Checkpoint::open(model)?)
        }
        Target::Tiktoken => use_vocab(&Vocab::from_tiktoken(
            input,
            &["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"],
        )?),
        Target::Imatrix | Target::ImatrixDat => use_imatrix(file, &Imatrix::read(file)?),
    }
}

/// Normalize an importance matrix as `qforge quantize --imatrix` does, and write it back.
fn use_imatrix(file: &Path, m: &Imatrix) -> Result<(), Error> {
    let err = |kind| qforge_quantize::imatrix::err(file, kind);
    std::hint::black_box(m.quant_weights().map_err(err)?);
    std::hint::black_box(m.quantize_metadata("imatrix.gguf"));
    if m.format == ImatrixFormat::Gguf {
        std::hint::black_box(m.to_gguf_bytes().map_err(err)?);
        if m.chunk_size > 0 {
            std::hint::black_box(m.to_dat_bytes().map_err(err)?);
        }
    }
    Ok(())
}

/// Decode every tensor, as a conversion would.
fn use_checkpoint(c: &Checkpoint) -> Result<(), Error> {
    for t in &c.tensors {
        let v = c.to_f32(t)?;
        std::hint::black_box(v);
    }
    if let Some(meta) = &c.gguf {
        if meta.get("tokenizer.ggml.model").is_some() {
            use_vocab(&Vocab::from_gguf(meta)?)?;
        }
    }
    Ok(())
}

/// Convert a vocabulary to the other formats, as a conversion would.
fn use_vocab(v: &Vocab) -> Result<(), Error> {
    std::hint::black_box(v.to_gguf_metadata());
    if v.model == "gpt2" {
        std::hint::black_box(v.to_tokenizer_json()?);
        std::hint::black_box(v.to_tokenizer_config_json()?);
    }
    Ok(())
}
