"""qforge calibrate against llm-compressor 0.14.0.1 on the Qwen family fixtures (heavy).

The same protocol as test_calibrate_llmcompressor.py (SmolLM2), on the transformers-made Qwen2
(q/k/v biases) and Qwen3 (q/k norms, head_dim free of the hidden size) fixtures of
tests/fixtures/families: the same token-id samples on both sides (`qforge calibrate
--samples-out`, fed to llm-compressor by llmcompressor_calibrate.py), both sides on a float32
copy of the fixture, INT4 group 64 (symmetric), lm_head / tied embeddings left alone. Drift is
`qforge verify` against the BF16 fixture on its own evaluation text (ctx 64, 40 chunks, the
protocol of its expected.json).

* GPTQ: our perplexity drift is below RTN's and at most llm-compressor's + TOLERANCE_PCT
  (measured: qwen2 0.506 % vs llm-compressor 0.506 %, RTN 5.098 %; qwen3 0.882 % vs 0.882 %,
  RTN 2.108 %).
* AWQ (llm-compressor's default mappings for these architectures, which are Llama's): at most
  llm-compressor's + TOLERANCE_PCT, and below RTN's wherever llm-compressor's is (measured:
  qwen2 3.557 % vs 3.560 %, RTN 5.098 %; qwen3 2.885 % vs 2.745 %, both above RTN's 2.108 %).

* GPTQ per expert on the Mixtral fixture, with each expert calibrated on its routed tokens and
  on every token (llm-compressor's `moe_calibrate_all_experts`), the same option on both
  sides: mean drift over three sample draws at most llm-compressor's + TOLERANCE_PCT, every
  draw below RTN's (measured means: routed 1.010 % vs llm-compressor 0.855 %, all-token
  1.816 % vs 1.524 %, RTN 2.940 %).

Heavy: needs torch and the llm-compressor layer (scripts/test-heavy.sh).
"""
import json
import pathlib
import subprocess

import pytest

pytest.importorskip("torch", reason="torch not installed: run scripts/test-heavy.sh")
pytest.importorskip("compressed_tensors", reason="compressed-tensors not installed: run scripts/test-heavy.sh")

from conftest import ROOT, cache_dir  # noqa: E402
from test_calibrate_llmcompressor import PLAYS, _llmc  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "families"
SAMPLES = "16"
SEQ_LEN = "128"
# perplexity-drift points (percent of perplexity) by which ours may exceed llm-compressor's
TOLERANCE_PCT = 0.5


def _drift(qforge, base: pathlib.Path, quant: pathlib.Path, report: pathlib.Path) -> float:
    subprocess.run([str(qforge), "verify", str(base), str(quant), "--data", str(FIXTURES / "eval.txt"),
                    "--ctx", "64", "--chunks", "40", "--report", str(report)], check=True,
                   capture_output=True)
    return float(json.loads(report.read_text())["result"]["ppl_drift_pct"])


@pytest.mark.parametrize("method", ["gptq", "awq"])
@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
def test_family_calibration_matches_llmcompressor(qforge, tmp_path, family, method):
    t = tmp_path
    base = FIXTURES / family
    b32 = t / "base-f32"
    subprocess.run([str(qforge), "convert", str(base), str(b32), "--to", "hf", "--dtype", "f32"],
                   check=True, capture_output=True)
    data = [str(cache_dir() / "text" / p) for p in PLAYS]
    subprocess.run([str(qforge), "calibrate", str(b32), "--data", *data, "--method", method,
                    "--scheme", "int4-g64", "--samples", SAMPLES, "--seq-len", SEQ_LEN,
                    "--samples-out", str(t / "samples.json"), "-o", str(t / "calib"), "-q"],
                   check=True, capture_output=True)
    for name, extra in [("ours", ["--calib", str(t / "calib")]), ("rtn", [])]:
        subprocess.run([str(qforge), "quantize", str(b32), str(t / name), "--scheme", "int4-g64",
                        "--dtype", "f32", *extra], check=True, capture_output=True)
    _llmc(f"{method}-g64", str(b32), str(t / "samples.json"), str(t / "llmc"))
    d = {n: _drift(qforge, base, t / n, t / f"{n}.json") for n in ["ours", "rtn", "llmc"]}
    print(f"{family} {method} PPL drift %: " + "  ".join(f"{k} {v:.3f}" for k, v in d.items()))
    # Where the reference beats round-to-nearest, so must we. On the random Qwen3 fixture AWQ
    # beats RTN for neither tool (measured drift: RTN 2.108 %, llm-compressor 2.745 %, ours
    # 2.885 %): its grid search picks scales on the calibration text that do not carry over.
    if d["llmc"] < d["rtn"]:
        assert d["ours"] < d["rtn"], d
    assert d["ours"] <= d["llmc"] + TOLERANCE_PCT, d


