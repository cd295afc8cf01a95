"""qforge's FP4/E8M0 codecs and the compressed-tensors FP4/FP8 block codecs against their
defining tools, bit for bit (codecs/src/fp4.rs, codecs/src/fp8_ct.rs via the codec example).

- E2M1 and E8M0 encoders vs ml_dtypes 0.6.0 `astype(float4_e2m1fn / float8_e8m0fnu)` from
  float32: every BF16 and F16 code (widened to f32) and >= 10,000,000 f32 values (random bit
  patterns, log-uniform magnitudes over and beyond each format's range, a few ulps around every
  code and every midpoint between adjacent codes, both signs). Byte-identical everywhere, NaN
  inputs included. Decoders: all 16 / 256 codes.
- ggml MXFP4 (GGUF type 39) vs gguf-py 0.19.0 `gguf.quants.quantize/dequantize` (MXFP4).
- NVFP4 and MXFP4 (`nvfp4-pack-quantized` / `mxfp4-pack-quantized`) and FP8 per channel / per
  128x128 block vs a numpy re-statement of compressed-tensors' torch code, operation for
  operation, in the dtype torch uses for each (the package needs torch, which the light venv does
  not carry; the lines are cited at each step, compressed-tensors 0.19.0 as pinned with
  llm-compressor 0.14.0.1, identical in 0.20.0 for these paths).
"""

import ml_dtypes
import numpy as np
import pytest
from gguf import GGMLQuantizationType as GQ
from gguf import quants as gq

from test_codecs import SEED, all_16bit_codes, codec, run_codec, smollm2_weights, work  # noqa: F401

E2M1 = ml_dtypes.float4_e2m1fn
E8M0 = ml_dtypes.float8_e8m0fnu
BF16 = ml_dtypes.bfloat16
E4M3 = ml_dtypes.float8_e4m3fn


# ------------------------------------------------------------------------------------ scalars


def ml(x, dt):
    with np.errstate(all="ignore"):
        return x.astype(dt).view(np.uint8)


def around_codes(dt, n_codes):
    """A few ulps around every finite code and every midpoint between adjacent codes."""
    v = np.arange(n_codes, dtype=np.uint8).view(dt).astype(np.float64)
    finite = np.unique(v[np.isfinite(v) & (v >= 0)])
    mids = (finite[:-1] + finite[1:]) / 2
    parts = []
    for base in (finite.astype(np.float32), mids.astype(np.float32)):
        base = base[base > 0]
        for k in range(-4, 5):
            parts.append((base.view(np.uint32).astype(np.int64) + k).clip(1, 0x7F7FFFFF).astype(np.uint32).view(np.float32))
    x = np.concatenate(parts + [np.array([0.0, np.inf, np.nan, 1e-45, np.finfo(np.float32).max], np.float32)])
    return np.concatenate([x, -x])


def ten_million(rng, lo, hi):
    n_bits, n_log = 6_000_000, 4_000_000
    bits = rng.integers(0, 2**32, n_bits, dtype=np.uint64).astype(np.uint32).view(np.float32)
    sign = np.where(rng.random(n_log) < 0.5, -1.0, 1.0)
    with np.errstate(over="ignore"):
        log_uniform = (sign * np.exp2(rng.uniform(lo, hi, n_log))).astype(np.float32)
    return np.concatenate([bits, log_uniform])


@pytest.mark.parametrize("name,dt,lo,hi", [("E2M1", E2M1, -6.0, 5.0), ("E8M0", E8M0, -140.0, 140.0)])
def test_scalar_encoders_match_ml_dtypes(codec, work, name, dt, lo, hi):
    rng = np.random.default_rng(SEED + 40)
    special = around_codes(dt, 16 if dt is E2M1 else 256)
    bf16, f16 = all_16bit_codes()
    x = np.concatenate([special, bf16, f16, ten_million(rng, lo, hi)])
    assert x.size >= 10_000_000
    got = run_codec(codec, work, "encode", name, x)
    want = ml(x, dt)
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, f"{name}: {bad.size} of {x.size} differ, e.g. " + ", ".join(
        f"x={x[i]!r} ({x[i:i+1].view(np.uint32)[0]:#010x}) got {got[i]:#04x} want {want[i]:#04x}" for i in bad[:5])
    nan_in = int(np.isnan(x).sum())
    print(f"{name}: {x.size} values byte-identical to ml_dtypes ({nan_in} NaN inputs, "
          f"{special.size} around codes/midpoints, 131072 BF16/F16 codes)")


