#!/usr/bin/env bash
# Quantization throughput against its peers, in one run (these machines are noisy: compare the
# ratios, not the absolute times):
#   1. FP8 rowwise (compressed-tensors) of a BF16 HF checkpoint vs `cp` of the same bytes;
#   2. the other HF schemes (FP8 block, NVFP4, MXFP4, INT4, MLX) vs `cp`, output in RAM;
#   3. GGUF Q8_0 and Q4_K_M vs llama.cpp's `llama-quantize` on the same F16 GGUF, same threads.
# Peak RSS from /usr/bin/time. Outputs are deleted after each step.
#
#   scripts/bench-quantize.sh [MODEL_DIR]    # default: a 6-layer Llama-3-8B-shaped model (4.7 GB)
#
# Env: QFORGE_CACHE, THREADS (default 2), QFORGE (a qforge binary to use instead of building one),
# SCHEMES (the schemes of part 2, see there), SCHEME_ROUNDS (3), SECTIONS (default "disk shm schemes gguf": FP8 vs cp
# on disk and in RAM, part 2, part 3).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/cache-dir.sh
THREADS="${THREADS:-2}"
SECTIONS="${SECTIONS:-disk shm schemes gguf}"
want() { [[ " $SECTIONS " == *" $1 "* ]]; }
bench="$QFORGE_CACHE/bench"
model="${1:-$bench/l8b-6}"
mkdir -p "$bench"
if [[ ! -f "$model/config.json" ]]; then
  PY="$(scripts/pyenv.sh --print-python)"
  "$PY" scripts/gen_synthetic.py --format hf --shape llama3-8b --layers 6 "$model"
fi
if [[ -n "${QFORGE:-}" ]]; then
  qforge="$QFORGE"
else
  cargo build --release --locked --bin qforge >&2
  qforge="${CARGO_TARGET_DIR:-$PWD/target}/release/qforge"
fi
LQ="$(scripts/build-llama-cpp.sh --print-bin-dir)/llama-quantize"
gguf="$bench/$(basename "$model")-f16.gguf"
want gguf && [[ ! -f "$gguf" ]] && "$qforge" convert "$model" "$gguf" --to gguf --dtype f16 --allow-lossy >&2

bytes_of() { du -sb "$1" | cut -f1; }
# run NAME CMD...: prints "NAME seconds peak_kib"
run() {
  local name=$1; shift
  local t
  t="$(mktemp)"
  /usr/bin/time -f "%e %M" -o "$t" "$@" >/dev/null 2>&1
  echo "$name $(cat "$t")"
  rm -f "$t"
}

