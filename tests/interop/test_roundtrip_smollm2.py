"""Round trips of the real SmolLM2-135M model through every format are bit-exact.

GGUF (Q4_1) -> HF f32 (A) -> GGUF F32 -> HF f32 (B): A == B byte for byte, tokenizer included.
A -> Meta MP3 -> HF f32 (C): every tensor of A is in C unchanged (SmolLM2's 9 query and 3
key/value heads allow MP 1 or 3, not 2; Meta has no tied embeddings, so C gains an lm_head equal
to the embedding).

Self-consistency only: qforge's outputs are compared with qforge's own, no peer tool takes part.
The peers check each format separately: gguf-py (test_gguf_inspect.py), transformers' GGUF
loader (test_transformers_gguf.py, heavy), torch.load (test_pth_torch.py, heavy).
"""

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
    run(qforge, "convert", a, m, "--to", "meta", "--mp", "3")
    assert sorted(p.name for p in m.glob("consolidated.*.pth")) == [f"consolidated.0{i}.pth" for i in range(3)]
    run(qforge, "convert", m, c, "--to", "hf", "--dtype", "f32")
    ta, tc = tensors(a), tensors(c)
    assert set(ta) | {"lm_head.weight"} == set(tc)
    for name, x in ta.items():
        assert np.array_equal(x.view(np.uint32), tc[name].view(np.uint32)), name
    assert np.array_equal(tc["lm_head.weight"], ta["model.embed_tokens.weight"])