@pytest.mark.parametrize("name,dt,n", [("E2M1", E2M1, 16), ("E8M0", E8M0, 256)])
def test_scalar_decoders_match_ml_dtypes(codec, work, name, dt, n):
    codes = np.arange(n, dtype=np.uint8)
    got = run_codec(codec, work, "decode", name, codes, out_dtype=np.float32)
    want = codes.view(dt).astype(np.float32)
    same = (got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want))
    assert same.all(), name


# ------------------------------------------------------------------------------------ ggml MXFP4


def mxfp4_inputs(rng):
    rows = []
    for r in range(256):
        scale = 10.0 ** rng.uniform(-30, 30)
        kind = r % 4
        if kind == 0:
            row = rng.standard_normal(256) * scale
        elif kind == 1:  # values on the doubled-E2M1 grid and halfway between (argmin ties)
            row = rng.choice([0, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 1.75, 2, 2.5, 3, 3.5, 4, 5, 6], 256) * np.exp2(rng.integers(-20, 20))
            row *= np.where(rng.random(256) < 0.5, -1, 1)
        elif kind == 2:  # amax just below / at / above a power of two (floor(log2) edges)
            row = rng.uniform(-1, 1, 256)
            p = np.exp2(float(rng.integers(-100, 100)))
            row[::32] = p * np.float32(1 - 2**-24) if r % 8 == 2 else p
        else:  # zero and constant blocks
            row = np.repeat(rng.standard_normal(8), 32) * scale
            row[:32] = 0.0
        rows.append(row)
    return np.asarray(rows, dtype=np.float32)


def test_ggml_mxfp4_tiny_blocks(codec, work):
    """amax below 2^-125: floor(log2) - 2 + 127 is negative and its uint8 conversion wraps."""
    x = np.zeros((4, 32), np.float32)
    x[0, 3] = 1e-39
    x[1, 5] = -2.0**-126
    x[2, 7] = 2.0**-149
    x[3, :] = 3e-38
    got = run_codec(codec, work, "quantize", "MXFP4", x)
    with np.errstate(all="ignore"):
        want = gq.quantize(x, GQ.MXFP4).reshape(-1)
    assert np.array_equal(got, want), f"{got.reshape(-1, 17)[:, 0]} vs {want.reshape(-1, 17)[:, 0]}"


def check_ggml_mxfp4(codec, work, xs):  # noqa: F811
    blocks = 0
    for x in xs:
        got = run_codec(codec, work, "quantize", "MXFP4", x)
        want = gq.quantize(x, GQ.MXFP4).reshape(-1)
        g, w = got.reshape(-1, 17), want.reshape(-1, 17)
        bad = np.flatnonzero((g != w).any(axis=1))
        assert bad.size == 0, f"{bad.size} of {g.shape[0]} blocks differ, first {bad[0]}:\n{g[bad[0]]}\n{w[bad[0]]}"
        blocks += g.shape[0]
        back = run_codec(codec, work, "decode", "MXFP4", got, out_dtype=np.float32)
        ref = gq.dequantize(got, GQ.MXFP4).reshape(-1)
        assert np.array_equal(back.view(np.uint32), ref.view(np.uint32))
    return blocks


def test_ggml_mxfp4_matches_gguf_py(codec, work):  # noqa: F811
    blocks = check_ggml_mxfp4(codec, work, [mxfp4_inputs(np.random.default_rng(SEED + 41))])
    print(f"MXFP4 (ggml): {blocks} blocks identical to gguf-py, quantized and dequantized")


def test_ggml_mxfp4_on_real_weights(codec, work, smollm2_weights):  # noqa: F811
    blocks = check_ggml_mxfp4(codec, work, [w.reshape(-1, 256) for w in smollm2_weights.values()])
    print(f"MXFP4 (ggml), real weights: {blocks} blocks identical to gguf-py")


