"""`qforge perplexity` against `llama-perplexity` on SmolLM2-135M and Hamlet (ctx 512, 4 chunks,
2 threads on both sides).

Two models: the GGUF as shipped (Q4_1 linears, Q8_0 tied embedding) and the same weights stored
as F32 (`qforge convert --to gguf --dtype f32`). llama.cpp's CPU backend quantizes each matmul's
activations to the weight type's vec_dot_type (Q8_1 for Q4_1, Q8_0 for Q8_0), keeps K/V in an
F16 cache and runs its CPU flash attention (`-fa auto`), so on the Q4_1 file qforge runs with
`--ggml-act-quant --ggml-cpu-ops`: the integer matmuls, RMSNorm, RoPE, SwiGLU and flash
attention with ggml-cpu's bits (peer-checked by scripts/ggml-dot-peer.sh). With activation
quantization every last-bit difference upstream can flip a Q8 rounding, so nothing less than
bit-level agreement holds 1e-4 (measured with the plain f32 forward and `--kv-f16`: 5.9e-5,
9.4e-4 or 1.7e-3 depending only on the f32 matmul's summation order). On the F32 file there is
no activation quantization and only the F16 KV cache is emulated (`--kv-f16`).

Budgets (measured figures are in BENCHMARKS.md / the verify report), against llama.cpp built for
the CPU's ISA with AVX-512 left off (scripts/test.sh sets QFORGE_LLAMA_ISA=avx2: the
`--ggml-act-quant` emulation follows the AVX2 path; an AVX-512 build differs by 3.0e-3 on Q4_1):
* PPL relative difference to llama-perplexity's "Final estimate" below 1e-4 on the Q4_1 file
  (measured 2.5e-7: 37.093291 vs 37.0933, the reference's last printed digit) and below 5e-5 on
  the F32 file (measured 2.6e-5): the README's claim.
* Chunk 0's log-probabilities: llama.cpp's `--kl-divergence-base` file stores them as uint16
  over [max−16, max] (step ≤ 16/65535 ≈ 2.4e-4 nats); ours (f32 logits written by
  `--logits-out`) are compared on every entry the file resolves.
  - F32: no activation quantization, so the two forwards differ only in summation order and
    the f16 KV rounding: max abs difference < 0.02 nats (measured 1.3e-2, mean 7e-4).
  - Q4_1: activation quantization makes single logits chaotic: one rounding decision
    `round(x·127/amax)` that flips because of a 1-ulp difference in a matmul's summation order
    moves an activation by a whole Q8 step, and such flips compound over 30 layers. Measured:
    dropping only the f16 rounding of Q8_1's `s` term changes our own chunk-0 log-probs by
    0.11 nats on average, as much as turning activation quantization off (0.095). So per-logit
    agreement is bounded by that noise, not by the emulation: the budget is mean < 0.15 nats
    and top-1 agreement ≥ 93 % (measured mean 0.109, max 1.13, top-1 94.9 % of 255 positions),
    while the perplexity (an average over 1,020 tokens) agrees to 6e-5.
"""

import glob
import os
import pathlib
import re
import struct
import subprocess

import numpy as np
import pytest

from conftest import cache_dir, run_json

CTX = 512
CHUNKS = 4
THREADS = 2
# relative PPL difference, per file (README: "within 1e-4 ... and 5e-5")
PPL_REL_BUDGET = {"q4_1": 1e-4, "f32": 5e-5}
# (max abs, mean abs) log-prob difference on chunk 0, and the least top-1 agreement
LOGPROB_BUDGET = {"q4_1": (None, 0.15, 0.93), "f32": (0.02, 0.002, 0.99)}


@pytest.fixture(scope="session")
def llama_bin() -> pathlib.Path:
    env = os.environ.get("QFORGE_LLAMA_CPP_BIN")
    cands = [pathlib.Path(env)] if env else []
    cands += [pathlib.Path(p) for p in sorted(glob.glob(str(cache_dir() / "llama.cpp-*/build/bin")))]
    for c in cands:
        if (c / "llama-perplexity").is_file():
            return c
    pytest.fail("llama-perplexity not built: run scripts/build-llama-cpp.sh (or set QFORGE_LLAMA_CPP_BIN)")



