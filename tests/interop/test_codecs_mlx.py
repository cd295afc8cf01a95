"""qforge's MLX affine codec (codecs/src/mlx.rs via the codec example) against mlx itself:
`mx.quantize` / `mx.dequantize` (mlx 0.32.4 CPU wheels, pinned in scripts/requirements-interop.txt),
bits 4 and 8, group sizes 32, 64 and 128, BF16 and F32 weights. Packed words, scales, biases and
dequantized values must be bit-identical.
"""

import numpy as np
import pytest

from test_codecs import SEED, codec, run_codec, smollm2_weights, work  # noqa: F401

mx = pytest.importorskip("mlx.core", reason="mlx is not installed in this venv (scripts/requirements-interop.txt pins it)")
ml_dtypes = pytest.importorskip("ml_dtypes")


def bf16(x):
    return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)


def matrices(rng):
    a = rng.standard_normal((96, 512)) * 10.0 ** rng.uniform(-6, 3, (96, 1))
    a[0, :128] = 0.0          # all-zero groups (scale eps, bias 0)
    a[1, :128] = 0.5          # constant groups
    a[2, :128] = -0.25
    a[3, :64] = np.linspace(-1, 0, 64)   # one-sided groups
    a[4, :64] = np.linspace(0, 1, 64)
    grid = rng.integers(0, 16, (32, 256)) / 15.0 - 0.4  # codes on the grid: rint ties
    return [a, grid]


def check(codec, work, w, bits, group, dtype):  # noqa: F811
    x = bf16(w) if dtype == "bf16" else np.asarray(w, np.float32)
    rows, k = x.shape
    got = run_codec(codec, work, "mlx", str(bits), x, "--row", k, "--group", group, "--arith", dtype,
                    out_dtype=np.uint32)
    side = lambda ext: np.fromfile(work / f"mlx-{bits}.out.{ext}", dtype=np.float32)  # noqa: E731
    arr = mx.array(x).astype(mx.bfloat16 if dtype == "bf16" else mx.float32)
    q, s, b = mx.quantize(arr, group_size=group, bits=bits)
    d = mx.dequantize(q, s, b, group_size=group, bits=bits)
    want_q = np.array(q).reshape(-1)
    f32 = lambda a: np.array(a.astype(mx.float32)).reshape(-1).view(np.uint32)  # noqa: E731
    assert np.array_equal(got, want_q), f"{bits}-bit g{group} {dtype}: {(got != want_q).sum()} words differ"
    assert np.array_equal(side("scale").view(np.uint32), f32(s)), "scales"
    assert np.array_equal(side("bias").view(np.uint32), f32(b)), "biases"
    assert np.array_equal(side("deq").view(np.uint32), f32(d)), "dequantized"
    return x.size


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("dtype", ["bf16", "f32"])
def test_mlx_affine_matches_mlx(codec, work, bits, group, dtype):  # noqa: F811
    rng = np.random.default_rng(SEED + 50)
    n = sum(check(codec, work, w, bits, group, dtype) for w in matrices(rng))
    print(f"MLX {bits}-bit group {group} {dtype}: {n} values identical to mx.quantize/mx.dequantize")


def test_mlx_affine_on_real_weights(codec, work, smollm2_weights):  # noqa: F811
    n = 0
    for w in smollm2_weights.values():
        for bits in (4, 8):
            n += check(codec, work, w, bits, 64, "bf16")
    print(f"MLX real weights (4 and 8 bits, group 64, bf16): {n} values identical")
