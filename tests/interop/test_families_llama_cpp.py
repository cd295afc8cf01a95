"""llama.cpp on the family fixtures (tests/fixtures/families, made by transformers with
scripts/gen_family_fixtures.py; the Rust test tests/families.rs checks qforge against
transformers' own figures and llama.cpp's converter):

* the fixtures themselves: llama-perplexity on the GGUF llama.cpp's converter made of each
  equals transformers' perplexity within 1e-4 (for mistral: transformers with the window
  ignored, which is what llama.cpp computes);
* `llama-perplexity` on qforge's GGUF of each family qforge handles against `qforge perplexity`.

Same protocol on both sides: ctx 64, 40 chunks of the fixture's eval.txt, 2 threads. llama.cpp keeps
K/V in an F16 cache, so qforge runs with `--kv-f16`. Budget: relative PPL difference below 1e-3
(the families issue); the figures are printed.

Mistral's window cannot go into GGUF: qforge converts it only with --allow-lossy (recorded in the
file), and both sides then compute the window-ignored model. Likewise the Llama 4 fixture's
chunk size, NoPE block and temperature tuning: llama.cpp fixes them (src/models/llama4.cpp
load_arch_hparams), so both sides compute transformers' `llama_cpp_constants` forward.
"""

import json
import re
import subprocess

import pytest

from conftest import ROOT, run_json
from test_perplexity_llama_cpp import llama_bin  # noqa: F401  (session fixture)

FIXTURES = ROOT / "tests" / "fixtures" / "families"
FAMILIES = ["llama31", "llama32", "mistral", "qwen2", "qwen2_yarn", "qwen3", "mixtral", "qwen3moe", "llama4"]
# GGUF cannot hold these fixtures' sliding window (mistral) or Llama 4 attention (llama4):
# converted with --allow-lossy
WINDOW_LOST = {"mistral", "llama4"}
PPL_REL_BUDGET = 1e-3
THREADS = 2


def llama_perplexity(llama_bin, gguf, text, ctx, chunks):
    """llama-perplexity's estimate after the last chunk ("[40]x.xxxx", the final one).

    llama.cpp prints it and the "Final estimate" line through its asynchronous logger
    (common/log.cpp, a worker thread); on a loaded 2-core machine the process was seen exiting
    (status 0) before the worker wrote the last lines, about one run in three. Such a truncated
    run is repeated, up to 5 times."""
    for _ in range(5):
        out = subprocess.run([str(llama_bin / "llama-perplexity"), "-m", str(gguf), "-f", str(text), "-c", ctx,
                              "--chunks", chunks, "-t", str(THREADS)], check=True, capture_output=True, text=True)
        m = re.search(rf"\[{chunks}\]([0-9.]+),", out.stdout)
        if m:
            final = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", out.stderr)
            if final:
                assert float(final.group(1)) == float(m.group(1))
            return float(m.group(1))
    pytest.fail("llama-perplexity output truncated 5 times: " + (out.stdout + out.stderr)[-2000:])


@pytest.mark.parametrize("name", FAMILIES)
def test_llama_perplexity_on_our_gguf(qforge, llama_bin, tmp_path, name):  # noqa: F811
    e = json.loads((FIXTURES / name / "expected.json").read_text())
    ctx, chunks = str(e["protocol"]["ctx"]), str(e["protocol"]["chunks"])
    text = FIXTURES / "eval.txt"
    gguf = tmp_path / f"{name}.gguf"
    lossy = ["--allow-lossy"] if name in WINDOW_LOST else []
    subprocess.run([str(qforge), "convert", str(FIXTURES / name), str(gguf), "--to", "gguf", "--dtype", "f32", *lossy],
                   check=True, capture_output=True)
    ours = run_json(qforge, "perplexity", str(gguf), "--data", str(text), "--ctx", ctx, "--chunks", chunks,
                    "--kv-f16", "--threads", str(THREADS), "--json", "--quiet")
    theirs = llama_perplexity(llama_bin, gguf, text, ctx, chunks)
    rel = abs(theirs - ours["ppl"]) / ours["ppl"]
    want = e["transformers_f32"]["ppl"]
    print(f"{name}: llama-perplexity {theirs:.4f}, qforge --kv-f16 {ours['ppl']:.6f} (rel {rel:.2e}), "
          f"transformers f32 {want:.6f}")
    assert ours["scored_tokens"] == e["transformers_f32"]["scored_tokens"]
    assert rel < PPL_REL_BUDGET, (theirs, ours["ppl"], rel)


# llama.cpp's converter writes Mistral as `general.architecture = llama`, and llama.cpp's llama
# graph has no sliding-window attention: on mistral.gguf it computes the model with the window
# ignored, i.e. expected.json's `window_ignored` wrong forward (measured 37.5386 vs 37.5388).
# On llama4.gguf it computes the chunk size 8192, NoPE every 4th block and temperature floor
# 8192 / scale 0.1 it assumes of every llama4 GGUF: the `llama_cpp_constants` forward.
LLAMA_CPP_COMPUTES = {"mistral": "window_ignored", "llama4": "llama_cpp_constants"}


@pytest.mark.parametrize("name", FAMILIES)
def test_llama_cpp_reproduces_transformers_on_the_converters_gguf(llama_bin, name):  # noqa: F811
    """The fixtures themselves, independently of qforge: llama-perplexity on the GGUF llama.cpp's
    own converter made (committed beside each fixture) against transformers' float32 figure,
    within 1e-4 relative (llama.cpp keeps K/V in F16; measured 1.0e-5 to 2.5e-5)."""
    e = json.loads((FIXTURES / name / "expected.json").read_text())
    ctx, chunks = str(e["protocol"]["ctx"]), str(e["protocol"]["chunks"])
    theirs = llama_perplexity(llama_bin, FIXTURES / name / e["gguf"]["file"], FIXTURES / "eval.txt", ctx, chunks)
    wrong = LLAMA_CPP_COMPUTES.get(name)
    want = e["wrong_forwards"][wrong]["ppl"] if wrong else e["transformers_f32"]["ppl"]
    rel = abs(theirs - want) / want
    print(f"{name}: llama-perplexity on {e['gguf']['file']} {theirs:.4f}, transformers "
          f"{wrong or 'f32'} {want:.6f}, rel {rel:.2e}")
    assert rel < 1e-4, (theirs, want, rel)
