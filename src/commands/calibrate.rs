//! `qforge calibrate`: runs the calibration step ([`crate::steps::calibrate`]).

use anyhow::Result;

use crate::cli::CalibrateArgs;

pub fn run(args: &CalibrateArgs) -> Result<()> {
    crate::steps::calibrate::run(args)
}