MOE_SAMPLES = "16"
MOE_SEQ_LEN = "64"
MOE_SEEDS = ["0", "1", "2"]


@pytest.mark.parametrize("experts", ["routed", "all"])
@pytest.mark.parametrize("family", [
    "qwen3moe",
    # llm-compressor saves linearized Mixtral experts as block_sparse_moe.experts.E.gate_proj
    # (Mixtral's block, Qwen's projection names), which qforge reads as w1/w3/w2
    "mixtral",
])
def test_moe_awq_matches_llmcompressor(qforge, tmp_path, family, experts, request):
    """AWQ on the mixture-of-experts fixtures (issue 18), INT4 group 32 symmetric (the experts
    are 32 wide), the routers left unquantized. `routed`: each expert's statistics and losses
    from the tokens the router sends to it (qforge's default, llm-compressor
    `moe_calibrate_all_experts=False`); `all`: every expert on every token (qforge
    --all-experts, llm-compressor's default).

    llm-compressor maps Qwen3-MoE with `_moe_default_mappings` (post_attention_layernorm → the
    router and every expert's gate/up; per expert up → down), as we do. Mixtral is not in its
    AWQ_MAPPING_REGISTRY: its linearized experts match `default_mappings`, which leave the
    router out of post_attention_layernorm's balance layers (its routing then moves with the
    scales); ours keeps the router in, as for Qwen3-MoE.

    A single draw's drift on these 2-layer random fixtures moves by more than a point with the
    sample draw (qwen3moe all, seed 0: ours +6.612 %, llm-compressor +4.809 %, RTN +6.576 %,
    KL divergences 0.0476, 0.0459, 0.0800), so, as for GPTQ below, both sides run on the same
    three draws: the mean of ours within TOLERANCE_PCT of llm-compressor's, and ours below RTN
    on every draw where llm-compressor is (the dense families' rule). Measured (drift %, seeds
    0/1/2, RTN qwen3moe 6.576, mixtral 2.940):
    qwen3moe routed ours 4.531/4.143/7.080 (mean 5.251), llm-compressor 5.623/3.863/6.887 (5.458);
    qwen3moe all    ours 6.612/4.451/6.738 (5.934), llm-compressor 4.809/3.896/6.459 (5.055);
    mixtral routed  ours 1.472/0.896/1.042 (1.137), llm-compressor 2.426/2.912/1.292 (2.210);
    mixtral all     ours 2.323/1.557/1.481 (1.787), llm-compressor 1.846/2.037/2.061 (1.982)."""
    if family == "qwen3moe" and experts == "all":
        # a measured gap, kept visible: our all-experts AWQ trails llm-compressor's on this
        # fixture by 0.88 points on the mean (routed mode, the default, does not)
        request.applymarker(pytest.mark.xfail(strict=True, reason=(
            "qwen3moe --all-experts AWQ: mean drift 5.934 % vs llm-compressor 5.055 % "
            "(+0.88, budget +0.5), and above RTN on seed 0 where llm-compressor is below; "
            "the routed default matches")))
    t = tmp_path
    base = FIXTURES / family
    b32 = t / "base-f32"
    subprocess.run([str(qforge), "convert", str(base), str(b32), "--to", "hf", "--dtype", "f32"],
                   check=True, capture_output=True)
    subprocess.run([str(qforge), "quantize", str(b32), str(t / "rtn"), "--scheme", "int4-g32",
                    "--dtype", "f32"], check=True, capture_output=True)
    rtn = _drift(qforge, base, t / "rtn", t / "rtn.json")
    data = [str(cache_dir() / "text" / p) for p in PLAYS]
    ours, llmc = [], []
    for seed in MOE_SEEDS:
        s = t / f"s{seed}"
        s.mkdir()
        subprocess.run([str(qforge), "calibrate", str(b32), "--data", *data, "--method", "awq",
                        "--scheme", "int4-g32", "--samples", MOE_SAMPLES, "--seq-len",
                        MOE_SEQ_LEN, "--seed", seed,
                        *(["--all-experts"] if experts == "all" else []), "--samples-out",
                        str(s / "samples.json"), "-o", str(s / "calib"), "-q"],
                       check=True, capture_output=True)
        subprocess.run([str(qforge), "quantize", str(b32), str(s / "ours"), "--scheme",
                        "int4-g32", "--dtype", "f32", "--calib", str(s / "calib")],
                       check=True, capture_output=True)
        _llmc("awq-g32-moe", str(b32), str(s / "samples.json"), str(s / "llmc"),
              *(["--routed-experts"] if experts == "routed" else []))
        ours.append(_drift(qforge, base, s / "ours", s / "ours.json"))
        llmc.append(_drift(qforge, base, s / "llmc", s / "llmc.json"))
    mean = {"ours": sum(ours) / len(ours), "llmc": sum(llmc) / len(llmc)}
    print(f"{family} awq {experts} PPL drift % per seed: ours {ours} llmc {llmc} RTN {rtn:.3f}; "
          f"mean ours {mean['ours']:.3f} llmc {mean['llmc']:.3f}")
    for o, ref in zip(ours, llmc):
        if ref < rtn:
            assert o < rtn, (ours, llmc, rtn)
    assert mean["ours"] <= mean["llmc"] + TOLERANCE_PCT, (ours, llmc)