# ------------------------------------------------------------------------------------ compressed-tensors


def bf16(x):
    """torch's BF16 result of an f32 computation: round to nearest even (ml_dtypes cast)."""
    return np.asarray(x, np.float32).astype(BF16).astype(np.float32)


def ct_cast_to_fp4(x):
    """quantization/utils/fp4_utils.py cast_to_fp4 (CPU path), then
    compressors/nvfp4/helpers.py pack_fp4_to_uint8's index mapping (CPU fallback)."""
    sign = np.sign(x)  # torch.sign(±0) = +0
    a = np.abs(x)
    out = np.zeros_like(a)
    out[(a > 0.25) & (a < 0.75)] = 0.5
    out[(a >= 0.75) & (a <= 1.25)] = 1.0
    out[(a > 1.25) & (a < 1.75)] = 1.5
    out[(a >= 1.75) & (a <= 2.5)] = 2.0
    out[(a > 2.5) & (a < 3.5)] = 3.0
    out[(a >= 3.5) & (a <= 5.0)] = 4.0
    out[a > 5.0] = 6.0
    v = out * sign
    s = np.signbit(v).astype(np.uint8)
    i2 = np.abs((v * 2).astype(np.int8))
    idx = np.zeros(v.shape, np.uint8)
    for val, code in ((1, 1), (2, 2), (3, 3), (4, 4), (6, 5), (8, 6)):
        idx[i2 == val] = code
    idx[i2 >= 12] = 7
    idx |= s << 3
    idx = idx.reshape(-1, 2)
    return (idx[:, 0] | (idx[:, 1] << 4)).astype(np.uint8)


def f32(x):
    """torch's F32 result (an F32 model: no extra rounding)."""
    return np.asarray(x, np.float32)


