#!/usr/bin/env python3
"""Write the hostile corpus under tests/hostile/ (stdlib only; no torch, nothing executed).

Each file is a small attack on one of qforge's readers: code-execution pickles inside
valid-looking .pth archives, ZIP and decompression bombs, allocation bombs (GGUF counts and
lengths, safetensors header lengths and shapes), out-of-file and overlapping offsets,
polyglots, and an index that points outside the model directory. This script also writes
tests/hostile/manifest.json: for each file, the error class its defect belongs to and the facts
the error must name, all computed here from what was planted (the offset of the planted field,
the number it declares, the forbidden global, the tensor or shard name), never copied from
qforge's output. Symbolic links are made by the test itself, since git cannot be trusted with
them; their entries are written here too.

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
# name -> {"error": class, "names": [facts the message must contain]}
expect = {}


def put(name, data, error, *facts):
    """Add a hostile file with the error class it must raise and the facts (planted numbers,
    offsets and names, as strings) the error message must contain."""
    assert name not in files, name
    files[name] = data
    expect[name] = {"error": error, "names": [str(f) for f in facts]}


def at(blob, needle, nth=0):
    """Offset of the `nth` occurrence of `needle` in `blob` (where an opcode was planted)."""
    i = -1
    for _ in range(nth + 1):
        i = blob.index(needle, i + 1)
    return i


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


def tensor_pickle(inner=b"", storage_key="0"):
    """A one-tensor state dict as torch.save writes it, with `inner` spliced in as a second
    value under key "x" (an attack hidden in an otherwise valid file), its storage record
    named `storage_key`."""
    rebuild = glob("torch._utils", "_rebuild_tensor_v2")
    storage = (
        b"(" + binunicode("storage") + glob("torch", "FloatStorage") + binunicode(storage_key)
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


def pkl_case(name, pickle_bytes, error, *facts, **kw):
    put(f"{name}.pth", pth(pickle_bytes, **kw), error, *facts)


def forbidden(name, pickle_bytes, opcode, module, attr):
    """A pickle whose first callable is `module.attr`, planted by the opcode bytes `opcode`:
    the reader must stop at that opcode's offset and name the global."""
    pkl_case(name, pickle_bytes, "Pth/ForbiddenGlobal",
             f"offset {at(pickle_bytes, opcode)}", f"{module}.{attr}")


# module-level code execution through every opcode that can call something: the reader stops at
# the opcode that names the global (GLOBAL `c`, STACK_GLOBAL `\x93`, INST `i`)
def call1(arg):
    return binunicode(arg) + b"\x85R."


forbidden("pickle_global_os_system", P2 + glob("os", "system") + call1(SHELL),
          glob("os", "system"), "os", "system")
forbidden("pickle_global_posix_system", P2 + glob("posix", "system") + call1(SHELL),
          glob("posix", "system"), "posix", "system")
forbidden("pickle_stack_global_subprocess", P4 + stack_glob("subprocess", "check_call")
          + binunicode("touch") + binunicode(CANARY) + b"\x86\x85R.", b"\x93", "subprocess", "check_call")
forbidden("pickle_builtins_eval", P2 + glob("builtins", "eval") + call1(PY),
          glob("builtins", "eval"), "builtins", "eval")
forbidden("pickle_builtins_exec", P4 + stack_glob("builtins", "exec") + call1(PY),
          b"\x93", "builtins", "exec")
forbidden("pickle_py2_builtin_eval", P2 + glob("__builtin__", "eval") + call1(PY),
          glob("__builtin__", "eval"), "__builtin__", "eval")
forbidden("pickle_getattr_import", P2 + glob("builtins", "getattr")
          + glob("builtins", "__import__") + binunicode("os") + b"\x85R" + binunicode("system")
          + b"\x86R" + call1(SHELL), glob("builtins", "getattr"), "builtins", "getattr")
forbidden("pickle_inst_os_system", P2 + b"(" + binunicode(SHELL) + b"ios\nsystem\n.",
          b"ios\nsystem\n", "os", "system")
forbidden("pickle_obj_os_system", P2 + b"(" + glob("os", "system") + binunicode(SHELL) + b"o.",
          glob("os", "system"), "os", "system")
