#!/usr/bin/env python3
"""Independent simulation of `qforge verify`'s drift figures (numpy + ml_dtypes + gguf-py, no torch).

Everything here is written from the formats' definitions, not from qforge's code:

* tokens: the base directory's tokenizer.json through HF `tokenizers` (BOS prepended only when
  the tokenizer's post-processor adds one, as llama.cpp's `add_bos`), cut into llama-perplexity
  chunks (`n = min(chunks, len/ctx)` windows of `ctx` tokens, first token replaced by BOS when
  there is one);
* forward: a float32 Llama on the HF (unpermuted) weights: RMSNorm, RoPE with the half-split
  (`rotate_half`) layout, GQA, SwiGLU, tied or untied LM head;
* metrics: llama.cpp's protocol: the logits of positions `ctx/2 .. ctx-2` score the next
  token; PPL = exp(mean NLL), KL(base || quant) per scored token, top-1 agreement;
* fake quantization of the base's linear weights (every q/k/v/o/gate/up/down, never the
  embedding or LM head):
  - `fp8`: per output row `s = max(amax/448, 1/(448*512))` (float32; optionally rounded to BF16
    as compressed-tensors stores it for a BF16 model), `w' = float8_e4m3fn(clip(w/s, ±448))*s`;
  - `fp8-w8a8`: the same weights, and every quantized linear's input quantized per token with
    the same rule (dynamic per-token FP8), the product rescaled by the token's scale;
  - `int4-g<N>`: compressed-tensors' symmetric min-max rule per group of N inputs:
    `s = max(amax/7.5, 2^-23)`, `q = round_half_even(clip(w/s, -8, 7))`, `w' = q*s` (float32);
  - `q8_0`: llama.cpp's Q8_0 of every linear *and* the token embedding (llama-quantize's q8_0
    mix on a tied-embedding model), through gguf-py's reference quantizer.

Usage:
  sim_drift.py BASE_HF_DIR --data hamlet.txt [--ctx 512] [--chunks 20] \
      --scheme fp8 --scheme fp8-w8a8 --scheme int4-g64 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import time

import ml_dtypes
import numpy as np
from safetensors.numpy import load_file

F8 = ml_dtypes.float8_e4m3fn
FP8_MAX = np.float32(448.0)
FP8_MIN_SCALE = np.float32(1.0) / np.float32(448.0 * 512.0)
INT4_EPS = np.float32(2.0**-23)
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# ---------------------------------------------------------------- tokens


def load_tokens(model_dir: pathlib.Path, text_path: pathlib.Path, ctx: int, chunks: int) -> np.ndarray:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    with_special = tok.encode("Hello", add_special_tokens=True).ids
    without = tok.encode("Hello", add_special_tokens=False).ids
    bos = with_special[0] if len(with_special) > len(without) and with_special[0] != without[0] else None
    ids = tok.encode(text_path.read_text(encoding="utf-8"), add_special_tokens=True).ids
    n = min(chunks, len(ids) // ctx)
    if n < 1 or len(ids) < 2 * ctx:
        raise SystemExit(f"not enough tokens: {len(ids)} for ctx {ctx}")
    out = np.array(ids[: n * ctx], dtype=np.int64).reshape(n, ctx)
    if bos is not None:
        out[:, 0] = bos
    return out


# ---------------------------------------------------------------- fake quantization


def fp8_rows(x: np.ndarray, bf16_scale: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """FP8 E4M3 per row of a 2-D float32 array: (fp8 values as float32, dequantization scales)."""
    amax = np.abs(x).max(axis=1, keepdims=True).astype(np.float32)
    s = np.maximum(amax / FP8_MAX, FP8_MIN_SCALE).astype(np.float32)
    if bf16_scale:
        s = s.astype(ml_dtypes.bfloat16).astype(np.float32)
    q = np.clip(x / s, -FP8_MAX, FP8_MAX).astype(F8).astype(np.float32)
    return q, s


def fq_fp8(w: np.ndarray, bf16_scale: bool) -> np.ndarray:
    q, s = fp8_rows(w, bf16_scale)
    return q * s


def fq_int4_sym(w: np.ndarray, group: int) -> np.ndarray:
    out_f, in_f = w.shape
    if in_f % group:
        raise SystemExit(f"group {group} does not divide {in_f}")
    g = w.reshape(out_f, in_f // group, group)
    amax = np.maximum(np.abs(np.minimum(g.min(axis=2, keepdims=True), 0)), np.maximum(g.max(axis=2, keepdims=True), 0))
    s = np.maximum(amax.astype(np.float32) / np.float32(7.5), INT4_EPS).astype(np.float32)
    q = np.round(np.clip(g / s, -8, 7))  # np.round: half to even, after the clamp (compressed-tensors)
    return (q * s).astype(np.float32).reshape(out_f, in_f)


def fq_q8_0(w: np.ndarray) -> np.ndarray:
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    return dequantize(quantize(w, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0).astype(np.float32)


# ---------------------------------------------------------------- model


class Model:
    def __init__(self, cfg: dict, tensors: dict[str, np.ndarray], act_fp8: bool = False):
        self.cfg = cfg
        self.t = tensors
        self.act_fp8 = act_fp8
        self.hid = cfg["hidden_size"]
        self.heads = cfg["num_attention_heads"]
        self.kvh = cfg.get("num_key_value_heads", self.heads)
        self.hd = cfg.get("head_dim") or self.hid // self.heads
        self.eps = np.float32(cfg["rms_norm_eps"])
        self.layers = cfg["num_hidden_layers"]
        theta = float(cfg.get("rope_theta", 10000.0))
        if cfg.get("rope_scaling"):
            raise SystemExit("rope_scaling is not simulated")
        self.inv_freq = 1.0 / theta ** (np.arange(0, self.hd, 2, dtype=np.float64) / self.hd)
        self.embed = tensors["model.embed_tokens.weight"]
        self.head = tensors.get("lm_head.weight", self.embed)

    def rope(self, ctx: int) -> tuple[np.ndarray, np.ndarray]:
        ang = np.arange(ctx, dtype=np.float64)[:, None] * self.inv_freq[None, :]
        cos, sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
        return np.concatenate([cos, cos], 1), np.concatenate([sin, sin], 1)

    def rms(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        ms = np.mean(x.astype(np.float64) ** 2, axis=-1, keepdims=True)
        return (x * (1.0 / np.sqrt(ms + float(self.eps))).astype(np.float32)) * w

    def linear(self, x: np.ndarray, name: str, quantized: bool = True) -> np.ndarray:
        w = self.t[name]
        if self.act_fp8 and quantized:
            xq, s = fp8_rows(x)
            return (xq @ w.T) * s
        return x @ w.T

    def logits(self, tokens: np.ndarray, first: int, trace: list | None = None) -> np.ndarray:
        ctx = len(tokens)
        cos, sin = self.rope(ctx)
        hd, heads, kvh = self.hd, self.heads, self.kvh
        mask = np.triu(np.full((ctx, ctx), -np.inf, dtype=np.float32), 1)
        h = self.embed[tokens].astype(np.float32)
        half = hd // 2

        def rot(x):  # x: [ctx, nh, hd]
            r = np.concatenate([-x[..., half:], x[..., :half]], -1)
            return x * cos[:, None, :] + r * sin[:, None, :]

        for i in range(self.layers):
            p = f"model.layers.{i}."
            x = self.rms(h, self.t[p + "input_layernorm.weight"])
            q = rot(self.linear(x, p + "self_attn.q_proj.weight").reshape(ctx, heads, hd))
            k = rot(self.linear(x, p + "self_attn.k_proj.weight").reshape(ctx, kvh, hd))
            v = self.linear(x, p + "self_attn.v_proj.weight").reshape(ctx, kvh, hd)
            rep = heads // kvh
            k = np.repeat(k, rep, axis=1).transpose(1, 2, 0)  # [heads, hd, ctx]
            v = np.repeat(v, rep, axis=1).transpose(1, 0, 2)  # [heads, ctx, hd]
            sc = (q.transpose(1, 0, 2) @ k) * np.float32(1.0 / math.sqrt(hd)) + mask
            sc = np.exp(sc - sc.max(-1, keepdims=True))
            sc /= sc.sum(-1, keepdims=True)
            att = (sc @ v).transpose(1, 0, 2).reshape(ctx, heads * hd)
            h = h + self.linear(att, p + "self_attn.o_proj.weight")
            x = self.rms(h, self.t[p + "post_attention_layernorm.weight"])
            g = self.linear(x, p + "mlp.gate_proj.weight")
            u = self.linear(x, p + "mlp.up_proj.weight")
            a = (g / (1.0 + np.exp(-g))) * u
            h = h + self.linear(a, p + "mlp.down_proj.weight")
            if trace is not None:
                trace.append(h)
        x = self.rms(h[first : ctx - 1], self.t["model.norm.weight"])
        return x @ self.head.T


def variant(base: dict[str, np.ndarray], scheme: str, bf16_scale: bool) -> tuple[dict[str, np.ndarray], bool]:
    out = dict(base)
    if scheme in ("fp8", "fp8-w8a8"):
        fq = lambda w: fq_fp8(w, bf16_scale)  # noqa: E731
    elif scheme.startswith("int4-g"):
        group = int(scheme[len("int4-g") :])
        fq = lambda w: fq_int4_sym(w, group)  # noqa: E731
    elif scheme == "q8_0":
        fq = fq_q8_0
        out["model.embed_tokens.weight"] = fq_q8_0(base["model.embed_tokens.weight"])
        if "lm_head.weight" in base:
            out["lm_head.weight"] = fq_q8_0(base["lm_head.weight"])
    else:
        raise SystemExit(f"unknown scheme {scheme}")
    for name, w in base.items():
        if name.endswith(".weight") and name.split(".")[-2] in LINEARS:
            out[name] = fq(w)
    return out, scheme == "fp8-w8a8"


# ---------------------------------------------------------------- metrics


def log_softmax64(logits: np.ndarray) -> np.ndarray:
    m = logits.max(-1, keepdims=True)
    z = logits.astype(np.float64) - m.astype(np.float64)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def simulate(model_dir, data, ctx, chunks, schemes, bf16_scale=False, progress=True) -> dict:
    cfg = json.loads((model_dir / "config.json").read_text())
    tensors = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        tensors.update({k: v.astype(np.float32) for k, v in load_file(str(f)).items()})
    toks = load_tokens(model_dir, data, ctx, chunks)
    first = ctx // 2
    base = Model(cfg, tensors)
    models = {}
    for s in schemes:
        t, act = variant(tensors, s, bf16_scale)
        models[s] = Model(cfg, t, act_fp8=act)
    nll_b = []
    acc = {s: {"nll": [], "kld": [], "top1": 0} for s in schemes}
    t0 = time.time()
    for c, chunk in enumerate(toks):
        targets = chunk[first + 1 :]
        lb = log_softmax64(base.logits(chunk, first))
        idx = np.arange(len(targets))
        nll_b.append(-lb[idx, targets])
        pb = np.exp(lb)
        top_b = lb.argmax(-1)
        for s, m in models.items():
            lq = log_softmax64(m.logits(chunk, first))
            a = acc[s]
            a["nll"].append(-lq[idx, targets])
            a["kld"].append(np.maximum((pb * (lb - lq)).sum(-1), 0.0))
            a["top1"] += int((lq.argmax(-1) == top_b).sum())
        if progress:
            print(f"chunk {c + 1}/{len(toks)} ({time.time() - t0:.0f} s)", file=sys.stderr)
    nb = np.concatenate(nll_b)
    ppl_b = math.exp(nb.mean())
    out = {"ctx": ctx, "chunks": len(toks), "scored": int(nb.size), "ppl_base": ppl_b, "schemes": {}}
    for s, a in acc.items():
        nq = np.concatenate(a["nll"])
        kld = np.concatenate(a["kld"])
        ppl_q = math.exp(nq.mean())
        out["schemes"][s] = {
            "ppl_base": ppl_b,
            "ppl_quant": ppl_q,
            "ppl_drift_pct": (ppl_q / ppl_b - 1) * 100,
            "kld_mean": float(kld.mean()),
            "kld_p99": float(np.percentile(kld, 99)),
            "kld_max": float(kld.max()),
            "top1_pct": a["top1"] * 100.0 / kld.size,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=pathlib.Path, help="base HF directory (config.json, *.safetensors, tokenizer.json)")
    ap.add_argument("--data", type=pathlib.Path, required=True)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=20)
    ap.add_argument("--scheme", action="append", required=True, help="fp8 | fp8-w8a8 | int4-g<N> | q8_0 (repeatable)")
    ap.add_argument("--bf16-scale", action="store_true", help="round FP8 weight scales to BF16 (compressed-tensors, BF16 model)")
    ap.add_argument("--json", type=pathlib.Path, help="write the figures here")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args()
    r = simulate(args.model, args.data, args.ctx, args.chunks, args.scheme, args.bf16_scale, not args.quiet)
    if args.json:
        args.json.write_text(json.dumps(r, indent=2) + "\n")
    print(f"{r['chunks']} chunks x {r['ctx']} tokens, {r['scored']} scored; base PPL {r['ppl_base']:.4f}")
    for s, f in r["schemes"].items():
        print(
            f"{s:<10} PPL {f['ppl_quant']:.4f}  drift {f['ppl_drift_pct']:+.3f} %  "
            f"KLD mean {f['kld_mean']:.6f} p99 {f['kld_p99']:.6f}  top-1 {f['top1_pct']:.2f} %"
        )


if __name__ == "__main__":
    main()
