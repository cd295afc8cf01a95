"""compressed-tensors validates and decompresses qforge's outputs for every model family.

The transformers-made family fixtures (tests/fixtures/families: Llama 3.1/3.2, Mistral, Qwen2
with q/k/v biases, Qwen3 with q/k norms, and the mixture-of-experts families where present) are
quantized by `qforge quantize` to FP8 rowwise, INT4 and INT8 (group 32: the fixtures are 64
wide). For each output:

- `QuantizationConfig.model_validate` accepts our `quantization_config` and its `model_dump`
  reproduces it key for key;
- the library's own compressor decompresses every quantized module to the same weights as
  qforge's dequantization (`qforge inspect --dump`), bit for bit after rounding qforge's exact
  f32 product to BF16 (the dtype the library computes in for these BF16 checkpoints);
- every linear that qforge quantized is one the library finds quantized, and nothing else
  (biases, norms, routers stay in the model dtype).

Needs torch: skipped unless importable; `scripts/test-heavy.sh` runs it.
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

from conftest import ROOT  # noqa: E402

FAMILIES_DIR = ROOT / "tests" / "fixtures" / "families"
FAMILIES = sorted(p.name for p in FAMILIES_DIR.iterdir() if (p / "config.json").is_file())
SCHEMES = {
    "fp8-rowwise": [],
    "int4-g32": [],
    "int4-g32-asym": ["--asym"],
    "int8-g32": [],
}
DUMP_SUFFIX = ".weight.dequant.f32"


@pytest.fixture(scope="module")
def outputs(qforge, tmp_path_factory):
    work = tmp_path_factory.mktemp("ct-families")
    return work


def _quantize(qforge, work, family, name):
    dest = work / f"{family}-{name}"
    if not dest.exists():
        scheme = name.removesuffix("-asym")
        extra = SCHEMES[name]
        subprocess.run([str(qforge), "quantize", str(FAMILIES_DIR / family), str(dest), "--scheme", scheme, *extra],
                       check=True, capture_output=True)
        subprocess.run([str(qforge), "inspect", str(dest), "--dump", str(work / f"{family}-{name}-dump")],
                       check=True, capture_output=True)
    return dest, work / f"{family}-{name}-dump"


@pytest.mark.parametrize("name", list(SCHEMES))
@pytest.mark.parametrize("family", FAMILIES)
def test_family_checkpoint_validates_and_decompresses(qforge, outputs, family, name):
    dest, dump = _quantize(qforge, outputs, family, name)
    cfg = json.loads((dest / "config.json").read_text())["quantization_config"]
    qc = QuantizationConfig.model_validate(cfg)
    dumped = qc.model_dump(exclude=["quant_method"])
    ours = {k: v for k, v in cfg.items() if k not in ("version", "quant_method", "sparsity_config", "transform_config")}
    assert dumped == ours
    scheme = qc.config_groups["group_0"]
    compressor = BaseCompressor.get_value_from_registry(qc.format)
    sd = {}
    for f in sorted(dest.glob("*.safetensors")):
        sd.update(load_file(f))
    # modules the checkpoint holds quantized: those with a weight_scale (FP8/INT) or packed weights
    quantized = sorted({k.rsplit(".", 1)[0] for k in sd if k.endswith(".weight_scale")})
    dumped_modules = sorted(p.name[: -len(DUMP_SUFFIX)] for p in dump.glob("*" + DUMP_SUFFIX))
    layers = json.loads((FAMILIES_DIR / family / "config.json").read_text())["num_hidden_layers"]
    assert len(quantized) >= 7 * layers, f"{family} {name}: only {len(quantized)} modules quantized"
    assert quantized == dumped_modules, f"{family} {name}: quantized modules differ from qforge's dump"
    for prefix in quantized:
        local = {k[len(prefix) + 1 :]: v for k, v in sd.items() if k.startswith(prefix + ".") and "." not in k[len(prefix) + 1 :]}
        theirs = compressor.decompress(local, scheme)["weight"]
        assert theirs.dtype == torch.bfloat16, prefix
        ours = np.fromfile(dump / f"{prefix}{DUMP_SUFFIX}", dtype=np.float32).reshape(tuple(theirs.shape))
        ours_bf16 = torch.from_numpy(ours).to(torch.bfloat16)
        diff = (ours_bf16.view(torch.int16) != theirs.view(torch.int16)).sum().item()
        assert diff == 0, f"{family} {name} {prefix}: {diff} elements differ"
    # what stays unquantized is exactly what the ignore list and the policy say: norms, biases,
    # routers and the embeddings keep the model dtype
    for k, v in sd.items():
        if k.rsplit(".", 1)[0] not in quantized:
            assert v.dtype in (torch.bfloat16, torch.float16, torch.float32), f"{k}: {v.dtype}"
