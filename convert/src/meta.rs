//! Meta checkpoints: `params.json` + `consolidated.NN.pth` (any model-parallel degree).
//!
//! TODO(helper): reader with lazy model-parallel merge.

use std::path::Path;

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::pth::PthError;

/// Read a Meta checkpoint directory.
pub fn read(path: &Path) -> Result<Checkpoint> {
    Err(Error::Pth { path: path.into(), kind: PthError::Unimplemented })
}
