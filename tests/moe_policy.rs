//! `--policy meta-llama4`: Meta's Llama 4 FP8 recipe (llama-models
//! `models/llama4/quantization/loader.py` `convert_to_quantized_model`, `fp8_mixed`: routed
//! experts only, MoE blocks other than the first and last) on the llama4 fixture (4 blocks, MoE
//! in blocks 1 and 3, block 3 the last): exactly block 1's 3 × 3 expert projections are FP8;
//! its shared expert and router, attention, the dense blocks and block 3 stay BF16.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

const QFORGE: &str = env!("CARGO_BIN_EXE_qforge");

#[test]
fn meta_llama4_policy_quantizes_only_inner_routed_experts() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/families/llama4");
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("fp8");
    let o = Command::new(QFORGE)
        .args(["quantize", src.to_str().unwrap(), out.to_str().unwrap()])
        .args(["--scheme", "fp8-rowwise", "--policy", "meta-llama4", "-q"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let b = std::fs::read(out.join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let h: serde_json::Map<String, Value> = serde_json::from_slice(&b[8..8 + n]).unwrap();
    let mut fp8: Vec<&str> = h
        .iter()
        .filter(|(_, v)| v["dtype"] == "F8_E4M3")
        .map(|(k, _)| k.as_str())
        .collect();
    fp8.sort_unstable();
    let mut want: Vec<String> = (0..3)
        .flat_map(|e| {
            ["down_proj", "gate_proj", "up_proj"]
                .map(|p| format!("model.layers.1.feed_forward.experts.{e}.{p}.weight"))
        })
        .collect();
    want.sort_unstable();
    assert_eq!(fp8, want);
    for k in [
        "model.layers.1.feed_forward.router.weight",
        "model.layers.1.feed_forward.shared_expert.gate_proj.weight",
        "model.layers.1.self_attn.q_proj.weight",
    ] {
        assert_eq!(h[k]["dtype"], "BF16", "{k}");
    }
    // block 0's dense FFN (whatever its module is spelled) and every tensor of blocks 0 and 3
    let kept = |k: &String| k.starts_with("model.layers.0.") || k.starts_with("model.layers.3.");
    let dense = h
        .keys()
        .filter(|k| kept(k) && k.ends_with("gate_proj.weight"));
    // block 0: the dense gate; block 3: 3 experts and the shared expert
    assert_eq!(dense.count(), 5, "{:?}", h.keys().collect::<Vec<_>>());
    assert!(h.iter().all(|(k, v)| !kept(k) || v["dtype"] != "F8_E4M3"));
    let cfg: Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert!(cfg["quantization_config"].is_object(), "{cfg}");
}
