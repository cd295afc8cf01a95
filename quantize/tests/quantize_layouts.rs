//! Quantized HF layouts (compressed-tensors, fbgemm_fp8) on synthetic Llama models: which
//! tensors are quantized, their dtypes and shapes, the `quantization_config`, the error bound of
//! the dequantized weights, and determinism across thread counts.

use qforge_quantize::dequant::WeightRead;
use std::collections::BTreeMap;
use std::path::Path;

use qforge_codecs::fp8::{self, Fp8Options};
use qforge_codecs::fp8_ct;
use qforge_codecs::int4::Int4Arith;
use qforge_codecs::DType;
use qforge_convert::write::OutputOptions;
use qforge_convert::{Checkpoint, Error, LayerTensor, Part, TensorId};
use qforge_quantize::dequant::WeightStorage;
use qforge_quantize::layout::{
    fp8::{FP8_ROWWISE, FP8_STATIC},
    int, mlx, quantize_to_hf, HfLayout, HfQuantOptions, HfScheme, IgnoreList, LayoutScheme, Params,
    Policy,
};
use qforge_quantize::numerics::Numerics;
use serde_json::{json, Value};

/// Deterministic pseudo-random values (xorshift), roughly N(0, 0.05) with a few outliers.
fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 11) as f64 / (1u64 << 53) as f64;
            let v = (u - 0.5) * 0.2;
            if i % 97 == 0 {
                (v * 8.0) as f32
            } else {
                v as f32
            }
        })
        .collect()
}

/// A Llama HF directory with `layers` blocks of tiny widths and random BF16 weights.
/// `synthetic_model` written into `<tmp>/src`, and that directory opened.
fn source(tmp: &Path, layers: u32, hidden: usize, ffn: usize, tied: bool) -> Checkpoint {
    let dir = tmp.join("src");
    std::fs::create_dir(&dir).unwrap();
    synthetic_model(&dir, layers, hidden, ffn, tied);
    Checkpoint::open(&dir).unwrap()
}

fn synthetic_model(dir: &Path, layers: u32, hidden: usize, ffn: usize, tied: bool) {
    let (heads, kv, vocab) = (4usize, 2usize, 96usize);
    let hd = hidden / heads;
    let config = json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": hidden, "intermediate_size": ffn, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": hd,
        "vocab_size": vocab, "rms_norm_eps": 1e-5, "rope_theta": 500_000.0,
        "max_position_embeddings": 256, "tie_word_embeddings": tied, "torch_dtype": "bfloat16",
        "bos_token_id": 1, "eos_token_id": 2,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut tensors: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![vocab, hidden]),
        ("model.norm.weight".into(), vec![hidden]),
    ];
    if !tied {
        tensors.push(("lm_head.weight".into(), vec![vocab, hidden]));
    }
    for i in 0..layers {
        let p = format!("model.layers.{i}");
        tensors.extend([
            (format!("{p}.input_layernorm.weight"), vec![hidden]),
            (format!("{p}.post_attention_layernorm.weight"), vec![hidden]),
            (format!("{p}.self_attn.q_proj.weight"), vec![hidden, hidden]),
            (
                format!("{p}.self_attn.k_proj.weight"),
                vec![kv * hd, hidden],
            ),
            (
                format!("{p}.self_attn.v_proj.weight"),
                vec![kv * hd, hidden],
            ),
            (format!("{p}.self_attn.o_proj.weight"), vec![hidden, hidden]),
            (format!("{p}.mlp.gate_proj.weight"), vec![ffn, hidden]),
            (format!("{p}.mlp.up_proj.weight"), vec![ffn, hidden]),
            (format!("{p}.mlp.down_proj.weight"), vec![hidden, ffn]),
        ]);
    }
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let n: usize = shape.iter().product();
            let bytes = values(i as u64 + 1, n)
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect();
            (name, shape, bytes)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = data
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

fn opts(scheme: HfScheme, layout: HfLayout, policy: Policy) -> HfQuantOptions {
    HfQuantOptions {
        scheme,
        layout,
        policy,
        ignore: IgnoreList::default(),
        dtype: DType::BF16,
        activation_scale_ub: 1200.0,
        input_scales: None,
        input_amax: None,
        shard_size: 5_000_000_000,
        output: OutputOptions::default(),
        numerics: Numerics::default(),
        precomputed_int4: None,
        weight_transform: None,
    }
}

