//! `qforge`: convert, quantize and verify Llama-family checkpoints.
//!
//! The binary is thin: `cli` holds the clap definitions, `commands` one `run` per subcommand.
//! Library crates own their error types; here they become `anyhow` errors printed with their
//! whole chain.

mod cli;
mod commands;
mod interrupt;
mod modelref;
mod progress;
mod recipe;
mod steps;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

/// Help and version as clap prints them; a usage error as one line with a hint, exit status 2.
fn usage_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit()
    }
    let text = e.render().to_string();
    let mut lines = text.lines().map(str::trim).filter(|l| {
        !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information")
    });
    let mut first = lines.next().unwrap_or("error: bad arguments").to_owned();
    let mut lines = lines.peekable();
    // "the following required arguments were not provided:" lists them on the next lines
    if first.ends_with(':') {
        let mut missing = Vec::new();
        while let Some(l) = lines.next_if(|l| l.starts_with('-') || l.starts_with('<')) {
            missing.push(l);
        }
        first = format!("{first} {}", missing.join(", "));
    }
    // clap's own suggestions start with "tip: "; the hint says it once
    let rest: Vec<String> = lines
        .map(|l| l.strip_prefix("tip: ").unwrap_or(l))
        .map(|l| {
            l.strip_prefix('[')
                .and_then(|l| l.strip_suffix(']'))
                .unwrap_or(l)
                .to_owned()
        })
        .collect();
    let hint = if rest.is_empty() {
        String::new()
    } else {
        format!("{}; ", rest.join("; "))
    };
    let _ = writeln!(std::io::stderr(), "{first} (hint: {hint}see --help)");
    ExitCode::from(2)
}

/// An error with its causes, each said once: a cause whose text the message already holds
/// (the OS error an `Io` error quotes, say) is not repeated.
fn error_text(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let c = cause.to_string();
        if text.contains(&c) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&c);
    }
    text
}

fn main() -> ExitCode {
    let mut cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return usage_error(&e),
    };
    cli.command.resolve_outputs();
    interrupt::install(&cli.command);
    progress::init_logging(cli.verbose);
    let result = match cli.command {
        cli::Command::Inspect(args) => commands::inspect::run(&args),
        cli::Command::Convert(args) => commands::convert::run(&args),
        cli::Command::Quantize(args) => commands::quantize::run(&args),
        cli::Command::Bench(cli::BenchCommand::Gemm(args)) => commands::bench::run_gemm(&args),
        cli::Command::Perplexity(args) => commands::perplexity::run(&args),
        cli::Command::Verify(args) => commands::verify::run(&args),
        cli::Command::Imatrix(args) => commands::imatrix::run(&args),
        cli::Command::Calibrate(args) => commands::calibrate::run(&args),
        cli::Command::Pipeline(args) => commands::pipeline::run(&args),
        cli::Command::Plan(args) => commands::plan::run(&args),
        cli::Command::Completions(args) => {
            use clap::CommandFactory;
            let mut cmd = cli::Cli::command();
            clap_complete::generate(args.shell, &mut cmd, "qforge", &mut std::io::stdout());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // A closed pipe (`qforge inspect … | head`) is not a failure.
            if err.chain().any(|e| {
                e.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            if let Some(u) = err.downcast_ref::<cli::UsageError>() {
                // one line with its hint, as clap's own usage errors
                let (what, hint) = u.0.split_once("\n  hint: ").unwrap_or((u.0.as_str(), ""));
                let hint = if hint.is_empty() {
                    String::new()
                } else {
                    format!("{}; ", hint.replace('\n', " "))
                };
                let _ = writeln!(std::io::stderr(), "error: {what} (hint: {hint}see --help)");
                return ExitCode::from(2);
            }
            let _ = writeln!(std::io::stderr(), "error: {}", error_text(&err));
            if err
                .downcast_ref::<steps::verify::BudgetExceeded>()
                .is_some()
            {
                return ExitCode::from(commands::verify::BUDGET_EXIT_CODE);
            }
            ExitCode::FAILURE
        }
    }
}
