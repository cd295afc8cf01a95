//! A reusable base forward for `verify`: what [`crate::compare`] needs of the base model,
//! stored once so that N candidates against one base cost N + 1 forwards.
//!
//! llama-perplexity's `--kl-divergence-base` file (tools/perplexity/perplexity.cpp,
//! `kl_divergence`) keeps, per scored position, the base's log-probabilities as `uint16` scaled
//! between the row's min and max plus the log-sum-exp: enough for KLD and top-1 to about 1e-4.
//! qforge stores the scored logits themselves (`f32`), so a report made from the cache is
//! byte-for-byte the report of a live base forward, and also the base's hidden state after every
//! layer, which the per-layer drift needs. Size: `chunks·(ctx/2−1)·vocab·4` bytes of logits plus
//! `layers·chunks·ctx·hidden·4` bytes of hidden states (SmolLM2-135M, 4 chunks of 512: 200 MB +
//! 141 MB).
//!
//! An entry is a directory named by the SHA-256 of its key: the format version, this crate's
//! version, the model's identity (canonical path, and each file's name, size and modification
//! time: hashing the bytes of a 400 GB checkpoint would cost a forward's worth of reading), the
//! evaluation tokens (SHA-256 of the ids, which covers text, tokenizer, ctx and chunk count), the
//! protocol (batch size, KV rounding, activation quantization, device) and the CPU features the
//! GEMM dispatches on. The key is also stored in the entry and compared on use; an entry whose
//! files do not have exactly the expected sizes is ignored and rewritten, and one whose bytes
//! differ from the SHA-256 recorded at writing (checked as they are read, at no extra pass) is
//! an error. Entries are written in a staging directory and renamed into place when complete.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::backend::Device;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::tokenize::Chunks;

/// Version of the entry layout; part of the key.
const FORMAT: u32 = 1;

/// The identity of a base forward.
#[derive(Debug, Clone)]
pub struct BaseKey {
    /// SHA-256 (hex) of `desc`'s compact JSON: the entry's directory name.
    pub hex: String,
    /// What was hashed.
    pub desc: Value,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn cpu_features() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut f = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        for (name, on) in [
            ("avx", std::arch::is_x86_feature_detected!("avx")),
            ("avx2", std::arch::is_x86_feature_detected!("avx2")),
            ("fma", std::arch::is_x86_feature_detected!("fma")),
            ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
        ] {
            if on {
                f.push(name);
            }
        }
    }
    f
}

/// The key of `model`'s forward on `chunks`, `batch` chunks at a time, on `device`.
pub fn base_key(model: &Model, chunks: &Chunks, batch: usize, device: Device) -> Result<BaseKey> {
    let mut files = Vec::new();
    for p in model.ckpt.files() {
        let m = std::fs::metadata(p).map_err(io(p))?;
        let mtime = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        files.push(json!({
            "name": p.file_name().map(|n| n.to_string_lossy().into_owned()),
            "bytes": m.len(),
            "mtime_ns": mtime.to_string(),
        }));
    }
    let path = std::fs::canonicalize(&model.ckpt.path).map_err(io(&model.ckpt.path))?;
    let mut th = Sha256::new();
    for t in &chunks.tokens {
        th.update(t.to_le_bytes());
    }
    let desc = json!({
        "format": FORMAT,
        "qforge_verify": env!("CARGO_PKG_VERSION"),
        "model": {"path": path.to_string_lossy(), "files": files},
        "tokens_sha256": hex(&th.finalize()),
        "ctx": chunks.ctx,
        "chunks": chunks.n,
        "batch_chunks": batch,
        "kv_f16": model.opts.kv_f16,
        "ggml_cpu_ops": model.opts.ggml_cpu_ops,
        "ggml_act_quant": model.opts.ggml_act_quant,
        "w8a8": model.w8a8.map(|ub| json!({"activation_scale_ub": ub})),
        "device": device.to_string(),
        "arch": std::env::consts::ARCH,
        "cpu_features": cpu_features(),
    });
    let hex = hex(&Sha256::digest(desc.to_string().as_bytes()));
    Ok(BaseKey { hex, desc })
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write as _;
    b.iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// Sizes of an entry's two data files, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// `hidden.f32`: every layer's output, batch after batch, layer after layer.
    pub hidden_bytes: u64,
    /// `logits.f32`: every chunk's scored logits, chunk after chunk.
    pub logits_bytes: u64,
}

impl Layout {
    /// The layout for `model` on `chunks` with a `vocab`-wide head.
    pub fn of(model: &Model, chunks: &Chunks, vocab: usize) -> Layout {
        let c = model.config();
        let tokens = (chunks.n * chunks.ctx) as u64;
        Layout {
            hidden_bytes: c.num_layers * tokens * c.hidden_size * 4,
            logits_bytes: (chunks.n * chunks.scored_per_chunk()) as u64 * vocab as u64 * 4,
        }
    }
}

/// One data file being written, with the SHA-256 of what went in.
struct Out {
    path: PathBuf,
    w: BufWriter<File>,
    sha: Sha256,
}

impl Out {
    fn create(path: PathBuf) -> Result<Out> {
        let f = File::create(&path).map_err(io(&path))?;
        Ok(Out {
            w: BufWriter::with_capacity(1 << 20, f),
            path,
            sha: Sha256::new(),
        })
    }