def ct_nvfp4(w, r=bf16):
    """NVFP4 for a weight `w` whose dtype rounds with `r` (bf16: a BF16 model, f32: an F32 one)."""
    rows, k = w.shape
    g = w.reshape(rows, k // 16, 16)
    # llm-compressor observers/min_max.py: amin/amax per group (BF16); base.py get_global_scale
    mn, mx = np.minimum(g.min(-1), 0), np.maximum(g.max(-1), 0)
    amax_t = max(mx.max(), -mn.min())
    # utils/helpers.py generate_gparam: clamp(min=finfo(bf16).tiny); 448*6 / t is
    # Tensor.__rtruediv__ = t.reciprocal() * 2688, both BF16; nan_to_num(.., 1.0); .to(float32)
    t = np.maximum(np.float32(amax_t), np.float32(2.0**-126))
    with np.errstate(over="ignore", divide="ignore"):
        gs = r(r(np.float32(1) / t) * np.float32(2688))
    gs = np.float32(1.0) if not np.isfinite(gs) else np.float32(gs)
    # calculate_qparams: max_val_pos / (bit_range.to(bf16) / 2) in BF16; global_scale * scales in
    # F32 (a [1] F32 tensor promotes); round_to_quantized_type_dtype: clamp to +-448, .to(fp8);
    # _get_dtype_eps(float8_e4m3fn) = 0.125 replaces zeros
    amax_g = np.maximum(np.abs(mn), np.abs(mx))
    s = gs * r(amax_g / np.float32(6))
    s8 = np.clip(s, -448, 448).astype(np.float32).astype(E4M3).astype(np.float32)
    s8 = np.where(s8 == 0, np.float32(0.125), s8)
    # forward_helpers.py _quantize: scale / global_scale (F32), x / scale (F32), + zero point 0,
    # clamp to +-6, cast_to_fp4; nvfp4 compressor packs
    div = (s8 / gs).astype(np.float32)
    scaled = (g / div[..., None]).astype(np.float32) + np.float32(0)
    packed = ct_cast_to_fp4(np.clip(scaled, -6, 6).reshape(rows, k))
    # decompress: unpack (E2M1 values), scale.to(bf16) / global_scale (F32), x_q * scale
    deq = (np.arange(16, dtype=np.uint8).view(E2M1).astype(np.float32)[unpack(packed)].reshape(rows, k // 16, 16)
           * div[..., None]).astype(np.float32)
    return packed, s8.astype(E4M3).view(np.uint8).reshape(-1), gs, deq.reshape(-1)


def unpack(packed):
    return np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(-1)


def ct_mxfp4(w, r=bf16):
    """MXFP4 for a BF16 (r=bf16) or F32 (r=f32) weight."""
    rows, k = w.shape
    g = w.reshape(rows, k // 32, 32)
    mn, mx = np.minimum(g.min(-1), 0), np.maximum(g.max(-1), 0)
    amax = np.maximum(np.abs(mn), np.abs(mx))
    # utils/mxfp_utils.py round_to_power_2 on the dtype's bits: + (1 << (mantissa - 1 - 1)),
    # & sign|exponent
    if r is bf16:
        b = amax.astype(BF16).view(np.uint16).astype(np.int32)
        p = ((b + 32) & (((1 << 9) - 1) << 7)).astype(np.uint16).view(BF16)
    else:
        b = amax.astype(np.float32).view(np.uint32).astype(np.int64)
        p = ((b + (1 << 21)) & (((1 << 9) - 1) << 23)).astype(np.uint32).view(np.float32)
    # generate_mx_scales: 127 + floor(log2(p)) - 2 (BF16); round_to_quantized_type_dtype(uint8):
    # round(clamp(., 0, 255)); maybe_convert_from_mx_exp: 2.0 ** (e - 127) (F32) -> BF16
    with np.errstate(divide="ignore"):
        e = r(127 + np.floor(np.log2(p.astype(np.float32))) - 2)
    e = np.round(np.clip(e, 0, 255)).astype(np.uint8)
    with np.errstate(over="ignore"):
        scale = r(np.float32(2.0) ** (e.astype(np.int32) - 127).astype(np.float32))
    # _quantize: BF16 / BF16, + zero point 0, clamp, cast_to_fp4
    scaled = r(g / scale[..., None]) + np.float32(0)
    packed = ct_cast_to_fp4(np.clip(scaled, -6, 6).reshape(rows, k))
    # decompress_mx_scale: 2.0 ** (e - 127) in BF16; x_q (BF16) * scale (BF16)
    q = np.arange(16, dtype=np.uint8).view(E2M1).astype(np.float32)[unpack(packed)].reshape(rows, k // 32, 32)
    deq = r(q * scale[..., None])
    return packed, e.reshape(-1), deq.reshape(-1)


def ct_fp8(w, block=None, r=bf16):
    """FP8 per channel (block None) or per block for a BF16 weight; returns codes, scales."""
    rows, k = w.shape
    bh, bw = block if block else (1, k)
    # utils/helpers.py maybe_pad_tensor_for_block_quant: zero padding to whole blocks
    pr, pc = (-rows) % bh, (-k) % bw
    wp = np.pad(w, ((0, pr), (0, pc)))
    b = wp.reshape(wp.shape[0] // bh, bh, wp.shape[1] // bw, bw).transpose(0, 2, 1, 3)
    mn, mx = np.minimum(b.min((-1, -2)), 0), np.maximum(b.max((-1, -2)), 0)
    # calculate_qparams: max_val_pos / (896.to(bf16) / 2) in BF16; eps = finfo(bf16).eps = 2^-7
    s = r(np.maximum(np.abs(mn), np.abs(mx)) / np.float32(448))
    s = np.where(s == 0, np.float32(2.0**-7 if r is bf16 else 2.0**-23), s)
    # _quantize: x / scale in BF16, + zero point (+0), clamp +-448 (BF16), .to(float8_e4m3fn)
    scaled = r(b / s[..., None, None]) + np.float32(0)
    q = np.clip(scaled, -448, 448).astype(E4M3)
    qp = q.view(np.uint8).transpose(0, 2, 1, 3).reshape(wp.shape)[:rows, :k]
    # decompress: x_q.to(bf16) * scale (BF16)
    deq = r(q.astype(np.float32) * s[..., None, None]).transpose(0, 2, 1, 3).reshape(wp.shape)[:rows, :k]
    return qp.reshape(-1), s.reshape(-1), deq.reshape(-1)


def ct_matrices(rng):
    """BF16-valued test matrices: random at many scales (zero groups, tiny and huge values, exact
    -0), a grid that lands on the E2M1 thresholds, odd shapes for FP8 blocks, and real weights."""
    mats = []
    a = rng.standard_normal((64, 576)) * 10.0 ** rng.uniform(-30, 30, (64, 1))
    a[3, :64] = 0.0
    a[4, :] = 0.0
    a[5, 100:140] = -0.0
    a[6, ::7] *= 1e-12
    mats.append(a)
    grid = rng.choice([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0], (32, 256)) * np.where(rng.random((32, 256)) < 0.5, -1, 1)
    grid[:, ::16] = 6.0  # amax 6 in every group: scale 1 for MXFP4, ties stay ties
    mats.append(grid)
    mats.append(rng.uniform(-3, 3, (200, 320)))  # 200 x 320: partial FP8 blocks both ways
    return [bf16(np.asarray(m, np.float32)) for m in mats]


def check_ct(codec, work, mats, arith="bf16"):  # noqa: F811
    r = bf16 if arith == "bf16" else f32
    counts = {"NVFP4": 0, "MXFP4": 0, "FP8_CHANNEL": 0, "FP8_BLOCK": 0}
    for w in mats:
        rows, k = w.shape
        def run(name):
            return run_codec(codec, work, "ct", name, w, "--row", k, "--arith", arith)

        def side(ext, dtype):
            return np.fromfile(work / f"ct-{name}.out.{ext}", dtype=dtype)

        name = "NVFP4"
        if k % 16 == 0:
            got = run(name)
            packed, scales, gs, deq = ct_nvfp4(w, r)
            assert np.array_equal(got, packed), f"NVFP4 packed: {(got != packed).sum()} bytes differ"
            assert np.array_equal(side("scale", np.uint8), scales)
            assert side("gs", np.float32)[0].view(np.uint32) == np.float32(gs).view(np.uint32)
            assert np.array_equal(side("deq", np.float32).view(np.uint32), deq.view(np.uint32))
            counts[name] += w.size
        name = "MXFP4"
        if k % 32 == 0:
            got = run(name)
            packed, scales, deq = ct_mxfp4(w, r)
            assert np.array_equal(got, packed), f"MXFP4 packed: {(got != packed).sum()} bytes differ"
            assert np.array_equal(side("scale", np.uint8), scales)
            assert np.array_equal(side("deq", np.float32).view(np.uint32), deq.view(np.uint32))
            counts[name] += w.size
        name = "FP8_CHANNEL"
        got = run(name)
        q, s, _ = ct_fp8(w, r=r)
        assert np.array_equal(got, q), f"FP8 channel: {(got != q).sum()} codes differ"
        assert np.array_equal(side("scale", np.float32).view(np.uint32), s.view(np.uint32))
        counts[name] += w.size
        name = "FP8_BLOCK"
        got = run(name)
        q, s, deq = ct_fp8(w, (128, 128), r)
        assert np.array_equal(got, q), f"FP8 block: {(got != q).sum()} codes differ"
        assert np.array_equal(side("scale", np.float32).view(np.uint32), s.view(np.uint32))
        assert np.array_equal(side("deq", np.float32).view(np.uint32), deq.view(np.uint32))
        counts[name] += w.size
    return counts


def test_ct_fp4_and_fp8_match_compressed_tensors_arithmetic(codec, work):  # noqa: F811
    counts = check_ct(codec, work, ct_matrices(np.random.default_rng(SEED + 42)))
    print("compressed-tensors arithmetic, values identical (codes, scales, dequantized):", counts)


def test_ct_fp4_and_fp8_for_an_f32_model(codec, work):  # noqa: F811
    rng = np.random.default_rng(SEED + 43)
    mats = [np.asarray(m, np.float32) for m in (rng.standard_normal((48, 384)) * 0.02,
                                                rng.uniform(-5, 5, (130, 256)))]
    counts = check_ct(codec, work, mats, "f32")
    print("compressed-tensors arithmetic, F32 model:", counts)


def test_ct_fp4_and_fp8_on_real_weights(codec, work, smollm2_weights):  # noqa: F811
    counts = check_ct(codec, work, [bf16(w) for w in smollm2_weights.values()])
    print("real weights, values identical:", counts)
