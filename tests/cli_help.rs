//! Snapshots (insta) of every subcommand's `--help` (each must show an example) and of the
//! one-line usage errors with their hints (exit status 2).

use std::process::Command;

const QFORGE: &str = env!("CARGO_BIN_EXE_qforge");

const SUBCOMMANDS: &[&[&str]] = &[
    &[],
    &["inspect"],
    &["convert"],
    &["quantize"],
    &["perplexity"],
    &["verify"],
    &["imatrix"],
    &["calibrate"],
    &["pipeline"],
    &["plan"],
    &["completions"],
    &["bench"],
    &["bench", "gemm"],
];

fn run(args: &[&str]) -> std::process::Output {
    Command::new(QFORGE)
        .args(args)
        .env("COLUMNS", "100")
        .env_remove("CLICOLOR_FORCE")
        .output()
        .unwrap()
}

#[test]
fn every_subcommand_has_help_with_an_example() {
    // the list above covers every subcommand `qforge --help` shows
    let top = String::from_utf8(run(&["--help"]).stdout).unwrap();
    let listed: Vec<&str> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(listed.len() >= 10, "{top}");
    for c in &listed {
        assert!(
            SUBCOMMANDS.iter().any(|s| s.first() == Some(c)),
            "qforge {c} is not in SUBCOMMANDS"
        );
    }
    for sub in SUBCOMMANDS {
        let mut args = sub.to_vec();
        args.push("--help");
        let o = run(&args);
        assert!(o.status.success(), "{args:?}");
        let help = String::from_utf8(o.stdout).unwrap();
        if !sub.is_empty() && *sub != ["bench"] {
            assert!(
                help.contains("Examples:"),
                "{args:?} has no example:\n{help}"
            );
        }
        let name = if sub.is_empty() {
            "qforge".to_owned()
        } else {
            format!("qforge {}", sub.join(" "))
        };
        insta::assert_snapshot!(format!("help-{}", name.replace(' ', "-")), help);
    }
}

#[test]
fn usage_errors_are_one_line_with_a_hint() {
    let cases: &[(&str, &[&str])] = &[
        ("unknown subcommand", &["frobnicate"]),
        ("bad value", &["convert", "in", "out", "--to", "onnx"]),
        ("missing required", &["quantize", "in", "out"]),
        (
            "misspelled flag",
            &["quantize", "in", "out", "--scheme", "fp8", "--dryrun"],
        ),
        (
            "bad size",
            &["convert", "in", "out", "--to", "hf", "--shard-size", "5XB"],
        ),
        (
            "bad percent",
            &["verify", "a", "b", "--data", "t", "--max-ppl-drift", "lots"],
        ),
        ("bad shell", &["completions", "tcsh"]),
        (
            "unknown scheme",
            &["quantize", "in", "out", "--scheme", "fp4"],
        ),
        ("unknown plan scheme", &["plan", "in", "--scheme", "fp4"]),
        (
            "zero ctx",
            &["perplexity", "m.gguf", "--data", "t.txt", "--ctx", "0"],
        ),
        (
            "zero chunks",
            &["verify", "a", "b", "--data", "t.txt", "--chunks", "0"],
        ),
        (
            "zero imatrix chunks",
            &[
                "imatrix", "m.gguf", "--data", "t.txt", "-o", "i.gguf", "--chunks", "0",
            ],
        ),
        (
            "calibrate bad scheme",
            &[
                "calibrate",
                "m",
                "--data",
                "t.txt",
                "--method",
                "gptq",
                "--scheme",
                "int5",
                "-o",
                "x",
            ],
        ),
    ];
    for (name, args) in cases {
        let o = run(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8(o.stderr).unwrap();
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains("hint:"), "{args:?}: {err}");
        insta::assert_snapshot!(format!("usage-error-{}", name.replace(' ', "-")), err);
    }
}

#[test]
fn completions_are_generated() {
    for shell in ["bash", "zsh", "fish"] {
        let o = run(&["completions", shell]);
        assert!(o.status.success());
        let s = String::from_utf8(o.stdout).unwrap();
        assert!(s.contains("pipeline") && s.contains("dry-run"), "{shell}");
    }
}