@pytest.fixture(scope="module")
def f32_gguf(qforge, smollm2_gguf, tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("f32") / "smollm2-f32.gguf"
    subprocess.run([str(qforge), "convert", str(smollm2_gguf), str(out), "--to", "gguf", "--dtype", "f32"],
                   check=True, capture_output=True)
    yield out
    out.unlink(missing_ok=True)


def llama_perplexity(llama_bin, model, text, base_file):
    out = subprocess.run(
        [str(llama_bin / "llama-perplexity"), "-m", str(model), "-f", str(text), "-c", str(CTX),
         "--chunks", str(CHUNKS), "-t", str(THREADS), "--kl-divergence-base", str(base_file)],
        check=True, capture_output=True, text=True)
    m = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", out.stdout + out.stderr)
    assert m, out.stderr[-2000:]
    return float(m.group(1)), float(m.group(2))


def read_kld_base(path):
    """perplexity.cpp's logits file: "_logits_", n_ctx, n_vocab, n_chunk, tokens, then per chunk
    n_ctx-1-n_ctx/2 rows of nv uint16 (scale, min_log_prob as two f32, then the quantized
    log-probs)."""
    b = path.read_bytes()
    assert b[:8] == b"_logits_"
    n_ctx, n_vocab, n_chunk = struct.unpack_from("<iii", b, 8)
    off = 20
    tokens = np.frombuffer(b, dtype="<i4", count=n_chunk * n_ctx, offset=off)
    off += 4 * n_chunk * n_ctx
    nv = 2 * ((n_vocab + 1) // 2) + 4
    rows = n_ctx - 1 - n_ctx // 2
    chunk0 = np.frombuffer(b, dtype="<u2", count=rows * nv, offset=off).reshape(rows, nv)
    head = chunk0[:, :4].copy().view("<f4")  # [rows, 2]: scale, min_log_prob
    q = chunk0[:, 4:4 + n_vocab].astype(np.float64)
    return tokens, head[:, 0].astype(np.float64), head[:, 1].astype(np.float64), q, n_vocab


def compare(qforge, llama_bin, model, hamlet, tmp_path, extra, kind):
    base_file = tmp_path / f"{kind}.kld"
    ppl_ref, err_ref = llama_perplexity(llama_bin, model, hamlet, base_file)
    logits_file = tmp_path / f"{kind}.logits"
    ours = run_json(qforge, "perplexity", str(model), "--data", str(hamlet), "--ctx", str(CTX),
                    "--chunks", str(CHUNKS), "--threads", str(THREADS), "--json",
                    "--logits-out", str(logits_file), *extra)
    rel = abs(ours["ppl"] / ppl_ref - 1)
    print(f"{kind}: qforge PPL {ours['ppl']:.4f} ± {ours['ppl_stderr']:.5f}, "
          f"llama.cpp {ppl_ref:.4f} ± {err_ref:.5f}, rel diff {rel:.2e}")
    assert ours["chunks"] == CHUNKS and ours["scored_tokens"] == CHUNKS * (CTX - 1 - CTX // 2)
    assert rel < PPL_REL_BUDGET[kind], f"{kind}: relative PPL difference {rel:.2e} over {PPL_REL_BUDGET[kind]:.0e}"
    assert abs(ours["ppl_stderr"] / err_ref - 1) < 0.01

    _, scale, minlp, q, n_vocab = read_kld_base(base_file)
    logits = np.fromfile(logits_file, dtype="<f4").astype(np.float64).reshape(-1, n_vocab)
    assert logits.shape[0] == q.shape[0]
    m = logits.max(axis=1, keepdims=True)
    ours_lp = logits - (m + np.log(np.exp(logits - m).sum(axis=1, keepdims=True)))
    ref_lp = scale[:, None] * q + minlp[:, None]
    resolved = q > 0  # entries at the floor (logit ≤ max − 16) carry no value
    diff = np.abs(ours_lp - ref_lp)[resolved]
    print(f"{kind}: chunk 0 log-prob max abs diff {diff.max():.3e}, mean {diff.mean():.3e} "
          f"over {resolved.sum()} entries")
    top1 = (ours_lp.argmax(axis=1) == ref_lp.argmax(axis=1)).mean()
    print(f"{kind}: chunk 0 top-1 agreement {top1:.4f}")
    max_b, mean_b, top1_b = LOGPROB_BUDGET[kind]
    if max_b is not None:
        assert diff.max() < max_b
    assert diff.mean() < mean_b
    assert top1 >= top1_b
    return ours, ppl_ref


def test_q4_1_gguf_matches_llama_perplexity(qforge, llama_bin, smollm2_gguf, hamlet, tmp_path):
    compare(qforge, llama_bin, smollm2_gguf, hamlet, tmp_path, ["--ggml-act-quant", "--ggml-cpu-ops"], "q4_1")


def test_f32_gguf_matches_llama_perplexity(qforge, llama_bin, f32_gguf, hamlet, tmp_path):
    compare(qforge, llama_bin, f32_gguf, hamlet, tmp_path, ["--kv-f16"], "f32")
