//! Progress bars (indicatif) on stderr: shown only when stderr is a terminal and the user did
//! not ask for quiet, so logs, pipes and CI stay clean.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar of `len` `unit`s with rate and ETA, hidden when `quiet` or stderr is not a terminal.
pub fn bar(len: u64, quiet: bool, unit: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if quiet || !std::io::stderr().is_terminal() {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    let template = format!(
        "{{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} {unit} ({{per_sec}}, ETA {{eta}}) {{msg}}"
    );
    if let Ok(style) = ProgressStyle::with_template(&template) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}

/// The pipeline's bar of steps: position and the step's name, no rate or ETA (steps differ by
/// orders of magnitude; each step shows its own bar while it runs, this one hidden).
pub fn steps_bar(len: u64, quiet: bool) -> ProgressBar {
    let pb = bar(len, quiet, "steps");
    if let Ok(style) =
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] step {pos}/{len}: {msg}")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}

/// Set up `tracing` logs on stderr for `-v` (info), `-vv` (debug), `-vvv` (trace). Silent by
/// default.
pub fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => return,
        1 => tracing::Level::INFO,
        2 => tracing::Level::DEBUG,
        _ => tracing::Level::TRACE,
    };
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// A progress display for a command writing `dest`: a thread measures what the staging output
/// (`.<name>.qforge-partial`, a directory or a file) holds against the planned total, and shows
/// a bar with bytes, rate and ETA on a terminal, or a plain line every 5 s otherwise.
/// Nothing with `quiet`, and nothing for a run shorter than a second.
pub struct OutputWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How often a plain progress line is printed when stderr is not a terminal
/// (`QFORGE_PROGRESS_EVERY_MS` overrides it, for tests).
fn line_every() -> std::time::Duration {
    std::env::var("QFORGE_PROGRESS_EVERY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(
            std::time::Duration::from_secs(5),
            std::time::Duration::from_millis,
        )
}

/// Bytes the staging output of `dest` holds now.
fn staged_bytes(dest: &std::path::Path, total: Option<u64>) -> u64 {
    let staging = qforge_stage::staging_path(dest);
    if !staging.exists() && dest.exists() {
        // renamed into place: finished
        return total.unwrap_or(0);
    }
    match std::fs::metadata(&staging) {
        Ok(m) if m.is_dir() => std::fs::read_dir(&staging).map_or(0, |d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .filter(std::fs::Metadata::is_file)
                .map(|m| m.len())
                .sum()
        }),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

fn human(b: u64) -> String {
    indicatif::HumanBytes(b).to_string()
}

impl OutputWatch {
    /// Start watching `dest` (`what`: the command's name), expecting `total` bytes.
    pub fn start(what: &str, dest: &std::path::Path, total: Option<u64>, quiet: bool) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        if quiet {
            return OutputWatch { stop, thread: None };
        }
        let (dest, what, flag) = (dest.to_owned(), what.to_owned(), stop.clone());
        let thread = std::thread::spawn(move || {
            let start = std::time::Instant::now();
            let tty = std::io::stderr().is_terminal();
            let mut pb: Option<ProgressBar> = None;
            let mut last_line = start;
            let every = line_every();
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(100));
                if start.elapsed() < std::time::Duration::from_secs(1).min(every) {
                    continue;
                }
                let done = staged_bytes(&dest, total);
                if tty {
                    let bar = pb.get_or_insert_with(|| {
                        let b = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
                        let t = format!(
                            "{what} {{elapsed_precise}} [{{bar:30}}] {{bytes}}/{{total_bytes}} \
                             ({{bytes_per_sec}}, ETA {{eta}})"
                        );
                        if let Ok(style) = ProgressStyle::with_template(&t) {
                            b.set_style(style.progress_chars("=> "));
                        }
                        b
                    });
                    bar.set_position(done);
                } else if last_line.elapsed() >= every {
                    last_line = std::time::Instant::now();
                    let secs = start.elapsed().as_secs_f64();
                    let rate = done as f64 / secs.max(1e-3);
                    let line = match total {
                        Some(t) if t > 0 => format!(
                            "{what}: {} / {} ({:.0}%), {}/s, ETA {:.0} s",
                            human(done),
                            human(t),
                            100.0 * done as f64 / t as f64,
                            human(rate as u64),
                            (t.saturating_sub(done)) as f64 / rate.max(1.0)
                        ),
                        _ => format!("{what}: {} written, {}/s", human(done), human(rate as u64)),
                    };
                    eprintln!("{line}");
                }
            }
            if let Some(b) = pb {
                b.finish_and_clear();
            }
        });
        OutputWatch {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for OutputWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
