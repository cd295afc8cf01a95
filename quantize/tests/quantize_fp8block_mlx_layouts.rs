//! FP8_BLOCK (compressed-tensors) and mlx-lm output on a synthetic BF16 Llama whose dimensions
//! are not multiples of 128 (192 = 1.5 blocks, 320 = 2.5 blocks, as SmolLM2's 576 is 4.5).
//!
//! FP8_BLOCK: the `quantization_config` as compressed-tensors 0.20 serializes llm-compressor's
//! `FP8_BLOCK` preset, the tensors its `FloatQuantizationCompressor` writes (names, dtypes,
//! scale grids with partial edge blocks), and bytes equal to `qforge_codecs::fp8_ct`'s block
//! codec. MLX: `quantization` as mlx-lm writes it, the modules it quantizes (linears and the
//! embedding, only where rows split into whole groups) and bytes equal to
//! `qforge_codecs::mlx`.

use qforge_quantize::dequant::WeightRead;
use std::path::Path;

use qforge_codecs::fp4;
use qforge_codecs::fp8_ct::{self, CT_BLOCK};
use qforge_codecs::int4::Int4Arith;
use qforge_codecs::mlx;
use qforge_codecs::DType;
use qforge_convert::names::{LayerTensor, TensorId};
use qforge_convert::write::OutputOptions;
use qforge_convert::Checkpoint;
use qforge_quantize::dequant::WeightStorage;
use qforge_quantize::layout::{
    fp4::MXFP4, fp8, fp8_block, int, mlx::MLX, nvfp4, quantize_to_hf, HfLayout, HfQuantOptions,
    HfScheme, IgnoreList, LayoutScheme, Params, Policy,
};
use qforge_quantize::numerics::Numerics;
use serde_json::{json, Value};

const HIDDEN: usize = 192;
const FFN: usize = 320;
const KV: usize = 96;

fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let v = ((s >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 0.2;
            let v = if i % 97 == 0 { v * 8.0 } else { v };
            half::bf16::from_f64(v).to_f32()
        })
        .collect()
}

fn tensors() -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let p = "model.layers.0";
    let shapes: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![64, HIDDEN]),
        ("model.norm.weight".into(), vec![HIDDEN]),
        (format!("{p}.input_layernorm.weight"), vec![HIDDEN]),
        (format!("{p}.post_attention_layernorm.weight"), vec![HIDDEN]),
        (format!("{p}.self_attn.q_proj.weight"), vec![HIDDEN, HIDDEN]),
        (format!("{p}.self_attn.k_proj.weight"), vec![KV, HIDDEN]),
        (format!("{p}.self_attn.v_proj.weight"), vec![KV, HIDDEN]),
        (format!("{p}.self_attn.o_proj.weight"), vec![HIDDEN, HIDDEN]),
        (format!("{p}.mlp.gate_proj.weight"), vec![FFN, HIDDEN]),
        (format!("{p}.mlp.up_proj.weight"), vec![FFN, HIDDEN]),
        (format!("{p}.mlp.down_proj.weight"), vec![HIDDEN, FFN]),
    ];
    shapes
        .into_iter()
        .enumerate()
        .map(|(i, (n, s))| {
            let mut v = values(i as u64 + 1, s.iter().product());
            // one all-zero block (the eps scale) in q_proj: rows 128.., columns 128..
            if n.ends_with("q_proj.weight") {
                for r in 128..HIDDEN {
                    v[r * HIDDEN + 128..(r + 1) * HIDDEN].fill(0.0);
                }
            }
            (n, s, v)
        })
        .collect()
}

