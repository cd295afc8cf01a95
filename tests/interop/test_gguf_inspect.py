"""qforge's GGUF reader against gguf-py's GGUFReader on real files made by llama.cpp and gguf-py.

Every metadata key, type and value; every tensor's name, type, shape and data offset; and every
tensor's dequantization, bit for bit.
"""

import pathlib
import subprocess

import numpy as np
import pytest
from gguf import GGUFReader, GGUFValueType, dequantize

from conftest import ROOT, run_json

TYPE_NAMES = {
    GGUFValueType.UINT8: "u8",
    GGUFValueType.INT8: "i8",
    GGUFValueType.UINT16: "u16",
    GGUFValueType.INT16: "i16",
    GGUFValueType.UINT32: "u32",
    GGUFValueType.INT32: "i32",
    GGUFValueType.FLOAT32: "f32",
    GGUFValueType.BOOL: "bool",
    GGUFValueType.STRING: "string",
    GGUFValueType.ARRAY: "array",
    GGUFValueType.UINT64: "u64",
    GGUFValueType.INT64: "i64",
    GGUFValueType.FLOAT64: "f64",
}

GGUF_FILES = {
    "smollm2": None,  # resolved from the cache by the smollm2_gguf fixture
    "tiny": ROOT / "tests/fixtures/tiny/gguf/tiny.gguf",
}


@pytest.fixture(params=list(GGUF_FILES))
def gguf_path(request, smollm2_gguf) -> pathlib.Path:
    return GGUF_FILES[request.param] or smollm2_gguf


def test_metadata_matches_gguf_py(qforge, gguf_path):
    ours = run_json(qforge, "inspect", "--json", str(gguf_path))["metadata"]
    reader = GGUFReader(gguf_path)
    theirs = [f for f in reader.fields.values() if not f.name.startswith("GGUF.")]
    assert [kv["key"] for kv in ours["kv"]] == [f.name for f in theirs]
    for kv, field in zip(ours["kv"], theirs):
        assert kv["type"] == TYPE_NAMES[field.types[0]], field.name
        if field.types[0] == GGUFValueType.ARRAY:
            assert kv["elem_type"] == TYPE_NAMES[field.types[-1]], field.name
        value = field.contents()
        if isinstance(value, float) or (isinstance(value, list) and value and isinstance(value[0], float)):
            # f32 values: JSON carries the exact f32 value widened to f64
            assert np.array_equal(np.asarray(kv["value"], dtype=np.float64), np.asarray(value, dtype=np.float64)), field.name
        else:
            assert kv["value"] == value, field.name
    assert ours["version"] == int(reader.fields["GGUF.version"].contents())
    assert ours["alignment"] == reader.alignment
    assert ours["data_offset"] == reader.data_offset


def test_tensor_infos_match_gguf_py(qforge, gguf_path):
    ours = run_json(qforge, "inspect", "--json", str(gguf_path))["tensors"]
    reader = GGUFReader(gguf_path)
    assert [t["name"] for t in ours] == [t.name for t in reader.tensors]
    for t, r in zip(ours, reader.tensors):
        assert t["dtype"] == r.tensor_type.name, r.name
        assert t["shape"] == [int(x) for x in reversed(r.shape)], r.name
        assert t["offset"] == r.data_offset, r.name
        assert t["bytes"] == r.n_bytes, r.name
        assert t["elements"] == r.n_elements, r.name


def test_dequantization_is_bit_identical_to_gguf_py(qforge, gguf_path, tmp_path):
    subprocess.run([str(qforge), "inspect", str(gguf_path), "--dump", str(tmp_path)], check=True, capture_output=True)
    reader = GGUFReader(gguf_path)
    checked = 0
    for r in reader.tensors:
        theirs = np.ascontiguousarray(dequantize(r.data, r.tensor_type), dtype=np.float32).reshape(-1)
        ours = np.fromfile(tmp_path / f"{r.name}.f32", dtype="<f4")
        assert ours.shape == theirs.shape, r.name
        mismatch = np.flatnonzero(ours.view(np.uint32) != theirs.view(np.uint32))
        assert mismatch.size == 0, f"{r.name} ({r.tensor_type.name}): {mismatch.size} values differ, first at {mismatch[0]}"
        checked += 1
    assert checked == len(reader.tensors) > 0
