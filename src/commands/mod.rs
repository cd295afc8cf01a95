//! One module per subcommand.

pub mod bench;
pub mod calibrate;
pub mod convert;
pub mod imatrix;
pub mod inspect;
pub mod perplexity;
pub mod pipeline;
pub mod plan;
pub mod plan_device;
pub mod plan_forward;
pub mod quantize;
pub mod verify;
pub mod verify_html;

use std::path::Path;

use anyhow::{bail, Result};

/// Read a UTF-8 text (`--data`): an error names the file once, by its full path, with a hint;
/// an empty (or whitespace-only) text is refused here, before any tokenizing.
pub fn read_text(path: &Path) -> Result<String> {
    let shown = qforge_convert::shown(path);
    let text = match std::fs::read(path) {
        Ok(b) => String::from_utf8(b).map_err(|e| {
            anyhow::anyhow!(
                "{shown}: not UTF-8 text (invalid byte at offset {})\n  hint: pass a plain \
                 UTF-8 text file",
                e.utf8_error().valid_up_to()
            )
        })?,
        Err(e) => bail!("{shown}: cannot read the text: {e}\n  hint: check the --data path"),
    };
    if text.trim().is_empty() {
        bail!(
            "{shown}: the text is empty\n  hint: pass a text of at least 2 × --ctx tokens \
             (hamlet.txt from scripts/fetch-data.sh, say)"
        );
    }
    Ok(text)
}

/// Name the text(s) in an error about their length (too few tokens for the chunks asked for).
pub fn name_texts(e: qforge_verify::Error, paths: &[&Path]) -> anyhow::Error {
    let names: Vec<String> = paths.iter().map(|p| qforge_convert::shown(p)).collect();
    match e {
        qforge_verify::Error::NotEnoughTokens { .. } => anyhow::anyhow!(
            "{}: {e}\n  hint: use a longer text or a smaller --ctx",
            names.join(", ")
        ),
        e => e.into(),
    }
}

/// Warn when the chunk length asked for is above the model's context length (its
/// `max_position_embeddings`): the figures past it say little about the model.
pub fn warn_long_ctx(config: &qforge_convert::ModelConfig, flag: &str, ctx: usize) {
    if ctx as u64 > config.max_position_embeddings {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "warning: {flag} {ctx} is above the model's context length {} \
             (max_position_embeddings); positions past it were never trained",
            config.max_position_embeddings
        );
    }
}

/// Say so when a run without `--resume` finds an interrupted run's staging output (it is
/// replaced: the writer starts over).
pub fn note_partial(dest: &Path, resume: bool, quiet: bool) {
    let staging = qforge_stage::staging_path(dest);
    if resume || quiet || !staging.exists() {
        return;
    }
    use std::io::Write;
    let what = if staging.is_dir() {
        "holds an interrupted run; starting over\n  hint: pass --resume to continue from its \
         finished files instead"
    } else {
        "is an interrupted run's partial file; starting over"
    };
    let _ = writeln!(std::io::stderr(), "note: {} {what}", staging.display());
}

/// `-v`: what a model is (read); `-vv`: each of its tensors.
pub fn log_read(what: &str, ckpt: &qforge_convert::Checkpoint) {
    let c = &ckpt.config;
    tracing::info!(
        "read {what} {}: {} format, {} file(s), {} tensors; {} layers, hidden {}, vocab {}",
        ckpt.path.display(),
        match ckpt.format {
            qforge_convert::Format::Hf => "Hugging Face",
            qforge_convert::Format::Meta => "Meta",
            qforge_convert::Format::Gguf => "GGUF",
        },
        ckpt.files().count(),
        ckpt.tensors.len(),
        c.num_layers,
        c.hidden_size,
        c.vocab_size
    );
    for t in &ckpt.tensors {
        let dims: Vec<String> = t.shape.iter().map(ToString::to_string).collect();
        tracing::debug!("  {} {} [{}]", t.name, t.dtype.name(), dims.join(", "));
    }
}

/// `-v`: the files an output got; `-vv`: with their sha256.
pub fn log_written(dest: &Path, files: &[qforge_stage::FileRecord]) {
    let bytes: u64 = files.iter().map(|f| f.bytes).sum();
    tracing::info!(
        "wrote {}: {} file(s), {bytes} bytes",
        dest.display(),
        files.len()
    );
    for f in files {
        tracing::debug!("  {} {} bytes sha256 {}", f.path, f.bytes, f.sha256);
    }
}

/// The command-line spelling of a value-enum option (`fbgemm`, `all-linear`).
pub fn value_name<T: clap::ValueEnum>(v: &T) -> String {
    v.to_possible_value()
        .map_or_else(String::new, |p| p.get_name().to_owned())
}