forbidden("pickle_newobj_subprocess", P2 + glob("subprocess", "Popen") + binunicode(SHELL) + b"\x85\x81.",
          glob("subprocess", "Popen"), "subprocess", "Popen")
# allowlisted globals used the wrong way: calling a storage class (REDUCE `R`), BUILD on a dict,
# NEWOBJ (`\x81`) of the rebuild function
b = P2 + glob("torch", "FloatStorage") + b")R."
pkl_case("pickle_reduce_storage_class", b, "Pth/ForbiddenCall", f"offset {at(b, b')R') + 1}",
         "torch.FloatStorage")
forbidden("pickle_build_setstate", P2 + glob("collections", "OrderedDict") + b")R"
          + b"}" + binunicode("__setstate__") + glob("os", "system") + b"sb.",
          glob("os", "system"), "os", "system")
b = P2 + glob("torch._utils", "_rebuild_tensor_v2") + b")\x81."
pkl_case("pickle_newobj_rebuild", b, "Pth/ForbiddenCall", "offset %d" % at(b, b"\x81"), "NEWOBJ",
         "torch._utils._rebuild_tensor_v2")
# persistent ids: a non-tuple (BINPERSID `Q`), a callable in the tuple, a storage key that walks
# out of the archive folder, the text form (PERSID `P`)
b = P2 + binunicode("storage") + b"Q."
pkl_case("pickle_persid_not_tuple", b, "Pth/BadValue", f"offset {at(b, b'Q')}", "persistent id")
forbidden("pickle_persid_global", P2 + b"(" + binunicode("storage") + glob("os", "system")
          + binunicode("0") + binunicode("cpu") + b"K\x01tQ.", glob("os", "system"), "os", "system")
TRAVERSAL = "../../../etc/passwd"
pkl_case("pickle_persid_key_traversal", tensor_pickle(storage_key=TRAVERSAL),
         "Pth/MissingEntry", TRAVERSAL)
b = P2 + b"P" + b"storage\n."
pkl_case("pickle_persid_text", b, "Pth/UnsupportedOpcode", f"offset {at(b, b'P')}", f"0x{ord('P'):02x}")
# the attack hidden in an otherwise valid state dict
b = tensor_pickle(glob("os", "system") + call1(SHELL)[:-1])
forbidden("pickle_valid_dict_with_payload", b, glob("os", "system"), "os", "system")
forbidden("pickle_numpy_reconstruct", P2 + glob("numpy.core.multiarray", "_reconstruct") + b")R.",
          glob("numpy.core.multiarray", "_reconstruct"), "numpy.core.multiarray", "_reconstruct")
b = P2 + b"\x82\x01" + b")R."
pkl_case("pickle_ext1_copyreg", b, "Pth/UnsupportedOpcode", "offset %d" % at(b, b"\x82"), "0x82")
# a list memoised, fetched back (BINGET `h`) and appended to (APPEND `a`): the reader refuses to
# mutate a shared container, then a LONG_BINGET of memo 2^32 - 1 would follow
b = P2 + b"]" + b"q\x00" + b"h\x00a" + b"r" + u32(0xFFFFFFFF) + b"."
pkl_case("pickle_memo_bomb", b, "Pth/BadValue", f"offset {at(b, b'a')}", "APPEND")
# lengths past the end of data.pkl: the opcode at offset 2 declares them
for name, b in [("pickle_huge_binunicode", P2 + b"X" + u32(0xFFFFFFF0) + b"abc."),
                ("pickle_huge_binbytes8", P4 + b"\x8e" + u64(1 << 62) + b"abc."),
                ("pickle_frame_bomb", P4 + b"\x95" + u64(1 << 60) + b"N.")]:
    pkl_case(name, b, "Pth/Truncated", f"offset {len(P2)}", "truncated")

# ---- ZIP layer ---------------------------------------------------------------------------

good = tensor_pickle()
DEFLATED = f"method {zipfile.ZIP_DEFLATED}"
put("zip_deflated_pickle.pth", pth(good, compress=zipfile.ZIP_DEFLATED), "Pth/NotStored",
    "consolidated/data.pkl", DEFLATED)
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
    ("consolidated/data/0", zeros, 8, 64 << 20, zlib.crc32(b"\0" * (64 << 20)))]),
    "Pth/NotStored", "consolidated/data/0", DEFLATED)
