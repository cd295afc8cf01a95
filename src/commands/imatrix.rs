//! `qforge imatrix`: runs the importance-matrix step ([`crate::steps::imatrix`]).

use anyhow::Result;

use crate::cli::ImatrixArgs;

pub fn run(args: &ImatrixArgs) -> Result<()> {
    crate::steps::imatrix::run(args)
}
