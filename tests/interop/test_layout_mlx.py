"""`qforge quantize --layout mlx` against mlx-lm itself, on a small random BF16 Llama (two blocks,
hidden 192, FFN 320, tied embeddings, the tiny fixture's tokenizer):

- `mlx_lm.convert -q` (its `convert(quantize=True)`) on the same BF16 source writes the same
  tensors as qforge: every tensor of the two `model.safetensors` has the same name, dtype, shape
  and bytes, and the `quantization` configs are equal;
- `mlx_lm.utils.load_model` loads our output, and every parameter it holds equals, bit for bit,
  what `mlx_lm.utils.quantize_model` makes from the BF16 source; the next-token logits of the two
  models are identical;
- mlx-lm's Llama with our output's weights dequantized by mlx itself (`mx.dequantize`, in the
  scales' dtype BF16, what mlx's quantized matmul multiplies by) and run in float32 gives the
  same next-token logits as `qforge perplexity`'s dequantized f32 forward (`--logits-out`): the
  same top-1 everywhere and log-probabilities within LOGPROB_MAX_ABS (the two differ by
  summation order only). mlx-lm's own forward of our output as loaded (BF16 activations) is
  within LOGPROB_BF16_MAX_ABS of it (BF16 rounding of every activation).

Bits 4 and 8 with group sizes 32 and 64, and 4 with 128 (192 and 320 are not whole groups of 128,
so mlx-lm and qforge both keep everything BF16). Pinned in scripts/requirements-interop.txt
(mlx with its Linux CPU backend, mlx-lm; no torch), so it runs in CI; skipped without them.
"""

import json
import shutil
import struct
import subprocess

import numpy as np
import pytest

from conftest import ROOT

mx = pytest.importorskip("mlx.core", reason="mlx is not installed in this venv")
mlx_utils = pytest.importorskip("mlx_lm.utils", reason="mlx-lm is not installed in this venv")
mlx_convert = pytest.importorskip("mlx_lm.convert", reason="mlx-lm is not installed in this venv")
from mlx.utils import tree_flatten  # noqa: E402

H, F, KV, V = 192, 320, 96, 128
TOKENIZER = ROOT / "tests" / "fixtures" / "tiny" / "hf"
CTX = 32
# f32 forwards of the same dequantized weights, summed in different orders: measured max
# |Δ log-prob| 1.7e-6 to 1.9e-6 over the five cases
LOGPROB_MAX_ABS = 1e-4
# mlx-lm's BF16 forward against qforge's f32 one: measured 0.020 to 0.098 over the five cases
# (0.020 for the unquantized BF16 source run the same two ways)
LOGPROB_BF16_MAX_ABS = 0.25


def write_source(src):
    src.mkdir(parents=True)
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": H,
           "intermediate_size": F, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "head_dim": 48, "vocab_size": V, "rms_norm_eps": 1e-5,
           "rope_theta": 500000.0, "max_position_embeddings": 256, "tie_word_embeddings": True,
           "torch_dtype": "bfloat16", "bos_token_id": 0, "eos_token_id": 1}
    (src / "config.json").write_text(json.dumps(cfg))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TOKENIZER / f, src / f)
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


def safetensors_raw(d):
    """Every tensor of a directory's safetensors files: name -> (dtype, shape, raw bytes)."""
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        raw = f.read_bytes()
        n = struct.unpack("<Q", raw[:8])[0]
        for name, t in json.loads(raw[8:8 + n]).items():
            if name != "__metadata__":
                s, e = t["data_offsets"]
                out[name] = (t["dtype"], t["shape"], raw[8 + n + s:8 + n + e])
    return out


def dequantized_f32(quantized, src):
    """mlx-lm's Llama (built from the unquantized source) holding `quantized`'s parameters with
    every quantized module's weight replaced by `mx.dequantize` of it, then cast to float32."""
    import mlx.nn as nn
    from mlx.utils import tree_unflatten

    model, _ = mlx_utils.load_model(src)
    params = dict(tree_flatten(quantized.parameters()))
    for name, m in quantized.named_modules():
        if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            for part in ("weight", "scales", "biases"):
                params.pop(f"{name}.{part}")
            params[f"{name}.weight"] = mx.dequantize(m.weight, m.scales, m.biases, m.group_size, m.bits)
    assert params.keys() == dict(tree_flatten(model.parameters())).keys()
    model.update(tree_unflatten(list(params.items())))
    model.set_dtype(mx.float32)
    return model


def log_softmax(x):
    m = x.max(axis=1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))


@pytest.mark.parametrize("bits,group", [(4, 64), (8, 32), (4, 32), (8, 64), (4, 128)])
def test_mlx_lm_writes_our_tensors_and_loads_our_output(qforge, tmp_path, bits, group):
    src = tmp_path / "src"
    write_source(src)
    out = tmp_path / "out"
    subprocess.run([str(qforge), "quantize", str(src), str(out), "--layout", "mlx",
                    "--scheme", f"int{bits}-g{group}"], check=True, capture_output=True)

    # mlx_lm.convert -q on the same source writes the same tensors, byte for byte
    conv = tmp_path / "convert"
    mlx_convert.convert(str(src), str(conv), quantize=True, q_group_size=group, q_bits=bits)
    a, b = safetensors_raw(out), safetensors_raw(conv)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name][:2] == b[name][:2], name
        assert a[name][2] == b[name][2], f"{name}: bytes differ"
    ccfg = json.loads((conv / "config.json").read_text())
    ocfg_file = json.loads((out / "config.json").read_text())
    assert ocfg_file.get("quantization") == ccfg.get("quantization")

    # the loaded parameters equal mlx-lm's own quantization of the source, and so do the logits
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

    # mlx-lm's forward of our output (dequantized by mlx, f32; and as loaded, BF16) against
    # qforge's dequantized forward
    from tokenizers import Tokenizer

    text = tmp_path / "text.txt"
    text.write_text("To be, or not to be, that is the question: whether 'tis nobler in the mind. " * 4)
    logits_file = tmp_path / "chunk0.logits"
    subprocess.run([str(qforge), "perplexity", str(out), "--data", str(text), "--ctx", str(CTX), "--chunks", "1",
                    "--json", "--logits-out", str(logits_file)], check=True, capture_output=True)
    ids = Tokenizer.from_file(str(out / "tokenizer.json")).encode(text.read_text()).ids[:CTX]
    assert len(ids) == CTX
    q = np.fromfile(logits_file, dtype="<f4").astype(np.float64).reshape(CTX - 1 - CTX // 2, V)

    def scored(model):
        return np.array(model(mx.array([ids]))[0].astype(mx.float32)).astype(np.float64)[CTX // 2:CTX - 1]

    theirs = scored(dequantized_f32(ours, src))
    diff = np.abs(log_softmax(q) - log_softmax(theirs))
    assert diff.max() < LOGPROB_MAX_ABS, f"max |Δ log-prob| {diff.max():.3e}"
    assert (q.argmax(axis=1) == theirs.argmax(axis=1)).all()
    native = np.abs(log_softmax(q) - log_softmax(scored(ours)))
    assert native.max() < LOGPROB_BF16_MAX_ABS, f"bf16 forward: max |Δ log-prob| {native.max():.3e}"
    print(f"int{bits}-g{group}: max |Δ log-prob| f32 {diff.max():.2e}, bf16 {native.max():.2e}")