# a stored entry of 16 bytes whose sizes disagree (compressed 16, uncompressed 2^32 - 1)
put("zip_claims_huge_size.pth", raw_zip(base + [
    ("consolidated/data/0", b"\0" * 16, 0, 0xFFFFFFFF, 0)]), "Pth/Zip", "consolidated/data/0", 16)
put("zip_entry_count_bomb.pth", raw_zip(base, lambda e: [0xFFFF, 0xFFFF, e[2], e[3]]), "Pth/Zip",
    "invalid ZIP")
put("zip_central_dir_outside.pth", raw_zip(base, lambda e: [e[0], e[1], e[2], 0x7FFFFFF0]), "Pth/Zip",
    "invalid ZIP")
put("zip_slip_name.pth", raw_zip(base + [
    ("../../evil/data/0", b"\0" * 16, 0, 16, zlib.crc32(b"\0" * 16))]), "Pth/OutsideFolder",
    "../../evil/data/0", "consolidated/")
put("zip_duplicate_names.pth", raw_zip(base + [base[0]]), "Pth/Zip", "twice")
put("zip_truncated.pth", pth(good)[:-30], "Pth/Zip", "invalid ZIP")
put("zip_empty.pth", raw_zip([]), "Pth/Zip", "no entries")

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
# header: magic, version (u32), tensor_count (u64) at 8, kv_count (u64) at 16; key/values at 24
HEAD = len(gguf(0, 0))
put("gguf_tensor_count_2e63.gguf", gguf(1 << 63, 0), "Gguf/CountTooLarge", "tensor_count", 1 << 63,
    "offset 8")
put("gguf_kv_count_2e63.gguf", gguf(0, 1 << 63), "Gguf/CountTooLarge", "kv_count", 1 << 63, "offset 16")
# one key/value whose key declares 2^63 bytes; padded so that kv_count = 1 fits the file and the
# reader reaches the key's length (unpadded, the kv_count check rejected it first)
put("gguf_key_length_2e63.gguf", gguf(0, 1, u64(1 << 63) + b"abc" + b"\0" * 32), "Gguf/StringTooLong",
    f"offset {HEAD}", 1 << 63)
K = gstr("k")  # a one-byte key; its value type u32 follows at HEAD + len(K)
put("gguf_string_value_length_huge.gguf", gguf(0, 1, K + u32(8) + u64((1 << 64) - 1) + b"x"),
    "Gguf/StringTooLong", f"offset {HEAD + len(K) + 4}", (1 << 64) - 1)
put("gguf_array_count_huge.gguf", gguf(0, 1, K + u32(9) + u32(10) + u64(1 << 61) + b"\0" * 8),
    "Gguf/CountTooLarge", f"offset {HEAD + len(K) + 8}", 1 << 61)
TOKENS = gstr("tokenizer.ggml.tokens")
put("gguf_string_array_bomb.gguf", gguf(0, 1, TOKENS + u32(9) + u32(8) + u64(1 << 40) + gstr("a")),
    "Gguf/CountTooLarge", f"offset {HEAD + len(TOKENS) + 8}", 1 << 40)
# an array whose element type is array (the element type u32 after the value type)
put("gguf_nested_arrays.gguf", gguf(0, 1, K + (u32(9) + u32(9) + u64(1)) * 200 + u32(4) + u32(0)),
    "Gguf/NestedArray", f"offset {HEAD + len(K) + 4}")
put("gguf_unknown_value_type.gguf", gguf(0, 1, K + u32(0xDEAD) + u32(0)), "Gguf/BadValueType",
    f"offset {HEAD + len(K)}", 0xDEAD)
put("gguf_version_1.gguf", gguf(0, 0, version=1), "Gguf/UnsupportedVersion", "version 1")


def tinfo(name, dims, ty, off):
    return gstr(name) + u32(len(dims)) + b"".join(u64(d) for d in dims) + u32(ty) + u64(off)


def gguf_tensors(infos, kvs=(arch,), data=b"\0" * 64):
    body = b"".join(kvs) + b"".join(infos)
    head = gguf(len(infos), len(kvs), body)
    pad = (-len(head)) % 32
    return head + b"\0" * pad + data


