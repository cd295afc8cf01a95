//! The model families (convert/src/family.rs; the transformers-made fixtures are tests/families.rs) through conversion and the forward pass, on tiny
//! random-weight F32 checkpoints written here, one per family:
//!
//! * HF → GGUF → HF is bit-exact for every family, the GGUF carries the family's
//!   `general.architecture`, key prefix and key set (`convert_hf_to_gguf.py`'s), and its tensor
//!   names (q/k/v biases, q/k norms);
//! * the forward (`qforge_verify::eval::run_layer_observed`, the one calibrate uses) matches a
//!   naive `f64` transcription of transformers' layer (`Qwen2Attention` biases, `Qwen3Attention`
//!   q/k norms before RoPE, `head_dim` free of the hidden size, Mistral's sliding window) within
//!   1e-4; a forward that drops the bias, skips the q/k norm or ignores the window moves the
//!   layer's output by far more;
//! * perplexity on the HF directory and on its GGUF conversion agree (Qwen2/Qwen3 GGUF keep HF's
//!   NEOX pairing, Llama's is permuted), except where GGUF cannot hold the window.

use std::collections::BTreeMap;
use std::path::Path;

use qforge_codecs::DType;
use qforge_convert::export::{convert_to_hf, HfOptions};
use qforge_convert::export_gguf::{convert_to_gguf, GgufOptions};
use qforge_convert::gguf::GgufValue;
use qforge_convert::write::safetensors::{plan, TensorSpec, Writer};
use qforge_convert::{Checkpoint, Family, LayerTensor, NameScheme, TensorId, TensorKey};
use qforge_stage::OutputOptions;
use qforge_verify::eval::{perplexity, run_layer_observed, EvalOptions};
use qforge_verify::{Chunks, ForwardOptions, Model};
use serde_json::{json, Value};

const HIDDEN: u64 = 64;
const HEADS: u64 = 4;
const KV: u64 = 2;
const FFN: u64 = 96;
const VOCAB: u64 = 256;
const LAYERS: u64 = 2;

/// One tiny model per family, with what sets it apart.
struct Case {
    family: Family,
    /// `config.json` minus the shared keys
    config: Value,
    head_dim: u64,
    tied: bool,
    /// (size, first layer) of the sliding window
    window: Option<(u64, u64)>,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            family: Family::Llama,
            config: json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                "head_dim": 16, "tie_word_embeddings": true, "bos_token_id": 1}),
            head_dim: 16,
            tied: true,
            window: None,
        },
        Case {
            family: Family::Qwen2,
            // Qwen2.5-0.5B's shape of config: no head_dim, biases implied by the class
            config: json!({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
                "tie_word_embeddings": false, "use_sliding_window": true, "sliding_window": 5,
                "max_window_layers": 1}),
            head_dim: 16,
            tied: false,
            window: Some((5, 1)),
        },
        Case {
            family: Family::Qwen3,
            // head_dim 24: heads × head_dim = 96 ≠ hidden 64
            config: json!({"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
                "head_dim": 24, "attention_bias": false, "tie_word_embeddings": true,
                "use_sliding_window": false, "sliding_window": null}),
            head_dim: 24,
            tied: true,
            window: None,
        },
        Case {
            family: Family::Mistral,
            // v0.1's shape of config: a window on every layer; GGUF writes it as llama
            config: json!({"architectures": ["MistralForCausalLM"], "model_type": "mistral",
                "head_dim": 16, "sliding_window": 4, "tie_word_embeddings": false}),
            head_dim: 16,
            tied: false,
            window: Some((4, 0)),
        },
    ]
}

struct Rng(u64);

