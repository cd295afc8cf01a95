#!/usr/bin/env bash
# Every performance row of BENCHMARKS.md, reproduced from a fresh clone in one run, each against
# its peer or the hardware limit measured in the same run (these machines are noisy: read the
# ratios). Peers are built by the existing scripts (llama.cpp by build-llama-cpp.sh, the Python
# peers by pyenv.sh); models are fetched (SmolLM2) or generated (gen_synthetic.py).
#
#   scripts/bench.sh                 # every section but the 405B-shaped run (~30 min, ~25 GB disk)
#   scripts/bench.sh --only NAME...  # some sections: inspect convert quantize gemm perplexity calibrate demo scale
#   scripts/bench.sh --scale         # also the 405B-shaped run (2 layers, ~60 GB disk, ~10 min)
#
# At the end it prints one summary table (section | figure | peer | ratio); the per-section
# output above it has the raw times and peak RSS. Env: QFORGE_CACHE, THREADS (default 2),
# ROUNDS (paired perplexity runs, default 3), LLAMA_PERPLEXITY (another llama-perplexity binary,
# e.g. one built with AVX-512; default: build-llama-cpp.sh's).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/cache-dir.sh
THREADS="${THREADS:-2}"
export THREADS

sections=(inspect convert quantize gemm perplexity calibrate demo)
if [[ "${1:-}" == "--only" ]]; then
  shift
  sections=("$@")
elif [[ "${1:-}" == "--scale" ]]; then
  sections+=(scale)
fi
want() { local s; for s in "${sections[@]}"; do [[ "$s" == "$1" ]] && return 0; done; return 1; }

