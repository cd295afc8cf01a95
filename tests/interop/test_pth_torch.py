"""qforge's .pth writer against torch itself.

Files written by `qforge convert --to meta` must load with `torch.load(weights_only=True)` (and with
`mmap=True`, which needs 64-byte aligned records), give the reference model's tensors (the committed
torch-written fixtures), and be byte for byte what `torch.save` writes for the same dict.

torch is not in the default interop venv (a multi-GB install, kept out of CI), so this module is
skipped there. Run it with the fixtures venv:

    "$(scripts/pyenv.sh --fixtures --print-python)" -m pytest tests/interop/test_pth_torch.py
"""

import json
import pathlib
import subprocess
import warnings

import pytest

from conftest import ROOT

try:
    import torch
except ImportError:  # the default interop venv
    torch = None

SKIP_REASON = (
    "torch is not installed in this Python environment, so the .pth writer is NOT checked against "
    "torch here. Run: \"$(scripts/pyenv.sh --fixtures --print-python)\" -m pytest tests/interop/test_pth_torch.py"
)
if torch is None:
    warnings.warn(SKIP_REASON)
pytestmark = pytest.mark.skipif(torch is None, reason=SKIP_REASON)

FIXTURES = ROOT / "tests/fixtures/tiny"

# (source, model-parallel degree)
CASES = {
    "hf-mp1": ("hf", 1),
    "hf-mp2": ("hf", 2),
    "meta-mp1-to-mp2": ("meta-mp1", 2),
    "meta-mp2-to-mp1": ("meta-mp2", 1),
    "gguf-mp2": ("gguf/tiny.gguf", 2),
}

DIM0 = ("attention.wq.weight", "attention.wk.weight", "attention.wv.weight",
        "feed_forward.w1.weight", "feed_forward.w3.weight")
DIM1 = ("attention.wo.weight", "feed_forward.w2.weight")


def split_dim(name: str):
    """Meta's model-parallel split dimension (specs/meta.md 1.4); None = replicated."""
    if name in ("tok_embeddings.weight", "output.weight") or name.endswith(DIM0):
        return 0
    if name.endswith(DIM1):
        return 1
    return None


def shards(d: pathlib.Path) -> list[pathlib.Path]:
    return sorted(d.glob("consolidated.*.pth"))


def load(p: pathlib.Path, **kw):
    return torch.load(p, map_location="cpu", weights_only=True, **kw)


def merged(d: pathlib.Path) -> dict:
    """Load every shard of a Meta directory and merge them by Meta's rules."""
    parts = [load(p) for p in shards(d)]
    out = {}
    for name in parts[0]:
        dim = split_dim(name)
        if dim is None:
            for p in parts[1:]:
                assert torch.equal(p[name], parts[0][name]), f"replicated {name} differs"
            out[name] = parts[0][name]
        else:
            out[name] = torch.cat([p[name] for p in parts], dim=dim)
    return out


@pytest.fixture(scope="session", params=list(CASES))
def converted(request, qforge, tmp_path_factory) -> tuple[str, pathlib.Path]:
    src, mp = CASES[request.param]
    dest = tmp_path_factory.mktemp(request.param) / "meta"
    # --allow-lossy: Meta's format cannot hold the HF/GGUF fixtures' tokenizers (refused otherwise).
    subprocess.run([str(qforge), "convert", str(FIXTURES / src), str(dest), "--to", "meta", "--mp", str(mp),
                    "--allow-lossy"], check=True, capture_output=True, text=True)
    assert len(shards(dest)) == mp
    return src, dest


def test_loads_with_weights_only_and_is_the_reference_model(converted):
    src, dest = converted
    got = merged(dest)
    if src.startswith("gguf"):
        # tiny.gguf mixes ggml quantizations; the tensor values are checked in Rust against qforge's
        # GGUF decoder (itself checked against gguf-py). Here: names, Meta order, shapes, dtypes.
        ref = merged(FIXTURES / "meta-mp1")
        assert list(got) == list(ref)
        for name, t in got.items():
            assert t.shape == ref[name].shape, name
            assert t.dtype in (torch.float32, torch.float16, torch.bfloat16), name
        return
    ref = load(FIXTURES / "meta-mp1" / "consolidated.00.pth")
    assert list(got) == list(ref), "Meta's tensor order"
    for name, t in ref.items():
        assert got[name].dtype == t.dtype, name
        assert torch.equal(got[name], t), name


def test_each_shard_is_exactly_what_torch_save_writes(converted, tmp_path):
    _, dest = converted
    for p in shards(dest):
        sd = load(p)
        assert type(sd) is dict  # Meta's files are plain dicts
        again = tmp_path / p.name  # same file name: torch names the archive folder after it
        torch.save(sd, again)
        assert again.read_bytes() == p.read_bytes(), f"{p.name} differs from torch.save's output"


def test_mmap_load_sees_the_same_tensors(converted):
    _, dest = converted
    for p in shards(dest):
        plain, mapped = load(p), load(p, mmap=True)
        assert list(plain) == list(mapped)
        for name in plain:
            assert torch.equal(plain[name], mapped[name]), name


def test_params_json_describes_the_reference_model(converted):
    src, dest = converted
    params = (dest / "params.json").read_text()
    ref = (FIXTURES / "meta-mp1" / "params.json").read_text()
    if src.startswith("meta"):
        assert params == ref, "a Meta source's params.json is copied verbatim"
        assert (dest / "tokenizer.model").read_bytes() == (FIXTURES / src / "tokenizer.model").read_bytes()
    else:
        assert json.loads(params) == json.loads(ref)
        assert "\n" not in params
