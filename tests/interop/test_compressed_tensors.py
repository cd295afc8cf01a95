"""qforge's compressed-tensors checkpoints against the `compressed-tensors` package itself.

For SmolLM2-135M quantized by `qforge quantize` (FP8 rowwise, FP8 static, INT4 group 64
symmetric and asymmetric, INT4 per row, INT8, NVFP4 W4A4):

- `QuantizationConfig.model_validate` accepts our `quantization_config`, and its `model_dump`
  reproduces it key for key (so it is exactly what the library writes);
- the library's own compressor decompresses every quantized module to the same weights qforge's
  dequantization gives (`qforge inspect --dump`), bit for bit after rounding qforge's exact f32
  product to the model dtype (BF16), which is the dtype the library computes in;
- transformers (with compressed-tensors) loads the FP8, INT4 and INT8 checkpoints and its f32
  logits equal qforge's dequantized forward (`perplexity --logits-out`) within a stated budget.

Needs torch (several GB): skipped unless importable; `scripts/test-heavy.sh` runs it.
"""

import json
import subprocess

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch not installed: run scripts/test-heavy.sh")
ct = pytest.importorskip("compressed_tensors", reason="compressed-tensors not installed: run scripts/test-heavy.sh")
from compressed_tensors.compressors.base import BaseCompressor  # noqa: E402
from compressed_tensors.quantization import QuantizationConfig  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from conftest import run_json  # noqa: E402

SCHEMES = {
    "fp8-rowwise": [],
    "fp8-static": ["--calib", "CALIB"],
    "int4-g64": [],
    "int4-g64-asym": ["--asym"],
    "int4-row": [],
    "int8-g64": [],
    "int8-g64-asym": ["--asym"],
    "int8-row": [],
    "nvfp4": ["--calib", "CALIB"],
}
LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


@pytest.fixture(scope="module")
def checkpoints(qforge, smollm2_gguf, tmp_path_factory):
    work = tmp_path_factory.mktemp("ct")
    calib = work / "calib.json"
    # arbitrary but distinct static activation scales (what `qforge calibrate` would produce)
    # and input ranges (NVFP4 W4A4's input_global_scale comes from the amax)
    scales = {f"model.layers.{i}.{m}": 0.01 + 0.001 * i + 0.0001 * j for i in range(30) for j, m in enumerate(LINEARS)}
    modules = [{"module": m, "input_amax": s * 448.0} for m, s in scales.items()]
    calib.write_text(json.dumps({"input_scales": scales, "modules": modules}))
    out = {}
    for name, extra in SCHEMES.items():
        dest = work / name
        scheme = name.removesuffix("-asym")
        args = [a if a != "CALIB" else str(calib) for a in extra]
        subprocess.run([str(qforge), "quantize", str(smollm2_gguf), str(dest), "--scheme", scheme, "--allow-requantize", *args], check=True, capture_output=True)
        dump = work / f"{name}-dump"
        subprocess.run([str(qforge), "inspect", str(dest), "--dump", str(dump)], check=True, capture_output=True)
        out[name] = (dest, dump)
    return out


@pytest.mark.parametrize("name", list(SCHEMES))
def test_config_validates_and_round_trips(checkpoints, name):
    dest, _ = checkpoints[name]
    cfg = json.loads((dest / "config.json").read_text())["quantization_config"]
    qc = QuantizationConfig.model_validate(cfg)
    dumped = qc.model_dump(exclude=["quant_method"])
    ours = {k: v for k, v in cfg.items() if k not in ("version", "quant_method", "sparsity_config", "transform_config")}
    assert dumped == ours
    assert cfg["quant_method"] == "compressed-tensors"
    assert cfg["version"] == ct.__version__
    assert cfg["sparsity_config"] == {} and cfg["transform_config"] == {}


@pytest.mark.parametrize("name", list(SCHEMES))
def test_library_decompresses_to_our_dequantization(checkpoints, name):
    dest, dump = checkpoints[name]
    cfg = json.loads((dest / "config.json").read_text())["quantization_config"]
    qc = QuantizationConfig.model_validate(cfg)
    scheme = qc.config_groups["group_0"]
    compressor = BaseCompressor.get_value_from_registry(qc.format)
    sd = {}
    for f in sorted(dest.glob("*.safetensors")):
        sd.update(load_file(f))
    checked = 0
    for i in range(30):
        for m in LINEARS:
            prefix = f"model.layers.{i}.{m}"
            local = {k[len(prefix) + 1 :]: v for k, v in sd.items() if k.startswith(prefix + ".")}
            theirs = compressor.decompress(local, scheme)["weight"]
            assert theirs.dtype == torch.bfloat16, prefix
            ours = np.fromfile(dump / f"{prefix}.weight.dequant.f32", dtype=np.float32).reshape(tuple(theirs.shape))
            ours_bf16 = torch.from_numpy(ours).to(torch.bfloat16)
            diff = (ours_bf16.view(torch.int16) != theirs.view(torch.int16)).sum().item()
            assert diff == 0, f"{prefix}: {diff} elements differ"
            checked += 1
    assert checked == 210
    assert "lm_head.weight" not in sd and "lm_head.weight_scale" not in sd