fn config_of(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap()
}

/// Every dequantized FP8 weight is within half an FP8 step of the source: relative 2^-4 for
/// normal codes, absolute scale·2^-10 in the subnormal range. compressed-tensors
/// (`bf16_quotient`) rounds `w / scale` to BF16 before the FP8 cast, which may move a quotient
/// by half a BF16 step (relative 2^-9) onto the FP8 midpoint first: that much more.
fn check_fp8_error(src: &Checkpoint, out: &Checkpoint, id: TensorId, bf16_quotient: bool) {
    let w = src.weight_f32(id).unwrap();
    let q = out.weight_f32(id).unwrap();
    let scale = out
        .to_f32(out.part(id, Part::WeightScale).unwrap())
        .unwrap();
    let k = w.len() / scale.len().max(1);
    for (i, (a, b)) in w.iter().zip(&q).enumerate() {
        let s = if scale.len() == 1 {
            scale[0]
        } else {
            scale[i / k]
        };
        let double = if bf16_quotient { a.abs() / 512.0 } else { 0.0 };
        let bound = ((a.abs() * 0.0625).max(s * (1.0 / 1024.0)) + double) * 1.0001;
        assert!(
            (a - b).abs() <= bound,
            "{id} element {i}: {a} vs {b} (scale {s})"
        );
    }
}

#[test]
fn fbgemm_meta_405b_policy_on_126_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let src = source(tmp.path(), 126, 32, 64, false);
    let dest = tmp.path().join("fp8");
    let w = quantize_to_hf(
        &src,
        &dest,
        &opts(fixed(&FP8_ROWWISE), HfLayout::Fbgemm, Policy::Meta405b),
    )
    .unwrap();
    assert_eq!(w.quantized.len(), 124 * 3);
    let out = Checkpoint::open(&dest).unwrap();
    let mut not_converted = Vec::new();
    for i in 0..126u32 {
        for kind in LayerTensor::ALL.into_iter().filter(|k| k.is_linear()) {
            let id = TensorId::Layer { index: i, kind };
            let ffn = matches!(
                kind,
                LayerTensor::Gate | LayerTensor::Up | LayerTensor::Down
            );
            let weight = out.part(id, Part::Weight).unwrap();
            if ffn && (1..=124).contains(&i) {
                assert_eq!(weight.dtype, DType::F8_E4M3, "{id}");
                let s = out.part(id, Part::WeightScale).unwrap();
                assert_eq!(s.dtype, DType::F32, "{id}");
                assert_eq!(s.shape, vec![weight.shape[0], 1], "{id}");
                assert_eq!(
                    out.weight_storage(id).unwrap(),
                    WeightStorage::Quantized(fixed(&FP8_ROWWISE))
                );
                check_fp8_error(&src, &out, id, false);
                if i == 1 {
                    // FBGEMM's quantize_fp8_per_row: f32 scale and division, -0 kept as 0x80
                    let w = src.weight_f32(id).unwrap();
                    let k = weight.shape[1] as usize;
                    let (mut q, mut sc) = (vec![0u8; w.len()], vec![0f32; w.len() / k]);
                    let o = Fp8Options {
                        upper_bound: None,
                        keep_negative_zero: true,
                    };
                    fp8::quantize_fp8_rowwise(&w, k, &mut q, &mut sc, &o).unwrap();
                    let b = out.bytes(weight).unwrap();
                    assert!(b.as_ref() == q.as_slice(), "{id}: codes differ");
                    assert_eq!(out.to_f32(s).unwrap(), sc, "{id}: scales differ");
                }
            } else {
                assert_eq!(weight.dtype, DType::BF16, "{id}");
                assert!(out.part(id, Part::WeightScale).is_none(), "{id}");
                assert_eq!(
                    out.weight_f32(id).unwrap(),
                    src.weight_f32(id).unwrap(),
                    "{id} must be copied exactly"
                );
                not_converted.push(qforge_quantize::layout::hf_module(id));
            }
            assert!(out.part(id, Part::InputScale).is_none());
        }
    }
    for id in [
        TensorId::TokenEmbedding,
        TensorId::Output,
        TensorId::OutputNorm,
    ] {
        assert_eq!(out.part(id, Part::Weight).unwrap().dtype, DType::BF16);
    }
    not_converted.push("lm_head".into());
    let cfg = config_of(&dest);
    assert_eq!(
        cfg["quantization_config"],
        json!({"activation_scale_ub": 1200.0, "modules_to_not_convert": not_converted,
               "quant_method": "fbgemm_fp8"})
    );
    assert_eq!(cfg["torch_dtype"], "bfloat16");
    // 126 blocks x (4 attention + 3 FFN) + lm_head = 3 FFN of 2 blocks + 4 x 126 + 1
    assert_eq!(not_converted.len(), 126 * 4 + 2 * 3 + 1);
}