put("gguf_n_dims_1000.gguf", gguf(1, 0, gstr("t") + u32(1000) + u64(1) * 1000 + u32(0) + u64(0)),
    "Gguf/TooManyDims", '"t"', 1000)
put("gguf_shape_overflow.gguf", gguf_tensors([tinfo("token_embd.weight", [1 << 32, 1 << 32, 1 << 32], 0, 0)]),
    "Gguf/DimOverflow", '"token_embd.weight"')
put("gguf_offset_past_eof.gguf", gguf_tensors([tinfo("token_embd.weight", [4], 0, 1 << 40)]),
    "Gguf/OffsetMismatch", '"token_embd.weight"', 1 << 40)
# b.weight placed on a.weight (8 F32 = 32 bytes, so b belongs at 32)
put("gguf_overlapping_tensors.gguf", gguf_tensors([tinfo("a.weight", [8], 0, 0),
                                                   tinfo("b.weight", [8], 0, 0)]),
    "Gguf/OffsetMismatch", '"b.weight"', 8 * 4)
for name, align in [("gguf_alignment_zero.gguf", 0), ("gguf_alignment_not_pow2.gguf", 48)]:
    put(name, gguf_tensors([tinfo("token_embd.weight", [4], 0, 0)],
                           kvs=(arch, kv_u32("general.alignment", align))),
        "Gguf/BadAlignment", "general.alignment", align)
put("gguf_unknown_tensor_type.gguf", gguf_tensors([tinfo("token_embd.weight", [4], 9999, 0)]),
    "Gguf/UnknownType", '"token_embd.weight"', 9999)
put("gguf_duplicate_tensor.gguf", gguf_tensors([tinfo("t.weight", [4], 0, 0),
                                                tinfo("t.weight", [4], 0, 32)]),
    "Gguf/DuplicateTensor", '"t.weight"')

# ---- safetensors -------------------------------------------------------------------------

def st(header, data=b"", length=None):
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    return u64(len(h) if length is None else length) + h + data


# The error classes are the safetensors crate's own (`SafeTensorError`), which qforge keeps.
put("st_header_len_2e63.safetensors", st(b"{}", length=1 << 63), "Safetensors/HeaderTooLarge",
    "header length")
put("st_header_len_over_limit.safetensors", st(b"{}", length=100_000_001), "Safetensors/HeaderTooLarge",
    "header length")
put("st_header_past_eof.safetensors", st(b"{}", length=4096), "Safetensors/HeaderPastEof", "header length")
put("st_overlapping_offsets.safetensors", st({
    "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
    "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}, b"\0" * 24),
    "Safetensors/InvalidOffset", '"b"')
put("st_offsets_past_eof.safetensors", st({
    "a": {"dtype": "F32", "shape": [1 << 40], "data_offsets": [0, 1 << 42]}}, b"\0" * 16),
    "Safetensors/IncompleteBuffer", "truncated")
put("st_huge_shape_overflow.safetensors", st({
    "a": {"dtype": "F32", "shape": [1 << 32, 1 << 32, 1 << 32], "data_offsets": [0, 16]}}, b"\0" * 16),
    "Safetensors/Overflow", "overflows")
put("st_shape_mismatch.safetensors", st({
    "a": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 16]}}, b"\0" * 16),
    "Safetensors/TensorInvalidInfo", "shape")
garbage = b'{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]' + b"\xff\xfe}}"
put("st_json_garbage.safetensors", st(garbage), "Safetensors/InvalidHeader", "UTF-8",
    "index %d" % garbage.index(b"\xff"))
put("st_duplicate_key.safetensors", st(
    b'{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"a":{"dtype":"F32","shape":[4],"data_offsets":[16,32]}}',
    b"\0" * 32), "Safetensors/DuplicateName", '"a"')
put("st_deep_nesting.safetensors", st(b'{"__metadata__":' + b"[" * 100000 + b"]" * 100000 + b"}"),
    "Safetensors/InvalidHeader", "invalid")
