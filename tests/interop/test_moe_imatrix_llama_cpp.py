"""Importance matrices of mixture-of-experts models against llama.cpp's `llama-imatrix`.

On the transformers-made fixtures (tests/fixtures/families/{mixtral,qwen3moe}, GGUF written by
convert_hf_to_gguf.py), `qforge imatrix` and `llama-imatrix` on the same text must give the same
entries (the router `ffn_gate_inp` over every token, the `ffn_{gate,up,down}_exps` stacks with
`in_sum2` of `[columns, n_expert]` and one routed-row count per expert: tools/imatrix/imatrix.cpp
`collect_imatrix`, GGML_OP_MUL_MAT_ID), the per-expert counts exactly (the routing agrees token
for token) and every column's Σx² within REL_MAX. Measured (4 chunks of 64 tokens, --kv-f16 as
llama.cpp's default F16 cache): max relative difference 3.2e-6 (mixtral, blk.1.ffn_down_exps).
"""

import pathlib
import subprocess

import numpy as np
import pytest
from gguf import GGUFReader

from test_quantize_gguf import _bin, _need

FAMILIES = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "families"
CTX, CHUNKS = 64, 4
REL_MAX = 1e-4


def entries(path):
    r = GGUFReader(str(path))
    t = {x.name: np.asarray(x.data, dtype=np.float64).reshape(-1) for x in r.tensors}
    names = sorted(n[: -len(".in_sum2")] for n in t if n.endswith(".in_sum2"))
    return {n: (t[n + ".in_sum2"], t[n + ".counts"]) for n in names}


def run(cmd):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    assert r.returncode == 0, f"{cmd[0]} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"


