"""`qforge quantize --scheme gguf:<mix>` against llama.cpp's own `llama-quantize`.

Input: SmolLM2-135M (the real GGUF, Q4_1 weights) converted by qforge to an F32 GGUF (and F16
for one mix); both tools quantize that same file.

- Every tensor gets the same ggml type as llama-quantize picks (its mix rules, the
  attention-V / FFN-down schedules, tied-embedding handling and the fallbacks for SmolLM2's
  576-wide rows), for every mix the README lists: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K_S,
  Q3_K_M, Q3_K_L, Q4_K_S, Q4_K_M, Q5_K_S, Q5_K_M and Q6_K.
- Tensor data is byte-identical to llama-quantize's, for every mix, with the default build of
  `scripts/build-llama-cpp.sh` (Release, GGML_NATIVE=OFF with the CPU's ISA, no AMX). When the `-ffp-contract=off` build
  (`scripts/build-llama-cpp.sh --strict`) exists, it is checked too: qforge implements the
  reference quantizers without FMA contraction, and both builds agree with it here.
"""

import os
import pathlib
import subprocess

import numpy as np
import pytest
from gguf import GGUFReader

from conftest import cache_dir

MIXES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S",
         "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K"]


def _bin(build: str, name: str) -> pathlib.Path | None:
    roots = sorted(cache_dir().glob("llama.cpp-*/"))
    if not roots:
        return None
    p = roots[-1] / build / "bin" / name
    return p if p.is_file() and os.access(p, os.X_OK) else None


def _need(p: pathlib.Path | None, what: str) -> pathlib.Path:
    if p is not None:
        return p
    msg = f"*** {what} is not built: run scripts/build-llama-cpp.sh ***"
    if os.environ.get("CI"):
        pytest.fail(msg)
    print(msg)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def native_quantize() -> pathlib.Path:
    return _need(_bin("build", "llama-quantize"), "llama-quantize")


@pytest.fixture(scope="session")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("quantize_gguf")


@pytest.fixture(scope="session")
def float_gguf(qforge, smollm2_gguf, work):
    out = {}
    for dtype in ["f32", "f16"]:
        p = work / f"smollm2-{dtype}.gguf"
        subprocess.run([str(qforge), "convert", str(smollm2_gguf), str(p), "--to", "gguf", "--dtype", dtype,
                        *([] if dtype == "f32" else ["--allow-lossy"])], check=True)
        out[dtype] = p
    return out


def tensors(path: pathlib.Path) -> dict[str, tuple[str, bytes]]:
    r = GGUFReader(str(path))
    return {t.name: (t.tensor_type.name, bytes(np.asarray(t.data).tobytes())) for t in r.tensors}


def run_llama_quantize(binary: pathlib.Path, src: pathlib.Path, dst: pathlib.Path, mix: str):
    subprocess.run([str(binary), str(src), str(dst), mix, "2"], check=True, capture_output=True)


def run_qforge(qforge, src: pathlib.Path, dst: pathlib.Path, mix: str):
    subprocess.run(
        [str(qforge), "quantize", str(src), str(dst), "--scheme", f"gguf:{mix.lower()}", "--overwrite"],
        check=True,
        capture_output=True,
    )



@pytest.mark.parametrize("mix", MIXES)
def test_types_and_bytes_match_llama_quantize(qforge, native_quantize, float_gguf, work, mix):
    src = float_gguf["f32"]
    ref, ours = work / f"ref-{mix}.gguf", work / f"ours-{mix}.gguf"
    run_llama_quantize(native_quantize, src, ref, mix)
    run_qforge(qforge, src, ours, mix)
    want, got = tensors(ref), tensors(ours)
    assert sorted(want) == sorted(got)
    wrong_type = {n: (want[n][0], got[n][0]) for n in want if want[n][0] != got[n][0]}
    assert not wrong_type, f"{len(wrong_type)} tensors typed differently: {dict(list(wrong_type.items())[:8])}"
    wrong_bytes = [n for n in want if want[n][1] != got[n][1]]
    assert not wrong_bytes, f"{len(wrong_bytes)} tensors differ from llama-quantize: {wrong_bytes[:8]}"
    # file-level metadata llama.cpp reads
    r = GGUFReader(str(ours))
    ref_r = GGUFReader(str(ref))
    for key in ["general.file_type", "general.quantization_version"]:
        assert r.fields[key].contents() == ref_r.fields[key].contents(), key


