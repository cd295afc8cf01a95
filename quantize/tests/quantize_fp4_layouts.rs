//! compressed-tensors NVFP4A16 and MXFP4 output on a synthetic BF16 Llama: the
//! `quantization_config` exactly as compressed-tensors 0.20 serializes the llm-compressor presets,
//! the tensors its compressors write (names, dtypes, shapes), the fused q/k/v and gate/up global
//! scales, and bytes equal to the `qforge_codecs::fp4` codecs (which the interop tests check
//! against compressed-tensors' arithmetic).

use std::path::Path;

use qforge_codecs::fp4;
use qforge_codecs::int4::Int4Arith;
use qforge_codecs::DType;
use qforge_convert::write::OutputOptions;
use qforge_convert::Checkpoint;
use qforge_quantize::layout::{
    fp4::{MXFP4, MXFP4A16},
    nvfp4, quantize_to_hf, HfLayout, HfQuantOptions, HfScheme, IgnoreList, LayoutScheme, Params,
    Policy,
};
use qforge_quantize::numerics::Numerics;
use serde_json::{json, Value};

const HIDDEN: usize = 64;
const FFN: usize = 128;
const KV: usize = 32;

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

/// The source tensors (name, shape, BF16-exact values): one Llama block, tied embeddings.
fn tensors() -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let p = "model.layers.0";
    let shapes: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![96, HIDDEN]),
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
            let v = values(i as u64 + 1, s.iter().product());
            (n, s, v)
        })
        .collect()
}

fn source(dir: &Path) -> Checkpoint {
    std::fs::create_dir(dir).unwrap();
    let config = json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": HIDDEN, "intermediate_size": FFN, "num_hidden_layers": 1,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "vocab_size": 96, "rms_norm_eps": 1e-5, "rope_theta": 500_000.0,
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

fn opts(scheme: HfScheme) -> HfQuantOptions {
    HfQuantOptions {
        scheme,
        layout: HfLayout::CompressedTensors,
        policy: Policy::AllLinear,
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

/// `quantization_config` with the given format and argument objects, as compressed-tensors 0.20
/// writes it for a model whose only ignored module is the LM head.
fn ct_config(format: &str, weights: &Value, input: &Value) -> Value {
    json!({
        "config_groups": {"group_0": {
            "format": null, "input_activations": input, "output_activations": null,
            "targets": ["Linear"], "weights": weights,
        }},
        "format": format, "global_compression_ratio": null, "ignore": ["lm_head"],
        "kv_cache_scheme": null, "moe_sparsity_config": null,
        "quant_method": "compressed-tensors", "quantization_status": "compressed",
        "sparsity_config": {}, "transform_config": {}, "version": "0.20.0",
    })
}

fn read_out(dir: &Path) -> Vec<(String, String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| {
            (
                n,
                format!("{:?}", v.dtype()),
                v.shape().to_vec(),
                v.data().to_vec(),
            )
        })
        .collect()
}

fn get<'a>(
    out: &'a [(String, String, Vec<usize>, Vec<u8>)],
    name: &str,
) -> &'a (String, String, Vec<usize>, Vec<u8>) {
    out.iter()
        .find(|t| t.0 == name)
        .unwrap_or_else(|| panic!("{name} missing"))
}

fn src_values(name: &str) -> Vec<f32> {
    tensors().into_iter().find(|t| t.0 == name).unwrap().2
}

