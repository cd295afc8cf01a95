#!/usr/bin/env python3
"""Write a large random Llama-shaped checkpoint for scale tests, streaming (numpy + stdlib only).

    python scripts/gen_synthetic.py --format hf --shape llama3-8b --layers 4 OUT_DIR

Output (HF layout, as transformers' save_pretrained writes it):
    OUT_DIR/config.json
    OUT_DIR/model.safetensors                                  (if everything fits one shard)
    OUT_DIR/model-0000K-of-0000N.safetensors + model.safetensors.index.json   (otherwise)

Tensors are assigned to shards in state-dict order (embed, layers, norm, lm_head) the way
huggingface_hub's split_torch_state_dict_into_shards does (start a new shard when the next tensor
would push the current one past --shard-size). Each shard's header is written by hand: u64 LE
header length + JSON header (`__metadata__` {"format": "pt"} first, then tensors sorted by name)
padded with spaces to a multiple of 8; tensor data follows contiguously in sorted-name order.

Values: BF16 drawn from N(0, 0.02^2) (norm weights: 1 + N(0, 0.02^2)) by inverse-CDF table lookup:
each random 16-bit word indexes a 65536-entry table of normal quantiles (truncated to bf16). This
is ~5x faster than generating f32 normals, and can never produce NaN/Inf bit patterns. Every
tensor has its own random stream derived from (--seed, tensor name), so the bytes do not depend on
--shard-size or on the chunk size. At most one ~64 MiB chunk is held in memory at a time.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from statistics import NormalDist

import numpy as np

CHUNK_ELEMS = 32 << 20  # 32 Mi bf16 elements = 64 MiB per chunk


@dataclass(frozen=True)
class Shape:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn: int
    vocab: int
    rope_theta: float
    max_pos: int
    llama31: bool  # rope_scaling llama3 (factor 8), 131072 context
    bos: int
    eos: int
    experts: int = 0  # Mixtral: experts per block (top-2), `ffn` is one expert's width
    llama4: bool = False  # Llama4ForCausalLM: fused experts in every block, top-1, a shared expert
    ffn_dense: int = 0  # Llama 4: intermediate_size_mlp (no dense block when every block is MoE)


SHAPES = {
    "llama3-8b": Shape(4096, 32, 32, 8, 14336, 128256, 500000.0, 8192, False, 128000, 128001),
    "llama31-8b": Shape(4096, 32, 32, 8, 14336, 128256, 500000.0, 131072, True, 128000, 128001),
    # Llama 3.2 1B's widths (its rope scaling factor is 32, 3.1's 8 is written; untied head)
    "llama32-1b": Shape(2048, 16, 32, 8, 8192, 128256, 500000.0, 131072, True, 128000, 128001),
    "llama3-70b": Shape(8192, 80, 64, 8, 28672, 128256, 500000.0, 8192, False, 128000, 128001),
    "llama31-70b": Shape(8192, 80, 64, 8, 28672, 128256, 500000.0, 131072, True, 128000, 128001),
    "llama31-405b": Shape(16384, 126, 128, 8, 53248, 128256, 500000.0, 131072, True, 128000, 128001),
    # Mixtral-8x7B's widths (mistralai/Mixtral-8x7B-v0.1 config.json: 8 experts of 14336, top 2)
    "mixtral-8x7b": Shape(4096, 32, 32, 8, 14336, 32000, 1000000.0, 32768, False, 1, 2, 8),
    # Llama 4 Scout's text widths (meta-llama/Llama-4-Scout-17B-16E text_config: hidden 5120, 40
    # heads / 8 KV of 128, 16 experts of 8192 in every block (interleave_moe_layer_step 1), top 1,
    # a shared expert, vocab 202048); fused experts as transformers' Llama4TextExperts holds them
    "llama4-scout": Shape(5120, 48, 40, 8, 8192, 202048, 500000.0, 10485760, False, 200000, 200008,
                          16, True, 16384),
    # same hyper-parameters as tests/fixtures/tiny (scripts/gen_fixtures.py)
    "tiny": Shape(32, 2, 4, 2, 96, 128, 500000.0, 8192, False, 0, 1),
}


def ffn_hidden(dim: int, multiple_of: int, mult: float | None) -> int:
    h = int(2 * (4 * dim) / 3)
    if mult is not None:
        h = int(mult * h)
    return multiple_of * ((h + multiple_of - 1) // multiple_of)


# The FFN sizes above follow Meta's formula (meta.md 1.2); check them.
assert ffn_hidden(4096, 1024, 1.3) == 14336
assert ffn_hidden(8192, 4096, 1.3) == 28672
assert ffn_hidden(16384, 4096, 1.2) == 53248
assert ffn_hidden(32, 32, None) == 96


def hf_config(s: Shape, n_layers: int) -> dict:
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": s.bos,
        "eos_token_id": s.eos,
        "head_dim": s.dim // s.n_heads,
        "hidden_act": "silu",
        "hidden_size": s.dim,
        "initializer_range": 0.02,
        "intermediate_size": s.ffn,
        "max_position_embeddings": s.max_pos,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": s.n_heads,
        "num_hidden_layers": n_layers,
        "num_key_value_heads": s.n_kv_heads,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": s.rope_theta,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": s.vocab,
    }
    if s.experts and not s.llama4:
        # transformers MixtralConfig
        for k in ["attention_bias", "mlp_bias", "pretraining_tp", "rope_scaling"]:
            del cfg[k]
        cfg.update({"architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
                    "num_local_experts": s.experts, "num_experts_per_tok": 2, "sliding_window": None,
                    "router_aux_loss_coef": 0.02, "output_router_logits": False})
    if s.llama4:
        # transformers Llama4TextConfig (model_type llama4_text), Scout's values
        for k in ["mlp_bias", "pretraining_tp"]:
            del cfg[k]
        cfg.update({"architectures": ["Llama4ForCausalLM"], "model_type": "llama4_text",
                    "head_dim": 128, "intermediate_size_mlp": s.ffn_dense,
                    "num_local_experts": s.experts, "num_experts_per_tok": 1,
                    "interleave_moe_layer_step": 1, "moe_layers": list(range(n_layers)),
                    "no_rope_layers": [0 if (i + 1) % 4 == 0 else 1 for i in range(n_layers)],
                    "attention_chunk_size": 8192, "attn_temperature_tuning": True,
                    "floor_scale": 8192, "attn_scale": 0.1, "use_qk_norm": True,
                    "router_aux_loss_coef": 0.001, "router_jitter_noise": 0.0,
                    "output_router_logits": False,
                    "rope_scaling": {"factor": 16.0, "high_freq_factor": 1.0, "low_freq_factor": 1.0,
                                     "original_max_position_embeddings": 8192,
                                     "rope_type": "llama3"}})
    if s.llama31:
        cfg["rope_scaling"] = {
            "factor": 8.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        }
    return cfg


def hf_tensors(s: Shape, n_layers: int) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) in state-dict order."""
    hd = 128 if s.llama4 else s.dim // s.n_heads
    out = [("model.embed_tokens.weight", (s.vocab, s.dim))]
    for i in range(n_layers):
        p = f"model.layers.{i}."
        out += [
            (p + "self_attn.q_proj.weight", (s.n_heads * hd, s.dim)),
            (p + "self_attn.k_proj.weight", (s.n_kv_heads * hd, s.dim)),
            (p + "self_attn.v_proj.weight", (s.n_kv_heads * hd, s.dim)),
            (p + "self_attn.o_proj.weight", (s.dim, s.n_heads * hd)),
        ]
        if s.llama4:
            m = p + "feed_forward."
            out += [(m + "router.weight", (s.experts, s.dim)),
                    (m + "experts.gate_up_proj", (s.experts, s.dim, 2 * s.ffn)),
                    (m + "experts.down_proj", (s.experts, s.ffn, s.dim)),
                    (m + "shared_expert.gate_proj.weight", (s.ffn, s.dim)),
                    (m + "shared_expert.up_proj.weight", (s.ffn, s.dim)),
                    (m + "shared_expert.down_proj.weight", (s.dim, s.ffn))]
        elif s.experts:
            m = p + "block_sparse_moe."
            out.append((m + "gate.weight", (s.experts, s.dim)))
            for e in range(s.experts):
                out += [(f"{m}experts.{e}.w1.weight", (s.ffn, s.dim)),
                        (f"{m}experts.{e}.w2.weight", (s.dim, s.ffn)),
                        (f"{m}experts.{e}.w3.weight", (s.ffn, s.dim))]
        else:
            out += [
                (p + "mlp.gate_proj.weight", (s.ffn, s.dim)),
                (p + "mlp.up_proj.weight", (s.ffn, s.dim)),
                (p + "mlp.down_proj.weight", (s.dim, s.ffn)),
            ]
        out += [
            (p + "input_layernorm.weight", (s.dim,)),
            (p + "post_attention_layernorm.weight", (s.dim,)),
        ]
    out += [("model.norm.weight", (s.dim,)), ("lm_head.weight", (s.vocab, s.dim))]
    return out


def numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def bf16_table(offset: float) -> np.ndarray:
    """65536 bf16 bit patterns of offset + N(0, 0.02^2) quantiles (truncated f32 -> bf16)."""
    nd = NormalDist(0.0, 0.02)
    q = np.array([nd.inv_cdf((i + 0.5) / 65536.0) for i in range(65536)], dtype=np.float64)
    f = (offset + q).astype(np.float32)
    t = (f.view(np.uint32) >> 16).astype(np.uint16)
    exp = (t >> 7) & 0xFF
    assert not np.any(exp == 0xFF)  # no NaN/Inf
    return t


def tensor_stream(seed: int, name: str) -> np.random.SFC64:
    h = hashlib.sha256(f"qforge-synthetic:{seed}:{name}".encode()).digest()
    return np.random.SFC64(int.from_bytes(h[:16], "little"))


def plan_shards(tensors, max_shard: int) -> list[list[tuple[str, tuple[int, ...]]]]:
    shards: list[list] = [[]]
    cur = 0
    for name, shape in tensors:
        nb = numel(shape) * 2
        if shards[-1] and cur + nb > max_shard:
            shards.append([])
            cur = 0
        shards[-1].append((name, shape))
        cur += nb
    return shards


def safetensors_header(entries: list[tuple[str, tuple[int, ...]]]) -> bytes:
    hdr: dict = {"__metadata__": {"format": "pt"}}
    off = 0
    for name, shape in sorted(entries):
        nb = numel(shape) * 2
        hdr[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + nb]}
        off += nb
    js = json.dumps(hdr, separators=(",", ":")).encode()
    js += b" " * ((-len(js)) % 8)
    return struct.pack("<Q", len(js)) + js


