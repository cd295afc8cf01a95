#!/usr/bin/env python3
"""Generate the small committed interop fixtures in tests/fixtures/tiny/ with the REAL producer
libraries (torch.save, safetensors, tokenizers, gguf-py), plus expected.json files recording what
the reference readers (torch.load(weights_only=True), safetensors, gguf.GGUFReader) read back.

Run it with the fixtures venv (it needs torch):
    "$(scripts/pyenv.sh --fixtures --print-python)" scripts/gen_fixtures.py

Everything is derived from fixed seeds; re-running gives identical bytes (the script reports any
file whose bytes a producer makes non-reproducible). See scripts/README-fixtures.md.

The model: a tiny Llama-3-style net, vocab 128, dim 32, 2 layers, 4 heads, 2 kv heads
(head_dim 8), ffn 96 (Meta formula, multiple_of 32), norm_eps 1e-5, rope_theta 500000, untied
output. Canonical tensors are random BF16 in Meta layout (Meta names, [out, in], wq/wk in Meta's
interleaved-RoPE row order).
"""
from __future__ import annotations

import argparse
import base64
import collections
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import safetensors
import safetensors.torch
import gguf
from gguf import GGMLQuantizationType as QT
import tokenizers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "tests" / "fixtures" / "tiny"
SUBDIRS = ["meta-mp1", "meta-mp2", "meta-extras", "hf", "hf-sharded", "gguf"]

SEED = 20240611

# ---------------------------------------------------------------------------------------------
# hyper-parameters
VOCAB = 128
DIM = 32
N_LAYERS = 2
N_HEADS = 4
N_KV_HEADS = 2
HEAD_DIM = DIM // N_HEADS  # 8
MULTIPLE_OF = 32
NORM_EPS = 1e-5
ROPE_THETA = 500000.0
MAX_POS = 8192
BOS_ID = 0
EOS_ID = 1


def ffn_hidden(dim: int, multiple_of: int, ffn_dim_multiplier: float | None = None) -> int:
    """Meta's FeedForward hidden size (llama_models llama3/model.py)."""
    h = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        h = int(ffn_dim_multiplier * h)
    return multiple_of * ((h + multiple_of - 1) // multiple_of)


FFN = ffn_hidden(DIM, MULTIPLE_OF)
assert FFN == 96, FFN

LAYER_KEYS = [  # per-layer order as in Meta's consolidated.*.pth
    "attention.wq.weight",
    "attention.wk.weight",
    "attention.wv.weight",
    "attention.wo.weight",
    "feed_forward.w1.weight",
    "feed_forward.w2.weight",
    "feed_forward.w3.weight",
    "attention_norm.weight",
    "ffn_norm.weight",
]


def meta_shapes() -> "collections.OrderedDict[str, tuple[int, ...]]":
    s: collections.OrderedDict[str, tuple[int, ...]] = collections.OrderedDict()
    s["tok_embeddings.weight"] = (VOCAB, DIM)
    for i in range(N_LAYERS):
        p = f"layers.{i}."
        s[p + "attention.wq.weight"] = (N_HEADS * HEAD_DIM, DIM)
        s[p + "attention.wk.weight"] = (N_KV_HEADS * HEAD_DIM, DIM)
        s[p + "attention.wv.weight"] = (N_KV_HEADS * HEAD_DIM, DIM)
        s[p + "attention.wo.weight"] = (DIM, N_HEADS * HEAD_DIM)
        s[p + "feed_forward.w1.weight"] = (FFN, DIM)
        s[p + "feed_forward.w2.weight"] = (DIM, FFN)
        s[p + "feed_forward.w3.weight"] = (FFN, DIM)
        s[p + "attention_norm.weight"] = (DIM,)
        s[p + "ffn_norm.weight"] = (DIM,)
    s["norm.weight"] = (DIM,)
    s["output.weight"] = (VOCAB, DIM)
    return s


def rng_for(tag: str) -> np.random.Generator:
    """Independent, order-insensitive stream per tensor name."""
    h = hashlib.sha256(f"qforge-fixtures:{SEED}:{tag}".encode()).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(h[:16], "little")))


