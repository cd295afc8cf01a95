"""qforge's codecs (codecs/examples/codec) against the reference implementations, bit for bit.

- FP8 encoders vs ml_dtypes 0.6.0 `astype(float8_e4m3fn / float8_e5m2)` from float32: every BF16 and
  F16 code (widened to f32), and >= 10,000,000 f32 values (all bit patterns, subnormals, the FP8
  ranges log-uniformly, values a few ulps around every FP8 code, and the exact midpoint between every
  pair of adjacent FP8 codes, both signs). The `_SAT` encoders are compared with
  `ml_dtypes(np.clip(x, -max, max))`.
  NaN rule: where ml_dtypes gives a NaN code, any NaN code of the format is accepted (E4M3FN:
  0x7F/0xFF; E5M2: low 7 bits > 0x7C); everywhere else the byte must be identical (so qforge may
  never produce NaN where ml_dtypes does not).
- BF16 encoder vs gguf-py's `BF16.quantize` (ggml's rule, NaN bits included); F16 encoder vs numpy
  `astype(float16)` (NaN: any NaN accepted).
- Q8_0/Q4_0/Q4_1/Q5_0/Q5_1 vs gguf-py `gguf.quants.quantize` on random and adversarial data and on
  real weights (SmolLM2 GGUF from the cache, dequantized with gguf-py).
- Every supported ggml type, with and without an importance matrix, vs llama.cpp's own C quantizers
  (ggml-quants.c from the llama.cpp source that scripts/build-llama-cpp.sh caches, compiled here with
  -ffp-contract=off, i.e. ISO C float semantics without FMA contraction).
  gguf-py and the C code differ on one class of input: the sign of a zero scale/min (see
  test_signed_zeros_follow_c); qforge follows C.
"""

import ctypes
import glob
import os
import pathlib
import shutil
import subprocess

import ml_dtypes
import numpy as np
import pytest
from gguf import GGMLQuantizationType as GQ
from gguf import GGUFReader
from gguf import quants as gq

from conftest import TARGET, cache_dir

SEED = 20241123

E4M3 = ml_dtypes.float8_e4m3fn
E5M2 = ml_dtypes.float8_e5m2
# name -> (ml_dtypes type, saturation bound or None)
FP8 = {
    "F8_E4M3": (E4M3, None),
    "F8_E4M3_SAT": (E4M3, 448.0),
    "F8_E5M2": (E5M2, None),
    "F8_E5M2_SAT": (E5M2, 57344.0),
}
LEGACY = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]
ALL_GGML = LEGACY + ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
# ggml type id, elements per block, bytes per block
GGML = {
    "Q4_0": (2, 32, 18),
    "Q4_1": (3, 32, 20),
    "Q5_0": (6, 32, 22),
    "Q5_1": (7, 32, 24),
    "Q8_0": (8, 32, 34),
    "Q2_K": (10, 256, 84),
    "Q3_K": (11, 256, 110),
    "Q4_K": (12, 256, 144),
    "Q5_K": (13, 256, 176),
    "Q6_K": (14, 256, 210),
}


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def codec() -> pathlib.Path:
    """The codec example binary (QFORGE_CODEC_BIN, else TARGET/release/examples/codec)."""
    env = os.environ.get("QFORGE_CODEC_BIN")
    candidates = [pathlib.Path(env)] if env else [TARGET / "release/examples/codec"]
    for c in candidates:
        if c.is_file():
            return c
    pytest.fail(
        f"codec example not found (tried {candidates}); run "
        "`cargo build --release -p qforge-codecs --example codec` or set QFORGE_CODEC_BIN"
    )


@pytest.fixture(scope="session")
def work(tmp_path_factory) -> pathlib.Path:
    return tmp_path_factory.mktemp("codecs")


def run_codec(codec, work, op, dtype, data, *extra, out_dtype=np.uint8):
    """Write `data` (f32, or raw bytes for decode), run the codec, return its output array."""
    src, dst = work / f"{op}-{dtype}.in", work / f"{op}-{dtype}.out"
    np.ascontiguousarray(data).tofile(src)
    subprocess.run([str(codec), op, dtype, str(src), str(dst), *map(str, extra)], check=True)
    return np.fromfile(dst, dtype=out_dtype)


