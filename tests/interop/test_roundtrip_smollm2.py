"""Round trips of the real SmolLM2-135M model through every format are bit-exact.

GGUF (Q4_1) -> HF f32 (A) -> GGUF F32 -> HF f32 (B): A == B byte for byte, tokenizer included.
A -> Meta MP3 -> HF f32 (C): every tensor of A is in C unchanged (SmolLM2's 9 query and 3
key/value heads allow MP 1 or 3, not 2; Meta has no tied embeddings, so the Meta files carry a
copy of the embedding as output.weight, which comes back tied in C). Converting A to Meta drops
the tokenizer, so it is refused without --allow-lossy.

Self-consistency only: qforge's outputs are compared with qforge's own, no peer tool takes part.
The peers check each format separately: gguf-py (test_gguf_inspect.py), transformers' GGUF
loader (test_transformers_gguf.py, heavy), torch.load (test_pth_torch.py, heavy).
"""

import json
import subprocess

import numpy as np
from safetensors.numpy import load_file


def run(qforge, *args):
    subprocess.run([str(qforge), *map(str, args)], check=True, capture_output=True)


def tensors(d):
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def test_gguf_hf_gguf_hf_is_byte_identical(qforge, smollm2_gguf, tmp_path):
    a, g, b = tmp_path / "a", tmp_path / "a.gguf", tmp_path / "b"
    run(qforge, "convert", smollm2_gguf, a, "--to", "hf", "--dtype", "f32")
    run(qforge, "convert", a, g, "--to", "gguf", "--dtype", "f32")
    run(qforge, "convert", g, b, "--to", "hf", "--dtype", "f32")
    for name in ["model.safetensors", "tokenizer.json", "tokenizer_config.json", "config.json"]:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_hf_meta_mp3_hf_keeps_every_tensor(qforge, smollm2_gguf, tmp_path):
    a, m, c = tmp_path / "a", tmp_path / "meta", tmp_path / "c"
    run(qforge, "convert", smollm2_gguf, a, "--to", "hf", "--dtype", "f32")
    # Meta's format cannot hold SmolLM2's tokenizer: refused unless allowed, then recorded.
    refused = subprocess.run([str(qforge), "convert", str(a), str(m), "--to", "meta", "--mp", "3"],
                             capture_output=True, text=True)
    assert refused.returncode == 1 and "--allow-lossy" in refused.stderr and not m.exists(), refused.stderr
    run(qforge, "convert", a, m, "--to", "meta", "--mp", "3", "--allow-lossy")
    assert "tokenizer" in json.loads((m / "manifest.json").read_text())["lossy"][0]["what"]
    assert sorted(p.name for p in m.glob("consolidated.*.pth")) == [f"consolidated.0{i}.pth" for i in range(3)]
    run(qforge, "convert", m, c, "--to", "hf", "--dtype", "f32")
    ta, tc = tensors(a), tensors(c)
    # Meta files carry output.weight as a copy of the tied embedding; it comes back tied.
    assert set(ta) == set(tc)
    assert json.loads((c / "config.json").read_text())["tie_word_embeddings"] is True
    for name, x in ta.items():
        assert np.array_equal(x.view(np.uint32), tc[name].view(np.uint32)), name