def f32_to_bf16(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(torch.bfloat16)  # RNE


def canonical_meta() -> "collections.OrderedDict[str, torch.Tensor]":
    out: collections.OrderedDict[str, torch.Tensor] = collections.OrderedDict()
    for name, shape in meta_shapes().items():
        r = rng_for(name)
        if name.endswith("norm.weight"):
            x = 1.0 + 0.1 * r.standard_normal(shape, dtype=np.float32)
        else:
            x = 0.15 * r.standard_normal(shape, dtype=np.float32)
        out[name] = f32_to_bf16(x)
    return out


# ---------------------------------------------------------------------------------------------
# name maps and the HF rotary permutation

def meta_to_hf_name(n: str) -> str:
    fixed = {
        "tok_embeddings.weight": "model.embed_tokens.weight",
        "norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight",
    }
    if n in fixed:
        return fixed[n]
    _, i, rest = n.split(".", 2)
    m = {
        "attention.wq.weight": "self_attn.q_proj.weight",
        "attention.wk.weight": "self_attn.k_proj.weight",
        "attention.wv.weight": "self_attn.v_proj.weight",
        "attention.wo.weight": "self_attn.o_proj.weight",
        "feed_forward.w1.weight": "mlp.gate_proj.weight",
        "feed_forward.w2.weight": "mlp.down_proj.weight",
        "feed_forward.w3.weight": "mlp.up_proj.weight",
        "attention_norm.weight": "input_layernorm.weight",
        "ffn_norm.weight": "post_attention_layernorm.weight",
    }[rest]
    return f"model.layers.{i}.{m}"


def meta_to_gguf_name(n: str) -> str:
    fixed = {
        "tok_embeddings.weight": "token_embd.weight",
        "norm.weight": "output_norm.weight",
        "output.weight": "output.weight",
    }
    if n in fixed:
        return fixed[n]
    _, i, rest = n.split(".", 2)
    m = {
        "attention.wq.weight": "attn_q.weight",
        "attention.wk.weight": "attn_k.weight",
        "attention.wv.weight": "attn_v.weight",
        "attention.wo.weight": "attn_output.weight",
        "feed_forward.w1.weight": "ffn_gate.weight",
        "feed_forward.w2.weight": "ffn_down.weight",
        "feed_forward.w3.weight": "ffn_up.weight",
        "attention_norm.weight": "attn_norm.weight",
        "ffn_norm.weight": "ffn_norm.weight",
    }[rest]
    return f"blk.{i}.{m}"


def permute_meta_to_hf(w: torch.Tensor, n: int) -> torch.Tensor:
    """meta.md 3.2 / transformers convert_llama_weights_to_hf.permute: interleaved -> half-split."""
    rows, cols = w.shape
    hd = rows // n
    return w.view(n, hd // 2, 2, cols).transpose(1, 2).reshape(rows, cols).contiguous()


def permute_hf_to_meta(w: torch.Tensor, n: int) -> torch.Tensor:
    rows, cols = w.shape
    hd = rows // n
    return w.view(n, 2, hd // 2, cols).transpose(1, 2).reshape(rows, cols).contiguous()


def canonical_hf(meta: "collections.OrderedDict[str, torch.Tensor]") -> "collections.OrderedDict[str, torch.Tensor]":
    out: collections.OrderedDict[str, torch.Tensor] = collections.OrderedDict()
    for n, t in meta.items():
        if n.endswith("attention.wq.weight"):
            t = permute_meta_to_hf(t, N_HEADS)
        elif n.endswith("attention.wk.weight"):
            t = permute_meta_to_hf(t, N_KV_HEADS)
        out[meta_to_hf_name(n)] = t.clone()
    return out


# ---------------------------------------------------------------------------------------------
# tokenizer (shared by tokenizer.model, tokenizer.json and the GGUF vocab)
#
# 128 tokens. Ranks 0..123 are the single bytes 0x00..0x7B (rank == byte value); ranks 124..127
# are four multi-byte tokens so that a *consistent* BPE merge list exists (merges need l, r and
# l+r all in the vocab, impossible with single bytes only). Bytes 0x7C..0x7F ('|', '}', '~', DEL)
# are therefore not encodable with this toy vocab.
MULTI_BYTE_TOKENS = [b" t", b"he", b"in", b" th"]
TOKEN_BYTES: list[bytes] = [bytes([b]) for b in range(VOCAB - len(MULTI_BYTE_TOKENS))] + MULTI_BYTE_TOKENS
assert len(TOKEN_BYTES) == VOCAB and len(set(TOKEN_BYTES)) == VOCAB

LLAMA3_PAT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable unicode char map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


BYTE_ENC = bytes_to_unicode()


def spell(b: bytes) -> str:
    return "".join(BYTE_ENC[x] for x in b)


def bpe_merges() -> list[tuple[str, str]]:
    """meta.md 3.4: for every multi-byte token, all splits (l, r) with l, r in vocab, sorted by rank of
    l+r (ties by ranks of l, r)."""
    rank = {b: i for i, b in enumerate(TOKEN_BYTES)}
    found = []
    for tok, rk in rank.items():
        if len(tok) < 2:
            continue
        for k in range(1, len(tok)):
            l, r = tok[:k], tok[k:]
            if l in rank and r in rank:
                found.append((rk, rank[l], rank[r], spell(l), spell(r)))
    found.sort()
    return [(l, r) for _, _, _, l, r in found]


MERGES = bpe_merges()
TOKEN_STRINGS = [spell(b) for b in TOKEN_BYTES]
# GGUF token types: 1 normal, 3 control (bos/eos)
TOKEN_TYPES = [3 if i in (BOS_ID, EOS_ID) else 1 for i in range(VOCAB)]


def write_tiktoken_model(path: Path) -> None:
    with open(path, "w", encoding="ascii", newline="\n") as f:
        for rank, b in enumerate(TOKEN_BYTES):
            f.write(f"{base64.b64encode(b).decode('ascii')} {rank}\n")


def build_hf_tokenizer() -> Tokenizer:
    vocab = {s: i for i, s in enumerate(TOKEN_STRINGS)}
    bpe = models.BPE(vocab=vocab, merges=MERGES, fuse_unk=False, byte_fallback=False, ignore_merges=True)
    tok = Tokenizer(bpe)
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PAT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    bos, eos = TOKEN_STRINGS[BOS_ID], TOKEN_STRINGS[EOS_ID]
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(
            single=f"{bos}:0 $A:0",
            pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
            special_tokens=[(bos, BOS_ID)],
        ),
    ])
    tok.add_special_tokens([
        AddedToken(bos, special=True, normalized=False, single_word=False, lstrip=False, rstrip=False),
        AddedToken(eos, special=True, normalized=False, single_word=False, lstrip=False, rstrip=False),
    ])
    return tok


TOKENIZER_SAMPLES = [
    "the thin hen",
    "Hello, world! 12345",
    "  in the\nthick\tthing's end.",
]

# ---------------------------------------------------------------------------------------------
# expectation helpers

TORCH_DTYPE_NAMES = {
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.float32: "F32",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}
FLOAT_DTYPES = {torch.bfloat16, torch.float16, torch.float32, torch.float64, torch.float8_e4m3fn, torch.float8_e5m2}


def sha256_hex(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def torch_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().contiguous().reshape(-1)
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    return t.view(torch.uint8).numpy().tobytes()


def torch_expect(t: torch.Tensor, *, pickle_info: bool = False) -> dict:
    e: dict = {
        "dtype": TORCH_DTYPE_NAMES[t.dtype],
        "shape": list(t.shape),
        "sha256": sha256_hex(torch_bytes(t)),
    }
    flat = t.detach().contiguous().reshape(-1)
    if t.dtype in FLOAT_DTYPES:
        f = flat.to(torch.float32)
        e["f32_sha256"] = sha256_hex(f.numpy().tobytes())
        e["head"] = [float(v) for v in f[:4].tolist()]
    else:
        e["head"] = [int(v) for v in flat[:4].tolist()]
    if pickle_info:
        e["storage_offset"] = t.storage_offset()
        e["stride"] = list(t.stride())
        e["contiguous"] = t.is_contiguous()
        e["storage_nbytes"] = t.untyped_storage().nbytes()
        if isinstance(t, torch.nn.Parameter):
            e["parameter"] = True
            e["requires_grad"] = t.requires_grad
    return e


def load_pth_expect(path: Path) -> dict:
    sd = torch.load(path, map_location="cpu", weights_only=True)
    return {"tensors": {k: torch_expect(v, pickle_info=True) for k, v in sd.items()}}


def load_safetensors_expect(path: Path) -> dict:
    out = {}
    with safetensors.safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        for k in f.keys():  # sorted by the library
            out[k] = torch_expect(f.get_tensor(k))
    d = {"tensors": out}
    if meta:
        d["metadata"] = meta
    return d


def gguf_field_value(field) -> object:
    from gguf import GGUFValueType as VT
    t = field.types[0]
    if t == VT.ARRAY:
        sub = field.types[-1]
        if sub == VT.STRING:
            return [bytes(field.parts[i]).decode("utf-8") for i in field.data]
        return [field.parts[i].tolist()[0] for i in field.data]
    if t == VT.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    v = field.parts[field.data[0]].tolist()[0]
    return v


def load_gguf_expect(path: Path) -> dict:
    r = gguf.GGUFReader(str(path))
    meta = {}
    for name, field in r.fields.items():
        if name.startswith("GGUF."):
            continue
        types = [gguf.GGUFValueType(x).name for x in field.types]
        meta[name] = {"type": types[0] if len(types) == 1 else f"{types[0]}[{types[-1]}]",
                      "value": gguf_field_value(field)}
    raw_file = path.read_bytes()
    tensors = {}
    for t in r.tensors:
        qtype = QT(t.tensor_type)
        raw = np.ascontiguousarray(t.data).tobytes()
        assert raw == raw_file[t.data_offset:t.data_offset + t.n_bytes], t.name
        deq = np.ascontiguousarray(gguf.quants.dequantize(t.data, qtype), dtype=np.float32)
        ne = [int(x) for x in t.shape]
        assert deq.size == int(np.prod(ne))
        tensors[t.name] = {
            "dtype": qtype.name,
            "shape": ne[::-1],
            "sha256": sha256_hex(raw),
            "f32_sha256": sha256_hex(deq.tobytes()),
            "head": [float(v) for v in deq.reshape(-1)[:4]],
            "ne": ne,
            "data_offset": int(t.data_offset),
            "n_bytes": int(t.n_bytes),
        }
    return {"tensors": tensors, "metadata": meta,
            "alignment": int(r.alignment), "data_start": int(r.data_offset)}


def write_json(path: Path, obj) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        json.dump(obj, f, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
        f.write("\n")


# ---------------------------------------------------------------------------------------------
# fixtures

def params_json() -> dict:
    return {
        "dim": DIM,
        "n_layers": N_LAYERS,
        "n_heads": N_HEADS,
        "n_kv_heads": N_KV_HEADS,
        "vocab_size": VOCAB,
        "multiple_of": MULTIPLE_OF,
        "norm_eps": NORM_EPS,
        "rope_theta": ROPE_THETA,
        "use_scaled_rope": False,
    }


def write_meta_common(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "params.json", "w", encoding="utf-8", newline="\n") as f:
        json.dump(params_json(), f)  # Meta's files are one line, no trailing newline
    write_tiktoken_model(d / "tokenizer.model")


def gen_meta_mp1(out: Path, meta) -> dict:
    d = out / "meta-mp1"
    write_meta_common(d)
    sd: collections.OrderedDict[str, torch.Tensor] = collections.OrderedDict()
    sd["tok_embeddings.weight"] = meta["tok_embeddings.weight"].clone()
    for i in range(N_LAYERS):
        names = [f"layers.{i}.{k}" for k in LAYER_KEYS]
        total = sum(meta[n].numel() for n in names)
        flat = torch.empty(total, dtype=torch.bfloat16)  # one shared storage per layer
        off = 0
        for n in names:
            t = meta[n]
            flat[off:off + t.numel()].copy_(t.reshape(-1))
            sd[n] = flat[off:off + t.numel()].view(t.shape)
            off += t.numel()
    sd["norm.weight"] = meta["norm.weight"].clone()
    sd["output.weight"] = meta["output.weight"].clone()
    # Like nn.Module.state_dict(): an OrderedDict carrying a `_metadata` attribute, which pickle
    # writes as a trailing BUILD {'_metadata': OrderedDict(...)} that readers must accept/ignore.
    md: collections.OrderedDict[str, dict] = collections.OrderedDict()
    md[""] = {"version": 1}
    md["tok_embeddings"] = {"version": 1}
    md["layers"] = {"version": 1}
    for i in range(N_LAYERS):
        for m in ("", ".attention", ".attention.wq", ".attention.wk", ".attention.wv", ".attention.wo",
                  ".feed_forward", ".feed_forward.w1", ".feed_forward.w2", ".feed_forward.w3",
                  ".attention_norm", ".ffn_norm"):
            md[f"layers.{i}{m}"] = {"version": 1}
    md["norm"] = {"version": 1}
    md["output"] = {"version": 1}
    sd._metadata = md  # type: ignore[attr-defined]
    torch.save(sd, d / "consolidated.00.pth")

    exp = {"files": {"consolidated.00.pth": load_pth_expect(d / "consolidated.00.pth")}}
    # sanity: what torch.load gives back is the canonical model
    back = torch.load(d / "consolidated.00.pth", map_location="cpu", weights_only=True)
    assert list(back) == list(meta)
    assert isinstance(back, collections.OrderedDict) and getattr(back, "_metadata", None) == md
    for n, t in meta.items():
        assert torch.equal(back[n], t), n
    assert back["layers.0.attention.wk.weight"].storage_offset() > 0
    write_json(d / "expected.json", exp)
    return exp


SPLIT_DIM0 = ("attention.wq.weight", "attention.wk.weight", "attention.wv.weight",
              "feed_forward.w1.weight", "feed_forward.w3.weight")
SPLIT_DIM1 = ("attention.wo.weight", "feed_forward.w2.weight")


def meta_split_dim(name: str) -> int | None:
    if name in ("output.weight", "tok_embeddings.weight") or name.endswith(SPLIT_DIM0):
        return 0
    if name.endswith(SPLIT_DIM1):
        return 1
    assert name.endswith("norm.weight"), name
    return None  # replicated


def gen_meta_mp2(out: Path, meta, mp1_exp: dict, mp: int = 2) -> dict:
    d = out / "meta-mp2"
    write_meta_common(d)
    shards: list[dict[str, torch.Tensor]] = [dict() for _ in range(mp)]
    for n, t in meta.items():
        dim = meta_split_dim(n)
        if dim is None:
            parts = [t] * mp
        else:
            assert t.shape[dim] % mp == 0
            parts = list(torch.chunk(t, mp, dim=dim))
        for r in range(mp):
            shards[r][n] = parts[r].clone(memory_format=torch.contiguous_format)
    files = {}
    for r in range(mp):
        fn = f"consolidated.{r:02d}.pth"
        torch.save(shards[r], d / fn)
        files[fn] = load_pth_expect(d / fn)
    # sanity: merging per Meta's rules gives MP1 back
    loaded = [torch.load(d / f"consolidated.{r:02d}.pth", map_location="cpu", weights_only=True) for r in range(mp)]
    for n, t in meta.items():
        dim = meta_split_dim(n)
        if dim is None:
            for r in range(1, mp):
                assert torch.equal(loaded[r][n], loaded[0][n])
            merged = loaded[0][n]
        else:
            merged = torch.cat([loaded[r][n] for r in range(mp)], dim=dim)
        assert torch.equal(merged, t), n
    core = ("dtype", "shape", "sha256", "f32_sha256", "head")  # drop MP1's pickle-layout details
    merged = {k: {f: v[f] for f in core if f in v}
              for k, v in mp1_exp["files"]["consolidated.00.pth"]["tensors"].items()}
    exp = {"files": files, "merged": {"tensors": merged}}
    write_json(d / "expected.json", exp)
    return exp


def gen_meta_extras(out: Path) -> dict:
    d = out / "meta-extras"
    d.mkdir(parents=True, exist_ok=True)
    r = rng_for("meta-extras")
    odd: dict[str, torch.Tensor] = {}
    # float8: torch pickles these with _rebuild_tensor_v3 + torch.UntypedStorage (numel = bytes)
    f8 = r.standard_normal((4, 8), dtype=np.float32) * 64.0
    f8[0, :4] = [448.0, -448.0, 0.001953125, 0.0]  # max normal, min subnormal 2^-9, zero
    odd["fp8_e4m3fn"] = torch.from_numpy(f8).to(torch.float8_e4m3fn)
    odd["fp8_e5m2"] = torch.from_numpy(r.standard_normal((2, 8), dtype=np.float32)).to(torch.float8_e5m2)
    # nn.Parameter -> torch._utils._rebuild_parameter(tensor, requires_grad, hooks)
    odd["param"] = torch.nn.Parameter(f32_to_bf16(r.standard_normal((4, 4), dtype=np.float32)), requires_grad=True)
    odd["i64"] = torch.tensor([0, 1, -1, 2**40, -(2**63), 2**63 - 1], dtype=torch.int64)
    odd["i32"] = torch.tensor([[1, -2, 3], [-4, 5, 2**31 - 1]], dtype=torch.int32)
    odd["u8"] = torch.arange(0, 250, 25, dtype=torch.uint8)
    odd["bool"] = torch.tensor([True, False, True, True])
    odd["f32"] = torch.from_numpy(r.standard_normal((3, 4), dtype=np.float32))
    odd["f16"] = torch.from_numpy(r.standard_normal((2, 8), dtype=np.float32)).to(torch.float16)
    # non-contiguous: transposed view of a bf16 [4, 6] (stride (1, 6)); the whole base storage is saved
    base = f32_to_bf16(r.standard_normal((4, 6), dtype=np.float32))
    odd["transposed"] = base.t()
    # a strided (every other column) view too
    base2 = torch.from_numpy(r.standard_normal((3, 8), dtype=np.float32))
    odd["strided"] = base2[:, ::2]
    # 0-dim scalar
    odd["scalar"] = torch.tensor(3.5, dtype=torch.float32)
    # two views with non-zero storage_offset into one shared bf16 storage
    shared = f32_to_bf16(r.standard_normal((64,), dtype=np.float32))
    odd["shared_a"] = shared[8:24].view(4, 4)
    odd["shared_b"] = shared[40:64].view(2, 3, 4)
    odd["empty"] = torch.zeros((0, 4), dtype=torch.float32)
    assert not odd["transposed"].is_contiguous() and odd["shared_a"].storage_offset() == 8
    torch.save(odd, d / "odd.pth")

    back = torch.load(d / "odd.pth", map_location="cpu", weights_only=True)
    assert isinstance(back["param"], torch.nn.Parameter)
    for k, v in odd.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k].detach(), v.detach()), k
    exp = {"files": {"odd.pth": load_pth_expect(d / "odd.pth")}}
    write_json(d / "expected.json", exp)
    return exp


def hf_config() -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "head_dim": HEAD_DIM,
        "hidden_act": "silu",
        "hidden_size": DIM,
        "initializer_range": 0.02,
        "intermediate_size": FFN,
        "max_position_embeddings": MAX_POS,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": N_HEADS,
        "num_hidden_layers": N_LAYERS,
        "num_key_value_heads": N_KV_HEADS,
        "pretraining_tp": 1,
        "rms_norm_eps": NORM_EPS,
        "rope_scaling": None,
        "rope_theta": ROPE_THETA,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": VOCAB,
    }


