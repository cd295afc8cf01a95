//! Writing checkpoints in Hugging Face layout: `config.json`, sharded safetensors with
//! `model.safetensors.index.json`, and the conversion of any readable checkpoint into it.
//!
//! Tensors are produced one at a time (decoded, converted, permuted) and streamed into their
//! shard, so memory follows the largest tensor, not the model. Shards are planned from shapes
//! alone, so the output is deterministic and a resumed run produces the same bytes.

use std::collections::BTreeMap;
use std::path::Path;

use qforge_codecs::{encode_float, DType};
use serde_json::{json, Value};

use crate::checkpoint::{Checkpoint, Format, TensorEntry};
use crate::config::{ModelConfig, RopeScaling};
use crate::error::{Error, Result};
use crate::export_gguf::llama3_from_factors;
use crate::family::WindowRule;
use crate::names::{FfnProj, LayerTensor, Part, TensorId, TensorKey};
use crate::write::safetensors::{plan, TensorSpec, Writer};
use qforge_codecs::rope::{permute_rows_into, RopeLayout};
use qforge_stage::notes::Note;
use qforge_stage::{FileRecord, OutputDir, OutputOptions};

/// transformers' default shard size (`max_shard_size="5GB"`).
pub const DEFAULT_SHARD_SIZE: u64 = 5_000_000_000;

/// The torch dtype name transformers writes in `config.json` for a dtype.
pub fn torch_dtype_name(d: DType) -> &'static str {
    d.info().torch.unwrap_or("float32")
}

/// `config.json` for this configuration, of its family's class (transformers 4.x keys;
/// transformers 5 reads them too). The class, `model_type`, `head_dim`, bias switch and
/// sliding-window keys come from the family's row in [`crate::family::FAMILIES`].
pub fn hf_config_json(cfg: &ModelConfig, dtype: DType) -> Value {
    let spec = cfg.family.spec();
    let rope_scaling = match &cfg.rope_scaling {
        None => Value::Null,
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => json!({
            "factor": factor, "high_freq_factor": high_freq_factor, "low_freq_factor": low_freq_factor,
            "original_max_position_embeddings": original_max_position_embeddings, "rope_type": "llama3",
        }),
        Some(RopeScaling::Linear { factor }) => json!({"factor": factor, "rope_type": "linear"}),
        // what transformers writes back for Qwen2.5's `{"type": "yarn", ...}`: Qwen2Config
        // copies `type` to `rope_type` and keeps both
        Some(RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            beta_fast,
            beta_slow,
        }) => {
            let mut y = json!({
                "factor": factor, "original_max_position_embeddings": original_max_position_embeddings,
                "rope_type": "yarn", "type": "yarn",
            });
            for (k, b) in [("beta_fast", beta_fast), ("beta_slow", beta_slow)] {
                if let Some(b) = b {
                    y[k] = json!(b);
                }
            }
            y
        }
    };
    let eos = match cfg.eos_token_ids.as_slice() {
        [] => Value::Null,
        [one] => json!(one),
        many => json!(many),
    };
    let mut v = json!({
        "architectures": [spec.hf_classes[0]],
        "attention_dropout": 0.0,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": eos,
        "hidden_act": spec.activation,
        "hidden_size": cfg.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": cfg.intermediate_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        "mlp_bias": false,
        "model_type": spec.model_type,
        "num_attention_heads": cfg.num_heads,
        "num_hidden_layers": cfg.num_layers,
        "num_key_value_heads": cfg.num_kv_heads,
        "pretraining_tp": 1,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_scaling": rope_scaling,
        "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "torch_dtype": torch_dtype_name(dtype),
        "use_cache": true,
        "vocab_size": cfg.vocab_size,
    });
    let m = v.as_object_mut().expect("an object");
    if !spec.qkv_bias && cfg.family != crate::family::Family::Mixtral {
        // the classes with a bias switch (Llama, Qwen3, Qwen3-MoE) leave it off; MixtralConfig
        // has none
        m.insert("attention_bias".into(), json!(false));
    }
    if spec.hf_head_dim {
        m.insert("head_dim".into(), json!(cfg.head_dim));
    }
    if let (Some(moe), Some(ms)) = (&cfg.moe, spec.moe) {
        // MixtralConfig / Qwen3MoeConfig keys
        m.insert(ms.hf_experts_key.into(), json!(moe.num_experts));
        m.insert("num_experts_per_tok".into(), json!(moe.experts_per_tok));
        m.insert(ms.hf_expert_ffn_key.into(), json!(moe.expert_ffn));
        m.insert("output_router_logits".into(), json!(false));
        m.insert("router_aux_loss_coef".into(), json!(0.001));
        if let Some(a) = &cfg.llama4 {
            llama4_config_keys(cfg, moe, a, m);
        } else if ms.dense_layers {
            m.insert("norm_topk_prob".into(), json!(moe.norm_topk_prob));
            m.insert("decoder_sparse_step".into(), json!(1));
            m.insert("mlp_only_layers".into(), json!(moe.dense_layers));
        } else {
            m.insert("router_jitter_noise".into(), json!(0.0));
        }
        m.remove("mlp_bias");
        m.remove("pretraining_tp");
    }
    let size = cfg.sliding_window.map(|w| w.size);
    match spec.window {
        WindowRule::None => {}
        WindowRule::EveryLayer => {
            m.insert("sliding_window".into(), json!(size));
        }
        WindowRule::QwenLayers => {
            m.insert("use_sliding_window".into(), json!(size.is_some()));
            m.insert("sliding_window".into(), json!(size));
            let first = cfg.sliding_window.map_or(cfg.num_layers, |w| w.first_layer);
            m.insert("max_window_layers".into(), json!(first));
        }
    }
    v
}