put("st_unknown_dtype.safetensors", st({"a": {"dtype": "Q9_9", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 16),
    "Safetensors/InvalidHeader", "Q9_9")
# polyglots: a GGUF that is also a ZIP, a safetensors file with a ZIP appended, a header that
# is a JSON array
polyglot_zip = pth(good)
put("polyglot_gguf_zip.gguf", gguf(0, 0) + polyglot_zip, "Config/Missing", "general.architecture")
put("polyglot_gguf_zip.pth", gguf(0, 0) + polyglot_zip, "Pth/Zip", "invalid ZIP")
valid_st = st({"model.norm.weight": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 16)
put("polyglot_safetensors_zip.safetensors", valid_st + polyglot_zip, "Safetensors/IncompleteBuffer",
    "trailing bytes")
put("st_header_is_json_array.safetensors", st(b'[{"dtype":"F32"}]'), "Safetensors/InvalidHeader",
    "sequence")

# ---- model directory side files ----------------------------------------------------------

for name, shard in [("index_parent_dir.json", "../model-00001-of-00002.safetensors"),
                    ("index_absolute_path.json", "/etc/passwd"),
                    ("index_subdir.json", "sub/model.safetensors")]:
    put(name, json.dumps({"metadata": {}, "weight_map": {"model.embed_tokens.weight": shard}}).encode(),
        "Safetensors/ShardOutsideModel", f'"{shard}"')
put("index_empty_map.json", json.dumps({"metadata": {}, "weight_map": {}}).encode(),
    "Safetensors/InvalidIndex", "weight_map")
# Config values outside what any real model has. The message names qforge's field for the
# value (num_heads for HF num_attention_heads and Meta n_heads) and the value itself.
put("config_heads_zero.json", json.dumps({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32, "intermediate_size": 96,
    "num_attention_heads": 0, "num_hidden_layers": 2, "num_key_value_heads": 0,
    "vocab_size": 128, "rms_norm_eps": 1e-5}).encode(), "Config/Invalid", "heads", ": 0 ")
put("config_hidden_2e64.json", json.dumps({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 18446744073709551615,
    "intermediate_size": 96, "num_attention_heads": 4, "num_hidden_layers": 2,
    "num_key_value_heads": 2, "vocab_size": 128, "rms_norm_eps": 1e-5}).encode(), "Config/Invalid",
    "hidden_size", 18446744073709551615)
put("params_heads_zero.json", json.dumps({"dim": 32, "n_layers": 2, "n_heads": 0,
                                          "vocab_size": 128, "norm_eps": 1e-5}).encode(),
    "Config/Invalid", "heads", ": 0 ")
put("params_layers_huge.json", json.dumps({"dim": 32, "n_layers": 1 << 40, "n_heads": 4,
                                           "n_kv_heads": 2, "vocab_size": 128,
                                           "multiple_of": 32, "norm_eps": 1e-5}).encode(),
    "Config/Invalid", "layers", 1 << 40)
put("tiktoken_rank_u32_max.model", b"AA== 0\nAQ== 4294967295\n", "Tokenizer", 4294967295)
put("tiktoken_not_base64.model", b"!!!! 0\n", "Tokenizer", "line 1", "base64")
# a byte-level BPE tokenizer.json in every other respect, with one token id of 2^31 - 1
HUGE_ID = 2147483647
put("tokenizer_json_id_huge.json", json.dumps({
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                      "use_regex": True},
    "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
    "model": {"type": "BPE", "vocab": {"a": HUGE_ID}, "merges": []}}).encode(), "Tokenizer", HUGE_ID)

# entries for the cases the test makes itself (symbolic links): the shard the link replaces
for name, shard in [("<symlinked shard>", "model-00001-of-00002.safetensors"),
                    ("<relative symlinked shard>", "model-00002-of-00002.safetensors")]:
    expect[name] = {"error": "Safetensors/ShardOutsideModel", "names": [f'"{shard}"']}

def main():
    os.makedirs(OUT, exist_ok=True)
    for name in os.listdir(OUT):
        if name != "manifest.json":
            os.remove(os.path.join(OUT, name))
    for name, data in sorted(files.items()):
        assert len(data) < 1 << 20, name
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(expect, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"{len(files)} files and manifest.json in tests/hostile/")


if __name__ == "__main__":
    main()