impl Rng {
    /// Uniform in [-1, 1).
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// The HF tensors of a case: (name, shape, values).
fn tensors(case: &Case) -> Vec<(String, Vec<u64>, Vec<f32>)> {
    let spec = case.family.spec();
    let (hd, q, kv) = (case.head_dim, HEADS * case.head_dim, KV * case.head_dim);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ hd ^ u64::from(spec.qkv_bias) << 7);
    let mut out = Vec::new();
    let mut add = |name: String, shape: Vec<u64>, scale: f32, offset: f32| {
        let n: u64 = shape.iter().product();
        let v = (0..n).map(|_| offset + scale * rng.next()).collect();
        out.push((name, shape, v));
    };
    // large enough weights that the next-token distribution is peaked
    add(
        "model.embed_tokens.weight".into(),
        vec![VOCAB, HIDDEN],
        1.0,
        0.0,
    );
    add("model.norm.weight".into(), vec![HIDDEN], 0.5, 1.0);
    if !case.tied {
        add("lm_head.weight".into(), vec![VOCAB, HIDDEN], 0.5, 0.0);
    }
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        add(
            format!("{p}.input_layernorm.weight"),
            vec![HIDDEN],
            0.5,
            1.0,
        );
        add(
            format!("{p}.post_attention_layernorm.weight"),
            vec![HIDDEN],
            0.5,
            1.0,
        );
        add(
            format!("{p}.self_attn.q_proj.weight"),
            vec![q, HIDDEN],
            0.4,
            0.0,
        );
        add(
            format!("{p}.self_attn.k_proj.weight"),
            vec![kv, HIDDEN],
            0.4,
            0.0,
        );
        add(
            format!("{p}.self_attn.v_proj.weight"),
            vec![kv, HIDDEN],
            0.4,
            0.0,
        );
        add(
            format!("{p}.self_attn.o_proj.weight"),
            vec![HIDDEN, q],
            0.3,
            0.0,
        );
        if spec.qkv_bias {
            add(format!("{p}.self_attn.q_proj.bias"), vec![q], 1.0, 0.0);
            add(format!("{p}.self_attn.k_proj.bias"), vec![kv], 1.0, 0.0);
            add(format!("{p}.self_attn.v_proj.bias"), vec![kv], 1.0, 0.0);
        }
        if spec.qk_norm {
            add(format!("{p}.self_attn.q_norm.weight"), vec![hd], 0.8, 1.0);
            add(format!("{p}.self_attn.k_norm.weight"), vec![hd], 0.8, 1.0);
        }
        add(
            format!("{p}.mlp.gate_proj.weight"),
            vec![FFN, HIDDEN],
            0.4,
            0.0,
        );
        add(
            format!("{p}.mlp.up_proj.weight"),
            vec![FFN, HIDDEN],
            0.4,
            0.0,
        );
        add(
            format!("{p}.mlp.down_proj.weight"),
            vec![HIDDEN, FFN],
            0.3,
            0.0,
        );
    }
    out
}

fn write_case(dir: &Path, case: &Case) {
    std::fs::create_dir_all(dir).unwrap();
    let mut cfg = json!({"hidden_size": HIDDEN, "intermediate_size": FFN,
        "num_attention_heads": HEADS, "num_hidden_layers": LAYERS, "num_key_value_heads": KV,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "vocab_size": VOCAB, "hidden_act": "silu",
        "max_position_embeddings": 64, "torch_dtype": "float32"});
    for (k, v) in case.config.as_object().unwrap() {
        cfg[k] = v.clone();
    }
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let ts = tensors(case);
    let specs = ts
        .iter()
        .map(|(name, shape, _)| TensorSpec {
            name: name.clone(),
            dtype: DType::F32,
            shape: shape.clone(),
        })
        .collect();
    let p = plan(specs, &BTreeMap::new()).unwrap();
    let f = std::io::BufWriter::new(std::fs::File::create(dir.join("model.safetensors")).unwrap());
    let mut w = Writer::new(f, p.clone()).unwrap();
    for (spec, _, _) in &p.tensors {
        let (_, _, v) = ts.iter().find(|t| t.0 == spec.name).unwrap();
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        w.write_tensor(&spec.name, &bytes).unwrap();
    }
    use std::io::Write;
    w.finish().unwrap().flush().unwrap();
}

fn gguf_opts(allow_lossy: bool) -> GgufOptions {
    GgufOptions {
        dtype: None,
        overwrite: false,
        dry_run: false,
        allow_lossy,
    }
}

/// The `<arch>.*` keys `convert_hf_to_gguf.py` writes for a case (base.py
/// `TextModel.set_gguf_parameters`, plus `LlamaModel`'s two for llama).
fn expected_keys(case: &Case) -> Vec<String> {
    let arch = case.family.spec().gguf_arch;
    let mut k = vec![
        "block_count",
        "context_length",
        "embedding_length",
        "feed_forward_length",
        "attention.head_count",
        "attention.head_count_kv",
        "rope.freq_base",
        "attention.layer_norm_rms_epsilon",
    ];
    if case.config.get("head_dim").is_some() {
        k.extend(["attention.key_length", "attention.value_length"]);
    }
    if arch == "llama" {
        k.extend(["vocab_size", "rope.dimension_count"]);
    }
    let mut k: Vec<String> = k.into_iter().map(|k| format!("{arch}.{k}")).collect();
    k.sort();
    k
}