/// `Llama4TextConfig`'s own keys (transformers 4.57 `configuration_llama4.py`), as
/// `save_pretrained` writes them: the dense width `intermediate_size_mlp` (`intermediate_size`
/// being one expert's), the MoE blocks, the NoPE and chunked blocks and the attention options.
fn llama4_config_keys(
    cfg: &ModelConfig,
    moe: &crate::config::MoeConfig,
    a: &crate::config::Llama4Attention,
    m: &mut serde_json::Map<String, Value>,
) {
    let n = cfg.num_layers;
    let moe_layers: Vec<u64> = (0..n).filter(|i| !moe.dense_layers.contains(i)).collect();
    let step = crate::export_gguf::llama4_moe_step(cfg);
    m.insert("intermediate_size_mlp".into(), json!(cfg.intermediate_size));
    m.insert("interleave_moe_layer_step".into(), json!(step.unwrap_or(1)));
    m.insert("moe_layers".into(), json!(moe_layers));
    let no_rope: Vec<u64> = (0..n)
        .map(|i| u64::from(!a.nope_layers.contains(&i)))
        .collect();
    m.insert("no_rope_layers".into(), json!(no_rope));
    let types: Vec<&str> = (0..n)
        .map(|i| {
            if a.chunked_layers.contains(&i) {
                "chunked_attention"
            } else {
                "full_attention"
            }
        })
        .collect();
    m.insert("layer_types".into(), json!(types));
    m.insert("attention_chunk_size".into(), json!(a.chunk_size));
    m.insert("use_qk_norm".into(), json!(a.qk_l2_norm));
    m.insert(
        "attn_temperature_tuning".into(),
        json!(a.temperature_tuning),
    );
    m.insert("floor_scale".into(), json!(a.floor_scale));
    m.insert("attn_scale".into(), json!(a.attn_scale));
    m.insert("router_jitter_noise".into(), json!(0.0));
}

/// Llama 4's fused expert tensors of block `index` from the per-expert entries `experts`
/// (expert-major, gate/up/down each): `feed_forward.experts.gate_up_proj` `[E, hidden,
/// 2·ffn]` and `feed_forward.experts.down_proj` `[E, ffn, hidden]` (transformers
/// `Llama4TextExperts`, the transpose of each expert's `[out, in]` projections, gate before
/// up), written a row block at a time from one expert's projections: memory holds one expert,
/// never the stack.
fn llama4_fused_experts<'a>(
    ckpt: &'a Checkpoint,
    index: u32,
    experts: &[&'a TensorEntry],
    dtype: DType,
) -> Result<Vec<OutTensor<'a>>> {
    let cfg = &ckpt.config;
    let (hid, ffn, n) = (
        cfg.hidden_size as usize,
        cfg.moe.as_ref().map_or(0, |m| m.expert_ffn) as usize,
        cfg.moe.as_ref().map_or(0, |m| m.num_experts) as usize,
    );
    let find = |e: usize, p: FfnProj| {
        experts
            .iter()
            .copied()
            .find(|t| {
                t.key.id
                    == TensorId::Layer {
                        index,
                        kind: LayerTensor::Expert {
                            expert: e as u32,
                            proj: p,
                        },
                    }
            })
            .ok_or_else(|| Error::NoSuchTensor(format!("block {index} expert {e} {p:?}")))
    };
    if dtype.block_size() != 1 {
        return Err(Error::UnsupportedDType {
            path: ckpt.path.clone(),
            tensor: format!("model.layers.{index}.feed_forward.experts"),
            dtype,
            reason: "Llama 4's fused experts are written as F32, F16 or BF16",
        });
    }
    let es = dtype.block_bytes() as usize;
    let mut out = Vec::new();
    for gate_up in [true, false] {
        let projs: Vec<FfnProj> = if gate_up {
            vec![FfnProj::Gate, FfnProj::Up]
        } else {
            vec![FfnProj::Down]
        };
        let per: Vec<Vec<&TensorEntry>> = (0..n)
            .map(|e| {
                projs
                    .iter()
                    .map(|&p| find(e, p))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<_>>()?;
        // rows of the fused tensor per expert, and their length
        let (rpe, row_len) = if gate_up { (hid, 2 * ffn) } else { (ffn, hid) };
        let name = format!(
            "model.layers.{index}.feed_forward.experts.{}",
            if gate_up { "gate_up_proj" } else { "down_proj" }
        );
        let shape = vec![n as u64, rpe as u64, row_len as u64];
        let cache: std::cell::RefCell<Option<(usize, Vec<Vec<u8>>)>> =
            std::cell::RefCell::default();
        let per2 = per.clone();
        let fill = move |range: std::ops::Range<usize>, buf: &mut [u8]| -> Result<()> {
            for (r, row) in range.zip(buf.chunks_exact_mut(row_len * es)) {
                let (e, j) = (r / rpe, r % rpe);
                let mut c = cache.borrow_mut();
                if c.as_ref().map(|x| x.0) != Some(e) {
                    let mut bytes = Vec::new();
                    for t in &per[e] {
                        let mut b = Vec::new();
                        tensor_bytes(ckpt, t, dtype, None, &mut b)?;
                        bytes.push(b);
                    }
                    *c = Some((e, bytes));
                }
                let b = &c.as_ref().expect("filled").1;
                if gate_up {
                    // row h: gate[:, h] then up[:, h] (each [ffn, hid] row-major)
                    for (half, src) in b.iter().enumerate() {
                        for i in 0..ffn {
                            let at = (i * hid + j) * es;
                            let to = (half * ffn + i) * es;
                            row[to..to + es].copy_from_slice(&src[at..at + es]);
                        }
                    }
                } else {
                    // row i: down[:, i] ([hid, ffn] row-major)
                    for h in 0..hid {
                        let at = (h * ffn + j) * es;
                        row[h * es..(h + 1) * es].copy_from_slice(&b[0][at..at + es]);
                    }
                }
            }
            Ok(())
        };
        out.push(OutTensor {
            spec: TensorSpec { name, dtype, shape },
            produce: Producer::Rows(RowProducer {
                row_bytes: row_len * es,
                fill: Box::new(fill),
                done: Box::new(move || {
                    for t in per2.iter().flatten() {
                        ckpt.release(t);
                    }
                }),
            }),
        });
    }
    Ok(out)
}

/// `t` written as itself under its HF name, as `dtype`.
fn plain_out<'a>(
    ckpt: &'a Checkpoint,
    t: &'a TensorEntry,
    dtype: DType,
    rope: Option<RopeLayout>,
) -> OutTensor<'a> {
    let name = (ckpt.config.family.hf_name(t.key)).unwrap_or_else(|| t.name.clone());
    OutTensor {
        spec: TensorSpec {
            name,
            dtype,
            shape: t.shape.clone(),
        },
        produce: copy_rows(ckpt, t, dtype, rope).unwrap_or_else(|| {
            Producer::Whole(Box::new(move |buf: &mut Vec<u8>| {
                tensor_bytes(ckpt, t, dtype, rope, buf)
            }))
        }),
    }
}

