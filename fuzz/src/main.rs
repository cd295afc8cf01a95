//! `qforge-fuzz`: mutation-fuzz qforge's readers.
//!
//! ```text
//! qforge-fuzz --list
//! qforge-fuzz --target NAME --replay FILE
//! qforge-fuzz [--target NAME[,NAME...]|all] [--inputs N] [--seed S] [--findings DIR]
//!             [--time-limit-ms MS] [--alloc-cap-mib MIB] [--progress N]
//! ```
//! Prints one line per target (inputs, ok, rejected, panics, hangs, alloc-cap hits, peak
//! memory, rate) and exits 1 if anything was found (3 from the watchdog on a hang).
//! `--time-limit-ms` is CPU time of the fuzzing thread per input (default 2000); an input is
//! also stopped after 300 s of wall time with no more CPU than that (blocked or starved).
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use qforge_fuzz::{Fuzzer, Limits, Target, TARGETS};

fn main() -> ExitCode {
    let mut targets: Vec<Target> = TARGETS.to_vec();
    let mut inputs = 10_000u64;
    let mut seed = 1u64;
    let mut findings = PathBuf::from("target/fuzz-findings");
    let mut limits = Limits::default();
    let mut progress = 0u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--target" => {
                let v = val();
                if v != "all" {
                    targets = v
                        .split(',')
                        .map(|n| {
                            Target::from_name(n)
                                .unwrap_or_else(|| usage(&format!("unknown target {n}")))
                        })
                        .collect();
                }
            }
            "--replay" => {
                // run one saved input against the first target given before it
                let path = PathBuf::from(val());
                let bytes = std::fs::read(&path).unwrap_or_else(|e| usage(&format!("{e}")));
                let f = Fuzzer::new(targets[0], limits, &findings)
                    .unwrap_or_else(|e| usage(&format!("{e}")));
                println!("{:?}", f.run(&bytes));
                return ExitCode::SUCCESS;
            }
            "--list" => {
                println!("{}", TARGETS.map(Target::name).join("\n"));
                return ExitCode::SUCCESS;
            }
            "--inputs" => inputs = val().parse().unwrap_or_else(|_| usage("bad --inputs")),
            "--progress" => progress = val().parse().unwrap_or_else(|_| usage("bad --progress")),
            "--seed" => seed = val().parse().unwrap_or_else(|_| usage("bad --seed")),
            "--findings" => findings = PathBuf::from(val()),
            "--time-limit-ms" => {
                limits.time = Duration::from_millis(
                    val()
                        .parse()
                        .unwrap_or_else(|_| usage("bad --time-limit-ms")),
                );
            }
            "--alloc-cap-mib" => {
                limits.alloc_cap = val()
                    .parse::<usize>()
                    .unwrap_or_else(|_| usage("bad --alloc-cap-mib"))
                    << 20;
            }
            _ => usage(&format!("unknown argument {a}")),
        }
    }
    let mut bad = 0;
    for t in targets {
        let f = match Fuzzer::new(t, limits, &findings) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("qforge-fuzz: {}: {e}", t.name());
                return ExitCode::from(2);
            }
        };
        if let o @ (qforge_fuzz::Outcome::Rejected(_) | qforge_fuzz::Outcome::Panic(_)) =
            f.run_first_seed()
        {
            eprintln!(
                "qforge-fuzz: {}: the unmutated seed is not accepted: {o:?}",
                t.name()
            );
            return ExitCode::from(2);
        }
        let stats = f.fuzz_with_progress(inputs, seed, progress);
        println!("{}", stats.line(t));
        if std::env::var_os("QFORGE_FUZZ_ERRORS").is_some() {
            let mut e: Vec<_> = stats.errors.iter().collect();
            e.sort_by(|a, b| b.1.cmp(a.1));
            for (msg, n) in e.iter().take(25) {
                println!("    {n:>8}  {msg}");
            }
        }
        bad += stats.bad();
    }
    if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn usage(why: &str) -> ! {
    eprintln!(
        "qforge-fuzz: {why}\nusage: qforge-fuzz [--target NAME[,NAME...]|all] [--inputs N] [--seed S] \
         [--findings DIR] [--time-limit-ms MS] [--alloc-cap-mib MIB] [--progress N]\ntargets: {}",
        TARGETS.map(Target::name).join(" ")
    );
    std::process::exit(2)
}
