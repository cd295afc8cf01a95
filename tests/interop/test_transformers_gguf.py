"""qforge's GGUF -> HF conversion against transformers' own GGUF loader.

transformers (with torch) is too heavy for the default CI path: this module is skipped unless
they are importable, and runs in the venv of `scripts/test-heavy.sh`.
"""

import json
import subprocess

import numpy as np
import pytest

transformers = pytest.importorskip("transformers", reason="transformers/torch not installed: run scripts/test-heavy.sh")
from safetensors.numpy import load_file  # noqa: E402
from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint  # noqa: E402

torch = pytest.importorskip("torch")

CONFIG_KEYS = [
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_hidden_layers",
    "num_key_value_heads",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "vocab_size",
    "bos_token_id",
    "eos_token_id",
    "tie_word_embeddings",
]


@pytest.fixture(scope="module")
def converted(qforge, smollm2_gguf, tmp_path_factory):
    out = tmp_path_factory.mktemp("smollm2") / "hf"
    subprocess.run([str(qforge), "convert", str(smollm2_gguf), str(out), "--to", "hf", "--dtype", "f32"], check=True, capture_output=True)
    return out


def test_every_tensor_equals_transformers_gguf_loader(converted, smollm2_gguf):
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name, torch_dtype=torch.float32
    )
    theirs = model.state_dict()
    if model.config.tie_word_embeddings:
        # lm_head.weight is the embedding itself; checkpoints with tied embeddings do not store it.
        theirs.pop("lm_head.weight")
    ours = {}
    for f in sorted(converted.glob("*.safetensors")):
        ours.update(load_file(f))
    assert set(ours) == set(theirs), set(ours) ^ set(theirs)
    for name, t in theirs.items():
        a = ours[name]
        b = t.float().numpy()
        assert a.shape == b.shape, name
        assert a.dtype == np.float32
        assert np.array_equal(a.view(np.uint32), b.view(np.uint32)), name
    assert len(theirs) == 272


def test_config_agrees_with_transformers(converted, smollm2_gguf):
    ours = json.loads((converted / "config.json").read_text())
    theirs = load_gguf_checkpoint(str(smollm2_gguf), return_tensors=False)["config"]
    for k in CONFIG_KEYS:
        if k not in theirs:
            continue
        want = theirs[k]
        got = ours[k]
        if isinstance(want, float):
            assert got == pytest.approx(want, rel=1e-6), k
        else:
            assert got == want, k
