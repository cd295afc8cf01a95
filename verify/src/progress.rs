//! Progress of layer-major work on stderr, shared by verify's evaluations and calibrate's
//! layer loop: on a terminal one line rewritten in place with percent, elapsed time and ETA;
//! otherwise a plain line at most every 5 s (and the last step); nothing unless asked for.

use std::io::Write;
use std::time::Instant;

/// Progress of a layer-major evaluation on stderr: on a terminal one line rewritten in place
/// (step, percent, rate, ETA); otherwise a plain line at most every 5 s (and the last step);
/// nothing unless `on`.
pub struct Progress {
    on: bool,
    tty: bool,
    start: Instant,
    last: Option<Instant>,
    total: usize,
    done: usize,
}

impl Progress {
    /// A display of `total` steps (nothing unless `on`).
    pub fn new(on: bool, total: usize) -> Self {
        use std::io::IsTerminal;
        Progress {
            on,
            tty: std::io::stderr().is_terminal(),
            start: Instant::now(),
            last: None,
            total,
            done: 0,
        }
    }

    /// One step done (a layer of one batch, a calibrated layer), described by `what`.
    pub fn step(&mut self, what: std::fmt::Arguments<'_>) {
        self.done += 1;
        if !self.on {
            return;
        }
        let secs = self.start.elapsed().as_secs_f64();
        let frac = self.done as f64 / self.total.max(1) as f64;
        let eta = if frac > 0.0 {
            secs * (1.0 - frac) / frac
        } else {
            0.0
        };
        let line = format!("{what}: {:.0}%, {secs:.0} s, ETA {eta:.0} s", 100.0 * frac);
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{line}");
            if self.done >= self.total {
                let _ = write!(err, "\r\x1b[2K");
            }
        } else if self.done >= self.total
            || self
                .last
                .is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(5))
        {
            self.last = Some(Instant::now());
            let _ = writeln!(err, "{line}");
        }
    }
}