#[test]
fn nvfp4a16_config_tensors_and_fused_global_scales() {
    let tmp = tempfile::tempdir().unwrap();
    let src = source(&tmp.path().join("src"));
    let dest = tmp.path().join("nvfp4");
    quantize_to_hf(&src, &dest, &opts(fixed(&nvfp4::NVFP4A16))).unwrap();
    let cfg: Value =
        serde_json::from_slice(&std::fs::read(dest.join("config.json")).unwrap()).unwrap();
    let weights = json!({"dynamic": false, "group_size": 16, "num_bits": 4,
        "scale_dtype": "torch.float8_e4m3fn", "strategy": "tensor_group", "symmetric": true,
        "type": "float"});
    assert_eq!(
        cfg["quantization_config"],
        ct_config("nvfp4-pack-quantized", &weights, &Value::Null)
    );
    let out = read_out(&dest);
    let groups: [&[&str]; 3] = [
        &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
        &["mlp.gate_proj", "mlp.up_proj"],
        &["self_attn.o_proj"],
    ];
    let mut checked = 0;
    for group in groups {
        let amax = group
            .iter()
            .flat_map(|m| src_values(&format!("model.layers.0.{m}.weight")))
            .fold(0f32, |a, x| a.max(x.abs()));
        let gs = fp4::nvfp4_global_scale(amax, Int4Arith::Bf16);
        for m in group {
            let base = format!("model.layers.0.{m}");
            let w = src_values(&format!("{base}.weight"));
            let rows = w.len() / HIDDEN;
            let p = fp4::quantize_nvfp4(&w, HIDDEN, gs, Int4Arith::Bf16).unwrap();
            let (_, dt, shape, data) = get(&out, &format!("{base}.weight_packed"));
            assert_eq!((dt.as_str(), shape.clone()), ("U8", vec![rows, HIDDEN / 2]));
            assert_eq!(data, &p.packed, "{base}");
            let (_, dt, shape, data) = get(&out, &format!("{base}.weight_scale"));
            assert_eq!(
                (dt.as_str(), shape.clone()),
                ("F8_E4M3", vec![rows, HIDDEN / 16])
            );
            assert_eq!(data, &p.scales, "{base}");
            let (_, dt, shape, data) = get(&out, &format!("{base}.weight_global_scale"));
            assert_eq!((dt.as_str(), shape.clone()), ("F32", vec![1]));
            assert_eq!(data, &gs.to_le_bytes().to_vec(), "{base}");
            assert!(out.iter().all(|t| t.0 != format!("{base}.weight")));
            checked += 1;
        }
    }
    assert_eq!(checked, 6);
    // down_proj is quantized alone (k = 128)
    let (_, dt, shape, _) = get(&out, "model.layers.0.mlp.down_proj.weight_packed");
    assert_eq!((dt.as_str(), shape.clone()), ("U8", vec![HIDDEN, FFN / 2]));
}

#[test]
fn mxfp4_and_mxfp4a16_config_and_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    let src = source(&tmp.path().join("src"));
    let weights = json!({"dynamic": false, "group_size": 32, "num_bits": 4,
        "scale_dtype": "torch.uint8", "strategy": "group", "symmetric": true, "type": "float"});
    let input = json!({"dynamic": true, "group_size": 32, "num_bits": 4,
        "scale_dtype": "torch.uint8", "strategy": "group", "symmetric": true, "type": "float"});
    for (a16, want_input) in [(false, input), (true, Value::Null)] {
        let dest = tmp.path().join(format!("mxfp4-{a16}"));
        quantize_to_hf(
            &src,
            &dest,
            &opts(fixed(if a16 { &MXFP4A16 } else { &MXFP4 })),
        )
        .unwrap();
        let cfg: Value =
            serde_json::from_slice(&std::fs::read(dest.join("config.json")).unwrap()).unwrap();
        assert_eq!(
            cfg["quantization_config"],
            ct_config("mxfp4-pack-quantized", &weights, &want_input)
        );
        let out = read_out(&dest);
        for m in ["self_attn.q_proj", "mlp.up_proj", "mlp.down_proj"] {
            let base = format!("model.layers.0.{m}");
            let w = src_values(&format!("{base}.weight"));
            let k = if m == "mlp.down_proj" { FFN } else { HIDDEN };
            let p = fp4::quantize_mxfp4_ct(&w, k, Int4Arith::Bf16).unwrap();
            let (_, dt, shape, data) = get(&out, &format!("{base}.weight_packed"));
            assert_eq!(
                (dt.as_str(), shape.clone()),
                ("U8", vec![w.len() / k, k / 2])
            );
            assert_eq!(data, &p.packed);
            let (_, dt, shape, data) = get(&out, &format!("{base}.weight_scale"));
            assert_eq!(
                (dt.as_str(), shape.clone()),
                ("U8", vec![w.len() / k, k / 32])
            );
            assert_eq!(data, &p.scales);
            assert!(out
                .iter()
                .all(|t| t.0 != format!("{base}.weight_global_scale")));
        }
    }
}