/// Makes a whole tensor's bytes into the (empty) buffer it is given.
pub type WholeFn<'a> = Box<dyn Fn(&mut Vec<u8>) -> Result<()> + 'a>;

/// A [`WholeFn`] that may run on another thread, ahead of the write order.
pub type AheadFn<'a> = Box<dyn Fn(&mut Vec<u8>) -> Result<()> + Send + Sync + 'a>;

/// Makes output rows `range` into a slice of exactly `range.len() * row_bytes` bytes.
pub type FillFn<'a> = Box<dyn Fn(std::ops::Range<usize>, &mut [u8]) -> Result<()> + 'a>;

/// How an output tensor's bytes are made.
pub enum Producer<'a> {
    /// The whole tensor at once, into the buffer it is given.
    Whole(WholeFn<'a>),
    /// Row block by row block (see [`RowProducer`]).
    Rows(RowProducer<'a>),
    /// The whole tensor, small and computed from the source alone (e.g. FP8 row scales, which
    /// the file order puts before their codes): a helper thread makes these in write order
    /// ahead of the writer, so their reading of the source overlaps the hashing and writing of
    /// the large tensors before them (at most [`AHEAD_TENSORS`] held).
    Ahead(AheadFn<'a>),
}

/// How many [`Producer::Ahead`] results may wait for the writer.
pub const AHEAD_TENSORS: usize = 64;

/// Makes a 2-D tensor's bytes a block of rows at a time. The writer makes the next block
/// while a second thread hashes and writes the previous one (see [`write_rows`]), so the
/// compute overlaps the output and only two blocks are ever held, not the tensor.
pub struct RowProducer<'a> {
    /// Bytes per output row (the tensor's size is a whole number of rows).
    pub row_bytes: usize,
    /// Makes a block of rows (see [`FillFn`]).
    pub fill: FillFn<'a>,
    /// Runs once after the last block, written or not (releases the source's mapped pages).
    pub done: Box<dyn Fn() + 'a>,
}

/// Bytes per row block of a [`RowProducer`]: small enough that a block is still in the CPU's
/// caches when it is hashed and written, large enough to feed every thread.
pub const ROW_BLOCK_BYTES: usize = 4 << 20;

/// The two row blocks a streamed tensor holds while it is copied or converted (see
/// [`streams`]): what a writer keeps resident instead of the tensor's output bytes.
pub const STREAMED_BYTES: u64 = 2 * ROW_BLOCK_BYTES as u64;

/// Whether the writers make `t` a row block at a time (a 2-D plain float tensor stored
/// contiguously): then [`STREAMED_BYTES`] are held instead of its output bytes.
pub fn streams(t: &TensorEntry) -> bool {
    t.shape.len() == 2
        && matches!(t.dtype, DType::BF16 | DType::F16 | DType::F32)
        && matches!(t.layout, crate::TensorLayout::Contiguous(_))
}

/// Bytes of a source tensor resident while a writer works on it: the mapped pages (released
/// shard by shard in a dim-0 model-parallel merge, else at the end) plus, for a merged or
/// strided tensor, the gathered copy (BENCHMARKS.md, "Plan").
pub fn source_resident(t: &TensorEntry) -> u64 {
    use crate::TensorLayout;
    let n = t.nbytes();
    match &t.layout {
        TensorLayout::Contiguous(_) => n,
        TensorLayout::Concat { dim: 0, parts } => {
            let esize = t.dtype.block_bytes();
            let shard = parts
                .iter()
                .map(|(s, _)| s.iter().product::<u64>() * esize)
                .max()
                .unwrap_or(n);
            n + shard
        }
        _ => 2 * n,
    }
}

/// A tensor to write and how to make its bytes.
pub struct OutTensor<'a> {
    /// Name, dtype and shape in the output.
    pub spec: TensorSpec,
    /// Makes the bytes (exactly the spec's size).
    pub produce: Producer<'a>,
}

