//! A random Llama-shaped BF16 HF checkpoint written with qforge's own safetensors writer, for
//! the CLI fault and determinism tests (included with `#[path]`; each uses part of it).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use qforge_codecs::DType;
use qforge_convert::write::safetensors::{plan, TensorSpec, Writer};

/// Model dimensions: (hidden, layers, heads, kv heads, ffn, vocab).
pub type Dims = (u64, u64, u64, u64, u64, u64);

/// About 60 MB of BF16: several 8 MB output shards at f32.
pub const MEDIUM: Dims = (512, 4, 8, 2, 1536, 16384);
/// About 5 MB of BF16.
pub const SMALL: Dims = (256, 2, 4, 2, 768, 4096);

/// Write the model to `dir` (config.json + model.safetensors), deterministic for given dims.
pub fn make_model(dir: &Path, dims: Dims) {
    let (hidden, layers, heads, kv, ffn, vocab) = dims;
    let hd = hidden / heads;
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
        "intermediate_size": ffn, "num_attention_heads": heads, "num_hidden_layers": layers,
        "num_key_value_heads": kv, "rms_norm_eps": 1e-5, "rope_theta": 500_000.0, "vocab_size": vocab,
        "max_position_embeddings": 8192, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
    });
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut specs = vec![
        ("model.embed_tokens.weight".to_owned(), vec![vocab, hidden]),
        ("lm_head.weight".to_owned(), vec![vocab, hidden]),
        ("model.norm.weight".to_owned(), vec![hidden]),
    ];
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        specs.extend([
            (format!("{p}.input_layernorm.weight"), vec![hidden]),
            (format!("{p}.post_attention_layernorm.weight"), vec![hidden]),
            (
                format!("{p}.self_attn.q_proj.weight"),
                vec![heads * hd, hidden],
            ),
            (
                format!("{p}.self_attn.k_proj.weight"),
                vec![kv * hd, hidden],
            ),
            (
                format!("{p}.self_attn.v_proj.weight"),
                vec![kv * hd, hidden],
            ),
            (
                format!("{p}.self_attn.o_proj.weight"),
                vec![hidden, heads * hd],
            ),
            (format!("{p}.mlp.gate_proj.weight"), vec![ffn, hidden]),
            (format!("{p}.mlp.up_proj.weight"), vec![ffn, hidden]),
            (format!("{p}.mlp.down_proj.weight"), vec![hidden, ffn]),
        ]);
    }
    let specs: Vec<TensorSpec> = specs
        .into_iter()
        .map(|(name, shape)| TensorSpec {
            name,
            dtype: DType::BF16,
            shape,
        })
        .collect();
    let p = plan(specs, &BTreeMap::new()).unwrap();
    let f = std::io::BufWriter::new(std::fs::File::create(dir.join("model.safetensors")).unwrap());
    let mut w = Writer::new(f, p.clone()).unwrap();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for (spec, start, end) in &p.tensors {
        let bytes: Vec<u8> = (0..(end - start) / 2)
            .flat_map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                // bf16 with a small exponent range: finite, varied
                let bits = (0x3C00u16 | (state as u16 & 0x03FF)) ^ ((state >> 20) as u16 & 0x8000);
                bits.to_le_bytes()
            })
            .collect();
        w.write_tensor(&spec.name, &bytes).unwrap();
    }
    use std::io::Write;
    w.finish().unwrap().flush().unwrap();
}

/// Every file under `dir` (recursively), path relative to `dir` → contents; a single file
/// gives one entry named "".
pub fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    if dir.is_file() {
        out.insert(String::new(), std::fs::read(dir).unwrap());
        return out;
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p: PathBuf = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// SHA-256 of every file under `dir`, for checking inputs are never modified.
pub fn hashes(dir: &Path) -> BTreeMap<String, String> {
    use sha2::Digest;
    files(dir)
        .into_iter()
        .map(|(k, v)| (k, hex::encode(sha2::Sha256::digest(&v))))
        .collect()
}

/// A command line of a table entry with `{in}` and `{out}` filled in.
pub fn fill(args: &[&str], input: &Path, output: &Path) -> Vec<std::ffi::OsString> {
    args.iter()
        .map(|a| match *a {
            "{in}" => input.as_os_str().to_owned(),
            "{out}" => output.as_os_str().to_owned(),
            a => a.into(),
        })
        .collect()
}

/// Remove an output, a directory or a single file.
pub fn remove(path: &Path) {
    if path.is_dir() {
        std::fs::remove_dir_all(path).unwrap();
    } else {
        std::fs::remove_file(path).unwrap();
    }
}

/// Bytes in every file under each of `paths` (recursively; a path that does not exist, or a file
/// that vanishes while being counted, counts 0).
pub fn bytes_under(paths: &[&Path]) -> u64 {
    let mut total = 0;
    let mut stack: Vec<PathBuf> = paths.iter().map(|p| p.to_path_buf()).collect();
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.filter_map(|e| e.ok().map(|e| e.path())));
            }
        } else {
            total += meta.len();
        }
    }
    total
}

/// SIGKILL `child` once `target` bytes are under `paths` (its output and staging directory),
/// then reap it. `true` when the kill interrupted it (it died by the signal), `false` when it
/// finished first. The kill point is a quantity of work (bytes written), not a time, so a busy
/// machine that slows the child moves the kill nowhere; only this polling thread being starved
/// of CPU for as long as the child writes the rest can let the child finish first.
pub fn kill_after_bytes(child: &mut std::process::Child, paths: &[&Path], target: u64) -> bool {
    use std::os::unix::process::ExitStatusExt;
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if bytes_under(paths) >= target {
            child.kill().unwrap(); // SIGKILL on Unix
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    child.wait().unwrap().signal() == Some(9)
}
