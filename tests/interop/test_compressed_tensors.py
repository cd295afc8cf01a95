"""qforge's compressed-tensors checkpoints against the `compressed-tensors` package itself.

For SmolLM2-135M quantized by `qforge quantize` (FP8 rowwise, FP8 static, INT4 group 64
symmetric and asymmetric, INT4 per row):

- `QuantizationConfig.model_validate` accepts our `quantization_config`, and its `model_dump`
  reproduces it key for key (so it is exactly what the library writes);
- the library's own compressor decompresses every quantized module to the same weights qforge's
  dequantization gives (`qforge inspect --dump`), bit for bit after rounding qforge's exact f32
  product to the model dtype (BF16), which is the dtype the library computes in;
- transformers (with compressed-tensors) loads the FP8 and INT4 checkpoints and runs a forward.

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

SCHEMES = {
    "fp8-rowwise": [],
    "fp8-static": ["--calib", "CALIB"],
    "int4-g64": [],
    "int4-g64-asym": ["--asym"],
    "int4-row": [],
    "int8-g64": [],
    "int8-g64-asym": ["--asym"],
    "int8-row": [],
}
LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


@pytest.fixture(scope="module")
def checkpoints(qforge, smollm2_gguf, tmp_path_factory):
    work = tmp_path_factory.mktemp("ct")
    calib = work / "calib.json"
    # arbitrary but distinct static activation scales (what `qforge calibrate` would produce)
    calib.write_text(json.dumps({"input_scales": {f"model.layers.{i}.{m}": 0.01 + 0.001 * i + 0.0001 * j for i in range(30) for j, m in enumerate(LINEARS)}}))
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


@pytest.mark.parametrize("name", ["fp8-rowwise", "int4-g64", "int8-g64"])
def test_transformers_loads_and_runs(checkpoints, name):
    transformers = pytest.importorskip("transformers")
    dest, _ = checkpoints[name]
    model = transformers.AutoModelForCausalLM.from_pretrained(str(dest), dtype=torch.bfloat16)
    ids = torch.tensor([[1, 504, 3216, 282, 253, 1341, 30, 216]])
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, 8, 49152)
    assert torch.isfinite(logits).all()


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