def check_hf_against_meta(tensors: dict[str, torch.Tensor], meta) -> None:
    assert len(tensors) == len(meta)
    for n, t in meta.items():
        h = tensors[meta_to_hf_name(n)]
        if n.endswith("attention.wq.weight"):
            h = permute_hf_to_meta(h, N_HEADS)
        elif n.endswith("attention.wk.weight"):
            h = permute_hf_to_meta(h, N_KV_HEADS)
        assert h.dtype == torch.bfloat16 and torch.equal(h, t), n


def gen_hf(out: Path, meta, hf) -> dict:
    d = out / "hf"
    d.mkdir(parents=True, exist_ok=True)
    write_json(d / "config.json", hf_config())
    safetensors.torch.save_file(dict(hf), str(d / "model.safetensors"), metadata={"format": "pt"})
    check_hf_against_meta(safetensors.torch.load_file(str(d / "model.safetensors")), meta)

    tok = build_hf_tokenizer()
    tok.save(str(d / "tokenizer.json"), pretty=True)
    tok2 = Tokenizer.from_file(str(d / "tokenizer.json"))
    samples = []
    for text in TOKENIZER_SAMPLES:
        with_bos = tok2.encode(text, add_special_tokens=True).ids
        plain = tok2.encode(text, add_special_tokens=False).ids
        assert tok2.decode(plain) == text, (text, tok2.decode(plain))
        assert with_bos == [BOS_ID] + plain
        samples.append({"text": text, "ids": plain, "ids_with_special": with_bos})
    write_json(d / "tokenizer_config.json", {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": TOKEN_STRINGS[BOS_ID],
        "eos_token": TOKEN_STRINGS[EOS_ID],
        "clean_up_tokenization_spaces": True,
        "model_max_length": MAX_POS,
        "tokenizer_class": "PreTrainedTokenizerFast",
    })
    exp = {
        "files": {"model.safetensors": load_safetensors_expect(d / "model.safetensors")},
        "tokenizer": {"file": "tokenizer.json", "bos_id": BOS_ID, "eos_id": EOS_ID, "samples": samples},
    }
    write_json(d / "expected.json", exp)
    return exp