# transformers (compressed-tensors decompressing in float32) against qforge's dequantized
# forward (`qforge perplexity`) on Hamlet.
#
# Weights and forward: with activation quantization off on both sides (compressed-tensors'
# `input_activations` removed; `--w8a8 off`) the two run the same f32 weights and differ by
# summation order only: chunk 0's log-probs within 2e-3 (measured max 1.2e-4 FP8, 7.8e-5 INT4,
# 9.2e-5 INT8), the same top-1 everywhere, perplexity within 1e-4 (measured 2.2e-7 on 8 chunks).
#
# Dynamic per-token FP8 activations (FP8_DYNAMIC, what vLLM runs): both apply compressed-tensors'
# formula (s = max(amax/448, eps), x_q = fp8(x/s)·s), but on SmolLM2 the whole-model result is
# chaotic in the matmul's rounding: the same formula in torch with f64 instead of f32 accumulation
# moved 8-chunk perplexity from 24.002 to 23.666 (1.4 %) under torch 2.9, and torch 2.10's f32
# kernels moved that f64 figure again, to 23.864, with qforge unchanged at 23.636. A perplexity
# budget tighter than that spread measures the torch build, not qforge. So the check that can be
# tight is layer 0's output, before noise compounds: qforge's reported hidden-state error equals
# transformers' through compressed-tensors' own modules within 1e-3 relative; the whole-model
# perplexity is held to the 2.5 % spread budget (as tests/interop/test_drift_sim.py does).
CTX = 128
CHUNKS = 8
LOGPROB_MAX_ABS = 2e-3


def log_softmax(x):
    m = x.max(axis=1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))


def hf_model(dest, act_quant):
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(dest), dtype=torch.float32)
    if not act_quant:
        for m in model.modules():
            scheme = getattr(m, "quantization_scheme", None)
            if scheme is not None:
                scheme.input_activations = None
    return model


def chunk_ids(dest, hamlet):
    """The tokens qforge scores: its tokenizer.json on the text (equal to llama.cpp's ids on all of
    Hamlet, tests/interop/test_tokenizer.py; SmolLM2 adds no BOS), cut into CTX-token chunks."""
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(dest / "tokenizer.json")).encode(hamlet.read_text()).ids
    return [ids[c * CTX:(c + 1) * CTX] for c in range(CHUNKS)]