#[test]
fn compressed_tensors_fp8_rowwise_config_and_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    let src = source(tmp.path(), 2, 64, 128, true);
    let dest = tmp.path().join("ct");
    let mut o = opts(
        fixed(&FP8_ROWWISE),
        HfLayout::CompressedTensors,
        Policy::AllLinear,
    );
    o.ignore = IgnoreList::new(&["re:.*down_proj".into()]).unwrap();
    quantize_to_hf(&src, &dest, &o).unwrap();
    let out = Checkpoint::open(&dest).unwrap();
    for i in 0..2u32 {
        for kind in LayerTensor::ALL.into_iter().filter(|k| k.is_linear()) {
            let id = TensorId::Layer { index: i, kind };
            if kind == LayerTensor::Down {
                assert_eq!(out.part(id, Part::Weight).unwrap().dtype, DType::BF16);
                continue;
            }
            let s = out.part(id, Part::WeightScale).unwrap();
            assert_eq!(s.dtype, DType::BF16);
            assert_eq!(
                out.weight_storage(id).unwrap(),
                WeightStorage::Quantized(fixed(&FP8_ROWWISE))
            );
            check_fp8_error(&src, &out, id, true);
            // llm-compressor's bytes: the quotient rounded to BF16 before the FP8 cast, and a
            // negative value that rounds to zero written as 0x80, as compressed-tensors does
            let w = src.weight_f32(id).unwrap();
            let k = *src.part(id, Part::Weight).unwrap().shape.last().unwrap() as usize;
            let (want, _) = fp8_ct::quantize_fp8_channel_ct(&w, k, Int4Arith::Bf16).unwrap();
            let b = out.bytes(out.part(id, Part::Weight).unwrap()).unwrap();
            assert!(b.as_ref() == want.as_slice(), "{id}: codes differ");
        }
    }
    let q = &config_of(&dest)["quantization_config"];
    assert_eq!(q["format"], "float-quantized");
    assert_eq!(q["quant_method"], "compressed-tensors");
    assert_eq!(q["quantization_status"], "compressed");
    assert_eq!(q["ignore"], json!(["re:.*down_proj", "lm_head"]));
    assert_eq!(
        q["config_groups"]["group_0"]["weights"],
        json!({"dynamic": false, "group_size": null, "num_bits": 8, "strategy": "channel",
               "symmetric": true, "type": "float"})
    );
    assert_eq!(
        q["config_groups"]["group_0"]["input_activations"]["strategy"],
        "token"
    );
}