# C reference: ggml-quants.c compiled with stubs for the four ggml symbols it links against.
HARNESS_C = r"""
#include "ggml-quants.c"
void ggml_abort(const char * file, int line, const char * fmt, ...) { (void)file; (void)line; (void)fmt; abort(); }
static int64_t qforge_block(enum ggml_type t) {
    return (t == GGML_TYPE_Q2_K || t == GGML_TYPE_Q3_K || t == GGML_TYPE_Q4_K || t == GGML_TYPE_Q5_K ||
            t == GGML_TYPE_Q6_K) ? QK_K : 32;
}
size_t ggml_type_size(enum ggml_type t) {
    switch (t) {
    case GGML_TYPE_Q4_0: return sizeof(block_q4_0);
    case GGML_TYPE_Q4_1: return sizeof(block_q4_1);
    case GGML_TYPE_Q5_0: return sizeof(block_q5_0);
    case GGML_TYPE_Q5_1: return sizeof(block_q5_1);
    case GGML_TYPE_Q8_0: return sizeof(block_q8_0);
    case GGML_TYPE_Q2_K: return sizeof(block_q2_K);
    case GGML_TYPE_Q3_K: return sizeof(block_q3_K);
    case GGML_TYPE_Q4_K: return sizeof(block_q4_K);
    case GGML_TYPE_Q5_K: return sizeof(block_q5_K);
    case GGML_TYPE_Q6_K: return sizeof(block_q6_K);
    default: abort();
    }
}
size_t ggml_row_size(enum ggml_type t, int64_t ne) { return ggml_type_size(t) * ne / qforge_block(t); }
const char * ggml_type_name(enum ggml_type t) { (void)t; return "?"; }
/* what ggml_quantize_chunk calls: the _ref path without an imatrix, the _impl path with one */
size_t qforge_ref_quantize(int t, const float * src, void * dst, int64_t nrow, int64_t n, const float * imatrix) {
    switch (t) {
    case GGML_TYPE_Q4_0: return quantize_q4_0(src, dst, nrow, n, imatrix);
    case GGML_TYPE_Q4_1: return quantize_q4_1(src, dst, nrow, n, imatrix);
    case GGML_TYPE_Q5_0: return quantize_q5_0(src, dst, nrow, n, imatrix);
    case GGML_TYPE_Q5_1: return quantize_q5_1(src, dst, nrow, n, imatrix);
    case GGML_TYPE_Q8_0: return quantize_q8_0(src, dst, nrow, n, imatrix);
    case GGML_TYPE_Q2_K: return quantize_q2_K(src, dst, nrow, n, imatrix);
    case GGML_TYPE_Q3_K: return quantize_q3_K(src, dst, nrow, n, imatrix);
    case GGML_TYPE_Q4_K: return quantize_q4_K(src, dst, nrow, n, imatrix);
    case GGML_TYPE_Q5_K: return quantize_q5_K(src, dst, nrow, n, imatrix);
    case GGML_TYPE_Q6_K: return quantize_q6_K(src, dst, nrow, n, imatrix);
    default: return 0;
    }
}
"""


def _llama_cpp_ggml_dir():
    pinned = cache_dir() / "llama.cpp-0.3.36" / "src" / "ggml"
    found = [pinned] + [pathlib.Path(p) for p in sorted(glob.glob(str(cache_dir() / "llama.cpp-*" / "src" / "ggml")))]
    for d in found:
        if (d / "src" / "ggml-quants.c").is_file():
            return d
    return None