def test_f16_input_q4_k_m(qforge, native_quantize, float_gguf, work):
    src = float_gguf["f16"]
    ref, ours = work / "ref-f16-Q4_K_M.gguf", work / "ours-f16-Q4_K_M.gguf"
    run_llama_quantize(native_quantize, src, ref, "Q4_K_M")
    run_qforge(qforge, src, ours, "Q4_K_M")
    want, got = tensors(ref), tensors(ours)
    assert {n: t for n, (t, _) in want.items()} == {n: t for n, (t, _) in got.items()}
    assert [n for n in want if want[n][1] != got[n][1]] == []


@pytest.mark.parametrize("mix", ["Q8_0", "Q4_K_M", "Q6_K"])
def test_strict_build_agrees(qforge, float_gguf, work, mix):
    strict = _bin("build-strict", "llama-quantize")
    if strict is None:
        msg = "strict llama-quantize not built (scripts/build-llama-cpp.sh --strict)"
        if os.environ.get("QFORGE_REQUIRE_STRICT") == "1":  # scripts/test-heavy.sh builds it
            pytest.fail(msg)
        pytest.skip(msg + ": optional outside scripts/test-heavy.sh")
    src = float_gguf["f32"]
    ref, ours = work / f"strict-{mix}.gguf", work / f"ours-{mix}.gguf"
    run_llama_quantize(strict, src, ref, mix)
    if not ours.exists():
        run_qforge(qforge, src, ours, mix)
    want, got = tensors(ref), tensors(ours)
    assert [n for n in want if want[n] != got[n]] == []


# the MoE fixtures, and llama31 for a file with rope_freqs.weight before the blocks (the mix's
# tensor index then is off by one from the source's); llama4 for dense blocks between MoE ones
# and shared experts (ffn_down_shexp beside ffn_down_exps: llama-quant.cpp takes an expert
# model's ffn_down layer from the tensor name, not from a counter)
MOE_FIXTURES = ["mixtral", "qwen3moe", "llama31", "llama4"]


@pytest.mark.parametrize("mix", ["Q8_0", "Q4_0", "Q4_K_M", "Q6_K"])
@pytest.mark.parametrize("name", MOE_FIXTURES)
def test_moe_types_and_bytes_match_llama_quantize(qforge, native_quantize, work, name, mix):
    """The mixture-of-experts fixtures (tests/fixtures/families/{mixtral,qwen3moe}, the GGUF
    llama.cpp's own converter made): 3-D `ffn_*_exps` stacks get llama-quantize's type and
    bytes, `ffn_gate_inp` stays F32. (Rows of 64 take the k-quants' fallbacks; the MoE rules
    that need 8 experts or real widths are not exercised by these fixtures.)"""
    src = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "families" / name / f"{name}.gguf"
    ref, ours = work / f"ref-{name}-{mix}.gguf", work / f"ours-{name}-{mix}.gguf"
    run_llama_quantize(native_quantize, src, ref, mix)
    run_qforge(qforge, src, ours, mix)
    a, b = tensors(ref), tensors(ours)
    assert sorted(a) == sorted(b)
    differ = [n for n in a if a[n] != b[n]]
    assert not differ, [(n, a[n][0], b[n][0]) for n in differ]
    assert all(a[n][0] == "F32" for n in a if "ffn_gate_inp" in n)
    assert name != "llama31" or "rope_freqs.weight" in a
