"""`qforge verify` against an independent numpy/ml_dtypes simulation (scripts/sim_drift.py) of the
same schemes on the same tokens: SmolLM2-135M dequantized to F32, 2 chunks of 512 tokens of Hamlet.

Budgets:
* FP8 rowwise weights-only and INT4 g64: the weights are exact (same codec both sides) and the
  forward is f32 in both, so the figures agree to float noise: PPL within 0.01 % relative, mean
  KLD within 1 % relative, top-1 within 0.5 points (measured: every printed digit equal).
* FP8 W8A8 dynamic: per-token activation quantization is discontinuous, so accumulation-order
  noise flips FP8 rounding decisions and grows through 30 layers. On these 2 chunks the
  simulation itself moves from PPL 23.10 to 22.80 when its matmuls accumulate in f64 instead of
  f32; qforge gives 23.07. Budget: PPL within 2.5 %, mean KLD within 10 %, top-1 within 4 points;
  layer 0 (before any noise can compound) must agree to 0.1 % relative.
"""

import json
import pathlib
import subprocess
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import sim_drift  # noqa: E402

CHUNKS = 2


@pytest.fixture(scope="module")
def base_f32(qforge, smollm2_gguf, tmp_path_factory) -> pathlib.Path:
    d = tmp_path_factory.mktemp("drift") / "base-f32"
    subprocess.run([str(qforge), "convert", str(smollm2_gguf), str(d), "--to", "hf", "--dtype", "f32"], check=True)
    return d



@pytest.fixture(scope="module")
def sim(base_f32, hamlet) -> dict:
    return sim_drift.simulate(base_f32, hamlet, 512, CHUNKS, ["fp8", "fp8-w8a8", "int4-g64"], progress=False)


def verify(qforge, base, quant, hamlet, *extra) -> dict:
    out = subprocess.run(
        [str(qforge), "verify", str(base), str(quant), "--data", str(hamlet), "--ctx", "512",
         "--chunks", str(CHUNKS), "--json", "-q", *extra],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout)["result"]


def quantize(qforge, base, scheme) -> pathlib.Path:
    out = base.parent / scheme
    if not out.exists():
        subprocess.run([str(qforge), "quantize", str(base), str(out), "--scheme", scheme, "--dtype", "f32"], check=True)
    return out


def rel(a: float, b: float) -> float:
    return abs(a / b - 1)


@pytest.mark.parametrize(("scheme", "sim_key", "extra"), [("fp8-rowwise", "fp8", ["--w8a8", "off"]), ("int4-g64", "int4-g64", [])])
def test_exact_weight_schemes_match_simulation(qforge, base_f32, hamlet, sim, scheme, sim_key, extra):
    r = verify(qforge, base_f32, quantize(qforge, base_f32, scheme), hamlet, *extra)
    s = sim["schemes"][sim_key]
    assert rel(r["base"]["ppl"], s["ppl_base"]) < 1e-4
    assert rel(r["quant"]["ppl"], s["ppl_quant"]) < 1e-4
    assert rel(r["kld_mean"], s["kld_mean"]) < 0.01
    assert abs(r["top1_pct"] - s["top1_pct"]) < 0.5
    assert r["ppl_drift_pct"] > 0.5  # the scheme does something on this model


def test_w8a8_matches_simulation_within_activation_noise(qforge, base_f32, hamlet, sim):
    r = verify(qforge, base_f32, quantize(qforge, base_f32, "fp8-rowwise"), hamlet, "--w8a8", "on")
    s = sim["schemes"]["fp8-w8a8"]
    assert rel(r["quant"]["ppl"], s["ppl_quant"]) < 0.025
    assert rel(r["kld_mean"], s["kld_mean"]) < 0.10
    assert abs(r["top1_pct"] - s["top1_pct"]) < 4.0
    # A sanity check of the reference, not of qforge: in the simulation, activation quantization
    # adds drift on top of the weights' (by far more than the noise). qforge is checked against
    # the simulation by the budgets above and the layer-0 check below.
    assert s["kld_mean"] > 1.3 * sim["schemes"]["fp8"]["kld_mean"]
    # layer 0: no compounding yet, so qforge and the simulation agree closely
    cfg = json.loads((base_f32 / "config.json").read_text())
    from safetensors.numpy import load_file
    import numpy as np

    t = {k: v.astype(np.float32) for k, v in load_file(str(base_f32 / "model.safetensors")).items()}
    toks = sim_drift.load_tokens(base_f32, hamlet, 512, 1)
    cfg0 = dict(cfg, num_hidden_layers=1)
    tq, _ = sim_drift.variant(t, "fp8-w8a8", False)
    hb, hq = [], []
    sim_drift.Model(cfg0, t).logits(toks[0], 256, hb)
    sim_drift.Model(cfg0, tq, act_fp8=True).logits(toks[0], 256, hq)
    a, b = hb[0].astype(np.float64), hq[0].astype(np.float64)
    sim_l0 = float(np.sqrt(((b - a) ** 2).sum() / (a**2).sum()))
    r1 = verify_chunks1(qforge, base_f32, hamlet)
    assert rel(r1["layers"][0]["rel_error"], sim_l0) < 1e-3


def verify_chunks1(qforge, base, hamlet) -> dict:
    out = subprocess.run(
        [str(qforge), "verify", str(base), str(base.parent / "fp8-rowwise"), "--data", str(hamlet), "--ctx", "512",
         "--chunks", "1", "--json", "-q", "--w8a8", "on"],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout)["result"]