def gen_hf_sharded(out: Path, meta, hf) -> dict:
    d = out / "hf-sharded"
    d.mkdir(parents=True, exist_ok=True)
    write_json(d / "config.json", hf_config())
    names = list(hf)  # state_dict order: embed, layer 0, layer 1, norm, lm_head
    cut = 1 + len(LAYER_KEYS)  # shard 1 = embed_tokens + layer 0
    groups = [names[:cut], names[cut:]]
    n = len(groups)
    weight_map = {}
    total = 0
    files = {}
    for i, g in enumerate(groups):
        fn = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        safetensors.torch.save_file({k: hf[k] for k in g}, str(d / fn), metadata={"format": "pt"})
        for k in g:
            weight_map[k] = fn
            total += hf[k].numel() * hf[k].element_size()
        files[fn] = load_safetensors_expect(d / fn)
    # exactly as transformers' save_pretrained writes it
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    with open(d / "model.safetensors.index.json", "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(index, indent=2, sort_keys=True) + "\n")
    loaded = {}
    for fn in files:
        loaded.update(safetensors.torch.load_file(str(d / fn)))
    check_hf_against_meta(loaded, meta)
    exp = {"files": files, "total_size": total}
    write_json(d / "expected.json", exp)
    return exp


# GGUF type per tensor of tiny.gguf: every 32-block quantizer gguf-py implements, plus F32/F16/BF16
GGUF_TYPES = {
    "token_embd.weight": QT.F16,
    "blk.0.attn_q.weight": QT.Q4_0,
    "blk.0.attn_k.weight": QT.Q4_1,
    "blk.0.attn_v.weight": QT.Q5_0,
    "blk.0.attn_output.weight": QT.Q5_1,
    "blk.0.ffn_gate.weight": QT.BF16,
    "blk.0.ffn_up.weight": QT.Q8_0,
    "blk.0.ffn_down.weight": QT.Q4_0,  # row length 96 = 3 blocks
    "blk.1.attn_q.weight": QT.Q5_1,
    "blk.1.attn_k.weight": QT.Q5_0,
    "blk.1.attn_v.weight": QT.Q4_1,
    "blk.1.attn_output.weight": QT.Q8_0,
    "blk.1.ffn_gate.weight": QT.F32,
    "blk.1.ffn_up.weight": QT.F16,
    "blk.1.ffn_down.weight": QT.Q5_1,  # row length 96
    "output.weight": QT.Q8_0,
    # all *_norm.weight: F32
}


def gen_gguf(out: Path, meta) -> dict:
    d = out / "gguf"
    d.mkdir(parents=True, exist_ok=True)
    files = {}

    # --- tiny.gguf: the full tiny llama
    path = d / "tiny.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("qforge tiny llama")
    w.add_context_length(MAX_POS)
    w.add_embedding_length(DIM)
    w.add_block_count(N_LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(N_HEADS)
    w.add_head_count_kv(N_KV_HEADS)
    w.add_layer_norm_rms_eps(NORM_EPS)
    w.add_rope_freq_base(ROPE_THETA)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_vocab_size(VOCAB)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)  # "mostly": the mix is deliberate
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(TOKEN_STRINGS)
    w.add_token_types(TOKEN_TYPES)
    w.add_token_merges([f"{l} {r}" for l, r in MERGES])
    w.add_bos_token_id(BOS_ID)
    w.add_eos_token_id(EOS_ID)
    w.add_add_bos_token(True)
    order = ["tok_embeddings.weight"]
    for i in range(N_LAYERS):
        p = f"layers.{i}."
        order += [p + k for k in ("attention_norm.weight", "attention.wq.weight", "attention.wk.weight",
                                  "attention.wv.weight", "attention.wo.weight", "ffn_norm.weight",
                                  "feed_forward.w1.weight", "feed_forward.w3.weight", "feed_forward.w2.weight")]
    order += ["norm.weight", "output.weight"]
    assert sorted(order) == sorted(meta)
    src_f32 = {}
    for n in order:
        g = meta_to_gguf_name(n)
        x = meta[n].to(torch.float32).numpy()  # exact upcast; q/k: Meta layout == GGUF layout
        src_f32[g] = x
        qt = QT.F32 if n.endswith("norm.weight") else GGUF_TYPES[g]
        data = gguf.quants.quantize(x, qt)
        if data.dtype == np.uint8:
            w.add_tensor(g, data, raw_dtype=qt)
        else:
            w.add_tensor(g, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    files["tiny.gguf"] = load_gguf_expect(path)
    # sanity: lossless types read back bit-exact, quantized ones are close
    for g, e in files["tiny.gguf"]["tensors"].items():
        assert e["shape"] == list(src_f32[g].shape), g
    r = gguf.GGUFReader(str(path))
    for t in r.tensors:
        deq = gguf.quants.dequantize(t.data, QT(t.tensor_type)).reshape(src_f32[t.name].shape)
        err = float(np.max(np.abs(deq - src_f32[t.name])))
        if QT(t.tensor_type) in (QT.F32, QT.BF16):
            assert err == 0.0, (t.name, err)
        else:
            assert err < 0.2 * float(np.max(np.abs(src_f32[t.name]))), (t.name, err)

    # --- kquants.gguf: standalone K-quant tensors. gguf-py 0.19 has no K-quant quantizers (only
    # dequantize), so the blocks are random bytes with finite f16 d/dmin patched in; the expected
    # values are gguf-py's dequantization.
    path = d / "kquants.gguf"
    w = gguf.GGUFWriter(str(path), "qforge-kquant-test")
    w.add_name("qforge K-quant dequantization fixture")
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    # (type, rows, cols, [(byte offset of an f16 scale, positive?)])
    kspecs = [
        (QT.Q2_K, 4, 256, [(80, True), (82, True)]),     # scales[16] qs[64] d dmin
        (QT.Q3_K, 4, 256, [(108, False)]),               # hmask[32] qs[64] scales[12] d
        (QT.Q4_K, 3, 512, [(0, True), (2, True)]),       # d dmin scales[12] qs[128]
        (QT.Q5_K, 4, 256, [(0, True), (2, True)]),       # d dmin scales[12] qh[32] qs[128]
        (QT.Q6_K, 3, 512, [(208, False)]),               # ql[128] qh[64] scales[16] d
    ]
    for qt, rows, cols, scale_offs in kspecs:
        blk, tsize = gguf.GGML_QUANT_SIZES[qt]
        nb = rows * cols // blk
        rr = rng_for(f"kquant:{qt.name}")
        blocks = rr.integers(0, 256, size=(nb, tsize), dtype=np.uint8)
        for off, positive in scale_offs:
            mag = rr.uniform(2.0 ** -10, 2.0 ** -4, size=nb)
            sign = 1.0 if positive else np.where(rr.integers(0, 2, size=nb) == 1, -1.0, 1.0)
            blocks[:, off:off + 2] = (mag * sign).astype(np.float16).view(np.uint8).reshape(nb, 2)
        if qt == QT.Q6_K:
            blocks[-(cols // blk):] = 0  # last row: all-zero blocks (what the ref quantizer emits for 0)
        data = blocks.reshape(rows, cols // blk * tsize)
        w.add_tensor(f"{qt.name.lower()}.weight", data, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    files["kquants.gguf"] = load_gguf_expect(path)
    exp = {"files": files}
    write_json(d / "expected.json", exp)
    return exp


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256_hex(p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output dir (default: tests/fixtures/tiny)")
    args = ap.parse_args()
    out: Path = args.out

    print(f"torch {torch.__version__}, safetensors {safetensors.__version__}, "
          f"tokenizers {tokenizers.__version__}, numpy {np.__version__}, "
          f"gguf {gguf_version()}", file=sys.stderr)
    before = tree_digest(out) if out.exists() else {}
    out.mkdir(parents=True, exist_ok=True)
    for s in SUBDIRS:
        if (out / s).exists():
            shutil.rmtree(out / s)

    torch.manual_seed(SEED)
    meta = canonical_meta()
    hf = canonical_hf(meta)
    mp1 = gen_meta_mp1(out, meta)
    gen_meta_mp2(out, meta, mp1)
    gen_meta_extras(out)
    gen_hf(out, meta, hf)
    gen_hf_sharded(out, meta, hf)
    gen_gguf(out, meta)

    after = tree_digest(out)
    total = sum((out / f).stat().st_size for f in after)
    for f in after:
        print(f"{(out / f).stat().st_size:>8}  {f}")
    print(f"total {total} bytes in {len(after)} files under {out}")
    if total >= 1_000_000:
        print("ERROR: fixtures exceed 1 MB", file=sys.stderr)
        return 1
    if before:
        changed = sorted(f for f in after if before.get(f) != after[f])
        gone = sorted(set(before) - set(after))
        if changed or gone:
            print("changed vs. previous run: " + ", ".join(changed + [g + " (removed)" for g in gone]))
        else:
            print("all files byte-identical to the previous run")
    return 0


def gguf_version() -> str:
    try:
        from importlib.metadata import version
        return version("gguf")
    except Exception:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
