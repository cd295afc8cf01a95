"""Byte identity with llm-compressor 0.14.0.1 (heavy: scripts/test-heavy.sh).

SmolLM2-135M (the Q4_1 GGUF converted to a BF16 HF checkpoint, as the other llm-compressor tests
do) is quantized twice: by `qforge quantize --scheme S` and by llm-compressor's
`QuantizationModifier(targets="Linear", scheme=PRESET, ignore=["lm_head"])` with `oneshot` and no
data (tests/interop/llmcompressor_quantize.py; these presets need no calibration: weights only,
activations dynamic). Every tensor of the two checkpoints must be byte for byte the same (same
names, dtypes, shapes and bytes), and the two `quantization_config`s must mean the same: equal
after compressed-tensors' own `QuantizationConfig.model_validate`, on the fields that define the
format (format, ignore list, and per group the targets, weights and input activations: type,
bits, strategy, group size, block structure, symmetry, dynamism, scale dtype). They differ only
in what does not change the checkpoint: the version (qforge writes 0.20.0's, llm-compressor 0.14
ships 0.19.0), the observer llm-compressor used, and the per-group `format` it repeats.

| qforge | llm-compressor | where it could differ |
|---|---|---|
| fp8-rowwise | FP8_DYNAMIC | `W / scale` rounded to BF16 before the FP8 cast (qforge divided in f32 before) |
| fp8-block | FP8_BLOCK | SmolLM2's 576 columns are 4.5 blocks of 128: the partial edge block |
| nvfp4a16 | NVFP4A16 | the global scale's arithmetic and its fusion over q/k/v and gate/up |
| mxfp4 | MXFP4 | the E8M0 exponent's rounding |

Each llm-compressor run takes 2 to 5 minutes on CPU; the four cases took 21 min on 2 shared cores
(QFORGE_BIN=debug build, `pytest tests/interop/test_llmcompressor_bytes.py`: 4 passed).
"""
import json
import os
import pathlib
import struct
import subprocess
import sys

import pytest

pytest.importorskip("torch", reason="torch not installed: run scripts/test-heavy.sh")
pytest.importorskip("compressed_tensors", reason="compressed-tensors not installed: run scripts/test-heavy.sh")

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PRESETS = {"fp8-rowwise": "FP8_DYNAMIC", "fp8-block": "FP8_BLOCK", "nvfp4a16": "NVFP4A16", "mxfp4": "MXFP4"}
# Tensors allowed to differ, per scheme: {name: (bytes that differ, why)}. Empty: every tensor of
# every scheme is byte-identical.
EXPECTED_DIFF: dict[str, dict[str, tuple[int, str]]] = {s: {} for s in PRESETS}
ARG_FIELDS = ("type", "num_bits", "strategy", "group_size", "block_structure", "symmetric", "dynamic", "scale_dtype")


def _layer() -> str:
    out = subprocess.run([str(ROOT / "scripts" / "pylayer-llmcompressor.sh")], check=True, capture_output=True,
                         text=True)
    return out.stdout.strip()


def safetensors_raw(d: pathlib.Path) -> dict[str, tuple[str, list[int], bytes]]:
    """Every tensor of a checkpoint directory: name -> (dtype, shape, raw bytes)."""
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        raw = f.read_bytes()
        n = struct.unpack("<Q", raw[:8])[0]
        header = json.loads(raw[8:8 + n])
        for name, t in header.items():
            if name == "__metadata__":
                continue
            s, e = t["data_offsets"]
            out[name] = (t["dtype"], t["shape"], raw[8 + n + s:8 + n + e])
    return out


def config_semantics(d: pathlib.Path) -> dict:
    """What a `quantization_config` means, parsed by compressed-tensors itself."""
    from compressed_tensors.quantization import QuantizationConfig

    cfg = json.loads((d / "config.json").read_text())["quantization_config"]
    qc = QuantizationConfig.model_validate(cfg)

    def args(a):
        if a is None:
            return None
        dumped = a.model_dump(mode="json")
        return {k: dumped.get(k) for k in ARG_FIELDS}

    groups = {name: {"targets": sorted(g.targets), "weights": args(g.weights),
                     "input_activations": args(g.input_activations),
                     "output_activations": args(g.output_activations)}
              for name, g in qc.config_groups.items()}
    return {"quant_method": cfg["quant_method"], "format": qc.format, "ignore": sorted(qc.ignore or []),
            "status": str(qc.quantization_status), "groups": groups, "kv_cache_scheme": qc.kv_cache_scheme}


@pytest.fixture(scope="module")
def base(qforge, smollm2_gguf, tmp_path_factory) -> pathlib.Path:
    d = tmp_path_factory.mktemp("llmc-bytes") / "smollm2-hf"
    subprocess.run([str(qforge), "convert", str(smollm2_gguf), str(d), "--to", "hf", "--dtype", "bf16",
                    "--allow-lossy"], check=True, capture_output=True)
    return d


@pytest.mark.parametrize("scheme", list(PRESETS))
def test_llmcompressor_writes_our_bytes(qforge, base, scheme, tmp_path):
    ours = tmp_path / "qforge"
    theirs = tmp_path / "llmc"
    subprocess.run([str(qforge), "quantize", str(base), str(ours), "--scheme", scheme, "--quiet"], check=True)
    env = dict(os.environ, PYTHONPATH=_layer(), TQDM_DISABLE="1")
    subprocess.run([sys.executable, str(HERE / "llmcompressor_quantize.py"), PRESETS[scheme], str(base), str(theirs)],
                   check=True, env=env, capture_output=True)

    a, b = safetensors_raw(ours), safetensors_raw(theirs)
    assert sorted(a) == sorted(b), f"{scheme}: tensor names differ: ours only {sorted(set(a) - set(b))[:5]}, " \
                                   f"llm-compressor only {sorted(set(b) - set(a))[:5]}"
    differ = {}
    for name in sorted(a):
        (da, sa, xa), (db, sb, xb) = a[name], b[name]
        assert (da, sa) == (db, sb), f"{scheme} {name}: {da} {sa} vs llm-compressor's {db} {sb}"
        if xa != xb:
            differ[name] = sum(p != q for p, q in zip(xa, xb))
    expected = {n: c for n, (c, _why) in EXPECTED_DIFF[scheme].items()}
    assert differ == expected, f"{scheme}: {len(differ)} of {len(a)} tensors differ: {dict(list(differ.items())[:8])}"
    quantized = [n for n, (d, _, _) in a.items() if d in ("F8_E4M3", "U8")]
    assert len(quantized) >= 210, f"{scheme}: only {len(quantized)} quantized tensors"

    assert config_semantics(ours) == config_semantics(theirs)