cargo build --release --locked --bin qforge >&2
scripts/fetch-data.sh >&2
qf="${CARGO_TARGET_DIR:-$PWD/target}/release/qforge"
PY="$(scripts/pyenv.sh --print-python)"
bench="$QFORGE_CACHE/bench"
mkdir -p "$bench"
summary="$(mktemp)"
trap 'rm -f "$summary"' EXIT
row() { printf '| %s | %s | %s | %s |\n' "$@" >>"$summary"; }
# timed NAME CMD...: runs CMD, sets T (wall seconds) and KB (peak RSS KiB)
timed() {
  local f
  f="$(mktemp)"
  /usr/bin/time -f "%e %M" -o "$f" "${@:2}" >/dev/null 2>&1 || { echo "$1 failed: ${*:2}" >&2; rm -f "$f"; return 1; }
  read -r T KB <"$f"
  rm -f "$f"
  echo "$1: ${T} s, peak RSS $((KB / 1024)) MiB" >&2
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
model8b="$bench/l8b-6"
make8b() {
  [[ -f "$model8b/config.json" ]] || "$PY" scripts/gen_synthetic.py --format hf --shape llama3-8b --layers 6 "$model8b" >&2
}
largest() { "$qf" inspect --json "$1" | "$PY" -c 'import json,sys; print(max(t["bytes"] for t in json.load(sys.stdin)["tensors"]))'; }

if want inspect; then
  echo "## inspect on a multi-GB checkpoint" >&2
  make8b
  cat "$model8b"/*.safetensors >/dev/null
  timed inspect "$qf" inspect "$model8b"
  ins_t=$T ins_kb=$KB
  timed "cat of the same files (page cache)" cat "$model8b"/*.safetensors
  row "inspect $(du -sh "$model8b" | cut -f1) BF16 (warm cache)" "${ins_t} s, $((ins_kb / 1024)) MiB" "cat: ${T} s" "$(ratio "$ins_t" "$T")× cat's time"
fi

if want convert; then
  echo "## conversion (scripts/bench-convert.sh)" >&2
  out="$(scripts/bench-convert.sh 2>/dev/null)"
  echo "$out" >&2
  q="$(echo "$out" | sed -n 's/^qforge: *\([0-9.]*\) s wall, \([0-9]*\) KiB.*/\1 \2/p')"
  p="$(echo "$out" | sed -n 's/^convert_hf_to_gguf: *\([0-9.]*\) s wall, \([0-9]*\) KiB.*/\1 \2/p')"
  read -r qt qkb <<<"$q"
  read -r pt pkb <<<"$p"
  row "HF → GGUF F16, SmolLM2" "${qt} s, $((qkb / 1024)) MiB" "convert_hf_to_gguf.py: ${pt} s, $((pkb / 1024)) MiB" "$(ratio "$pt" "$qt")× faster, $(ratio "$qkb" "$pkb")× RSS"
  m="$(echo "$out" | sed -n 's/^qforge MP8 -> HF: *\([0-9.]*\) s wall, \([0-9]*\) KiB.*/\1 \2/p')"
  l="$(echo "$out" | sed -n 's/^largest tensor: \([0-9]*\) bytes/\1/p')"
  read -r mt mkb <<<"$m"
  row "Meta MP8 → HF, 8B widths" "${mt} s, $((mkb / 1024)) MiB" "largest tensor $((l / 1048576)) MiB" "$(ratio "$((mkb * 1024))" "$l")× largest tensor"
fi

if want quantize; then
  echo "## quantization (scripts/bench-quantize.sh)" >&2
  make8b
  out="$(scripts/bench-quantize.sh "$model8b" 2>/dev/null)"
  echo "$out" >&2
  for r in 1 2 3; do
    f="$(echo "$out" | sed -n "s/^round $r: fp8-rowwise throughput \/ cp: \([0-9.]*\)x.*/\1/p")"
    [[ -n "$f" ]] && row "FP8 rowwise 4.7 GB, round $r" "" "cp -r" "${f}× cp's throughput"
  done
  for mix in Q8_0 Q4_K_M; do
    f="$(echo "$out" | sed -n "s/^$mix: qforge is \([0-9.]*\)x.*/\1/p")"
    row "GGUF $mix from F16 (4.7 GB)" "" "llama-quantize, $THREADS threads" "${f}× faster"
  done
fi

if want gemm; then
  echo "## f32 GEMM vs the FMA peak measured in the same run (verify/benches/gemm.rs)" >&2
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-), nproc $(nproc), load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  out="$(THREADS="$THREADS" cargo bench --locked -p qforge-verify --bench gemm 2>/dev/null)"
  echo "$out" >&2
  peak="$(echo "$out" | sed -n 's/^FMA peak \([a-z0-9]*\): \([0-9.]*\) GFLOP.*/\1 \2/p' | head -1)"
  echo "$out" | grep '^| SmolLM2\|^| Llama' | while IFS='|' read -r _ name shape rest; do
    pct="$(echo "$rest" | awk -F'|' '{print $(NF-1)}')"
    row "GEMM $name ($shape), $THREADS threads" "$(echo "$rest" | cut -d'|' -f1) GFLOP/s" "FMA peak ${peak} GFLOP/s" "$pct"
  done
fi

if want perplexity; then
  echo "## perplexity vs llama-perplexity (F32 GGUF of SmolLM2, ctx 512, 8 chunks), paired runs" >&2
  f32="$bench/smol-f32.gguf"
  [[ -f "$f32" ]] || "$qf" convert "$QFORGE_CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf" "$f32" --to gguf --dtype f32 >&2
  hamlet="$QFORGE_CACHE/text/hamlet.txt"
  lp="${LLAMA_PERPLEXITY:-$(scripts/build-llama-cpp.sh --print-bin-dir)/llama-perplexity}"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-), nproc $(nproc), load $(cut -d' ' -f1-3 /proc/loadavg); llama-perplexity: $lp" >&2
  # alternate the two tools ROUNDS times (the machine is shared: a load change hits both);
  # the ratio is of the sums
  qsum=0 lsum=0
  for ((r = 1; r <= ${ROUNDS:-3}; r++)); do
    timed "qforge (round $r)" "$qf" perplexity "$f32" --data "$hamlet" --ctx 512 --chunks 8 --threads "$THREADS" --kv-f16 -q
    qsum="$(awk -v a="$qsum" -v b="$T" 'BEGIN{print a + b}')" qkb=$KB
    timed "llama-perplexity (round $r)" "$lp" -m "$f32" -f "$hamlet" -c 512 --chunks 8 -t "$THREADS"
    lsum="$(awk -v a="$lsum" -v b="$T" 'BEGIN{print a + b}')"
  done
  row "perplexity, SmolLM2 F32, 8 × 512 tokens, ${ROUNDS:-3} paired rounds" "Σ ${qsum} s, $((qkb / 1024)) MiB" "llama-perplexity: Σ ${lsum} s, $((KB / 1024)) MiB" "$(ratio "$lsum" "$qsum")× llama-perplexity's throughput, $(ratio "$qkb" "$KB")× RSS"