    fn put(&mut self, v: &[f32]) -> Result<()> {
        let mut bytes = Vec::with_capacity(v.len() * 4);
        for x in v {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
        self.sha.update(&bytes);
        self.w.write_all(&bytes).map_err(io(&self.path))
    }

    /// Flush and sync; the hex digest.
    fn close(&mut self) -> Result<String> {
        self.w.flush().map_err(io(&self.path))?;
        self.w.get_ref().sync_all().map_err(io(&self.path))?;
        Ok(hex(&self.sha.clone().finalize()))
    }
}

/// One data file being read back, checked against its recorded SHA-256 at the end.
struct In {
    path: PathBuf,
    r: BufReader<File>,
    sha: Sha256,
    want: String,
    buf: Vec<u8>,
}

impl In {
    fn get(&mut self, out: &mut [f32]) -> Result<()> {
        self.buf.resize(out.len() * 4, 0);
        self.r.read_exact(&mut self.buf).map_err(io(&self.path))?;
        self.sha.update(&self.buf);
        for (o, b) in out.iter_mut().zip(self.buf.chunks_exact(4)) {
            *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        Ok(())
    }

    fn check(&self) -> Result<()> {
        if hex(&self.sha.clone().finalize()) == self.want {
            return Ok(());
        }
        Err(Error::Io {
            path: self.path.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the base cache entry does not match the SHA-256 recorded when it was written \
                 (it was modified); delete its directory and run again",
            ),
        })
    }
}

/// An entry found complete: read back in the order it was written.
pub struct Reader {
    dir: PathBuf,
    hidden: In,
    logits: In,
    /// The base's evaluation seconds when the entry was made.
    pub seconds: f64,
}

/// An entry being written.
pub struct Writer {
    staging: PathBuf,
    dest: PathBuf,
    key: BaseKey,
    hidden: Out,
    logits: Out,
}

/// What [`lookup`] found.
pub enum Lookup {
    /// A complete entry.
    Hit(Reader),
    /// None (or an unusable one): write it while computing.
    Miss(Writer),
}

/// Find the entry for `key` under `root`, or prepare to write it.
pub fn lookup(root: &Path, key: &BaseKey, layout: Layout) -> Result<Lookup> {
    let dest = root.join(&key.hex);
    if let Some(r) = open_entry(&dest, key, layout) {
        return Ok(Lookup::Hit(r));
    }
    std::fs::create_dir_all(root).map_err(io(root))?;
    let staging = root.join(format!("{}.partial-{}", key.hex, std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
    }
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    Ok(Lookup::Miss(Writer {
        hidden: Out::create(staging.join("hidden.f32"))?,
        logits: Out::create(staging.join("logits.f32"))?,
        staging,
        dest,
        key: key.clone(),
    }))
}

fn open_entry(dir: &Path, key: &BaseKey, layout: Layout) -> Option<Reader> {
    let meta: Value = serde_json::from_slice(&std::fs::read(dir.join("base.json")).ok()?).ok()?;
    if meta.get("key") != Some(&key.desc) {
        return None;
    }
    let seconds = meta.get("seconds")?.as_f64()?;
    let open = |name: &str, bytes: u64| -> Option<In> {
        let path = dir.join(name);
        let f = File::open(&path).ok()?;
        if f.metadata().ok()?.len() != bytes {
            return None;
        }
        Some(In {
            r: BufReader::with_capacity(1 << 20, f),
            want: meta.get("sha256")?.get(name)?.as_str()?.to_owned(),
            path,
            sha: Sha256::new(),
            buf: Vec::new(),
        })
    };
    Some(Reader {
        hidden: open("hidden.f32", layout.hidden_bytes)?,
        logits: open("logits.f32", layout.logits_bytes)?,
        dir: dir.to_path_buf(),
        seconds,
    })
}

impl Writer {
    /// Append one layer's output of one batch.
    pub fn hidden(&mut self, h: &[f32]) -> Result<()> {
        self.hidden.put(h)
    }

    /// Append one chunk's scored logits.
    pub fn logits(&mut self, l: &[f32]) -> Result<()> {
        self.logits.put(l)
    }

    /// Complete the entry (the base took `seconds`) and move it into place. An entry another
    /// process completed first is kept (the two are identical).
    pub fn finish(mut self, seconds: f64) -> Result<PathBuf> {
        let sha = json!({"hidden.f32": self.hidden.close()?, "logits.f32": self.logits.close()?});
        let meta = json!({"key": self.key.desc, "seconds": seconds, "sha256": sha});
        let p = self.staging.join("base.json");
        let text = serde_json::to_vec_pretty(&meta).map_err(|e| Error::Io {
            path: p.clone(),
            source: e.into(),
        })?;
        std::fs::write(&p, text).map_err(io(&p))?;
        let dest = self.dest.clone();
        if dest.exists() {
            // an unusable entry (open_entry refused it)
            std::fs::remove_dir_all(&dest).map_err(io(&dest))?;
        }
        match std::fs::rename(&self.staging, &dest) {
            Ok(()) => Ok(dest),
            // another process completed the same entry first; Drop removes our copy
            Err(_) if dest.join("base.json").exists() => Ok(dest),
            Err(e) => Err(io(&dest)(e)),
        }
    }
}

impl Drop for Writer {
    /// An entry not finished (the forward failed) leaves nothing behind.
    fn drop(&mut self) {
        if self.staging.exists() {
            let _ = std::fs::remove_dir_all(&self.staging);
        }
    }
}

impl Reader {
    /// The entry's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The next layer output (`out.len()` values).
    pub fn hidden(&mut self, out: &mut [f32]) -> Result<()> {
        self.hidden.get(out)
    }

    /// The next chunk's scored logits (`n` values).
    pub fn logits(&mut self, n: usize) -> Result<Vec<f32>> {
        let mut v = vec![0f32; n];
        self.logits.get(&mut v)?;
        Ok(v)
    }

    /// After the last read: whether every byte read is what was written (the files' recorded
    /// SHA-256), so a modified entry fails instead of yielding other figures.
    pub fn check(&self) -> Result<()> {
        self.hidden.check()?;
        self.logits.check()
    }
}