#[test]
fn hf_gguf_hf_is_bit_exact_with_the_family_keys_and_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    for case in cases() {
        let name = case.family.spec().model_type;
        let hf = tmp.path().join(format!("{name}-hf"));
        write_case(&hf, &case);
        let src = Checkpoint::open(&hf).unwrap();
        assert_eq!(src.config.family, case.family);
        assert_eq!(src.config.head_dim, case.head_dim);
        assert_eq!(
            src.config.sliding_window.map(|w| (w.size, w.first_layer)),
            case.window
        );

        let gguf = tmp.path().join(format!("{name}.gguf"));
        if case.window.is_some() {
            // GGUF cannot say the window: refused unless allowed, naming the family
            let err = convert_to_gguf(&src, &gguf, gguf_opts(false)).unwrap_err();
            assert!(err.to_string().contains("sliding-window"), "{err}");
        }
        let w = convert_to_gguf(&src, &gguf, gguf_opts(case.window.is_some())).unwrap();
        assert_eq!(
            w.notes.iter().any(|n| n.what.contains("sliding-window")),
            case.window.is_some()
        );
        let g = Checkpoint::open(&gguf).unwrap();
        let meta = g.gguf.as_ref().unwrap();
        let arch = case.family.spec().gguf_arch;
        assert_eq!(
            meta.get("general.architecture"),
            Some(&GgufValue::String(arch.into()))
        );
        let mut keys: Vec<String> = meta
            .entries
            .iter()
            .map(|(k, _)| k.clone())
            .filter(|k| k.starts_with(&format!("{arch}.")))
            .collect();
        keys.sort();
        assert_eq!(keys, expected_keys(&case), "{name}");
        // a family written under another's architecture (Mistral as llama) reads back as it
        let read_back = Family::from_gguf_arch(arch).unwrap();
        assert_eq!(
            w.notes.iter().any(|n| n.what.contains("reads back as")),
            read_back != case.family
        );
        assert_eq!(g.config.family, read_back);
        assert_eq!(g.config.head_dim, case.head_dim);
        // the tensor set: the family's names, in GGUF spelling
        let names: Vec<&str> = g.tensors.iter().map(|t| t.name.as_str()).collect();
        let spec = case.family.spec();
        assert_eq!(
            names.contains(&"blk.1.attn_q.bias"),
            spec.qkv_bias,
            "{name}"
        );
        assert_eq!(
            names.contains(&"blk.1.attn_v.bias"),
            spec.qkv_bias,
            "{name}"
        );
        assert_eq!(names.contains(&"blk.1.attn_k_norm.weight"), spec.qk_norm);
        assert_eq!(names.contains(&"output.weight"), !case.tied);
        // Q rows: copied for NEOX families (convert_hf_to_gguf's Qwen2Model does not permute),
        // permuted to consecutive pairs for NORM ones (LlamaModel.permute)
        let q_hf = src.to_f32(
            src.tensor("model.layers.0.self_attn.q_proj.weight")
                .unwrap(),
        );
        let q_gguf = g.to_f32(g.tensor("blk.0.attn_q.weight").unwrap());
        assert_eq!(
            q_hf.unwrap() == q_gguf.unwrap(),
            spec.gguf_rope == qforge_convert::family::GgufRope::Neox,
            "{name}"
        );
        let per_layer = case.family.layer_tensors().len() as u64;
        assert_eq!(
            g.tensors.len() as u64,
            per_layer * LAYERS + 2 + u64::from(!case.tied),
            "{names:?}"
        );

        let back = tmp.path().join(format!("{name}-back"));
        convert_to_hf(
            &g,
            &back,
            HfOptions {
                dtype: None,
                shard_size: qforge_convert::export::DEFAULT_SHARD_SIZE,
                output: OutputOptions::default(),
            },
        )
        .unwrap();
        let cfg: Value =
            serde_json::from_slice(&std::fs::read(back.join("config.json")).unwrap()).unwrap();
        let back_spec = read_back.spec();
        assert_eq!(cfg["architectures"][0], json!(back_spec.hf_classes[0]));
        assert_eq!(cfg["model_type"], json!(back_spec.model_type));
        let b = Checkpoint::open(&back).unwrap();
        assert_eq!(b.config.family, read_back);
        assert_eq!(b.config.head_dim, case.head_dim);
        assert_eq!(b.tensors.len(), src.tensors.len());
        for t in &src.tensors {
            let other = b
                .tensor(&t.name)
                .unwrap_or_else(|| panic!("{} lost", t.name));
            assert_eq!(other.dtype, DType::F32);
            let (x, y) = (src.to_f32(t).unwrap(), b.to_f32(other).unwrap());
            assert!(
                x.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{name} {} differs after HF → GGUF → HF",
                t.name
            );
        }
    }
}

