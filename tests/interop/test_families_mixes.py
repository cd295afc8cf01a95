"""GGUF mixes of the Qwen families at real widths against llama.cpp's `llama-quantize`.

The committed family fixtures (tests/fixtures/families) are 64 wide: every row is shorter than a
k-quant super-block, so they exercise none of llama-quantize's width rules. Here random-weight
Hugging Face checkpoints with the widths of Qwen2.5-0.5B (hidden 896 = 3.5 × 256: every k-quant
falls back on the attention and gate/up rows; q/k/v biases) and Qwen3-0.6B (hidden 1024, head_dim
128 free of the hidden size, per-head q/k norms) are written with numpy, 4 layers each (so the
attention-V / FFN-down schedules of `llama_tensor_get_type` pick more bits for some layers and
not others), with the committed fixture's tokenizer. qforge converts each to an F32 GGUF; both
tools quantize that same file; every tensor must get llama-quantize's type and bytes.

Weights are drawn from a fixed seed; nothing here is committed (about 250 MB of F32 per model in
the test's temporary directory).
"""

import json
import pathlib
import shutil
import subprocess

import numpy as np
import pytest
from safetensors.numpy import save_file

from conftest import ROOT
from test_quantize_gguf import native_quantize, run_llama_quantize, run_qforge, tensors  # noqa: F401

FIXTURES = ROOT / "tests" / "fixtures" / "families"
LAYERS = 4

# Qwen2.5-0.5B's and Qwen3-0.6B's config.json widths (the models' own configs on the hub).
SHAPES = {
    "qwen2": dict(fixture="qwen2", arch="Qwen2ForCausalLM", hidden=896, ffn=4864, heads=14, kv=2,
                  head_dim=64, bias=True, qk_norm=False),
    "qwen3": dict(fixture="qwen3", arch="Qwen3ForCausalLM", hidden=1024, ffn=3072, heads=16, kv=8,
                  head_dim=128, bias=False, qk_norm=True),
}
MIXES = ["Q4_K_M", "Q8_0", "Q5_K_S", "Q3_K_M"]


def _write_model(family: str, out: pathlib.Path) -> pathlib.Path:
    s = SHAPES[family]
    src = FIXTURES / s["fixture"]
    out.mkdir(parents=True, exist_ok=True)
    for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"]:
        if (src / f).is_file():
            shutil.copy(src / f, out / f)
    cfg = json.loads((src / "config.json").read_text())
    vocab = cfg["vocab_size"]
    cfg.update(hidden_size=s["hidden"], intermediate_size=s["ffn"], num_attention_heads=s["heads"],
               num_key_value_heads=s["kv"], head_dim=s["head_dim"], num_hidden_layers=LAYERS,
               tie_word_embeddings=True, dtype="float32")
    if "layer_types" in cfg:
        cfg["layer_types"] = ["full_attention"] * LAYERS
    cfg.pop("torch_dtype", None)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))

    rng = np.random.default_rng(20261207)
    h, f, hd = s["hidden"], s["ffn"], s["head_dim"]
    q_out, kv_out = s["heads"] * hd, s["kv"] * hd

    def w(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)

    t = {"model.embed_tokens.weight": w(vocab, h), "model.norm.weight": 1.0 + w(h)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = 1.0 + w(h)
        t[p + "post_attention_layernorm.weight"] = 1.0 + w(h)
        t[p + "self_attn.q_proj.weight"] = w(q_out, h)
        t[p + "self_attn.k_proj.weight"] = w(kv_out, h)
        t[p + "self_attn.v_proj.weight"] = w(kv_out, h)
        t[p + "self_attn.o_proj.weight"] = w(h, q_out)
        if s["bias"]:
            t[p + "self_attn.q_proj.bias"] = w(q_out)
            t[p + "self_attn.k_proj.bias"] = w(kv_out)
            t[p + "self_attn.v_proj.bias"] = w(kv_out)
        if s["qk_norm"]:
            t[p + "self_attn.q_norm.weight"] = 1.0 + w(hd)
            t[p + "self_attn.k_norm.weight"] = 1.0 + w(hd)
        t[p + "mlp.gate_proj.weight"] = w(f, h)
        t[p + "mlp.up_proj.weight"] = w(f, h)
        t[p + "mlp.down_proj.weight"] = w(h, f)
    save_file(t, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


@pytest.fixture(scope="module", params=sorted(SHAPES))
def family_f32_gguf(request, qforge, tmp_path_factory):
    family = request.param
    work = tmp_path_factory.mktemp(f"mixes-{family}")
    hf = _write_model(family, work / "hf")
    gguf = work / f"{family}-f32.gguf"
    subprocess.run([str(qforge), "convert", str(hf), str(gguf), "--to", "gguf", "--dtype", "f32"],
                   check=True, capture_output=True)
    return family, gguf, work


@pytest.mark.parametrize("mix", MIXES)
def test_family_mix_matches_llama_quantize(qforge, native_quantize, family_f32_gguf, mix):  # noqa: F811
    family, src, work = family_f32_gguf
    ref, ours = work / f"ref-{mix}.gguf", work / f"ours-{mix}.gguf"
    run_llama_quantize(native_quantize, src, ref, mix)
    run_qforge(qforge, src, ours, mix)
    want, got = tensors(ref), tensors(ours)
    assert sorted(want) == sorted(got), f"{family} {mix}: tensor names differ"
    wrong_type = {n: (want[n][0], got[n][0]) for n in want if want[n][0] != got[n][0]}
    assert not wrong_type, f"{family} {mix}: {len(wrong_type)} tensors typed differently: {wrong_type}"
    wrong_bytes = [n for n in want if want[n][1] != got[n][1]]
    assert not wrong_bytes, f"{family} {mix}: {len(wrong_bytes)} tensors differ: {wrong_bytes[:8]}"
    # the fallbacks really happen at these widths (else the test checks less than it says)
    types = {n: t for n, (t, _) in want.items()}
    if mix == "Q4_K_M" and family == "qwen2":
        assert types["blk.0.attn_q.weight"] not in ("Q4_K", "Q6_K"), types["blk.0.attn_q.weight"]