@pytest.fixture(scope="session")
def c_ref(tmp_path_factory):
    """llama.cpp's quantizers as a ctypes function: (name, f32 [rows, n], imatrix or None) -> bytes."""
    ggml = _llama_cpp_ggml_dir()
    cc = os.environ.get("CC", "cc")
    if ggml is None:
        pytest.skip(f"llama.cpp source not in {cache_dir()}: run scripts/build-llama-cpp.sh to fetch it")
    if shutil.which(cc) is None:
        pytest.skip(f"no C compiler ({cc}) to build llama.cpp's reference quantizers")
    d = tmp_path_factory.mktemp("cref")
    (d / "harness.c").write_text(HARNESS_C)
    lib = d / "libggmlref.so"
    cmd = [cc, "-O1", "-DNDEBUG", "-ffp-contract=off", "-fPIC", "-shared", "-w",
           f"-I{ggml / 'include'}", f"-I{ggml / 'src'}", f"-I{ggml / 'src' / 'ggml-cpu'}",
           str(d / "harness.c"), "-o", str(lib), "-lm"]
    subprocess.run(cmd, check=True)
    so = ctypes.CDLL(str(lib))
    so.qforge_ref_quantize.restype = ctypes.c_size_t
    so.qforge_ref_quantize.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                       ctypes.c_int64, ctypes.c_void_p]

    def quantize(name, x, imatrix=None):
        t, bs, bb = GGML[name]
        x = np.ascontiguousarray(x, dtype=np.float32)
        rows, n = x.shape
        out = np.zeros(rows * n // bs * bb, dtype=np.uint8)
        im = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
        got = so.qforge_ref_quantize(t, x.ctypes.data, out.ctypes.data, rows, n,
                                     None if im is None else im.ctypes.data)
        assert got == out.size
        return out

    return quantize


# ------------------------------------------------------------------------------------ FP8


def ml_dtypes_fp8(x, name):
    dt, bound = FP8[name]
    y = np.clip(x, -bound, bound) if bound else x
    with np.errstate(invalid="ignore", over="ignore"):
        return y.astype(dt).view(np.uint8)


def is_nan_code(b, name):
    low = b & 0x7F
    return low == 0x7F if FP8[name][0] is E4M3 else low > 0x7C


def assert_fp8_equal(got, want, name, x, label=""):
    assert got.shape == want.shape
    ok = (got == want) | (is_nan_code(want, name) & is_nan_code(got, name))
    bad = np.flatnonzero(~ok)
    assert bad.size == 0, (
        f"{name}{label}: {bad.size} of {x.size} differ, e.g. "
        + ", ".join(f"x={x[i]!r} ({x[i:i+1].view(np.uint32)[0]:#010x}) got {got[i]:#04x} want {want[i]:#04x}"
                    for i in bad[:5])
    )
    return int(x.size)


def all_16bit_codes():
    codes = np.arange(65536, dtype=np.uint32)
    bf16 = (codes << 16).view(np.float32)
    f16 = codes.astype(np.uint16).view(np.float16).astype(np.float32)
    return bf16, f16


@pytest.mark.parametrize("name", list(FP8))
def test_fp8_every_bf16_and_f16_code(codec, work, name):
    for label, x in zip(("bf16", "f16"), all_16bit_codes()):
        got = run_codec(codec, work, "encode", name, x)
        assert assert_fp8_equal(got, ml_dtypes_fp8(x, name), name, x, f" ({label} codes)") == 65536


def fp8_special_values():
    """Midpoints between adjacent codes (+ one ulp either side), a few ulps around every code,
    the overflow midpoints, and the IEEE specials; both signs."""
    parts = []
    for dt, virtual_next in ((E4M3, 480.0), (E5M2, 65536.0)):
        v = np.arange(256, dtype=np.uint8).view(dt).astype(np.float64)
        finite = np.unique(v[np.isfinite(v) & (v >= 0)])
        finite = np.append(finite, virtual_next)  # where the next code would be: overflow midpoint
        mids = ((finite[:-1] + finite[1:]) / 2).astype(np.float32)
        assert np.array_equal(mids.astype(np.float64), (finite[:-1] + finite[1:]) / 2)  # exact in f32
        codes = finite[:-1].astype(np.float32)
        for base in (mids, codes):
            for k in range(-4, 5):
                parts.append((base.view(np.uint32).astype(np.int64) + k).clip(0, 0x7F7FFFFF).astype(np.uint32).view(np.float32))
    specials = np.array([0.0, np.inf, np.nan, np.finfo(np.float32).max, np.finfo(np.float32).tiny,
                         np.float32(1e-45), 448.0, 464.0, 480.0, 57344.0, 61440.0, 65536.0], dtype=np.float32)
    parts.append(specials)
    x = np.concatenate(parts)
    return np.concatenate([x, -x])


def test_fp8_ten_million_f32(codec, work):
    rng = np.random.default_rng(SEED)
    special = fp8_special_values()
    n_bits, n_log, n_sub, n_lin = 5_000_000, 3_000_000, 1_000_000, 1_000_000
    every_pattern = rng.integers(0, 2**32, n_bits, dtype=np.uint64).astype(np.uint32).view(np.float32)
    sign = np.where(rng.random(n_log) < 0.5, -1.0, 1.0)
    log_uniform = (sign * np.exp2(rng.uniform(-26.0, 20.0, n_log))).astype(np.float32)
    sub = (rng.integers(1, 2**23, n_sub, dtype=np.uint32) | (rng.integers(0, 2, n_sub, dtype=np.uint32) << 31)).view(np.float32)
    lin = rng.uniform(-70000.0, 70000.0, n_lin).astype(np.float32)
    x = np.concatenate([special, every_pattern, log_uniform, sub, lin])
    assert x.size >= 10_000_000
    compared = {}
    for name in FP8:
        got = run_codec(codec, work, "encode", name, x)
        compared[name] = assert_fp8_equal(got, ml_dtypes_fp8(x, name), name, x)
        # the midpoints alone, so a regression there is named as such
        m = special.size
        assert_fp8_equal(got[:m], ml_dtypes_fp8(special, name), name, special, " (midpoints)")
        exact = int((got == ml_dtypes_fp8(x, name)).sum())
        print(f"{name}: {compared[name]} values, {exact} byte-identical (NaN bytes included)")
    print(f"midpoint/boundary set: {special.size} values")


def test_fp8_decode_all_codes(codec, work):
    codes = np.arange(256, dtype=np.uint8)
    for name, dt in (("F8_E4M3", E4M3), ("F8_E5M2", E5M2)):
        got = run_codec(codec, work, "decode", name, codes, out_dtype=np.float32)
        want = codes.view(dt).astype(np.float32)
        same = (got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want))
        assert same.all(), name