def hf_ppl(model, chunks):
    """llama-perplexity's protocol: each chunk scores its second half."""
    nll = []
    for ids in chunks:
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1).numpy()
        nll.extend(-lp[p, ids[p + 1]] for p in range(CTX // 2, CTX - 1))
    return float(np.exp(np.mean(nll)))


def qforge_ppl(qforge, dest, hamlet, w8a8, logits_out=None):
    extra = ["--logits-out", str(logits_out)] if logits_out else []
    return run_json(qforge, "perplexity", str(dest), "--data", str(hamlet), "--ctx", str(CTX), "--chunks",
                    str(CHUNKS), "--json", "--w8a8", w8a8, *extra)["ppl"]


@pytest.mark.parametrize("name", ["fp8-rowwise", "int4-g64", "int8-g64"])
def test_transformers_logits_equal_our_dequantized_forward(qforge, checkpoints, hamlet, tmp_path, name):
    dest, _ = checkpoints[name]
    logits_file = tmp_path / "chunk0.logits"
    ours_ppl = qforge_ppl(qforge, dest, hamlet, "off", logits_file)
    chunks = chunk_ids(dest, hamlet)
    model = hf_model(dest, act_quant=False)
    with torch.no_grad():
        theirs = model(torch.tensor([chunks[0]])).logits[0].double().numpy()[CTX // 2:CTX - 1]
    ours = np.fromfile(logits_file, dtype="<f4").astype(np.float64).reshape(theirs.shape)
    diff = np.abs(log_softmax(ours) - log_softmax(theirs))
    theirs_ppl = hf_ppl(model, chunks)
    print(f"{name}: chunk 0 log-prob max abs diff {diff.max():.3e}, mean {diff.mean():.3e}; "
          f"ppl transformers {theirs_ppl:.6f}, qforge {ours_ppl:.6f}")
    assert diff.max() < LOGPROB_MAX_ABS, f"{name}: max abs log-prob difference {diff.max():.3e}"
    assert (ours.argmax(axis=1) == theirs.argmax(axis=1)).all()
    assert abs(ours_ppl / theirs_ppl - 1) < 1e-4


def layer0_rel_error(base_model, quant_model, ids):
    """sqrt(sum (h_q - h_b)^2 / sum h_b^2) over every position of layer 0's output (the residual
    stream after the first decoder layer), as `qforge verify` reports `layers[0].rel_error`."""
    with torch.no_grad():
        hb = base_model(torch.tensor([ids]), output_hidden_states=True).hidden_states[1][0].double()
        hq = quant_model(torch.tensor([ids]), output_hidden_states=True).hidden_states[1][0].double()
    return float(((hq - hb) ** 2).sum().sqrt() / (hb**2).sum().sqrt())


def test_fp8_dynamic_activations_agree_with_transformers(qforge, checkpoints, smollm2_gguf, hamlet, tmp_path):
    import types

    transformers = pytest.importorskip("transformers")
    dest, _ = checkpoints["fp8-rowwise"]
    chunks = chunk_ids(dest, hamlet)

    # Layer 0, before rounding noise can compound: the hidden-state error of W8A8 against the
    # f32 base equals the one transformers gets through compressed-tensors' own quantized modules
    # (FP8 weights and dynamic per-token FP8 inputs). Weights-only is checked the same way, and
    # the activation quantization must add error on top of it, so the check sees the activations.
    base = tmp_path / "base-f32"
    subprocess.run([str(qforge), "convert", str(smollm2_gguf), str(base), "--to", "hf", "--dtype", "f32"],
                   check=True, capture_output=True)
    base_model = transformers.AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    l0 = {}
    for w8a8, act in (("on", True), ("off", False)):
        r = run_json(qforge, "verify", str(base), str(dest), "--data", str(hamlet), "--ctx", str(CTX),
                     "--chunks", "1", "--json", "-q", "--w8a8", w8a8)["result"]
        l0[w8a8] = (r["layers"][0]["rel_error"], layer0_rel_error(base_model, hf_model(dest, act_quant=act), chunks[0]))
    print("layer 0 rel error (qforge, transformers): W8A8 %.6e %.6e, weights only %.6e %.6e"
          % (*l0["on"], *l0["off"]))
    for ours_l0, theirs_l0 in l0.values():
        assert abs(ours_l0 / theirs_l0 - 1) < 1e-3
    assert l0["on"][1] > 1.2 * l0["off"][1]

    # Whole model: chaotic (see above), so the budget is the spread of the reference itself.
    ours = qforge_ppl(qforge, dest, hamlet, "auto")
    theirs = hf_ppl(hf_model(dest, act_quant=True), chunks)

    def fake_quant(x):  # compressed-tensors' dynamic token FP8 (calculate_qparams + _quantize)
        s = (x.abs().amax(dim=-1, keepdim=True) / 448).clamp(min=1 / (448 * 512))
        return (x / s).clamp(-448, 448).to(torch.float8_e4m3fn).float() * s

    model = hf_model(dest, act_quant=False)
    # one forward first: the weights are FP8 codes until compressed-tensors decompresses them
    with torch.no_grad():
        model(torch.tensor([chunks[0]]))
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and hasattr(m, "weight_scale"):
            assert m.weight.dtype == torch.float32
            m.forward = types.MethodType(
                lambda self, x: (fake_quant(x).double() @ self.weight.double().T).float(), m)
    f64 = hf_ppl(model, chunks)
    print(f"fp8 W8A8: ppl qforge {ours:.4f}, transformers (f32) {theirs:.4f} ({ours / theirs - 1:+.2%}), "
          f"same formula with f64 accumulation {f64:.4f} ({ours / f64 - 1:+.2%}; "
          f"f64 vs f32 {f64 / theirs - 1:+.2%})")
    assert abs(ours / theirs - 1) < 0.025
    assert abs(ours / f64 - 1) < 0.025


def test_fbgemm_config_parses_in_transformers(qforge, smollm2_gguf, tmp_path):
    """transformers' FbgemmFp8Config reads our fbgemm_fp8 config (loading the weights needs
    fbgemm-gpu and an SM90 GPU, so only the config is checked here)."""
    transformers = pytest.importorskip("transformers")
    dest = tmp_path / "fbgemm"
    subprocess.run([str(qforge), "quantize", str(smollm2_gguf), str(dest), "--scheme", "fp8-rowwise", "--layout", "fbgemm", "--policy", "meta-405b", "--allow-requantize"], check=True, capture_output=True)
    cfg = json.loads((dest / "config.json").read_text())["quantization_config"]
    qc = transformers.FbgemmFp8Config.from_dict(cfg)
    assert qc.activation_scale_ub == 1200.0
    assert qc.modules_to_not_convert == cfg["modules_to_not_convert"]
    # layers 0 and 29 keep their MLPs, every attention projection is listed, then lm_head
    assert "model.layers.0.mlp.down_proj" in cfg["modules_to_not_convert"]
    assert "model.layers.29.mlp.up_proj" in cfg["modules_to_not_convert"]
    assert "model.layers.1.mlp.up_proj" not in cfg["modules_to_not_convert"]
    assert cfg["modules_to_not_convert"][-1] == "lm_head"
    assert len(cfg["modules_to_not_convert"]) == 30 * 4 + 2 * 3 + 1
    sd = load_file(dest / "model.safetensors")
    assert sd["model.layers.1.mlp.up_proj.weight"].dtype == torch.float8_e4m3fn
    assert sd["model.layers.1.mlp.up_proj.weight_scale"].dtype == torch.float32
    assert tuple(sd["model.layers.1.mlp.up_proj.weight_scale"].shape) == (1536, 1)
    assert sd["model.layers.0.mlp.up_proj.weight"].dtype == torch.bfloat16
