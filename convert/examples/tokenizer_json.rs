//! Tokenizer conversions from the command line, for the interop tests.
//!
//! ```text
//! tokenizer_json SOURCE OUTDIR [--pre NAME] [--llama3 | --llama3.1]
//!     write OUTDIR/tokenizer.json and OUTDIR/tokenizer_config.json; prints a one-line JSON
//!     summary. SOURCE is a .gguf file, an HF directory, a SentencePiece tokenizer.model
//!     (Llama 2) or a tiktoken tokenizer.model (with the Llama 3 / 3.1 special tokens when asked); --pre names the pre-tokenizer instead of the
//!     stored one (GGUF, tiktoken) or the one identified by the probe hash (HF)
//! tokenizer_json --vocab SOURCE [--pre NAME] [--llama3 | --llama3.1]
//!     print the GGUF view (qforge_convert::tokenizer::Vocab) of SOURCE as JSON
//! tokenizer_json --pre-hash HF_DIR
//!     print {"chkhsh": ..., "pre": ...}: llama.cpp's pre-tokenizer probe hash of a tokenizer.json
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;

use qforge_convert::tokenizer::{
    llama3_special_tokens, pre_for_hash, pre_probe_hash, Llama3Specials, Vocab,
};
use serde_json::json;

fn usage() -> ExitCode {
    let _ = writeln!(
        std::io::stderr(),
        "usage: tokenizer_json SOURCE OUTDIR [--pre NAME] [--llama3 | --llama3.1]\n       \
         tokenizer_json --vocab SOURCE [--pre NAME] [--llama3 | --llama3.1]\n       \
         tokenizer_json --pre-hash HF_DIR"
    );
    ExitCode::from(2)
}

/// Read SOURCE with the options `[--pre NAME] [--llama3 | --llama3.1]`.
fn read_vocab(src: &Path, opts: &[String]) -> Result<Vocab, String> {
    let (mut pre, mut specials) = (None, None);
    let mut it = opts.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--pre" => pre = Some(it.next().ok_or("--pre needs a name")?.as_str()),
            "--llama3" => specials = Some(Llama3Specials::V3),
            "--llama3.1" => specials = Some(Llama3Specials::V3_1),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let v = if src.is_dir() {
        Vocab::from_tokenizer_json(src, pre)
    } else if src.extension().is_some_and(|e| e == "gguf") {
        Vocab::from_gguf_file(src)
    } else if std::fs::read(src).is_ok_and(|b| b.first() == Some(&0x0a)) {
        // A SentencePiece ModelProto starts with field 1 (a piece, length-delimited): 0x0a;
        // a tiktoken file starts with base64 text.
        Vocab::from_sentencepiece_file(src)
    } else {
        let specials = specials.map(llama3_special_tokens).unwrap_or_default();
        Vocab::from_tiktoken_file(src, &specials)
    };
    let mut v = v.map_err(|e| e.to_string())?;
    if !src.is_dir() {
        if let Some(p) = pre {
            v.pre = Some(p.to_owned());
        }
    }
    Ok(v)
}

fn run(args: &[String]) -> Result<String, String> {
    match args {
        [flag, dir] if flag == "--pre-hash" => {
            let text = std::fs::read_to_string(Path::new(dir).join("tokenizer.json"))
                .map_err(|e| format!("{dir}/tokenizer.json: {e}"))?;
            let tok = tokenizers::Tokenizer::from_str(&text).map_err(|e| e.to_string())?;
            let hash = pre_probe_hash(&tok).map_err(|e| e.to_string())?;
            Ok(json!({"chkhsh": hash, "pre": pre_for_hash(&hash)}).to_string())
        }
        [flag, src, rest @ ..] if flag == "--vocab" => {
            let v = read_vocab(Path::new(src), rest)?;
            serde_json::to_string(&v).map_err(|e| e.to_string())
        }
        [src, out, rest @ ..] if !src.starts_with("--") && !out.starts_with("--") => {
            let v = read_vocab(Path::new(src), rest)?;
            let out = PathBuf::from(out);
            std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
            v.write_hf_files(&out).map_err(|e| e.to_string())?;
            Ok(json!({
                "tokens": v.tokens.len(),
                "merges": v.merges.len(),
                "pre": v.pre,
                "add_bos": v.effective_add_bos(),
                "add_eos": v.effective_add_eos(),
            })
            .to_string())
        }
        _ => Err(String::new()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(line) => {
            let _ = writeln!(std::io::stdout().lock(), "{line}");
            ExitCode::SUCCESS
        }
        Err(e) if e.is_empty() => usage(),
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "tokenizer_json: {e}");
            ExitCode::FAILURE
        }
    }
}
