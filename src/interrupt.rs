//! Ctrl-C (SIGINT) during a long command: one line saying what was kept and how to continue
//! (the `--resume` command), then exit status 130 as shells report a SIGINT death. The staging
//! directory an interrupted run leaves is what `--resume` continues from.

#![allow(unsafe_code)] // libc::signal / write / _exit: the handler only does async-signal-safe calls

use std::sync::OnceLock;

use crate::cli::{Command, ConvertTarget};
use crate::steps::quantize::parse_scheme;

/// The message the handler writes, made before the work starts (no allocation in the handler).
static MESSAGE: OnceLock<Vec<u8>> = OnceLock::new();

extern "C" fn on_sigint(_: libc::c_int) {
    if let Some(m) = MESSAGE.get() {
        // SAFETY: write(2) on stderr with a buffer that lives for the whole process
        // (a OnceLock set before the handler was installed); async-signal-safe.
        unsafe {
            libc::write(2, m.as_ptr().cast(), m.len());
        }
    }
    // SAFETY: _exit is async-signal-safe; nothing is unwound (the staging directory stays
    // as the resume point).
    unsafe { libc::_exit(130) }
}

/// The command line as typed, quoted for a POSIX shell where needed.
fn command_line(extra: Option<&str>) -> String {
    let mut words: Vec<String> = std::env::args()
        .enumerate()
        .map(|(i, a)| if i == 0 { "qforge".to_owned() } else { a })
        .collect();
    if let Some(e) = extra {
        if !words.iter().any(|w| w == e) {
            words.push(e.to_owned());
        }
    }
    words
        .iter()
        .map(|w| {
            if !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c))
            {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// What to say on Ctrl-C for `cmd`, or `None` for commands with nothing to keep.
fn message(cmd: &Command) -> Option<String> {
    let dir_output = |dest: &std::path::Path| {
        format!(
            "\ninterrupted: the files finished so far are kept in {}\n  continue with: {}\n",
            qforge_stage::staging_path(dest).display(),
            command_line(Some("--resume"))
        )
    };
    let file_output = |dest: &std::path::Path| {
        format!(
            "\ninterrupted: {} is written in one go and was not created; rerun to start it again:\n  {}\n",
            dest.display(),
            command_line(None)
        )
    };
    Some(match cmd {
        Command::Convert(a) if a.dry_run => return None,
        Command::Convert(a) if a.to == ConvertTarget::Gguf => file_output(&a.output),
        Command::Convert(a) => dir_output(&a.output),
        Command::Quantize(a) if a.dry_run => return None,
        Command::Quantize(a) => match parse_scheme(&a.scheme, a.asym) {
            Ok(s) if s.writes_gguf() => file_output(&a.output),
            _ => dir_output(&a.output),
        },
        Command::Calibrate(a) => format!(
            "\ninterrupted: finished layers are kept in {}.qforge-state\n  continue with the same command: {}\n",
            a.output.display(),
            command_line(None)
        ),
        Command::Pipeline(a) if !a.dry_run => format!(
            "\ninterrupted: finished steps are kept; rerun the same command to continue:\n  {}\n",
            command_line(None)
        ),
        _ => return None,
    })
}

/// Install the SIGINT handler for `cmd` (commands that write resumable outputs).
pub fn install(cmd: &Command) {
    let Some(m) = message(cmd) else { return };
    if MESSAGE.set(m.into_bytes()).is_err() {
        return;
    }
    // SAFETY: installs a handler that only calls async-signal-safe functions (write, _exit).
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
}