/// transformers' decoder layer, transcribed naively in `f64` from the HF tensors: RMSNorm,
/// q/k/v projections (+ bias), per-head q/k RMSNorm, RoPE on `(j, j + hd/2)` pairs, causal
/// GQA with an optional window (key `j` visible from `i` iff `i − w < j ≤ i`), o_proj, residual,
/// RMSNorm, SwiGLU, residual.
#[allow(clippy::too_many_arguments)]
fn reference_layer(
    ck: &Checkpoint,
    index: u32,
    h: &mut [f64],
    t: usize,
    head_dim: usize,
    window: Option<usize>,
    skip: Option<&str>,
) {
    let cfg = &ck.config;
    let w = |kind| -> Option<Vec<f64>> {
        let id = TensorId::Layer { index, kind };
        let name = NameScheme::Hf.name(TensorKey::weight(id))?;
        let e = ck.tensor(&name)?;
        Some(
            ck.to_f32(e)
                .unwrap()
                .iter()
                .map(|&v| f64::from(v))
                .collect(),
        )
    };
    let eps = cfg.rms_norm_eps;
    let d = HIDDEN as usize;
    let (heads, kvh, hd) = (HEADS as usize, KV as usize, head_dim);
    let rms = |x: &[f64], g: &[f64]| -> Vec<f64> {
        let n = g.len();
        x.chunks(n)
            .flat_map(|r| {
                let s = 1.0 / (r.iter().map(|v| v * v).sum::<f64>() / n as f64 + eps).sqrt();
                r.iter().zip(g).map(move |(v, g)| v * s * g)
            })
            .collect()
    };
    let lin = |x: &[f64], wt: &[f64], inp: usize| -> Vec<f64> {
        let out = wt.len() / inp;
        x.chunks(inp)
            .flat_map(|r| {
                (0..out).map(move |o| r.iter().zip(&wt[o * inp..]).map(|(a, b)| a * b).sum())
            })
            .collect()
    };
    let x = rms(h, &w(LayerTensor::AttnNorm).unwrap());
    let mut q = lin(&x, &w(LayerTensor::Q).unwrap(), d);
    let mut k = lin(&x, &w(LayerTensor::K).unwrap(), d);
    let mut v = lin(&x, &w(LayerTensor::V).unwrap(), d);
    if skip != Some("bias") {
        for (y, kind) in [
            (&mut q, LayerTensor::QBias),
            (&mut k, LayerTensor::KBias),
            (&mut v, LayerTensor::VBias),
        ] {
            if let Some(b) = w(kind) {
                for r in y.chunks_mut(b.len()) {
                    r.iter_mut().zip(&b).for_each(|(a, c)| *a += c);
                }
            }
        }
    }
    if skip != Some("qk_norm") {
        if let (Some(nq), Some(nk)) = (w(LayerTensor::QNorm), w(LayerTensor::KNorm)) {
            q = rms(&q, &nq);
            k = rms(&k, &nk);
        }
    }
    let rope = |y: &mut [f64], nh: usize| {
        for (p, row) in y.chunks_mut(nh * hd).enumerate() {
            for head in row.chunks_mut(hd) {
                for j in 0..hd / 2 {
                    let f = cfg.rope_theta.powf(-((2 * j) as f64) / hd as f64);
                    let (c, s) = ((p as f64 * f).cos(), (p as f64 * f).sin());
                    let (a, b) = (head[j], head[j + hd / 2]);
                    head[j] = a * c - b * s;
                    head[j + hd / 2] = b * c + a * s;
                }
            }
        }
    };
    rope(&mut q, heads);
    rope(&mut k, kvh);
    let window = if skip == Some("window") { None } else { window };
    let mut att = vec![0f64; t * heads * hd];
    for hh in 0..heads {
        let g = hh / (heads / kvh);
        for i in 0..t {
            let lo = window.map_or(0, |w| (i + 1).saturating_sub(w));
            let qi = &q[i * heads * hd + hh * hd..][..hd];
            let s: Vec<f64> = (lo..=i)
                .map(|j| {
                    let kj = &k[j * kvh * hd + g * hd..][..hd];
                    qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>() / (hd as f64).sqrt()
                })
                .collect();
            let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for (jj, p) in e.iter().enumerate() {
                let vj = &v[(lo + jj) * kvh * hd + g * hd..][..hd];
                for c in 0..hd {
                    att[i * heads * hd + hh * hd + c] += p / z * vj[c];
                }
            }
        }
    }
    let o = lin(&att, &w(LayerTensor::O).unwrap(), heads * hd);
    h.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
    let x = rms(h, &w(LayerTensor::FfnNorm).unwrap());
    let gt = lin(&x, &w(LayerTensor::Gate).unwrap(), d);
    let up = lin(&x, &w(LayerTensor::Up).unwrap(), d);
    let a: Vec<f64> = gt
        .iter()
        .zip(&up)
        .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
        .collect();
    let dn = lin(&a, &w(LayerTensor::Down).unwrap(), FFN as usize);
    h.iter_mut().zip(&dn).for_each(|(a, b)| *a += b);
}