/// Shard `tensors` (in the given order) into files of at most `shard_size` bytes of tensor data
/// (a tensor larger than that gets a shard of its own), as transformers does.
fn shard(tensors: Vec<OutTensor<'_>>, shard_size: u64) -> Vec<Vec<OutTensor<'_>>> {
    let mut shards: Vec<Vec<OutTensor<'_>>> = Vec::new();
    let mut current = 0u64;
    for t in tensors {
        let size = t
            .spec
            .dtype
            .bytes_for(t.spec.shape.iter().product())
            .unwrap_or(0);
        if shards.is_empty() || (current + size > shard_size && current > 0) {
            shards.push(Vec::new());
            current = 0;
        }
        current += size;
        if let Some(s) = shards.last_mut() {
            s.push(t);
        }
    }
    shards
}

/// Write `tensors` as HF safetensors shards (plus index when there is more than one) into the
/// staging directory of `out`. Shards already finished by an interrupted run are skipped.
pub fn write_safetensors_shards(
    out: &mut OutputDir,
    tensors: Vec<OutTensor<'_>>,
    shard_size: u64,
) -> Result<Vec<FileRecord>> {
    let shards = shard(tensors, shard_size.max(1));
    let n = shards.len();
    let names: Vec<String> = (1..=n)
        .map(|i| {
            if n == 1 {
                "model.safetensors".to_owned()
            } else {
                format!("model-{i:05}-of-{n:05}.safetensors")
            }
        })
        .collect();
    let meta: BTreeMap<String, String> = [("format".to_owned(), "pt".to_owned())].into();
    let mut weight_map = BTreeMap::new();
    let mut total = 0u64;
    let mut records = Vec::new();
    for (name, tensors) in names.iter().zip(shards) {
        let specs: Vec<TensorSpec> = tensors.iter().map(|t| t.spec.clone()).collect();
        for s in &specs {
            weight_map.insert(s.name.clone(), name.clone());
            total += s.dtype.bytes_for(s.shape.iter().product()).unwrap_or(0);
        }
        if let Some(r) = out.finished(name) {
            records.push(r.clone());
            continue;
        }
        let p = plan(specs, &meta)?;
        if out.is_dry_run() {
            let data = p.tensors.last().map_or(0, |t| t.2);
            records.push(out.finish_planned(name, p.file_size(), data));
            continue;
        }
        let by_name: BTreeMap<String, OutTensor<'_>> = tensors
            .into_iter()
            .map(|t| (t.spec.name.clone(), t))
            .collect();
        // the Ahead producers, in write order
        let ahead: Vec<&AheadFn<'_>> = p
            .tensors
            .iter()
            .filter_map(|(spec, _, _)| match &by_name.get(&spec.name)?.produce {
                Producer::Ahead(f) => Some(f),
                _ => None,
            })
            .collect();
        let file = out.create(name)?;
        let path = file.path().to_owned();
        let mut w = Writer::new(file, p).map_err(|e| Error::io(&path, e))?;
        let file = std::thread::scope(|scope| -> Result<_> {
            // The helper makes the Ahead tensors in write order; the writer takes them in the
            // same order. If the writer stops early, dropping the receiver ends the helper.
            let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<u8>>>(AHEAD_TENSORS);
            if !ahead.is_empty() {
                scope.spawn(move || {
                    for f in ahead {
                        let mut b = Vec::new();
                        let r = f(&mut b).map(|()| b);
                        let failed = r.is_err();
                        if tx.send(r).is_err() || failed {
                            return;
                        }
                    }
                });
            }
            let mut buf = Vec::new();
            let written = (|| -> Result<()> {
                while let Some(tname) = w.next_name().map(str::to_owned) {
                    let t = by_name
                        .get(&tname)
                        .ok_or_else(|| Error::NoSuchTensor(tname.clone()))?;
                    match &t.produce {
                        Producer::Whole(produce) => {
                            reset_buffer(&mut buf);
                            produce(&mut buf)?;
                            w.write_tensor(&tname, &buf)
                                .map_err(|e| Error::io(&path, e))?;
                        }
                        Producer::Rows(rows) => write_rows(&mut w, &tname, rows, &path)?,
                        Producer::Ahead(_) => {
                            let b = rx.recv().map_err(|_| {
                                Error::io(&path, std::io::Error::other("ahead producer stopped"))
                            })??;
                            w.write_tensor(&tname, &b)
                                .map_err(|e| Error::io(&path, e))?;
                        }
                    }
                }
                Ok(())
            })();
            drop(rx);
            written?;
            w.finish().map_err(|e| Error::io(&path, e))
        })?;
        records.push(out.finish(file)?);
    }
    if n > 1 && out.finished(crate::hf::INDEX_FILE).is_none() {
        let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        let mut text = serde_json::to_vec_pretty(&index)
            .map_err(|e| Error::io(out.staging(), std::io::Error::other(e)))?;
        text.push(b'\n');
        records.push(out.write_file(crate::hf::INDEX_FILE, &text)?);
    }
    Ok(records)
}

/// Write the next tensor of `w`, `name`, from `p` a row block at a time: this thread makes
/// block i+1 while a scoped writer thread hashes and writes block i. Two block buffers go back
/// and forth between them, so memory is two blocks whatever the tensor's size, and the bytes
/// written are the same as making the whole tensor first (blocks are written in order).
fn write_rows<W: std::io::Write + Send>(
    w: &mut Writer<W>,
    name: &str,
    p: &RowProducer<'_>,
    path: &Path,
) -> Result<()> {
    let io = |e| Error::io(path, e);
    let len = w.begin_tensor(name).map_err(io)?;
    let row_bytes = p.row_bytes.max(1);
    let len = usize::try_from(len).map_err(|_| io(std::io::Error::other("tensor too large")))?;
    if len % row_bytes != 0 {
        return Err(io(std::io::Error::other(format!(
            "tensor {name:?}: {len} bytes is not a whole number of {row_bytes}-byte rows"
        ))));
    }
    let rows = len / row_bytes;
    let block = (ROW_BLOCK_BYTES / row_bytes).max(1);
    // rendezvous: a block is handed over only when the writer has finished the previous one
    let (to_writer, blocks) = std::sync::mpsc::sync_channel::<Vec<u8>>(0);
    let (give_back, returned) = std::sync::mpsc::channel::<Vec<u8>>();
    let (made, written) = std::thread::scope(|s| {
        let w = &mut *w;
        let writer = s.spawn(move || -> std::io::Result<()> {
            for b in blocks {
                w.write_part(&b)?;
                let _ = give_back.send(b);
            }
            Ok(())
        });
        let mut buffers = 0;
        let mut made = Ok(());
        for start in (0..rows).step_by(block) {
            let end = (start + block).min(rows);
            let mut b = match returned.try_recv() {
                Ok(b) => b,
                Err(_) if buffers < 2 => {
                    buffers += 1;
                    Vec::new()
                }
                Err(_) => match returned.recv() {
                    Ok(b) => b,
                    Err(_) => break, // the writer stopped: its error is reported below
                },
            };
            b.resize((end - start) * row_bytes, 0);
            if let Err(e) = (p.fill)(start..end, &mut b) {
                made = Err(e);
                break;
            }
            if to_writer.send(b).is_err() {
                break;
            }
        }
        drop(to_writer);
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the writer thread panicked")));
        (made, written)
    });
    (p.done)();
    made?;
    written.map_err(io)?;
    w.end_tensor().map_err(io)
}

/// Canonical HF order: embeddings, each layer's tensors, final norm, LM head.
pub fn hf_order(key: &TensorKey) -> (u32, u32, u32) {
    let kind_rank = |k: LayerTensor| match k {
        // transformers' module registration order (`Qwen3Attention`: q, k, v, o, q_norm,
        // k_norm; a bias right after its weight)
        LayerTensor::Q => 0,
        LayerTensor::QBias => 1,
        LayerTensor::K => 2,
        LayerTensor::KBias => 3,
        LayerTensor::V => 4,
        LayerTensor::VBias => 5,
        LayerTensor::O => 6,
        LayerTensor::QNorm => 7,
        LayerTensor::KNorm => 8,
        LayerTensor::Gate => 9,
        LayerTensor::Up => 10,
        LayerTensor::Down => 11,
        // a MoE block: router, then each expert's projections (MixtralSparseMoeBlock,
        // Qwen3MoeSparseMoeBlock: `gate`, then `experts`)
        LayerTensor::Router => 12,
        // Llama4TextMoe: experts, router, shared_expert
        LayerTensor::SharedExpert { proj } => 13 + proj as u32,
        LayerTensor::Expert { expert, proj } => 16 + 3 * expert.min(1 << 20) + proj as u32,
        LayerTensor::AttnNorm => u32::MAX - 1,
        LayerTensor::FfnNorm => u32::MAX,
    };
    match key.id {
        TensorId::TokenEmbedding => (0, 0, 0),
        TensorId::Layer { index, kind } => (1 + index, kind_rank(kind), key.part as u32),
        TensorId::OutputNorm => (u32::MAX - 1, 0, 0),
        TensorId::Output => (u32::MAX, 0, 0),
        TensorId::RopeFreqs => (u32::MAX, 1, 0),
    }
}

/// How the source stores Q/K rows relative to HF.
pub fn rope_direction(cfg: &ModelConfig, from: Format, to: Format) -> Option<RopeLayout> {
    let f = cfg.family;
    match (f.half_split_rope(from), f.half_split_rope(to)) {
        (false, true) => Some(RopeLayout::ToHf),
        (true, false) => Some(RopeLayout::FromHf),
        _ => None,
    }
}

/// Number of heads whose rows a Q or K tensor holds, if it is one.
pub fn rope_heads(cfg: &ModelConfig, key: TensorKey) -> Option<usize> {
    match key.id {
        TensorId::Layer {
            kind: LayerTensor::Q,
            ..
        } => Some(cfg.num_heads as usize),
        TensorId::Layer {
            kind: LayerTensor::K,
            ..
        } => Some(cfg.num_kv_heads as usize),
        _ => None,
    }
}

/// Largest per-tensor buffer kept between tensors by the writers (64 MiB).
const RETAINED_BUFFER: usize = 64 << 20;

/// Empty the writers' per-tensor buffer for the next tensor. A buffer the size of a big tensor
/// is given back rather than kept: the next big tensor gathers into a fresh buffer of its own
/// (or is moved in), and holding both would make peak memory twice the largest tensor.
pub fn reset_buffer(buf: &mut Vec<u8>) {
    if buf.capacity() > RETAINED_BUFFER {
        *buf = Vec::new();
    } else {
        buf.clear();
    }
}

/// The bytes of `t` in `dtype` (converted through f32 when it differs), with Q/K rows permuted
/// in direction `rope` when given.
pub fn tensor_bytes(
    ckpt: &Checkpoint,
    t: &TensorEntry,
    dtype: DType,
    rope: Option<RopeLayout>,
    out: &mut Vec<u8>,
) -> Result<()> {
    let src = ckpt.bytes(t)?;
    let heads = rope.zip(rope_heads(&ckpt.config, t.key));
    let hd = ckpt.config.head_dim as usize;
    let rows = t.shape.first().copied().unwrap_or(0) as usize;
    match (dtype == t.dtype, heads) {
        (true, Some((dir, h))) => permute_rows_into(&src, h, hd, src.len() / rows.max(1), dir, out),
        // An owned (gathered) buffer is moved, not copied, into an empty `out`.
        (true, None) if out.is_empty() => *out = src.into_owned(),
        (true, None) => out.extend_from_slice(&src),
        (false, Some((dir, h))) => {
            let mut converted = Vec::new();
            convert_into(ckpt, t, &src, dtype, &mut converted)?;
            permute_rows_into(&converted, h, hd, converted.len() / rows.max(1), dir, out);
        }
        (false, None) => convert_into(ckpt, t, &src, dtype, out)?,
    }
    ckpt.release(t);
    Ok(())
}

/// A row-block producer copying `t` unchanged (Q/K rows permuted in direction `rope`), when
/// it can stream: a 2-D tensor stored contiguously in `dtype` already. `None` otherwise (a
/// conversion, or a strided or model-parallel source, which is gathered once, whole).
pub fn copy_rows<'a>(
    ckpt: &'a Checkpoint,
    t: &'a TensorEntry,
    dtype: DType,
    rope: Option<RopeLayout>,
) -> Option<Producer<'a>> {
    if t.dtype != dtype
        || t.shape.len() != 2
        || !matches!(t.layout, crate::checkpoint::TensorLayout::Contiguous(_))
    {
        return None;
    }
    let src = ckpt.bytes(t).ok()?;
    let std::borrow::Cow::Borrowed(src) = src else {
        return None;
    };
    let row_bytes = usize::try_from(t.shape[1]).ok()? * dtype.block_bytes() as usize;
    let heads = rope.zip(rope_heads(&ckpt.config, t.key));
    let hd = ckpt.config.head_dim as usize;
    Some(Producer::Rows(RowProducer {
        row_bytes,
        fill: Box::new(move |range, out| {
            let short = || Error::ShapeMismatch {
                path: ckpt.path.clone(),
                tensor: t.name.clone(),
                expected: t.shape.clone(),
                got: vec![(src.len() / row_bytes.max(1)) as u64],
            };
            let rows = |a: usize, b: usize| src.get(a * row_bytes..b * row_bytes).ok_or_else(short);
            match heads {
                Some((dir, _)) => {
                    for (r, o) in range.zip(out.chunks_exact_mut(row_bytes.max(1))) {
                        let s = qforge_codecs::rope::source_row(r, hd, dir);
                        o.copy_from_slice(rows(s, s + 1)?);
                    }
                }
                None => out.copy_from_slice(rows(range.start, range.end)?),
            }
            Ok(())
        }),
        done: Box::new(move || ckpt.release(t)),
    }))
}

