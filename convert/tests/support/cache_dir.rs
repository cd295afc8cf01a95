//! Where the scripts keep downloaded data and unpacked sources (included with `#[path]`).

use std::path::{Path, PathBuf};

/// `$QFORGE_CACHE`, else `$XDG_CACHE_HOME/qforge`, else `$HOME/.cache/qforge`: the same rule as
/// scripts/cache-dir.sh.
pub fn cache_dir() -> PathBuf {
    let nonempty = |v: &str| std::env::var_os(v).filter(|s| !s.is_empty());
    if let Some(c) = nonempty("QFORGE_CACHE") {
        return PathBuf::from(c);
    }
    let base = nonempty("XDG_CACHE_HOME").map_or_else(
        || Path::new(&nonempty("HOME").unwrap_or_default()).join(".cache"),
        PathBuf::from,
    );
    base.join("qforge")
}
