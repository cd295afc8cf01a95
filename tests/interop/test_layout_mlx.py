"""`qforge quantize --layout mlx` against mlx-lm itself, on a small random BF16 Llama (two blocks,
hidden 192, FFN 320, tied embeddings): `mlx_lm.utils.load_model` loads our output, and every
parameter it holds (packed `weight`, `scales`, `biases` of the linears and the embedding, norms)
equals, bit for bit, what `mlx_lm.utils.quantize_model` (the quantization `mlx_lm.convert -q`
runs) makes from the BF16 source; the `quantization` config matches and the next-token logits
are identical. Needs mlx-lm (`pip install mlx-lm "mlx[cpu]"`, no torch); skipped without it.
"""

import json
import subprocess

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core", reason="mlx is not installed in this venv")
mlx_utils = pytest.importorskip("mlx_lm.utils", reason="mlx-lm is not installed in this venv")
from mlx.utils import tree_flatten  # noqa: E402

H, F, KV, V = 192, 320, 96, 64


def write_source(src):
    src.mkdir(parents=True)
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": H,
           "intermediate_size": F, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "head_dim": 48, "vocab_size": V, "rms_norm_eps": 1e-5,
           "rope_theta": 500000.0, "max_position_embeddings": 256, "tie_word_embeddings": True,
           "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2}
    (src / "config.json").write_text(json.dumps(cfg))
    shapes = {"model.embed_tokens.weight": (V, H), "model.norm.weight": (H,)}
    for i in range(2):
        p = f"model.layers.{i}"
        shapes |= {f"{p}.input_layernorm.weight": (H,), f"{p}.post_attention_layernorm.weight": (H,),
                   f"{p}.self_attn.q_proj.weight": (H, H), f"{p}.self_attn.k_proj.weight": (KV, H),
                   f"{p}.self_attn.v_proj.weight": (KV, H), f"{p}.self_attn.o_proj.weight": (H, H),
                   f"{p}.mlp.gate_proj.weight": (F, H), f"{p}.mlp.up_proj.weight": (F, H),
                   f"{p}.mlp.down_proj.weight": (H, F)}
    rng = np.random.default_rng(7)
    arrs = {}
    for n, s in shapes.items():
        a = rng.standard_normal(s).astype(np.float32)
        a = 1.0 + 0.1 * a if len(s) == 1 else 0.05 * a
        arrs[n] = mx.array(a).astype(mx.bfloat16)
    mx.save_safetensors(str(src / "model.safetensors"), arrs)


def as_np(a):
    return np.array(a.astype(mx.float32) if a.dtype == mx.bfloat16 else a)


# (4, 128): 192 and 320 are not whole groups of 128, so mlx-lm and qforge both keep everything BF16
@pytest.mark.parametrize("bits,group", [(4, 64), (8, 32), (4, 32), (8, 64), (4, 128)])
def test_mlx_lm_loads_our_output_and_matches_its_own_quantization(qforge, tmp_path, bits, group):
    src = tmp_path / "src"
    write_source(src)
    out = tmp_path / "out"
    subprocess.run([str(qforge), "quantize", str(src), str(out), "--layout", "mlx",
                    "--scheme", f"int{bits}-g{group}"], check=True, capture_output=True)
    ours, ocfg = mlx_utils.load_model(out)
    ref, rcfg = mlx_utils.load_model(src)
    ref, qcfg = mlx_utils.quantize_model(ref, rcfg, group, bits)
    assert ocfg["quantization"] == qcfg["quantization"]
    assert ocfg["quantization_config"] == qcfg["quantization_config"]
    po, pr = dict(tree_flatten(ours.parameters())), dict(tree_flatten(ref.parameters()))
    assert po.keys() == pr.keys()
    for k in po:
        assert po[k].dtype == pr[k].dtype, k
        assert np.array_equal(as_np(po[k]), as_np(pr[k])), k
    toks = mx.array([[1, 5, 9, 33, 2, 17]])
    lo, lr = ours(toks).astype(mx.float32), ref(toks).astype(mx.float32)
    assert np.array_equal(np.array(lo), np.array(lr))