/// Decode `src` (all of `t`'s bytes) and re-encode it as `dtype`, appending to `out`, a chunk
/// of about a million elements at a time so no whole-tensor f32 copy is ever held.
fn convert_into(
    ckpt: &Checkpoint,
    t: &TensorEntry,
    src: &[u8],
    dtype: DType,
    out: &mut Vec<u8>,
) -> Result<()> {
    let block = t.dtype.block_size() as usize;
    let block_bytes = t.dtype.block_bytes() as usize;
    let blocks_per_chunk = ((1usize << 20) / block).max(1);
    let mut values = vec![0f32; blocks_per_chunk * block];
    out.reserve(usize::try_from(t.numel()).unwrap_or(0) * dtype.block_bytes() as usize);
    for chunk in src.chunks(blocks_per_chunk * block_bytes) {
        let n = chunk.len() / block_bytes * block;
        let vals = &mut values[..n];
        qforge_codecs::decode_to_f32(t.dtype, chunk, vals).map_err(|source| Error::Codec {
            path: ckpt.path.clone(),
            tensor: t.name.clone(),
            source,
        })?;
        encode_float(vals, dtype, out).ok_or_else(|| Error::UnsupportedDType {
            path: ckpt.path.clone(),
            tensor: t.name.clone(),
            dtype,
            reason: "conversion targets are F32, F16 and BF16",
        })?;
    }
    Ok(())
}

