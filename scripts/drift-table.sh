#!/usr/bin/env bash
# The drift table of BENCHMARKS.md ("Drift on SmolLM2-135M") for any schemes: SmolLM2's Q4_1 GGUF
# dequantized to an F32 HF base, each scheme quantized from it with `--dtype f32`, and `qforge
# verify` of every candidate against the base on the same tokens (llama-perplexity's protocol,
# 20 chunks of 512 tokens of Hamlet; the base's forward is computed once and reused through
# --base-cache). Prints one markdown row per candidate.
#
#   scripts/drift-table.sh [CANDIDATE...]
#
# A candidate is `name:quantize arguments` (scheme and layout) with optional `|verify arguments`,
# e.g. 'fp8-block:--scheme fp8-block'. Default: the schemes added by the scheme redesign
# (FP8 block, NVFP4A16, NVFP4 W4A4, MXFP4, MXFP4A16, MLX 4/8-bit). NVFP4's input_global_scale
# comes from `qforge calibrate --method fp8-static` (16 × 256 tokens of Hamlet).
# Env: QFORGE (binary; default a release build), CHUNKS (20), QFORGE_CACHE.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/cache-dir.sh
scripts/fetch-data.sh >&2
if [[ -z "${QFORGE:-}" ]]; then
  cargo build --release --locked --bin qforge >&2
  QFORGE="${CARGO_TARGET_DIR:-$PWD/target}/release/qforge"
fi
CHUNKS="${CHUNKS:-20}"
M="$QFORGE_CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"
T="$QFORGE_CACHE/text/hamlet.txt"
W="$QFORGE_CACHE/drift"
mkdir -p "$W"
[[ -f "$W/base-f32/config.json" ]] || "$QFORGE" convert "$M" "$W/base-f32" --to hf --dtype f32 >&2
[[ -f "$W/calib.json" ]] || "$QFORGE" calibrate "$W/base-f32" --method fp8-static -f "$T" \
  --samples 16 --seq-len 256 -o "$W/calib.json" >&2
if [[ $# -eq 0 ]]; then
  set -- \
    'fp8-block:--scheme fp8-block' \
    'nvfp4a16:--scheme nvfp4a16' \
    "nvfp4:--scheme nvfp4 --calib $W/calib.json" \
    'mxfp4:--scheme mxfp4' \
    'mxfp4a16:--scheme mxfp4a16' \
    'mlx-4bit-g64:--scheme int4-g64 --layout mlx' \
    'mlx-8bit-g64:--scheme int8-g64 --layout mlx'
fi
echo "| candidate | PPL base | PPL quant | drift % | mean KLD | p99 KLD | top-1 % |"
echo "|---|---|---|---|---|---|---|"
for c in "$@"; do
  name="${c%%:*}"; rest="${c#*:}"
  qargs="${rest%%|*}"; vargs=""
  [[ "$rest" == *"|"* ]] && vargs="${rest#*|}"
  out="$W/$name"
  # shellcheck disable=SC2086
  [[ -e "$out" ]] || "$QFORGE" quantize "$W/base-f32" "$out" $qargs --dtype f32 >&2
  # shellcheck disable=SC2086
  "$QFORGE" verify "$W/base-f32" "$out" --data "$T" --ctx 512 --chunks "$CHUNKS" \
    --base-cache "$W/base-cache" --report "$W/$name.json" $vargs >&2 || true
  shown="$qargs $vargs"
  python3 - "$W/$name.json" "$name" "${shown//$W\//}" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["result"]
print(f"| {sys.argv[2]} (`{sys.argv[3].strip()}`) | {r['base']['ppl']:.4f} | {r['quant']['ppl']:.4f} "
      f"| {r['ppl_drift_pct']:+.3f} | {r['kld_mean']:.6f} | {r['kld_p99']:.5f} | {r['top1_pct']:.2f} |")
PY
done