fn source(dir: &Path) -> Checkpoint {
    std::fs::create_dir(dir).unwrap();
    let config = json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": HIDDEN, "intermediate_size": FFN, "num_hidden_layers": 1,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 48,
        "vocab_size": 64, "rms_norm_eps": 1e-5, "rope_theta": 500_000.0,
        "max_position_embeddings": 256, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
        "bos_token_id": 1, "eos_token_id": 2,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors()
        .into_iter()
        .map(|(n, s, v)| {
            let b = v
                .iter()
                .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                .collect();
            (n, s, b)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = data
        .iter()
        .map(|(n, s, b)| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, s.clone(), b);
            (n.clone(), v.unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    Checkpoint::open(dir).unwrap()
}

fn opts(dtype: DType) -> HfQuantOptions {
    HfQuantOptions {
        scheme: fixed(&fp8_block::FP8_BLOCK),
        layout: HfLayout::CompressedTensors,
        policy: Policy::AllLinear,
        ignore: IgnoreList::default(),
        dtype,
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

#[test]
fn fp8_block_config_tensors_and_partial_edge_blocks() {
    let tmp = tempfile::tempdir().unwrap();
    let src = source(&tmp.path().join("src"));
    for (dtype, arith, st_dtype) in [
        (DType::BF16, Int4Arith::Bf16, "BF16"),
        (DType::F32, Int4Arith::F32, "F32"),
    ] {
        let dest = tmp.path().join(format!("fp8-block-{dtype}"));
        quantize_to_hf(&src, &dest, &opts(dtype)).unwrap();
        let cfg: Value =
            serde_json::from_slice(&std::fs::read(dest.join("config.json")).unwrap()).unwrap();
        let want = json!({
            "config_groups": {"group_0": {
                "format": null,
                "input_activations": {"dynamic": true, "group_size": 128, "num_bits": 8,
                    "strategy": "group", "symmetric": true, "type": "float"},
                "output_activations": null,
                "targets": ["Linear"],
                "weights": {"block_structure": [128, 128], "dynamic": false, "group_size": null,
                    "num_bits": 8, "strategy": "block", "symmetric": true, "type": "float"},
            }},
            "format": "float-quantized", "global_compression_ratio": null, "ignore": ["lm_head"],
            "kv_cache_scheme": null, "moe_sparsity_config": null,
            "quant_method": "compressed-tensors", "quantization_status": "compressed",
            "sparsity_config": {}, "transform_config": {}, "version": "0.20.0",
        });
        assert_eq!(cfg["quantization_config"], want);
        let bytes = std::fs::read(dest.join("model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut checked = 0;
        for (name, shape, w) in tensors() {
            let Some(base) = name.strip_suffix(".weight") else {
                continue;
            };
            if !base.contains("_proj") {
                continue;
            }
            let (rows, k) = (shape[0], shape[1]);
            let want = fp8_ct::quantize_fp8_block_ct(&w, k, CT_BLOCK, arith).unwrap();
            let codes = st.tensor(&name).unwrap();
            assert_eq!(format!("{:?}", codes.dtype()), "F8_E4M3");
            assert_eq!(codes.shape(), &[rows, k]);
            assert_eq!(codes.data(), &want.codes[..], "{name}");
            let scale = st.tensor(&format!("{base}.weight_scale")).unwrap();
            assert_eq!(format!("{:?}", scale.dtype()), st_dtype);
            assert_eq!(scale.shape(), &[rows.div_ceil(128), k.div_ceil(128)]);
            let mut enc = Vec::new();
            for s in &want.scales {
                if dtype == DType::BF16 {
                    // the scales are exact in the stored dtype
                    assert_eq!(half::bf16::from_f32(*s).to_f32(), *s);
                    enc.extend(half::bf16::from_f32(*s).to_le_bytes());
                } else {
                    enc.extend(s.to_le_bytes());
                }
            }
            assert_eq!(scale.data(), &enc[..], "{base}");
            checked += 1;
        }
        assert_eq!(checked, 7);
        // the all-zero block of q_proj gets the dtype's eps as its scale
        let q = fp8_ct::quantize_fp8_block_ct(&tensors()[4].2, HIDDEN, CT_BLOCK, arith).unwrap();
        assert_eq!(q.scales[3], fp8_ct::ct_fp8_scale(0.0, arith));
        // embeddings and norms stay in the model dtype
        let emb = st.tensor("model.embed_tokens.weight").unwrap();
        assert_eq!(format!("{:?}", emb.dtype()), st_dtype);
    }
}

fn mlx_opts(bits: u8, group: usize) -> HfQuantOptions {
    HfQuantOptions {
        scheme: HfScheme::new(
            &int::INT,
            Params {
                bits,
                group_size: Some(group),
                symmetric: true,
            },
        ),
        layout: HfLayout::Mlx,
        ..opts(DType::BF16)
    }
}

fn bf16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
        .collect()
}

#[test]
fn mlx_config_modules_and_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let src = source(&tmp.path().join("src"));
    for (bits, group) in [(4u8, 64usize), (8, 32), (4, 128)] {
        let dest = tmp.path().join(format!("mlx-{bits}-{group}"));
        quantize_to_hf(&src, &dest, &mlx_opts(bits, group)).unwrap();
        let cfg: Value =
            serde_json::from_slice(&std::fs::read(dest.join("config.json")).unwrap()).unwrap();
        let q = json!({"bits": bits, "group_size": group, "mode": "affine"});
        assert_eq!(cfg["quantization"], q);
        assert_eq!(cfg["quantization_config"], q);
        let bytes = std::fs::read(dest.join("model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let (mut quantized, mut kept) = (0, 0);
        for (name, shape, w) in tensors() {
            let base = name.strip_suffix(".weight").unwrap();
            let k = *shape.last().unwrap();
            let module = base.contains("_proj") || base.ends_with("embed_tokens");
            if !(module && k % group == 0) {
                // norms, and modules mlx-lm's predicate leaves out, stay BF16
                let t = st.tensor(&name).unwrap();
                assert_eq!(format!("{:?}", t.dtype()), "BF16", "{name}");
                assert_eq!(t.data(), &bf16_bytes(&w)[..], "{name}");
                assert!(st.tensor(&format!("{base}.scales")).is_err());
                kept += 1;
                continue;
            }
            let rows = shape[0];
            let m = mlx::quantize_mlx_affine(&w, k, bits, group, Int4Arith::Bf16).unwrap();
            let t = st.tensor(&name).unwrap();
            assert_eq!(format!("{:?}", t.dtype()), "U32");
            assert_eq!(t.shape(), &[rows, k * usize::from(bits) / 32]);
            let packed: Vec<u8> = m.packed.iter().flat_map(|x| x.to_le_bytes()).collect();
            assert_eq!(t.data(), &packed[..], "{name}");
            for (part, v) in [("scales", &m.scales), ("biases", &m.biases)] {
                let t = st.tensor(&format!("{base}.{part}")).unwrap();
                assert_eq!(format!("{:?}", t.dtype()), "BF16");
                assert_eq!(t.shape(), &[rows, k / group]);
                assert_eq!(t.data(), &bf16_bytes(v)[..], "{base}.{part}");
            }
            quantized += 1;
        }
        // 7 linears + the embedding; at 128 only down_proj... none split (192, 320): all kept
        let want = if group == 128 { 0 } else { 8 };
        assert_eq!((quantized, kept), (want, 11 - want), "{bits} {group}");
    }
    // other schemes, group sizes and calibration results are refused
    for scheme in [
        fixed(&fp8::FP8_ROWWISE),
        HfScheme::new(
            &int::INT,
            Params {
                bits: 4,
                group_size: Some(16),
                symmetric: true,
            },
        ),
        HfScheme::new(
            &int::INT,
            Params {
                bits: 4,
                group_size: None,
                symmetric: false,
            },
        ),
    ] {
        let o = HfQuantOptions {
            scheme,
            ..mlx_opts(4, 64)
        };
        let err = quantize_to_hf(&src, &tmp.path().join("bad"), &o).unwrap_err();
        assert!(err.to_string().contains("mlx layout"), "{err}");
    }
}

fn linears() -> [(LayerTensor, &'static str); 7] {
    [
        (LayerTensor::Q, "self_attn.q_proj"),
        (LayerTensor::K, "self_attn.k_proj"),
        (LayerTensor::V, "self_attn.v_proj"),
        (LayerTensor::O, "self_attn.o_proj"),
        (LayerTensor::Gate, "mlp.gate_proj"),
        (LayerTensor::Up, "mlp.up_proj"),
        (LayerTensor::Down, "mlp.down_proj"),
    ]
}

/// The checkpoint reader (what verify and inspect use) reads FP8_BLOCK, NVFP4A16 and MXFP4
/// outputs back: its storage detection names them, and its `f32` weights equal the codecs'
/// decoding of the written tensors bit for bit (and, rounded to BF16, compressed-tensors' BF16
/// decompression as the codecs state it).
#[test]
fn fp8_block_and_fp4_outputs_read_back_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let src = source(&tmp.path().join("src"));
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let bf16 = |v: &[f32]| {
        v.iter()
            .map(|x| half::bf16::from_f32(*x).to_bits())
            .collect::<Vec<_>>()
    };
    for (scheme, storage) in [
        (
            fixed(&fp8_block::FP8_BLOCK),
            WeightStorage::Quantized(fixed(&fp8_block::FP8_BLOCK)),
        ),
        (
            fixed(&nvfp4::NVFP4A16),
            WeightStorage::Quantized(fixed(&nvfp4::NVFP4A16)),
        ),
        (fixed(&MXFP4), WeightStorage::Quantized(fixed(&MXFP4))),
    ] {
        let dest = tmp.path().join(format!("{storage:?}"));
        let o = HfQuantOptions {
            scheme,
            ..opts(DType::BF16)
        };
        quantize_to_hf(&src, &dest, &o).unwrap();
        let back = Checkpoint::open(&dest).unwrap();
        let bytes = std::fs::read(dest.join("model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for (kind, m) in linears() {
            let id = TensorId::Layer { index: 0, kind };
            assert_eq!(back.weight_storage(id).unwrap(), storage, "{m}");
            let got = back.weight_f32(id).unwrap();
            let base = format!("model.layers.0.{m}");
            let data = |part: &str| {
                st.tensor(&format!("{base}.{part}"))
                    .unwrap()
                    .data()
                    .to_vec()
            };
            let shape = st
                .tensor(&format!("{base}.weight_scale"))
                .unwrap()
                .shape()
                .to_vec();
            let (want, want_bf16) =
                if storage == WeightStorage::Quantized(fixed(&fp8_block::FP8_BLOCK)) {
                    let w = st.tensor(&format!("{base}.weight")).unwrap();
                    let (rows, cols) = (w.shape()[0], w.shape()[1]);
                    let scales: Vec<f32> = data("weight_scale")
                        .chunks(2)
                        .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                        .collect();
                    let b = fp8_ct::Fp8Blocks {
                        rows,
                        cols,
                        block: CT_BLOCK,
                        codes: w.data().to_vec(),
                        scales,
                    };
                    (
                        fp8_ct::dequantize_fp8_block_ct(&b, Int4Arith::F32).unwrap(),
                        fp8_ct::dequantize_fp8_block_ct(&b, Int4Arith::Bf16).unwrap(),
                    )
                } else {
                    let p = fp4::Fp4Packed {
                        rows: shape[0],
                        cols: data("weight_packed").len() * 2 / shape[0],
                        packed: data("weight_packed"),
                        scales: data("weight_scale"),
                    };
                    if storage == WeightStorage::Quantized(fixed(&nvfp4::NVFP4A16)) {
                        let g = data("weight_global_scale");
                        let gs = f32::from_le_bytes([g[0], g[1], g[2], g[3]]);
                        let v = fp4::dequantize_nvfp4(&p, gs).unwrap();
                        (v.clone(), v)
                    } else {
                        (
                            fp4::dequantize_mxfp4_ct(&p, Int4Arith::F32).unwrap(),
                            fp4::dequantize_mxfp4_ct(&p, Int4Arith::Bf16).unwrap(),
                        )
                    }
                };
            assert_eq!(bits(&got), bits(&want), "{storage:?} {m}");
            assert_eq!(bf16(&got), bf16(&want_bf16), "{storage:?} {m}");
        }
    }
}

/// The checkpoint reader reads the mlx layout back (linears and the quantized embedding):
/// storage named with its bits and group size, weights equal to `mx.dequantize`'s rule
/// (`qforge_codecs::mlx::dequantize_mlx_affine` in BF16) bit for bit.
#[test]
fn mlx_output_reads_back_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let src = source(&tmp.path().join("src"));
    let dest = tmp.path().join("mlx");
    quantize_to_hf(&src, &dest, &mlx_opts(4, 64)).unwrap();
    let back = Checkpoint::open(&dest).unwrap();
    let mut ids: Vec<(TensorId, String)> = linears()
        .into_iter()
        .map(|(kind, m)| {
            (
                TensorId::Layer { index: 0, kind },
                format!("model.layers.0.{m}.weight"),
            )
        })
        .collect();
    ids.push((TensorId::TokenEmbedding, "model.embed_tokens.weight".into()));
    let all = tensors();
    for (id, name) in ids {
        assert_eq!(
            back.weight_storage(id).unwrap(),
            WeightStorage::Quantized(mlx_storage(4, 64)),
            "{name}"
        );
        let (_, shape, w) = all.iter().find(|t| t.0 == name).unwrap();
        let k = shape[1];
        let m = mlx::quantize_mlx_affine(w, k, 4, 64, Int4Arith::Bf16).unwrap();
        let want = mlx::dequantize_mlx_affine(&m, Int4Arith::Bf16).unwrap();
        let got = back.weight_f32(id).unwrap();
        assert_eq!(
            got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            want.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            "{name}"
        );
    }
    // norms stay plain
    assert_eq!(
        back.weight_storage(TensorId::OutputNorm).unwrap(),
        WeightStorage::Plain(DType::BF16)
    );
}

/// Rewrite `dir/model.safetensors` with one tensor's shape changed (its bytes cut or padded to
/// fit, so the file itself stays well formed).
fn tamper_shape(dir: &Path, name: &str, shape: Vec<usize>) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    let t = owned.iter_mut().find(|t| t.0 == name).expect(name);
    let elem = t.3.len() / t.2.iter().product::<usize>();
    t.3.resize(shape.iter().product::<usize>() * elem, 0);
    t.2 = shape;
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = owned
        .iter()
        .map(|(n, d, s, b)| {
            let v = safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap();
            (n.clone(), v)
        })
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
}

/// Hostile input: a checkpoint of each new layout whose scale tensor does not fit its weight is
/// refused with an error naming the tensor (at open or when the weight is read), never a panic.
#[test]
fn new_layouts_with_mismatched_scales_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let src = source(&tmp.path().join("src"));
    let q = "model.layers.0.self_attn.q_proj";
    let id = TensorId::Layer {
        index: 0,
        kind: linears()[0].0,
    };
    assert!(linears()[0].1.ends_with("q_proj"));
    let cases = [
        ("fp8block", opts(DType::BF16), "weight_scale"),
        (
            "nvfp4",
            HfQuantOptions {
                scheme: fixed(&nvfp4::NVFP4A16),
                ..opts(DType::BF16)
            },
            "weight_scale",
        ),
        (
            "mxfp4",
            HfQuantOptions {
                scheme: fixed(&MXFP4),
                ..opts(DType::BF16)
            },
            "weight_scale",
        ),
        ("mlx", mlx_opts(4, 64), "scales"),
    ];
    for (label, o, part) in cases {
        let dest = tmp.path().join(label);
        quantize_to_hf(&src, &dest, &o).unwrap();
        let name = format!("{q}.{part}");
        let bytes = std::fs::read(dest.join("model.safetensors")).unwrap();
        let shape = safetensors::SafeTensors::deserialize(&bytes)
            .unwrap()
            .tensor(&name)
            .unwrap()
            .shape()
            .to_vec();
        let mut bad = shape.clone();
        *bad.last_mut().unwrap() += 1;
        tamper_shape(&dest, &name, bad);
        let err = match Checkpoint::open(&dest) {
            Err(e) => e.to_string(),
            Ok(ck) => match ck.weight_storage(id).and_then(|_| ck.weight_f32(id)) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{label}: a {part} of the wrong shape was accepted"),
            },
        };
        assert!(
            err.contains(q),
            "{label}: error does not name the tensor: {err}"
        );
    }
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
        &MLX,
        Params {
            bits,
            group_size: Some(group_size),
            symmetric: false,
        },
    )
}