/// The source's tokenizer in its GGUF view: GGUF metadata, an HF `tokenizer.json`, or a Meta
/// tiktoken `tokenizer.model` (Llama 3.1 special-token names when the config has Llama 3.1
/// rope scaling, Llama 3 names otherwise). `None` when the source has none.
pub fn source_vocab(ckpt: &Checkpoint) -> Result<Option<crate::tokenizer::Vocab>> {
    use crate::tokenizer::{llama3_special_tokens, Llama3Specials, Vocab};
    if let Some(meta) = &ckpt.gguf {
        if meta.get("tokenizer.ggml.model").is_none() {
            return Ok(None);
        }
        return Vocab::from_gguf(meta).map(Some);
    }
    let dir = ckpt.dir();
    match ckpt.format {
        Format::Hf if dir.join("tokenizer.json").is_file() => {
            Vocab::from_tokenizer_json(dir, None).map(Some)
        }
        Format::Meta if dir.join("tokenizer.model").is_file() => {
            let path = dir.join("tokenizer.model");
            if !crate::meta_tokenizer::is_tiktoken_file(&path)? {
                // Llama 1/2: a SentencePiece model
                return crate::meta_tokenizer::meta_sentencepiece_vocab(&path).map(Some);
            }
            let version = if matches!(ckpt.config.rope_scaling, Some(RopeScaling::Llama3 { .. })) {
                Llama3Specials::V3_1
            } else {
                Llama3Specials::V3
            };
            let specials = llama3_special_tokens(version);
            let path = dir.join("tokenizer.model");
            let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
            // Only a full Llama 3 vocabulary (128,000 ranks) takes the 256 specials.
            let ranks = bytes
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .count();
            let specials: &[String] = if ranks == 128_000 { &specials } else { &[] };
            Vocab::from_tiktoken(&bytes, specials).map(Some)
        }
        _ => Ok(None),
    }
}

/// Options for [`convert_to_hf`].
#[derive(Debug, Clone, Copy)]
pub struct HfOptions {
    /// Output dtype for every tensor; `None` keeps float tensors as they are and decodes
    /// quantized ones to F32 (exact).
    pub dtype: Option<DType>,
    /// Largest shard, in bytes of tensor data.
    pub shard_size: u64,
    /// Resume / overwrite policy.
    pub output: OutputOptions,
}

/// What a conversion wrote.
#[derive(Debug, Clone)]
pub struct Written {
    /// Files with sizes and hashes.
    pub files: Vec<FileRecord>,
    /// Files kept from an interrupted run.
    pub resumed: Vec<String>,
    /// Things the user should know, classified by what they cost (see [`crate::notes`]).
    pub notes: Vec<Note>,
}

/// The RoPE scaling an output that computes its frequencies from its config (HF, Meta) must
/// say to compute what the source computes, and what writing it costs. A GGUF source carries
/// Llama 3.1 scaling only as `rope_freqs.weight` (llama.cpp's `freq_factors`; its converter,
/// `LlamaModel.generate_extra_tensors` in `convert_hf_to_gguf.py`, writes no scaling keys):
/// the scaling is recovered from those factors ([`llama3_from_factors`]); factors that are not
/// Llama 3.1 scaling cannot be said in a config and changing them changes the math.
pub fn target_rope_scaling(
    ckpt: &Checkpoint,
    target: &str,
) -> Result<(Option<RopeScaling>, Vec<Note>)> {
    let cfg = &ckpt.config;
    let Some(t) = ckpt.tensor_by_key(TensorKey::weight(TensorId::RopeFreqs)) else {
        return Ok((cfg.rope_scaling.clone(), Vec::new()));
    };
    let factors = ckpt.to_f32(t)?;
    ckpt.release(t);
    let unscaled = factors.iter().all(|&f| f == 1.0);
    let from_config = crate::export_gguf::llama3_rope_factors(cfg);
    if from_config.as_deref() == Some(&factors[..]) || (unscaled && cfg.rope_scaling.is_none()) {
        let why = format!(
            "{} not written: {target} computes the same rope frequencies from its config",
            t.name
        );
        return Ok((cfg.rope_scaling.clone(), vec![Note::lossless(why)]));
    }
    if cfg.rope_scaling.is_none() {
        if let Some(s) = llama3_from_factors(cfg.rope_theta, cfg.head_dim, &factors, None) {
            let why = format!(
                "{} not written: its factors are Llama 3.1 scaling, written to the config as {s:?} (the same frequencies)",
                t.name
            );
            return Ok((Some(s), vec![Note::lossless(why)]));
        }
    }
    let what = format!(
        "{} (per-frequency RoPE factors {:?}…) is not Llama 3.1 scaling qforge can write to {target} alongside {:?}: the output would rotate with other frequencies",
        t.name,
        &factors[..factors.len().min(4)],
        cfg.rope_scaling
    );
    Ok((
        cfg.rope_scaling.clone(),
        vec![Note::changes_math(
            what,
            "keep the GGUF file, or convert from the original HF or Meta checkpoint",
        )],
    ))
}

/// Whether the output may drop `output.weight` and tie it to the embedding: the source does
/// not say it is tied (Meta files always carry `output.weight`, qforge's Meta export writes a
/// copy of a tied embedding), and the two tensors are identical (dtype, shape and every byte).
/// An HF source is kept as it says.
pub(crate) fn retie(ckpt: &Checkpoint) -> Result<Option<Note>> {
    if ckpt.format == Format::Hf || ckpt.config.tie_word_embeddings {
        return Ok(None);
    }
    let (Some(out), Some(emb)) = (
        ckpt.tensor_by_key(TensorKey::weight(TensorId::Output)),
        ckpt.tensor_by_key(TensorKey::weight(TensorId::TokenEmbedding)),
    ) else {
        return Ok(None);
    };
    if out.dtype != emb.dtype || out.shape != emb.shape {
        return Ok(None);
    }
    let same = ckpt.bytes(out)? == ckpt.bytes(emb)?;
    ckpt.release(out);
    ckpt.release(emb);
    Ok(same.then(|| {
        Note::lossless(format!(
            "{} equals {} bit for bit: written as tied embeddings",
            out.name, emb.name
        ))
    }))
}