class Progress:
    def __init__(self, total: int):
        self.total = total
        self.done = 0
        self.t0 = time.monotonic()
        self.last = 0.0

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= 5.0 or self.done == self.total:
            self.last = now
            dt = max(now - self.t0, 1e-9)
            print(f"  {self.done / 1e9:8.2f} / {self.total / 1e9:.2f} GB  {self.done / dt / 1e6:7.0f} MB/s",
                  file=sys.stderr, flush=True)


def write_shard(path: Path, entries, seed: int, tables: dict[str, np.ndarray], prog: Progress) -> int:
    tmp = path.with_name(path.name + ".part")
    header = safetensors_header(entries)
    written = 0
    with open(tmp, "wb") as f:
        f.write(header)
        for name, shape in sorted(entries):
            table = tables["norm"] if name.endswith("norm.weight") else tables["weight"]
            bg = tensor_stream(seed, name)
            left = numel(shape)
            while left:
                n = min(left, CHUNK_ELEMS)
                words = (n + 3) // 4
                idx = bg.random_raw(words).view(np.uint16)[:n]  # 4 random u16 per u64 draw
                chunk = table[idx]  # bf16 bit patterns, little-endian on LE hosts
                f.write(memoryview(chunk.astype("<u2", copy=False)))
                left -= n
                written += n * 2
                prog.add(n * 2)
    os.replace(tmp, path)
    return len(header) + written


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="output directory (created; stale model*.safetensors removed)")
    ap.add_argument("--format", choices=["hf"], default="hf")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="llama3-8b")
    ap.add_argument("--layers", type=int, default=None, help="override the number of layers")
    ap.add_argument("--shard-size", type=int, default=5_000_000_000,
                    help="max bytes of tensor data per shard (default 5e9, transformers' '5GB')")
    ap.add_argument("--vocab", type=int, default=None,
                    help="override the vocabulary size (memory tests whose subject is not the embedding)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=["bf16"], default="bf16")
    args = ap.parse_args()

    if sys.byteorder != "little":
        print("gen_synthetic.py: big-endian hosts are not supported", file=sys.stderr)
        return 2
    s = SHAPES[args.shape]
    if args.vocab is not None:
        if args.vocab <= 0:
            ap.error("--vocab must be > 0")
        s = replace(s, vocab=args.vocab)
    n_layers = s.n_layers if args.layers is None else args.layers
    if n_layers < 0:
        ap.error("--layers must be >= 0")
    if args.shard_size <= 0:
        ap.error("--shard-size must be > 0")
    tensors = hf_tensors(s, n_layers)
    total = sum(numel(sh) * 2 for _, sh in tensors)
    shards = plan_shards(tensors, args.shard_size)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    for p in list(out.glob("model*.safetensors")) + list(out.glob("model.safetensors.index.json")):
        p.unlink()

    print(f"gen_synthetic: {args.shape}, {n_layers} layers, {len(tensors)} tensors, "
          f"{total} bytes of BF16 data in {len(shards)} shard(s) -> {out}", file=sys.stderr)
    with open(out / "config.json", "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(hf_config(s, n_layers), indent=2, sort_keys=True) + "\n")

    tables = {"weight": bf16_table(0.0), "norm": bf16_table(1.0)}
    prog = Progress(total)
    t0 = time.monotonic()
    file_bytes = 0
    if len(shards) == 1:
        file_bytes += write_shard(out / "model.safetensors", shards[0], args.seed, tables, prog)
    else:
        n = len(shards)
        weight_map = {}
        for i, entries in enumerate(shards):
            fn = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            file_bytes += write_shard(out / fn, entries, args.seed, tables, prog)
            for name, _ in entries:
                weight_map[name] = fn
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        with open(out / "model.safetensors.index.json", "w", encoding="utf-8", newline="\n") as f:
            f.write(json.dumps(index, indent=2, sort_keys=True) + "\n")
    dt = time.monotonic() - t0
    print(f"gen_synthetic: wrote {file_bytes} bytes in {dt:.1f} s ({file_bytes / max(dt, 1e-9) / 1e6:.0f} MB/s)",
          file=sys.stderr)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
