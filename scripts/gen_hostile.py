#!/usr/bin/env python3
"""Write the hostile corpus under tests/hostile/ (stdlib only; no torch, nothing executed).

Each file is a small attack on one of qforge's readers: code-execution pickles inside
valid-looking .pth archives, ZIP and decompression bombs, allocation bombs (GGUF counts and
lengths, safetensors header lengths and shapes), out-of-file and overlapping offsets,
polyglots, and an index that points outside the model directory. The expected error of
each is in tests/hostile/manifest.json (kept by hand: the test fails on a new file that has
no entry). Symbolic links are made by the test itself, since git cannot be trusted with them.

    python3 scripts/gen_hostile.py            # rewrite tests/hostile/*
"""

import io
import json
import os
import struct
import zipfile
import zlib

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "hostile")
# What a payload would create, relative to the working directory of whoever runs it; the
# test checks it never appears.
CANARY = "qforge-hostile-canary"
SHELL = f"touch {CANARY}".encode()
PY = f"open({CANARY!r}, 'w')".encode()

files = {}


def put(name, data):
    assert name not in files, name
    files[name] = data


# ---- pickles -----------------------------------------------------------------------------

def u8(n):
    return struct.pack("<B", n)


def u32(n):
    return struct.pack("<I", n)


def u64(n):
    return struct.pack("<Q", n)


def binunicode(s):
    b = s.encode() if isinstance(s, str) else s
    return b"X" + u32(len(b)) + b


def short_binunicode(s):
    b = s.encode()
    return b"\x8c" + u8(len(b)) + b