fi

if want calibrate; then
  echo "## GPTQ memory on a 4-layer Llama-3.2-1B-shaped model" >&2
  l1b="$bench/l1b-4"
  [[ -f "$l1b/config.json" ]] || "$PY" scripts/gen_synthetic.py --format hf --shape llama32-1b --layers 4 "$l1b" >&2
  tokens="$bench/gptq-tokens.json"
  "$PY" - "$tokens" <<'EOF'
import json, random, sys
random.seed(0)
json.dump({"samples": [[random.randrange(1, 128000) for _ in range(512)] for _ in range(16)]}, open(sys.argv[1], "w"))
EOF
  rm -rf "$bench/gptq-4"
  timed gptq "$qf" calibrate "$l1b" --tokens "$tokens" --method gptq --scheme int4-g128 -o "$bench/gptq-4" -q
  # plan's model of the same calibration (a recipe's [calibrate] step: 16 chunks of 512)
  recipe="$bench/gptq-plan.toml"
  printf '[input]\nmodel = "%s"\n[output]\ndir = "%s"\n[calibrate]\nmethod = "gptq"\ndata = "%s"\nctx = 512\nchunks = 16\nscheme = "int4-g128"\n[[quantize]]\nname = "w4"\nscheme = "int4-g128"\n' \
    "$l1b" "$bench/gptq-plan-out" "$QFORGE_CACHE/text/macbeth.txt" >"$recipe"
  plan_mb="$("$qf" plan "$recipe" --json 2>/dev/null | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["calibrate"]["peak_memory_bytes"] // 1048576)' 2>/dev/null || echo 0)"
  row "GPTQ int4-g128, 1B widths, 4 layers" "${T} s, $((KB / 1024)) MiB" "plan's prediction: ${plan_mb} MiB" "$(ratio "$((KB / 1024))" "$plan_mb")× predicted"
fi

if want demo; then
  echo "## the README's first command (scripts/demo.sh)" >&2
  timed demo scripts/demo.sh
  row "scripts/demo.sh (quantize + verify, 3 schemes)" "${T} s, $((KB / 1024)) MiB" "" ""
fi

if want scale; then
  echo "## 405B-shaped run (2 layers, MP8 input)" >&2
  hf405="$QFORGE_CACHE/synthetic/llama31-405b-l2"
  src="$bench/llama31-405b-l2-mp8"
  [[ -d "$hf405" ]] || "$PY" scripts/gen_synthetic.py --format hf --shape llama31-405b --layers 2 "$hf405" >&2
  [[ -d "$src" ]] || "$qf" convert "$hf405" "$src" --to meta --mp 8 --allow-lossy -q >&2
  rm -rf "$bench/405b-fp8"
  timed fp8 "$qf" quantize "$src" "$bench/405b-fp8" --scheme fp8-rowwise --layout fbgemm -q
  l="$(largest "$src")"
  timed "cp -r" cp -r "$src" "$bench/405b-cp"
  cpt=$T
  rm -rf "$bench/405b-cp" "$bench/405b-fp8"
  row "405B widths, 2 layers, FP8 fbgemm" "peak $((KB / 1024)) MiB" "largest tensor $((l / 1048576)) MiB; cp -r ${cpt} s" "$(ratio "$((KB * 1024))" "$l")× largest tensor"
fi

echo
echo "| section | qforge | peer / limit (same run) | ratio |"
echo "|---|---|---|---|"
cat "$summary"