fn max_rel(a: &[f32], b: &[f64]) -> f64 {
    let scale = b.iter().map(|v| v.abs()).fold(0.0, f64::max);
    a.iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - y).abs())
        .fold(0.0, f64::max)
        / scale
}

#[test]
fn the_forward_is_the_family_layer_and_each_difference_matters() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cases = cases();
    // a window on every layer too (Mistral's rule, through Qwen2's first_layer 0)
    cases[1].config["max_window_layers"] = json!(0);
    cases[1].window = Some((5, 0));
    let t = 12usize;
    let tokens: Vec<u32> = (0..t as u32).map(|i| (i * 37 + 5) % VOCAB as u32).collect();
    for case in cases {
        let name = case.family.spec().model_type;
        let dir = tmp.path().join(name);
        write_case(&dir, &case);
        let model = Model::open(&dir, ForwardOptions::default()).unwrap();
        let rope = model.rope_table(t);
        let emb = model.embed(&tokens).unwrap();
        let mut ours = emb.clone();
        let mut want: Vec<f64> = emb.iter().map(|&v| f64::from(v)).collect();
        for index in 0..LAYERS as u32 {
            let lw = model.layer(index).unwrap();
            let window = case
                .window
                .filter(|w| u64::from(index) >= w.1)
                .map(|w| w.0 as usize);
            assert_eq!(lw.window, window);
            let before = ours.clone();
            run_layer_observed(&model, &lw, &rope, &mut ours, t, &mut |_, _| {});
            let before64 = want.clone();
            reference_layer(
                &model.ckpt,
                index,
                &mut want,
                t,
                case.head_dim as usize,
                window,
                None,
            );
            let err = max_rel(&ours, &want);
            assert!(
                err < 1e-4,
                "{name} layer {index}: {err:e} from the reference"
            );
            // each family difference, left out, moves the layer's output by > 1 %
            let skips: &[&str] = match (case.family.spec(), window) {
                (s, _) if s.qkv_bias => &["bias", "window"],
                (s, _) if s.qk_norm => &["qk_norm"],
                _ => &["window"],
            };
            for &skip in skips {
                if skip == "window" && window.is_none() {
                    continue;
                }
                let mut wrong = lw.to_f64().unwrap();
                match skip {
                    "bias" => wrong.qkv_bias = None,
                    "qk_norm" => wrong.qk_norm = None,
                    _ => wrong.window = None,
                }
                let mut h: Vec<f64> = before.iter().map(|&v| f64::from(v)).collect();
                run_layer_observed(&model, &wrong, &rope, &mut h, t, &mut |_, _| {});
                let mut r = before64.clone();
                reference_layer(
                    &model.ckpt,
                    index,
                    &mut r,
                    t,
                    case.head_dim as usize,
                    window,
                    Some(skip),
                );
                let hf: Vec<f32> = h.iter().map(|&v| v as f32).collect();
                assert!(
                    max_rel(&hf, &r) < 1e-4,
                    "{name} without {skip}: not the reference's"
                );
                let moved = max_rel(&hf, &want);
                assert!(
                    moved > 1e-2,
                    "{name} layer {index}: without {skip} moved {moved:e}"
                );
            }
        }
    }
}