# GPTQ per expert on the Mixtral fixture (6 experts, top-2, expert width 32, so group 32).
# llm-compressor 0.14 (with its transformers 5.17) loads the 4.57 checkpoint's per-expert w1/w3/w2
# as transformers 5's fused `experts.gate_up_proj` / `down_proj`, linearizes them into
# per-expert Linears (llmcompressor/modeling/moe/linearize.py `linearize_moe`) and saves those
# as `block_sparse_moe.experts.E.{gate,up,down}_proj` (transformers 5 reverses only the
# `mlp` -> `block_sparse_moe` rename), which `qforge verify` reads as Mixtral's `w1`/`w3`/`w2`.
# A drift on this 2-layer random fixture moves by up to ~1 point with the sample draw (either
# side ahead, single draws), so both sides run on the same three draws and the mean is compared.


@pytest.mark.parametrize("experts", ["routed", "all"])
def test_mixtral_gptq_per_expert_matches_llmcompressor(qforge, tmp_path, experts):
    """Same token samples on both sides; `routed`: each expert's Hessian from the tokens the
    router sends to it (qforge's default, llm-compressor `moe_calibrate_all_experts=False`);
    `all`: from every token (qforge `--all-experts`, llm-compressor's default True). Measured
    (drift %, seeds 0/1/2): routed ours 0.709/1.274/1.047 vs llm-compressor 1.052/1.182/0.330;
    all ours 2.019/1.989/1.439 vs 0.916/2.234/1.423; RTN 2.940."""
    t = tmp_path
    base = FIXTURES / "mixtral"
    b32 = t / "base-f32"
    subprocess.run([str(qforge), "convert", str(base), str(b32), "--to", "hf", "--dtype", "f32"],
                   check=True, capture_output=True)
    subprocess.run([str(qforge), "quantize", str(b32), str(t / "rtn"), "--scheme", "int4-g32",
                    "--dtype", "f32"], check=True, capture_output=True)
    rtn = _drift(qforge, base, t / "rtn", t / "rtn.json")
    data = [str(cache_dir() / "text" / p) for p in PLAYS]
    ours, llmc = [], []
    for seed in MOE_SEEDS:
        s = t / f"s{seed}"
        s.mkdir()
        subprocess.run([str(qforge), "calibrate", str(b32), "--data", *data, "--method", "gptq",
                        "--scheme", "int4-g32", "--samples", SAMPLES, "--seq-len", SEQ_LEN,
                        "--seed", seed, *(["--all-experts"] if experts == "all" else []),
                        "--samples-out", str(s / "samples.json"), "-o", str(s / "calib"), "-q"],
                       check=True, capture_output=True)
        calib = json.loads((s / "calib" / "calib.json").read_text())
        rows = [m["routed_tokens"] for m in calib["modules"] if ".experts." in m["module"]]
        assert len(rows) == 2 * 6 * 3, calib["modules"][:2]
        if experts == "all":
            assert set(rows) == {int(SAMPLES) * int(SEQ_LEN)}, rows
        else:
            assert max(rows) < int(SAMPLES) * int(SEQ_LEN), rows
        subprocess.run([str(qforge), "quantize", str(b32), str(s / "ours"), "--scheme",
                        "int4-g32", "--dtype", "f32", "--calib", str(s / "calib")],
                       check=True, capture_output=True)
        _llmc("gptq-g32", str(b32), str(s / "samples.json"), str(s / "llmc"),
              *(["--routed-experts"] if experts == "routed" else []))
        ours.append(_drift(qforge, base, s / "ours", s / "ours.json"))
        llmc.append(_drift(qforge, base, s / "llmc", s / "llmc.json"))
    mean = {"ours": sum(ours) / len(ours), "llmc": sum(llmc) / len(llmc)}
    print(f"mixtral gptq {experts} PPL drift % per seed: ours {ours} llmc {llmc} RTN {rtn:.3f}; "
          f"mean ours {mean['ours']:.3f} llmc {mean['llmc']:.3f}")
    assert max(ours) < rtn, (ours, rtn)
    assert mean["ours"] <= mean["llmc"] + TOLERANCE_PCT, (ours, llmc)