def glob(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def stack_glob(module, name):
    return short_binunicode(module) + short_binunicode(name) + b"\x93"


P2 = b"\x80\x02"
P4 = b"\x80\x04"


def tensor_pickle(inner=b""):
    """A one-tensor state dict as torch.save writes it, with `inner` spliced in as a second
    value under key "x" (an attack hidden in an otherwise valid file)."""
    rebuild = glob("torch._utils", "_rebuild_tensor_v2")
    storage = (
        b"(" + binunicode("storage") + glob("torch", "FloatStorage") + binunicode("0")
        + binunicode("cpu") + b"K\x04tQ"
    )
    args = (
        b"(" + storage + b"K\x00" + b"K\x04\x85" + b"K\x01\x85" + b"\x89"
        + glob("collections", "OrderedDict") + b")R" + b"tR"
    )
    body = P2 + b"}(" + binunicode("tok_embeddings.weight") + rebuild + args
    if inner:
        body += binunicode("x") + inner
    return body + b"u."


def pth(pickle_bytes, extra=(), prefix="consolidated", compress=None, storage=b"\0" * 16):
    bio = io.BytesIO()
    with zipfile.ZipFile(bio, "w", zipfile.ZIP_STORED) as z:
        def add(name, data, method=zipfile.ZIP_STORED):
            info = zipfile.ZipInfo(f"{prefix}/{name}", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = method
            z.writestr(info, data)

        add("data.pkl", pickle_bytes, compress or zipfile.ZIP_STORED)
        add("byteorder", b"little")
        add("data/0", storage)
        add("version", b"3\n")
        for name, data in extra:
            add(name, data)
    return bio.getvalue()


def pkl_case(name, pickle_bytes, **kw):
    put(f"{name}.pth", pth(pickle_bytes, **kw))


# module-level code execution through every opcode that can call something
pkl_case("pickle_global_os_system", P2 + glob("os", "system") + binunicode(SHELL) + b"\x85R.")
pkl_case("pickle_global_posix_system", P2 + glob("posix", "system") + binunicode(SHELL) + b"\x85R.")
pkl_case("pickle_stack_global_subprocess", P4 + stack_glob("subprocess", "check_call")
         + binunicode("touch") + binunicode(CANARY) + b"\x86\x85R.")
pkl_case("pickle_builtins_eval", P2 + glob("builtins", "eval") + binunicode(PY) + b"\x85R.")
pkl_case("pickle_builtins_exec", P4 + stack_glob("builtins", "exec") + binunicode(PY) + b"\x85R.")
pkl_case("pickle_py2_builtin_eval", P2 + glob("__builtin__", "eval") + binunicode(PY) + b"\x85R.")
pkl_case("pickle_getattr_import", P2 + glob("builtins", "getattr")
         + glob("builtins", "__import__") + binunicode("os") + b"\x85R" + binunicode("system")
         + b"\x86R" + binunicode(SHELL) + b"\x85R.")
pkl_case("pickle_inst_os_system", P2 + b"(" + binunicode(SHELL) + b"ios\nsystem\n.")
pkl_case("pickle_obj_os_system", P2 + b"(" + glob("os", "system") + binunicode(SHELL) + b"o.")
pkl_case("pickle_newobj_subprocess", P2 + glob("subprocess", "Popen")
         + binunicode(SHELL) + b"\x85\x81.")
# allowlisted globals used the wrong way: calling a storage class, BUILD on a dict, NEWOBJ
pkl_case("pickle_reduce_storage_class", P2 + glob("torch", "FloatStorage") + b")R.")
pkl_case("pickle_build_setstate", P2 + glob("collections", "OrderedDict") + b")R"
         + b"}" + binunicode("__setstate__") + glob("os", "system") + b"sb.")
pkl_case("pickle_newobj_rebuild", P2 + glob("torch._utils", "_rebuild_tensor_v2") + b")\x81.")
# persistent ids: a non-tuple, a callable in the tuple, a storage key that walks out
pkl_case("pickle_persid_not_tuple", P2 + binunicode("storage") + b"Q.")
pkl_case("pickle_persid_global", P2 + b"(" + binunicode("storage") + glob("os", "system")
         + binunicode("0") + binunicode("cpu") + b"K\x01tQ.")
pkl_case("pickle_persid_key_traversal", P2 + b"(" + binunicode("storage")
         + glob("torch", "FloatStorage") + binunicode("../../../etc/passwd")
         + binunicode("cpu") + b"K\x04tQ.")
pkl_case("pickle_persid_text", P2 + b"P" + b"storage\n.")
# the attack hidden in an otherwise valid state dict
pkl_case("pickle_valid_dict_with_payload", tensor_pickle(
    glob("os", "system") + binunicode(SHELL) + b"\x85R"))
pkl_case("pickle_numpy_reconstruct", P2 + glob("numpy.core.multiarray", "_reconstruct")
         + b")R.")
pkl_case("pickle_ext1_copyreg", P2 + b"\x82\x01" + b")R.")
pkl_case("pickle_memo_bomb", P2 + b"]" + b"q\x00" + b"h\x00a" * 1 + b"r" + u32(0xFFFFFFFF) + b".")
pkl_case("pickle_huge_binunicode", P2 + b"X" + u32(0xFFFFFFF0) + b"abc.")
pkl_case("pickle_huge_binbytes8", P4 + b"\x8e" + u64(1 << 62) + b"abc.")
pkl_case("pickle_frame_bomb", P4 + b"\x95" + u64(1 << 60) + b"N.")

# ---- ZIP layer ---------------------------------------------------------------------------

good = tensor_pickle()
put("zip_deflated_pickle.pth", pth(good, compress=zipfile.ZIP_DEFLATED))
# a decompression bomb: 64 MiB of zeros deflated into a storage record
bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
zeros = bomb.compress(b"\0" * (64 << 20)) + bomb.flush()


def raw_zip(entries, eocd_patch=None):
    """A ZIP written by hand: entries are (name, data, method, claimed_size, crc)."""
    out = bytearray()
    central = bytearray()
    for name, data, method, claimed, crc in entries:
        nb = name.encode()
        off = len(out)
        out += b"PK\x03\x04" + struct.pack("<HHHHHIIIHH", 20, 0, method, 0, 33, crc,
                                           len(data), claimed, len(nb), 0) + nb + data
        central += b"PK\x01\x02" + struct.pack("<HHHHHHIIIHHHHHII", 20, 20, 0, method, 0, 33,
                                               crc, len(data), claimed, len(nb), 0, 0, 0, 0,
                                               0, off) + nb
    cd_off = len(out)
    out += central
    n = len(entries)
    eocd = [n, n, len(central), cd_off]
    if eocd_patch:
        eocd = eocd_patch(eocd)
    out += b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, eocd[0], eocd[1], eocd[2], eocd[3], 0)
    return bytes(out)


base = [
    ("consolidated/data.pkl", good, 0, len(good), zlib.crc32(good)),
    ("consolidated/byteorder", b"little", 0, 6, zlib.crc32(b"little")),
]
put("zip_bomb_deflated_storage.pth", raw_zip(base + [
    ("consolidated/data/0", zeros, 8, 64 << 20, zlib.crc32(b"\0" * (64 << 20)))]))
put("zip_claims_huge_size.pth", raw_zip(base + [
    ("consolidated/data/0", b"\0" * 16, 0, 0xFFFFFFFF, 0)]))
put("zip_entry_count_bomb.pth", raw_zip(base, lambda e: [0xFFFF, 0xFFFF, e[2], e[3]]))
put("zip_central_dir_outside.pth", raw_zip(base, lambda e: [e[0], e[1], e[2], 0x7FFFFFF0]))
put("zip_slip_name.pth", raw_zip(base + [
    ("../../evil/data/0", b"\0" * 16, 0, 16, zlib.crc32(b"\0" * 16))]))
put("zip_duplicate_names.pth", raw_zip(base + [base[0]]))
put("zip_truncated.pth", pth(good)[:-30])
put("zip_empty.pth", raw_zip([]))

# ---- GGUF --------------------------------------------------------------------------------

def gstr(s):
    b = s.encode() if isinstance(s, str) else s
    return u64(len(b)) + b


def gguf(n_tensors, n_kv, body=b"", version=3):
    return b"GGUF" + u32(version) + u64(n_tensors) + u64(n_kv) + body


def kv_u32(key, v):
    return gstr(key) + u32(4) + u32(v)


def kv_str(key, v):
    return gstr(key) + u32(8) + gstr(v)


arch = kv_str("general.architecture", "llama")
put("gguf_tensor_count_2e63.gguf", gguf(1 << 63, 0))
put("gguf_kv_count_2e63.gguf", gguf(0, 1 << 63))
# one key/value whose key declares 2^63 bytes; padded so that kv_count = 1 fits the file and the
# reader reaches the key's length (unpadded, the kv_count check rejected it first)
put("gguf_key_length_2e63.gguf", gguf(0, 1, u64(1 << 63) + b"abc" + b"\0" * 32))
put("gguf_string_value_length_huge.gguf", gguf(0, 1, gstr("k") + u32(8) + u64((1 << 64) - 1) + b"x"))
put("gguf_array_count_huge.gguf", gguf(0, 1, gstr("k") + u32(9) + u32(10) + u64(1 << 61) + b"\0" * 8))
put("gguf_string_array_bomb.gguf", gguf(0, 1, gstr("tokenizer.ggml.tokens") + u32(9) + u32(8)
                                        + u64(1 << 40) + gstr("a")))
put("gguf_nested_arrays.gguf", gguf(0, 1, gstr("k") + (u32(9) + u32(9) + u64(1)) * 200 + u32(4) + u32(0)))
put("gguf_unknown_value_type.gguf", gguf(0, 1, gstr("k") + u32(0xDEAD) + u32(0)))
put("gguf_version_1.gguf", gguf(0, 0, version=1))


def tinfo(name, dims, ty, off):
    return gstr(name) + u32(len(dims)) + b"".join(u64(d) for d in dims) + u32(ty) + u64(off)


def gguf_tensors(infos, kvs=(arch,), data=b"\0" * 64):
    body = b"".join(kvs) + b"".join(infos)
    head = gguf(len(infos), len(kvs), body)
    pad = (-len(head)) % 32
    return head + b"\0" * pad + data


put("gguf_n_dims_1000.gguf", gguf(1, 0, gstr("t") + u32(1000) + u64(1) * 1000 + u32(0) + u64(0)))
put("gguf_shape_overflow.gguf", gguf_tensors([tinfo("token_embd.weight", [1 << 32, 1 << 32, 1 << 32], 0, 0)]))
put("gguf_offset_past_eof.gguf", gguf_tensors([tinfo("token_embd.weight", [4], 0, 1 << 40)]))
put("gguf_overlapping_tensors.gguf", gguf_tensors([tinfo("a.weight", [8], 0, 0),
                                                   tinfo("b.weight", [8], 0, 0)]))
put("gguf_alignment_zero.gguf", gguf_tensors([tinfo("token_embd.weight", [4], 0, 0)],
                                             kvs=(arch, kv_u32("general.alignment", 0))))
put("gguf_alignment_not_pow2.gguf", gguf_tensors([tinfo("token_embd.weight", [4], 0, 0)],
                                                 kvs=(arch, kv_u32("general.alignment", 48))))
put("gguf_unknown_tensor_type.gguf", gguf_tensors([tinfo("token_embd.weight", [4], 9999, 0)]))
put("gguf_duplicate_tensor.gguf", gguf_tensors([tinfo("t.weight", [4], 0, 0),
                                                tinfo("t.weight", [4], 0, 32)]))

# ---- safetensors -------------------------------------------------------------------------

def st(header, data=b"", length=None):
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    return u64(len(h) if length is None else length) + h + data


put("st_header_len_2e63.safetensors", st(b"{}", length=1 << 63))
put("st_header_len_over_limit.safetensors", st(b"{}", length=100_000_001))
put("st_header_past_eof.safetensors", st(b"{}", length=4096))
put("st_overlapping_offsets.safetensors", st({
    "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
    "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}, b"\0" * 24))
put("st_offsets_past_eof.safetensors", st({
    "a": {"dtype": "F32", "shape": [1 << 40], "data_offsets": [0, 1 << 42]}}, b"\0" * 16))
put("st_huge_shape_overflow.safetensors", st({
    "a": {"dtype": "F32", "shape": [1 << 32, 1 << 32, 1 << 32], "data_offsets": [0, 16]}}, b"\0" * 16))
put("st_shape_mismatch.safetensors", st({
    "a": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 16]}}, b"\0" * 16))
put("st_json_garbage.safetensors", st(b'{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]' + b"\xff\xfe}}"))
put("st_duplicate_key.safetensors", st(
    b'{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"a":{"dtype":"F32","shape":[4],"data_offsets":[16,32]}}',
    b"\0" * 32))
put("st_deep_nesting.safetensors", st(b'{"__metadata__":' + b"[" * 100000 + b"]" * 100000 + b"}"))
put("st_unknown_dtype.safetensors", st({"a": {"dtype": "Q9_9", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 16))
# polyglots: a GGUF that is also a ZIP, a safetensors file with a ZIP appended, a header that
# is a JSON array
polyglot_zip = pth(good)
put("polyglot_gguf_zip.gguf", gguf(0, 0) + polyglot_zip)
put("polyglot_gguf_zip.pth", gguf(0, 0) + polyglot_zip)
valid_st = st({"model.norm.weight": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 16)
put("polyglot_safetensors_zip.safetensors", valid_st + polyglot_zip)
put("st_header_is_json_array.safetensors", st(b'[{"dtype":"F32"}]'))

# ---- model directory side files ----------------------------------------------------------

put("index_parent_dir.json", json.dumps({"metadata": {}, "weight_map": {
    "model.embed_tokens.weight": "../model-00001-of-00002.safetensors"}}).encode())
put("index_absolute_path.json", json.dumps({"metadata": {}, "weight_map": {
    "model.embed_tokens.weight": "/etc/passwd"}}).encode())
put("index_subdir.json", json.dumps({"metadata": {}, "weight_map": {
    "model.embed_tokens.weight": "sub/model.safetensors"}}).encode())
put("index_empty_map.json", json.dumps({"metadata": {}, "weight_map": {}}).encode())
put("config_heads_zero.json", json.dumps({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32, "intermediate_size": 96,
    "num_attention_heads": 0, "num_hidden_layers": 2, "num_key_value_heads": 0,
    "vocab_size": 128, "rms_norm_eps": 1e-5}).encode())
put("config_hidden_2e64.json", json.dumps({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 18446744073709551615,
    "intermediate_size": 96, "num_attention_heads": 4, "num_hidden_layers": 2,
    "num_key_value_heads": 2, "vocab_size": 128, "rms_norm_eps": 1e-5}).encode())
put("params_heads_zero.json", json.dumps({"dim": 32, "n_layers": 2, "n_heads": 0,
                                          "vocab_size": 128, "norm_eps": 1e-5}).encode())
put("params_layers_huge.json", json.dumps({"dim": 32, "n_layers": 1 << 40, "n_heads": 4,
                                           "n_kv_heads": 2, "vocab_size": 128,
                                           "multiple_of": 32, "norm_eps": 1e-5}).encode())
put("tiktoken_rank_u32_max.model", b"AA== 0\nAQ== 4294967295\n")
put("tiktoken_not_base64.model", b"!!!! 0\n")
put("tokenizer_json_id_huge.json", json.dumps({"model": {"type": "BPE", "vocab": {"a": 2147483647},
                                                         "merges": []}}).encode())


def main():
    os.makedirs(OUT, exist_ok=True)
    for name in os.listdir(OUT):
        if name != "manifest.json":
            os.remove(os.path.join(OUT, name))
    for name, data in sorted(files.items()):
        assert len(data) < 1 << 20, name
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
    print(f"{len(files)} files in tests/hostile/")


if __name__ == "__main__":
    main()