/// NVFP4 W4A4 (llm-compressor `NVFP4`): NVFP4A16's tensors byte for byte plus one F32
/// `input_global_scale` per quantized module, `448·6 / amax` of its calibrated input range in
/// BF16 arithmetic; `input_activations` as compressed-tensors 0.20 serializes the preset; a
/// module without a calibrated range is refused before anything is written. The checkpoint
/// reads back (the new part is known to the reader) with the same dequantized weights.
#[test]
fn nvfp4_w4a4_adds_calibrated_input_global_scales() {
    use qforge_quantize::dequant::WeightRead;
    let tmp = tempfile::tempdir().unwrap();
    let src = source(&tmp.path().join("src"));
    let a16 = tmp.path().join("a16");
    quantize_to_hf(&src, &a16, &opts(fixed(&nvfp4::NVFP4A16))).unwrap();
    let linears = [
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    ];
    let amax: std::collections::BTreeMap<String, f32> = linears
        .iter()
        .enumerate()
        .map(|(i, m)| (format!("model.layers.0.{m}"), 0.3 + i as f32 * 1.7))
        .collect();
    let mut o = opts(fixed(&nvfp4::NVFP4));
    let mut partial = amax.clone();
    partial.remove("model.layers.0.mlp.down_proj");
    o.input_amax = Some(partial);
    let bad = tmp.path().join("bad");
    let e = quantize_to_hf(&src, &bad, &o).unwrap_err().to_string();
    assert!(
        e.contains("mlp.down_proj") && e.contains("--method fp8-static"),
        "{e}"
    );
    assert!(!bad.exists());

    o.input_amax = Some(amax.clone());
    let dest = tmp.path().join("w4a4");
    quantize_to_hf(&src, &dest, &o).unwrap();
    let cfg: Value =
        serde_json::from_slice(&std::fs::read(dest.join("config.json")).unwrap()).unwrap();
    let weights = json!({"dynamic": false, "group_size": 16, "num_bits": 4,
        "scale_dtype": "torch.float8_e4m3fn", "strategy": "tensor_group", "symmetric": true,
        "type": "float"});
    let input = json!({"dynamic": "local", "group_size": 16, "num_bits": 4,
        "observer": "static_minmax", "scale_dtype": "torch.float8_e4m3fn",
        "strategy": "tensor_group", "symmetric": true, "type": "float"});
    assert_eq!(
        cfg["quantization_config"],
        ct_config("nvfp4-pack-quantized", &weights, &input)
    );
    let (w16, w4) = (read_out(&a16), read_out(&dest));
    for t in &w16 {
        assert_eq!(get(&w4, &t.0), t, "{}", t.0);
    }
    assert_eq!(w4.len(), w16.len() + linears.len());
    for (m, a) in &amax {
        let (_, dt, shape, data) = get(&w4, &format!("{m}.input_global_scale"));
        assert_eq!((dt.as_str(), shape.clone()), ("F32", vec![1]));
        let want = fp4::nvfp4_global_scale(*a, Int4Arith::Bf16);
        assert_eq!(data, &want.to_le_bytes().to_vec(), "{m}");
        // BF16 arithmetic: 1/amax and the product are rounded to BF16
        let r = |x: f32| half::bf16::from_f32(x).to_f32();
        assert_eq!(want, r(r(1.0 / a) * 2688.0), "{m}");
    }
    let (c16, c4) = (
        Checkpoint::open(&a16).unwrap(),
        Checkpoint::open(&dest).unwrap(),
    );
    for kind in qforge_convert::LayerTensor::LINEARS {
        let id = qforge_convert::TensorId::Layer { index: 0, kind };
        assert_eq!(
            c4.weight_f32(id).unwrap(),
            c16.weight_f32(id).unwrap(),
            "{id}"
        );
    }
}

/// A layout without parameters.
#[allow(dead_code)]
fn fixed(kind: &'static dyn LayoutScheme) -> HfScheme {
    HfScheme::new(kind, Params::NONE)
}