@pytest.mark.parametrize("family", ["mixtral", "qwen3moe"])
def test_moe_imatrix_agrees_with_llama_imatrix(qforge, family, tmp_path):
    llama_imatrix = _need(_bin("build", "llama-imatrix"), "llama-imatrix")
    gguf = FAMILIES / family / f"{family}.gguf"
    text = FAMILIES / "eval.txt"
    ref, ours = tmp_path / "ref.gguf", tmp_path / "ours.gguf"
    run([llama_imatrix, "-m", gguf, "-f", text, "-o", ref, "-c", CTX, "--chunks", CHUNKS,
         "-t", 2, "--no-ppl"])
    run([qforge, "imatrix", gguf, "--data", text, "-o", ours, "--ctx", CTX, "--chunks", CHUNKS,
         "--kv-f16", "--quiet"])
    a, b = entries(ref), entries(ours)
    assert sorted(a) == sorted(b)
    exps = [n for n in a if n.endswith("_exps.weight")]
    assert exps and any(n.endswith("ffn_gate_inp.weight") for n in a)
    worst = (0.0, "")
    for n, (s_ref, c_ref) in a.items():
        s, c = b[n]
        assert np.array_equal(c, c_ref), (n, c, c_ref)
        assert s.shape == s_ref.shape, n
        if n in exps:
            assert len(c_ref) > 1 and s.size == len(c_ref) * (s.size // len(c_ref)), n
        keep = s_ref > 1e-6 * s_ref.max()
        rel = float(np.max(np.abs(s[keep] - s_ref[keep]) / s_ref[keep]))
        if rel > worst[0]:
            worst = (rel, n)
    print(f"{family}: {len(a)} entries, counts equal, max relative Σx² difference {worst[0]:.2e} ({worst[1]})")
    assert worst[0] < REL_MAX, worst


def tensors_of(path):
    r = GGUFReader(str(path))
    return {t.name: (t.tensor_type.name, t.data.tobytes()) for t in r.tensors}


@pytest.mark.parametrize("family", ["mixtral", "qwen3moe"])
def test_quantize_with_per_expert_imatrix_equals_llama_quantize(qforge, family, tmp_path):
    """`qforge quantize --scheme gguf:q4_k_m --imatrix` weights expert `e` of a stack with the
    `e`-th slice of the entry's `[columns, n_expert]` sums (llama-quant.cpp
    `llama_model_quantize_impl`: `imatrix + i03*n_per_row`): every tensor equals
    llama-quantize's with the same llama-imatrix file, type and bytes; the imatrix changes the
    expert stacks (their rows fall back to Q5_0, which reads the weights)."""
    llama_imatrix = _need(_bin("build", "llama-imatrix"), "llama-imatrix")
    llama_quantize = _need(_bin("build", "llama-quantize"), "llama-quantize")
    gguf = FAMILIES / family / f"{family}.gguf"
    im = tmp_path / "im.gguf"
    run([llama_imatrix, "-m", gguf, "-f", FAMILIES / "eval.txt", "-o", im, "-c", CTX, "--chunks",
         CHUNKS, "-t", 2, "--no-ppl"])
    ref, plain, ours = tmp_path / "ref.gguf", tmp_path / "plain.gguf", tmp_path / "ours.gguf"
    run([llama_quantize, "--imatrix", im, gguf, ref, "Q4_K_M", 2])
    run([llama_quantize, gguf, plain, "Q4_K_M", 2])
    run([qforge, "quantize", gguf, ours, "--scheme", "gguf:q4_k_m", "--imatrix", im])
    a, b, c = tensors_of(ref), tensors_of(ours), tensors_of(plain)
    assert sorted(a) == sorted(b)
    for n in a:
        assert a[n] == b[n], n
    changed = [n for n in a if "_exps" in n and a[n] != c[n]]
    assert changed, "the imatrix changed no expert stack"


# Llama 4's attention output (chunked attention over an F16 cache, the NoPE block's temperature
# tuning) drifts further than the FFN inputs: measured 1.66e-4 (blk.3.attn_output), every other
# entry at most 2.2e-5, the shared expert's at most 7.7e-6.
LLAMA4_ATTN_OUTPUT_REL_MAX = 3e-4


def test_llama4_shared_expert_imatrix_agrees_with_llama_imatrix(qforge, tmp_path):
    """Llama 4 (tests/fixtures/families/llama4: MoE in blocks 1 and 3, top-1 of 3 experts and a
    shared expert): llama-imatrix files the shared expert's inputs as its own plain MUL_MATs,
    `blk.N.ffn_{gate,up,down}_shexp.weight`, one count per token; ours has the same entries,
    counts equal, Σx² within REL_MAX (attention outputs within LLAMA4_ATTN_OUTPUT_REL_MAX)."""
    llama_imatrix = _need(_bin("build", "llama-imatrix"), "llama-imatrix")
    gguf = FAMILIES / "llama4" / "llama4.gguf"
    text = FAMILIES / "eval.txt"
    ref, ours = tmp_path / "ref.gguf", tmp_path / "ours.gguf"
    run([llama_imatrix, "-m", gguf, "-f", text, "-o", ref, "-c", CTX, "--chunks", CHUNKS,
         "-t", 2, "--no-ppl"])
    run([qforge, "imatrix", gguf, "--data", text, "-o", ours, "--ctx", CTX, "--chunks", CHUNKS,
         "--kv-f16", "--quiet"])
    a, b = entries(ref), entries(ours)
    assert sorted(a) == sorted(b)
    shexp = [n for n in a if "_shexp." in n]
    assert len(shexp) == 2 * 3, sorted(a)
    for n, (s_ref, c_ref) in a.items():
        s, c = b[n]
        assert np.array_equal(c, c_ref), (n, c, c_ref)
        assert s.shape == s_ref.shape, n
        keep = s_ref > 1e-6 * s_ref.max()
        rel = float(np.max(np.abs(s[keep] - s_ref[keep]) / s_ref[keep]))
        budget = LLAMA4_ATTN_OUTPUT_REL_MAX if n.endswith("attn_output.weight") else REL_MAX
        print(f"{n}: max relative Σx² difference {rel:.2e}")
        assert rel < budget, (n, rel)