in_bytes="$(bytes_of "$model")"
gguf_bytes="$(bytes_of "$gguf" 2>/dev/null || echo 0)"
echo "# input: $model ($in_bytes bytes BF16), $gguf ($gguf_bytes bytes F16); threads $THREADS; $(nproc) cores"
echo "# warm the page cache for both inputs"
cat "$model"/*.safetensors >/dev/null
[[ -f "$gguf" ]] && cat "$gguf" >/dev/null

out="$bench/out"
rm -rf "$out" "$out.cp"
# FP8 against cp, three rounds alternating (these machines are noisy). qforge fsyncs its output
# before renaming it into place; plain `cp` leaves it in the page cache, so `cp` + `sync` of the
# copied files is timed too (the same durability).
for round in 1 2 3; do
  want disk || break
  sync
  read -r _ cp_s cp_kb < <(run cp cp -r "$model" "$out.cp"); rm -rf "$out.cp"; sync
  read -r _ cps_s _ < <(run cp+sync sh -c "cp -r '$model' '$out.cp' && sync '$out.cp'/*"); rm -rf "$out.cp"; sync
  read -r _ fp8_s fp8_kb < <(run fp8 env RAYON_NUM_THREADS="$THREADS" "$qforge" quantize "$model" "$out" --scheme fp8-rowwise)
  fp8_out="$(bytes_of "$out")"; rm -rf "$out"
  printf 'round %s: cp -r %6s s (%4s MB/s)   cp -r + sync %6s s   qforge fp8-rowwise %6s s (%4s MB/s in, peak RSS %s MiB, %s bytes out)\n' \
    "$round" "$cp_s" "$(awk -v b="$in_bytes" -v s="$cp_s" 'BEGIN{printf "%.0f", b/s/1e6}')" "$cps_s" "$fp8_s" \
    "$(awk -v b="$in_bytes" -v s="$fp8_s" 'BEGIN{printf "%.0f", b/s/1e6}')" "$((fp8_kb / 1024))" "$fp8_out"
  echo "round $round: fp8-rowwise throughput / cp: $(awk -v a="$cp_s" -v b="$fp8_s" 'BEGIN{printf "%.2f", a/b}')x   / (cp + sync): $(awk -v a="$cps_s" -v b="$fp8_s" 'BEGIN{printf "%.2f", a/b}')x"
done

# The same on a RAM filesystem, where neither side waits for the disk: what the quantization
# pipeline itself sustains (the rounds above are bound by this machine's disk and writeback).
shm="${BENCH_SHM:-/dev/shm}"
if want shm && [[ -d "$shm" ]] && (( $(df -k --output=avail "$shm" | tail -1) * 1024 > 2 * in_bytes )); then
  for round in 1 2 3; do
    read -r _ cp_s _ < <(run cp cp -r "$model" "$shm/qforge-bench.cp"); rm -rf "$shm/qforge-bench.cp"
    read -r _ fp8_s _ < <(run fp8 env RAYON_NUM_THREADS="$THREADS" "$qforge" quantize "$model" "$shm/qforge-bench.out" --scheme fp8-rowwise)
    rm -rf "$shm/qforge-bench.out"
    echo "round $round, output in $shm: cp -r $cp_s s, qforge fp8-rowwise $fp8_s s: throughput / cp: $(awk -v a="$cp_s" -v b="$fp8_s" 'BEGIN{printf "%.2f", a/b}')x"
  done
else
  echo "# $shm missing or smaller than twice the model: RAM-filesystem rounds skipped"
fi

# Every other HF scheme against cp, output on the RAM filesystem (disk writeback noise would swamp
# the ratio): three rounds each, cp and qforge alternating. `scheme` or `scheme:layout`.
# SCHEMES="" skips this section. (nvfp4 writes nvfp4a16's weights plus one calibrated scale per
# module, mxfp4 mxfp4a16's plus a config entry: their throughput is nvfp4a16's and mxfp4a16's.)
SCHEMES="${SCHEMES-fp8-block nvfp4a16 mxfp4a16 int4-g64 int4-g64:mlx int8-g64:mlx}"
if want schemes && [[ -n "$SCHEMES" && -d "$shm" ]] && (( $(df -k --output=avail "$shm" | tail -1) * 1024 > 2 * in_bytes )); then
  for s in $SCHEMES; do
    scheme="${s%%:*}"; layout=()
    [[ "$s" == *:* ]] && layout=(--layout "${s#*:}")
    for round in $(seq "${SCHEME_ROUNDS:-3}"); do
      read -r _ cp_s _ < <(run cp cp -r "$model" "$shm/qforge-bench.cp"); rm -rf "$shm/qforge-bench.cp"
      read -r _ q_s q_kb < <(run q env RAYON_NUM_THREADS="$THREADS" "$qforge" quantize "$model" "$shm/qforge-bench.out" --scheme "$scheme" "${layout[@]}")
      q_out="$(bytes_of "$shm/qforge-bench.out" 2>/dev/null || echo 0)"; rm -rf "$shm/qforge-bench.out"
      echo "$s round $round, output in $shm: cp -r $cp_s s, qforge $q_s s (peak RSS $((q_kb / 1024)) MiB, $q_out bytes out): throughput / cp: $(awk -v a="$cp_s" -v b="$q_s" 'BEGIN{printf "%.2f", a/b}')x"
    done
  done
fi

for mix in Q8_0 Q4_K_M; do
  want gguf || break
  lower="$(echo "$mix" | tr 'A-Z' 'a-z')"
  read -r _ lq_s lq_kb < <(run lq "$LQ" "$gguf" "$out.lq.gguf" "$mix" "$THREADS")
  read -r _ qf_s qf_kb < <(run qf env RAYON_NUM_THREADS="$THREADS" "$qforge" quantize "$gguf" "$out.qf.gguf" --scheme "gguf:$lower")
  rm -f "$out.lq.gguf" "$out.qf.gguf"
  printf '%-34s %8s s  peak RSS %6s MiB\n' "llama-quantize $mix ($THREADS threads)" "$lq_s" "$((lq_kb / 1024))"
  printf '%-34s %8s s  peak RSS %6s MiB\n' "qforge quantize gguf:$lower" "$qf_s" "$((qf_kb / 1024))"
  echo "$mix: qforge is $(awk -v a="$lq_s" -v b="$qf_s" 'BEGIN{printf "%.2f", a/b}')x llama-quantize's speed"
done