/// Convert any checkpoint to a Hugging Face directory at `dest`.
pub fn convert_to_hf(ckpt: &Checkpoint, dest: &Path, opts: HfOptions) -> Result<Written> {
    let mut notes = qforge_stage::notes::from_reading(&ckpt.notes);
    let rope = rope_direction(&ckpt.config, ckpt.format, Format::Hf);
    let mut config = ckpt.config.clone();
    let (rope_scaling, rope_notes) = target_rope_scaling(ckpt, "config.json")?;
    config.rope_scaling = rope_scaling;
    notes.extend(rope_notes);
    let tied = retie(ckpt)?;
    if let Some(n) = tied {
        config.tie_word_embeddings = true;
        notes.push(n);
    }
    if !has_tokenizer(ckpt) {
        notes.push(Note::lossless("the source has no tokenizer: none written"));
    }
    let mut entries: Vec<&TensorEntry> = Vec::new();
    for t in &ckpt.tensors {
        if t.key.part != Part::Weight {
            return Err(Error::UnsupportedDType {
                path: ckpt.path.clone(),
                tensor: t.name.clone(),
                dtype: t.dtype,
                reason: "quantized HF checkpoints must be dequantized before conversion",
            });
        }
        if t.key.id == TensorId::RopeFreqs
            || (config.tie_word_embeddings && t.key.id == TensorId::Output)
        {
            continue;
        }
        entries.push(t);
    }
    entries.sort_by_key(|t| hf_order(&t.key));
    let out_dtype = |t: &TensorEntry| match opts.dtype {
        Some(d) => d,
        None if matches!(t.dtype, DType::F32 | DType::F16 | DType::BF16) => t.dtype,
        None => DType::F32,
    };
    if !opts.output.dry_run {
        let narrowed = entries.iter().map(|&t| (t, out_dtype(t)));
        notes.extend(crate::narrow::narrowing_note(ckpt, narrowed)?);
    }
    qforge_stage::notes::gate(&notes, opts.output.allow_lossy)?;
    let main_dtype = opts.dtype.unwrap_or_else(|| {
        let mut h: BTreeMap<DType, u64> = BTreeMap::new();
        for t in &entries {
            *h.entry(out_dtype(t)).or_default() += t.numel();
        }
        h.into_iter()
            .max_by_key(|(_, n)| *n)
            .map_or(DType::BF16, |(d, _)| d)
    });
    // Llama 4: each block's experts become its two fused tensors, where its first expert was
    let mut fused: Vec<OutTensor<'_>> = Vec::new();
    if config.llama4.is_some() {
        let mut by_layer: BTreeMap<u32, Vec<&TensorEntry>> = BTreeMap::new();
        for &t in &entries {
            if let TensorId::Layer {
                index,
                kind: LayerTensor::Expert { .. },
            } = t.key.id
            {
                by_layer.entry(index).or_default().push(t);
            }
        }
        for (index, ex) in by_layer {
            let dtype = ex.first().map_or(DType::BF16, |t| out_dtype(t));
            fused.extend(llama4_fused_experts(ckpt, index, &ex, dtype)?);
        }
    }
    let mut fused = fused.into_iter();
    let tensors: Vec<OutTensor<'_>> = entries
        .iter()
        .filter_map(|&t| match t.key.id {
            TensorId::Layer {
                kind: LayerTensor::Expert { expert, proj },
                ..
            } if config.llama4.is_some() => {
                // the block's two fused tensors in place of its expert 0's gate and up
                (expert == 0 && proj != FfnProj::Down)
                    .then(|| fused.next())
                    .flatten()
            }
            _ => Some(plain_out(ckpt, t, out_dtype(t), rope)),
        })
        .collect();
    let mut out = OutputDir::begin(dest, opts.output)?;
    let resumed = out.resumed.clone();
    write_safetensors_shards(&mut out, tensors, opts.shard_size)?;
    let config = hf_config_json(&config, main_dtype);
    let mut text = serde_json::to_vec_pretty(&config)
        .map_err(|e| Error::io(dest, std::io::Error::other(e)))?;
    text.push(b'\n');
    out.write_file("config.json", &text)?;
    write_hf_side_files(ckpt, &mut out)?;
    // No paths or times in the manifest: the same input gives the same bytes wherever it lives.
    let mut extra = qforge_stage::notes::record(&notes);
    extra.insert("source_format".into(), json!(ckpt.format));
    let files = out.commit(extra)?;
    Ok(Written {
        files,
        resumed,
        notes,
    })
}

/// The model card's front matter keys qforge carries between formats: `model_name` and
/// `license`. From a GGUF source, its `general.name` and `general.license`; from an HF source,
/// the YAML front matter of its `README.md` (as llama.cpp's gguf-py reads a model card:
/// `Metadata.load` in gguf-py/gguf/metadata.py takes `model_name` and `license` from it).
pub fn model_card_fields(ckpt: &Checkpoint) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if let Some(m) = &ckpt.gguf {
        for (key, field) in [
            ("general.name", "model_name"),
            ("general.license", "license"),
        ] {
            if let Some(v) = m.get(key).and_then(crate::gguf::GgufValue::as_str) {
                out.push((field, v.to_owned()));
            }
        }
    } else if ckpt.format == Format::Hf {
        let card = std::fs::read_to_string(ckpt.dir().join("README.md")).unwrap_or_default();
        let mut lines = card.lines();
        if lines.next().map(str::trim_end) == Some("---") {
            for l in lines.take_while(|l| l.trim_end() != "---") {
                if let Some((k, v)) = l.split_once(':') {
                    let v = v.trim().trim_matches(|c| c == '"' || c == '\'');
                    for field in ["model_name", "license"] {
                        if k.trim() == field && !v.is_empty() {
                            out.push((field, v.to_owned()));
                        }
                    }
                }
            }
        }
    }
    out
}