#[test]
fn perplexity_agrees_on_hf_and_gguf_except_where_gguf_loses_the_window() {
    let tmp = tempfile::tempdir().unwrap();
    let tokens: Vec<u32> = (0..96u32)
        .map(|i| (i * 53 + i / 7) % VOCAB as u32)
        .collect();
    for case in cases() {
        let name = case.family.spec().model_type;
        let hf = tmp.path().join(format!("{name}-hf"));
        write_case(&hf, &case);
        let gguf = tmp.path().join(format!("{name}.gguf"));
        let src = Checkpoint::open(&hf).unwrap();
        convert_to_gguf(&src, &gguf, gguf_opts(true)).unwrap();
        let chunks = Chunks::new(&tokens, 16, None, None).unwrap();
        let ppl = |p: &Path| {
            let m = Model::open(p, ForwardOptions::default()).unwrap();
            perplexity(&m, &chunks, &EvalOptions::default())
                .unwrap()
                .ppl
        };
        let (a, b) = (ppl(&hf), ppl(&gguf));
        assert!(a.is_finite() && a > 1.0, "{name}: {a}");
        let rel = (a - b).abs() / a;
        if case.window.is_some() {
            // llama.cpp's qwen2 graph (and so the GGUF) attends over the whole chunk
            assert!(rel > 1e-3, "{name}: window ignored yet ppl {a} vs {b}");
        } else {
            assert!(rel < 1e-5, "{name}: HF {a} vs GGUF {b}");
        }
    }
}

#[test]
fn meta_is_refused_for_families_without_it_and_unknown_model_types_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let case = &cases()[1];
    let hf = tmp.path().join("qwen2");
    write_case(&hf, case);
    let src = Checkpoint::open(&hf).unwrap();
    let err = qforge_convert::export_meta::convert_to_meta(
        &src,
        &tmp.path().join("meta"),
        1,
        OutputOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("Qwen2") && err.contains("Meta"), "{err}");
    assert!(!err.contains('\n'), "{err}");
    let mut cfg: Value =
        serde_json::from_slice(&std::fs::read(hf.join("config.json")).unwrap()).unwrap();
    cfg["model_type"] = json!("gpt_neox");
    std::fs::write(hf.join("config.json"), cfg.to_string()).unwrap();
    let err = Checkpoint::open(&hf).unwrap_err().to_string();
    assert!(err.contains("gpt_neox"), "{err}");
}