#[test]
fn int4_group_must_divide_rows_and_names_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let src = source(tmp.path(), 1, 96, 192, true);
    let o = opts(
        HfScheme::new(
            &int::INT,
            Params {
                bits: 4,
                group_size: Some(128),
                symmetric: true,
            },
        ),
        HfLayout::CompressedTensors,
        Policy::AllLinear,
    );
    let e = quantize_to_hf(&src, &tmp.path().join("w4"), &o).unwrap_err();
    match &e {
        Error::Codec {
            tensor,
            source: qforge_codecs::Error::GroupMismatch { suggested, .. },
            ..
        } => {
            assert!(tensor.starts_with("model.layers.0."), "{tensor}");
            assert_eq!(*suggested, 96);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(!tmp.path().join("w4").exists());
    // group 32 works, dequantizes within half a step
    let o = opts(
        HfScheme::new(
            &int::INT,
            Params {
                bits: 4,
                group_size: Some(32),
                symmetric: false,
            },
        ),
        HfLayout::CompressedTensors,
        Policy::AllLinear,
    );
    let dest = tmp.path().join("w4-g32");
    quantize_to_hf(&src, &dest, &o).unwrap();
    let out = Checkpoint::open(&dest).unwrap();
    let id = TensorId::Layer {
        index: 0,
        kind: LayerTensor::Up,
    };
    assert_eq!(
        out.weight_storage(id).unwrap(),
        WeightStorage::Quantized(int_storage(4, 32, true))
    );
    let (w, q) = (src.weight_f32(id).unwrap(), out.weight_f32(id).unwrap());
    let s = out
        .to_f32(out.part(id, Part::WeightScale).unwrap())
        .unwrap();
    for (i, (a, b)) in w.iter().zip(&q).enumerate() {
        // asymmetric min-max: half a step of rounding, plus up to half a step where the
        // rounded zero point clips an end of the range (+ BF16 rounding of w/s)
        let step = s[i / 32];
        assert!(
            (a - b).abs() <= step * 1.01 + a.abs() * 0.004,
            "{i}: {a} {b} {step}"
        );
    }
    let q = &config_of(&dest)["quantization_config"];
    assert_eq!(q["format"], "pack-quantized");
    assert_eq!(
        q["config_groups"]["group_0"]["weights"],
        json!({"dynamic": false, "group_size": 32, "num_bits": 4, "strategy": "group",
               "symmetric": false, "type": "int"})
    );
    assert_eq!(
        q["config_groups"]["group_0"]["input_activations"],
        Value::Null
    );
}

#[test]
fn same_bytes_for_any_thread_count_and_static_scales_are_required() {
    let tmp = tempfile::tempdir().unwrap();
    let src = source(tmp.path(), 2, 64, 128, false);
    let mut hashes = Vec::new();
    for threads in [1, 2, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let dest = tmp.path().join(format!("t{threads}"));
        pool.install(|| {
            quantize_to_hf(
                &src,
                &dest,
                &opts(
                    HfScheme::new(
                        &int::INT,
                        Params {
                            bits: 4,
                            group_size: Some(64),
                            symmetric: true,
                        },
                    ),
                    HfLayout::CompressedTensors,
                    Policy::AllLinear,
                ),
            )
            .unwrap();
        });
        hashes.push(std::fs::read(dest.join("model.safetensors")).unwrap());
    }
    assert!(hashes.windows(2).all(|w| w[0] == w[1]));

    let mut o = opts(
        fixed(&FP8_STATIC),
        HfLayout::CompressedTensors,
        Policy::AllLinear,
    );
    let e = quantize_to_hf(&src, &tmp.path().join("static"), &o).unwrap_err();
    assert!(matches!(e, Error::BadQuantization { .. }), "{e}");
    let mut scales = BTreeMap::new();
    for i in 0..2 {
        for m in [
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        ] {
            scales.insert(format!("model.layers.{i}.{m}"), 0.01f32);
        }
    }
    o.input_scales = Some(scales);
    let dest = tmp.path().join("static");
    quantize_to_hf(&src, &dest, &o).unwrap();
    let out = Checkpoint::open(&dest).unwrap();
    let id = TensorId::Layer {
        index: 1,
        kind: LayerTensor::Gate,
    };
    assert_eq!(
        out.weight_storage(id).unwrap(),
        WeightStorage::Quantized(fixed(&FP8_STATIC))
    );
    assert_eq!(
        out.to_f32(out.part(id, Part::InputScale).unwrap()).unwrap(),
        vec![half::bf16::from_f32(0.01).to_f32()]
    );
    check_fp8_error(&src, &out, id, true);
}

/// Tensors larger than a row block (4 MiB) are made and written a block at a time, in a second
/// thread: the codes and scales must equal the whole-tensor codec's, kept tensors must be
/// copied unchanged, and a bad value in a later block must stop the run with its absolute row
/// and leave nothing behind.
#[test]
fn row_block_streaming_equals_the_whole_tensor_codec() {
    let tmp = tempfile::tempdir().unwrap();
    // gate/up [5120, 1024] and down [1024, 5120]: 5 MiB of FP8 codes each, two blocks
    let src = source(tmp.path(), 1, 1024, 5120, false);
    let dest = tmp.path().join("ct");
    let mut o = opts(
        fixed(&FP8_ROWWISE),
        HfLayout::CompressedTensors,
        Policy::AllLinear,
    );
    o.ignore = IgnoreList::new(&["re:.*up_proj".into()]).unwrap();
    quantize_to_hf(&src, &dest, &o).unwrap();
    let out = Checkpoint::open(&dest).unwrap();
    // BF16 output: compressed-tensors' arithmetic in BF16 (the scale and the quotient rounded
    // to BF16)
    for kind in [LayerTensor::Gate, LayerTensor::Down, LayerTensor::Q] {
        let id = TensorId::Layer { index: 0, kind };
        let w = src.weight_f32(id).unwrap();
        let k = *src.part(id, Part::Weight).unwrap().shape.last().unwrap() as usize;
        let (q, s) = fp8_ct::quantize_fp8_channel_ct(&w, k, Int4Arith::Bf16).unwrap();
        let got = out.bytes(out.part(id, Part::Weight).unwrap()).unwrap();
        assert!(got.as_ref() == q.as_slice(), "{id}: codes differ");
        let scales = out
            .to_f32(out.part(id, Part::WeightScale).unwrap())
            .unwrap();
        assert_eq!(scales, s, "{id}: scales differ");
    }
    // kept tensors (up_proj ignored, the embedding, the LM head) are the source's bytes
    for id in [
        TensorId::Layer {
            index: 0,
            kind: LayerTensor::Up,
        },
        TensorId::TokenEmbedding,
        TensorId::Output,
    ] {
        let a = src.bytes(src.part(id, Part::Weight).unwrap()).unwrap();
        let b = out.bytes(out.part(id, Part::Weight).unwrap()).unwrap();
        assert!(a == b, "{id}: kept bytes differ");
    }

    // a NaN in row 4500 of gate_proj (in its second block)
    let src_dir = tmp.path().join("src");
    let file = src_dir.join("model.safetensors");
    let mut bytes = std::fs::read(&file).unwrap();
    let hlen = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + hlen]).unwrap();
    let start = header["model.layers.0.mlp.gate_proj.weight"]["data_offsets"][0]
        .as_u64()
        .unwrap() as usize;
    let at = 8 + hlen + start + (4500 * 1024 + 7) * 2;
    bytes[at..at + 2].copy_from_slice(&0x7FC0u16.to_le_bytes());
    std::fs::write(&file, &bytes).unwrap();
    drop(src);
    let src = Checkpoint::open(&src_dir).unwrap();
    let dest = tmp.path().join("bad");
    let e = quantize_to_hf(&src, &dest, &o).unwrap_err().to_string();
    assert!(
        e.contains("gate_proj") && e.contains("4500"),
        "error must name the tensor and its row: {e}"
    );
    assert!(!dest.exists());
    let staged: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .filter(|d| d.file_name().to_string_lossy().contains("partial"))
        .flat_map(|d| std::fs::read_dir(d.path()).unwrap().flatten())
        .map(|d| d.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        staged.iter().all(|n| !n.contains(".part")),
        "a partial file was left behind: {staged:?}"
    );
}

/// A layout without parameters.
#[allow(dead_code)]
fn fixed(kind: &'static dyn LayoutScheme) -> HfScheme {
    HfScheme::new(kind, Params::NONE)
}

/// A `pack-quantized` module as read back: bits, columns per scale, zero points stored.
#[allow(dead_code)]
fn int_storage(bits: u8, group_size: usize, asymmetric: bool) -> HfScheme {
    HfScheme::new(
        &int::INT,
        Params {
            bits,
            group_size: Some(group_size),
            symmetric: !asymmetric,
        },
    )
}

/// An MLX affine module as read back.
#[allow(dead_code)]
fn mlx_storage(bits: u8, group_size: usize) -> HfScheme {
    HfScheme::new(
        &mlx::MLX,
        Params {
            bits,
            group_size: Some(group_size),
            symmetric: false,
        },
    )
}
