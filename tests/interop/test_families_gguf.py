"""qforge's HF -> GGUF conversion of every model family against llama.cpp's own converter.

For tiny random-weight Llama, Qwen2, Qwen3 and Mistral models saved by transformers itself (F32,
hidden 64; Qwen3 with head_dim 24 x 4 heads != hidden; Qwen2 with q/k/v biases; tied and untied
embeddings), `qforge convert --to gguf` must write the same `<arch>.*` metadata (keys and values)
and bit-identical tensors (names, types, shapes, bytes: Q/K permuted for llama, copied for
qwen2/qwen3) as llama.cpp's `convert_hf_to_gguf.py` (the pinned 0.3.36 sources in the cache).
The models have no tokenizer: both sides' vocabularies are left out (the converter's `set_vocab`
is replaced by a no-op), so `tokenizer.ggml.*` and the `general.*` naming keys are not compared.

Needs torch + transformers: skipped unless importable; runs in the venv of
`scripts/pyenv.sh --llamacpp-convert` (`scripts/test-heavy.sh`).
"""

import subprocess
import sys

import numpy as np
import pytest

from conftest import cache_dir

torch = pytest.importorskip("torch", reason="torch not installed: run scripts/test-heavy.sh")
transformers = pytest.importorskip("transformers")

SRC = cache_dir() / "llama.cpp-0.3.36" / "src"

COMMON = dict(
    hidden_size=64,
    intermediate_size=96,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_hidden_layers=2,
    vocab_size=256,
    max_position_embeddings=64,
    rms_norm_eps=1e-6,
)


def families():
    t = transformers
    return {
        "llama": (t.LlamaForCausalLM, t.LlamaConfig(**COMMON, head_dim=16, tie_word_embeddings=True)),
        "qwen2": (t.Qwen2ForCausalLM, t.Qwen2Config(**COMMON, tie_word_embeddings=False)),
        "qwen3": (t.Qwen3ForCausalLM, t.Qwen3Config(**COMMON, head_dim=24, tie_word_embeddings=True)),
        "mistral": (t.MistralForCausalLM, t.MistralConfig(**COMMON, head_dim=16, sliding_window=None)),
    }


@pytest.fixture(scope="module")
def converter():
    if not (SRC / "convert_hf_to_gguf.py").is_file():
        pytest.fail(f"{SRC} missing: run scripts/build-llama-cpp.sh first")
    # convert_hf_to_gguf needs the gguf-py of its own sources (newer than the pinned gguf wheel
    # other test files import: its MODEL_ARCH lacks e.g. DFLASH). Load the source gguf while
    # this module runs, and give the wheel's back afterwards.
    def gguf_modules():
        return {k: m for k, m in sys.modules.items() if k == "gguf" or k.startswith("gguf.")}

    wheel = gguf_modules()
    for k in wheel:
        del sys.modules[k]
    saved_path = list(sys.path)
    sys.path.insert(0, str(SRC / "gguf-py"))
    sys.path.insert(0, str(SRC))
    import convert_hf_to_gguf
    from conversion import base
    from conversion.llama import LlamaModel
    from conversion.qwen import Qwen2Model, Qwen3Model

    classes = (base.TextModel, LlamaModel, Qwen2Model, Qwen3Model)
    saved = [c.__dict__.get("set_vocab") for c in classes]
    for c in classes:
        c.set_vocab = lambda self: None
    yield convert_hf_to_gguf
    for c, f in zip(classes, saved):
        if f is None:
            del c.set_vocab
        else:
            c.set_vocab = f
    sys.path[:] = saved_path
    for k in gguf_modules():
        del sys.modules[k]
    sys.modules.update(wheel)


def arch_fields(reader):
    return {
        k: f.contents()
        for k, f in reader.fields.items()
        if not k.startswith("GGUF.") and (not k.startswith("general.") or k == "general.architecture")
    }


@pytest.mark.parametrize("name", ["llama", "qwen2", "qwen3", "mistral"])
def test_gguf_equals_convert_hf_to_gguf(name, converter, qforge, tmp_path, monkeypatch):
    import gguf

    cls, cfg = families()[name]
    torch.manual_seed(0)
    model = cls(cfg).to(torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    hf = tmp_path / "hf"
    model.save_pretrained(hf, safe_serialization=True)
    ref, ours = tmp_path / "ref.gguf", tmp_path / "ours.gguf"
    monkeypatch.setattr(sys, "argv", ["convert_hf_to_gguf.py", str(hf), "--outfile", str(ref), "--outtype", "f32"])
    converter.main()
    subprocess.run([str(qforge), "convert", str(hf), str(ours), "--to", "gguf", "-q"], check=True)
    a, b = gguf.GGUFReader(str(ref)), gguf.GGUFReader(str(ours))
    assert arch_fields(a) == arch_fields(b)
    ta = {t.name: t for t in a.tensors}
    tb = {t.name: t for t in b.tensors}
    assert sorted(ta) == sorted(tb)
    for n, t in ta.items():
        u = tb[n]
        assert (t.tensor_type, list(t.shape)) == (u.tensor_type, list(u.shape)), n
        assert np.array_equal(np.asarray(t.data).view(np.uint8), np.asarray(u.data).view(np.uint8)), n