/// Released configs (their published parameter counts: Qwen2.5-0.5B 494,032,768 with q/k/v
/// biases and tied embeddings; Qwen3-0.6B 596,049,920 with head_dim 128 × 16 heads over
/// hidden 1024 and q/k norms; Mistral-7B-v0.1 7,241,732,096) and their windows: Qwen's
/// `sliding_window` is ignored without `use_sliding_window`, Mistral v0.3 sets none.
#[test]
fn released_configs_read_as_their_family() {
    use qforge_convert::ModelConfig;
    let qwen25 = r#"{"architectures":["Qwen2ForCausalLM"],"attention_dropout":0.0,"bos_token_id":151643,
      "eos_token_id":151643,"hidden_act":"silu","hidden_size":896,"initializer_range":0.02,
      "intermediate_size":4864,"max_position_embeddings":32768,"max_window_layers":24,"model_type":"qwen2",
      "num_attention_heads":14,"num_hidden_layers":24,"num_key_value_heads":2,"rms_norm_eps":1e-06,
      "rope_theta":1000000.0,"sliding_window":32768,"tie_word_embeddings":true,"torch_dtype":"bfloat16",
      "use_cache":true,"use_sliding_window":false,"vocab_size":151936}"#;
    let qwen3 = r#"{"architectures":["Qwen3ForCausalLM"],"attention_bias":false,"attention_dropout":0.0,
      "bos_token_id":151643,"eos_token_id":151645,"head_dim":128,"hidden_act":"silu","hidden_size":1024,
      "initializer_range":0.02,"intermediate_size":3072,"max_position_embeddings":40960,
      "max_window_layers":28,"model_type":"qwen3","num_attention_heads":16,"num_hidden_layers":28,
      "num_key_value_heads":8,"rms_norm_eps":1e-06,"rope_scaling":null,"rope_theta":1000000,
      "sliding_window":null,"tie_word_embeddings":true,"torch_dtype":"bfloat16","use_cache":true,
      "use_sliding_window":false,"vocab_size":151936}"#;
    let mistral01 = r#"{"architectures":["MistralForCausalLM"],"bos_token_id":1,"eos_token_id":2,
      "hidden_act":"silu","hidden_size":4096,"initializer_range":0.02,"intermediate_size":14336,
      "max_position_embeddings":32768,"model_type":"mistral","num_attention_heads":32,
      "num_hidden_layers":32,"num_key_value_heads":8,"rms_norm_eps":1e-05,"rope_theta":10000.0,
      "sliding_window":4096,"tie_word_embeddings":false,"torch_dtype":"bfloat16","vocab_size":32000}"#;
    let mistral03 = mistral01
        .replace(r#""sliding_window":4096"#, r#""sliding_window":null"#)
        .replace("32000", "32768");
    let c = ModelConfig::from_hf_json(qwen25).unwrap();
    assert_eq!(
        (c.family, c.head_dim, c.sliding_window),
        (Family::Qwen2, 64, None)
    );
    assert_eq!(c.parameter_count(), 494_032_768);
    let c = ModelConfig::from_hf_json(qwen3).unwrap();
    assert_eq!(
        (c.family, c.head_dim, c.sliding_window),
        (Family::Qwen3, 128, None)
    );
    assert_eq!(c.parameter_count(), 596_049_920);
    let c = ModelConfig::from_hf_json(mistral01).unwrap();
    assert_eq!(c.family, Family::Mistral);
    assert_eq!(
        c.sliding_window.map(|w| (w.size, w.first_layer)),
        Some((4096, 0))
    );
    assert_eq!(c.parameter_count(), 7_241_732_096);
    let c = ModelConfig::from_hf_json(&mistral03).unwrap();
    assert_eq!((c.family, c.sliding_window), (Family::Mistral, None));
    // a setting the family's class does not have is refused, naming the family
    let biased = qwen3.replace(r#""attention_bias":false"#, r#""attention_bias":true"#);
    let err = ModelConfig::from_hf_json(&biased).unwrap_err().to_string();
    assert!(
        err.contains("Qwen3") && err.contains("attention_bias"),
        "{err}"
    );
    let scaled = qwen25.replace(
        r#""rope_theta""#,
        r#""rope_scaling":{"rope_type":"llama3","factor":8.0},"rope_theta""#,
    );
    let err = ModelConfig::from_hf_json(&scaled).unwrap_err().to_string();
    assert!(err.contains("Qwen2") && err.contains("llama3"), "{err}");
}

/// Every `qforge quantize` scheme and layout writes every family, the output reads back as the
/// family (HF) or its GGUF architecture, evaluates to a finite perplexity, and keeps the biases
/// and q/k norms unquantized (GGUF: F32, as llama-quantize's `tensor_allows_quantization`
/// leaves 1-D tensors).
#[test]
fn every_scheme_and_layout_writes_every_family() {
    const QFORGE: &str = env!("CARGO_BIN_EXE_qforge");
    let tmp = tempfile::tempdir().unwrap();
    let tokens: Vec<u32> = (0..64u32)
        .map(|i| (i * 53 + i / 7) % VOCAB as u32)
        .collect();
    let chunks = Chunks::new(&tokens, 16, None, None).unwrap();
    let runs: &[(&str, &[&str])] = &[
        ("fp8-rowwise", &[]),
        ("fp8-rowwise", &["--layout", "fbgemm"]),
        ("fp8-block", &[]),
        ("nvfp4a16", &[]),
        ("mxfp4", &[]),
        ("int4-g32", &[]),
        ("int4-row", &["--asym"]),
        ("int8-g32", &[]),
        ("int4-g32", &["--layout", "mlx"]),
        ("gguf:q8_0", &[]),
        ("gguf:q4_k_m", &[]),
        ("gguf:q6_k", &[]),
    ];
    for case in cases() {
        let name = case.family.spec().model_type;
        let hf = tmp.path().join(format!("{name}-hf"));
        write_case(&hf, &case);
        for (i, (scheme, extra)) in runs.iter().enumerate() {
            let gguf = scheme.starts_with("gguf:");
            let out = tmp
                .path()
                .join(format!("{name}-{i}{}", if gguf { ".gguf" } else { "" }));
            let o = std::process::Command::new(QFORGE)
                .args(["quantize", "-q", "--dtype", "f32", "--scheme", scheme])
                .args(*extra)
                .arg(&hf)
                .arg(&out)
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "{name} {scheme} {extra:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            let ck = Checkpoint::open(&out).unwrap();
            let family = Family::from_gguf_arch(case.family.spec().gguf_arch).unwrap();
            let want = if gguf { family } else { case.family };
            assert_eq!(ck.config.family, want, "{name} {scheme}");
            for t in &ck.tensors {
                if let TensorId::Layer { kind, .. } = t.key.id {
                    if !kind.is_linear() {
                        assert!(
                            matches!(t.dtype, DType::F32 | DType::BF16 | DType::F16),
                            "{name} {scheme}: {} is {}",
                            t.name,
                            t.dtype
                        );
                    }
                }
            }
            let m = Model::open(&out, ForwardOptions::default()).unwrap();
            let ppl = perplexity(&m, &chunks, &EvalOptions::default())
                .unwrap()
                .ppl;
            assert!(ppl.is_finite() && ppl > 1.0, "{name} {scheme}: {ppl}");
        }
    }
}

/// `qforge calibrate` (fp8-static, GPTQ, AWQ) runs on every family through the one forward, and
/// `qforge quantize --calib` writes each family from its results.
#[test]
fn calibrate_and_quantize_with_calibration_for_every_family() {
    const QFORGE: &str = env!("CARGO_BIN_EXE_qforge");
    let tmp = tempfile::tempdir().unwrap();
    let samples: Vec<Vec<u32>> = (0..4u32)
        .map(|s| {
            (0..16u32)
                .map(|i| (i * 37 + s * 101 + 3) % VOCAB as u32)
                .collect()
        })
        .collect();
    let tokens = tmp.path().join("tokens.json");
    std::fs::write(
        &tokens,
        json!({"seq_len": 16, "samples": samples}).to_string(),
    )
    .unwrap();
    let eval: Vec<u32> = (0..64u32)
        .map(|i| (i * 53 + i / 7) % VOCAB as u32)
        .collect();
    let chunks = Chunks::new(&eval, 16, None, None).unwrap();
    let run = |args: Vec<std::ffi::OsString>| {
        let o = std::process::Command::new(QFORGE)
            .args(&args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let os = |v: &[&str]| -> Vec<std::ffi::OsString> { v.iter().map(Into::into).collect() };
    for case in cases() {
        let name = case.family.spec().model_type;
        let hf = tmp.path().join(format!("{name}-hf"));
        write_case(&hf, &case);
        for (method, scheme, calib) in [
            ("fp8-static", "fp8-static", format!("{name}-fp8.json")),
            ("gptq", "int4-g32", format!("{name}-gptq")),
            ("awq", "int4-g32", format!("{name}-awq")),
        ] {
            let calib = tmp.path().join(calib);
            let mut args = os(&["calibrate", "--method", method]);
            if method != "fp8-static" {
                args.extend(os(&["--scheme", scheme]));
            }
            args.extend(["--tokens".into(), tokens.clone().into(), hf.clone().into()]);
            args.push(calib.clone().into());
            run(args);
            let out = tmp.path().join(format!("{name}-{method}-q"));
            let mut args = os(&[
                "quantize", "-q", "--dtype", "f32", "--scheme", scheme, "--calib",
            ]);
            args.extend([calib.into(), hf.clone().into(), out.clone().into()]);
            run(args);
            let m = Model::open(&out, ForwardOptions::default()).unwrap();
            assert_eq!(m.config().family, case.family);
            let ppl = perplexity(&m, &chunks, &EvalOptions::default())
                .unwrap()
                .ppl;
            assert!(ppl.is_finite() && ppl > 1.0, "{name} {method}: {ppl}");
        }
    }
}
