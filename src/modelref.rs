//! Model references: a local path, or a Hugging Face hub cache reference `org/name[@revision]`
//! resolved in the standard cache layout, never downloaded.
//!
//! The cache root is `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`
//! (huggingface_hub's rules). A repository lives in `models--<org>--<name>/`;
//! `refs/<revision>` holds the commit hash of a branch or tag, and `snapshots/<hash>/` the files
//! (symbolic links into `blobs/`, which the safetensors reader accepts for hub snapshots only).

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// Whether `s` has the shape of a hub reference (`org/name` or `org/name@rev`).
pub fn is_hub_ref(s: &str) -> bool {
    let (repo, rev) = match s.split_once('@') {
        Some((r, v)) => (r, Some(v)),
        None => (s, None),
    };
    let part = |p: &str| {
        !p.is_empty()
            && !p.starts_with(['.', '-'])
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    };
    let rev_ok = rev.is_none_or(|v| {
        !v.is_empty()
            && !v.contains("..")
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
    });
    matches!(repo.split_once('/'), Some((org, name)) if part(org) && part(name)) && rev_ok
}

/// Whether a recipe's `model` string is a path (resolved against the recipe's directory)
/// rather than a hub reference.
pub fn looks_like_path(s: &str) -> bool {
    !is_hub_ref(s)
}

/// The hub cache root from the environment, with the variable it came from.
pub fn hub_cache_root() -> Option<(PathBuf, &'static str)> {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE").filter(|p| !p.is_empty()) {
        return Some((PathBuf::from(p), "$HF_HUB_CACHE"));
    }
    if let Some(p) = std::env::var_os("HF_HOME").filter(|p| !p.is_empty()) {
        return Some((PathBuf::from(p).join("hub"), "$HF_HOME/hub"));
    }
    std::env::var_os("HOME").filter(|p| !p.is_empty()).map(|h| {
        (
            PathBuf::from(h).join(".cache/huggingface/hub"),
            "~/.cache/huggingface/hub",
        )
    })
}

/// Resolve a model argument: an existing path is used as is; otherwise `org/name[@rev]` is
/// looked up in the hub cache. The error lists every place that was tried.
pub fn resolve(s: &str) -> Result<PathBuf> {
    let p = Path::new(s);
    if p.exists() || !is_hub_ref(s) {
        if !p.exists() {
            bail!(
                "{s}: no such file or directory\n  hint: give a model directory, a .gguf file, or a \
                 Hugging Face cache reference like org/name[@revision]"
            );
        }
        return Ok(p.to_owned());
    }
    let Some((root, from)) = hub_cache_root() else {
        bail!("{s}: not a path, and no hub cache (set HF_HUB_CACHE or HF_HOME)");
    };
    resolve_in(&root, from, s)
}

/// Resolve `org/name[@rev]` in the cache at `root` (`from` names where the root came from).
pub fn resolve_in(root: &Path, from: &str, s: &str) -> Result<PathBuf> {
    let (repo, rev) = s.split_once('@').unwrap_or((s, "main"));
    let (org, name) = repo.split_once('/').unwrap_or((repo, ""));
    let repo_dir = root.join(format!("models--{org}--{name}"));
    let mut tried = Vec::new();
    let ref_file = repo_dir.join("refs").join(rev);
    tried.push(ref_file.clone());
    let commit = match std::fs::read_to_string(&ref_file) {
        Ok(t) => Some(t.trim().to_owned()),
        Err(_) => None,
    };
    let is_hash = |h: &str| h.len() == 40 && h.chars().all(|c| c.is_ascii_hexdigit());
    let candidates: Vec<String> = match commit {
        Some(c) if is_hash(&c) => vec![c],
        None if is_hash(rev) => vec![rev.to_owned()],
        _ => Vec::new(),
    };
    for c in candidates {
        let snap = repo_dir.join("snapshots").join(&c);
        tried.push(snap.clone());
        if snap.is_dir() {
            return Ok(snap);
        }
    }
    let list: Vec<String> = tried
        .iter()
        .map(|p| format!("    {}", p.display()))
        .collect();
    bail!(
        "{s}: not found in the Hugging Face cache ({from} = {})\n  looked for:\n{}\n  hint: qforge \
         never downloads; fetch it first (e.g. `huggingface-cli download {repo}`) or pass a local path",
        root.display(),
        list.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_syntax() {
        assert!(is_hub_ref("meta-llama/Llama-3.1-8B"));
        assert!(is_hub_ref("org/name@v1.0"));
        assert!(is_hub_ref("org/name@refs/pr/1"));
        assert!(!is_hub_ref("./model"));
        assert!(!is_hub_ref("/abs/model"));
        assert!(!is_hub_ref("a/b/c"));
        assert!(!is_hub_ref("model.gguf"));
        assert!(!is_hub_ref("org/name@../x"));
    }

    #[test]
    fn resolves_refs_and_hashes_and_lists_where_it_looked() {
        let root = tempfile::tempdir().unwrap();
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let repo = root.path().join("models--org--tiny");
        std::fs::create_dir_all(repo.join("snapshots").join(sha)).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), format!("{sha}\n")).unwrap();
        let got = resolve_in(root.path(), "$HF_HUB_CACHE", "org/tiny").unwrap();
        assert_eq!(got, repo.join("snapshots").join(sha));
        let got = resolve_in(root.path(), "$HF_HUB_CACHE", &format!("org/tiny@{sha}")).unwrap();
        assert_eq!(got, repo.join("snapshots").join(sha));
        let e = format!(
            "{:#}",
            resolve_in(root.path(), "$HF_HUB_CACHE", "org/tiny@v2").unwrap_err()
        );
        assert!(
            e.contains("refs/v2") && e.contains("never downloads"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            resolve_in(root.path(), "$HF_HUB_CACHE", "org/other").unwrap_err()
        );
        assert!(e.contains("models--org--other"), "{e}");
    }
}