/// A model card (`README.md`) for an HF output of a non-HF source that has a name or license:
/// YAML front matter with both (quoted), then the name as its title.
fn model_card(fields: &[(&str, String)]) -> Option<Vec<u8>> {
    use std::fmt::Write as _;
    if fields.is_empty() {
        return None;
    }
    let mut card = String::from("---\n");
    for (k, v) in fields {
        let quoted = serde_json::to_string(v).unwrap_or_default();
        let _ = writeln!(card, "{k}: {quoted}");
    }
    card.push_str("---\n");
    if let Some((_, name)) = fields.iter().find(|(k, _)| *k == "model_name") {
        let _ = write!(card, "\n# {name}\n");
    }
    Some(card.into_bytes())
}

/// Tokenizer and generation files of an HF output: carried over unchanged from an HF source,
/// converted from the source's tokenizer otherwise.
pub fn write_hf_side_files(ckpt: &Checkpoint, out: &mut OutputDir) -> Result<()> {
    if ckpt.format == Format::Hf {
        // Carry tokenizer and generation files over unchanged.
        let dir = ckpt.dir();
        for name in [
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "generation_config.json",
            "chat_template.jinja",
            "tokenizer.model",
            "README.md",
        ] {
            let p = dir.join(name);
            if p.is_file() {
                let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
                out.write_file(name, &bytes)?;
            }
        }
    } else if let Some(vocab) = source_vocab(ckpt)? {
        for (name, bytes) in vocab.hf_files()? {
            if out.finished(name).is_none() {
                out.write_file(name, &bytes)?;
            }
        }
        if let Some(card) = model_card(&model_card_fields(ckpt)) {
            if out.finished("README.md").is_none() {
                out.write_file("README.md", &card)?;
            }
        }
        // transformers' `GenerationConfig.from_model_config` (generation/configuration_utils.py):
        // the special token ids of the model config, which generate() reads from here
        let c = &ckpt.config;
        if out.finished("generation_config.json").is_none()
            && (c.bos_token_id.is_some() || !c.eos_token_ids.is_empty())
        {
            let mut g = serde_json::Map::new();
            g.insert("_from_model_config".into(), json!(true));
            if let Some(b) = c.bos_token_id {
                g.insert("bos_token_id".into(), json!(b));
            }
            match c.eos_token_ids.as_slice() {
                [] => {}
                [one] => {
                    g.insert("eos_token_id".into(), json!(one));
                }
                many => {
                    g.insert("eos_token_id".into(), json!(many));
                }
            }
            let mut text = serde_json::to_vec_pretty(&serde_json::Value::Object(g))
                .map_err(|e| Error::io(out.staging(), std::io::Error::other(e)))?;
            text.push(b'\n');
            out.write_file("generation_config.json", &text)?;
        }
    }
    Ok(())
}

/// Whether the source has a tokenizer (GGUF `tokenizer.ggml.*` keys, an HF `tokenizer.json`,
/// a Meta `tokenizer.model`).
pub(crate) fn has_tokenizer(ckpt: &Checkpoint) -> bool {
    match ckpt.format {
        Format::Hf => ckpt.dir().join("tokenizer.json").is_file(),
        Format::Meta => ckpt.dir().join("tokenizer.model").is_file(),
        Format::Gguf => ckpt
            .gguf
            .as_ref()
            .is_some_and(|m| m.get("tokenizer.ggml.model").is_some()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` F32 values made from `name`.
    fn bytes_of(name: &str, n: usize) -> Vec<u8> {
        let seed = name
            .bytes()
            .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
        (0..n as u32)
            .flat_map(|i| (seed.wrapping_mul(i + 1) as f32).to_le_bytes())
            .collect()
    }

    /// Write `tensors` (name, values, made ahead?, fails?) into `dest`; the file's bytes.
    fn write(dest: &Path, tensors: &[(String, usize, bool, bool)]) -> Result<Vec<u8>> {
        let out_tensors = tensors
            .iter()
            .map(|(name, n, ahead, fails)| {
                let (b, fails, name2) = (bytes_of(name, *n), *fails, name.clone());
                let make = move |buf: &mut Vec<u8>| {
                    if fails {
                        return Err(Error::NoSuchTensor(format!("{name2} failed")));
                    }
                    buf.extend_from_slice(&b);
                    Ok(())
                };
                OutTensor {
                    spec: TensorSpec {
                        name: name.clone(),
                        dtype: DType::F32,
                        shape: vec![*n as u64],
                    },
                    produce: if *ahead {
                        Producer::Ahead(Box::new(make))
                    } else {
                        Producer::Whole(Box::new(make))
                    },
                }
            })
            .collect();
        let mut out = OutputDir::begin(dest, OutputOptions::default())?;
        write_safetensors_shards(&mut out, out_tensors, u64::MAX)?;
        out.commit(serde_json::Map::new())?;
        Ok(std::fs::read(dest.join("model.safetensors")).unwrap())
    }

    #[test]
    fn ahead_producers_write_the_same_bytes_and_errors_keep_the_write_order() {
        let dir = tempfile::tempdir().unwrap();
        // more Ahead tensors than the helper may hold, interleaved with Whole ones
        let many: Vec<(String, usize, bool, bool)> = (0..3 * AHEAD_TENSORS)
            .map(|i| (format!("t.{i:04}"), 1 + i % 7, i % 3 != 0, false))
            .collect();
        let whole: Vec<_> = many
            .iter()
            .map(|(n, k, _, f)| (n.clone(), *k, false, *f))
            .collect();
        let a = write(&dir.path().join("ahead"), &many).unwrap();
        let b = write(&dir.path().join("whole"), &whole).unwrap();
        assert_eq!(a, b);

        // The first failure in write order is the one reported, whichever thread made it, and
        // nothing is left at the destination.
        let t = |n: &str, ahead: bool, fails: bool| (n.to_owned(), 4, ahead, fails);
        for (set, first) in [
            (vec![t("a", false, true), t("b", true, true)], "a failed"),
            (
                vec![
                    t("a", false, false),
                    t("b", true, true),
                    t("c", false, true),
                ],
                "b failed",
            ),
            (
                vec![t("a", true, false), t("b", false, true), t("c", true, true)],
                "b failed",
            ),
        ] {
            let dest = dir.path().join(format!("fail-{first}-{}", set.len()));
            let e = write(&dest, &set).unwrap_err().to_string();
            assert!(e.contains(first), "{e}");
            assert!(!dest.exists());
        }
    }
}