def test_bf16_and_f16_encoders(codec, work):
    rng = np.random.default_rng(SEED + 1)
    x = np.concatenate([rng.integers(0, 2**32, 1_000_000, dtype=np.uint64).astype(np.uint32).view(np.float32),
                        np.concatenate(all_16bit_codes())])
    got = run_codec(codec, work, "encode", "BF16", x, out_dtype=np.uint16)
    want = gq.quantize(x, GQ.BF16).view(np.uint16).reshape(-1)
    assert np.array_equal(got, want)  # ggml's rule exactly, NaN payloads included
    got = run_codec(codec, work, "encode", "F16", x, out_dtype=np.uint16).view(np.float16)
    with np.errstate(over="ignore"):
        want = x.astype(np.float16)
    same = (got.view(np.uint16) == want.view(np.uint16)) | (np.isnan(got) & np.isnan(want))
    assert same.all()


# ------------------------------------------------------------------------------------ ggml


def legacy_test_matrix(rng, rows=512, n=256):
    """Rows of many kinds: gaussian at scales 1e-7..1e4 (f16 underflow and overflow of d), uniform,
    heavy tails, quantized grids (exact ties for every rounding rule), constant and zero blocks."""
    out = []
    for r in range(rows):
        kind = r % 8
        scale = 10.0 ** rng.uniform(-7, 4)
        if kind == 0:
            row = rng.standard_normal(n) * scale
        elif kind == 1:
            row = rng.uniform(-1, 1, n) * scale
        elif kind == 2:
            row = rng.standard_t(2, n) * scale
        elif kind == 3:  # half-integer grid with amax 127: x·id lands exactly on .5 (Q8_0 ties)
            row = rng.integers(-254, 255, n) / 2.0
            row[::32] = 127.0
        elif kind == 4:  # small integer grid: Q4/Q5 codes exactly on their grid
            row = rng.integers(-16, 17, n).astype(np.float64) * scale
        elif kind == 5:  # ±amax ties within a block (first one fixes the sign of d)
            row = rng.standard_normal(n)
            row[3::32], row[9::32] = 5.0, -5.0
            row[40::64], row[50::64] = -5.0, 5.0
        elif kind == 6:  # constant and zero blocks
            row = np.repeat(rng.standard_normal(n // 32), 32) * scale
            row[:32] = 0.0
        else:  # one spike per block
            row = rng.standard_normal(n) * 1e-3
            row[rng.integers(0, 32)::32] = 7.0
        out.append(row)
    return np.asarray(out, dtype=np.float32)


def compare_blocks(got, want, bb, what):
    g, w = got.reshape(-1, bb), want.reshape(-1, bb)
    bad = np.flatnonzero((g != w).any(axis=1))
    assert bad.size == 0, f"{what}: {bad.size} of {g.shape[0]} blocks differ, first at block {bad[0]}:\n{g[bad[0]]}\n{w[bad[0]]}"
    return g.shape[0]


@pytest.mark.parametrize("name", LEGACY)
def test_legacy_quants_match_gguf_py(codec, work, name, request):
    rng = np.random.default_rng(SEED + 2)
    x = legacy_test_matrix(rng)
    got = run_codec(codec, work, "quantize", name, x, "--row", x.shape[1])
    with np.errstate(over="ignore"):  # d or m beyond the f16 range becomes inf, in both
        want = gq.quantize(x, getattr(GQ, name)).reshape(-1)
    blocks = compare_blocks(got, want, GGML[name][2], f"{name} vs gguf-py")
    # and back: qforge's decoder agrees with gguf-py's dequantize on these bytes
    back = run_codec(codec, work, "decode", name, got, out_dtype=np.float32)
    ref = gq.dequantize(got, getattr(GQ, name)).reshape(-1)
    assert np.array_equal(back.view(np.uint32), ref.view(np.uint32))
    print(f"{name}: {blocks} blocks identical to gguf-py")


@pytest.fixture(scope="session")
def smollm2_weights():
    """A few real weight matrices (SmolLM2-135M, Q4_1 in the file), dequantized by gguf-py."""
    p = cache_dir() / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not p.is_file():
        pytest.skip(f"{p} missing: run scripts/fetch-data.sh to include real weights")
    reader = GGUFReader(p)
    wanted = ["blk.0.attn_q.weight", "blk.0.ffn_down.weight", "blk.29.attn_v.weight"]
    out = {}
    for t in reader.tensors:
        if t.name in wanted:
            out[t.name] = gq.dequantize(t.data, t.tensor_type).astype(np.float32)
    assert sorted(out) == sorted(wanted)
    return out


@pytest.mark.parametrize("name", LEGACY)
def test_legacy_quants_on_real_weights(codec, work, smollm2_weights, name):
    for tname, w in smollm2_weights.items():
        got = run_codec(codec, work, "quantize", name, w, "--row", w.shape[-1])
        want = gq.quantize(w, getattr(GQ, name)).reshape(-1)
        compare_blocks(got, want, GGML[name][2], f"{name} of {tname} vs gguf-py")


def signed_zero_blocks():
    z = np.zeros(32, np.float32)
    blocks = []
    b = z.copy(); b[0] = -0.0; blocks.append(b)                          # all zero, first is -0
    blocks.append(-z)                                                    # all -0
    b = z.copy(); b[1] = -0.0; b[2:] = np.linspace(0.1, 1, 30); blocks.append(b)   # min is +0 then -0
    b = z.copy(); b[0] = -0.0; b[2:] = np.linspace(0.1, 1, 30); blocks.append(b)   # min is -0 then +0
    b = -np.linspace(0.1, 1, 32).astype(np.float32); b[5] = 0.0; b[6] = -0.0; blocks.append(b)  # max a zero
    return np.stack(blocks)


@pytest.mark.parametrize("name", LEGACY)
def test_signed_zeros_follow_c(codec, work, c_ref, name):
    """gguf-py and llama.cpp's C disagree on the sign of a zero d (Q4_0/Q5_0: C keeps its +0 `max`
    accumulator, numpy takes x[argmax], which can be -0) and of a zero m (Q4_1/Q5_1: C takes the first
    of ±0, np.min may return the other). Only those sign bits differ; qforge follows C."""
    x = signed_zero_blocks()
    got = run_codec(codec, work, "quantize", name, x, "--row", 32)
    compare_blocks(got, c_ref(name, x), GGML[name][2], f"{name} vs C")
    py = gq.quantize(x, getattr(GQ, name)).reshape(-1)
    diff = np.flatnonzero(got != py)
    # every difference is the sign bit (bit 7 of the high byte) of an f16 field: d at 0..2, m at 2..4
    assert all((i % GGML[name][2]) in (1, 3) and (got[i] ^ py[i]) == 0x80 for i in diff), diff
    print(f"{name}: gguf-py differs from C/qforge in {diff.size} f16 sign bits on signed-zero blocks")


def kquant_inputs(rng):
    """Random rows (varied scales, heavy tails, zero/constant super-blocks, spikes) plus real weights."""
    n = 1024
    x = legacy_test_matrix(rng, rows=192, n=n)
    x[5, :256] = 0.0
    x[6, 256:512] = 0.25
    x[7, :256] = 0.0
    x[7, 100] = 3.0
    # extreme magnitudes: f16 underflow/overflow of the scales, and (3e38) f32 overflow inside
    # the C's own sums (x², weights) — qforge reproduces even those inf/NaN paths
    for i, scale in enumerate([1e-30, 1e-9, 1e9, 1e20, 3e38]):
        x[8 + i] = np.clip(rng.standard_normal(n) * scale, -3.4e38, 3.4e38)
    imatrix = rng.uniform(0.0, 4.0, n).astype(np.float32)
    imatrix[::17] = 0.0
    return x, imatrix


@pytest.mark.parametrize("name", ALL_GGML)
def test_all_ggml_quants_match_llama_cpp_c(codec, work, c_ref, name):
    rng = np.random.default_rng(SEED + 3)
    x, imatrix = kquant_inputs(rng)
    im_path = work / "imatrix.f32"
    imatrix.tofile(im_path)
    bb = GGML[name][2]
    blocks = 0
    got = run_codec(codec, work, "quantize", name, x, "--row", x.shape[1])
    blocks += compare_blocks(got, c_ref(name, x), bb, f"{name} ref vs C")
    got = run_codec(codec, work, "quantize", name, x, "--row", x.shape[1], "--imatrix", im_path)
    blocks += compare_blocks(got, c_ref(name, x, imatrix), bb, f"{name} imatrix vs C")
    back = run_codec(codec, work, "decode", name, got, out_dtype=np.float32)
    with np.errstate(all="ignore"):  # the inf scales of the 3e38 rows give inf·0 = NaN, in both
        ref = gq.dequantize(got, getattr(GQ, name)).reshape(-1)
    assert np.array_equal(back.view(np.uint32), ref.view(np.uint32))  # NaN bits included
    print(f"{name}: {blocks} blocks identical to llama.cpp's C reference")


@pytest.mark.parametrize("name", ALL_GGML)
def test_all_ggml_quants_on_real_weights_match_c(codec, work, c_ref, smollm2_weights, name):
    rng = np.random.default_rng(SEED + 4)
    bb = GGML[name][2]
    for tname, w in smollm2_weights.items():
        x = w.reshape(-1, 512)  # every tensor here has a multiple of 512 elements
        imatrix = rng.uniform(0.0, 2.0, 512).astype(np.float32)
        im_path = work / "imatrix-real.f32"
        imatrix.tofile(im_path)
        got = run_codec(codec, work, "quantize", name, x, "--row", 512)
        compare_blocks(got, c_ref(name, x), bb, f"{name} of {tname} vs C")
        got = run_codec(codec, work, "quantize", name, x, "--row", 512, "--imatrix", im_path)
        compare_blocks(got, c_ref(name, x, imatrix), bb, f"{name} (imatrix) of {tname} vs C")


def test_codec_rejects_bad_input(codec, work):
    x = np.array([1.0, np.nan] * 16, dtype=np.float32)
    src = work / "nan.f32"
    x.tofile(src)
    r = subprocess.run([str(codec), "quantize", "Q8_0", str(src), str(work / "o"), "--row", "32"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "non-finite value at row 0, column 1" in r.stderr
    r = subprocess.run([str(codec), "quantize", "Q8_0", str(src), str(work / "o")], capture_output=True, text=True)
    assert r.returncode == 2 and "--row" in r.stderr
    r = subprocess.run([str(codec), "frobnicate"], capture_output=True, text=True)
    assert r.returncode == 2 and "usage" in r.stderr
